"""Operator commands of the CLI (`dlq list`, `replay --dry-run`) over a store a test filled.

The store is filled in-process (the delivery harness: a mock receiver, a hand clock), then the
command runs as an operator runs it, against the config naming that store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from bspgate.cli import main
from bspgate.times import parse_time
from tests.conftest import APP_SECRET, MAPPINGS, SUBSCRIBER_SECRET
from tests.payloads import text_webhook
from tests.test_delivery import CRM, Harness, harness, subscriber


def fill(tmp_path: Path, work: Callable[[Harness], Coroutine[Any, Any, None]]) -> str:
    """Run `work` in a delivery harness on SQLite in `tmp_path`; answers the config's path."""

    async def run() -> str:
        async with harness(tmp_path, subscriber("crm", CRM, retry_schedule=["1s"])) as h:
            await work(h)
            return h.gateway.settings.storage

    storage = asyncio.run(run())
    config = tmp_path / "ops.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": storage,
                "mappings": str(MAPPINGS),
                "server": {"public_url": "https://gw.example.com"},
                "channels": [
                    {
                        "id": "cloud-us",
                        "provider": "cloudapi",
                        "portfolio": "acme",
                        "secrets": {"app_secret": APP_SECRET, "verify_token": "v"},
                    }
                ],
                "subscribers": [
                    {"id": "crm", "url": CRM, "secret": SUBSCRIBER_SECRET},
                    {"id": "late", "url": CRM + "/late", "secret": SUBSCRIBER_SECRET},
                ],
            }
        )
    )
    return str(config)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # the in-process gateway's own log lines
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def one_dead_letter(h: Harness) -> None:
    h.receiver.script[CRM] = [500, 500]
    await h.ingest(text_webhook("wamid.1"))
    await h.dispatcher.run_once()
    h.clock.advance(5)
    await h.dispatcher.run_once()
    assert (await h.only_delivery())["state"] == "dead"


def test_dlq_list_prints_times_in_rfc3339_utc_with_z(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fill(tmp_path, one_dead_letter)
    code, out, err = run(capsys, "dlq", "list", "--config", config)
    assert code == 0, err
    (row,) = [orjson.loads(line) for line in out.splitlines()]
    assert row["kind"] == "dead_letter"
    for key in ("next_attempt_at", "created_at", "updated_at"):
        assert isinstance(row[key], str), key
        assert row[key].endswith("Z"), row[key]
        parse_time(row[key])


async def one_delivered_event(h: Harness) -> None:
    await h.ingest(text_webhook("wamid.1"))
    await h.dispatcher.run_once()


def test_replay_dry_run_for_a_later_subscriber_counts_what_it_would_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fill(tmp_path, one_delivered_event)  # `late` is configured after the event came
    code, out, err = run(capsys, "replay", "--subscriber", "late", "--dry-run", "--config", config)
    assert code == 0, err
    assert orjson.loads(out)["added"] == 1
    assert "added 1" in err
    assert "dry run: nothing changed" in err
    code, out, err = run(capsys, "replay", "--subscriber", "late", "--config", config)
    assert code == 0, err
    assert orjson.loads(out)["added"] == 1  # what the dry run said


def test_dlq_list_of_a_subscriber_not_in_the_config_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fill(tmp_path, one_dead_letter)
    code, out, err = run(capsys, "dlq", "list", "--subscriber", "crn", "--config", config)
    assert code == 2
    assert out == ""
    assert "no subscriber 'crn' in the config" in err
    code, out, _ = run(capsys, "dlq", "list", "--subscriber", "crm", "--config", config)
    assert code == 0
    assert len(out.splitlines()) == 1
