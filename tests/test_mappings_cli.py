"""`bspgate mappings check|test|new` on copies of the shipped folders with one mistake each.

`check` must catch what only tests used to: an unknown verify or auth scheme, a canonical path
that does not exist (`message.txt`), `default: null`, and YAML errors in case files, each named
by file and line. `new --from` writes a folder that loads and runs; `test --update` writes the
actual output into a failing case, after which it passes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bspgate import cli
from tests.conftest import MAPPINGS


def copy_of(tmp_path: Path, provider: str) -> Path:
    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS / provider, root / provider)
    return root


def check(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["mappings", "check", "--mappings", str(root)])
    return code, capsys.readouterr().out


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_shipped_mappings_pass_check(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(MAPPINGS, capsys)
    assert code == 0, out


# (provider, file, text, replaced by, what the report must say): one mistake each, named by
# file and line where the line is stable
MISTAKES = {
    "unknown verify scheme": (
        "connectly", "mapping.yaml", "- scheme: hmac", "- scheme: hmac_sha256",
        ["mappings/connectly/mapping.yaml:16: inbound.verify[0].scheme"],
    ),
    "unknown message part": (
        "connectly", "mapping.yaml", "      encoding: base64\n",
        "      encoding: base64\n      message: [body, nonce]\n",
        ["inbound.verify[0].message[1]: unknown message part 'nonce'"],
    ),
    "unknown auth scheme": (
        "connectly", "outbound.yaml", "scheme: header", "scheme: api_key",
        ["mappings/connectly/outbound.yaml:37: auth.scheme: unknown auth scheme 'api_key'"],
    ),
    "canonical path that does not exist": (
        "connectly", "mapping.yaml", "        message.text:", "        message.txt:",
        ["fields.message.txt: 'message.txt' is not a field of a whatsapp.message.received",
         "message.text"],  # the fields that do exist are listed
    ),
    "default null": (
        "connectly", "mapping.yaml", "          default: unsupported", "          default: null",
        ["default: `default: null` is no default"],
    ),
    "auth secret not declared": (
        "connectly", "outbound.yaml", "  secret: api_key", "  secret: api_kee",
        ["mappings/connectly/outbound.yaml:39: auth.secret: 'api_kee' is not a declared secret "
         "(secrets: api_key)"],
    ),
    "basic auth names no declared secret": (
        "twilio", "outbound.yaml", "account_sid]", "acount_sid]",
        ["auth.username: names no declared secret (secrets: account_sid, auth_token)"],
    ),
    "misspelt verify option": (
        "connectly", "mapping.yaml", "      encoding: base64\n", "      encodng: base64\n",
        ["mappings/connectly/mapping.yaml:19: inbound.verify[0].encodng: unknown hmac option",
         "did you mean 'encoding'?"],
    ),
    "misspelt option inside a verify option": (
        "sinch", "mapping.yaml", "tolerance: 300", "tolerence: 300",
        ["mappings/sinch/mapping.yaml:35: inbound.verify[0].timestamp.tolerence: unknown hmac "
         "timestamp option 'tolerence' (known: header, param, unit, tolerance)"],
    ),
    "a key that is not text": (  # a file:line error, not an AttributeError
        "connectly", "mapping.yaml", "        message.text:",
        "        5: m.x\n        message.text:",
        ["fields.5: the key 5 is not text (int): quote it"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
def test_check_names_each_mistake(
    mistake: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider, name, old, new, expected = MISTAKES[mistake]
    root = copy_of(tmp_path, provider)
    edit(root / provider / name, old, new)
    code, out = check(root, capsys)
    assert code == 1
    for text in expected:
        assert text in out
    assert "Error" not in out  # no exception's name: a report, not a crash


def test_yaml_error_in_a_case_file_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of(tmp_path, "connectly")
    (root / "connectly" / "cases" / "broken.yaml").write_text("input:\n  a: 1\n b: [\nexpect: {}\n")
    code, out = check(root, capsys)
    assert code == 1
    assert "mappings/connectly/cases/broken.yaml:3: invalid YAML" in out
    assert "<unicode string>" not in out


def test_new_writes_a_folder_that_loads_and_update_fills_its_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "mappings"
    root.mkdir()
    payload = {
        "event": "message",
        "message": {
            "messageId": "m-1",
            "from": "15551234567",
            "text": "hello",
            "userId": "US.1234",
        },
    }
    sample = tmp_path / "payload.json"
    sample.write_text(json.dumps(payload))
    assert (
        cli.main(["mappings", "new", "acme", "--from", str(sample), "--mappings", str(root)]) == 0
    )
    for name in ("mapping.yaml", "outbound.yaml", "cases/_channel.yaml", "cases/sample.yaml"):
        assert (root / "acme" / name).is_file()
    assert "ev.message.messageId" in (root / "acme" / "mapping.yaml").read_text()
    # a contributor starts from the identity rules: a phone field that is neither quarantines
    assert "apply: phone" in (root / "acme" / "mapping.yaml").read_text()
    capsys.readouterr()
    code, out = check(root, capsys)
    assert code == 0, out
    # the skeleton's cases expect nothing yet: they fail until --update writes what is produced
    assert cli.main(["mappings", "test", "acme", "--mappings", str(root)]) == 1
    capsys.readouterr()
    assert cli.main(["mappings", "test", "acme", "--update", "--mappings", str(root)]) == 0
    out = capsys.readouterr().out
    assert "upd  acme/sample" in out
    assert "upd  acme/send_text" in out
    case = (root / "acme" / "cases" / "sample.yaml").read_text()
    assert "m-1" in case
    assert "+15551234567" in case
    assert "path: /TODO/messages" in (root / "acme" / "cases" / "send_text.yaml").read_text()
    assert cli.main(["mappings", "test", "acme", "--mappings", str(root)]) == 0


def test_new_refuses_an_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = tmp_path / "payload.json"
    sample.write_text("{}")
    args = ["mappings", "new", "connectly", "--from", str(sample), "--mappings", str(MAPPINGS)]
    assert cli.main(args) == 2
    assert "exists" in capsys.readouterr().err


def test_malformed_test_channel_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of(tmp_path, "connectly")
    channel = root / "connectly" / "cases" / "_channel.yaml"
    edit(
        channel,
        "secrets:\n  api_key: connectly-key-1\n  webhook_secret: cn-secret\n",
        "secrets: [api_key, webhook_secret]\n",
    )
    code, out = check(root, capsys)
    assert code == 1
    line = channel.read_text().splitlines().index("secrets: [api_key, webhook_secret]") + 1
    assert f"FAIL {channel.resolve()}:{line}: secrets: " in out  # the copy, where it is
    assert "is not of type 'object'" in out


def test_a_folder_without_cases_fails_and_one_without_a_signed_case_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of(tmp_path, "connectly")
    (root / "connectly" / "cases" / "signed_request.yaml").unlink()
    assert cli.main(["mappings", "test", "connectly", "--mappings", str(root)]) == 0
    assert "warn connectly: no signed case" in capsys.readouterr().out
    for case in (root / "connectly" / "cases").glob("*.yaml"):
        if not case.name.startswith("_"):
            case.unlink()
    assert cli.main(["mappings", "test", "connectly", "--mappings", str(root)]) == 1
    out = capsys.readouterr().out  # it read "0 passed, 0 failed" and exited 0
    assert f"FAIL connectly: no cases in {(root / 'connectly' / 'cases').resolve()}/" in out
