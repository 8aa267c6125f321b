"""A corpus of bad input through a real server: never a crash, never a 5xx, never a forged event.

Every body is sent twice: correctly signed (so it reaches the parser and the mapping engine) and
forged. Answers may only be 200 (stored, possibly quarantined), 400 (unparseable, with an RFC
9457 problem), 401 (forged) or 413 (too large); the server must stay healthy throughout, and no
forged request may produce an event.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import make_settings, meta_signature
from tests.harness import RunningGateway

pytestmark = pytest.mark.e2e

LIMIT = 65536


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _corpus() -> list[tuple[str, bytes, str]]:
    valid = orjson.dumps({"object": "whatsapp_business_account", "entry": []})
    return [
        ("empty", b"", "application/json"),
        ("whitespace", b"   \n", "application/json"),
        (
            "truncated json",
            b'{"object": "whatsapp_business_account", "entry": [',
            "application/json",
        ),
        ("not json", b"hello there", "application/json"),
        ("json scalar", b"42", "application/json"),
        ("json string", b'"entry"', "application/json"),
        ("json null", b"null", "application/json"),
        ("json array", b"[1, 2, 3]", "application/json"),
        ("nan", b'{"entry": NaN}', "application/json"),
        ("invalid utf-8", b'{"entry": "\xff\xfe"}', "application/json"),
        ("lone surrogate", b'{"entry": "\\ud800"}', "application/json"),
        ("deep nesting 10000", _nested(10_000), "application/json"),
        ("deep nesting 500", _nested(500), "application/json"),
        ("huge array", b'{"entry": [' + b",".join([b"{}"] * 20_000) + b"]}", "application/json"),
        (
            "huge changes",
            orjson.dumps(
                {
                    "entry": [
                        {"changes": [{"field": "messages", "value": {"messages": [{}] * 3000}}]}
                    ]
                }
            ),
            "application/json",
        ),
        ("wrong types", orjson.dumps({"entry": {"changes": "x"}, "object": 5}), "application/json"),
        (
            "messages not objects",
            orjson.dumps(
                {
                    "entry": [
                        {
                            "changes": [
                                {"field": "messages", "value": {"messages": [1, "x", None, []]}}
                            ]
                        }
                    ]
                }
            ),
            "application/json",
        ),
        ("form body to json provider", b"a=1&b=2", "application/x-www-form-urlencoded"),
        ("text/plain json", valid, "text/plain"),
        ("no content type", valid, ""),
        ("oversize", b'{"pad": "' + b"x" * (LIMIT + 10) + b'"}', "application/json"),
        ("binary", bytes(range(256)) * 4, "application/octet-stream"),
    ]


CORPUS = _corpus()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp_path: Path = tmp_path_factory.mktemp("bad-input")
    settings = make_settings(tmp_path, server={"public_url": "http://x", "max_body_bytes": LIMIT})
    with RunningGateway(settings) as running:
        yield running


@pytest.mark.parametrize(("name", "body", "content_type"), CORPUS, ids=[c[0] for c in CORPUS])
def test_signed_bad_input_gets_a_clear_answer(
    gateway: RunningGateway, name: str, body: bytes, content_type: str
) -> None:
    headers = {"x-hub-signature-256": meta_signature(body)}
    if content_type:
        headers["content-type"] = content_type
    response = gateway.client.post("/webhooks/cloud-us", content=body, headers=headers)
    assert response.status_code in (200, 400, 413), (name, response.status_code, response.text)
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == response.status_code
    assert gateway.client.get("/healthz").status_code == 200


@pytest.mark.parametrize(("name", "body", "content_type"), CORPUS, ids=[c[0] for c in CORPUS])
def test_forged_bad_input_is_refused(
    gateway: RunningGateway, name: str, body: bytes, content_type: str
) -> None:
    before = len(gateway.events())
    for signature in (None, "sha256=" + "0" * 64, "sha256=zz", "md5=abc", "sha256=" + "a" * 500):
        headers = {"content-type": content_type or "application/json"}
        if signature is not None:
            headers["x-hub-signature-256"] = signature
        response = gateway.client.post("/webhooks/cloud-us", content=body, headers=headers)
        assert response.status_code in (401, 413), (name, signature, response.status_code)
    assert len(gateway.events()) == before


def test_memory_stays_bounded_over_the_corpus(gateway: RunningGateway) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        for _name, body, content_type in CORPUS:
            headers = {
                "x-hub-signature-256": meta_signature(body),
                "content-type": content_type or "application/json",
            }
            gateway.client.post("/webhooks/cloud-us", content=body, headers=headers)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 150, f"peak memory grew {grown_mb:.0f} MB over three passes"
    assert gateway.client.get("/readyz").status_code == 200
