"""Sends one `ProviderRequest` with the shared httpx client and maps the provider's answer.

A 2xx answer carrying a message id (the mapping's `answer.message_id`) is a success; a 2xx
answer without one is an unknown outcome (`outcome: unknown`: accepted, so maybe sent). Anything
else is a `SendError` with status 502: the provider's own rejection keeps its code and text
(`provider_code`, `detail`) and maps to a canonical code where the mapping says so (Meta 131062 ->
`auth_template_requires_phone`), else `provider_error`.

Retries: a request that never reached the provider (connection refused) is always safe to repeat.
Timeouts, 429 and 5xx are repeated only when the mapping declares the call safe (`retry.safe`:
the provider de-duplicates it, e.g. Azure's Repeatability-Request-ID); otherwise the answer is
`502` with `retryable: true` and the caller decides. Once one attempt may have reached the
provider (a timeout after the request was written, a 5xx), the send's outcome stays unknown
whatever the later attempts answer: a later "connection refused" says nothing about the first.

The provider's rejection text is repeated to the caller (and stored with the send), so the
channel's secret values and phone numbers in it are masked first. Logs carry no phone numbers
or bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson
import structlog

from bspgate.errors import SendError
from bspgate.masking import mask_phones
from bspgate.outbound.oauth import TokenCache
from bspgate.outbound.rewrite import ProviderRequest
from bspgate.outbound.spec import OutboundSpec

_log = structlog.get_logger("bspgate.outbound")
Sleep = Callable[[float], Awaitable[None]]
DEFAULT_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    """A provider's acceptance: its message id, HTTP status and parsed body."""

    message_id: str
    status: int
    body: Any


