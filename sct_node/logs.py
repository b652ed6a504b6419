"""Logging set-up: plain text or one JSON object per line, the one set-up of every ``sct-node`` command.

Nothing the node logs at INFO or above contains a patient's name, ID or
birth date: records name instances and series by UID and peers by AE title.
pydicom, pynetdicom and highdicom are kept at WARNING unless debugging, because
their INFO/DEBUG output can include data set contents (and highdicom's is a line
per copied module).

With ``json_lines`` every line the process writes to stderr must be JSON, so
that a log collector can parse all of it. Besides the log records themselves,
three things would otherwise print plain text there, and are routed through
logging instead (in both formats, so that there is one path):

* Python warnings (pydicom warns about values that break their VR, e.g. a
  Series Description longer than 64 characters): ``logging.captureWarnings``,
  logger ``py.warnings``;
* an exception nobody caught in a thread (``threading.excepthook``);
* an exception that cannot be raised (``sys.unraisablehook``, "Exception ignored in ...").

Errors of ``sct-node`` itself go through :func:`json_lines_enabled` (see
``sct_node.cli``). What a C library writes to file descriptor 2 directly
cannot be caught in Python; none of the node's libraries does so in normal
operation.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["JsonFormatter", "configure_logging", "json_lines_enabled"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time": ..., "level": ..., "logger": ..., "message": ..., "thread": ...}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception as error:  # noqa: BLE001 - a bad format string must not become a plain-text report
            message = f"{record.msg!s} (log arguments could not be formatted: {type(error).__name__})"
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not to the one at set-up.

    A command run in-process (tests swap ``sys.stderr`` for a capture buffer that is closed afterwards) must not
    leave a handler writing to a closed stream.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ and setStream assign it; stderr it stays
        pass


def configure_logging(level: str | None = None, json_lines: bool = False, *, debug: bool = False,
                      quiet: bool = False) -> None:
    """Configure the root logger for the process: one handler on stderr, text or JSON lines.

    The level is DEBUG with ``debug`` (``--debug``), else ``level`` when given (``sct-node serve``: the node's
    ``[logging]`` table), else WARNING with ``quiet`` (``--quiet``), else INFO.

    Calling it again replaces the previous configuration (``sct-node serve`` reconfigures once it has read the
    node's ``[logging]`` table). Python warnings, uncaught thread exceptions and unraisable exceptions become log
    records (module docstring).
    """
    level = "DEBUG" if debug else level or ("WARNING" if quiet else "INFO")
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # highdicom narrates every module it copies at INFO (one line per module per object), dicomweb-client every
    # request: noise for an operator, who gets the node's own line per delivery.
    for name in ("pydicom", "pynetdicom", "highdicom", "dicomweb_client"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception
    sys.unraisablehook = _log_unraisable


def json_lines_enabled() -> bool:
    """Whether the root logger writes JSON lines (then a command's own error must be a JSON line too)."""
    return any(isinstance(handler.formatter, JsonFormatter) for handler in logging.getLogger().handlers)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:  # as threading's own hook: a thread ending with SystemExit is not an error
        return
    name = args.thread.name if args.thread is not None else "unknown"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None
    logging.getLogger("sct_node").error("uncaught exception in thread %s", name, exc_info=exc_info)


def _log_unraisable(unraisable: Any) -> None:
    what = unraisable.err_msg or "Exception ignored in"
    logging.getLogger("sct_node").error("%s: %r", what, unraisable.object,
                                        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
