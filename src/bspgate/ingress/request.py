"""The request a webhook verifier looks at: method, public URL, headers, raw body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a verifier may look at. `url` is the public URL the provider called."""

    method: str
    url: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    content_type: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())
