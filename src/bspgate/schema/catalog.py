"""Events that describe themselves: `dataschema` and W3C trace context on every event.

- `dataschema`: `{public_url}/v1/schemas/{type}.json`, served by `GET /v1/schemas/{type}.json`
  (no key needed: a schema holds no data). A canonical type's schema is the canonical event schema
  with `type` fixed to it; an operational type's (`bspgate.*`) is a CloudEvent with an object
  `data`.
- `traceparent` (CloudEvents distributed-tracing extension): the W3C `traceparent` header the
  webhook came with, or a new one when it had none (or an invalid one), so every event of one
  webhook, its deliveries' `traceparent` headers and its log lines share one trace id.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bspgate.ids import random_bytes
from bspgate.problems import problem_response

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
OPERATIONAL_TYPES = (
    "bspgate.subscriber.disabled",
    "bspgate.subscriber.recovered",
    "bspgate.delivery.dead_lettered",
    "bspgate.webhook.quarantined",
    "bspgate.mapping.drift",
)


def traceparent_for(header: str | None) -> str:
    """The webhook's valid `traceparent`, else a new sampled one."""
    if header:
        match = _TRACEPARENT.match(header.strip().lower())
        if match and set(match.group(1)) != {"0"} and set(match.group(2)) != {"0"}:
            return header.strip().lower()
    ids = random_bytes(24).hex()  # trace id (16 bytes) and parent id (8 bytes)
    return f"00-{ids[:32]}-{ids[32:]}-01"


def describe(event: dict[str, Any], schema_base: str, traceparent: str | None) -> None:
    """Add `dataschema` (when the base is known) and `traceparent` to an event, in place."""
    if schema_base:
        event["dataschema"] = f"{schema_base}/{event['type']}.json"
    if traceparent:
        event["traceparent"] = traceparent


def traceparent_of(body: str) -> str | None:
    """The `traceparent` attribute of a stored event body, without parsing all of it."""
    at = body.find('"traceparent":"')
    if at < 0:
        return None
    start = at + len('"traceparent":"')
    value = body[start : start + 55]
    return value if _TRACEPARENT.match(value) else None


@cache
def _canonical() -> dict[str, Any]:
    text = resources.files("bspgate.schema").joinpath("canonical_event.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def known_types() -> tuple[str, ...]:
    return (*_canonical()["properties"]["type"]["enum"], *OPERATIONAL_TYPES)


def schema_for(type_: str, url: str) -> dict[str, Any] | None:
    """The JSON Schema of events of `type_`, with `url` as its `$id`; None for an unknown type."""
    if type_ in OPERATIONAL_TYPES:
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": url,
            "title": type_,
            "type": "object",
            "required": ["specversion", "id", "source", "type", "time", "data"],
            "properties": {
                "specversion": {"const": "1.0"},
                "id": {"type": "string", "pattern": "^ops_"},
                "source": {"const": "/bspgate"},
                "type": {"const": type_},
                "subject": {"type": "string"},
                "time": {"type": "string"},
                "datacontenttype": {"const": "application/json"},
                "data": {"type": "object"},
            },
        }
    if type_ not in _canonical()["properties"]["type"]["enum"]:
        return None
    schema = copy.deepcopy(_canonical())
    schema["$id"] = url
    schema["title"] = type_
    schema["properties"]["type"] = {"const": type_}
    return schema


async def get_schema(request: Request) -> Response:
    name = request.path_params["name"]
    type_ = name.removesuffix(".json")
    schema = schema_for(type_, str(request.url)) if name.endswith(".json") else None
    if schema is None:
        known = ", ".join(known_types())
        return problem_response(
            404, "unknown_type", "Unknown event type", f"no schema for {name!r} (known: {known})"
        )
    return JSONResponse(schema, media_type="application/schema+json")


def routes() -> list[Route]:
    return [Route("/v1/schemas/{name}", get_schema, methods=["GET"])]
