"""Structured logging: one JSON object per line (or plain text), secrets never included."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["ACCESS_LOGGER", "BatchedStreamHandler", "JsonFormatter", "flush_logs",
           "protect_secrets", "setup_logging", "write_access"]

ACCESS_LOGGER = "gateway.access"
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_BATCH_BYTES = 64 * 1024
_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
           logging.ERROR: "error", logging.CRITICAL: "critical"}
_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode
_ROOT = logging.getLogger()
_ACCESS = logging.getLogger(ACCESS_LOGGER)
_MIN_SECRET = 6  # shorter values would mask ordinary words
_MASK = "[redacted]"
# The values masked in every line the gateway's handler writes (see protect_secrets).
_secrets: set[str] = set()


def protect_secrets(values: Iterable[str]) -> None:
    """Mask these values in every line written from now on (configured secrets)."""
    _secrets.update(v for v in values if len(v) >= _MIN_SECRET)


def _masked(line: str) -> str:
    """The line with every protected secret's value masked (longest first)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in line:
            line = line.replace(secret, _MASK)
    return line


class JsonFormatter(logging.Formatter):
    """Formats a record and its `extra` fields as one JSON line."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _timestamp(self, created: float, msecs: float) -> str:
        """ISO 8601 UTC with milliseconds (the seconds part formatted once per second)."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        return f"{self._stamp}.{int(msecs):03d}Z"

    def access_line(self, fields: dict[str, Any]) -> str:
        """The line `format` writes for an access record with these fields, made directly."""
        now = time.time()
        entry = {"ts": self._timestamp(now, (now - int(now)) * 1000), "level": "info",
                 "logger": ACCESS_LOGGER, "msg": "request"}
        entry.update(fields)
        return _encode(entry)

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON."""
        fields = vars(record)
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created, record.msecs),
            "level": _LEVELS.get(record.levelno) or record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
        return _encode(entry)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the extra fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as text."""
        extras = " ".join(
            f"{k}={v}" for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_")
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()} {extras}"
        return line.rstrip()


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes access lines in batches, every other line at once.

    An access line per request written and flushed one by one cost more than the decision
    itself, so access lines are kept until 64 KiB are pending, another line is written, or
    `flush_logs` runs (the gateway calls it every quarter second, and logging at exit).
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._pending_bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Format the record; keep an access line, write anything else at once."""
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._keep(line)
        if record.name != ACCESS_LOGGER:
            self._write()

    def add_access_line(self, line: str) -> None:
        """Keep an access line made without a LogRecord (see `write_access`)."""
        with self.lock:  # type: ignore[union-attr]
            self._keep(line)

    def _keep(self, line: str) -> None:
        """Add a line (secrets masked) to the batch; write the batch once it is full."""
        if _secrets:
            line = _masked(line)
        self._pending.append(line)
        self._pending_bytes += len(line) + 1
        if self._pending_bytes >= _BATCH_BYTES:
            self._write()

    def flush(self) -> None:
        """Write the pending lines."""
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        if self._pending:
            text = "\n".join(self._pending) + "\n"
            self._pending.clear()
            self._pending_bytes = 0
            try:
                self.stream.write(text)
            except Exception:  # a closed or broken stream must not fail a request
                return
        super().flush()


def write_access(fields: dict[str, Any]) -> None:
    """One access line (the caller checked the level): straight to the JSON handler that
    `setup_logging` installed when it is the only destination, else through logging.

    A LogRecord and the handler chain cost more per request than the line itself; custom
    handlers, filters, the text format and tests that capture logs take the logging path.
    """
    handlers = _ROOT.handlers
    if len(handlers) == 1 and not _ACCESS.handlers and not _ACCESS.filters:
        handler = handlers[0]
        formatter = handler.formatter
        if type(handler) is BatchedStreamHandler and type(formatter) is JsonFormatter:
            handler.add_access_line(formatter.access_line(fields))
            return
    _ACCESS.info("request", extra=fields)


def flush_logs() -> None:
    """Write every batched log line now."""
    for handler in _ROOT.handlers:
        handler.flush()


def setup_logging(level: str, fmt: str, stream: Any = None) -> None:
    """Send every gateway log line to stderr in the chosen format."""
    handler = BatchedStreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").disabled = True
    # No line shows the caller's file, thread or process: skip collecting them per record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
