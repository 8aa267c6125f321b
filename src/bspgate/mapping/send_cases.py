"""Outbound golden cases: `mappings/<provider>/cases/send_*.yaml`, a canonical send and its request.

    description: text to a BSUID
    send: {to: {bsuid: US.13491208655302741918}, type: text, text: {body: Hi}}
    answer: {status: 200, body: {messages: [{id: wamid.X}]}}   # the provider's answer
    expect:
      request:
        method: POST
        path: /v23.0/106540352242922/messages          # path and query; the host is the channel's
        headers: {Authorization: Bearer meta-tok-1}    # only the headers listed are compared
        body: {messaging_product: whatsapp, ...}       # JSON body, or form fields for form sends
      message_id: wamid.X                              # what the gateway reports as sent
    # or: expect: {refused: unsupported_message}      # refused before any provider call

`${send.id}`, `${send.uuid}` and `${public_url}` in expected values stand for the send's id, the
UUID derived from it and the gateway's public URL. The channel a case sends from is
`cases/_channel.yaml` (`secrets`, `settings`, `business_phone`; `${stand_in}` in a setting is the
provider API's base URL: the local stand-in in the end-to-end tests, `https://provider.invalid`
offline). Offline (`bspgate mappings test`) the request is rendered only; the end-to-end tests
send it to a stand-in of the provider API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import orjson

from bspgate.errors import ConfigError, MappingLoadError, SendError
from bspgate.mapping.cases import CaseResult, check_case, diff
from bspgate.mapping.folders import Roots, display_path, roots_of
from bspgate.mapping.loader import cases_dir
from bspgate.mapping.yamlfile import YamlFile

CHANNEL_FILE = "_channel.yaml"
OFFLINE_BASE = "https://provider.invalid"
OFFLINE_PUBLIC_URL = "https://gateway.example"
NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


def is_send_case(path: Path) -> bool:
    return path.name.startswith("send_")


@cache
def _channel_validator() -> jsonschema.Draft202012Validator:
    # a test channel is a config `channels[]` entry: checked by the config's own schema
    text = resources.files("bspgate").joinpath("config.schema.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text)["properties"]["channels"]["items"])


def channel_file(root: Roots, provider: str) -> Path:
    """The provider's `cases/_channel.yaml`, in the folder that provides its mapping."""
    return cases_dir(root, provider) / CHANNEL_FILE


