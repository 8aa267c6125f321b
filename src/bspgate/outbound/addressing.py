"""Who a send goes to, and in which form: the addressing rules of the canonical contract (§3).

Pure logic over `IdentityView`, a small read-only slice of the store, so every rule is tested
without HTTP or a database. In order:

- `to.bsuid` must be a well-formed BSUID (rule 3: `invalid_bsuid`; never "cleaned");
- `normalize_phone`: `to.phone` in the v1.1 phone format (§1), separators removed, as inbound;
- `resolve_recipient`: a `contact_id` through the store (`unknown_contact`); a retired (relinked)
  BSUID is replaced by its contact's current one and reported (`replaced_bsuid`); a retired or
  moved phone alias is never used (`ignored_phone`); identifiers naming two different contacts
  are refused (`recipient_conflict`);
- `choose_address`: authentication templates go to a phone only (rule 2); channel `send_by` and
  the provider's BSUID capability decide the form (rule 4); exactly one form is chosen (rule 1);
  a send left without a phone because the given one is retired is `phone_retired`;
- `check_service_window`: free-form sends outside 24 h of the last inbound message (rule 5).

No I/O besides the `IdentityView` calls and no clock (`now` is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from bspgate.errors import SendError
from bspgate.identity.identifiers import BSUID_RE, normal_phone
from bspgate.store.base import ContactRow, follow_merged

BSUID_PATTERN = BSUID_RE  # the one BSUID definition (bspgate.identity.identifiers)
SERVICE_WINDOW = timedelta(hours=24)
AddressKind = Literal["bsuid", "phone"]


class IdentityView(Protocol):
    """The store reads addressing needs (implemented by `SqlTx` and `MemoryTx`)."""

    def contact(self, contact_id: str) -> ContactRow | None: ...
    def contact_by_bsuid(self, portfolio: str, bsuid: str) -> ContactRow | None: ...
    def contact_by_phone(self, portfolio: str, phone: str) -> ContactRow | None: ...
    def phone_alias_state(self, portfolio: str, phone: str) -> tuple[str, str] | None: ...
    def last_inbound_at(self, contact_id: str, channel_id: str) -> str | None: ...
    def contact_erased(self, contact_id: str) -> bool: ...


class NoIdentityView:
    """No store at hand (a CLI dry run with identifiers given directly): nobody is known."""

    def contact(self, contact_id: str) -> ContactRow | None:
        return None

    def contact_by_bsuid(self, portfolio: str, bsuid: str) -> ContactRow | None:
        return None

    def contact_by_phone(self, portfolio: str, phone: str) -> ContactRow | None:
        return None

    def phone_alias_state(self, portfolio: str, phone: str) -> tuple[str, str] | None:
        return None

    def last_inbound_at(self, contact_id: str, channel_id: str) -> str | None:
        return None

    def contact_erased(self, contact_id: str) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Recipient:
    """The person a send is for, with the identifiers that may be used to reach them."""

    contact_id: str | None
    bsuid: str | None
    phone: str | None
    replaced_bsuid: str | None = None
    ignored_phone: str | None = None
    # a BSUID given beside a contact that holds none, unknown to the store: not the contact's
    # as far as anything shows, so it is used only when the channel sends by BSUID alone
    unverified_bsuid: str | None = None


@dataclass(frozen=True, slots=True)
class Address:
    """The one form a send is addressed in."""

    kind: AddressKind
    value: str
    recipient: Recipient
    warnings: tuple[str, ...] = field(default=())

    def as_context(self) -> dict[str, Any]:
        """What templates see as `to`: only the chosen form is non-null (rule 1)."""
        phone = self.value if self.kind == "phone" else None
        return {
            "kind": self.kind,
            "value": self.value,
            "bsuid": self.value if self.kind == "bsuid" else None,
            "phone": phone,
            "phone_digits": phone.lstrip("+") if phone else None,
        }


def is_bsuid(value: str) -> bool:
    """True for a well-formed BSUID or parent BSUID, taken whole."""
    return BSUID_PATTERN.match(value) is not None


def _follow(view: IdentityView, contact: ContactRow | None) -> ContactRow | None:
    return follow_merged(contact, view.contact)


def check_bsuid(to: dict[str, Any]) -> None:
    """Rule 3: a malformed BSUID is refused as given, never repaired."""
    bsuid = to.get("bsuid")
    if bsuid is not None and not is_bsuid(bsuid):
        raise SendError(
            "invalid_bsuid",
            "to.bsuid is not a BSUID (country code, '.', 1-128 letters or digits), "
            "e.g. US.13491208655302741918; it is used exactly as given",
        )


PHONE_FORMAT = (
    "to.phone is not a phone: '+' and 1 to 15 digits, e.g. +15551234567; spaces, '-', '(', ')' "
    "and '.' may separate the digits"
)


def normalize_phone(to: dict[str, Any]) -> dict[str, Any]:
    """`to` with `to.phone` in E.164 (canonical §1 v1.1), as the inbound side writes phones.

    `+1 555-123-4567` is `+15551234567`; a short test number such as `+5678` is a phone. Anything
    else is `invalid_request`; the reason never repeats the value (it may be someone's number).
    """
    given = to.get("phone")
    if given is None:
        return to
    phone = normal_phone(given) if given.startswith("+") else None
    if phone is None:
        raise SendError("invalid_request", PHONE_FORMAT, pointer="/to/phone")
    return {**to, "phone": phone}


def _conflict(what: str) -> SendError:
    return SendError(
        "recipient_conflict", f"to.{what} belongs to another contact than the rest of `to`"
    )


def resolve_recipient(view: IdentityView, portfolio: str, to: dict[str, Any]) -> Recipient:
    """The contact and usable identifiers for `to` (contact_id, bsuid and/or phone)."""
    check_bsuid(to)
    given_bsuid: str | None = to.get("bsuid")
    given_phone: str | None = to.get("phone")
    contact: ContactRow | None = None
    if to.get("contact_id"):
        contact = _follow(view, view.contact(to["contact_id"]))
        if contact is None or contact.portfolio != portfolio:
            raise SendError(
                "unknown_contact",
                f"no contact {to['contact_id']!r} in this channel's portfolio",
            )
        if view.contact_erased(contact.id):
            # the gateway kept none of its identifiers; a send would record the person again
            raise SendError(
                "contact_erased",
                f"contact {contact.id!r} was erased: address the person by bsuid or phone if "
                "they write again",
            )
        if given_bsuid:
            owner = view.contact_by_bsuid(portfolio, given_bsuid)
            if owner is not None and owner.id != contact.id:
                raise _conflict("bsuid")
        if given_phone:
            owner = view.contact_by_phone(portfolio, given_phone)
            if owner is not None and owner.id != contact.id:
                raise _conflict("phone")
    elif given_bsuid:
        contact = view.contact_by_bsuid(portfolio, given_bsuid)
        if contact is None and given_phone:
            owner = view.contact_by_phone(portfolio, given_phone)
            # a phone-only contact plausibly is this person; one with another BSUID is not
            contact = owner if owner is not None and owner.bsuid is None else None
    elif given_phone:
        contact = view.contact_by_phone(portfolio, given_phone)

    bsuid = (contact.bsuid if contact else None) or given_bsuid
    unverified = None
    if contact is not None and given_bsuid and given_bsuid == contact.parent_bsuid:
        bsuid = given_bsuid  # a parent BSUID is no retired one: Cloud API's `recipient` takes it
    elif contact is not None and contact.bsuid is None and given_bsuid:
        owner = view.contact_by_bsuid(portfolio, given_bsuid)
        if owner is None or owner.id != contact.id:
            # the contact (phone only) is reached at its phone: sent to an unknown BSUID, the
            # statuses (which name only the BSUID) would make a new contact of it
            bsuid, unverified = None, given_bsuid
    replaced = given_bsuid if given_bsuid and bsuid and given_bsuid != bsuid else None
    phone = contact.phone if contact else None
    ignored = None
    if given_phone and given_phone != phone:
        state = view.phone_alias_state(portfolio, given_phone)
        if state is not None and state[1] != "active":
            ignored = "retired"  # identity rule 5: a retired alias is never sent to again
        elif state is not None and (contact is None or state[0] != contact.id):
            ignored = "belongs to another contact"
        elif phone is None:
            phone = given_phone
    return Recipient(
        contact_id=contact.id if contact else None,
        bsuid=bsuid,
        phone=phone,
        replaced_bsuid=replaced,
        ignored_phone=ignored,
        unverified_bsuid=unverified,
    )


def choose_address(
    recipient: Recipient,
    *,
    send_type: str,
    category: str | None,
    send_by: str,
    bsuid_supported: bool,
) -> Address:
    """Rules 1, 2 and 4: exactly one form, or a 422 naming the rule.

    When the form needs a phone and the only one given was set aside (`ignored_phone`), the
    refusal names that reason: `phone_retired` for a retired phone (contract §3: "a retired phone
    is never used"), else the rule's code with the reason in its detail.
    """
    if send_type == "template" and category == "authentication":
        if not recipient.phone:
            raise _no_phone(
                recipient,
                "auth_template_requires_phone",
                "authentication templates can only be sent to a phone number and none is "
                "known for this recipient (Meta error 131062 for a BSUID)",
            )
        return Address("phone", recipient.phone, recipient)
    if send_by == "phone" or (send_by == "auto" and not (recipient.bsuid and bsuid_supported)):
        if recipient.phone:
            return Address("phone", recipient.phone, recipient)
        why = "the channel sends by phone" if send_by == "phone" else "BSUID sends are not enabled"
        raise _no_phone(
            recipient,
            "bsuid_send_unsupported",
            f"{why} for this channel's provider and no phone is known for this recipient",
        )
    if not recipient.bsuid and recipient.unverified_bsuid and bsuid_supported:
        # the channel sends by BSUID only: the one given is the only one there is
        return Address("bsuid", recipient.unverified_bsuid, recipient)
    if not recipient.bsuid:
        raise SendError("bsuid_required", "the channel sends by BSUID only and no BSUID is known")
    if not bsuid_supported:
        raise SendError(
            "bsuid_send_unsupported",
            "the channel sends by BSUID only and its provider mapping does not support it",
        )
    return Address("bsuid", recipient.bsuid, recipient)


def _no_phone(recipient: Recipient, code: str, detail: str) -> SendError:
    """The refusal for a send that needs a phone when none can be used."""
    if recipient.ignored_phone == "retired":
        return SendError(
            "phone_retired",
            "to.phone is retired: the person it belonged to changed number (identity rule 5) "
            "and it may now be someone else's, so it is never sent to; no other phone is known "
            "for this recipient",
        )
    if recipient.ignored_phone:
        return SendError(code, f"{detail} (to.phone was not used: it {recipient.ignored_phone})")
    return SendError(code, detail)


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def check_service_window(
    last_inbound: str | None, *, policy: str, now: datetime, checked: bool = True
) -> tuple[str, ...]:
    """Rule 5 for a free-form send: refuses (`enforce`), warns (`warn`) or passes (`off`).

    `checked` is False when no store was consulted (a CLI dry run): the answer warns instead.
    """
    if policy == "off":
        return ()
    if not checked:
        return ("service_window_not_checked",)
    moment = _parse_time(last_inbound) if last_inbound else None
    if moment is not None and now - moment <= SERVICE_WINDOW:
        return ()
    if policy == "warn":
        return ("outside_service_window",)
    detail = (
        "the last inbound message from this contact on this channel is over 24 h old"
        if moment is not None
        else "this contact has never messaged this channel"
    )
    raise SendError(
        "outside_service_window", detail + ": only templates may be sent (service_window: enforce)"
    )
