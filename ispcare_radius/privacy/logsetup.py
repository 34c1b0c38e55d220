"""Logging configuration: the ONE module with global state (structlog's configuration).

Imports no asyncio, asyncpg or socket. Every log line passes through
``RedactPersonal``; until ``configure_logging`` is given a pseudonymizer,
personal values are written as ``"<redacted>"``. Tracebacks are rendered as
plain text without local variables, which could hold passwords or keys.
"""

from __future__ import annotations

import json as jsonlib
import sys
from typing import Any, Final, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

from ispcare_radius.privacy.blind import Pseudonymizer
from ispcare_radius.privacy.redact import RedactPersonal

LEVELS: Final = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "error": 40,
    "critical": 50,
}


def _json_default(value: Any) -> str:
    # Unknown objects render by their str(); a Secret's is "Secret(***)".
    return str(value)


def _dumps(event: Any, **kwargs: Any) -> str:
    return jsonlib.dumps(event, default=_json_default, ensure_ascii=False)


class _NamedWriteLogger(structlog.WriteLogger):
    """A ``WriteLogger`` that knows the name it was asked for."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    """Builds ``_NamedWriteLogger``s; ``get_logger(name)`` passes the name through."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        return _NamedWriteLogger(self._file, name)


def _add_logger_name(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


def build_processors(
    *, pseudonymizer: Pseudonymizer | None, json: bool, colors: bool = False
) -> list[Processor]:
    """The processor chain ``configure_logging`` installs, for tests and embedding."""
    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback, sort_keys=False
        )
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Format the traceback before redaction so that its text is scrubbed too.
        structlog.processors.format_exc_info,
        RedactPersonal(pseudonymizer),
        renderer,
    ]


def configure_logging(
    *,
    pseudonymizer: Pseudonymizer | None,
    json: bool | None = None,
    level: str = "info",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the whole process; safe to call again once keys are loaded.

    ``json=None`` picks the console renderer when ``stream`` is a terminal and
    JSON lines otherwise. ``stream`` defaults to standard error.
    """
    try:
        min_level = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}") from None
    out = sys.stderr if stream is None else stream
    isatty = getattr(out, "isatty", None)
    tty = bool(callable(isatty) and isatty())
    if json is None:
        json = not tty
    structlog.configure(
        processors=build_processors(pseudonymizer=pseudonymizer, json=json, colors=tty),
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=_NamedWriteLoggerFactory(out),
        context_class=dict,
        # Loggers are not cached: reconfiguring (e.g. adding the pseudonymizer
        # once the master keys are loaded) reaches loggers created earlier.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger bound to ``name``; configures the redacting defaults if nobody has yet."""
    if not structlog.is_configured():
        configure_logging(pseudonymizer=None)
    return cast(FilteringBoundLogger, structlog.get_logger(name))
