"""Train the bundled default weights (diffusion and U-Net) on phantoms, reproducibly and resumably.

    python scripts/train_bundled_weights.py [--work DIR] [--steps N] [--arch diffusion unet]

1. Writes training phantoms (T1-weighted head and pelvis, seeds 0..CASES-1 per site, SynthRAD layout) into
   ``WORK/data`` — the benchmarks and tests use seeds from ``HELD_OUT_SEED`` up, never seen in training.
2. Trains each architecture into ``WORK/<arch>`` with ``sct-node train``'s code (same network, patch size,
   batch and number of steps for both); running the script again resumes from the last checkpoint until
   ``--steps``. The U-Net comes first: the diffusion model is trained as a corrective diffusion model over
   it (``--mean-model WORK/unet``, see models/learned/corrective.py).
3. For diffusion: measures MAE at 1, 2, 3, 5, 10, 20, 50 and 250 DDIM steps on held-out phantoms (seed
   1000, the central 8 slices of 32-slice volumes) and picks the fewest steps within 5 % of the 250-step
   MAE as the default, and the fewest steps whose MAE is within 5 % of it either way (the sampler has
   converged) as the steps of ensembles; records the curve in the model card. Running the script again
   after training finished only redoes this step.
4. Copies ``model.pt`` (float16) and ``card.json`` into ``models/weights/<arch>/``.

The training envelope (models/envelope.py) is part of every card ``sct-node train`` writes. ``--envelope-only``
computes it from the training phantoms (regenerated, bit-identical: same sites, seeds and shape; the last case,
pelvis seed 3, held out as in training) and writes it into ``models/weights/*/card.json`` without retraining:
the content hash covers ``model.pt`` only, so the weights' identity does not change.

Everything is seeded. On this project's 2-core CI-class CPU each model trains in 35-45 minutes
(4000 steps) and the steps curve takes about 10 minutes.
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

from models.learned.checkpoint import load_checkpoint, load_train_state, save_checkpoint
from models.learned.model import LearnedModel, default_steps_from_curve
from models.learned.randomisation import RandomisationConfig
from models.learned.train import TrainConfig, train
from models.phantoms import generate_phantom
from models.phantoms.appearance import HELD_OUT_FAMILY, TRAINING_FAMILIES
from models.phantoms.synthrad import write_central_slab, write_synthrad_case

CASES_PER_SITE = 4
#: Phantom seeds from here on are never used for training (benchmarks, tests).
HELD_OUT_SEED = 1000
SHAPE_ZYX = (32, 256, 256)
INTENDED_USE = ("Trained on synthetic phantoms only (sct-node's generator): makes translate, serve and demo work out "
                "of the box. NOT for clinical use: train on your own data with `sct-node train`.")


#: The steps curve runs on the central slices of held-out volumes of the training shape (the same anatomy,
#: thinner): 341 sampling passes per slice on a 2-core CPU add up.
CURVE_SLICES = 8
#: Sampling steps of the curve; the default is the fewest within 5 % of the MAE at the most steps.
CURVE_STEPS = (1, 2, 3, 5, 10, 20, 50, 250)


def write_phantoms(folder: Path, seeds: range, tag: str, shape=SHAPE_ZYX) -> Path:
    for site in ("head", "pelvis"):
        for seed in seeds:
            case = folder / f"{site}-{tag}-{seed:04d}"
            if not (case / "labels.mha").exists():
                write_synthrad_case(generate_phantom(site, seed, shape_zyx=shape), case)
    return folder


def steps_curve(checkpoint: Path, validation: Path, steps_list=CURVE_STEPS) -> dict[int, float]:
    from sct_node.tools.evaluate import evaluate_model

    curve = {}
    for steps in steps_list:
        evaluation = evaluate_model(LearnedModel(checkpoint, steps=steps), validation)
        curve[steps] = evaluation.summary["mae_hu"]
        print(f"  {steps:>3} steps: MAE {curve[steps]:.1f} HU, {evaluation.summary['seconds_per_volume']:.1f} s/volume")
    return curve


def apply_curve(folder: Path, curve: dict[int, float]) -> None:
    """Record the steps curve in the checkpoint and set its default and ensemble steps from it."""
    config, state, card = load_checkpoint(folder)
    config["default_steps"] = default_steps_from_curve(curve)
    config["ensemble_steps"] = default_steps_from_curve(curve, two_sided=True)
    card["evaluation"] = {**card.get("evaluation", {}), "mae_hu_by_steps": {str(k): v for k, v in curve.items()},
                          "default_steps": config["default_steps"], "ensemble_steps": config["ensemble_steps"]}
    # Keep the resume state: running the script again must not start training from scratch.
    save_checkpoint(folder, model_state=state, config=config, card=card, train_state=load_train_state(folder),
                    half=True)


def install_envelope(work: Path, archs=("unet", "diffusion")) -> dict:
    """Write the training envelope of the bundled weights into their installed cards (no retraining)."""
    from models.learned.data import load_cases
    from models.learned.train import training_envelope

    data = write_phantoms(work / "envelope-data", range(CASES_PER_SITE), "train")
    cases = load_cases(data)
    training = cases[: len(cases) - 1]  # train() holds out the last case (validation_cases=1)
    first = load_checkpoint(REPO / "models" / "weights" / archs[0])[0]
    envelope = training_envelope(data, training, first["normalisation"])
    for arch in archs:
        path = REPO / "models" / "weights" / arch / "card.json"
        card = json.loads(path.read_text())
        card["envelope"] = envelope
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        load_checkpoint(path.parent)  # the content hash still matches model.pt
        print(f"envelope written into {path}")
    return envelope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "build" / "bundled-weights")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--arch", nargs="+", default=["unet", "diffusion"],
                        help="in this order: the diffusion model corrects WORK/unet")
    parser.add_argument("--no-install", action="store_true", help="do not copy into models/weights")
    parser.add_argument("--randomise", type=float, default=RandomisationConfig().probability,
                        help="probability that a training patch's MR is a randomised appearance of its label map "
                             "(models/learned/randomisation.py); 0 trains on the T1-weighted phantoms only")
    parser.add_argument("--envelope-only", action="store_true",
                        help="only compute the training envelope and write it into models/weights/*/card.json")
    args = parser.parse_args()
    if args.envelope_only:
        envelope = install_envelope(args.work)
        print(f"intensity threshold {envelope['intensity']['threshold']:.4f}; leave-one-out distances "
              f"{envelope['intensity']['leave_one_out']}")
        return 0
    data = write_phantoms(args.work / "data", range(CASES_PER_SITE), "train")
    for arch in args.arch:
        started = time.perf_counter()
        mean_model = str(args.work / "unet") if arch == "diffusion" else None
        config = TrainConfig(architecture=arch, steps=args.steps, batch_size=8, patch_size=128, seed=0,
                             mean_model=mean_model,
                             randomisation=RandomisationConfig(probability=args.randomise).to_json()
                             if args.randomise > 0 else None,
                             validate_every=500, checkpoint_every=250, validation_cases=1,
                             training_data=f"{2 * CASES_PER_SITE} phantoms (head, pelvis; T1w; seeds 0-"
                                           f"{CASES_PER_SITE - 1}; {SHAPE_ZYX[1]}x{SHAPE_ZYX[2]}, "
                                           f"{SHAPE_ZYX[0]} slices)"
                                           + (f"; MR appearance randomised from the label maps with probability "
                                              f"{args.randomise:g} (families {', '.join(TRAINING_FAMILIES)}; "
                                              f"{HELD_OUT_FAMILY} held out)" if args.randomise > 0 else ""),
                             extra={"intended_use": INTENDED_USE})
        metrics = train(data, args.work / arch, config)
        print(f"{arch}: trained to step {metrics.get('step')} in {time.perf_counter() - started:.0f} s; "
              f"validation MAE {metrics.get('validation_mae_hu', float('nan')):.1f} HU")
        folder = args.work / arch
        if arch in ("diffusion", "contourdiff"):
            whole = write_phantoms(args.work / "curve-volumes", range(HELD_OUT_SEED, HELD_OUT_SEED + 1), "curve")
            slabs = args.work / f"curve-slabs-{CURVE_SLICES}"
            for case in sorted(whole.iterdir()):
                if not (slabs / case.name / "mask.mha").exists():
                    write_central_slab(case, slabs / case.name, CURVE_SLICES)
            apply_curve(folder, steps_curve(folder, slabs))
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
