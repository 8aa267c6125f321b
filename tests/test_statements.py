"""SQL statements per webhook on the staged ingest path, counted with a statement trace.

Counts are behaviour: every statement is a round trip on PostgreSQL and a B-tree walk on SQLite.
The path measured is what `bspgate serve` does: accept the raw payloads of a group commit (one
multi-row insert), then process them as one batch (`processing.process_batch` over `BatchTx`).
SQLite counts come from `sqlite3`'s trace callback (BEGIN and COMMIT included); PostgreSQL counts
from a counter at the psycopg `execute` call (its transaction statements are psycopg's own).
Amortized targets per webhook, two subscribers: first message of a new contact <= 6, repeat
message <= 4, duplicate <= 2; per event of one 50-message webhook <= 3.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from bspgate.app import load_channel_mappings
from bspgate.ids import new_id
from bspgate.processing import Rules, map_raw, process_batch
from bspgate.store.base import RawRecord
from bspgate.store.migrate import apply_migrations
from bspgate.store.sql import SqlTx
from tests.conftest import SUBSCRIBER_SECRET, make_settings
from tests.payloads import text_webhook

BATCH = 10
MOMENT = datetime(2026, 1, 1, tzinfo=UTC)


def _rules(tmp_path: Path) -> Rules:
    subscribers = [
        {"id": name, "url": f"https://{name}.example.com/hook", "secret": SUBSCRIBER_SECRET}
        for name in ("crm", "analytics")
    ]
    settings = make_settings(tmp_path, subscribers=subscribers)
    return Rules(settings, load_channel_mappings(settings))


def _raw(payload: dict[str, Any]) -> RawRecord:
    return RawRecord(
        id=new_id("raw"),
        channel_id="cloud-us",
        provider="cloudapi",
        received_at="2026-01-01T00:00:00.000000Z",
        content_type="application/json",
        body=orjson.dumps(payload),
        state="received",
    )


class Counted:
    """A database with a statement counter: `run(work)` is one transaction, counted."""

    def __init__(self, tx: SqlTx, begin: Callable[[], None], commit: Callable[[], None]) -> None:
        self.tx, self.begin, self.commit = tx, begin, commit
        self.statements: list[str] = []

    def run(self, work: Callable[[SqlTx], Any]) -> int:
        before = len(self.statements)
        self.begin()
        work(self.tx)
        self.commit()
        return len(self.statements) - before


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Counted]:
    if request.param == "sqlite":
        conn = sqlite3.connect(tmp_path / "count.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        apply_migrations(SqlTx(conn), "sqlite")
        counted = Counted(
            SqlTx(conn), lambda: conn.execute("BEGIN IMMEDIATE"), lambda: conn.execute("COMMIT")
        )
        conn.set_trace_callback(counted.statements.append)
        yield counted
        conn.close()
        return
    dsn = request.getfixturevalue("postgres_dsn")
    with psycopg.connect(dsn) as pg:
        apply_migrations(SqlTx(pg, "format"), "postgres")
        pg.commit()

        class CountingTx(SqlTx):
            def execute(self, sql: str, params: Any = ()) -> Any:
                counted.statements.append(sql)
                return super().execute(sql, params)

        counted = Counted(CountingTx(pg, "format"), lambda: None, pg.commit)
        yield counted


def _per_webhook(db: Counted, rules: Rules, payloads: list[dict[str, Any]]) -> float:
    """Statements per webhook: accept them (one group commit), then process them as a batch."""
    raws = [_raw(p) for p in payloads]
    accepted = db.run(lambda tx: tx.insert_raws(raws))
    prepared = [map_raw(rules, raw) for raw in raws]
    outcomes: list[Any] = []
    processed = db.run(
        lambda tx: outcomes.extend(process_batch(tx, rules, prepared, {}, MOMENT, False))
    )
    assert all(o.state in ("processed", "duplicate") for o in outcomes), outcomes
    return (accepted + processed) / len(payloads)


def _contacts(base: int) -> list[str]:
    return [f"US.{7_000_000_000_000_000 + base + n}" for n in range(BATCH)]


def test_first_messages_from_new_contacts(database: Counted, tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    payloads = [
        text_webhook(f"wamid.new.{n}", bsuid=b, phone=f"1555000{n:04d}")
        for n, b in enumerate(_contacts(0))
    ]
    assert _per_webhook(database, rules, payloads) <= 6
    events = database.tx.one("SELECT COUNT(*) FROM events")[0]
    deliveries = database.tx.one("SELECT COUNT(*) FROM deliveries")[0]
    assert (events, deliveries) == (BATCH, 2 * BATCH)


def test_repeat_messages_and_duplicates(database: Counted, tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    contacts = _contacts(100)
    first = [text_webhook(f"wamid.a.{n}", bsuid=b, phone=None) for n, b in enumerate(contacts)]
    _per_webhook(database, rules, first)
    repeat = [text_webhook(f"wamid.b.{n}", bsuid=b, phone=None) for n, b in enumerate(contacts)]
    assert _per_webhook(database, rules, repeat) <= 4
    assert _per_webhook(database, rules, repeat) <= 2  # the provider retries: duplicates
    states = dict(database.tx.all("SELECT state, COUNT(*) FROM raw_payloads GROUP BY state"))
    assert states == {"processed": 2 * BATCH, "duplicate": BATCH}
    assert database.tx.one("SELECT COUNT(*) FROM events")[0] == 2 * BATCH


def test_fifty_messages_in_one_webhook(database: Counted, tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    payload = text_webhook("wamid.batch.0", bsuid="US.7100000000000000001", phone=None)
    value = payload["entry"][0]["changes"][0]["value"]
    template = value["messages"][0]
    value["messages"] = [{**template, "id": f"wamid.batch.{n}"} for n in range(50)]
    per_webhook = _per_webhook(database, rules, [payload])
    assert per_webhook / 50 <= 3
    assert database.tx.one("SELECT COUNT(*) FROM events")[0] == 50
