"""Every provider's send form: the Done-when matrix, with respx standing in for each provider API.

Each provider's test channel is its folder's data (mappings/<p>/cases/_channel.yaml); what stays
here is what per-folder YAML cannot hold: checks against each provider's official request schema.

For each provider: text to a phone, text to a BSUID, a template to each, an authentication
template to a BSUID-only contact (refused, no call), one to a contact with a phone alias (goes to
the phone), and a malformed BSUID (refused). Each captured request is checked against the
provider's official schema (read from the public spec files, encoded here as checks) and against
the shared send fixtures; the same matrix runs as `bspgate send --dry-run` output.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
import yaml

from bspgate import cli
from bspgate.config import Settings, settings_from_dict
from bspgate.identity.resolver import IdentityResolver, Observation
from bspgate.mapping.send_cases import load_channel
from bspgate.outbound.service import SendService
from bspgate.store.sqlite import SqliteStore
from tests.conftest import API_KEY, MAPPINGS, ROOT

pytestmark = pytest.mark.anyio
OUT = Path(__file__).resolve().parent / "fixtures" / "outbound"
NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
BSUID = "US.13491208655302741918"  # the BSUID-only contact (shared fixtures' person)
ALIAS_BSUID = "US.88812345678901234567"  # the contact that also has a phone alias
ALIAS_PHONE = "+15557654321"
LEGACY_PHONE = "+15551234567"  # a phone-only (legacy) contact
TWILIO_SID = "AC0123456789abcdef0123456789abcdef"
CONTENT_SID = "HX0123456789abcdef0123456789abcdef"
AZURE_KEY = base64.b64encode(b"azure-access-key-for-tests-0001").decode()
REGISTRATION = "11111111-1111-1111-1111-111111111111"

# The providers whose official request schemas are encoded below; each one's test channel
# (secrets, settings) is its folder's cases/_channel.yaml, its API a respx stand-in host.
PROVIDERS = ["cloudapi", "dialog360", "twilio", "infobip", "azure_acs", "connectly"]


def stand_in(provider: str) -> str:
    return f"https://{provider.replace('_', '-')}.provider.test"


CHANNELS: dict[str, dict[str, Any]] = {
    provider: {
        key: value
        for key, value in load_channel(MAPPINGS, provider, stand_in(provider)).items()
        if key in ("id", "secrets", "settings")
    }
    for provider in PROVIDERS
}


def config_dict(tmp_path: Path, **channel_overrides: Any) -> dict[str, Any]:
    channels = []
    for provider, channel in CHANNELS.items():
        entry = {
            "provider": provider,
            "portfolio": "acme",
            "business_phone": "+15550001111",
            **channel,
        }
        entry.update(channel_overrides.get(provider, {}))
        channels.append(entry)
    return {
        "storage": f"sqlite:///{tmp_path / 'send.db'}",
        "mappings": str(MAPPINGS),
        "server": {"public_url": "https://gw.example.com"},
        "api_keys": [{"name": "test", "key": API_KEY}],
        "channels": channels,
        "subscribers": [],
    }


def make_settings(tmp_path: Path, **channel_overrides: Any) -> Settings:
    return settings_from_dict(
        config_dict(tmp_path, **channel_overrides),
        env={},
        base_dir=ROOT,
        known_mappings=PROVIDERS,
    )


def answer_json(provider: str, name: str = "answer") -> Any:
    return json.loads((OUT / provider / f"{name}.json").read_text())


def channel_id(provider: str) -> str:
    return str(CHANNELS[provider]["id"])


async def seed(store: SqliteStore, channel_ids: list[str]) -> dict[str, str]:
    """Three people: BSUID-only, BSUID with a phone alias, phone-only; all wrote recently."""
    stamp = (NOW - timedelta(hours=1)).isoformat().replace("+00:00", "Z")

    def work(tx: Any) -> dict[str, str]:
        resolver = IdentityResolver(tx, "acme", channel_ids[0], stamp)
        people = {
            "bsuid_only": resolver.observe(Observation(bsuid=BSUID)).id,
            "with_alias": resolver.observe(Observation(bsuid=ALIAS_BSUID, phone=ALIAS_PHONE)).id,
            "legacy": resolver.observe(Observation(phone=LEGACY_PHONE)).id,
        }
        for contact_id in people.values():
            for channel in channel_ids:
                tx.mark_inbound(contact_id, channel, stamp)
        return people

    result: dict[str, str] = await store.transaction(work)
    return result


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    db = SqliteStore(tmp_path / "send.db")
    await db.open()
    yield db
    await db.close()


async def no_sleep(_seconds: float) -> None:
    return None


def service_for(settings: Settings, store: Any, client: httpx.AsyncClient) -> SendService:
    return SendService(settings, store=store, client=client, clock=lambda: NOW, sleep=no_sleep)


# -- the requests each provider's official schema accepts ---------------------------------------
def _form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode(), keep_blank_values=True)


# twilio-oai spec/json/twilio_api_v2010.json, CreateMessage requestBody (CreateMessageRequest)
TWILIO_PARAMS = {
    "To", "StatusCallback", "ApplicationSid", "MaxPrice", "ProvideFeedback", "Attempt",
    "ValidityPeriod", "ForceDelivery", "ContentRetention", "AddressRetention", "SmartEncoded",
    "PersistentAction", "ShortenUrls", "ScheduleType", "SendAt", "SendAsMms", "ContentVariables",
    "RiskCheck", "From", "MessagingServiceSid", "Body", "MediaUrl", "ContentSid",
}  # fmt: skip


def check_twilio(request: httpx.Request) -> dict[str, Any]:
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    path = urlsplit(str(request.url)).path
    match = re.fullmatch(r"/2010-04-01/Accounts/(AC[0-9a-fA-F]{32})/Messages\.json", path)
    assert match, path  # AccountSid: ^AC[0-9a-fA-F]{32}$
    fields = _form(request)
    assert set(fields) <= TWILIO_PARAMS, set(fields) - TWILIO_PARAMS
    assert "To" in fields  # required: ["To"]
    assert "From" in fields or "MessagingServiceSid" in fields  # one sender is needed
    assert fields["To"][0].startswith("whatsapp:")  # a channel address
    if "ContentSid" in fields:
        assert re.fullmatch(r"^HX[0-9a-fA-F]{32}$", fields["ContentSid"][0])
        assert isinstance(json.loads(fields["ContentVariables"][0]), dict)
    else:
        assert "Body" in fields or "MediaUrl" in fields
    user, _, password = (
        base64.b64decode(request.headers["authorization"][6:]).decode().partition(":")
    )
    assert (user, password) == (TWILIO_SID, "twilio-token-1")
    return {k: v[0] if len(v) == 1 else v for k, v in fields.items()}


# facebook/openapi business-messaging-api_v23.0.yaml: BaseMessageProperties requires
# messaging_product, recipient_type (individual|group), to, type; TextMessage.text has only body
# and preview_url; TemplateObject requires name and language; LanguageObject requires policy and
# code. `to` is required there because the file predates BSUIDs: a BSUID send uses `recipient`.
def check_meta(request: httpx.Request) -> dict[str, Any]:
    body = json.loads(request.content)
    assert body["messaging_product"] == "whatsapp"
    assert body["recipient_type"] == "individual"
    assert ("to" in body) != ("recipient" in body)  # rule 1: never both
    if "to" in body:
        assert re.fullmatch(r"[1-9][0-9]{6,14}", body["to"])  # digits, no "+"
    assert body["type"] in {
        "text",
        "template",
        "image",
        "document",
        "audio",
        "video",
        "interactive",
    }
    if body["type"] == "text":
        assert set(body["text"]) <= {"body", "preview_url"}
        assert body["text"]["body"]
    if body["type"] == "template":
        assert {"name", "language"} <= set(body["template"])
        assert set(body["template"]["language"]) == {"policy", "code"}
        assert body["template"]["language"]["policy"] == "deterministic"
    return dict(body)


# Azure/azure-rest-api-specs …/Messages/stable/2024-08-30/communicationservicesmessages.json:
# NotificationContent requires channelRegistrationId (uuid), to (string array), kind;
# TextNotificationContent requires content; TemplateNotificationContent requires template
# (name, language); values need name and kind; bindings need kind; components need refValue.
AZURE_KINDS = {"text", "image", "image_v0", "document", "video", "audio", "template"}


def check_azure(request: httpx.Request) -> dict[str, Any]:
    url = urlsplit(str(request.url))
    assert url.path == "/messages/notifications:send"
    assert parse_qs(url.query)["api-version"] == ["2024-08-30"]  # required query parameter
    body = json.loads(request.content)
    assert re.fullmatch(r"[0-9a-f-]{36}", body["channelRegistrationId"])
    assert isinstance(body["to"], list)
    assert all(isinstance(x, str) for x in body["to"])
    assert body["kind"] in AZURE_KINDS
    if body["kind"] == "text":
        assert isinstance(body["content"], str)
    if body["kind"] == "template":
        template = body["template"]
        assert {"name", "language"} <= set(template)
        for value in template.get("values", []):
            assert {"name", "kind"} <= set(value)
        if "bindings" in template:
            assert template["bindings"]["kind"] == "whatsApp"
            names = {value["name"] for value in template["values"]}
            assert {item["refValue"] for item in template["bindings"]["body"]} <= names
    for header in ("x-ms-date", "x-ms-content-sha256", "repeatability-request-id"):
        assert request.headers.get(header)
    assert request.headers["authorization"].startswith(
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature="
    )
    return dict(body)


# infobip-api-java-client: WhatsAppTextMessage (from, to, content.text required);
# WhatsAppBulkMessage -> messages[] of WhatsAppMessage (from, to, content{templateName,
# templateData, language} required).
def check_infobip(request: httpx.Request) -> dict[str, Any]:
    assert request.headers["authorization"] == "App infobip-key-0001"
    body = json.loads(request.content)
    path = urlsplit(str(request.url)).path
    if path.endswith("/template"):
        for message in body["messages"]:
            assert {"from", "to", "content"} <= set(message)
            assert {"templateName", "templateData", "language"} <= set(message["content"])
        return {**body["messages"][0], "bulk": body}
    assert {"from", "to", "content"} <= set(body)
    return dict(body)


def check_connectly(request: httpx.Request) -> dict[str, Any]:
    assert request.headers["x-api-key"] == "connectly-key-1"
    body = json.loads(request.content)
    path = urlsplit(str(request.url)).path
    assert path.startswith("/v1/businesses/biz-42/send/")
    if path.endswith("/send/messages"):
        assert body["recipient"]["channelType"] == "whatsapp"
        # recipient.id always (the phone or the bare BSUID); userId only for a BSUID
        assert body["recipient"].get("userId") in (None, body["recipient"]["id"])
    if path.endswith("/whatsapp_templated_messages"):
        assert {"number", "templateName", "language"} <= set(body)
    return dict(body)


CHECKS: dict[str, Callable[[httpx.Request], dict[str, Any]]] = {
    "cloudapi": check_meta,
    "dialog360": check_meta,
    "twilio": check_twilio,
    "infobip": check_infobip,
    "azure_acs": check_azure,
    "connectly": check_connectly,
}


def addressed(provider: str, body: dict[str, Any], path: str) -> tuple[str, str]:
    """(kind, value) the captured request addresses, read the provider's way."""
    if provider in {"cloudapi", "dialog360"}:
        return ("phone", "+" + body["to"]) if "to" in body else ("bsuid", body["recipient"])
    if provider == "twilio":
        value = body["To"].removeprefix("whatsapp:")
        return ("phone" if value.startswith("+") else "bsuid", value)
    if provider == "azure_acs":
        (value,) = body["to"]
        return ("phone" if value.startswith("+") else "bsuid", value)
    if provider == "infobip":
        value = body["to"]
        return ("phone", "+" + value) if value.isdigit() else ("bsuid", value)
    if path.endswith("/send/messages"):
        recipient = body["recipient"]
        return (
            ("bsuid", recipient["userId"]) if "userId" in recipient else ("phone", recipient["id"])
        )
    number = body["number"]
    return (
        ("bsuid", number.removeprefix("bsuid:"))
        if number.startswith("bsuid:")
        else (
            "phone",
            number,
        )
    )


