"""Sends (provider APIs stood in by respx) and signed webhooks through one gateway app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import respx

from bspgate.simulate import signed_request
from tests.identity.payloads import cloud_change, cloud_message, cloud_user_changed_user_id
from tests.identity.test_contacts_api import _subscriber as subscriber
from tests.test_outbound_api import AUTH, CLOUD, META_URL, NOW, Gateway, iso
from tests.test_outbound_providers import channel_id, stand_in
from tests.test_send_request import authentication
from tests.test_sends_unknown import SEND as UTILITY

TS = int(NOW.timestamp())
TWILIO = channel_id("twilio")
TWILIO_URL = (
    f"{stand_in('twilio')}/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
)


class G4(Gateway):
    """Gateway + signed webhooks through the same ASGI app (optionally with subscribers)."""

    def __init__(
        self, tmp_path: Path, subscribers: list[dict[str, Any]] | None = None, **overrides: Any
    ) -> None:
        if subscribers is None:
            super().__init__(tmp_path, **overrides)
            return
        from bspgate.app import create_app
        from bspgate.config import settings_from_dict
        from tests.asgi_client import TestClient
        from tests.conftest import ROOT
        from tests.test_outbound_providers import PROVIDERS, config_dict

        raw = config_dict(tmp_path, **overrides)
        raw["subscribers"] = subscribers
        self.settings = settings_from_dict(raw, env={}, base_dir=ROOT, known_mappings=PROVIDERS)
        self.http = httpx.AsyncClient()
        self.app = create_app(
            self.settings, http_client=self.http, clock=lambda: NOW, dispatch=False
        )
        self.client = TestClient(self.app)

    def deliveries(self, subscriber: str) -> list[dict[str, Any]]:
        store = self.app.state.gateway.store
        return list(
            store.read_sync(
                lambda tx: tx.deliveries(
                    state=None, subscriber_id=subscriber, event_id=None, limit=500
                )
            )
        )

    def hook(self, channel: str, body: bytes | dict[str, Any] | list[Any]) -> httpx.Response:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        ch = self.settings.channel(channel)
        assert ch is not None
        url, headers, payload = signed_request(self.settings, ch, body)
        response = self.client.post(url, content=payload, headers=headers)
        assert response.status_code == 200, response.text
        return response

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            query: dict[str, Any] = {"limit": 500}
            if cursor:
                query["cursor"] = cursor
            page = self.client.get("/v1/events", params=query, headers=AUTH).json()
            out.extend(page["data"])
            cursor = page["next_cursor"]
            if not cursor:
                return list(reversed(out))

    def contact(self, contact_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/contacts/{contact_id}", headers=AUTH).json()

    def message(self, send_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/messages/{send_id}", headers=AUTH).json()

    def send_cloud(self, to: dict[str, Any], answer: dict[str, Any], **kw: Any) -> httpx.Response:
        with respx.mock(assert_all_called=False) as router:
            route = router.post(META_URL).mock(return_value=httpx.Response(200, json=answer))
            response = self.post({**auth_template(to), "channel": CLOUD, **kw})
            self.last_request = (
                json.loads(route.calls.last.request.content) if route.calls else None
            )
        return response


def auth_template(to: dict[str, Any]) -> dict[str, Any]:
    return authentication(to, ["123456"])


def utility_template(to: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in {**UTILITY, "to": to}.items() if key != "channel"}


def cloud_answer(
    wamid: str, *, wa_id: str | None = None, user_id: str | None = None, given: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"input": given or wa_id or user_id}
    if wa_id:
        entry["wa_id"] = wa_id
    if user_id:
        entry["user_id"] = user_id
    return {"messaging_product": "whatsapp", "contacts": [entry], "messages": [{"id": wamid}]}


def cloud_status(
    wamid: str,
    status: str,
    *,
    phone: str | None = None,
    bsuid: str | None = None,
    step: int = 0,
    contacts: bool = True,
) -> dict[str, Any]:
    st: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(TS + step)}
    if phone:
        st["recipient_id"] = phone.lstrip("+")
    if bsuid:
        st["recipient_user_id"] = bsuid
    value: dict[str, Any] = {"statuses": [st]}
    if contacts and (phone or bsuid):
        c: dict[str, Any] = {"profile": {"name": "Someone"}}
        if phone:
            c["wa_id"] = phone.lstrip("+")
        if bsuid:
            c["user_id"] = bsuid
        value["contacts"] = [c]
    return cloud_change(value)


def cloud_text(
    wamid: str, *, phone: str | None = None, bsuid: str | None = None, step: int = 0
) -> bytes:
    """A Cloud API text message `step` seconds after `NOW` (`phone` as `+digits`)."""
    digits = phone.lstrip("+") if phone else None
    return cloud_message(wamid, phone=digits, bsuid=bsuid, step=step, ts=TS)


def cloud_changed_user_id(wamid: str, previous: str, new: str, step: int = 0) -> bytes:
    """Meta's `user_changed_user_id`, `step` seconds after `NOW`."""
    return cloud_user_changed_user_id(wamid, previous, new, step, ts=TS)


def twilio_status(sid: str, status: str, *, to: str, external: str | None = None) -> dict[str, Any]:
    fields = {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "MessageStatus": status,
        "SmsStatus": status,
        "To": f"whatsapp:{to}",
        "From": "whatsapp:+15550001111",
        "ApiVersion": "2010-04-01",
        "ChannelPrefix": "whatsapp",
    }
    if external:
        fields["ExternalUserId"] = f"whatsapp:{external}"
    return fields


def twilio_answer(sid: str, to: str) -> dict[str, Any]:
    return {"sid": sid, "status": "queued", "to": f"whatsapp:{to}", "from": "whatsapp:+15550001111"}


__all__ = ["AUTH", "CLOUD", "G4", "META_URL", "NOW", "Path", "iso", "subscriber"]
