"""Templates and masking: every console page is rendered here, with phones and texts masked.

Masking happens before a value reaches a template: `mask_phone` keeps the last two digits,
`mask_event` hides message texts and masks every phone field of a canonical event, and
`mask_payload` does the same, by shape, for a raw provider payload (phone-shaped values of
phone-like keys, any `+<digits>` value, and the values of text-like keys). In any other text (a
vcard's `TEL;waid=15551234567:+1 555-123-4567`, a provider's error detail) a `+<digits>` phone
keeps its last two digits, and so does a bare run of 8 to 15 digits standing alone
(`bspgate.masking.mask_phones`, the logs' rule); a value that is only digits is left to its key
(a timestamp, a phone number id), and a `url`'s digit runs are ids. A revealed page (see
`session.revealed`) skips it.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from bspgate.mapping.functions import is_bsuid
from bspgate.masking import mask_phones

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
HIDDEN = "[hidden]"
_PHONE_LIKE = re.compile(r"^(whatsapp:|tel:)?\+?[0-9][0-9 ()-]{6,18}[0-9]$")
_TEXT_KEYS = frozenset({"text", "body", "caption", "Body", "content", "title", "description"})
_PLUS_PHONE = re.compile(r"^(whatsapp:|tel:)?\+[0-9][0-9 ()-]{6,18}[0-9]$")
# a +<digits> phone inside other text (a free-text value where a time or an id belongs)
_PLUS_PHONE_IN = re.compile(r"\+[0-9][0-9 ()-]{6,18}[0-9]")
# keys whose phone-shaped values are phones (raw payloads and canonical events alike);
# `new_wa_id`: Meta's legacy `customer_changed_number` system message names the new phone so
_PHONE_KEYS = frozenset(
    {"wa_id", "new_wa_id", "from", "to", "From", "To", "WaId", "msisdn", "recipient_id",
     "recipient", "sender", "destination", "user_number"}
)  # fmt: skip

NAV = (
    ("overview", "/console/", "Overview"),
    ("events", "/console/events", "Events"),
    ("contacts", "/console/contacts", "Contacts"),
    ("deliveries", "/console/deliveries", "Deliveries"),
    ("quarantine", "/console/quarantine", "Quarantine"),
    ("playground", "/console/playground", "Playground"),
    ("send", "/console/send", "Send"),
    ("audit", "/console/audit", "Audit"),
)


def mask_phone(value: Any) -> Any:
    """`+15551234567` -> `+•••••••••67`: every digit but the last two replaced."""
    if not isinstance(value, str) or not value:
        return value
    digits = [i for i, ch in enumerate(value) if ch.isdigit()]
    keep = set(digits[-2:])
    return "".join("•" if i in digits and i not in keep else ch for i, ch in enumerate(value))


def mask_event(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of a canonical event with phones masked and message texts hidden."""
    masked = copy.deepcopy(event)
    _walk_event(masked)
    return masked


def _walk_event(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(value, str):
                _walk_event(value)
            elif key == "phone" or (key in _PHONE_KEYS and _is_phone(value)):
                # `phone`, and `wa_id` (`data.message.contacts[].phones[]`: a shared card)
                node[key] = mask_phone(value)
            elif key in _TEXT_KEYS and value:
                node[key] = HIDDEN
            else:
                node[key] = _mask_in_text(value, key)
    elif isinstance(node, list):
        for item in node:
            _walk_event(item)


def mask_payload(node: Any, key: str = "") -> Any:
    """A raw provider payload with phone-shaped strings masked and text-like values hidden."""
    if isinstance(node, dict):
        return {k: mask_payload(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [mask_payload(item, key) for item in node]
    if isinstance(node, str):
        if key in _TEXT_KEYS and node:
            return HIDDEN
        # a phone-shaped value under a phone-like key, or anything written +<digits>
        phone_key = key in _PHONE_KEYS or ("phone" in key.lower() and not key.endswith("_id"))
        if _is_phone(node) if phone_key else _PLUS_PHONE.match(node):
            return mask_phone(node)
        return _mask_in_text(node, key)
    return node


def _is_phone(value: str) -> bool:
    """A phone-shaped value (a BSUID, whose digits follow `CC.`, is not one)."""
    return bool(_PHONE_LIKE.match(value)) and not is_bsuid(value.removeprefix("whatsapp:"))


def _mask_in_text(text: str, key: str) -> str:
    """Phones inside other text: `+<digits>` spellings (with spaces, dashes, brackets) keep their
    last two digits as `mask_phone` writes them, then bare digit runs as `mask_phones` does.
    A value of digits only is not text: its key says whether it is a phone. Nor is a `url`: its
    digit runs are ids (the phone number id in a Graph API path, a media id)."""
    if text.isdigit():
        return text
    spelled = _PLUS_PHONE_IN.sub(lambda found: str(mask_phone(found.group(0))), text)
    return spelled if key == "url" else mask_phones(spelled)


def payload_view(body: bytes, content_type: str, reveal: bool) -> Any:
    """A stored provider body to show: parsed JSON or form fields, masked unless revealed."""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace")
        if "form" not in content_type:
            return text if reveal else f"[{len(body)} bytes of {content_type}: reveal to read]"
        parsed = dict(parse_qsl(text, keep_blank_values=True))
    return parsed if reveal else mask_payload(parsed)


def pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def ago(stamp: Any, now: datetime | None = None) -> str:
    """`12 s ago` for an RFC 3339 time or epoch seconds; the value itself when unreadable."""
    if stamp is None or stamp == "":
        return ""
    try:
        if isinstance(stamp, int | float):
            moment = datetime.fromtimestamp(float(stamp), UTC)
        else:
            moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return str(stamp)
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            text = f"{int(seconds // size)} {unit}"
            break
    else:
        text = f"{int(seconds)} s"
    return f"in {text}" if future else f"{text} ago"


_env = Environment(
    loader=FileSystemLoader(str(HERE / "templates")),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(pretty=pretty, ago=ago, mask_phone=mask_phone)


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    """A page: the template with the operator, CSRF token, nav and reveal state filled in."""
    from bspgate.console.session import csrf_token, operator, revealed

    values = {
        "request": request,
        "nav": NAV,
        "operator": operator(request),
        "csrf": csrf_token(request),
        "revealed": revealed(request),
        "path": request.url.path,
        "full_path": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    }
    values.update(context)
    html = _env.get_template(name).render(values)
    headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }
    return HTMLResponse(html, status, headers=headers)
