"""What a send may say and what goes out for it (canonical contract §1 phone format, §3 sends).

Template parameters as an object of named values, v1.1 phones in `to.phone` (short test numbers,
typed separators) normalised as the inbound side does, Meta's named template parameters and the
one-time-password button of authentication templates, a Twilio channel with no sender refused
instead of rendered without `From`, and Connectly media addressed like text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bspgate import cli
from bspgate.errors import SendError
from bspgate.identity.resolver import IdentityResolver, Observation
from bspgate.outbound.service import validate_send
from tests.test_outbound_api import CLOUD, NOW, Gateway, cloud
from tests.test_outbound_providers import channel_id, config_dict, text

NAMED = {"first_name": "Ann", "order": "#1234"}


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path)
    with gateway.client:
        yield gateway


def _template(to: dict[str, str], name: str, category: str, parameters: Any) -> dict[str, Any]:
    template = {"name": name, "language": "en_US", "category": category, "parameters": parameters}
    return {"to": to, "type": "template", "template": template}


def utility(to: dict[str, str], parameters: Any) -> dict[str, Any]:
    return _template(to, "order_update", "utility", parameters)


def dry(gw: Gateway, send: dict[str, Any], channel: str = CLOUD) -> dict[str, Any]:
    response = gw.post({**send, "channel": channel}, query="?dry_run=true")
    assert response.status_code == 200, response.json()
    body: dict[str, Any] = response.json()["body"]
    return body


# -- template.parameters as an object of named values (§3 v1.1) ----------------------------------
def test_parameters_may_be_an_object_of_named_values() -> None:
    send = validate_send(cloud(utility({"phone": "+15551234567"}, {"code": "123456"})))
    assert send["template"]["parameters"] == {"code": "123456"}


def test_named_object_renders_as_the_list_of_name_value_pairs(gw: Gateway) -> None:
    as_object = dry(gw, utility({"phone": "+15551234567"}, NAMED))
    as_list = dry(
        gw,
        utility({"phone": "+15551234567"}, [{"name": k, "value": v} for k, v in NAMED.items()]),
    )
    assert as_object == as_list


def test_template_values_of_a_named_object_keep_order_and_positions() -> None:
    from bspgate.outbound.rewrite import _template_values

    assert _template_values(NAMED) == [
        {"position": "1", "name": "first_name", "value": "Ann"},
        {"position": "2", "name": "order", "value": "#1234"},
    ]


@pytest.mark.parametrize(
    "parameters",
    [{"code": 123456}, {"": "x"}, "123456"],
    ids=["non-string value", "empty name", "a bare string"],
)
def test_malformed_named_parameters_are_invalid_requests(parameters: Any) -> None:
    with pytest.raises(SendError) as caught:
        validate_send(cloud(utility({"phone": "+15551234567"}, parameters)))
    assert caught.value.code == "invalid_request"
    assert caught.value.extra["pointer"].startswith("/template/parameters")


def test_twilio_content_variables_take_the_names(gw: Gateway) -> None:
    body = dry(gw, utility({"phone": "+15551234567"}, {"code": "123456"}), channel_id("twilio"))
    assert json.loads(body["ContentVariables"]) == {"code": "123456"}


# -- v1.1 phones in to.phone (§1) ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "digits"),
    [
        ("+5678", "5678"),
        ("+1 555-123-4567", "15551234567"),
        ("+1 (555) 123.4567", "15551234567"),
        ("+15551234567", "15551234567"),
    ],
)
def test_v11_phone_is_accepted_and_normalised(gw: Gateway, given: str, digits: str) -> None:
    body = dry(gw, utility({"phone": given}, ["x"]))
    assert body["to"] == digits


def test_normalised_phone_is_what_the_send_records(gw: Gateway) -> None:
    send = validate_send(cloud(utility({"phone": "+1 555-123-4567"}, ["x"])))
    assert send["to"]["phone"] == "+15551234567"


@pytest.mark.parametrize(
    "given",
    ["14449876543", "+", "+1234567890123456", "+1 444 abc", "whatsapp:+14449876543", "+ -"],
)
def test_not_a_phone_is_refused_without_echoing_it(given: str) -> None:
    with pytest.raises(SendError) as caught:
        validate_send(cloud(utility({"phone": given}, ["x"])))
    assert caught.value.code == "invalid_request"
    assert caught.value.extra["pointer"] == "/to/phone"
    digits = "".join(c for c in given if c.isdigit())
    assert not digits or digits not in caught.value.detail  # error reasons carry no phone


def test_short_phone_reaches_the_contact_holding_it(gw: Gateway) -> None:
    contact = gw.person(phone="+5678", channel=channel_id("infobip"))
    response = gw.post(
        {**utility({"phone": "+5678"}, ["x"]), "channel": channel_id("infobip")},
        query="?dry_run=true",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["body"]["messages"][0]["to"] == "5678"
    assert contact.startswith("ct_")


# -- Meta's named template parameters (Cloud API, 360dialog) -------------------------------------
@pytest.mark.parametrize("provider", ["cloudapi", "dialog360"])
def test_named_parameters_carry_parameter_name(gw: Gateway, provider: str) -> None:
    body = dry(gw, utility({"phone": "+15551234567"}, {"first_name": "Ann"}), channel_id(provider))
    (component,) = body["template"]["components"]
    assert component["parameters"] == [
        {"type": "text", "parameter_name": "first_name", "text": "Ann"}
    ]


def test_positional_parameters_have_no_parameter_name(gw: Gateway) -> None:
    body = dry(gw, utility({"phone": "+15551234567"}, ["Ann", {"value": "#1"}]))
    (component,) = body["template"]["components"]
    assert component["parameters"] == [
        {"type": "text", "text": "Ann"},
        {"type": "text", "text": "#1"},
    ]


# -- Meta's authentication templates: the code in the OTP button too (Cloud API, 360dialog) ------
def authentication(to: dict[str, str], parameters: Any) -> dict[str, Any]:
    return _template(to, "otp", "authentication", parameters)


@pytest.mark.parametrize("provider", ["cloudapi", "dialog360"])
@pytest.mark.parametrize("parameters", [["123456"], {"code": "123456"}], ids=["list", "named"])
def test_authentication_template_carries_the_code_in_the_otp_button(
    gw: Gateway, provider: str, parameters: Any
) -> None:
    # Meta, "Sending Authentication Message Templates with One-Time Password Buttons": the code
    # goes in the text of both the body and the button (sub_type url, index 0) component; every
    # authentication template has an OTP button, so a body-only send is refused by Meta
    gw.person(phone="+15557654321", channel=channel_id(provider))
    body = dry(gw, authentication({"phone": "+15557654321"}, parameters), channel_id(provider))
    components = body["template"]["components"]
    assert [c["type"] for c in components] == ["body", "button"]
    assert components[0]["parameters"][0]["text"] == "123456"
    assert components[1] == {
        "type": "button",
        "sub_type": "url",
        "index": "0",
        "parameters": [{"type": "text", "text": "123456"}],
    }


def test_other_templates_get_no_otp_button(gw: Gateway) -> None:
    body = dry(gw, utility({"phone": "+15551234567"}, ["Ann"]))
    assert [c["type"] for c in body["template"]["components"]] == ["body"]


# -- a Twilio channel with no sender (providers.md §2.5: From or MessagingServiceSid) ------------
def _twilio_config(tmp_path: Path, **twilio: Any) -> Path:
    config = config_dict(tmp_path)
    for channel in config["channels"]:
        channel["service_window"] = "off"
        if channel["provider"] == "twilio":
            channel.update(twilio)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    return path


def _cli_dry_run(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "send.json"
    path.write_text(json.dumps({"to": {"bsuid": "US.13491208655302741918"}, "type": "text",
                                "text": {"body": "Hello"}}))  # fmt: skip
    code = cli.main(
        ["send", "--dry-run", "--config", str(config), "--channel", channel_id("twilio"),
         str(path)]
    )  # fmt: skip
    printed: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, printed


def test_twilio_channel_without_a_sender_is_not_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _twilio_config(tmp_path, business_phone=None)
    code, printed = _cli_dry_run(tmp_path, config, capsys)
    assert code != 0
    assert printed["code"] == "channel_not_configured"
    assert "MessagingServiceSid" in printed["detail"]


@pytest.mark.parametrize(
    ("twilio", "field"),
    [
        ({"business_phone": None, "settings": {"from": "+15550001111"}}, "From"),
        (
            {"business_phone": None, "settings": {"messaging_service_sid": "MG" + "0" * 32}},
            "MessagingServiceSid",
        ),
        ({}, "From"),
    ],
    ids=["settings.from", "messaging_service_sid", "business_phone"],
)
def test_twilio_channel_with_a_sender_renders_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], twilio: dict[str, Any], field: str
) -> None:
    if "settings" in twilio:
        base = config_dict(tmp_path)
        (channel,) = [c for c in base["channels"] if c["provider"] == "twilio"]
        twilio = {**twilio, "settings": {**channel["settings"], **twilio["settings"]}}
    config = _twilio_config(tmp_path, **twilio)
    code, printed = _cli_dry_run(tmp_path, config, capsys)
    assert code == 0, printed
    assert field in printed["body"]


# -- a retired phone (contract §3) ---------------------------------------------------------------
def test_retired_phone_is_refused_as_retired(gw: Gateway) -> None:
    old, new = "US.10000000000000000001", "US.20000000000000000002"
    gw.person(bsuid=old, phone="+15550009999")

    def relink(tx: Any) -> None:
        IdentityResolver(tx, "acme", CLOUD, "2026-11-20T12:00:00Z").relink(
            Observation(bsuid=new, phone="+15550008888"), old, "+15550009999"
        )

    gw.transaction(relink)
    response = gw.post(cloud(text({"phone": "+15550009999"})), query="?dry_run=true")
    problem = response.json()
    assert (response.status_code, problem["code"]) == (422, "phone_retired")
    assert problem["title"] == "The phone number is retired"
    assert "5550009999" not in problem["detail"]


# -- Connectly media are session messages: addressed like text (docs/sending.md) ----------------
@pytest.mark.parametrize("kind", ["image", "document", "video", "audio"])
def test_connectly_media_to_a_bsuid_sets_recipient_id_like_text(gw: Gateway, kind: str) -> None:
    # Mintlify marks recipient.id required ("E.164, or bare BSUID"); the text form sets it
    channel = channel_id("connectly")
    bsuid = "US.13491208655302741918"
    gw.person(bsuid=bsuid, channel=channel, wrote=NOW - timedelta(hours=1))
    send = {"to": {"bsuid": bsuid}, "type": kind, kind: {"url": "https://cdn.example.com/f"}}
    body = dry(gw, send, channel)
    assert body["recipient"] == {"channelType": "whatsapp", "id": bsuid, "userId": bsuid}
    assert set(body["callbackData"]) == {"bspgate_send_id"}  # as text sends: callbackData?


def test_connectly_media_to_a_phone_sets_recipient_id_only(gw: Gateway) -> None:
    channel = channel_id("connectly")
    gw.person(phone="+15557654321", channel=channel, wrote=NOW - timedelta(hours=1))
    send = {"to": {"phone": "+15557654321"}, "type": "image",
            "image": {"url": "https://cdn.example.com/f"}}  # fmt: skip
    body = dry(gw, send, channel)
    assert body["recipient"] == {"channelType": "whatsapp", "id": "+15557654321"}
