"""Versioned migrations: `migrations/NNN_name.sql`, applied in name order, recorded in a table.

A migration is known by its file name, so two branches may each add an `NNN_` file with the same
number (`002_identity.sql` beside `002_sends.sql`); each is recorded under the next free version.

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


KNOWN = frozenset(m.name for m in migrations("sqlite"))


def apply_migrations(tx: Any, dialect: str) -> None:
    """Apply every migration `tx`'s database lacks, in order, recording each (one transaction)."""
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    rows = tx.all("SELECT version, name FROM schema_migrations")
    done = {row[1] for row in rows}
    version = max((row[0] for row in rows), default=0)
    for migration in migrations(dialect):
        if migration.name in done:
            continue
        for statement in migration.statements:
            tx.execute(statement)
        version += 1
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (version, migration.name, datetime.now(UTC).isoformat()),
        )
        _log.info("store.migrated", version=migration.version, migration=migration.name)


def schema_current(tx: Any) -> bool:
    """True when every migration this version of bspgate knows is applied."""
    return {row[0] for row in tx.all("SELECT name FROM schema_migrations")} >= KNOWN
