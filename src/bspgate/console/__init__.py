"""The operator console at `/console`: server-rendered pages over the gateway's own parts.

`mount(gateway)` answers the Starlette `Mount` that `create_app` adds when `console` is on
(the default). Pages are Jinja2 templates with a little plain JavaScript (no build step, no CDN);
sign-in is by API key into a session stored server-side (`console_sessions`) whose id travels in
a signed, HttpOnly, SameSite=Strict cookie, and every action is a POST carrying the session's
CSRF token. Phones and message texts are masked unless the operator reveals a page, which is
recorded in the audit table (`console_audit`).

Errors of routing under `/console` (no such page or static file: 404; a method the page does not
take: 405, with `Allow`) answer a browser's page load (`Accept: text/html`) with the console's
message page, and anything else (a script, `fetch`, `curl`) with the gateway's RFC 9457 problem,
as everywhere else; an unexpected error (500) is always a problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from bspgate import http
from bspgate.console import contacts, deliveries, pages, session, tools
from bspgate.console.activity import Activity
from bspgate.console.render import STATIC, render
from bspgate.problems import problem_response

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
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.gateway = gateway
    metrics = gateway.metrics  # its `peers` are set when the worker starts
    app.state.activity = Activity(metrics.webhooks, metrics.events, peers=lambda: metrics.peers)
    return Mount("/console", app=app)


async def _http_error(request: Request, exc: Exception) -> Response:
    """The gateway's RFC 9457 problem; for a browser loading a page, a 404 or 405 is the
    console's message page instead (same status, same `Allow`)."""
    problem = await http.http_error(request, exc)
    if problem.status_code not in (404, 405) or "text/html" not in request.headers.get(
        "accept", ""
    ):
        return problem
    if problem.status_code == 404:
        context = {
            "title": "Not found",
            "message": f"There is no console page at {request.url.path[:200]!r}.",
        }
    else:
        context = {
            "title": "Method not allowed",
            "message": f"This page does not take {request.method[:20]} requests.",
        }
    page = render(request, "message.html", context, problem.status_code)
    if "allow" in problem.headers:
        page.headers["Allow"] = problem.headers["allow"]
    return page


async def _server_error(request: Request, exc: Exception) -> Response:
    """500: the gateway's problem. Not logged here: the error goes on up from the console and
    the gateway's own handler logs it once (its answer is this one, already sent)."""
    return problem_response(
        500,
        "internal_error",
        "Internal server error",
        "the gateway failed to answer this request; it is logged with this request's id",
    )
