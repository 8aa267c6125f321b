"""Generated rule functions give exactly what the closures give, for every golden case input."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bspgate.mapping.cases import load_case
from bspgate.mapping.engine import apply_mapping
from bspgate.mapping.loader import MappingSpec, iter_case_files, load_mapping, mapping_names
from bspgate.mapping.send_cases import is_send_case
from tests.conftest import MAPPINGS

CHANNEL = {"id": "c", "provider": "p", "portfolio": "acme", "business_phone": None, "settings": {}}


@cache
def _spec(name: str) -> MappingSpec:
    return load_mapping(MAPPINGS, name)


def _closures_only(spec: MappingSpec) -> MappingSpec:
    return dataclasses.replace(
        spec, rules=tuple(dataclasses.replace(rule, build=None) for rule in spec.rules)
    )


def _outcome(spec: MappingSpec, payload: Any) -> tuple[Any, ...]:
    result = apply_mapping(spec, payload, CHANNEL, received_at="2026-01-01T00:00:00Z")
    return ([(d.id, d.type, d.time, d.data) for d in result.drafts], result.issues)


CASES = [
    pytest.param(name, path, id=f"{name}/{path.stem}")
    for name in mapping_names(MAPPINGS)
    for path in iter_case_files(MAPPINGS, name)
    if not is_send_case(path) and "input" in load_case(path)  # payload cases, not signed/send ones
]


def test_every_shipped_rule_is_compiled() -> None:
    for name in mapping_names(MAPPINGS):
        spec = load_mapping(MAPPINGS, name)
        assert all(rule.build is not None for rule in spec.rules), name


@pytest.mark.parametrize(("provider", "path"), CASES)
def test_generated_code_matches_the_closures(provider: str, path: Path) -> None:
    spec = _spec(provider)
    payload = load_case(path)["input"]
    assert _outcome(spec, payload) == _outcome(_closures_only(spec), payload)


def _extend_json(inner: Any) -> Any:
    return st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(
            [
                "entry",
                "changes",
                "value",
                "messages",
                "field",
                "from",
                "text",
                "type",
                "id",
                "timestamp",
                "body",
                "contacts",
                "statuses",
                "status",
            ]
        ),
        inner,
        max_size=5,
    )


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=5)
    | st.sampled_from(
        ["messages", "text", "15551234567", "US.1001", "whatsapp:US.1", "system", ""]
    ),
    _extend_json,
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(_json)
def test_generated_code_matches_the_closures_on_any_json(payload: Any) -> None:
    spec = _spec("cloudapi")
    assert _outcome(spec, payload) == _outcome(_closures_only(spec), payload)
