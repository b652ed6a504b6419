"""``sct-node translate``: one MR series in, a synthetic CT series (and its uncertainty map) out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from sct_node.cli.common import EXIT_OK, Subcommands, fmt, load_model_from_args, logger, model_options, progress

if TYPE_CHECKING:
    from models.volume import Volume
    from sct_node.dicom.sct_writer import WrittenSeries


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``translate`` to ``commands``, with the options every verb takes from ``common``."""
    translate = commands.add_parser(
        "translate", parents=[common], help="turn an MR series into a synthetic CT series",
        description="Read one MR series (folder or files), run a model and write the synthetic CT as a "
                    "DICOM CT series in the MR's study and frame of reference.",
    )
    translate.add_argument("--input", "-i", type=Path, nargs="+", required=True,
                           help="MR series folder(s) or files")
    translate.add_argument("--output", "-o", type=Path, required=True, help="folder for the sCT series")
    translate.add_argument("--model", "-m", default=None,
                           help="built-in model (diffusion, unet, bulk) or a checkpoint folder (default diffusion)")
    model_options(translate)
    translate.add_argument("--series-uid", help="Series Instance UID to read when the input holds several series")
    translate.add_argument("--echo-time-ms", type=float, help="echo to use from a multi-echo series")
    translate.add_argument("--temporal-position", type=int, help="time point to use from a dynamic series")
    translate.add_argument("--allow-outside-envelope", action="store_true",
                           help="translate even a series the input guard finds far outside the model's training "
                                "envelope (a hard mismatch, exit code 3 otherwise); the sCT says so in its Image "
                                "Comments and Derivation Description")
    translate.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    translate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read the MR, check it against the model's training envelope, translate it and write the sCT."""
    import time

    from models.body_mask import body_mask_from_mr
    from models.envelope import refuses
    from sct_node.dicom.reader import ReaderOptions, read_series
    from sct_node.dicom.sct_writer import write_sct_series
    from sct_node.errors import InputError
    from sct_node.node.process import guard_input, input_warning

    started = time.perf_counter()
    model = load_model_from_args(args)
    options = ReaderOptions(echo_time_ms=args.echo_time_ms, temporal_position=args.temporal_position)
    with progress("reading MR", args.quiet) as update:
        series = read_series(args.input, series_instance_uid=args.series_uid, options=options, progress=update)
    logger.info("read MR series %s: %s voxels, spacing %s mm", series.series_instance_uid,
                "x".join(map(str, series.volume.shape)), fmt(series.volume.spacing_mm))
    body = body_mask_from_mr(series.volume)  # one mask for the guard and the model
    checked = guard_input(series, model, body)
    if refuses(checked, "mark" if args.allow_outside_envelope else "refuse-hard"):
        raise InputError(f"{checked.verdict} mismatch with the training envelope of model {model.card.name}: "
                         f"{'; '.join(checked.reasons)}. No sCT was written; --allow-outside-envelope translates "
                         "anyway and records this on the sCT")
    if checked.verdict in ("soft", "hard") or (checked.verdict == "unjudged" and hasattr(model, "envelope")):
        logger.warning("%s", checked.summary())
    else:
        logger.info("%s", checked.summary())
    allowed_by = "--allow-outside-envelope" if checked.verdict == "hard" else "sct-node translate (soft mismatch)"
    with progress(f"model {model.card.name}", args.quiet) as update:
        sct = model.translate(series.volume, progress=update, body_mask=body)
    with progress("writing sCT", args.quiet) as update:
        written = write_sct_series(sct.hu, series, model.card, args.output, progress=update,
                                   input_warning=input_warning(checked, allowed_by))
    uncertainty_dir = None
    if sct.uncertainty_hu is not None:
        uncertainty_dir = _write_uncertainty(sct.uncertainty_hu, written, args.output, model.card.identity)
    elapsed_s = time.perf_counter() - started
    logger.info("wrote sCT series %s (%d instances) to %s in %.1f s", written.series_instance_uid,
                len(written.files), args.output, elapsed_s)
    if args.json:
        summary = {
            "source_series_instance_uid": series.series_instance_uid,
            "sct_series_instance_uid": written.series_instance_uid,
            "instances": len(written.files),
            "output": str(args.output),
            "model": model.card.identity,
            "input_guard": checked.to_json(),
            "uncertainty": str(uncertainty_dir) if uncertainty_dir else None,
            "elapsed_s": round(elapsed_s, 3),
        }
        print(json.dumps(summary))
    return EXIT_OK


def _write_uncertainty(uncertainty_hu: Volume, written: WrittenSeries, output: Path, model_identity: str) -> Path:
    """The ensemble's standard deviation beside the sCT: ``OUTPUT-uncertainty/`` with ``uncertainty.mha`` and
    ``PM.uncertainty.dcm`` (a Parametric Map in the sCT's frame, sct_node.dicom.uncertainty_writer)."""
    from models.fileio import write_volume_atomic
    from sct_node.dicom.uids import derive_uid
    from sct_node.dicom.uncertainty_writer import write_uncertainty_map
    from sct_node.errors import OutputError

    folder = output.parent / f"{output.name}-uncertainty"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_volume_atomic(uncertainty_hu, folder / "uncertainty.mha")
    except (OSError, RuntimeError) as error:
        raise OutputError(f"{folder}: cannot write the uncertainty map ({error})") from None
    write_uncertainty_map(uncertainty_hu=uncertainty_hu, sct_files=written.files, path=folder / "PM.uncertainty.dcm",
                          sop_instance_uid=derive_uid(written.series_instance_uid, "uncertainty", "instance"),
                          series_instance_uid=derive_uid(written.series_instance_uid, "uncertainty", "series"),
                          model_identity=model_identity)
    logger.info("wrote the ensemble's uncertainty map (SD, HU) to %s", folder)
    return folder
