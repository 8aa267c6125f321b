"""Every golden case of every mapping (mappings/*/cases/*.yaml), one test each."""

from __future__ import annotations

from pathlib import Path

import pytest

from bspgate.mapping.cases import run_case
from bspgate.mapping.loader import iter_case_files, load_mapping, mapping_names
from tests.conftest import MAPPINGS

CASES = [
    pytest.param(name, path, id=f"{name}/{path.stem}")
    for name in mapping_names(MAPPINGS)
    for path in iter_case_files(MAPPINGS, name)
]


@pytest.mark.parametrize(("provider", "path"), CASES)
def test_golden_case(provider: str, path: Path) -> None:
    result = run_case(load_mapping(MAPPINGS, provider), path)
    assert result.ok, result.message


def test_every_mapping_has_cases() -> None:
    for name in mapping_names(MAPPINGS):
        assert list(iter_case_files(MAPPINGS, name)), f"{name} has no golden cases"
