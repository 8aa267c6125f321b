"""Safe by default: credentials masked wherever a URL or DSN is shown, reasons without values,
bounded log lines, a bounded label set for format drift."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import structlog

from bspgate.app import create_app
from bspgate.describe import pointer
from bspgate.logging import MAX_LINE, configure_logging
from bspgate.masking import mask_url
from bspgate.metrics import MAX_UNMAPPED_SERIES, Metrics
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, SUBSCRIBER_SECRET, make_settings

LEAKY = [
    ("https://crm:hunter2@crm.example.com/h", "hunter2"),
    ("https://crm.example.com/h?token=tok123&x=1", "tok123"),
    ("https://crm.example.com/h?code=abc987", "abc987"),
    ("https://sk_live_999@crm.example.com/h", "sk_live_999"),
    ("postgresql://app:pw42@db:5432/gw?sslmode=require&sslpassword=keypw", "keypw"),
    ("postgresql://app:pw42@db:5432/gw", "pw42"),
    ("host=db user=app password=pw42 sslpassword=keypw", "pw42"),
    ("https://x.example.com/h?api_key=K1&Signature=S2", "K1"),
]


@pytest.mark.parametrize(("url", "secret"), LEAKY)
def test_mask_url_hides_every_credential(url: str, secret: str) -> None:
    masked = mask_url(url)
    assert secret not in masked
    assert "****" in masked


def test_mask_url_keeps_what_is_not_secret() -> None:
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert mask_url("postgresql://app@db/gw?sslmode=require") == (
        "postgresql://app@db/gw?sslmode=require"
    )
    assert mask_url("https://crm.example.com/h?x=1") == "https://crm.example.com/h?x=1"


def test_subscriber_urls_are_masked_in_the_api_and_config_check(tmp_path: Path) -> None:
    url = "https://sk_tok@crm.example.com/h?token=tok123&code=c0de"
    subscriber = {"id": "crm", "url": url, "secret": SUBSCRIBER_SECRET}
    settings = make_settings(
        tmp_path,
        subscribers=[subscriber],
        storage="postgresql://u:pw42@db/gw?sslpassword=keypw",
    )
    shown = orjson.dumps(settings.to_public_dict()).decode()
    for secret in ("sk_tok", "tok123", "c0de", "pw42", "keypw"):
        assert secret not in shown
    settings = make_settings(tmp_path, subscribers=[subscriber])
    with TestClient(create_app(settings, dispatch=False)) as client:
        answer = client.get("/v1/subscribers", headers={"authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 200
    assert answer.json()["data"][0]["url"] == (
        "https://****@crm.example.com/h?token=****&code=****"
    )


def test_unmapped_field_labels_are_capped() -> None:
    metrics = Metrics()
    for index in range(MAX_UNMAPPED_SERIES + 500):
        metrics.count_unmapped("cloudapi", f"field_{index}")
    text = metrics.render().decode()
    series = [
        line for line in text.splitlines() if line.startswith("bspgate_unmapped_fields_total{")
    ]
    assert len(series) == MAX_UNMAPPED_SERIES + 1
    assert 'bspgate_unmapped_fields_total{field="other",provider="cloudapi"} 500.0' in text


def test_log_lines_are_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    try:
        structlog.get_logger("t").info("big", items=[""] * 50_000, text_like="x" * 100_000)
    finally:
        structlog.reset_defaults()  # the configured logger writes to this test's capture
    line = capsys.readouterr().err.strip()
    assert len(line) <= MAX_LINE
    assert orjson.loads(line)["event"] == "big"


def test_quarantine_reasons_carry_no_values(tmp_path: Path) -> None:
    from bspgate.mapping.engine import apply_mapping
    from bspgate.mapping.loader import load_mapping

    settings = make_settings(tmp_path)
    spec = load_mapping(settings.mapping_dirs, "cloudapi")
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "phone_number_id": "1",
                                "display_phone_number": "15550001111",
                            },
                            "contacts": [
                                {"user_id": "SECRET TEXT 15551234567", "profile": {"name": "n"}}
                            ],
                            "messages": [
                                {
                                    "from_user_id": "SECRET TEXT 15551234567",
                                    "id": "wamid.X",
                                    "timestamp": "1767225600",
                                    "type": "text",
                                    "text": {"body": "my secret message"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    result = apply_mapping(spec, payload, settings.channels[0].as_scope())
    assert result.issues
    reasons = " ".join(result.issues)
    assert "SECRET" not in reasons
    assert "15551234567" not in reasons


def test_json_pointers() -> None:
    assert pointer([]) == ""
    assert pointer(["to", 0, "a/b~c"]) == "/to/0/a~1b~0c"


def test_unexpected_errors_are_problems_with_the_request_id(tmp_path: Path) -> None:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug with secret text")

    app = create_app(make_settings(tmp_path), dispatch=False)
    app.router.routes.append(Route("/v1/boom", boom))
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/v1/boom", headers={"x-request-id": "abc-123"})
        fresh = client.get("/healthz")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "internal_error"
    assert "secret" not in answer.text
    assert answer.headers["x-request-id"] == "abc-123"  # a caller's id is kept
    assert fresh.headers["x-request-id"].startswith("req_")
