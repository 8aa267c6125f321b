"""Shared plumbing of the benchmarks: servers as child processes, wrk, signed Cloud API bodies.

Everything runs on loopback. Servers are child processes (uvicorn with httptools + uvloop) so the
load generator, the server and the benchmark driver never share an interpreter; each is stopped
(SIGTERM, then SIGKILL) when its context exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import yaml
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
# benchmark-only secrets of throwaway local servers
APP_SECRET = "bench-app-secret"  # noqa: S105
SUBSCRIBER_SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # noqa: S105
API_KEY = "bench-api-key"
PYTHON = sys.executable

# A Cloud API text message webhook of about 2 KB (the size performance.md measured with), as a
# printf format shared by Python and wrk's Lua: %d the message number, %05d the contact number
# (four times: the contact's BSUID and phone, in `contacts` and in the message, as Meta sends a
# user who has no username).
BODY_FORMAT = json.dumps(
    {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550001111",
                                "phone_number_id": "106540352242922",
                            },
                            "contacts": [
                                {
                                    "profile": {"name": "Sheena Nelson"},
                                    "wa_id": "1650555%05d",
                                    "user_id": "US.13491208655%05d",
                                }
                            ],
                            "messages": [
                                {
                                    "from": "1650555%05d",
                                    "from_user_id": "US.13491208655%05d",
                                    "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAz%d",
                                    "timestamp": "1767225600",
                                    "type": "text",
                                    "text": {"body": "Does it come in another color? " * 40},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    },
    separators=(",", ":"),
)


def body(n: int, contacts: int = 10_000, contact_base: int = 0) -> bytes:
    """The `n`th distinct webhook body (message `n`, one of `contacts` contacts from the base)."""
    c = contact_base + n % contacts
    return (BODY_FORMAT % (c, c, c, c, n)).encode()


def signature(payload: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), payload, hashlib.sha256).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    url: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def child(
    command: Sequence[str], ready_url: str, env: dict[str, str] | None = None
) -> Iterator[int]:
    """Run `command`; yields its pid once `ready_url` answers 200; stops it on exit."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    process = subprocess.Popen(
        list(command), cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=log
    )
    try:
        wait_for(ready_url, process=process)
        yield process.pid
    except BaseException:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-4000:])
        raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)
        log.close()


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gateway_config(
    folder: Path, storage: str, port: int, subscribers: list[dict[str, Any]]
) -> Path:
    """A bspgate config.yaml for one Cloud API channel, written into `folder`."""
    config = {
        "storage": storage,
        "mappings": str(ROOT / "mappings"),
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "api_keys": [{"name": "bench", "key": API_KEY}],
        "channels": [
            {
                "id": "cloud-us",
                "provider": "cloudapi",
                "portfolio": "acme",
                "business_phone": "+15550001111",
                "secrets": {"app_secret": APP_SECRET, "verify_token": "vt"},
            }
        ],
        "subscribers": subscribers,
    }
    path = folder / f"config-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    """The subscriber of every benchmark: `bench/receiver.py` in its own process; yields its URL."""
    port = free_port()
    command = [
        PYTHON, "-m", "uvicorn", "bench.receiver:app", "--port", str(port), "--loop", "uvloop",
        "--http", "httptools", "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with child(command, f"http://127.0.0.1:{port}/readyz"):
        yield f"http://127.0.0.1:{port}/hook"


def subscriber(url: str) -> dict[str, Any]:
    """One subscriber of everything, as a config entry."""
    return {"id": "crm", "url": url, "secret": SUBSCRIBER_SECRET}


@contextlib.contextmanager
def bare_server(folder: Path, postgres: str | None = None) -> Iterator[tuple[str, int]]:
    """The bare durable route (`bench/bare.py`): SQLite, or PostgreSQL when a URL is given."""
    port = free_port()
    command = [
        PYTHON, "-m", "uvicorn", "bench.bare:app", "--port", str(port), "--loop", "uvloop",
        "--http", "httptools", "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    env = {"BARE_PG": postgres} if postgres else {"BARE_DB": str(folder / f"bare-{port}.db")}
    with child(command, f"http://127.0.0.1:{port}/readyz", env) as pid:
        yield f"http://127.0.0.1:{port}", pid


@contextlib.contextmanager
def bspgate_serve(config: Path, port: int) -> Iterator[int]:
    """`bspgate serve` as users run it (info logs, to a file); yields the pid."""
    command = [PYTHON, "-m", "bspgate", "serve", "--config", str(config), "--log-level", "info"]
    with child(command, f"http://127.0.0.1:{port}/readyz") as pid:
        yield pid


@contextlib.contextmanager
def postgres_database(url: str, suffix: str = "") -> Iterator[str]:
    """A throwaway database on the server `url` names (dropped on exit); yields its URL."""
    name = f"bspgate_bench_{os.getpid()}{suffix}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# -- wrk ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int

    def row(self) -> str:
        return (
            f"{self.rps:9,.0f} req/s  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms  "
            f"({self.requests:,} requests, {self.errors} errors)"
        )


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


LUA = r"""
-- Generated by bench/common.py: each request is a distinct signed Cloud API webhook.
local fmt = [==[%(fmt)s]==]
local sigs = {%(sigs)s}
local offset = %(offset)d
local contacts = %(contacts)d
local contact_base = %(contact_base)d
local counter = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  nthreads = %(threads)d
end
function request()
  local n = tid + counter * nthreads
  counter = counter + 1
  local i = n %% #sigs
  local m = offset + i
  local c = contact_base + m %% contacts
  local payload = string.format(fmt, c, c, c, c, m)
  return wrk.format("POST", "/webhooks/cloud-us",
    {["content-type"] = "application/json", ["x-hub-signature-256"] = sigs[i + 1]}, payload)
end
"""


def wrk_script(
    folder: Path,
    count: int,
    offset: int,
    threads: int,
    contacts: int = 10_000,
    contact_base: int = 0,
) -> Path:
    """A Lua script for `count` distinct signed bodies numbered from `offset`.

    Contacts are `contact_base` .. `contact_base + contacts - 1`: runs that must compare like with
    like (first messages from new contacts vs repeat messages) choose their own base.
    """
    sigs = ",".join(
        f'"{signature(body(offset + i, contacts, contact_base))}"' for i in range(count)
    )
    path = folder / f"wrk-{offset}.lua"
    path.write_text(
        LUA
        % {
            "fmt": BODY_FORMAT,
            "sigs": sigs,
            "offset": offset,
            "contacts": contacts,
            "contact_base": contact_base,
            "threads": threads,
        }
    )
    return path


def run_wrk(
    url: str,
    script: Path,
    seconds: float,
    connections: int = 64,
    threads: int = 2,
    timeout: float = 2,
) -> WrkResult:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout:g}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return WrkResult(rps, p50, p99, requests, errors)


def median_result(results: list[WrkResult]) -> WrkResult:
    return WrkResult(
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.requests for r in results),
        sum(r.errors for r in results),
    )


def verdict(ratio: float, target: float, higher_is_better: bool = True) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    return "meets" if ok else "MISSES"
