"""Canonical send + chosen address -> the provider's HTTP request, from its `outbound.yaml`.

`render_request` builds the template context (the canonical send, `to`, `channel`, `settings`,
`secrets`, `send`), evaluates `let`, applies `refuse`, renders URL, headers and body, encodes the
body (JSON or form) and signs it (`auth`: bearer, header key, basic, request signing declared
as data in signing.py, Azure access-key HMAC; OAuth2 tokens are added at send time, oauth.py).
`ProviderRequest.masked()` is the dry-run view: the same request with every credential masked.
No I/O and no clock of its own (`now` is passed in); sending is `client.py`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from bspgate.config import Channel
from bspgate.errors import SendError
from bspgate.mapping.expression import truthy
from bspgate.masking import mask_url
from bspgate.outbound.addressing import Address
from bspgate.outbound.oauth import TokenRequest
from bspgate.outbound.signing import sign_request
from bspgate.outbound.spec import OutboundSpec, TypeForm, auth_secret_names

MASK = "****"


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One HTTP request to a provider, ready to send (`content` is the exact body bytes)."""

    method: str
    url: str
    headers: dict[str, str]
    body: Any
    content: bytes
    encoding: str
    secret_values: tuple[str, ...] = field(default=(), repr=False)
    credential_headers: tuple[str, ...] = ()
    missing_secrets: tuple[str, ...] = ()
    oauth: TokenRequest | None = None  # a bearer token to fetch at send time (client.py)

    def masked(self) -> dict[str, Any]:
        """`{method, url, headers, body}` with credentials masked (dry runs, logs at DEBUG)."""
        headers = {}
        for name, value in self.headers.items():
            if name.lower() in self.credential_headers:
                value = _mask_credential(value)
            headers[name] = self.scrub(value)
        return {
            "method": self.method,
            "url": mask_url(self.scrub(self.url)),  # a base_url setting may hold credentials
            "headers": headers,
            "body": self._scrub_tree(self.body),
        }

    def scrub(self, text: str) -> str:
        """`text` with every value of the channel's secrets replaced by ****."""
        for secret in self.secret_values:
            text = text.replace(secret, MASK)
        return text

    def _scrub_tree(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._scrub_tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrub_tree(v) for v in value]
        return value


def _mask_credential(value: str) -> str:
    if value.startswith("HMAC-SHA256 "):
        head, _, _signature = value.partition("&Signature=")
        return f"{head}&Signature={MASK}"
    scheme, space, rest = value.partition(" ")
    if space and scheme in {"Bearer", "Basic", "App"}:
        return f"{scheme} {MASK if rest.strip() else '(empty)'}"
    return MASK if value.strip() else "(empty)"  # a mask must not hide a missing credential


def _template_values(parameters: list[Any] | dict[str, str] | None) -> list[dict[str, Any]]:
    # Positional or named body parameters, each with its 1-based position as a string, so a
    # mapping can write Twilio's {"1": …}, Connectly's body_1 or Azure's named values.
    # v1.1: an object of named values is the list of {name, value} in its key order.
    if isinstance(parameters, dict):
        parameters = [{"name": name, "value": value} for name, value in parameters.items()]
    values = []
    for index, item in enumerate(parameters or [], start=1):
        if isinstance(item, dict):
            values.append(
                {"position": str(index), "name": item.get("name"), "value": item["value"]}
            )
        else:
            values.append({"position": str(index), "name": None, "value": item})
    return values


def channel_settings(spec: OutboundSpec, channel: Channel) -> dict[str, Any]:
    """The provider's defaults overlaid with the channel's settings (URLs without trailing /)."""
    merged = {**spec.defaults, **channel.settings}
    return {
        key: value.rstrip("/") if isinstance(value, str) and value.startswith("http") else value
        for key, value in merged.items()
    }


