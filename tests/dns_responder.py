"""A tiny DNS responder for lognet's name tests, and the DNS messages they need.

    python3 tests/dns_responder.py ZONE_JSON [--address 127.0.0.1] [--delay S]
        answers A and AAAA questions over UDP port 53 from a zone:
        {"site.test": ["CNAME", "edge.cdn.test"], "edge.cdn.test": ["A", "192.0.2.10"], ...};
        a name in it mapped to ["BAD", kind] gets a malformed answer of that kind
        (truncated, loop, newline); prints "ready" once it listens, answers after S seconds,
        and ends when stdin closes. Run it inside a network namespace of the test's own.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time

TYPES = {"A": 1, "AAAA": 28, "CNAME": 5}


def encode_name(name: str | bytes) -> bytes:
    """A name as the wire writes it: b'www.test' -> b'\\x03www\\x04test\\x00'; bytes keep a label's dots."""
    labels = name.split(b"\x00") if isinstance(name, bytes) else [label.encode() for label in name.split(".")]
    return b"".join(bytes([len(label)]) + label for label in labels if label) + b"\x00"


def record(owner: bytes, rtype: int, rdata: bytes, ttl: int = 60) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def answer(ident: int, question: bytes, records: list[bytes], flags: int = 0x8180) -> bytes:
    """A response to question (name, type and class as asked) with these answer records."""
    return struct.pack("!HHHHHH", ident, flags, 1, len(records), 0, 0) + question + b"".join(records)


def resolve(zone: dict, name: str, qtype: int) -> list[bytes]:
    """The records that answer name, CNAMEs followed through the zone."""
    records = []
    for _ in range(8):
        kind, value = zone.get(name, (None, None))
        if kind == "CNAME":
            records.append(record(encode_name(name), 5, encode_name(value)))
            name = value
        elif kind is not None and TYPES[kind] == qtype:
            family = socket.AF_INET if kind == "A" else socket.AF_INET6
            records.append(record(encode_name(name), qtype, socket.inet_pton(family, value)))
            break
        else:
            break
    return records


def malformed(kind: str, ident: int, question: bytes) -> bytes:
    """Answers that a decoder must survive."""
    if kind == "truncated":
        return answer(ident, question, [record(b"\xc0\x0c", 1, bytes([192, 0, 2, 10]))])[:-3]
    if kind == "loop":  # a compression pointer that points at itself
        return answer(ident, question, [record(b"\xc0\x0c", 1, bytes([192, 0, 2, 10]))]).replace(
            b"\xc0\x0c", struct.pack("!H", 0xC000 | 12 + len(question)), 1)
    if kind == "newline":  # a question other than the one asked, with a newline, a space and a '|' in a label
        evil = encode_name(b"evil\n2026-01-01|00:00:00 x|y\x00cdn\x00test") + question[-4:]
        return answer(ident, evil, [record(b"\xc0\x0c", 1, bytes([192, 0, 2, 12]))])
    raise ValueError(kind)


def serve(zone: dict, address: str, delay: float) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, 53))
    print("ready", flush=True)
    for _ in range(100_000):
        ready = select.select([server, sys.stdin], [], [], 60)[0]
        if sys.stdin in ready or not ready:
            return
        query, client = server.recvfrom(4096)
        ident, = struct.unpack_from("!H", query)
        end = query.index(b"\x00", 12) + 5
        question, labels, at = query[12:end], [], 12
        while query[at]:
            labels.append(query[at + 1:at + 1 + query[at]].decode())
            at += 1 + query[at]
        name, qtype = ".".join(labels).lower(), struct.unpack_from("!H", query, end - 4)[0]
        time.sleep(delay)
        entry = zone.get(name, (None, None))
        reply = (malformed(entry[1], ident, question) if entry[0] == "BAD"
                 else answer(ident, question, resolve(zone, name, qtype)))
        server.sendto(reply, client)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("zone")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    serve(json.loads(args.zone), args.address, args.delay)
