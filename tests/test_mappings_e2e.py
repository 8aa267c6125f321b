"""Every provider folder tests itself end to end through a real gateway on loopback.

Nothing here names a provider. For every folder under mappings/: each inbound golden case is
posted to a real uvicorn gateway exactly as the provider would send it (`bspgate.simulate`, so
signed by the folder's own `inbound.verify` declaration) and the canonical events it must give
are read back from `GET /v1/events`; each send case (`cases/send_*.yaml`) goes through
`POST /v1/messages` to a local stand-in of the provider API (a second uvicorn server), which
answers with the case's `answer` and must receive the request the case expects. Per folder, a
request without its credentials, one signed with other secrets and (where the declaration covers
the body) one with other bytes are refused with 401.

Each inbound case gets its own channel and portfolio (the folder's test channel,
`cases/_channel.yaml`), so identity state never leaks between cases; fields that depend on the
channel, the server or the receive time (`id`, `source`, `dataschema`, `data.channel.id/portfolio`,
a pinned `received_at`) are taken from the answer, as in the offline run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.config import Secret
from bspgate.mapping.cases import diff, load_case
from bspgate.mapping.loader import iter_case_files, load_mapping, mapping_names
from bspgate.mapping.send_cases import (
    SentRequest,
    compare_request,
    is_send_case,
    load_channel,
    load_send_case,
    tokens,
)
from bspgate.outbound.spec import load_outbound
from bspgate.simulate import signed_request
from tests.conftest import MAPPINGS, make_settings
from tests.harness import RunningGateway, ServerThread

pytestmark = [pytest.mark.e2e]
DEADLINE = 10.0
TOKEN = "stand-in-access-token"
VARIABLE = (
    ("id",),
    ("dataschema",),  # the API adds it from the server's public URL
    ("source",),
    ("subject",),
    ("data", "channel", "id"),
    ("data", "channel", "portfolio"),
    ("data", "contact", "id"),
    ("data", "raw_id"),
)


class StandIn:
    """The provider API: records every request, answers with the case's `answer`."""

    def __init__(self) -> None:
        self.received: list[SentRequest] = []
        self.token_requests: list[dict[str, str]] = []
        self.answer: dict[str, Any] = {"status": 200, "body": {}}
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST", "PUT"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        if b"grant_type=client_credentials" in body:  # an OAuth2 token endpoint (RFC 6749 4.4)
            self.token_requests.append(headers)
            token = {"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600}
            return Response(orjson.dumps(token), media_type="application/json")
        self.received.append(SentRequest(request.method, str(request.url), headers, body))
        answer = self.answer
        return Response(
            orjson.dumps(answer.get("body", {})),
            status_code=int(answer.get("status", 200)),
            media_type="application/json",
        )


def inbound_cases() -> list[tuple[str, Path]]:
    found = []
    for provider in mapping_names(MAPPINGS):
        for path in iter_case_files(MAPPINGS, provider):
            if not is_send_case(path) and "input" in load_case(path):
                found.append((provider, path))
    return found


def send_cases() -> list[tuple[str, Path]]:
    return [
        (provider, path)
        for provider in mapping_names(MAPPINGS)
        for path in iter_case_files(MAPPINGS, provider)
        if is_send_case(path)
    ]


INBOUND = inbound_cases()
SENDS = send_cases()


def case_channel(provider: str, path: Path, base: str) -> dict[str, Any]:
    channel = load_channel(MAPPINGS, provider, base)
    overrides = load_case(path).get("channel") or {}
    name = f"{provider}--{path.stem}".replace("_", "-")
    entry = {**channel, "id": name, "portfolio": name}
    entry.pop("business_phone", None)  # as the offline run: only the case's own, if any
    if overrides.get("business_phone"):
        entry["business_phone"] = overrides["business_phone"]
    return entry


@pytest.fixture(scope="module")
def stand_in() -> Iterator[tuple[StandIn, str]]:
    fake = StandIn()
    with ServerThread(fake.app) as server:
        yield fake, server.url


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, stand_in: tuple[StandIn, str]
) -> Iterator[RunningGateway]:
    _fake, base = stand_in
    providers = mapping_names(MAPPINGS)
    channels = [load_channel(MAPPINGS, p, base) for p in providers]
    channels += [case_channel(p, path, base) for p, path in INBOUND]
    settings = make_settings(tmp_path_factory.mktemp("mappings-e2e"), channels=channels)
    with RunningGateway(settings, dispatch=False) as running:
        yield running


def _tail(gateway: RunningGateway) -> str | None:
    page = gateway.client.get("/v1/events", params={"limit": 1}).json()
    return page["tail_cursor"]


