"""Loads `mappings/<provider>/outbound.yaml` into a frozen, compiled `OutboundSpec`.

The file is checked against `outbound.schema.json`, then every template and expression is
compiled; every error is a `MappingLoadError` naming the file, the line and the YAML path
(`mappings/twilio/outbound.yaml:40: types.template.body.ContentSid: invalid expression …`).
`extends: other` starts from another provider's file, found in any mappings folder as
`mapping.yaml`'s `extends` finds it (`mapping/folders.py`). This module only reads files:
rendering is `rewrite.py`, sending is `client.py`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema

from bspgate.errors import MappingLoadError
from bspgate.mapping.expression import Getter
from bspgate.mapping.folders import (
    ExtendsError,
    Roots,
    display_path,
    extended_file,
    folder_of,
    holder,
    provider_names,
    roots_of,
)
from bspgate.mapping.yamlfile import YamlFile
from bspgate.outbound.signing import declaration_errors as signing_errors
from bspgate.outbound.template import (
    Node,
    TemplateError,
    compile_expr,
    compile_template,
    compile_url,
)

OUTBOUND_FILE = "outbound.yaml"
AUTH_SCHEMES = (
    "bearer",
    "header",
    "basic",
    "oauth2_client_credentials",
    "hmac_request",
    "azure_hmac",
)
SEND_TYPES = ("text", "template", "image", "document", "audio", "video", "interactive")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A condition under which the provider cannot carry a send (422 unsupported_message).

    `code` unsupported_by_provider: no such message at all; channel_not_configured (500): the
    channel lacks a setting every send needs (Twilio's sender).
    """

    when: Getter
    detail: str
    code: str = "unsupported_message"


@dataclass(frozen=True, slots=True)
class BsuidFlag:
    """Whether one send form may address a BSUID: a fixed value, or a channel setting."""

    default: bool
    setting: str | None = None

    def allows(self, settings: Mapping[str, Any]) -> bool:
        if self.setting is not None and self.setting in settings:
            return bool(settings[self.setting])
        return self.default


@dataclass(frozen=True, slots=True)
class TypeForm:
    """How one canonical send type is written: endpoint override, values, refusals, body."""

    name: str
    body: Node
    url: Node | None = None
    let: tuple[tuple[str, Node], ...] = ()
    refuse: tuple[Refusal, ...] = ()
    bsuid_send: BsuidFlag | None = None
    variant_setting: str | None = None
    variants: Mapping[str, TypeForm] = field(default_factory=dict)

    def pick(self, settings: Mapping[str, Any]) -> TypeForm:
        """The variant the channel's settings select, or this form."""
        if self.variant_setting is None:
            return self
        chosen = settings.get(self.variant_setting)
        return self.variants.get(str(chosen), self) if chosen is not None else self


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    safe: bool = False
    attempts: int = 3
    backoff: tuple[float, ...] = (0.2, 1.0)


@dataclass(frozen=True, slots=True)
class OutboundSpec:
    """One provider's send form, compiled."""

    provider: str
    file: str
    method: str
    url: Node
    encoding: Literal["json", "form"]
    headers: tuple[tuple[str, Node], ...]
    base_body: Any
    auth: Mapping[str, Any]
    bsuid_send: bool
    defaults: Mapping[str, Any]
    secrets: tuple[str, ...]
    let: tuple[tuple[str, Node], ...]
    refuse: tuple[Refusal, ...]
    types: Mapping[str, TypeForm]
    message_id: Getter
    error_code: Getter | None
    error_message: Getter | None
    error_map: Mapping[str, str]
    retry: RetryPolicy
    source: dict[str, Any] = field(repr=False)
    token_url: Node | None = None  # auth.token_url of oauth2_client_credentials, compiled


