"""`/webhooks/{channel_id}` and the probes, through the ASGI app over a real SQLite file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette

from bspgate.app import create_app
from bspgate.store.base import RawRecord
from tests.asgi_client import TestClient
from tests.conftest import (
    APP_SECRET,
    SUBSCRIBER_SECRET,
    fixture_bytes,
    make_settings,
    meta_signature,
)

pytestmark = pytest.mark.store  # runs on SQLite and PostgreSQL

PROBLEM = "application/problem+json"
ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[ClientFactory]:
    """Builds a TestClient (lifespan entered) for settings overrides; closes them all after."""
    opened: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        app = create_app(make_settings(tmp_path, **overrides), dispatch=False)
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


def post_signed(
    client: TestClient, body: bytes, channel: str = "cloud-us", secret: str = APP_SECRET
) -> Any:
    return client.post(
        f"/webhooks/{channel}",
        content=body,
        headers={
            "content-type": "application/json",
            "x-hub-signature-256": meta_signature(body, secret),
        },
    )


def app_of(client: TestClient) -> Starlette:
    app = client.app
    assert isinstance(app, Starlette)
    return app


def read(client: TestClient, work: Callable[[Any], Any]) -> Any:
    return app_of(client).state.gateway.store.read_sync(work)


def event_count(client: TestClient) -> int:
    return int(read(client, lambda tx: tx.one("SELECT COUNT(*) FROM events")[0]))


def deliveries(client: TestClient) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = read(
        client, lambda tx: tx.deliveries(state=None, subscriber_id=None, event_id=None, limit=100)
    )
    return rows


def subscriber(id_: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "url": f"https://{id_}.example.com/hook",
        "secret": SUBSCRIBER_SECRET,
        **extra,
    }


ERRORS_ONLY = orjson.dumps(
    {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"phone_number_id": "106540352242922"},
                            "errors": [{"code": 131000, "title": "Something went wrong"}],
                        },
                    }
                ],
            }
        ],
    }
)


# -- signatures -------------------------------------------------------------------------------
def test_signed_webhook_is_accepted_and_stored(client: TestClient) -> None:
    body = fixture_bytes("cloudapi", "inbound_text")
    response = post_signed(client, body)
    assert response.status_code == 200
    raw_id = response.headers["bspgate-raw-id"]
    raw: RawRecord = read(client, lambda tx: tx.raw(raw_id))
    assert raw.body == body
    assert raw.state == "processed"
    assert raw.event_count == 1
    assert event_count(client) == 1


def test_missing_signature_is_401_problem(client: TestClient) -> None:
    response = client.post(
        "/webhooks/cloud-us",
        content=fixture_bytes("cloudapi", "inbound_text"),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 401
    assert problem["code"] == "invalid_signature"
    assert "X-Hub-Signature-256" in problem["detail"]
    assert event_count(client) == 0


def test_forged_signature_is_401(client: TestClient) -> None:
    body = fixture_bytes("cloudapi", "inbound_text")
    response = post_signed(client, body, secret="not-the-app-secret")
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "invalid_signature"
    assert event_count(client) == 0


def test_signature_over_other_bytes_is_401(client: TestClient) -> None:
    body = fixture_bytes("cloudapi", "inbound_text")
    response = client.post(
        "/webhooks/cloud-us",
        content=body.replace(b"another color", b"a forged color"),
        headers={"content-type": "application/json", "x-hub-signature-256": meta_signature(body)},
    )
    assert response.status_code == 401


# -- handshake ---------------------------------------------------------------------------------
def test_hub_challenge_with_right_token_answers_the_challenge(client: TestClient) -> None:
    response = client.get(
        "/webhooks/cloud-us",
        params={"hub.mode": "subscribe", "hub.verify_token": "vt", "hub.challenge": "1158201444"},
    )
    assert response.status_code == 200
    assert response.text == "1158201444"


def test_head_on_the_handshake_url_answers_like_get_and_the_405_names_what_is_allowed(
    client: TestClient,
) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": "vt", "hub.challenge": "1158201444"}
    assert client.request("HEAD", "/webhooks/cloud-us", params=params).status_code == 200
    refused = client.options("/webhooks/cloud-us")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD, POST"  # Meta's handshake, then webhooks


def test_hub_challenge_with_wrong_token_is_403(client: TestClient) -> None:
    response = client.get(
        "/webhooks/cloud-us",
        params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1158201444"},
    )
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM
    assert "1158201444" not in response.text


# -- refusals ---------------------------------------------------------------------------------
def test_unknown_channel_is_404_problem(client: TestClient) -> None:
    body = fixture_bytes("cloudapi", "inbound_text")
    response = post_signed(client, body, channel="no-such-channel")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "unknown_channel"


def test_unknown_channel_handshake_is_404(client: TestClient) -> None:
    response = client.get("/webhooks/no-such-channel", params={"hub.challenge": "1"})
    assert response.status_code == 404


def test_body_over_max_body_bytes_is_413(make_client: ClientFactory) -> None:
    client = make_client(server={"public_url": "https://gw.example.com", "max_body_bytes": 1024})
    body = b'{"object": "whatsapp_business_account", "pad": "' + b"x" * 2048 + b'"}'
    response = post_signed(client, body)
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "body_too_large"


def test_streamed_body_over_max_body_bytes_is_413(make_client: ClientFactory) -> None:
    client = make_client(server={"public_url": "https://gw.example.com", "max_body_bytes": 1024})

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"x" * 512

    response = client.post(
        "/webhooks/cloud-us", content=chunks(), headers={"x-hub-signature-256": "sha256=00"}
    )
    assert response.status_code == 413


def test_unparseable_body_is_400_problem(client: TestClient) -> None:
    response = post_signed(client, b"{not json")
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "unparseable_body"
    assert event_count(client) == 0


def test_a_lone_surrogate_escape_is_read_as_a_replacement_character(client: TestClient) -> None:
    """Meta escapes non-ASCII as `\\uXXXX` and signs those bytes; a text cut in the middle of an
    emoji holds half a surrogate pair. That is JSON (RFC 8259's grammar), which orjson refuses:
    such an authentic webhook is stored and mapped, the half character read as U+FFFD."""
    fixture = fixture_bytes("cloudapi", "inbound_text")
    text = orjson.loads(fixture)["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"]
    body = fixture.replace(orjson.dumps(text), b'"Great \\ud83d\\ude00 \\ud83d"')
    assert body != fixture
    response = post_signed(client, body)
    assert response.status_code == 200, response.text
    raw: RawRecord = read(client, lambda tx: tx.raw(response.headers["bspgate-raw-id"]))
    assert (raw.body, raw.state) == (body, "processed")
    (event,) = read(client, lambda tx: tx.all("SELECT body FROM events"))
    assert orjson.loads(event[0])["data"]["message"]["text"] == "Great \U0001f600 \ufffd"


def test_empty_body_is_400(client: TestClient) -> None:
    assert post_signed(client, b"").status_code == 400


# -- quarantine and duplicates -----------------------------------------------------------------
def test_errors_only_payload_is_answered_200_and_quarantined(client: TestClient) -> None:
    response = post_signed(client, ERRORS_ONLY)
    assert response.status_code == 200
    quarantined: list[RawRecord] = read(client, lambda tx: tx.raws("quarantined", 10))
    assert len(quarantined) == 1
    raw = quarantined[0]
    assert raw.id == response.headers["bspgate-raw-id"]
    assert raw.body == ERRORS_ONLY
    assert raw.reason is not None
    assert "only errors[]" in raw.reason
    assert event_count(client) == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda value: value["contacts"][0]["profile"].update(name={"first": "x"}),
            "data.contact.name is dict, not a string",
        ),
        (
            lambda value: value["messages"][0].update(id=["wamid.1"]),
            "data.message.id is list, not a string",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_quarantined_with_its_path(
    client: TestClient, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    body = orjson.loads(fixture_bytes("cloudapi", "inbound_text"))
    change(body["entry"][0]["changes"][0]["value"])
    response = post_signed(client, orjson.dumps(body))
    assert response.status_code == 200
    quarantined: list[RawRecord] = read(client, lambda tx: tx.raws("quarantined", 10))
    assert len(quarantined) == 1
    assert (quarantined[0].reason or "").startswith("rule message event evt_")
    assert (quarantined[0].reason or "").endswith(f": {reason}")  # not a database error
    assert event_count(client) == 0


def test_payload_no_rule_matches_is_quarantined(client: TestClient) -> None:
    response = post_signed(client, b'{"object": "page", "entry": []}')
    assert response.status_code == 200
    quarantined: list[RawRecord] = read(client, lambda tx: tx.raws("quarantined", 10))
    assert [r.reason for r in quarantined] == ["no rule of the mapping matched this payload"]


def test_duplicate_webhook_gives_one_event(client: TestClient) -> None:
    body = fixture_bytes("cloudapi", "inbound_text")
    first = post_signed(client, body)
    second = post_signed(client, body)
    assert first.status_code == 200
    assert second.status_code == 200
    assert event_count(client) == 1
    processed: list[RawRecord] = read(client, lambda tx: tx.raws("processed", 10))
    assert len(processed) == 1


def test_duplicate_webhook_creates_no_second_delivery(make_client: ClientFactory) -> None:
    client = make_client(subscribers=[subscriber("crm")])
    body = fixture_bytes("cloudapi", "inbound_text")
    post_signed(client, body)
    post_signed(client, body)
    assert len(deliveries(client)) == 1


# -- fan-out -----------------------------------------------------------------------------------
def test_events_create_outbox_rows_per_matching_subscriber(make_client: ClientFactory) -> None:
    client = make_client(
        subscribers=[
            subscriber("all"),
            subscriber("messages", events=["whatsapp.message.received"]),
            subscriber("statuses", events=["whatsapp.message.status"]),
            subscriber("identity", events=["whatsapp.contact.*"]),
        ]
    )
    assert post_signed(client, fixture_bytes("cloudapi", "inbound_text")).status_code == 200
    rows = deliveries(client)
    assert sorted(r["subscriber_id"] for r in rows) == ["all", "messages"]
    assert {r["state"] for r in rows} == {"pending"}
    event_ids = read(client, lambda tx: [row[0] for row in tx.all("SELECT id FROM events")])
    assert {r["event_id"] for r in rows} == set(event_ids)


def test_status_events_reach_only_status_subscribers(make_client: ClientFactory) -> None:
    client = make_client(
        subscribers=[
            subscriber("messages", events=["whatsapp.message.received"]),
            subscriber("statuses", events=["whatsapp.message.status"]),
        ]
    )
    assert post_signed(client, fixture_bytes("cloudapi", "status_delivered")).status_code == 200
    assert {r["subscriber_id"] for r in deliveries(client)} == {"statuses"}


def test_subscriber_channels_filter_outbox_rows(make_client: ClientFactory, tmp_path: Path) -> None:
    channels = [
        {
            "id": channel_id,
            "provider": "cloudapi",
            "portfolio": "acme",
            "secrets": {"app_secret": APP_SECRET, "verify_token": "vt"},
        }
        for channel_id in ("cloud-us", "cloud-eu")
    ]
    client = make_client(
        channels=channels,
        subscribers=[
            subscriber("us-only", channels=["cloud-us"]),
            subscriber("eu-only", channels=["cloud-eu"]),
        ],
    )
    assert (
        post_signed(client, fixture_bytes("cloudapi", "inbound_text"), "cloud-eu").status_code
        == 200
    )
    assert [r["subscriber_id"] for r in deliveries(client)] == ["eu-only"]


def test_quarantined_payload_creates_no_outbox_rows(make_client: ClientFactory) -> None:
    client = make_client(subscribers=[subscriber("crm")])
    post_signed(client, ERRORS_ONLY)
    assert deliveries(client) == []


# -- probes ------------------------------------------------------------------------------------
def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_answers_ready_with_a_migrated_store(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_metrics_count_webhooks_in_prometheus_format(client: TestClient) -> None:
    post_signed(client, fixture_bytes("cloudapi", "inbound_text"))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'bspgate_webhooks_total{channel="cloud-us",outcome="processed"} 1.0' in response.text
    assert 'bspgate_events_total{type="whatsapp.message.received"} 1.0' in response.text


# -- the webhook route's shortcut (routes.WebhookShortcut) answers as the router would ------------
def test_a_webhook_under_a_root_path_is_accepted(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), dispatch=False)
    body = fixture_bytes("cloudapi", "inbound_text")
    with TestClient(app, root_path="/gateway") as client:
        response = client.post(
            "/gateway/webhooks/cloud-us",
            content=body,
            headers={
                "content-type": "application/json",
                "x-hub-signature-256": meta_signature(body),
            },
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")


def test_a_post_below_a_channel_is_the_routers_404_problem(client: TestClient) -> None:
    body = fixture_bytes("cloudapi", "inbound_text")
    response = post_signed(client, body, channel="cloud-us/extra")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert event_count(client) == 0


def test_other_methods_on_a_webhook_url_still_reach_the_router(client: TestClient) -> None:
    response = client.put("/webhooks/cloud-us", content=b"{}")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]
