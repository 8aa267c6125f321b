"""The identity rules of canonical.md §1 (v1.1), over every `StoreTx` backend.

Each test name starts with the rule it proves (`test_rule6_…`); `tx` runs it on the in-memory
store, a real SQLite file and (with BSPGATE_TEST_POSTGRES_URL) PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest

from bspgate.identity.resolver import (
    MERGED,
    PHONE_REASSIGNED,
    IdentityResolver,
    Observation,
    UnresolvableContact,
)
from bspgate.store.memory import MemoryTx

NOW = "2026-04-02T10:11:12Z"
B1 = "US.13491208655302741918"
B2 = "US.20000000000000000001"
P1 = "+15551234567"
P2 = "+15557654321"
P3 = "+15559990000"
B3 = "US.30000000000000000003"
B4 = "US.40000000000000000004"


def resolver(tx: Any, portfolio: str = "acme", now: str = NOW) -> IdentityResolver:
    return IdentityResolver(tx, portfolio, "cloud-us", now)


def at(minute: int) -> str:
    return f"2026-04-02T10:{minute:02d}:00Z"


def test_rule1_bsuid_creates_then_resolves_one_contact(tx: Any) -> None:
    first = resolver(tx).observe(Observation(bsuid=B1))
    again = resolver(tx).observe(Observation(bsuid=B1))
    assert first.id == again.id
    assert first.id.startswith("ct_")
    assert again.bsuid == B1
    assert again.phone is None


def test_rule2_pair_is_captured_as_phone_alias(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    assert tx.contact_by_phone("acme", P1).id == contact.id
    later = resolver(tx).observe(Observation(bsuid=B1))  # phone hidden later: alias kept
    assert later.phone == P1


def test_rule3_phone_only_resolves_through_alias(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    legacy = resolver(tx).observe(Observation(phone=P1))
    assert legacy.id == contact.id


def test_rule3_phone_only_creates_phone_only_contact(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(phone=P1))
    assert contact.bsuid is None
    assert contact.phone == P1


def test_rule4_dual_identifier_merges_into_phone_only_contact(tx: Any) -> None:
    legacy = resolver(tx).observe(Observation(phone=P1))
    merged = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    assert merged.id == legacy.id
    assert merged.bsuid == B1
    assert tx.contact_by_bsuid("acme", B1).id == legacy.id


def test_rule5_relink_keeps_contact_id_and_old_bsuid_resolves(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    relinked, old_bsuid, old_phone = resolver(tx).relink(Observation(bsuid=B2), B1, None)
    assert relinked.id == contact.id
    assert relinked.bsuid == B2
    assert old_bsuid == B1
    assert old_phone == P1
    assert tx.contact_by_bsuid("acme", B1).id == contact.id
    assert tx.contact_by_bsuid("acme", B2).id == contact.id


def test_rule5_user_changed_user_id_retires_the_phone_alias(tx: Any) -> None:
    resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    relinked, _, _ = resolver(tx).relink(Observation(bsuid=B2), B1, None)
    assert relinked.phone is None
    assert tx.contact_by_phone("acme", P1) is None


def test_rule5_user_changed_number_moves_alias_to_new_phone(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    relinked, _, old_phone = resolver(tx).relink(Observation(bsuid=B2, phone=P2), B1, P1)
    assert relinked.id == contact.id
    assert relinked.phone == P2
    assert old_phone == P1
    assert tx.contact_by_phone("acme", P1) is None
    assert tx.contact_by_phone("acme", P2).id == contact.id


def test_rule5_late_webhook_with_old_bsuid_lands_on_same_contact(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    resolver(tx).relink(Observation(bsuid=B2), B1, None)
    late = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    assert late.id == contact.id
    assert late.bsuid == B2
    assert late.phone is None  # the retired alias is not revived by a late webhook


def test_rule6_recycled_phone_moves_alias_without_merging(tx: Any) -> None:
    old = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    new = resolver(tx).observe(Observation(bsuid=B2, phone=P1))
    assert new.id != old.id
    assert tx.contact_by_phone("acme", P1).id == new.id
    assert tx.contact(old.id).phone is None
    assert tx.contact_by_bsuid("acme", B1).id == old.id


def test_rule1_portfolios_are_separate(tx: Any) -> None:
    one = resolver(tx, "acme").observe(Observation(bsuid=B1))
    two = resolver(tx, "globex").observe(Observation(bsuid=B1))
    assert one.id != two.id


def test_rule8_relink_merges_a_contact_the_new_bsuid_created_first(tx: Any) -> None:
    contact = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    # the new BSUID writes before the announcement arrives
    early = resolver(tx, now=at(5)).observe(Observation(bsuid=B2), at(5))
    late = resolver(tx, now=at(6))
    relinked, _, _ = late.relink(Observation(bsuid=B2), B1, None, at(4))
    assert relinked.id == contact.id  # the older contact survives
    assert early.id != contact.id
    assert tx.contact_by_bsuid("acme", B2).id == contact.id
    assert tx.contact(early.id).merged_into == contact.id
    [notice] = late.take_notices()
    assert (notice.kind, notice.data) == (
        MERGED,
        {"merged": {"id": early.id, "by": "identity_rule"}},
    )


def test_rule5_relink_of_unknown_contact_creates_it_with_new_bsuid(tx: Any) -> None:
    contact, old_bsuid, _ = resolver(tx).relink(Observation(bsuid=B2), B1, None)
    assert contact.bsuid == B2
    assert old_bsuid == B1
    assert tx.contact_by_bsuid("acme", B1).id == contact.id


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_rule9_username_and_name_are_the_newest_evidences_in_any_order(
    tx: Any, order: tuple[int, int]
) -> None:
    seen = {
        1: Observation(bsuid=B1, username="@old", name="Old"),
        2: Observation(bsuid=B1, username="@new"),
    }  # the newer one carries no name
    for minute in order:
        contact = resolver(tx).observe(seen[minute], at(minute))
    assert (contact.username, contact.name) == ("@new", "Old")
    assert tx.contact(contact.id).username == "@new"


def test_rule9_a_merge_keeps_the_newer_username(tx: Any) -> None:
    first = resolver(tx).observe(Observation(bsuid=B1, username="@old"), at(1))  # survives
    resolver(tx).observe(Observation(phone=P1, username="@new"), at(5))
    merged = resolver(tx).observe(Observation(bsuid=B1, phone=P1), at(6))
    assert merged.id == first.id
    assert (merged.username, tx.contact(first.id).username) == ("@new", "@new")


def test_username_and_name_latest_wins(tx: Any) -> None:
    resolver(tx).observe(Observation(bsuid=B1, username="@old", name="Old"))
    contact = resolver(tx).observe(Observation(bsuid=B1, username="@new", name="New"))
    assert (contact.username, contact.name) == ("@new", "New")


def test_rule7_no_identifier_is_unresolvable(tx: Any) -> None:
    with pytest.raises(UnresolvableContact):
        resolver(tx).observe(Observation(name="nobody"))


def test_rule6_the_contact_that_lost_the_phone_is_told(tx: Any) -> None:
    old = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    second = resolver(tx, now=at(2))
    new = second.observe(Observation(bsuid=B2, phone=P1), at(2))
    [notice] = second.take_notices()
    assert notice.kind == PHONE_REASSIGNED
    assert notice.contact.id == old.id
    assert notice.contact.phone is None
    assert notice.data == {"change": "phone_reassigned", "previous": {"bsuid": B1, "phone": P1}}
    assert new.phone == P1
    assert second.take_notices() == []


def test_rule6_a_known_phone_with_a_new_bsuid_never_relinks(tx: Any) -> None:
    # v1.1: whatever the provider (none of them "announces" anything to the resolver any more)
    first = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    again = resolver(tx).observe(Observation(bsuid=B2, phone=P1))
    assert again.id != first.id
    assert tx.contact(first.id).bsuid == B1
    assert tx.contact_by_bsuid("acme", B1).id == first.id
    assert tx.contact_by_bsuid("acme", B2).id == again.id


def test_rule9_late_retry_of_previous_owner_does_not_take_the_phone_back(tx: Any) -> None:
    old = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    new = resolver(tx, now=at(3)).observe(Observation(bsuid=B2, phone=P1), at(3))
    retry = resolver(tx, now=at(9))
    late = retry.observe(Observation(bsuid=B1, phone=P1), at(2))  # retried webhook, event time t2
    assert late.id == old.id  # still delivered, to the contact it is about
    assert late.phone is None
    assert tx.contact_by_phone("acme", P1).id == new.id
    assert retry.take_notices() == []


def test_rule9_shuffled_recycled_number_ends_with_the_newer_owner(tx: Any) -> None:
    new = resolver(tx, now=at(1)).observe(Observation(bsuid=B2, phone=P1), at(3))
    old = resolver(tx, now=at(2)).observe(Observation(bsuid=B1, phone=P1), at(1))
    assert old.id != new.id
    assert old.phone is None
    assert tx.contact_by_phone("acme", P1).id == new.id


def test_rule9_out_of_order_identity_changes_end_in_the_later_state(tx: Any) -> None:
    contact = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    # B1 -> B2 (t2, number P2) and B2 -> B3 (t4, number P3) arrive the wrong way round
    resolver(tx, now=at(5)).relink(Observation(bsuid=B3, phone=P3), B2, P2, at(4))
    final, _, _ = resolver(tx, now=at(6)).relink(Observation(bsuid=B2, phone=P2), B1, P1, at(2))
    assert final.id == contact.id
    assert (final.bsuid, final.phone) == (B3, P3)
    for bsuid in (B1, B2, B3):
        assert tx.contact_by_bsuid("acme", bsuid).id == contact.id
    assert tx.contact_by_phone("acme", P3).id == contact.id
    assert tx.contact_by_phone("acme", P1) is None


def test_rule9_a_legacy_phone_only_payload_lands_on_the_owner_at_its_time(tx: Any) -> None:
    old = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    resolver(tx, now=at(3)).observe(Observation(bsuid=B2, phone=P1), at(3))
    late = resolver(tx, now=at(9)).observe(Observation(phone=P1), at(2))
    assert late.id == old.id


def test_rule8_phone_only_and_bsuid_contacts_paired_by_one_payload_merge(tx: Any) -> None:
    legacy = resolver(tx, now=at(1)).observe(Observation(phone=P1), at(1))
    by_name = resolver(tx, now=at(2)).observe(Observation(bsuid=B1, username="@bo"), at(2))
    pairing = resolver(tx, now=at(3))
    merged = pairing.observe(Observation(bsuid=B1, phone=P1), at(3))
    assert merged.id == legacy.id  # the older one survives
    assert (merged.bsuid, merged.phone, merged.username) == (B1, P1, "@bo")
    absorbed = tx.contact(by_name.id)
    assert absorbed.merged_into == legacy.id
    assert (absorbed.bsuid, absorbed.phone) == (None, None)
    assert tx.contact_by_bsuid("acme", B1).id == legacy.id
    assert tx.contact_by_phone("acme", P1).id == legacy.id
    [notice] = pairing.take_notices()
    assert notice.kind == MERGED
    assert notice.contact.id == legacy.id
    assert notice.data == {"merged": {"id": by_name.id, "by": "identity_rule"}}


def test_rule8_the_newer_contact_survives_never(tx: Any) -> None:
    by_name = resolver(tx, now=at(1)).observe(Observation(bsuid=B1), at(1))
    legacy = resolver(tx, now=at(2)).observe(Observation(phone=P1), at(2))
    merged = resolver(tx, now=at(3)).observe(Observation(bsuid=B1, phone=P1), at(3))
    assert merged.id == by_name.id
    assert tx.contact(legacy.id).merged_into == by_name.id
    assert tx.contact_by_phone("acme", P1).id == by_name.id


def test_rule10_a_shared_phone_is_a_pair(tx: Any) -> None:
    from bspgate.identity.evidence import answer_pairs, shared_phones

    card = {"name": {}, "phones": [{"phone": "+1 555-123-4567", "wa_id": None}]}
    data = {
        "contact": {"bsuid": B1},
        "message": {"contacts": [{**card, "origin": "contact_request"}]},
    }
    assert shared_phones(True, data) == [P1]
    assert shared_phones(False, data) == []
    other = {"contact": {"bsuid": B1}, "message": {"contacts": [{**card, "origin": "other"}]}}
    assert shared_phones(True, other) == []
    wa_only = {"phones": [{"phone": None, "wa_id": "15557654321"}], "origin": "contact_request"}
    assert shared_phones(True, {"contact": {"bsuid": B1}, "message": {"contacts": [wa_only]}}) == [
        P2
    ]
    answer = {"contacts": [{"input": B1, "wa_id": "15551234567", "user_id": B1}]}
    assert answer_pairs(answer) == [(B1, P1)]
    assert answer_pairs({"contacts": [{"input": B1, "user_id": B1}]}) == []
    contact = resolver(tx).observe(Observation(bsuid=B1))
    paired = resolver(tx).observe(Observation(bsuid=B1, phone=shared_phones(True, data)[0]))
    assert paired.id == contact.id
    assert tx.contact_by_phone("acme", P1).id == contact.id


def test_rule11_operator_merge_has_rule8_effects(tx: Any) -> None:
    first = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    # the person changed number with a provider that announces nothing: a second contact
    second = resolver(tx, now=at(2)).observe(Observation(bsuid=B2, phone=P2), at(2))
    operator = resolver(tx, now=at(3))
    survivor = operator.merge(tx.contact(second.id), tx.contact(first.id), "operator", key="ops")
    assert survivor.id == first.id
    assert (survivor.bsuid, survivor.phone) == (B2, P2)  # the newer identifiers are current
    assert tx.contact(second.id).merged_into == first.id
    assert tx.contact_by_bsuid("acme", B1).id == first.id
    assert tx.contact_by_bsuid("acme", B2).id == first.id
    assert tx.contact_by_phone("acme", P2).id == first.id
    assert tx.contact_by_phone("acme", P1) is None
    [notice] = operator.take_notices()
    assert notice.data == {"merged": {"id": second.id, "by": "operator"}}


def _history(tx: Any, contact_id: str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(tx, MemoryTx):
        return [(kind, detail) for who, _at, kind, detail in tx.history if who == contact_id]
    return [(h["kind"], h["detail"]) for h in tx.contact_view(contact_id)["history"]]


def _phones(tx: Any, contact_id: str) -> list[tuple[str, str, str | None]]:
    if isinstance(tx, MemoryTx):
        rows = [r for r in tx.phone_history if r["contact_id"] == contact_id]
    else:
        rows = tx.contact_view(contact_id)["phones"]
    return [(r["phone"], r["state"], r.get("reason")) for r in rows]


def test_every_identity_fact_is_recorded_with_its_reason(tx: Any) -> None:
    legacy = resolver(tx, now=at(1)).observe(Observation(phone=P1, name="Sheena"), at(1))
    resolver(tx, now=at(2)).observe(Observation(bsuid=B1, phone=P1, name="Sheena N"), at(2))
    stranger = resolver(tx, now=at(3)).observe(Observation(bsuid=B2, phone=P1), at(3))
    resolver(tx, now=at(4)).relink(Observation(bsuid=B3, phone=P2), B1, None, at(4))
    assert _history(tx, legacy.id) == [
        ("created", {"by": "phone"}),
        ("phone_captured", {"why": "first seen, phone only"}),
        ("merged", {"bsuid": B1}),
        ("name_changed", {"previous": "Sheena"}),
        ("phone_moved", {"to": stranger.id}),
        ("phone_captured", {"why": "named by the identity change"}),
        ("relinked", {"channel": "cloud-us"}),
    ]
    assert _history(tx, stranger.id) == [
        ("created", {"by": "bsuid"}),
        ("phone_moved_in", {"from": legacy.id}),
        ("phone_captured", {"why": "paired with a new BSUID"}),
    ]
    assert _phones(tx, legacy.id) == [
        (P1, "moved", f"moved to {stranger.id}"),
        (P2, "active", None),
    ]
    final = tx.contact(legacy.id)
    assert (final.bsuid, final.phone, final.name) == (B3, P2, "Sheena N")
    assert (final.bsuid_at, final.phone_at) == (at(4), at(4))


def test_a_phone_replaced_by_a_newer_pair_is_retired(tx: Any) -> None:
    contact = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    resolver(tx, now=at(2)).observe(Observation(bsuid=B1, phone=P2), at(2))
    assert _phones(tx, contact.id) == [(P1, "retired", "replaced"), (P2, "active", None)]
    older = resolver(tx, now=at(3)).observe(Observation(bsuid=B1, phone=P3), at(1))
    assert older.phone == P2  # an older pair does not replace a newer phone
    assert tx.contact_by_phone("acme", P3) is None
    relinked, _, _ = resolver(tx, now=at(4)).relink(Observation(bsuid=B2), B1, None, at(4))
    assert _phones(tx, contact.id)[-1] == (P2, "retired", "identity changed")
    assert relinked.phone is None


def test_a_merge_keeps_the_newer_phone_and_retires_the_other(tx: Any) -> None:
    first = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    second = resolver(tx, now=at(2)).observe(Observation(bsuid=B2, phone=P2), at(5))
    survivor = resolver(tx, now=at(3)).merge(
        tx.contact(first.id), tx.contact(second.id), "operator", into_first=True
    )
    assert (survivor.phone, survivor.phone_at, survivor.bsuid, survivor.bsuid_at) == (
        P2,
        at(5),
        B2,
        at(5),
    )
    assert sorted(_phones(tx, first.id)) == [(P1, "retired", "merged"), (P2, "active", None)]
    assert _history(tx, second.id)[-1] == ("merged_into", {"into": first.id, "by": "operator"})
    assert _history(tx, first.id)[-1] == ("absorbed", {"from": second.id, "by": "operator"})
    other = resolver(tx, now=at(6)).observe(Observation(bsuid=B3, phone=P3), at(0))
    kept = resolver(tx, now=at(7)).merge(tx.contact(first.id), tx.contact(other.id), "operator")
    assert (kept.id, kept.phone, kept.bsuid) == (first.id, P2, B2)  # older survives, newer wins
    assert tx.contact_by_phone("acme", P3) is None
    assert (P3, "retired", "merged") in _phones(tx, first.id)


def test_rule5_a_phones_only_legacy_change_moves_the_alias(tx: Any) -> None:
    contact = resolver(tx, now=at(1)).observe(Observation(phone=P1), at(1))
    changed, old_bsuid, old_phone = resolver(tx, now=at(3)).relink(
        Observation(phone=P2), None, P1, at(2)
    )
    assert changed.id == contact.id
    assert (changed.bsuid, changed.phone, old_bsuid, old_phone) == (None, P2, None, P1)
    assert tx.contact_by_phone("acme", P1) is None
    assert tx.contact_by_phone("acme", P2).id == contact.id
    assert tx.phone_owner_at("acme", P1, at(1)).id == contact.id  # a late legacy payload
    assert _phones(tx, contact.id) == [(P1, "retired", "identity changed"), (P2, "active", None)]


def test_rule5_a_change_for_nobody_known_creates_the_contact(tx: Any) -> None:
    made, old_bsuid, old_phone = resolver(tx, now=at(2)).relink(
        Observation(bsuid=B2, phone=P2, name="New"), B1, P1, at(2)
    )
    assert (made.bsuid, made.phone, made.name, old_bsuid, old_phone) == (B2, P2, "New", B1, P1)
    assert _history(tx, made.id)[0] == ("created", {"by": "identity change"})
    assert tx.contact_by_bsuid("acme", B1).id == made.id
    assert tx.contact(made.id).bsuid_at == at(2)


def test_rule9_a_late_pair_of_a_retired_bsuid_merges_a_phone_only_contact(tx: Any) -> None:
    relinked, _, _ = resolver(tx, now=at(1)).relink(Observation(bsuid=B2), B1, None, at(5))
    legacy = resolver(tx, now=at(2)).observe(Observation(phone=P1), at(1))
    late = resolver(tx, now=at(3))
    contact = late.observe(Observation(bsuid=B1, phone=P1), at(2))
    assert contact.id == relinked.id
    assert contact.bsuid == B2
    assert contact.phone is None  # the number of a retired BSUID is never an alias again
    assert tx.contact(legacy.id).merged_into == relinked.id
    assert tx.contact_by_phone("acme", P1) is None
    assert tx.phone_owner_at("acme", P1, at(1)).id == relinked.id
    assert tx.phone_owner_at("acme", P1, at(6)) is None
    [notice] = late.take_notices()
    assert notice.data == {"merged": {"id": legacy.id, "by": "identity_rule"}}
    assert (P1, "retired", "identity changed") in _phones(tx, relinked.id)


def test_rule9_a_late_pair_of_a_retired_bsuid_takes_the_number_from_an_older_owner(
    tx: Any,
) -> None:
    before = resolver(tx, now=at(1)).observe(Observation(bsuid=B3, phone=P1), at(1))
    relinked, _, _ = resolver(tx, now=at(2)).relink(Observation(bsuid=B2), B1, None, at(5))
    late = resolver(tx, now=at(3))
    contact = late.observe(Observation(bsuid=B1, phone=P1), at(3))
    assert contact.id == relinked.id
    assert contact.phone is None
    assert tx.contact(before.id).phone is None  # the number was B1's after B3's evidence
    [notice] = late.take_notices()
    assert notice.contact.id == before.id
    assert notice.data["change"] == PHONE_REASSIGNED
    assert tx.phone_owner_at("acme", P1, at(2)).id == before.id
    assert tx.phone_owner_at("acme", P1, at(4)).id == relinked.id
    assert tx.phone_owner_at("acme", P1, at(6)) is None
    # a number someone got by newer evidence stays theirs; the late pair is only history
    newer = resolver(tx, now=at(4)).observe(Observation(bsuid=B4, phone=P2), at(9))
    quiet = resolver(tx, now=at(5))
    assert quiet.observe(Observation(bsuid=B1, phone=P2), at(3)).id == relinked.id
    assert quiet.take_notices() == []
    assert tx.contact_by_phone("acme", P2).id == newer.id
    assert tx.phone_owner_at("acme", P2, at(4)).id == relinked.id
    assert tx.phone_owner_at("acme", P2, at(9)).id == newer.id


def test_rule9_a_late_legacy_payload_between_two_holders_is_the_later_ones(tx: Any) -> None:
    resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    resolver(tx, now=at(2)).observe(Observation(bsuid=B1, phone=P2), at(2))  # P1 given up
    later = resolver(tx, now=at(5)).observe(Observation(bsuid=B2, phone=P1), at(5))
    # a legacy payload from P1 at 10:03, when nobody held it, arrives after all that
    legacy = resolver(tx, now=at(6)).observe(Observation(phone=P1), at(3))
    assert legacy.id == later.id  # not a second holder of P1 (it failed the unique alias)
    assert tx.contact_by_phone("acme", P1).id == later.id
    assert tx.phone_owner_at("acme", P1, at(3)) is None  # nobody held it then
    assert tx.phone_owner_at("acme", P1, at(3), "next").id == later.id
    # arrival order changes nothing: on time, it made a phone-only contact that B2 joined
    on_time = MemoryTx()
    resolver(on_time, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    resolver(on_time, now=at(2)).observe(Observation(bsuid=B1, phone=P2), at(2))
    early = resolver(on_time, now=at(3)).observe(Observation(phone=P1), at(3))
    assert resolver(on_time, now=at(5)).observe(Observation(bsuid=B2, phone=P1), at(5)).id == (
        early.id
    )


def test_rule9_a_legacy_payload_finds_an_alias_held_beside_a_late_past_one(tx: Any) -> None:
    holder = resolver(tx, now=at(1)).observe(Observation(bsuid=B3, phone=P1), at(3))
    resolver(tx, now=at(2)).observe(Observation(bsuid=B3, phone=P1), at(9))  # seen again
    resolver(tx, now=at(3)).relink(Observation(bsuid=B2), B1, None, at(5))
    # B1's pair with P1 at 10:04, learned late: P1 stays B3's (newer evidence); for B1's
    # contact it is a past alias, 10:04-10:05, which starts after B3's alias does
    resolver(tx, now=at(4)).observe(Observation(bsuid=B1, phone=P1), at(4))
    assert tx.contact_by_phone("acme", P1).id == holder.id
    # at 10:06 the past alias had ended, and B3's still held: not a second holder of P1
    legacy = resolver(tx, now=at(5)).observe(Observation(phone=P1), at(6))
    assert legacy.id == holder.id
    assert tx.phone_owner_at("acme", P1, at(6)).id == holder.id


def test_rule9_a_stale_change_records_its_phone_as_past(tx: Any) -> None:
    contact = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    resolver(tx, now=at(2)).relink(Observation(bsuid=B3, phone=P3), B2, None, at(6))
    stale, _, _ = resolver(tx, now=at(3)).relink(Observation(bsuid=B2, phone=P2), B1, None, at(4))
    assert stale.id == contact.id
    assert (stale.bsuid, stale.phone) == (B3, P3)
    assert tx.contact_by_phone("acme", P2) is None
    assert tx.phone_owner_at("acme", P2, at(5)).id == contact.id
    assert tx.contact_by_bsuid("acme", B2).id == contact.id


def _bsuid_state(tx: Any, contact_id: str) -> dict[str, str]:
    if isinstance(tx, MemoryTx):
        return {key[1]: state for key, (who, state) in tx.bsuids.items() if who == contact_id}
    return {b["bsuid"]: b["state"] for b in tx.contact_view(contact_id)["bsuids"]}


def test_rule8_a_merge_keeps_one_current_bsuid_and_the_parent(tx: Any) -> None:
    parent = "US.ENT.11815799212886844830"
    legacy = resolver(tx, now=at(1)).observe(Observation(phone=P1), at(1))
    managed = resolver(tx, now=at(2)).observe(Observation(bsuid=B1, parent_bsuid=parent), at(2))
    merged = resolver(tx, now=at(3)).observe(Observation(bsuid=B1, phone=P1), at(3))
    assert merged.id == legacy.id
    assert (merged.parent_bsuid, merged.bsuid, merged.bsuid_at) == (parent, B1, at(2))
    assert tx.contact(legacy.id).parent_bsuid == parent
    states = _bsuid_state(tx, legacy.id)
    assert states[B1] == "current"
    assert tx.contact(managed.id).parent_bsuid is None
    old = resolver(tx, now=at(4)).observe(Observation(bsuid=B2, phone=P2), at(0))
    survivor = resolver(tx, now=at(5)).merge(tx.contact(old.id), tx.contact(legacy.id), "operator")
    assert survivor.id == legacy.id
    assert survivor.bsuid == B1  # the newer BSUID stays current
    assert _bsuid_state(tx, legacy.id)[B1] == "current"
    assert _bsuid_state(tx, legacy.id)[B2] == "retired"


def test_rule9_a_pair_older_than_the_owners_is_recorded_as_kept(tx: Any) -> None:
    owner = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(5))
    late = resolver(tx, now=at(2)).observe(Observation(bsuid=B2, phone=P1), at(3))
    assert late.phone is None
    assert _history(tx, late.id)[-1] == ("phone_kept", {"by": owner.id})
    # the owner's own pair seen again moves its evidence time forward, never back
    resolver(tx, now=at(3)).observe(Observation(bsuid=B1, phone=P1), at(2))
    assert tx.contact(owner.id).phone_at == at(5)
    resolver(tx, now=at(4)).observe(Observation(bsuid=B1, phone=P1), at(7))
    assert tx.contact(owner.id).phone_at == at(7)
    assert tx.contact(owner.id).bsuid_at == at(2)  # the earliest evidence of the current BSUID


def _last_seen(tx: Any, contact_id: str, bsuid: str) -> str | None:
    if isinstance(tx, MemoryTx):
        return tx.last_seen.get(("acme", bsuid))
    return next(
        b["last_seen"] for b in tx.contact_view(contact_id)["bsuids"] if b["bsuid"] == bsuid
    )


def test_rule1_seen_again_moves_last_seen_and_the_bsuid_is_current(tx: Any) -> None:
    contact = resolver(tx, now=at(1)).observe(Observation(bsuid=B1), at(1))
    assert _bsuid_state(tx, contact.id) == {B1: "current"}
    resolver(tx, now=at(2)).observe(Observation(bsuid=B1), at(2))
    assert _last_seen(tx, contact.id, B1) == at(2)
    resolver(tx, now=at(3)).relink(Observation(bsuid=B2), B1, None, at(3))
    resolver(tx, now=at(4)).observe(Observation(bsuid=B1), at(1))  # late, retired
    assert _last_seen(tx, contact.id, B1) == at(4)
    assert _bsuid_state(tx, contact.id) == {B1: "retired", B2: "current"}


def test_rule2_history_says_why_a_phone_was_captured(tx: Any) -> None:
    contact = resolver(tx, now=at(1)).observe(Observation(bsuid=B1), at(1))
    resolver(tx, now=at(2)).observe(Observation(bsuid=B1, phone=P1), at(2))
    assert _history(tx, contact.id)[-1] == (
        "phone_captured",
        {"why": "paired with the current BSUID"},
    )
    assert tx.contact(contact.id).phone_at == at(2)
    resolver(tx, now=at(3)).observe(Observation(bsuid=B1, phone=P2), at(4))
    # the replaced phone's span ends at the newer pair: legacy payloads of its time find it
    assert tx.phone_owner_at("acme", P1, at(3)).id == contact.id
    assert tx.phone_owner_at("acme", P1, at(5)) is None


def test_rule3_a_legacy_payload_updates_the_profile_of_a_bsuid_contact(tx: Any) -> None:
    contact = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    legacy = resolver(tx, now=at(2)).observe(Observation(phone=P1, name="New Name"), at(2))
    assert legacy.id == contact.id
    assert tx.contact(contact.id).name == "New Name"
    only = resolver(tx, now=at(3)).observe(Observation(phone=P2), at(3))
    assert (only.phone, only.phone_at, only.bsuid) == (P2, at(3), None)


def test_rule5_a_phones_only_change_keeps_the_bsuid(tx: Any) -> None:
    contact = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    changed, old_bsuid, _ = resolver(tx, now=at(2)).relink(Observation(phone=P2), None, P1, at(2))
    assert (changed.id, changed.bsuid, changed.phone, old_bsuid) == (contact.id, B1, P2, None)
    assert _bsuid_state(tx, contact.id) == {B1: "current"}


def test_rule5_the_same_change_twice_changes_nothing_more(tx: Any) -> None:
    contact = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(1))
    resolver(tx, now=at(2)).relink(Observation(bsuid=B2), B1, None, at(2))
    again, old_bsuid, old_phone = resolver(tx, now=at(3)).relink(
        Observation(bsuid=B2), B1, None, at(2)
    )
    assert (again.id, again.bsuid, again.phone, old_bsuid, old_phone) == (
        contact.id,
        B2,
        None,
        None,
        None,
    )
    assert _bsuid_state(tx, contact.id) == {B1: "retired", B2: "current"}


def test_rule9_a_change_off_the_current_bsuid_applies_after_a_later_webhook_of_it(
    tx: Any,
) -> None:
    """A webhook of B1 dated after the change B1 -> B2 came first: it is a late webhook of the
    retired BSUID (rule 5), no evidence against the change. Rule 9 compares changes with
    changes (`test_rule9_out_of_order_identity_changes_end_in_the_later_state`)."""
    contact = resolver(tx, now=at(1)).observe(Observation(bsuid=B1, phone=P1), at(5))
    moved, previous, _ = resolver(tx, now=at(2)).relink(Observation(bsuid=B2), B1, None, at(3))
    assert (moved.id, moved.bsuid, moved.phone, previous) == (contact.id, B2, None, B1)
    assert _bsuid_state(tx, contact.id) == {B1: "retired", B2: "current"}
    assert tx.contact_by_bsuid("acme", B1).id == contact.id
    assert tx.contact_by_phone("acme", P1) is None  # retired with B1: never sent to again


def test_rule9_a_number_retired_by_its_newer_owner_is_not_taken_by_an_older_pair(
    tx: Any,
) -> None:
    newer = resolver(tx, now=at(1)).observe(Observation(bsuid=B3, phone=P1), at(5))
    resolver(tx, now=at(2)).relink(Observation(bsuid=B4), B3, None, at(6))
    older = resolver(tx, now=at(3)).observe(Observation(bsuid=B1, phone=P1), at(2))
    assert older.id != newer.id
    assert older.phone is None
    assert tx.contact_by_phone("acme", P1) is None


def test_notices_have_keys_and_merges_carry_the_profile(tx: Any) -> None:
    legacy = resolver(tx, now=at(1)).observe(Observation(phone=P1, name="Bo"), at(1))
    named = resolver(tx, now=at(2)).observe(Observation(bsuid=B1, username="@bo"), at(2))
    pairing = resolver(tx, now=at(3))
    merged = pairing.observe(Observation(bsuid=B1, phone=P1), at(3))
    assert (merged.name, merged.username) == ("Bo", "@bo")
    [notice] = pairing.take_notices()
    assert notice.key == f"merged:{named.id}:{legacy.id}"
    absorbed = tx.contact(named.id)
    assert (absorbed.bsuid_at, absorbed.phone_at, absorbed.username) == (None, None, "@bo")
    moving = resolver(tx, now=at(4))
    moving.observe(Observation(bsuid=B2, phone=P1), at(4))
    [moved] = moving.take_notices()
    assert moved.key == f"phone_reassigned:{legacy.id}:{tx.contact_by_bsuid('acme', B2).id}:{at(4)}"
    assert tx.contact(legacy.id).phone_at is None
    stranger = tx.contact_by_bsuid("acme", B2)
    operator = resolver(tx, now=at(5))
    operator.merge(tx.contact(legacy.id), stranger, "operator", key="ops", into_first=True)
    assert _history(tx, legacy.id)[-1] == (
        "absorbed",
        {"from": stranger.id, "by": "operator", "key": "ops"},
    )


def test_unresolvable_says_why(tx: Any) -> None:
    with pytest.raises(UnresolvableContact, match="neither a BSUID nor a phone"):
        resolver(tx).observe(Observation(username="@nobody"))


def test_held_deliveries_go_out_when_the_contact_gains_a_phone() -> None:
    tx = MemoryTx()
    contact = IdentityResolver(tx, "acme", "ch", at(1)).observe(Observation(bsuid=B1), at(1))
    tx.events["evt_1"] = {"subject": contact.id}
    tx.deliveries.append(("evt_1", "crm", "held"))
    IdentityResolver(tx, "acme", "ch", at(2), 5.0).observe(Observation(bsuid=B1, phone=P1), at(2))
    assert tx.deliveries == [("evt_1", "crm", "pending")]
    tx.deliveries.append(("evt_1", "bi", "held"))
    quiet = IdentityResolver(tx, "acme", "ch", at(3), 6.0, holds=False)
    quiet.observe(Observation(bsuid=B1, phone=P2), at(3))
    assert tx.deliveries[-1] == ("evt_1", "bi", "held")  # nobody requires a phone: not looked at


def test_rule9_a_late_older_pair_of_a_recycled_number_keeps_its_past_span(tx: Any) -> None:
    new = resolver(tx, now=at(10)).observe(Observation(bsuid=B3, phone=P1), at(5))
    old = resolver(tx, now=at(11)).observe(Observation(bsuid=B1, phone=P1), at(1))  # late
    assert old.id != new.id
    assert old.phone is None
    assert tx.contact_by_phone("acme", P1).id == new.id
    # a phone-only payload of t2 (a status to the number then) is the previous owner's
    legacy = resolver(tx, now=at(12)).observe(Observation(phone=P1), at(2))
    assert legacy.id == old.id
    later = resolver(tx, now=at(13)).observe(Observation(phone=P1), at(6))
    assert later.id == new.id


def test_rule9_a_recycled_number_ends_with_the_newer_pair_when_a_legacy_sighting_came_first(
    tx: Any,
) -> None:
    legacy = resolver(tx, now=at(10)).observe(Observation(phone=P1), at(6))
    old = resolver(tx, now=at(11)).observe(Observation(bsuid=B1, phone=P1), at(1))
    assert old.id == legacy.id  # rule 4: the phone-only contact gains the BSUID
    new = resolver(tx, now=at(12)).observe(Observation(bsuid=B3, phone=P1), at(5))
    assert new.id != old.id
    assert tx.contact_by_phone("acme", P1).id == new.id  # as in event-time order
    assert tx.contact(old.id).phone is None
    assert resolver(tx, now=at(13)).observe(Observation(phone=P1), at(2)).id == old.id


def test_rule9_a_phones_only_number_change_before_the_pair_keeps_one_contact(tx: Any) -> None:
    changed, _, _ = resolver(tx, now=at(10)).relink(Observation(phone=P2), None, P1, at(3))
    paired = resolver(tx, now=at(11)).observe(Observation(bsuid=B1, phone=P1), at(1))
    assert paired.id == changed.id  # the number was theirs before the change
    assert (paired.bsuid, paired.phone) == (B1, P2)
    assert tx.contact_by_phone("acme", P1) is None  # the old number stays retired
    assert resolver(tx, now=at(12)).observe(Observation(phone=P2), at(4)).id == changed.id


def test_rule9_a_phones_only_change_after_a_sighting_of_the_new_number_names_that_contact(
    tx: Any,
) -> None:
    legacy = resolver(tx, now=at(10)).observe(Observation(phone=P2), at(4))
    changed, _, old_phone = resolver(tx, now=at(11)).relink(Observation(phone=P2), None, P1, at(3))
    assert changed.id == legacy.id
    assert changed.phone == P2  # never a contact without an identifier
    assert old_phone == P1


def test_rule9_the_gateways_own_stamp_and_a_providers_time_of_one_second_compare_as_equal(
    tx: Any,
) -> None:
    # a send answer (rule 10) is evidence stamped by the gateway, with microseconds
    resolver(tx, now=at(1)).observe(Observation(bsuid=B3, phone=P1), "2026-04-02T10:05:00Z")
    stamped = resolver(tx, now="2026-04-02T10:05:00.500000Z")
    answer = stamped.observe(Observation(bsuid=B1, phone=P1))  # no time: evidence is `now`
    assert tx.contact_by_phone("acme", P1).id == answer.id  # as new as the other: it arrived last


# -- late announcements and late payloads (arrival order must not matter, rule 9) -------------
@pytest.mark.parametrize("status_first", [False, True])
def test_rule9_a_number_change_arriving_after_a_newer_status_still_gives_its_phone(
    tx: Any, status_first: bool
) -> None:
    # Meta's statuses always name the BSUID; one of the new BSUID (no phone, later) arrived
    # before the announcement that names the new phone
    resolver(tx).observe(Observation(bsuid=B1, phone=P1), at(1))
    change = lambda: resolver(tx).relink(Observation(bsuid=B2, phone=P2), B1, P1, at(14))  # noqa: E731
    status = lambda: resolver(tx).observe(Observation(bsuid=B2), at(20))  # noqa: E731
    for step in (status, change) if status_first else (change, status):
        step()
    contact = tx.contact_by_bsuid("acme", B2)
    assert (contact.bsuid, contact.phone) == (B2, P2)  # it was a retired past phone
    assert tx.contact_by_phone("acme", P2).id == contact.id


def test_rule9_a_late_bsuid_change_names_the_phone_before_it_not_the_current_one(
    tx: Any,
) -> None:
    resolver(tx).observe(Observation(bsuid=B1, phone=P1), at(1))
    resolver(tx).observe(Observation(bsuid=B2, phone=P2), at(6))  # the new BSUID, first
    contact, _old_bsuid, old_phone = resolver(tx).relink(Observation(bsuid=B2), B1, None, at(4))
    assert (contact.phone, old_phone) == (P2, P1)  # it said P2 was the phone before the change


def test_rule9_a_late_payload_of_a_retired_bsuid_still_tells_its_profile(tx: Any) -> None:
    resolver(tx).observe(Observation(bsuid=B1), at(0))
    resolver(tx).relink(Observation(bsuid=B2), B1, None, at(5))
    late = resolver(tx).observe(Observation(bsuid=B1, username="@ann", name="Ann Lee"), at(1))
    assert (late.bsuid, late.username, late.name) == (B2, "@ann", "Ann Lee")


def test_a_parent_bsuid_another_contact_holds_stays_that_contacts(tx: Any) -> None:
    parent = "US.ENT.11815799212886844830"
    addressed = resolver(tx).observe(Observation(bsuid=parent), at(1))  # a send to the parent
    person = resolver(tx).observe(Observation(bsuid=B1, parent_bsuid=parent), at(2))
    assert person.id != addressed.id
    assert person.parent_bsuid == parent
    assert tx.contact_by_bsuid("acme", parent).id == addressed.id  # its row was moved to B1's


def test_rule9_a_late_number_change_does_not_join_its_old_numbers_next_holder(tx: Any) -> None:
    # P1 was the first person's until their change at minute 6; another person announced P1 as
    # their new number at minute 12 (recycled). The first person's change arrives last.
    other = resolver(tx).relink(Observation(bsuid=B4, phone=P1), B3, P2, at(12))[0]
    first = resolver(tx).observe(Observation(bsuid=B2, phone=P3), at(10))
    changed, _old_bsuid, _old_phone = resolver(tx).relink(
        Observation(bsuid=B2, phone=P3), B1, P1, at(6)
    )
    assert changed.id == first.id != other.id  # it was merged into the number's next holder
    holder = tx.contact_by_bsuid("acme", B4)
    assert (holder.id, holder.phone) == (other.id, P1)


def test_rule9_a_late_bsuid_change_still_gives_the_current_bsuids_parent(tx: Any) -> None:
    parent = "US.ENT.20000000000000000002"
    resolver(tx).observe(Observation(bsuid=B1), at(1))
    resolver(tx).observe(Observation(bsuid=B2), at(9))  # the new BSUID wrote first, no parent
    changed, _, _ = resolver(tx).relink(Observation(bsuid=B2, parent_bsuid=parent), B1, None, at(5))
    assert changed.parent_bsuid == parent


def test_rule9_an_old_number_held_for_an_unknown_time_is_no_evidence_of_an_earlier_change(
    tx: Any,
) -> None:
    # one person: B4 -> B3 at minute 12, leaving P2 (theirs until then, since when unknown);
    # another person, earlier: B1 -> B2 at minute 4, leaving P2 too (P2 was recycled between)
    later = resolver(tx).relink(Observation(bsuid=B3, phone=P1), B4, P2, at(12))[0]
    earlier, _, _ = resolver(tx).relink(Observation(bsuid=B2, phone=P3), B1, P2, at(4))
    assert earlier.id != later.id  # it was merged into the later person
    assert tx.contact_by_bsuid("acme", B3).id == later.id
