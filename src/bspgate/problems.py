"""RFC 9457 problem details: every error answer of the HTTP surface is one of these.

Built with the `rfc9457` package; `type` is `urn:bspgate:problem:<code>` and `code` repeats the
machine-readable code as the canonical contract asks (`auth_template_requires_phone`, …).
"""

from __future__ import annotations

from typing import Any

import orjson
from rfc9457 import Problem
from starlette.responses import Response

MEDIA_TYPE = "application/problem+json"


def problem(
    status: int, code: str, title: str, detail: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The problem document as a dict."""
    doc = Problem(
        title, type_=f"urn:bspgate:problem:{code}", detail=detail, status=status, code=code, **extra
    ).marshal()
    doc.setdefault("detail", detail or title)
    return doc


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A `Response` carrying the problem document."""
    body = orjson.dumps(problem(status, code, title, detail, **extra))
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)
