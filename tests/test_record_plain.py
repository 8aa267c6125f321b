"""A round in which every attempt was delivered is recorded in one statement on PostgreSQL.

`record_delivered` writes the attempts and the outcomes only while none of the round's
subscribers is failing in the store; otherwise it writes nothing and answers False, and the
dispatcher runs the full record (which ends the streak and announces the recovery).
Both databases give the same answers; PostgreSQL's is one statement outside a transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bspgate.store.migrate import apply_migrations
from bspgate.store.sql import SqlTx
from tests.payloads import text_webhook
from tests.store.outbox import NOW, pending_rows
from tests.store.pg import migrated_tx
from tests.store.recording import Recording
from tests.test_delivery import harness

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def outbox(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Recording]:
    """A migrated, empty store in autocommit, behind a statement-recording connection."""
    if backend == "sqlite":
        conn = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
        conn.execute("BEGIN")
        apply_migrations(SqlTx(conn), "sqlite")
        conn.execute("COMMIT")
        try:
            yield Recording(conn)
        finally:
            conn.close()
        return
    dsn = request.getfixturevalue("postgres_dsn")
    with migrated_tx(dsn) as setup:
        setup.conn.commit()
    with psycopg.connect(dsn, autocommit=True) as pg:
        yield Recording(pg)


def tx_for(backend: str, recording: Recording) -> SqlTx:
    return SqlTx(recording, "format") if backend == "postgres" else SqlTx(recording)


def claimed_rows(tx: SqlTx) -> None:
    """evt0..evt2 for contacts ct0..ct2, in flight under the claim token 'me/1'."""
    pending_rows(tx, 3)
    tx.execute(
        "UPDATE deliveries SET state = 'inflight', lease_until = 160.0, claim_owner = 'me', "
        "claim_token = 'me/1'"
    )


def ids(tx: SqlTx) -> dict[str, str]:
    return {event: delivery for delivery, event in tx.all("SELECT id, event_id FROM deliveries")}


def round_of(tx: SqlTx, tokens: dict[str, str]) -> tuple[list[Any], list[Any]]:
    """Attempts and outcomes of a round that delivered each event in `tokens` (its claim)."""
    rows = ids(tx)
    attempts = [(rows[event], NOW, 200, 12.5, None) for event in tokens]
    finished = [
        ("delivered", 1, 100.0, 200, None, NOW, rows[event], token)
        for event, token in tokens.items()
    ]
    return attempts, finished


def states(tx: SqlTx) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in tx.all(
            "SELECT event_id, state, attempts, claim_token, last_status FROM deliveries "
            "ORDER BY event_seq"
        )
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_delivered_round_is_recorded(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with outbox(backend, tmp_path, request) as recording:
        tx = tx_for(backend, recording)
        claimed_rows(tx)
        # evt2's attempt is stale: its row was claimed again since (another token)
        attempts, finished = round_of(tx, {"evt0": "me/1", "evt1": "me/1", "evt2": "old/7"})
        recording.seen.clear()
        assert tx.record_delivered(attempts, finished, ["crm"]) is True
        if backend == "postgres":
            assert len(recording.seen) == 1  # BEGIN, attempts, outcomes, streak, COMMIT were 5
        assert states(tx) == [
            ("evt0", "delivered", 1, None, 200),
            ("evt1", "delivered", 1, None, 200),
            ("evt2", "inflight", 0, "me/1", None),  # the stale attempt changed nothing
        ]
        assert tx.one("SELECT COUNT(*) FROM attempts")[0] == 3  # every attempt is kept


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("failing", "recorded"), [("crm", False), ("ops", True)])
def test_a_failure_streak_in_the_store_leaves_the_round_to_the_full_record(
    backend: str, failing: str, recorded: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with outbox(backend, tmp_path, request) as recording:
        tx = tx_for(backend, recording)
        claimed_rows(tx)
        tx.execute(
            "INSERT INTO subscriber_state (subscriber_id, failing_since, updated_at) "
            "VALUES (?, 90.0, ?)",
            (failing, NOW),
        )
        attempts, finished = round_of(tx, {"evt0": "me/1"})
        # another subscriber's streak does not concern this round
        assert tx.record_delivered(attempts, finished, ["crm"]) is recorded
        assert tx.one("SELECT COUNT(*) FROM attempts")[0] == (1 if recorded else 0)
        assert states(tx)[0][1] == ("delivered" if recorded else "inflight")
        assert tx.one("SELECT failing_since FROM subscriber_state")[0] == 90.0  # untouched


@pytest.mark.anyio
async def test_the_dispatcher_records_a_round_of_successes_as_one_statement(
    tmp_path: Path,
) -> None:
    # SQLite's writer runs it as one transaction; what it ran shows which path was taken
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1"))
        seen: list[str] = []
        await h.gateway.store.transaction(lambda tx: tx.conn.set_trace_callback(seen.append))
        try:
            assert await h.dispatcher.run_once() == 1
        finally:
            await h.gateway.store.transaction(lambda tx: tx.conn.set_trace_callback(None))
        assert (await h.only_delivery())["state"] == "delivered"
        assert any("failing_since IS NOT NULL LIMIT 1" in sql for sql in seen)  # the guard
        assert not any("SELECT failing_since FROM subscriber_state" in sql for sql in seen)
