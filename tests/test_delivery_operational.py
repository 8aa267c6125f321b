"""Operational events reach subscribers asking for `bspgate.*`, signed like every delivery.

Real SQLite/PostgreSQL outbox, scripted subscriber answers, hand clock; the stock
`standardwebhooks` library verifies what the operations subscriber receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from bspgate.times import parse_time
from tests.conftest import SUBSCRIBER_SECRET
from tests.payloads import text_webhook
from tests.test_delivery import ALICE, BOB, CRM, Harness, harness, subscriber
from tests.test_delivery_claims import twin

OPS = "https://ops.example.com/bspgate"
pytestmark = [pytest.mark.anyio, pytest.mark.store]


def ops_events(h: Harness) -> list[dict[str, Any]]:
    out = []
    for request in h.receiver.requests:
        if str(request.url) == OPS:
            event = Webhook(SUBSCRIBER_SECRET).verify(request.content, dict(request.headers))
            out.append(event)
    return out


def with_ops(**crm: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return subscriber("crm", CRM, **crm), subscriber("ops", OPS, events=["bspgate.*"])


async def test_a_disabled_subscriber_is_announced(tmp_path: Path) -> None:
    async with harness(tmp_path, *with_ops()) as h:
        h.receiver.script[CRM] = [410]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        await h.dispatcher.run_once()
        (event,) = ops_events(h)
        assert event["type"] == "bspgate.subscriber.disabled"
        assert event["source"] == "/bspgate"
        assert event["data"]["subscriber"] == "crm"
        assert "410" in event["data"]["reason"]


async def test_a_recovery_is_announced(tmp_path: Path) -> None:
    async with harness(tmp_path, *with_ops()) as h:
        h.receiver.script[CRM] = [503]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        h.clock.advance(10)
        await h.dispatcher.run_once()  # crm delivered: recovered
        await h.dispatcher.run_once()
        (event,) = ops_events(h)
        assert event["type"] == "bspgate.subscriber.recovered"
        assert event["data"]["subscriber"] == "crm"
        assert event["data"]["failing_since"] is not None


async def test_operational_event_times_are_rfc3339_utc_with_z(tmp_path: Path) -> None:
    async with harness(tmp_path, *with_ops()) as h:
        h.receiver.script[CRM] = [410]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()  # 410: disabled
        await h.gateway.store.transaction(
            lambda tx: tx.enable_subscriber("crm", h.clock().isoformat())
        )
        h.clock.advance(10)
        await h.dispatcher.run_once()  # delivered: recovered
        await h.dispatcher.run_once()
        disabled, recovered = ops_events(h)
        times = [
            disabled["time"], disabled["data"]["disabled_at"],
            recovered["time"], recovered["data"]["recovered_at"],
            recovered["data"]["failing_since"],
        ]  # fmt: skip
        for text in times:
            assert text.endswith("Z"), text
            assert parse_time(text)  # RFC 3339
        assert parse_time(recovered["data"]["failing_since"]) < parse_time(recovered["time"])


async def test_a_recovery_from_a_streak_another_dispatcher_saw_is_announced(
    tmp_path: Path,
) -> None:
    # Another replica saw the failures (or this one did, before a restart): the streak is in
    # the store only. A round of successes is one statement only while nothing is failing
    # there, so this dispatcher's first success still ends the streak and announces it.
    async with harness(tmp_path, *with_ops()) as h:
        h.receiver.script[CRM] = [503, 503]
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE, phone=None))
        await h.ingest(text_webhook("wamid.2", bsuid=BOB, phone=None))
        assert await twin(h, "replica-a").run_once() == 2  # both failed: a streak begins
        began = await streak(h)
        assert began is not None
        assert h.dispatcher.lanes["crm"].failing_since is None  # not known here
        h.clock.advance(10)
        assert await h.dispatcher.run_once() == 2  # both delivered
        assert await streak(h) is None
        await h.dispatcher.run_once()
        (event,) = ops_events(h)
        assert event["type"] == "bspgate.subscriber.recovered"
        assert event["data"]["subscriber"] == "crm"
        # when the streak began, as the store knew it (this dispatcher did not)
        assert parse_time(event["data"]["failing_since"]).timestamp() == pytest.approx(began)


async def streak(h: Harness) -> float | None:
    row = await h.gateway.store.read(
        lambda tx: tx.one("SELECT failing_since FROM subscriber_state WHERE subscriber_id = 'crm'")
    )
    return None if row is None else row[0]


async def test_a_dead_letter_is_announced(tmp_path: Path) -> None:
    async with harness(tmp_path, *with_ops(retry_schedule=["1s"])) as h:
        h.receiver.script[CRM] = [500, 500]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        h.clock.advance(5)
        await h.dispatcher.run_once()
        await h.dispatcher.run_once()
        (event,) = ops_events(h)
        (row,) = await h.deliveries("crm")
        assert event["type"] == "bspgate.delivery.dead_lettered"
        assert event["data"]["delivery_id"] == row["id"]
        assert event["data"]["event_id"] == row["event_id"]
        assert (event["data"]["attempts"], event["data"]["last_status"]) == (2, 500)


async def test_a_failed_probe_on_the_last_attempt_is_not_a_dead_letter(tmp_path: Path) -> None:
    # The row's last scheduled attempt is still to come when the lane probes early with it: the
    # probe fails, spends nothing, and the row stays pending. Only the real last attempt kills
    # it, and the log, the metrics and the operators hear of one dead letter, once.
    async with harness(tmp_path, *with_ops(retry_schedule=["1s", "3s"])) as h:
        h.receiver.script[CRM] = [500] * 4
        await h.ingest(text_webhook("wamid.1"))
        with capture_logs() as logs:
            await h.dispatcher.run_once()
            h.clock.advance(1.5)
            await h.dispatcher.run_once()  # the second attempt: the next one is the last
            h.clock.advance(2)  # not due yet (3 s ± 20 %), but a probe is
            assert await h.dispatcher.run_once() == 1
            (row,) = await h.deliveries("crm")
            assert (row["state"], row["attempts"]) == ("pending", 2)
            h.clock.advance(10)
            await h.dispatcher.run_once()  # the last scheduled attempt
            await h.dispatcher.run_once()  # the operational event goes out
        attempts = [
            (line["outcome"], line["attempt"], line.get("probe"))
            for line in logs
            if line["event"] == "delivery.attempt" and line["subscriber"] == "crm"
        ]
        assert attempts == [("pending", 1, None), ("pending", 2, None), ("pending", 2, True),
                            ("dead", 3, None)]  # fmt: skip
        (row,) = await h.deliveries("crm")
        assert (row["state"], row["attempts"]) == ("dead", 3)
        (event,) = ops_events(h)
        assert event["type"] == "bspgate.delivery.dead_lettered"
        assert event["data"]["attempts"] == 3
        counted = h.gateway.metrics.deliveries
        assert counted.labels("crm", "dead")._value.get() == 1
        assert counted.labels("crm", "pending")._value.get() == 3


async def test_a_quarantined_webhook_is_announced_without_payload_content(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, *with_ops()) as h:
        channel = h.gateway.settings.channel("cloud-us")
        assert channel is not None
        payload = text_webhook("wamid.1", bsuid="bad bsuid 4155550100", phone=None)
        outcome = await h.gateway.ingest(
            channel, payload, orjson.dumps(payload), "application/json"
        )
        assert outcome.state == "quarantined"
        await h.dispatcher.run_once()
        (event,) = ops_events(h)
        assert event["type"] == "bspgate.webhook.quarantined"
        assert event["data"]["raw_id"] == outcome.raw_id
        assert (event["data"]["channel"], event["data"]["provider"]) == ("cloud-us", "cloudapi")
        assert event["data"]["reason"]
        assert "4155550100" not in orjson.dumps(event).decode()


async def test_a_dead_operational_event_reports_nothing(tmp_path: Path) -> None:
    ops = subscriber("ops", OPS, events=["bspgate.*"], retry_schedule=["1s"])
    async with harness(tmp_path, subscriber("crm", CRM), ops) as h:
        h.receiver.script[CRM] = [410]
        h.receiver.script[OPS] = [500, 500]
        await h.ingest(text_webhook("wamid.1"))
        for _ in range(4):
            await h.dispatcher.run_once()
            h.clock.advance(5)
        rows = await h.deliveries("ops")
        assert [r["state"] for r in rows] == ["dead"]  # no event about its own dead letter
