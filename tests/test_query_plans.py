"""No statement of processing or of the identity lookups walks a whole table that grows.

Every statement a realistic run makes (batches of first messages, repeats, legacy phone-only
payloads, statuses, identity changes, then the lookups of the API, the console and sends) is
recorded and explained. A plan that reads a growing table row by row costs in proportion to
what is stored: processing a new contact read every alias row (rule 9's "was the number taught
to someone else later?"), and every batch read every BSUID row for its prefetch, so a gateway
with a million contacts processed a few webhooks a second where an empty one processes
thousands. The answers are the same either way, which is why the plans are asserted.

SQLite: `EXPLAIN QUERY PLAN` must not `SCAN` a growing table (a walk in the order asked for
that stops at a `LIMIT` is allowed). PostgreSQL: with sequential scans disabled, the planner
still picks one only when no index can serve the statement, and an index scan without an index
condition is a walk of the whole index.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from bspgate.app import load_channel_mappings
from bspgate.processing import Rules, map_raw, process_batch
from bspgate.store.migrate import apply_migrations
from bspgate.store.sql import SqlTx
from tests.conftest import SUBSCRIBER_SECRET, fixture_json, make_settings
from tests.payloads import raw_record, status_webhook, text_webhook
from tests.store.pg import migrated_tx
from tests.store.recording import Recording

MOMENT = datetime(2026, 1, 1, tzinfo=UTC)
GROWING = {
    "attempts",
    "contact_bsuids",
    "contact_history",
    "contact_phones",
    "contacts",
    "conversations",
    "deliveries",
    "events",
    "message_status",
    "raw_payloads",
    "sends",
}
# partial indexes of a queue (payloads not processed yet, deliveries still open): walking one
# costs the backlog, not the history
QUEUES = {"raw_payloads_received", "deliveries_open"}
FIXTURES = [
    "inbound_text",
    "inbound_bsuid_only",
    "inbound_image",
    "status_delivered",
    "status_read_sent_to_bsuid",
    "system_user_changed_number",
    "system_user_changed_user_id",
]


def _batches() -> list[list[dict[str, Any]]]:
    """A gateway's life in a few batches: every identity path the resolver takes."""
    people = [(f"US.{6_000_000_000_000_000 + n}", f"1555010{n:04d}") for n in range(6)]
    first = [text_webhook(f"wamid.q.{n}", bsuid=b, phone=p) for n, (b, p) in enumerate(people)]
    repeat = [
        text_webhook(f"wamid.q.r{n}", bsuid=b, phone=p, timestamp=1767225700 + n)
        for n, (b, p) in enumerate(people)
    ]
    legacy = [
        text_webhook("wamid.q.legacy", bsuid=people[0][0], phone=None, timestamp=1767225800),
        fixture_json("phone_only", "cloudapi"),
    ]
    # a number taken by a new BSUID (recycled), a known BSUID with a new number, a late pair
    moves = [
        text_webhook("wamid.q.m1", bsuid="US.6000000000000000099", phone=people[1][1]),
        text_webhook("wamid.q.m2", bsuid=people[2][0], phone="15550109999", timestamp=1767226000),
        text_webhook("wamid.q.m3", bsuid=people[3][0], phone="15550108888", timestamp=1767220000),
        status_webhook("wamid.q.1", "read", bsuid=people[1][0]),
    ]
    fixtures = [fixture_json("cloudapi", name) for name in FIXTURES]
    return [first, repeat, legacy, moves, fixtures[:3], fixtures[3:5], fixtures[5:]]


