"""`GET /v1/events?after=CURSOR&wait=30s` long-polls, through a real server on loopback."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from tests.conftest import make_settings
from tests.harness import RunningGateway
from tests.payloads import text_webhook


def test_a_long_poll_answers_the_next_event(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, storage=f"sqlite:///{tmp_path / 'poll.db'}")
    with RunningGateway(settings, dispatch=False) as gateway:
        assert gateway.post("cloud-us", orjson.dumps(text_webhook("wamid.1"))).is_success
        tail = gateway.client.get("/v1/events", params={"limit": 1}).json()["tail_cursor"]
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                gateway.client.get, "/v1/events", params={"after": tail, "wait": "30s"}
            )
            assert gateway.post("cloud-us", orjson.dumps(text_webhook("wamid.2"))).is_success
            answer = waiting.result(timeout=60).json()
        assert [e["data"]["message"]["id"] for e in answer["data"]] == ["wamid.2"]
        assert answer["tail_cursor"] != tail


def test_a_long_poll_with_nothing_new_answers_empty(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, storage=f"sqlite:///{tmp_path / 'poll.db'}")
    with RunningGateway(settings, dispatch=False) as gateway:
        assert gateway.post("cloud-us", orjson.dumps(text_webhook("wamid.1"))).is_success
        tail = gateway.client.get("/v1/events", params={"limit": 1}).json()["tail_cursor"]
        answer = gateway.client.get("/v1/events", params={"after": tail, "wait": "1s"}).json()
        assert answer["data"] == []
        assert answer["tail_cursor"] == tail
        bad = gateway.client.get("/v1/events", params={"after": tail, "wait": "5m"})
        assert bad.status_code == 400
        assert bad.json()["code"] == "invalid_query"
