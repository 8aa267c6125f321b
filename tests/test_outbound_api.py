"""POST /v1/messages and GET /v1/messages/{id} through the app, with respx for the provider.

Idempotency, dry runs, a retired BSUID replaced by the current one, the service-window policies,
provider rejections mapped to 502 (their reasons without phones or channel secrets), retries only
where the call is keyed (an attempt that may have sent keeps the outcome unknown), a missing
secret refused before the key is taken, and Azure's access-key signature against a vector
computed independently (openssl, from Azure's documented algorithm).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from bspgate.app import create_app
from bspgate.identity.resolver import IdentityResolver, Observation
from bspgate.outbound.rewrite import azure_hmac_headers
from tests.asgi_client import TestClient
from tests.conftest import API_KEY
from tests.test_outbound_providers import (
    ALIAS_BSUID,
    ALIAS_PHONE,
    BSUID,
    answer_json,
    channel_id,
    make_settings,
    stand_in,
    template,
    text,
)

NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
CLOUD = channel_id("cloudapi")  # the folder's test channel (mappings/cloudapi/cases/_channel.yaml)
META_URL = f"{stand_in('cloudapi')}/v23.0/106540352242922/messages"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class Gateway:
    """The app under a TestClient, a respx router for providers, and store helpers."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.settings = make_settings(tmp_path, **overrides)
        self.http = httpx.AsyncClient()
        self.app = create_app(
            self.settings, http_client=self.http, clock=lambda: NOW, dispatch=False
        )
        self.client = TestClient(self.app)

    def transaction(self, work: Any) -> Any:
        return self.client.portal.call(self.app.state.gateway.store.transaction, work)  # type: ignore[union-attr]

    def person(
        self,
        *,
        bsuid: str | None = None,
        phone: str | None = None,
        wrote: datetime | None = None,
        channel: str = CLOUD,
    ) -> str:
        def work(tx: Any) -> str:
            contact = IdentityResolver(tx, "acme", channel, iso(NOW)).observe(
                Observation(bsuid=bsuid, phone=phone)
            )
            if wrote is not None:
                tx.mark_inbound(contact.id, channel, iso(wrote))
            return contact.id

        return str(self.transaction(work))

    def post(self, send: dict[str, Any], key: str | None = None, query: str = "") -> httpx.Response:
        headers = dict(AUTH)
        if key:
            headers["idempotency-key"] = key
        return self.client.post(f"/v1/messages{query}", json=send, headers=headers)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path)
    with gateway.client:
        yield gateway


def cloud(send: dict[str, Any]) -> dict[str, Any]:
    return {**send, "channel": CLOUD}


def meta_ok(router: respx.MockRouter) -> respx.Route:
    """Meta accepting every send, each with its own wamid (as the real API does)."""
    counter = iter(range(1, 1000))

    def accept(request: httpx.Request) -> httpx.Response:
        answer = answer_json("cloudapi")
        answer["messages"][0]["id"] += str(next(counter))
        return httpx.Response(200, json=answer)

    return router.post(META_URL).mock(side_effect=accept)


def test_send_answers_202_with_the_contract_fields(gw: Gateway) -> None:
    contact = gw.person(bsuid=BSUID, wrote=NOW - timedelta(hours=2))
    with respx.mock(assert_all_called=True) as router:
        meta_ok(router)
        response = gw.post(cloud(text({"contact_id": contact})))
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {
        "id",
        "channel",
        "provider",
        "provider_message_id",
        "addressed_by",
        "contact_id",
    }
    assert body["id"].startswith("snd_")
    assert (body["channel"], body["provider"], body["addressed_by"]) == (
        CLOUD,
        "cloudapi",
        "bsuid",
    )
    assert body["provider_message_id"] == answer_json("cloudapi")["messages"][0]["id"] + "1"
    assert body["contact_id"] == contact


def test_send_needs_a_bearer_key(gw: Gateway) -> None:
    response = gw.client.post("/v1/messages", json=cloud(text({"bsuid": BSUID})))
    assert response.status_code == 401


