"""`POST /v1/messages?dry_run…`: a flag the API does not understand (`?dry_run`, `on`, `y`) is a
400 problem, never a real send; `true/1/yes` and `false/0/no` keep their meaning."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import respx

from tests.test_outbound_api import NOW, Gateway, cloud, meta_ok
from tests.test_outbound_providers import BSUID, text


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path)
    with gateway.client:
        yield gateway


@pytest.mark.parametrize("query", ["?dry_run", "?dry_run=", "?dry_run=on", "?dry_run=y"])
def test_an_unrecognised_dry_run_value_never_sends(gw: Gateway, query: str) -> None:
    gw.person(bsuid=BSUID, wrote=NOW - timedelta(hours=1))
    with respx.mock(assert_all_called=False) as router:
        route = meta_ok(router)
        response = gw.post(cloud(text({"bsuid": BSUID})), query=query)
    assert route.call_count == 0, f"{query}: the message went to the provider ({response.text})"
    assert response.status_code in (200, 400), response.text
