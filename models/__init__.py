"""Image-translation models (MR -> synthetic CT), their data, training and evaluation.

This package never imports ``sct_node``: it holds the image primitives
(:class:`models.volume.Volume`) and the models, and can be used on its own.
"""

from __future__ import annotations

__version__ = "0.1.0"
