"""What a user meets first: the dev-credentials refusal of `serve`, `GET /v1/raws/{id}` right
after a webhook's 200, routing errors under `/console`, and URL credentials in `config check`.

Real parts only: the `bspgate` console script in a folder of its own, the shared SQLite store
`bspgate serve` opens (with its inbox database), the app in-process.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from bspgate.app import create_app
from bspgate.config import settings_from_dict
from bspgate.simulate import signed_request
from bspgate.store.sqlite import SqliteStore
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, ROOT, base_config, fixture_bytes, make_settings
from tests.console.conftest import csrf_of
from tests.production.helpers import bspgate, clean_env, serving, write_config
from tests.test_docs_configuration import shipped_references

AUTH = {"authorization": f"Bearer {API_KEY}"}


# -- 1. the dev-credentials refusal names every key and the variable to set --------------------
def _without_shipped_variables() -> dict[str, str]:
    used = {ref.variable for ref in shipped_references()}
    return {k: v for k, v in clean_env().items() if k not in used}


def test_refusal_names_every_development_key_with_its_variable(tmp_path: Path) -> None:
    """The Docker image's default command on the shipped config, nothing set yet: every key is
    named (the message was cut at 500 characters), after the variable that sets it."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    env = _without_shipped_variables()
    env["BSPGATE_STORAGE"] = f"sqlite:///{tmp_path / 'gw.db'}"
    result = bspgate("serve", "--host", "0.0.0.0", cwd=tmp_path, env=env)  # noqa: S104
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1  # one line, as every CLI error
    assert "development credentials are in effect" in result.stderr
    assert "--insecure-dev" in result.stderr
    development = [ref for ref in shipped_references() if "dev-" in (ref.default or "")]
    assert len(development) == 11
    for ref in development:
        assert f"{ref.variable} ({ref.key})" in result.stderr, ref
    assert "channels[8].secrets.signature_secret" in result.stderr  # the last, once cut off
    assert "dev-" not in result.stderr.replace("--insecure-dev", "")  # no values


def test_refusal_leaves_out_what_is_set_and_names_a_literal_by_its_key(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        api_keys=[
            {"name": "crm", "key": "${CRM_KEY:-dev-key}"},
            {"name": "ops", "key": "${OPS_KEY:-dev-key}"},
            {"name": "old", "key": "dev-written-here"},
        ],
    )
    env = clean_env(OPS_KEY="a-real-key-0123456789")
    result = bspgate("serve", "--config", str(config), "--host", "0.0.0.0", cwd=tmp_path, env=env)  # noqa: S104
    assert result.returncode == 2
    assert "2 keys hold a development value" in result.stderr
    assert "CRM_KEY (api_keys[0].key)" in result.stderr
    assert "api_keys[1]" not in result.stderr
    assert "api_keys[2].key (written in the config file)" in result.stderr


def test_refusal_names_a_variable_set_to_a_development_value(tmp_path: Path) -> None:
    # set, but to a dev- value (copied from an example): the variable is what to change, the
    # key is not "written in the config file" (session review)
    config = write_config(tmp_path, api_keys=[{"name": "crm", "key": "${CRM_KEY:-dev-key}"}])
    env = clean_env(CRM_KEY="dev-copied-from-the-readme")
    result = bspgate("serve", "--config", str(config), "--host", "0.0.0.0", cwd=tmp_path, env=env)  # noqa: S104
    assert result.returncode == 2
    assert "CRM_KEY (api_keys[0].key)" in result.stderr
    assert "written in the config file" not in result.stderr
    assert "dev-copied-from-the-readme" not in result.stderr  # names, never values


def test_loopback_warning_names_the_variables(tmp_path: Path) -> None:
    config = write_config(tmp_path, api_keys=[{"name": "crm", "key": "${CRM_KEY:-dev-key}"}])
    with serving(config, cwd=tmp_path) as served:
        pass
    lines = [orjson.loads(line) for line in served.stderr.splitlines()]
    (warning,) = [line for line in lines if line["event"] == "bspgate.dev_credentials"]
    assert (warning["keys"], warning["variables"]) == (["api_keys[0].key"], ["CRM_KEY"])


def test_settings_record_the_variables_left_to_their_defaults(tmp_path: Path) -> None:
    config = base_config(
        tmp_path,
        api_keys=[{"name": "crm", "key": "${A:-dev-a}${B:-b}"}, {"name": "ops", "key": "${C:-c}"}],
    )
    settings = settings_from_dict(config, env={"B": "set"}, base_dir=ROOT)
    assert settings.env_defaults == {"api_keys[0].key": ("A",), "api_keys[1].key": ("C",)}