@cache
def _validator() -> jsonschema.Draft202012Validator:
    text = resources.files("bspgate.outbound").joinpath("outbound.schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _compile(file: YamlFile, raw: Any, path: tuple[Any, ...]) -> Node:
    try:
        return compile_template(raw, path)
    except TemplateError as exc:
        raise file.error(exc.path, exc.message) from exc


def _compile_url(file: YamlFile, raw: Any, path: tuple[Any, ...]) -> Node:
    """A URL template: hole values are percent-encoded for their place (template.compile_url)."""
    try:
        return compile_url(raw, path)
    except TemplateError as exc:
        raise file.error(exc.path, exc.message) from exc


def _expr(file: YamlFile, text: Any, path: tuple[Any, ...]) -> Getter:
    try:
        return compile_expr(text, path)
    except TemplateError as exc:
        raise file.error(exc.path, exc.message) from exc


def _lets(file: YamlFile, raw: Mapping[str, Any] | None, path: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        (name, _compile(file, value, (*path, name))) for name, value in (raw or {}).items()
    )


def _refusals(file: YamlFile, raw: list[dict[str, str]] | None, path: tuple[Any, ...]) -> Any:
    return tuple(
        Refusal(
            _expr(file, item["when"], (*path, i, "when")),
            item["detail"],
            item.get("code", "unsupported_message"),
        )
        for i, item in enumerate(raw or [])
    )


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(merged[key], value) if key in merged else value
        return merged
    return override


def _type_form(
    file: YamlFile, name: str, raw: dict[str, Any], base_body: Any, path: tuple[Any, ...]
) -> TypeForm:
    flag = raw.get("bsuid_send")
    bsuid = None
    if isinstance(flag, bool):
        bsuid = BsuidFlag(flag)
    elif isinstance(flag, dict):
        bsuid = BsuidFlag(flag["default"], flag["setting"])
    variants = raw.get("variants") or {}
    return TypeForm(
        name=name,
        body=_compile(file, _merge(base_body, raw["body"]), (*path, "body")),
        url=_compile_url(file, raw["url"], (*path, "url")) if "url" in raw else None,
        let=_lets(file, raw.get("let"), (*path, "let")),
        refuse=_refusals(file, raw.get("refuse"), (*path, "refuse")),
        bsuid_send=bsuid,
        variant_setting=variants.get("setting"),
        variants={
            key: _type_form(file, name, form, base_body, (*path, "variants", "forms", key))
            for key, form in (variants.get("forms") or {}).items()
        },
    )


def _extended(
    roots: tuple[Path, ...],
    file: YamlFile,
    provider: str,
    at: int,
    seen: tuple[tuple[int, str], ...],
) -> Any:
    """The file's data with `extends: other` resolved (the other file first, this one on top).

    `other` is found as `mapping.yaml`'s `extends` finds it (folders.py): in every mappings
    folder, the provider's own name meaning the next folder down. `seen`: the files below this
    one in the chain, as (folder index, provider).
    """
    data = file.data
    parent = data.get("extends") if isinstance(data, dict) else None
    if parent is None:
        return data
    try:
        parent_at, chain = extended_file(roots, provider, at, parent, OUTBOUND_FILE, seen)
    except ExtendsError as exc:
        raise file.error(("extends",), str(exc)) from None
    parent_path = roots[parent_at] / parent / OUTBOUND_FILE
    parent_file = YamlFile(parent_path, display_path(parent_path))
    base = _extended(roots, parent_file, parent, parent_at, chain)
    merged = _merge(base, {k: v for k, v in data.items() if k != "extends"})
    merged["provider"] = data.get("provider", provider)
    return merged


def outbound_root(root: Roots, provider: str) -> Path | None:
    """The folder among `root` whose `<provider>/outbound.yaml` is the provider's send form (the
    last one that has one), or None: the provider cannot send."""
    return folder_of(root, provider, OUTBOUND_FILE)


def auth_secret_names(auth: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], list[str]]]:
    """(path inside `auth`, secret names) of each credential the scheme uses: one name each,
    except `basic`'s `username` and `password`, where the first name set is used."""
    out: list[tuple[tuple[Any, ...], list[str]]] = []
    for key in ("secret", "client_id", "client_secret"):
        if isinstance(auth.get(key), str):
            out.append(((key,), [auth[key]]))
    for key in ("username", "password"):
        if isinstance(auth.get(key), list):
            out.append(((key,), [str(name) for name in auth[key]]))
    return out


