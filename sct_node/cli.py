"""The ``sct-node`` command: one verb per job.

Exit codes (documented in docs/cli.md):

* 0 — success
* 1 — unexpected internal error (a bug: please report it with ``--debug`` output)
* 2 — bad command line (argparse)
* 3 — input refused (not DICOM, inconsistent series, outside the model's training envelope, ...)
* 4 — output could not be written
* 5 — model error
* 6 — ``qa`` ran and its verdict is FAIL
* 141 — stdout was closed before everything was written (``sct-node status | head -1``)

Errors are printed as one line ``sct-node: error: ...``; ``--debug`` adds the
traceback. Once ``serve`` has set up JSON logs, that line is a JSON log record
instead, so that every line on stderr is JSON. A closed stdout ends the command
quietly, with nothing on stderr and exit code 141 (128 + SIGPIPE), which is what
a shell reports for any tool that a closed pipe stops; 0 would tell a script
with ``set -o pipefail`` that all output was written when it was not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import sys
import traceback
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from sct_node import __version__
from sct_node.logs import configure_logging, json_lines_enabled

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT, EXIT_MODEL, EXIT_QA_FAIL = 0, 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE (13): what a shell reports for a command that a closed pipe stopped.
EXIT_BROKEN_PIPE = 141

logger = logging.getLogger("sct_node")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sct-node",
        description="Synthetic CT from MR for MRI-only radiotherapy: a DICOM node, its models and its QA.",
    )
    parser.add_argument("--version", action="version", version=f"sct-node {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # The same flags after the verb (``sct-node translate ... --debug``); SUPPRESS keeps the global value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")

    phantom = commands.add_parser(
        "phantom", parents=[common], help="generate paired MR/CT phantoms (DICOM + SynthRAD-layout MHA)",
        description="Generate seeded head/pelvis phantoms: MR T1w/T2w and CT as DICOM series, an RT Structure "
                    "Set, and mr.mha/ct.mha/mask.mha in the SynthRAD layout for training.",
    )
    phantom.add_argument("--output", "-o", type=Path, required=True, help="folder for the cases")
    phantom.add_argument("--site", choices=("head", "pelvis", "both"), default="both", help="anatomy (default both)")
    phantom.add_argument("--cases", type=_positive_int, default=1, help="cases per site (default 1)")
    phantom.add_argument("--seed", type=_non_negative_int, default=0,
                         help="seed of the first case; case i uses seed+i (default 0)")
    phantom.add_argument("--shape", type=_positive_int, nargs=3, metavar=("Z", "Y", "X"),
                         help="voxels per axis (default: site default, 100 x 256 x 256)")
    phantom.add_argument("--spacing-mm", type=_positive_float, nargs=3, metavar=("X", "Y", "Z"),
                         help="voxel size in mm (default: head 1 1 2.5, pelvis 1.6 1.6 2.5)")
    phantom.add_argument("--no-dicom", action="store_true", help="write only the SynthRAD-layout MHA files")
    phantom.set_defaults(handler=_run_phantom)

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
    _model_options(translate)
    translate.add_argument("--series-uid", help="Series Instance UID to read when the input holds several series")
    translate.add_argument("--echo-time-ms", type=float, help="echo to use from a multi-echo series")
    translate.add_argument("--temporal-position", type=int, help="time point to use from a dynamic series")
    translate.add_argument("--allow-outside-envelope", action="store_true",
                           help="translate even a series the input guard finds far outside the model's training "
                                "envelope (a hard mismatch, exit code 3 otherwise); the sCT says so in its Image "
                                "Comments and Derivation Description")
    translate.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    translate.set_defaults(handler=_run_translate)

    train = commands.add_parser(
        "train", parents=[common], help="train a model on SynthRAD-layout cases",
        description="Train an MR -> sCT model on cases in the SynthRAD2023/2025 layout (<case>/mr, ct, mask as "
                    ".nii.gz or .mha; `sct-node phantom --no-dicom` writes the same). Resumes from the last "
                    "checkpoint in --output when run again. See docs/models.md.")
    train.add_argument("--data", type=Path, required=True, help="folder of case folders")
    train.add_argument("--arch", choices=("diffusion", "unet", "pix2pix", "contourdiff"), default="diffusion")
    train.add_argument("--output", "-o", type=Path, required=True, help="checkpoint folder")
    train.add_argument("--steps", type=_positive_int, default=2000, help="optimiser steps (default 2000)")
    train.add_argument("--batch-size", type=_positive_int, default=8)
    train.add_argument("--patch-size", type=_positive_int, default=128, help="square patch, pixels (default 128)")
    train.add_argument("--learning-rate", type=_positive_float, default=2e-4)
    train.add_argument("--base-channels", type=_positive_int, default=32, help="U-Net width (default 32)")
    train.add_argument("--space-to-depth", type=_positive_int, default=2,
                       help="fold f x f pixel blocks into channels before the U-Net (default 2: ~4x faster; "
                            "1: full resolution)")
    train.add_argument("--context", type=_non_negative_int, default=1, help="neighbouring MR slices per side")
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
    train.add_argument("--seed", type=_non_negative_int, default=0)
    train.add_argument("--validate-every", type=_positive_int, default=250)
    train.add_argument("--checkpoint-every", type=_positive_int, default=250)
    train.add_argument("--default-steps", type=_positive_int, default=10,
                       help="DDIM steps the checkpoint uses by default (diffusion; see docs/models.md)")
    train.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    train.set_defaults(handler=_run_train)

    evaluate = commands.add_parser(
        "evaluate", parents=[common], help="SynthRAD metrics of a model on cases with a CT",
        description="MAE inside the mask, PSNR and SSIM (clipped to [-1024, 3000], data range 4024) as SynthRAD "
                    "defines them, MAE per tissue class and seconds per volume; a table on stdout, JSON with --json-output.")
    evaluate.add_argument("--data", type=Path, required=True, help="folder of case folders (with ct)")
    evaluate.add_argument("--model", "-m", required=True, help="built-in model name or checkpoint folder")
    _model_options(evaluate)
    evaluate.add_argument("--max-cases", type=_positive_int, help="evaluate at most this many cases")
    evaluate.add_argument("--json-output", type=Path, help="write the results as JSON here")
    evaluate.set_defaults(handler=_run_evaluate)

    serve = commands.add_parser(
        "serve", parents=[common], help="run the DICOM node",
        description="Run the DICOM node: Storage SCP, router, processors, dispatcher and cleaner. Without --config "
                    "it runs on embedded defaults (127.0.0.1:11112, AE SCT_NODE, spool ./sct-node-spool, model diffusion).",
    )
    serve.add_argument("--config", "-c", type=Path, help="node.toml (see deploy/node.toml)")
    serve.add_argument("--check", action="store_true", help="validate the configuration, print it and exit")
    serve.set_defaults(handler=_run_serve)

    status = commands.add_parser("status", parents=[common], help="list recent series and jobs",
                                 description="List recent series and jobs with their state, from the node's database.")
    status.add_argument("--config", "-c", type=Path, help="the node's configuration (for its spool folder)")
    status.add_argument("--limit", type=_positive_int, default=20, help="rows per table (default 20)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_run_status)

    retry = commands.add_parser("retry", parents=[common], help="retry a failed job",
                                description="Put a failed job back: re-deliver its outputs, or process it again if "
                                            "it failed before delivery. The running node picks it up.")
    retry.add_argument("job", type=_positive_int, help="job ID (see sct-node status)")
    retry.add_argument("--config", "-c", type=Path, help="the node's configuration (for its spool folder)")
    retry.set_defaults(handler=_run_retry)
    release = commands.add_parser(
        "release", parents=[common], help="deliver an sCT that was held back after a QA FAIL",
        description="A route with on_qa_fail = \"hold\" keeps a failed sCT (and its RT objects) back and delivers "
                    "only the QA report. After review, release delivers the sCT, marked QA FAIL, with everything else.")
    release.add_argument("job", type=_positive_int, help="job ID (see sct-node status)")
    release.add_argument("--config", "-c", type=Path, help="the node's configuration (for its spool folder)")
    release.set_defaults(handler=_run_release)
    dismiss = commands.add_parser(
        "dismiss", parents=[common], help="give up on a failed or held job, saying why",
        description="A failed or held job that will be neither retried nor released ends 'dismissed': its row, "
                    "reason and your comment stay in the history (sct-node status), deliveries still pending are "
                    "cancelled, and the cleaner removes its inputs and outputs after storage.done_retention_h.")
    dismiss.add_argument("job", type=_positive_int, help="job ID (see sct-node status)")
    dismiss.add_argument("--comment", required=True, type=_comment,
                         help="why the job is given up (required; kept with the job; no patient identifiers)")
    dismiss.add_argument("--config", "-c", type=Path, help="the node's configuration (for its spool folder)")
    dismiss.set_defaults(handler=_run_dismiss)

    qa = commands.add_parser(
        "qa", parents=[common], help="dosimetric QA of a synthetic CT",
        description="HU and geometry checks, image metrics against a real CT (when given), the plan's dose on the "
                    "sCT against a reference (the real CT, or a bulk-density version of the sCT), gamma and DVH, "
                    "and a PASS/WARN/FAIL verdict. Writes qa.json (and qa_arrays.npz) to --output.")
    qa.add_argument("--sct", type=Path, required=True, help="synthetic CT series folder")
    qa.add_argument("--mr", type=Path, help="the MR series it was made from (body outline, geometry)")
    qa.add_argument("--reference-ct", type=Path, help="a real CT on the same grid (commissioning)")
    qa.add_argument("--plan", type=Path, help="photon RT Plan (default: the site's template plan)")
    qa.add_argument("--structures", type=Path, help="RT Structure Set (targets and organs at risk)")
    qa.add_argument("--site", choices=("pelvis", "head"), default="pelvis", help="template plan (default pelvis)")
    qa.add_argument("--no-dose", action="store_true", help="skip the dose comparison")
    qa.add_argument("--uncertainty", type=Path, metavar="PATH",
                    help="the ensemble's uncertainty map from `translate --ensemble` (its folder, .mha or Parametric "
                         "Map): adds the uncertainty check and the QA_HIGH_UNCERT structure")
    qa.add_argument("--uncertainty-level-hu", type=_positive_float, default=100.0, metavar="HU",
                    help="standard deviation above which a body voxel counts as uncertain (default 100)")
    qa.add_argument("--dose-grid-mm", type=_positive_float, default=None, metavar="MM",
                    help="dose grid of the comparison and of the RT Dose (default 2.5; never finer than the sCT)")
    qa.add_argument("--thresholds", type=Path,
                    help="TOML file overriding QA limits, e.g. [gamma_pass_rate_percent] pass_limit = 97 (docs/qa.md)")
    qa.add_argument("--hu-reference", type=Path, metavar="FILE",
                    help="HU reference of real CTs of the site (`sct-node hu-reference`): adds the hu_distribution check")
    qa.add_argument("--output", "-o", type=Path, required=True, help="folder for qa.json")
    qa.add_argument("--json", action="store_true", help="print qa.json on stdout")
    qa.set_defaults(handler=_run_qa)

    hu_reference = commands.add_parser(
        "hu-reference", parents=[common], help="build a site's HU reference from real CTs (for the QA's hu_distribution check)",
        description="Build a site's HU reference: the body HU distribution of each real CT (a DICOM CT series folder, "
                    "or a SynthRAD-layout case folder with ct and mask). Use planning CTs of the site's patients, "
                    "several of them (slim and obese, with and without contrast) so the nearest one is near; "
                    "docs/qa.md says what the check can and cannot see.")
    hu_reference.add_argument("cts", type=Path, nargs="+", help="CT series folders or SynthRAD case folders")
    hu_reference.add_argument("--site", choices=("pelvis", "head"), required=True)
    hu_reference.add_argument("--output", "-o", type=Path, required=True, help="reference file (.json)")
    hu_reference.set_defaults(handler=_run_hu_reference)

    report = commands.add_parser(
        "report", parents=[common], help="build the QA report bundle from a QA folder",
        description="Rebuild the bundle that goes with an sCT — PDF report, Encapsulated PDF, Structured Report, "
                    "RT Structure Set, and the QA dose as RT Dose (with the template RT Plan) — from qa.json and "
                    "qa_arrays.npz, without running the model or the QA again. The output folder also gets a copy "
                    "of the sCT series, so it holds the whole bundle (send it with any storescu).")
    report.add_argument("--qa", type=Path, required=True, help="folder with qa.json (from `qa` or a node job)")
    report.add_argument("--output", "-o", type=Path, required=True, help="folder for the bundle")
    report.add_argument("--no-rt-dose", action="store_true", help="leave out the RT Dose and RT Plan")
    report.set_defaults(handler=_run_report)

    gamma = commands.add_parser(
        "gamma", parents=[common], help="gamma index of two RT Dose files",
        description="Compare two RT Dose files (same frame of reference) with the gamma index (Low et al. 1998) "
                    "using an interpolated search (Wendling et al. 2007) and print the pass rate.")
    gamma.add_argument("reference", type=Path, help="reference RT Dose file")
    gamma.add_argument("evaluated", type=Path, help="evaluated RT Dose file")
    gamma.add_argument("--dose-percent", type=_positive_float, required=True, help="dose criterion, %%")
    gamma.add_argument("--distance-mm", type=_positive_float, required=True, help="distance criterion, mm")
    gamma.add_argument("--cutoff-percent", type=_non_negative_float, default=10.0,
                       help="ignore reference points below this %% of the reference maximum (default 10)")
    gamma.add_argument("--local", action="store_true", help="local instead of global gamma")
    gamma.add_argument("--max-gamma", type=_positive_float, help="cap (and stop searching) at this gamma")
    gamma.add_argument("--json", action="store_true", help="print the result as JSON")
    gamma.set_defaults(handler=_run_gamma)

    dose = commands.add_parser(
        "dose", parents=[common], help="compute an RT Plan's dose on a CT series and write it as RT Dose",
        description="Compute a photon RT Plan's dose on a CT series with sct-node's simplified engine and write it "
                    "as an RT Dose: physical dose in Gy, the sum over all fractions of the computed fraction group "
                    "(Dose Summation Type PLAN, or FRACTION when the plan has several fraction groups), referencing "
                    "the plan; hold it against your planning system's dose with `sct-node gamma`. Plans the engine "
                    "does not model are refused by name, one line each (docs/dose.md).")
    dose.add_argument("--ct", type=Path, required=True, help="CT series folder (the plan's frame of reference)")
    dose.add_argument("--plan", type=Path, required=True, help="photon RT Plan file (with or without file meta)")
    dose.add_argument("--output", "-o", type=Path, required=True, help="RT Dose file to write")
    dose.add_argument("--fraction-group", type=_positive_int, metavar="N",
                      help="Fraction Group Number to compute (default: the only one, or the first that holds "
                           "treatment beams with MU)")
    dose.add_argument("--dose-grid-mm", type=_positive_float, default=None, metavar="MM",
                      help="dose grid spacing (default 2.5; never finer than the CT)")
    dose.set_defaults(handler=_run_dose)

    demo = commands.add_parser(
        "demo", parents=[common], help="run the whole path on loopback: phantom -> node -> planning system",
        description="Generate a phantom MR series, start the node and a stand-in planning system on loopback, send "
                    "the series as a PACS would, wait for the synthetic CT to arrive, and report each stage.")
    demo.add_argument("--workdir", type=Path, help="folder for the demo (default ./sct-demo)")
    demo.add_argument("--site", choices=("head", "pelvis"), default="pelvis")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    demo.set_defaults(handler=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except BrokenPipeError:  # `sct-node --help | head -1`
        return _stdout_closed()
    configure_logging("DEBUG" if args.debug else "WARNING" if args.quiet else "INFO")
    from dosimetry.errors import DosimetryError
    from models.errors import ModelsError
    from sct_node.errors import InputError, OutputError, SctNodeError

    try:
        code = args.handler(args)
        sys.stdout.flush()  # a reader gone away shows here, not as "Exception ignored" at interpreter exit
        return code
    except BrokenPipeError as error:
        if _stdout_is_a_pipe():
            return _stdout_closed()
        return _fail(error, EXIT_INTERNAL, args.debug, prefix="internal error (please report with --debug): ")
    except InputError as error:
        return _fail(error, EXIT_INPUT, args.debug)
    except OutputError as error:
        return _fail(error, EXIT_OUTPUT, args.debug)
    except ModelsError as error:
        return _fail(error, EXIT_MODEL, args.debug)
    except DosimetryError as error:
        return _fail(error, EXIT_INPUT, args.debug)
    except SctNodeError as error:
        return _fail(error, EXIT_INPUT, args.debug)
    except KeyboardInterrupt:
        _error_line("sct-node: interrupted")
        return EXIT_INTERRUPTED
    except Exception as error:  # the last line of defence: one line, not a traceback
        return _fail(error, EXIT_INTERNAL, args.debug, prefix="internal error (please report with --debug): ")


def _fail(error: BaseException, code: int, debug: bool, prefix: str = "") -> int:
    message = " ".join(str(error).split()) or type(error).__name__
    _error_line(f"sct-node: error: {prefix}{message}", error if debug else None)
    return code


def _error_line(line: str, traceback_of: BaseException | None = None) -> None:
    """The command's own error: one plain line on stderr, or one JSON log record once JSON logs are set up."""
    if json_lines_enabled():
        logger.error("%s", line, exc_info=traceback_of)
        return
    if traceback_of is not None:
        traceback.print_exception(traceback_of)
    print(line, file=sys.stderr)


