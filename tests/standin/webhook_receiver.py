"""A webhook receiver for the alert-delivery test: verifies each POST's
HMAC signature and appends what it got to --log as JSON lines."""

import argparse
import hashlib
import hmac
import json
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        timestamp = self.headers.get("x-modelgate-timestamp", "")
        signature = self.headers.get("x-modelgate-signature", "")
        expected = "sha256=" + hmac.new(
            self.server.secret, timestamp.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        alert = json.loads(body)
        entry = {
            "id": self.headers.get("x-modelgate-alert-id"),
            "type": alert.get("type"),
            "count": alert.get("count"),
            "last_seen": alert.get("last_seen"),
            "signature_ok": hmac.compare_digest(signature, expected),
        }
        with open(self.server.log, "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    server = HTTPServer(("127.0.0.1", args.port), Handler)
    server.secret = args.secret.encode()
    server.log = args.log
    server.serve_forever()


if __name__ == "__main__":
    main()
