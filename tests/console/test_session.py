"""Console sessions over plain HTTP: server-side records that sign-out, idleness and age end;
the `Origin` check behind a TLS proxy that forwards its own upstream address as `Host`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from bspgate.app import create_app
from bspgate.console.session import ABSOLUTE_SECONDS, SESSION_SECONDS
from tests.conftest import API_KEY, SUBSCRIBER_SECRET, make_settings
from tests.console.conftest import Clock, csrf_of, in_process, signed_in
from tests.harness import RunningGateway, ServerThread

pytestmark = [pytest.mark.e2e, pytest.mark.store]  # store: SQLite and PostgreSQL

SUBSCRIBER = {"id": "crm", "url": "http://127.0.0.1:9/hook", "secret": SUBSCRIBER_SECRET}


@pytest.fixture
def gateway(tmp_path: Path, clock: Clock) -> Iterator[RunningGateway]:
    with in_process(tmp_path, clock) as running:
        yield running


def _store(gateway: RunningGateway) -> Any:
    return gateway._server.server.config.app.state.gateway.store


def _sessions(gateway: RunningGateway) -> int:
    rows = _store(gateway).read_sync(lambda tx: tx.all("SELECT id FROM console_sessions"))
    return len(rows)


def _enabled(gateway: RunningGateway) -> bool:
    return bool(gateway.client.get("/v1/subscribers").json()["data"][0]["enabled"])


def test_sign_out_ends_every_copy_of_the_session(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    with httpx.Client(base_url=client.base_url, cookies=dict(client.cookies)) as copy:
        token = csrf_of(client.get("/console/deliveries").text)
        assert copy.get("/console/", follow_redirects=False).status_code == 200  # a working copy
        assert client.post("/console/logout", data={"csrf": token}).status_code == 303
        assert _sessions(gateway) == 0
        page = copy.get("/console/", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"].startswith("/console/login")
        disable = copy.post(
            "/console/subscribers/crm/disable", data={"csrf": token}, follow_redirects=False
        )
        assert disable.headers["location"].startswith("/console/login")
    assert _enabled(gateway)


def test_the_stored_session_id_is_not_the_cookie(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    (stored,) = _store(gateway).read_sync(lambda tx: tx.all("SELECT id FROM console_sessions"))
    assert re.fullmatch(r"[0-9a-f]{64}", stored[0])  # a SHA-256: the table signs nobody in
    assert stored[0] not in client.cookies["bspgate_console"]


def test_a_session_idle_for_eight_hours_ends(
    gateway: RunningGateway, client: httpx.Client, clock: Clock
) -> None:
    for _ in range(3):  # active every (almost) 8 hours: still signed in after 24 hours less 90 s
        clock.advance(SESSION_SECONDS - 30)
        assert client.get("/console/").status_code == 200
    clock.advance(SESSION_SECONDS + 1)
    answer = client.get("/console/")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/console/login")
    assert _sessions(gateway) == 0  # an ended session's record is deleted


def test_a_session_ends_24_hours_after_sign_in(
    gateway: RunningGateway, client: httpx.Client, clock: Clock
) -> None:
    for _ in range(3):
        clock.advance(ABSOLUTE_SECONDS / 4)
        assert client.get("/console/").status_code == 200
    clock.advance(ABSOLUTE_SECONDS / 4 + 1)  # active 6 hours ago, signed in 24 hours ago
    assert client.get("/console/").status_code == 303


def test_sign_in_purges_ended_sessions(gateway: RunningGateway, clock: Clock) -> None:
    signed_in(gateway).close()
    clock.advance(SESSION_SECONDS + 1)
    signed_in(gateway).close()
    assert _sessions(gateway) == 1


def test_sign_out_on_one_replica_ends_the_session_on_another(
    tmp_path: Path, store_backend: str
) -> None:
    if store_backend != "postgres":
        pytest.skip("replicas share a store on PostgreSQL only (SQLite serves one process)")
    settings = make_settings(tmp_path, subscribers=[SUBSCRIBER])
    with (
        RunningGateway(settings, dispatch=False) as first,
        RunningGateway(settings, dispatch=False) as second,
        closing(signed_in(first)) as client,
        httpx.Client(base_url=second._server.url, cookies=dict(client.cookies)) as other,
    ):
        assert other.get("/console/", follow_redirects=False).status_code == 200
        token = csrf_of(client.get("/console/deliveries").text)
        assert client.post("/console/logout", data={"csrf": token}).status_code == 303
        assert other.get("/console/", follow_redirects=False).status_code == 303


# -- behind a TLS proxy ----------------------------------------------------------------------------
@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[ServerThread]:
    """public_url https://gw.example.com; requests arrive with `Host: 127.0.0.1:<port>`, as
    from nginx without `proxy_set_header Host` (docs/deployment.md)."""
    settings = make_settings(tmp_path, subscribers=[SUBSCRIBER])
    assert settings.server.public_url == "https://gw.example.com"
    with ServerThread(create_app(settings, dispatch=False)) as server:
        yield server


def _sign_in_from(server: ServerThread, origin: str) -> httpx.Response:
    # the cookie is `Secure` (an https public URL): sent by hand, as the proxy forwards it
    first = httpx.get(f"{server.url}/console/login")
    cookie = first.headers["set-cookie"].split(";")[0]
    return httpx.post(
        f"{server.url}/console/login",
        data={"csrf": csrf_of(first.text), "key": API_KEY},
        headers={"cookie": cookie, "origin": origin},
    )


def test_sign_in_behind_a_proxy_accepts_the_public_url_origin(proxied: ServerThread) -> None:
    assert _sign_in_from(proxied, "https://gw.example.com").status_code == 303
    assert _sign_in_from(proxied, "https://GW.example.com:443").status_code == 303


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://gw.example.com",  # not the public URL's scheme
        "https://gw.example.com:8443",  # nor its port
        "https://gw.example.com.evil.example",
        "null",
    ],
)
def test_a_foreign_origin_is_refused_behind_a_proxy(proxied: ServerThread, origin: str) -> None:
    assert _sign_in_from(proxied, origin).status_code == 403
