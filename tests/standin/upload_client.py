"""Sends one upload through TLS, written piece by piece with pauses, as a
client whose writes arrive in separate reads; prints the answer as JSON.

Reads its case as JSON on stdin: host, ip, port, cafile, path, headers,
chunked (else a Content-Length), pause (seconds after each piece), and
pieces: {"text": "..."} (sent as its UTF-8), {"hex": "..."} or {"fill": N} (N bytes of
plain prose, generated here, written 1 MiB at a time).
"""

import http.client
import json
import socket
import ssl
import sys
import time

PROSE = b"the quick brown fox jumps over the lazy dog, again and again. " * 16384


def fill(n):
    while n > 0:
        piece = PROSE[: min(n, 1 << 20)]
        n -= len(piece)
        yield piece


def pieces(case):
    for piece in case["pieces"]:
        if "text" in piece:
            yield [piece["text"].encode()]
        elif "hex" in piece:
            yield [bytes.fromhex(piece["hex"])]
        else:
            yield fill(piece["fill"])


def size(case):
    return sum(len(b) for piece in pieces(case) for b in piece)


def main():
    case = json.load(sys.stdin)
    context = ssl.create_default_context(cafile=case["cafile"])
    raw = socket.create_connection((case["ip"], case["port"]), timeout=60)
    tls = context.wrap_socket(raw, server_hostname=case["host"])
    conn = http.client.HTTPSConnection(case["host"], case["port"], timeout=60)
    conn.sock = tls
    conn.putrequest("POST", case["path"], skip_host=False)
    for name, value in case["headers"].items():
        conn.putheader(name, value)
    chunked = case.get("chunked", False)
    if chunked:
        conn.putheader("transfer-encoding", "chunked")
    else:
        conn.putheader("content-length", str(size(case)))
    conn.endheaders()
    sent, error = 0, None
    try:
        for piece in pieces(case):
            for block in piece:
                data = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
                tls.sendall(data)
                sent += len(block)
            time.sleep(case.get("pause", 0))
        if chunked:
            tls.sendall(b"0\r\n\r\n")
    except OSError as err:
        error = f"sending stopped after {sent} bytes: {err}"
    try:
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        print(json.dumps({"status": response.status, "body": body, "sent": sent, "error": error}))
    except (OSError, http.client.HTTPException) as err:
        print(json.dumps({"status": 0, "body": "", "sent": sent,
                          "error": f"{error or ''}; no response: {err!r}"}))


if __name__ == "__main__":
    main()
