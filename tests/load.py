"""Loopback load for lognet's benchmark and soak runs. Every socket is on 127.0.0.1.

    python3 tests/load.py hold PAIRS [--seconds S]
        a listener, PAIRS established TCP pairs (both ends here) and one UDP socket;
        prints "ready" and holds them until stdin closes or S seconds pass.
    python3 tests/load.py churn --rate R --lifetimes 0.1,0.5 --seconds S [--record FILE]
        opens R connections a second (Poisson arrivals), each closed after the next lifetime in the
        cycle (with SO_LINGER 0, so no TIME_WAIT is left), each from its own client
        port while fewer than 20,000 were opened; FILE gets one line per
        connection: "client_port lifetime opened closed". --close normal closes
        with FIN instead, so that the client end stays in TIME_WAIT.
    python3 tests/load.py udp --rate R --seconds S [--dns]
        sends R UDP datagrams a second to a socket of its own on 127.0.0.1; with --dns, DNS
        answers from port 53 (root), each naming another address, else 100 bytes of other
        traffic; until S seconds pass or stdin closes.
    python3 tests/load.py flood --count N [--host H] [--seconds S] [--listeners L]
        a listener on H (default 127.0.0.1); prints "ready PID PORT", then, at each "go" line on
        stdin, opens and closes N connections to it as fast as they go (both ends here, the
        client closing first), for at most S seconds, and prints "done COUNT". Its
        listener stays open until stdin closes. With L, L listeners on ports of their own
        (PORT is the first's), connected to in turn.

The helpers below start these as subprocesses and stop them again.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINGER_RESET = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT piles up on loopback
MAX_CHURN = 2_000_000  # connections one churner opens at the most


def hold(pairs: int, seconds: float) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    keep = [listener]
    for _ in range(pairs):
        keep.append(socket.create_connection(listener.getsockname()))
        keep.append(listener.accept()[0])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    keep.append(udp)
    print("ready", flush=True)
    select.select([sys.stdin], [], [], seconds)


def close_reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.close()


FIRST_CLIENT_PORT, CLIENT_PORTS = 10000, 20000  # below Linux's ephemeral range (32768 and up)


def connect_from_unique_port(address, n: int) -> socket.socket:
    """Connect from a client port no earlier connection of this run used, so that a
    log line names one connection only; a port that is taken is skipped."""
    for offset in range(CLIENT_PORTS):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            client.bind(("127.0.0.1", FIRST_CLIENT_PORT + (n + offset) % CLIENT_PORTS))
            client.connect(address)
            return client
        except OSError:
            client.close()
    raise RuntimeError("no free client port")


def churn(rate: float, lifetimes: list[float], seconds: float, record: str | None, reset: bool = True) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    out = open(record, "w") if record else None
    cycle = itertools.cycle(lifetimes)
    arrivals = random.Random(1)  # Poisson arrivals: no phase lock with a poller's fixed interval
    live: list = []  # heap of (close_at, n, client, server, lifetime, opened)
    start = time.monotonic()
    next_open = start
    opened_count = 0
    print("ready", flush=True)
    while opened_count < MAX_CHURN and time.monotonic() - start < seconds:
        now = time.monotonic()
        while live and live[0][0] <= now:
            _, _, client, server, lifetime, opened = heapq.heappop(live)
            port = client.getsockname()[1]
            if reset:
                close_reset(client)
            else:
                client.close()  # the client closes first and keeps the TIME_WAIT
            server.close()
            if out:
                out.write(f"{port} {lifetime} {opened:.4f} {time.time():.4f}\n")
        if next_open > now:
            time.sleep(min(next_open, live[0][0]) - now if live else next_open - now)
            continue
        lifetime = next(cycle)
        client = connect_from_unique_port(listener.getsockname(), opened_count)
        server = listener.accept()[0]
        heapq.heappush(live, (time.monotonic() + lifetime, opened_count, client, server, lifetime, time.time()))
        opened_count += 1
        # never catch up (after SIGSTOP, or when too slow): a burst would swell the live set
        next_open = max(next_open, time.monotonic()) + arrivals.expovariate(rate)
    for _, _, client, server, _, _ in live:  # cut short by the end of the run: not recorded
        close_reset(client)
        server.close()
    if out:
        out.close()
    print(f"opened {opened_count}", flush=True)


def udp(rate: float, seconds: float, dns: bool) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 53 if dns else 0))
    if dns:
        from dns_responder import answer, encode_name, record
    print("ready", flush=True)
    start, sent, step = time.monotonic(), 0, 0.01  # a burst every 10 ms
    while time.monotonic() - start < seconds and sent < rate * seconds:
        for _ in range(int(rate * step)):
            n = sent % 60_000
            if dns:
                question = encode_name(f"host{n}.bench.test") + b"\x00\x01\x00\x01"
                payload = answer(n, question, [record(b"\xc0\x0c", 1, bytes([198, 18, n >> 8, n & 0xFF]))])
            else:
                payload = b"x" * 100
            sender.sendto(payload, sink.getsockname())
            sent += 1
        while True:  # the sink reads what came, so that its buffer never drops (that would be cheaper)
            try:
                sink.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        if select.select([sys.stdin], [], [], max(0.0, start + (sent / rate) - time.monotonic()))[0]:
            break  # stdin closed: stopped
    print(f"sent {sent}", flush=True)


def flood(host: str, count: int, seconds: float, listeners: int = 1) -> None:
    servers = [socket.create_server((host, 0), backlog=1024) for _ in range(listeners)]
    print(f"ready {__import__('os').getpid()} {servers[0].getsockname()[1]}", flush=True)
    for command in sys.stdin:
        if command.strip() != "go":
            break
        deadline, done = time.monotonic() + seconds, 0
        while done < count and time.monotonic() < deadline:
            listener = servers[done % listeners]  # with many, no one port has a flood's share
            client = socket.create_connection(listener.getsockname())
            server = listener.accept()[0]
            client.close()  # FIN: a socket closed with RST loses its peer's address before the kernel's close event
            server.close()
            done += 1
        print(f"done {done}", flush=True)
    for listener in servers:
        listener.close()


class Load:
    """Started load processes; stop() ends them all."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, *args, prefix: tuple = ()) -> subprocess.Popen:
        """load.py with args, run after prefix (such as unshare -n ...) when given."""
        proc = subprocess.Popen([*prefix, sys.executable, str(HERE / "load.py"), *map(str, args)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"load.py {args} did not start")
        self.procs.append(proc)
        return proc

    def hold(self, processes: int, pairs_each: int, seconds: float = 3600, prefix: tuple = ()) -> None:
        for _ in range(processes):
            self.start("hold", pairs_each, "--seconds", seconds, prefix=prefix)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                stop_process(proc)
        self.procs.clear()


def stop_process(proc: subprocess.Popen) -> None:
    """End a helper that runs until its stdin closes; kill it when it has not within 10 s."""
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("hold")
    h.add_argument("pairs", type=int)
    h.add_argument("--seconds", type=float, default=3600)
    c = sub.add_parser("churn")
    c.add_argument("--rate", type=float, required=True)
    c.add_argument("--lifetimes", default="0.2")
    c.add_argument("--seconds", type=float, required=True)
    c.add_argument("--record")
    c.add_argument("--close", choices=("reset", "normal"), default="reset",
                   help="reset: RST, no TIME_WAIT (default); normal: FIN, the client keeps a TIME_WAIT")
    u = sub.add_parser("udp")
    u.add_argument("--rate", type=float, required=True)
    u.add_argument("--seconds", type=float, required=True)
    u.add_argument("--dns", action="store_true")
    f = sub.add_parser("flood")
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--seconds", type=float, default=60)
    f.add_argument("--listeners", type=int, default=1, help="listeners on ports of their own, connected to in turn")
    args = parser.parse_args()
    if args.command == "flood":
        flood(args.host, args.count, args.seconds, args.listeners)
    elif args.command == "udp":
        udp(args.rate, args.seconds, args.dns)
    elif args.command == "hold":
        hold(args.pairs, args.seconds)
    else:
        churn(args.rate, [float(x) for x in args.lifetimes.split(",")], args.seconds, args.record,
              args.close == "reset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
