"""What a subscriber chooses and how it is paced: `filter:`, `rate:`, 429s, test-filter.

Filters are checked at config load (dotted-key errors) and decide at fan-out; the outbox is the
real SQLite/PostgreSQL one and the dispatcher runs round by round on a hand clock.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from bspgate.cli import main
from bspgate.delivery.filter import compile_filter
from bspgate.errors import ConfigError
from tests.conftest import base_config, make_settings
from tests.payloads import text_webhook
from tests.test_delivery import ALICE, BI, BOB, CRM, harness, subscriber

EVENT: dict[str, Any] = {
    "type": "whatsapp.message.received",
    "time": "2026-12-01T10:00:00Z",
    "data": {
        "channel": {"id": "cloud-us", "provider": "cloudapi"},
        "contact": {"phone": "+15551234567", "bsuid": ALICE},
        "message": {"type": "text", "text": "order 42", "status": None, "size": 12},
    },
}


# -- the filter language --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data.message.type": {"eq": "text"}}, True),
        ({"data.message.type": {"ne": "text"}}, False),
        ({"data.message.type": {"in": ["image", "text"]}}, True),
        ({"data.message.type": {"nin": ["image", "text"]}}, False),
        ({"data.contact.phone": {"exists": True}}, True),
        ({"data.message.status": {"exists": False}}, True),  # null is absent
        ({"data.message.status": {"ne": "failed"}}, True),
        ({"data.message.status": {"eq": "failed"}}, False),
        ({"data.nothing.here": {"nin": ["x"]}}, True),
        ({"data.message.size": {"gt": 10, "lte": 12}}, True),
        ({"data.message.size": {"lt": 12}}, False),
        ({"data.message.text": {"gt": 1}}, False),  # a string is not a number
        ({"time": {"gte": "2026-12-01T09:00:00+00:00"}}, True),
        ({"time": {"lt": "2026-12-01T11:00:00+01:00"}}, False),  # 10:00 UTC is 11:00 +01:00
        ({"data.message.text": {"matches": "order [0-9]+"}}, True),
        ({"data.message.text": {"matches": "order"}}, False),  # anchored: the whole value
        ({"any": [{"data.message.type": {"eq": "image"}}, {"type": {"eq": EVENT["type"]}}]}, True),
        ({"all": [{"data.message.type": {"eq": "image"}}, {"type": {"eq": EVENT["type"]}}]}, False),
        ({"not": {"data.message.type": {"eq": "image"}}}, True),
        ({"data.message.type": {"eq": "text"}, "data.channel.id": {"eq": "other"}}, False),
    ],
)
def test_filter_operators(raw: dict[str, Any], expected: bool) -> None:
    assert compile_filter(raw, "f").matches(EVENT) is expected
    # `bspgate serve` pickles the settings into its worker processes: the filter survives
    copied = pickle.loads(pickle.dumps(compile_filter(raw, "f")))  # noqa: S301  # our own bytes
    assert copied.matches(EVENT) is expected


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"data.message.type": {"inn": ["text"]}}, "data.message.type.inn", "not an operator"),
        ({"data.message.text": {"matches": "("}}, "data.message.text.matches", "regular"),
        ({"time": {"gt": "yesterday"}}, "time.gt", "RFC 3339"),
        ({"data.message.type": {"in": "text"}}, "data.message.type.in", "list"),
        ({"any": [{"data x": {"eq": 1}}]}, "any[0].data x", "canonical path"),
        ({"data.message.type": "text"}, "data.message.type", "operators"),
    ],
)
def test_a_bad_filter_fails_config_load_naming_the_dotted_key(
    tmp_path: Path, raw: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, subscribers=[subscriber("crm", CRM, filter=raw)])
    assert caught.value.key == f"subscribers[0].filter.{key}"
    assert words in str(caught.value)


def test_a_bad_rate_fails_config_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, subscribers=[subscriber("crm", CRM, rate="50/d")])
    assert caught.value.key == "subscribers[0].rate"


# -- filters at fan-out ---------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.store
async def test_filtered_out_events_neither_block_nor_leapfrog(tmp_path: Path) -> None:
    only_keep = {"data.message.text": {"matches": "keep.*"}}
    async with harness(tmp_path, subscriber("crm", CRM, filter=only_keep)) as h:
        h.receiver.script[CRM] = [503]
        for n, text in enumerate(("keep 1", "drop", "keep 2")):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=ALICE, text=text, phone=None))
        assert len(await h.deliveries()) == 2  # the filtered-out event has no outbox row
        assert await h.dispatcher.run_once() == 1  # "keep 1" fails; "keep 2" waits behind it
        assert await h.dispatcher.run_once() == 0
        h.clock.advance(10)
        assert await h.dispatcher.run_once() == 1  # "keep 1" again, delivered
        assert await h.dispatcher.run_once() == 1  # then "keep 2": "drop" never held it up
        assert h.receiver.message_ids() == ["wamid.0", "wamid.0", "wamid.2"]


def test_test_filter_says_whether_an_event_would_go(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = base_config(
        tmp_path,
        subscribers=[subscriber("crm", CRM, filter={"data.message.type": {"eq": "text"}})],
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    event = tmp_path / "event.json"
    event.write_bytes(orjson.dumps(EVENT))
    assert main(["subscribers", "test-filter", "crm", str(event), "--config", str(path)]) == 0
    assert orjson.loads(capsys.readouterr().out.splitlines()[-1])["delivers"] is True
    other = {**EVENT, "data": {**EVENT["data"], "message": {"type": "image"}}}
    event.write_bytes(orjson.dumps(other))
    assert main(["subscribers", "test-filter", "crm", str(event), "--config", str(path)]) == 1
    answer = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert answer == {
        "subscriber": "crm",
        "delivers": False,
        "reason": "its filter does not hold for this event",
    }


# -- pacing ---------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.store
async def test_rate_is_a_token_bucket_per_subscriber(tmp_path: Path) -> None:
    subs = (subscriber("crm", CRM, rate="2/s"), subscriber("bi", BI))
    async with harness(tmp_path, *subs) as h:
        for n in range(5):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=f"US.{n:020d}", phone=None))
        assert await h.dispatcher.run_once() == 2 + 5  # crm: its 2 tokens; bi: unlimited
        assert await h.dispatcher.run_once() == 0  # no token yet
        h.clock.advance(0.5)
        assert await h.dispatcher.run_once() == 1
        h.clock.advance(1)
        assert await h.dispatcher.run_once() == 2
        assert len(h.receiver.message_ids(CRM)) == 5


@pytest.mark.anyio
@pytest.mark.store
async def test_a_429_with_retry_after_slows_that_subscriber_alone(tmp_path: Path) -> None:
    subs = (subscriber("crm", CRM), subscriber("bi", BI))
    async with harness(tmp_path, *subs) as h:
        h.receiver.script[CRM] = [httpx.Response(429, headers={"retry-after": "30"})]
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE, phone=None))
        assert await h.dispatcher.run_once() == 2
        states = await h.gateway.store.read(lambda tx: tx.subscriber_states())
        # nor in the store: a 429 starts no failure streak (which would end in a "recovered"
        # event, pull retries forward and, after a day of 429s, disable the subscriber)
        assert (states.get("crm") or {}).get("failing_since") is None
        await h.ingest(text_webhook("wamid.2", bsuid=BOB, phone=None))
        assert await h.dispatcher.run_once() == 1  # bi only: crm is paused
        assert h.receiver.message_ids(BI) == ["wamid.1", "wamid.2"]
        h.clock.advance(31)
        assert await h.dispatcher.run_once() == 2  # crm resumes with both
        assert sorted(h.receiver.message_ids(CRM)) == ["wamid.1", "wamid.1", "wamid.2"]
        assert h.dispatcher.lanes["crm"].failures == 0  # busy, not broken: breaker untouched


# -- batch delivery -------------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.store
async def test_batches_keep_per_contact_order_inside_and_across(tmp_path: Path) -> None:
    from standardwebhooks import Webhook

    from tests.conftest import SUBSCRIBER_SECRET

    async with harness(tmp_path, subscriber("crm", CRM, batch={"max": 3, "wait": "10ms"})) as h:
        contacts = [f"US.{n:020d}" for n in range(4)]
        for n, bsuid in enumerate(contacts):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=bsuid, phone=None))
        for n in (4, 5):  # two more for the first contact
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=contacts[0], phone=None))
        assert await h.dispatcher.run_once() == 4  # the 4 contacts' heads: batches of 3 and 1
        assert await h.dispatcher.run_once() == 1  # then the first contact's next, alone
        assert await h.dispatcher.run_once() == 1
        batches = []
        for request in h.receiver.requests:
            assert request.headers["content-type"] == "application/cloudevents-batch+json"
            Webhook(SUBSCRIBER_SECRET).verify(request.content, dict(request.headers))
            batches.append([e["data"]["message"]["id"] for e in orjson.loads(request.content)])
        assert sorted(len(b) for b in batches[:2]) == [1, 3]
        assert batches[2:] == [["wamid.4"], ["wamid.5"]]
        first_contact = [m for b in batches for m in b if m in ("wamid.0", "wamid.4", "wamid.5")]
        assert first_contact == ["wamid.0", "wamid.4", "wamid.5"]
        assert {r["state"] for r in await h.deliveries()} == {"delivered"}


@pytest.mark.anyio
@pytest.mark.store
async def test_a_batch_has_the_same_webhook_id_in_any_claim_order(tmp_path: Path) -> None:
    # rows of a batch come from a claim and its top-up, so a retry may claim them in another order
    async with harness(tmp_path, subscriber("crm", CRM, batch={"max": 3, "wait": "10ms"})) as h:
        for n in range(3):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=f"US.{n:020d}", phone=None))
        lane = h.dispatcher.lanes["crm"]
        group = await h.dispatcher._claim(lane, 1)
        assert len(group) == 3
        await h.dispatcher._attempt_group(lane, group)
        await h.dispatcher._attempt_group(lane, group[::-1])
        first, second = h.receiver.requests
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.headers["webhook-id"].startswith("bat_")


@pytest.mark.anyio
@pytest.mark.store
async def test_a_failed_batch_is_retried_whole_under_its_webhook_id(tmp_path: Path) -> None:
    # its rows share one jitter: they come due together and go out as the same batch again
    async with harness(tmp_path, subscriber("crm", CRM, batch={"max": 5, "wait": "10ms"})) as h:
        h.receiver.script[CRM] = [500, 200]
        for n in range(5):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=f"US.{n:020d}", phone=None))
        assert await h.dispatcher.run_once() == 5
        due = {r["next_attempt_at"] for r in await h.deliveries()}
        assert len(due) == 1  # each row's own jitter gave five retry times
        h.clock.advance(due.pop() - h.clock.now.timestamp() + 0.01)
        assert await h.dispatcher.run_once() == 5
        first, second = h.receiver.requests
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert sorted(e["id"] for e in orjson.loads(first.content)) == sorted(
            e["id"] for e in orjson.loads(second.content)
        )
        assert {r["state"] for r in await h.deliveries()} == {"delivered"}
