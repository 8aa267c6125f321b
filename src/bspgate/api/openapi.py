"""The OpenAPI 3.1 document of `/v1`, served at `GET /v1/openapi.json` (no key needed).

Written here beside the routes and held to them: `tests/production/test_openapi.py` fails when
a `/v1` route of the app and an operation of this document differ (path or method), validates
the document with `openapi-spec-validator`, and runs schemathesis against a live server. Request
bodies reuse the schemas the code validates with (`send.schema.json`); every error is an RFC
9457 problem (`Problem`); every time is RFC 3339 UTC with `Z` (`format: date-time`).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate import __version__
from bspgate.store.base import DELIVERY_STATES

PROBLEM = "application/problem+json"
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
TEXT = {"type": "string"}
# a name that filters: not blank, no NUL (the server refuses both with a 400)
NAME = {"type": "string", "minLength": 1, "pattern": "^[^\\u0000]*[^\\u0000\\s][^\\u0000]*$"}
FILLED = {"type": "string", "minLength": 1}  # a query filter: an empty value is a 400
NULLABLE_TEXT = {"type": ["string", "null"]}
COUNT = {"type": "integer", "minimum": 0}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], props: dict[str, Any], *, closed: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": props}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _page(item: str) -> dict[str, Any]:
    return _obj(["data"], {"data": {"type": "array", "items": _ref(item)}})


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Any]:
    text = {
        400: "unreadable request (bad query, body or cursor)",
        401: "no valid Bearer key",
        404: "not found",
        413: "body too large",
        409: "conflict (the problem's code says why)",
        422: "refused (the problem's code says why)",
        502: "the provider rejected the send",
    }
    out = {
        str(s): {
            "description": text.get(s, "error"),
            "content": {PROBLEM: {"schema": _ref("Problem")}},
        }
        for s in (*statuses, 401)
    }
    out["default"] = {
        "description": "any other error (RFC 9457)",
        "content": {PROBLEM: {"schema": _ref("Problem")}},
    }
    return out


def _param(
    name: str, where: str, schema: dict[str, Any], text: str, required: bool = False
) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema, "description": text}


def _path_id(name: str, text: str) -> dict[str, Any]:
    return _param(name, "path", {"type": "string", "minLength": 1}, text, required=True)


LIMIT_1000 = _param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "at most this many",
)


def _send_schema() -> dict[str, Any]:
    text = resources.files("bspgate.outbound").joinpath("send.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    raw = json.dumps(schema).replace('"#/$defs/', '"#/components/schemas/SendRequest/$defs/')
    result: dict[str, Any] = json.loads(raw)
    return result


def _schemas() -> dict[str, Any]:
    contact_ref = {"type": "array", "items": {"type": "object"}}
    return {
        "Problem": _obj(
            ["type", "title", "status", "code"],
            {
                "type": {"type": "string", "format": "uri-reference"},
                "title": TEXT,
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": TEXT,
                "code": TEXT,
                "pointer": {"type": "string", "description": "RFC 6901 JSON Pointer"},
                "reason": {
                    "type": "string",
                    "description": "subscriber_disabled: why it is disabled (as stored)",
                },
                "remedy": {
                    "type": "string",
                    "description": "subscriber_disabled: the command that resolves it",
                },
            },
        ),
        "Event": _obj(
            ["specversion", "id", "type", "source", "time", "data"],
            {
                "specversion": {"const": "1.0"},
                "id": TEXT,
                "type": TEXT,
                "source": TEXT,
                "subject": NULLABLE_TEXT,
                "time": TIME,
                "data": {"type": "object"},
            },
        ),
        "EventPage": _obj(
            ["data", "next_cursor", "tail_cursor"],
            {
                "data": {"type": "array", "items": _ref("Event")},
                "next_cursor": NULLABLE_TEXT,
                "tail_cursor": NULLABLE_TEXT,
            },
        ),
        "Contact": _obj(
            ["id", "portfolio"],
            {
                "id": TEXT,
                "portfolio": TEXT,
                "bsuid": NULLABLE_TEXT,
                "phone": NULLABLE_TEXT,
                "merged_into": NULLABLE_TEXT,
                "created_at": NULLABLE_TIME,
                "updated_at": NULLABLE_TIME,
                "erased_at": NULLABLE_TIME,
                "bsuids": contact_ref,
                "phones": contact_ref,
                "history": contact_ref,
            },
        ),
        "Erasure": _obj(["id", "erased"], {"id": TEXT, "erased": {"type": "object"}}),
        "Delivery": _obj(
            ["id", "event_id", "subscriber_id", "state", "attempts"],
            {
                "id": TEXT,
                "event_id": TEXT,
                "subscriber_id": TEXT,
                "contact_id": NULLABLE_TEXT,
                "state": TEXT,
                "attempts": {"type": "integer"},
                "next_attempt_at": NULLABLE_TIME,
                "last_status": {"type": ["integer", "null"]},
                "last_error": NULLABLE_TEXT,
                "created_at": TIME,
                "updated_at": TIME,
                "attempt_log": {
                    "type": "array",
                    "items": _obj(
                        ["at", "latency_ms"],
                        {
                            "at": TIME,
                            "status": {"type": ["integer", "null"]},
                            "latency_ms": {"type": "number"},
                            "error": NULLABLE_TEXT,
                        },
                    ),
                },
            },
        ),
        "ReplayRequest": {
            "type": "object",
            "properties": {
                "event_id": NAME,
                "subscriber_id": NAME,
                "type": NAME,
                "since": TIME,
                "until": TIME,
                "states": {"type": "array", "items": {"enum": ["dead", "delivered", "expired"]}},
                "dry_run": {"type": "boolean", "description": "a JSON boolean (else 400)"},
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 100000,
                    "description": "at most this many deliveries, or quarantined payloads",
                },
                "quarantined": {"type": "boolean", "description": "a JSON boolean (else 400)"},
                "raw_id": NAME,
                "all": {
                    "type": "boolean",
                    "description": "replay without a filter (every dead letter of every "
                    "configured subscriber); otherwise name event_id, subscriber_id, type, since "
                    "or until (a request naming none of them is a 400)",
                },
            },
            "minProperties": 1,
        },
        "ReplayResult": _obj(
            ["matched", "dry_run"],
            {
                "matched": {"type": "integer"},
                "dry_run": {"type": "boolean"},
                "deliveries": {"type": "array", "items": TEXT},
                "requeued": {
                    "type": "integer",
                    "description": "deliveries queued again (not on a dry run)",
                },
                "added": {
                    "type": "integer",
                    "description": "with a subscriber: deliveries it is given for stored events "
                    "it never had (on a dry run: would be given)",
                },
                "skipped": {
                    "type": "object",
                    "required": ["reason", "subscribers"],
                    "properties": {
                        "reason": TEXT,
                        "subscribers": {
                            "type": "object",
                            "additionalProperties": {"type": "integer"},
                        },
                    },
                    "description": "deliveries the filter matched of subscribers no longer in "
                    "the config, per subscriber: left as they are (no lane would send them)",
                },
                "truncated": {"type": "boolean", "description": "more may have been left"},
                "outcomes": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "quarantined: how many payloads ended in each state (a "
                    "dry run: would_process, or would_stay_quarantined when the current mapping "
                    "still finds an issue)",
                },
                "payloads": {"type": "array", "items": {"type": "object"}},
            },
        ),
        "Quarantined": _obj(
            ["id", "channel_id", "provider", "received_at", "reason"],
            {
                "id": TEXT,
                "channel_id": TEXT,
                "provider": TEXT,
                "received_at": TIME,
                "content_type": TEXT,
                "reason": NULLABLE_TEXT,
                "bytes": {"type": "integer"},
            },
        ),
        "Raw": _obj(
            ["id", "channel_id", "provider", "received_at", "state", "events"],
            {
                "id": TEXT,
                "channel_id": TEXT,
                "provider": TEXT,
                "received_at": TIME,
                "state": TEXT,
                "reason": NULLABLE_TEXT,
                "event_count": {"type": "integer"},
                "events": {
                    "type": "array",
                    "items": _obj(["id", "type"], {"id": TEXT, "type": TEXT}),
                },
            },
        ),
        "Subscriber": _obj(
            ["id", "url", "enabled", "backlog"],
            {
                "id": TEXT,
                "url": {"type": "string", "description": "credentials masked"},
                "events": {"type": "array", "items": TEXT},
                "channels": {"type": "array", "items": TEXT},
                "enabled": {"type": "boolean"},
                "disabled_at": NULLABLE_TIME,
                "reason": NULLABLE_TEXT,
                "failing_since": NULLABLE_TIME,
                "backlog": _obj(
                    ["pending", "inflight", "held", "dead", "next_attempt_at", "oldest_open_at"],
                    {
                        "pending": COUNT,
                        "inflight": COUNT,
                        "held": COUNT,
                        "dead": COUNT,
                        "next_attempt_at": {
                            **NULLABLE_TIME,
                            "description": "when the next pending delivery is due",
                        },
                        "oldest_open_at": {
                            **NULLABLE_TIME,
                            "description": "creation of the oldest pending, in-flight or held one",
                        },
                    },
                ),
            },
        ),
        "SubscriberSwitch": _obj(["id", "enabled"], {"id": TEXT, "enabled": {"type": "boolean"}}),
        "SendRequest": _send_schema(),
        "Send": {"type": "object", "description": "a recorded send (canonical contract §3)"},
        "ProviderRequest": _obj(
            ["method", "url", "headers", "body"],
            {"method": TEXT, "url": TEXT, "headers": {"type": "object"}, "body": {}},
        ),
    }


def _operations() -> dict[str, Any]:
    op = _operation
    return {
        "/v1/events": {
            "get": op(
                "listEvents",
                "Stored canonical events, newest first (or, with `after`, newer ones oldest first)",
                _json(_ref("EventPage"), "a page of events"),
                [400],
                params=[
                    _param("type", "query", TEXT, "event type"),
                    _param(
                        "contact_id",
                        "query",
                        TEXT,
                        "one contact's events (a merged contact's id answers the survivor's)",
                    ),
                    _param("since", "query", TIME, "event time from (RFC 3339, any offset)"),
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                        "page size",
                    ),
                    _param("cursor", "query", FILLED, "`next_cursor` of the previous page"),
                    _param("after", "query", FILLED, "a `tail_cursor`: events newer than it"),
                    _param(
                        "wait",
                        "query",
                        {"type": "string", "pattern": "^[0-9]+(ms|s|m)$"},
                        "with `after`: wait up to this long (at most 60s) for a new event",
                    ),
                    _param(
                        "include_superseded",
                        "query",
                        {"type": "boolean", "default": False},
                        "include out-of-order statuses",
                    ),
                ],
            )
        },
        "/v1/contacts": {
            "get": op(
                "findContacts",
                "Every contact an identifier ever belonged to (one of bsuid, phone, username)",
                _json(_page("Contact"), "the contacts"),
                [400],
                params=[
                    _param("bsuid", "query", FILLED, "a BSUID"),
                    _param("phone", "query", FILLED, "an E.164 phone"),
                    _param("username", "query", FILLED, "a username"),
                    _param("portfolio", "query", TEXT, "one portfolio only"),
                ],
            )
        },
        "/v1/contacts/{contact_id}": {
            "get": op(
                "getContact",
                "A contact, its identifiers and their history",
                _json(_ref("Contact"), "the contact"),
                [404],
                params=[_path_id("contact_id", "ct_…")],
            ),
            "delete": op(
                "eraseContact",
                "Erase a contact's personal data",
                _json(_ref("Erasure"), "what was erased"),
                [404],
                params=[_path_id("contact_id", "ct_…")],
            ),
        },
        "/v1/contacts/{contact_id}/merge": {
            "post": op(
                "mergeContacts",
                "Merge another contact (`from`) into this one: the same person",
                _json(_ref("Contact"), "the surviving contact"),
                [400, 404, 409],
                params=[_path_id("contact_id", "the contact that survives (ct_…)")],
                body=_obj(["from"], {"from": {"type": "string", "pattern": "^ct_"}}),
            )
        },
        "/v1/deliveries": {
            "get": op(
                "listDeliveries",
                "Deliveries to subscribers, newest event first (one event's: by subscriber)",
                _json(_page("Delivery"), "the deliveries"),
                [400],
                params=[
                    _param(
                        "state",
                        "query",
                        {"type": "string", "enum": list(DELIVERY_STATES)},
                        "deliveries in this state",
                    ),
                    _param("subscriber_id", "query", TEXT, "one subscriber"),
                    _param("event_id", "query", TEXT, "one event"),
                    LIMIT_1000,
                ],
            )
        },
        "/v1/deliveries/{delivery_id}": {
            "get": op(
                "getDelivery",
                "A delivery with every attempt",
                _json(_ref("Delivery"), "the delivery"),
                [404],
                params=[_path_id("delivery_id", "dlv_…")],
            ),
        },
        "/v1/replays": {
            "post": op(
                "createReplay",
                "Re-deliver dead letters, or re-normalize quarantined payloads",
                _json(_ref("ReplayResult"), "the replay (202), or what it would do (200, dry run)"),
                [400, 422],
                body=_ref("ReplayRequest"),
                extra={"202": _json(_ref("ReplayResult"), "the replay was queued")},
            )
        },
        "/v1/quarantined": {
            "get": op(
                "listQuarantined",
                "Quarantined raw payloads with their reasons",
                _json(_page("Quarantined"), "the payloads"),
                [400],
                params=[LIMIT_1000],
            ),
        },
        "/v1/raws/{raw_id}": {
            "get": op(
                "getRaw",
                "What became of one received payload",
                _json(_ref("Raw"), "the payload's state and events"),
                [404],
                params=[_path_id("raw_id", "raw_…")],
            ),
        },
        "/v1/subscribers": {
            "get": op(
                "listSubscribers",
                "Subscribers and their state (URLs masked)",
                _json(_page("Subscriber"), "the subscribers"),
                [],
            ),
        },
        "/v1/subscribers/{subscriber_id}/enable": {
            "post": op(
                "enableSubscriber",
                "Resume deliveries",
                _json(_ref("SubscriberSwitch"), "enabled"),
                [404],
                params=[_path_id("subscriber_id", "a subscriber id")],
            ),
        },
        "/v1/subscribers/{subscriber_id}/disable": {
            "post": op(
                "disableSubscriber",
                "Pause deliveries",
                _json(_ref("SubscriberSwitch"), "disabled"),
                [404],
                params=[_path_id("subscriber_id", "a subscriber id")],
            ),
        },
        "/v1/subscribers/{subscriber_id}/retry": {
            "post": op(
                "retrySubscriber",
                "Retry everything pending for a subscriber now",
                _json(
                    _obj(["id", "retrying"], {"id": TEXT, "retrying": {"type": "integer"}}),
                    "how many deliveries were made due now",
                ),
                [404, 409],
                params=[_path_id("subscriber_id", "a subscriber id")],
            ),
        },
        "/v1/schemas/{name}": {
            "get": {
                "operationId": "getEventSchema",
                "summary": "The JSON Schema of one event type (`dataschema` of its events)",
                "security": [],
                "parameters": [_path_id("name", "an event type with .json")],
                "responses": {
                    "200": {
                        "description": "the JSON Schema (2020-12)",
                        "content": {"application/schema+json": {"schema": {"type": "object"}}},
                    },
                    "404": {
                        "description": "no such event type",
                        "content": {PROBLEM: {"schema": _ref("Problem")}},
                    },
                },
            }
        },
        "/v1/messages": {
            "post": op(
                "createMessage",
                "Send one canonical message (or, with dry_run, show the provider request)",
                _json(_ref("ProviderRequest"), "dry run: the exact provider request"),
                [400, 413, 422, 502],
                body=_ref("SendRequest"),
                params=[
                    _param(
                        "dry_run", "query", {"type": "boolean"}, "answer the provider request only"
                    ),
                    _param(
                        "Idempotency-Key",
                        "header",
                        {"type": "string", "maxLength": 255},
                        "a retried key answers the first send",
                    ),
                ],
                extra={"202": _json(_ref("Send"), "the send was accepted")},
            )
        },
        "/v1/messages/{send_id}": {
            "get": op(
                "getMessage",
                "A recorded send with its statuses",
                _json(_ref("Send"), "the send"),
                [404],
                params=[_path_id("send_id", "snd_…")],
            ),
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "getOpenapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
    }


def _operation(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    errors: list[int],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": ok, **(extra or {}), **_problems(*errors)},
    }
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


@cache
def openapi_document() -> dict[str, Any]:
    """The document (built once)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bspgate API",
            "version": __version__,
            "description": "One WhatsApp event stream from every BSP. Errors are RFC 9457 "
            "problems; times are RFC 3339 UTC with Z.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _operations(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def get_openapi(request: Request) -> Response:
    body = json.dumps(openapi_document()).encode()
    return Response(body, media_type="application/json")


def routes() -> list[Route]:
    return [Route("/v1/openapi.json", get_openapi, methods=["GET"])]
