"""One way to show a URL or DSN without its credentials (`mask_url`), and free text without the
phone numbers in it (`mask_phones`).

Used wherever a configured URL or DSN is shown (`config check`, `GET /v1/subscribers`, the
startup line, `subscribers list`, logs). Masked: the password of `user:password@`, a user name
standing alone in an http(s) URL (a token used as the user: `https://tok@host`), query
parameters whose names say they carry a credential (`token`, `code`, `key`, `secret`, `sig`,
`password`, `sslpassword`, `auth`, …) and `password=` / `sslpassword=` in a libpq key=value DSN.

`mask_phones` is for text bspgate repeats but did not write, such as a provider's rejection
reason ("The 'To' number whatsapp:+15557654321 is not a valid phone number."): every run of 8 to
15 digits standing alone, `+` or not, keeps its last two digits (`*********21`, as the logs show
phones). Digits inside a longer token (a BSUID `US.1349…`, an id, a SID) are not phones.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "****"
_SECRET_PARAM = re.compile(r"pass|token|code|key|secret|sig|auth|credential|session", re.I)
_KEYWORD_DSN = re.compile(r"\b((?:ssl)?password)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.I)
# after `whatsapp:`, `tel:` or a `/` too (logging's own pattern leaves those out)
_PHONE_IN_TEXT = re.compile(r"(?<![\w.+-])\+?\d{8,15}(?![\w-])")


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


def _mask_phone(match: re.Match[str]) -> str:
    digits = match.group(0).lstrip("+")
    return "*" * (len(digits) - 2) + digits[-2:]


def mask_phones(text: str) -> str:
    """`text` with every phone-like digit run masked but its last two digits."""
    return _PHONE_IN_TEXT.sub(_mask_phone, text)


_URL_IN_TEXT = re.compile(r"""https?://[^\s'"<>]+""")


def mask_urls(text: str) -> str:
    """`text` with every http(s) URL in it masked as `mask_url` masks one (an HTTP client's
    error message names the URL it failed on, query token included)."""
    return _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), text)