def provider_answer(provider: str, request: httpx.Request) -> httpx.Response:
    if provider == "infobip":
        name = "answer_template" if request.url.path.endswith("/template") else "answer_text"
        return httpx.Response(200, json=answer_json("infobip", name))
    status = {"twilio": 201, "azure_acs": 202}.get(provider, 200)
    return httpx.Response(status, json=answer_json(provider))


def mock_provider(router: respx.MockRouter, provider: str) -> respx.Route:
    route = router.post(url__startswith=stand_in(provider) + "/")
    route.side_effect = lambda request: provider_answer(provider, request)
    return route


def text(to: dict[str, str]) -> dict[str, Any]:
    return {"to": to, "type": "text", "text": {"body": "Your order has shipped."}}


def template(to: dict[str, str], category: str = "utility") -> dict[str, Any]:
    return {
        "to": to,
        "type": "template",
        "template": {
            "name": "otp" if category == "authentication" else "order_update",
            "language": "en_US",
            "category": category,
            "parameters": ["Sheena", "#1234"] if category != "authentication" else ["402519"],
        },
    }


SENT = [
    pytest.param("text_to_phone", lambda p: text({"phone": LEGACY_PHONE}), "phone", LEGACY_PHONE),
    pytest.param("text_to_bsuid", lambda p: text({"bsuid": BSUID}), "bsuid", BSUID),
    pytest.param(
        "template_to_phone", lambda p: template({"phone": LEGACY_PHONE}), "phone", LEGACY_PHONE
    ),
    pytest.param("template_to_bsuid", lambda p: template({"bsuid": BSUID}), "bsuid", BSUID),
    pytest.param(
        "auth_template_to_alias",
        lambda p: template({"contact_id": p["with_alias"]}, "authentication"),
        "phone",
        ALIAS_PHONE,
    ),
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("case", "make", "kind", "value"), SENT)
async def test_send_reaches_provider_in_its_addressing_form(
    tmp_path: Path, store: SqliteStore, provider: str, case: str, make: Any, kind: str, value: str
) -> None:
    settings = make_settings(tmp_path)
    people = await seed(store, [channel_id(provider)])
    async with httpx.AsyncClient() as client:
        with respx.mock(assert_all_called=True) as router:
            route = mock_provider(router, provider)
            outcome = await service_for(settings, store, client).submit(
                make(people), channel_id=channel_id(provider)
            )
    assert route.call_count == 1
    request = route.calls.last.request
    body = CHECKS[provider](request)
    assert addressed(provider, body, request.url.path) == (kind, value)
    assert outcome.status == 202
    assert outcome.body["addressed_by"] == kind
    assert outcome.body["provider"] == provider
    assert outcome.body["provider_message_id"]
    expected_contact = {
        BSUID: people["bsuid_only"],
        LEGACY_PHONE: people["legacy"],
        ALIAS_PHONE: people["with_alias"],
    }[value]
    assert outcome.body["contact_id"] == expected_contact
    stored = await store.read(
        lambda tx: tx.contact_for_send(channel_id(provider), outcome.body["provider_message_id"])
    )
    assert stored == expected_contact  # identity rule 8: later statuses resolve to the contact


