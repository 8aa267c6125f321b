"""`bspgate serve`'s logs and metrics as operators read them: every line JSON (libraries'
lines too, redacted alike), nothing lost at a normal stop, no phone in a metric label."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from bspgate.app import create_app
from tests.asgi_client import TestClient
from tests.conftest import ROOT, fixture_json, make_settings
from tests.harness import free_port
from tests.payloads import signed
from tests.store import pg

PHONE = "15559876543"


# -- /metrics labels ---------------------------------------------------------------------------
def test_metrics_unmapped_field_label_carries_no_phone(tmp_path: Path) -> None:
    """A payload field no rule reads is counted in bspgate_unmapped_fields_total{field}; a phone
    used as a field name is masked there as in the log line (`mapping.unmapped_fields`)."""
    payload = fixture_json("cloudapi", "inbound_text")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message[f"+{PHONE}"] = {"seen": True}  # a field whose name is a phone number
    body, headers = signed(payload)
    with TestClient(create_app(make_settings(tmp_path), dispatch=False)) as client:
        assert client.post("/webhooks/cloud-us", content=body, headers=headers).status_code == 200
        metrics = client.get("/metrics").text
    drift = [line for line in metrics.splitlines() if line.startswith("bspgate_unmapped_fields")]
    assert drift, "the unknown field was not counted"
    assert PHONE not in metrics, f"a phone number in a /metrics label: {drift}"


# -- serve: every line is a JSON line ----------------------------------------------------------
def _serve(config: Path, cwd: Path, stderr: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    with stderr.open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "bspgate", "serve", "--config", str(config)],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _wait_ready(base: str, process: subprocess.Popen[bytes], path: str = "/readyz") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve exited at start"
        try:
            if httpx.get(base + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not become ready")


def _config(tmp_path: Path, storage: str, port: int) -> Path:
    text = (ROOT / "config.yaml").read_text()
    text = text.replace("storage: ${BSPGATE_STORAGE:-sqlite:///bspgate.db}", f"storage: {storage}")
    text = text.replace("  port: 8080", f"  port: {port}")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


class _Proxy:
    """A TCP proxy to PostgreSQL that can be cut (the database becomes unreachable)."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return  # the proxy was cut: this end is closed below
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def start(self) -> None:
        self.thread.start()

        async def serve() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)

    def cut(self) -> None:
        async def cut() -> None:
            assert self.server is not None
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(cut(), self.loop).result(10)


@pytest.mark.skipif(not pg.POSTGRES_URL, reason=pg.SKIP_REASON)
def test_serve_logs_only_json_lines_when_postgres_goes_away(tmp_path: Path) -> None:
    """configuration.md, Logs: "Logs are JSON lines on stderr when stderr is not a terminal
    (uvicorn's own lines included)". With PostgreSQL unreachable, psycopg_pool's warnings reach
    stderr as plain multi-line text (the standard library's last-resort handler: only uvicorn's
    loggers are routed through bspgate's formatter, and its PII redaction)."""
    with pg.session_database(pg.POSTGRES_URL) as database, pg.fresh_schema(database) as dsn:
        _json_lines_when_postgres_goes_away(tmp_path, dsn)


def _json_lines_when_postgres_goes_away(tmp_path: Path, postgres_dsn: str) -> None:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(postgres_dsn)
    proxy = _Proxy(parts.port or 5432)
    proxy.start()
    dsn = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    port = free_port()
    config = _config(tmp_path, f'"{dsn}"', port)
    stderr = tmp_path / "serve.err"
    process = _serve(config, tmp_path, stderr)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process)
        proxy.cut()
        time.sleep(3)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 503  # documented
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, f"{len(not_json)} of {len(lines)} log lines are not JSON: {not_json[:4]}"


# -- serve: a normal stop writes everything ----------------------------------------------------
def test_sigterm_writes_every_buffered_line(tmp_path: Path) -> None:
    """configuration.md, Logs: "A normal stop (SIGTERM, Ctrl-C) writes everything". uvicorn
    re-raises SIGTERM once it has shut down, so the process dies by the signal before bspgate's
    atexit flush: the INFO lines of its last 0.1 s (uvicorn's own shutdown lines among them)
    are lost on every stop."""
    port = free_port()
    config = _config(tmp_path, "sqlite:///bspgate.db", port)
    stderr = tmp_path / "serve.err"
    process = _serve(config, tmp_path, stderr)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process)
        request_id = httpx.get(f"http://127.0.0.1:{port}/healthz").headers["x-request-id"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    log = stderr.read_text()
    events = [json.loads(line).get("event") for line in log.splitlines() if line.startswith("{")]
    assert "Shutting down" in events
    assert request_id in log, "the last request's access line was lost"
    assert "Application shutdown complete." in events, f"lines lost at stop; last: {events[-3:]}"
    assert any(str(e).startswith("Finished server process") for e in events), events[-3:]
