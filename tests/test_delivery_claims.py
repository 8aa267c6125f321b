"""Claims, leases and recovery over a real outbox (SQLite and PostgreSQL), with a hand clock.

Leases follow the subscriber's timeout; a stale attempt cannot overwrite a newer result; a
restarted replica takes its own claims back at once; after an outage, the first success pulls
every pending retry forward; an operator can retry a subscriber now (`/v1` and the CLI).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bspgate.delivery.lane import OPEN_AFTER, lease_for
from bspgate.delivery.worker import RETRY_CHECK_EVERY, AttemptResult, Dispatcher
from bspgate.operations import retry_subscriber
from bspgate.times import iso, parse_time
from tests.conftest import API_KEY
from tests.payloads import text_webhook
from tests.test_delivery import ALICE, BOB, CRM, Harness, harness, subscriber

pytestmark = [pytest.mark.anyio, pytest.mark.store]


def twin(h: Harness, owner: str, **options: Any) -> Dispatcher:
    """Another dispatcher on the same store (another replica, or this one after a restart)."""
    return Dispatcher(
        h.gateway.store,
        h.gateway.settings.subscribers,
        h.dispatcher.poster,
        h.gateway.metrics,
        clock=h.clock,
        owner=owner,
        **options,
    )


async def lease_until(h: Harness) -> float:
    row = await h.gateway.store.read(lambda tx: tx.one("SELECT lease_until FROM deliveries"))
    return float(row[0])


async def test_the_lease_is_longer_than_the_subscribers_timeout(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, timeout="45s")) as h:
        await h.ingest(text_webhook("wamid.1"))
        lane = h.dispatcher.lanes["crm"]
        assert len(await h.dispatcher._claim(lane, 10)) == 1
        lease = await lease_until(h) - h.clock.now.timestamp()
        assert lease == pytest.approx(lease_for(45.0))
        assert lease > 45.0


async def test_a_long_attempt_renews_its_lease(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, timeout="45s")) as h:
        await h.ingest(text_webhook("wamid.1"))
        lane = h.dispatcher.lanes["crm"]
        ((job, _probe),) = await h.dispatcher._claim(lane, 10)
        first = await lease_until(h)
        assert await h.dispatcher.renew() == 0  # a fresh attempt needs nothing
        lane.inflight[job.id] = (job, lane.inflight.get(job.id, (job, 0.0))[1] - lane.lease)
        h.clock.advance(40)
        assert await h.dispatcher.renew() == 1
        assert await lease_until(h) == pytest.approx(first + 40)


async def test_a_stale_attempt_never_overwrites_a_newer_result(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1"))
        slow = twin(h, "replica-a", lease=5.0)
        ((job, _probe),) = await slow._claim(slow.lanes["crm"], 10)
        h.clock.advance(6)  # replica A's lease ran out while its POST was still open
        other = twin(h, "replica-b")
        assert await other.run_once() == 1  # replica B claims the row again and delivers it
        late = AttemptResult(job, 500, 8000.0, "HTTP 500", None)
        await slow._record([late])  # replica A's answer finally comes back
        row = await h.only_delivery()
        assert row["state"] == "delivered"
        assert row["last_status"] == 200
        assert row["attempts"] == 1
        # both attempts are history, but only the current claim decided the outcome
        assert sorted(a["status"] for a in await h.attempts(row["id"])) == [200, 500]


async def test_a_stale_attempt_leaves_the_newer_claim_of_its_row_in_flight(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1"))
        mine = twin(h, "replica-a", lease=5.0)
        lane = mine.lanes["crm"]
        ((old, _probe),) = await mine._claim(lane, 10)
        h.clock.advance(6)  # its lease ran out while the POST was still open (renewal failed)
        ((new, _probe),) = await mine._claim(lane, 10)  # this replica claims the row again
        assert (new.id, new.token != old.token) == (old.id, True)
        lane.inflight[new.id] = (new, time.monotonic())  # the new attempt is being posted
        await mine._record([AttemptResult(old, 500, 8000.0, "HTTP 500", None)])  # the old answer
        # the new attempt is still in flight: its lease is renewed, its slot still taken
        assert lane.inflight[new.id][0].token == new.token


async def test_a_restarted_replica_takes_back_its_own_claims_at_once(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE, phone=None))
        await h.ingest(text_webhook("wamid.2", bsuid=BOB, phone=None))
        mine, theirs = twin(h, "replica-a"), twin(h, "replica-b")
        assert len(await mine._claim(mine.lanes["crm"], 1)) == 1  # then replica A dies
        assert len(await theirs._claim(theirs.lanes["crm"], 1)) == 1  # B is alive, mid-POST
        restarted = twin(h, "replica-a")  # the same owner id after the restart
        assert await restarted.reclaim() == 1
        states = sorted(row["state"] for row in await h.deliveries())
        assert states == ["inflight", "pending"]  # B's live claim is untouched
        assert await restarted.run_once() == 1  # due at once, not after the lease
        assert len(h.receiver.message_ids()) == 1


# -- recovery ---------------------------------------------------------------------------------
async def test_first_success_after_an_outage_pulls_every_retry_forward(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM)) as h:  # default schedule: 5 s, 5 m, …
        h.receiver.script[CRM] = [503] * 6  # down for the first two rounds (3 contacts each)
        for n, bsuid in enumerate((ALICE, BOB, "US.30000000000000000003")):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=bsuid, phone=None))
        assert await h.dispatcher.run_once() == 3
        h.clock.advance(7)
        assert await h.dispatcher.run_once() == 3  # the 5 s retry fails too: next in ~5 min
        rows = await h.deliveries()
        assert all(r["next_attempt_at"] - h.clock.now.timestamp() > 200 for r in rows)
        h.clock.advance(3)  # the receiver is back; nothing is due for minutes
        assert await h.dispatcher.run_once() == 1  # a probe, early
        assert await h.dispatcher.run_once() == 2  # its success pulled the others forward
        assert {r["state"] for r in await h.deliveries()} == {"delivered"}
        assert len(h.receiver.requests) == 6 + 3  # two failed rounds, then each once


async def test_a_failed_early_probe_spends_no_attempt(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.receiver.script[CRM] = [503] * 3
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        h.clock.advance(7)
        await h.dispatcher.run_once()
        before = await h.only_delivery()
        h.clock.advance(3)
        assert await h.dispatcher.run_once() == 1  # the probe, answered 503
        after = await h.only_delivery()
        assert after["attempts"] == before["attempts"] == 2
        assert after["next_attempt_at"] == pytest.approx(before["next_attempt_at"])
        assert len(await h.attempts(after["id"])) == 3  # still recorded


async def test_an_open_breaker_sends_one_at_a_time_until_a_success(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, retry_schedule=["1s"] * 20)) as h:
        contacts = [f"US.{n:020d}" for n in range(8)]
        h.receiver.script[CRM] = [503] * (8 + 3)
        for n, bsuid in enumerate(contacts):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=bsuid, phone=None))
        assert await h.dispatcher.run_once() == 8  # 8 failures in a row: the breaker opens
        assert h.dispatcher.lanes["crm"].failures >= OPEN_AFTER
        for _ in range(3):
            h.clock.advance(3)
            assert await h.dispatcher.run_once() == 1  # one probe, not all eight due rows
        h.clock.advance(3)
        assert await h.dispatcher.run_once() == 1  # the receiver is back: this probe succeeds
        assert await h.dispatcher.run_once() == 7  # everything held goes
        assert {r["state"] for r in await h.deliveries()} == {"delivered"}


async def test_retry_now_through_the_api(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.receiver.script[CRM] = [503]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=h.app),
            base_url="http://gw",
            headers={"authorization": f"Bearer {API_KEY}"},
        )
        answer = await client.post("/v1/subscribers/crm/retry")
        assert answer.status_code == 200
        assert answer.json() == {"id": "crm", "retrying": 1}
        assert await h.dispatcher.run_once() == 1  # due now, not in 5 s
        assert (await h.only_delivery())["state"] == "delivered"
        missing = await client.post("/v1/subscribers/nobody/retry")
        assert missing.status_code == 404


async def test_retry_through_the_api_reaches_a_dispatcher_in_another_process(
    tmp_path: Path,
) -> None:
    # Under `serve` the API answers in the server process and the lanes run in the delivery
    # worker: the API's gateway has no dispatcher to tell (as here), only the store.
    async with harness(tmp_path, subscriber("crm", CRM, retry_schedule=["1s"] * 20)) as h:
        h.receiver.script[CRM] = [503] * (8 + 1)
        for n in range(8):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=f"US.{n:020d}", phone=None))
        assert await h.dispatcher.run_once() == 8  # 8 failures in a row: the breaker opens
        h.clock.advance(3)
        assert await h.dispatcher.run_once() == 1  # its one attempt fails: the next in seconds
        assert await h.dispatcher.run_once() == 0  # (nothing goes until then)
        h.clock.advance(RETRY_CHECK_EVERY)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=h.app),
            base_url="http://gw",
            headers={"authorization": f"Bearer {API_KEY}"},
        )
        assert (await client.post("/v1/subscribers/crm/retry")).status_code == 200
        assert await h.dispatcher.run_once() == 1  # at once: the receiver is back
        assert await h.dispatcher.run_once() == 7  # its success drains the rest
        assert {r["state"] for r in await h.deliveries()} == {"delivered"}


async def test_a_lane_acts_on_a_stored_retry_once(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, retry_schedule=["1s"] * 20)) as h:
        h.receiver.script[CRM] = [503] * (8 + 2)
        for n in range(8):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=f"US.{n:020d}", phone=None))
        assert await h.dispatcher.run_once() == 8
        h.clock.advance(RETRY_CHECK_EVERY)
        await retry_subscriber(h.gateway.store, "crm", h.clock())  # `bspgate subscribers retry`
        assert await h.dispatcher.run_once() == 1  # at once, and it fails again
        h.clock.advance(RETRY_CHECK_EVERY)
        assert await h.dispatcher.run_once() == 0  # the same request: the probes' pace again
        h.clock.advance(2)
        assert await h.dispatcher.run_once() == 1


async def test_the_subscriber_list_shows_why_its_queue_waits(tmp_path: Path) -> None:
    # what an engineer paged for a stuck queue asks first: is it failing, since when, how much
    # waits and when is the next try (times in the one format of bspgate's answers)
    async with harness(tmp_path) as h:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=h.app),
            base_url="http://gw",
            headers={"authorization": f"Bearer {API_KEY}"},
        )
        (quiet,) = (await client.get("/v1/subscribers")).json()["data"]
        assert quiet["failing_since"] is None
        assert quiet["backlog"] == {
            "pending": 0, "inflight": 0, "held": 0, "dead": 0,
            "next_attempt_at": None, "oldest_open_at": None,
        }  # fmt: skip
        h.receiver.script[CRM] = [503, 503]
        failed_at = h.clock()
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE))
        await h.ingest(text_webhook("wamid.2", bsuid=BOB))
        assert await h.dispatcher.run_once() == 2  # both fail
        (crm,) = (await client.get("/v1/subscribers")).json()["data"]
        assert crm["enabled"] is True
        assert crm["failing_since"] == iso(failed_at)
        backlog = crm["backlog"]
        waiting = [d for d in await h.deliveries() if d["state"] == "pending"]
        assert len(waiting) >= 2  # the two that failed (and what waits behind them)
        assert (backlog["pending"], backlog["inflight"], backlog["dead"]) == (len(waiting), 0, 0)
        # the earliest due: an event waiting behind a failed one of its contact is due already
        assert backlog["next_attempt_at"] == iso(failed_at)
        assert parse_time(backlog["oldest_open_at"]) <= failed_at
        assert backlog["oldest_open_at"].endswith("Z")
        # the same backlog on /metrics, for alerts per subscriber
        h.clock.advance(30)
        text = (await client.get("/metrics")).text
        pending = f'bspgate_subscriber_backlog{{state="pending",subscriber="crm"}} {len(waiting)}.0'
        assert pending in text
        assert 'bspgate_subscriber_backlog{state="dead",subscriber="crm"} 0.0' in text
        (age,) = [
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith('bspgate_subscriber_oldest_open_seconds{subscriber="crm"}')
        ]
        assert 30.0 <= age < 60.0


def test_retry_now_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    import orjson
    import yaml

    from bspgate.cli import main
    from tests.conftest import base_config

    config = base_config(tmp_path, subscribers=[subscriber("crm", CRM)])
    config["storage"] = f"sqlite:///{tmp_path / 'cli.db'}"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    async def fail_once() -> None:
        async with harness(tmp_path, subscriber("crm", CRM), storage=config["storage"]) as h:
            h.receiver.script[CRM] = [503]
            await h.ingest(text_webhook("wamid.1"))
            await h.dispatcher.run_once()

    asyncio.run(fail_once())
    assert main(["subscribers", "retry", "crm", "--config", str(path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert orjson.loads(last) == {"id": "crm", "retrying": 1}
    assert main(["subscribers", "retry", "nobody", "--config", str(path)]) == 1
    capsys.readouterr()
    assert main(["subscribers", "list", "--config", str(path)]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert listed["backlog"]["pending"] == 1
    assert listed["failing_since"].endswith("Z")
