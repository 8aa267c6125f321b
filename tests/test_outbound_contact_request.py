"""The v1.1 `contact_request` send: Meta's request_contact_info on Cloud API and 360dialog,
`422 unsupported_by_provider` (and no provider call) everywhere else.

The expected Meta body (tests/fixtures/outbound/*/send_contact_request.json) follows the
request_contact_info interactive message as public SDK tests and BSP docs write it
(docs/provider-evidence.md, "contact_request").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from bspgate.errors import SendError
from bspgate.store.sqlite import SqliteStore
from tests.test_outbound_providers import (
    BSUID,
    CHECKS,
    OUT,
    PROVIDERS,
    channel_id,
    make_settings,
    mock_provider,
    seed,
    service_for,
    store,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.anyio
META = ["cloudapi", "dialog360"]
OTHERS = [p for p in PROVIDERS if p not in META]
BODY = "Share your number so we can update you about your order."


def contact_request(to: dict[str, str]) -> dict[str, Any]:
    return {
        "to": to,
        "type": "interactive",
        "interactive": {"type": "contact_request", "body": BODY},
    }


@pytest.mark.parametrize("provider", META)
async def test_contact_request_is_metas_request_contact_info(
    tmp_path: Path,
    store: SqliteStore,  # noqa: F811
    provider: str,
) -> None:
    await seed(store, [channel_id(provider)])
    async with httpx.AsyncClient() as client:
        with respx.mock(assert_all_called=True) as router:
            route = mock_provider(router, provider)
            outcome = await service_for(make_settings(tmp_path), store, client).submit(
                contact_request({"bsuid": BSUID}), channel_id=channel_id(provider)
            )
    assert outcome.status == 202
    body = CHECKS[provider](route.calls.last.request)
    expected = json.loads((OUT / provider / "send_contact_request.json").read_text())
    assert body == expected


@pytest.mark.parametrize("provider", OTHERS)
async def test_contact_request_is_unsupported_by_other_providers(
    tmp_path: Path,
    store: SqliteStore,  # noqa: F811
    provider: str,
) -> None:
    await seed(store, [channel_id(provider)])
    async with httpx.AsyncClient() as client:
        with respx.mock(assert_all_called=False) as router:
            route = mock_provider(router, provider)
            with pytest.raises(SendError) as caught:
                await service_for(make_settings(tmp_path), store, client).submit(
                    contact_request({"bsuid": BSUID}), channel_id=channel_id(provider)
                )
    assert caught.value.code == "unsupported_by_provider"
    assert caught.value.status == 422
    assert route.call_count == 0


async def test_button_interactive_keeps_its_form(
    tmp_path: Path,
    store: SqliteStore,  # noqa: F811
) -> None:
    send = {
        "to": {"bsuid": BSUID},
        "type": "interactive",
        "interactive": {"type": "button", "body": "Pick", "buttons": [{"id": "a", "title": "A"}]},
    }
    await seed(store, [channel_id("cloudapi")])
    async with httpx.AsyncClient() as client:
        with respx.mock(assert_all_called=True) as router:
            route = mock_provider(router, "cloudapi")
            await service_for(make_settings(tmp_path), store, client).submit(
                send, channel_id=channel_id("cloudapi")
            )
    interactive = json.loads(route.calls.last.request.content)["interactive"]
    assert interactive["type"] == "button"
    assert interactive["action"] == {
        "buttons": [{"type": "reply", "reply": {"id": "a", "title": "A"}}]
    }
