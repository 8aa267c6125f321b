"""Delivery guarantees an operator relies on: status order, subscriber switches, replays."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from bspgate.operations import (
    ReplayRequest,
    UnknownReference,
    replay_deliveries,
    replay_quarantined,
)
from tests.conftest import MAPPINGS, make_settings
from tests.payloads import status_webhook, text_webhook
from tests.test_delivery import ALICE, BI, BOB, CRM, harness, subscriber

pytestmark = [pytest.mark.anyio, pytest.mark.store]  # store: runs on SQLite and PostgreSQL


async def _statuses(h: Any) -> list[str]:
    return [orjson.loads(r.content)["data"]["message"]["status"] for r in h.receiver.requests]


async def _drain(h: Any, rounds: int = 10) -> None:
    """Per-contact ordering sends one event per contact a round: run rounds until idle."""
    for _ in range(rounds):
        if await h.dispatcher.run_once() == 0:
            return


async def test_status_moving_backwards_is_stored_superseded_and_not_delivered(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(status_webhook("wamid.out", "read"))
        channel = h.gateway.settings.channel("cloud-us")
        assert channel is not None
        late = status_webhook("wamid.out", "delivered")
        outcome = await h.gateway.ingest(channel, late, orjson.dumps(late), "application/json")
        assert (outcome.superseded, outcome.events) == (1, [])
        await h.dispatcher.run_once()
        assert await _statuses(h) == ["read"]
        stored = await h.gateway.store.read(
            lambda tx: tx.list_events(
                type_=None,
                contact_id=None,
                since=None,
                before_seq=None,
                after_seq=None,
                limit=10,
                include_superseded=True,
            )
        )
        assert len(stored) == 2


async def test_failed_is_terminal(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(status_webhook("wamid.out", "sent"))
        await h.ingest(status_webhook("wamid.out", "failed"))
        channel = h.gateway.settings.channel("cloud-us")
        assert channel is not None
        read = status_webhook("wamid.out", "read")
        outcome = await h.gateway.ingest(channel, read, orjson.dumps(read), "application/json")
        assert outcome.superseded == 1
        await _drain(h)
        assert await _statuses(h) == ["sent", "failed"]


async def test_statuses_moving_forward_are_all_delivered(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        for status in ("sent", "delivered", "read", "played"):
            await h.ingest(status_webhook("wamid.out", status))
        await _drain(h)
        assert await _statuses(h) == ["sent", "delivered", "read", "played"]


async def test_gone_disables_persistently_and_enable_resumes(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, retry_schedule=["1s"])) as h:
        h.receiver.script[CRM] = [410]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        states = await h.gateway.store.read(lambda tx: tx.subscriber_states())
        assert states["crm"]["reason"] == "the subscriber answered 410 Gone"
        await h.ingest(text_webhook("wamid.2", timestamp=1767225601))
        h.clock.advance(60)
        assert await h.dispatcher.run_once() == 0  # disabled: nothing leaves
        stamp = h.clock().isoformat()
        await h.gateway.store.transaction(lambda tx: tx.enable_subscriber("crm", stamp))
        await _drain(h)
        assert h.receiver.message_ids() == ["wamid.1", "wamid.1", "wamid.2"]


async def test_sustained_failure_disables_with_a_visible_reason(tmp_path: Path) -> None:
    sub = subscriber("crm", CRM, retry_schedule=["1h"] * 30, disable_after="24h")
    async with harness(tmp_path, sub) as h:
        h.receiver.script[CRM] = [503] * 40
        await h.ingest(text_webhook("wamid.1"))
        for _ in range(26):
            await h.dispatcher.run_once()
            h.clock.advance(3600 * 1.25)
        states = await h.gateway.store.read(lambda tx: tx.subscriber_states())
        assert states["crm"]["disabled_at"]
        assert "every delivery failed since" in states["crm"]["reason"]
        assert (await h.only_delivery())["state"] == "pending"  # kept for when it comes back


async def test_replay_redelivers_a_dead_letter_once(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, retry_schedule=["1s"])) as h:
        h.receiver.script[CRM] = [500, 500]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        h.clock.advance(5)
        await h.dispatcher.run_once()
        assert (await h.only_delivery())["state"] == "dead"
        preview = await replay_deliveries(h.gateway.store, ReplayRequest(dry_run=True), h.clock())
        assert preview["matched"] == 1
        assert (await h.only_delivery())["state"] == "dead"
        result = await replay_deliveries(h.gateway.store, ReplayRequest(), h.clock())
        assert result["requeued"] == 1
        await h.dispatcher.run_once()
        assert (await h.only_delivery())["state"] == "delivered"
        again = await replay_deliveries(h.gateway.store, ReplayRequest(), h.clock())
        assert again["matched"] == 0


async def test_replay_gives_a_later_subscriber_the_events_it_never_had(tmp_path: Path) -> None:
    async with harness(
        tmp_path, subscriber("crm", CRM), subscriber("bi", BI, events=["none"])
    ) as h:
        await h.ingest(text_webhook("wamid.1"))
        await h.ingest(text_webhook("wamid.2", timestamp=1767225601))
        # a dry run first counts what the subscriber would be given, and changes nothing
        request = ReplayRequest(subscriber_id="bi", dry_run=True)
        preview = await replay_deliveries(h.gateway.store, request, h.clock())
        assert (preview["matched"], preview["added"], preview["dry_run"]) == (0, 2, True)
        assert await h.deliveries("bi") == []
        result = await replay_deliveries(
            h.gateway.store, ReplayRequest(subscriber_id="bi"), h.clock()
        )
        assert result["added"] == 2
        await _drain(h)
        assert h.receiver.message_ids(BI) == ["wamid.1", "wamid.2"]


async def test_replay_to_a_later_subscriber_gives_only_what_its_config_accepts(
    tmp_path: Path,
) -> None:
    async with harness(
        tmp_path, subscriber("crm", CRM), subscriber("bi", BI, events=["none"])
    ) as h:
        await h.ingest(text_webhook("wamid.1"))
        await h.ingest(text_webhook("wamid.2", timestamp=1767225601, text="second"))
        await h.ingest(status_webhook("wamid.out", "sent"))
        # the operator now configures "bi" for received messages, and only for one message id
        later = make_settings(
            tmp_path,
            subscribers=[
                subscriber(
                    "bi",
                    BI,
                    events=["whatsapp.message.received"],
                    filter={"data.message.id": {"eq": "wamid.2"}},
                )
            ],
        ).subscribers
        result = await replay_deliveries(
            h.gateway.store, ReplayRequest(subscriber_id="bi"), h.clock(), later
        )
        assert result["added"] == 1
        await _drain(h)
        assert h.receiver.message_ids(BI) == ["wamid.2"]


def _phones(h: Any, url: str) -> dict[str, str | None]:
    """Message id -> the contact phone each event delivered to `url` carried."""
    out = {}
    for request in h.receiver.requests:
        if str(request.url) == url:
            data = orjson.loads(request.content)["data"]
            out[data["message"]["id"]] = data["contact"]["phone"]
    return out


def _late_phone_subscriber(tmp_path: Path) -> Any:
    """`bi` as the operator configures it later: every event, but only with a phone."""
    return make_settings(
        tmp_path, subscribers=[subscriber("bi", BI, require_phone=True, hold_for="1h")]
    ).subscribers


async def test_replay_to_a_later_subscriber_holds_events_without_a_phone(tmp_path: Path) -> None:
    # `bi` requires a phone; live, it takes no events yet (so nothing of it is in the outbox)
    bi = subscriber("bi", BI, events=["none"], require_phone=True)
    async with harness(tmp_path, subscriber("crm", CRM), bi) as h:
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE, phone=None))
        await h.ingest(text_webhook("wamid.2", bsuid=BOB))
        result = await replay_deliveries(
            h.gateway.store, ReplayRequest(subscriber_id="bi"), h.clock(),
            _late_phone_subscriber(tmp_path),
        )  # fmt: skip
        assert result["added"] == 2
        await _drain(h)
        assert set(_phones(h, BI)) == {"wamid.2"}  # wamid.1 is held: its contact has no phone
        assert {r["state"] for r in await h.deliveries("bi")} == {"held", "delivered"}
        await h.ingest(text_webhook("wamid.3", bsuid=ALICE, phone="15557654321"))  # a phone now
        await _drain(h)
        phone = _phones(h, CRM)["wamid.3"]
        assert phone is not None
        assert _phones(h, BI) == {"wamid.2": _phones(h, CRM)["wamid.2"], "wamid.1": phone}


async def test_replay_to_a_later_subscriber_fills_in_a_phone_gained_since(
    tmp_path: Path,
) -> None:
    bi = subscriber("bi", BI, events=["none"], require_phone=True)
    async with harness(tmp_path, subscriber("crm", CRM), bi) as h:
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE, phone=None))
        await h.ingest(text_webhook("wamid.2", bsuid=ALICE, phone="15557654321"))
        result = await replay_deliveries(
            h.gateway.store, ReplayRequest(subscriber_id="bi"), h.clock(),
            _late_phone_subscriber(tmp_path),
        )  # fmt: skip
        assert result["added"] == 2
        await _drain(h)
        phone = _phones(h, CRM)["wamid.2"]
        assert phone is not None
        assert _phones(h, BI) == {"wamid.1": phone, "wamid.2": phone}


async def test_a_replayed_expired_delivery_is_held_again_until_a_phone(tmp_path: Path) -> None:
    bi = subscriber("bi", BI, require_phone=True, hold_for="1s")
    async with harness(tmp_path, bi) as h:
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE, phone=None))
        h.clock.advance(5)
        await _drain(h)  # the claim's sweep: no phone within hold_for
        assert (await h.only_delivery())["state"] == "expired"
        request = ReplayRequest(subscriber_id="bi", states=("expired",))
        result = await replay_deliveries(h.gateway.store, request, h.clock())
        assert result["requeued"] == 1
        await _drain(h)
        assert (await h.only_delivery())["state"] == "held"  # not sent without a phone
        assert h.receiver.requests == []
        await h.ingest(text_webhook("wamid.2", bsuid=ALICE, phone="15557654321"))
        await _drain(h)
        phones = _phones(h, BI)
        assert phones["wamid.1"] is not None
        assert phones["wamid.1"] == phones["wamid.2"]


async def test_replay_by_type_and_window_matches_only_those(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, retry_schedule=["1s"])) as h:
        h.receiver.script[CRM] = [500] * 4
        await h.ingest(text_webhook("wamid.1"))
        await h.ingest(status_webhook("wamid.out", "sent"))
        for _ in range(6):  # both die: per-contact order sends the status after the text
            await h.dispatcher.run_once()
            h.clock.advance(5)
        request = ReplayRequest(type="whatsapp.message.status", dry_run=True)
        result = await replay_deliveries(h.gateway.store, request, h.clock())
        assert result["matched"] == 1
        window = ReplayRequest(since="2030-01-01T00:00:00Z", dry_run=True)
        assert (await replay_deliveries(h.gateway.store, window, h.clock()))["matched"] == 0


def test_replay_request_rejects_unknown_states() -> None:
    with pytest.raises(ValueError, match="states"):
        ReplayRequest.from_dict({"states": ["pending"]})


async def test_quarantined_payload_is_renormalized_once_after_a_mapping_fix(
    tmp_path: Path,
) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS / "cloudapi", mappings / "cloudapi")
    text = (mappings / "cloudapi" / "mapping.yaml").read_text()
    broken = text.replace(
        "(change.field == 'messages' || change.field == 'standby') && !(msg.group_id)", "`false`", 1
    )
    assert broken != text
    (mappings / "cloudapi" / "mapping.yaml").write_text(broken)
    async with harness(tmp_path, subscriber("crm", CRM), mappings=str(mappings)) as h:
        channel = h.gateway.settings.channel("cloud-us")
        assert channel is not None
        payload = text_webhook("wamid.q")
        outcome = await h.gateway.ingest(
            channel, payload, orjson.dumps(payload), "application/json"
        )
        assert outcome.state == "quarantined"
        (mappings / "cloudapi" / "mapping.yaml").write_text(text)  # the fix
        from bspgate.mapping.loader import load_mapping

        still = await replay_quarantined(h.gateway, dry_run=True)  # the old mapping
        assert still["outcomes"] == {"would_stay_quarantined": 1}  # not a false "fixed"
        h.gateway.mappings["cloudapi"] = load_mapping(mappings, "cloudapi")
        dry = await replay_quarantined(h.gateway, dry_run=True)
        assert dry["payloads"][0]["events"] == 1
        assert dry["outcomes"] == {"would_process": 1}
        result = await replay_quarantined(h.gateway)
        assert result["payloads"][0]["state"] == "processed"
        assert result["payloads"][0]["events"] == 1
        again = await replay_quarantined(h.gateway, raw_id=outcome.raw_id)
        assert again["payloads"][0]["events"] == 0  # deterministic ids: produced once
        await h.dispatcher.run_once()
        assert h.receiver.message_ids() == ["wamid.q"]
        quarantined = await h.gateway.store.read(lambda tx: tx.raws("quarantined", 10))
        assert quarantined == []


async def test_a_replay_may_name_an_operational_event_type() -> None:
    request = ReplayRequest.from_dict({"type": "bspgate.delivery.dead_lettered"})
    assert request.type == "bspgate.delivery.dead_lettered"
    with pytest.raises(UnknownReference):
        ReplayRequest.from_dict({"type": "bspgate.no.such"})
