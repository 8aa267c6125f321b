"""The addressing rules as pure logic over the in-memory store (no HTTP, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bspgate.errors import SendError
from bspgate.identity.resolver import IdentityResolver, Observation
from bspgate.outbound.addressing import (
    Recipient,
    check_service_window,
    choose_address,
    resolve_recipient,
)
from bspgate.store.memory import MemoryTx

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
B1, B2 = "US.11111111111111111111", "US.22222222222222222222"


def store_with(*people: Observation) -> tuple[MemoryTx, list[str]]:
    tx = MemoryTx()
    resolver = IdentityResolver(tx, "acme", "ch", "2026-11-20T10:00:00Z")
    return tx, [resolver.observe(person).id for person in people]


def test_phone_of_another_contact_is_a_conflict_with_contact_id() -> None:
    tx, (first, _second) = store_with(Observation(bsuid=B1), Observation(phone="+15550000002"))
    with pytest.raises(SendError) as caught:
        resolve_recipient(tx, "acme", {"contact_id": first, "phone": "+15550000002"})
    assert caught.value.code == "recipient_conflict"


def test_contact_of_another_portfolio_is_unknown() -> None:
    tx, (contact,) = store_with(Observation(bsuid=B1))
    with pytest.raises(SendError) as caught:
        resolve_recipient(tx, "other-portfolio", {"contact_id": contact})
    assert caught.value.code == "unknown_contact"


def test_moved_phone_is_not_used_for_the_bsuid_it_left() -> None:
    # a recycled number: the phone moved to a new BSUID's contact (identity rule 6)
    tx, (old_owner, new_owner) = store_with(
        Observation(bsuid=B1, phone="+15550000001"), Observation(bsuid=B2, phone="+15550000001")
    )
    recipient = resolve_recipient(tx, "acme", {"bsuid": B1, "phone": "+15550000001"})
    assert recipient.contact_id == old_owner != new_owner
    assert recipient.phone is None
    assert recipient.ignored_phone == "belongs to another contact"


@pytest.mark.parametrize("by", ["phone", "contact_id"])
def test_an_unknown_bsuid_beside_a_phone_only_contact_is_not_used_to_reach_it(by: str) -> None:
    # sent to the BSUID, the statuses (naming only it) would make a stranger of the contact;
    # sent to the phone, they name the phone (and the BSUID, which then joins it: rule 4)
    tx, (legacy,) = store_with(Observation(phone="+15550000003"))
    given = {"phone": "+15550000003"} if by == "phone" else {"contact_id": legacy}
    recipient = resolve_recipient(tx, "acme", {"bsuid": B1, **given})
    assert (recipient.contact_id, recipient.bsuid, recipient.phone) == (
        legacy,
        None,
        "+15550000003",
    )
    assert recipient.unverified_bsuid == B1

    def address(send_by: str) -> tuple[str, str]:
        chosen = choose_address(
            recipient, send_type="text", category=None, send_by=send_by, bsuid_supported=True
        )
        return chosen.kind, chosen.value

    assert address("auto") == ("phone", "+15550000003")
    assert address("bsuid") == ("bsuid", B1)  # the channel sends by BSUID alone: the one given


@pytest.mark.parametrize(
    ("send_by", "supported", "bsuid", "phone", "expected"),
    [
        ("auto", True, B1, "+15550000001", "bsuid"),
        ("auto", False, B1, "+15550000001", "phone"),
        ("auto", False, B1, None, "bsuid_send_unsupported"),
        ("phone", True, B1, None, "bsuid_send_unsupported"),
        ("phone", True, B1, "+15550000001", "phone"),
        ("bsuid", True, None, "+15550000001", "bsuid_required"),
        ("bsuid", False, B1, "+15550000001", "bsuid_send_unsupported"),
        ("bsuid", True, B1, "+15550000001", "bsuid"),
    ],
)
def test_send_by_policy(
    send_by: str, supported: bool, bsuid: str | None, phone: str | None, expected: str
) -> None:
    recipient = Recipient("ct_1", bsuid, phone)

    def choose() -> str:
        address = choose_address(
            recipient, send_type="text", category=None, send_by=send_by, bsuid_supported=supported
        )
        context = address.as_context()
        assert (context["bsuid"] is None) != (context["phone"] is None)  # rule 1
        return address.kind

    if expected in {"bsuid", "phone"}:
        assert choose() == expected
    else:
        with pytest.raises(SendError) as caught:
            choose()
        assert caught.value.code == expected


def test_auth_template_goes_to_the_phone_even_when_the_channel_sends_by_bsuid() -> None:
    address = choose_address(
        Recipient("ct_1", B1, "+15550000001"),
        send_type="template",
        category="authentication",
        send_by="bsuid",
        bsuid_supported=True,
    )
    assert (address.kind, address.value) == ("phone", "+15550000001")


def test_window_without_any_inbound_is_closed() -> None:
    with pytest.raises(SendError) as caught:
        check_service_window(None, policy="enforce", now=NOW)
    assert "never messaged" in caught.value.detail


def test_window_edges() -> None:
    inside = (NOW - timedelta(hours=24)).isoformat()
    outside = (NOW - timedelta(hours=24, seconds=1)).isoformat()
    assert check_service_window(inside, policy="enforce", now=NOW) == ()
    assert check_service_window(outside, policy="warn", now=NOW) == ("outside_service_window",)
    assert check_service_window(outside, policy="off", now=NOW) == ()
    assert check_service_window(None, policy="enforce", now=NOW, checked=False) == (
        "service_window_not_checked",
    )


def test_one_bsuid_definition_refuses_a_trailing_newline() -> None:
    from bspgate.identity.identifiers import BSUID_RE
    from bspgate.mapping import functions
    from bspgate.outbound import addressing

    assert addressing.BSUID_PATTERN is BSUID_RE
    assert functions.BSUID_RE is BSUID_RE
    for value in ("US.123\n", "US.123\n\n", "\nUS.123", "US.123 "):
        assert not addressing.is_bsuid(value)
        assert not functions.is_bsuid(value)
    assert addressing.is_bsuid("US.ENT.123")


# -- a retired phone (contract §3: "a retired phone is never used") ------------------------------
def relinked_store() -> tuple[MemoryTx, str]:
    """A person who changed number: B1 with +15550000001 became B2 with +15550000002."""
    tx, (contact,) = store_with(Observation(bsuid=B1, phone="+15550000001"))
    IdentityResolver(tx, "acme", "ch", "2026-11-20T11:00:00Z").relink(
        Observation(bsuid=B2, phone="+15550000002"), B1, "+15550000001"
    )
    return tx, contact


def choose_for(tx: MemoryTx, to: dict[str, str], category: str | None = None, **kw: Any) -> str:
    recipient = resolve_recipient(tx, "acme", to)
    address = choose_address(
        recipient,
        send_type="template" if category else "text",
        category=category,
        send_by=kw.get("send_by", "auto"),
        bsuid_supported=kw.get("bsuid_supported", True),
    )
    return address.kind


@pytest.mark.parametrize(
    ("category", "send_by", "supported"),
    [
        (None, "auto", True),
        (None, "auto", False),
        (None, "phone", True),
        ("authentication", "auto", True),
    ],
    ids=["bsuid-capable", "no-bsuid-sends", "send-by-phone", "auth-template"],
)
def test_retired_phone_alone_is_refused_as_retired(
    category: str | None, send_by: str, supported: bool
) -> None:
    tx, _contact = relinked_store()
    with pytest.raises(SendError) as caught:
        choose_for(
            tx, {"phone": "+15550000001"}, category, send_by=send_by, bsuid_supported=supported
        )
    assert caught.value.code == "phone_retired"
    assert "retired" in caught.value.detail
    assert "5550000001" not in caught.value.detail  # the reason names no phone


def test_retired_phone_beside_the_contact_is_ignored_when_a_bsuid_serves() -> None:
    tx, contact = relinked_store()
    recipient = resolve_recipient(tx, "acme", {"contact_id": contact, "phone": "+15550000001"})
    assert recipient.ignored_phone == "retired"
    assert choose_for(tx, {"contact_id": contact, "phone": "+15550000001"}) == "bsuid"


def test_moved_phone_names_the_reason_when_no_form_is_left() -> None:
    tx, _ = store_with(
        Observation(bsuid=B1, phone="+15550000001"), Observation(bsuid=B2, phone="+15550000001")
    )
    with pytest.raises(SendError) as caught:
        choose_for(tx, {"bsuid": B1, "phone": "+15550000001"}, bsuid_supported=False)
    assert caught.value.code == "bsuid_send_unsupported"
    assert "belongs to another contact" in caught.value.detail
