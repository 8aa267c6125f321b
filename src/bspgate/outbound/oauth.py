"""OAuth2 client credentials (RFC 6749 §4.4) for provider sends, with authlib's OAuth2 core.

    auth:
      scheme: oauth2_client_credentials
      token_url: https://auth.sinch.com/oauth2/token     # a template: ${settings.…} allowed
      client_id: key_id                                  # secret names
      client_secret: key_secret
      scope: ""                                          # optional
      auth_method: client_secret_basic                   # or client_secret_post

authlib builds the token request (`prepare_token_request`, `ClientAuth` for the client's
credentials) and reads the answer (`OAuth2Token`: `expires_in` -> `expires_at`, `is_expired`);
the request goes through the gateway's shared httpx client. A token is cached per (token URL,
client id, scope) until 60 s before it expires; concurrent sends wait for one fetch. A provider
401 drops the cached token, and the send is repeated once with a fresh one (client.py). A token
endpoint that refuses or does not answer is a 502 `provider_error` naming the token URL's host.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from authlib.oauth2.auth import ClientAuth  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749 import OAuth2Token  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.parameters import (  # type: ignore[import-untyped]
    prepare_token_request,
)

from bspgate.errors import SendError

AUTH_METHODS = ("client_secret_basic", "client_secret_post")
LEEWAY = 60  # seconds before expiry at which a cached token is replaced


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What one send needs to obtain its bearer token (rendered per channel)."""

    token_url: str
    client_id: str
    client_secret: str
    scope: str = ""
    auth_method: str = "client_secret_basic"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.token_url, self.client_id, self.scope)


class TokenCache:
    """Access tokens by (token URL, client id, scope), fetched on demand, kept until expiry."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], OAuth2Token] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self.fetches = 0  # token requests made (observable in tests and metrics)

    def drop(self, wanted: TokenRequest) -> None:
        """Forget the cached token (the provider answered 401 with it)."""
        self._tokens.pop(wanted.key, None)

    async def token(self, client: httpx.AsyncClient, wanted: TokenRequest) -> str:
        """A valid access token, from the cache or freshly fetched."""
        cached = self._tokens.get(wanted.key)
        if cached is not None and not cached.is_expired(leeway=LEEWAY):
            return str(cached["access_token"])
        lock = self._locks.setdefault(wanted.key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(wanted.key)
            if cached is not None and not cached.is_expired(leeway=LEEWAY):
                return str(cached["access_token"])
            token = await self._fetch(client, wanted)
            self._tokens[wanted.key] = token
            return str(token["access_token"])

    async def _fetch(self, client: httpx.AsyncClient, wanted: TokenRequest) -> OAuth2Token:
        self.fetches += 1
        host = urlsplit(wanted.token_url).netloc or wanted.token_url
        body = prepare_token_request("client_credentials", scope=wanted.scope or None)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        auth = ClientAuth(wanted.client_id, wanted.client_secret, wanted.auth_method)
        url, headers, body = auth.prepare("POST", wanted.token_url, headers, body)
        try:
            response = await client.post(url, headers=headers, content=body, timeout=15.0)
        except httpx.HTTPError as exc:
            why = f"the token endpoint {host} did not answer ({type(exc).__name__})"
            raise _token_error(why) from None
        answer: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            answer = orjson.loads(response.content) if response.content else None
        if (
            not response.is_success
            or not isinstance(answer, dict)
            or not answer.get("access_token")
        ):
            reason = answer.get("error") if isinstance(answer, dict) else None
            detail = f" ({reason})" if isinstance(reason, str) else ""
            raise _token_error(
                f"the token endpoint {host} refused the client credentials: "
                f"HTTP {response.status_code}{detail}",
                status=response.status_code,
            )
        return OAuth2Token.from_dict(answer)


def _token_error(detail: str, status: int | None = None) -> SendError:
    return SendError(
        "provider_error",
        detail,
        status=502,
        provider_status=status,
        retryable=status is None or status >= 500,
    )
