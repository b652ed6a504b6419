"""A site's HU reference: how far an sCT's body HU distribution lies from real CTs of the same site.

The composition checks (:mod:`dosimetry.tissue_composition`) test where the soft-tissue peak lies, how much
fat there is and whether bone is where it must be. They cannot say that the *whole distribution* of CT numbers
is unlike the site's: too little bone everywhere, a fat peak at the wrong place, a smeared soft-tissue peak.
A site reference, built by the physicist from planning CTs of the site (``sct-node hu-reference``), can.

**The measure.** Per CT, the quantiles of the body's HU (clipped to [-1024, 2000] HU; 199 quantiles,
0.5 % to 99.5 %). The distance between two distributions is the 1-Wasserstein (earth mover's) distance
``W1 = integral |F_a^-1(q) - F_b^-1(q)| dq`` approximated by the mean absolute difference of the quantiles
[1]_. Its unit is HU: the mean shift of CT numbers that turns one distribution into the other. The sCT is
compared with every reference CT and the **nearest** one counts: patients differ (a slim and an obese pelvis
hold different amounts of fat), and a reference of several CTs covers that spread. For an sCT and its own
CT, ``W1`` is at most the voxel-wise MAE (pairing voxel by voxel is one of the couplings the minimum runs
over), so an sCT within SynthRAD's typical MAE (about 65 HU for the best 2025 entries) of *some* real
patient lies closer than that.

**What it cannot know.** A distribution says nothing about *where* each HU lies: an sCT with the right
amounts of bone, fat and soft tissue in the wrong places is close. The reference is only as good as its CTs:
a reference of four pelvis CTs does not cover a hip prosthesis or a contrast-filled bladder. The leave-one-out
distances within the reference (stored with it and printed in the QA) show its own spread; limits far below
that spread flag healthy anatomy.

References
----------
.. [1] Villani C., "Optimal Transport: Old and New", Springer, 2009, remark 2.19 (in one dimension the
   1-Wasserstein distance is the L1 distance between quantile functions).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from dosimetry.errors import DosimetryError
from models.volume import Volume

__all__ = ["HU_RANGE", "QUANTILES", "REFERENCE_SCHEMA", "HuReference", "build_hu_reference", "hu_quantiles",
           "load_hu_reference"]

REFERENCE_SCHEMA = 1
#: CT numbers are clipped to this range before the quantiles (metal and couch artefacts do not dominate).
HU_RANGE = (-1024.0, 2000.0)
#: The quantile levels compared: 0.5 % to 99.5 % in 0.5 % steps.
QUANTILES = np.linspace(0.005, 0.995, 199)


def hu_quantiles(ct: Volume, body: np.ndarray) -> np.ndarray:
    """The body's HU quantiles at :data:`QUANTILES` (HU clipped to :data:`HU_RANGE`).

    Raises
    ------
    DosimetryError
        If the body mask does not match the CT or is empty.
    """
    body = np.asarray(body, dtype=bool)
    if body.shape != ct.shape:
        raise DosimetryError(f"body mask shape {body.shape} differs from the CT grid {ct.shape}")
    values = np.asarray(ct.array)[body]
    if values.size == 0:
        raise DosimetryError("the body mask is empty: no HU distribution to measure")
    return np.quantile(np.clip(values.astype(np.float64), *HU_RANGE), QUANTILES)


def _distance(a: ArrayLike, b: ArrayLike) -> float:
    return float(np.mean(np.abs(np.asarray(a) - np.asarray(b))))


@dataclass(frozen=True)
class HuReference:
    """The HU distributions of a site's real CTs (one quantile vector per CT)."""

    site: str
    case_ids: tuple[str, ...]
    quantiles: tuple[tuple[float, ...], ...]
    source: str = ""
    created: str = ""

    def __post_init__(self) -> None:
        if not self.case_ids or len(self.case_ids) != len(self.quantiles):
            raise DosimetryError(f"an HU reference needs at least one CT with its quantiles; found "
                                 f"{len(self.case_ids)} ids and {len(self.quantiles)} quantile vectors")
        if any(len(q) != len(QUANTILES) for q in self.quantiles):
            raise DosimetryError(f"every reference CT needs {len(QUANTILES)} quantiles (schema "
                                 f"{REFERENCE_SCHEMA}); rebuild the reference with `sct-node hu-reference`")

    def nearest(self, quantiles: np.ndarray) -> tuple[float, str]:
        """(distance in HU to the nearest reference CT, its id)."""
        distances = [_distance(quantiles, q) for q in self.quantiles]
        index = int(np.argmin(distances))
        return distances[index], self.case_ids[index]

    def leave_one_out_hu(self) -> list[float]:
        """Each reference CT's distance to its nearest other one: the reference's own spread (empty for one CT)."""
        if len(self.quantiles) < 2:
            return []
        return [min(_distance(q, other) for j, other in enumerate(self.quantiles) if j != i)
                for i, q in enumerate(self.quantiles)]

    def to_json(self) -> dict:
        return {"schema": REFERENCE_SCHEMA, "kind": "sct-node HU reference", "site": self.site,
                "hu_range": list(HU_RANGE), "quantile_levels": [round(float(q), 4) for q in QUANTILES],
                "source": self.source, "created": self.created,
                "cases": [{"id": case_id, "quantiles_hu": [round(float(v), 2) for v in q]}
                          for case_id, q in zip(self.case_ids, self.quantiles)],
                "leave_one_out_hu": [round(v, 2) for v in self.leave_one_out_hu()]}

    @classmethod
    def from_json(cls, data: object, where: str = "HU reference") -> HuReference:
        if not isinstance(data, dict) or data.get("kind") != "sct-node HU reference":
            raise DosimetryError(f"{where} is not an sct-node HU reference (expected \"kind\": \"sct-node HU "
                                 "reference\"); build one with `sct-node hu-reference`")
        if data.get("schema") != REFERENCE_SCHEMA:
            raise DosimetryError(f"{where} has schema {data.get('schema')!r}; this version reads schema "
                                 f"{REFERENCE_SCHEMA}: rebuild it with `sct-node hu-reference`")
        try:
            cases = data["cases"]
            return cls(site=str(data["site"]), case_ids=tuple(str(c["id"]) for c in cases),
                       quantiles=tuple(tuple(float(v) for v in c["quantiles_hu"]) for c in cases),
                       source=str(data.get("source", "")), created=str(data.get("created", "")))
        except (KeyError, TypeError, ValueError) as error:
            raise DosimetryError(f"{where} is malformed: {error!r}") from error


def build_hu_reference(site: str, cts: Sequence[tuple[str, Volume, np.ndarray]], source: str = "") -> HuReference:
    """A reference from ``(id, CT, body mask)`` of real CTs of one site."""
    cts = list(cts)
    if not cts:
        raise DosimetryError("an HU reference needs at least one CT; found none")
    return HuReference(site=site, case_ids=tuple(case_id for case_id, _, _ in cts),
                       quantiles=tuple(tuple(hu_quantiles(ct, body)) for _, ct, body in cts), source=source,
                       created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))


def load_hu_reference(path: Path) -> HuReference:
    """Read a reference file written by ``sct-node hu-reference``.

    Raises
    ------
    DosimetryError
        If the file cannot be read or is not a reference of this schema.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DosimetryError(f"cannot read the HU reference {path}: {error}") from error
    return HuReference.from_json(data, where=str(path))