# -- 2. an acknowledged payload waiting in the inbox is `received`, not unknown ----------------
@pytest.mark.anyio
async def test_an_acknowledged_payload_waiting_in_the_inbox_is_received(tmp_path: Path) -> None:
    """`serve`'s server process between the webhook's 200 and the worker's pickup: the payload
    is in `<db>-inbox` only (the worker process is not running here)."""
    settings = make_settings(tmp_path)
    store = SqliteStore.from_dsn(settings.storage, shared=True)  # what `serve` opens
    app = create_app(settings, store=store, processing="worker", dispatch=False)
    await store.open()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            channel = settings.channel("cloud-us")
            assert channel is not None
            url, headers, body = signed_request(
                settings, channel, fixture_bytes("cloudapi", "inbound_bsuid_only")
            )
            path = url.replace(settings.server.public_url, "")
            answer = await client.post(path, content=body, headers=headers)
            assert answer.status_code == 200
            raw_id = answer.headers["bspgate-raw-id"]
            assert await store.read(lambda tx: tx.raw(raw_id)) is None  # not processed yet
            found = await client.get(f"/v1/raws/{raw_id}", headers=AUTH)
            unknown = await client.get("/v1/raws/raw_nothing", headers=AUTH)
            replay = await client.post(
                "/v1/replays", json={"quarantined": True, "raw_id": raw_id}, headers=AUTH
            )
    finally:
        await store.close()
    assert found.status_code == 200, found.text
    answer_body = found.json()
    received_at = answer_body.pop("received_at")
    assert received_at.endswith("Z")
    assert answer_body == {
        "id": raw_id,
        "channel_id": "cloud-us",
        "provider": "cloudapi",
        "state": "received",
        "reason": None,
        "event_count": 0,
        "events": [],
    }
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "unknown_raw"
    # a replay of it says why there is nothing to replay, not "no raw payload" (session review)
    assert replay.status_code == 422, replay.text
    assert "is not processed yet (received)" in replay.json()["detail"]


# -- 4. routing errors under /console ---------------------------------------------------------
ROUTING_ERRORS = [
    ("GET", "/console/no-such-page", 404),
    ("GET", "/console/static/no-such-file.js", 404),
    ("PUT", "/console/login", 405),
]


@pytest.fixture
def console(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path), dispatch=False)) as client:
        yield client


@pytest.mark.parametrize(("method", "path", "status"), ROUTING_ERRORS)
def test_console_routing_errors_are_problems(
    console: TestClient, method: str, path: str, status: int
) -> None:
    answer = console.request(method, path, follow_redirects=False)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json", answer.text[:100]
    assert answer.json()["status"] == status
    if status == 405:
        assert answer.headers["allow"] == "GET, HEAD, POST"


@pytest.mark.parametrize(("method", "path", "status"), ROUTING_ERRORS)
def test_a_browser_gets_the_console_page_for_a_routing_error(
    console: TestClient, method: str, path: str, status: int
) -> None:
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    answer = console.request(method, path, headers={"accept": accept}, follow_redirects=False)
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/html")
    assert "Not found" in answer.text if status == 404 else "Method not allowed" in answer.text
    assert 'href="/console/"' in answer.text  # the way back
    if status == 405:
        assert answer.headers["allow"] == "GET, HEAD, POST"


@pytest.mark.anyio
async def test_an_unexpected_console_error_is_a_problem_logged_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = SqliteStore.from_dsn(settings.storage)
    app = create_app(settings, store=store, dispatch=False)
    await store.open()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    # the session cookie is `Secure`: `server.public_url` is https
    base = settings.server.public_url
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        token = csrf_of((await client.get("/console/login")).text)
        login = await client.post("/console/login", data={"csrf": token, "key": API_KEY})
        assert login.status_code == 303
        await store.close()  # the session lookup of the next page fails
        with capture_logs() as logs:
            answer = await client.get("/console/")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "internal_error"
    assert [line["event"] for line in logs].count("http.unhandled") == 1


# -- 5. URL credentials in channel settings are masked ------------------------------------------
PROXIED = "https://proxyuser:ProxyPassw0rd@graph.example.com/?access_token=QueryTok3n&v=1"


def test_config_check_masks_url_credentials_in_channel_settings(tmp_path: Path) -> None:
    """Only credentials are masked: a URL without any, and values that are no URL (a header
    name holding `password=`, numbers, booleans), are shown as configured."""
    settings = {
        "phone_number_id": "106540352242922",
        "base_url": PROXIED,
        "status_url": "https://graph.facebook.com/v21.0",
        "webhook_header": "password=not-a-dsn",
        "api_version": 21,
        "sandbox": True,
    }
    channel = {
        "id": "cloud-us",
        "provider": "cloudapi",
        "portfolio": "acme",
        "secrets": {"app_secret": "s1", "verify_token": "s2", "access_token": "s3"},
        "settings": settings,
    }
    config = write_config(tmp_path, channels=[channel])
    result = bspgate("config", "check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test-api-key" not in result.stdout
    assert "ProxyPassw0rd" not in result.stdout
    assert "QueryTok3n" not in result.stdout
    shown = orjson.loads(result.stdout)["channels"][0]["settings"]
    masked = "https://proxyuser:****@graph.example.com/?access_token=****&v=1"
    assert shown == {**settings, "base_url": masked}
