"""Shared fixtures: settings built in code, a real SQLite store on tmp_path, signed requests.

Store backends: a test module (or test) marked `store` runs once per backend, as
`test[sqlite]` and `test[postgres]`. `make_settings`/`storage_url` then name the backend of the
running test: SQLite on tmp_path as always, or a fresh PostgreSQL schema of its own when
`BSPGATE_TEST_POSTGRES_URL` names a server (without it the PostgreSQL half is skipped with the
reason; with it and no server, those tests fail). Unmarked tests run once, on SQLite.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bspgate.config import Settings, settings_from_dict
from tests.store import pg

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
APP_SECRET = "test-app-secret"
SUBSCRIBER_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
API_KEY = "test-api-key"


def fixture_bytes(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / f"{name}.json").read_bytes()


def fixture_json(provider: str, name: str) -> Any:
    return json.loads(fixture_bytes(provider, name))


def meta_signature(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def base_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "storage": storage_url(tmp_path),
        "mappings": str(MAPPINGS),
        "server": {"public_url": "https://gw.example.com"},
        "api_keys": [{"name": "test", "key": API_KEY}],
        "channels": [
            {
                "id": "cloud-us",
                "provider": "cloudapi",
                "portfolio": "acme",
                "business_phone": "+15550001111",
                "secrets": {"app_secret": APP_SECRET, "verify_token": "vt"},
            }
        ],
        "subscribers": [],
    }
    config.update(overrides)
    return config


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return settings_from_dict(base_config(tmp_path, **overrides), env={}, base_dir=ROOT)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- store backends -------------------------------------------------------------------------------
# The PostgreSQL DSN of the running `[postgres]` test, None otherwise (tests run one at a time).
_active_postgres: str | None = None

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not pg.POSTGRES_URL, reason=pg.SKIP_REASON),
        ],
    ),
]


def storage_url(tmp_path: Path, name: str = "bspgate.db") -> str:
    """The `storage` DSN for the running test: its PostgreSQL schema, else SQLite on tmp_path."""
    return _active_postgres or f"sqlite:///{tmp_path / name}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "store: runs once per store backend (SQLite; PostgreSQL when configured)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("store") is not None:
        metafunc.parametrize("store_backend", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One throwaway database for the session's PostgreSQL tests (dropped at the end)."""
    if not pg.POSTGRES_URL:
        pytest.skip(pg.SKIP_REASON)
    with pg.session_database(pg.POSTGRES_URL) as url:
        yield url


@pytest.fixture
def postgres_dsn(postgres_database: str) -> Iterator[str]:
    """A DSN onto an empty schema of the session database, dropped after the test."""
    with pg.fresh_schema(postgres_database) as dsn:
        yield dsn


@pytest.fixture(autouse=True)
def store_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """ "sqlite" unless the test is a `[postgres]` run of a `store` test (autouse: set up first,
    so every fixture that builds settings sees the backend)."""
    global _active_postgres
    backend: str = getattr(request, "param", "sqlite")
    if backend != "postgres":
        yield backend
        return
    _active_postgres = request.getfixturevalue("postgres_dsn")
    try:
        yield backend
    finally:
        _active_postgres = None
