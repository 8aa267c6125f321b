"""The identity rules of the canonical contract (§1), as pure logic over a `StoreTx`.

Per portfolio:
1. A BSUID resolves to the contact holding it (current or retired), or creates one.
2. BSUID and phone together record the pair (the phone becomes the contact's alias).
3. A phone alone resolves through the active alias, or creates a phone-only contact.
4. A new BSUID with the phone of a phone-only contact: that contact gains the BSUID (merge).
5. An announced identity change relinks: same contact, new current BSUID, the old one retired but
   still resolving; the old phone alias is retired (never used to send again) and the new phone
   becomes the alias only when the change names it.
6. A known phone with a different, unknown BSUID and no announcement: a new contact for the new
   BSUID takes the alias (recorded as moved); nothing is merged.
Username and display name: latest wins, every change recorded.

No I/O besides the `StoreTx` calls, no clock (`now` is passed in): tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bspgate.store.base import ContactRow, StoreTx


@dataclass(frozen=True, slots=True)
class Observation:
    """The identifiers one payload carries for one person."""

    bsuid: str | None = None
    parent_bsuid: str | None = None
    phone: str | None = None
    username: str | None = None
    name: str | None = None

    @classmethod
    def from_contact_data(cls, data: dict[str, Any]) -> Observation:
        return cls(
            bsuid=data.get("bsuid"),
            parent_bsuid=data.get("parent_bsuid"),
            phone=data.get("phone"),
            username=data.get("username"),
            name=data.get("name"),
        )


class UnresolvableContact(Exception):
    """The payload names nobody the store knows and carries no identifier to create one."""


class IdentityResolver:
    """Applies the rules for one transaction. `portfolio` and `channel_id` scope every call."""

    def __init__(
        self,
        tx: StoreTx,
        portfolio: str,
        channel_id: str,
        now: str,
        now_epoch: float = 0.0,
        *,
        announces: bool = True,
        holds: bool = True,
    ) -> None:
        self.tx = tx
        self.portfolio = portfolio
        self.channel_id = channel_id
        self.now = now
        self.now_epoch = now_epoch
        # Does this channel's provider announce identity changes (Meta's system messages)? If it
        # does, a known phone with a new BSUID is a recycled number (rule 6); if it announces
        # nothing, the phone is the only link left, and the contract relinks on it.
        self.announces = announces
        self.holds = holds  # some subscriber requires a phone: held deliveries may wait
        self._silent_relinks: list[str] = []

    def take_silent_relinks(self) -> list[str]:
        """Previous BSUIDs relinked without an announcement since the last call."""
        taken, self._silent_relinks = self._silent_relinks, []
        return taken

    # -- rules 1-4, 6 ----------------------------------------------------------------------
    def observe(self, seen: Observation) -> ContactRow:
        """Resolve the contact a message or status is about, recording what it teaches."""
        known: ContactRow | None = None  # the contact as stored before this payload, if any
        if seen.bsuid:
            contact = self.tx.contact_by_bsuid(self.portfolio, seen.bsuid)
            known = replace(contact) if contact is not None else None
            if contact is None:
                contact = self._first_bsuid(seen)
            elif contact.bsuid == seen.bsuid and seen.phone and contact.phone != seen.phone:
                self._set_phone(contact, seen.phone, "paired with the current BSUID")
            # a retired BSUID (late webhook after a relink) lands on its contact and teaches
            # nothing: its phone, if any, was retired with it
        elif seen.phone:
            contact = self.tx.contact_by_phone(self.portfolio, seen.phone)
            known = replace(contact) if contact is not None else None
            if contact is None:
                contact = self.tx.create_contact(self.portfolio, self.now)
                self._set_phone(contact, seen.phone, "first seen, phone only")
                self.tx.add_history(contact.id, self.now, "created", {"by": "phone"})
        else:
            raise UnresolvableContact("the payload carries neither a BSUID nor a phone")
        if seen.bsuid is None or contact.bsuid == seen.bsuid:
            self._profile(contact, seen)
        if known is not None:
            # seen again: last-seen times move (a contact made just now has them already)
            self.tx.touch_identifiers(contact, self.now)
        if contact != known:  # one UPDATE only when something changed
            self.tx.save_contact(contact, self.now)
        return contact

    def _first_bsuid(self, seen: Observation) -> ContactRow:
        assert seen.bsuid is not None
        owner = self.tx.contact_by_phone(self.portfolio, seen.phone) if seen.phone else None
        if owner is not None and owner.bsuid is None:
            contact = owner  # rule 4: the phone-only contact gains the BSUID
            self.tx.add_history(contact.id, self.now, "merged", {"bsuid": seen.bsuid})
        elif owner is not None and not self.announces:
            # an identity change the provider did not announce: same contact, new BSUID; the old
            # one stays resolvable (link_bsuid retires it) and the phone, seen again, stays
            contact = owner
            assert owner.bsuid is not None
            self._silent_relinks.append(owner.bsuid)
            self.tx.add_history(
                contact.id,
                self.now,
                "relinked",
                {"channel": self.channel_id, "announced": False, "previous_bsuid": owner.bsuid},
            )
        else:
            contact = self.tx.create_contact(self.portfolio, self.now)
            self.tx.add_history(contact.id, self.now, "created", {"by": "bsuid"})
        contact.bsuid = seen.bsuid
        self.tx.link_bsuid(contact, seen.bsuid, self.now, self.channel_id, current=True)
        if seen.phone and contact.phone != seen.phone:
            self._set_phone(contact, seen.phone, "paired with a new BSUID")
        return contact

    def _set_phone(self, contact: ContactRow, phone: str, why: str) -> None:
        """Make `phone` the contact's alias; a previous owner loses it (rule 6)."""
        owner = self.tx.contact_by_phone(self.portfolio, phone)
        if owner is not None and owner.id != contact.id:
            self.tx.end_phone(owner.id, phone, self.now, "moved", f"moved to {contact.id}")
            self.tx.add_history(owner.id, self.now, "phone_moved", {"to": contact.id})
            owner.phone = None
            self.tx.save_contact(owner, self.now)
            self.tx.add_history(contact.id, self.now, "phone_moved_in", {"from": owner.id})
        if contact.phone and contact.phone != phone:
            self.tx.end_phone(contact.id, contact.phone, self.now, "retired", "replaced")
        if contact.phone != phone:
            self.tx.link_phone(contact, phone, self.now, self.channel_id)
            self.tx.add_history(contact.id, self.now, "phone_captured", {"why": why})
            # deliveries held for phone-keyed subscribers go out now, with the phone filled in
            if self.holds:
                self.tx.release_held(contact.id, phone, self.now_epoch, self.now)
        contact.phone = phone

    def _profile(self, contact: ContactRow, seen: Observation) -> None:
        if seen.parent_bsuid and seen.parent_bsuid != contact.parent_bsuid:
            contact.parent_bsuid = seen.parent_bsuid
            self.tx.link_bsuid(contact, seen.parent_bsuid, self.now, self.channel_id, current=False)
        for attribute in ("username", "name"):
            value = getattr(seen, attribute)
            if value and value != getattr(contact, attribute):
                previous = getattr(contact, attribute)
                if previous:
                    detail = {"previous": previous}
                    self.tx.add_history(contact.id, self.now, f"{attribute}_changed", detail)
                setattr(contact, attribute, value)

    # -- rule 5 ----------------------------------------------------------------------------
    def relink(
        self, new: Observation, previous_bsuid: str | None, previous_phone: str | None
    ) -> tuple[ContactRow, str | None, str | None]:
        """Apply an announced identity change. Answers (contact, previous bsuid, previous phone)."""
        contact = None
        if previous_bsuid:
            contact = self.tx.contact_by_bsuid(self.portfolio, previous_bsuid)
        if contact is None and previous_phone:
            contact = self.tx.contact_by_phone(self.portfolio, previous_phone)
        newer = self.tx.contact_by_bsuid(self.portfolio, new.bsuid) if new.bsuid else None
        if contact is None:
            contact = newer or self.tx.create_contact(self.portfolio, self.now)
        carried_phone = None
        if newer is not None and newer.id != contact.id:
            # The new BSUID wrote before the announcement arrived: fold it into the old contact,
            # whose id is the one downstream systems already hold. A phone seen with the new
            # BSUID belongs to the new identity, so it comes along.
            if newer.phone:
                carried_phone = newer.phone
                self.tx.end_phone(
                    newer.id, newer.phone, self.now, "moved", f"merged into {contact.id}"
                )
                newer.phone = None
            newer.merged_into = contact.id
            self.tx.save_contact(newer, self.now)
            self.tx.add_history(newer.id, self.now, "merged_into", {"into": contact.id})
            self.tx.add_history(contact.id, self.now, "absorbed", {"from": newer.id})
        old_bsuid = contact.bsuid or previous_bsuid
        old_phone = contact.phone or previous_phone
        if (
            previous_bsuid
            and previous_bsuid != new.bsuid
            and (self.tx.contact_by_bsuid(self.portfolio, previous_bsuid) is None)
        ):
            # first time we hear of the old BSUID: keep it resolvable for late webhooks
            self.tx.link_bsuid(contact, previous_bsuid, self.now, self.channel_id, current=False)
        if new.bsuid and new.bsuid != contact.bsuid:
            contact.bsuid = new.bsuid
            self.tx.link_bsuid(contact, new.bsuid, self.now, self.channel_id, current=True)
        if contact.phone and contact.phone != new.phone:
            # A BSUID changes only with the phone number: the old alias must never be sent to.
            self.tx.end_phone(contact.id, contact.phone, self.now, "retired", "identity changed")
            contact.phone = None
        if new.phone:
            self._set_phone(contact, new.phone, "named by the identity change")
        elif carried_phone:
            self._set_phone(contact, carried_phone, "seen with the new BSUID")
        self._profile(contact, new)
        self.tx.add_history(contact.id, self.now, "relinked", {"channel": self.channel_id})
        self.tx.save_contact(contact, self.now)
        return contact, old_bsuid if old_bsuid != contact.bsuid else None, old_phone
