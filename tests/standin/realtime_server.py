"""A stand-in for the OpenAI Realtime API over WebSocket (TLS).

Logs one JSON line per event it sees: the opening request (path, headers),
every message it receives, and how the session closed. Answers the way the
Realtime API does: session.created on connect, session.updated,
conversation.item.created, and for response.create three text deltas and a
response.done with usage. Binary messages are echoed.
"""

import argparse
import asyncio
import json
import ssl
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

USAGE = {
    "total_tokens": 30,
    "input_tokens": 12,
    "output_tokens": 18,
    "input_token_details": {"cached_tokens": 4, "text_tokens": 12, "audio_tokens": 0},
    "output_token_details": {"text_tokens": 18, "audio_tokens": 0},
}


def log(args, entry):
    with open(args.log, "a") as f:
        f.write(json.dumps(entry) + "\n")


async def session(args, ws):
    path = ws.request.path
    log(args, {"event": "open", "path": path, "headers": {k.lower(): v for k, v in ws.request.headers.raw_items()}})
    model = parse_qs(urlsplit(path).query).get("model", ["unknown"])[0]
    events = 0

    async def send(kind, **fields):
        nonlocal events
        events += 1
        await ws.send(json.dumps({"type": kind, "event_id": f"event_{events}", **fields}))

    await send("session.created", session={"object": "realtime.session", "id": "sess_1", "type": "realtime", "model": model})
    try:
        async for message in ws:
            if isinstance(message, bytes):
                log(args, {"event": "binary", "bytes": len(message)})
                await ws.send(message)
                continue
            log(args, {"event": "text", "message": message})
            try:
                event = json.loads(message)
            except ValueError:
                continue
            kind = event.get("type")
            if kind == "session.update":
                await send("session.updated", session={"object": "realtime.session", "id": "sess_1", "model": model, **event.get("session", {})})
            elif kind == "conversation.item.create":
                await send("conversation.item.created", item={"id": "item_1", **event.get("item", {})})
            elif kind == "response.create":
                await send("response.created", response={"id": "resp_1", "object": "realtime.response", "status": "in_progress"})
                for i in range(3):
                    await send("response.output_text.delta", response_id="resp_1", item_id="item_2",
                               output_index=0, content_index=0, delta=f"w{i} ")
                await send("response.done", response={"id": "resp_1", "object": "realtime.response",
                                                      "status": "completed", "output": [], "usage": USAGE})
    except ConnectionClosed:
        pass
    log(args, {"event": "closed", "code": ws.close_code})


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--marker")
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])
    async with serve(lambda ws: session(args, ws), args.bind, args.port, ssl=context) as server:
        with open(args.ready, "w") as f:
            f.write(str(args.port))
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