def test_invalid_request_is_a_problem_naming_the_path(gw: Gateway) -> None:
    response = gw.post(cloud({"to": {"bsuid": BSUID}, "type": "text"}))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_request"


def test_same_idempotency_key_answers_the_first_answer_and_calls_once(gw: Gateway) -> None:
    gw.person(bsuid=BSUID, wrote=NOW - timedelta(hours=1))
    with respx.mock(assert_all_called=True) as router:
        route = meta_ok(router)
        first = gw.post(cloud(text({"bsuid": BSUID})), key="order-1234")
        second = gw.post(cloud(text({"bsuid": BSUID})), key="order-1234")
    assert route.call_count == 1
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"


def test_idempotency_key_with_another_request_is_refused(gw: Gateway) -> None:
    gw.person(bsuid=BSUID, wrote=NOW - timedelta(hours=1))
    with respx.mock(assert_all_called=True) as router:
        route = meta_ok(router)
        gw.post(cloud(text({"bsuid": BSUID})), key="k-1")
        other = gw.post(cloud({**text({"bsuid": BSUID}), "text": {"body": "Another"}}), key="k-1")
    assert route.call_count == 1
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")


def test_dry_run_answers_the_request_and_sends_nothing(gw: Gateway) -> None:
    gw.person(bsuid=BSUID, wrote=NOW - timedelta(hours=1))
    with respx.mock(assert_all_called=False) as router:
        route = meta_ok(router)
        response = gw.post(cloud(text({"bsuid": BSUID})), query="?dry_run=true")
    assert route.call_count == 0
    assert response.status_code == 200
    body = response.json()
    assert body["url"] == META_URL
    assert body["headers"]["Authorization"] == "Bearer ****"
    assert body["body"]["recipient"] == BSUID


def test_a_parent_bsuid_is_sent_to_as_given_not_replaced(gw: Gateway) -> None:
    parent = "US.ENT.11815799212886844830"

    def seen(tx: Any) -> str:
        resolver = IdentityResolver(tx, "acme", CLOUD, iso(NOW))
        contact = resolver.observe(Observation(bsuid=BSUID, parent_bsuid=parent))
        tx.mark_inbound(contact.id, CLOUD, iso(NOW - timedelta(hours=1)))
        return str(contact.id)

    contact = gw.transaction(seen)
    with respx.mock(assert_all_called=True) as router:
        route = meta_ok(router)
        response = gw.post(cloud(text({"bsuid": parent})))
    assert response.status_code == 202, response.text
    assert response.json()["contact_id"] == contact
    assert "replaced_bsuid" not in response.json()  # only a retired BSUID is replaced
    assert json.loads(route.calls.last.request.content)["recipient"] == parent


def test_retired_bsuid_is_replaced_by_the_current_one(gw: Gateway) -> None:
    old, new = "US.10000000000000000001", "US.20000000000000000002"
    contact = gw.person(bsuid=old, phone="+15550009999", wrote=NOW - timedelta(hours=1))

    def relink(tx: Any) -> None:
        IdentityResolver(tx, "acme", CLOUD, iso(NOW)).relink(Observation(bsuid=new), old, None)

    gw.transaction(relink)
    with respx.mock(assert_all_called=True) as router:
        route = meta_ok(router)
        response = gw.post(cloud(text({"bsuid": old, "phone": "+15550009999"})))
    assert response.status_code == 202
    body = response.json()
    assert body["contact_id"] == contact
    assert body["replaced_bsuid"] == {"given": old, "current": new}
    assert body["ignored_phone"] == "retired"  # the old number was retired with the old BSUID
    sent = json.loads(route.calls.last.request.content)
    assert sent["recipient"] == new
    assert "to" not in sent


