"""A tiny authoritative DNS server for the tests (stdlib only).

Answers A queries for r<N>.<zone> with 127.<10 + N // 62500 % 100>.<N // 250 % 250>.<N % 250 + 1>,
so every name has its own loopback address; anything else gets NXDOMAIN.
"""

import argparse
import socket
import struct


def address(n):
    return bytes([127, 10 + (n // 62500) % 100, (n // 250) % 250, n % 250 + 1])


def parse_question(data):
    labels, pos = [], 12
    while True:
        length = data[pos]
        pos += 1
        if length == 0:
            break
        labels.append(data[pos:pos + length].decode("ascii", "replace").lower())
        pos += length
    qtype, qclass = struct.unpack("!HH", data[pos:pos + 4])
    return labels, qtype, qclass, data[12:pos + 4]


def answer(data, zone, ttl):
    ident, flags = struct.unpack("!HH", data[:4])
    labels, qtype, _, question = parse_question(data)
    name = ".".join(labels)
    rcode, answers = 3, b""
    if name.endswith("." + zone) and labels[0].startswith("r") and labels[0][1:].isdigit():
        rcode = 0
        if qtype == 1:
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + address(int(labels[0][1:]))
    count = 1 if answers else 0
    header = struct.pack("!HHHHHH", ident, 0x8180 | rcode | (flags & 0x0100), 1, count, 0, 0)
    return header + question + answers


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--ttl", type=int, default=60)
    parser.add_argument("--ready", required=True)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, 53))
    open(args.ready, "w").write("ok")
    while True:
        data, peer = sock.recvfrom(2048)
        try:
            sock.sendto(answer(data, args.zone.lower(), args.ttl), peer)
        except (IndexError, struct.error, UnicodeDecodeError):
            continue


if __name__ == "__main__":
    main()
