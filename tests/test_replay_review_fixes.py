"""Replay and retry defects an outside review found (tests/review_delivery and
tests/review_surface/test_replay_flags.py of the reviewed copy), ported.

- `bspgate replay` naming nothing is refused as `POST /v1/replays` refuses it (one check,
  `ReplayRequest.from_dict`); `--all` says "every dead letter" explicitly.
- A replay by event or `"all": true` requeues only configured subscribers' deliveries: a removed
  subscriber's dead letter would wait `pending` for good (no lane sends it). It is reported as
  skipped, and stays dead.
- `dry_run` and `quarantined` are JSON booleans (`"false"` is a 400, never a dry run or a
  quarantine replay); `limit` is checked in both kinds of replay and bounds a quarantine replay.
- `bspgate subscribers retry` on a disabled subscriber says so, with the remedy, and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bspgate.app import create_app
from bspgate.delivery.transport import AiohttpPoster
from bspgate.delivery.worker import Dispatcher
from tests.conftest import make_settings
from tests.payloads import text_webhook
from tests.test_delivery import Harness, subscriber
from tests.test_delivery_review_fixes import api, loopback
from tests.test_operations_cli import fill, one_dead_letter, run

pytestmark = pytest.mark.anyio


# -- the CLI -------------------------------------------------------------------------------------
async def _three_delivered(h: Harness) -> None:
    for n in range(3):
        contact = {"bsuid": f"US.1349120865530274191{n}", "phone": f"1555123456{n}"}
        await h.ingest(text_webhook(f"wamid.{n}", **contact))
    await h.dispatcher.run_once()
    assert {d["state"] for d in await h.deliveries()} == {"delivered"}


def test_a_bare_cli_replay_is_refused_as_the_api_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fill(tmp_path, _three_delivered)
    # no --event/--subscriber/--type/--since/--until/--all: nothing is named
    code, out, err = run(capsys, "replay", "--include-delivered", "--config", config)
    assert (code, out) == (2, ""), err
    assert err.startswith("bspgate: replay: name what to replay: event_id, "), err
    assert "--all" in err  # naming the flags
    # nothing was requeued: the explicit form still finds all three delivered
    code, out, err = run(
        capsys, "replay", "--all", "--include-delivered", "--dry-run", "--config", config
    )
    assert code == 0, err
    assert orjson.loads(out)["matched"] == 3


def test_cli_replay_all_requeues_every_dead_letter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fill(tmp_path, one_dead_letter)
    code, out, err = run(capsys, "replay", "--all", "--config", config)
    assert code == 0, err
    assert orjson.loads(out)["requeued"] == 1


@pytest.mark.parametrize("limit", ["0", "-1", "100001"])
def test_cli_quarantine_replay_checks_its_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    config = fill(tmp_path, one_dead_letter)
    code, out, err = run(capsys, "replay", "--quarantined", "--limit", limit, "--config", config)
    assert (code, out) == (2, ""), err
    assert "limit" in err


def test_cli_retry_of_a_disabled_subscriber_says_so_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fill(tmp_path, one_dead_letter)
    code, _, err = run(capsys, "subscribers", "disable", "crm", "--config", config)
    assert code == 0, err
    code, out, err = run(capsys, "subscribers", "retry", "crm", "--config", config)
    assert (code, out) == (1, ""), err
    assert "'crm' is disabled (disabled by an operator)" in err
    assert "bspgate subscribers enable crm" in err


# -- a removed subscriber's dead letters -----------------------------------------------------------
@pytest.mark.store
@pytest.mark.parametrize("scope", ["event", "all"])
async def test_a_replay_does_not_requeue_a_removed_subscribers_dead_letter(
    tmp_path: Path, scope: str
) -> None:
    subs = (
        subscriber("crm", "{sink}/crm", retry_schedule=["1s"]),
        subscriber("old", "{sink}/old", retry_schedule=["1s"]),
    )
    async with loopback(tmp_path, *subs) as (h, sink):
        sink.script["/crm"] = [500, 500]
        sink.script["/old"] = [500, 500]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        h.clock.advance(2)
        await h.dispatcher.run_once()
        rows = {d["subscriber_id"]: d for d in await h.deliveries()}
        assert rows["crm"]["state"] == rows["old"]["state"] == "dead"
        event_id, old_id = rows["crm"]["event_id"], rows["old"]["id"]
        crm_url = h.gateway.settings.subscribers[0].url

        # the operator removes `old` from the config and restarts, then replays
        settings = make_settings(tmp_path, subscribers=[subscriber("crm", crm_url)])
        app = create_app(settings, clock=h.clock, dispatch=False)
        gateway = app.state.gateway
        await gateway.store.open()
        poster = AiohttpPoster()
        try:
            later = Harness(gateway, h.dispatcher, h.clock, h.receiver, app)
            body = {"event_id": event_id} if scope == "event" else {"all": True}
            async with api(later) as client:
                answer = await client.post("/v1/replays", json=body)
            assert answer.status_code == 202, answer.text
            result: dict[str, Any] = answer.json()
            assert result["requeued"] == 1, result
            assert old_id not in result["deliveries"], result
            assert result["skipped"]["subscribers"] == {"old": 1}, result
            assert "not in the config" in result["skipped"]["reason"]
            dispatcher = Dispatcher(
                gateway.store, settings.subscribers, poster, gateway.metrics, clock=h.clock
            )
            for _ in range(3):
                h.clock.advance(1)
                await dispatcher.run_once()
            old_row = await gateway.store.read(lambda tx: tx.delivery(old_id))
            crm_row = await gateway.store.read(lambda tx: tx.delivery(rows["crm"]["id"]))
        finally:
            await poster.aclose()
            await gateway.client.aclose()
            await gateway.store.close()
        assert old_row["state"] == "dead", old_row  # not pending for good, with no lane
        assert crm_row["state"] == "delivered"
        assert sink.types("/crm") == ["whatsapp.message.received"] * 3


# -- switches and limits of POST /v1/replays -----------------------------------------------------
BAD_FLAGS = ["false", "no", "0", 0, 1, None, [], {}]


@pytest.mark.store
@pytest.mark.parametrize("flag", BAD_FLAGS)
@pytest.mark.parametrize("name", ["dry_run", "quarantined"])
async def test_a_non_boolean_switch_is_refused(tmp_path: Path, name: str, flag: Any) -> None:
    async with loopback(tmp_path, subscriber("crm", "{sink}/crm")) as (h, _), api(h) as client:
        for body in ({"all": True}, {"event_id": "evt_X"}, {"quarantined": True}):
            answer = await client.post("/v1/replays", json={**body, name: flag})
            assert answer.status_code == 400, (body, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert f'"{name}" is true or false' in answer.json()["detail"]


@pytest.mark.store
@pytest.mark.parametrize("limit", [0, -1, 100_001, "5", 2.5, True, None])
@pytest.mark.parametrize("kind", [{"all": True}, {"quarantined": True}])
async def test_a_bad_limit_is_refused_in_both_kinds_of_replay(
    tmp_path: Path, kind: dict[str, Any], limit: Any
) -> None:
    async with loopback(tmp_path, subscriber("crm", "{sink}/crm")) as (h, _):
        async with api(h) as client:
            answer = await client.post("/v1/replays", json={**kind, "limit": limit})
        assert answer.status_code == 400, answer.text
        assert "limit is an integer from 1 to 100000" in answer.json()["detail"]


@pytest.mark.store
async def test_a_quarantine_replay_honours_its_limit(tmp_path: Path) -> None:
    async with loopback(tmp_path, subscriber("crm", "{sink}/crm")) as (h, _):
        channel = h.gateway.settings.channel("cloud-us")
        assert channel is not None
        for n in range(3):  # no rule matches: quarantined
            payload = {"unknown": n}
            outcome = await h.gateway.ingest(
                channel, payload, orjson.dumps(payload), "application/json"
            )
            assert outcome.state == "quarantined"
        async with api(h) as client:
            bounded = await client.post(
                "/v1/replays", json={"quarantined": True, "dry_run": True, "limit": 2}
            )
            whole = await client.post("/v1/replays", json={"quarantined": True, "dry_run": True})
        assert bounded.status_code == 200, bounded.text
        assert (bounded.json()["matched"], bounded.json()["truncated"]) == (2, True)
        assert (whole.json()["matched"], whole.json()["truncated"]) == (3, False)


@pytest.mark.store
async def test_a_quarantine_replay_of_an_unknown_payload_is_refused(tmp_path: Path) -> None:
    # a mistyped raw_id is not "nothing to replay": 422, as an unknown subscriber or type is
    async with loopback(tmp_path, subscriber("crm", "{sink}/crm")) as (h, _), api(h) as client:
        answer = await client.post("/v1/replays", json={"quarantined": True, "raw_id": "raw_nope"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_replay"
    assert "no raw payload 'raw_nope'" in answer.json()["detail"]


def test_cli_quarantine_replay_of_an_unknown_payload_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fill(tmp_path, one_dead_letter)
    code, out, err = run(capsys, "replay", "--quarantined", "--raw", "raw_nope", "--config", config)
    assert (code, out) == (2, ""), err
    assert "no raw payload 'raw_nope'" in err


@pytest.mark.store
async def test_a_replay_of_an_unknown_event_is_refused(tmp_path: Path) -> None:
    # a mistyped event id is not "nothing to replay": 422, as an unknown subscriber or type is
    async with loopback(tmp_path, subscriber("crm", "{sink}/crm")) as (h, _), api(h) as client:
        answer = await client.post("/v1/replays", json={"event_id": "evt_nope"})
    assert answer.status_code == 422, answer.text
    assert "no event 'evt_nope'" in answer.json()["detail"]


def test_cli_replay_of_an_unknown_event_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fill(tmp_path, one_dead_letter)
    code, out, err = run(capsys, "replay", "--event", "evt_nope", "--config", config)
    assert (code, out) == (2, ""), err
    assert "no event 'evt_nope'" in err
