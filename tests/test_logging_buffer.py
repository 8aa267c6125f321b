"""Buffered log lines (`bspgate serve` and its workers): INFO waits a moment, WARNING never does.

INFO and DEBUG lines are written by a thread every `FLUSH_EVERY` seconds; WARNING and above go
out at once, after everything buffered before them, so the order holds; a stop writes the rest;
a blocked stream holds at most `MAX_BUFFERED` lines. Through real structlog configuration and a
real `bspgate serve` process.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import structlog

from bspgate import logging as bspgate_logging
from bspgate.logging import LineHandler, LineWriter, configure_logging, flush_logs
from tests.production.helpers import serving, write_config


@pytest.fixture(autouse=True)
def default_structlog() -> Iterator[None]:
    yield
    configure_logging("info")  # unbuffered again: the buffer's writer is closed
    structlog.reset_defaults()


def _events(text: str) -> list[str]:
    return [orjson.loads(line)["event"] for line in text.splitlines() if line.startswith("{")]


def test_info_lines_wait_for_the_flush_and_warnings_go_at_once_in_order() -> None:
    stream = io.StringIO()
    writer = LineWriter(stream, every=3600)  # only explicit flushes in this test
    try:
        writer.buffer('{"event":"one"}')
        writer.buffer('{"event":"two"}')
        assert stream.getvalue() == ""  # no write of their own
        writer.urgent('{"event":"three"}')  # the buffered lines first, then this one
        assert _events(stream.getvalue()) == ["one", "two", "three"]
        writer.buffer('{"event":"four"}')
        writer.flush()
        assert _events(stream.getvalue()) == ["one", "two", "three", "four"]
    finally:
        writer.close()


def test_the_flusher_writes_buffered_lines_within_its_interval() -> None:
    stream = io.StringIO()
    writer = LineWriter(stream, every=0.05)
    try:
        writer.buffer('{"event":"later"}')
        deadline = time.monotonic() + 5
        while "later" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _events(stream.getvalue()) == ["later"]
    finally:
        writer.close()


def test_a_blocked_stream_holds_a_bounded_number_of_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bspgate_logging, "MAX_BUFFERED", 3)
    stream = io.StringIO()
    writer = LineWriter(stream, every=3600)
    try:
        for n in range(10):
            writer.buffer(f'{{"event":"e{n}"}}')
        writer.flush()
        assert _events(stream.getvalue()) == ["e7", "e8", "e9"]  # the oldest were dropped
    finally:
        writer.close()


def test_configured_buffered_logging_keeps_levels_apart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", json=True, buffered=True)
    log = structlog.get_logger("test")
    log.info("webhook.received")
    assert capsys.readouterr().err == ""  # waiting in the buffer
    log.warning("webhook.unauthorized")
    assert _events(capsys.readouterr().err) == ["webhook.received", "webhook.unauthorized"]
    log.info("delivery.delivered")
    flush_logs()
    assert _events(capsys.readouterr().err) == ["delivery.delivered"]


def test_configuring_unbuffered_again_writes_what_waits_and_stops_buffering(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", json=True, buffered=True)
    structlog.get_logger("test").info("waiting")
    configure_logging("info", json=True)
    assert _events(capsys.readouterr().err) == ["waiting"]
    assert bspgate_logging._writer is None
    structlog.get_logger("test").info("at once")
    assert _events(capsys.readouterr().err) == ["at once"]


def test_uvicorns_lines_keep_their_place_among_bspgates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", json=True, buffered=True)
    handler = LineHandler()
    handler.setFormatter(bspgate_logging.StdlibFormatter(json=True))
    stdlib = logging.getLogger("uvicorn.test")
    stdlib.addHandler(handler)
    stdlib.setLevel(logging.INFO)
    stdlib.propagate = False
    try:
        structlog.get_logger("test").info("first")
        stdlib.info("second")
        stdlib.error("third")
        assert _events(capsys.readouterr().err) == ["first", "second", "third"]
    finally:
        stdlib.removeHandler(handler)


def test_serve_writes_every_buffered_line_when_it_stops(tmp_path: Path) -> None:
    # a real `bspgate serve`: its access lines are INFO, buffered; SIGTERM stops it, and every
    # one must be in its output by then (its workers' too: they leave through os._exit)
    with serving(write_config(tmp_path), cwd=tmp_path) as served:
        for _ in range(5):
            assert httpx.get(served.base + "/readyz", timeout=5).status_code == 200
    events = _events(served.stderr)
    assert "bspgate.started" in events
    assert events.count("http.request") >= 5  # the health checks' access lines
