"""Pending deliveries when a subscriber's config or its answers change.

- `require_phone` turned off: what was held goes out (held, it would hold the contact's later
  events for good, per-contact order).
- A `410 Gone` disables the subscriber even when another answer of the same round succeeded.
- A subscriber removed from the config: its deliveries are kept, not sent, and not counted as
  undelivered (`bspgate_oldest_undelivered_seconds`); they go out if it is configured again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from bspgate.console.queries import outbox_summary
from tests.payloads import text_webhook
from tests.test_delivery import CRM, Clock, Harness, harness, subscriber

pytestmark = [pytest.mark.anyio, pytest.mark.store]

ALICE = "US.10000000000000000001"
BOB = "US.20000000000000000002"
OLD = "https://old.example.com/hooks"


async def test_turning_require_phone_off_releases_what_was_held(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, require_phone=True)) as h:
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE, phone=None, timestamp=1767225600))
        assert [r["state"] for r in await h.deliveries()] == ["held"]
        assert await h.dispatcher.run_once() == 0

    # the operator turns it off and restarts: the held event goes first, then the new one
    async with harness(tmp_path, subscriber("crm", CRM, require_phone=False)) as h:
        await h.ingest(text_webhook("wamid.2", bsuid=ALICE, phone=None, timestamp=1767225601))
        for _ in range(3):
            await h.dispatcher.run_once()
        assert h.receiver.message_ids() == ["wamid.1", "wamid.2"]
        assert {r["state"] for r in await h.deliveries()} == {"delivered"}


async def test_a_subscriber_still_requiring_a_phone_keeps_holding(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, require_phone=True)) as h:
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE, phone=None))
        for _ in range(3):
            await h.dispatcher.run_once()
        assert h.receiver.message_ids() == []
        assert [r["state"] for r in await h.deliveries()] == ["held"]


async def test_a_410_beside_a_success_in_one_round_disables_the_subscriber(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, retry_schedule=["1h"])) as h:
        h.receiver.script[CRM] = [410, 200]
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE, phone=None))
        await h.ingest(text_webhook("wamid.2", bsuid=BOB, phone=None))
        assert await h.dispatcher.run_once() == 2
        states = await h.gateway.store.read(lambda tx: tx.subscriber_states())
        assert states["crm"]["disabled_at"]
        assert "410" in states["crm"]["reason"]


async def _oldest_undelivered(h: Harness) -> float:
    transport = httpx.ASGITransport(app=h.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        text = (await client.get("/metrics")).text
    (line,) = [x for x in text.splitlines() if x.startswith("bspgate_oldest_undelivered_seconds")]
    return float(line.split()[-1])


async def test_a_removed_subscribers_deliveries_are_kept_but_not_undelivered(
    tmp_path: Path,
) -> None:
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    old = subscriber("old", OLD, retry_schedule=["1h"])
    async with harness(tmp_path, old, subscriber("crm", CRM), clock=clock) as h:
        h.receiver.script[OLD] = [503]
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE))
        assert await h.dispatcher.run_once() == 2  # crm has it; old failed, retried in an hour
    # the operator removes "old" and restarts: its row stays pending, and no lane sends it
    clock.advance(600)
    async with harness(tmp_path, subscriber("crm", CRM), clock=clock) as h:
        assert await h.dispatcher.run_once() == 0
        assert await _oldest_undelivered(h) == 0.0  # crm has everything: nothing waits
        await h.ingest(text_webhook("wamid.2", bsuid=BOB))
        clock.advance(5)
        assert await _oldest_undelivered(h) == 5.0  # crm's, not old's ten minutes
        # the console's overview says the same as /metrics
        summary = await h.gateway.store.read(lambda tx: outbox_summary(tx, ["crm"]))
        crm_rows = [d for d in await h.deliveries("crm") if d["state"] == "pending"]
        assert summary["oldest_undelivered"] == str(crm_rows[0]["created_at"])
        assert [d["state"] for d in await h.deliveries("old")] == ["pending"]
    # configured again: what it missed goes out once its retry is due (1 h, jitter up to 20 %)
    clock.advance(2 * 3600)
    async with harness(tmp_path, old, subscriber("crm", CRM), clock=clock) as h:
        for _ in range(3):
            await h.dispatcher.run_once()
        assert h.receiver.message_ids(OLD) == ["wamid.1"]  # wamid.2 came after it was gone
        assert {d["state"] for d in await h.deliveries()} == {"delivered"}
