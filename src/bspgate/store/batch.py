"""`BatchTx`: one transaction over many webhooks, with one statement per table where it can.

The ingest pipeline and the identity resolver run over it unchanged (it is a `StoreTx`). It:

- answers `event_exists` from one prefetch of every event id of the batch (and what the batch
  itself stored);
- buffers append-only rows (events, deliveries, contact history, conversation marks, last-seen
  touches) and writes them at `flush()` with one multi-row statement per table (events with
  `RETURNING seq`, so the deliveries find their event);
- defers a new contact's INSERT to the first moment it is needed (usually its `save_contact`,
  so a new contact costs one statement instead of two);
- answers identity lookups from a write-through cache: `prefetch_identities` loads the owners
  of every BSUID and phone the batch names with two queries, and every identity write updates
  the cache as it updates the database (a lookup the cache cannot answer asks the database);
- skips retiring other BSUIDs of a contact created in this batch (it has none yet).

Identity writes (contacts, BSUIDs, phones, held deliveries) go straight to the database in call
order: the rules read what they wrote. The caller runs everything in one database transaction,
so a crash anywhere leaves nothing of the batch behind.
"""

from __future__ import annotations

from typing import Any

from bspgate.ids import new_id
from bspgate.store.base import ContactRow, Holding, RawRecord
from bspgate.store.sql import SqlTx
from bspgate.store.sql_base import history_detail

_EVENT_COLUMNS = "id, type, channel_id, contact_id, time, stored_at, raw_id, body, superseded"
_DELIVERY_COLUMNS = (
    "id, event_seq, event_id, subscriber_id, contact_id, state, next_attempt_at, created_at, "
    "updated_at"
)


