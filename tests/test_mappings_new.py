"""`bspgate mappings new` and `mappings test` as a contributor outside the checkout meets them.

An installed bspgate ships its mappings inside site-packages: `new` must write where the user is
(`./mappings`, `--mappings` or the config's `mappings:` folder) and say the real path. The
skeleton reads the sample's time with the function its value needs and uses it as the event
time; `test --update` warns when it writes a quarantine as the expected result. A broken case
(or test channel) is one FAIL line: the other cases and the summary still run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bspgate import cli
from bspgate.mapping import loader
from tests.conftest import FIXTURES, MAPPINGS

PAYLOAD = {
    "event": "message.inbound",
    "data": {"messageId": "ACM-1", "from": "+15551234567", "text": "Hi", "timestamp": 1767225600},
}


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with no config, and shipped mappings in a folder of their own (as in
    site-packages)."""
    shipped = tmp_path / "site-packages" / "bspgate" / "mappings"
    shutil.copytree(MAPPINGS / "connectly", shipped / "connectly")
    monkeypatch.setattr(loader, "shipped_mappings_dir", lambda: shipped)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("BSPGATE_CONFIG", raising=False)
    (work / "payload.json").write_text(json.dumps(PAYLOAD))
    return work


def test_new_without_a_config_writes_into_the_working_folder(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["mappings", "new", "acme", "--from", "payload.json"]) == 0
    out = capsys.readouterr().out
    assert (elsewhere / "mappings" / "acme" / "mapping.yaml").is_file()
    assert not (elsewhere.parent / "site-packages" / "bspgate" / "mappings" / "acme").exists()
    assert "wrote mappings/acme/mapping.yaml" in out
    # the shipped folders are all `test` reads without --mappings: the hint gives it
    assert "`bspgate mappings test acme --mappings mappings --update`" in out


def test_new_writes_into_the_configs_own_mappings_folder(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (elsewhere / "ours").mkdir()
    (elsewhere / "config.yaml").write_text(
        "storage: sqlite:///gw.db\nmappings: [ours]\nchannels: []\n"
    )
    assert cli.main(["mappings", "new", "acme", "--from", "payload.json"]) == 0
    out = capsys.readouterr().out
    assert (elsewhere / "ours" / "acme" / "mapping.yaml").is_file()
    assert "wrote ours/acme/mapping.yaml" in out
    assert "`bspgate mappings test acme --update`" in out  # the config names the folder


def test_test_of_a_missing_provider_says_where_it_looked(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["mappings", "test", "acme"]) == 1
    out = capsys.readouterr().out
    shipped = elsewhere.parent / "site-packages" / "bspgate" / "mappings"
    assert f"FAIL no acme/mapping.yaml in {shipped}: give the folder" in out
    assert "--mappings DIR" in out
    assert "0 passed, 1 failed" in out


@pytest.mark.parametrize(
    ("value", "function"),
    [
        (1767225600, "epoch_to_rfc3339"),
        ("1767225600", "epoch_to_rfc3339"),  # Meta, 360dialog, Gupshup v3, Connectly
        ("1767225600123", "epoch_to_rfc3339"),
        ("2026-01-01T00:00:00Z", "to_rfc3339"),
        ("2026-01-01T00:00:00.000+0000", "to_rfc3339"),
    ],
)
def test_skeleton_reads_a_sample_time_with_the_function_it_needs(
    value: object, function: str
) -> None:
    from bspgate.mapping.skeleton import time_function  # here: a missing name fails this test only

    assert time_function(value) == function


def test_skeleton_of_a_cloud_api_text_maps_it_with_the_providers_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "m"
    sample = str(FIXTURES / "cloudapi" / "inbound_text.json")
    assert cli.main(["mappings", "new", "skel", "--from", sample, "--mappings", str(root)]) == 0
    assert cli.main(["mappings", "test", "skel", "--update", "--mappings", str(root)]) == 0
    out = capsys.readouterr().out
    assert "wrote a quarantine" not in out
    mapping = (root / "skel" / "mapping.yaml").read_text()
    assert "apply: epoch_to_rfc3339" in mapping
    assert "time: received_at" not in mapping
    case = (root / "skel" / "cases" / "sample.yaml").read_text()
    assert "quarantine" not in case
    assert "time: '2026-01-01T00:00:00Z'" in case  # 1767225600, not the pinned received_at


def test_update_warns_when_it_writes_a_quarantine_as_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "m"
    (tmp_path / "payload.json").write_text(json.dumps(PAYLOAD))
    sample = str(tmp_path / "payload.json")
    assert cli.main(["mappings", "new", "acme", "--from", sample, "--mappings", str(root)]) == 0
    # a sample the mapping cannot read (its time is no unix time): the case is quarantined
    late = {**PAYLOAD, "data": {**PAYLOAD["data"], "timestamp": "soon"}}
    (root / "acme" / "cases" / "sample.yaml").write_text(
        json.dumps({"input": late, "expect": {"events": []}})  # JSON is YAML
    )
    capsys.readouterr()
    cli.main(["mappings", "test", "acme", "--update", "--mappings", str(root)])
    out = capsys.readouterr().out
    assert "warn acme/sample: --update wrote a quarantine as the expected result" in out


def test_a_malformed_test_channel_fails_its_send_cases_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS / "connectly", root / "connectly")
    (root / "connectly" / "cases" / "_channel.yaml").write_text("secrets: [api_key]\n")
    assert cli.main(["mappings", "test", "connectly", "--mappings", str(root)]) == 1
    out = capsys.readouterr().out
    channel = root.resolve() / "connectly" / "cases" / "_channel.yaml"  # named where it is
    assert f"FAIL connectly/send_text_to_phone: {channel}:1:" in out
    assert "ok   connectly/inbound_text" in out  # the other cases still ran
    assert "passed, " in out.splitlines()[-1]


def test_a_case_that_crashes_is_one_failure_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bspgate.mapping import send_cases

    run_file = send_cases.run_file

    def crash_once(root: Path, spec: object, path: Path) -> object:
        if path.stem == "inbound_text":
            raise RuntimeError("boom")
        return run_file(root, spec, path)

    monkeypatch.setattr(send_cases, "run_file", crash_once)
    assert cli.main(["mappings", "test", "connectly", "--mappings", str(MAPPINGS)]) == 1
    out = capsys.readouterr().out
    assert "FAIL connectly/inbound_text: RuntimeError: boom" in out
    assert "ok   connectly/location" in out  # sorted after inbound_text
    assert out.splitlines()[-1].endswith("passed, 1 failed")
