"""The receiver examples (examples/) verify real deliveries with the stock libraries."""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import ROOT, SUBSCRIBER_SECRET, fixture_bytes, make_settings
from tests.harness import RunningGateway, free_port

pytestmark = pytest.mark.e2e
EXAMPLES = ROOT / "examples"
NODE_READY = shutil.which("node") is not None and (EXAMPLES / "node" / "node_modules").is_dir()


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "the receiver exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("the receiver did not listen")


@contextmanager
def receiver(command: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = {**os.environ, "WEBHOOK_SECRET": SUBSCRIBER_SECRET}
    process = subprocess.Popen([*command, str(port)], env=env, stdout=subprocess.PIPE)
    try:
        _wait_port(port, process)
        yield process, port
    finally:
        process.terminate()
        process.communicate(timeout=10)


def _line(process: subprocess.Popen[bytes], timeout: float = 30) -> dict[str, object]:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    assert selector.select(timeout), "no event reached the receiver"
    line: dict[str, object] = orjson.loads(process.stdout.readline())
    return line


COMMANDS = [
    pytest.param([sys.executable, str(EXAMPLES / "python" / "receiver.py")], id="python"),
    pytest.param(
        ["node", str(EXAMPLES / "node" / "receiver.mjs")],
        id="node",
        marks=pytest.mark.skipif(
            not NODE_READY, reason="node or examples/node/node_modules absent"
        ),
    ),
]


@pytest.mark.parametrize("command", COMMANDS)
def test_example_receiver_verifies_a_real_delivery(command: list[str], tmp_path: Path) -> None:
    with receiver(command) as (process, port):
        url = f"http://127.0.0.1:{port}/hooks/whatsapp"
        bad = httpx.post(
            url,
            content=b"{}",
            headers={"webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,bad"},
        )
        assert bad.status_code == 401
        subscriber = {"id": "crm", "url": url, "secret": SUBSCRIBER_SECRET}
        settings = make_settings(tmp_path, subscribers=[subscriber])
        with RunningGateway(settings) as gateway:
            assert (
                gateway.post(
                    "cloud-us", fixture_bytes("cloudapi", "inbound_bsuid_only")
                ).status_code
                == 200
            )
            line = _line(process)
    assert line["type"] == "whatsapp.message.received"
    assert str(line["contact_id"]).startswith("ct_")
