"""Console tests: a real `bspgate serve` subprocess, a real receiver, the system Chromium.

Browser tests drive Debian's Chromium (`/usr/bin/chromium`, or `$BSPGATE_CHROMIUM`) through
Playwright for Python; Playwright never downloads a browser here. Without Chromium or Playwright
they skip, saying why, unless `BSPGATE_REQUIRE_BROWSER=1` (as `.ci/run` sets), which turns the
skip into a failure. Screenshots of every page go to `$BSPGATE_SCREENSHOTS` (default: a temp dir).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
import yaml
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.config import Settings, load_settings
from bspgate.simulate import signed_request
from tests.conftest import API_KEY, APP_SECRET, MAPPINGS, ROOT, SUBSCRIBER_SECRET, make_settings
from tests.harness import RunningGateway, free_port

CHROMIUM = os.environ.get("BSPGATE_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("BSPGATE_REQUIRE_BROWSER") == "1"
ACCESS_TOKEN = "EAAG-console-test-token-0123456789"
DEADLINE = 15.0
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def wait_until(condition: Any, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# -- the console served in-process, for HTTP tests --------------------------------------------
# A module that tests over plain HTTP overrides `gateway` with `in_process(tmp_path)`; `client`
# (below) then signs in to it, and `clock` moves its time.
CRM = {"id": "crm", "url": "http://127.0.0.1:9/hook", "secret": SUBSCRIBER_SECRET}  # no answer


class Clock:
    """The gateway's clock, moved forward by the test."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead

    def advance(self, seconds: float) -> None:
        self.ahead += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@contextlib.contextmanager
def in_process(tmp_path: Path, clock: Clock | None = None) -> Iterator[RunningGateway]:
    """A real uvicorn server on loopback with one subscriber, `crm`, and delivery off."""
    settings = make_settings(tmp_path, subscribers=[CRM])
    options = {"clock": clock} if clock is not None else {}
    with RunningGateway(settings, dispatch=False, **options) as running:
        yield running


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def signed_in(gateway: RunningGateway) -> httpx.Client:
    client = httpx.Client(base_url=gateway._server.url, follow_redirects=False, timeout=30)
    token = csrf_of(client.get("/console/login").text)
    answer = client.post("/console/login", data={"csrf": token, "key": API_KEY})
    assert answer.status_code == 303
    return client


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with contextlib.closing(signed_in(gateway)) as signed:
        yield signed


# -- the receiver --------------------------------------------------------------------------------
@dataclass
class Receiver:
    """Verifies Standard Webhooks signatures; answers 500 for event ids in `failing`."""

    failing: set[str] = field(default_factory=set)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        try:
            Webhook(SUBSCRIBER_SECRET).verify(body, dict(request.headers))
        except WebhookVerificationError:
            return Response(status_code=401)
        event = orjson.loads(body)
        with self.lock:
            if event["id"] in self.failing:
                self.refused.append(event["id"])
                return Response(status_code=500)
            self.accepted.append(event)
        return Response(status_code=200)

    def accepted_ids(self) -> list[str]:
        with self.lock:
            return [e["id"] for e in self.accepted]


@pytest.fixture(scope="session")
def receiver() -> Iterator[tuple[Receiver, str]]:
    sink = Receiver()
    app = Starlette(routes=[Route("/hook", sink.hook, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the receiver")
    yield sink, f"http://127.0.0.1:{port}/hook"
    server.should_exit = True
    thread.join(timeout=DEADLINE)


# -- bspgate serve -------------------------------------------------------------------------------
class Gateway:
    """`bspgate serve --config` in a subprocess on a free loopback port."""

    def __init__(
        self, folder: Path, receiver_url: str, mappings: Path = MAPPINGS, port: int | None = None
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "config.yaml"
        document = {
            "storage": f"sqlite:///{folder / 'gateway.db'}",
            "mappings": str(mappings),
            "server": {"host": "127.0.0.1", "port": self.port, "public_url": self.url},
            "api_keys": [{"name": "oncall", "key": API_KEY}],
            "channels": [
                {
                    "id": "cloud-us",
                    "provider": "cloudapi",
                    "portfolio": "acme",
                    "business_phone": "+15550001111",
                    "secrets": {
                        "app_secret": APP_SECRET,
                        "verify_token": "vt",
                        "access_token": ACCESS_TOKEN,
                    },
                    "settings": {"phone_number_id": "106540352242922"},
                    "service_window": "off",
                }
            ],
            "subscribers": [
                {
                    "id": "crm",
                    "url": receiver_url,
                    "secret": SUBSCRIBER_SECRET,
                    "retry_schedule": ["100ms"],
                }
            ],
        }
        self.config.write_text(yaml.safe_dump(document))
        self.settings: Settings = load_settings(self.config, env={})
        self.process: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(
            base_url=self.url, timeout=DEADLINE, headers={"authorization": f"Bearer {API_KEY}"}
        )

    def start(self) -> Gateway:
        with (self.folder / "serve.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bspgate", "serve", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, "bspgate serve exited (see serve.log)"
            try:
                return httpx.get(f"{self.url}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, "bspgate serve to answer /healthz", 30)
        return self

    def stop(self) -> None:
        self.api.close()
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _stored(self) -> tuple[int, int]:
        quarantined = self.api.get("/v1/quarantined").json()["data"]
        return len(self.events()), len(quarantined)

    def post(self, body: bytes) -> httpx.Response:
        """Post a signed webhook and wait until it is processed (events or quarantine grew)."""
        channel = self.settings.channel("cloud-us")
        assert channel is not None
        url, headers, payload = signed_request(self.settings, channel, body)
        before = self._stored()
        answer = httpx.post(url, content=payload, headers=headers, timeout=DEADLINE)
        if answer.status_code == 200:
            wait_until(lambda: self._stored() != before, "the webhook to be processed")
        return answer

    def events(self, **params: Any) -> list[dict[str, Any]]:
        answer = self.api.get("/v1/events", params={"limit": 500, **params})
        assert answer.status_code == 200, answer.text
        data: list[dict[str, Any]] = answer.json()["data"]
        return data


@pytest.fixture(scope="module")
def gateway(
    receiver: tuple[Receiver, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    running = Gateway(tmp_path_factory.mktemp("console"), receiver[1]).start()
    try:
        yield running
    finally:
        running.stop()


# -- the browser -----------------------------------------------------------------------------------
def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    """A Chromium with a fresh profile, checked for before any server starts.

    Every tab is closed at the end of its test, so no live tail holds a server's shutdown."""
    missing = browser_missing()
    if missing:
        if REQUIRE:
            pytest.fail(f"BSPGATE_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="bspgate-chromium-")
    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(DEADLINE * 1000)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    tab = browser_context.new_page()
    try:
        yield tab
    finally:
        with contextlib.suppress(Exception):
            tab.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("BSPGATE_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sign_in(page: Any, gateway: Gateway, path: str = "/console/") -> None:
    page.goto(f"{gateway.url}{path}")
    if "/console/login" in page.url:
        page.fill("#key", API_KEY)
        page.click("button[type=submit]:has-text('Sign in')")
        page.wait_for_url(f"{gateway.url}{path}*")
