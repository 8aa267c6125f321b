"""Values put into a send URL are percent-encoded for their place in it.

WATI's send is `POST {base_url}/api/v1/sendSessionMessage/{number}?messageText=…`: the message
text travels in the query string, so a text holding `&`, `#`, `=` or `?` must arrive whole, not cut
short or adding query parameters of its author's. A hole after the URL's `?` is a query value, one
before it a path segment (a `/` or `?` inside a value stays inside that segment); a hole at the
very start is the base URL (`${settings.base_url}`), kept as the channel sets it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from bspgate.mapping.send_cases import render_offline

WATI_MAPPING = """\
name: wati
inbound:
  rules:
    - name: message
      type: whatsapp.message.received
      for_each: [{ev: payload}]
      key: ev.whatsappMessageId
      time: {from: ev.timestamp, apply: epoch_to_rfc3339}
      fields:
        contact.phone: {from: ev.waId, apply: phone}
        message.id: ev.whatsappMessageId
        message.type: {value: text}
        message.text: ev.text
"""
WATI_OUTBOUND = """\
provider: wati
settings: {base_url: https://live-server.wati.io}
secrets: [api_key]
request:
  method: POST
  url: ${settings.base_url}/api/v1/sendSessionMessage/${to.phone_digits}
auth: {scheme: bearer, secret: api_key}
types:
  text:
    url: >-
      ${settings.base_url}/api/v1/${settings.tenant}/sendSessionMessage/${to.phone_digits}?messageText=${text.body}
    body: {}
answer:
  message_id: message.whatsappMessageId || message.id
"""
WATI_CHANNEL = """\
service_window: "off"
secrets: {api_key: test-api-key}
settings: {base_url: "${stand_in}/prefix", tenant: "acme/eu?x=1"}
"""
TEXT = "Tom & Jerry #1 50%?admin=true&messageText=evil"


def wati_folder(root: Path) -> Path:
    """A WATI-like provider folder under `root` (a user mappings folder); returns `root`."""
    folder = root / "wati"
    (folder / "cases").mkdir(parents=True)
    (folder / "mapping.yaml").write_text(WATI_MAPPING)
    (folder / "outbound.yaml").write_text(WATI_OUTBOUND)
    (folder / "cases" / "_channel.yaml").write_text(WATI_CHANNEL)
    return root


def rendered_url(root: Path, text: str) -> str:
    case: dict[str, Any] = {
        "send": {"to": {"phone": "+15551234567"}, "type": "text", "text": {"body": text}},
        "expect": {},
    }
    sent, _send_id = asyncio.run(render_offline(root, "wati", case))
    return str(sent.url)


def test_a_text_in_a_url_query_arrives_whole(tmp_path: Path) -> None:
    """`&`, `#`, `=`, `?` and `%` in a query value are encoded: the provider reads the text once,
    whole, and no parameter of the author's."""
    url = rendered_url(wati_folder(tmp_path / "m"), TEXT)
    parts = urlsplit(url)
    assert parts.fragment == ""
    assert parse_qs(parts.query, keep_blank_values=True) == {"messageText": [TEXT]}


def test_a_value_in_a_path_segment_stays_in_its_segment(tmp_path: Path) -> None:
    """A `/` or `?` inside a path value is encoded; the base URL at the start (with a path of
    its own) is kept as the channel sets it."""
    url = rendered_url(wati_folder(tmp_path / "m"), "Hi")
    parts = urlsplit(url)
    assert url.startswith("https://provider.invalid/prefix/api/v1/")
    segments = parts.path.split("/")
    assert segments == [
        "",
        "prefix",
        "api",
        "v1",
        "acme%2Feu%3Fx=1",
        "sendSessionMessage",
        "15551234567",
    ]
    assert unquote(segments[4]) == "acme/eu?x=1"
    assert parse_qs(parts.query) == {"messageText": ["Hi"]}