class BatchTx:
    """A `StoreTx` that batches statements; call `flush()` before the transaction commits."""

    def __init__(self, tx: SqlTx) -> None:
        self.tx = tx
        self._checked: set[str] = set()
        self._existing: set[str] = set()
        self._events: list[tuple[Any, ...]] = []
        self._deliveries: list[tuple[int, tuple[Any, ...]]] = []  # (event index, row)
        self._ready: list[tuple[Any, ...]] = []  # delivery rows whose event seq is known
        self._history: list[tuple[Any, ...]] = []
        self._inbound: dict[tuple[str, str], str] = {}
        self._touch_bsuids: set[tuple[str, str]] = set()
        self._touch_phones: set[tuple[str, str, str]] = set()
        self._touch_at = ""
        self._new: dict[str, tuple[ContactRow, str]] = {}  # contacts created, not yet inserted
        self._created: set[str] = set()  # contacts created in this batch
        self._current: set[str] = set()  # ... of which a current BSUID was linked
        # the cache: (portfolio, bsuid|phone) -> owning contact id (None: known to be absent)
        self._bsuid_owner: dict[tuple[str, str], str | None] = {}
        self._phone_owner: dict[tuple[str, str], str | None] = {}
        # (portfolio, phone) pairs known to have no alias row at all, active or ended: nobody
        # ever held them, so "who held it then" needs no query
        self._never_held: set[tuple[str, str]] = set()
        self._rows: dict[str, ContactRow] = {}

    # -- events ---------------------------------------------------------------------------------
    def prefetch_events(self, event_ids: list[str]) -> None:
        self._existing |= self.tx.existing_events(event_ids)
        self._checked.update(event_ids)

    def event_exists(self, event_id: str) -> bool:
        if event_id not in self._checked:
            self.prefetch_events([event_id])
        return event_id in self._existing

    def insert_event(
        self, event: dict[str, Any], body: str, now: str, superseded: bool = False
    ) -> int:
        self._existing.add(event["id"])
        self._checked.add(event["id"])
        self._events.append(
            (event["id"], event["type"], event["data"]["channel"]["id"], event["subject"],
             event["time"], now, event["data"]["raw_id"], body, 1 if superseded else 0)
        )  # fmt: skip
        return -len(self._events)  # a placeholder: the real seq is known at flush

    def insert_delivery(
        self,
        event_seq: int,
        event_id: str,
        subscriber_id: str,
        contact_id: str,
        state: str,
        due: float,
        now: str,
    ) -> None:
        row = (new_id("dlv"), event_seq, event_id, subscriber_id, contact_id, state, due, now, now)
        if event_seq > 0:  # an event stored directly (operational): its seq is real
            self._ready.append(row)
            return
        self._deliveries.append((-event_seq - 1, row))

    def insert_operational_event(self, event: dict[str, Any], body: str, now: str) -> int:
        """A `bspgate.*` event (rare: a quarantine, drift): stored at once, seq real."""
        return self.tx.insert_operational_event(event, body, now)

    def advance_status(
        self, channel_id: str, message_id: str, status: str, rank: int, stamp: str
    ) -> bool:
        return self.tx.advance_status(channel_id, message_id, status, rank, stamp)

    def insert_raw(self, raw: RawRecord) -> None:
        self.tx.insert_raws([raw])

    # -- identity reads (write-through cache) ---------------------------------------------------
    def prefetch_identities(
        self, bsuids: set[tuple[str, str]], phones: set[tuple[str, str]]
    ) -> None:
        """Load the owners of these (portfolio, BSUID) and (portfolio, phone) pairs at once."""
        for key, row in self.tx.owners_by_bsuid(sorted(bsuids - self._bsuid_owner.keys())):
            self._bsuid_owner[key] = row.id
            self._rows.setdefault(row.id, row)
        for key in bsuids:
            self._bsuid_owner.setdefault(key, None)
        asked, held = phones - self._phone_owner.keys(), set[tuple[str, str]]()
        for key, row in self.tx.owners_by_phone(sorted(asked), held):
            self._phone_owner[key] = row.id
            self._rows.setdefault(row.id, row)
        self._never_held |= asked - held
        for key in phones:
            self._phone_owner.setdefault(key, None)

    def _row(self, contact_id: str | None) -> ContactRow | None:
        seen = 0
        while contact_id is not None:
            row = self._rows.get(contact_id)
            if row is None:
                self._insert_new()
                row = self.tx.contact(contact_id)
                if row is None:
                    return None
                self._rows[contact_id] = row
            if not row.merged_into or seen >= 8:  # a merged contact answers as the survivor
                return row.copy()
            contact_id, seen = row.merged_into, seen + 1
        return None

    def contact_by_bsuid(self, portfolio: str, bsuid: str) -> ContactRow | None:
        key = (portfolio, bsuid)
        if key not in self._bsuid_owner:
            self._insert_new()
            found = self.tx.contact_by_bsuid(portfolio, bsuid)
            self._bsuid_owner[key] = None if found is None else found.id
        return self._row(self._bsuid_owner[key])

    def contact_by_phone(self, portfolio: str, phone: str) -> ContactRow | None:
        key = (portfolio, phone)
        if key not in self._phone_owner:
            self._insert_new()
            found = self.tx.contact_by_phone(portfolio, phone)
            self._phone_owner[key] = None if found is None else found.id
        return self._row(self._phone_owner[key])

    def contact(self, contact_id: str) -> ContactRow | None:
        return self._row(contact_id)

    def contact_for_send(self, channel_id: str, provider_message_id: str) -> str | None:
        return self.tx.contact_for_send(channel_id, provider_message_id)

    # -- identity writes (direct, in order; the cache follows) ----------------------------------

    def _insert_new(self, saving: ContactRow | None = None, now: str = "") -> None:
        for contact_id, (row, created) in list(self._new.items()):
            final = saving if saving is not None and saving.id == contact_id else row
            self.tx.execute(
                "INSERT INTO contacts (id, portfolio, bsuid, parent_bsuid, phone, username, name, "
                "merged_into, bsuid_at, phone_at, username_at, name_at, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (final.id, final.portfolio, final.bsuid, final.parent_bsuid, final.phone,
                 final.username, final.name, final.merged_into, final.bsuid_at, final.phone_at,
                 final.username_at, final.name_at, created, now or created),
            )  # fmt: skip
        self._new.clear()

    def create_contact(self, portfolio: str, now: str) -> ContactRow:
        contact = ContactRow(id=new_id("ct"), portfolio=portfolio, created_at=now)
        self._new[contact.id] = (contact, now)
        self._created.add(contact.id)
        self._rows[contact.id] = contact.copy()
        return contact

    def save_contact(self, contact: ContactRow, now: str) -> None:
        self._rows[contact.id] = contact.copy()
        if contact.id in self._new:
            self._insert_new(saving=contact, now=now)
            return
        self._insert_new()
        self.tx.save_contact(contact, now)

    def link_bsuid(
        self,
        contact: ContactRow,
        bsuid: str,
        now: str,
        channel_id: str,
        *,
        current: bool,
        evidence: str | None = None,
    ) -> None:
        self._bsuid_owner[(contact.portfolio, bsuid)] = contact.id
        if current and contact.id in self._created and contact.id not in self._current:
            # a contact made in this batch has no other BSUID to retire
            self._current.add(contact.id)
            self.tx.insert_bsuid_link(contact, bsuid, now, channel_id)
            return
        if current:
            self._current.add(contact.id)
        self.tx.link_bsuid(contact, bsuid, now, channel_id, current=current, evidence=evidence)

    def bsuid_retired_at(self, portfolio: str, bsuid: str) -> str | None:
        return self.tx.bsuid_retired_at(portfolio, bsuid)

    def link_phone(
        self,
        contact: ContactRow,
        phone: str,
        now: str,
        channel_id: str,
        evidence: str | None = None,
    ) -> None:
        self._never_held.discard((contact.portfolio, phone))
        self._phone_owner[(contact.portfolio, phone)] = contact.id
        self.tx.link_phone(contact, phone, now, channel_id, evidence)

    def end_phone(
        self,
        contact_id: str,
        phone: str,
        now: str,
        state: str,
        reason: str,
        evidence: str | None = None,
    ) -> None:
        for key, owner in self._phone_owner.items():
            if key[1] == phone and owner == contact_id:
                self._phone_owner[key] = None
        self.tx.end_phone(contact_id, phone, now, state, reason, evidence)

    def phone_owner_at(
        self, portfolio: str, phone: str, at: str, holding: Holding = "at"
    ) -> ContactRow | None:
        if (portfolio, phone) in self._never_held:
            return None
        self._insert_new()
        return self.tx.phone_owner_at(portfolio, phone, at, holding)

    def phone_taught_after(self, portfolio: str, phone: str, at: str, contact_id: str) -> bool:
        return self.tx.phone_taught_after(portfolio, phone, at, contact_id)

    def phone_known_since(self, contact_id: str, phone: str, at: str) -> None:
        self.tx.phone_known_since(contact_id, phone, at)

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
    ) -> None:
        self._never_held.discard((contact.portfolio, phone))
        self.tx.record_past_phone(contact, phone, now, channel_id, since, until, moved=moved)

    def merge_rows(self, absorbed_id: str, survivor_id: str, now: str) -> None:
        """Rule 8 moves rows of many tables: everything buffered goes first, the cache after."""
        self.flush()
        self.tx.merge_rows(absorbed_id, survivor_id, now)
        self._bsuid_owner.clear()
        self._phone_owner.clear()
        self._rows.clear()

    def release_held(self, contact_id: str, phone: str, now: float, stamp: str) -> int:
        self._insert_new()
        self._flush_outbox()  # held rows of this batch must exist to be released
        return self.tx.release_held(contact_id, phone, now, stamp)

    # -- identity appends (buffered) ------------------------------------------------------------
    def touch_identifiers(self, contact: ContactRow, now: str) -> None:
        if contact.bsuid:
            self.touch_bsuid(contact.portfolio, contact.bsuid, now)
        if contact.phone:
            self._touch_at = max(self._touch_at, now)
            self._touch_phones.add((contact.portfolio, contact.phone, contact.id))

    def touch_bsuid(self, portfolio: str, bsuid: str, now: str) -> None:
        self._touch_at = max(self._touch_at, now)
        self._touch_bsuids.add((portfolio, bsuid))

    def add_history(self, contact_id: str, now: str, kind: str, detail: dict[str, Any]) -> None:
        self._history.append((contact_id, now, kind, history_detail(detail)))

    def mark_inbound(self, contact_id: str, channel_id: str, at: str) -> None:
        key = (contact_id, channel_id)
        self._inbound[key] = max(at, self._inbound.get(key, at))

    # -- flush ----------------------------------------------------------------------------------
    def _flush_outbox(self) -> None:
        if self._ready:
            self.tx.insert_rows(
                "deliveries", _DELIVERY_COLUMNS, self._ready,
                " ON CONFLICT (event_id, subscriber_id) DO NOTHING",
            )  # fmt: skip
            self._ready = []
        if not self._events:
            return
        self.tx.order_events()  # PostgreSQL: `seq` order is commit order (`SqlBase.order_events`)
        rows = self.tx.insert_rows(
            "events", _EVENT_COLUMNS, self._events, " ON CONFLICT (id) DO NOTHING RETURNING id, seq"
        )
        seqs = {event_id: int(seq) for event_id, seq in rows}
        ids = [row[0] for row in self._events]
        deliveries = [
            (row[0], seqs[ids[index]], *row[2:])
            for index, row in self._deliveries
            if ids[index] in seqs
        ]
        if deliveries:
            self.tx.insert_rows(
                "deliveries", _DELIVERY_COLUMNS, deliveries,
                " ON CONFLICT (event_id, subscriber_id) DO NOTHING",
            )  # fmt: skip
        self._events, self._deliveries = [], []

    def flush(self) -> None:
        """Write everything buffered (call once, at the end of the batch)."""
        self._insert_new()
        self._flush_outbox()
        if self._history:
            self.tx.insert_rows("contact_history", "contact_id, at, kind, detail", self._history)
            self._history = []
        if self._inbound:
            rows = [(c, ch, at) for (c, ch), at in self._inbound.items()]
            self.tx.insert_rows(
                "conversations", "contact_id, channel_id, last_inbound_at", rows,
                " ON CONFLICT (contact_id, channel_id) DO UPDATE SET last_inbound_at = "
                "CASE WHEN excluded.last_inbound_at > conversations.last_inbound_at "
                "THEN excluded.last_inbound_at ELSE conversations.last_inbound_at END",
            )  # fmt: skip
            self._inbound = {}
        self._flush_touches()

    def _flush_touches(self) -> None:
        if self._touch_bsuids:
            self.tx.touch_bsuids(self._touch_at, sorted(self._touch_bsuids))
        if self._touch_phones:
            self.tx.touch_phones(self._touch_at, sorted(self._touch_phones))
        self._touch_bsuids, self._touch_phones = set(), set()
