"""Outbound sends: addressing reads, the send record and idempotency keys."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bspgate.store.sql_base import SqlBase


class SendQueries(SqlBase):
    """Statements mixed into `SqlTx`."""

    # -- sends --------------------------------------------------------------------------------
    # Outbound sends (bspgate.outbound): addressing reads, the send record, idempotency keys.
    _SEND_COLUMNS = (
        "id, channel_id, contact_id, provider_message_id, idempotency_key, created_at, "
        "request, answer, provider, state, status, updated_at"
    )

    def phone_alias_state(self, portfolio: str, phone: str) -> tuple[str, str] | None:
        """(contact id, state) of a phone alias: the active row, else the latest ended one."""
        row = self.one(
            "SELECT contact_id, state FROM contact_phones WHERE portfolio = ? AND phone = ? "
            "ORDER BY CASE WHEN state = 'active' THEN 0 ELSE 1 END, id DESC LIMIT 1",
            (portfolio, phone),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def last_inbound_at(self, contact_id: str, channel_id: str) -> str | None:
        row = self.one(
            "SELECT last_inbound_at FROM conversations WHERE contact_id = ? AND channel_id = ?",
            (contact_id, channel_id),
        )
        return None if row is None else str(row[0])

    def _send_row(self, row: Sequence[Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        keys = [c.strip() for c in self._SEND_COLUMNS.split(",")]
        return dict(zip(keys, row, strict=True))

    def send_by_key(self, key: str) -> dict[str, Any] | None:
        return self._send_row(
            self.one(f"SELECT {self._SEND_COLUMNS} FROM sends WHERE idempotency_key = ?", (key,))
        )

    def send_record(self, send_id: str) -> dict[str, Any] | None:
        return self._send_row(
            self.one(f"SELECT {self._SEND_COLUMNS} FROM sends WHERE id = ?", (send_id,))
        )

    def reserve_send(self, send: dict[str, Any]) -> bool:
        """Insert a pending send; False when its idempotency key is already taken."""
        cursor = self.execute(
            "INSERT INTO sends (id, channel_id, contact_id, provider_message_id, "
            "idempotency_key, created_at, request, answer, provider, state, status, updated_at) "
            "VALUES (?, ?, ?, NULL, ?, ?, ?, '', ?, 'pending', NULL, ?) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            (
                send["id"],
                send["channel_id"],
                send["contact_id"],
                send["idempotency_key"],
                send["created_at"],
                send["request"],
                send["provider"],
                send["created_at"],
            ),
        )
        return bool(cursor.rowcount == 1)

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
        """Record the outcome; `keep_key=False` frees the idempotency key for a retry."""
        self.execute(
            "UPDATE sends SET contact_id = ?, provider_message_id = ?, state = ?, status = ?, "
            "answer = ?, updated_at = ?"
            + ("" if keep_key else ", idempotency_key = NULL")
            + " WHERE id = ?",
            (contact_id, provider_message_id, state, status, answer, now, send_id),
        )

    def settle_send(self, send_id: str, state: str, status: int, answer: str, now: str) -> bool:
        """Settle a send still pending (its process died); False when it finished meanwhile."""
        cursor = self.execute(
            "UPDATE sends SET state = ?, status = ?, answer = ?, updated_at = ? "
            "WHERE id = ? AND state = 'pending'",
            (state, status, answer, now, send_id),
        )
        return bool(cursor.rowcount == 1)

    def release_send_key(self, send_id: str) -> None:
        """Forget an expired idempotency key (the send itself stays)."""
        self.execute("UPDATE sends SET idempotency_key = NULL WHERE id = ?", (send_id,))

    def phone_takers(self, contact_ids: list[str]) -> list[str]:
        """Contacts that took a phone from these (rule 6: the number was recycled), in order."""
        if not contact_ids:
            return []
        marks = ", ".join("?" for _ in contact_ids)
        rows = self.all(
            f"SELECT detail FROM contact_history WHERE contact_id IN ({marks}) "
            "AND kind = 'phone_moved' ORDER BY id",
            tuple(contact_ids),
        )
        takers: list[str] = []
        for (detail,) in rows:
            taker = json.loads(detail).get("to") if detail else None
            if isinstance(taker, str) and taker not in takers:
                takers.append(taker)
        return takers

    def status_event_bodies(self, channel_id: str, contact_ids: list[str]) -> list[str]:
        """Bodies of the status events of these contacts on a channel, oldest first."""
        if not contact_ids:
            return []
        marks = ", ".join("?" for _ in contact_ids)
        rows = self.all(
            f"SELECT body FROM events WHERE contact_id IN ({marks}) AND channel_id = ? "
            "AND type = 'whatsapp.message.status' ORDER BY seq",
            (*contact_ids, channel_id),
        )
        return [str(row[0]) for row in rows]
