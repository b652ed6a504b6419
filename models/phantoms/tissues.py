"""Tissue classes of the paired MR/CT phantoms and their CT and MR properties.

Every voxel of a phantom label map holds one :class:`Tissue`. The CT number
and the MR parameters of that tissue come from :data:`TISSUE_PROPERTIES`, one
frozen :class:`TissueProperties` per class, so that the CT and both MR
weightings are rendered from the same anatomy.

The MR values are for 1.5 T. Where a published 1.5 T measurement exists it is
used as printed; the remaining entries (skin, generic soft tissue, rectal
wall, fluids) are approximations, marked as such in their ``source`` field.
Proton density (PD) is relative to free water (1.0).

References
----------
.. [1] Stanisz G.J. et al., "T1, T2 relaxation and magnetization transfer in
   tissue at 3T", Magn. Reson. Med. 54:507-512, 2005 (Table 1 also lists the
   1.5 T values used here: white matter, grey matter, skeletal muscle).
.. [2] de Bazelaire C.M.J. et al., "MR imaging relaxation times of abdominal
   and pelvic tissues measured in vivo at 3.0 T: preliminary results",
   Radiology 230:652-659, 2004 (1.5 T column: subcutaneous fat, L4 bone
   marrow, prostate).
.. [3] Reichert I.L.H. et al., "Magnetic resonance imaging of cortical bone
   with ultrashort TE pulse sequences", Magn. Reson. Imaging 23:611-618, 2005
   (cortical bone T2* about 0.4-0.5 ms, T1 about 140-260 ms at 1.5 T).
.. [4] Techawiboonwong A. et al., "Cortical bone water: in vivo quantification
   with ultrashort echo-time MR imaging", Radiology 248:824-833, 2008 (bone
   water about 15-20 % by volume, used as the PD of cortical bone).
.. [5] Kwan R.K.-S., Evans A.C., Pike G.B., "MRI simulation-based evaluation
   of image-processing and classification methods", IEEE Trans. Med. Imaging
   18:1085-1097, 1999 (BrainWeb; PD of CSF 1.0, grey matter 0.86, white
   matter 0.77).
.. [6] Bottomley P.A. et al., "A review of normal tissue hydrogen NMR
   relaxation times and relaxation mechanisms from 1-100 MHz", Med. Phys.
   11:425-448, 1984 (fluids: CSF and other water-like fluids have T1 of
   several seconds and T2 of one to two seconds).
.. [7] Schneider W., Bortfeld T., Schlegel W., "Correlation between CT
   numbers and tissue parameters needed for Monte Carlo simulations of
   clinical dose distributions", Phys. Med. Biol. 45:459-478, 2000 (CT
   numbers of body tissues: adipose about -100, muscle about 40, spongiosa
   about 200-400, cortical bone above 1000 HU).
.. [8] Bushberg J.T. et al., "The Essential Physics of Medical Imaging",
   3rd ed., Lippincott Williams & Wilkins, 2012, ch. 10 (typical CT numbers:
   air -1000, fat about -100, water 0, CSF about 15, white matter about 30,
   grey matter about 40, muscle about 40-50).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from models.errors import PhantomError

__all__ = ["TISSUE_PROPERTIES", "Tissue", "TissueProperties", "property_lookup"]


class Tissue(IntEnum):
    """Tissue classes stored in a phantom label map (``uint8``)."""

    OUTSIDE_AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    SOFT_TISSUE = 4
    BRAIN_GM = 5
    BRAIN_WM = 6
    CSF = 7
    CORTICAL_BONE = 8
    MARROW = 9
    AIR_CAVITY = 10
    BLADDER_URINE = 11
    RECTUM_WALL = 12
    PROSTATE = 13
    EYE = 14


@dataclass(frozen=True)
class TissueProperties:
    """CT and 1.5 T MR properties of one tissue class.

    Parameters
    ----------
    hu : float
        CT number in Hounsfield units.
    t1_ms, t2_ms : float
        Longitudinal and transverse relaxation times at 1.5 T in
        milliseconds; positive. They are irrelevant where ``pd_relative`` is
        0 (air), where 1 ms is stored.
    pd_relative : float
        Proton density relative to free water, in [0, 1].
    source : str
        Where the numbers come from (keys of the module References).

    Raises
    ------
    PhantomError
        If a value is outside its physical range.
    """

    hu: float
    t1_ms: float
    t2_ms: float
    pd_relative: float
    source: str

    def __post_init__(self) -> None:
        if not -1024.0 <= self.hu <= 3071.0:
            raise PhantomError(f"hu must lie in [-1024, 3071]; found {self.hu}")
        if not (self.t1_ms > 0 and self.t2_ms > 0):
            raise PhantomError(f"t1_ms and t2_ms must be positive; found {self.t1_ms}, {self.t2_ms}")
        if not 0.0 <= self.pd_relative <= 1.0:
            raise PhantomError(f"pd_relative must lie in [0, 1]; found {self.pd_relative}")


_P = TissueProperties

#: Properties of every tissue class, read-only.
TISSUE_PROPERTIES: Mapping[Tissue, TissueProperties] = types.MappingProxyType(
    {
        Tissue.OUTSIDE_AIR: _P(-1000.0, 1.0, 1.0, 0.0, "[8]; no MR signal"),
        # Skin: no 1.5 T in vivo reference used; set between muscle and fat.
        Tissue.SKIN: _P(30.0, 900.0, 45.0, 0.70, "approximation"),
        Tissue.FAT: _P(-100.0, 343.0, 58.0, 0.90, "HU [7][8]; T1/T2 [2] subcutaneous fat"),
        Tissue.MUSCLE: _P(45.0, 1008.0, 44.0, 0.80, "HU [8]; T1/T2 [1] skeletal muscle"),
        # Generic parenchyma/bowel filling the body between named organs.
        Tissue.SOFT_TISSUE: _P(40.0, 1000.0, 60.0, 0.80, "HU [8]; T1/T2 approximation"),
        Tissue.BRAIN_GM: _P(40.0, 1124.0, 95.0, 0.86, "HU [8]; T1/T2 [1]; PD [5]"),
        Tissue.BRAIN_WM: _P(28.0, 884.0, 72.0, 0.77, "HU [8]; T1/T2 [1]; PD [5]"),
        Tissue.CSF: _P(8.0, 4000.0, 2000.0, 1.00, "HU [8]; T1/T2 [6] water-like; PD [5]"),
        # Near-zero PD and sub-millisecond T2: no signal at TE >= 15 ms, the
        # reason bone is invisible on conventional MR and must be synthesised.
        Tissue.CORTICAL_BONE: _P(1300.0, 200.0, 0.5, 0.15, "HU [7]; T1/T2* [3]; PD [4]"),
        # Cancellous bone filled with (mostly fatty) marrow.
        Tissue.MARROW: _P(300.0, 549.0, 49.0, 0.70, "HU [7] spongiosa; T1/T2 [2] L4 marrow"),
        Tissue.AIR_CAVITY: _P(-1000.0, 1.0, 1.0, 0.0, "[8]; no MR signal"),
        Tissue.BLADDER_URINE: _P(8.0, 3000.0, 1500.0, 1.00, "HU [8] water-like; T1/T2 [6] approximation"),
        Tissue.RECTUM_WALL: _P(40.0, 1000.0, 50.0, 0.80, "HU [8]; T1/T2 approximation (smooth muscle)"),
        Tissue.PROSTATE: _P(40.0, 1317.0, 88.0, 0.85, "HU [8]; T1/T2 [2]"),
        Tissue.EYE: _P(10.0, 4000.0, 1500.0, 1.00, "HU [8] water-like; T1/T2 [6] approximation (vitreous)"),
    }
)


def property_lookup(name: str) -> np.ndarray:
    """A lookup table from tissue label to one property.

    Parameters
    ----------
    name : str
        ``"hu"``, ``"t1_ms"``, ``"t2_ms"`` or ``"pd_relative"``.

    Returns
    -------
    numpy.ndarray
        ``float64`` array of length ``max(Tissue) + 1``; ``table[labels]``
        maps a label map to the property.

    Raises
    ------
    PhantomError
        If ``name`` is not one of the numeric properties.
    """
    allowed = ("hu", "t1_ms", "t2_ms", "pd_relative")
    if name not in allowed:
        raise PhantomError(f"property name must be one of {allowed}; found {name!r}")
    table = np.zeros(max(Tissue) + 1, dtype=np.float64)
    for tissue, props in TISSUE_PROPERTIES.items():
        table[int(tissue)] = getattr(props, name)
    return table
