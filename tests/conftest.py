"""Shared fixtures: settings built in code, a real SQLite store on tmp_path, signed requests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from bspgate.config import Settings, settings_from_dict

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
        "storage": f"sqlite:///{tmp_path / 'bspgate.db'}",
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
