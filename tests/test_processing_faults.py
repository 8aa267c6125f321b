"""The processing worker when the store refuses: a payload's own fault is isolated and
quarantined, the store's fault is waited out; either way the others go on, in order.

Real databases, with the faults made in them: a PostgreSQL trigger that refuses one payload's
event as a unique key would (what an identity bug once did, run after run), and an SQLite file
that may not grow (a full disk).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from bspgate.app import load_channel_mappings
from bspgate.errors import StoreError
from bspgate.processing import Processor, Rules
from bspgate.store.postgres import PostgresStore
from bspgate.store.sqlite import SqliteStore
from tests.conftest import make_settings
from tests.identity.payloads import cloud_message
from tests.payloads import raw_record

pytestmark = pytest.mark.anyio
REFUSE = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.body LIKE '%wamid.poison%' THEN
        RAISE unique_violation USING MESSAGE = 'duplicate key value violates unique constraint';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def _processor(tmp_path: Path, store: object) -> Processor:
    settings = make_settings(tmp_path)
    return Processor(store, Rules(settings, load_channel_mappings(settings)), batch=64)


@pytest.mark.postgres
async def test_a_payload_that_always_conflicts_is_quarantined_and_the_rest_go_on(
    postgres_dsn: str, tmp_path: Path
) -> None:
    # before: the batch's StoreError ("kept conflicting") was retried every 0.5 s, forever,
    # and nothing after it was processed
    store = PostgresStore(postgres_dsn)
    await store.open()
    try:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(REFUSE)
        ids = ["wamid.first", "wamid.poison", "wamid.last"]
        raws = [
            raw_record(n, cloud_message(wamid, bsuid=f"US.{n + 1:020d}", step=n))
            for n, wamid in enumerate(ids)
        ]
        for raw in raws:
            await store.accept(raw)
        assert await _processor(tmp_path, store).drain() == 3
        rows = await store.read(lambda tx: tx.all("SELECT id, state, reason FROM raw_payloads"))
        states = {raw_id: (state, reason) for raw_id, state, reason in rows}
        assert [states[raw.id][0] for raw in raws] == ["processed", "quarantined", "processed"]
        assert "UniqueViolation" in states[raws[1].id][1]
        events = await store.read(lambda tx: tx.one("SELECT COUNT(*) FROM events")[0])
        assert events == 2
    finally:
        await store.close()


async def test_a_full_disk_is_waited_out_not_taken_for_the_payloads_fault(tmp_path: Path) -> None:
    # SQLite ends the transaction itself on a full disk: the store's own ROLLBACK then failed,
    # and the processor was told "cannot rollback - no transaction is active". Failures that
    # leave the transaction open (an I/O error) reached it as the payload's own error.
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    try:
        raws = [
            raw_record(n, cloud_message(f"wamid.{n}", bsuid=f"US.{n + 1:020d}", step=n))
            for n in range(40)
        ]
        await store.transaction(lambda tx: tx.insert_raws(raws))
        # the file may not grow: processing them needs pages it cannot have
        pages = await store.read(lambda tx: tx.one("PRAGMA page_count")[0])
        await store.transaction(lambda tx: tx.one(f"PRAGMA max_page_count = {pages}"))
        processor = _processor(tmp_path, store)
        with pytest.raises(StoreError, match="full"):
            await processor.run_once()
        states = await store.read(lambda tx: tx.all("SELECT DISTINCT state FROM raw_payloads"))
        assert states == [("received",)]  # none quarantined: all read again next round
        await store.transaction(lambda tx: tx.one("PRAGMA max_page_count = 1073741823"))
        assert await processor.run_once() == 40
        states = await store.read(lambda tx: tx.all("SELECT DISTINCT state FROM raw_payloads"))
        assert states == [("processed",)]
    finally:
        await store.close()
