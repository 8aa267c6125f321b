"""Crash safety through real processes: SIGKILL mid-burst loses no acknowledged webhook.

A real `bspgate serve` subprocess on loopback takes a burst of concurrent signed webhooks and
delivers to a real local receiver that verifies every signature with `standardwebhooks`. The
server is killed with SIGKILL in the middle of the burst and started again on the same SQLite
file: every webhook that was answered 200 must reach the receiver (at least once; the receiver
de-duplicates by `webhook-id`). SIGTERM must drain and exit cleanly, also once the server has
restarted a worker that died alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import APP_SECRET, MAPPINGS, SUBSCRIBER_SECRET, meta_signature
from tests.harness import ServerThread, free_port
from tests.payloads import text_webhook

pytestmark = pytest.mark.e2e


class Receiver:
    """Verifies each delivery's Standard Webhooks signature; remembers message ids by event id."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds before each answer: a delivery stays in flight that long
        self.entered = threading.Event()  # set when the first delivery arrives
        self.events: dict[str, str] = {}
        self.arrivals: list[tuple[str, str]] = []  # (contact BSUID, message id), in order
        self.rejected = 0
        self._lock = threading.Lock()
        self._webhook = Webhook(SUBSCRIBER_SECRET)
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        try:
            event = self._webhook.verify(body, dict(request.headers))
        except Exception:
            with self._lock:
                self.rejected += 1
            return Response(status_code=400)
        self.entered.set()
        await asyncio.sleep(self.delay)
        if "message" not in event["data"]:  # identity events (rule 6 moves a shared phone)
            return Response(status_code=204)
        with self._lock:
            self.events[request.headers["webhook-id"]] = event["data"]["message"]["id"]
            self.arrivals.append(
                (event["data"]["contact"]["bsuid"], event["data"]["message"]["id"])
            )
        return Response(status_code=204)

    def message_ids(self) -> set[str]:
        with self._lock:
            return set(self.events.values())


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    receiving = Receiver()
    with ServerThread(receiving.app) as server:
        yield receiving, f"{server.url}/hook"


