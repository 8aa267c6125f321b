"""Outbound auth schemes declared in outbound.yaml: OAuth2 client credentials, request signing.

respx stands in for the provider's token endpoint and send API. A token is fetched once and
reused until it expires; a 401 drops it and the send is repeated once with a fresh token; a
second 401 is the provider's rejection (502); a token endpoint refusal is a 502 naming its host.
The client credentials travel as RFC 6749 client_secret_basic (or _post), never in logs.
"""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from bspgate.config import Channel, Secret
from bspgate.errors import MappingLoadError, SendError
from bspgate.outbound.client import deliver
from bspgate.outbound.oauth import TokenCache
from bspgate.outbound.rewrite import azure_hmac_headers, render_request
from bspgate.outbound.signing import sign_request
from bspgate.outbound.spec import OutboundSpec, load_outbound
from tests.conftest import MAPPINGS

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
TOKEN_URL = "https://auth.acme.test/oauth2/token"
SEND_URL = "https://api.acme.test/v1/messages"
OUTBOUND = """
provider: acme
request:
  url: https://api.acme.test/v1/messages
secrets: [key_id, key_secret]
auth:
  scheme: oauth2_client_credentials
  token_url: ${settings.auth_base}/oauth2/token
  client_id: key_id
  client_secret: key_secret
  scope: messages:send
  auth_method: AUTH_METHOD
settings:
  auth_base: https://auth.acme.test
types:
  text:
    body: {text: "${text.body}"}
answer:
  message_id: id
"""
CHANNEL = Channel(
    id="acme-1",
    provider="acme",
    portfolio="acme",
    secrets={"key_id": Secret("client-1"), "key_secret": Secret("s3cr3t-key")},
)


def spec_for(tmp_path: Path, method: str = "client_secret_basic") -> OutboundSpec:
    folder = tmp_path / "acme"
    folder.mkdir(exist_ok=True)
    (folder / "outbound.yaml").write_text(OUTBOUND.replace("AUTH_METHOD", method))
    return load_outbound(tmp_path, "acme")


def request_for(spec: OutboundSpec) -> object:
    context = {"text": {"body": "hi"}, "settings": dict(spec.defaults), "send": {"id": "snd_1"}}
    return render_request(spec, spec.types["text"], context, CHANNEL, NOW)


def token_answer(token: str, expires_in: int = 3600) -> httpx.Response:
    body = {"access_token": token, "token_type": "bearer", "expires_in": expires_in}
    return httpx.Response(200, json=body)


