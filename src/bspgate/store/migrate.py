"""Versioned migrations: `migrations/NNN_name.sql`, applied in order, recorded in a table.

The SQL files are written once for both backends; the few spelling differences are placeholders
replaced per dialect here (`BIGSERIAL_PK`, `BYTEA`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import structlog

_log = structlog.get_logger("bspgate.store")

_DIALECT = {
    "sqlite": {"BIGSERIAL_PK": "INTEGER PRIMARY KEY AUTOINCREMENT", "BYTEA": "BLOB"},
    "postgres": {"BIGSERIAL_PK": "BIGSERIAL PRIMARY KEY", "BYTEA": "BYTEA"},
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def migrations(dialect: str) -> list[Migration]:
    """Every migration, in version order, spelled for `dialect` ("sqlite" or "postgres")."""
    out = []
    folder = resources.files("bspgate.store.migrations")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        text = entry.read_text(encoding="utf-8")
        for placeholder, spelling in _DIALECT[dialect].items():
            text = text.replace(placeholder, spelling)
        lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
        statements = tuple(s.strip() for s in "\n".join(lines).split(";") if s.strip())
        version = int(entry.name.split("_", 1)[0])
        out.append(Migration(version, entry.name.removesuffix(".sql"), statements))
    return out


LATEST = max((m.version for m in migrations("sqlite")), default=0)


def apply_migrations(tx: Any, dialect: str) -> None:
    """Apply every migration `tx`'s database lacks, in order, recording each (one transaction)."""
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in tx.all("SELECT version FROM schema_migrations")}
    for migration in migrations(dialect):
        if migration.version in done:
            continue
        for statement in migration.statements:
            tx.execute(statement)
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, datetime.now(UTC).isoformat()),
        )
        _log.info("store.migrated", version=migration.version, migration=migration.name)


def schema_current(tx: Any) -> bool:
    """True when every migration this version of bspgate knows is applied."""
    row = tx.one("SELECT MAX(version) FROM schema_migrations")
    return row is not None and row[0] == LATEST
