"""Contact reads for the API (views, lookups by any identifier ever held) and erasure."""

from __future__ import annotations

import json
from typing import Any

from bspgate.identity.erasure import Markers, erase_event, scrub_raw
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
        for entry in view["bsuids"]:
            if entry["bsuid"] == view["parent_bsuid"]:
                entry["state"] = "parent"  # the current parent BSUID is not a retired one
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

    def last_event_channel(self, contact_id: str) -> str | None:
        row = self.one(
            "SELECT channel_id FROM events WHERE contact_id = ? ORDER BY seq DESC LIMIT 1",
            (contact_id,),
        )
        return None if row is None else str(row[0])

    def contact_erased(self, contact_id: str) -> bool:
        row = self.one("SELECT erased_at FROM contacts WHERE id = ?", (contact_id,))
        return row is not None and row[0] is not None

    def subscribers_that_received(self, contact_id: str) -> list[str]:
        """Every subscriber that was ever delivered an event about the contact, also under
        the id of a contact merged into it (delivered rows keep the id they went out with)."""
        ids = self._with_merged(contact_id)
        marks = ", ".join("?" for _ in ids)
        return [
            str(r[0])
            for r in self.all(
                f"SELECT DISTINCT subscriber_id FROM deliveries WHERE contact_id IN ({marks}) "
                "AND state = 'delivered' ORDER BY subscriber_id",
                ids,
            )
        ]

    def _with_merged(self, contact_id: str) -> list[str]:
        """The contact's id and the ids of every contact merged into it, at any depth."""
        ids = [contact_id]
        for current in ids:
            ids.extend(
                str(r[0])
                for r in self.all("SELECT id FROM contacts WHERE merged_into = ?", (current,))
            )
        return ids

    def _held_by_others(self, markers: Markers, marks: str, ids: list[str]) -> set[str]:
        """The markers (both spellings) of phones another contact holds as its active alias."""
        phones = sorted(m for m in markers.identifiers if m.startswith("+"))
        if not phones:
            return set()
        held = self.all(
            f"SELECT phone FROM contact_phones WHERE state = 'active' AND contact_id NOT IN "
            f"{marks} AND phone IN ({', '.join('?' for _ in phones)})",
            [*ids, *phones],
        )
        return {form for (phone,) in held for form in (phone, phone.lstrip("+"))}

    def _raw_holding(self, marker: str) -> list[str]:
        needle = marker.encode()
        if self.dialect == "postgres":
            sql = "SELECT id FROM raw_payloads WHERE position(?::bytea in body) > 0"
        else:
            sql = "SELECT id FROM raw_payloads WHERE instr(body, ?) > 0"
        return [str(r[0]) for r in self.all(sql, (needle,))]

    def erase_contact(
        self, contact_id: str, now: float, stamp: str, requested_by: str | None = None
    ) -> dict[str, Any] | None:
        """Erasure on request: exactly this person's identifiers and content, everywhere.

        Contact and identifier rows, history details, events (contact emptied, content nulled,
        so they stay valid), the person's items of raw payloads (other people's items stay and
        replay), outbox copies, attempt logs and sends lose it; undelivered events are
        cancelled. An audit row records who asked and how much went, never the values.
        """
        if self.contact(contact_id) is None:
            return None
        ids = self._with_merged(contact_id)  # contacts merged into it are the same person
        marks = "(" + ", ".join("?" for _ in ids) + ")"
        markers = Markers()
        for row in self.all(
            f"SELECT bsuid, parent_bsuid, phone, username, name FROM contacts WHERE id IN {marks}",
            ids,
        ):
            markers.add(row[0])
            markers.add(row[1])
            markers.add_phone(row[2])
            markers.add(row[3], content=True)
            markers.add(row[4], content=True)
        for (bsuid,) in self.all(
            f"SELECT bsuid FROM contact_bsuids WHERE contact_id IN {marks}", ids
        ):
            markers.add(bsuid)
        for (phone,) in self.all(
            f"SELECT phone FROM contact_phones WHERE contact_id IN {marks}", ids
        ):
            markers.add_phone(phone)
        events = self.all(f"SELECT seq, body, raw_id FROM events WHERE contact_id IN {marks}", ids)
        parsed = [(seq, json.loads(body), raw_id) for seq, body, raw_id in events]
        for _seq, event, _raw in parsed:
            markers.learn_event(event)
        for seq, event, _raw in parsed:
            body = json.dumps(erase_event(event), separators=(",", ":"))
            self.execute("UPDATE events SET body = ? WHERE seq = ?", (body, seq))
        # the payload behind a `phone_reassigned` notice is the new holder's, not this person's
        raw_ids = {
            raw
            for _s, event, raw in parsed
            if raw and (event.get("data") or {}).get("change") != "phone_reassigned"
        }
        # a number of this person's that another contact holds now (a recycled number) finds
        # nobody's payloads but this person's own events: searched by, it would erase the new
        # holder's payloads and sends
        elsewhere = self._held_by_others(markers, marks, ids)
        for marker in markers.identifiers - elsewhere:
            if len(marker) >= 6:
                raw_ids.update(self._raw_holding(marker))
        blanked = trimmed = 0
        for raw_id in sorted(raw_ids):
            row = self.one("SELECT body FROM raw_payloads WHERE id = ?", (raw_id,))
            if row is None:
                continue
            kept = scrub_raw(bytes(row[0]), markers)
            if kept is None:
                blanked += 1
                self.execute(
                    "UPDATE raw_payloads SET body = ?, state = 'erased', reason = "
                    "'contact erased' WHERE id = ?",
                    (b"", raw_id),
                )
            else:
                trimmed += 1
                self.execute("UPDATE raw_payloads SET body = ? WHERE id = ?", (kept, raw_id))
        self.execute(
            f"UPDATE contacts SET bsuid = NULL, parent_bsuid = NULL, phone = NULL, "
            f"username = NULL, name = NULL, bsuid_at = NULL, phone_at = NULL, erased_at = ?, "
            f"updated_at = ? WHERE id IN {marks}",
            (stamp, stamp, *ids),
        )
        bsuids = self.execute(f"DELETE FROM contact_bsuids WHERE contact_id IN {marks}", ids)
        phones = self.execute(f"DELETE FROM contact_phones WHERE contact_id IN {marks}", ids)
        self.execute(f"UPDATE contact_history SET detail = '{{}}' WHERE contact_id IN {marks}", ids)
        cancelled = self.execute(
            f"UPDATE deliveries SET state = 'erased', body = NULL, updated_at = ? "
            f"WHERE contact_id IN {marks} AND state IN ('pending', 'held', 'inflight')",
            (stamp, *ids),
        )
        self.execute(f"UPDATE deliveries SET body = NULL WHERE contact_id IN {marks}", ids)
        self.execute(
            f"UPDATE attempts SET error = NULL WHERE delivery_id IN "
            f"(SELECT id FROM deliveries WHERE contact_id IN {marks})",
            ids,
        )
        sends = self.execute(
            f"UPDATE sends SET request = '{{}}', answer = '' WHERE contact_id IN {marks}", ids
        )
        for marker in sorted(markers.identifiers - elsewhere):
            if len(marker) >= 6:  # a send that failed before resolving names the person only
                self.execute(
                    "UPDATE sends SET request = '{}', answer = '' "
                    "WHERE request LIKE ? OR answer LIKE ?",
                    (f"%{marker}%", f"%{marker}%"),
                )
        summary: dict[str, Any] = {
            "bsuids": bsuids.rowcount,
            "phones": phones.rowcount,
            "events": len(parsed),
            "raw_payloads_blanked": blanked,
            "raw_payloads_trimmed": trimmed,
            "deliveries_cancelled": cancelled.rowcount,
            "sends": sends.rowcount,
        }
        self.add_history(contact_id, stamp, "erased", summary)
        self.execute(
            "INSERT INTO erasures (contact_id, erased_at, requested_by, summary) "
            "VALUES (?, ?, ?, ?)",
            (contact_id, stamp, requested_by, json.dumps(summary, sort_keys=True)),
        )
        return summary