async def test_token_is_fetched_once_and_reused(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    tokens = TokenCache()
    with respx.mock(assert_all_called=True) as mock:
        token_route = mock.post(TOKEN_URL).mock(return_value=token_answer("tok-1"))
        send_route = mock.post(SEND_URL).mock(return_value=httpx.Response(200, json={"id": "m1"}))
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                answer = await deliver(client, spec, request_for(spec), tokens=tokens)  # type: ignore[arg-type]
                assert answer.message_id == "m1"
    assert token_route.call_count == 1
    assert send_route.call_count == 3
    sent = send_route.calls[0].request
    assert sent.headers["authorization"] == "Bearer tok-1"
    asked = token_route.calls[0].request
    expected = base64.b64encode(b"client-1:s3cr3t-key").decode()
    assert asked.headers["authorization"] == f"Basic {expected}"
    form = parse_qs(asked.content.decode())
    assert form == {"grant_type": ["client_credentials"], "scope": ["messages:send"]}


async def test_client_secret_post_sends_the_credentials_in_the_body(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "client_secret_post")
    with respx.mock() as mock:
        token_route = mock.post(TOKEN_URL).mock(return_value=token_answer("tok-1"))
        mock.post(SEND_URL).mock(return_value=httpx.Response(200, json={"id": "m1"}))
        async with httpx.AsyncClient() as client:
            await deliver(client, spec, request_for(spec), tokens=TokenCache())  # type: ignore[arg-type]
    form = parse_qs(token_route.calls[0].request.content.decode())
    assert form["client_id"] == ["client-1"]
    assert form["client_secret"] == ["s3cr3t-key"]
    assert "authorization" not in token_route.calls[0].request.headers


async def test_an_expiring_token_is_replaced(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    tokens = TokenCache()
    with respx.mock() as mock:
        token_route = mock.post(TOKEN_URL).mock(
            side_effect=[token_answer("tok-1", expires_in=30), token_answer("tok-2")]
        )
        send_route = mock.post(SEND_URL).mock(return_value=httpx.Response(200, json={"id": "m"}))
        async with httpx.AsyncClient() as client:
            await deliver(client, spec, request_for(spec), tokens=tokens)  # type: ignore[arg-type]
            await deliver(client, spec, request_for(spec), tokens=tokens)  # type: ignore[arg-type]
    # 30 s is inside the 60 s leeway: the second send does not use a token about to expire
    assert token_route.call_count == 2
    assert [c.request.headers["authorization"] for c in send_route.calls] == [
        "Bearer tok-1",
        "Bearer tok-2",
    ]


async def test_a_401_refreshes_the_token_once_and_resends(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    tokens = TokenCache()
    with respx.mock() as mock:
        mock.post(TOKEN_URL).mock(side_effect=[token_answer("revoked"), token_answer("fresh")])
        send_route = mock.post(SEND_URL).mock(
            side_effect=[httpx.Response(401), httpx.Response(200, json={"id": "m2"})]
        )
        async with httpx.AsyncClient() as client:
            answer = await deliver(client, spec, request_for(spec), tokens=tokens)  # type: ignore[arg-type]
    assert answer.message_id == "m2"
    assert [c.request.headers["authorization"] for c in send_route.calls] == [
        "Bearer revoked",
        "Bearer fresh",
    ]


async def test_a_second_401_is_the_providers_rejection(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    with respx.mock() as mock:
        token_route = mock.post(TOKEN_URL).mock(return_value=token_answer("tok"))
        send_route = mock.post(SEND_URL).mock(return_value=httpx.Response(401))
        async with httpx.AsyncClient() as client:
            with pytest.raises(SendError) as info:
                await deliver(client, spec, request_for(spec), tokens=TokenCache())  # type: ignore[arg-type]
    assert info.value.status == 502
    assert info.value.extra["provider_status"] == 401
    assert token_route.call_count == 2
    assert send_route.call_count == 2


async def test_a_refused_token_request_is_a_502_naming_the_host(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(
            return_value=httpx.Response(401, json={"error": "invalid_client"})
        )
        send_route = mock.post(SEND_URL)
        async with httpx.AsyncClient() as client:
            with pytest.raises(SendError) as info:
                await deliver(client, spec, request_for(spec), tokens=TokenCache())  # type: ignore[arg-type]
    assert info.value.status == 502
    assert "auth.acme.test" in info.value.detail
    assert "invalid_client" in info.value.detail
    assert "s3cr3t" not in info.value.detail
    assert not send_route.called


def test_dry_run_shows_no_token_and_masks_the_header(tmp_path: Path) -> None:
    request = request_for(spec_for(tmp_path))
    masked = request.masked()  # type: ignore[attr-defined]
    assert masked["headers"]["Authorization"].endswith("****")
    assert "s3cr3t-key" not in str(masked)


def test_azure_request_signing_declared_as_data_matches_the_independent_vector() -> None:
    # The vector of test_outbound_api (computed with openssl from Azure's documented scheme):
    # mappings/azure_acs/outbound.yaml declares the same signing with hmac_request.
    spec = load_outbound(MAPPINGS, "azure_acs")
    assert spec.auth["scheme"] == "hmac_request"
    key = "YXp1cmUtYWNjZXNzLWtleS1mb3ItdGVzdHMtMDAwMQ=="
    url = "https://acme.communication.azure.test/messages/notifications:send?api-version=2024-08-30"
    headers = sign_request(spec.auth, key, "POST", url, {}, b'{"kind":"text"}', NOW)
    assert headers["x-ms-date"] == "Fri, 20 Nov 2026 12:00:00 GMT"
    assert headers["x-ms-content-sha256"] == "Vg7bdTRz5Tj12rXWlH6Pfjtv4UmPMJYSy6e9tiGfCyw="
    assert headers["Authorization"] == (
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
        "&Signature=u2yo9q4KtxqCvqLj6gQa6gVZ+68vv4S7f7fgjVG6CVU="
    )
    assert headers == azure_hmac_headers(key, "POST", url, b'{"kind":"text"}', NOW)


def test_unknown_request_signing_parts_are_load_errors(tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    folder.mkdir()
    text = OUTBOUND.replace("AUTH_METHOD", "client_secret_basic")
    start = text.index("auth:")
    end = text.index("settings:")
    bad = "auth:\n  scheme: hmac_request\n  secret: key\n  message: [method, verb]\n"
    (folder / "outbound.yaml").write_text(text[:start] + bad + text[end:])
    with pytest.raises(MappingLoadError, match=r"auth.message\[1\]: unknown message part 'verb'"):
        load_outbound(tmp_path, "acme")


async def test_a_send_never_goes_out_with_an_empty_credential(tmp_path: Path) -> None:
    # a form whose auth secret escaped the load check (`secrets:` left out): the empty token is
    # a missing secret, refused before any request, and a dry run does not mask it as `****`
    spec = dataclasses.replace(
        load_outbound(MAPPINGS, "cloudapi"), secrets=(), defaults={"base_url": "https://a.test"}
    )
    channel = Channel(id="cloud-1", provider="cloudapi", portfolio="acme", secrets={})
    context = {"text": {"body": "hi"}, "settings": {"base_url": "https://a.test",
               "phone_number_id": "1", "api_version": "v23.0"}, "to": {"phone": "+15551234567"},
               "send": {"id": "snd_1"}}  # fmt: skip
    request = render_request(spec, spec.types["text"], context, channel, NOW)
    assert request.missing_secrets == ("access_token",)
    assert request.masked()["headers"]["Authorization"] == "Bearer (empty)"
    with respx.mock(assert_all_called=False) as router:
        route = router.post(url__startswith="https://a.test")
        with pytest.raises(SendError) as caught:
            await deliver(httpx.AsyncClient(), spec, request)
    assert caught.value.code == "channel_not_configured"
    assert not route.called
