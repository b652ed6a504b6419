"""Tissue classes of a CT by HU interval: air, lung-like, fat, soft tissue, bone.

The image metrics split their errors by these classes (of the reference CT)
and the HU checks measure how much of an sCT body falls in each. The classes
partition the HU axis into half-open intervals ``[lower, upper)``:

=============  ==================  ==================================================
class          default HU          why this boundary
=============  ==================  ==================================================
air            < -950              lung below -950 HU is counted as emphysema,
                                   i.e. essentially gas (Gevenois et al. 1996)
lung-like      [-950, -190)        what is denser than gas but lighter than fat:
                                   lung, and gas mixed with tissue by partial volume
fat            [-190, -30)         adipose window of CT body-composition analysis
                                   (Kvist et al. 1988; Mitsiopoulos et al. 1998)
soft tissue    [-30, 200)          Mitsiopoulos et al. start skeletal muscle at
                                   -29 HU; the class extends up to the bone cut so
                                   that the classes cover every HU value
bone           >= 200              spongiosa, the lightest bone, lies at about
                                   200-400 HU (Schneider et al. 2000, also the source
                                   of the phantoms' CT numbers); a 250 HU cut would
                                   put the lightest trabecular bone into soft tissue
=============  ==================  ==================================================

All boundaries are fields of :class:`TissueThresholdsHu`, so a site may move
them; the order air < lung-like < fat < soft tissue < bone is enforced.

References
----------
P. A. Gevenois et al., "Comparison of computed density and microscopic
morphometry in pulmonary emphysema", Am. J. Respir. Crit. Care Med. 154(1),
187-192 (1996).

H. Kvist et al., "Total and visceral adipose-tissue volumes derived from
measurements with computed tomography in adult men and women", Am. J. Clin.
Nutr. 48(6), 1351-1361 (1988).

N. Mitsiopoulos et al., "Cadaver validation of skeletal muscle measurement by
magnetic resonance imaging and computerized tomography", J. Appl. Physiol.
85(1), 115-122 (1998) (muscle -29 to +150 HU, adipose -190 to -30 HU).

W. Schneider, T. Bortfeld and W. Schlegel, "Correlation between CT numbers
and tissue parameters needed for Monte Carlo simulations of clinical dose
distributions", Phys. Med. Biol. 45(2), 459-478 (2000).
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass

import numpy as np

from dosimetry.errors import DosimetryError

__all__ = ["TISSUE_CLASSES", "TissueClass", "TissueThresholdsHu"]


class TissueClass(enum.StrEnum):
    """A CT tissue class; its string value is the name used in reports."""

    AIR = "air"
    LUNG = "lung"
    FAT = "fat"
    SOFT_TISSUE = "soft_tissue"
    BONE = "bone"


#: The classes in increasing HU order (the order of every per-class result).
TISSUE_CLASSES: tuple[TissueClass, ...] = tuple(TissueClass)


@dataclass(frozen=True)
class TissueThresholdsHu:
    """Upper bounds (exclusive) of the first four classes; bone is everything above.

    Parameters
    ----------
    air_below_hu : float
        Air is ``hu < air_below_hu`` (default -950).
    lung_below_hu : float
        Lung-like is ``air_below_hu <= hu < lung_below_hu`` (default -190).
    fat_below_hu : float
        Fat is ``lung_below_hu <= hu < fat_below_hu`` (default -30).
    bone_from_hu : float
        Soft tissue is ``fat_below_hu <= hu < bone_from_hu``, bone is
        ``hu >= bone_from_hu`` (default 200).

    Raises
    ------
    DosimetryError
        If a bound is not finite or the bounds are not strictly increasing.

    References
    ----------
    See the module docstring for the source of each default.
    """

    air_below_hu: float = -950.0
    lung_below_hu: float = -190.0
    fat_below_hu: float = -30.0
    bone_from_hu: float = 200.0

    def __post_init__(self) -> None:
        bounds = self.bounds_hu
        if not all(math.isfinite(b) for b in bounds):
            raise DosimetryError(f"tissue class thresholds must be finite HU values; found {bounds}")
        if not all(lo < hi for lo, hi in itertools.pairwise(bounds)):
            raise DosimetryError(
                "tissue class thresholds must increase strictly (air < lung < fat < soft tissue < bone); "
                f"found air_below_hu={self.air_below_hu}, lung_below_hu={self.lung_below_hu}, "
                f"fat_below_hu={self.fat_below_hu}, bone_from_hu={self.bone_from_hu}"
            )

    @property
    def bounds_hu(self) -> tuple[float, float, float, float]:
        """The four class boundaries in increasing order."""
        return (float(self.air_below_hu), float(self.lung_below_hu), float(self.fat_below_hu),
                float(self.bone_from_hu))

    def interval_hu(self, tissue: TissueClass) -> tuple[float, float]:
        """The class's HU interval ``[lower, upper)``; open ends are infinite."""
        edges = (-math.inf, *self.bounds_hu, math.inf)
        i = TISSUE_CLASSES.index(TissueClass(tissue))
        return edges[i], edges[i + 1]

    def classify(self, hu: np.ndarray) -> np.ndarray:
        """Class index (position in :data:`TISSUE_CLASSES`) of every voxel.

        Parameters
        ----------
        hu : numpy.ndarray
            CT numbers in HU, any shape.

        Returns
        -------
        numpy.ndarray
            ``int8`` array of ``hu``'s shape: 0 air ... 4 bone, and -1 where
            ``hu`` is NaN (NaN belongs to no class; +/-inf go to bone/air).
        """
        hu = np.asarray(hu)
        # searchsorted(side="right") puts a value equal to a bound in the class above it: [lower, upper).
        labels = np.searchsorted(np.asarray(self.bounds_hu), hu, side="right").astype(np.int8)
        labels[np.isnan(hu)] = -1
        return labels
