"""What the verbs of ``sct-node`` share: exit codes, error lines, stdout, progress bars, argument types and options."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sct_node.logs import json_lines_enabled

if TYPE_CHECKING:
    from typing import TypeAlias

    from models.base import TranslationModel
    from sct_node.node.state import StateStore

    #: What ``ArgumentParser.add_subparsers`` returns: each verb's ``add_parser`` adds its sub-parser to it.
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    Subcommands = argparse._SubParsersAction

__all__ = [
    "EXIT_BROKEN_PIPE", "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_MODEL", "EXIT_OK", "EXIT_OUTPUT",
    "EXIT_QA_FAIL", "EXIT_USAGE", "Subcommands", "add_config_option", "add_job_argument", "comment", "error_line", "fail", "fmt",
    "load_model_from_args", "logger", "model_options", "non_negative_float", "non_negative_int", "open_state",
    "positive_float", "positive_int", "progress", "read_json_object", "stdout_closed", "stdout_is_a_pipe", "typed",
]

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT, EXIT_MODEL, EXIT_QA_FAIL = 0, 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE (13): what a shell reports for a command that a closed pipe stopped.
EXIT_BROKEN_PIPE = 141

#: The logger of the command and its verbs (their records read ``sct_node: ...``).
logger = logging.getLogger("sct_node")

_T = TypeVar("_T")


def fail(error: BaseException, code: int, debug: bool, prefix: str = "") -> int:
    """Report ``error`` as the command's one error line (with its traceback when debugging); returns ``code``."""
    message = " ".join(str(error).split()) or type(error).__name__
    error_line(f"sct-node: error: {prefix}{message}", error if debug else None)
    return code


def error_line(line: str, traceback_of: BaseException | None = None) -> None:
    """The command's own error: one plain line on stderr, or one JSON log record once JSON logs are set up."""
    if json_lines_enabled():
        logger.error("%s", line, exc_info=traceback_of)
        return
    if traceback_of is not None:
        traceback.print_exception(traceback_of)
    print(line, file=sys.stderr)


def stdout_is_a_pipe() -> bool:
    """Whether stdout is a pipe or socket, the only kinds of file a write to can fail with EPIPE.

    A BrokenPipeError while stdout is a terminal or a file came from somewhere else (a socket) and is a bug.
    """
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError):  # no file descriptor (stdout replaced in-process)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def stdout_closed() -> int:
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
def progress(description: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
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


def fmt(values: Sequence[float]) -> str:
    """``1 x 1 x 2.5``: a spacing or size for a log line."""
    return " x ".join(f"{v:g}" for v in values)


def typed(convert: Callable[[str], _T], check: Callable[[_T], bool], what: str) -> Callable[[str], _T]:
    """An argparse ``type``: ``convert`` the text and ``check`` the value, or refuse it as not ``what``."""

    def parse(text: str) -> _T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; found {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}; found {text!r}")
        return value

    return parse


positive_int = typed(int, lambda v: v > 0, "a positive integer")
non_negative_int = typed(int, lambda v: v >= 0, "a non-negative integer")
positive_float = typed(float, lambda v: v > 0, "a positive number")
non_negative_float = typed(float, lambda v: v >= 0, "a non-negative number")


def comment(text: str) -> str:
    """A comment a person must write: not empty, not only blanks."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a comment saying why; found {text!r}")
    return text.strip()


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; an InputError when it cannot be read or is not an object."""
    from sct_node.errors import InputError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read JSON ({error})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object; found {type(data).__name__}")
    return data


def model_options(parser: argparse.ArgumentParser) -> None:
    """The sampling options of the verbs that run a model (translate, evaluate)."""
    parser.add_argument("--steps", type=positive_int, help="DDIM sampling steps (diffusion models; default: the "
                                                          "checkpoint's, chosen from its quality-vs-steps curve)")
    parser.add_argument("--ensemble", type=positive_int, default=1,
                        help="samples per volume; > 1 gives the mean and an uncertainty map (diffusion models); "
                             "translate writes the map into OUTPUT-uncertainty/ (uncertainty.mha and a DICOM "
                             "Parametric Map), which `qa --uncertainty` reads")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sampling noise")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def load_model_from_args(args: argparse.Namespace) -> TranslationModel:
    """The model that ``--model`` names (default: the registry's), with :func:`model_options`' settings."""
    from models.registry import DEFAULT_MODEL, load_model

    name = args.model or DEFAULT_MODEL
    if name == "bulk":
        return load_model(name)
    return load_model(name, steps=args.steps, ensemble=args.ensemble, seed=args.seed, device=args.device)


def add_job_argument(parser: argparse.ArgumentParser) -> None:
    """The ``job`` argument of the verbs that act on one of the node's jobs."""
    parser.add_argument("job", type=positive_int, help="job ID (see sct-node status)")


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config`` of the verbs that open a node's database (:func:`open_state`)."""
    parser.add_argument("--config", "-c", type=Path, help="the node's configuration (for its spool folder)")


def open_state(config_path: Path | None) -> StateStore:
    """The database of the node that ``config_path`` configures; a ConfigError when there is none yet."""
    from sct_node.config import load_config
    from sct_node.errors import ConfigError
    from sct_node.node.service import state_location
    from sct_node.node.state import StateStore

    location = state_location(load_config(config_path))
    if isinstance(location, Path) and not location.exists():
        raise ConfigError(f"no node database at {location}; run `sct-node serve` first or pass the node's --config")
    return StateStore(location)