def _stdout_is_a_pipe() -> bool:
    """Whether stdout is a pipe or socket, the only kinds of file a write to can fail with EPIPE.

    A BrokenPipeError while stdout is a terminal or a file came from somewhere else (a socket) and is a bug.
    """
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError):  # no file descriptor (stdout replaced in-process)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _stdout_closed() -> int:
    """The reader of stdout went away (``sct-node status | head -1``): stop quietly, as the Python docs advise.

    What is still buffered for stdout would fail again when the interpreter flushes it at exit ("Exception
    ignored ... BrokenPipeError" on stderr), so stdout is pointed at /dev/null first (docs.python.org, "Note on
    SIGPIPE"). Nothing is written to stderr: a closed pipe is the reader's choice, not an error of the command.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (stdout replaced in-process): nothing left to protect
        pass
    return EXIT_BROKEN_PIPE


@contextmanager
def _progress(description: str, quiet: bool):
    """A tqdm bar driven by ``progress(done, total)`` callbacks; silent when quiet or not a terminal."""
    from tqdm import tqdm

    bar = tqdm(desc=description, total=0, unit="slice", disable=True if quiet else None, leave=False,
               file=sys.stderr)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _run_phantom(args: argparse.Namespace) -> int:
    from models.phantoms import generate_phantom, write_synthrad_case
    from sct_node.tools.phantom_writer import write_phantom_dicom

    sites = ("head", "pelvis") if args.site == "both" else (args.site,)
    args.output.mkdir(parents=True, exist_ok=True)
    for site in sites:
        for i in range(args.cases):
            seed = args.seed + i
            case_id = f"{site}-{seed:04d}"
            case_dir = args.output / case_id
            phantom = generate_phantom(site, seed, shape_zyx=tuple(args.shape) if args.shape else None,
                                       spacing_mm=tuple(args.spacing_mm) if args.spacing_mm else None)
            write_synthrad_case(phantom, case_dir)
            if not args.no_dicom:
                with _progress(f"{case_id} DICOM", args.quiet) as progress:
                    write_phantom_dicom(phantom, case_id, case_dir / "dicom", progress=progress)
            logger.info("wrote phantom %s (%s voxels) to %s", case_id, "x".join(map(str, phantom.ct_hu.shape)),
                        case_dir)
    return EXIT_OK


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=_positive_int, help="DDIM sampling steps (diffusion models; default: the "
                                                           "checkpoint's, chosen from its quality-vs-steps curve)")
    parser.add_argument("--ensemble", type=_positive_int, default=1,
                        help="samples per volume; > 1 gives the mean and an uncertainty map (diffusion models); "
                             "translate writes the map into OUTPUT-uncertainty/ (uncertainty.mha and a DICOM "
                             "Parametric Map), which `qa --uncertainty` reads")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the sampling noise")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def _load_model_from_args(args: argparse.Namespace):
    from models.registry import DEFAULT_MODEL, load_model

    name = args.model or DEFAULT_MODEL
    if name == "bulk":
        return load_model(name)
    return load_model(name, steps=args.steps, ensemble=args.ensemble, seed=args.seed, device=args.device)


def _run_train(args: argparse.Namespace) -> int:
    from models.learned.randomisation import RandomisationConfig
    from models.learned.train import TrainConfig, train

    config = TrainConfig(architecture=args.arch, steps=args.steps, batch_size=args.batch_size,
                         patch_size=args.patch_size, learning_rate=args.learning_rate, context=args.context,
                         base_channels=args.base_channels, space_to_depth=args.space_to_depth, seed=args.seed,
                         validate_every=args.validate_every, checkpoint_every=args.checkpoint_every,
                         default_steps=args.default_steps,
                         mean_model=str(args.mean_model) if args.mean_model is not None else None,
                         randomisation=RandomisationConfig(probability=args.randomise_appearance).to_json()
                         if args.randomise_appearance > 0 else None,
                         acquisition=_read_json_object(args.acquisition) if args.acquisition else None)
    metrics = train(args.data, args.output, config, device=args.device, show_progress=not args.quiet)
    print(f"{args.arch} checkpoint: {args.output} (validation MAE "
          f"{metrics.get('validation_mae_hu', float('nan')):.1f} HU at step {metrics.get('step', '?')})")
    return EXIT_OK


def _read_json_object(path: Path) -> dict:
    import json

    from sct_node.errors import InputError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read JSON ({error})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object; found {type(data).__name__}")
    return data


def _run_evaluate(args: argparse.Namespace) -> int:
    from sct_node.tools.evaluate import evaluate_model, format_table, write_json

    model = _load_model_from_args(args)
    with _progress("evaluating", args.quiet) as progress:
        evaluation = evaluate_model(model, args.data, max_cases=args.max_cases, progress=progress)
    print(format_table(evaluation))
    if args.json_output:
        write_json(evaluation, args.json_output)
    return EXIT_OK


def _run_translate(args: argparse.Namespace) -> int:
    import time

    from models.envelope import refuses
    from sct_node.dicom.reader import ReaderOptions, read_series
    from sct_node.dicom.sct_writer import write_sct_series
    from sct_node.errors import InputError
    from sct_node.node.process import guard_input, input_warning

    started = time.perf_counter()
    model = _load_model_from_args(args)
    options = ReaderOptions(echo_time_ms=args.echo_time_ms, temporal_position=args.temporal_position)
    with _progress("reading MR", args.quiet) as progress:
        series = read_series(args.input, series_instance_uid=args.series_uid, options=options, progress=progress)
    logger.info("read MR series %s: %s voxels, spacing %s mm", series.series_instance_uid,
                "x".join(map(str, series.volume.shape)), _fmt(series.volume.spacing_mm))
    checked = guard_input(series, model)
    if refuses(checked, "mark" if args.allow_outside_envelope else "refuse-hard"):
        raise InputError(f"{checked.verdict} mismatch with the training envelope of model {model.card.name}: "
                         f"{'; '.join(checked.reasons)}. No sCT was written; --allow-outside-envelope translates "
                         "anyway and records this on the sCT")
    if checked.verdict in ("soft", "hard") or (checked.verdict == "unjudged" and hasattr(model, "envelope")):
        logger.warning("%s", checked.summary())
    else:
        logger.info("%s", checked.summary())
    allowed_by = "--allow-outside-envelope" if checked.verdict == "hard" else "sct-node translate (soft mismatch)"
    with _progress(f"model {model.card.name}", args.quiet) as progress:
        sct = model.translate(series.volume, progress=progress)
    with _progress("writing sCT", args.quiet) as progress:
        written = write_sct_series(sct.hu, series, model.card, args.output, progress=progress,
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


def _write_uncertainty(uncertainty_hu, written, output: Path, model_identity: str) -> Path:
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


def _run_serve(args: argparse.Namespace) -> int:
    import signal

    from sct_node.config import load_config

    config = load_config(args.config)
    if args.check:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return EXIT_OK
    configure_logging("DEBUG" if args.debug else config.logging.level, config.logging.json_lines)
    # Imported once the node's log format is set: importing the models (torch) may warn, and in JSON mode even
    # that must be a JSON line.
    from sct_node.node.service import Node

    node = Node(config)
    node.start()

    def shutdown(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        logger.info("signal %d: shutting down", signum)
        node.request_stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    node.wait()
    node.stop()
    return EXIT_OK


def _open_state(config_path: Path | None):
    from sct_node.config import load_config
    from sct_node.errors import ConfigError
    from sct_node.node.service import state_path
    from sct_node.node.state import StateStore

    path = state_path(load_config(config_path))
    if not path.exists():
        raise ConfigError(f"no node database at {path}; run `sct-node serve` first or pass the node's --config")
    return StateStore(path)


def _run_status(args: argparse.Namespace) -> int:
    import dataclasses
    import datetime as dt

    state = _open_state(args.config)
    series, jobs = state.series_status(args.limit), state.jobs(args.limit)
    if args.json:
        # "state" is what the table shows (the job's state once there is a job); "series_state" is the
        # generation's own (receiving, queued, unrouted, purged).
        print(json.dumps({"series": [{**dataclasses.asdict(s.series), "state": s.state, "series_state": s.series.state,
                                      "job_id": s.job_id, "job_state": s.job_state} for s in series],
                          "jobs": [{**dataclasses.asdict(j), "output_dir": str(j.output_dir),
                                    "deliveries": [dataclasses.asdict(d) for d in state.deliveries(j.id)]}
                                   for j in jobs]}, default=str))
        return EXIT_OK

    def when(t: float) -> str:
        return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")

    print("SERIES")
    print(f"{'last instance':19}  {'state':10}  {'gen':>3}  {'n':>5}  {'job':>5}  {'modality':8}  series instance UID")
    for s in series:
        job = str(s.job_id) if s.job_id is not None else ""
        print(f"{when(s.series.last_received_at):19}  {s.state:10}  {s.series.generation:>3}  {s.series.instances:>5}  "
              f"{job:>5}  {s.series.modality or '':8}  {s.series.series_uid}")
    print("\nJOBS")
    print(f"{'id':>5}  {'updated':19}  {'state':10}  {'route':12}  {'model':8}  deliveries / reason")
    for j in jobs:
        deliveries = ", ".join(f"{d.destination}:{d.state}({d.attempts})" for d in state.deliveries(j.id))
        notes = [note for note in (j.reason, j.held) if note]
        if j.dismissed_comment:
            notes.append(f"dismissed: {j.dismissed_comment}")
        print(f"{j.id:>5}  {when(j.updated_at):19}  {j.state:10}  {j.route[:12]:12}  {j.model[:8]:8}  "
              f"{'  '.join(part for part in (deliveries, *notes) if part)}")
    return EXIT_OK


def _run_retry(args: argparse.Namespace) -> int:
    state = _open_state(args.config)
    new_state = state.retry_job(args.job)
    print(f"job {args.job}: {new_state}")
    return EXIT_OK


def _run_dismiss(args: argparse.Namespace) -> int:
    state = _open_state(args.config)
    job = state.dismiss_job(args.job, args.comment)
    cancelled = sum(1 for delivery in state.deliveries(job.id) if delivery.state == "cancelled")
    print(f"job {job.id}: dismissed ({cancelled} pending deliver{'y' if cancelled == 1 else 'ies'} cancelled; "
          "inputs and outputs are removed after storage.done_retention_h)")
    return EXIT_OK


def _run_qa(args: argparse.Namespace) -> int:
    from dosimetry.plans import read_rt_plan
    from dosimetry.qa import QaInputs, run_qa
    from dosimetry.qa_result import write_qa
    from dosimetry.structures import read_structures
    from dosimetry.verdict import QaThresholds, Verdict, thresholds_from_mapping
    from models.body_mask import body_mask_from_mr
    from sct_node.dicom.files import open_dataset
    from sct_node.dicom.reader import read_series
    from sct_node.dicom.uids import CT_IMAGE_STORAGE
    from sct_node.dicom.uncertainty_writer import read_uncertainty_map
    from sct_node.errors import InputError
    from sct_node.report.context import qa_context

    sct = read_series([args.sct], sop_classes=[CT_IMAGE_STORAGE])
    frame = sct.frame_of_reference_uid
    mr = mr_mask = None
    drawn_on = {sct.series_instance_uid}  # the series a structure set may have been drawn on
    if args.mr:
        mr = read_series([args.mr])
        if mr.frame_of_reference_uid != frame:
            raise InputError(f"{args.mr}: the MR is in another frame of reference than the sCT; it is not its source")
        drawn_on.add(mr.series_instance_uid)
        if mr.volume.same_grid(sct.volume):
            mr_mask = body_mask_from_mr(mr.volume)
        else:  # judged (and failed) by the slice-coverage check; the outline cannot be compared
            logger.warning("%s: the MR grid differs from the sCT's; the body outline is not compared", args.mr)
    reference = None
    if args.reference_ct:
        reference = read_series([args.reference_ct], sop_classes=[CT_IMAGE_STORAGE])
        if reference.frame_of_reference_uid != frame or not reference.volume.same_grid(sct.volume):
            raise InputError(f"{args.reference_ct}: the reference CT must share the sCT's frame of reference and "
                             "grid (resample it onto the MR first)")
        drawn_on.add(reference.series_instance_uid)
    uncertainty = read_uncertainty_map(args.uncertainty, sct.volume) if args.uncertainty else None
    plan = read_rt_plan(open_dataset(args.plan), frame_of_reference_uid=frame,
                        source_name=str(args.plan)) if args.plan else None
    structures = tuple(read_structures(args.structures, sct.volume, frame_of_reference_uid=frame,
                                       referenced_series_uid=drawn_on, allow_empty=True)) if args.structures else ()
    for empty in (s for s in structures if not s.mask.any()):
        logger.warning("structure %s has no voxel on the sCT grid; it is left out of the DVH comparison", empty.name)
    structures = tuple(s for s in structures if s.mask.any())
    thresholds = QaThresholds()
    if args.thresholds:
        import tomllib

        try:
            thresholds = thresholds_from_mapping(tomllib.loads(args.thresholds.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise InputError(f"{args.thresholds}: cannot read QA thresholds ({error})") from None
    from dosimetry.hu_reference import load_hu_reference

    hu_reference = load_hu_reference(args.hu_reference) if args.hu_reference else None
    record = run_qa(QaInputs(sct=sct.volume, site=args.site, mr_body_mask=mr_mask, mr_grid=mr.volume if mr else None,
                             hu_reference=hu_reference,
                             reference_ct=reference.volume if reference else None, plan=plan,
                             structures=structures, compute_dose=not args.no_dose,
                             uncertainty_hu=uncertainty, uncertainty_level_hu=args.uncertainty_level_hu,
                             **({"dose_grid_mm": args.dose_grid_mm} if args.dose_grid_mm else {})), thresholds)
    context = qa_context(sct_dir=args.sct, model_card=None, mr_files=mr.files if mr else (),
                         mr_series_uid=mr.series_instance_uid if mr else "",
                         mr_series_description=str(mr.header.get("SeriesDescription", "") or "") if mr else "",
                         reference_ct_files=reference.files if reference else (), structures_file=args.structures,
                         plan_file=args.plan, site=args.site)
    path = write_qa(record, args.output, context)
    result = record.result
    if args.json:
        print(path.read_text())
    else:
        print(f"QA {result.verdict.value}: {path}")
        for reason in result.reasons:
            print(f"  - {reason}")
    return EXIT_QA_FAIL if result.verdict == Verdict.FAIL else EXIT_OK


def _run_hu_reference(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from dosimetry.outline import sct_body_outline
    from dosimetry.hu_reference import build_hu_reference
    from models.fileio import write_atomic
    from sct_node.dicom.reader import read_series
    from sct_node.dicom.uids import CT_IMAGE_STORAGE
    from sct_node.errors import InputError, OutputError

    cts = []
    for folder in args.cts:
        case = [folder / f"{name}{ext}" for name in ("ct", "mask") for ext in (".mha", ".nii.gz")
                if (folder / f"{name}{ext}").is_file()]
        if len(case) == 2:  # SynthRAD layout: the CT and its body mask
            from models.learned.data import load_cases

            (loaded,) = load_cases(folder)
            cts.append((folder.name, loaded.ct, np.asarray(loaded.body, dtype=bool)))
        elif folder.is_dir():
            series = read_series([folder], sop_classes=[CT_IMAGE_STORAGE])
            cts.append((folder.name, series.volume, sct_body_outline(series.volume)))
        else:
            raise InputError(f"{folder}: not a folder; expected a DICOM CT series folder or a SynthRAD case folder")
    reference = build_hu_reference(args.site, cts, source=f"sct-node hu-reference from {len(cts)} CT(s): "
                                                          + ", ".join(case_id for case_id, _, _ in cts))
    text = (json.dumps(reference.to_json(), indent=1) + "\n").encode()
    try:
        write_atomic(args.output, lambda stream: stream.write(text))
    except OSError as error:
        raise OutputError(f"cannot write the HU reference {args.output}: {error}") from None
    spread = reference.leave_one_out_hu()
    print(f"HU reference for {args.site}: {len(cts)} CT(s) -> {args.output}")
    if spread:
        print(f"  each CT's distance to its nearest other: {', '.join(f'{v:.0f}' for v in spread)} HU "
              f"(the check's default limits: pass <= 40, fail > 80 HU)")
    return EXIT_OK


def _run_report(args: argparse.Namespace) -> int:
    from sct_node.report.bundle import build_bundle

    bundle = build_bundle(args.qa, args.output, rt_dose=not args.no_rt_dose, copy_sct=True)
    print(f"QA {bundle.verdict}: report {bundle.pdf}")
    for path in (*bundle.rt_files, *bundle.report_files):
        print(f"  {path}")
    return EXIT_OK


def _run_release(args: argparse.Namespace) -> int:
    from sct_node.errors import SctNodeError
    from sct_node.node.qa_stage import release_held

    state = _open_state(args.config)
    job = state.job(args.job)
    if job.state != "held":
        raise SctNodeError(f"job {args.job} is {job.state}, not held; only held jobs can be released")
    moved = release_held(job.output_dir) if job.output_dir else 0
    new_state = state.release_job(args.job)
    print(f"job {args.job}: {new_state} ({moved} held file(s) released)")
    return EXIT_OK


def _run_gamma(args: argparse.Namespace) -> int:
    from dosimetry.gamma import gamma_volumes
    from dosimetry.rtdose import read_rt_dose
    from sct_node.errors import InputError

    reference = read_rt_dose(args.reference, allow_relative=True)
    evaluated = read_rt_dose(args.evaluated, allow_relative=True)
    if reference.frame_of_reference_uid != evaluated.frame_of_reference_uid:
        raise InputError(f"{args.evaluated} is in frame of reference {evaluated.frame_of_reference_uid}, "
                               f"the reference in {reference.frame_of_reference_uid}: they cannot be compared")
    options = {"lower_percent_dose_cutoff": args.cutoff_percent, "local_gamma": args.local}
    if args.max_gamma is not None:
        options["max_gamma"] = args.max_gamma
    result = gamma_volumes(reference.dose_gy, evaluated.dose_gy, args.dose_percent, args.distance_mm, **options)
    summary = {
        "reference": str(args.reference), "evaluated": str(args.evaluated),
        "dose_percent_threshold": args.dose_percent, "distance_mm_threshold": args.distance_mm,
        "lower_percent_dose_cutoff": args.cutoff_percent, "local_gamma": args.local,
        "pass_rate_percent": round(result.pass_rate_percent, 4), "evaluated_points": result.evaluated_points,
        "mean_gamma": round(float(result.gamma[result.gamma == result.gamma].mean()), 4)
        if result.evaluated_points else None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        kind = "local" if args.local else "global"
        print(f"gamma {args.dose_percent:g}%/{args.distance_mm:g} mm ({kind}, cutoff {args.cutoff_percent:g}%): "
              f"pass rate {result.pass_rate_percent:.2f}% of {result.evaluated_points} points")
    return EXIT_OK


def _run_dose(args: argparse.Namespace) -> int:
    from dosimetry.beam import ARC_GANTRY_BIN_DEG, beams_from_plan
    from dosimetry.density import relative_electron_density_volume
    from dosimetry.dose_sampling import DEFAULT_DOSE_GRID_MM
    from dosimetry.engine import compute_dose
    from dosimetry.plans import read_rt_plan
    from dosimetry.qa import dose_grid_image
    from sct_node.dicom.files import open_dataset
    from sct_node.dicom.reader import read_series
    from sct_node.dicom.rtdose_writer import write_rt_dose
    from sct_node.dicom.uids import CT_IMAGE_STORAGE, derive_uid
    from sct_node.errors import InputError

    ct = read_series([args.ct], sop_classes=[CT_IMAGE_STORAGE])
    plan_dataset = open_dataset(args.plan)  # the project's opener: Part 10 files and raw data sets alike
    plan = read_rt_plan(plan_dataset, frame_of_reference_uid=ct.frame_of_reference_uid,
                        fraction_group=args.fraction_group, source_name=str(args.plan))
    ct_position = str(ct.header.get("PatientPosition", "") or "") or None
    if plan.patient_position and ct_position and plan.patient_position != ct_position:
        raise InputError(f"{args.plan}: the plan's patient position is {plan.patient_position}, the CT's "
                         f"{ct_position}; they must be the same")
    beams = beams_from_plan(plan, patient_position=plan.patient_position or ct_position,
                            gantry_bin_deg=ARC_GANTRY_BIN_DEG)
    grid = dose_grid_image(ct.volume, args.dose_grid_mm or DEFAULT_DOSE_GRID_MM)
    per_fraction = compute_dose(relative_electron_density_volume(grid), beams)
    total = per_fraction.with_array(per_fraction.array * plan.fractions)
    groups = len(plan_dataset.get("FractionGroupSequence", []))
    summation = "PLAN" if groups == 1 else "FRACTION"
    what = (f"the whole plan ({plan.fractions} fraction{'s' if plan.fractions != 1 else ''})" if groups == 1 else
            f"all {plan.fractions} fraction(s) of fraction group {plan.fraction_group_number} of {groups}")
    statement = (f"Dose of RT Plan {plan.label!r}, {what}, computed on a CT by sct-node's simplified photon dose "
                 "engine for comparison with a planning system's dose. Not a commissioned treatment planning "
                 "system dose: not for treatment planning or delivery."
                 + (" " + " ".join(f"{note}." for note in plan.notes) if plan.notes else ""))
    headers = [open_dataset(path) for path in ct.files]
    seed = (str(plan.sop_instance_uid), ct.series_instance_uid, str(plan.fraction_group_number),
            f"{args.dose_grid_mm or DEFAULT_DOSE_GRID_MM:g}")
    write_rt_dose(dose_gy=total, sct_headers=headers, path=args.output,
                  sop_instance_uid=derive_uid(*seed, "rtdose"), series_instance_uid=derive_uid(*seed, "rtdose-series"),
                  series_description=f"sct-node dose: {plan.label}", referenced_plan_uid=plan.sop_instance_uid,
                  fraction_group_number=plan.fraction_group_number or 1, summation_type=summation,
                  statement=statement, dose_comment="sct-node simplified engine - NOT FOR TREATMENT")
    print(f"RT Dose ({summation}: {what}; {len(plan.beams)} beam(s) as {len(beams)} static beam(s)), "
          f"maximum {float(total.array.max()):.3f} Gy: {args.output}")
    for note in plan.notes:
        print(f"  - {note}")
    return EXIT_OK


def _run_demo(args: argparse.Namespace) -> int:
    from sct_node.tools.demo import default_workdir, run_demo

    workdir = args.workdir or default_workdir()
    print(f"sct-node demo in {workdir}: phantom MR -> node -> stand-in planning system (loopback)", file=sys.stderr)
    result = run_demo(workdir, site=args.site)
    if args.json:
        print(json.dumps(result.as_dict()))
        return EXIT_OK
    print(f"MR series sent ({result.instances_sent} instances): {result.mr_dir}")
    print(f"node spool and database:        {result.spool_dir}")
    print(f"sCT and QA bundle received by the planning system ({result.instances_received} instances): "
          f"{result.received_dir}")
    print(f"dosimetric QA: {result.qa_verdict} ({result.qa_json})")
    if result.qa_json and Path(result.qa_json).exists():
        from dosimetry.qa_result import read_qa

        for reason in read_qa(Path(result.qa_json).parent, maps=False).result.reasons:
            print(f"  - {reason}")
    print(f"QA report (PDF): {result.qa_report_pdf}")
    print(f"stages (s): phantom {result.phantom_s}, send {result.send_s}, quiet period {result.quiet_period_s}, "
          f"process incl. QA {result.process_s}, deliver {result.deliver_s}; total {result.total_s}")
    return EXIT_OK


def _fmt(values: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in values)


def _typed(convert: Callable[[str], float], check: Callable[[float], bool], what: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; found {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}; found {text!r}")
        return value

    return parse


_positive_int = _typed(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _typed(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _typed(float, lambda v: v > 0, "a positive number")
_non_negative_float = _typed(float, lambda v: v >= 0, "a non-negative number")


def _comment(text: str) -> str:
    """A comment a person must write: not empty, not only blanks."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a comment saying why; found {text!r}")
    return text.strip()
