"""Starlette's TestClient, imported once without its httpx deprecation warning.

Starlette >= 1.0 prefers the `httpx2` package for its TestClient and warns (an error under
`filterwarnings = error`) when it falls back to `httpx`. The fallback works the same for every
test here; until the test dependencies carry `httpx2`, this module imports the client with that
one warning silenced, so each test module does not have to.
"""

from __future__ import annotations

import warnings

from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore",
        message=r"Using `httpx` with `starlette.testclient`",
        category=StarletteDeprecationWarning,
    )
    from starlette.testclient import TestClient

__all__ = ["TestClient"]
