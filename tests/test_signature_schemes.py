"""The composable `hmac` and the `jwt` schemes, proven with vendors' own vectors and oracles.

- Sinch: the Conversation API webhook vector from Sinch's .NET SDK tests (WebhooksTests.
  ValidateRequest: secret `foo_secret1234`, nonce, timestamp, signature over `body.nonce.ts`).
- Standard Webhooks: `standardwebhooks.Webhook` (the reference implementation) signs, the
  declared scheme (`webhook-id.timestamp.body`, `v1,<b64>` list, base64 key) verifies.
- `t=…,v1=…` headers (Stripe style): timestamp taken from the signature header itself.
- Vonage: the token from vonage-python-sdk's jwt tests (verify_signature with
  `qwertyuiopasdfghjklzxcvbnm123456`), and the Messages API `payload_hash` claim.
Stale and replayed requests are refused and labelled `stale`/`replayed`; `sign` and `check` of
one declaration agree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import orjson
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from standardwebhooks import Webhook

from bspgate.app import create_app
from bspgate.config import Channel, Secret
from bspgate.errors import SignatureError
from bspgate.ingress.verify import ChannelVerifier, SignedRequest, declaration_errors
from bspgate.mapping.loader import load_mapping
from bspgate.simulate import signed_request
from tests.asgi_client import TestClient
from tests.conftest import MAPPINGS, make_settings

SINCH_BODY = (
    b'{"app_id":"","accepted_time":"2021-10-18T17:49:13.813615Z","project_id":'
    b'"e2df3a34-a71b-4448-9db5-a8d2baad28e4","contact_create_notification":{"contact":{"id":'
    b'"01FJA8B466Y0R2GNXD78MD9SM1","channel_identities":[{"channel":"SMS","identity":'
    b'"48123456789","app_id":""}],"display_name":"New Test Contact","email":'
    b'"new.contact@email.com","external_id":"","metadata":"","language":"EN_US"}},'
    b'"message_metadata":""}'
)
SINCH_HEADERS = {
    "x-sinch-webhook-signature-nonce": "01FJA8B4A7BM43YGWSG9GBV067",
    "x-sinch-webhook-signature-timestamp": "1634579353",
    "x-sinch-webhook-signature": "6bpJoRmFoXVjfJIVglMoJzYXxnoxRujzR4k2GOXewOE=",
}
SINCH = {
    "scheme": "hmac",
    "secret": "webhook_secret",
    "header": "x-sinch-webhook-signature",
    "algorithm": "sha256",
    "encoding": "base64",
    "message": [
        "body",
        {"literal": "."},
        {"header": "x-sinch-webhook-signature-nonce"},
        {"literal": "."},
        "timestamp",
    ],
    "timestamp": {"header": "x-sinch-webhook-signature-timestamp", "tolerance": 300},
}
STANDARD = {
    "scheme": "hmac",
    "secret": "webhook_secret",
    "header": "webhook-signature",
    "encoding": "base64",
    "secret_encoding": "base64",
    "signatures": {"split": " ", "prefix": "v1,"},
    "message": [{"header": "webhook-id"}, {"literal": "."}, "timestamp", {"literal": "."}, "body"],
    "timestamp": {"header": "webhook-timestamp", "tolerance": 300},
}
STRIPE_STYLE = {
    "scheme": "hmac",
    "secret": "webhook_secret",
    "header": "x-signature",
    "signatures": {"split": ",", "prefix": "v1="},
    "message": ["timestamp", {"literal": "."}, "body"],
    "timestamp": {"param": "t", "tolerance": 300},
}
VONAGE_TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJPbmxpbmUgSldUIEJ1aWxkZXIiLCJpYXQiOjE2OTc2Mz"
    "Q2ODAsImV4cCI6MzMyNTQ1NDA4MjgsImF1ZCI6IiIsInN1YiI6IiJ9.88vJc3I2HhuqEDixHXVhc9R30tA6U_HQHZTC29y6CGM"
)
VONAGE_SECRET = "qwertyuiopasdfghjklzxcvbnm123456"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(entry: dict[str, Any], secrets: dict[str, str], now: float) -> ChannelVerifier:
    channel = Channel(
        id="c",
        provider="p",
        portfolio="acme",
        secrets={k: Secret(v) for k, v in secrets.items()},
    )
    return ChannelVerifier(channel, (entry,), clock=Clock(now))


def req(body: bytes, headers: dict[str, str], url: str = "https://gw.example.com/w/c") -> Any:
    lowered = {k.lower(): v for k, v in headers.items()}
    return SignedRequest("POST", url, lowered, body, "application/json")


def refusal(check: ChannelVerifier, request: SignedRequest) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        check.verify(request)
    return info.value


def test_sinch_sdk_vector_verifies() -> None:
    check = verifier(SINCH, {"webhook_secret": "foo_secret1234"}, now=1634579360)
    check.verify(req(SINCH_BODY, SINCH_HEADERS))


def test_sinch_vector_with_another_nonce_body_or_secret_is_rejected() -> None:
    check = verifier(SINCH, {"webhook_secret": "foo_secret1234"}, now=1634579360)
    other_nonce = {**SINCH_HEADERS, "x-sinch-webhook-signature-nonce": "01FJA8B4A7BM43YGWSG9GBV068"}
    assert not refusal(check, req(SINCH_BODY, other_nonce)).missing
    assert not refusal(check, req(SINCH_BODY + b" ", SINCH_HEADERS)).missing
    wrong = verifier(SINCH, {"webhook_secret": "foo_secret12345"}, now=1634579360)
    assert not refusal(wrong, req(SINCH_BODY, SINCH_HEADERS)).missing


def test_a_body_only_declaration_rejects_the_sinch_vector() -> None:
    # The failure: signing the body alone cannot accept a real Sinch webhook.
    body_only = {k: v for k, v in SINCH.items() if k not in ("message", "timestamp")}
    check = verifier(body_only, {"webhook_secret": "foo_secret1234"}, now=1634579360)
    refusal(check, req(SINCH_BODY, SINCH_HEADERS))


def test_a_missing_nonce_header_is_a_missing_credential() -> None:
    check = verifier(SINCH, {"webhook_secret": "foo_secret1234"}, now=1634579360)
    headers = {k: v for k, v in SINCH_HEADERS.items() if "nonce" not in k}
    assert refusal(check, req(SINCH_BODY, headers)).missing


def test_a_stale_timestamp_is_refused_as_stale() -> None:
    check = verifier(SINCH, {"webhook_secret": "foo_secret1234"}, now=1634579353 + 301)
    error = refusal(check, req(SINCH_BODY, SINCH_HEADERS))
    assert error.outcome == "stale"
    future = verifier(SINCH, {"webhook_secret": "foo_secret1234"}, now=1634579353 - 301)
    assert refusal(future, req(SINCH_BODY, SINCH_HEADERS)).outcome == "stale"


def test_a_replayed_request_is_refused_as_replayed() -> None:
    check = verifier(SINCH, {"webhook_secret": "foo_secret1234"}, now=1634579360)
    check.verify(req(SINCH_BODY, SINCH_HEADERS))
    assert refusal(check, req(SINCH_BODY, SINCH_HEADERS)).outcome == "replayed"


def test_standard_webhooks_reference_signature_verifies() -> None:
    key = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    secret = "whsec_" + key
    body = '{"type":"message.received","id":1}'
    signed_at = datetime.fromtimestamp(1700000000, UTC)
    signature = Webhook(secret).sign("msg_2Kq", signed_at, body)
    headers = {
        "webhook-id": "msg_2Kq",
        "webhook-timestamp": "1700000000",
        "webhook-signature": f"v1,{'A' * 43}= {signature}",  # one rotated-out key, one current
    }
    check = verifier(STANDARD, {"webhook_secret": secret}, now=1700000010)
    check.verify(req(body.encode(), headers))
    ours = verifier(STANDARD, {"webhook_secret": secret}, now=time.time())  # the oracle's clock
    sent = ours.sign_headers(req(body.encode(), {"webhook-id": "msg_2Kq"}))
    Webhook(secret).verify(body, {**sent, "webhook-id": "msg_2Kq"})


def test_timestamp_in_the_signature_header_t_v1_style() -> None:
    check = verifier(STRIPE_STYLE, {"webhook_secret": "k"}, now=1700000000)
    headers = check.sign_headers(req(b"{}", {}))
    assert headers["x-signature"].startswith("t=1700000000,v1=")
    check.verify(req(b"{}", headers))
    later = verifier(STRIPE_STYLE, {"webhook_secret": "k"}, now=1700000000 + 301)
    assert refusal(later, req(b"{}", headers)).outcome == "stale"


@pytest.mark.parametrize("entry", [SINCH, STANDARD, STRIPE_STYLE], ids=["sinch", "std", "t_v1"])
def test_sign_and_check_of_one_declaration_agree(entry: dict[str, Any]) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    check = verifier(entry, {"webhook_secret": secret}, now=1700000000)
    body = b'{"hello":"world"}'
    headers = check.sign_headers(req(body, {}))
    check.verify(req(body, headers))
    assert refusal(check, req(body + b"x", headers))


def test_unknown_parts_and_options_are_declaration_errors() -> None:
    bad = [
        {"scheme": "hmacs", "secret": "s"},
        {**SINCH, "message": ["body", "nonce"]},
        {**SINCH, "algorithm": "md5"},
        {"scheme": "hmac", "secret": "s", "header": "x", "message": ["timestamp"]},
        {"scheme": "jwt", "secret": "s", "algorithms": ["none"]},
        {"scheme": "jwt", "secret": "s", "claims": {"payload_hash": "body_md5"}},
    ]
    found = declaration_errors(bad)
    assert [path[0] for path, _ in found] == [0, 1, 2, 3, 4, 5]
    assert "unknown scheme 'hmacs'" in found[0][1]
    assert "'nonce'" in found[1][1]


# -- jwt ----------------------------------------------------------------------------------------
VONAGE = {"scheme": "jwt", "secret": "signature_secret", "algorithms": ["HS256"]}
VONAGE_SIGNED = {**VONAGE, "claims": {"payload_hash": "body_sha256"}, "require": ["iat"]}


def test_vonage_sdk_token_verifies_with_its_signature_secret() -> None:
    check = verifier(VONAGE, {"signature_secret": VONAGE_SECRET}, now=1697634690)
    check.verify(req(b"{}", {"Authorization": f"Bearer {VONAGE_TOKEN}"}))
    wrong = verifier(VONAGE, {"signature_secret": "asdf"}, now=1697634690)
    assert not refusal(wrong, req(b"{}", {"Authorization": f"Bearer {VONAGE_TOKEN}"})).missing
    assert refusal(check, req(b"{}", {})).missing


def test_vonage_payload_hash_claim_binds_the_body() -> None:
    body = b'{"channel":"whatsapp","text":"hi"}'
    claims = {"iat": 1700000000, "payload_hash": hashlib.sha256(body).hexdigest()}
    token = jwt.encode(claims, VONAGE_SECRET, algorithm="HS256")
    check = verifier(VONAGE_SIGNED, {"signature_secret": VONAGE_SECRET}, now=1700000001)
    check.verify(req(body, {"Authorization": f"Bearer {token}"}))
    assert "payload_hash" in str(refusal(check, req(body + b" ", {"authorization": token})))
    # the SDK token carries no payload_hash: not enough where the mapping asks for one
    assert refusal(check, req(b"{}", {"Authorization": f"Bearer {VONAGE_TOKEN}"}))


def test_jwt_max_age_and_expiry_are_stale() -> None:
    entry = {**VONAGE_SIGNED, "max_age": 60}
    token = jwt.encode(
        {"iat": 1700000000, "payload_hash": hashlib.sha256(b"{}").hexdigest()},
        VONAGE_SECRET,
        algorithm="HS256",
    )
    old = verifier(entry, {"signature_secret": VONAGE_SECRET}, now=1700000061)
    assert refusal(old, req(b"{}", {"Authorization": f"Bearer {token}"})).outcome == "stale"


def test_rs256_token_verifies_with_the_public_key_and_simulate_signs_with_the_private() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    entry = {
        "scheme": "jwt",
        "secret": "public_key",
        "algorithms": ["RS256"],
        "claims": {"body_hash": "body_sha256_base64"},
        "signing_secret": "private_key",
    }
    check = verifier(entry, {"public_key": public, "private_key": private}, now=1700000000)
    headers = check.sign_headers(req(b'{"a":1}', {}))
    check.verify(req(b'{"a":1}', headers))
    hs = jwt.encode({"body_hash": "x"}, "guess" * 8, algorithm="HS256")
    assert refusal(check, req(b'{"a":1}', {"Authorization": f"Bearer {hs}"}))


# -- through the app: stale and replayed requests are 401 and counted ---------------------------
def test_replayed_and_stale_requests_are_401_and_counted(tmp_path: Path) -> None:
    channel = {
        "id": "sinch-us",
        "provider": "sinch",
        "portfolio": "acme",
        "secrets": {"webhook_secret": "sinch-secret", "key_id": "k", "key_secret": "s"},
        "settings": {"project_id": "p", "app_id": "a"},
    }
    settings = make_settings(tmp_path, channels=[channel])
    bound = settings.channel("sinch-us")
    assert bound is not None
    body = (MAPPINGS / "sinch" / "cases" / "inbound_text.yaml").read_text()
    payload = orjson.dumps(yaml.safe_load(body)["input"])
    with TestClient(create_app(settings, dispatch=False)) as client:
        url, headers, signed = signed_request(settings, bound, payload)
        path = urlsplit(url).path
        assert client.post(path, content=signed, headers=headers).status_code == 200
        again = client.post(path, content=signed, headers=headers)
        assert again.status_code == 401
        assert "already accepted" in again.json()["detail"]
        stale = {**headers, "x-sinch-webhook-signature-timestamp": "1634579353"}
        assert client.post(path, content=signed, headers=stale).status_code == 401
        metrics = client.get("/metrics").text
    assert 'bspgate_webhooks_total{channel="sinch-us",outcome="replayed"} 1.0' in metrics
    assert 'bspgate_webhooks_total{channel="sinch-us",outcome="stale"} 1.0' in metrics


def test_a_body_the_declared_signature_does_not_cover_is_named() -> None:
    # Twilio's declaration signs the URL and form fields: a JSON body without bodySHA256 is not
    # covered (the route answers 415); form content and a bodySHA256 URL are.
    twilio = load_mapping(MAPPINGS, "twilio").verify
    channel = Channel(id="t", provider="twilio", portfolio="a", secrets={"auth_token": Secret("x")})
    check = ChannelVerifier(channel, twilio)
    url = "https://gw.example.com/webhooks/t"
    json_body = SignedRequest("POST", url, {}, b'{"a":1}', "application/json")
    assert "X-Twilio-Signature signs this body only as" in (check.uncovered_body(json_body) or "")
    form = SignedRequest("POST", url, {}, b"Body=hi", "application/x-www-form-urlencoded")
    assert check.uncovered_body(form) is None
    hashed = SignedRequest("POST", url + "?bodySHA256=ab", {}, b'{"a":1}', "application/json")
    assert check.uncovered_body(hashed) is None
    # a body-signing declaration covers everything; a shared secret never claims to
    sinch = verifier(SINCH, {"webhook_secret": "k"}, now=0)
    assert sinch.uncovered_body(json_body) is None
    header_only = verifier({"scheme": "header_secret", "secret": "s"}, {"s": "v"}, now=0)
    assert header_only.uncovered_body(json_body) is None


# Bird (docs.bird.com "Verifying a webhook subscription"): base64 HMAC-SHA256 of
# timestamp + "\n" + url + "\n" + SHA-256(body) as raw bytes, the timestamp in its own header.
BIRD = {
    "scheme": "hmac",
    "secret": "signing_key",
    "header": "messagebird-signature",
    "algorithm": "sha256",
    "encoding": "base64",
    "message": ["timestamp", {"literal": "\n"}, "url", {"literal": "\n"}, "body_sha256"],
    "timestamp": {"header": "messagebird-request-timestamp", "tolerance": 300},
}
BIRD_URL = "https://gateway.example/webhooks/bird-eu"
BIRD_BODY = b'{"service":"channels","event":"whatsapp.inbound","payload":{"id":"m1"}}'


def bird_headers(body: bytes, timestamp: str = "1719823259") -> dict[str, str]:
    digest = hashlib.sha256(body).digest()
    message = f"{timestamp}\n{BIRD_URL}\n".encode() + digest
    signature = hmac.new(b"secureSigningKey", message, hashlib.sha256).digest()
    return {
        "messagebird-signature": base64.b64encode(signature).decode(),
        "messagebird-request-timestamp": timestamp,
    }


def test_hmac_body_sha256_part_verifies_birds_signature_and_binds_the_body() -> None:
    """`body_sha256` is the raw SHA-256 digest of the body as a message part (Bird signs it after
    the timestamp and URL): Bird's request verifies, another body under its signature does not,
    and the declaration counts as covering the body."""
    check = verifier(BIRD, {"signing_key": "secureSigningKey"}, now=1719823259)
    check.verify(req(BIRD_BODY, bird_headers(BIRD_BODY), url=BIRD_URL))
    tampered = req(BIRD_BODY + b" ", bird_headers(BIRD_BODY), url=BIRD_URL)
    assert not refusal(check, tampered).missing
    assert check.uncovered_body(req(BIRD_BODY, bird_headers(BIRD_BODY), url=BIRD_URL)) is None


def test_hmac_body_sha256_hex_part_signs_the_hex_digest() -> None:
    """`body_sha256_hex` is the same digest as lower-case hex text."""
    entry = {k: v for k, v in BIRD.items() if k != "timestamp"} | {"message": ["body_sha256_hex"]}
    hexdigest = hashlib.sha256(BIRD_BODY).hexdigest().encode()
    signature = hmac.new(b"k", hexdigest, hashlib.sha256).digest()
    check = verifier(entry, {"signing_key": "k"}, now=0)
    headers = {"messagebird-signature": base64.b64encode(signature).decode()}
    check.verify(req(BIRD_BODY, headers, url=BIRD_URL))