@pytest.mark.parametrize(
    ("policy", "status", "warnings"),
    [("enforce", 422, None), ("warn", 202, ["outside_service_window"]), ("off", 202, None)],
)
def test_service_window_policies(tmp_path: Path, policy: str, status: int, warnings: Any) -> None:
    gateway = Gateway(tmp_path, cloudapi={"service_window": policy})
    with gateway.client:
        gateway.person(bsuid=BSUID, wrote=NOW - timedelta(hours=25))
        with respx.mock(assert_all_called=False) as router:
            route = meta_ok(router)
            response = gateway.post(cloud(text({"bsuid": BSUID})))
            templated = gateway.post(cloud(template({"bsuid": BSUID})))
    assert response.status_code == status
    if status == 422:
        assert response.json()["code"] == "outside_service_window"
        assert route.call_count == 1  # only the template went out
    else:
        assert response.json().get("warnings") == warnings
    assert templated.status_code == 202  # templates are never held by the window


def test_inside_the_window_free_form_goes_out(gw: Gateway) -> None:
    gw.person(bsuid=BSUID, wrote=NOW - timedelta(hours=23, minutes=59))
    with respx.mock(assert_all_called=True) as router:
        meta_ok(router)
        assert gw.post(cloud(text({"bsuid": BSUID}))).status_code == 202


def test_unknown_contact_is_refused(gw: Gateway) -> None:
    response = gw.post(cloud(text({"contact_id": "ct_01HZZZZZZZZZZZZZZZZZZZZZZZ"})))
    assert (response.status_code, response.json()["code"]) == (422, "unknown_contact")


def test_meta_131062_maps_to_auth_template_requires_phone(gw: Gateway) -> None:
    gw.person(bsuid=BSUID)
    with respx.mock(assert_all_called=True) as router:
        router.post(META_URL).mock(
            return_value=httpx.Response(400, json=answer_json("cloudapi", "error_131062"))
        )
        response = gw.post(cloud(template({"bsuid": BSUID})))
    assert response.status_code == 502
    problem = response.json()
    assert problem["code"] == "auth_template_requires_phone"
    assert problem["provider_code"] == "131062"
    assert "phone number recipient" in problem["detail"]
    assert problem["retryable"] is False


def test_other_provider_rejection_is_502_provider_error(gw: Gateway) -> None:
    gw.person(bsuid=BSUID)
    error = {"error": {"message": "(#132001) Template name does not exist", "code": 132001}}
    with respx.mock(assert_all_called=True) as router:
        router.post(META_URL).mock(return_value=httpx.Response(404, json=error))
        response = gw.post(cloud(template({"bsuid": BSUID})), key="t-1")
        again = gw.post(cloud(template({"bsuid": BSUID})), key="t-1")
    assert (response.status_code, response.json()["code"]) == (502, "provider_error")
    assert response.json()["provider_code"] == "132001"
    assert again.json() == response.json()  # a definite rejection is replayed, not retried


def test_timeout_on_an_unkeyed_provider_is_not_retried(gw: Gateway) -> None:
    gw.person(bsuid=BSUID)
    with respx.mock(assert_all_called=True) as router:
        route = router.post(META_URL).mock(side_effect=httpx.ReadTimeout("slow"))
        response = gw.post(cloud(template({"bsuid": BSUID})), key="t-2")
        assert route.call_count == 1  # Meta has no idempotency key: a retry could send twice
        route.mock(return_value=httpx.Response(200, json=answer_json("cloudapi")))
        retried = gw.post(cloud(template({"bsuid": BSUID})), key="t-2")
        assert route.call_count == 1  # the same key never calls the provider again
        fresh = gw.post(cloud(template({"bsuid": BSUID})), key="t-3")
    assert response.status_code == 502
    assert response.json()["code"] == "send_outcome_unknown"
    assert response.json()["outcome"] == "unknown"
    # the message may have gone: every retry with the key hears the same, a new key sends again
    assert (retried.status_code, retried.json()) == (502, response.json())
    assert fresh.status_code == 202


