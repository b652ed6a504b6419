"""The ``sct-node`` command: one verb per job, one module per verb (``add_parser`` and ``run``).

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

Each verb module imports what its work needs inside its ``run``, so that the
command starts without torch and the dose engine unless the verb uses them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sct_node import __version__
from sct_node.cli import (
    console_user,
    demo,
    dicomweb_token,
    dismiss,
    dose,
    evaluate,
    gamma,
    hu_reference,
    phantom,
    qa,
    release,
    report,
    retry,
    serve,
    status,
    train,
    translate,
)
from sct_node.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_QA_FAIL,
    EXIT_USAGE,
    error_line,
    fail,
    stdout_closed,
    stdout_is_a_pipe,
)
from sct_node.logs import configure_logging

__all__ = [
    "EXIT_BROKEN_PIPE", "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_MODEL", "EXIT_OK", "EXIT_OUTPUT",
    "EXIT_QA_FAIL", "EXIT_USAGE", "build_parser", "main",
]

#: The verbs in the order ``sct-node --help`` lists them.
VERBS = (phantom, translate, train, evaluate, serve, status, retry, release, dismiss, console_user,
         dicomweb_token, qa, hu_reference, report, gamma, dose, demo)


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
    for verb in VERBS:
        verb.add_parser(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except BrokenPipeError:  # `sct-node --help | head -1`
        return stdout_closed()
    configure_logging(debug=args.debug, quiet=args.quiet)
    from dosimetry.errors import DosimetryError
    from models.errors import ModelsError
    from sct_node.errors import InputError, OutputError, SctNodeError

    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # a reader gone away shows here, not as "Exception ignored" at interpreter exit
        return code
    except BrokenPipeError as error:
        if stdout_is_a_pipe():
            return stdout_closed()
        return fail(error, EXIT_INTERNAL, args.debug, prefix="internal error (please report with --debug): ")
    except InputError as error:
        return fail(error, EXIT_INPUT, args.debug)
    except OutputError as error:
        return fail(error, EXIT_OUTPUT, args.debug)
    except ModelsError as error:
        return fail(error, EXIT_MODEL, args.debug)
    except DosimetryError as error:
        return fail(error, EXIT_INPUT, args.debug)
    except SctNodeError as error:
        return fail(error, EXIT_INPUT, args.debug)
    except KeyboardInterrupt:
        error_line("sct-node: interrupted")
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        return fail(error, EXIT_INTERNAL, args.debug, prefix="internal error (please report with --debug): ")
