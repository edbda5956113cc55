"""Names for remote addresses (rhost), read from the DNS answers a namespace receives.

The integration tests make a network and mount namespace of their own (unshare -n -m):
lo up with the test addresses 192.0.2.10-12 on it, a DNS responder on its 127.0.0.1:53,
and a resolv.conf bind-mounted over /etc/resolv.conf that points there. lognet runs on
the host and joins that namespace, as it joins a container's. Every packet stays on the
namespace's loopback.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dns_responder import answer, encode_name, malformed, record, resolve
from load import stop_process

import lognet
from conftest import Lognet, require_root, require_tool, upid_of, w3c_rows, wait_for

RESPONDER = Path(__file__).resolve().parent / "dns_responder.py"
ZONE = {"site.test": ["CNAME", "edge.cdn.test"], "edge.cdn.test": ["A", "192.0.2.10"],
        "other.test": ["A", "192.0.2.10"], "v6.test": ["AAAA", "2001:db8::10"],
        "bad-cut.test": ["BAD", "truncated"], "bad-loop.test": ["BAD", "loop"], "bad-newline.test": ["BAD", "newline"]}
SETUP = ('ip link set lo up && for n in 10 11 12; do ip addr add 192.0.2.$n/32 dev lo; done && '
         'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"')
PORT = 8080
# Resolves argv[1] (or, where that fails, takes argv[2] as the address), then connects when told.
CLIENT = """
import socket, sys
try:
    address = socket.getaddrinfo(sys.argv[1], 8080, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
except socket.gaierror:
    address = sys.argv[2]
print(address, flush=True)
sys.stdin.readline()
s = socket.create_connection((address, 8080))
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
"""
LISTENER = """
import select, socket, sys
server = socket.create_server(("0.0.0.0", 8080))
print("ready", flush=True)
held = []
for _ in range(1000):
    if sys.stdin in select.select([server, sys.stdin], [], [], 60)[0]:
        break
    held.append(server.accept()[0])
"""
EVIL = "evil\\0102026-01-01|00:00:00\\032x|y.cdn.test"  # as decode_dns_answer presents the hostile name


# ---------------------------------------------------------------- the decoder: pure, on built messages

def question(name: str, qtype: int = 1) -> bytes:
    return encode_name(name) + struct.pack("!HH", qtype, 1)


def test_a_cname_chain_names_the_address_by_the_name_asked():
    message = answer(1, question("site.test"), resolve(ZONE, "site.test", 1))
    assert lognet.decode_dns_answer(message) == ("site.test", [("192.0.2.10", 60)])
    message = answer(1, question("v6.test", 28), resolve(ZONE, "v6.test", 28))
    assert lognet.decode_dns_answer(message) == ("v6.test", [("2001:db8::10", 60)])


OFF_THE_CHAIN = [record(encode_name("unrelated.test"), 1, bytes([192, 0, 2, 99])),  # not the name asked
                 record(b"\xc0\x0c", 16, b"\x03txt"),  # TXT
                 record(b"\xc0\x0c", 1, bytes([192, 0, 2, 10]), ttl=5)]


def test_records_off_the_chain_and_other_types_name_nothing():
    message = answer(1, question("site.test"), OFF_THE_CHAIN)
    assert lognet.decode_dns_answer(message) == ("site.test", [("192.0.2.10", 5)])
    # as an answer arrives, its addresses are read, not its names: the name is judged when asked for
    assert lognet.dns_answer_addresses(message) == (message, [("192.0.2.99", 60), ("192.0.2.10", 5)])
    names = lognet.NameCache()
    names.add(lognet.Answer(1, 40000, *lognet.dns_answer_addresses(message)), None, now=0)
    assert names.name(1, None, "192.0.2.99", now=1) is None
    assert names.name(1, None, "192.0.2.10", now=1) == "site.test"
    assert names.name(1, None, "192.0.2.10", now=2) == "site.test"  # read once, kept in its place


def test_an_answer_is_kept_without_what_follows_its_answer_section():
    message = answer(1, question("site.test"), resolve(ZONE, "site.test", 1))
    kept, addresses = lognet.dns_answer_addresses(message + b"\x00" * 300)  # (as if) other sections
    assert kept == message and addresses == [("192.0.2.10", 60)]


@pytest.mark.parametrize("message", [
    answer(1, question("site.test"), resolve(ZONE, "site.test", 1), flags=0x0100),  # a question, not an answer
    answer(1, question("site.test"), [], flags=0x8183),  # NXDOMAIN
    malformed("truncated", 1, question("x.test")),
    malformed("loop", 1, question("x.test")),
    answer(1, encode_name("a" * 64 + ".test") + b"\x00\x01\x00\x01", []),  # a label over 63 bytes
    answer(1, b"".join([b"\x3f" + b"a" * 63] * 4) + b"\x00\x00\x01\x00\x01", []),  # a name over 255 bytes
    answer(1, b"\xc0\x20\x00\x01\x00\x01", []),  # a pointer forward
    b"\x00\x01\x81\x80",
    b"",
], ids=["query", "nxdomain", "truncated", "pointer-loop", "long-label", "long-name", "forward-pointer", "short",
        "empty"])
def test_what_is_not_a_usable_answer_is_none(message):
    assert lognet.decode_dns_answer(message) is None


def test_a_label_cannot_forge_a_field_or_a_line():
    name, addresses = lognet.decode_dns_answer(malformed("newline", 1, question("bad-newline.test")))
    assert (name, addresses) == (EVIL, [("192.0.2.12", 60)])
    assert lognet.decode_dns_answer(answer(1, encode_name(b"a.b\x00c") + b"\x00\x01\x00\x01", [
        record(b"\xc0\x0c", 1, bytes([192, 0, 2, 1]))]))[0] == "a\\.b.c"  # a dot inside a label
    assert lognet.decode_dns_answer(answer(1, encode_name(b"a,b\x00test") + b"\x00\x01\x00\x01", [
        record(b"\xc0\x0c", 1, bytes([192, 0, 2, 1]))]))[0] == "a\\,b.test"  # not two names of a list
    field = lognet.escape_field(name)
    assert " " not in field and "|" not in field and field.isprintable()


def test_the_decoder_survives_random_and_mutated_messages():
    rng = random.Random(1795763232)
    seeds = [answer(7, question(name, qtype), resolve(ZONE, name, qtype))
             for name, qtype in (("site.test", 1), ("other.test", 1), ("v6.test", 28))]
    seeds += [malformed(kind, 7, question("x.test")) for kind in ("truncated", "loop", "newline")]
    decoded = 0
    for n in range(30_000):
        if n % 3 == 0:
            message = bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
        else:
            message = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                at = rng.randrange(len(message))
                message[at] = rng.getrandbits(8) if rng.random() < 0.8 else 0xC0
            message = bytes(message[:rng.randrange(len(message) + 1)] if rng.random() < 0.3 else message)
        result, found = lognet.decode_dns_answer(message), lognet.dns_answer_addresses(message)
        if found is not None:
            assert all(isinstance(ip, str) and 0 <= ttl <= 0x7FFFFFFF for ip, ttl in found[1])
        if result is not None:
            decoded += 1
            name, addresses = result
            assert name.isascii() and name.isprintable() and " " not in name
            assert all(isinstance(ip, str) and 0 <= ttl <= 0x7FFFFFFF for ip, ttl in addresses)
            # what the name is read from holds every address it names: none is lost as it arrives
            assert found is not None and set(addresses) <= set(found[1])
            assert lognet.decode_dns_answer(found[0]) == result
    assert decoded > 100  # the mutations left some answers whole: the decoder was not just refusing


# ---------------------------------------------------------------- the name cache: pure

def an_answer(name, *addresses, netns=1, ttl=60):
    """An Answer as the tap makes one, from an answer to `name` with an A or AAAA record for each address."""
    records = [record(b"\xc0\x0c", 28, socket.inet_pton(socket.AF_INET6, a), ttl) if ":" in a
               else record(b"\xc0\x0c", 1, socket.inet_aton(a), ttl) for a in addresses]
    return lognet.Answer(netns, 40000, *lognet.dns_answer_addresses(answer(1, question(name), records)))


def test_a_process_gets_the_name_it_asked_for_and_others_every_name_of_the_address():
    names = lognet.NameCache()
    names.add(an_answer("site.test", "192.0.2.10"), 100, now=0)
    names.add(an_answer("other.test", "192.0.2.10"), 200, now=1)
    names.add(an_answer("other.test", "192.0.2.10"), None, now=1)  # asked again, by a socket never seen
    names.add(an_answer("solo.test", "192.0.2.11"), None, now=1)
    assert names.name(1, 100, "192.0.2.10", now=2) == "site.test"
    assert names.name(1, 200, "192.0.2.10", now=2) == "other.test"
    # it asked for nothing: not a guess between the two names, both; and the one name of an address
    assert names.name(1, 300, "192.0.2.10", now=2) == "other.test,site.test"
    assert names.name(1, 300, "192.0.2.11", now=2) == "solo.test"
    assert names.name(2, 100, "192.0.2.10", now=2) is None  # another namespace's answers are its own
    assert names.name(1, 100, "::ffff:192.0.2.10", now=2) == "site.test"  # IPv4-mapped


def test_an_address_lists_its_latest_names_while_they_live():
    names = lognet.NameCache(floor=10)
    for n in range(6):
        names.add(an_answer(f"n{n}.test", "192.0.2.10", ttl=1), None, now=n)
    assert names.name(1, None, "192.0.2.10", now=9.5) == "n2.test,n3.test,n4.test,n5.test"  # the latest 4
    assert names.name(1, None, "192.0.2.10", now=13.5) == "n4.test,n5.test"  # the others' time is up
    assert names.name(1, None, "192.0.2.10", now=16) is None


def test_names_last_their_ttl_with_a_floor_and_the_latest_are_kept():
    names = lognet.NameCache(kept=3, floor=100)
    names.add(an_answer("short.test", "192.0.2.1", ttl=5), None, now=0)
    names.add(an_answer("long.test", "192.0.2.2", ttl=1000), None, now=0)
    assert names.name(1, None, "192.0.2.1", now=99) == "short.test"  # past its TTL, within the floor
    assert names.name(1, None, "192.0.2.1", now=101) is None
    assert names.name(1, None, "192.0.2.2", now=999) == "long.test"
    for n in range(3, 8):
        names.add(an_answer(f"n{n}.test", f"192.0.2.{n}"), None, now=0)
    assert len(names.recent) == 3 and names.name(1, None, "192.0.2.2", now=1) is None


# ---------------------------------------------------------------- the kernel's filter, on real packets

TAP_COUNT = """
import json, socket, struct, sys, time
sys.path[:0] = sys.argv[1:3]
import lognet
from dns_responder import answer, encode_name, record
tap = lognet.DnsTap()
for n in range(200):  # other traffic: what looks like an answer, to and from other ports
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.sendto(answer(n, encode_name("x.test") + b"\\x00\\x01\\x00\\x01", []), ("127.0.0.1", 9999))
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", 53))  # and DNS questions from port 53
asker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
asker.bind(("127.0.0.1", 0))
question = encode_name("site.test") + struct.pack("!HH", 1, 1)
for n in range(200):
    server.sendto(answer(n, question, [], flags=0x0100), asker.getsockname())
asker.sendto(answer(9, question, [], flags=0x0100), ("127.0.0.1", 53))  # a question this host sends
for n in range(3):
    server.sendto(answer(n, question, [record(b"\\xc0\\x0c", 1, bytes([192, 0, 2, 10]))]), asker.getsockname())
time.sleep(0.2)
print(json.dumps({role: sum(1 for _ in ring.packets())
                  for role, ring in (("answers", tap.answer_ring), ("questions", tap.question_ring))}))
"""


def in_new_netns(*command) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command],
                          capture_output=True, text=True, timeout=60)


def test_only_the_dns_answers_the_namespace_received_reach_the_tap():
    require_root("unshare -n, and a packet socket (CAP_NET_RAW)")
    tests = Path(__file__).resolve().parent
    result = in_new_netns(sys.executable, "-c", TAP_COUNT, str(tests.parent), str(tests))
    assert result.returncode == 0, result.stderr
    # Of 404 packets, each seen twice on lo (sent and received), the 3 answers and the one
    # question sent to port 53, once each.
    assert json.loads(result.stdout) == {"answers": 3, "questions": 1}


# ---------------------------------------------------------------- real resolver traffic in a namespace

class DnsWorld:
    """A network and mount namespace with a DNS responder, test addresses and a listener."""

    def __init__(self, tmp_path: Path, delay: float):
        require_root("unshare -n -m, mount --bind, and setns into the namespace")
        require_tool("nsenter", "util-linux")
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.started: list[subprocess.Popen] = []
        self.responder = self._start(["unshare", "-n", "-m", "sh", "-c", SETUP, "sh", str(resolv), sys.executable,
                                      str(RESPONDER), json.dumps(ZONE), "--delay", str(delay)])
        assert self.responder.stdout.readline() == "ready\n"
        self.listener = self.inside(sys.executable, "-c", LISTENER)
        assert self.listener.stdout.readline() == "ready\n"
        self.netns = lognet.netns_inode(self.responder.pid)

    def _start(self, argv: list[str]) -> subprocess.Popen:
        self.started.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        return self.started[-1]

    def inside(self, *argv) -> subprocess.Popen:
        pid = self.responder.pid
        return self._start(["nsenter", f"--net=/proc/{pid}/ns/net", f"--mount=/proc/{pid}/ns/mnt", *map(str, argv)])

    def resolve(self, name: str, fallback: str = "192.0.2.11") -> tuple[subprocess.Popen, str]:
        """A client that has resolved name (or failed to, and took fallback): it connects when told."""
        client = self.inside(sys.executable, "-c", CLIENT, name, fallback, "lnrhost-client")
        return client, client.stdout.readline().strip()

    @staticmethod
    def connect(client: subprocess.Popen) -> int:
        """Tell a client to connect; its local port."""
        client.stdin.write("go\n")
        client.stdin.flush()
        return int(client.stdout.readline())

    def stop(self) -> None:
        for proc in reversed(self.started):
            stop_process(proc)


@pytest.fixture
def dns_world(tmp_path):
    worlds = []

    def make(delay: float = 0.0) -> DnsWorld:
        worlds.append(DnsWorld(tmp_path, delay))
        return worlds[-1]

    yield make
    for world in worlds:
        world.stop()


def line_of(rows: list[dict], port: int) -> dict:
    ours = [r for r in rows if r["lport"] == str(port) and r["rport"] == str(PORT)]
    assert len(ours) == 1, ours
    return ours[0]


def test_each_process_gets_the_name_it_resolved(tmp_path, dns_world):
    """Without the kernel's events (their askers are test_concurrent_askers_...'s), the
    watcher finds the socket that asks while it waits for its answer."""
    # As a resolver upstream may take (two lognets look for the asker meanwhile, each within
    # its share of two cores): an asker not found gets both names, and the test fails.
    world = dns_world(delay=0.1)
    ln = Lognet(tmp_path, "--fields", "+rhost,netns", "--kernel-events", "off")
    (tmp_path / "jsonl").mkdir()
    jsonl = Lognet(tmp_path / "jsonl", "--format", "jsonl", "--kernel-events", "off")
    try:
        # the namespace is joined, and its tap made, at a poll
        wait_for(lambda: any(r["lport"] == str(PORT) and r["netns"] == str(world.netns) for r in w3c_rows(ln.clog))
                 if ln.clog.exists() else False)
        time.sleep(1.5)  # the watcher has been quiet for a second: the question must wake it
        first, first_address = world.resolve("site.test")  # a CNAME to edge.cdn.test, 192.0.2.10
        second, second_address = world.resolve("other.test")  # the same address, by another name
        unnamed, _ = world.resolve("192.0.2.11")  # a number: no question is asked
        assert first_address == second_address == "192.0.2.10"
        ports = {proc: world.connect(proc) for proc in (first, second, unnamed)}
        wait_for(lambda: all(any(r["lport"] == str(port) for r in w3c_rows(ln.clog)) for port in ports.values()))
        wait_for(lambda: jsonl.clog.exists() and all(f'"lport":{port},' in jsonl.clog.read_text()
                                                     for port in ports.values()))
    finally:
        assert ln.stop() == 0 and jsonl.stop() == 0
    rows = w3c_rows(ln.clog)
    for proc, name in ((first, "site.test"), (second, "other.test"), (unnamed, "-")):
        line = line_of(rows, ports[proc])
        assert (line["upid"].split("|")[1], line["rhost"]) == (str(proc.pid), name)
    objects = [json.loads(text) for text in jsonl.clog.read_text().splitlines()]
    by_port = {o.get("lport"): o for o in objects if o.get("rport") == PORT}
    assert [by_port[ports[proc]]["rhost"] for proc in (first, second, unnamed)] == ["site.test", "other.test", None]
    assert ln.stderr == "" and jsonl.stderr == ""


CONCURRENT_ASKERS = 10


@pytest.mark.parametrize("kernel_events,kinds", [("on", []), ("on", ["-p", "tcp"]), ("off", [])],
                         ids=["on", "on-tcp-only", "off"])
def test_concurrent_askers_of_two_names_for_one_address_each_get_their_own_or_no_guess(
        tmp_path, dns_world, kernel_events, kinds):
    """Ten clients start at once: the even ones resolve site.test, the odd ones other.test,
    both 192.0.2.10, and each connects. With the kernel's events the asker of each answer is
    known, so each line has its own process's name, also where only TCP is logged (the
    askers' UDP is recorded for names); without, a line whose asker was not found lists both
    names, and never carries the other name alone."""
    world = dns_world()
    ln = Lognet(tmp_path, "-i", "0.5", "--fields", "+rhost,netns", "--kernel-events", kernel_events, *kinds)
    try:
        wait_for(lambda: any(r["lport"] == str(PORT) and r["netns"] == str(world.netns) for r in w3c_rows(ln.clog))
                 if ln.clog.exists() else False)
        names = ["site.test" if n % 2 == 0 else "other.test" for n in range(CONCURRENT_ASKERS)]
        clients = [world.inside(sys.executable, "-c", CLIENT, name, "-", "lnrhost-concurrent") for name in names]
        assert [client.stdout.readline().strip() for client in clients] == ["192.0.2.10"] * CONCURRENT_ASKERS
        ports = [world.connect(client) for client in clients]
        wait_for(lambda: all(any(r["lport"] == str(port) for r in w3c_rows(ln.clog)) for port in ports))
    finally:
        assert ln.stop() == 0
    rows = w3c_rows(ln.clog)
    found = [(line_of(rows, port)["upid"].split("|")[1], line_of(rows, port)["rhost"]) for port in ports]
    if kernel_events == "on":
        assert found == [(str(client.pid), name) for client, name in zip(clients, names)]
    else:
        assert all(pid == str(client.pid) and rhost in (name, "other.test,site.test")
                   for (pid, rhost), client, name in zip(found, clients, names)), found
    assert ln.stderr == ""


def test_malformed_answers_leave_lognet_running_and_the_fields_whole(tmp_path, dns_world):
    world = dns_world()
    ln = Lognet(tmp_path, "-i", "0.5", "--fields", "+rhost,netns")
    try:
        wait_for(lambda: any(r["lport"] == str(PORT) and r["netns"] == str(world.netns) for r in w3c_rows(ln.clog))
                 if ln.clog.exists() else False)
        clients = [world.resolve(name, fallback) for name, fallback in (
            ("bad-cut.test", "192.0.2.11"), ("bad-loop.test", "192.0.2.11"), ("bad-newline.test", "192.0.2.12"),
            ("site.test", "-"))]
        assert [address for _, address in clients] == ["192.0.2.11", "192.0.2.11", "192.0.2.12", "192.0.2.10"]
        ports = [world.connect(client) for client, _ in clients]
        wait_for(lambda: all(any(r["lport"] == str(port) for r in w3c_rows(ln.clog)) for port in ports))
        assert ln.proc.poll() is None
    finally:
        assert ln.stop() == 0
    rows = w3c_rows(ln.clog)  # every row has exactly the fields of the header
    assert [line_of(rows, port)["rhost"] for port in ports] == ["-", "-", lognet.escape_field(EVIL), "site.test"]
    assert ln.stderr == ""


def test_without_cap_net_raw_one_warning_and_no_names(tmp_path, holder, nobody):
    require_root("setpriv to run lognet as nobody with two capabilities")
    h = holder("--name", "lnrhostnobody")
    home = nobody.home
    result = subprocess.run(nobody.lognet("-n", "1", "-p", "tcp", "--netns", "own", "--fields", "+rhost",
                                          "-clog", home / "c.log", "-plog", home / "p.log",
                                          caps="+sys_ptrace,+dac_read_search"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("CAP_NET_RAW") == 1 and "Traceback" not in result.stderr
    ours = [r for r in w3c_rows(home / "c.log") if r["upid"] == upid_of(h.pid, "lnrhostnobody")]
    assert len(ours) == 3 and {r["rhost"] for r in ours} == {"-"}
