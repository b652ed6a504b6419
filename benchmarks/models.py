"""Every model on held-out phantoms in one run: SynthRAD metrics, seconds per volume, peak memory, steps curve.

Run from the repository root::

    python benchmarks/models.py [--shape 96 256 256] [--cases 1] [--steps-curve 1 2 5 10 20 50 250]
                                [--curve-slices 16] [--checkpoint pix2pix=DIR contourdiff=DIR]
                                [--memory-shape 200 512 512]

Method
------
Held-out phantoms (head and pelvis, seeds from 2000 up: never used for the bundled weights, whose
training seeds are 0-3 and validation seed 1000) at ``--shape`` (default 96 x 256 x 256, the issue's volume),
generated once and handed to the child processes as ``.npz`` arrays (no image files, so the script needs
only numpy, scipy and torch besides this repository and runs as it is on a bare GPU machine).
Each method runs in its own subprocess on the same machine, one after the other, so its peak resident
memory (``ru_maxrss``) is its own; times are model-only (``translate``), after loading and one untimed
warm-up pass on 8 slices. Methods: ``bulk``,
the bundled ``unet`` and ``diffusion`` (its default steps), and any ``--checkpoint NAME=DIR``. Metrics
are :mod:`sct_node.tools.evaluate`'s (SynthRAD definitions; MAE per tissue class of the real CT).

Then the diffusion model's MAE and time at each ``--steps-curve`` value and at its default steps, on the
central ``--curve-slices`` slices of the same held-out volumes (same anatomy and grid, thinner: 250 steps
on whole volumes would take most of an hour on a 2-core CPU; the times printed there are scaled to the
whole volume), and the peak memory of the default diffusion model on one ``--memory-shape`` volume
(default 200 x 512 x 512) on the CPU. With CUDA available every model runs there (the header says which
device), so the seconds per volume are GPU seconds.

Targets (issue 4): diffusion body MAE <= U-Net's and bone MAE < U-Net's; MAE at the default steps within
5 % of the 250-step MAE (both on the slabs); <= 60 s per 256 x 256 x 96 volume on this 2-core CPU; < 4 GB peak for
512 x 512 x 200. The script prints each ratio and says MET or NOT MET.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HELD_OUT_SEED = 2000


def _write_cases(folder: Path, shape: tuple[int, int, int], count: int) -> Path:
    """Generate the held-out phantoms (head and pelvis, ``count`` seeds each) as ``.npz`` files in ``folder``."""
    import numpy as np

    from models.phantoms import generate_phantom

    folder.mkdir(parents=True, exist_ok=True)
    for site in ("head", "pelvis"):
        for seed in range(HELD_OUT_SEED, HELD_OUT_SEED + count):
            phantom = generate_phantom(site, seed, shape_zyx=shape)
            ct = phantom.ct_hu
            np.savez(folder / f"{site}-{seed:04d}.npz", mr=phantom.mr_t1.array, ct=ct.array, body=phantom.body_mask,
                     spacing=ct.spacing_mm, origin=ct.origin_mm, direction=ct.direction)
    return folder


def _read_cases(folder: Path, slices: int) -> list:
    """The cases in ``folder``; ``slices`` > 0 and below the depth: their central slabs (same anatomy, thinner)."""
    import numpy as np

    from models.learned.data import Case
    from models.volume import Volume

    cases = []
    for path in sorted(folder.glob("*.npz")):
        data = np.load(path)
        depth = data["mr"].shape[0]
        start = (depth - slices) // 2 if 0 < slices < depth else 0
        stop = start + slices if 0 < slices < depth else depth
        mr = Volume(data["mr"], tuple(data["spacing"]), tuple(data["origin"]), data["direction"])
        cases.append(Case(path.stem, mr.slab(start, stop), mr.with_array(data["ct"]).slab(start, stop),
                          data["body"][start:stop]))
    return cases


def _one(model_name: str, data: str, steps: int | None) -> dict:
    """Child process: evaluate one model on the cases ``data`` ("FOLDER,SLICES"); metrics, seconds, peak RSS."""
    from models.registry import load_model
    from sct_node.tools.evaluate import evaluate_cases

    folder, slices = data.rsplit(",", 1)
    cases = _read_cases(Path(folder), int(slices))
    options = {} if model_name == "bulk" else ({"steps": steps} if steps else {})
    model = load_model(model_name, **options)
    # One warm-up pass on a few slices (kernel selection, CUDA context, allocator), not timed.
    model.translate(cases[0].mr.slab(0, min(8, cases[0].mr.shape[0])))
    evaluation = evaluate_cases(model, cases)
    summary = evaluation.summary
    return {"model": model_name, "identity": model.card.identity, "mae_hu": summary["mae_hu"],
            "mae_bone_hu": summary["mae_per_tissue_hu"].get("bone"),
            "mae_soft_tissue_hu": summary["mae_per_tissue_hu"].get("soft_tissue"),
            "psnr_db": summary["psnr_db"], "ssim": summary["ssim"],
            "seconds_per_volume": summary["seconds_per_volume"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def _memory(model_name: str, shape: tuple[int, int, int]) -> dict:
    """Child process: translate one large volume; peak RSS above what loading took."""
    from models.phantoms import generate_phantom
    from models.registry import load_model

    mr = generate_phantom("pelvis", HELD_OUT_SEED, shape_zyx=shape).mr_t1
    model = load_model(model_name)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    started = time.perf_counter()
    model.translate(mr)
    return {"model": model_name, "shape": list(shape), "seconds": time.perf_counter() - started,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
            "peak_rss_before_translate_gb": before}


def _child(*arguments: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"benchmark child {arguments} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _row(r: dict) -> str:
    def n(value, digits=1):
        return "-" if value is None else f"{value:.{digits}f}"

    return (f"{r['model'][:28]:28} {n(r['mae_hu']):>8} {n(r['mae_bone_hu']):>9} {n(r['mae_soft_tissue_hu']):>9} "
            f"{n(r['psnr_db'], 2):>8} {n(r['ssim'], 3):>6} {n(r['seconds_per_volume'], 1):>9} {n(r['peak_rss_gb'], 2):>8}")


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 256, 256))
    parser.add_argument("--cases", type=int, default=1, help="held-out cases per site")
    parser.add_argument("--steps-curve", type=int, nargs="*", default=[1, 2, 5, 10, 20, 50, 250])
    parser.add_argument("--curve-slices", type=int, default=16,
                        help="the steps curve runs on this many central slices of each volume (0: whole volumes)")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="NAME=DIR of further checkpoints")
    parser.add_argument("--memory-shape", type=int, nargs=3, default=(200, 512, 512))
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "DATA", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-one", nargs=4, metavar=("MODEL", "Z", "Y", "X"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one[0], args.one[1], int(args.one[2]) or None)))
        return 0
    if args.memory_one:
        print(json.dumps(_memory(args.memory_one[0], tuple(int(v) for v in args.memory_one[1:]))))
        return 0

    import torch

    folder = _write_cases(Path(tempfile.mkdtemp(prefix="sct-bench-")), tuple(args.shape), args.cases)
    data = f"{folder},0"
    device = f"CUDA ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU"
    print(f"held-out phantoms: {2 * args.cases} x {tuple(args.shape)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; models run on the {device}")
    methods = ["bulk", "unet", "diffusion"] + [item.split("=", 1)[1] for item in args.checkpoint]
    print(f"{'method':28} {'MAE HU':>8} {'bone MAE':>9} {'soft MAE':>9} {'PSNR dB':>8} {'SSIM':>6} "
          f"{'s/volume':>9} {'peak GB':>8}")
    results = {}
    for method in methods:
        results[method] = _child("--one", method, data, "0")
        print(_row(results[method]), flush=True)
    unet, diffusion = results["unet"], results["diffusion"]
    print("\ndiffusion (default steps) vs U-Net:")
    print(f"  body MAE ratio {diffusion['mae_hu'] / unet['mae_hu']:.3f} (target <= 1): "
          f"{_verdict(diffusion['mae_hu'] <= unet['mae_hu'])}")
    print(f"  bone MAE ratio {diffusion['mae_bone_hu'] / unet['mae_bone_hu']:.3f} (target < 1): "
          f"{_verdict(diffusion['mae_bone_hu'] < unet['mae_bone_hu'])}")
    # The target is 60 s for 96 x 256 x 256; on another --shape it scales with the number of voxels.
    budget = 60.0 * (args.shape[0] * args.shape[1] * args.shape[2]) / (96 * 256 * 256)
    print(f"  seconds per volume {diffusion['seconds_per_volume']:.1f} (target <= {budget:.0f} s for "
          f"{' x '.join(map(str, args.shape))}, i.e. 60 s for 96 x 256 x 256): "
          f"{_verdict(diffusion['seconds_per_volume'] <= budget)}")
    if torch.cuda.is_available():
        print(f"  GPU seconds per volume: diffusion {diffusion['seconds_per_volume']:.2f}, "
              f"U-Net {unet['seconds_per_volume']:.2f} (goal: a few seconds)")
    if args.steps_curve:
        from models.registry import load_model

        default_steps = load_model("diffusion").steps
        slices = args.curve_slices if 0 < args.curve_slices < args.shape[0] else args.shape[0]
        curve_data = f"{folder},{slices}"
        scale = args.shape[0] / slices
        print(f"\ndiffusion steps curve on the central {slices} slices of each volume "
              f"(s/volume scaled to {args.shape[0]} slices; default {default_steps} steps):")
        curve = {}
        for steps in sorted({*args.steps_curve, default_steps}):
            curve[steps] = _child("--one", "diffusion", curve_data, str(steps))
            print(f"  {steps:>4} steps: MAE {curve[steps]['mae_hu']:.1f} HU, bone {curve[steps]['mae_bone_hu']:.1f}, "
                  f"{curve[steps]['seconds_per_volume'] * scale:.1f} s/volume"
                  f"{'  <- default' if steps == default_steps else ''}", flush=True)
        most = curve[max(curve)]
        ratio = curve[default_steps]["mae_hu"] / most["mae_hu"]
        print(f"  default-steps MAE / {max(curve)}-step MAE = {ratio:.3f} (target <= 1.05): {_verdict(ratio <= 1.05)}")
    shutil.rmtree(folder, ignore_errors=True)
    if not args.skip_memory:
        memory = _child("--memory-one", "diffusion", *map(str, args.memory_shape))
        print(f"\npeak memory, diffusion on {tuple(args.memory_shape)}: {memory['peak_rss_gb']:.2f} GB "
              f"({memory['seconds']:.0f} s; target < 4 GB): {_verdict(memory['peak_rss_gb'] < 4)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