REFUSED = [
    pytest.param(
        "auth_template_to_bsuid_only",
        lambda p: template({"bsuid": BSUID}, "authentication"),
        "auth_template_requires_phone",
    ),
    pytest.param(
        "auth_template_to_bsuid_only_contact",
        lambda p: template({"contact_id": p["bsuid_only"]}, "authentication"),
        "auth_template_requires_phone",
    ),
    pytest.param(
        "invalid_bsuid", lambda p: text({"bsuid": "us.13491208655302741918"}), "invalid_bsuid"
    ),
    pytest.param("bsuid_with_plus", lambda p: text({"bsuid": "+US.1349120865"}), "invalid_bsuid"),
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("case", "make", "code"), REFUSED)
async def test_refused_send_never_calls_the_provider(
    tmp_path: Path, store: SqliteStore, provider: str, case: str, make: Any, code: str
) -> None:
    from bspgate.errors import SendError

    settings = make_settings(tmp_path)
    people = await seed(store, [channel_id(provider)])
    async with httpx.AsyncClient() as client:
        with respx.mock(assert_all_called=False) as router:
            route = mock_provider(router, provider)
            with pytest.raises(SendError) as caught:
                await service_for(settings, store, client).submit(
                    make(people), channel_id=channel_id(provider)
                )
    assert caught.value.code == code
    assert caught.value.status == 422
    assert route.call_count == 0


