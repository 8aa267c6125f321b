"""PostgreSQL backend specifics: concurrent migrations, SKIP LOCKED claims, races, read semantics.

The behaviour both backends share is tested by the `store`-marked modules on both; these are the
properties only several replicas (or several threads on one pool) can break.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest

from bspgate.errors import StoreError
from bspgate.identity.resolver import IdentityResolver, Observation
from bspgate.store.base import ContactRow
from bspgate.store.postgres import PostgresStore
from bspgate.store.sql import SqlTx
from bspgate.store.sql_batch import ROWS
from tests.store.outbox import pending_rows
from tests.store.pg import migrated_tx, with_database, with_search_path
from tests.store.recording import Recording
from tests.test_processing_inbox import _raw

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]
NOW = "2026-04-02T10:00:00Z"


def test_dsn_helpers_keep_other_parameters() -> None:
    url = "postgresql://u@h:5432/test?sslmode=disable&options=-cfoo%3Dbar"
    assert (
        with_database(url, "other")
        == "postgresql://u@h:5432/other?sslmode=disable&options=-cfoo%3Dbar"
    )
    assert with_search_path(url, "t_1") == (
        "postgresql://u@h:5432/test?sslmode=disable&options=-csearch_path%3Dt_1"
    )


async def test_replicas_starting_together_migrate_once(postgres_dsn: str) -> None:
    stores = [PostgresStore(postgres_dsn) for _ in range(3)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        assert all([await store.ping() for store in stores])
        versions = await stores[0].read(lambda tx: tx.all("SELECT version FROM schema_migrations"))
        assert len(versions) == len({v for (v,) in versions})
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_unreachable_server_is_a_store_error() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none", connect_timeout=1.0)
    with pytest.raises(StoreError, match="cannot reach PostgreSQL"):
        await store.open()


async def test_reads_never_persist_writes(postgres_dsn: str) -> None:
    # as with SQLite's reader: a read runs in a transaction that is rolled back
    store = PostgresStore(postgres_dsn)
    await store.open()
    try:
        await store.read(lambda tx: tx.create_contact("acme", NOW))
        count = await store.read(lambda tx: tx.one("SELECT COUNT(*) FROM contacts")[0])
        assert count == 0
    finally:
        await store.close()


def test_concurrent_claims_take_disjoint_rows(postgres_dsn: str) -> None:
    with migrated_tx(postgres_dsn) as setup:
        pending_rows(setup, 10)
        setup.conn.commit()
    with psycopg.connect(postgres_dsn) as first, psycopg.connect(postgres_dsn) as second:
        # the first claim is still uncommitted while the second runs: its rows are locked
        mine = SqlTx(first, "format").claim_due(100.0, 60.0, 4, {"crm"})
        theirs = SqlTx(second, "format").claim_due(100.0, 60.0, 100, {"crm"})
        first.commit()
        second.commit()
    assert len(mine) == 4
    assert len(theirs) == 6
    assert not {job.id for job in mine} & {job.id for job in theirs}


def _queue_late_for_ct0(tx: SqlTx) -> None:
    """A second event, 'late', for contact ct0: pending and due, behind ct0's first."""
    tx.execute(
        "INSERT INTO events (id, type, channel_id, contact_id, time, stored_at, raw_id, body) "
        "VALUES ('late', 'whatsapp.message.received', 'ch', 'ct0', ?, ?, 'raw', '{}')",
        (NOW, NOW),
    )
    seq = tx.one("SELECT seq FROM events WHERE id = 'late'")[0]
    tx.insert_delivery(seq, "late", "crm", "ct0", "pending", 0.0, NOW)


def test_claim_skips_a_contact_whose_head_another_replica_holds(postgres_dsn: str) -> None:
    with migrated_tx(postgres_dsn) as setup:
        pending_rows(setup, 2)
        # a second event for contact ct0 must wait for the first, even while it is locked
        _queue_late_for_ct0(setup)
        setup.conn.commit()
    with psycopg.connect(postgres_dsn) as first, psycopg.connect(postgres_dsn) as second:
        mine = SqlTx(first, "format").claim_due(100.0, 60.0, 1, {"crm"})
        theirs = SqlTx(second, "format").claim_due(100.0, 60.0, 100, {"crm"})
        first.commit()
        second.commit()
    assert [job.event_id for job in mine] == ["evt0"]
    assert [job.event_id for job in theirs] == ["evt1"]


