"""The `/v1` contract: the OpenAPI document lists exactly the app's routes, is valid OpenAPI
3.1, and a live server answers schemathesis' generated requests without a server error and
with responses that match the document."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from bspgate.api.openapi import openapi_document
from bspgate.app import create_app
from tests.conftest import API_KEY, SUBSCRIBER_SECRET, fixture_bytes, make_settings
from tests.harness import RunningGateway

AUTH = {"authorization": f"Bearer {API_KEY}"}


def test_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_document_lists_exactly_the_v1_routes(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), dispatch=False)
    routed = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith("/v1")
        for method in (route.methods or ())
        if method != "HEAD"
    }
    documented = {
        (path, method) for path, item in openapi_document()["paths"].items() for method in item
    }
    assert routed == documented


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("openapi")
    subscriber = {"id": "crm", "url": "http://127.0.0.1:9/hook", "secret": SUBSCRIBER_SECRET}
    gateway_settings = make_settings(tmp, subscribers=[subscriber])
    with RunningGateway(gateway_settings, dispatch=False) as gateway:
        # something to find: a stored event, a quarantined payload
        assert (
            gateway.post("cloud-us", fixture_bytes("cloudapi", "inbound_bsuid_only")).status_code
            == 200
        )
        yield str(gateway.client.base_url).rstrip("/")


SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,"
CHECKS += "response_schema_conformance"


@pytest.mark.e2e
def test_live_server_honours_the_document(live: str, tmp_path: Path) -> None:
    """schemathesis (bounded: 15 examples per operation, fixed seed) against the live server."""
    report = tmp_path / "junit.xml"
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{live}/v1/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "15",
            "--seed",
            "1",
            "--header",
            f"Authorization: Bearer {API_KEY}",
            "--phases",
            "examples,coverage,fuzzing",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    tail = result.stdout[-6000:]
    assert result.returncode == 0, tail
    names = {case.get("name", "") for case in ElementTree.parse(report).getroot().iter("testcase")}  # noqa: S314
    for path, item in openapi_document()["paths"].items():
        for method in item:
            if path != "/v1/openapi.json":  # the document itself is what is being read
                assert f"{method.upper()} {path}" in names, (method, path, sorted(names))


@pytest.mark.e2e
def test_routing_errors_are_problems(live: str) -> None:
    missing = httpx.get(f"{live}/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong = httpx.put(f"{live}/v1/contacts/ct_1", headers=AUTH)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "DELETE, GET, HEAD"  # every route of the path
    assert wrong.json()["status"] == 405
    hook = httpx.delete(f"{live}/webhooks/cloud-us")
    assert hook.status_code == 405
    assert hook.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert missing.headers["x-request-id"]


@pytest.mark.e2e
def test_events_reject_bad_times_and_huge_cursors(live: str) -> None:
    import base64

    huge = base64.urlsafe_b64encode(f"s{2**64}".encode()).decode().rstrip("=")
    assert httpx.get(f"{live}/v1/events", params={"cursor": huge}, headers=AUTH).status_code == 400
    bad = httpx.get(f"{live}/v1/events", params={"since": "yesterday"}, headers=AUTH)
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    stored = httpx.get(f"{live}/v1/events", headers=AUTH).json()["data"][0]["time"]
    assert stored.endswith("Z")
    # the same instant written with an offset finds the event; one second later does not
    from bspgate.times import iso, parse_time

    moment = parse_time(stored)
    plus_one = moment.astimezone(
        __import__("datetime").timezone(__import__("datetime").timedelta(hours=1))
    )
    found = httpx.get(f"{live}/v1/events", params={"since": plus_one.isoformat()}, headers=AUTH)
    assert len(found.json()["data"]) == 1
    later = iso(moment + __import__("datetime").timedelta(seconds=1))
    assert (
        httpx.get(f"{live}/v1/events", params={"since": later}, headers=AUTH).json()["data"] == []
    )


@pytest.mark.e2e
def test_replay_refuses_unknown_references(live: str) -> None:
    for body in ({"since": "not a time"}, {"subscriber_id": "nobody"}, {"type": "whatsapp.nope"}):
        answer = httpx.post(f"{live}/v1/replays", json=body, headers=AUTH)
        assert answer.status_code == 422, body
        assert answer.json()["code"] == "invalid_replay"


@pytest.mark.e2e
def test_replay_without_a_scope_is_refused_and_all_must_be_said(live: str) -> None:
    # a bare POST used to requeue every subscriber's whole dead-letter queue
    bare = httpx.post(f"{live}/v1/replays", headers=AUTH)
    assert (bare.status_code, bare.json()["code"]) == (400, "invalid_replay")
    assert '"all": true' in bare.json()["detail"]
    for body in ({}, {"dry_run": True}, {"all": "yes"}, {"states": ["dead"]}):
        answer = httpx.post(f"{live}/v1/replays", json=body, headers=AUTH)
        assert answer.status_code == 400, body
    everything = httpx.post(f"{live}/v1/replays", json={"all": True, "dry_run": True}, headers=AUTH)
    assert everything.status_code == 200
    assert everything.json()["dry_run"] is True


@pytest.mark.parametrize("name", ["event_id", "subscriber_id", "type", "raw_id"])
def test_replay_names_are_declared_as_the_server_reads_them(name: str) -> None:
    # the server refuses a blank name or one holding NUL (400): the document says so, so a
    # client generated from it (or schemathesis) does not send them as valid
    schema = openapi_document()["components"]["schemas"]["ReplayRequest"]["properties"][name]
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid("evt_01 x")
    for refused in ("", " ", "\t\n", "a\x00b", "\x00"):
        assert not validator.is_valid(refused), repr(refused)
