"""Retention: expired rows are purged in batches, open deliveries keep their events, every
deleted row is counted in /metrics; off by default. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bspgate.app import create_app
from bspgate.config import Settings
from bspgate.retention import Purger, Retention, retention_from_dict
from bspgate.simulate import signed_request
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, SUBSCRIBER_SECRET, fixture_bytes, make_settings

PAST = datetime(2026, 1, 1, tzinfo=UTC)
NOW = PAST + timedelta(days=40)
AUTH = {"authorization": f"Bearer {API_KEY}"}


def _post(client: TestClient, settings: Settings, body: bytes) -> bool:
    """Post a signed webhook; True when it was stored (not a duplicate)."""
    channel = settings.channels[0]
    url, headers, payload = signed_request(settings, channel, body)
    path = url.replace(settings.server.public_url, "")
    answer = client.post(path, content=payload, headers=headers)
    assert answer.status_code == 200
    return "bspgate-raw-id" in answer.headers


def test_retention_is_off_by_default(tmp_path: Path) -> None:
    assert not make_settings(tmp_path).retention.enabled
    parsed = retention_from_dict({"events": "30d", "batch": 2})
    assert parsed.events == 30 * 86400
    assert parsed.batch == 2
    assert parsed.ages() == {"events": 30 * 86400}


@pytest.mark.store
def test_purge_deletes_expired_rows_in_batches(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = create_app(settings, dispatch=False, clock=lambda: PAST)
    gateway = app.state.gateway
    with TestClient(app) as client:
        names = ("inbound_bsuid_only", "inbound_image", "inbound_location", "status_delivered")
        stored = sum(_post(client, settings, fixture_bytes("cloudapi", name)) for name in names)
        _post(client, settings, (Path(__file__).parent / "group_message.json").read_bytes())
        before = client.get("/v1/events", params={"limit": 500}, headers=AUTH).json()["data"]
        assert stored >= 2
        retention = Retention(
            events=30 * 86400, raw_payloads=30 * 86400, quarantine=60 * 86400, batch=1
        )
        purger = Purger(gateway.store, retention, gateway.metrics, clock=lambda: NOW, pause=0)
        totals = client.portal.call(purger.purge_once)
        assert totals["events"] == len(before)
        assert totals["raw_payloads"] == stored
        assert totals["quarantine"] == 0  # kept 60 days: not yet expired
        assert client.get("/v1/events", headers=AUTH).json()["data"] == []
        assert len(client.get("/v1/quarantined", headers=AUTH).json()["data"]) == 1
        metrics = client.get("/metrics").text
        assert f'bspgate_retention_purged_total{{kind="events"}} {float(len(before))}' in metrics
        assert client.portal.call(purger.purge_once)["events"] == 0


@pytest.mark.store
def test_events_with_open_deliveries_are_kept(tmp_path: Path) -> None:
    subscriber = {"id": "crm", "url": "http://127.0.0.1:9/h", "secret": SUBSCRIBER_SECRET}
    settings = make_settings(tmp_path, subscribers=[subscriber])
    app = create_app(settings, dispatch=False, clock=lambda: PAST)
    gateway = app.state.gateway
    with TestClient(app) as client:
        _post(client, settings, fixture_bytes("cloudapi", "inbound_bsuid_only"))
        purger = Purger(
            gateway.store, Retention(events=86400), gateway.metrics, clock=lambda: NOW, pause=0
        )
        assert client.portal.call(purger.purge_once) == {"events": 0}  # pending delivery
        assert len(client.get("/v1/events", headers=AUTH).json()["data"]) == 1
