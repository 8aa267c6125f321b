"""The generated bad-input corpus (tests/bad_input.py) through the app over a real SQLite store.

For every provider: each case signed as the provider signs (0 crashes, 0 5xx; 200, or a 400 /
413 / 415 problem), and every parseable signed payload ends as events or as a quarantine row,
never as nothing (a 200 without a stored payload is only a retry of stored events or Event
Grid's validation answer). A third of the cases is also sent with each credential forged, and
with a signature replayed from another body: refused, and nothing is stored or emitted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import yaml

from bspgate.app import create_app
from bspgate.config import Settings, settings_from_dict
from bspgate.errors import PayloadError
from bspgate.ingress.parse import parse_payload
from bspgate.ingress.verify import ChannelVerifier, SignedRequest
from bspgate.mapping.loader import load_mapping
from bspgate.simulate import signed_request
from tests.asgi_client import TestClient
from tests.bad_input import CHANNEL_OF, Case, corpus
from tests.conftest import MAPPINGS, ROOT, base_config, storage_url
from tests.harness import RunningGateway
from tests.test_ingress_providers import CHANNELS

LIMIT = 65536
PUBLIC = "https://gw.example.com"
CORPUS = corpus(LIMIT)
PROVIDERS = list(CHANNEL_OF)


@dataclass
class Tally:
    """What a provider's run saw (printed, and checked against the issue's numbers)."""

    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp_path: Path = tmp_path_factory.mktemp("corpus")
    config = base_config(tmp_path, server={"public_url": PUBLIC, "max_body_bytes": LIMIT})
    config["storage"] = f"sqlite:///{tmp_path / 'corpus.db'}"
    config["channels"] = [*config["channels"], *CHANNELS]
    return settings_from_dict(config, env={}, base_dir=ROOT)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, dispatch=False), raise_server_exceptions=False) as c:
        yield c


_specs = {name: load_mapping(MAPPINGS, name) for name in PROVIDERS}


def signed(settings: Settings, case: Case) -> tuple[str, dict[str, str], bytes, bool]:
    """(url, headers, body, signed) as the provider would send the case."""
    channel = settings.channel(case.channel_id)
    assert channel is not None
    if not case.raw:
        url, headers, body = signed_request(settings, channel, case.body)
        return url, headers, body, True
    spec = _specs[case.provider]
    verifier = ChannelVerifier(channel, spec.verify)
    url = f"{settings.server.public_url.rstrip('/')}/webhooks/{channel.id}"
    query = verifier.signing_query()
    if query:
        url += "?" + urlencode(query)
    request = SignedRequest("POST", url, {}, case.body, case.content_type)
    headers = {"content-type": case.content_type}
    if "eventgrid_validation" in spec.handshakes:
        headers["aeg-event-type"] = "Notification"
    try:
        headers.update(verifier.sign_headers(request))
    except PayloadError:  # a form the signer cannot read: no provider could sign it either
        return url, headers, case.body, False
    return url, headers, case.body, True


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def _duplicates(client: TestClient, channel_id: str) -> float:
    counter = client.app.state.gateway.metrics.webhooks.labels(channel_id, "duplicate")
    return float(counter._value.get())


def _raw(client: TestClient, raw_id: str) -> Any:
    store = client.app.state.gateway.store
    return client.portal.call(store.read, lambda tx: tx.raw(raw_id))


def _counts(client: TestClient) -> tuple[int, int]:
    store = client.app.state.gateway.store

    def count(tx: Any) -> tuple[int, int]:
        raws = tx.one("SELECT COUNT(*) FROM raw_payloads", ())[0]
        events = tx.one("SELECT COUNT(*) FROM events", ())[0]
        return int(raws), int(events)

    result: tuple[int, int] = client.portal.call(store.read, count)
    return result


def _check_signed(client: TestClient, settings: Settings, case: Case, tally: Tally) -> None:
    url, headers, body, was_signed = signed(settings, case)
    before = _duplicates(client, case.channel_id)
    response = client.post(_path(url), content=body, headers=headers)
    status = response.status_code
    tally.record(status)
    fail = tally.failures.append
    if status >= 500:
        fail(f"{case.name}: {status}")
        return
    allowed = {200, 400, 413, 415} | (set() if was_signed else {401})
    if status not in allowed:
        fail(f"{case.name}: unexpected {status} {response.text[:120]}")
        return
    if status != 200:
        if response.headers.get("content-type") != "application/problem+json":
            fail(f"{case.name}: {status} without a problem document")
        try:
            parse_payload(body, _specs[case.provider].parse)
            parseable = True
        except PayloadError:
            parseable = False
        code = response.json().get("code")
        if parseable and status == 400 and code != "invalid_handshake":
            fail(f"{case.name}: a parseable signed payload answered 400 {code}")
        return
    raw_id = response.headers.get("bspgate-raw-id")
    if raw_id is None:
        validation = "validationResponse" in response.text
        if not validation and _duplicates(client, case.channel_id) <= before:
            fail(f"{case.name}: 200 with nothing stored and no duplicate")
        return
    raw = _raw(client, raw_id)
    if raw is None:
        fail(f"{case.name}: raw {raw_id} answered but not stored")
    elif raw.state == "processed" and raw.event_count < 1:
        fail(f"{case.name}: processed into no events and no quarantine")
    elif raw.state not in ("processed", "quarantined"):
        fail(f"{case.name}: raw state {raw.state}")


def _forgeries(url: str, headers: dict[str, str], signer: dict[str, str]) -> Iterator[Any]:
    """The signed request with each credential wrong, then with each removed."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name in signer:
        value = headers[name]
        wrong = (value[:-2] + ("AA" if not value.endswith("AA") else "BB")) if value else "x"
        yield url, {**headers, name: wrong}
        yield url, {k: v for k, v in headers.items() if k != name}
    for name in query:
        yield parts._replace(query=urlencode({**query, name: "wrong"})).geturl(), headers
        yield parts._replace(query="").geturl(), headers


