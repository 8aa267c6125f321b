"""An honest command line: help for every argument, `--config` anywhere, suggestions for
mistyped keys, a dry run that answers what the API answers, replays that refuse what they
cannot parse, and quick-start fixtures that are distinct messages."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from pathlib import Path

import orjson
import pytest
import yaml

from bspgate.app import create_app
from bspgate.cli import build_parser, main
from bspgate.errors import ConfigError
from bspgate.mapping.loader import load_mapping, shipped_mappings_dir
from bspgate.normalize import Normalizer, demo_channel
from bspgate.store.sqlite import SqliteStore
from bspgate.times import comparable
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, ROOT, SUBSCRIBER_SECRET, base_config, make_settings


def _actions(
    parser: argparse.ArgumentParser, trail: str = "bspgate"
) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _actions(child, f"{trail} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            found.append((trail, action))
    return found


def test_every_argument_has_help() -> None:
    missing = [f"{trail} {a.dest}" for trail, a in _actions(build_parser()) if not a.help]
    assert missing == []


def test_limit_defaults_show_in_help() -> None:
    limits = [a for _trail, a in _actions(build_parser()) if a.dest == "limit"]
    assert limits
    assert all("%(default)s" in (a.help or "") for a in limits)


def test_config_before_or_after_the_subcommand(tmp_path: Path) -> None:
    parser = build_parser()
    before = parser.parse_args(["--config", "a.yaml", "config", "check"])
    after = parser.parse_args(["config", "check", "--config", "a.yaml"])
    assert before.config == after.config == "a.yaml"
    assert parser.parse_args(["config", "check"]).config is None


def test_unknown_config_keys_suggest_the_nearest(tmp_path: Path) -> None:
    from bspgate.config import settings_from_dict

    config = base_config(tmp_path)
    config["subscriber"] = []
    with pytest.raises(ConfigError, match="did you mean 'subscribers'"):
        settings_from_dict(config, env={}, base_dir=ROOT)
    config = base_config(tmp_path)
    config["channels"][0]["secret"] = {}
    with pytest.raises(ConfigError, match=r"channels\[0\]\.secret: .*did you mean 'secrets'"):
        settings_from_dict(config, env={}, base_dir=ROOT)


def test_times_with_offsets_compare_as_instants() -> None:
    assert comparable("2026-01-01T10:00:00+01:00") == "2026-01-01T09:00:00"
    assert comparable("2026-01-01T04:00:00-05:00") == "2026-01-01T09:00:00"
    assert comparable("2026-01-01T09:00:00Z") == "2026-01-01T09:00:00"
    with pytest.raises(ValueError, match="RFC 3339"):
        comparable("2026-01-01 9am")


def _readme_fixtures() -> list[tuple[str, Path]]:
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"bspgate (?:simulate|normalize) +(\S+) +(tests/fixtures/\S+\.json)", text)
    return sorted({(name, ROOT / path) for name, path in found})


def test_readme_fixtures_are_distinct_messages() -> None:
    ids: dict[str, Path] = {}
    providers = {
        c["id"]: c["provider"]
        for c in yaml.safe_load((ROOT / "config.yaml").read_text())["channels"]
    }
    fixtures = _readme_fixtures()
    assert len(fixtures) >= 8
    for name, path in fixtures:
        provider = providers.get(name, name)
        outcome = Normalizer(
            load_mapping(shipped_mappings_dir(), provider), demo_channel(provider)
        ).normalize_body(path.read_bytes())
        for event in outcome.events:
            message_id = event["data"]["message"]["id"]
            if message_id in ids and ids[message_id] != path:
                raise AssertionError(f"{path} and {ids[message_id]} share {message_id}")
            ids[message_id] = path


@pytest.mark.parametrize("provider", ["cloudapi", "twilio"])
def test_phone_only_fixtures(provider: str) -> None:
    path = ROOT / "tests" / "fixtures" / "phone_only" / f"{provider}.json"
    outcome = Normalizer(
        load_mapping(shipped_mappings_dir(), provider), demo_channel(provider)
    ).normalize_body(path.read_bytes())
    (event,) = outcome.events
    assert event["data"]["contact"]["bsuid"] is None
    assert event["data"]["contact"]["phone"] == "+15557654321"  # nobody else's number


def _config_file(tmp_path: Path, **overrides: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path, **overrides)))
    return path


def test_replay_refuses_what_it_cannot_parse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subscriber = {"id": "crm", "url": "https://crm.example.com/h", "secret": SUBSCRIBER_SECRET}
    config = _config_file(tmp_path, subscribers=[subscriber])
    asyncio.run(_create_database(tmp_path / "bspgate.db"))
    capsys.readouterr()
    for extra in (
        ["--since", "yesterday"],
        ["--subscriber", "nobody"],
        ["--type", "whatsapp.nope"],
    ):
        assert main(["replay", "--config", str(config), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
    assert (
        main(
            [
                "replay",
                "--config",
                str(config),
                "--since",
                "2026-01-01T10:00:00+01:00",
                "--limit",
                "1",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert orjson.loads(out)["matched"] == 0
    assert "matched 0" in err


async def _create_database(path: Path) -> None:
    store = SqliteStore(path)
    await store.open()
    await store.close()


def test_cli_dry_run_answers_what_the_api_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config_file(tmp_path)
    asyncio.run(_create_database(tmp_path / "bspgate.db"))
    send = {"to": {"phone": "+15551234567"}, "type": "text", "text": {"body": "hi"}}
    (tmp_path / "send.json").write_text(json.dumps(send))
    capsys.readouterr()
    code = main(
        [
            "send",
            "--dry-run",
            "--channel",
            "cloud-us",
            "--config",
            str(config),
            str(tmp_path / "send.json"),
        ]
    )
    cli_answer = orjson.loads(capsys.readouterr().out)
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, dispatch=False)) as client:
        api = client.post(
            "/v1/messages?dry_run=true",
            json={**send, "channel": "cloud-us"},
            headers={"authorization": f"Bearer {API_KEY}"},
        )
    assert (code, cli_answer["code"]) == (2, "outside_service_window")
    assert (api.status_code, api.json()["code"]) == (422, cli_answer["code"])


def test_answers_carry_one_time_format() -> None:
    from bspgate.times import rfc3339_fields

    row = {
        "next_attempt_at": 1767225600.5,
        "created_at": "2026-01-01T01:00:00+01:00",
        "attempt_log": [{"at": "2026-01-01T00:00:00Z", "status": 200}],
        "failing_since": None,
        "reason": "2026-01-01T00:00:00+01:00 stays text outside time fields",
    }
    assert rfc3339_fields(row) == {
        "next_attempt_at": "2026-01-01T00:00:00.500000Z",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "attempt_log": [{"at": "2026-01-01T00:00:00.000000Z", "status": 200}],
        "failing_since": None,
        "reason": "2026-01-01T00:00:00+01:00 stays text outside time fields",
    }
