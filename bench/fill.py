"""Bulk rows for the benchmarks, written with plain SQL (no pipeline), for setup speed.

`fill_history` stores `count` past webhooks as the gateway would have left them (raw payload,
event, delivered outbox row, contacts with their BSUIDs and phones); `fill_outbox` stores
`count` events with one pending delivery each, ready for a dispatcher. Both work on SQLite and
PostgreSQL stores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

CHUNK = 20_000
STAMP = "2026-01-01T00:00:00.000000Z"


def event_body(n: int, contact: str) -> str:
    """A canonical CloudEvent of an inbound text message (~1.1 KB, like the real ones)."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": f"evt_bench_{n:09d}",
            "type": "whatsapp.message.received",
            "source": "/channels/cloud-us",
            "subject": contact,
            "time": STAMP,
            "datacontenttype": "application/json",
            "data": {
                "channel": {
                    "id": "cloud-us",
                    "provider": "cloudapi",
                    "portfolio": "acme",
                    "business_phone": "+15550001111",
                },
                "contact": {
                    "id": contact,
                    "bsuid": f"US.1349120865{n % 100_000:010d}",
                    "parent_bsuid": None,
                    "phone": None,
                    "username": None,
                    "name": "Sheena Nelson",
                },
                "message": {
                    "id": f"wamid.bench.{n}",
                    "type": "text",
                    "timestamp": STAMP,
                    "text": "Does it come in another color? " * 20,
                },
                "raw_id": f"raw_bench_{n:09d}",
            },
        }
    ).decode()


def _executemany(tx: Any, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    if tx.dialect == "postgres":
        with tx.conn.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)
    else:
        tx.conn.executemany(sql, rows)


def _chunks(start: int, stop: int) -> Iterator[range]:
    for first in range(start, stop, CHUNK):
        yield range(first, min(first + CHUNK, stop))


def history_chunk(tx: Any, numbers: range, contacts: int) -> None:
    """Past traffic: raw payloads, events, delivered outbox rows; contacts on first sight."""
    raw_body = b'{"object":"whatsapp_business_account","entry":[]}' + b" " * 1200
    _executemany(
        tx,
        "INSERT INTO raw_payloads (id, channel_id, provider, received_at, content_type, body, "
        "state, event_count) VALUES (?, 'cloud-us', 'cloudapi', ?, 'application/json', ?, "
        "'processed', 1)",
        [(f"raw_bench_{n:09d}", STAMP, raw_body) for n in numbers],
    )
    _executemany(
        tx,
        "INSERT INTO events (id, type, channel_id, contact_id, time, stored_at, raw_id, body) "
        "VALUES (?, 'whatsapp.message.received', 'cloud-us', ?, ?, ?, ?, ?)",
        [
            (
                f"evt_bench_{n:09d}",
                f"ct_bench_{n % contacts:08d}",
                STAMP,
                STAMP,
                f"raw_bench_{n:09d}",
                event_body(n, f"ct_bench_{n % contacts:08d}"),
            )
            for n in numbers
        ],
    )
    first, last = f"evt_bench_{numbers[0]:09d}", f"evt_bench_{numbers[-1]:09d}"
    tx.execute(
        "INSERT INTO deliveries (id, event_seq, event_id, subscriber_id, contact_id, state, "
        "attempts, next_attempt_at, created_at, updated_at) SELECT 'dlv_' || id, seq, id, "
        "'crm', contact_id, 'delivered', 1, 0, ?, ? FROM events WHERE id BETWEEN ? AND ?",
        (STAMP, STAMP, first, last),
    )
    new = [n for n in numbers if n < contacts]
    if new:
        _executemany(
            tx,
            "INSERT INTO contacts (id, portfolio, bsuid, phone, name, created_at, updated_at, "
            "bsuid_at, phone_at) VALUES (?, 'acme', ?, ?, 'Sheena Nelson', ?, ?, ?, ?)",
            [
                (f"ct_bench_{n:08d}", f"US.9{n:019d}", f"1999{n:08d}", STAMP, STAMP, STAMP, STAMP)
                for n in new
            ],
        )
        _executemany(
            tx,
            "INSERT INTO contact_bsuids (portfolio, bsuid, contact_id, state, first_seen, "
            "last_seen, channel_id) VALUES ('acme', ?, ?, 'current', ?, ?, 'cloud-us')",
            [(f"US.9{n:019d}", f"ct_bench_{n:08d}", STAMP, STAMP) for n in new],
        )
        _executemany(
            tx,
            "INSERT INTO contact_phones (portfolio, phone, contact_id, state, first_seen, "
            "last_seen, channel_id, evidence_at) VALUES ('acme', ?, ?, 'active', ?, ?, "
            "'cloud-us', ?)",
            [(f"1999{n:08d}", f"ct_bench_{n:08d}", STAMP, STAMP, STAMP) for n in new],
        )


async def fill_history(store: Any, count: int, contacts: int = 100_000) -> None:
    for numbers in _chunks(0, count):
        await store.transaction(lambda tx, numbers=numbers: history_chunk(tx, numbers, contacts))


def outbox_chunk(
    tx: Any, numbers: range, contacts: int, due: float, subscribers: tuple[str, ...] = ("crm",)
) -> None:
    _executemany(
        tx,
        "INSERT INTO events (id, type, channel_id, contact_id, time, stored_at, raw_id, body) "
        "VALUES (?, 'whatsapp.message.received', 'cloud-us', ?, ?, ?, ?, ?)",
        [
            (
                f"evt_out_{n:09d}",
                f"ct_out_{n % contacts:08d}",
                STAMP,
                STAMP,
                f"raw_out_{n:09d}",
                event_body(n, f"ct_out_{n % contacts:08d}"),
            )
            for n in numbers
        ],
    )
    first, last = f"evt_out_{numbers[0]:09d}", f"evt_out_{numbers[-1]:09d}"
    for subscriber in subscribers:
        tx.execute(
            "INSERT INTO deliveries (id, event_seq, event_id, subscriber_id, contact_id, state, "
            "attempts, next_attempt_at, created_at, updated_at) SELECT 'dlv_' || ? || id, seq, "
            "id, ?, contact_id, 'pending', 0, ?, ?, ? FROM events WHERE id BETWEEN ? AND ?",
            ("" if subscriber == "crm" else f"{subscriber}_", subscriber, due, STAMP, STAMP,
             first, last),
        )  # fmt: skip


async def fill_outbox(
    store: Any,
    start: int,
    count: int,
    contacts: int,
    due: float,
    subscribers: tuple[str, ...] = ("crm",),
) -> None:
    for numbers in _chunks(start, start + count):
        await store.transaction(
            lambda tx, numbers=numbers: outbox_chunk(tx, numbers, contacts, due, subscribers)
        )
