"""What the rest of bspgate may ask of a store, as Protocols, and the rows it answers with.

Two levels. `StoreTx` is synchronous and runs inside one database transaction: the ingest
pipeline and the identity resolver call it (they are pure logic over it). `Store` is the async
face the server uses: it runs `StoreTx` functions as transactions and answers reads. Backends:
`sqlite.py` (one writer thread, group commit) and `postgres.py`; `memory.py` serves `normalize`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")

# Group commit at moderate rates (`serve`: the SQLite inbox, PostgreSQL's accepts): a flush that
# finds fewer than `LINGER_BELOW` webhooks waiting waits `ACCEPT_LINGER` seconds for more before
# it commits. Each commit is an fsync and a wake-up of a thread; at 700-1,800 webhooks/s most
# commits held one or two webhooks, and the server spent a fifth of its CPU on them
# (docs/performance.md). Under saturation batches are larger and nothing waits (with 16 as the
# bound, the saturating ingress benchmark's p99 was 1.45-1.56x the bare route's; with 4, 1.29x).
# the delivery states a subscriber's backlog counts (`subscriber_backlog`): open, then dead
BACKLOG_STATES = ("pending", "inflight", "held", "dead")
# every state a delivery row can be in (the backlog's, then the finished ones)
DELIVERY_STATES = (*BACKLOG_STATES, "delivered", "expired", "erased")


def empty_backlog() -> dict[str, Any]:
    """A subscriber's backlog with nothing in it: 0 per state, no times."""
    return {**dict.fromkeys(BACKLOG_STATES, 0), "next_attempt_at": None, "oldest_open_at": None}


ACCEPT_LINGER = 0.002
LINGER_BELOW = 4


@dataclass(slots=True)
class ContactRow:
    id: str
    portfolio: str
    bsuid: str | None = None
    parent_bsuid: str | None = None
    phone: str | None = None
    username: str | None = None
    name: str | None = None
    merged_into: str | None = None
    # identity rule 9: the provider event time of the evidence behind the current BSUID and the
    # current phone alias (a fact is overturned only by evidence at least as new)
    bsuid_at: str | None = None
    phone_at: str | None = None
    created_at: str | None = None
    # the same for the current username and name (rule 9: the newest evidence is kept)
    username_at: str | None = None
    name_at: str | None = None

    def copy(self) -> ContactRow:
        """A copy (`dataclasses.replace` inspects the fields on every call: 6x slower, and
        processing copies a contact about three times a webhook)."""
        return ContactRow(
            self.id, self.portfolio, self.bsuid, self.parent_bsuid, self.phone, self.username,
            self.name, self.merged_into, self.bsuid_at, self.phone_at, self.created_at,
            self.username_at, self.name_at,
        )  # fmt: skip


MAX_MERGE_HOPS = 16


# how `phone_holder_at` answers between spans and before them (see there)
Holding = Literal["at", "next", "strict"]


def phone_holder_at(
    rows: list[tuple[str, str, str | None, str | None]], at: str, holding: Holding = "at"
) -> str | None:
    """Who held a phone at event time `at`, from its alias rows (contact id, state, taught at,
    ended at; in insertion order): the alias whose time span holds `at`; before every span, the
    first holder; after the last one ended, nobody (the number was given up).

    Between two spans (a holder gave the number up, a later one took it) nobody held it; with
    `holding="next"` the answer is then the later holder, as before every span. A legacy
    payload of that time is theirs: had it arrived on time, it would have made a phone-only
    contact that the later holder's BSUID then joined (rule 4 or 8).

    `holding="strict"`: only a span that holds `at` from a known start. An announced number
    change names who held its old number until then; a holder whose evidence starts later (the
    number's next holder, perhaps one that announced it as its own new number), or who held it
    for an unknown time before some later change, is not known to be them.
    """
    spans = sorted(
        (since or "", index, contact_id, None if state == "active" else (until or ""))
        for index, (contact_id, state, since, until) in enumerate(rows)
    )
    # strict: a span whose start is unknown (a change's announced old number: theirs until the
    # change, since no one knows when) is no evidence that they held it at `at`
    strict = holding == "strict"
    held = [
        s for s in spans if s[0] <= at and (s[3] is None or s[3] >= at) and (s[0] or not strict)
    ]
    if held:
        # the newest evidence that held it then (a past span learned late may start after
        # an alias that is still active)
        return held[-1][2]
    if strict:
        return None
    later = [s for s in spans if s[0] > at]
    if later and (holding == "next" or len(later) == len(spans)):
        return later[0][2]  # the next holder (before every span: the first)
    return None


def follow_merged(
    contact: ContactRow | None, get: Callable[[str], ContactRow | None]
) -> ContactRow | None:
    """The contact a (possibly merged) contact resolves to: its `merged_into` chain, followed.

    The one walk every reader uses (stores, pipeline, sends): a merged contact answers as the
    survivor. `get` loads a contact by id; a broken or cyclic chain stops after a bounded walk.
    """
    hops = 0
    while contact is not None and contact.merged_into and hops < MAX_MERGE_HOPS:
        contact = get(contact.merged_into)
        hops += 1
    return contact


