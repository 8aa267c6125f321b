"""Run the real `bspgate` console script in other folders, and a real server in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import ROOT
from tests.harness import free_port

BSPGATE = str(Path(sys.executable).parent / "bspgate")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BSPGATE_", "META_"))}
    env.pop("BSPGATE_CONFIG", None)
    env.update(extra)
    return env


def bspgate(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BSPGATE, *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(folder: Path, **overrides: Any) -> Path:
    """A config in `folder` with one Cloud API channel (like the shipped one, trimmed)."""
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "storage": "sqlite:///data/gw.db",
        "api_keys": [{"name": "crm", "key": "test-api-key"}],
        "channels": [
            {
                "id": "cloud-us",
                "provider": "cloudapi",
                "portfolio": "acme",
                "business_phone": "+15550001111",
                "secrets": {"app_secret": "test-app-secret", "verify_token": "vt"},
            }
        ],
    }
    config.update(overrides)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Served:
    """A running `bspgate serve`: its process, base URL and (after it stopped) its stderr."""

    def __init__(self, process: subprocess.Popen[str], base: str) -> None:
        self.process = process
        self.base = base
        self.stderr = ""


@contextmanager
def serving(config: Path, *extra: str, cwd: Path) -> Iterator[Served]:
    """`bspgate serve --config config --port N` in a subprocess (stopped on exit)."""
    port = free_port()
    process = subprocess.Popen(
        [BSPGATE, "serve", "--config", str(config), "--port", str(port), *extra],
        cwd=cwd,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    served = Served(process, base)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {process.communicate()[1]}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("serve did not start")
            time.sleep(0.1)
        yield served
    finally:
        process.terminate()
        try:
            _out, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _out, err = process.communicate()
        served.stderr = err


FIXTURE = ROOT / "tests" / "fixtures" / "cloudapi" / "inbound_bsuid_only.json"
