"""Logs as kube-controller-manager writes them: ``--logging-format text|json`` and ``-v N``.

``text`` is klog's header (``I1202 13:44:05.123456  4242 manager.py:412] message``) followed
by ``key="value"`` pairs; ``json`` is one object a line, as component-base's JSON logger
writes: ``ts`` (here float *seconds* since the epoch), ``level``, ``logger``, ``caller``,
``msg``, ``v`` (for info and debug lines), ``err`` and ``stacktrace`` (with an exception), then
the line's fields.

Fields come from ``extra=`` and from :func:`log_context`, which the reconciler wraps around
each reconcile, so that every line written during one carries ``controller`` and ``key``; a
line written while an OpenTelemetry span is current carries its ``trace_id`` and ``span_id``
(lowercase hex, as Jaeger shows them).

klog's ``-v`` on Python's levels (klog: 0 is always shown, higher is chattier; Kubernetes'
convention makes V(4) debug and V(6) client request logs):

====  ===================================================================
-v    shown
====  ===================================================================
0-3   ERROR, WARNING, INFO (of everything)
4-5   and DEBUG of kubus's own loggers (``kubus``, ``bus``, ``watcher``, ``reconcilers``)
>= 6  and DEBUG of the libraries too (nats, aiohttp, asyncio, opentelemetry, ...)
====  ===================================================================
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import IO, Any, Final

from opentelemetry import trace

__all__ = [
    "FORMATS",
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "log_context",
    "setup_logging",
]

FORMATS: Final = ("text", "json")
OWN_LOGGERS: Final = ("kubus", "bus", "watcher", "reconcilers")
DEBUG_VERBOSITY: Final = 4  # kubus's own DEBUG lines from -v 4
LIBRARY_DEBUG_VERBOSITY: Final = 6  # everyone's DEBUG lines from -v 6

_fields: ContextVar[Mapping[str, Any]] = ContextVar(
    "kubus_log_fields", default=MappingProxyType({})
)
# What a LogRecord carries of its own; anything else on it came from extra= (or the filter).
_STANDARD: Final = frozenset(
    {*vars(logging.LogRecord("", 0, "", 0, "", (), None)), "message", "asctime", "taskName"}
)
_LEVELS: Final = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
_KLOG_LETTERS: Final = {"debug": "I", "info": "I", "warning": "W", "error": "E", "critical": "F"}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every line logged inside (in this task, and tasks it starts) carries ``fields``."""
    token = _fields.set(MappingProxyType({**_fields.get(), **fields}))
    try:
        yield
    finally:
        _fields.reset(token)


class ContextFilter(logging.Filter):
    """Puts the :func:`log_context` fields and the current span's ids on each record.

    A field given with ``extra=`` wins over the context's of the same name.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        attributes = record.__dict__
        for name, value in _fields.get().items():
            attributes.setdefault(name, value)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            attributes.setdefault("trace_id", format(span.trace_id, "032x"))
            attributes.setdefault("span_id", format(span.span_id, "016x"))
        return True


def _level(record: logging.LogRecord) -> str:
    return _LEVELS.get(record.levelno) or record.levelname.lower()


def _verbosity(record: logging.LogRecord) -> int | None:
    """The klog V level a line stands for: only info lines have one, as in component-base."""
    if record.levelno == logging.INFO:
        return 0
    if record.levelno < logging.INFO:
        return DEBUG_VERBOSITY
    return None


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The line's key/value fields: ``extra=`` and the context's."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": record.created,
            "level": _level(record),
            "logger": record.name,
            "caller": f"{record.filename}:{record.lineno}",
            "msg": record.getMessage(),
        }
        verbosity = _verbosity(record)
        if verbosity is not None:
            entry["v"] = verbosity
        if record.exc_info and record.exc_info[1] is not None:
            entry["err"] = str(record.exc_info[1]) or type(record.exc_info[1]).__name__
            entry["stacktrace"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stacktrace"] = record.stack_info
        for key, value in fields_of(record).items():
            entry.setdefault(key, value)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """klog's text header; fields after the message as ``key="value"`` (numbers bare)."""

    def __init__(self) -> None:
        super().__init__()
        self._pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        moment = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        header = (
            f"{_KLOG_LETTERS.get(_level(record), 'I')}{time.strftime('%m%d %H:%M:%S', moment)}"
            f".{micros:06d} {self._pid:7d} {record.filename}:{record.lineno}]"
        )
        parts = [header, record.getMessage(), f"logger={_quoted(record.name)}"]
        parts += [f"{key}={_quoted(value)}" for key, value in fields_of(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def _quoted(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


class _KubusHandler(logging.StreamHandler[IO[str]]):
    """The handler :func:`setup_logging` installs, told apart from anyone else's."""


def setup_logging(
    format: str = "text", verbosity: int = 0, *, stream: IO[str] | None = None
) -> None:
    """Logs of this process to ``stream`` (stderr) in ``format`` at klog verbosity
    ``verbosity``; calling it again replaces what an earlier call installed."""
    if format not in FORMATS:
        raise ValueError(f"logging format must be one of {', '.join(FORMATS)}, not {format!r}")
    if verbosity < 0:
        raise ValueError(f"verbosity must be >= 0, not {verbosity}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _KubusHandler)]:
        root.removeHandler(handler)
        handler.close()
    handler = _KubusHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= LIBRARY_DEBUG_VERBOSITY else logging.INFO)
    own = logging.DEBUG if verbosity >= DEBUG_VERBOSITY else logging.INFO
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own)
