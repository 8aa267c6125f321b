"""A bspgate subscriber in plain Python: verify (Standard Webhooks), parse (CloudEvents), dedupe.

pip install standardwebhooks cloudevents
WEBHOOK_SECRET=whsec_... python receiver.py 9000
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook, WebhookVerificationError

WEBHOOK = Webhook(os.environ["WEBHOOK_SECRET"])
SEEN: set[str] = set()  # use your database in production: webhook-id is the event id


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            WEBHOOK.verify(body, headers)
        except WebhookVerificationError:
            self.send_response(401)
            self.end_headers()
            return
        # structured mode: application/cloudevents+json
        event = from_http_event(HTTPMessage(headers, body))
        if event.get_id() not in SEEN:  # a retry or a replay carries the same id
            SEEN.add(event.get_id())
            data = event.get_data() or {}
            contact = (data.get("contact") or {}).get("id") if isinstance(data, dict) else None
            line = {"id": event.get_id(), "type": event.get_type(), "contact_id": contact}
            print(json.dumps(line), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return  # one line per event on stdout, nothing else


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
