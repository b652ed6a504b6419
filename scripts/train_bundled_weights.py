"""Train the bundled default weights (diffusion and U-Net) on phantoms, reproducibly and resumably.

    python scripts/train_bundled_weights.py [--work DIR] [--steps N] [--arch diffusion unet]

1. Writes training phantoms (T1-weighted head and pelvis, seeds 0..CASES-1 per site, SynthRAD layout) into
   ``WORK/data`` — the benchmarks and tests use seeds from ``HELD_OUT_SEED`` up, never seen in training.
2. Trains each architecture into ``WORK/<arch>`` with ``sct-node train``'s code; running the script again
   resumes from the last checkpoint until ``--steps``.
3. For diffusion: measures MAE at 1, 2, 5, 10, 20 DDIM steps on held-out phantoms (seed 1000, 12 slices
   each) and picks the fewest steps within 5 % of the 20-step MAE as the default; records the curve in
   the model card. Running the script again after training finished only redoes this step.
4. Copies ``model.pt`` (float16) and ``card.json`` into ``models/weights/<arch>/``.

Everything is seeded; on this project's 2-core CI-class CPU the whole run takes about half an hour.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.learned.checkpoint import load_checkpoint, load_train_state, save_checkpoint  # noqa: E402
from models.learned.model import LearnedModel, default_steps_from_curve  # noqa: E402
from models.learned.train import TrainConfig, train  # noqa: E402
from models.phantoms import generate_phantom  # noqa: E402
from models.phantoms.synthrad import write_synthrad_case  # noqa: E402

CASES_PER_SITE = 4
#: Phantom seeds from here on are never used for training (benchmarks, tests).
HELD_OUT_SEED = 1000
SHAPE_ZYX = (32, 256, 256)
INTENDED_USE = ("Trained on synthetic phantoms only (sct-node's generator): makes translate, serve and demo work out "
                "of the box. NOT for clinical use: train on your own data with `sct-node train`.")


#: The steps curve runs on thinner held-out volumes: 38 sampling passes per slice on a 2-core CPU add up.
CURVE_SHAPE_ZYX = (12, 256, 256)


def write_phantoms(folder: Path, seeds: range, tag: str, shape=SHAPE_ZYX) -> Path:
    for site in ("head", "pelvis"):
        for seed in seeds:
            case = folder / f"{site}-{tag}-{seed:04d}"
            if not (case / "mask.mha").exists():
                write_synthrad_case(generate_phantom(site, seed, shape_zyx=shape), case)
    return folder


def steps_curve(checkpoint: Path, validation: Path, steps_list=(1, 2, 5, 10, 20)) -> dict[int, float]:
    from sct_node.evaluate import evaluate_model

    curve = {}
    for steps in steps_list:
        evaluation = evaluate_model(LearnedModel(checkpoint, steps=steps), validation)
        curve[steps] = evaluation.summary["mae_hu"]
        print(f"  {steps:>3} steps: MAE {curve[steps]:.1f} HU, {evaluation.summary['seconds_per_volume']:.1f} s/volume")
    return curve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "build" / "bundled-weights")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--arch", nargs="+", default=["unet", "diffusion"])
    parser.add_argument("--no-install", action="store_true", help="do not copy into models/weights")
    args = parser.parse_args()
    data = write_phantoms(args.work / "data", range(CASES_PER_SITE), "train")
    validation = write_phantoms(args.work / "validation", range(HELD_OUT_SEED, HELD_OUT_SEED + 1), "val")
    for arch in args.arch:
        started = time.perf_counter()
        config = TrainConfig(architecture=arch, steps=args.steps, batch_size=8, patch_size=64, seed=0,
                             validate_every=500, checkpoint_every=250, validation_cases=1,
                             training_data=f"{2 * CASES_PER_SITE} phantoms (head, pelvis; T1w; seeds 0-"
                                           f"{CASES_PER_SITE - 1}; {SHAPE_ZYX[1]}x{SHAPE_ZYX[2]}, "
                                           f"{SHAPE_ZYX[0]} slices)",
                             extra={"intended_use": INTENDED_USE})
        metrics = train(data, args.work / arch, config)
        print(f"{arch}: trained to step {metrics.get('step')} in {time.perf_counter() - started:.0f} s; "
              f"validation MAE {metrics.get('validation_mae_hu', float('nan')):.1f} HU")
        folder = args.work / arch
        config_saved, state, card = load_checkpoint(folder)
        if arch in ("diffusion", "contourdiff"):
            curve = steps_curve(folder, write_phantoms(args.work / "curve", range(HELD_OUT_SEED, HELD_OUT_SEED + 1),
                                                       "curve", CURVE_SHAPE_ZYX))
            config_saved["default_steps"] = default_steps_from_curve(curve)
            card["evaluation"] = {**card.get("evaluation", {}), "mae_hu_by_steps": curve,
                                  "default_steps": config_saved["default_steps"]}
            # Keep the resume state: running the script again must not start training from scratch.
            save_checkpoint(folder, model_state=state, config=config_saved, card=card,
                            train_state=load_train_state(folder), half=True)
        if not args.no_install:
            target = REPO / "models" / "weights" / arch
            target.mkdir(parents=True, exist_ok=True)
            for name in ("model.pt", "card.json"):
                shutil.copy2(folder / name, target / name)
            print(f"installed {target} ({(target / 'model.pt').stat().st_size / 1e6:.1f} MB)")
        print(json.dumps(load_checkpoint(folder)[2].get("evaluation", {}), default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