def _credential_headers(settings: Settings, case: Case, url: str, body: bytes) -> dict[str, str]:
    channel = settings.channel(case.channel_id)
    assert channel is not None
    verifier = ChannelVerifier(channel, _specs[case.provider].verify)
    content_type = "application/x-www-form-urlencoded" if case.provider == "twilio" else ""
    try:
        return verifier.sign_headers(SignedRequest("POST", url, {}, body, content_type))
    except PayloadError:
        return {}


def _check_forged(
    client: TestClient, settings: Settings, case: Case, other: Case, tally: Tally
) -> None:
    url, headers, body, was_signed = signed(settings, case)
    if not was_signed:
        return
    signer = _credential_headers(settings, case, url, body)
    attempts = list(_forgeries(url, headers, signer))
    _o_url, other_headers, other_body, other_signed = signed(settings, other)
    other_signer = _credential_headers(settings, case, url, other_body)
    # a signature replayed from another body (only where the credential binds the body: Basic
    # auth, header secrets and Event Grid's ?code= are the same for every body by design)
    if other_signed and other_body != body and other_signer != signer:
        attempts.append((url, {**other_headers, "content-type": headers["content-type"]}))
    for forged_url, forged_headers in attempts:
        response = client.post(_path(forged_url), content=body, headers=forged_headers)
        tally.record(response.status_code)
        # 415: a Twilio signature over the URL alone verifies for any body, which is why a body
        # it does not cover is refused; nothing is stored either way
        if response.status_code not in (400, 401, 413, 415):
            tally.failures.append(f"{case.name}: forged request answered {response.status_code}")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_signed_corpus_never_5xx_and_never_nothing(
    client: TestClient, settings: Settings, provider: str
) -> None:
    tally = Tally()
    for case in CORPUS:
        if case.provider == provider:
            tally.cases += 1
            _check_signed(client, settings, case, tally)
    print(f"\n{provider}: {tally.cases} signed cases, statuses {sorted(tally.statuses.items())}")
    assert tally.failures == []
    assert not any(status >= 500 for status in tally.statuses)
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("provider", PROVIDERS)
def test_forged_and_replayed_signatures_are_refused(
    client: TestClient, settings: Settings, provider: str
) -> None:
    tally = Tally()
    mine = [case for case in CORPUS if case.provider == provider]
    before = _counts(client)
    for index, case in enumerate(mine):
        if index % 3 == 0:
            tally.cases += 1
            _check_forged(client, settings, case, mine[(index + 1) % len(mine)], tally)
    print(f"\n{provider}: {tally.cases} forged cases, statuses {sorted(tally.statuses.items())}")
    assert tally.failures == []
    assert _counts(client) == before  # no forged payload stored, no event emitted


def test_corpus_is_large_and_covers_every_provider() -> None:
    assert len(CORPUS) >= 500
    assert {case.provider for case in CORPUS} == set(PROVIDERS)
    # every golden case of every mapping (each v1.1 Meta shape) is a seed
    for provider in PROVIDERS:
        seeds = {case.name.split("/")[1] for case in CORPUS if case.provider == provider}
        stems = {  # payload cases: not _channel.yaml, signed or send cases
            p.stem
            for p in (MAPPINGS / provider / "cases").glob("*.yaml")
            if "input" in (yaml.safe_load(p.read_text(encoding="utf-8")) or {})
        }
        assert stems <= seeds


def _metric_duplicates(gateway: RunningGateway) -> float:
    text = gateway.client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bspgate_webhooks_total{") and 'outcome="duplicate"' in line
    )


@pytest.mark.e2e
@pytest.mark.store
def test_corpus_subset_through_a_real_server(tmp_path: Path, store_backend: str) -> None:
    # every 8th case over uvicorn on loopback, on SQLite and (when configured) PostgreSQL
    config = base_config(tmp_path, server={"public_url": PUBLIC, "max_body_bytes": LIMIT})
    config["storage"] = storage_url(tmp_path)
    config["channels"] = [*config["channels"], *CHANNELS]
    with RunningGateway(settings_from_dict(config, env={}, base_dir=ROOT)) as gateway:
        cases = CORPUS[::8]
        statuses: dict[int, int] = {}
        seen = _metric_duplicates(gateway)
        for case in cases:
            url, headers, body, _signed = signed(gateway.settings, case)
            response = gateway.client.post(_path(url), content=body, headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.name, response.status_code)
            if response.status_code == 200 and "bspgate-raw-id" not in response.headers:
                # nothing stored: only a retry of stored events, or Event Grid's validation
                assert "validationResponse" in response.text or _metric_duplicates(gateway) > seen
            seen = _metric_duplicates(gateway)
        print(
            f"\n{store_backend}: {len(cases)} cases over a real server, {sorted(statuses.items())}"
        )
        assert gateway.client.get("/readyz").status_code == 200
