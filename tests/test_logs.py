"""Log lines: access lines batched and made without a LogRecord, identical to the formatter's."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gateway.logs import ACCESS_LOGGER, JsonFormatter, flush_logs, setup_logging, write_access

FIELDS = {"request_id": "r" * 32, "door": "forward_auth", "route": "default", "method": "GET",
          "status": 200, "reason": "ok", "user": "user_1", "org": None, "duration_ms": 0.02,
          "upstream_status": None}


@contextlib.contextmanager
def gateway_logging(fmt: str = "json") -> Iterator[io.StringIO]:
    """The gateway's logging on a string stream, as `serve` sets it up (it replaces the
    handlers pytest adds for the test's duration); everything put back after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    sink = io.StringIO()
    setup_logging("INFO", fmt, sink)
    try:
        yield sink
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def is_direct() -> bool:
    """True when access lines skip logging (the gateway's handler is the only one)."""
    return len(logging.getLogger().handlers) == 1


def lines(sink: io.StringIO) -> list[dict[str, object]]:
    """The JSON lines written so far."""
    return [json.loads(line) for line in sink.getvalue().splitlines()]


def test_an_access_line_matches_what_the_formatter_writes() -> None:
    with gateway_logging() as stream:
        assert is_direct()
        write_access(dict(FIELDS))
        flush_logs()
    (direct,) = lines(stream)
    record = logging.makeLogRecord({"name": ACCESS_LOGGER, "levelno": logging.INFO,
                                    "levelname": "INFO", "msg": "request", **FIELDS})
    formatted = json.loads(JsonFormatter().format(record))
    assert direct.pop("ts") and formatted.pop("ts")
    assert direct == formatted
    assert list(direct) == list(formatted)  # same key order too


def test_access_lines_wait_for_a_flush() -> None:
    with gateway_logging() as stream:
        for _ in range(3):
            write_access(dict(FIELDS))
        assert stream.getvalue() == ""  # batched: nothing written per request
        flush_logs()
    assert len(lines(stream)) == 3


def test_another_line_writes_the_pending_access_lines_first_in_order() -> None:
    with gateway_logging() as stream:
        write_access({**FIELDS, "request_id": "first"})
        logging.getLogger("gateway.keys").warning("key fetch failed", extra={"issuer": "clerk"})
        written = lines(stream)  # no flush needed: a non-access line writes at once
    assert [line.get("request_id") for line in written] == ["first", None]
    assert written[1]["msg"] == "key fetch failed" and written[1]["issuer"] == "clerk"


def test_a_full_batch_is_written_without_waiting() -> None:
    with gateway_logging() as stream:
        written = 0
        while not stream.getvalue():
            write_access(dict(FIELDS))
            written += 1
            assert written < 10_000
        batch = lines(stream)
    assert len(batch) == written  # the whole batch at once, when 64 KiB were pending
    assert 64 * 1024 <= len(stream.getvalue()) < 64 * 1024 + 1024


def test_pending_access_lines_are_written_at_exit() -> None:
    script = ("from gateway.logs import setup_logging, write_access\n"
              "setup_logging('INFO', 'json')\n"
              "write_access({'request_id': 'at-exit', 'status': 200})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, check=True)
    (line,) = [json.loads(text) for text in done.stderr.splitlines()]
    assert line["request_id"] == "at-exit" and line["logger"] == ACCESS_LOGGER


def test_with_another_handler_access_lines_go_through_logging(
    caplog: pytest.LogCaptureFixture
) -> None:
    with gateway_logging() as stream:
        logging.getLogger().addHandler(caplog.handler)
        caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
        write_access(dict(FIELDS))
        flush_logs()
    (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert record.getMessage() == "request" and record.__dict__["request_id"] == "r" * 32
    assert lines(stream)[0]["request_id"] == "r" * 32  # the stream still gets its line


def test_the_text_format_goes_through_logging() -> None:
    with gateway_logging("text") as sink:
        write_access(dict(FIELDS))
        flush_logs()
    assert "gateway.access: request" in sink.getvalue()
    assert "request_id=" + "r" * 32 in sink.getvalue()
