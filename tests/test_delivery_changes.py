"""Pending deliveries when a subscriber's config or its answers change.

- `require_phone` turned off: what was held goes out (held, it would hold the contact's later
  events for good, per-contact order).
- A `410 Gone` disables the subscriber even when another answer of the same round succeeded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.payloads import text_webhook
from tests.test_delivery import CRM, harness, subscriber

pytestmark = [pytest.mark.anyio, pytest.mark.store]

ALICE = "US.10000000000000000001"
BOB = "US.20000000000000000002"


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
