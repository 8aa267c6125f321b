"""One way to show a URL or DSN without its credentials: `mask_url`.

Used wherever a configured URL or DSN is shown (`config check`, `GET /v1/subscribers`, the
startup line, `subscribers list`, logs). Masked: the password of `user:password@`, a user name
standing alone in an http(s) URL (a token used as the user: `https://tok@host`), query
parameters whose names say they carry a credential (`token`, `code`, `key`, `secret`, `sig`,
`password`, `sslpassword`, `auth`, …) and `password=` / `sslpassword=` in a libpq key=value DSN.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "****"
_SECRET_PARAM = re.compile(r"pass|token|code|key|secret|sig|auth|credential|session", re.I)
_KEYWORD_DSN = re.compile(r"\b((?:ssl)?password)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.I)


def _mask_query(query: str) -> str:
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return "&".join(
        f"{quote(name, safe='')}={MASK if _SECRET_PARAM.search(name) else quote(value, safe='')}"
        for name, value in pairs
    )


def mask_url(text: str) -> str:
    """`text` (a URL, a DSN, or a libpq keyword string) with every credential replaced by ****."""
    if "://" not in text:
        return _KEYWORD_DSN.sub(lambda m: f"{m.group(1)}={MASK}", text)
    try:
        parts = urlsplit(text)
    except ValueError:
        return MASK  # unparseable: show nothing rather than a secret
    netloc = parts.netloc
    query = _mask_query(parts.query)
    if "@" not in netloc and query == parts.query:
        return text  # nothing to mask (and `sqlite:////abs` keeps its slashes)
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _password = userinfo.partition(":")
        if has_password:
            userinfo = f"{user}:{MASK}"
        elif parts.scheme in ("http", "https"):
            userinfo = MASK  # a lone user name in a webhook URL is a token
        netloc = f"{userinfo}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, _mask_query(parts.query), parts.fragment))
