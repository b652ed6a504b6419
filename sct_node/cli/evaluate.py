"""``sct-node evaluate``: a model's SynthRAD metrics on cases with a CT."""

from __future__ import annotations

import argparse
from pathlib import Path

from sct_node.cli.common import EXIT_OK, Subcommands, load_model_from_args, model_options, positive_int, progress


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``evaluate`` to ``commands``, with the options every verb takes from ``common``."""
    evaluate = commands.add_parser(
        "evaluate", parents=[common], help="SynthRAD metrics of a model on cases with a CT",
        description="MAE inside the mask, PSNR and SSIM (clipped to [-1024, 3000], data range 4024) as SynthRAD "
                    "defines them, MAE per tissue class and seconds per volume; a table on stdout, JSON with --json-output.")
    evaluate.add_argument("--data", type=Path, required=True, help="folder of case folders (with ct)")
    evaluate.add_argument("--model", "-m", required=True, help="built-in model name or checkpoint folder")
    model_options(evaluate)
    evaluate.add_argument("--max-cases", type=positive_int, help="evaluate at most this many cases")
    evaluate.add_argument("--json-output", type=Path, help="write the results as JSON here")
    evaluate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Translate every case, print the metrics table and write it as JSON when asked."""
    from sct_node.tools.evaluate import evaluate_model, format_table, write_json

    model = load_model_from_args(args)
    with progress("evaluating", args.quiet) as update:
        evaluation = evaluate_model(model, args.data, max_cases=args.max_cases, progress=update)
    print(format_table(evaluation))
    if args.json_output:
        write_json(evaluation, args.json_output)
    return EXIT_OK
