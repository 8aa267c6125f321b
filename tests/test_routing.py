"""One webhook URL for several channels: a Meta app posts every number's webhooks to its one
callback URL, each naming its number in `metadata.phone_number_id` (the mapping's `route`).

The payload's events go to the channel whose `settings.phone_number_id` it names (and to that
channel's portfolio); a number no channel has is quarantined, never put on another portfolio.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from bspgate.app import create_app
from bspgate.config import Settings
from bspgate.simulate import signed_request
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, APP_SECRET, make_settings
from tests.identity.test_scenarios_e2e import _channel as cloud_channel
from tests.payloads import text_webhook

AUTH = {"authorization": f"Bearer {API_KEY}"}
US, EU = "106540352242922", "999000999000999"


def _channel(channel_id: str, portfolio: str, number_id: str, secret: str = APP_SECRET) -> Any:
    channel = cloud_channel(channel_id, portfolio)
    channel["secrets"]["app_secret"] = secret
    return {**channel, "settings": {"phone_number_id": number_id}}


def _gateway(tmp_path: Path, *channels: Any) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(tmp_path, channels=list(channels))
    with TestClient(create_app(settings)) as client:
        yield client, settings


def _post(client: TestClient, settings: Settings, number_id: str) -> dict[str, Any]:
    payload = text_webhook("wamid.R1", phone="15551234567")
    payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = number_id
    return _post_payload(client, settings, payload)


def _events(client: TestClient) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = client.get("/v1/events", headers=AUTH).json()["data"]
    return data


@pytest.fixture
def two_numbers(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    yield from _gateway(
        tmp_path, _channel("cloud-us", "acme", US), _channel("cloud-eu", "globex", EU)
    )


def test_a_payload_goes_to_the_channel_of_the_number_it_names(
    two_numbers: tuple[TestClient, Settings],
) -> None:
    client, settings = two_numbers
    raw = _post(client, settings, EU)  # posted to cloud-us's URL, for cloud-eu's number
    assert raw["state"] == "processed"
    (event,) = _events(client)
    assert event["source"] == "/channels/cloud-eu"
    assert (event["data"]["channel"]["id"], event["data"]["channel"]["portfolio"]) == (
        "cloud-eu",
        "globex",
    )


def test_the_channels_own_number_stays_with_it(two_numbers: tuple[TestClient, Settings]) -> None:
    client, settings = two_numbers
    _post(client, settings, US)
    assert [e["data"]["channel"]["id"] for e in _events(client)] == ["cloud-us"]


def test_a_number_no_channel_has_is_quarantined(two_numbers: tuple[TestClient, Settings]) -> None:
    client, settings = two_numbers
    raw = _post(client, settings, "555000555")
    assert raw["state"] == "quarantined"
    assert "phone_number_id 555000555, not this channel's (106540352242922)" in raw["reason"]
    assert _events(client) == []  # not on acme's contacts


def test_a_channel_with_other_secrets_is_not_routed_to(tmp_path: Path) -> None:
    for client, settings in _gateway(
        tmp_path, _channel("cloud-us", "acme", US), _channel("cloud-eu", "globex", EU, "other")
    ):
        raw = _post(client, settings, EU)
        assert raw["state"] == "quarantined"
        assert "cloud-eu" in raw["reason"]
        assert "secrets differ" in raw["reason"]


def test_with_no_number_configured_a_payload_stays_where_it_arrived(tmp_path: Path) -> None:
    bare = _channel("cloud-us", "acme", US)
    del bare["settings"]
    for client, settings in _gateway(tmp_path, bare):
        assert _post(client, settings, EU)["state"] == "processed"
        assert [e["data"]["channel"]["id"] for e in _events(client)] == ["cloud-us"]


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_a_receiving_channel_without_a_number_takes_no_unknown_number(
    tmp_path: Path, batched: bool
) -> None:
    """Once one channel routes by number, a number no channel has is quarantined, whatever Meta
    batched it with: the receiving channel names no number, so it is not that number's either
    (it went to acme's contacts alone, and was quarantined batched)."""
    bare = _channel("cloud-us", "acme", US)
    del bare["settings"]
    for client, settings in _gateway(tmp_path, bare, _channel("cloud-eu", "globex", EU)):
        parts = [("wamid.X", "US.1001", "555000555")]
        if batched:
            parts.append(("wamid.E", "US.1002", EU))
        raw = _post_payload(client, settings, _batched(*parts))
        assert raw["state"] == "quarantined"
        assert "phone_number_id 555000555, not this channel's (none set)" in raw["reason"]
        assert _events(client) == []


def _batched(*parts: tuple[str, str, str]) -> dict[str, Any]:
    """One POST batching changes of several numbers: (message id, BSUID, number id) each."""
    payload = text_webhook(parts[0][0], bsuid=parts[0][1])
    changes = payload["entry"][0]["changes"]
    changes.clear()
    for message_id, bsuid, number_id in parts:
        change = text_webhook(message_id, bsuid=bsuid)["entry"][0]["changes"][0]
        change["value"]["metadata"]["phone_number_id"] = number_id
        changes.append(change)
    return payload


def _post_payload(client: TestClient, settings: Settings, payload: Any) -> dict[str, Any]:
    channel = settings.channel("cloud-us")
    assert channel is not None
    url, headers, body = signed_request(settings, channel, orjson.dumps(payload))
    answer = client.post(urlsplit(url).path, content=body, headers=headers)
    assert answer.status_code == 200
    raw: dict[str, Any] = client.get(
        f"/v1/raws/{answer.headers['bspgate-raw-id']}", headers=AUTH
    ).json()
    return raw


def test_a_batch_naming_two_numbers_is_split_between_their_channels(
    two_numbers: tuple[TestClient, Settings],
) -> None:
    # Meta batches changes; one POST may hold the changes of two numbers of one app
    client, settings = two_numbers
    payload = _batched(("wamid.A", "US.1001", EU), ("wamid.B", "US.1002", US))
    raw = _post_payload(client, settings, payload)
    assert (raw["state"], raw["reason"]) == ("processed", None)
    placed = {
        e["data"]["message"]["id"]: (
            e["data"]["channel"]["id"],
            e["data"]["channel"]["portfolio"],
            e["data"]["contact"]["bsuid"],
        )
        for e in _events(client)
    }
    assert placed == {
        "wamid.A": ("cloud-eu", "globex", "US.1001"),
        "wamid.B": ("cloud-us", "acme", "US.1002"),
    }


def test_a_split_batch_retried_adds_nothing(two_numbers: tuple[TestClient, Settings]) -> None:
    client, settings = two_numbers
    payload = _batched(("wamid.A", "US.1001", EU), ("wamid.B", "US.1002", US))
    _post_payload(client, settings, payload)
    channel = settings.channel("cloud-us")
    assert channel is not None
    url, headers, body = signed_request(settings, channel, orjson.dumps(payload))
    again = client.post(urlsplit(url).path, content=body, headers=headers)
    assert again.status_code == 200
    assert "bspgate-raw-id" not in again.headers  # a duplicate: the first delivery's payload
    assert sorted(e["data"]["message"]["id"] for e in _events(client)) == ["wamid.A", "wamid.B"]


def test_a_batch_naming_an_unconfigured_number_is_quarantined_whole(
    two_numbers: tuple[TestClient, Settings],
) -> None:
    client, settings = two_numbers
    payload = _batched(("wamid.A", "US.1001", EU), ("wamid.C", "US.1003", "555000555"))
    raw = _post_payload(client, settings, payload)
    assert raw["state"] == "quarantined"
    assert "phone_number_id 555000555" in raw["reason"]
    assert EU not in raw["reason"]  # the one without a channel is named, not the routable one
    assert _events(client) == []


def test_the_split_keeps_each_numbers_changes_and_gives_strays_to_one_part() -> None:
    from bspgate.mapping.route import part_for, split_of

    split = split_of("payload.entry[].changes[].value.metadata.phone_number_id")
    assert split is not None
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "1", "changes": [{"value": {"metadata": {"phone_number_id": "A"}}, "n": 1}]},
            {
                "id": "2",
                "changes": [
                    {"value": {"metadata": {"phone_number_id": 7}}, "n": 2},  # a number as int
                    {"value": {}, "n": 3},  # names no number
                    {"value": {"metadata": {"phone_number_id": "A"}}, "n": 4},
                ],
            },
        ],
    }

    def kept(part: Any) -> list[int]:
        return [c["n"] for e in part["entry"] for c in e["changes"]]

    assert kept(part_for(payload, split, "A")) == [1, 4]
    assert kept(part_for(payload, split, "7", strays=True)) == [2, 3]
    assert payload["entry"][1]["changes"][1]["n"] == 3  # the original is left whole
    assert part_for(payload, split, "A")["object"] == "whatsapp_business_account"


@pytest.mark.parametrize(
    "read",
    [
        "payload.entry[0].changes[0].value.metadata.phone_number_id",  # not a plain path
        "payload.metadata.phone_number_id",  # no list to split
        "payload.numbers[]",  # the list holds the values themselves
        "channel.settings.phone_number_id",  # not from the payload
    ],
)
def test_only_a_plain_path_to_a_field_of_list_items_can_split(read: str) -> None:
    from bspgate.mapping.route import split_of

    assert split_of(read) is None