def _config(tmp_path: Path, port: int, hook_url: str) -> Path:
    config = {
        "storage": f"sqlite:///{tmp_path / 'crash.db'}",
        "mappings": str(MAPPINGS),
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "api_keys": [{"name": "t", "key": "k"}],
        "channels": [
            {
                "id": "cloud-us",
                "provider": "cloudapi",
                "portfolio": "acme",
                "secrets": {"app_secret": APP_SECRET, "verify_token": "vt"},
            }
        ],
        "subscribers": [
            {
                "id": "rx",
                "url": hook_url,
                "secret": SUBSCRIBER_SECRET,
                "retry_schedule": ["1s"] * 10,
                "ordering": "per_contact",
                # messages only: the burst shares one phone across BSUIDs, so contract v1.1
                # rule 6 also emits phone_reassigned notices, which this receiver does not read
                "events": ["whatsapp.message.*"],
            }
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Gateway:
    """`bspgate serve` as a child process."""

    def __init__(self, config: Path, port: int) -> None:
        self.config, self.port = config, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bspgate",
                "serve",
                "--config",
                str(self.config),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("bspgate serve did not become ready")

    def stop(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def workers(self) -> set[int]:
        """The pids of its worker processes (multiprocessing children, whichever thread forked
        them; not the resource tracker)."""
        assert self.process is not None
        pids: set[int] = set()
        for task in Path(f"/proc/{self.process.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids |= {int(pid) for pid in (task / "children").read_text().split()}
        found = set()
        for pid in pids:
            with contextlib.suppress(OSError):
                if b"--multiprocessing-fork" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(pid)
        return found

    def ensure_stopped(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def _post(port: int, index: int) -> str | None:
    """Post message `index`; answers its message id when the gateway acknowledged it."""
    message_id = f"wamid.crash{index}"
    person = (
        9000 + index % 7
    )  # seven people, each with a phone of their own (rule 6 moves shared ones)
    payload = text_webhook(
        message_id, bsuid=f"US.{person}", phone=f"1555000{person}", timestamp=1767225600 + index
    )
    body = orjson.dumps(payload)
    headers = {"content-type": "application/json", "x-hub-signature-256": meta_signature(body)}
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/webhooks/cloud-us", content=body, headers=headers, timeout=10
        )
    except httpx.HTTPError:
        return None
    return message_id if response.status_code == 200 else None


def _wait_for(receiving: Receiver, wanted: set[str], seconds: float) -> set[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        missing = wanted - receiving.message_ids()
        if not missing:
            return set()
        time.sleep(0.1)
    return wanted - receiving.message_ids()


def test_sigkill_mid_burst_loses_no_acknowledged_webhook(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    receiving, hook_url = receiver
    port = free_port()
    gateway = Gateway(_config(tmp_path, port, hook_url), port)
    gateway.start()
    acknowledged: list[str] = []
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = [pool.submit(_post, port, i) for i in range(160)]
            while sum(f.done() for f in futures) < 60:
                time.sleep(0.01)
            gateway.stop(signal.SIGKILL)  # mid-burst: some requests are in flight
            acknowledged = [m for f in futures if (m := f.result()) is not None]
        assert 60 <= len(acknowledged) < 160
        gateway.start()  # the same SQLite file: in-flight deliveries are retried at once
        missing = _wait_for(receiving, set(acknowledged), 60)
        assert not missing, f"{len(missing)} acknowledged webhooks were never delivered"
        assert receiving.rejected == 0
    finally:
        gateway.ensure_stopped()


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    receiving, hook_url = receiver
    port = free_port()
    gateway = Gateway(_config(tmp_path, port, hook_url), port)
    gateway.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            acknowledged = {m for m in pool.map(lambda i: _post(port, i), range(40)) if m}
        assert len(acknowledged) == 40
        # uvicorn shuts down gracefully, then re-raises the signal: the exit says SIGTERM
        assert gateway.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        gateway.start()
        assert not _wait_for(receiving, acknowledged, 30)
    finally:
        gateway.ensure_stopped()


def _until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_restarted_workers_drain_on_sigterm(tmp_path: Path) -> None:
    """Workers that died alone are restarted by the server's watch thread; a SIGTERM afterwards
    still lets the delivery in flight finish and be recorded. (The kernel SIGKILLs a worker when
    the thread that forked it ends: the watch thread must outlive the workers' drain.)"""
    receiving = Receiver(delay=2.0)
    with ServerThread(receiving.app) as server:
        port = free_port()
        config = _config(tmp_path, port, f"{server.url}/hook")
        gateway = Gateway(config, port)
        gateway.start()
        try:
            assert _until(lambda: len(gateway.workers()) == 2, 20)
            first = gateway.workers()
            for pid in first:  # e.g. the OOM killer: the server starts them again
                os.kill(pid, signal.SIGKILL)
            assert _until(lambda: len(gateway.workers() - first) == 2, 20)
            message_id = _post(port, 1)
            assert message_id is not None
            assert receiving.entered.wait(30), "the delivery never started"
            # the subscriber is still answering: a graceful stop waits for it and records it
            assert gateway.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        finally:
            gateway.ensure_stopped()
        assert receiving.message_ids() == {message_id}
        with contextlib.closing(sqlite3.connect(tmp_path / "crash.db")) as db:
            states = db.execute("SELECT state, attempts FROM deliveries").fetchall()
        assert states == [("delivered", 1)], "the attempt in flight was not recorded"


def test_receiver_down_then_back_gets_everything_in_order_per_contact(tmp_path: Path) -> None:
    receiving = Receiver()
    receiver_port = free_port()  # nothing listens here yet: every delivery is refused
    port = free_port()
    gateway = Gateway(_config(tmp_path, port, f"http://127.0.0.1:{receiver_port}/hook"), port)
    gateway.start()
    try:
        acknowledged = [_post(port, i) for i in range(21)]  # 7 contacts, 3 messages each
        assert all(acknowledged)
        time.sleep(1.5)  # first attempts fail and are rescheduled
        assert receiving.message_ids() == set()
        with ServerThread(receiving.app, receiver_port):
            assert not _wait_for(receiving, set(acknowledged), 60)  # type: ignore[arg-type]
            with receiving._lock:
                arrivals = list(receiving.arrivals)
        by_contact: dict[str, list[int]] = {}
        for contact, message_id in arrivals:
            by_contact.setdefault(contact, []).append(int(message_id.removeprefix("wamid.crash")))
        assert len(by_contact) == 7
        for numbers in by_contact.values():
            firsts = list(dict.fromkeys(numbers))  # a retried delivery may arrive twice
            assert firsts == sorted(firsts), f"out of order for one contact: {numbers}"
    finally:
        gateway.ensure_stopped()
