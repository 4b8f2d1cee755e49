"""One request of the evasion corpus, sent as given: the path verbatim (no
dot-segment or slash clean-up), the headers as listed, the body built from
a recipe. Prints {"status", "headers", "body"} (or {"error"}) as JSON.

usage: evasion_client.py CA IP HOST SPEC_JSON
SPEC: {"method", "path", "headers": [[name, value], ...], "body": RECIPE|null}

RECIPE, bytes built from:
  {"json": V}                      V as compact JSON, UTF-8, non-ASCII as is
  {"text": S}                      S in UTF-8 (JSON escapes written as \\u....)
  {"hex": H}                       raw bytes
  {"zeros": N}                     N zero bytes
  {"concat": [R, ...]}             the pieces one after the other
  {"charset": C, "of": R}          R (UTF-8) re-encoded as C (utf-16, utf-8-sig, ...)
  {"compress": A, "of": R}         A: gzip, deflate (zlib), deflate-raw, br, zstd, compress
  {"base64": R, "wrap": N}         R as base64 text, lines of N (0: one line)
  {"multipart": [PART, ...], "boundary": B}
      PART: {"name", "filename"?, "headers": [[n, v], ...], "body": R}
"""

import base64
import gzip
import http.client
import json
import socket
import ssl
import sys
import zlib

import brotli
import zstandard


def lzw9(data):
    """Unix `compress` (.Z) with 9-bit codes and no block mode."""
    table = {bytes([i]): i for i in range(256)}
    nxt, word, codes = 256, b"", []
    for byte in data:
        grown = word + bytes([byte])
        if grown in table:
            word = grown
            continue
        codes.append(table[word])
        if nxt < 512:
            table[grown] = nxt
            nxt += 1
        word = bytes([byte])
    if word:
        codes.append(table[word])
    bits = sum(code << (9 * i) for i, code in enumerate(codes))
    return b"\x1f\x9d\x09" + bits.to_bytes((9 * len(codes) + 7) // 8, "little")


def compress(algorithm, data):
    if algorithm == "gzip":
        return gzip.compress(data)
    if algorithm == "deflate":
        return zlib.compress(data)
    if algorithm == "deflate-raw":
        c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    if algorithm == "br":
        return brotli.compress(data)
    if algorithm == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if algorithm == "compress":
        return lzw9(data)
    raise ValueError(f"unknown compression {algorithm}")


def build(recipe):
    if "json" in recipe:
        return json.dumps(recipe["json"], ensure_ascii=False).encode()
    if "text" in recipe:
        return recipe["text"].encode()
    if "hex" in recipe:
        return bytes.fromhex(recipe["hex"])
    if "zeros" in recipe:
        return bytes(recipe["zeros"])
    if "concat" in recipe:
        return b"".join(build(r) for r in recipe["concat"])
    if "charset" in recipe:
        return build(recipe["of"]).decode().encode(recipe["charset"])
    if "compress" in recipe:
        return compress(recipe["compress"], build(recipe["of"]))
    if "base64" in recipe:
        text = base64.b64encode(build(recipe["base64"])).decode()
        wrap = recipe.get("wrap", 0)
        if wrap:
            text = "\r\n".join(text[i : i + wrap] for i in range(0, len(text), wrap))
        return text.encode()
    if "multipart" in recipe:
        boundary = recipe["boundary"].encode()
        out = b""
        for part in recipe["multipart"]:
            disposition = f'form-data; name="{part["name"]}"'
            if "filename" in part:
                disposition += f'; filename="{part["filename"]}"'
            out += b"--" + boundary + b"\r\n"
            out += f"Content-Disposition: {disposition}\r\n".encode()
            for name, value in part.get("headers", []):
                out += f"{name}: {value}\r\n".encode()
            out += b"\r\n" + build(part["body"]) + b"\r\n"
        return out + b"--" + boundary + b"--\r\n"
    raise ValueError(f"unknown recipe {recipe}")


def main():
    ca, ip, host, spec = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    body = build(spec["body"]) if spec.get("body") is not None else None
    ctx = ssl.create_default_context(cafile=ca)
    try:
        conn = http.client.HTTPSConnection(host, 443, context=ctx, timeout=30)
        conn.sock = ctx.wrap_socket(socket.create_connection((ip, 443), timeout=30), server_hostname=host)
        conn.putrequest(spec["method"], spec["path"], skip_host=True, skip_accept_encoding=True)
        conn.putheader("host", host)
        for name, value in spec.get("headers", []):
            conn.putheader(name, value.encode("utf-8"))
        if body is not None:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        print(json.dumps({
            "status": response.status,
            "headers": {k.lower(): v for k, v in response.getheaders()},
            "body": data.decode("utf-8", "replace"),
        }))
    except Exception as e:  # noqa: BLE001 - reported to the test as the case's result
        print(json.dumps({"error": repr(e)}))


if __name__ == "__main__":
    main()
