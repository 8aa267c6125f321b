"""The dispatcher's lean paths keep every guarantee (SQLite and PostgreSQL, hand clock).

Signing from a prepared HMAC key is byte for byte the reference library's signature; a claim of
many rows is one statement and still takes only queue heads; outcome writes of many rows at once
still let only the current claim finish a row; a request claimed ahead and released unsent spends
nothing; a delivered attempt is one DEBUG line and one INFO summary per round, a failed one a
WARNING each; a lane posts from at most `max_in_flight` coroutines, not a task per attempt.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from bspgate.delivery.asymmetric import generate
from bspgate.delivery.signing import Signer
from bspgate.delivery.worker import AttemptResult
from bspgate.logging import configure_logging
from tests.conftest import SUBSCRIBER_SECRET
from tests.payloads import text_webhook
from tests.test_delivery import CRM, harness, subscriber

pytestmark = [pytest.mark.anyio, pytest.mark.store]

OTHER_SECRET = "whsec_" + base64.b64encode(b"another key, 32 bytes long......").decode()
UNPADDED = "whsec_" + base64.b64encode(b"a key of 31 bytes, unpadded....").decode().rstrip("=")


def bsuid(n: int) -> str:
    return f"US.{n:020d}"


@pytest.mark.parametrize(
    "keys", [(SUBSCRIBER_SECRET,), (SUBSCRIBER_SECRET, OTHER_SECRET), (UNPADDED,)]
)
def test_prepared_keys_sign_as_the_reference_library(keys: tuple[str, ...]) -> None:
    signer = Signer(keys)
    moment = datetime(2026, 3, 1, 12, 0, 5, 999_000, tzinfo=UTC)
    body = '{"data":{"text":"héllo ✓"}}'
    expected = " ".join(Webhook(key).sign("evt_1", moment, body) for key in keys)
    assert signer.sign("evt_1", moment, body) == expected
    header = signer.sign_bytes("evt_1", int(moment.timestamp()), body.encode(), body)
    assert header == expected
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(datetime.now(UTC).timestamp())),
        "webhook-signature": signer.sign_bytes(
            "evt_1", int(datetime.now(UTC).timestamp()), body.encode(), body
        ),
    }
    for key in keys:  # a receiver holding any one of the keys accepts it
        Webhook(key).verify(body.encode(), headers)


def test_a_mixed_key_list_still_signs_each_key() -> None:
    secret, _public = generate()
    signer = Signer((SUBSCRIBER_SECRET, secret))
    moment = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
    header = signer.sign_bytes("evt_1", int(moment.timestamp()), b"{}", "{}")
    v1, v1a = header.split(" ")
    assert v1 == Webhook(SUBSCRIBER_SECRET).sign("evt_1", moment, "{}")
    assert v1a.startswith("v1a,")


async def test_one_claim_takes_many_heads_in_order(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        for n in range(12):  # twelve contacts: every event heads its contact's queue
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=bsuid(n), phone=None))
        for n in range(3):  # three more behind contact 0's first event
            await h.ingest(text_webhook(f"wamid.late{n}", bsuid=bsuid(0), phone=None))
        lane = h.dispatcher.lanes["crm"]
        claimed = await h.dispatcher._claim(lane, 64)
        assert len(claimed) == 12
        rows = list(reversed(await h.deliveries()))  # in event order
        heads = [row["id"] for row in rows if row["state"] == "inflight"]
        assert [job.id for job, _probe in claimed] == heads  # oldest first
        waiting = {row["contact_id"] for row in rows if row["state"] == "pending"}
        assert waiting == {rows[0]["contact_id"]}  # the three behind contact 0's first event
        tokens = {job.token for job, _probe in claimed}
        assert len(tokens) == 1
        assert tokens != {""}
        states = sorted(row["state"] for row in await h.deliveries())
        assert states == ["inflight"] * 12 + ["pending"] * 3
        assert await h.dispatcher._claim(lane, 64) == []  # nothing else is a head


async def test_many_outcomes_at_once_only_the_current_claim_finishes(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        for n in range(3):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=bsuid(n), phone=None))
        lane = h.dispatcher.lanes["crm"]
        claimed = await h.dispatcher._claim(lane, 64)
        assert len(claimed) == 3
        first, second, third = (job for job, _probe in claimed)
        stale = replace(first, token="replica-a/old")  # an older claim of the same row
        await h.dispatcher._record(
            [
                AttemptResult(stale, 500, 9000.0, "HTTP 500", None),
                AttemptResult(first, 200, 3.0, None, None),
                AttemptResult(second, 503, 4.0, "HTTP 503", None),
                AttemptResult(third, None, 5.0, "ConnectError: refused", None),
            ]
        )
        rows = {row["id"]: row for row in await h.deliveries()}
        assert rows[first.id]["state"] == "delivered"
        assert rows[first.id]["last_status"] == 200
        assert rows[first.id]["attempts"] == 1
        assert rows[second.id]["state"] == "pending"
        assert rows[second.id]["last_status"] == 503
        assert rows[second.id]["attempts"] == 1
        assert rows[third.id]["last_status"] is None
        assert rows[third.id]["last_error"] == "ConnectError: refused"
        assert sorted(a["status"] or 0 for a in await h.attempts(first.id)) == [200, 500]
        assert [a["status"] for a in await h.attempts(third.id)] == [None]
        assert lane.inflight == {}


async def test_a_request_released_unsent_spends_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1"))
        lane = h.dispatcher.lanes["crm"]
        before = await h.only_delivery()
        ((job, probe),) = await h.dispatcher._claim(lane, 64)
        h.dispatcher._launch(lane, [])  # nothing claimed: nothing queued, no coroutine
        assert lane.workers == 0
        h.dispatcher._results = asyncio.Queue()
        lane.posting += 1  # as `_launch` counts a queued request
        h.dispatcher._release(lane, [(job, probe)])
        assert lane.posting == 0
        await h.dispatcher._record([h.dispatcher._results.get_nowait()])
        row = await h.only_delivery()
        assert row["state"] == "pending"
        assert row["attempts"] == 0
        assert row["next_attempt_at"] == before["next_attempt_at"]
        assert await h.attempts(row["id"]) == []
        assert lane.inflight == {}
        assert lane.failing_since is None  # not a failure either
        assert await h.dispatcher.run_once() == 1  # due as it was: delivered on the next round
        assert (await h.only_delivery())["state"] == "delivered"


async def test_successes_are_summed_up_failures_logged_one_by_one(tmp_path: Path) -> None:
    configure_logging("info")
    try:
        async with harness(tmp_path) as h:
            h.receiver.script[CRM] = [200, 200, 500]
            for n in range(3):
                await h.ingest(text_webhook(f"wamid.{n}", bsuid=bsuid(n), phone=None))
            with capture_logs() as logs:
                assert await h.dispatcher.run_once() == 3
        attempts = [e for e in logs if e["event"] == "delivery.attempt"]
        assert [e["log_level"] for e in attempts] == ["warning"]
        assert attempts[0]["status"] == 500
        (summary,) = [e for e in logs if e["event"] == "delivery.delivered"]
        assert summary["log_level"] == "info"
        assert summary["deliveries"] == 2
        assert summary["subscriber"] == "crm"
    finally:
        structlog.reset_defaults()


async def test_debug_logs_every_delivered_attempt(tmp_path: Path) -> None:
    configure_logging("debug")
    try:
        async with harness(tmp_path) as h:
            await h.ingest(text_webhook("wamid.1"))
            with capture_logs() as logs:
                assert await h.dispatcher.run_once() == 1
        (attempt,) = [e for e in logs if e["event"] == "delivery.attempt"]
        assert attempt["log_level"] == "debug"
        assert attempt["outcome"] == "delivered"
    finally:
        structlog.reset_defaults()


async def test_a_lane_posts_from_at_most_max_in_flight_coroutines(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, max_in_flight=3)) as h:
        for n in range(20):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=bsuid(n), phone=None))
        h.dispatcher.idle_poll = 0.01
        task = h.dispatcher.start()
        lane = h.dispatcher.lanes["crm"]
        most = 0
        for _ in range(1000):
            most = max(most, lane.workers, len(h.dispatcher._tasks))
            states = {row["state"] for row in await h.deliveries()}
            if states == {"delivered"}:
                break
            await asyncio.sleep(0.01)
        h.dispatcher.stop()
        await task
        assert {row["state"] for row in await h.deliveries()} == {"delivered"}
        assert len(h.receiver.requests) == 20  # each once
        assert 1 <= most <= 3
        assert lane.workers == 0
        assert lane.posting == 0
        assert lane.inflight == {}


async def test_a_paused_lane_releases_what_it_claimed_ahead(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        for n in range(4):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=bsuid(n), phone=None))
        lane = h.dispatcher.lanes["crm"]
        h.dispatcher._results = asyncio.Queue()
        claimed = await h.dispatcher._claim(lane, 64)
        assert len(claimed) == 4
        # a 429 came back while these waited for a posting coroutine: they must not go now
        lane.paused_until = h.clock.now.timestamp() + 30
        h.dispatcher._launch(lane, claimed)
        for _ in range(20):
            await asyncio.sleep(0)
        results = [h.dispatcher._results.get_nowait() for _ in range(4)]
        assert not any(result.sent for result in results)
        assert h.receiver.requests == []
        assert lane.posting == 0
        await h.dispatcher._record(results)
        rows = await h.deliveries()
        assert {row["state"] for row in rows} == {"pending"}
        assert {row["attempts"] for row in rows} == {0}
        for task in list(h.dispatcher._tasks):
            task.cancel()
        await asyncio.gather(*h.dispatcher._tasks, return_exceptions=True)
