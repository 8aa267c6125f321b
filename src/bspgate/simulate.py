"""Builds a webhook request exactly as a channel's provider would send it (signed).

Used by `bspgate simulate` and the end-to-end tests. JSON files are sent as JSON; for form
providers a JSON object of fields is form-encoded first, so the Twilio fixtures post as Twilio does.
"""

from __future__ import annotations

from urllib.parse import urlencode

import orjson

from bspgate.config import Channel, Settings
from bspgate.ingress.verify import ChannelVerifier, SignedRequest
from bspgate.mapping.loader import load_mapping


def signed_request(
    settings: Settings, channel: Channel, body: bytes
) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) of the webhook `channel`'s provider would POST for `body`."""
    spec = load_mapping(settings.mappings_dir, channel.provider)
    content_type = "application/json"
    if spec.parse == "form":
        stripped = body.lstrip()
        if stripped[:1] == b"{":
            fields = orjson.loads(body)
            body = urlencode(
                {
                    k: v if isinstance(v, str) else orjson.dumps(v).decode()
                    for k, v in fields.items()
                }
            ).encode()
        content_type = "application/x-www-form-urlencoded"
    verifier = ChannelVerifier(channel, spec.verify)
    url = settings.server.public_url.rstrip("/") + f"/webhooks/{channel.id}"
    query = verifier.signing_query()
    if query:
        url += "?" + urlencode(query)
    request = SignedRequest("POST", url, {"content-type": content_type}, body, content_type)
    headers = {"content-type": content_type, **verifier.sign_headers(request)}
    return url, headers, body
