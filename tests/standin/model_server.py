"""A stand-in model API for the integration tests: OpenAI, Anthropic,
Gemini and Bedrock Converse shapes, plain and streamed, over TLS with a test
CA; with --sigv4-secret it checks SigV4 signatures over the body as AWS does.

Every request it receives is appended to --log as one JSON line (path,
headers, body), so a test can check exactly what reached "upstream".
Streams write --marker once their last chunk is sent, so a test can prove
it saw the first chunk before the upstream finished.
"""

import argparse
import hashlib
import hmac
import json
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

LOCK = threading.Lock()

# Upload endpoints: their bodies are read as they arrive, never held whole.
UPLOAD_PATH = re.compile(r".*(/files|/audio/(transcriptions|translations)|/uploads/[^/]+/parts)$")
# What the upload tests hide: an AWS access key id.
KEY = re.compile(rb"AKIA[0-9A-Z]{16}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _record(self, body):
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
        with LOCK, open(self.server.args.log, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            self._send_events(events)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            # The client (the proxy, cancelling) went away: expected in tests.
            self.close_connection = True

    def _send_events(self, events):
        delay = self.server.args.chunk_delay
        for i, (name, payload) in enumerate(events):
            text = ""
            if name:
                text += f"event: {name}\n"
            text += f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
            raw = text.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
            self.wfile.flush()
            if i + 1 < len(events):
                time.sleep(delay)
        with open(self.server.args.marker, "w") as f:
            f.write(str(time.time()))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _fail(self, how):
        """Upstream failures on demand, chosen by the request's model:
        fail-reset (a stream cut by a TCP reset), fail-stall (a stream that
        stops), fail-stall-headers (no answer at all), fail-garbage (bytes
        that are not HTTP)."""
        import socket, struct
        if how == "fail-stall-headers":
            time.sleep(30)
            return
        if how == "fail-garbage":
            self.wfile.write(b"NOT-HTTP garbage \x00\xff\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        raw = ('data: ' + json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": how,
               "choices": [{"index": 0, "delta": {"content": "w0 "}}]}) + "\n\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
        self.wfile.flush()
        if how == "fail-stall":
            time.sleep(30)
            return
        # fail-reset: RST instead of FIN, once the proxy has read the first
        # chunk (a reset makes the peer drop what it has not read yet).
        time.sleep(0.5)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def do_GET(self):
        self._record(b"")
        if self.path.startswith("/v1/models"):
            self._json(200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def _sigv4_mismatch(self, body):
        """What AWS would say of the request's SigV4 signature, checked
        against --sigv4-secret over the body as received; None when valid."""
        auth = self.headers.get("authorization", "")
        m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=[^/]+/(\d{8})/([^/]+)/([^/]+)/aws4_request,"
                         r" ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})", auth)
        if not m:
            return "MissingAuthenticationTokenException"
        date, region, service, signed, signature = m.groups()
        payload = hashlib.sha256(body).hexdigest()
        declared = self.headers.get("x-amz-content-sha256")
        if declared not in (None, payload):
            return "XAmzContentSHA256Mismatch"
        path, _, query = self.path.partition("?")
        pairs = sorted(
            (quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~"))
            for k, _, v in (p.partition("=") for p in query.split("&") if p)
        )
        headers = "".join(
            f"{name}:{' '.join(self.headers.get(name, '').split())}\n" for name in signed.split(";")
        )
        canonical = "\n".join([
            self.command, quote(path, safe="/~"), "&".join(f"{k}={v}" for k, v in pairs),
            headers, signed, payload,
        ])
        scope = f"{date}/{region}/{service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", self.headers.get("x-amz-date", ""), scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.server.args.sigv4_secret).encode()
        for part in (date, region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, signature) else "InvalidSignatureException"

    def _upload(self):
        """Reads an upload as it streams (chunked or with a length), keeping
        only counters: its size, sha256, whether it ended as its framing
        says, the AWS keys it held (even across reads) and its first 64 KiB.
        Logged as `upload`; a complete one is answered like OpenAI."""
        digest, total, keys, tail, head = hashlib.sha256(), 0, set(), b"", bytearray()

        def eat(piece):
            nonlocal total, tail
            digest.update(piece)
            total += len(piece)
            window = tail + piece
            keys.update(k.decode() for k in KEY.findall(window))
            tail = window[-19:]
            if len(head) < 65536:
                head.extend(piece[: 65536 - len(head)])

        def read_exactly(n):
            while n:
                piece = self.rfile.read(min(n, 65536))
                if not piece:
                    raise EOFError
                eat(piece)
                n -= len(piece)

        complete = False
        try:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                while True:
                    line = self.rfile.readline(1024)
                    if not line:
                        raise EOFError
                    size = int(line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    read_exactly(size)
                    if self.rfile.read(2) != b"\r\n":
                        raise EOFError
            else:
                read_exactly(int(self.headers.get("content-length", "0")))
            complete = True
        except (EOFError, OSError, ValueError, ssl.SSLError):
            pass
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": "",
            "upload": {"bytes": total, "complete": complete, "sha256": digest.hexdigest(),
                       "keys": sorted(keys), "head": head.decode("utf-8", "replace")},
        }
        with LOCK, open(self.server.args.log, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if not complete:
            self.close_connection = True
            return
        if "/audio/" in self.path:
            self._json(200, {"text": "Hello from the stand-in."})
        else:
            self._json(200, {"id": "file-1", "object": "file", "bytes": total,
                             "sha256": digest.hexdigest()})

    def do_POST(self):
        if UPLOAD_PATH.match(self.path.split("?")[0]):
            self._upload()
            return
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        self._record(body)
        if self.server.args.sigv4_secret:
            mismatch = self._sigv4_mismatch(body)
            if mismatch:
                data = json.dumps({"message": "The request signature we calculated does not match "
                                              "the signature you provided."}).encode()
                self.send_response(403)
                self.send_header("content-type", "application/json")
                self.send_header("x-amzn-errortype", mismatch)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            req = {}
        model = req.get("model", "unknown")
        chunks = self.server.args.chunks
        path = self.path.split("?")[0]
        if path.startswith("/model/") and path.endswith("/converse"):
            self._json(200, {
                "output": {"message": {"role": "assistant", "content": [{"text": "Hello from Bedrock."}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 9, "outputTokens": 4, "totalTokens": 13},
                "metrics": {"latencyMs": 1},
            })
            return
        if model.startswith("fail-"):
            self._fail(model)
            return
        if path.endswith("/chat/completions"):
            if req.get("stream"):
                # As OpenAI does: asked for usage, every chunk carries a
                # null one and an extra last chunk has it.
                include_usage = (req.get("stream_options") or {}).get("include_usage")
                if self.server.args.no_usage:
                    include_usage = False
                events = [
                    (None, {"id": "c1", "object": "chat.completion.chunk", "model": model,
                            "choices": [{"index": 0, "delta": {"content": f"w{i} "}}],
                            **({"usage": None} if include_usage else {})})
                    for i in range(chunks)
                ]
                if include_usage:
                    events.append((None, {"id": "c1", "object": "chat.completion.chunk", "model": model,
                                          "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": chunks,
                                                                   "total_tokens": 11 + chunks}}))
                events.append((None, "[DONE]"))
                self._sse(events)
            elif self.server.args.no_usage:
                self._json(200, {
                    "id": "c1", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "Hello from the stand-in."}}],
                })
            else:
                self._json(200, {
                    "id": "c1", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "Hello from the stand-in."}}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                              "prompt_tokens_details": {"cached_tokens": 4},
                              "completion_tokens_details": {"reasoning_tokens": 2}},
                })
        elif path.endswith("/embeddings"):
            self._json(200, {"object": "list", "model": model,
                             "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                             "usage": {"prompt_tokens": 5, "total_tokens": 5}})
        elif path.endswith("/messages"):
            if req.get("stream"):
                events = [("message_start", {"type": "message_start", "message": {
                    "id": "m1", "type": "message", "role": "assistant", "model": model, "content": [],
                    "usage": {"input_tokens": 13, "output_tokens": 1}}})]
                events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": f"w{i} "}})
                           for i in range(chunks)]
                events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                                 "usage": {"output_tokens": chunks}}))
                events.append(("message_stop", {"type": "message_stop"}))
                self._sse(events)
            else:
                self._json(200, {"id": "m1", "type": "message", "role": "assistant", "model": model,
                                 "content": [{"type": "text", "text": "Hello."}],
                                 "usage": {"input_tokens": 13, "output_tokens": 3}})
        else:
            self._json(404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--plain", action="store_true", help="cleartext HTTP (a server on port 80)")
    parser.add_argument("--no-usage", action="store_true",
                        help="report no usage, even when a stream asks for it (as some OpenAI-compatible servers)")
    parser.add_argument("--sigv4-secret", help="refuse POSTs whose AWS SigV4 signature does not verify")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    server.args = args
    if not args.plain:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        context.set_alpn_protocols(["http/1.1"])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    with open(args.ready, "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
