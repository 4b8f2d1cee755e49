"""A lenient stand-in model API for the evasion test: it answers every
request with an OpenAI-shaped 200 and logs what the most forgiving real
server would READ from it.

For each request it appends one JSON line to --log:

  case        the `x-evasion-case` header (which corpus case sent it)
  method, raw_path, path (normalised: %-decoded, dot-segments and duplicate
  slashes resolved), query ([name, value] pairs, decoded), headers
  raw_body    the body as received (UTF-8, invalid bytes replaced; capped)
  errors      what could not be decoded (an unknown Content-Encoding, ...)
  seen        every text the server read: path, query, headers, every JSON
              string value and object key at any depth, joins of adjacent
              string values, each with invisible characters removed and
              fullwidth ASCII folded, and decodings of base64 / hex /
              percent-encoded runs (two levels deep); capped per text
  akia        every AWS-access-key-shaped run (`AKIA` + 16 of [A-Z0-9]) in
              any seen text or the raw body, searched before any cap

Body decoding: Content-Encoding gzip / x-gzip / deflate (zlib-wrapped or
raw) / br / zstd / compress (9-bit LZW), stacked and in any case; charset
detection as json.loads(bytes) does plus a UTF-8 BOM; JSON with NaN and
Infinity, duplicate keys all kept, invalid UTF-8 replaced; multipart parts
(with their own Content-Encoding, Content-Transfer-Encoding base64 or
quoted-printable, and gzip / zstd / compress magic bytes); urlencoded forms.
brotli and zstandard come from PyPI (the venv `cargo xtask test` makes).
"""

import argparse
import base64
import binascii
import gzip
import json
import posixpath
import quopri
import re
import ssl
import sys
import threading
import unicodedata
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, unquote_plus

import brotli
import zstandard

LOCK = threading.Lock()
# Bodies nested far deeper than any API allows still parse.
sys.setrecursionlimit(20000)

# A decompressed body past this is a bomb: it is cut here and noted.
MAX_DECODED = 16 << 20
# Texts are logged up to this many characters (searched in full first).
LOG_CAP = 64 * 1024
MAX_SEEN = 5000
AKIA = re.compile(r"AKIA[A-Z0-9]{16}")
# Object keys whose values are structure, not text: left out of the join of
# a request's text (the join of *all* values is kept as well).
STRUCTURAL = {"role", "type", "model", "id", "object", "tool_call_id", "finish_reason"}
# Characters a reader (or a model) does not see.
INVISIBLE_EXTRA = {"\u034f", "\u115f", "\u1160", "\u3164", "\uffa0", "\u180e", "\u2800"}
BASE64_RUN = re.compile(r"[A-Za-z0-9+/_\-=\r\n]{16,}")
HEX_RUN = re.compile(r"[0-9A-Fa-f]{16,}")


class DecodeError(Exception):
    pass


# ---------------------------------------------------------------- bodies


def bounded_zlib(data, wbits):
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, MAX_DECODED + 1)
    if len(out) > MAX_DECODED:
        raise DecodeError(f"decompressed past {MAX_DECODED} bytes (a bomb)")
    return out


def gunzip(data):
    # gzip members may be concatenated; each is read.
    out = b""
    rest = data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += d.decompress(rest, MAX_DECODED + 1 - len(out))
        if len(out) > MAX_DECODED:
            raise DecodeError(f"decompressed past {MAX_DECODED} bytes (a bomb)")
        if not d.eof:
            raise DecodeError("truncated gzip")
        rest = d.unused_data
        if rest and rest[:2] != b"\x1f\x8b":
            break
    return out


def inflate(data):
    try:
        return bounded_zlib(data, zlib.MAX_WBITS)
    except zlib.error:
        return bounded_zlib(data, -zlib.MAX_WBITS)


def unzstd(data):
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    out = reader.read(MAX_DECODED + 1)
    if len(out) > MAX_DECODED:
        raise DecodeError(f"decompressed past {MAX_DECODED} bytes (a bomb)")
    return out


