"""Standard Webhooks key rotation and asymmetric (v1a, ed25519) signatures, checked by the stock
libraries: Python's `standardwebhooks`, and npm's `standardwebhooks` run by Node.js when the
machine has node and npm (the test installs the package into a temporary folder; it is skipped,
saying why, when node, npm or the package is unavailable). Neither stock library verifies `v1a`,
so those signatures are checked with `cryptography` (Python) and `node:crypto` (Node).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from bspgate.delivery.asymmetric import generate, public_key_text
from bspgate.errors import ConfigError
from tests.conftest import SUBSCRIBER_SECRET, make_settings
from tests.payloads import text_webhook
from tests.test_delivery import CRM, harness, subscriber

NEW_SECRET = "whsec_" + base64.b64encode(b"the new key, 32 bytes long......").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"a key nobody was given..........").decode()
SIGNING_KEY, PUBLIC_KEY = generate()


async def delivered(tmp_path: Path, secret: Any) -> httpx.Request:
    async with harness(tmp_path, subscriber("crm", CRM, secret=secret)) as h:
        await h.ingest(text_webhook("wamid.1"))
        assert await h.dispatcher.run_once() == 1
        (request,) = h.receiver.requests
        return request


def verify_v1a(public: str, request: httpx.Request) -> bool:
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public.removeprefix("whpk_")))
    signed = (
        f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode()
        + request.content
    )
    for part in request.headers["webhook-signature"].split(" "):
        version, _, value = part.partition(",")
        if version == "v1a":
            key.verify(base64.b64decode(value), signed)  # raises InvalidSignature
            return True
    return False


@pytest.mark.anyio
@pytest.mark.store
async def test_rotation_signs_with_every_key(tmp_path: Path) -> None:
    request = await delivered(tmp_path, [NEW_SECRET, SUBSCRIBER_SECRET])
    signatures = request.headers["webhook-signature"].split(" ")
    assert [s.split(",")[0] for s in signatures] == ["v1", "v1"]
    for secret in (NEW_SECRET, SUBSCRIBER_SECRET):  # a receiver on either key accepts it
        Webhook(secret).verify(request.content, dict(request.headers))
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(request.content, dict(request.headers))


@pytest.mark.anyio
@pytest.mark.store
async def test_asymmetric_v1a_beside_a_symmetric_key(tmp_path: Path) -> None:
    request = await delivered(tmp_path, [SIGNING_KEY, SUBSCRIBER_SECRET])
    versions = [s.split(",")[0] for s in request.headers["webhook-signature"].split(" ")]
    assert versions == ["v1a", "v1"]
    assert verify_v1a(PUBLIC_KEY, request)
    Webhook(SUBSCRIBER_SECRET).verify(request.content, dict(request.headers))


def test_public_key_of_a_signing_key() -> None:
    assert public_key_text(SIGNING_KEY) == PUBLIC_KEY
    assert PUBLIC_KEY.startswith("whpk_")
    assert len(base64.b64decode(PUBLIC_KEY.removeprefix("whpk_"))) == 32


def test_a_bad_key_in_the_list_names_its_position(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(
            tmp_path, subscribers=[subscriber("crm", CRM, secret=[NEW_SECRET, "whsk_AAAA" * 4])]
        )
    assert caught.value.key == "subscribers[0].secret[1]"
    assert "whsk_AAAA" not in str(caught.value)


# -- Node.js --------------------------------------------------------------------------------------
NODE_CHECK = r"""
const { Webhook } = require("standardwebhooks");
const crypto = require("node:crypto");
const input = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
const out = {};
for (const secret of input.secrets) {
  try { new Webhook(secret).verify(input.body, input.headers); out[secret] = true; }
  catch (e) { out[secret] = false; }
}
const raw = Buffer.from(input.public_key.slice(5), "base64");
const key = crypto.createPublicKey({
  key: { kty: "OKP", crv: "Ed25519", x: raw.toString("base64url") }, format: "jwk" });
const signed = Buffer.from(
  `${input.headers["webhook-id"]}.${input.headers["webhook-timestamp"]}.${input.body}`);
out.v1a = input.headers["webhook-signature"].split(" ").some((part) => {
  const [version, value] = part.split(",");
  return version === "v1a" && crypto.verify(null, signed, key, Buffer.from(value, "base64"));
});
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def node_standardwebhooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node or npm is not installed: the Node.js check of signatures is skipped")
    folder = tmp_path_factory.mktemp("node")
    try:
        subprocess.run(
            [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(folder),
             "standardwebhooks@1"],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"npm could not install standardwebhooks (offline?): {exc}")
    (folder / "check.js").write_text(NODE_CHECK)
    return folder


@pytest.mark.anyio
async def test_node_standardwebhooks_verifies_every_key(
    tmp_path: Path, node_standardwebhooks: Path
) -> None:
    request = await delivered(tmp_path, [SIGNING_KEY, NEW_SECRET, SUBSCRIBER_SECRET])
    payload = {
        "body": request.content.decode(),
        "headers": {k: v for k, v in request.headers.items() if k.startswith("webhook-")},
        "secrets": [NEW_SECRET, SUBSCRIBER_SECRET, OTHER_SECRET],
        "public_key": PUBLIC_KEY,
    }
    done = subprocess.run(
        ["node", str(node_standardwebhooks / "check.js")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=node_standardwebhooks,
    )
    assert json.loads(done.stdout) == {
        NEW_SECRET: True,
        SUBSCRIBER_SECRET: True,
        OTHER_SECRET: False,
        "v1a": True,
    }
