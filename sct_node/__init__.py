"""sct-node: a DICOM node that turns MR series into synthetic CTs for MRI-only radiotherapy.

Data flows one way through its packages: receive -> spool -> job -> read ->
model (``models``) -> write -> QA (``dosimetry``) -> report -> dispatch.
"""

from __future__ import annotations

__version__ = "0.1.0"
