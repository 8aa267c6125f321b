"""How the dispatcher POSTs a delivery: aiohttp in production, httpx where tests inject it.

Measured on this class of machine (docs/performance.md): at 32-64 concurrent deliveries a bare
aiohttp session does ~19,000 POSTs/s, httpx over aiohttp's transport ~5,600/s and httpx's default
transport ~700/s. The dispatcher's hot path is one POST per delivery, so production posts through
one shared aiohttp session. An injected `httpx.AsyncClient` (tests with respx or a mock transport)
is used through the same small interface, so the dispatcher never knows which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx


@dataclass(frozen=True, slots=True)
class PostResult:
    """A subscriber's answer: the status and the Retry-After header, if any."""

    status: int
    retry_after: str | None


class PostFailed(Exception):
    """No HTTP answer: connection refused or reset, DNS, TLS, timeout."""


class Poster(Protocol):
    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> PostResult: ...

    async def aclose(self) -> None: ...


class HttpxPoster:
    """Posts through an httpx client (respx and mock transports work as usual)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> PostResult:
        try:
            response = await self.client.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise PostFailed(f"{type(exc).__name__}: {exc}") from exc
        return PostResult(response.status_code, response.headers.get("retry-after"))

    async def aclose(self) -> None:
        """The injected client belongs to whoever made it."""


class AiohttpPoster:
    """Posts through one aiohttp session, opened in the running loop on first use."""

    def __init__(self, connections: int = 100) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> PostResult:
        session = self._open()
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                await response.read()  # drain, so the connection goes back to the pool
                return PostResult(response.status, response.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PostFailed(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