def _claim_setup(dsn: str) -> None:
    """evt0..evt3 for contacts ct0..ct3, all pending and due; then evt1's lease expired, evt2
    not due yet, and 'late' queued for ct0 behind evt0."""
    with migrated_tx(dsn) as setup:
        pending_rows(setup, 4)
        _queue_late_for_ct0(setup)
        setup.execute("UPDATE deliveries SET state = 'inflight', lease_until = 50.0, "
                      "claim_token = 'old', attempts = 2 WHERE event_id = 'evt1'")  # fmt: skip
        setup.execute("UPDATE deliveries SET next_attempt_at = 500.0 WHERE event_id = 'evt2'")
        # a delivery with a body of its own (an operational event's) sends that, not the event's
        setup.execute("UPDATE deliveries SET body = '{\"own\": 1}' WHERE event_id = 'evt3'")
        setup.conn.commit()


def test_plain_claim_is_one_statement_with_claim_dues_answer(postgres_dsn: str) -> None:
    _claim_setup(postgres_dsn)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        recording = Recording(conn)
        tx = SqlTx(recording, "format")
        disabled, jobs = tx.claim_lane(
            100.0, 60.0, 10, {"crm"}, subscriber_id="crm", owner="me", token="me/1"
        )
        assert len(recording.seen) == 1
        # the expired lease first, then the due rows oldest first; not evt2 (not due) and not
        # 'late' (ct0's evt0 is ahead of it)
        assert disabled is None
        assert [job.event_id for job in jobs] == ["evt1", "evt0", "evt3"]
        assert {job.token for job in jobs} == {"me/1"}
        assert [(job.attempts, job.due, job.body) for job in jobs] == [
            (2, 0.0, "{}"),
            (0, 0.0, "{}"),
            (0, 0.0, '{"own": 1}'),
        ]
        rows = conn.execute(
            "SELECT event_id, state, claim_owner, claim_token, lease_until FROM deliveries "
            "ORDER BY event_seq"
        ).fetchall()
    assert rows == [
        ("evt0", "inflight", "me", "me/1", 160.0),
        ("evt1", "inflight", "me", "me/1", 160.0),
        ("evt2", "pending", None, None, None),
        ("evt3", "inflight", "me", "me/1", 160.0),
        ("late", "pending", None, None, None),
    ]


def test_plain_claim_takes_no_more_than_asked_expired_first(postgres_dsn: str) -> None:
    _claim_setup(postgres_dsn)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        _, jobs = SqlTx(conn, "format").claim_lane(
            100.0, 60.0, 2, set(), subscriber_id="crm", owner="me", token="me/1"
        )
        assert [job.event_id for job in jobs] == ["evt1", "evt0"]  # the limit stops at two
        claimed = conn.execute("SELECT COUNT(*) FROM deliveries WHERE claim_owner = 'me'")
        assert claimed.fetchone() == (2,)
        # unordered: 'late' does not wait for ct0's evt0
        _, rest = SqlTx(conn, "format").claim_lane(
            100.0, 60.0, 10, set(), subscriber_id="crm", owner="me", token="me/2"
        )
        assert [job.event_id for job in rest] == ["evt3", "late"]


@pytest.mark.parametrize(
    ("disabled_at", "reason", "answer"),
    [
        # failing but enabled (a state row without disabled_at): claims as usual
        (None, None, (None, ["evt1", "evt0", "evt3"])),
        (NOW, "gone", ("gone", [])),  # disabled: says why, claims nothing
    ],
)
def test_plain_claim_reads_the_subscribers_state(
    postgres_dsn: str, disabled_at: str | None, reason: str | None, answer: tuple[Any, Any]
) -> None:
    _claim_setup(postgres_dsn)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO subscriber_state (subscriber_id, disabled_at, reason, failing_since, "
            "updated_at) VALUES ('crm', %s, %s, 90.0, %s)",
            (disabled_at, reason, NOW),
        )
        disabled, jobs = SqlTx(conn, "format").claim_lane(
            100.0, 60.0, 10, {"crm"}, subscriber_id="crm", owner="me", token="me/1"
        )
        claimed = conn.execute("SELECT COUNT(*) FROM deliveries WHERE claim_owner = 'me'")
        assert claimed.fetchone() == (len(answer[1]),)
    assert (disabled, [job.event_id for job in jobs]) == answer


