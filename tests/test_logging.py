"""Logs: one JSON line per webhook, and no phone number or message text above DEBUG."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from bspgate.app import create_app
from bspgate.logging import configure_logging, redact_pii
from tests.asgi_client import TestClient
from tests.conftest import fixture_bytes, make_settings, meta_signature

PHONE = "15551234567"
TEXT = "Does it come in another color?"
BSUID = "US.13491208655302741918"
PARENT = "US.ENT.11815799212886844830"


@pytest.fixture(autouse=True)
def default_structlog() -> Iterator[None]:
    """Tests that configure structlog leave the defaults behind them."""
    yield
    structlog.reset_defaults()


def post_text_message(tmp_path: Path) -> None:
    body = fixture_bytes("cloudapi", "inbound_text")
    assert PHONE.encode() in body
    assert TEXT.encode() in body
    with TestClient(create_app(make_settings(tmp_path), dispatch=False)) as client:
        response = client.post(
            "/webhooks/cloud-us",
            content=body,
            headers={
                "content-type": "application/json",
                "x-hub-signature-256": meta_signature(body),
            },
        )
        assert response.status_code == 200


def redact(method: str = "info", **event: Any) -> dict[str, Any]:
    return dict(redact_pii(None, method, dict(event)))


# -- the ingest path ---------------------------------------------------------------------------
def test_ingest_logs_no_phone_and_no_message_text(tmp_path: Path) -> None:
    with capture_logs(processors=[structlog.processors.add_log_level, redact_pii]) as logs:
        post_text_message(tmp_path)
    assert logs
    text = orjson.dumps(logs, default=str).decode()
    assert PHONE not in text
    assert TEXT not in text
    assert "+" + PHONE not in text


def test_ingest_logs_one_line_per_webhook(tmp_path: Path) -> None:
    with capture_logs(processors=[structlog.processors.add_log_level, redact_pii]) as logs:
        post_text_message(tmp_path)
    (line,) = [entry for entry in logs if entry["event"] == "webhook.received"]
    assert line["log_level"] == "info"
    assert line["channel"] == "cloud-us"
    assert line["provider"] == "cloudapi"
    assert line["traceparent"].startswith("00-")  # a new trace context: none was sent
    assert line["events"] == 1
    assert line["outcome"] == "processed"
    assert line["latency_ms"] >= 0


def test_rendered_json_logs_hold_no_pii(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    post_text_message(tmp_path)
    err = capsys.readouterr().err
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line["event"] == "webhook.received" for line in lines)
    assert PHONE not in err
    assert TEXT not in err


def test_exception_text_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    log = structlog.get_logger("test")
    try:
        raise ValueError(f"cannot deliver to +{PHONE}")
    except ValueError:
        log.error("delivery.failed", exc_info=True)
    err = capsys.readouterr().err
    (line,) = [orjson.loads(line) for line in err.splitlines()]
    assert "ValueError" in line["exception"]
    assert PHONE not in err


def test_debug_logs_are_not_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug")
    structlog.get_logger("test").debug("webhook.payload", phone=f"+{PHONE}")
    assert f"+{PHONE}" in capsys.readouterr().err


def test_info_level_drops_debug_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    structlog.get_logger("test").debug("webhook.payload", phone=f"+{PHONE}")
    assert capsys.readouterr().err == ""


# -- redact_pii --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    ["phone", "from", "to", "wa_id", "text", "body", "name", "username", "payload", "message"],
)
def test_pii_keys_are_redacted(key: str) -> None:
    assert redact(**{key: "anything at all"})[key] == "[redacted]"


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (f"+{PHONE}", "*********67"),
        (PHONE, "*********67"),
        (f"sending to {PHONE} now", "sending to *********67 now"),
        (f"whatsapp:+{PHONE}", "whatsapp:+*********67"),
        ("+4915123456789", "***********89"),
    ],
)
def test_free_standing_phone_numbers_are_masked(value: str, masked: str) -> None:
    assert redact(reason=value)["reason"] == masked


@pytest.mark.parametrize(
    "value",
    [
        BSUID,
        PARENT,
        f"unknown contact {BSUID}",
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.123456+00:00",
        "wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        "evt_23H3316WXAJQ96T3G7Y2FWQGPW",
        "raw_01M81D50CNCFQC4B9HYPPJ88GF",
        "HTTP 503",
        "1234567",  # 7 digits: too short for a phone number
    ],
)
def test_bsuids_ids_and_times_are_kept(value: str) -> None:
    assert redact(reason=value)["reason"] == value


def test_numbers_are_kept() -> None:
    assert redact(latency_ms=12.5, events=3, status=200) == {
        "latency_ms": 12.5,
        "events": 3,
        "status": 200,
    }


def test_nested_values_are_redacted() -> None:
    event = redact(
        data={"contact": {"phone": f"+{PHONE}", "bsuid": BSUID}, "notes": [f"call {PHONE}"]}
    )
    assert event["data"] == {
        "contact": {"phone": "[redacted]", "bsuid": BSUID},
        "notes": ["call *********67"],
    }


def test_event_timestamp_and_level_are_never_rewritten() -> None:
    event = redact(event=f"call {PHONE}", timestamp="1767225600", level="info", logger="x")
    assert event == {
        "event": f"call {PHONE}",
        "timestamp": "1767225600",
        "level": "info",
        "logger": "x",
    }


@pytest.mark.parametrize("method", ["info", "warning", "error", "critical", "exception"])
def test_every_level_above_debug_is_redacted(method: str) -> None:
    assert redact(method, phone=f"+{PHONE}")["phone"] == "[redacted]"


def test_debug_is_untouched() -> None:
    event = {"phone": f"+{PHONE}", "text": TEXT, "reason": f"call {PHONE}"}
    assert redact("debug", **event) == event


def test_values_bspgate_mints_are_left_as_they_are() -> None:
    line = redact(
        request_id="req_01M96MFFNKP5W8P51ZX7EV9BD9",
        traceparent="00-9ef3273ec14ad1e3cb271760932f7df1-69c3f8ebf8661d94-01",
        raw_id="raw_01M96MFFNWD6WKCC84CRN96J89",
        reason=f"no contact for {PHONE}",
    )
    assert line["request_id"] == "req_01M96MFFNKP5W8P51ZX7EV9BD9"
    assert line["traceparent"] == "00-9ef3273ec14ad1e3cb271760932f7df1-69c3f8ebf8661d94-01"
    assert line["raw_id"] == "raw_01M96MFFNWD6WKCC84CRN96J89"
    assert PHONE not in line["reason"]  # free text is still scanned
