"""The operator console at `/console`: server-rendered pages over the gateway's own parts.

`mount(gateway)` answers the Starlette `Mount` that `create_app` adds when `console` is on
(the default). Pages are Jinja2 templates with a little plain JavaScript (no build step, no CDN);
sign-in is by API key into a session stored server-side (`console_sessions`) whose id travels in
a signed, HttpOnly, SameSite=Strict cookie, and every action is a POST carrying the session's
CSRF token. Phones and message texts are masked unless the operator reveals a page, which is
recorded in the audit table (`console_audit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from bspgate.console import contacts, deliveries, pages, session, tools
from bspgate.console.activity import Activity
from bspgate.console.render import STATIC

if TYPE_CHECKING:
    from bspgate.app import Gateway


def mount(gateway: Gateway) -> Mount:
    """`/console` with its own session middleware (the cookie's path is `/console`)."""
    settings = gateway.settings
    routes = [
        *session.routes(),
        *pages.routes(),
        *contacts.routes(),
        *deliveries.routes(),
        *tools.routes(),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=session.session_secret(settings),
            session_cookie="bspgate_console",
            max_age=session.SESSION_SECONDS,
            path="/console",
            same_site="strict",
            https_only=settings.server.public_url.startswith("https://"),
        )
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.gateway = gateway
    metrics = gateway.metrics  # its `peers` are set when the worker starts
    app.state.activity = Activity(metrics.webhooks, metrics.events, peers=lambda: metrics.peers)
    return Mount("/console", app=app)