def test_plain_claim_skips_rows_another_replica_is_claiming(postgres_dsn: str) -> None:
    with migrated_tx(postgres_dsn) as setup:
        pending_rows(setup, 6)
        setup.conn.commit()
    with (
        psycopg.connect(postgres_dsn) as first,
        psycopg.connect(postgres_dsn, autocommit=True) as second,
    ):
        mine = SqlTx(first, "format").claim_due(100.0, 60.0, 2, {"crm"})  # not yet committed
        _, theirs = SqlTx(second, "format").claim_lane(
            100.0, 60.0, 10, {"crm"}, subscriber_id="crm", owner="other", token="other/1"
        )
        first.commit()
    assert [job.event_id for job in mine] == ["evt0", "evt1"]
    assert [job.event_id for job in theirs] == ["evt2", "evt3", "evt4", "evt5"]


async def test_racing_first_messages_of_one_bsuid_make_one_contact(postgres_dsn: str) -> None:
    # Both transactions look the BSUID up before either creates it (the barrier), so one must
    # lose at commit or on the upsert and be retried, then find the winner's contact.
    store = PostgresStore(postgres_dsn)
    await store.open()
    barrier = threading.Barrier(2)
    first_try = threading.local()

    def resolve(tx: Any) -> ContactRow:
        resolver = IdentityResolver(tx, "acme", "ch", NOW)
        tx.contact_by_bsuid("acme", "US.1")
        if not getattr(first_try, "done", False):
            first_try.done = True
            barrier.wait(timeout=10)
        return resolver.observe(Observation(bsuid="US.1"))

    try:
        contacts = await asyncio.gather(store.transaction(resolve), store.transaction(resolve))
        assert contacts[0].id == contacts[1].id
        assert store.conflicts >= 1
        count = await store.read(lambda tx: tx.one("SELECT COUNT(*) FROM contacts")[0])
        assert count == 1
    finally:
        await store.close()


# -- fewer round trips: one statement alone ------------------------------------------------------
async def test_a_statement_alone_leaves_the_pooled_connection_transactional(
    postgres_dsn: str,
) -> None:
    # one connection: what the autocommitted poll used is what the next transaction gets
    store = PostgresStore(postgres_dsn, max_size=1)
    await store.open()
    try:
        first, second = _raw(1), _raw(2)
        await store.accept(first)  # one multi-row INSERT, autocommitted
        assert [raw.id for raw in await store.received(10)] == [first.id]
        assert await store.transaction(lambda tx: tx.conn.autocommit) is False

        def half_then_fail(tx: SqlTx) -> None:
            tx.insert_raws([second])
            raise RuntimeError("after the first statement")

        with pytest.raises(RuntimeError):
            await store.transaction(half_then_fail)
        # a transaction after an autocommitted statement still rolls back as a whole
        assert [raw.id for raw in await store.received(10)] == [first.id]
    finally:
        await store.close()


async def test_more_accepts_than_one_statement_holds_all_arrive(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn, linger=0.05)
    await store.open()
    try:
        await asyncio.gather(*(store.accept(_raw(n)) for n in range(ROWS + 5)))
        assert len(await store.received(ROWS * 2)) == ROWS + 5
    finally:
        await store.close()


