"""Case files are checked when read, and `mappings test` checks what a send case's answer gives.

A malformed case (a `received_at` that is no RFC 3339 time, `signed:` given as a file name, a
`now:` that is no number, a channel id that is a number) is a `mappings check` error naming the
file and the field (`case.schema.json`), and one `FAIL` line of `mappings test` naming them, not
a Python exception. `--update` never writes a mapping engine crash into a case as its expected
quarantine. A send case's `expect.message_id` is compared with what the send form's
`answer.message_id` reads from the case's `answer`: a wrong expression there would otherwise
pass every case and end every accepted send as `send_outcome_unknown`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bspgate import cli
from tests.test_outbound_url_encoding import wati_folder

INPUT = (
    "input: {eventType: message, whatsappMessageId: w, type: text, text: t, "
    "timestamp: '1767608130', waId: '15551234567'}\n"
)
# case name -> (file text, the field the error names, what it says)
BROKEN = {
    "bad_received_at": (
        "received_at: yesterday\n" + INPUT + "expect: {events: []}\n",
        "received_at",
        "does not match",
    ),
    "signed_as_text": (
        "signed: fixtures/signed_request.txt\nexpect: {verified: true}\n",
        "signed",
        "is not of type 'object'",
    ),
    "signed_now_text": (
        "signed: {secrets: {webhook_secret: a}, headers: {x-sig: ab}, body: '{}', now: yesterday}"
        "\nexpect: {verified: true}\n",
        "signed.now",
        "is not of type 'number'",
    ),
    "channel_id_number": (
        "channel: {id: 5}\n" + INPUT + "expect: {events: []}\n",
        "channel.id",
        "is not of type 'string'",
    ),
}
SEND_CASE = """\
description: a text whose answer carries the id at `id`
send: {to: {phone: '+15551234567'}, type: text, text: {body: Hi}}
answer: {status: 200, body: {id: wamid.ANSWERED}}
expect:
  request:
    method: POST
    path: /prefix/api/v1/acme/sendSessionMessage/15551234567?messageText=Hi
    body: {}
  message_id: wamid.ANSWERED
"""
CHANNEL = """\
service_window: "off"
secrets: {api_key: test-api-key}
settings: {base_url: "${stand_in}/prefix", tenant: acme}
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["mappings", *args])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_names_the_file_and_field_of_a_broken_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    root = wati_folder(tmp_path / "m")
    text, field, message = BROKEN[case]
    path = root / "wati" / "cases" / f"{case}.yaml"
    path.write_text(text)
    code, out = run(capsys, "check", "--mappings", str(root))
    assert code == 1
    assert f"FAIL {path.resolve()}:" in out
    assert f": {field}: " in out, out
    assert message in out, out


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_test_reports_a_broken_case_as_one_fail_line_without_an_exception(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    root = wati_folder(tmp_path / "m")
    (root / "wati" / "cases" / f"{case}.yaml").write_text(BROKEN[case][0])
    code, out = run(capsys, "test", "wati", "--mappings", str(root))
    assert code == 1
    line = next(x for x in out.splitlines() if f"wati/{case}" in x)
    assert line.startswith(f"FAIL wati/{case}: "), line
    assert f"{BROKEN[case][1]}: " in line
    for exception in ("Error:", "KeyError", "mapping engine error"):
        assert exception not in line, line


def test_update_never_writes_an_engine_crash_as_the_expected_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = wati_folder(tmp_path / "m")
    path = root / "wati" / "cases" / "channel_id_number.yaml"
    path.write_text(BROKEN["channel_id_number"][0])
    code, _out = run(capsys, "test", "wati", "--mappings", str(root), "--update")
    assert code == 1
    assert path.read_text() == BROKEN["channel_id_number"][0]


def test_a_send_case_whose_answer_gives_another_message_id_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The send form reads `message.whatsappMessageId || message.id`: null for this answer."""
    root = wati_folder(tmp_path / "m")
    (root / "wati" / "cases" / "_channel.yaml").write_text(CHANNEL)
    (root / "wati" / "cases" / "send_text.yaml").write_text(SEND_CASE)
    code, out = run(capsys, "test", "wati", "--mappings", str(root))
    assert code == 1
    assert "FAIL wati/send_text: message_id: expected 'wamid.ANSWERED'" in out, out
    fixed = SEND_CASE.replace("body: {id: wamid.ANSWERED}", "body: {message: {id: wamid.ANSWERED}}")
    (root / "wati" / "cases" / "send_text.yaml").write_text(fixed)
    code, out = run(capsys, "test", "wati", "--mappings", str(root))
    assert "ok   wati/send_text" in out, out
