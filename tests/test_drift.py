"""Format drift: fields a provider sends that no rule reads are counted, never an error."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from bspgate.app import create_app
from bspgate.mapping.engine import apply_mapping
from bspgate.mapping.loader import load_mapping
from tests.conftest import MAPPINGS, fixture_json, make_settings

CHANNEL = {
    "id": "c",
    "provider": "cloudapi",
    "portfolio": "p",
    "business_phone": None,
    "settings": {},
}


def _with_new_type() -> dict[str, Any]:
    payload = copy.deepcopy(fixture_json("cloudapi", "inbound_text"))
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message["type"] = "hologram"
    message["hologram"] = {"id": "1", "secret_text": "+15551234567"}
    return dict(payload)


def test_known_fixtures_show_no_drift() -> None:
    spec = load_mapping(MAPPINGS, "cloudapi")
    for name in ("inbound_text", "inbound_image", "status_delivered", "status_failed"):
        assert apply_mapping(spec, fixture_json("cloudapi", name), CHANNEL).unmapped == []


@pytest.mark.parametrize(
    ("provider", "names"),
    [
        (
            "azure_acs",
            [
                "inbound_text",
                "inbound_bsuid_only",
                "inbound_interactive",
                "inbound_image_cloudevent",
                "status_delivered",
                "status_failed",
            ],
        ),
        (
            "connectly",
            [
                "inbound_text",
                "inbound_bsuid_only",
                "inbound_media",
                "inbound_button",
                "status_delivered",
                "status_failed",
            ],
        ),
    ],
)
def test_azure_and_connectly_fixtures_show_no_drift(provider: str, names: list[str]) -> None:
    spec = load_mapping(MAPPINGS, provider)
    channel = {**CHANNEL, "id": provider, "provider": provider}
    for name in names:
        result = apply_mapping(spec, fixture_json(provider, name), channel)
        assert result.drafts, name
        assert result.unmapped == [], (name, result.unmapped)


def test_azure_new_data_field_is_counted() -> None:
    payload = copy.deepcopy(fixture_json("azure_acs", "inbound_text"))
    event = payload[0] if isinstance(payload, list) else payload
    event["data"]["fromUsername2"] = "@new"
    event["futureEnvelopeField"] = 1
    channel = {**CHANNEL, "id": "acs", "provider": "azure_acs"}
    result = apply_mapping(load_mapping(MAPPINGS, "azure_acs"), payload, channel)
    assert sorted(result.unmapped) == ["d.fromUsername2", "ev.futureEnvelopeField"]
    assert len(result.drafts) == 1  # still delivered


def test_connectly_new_top_level_field_is_counted() -> None:
    payload = copy.deepcopy(fixture_json("connectly", "inbound_text"))
    payload["reactionMessage"] = {"emoji": "x"}
    channel = {**CHANNEL, "id": "cn", "provider": "connectly"}
    result = apply_mapping(load_mapping(MAPPINGS, "connectly"), payload, channel)
    assert result.unmapped == ["ev.reactionMessage"]
    assert len(result.drafts) == 1


def test_new_message_type_is_counted_and_still_delivered_as_unsupported() -> None:
    result = apply_mapping(load_mapping(MAPPINGS, "cloudapi"), _with_new_type(), CHANNEL)
    assert result.unmapped == ["msg.hologram"]
    assert [d.data["message"]["type"] for d in result.drafts] == ["unsupported"]
    assert result.issues == []


def test_documented_but_unused_fields_are_not_drift() -> None:
    payload = copy.deepcopy(fixture_json("cloudapi", "inbound_text"))
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["referral"] = {"source_id": "ad"}
    assert apply_mapping(load_mapping(MAPPINGS, "cloudapi"), payload, CHANNEL).unmapped == []


@pytest.mark.anyio
async def test_ingest_counts_drift_in_metrics_and_logs_names_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    gateway = create_app(settings, dispatch=False).state.gateway
    await gateway.store.open()
    try:
        channel = settings.channel("cloud-us")
        payload = _with_new_type()
        with capture_logs() as logs:
            outcome = await gateway.ingest(channel, payload, orjson.dumps(payload), "")
        assert outcome.state == "processed"
        rendered = gateway.metrics.render().decode()
        line = 'bspgate_unmapped_fields_total{field="msg.hologram",provider="cloudapi"} 1.0'
        assert line in rendered
        drift = [entry for entry in logs if entry["event"] == "mapping.unmapped_fields"]
        assert drift == [
            {
                "event": "mapping.unmapped_fields",
                "provider": "cloudapi",
                "fields": ["msg.hologram"],
                "log_level": "info",
            }
        ]
    finally:
        await gateway.store.close()
        await gateway.client.aclose()
