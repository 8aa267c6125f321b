"""The value language of `outbound.yaml`: YAML structures with `${…}` JMESPath holes.

A template is any YAML value. It renders against a context (the canonical send, the chosen
address, channel settings) like this:

- a string with no `${` is itself; a string that is exactly `${expr}` is the value of the JMESPath
  expression (any JSON type); a string with `${expr}` pieces inside is text, and **null** when any
  piece is null (so `"bsuid:${to.bsuid}"` disappears when the send goes to a phone);
- an object renders key by key and leaves out keys whose value rendered null; an object or list
  that had entries and lost all of them renders null too (`context: {message_id: …}` vanishes
  when the send replies to nothing);
- three directives, objects whose keys start with `$`: `{$first: [a, b]}` is the first of `a, b`
  that is not null; `{$when: expr, $value: t}` is `t` when `expr` is true, else null;
  `{$expr: expr, $apply: [name, …]}` passes the value through named transforms (`TRANSFORMS`).

URL templates (`request.url`, `types.<t>.url`, `auth.token_url`: `compile_url`) percent-encode
each hole's value for its place, with `urllib.parse.quote`: after the URL's `?` as a query value
(`&`, `=`, `#`, `+`, `/`… all encoded), before it as a path segment (`/`, `?`, `#`, `%` encoded).
A hole at the very start is the base URL (`${settings.base_url}/v1/…`) and is kept as it is.

Compiling happens once, at load, and reports the YAML path of a bad expression. This module owns
the language only: it knows no provider and does no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from jmespath.exceptions import JMESPathError

from bspgate.mapping.expression import Getter, compile_expression, truthy


class TemplateError(ValueError):
    """A template cannot be compiled. `path` is the dotted path inside the file."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def _json_text(value: Any) -> Any:
    return None if value is None else json.dumps(value)


def _entries_to_object(value: Any) -> Any:
    # [[key, value], …] -> {key: value, …}; JMESPath cannot build objects with computed keys.
    if not isinstance(value, list):
        return None
    return {str(pair[0]): pair[1] for pair in value if isinstance(pair, list) and len(pair) == 2}


def _lookup(value: Any) -> Any:
    # [table, key] -> table[key]: a per-channel lookup table keyed by a value from the send.
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], Mapping):
        return None
    return value[0].get(str(value[1])) if value[1] is not None else None


def _digits(value: Any) -> Any:
    return value.lstrip("+") if isinstance(value, str) else None


TRANSFORMS: dict[str, Callable[[Any], Any]] = {
    "json": _json_text,
    "entries_to_object": _entries_to_object,
    "lookup": _lookup,
    "digits": _digits,
}


