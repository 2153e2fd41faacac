"""A webhook receiver for development: prints each delivery it gets, after checking its signature.

    .venv/bin/python scripts/webhook_receiver.py --port 8000 --secret whsec_...

Answers 200 to a delivery whose signature verifies with the SDK's ``verify_webhook`` (any of the secrets
given, for a rotation), 400 to one that does not, and prints one line per request. ``--fail N`` answers 500
to the first N requests, to watch the service retry with the same webhook-id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agentflow_payments import WebhookVerificationError, verify_webhook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--secret", action="append", required=True, help="a whsec_ secret; repeat while rotating")
    parser.add_argument("--fail", type=int, default=0, help="answer 500 to this many requests first")
    options = parser.parse_args()
    failures = [options.fail]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            webhook_id = self.headers.get("webhook-id", "-")
            if failures[0] > 0:
                failures[0] -= 1
                self._answer(500, f"{webhook_id} answered 500 (--fail)")
                return
            try:
                event = verify_webhook(dict(self.headers), body, options.secret)
            except WebhookVerificationError as error:
                self._answer(400, f"{webhook_id} refused: {error}")
                return
            what = event.get("payment") or event.get("escrow") or event.get("deposit") or event.get("webhook") or {}
            detail = " ".join(f"{k}={what[k]}" for k in ("status", "amount") if k in what)
            self._answer(
                200, f"{webhook_id} verified: #{event.get('sequence', 0)} {event['type']} {event['resource']} {detail}"
            )

        def _answer(self, status: int, line: str) -> None:
            print(line, flush=True)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"status": status}).encode())

        def log_message(self, format: str, *args: object) -> None:  # the one line above is enough
            pass

    server = ThreadingHTTPServer((options.host, options.port), Handler)
    print(f"receiving webhooks on http://{options.host}:{options.port}/", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
