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