def test_operational_events_commit_in_the_order_of_their_numbers(postgres_dsn: str) -> None:
    # they share one pseudo contact: a later number committed first would be delivered first
    with migrated_tx(postgres_dsn) as setup:
        setup.conn.commit()

    def event(event_id: str) -> dict[str, Any]:
        return {"id": event_id, "type": "bspgate.mapping.drift", "time": NOW}

    with psycopg.connect(postgres_dsn) as first, psycopg.connect(postgres_dsn) as second:
        earlier = SqlTx(first, "format").insert_operational_event(event("ops_1"), "{}", NOW)
        numbers: list[int] = []
        done = threading.Event()

        def another_writer() -> None:
            numbers.append(
                SqlTx(second, "format").insert_operational_event(event("ops_2"), "{}", NOW)
            )
            second.commit()
            done.set()

        thread = threading.Thread(target=another_writer)
        thread.start()
        assert not done.wait(0.5)  # it waits for the first writer's commit
        first.commit()
        assert done.wait(10)
        thread.join()
    assert numbers[0] > earlier


# -- retention racing a replay ---------------------------------------------------------------------
LATER = "2026-05-01T00:00:00Z"  # a retention cutoff after every event's stored_at


def _settled_events(dsn: str) -> None:
    """evt0 and evt1, delivered to `crm`: expired for a purge with cutoff LATER."""
    with migrated_tx(dsn) as setup:
        pending_rows(setup, 2)
        setup.execute("UPDATE deliveries SET state = 'delivered'")
        setup.conn.commit()


def _replay_to_late(conn: psycopg.Connection[Any]) -> int:
    """`replay --subscriber late` (subscriber added later): a delivery for every event."""
    return SqlTx(conn, "format").fan_out_missing(
        "late", event_id=None, type_=None, since=None, until=None, now=1.0, stamp=NOW, limit=100
    )


def _repeatable_read(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # as PostgresStore's pool
    return conn


def _deliveries_without_event(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT d.event_id, d.subscriber_id, d.state FROM deliveries d "
            "LEFT JOIN events e ON e.seq = d.event_seq WHERE e.seq IS NULL"
        ).fetchall()


def test_a_replay_committing_during_a_purge_leaves_no_delivery_without_its_event(
    postgres_dsn: str,
) -> None:
    # The purge chose evt0 and evt1 (all settled); a replay adds deliveries to them before the
    # purge deletes. A delivery left for a deleted event is never sent and holds back every
    # later event of its contact: the replay must wait for the purge, then find them gone.
    _settled_events(postgres_dsn)
    replayed: list[int | BaseException] = []
    with _repeatable_read(postgres_dsn) as purging, _repeatable_read(postgres_dsn) as replaying:

        def replay() -> None:
            try:
                replayed.append(_replay_to_late(replaying))
                replaying.commit()
            except psycopg.Error as exc:  # PostgresStore runs it again
                replaying.rollback()
                replayed.append(exc)

        tx = SqlTx(purging, "format")
        real_all, thread = tx.all, threading.Thread(target=replay)

        def all_then_replay(sql: str, params: Any = ()) -> list[Any]:
            rows = real_all(sql, params)
            if not thread.is_alive() and not replayed:  # the purge chose its events
                thread.start()
                thread.join(1.0)  # the replay may commit now, or wait for the purge
            return rows

        tx.all = all_then_replay  # type: ignore[method-assign]
        assert tx.purge("events", LATER, 100) == 2
        purging.commit()
        thread.join(10)
        if isinstance(replayed[0], BaseException):
            assert _replay_to_late(replaying) == 0  # run again: the events are gone
            replaying.commit()
    assert _deliveries_without_event(postgres_dsn) == []
    # it waited for the purge (its events were locked), which then deleted them under it
    assert isinstance(replayed[0], psycopg.errors.SerializationFailure)


def test_a_purge_keeps_the_events_a_replay_is_adding_deliveries_to(postgres_dsn: str) -> None:
    _settled_events(postgres_dsn)
    with _repeatable_read(postgres_dsn) as replaying, _repeatable_read(postgres_dsn) as purging:
        assert _replay_to_late(replaying) == 2  # not committed yet
        assert SqlTx(purging, "format").purge("events", LATER, 100) == 0
        purging.commit()
        replaying.commit()
    assert _deliveries_without_event(postgres_dsn) == []
    with psycopg.connect(postgres_dsn) as conn:  # the replay's deliveries can be sent
        jobs = SqlTx(conn, "format").claim_due(100.0, 60.0, 10, {"late"}, subscriber_id="late")
    assert sorted(job.event_id for job in jobs) == ["evt0", "evt1"]