def _events_after(gateway: RunningGateway, cursor: str | None, want: int) -> list[Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        params: dict[str, Any] = {"limit": 500, **({"after": cursor} if cursor else {})}
        data = gateway.client.get("/v1/events", params=params).json()["data"]
        if cursor is None:
            data = list(reversed(data))
        if len(data) >= want or time.monotonic() > deadline:
            return list(data)
        time.sleep(0.05)


def _pinned(case: dict[str, Any]) -> str | None:
    received_at = case.get("received_at")
    if not isinstance(received_at, str):
        return None
    moment = datetime.fromisoformat(received_at.replace("Z", "+00:00"))
    return moment.isoformat().replace("+00:00", "Z")


def _take_actual(expected: Any, actual: Any, pinned: str | None, path: tuple[Any, ...] = ()) -> Any:
    """`expected` with the per-run fields (and values equal to a pinned receive time) filled in."""
    if path in VARIABLE and actual is not None:
        return actual
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = {k: _take_actual(v, actual.get(k), pinned, (*path, k)) for k, v in expected.items()}
        for variable in VARIABLE:
            if variable[:-1] == path and variable[-1] in actual and variable[-1] not in out:
                out[variable[-1]] = actual[variable[-1]]
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            _take_actual(e, a, pinned, (*path, i))
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
        ]
    if pinned is not None and isinstance(expected, str) and expected.startswith(pinned[:19]):
        return actual
    return expected


INBOUND_PARAMS = [
    pytest.param(
        p,
        path,
        id=f"{p}/{path.stem}",
    )
    for p, path in INBOUND
]


@pytest.mark.parametrize(("provider", "path"), INBOUND_PARAMS)
def test_inbound_case_through_a_real_server(
    gateway: RunningGateway, provider: str, path: Path
) -> None:
    case = load_case(path)
    channel_id = case_channel(provider, path, "")["id"]
    cursor = _tail(gateway)
    response = gateway.post(channel_id, orjson.dumps(case["input"]))
    assert response.status_code == 200, response.text
    if "quarantine" in case["expect"]:
        # answered 200 (stored, or a handshake); it may be quarantined beside events it delivers
        return
    expected = case["expect"].get("events") or []
    actual = _events_after(gateway, cursor, len(expected))
    assert len(actual) == len(expected), [e["type"] for e in actual]
    pinned = _pinned(case)
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        filled = _take_actual(want, got, pinned)
        # envelope extensions the server adds per request (traceparent, dataschema): every
        # attribute the case pins is compared, others the server adds are its own
        filled.update({k: v for k, v in got.items() if k not in filled and k != "data"})
        assert diff(filled, got, f"/events/{index}") is None, diff(filled, got)


@pytest.mark.parametrize(("provider", "path"), SENDS, ids=[f"{p}/{path.stem}" for p, path in SENDS])
def test_send_case_reaches_the_provider_stand_in(
    gateway: RunningGateway, stand_in: tuple[StandIn, str], provider: str, path: Path
) -> None:
    fake, _base = stand_in
    case = load_send_case(path)
    fake.answer = case.get("answer") or {"status": 200, "body": {}}
    fake.received.clear()
    response = gateway.client.post(
        "/v1/messages", json={**case["send"], "channel": f"{provider}-test"}
    )
    refused = case["expect"].get("refused")
    if refused:
        assert response.status_code == 422, response.text
        assert response.json()["code"] == refused
        assert fake.received == []
        return
    assert response.status_code == 202, response.text
    answer = response.json()
    assert len(fake.received) == 1
    values = tokens(answer["id"], gateway.settings.server.public_url)
    problem = compare_request(case["expect"].get("request") or {}, fake.received[0], values)
    assert problem is None, problem
    if "message_id" in case["expect"]:
        assert answer["provider_message_id"] == case["expect"]["message_id"]
    auth = load_outbound(MAPPINGS, provider).auth
    if auth.get("scheme") == "oauth2_client_credentials":
        # the bearer token is the one the token endpoint issued, fetched with the channel's key
        assert fake.received[0].headers["authorization"] == f"Bearer {TOKEN}"
        assert fake.token_requests, "no token was requested"


def first_inbound(provider: str) -> Path:
    return next(path for p, path in INBOUND if p == provider)


PROVIDERS = sorted({p for p, _path in INBOUND})


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unsigned_forged_and_tampered_requests_are_refused(
    gateway: RunningGateway, provider: str
) -> None:
    path = first_inbound(provider)
    channel_id = case_channel(provider, path, "")["id"]
    channel = gateway.settings.channel(channel_id)
    assert channel is not None
    body_in = orjson.dumps(load_case(path)["input"])
    url, headers, body = signed_request(gateway.settings, channel, body_in)
    cursor = _tail(gateway)
    # without the credentials the declaration adds (headers, or Event Grid's ?code= query)
    bare = {k: v for k, v in headers.items() if k.lower() in ("content-type", "aeg-event-type")}
    response = gateway.client.post(url.split("?", 1)[0], content=body, headers=bare)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_signature"
    # signed with secrets the gateway does not hold
    forged = dataclasses.replace(
        channel, secrets={k: Secret("forged-" + v.reveal()) for k, v in channel.secrets.items()}
    )
    url_f, headers_f, body_f = signed_request(gateway.settings, forged, body_in)
    assert gateway.client.post(url_f, content=body_f, headers=headers_f).status_code == 401
    # the same credentials over other bytes: refused wherever the declaration covers the body
    spec = load_mapping(MAPPINGS, provider)
    binds_body = any(
        e["scheme"] in ("hmac", "jwt") and channel.secret(e["secret"]) for e in spec.verify
    )
    is_form = headers["content-type"].startswith("application/x-www-form-urlencoded")
    tampered = body + (b"&Tampered=1" if is_form else b" ")
    status = gateway.client.post(url, content=tampered, headers=headers).status_code
    assert status == (401 if binds_body else 200)
    if binds_body:
        assert _events_after(gateway, cursor, 0) == []
