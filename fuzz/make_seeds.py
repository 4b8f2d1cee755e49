#!/usr/bin/env python3
"""Writes the hand-made seed corpora under fuzz/corpus/<target>/.

Each seed is a meaningful input in the layout its target expects (see the
first bytes each target reads in fuzz_targets/). ClientHellos come from
Python's own TLS stack, so they are real; the rest are built here.
Rerun after changing a target's input layout: `python3 fuzz/make_seeds.py`.
"""

import json
import pathlib
import shutil
import ssl
import struct

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
POLICIES = ROOT.parent / "policies"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def client_hello(sni, alpn=None, tls12_only=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def sni_seeds():
    write("sni", "tls13-openai", client_hello("api.openai.com", ["h2", "http/1.1"]))
    write("sni", "tls12-anthropic", client_hello("api.anthropic.com", tls12_only=True))
    write("sni", "azure-wildcard", client_hello("myres.openai.azure.com", ["http/1.1"]))
    write("sni", "no-sni", client_hello(None))
    write("sni", "connect-host", "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
    write("sni", "connect-v6", "CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n")


def dns_name(name):
    out = b""
    for label in name.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def dns_answer(qname, answers, qtype=1, ident=0x1234):
    """answers: (type, rdata bytes, ttl, owner) with owner None for a pointer
    to the question name."""
    msg = struct.pack(">HHHHHH", ident, 0x8180, 1, len(answers), 0, 0)
    msg += dns_name(qname) + struct.pack(">HH", qtype, 1)
    for rtype, rdata, ttl, owner in answers:
        msg += owner if owner is not None else b"\xc0\x0c"
        msg += struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata
    return msg


def dns_seeds():
    a = lambda *o: bytes(o)
    write("dns_answer", "a-openai", dns_answer("api.openai.com", [(1, a(162, 159, 140, 245), 300, None), (1, a(172, 66, 0, 243), 300, None)]))
    v6 = bytes.fromhex("2606470000000000000000000000a29f")
    write("dns_answer", "aaaa-anthropic", dns_answer("api.anthropic.com", [(28, v6, 60, None)], qtype=28))
    # A CNAME first (Azure), the address record's owner is the CNAME target.
    cname = dns_name("myres.privatelink.openai.azure.com")
    cname_at = 12 + len(dns_name("myres.openai.azure.com")) + 4 + 12
    write("dns_answer", "cname-azure", dns_answer("myres.openai.azure.com", [
        (5, cname, 30, None),
        (1, a(20, 42, 7, 1), 30, struct.pack(">H", 0xC000 | cname_at)),
    ]))
    write("dns_answer", "uppercase", dns_answer("API.OpenAI.com", [(1, a(10, 0, 0, 9), 5, None)]))
    write("dns_answer", "root-owner", dns_answer("api.mistral.ai", [(1, a(10, 0, 0, 7), 5, b"\0")]))
    write("dns_answer", "nine-answers", dns_answer("api.groq.com", [(1, a(10, 0, 0, i), 5, None) for i in range(9)]))


def chunked(size, body):
    return bytes([size]) + (body.encode() if isinstance(body, str) else body)


OPENAI_SSE = "".join(
    "data: " + json.dumps(c) + "\n\n"
    for c in [
        {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hello"}}]},
        {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
    ]
) + "data: [DONE]\n\n"

ANTHROPIC_SSE = "".join(
    f"event: {e}\ndata: {json.dumps(d)}\n\n"
    for e, d in [
        ("message_start", {"type": "message_start", "message": {"id": "m1", "model": "claude-3-5-sonnet", "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        ("ping", {"type": "ping"}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}),
        ("message_stop", {"type": "message_stop"}),
    ]
)

GEMINI_SSE = "".join(
    "data: " + json.dumps(c) + "\r\n\r\n"
    for c in [
        {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1}},
        {"candidates": [{"content": {"parts": [{"text": "lo"}], "role": "model"}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2}},
    ]
)

RESPONSES_SSE = (
    "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n"
    "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n"
)


def sse_seeds():
    write("sse", "openai", chunked(7, OPENAI_SSE))
    write("sse", "anthropic", chunked(1, ANTHROPIC_SSE))
    write("sse", "gemini-crlf", chunked(13, GEMINI_SSE))
    write("sse", "comments-multiline", chunked(0, ": keep-alive\n\ndata: line one\ndata: line two\nid: 3\nretry: 10\n\nevent: only\n\n"))


def request_seeds():
    chat = {"model": "gpt-4o", "stream": True, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Mail jane.doe@example.com the key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0"}]}
    seeds = [
        (0, "chat", chat),
        (1, "completion", {"model": "gpt-3.5-turbo-instruct", "prompt": ["Say this", "twice"]}),
        (2, "responses", {"model": "gpt-4.1", "instructions": "x", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}),
        (3, "embeddings", {"model": "text-embedding-3-small", "input": "the food was delicious"}),
        (4, "anthropic", {"model": "claude-3-5-sonnet-latest", "max_tokens": 64, "system": [{"type": "text", "text": "sys"}], "messages": [{"role": "user", "content": "Hello"}], "stream": True}),
        (5, "gemini", {"contents": [{"role": "user", "parts": [{"text": "Write a haiku"}]}], "systemInstruction": {"parts": [{"text": "poet"}]}}),
        (8, "bedrock-converse", {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 10}}),
        (10, "bedrock-invoke", {"inputText": "Hello", "textGenerationConfig": {"maxTokenCount": 5}}),
        (12, "azure", {"messages": [{"role": "user", "content": "Hi"}]}),
        (13, "ollama", {"model": "llama3", "messages": [{"role": "user", "content": "Hi"}], "stream": False}),
    ]
    for pick, name, body in seeds:
        write("provider_request", name, bytes([pick]) + json.dumps(body).encode())
    write("provider_request", "custom-path", b"\xff/model/meta.llama3-8b-instruct-v1%3A0/invoke?x=1\n{\"prompt\":\"hi\"}")


def response_seeds():
    # Odd chunk size: parsed as an event stream; even: as one JSON body.
    write("provider_response", "openai-sse", chunked(9, OPENAI_SSE))
    write("provider_response", "anthropic-sse", chunked(3, ANTHROPIC_SSE))
    write("provider_response", "gemini-sse", chunked(5, GEMINI_SSE))
    write("provider_response", "responses-sse", chunked(1, RESPONSES_SSE))
    bodies = {
        "openai-json": {"id": "x", "object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": "Hello!"}}], "usage": {"prompt_tokens": 12, "completion_tokens": 3}},
        "anthropic-json": {"id": "m", "type": "message", "content": [{"type": "text", "text": "Hi"}], "usage": {"input_tokens": 10, "output_tokens": 4}},
        "gemini-json": {"candidates": [{"content": {"parts": [{"text": "ok"}]}}], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4}},
        "bedrock-converse-json": {"output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}}, "usage": {"inputTokens": 5, "outputTokens": 2, "totalTokens": 7}},
        "gemini-array": [{"candidates": [{"content": {"parts": [{"text": "a"}]}}]}, {"usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 1}}],
        "error-json": {"error": {"message": "Rate limit", "type": "rate_limit_error"}},
    }
    for name, body in bodies.items():
        write("provider_response", name, chunked(0, json.dumps(body)))


def classify_seeds():
    bodies = {
        "chat-secrets": {"model": "gpt-4o", "messages": [{"role": "user", "content": "My key is sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0 and AKIAIOSFODNN7EXAMPLE, ghp_16C7e42F292c6912E7710c838347Ae178B4a"}]},
        "pii": {"input": "Call +1 415 555 0132 or mail jane.doe@example.com, card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789"},
        "escapes": {"messages": [{"content": "line\\none\n\"quoted\" jane\\u002edoe@example.com \u00e9t\u00e9 EMP-123456"}]},
        "nested": {"a": [[[{"b": ["x@y.io", 1, 2.5e10, True, None]}]]]},
    }
    for i, (name, body) in enumerate(bodies.items()):
        write("classify", name, bytes([0xFF >> i]) + json.dumps(body, ensure_ascii=(i % 2 == 0)).encode())
    write("classify", "not-json", b"\x01token=xoxb-1234567890-abcdefghij user@example.org {unterminated")
    write("classify", "surrogates", b'\xff{"t":"\\ud83d\\ude00 a@b.io \\ud800"}')


def policy_seeds():
    write("policy", "catalog-shipped", b"\x01" + (POLICIES / "endpoints.yaml").read_bytes())
    write("policy", "policy-shipped", b"\x00" + (POLICIES / "policy.yaml").read_bytes())
    for p in sorted((POLICIES / "examples").glob("*.yaml")):
        write("policy", "example-" + p.stem, b"\x00" + p.read_bytes())
    write("policy", "catalog-small", b"\x01providers:\n  - name: local\n    api: openai-compatible\n    hosts: [\"*.internal\", llm.local]\n    ports: [8000, 11434]\n    addresses: [10.0.0.0/8, \"::1\"]\n")


def cgroup_seeds():
    paths = {
        "systemd-service": "/system.slice/nginx.service",
        "user-session": "/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-1a2b.scope",
        "docker-systemd": "/system.slice/docker-4f9d6a3c1f0b2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d.scope",
        "docker-cgroupfs": "/docker/4f9d6a3c1f0b2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d",
        "k8s-systemd": "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7c4e9a3b_2f1d_4e8a_9b6c_5d3e2f1a0b9c.slice/cri-containerd-0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9.scope",
        "k8s-cgroupfs": "/kubepods/besteffort/pod7c4e9a3b-2f1d-4e8a-9b6c-5d3e2f1a0b9c/0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "k8s-nested-colon": "/system.slice/containerd.service/kubepods-besteffort-pod7c4e9a3b_2f1d_4e8a_9b6c_5d3e2f1a0b9c.slice:cri-containerd:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "crio": "/kubepods.slice/kubepods-pod0123456789abcdef0123456789abcdef.slice/crio-fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210.scope",
        "podman": "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-1122334455667788990011223344556677889900112233445566778899001122.scope/container",
        "lxc": "/lxc.payload.web01/system.slice/ssh.service",
        "deleted": "/system.slice/cron.service (deleted)\n",
    }
    for name, path in paths.items():
        write("cgroup_path", name, path)


def cmdline_seeds():
    argvs = {
        "curl-auth": ["curl", "-H", "Authorization: Bearer sk-ant-api03-Xy7_Kq2mN9pLr4sT8vW1zA3bC5dE6fG-hJ0kL", "https://api.anthropic.com/v1/messages"],
        "python-option": ["python3", "agent.py", "--api-key", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0", "--model=gpt-4o"],
        "env-style": ["env", "OPENAI_API_KEY=sk-abc123def456ghi789jkl", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "node", "app.js"],
        "url-password": ["git", "clone", "https://user:hunter2@github.com/org/repo.git"],
        "tokens": ["sh", "-c", "echo ghp_16C7e42F292c6912E7710c838347Ae178B4a xoxb-1234-5678-abcd hf_abcdefghijklmnopqrstuvwxyzABCDEF AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"],
        "quotes": ["bash", "-c", "it's a 'quoted' arg", "--password='p w'", "ünïcödé"],
    }
    for i, (name, argv) in enumerate(argvs.items()):
        raw = b"".join(a.encode() + b"\0" for a in argv)
        write("cmdline", name, bytes([128 + i * 20]) + raw)


def header(kind, tgid=4242):
    return struct.pack("<IIIIQ", kind, tgid, tgid, 0, 123456789)


def events_seeds():
    connect = header(1) + struct.pack("<QII16s16sHHBBBBIHHII", 7, 1000, 1000, b"curl", bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 9]), 443, 2, 6, 2, 1, 0, 3, 1, 0, 1, 0)
    write("events", "connect", connect)
    argv = b"curl\0-H\0Authorization: Bearer sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0\0https://api.openai.com\0"
    exe = b"/usr/bin/curl"
    exec_ev = header(2) + struct.pack("<QII16sII", 7, 0, 0, b"curl", len(exe), 0) + exe.ljust(256, b"\0") + struct.pack("<II", len(argv), 0) + argv.ljust(512, b"\0")
    write("events", "exec", exec_ev)
    write("events", "exit", header(3))
    msg = (CORPUS / "dns_answer" / "a-openai").read_bytes()
    dns_ev = header(4, 0) + struct.pack("<QIIII", 0, 0, len(msg), 0, 0) + msg.ljust(512, b"\0")
    write("events", "dns", dns_ev)
    hello = (CORPUS / "sni" / "tls13-openai").read_bytes()[:1024]
    egress = header(5) + struct.pack("<QII16s16sHHIII", 7, 0, 0, b"python3", bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3]), 443, 0, 1, len(hello), 0) + hello.ljust(1024, b"\0")
    write("events", "egress-hello", egress)


def request_view_seeds():
    """Byte 0 picks the coding (0 none, 1 gzip, 2 deflate, 3 zstd)."""
    key = "AKIAQWERTYUIOPASDFGH"
    bodies = {
        "chat": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"use {key}"}]},
        "key-in-key": {"model": "gpt-4o", "metadata": {key: "v"}, "messages": []},
        "tool-schema": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {f"p_{key}": {"type": "string"}}}}}]},
        "email": {"input": "mail jane@example.com please"},
    }
    for i, (name, body) in enumerate(bodies.items()):
        text = json.dumps(body, ensure_ascii=(i % 2 == 0))
        write("request_view", name, bytes([i % 4]) + text.encode())
    escaped = '{"messages":[{"content":"\\u0041KIAQWERTYUIOPASDFGH"}]}'
    write("request_view", "escaped", b"\x01" + escaped.encode())
    write("request_view", "bom", b"\x00\xef\xbb\xbf" + json.dumps(bodies["chat"]).encode())
    write("request_view", "nan", b'\x02{"a": NaN, "b": "AKIAQWERTYUIOPASDFGH"}')
    write("request_view", "deep", b"\x03" + b"[" * 130 + b'"x"' + b"]" * 130)


def main():
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    sni_seeds()
    dns_seeds()
    sse_seeds()
    request_seeds()
    response_seeds()
    classify_seeds()
    request_view_seeds()
    policy_seeds()
    cgroup_seeds()
    cmdline_seeds()
    events_seeds()
    sizes = {"connect": 96, "exec": 840, "dns": 560, "egress-hello": 1112}
    for name, want in sizes.items():
        got = len((CORPUS / "events" / name).read_bytes())
        assert got == want, f"events/{name}: {got} bytes, the ABI says {want}"


if __name__ == "__main__":
    main()