async def test_infobip_refuses_bsuid_only_recipients_by_default(
    tmp_path: Path, store: SqliteStore
) -> None:
    from bspgate.errors import SendError

    settings = make_settings(
        tmp_path,
        infobip={"settings": {"base_url": stand_in("infobip")}},
    )
    await seed(store, [channel_id("infobip")])
    async with httpx.AsyncClient() as client:
        with respx.mock(assert_all_called=False) as router:
            route = mock_provider(router, "infobip")
            with pytest.raises(SendError) as caught:
                await service_for(settings, store, client).submit(
                    template({"bsuid": BSUID}), channel_id=channel_id("infobip")
                )
    assert caught.value.code == "bsuid_send_unsupported"
    assert route.call_count == 0


# -- shared fixtures: the bodies the project's provider research wrote down ---------------------
def fixture(provider: str, name: str) -> Any:
    return json.loads((OUT / provider / f"{name}.json").read_text())


async def dry_body(tmp_path: Path, provider: str, send: dict[str, Any]) -> dict[str, Any]:
    service = SendService(make_settings(tmp_path), store=None, client=None, clock=lambda: NOW)
    outcome = await service.dry_run(send, channel_id=channel_id(provider), use_store=False)
    body: dict[str, Any] = outcome.body["body"]
    return body


