"""How the dispatcher POSTs a delivery: aiohttp in production, httpx where tests inject it.

Safety: subscribers come from the operator's config, so loopback and private addresses stay
allowed, but link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254)
are refused unless the subscriber sets `allow_link_local: true`. The check is on the address
actually connected to: a name is checked after it resolves (aiohttp's resolver, wrapped), an IP
literal before connecting. Redirects are never followed (a 3xx is a failed attempt).

Measured on this class of machine (docs/performance.md): at 32-64 concurrent deliveries a bare
aiohttp session does ~19,000 POSTs/s, httpx over aiohttp's transport ~5,600/s and httpx's default
transport ~700/s. The dispatcher's hot path is one POST per delivery, so production posts through
one shared aiohttp session. An injected `httpx.AsyncClient` (tests with respx or a mock transport)
is used through the same small interface, so the dispatcher never knows which one it has.

The session's connection pool is no limit of its own: each lane already bounds its requests
(`max_in_flight`), and a pool smaller than their sum let a slow subscriber hold every connection
while another subscriber's requests waited for one, their timeout running (aiohttp's `total`
counts that wait). `connection_limit` sizes the pool to the lanes' sum, so a request never
waits for a connection, and its timeout is the subscriber's answer time alone.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from bspgate.config import Subscriber

_LINK_LOCAL = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
REFUSED = "refused: link-local or cloud metadata address (set allow_link_local: true to allow)"


def forbidden(address: str) -> bool:
    """True for a link-local or cloud metadata address (IPv4-mapped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in _LINK_LOCAL)


@lru_cache(maxsize=1024)  # a subscriber's URL is fixed: parse it once, not per POST
def refused_literal(url: str) -> bool:
    """The URL's host is an IP literal that is link-local (no resolver sees literals)."""
    host = urlsplit(url).hostname or ""
    return forbidden(host)


class GuardedResolver(AbstractResolver):
    """Resolves as `inner` does, and refuses a name that resolves to a link-local address."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self.inner = inner or aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if any(forbidden(result["host"]) for result in results):
            raise OSError(f"{host} resolves to a link-local address: {REFUSED}")
        return results

    async def close(self) -> None:
        await self.inner.close()


@dataclass(frozen=True, slots=True)
class PostResult:
    """A subscriber's answer: the status and the Retry-After header, if any."""

    status: int
    retry_after: str | None


class PostFailed(Exception):
    """No HTTP answer: connection refused or reset, DNS, TLS, timeout."""


class Poster(Protocol):
    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        *,
        allow_link_local: bool = False,
    ) -> PostResult: ...

    async def aclose(self) -> None: ...


class HttpxPoster:
    """Posts through an httpx client (respx and mock transports work as usual)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        *,
        allow_link_local: bool = False,
    ) -> PostResult:
        if not allow_link_local and refused_literal(url):
            raise PostFailed(REFUSED)
        try:
            response = await self.client.post(
                url, content=body, headers=headers, timeout=timeout, follow_redirects=False
            )
        except httpx.HTTPError as exc:
            raise PostFailed(f"{type(exc).__name__}: {exc}") from exc
        return PostResult(response.status_code, response.headers.get("retry-after"))

    async def aclose(self) -> None:
        """The injected client belongs to whoever made it."""


def connection_limit(subscribers: Iterable[Subscriber]) -> int:
    """The connections the dispatcher's lanes may open at once: the sum of their
    `max_in_flight`, each lane's own limit (a lane never has more requests open)."""
    return sum(subscriber.max_in_flight for subscriber in subscribers)


class AiohttpPoster:
    """Posts through one aiohttp session, opened in the running loop on first use.

    `connections`: the pool's limit, `connection_limit(subscribers)` (0: none). Never less than
    what the lanes may have open together: a request waiting for a connection would spend its
    timeout waiting for another subscriber (see the module docstring).
    """

    def __init__(self, connections: int = 0) -> None:
        self._connections = connections
        self._sessions: dict[bool, aiohttp.ClientSession] = {}

    def _open(self, allow_link_local: bool) -> aiohttp.ClientSession:
        """One session for guarded subscribers, one for those allowing link-local addresses."""
        session = self._sessions.get(allow_link_local)
        if session is None:
            resolver = None if allow_link_local else GuardedResolver()
            connector = aiohttp.TCPConnector(
                limit=self._connections, ttl_dns_cache=300, resolver=resolver
            )
            session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
            self._sessions[allow_link_local] = session
        return session

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        *,
        allow_link_local: bool = False,
    ) -> PostResult:
        if not allow_link_local and refused_literal(url):
            raise PostFailed(REFUSED)
        session = self._open(allow_link_local)
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
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
