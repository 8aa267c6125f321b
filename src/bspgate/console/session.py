"""Console sign-in: API key -> a server-side session; CSRF tokens; the audit trail; reveals.

A session is a row of `console_sessions` (migration 012) keyed by the SHA-256 of a random id;
the cookie is Starlette's `SessionMiddleware` (itsdangerous-signed, HttpOnly, SameSite=Strict,
`Secure` behind an https public URL, path `/console`) holding that id, the API key's fingerprint,
the CSRF token and a reveal. A session ends after 8 h without a request or 24 h after sign-in
(the row's times, on the gateway's clock) and at once on "Sign out", which deletes the row: a
copy of the cookie taken before is worth nothing, on every replica. The cookie's key is derived
from the configured API keys, so removing or changing a key ends the sessions opened with it.
Every POST must carry the session's CSRF token (and, when the browser sends one, an `Origin` of
this server: its `Host`, or `server.public_url` behind a proxy); a missing or wrong token is a
403 and changes nothing. A NUL character in a page's path or query, or in a form field, is a
400 page before anything is read (as `/v1` answers it: no id or filter holds one, and PostgreSQL
refuses it in a text parameter). A reveal unmasks one page for five minutes and is written to
`console_audit` first. An action posted after the session ended sends the operator to sign in,
then back to the page the form was on (its same-origin `Referer`), never to the POST-only URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import orjson
import structlog
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from bspgate.api.auth import holds_nul
from bspgate.config import Settings
from bspgate.console.queries import (
    end_session,
    insert_audit,
    session_record,
    start_session,
    touch_session,
)
from bspgate.times import iso

if TYPE_CHECKING:
    from bspgate.app import Gateway

SESSION_SECONDS = 8 * 3600
ABSOLUTE_SECONDS = 24 * 3600
TOUCH_SECONDS = 60
REVEAL_SECONDS = 300
FAILED_SIGN_IN_PAUSE = 0.5
_log = structlog.get_logger("bspgate.console")
Page = Callable[[Request], Awaitable[Response]]
Action = Callable[[Request, FormData], Awaitable[Response]]


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def session_secret(settings: Settings) -> str:
    """HMAC of every API key: stable across restarts and replicas, new when a key changes."""
    keys = sorted(k.key.reveal() for k in settings.api_keys)
    if not keys:
        return secrets.token_hex(32)  # nobody can sign in; the cookie key is irrelevant
    return hmac.new(b"bspgate console session v1", "\0".join(keys).encode(), "sha256").hexdigest()


def _fingerprint(settings: Settings, key: str) -> str:
    return hmac.new(session_secret(settings).encode(), key.encode(), hashlib.sha256).hexdigest()[
        :32
    ]


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


async def identify(request: Request) -> str | None:
    """The signed-in operator (the API key's name), checked against the session's stored record
    once per request; None when signed out, expired, ended by "Sign out" or the key changed."""
    if hasattr(request.state, "console_operator"):
        return operator(request)
    name = await _live_session(request)
    if name is None and "sid" in request.session:
        request.session.clear()  # an ended session: the browser drops the cookie
    request.state.console_operator = name
    return name


async def _live_session(request: Request) -> str | None:
    session_id, mark = request.session.get("sid"), str(request.session.get("kf") or "")
    if not isinstance(session_id, str) or not session_id:
        return None
    gateway = gateway_of(request)
    digest = _digest(session_id)
    record = await gateway.store.read(lambda tx: session_record(tx, digest))
    if record is None:
        return None
    name, started, seen = record
    now = gateway.clock().timestamp()
    if now - started > ABSOLUTE_SECONDS or now - seen > SESSION_SECONDS:
        await gateway.store.transaction(lambda tx: end_session(tx, digest))
        return None
    settings = gateway.settings
    if not any(
        key.name == name and hmac.compare_digest(_fingerprint(settings, key.key.reveal()), mark)
        for key in settings.api_keys
    ):
        return None  # the key was removed or changed since sign-in
    if now - seen > TOUCH_SECONDS:  # activity, written at most once a minute per session
        await gateway.store.transaction(lambda tx: touch_session(tx, digest, now))
    return name


def operator(request: Request) -> str | None:
    """The operator `identify` found for this request (None before it ran, or signed out)."""
    known = getattr(request.state, "console_operator", None)
    return known if isinstance(known, str) else None


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def revealed(request: Request, path: str | None = None) -> bool:
    """Is this page (or `path`) revealed for the signed-in operator right now?"""
    grant = request.session.get("reveal") or {}
    wanted = path or request.url.path
    return grant.get("path") == wanted and float(grant.get("until", 0)) > time.time()


async def audit(request: Request, action: str, target: str, **detail: Any) -> int:
    """Record what an operator did (never phones or texts in `detail`); answers the entry id."""
    gateway = gateway_of(request)
    actor = operator(request) or "-"
    stamp = iso(gateway.clock())  # `…Z`, as every time bspgate writes
    text = orjson.dumps(detail).decode()

    entry: int = await gateway.store.transaction(
        lambda tx: insert_audit(tx, stamp, actor, action, target, text)
    )
    _log.info("console.audit", actor=actor, action=action, target=target, entry=entry)
    return entry


def _login_redirect(request: Request) -> Response:
    """To the sign-in form, with the page to come back to as `next`."""
    if request.method in ("GET", "HEAD"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:  # an action's URL answers POST only: back to the page its form was on
        target = _page_before(request)
    return RedirectResponse(f"/console/login?next={quote(safe_next(target))}", 303)


def _page_before(request: Request) -> str:
    """The console page an action was posted from: its same-origin `Referer` (the console sends
    `Referrer-Policy: same-origin`), else the page of what it acts on, or of its section."""
    referer = request.headers.get("referer", "")
    parts = urlsplit(referer)
    if referer and _ours(request, referer) and parts.path.startswith("/console"):
        return parts.path + (f"?{parts.query}" if parts.query else "")
    path = request.url.path
    steps = path.split("/")  # /console/events/<id>/deliver: the event's own page
    if len(steps) == 5 and steps[2] in ("events", "contacts", "quarantine"):
        return "/".join(steps[:4])
    for prefix, section in _SECTIONS:
        if path.startswith(prefix):
            return section
    return "/console/"


# an action's path -> the page of its section (when the browser sent no `Referer`)
_SECTIONS = (
    ("/console/deliveries", "/console/deliveries"),
    ("/console/subscribers/", "/console/deliveries"),
    ("/console/events/", "/console/events"),
    ("/console/contacts/", "/console/contacts"),
    ("/console/quarantine/", "/console/quarantine"),
    ("/console/send", "/console/send"),
    ("/console/playground", "/console/playground"),
)


def refused_nul(request: Request, where: str) -> Response:
    """400: a NUL character where no id, filter or field holds one (nothing was read)."""
    from bspgate.console.render import render

    _log.warning("console.nul_refused", where=where)  # the path may hold what was typed
    return render(
        request,
        "message.html",
        {
            "title": "Bad request",
            "message": f"The {where} holds a NUL character (%00), which no id, filter or field "
            "value holds. Nothing was read or changed.",
        },
        400,
    )


def page(endpoint: Page) -> Page:
    """A GET page: signed-in operators only (others are sent to the sign-in form); a NUL in
    the path or query is a 400 page."""

    @wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        if await identify(request) is None:
            return _login_redirect(request)
        if holds_nul(request):
            return refused_nul(request, "address")
        return await endpoint(request)

    return wrapper


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of `url` (the default port of http and https spelled out)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return ("", "", None)  # an unparseable port matches nothing
    return scheme, (parts.hostname or ""), port


def _same_origin(request: Request) -> bool:
    """No `Origin` (an older browser), or one of this server: the `Host` it was asked by, or
    `server.public_url` (a TLS proxy that forwards its own upstream address as `Host`)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return _ours(request, origin)


def _ours(request: Request, url: str) -> bool:
    """Is `url` (an `Origin` or a `Referer`) of this server, as `_same_origin` decides?"""
    if urlsplit(url).netloc == request.headers.get("host", ""):
        return True
    public = _origin(gateway_of(request).settings.server.public_url)
    return public[1] != "" and _origin(url) == public


async def checked_form(request: Request) -> FormData | None:
    """The form when its CSRF token matches the session's (and the origin is ours), else None."""
    form = await request.form()
    sent = form.get("csrf")
    expected = request.session.get("csrf")
    if not (isinstance(sent, str) and expected and _same_origin(request)):
        return None
    return form if hmac.compare_digest(sent, str(expected)) else None


def forbidden(request: Request) -> Response:
    from bspgate.console.render import render

    _log.warning("console.csrf_refused", path=request.url.path)
    return render(
        request,
        "message.html",
        {
            "title": "Refused",
            "message": "This action was refused: its form token is missing or out of date "
            "(CSRF protection). Nothing was changed. Reload the page and try again.",
        },
        403,
    )


def action(endpoint: Action) -> Page:
    """A POST action: signed in, CSRF token checked; the endpoint gets the parsed form. A NUL
    in the path, the query or a form field is a 400 page and changes nothing."""

    @wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        if await identify(request) is None:
            return _login_redirect(request)
        form = await checked_form(request)
        if form is None:
            return forbidden(request)
        if holds_nul(request):
            return refused_nul(request, "address")
        if _form_holds_nul(form):
            return refused_nul(request, "form")
        return await endpoint(request, form)

    return wrapper


def _form_holds_nul(form: FormData) -> bool:
    """A NUL character in a form field's name or (text) value."""
    return any(
        "\x00" in key or (isinstance(value, str) and "\x00" in value)
        for key, value in form.multi_items()
    )


def safe_next(value: Any) -> str:
    """A console path to go back to (never another site, never a NUL)."""
    text = str(value or "")
    if not text.startswith("/console") or text.startswith("//") or "\\" in text or "\x00" in text:
        return "/console/"
    return text


# -- endpoints ---------------------------------------------------------------------------------
async def login_form(request: Request) -> Response:
    from bspgate.console.render import render

    if await identify(request) is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")), 303)
    configured = bool(gateway_of(request).settings.api_keys)
    return render(
        request,
        "login.html",
        {"next": safe_next(request.query_params.get("next")), "configured": configured},
    )


async def login(request: Request) -> Response:
    from bspgate.console.render import render

    form = await checked_form(request)
    if form is None:
        return forbidden(request)
    gateway = gateway_of(request)
    settings = gateway.settings
    given = str(form.get("key") or "").strip().encode()
    match = None
    for key in settings.api_keys:
        if hmac.compare_digest(given, key.key.reveal().encode()) and given:
            match = key
    target = safe_next(form.get("next"))
    if match is None:
        _log.warning("console.sign_in_refused")
        await asyncio.sleep(FAILED_SIGN_IN_PAUSE)  # slows guessing; a real key never waits
        context = {"next": target, "configured": bool(settings.api_keys), "error": True}
        return render(request, "login.html", context, 401)
    previous = request.session.get("sid")
    session_id = secrets.token_urlsafe(32)
    digest, name, now = _digest(session_id), match.name, gateway.clock().timestamp()

    def record(tx: Any) -> None:
        if isinstance(previous, str):  # signing in again ends this browser's earlier session
            end_session(tx, _digest(previous))
        start_session(tx, digest, name, now, SESSION_SECONDS, ABSOLUTE_SECONDS)

    await gateway.store.transaction(record)
    request.session.clear()  # a fresh session (and CSRF token) for the signed-in operator
    request.session.update(
        sid=session_id,
        kf=_fingerprint(settings, match.key.reveal()),
        csrf=secrets.token_urlsafe(32),
    )
    request.state.console_operator = name
    await audit(request, "sign_in", "/console/login")
    return RedirectResponse(target, 303)


@action
async def logout(request: Request, form: FormData) -> Response:
    await audit(request, "sign_out", "/console/logout")
    digest = _digest(str(request.session.get("sid")))
    await gateway_of(request).store.transaction(lambda tx: end_session(tx, digest))
    request.session.clear()
    return RedirectResponse("/console/login", 303)


@action
async def reveal(request: Request, form: FormData) -> Response:
    """Unmask one page for five minutes; the audit entry is written before anything shows."""
    target = safe_next(form.get("path"))
    path = urlsplit(target).path
    entry = await audit(request, "reveal", path, reason=str(form.get("reason") or "")[:200])
    request.session["reveal"] = {
        "path": path,
        "until": time.time() + REVEAL_SECONDS,
        "entry": entry,
    }
    return RedirectResponse(target, 303)


@action
async def hide(request: Request, form: FormData) -> Response:
    request.session.pop("reveal", None)
    return RedirectResponse(safe_next(form.get("path")), 303)


def routes() -> list[Route]:
    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/reveal", reveal, methods=["POST"]),
        Route("/hide", hide, methods=["POST"]),
    ]