def test_5xx_on_a_keyed_provider_is_retried(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path)
    with gateway.client:
        gateway.person(bsuid=BSUID, channel=channel_id("azure_acs"))
        url = f"{stand_in('azure_acs')}/messages/notifications:send"
        with respx.mock(assert_all_called=True) as router:
            route = router.post(url__startswith=url).mock(
                side_effect=[
                    httpx.Response(503, json={"error": {"code": "Busy", "message": "later"}}),
                    httpx.Response(202, json=answer_json("azure_acs")),
                ]
            )
            response = gateway.post(
                {**template({"bsuid": BSUID}), "channel": channel_id("azure_acs")}
            )
    assert response.status_code == 202
    assert route.call_count == 2
    first, second = (call.request for call in route.calls)
    assert first.headers["repeatability-request-id"] == second.headers["repeatability-request-id"]


AZURE_URL = f"{stand_in('azure_acs')}/messages/notifications:send"


@pytest.mark.parametrize(
    "first",
    [
        httpx.ReadTimeout("no answer"),  # written, never answered: Azure may have sent it
        httpx.Response(503, json={"error": {"code": "Busy", "message": "later"}}),
    ],
    ids=["timeout", "5xx"],
)
def test_a_keyed_retry_that_cannot_connect_keeps_the_outcome_unknown(
    gw: Gateway, first: Any
) -> None:
    # Attempt 1 may have reached Azure; attempts 2 and 3 cannot connect. "Nothing was sent"
    # would free the key, and a retry with it would go out under a new Repeatability-Request-ID.
    gw.person(bsuid=BSUID, channel=channel_id("azure_acs"))
    send = {**template({"bsuid": BSUID}), "channel": channel_id("azure_acs")}
    refused = httpx.ConnectError("refused")
    with respx.mock(assert_all_called=True) as router:
        route = router.post(url__startswith=AZURE_URL).mock(side_effect=[first, refused, refused])
        response = gw.post(send, key="azure-1")
        assert route.call_count == 3
        route.side_effect = None
        route.return_value = httpx.Response(202, json=answer_json("azure_acs"))
        again = gw.post(send, key="azure-1")
    problem = response.json()
    assert (response.status_code, problem["code"]) == (502, "send_outcome_unknown")
    assert problem["outcome"] == "unknown"
    assert "nothing was sent" not in problem["detail"]
    assert "attempt 1 of 3" in problem["detail"]
    assert route.call_count == 3  # the same key never calls the provider again
    assert (again.status_code, again.json()) == (502, problem)


def test_a_keyed_retry_that_never_connects_frees_the_key(gw: Gateway) -> None:
    # nothing reached Azure on any attempt: a definite "nothing was sent", retryable with the key
    gw.person(bsuid=BSUID, channel=channel_id("azure_acs"))
    send = {**template({"bsuid": BSUID}), "channel": channel_id("azure_acs")}
    with respx.mock(assert_all_called=True) as router:
        route = router.post(url__startswith=AZURE_URL).mock(
            side_effect=[httpx.ConnectError("refused")] * 3
        )
        response = gw.post(send, key="azure-2")
        route.side_effect = None
        route.return_value = httpx.Response(202, json=answer_json("azure_acs"))
        again = gw.post(send, key="azure-2")
    assert (response.status_code, response.json()["code"]) == (502, "provider_error")
    assert "nothing was sent" in response.json()["detail"]
    assert again.status_code == 202


TWILIO_SID = "AC0123456789abcdef0123456789abcdef"  # the twilio test channel's account_sid secret
TWILIO_URL = f"{stand_in('twilio')}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"


def test_a_rejection_reason_does_not_repeat_the_phone(gw: Gateway) -> None:
    # Twilio 21211 quotes the number (twilio-php#665, twilio-node#341)
    phone = "+15557654321"
    error = {
        "code": 21211,
        "message": f"The 'To' number whatsapp:{phone} is not a valid phone number.",
        "more_info": "https://www.twilio.com/docs/errors/21211",
        "status": 400,
    }
    with respx.mock(assert_all_called=True) as router:
        router.post(TWILIO_URL).mock(return_value=httpx.Response(400, json=error))
        send = {**template({"phone": phone}), "channel": channel_id("twilio")}
        response = gw.post(send, key="tw-1")
        replayed = gw.post(send, key="tw-1")  # the stored answer, as GET /v1/messages shows it
    problem = response.json()
    assert (response.status_code, problem["provider_code"]) == (502, "21211")
    assert problem["detail"] == (
        "The 'To' number whatsapp:*********21 is not a valid phone number."
    )  # the rest of Twilio's reason is kept
    assert phone.lstrip("+") not in response.text
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == problem


