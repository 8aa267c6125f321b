"""The skeleton `bspgate mappings new NAME --from payload.json` writes.

The payload's leaves are searched for the usual names of a message id, a sender, a text and a
time; what is found is written as the rule's expressions (marked `guessed`), the rest as TODO.
A time is read with the function its sample value needs: `epoch_to_rfc3339` for unix time (a
number, or digits in a string as Meta sends them), `to_rfc3339` for ISO 8601 text; it is also
the event's `time` (the provider's event time), `received_at` only when none was found.
The mapping loads as written, so `bspgate mappings test NAME --update` runs at once.
"""

from __future__ import annotations

from typing import Any

import yaml

CANDIDATES = {
    "id": ("messageId", "message_id", "id", "wamid", "MessageSid"),
    "phone": ("phoneNumber", "phone", "from", "msisdn", "wa_id", "From"),
    "bsuid": ("userId", "user_id", "from_user_id", "bsuid"),
    "text": ("text", "body", "Body", "content"),
    "time": ("timestamp", "receivedAt", "received_at", "time", "sentAt"),
}


def _leaves(value: Any, path: str = "payload") -> list[tuple[str, str, Any]]:
    """(expression, key, value) of every scalar, arrays read at their first item."""
    out: list[tuple[str, str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = key if key.isidentifier() else f'"{key}"'
            out.extend(_leaves(item, f"{path}.{name}") if isinstance(item, dict | list) else [])
            if not isinstance(item, dict | list):
                out.append((f"{path}.{name}", key, item))
    elif isinstance(value, list) and value:
        out.extend(_leaves(value[0], f"{path}[0]"))
    return out


def _guess(leaves: list[tuple[str, str, Any]], role: str) -> str | None:
    found = _guess_leaf(leaves, role)
    return found[0] if found else None


def _guess_leaf(leaves: list[tuple[str, str, Any]], role: str) -> tuple[str, Any] | None:
    """(expression, sample value) of the first leaf named as `role` usually is."""
    for wanted in CANDIDATES[role]:
        for expression, key, value in leaves:
            if key == wanted and isinstance(value, str | int | float) and value != "":
                return expression, value
    return None


def time_function(value: Any) -> str:
    """The function that reads a sample time: unix seconds or milliseconds (a number, or digits
    in a string: Meta's `"1767225600"`) or ISO 8601 text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "epoch_to_rfc3339"
    text = str(value).strip()
    return "epoch_to_rfc3339" if text.replace(".", "", 1).isdigit() else "to_rfc3339"


def skeleton_files(name: str, payload: Any) -> dict[str, str]:
    """Relative path -> text of the folder's first files."""
    leaves = _leaves(payload)
    guessed = {role: _guess(leaves, role) for role in CANDIDATES}
    sample_time = _guess_leaf(leaves, "time")
    time: Any = (
        {"from": sample_time[0], "apply": time_function(sample_time[1])}
        if sample_time
        else "received_at"
    )
    fields: dict[str, Any] = {
        "message.id": guessed["id"] or "payload.TODO_message_id",
        "message.type": {"value": "text"},
        "message.timestamp": time,
        "message.text": guessed["text"] or "payload.TODO_text",
        "contact.phone": {"from": guessed["phone"] or "payload.TODO_phone", "apply": "phone"},
        "contact.bsuid": {"from": guessed["bsuid"] or "payload.TODO_bsuid", "apply": "bsuid"},
    }
    mapping = {
        "name": name,
        "title": name,
        "docs": "TODO: the provider's webhook reference",
        "inbound": {
            "parse": "json",
            "verify": [
                {
                    "scheme": "hmac",
                    "header": "X-TODO-Signature",
                    "algorithm": "sha256",
                    "encoding": "hex",
                    "message": ["body"],
                    "secret": "webhook_secret",
                }
            ],
            "rules": [
                {
                    "name": "message",
                    "type": "whatsapp.message.received",
                    "for_each": [{"ev": "[payload]"}],
                    "key": fields["message.id"].replace("payload.", "ev.", 1)
                    if isinstance(fields["message.id"], str)
                    else "ev.id",
                    "time": _rebase({"time": time})["time"],
                    "fields": _rebase(fields),
                }
            ],
        },
    }
    header = (
        f"# {name}: inbound mapping (skeleton from `bspgate mappings new`).\n"
        "# Sources: TODO name the provider's docs, SDK tests or payload examples used.\n"
        "# Expressions found in the sample payload are guesses: check each; replace every TODO.\n"
    )
    outbound = {
        "provider": name,
        "title": name,
        "settings": {"base_url": "https://api.TODO.example"},
        "secrets": ["api_key"],
        "request": {"method": "POST", "url": "${settings.base_url}/TODO/messages"},
        "auth": {"scheme": "bearer", "secret": "api_key"},
        "types": {
            "text": {"body": {"to": "${to.phone}", "text": "${text.body}"}},
        },
        "answer": {"message_id": "id"},
    }
    channel = {
        "secrets": {"webhook_secret": "test-webhook-secret", "api_key": "test-api-key"},
        "settings": {"base_url": "${stand_in}"},
    }
    case = {
        "description": "the sample payload",
        "received_at": "2026-01-01T00:00:00Z",  # pins the receive time the skeleton may use
        "input": payload,
        "expect": {"events": []},
    }
    send_case = {
        "description": "text to a phone",
        "send": {"to": {"phone": "+15551234567"}, "type": "text", "text": {"body": "Hi"}},
        "answer": {"status": 200, "body": {"id": "TODO-provider-message-id"}},
        "expect": {},
    }
    return {
        "mapping.yaml": header + dump(mapping),
        "outbound.yaml": f"# {name}: send form (skeleton). Sources: TODO.\n" + dump(outbound),
        "cases/_channel.yaml": "# The test channel of the cases (test values only).\n"
        + dump(channel),
        "cases/sample.yaml": "# The sample payload given to `mappings new`; run\n"
        f"# `bspgate mappings test {name} --update` to write what the mapping produces.\n"
        + dump(case),
        "cases/send_text.yaml": "# A text send; `--update` writes the rendered request.\n"
        + dump(send_case),
    }


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _rebase(fields: dict[str, Any]) -> dict[str, Any]:
    """Expressions over `payload.` read the rule's item `ev.` instead."""
    out: dict[str, Any] = {}
    for name, spec in fields.items():
        if isinstance(spec, str):
            out[name] = spec.replace("payload.", "ev.", 1)
        elif "from" in spec:
            out[name] = {**spec, "from": spec["from"].replace("payload.", "ev.", 1)}
        else:
            out[name] = spec
    return out