def build_context(
    send: Mapping[str, Any],
    address: Address,
    channel: Channel,
    spec: OutboundSpec,
    *,
    send_id: str,
    public_url: str,
    now: datetime,
) -> dict[str, Any]:
    """What templates see. Only the chosen address form is non-null in `to` (rule 1)."""
    context: dict[str, Any] = {key: value for key, value in send.items() if key != "to"}
    if "template" in context:
        template = dict(context["template"])
        template["values"] = _template_values(template.get("parameters"))
        context["template"] = template
    phone = channel.business_phone
    context["to"] = address.as_context()
    context["channel"] = {
        "id": channel.id,
        "provider": channel.provider,
        "portfolio": channel.portfolio,
        "business_phone": phone,
        "business_phone_digits": phone.lstrip("+") if phone else None,
        "webhook_url": f"{public_url.rstrip('/')}/webhooks/{channel.id}",
    }
    context["settings"] = channel_settings(spec, channel)
    context["secrets"] = {name: channel.secret(name) or None for name in channel.secrets}
    context["send"] = {
        "id": send_id,
        "uuid": uuid_from(send_id),
        "first_sent": format_datetime(now.astimezone(UTC), usegmt=True),
    }
    return context


def uuid_from(send_id: str) -> str:
    # A stable UUID per send (Azure's Repeatability-Request-ID must be one).
    digest = hashlib.sha256(send_id.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"


def _refuse(form_refusals: Any, context: dict[str, Any], provider: str) -> None:
    for refusal in form_refusals:
        if truthy(refusal.when(context)):
            # a channel missing what every send needs is the operator's to fix, as a missing
            # secret is (500); the rest are refusals of this one send (422)
            status = 500 if refusal.code == "channel_not_configured" else 422
            raise SendError(refusal.code, f"{provider}: {refusal.detail}", status=status)


def type_form(
    spec: OutboundSpec, channel: Channel, send_type: str, send: Mapping[str, Any] | None = None
) -> TypeForm:
    """The form for `send_type` as this channel selects it, or 422 unsupported_message.

    A `contact_request` (v1.1) to a provider with no interactive form at all is 422
    unsupported_by_provider: the provider has no such message, whatever the channel's settings.
    """
    form = spec.types.get(send_type)
    interactive = (send or {}).get("interactive") or {}
    if form is None and send_type == "interactive" and interactive.get("type") == "contact_request":
        raise SendError(
            "unsupported_by_provider",
            f"{spec.provider} has no request for a person's phone number (contact_request)",
        )
    if form is None:
        raise SendError(
            "unsupported_message",
            f"{spec.provider} has no send form for type {send_type!r} in {spec.file}",
        )
    return form.pick(channel_settings(spec, channel))


def bsuid_supported(spec: OutboundSpec, channel: Channel, form: TypeForm) -> bool:
    """Rule 4's capability: the provider flag, overridable per channel, and the form's own."""
    settings = channel_settings(spec, channel)
    allowed = bool(settings.get("bsuid_send", spec.bsuid_send))
    if form.bsuid_send is not None:
        allowed = allowed and form.bsuid_send.allows(settings)
    return allowed


def render_request(
    spec: OutboundSpec, form: TypeForm, context: dict[str, Any], channel: Channel, now: datetime
) -> ProviderRequest:
    """Render and sign the request. Raises `SendError` for refusals and unbuildable URLs."""
    for name, node in (*spec.let, *form.let):
        context[name] = node.render(context)
    _refuse(spec.refuse, context, spec.provider)
    _refuse(form.refuse, context, spec.provider)
    url = (form.url or spec.url).render(context)
    if not url:
        raise SendError(
            "channel_not_configured",
            f"the {spec.provider} URL cannot be built: a setting it uses is missing "
            f"(see {spec.file} request.url and the channel's settings)",
            status=500,
        )
    body = form.body.render(context)
    if body is None:
        body = {}
    headers = {
        name: str(value)
        for name, node in spec.headers
        if (value := node.render(context)) is not None
    }
    if spec.encoding == "form":
        fields = {k: _form_value(v) for k, v in body.items()}
        content = urlencode(fields, doseq=True).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    else:
        content = orjson.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    credential_headers = _sign(spec, channel, headers, url, content, now)
    oauth = _token_request(spec, channel, context)
    secret_values = tuple(
        value for name in channel.secrets if len(value := channel.secret(name)) >= 4
    )
    missing = tuple(name for name in spec.secrets if not channel.secret(name))
    # the credentials themselves too: a send never goes out with an empty token or key
    missing += tuple(
        names[-1]
        for _where, names in auth_secret_names(spec.auth)
        if not any(channel.secret(name) for name in names) and names[-1] not in missing
    )
    return ProviderRequest(
        method=spec.method,
        url=url,
        headers=headers,
        body=body,
        content=content,
        encoding=spec.encoding,
        secret_values=secret_values,
        credential_headers=credential_headers,
        missing_secrets=missing,
        oauth=oauth,
    )


def _token_request(
    spec: OutboundSpec, channel: Channel, context: dict[str, Any]
) -> TokenRequest | None:
    auth = spec.auth
    if auth.get("scheme") != "oauth2_client_credentials" or spec.token_url is None:
        return None
    return TokenRequest(
        token_url=str(spec.token_url.render(context) or ""),
        client_id=channel.secret(auth["client_id"]),
        client_secret=channel.secret(auth["client_secret"]),
        scope=str(auth.get("scope", "")),
        auth_method=str(auth.get("auth_method", "client_secret_basic")),
    )


def _form_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_form_value(item) for item in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


def _first_secret(channel: Channel, names: list[str]) -> str:
    for name in names:
        if channel.secret(name):
            return channel.secret(name)
    return ""


def _sign(
    spec: OutboundSpec,
    channel: Channel,
    headers: dict[str, str],
    url: str,
    content: bytes,
    now: datetime,
) -> tuple[str, ...]:
    """Add the auth headers; answers the lower-cased names of those that carry a credential."""
    auth = spec.auth
    scheme = auth.get("scheme")
    if scheme == "bearer":
        headers["Authorization"] = f"Bearer {channel.secret(auth['secret'])}"
        return ("authorization",)
    if scheme == "header":
        headers[auth["header"]] = auth.get("prefix", "") + channel.secret(auth["secret"])
        return (auth["header"].lower(),)
    if scheme == "basic":
        user = _first_secret(channel, auth["username"])
        password = _first_secret(channel, auth["password"])
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        return ("authorization",)
    if scheme == "oauth2_client_credentials":
        # the token is fetched (and cached) when the request is sent: see oauth.py
        headers["Authorization"] = "Bearer (OAuth2 client-credentials token, fetched at send)"
        return ("authorization",)
    if scheme == "hmac_request":
        signed = sign_request(
            auth, channel.secret(auth["secret"]), spec.method, url, headers, content, now
        )
        headers.update(signed)
        return (str(auth.get("header", "Authorization")).lower(),)
    if scheme == "azure_hmac":
        headers.update(
            azure_hmac_headers(channel.secret(auth["secret"]), "POST", url, content, now)
        )
        return ("authorization",)
    return ()


def azure_hmac_headers(
    access_key: str, method: str, url: str, content: bytes, now: datetime
) -> dict[str, str]:
    """Azure Communication Services access-key signing (HMAC-SHA256), per Azure's scheme.

    String to sign: `METHOD\\n<path?query>\\n<x-ms-date>;<host>;<x-ms-content-sha256>`, signed
    with the base64-decoded access key; the signature and the three signed headers are sent.
    """
    parts = urlsplit(url)
    path_and_query = parts.path + (f"?{parts.query}" if parts.query else "")
    date = format_datetime(now.astimezone(UTC), usegmt=True)
    content_hash = base64.b64encode(hashlib.sha256(content).digest()).decode()
    to_sign = f"{method.upper()}\n{path_and_query}\n{date};{parts.netloc};{content_hash}"
    try:
        key = base64.b64decode(access_key, validate=True)
    except ValueError:
        key = b""  # a malformed key still renders (dry run); the provider will answer 401
    signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest())
    return {
        "x-ms-date": date,
        "x-ms-content-sha256": content_hash,
        "Authorization": "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
        f"&Signature={signature.decode()}",
    }
