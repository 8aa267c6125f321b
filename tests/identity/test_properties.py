"""Property: random life stories, against a ground-truth model of who each person is.

A story has 1-3 people in one portfolio. Each starts with a BSUID and a phone (some first by phone
only, before BSUIDs; some first by username, BSUID only), writes messages (with phone, with it
hidden, or by phone only through a legacy provider), changes number (announced by an
identity-change event, or not), takes a number another person gave up (recycled), and has
webhooks retried. Every payload carries its event time; the
payloads arrive shuffled. The truth is a *lineage*: the identifiers one person had between
unannounced changes (a provider that announces nothing cannot link them, contract rule 6).

Asserted over every store: no contact ever holds two lineages' identifiers (0 wrong merges); all
payloads of a lineage end on one contact (0 splits: every lineage is paired in some payload);
the grouping of payloads into contacts and the final phone aliases are the same as when the
payloads arrive in event-time order; every event (and identity notice) names the right contact.
"""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bspgate.identity.resolver import MERGED, IdentityResolver, Observation
from bspgate.store.base import follow_merged
from bspgate.store.memory import MemoryTx
from bspgate.store.sql import SqlTx
from bspgate.store.sqlite import _migrate

PORTFOLIO = "acme"
# many sequences on memory and SQLite, fewer on PostgreSQL (override for a long local run)
EXAMPLES = int(os.environ.get("BSPGATE_IDENTITY_EXAMPLES", "1500"))


@dataclass(frozen=True, slots=True)
class Payload:
    at: str  # provider event time
    lineage: int  # the truth: whose payload this is
    kind: str  # "message" or "change"
    bsuid: str | None = None
    phone: str | None = None
    previous_bsuid: str | None = None


@dataclass(slots=True)
class Story:
    payloads: list[Payload] = field(default_factory=list)
    bsuids: dict[str, int] = field(default_factory=dict)  # bsuid -> lineage
    phones: dict[int, set[str]] = field(default_factory=dict)  # lineage -> phones it held


def build_story(rng: random.Random) -> Story:
    story = Story()
    clock = [0]
    counters = {"bsuid": 0, "phone": 0, "lineage": 0}

    def tick() -> str:
        clock[0] += 1
        return f"2026-04-02T{clock[0] // 3600:02d}:{clock[0] // 60 % 60:02d}:{clock[0] % 60:02d}Z"

    def fresh(kind: str) -> str:
        counters[kind] += 1
        return f"US.{counters[kind]}" if kind == "bsuid" else f"+1555000{counters[kind]:04d}"

    def lineage() -> int:
        counters["lineage"] += 1
        return counters["lineage"]

    free: list[str] = []  # numbers given up, which someone else may take (recycled)
    # Numbers used by phone-only (legacy) payloads are never recycled, and recycled numbers
    # never go to a legacy provider: a legacy payload from a number's new holder that arrives
    # before anything else of theirs can only land on the old holder (an unannounced change
    # gives the gateway nothing to tell them apart by), whatever the rules.
    never_recycle: set[str] = set()
    recycled: set[str] = set()
    people: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 3)):
        person = {"lineage": lineage(), "bsuid": fresh("bsuid"), "phone": fresh("phone")}
        people.append(person)
        story.bsuids[person["bsuid"]] = person["lineage"]
        story.phones[person["lineage"]] = {person["phone"]}

    def say(person: dict[str, Any], bsuid: bool, phone: bool) -> None:
        story.payloads.append(
            Payload(
                tick(),
                person["lineage"],
                "message",
                person["bsuid"] if bsuid else None,
                person["phone"] if phone else None,
            )
        )

    for person in people:
        if rng.random() < 0.4:  # known before BSUIDs: by phone only
            never_recycle.add(person["phone"])
            for _ in range(rng.randint(1, 2)):
                say(person, False, True)
        if rng.random() < 0.3:  # first seen by username: BSUID only
            say(person, True, False)
        say(person, True, True)  # paired in one payload
    for _ in range(rng.randint(3, 18)):
        person = rng.choice(people)
        roll = rng.random()
        if roll < 0.45:
            say(person, True, True)
        elif roll < 0.65:
            say(person, True, False)  # phone hidden
        elif roll < 0.75:
            if person["phone"] not in recycled:  # a legacy provider, later on: phone only
                never_recycle.add(person["phone"])
                say(person, False, True)
        else:  # a number change: a new BSUID with a new (maybe recycled) number
            if person["phone"] not in never_recycle:
                free.append(person["phone"])
            taken = [p for p in free if p != person["phone"]]
            phone = rng.choice(taken) if taken and rng.random() < 0.6 else fresh("phone")
            if phone in free:
                free.remove(phone)
                recycled.add(phone)
            previous, new = person["bsuid"], fresh("bsuid")
            if rng.random() < 0.6:  # announced: same person, same contact
                story.payloads.append(
                    Payload(
                        tick(),
                        person["lineage"],
                        "change",
                        new,
                        phone if rng.random() < 0.5 else None,
                        previous_bsuid=previous,
                    )
                )
            else:  # unannounced: the gateway cannot know; a new lineage starts
                person["lineage"] = lineage()
                story.phones[person["lineage"]] = set()
            person["bsuid"], person["phone"] = new, phone
            story.bsuids[new] = person["lineage"]
            story.phones[person["lineage"]].add(phone)
            say(person, True, True)
    for payload in list(story.payloads):  # retries: the same webhook again, same event time
        if rng.random() < 0.15:
            story.payloads.append(payload)
    return story


