"""MR -> synthetic CT models, their phantoms, training data and training, and the input guard that checks a series.

The lowest package: it never imports ``sct_node`` or ``dosimetry`` and can be used on its own. Besides the
models it holds what the others build on: the image type (:class:`models.volume.Volume`), the project's
exception root (:mod:`models.errors`) and its atomic file write (:mod:`models.fileio`).
"""

from __future__ import annotations

__version__ = "0.1.0"
