"""The `bspgate` command line, run in-process (and once as a subprocess)."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from bspgate.cli import build_parser, main
from bspgate.mapping.loader import iter_case_files
from bspgate.schema.validate import EventValidator
from tests.conftest import APP_SECRET, FIXTURES, MAPPINGS, ROOT, SUBSCRIBER_SECRET

WEBHOOK_FIXTURES = [
    pytest.param(path, id=path.stem)
    for path in sorted((FIXTURES / "cloudapi").glob("*.json"))
    if orjson.loads(path.read_bytes()).get("object") == "whatsapp_business_account"
]
ERRORS_ONLY = {
    "object": "whatsapp_business_account",
    "entry": [
        {
            "id": "1",
            "changes": [
                {
                    "field": "messages",
                    "value": {"messaging_product": "whatsapp", "errors": [{"code": 131000}]},
                }
            ],
        }
    ],
}


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands default to ./config.yaml: run them from the repository, with no override."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("BSPGATE_CONFIG", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines()]


# -- normalize ---------------------------------------------------------------------------------
def test_there_are_cloudapi_webhook_fixtures() -> None:
    assert len(WEBHOOK_FIXTURES) >= 5


@pytest.mark.parametrize("path", WEBHOOK_FIXTURES)
def test_normalize_prints_canonical_json_lines_for_every_fixture(
    capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    code, out, err = run(capsys, "normalize", "cloudapi", str(path))
    assert code == 0, err
    events = json_lines(out)
    assert events
    validator = EventValidator()
    for event in events:
        validator.validate(event)
        assert event["source"] == "/channels/cloudapi"


def test_normalize_reads_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = (FIXTURES / "cloudapi" / "inbound_text.json").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body)))
    code, out, _ = run(capsys, "normalize", "cloudapi", "-")
    assert code == 0
    (event,) = json_lines(out)
    assert event["type"] == "whatsapp.message.received"


def test_normalize_with_a_configured_channel_uses_its_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = FIXTURES / "cloudapi" / "inbound_text.json"
    code, out, err = run(
        capsys,
        "normalize",
        "cloudapi",
        str(path),
        "--channel",
        "cloud-us",
        "--config",
        "config.yaml",
    )
    assert code == 0, err
    (event,) = json_lines(out)
    assert event["source"] == "/channels/cloud-us"


def test_normalize_quarantined_payload_exits_2_with_the_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "errors_only.json"
    path.write_bytes(orjson.dumps(ERRORS_ONLY))
    code, out, err = run(capsys, "normalize", "cloudapi", str(path))
    assert code == 2
    assert out == ""
    assert "quarantined" in err
    assert "only errors[]" in err


def test_normalize_unparseable_file_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"object": ')
    code, out, err = run(capsys, "normalize", "cloudapi", str(path))
    assert code == 2
    assert out == ""
    assert "unparseable" in err


def test_normalize_missing_file_fails_on_stderr(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "normalize", "cloudapi", str(tmp_path / "absent.json"))
    assert code != 0
    assert out == ""
    assert "absent.json" in err


def test_normalize_unknown_provider_fails_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "cloudapi" / "inbound_text.json"
    code, out, err = run(capsys, "normalize", "no_such_provider", str(path))
    assert code != 0
    assert out == ""
    assert "no_such_provider" in err


def test_normalize_needs_no_config_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = FIXTURES / "cloudapi" / "inbound_text.json"
    code, out, err = run(capsys, "normalize", "cloudapi", str(path), "--mappings", str(MAPPINGS))
    assert code == 0, err
    assert len(json_lines(out)) == 1
    assert list(tmp_path.iterdir()) == []  # no database or other file written


# -- mappings ----------------------------------------------------------------------------------
def test_mappings_check_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "mappings", "check")
    assert code == 0
    assert "ok   mappings/cloudapi/mapping.yaml" in out
    assert out.splitlines()[-1].endswith(" passed, 0 failed")


def test_mappings_test_runs_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "mappings", "test")
    assert code == 0, out
    assert out.splitlines()[-1].endswith(" passed, 0 failed")


def test_mappings_test_one_provider_counts_its_cases(capsys: pytest.CaptureFixture[str]) -> None:
    cases = list(iter_case_files(MAPPINGS, "cloudapi"))
    code, out, _ = run(capsys, "mappings", "test", "cloudapi")
    assert code == 0, out
    assert out.splitlines()[-1] == f"{len(cases)} passed, 0 failed"


def test_mappings_check_reports_a_broken_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "mapping.yaml").write_text("name: broken\ninbound:\n  parse: xml\n")
    code, out, _ = run(capsys, "mappings", "check", "--mappings", str(tmp_path))
    assert code == 1
    assert f"FAIL {(folder / 'mapping.yaml').resolve()}:3: inbound.parse:" in out
    assert out.splitlines()[-1] == "0 passed, 1 failed"


def test_mappings_test_reports_a_failing_case(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = tmp_path / "copy"
    (root / "cloudapi" / "cases").mkdir(parents=True)
    (root / "cloudapi" / "mapping.yaml").write_text(
        (MAPPINGS / "cloudapi" / "mapping.yaml").read_text()
    )
    case = yaml.safe_load((MAPPINGS / "cloudapi" / "cases" / "inbound_text.yaml").read_text())
    case["expect"]["events"][0]["data"]["message"]["text"] = "something else"
    (root / "cloudapi" / "cases" / "wrong.yaml").write_text(yaml.safe_dump(case))
    code, out, _ = run(capsys, "mappings", "test", "--mappings", str(root))
    assert code == 1
    assert "FAIL " in out
    assert out.splitlines()[-1] == "0 passed, 1 failed"


# -- config check ------------------------------------------------------------------------------
@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": "postgresql://gw:db-password-1@db:5432/bspgate",
                "mappings": str(MAPPINGS),
                "api_keys": [{"name": "crm", "key": "api-key-value-1"}],
                "channels": [
                    {
                        "id": "cloud-us",
                        "provider": "cloudapi",
                        "portfolio": "acme",
                        "secrets": {"app_secret": APP_SECRET, "verify_token": "verify-token-1"},
                    }
                ],
                "subscribers": [
                    {"id": "crm", "url": "https://crm.example.com/h", "secret": SUBSCRIBER_SECRET}
                ],
            }
        )
    )
    return path


def test_config_check_prints_the_resolved_config_with_secrets_masked(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    code, out, _ = run(capsys, "config", "check", "--config", str(config_file))
    assert code == 0
    resolved = orjson.loads(out)
    assert resolved["channels"][0]["secrets"] == {
        "app_secret": "**********",
        "verify_token": "**********",
    }
    assert resolved["subscribers"][0]["secret"] == "**********"
    assert resolved["api_keys"][0]["key"] == "**********"
    assert resolved["storage"] == "postgresql://gw:****@db:5432/bspgate"
    for secret in (APP_SECRET, "verify-token-1", "api-key-value-1", "db-password-1"):
        assert secret not in out
    assert SUBSCRIBER_SECRET.removeprefix("whsec_") not in out


@pytest.mark.parametrize(
    "words",
    [
        ["--config", "{path}", "config", "check"],
        ["config", "--config", "{path}", "check"],  # between the command and its action
        ["config", "check", "--config={path}"],
    ],
)
def test_config_may_stand_before_between_or_after_the_command(
    capsys: pytest.CaptureFixture[str], config_file: Path, words: list[str]
) -> None:
    code, out, _ = run(capsys, *[w.replace("{path}", str(config_file)) for w in words])
    assert code == 0
    assert orjson.loads(out)["storage"] == "postgresql://gw:****@db:5432/bspgate"


def test_config_check_reads_bspgate_config(
    capsys: pytest.CaptureFixture[str], config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BSPGATE_CONFIG", str(config_file))
    code, out, _ = run(capsys, "config", "check")
    assert code == 0
    assert orjson.loads(out)["channels"][0]["id"] == "cloud-us"


def test_config_check_of_the_shipped_config_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "check")
    assert code == 0
    assert "dev-key" not in out
    assert "dev-app-secret" not in out


def test_config_check_error_names_the_key_and_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "mappings": str(MAPPINGS),
                "channels": [{"id": "tw", "provider": "twillio", "portfolio": "acme"}],
            }
        )
    )
    code, out, err = run(capsys, "config", "check", "--config", str(path))
    assert code == 2
    assert out == ""
    assert "channels[0].provider: 'twillio' is not a known mapping" in err


def test_config_check_missing_secret_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "mappings": str(MAPPINGS),
                "channels": [{"id": "c", "provider": "cloudapi", "portfolio": "acme"}],
            }
        )
    )
    code, _, err = run(capsys, "config", "check", "--config", str(path))
    assert code == 2
    assert "channels[0].secrets.app_secret" in err


# -- help --------------------------------------------------------------------------------------
def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


def _is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


COMMANDS = [pytest.param(c, id=" ".join(c) or "bspgate") for c, _ in _commands(build_parser())]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: bspgate")


def test_every_command_takes_config() -> None:
    leaves = [(c, p) for c, p in _commands(build_parser()) if c and _is_leaf(p)]
    assert len(leaves) >= 7
    for command, parser in leaves:
        assert any("--config" in a.option_strings for a in parser._actions), command


def test_help_as_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bspgate", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "normalize" in result.stdout
    assert "serve" in result.stdout


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["frobnicate"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_contacts_merge_joins_two_contacts_and_tells_subscribers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule 11 from the command line: the survivor answers, one signed merged event is stored."""
    import asyncio
    import sqlite3

    from tests.payloads import text_webhook
    from tests.test_delivery import CRM, harness, subscriber

    async def two_people() -> str:
        async with harness(tmp_path, subscriber("crm", CRM)) as h:
            await h.ingest(text_webhook("wamid.m1", bsuid="US.7001", phone="15550007001"))
            await h.ingest(
                text_webhook("wamid.m2", bsuid="US.7002", phone="15550007002", timestamp=1767225601)
            )
            return h.gateway.settings.storage

    storage = asyncio.run(two_people())
    capsys.readouterr()  # the in-process gateway's own log lines
    database = storage.removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        first, second = (r[0] for r in db.execute("SELECT id FROM contacts ORDER BY created_at"))
    config = tmp_path / "merge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": storage,
                "mappings": str(MAPPINGS),
                "server": {"public_url": "https://gw.example.com"},
                "channels": [{"id": "cloud-us", "provider": "cloudapi", "portfolio": "acme"}],
                "subscribers": [{"id": "crm", "url": CRM, "secret": SUBSCRIBER_SECRET}],
            }
        )
    )
    code, out, err = run(
        capsys, "contacts", "merge", first, "--from", second, "--by", "ana", "--config", str(config)
    )
    assert code == 0, err
    view = orjson.loads(out)
    assert view["id"] == first
    with sqlite3.connect(database) as db:
        bodies = [orjson.loads(r[0]) for r in db.execute("SELECT body FROM events ORDER BY seq")]
        queued = db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE event_id = ?", (bodies[-1]["id"],)
        ).fetchone()[0]
    merged = bodies[-1]
    assert merged["type"] == "whatsapp.contact.merged"
    assert merged["data"]["merged"] == {"id": second, "by": "operator"}
    assert merged["dataschema"] == "https://gw.example.com/v1/schemas/whatsapp.contact.merged.json"
    assert queued == 1