async def test_cloudapi_bodies_equal_the_shared_fixtures(tmp_path: Path) -> None:
    send = {
        **text({"bsuid": BSUID}),
        "text": {"body": "Your order has shipped.", "preview_url": False},
    }
    assert await dry_body(tmp_path, "cloudapi", send) == fixture("cloudapi", "send_text_bsuid")
    send["to"] = {"phone": LEGACY_PHONE}
    assert await dry_body(tmp_path, "cloudapi", send) == fixture("cloudapi", "send_text_phone")
    body = await dry_body(tmp_path, "cloudapi", template({"bsuid": BSUID}))
    expected = fixture("cloudapi", "send_template")
    expected["template"]["language"]["policy"] = "deterministic"  # required by Meta's schema
    assert body == expected


async def test_dialog360_bodies_equal_the_shared_fixtures(tmp_path: Path) -> None:
    send = {
        **text({"bsuid": BSUID}),
        "text": {"body": "Your order has shipped.", "preview_url": False},
    }
    assert await dry_body(tmp_path, "dialog360", send) == fixture("dialog360", "send_text_bsuid")


async def test_twilio_body_matches_the_shared_fixture(tmp_path: Path) -> None:
    body = await dry_body(tmp_path, "twilio", text({"bsuid": BSUID}))
    expected = fixture("twilio", "send_text")
    assert {k: body[k] for k in ("To", "From", "Body")} == {
        k: expected[k] for k in ("To", "From", "Body")
    }
    assert body["StatusCallback"] == f"https://gw.example.com/webhooks/{channel_id('twilio')}"
    body = await dry_body(tmp_path, "twilio", template({"phone": LEGACY_PHONE}))
    assert body["ContentSid"] == CONTENT_SID
    assert body["ContentVariables"] == fixture("twilio", "send_template")["ContentVariables"]