def _run(tx: SqlTx, tmp_path: Path) -> None:
    """Process the batches, then make the lookups of the API, console and sends."""
    subscribers = [
        {"id": name, "url": f"https://{name}.example.com/hook", "secret": SUBSCRIBER_SECRET}
        for name in ("crm", "analytics")
    ]
    settings = make_settings(tmp_path, subscribers=subscribers)
    rules = Rules(settings, load_channel_mappings(settings))
    raw_ids = []
    for payloads in _batches():
        raws = [raw_record(n, orjson.dumps(payload)) for n, payload in enumerate(payloads)]
        tx.insert_raws(raws)
        prepared = [map_raw(rules, raw) for raw in raws]
        outcomes = process_batch(tx, rules, prepared, {}, MOMENT, False)
        assert all(o.state in ("processed", "duplicate") for o in outcomes), outcomes
        raw_ids += [raw.id for raw in raws]
    for portfolio in ("acme", None):
        tx.find_contacts(bsuid="US.6000000000000000001", portfolio=portfolio)
        tx.find_contacts(phone="15550100002", portfolio=portfolio)
        tx.find_contacts(username="someone", portfolio=portfolio)
    tx.events_of_raw(raw_ids[0])
    tx.phone_alias_state("acme", "15550100001")
    tx.contact_by_phone("acme", "15550100003")


def _growing_scans(plan: list[str], sql: str) -> list[str]:
    # a walk in the order asked for, stopping at the limit (the newest events of a page)
    stops = re.search(r"ORDER BY .* LIMIT", sql) is not None
    stops = stops and not any("TEMP B-TREE" in step for step in plan)
    scans = []
    for step in plan:
        found = re.match(r"SCAN (\w+)", step)
        if found and found.group(1) in GROWING and not stops:
            scans.append(step)
        elif found and not stops:  # an alias: SCAN p, SCAN b ...
            tables = re.findall(rf"\b(\w+) (?:AS )?{found.group(1)}\b", sql)
            scans += [f"{step} ({table})" for table in tables if table in GROWING]
    return scans


def test_sqlite_plans_walk_no_growing_table(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    conn.execute("BEGIN")
    apply_migrations(SqlTx(conn), "sqlite")
    recording = Recording(conn)
    _run(SqlTx(recording), tmp_path)
    conn.execute("COMMIT")
    statements = {sql: params for sql, params in recording.seen if _explainable(sql)}
    assert len(statements) > 40  # the run went through processing, not around it
    scans = {}
    for sql, params in statements.items():
        plan = [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        if found := _growing_scans(plan, sql):
            scans[" ".join(sql.split())[:160]] = found
    conn.close()
    assert not scans, _listed(scans)


def _listed(scans: dict[str, list[str]]) -> str:
    return "\n".join(f"{sql}\n    {', '.join(found)}" for sql, found in scans.items())


def _explainable(sql: str) -> bool:
    return sql.lstrip().split(None, 1)[0].upper() in ("SELECT", "UPDATE", "DELETE", "WITH")


def _walks(node: dict[str, Any], ordered: bool, limited: bool = False) -> Iterator[str]:
    kind = node["Node Type"]
    limited = ordered and (limited or kind == "Limit")
    table = node.get("Relation Name")
    if table in GROWING:
        if kind == "Seq Scan":
            yield f"Seq Scan on {table}"
        elif (
            kind in ("Index Scan", "Index Only Scan")
            and "Index Cond" not in node
            and not limited
            and node["Index Name"] not in QUEUES
        ):
            yield f"{kind} of all of {node['Index Name']}"
    for child in node.get("Plans", []):
        yield from _walks(child, ordered, limited)


@pytest.mark.postgres
def test_postgres_plans_walk_no_growing_table(postgres_dsn: str, tmp_path: Path) -> None:
    with migrated_tx(postgres_dsn) as setup:
        setup.conn.commit()
    with psycopg.connect(postgres_dsn) as conn:
        recording = Recording(conn)
        _run(SqlTx(recording, "format"), tmp_path)
        statements = {sql: params for sql, params in recording.seen if _explainable(sql)}
        assert len(statements) > 40
        conn.execute("SET enable_seqscan = off")  # small tables: ask what an index can do
        scans = {}
        for sql, params in statements.items():
            ((plan,),) = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchall()
            ordered = re.search(r"ORDER BY .* LIMIT", sql) is not None
            if found := list(_walks(plan[0]["Plan"], ordered)):
                scans[" ".join(sql.split())[:160]] = found
        conn.rollback()
    assert not scans, _listed(scans)