def load_channel(root: Roots, provider: str, stand_in: str) -> dict[str, Any]:
    """The provider's test channel (a config `channels[]` entry), `${stand_in}` filled in.

    Checked as the config checks a channel, each error named by the file's path and line.
    """
    path = channel_file(root, provider)
    display = display_path(path)
    if not path.is_file():
        raise MappingLoadError(display, None, "", "no test channel for sends")
    file = YamlFile(path, display)
    data = file.data if file.data is not None else {}
    if not isinstance(data, dict):
        raise file.error((), "the test channel is an object: secrets, settings, business_phone")
    text = orjson.dumps(data).decode().replace("${stand_in}", stand_in)
    channel: dict[str, Any] = orjson.loads(text)
    channel.setdefault("portfolio", "acme")
    channel.setdefault("business_phone", "+15550001111")
    entry = {"id": f"{provider}-test", "provider": provider, **channel}
    errors = sorted(_channel_validator().iter_errors(entry), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        assert error is not None
        raise file.error(tuple(error.absolute_path), error.message)
    return entry


@dataclass(frozen=True, slots=True)
class SentRequest:
    """A provider request as the stand-in received it (or as rendered offline)."""

    method: str
    url: str
    headers: dict[str, str]
    content: bytes

    def body(self) -> Any:
        content_type = self.headers.get("content-type", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            fields = parse_qs(self.content.decode(), keep_blank_values=True)
            return {k: v[0] if len(v) == 1 else v for k, v in fields.items()}
        try:
            return orjson.loads(self.content) if self.content else None
        except orjson.JSONDecodeError:
            return self.content.decode(errors="replace")


def tokens(send_id: str, public_url: str) -> dict[str, str]:
    """What `${send.id}`, `${send.uuid}` and `${public_url}` stand for in a case."""
    from bspgate.outbound.rewrite import uuid_from

    return {"${send.id}": send_id, "${send.uuid}": uuid_from(send_id), "${public_url}": public_url}


def _fill(expected: Any, values: dict[str, str]) -> Any:
    if isinstance(expected, str):
        for token, value in values.items():
            expected = expected.replace(token, value)
        return expected
    if isinstance(expected, dict):
        return {k: _fill(v, values) for k, v in expected.items()}
    if isinstance(expected, list):
        return [_fill(v, values) for v in expected]
    return expected


def _unfill(actual: Any, values: dict[str, str]) -> Any:
    if isinstance(actual, str):
        for token, value in values.items():
            if value:
                actual = actual.replace(value, token)
        return actual
    if isinstance(actual, dict):
        return {k: _unfill(v, values) for k, v in actual.items()}
    if isinstance(actual, list):
        return [_unfill(v, values) for v in actual]
    return actual


def request_record(sent: SentRequest, values: dict[str, str], headers: list[str]) -> dict[str, Any]:
    """What `--update` writes: method, path, the listed headers and the body, tokens put back."""
    parts = urlsplit(sent.url)
    record: dict[str, Any] = {
        "method": sent.method,
        "path": parts.path + (f"?{parts.query}" if parts.query else ""),
    }
    wanted = {h.lower() for h in headers}
    kept = {k: v for k, v in sent.headers.items() if k.lower() in wanted}
    if kept:
        record["headers"] = kept
    record["body"] = sent.body()
    return dict(_unfill(record, values))


def compare_request(
    expected: dict[str, Any], sent: SentRequest, values: dict[str, str]
) -> str | None:
    """None when `sent` is the request the case expects, else the first difference."""
    expected = _fill(expected, values)
    parts = urlsplit(sent.url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if expected.get("method", "POST") != sent.method:
        return f"method: expected {expected.get('method', 'POST')}, got {sent.method}"
    if "path" in expected and expected["path"] != path:
        return f"path: expected {expected['path']!r}, got {path!r}"
    lowered = {k.lower(): v for k, v in sent.headers.items()}
    for name, value in (expected.get("headers") or {}).items():
        if lowered.get(name.lower()) != value:
            return f"header {name}: expected {value!r}, got {lowered.get(name.lower())!r}"
    if "body" in expected:
        return diff(expected["body"], sent.body(), "/request/body")
    return None


async def render_offline(root: Roots, provider: str, case: dict[str, Any]) -> tuple[Any, str]:
    """(SentRequest, send id) as the gateway would render the case's send; SendError if refused.

    `root`: the mappings folders (or one), as the gateway reads them: an `outbound.yaml` that
    extends another provider's finds it in any of them.
    """
    from bspgate.config import settings_from_dict
    from bspgate.outbound.addressing import NoIdentityView
    from bspgate.outbound.service import SendService, plan_send, validate_send

    roots = roots_of(root)
    channel_entry = load_channel(roots, provider, OFFLINE_BASE)
    settings = settings_from_dict(
        {
            "storage": "sqlite:///unused.db",
            "mappings": [str(folder.resolve()) for folder in roots],
            "server": {"public_url": OFFLINE_PUBLIC_URL},
            "api_keys": [{"name": "cases", "key": "cases-key-0123456789abcdef"}],
            "channels": [channel_entry],
        },
        env={},
        base_dir=roots[-1].parent,
        known_mappings=[provider],
    )
    service = SendService(settings, store=None, client=None, clock=lambda: NOW)
    send = validate_send({**case["send"], "channel": channel_entry["id"]})
    channel = service.channel(send, None)
    spec = service.spec(provider)
    plan = plan_send(NoIdentityView(), channel, spec, send, NOW, store_checked=False)
    send_id = "snd_case"
    request = service.render(send, channel, plan, send_id, NOW)
    sent = SentRequest(
        request.method,
        request.url,
        {k.lower(): v for k, v in request.headers.items()},
        request.content,
    )
    return sent, send_id


async def run_send_case(root: Roots, provider: str, path: Path) -> CaseResult:
    """Render one send case offline and compare it with its expectation: the request, and the
    message id `answer.message_id` reads from the case's `answer` (`expect.message_id`)."""
    name = f"{provider}/{path.stem}"
    try:
        case = load_send_case(path)
        sent, send_id = await render_offline(root, provider, case)
    except MappingLoadError as exc:
        return CaseResult(name, False, str(exc))
    except ConfigError as exc:  # the test channel, as the config would refuse it
        return CaseResult(name, False, f"{display_path(channel_file(root, provider))}: {exc}")
    except SendError as exc:
        refused = case["expect"].get("refused")
        if refused == exc.code:
            return CaseResult(name, True)
        return CaseResult(name, False, f"refused ({exc.code}: {exc.detail})")
    if "refused" in case["expect"]:
        return CaseResult(name, False, f"expected a refusal ({case['expect']['refused']}), sent")
    expected = case["expect"].get("request") or {}
    if "path" not in expected or "body" not in expected:
        return CaseResult(name, False, "expect.request needs path and body (see --update)")
    values = tokens(send_id, OFFLINE_PUBLIC_URL)
    problem = compare_request(expected, sent, values)
    if problem is None and "message_id" in case["expect"]:
        problem = _compare_message_id(root, provider, case)
    return CaseResult(name, problem is None, problem or "")


def answer_message_id(root: Roots, provider: str, answer: dict[str, Any]) -> str | None:
    """The message id the gateway reports for a 2xx `answer` (as the client reads it), or None."""
    from bspgate.outbound.spec import load_outbound

    body = answer.get("body")
    if body is None:
        return None
    found = load_outbound(root, provider).message_id(body)
    return str(found) if found else None


def _compare_message_id(root: Roots, provider: str, case: dict[str, Any]) -> str | None:
    expected = case["expect"]["message_id"]
    answer = case.get("answer") or {}
    status = int(answer.get("status", 200))
    if not 200 <= status < 300:
        return f"expect.message_id needs a 2xx answer (the case's answer is {status})"
    found = answer_message_id(root, provider, answer)
    if found != expected:
        return (
            f"message_id: expected {expected!r}, but the send form's answer.message_id reads "
            f"{found!r} from the case's answer"
        )
    return None


def load_send_case(path: Path) -> dict[str, Any]:
    """A send case's data; `MappingLoadError` (file, line, field) for YAML or shape errors."""
    file = YamlFile(path, display_path(path))
    data = file.data
    if not isinstance(data, dict) or not isinstance(data.get("send"), dict):
        raise file.error((), "a send case needs `send` (a canonical send) and `expect`")
    if not isinstance(data.get("expect"), dict):
        raise file.error(("expect",), "expect is {request, message_id} or {refused: code}")
    check_case(file, "send")
    return data


def run_file(root: Roots, spec: Any, path: Path) -> CaseResult:
    """Run any case file: a send case (`send_*.yaml`) or an inbound/signed case."""
    import asyncio

    from bspgate.mapping.cases import run_case

    if is_send_case(path):
        return asyncio.run(run_send_case(root, spec.name, path))
    return run_case(spec, path)
