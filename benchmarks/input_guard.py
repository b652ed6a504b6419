"""Input guard: detection and false-alarm rates on generated shifts, against the bundled models' envelope.

    python benchmarks/input_guard.py [--cases 20]      # about 4 minutes on a 2-core CPU

In-distribution: held-out T1w spin-echo phantoms (seeds from 2000, never trained on; head and pelvis alternating)
on the bundled weights' training grid (32 x 256 x 256), with the header ``sct-node phantom`` writes. Shifts,
each made from the same phantoms:

* ``t2``: the T2w image with its own header (TR 4000 ms, TE 100 ms);
* ``t2-anonymised``: the T2w image with no header at all (only the images judge);
* ``gamma-0.5``, ``gamma-2``: the T1w image with its intensities raised to a power (relative to the 99.5th
  percentile in the body), behind a T1w header;
* ``inverted``: the T1w contrast inverted inside the body, behind a T1w header;
* ``skull-stripped``: head phantoms only, everything but brain and CSF set to the air's signal (the case that
  came out mostly fat), behind a T1w header;
* ``head-vs-pelvis``: head phantoms against an envelope of pelvis phantoms only (seeds 0-2);
* ``crop-z``: the central 8 slices; ``crop-xy``: the central 96 x 96 pixels.

For each condition: detected (verdict soft or hard), hard (what the default route refuses), and caught by the
intensity distance alone. The peer: the same distance on the *plain* histograms (no log compression), with
its threshold set by the same leave-one-out rule, as the intensity-only detection of the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.body_mask import body_mask_from_mr
from models.envelope import (
    INTENSITY_FLOOR,
    INTENSITY_MARGIN,
    Envelope,
    acquisition_from_sidecar,
    envelope_from_cases,
    guard,
    intensity_histogram,
)
from models.phantoms import generate_phantom
from models.phantoms.synthrad import phantom_acquisition
from models.phantoms.tissues import Tissue
from models.registry import BUNDLED_WEIGHTS

SHAPE_ZYX = (32, 256, 256)
FIRST_SEED = 2000


def header(site: str, weighting: str = "t1") -> dict:
    tr, te = ("500", "15") if weighting == "t1" else ("4000", "100")
    return {"ScanningSequence": "SE", "SequenceVariant": "NONE", "ScanOptions": "", "RepetitionTime": tr,
            "EchoTime": te, "MagneticFieldStrength": "1.5", "BodyPartExamined": site.upper(),
            "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"]}


def plain_w1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.cumsum(a - b)).sum() * 2.0 / len(a))


def conditions(phantom):
    """(name, header or None, volume, envelope key) for every condition made from one phantom."""
    site, t1 = phantom.site, phantom.mr_t1
    a, body = t1.array, phantom.body_mask
    ref = float(np.percentile(a[body], 99.5))
    yield "in-distribution", header(site), t1, "bundled"
    yield "t2", header(site, "t2"), phantom.mr_t2, "bundled"
    yield "t2-anonymised", None, phantom.mr_t2, "bundled"
    yield "gamma-0.5", header(site), t1.with_array(ref * (np.clip(a, 0, None) / ref) ** 0.5), "bundled"
    yield "gamma-2", header(site), t1.with_array(ref * (np.clip(a, 0, None) / ref) ** 2.0), "bundled"
    yield "inverted", header(site), t1.with_array(np.where(body, np.clip(ref - a, 0, None) + 0.05 * ref, a)), \
        "bundled"
    if site == "head":
        labels = phantom.labels.array
        brain = np.isin(labels, [Tissue.BRAIN_GM, Tissue.BRAIN_WM, Tissue.CSF])
        air = float(np.median(a[labels == Tissue.OUTSIDE_AIR]))
        yield "skull-stripped", header(site), t1.with_array(np.where(brain, a, air).astype(np.float32)), "bundled"
        yield "head-vs-pelvis", header(site), t1, "pelvis"
    yield "crop-z", header(site), t1.slab(12, 20), "bundled"
    n = a.shape[1]
    lo = (n - 96) // 2
    cropped = t1.with_array(a)  # same geometry object, then cut: origin moves with the crop
    from models.volume import Volume

    origin = cropped.index_to_patient(np.array([lo, lo, 0.0]))
    yield "crop-xy", header(site), Volume(a[:, lo:lo + 96, lo:lo + 96].copy(), t1.spacing_mm, tuple(origin),
                                          t1.direction), "bundled"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20, help="phantoms per condition (head and pelvis alternate)")
    parser.add_argument("--json-output", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    card = json.loads((BUNDLED_WEIGHTS / "unet" / "card.json").read_text())
    envelopes = {"bundled": Envelope.from_json(card["envelope"])}
    pelvis_cases = [(f"pelvis-{s}", generate_phantom("pelvis", s, shape_zyx=SHAPE_ZYX).mr_t1,
                     acquisition_from_sidecar(phantom_acquisition("pelvis", "t1"))) for s in range(3)]
    envelopes["pelvis"] = envelope_from_cases(pelvis_cases)
    # The peer's thresholds: plain-histogram W1, same leave-one-out rule.
    plain = {}
    for key, envelope in envelopes.items():
        hists = [np.asarray(h) for h in envelope.intensity.histograms]
        loo = [min(plain_w1(h, g) for j, g in enumerate(hists) if j != i) for i, h in enumerate(hists)]
        plain[key] = (hists, max(INTENSITY_MARGIN * max(loo), INTENSITY_FLOOR))
    rows: dict[str, dict[str, list]] = {}
    for i in range(args.cases):
        site = ("head", "pelvis")[i % 2]
        phantom = generate_phantom(site, FIRST_SEED + i, shape_zyx=SHAPE_ZYX)
        for name, head, volume, key in conditions(phantom):
            result = guard(head, volume, envelopes[key])
            hists, threshold = plain[key]
            body = body_mask_from_mr(volume)
            h = intensity_histogram(volume.array, body)
            peer = min(plain_w1(h, g) for g in hists) > threshold
            row = rows.setdefault(name, {"detected": [], "hard": [], "intensity": [], "peer": [], "score": []})
            row["detected"].append(result.verdict in ("soft", "hard"))
            row["hard"].append(result.verdict == "hard")
            row["intensity"].append(any(f.check == "intensity" for f in result.findings))
            row["peer"].append(peer)
            row["score"].append(result.score)
    print(f"input guard vs the bundled envelope (intensity threshold {envelopes['bundled'].intensity.threshold:.4f};"
          f" plain-histogram peer threshold {plain['bundled'][1]:.4f}); {args.cases} phantoms per condition "
          f"(head-only conditions: {sum(1 for i in range(args.cases) if i % 2 == 0)})")
    print(f"{'condition':16} {'n':>3} {'flagged':>8} {'hard':>6} {'intensity':>10} {'peer (plain)':>13} "
          f"{'ratio':>6} {'score median [min-max]':>24}")
    summary = {}
    for name, row in rows.items():
        n = len(row["detected"])
        rate = {k: float(np.mean(v)) for k, v in row.items() if k != "score"}
        scores = np.asarray(row["score"], dtype=float)
        ratio = rate["intensity"] / rate["peer"] if rate["peer"] else float("inf") if rate["intensity"] else 1.0
        print(f"{name:16} {n:>3} {rate['detected']:>8.0%} {rate['hard']:>6.0%} {rate['intensity']:>10.0%} "
              f"{rate['peer']:>13.0%} {ratio:>6.2f} {np.median(scores):>8.2f} [{scores.min():.2f}-{scores.max():.2f}]")
        summary[name] = {**rate, "n": n, "score_median": float(np.median(scores))}
    in_dist = rows["in-distribution"]
    print(f"false alarms (in-distribution flagged): {np.mean(in_dist['detected']):.0%}; refused by default (hard): "
          f"{np.mean(in_dist['hard']):.0%}; {time.perf_counter() - started:.0f} s")
    if args.json_output:
        args.json_output.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
