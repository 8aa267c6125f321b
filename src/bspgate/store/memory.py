"""An in-memory `StoreTx` for `bspgate normalize`, golden cases and identity property tests.

It keeps the same identity state as the SQL stores (contacts, BSUIDs current and retired, phone
aliases with one active owner) in dicts, so the identity rules run unchanged without a database.
Nothing here persists; events and deliveries are kept in lists for inspection.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from bspgate.ids import new_id
from bspgate.store.base import (
    ContactRow,
    Holding,
    RawRecord,
    follow_merged,
    phone_holder_at,
)

T = TypeVar("T")


def _text(*values: object) -> None:
    """The SQL columns these fill are NOT NULL text: refuse what the database would refuse."""
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"expected text, got {value!r}")


def _earliest(one: str | None, other: str | None) -> str | None:
    return min((v for v in (one, other) if v is not None), default=None)


class MemoryTx:
    """Implements `StoreTx` over dicts (one instance = one private, never-committed store)."""

    def __init__(self) -> None:
        self.contacts: dict[str, ContactRow] = {}
        self.bsuids: dict[
            tuple[str, str], tuple[str, str]
        ] = {}  # (portfolio, bsuid) -> (id, state)
        self.phones: dict[tuple[str, str], str] = {}  # active aliases: (portfolio, phone) -> id
        self.phone_history: list[dict[str, Any]] = []
        self.last_seen: dict[tuple[str, str], str] = {}  # (portfolio, bsuid) -> when seen again
        self.retired_at: dict[tuple[str, str], str | None] = {}  # evidence time of retirement
        self.history: list[tuple[str, str, str, dict[str, Any]]] = []
        self.sends: dict[tuple[str, str], str] = {}
        self.inbound: dict[tuple[str, str], str] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.raws: list[RawRecord] = []
        self.deliveries: list[tuple[str, str, str]] = []
        # a released held delivery's own body (its phone filled in), by (event id, subscriber)
        self.delivery_bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self.superseded: set[str] = set()
        self.statuses: dict[tuple[str, str], int] = {}

    def _follow(self, contact_id: str | None) -> ContactRow | None:
        contact = self.contacts.get(contact_id) if contact_id else None
        found = follow_merged(contact, self.contacts.get)
        return replace(found) if found is not None else None

    def contact(self, contact_id: str) -> ContactRow | None:
        contact = self.contacts.get(contact_id)
        return replace(contact) if contact is not None else None

    def contact_by_bsuid(self, portfolio: str, bsuid: str) -> ContactRow | None:
        entry = self.bsuids.get((portfolio, bsuid))
        return self._follow(entry[0]) if entry else None

    def contact_by_phone(self, portfolio: str, phone: str) -> ContactRow | None:
        return self._follow(self.phones.get((portfolio, phone)))

    def create_contact(self, portfolio: str, now: str) -> ContactRow:
        _text(portfolio, now)
        contact = ContactRow(id=new_id("ct"), portfolio=portfolio, created_at=now)
        self.contacts[contact.id] = replace(contact)
        return contact

    def save_contact(self, contact: ContactRow, now: str) -> None:
        _text(contact.id, now)
        self.contacts[contact.id] = replace(contact)

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
        _text(contact.id, bsuid, now, channel_id)
        if current:
            for key, (owner, state) in list(self.bsuids.items()):
                if owner == contact.id and key[1] != bsuid and state == "current":
                    self.bsuids[key] = (owner, "retired")
                    self.retired_at[key] = _earliest(self.retired_at.get(key), evidence)
        key = (contact.portfolio, bsuid)
        self.bsuids[key] = (contact.id, "current" if current else "retired")
        self.retired_at[key] = None if current else _earliest(self.retired_at.get(key), evidence)

    def bsuid_retired_at(self, portfolio: str, bsuid: str) -> str | None:
        return self.retired_at.get((portfolio, bsuid))

    def link_phone(
        self,
        contact: ContactRow,
        phone: str,
        now: str,
        channel_id: str,
        evidence: str | None = None,
    ) -> None:
        _text(contact.id, phone, now, channel_id)
        key = (contact.portfolio, phone)
        if key in self.phones:
            raise ValueError(f"phone alias already active for {self.phones[key]}")
        self.phones[key] = contact.id
        self.phone_history.append(
            {
                "contact_id": contact.id,
                "portfolio": contact.portfolio,
                "phone": phone,
                "state": "active",
                "evidence_at": evidence,
                "ended_evidence": None,
            }
        )

    def end_phone(
        self,
        contact_id: str,
        phone: str,
        now: str,
        state: str,
        reason: str,
        evidence: str | None = None,
    ) -> None:
        _text(contact_id, phone, now, state, reason)
        for key, owner in list(self.phones.items()):
            if owner == contact_id and key[1] == phone:
                del self.phones[key]
        for row in self.phone_history:
            if (row["contact_id"], row["phone"], row["state"]) == (contact_id, phone, "active"):
                row.update(state=state, reason=reason, ended_evidence=evidence)

    def phone_owner_at(
        self, portfolio: str, phone: str, at: str, holding: Holding = "at"
    ) -> ContactRow | None:
        rows = [
            (r["contact_id"], r["state"], r["evidence_at"], r["ended_evidence"])
            for r in self.phone_history
            if (r["portfolio"], r["phone"]) == (portfolio, phone)
        ]
        holder = phone_holder_at(rows, at, holding)
        return self._follow(holder) if holder else None

    def phone_taught_after(self, portfolio: str, phone: str, at: str, contact_id: str) -> bool:
        return any(
            (r["portfolio"], r["phone"]) == (portfolio, phone)
            and r["contact_id"] != contact_id
            and (r["evidence_at"] or "") > at
            for r in self.phone_history
        )

    def phone_known_since(self, contact_id: str, phone: str, at: str) -> None:
        for row in self.phone_history:
            mine = (row["contact_id"], row["phone"], row["state"]) == (contact_id, phone, "active")
            if mine and row["evidence_at"] is not None and row["evidence_at"] > at:
                row["evidence_at"] = at

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
        _text(contact.id, phone, now, channel_id, since, until)
        for row in self.phone_history:  # as the SQL stores: date a span nobody had dated
            mine = (row["contact_id"], row["phone"]) == (contact.id, phone)
            undated = row["evidence_at"] == "" and row["state"] != "active"
            if since and mine and undated and (row["ended_evidence"] or "") >= since:
                row["evidence_at"] = since
        if any(
            (r["contact_id"], r["phone"]) == (contact.id, phone)
            and (r["evidence_at"] or "") <= since
            and (r["state"] == "active" or (r["ended_evidence"] or "") >= until)
            for r in self.phone_history
        ):
            return  # a span of the contact's own already covers this one
        self.phone_history.append(
            {
                "contact_id": contact.id,
                "portfolio": contact.portfolio,
                "phone": phone,
                "state": "moved" if moved else "retired",
                "evidence_at": since,
                "ended_evidence": until,
            }
        )

    def touch_identifiers(self, contact: ContactRow, now: str) -> None:
        _text(contact.id, now)
        if contact.bsuid:
            self.touch_bsuid(contact.portfolio, contact.bsuid, now)

    def touch_bsuid(self, portfolio: str, bsuid: str, now: str) -> None:
        _text(portfolio, bsuid, now)
        self.last_seen[(portfolio, bsuid)] = now

    def merge_rows(self, absorbed_id: str, survivor_id: str, now: str) -> None:
        _text(absorbed_id, survivor_id, now)
        for key, (owner, state) in list(self.bsuids.items()):
            if owner == absorbed_id:
                self.bsuids[key] = (survivor_id, state)
        for key, owner in list(self.phones.items()):
            if owner == absorbed_id:
                self.phones[key] = survivor_id
        for row in self.phone_history:
            if row["contact_id"] == absorbed_id:
                row["contact_id"] = survivor_id
        self.history = [
            (survivor_id if who == absorbed_id else who, at, kind, detail)
            for who, at, kind, detail in self.history
        ]
        for key, owner in list(self.sends.items()):
            if owner == absorbed_id:
                self.sends[key] = survivor_id
        for (owner, channel_id), at in list(self.inbound.items()):
            if owner == absorbed_id:
                del self.inbound[(owner, channel_id)]
                self.mark_inbound(survivor_id, channel_id, at)

    def add_history(self, contact_id: str, now: str, kind: str, detail: dict[str, Any]) -> None:
        _text(contact_id, now, kind)
        if not isinstance(detail, dict):
            raise TypeError("history detail must be a JSON object")
        self.history.append((contact_id, now, kind, detail))

    def contact_for_send(self, channel_id: str, provider_message_id: str) -> str | None:
        return self.sends.get((channel_id, provider_message_id))

    def mark_inbound(self, contact_id: str, channel_id: str, at: str) -> None:
        self.inbound[(contact_id, channel_id)] = max(
            at, self.inbound.get((contact_id, channel_id), "")
        )

    def release_held(self, contact_id: str, phone: str, now: float, stamp: str) -> int:
        """As the SQL stores: held deliveries go pending, with the phone filled into their body."""
        _text(contact_id, phone, stamp)
        if not isinstance(now, float | int):
            raise TypeError(f"expected an epoch time, got {now!r}")
        released = 0
        for index, (event_id, subscriber_id, state) in enumerate(self.deliveries):
            if state == "held" and self.events[event_id]["subject"] == contact_id:
                self.deliveries[index] = (event_id, subscriber_id, "pending")
                body = copy.deepcopy(self.events[event_id])
                named = body.get("data", {}).get("contact")
                if isinstance(named, dict):
                    named["phone"] = phone
                self.delivery_bodies[(event_id, subscriber_id)] = body
                released += 1
        return released

    # -- transactions -------------------------------------------------------------------------
    def run(self, work: Callable[[MemoryTx], T]) -> T:
        """Run `work` as one transaction: if it raises, every change it made is undone.

        Append-only parts (lists, stored events) are cut back to their length before; the rest
        (identity maps, a few entries per contact) is copied first.
        """
        lengths = {k: len(v) for k, v in vars(self).items() if isinstance(v, list)}
        events = set(self.events)
        saved = {
            k: copy.deepcopy(v)
            for k, v in vars(self).items()
            if not isinstance(v, list) and k != "events"
        }
        try:
            return work(self)
        except BaseException:
            for key, length in lengths.items():
                del getattr(self, key)[length:]
            for event_id in set(self.events) - events:
                del self.events[event_id]
            vars(self).update(saved)
            raise

    def event_exists(self, event_id: str) -> bool:
        return event_id in self.events

    def insert_raw(self, raw: RawRecord) -> None:
        self.raws.append(raw)

    def insert_event(
        self, event: dict[str, Any], body: str, now: str, superseded: bool = False
    ) -> int:
        self.events[event["id"]] = event
        if superseded:
            self.superseded.add(event["id"])
        return len(self.events)

    def advance_status(
        self, channel_id: str, message_id: str, status: str, rank: int, stamp: str
    ) -> bool:
        current = self.statuses.get((channel_id, message_id))
        if current is not None and (current >= rank or current >= 100):
            return False
        self.statuses[(channel_id, message_id)] = rank
        return True

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
        self.deliveries.append((event_id, subscriber_id, state))

    # -- sends ----------------------------------------------------------------------------------
    # Mirrors the `# -- sends` section of `SqlTx` (rows are dicts keyed by send id).
    def phone_alias_state(self, portfolio: str, phone: str) -> tuple[str, str] | None:
        owner = self.phones.get((portfolio, phone))
        if owner is not None:
            return owner, "active"
        for entry in reversed(self.phone_history):
            if entry["phone"] == phone and entry["portfolio"] == portfolio:
                return str(entry["contact_id"]), str(entry["state"])
        return None

    def last_inbound_at(self, contact_id: str, channel_id: str) -> str | None:
        return self.inbound.get((contact_id, channel_id))

    def contact_erased(self, contact_id: str) -> bool:
        return False  # erasure needs a SQL store (`bspgate.identity.erasure`)

    def erased_at(self, contact_id: str) -> str | None:
        return None

    def _send_rows(self) -> dict[str, dict[str, Any]]:
        # created on first use, so this appended section leaves __init__ as it was
        rows: dict[str, dict[str, Any]] = self.__dict__.setdefault("send_rows", {})
        return rows

    def send_by_key(self, key: str) -> dict[str, Any] | None:
        for row in self._send_rows().values():
            if row["idempotency_key"] == key:
                return dict(row)
        return None

    def send_record(self, send_id: str) -> dict[str, Any] | None:
        row = self._send_rows().get(send_id)
        return dict(row) if row is not None else None

    def reserve_send(self, send: dict[str, Any]) -> bool:
        if send["idempotency_key"] is not None and self.send_by_key(send["idempotency_key"]):
            return False
        self._send_rows()[send["id"]] = {
            **send,
            "provider_message_id": None,
            "answer": "",
            "state": "pending",
            "status": None,
            "updated_at": send["created_at"],
        }
        return True

    def finish_send(
        self,
        send_id: str,
        *,
        contact_id: str | None,
        provider_message_id: str | None,
        state: str,
        status: int,
        answer: str,
        now: str,
        keep_key: bool = True,
    ) -> None:
        row = self._send_rows()[send_id]
        row.update(
            contact_id=contact_id,
            provider_message_id=provider_message_id,
            state=state,
            status=status,
            answer=answer,
            updated_at=now,
        )
        if not keep_key:
            row["idempotency_key"] = None
        if provider_message_id and contact_id:
            self.sends[(row["channel_id"], provider_message_id)] = contact_id

    def settle_send(self, send_id: str, state: str, status: int, answer: str, now: str) -> bool:
        row = self._send_rows()[send_id]
        if row["state"] != "pending":
            return False
        row.update(state=state, status=status, answer=answer, updated_at=now)
        return True

    def release_send_key(self, send_id: str) -> None:
        self._send_rows()[send_id]["idempotency_key"] = None

    def status_event_bodies(self, channel_id: str, contact_ids: list[str]) -> list[str]:
        import orjson

        return [
            orjson.dumps(event).decode()
            for event in self.events.values()
            if event["type"] == "whatsapp.message.status"
            and event["subject"] in contact_ids
            and event["data"]["channel"]["id"] == channel_id
        ]