def unbrotli(data):
    out = brotli.decompress(data)
    if len(out) > MAX_DECODED:
        raise DecodeError(f"decompressed past {MAX_DECODED} bytes (a bomb)")
    return out


def uncompress(data):
    """Unix `compress` (.Z) with 9-bit codes, what the corpus client writes."""
    if data[:2] != b"\x1f\x9d":
        raise DecodeError("not compress data")
    if data[2] & 0x1F != 9 or data[2] & 0x80:
        raise DecodeError("only 9-bit compress without block mode is read")
    bits = int.from_bytes(data[3:], "little")
    codes = [(bits >> (9 * i)) & 0x1FF for i in range(len(data[3:]) * 8 // 9)]
    if not codes:
        return b""
    table = {i: bytes([i]) for i in range(256)}
    nxt = 256
    prev = table[codes[0]]
    out = [prev]
    for code in codes[1:]:
        if code in table:
            entry = table[code]
        elif code == nxt:
            entry = prev + prev[:1]
        else:
            raise DecodeError("bad compress code")
        out.append(entry)
        if nxt < 512:
            table[nxt] = prev + entry[:1]
            nxt += 1
        prev = entry
    return b"".join(out)


DECODERS = {
    "gzip": gunzip,
    "x-gzip": gunzip,
    "deflate": inflate,
    "br": unbrotli,
    "zstd": unzstd,
    "compress": uncompress,
    "x-compress": uncompress,
}


def decode_content(data, encoding, errors):
    """Undoes a Content-Encoding list (applied in order, so undone last first)."""
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        decoder = DECODERS.get(coding)
        if decoder is None:
            errors.append(f"unknown content-encoding {coding!r}")
            return data
        try:
            data = decoder(data)
        except Exception as e:  # noqa: BLE001 - anything unreadable is noted
            errors.append(f"content-encoding {coding}: {e!r}")
            return data
    return data


def sniff_compressed(data, errors):
    """A part (or a body) that is compressed without saying so."""
    for _ in range(3):
        try:
            if data[:2] == b"\x1f\x8b":
                data = gunzip(data)
            elif data[:4] == b"\x28\xb5\x2f\xfd":
                data = unzstd(data)
            elif data[:2] == b"\x1f\x9d":
                data = uncompress(data)
            else:
                return data
        except Exception as e:  # noqa: BLE001
            errors.append(f"compressed part: {e!r}")
            return data
    return data


def to_text(data, charset=None):
    if charset:
        try:
            return data.decode(charset, "replace")
        except LookupError:
            pass
    encoding = json.detect_encoding(data)
    if encoding == "utf-8":
        encoding = "utf-8-sig"
    return data.decode(encoding, "replace")


class Pairs(list):
    """A JSON object as its (key, value) pairs: duplicate keys all kept."""


def loads(text):
    return json.loads(text, object_pairs_hook=Pairs)


class Reader:
    """What the request says, as texts."""

    def __init__(self):
        self.texts = []  # (text, is_structural_value)
        self.errors = []

    def add(self, text, structural=False):
        if isinstance(text, str) and text:
            self.texts.append((text, structural))

    def walk(self, value, under=None):
        if isinstance(value, Pairs):
            for key, item in value:
                self.add(key, structural=True)
                self.walk(item, key)
        elif isinstance(value, list):
            for item in value:
                self.walk(item, under)
        elif isinstance(value, str):
            self.add(value, structural=under in STRUCTURAL)

    def body(self, data, content_type, charset=None):
        ctype = (content_type or "").split(";")[0].strip().lower()
        params = dict(
            (k.strip().lower(), v.strip().strip('"'))
            for k, _, v in (p.partition("=") for p in (content_type or "").split(";")[1:])
        )
        charset = params.get("charset", charset)
        if ctype.startswith("multipart/") and "boundary" in params:
            self.multipart(data, params["boundary"])
            return
        data = sniff_compressed(data, self.errors)
        text = to_text(data, charset)
        if ctype == "application/x-www-form-urlencoded":
            self.form(text)
            return
        try:
            self.walk(loads(text))
            return
        except ValueError as e:
            if text.strip():
                self.errors.append(f"body is not JSON: {e}")
        self.add(text)
        if "=" in text and " " not in text.strip():
            self.form(text)

    def form(self, text):
        self.add(text)
        for name, value in parse_qsl(text, keep_blank_values=True):
            self.add(name, structural=True)
            self.add(value)

    def multipart(self, data, boundary):
        delimiter = b"--" + boundary.encode("latin-1")
        chunks = data.split(delimiter)
        for chunk in chunks[1:]:
            if chunk.startswith(b"--"):
                break
            chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
            head, sep, content = chunk.partition(b"\r\n\r\n")
            if not sep:
                head, sep, content = chunk.partition(b"\n\n")
            if content.endswith(b"\r\n"):
                content = content[:-2]
            elif content.endswith(b"\n"):
                content = content[:-1]
            headers = {}
            for line in head.decode("utf-8", "replace").splitlines():
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
                self.add(value.strip(), structural=True)
            disposition = headers.get("content-disposition", "")
            for field in re.findall(r'(?:file)?name\*?="?([^";]*)"?', disposition):
                self.add(unquote(field), structural=True)
            cte = headers.get("content-transfer-encoding", "").lower()
            try:
                if cte == "base64":
                    content = base64.b64decode(re.sub(rb"\s+", b"", content) + b"==")
                elif cte == "quoted-printable":
                    content = quopri.decodestring(content)
            except (binascii.Error, ValueError) as e:
                self.errors.append(f"part transfer-encoding {cte}: {e!r}")
            content = decode_content(content, headers.get("content-encoding"), self.errors)
            self.body(content, headers.get("content-type", "text/plain"))

    def joins(self):
        """Adjacent string values run together, as a reader of the whole
        conversation would see them."""
        values = [t for t, structural in self.texts if not structural]
        everything = [t for t, _ in self.texts]
        out = ["".join(values), "".join(everything)]
        for n in (2, 3):
            out += ["".join(values[i : i + n]) for i in range(len(values) - n + 1)]
        return out


# ---------------------------------------------------------------- texts


def strip_invisible(text):
    return "".join(
        c
        for c in text
        if unicodedata.category(c) not in ("Cf", "Cs", "Co") and c not in INVISIBLE_EXTRA
    )


def fold_fullwidth(text):
    return "".join(
        chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E else (" " if c == "\u3000" else c)
        for c in text
    )


def variants(text):
    plain = strip_invisible(text)
    folded = fold_fullwidth(plain)
    return [text, plain, folded, unicodedata.normalize("NFKC", folded)]


def readable(raw):
    text = raw.decode("utf-8", "replace")
    if not text:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\r\n\t")
    return text if printable >= 0.6 * len(text) else None


def decodings(text):
    out = []
    if "%" in text:
        out += [unquote(text), unquote_plus(text)]
    for run in BASE64_RUN.findall(text):
        compact = re.sub(r"[\r\n=]", "", run).replace("-", "+").replace("_", "/")
        for offset in range(4):
            piece = compact[offset:]
            piece = piece[: len(piece) - (len(piece) % 4 == 1)]
            try:
                raw = base64.b64decode(piece + "=" * (-len(piece) % 4))
            except (binascii.Error, ValueError):
                continue
            decoded = readable(raw)
            if decoded:
                out.append(decoded)
    for run in HEX_RUN.findall(text):
        for offset in (0, 1):
            piece = run[offset:]
            piece = piece[: len(piece) // 2 * 2]
            decoded = readable(bytes.fromhex(piece))
            if decoded:
                out.append(decoded)
    return out


def seen_texts(base):
    seen, order = set(), []

    def push(text):
        if text not in seen and len(order) < MAX_SEEN:
            seen.add(text)
            order.append(text)
            return True
        return False

    level = []
    for text in base:
        for v in variants(text):
            if push(v):
                level.append(v)
    # Decodings of decodings: two levels below what was sent.
    for _ in range(3):
        nxt = []
        for text in level:
            for decoded in decodings(text):
                for v in variants(decoded):
                    if push(v):
                        nxt.append(v)
        level = nxt
    return order


SURROGATE = re.compile("[\ud800-\udfff]")


def loggable(value):
    """Lone surrogates (which Python's JSON reads) as U+FFFD: strict JSON
    readers refuse them in the log."""
    if isinstance(value, str):
        return SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [loggable(v) for v in value]
    if isinstance(value, dict):
        return {k: loggable(v) for k, v in value.items()}
    return value


def normalise_path(raw):
    path = unquote(raw)
    path = re.sub(r"/{2,}", "/", path)
    normal = posixpath.normpath(path) if path else "/"
    if path.endswith("/") and normal != "/":
        normal += "/"
    return normal


# ---------------------------------------------------------------- server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length", "0")))

    def _record(self, raw):
        reader = Reader()
        raw_path, _, query = self.path.partition("?")
        path = normalise_path(raw_path)
        reader.add(path)
        reader.add(unquote(self.path))
        pairs = parse_qsl(query, keep_blank_values=True)
        reader.add(query)
        for name, value in pairs:
            reader.add(name, structural=True)
            reader.add(value)
        headers = [[k.lower(), v] for k, v in self.headers.items()]
        for name, value in headers:
            reader.add(name, structural=True)
            reader.add(value, structural=True)
        body_reader = Reader()
        body_reader.errors = reader.errors
        if raw:
            decoded = decode_content(raw, self.headers.get("content-encoding"), reader.errors)
            body_reader.body(decoded, self.headers.get("content-type"))
        texts = [t for t, _ in reader.texts] + [t for t, _ in body_reader.texts]
        texts += body_reader.joins()
        seen = seen_texts(texts)
        raw_text = raw.decode("utf-8", "replace")
        akia = sorted(set(AKIA.findall(raw.decode("latin-1"))).union(*(AKIA.findall(t) for t in seen)))
        entry = {
            "case": self.headers.get("x-evasion-case", ""),
            "method": self.command,
            "raw_path": self.path,
            "path": path,
            "query": [list(p) for p in pairs],
            "headers": headers,
            "raw_body": raw_text[:LOG_CAP],
            "raw_body_bytes": len(raw),
            "errors": reader.errors,
            "seen": [t[:LOG_CAP] for t in seen],
            "akia": akia,
        }
        with LOCK, open(self.server.args.log, "a") as f:
            f.write(json.dumps(loggable(entry)) + "\n")

    def _json(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self):
        path = normalise_path(self.path.partition("?")[0])
        if path.endswith("/messages"):
            self._json({"id": "m1", "type": "message", "role": "assistant", "model": "stand-in",
                        "content": [{"type": "text", "text": "Hello."}],
                        "usage": {"input_tokens": 13, "output_tokens": 3}})
        elif "/audio/" in path:
            self._json({"text": "Hello from the lenient stand-in."})
        elif path.endswith("/uploads") or "/files" in path:
            self._json({"id": "file-1", "object": "file", "bytes": 1, "purpose": "assistants"})
        elif ":generateContent" in path:
            self._json({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello."}]}}],
                        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}})
        else:
            self._json({"id": "c1", "object": "chat.completion", "created": 0, "model": "stand-in",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant",
                                                 "content": "Hello from the lenient stand-in."}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})

    def _handle(self):
        raw = self._body()
        try:
            self._record(raw)
        except Exception as e:  # noqa: BLE001 - never lose the record itself
            entry = {"case": self.headers.get("x-evasion-case", ""), "raw_path": self.path,
                     "raw_body": raw.decode("utf-8", "replace")[:LOG_CAP],
                     "akia": sorted(set(AKIA.findall(raw.decode("latin-1")))),
                     "errors": [f"the stand-in failed to read this request: {e!r}"], "seen": []}
            with LOCK, open(self.server.args.log, "a") as f:
                f.write(json.dumps(loggable(entry)) + "\n")
        self._answer()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--ready", required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    server.args = args
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with open(args.ready, "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
