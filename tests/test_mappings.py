"""Every golden case of every mapping (mappings/*/cases/*.yaml), one test each.

Every mapping also has a signed case (a request as the provider signed it), and `simulate`
signs with exactly the declared scheme: what it builds, the declaration verifies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bspgate.errors import SignatureError
from bspgate.ingress.verify import ChannelVerifier, SignedRequest
from bspgate.mapping.cases import load_case
from bspgate.mapping.loader import iter_case_files, load_mapping, mapping_names
from bspgate.mapping.send_cases import is_send_case, run_file
from bspgate.simulate import signed_request
from tests.conftest import MAPPINGS, make_settings

CASES = [
    pytest.param(name, path, id=f"{name}/{path.stem}")
    for name in mapping_names(MAPPINGS)
    for path in iter_case_files(MAPPINGS, name)
]


@pytest.mark.parametrize(("provider", "path"), CASES)
def test_golden_case(provider: str, path: Path) -> None:
    result = run_file(MAPPINGS, load_mapping(MAPPINGS, provider), path)
    assert result.ok, result.message


def test_every_mapping_has_cases() -> None:
    for name in mapping_names(MAPPINGS):
        assert list(iter_case_files(MAPPINGS, name)), f"{name} has no golden cases"
        if (MAPPINGS / name / "outbound.yaml").is_file():
            sends = [p for p in iter_case_files(MAPPINGS, name) if is_send_case(p)]
            assert sends, f"{name} can send but has no send case (cases/send_*.yaml)"


def signed_cases(provider: str) -> list[dict[str, Any]]:
    found = []
    for path in iter_case_files(MAPPINGS, provider):
        if is_send_case(path):
            continue
        case = load_case(path)
        if isinstance(case.get("signed"), dict):
            found.append(case["signed"])
    return found


def test_every_mapping_has_a_signed_case() -> None:
    # A declaration nobody checked against a real signed request is how the Sinch verifier
    # that refused every real webhook passed check, test and simulate.
    for name in mapping_names(MAPPINGS):
        assert signed_cases(name), f"{name} has no signed case (cases/*.yaml with `signed:`)"


@pytest.mark.parametrize("provider", mapping_names(MAPPINGS))
def test_simulate_signs_exactly_what_the_declaration_verifies(
    provider: str, tmp_path: Path
) -> None:
    spec = load_mapping(MAPPINGS, provider)
    signed = signed_cases(provider)[0]
    channel = {
        "id": f"{provider}-sim",
        "provider": provider,
        "portfolio": "acme",
        "secrets": {k: str(v) for k, v in signed["secrets"].items()},
        "settings": dict(signed.get("settings") or {}),
    }
    settings = make_settings(tmp_path, channels=[channel])
    bound = settings.channel(f"{provider}-sim")
    assert bound is not None
    url, headers, body = signed_request(settings, bound, signed["body"].encode())
    lowered = {k.lower(): v for k, v in headers.items()}
    request = SignedRequest("POST", url, lowered, body, lowered["content-type"])
    ChannelVerifier(bound, spec.verify).verify(request)
    with pytest.raises(SignatureError):
        ChannelVerifier(bound, spec.verify).verify(
            SignedRequest("POST", url.split("?")[0], {}, body, lowered["content-type"])
        )