def _auth_secret_errors(
    auth: Mapping[str, Any], declared: list[str]
) -> list[tuple[tuple[Any, ...], str]]:
    """Each credential must be a declared secret: a send without a declared secret is refused
    (channel_not_configured), so a typo here would otherwise send an empty credential."""
    known = ", ".join(declared) or "none"
    errors = []
    for where, names in auth_secret_names(auth):
        if len(names) == 1 and names[0] not in declared:
            errors.append((where, f"{names[0]!r} is not a declared secret (secrets: {known})"))
        elif len(names) > 1 and not set(names) & set(declared):
            # the first one set is used: the others may be optional, but one must be required
            message = (
                f"names no declared secret (secrets: {known}): the first one set is used, so "
                "one of them must be declared"
            )
            errors.append((where, message))
    return errors


def load_outbound(root: Roots, provider: str) -> OutboundSpec:
    """Load and compile `<provider>/outbound.yaml` from the last of the folders `root` that has
    one (with whatever it extends, from any of them)."""
    roots = roots_of(root)
    at = holder(roots, provider, OUTBOUND_FILE)
    if at is None:
        looked = ", ".join(display_path(folder / provider / OUTBOUND_FILE) for folder in roots)
        raise MappingLoadError(looked, None, "", "no such file: this provider cannot send")
    path = roots[at] / provider / OUTBOUND_FILE
    display = display_path(path)
    file = YamlFile(path, display)
    data = _extended(roots, file, provider, at, ())
    auth_scheme = (data.get("auth") or {}).get("scheme") if isinstance(data, dict) else None
    if isinstance(data.get("auth"), dict) and auth_scheme not in AUTH_SCHEMES:
        known = ", ".join(AUTH_SCHEMES)
        raise file.error(
            ("auth", "scheme"), f"unknown auth scheme {auth_scheme!r} (known: {known})"
        )
    if auth_scheme == "hmac_request":
        for where, message in signing_errors(data["auth"]):
            raise file.error(("auth", *where), message)
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        assert error is not None
        raise file.error(tuple(error.absolute_path), error.message)
    if data["provider"] != provider:
        raise file.error(("provider",), f"{data['provider']!r} must equal the folder name")
    for where, message in _auth_secret_errors(data.get("auth") or {}, data.get("secrets") or []):
        raise file.error(("auth", *where), message)
    request = data["request"]
    base_body = request.get("body", {})
    retry = data.get("retry") or {"safe": False}
    auth = data.get("auth") or {}
    token_url = (
        _compile_url(file, auth["token_url"], ("auth", "token_url"))
        if "token_url" in auth
        else None
    )
    errors_raw = data.get("errors") or {}
    return OutboundSpec(
        provider=provider,
        file=display,
        method=request.get("method", "POST"),
        url=_compile_url(file, request.get("url", ""), ("request", "url")),
        encoding=request.get("encoding", "json"),
        headers=_lets(file, request.get("headers"), ("request", "headers")),
        base_body=base_body,
        auth=auth,
        token_url=token_url,
        bsuid_send=bool((data.get("capabilities") or {}).get("bsuid_send", False)),
        defaults=dict(data.get("settings") or {}),
        secrets=tuple(data.get("secrets") or ()),
        let=_lets(file, data.get("let"), ("let",)),
        refuse=_refusals(file, data.get("refuse"), ("refuse",)),
        types={
            name: _type_form(file, name, raw, base_body, ("types", name))
            for name, raw in data["types"].items()
        },
        message_id=_expr(file, data["answer"]["message_id"], ("answer", "message_id")),
        error_code=_expr(file, errors_raw["code"], ("errors", "code"))
        if "code" in errors_raw
        else None,
        error_message=_expr(file, errors_raw["message"], ("errors", "message"))
        if "message" in errors_raw
        else None,
        error_map={str(k): v for k, v in (errors_raw.get("map") or {}).items()},
        retry=RetryPolicy(
            safe=bool(retry["safe"]),
            attempts=int(retry.get("attempts", 3)),
            backoff=tuple(float(x) for x in retry.get("backoff", (0.2, 1.0))),
        ),
        source=data,
    )


def outbound_names(root: Roots) -> list[str]:
    """Providers under `root` (one folder, or several) that have a send form, sorted."""
    return provider_names(root, OUTBOUND_FILE)