def _parse(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return None


def _rejection(
    spec: OutboundSpec, request: ProviderRequest, response: httpx.Response, body: Any
) -> SendError:
    """The provider's rejection; its text keeps what it says, not the secrets or phones it quotes.

    Twilio, for one, quotes the number ("The 'To' number whatsapp:+1… is not a valid phone
    number.") or the Account SID in a path (20404), and the detail is answered, stored and
    replayed: secret values are masked as in a dry run, phones as in the logs.
    """
    code = spec.error_code(body) if spec.error_code and body is not None else None
    message = spec.error_message(body) if spec.error_message and body is not None else None
    provider_code = None if code is None else str(code)
    canonical = spec.error_map.get(provider_code or "", "provider_error")
    detail = (
        mask_phones(request.scrub(str(message)))
        if message
        else f"{spec.provider} answered HTTP {response.status_code}"
    )
    return SendError(
        canonical,
        detail,
        status=502,
        provider=spec.provider,
        provider_status=response.status_code,
        provider_code=provider_code,
        retryable=response.status_code == 429 or response.status_code >= 500,
    )


def _unreachable(spec: OutboundSpec, why: str, *, written: bool = False) -> SendError:
    """`written`: the request may have reached the provider (the outcome is unknown).

    The detail states what happened only: the service's unknown-outcome answer adds what it
    means for the message (`service._unknown_error`), so it is said once.
    """
    happened = (
        f"{spec.provider} did not answer ({why})"
        if written
        else f"{spec.provider} could not be reached ({why}); nothing was sent"
    )
    return SendError(
        "provider_error",
        happened,
        status=502,
        provider=spec.provider,
        provider_code=None,
        retryable=True,
        **({"outcome": "unknown"} if written else {}),
    )


async def deliver(
    client: httpx.AsyncClient,
    spec: OutboundSpec,
    request: ProviderRequest,
    *,
    sleep: Sleep = asyncio.sleep,
    timeout: float = DEFAULT_TIMEOUT,
    tokens: TokenCache | None = None,
) -> ProviderAnswer:
    """Send `request`; answers the provider's acceptance or raises `SendError` (502).

    An OAuth2 send (`request.oauth`) carries a token from `tokens`; a 401 drops it and the
    request is repeated once with a fresh token (the provider refused the token, not the send).
    """
    check_configured(spec, request)
    attempts = spec.retry.attempts if spec.retry.safe else 1
    attempt = 0
    refreshed = False
    reached: tuple[int, SendError] | None = None  # the first attempt that may have sent it
    tokens = tokens if tokens is not None else TokenCache()
    while True:
        attempt += 1
        started = time.perf_counter()
        headers = request.headers
        if request.oauth is not None:
            bearer = await tokens.token(client, request.oauth)
            headers = {**headers, "Authorization": f"Bearer {bearer}"}
        try:
            response = await client.request(
                request.method,
                request.url,
                headers=headers,
                content=request.content,
                timeout=timeout,
            )
        except httpx.ConnectError:
            # nothing reached the provider: repeating cannot send twice
            error = _unreachable(spec, "connection failed")
            if attempt < max(attempts, 2):
                await sleep(_backoff(spec, attempt))
                continue
            raise _final(error, reached, attempt) from None
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            error = _unreachable(spec, type(exc).__name__, written=_may_have_reached(exc))
            reached = reached or ((attempt, error) if _maybe_sent(error) else None)
            if attempt < attempts:
                await sleep(_backoff(spec, attempt))
                continue
            raise _final(error, reached, attempt) from None
        latency = (time.perf_counter() - started) * 1000
        body = _parse(response)
        _log.info(
            "outbound.answer",
            provider=spec.provider,
            status=response.status_code,
            attempt=attempt,
            latency_ms=round(latency, 1),
        )
        if response.is_success:
            message_id = spec.message_id(body) if body is not None else None
            if not message_id:
                # The provider took the request: the message may well go out. Not a rejection
                # (a caller would resend under a new key), but an unknown outcome, kept for
                # every retry with the key.
                raise SendError(
                    "provider_error",
                    f"{spec.provider} accepted the request (HTTP {response.status_code}) but "
                    f"its answer has no message id ({spec.file} answer.message_id)",
                    status=502,
                    provider=spec.provider,
                    provider_status=response.status_code,
                    provider_code=None,
                    retryable=False,
                    outcome="unknown",
                )
            return ProviderAnswer(str(message_id), response.status_code, body)
        if response.status_code == 401 and request.oauth is not None and not refreshed:
            tokens.drop(request.oauth)  # expired or revoked early: one fresh token, one resend
            refreshed = True
            attempt -= 1
            continue
        error = _rejection(spec, request, response, body)
        reached = reached or ((attempt, error) if _maybe_sent(error) else None)
        if error.extra.get("retryable") and attempt < attempts:
            await sleep(_backoff(spec, attempt))
            continue
        raise _final(error, reached, attempt)


def check_configured(spec: OutboundSpec, request: ProviderRequest) -> None:
    """`500 channel_not_configured` when the channel lacks a secret the send needs."""
    if request.missing_secrets:
        raise SendError(
            "channel_not_configured",
            f"the channel has no {', '.join(request.missing_secrets)} secret for {spec.provider}",
            status=500,
        )


def _maybe_sent(error: SendError) -> bool:
    """The attempt may have reached the provider: written without an answer, or a 5xx."""
    status = error.extra.get("provider_status")
    return error.extra.get("outcome") == "unknown" or (isinstance(status, int) and status >= 500)


def _final(error: SendError, reached: tuple[int, SendError] | None, attempts: int) -> SendError:
    """The error a send ends with: the first attempt that may have sent the message wins.

    An earlier attempt that may have reached the provider (Azure retries timeouts and 5xx) keeps
    the outcome unknown even when a later attempt could not connect or was refused: answering
    "nothing was sent" would free the Idempotency-Key, and a retry with it would make a new send
    (a new Repeatability-Request-ID) that the provider cannot recognise as a repeat.
    """
    if reached is None or _maybe_sent(error):
        return error  # nothing ambiguous before, or the last attempt says "unknown" itself
    attempt, first = reached
    return SendError(
        first.code,
        f"{first.detail} (attempt {attempt} of {attempts}; later attempts settled nothing)",
        status=first.status,
        **{**first.extra, "outcome": "unknown"},
    )


def _may_have_reached(exc: httpx.HTTPError) -> bool:
    """False only when the request surely never left: the connection was never made.

    httpx-aiohttp maps a server dropping the connection after the request (aiohttp's
    ServerDisconnectedError) to `httpx.ConnectTimeout`, so aiohttp's own exception decides.
    """
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError | aiohttp.ServerTimeoutError):
        return not isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _backoff(spec: OutboundSpec, attempt: int) -> float:
    schedule = spec.retry.backoff or (0.2,)
    return schedule[min(attempt - 1, len(schedule) - 1)]
