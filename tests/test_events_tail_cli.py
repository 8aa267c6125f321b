"""`bspgate events tail` started before any event is stored prints every event once, oldest
first: an empty store answers the start of the stream as `tail_cursor`."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import yaml

from bspgate import cli
from tests.conftest import base_config, make_settings
from tests.harness import RunningGateway
from tests.payloads import text_webhook


class Stop(Exception):
    pass


@pytest.mark.parametrize("burst", [3, 120])
def test_tail_from_an_empty_store_prints_every_event_oldest_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, burst: int
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path)))
    with RunningGateway(make_settings(tmp_path), dispatch=False) as gateway:
        ids = [f"wamid.T{i:04d}" for i in range(burst)]
        sleeps = 0

        def sleep(_seconds: float) -> None:
            nonlocal sleeps
            sleeps += 1
            if sleeps == 1:  # events arrive while the tail waits for the first one
                for message_id in ids:
                    body = orjson.dumps(text_webhook(message_id))
                    assert gateway.post("cloud-us", body).status_code == 200
            elif sleeps >= 3:
                raise Stop

        monkeypatch.setattr(cli.time, "sleep", sleep)
        url = str(gateway.client.base_url).rstrip("/")
        cli.main(["events", "tail", "--config", str(config), "--url", url])  # ends at Stop
    assert sleeps >= 3
    printed = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    got = [event["data"]["message"]["id"] for event in printed]
    assert got == ids  # every event, in the order stored
