"""``bulk``: the classic bulk-density assignment, the non-learned reference model.

Inside the body outline every voxel gets one water-equivalent CT number; the
outside is air. It is what MRI-only planning did before learned sCTs, and the
dosimetric QA's reference: a learned sCT should do at least as well.

References
----------
J. Korsholm, H. Nielsen, T. Edmund, "Development and validation of a method
for MR-only radiotherapy treatment planning of the prostate", Radiat. Oncol.
9:16, 2014 (bulk density MRI-only planning and its dose accuracy).
"""

from __future__ import annotations

import numpy as np

from models import __version__
from models.base import HU_MAX, HU_MIN, ModelCard, ProgressCallback, SyntheticCT
from models.body_mask import body_mask_from_mr, given_body_mask
from models.errors import ModelError
from models.volume import Volume

__all__ = ["BulkDensityModel"]

#: CT number of air by definition of the Hounsfield scale.
AIR_HU = -1000.0


class BulkDensityModel:
    """Water-equivalent body, air outside.

    Parameters
    ----------
    tissue_hu : float
        CT number given to every body voxel (0 HU: water).
    """

    def __init__(self, tissue_hu: float = 0.0) -> None:
        if not HU_MIN <= tissue_hu <= HU_MAX:
            raise ModelError(f"tissue_hu must lie in [{HU_MIN}, {HU_MAX}]; found {tissue_hu}")
        self.tissue_hu = float(tissue_hu)
        self.card = ModelCard(
            name="bulk",
            version=__version__,
            description=(f"Bulk density assignment: body outline from the MR (Otsu, largest component, "
                         f"hole filling) set to {self.tissue_hu:g} HU, air ({AIR_HU:g} HU) outside."),
            content_hash=f"tissue_hu={self.tissue_hu:g}",
            intended_use="Reference for dosimetric QA and a fallback; ignores bone and air cavities.",
        )

    def translate(self, mr: Volume, *, progress: ProgressCallback | None = None,
                  body_mask: np.ndarray | None = None) -> SyntheticCT:
        """Assign bulk densities on the MR's grid (see :class:`TranslationModel`)."""
        body = body_mask_from_mr(mr) if body_mask is None else given_body_mask(body_mask, mr)
        hu = np.where(body, np.float32(self.tissue_hu), np.float32(AIR_HU)).astype(np.float32)
        if progress is not None:
            progress(mr.shape[0], mr.shape[0])
        return SyntheticCT(hu=mr.with_array(hu), body_mask=body)
