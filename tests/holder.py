"""A process that holds real loopback sockets for lognet's integration tests.

It prints one JSON line with its pid and ports, then obeys commands on stdin,
one per line: "close" closes the client end of the TCP pair, "open" opens another
pair and prints its client port, "drop" closes the newest such pair, "quit" exits.
It exits by itself after --timeout seconds, so a failed test leaves nothing behind.
"""

import argparse
import ctypes
import json
import select
import socket
import sys
import time

PR_SET_NAME = 15


def set_process_name(name: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME) failed")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", help="process name to set with prctl (escapes like \\x0a are decoded)")
    parser.add_argument("--host", default="127.0.0.1", help="address of the TCP listener")
    parser.add_argument("--port", type=int, default=0, help="port of the TCP listener (default: any free one)")
    parser.add_argument("--udp6", action="store_true", help="also bind a UDP socket on ::1")
    parser.add_argument("--connect", action="append", default=[], metavar="HOST",
                        help="also connect to the listener's port on HOST (repeatable)")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("tag", nargs="*", help="extra words that make the command line distinctive")
    args = parser.parse_args()
    if args.name:
        set_process_name(args.name.encode("ascii").decode("unicode_escape").encode("latin-1"))

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((args.host, args.port))
    listener.listen(64)
    port = listener.getsockname()[1]
    client = socket.create_connection((args.host, port))
    server, _ = listener.accept()
    extra = []
    for host in args.connect:
        extra.append(socket.create_connection((host, port)))
        extra.append(listener.accept()[0])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    info = {"pid": __import__("os").getpid(), "port": port, "client_port": client.getsockname()[1],
            "udp_port": udp.getsockname()[1], "peer": client.getpeername()[0]}
    if args.udp6:
        udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        udp6.bind(("::1", 0))
        info["udp6_port"] = udp6.getsockname()[1]
    print(json.dumps(info), flush=True)

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if not ready:
            continue
        command = sys.stdin.readline().strip()
        if command == "close":
            client.close()
            print("closed", flush=True)
        elif command == "drop":  # close the newest pair: client end first, so that it keeps the TIME_WAIT
            server_end, client_end = extra.pop(), extra.pop()
            client_end.close()
            server_end.close()
            print("dropped", flush=True)
        elif command == "open":
            extra.append(socket.create_connection((args.host, port)))
            extra.append(listener.accept()[0])
            print(extra[-2].getsockname()[1], flush=True)
        elif command in ("quit", ""):
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
