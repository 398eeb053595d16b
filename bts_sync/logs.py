"""Logging set-up for the command line and the worker processes.

Library modules only create loggers; handlers are attached here, and only by
entry points (the CLI, and the worker when ``BTS_SYNC_LOG_FORMAT`` is ``json``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import weakref
from typing import Any

from bts_sync.redact import RedactingFilter

#: Line format of plain logs; it follows Dramatiq's worker format so that the
#: worker, the scheduler and bts-sync share one log style.
PLAIN_FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"

#: Accepted values of ``--log-format`` and ``BTS_SYNC_LOG_FORMAT``.
LOG_FORMATS = ("auto", "rich", "plain", "json")

#: Record attributes copied into JSON log lines when a log call passes them
#: through ``extra``.
JSON_FIELDS = (
    "endpoint",
    "slot",
    "token",
    "status",
    "elapsed_ms",
    "lateness_ms",
    "size",
    "changed",
    "error_kind",
    "message_id",
    "alert",
    "reason",
)


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for name in JSON_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


#: Handlers made by ``make_handler``; the command line chose their format.
_own_handlers: weakref.WeakSet[logging.Handler] = weakref.WeakSet()


class _DeferredRichHandler(logging.Handler):
    """Handler that creates a rich ``RichHandler`` when the first record arrives.

    Importing rich's logging support takes a few milliseconds, and most runs
    of a command log nothing at the default level.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self._stream = stream
        self._rich: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._rich is None:
            from rich.console import Console
            from rich.logging import RichHandler

            # Markup stays off: messages carry URLs and server text with brackets.
            self._rich = RichHandler(
                console=Console(file=self._stream),
                markup=False,
                rich_tracebacks=False,
                show_path=False,
            )
        self._rich.emit(record)


def make_handler(log_format: str, stream: Any = None) -> logging.Handler:
    """Create a handler for ``log_format``, with secrets masked.

    Args:
        log_format: One of ``LOG_FORMATS``. ``auto`` is ``rich`` on a terminal
            and ``plain`` otherwise.
        stream: Where to write. Defaults to standard error.
    """
    stream = stream if stream is not None else sys.stderr
    if log_format == "auto":
        log_format = "rich" if stream.isatty() else "plain"

    handler: logging.Handler
    if log_format == "rich":
        handler = _DeferredRichHandler(stream)
    elif log_format == "json":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler.addFilter(RedactingFilter())
    _own_handlers.add(handler)
    return handler


def configure_logging(
    log_format: str = "auto", level: int | str = logging.WARNING, stream: Any = None
) -> None:
    """Replace the root logger's handlers with one handler of ``log_format``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(make_handler(log_format, stream))
    root.setLevel(level)


def apply_format_from_environment(env: Any = None) -> None:
    """Mask secrets in the root logger's handlers, and switch them to JSON lines
    when ``BTS_SYNC_LOG_FORMAT=json``.

    The worker (``dramatiq``) and the scheduler (``periodiq``) configure
    logging themselves before they import ``bts_sync.actors``, which calls
    this. Each handler keeps its stream, so Dramatiq's worker processes still
    write through the pipe that their parent process copies to standard error.
    Handlers made by ``make_handler`` are left alone, because the command line
    chose their format and ``--log-format`` wins over the variable.
    """
    import os

    env = os.environ if env is None else env
    as_json = env.get("BTS_SYNC_LOG_FORMAT", "").lower() == "json"
    for handler in logging.getLogger().handlers:
        if handler in _own_handlers:
            continue
        # Every format masks secrets: urllib3 logs request URLs at INFO.
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
        if as_json:
            handler.setFormatter(JsonFormatter())
