"""The mapping playground and the send form.

Playground: pick any mapping folder, paste a body (or pick one of its golden cases), and see
what the production path makes of it (mapping -> identity -> canonical schema) over an
in-memory store: canonical events with their ids, quarantine reasons and schema errors with
their paths, and the fields no rule read. The mapping is read from disk on every run, so a
contributor editing a YAML file sees the change without a restart. Nothing is stored.

Send: a canonical send as JSON; "preview" answers the exact provider request (credentials
masked) and the addressing decision with its reason; "send" submits it as `POST /v1/messages`
does, with the `Idempotency-Key` the form was rendered with: a resubmitted form (a browser's
reload of the answer) replays the first answer and sends nothing again. Every render of the form
carries a new key, so a deliberate second "Send" is a new message.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import orjson
import yaml
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.api.messages import send_service
from bspgate.console.render import mask_event, mask_payload, render
from bspgate.console.session import action, audit, gateway_of, page, revealed
from bspgate.errors import MappingLoadError, PayloadError, SendError
from bspgate.ingress.parse import parse_payload
from bspgate.mapping.engine import apply_mapping
from bspgate.mapping.loader import iter_case_files, load_mapping, mapping_names
from bspgate.normalize import Normalizer, demo_channel
from bspgate.outbound.service import plan_send, validate_send


def _providers(request: Request) -> list[str]:
    return mapping_names(gateway_of(request).settings.mappings_dir)


def _cases(request: Request, provider: str) -> list[str]:
    if provider not in _providers(request):
        return []
    root = gateway_of(request).settings.mappings_dir
    return [p.stem for p in iter_case_files(root, provider)]


def _case_input(request: Request, provider: str, name: str) -> str:
    root = gateway_of(request).settings.mappings_dir
    for path in iter_case_files(root, provider):
        if path.stem == name:
            case = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            return orjson.dumps(case.get("input"), option=orjson.OPT_INDENT_2).decode()
    return ""


def playground_run(request: Request, provider: str, body: bytes) -> dict[str, Any]:
    """What `body` becomes with `provider`'s mapping as it is on disk now (nothing stored)."""
    settings = gateway_of(request).settings
    result: dict[str, Any] = {"events": [], "issues": [], "unread": [], "state": None}
    try:
        spec = load_mapping(settings.mappings_dir, provider)
    except MappingLoadError as exc:
        result["issues"] = [f"the mapping does not load: {exc}"]
        return result
    channels = [c for c in settings.channels if c.provider == provider]
    channel = channels[0] if channels else demo_channel(provider)
    try:
        payload = parse_payload(body, spec.parse)
    except PayloadError as exc:
        result["issues"] = [str(exc)]
        result["state"] = "unreadable (400)"
        return result
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    mapped = apply_mapping(spec, payload, channel.as_scope(), received_at=stamp)
    outcome = Normalizer(spec, channel, gateway_of(request).validator).normalize(payload, body)
    result.update(
        channel=channel.id,
        state=outcome.state,
        events=outcome.events,
        issues=list(outcome.issues),
        unread=list(mapped.unmapped),
        drafts=[{"id": d.id, "type": d.type, "rule": d.rule} for d in mapped.drafts],
    )
    return result


@page
async def playground(request: Request) -> Response:
    provider = request.query_params.get("provider", "")
    case = request.query_params.get("case", "")
    text = _case_input(request, provider, case) if provider and case else ""
    return _playground(request, provider, case, text, None)


def _playground(
    request: Request, provider: str, case: str, text: str, result: dict[str, Any] | None
) -> Response:
    reveal = revealed(request)
    if result is not None and not reveal:
        result = {**result, "events": [mask_event(e) for e in result["events"]]}
    return render(
        request,
        "playground.html",
        {
            "section": "playground",
            "providers": _providers(request),
            "provider": provider,
            "cases": _cases(request, provider) if provider else [],
            "case": case,
            "text": text,
            "result": result,
        },
    )


@action
async def playground_post(request: Request, form: FormData) -> Response:
    provider = str(form.get("provider") or "")
    text = str(form.get("payload") or "")
    if provider not in _providers(request):
        result: dict[str, Any] = {"events": [], "issues": ["pick a provider"], "unread": []}
    else:
        result = playground_run(request, provider, text.encode())
    return _playground(request, provider, str(form.get("case") or ""), text, result)


EXAMPLE_SEND = {
    "channel": "cloud-us",
    "to": {"bsuid": "US.13491208655302741918"},
    "type": "text",
    "text": {"body": "Hello from the console"},
}


def _why(address: Any, channel: Any, send: dict[str, Any]) -> str:
    template = send.get("template") or {}
    if send["type"] == "template" and template.get("category") == "authentication":
        return "an authentication template goes to a phone number (rule 2)"
    if address.kind == "bsuid":
        return f"a BSUID is known and the channel sends by {channel.send_by} (BSUID first)"
    if channel.send_by == "phone":
        return "the channel is configured to send by phone"
    if not address.recipient.bsuid:
        return "no BSUID is known for this recipient, a phone is"
    return "this provider mapping does not send to BSUIDs on this channel"


@page
async def send_page(request: Request) -> Response:
    gateway = gateway_of(request)
    channel = gateway.settings.channels[0].id if gateway.settings.channels else "cloud-us"
    example = {**EXAMPLE_SEND, "channel": channel}
    text = orjson.dumps(example, option=orjson.OPT_INDENT_2).decode()
    return _send_form(request, text, None)


def _send_form(request: Request, text: str, outcome: dict[str, Any] | None) -> Response:
    """The send page; its form carries a fresh Idempotency-Key (see the module docstring)."""
    key = "console-" + secrets.token_urlsafe(24)
    context = {"section": "send", "text": text, "outcome": outcome, "idempotency_key": key}
    return render(request, "send.html", context)


@action
async def send_post(request: Request, form: FormData) -> Response:
    gateway = gateway_of(request)
    text = str(form.get("send") or "")
    mode = str(form.get("mode") or "preview")
    reveal = revealed(request)
    outcome: dict[str, Any] = {"mode": mode}
    try:
        payload = orjson.loads(text)
        service = send_service(request)
        if mode == "send":
            key = str(form.get("idempotency_key") or "")
            if not 0 < len(key) <= 255:
                raise SendError("invalid_request", "the form has no Idempotency-Key: reload it")
            answer = await service.submit(payload, idempotency_key=key)
            outcome.update(status=answer.status, answer=answer.body, replayed=answer.replayed)
            await audit(request, "send", str(answer.body.get("id", "")),
                        addressed_by=answer.body.get("addressed_by"),
                        replayed=answer.replayed)  # fmt: skip
        else:
            send = validate_send(payload)
            channel = service.channel(send, None)
            spec = service.spec(channel.provider)
            now = gateway.clock()
            plan = await gateway.store.read(lambda tx: plan_send(tx, channel, spec, send, now))
            preview = await service.dry_run(payload)
            outcome.update(
                request=preview.body if reveal else mask_payload(preview.body),
                addressed_by=plan.address.kind,
                why=_why(plan.address, channel, send),
                warnings=list(plan.warnings),
            )
    except orjson.JSONDecodeError as exc:
        outcome.update(error="invalid_json", detail=str(exc))
    except SendError as exc:
        outcome.update(error=exc.code, detail=exc.detail)
    return _send_form(request, text, outcome)


def routes() -> list[Route]:
    return [
        Route("/playground", playground, methods=["GET"]),
        Route("/playground", playground_post, methods=["POST"]),
        Route("/send", send_page, methods=["GET"]),
        Route("/send", send_post, methods=["POST"]),
    ]