@dataclass(frozen=True, slots=True)
class RawRecord:
    id: str
    channel_id: str
    provider: str
    received_at: str
    content_type: str
    body: bytes
    state: str = "processed"
    reason: str | None = None
    event_count: int = 0
    traceparent: str | None = None  # W3C trace context the webhook came with (or a new one)


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """A claimed delivery: what the dispatcher needs to send it once."""

    id: str
    event_id: str
    subscriber_id: str
    contact_id: str
    attempts: int
    body: str
    token: str = ""  # the claim token: only this claim may finish the row
    due: float = 0.0  # when the row was due (a probe may claim a row before its time)


class StoreTx(Protocol):
    """Operations inside one transaction. Identity methods are scoped by portfolio."""

    # identity
    def contact_by_bsuid(self, portfolio: str, bsuid: str) -> ContactRow | None: ...
    def contact_by_phone(self, portfolio: str, phone: str) -> ContactRow | None: ...
    def contact(self, contact_id: str) -> ContactRow | None: ...
    def create_contact(self, portfolio: str, now: str) -> ContactRow: ...
    def save_contact(self, contact: ContactRow, now: str) -> None: ...
    def link_bsuid(
        self,
        contact: ContactRow,
        bsuid: str,
        now: str,
        channel_id: str,
        *,
        current: bool,
        evidence: str | None = None,
    ) -> None: ...
    def bsuid_retired_at(self, portfolio: str, bsuid: str) -> str | None: ...
    def link_phone(
        self,
        contact: ContactRow,
        phone: str,
        now: str,
        channel_id: str,
        evidence: str | None = None,
    ) -> None: ...
    def end_phone(
        self,
        contact_id: str,
        phone: str,
        now: str,
        state: str,
        reason: str,
        evidence: str | None = None,
    ) -> None: ...
    def phone_owner_at(
        self, portfolio: str, phone: str, at: str, holding: Holding = "at"
    ) -> ContactRow | None: ...
    def phone_taught_after(self, portfolio: str, phone: str, at: str, contact_id: str) -> bool: ...
    def phone_known_since(self, contact_id: str, phone: str, at: str) -> None: ...
    def record_past_phone(
        self,
        contact: ContactRow,
        phone: str,
        now: str,
        channel_id: str,
        since: str,
        until: str,
        *,
        moved: bool = False,
    ) -> None: ...
    def touch_identifiers(self, contact: ContactRow, now: str) -> None: ...
    def touch_bsuid(self, portfolio: str, bsuid: str, now: str) -> None: ...
    def merge_rows(self, absorbed_id: str, survivor_id: str, now: str) -> None: ...
    def add_history(self, contact_id: str, now: str, kind: str, detail: dict[str, Any]) -> None: ...
    def contact_for_send(self, channel_id: str, provider_message_id: str) -> str | None: ...
    def mark_inbound(self, contact_id: str, channel_id: str, at: str) -> None: ...
    def release_held(self, contact_id: str, phone: str, now: float, stamp: str) -> int: ...
    # events
    def event_exists(self, event_id: str) -> bool: ...
    def insert_raw(self, raw: RawRecord) -> None: ...
    def insert_event(
        self, event: dict[str, Any], body: str, now: str, superseded: bool = False
    ) -> int: ...
    def advance_status(
        self, channel_id: str, message_id: str, status: str, rank: int, stamp: str
    ) -> bool: ...
    def insert_delivery(
        self,
        event_seq: int,
        event_id: str,
        subscriber_id: str,
        contact_id: str,
        state: str,
        due: float,
        now: str,
    ) -> None: ...


class Store(Protocol):
    """The async store the server holds for its lifetime.

    `transaction` and `read` hand their function the backend's full statement set (`SqlTx`,
    which implements `StoreTx`). `statement` runs a function of ONE statement: on PostgreSQL
    outside a transaction (two round trips fewer), on SQLite as a transaction. The staged
    ingest adds `accept` (store a raw payload as received, durably), `received` (what waits
    for processing, in arrival order) and `settle_received` (after processing committed).
    `queue_counts` answers rows by state, the payloads waiting for processing among them
    (`raw_received`), and the oldest undelivered event's time (`/metrics`: of the configured
    subscribers, passed as `subscriber_ids`).
    """

    @property
    def inboxed(self) -> bool: ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def transaction(self, work: Callable[[Any], T]) -> T: ...
    async def statement(self, work: Callable[[Any], T]) -> T: ...
    async def read(self, work: Callable[[Any], T]) -> T: ...
    def read_sync(self, work: Callable[[Any], T]) -> T: ...
    async def ping(self) -> bool: ...
    async def accept(self, raw: RawRecord) -> None: ...
    async def received(self, limit: int) -> list[RawRecord]: ...
    async def settle_received(self, raw_ids: list[str]) -> None: ...
    async def waiting_raw(self, raw_id: str) -> RawRecord | None: ...
    async def queue_counts(
        self, subscriber_ids: Sequence[str] | None = None
    ) -> tuple[dict[str, int], str | None]: ...