class Node:
    """One compiled template node."""

    def render(self, context: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class _Literal(Node):
    value: Any

    def render(self, context: Any) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class _Expr(Node):
    getter: Getter

    def render(self, context: Any) -> Any:
        return self.getter(context)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class _Interpolation(Node):
    parts: tuple[str | Getter, ...]
    # per part, how a hole's value is written (URL holes: percent-encoded); none: as text
    encoders: tuple[Callable[[str], str] | None, ...] = ()

    def render(self, context: Any) -> Any:
        out: list[str] = []
        for index, part in enumerate(self.parts):
            if isinstance(part, str):
                out.append(part)
                continue
            value = part(context)
            if value is None:
                return None
            encode = self.encoders[index] if self.encoders else None
            out.append(encode(_text(value)) if encode is not None else _text(value))
        return "".join(out)


# RFC 3986 pchar without the unreserved characters quote() always keeps: sub-delims, ":" and "@"
_PATH_SAFE = "!$&'()*+,;=:@"


def _path_segment(text: str) -> str:
    return quote(text, safe=_PATH_SAFE)


def _query_value(text: str) -> str:
    return quote(text, safe="")


@dataclass(frozen=True, slots=True)
class _Object(Node):
    items: tuple[tuple[str, Node], ...]

    def render(self, context: Any) -> Any:
        out = {}
        for key, node in self.items:
            value = node.render(context)
            if value is not None:
                out[key] = value
        return out if out or not self.items else None


@dataclass(frozen=True, slots=True)
class _List(Node):
    items: tuple[Node, ...]

    def render(self, context: Any) -> Any:
        out = [value for node in self.items if (value := node.render(context)) is not None]
        return out if out or not self.items else None


@dataclass(frozen=True, slots=True)
class _First(Node):
    options: tuple[Node, ...]

    def render(self, context: Any) -> Any:
        for node in self.options:
            value = node.render(context)
            if value is not None:
                return value
        return None


@dataclass(frozen=True, slots=True)
class _When(Node):
    condition: Getter
    value: Node

    def render(self, context: Any) -> Any:
        return self.value.render(context) if truthy(self.condition(context)) else None


@dataclass(frozen=True, slots=True)
class _Apply(Node):
    getter: Getter
    transforms: tuple[Callable[[Any], Any], ...]

    def render(self, context: Any) -> Any:
        value = self.getter(context)
        for transform in self.transforms:
            value = transform(value)
        return value


def _dotted(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def compile_expr(text: Any, path: tuple[Any, ...]) -> Getter:
    """One JMESPath expression (the same dialect as inbound mappings)."""
    if not isinstance(text, str) or not text.strip():
        raise TemplateError(_dotted(path), "expected a JMESPath expression (a non-empty string)")
    try:
        return compile_expression(text)
    except JMESPathError as exc:
        raise TemplateError(_dotted(path), f"invalid expression {text!r}: {exc}") from exc


def _holes(text: str, path: tuple[Any, ...]) -> list[tuple[int, int, str]]:
    """(start, end, expression) of each `${…}`; braces inside count, quoted ones do not."""
    holes = []
    position = text.find("${")
    while position != -1:
        depth, quote, index = 0, "", position + 2
        while index < len(text):
            char = text[index]
            if quote:
                quote = "" if char == quote else quote
            elif char in "'`\"":
                quote = char
            elif char == "{":
                depth += 1
            elif char == "}":
                if depth == 0:
                    break
                depth -= 1
            index += 1
        else:
            raise TemplateError(_dotted(path), f"unclosed ${{…}} in {text!r}")
        holes.append((position, index + 1, text[position + 2 : index]))
        position = text.find("${", index + 1)
    return holes


def _compile_string(text: str, path: tuple[Any, ...]) -> Node:
    holes = _holes(text, path)
    if not holes:
        return _Literal(text)
    if len(holes) == 1 and holes[0][:2] == (0, len(text)):
        return _Expr(compile_expr(holes[0][2], path))
    parts: list[str | Getter] = []
    position = 0
    for start, end, expression in holes:
        if start > position:
            parts.append(text[position:start])
        parts.append(compile_expr(expression, path))
        position = end
    if position < len(text):
        parts.append(text[position:])
    return _Interpolation(tuple(parts))


def compile_url(raw: Any, path: tuple[Any, ...] = ()) -> Node:
    """Compile a URL template: each `${…}` value is percent-encoded for where it stands (see the
    module docstring); a hole at the very start (the base URL) is kept as it is. A value that
    is not a string compiles as any template."""
    if not isinstance(raw, str):
        return compile_template(raw, path)
    holes = _holes(raw, path)
    if not holes or (len(holes) == 1 and holes[0][:2] == (0, len(raw))):
        return _compile_string(raw, path)
    parts: list[str | Getter] = []
    encoders: list[Callable[[str], str] | None] = []
    position = 0
    in_query = False
    for start, end, expression in holes:
        literal = raw[position:start]
        if literal:
            parts.append(literal)
            encoders.append(None)
            in_query = in_query or "?" in literal or "#" in literal
        parts.append(compile_expr(expression, path))
        encoders.append(None if start == 0 else (_query_value if in_query else _path_segment))
        position = end
    if position < len(raw):
        parts.append(raw[position:])
        encoders.append(None)
    return _Interpolation(tuple(parts), tuple(encoders))


def _directive(raw: dict[str, Any], path: tuple[Any, ...]) -> Node:
    keys = set(raw)
    if keys == {"$first"}:
        options = raw["$first"]
        if not isinstance(options, list) or not options:
            raise TemplateError(_dotted((*path, "$first")), "expected a non-empty list")
        return _First(
            tuple(compile_template(o, (*path, "$first", i)) for i, o in enumerate(options))
        )
    if keys == {"$when", "$value"}:
        return _When(
            compile_expr(raw["$when"], (*path, "$when")),
            compile_template(raw["$value"], (*path, "$value")),
        )
    if keys in ({"$expr"}, {"$expr", "$apply"}):
        names = raw.get("$apply", [])
        names = [names] if isinstance(names, str) else names
        transforms = []
        for index, name in enumerate(names):
            if name not in TRANSFORMS:
                known = ", ".join(sorted(TRANSFORMS))
                raise TemplateError(
                    _dotted((*path, "$apply", index)), f"unknown transform {name!r} ({known})"
                )
            transforms.append(TRANSFORMS[name])
        return _Apply(compile_expr(raw["$expr"], (*path, "$expr")), tuple(transforms))
    raise TemplateError(
        _dotted(path),
        f"unknown directive keys {sorted(keys)}: use {{$first}}, {{$when, $value}} "
        "or {$expr, $apply}",
    )


def compile_template(raw: Any, path: tuple[Any, ...] = ()) -> Node:
    """Compile a YAML value into a renderable node; raises `TemplateError` naming the path."""
    if isinstance(raw, str):
        return _compile_string(raw, path)
    if isinstance(raw, dict):
        if any(isinstance(key, str) and key.startswith("$") for key in raw):
            return _directive(raw, path)
        return _Object(
            tuple((str(key), compile_template(value, (*path, key))) for key, value in raw.items())
        )
    if isinstance(raw, list):
        return _List(tuple(compile_template(item, (*path, i)) for i, item in enumerate(raw)))
    return _Literal(raw)
