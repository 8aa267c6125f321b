"""A YAML file read for error reporting: its data, and the line of every key and item.

Mapping and outbound files are read through this, so every error a contributor sees names the
file, the line and the dotted path (`mappings/acme/mapping.yaml:42: inbound.rules[1].key: …`).
A key written twice in one YAML mapping is an error here: PyYAML keeps the last one silently, so
the first (a field spec, a secret) would vanish without a word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bspgate.errors import MappingLoadError

_MERGE = "tag:yaml.org,2002:merge"  # `<<: *base`: merged keys may be overridden, by design


class _DuplicateKey(Exception):
    def __init__(self, path: tuple[Any, ...], line: int, first: int) -> None:
        super().__init__(path)
        self.path, self.line, self.first = path, line, first


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE:
                if key_node.value in seen:
                    raise _DuplicateKey((*path, key_node.value), line, seen[key_node.value])
                seen[key_node.value] = line
            out[(*path, key_node.value)] = line
            _line_index(value_node, (*path, key_node.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_index(item, (*path, index), out)


def dotted(path: tuple[Any, ...]) -> str:
    """`("rules", 1, "key")` as `rules[1].key`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _parts(path: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for piece in path.replace("[", ".").replace("]", "").split("."):
        if piece:
            parts.append(int(piece) if piece.isdigit() else piece)
    return tuple(parts)


class YamlFile:
    """Reads one YAML file (`data`) and answers `where` questions about its paths."""

    def __init__(self, path: Path, display: str) -> None:
        self.display = display
        try:
            text = path.read_text(encoding="utf-8")
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data: Any = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError) as exc:
            raise MappingLoadError(display, None, "", f"cannot read: {exc}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            # the problem and its context, without PyYAML's `in "<unicode string>"` locations
            parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
            what = ", ".join(str(p) for p in parts if p) or type(exc).__name__
            column = f" (column {mark.column + 1})" if mark is not None else ""
            raise MappingLoadError(display, line, "", f"invalid YAML: {what}{column}") from exc
        self.lines: dict[tuple[Any, ...], int] = {}
        if node is not None:
            try:
                _line_index(node, (), self.lines)
            except _DuplicateKey as exc:
                raise MappingLoadError(
                    display,
                    exc.line,
                    dotted(exc.path),
                    f"duplicate key {exc.path[-1]!r} (first at line {exc.first}): YAML would "
                    "keep only this one",
                ) from None

    def error(self, path: tuple[Any, ...] | str, message: str) -> MappingLoadError:
        """A load error at `path` (a tuple, or dotted text), with the nearest known line."""
        if isinstance(path, str):
            path = _parts(path)
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return MappingLoadError(self.display, self.lines.get(probe), dotted(path), message)
