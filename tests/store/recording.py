"""A database connection that keeps every statement run through it (text, parameters)."""

from __future__ import annotations

from typing import Any


class Recording:
    """Wraps a sqlite3 or psycopg connection for `SqlTx`: `seen` lists what it ran, in order."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.seen: list[tuple[str, Any]] = []

    def execute(self, sql: str, params: Any = ()) -> Any:
        self.seen.append((sql, params))
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        self.seen.append((sql, rows))
        return self.conn.executemany(sql, rows)