def test_a_rejection_reason_does_not_repeat_a_channel_secret(gw: Gateway) -> None:
    # Twilio 20404 quotes the request path, Account SID included (demisto/content#28986)
    error = {
        "code": 20404,
        "message": f"The requested resource /2010-04-01/Accounts/{TWILIO_SID}/Messages.json "
        "was not found",
        "status": 404,
    }
    with respx.mock(assert_all_called=True) as router:
        router.post(TWILIO_URL).mock(return_value=httpx.Response(404, json=error))
        response = gw.post({**template({"phone": "+15557654321"}), "channel": channel_id("twilio")})
    assert response.status_code == 502
    assert TWILIO_SID not in response.text
    assert response.json()["detail"] == (
        "The requested resource /2010-04-01/Accounts/****/Messages.json was not found"
    )


def test_a_missing_secret_does_not_take_the_idempotency_key(tmp_path: Path) -> None:
    # refused before anything is sent: once the operator adds the secret, the same key sends
    broken = Gateway(tmp_path, cloudapi={"secrets": {"app_secret": "x"}})
    send = cloud(text({"bsuid": BSUID}))
    with broken.client:
        broken.person(bsuid=BSUID, wrote=NOW - timedelta(hours=1))
        with respx.mock(assert_all_called=False) as router:
            route = meta_ok(router)
            first = broken.post(send, key="fix-then-retry")
        assert route.call_count == 0
    assert (first.status_code, first.json()["code"]) == (500, "channel_not_configured")
    fixed = Gateway(tmp_path)  # the same store, the secret now configured
    with fixed.client, respx.mock(assert_all_called=True) as router:
        route = meta_ok(router)
        again = fixed.post(send, key="fix-then-retry")
    assert again.headers.get("idempotent-replayed") != "true"
    assert again.status_code == 202, again.text
    assert route.call_count == 1


def test_get_message_shows_the_send_and_its_statuses(gw: Gateway) -> None:
    contact = gw.person(bsuid=ALIAS_BSUID, phone=ALIAS_PHONE)
    with respx.mock(assert_all_called=True) as router:
        meta_ok(router)
        sent = gw.post(cloud(template({"contact_id": contact}))).json()
    found = gw.client.get(f"/v1/messages/{sent['id']}", headers=AUTH)
    assert found.status_code == 200
    body = found.json()
    assert (body["state"], body["contact_id"]) == ("sent", contact)
    assert body["provider_message_id"] == sent["provider_message_id"]
    assert body["statuses"] == []
    assert gw.client.get("/v1/messages/snd_nope", headers=AUTH).status_code == 404


def test_azure_signature_matches_an_independent_vector() -> None:
    # Computed with openssl from Azure's documented scheme (not with this code):
    #   hash = base64(sha256(body)); sig = base64(HMAC-SHA256(base64decode(key),
    #   "POST\n/messages/notifications:send?api-version=2024-08-30\n<date>;<host>;<hash>"))
    key = (
        "YXp1cmUtYWNjZXNzLWtleS1mb3ItdGVzdHMtMDAwMQ=="  # base64("azure-access-key-for-tests-0001")
    )
    headers = azure_hmac_headers(
        key,
        "POST",
        "https://acme.communication.azure.test/messages/notifications:send?api-version=2024-08-30",
        b'{"kind":"text"}',
        datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC),
    )
    assert headers["x-ms-date"] == "Fri, 20 Nov 2026 12:00:00 GMT"
    assert headers["x-ms-content-sha256"] == "Vg7bdTRz5Tj12rXWlH6Pfjtv4UmPMJYSy6e9tiGfCyw="
    assert headers["Authorization"] == (
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
        "&Signature=u2yo9q4KtxqCvqLj6gQa6gVZ+68vv4S7f7fgjVG6CVU="
    )
