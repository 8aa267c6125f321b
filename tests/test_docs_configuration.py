"""docs/configuration.md is checked against what ships: `config.yaml`, `config.schema.json` and
the provider mappings, so its tables cannot drift from them again.

docs/deployment.md tells operators to "set every variable the config names (the table in
configuration.md#environment-references)": a variable missing from that table stays on its
development default, and `serve` then refuses a public address. The key tables call themselves
the reference of every key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.conftest import MAPPINGS, ROOT

CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text()
SHIPPED = ROOT / "config.yaml"
SCHEMA = json.loads((ROOT / "src" / "bspgate" / "config.schema.json").read_text())
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# variables bspgate reads itself, not through a `${NAME}` of the config
PROGRAM_VARIABLES = {"BSPGATE_CONFIG"}


@dataclass(frozen=True)
class Reference:
    variable: str
    key: str  # dotted, as errors name it: channels[6].secrets.webhook_secret
    shown: str  # as the docs name it: channels[sinch-us].secrets.webhook_secret
    default: str | None


def shipped_references() -> list[Reference]:
    """Every `${NAME}` of the shipped config in effect (comments are not read: a commented-out
    subscriber is an example)."""
    found: list[Reference] = []

    def walk(value: Any, key: str, shown: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else name, f"{shown}.{name}" if shown else name)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                label = item.get("id", index) if isinstance(item, dict) else index
                walk(item, f"{key}[{index}]", f"{shown}[{label}]")
        elif isinstance(value, str):
            for match in _REFERENCE.finditer(value):
                found.append(Reference(match.group(1), key, shown, match.group(2)))

    walk(yaml.safe_load(SHIPPED.read_text()), "", "")
    return found


def _section(title: str) -> str:
    start = CONFIG_DOC.index(title)
    rest = CONFIG_DOC[start + len(title) :]
    end = re.search(r"^## ", rest, re.M)
    return rest[: end.start()] if end else rest


def _table(text: str, first: str) -> list[list[str]]:
    """The cells of each row of the table in `text` whose header starts with `first`."""
    for block in re.finditer(r"(?:^\|.*\n?)+", text, re.M):
        lines = block.group(0).splitlines()
        header = [cell.strip() for cell in lines[0].strip().split("|")[1:-1]]
        if header[0] == first:
            return [
                [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
                for line in lines[2:]
            ]
    raise AssertionError(f"no table with a {first!r} column")


def _keys_of(table: list[list[str]]) -> set[str]:
    return {name for row in table for name in re.findall(r"`([a-z_]+)`", row[0])}


# -- environment references ------------------------------------------------------------------
def test_environment_table_names_every_variable_of_the_shipped_config() -> None:
    rows = _table(_section("## Environment references"), "variable")
    documented = {name for row in rows for name in re.findall(r"`([A-Z0-9_]+)`", row[0])}
    used = {ref.variable for ref in shipped_references()}
    assert sorted(used - documented) == [], "variables of config.yaml missing from the table"
    assert sorted(documented - used - PROGRAM_VARIABLES) == [], "variables config.yaml lacks"


def test_environment_table_names_the_key_and_development_default_of_each_variable() -> None:
    rows = _table(_section("## Environment references"), "variable")
    for ref in shipped_references():
        (row,) = [row for row in rows if f"`{ref.variable}`" in row[0]]
        # a channel's key by its id (`channels[sinch-us]…`), as operators find it in the file
        where = ref.shown.split(".secrets.")[0] if ".secrets." in ref.shown else ref.shown
        assert where in row[1], f"{ref.variable}: the row names {row[1]!r}, not {where}"
        if ref.default and "dev-" in ref.default:
            assert f"`{ref.default}`" in row[2], f"{ref.variable}: its default is not shown"


# -- key tables against the schema -------------------------------------------------------------
@pytest.mark.parametrize(
    ("title", "schema_path"),
    [
        ("## Top-level keys", ()),
        ("## `server`", ("server",)),
        ("## `channels[]`", ("channels", "items")),
        ("## `subscribers[]`", ("subscribers", "items")),
        ("## `retention`", ("retention",)),
    ],
)
def test_key_tables_list_exactly_the_schema_keys(title: str, schema_path: tuple[str, ...]) -> None:
    node = SCHEMA
    for part in schema_path:
        node = node["properties"][part] if part != "items" else node["items"]
    table = _keys_of(_table(_section(title), "key"))
    assert sorted(set(node["properties"]) - table) == [], f"{title}: schema keys not documented"
    assert sorted(table - set(node["properties"])) == [], f"{title}: keys the schema lacks"


# -- provider secrets ------------------------------------------------------------------------
def _provider_rows() -> dict[str, str]:
    """Each provider's row of the secrets table, its secrets and settings cells joined."""
    table = _table(_section("## `channels[]`"), "provider")
    return {row[0].strip("`"): " | ".join(row[1:]) for row in table}


def _shipped_providers() -> list[str]:
    return sorted(p.name for p in MAPPINGS.iterdir() if (p / "mapping.yaml").is_file())


def test_provider_secrets_table_covers_every_shipped_provider() -> None:
    rows = _provider_rows()
    in_config = {c["provider"] for c in yaml.safe_load(SHIPPED.read_text())["channels"]}
    assert sorted(in_config - set(rows)) == [], "providers of config.yaml without a row"
    assert sorted(set(_shipped_providers()) - set(rows)) == [], "shipped mappings without a row"
    assert sorted(set(rows) - set(_shipped_providers())) == [], "rows of no shipped mapping"


@pytest.mark.parametrize("provider", _shipped_providers())
def test_provider_row_names_every_secret_its_mapping_reads(provider: str) -> None:
    folder = MAPPINGS / provider
    verified = re.findall(
        r"^\s*-?\s*secret:\s*([a-z_]+)", (folder / "mapping.yaml").read_text(), re.M
    )
    outbound = folder / "outbound.yaml"
    sending = (
        (yaml.safe_load(outbound.read_text()) or {}).get("secrets", [])
        if outbound.is_file()
        else []
    )
    row = _provider_rows()[provider]
    missing = sorted({name for name in [*verified, *sending] if f"`{name}`" not in row})
    assert missing == [], f"{provider}: secrets not in its row: {missing}"
