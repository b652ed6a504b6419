"""``sct-node train``: train an MR -> sCT model on SynthRAD-layout cases.

Started by ``torchrun`` (``torchrun --nproc_per_node N -m sct_node train ...``) it trains one shard of every
batch per process with DistributedDataParallel (:mod:`models.learned.distributed`); rank 0 alone logs, shows
progress, writes checkpoints and prints the result line, the other processes log warnings and errors only.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sct_node.cli.common import EXIT_OK, Subcommands, non_negative_int, positive_float, positive_int, read_json_object


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``train`` to ``commands``, with the options every verb takes from ``common``."""
    train = commands.add_parser(
        "train", parents=[common], help="train a model on SynthRAD-layout cases",
        description="Train an MR -> sCT model on cases in the SynthRAD2023/2025 layout (<case>/mr, ct, mask as "
                    ".nii.gz or .mha; `sct-node phantom --no-dicom` writes the same). Resumes from the last "
                    "checkpoint in --output when run again. Under torchrun (torchrun --nproc_per_node N -m "
                    "sct_node train ...) the processes share each batch with DistributedDataParallel. See "
                    "docs/models.md.")
    train.add_argument("--data", type=Path, required=True, help="folder of case folders")
    train.add_argument("--arch", choices=("diffusion", "unet", "pix2pix", "contourdiff"), default="diffusion")
    train.add_argument("--output", "-o", type=Path, required=True, help="checkpoint folder")
    train.add_argument("--steps", type=positive_int, default=2000, help="optimiser steps (default 2000)")
    train.add_argument("--batch-size", type=positive_int, default=8,
                       help="patches per step, over all processes under torchrun (divisible by their number; "
                            "default 8)")
    train.add_argument("--patch-size", type=positive_int, default=128, help="square patch, pixels (default 128)")
    train.add_argument("--learning-rate", type=positive_float, default=2e-4)
    train.add_argument("--base-channels", type=positive_int, default=32, help="U-Net width (default 32)")
    train.add_argument("--space-to-depth", type=positive_int, default=2,
                       help="fold f x f pixel blocks into channels before the U-Net (default 2: ~4x faster; "
                            "1: full resolution)")
    train.add_argument("--context", type=non_negative_int, default=1, help="neighbouring MR slices per side")
    train.add_argument("--mean-model", type=Path, metavar="CKPT",
                       help="diffusion only: a trained unet / pix2pix checkpoint whose prediction the diffusion model "
                            "corrects (corrective diffusion, how the bundled model is trained; see docs/models.md)")
    train.add_argument("--acquisition", type=Path, metavar="JSON",
                       help="how cases without their own acquisition.json were acquired (the same keys, e.g. "
                            "{\"weighting\": \"T1\", \"echo_time_ms\": 15, \"body_part\": \"PELVIS\"}): recorded in "
                            "the model's training envelope for the input guard (docs/models.md)")
    train.add_argument("--randomise-appearance", type=float, default=0.0, metavar="P",
                       help="probability (0-1) that a training patch's MR is its case's tissue label map (labels.mha, "
                            "as `sct-node phantom` writes) rendered with a random sequence, bias field, noise and "
                            "resolution, so the model reads anatomy rather than one contrast (default 0: off; the "
                            "bundled models use 0.7; see docs/models.md)")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--validate-every", type=positive_int, default=250)
    train.add_argument("--checkpoint-every", type=positive_int, default=250)
    train.add_argument("--default-steps", type=positive_int, default=10,
                       help="DDIM steps the checkpoint uses by default (diffusion; see docs/models.md)")
    train.add_argument("--device", help="torch device (default: cuda when available, else cpu; under torchrun "
                                        "cuda means each process's cuda:LOCAL_RANK)")
    train.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train (or resume training) into ``--output`` and print the validation MAE."""
    from models.learned.distributed import is_main_process
    from models.learned.randomisation import RandomisationConfig
    from models.learned.train import TrainConfig, train

    main = is_main_process()
    if not main and not args.debug:  # N processes would log every line N times: rank 0 speaks for the job
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    config = TrainConfig(architecture=args.arch, steps=args.steps, batch_size=args.batch_size,
                         patch_size=args.patch_size, learning_rate=args.learning_rate, context=args.context,
                         base_channels=args.base_channels, space_to_depth=args.space_to_depth, seed=args.seed,
                         validate_every=args.validate_every, checkpoint_every=args.checkpoint_every,
                         default_steps=args.default_steps,
                         mean_model=str(args.mean_model) if args.mean_model is not None else None,
                         randomisation=RandomisationConfig(probability=args.randomise_appearance).to_json()
                         if args.randomise_appearance > 0 else None,
                         acquisition=read_json_object(args.acquisition) if args.acquisition else None)
    metrics = train(args.data, args.output, config, device=args.device, show_progress=not args.quiet)
    if main:
        print(f"{args.arch} checkpoint: {args.output} (validation MAE "
              f"{metrics.get('validation_mae_hu', float('nan')):.1f} HU at step {metrics.get('step', '?')})")
    return EXIT_OK
