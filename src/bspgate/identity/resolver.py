"""The identity rules of the canonical contract (§1, v1.1), as pure logic over a `StoreTx`.

Per portfolio:
1. A BSUID resolves to the contact holding it (current or retired), or creates one.
2. BSUID and phone together record the pair (the phone becomes the contact's alias).
3. A phone alone resolves through the alias (the one it was at the payload's time), or creates a
   phone-only contact.
4. A new BSUID with the phone of a phone-only contact: that contact gains the BSUID.
5. An announced identity change relinks: same contact, new current BSUID, the old one retired but
   still resolving; the old phone alias is retired and the new phone becomes the alias only when
   the change names it.
6. A known phone with a different, unknown BSUID (every provider): a new contact for the new BSUID
   takes the alias; the contact that lost it is told (`phone_reassigned`); nothing is merged.
8. One payload pairing contact A's BSUID with phone-only contact B's phone merges them: the older
   survives, the other's id resolves to it (`merged`). An announced change whose new BSUID already
   has a contact merges the same way.
9. Every fact carries the provider event time of its evidence; older evidence never overturns
   newer (`at` is that time; RFC 3339 UTC strings compare in time order).
10. Phones learned elsewhere (a shared contact card, a send answer) arrive here as pairs.
11. An operator merge has rule 8's effects.
Username and display name: latest wins, every change recorded.

No I/O besides the `StoreTx` calls, no clock (`now` is passed in): tested without a database.
What downstream must be told besides the payload's own events comes out as `Notice`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bspgate.store.base import ContactRow, StoreTx
from bspgate.times import evidence_time

PHONE_REASSIGNED = "phone_reassigned"
MERGED = "merged"


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


@dataclass(slots=True)
class Notice:
    """An identity event downstream is owed: `contact` (its state when written) and `data`."""

    kind: str  # PHONE_REASSIGNED (an identity_changed event) or MERGED
    contact: ContactRow
    key: str  # the provider-event key of the event (its id derives from it)
    data: dict[str, Any] = field(default_factory=dict)


class UnresolvableContact(Exception):
    """The payload names nobody the store knows and carries no identifier to create one."""


def _age(at: str | None, contact: ContactRow) -> tuple[str, str]:
    """How new a fact of `contact` is: its evidence time, then when the contact was made."""
    return (at or "", contact.created_at or "")


def _newer(at: str, than: str | None) -> bool:
    """Is evidence at `at` at least as new as the evidence `than` (none counts as oldest)?"""
    return than is None or at >= than


def _learned_since(holder: ContactRow, phone: str, at: str) -> bool:
    """Did `holder` (found holding `phone` at or after `at`) learn it at or after `at`? Its
    current alias by its evidence time; a past one (an announced previous number, whose start
    nobody dated) by the lookup that found it."""
    return holder.phone != phone or _newer(holder.phone_at or "", at)


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
        holds: bool = True,
    ) -> None:
        self.tx = tx
        self.portfolio = portfolio
        self.channel_id = channel_id
        self.now = now
        self.now_epoch = now_epoch
        self.holds = holds  # some subscriber requires a phone: held deliveries may wait
        self._notices: list[Notice] = []

    def take_notices(self) -> list[Notice]:
        """Reassignments and merges made since the last call, in the order they happened."""
        taken, self._notices = self._notices, []
        return taken

    # -- rules 1-4, 6, 8-10 -----------------------------------------------------------------
    def observe(self, seen: Observation, at: str | None = None) -> ContactRow:
        """Resolve the contact a payload is about (evidence time `at`), recording what it says."""
        at = evidence_time(at or self.now)
        if seen.bsuid:
            contact = self.tx.contact_by_bsuid(self.portfolio, seen.bsuid)
            known = contact.copy() if contact is not None else None
            if contact is None:
                contact = self._first_bsuid(seen, at)
            elif contact.bsuid == seen.bsuid:
                if contact.bsuid_at is None or at < contact.bsuid_at:
                    contact.bsuid_at = at  # the earliest evidence of the current BSUID
                if seen.phone:
                    contact = self._pair(contact, seen.phone, at, "paired with the current BSUID")
            else:
                # a retired BSUID (late webhook after a relink) lands on its contact; its phone
                # was retired with it, and is never made an alias again
                self.tx.touch_bsuid(self.portfolio, seen.bsuid, self.now)
                if seen.phone:
                    contact = self._pair_retired(contact, seen.bsuid, seen.phone, at)
        elif seen.phone:
            # rule 9: whose number it was at `at`; between two holders, the later one's
            # (`phone_holder_at`): a new contact must not take a number someone holds since
            contact = self.tx.phone_owner_at(self.portfolio, seen.phone, at, "next")
            known = contact.copy() if contact is not None else None
            if contact is None:
                contact = self.tx.create_contact(self.portfolio, self.now)
                self.tx.add_history(contact.id, self.now, "created", {"by": "phone"})
                self._take_phone(contact, seen.phone, at, "first seen, phone only")
        else:
            raise UnresolvableContact("the payload carries neither a BSUID nor a phone")
        # a late payload of a retired BSUID still tells the username and name of its time (the
        # evidence times decide); its parent BSUID is that of the retired one: history only
        self._profile(contact, seen, at, current=seen.bsuid is None or contact.bsuid == seen.bsuid)
        if known is not None:
            # seen again: last-seen times move (a contact made just now has them already)
            self.tx.touch_identifiers(contact, self.now)
        if contact != known:  # one UPDATE only when something changed
            self.tx.save_contact(contact, self.now)
        return contact

    def addressed(self, bsuid: str | None, phone: str | None) -> ContactRow:
        """The contact of a send's address the store did not know when the send was planned.

        A send is no provider payload about the person: it teaches who the address is, not
        since when. So the identifier is recorded without an evidence time (rule 9), and any
        dated evidence (a late identity change, a pair) decides over it. An address someone
        holds by now (a webhook processed meanwhile) is theirs.
        """
        found = self.tx.contact_by_bsuid(self.portfolio, bsuid) if bsuid else None
        if found is None and phone and not bsuid:
            found = self.tx.contact_by_phone(self.portfolio, phone)
        if found is not None:
            return found
        contact = self.tx.create_contact(self.portfolio, self.now)
        self.tx.add_history(contact.id, self.now, "created", {"by": "bsuid" if bsuid else "phone"})
        if bsuid:
            contact.bsuid = bsuid
            self.tx.link_bsuid(contact, bsuid, self.now, self.channel_id, current=True)
        elif phone:
            contact.phone = phone
            self.tx.link_phone(contact, phone, self.now, self.channel_id)
            self.tx.add_history(contact.id, self.now, "phone_captured", {"why": "sent to"})
        self.tx.save_contact(contact, self.now)
        return contact

    def _first_bsuid(self, seen: Observation, at: str) -> ContactRow:
        assert seen.bsuid is not None
        owner = self.tx.contact_by_phone(self.portfolio, seen.phone) if seen.phone else None
        if owner is None and seen.phone:
            # rule 9: a contact without a BSUID that held the number at the pair's time (a
            # phones-only number change moved it on since) is this person too
            past = self.tx.phone_owner_at(self.portfolio, seen.phone, at)
            owner = past if past is not None and past.bsuid is None else None
        if owner is not None and owner.bsuid is None:
            contact = owner  # rule 4: the phone-only contact gains the BSUID
            self.tx.add_history(contact.id, self.now, "merged", {"bsuid": seen.bsuid})
            phone, since = seen.phone, contact.phone_at
            if phone and contact.phone == phone and (since is None or at < since):
                # rule 9: a phone-only sighting shows the number in use, not whose it was; the
                # pair is the evidence that this person held it, from `at` on
                contact.phone_at = at
                self.tx.phone_known_since(contact.id, phone, at)
        else:
            contact = self.tx.create_contact(self.portfolio, self.now)
            self.tx.add_history(contact.id, self.now, "created", {"by": "bsuid"})
        contact.bsuid = seen.bsuid
        contact.bsuid_at = at
        self.tx.link_bsuid(contact, seen.bsuid, self.now, self.channel_id, current=True)
        if seen.phone:
            contact = self._pair(contact, seen.phone, at, "paired with a new BSUID")
        return contact

    def _pair(self, contact: ContactRow, phone: str, at: str, why: str) -> ContactRow:
        """Rule 2 with 6, 8 and 9: `phone` is the alias of BSUID contact `contact` as of `at`."""
        owner = self.tx.contact_by_phone(self.portfolio, phone)
        if owner is not None and owner.id != contact.id:
            if owner.bsuid is None and contact.bsuid is not None:
                return self.merge(contact, owner, "identity_rule", at=at)  # rule 8
            if not _newer(at, owner.phone_at):
                # rule 9: the phone was taught to its owner by newer evidence; it stays there,
                # and was this contact's until then (a legacy payload of that time finds it)
                self.tx.add_history(contact.id, self.now, "phone_kept", {"by": owner.id})
                until = owner.phone_at or at
                self.tx.record_past_phone(
                    contact, phone, self.now, self.channel_id, at, until, moved=True
                )
                return contact
        if contact.phone != phone and self.tx.phone_taught_after(
            self.portfolio, phone, at, contact.id
        ):
            return contact  # rule 9: someone had the number after this evidence (recycled)
        if contact.phone == phone:
            if contact.phone_at is None or at > contact.phone_at:
                contact.phone_at = at
            return contact
        if contact.phone and not _newer(at, contact.phone_at):
            return contact  # the contact's own phone is newer evidence than this pair
        if owner is not None and owner.id != contact.id:
            self._reassign(owner, phone, contact, at)
        self._take_phone(contact, phone, at, why)
        return contact

    def _pair_retired(self, contact: ContactRow, bsuid: str, phone: str, at: str) -> ContactRow:
        """A pair of a retired BSUID, learned late: the phone belongs to the contact's past.

        A phone-only contact holding it is the same person (rule 8); otherwise the phone is
        recorded as a past alias, so legacy payloads of that time still find the contact.
        """
        until = self.tx.bsuid_retired_at(self.portfolio, bsuid) or contact.bsuid_at or at
        owner = self.tx.contact_by_phone(self.portfolio, phone)
        if owner is not None and owner.id != contact.id and owner.bsuid is None:
            contact = self.merge(contact, owner, "identity_rule", at=at)
            # the phone-only contact's number was the retired BSUID's: retired with it, unless
            # it was seen in use after that (its own evidence, not this late pair's, decides)
            if contact.phone == phone and min(at, contact.phone_at or at) < until:
                self.tx.end_phone(contact.id, phone, self.now, "retired", "identity changed", until)
                contact.phone = contact.phone_at = None
        elif owner is None or owner.id != contact.id:
            if owner is not None and at < until and _newer(at, owner.phone_at):
                # the number was this person's after the owner's evidence: the owner lost it
                self._reassign(owner, phone, contact, at)
            self.tx.record_past_phone(contact, phone, self.now, self.channel_id, at, until)
        return contact

    def _reassign(self, owner: ContactRow, phone: str, to: ContactRow, at: str) -> None:
        """Rule 6: the phone now belongs to `to`; its previous owner is told."""
        self.tx.end_phone(owner.id, phone, self.now, "moved", f"moved to {to.id}", at)
        self.tx.add_history(owner.id, self.now, "phone_moved", {"to": to.id})
        self.tx.add_history(to.id, self.now, "phone_moved_in", {"from": owner.id})
        owner.phone = None
        owner.phone_at = None
        self.tx.save_contact(owner, self.now)
        if owner.bsuid is None:
            return  # a phone-only contact lost its only identifier: no event can name it
        self._notices.append(
            Notice(
                PHONE_REASSIGNED,
                owner,
                f"phone_reassigned:{owner.id}:{to.id}:{at}",
                {"change": PHONE_REASSIGNED, "previous": {"bsuid": owner.bsuid, "phone": phone}},
            )
        )

    def _take_phone(self, contact: ContactRow, phone: str, at: str, why: str) -> None:
        if contact.phone and contact.phone != phone:
            self.tx.end_phone(contact.id, contact.phone, self.now, "retired", "replaced", at)
        self.tx.link_phone(contact, phone, self.now, self.channel_id, at)
        self.tx.add_history(contact.id, self.now, "phone_captured", {"why": why})
        contact.phone = phone
        contact.phone_at = at
        # deliveries held for phone-keyed subscribers go out now, with the phone filled in
        if self.holds:
            self.tx.release_held(contact.id, phone, self.now_epoch, self.now)

    def _profile(
        self, contact: ContactRow, seen: Observation, at: str, *, current: bool = True
    ) -> None:
        if seen.parent_bsuid and seen.parent_bsuid != contact.parent_bsuid:
            holder = self.tx.contact_by_bsuid(self.portfolio, seen.parent_bsuid)
            if holder is None or holder.id == contact.id:
                self.tx.link_bsuid(
                    contact, seen.parent_bsuid, self.now, self.channel_id, current=False
                )
            # else another contact holds it (a send addressed to the parent BSUID made it): its
            # row stays its own; an operator merges the two if they are one person (rule 11)
            if current:
                contact.parent_bsuid = seen.parent_bsuid
        for attribute in ("username", "name"):
            value = getattr(seen, attribute)
            if not value:
                continue
            known_at = getattr(contact, f"{attribute}_at")
            if known_at is not None and at < known_at:
                continue  # rule 9: an older webhook arriving late never overturns a newer one
            setattr(contact, f"{attribute}_at", at)
            if value != getattr(contact, attribute):
                previous = getattr(contact, attribute)
                if previous:
                    detail = {"previous": previous}
                    self.tx.add_history(contact.id, self.now, f"{attribute}_changed", detail)
                setattr(contact, attribute, value)

    # -- rules 8 and 11 --------------------------------------------------------------------------
    def merge(
        self,
        one: ContactRow,
        other: ContactRow,
        by: str,
        *,
        at: str | None = None,
        key: str = "",
        into_first: bool = False,
    ) -> ContactRow:
        """Merge two contacts: the one created first survives and is answered (rule 8).

        `by` is `identity_rule` or `operator`; `key` names the operator's API key. An operator
        names the survivor (`into_first`: `one` survives, rule 11).
        """
        at = evidence_time(at) if at else None
        if into_first:
            survivor, absorbed = one, other
        else:
            survivor, absorbed = sorted((one, other), key=lambda c: _age(c.created_at, c))
        self.tx.merge_rows(absorbed.id, survivor.id, self.now)
        # the newer evidence wins; at equal event times, the contact created later
        if absorbed.bsuid and (
            survivor.bsuid is None
            or _age(survivor.bsuid_at, survivor) < _age(absorbed.bsuid_at, absorbed)
        ):
            survivor.bsuid, survivor.bsuid_at = absorbed.bsuid, absorbed.bsuid_at
            survivor.parent_bsuid = absorbed.parent_bsuid or survivor.parent_bsuid
        if survivor.bsuid:
            # the newest BSUID is current; every other one stays resolvable, retired
            self.tx.link_bsuid(
                survivor,
                survivor.bsuid,
                self.now,
                self.channel_id,
                current=True,
                evidence=survivor.bsuid_at,
            )
        if absorbed.phone:
            if survivor.phone is None or _age(survivor.phone_at, survivor) < _age(
                absorbed.phone_at, absorbed
            ):
                if survivor.phone:
                    self.tx.end_phone(
                        survivor.id,
                        survivor.phone,
                        self.now,
                        "retired",
                        "merged",
                        absorbed.phone_at or at,
                    )
                survivor.phone, survivor.phone_at = absorbed.phone, absorbed.phone_at
            else:
                self.tx.end_phone(
                    survivor.id,
                    absorbed.phone,
                    self.now,
                    "retired",
                    "merged",
                    survivor.phone_at or at,
                )
        for attribute in ("username", "name"):  # the newer evidence; a value over none
            mine, theirs = getattr(survivor, attribute), getattr(absorbed, attribute)
            mine_at, theirs_at = (getattr(c, f"{attribute}_at") for c in (survivor, absorbed))
            if theirs and (not mine or (theirs_at or "") > (mine_at or "")):
                setattr(survivor, attribute, theirs)
                setattr(survivor, f"{attribute}_at", theirs_at)
        for notice in self._notices:
            if notice.contact is absorbed:
                # an earlier notice of this payload about the contact absorbed now (merged,
                # then merged again) keeps its state as it was: its event must name someone
                notice.contact = absorbed.copy()
        absorbed.bsuid = absorbed.parent_bsuid = absorbed.phone = None
        absorbed.bsuid_at = absorbed.phone_at = None
        absorbed.merged_into = survivor.id
        self.tx.save_contact(absorbed, self.now)
        self.tx.save_contact(survivor, self.now)
        detail: dict[str, Any] = {"from": absorbed.id, "by": by}
        if key:
            detail["key"] = key
        self.tx.add_history(survivor.id, self.now, "absorbed", detail)
        self.tx.add_history(absorbed.id, self.now, "merged_into", {"into": survivor.id, "by": by})
        if survivor.phone and self.holds:
            self.tx.release_held(survivor.id, survivor.phone, self.now_epoch, self.now)
        self._notices.append(
            Notice(
                MERGED,
                survivor,
                f"merged:{absorbed.id}:{survivor.id}",
                {"merged": {"id": absorbed.id, "by": by}},
            )
        )
        return survivor

    # -- rule 5 ----------------------------------------------------------------------------
    def _holder_since(self, old: ContactRow, new: Observation, at: str) -> ContactRow | None:
        """The contact that took the announced new number from the change on, when it is the
        person announcing it: it learned the number at or after the change, and no BSUID says
        otherwise (a phone-only contact, or one whose BSUID came only with the number while
        the change names no BSUID and the person had none)."""
        assert new.phone is not None
        holder = self.tx.phone_owner_at(self.portfolio, new.phone, at, "next")
        if holder is None or holder.id == old.id or not _learned_since(holder, new.phone, at):
            return None
        if holder.bsuid is None or (new.bsuid is None and old.bsuid is None):
            return holder
        return None

    def relink(
        self,
        new: Observation,
        previous_bsuid: str | None,
        previous_phone: str | None,
        at: str | None = None,
    ) -> tuple[ContactRow, str | None, str | None]:
        """Apply an announced identity change. Answers (contact, previous bsuid, previous phone)."""
        at = evidence_time(at or self.now)
        old = self.tx.contact_by_bsuid(self.portfolio, previous_bsuid) if previous_bsuid else None
        if old is None and previous_phone:
            # who held it until the change: a later holder (its next one) is someone else
            old = self.tx.phone_owner_at(self.portfolio, previous_phone, at, "strict")
            if old is not None and previous_bsuid and old.bsuid not in (None, previous_bsuid):
                old = None  # its holder has another BSUID: a stranger who paired it (rule 6)
        newer = self.tx.contact_by_bsuid(self.portfolio, new.bsuid) if new.bsuid else None
        # the phone before the change: the old contact's, read before a merge gives it the
        # newer contact's (a pair of the new BSUID that arrived before the announcement)
        before = old.phone if old is not None else None
        # The change moves `old` off the very BSUID it holds: what was seen of that BSUID, even
        # dated after the change, is a late webhook of it (a status of a message sent before
        # the change, read after it). Rule 5 lands those on the contact, and they tell nothing
        # against the change: a changed BSUID is never current again, and the phone it had is
        # retired with it, however late its evidence (`old_alias`; likewise below).
        old_alias = (
            old is not None
            and old.bsuid is not None
            and old.bsuid == previous_bsuid
            and previous_phone in (None, before)
        )
        if old is not None and newer is None and new.phone:
            # the person wrote from the new number before the announcement arrived: had it
            # come first, those payloads would have found this contact (rules 3 and 4)
            newer = self._holder_since(old, new, at)
        if old is not None and newer is not None and old.id != newer.id:
            # the new BSUID (or number) wrote before the announcement arrived: one person, one
            # contact, whose old phone is retired first, so the merge cannot keep it
            if old.phone and old.phone != new.phone and (old_alias or _newer(at, old.phone_at)):
                self.tx.end_phone(old.id, old.phone, self.now, "retired", "identity changed", at)
                old.phone = old.phone_at = None
            if old.bsuid is not None and old.bsuid == previous_bsuid:
                old.bsuid_at = None  # being changed: its (late) sightings win no merge
            contact = self.merge(old, newer, "identity_rule", at=at)
        elif old is not None:
            contact = old
        elif newer is not None:
            contact = newer
        else:
            holder = None
            if new.phone and not new.bsuid:
                # phones only: a contact without a BSUID holding the new number is this person
                # (had the change arrived first, that contact's payloads would have found it),
                # and so is one whose BSUID came with the number after the change (rule 4)
                holder = self.tx.phone_owner_at(self.portfolio, new.phone, at, "next")
                if holder is not None and holder.bsuid is not None:
                    learned = _learned_since(holder, new.phone, at)
                    holder = holder if learned and not previous_bsuid else None
            if holder is not None:
                contact = holder
            else:
                contact = self.tx.create_contact(self.portfolio, self.now)
                self.tx.add_history(contact.id, self.now, "created", {"by": "identity change"})
        if previous_phone and contact.phone != previous_phone:
            # the announced previous number was this person's until the change: a legacy
            # payload of that time, arriving late, finds them (rule 9)
            self.tx.record_past_phone(contact, previous_phone, self.now, self.channel_id, "", at)
        old_bsuid = contact.bsuid or previous_bsuid
        old_phone = previous_phone or before  # the announced one first, as events say
        # the change applies when it moves the contact off its current BSUID (as above; after a
        # merge, the contact's BSUID may be a later change's), else when it is newer than the
        # contact's current BSUID (rule 9)
        successor = contact.bsuid is not None and contact.bsuid == previous_bsuid
        fresh = contact.bsuid is None or successor or _newer(at, contact.bsuid_at)
        if new.bsuid and new.bsuid != contact.bsuid:
            if fresh:
                contact.bsuid, contact.bsuid_at = new.bsuid, at
                self.tx.link_bsuid(
                    contact, new.bsuid, self.now, self.channel_id, current=True, evidence=at
                )
            elif self.tx.contact_by_bsuid(self.portfolio, new.bsuid) is None:
                # rule 9: a later change already moved the contact on; this BSUID is history
                self.tx.link_bsuid(
                    contact,
                    new.bsuid,
                    self.now,
                    self.channel_id,
                    current=False,
                    evidence=contact.bsuid_at,
                )
        if previous_bsuid and previous_bsuid not in (new.bsuid, contact.bsuid):
            holder = self.tx.contact_by_bsuid(self.portfolio, previous_bsuid)
            if holder is None or holder.id == contact.id:
                # the old BSUID stays resolvable for late webhooks, retired as of this change
                self.tx.link_bsuid(
                    contact, previous_bsuid, self.now, self.channel_id, current=False, evidence=at
                )
        old_alias = successor and previous_phone in (None, contact.phone)
        if (
            contact.phone
            and contact.phone != new.phone
            and (old_alias or _newer(at, contact.phone_at))
        ):
            # A BSUID changes only with the phone number: the old alias must never be sent to.
            self.tx.end_phone(
                contact.id, contact.phone, self.now, "retired", "identity changed", at
            )
            contact.phone = contact.phone_at = None
        # the announced phone is current unless the contact moved on since: to a later BSUID, or
        # to a phone of newer evidence. A newer sighting of the announced BSUID itself (a status
        # that arrived first, which names no phone) does not make the phone history.
        current = fresh or (new.bsuid is not None and contact.bsuid == new.bsuid)
        if new.phone and current and (contact.phone is None or _newer(at, contact.phone_at)):
            contact = self._pair(contact, new.phone, at, "named by the identity change")
        elif new.phone:
            contact = self._pair_retired(contact, new.bsuid or "", new.phone, at)  # rule 9: past
        # the new BSUID's parent belongs with it whenever it is current, even when a newer
        # payload of it came first; username and name go by their own evidence times
        self._profile(contact, new, at, current=current)
        self.tx.add_history(contact.id, self.now, "relinked", {"channel": self.channel_id})
        self.tx.save_contact(contact, self.now)
        return contact, old_bsuid if old_bsuid != contact.bsuid else None, old_phone
