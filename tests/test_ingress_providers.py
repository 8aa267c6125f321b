"""Provider behaviours through the ASGI app over SQLite that a golden case cannot express.

Every folder's cases go through a real server in test_mappings_e2e.py (with the 401s for
missing, forged and tampered credentials); here: retried webhooks without provider ids, Twilio's
receive time and wrong-URL signatures, Connectly's text/plain bodies. Ingesting must log
no phone number and no message text at INFO. Azure's Event Grid handshakes are answered.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from structlog.testing import capture_logs

from bspgate.app import create_app
from bspgate.config import Settings
from bspgate.mapping.loader import load_mapping
from bspgate.simulate import signed_request
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, fixture_bytes, make_settings

TWILIO_TOKEN = "twilio-auth-token"
CHANNELS: list[dict[str, Any]] = [
    {
        "id": "twilio-us",
        "provider": "twilio",
        "portfolio": "acme",
        "business_phone": "+15550001111",
        "secrets": {"auth_token": TWILIO_TOKEN, "account_sid": "AC0"},
    },
    {
        "id": "infobip-us",
        "provider": "infobip",
        "portfolio": "acme",
        "business_phone": "+15550001111",
        "secrets": {"webhook_basic_auth": "infobip:pa55"},
    },
    {
        "id": "infobip-hmac",
        "provider": "infobip",
        "portfolio": "acme",
        "business_phone": "+15550001111",
        "secrets": {"webhook_secret": "infobip-hmac-key"},
    },
    {
        "id": "acs-us",
        "provider": "azure_acs",
        "portfolio": "acme",
        "business_phone": "+15550001111",
        "secrets": {"webhook_secret": "eg-secret"},
    },
    {
        "id": "connectly-us",
        "provider": "connectly",
        "portfolio": "acme",
        "business_phone": "+15550001111",
        "secrets": {"webhook_secret": "cn-secret"},
    },
    {
        "id": "d360-us",
        "provider": "dialog360",
        "portfolio": "acme",
        "business_phone": "+15550001111",
        "secrets": {"webhook_secret": "d360-header-secret", "partner_secret": "d360-platform"},
    },
]

# One fixture per channel for the log test.
SAMPLES = [
    ("twilio-us", "twilio", "inbound_text"),
    ("infobip-us", "infobip", "inbound_text"),
    ("infobip-hmac", "infobip", "inbound_text"),
    ("acs-us", "azure_acs", "inbound_text"),
    ("connectly-us", "connectly", "inbound_text"),
    ("d360-us", "dialog360", "inbound_text"),
]
PHONES = ("15551234567", "5551234567")
TEXTS = ("Does it come in another color?", "broken part", "Hi")


_load_mapping = cache(load_mapping)


@pytest.fixture(autouse=True)
def _compile_mappings_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Compiled mappings are frozen and the same for every test: parse the YAML once per run,
    # not once per app and per signed request (most of each test's time otherwise).
    monkeypatch.setattr("bspgate.stage.load_mapping", _load_mapping)
    monkeypatch.setattr("bspgate.simulate.load_mapping", _load_mapping)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, channels=CHANNELS)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, dispatch=False)) as test_client:
        yield test_client


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def signed(settings: Settings, channel_id: str, body: bytes) -> tuple[str, dict[str, str], bytes]:
    channel = settings.channel(channel_id)
    assert channel is not None
    return signed_request(settings, channel, body)


def post(client: TestClient, url: str, headers: dict[str, str], body: bytes) -> Any:
    return client.post(path_of(url), content=body, headers=headers)


def events(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/v1/events?limit=500", headers={"authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_retried_webhook_without_provider_ids_is_one_event(
    client: TestClient, settings: Settings
) -> None:
    # Twilio carries no event time and Connectly no message id: a retry must still dedupe.
    for channel_id, provider, name in [
        ("twilio-us", "twilio", "inbound_text"),
        ("connectly-us", "connectly", "inbound_text"),
    ]:
        url, headers, body = signed(settings, channel_id, fixture_bytes(provider, name))
        assert post(client, url, headers, body).status_code == 200
        assert post(client, url, headers, body).status_code == 200
    assert len(events(client)) == 2


def test_twilio_event_time_is_the_receive_time(client: TestClient, settings: Settings) -> None:
    url, headers, body = signed(settings, "twilio-us", fixture_bytes("twilio", "inbound_text"))
    assert post(client, url, headers, body).status_code == 200
    (event,) = events(client)
    assert event["time"] == event["data"]["message"]["timestamp"]
    assert event["time"].endswith("Z")


def test_connectly_text_plain_body_is_read_as_json(client: TestClient, settings: Settings) -> None:
    url, headers, body = signed(
        settings, "connectly-us", fixture_bytes("connectly", "inbound_text")
    )
    headers["content-type"] = "text/plain; charset=utf-8"  # what Connectly really sends
    assert post(client, url, headers, body).status_code == 200
    assert len(events(client)) == 1


def test_twilio_signature_for_another_url_is_401(client: TestClient, settings: Settings) -> None:
    # Twilio signed the URL it was configured with; the gateway's public_url differs.
    elsewhere = dataclasses.replace(
        settings, server=dataclasses.replace(settings.server, public_url="https://old.example.com")
    )
    url, headers, body = signed(elsewhere, "twilio-us", fixture_bytes("twilio", "inbound_text"))
    response = post(client, url, headers, body)
    assert response.status_code == 401
    assert "public_url" in response.json()["detail"]


def test_twilio_signature_over_a_changed_form_field_is_401(
    client: TestClient, settings: Settings
) -> None:
    url, headers, body = signed(settings, "twilio-us", fixture_bytes("twilio", "inbound_text"))
    response = post(client, url, headers, body.replace(b"Body=Does", b"Body=Did"))
    assert response.status_code == 401


# -- Azure Event Grid handshakes ----------------------------------------------------------------
def test_eventgrid_subscription_validation_is_answered(
    client: TestClient, settings: Settings
) -> None:
    body = fixture_bytes("azure_acs", "subscription_validation")
    url, headers, body = signed(settings, "acs-us", body)
    assert headers["aeg-event-type"] == "SubscriptionValidation"
    response = post(client, url, headers, body)
    assert response.status_code == 200
    expected = orjson.loads(fixture_bytes("azure_acs", "subscription_validation_response"))
    assert response.json() == expected
    assert events(client) == []


def test_eventgrid_validation_batched_with_real_events_answers_and_ingests(
    client: TestClient, settings: Settings
) -> None:
    # v1.1: the handshake is answered AND the real events of the batch are ingested
    validation = orjson.loads(fixture_bytes("azure_acs", "subscription_validation"))
    received = orjson.loads(fixture_bytes("azure_acs", "inbound_text"))
    batch = [*validation, *(received if isinstance(received, list) else [received])]
    url, headers, body = signed(settings, "acs-us", orjson.dumps(batch))
    response = post(client, url, headers, body)
    assert response.status_code == 200
    expected = orjson.loads(fixture_bytes("azure_acs", "subscription_validation_response"))
    assert response.json() == expected
    assert response.headers["bspgate-raw-id"].startswith("raw_")
    found = events(client)
    assert [e["type"] for e in found] == ["whatsapp.message.received"]
    retried = post(client, url, headers, body)  # Event Grid retries: answered again, no new event
    assert retried.json() == expected
    assert len(events(client)) == 1


def test_eventgrid_request_labelled_validation_without_one_ingests_its_events(
    client: TestClient, settings: Settings
) -> None:
    # the body decides: refusing it (400) would refuse its real events, retried then dropped
    url, headers, body = signed(settings, "acs-us", fixture_bytes("azure_acs", "inbound_text"))
    response = post(client, url, {**headers, "aeg-event-type": "SubscriptionValidation"}, body)
    assert response.status_code == 200
    assert response.headers["bspgate-raw-id"].startswith("raw_")
    assert [e["type"] for e in events(client)] == ["whatsapp.message.received"]


def test_eventgrid_validation_event_without_a_code_is_400(
    client: TestClient, settings: Settings
) -> None:
    validation = orjson.loads(fixture_bytes("azure_acs", "subscription_validation"))
    del validation[0]["data"]["validationCode"]
    url, headers, body = signed(settings, "acs-us", orjson.dumps(validation))
    response = post(client, url, headers, body)
    assert response.status_code == 400
    assert response.json()["type"].endswith("invalid_handshake")
    assert events(client) == []


def test_eventgrid_subscription_validation_without_the_secret_is_401(
    client: TestClient, settings: Settings
) -> None:
    url, headers, body = signed(
        settings, "acs-us", fixture_bytes("azure_acs", "subscription_validation")
    )
    response = post(client, url.split("?", 1)[0], headers, body)
    assert response.status_code == 401


def test_cloudevents_abuse_protection_preflight_is_answered(client: TestClient) -> None:
    response = client.options(
        "/webhooks/acs-us", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    assert response.status_code == 200
    assert response.headers["webhook-allowed-origin"] == "eventgrid.azure.net"


def test_analysis_completed_event_is_stored_and_quarantined(
    client: TestClient, settings: Settings
) -> None:
    event = orjson.loads(fixture_bytes("azure_acs", "inbound_text"))[0]
    event["eventType"] = "Microsoft.Communication.AdvancedMessageAnalysisCompleted"
    url, headers, body = signed(settings, "acs-us", orjson.dumps([event]))
    response = post(client, url, headers, body)
    assert response.status_code == 200
    assert response.headers["bspgate-raw-id"].startswith("raw_")
    assert events(client) == []


def test_dialog360_has_no_hub_challenge(client: TestClient) -> None:
    response = client.get(
        "/webhooks/d360-us?hub.mode=subscribe&hub.verify_token=x&hub.challenge=42"
    )
    assert response.status_code == 405


def test_a_360dialog_signature_the_channel_does_not_check_is_named_in_the_log(
    tmp_path: Path,
) -> None:
    """A channel with only the header secret, sent 360dialog's partner signature (the operator
    gave the partner secret as `webhook_secret`): refused, and the log line, not the answer,
    says which secret would verify it."""
    header_only = {**CHANNELS[-1], "secrets": {"webhook_secret": "d360-platform"}}
    settings = make_settings(tmp_path, channels=[header_only])
    body = fixture_bytes("dialog360", "inbound_text")
    signature = hmac.new(b"d360-platform", body, hashlib.sha256).hexdigest()
    with TestClient(create_app(settings, dispatch=False)) as client, capture_logs() as logs:
        response = post(
            client,
            "/webhooks/d360-us",
            {"content-type": "application/json", "x-360dialog-signature": signature},
            body,
        )
    assert response.status_code == 401
    assert "partner_secret" not in response.text
    (line,) = [entry for entry in logs if entry["event"] == "webhook.unauthorized"]
    assert line["hint"] == (
        "the request carries x-360dialog-signature, which this channel does not check: set "
        "channels[d360-us].secrets.partner_secret to verify it"
    )


# -- no PII in INFO logs --------------------------------------------------------------------------
@pytest.mark.parametrize(("channel_id", "provider", "name"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_ingest_logs_no_phone_and_no_text_at_info(
    client: TestClient, settings: Settings, channel_id: str, provider: str, name: str
) -> None:
    url, headers, body = signed(settings, channel_id, fixture_bytes(provider, name))
    with capture_logs() as logs:
        assert post(client, url, headers, body).status_code == 200
        # a refused request is logged too: its log line must not echo the payload either
        headers_bad = {k: v for k, v in headers.items() if k.lower() not in ("authorization",)}
        headers_bad["x-twilio-signature"] = base64.b64encode(b"0" * 20).decode()
        post(client, url.split("?", 1)[0], headers_bad, body)
    info = [entry for entry in logs if entry.get("log_level") != "debug"]
    assert info, "the ingest logged nothing"
    text = orjson.dumps(info, default=str).decode()
    for phone in PHONES:
        assert phone not in text
    for message in TEXTS:
        assert message not in text
