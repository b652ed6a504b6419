"""Tissue plausibility checks on real phantom CTs and on corrupted copies, against the old soft-tissue mean.

Run with the project installed::

    python benchmarks/tissue_check.py [--seeds 10] [--shape Z Y X]

Method
------
For each site (head, pelvis) and seed, the phantom's own CT is an sCT that
is right by construction; it must PASS the three tissue checks of
``dosimetry.qa`` (``soft_tissue_peak``, ``fat_share``, ``bone_slices``). Each
CT is then corrupted with the phantom's labels, keeping its noise (a voxel's
value moves by the difference of the two tissues' CT numbers):

* half-brain fat (head): brain grey and white matter left of the midline
  become fat (-100 HU); half-soft-tissue fat (pelvis): muscle, generic soft
  tissue and organs left of the midline become fat;
* soft tissue +120 HU: every tissue of the soft-tissue window (skin, muscle,
  organs, brain, fluids) 120 HU denser;
* bone removed: every body voxel at 200 HU or more becomes soft tissue (40 HU);
* all soft tissue fat: every soft-tissue-window tissue becomes fat;
* (head) the reported case: a skull-stripped brain (body = brain and CSF)
  whose brain sits at -89 HU, and the same brain with correct CT numbers (the
  stripped mask is the brain and its CSF eroded by two voxels, as stripping
  removes the brain's surface).

Every corrupted sCT must FAIL at least one tissue check; the skull-stripped
brain with correct CT numbers FAILs ``bone_slices`` on purpose (docs/qa.md).
Half the pelvic soft tissue turned to fat is reported but not counted: it looks
like an obese pelvis, and without a reference CT nothing tells them apart.
The peer is the check this one replaced, the mean HU of the voxels already in
the soft-tissue window judged against 30 +/- 40 / 80 HU; its verdict is printed
next to the new one, with how many corruptions each caught.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

# The project root first: this folder's models.py would otherwise hide the models package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dosimetry.qa import QaInputs, run_qa
from dosimetry.tissue_composition import TissueComposition
from dosimetry.verdict import Verdict
from models.phantoms import TISSUE_PROPERTIES, Tissue, generate_phantom

TISSUE_CHECKS = ("soft_tissue_peak", "fat_share", "bone_slices")
SOFT = (Tissue.SKIN, Tissue.MUSCLE, Tissue.SOFT_TISSUE, Tissue.BRAIN_GM, Tissue.BRAIN_WM, Tissue.CSF,
        Tissue.BLADDER_URINE, Tissue.RECTUM_WALL, Tissue.PROSTATE, Tissue.EYE)
BRAIN = (Tissue.BRAIN_GM, Tissue.BRAIN_WM)
BONE = (Tissue.CORTICAL_BONE, Tissue.MARROW)
FAT_HU = TISSUE_PROPERTIES[Tissue.FAT].hu


def _replace(phantom, tissues, new_hu, region=None) -> np.ndarray:
    """The CT with the voxels of ``tissues`` (inside ``region``) moved to ``new_hu``, noise kept."""
    labels = phantom.labels.array
    hu = phantom.ct_hu.array.astype(np.float32)
    for tissue in tissues:
        where = labels == tissue if region is None else (labels == tissue) & region
        hu[where] += np.float32(new_hu - TISSUE_PROPERTIES[tissue].hu)
    return hu


def corruptions(phantom) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (hu, body mask)}`` of the corrupted copies of one phantom's CT."""
    labels = phantom.labels.array
    left = np.zeros(labels.shape, dtype=bool)
    left[:, :, labels.shape[2] // 2:] = True  # +x is patient left
    body = phantom.body_mask
    half = BRAIN if phantom.site == "head" else (Tissue.MUSCLE, Tissue.SOFT_TISSUE, Tissue.RECTUM_WALL,
                                                 Tissue.PROSTATE, Tissue.BLADDER_URINE)
    cases = {
        f"half {'brain' if phantom.site == 'head' else 'soft tissue'} fat": (_replace(phantom, half, FAT_HU, left),
                                                                            body),
        "soft tissue +120 HU": (phantom.ct_hu.array.astype(np.float32)
                                + 120.0 * np.isin(labels, SOFT).astype(np.float32), body),
        "bone removed": (np.where(body & (phantom.ct_hu.array >= 200), 40, phantom.ct_hu.array).astype(np.float32),
                         body),
        "all soft tissue fat": (_replace(phantom, SOFT, FAT_HU), body),
    }
    if phantom.site == "head":
        # Skull stripping removes the brain's surface with the CSF around it: two voxels of margin.
        stripped = ndimage.binary_erosion(np.isin(labels, (*BRAIN, Tissue.CSF)), iterations=2)
        outside = np.where(stripped, phantom.ct_hu.array, -1000).astype(np.float32)
        brain_fat = _replace(phantom, BRAIN, -89.0)
        cases["skull-stripped brain at -89 HU"] = (np.where(stripped, brain_fat, -1000).astype(np.float32), stripped)
        cases["skull-stripped brain, right HU"] = (outside, stripped)
    return cases


def old_soft_tissue_mean(hu: np.ndarray, body: np.ndarray) -> Verdict:
    """The replaced check: mean of the body voxels in [-30, 200) HU, 30 +/- 40 (pass) / 80 (fail) HU."""
    values = hu[body]
    inside = values[(values >= -30) & (values < 200)]
    if inside.size == 0:
        return Verdict.FAIL
    deviation = abs(float(inside.mean()) - 30.0)
    return Verdict.PASS if deviation <= 40 else Verdict.WARN if deviation <= 80 else Verdict.FAIL


def tissue_verdicts(phantom, hu: np.ndarray, body: np.ndarray) -> tuple[Verdict, dict, TissueComposition]:
    result = run_qa(QaInputs(sct=phantom.ct_hu.with_array(hu), site=phantom.site, mr_body_mask=body,
                             compute_dose=False)).result
    checks = {c.name: c for c in result.checks if c.name in TISSUE_CHECKS}
    worst = max((c.verdict for c in checks.values()), key=lambda v: v.severity)
    return worst, checks, result.composition.tissue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="phantoms per site (default 10)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="grid (default: site default)")
    args = parser.parse_args()
    shape = tuple(args.shape) if args.shape else None
    real_pass = real_total = 0
    caught = {"new": 0, "old": 0}
    corrupted_total = 0
    print(f"{'site':7} {'seed':>4}  {'case':34} {'peak HU':>8} {'fat %':>6} {'bone sl %':>9}  "
          f"{'tissue':6} {'old mean':8}  failed checks")
    for site in ("head", "pelvis"):
        for seed in range(args.seeds):
            phantom = generate_phantom(site, seed, shape_zyx=shape)
            cases = {"real CT": (phantom.ct_hu.array.astype(np.float32), phantom.body_mask)}
            cases.update(corruptions(phantom))
            for name, (hu, body) in cases.items():
                verdict, checks, composition = tissue_verdicts(phantom, hu, body)
                peak = composition.soft_tissue_peak_hu
                old = old_soft_tissue_mean(hu, body)
                failed = ", ".join(n for n, c in checks.items() if c.verdict != Verdict.PASS)
                print(f"{site:7} {seed:>4}  {name:34} {'none' if np.isnan(peak) else f'{peak:.0f}':>8} "
                      f"{checks['fat_share'].value:>6.1f} {checks['bone_slices'].value:>9.1f}  {verdict.value:6} "
                      f"{old.value:8}  {failed}")
                if name == "half soft tissue fat":
                    continue  # ambiguous with an obese pelvis (module docstring)
                if name == "real CT":
                    real_total += 1
                    real_pass += verdict == Verdict.PASS
                else:
                    corrupted_total += 1
                    caught["new"] += verdict == Verdict.FAIL
                    caught["old"] += old == Verdict.FAIL
    print(f"\nreal phantom CTs passing the tissue checks: {real_pass}/{real_total} (target: all)")
    print(f"corrupted sCTs failing: tissue checks {caught['new']}/{corrupted_total} (target: all), "
          f"old soft-tissue mean {caught['old']}/{corrupted_total}; "
          f"ratio {caught['new'] / max(caught['old'], 1):.1f}")


if __name__ == "__main__":
    main()