async def test_azure_bodies_equal_the_shared_fixtures(tmp_path: Path) -> None:
    body = await dry_body(tmp_path, "azure_acs", text({"bsuid": BSUID}))
    assert body == fixture("azure_acs", "send_text")
    send = template({"phone": LEGACY_PHONE})
    send["template"]["parameters"] = [
        {"name": "name", "value": "Sheena"},
        {"name": "order", "value": "#1234"},
    ]
    assert await dry_body(tmp_path, "azure_acs", send) == fixture("azure_acs", "send_template")


async def test_connectly_bodies_match_the_shared_fixtures(tmp_path: Path) -> None:
    body = await dry_body(tmp_path, "connectly", text({"bsuid": BSUID}))
    expected = fixture("connectly", "send_session_bsuid")
    # the shared fixture names the BSUID in recipient.userId only; Connectly's Mintlify page marks
    # recipient.id required ("E.164, or bare BSUID"), so bspgate sends both (docs/sending.md)
    expected["recipient"]["id"] = BSUID
    assert {k: body[k] for k in ("sender", "recipient", "message")} == {
        k: expected[k] for k in ("sender", "recipient", "message")
    }
    body = await dry_body(tmp_path, "connectly", text({"phone": LEGACY_PHONE}))
    expected = fixture("connectly", "send_session_phone")
    assert body["recipient"] == expected["recipient"]
    body = await dry_body(tmp_path, "connectly", template({"bsuid": BSUID}))
    expected = fixture("connectly", "send_template")
    assert {k: body[k] for k in ("sender", "number", "templateName", "parameters")} == {
        k: expected[k] for k in ("sender", "number", "templateName", "parameters")
    }


async def test_connectly_campaign_bsuid_needs_the_channel_flag(tmp_path: Path) -> None:
    from bspgate.errors import SendError

    settings = make_settings(
        tmp_path,
        connectly={"settings": {**CHANNELS["connectly"]["settings"], "template_mode": "campaign"}},
    )
    service = SendService(settings, store=None, client=None, clock=lambda: NOW)
    with pytest.raises(SendError) as caught:
        await service.dry_run(
            template({"bsuid": BSUID}), channel_id=channel_id("connectly"), use_store=False
        )
    assert caught.value.code == "bsuid_send_unsupported"
    settings = make_settings(
        tmp_path,
        connectly={
            "settings": {
                **CHANNELS["connectly"]["settings"],
                "template_mode": "campaign",
                "campaign_bsuid_send": True,
            }
        },
    )
    service = SendService(settings, store=None, client=None, clock=lambda: NOW)
    outcome = await service.dry_run(
        template({"bsuid": BSUID}), channel_id=channel_id("connectly"), use_store=False
    )
    assert outcome.body["url"].endswith("/send/campaigns")
    (entry,) = outcome.body["body"]["entries"]
    assert entry["client"] == "bsuid:" + BSUID
    assert entry["campaignName"] == "order_update"


async def test_connectly_refuses_a_phone_less_send_unless_the_channel_turns_it_on(
    tmp_path: Path,
) -> None:
    # Connectly: sends to phone-less customers "currently return a 400"; refused before the call
    from bspgate.errors import SendError

    plain = {k: v for k, v in CHANNELS["connectly"]["settings"].items() if k != "bsuid_send"}
    settings = make_settings(tmp_path, connectly={"settings": plain})
    service = SendService(settings, store=None, client=None, clock=lambda: NOW)
    for send in (text({"bsuid": BSUID}), template({"bsuid": BSUID})):
        with pytest.raises(SendError) as caught:
            await service.dry_run(send, channel_id=channel_id("connectly"), use_store=False)
        assert (caught.value.code, caught.value.status) == ("bsuid_send_unsupported", 422)
    outcome = await service.dry_run(
        text({"phone": LEGACY_PHONE}), channel_id=channel_id("connectly"), use_store=False
    )
    assert outcome.body["body"]["recipient"] == {"channelType": "whatsapp", "id": LEGACY_PHONE}


