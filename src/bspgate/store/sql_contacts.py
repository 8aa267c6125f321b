"""Contact reads for the API (views, lookups by any identifier ever held) and erasure."""

from __future__ import annotations

import json
from typing import Any

from bspgate.store.sql_base import SqlBase


class ContactQueries(SqlBase):
    """Statements mixed into `SqlTx`."""

    # -- contacts (read API, erasure) ---------------------------------------------------------
    def contact_view(self, contact_id: str) -> dict[str, Any] | None:
        """A contact with its identifiers and their history, as the API answers it."""
        row = self.one(
            "SELECT id, portfolio, bsuid, parent_bsuid, phone, username, name, merged_into, "
            "created_at, updated_at, erased_at FROM contacts WHERE id = ?",
            (contact_id,),
        )
        if row is None:
            return None
        keys = (
            "id",
            "portfolio",
            "bsuid",
            "parent_bsuid",
            "phone",
            "username",
            "name",
            "merged_into",
            "created_at",
            "updated_at",
            "erased_at",
        )
        view: dict[str, Any] = dict(zip(keys, row, strict=True))
        view["bsuids"] = [
            dict(zip(("bsuid", "state", "first_seen", "last_seen", "channel_id"), r, strict=True))
            for r in self.all(
                "SELECT bsuid, state, first_seen, last_seen, channel_id FROM contact_bsuids "
                "WHERE contact_id = ? ORDER BY first_seen, bsuid",
                (contact_id,),
            )
        ]
        view["phones"] = [
            dict(
                zip(
                    (
                        "phone",
                        "state",
                        "first_seen",
                        "last_seen",
                        "ended_at",
                        "reason",
                        "channel_id",
                    ),
                    r,
                    strict=True,
                )
            )
            for r in self.all(
                "SELECT phone, state, first_seen, last_seen, ended_at, reason, channel_id "
                "FROM contact_phones WHERE contact_id = ? ORDER BY id",
                (contact_id,),
            )
        ]
        view["history"] = [
            {"at": at, "kind": kind, "detail": json.loads(detail)}
            for at, kind, detail in self.all(
                "SELECT at, kind, detail FROM contact_history WHERE contact_id = ? ORDER BY id",
                (contact_id,),
            )
        ]
        return view

    def find_contacts(
        self,
        *,
        bsuid: str | None = None,
        phone: str | None = None,
        username: str | None = None,
        portfolio: str | None = None,
    ) -> list[str]:
        """Contact ids by any identifier it ever had (old BSUIDs and past phones included)."""
        scope, params = ("", []) if portfolio is None else (" AND portfolio = ?", [portfolio])
        if bsuid is not None:
            sql = f"SELECT contact_id FROM contact_bsuids WHERE bsuid = ?{scope}"
            values: list[Any] = [bsuid, *params]
        elif phone is not None:
            # the active owner first, then contacts the phone belonged to before
            sql = (
                f"SELECT contact_id FROM contact_phones WHERE phone = ?{scope} "
                "ORDER BY CASE state WHEN 'active' THEN 0 ELSE 1 END, id DESC"
            )
            values = [phone, *params]
        elif username is not None:
            sql = f"SELECT id FROM contacts WHERE username = ?{scope} ORDER BY updated_at DESC"
            values = [username, *params]
        else:
            return []
        seen: list[str] = []
        for (contact_id,) in self.all(sql, values):
            if contact_id not in seen:
                seen.append(contact_id)
        return seen

    def erase_contact(self, contact_id: str, now: float, stamp: str) -> dict[str, int] | None:
        """Erasure on request: phone, names, usernames, message content and raw payloads go.

        Delivered events stay delivered; undelivered ones are cancelled so no erased data leaves
        after the request. BSUIDs stay (pseudonymous keys), so the contact id keeps working.
        """
        if self.contact(contact_id) is None:
            return None
        self.execute(
            "UPDATE contacts SET phone = NULL, username = NULL, name = NULL, erased_at = ?, "
            "updated_at = ? WHERE id = ?",
            (stamp, stamp, contact_id),
        )
        phones = self.execute("DELETE FROM contact_phones WHERE contact_id = ?", (contact_id,))
        self.execute(
            "UPDATE contact_history SET detail = '{}' WHERE contact_id = ? "
            "AND kind IN ('username_changed', 'name_changed')",
            (contact_id,),
        )
        events = self.all(
            "SELECT seq, body, raw_id FROM events WHERE contact_id = ?", (contact_id,)
        )
        raw_ids = set()
        for seq, body, raw_id in events:
            event = json.loads(body)
            data = event["data"]
            data["contact"].update(phone=None, username=None, name=None)
            message = data.get("message") or {}
            for key in ("text", "media", "location", "reply"):
                if key in message:
                    message[key] = None
            self.execute(
                "UPDATE events SET body = ? WHERE seq = ?",
                (json.dumps(event, separators=(",", ":")), seq),
            )
            raw_ids.add(raw_id)
        for raw_id in raw_ids:
            self.execute(
                "UPDATE raw_payloads SET body = ?, state = 'erased', reason = 'contact erased' "
                "WHERE id = ?",
                (b"", raw_id),
            )
        cancelled = self.execute(
            "UPDATE deliveries SET state = 'erased', body = NULL, updated_at = ? "
            "WHERE contact_id = ? AND state IN ('pending', 'held', 'inflight')",
            (stamp, contact_id),
        )
        summary = {
            "phones": phones.rowcount,
            "events": len(events),
            "raw_payloads": len(raw_ids),
            "deliveries_cancelled": cancelled.rowcount,
        }
        self.add_history(contact_id, stamp, "erased", summary)
        return summary
