"""Webhook verification of every non-Meta provider, as each provider's mapping configures it.

Per provider: a correctly signed request passes, a request without a credential raises
`SignatureError(missing=True)`, a forged one raises `SignatureError(missing=False)`. Twilio is
checked against the real `twilio` package: its `RequestValidator` signs, our verifier accepts (and
the reverse), including twilio-python's own test vectors, the `:443` spelling, the `bodySHA256`
JSON variant, repeated parameters, SharedKey HMAC-SHA256 webhooks and a wrong URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from functools import cache
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from bspgate.config import Channel, Secret
from bspgate.errors import ConfigError, SignatureError
from bspgate.ingress.verify import ChannelVerifier, SignedRequest, twilio_signature
from bspgate.mapping.loader import load_mapping
from tests.conftest import MAPPINGS, fixture_bytes, fixture_json

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@cache
def verify_entries(provider: str) -> tuple[dict[str, Any], ...]:
    return load_mapping(MAPPINGS, provider).verify


def verifier(
    provider: str, secrets: dict[str, str], settings_: dict[str, Any] | None = None
) -> ChannelVerifier:
    channel = Channel(
        id=f"{provider}-test",
        provider=provider,
        portfolio="acme",
        secrets={name: Secret(value) for name, value in secrets.items()},
        settings=settings_ or {},
    )
    return ChannelVerifier(channel, verify_entries(provider))


def request(
    body: bytes,
    headers: dict[str, str] | None = None,
    url: str = "https://gw.example.com/webhooks/test",
    content_type: str = JSON,
) -> SignedRequest:
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    return SignedRequest("POST", url, lowered, body, content_type)


def hmac_of(secret: str, body: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).digest()


def assert_missing(check: ChannelVerifier, req: SignedRequest) -> None:
    with pytest.raises(SignatureError) as info:
        check.verify(req)
    assert info.value.missing


def assert_forged(check: ChannelVerifier, req: SignedRequest) -> None:
    with pytest.raises(SignatureError) as info:
        check.verify(req)
    assert not info.value.missing


# -- Twilio -------------------------------------------------------------------------------------
TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
VECTOR_BODY = b'{"property": "value", "boolean": true}'
VECTOR_BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


def twilio_verifier(**secrets: str) -> ChannelVerifier:
    return verifier("twilio", {"auth_token": TOKEN, **secrets})


def form_request(url: str, params: dict[str, Any], signature: str | None, **headers: str) -> Any:
    body = urlencode(params, doseq=True).encode()
    sent = dict(headers)
    if signature is not None:
        sent["X-Twilio-Signature"] = signature
    return request(body, sent, url, FORM)


def test_twilio_signature_matches_twilio_pythons_published_vectors() -> None:
    params = {k: [v] for k, v in VECTOR_PARAMS.items()}
    assert twilio_signature(TOKEN, VECTOR_URL, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    port_url = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert twilio_signature(TOKEN, port_url, params) == "kvajT1Ptam85bY51eRf/AJRuM3w="
    oracle = RequestValidator(TOKEN)
    assert oracle.compute_signature(VECTOR_URL, VECTOR_PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_twilio_accepts_the_published_vector() -> None:
    twilio_verifier().verify(
        form_request(VECTOR_URL, VECTOR_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    )


def test_twilio_accepts_the_443_signature_for_a_url_without_port() -> None:
    # Twilio signed https://host:443/… while our public URL has no port (and the reverse).
    check = twilio_verifier()
    check.verify(form_request(VECTOR_URL, VECTOR_PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w="))
    port_url = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    check.verify(form_request(port_url, VECTOR_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="))


def test_twilio_accepts_the_body_sha256_json_variant() -> None:
    url = f"{VECTOR_URL}&bodySHA256={VECTOR_BODY_HASH}"
    signature = "a9nBmqA0ju/hNViExpshrM61xv4="
    assert RequestValidator(TOKEN).validate(url, VECTOR_BODY.decode(), signature)
    twilio_verifier().verify(request(VECTOR_BODY, {"X-Twilio-Signature": signature}, url, JSON))


def test_twilio_rejects_a_body_that_does_not_match_body_sha256() -> None:
    url = f"{VECTOR_URL}&bodySHA256={VECTOR_BODY_HASH}"
    signed = {"X-Twilio-Signature": "a9nBmqA0ju/hNViExpshrM61xv4="}
    assert_forged(twilio_verifier(), request(b'{"property": "other"}', signed, url, JSON))


def test_twilio_accepts_repeated_parameters_as_twilio_python_sorts_them() -> None:
    params = {"Sid": "CA123", "SidAccount": "AC123", "Digits": ["5678", "1234", "1234"]}
    signature = "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    twilio_verifier().verify(form_request(VECTOR_URL, params, signature))


@pytest.mark.parametrize(
    "name",
    [
        "inbound_text",
        "inbound_bsuid_only",
        "inbound_media",
        "inbound_location",
        "inbound_button",
        "status_read",
        "status_failed",
    ],
)
def test_twilio_accepts_fixture_posts_signed_by_twilio_python(name: str) -> None:
    url = "https://gw.example.com/webhooks/twilio-us"
    params = fixture_json("twilio", name)
    signature = RequestValidator(TOKEN).compute_signature(url, params)
    twilio_verifier().verify(form_request(url, params, signature))


def test_twilio_missing_signature_is_missing() -> None:
    assert_missing(twilio_verifier(), form_request(VECTOR_URL, VECTOR_PARAMS, None))


def test_twilio_forged_signature_is_rejected() -> None:
    forged = base64.b64encode(b"x" * 20).decode()
    assert_forged(twilio_verifier(), form_request(VECTOR_URL, VECTOR_PARAMS, forged))


def test_twilio_signature_for_another_url_is_rejected() -> None:
    # Signed for the URL Twilio was configured with; our public_url differs (proxy, path, query).
    signed_for = "https://other.example.com/webhooks/twilio-us"
    signature = RequestValidator(TOKEN).compute_signature(signed_for, VECTOR_PARAMS)
    assert_forged(
        twilio_verifier(),
        form_request("https://gw.example.com/webhooks/twilio-us", VECTOR_PARAMS, signature),
    )


def test_twilio_signature_with_a_changed_parameter_is_rejected() -> None:
    signature = RequestValidator(TOKEN).compute_signature(VECTOR_URL, VECTOR_PARAMS)
    tampered = {**VECTOR_PARAMS, "Digits": "9999"}
    assert_forged(twilio_verifier(), form_request(VECTOR_URL, tampered, signature))


def test_twilio_shared_key_hmac_sha256_webhook_is_accepted() -> None:
    settings_header = "key=webhooks_sharedkey_abc,algorithm=HMAC_SHA256"
    signature = RequestValidator("shared-secret").compute_signature(
        VECTOR_URL, VECTOR_PARAMS, "HMAC_SHA256"
    )
    assert RequestValidator("shared-secret").validate(
        VECTOR_URL, VECTOR_PARAMS, signature, "HMAC_SHA256"
    )
    check = twilio_verifier(webhook_shared_key="shared-secret")
    req = form_request(
        VECTOR_URL,
        VECTOR_PARAMS,
        signature,
        **{"X-Twilio-Webhooks-Signature-Settings": settings_header},
    )
    check.verify(req)


def test_twilio_unknown_signature_algorithm_is_rejected() -> None:
    signature = RequestValidator(TOKEN).compute_signature(VECTOR_URL, VECTOR_PARAMS)
    req = form_request(
        VECTOR_URL,
        VECTOR_PARAMS,
        signature,
        **{"X-Twilio-Webhooks-Signature-Settings": "key=k,algorithm=HMAC_SHA3"},
    )
    assert_forged(twilio_verifier(), req)


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    params=st.dictionaries(
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=1
        ),
        st.lists(_TEXT, min_size=1, max_size=3),
        max_size=6,
    ),
    path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10),
)
def test_twilio_agrees_with_request_validator_on_any_form(
    params: dict[str, list[str]], path: str
) -> None:
    # Whatever Twilio posts (unknown fields, repeated values, any text), both compute one value.
    url = f"https://gw.example.com/webhooks/{path}?x=1"
    body = urlencode(params, doseq=True).encode()
    oracle = RequestValidator(TOKEN)
    parsed = parse_qs(body.decode(), keep_blank_values=True)

    class Multi(dict[str, list[str]]):
        def getall(self, key: str) -> list[str]:
            return self[key]

    signature = oracle.compute_signature(url, Multi(parsed))
    assert twilio_signature(TOKEN, url, parsed) == signature
    twilio_verifier().verify(request(body, {"X-Twilio-Signature": signature}, url, FORM))


# -- 360dialog ----------------------------------------------------------------------------------
D360_BODY = fixture_bytes("dialog360", "inbound_text")


def test_dialog360_header_secret_is_accepted_in_authorization() -> None:
    check = verifier("dialog360", {"webhook_secret": "s3cret"})
    check.verify(request(D360_BODY, {"Authorization": "s3cret"}))


def test_dialog360_header_secret_uses_the_channel_header_setting() -> None:
    check = verifier("dialog360", {"webhook_secret": "s3cret"}, {"webhook_header": "X-Acme-Key"})
    check.verify(request(D360_BODY, {"X-Acme-Key": "s3cret"}))
    assert_missing(check, request(D360_BODY, {"Authorization": "s3cret"}))


@pytest.mark.parametrize(
    "encode",
    [
        lambda mac: mac.hex(),
        lambda mac: mac.hex().upper(),
        lambda mac: "sha256=" + mac.hex(),
        lambda mac: base64.b64encode(mac).decode(),
    ],
    ids=["hex", "HEX", "sha256=hex", "base64"],
)
def test_dialog360_partner_signature_in_hex_or_base64(encode: Any) -> None:
    check = verifier("dialog360", {"partner_secret": "platform"})
    signature = encode(hmac_of("platform", D360_BODY))
    check.verify(request(D360_BODY, {"x-360dialog-signature": signature}))


def test_dialog360_both_credentials_configured_must_both_pass() -> None:
    check = verifier("dialog360", {"webhook_secret": "s3cret", "partner_secret": "platform"})
    signature = hmac_of("platform", D360_BODY).hex()
    check.verify(
        request(D360_BODY, {"Authorization": "s3cret", "x-360dialog-signature": signature})
    )
    assert_missing(check, request(D360_BODY, {"Authorization": "s3cret"}))


def test_dialog360_missing_credential_is_missing() -> None:
    assert_missing(verifier("dialog360", {"webhook_secret": "s3cret"}), request(D360_BODY))
    assert_missing(verifier("dialog360", {"partner_secret": "platform"}), request(D360_BODY))


def test_dialog360_forged_credentials_are_rejected() -> None:
    assert_forged(
        verifier("dialog360", {"webhook_secret": "s3cret"}),
        request(D360_BODY, {"Authorization": "guess"}),
    )
    forged = hmac_of("other", D360_BODY).hex()
    assert_forged(
        verifier("dialog360", {"partner_secret": "platform"}),
        request(D360_BODY, {"x-360dialog-signature": forged}),
    )


def test_dialog360_channel_without_credentials_refuses_everything() -> None:
    with pytest.raises(SignatureError):
        verifier("dialog360", {}).verify(request(D360_BODY, {"Authorization": ""}))


# -- Infobip ------------------------------------------------------------------------------------
INFOBIP_BODY = fixture_bytes("infobip", "inbound_text")


def basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


def test_infobip_basic_auth_is_accepted() -> None:
    check = verifier("infobip", {"webhook_basic_auth": "infobip:pa55"})
    check.verify(request(INFOBIP_BODY, {"Authorization": basic("infobip:pa55")}))


def test_infobip_basic_auth_missing_and_forged() -> None:
    check = verifier("infobip", {"webhook_basic_auth": "infobip:pa55"})
    assert_missing(check, request(INFOBIP_BODY))
    assert_forged(check, request(INFOBIP_BODY, {"Authorization": basic("infobip:guess")}))


@pytest.mark.parametrize(
    "encode",
    [lambda mac: mac.hex(), lambda mac: base64.b64encode(mac).decode()],
    ids=["hex", "base64"],
)
def test_infobip_hmac_default_header(encode: Any) -> None:
    check = verifier("infobip", {"webhook_secret": "hmac-key"})
    signature = encode(hmac_of("hmac-key", INFOBIP_BODY))
    check.verify(request(INFOBIP_BODY, {"X-Infobip-Signature": signature}))


def test_infobip_hmac_header_algorithm_and_encoding_come_from_channel_settings() -> None:
    settings_ = {"hmac_header": "X-Hub-Signature", "hmac_algorithm": "sha512"}
    settings_ |= {"hmac_encoding": "base64", "hmac_prefix": "sha512="}
    check = verifier("infobip", {"webhook_secret": "hmac-key"}, settings_)
    mac = hmac_of("hmac-key", INFOBIP_BODY, "sha512")
    signed = "sha512=" + base64.b64encode(mac).decode()
    check.verify(request(INFOBIP_BODY, {"X-Hub-Signature": signed}))
    assert_missing(check, request(INFOBIP_BODY, {"X-Infobip-Signature": signed}))
    hex_form = "sha512=" + mac.hex()  # base64 only, as configured
    assert_forged(check, request(INFOBIP_BODY, {"X-Hub-Signature": hex_form}))


def test_infobip_hmac_missing_and_forged() -> None:
    check = verifier("infobip", {"webhook_secret": "hmac-key"})
    assert_missing(check, request(INFOBIP_BODY))
    forged = hmac_of("other", INFOBIP_BODY).hex()
    assert_forged(check, request(INFOBIP_BODY, {"X-Infobip-Signature": forged}))


def test_infobip_unknown_hmac_algorithm_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="md5"):
        verifier("infobip", {"webhook_secret": "k"}, {"hmac_algorithm": "md5"})


def test_infobip_static_authorization_header() -> None:
    check = verifier("infobip", {"webhook_authorization": "App 0123abcd"})
    check.verify(request(INFOBIP_BODY, {"Authorization": "App 0123abcd"}))
    assert_forged(check, request(INFOBIP_BODY, {"Authorization": "App guess"}))


# -- Azure ACS ----------------------------------------------------------------------------------
ACS_BODY = fixture_bytes("azure_acs", "inbound_text")
ACS_URL = "https://gw.example.com/webhooks/acs-us"


def test_azure_secret_in_query_code_is_accepted() -> None:
    check = verifier("azure_acs", {"webhook_secret": "eg-secret"})
    assert check.signing_query() == {"code": "eg-secret"}
    check.verify(request(ACS_BODY, url=f"{ACS_URL}?code=eg-secret"))


def test_azure_secret_in_a_delivery_header_is_accepted() -> None:
    check = verifier("azure_acs", {"webhook_secret": "eg-secret"})
    check.verify(request(ACS_BODY, {"x-bspgate-secret": "eg-secret"}, url=ACS_URL))
    custom = verifier("azure_acs", {"webhook_secret": "eg-secret"}, {"webhook_header": "X-Key"})
    custom.verify(request(ACS_BODY, {"X-Key": "eg-secret"}, url=ACS_URL))


def test_azure_missing_and_forged_secret() -> None:
    check = verifier("azure_acs", {"webhook_secret": "eg-secret"})
    assert_missing(check, request(ACS_BODY, url=ACS_URL))
    assert_forged(check, request(ACS_BODY, url=f"{ACS_URL}?code=guess"))
    assert_forged(check, request(ACS_BODY, {"x-bspgate-secret": "guess"}, url=ACS_URL))


def test_azure_channel_without_webhook_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="webhook_secret"):
        verifier("azure_acs", {})


# -- Connectly ----------------------------------------------------------------------------------
CONNECTLY_BODY = fixture_bytes("connectly", "inbound_text")


def test_connectly_base64_hmac_is_accepted() -> None:
    check = verifier("connectly", {"webhook_secret": "cn-secret"})
    signature = base64.b64encode(hmac_of("cn-secret", CONNECTLY_BODY)).decode()
    # Connectly posts JSON as text/plain; verification reads bytes, never the content type.
    check.verify(
        request(CONNECTLY_BODY, {"x-connectly-hmac-sha256": signature}, content_type="text/plain")
    )


def test_connectly_missing_and_forged() -> None:
    check = verifier("connectly", {"webhook_secret": "cn-secret"})
    assert_missing(check, request(CONNECTLY_BODY))
    forged = base64.b64encode(hmac_of("other", CONNECTLY_BODY)).decode()
    assert_forged(check, request(CONNECTLY_BODY, {"x-connectly-hmac-sha256": forged}))
    # The right MAC in hex is not Connectly's encoding.
    hex_form = hmac_of("cn-secret", CONNECTLY_BODY).hex()
    assert_forged(check, request(CONNECTLY_BODY, {"x-connectly-hmac-sha256": hex_form}))


def test_connectly_signature_over_other_bytes_is_rejected() -> None:
    check = verifier("connectly", {"webhook_secret": "cn-secret"})
    signature = base64.b64encode(hmac_of("cn-secret", CONNECTLY_BODY)).decode()
    assert_forged(check, request(CONNECTLY_BODY + b" ", {"x-connectly-hmac-sha256": signature}))


def test_connectly_channel_without_webhook_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="webhook_secret"):
        verifier("connectly", {})
