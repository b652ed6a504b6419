"""sct-node: a DICOM node that turns MR series into synthetic CTs for MRI-only radiotherapy.

Data flows one way through its packages: receive -> spool -> job -> read ->
model (``models``) -> write -> QA (``dosimetry``) -> report -> dispatch.

Inside ``sct_node``: ``node/`` holds the node's roles in that order (receive,
route, process, dispatch, with the state store and the service that runs them);
``dicom/`` reads series and writes every DICOM object the node makes; ``report/``
builds the QA report bundle; ``cli/`` has one module per ``sct-node`` verb;
``tools/`` holds what stands beside the node (demo, evaluation, phantom writer).
docs/architecture.md draws the layout and its rules.
"""

from __future__ import annotations

__version__ = "0.1.0"
