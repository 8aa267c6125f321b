"""Contact reads for the API (views, lookups by any identifier ever held) and erasure."""

from __future__ import annotations

import json
from collections.abc import Sequence
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
        return self.erased_at(contact_id) is not None

    def erased_at(self, contact_id: str) -> str | None:
        """When the contact was erased on request, or None."""
        row = self.one("SELECT erased_at FROM contacts WHERE id = ?", (contact_id,))
        return None if row is None or row[0] is None else str(row[0])

    def subscribers_that_received(self, contact_id: str) -> list[str]:
        """Every subscriber that may hold an event about the contact, also under the id of a
        contact merged into it (delivered rows keep the id they went out with): one it was
        delivered to, one it is being POSTed to right now (`erase_contact` lets that attempt
        finish), and one it was POSTed to at all, whatever the answer (a receiver answering 500
        or timing out may have kept the event; a replay resets a row's count, not its log)."""
        ids = self._with_merged(contact_id)
        marks = ", ".join("?" for _ in ids)
        return [
            str(r[0])
            for r in self.all(
                f"SELECT DISTINCT d.subscriber_id FROM deliveries d WHERE d.contact_id IN "
                f"({marks}) AND (d.state IN ('delivered', 'inflight') OR d.attempts > 0 OR "
                "EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = d.id)) "
                "ORDER BY d.subscriber_id",
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

    def _shared_spans(
        self, markers: Markers, ids: list[str], portfolio: str
    ) -> dict[str, list[tuple[str, str | None]]]:
        """For each of the person's numbers that another contact of its portfolio holds or held
        (a recycled number), the spans the person held it (evidence times; None: still)."""
        phones = sorted(m for m in markers.identifiers if m.startswith("+"))
        if not phones:
            return {}
        rows = self.all(
            "SELECT phone, contact_id, COALESCE(evidence_at, first_seen), "
            "COALESCE(ended_evidence, ended_at) FROM contact_phones WHERE portfolio = ? "
            f"AND phone IN ({', '.join('?' for _ in phones)})",
            [portfolio, *phones],
        )
        shared = {str(r[0]) for r in rows if r[1] not in ids}
        spans: dict[str, list[tuple[str, str | None]]] = {phone: [] for phone in shared}
        for phone, contact_id, start, end in rows:
            if phone in shared and contact_id in ids:
                spans[phone].append((str(start), None if end is None else str(end)))
        return spans

    def _raw_holding(self, marker: str, foreign: list[str]) -> list[str]:
        """Raw payloads holding `marker`, except those of other portfolios' channels."""
        needle = marker.encode()
        if self.dialect == "postgres":
            sql = "SELECT id FROM raw_payloads WHERE position(?::bytea in body) > 0"
        else:
            sql = "SELECT id FROM raw_payloads WHERE instr(body, ?) > 0"
        if foreign:
            sql += f" AND channel_id NOT IN ({', '.join('?' for _ in foreign)})"
        return [str(r[0]) for r in self.all(sql, (needle, *foreign))]

    def _unlinked_within(self, raw_ids: list[str], spans: list[tuple[str, str | None]]) -> set[str]:
        """The payloads among `raw_ids` that gave no event and arrived while the person held
        the number: a retry or a quarantined copy of theirs, never the other holder's events."""
        if not raw_ids:
            return set()
        rows = self.all(
            "SELECT id, received_at FROM raw_payloads WHERE event_count = 0 "
            f"AND id IN ({', '.join('?' for _ in raw_ids)})",
            raw_ids,
        )
        return {
            str(raw_id)
            for raw_id, received in rows
            if any(start <= received and (end is None or received < end) for start, end in spans)
        }

    def erase_contact(
        self,
        contact_id: str,
        now: float,
        stamp: str,
        requested_by: str | None = None,
        foreign_channels: Sequence[str] = (),
    ) -> dict[str, Any] | None:
        """Erasure on request: exactly this person's identifiers and content, everywhere.

        Contact and identifier rows, history details, events (contact emptied, content nulled,
        so they stay valid), the person's items of raw payloads (other people's items stay and
        replay), outbox copies, attempt logs and sends lose it; undelivered events are
        cancelled. An audit row records who asked and how much went, never the values.

        A delivery in flight (its POST may be under way, the body already sent) is left in
        flight: its attempt finishes, and the dispatcher records it as delivered, or as erased
        when it failed (never retried). Until then it holds back the contact's later events for
        that subscriber (per-contact order), the `whatsapp.contact.erased` notice among them,
        so the notice never overtakes it (`subscribers_that_received` counts the subscriber).

        Payloads are searched for the person's identifiers, except in `foreign_channels` (the
        channels of other portfolios: the same number there is an unrelated contact, rule 1).
        A number another contact of the portfolio holds or held (a recycled number) marks this
        person only while they held it: searched by it, only payloads that gave no event and
        arrived in their span are theirs (the others are reached through their own events).
        """
        erased = self.contact(contact_id)
        if erased is None:
            return None
        foreign = list(foreign_channels)
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
        shared = self._shared_spans(markers, ids, erased.portfolio)
        for marker in markers.identifiers:
            if len(marker) < 6:
                continue
            found = self._raw_holding(marker, foreign)
            spans = shared.get(marker if marker.startswith("+") else f"+{marker}")
            if spans is not None:  # a recycled number: its other holders' payloads stay
                raw_ids.update(self._unlinked_within(sorted(set(found) - raw_ids), spans))
            else:
                raw_ids.update(found)
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
            f"username = NULL, name = NULL, bsuid_at = NULL, phone_at = NULL, username_at = NULL, "
            f"name_at = NULL, erased_at = ?, "
            f"updated_at = ? WHERE id IN {marks}",
            (stamp, stamp, *ids),
        )
        bsuids = self.execute(f"DELETE FROM contact_bsuids WHERE contact_id IN {marks}", ids)
        phones = self.execute(f"DELETE FROM contact_phones WHERE contact_id IN {marks}", ids)
        self.execute(f"UPDATE contact_history SET detail = '{{}}' WHERE contact_id IN {marks}", ids)
        cancelled = self.execute(
            f"UPDATE deliveries SET state = 'erased', body = NULL, updated_at = ? "
            f"WHERE contact_id IN {marks} AND state IN ('pending', 'held')",
            (stamp, *ids),
        )
        # left to finish, and marked: a failed attempt of theirs is erased, not retried
        in_flight = self.execute(
            f"UPDATE deliveries SET erased_in_flight = 1 WHERE contact_id IN {marks} "
            "AND state = 'inflight'",
            ids,
        ).rowcount
        self.execute(f"UPDATE deliveries SET body = NULL WHERE contact_id IN {marks}", ids)
        self.execute(
            f"UPDATE attempts SET error = NULL WHERE delivery_id IN "
            f"(SELECT id FROM deliveries WHERE contact_id IN {marks})",
            ids,
        )
        sends = self.execute(
            f"UPDATE sends SET request = '{{}}', answer = '' WHERE contact_id IN {marks}", ids
        )
        for marker in sorted(markers.identifiers):
            if len(marker) < 6:
                continue
            # a send that failed before resolving names the person only (no contact): in
            # this portfolio's channels, and for a recycled number while they held it
            spans = shared.get(marker if marker.startswith("+") else f"+{marker}")
            for start, end in spans if spans is not None else [("", None)]:
                sql = (
                    "UPDATE sends SET request = '{}', answer = '' WHERE contact_id IS NULL "
                    "AND (request LIKE ? OR answer LIKE ?) AND created_at >= ?"
                )
                params: list[Any] = [f"%{marker}%", f"%{marker}%", start]
                if end is not None:
                    sql += " AND created_at < ?"
                    params.append(end)
                if foreign:
                    sql += f" AND channel_id NOT IN ({', '.join('?' for _ in foreign)})"
                    params.extend(foreign)
                self.execute(sql, params)
        summary: dict[str, Any] = {
            "bsuids": bsuids.rowcount,
            "phones": phones.rowcount,
            "events": len(parsed),
            "raw_payloads_blanked": blanked,
            "raw_payloads_trimmed": trimmed,
            "deliveries_cancelled": cancelled.rowcount,
            "deliveries_in_flight": in_flight,
            "sends": sends.rowcount,
        }
        self.add_history(contact_id, stamp, "erased", summary)
        self.execute(
            "INSERT INTO erasures (contact_id, erased_at, requested_by, summary) "
            "VALUES (?, ?, ?, ?)",
            (contact_id, stamp, requested_by, json.dumps(summary, sort_keys=True)),
        )
        return summary
