"""Identity is the same whether payloads are processed together or one at a time.

Under load the processing worker takes many payloads in one transaction; alone, each is its own.
A merge keeps the contact created first (rule 8), so contacts made in one batch must still be
made one after another, in arrival order, or the survivor would depend on the load.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bspgate.app import load_channel_mappings
from bspgate.processing import Processor, Rules
from bspgate.store.sqlite import SqliteStore
from tests.conftest import make_settings
from tests.identity.payloads import cloud_message
from tests.payloads import raw_record

pytestmark = pytest.mark.anyio
BSUID = "US.13491208655302741918"
PHONE = "15551234567"


async def _contacts_after(tmp_path: Path, batch: int) -> tuple[dict[str, str | None], list[str]]:
    """The legacy payload, then the BSUID alone, then both: rule 8 merges the first two.
    Answers each contact's `merged_into`, and the contact each message's event first named."""
    bodies = [
        cloud_message("wamid.1", phone=PHONE, step=1),
        cloud_message("wamid.2", bsuid=BSUID, step=2),
        cloud_message("wamid.3", phone=PHONE, bsuid=BSUID, step=3),
    ]
    settings = make_settings(tmp_path)
    store = SqliteStore(tmp_path / f"gateway-{batch}.db")
    await store.open()
    try:
        for n, body in enumerate(bodies):
            await store.accept(raw_record(n, body))
        processor = Processor(store, Rules(settings, load_channel_mappings(settings)), batch=batch)
        assert await processor.drain() == 3
        contacts = await store.read(lambda tx: tx.all("SELECT id, merged_into FROM contacts"))
        events = await store.read(
            lambda tx: tx.all("SELECT body FROM events WHERE type = 'whatsapp.message.received'")
        )
    finally:
        await store.close()
    named = {}
    for (body,) in events:
        data = orjson.loads(body)["data"]
        named[data["message"]["id"]] = data["contact"]["id"]
    return dict(contacts), [named["wamid.1"], named["wamid.2"]]


async def test_a_merge_keeps_the_same_contact_batched_or_one_at_a_time(tmp_path: Path) -> None:
    for batch in (1, 64):
        merged_into, (legacy, by_bsuid) = await _contacts_after(tmp_path, batch)
        assert legacy != by_bsuid
        # the contact the legacy payload made is the older one: it survives, in both runs
        assert merged_into == {legacy: None, by_bsuid: legacy}, batch
