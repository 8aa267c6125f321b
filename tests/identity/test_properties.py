"""Property: any sequence of identity observations keeps the identity invariants.

Invariants, per portfolio: each BSUID and each active phone alias resolves to at most one contact,
two live contacts never share a current BSUID or an alias, and the contact a BSUID resolves to
never changes once given, except by an announced relink that folds the new BSUID's contact into
the old one (the surviving id is the one downstream systems already hold).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bspgate.identity.resolver import IdentityResolver, Observation
from bspgate.store.memory import MemoryTx
from bspgate.store.sql import SqlTx
from bspgate.store.sqlite import _migrate

BSUIDS = ["US.1001", "US.1002", "US.1003", "BR.2001"]
PHONES = ["+15550000001", "+15550000002", "+15550000003"]
PORTFOLIOS = ["acme", "globex"]

observe = st.tuples(
    st.just("observe"),
    st.sampled_from(PORTFOLIOS),
    st.one_of(st.none(), st.sampled_from(BSUIDS)),
    st.one_of(st.none(), st.sampled_from(PHONES)),
).filter(lambda op: op[2] is not None or op[3] is not None)
relink = st.tuples(
    st.just("relink"),
    st.sampled_from(PORTFOLIOS),
    st.sampled_from(BSUIDS),  # previous
    st.sampled_from(BSUIDS),  # new
    st.one_of(st.none(), st.sampled_from(PHONES)),  # new phone named by the change
).filter(lambda op: op[2] != op[3])
operations = st.lists(st.one_of(observe, relink), min_size=1, max_size=25)


def _live(tx: Any, contact_id: str) -> str:
    contact = tx.contact(contact_id)
    while contact.merged_into:
        contact = tx.contact(contact.merged_into)
    return str(contact.id)


def _check(tx: Any, ops: list[tuple[Any, ...]]) -> None:
    first_owner: dict[tuple[str, str], str] = {}
    for number, op in enumerate(ops):
        now = f"2026-04-02T10:{number // 60:02d}:{number % 60:02d}Z"
        portfolio = op[1]
        resolver = IdentityResolver(tx, portfolio, "ch", now)
        if op[0] == "observe":
            contact = resolver.observe(Observation(bsuid=op[2], phone=op[3]))
            if op[2] is not None:
                first_owner.setdefault((portfolio, op[2]), contact.id)
        else:
            _, _, previous, new, phone = op
            before = tx.contact_by_bsuid(portfolio, previous)
            contact, _, _ = resolver.relink(Observation(bsuid=new, phone=phone), previous, None)
            if before is not None:
                assert contact.id == before.id  # a relink keeps the old contact's id
            for key, owner in list(first_owner.items()):
                if key[0] == portfolio and _live(tx, owner) == contact.id:
                    first_owner[key] = contact.id
            first_owner.setdefault((portfolio, previous), contact.id)
            first_owner[(portfolio, new)] = contact.id
        for (pf, bsuid), owner in first_owner.items():
            found = tx.contact_by_bsuid(pf, bsuid)
            assert found is not None
            assert found.id == _live(tx, owner), f"{bsuid} moved to another contact"
        for pf in PORTFOLIOS:
            current: dict[str, str] = {}
            aliases: dict[str, str] = {}
            for bsuid in BSUIDS:
                found = tx.contact_by_bsuid(pf, bsuid)
                if found is not None and found.bsuid == bsuid:
                    assert current.setdefault(bsuid, found.id) == found.id
            for phone in PHONES:
                found = tx.contact_by_phone(pf, phone)
                if found is not None:
                    assert found.phone == phone, "an alias must point at the contact holding it"
                    assert aliases.setdefault(phone, found.id) == found.id


@settings(max_examples=300, deadline=None)
@given(operations)
def test_invariants_hold_in_memory(ops: list[tuple[Any, ...]]) -> None:
    _check(MemoryTx(), ops)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_invariants_hold_in_sqlite(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        conn = sqlite3.connect(Path(folder) / "p.db", isolation_level=None)
        try:
            tx = SqlTx(conn)
            conn.execute("BEGIN")
            _migrate(tx)
            _check(tx, ops)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
