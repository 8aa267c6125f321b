"""Provider folders outside the shipped mappings: `extends` across folders, and real file paths.

A user mappings folder (`--mappings`, the config's `mappings:`) holds providers of its own and
overrides of shipped ones. `outbound.yaml`'s `extends` finds its parent in every folder, as
`mapping.yaml`'s does, so a 360dialog-style BSP in a user folder can start its send form from
cloudapi's: `mappings check`, its send cases and the gateway's start all load it. `extends:`
naming the provider itself means the next folder down (the shipped provider it overrides). Every
error names the file where it really is, relative to the working folder when under it (shipped
files read `mappings/<provider>/…` from a checkout).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bspgate import cli
from bspgate.config import settings_from_dict
from bspgate.errors import MappingLoadError
from bspgate.mapping.loader import load_mapping
from bspgate.outbound.service import SendService
from bspgate.stage import load_channel_mappings
from tests.conftest import MAPPINGS, ROOT

WABAPLUS_MAPPING = """\
name: wabaplus
extends: cloudapi
inbound:
  verify: [{scheme: header_secret, header: x-wabaplus-key, secret: webhook_secret}]
  handshakes: []
"""
WABAPLUS_OUTBOUND = """\
provider: wabaplus
extends: cloudapi
settings: {base_url: https://api.wabaplus.example}
secrets: [api_key]
request:
  url: ${settings.base_url}/messages
auth: {scheme: header, header: X-API-KEY, secret: api_key}
"""
WABAPLUS_CHANNEL = """\
service_window: "off"
secrets: {api_key: k1, webhook_secret: s1}
settings: {base_url: "${stand_in}"}
"""
WABAPLUS_SEND = """\
description: a text to a phone, Meta's body at the BSP's endpoint
send: {to: {phone: '+15551234567'}, type: text, text: {body: Hi}}
answer: {status: 200, body: {messages: [{id: wamid.1}]}}
expect:
  request:
    method: POST
    path: /messages
    headers: {x-api-key: k1}
    body: {messaging_product: whatsapp, recipient_type: individual, to: '15551234567', type: text,
           text: {body: Hi}}
  message_id: wamid.1
"""
BROKEN = "name: {name}\ninbound:\n  rules:\n    - name: m\n      typo: 1\n"


def wabaplus(root: Path) -> Path:
    """A BSP forwarding Meta's payloads, in the user folder `root`; returns `root`."""
    folder = root / "wabaplus"
    (folder / "cases").mkdir(parents=True)
    (folder / "mapping.yaml").write_text(WABAPLUS_MAPPING)
    (folder / "outbound.yaml").write_text(WABAPLUS_OUTBOUND)
    (folder / "cases" / "_channel.yaml").write_text(WABAPLUS_CHANNEL)
    (folder / "cases" / "send_text.yaml").write_text(WABAPLUS_SEND)
    return root


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["mappings", *args])
    return code, capsys.readouterr().out


def test_check_loads_a_user_folder_send_form_extending_a_shipped_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mappings check` finds the parent of a user folder's `outbound.yaml` in the shipped
    folder, as it does for `mapping.yaml`."""
    root = wabaplus(tmp_path / "my-mappings")
    code, out = run(capsys, "check", "--mappings", str(root))
    assert code == 0, out
    assert f"ok   {(root / 'wabaplus' / 'outbound.yaml').resolve()}" in out


def test_send_case_of_a_user_folder_provider_extending_cloudapi_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The send case renders cloudapi's body at the child's URL with the child's credential."""
    root = wabaplus(tmp_path / "my-mappings")
    code, out = run(capsys, "test", "wabaplus", "--mappings", str(root))
    assert code == 0, out
    assert "ok   wabaplus/send_text" in out


def test_gateway_start_loads_that_send_form(tmp_path: Path) -> None:
    """`serve` and `config check` load every configured provider's send form at start: one
    extending a shipped provider from the config's `mappings:` folder loads."""
    root = wabaplus(tmp_path / "my-mappings")
    settings = settings_from_dict(
        {
            "storage": "sqlite:///unused.db",
            "mappings": str(root),
            "api_keys": [{"name": "crm", "key": "review-key-0123456789abcdef"}],
            "channels": [
                {
                    "id": "wp",
                    "provider": "wabaplus",
                    "portfolio": "acme",
                    "secrets": {"webhook_secret": "s1", "api_key": "k1"},
                }
            ],
        },
        env={},
        base_dir=tmp_path,
    )
    assert "wabaplus" in load_channel_mappings(settings)
    service = SendService(settings, store=None, client=None, clock=lambda: datetime.now(UTC))
    spec = service.spec("wabaplus")
    assert spec.auth["header"] == "X-API-KEY"
    assert "template" in spec.types  # inherited from cloudapi


def test_a_user_folder_extends_the_shipped_provider_of_its_own_name(tmp_path: Path) -> None:
    """`extends: connectly` in a user folder's `connectly/` starts from the shipped Connectly
    mapping (the next folder down), so one value map can be changed without copying the file."""
    folder = tmp_path / "ops" / "connectly"
    folder.mkdir(parents=True)
    (folder / "mapping.yaml").write_text(
        "name: connectly\nextends: connectly\ninbound:\n  maps:\n    status:\n"
        "      custom_state: delivered\n"
    )
    shipped = load_mapping(MAPPINGS, "connectly")
    tweaked = load_mapping([MAPPINGS, tmp_path / "ops"], "connectly")
    assert [r.name for r in tweaked.rules] == [r.name for r in shipped.rules]
    assert tweaked.source["inbound"]["maps"]["status"]["custom_state"] == "delivered"
    assert tweaked.verify == shipped.verify


def test_extending_its_own_name_with_no_folder_below_is_refused(tmp_path: Path) -> None:
    (tmp_path / "alpha").mkdir()
    (tmp_path / "alpha" / "mapping.yaml").write_text("name: alpha\nextends: alpha\n")
    with pytest.raises(MappingLoadError, match="circular extends: alpha -> alpha"):
        load_mapping([MAPPINGS, tmp_path], "alpha")


@pytest.mark.parametrize(("folder", "provider"), [("providers", "acme"), ("ops", "twilio")])
def test_an_error_names_the_file_where_it_is(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    folder: str,
    provider: str,
) -> None:
    """A broken file in a user folder is named by its own path (relative to the working folder),
    also when it overrides a shipped provider of the same name."""
    (tmp_path / folder / provider).mkdir(parents=True)
    (tmp_path / folder / provider / "mapping.yaml").write_text(BROKEN.format(name=provider))
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "check", "--mappings", folder)
    assert code == 1
    assert f"FAIL {folder}/{provider}/mapping.yaml:4: inbound.rules[0]" in out


def test_shipped_files_keep_their_checkout_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the checkout, the shipped files still read `mappings/<provider>/…`."""
    monkeypatch.chdir(ROOT)
    assert load_mapping(MAPPINGS, "dialog360").file == "mappings/dialog360/mapping.yaml"
