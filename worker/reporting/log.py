"""structlog set-up: JSON lines on stdout (or a console view on a TTY), secrets masked.

structlog (and the rich it loads for its console view) is imported when the first logger is asked for,
not by `configure`: every command configures logging at start, and most never log a line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from worker.reporting.redact import Redactor

#: What `configure` was last asked for, applied to structlog by the first `get_logger` (or at once if
#: structlog is in use already).
_pending: list[tuple[str, bool, Redactor, TextIO]] = []


def use_color(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (no-color.org); FORCE_COLOR asks for it anywhere."""
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR", "") not in ("", "0", "false"):
        return True
    return stream.isatty()


def configure(log_format: str | None, redactor: Redactor, stream: TextIO | None = None) -> None:
    """Route every structlog event through the redactor to `stream` (stdout by default)."""
    out = stream or sys.stdout
    fmt = log_format or ("console" if out.isatty() else "json")
    _pending[:] = [(fmt, use_color(out, os.environ), redactor, out)]
    if "structlog" in sys.modules:
        _apply()
    # APScheduler and other libraries log through the standard library: keep their
    # warnings (they explain misfires), drop their chatter, and send them to stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def _apply() -> None:
    if not _pending:
        return
    import structlog

    fmt, colors, redactor, out = _pending.pop()

    def redact(_logger: Any, _method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        return dict(redactor(event))

    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=colors)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            # Last before rendering, so nothing added earlier escapes it.
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


class _RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redactor.text(record.getMessage())
        record.args = None
        return True


def get_logger(**bound: Any) -> Any:
    """A structlog logger with `bound` fields on every line."""
    import structlog

    _apply()
    return structlog.get_logger("opskeeper").bind(**bound)