async def test_infobip_template_body_matches_the_shared_fixture(tmp_path: Path) -> None:
    body = await dry_body(tmp_path, "infobip", template({"phone": LEGACY_PHONE}))
    (message,) = body["messages"]
    expected = fixture("infobip", "send_template")["messages"][0]
    assert message["to"] == expected["to"]
    assert message["from"] == expected["from"]
    assert message["content"]["templateData"] == expected["content"]["templateData"]
    assert set(body) == {"messages"}


# -- the same matrix as `bspgate send --dry-run` output ------------------------------------------
def write_config(tmp_path: Path) -> Path:
    # The CLI's dry run checks the service window against the store as the API does; this
    # matrix is about addressing forms, so the window is off (the window itself:
    # tests/production/test_cli_honesty.py)
    config = config_dict(tmp_path)
    for channel in config["channels"]:
        channel["service_window"] = "off"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _seed_file(path: Path, channel: str) -> dict[str, str]:
    db = SqliteStore(path)
    await db.open()
    try:
        return await seed(db, [channel])
    finally:
        await db.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cli_dry_run_matrix(
    tmp_path: Path, provider: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    # the CLI opens this SQLite file only for the contact_id case
    people = asyncio.run(_seed_file(tmp_path / "send.db", channel_id(provider)))
    capsys.readouterr()  # the seeding's log lines

    def run(send: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = tmp_path / "send.json"
        path.write_text(json.dumps(send))
        code = cli.main(
            ["send", "--dry-run", "--config", str(config), "--channel", channel_id(provider),
             str(path)]
        )  # fmt: skip
        out = capsys.readouterr().out
        return code, json.loads(out)

    for make, kind, value in (
        (lambda: text({"phone": LEGACY_PHONE}), "phone", LEGACY_PHONE),
        (lambda: text({"bsuid": BSUID}), "bsuid", BSUID),
        (lambda: template({"phone": LEGACY_PHONE}), "phone", LEGACY_PHONE),
        (lambda: template({"bsuid": BSUID}), "bsuid", BSUID),
        (
            lambda: template({"contact_id": people["with_alias"]}, "authentication"),
            "phone",
            ALIAS_PHONE,
        ),
    ):
        code, printed = run(make())
        assert code == 0, printed
        assert set(printed) == {"method", "url", "headers", "body"}
        request = httpx.Request(
            printed["method"],
            printed["url"],
            headers=printed["headers"],
            content=_encode(printed),
        )
        body = printed["body"]
        if provider == "infobip" and "messages" in body:
            body = body["messages"][0]
        assert addressed(provider, body, request.url.path) == (kind, value)
        assert "meta-tok-1" not in json.dumps(printed)
        for secret in ("d360-key-0001", "twilio-token-1", "infobip-key-0001", "connectly-key-1"):
            assert secret not in json.dumps(printed)
    code, printed = run(template({"bsuid": BSUID}, "authentication"))
    assert (code, printed["code"]) == (2, "auth_template_requires_phone")
    code, printed = run(text({"bsuid": "US-1349"}))
    assert (code, printed["code"]) == (2, "invalid_bsuid")


def _encode(printed: dict[str, Any]) -> bytes:
    from urllib.parse import urlencode

    if printed["headers"].get("Content-Type") == "application/x-www-form-urlencoded":
        return urlencode(printed["body"], doseq=True).encode()
    return json.dumps(printed["body"]).encode()


def test_cli_dry_run_masks_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    path = tmp_path / "send.json"
    path.write_text(json.dumps(text({"bsuid": BSUID})))
    assert (
        cli.main(
            [
                "send",
                "--dry-run",
                "--config",
                str(config),
                "--channel",
                channel_id("twilio"),
                str(path),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["headers"]["Authorization"] == "Basic ****"
    assert TWILIO_SID not in printed["url"]
    assert printed["body"]["To"] == f"whatsapp:{BSUID}"