def run(tx: Any, story: Story, order: list[Payload]) -> tuple[list[str], dict[str, Any]]:
    """Feed payloads in `order`; answers each payload's final contact and the phone aliases."""
    contact_lineage: dict[str, int] = {}  # contact id -> the one lineage it may be
    resolved: list[tuple[Payload, str]] = []

    def claim(contact_id: str, lineage: int, what: str) -> None:
        owner = contact_lineage.setdefault(contact_id, lineage)
        assert owner == lineage, f"wrong merge: {what} puts lineage {lineage} on {owner}'s contact"

    for number, payload in enumerate(order):
        now = f"2026-05-01T00:{number // 60 % 60:02d}:{number % 60:02d}Z"
        resolver = IdentityResolver(tx, PORTFOLIO, "ch", now)
        if payload.kind == "change":
            contact, _, _ = resolver.relink(
                Observation(bsuid=payload.bsuid, phone=payload.phone),
                payload.previous_bsuid,
                None,
                payload.at,
            )
        else:
            seen = Observation(bsuid=payload.bsuid, phone=payload.phone)
            contact = resolver.observe(seen, payload.at)
        for notice in resolver.take_notices():
            if notice.kind == MERGED:
                absorbed = notice.data["merged"]["id"]
                if absorbed in contact_lineage:
                    claim(notice.contact.id, contact_lineage[absorbed], "a merge")
        claim(contact.id, payload.lineage, f"payload {payload}")
        resolved.append((payload, contact.id))
        _check_holdings(tx, story, contact_lineage)
    final = [str(_live(tx, cid)) for _, cid in resolved]
    by_lineage: dict[int, set[str]] = {}
    for (payload, _), cid in zip(resolved, final, strict=True):
        by_lineage.setdefault(payload.lineage, set()).add(cid)
    for lineage, contacts in by_lineage.items():
        assert len(contacts) == 1, f"split: lineage {lineage} ends as {len(contacts)} contacts"
    owners = [c for contacts in by_lineage.values() for c in contacts]
    assert len(owners) == len(set(owners)), "two lineages end on one contact"
    phones = sorted({p for ps in story.phones.values() for p in ps})
    aliases = {}
    for phone in phones:
        owner = tx.contact_by_phone(PORTFOLIO, phone)
        aliases[phone] = None if owner is None else _lineage_of(owner.id, resolved, final)
    ordered = [_lineage_of(cid, resolved, final) for cid in final]
    return [str(x) for x in ordered], aliases


def _lineage_of(contact_id: str, resolved: list[tuple[Payload, str]], final: list[str]) -> int:
    for (payload, _), cid in zip(resolved, final, strict=True):
        if cid == contact_id:
            return payload.lineage
    return -1  # a contact no payload ended on (absorbed, or holding nothing of its own)


def _live(tx: Any, contact_id: str) -> str:
    found = follow_merged(tx.contact(contact_id), tx.contact)
    assert found is not None
    return found.id


def _check_holdings(tx: Any, story: Story, contact_lineage: dict[str, int]) -> None:
    """No contact holds two lineages' identifiers at once."""
    for bsuid, lineage in story.bsuids.items():
        contact = tx.contact_by_bsuid(PORTFOLIO, bsuid)
        if contact is None:
            continue
        owner = contact_lineage.get(contact.id)
        assert owner in (None, lineage), f"{bsuid} of lineage {lineage} on {owner}'s contact"
        if contact.phone is not None and contact.bsuid == bsuid:
            assert contact.phone in story.phones[lineage], (
                f"contact of {bsuid} holds {contact.phone}, never lineage {lineage}'s"
            )


def check(open_tx: Any, seed: int) -> None:
    """`open_tx()` is a context manager giving an empty store's `StoreTx`."""
    rng = random.Random(seed)
    story = build_story(rng)
    shuffled = list(story.payloads)
    rng.shuffle(shuffled)
    in_time = sorted(story.payloads, key=lambda p: p.at)
    with open_tx() as tx:
        grouping_shuffled, aliases_shuffled = run(tx, story, shuffled)
    with open_tx() as tx:
        grouping_in_time, aliases_in_time = run(tx, story, in_time)
    # the same grouping whatever the arrival order: compare per payload
    key_s = dict(zip(map(id, shuffled), grouping_shuffled, strict=True))
    key_t = dict(zip(map(id, in_time), grouping_in_time, strict=True))
    assert {k: key_s[k] for k in key_t} == key_t
    assert aliases_shuffled == aliases_in_time


seeds = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=EXAMPLES, deadline=None)
@given(seeds)
def test_life_stories_in_memory(seed: int) -> None:
    check(lambda: nullcontext(MemoryTx()), seed)


@contextmanager
def _sqlite_tx(folder: str) -> Iterator[Any]:
    conn = sqlite3.connect(Path(folder) / "p.db", isolation_level=None)
    try:
        tx = SqlTx(conn)
        conn.execute("BEGIN")
        _migrate(tx)
        yield tx
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@settings(
    max_examples=max(EXAMPLES // 5, 20),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(seeds)
def test_life_stories_in_sqlite(seed: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        check(lambda: _sqlite_tx(folder), seed)


# PostgreSQL: tests/test_postgres_properties.py (one migrated schema, a rollback per story)
