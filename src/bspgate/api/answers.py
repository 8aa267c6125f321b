"""`TimedJSON`: the JSON answer of `/v1` reads, every time field in RFC 3339 UTC with `Z`.

Stored rows keep what their writers stored (epoch seconds for schedules, RFC 3339 text);
answers convert at the edge so clients see one format (`bspgate.times.rfc3339_fields`).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from bspgate.times import rfc3339_fields


class TimedJSON(Response):
    """`application/json` with time fields normalized."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(rfc3339_fields(content))
