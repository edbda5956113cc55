"""Kernel events: tracepoints read through perf_event_open, each CPU's ring read in place.
The oracle for who connected is the client's own record of its pid and port, printed by
the client; never lognet's. Traffic stays on loopback."""

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import lognet
from conftest import LOGNET, data_lines, events_refused, require_root, require_tool, w3c_rows, wait_for

SET_STATE = "sock/inet_sock_set_state"
# This kernel's format file (Linux 6.18), as tracefs writes it; others may move the fields.
SET_STATE_FORMAT = """name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: "family=%s protocol=%s sport=%hu dport=%hu", REC->family, REC->protocol, REC->sport, REC->dport
"""
CLIENT = "import os, socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); " \
         "print(os.getpid(), s.getsockname()[1])"


def test_a_format_file_gives_the_id_and_each_fields_place():
    tracepoint = lognet.parse_tracepoint_format(SET_STATE, SET_STATE_FORMAT)
    assert tracepoint.id == 2287
    assert (tracepoint.fields["skaddr"], tracepoint.fields["oldstate"], tracepoint.fields["sport"],
            tracepoint.fields["saddr"], tracepoint.fields["daddr_v6"]) == ((8, 8), (16, 4), (24, 2), (32, 4), (56, 16))
    with pytest.raises(ValueError):
        lognet.parse_tracepoint_format(SET_STATE, "name: x\nformat:\n")


def mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split(" - ")[0].split(" ", 4)[4] for line in f]  # mount points and options, without ids


def test_tracefs_is_read_where_it_is_not_mounted_and_the_mounts_stay_as_they_were():
    require_root("mounting tracefs in a mount namespace of its own")
    before = mounts()
    tracepoint = lognet.tracepoints([SET_STATE])[SET_STATE]
    assert mounts() == before
    assert set(tracepoint.fields) >= {"skaddr", "oldstate", "newstate", "sport", "dport", "family", "saddr",
                                      "daddr", "saddr_v6", "daddr_v6"}
    with pytest.raises(OSError):
        lognet.tracepoints(["sock/no_such_event"])


@pytest.fixture
def set_state():
    require_root("tracepoint samples with their raw records")
    tracepoint = lognet.tracepoints([SET_STATE])[SET_STATE]
    yield tracepoint


def connect(port: int, count: int = 1) -> list[tuple[int, int]]:
    """Clients that each connect once to port and print their pid and local port: (pid, port) each."""
    found = []
    for _ in range(count):
        out = subprocess.run([sys.executable, "-c", CLIENT, str(port)], capture_output=True, text=True, timeout=30)
        pid, local = out.stdout.split()
        found.append((int(pid), int(local)))
    return found


def test_a_connect_is_named_with_the_pid_of_the_process_that_made_it(set_state):
    ring = lognet.TracepointRing(set_state, "protocol == 6")
    owners = lognet.KernelOwners()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        clients = connect(port, 3)
        states = [lognet.decode_sock_state(set_state, *sample) for sample in ring.samples()]
    ring.close()
    for state in states:
        owners.learn(state)
    for pid, local in clients:
        # ESTABLISHED, with the client's port; before it, SYN_SENT of the same socket (skaddr),
        # in the client's context, its port not chosen yet
        at = next(i for i, s in enumerate(states) if s.laddr == ("127.0.0.1", local) and s.newstate == 1)
        connected = [s for s in states[:at] if s.skaddr == states[at].skaddr][-1]
        assert (connected.pid, connected.oldstate, connected.newstate, connected.laddr, connected.raddr) == (
            pid, 7, 2, (), ("127.0.0.1", port))
        client = lognet.Connection(-1, socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", local), ("127.0.0.1", port),
                                   "ESTABLISHED", None)
        assert owners.owner(client).pid == pid
    assert ring.lost == 0


def test_the_kernel_filters_and_a_full_ring_counts_what_it_lost(set_state):
    """One page of ring per CPU, read after 30 connects and again after 200 more: the second
    read crosses the ring's end; the ring overflows, and every connect is either a sample or
    counted lost. The filter keeps only SYN_SENT to the test's listener, one sample a connect."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)
    port = listener.getsockname()[1]
    # only this listener's SYN_SENT: whatever else the host connects to, now, never reaches the ring
    ring = lognet.TracepointRing(set_state, f"newstate == 2 && dport == {port}", pages=1)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # every connect on one CPU, into one ring: it overflows, and says so
    try:
        with listener:
            clients = [socket.socket() for _ in range(30)]
            for client in clients:
                client.connect(listener.getsockname())
            first = ring.samples()
            for _ in range(200):
                with socket.create_connection(listener.getsockname()):
                    listener.accept()[0].close()
            second = ring.samples()
            # the kernel says how many it lost once it has room again: at the next sample
            with socket.create_connection(listener.getsockname()):
                listener.accept()[0].close()
            third = ring.samples()
            for client in clients:
                client.close()
    finally:
        os.sched_setaffinity(0, cpus)
        ring.close()
    states = [lognet.decode_sock_state(set_state, *sample) for sample in first + second + third]
    ours = [s for s in states if s.raddr == ("127.0.0.1", port)]
    assert len(first) == 30 and all(s.pid == os.getpid() and (s.oldstate, s.newstate) == (7, 2) for s in ours)
    assert len(ours) == len(states) and ring.lost > 0 and len(ours) + ring.lost == 231


def test_an_isolated_groups_connects_are_left_out_in_the_kernel_and_others_still_named(set_state):
    """KernelEvents without an isolated flood group's samples (its end's address and port):
    the connects to another port go on being named, those to the group's are never sampled."""
    events = lognet.KernelEvents([(socket.AF_INET, socket.IPPROTO_TCP)])
    try:
        with socket.create_server(("127.0.0.1", 0)) as flooded, socket.create_server(("127.0.0.1", 0)) as other:
            group = lognet.FloodGroup(None, socket.AF_INET, socket.inet_aton("127.0.0.1"), flooded.getsockname()[1])
            events.exclude(group.trace_clause())
            made = {port: connect(port, 3) for port in (flooded.getsockname()[1], other.getsockname()[1])}
            events.take()
    finally:
        events.close()
    for port, clients in made.items():
        for pid, local in clients:
            client = lognet.Connection(-1, socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", local),
                                       ("127.0.0.1", port), "ESTABLISHED", None)
            assert events.owner(client) == (None if port == group.port else pid)
    assert events.lost == 0


def test_a_rings_records_are_its_samples_decoded_by_stride_or_one_by_one(set_state):
    """Two rings of one page on one CPU, with one filter, see the same connects: one read
    sample by sample, the other as records() of the state changes' fields. Their records
    agree while all are samples of one size (read by stride), and once the rings overflow and a
    lost record is among them (read one by one)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)
    port = listener.getsockname()[1]
    layout = set_state.layout(lognet.SOCK_STATE_FIELDS)
    one_by_one, by_record = (lognet.TracepointRing(set_state, f"newstate == 2 && dport == {port}", pages=1)
                             for _ in range(2))
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    reads = []
    try:
        with listener:
            for connects in (30, 200, 1):
                for _ in range(connects):
                    with socket.create_connection(listener.getsockname()):
                        listener.accept()[0].close()
                samples = one_by_one.samples()
                reads.append(([(pid, time_ns, *layout.unpack_from(raw)) for time_ns, pid, raw in samples],
                              sorted(by_record.records(layout), key=lambda record: record[1])))
    finally:
        os.sched_setaffinity(0, cpus)
        one_by_one.close()
        by_record.close()
    first = reads[0][0]
    # (pid, time, skaddr, oldstate, newstate, sport, dport, ...)
    assert len(first) == 30 and all(record[0] == os.getpid() and record[4:7:2] == (2, port) for record in first)
    for expected, records in reads:  # each ring times its own samples
        assert [record[:1] + record[2:] for record in records] == [record[:1] + record[2:] for record in expected]
    assert one_by_one.lost > 0 and by_record.lost == one_by_one.lost


# ---------------------------------------------------------------- lognet with the kernel's events, as root

FIELDS = ("--fields", "+event,attrib,direction,firstseen,txbytes,rxbytes")


def lognet_at_defaults(background, marker, *args):
    """lognet as root at its defaults (-i 3, the kernel's events on), past its first poll."""
    require_root("the kernel's tracepoint events")
    ln = background("-p", "tcp", *FIELDS, *args)
    ln.wait_for_poll(marker)
    return ln


def rows_between(clog, local: int, remote: int) -> list[dict]:
    return [r for r in w3c_rows(clog) if (r["lport"], r["rport"]) == (str(local), str(remote))]


def test_short_lived_clients_are_named_with_their_own_pid_and_command_line(background, marker):
    """Ten one-shot clients, each a process of a few ms that prints its own pid and local
    port (the oracle): each connection's one line names that pid, and processes.log has
    the command line of most (read while the process lived)."""
    ln = lognet_at_defaults(background, marker)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        clients = connect(port, 10)
    for _, local in clients:
        wait_for(lambda local=local: rows_between(ln.clog, local, port))
    assert ln.stop() == 0
    for pid, local in clients:
        rows = rows_between(ln.clog, local, port)
        assert [(r["event"], r["attrib"], r["direction"]) for r in rows] == [("close", "kernel", "out")]
        assert rows[0]["upid"].split("|")[1] == str(pid)  # the kernel's word; the name is read while it lives
    command_lines = [line for line in data_lines(ln.plog) if "create_connection" in line]
    assert {line.split(" ")[1].split("|")[1] for line in command_lines} <= {str(pid) for pid, _ in clients}
    assert len(command_lines) >= 5  # the rest exited before their details could be read (see the benchmark)
    assert "owners from kernel events on" in data_or_remarks(ln.clog)[-1]
    assert ln.stderr == ""


def data_or_remarks(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith(("#Version", "#Date", "#Fields"))]


def test_curl_is_named_with_its_pid_and_local_port(background, marker):
    """curl's own record: its pid (it is the process subprocess started) and its local port
    (%{local_port}); each request a connection of about 2 ms, to a loopback web server."""
    require_tool("curl", "curl")
    ln = lognet_at_defaults(background, marker)
    # -u: its "Serving HTTP on ... port N" line is written at once, not when a buffer fills
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert select.select([server.stdout], [], [], 30)[0], "the web server never said its port"
        port = int(server.stdout.readline().split(" port ")[1].split(" ")[0])
        runs = []
        for _ in range(5):
            curl = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{local_port}",
                                     f"http://127.0.0.1:{port}/lnkernelcurl"], stdout=subprocess.PIPE, text=True)
            out, _ = curl.communicate(timeout=30)
            assert curl.returncode == 0
            runs.append((curl.pid, int(out)))
        for _, local in runs:
            wait_for(lambda local=local: rows_between(ln.clog, local, port) and rows_between(ln.clog, port, local))
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert ln.stop() == 0
    for pid, local in runs:
        out = rows_between(ln.clog, local, port)
        # the pid is the kernel's word; the name is read while curl lives, which a 10 ms process may not
        assert [(r["upid"].split("|")[1], r["attrib"], r["direction"]) for r in out] == [
            (str(pid), "kernel", "out")]
        assert int(out[0]["txbytes"]) > 0 and int(out[0]["rxbytes"]) > 0
        # the server's end: accepted, named by the server's own close, in its context
        served = rows_between(ln.clog, port, local)
        assert [(r["upid"].split("|")[1], r["attrib"], r["direction"]) for r in served] == [
            (str(server.pid), "kernel", "in")]


PREFORK_SERVER = textwrap.dedent(r"""
    import os, socket, sys
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    print(listener.getsockname()[1], flush=True)
    log = sys.argv[1]
    for _ in range(2):
        if os.fork() == 0:
            while True:
                conn, peer = listener.accept()
                with open(log, "a") as f:  # the server's own log: which worker accepted which peer port
                    f.write(f"{os.getpid()} {peer[1]}\n")
                conn.recv(100)
                conn.sendall(b"lnprefork")
                conn.close()
    os.wait()
""")


def test_each_accepted_connection_names_the_worker_that_accepted_it(background, marker, tmp_path):
    """A prefork server, two workers on one listener, logs which worker accepted each peer
    port (the oracle): each accepted connection's line names that worker."""
    ln = lognet_at_defaults(background, marker)
    served = tmp_path / "served.log"
    server = subprocess.Popen([sys.executable, "-c", PREFORK_SERVER, str(served), "lnprefork"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = int(server.stdout.readline())
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(b"x")
                assert client.recv(100) == b"lnprefork"
        wait_for(lambda: served.exists() and len(served.read_text().splitlines()) == 20)
        accepted = [line.split() for line in served.read_text().splitlines()]
        for _, peer in accepted:
            wait_for(lambda peer=peer: rows_between(ln.clog, port, peer))
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        server.wait(timeout=10)
    assert ln.stop() == 0
    for worker, peer in accepted:
        rows = rows_between(ln.clog, port, peer)
        assert [(r["upid"].split("|")[1], r["direction"]) for r in rows] == [(worker, "in")], peer


UDP_CLIENT = "import os, socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
             "s.sendto(b'lnudpclient', ('127.0.0.1', int(os.sys.argv[1]))); print(os.getpid(), s.getsockname()[1])"


def test_one_shot_udp_senders_are_named_with_their_pid(background, marker):
    """Five one-shot UDP clients (sendto, no connect), each printing its pid and port."""
    require_root("the kernel's tracepoint events")
    ln = background("-p", "udp", *FIELDS)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        ln.wait_for_line(f" 127.0.0.1 {port} - - NONE ")
        clients = []
        for _ in range(5):
            out = subprocess.run([sys.executable, "-c", UDP_CLIENT, str(port)], capture_output=True, text=True,
                                 timeout=30)
            clients.append(tuple(int(x) for x in out.stdout.split()))
        for _, local in clients:
            wait_for(lambda local=local: [r for r in w3c_rows(ln.clog) if r["lport"] == str(local)])
    assert ln.stop() == 0
    for pid, local in clients:
        rows = [r for r in w3c_rows(ln.clog) if r["lport"] == str(local)]
        assert [(r["upid"].split("|")[:2], r["attrib"], r["event"]) for r in rows] == [
            (["python3", str(pid)], "kernel", "close")]


def test_kernel_events_off_leaves_the_owners_to_polling(background, marker):
    """--kernel-events off: a 5 ms connection is the kernel's close alone, unnamed, as before."""
    require_root("a run whose events would otherwise be on")
    ln = background("-p", "tcp", "--watch", "0", *FIELDS, "--kernel-events", "off", "--stats-interval", "600")
    ln.wait_for_poll(marker)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        (pid, local), = connect(port, 1)
        wait_for(lambda local=local: rows_between(ln.clog, local, port))
    assert ln.stop() == 0
    assert [(r["upid"], r["attrib"]) for r in rows_between(ln.clog, local, port)] == [("-", "unseen")]
    assert data_or_remarks(ln.clog)[-1].endswith("; owners from kernel events off: turned off (--kernel-events off)")


def test_kernel_events_on_without_the_privileges_is_one_line_and_exit_1(nobody):
    home = nobody.home
    result = subprocess.run(nobody.lognet("-n", "1", "--kernel-events", "on", "-clog", home / "c.log",
                                          "-plog", home / "p.log"), capture_output=True, text=True, timeout=60)
    reason = events_refused().split("available (", 1)[1].split("); the owners")[0]
    assert (result.returncode, result.stderr) == (1, f"lognet: error: kernel events are not available: {reason}\n")


def test_while_the_events_name_the_owners_the_watcher_looks_at_the_slower_pace_unless_shedding():
    """Sockets coming and going, the events covering them: a look every WATCH_COVERED (they
    wait in their rings); while shedding for the budget, every WATCH_QUIET, as without them."""
    require_root("the kernel's tracepoint events")
    budget = lognet.CpuBudget(10)
    source = lognet.NetlinkSource("tcp", kernel_events="on", budget=budget)
    try:
        source.connections()
        watcher = lognet.Watcher(source, 0.02, budget)
        watcher.moved_at = time.monotonic()  # sockets are opening: not quiet
        assert source.events_cover and watcher.next_look() == lognet.WATCH_COVERED
        budget.hold(lognet.SHED_WATCHER)
        assert watcher.next_look() == lognet.WATCH_QUIET
    finally:
        source.close()


class EventsCoverSource:
    """What Watcher reads of a source whose kernel events name the owners, each look reading
    `read` close events: for the pace's pure logic."""

    events_cover = True

    def __init__(self, read: int):
        self.read = read

    def watch(self, heard=None, dumps=True) -> lognet.Look:
        return lognet.Look(True, 0.0, self.read)


@pytest.mark.parametrize("rate, pace", [(lognet.WATCH_BUSY_RATE * 2, lognet.WATCH_QUIET),
                                        (lognet.WATCH_BUSY_RATE / 2, lognet.WATCH_COVERED)])
def test_close_events_at_a_floods_rate_bring_the_busy_pace_back(rate, pace):
    """Close events at WATCH_BUSY_RATE a second or more: looks every WATCH_QUIET, before their
    buffer fills; fewer: every WATCH_COVERED."""
    clock = [100.0]
    source = EventsCoverSource(int(rate * 0.5))
    watcher = lognet.Watcher(source, 0.02, clock=lambda: clock[0])
    clock[0] += 0.5  # half a second since the last look
    watcher.look()
    assert watcher.next_look() == pace


QUIET_WAKE_SCRIPT = """
import socket, sys, time
sys.path.insert(0, sys.argv[1])
import lognet
source = lognet.NetlinkSource("tcp", namespaces=False, kernel_events="on")
source.connections()
source.between_polls()
watcher = lognet.Watcher(source, 0.02)
looks = []  # whether the watcher was quiet at each look: after a quiet one, its next is WATCH_IDLE away
watch = source.watch
source.watch = lambda *args, **kwargs: looks.append(watcher.quiet()) or watch(*args, **kwargs)
listener = socket.create_server(("127.0.0.1", 0))
watcher.start()
deadline = time.monotonic() + 10
while not (looks and looks[-1]) and time.monotonic() < deadline:
    time.sleep(0.05)
clients = [socket.create_connection(listener.getsockname()) for _ in range(20)]  # each connect rings a doorbell
servers = [listener.accept()[0] for _ in clients]
time.sleep(0.3)  # held open, so that the doorbells wake the watcher before any close
for sock in clients + servers:
    sock.close()
closed = time.monotonic()
while source.close_events.read < 40 and time.monotonic() < closed + lognet.WATCH_IDLE + 5:
    time.sleep(0.01)
print(any(looks), source.close_events.read, round(time.monotonic() - closed, 1))
watcher.stop()
source.close()
"""


def test_a_quiet_watcher_woken_by_connects_reads_the_closes_that_follow_at_the_busy_pace():
    """Quiet, the watcher looks every WATCH_IDLE; connects ring its doorbells (kernel events),
    and sockets are moving again: the closes that follow, whose events no longer wake it,
    are read at the busy pace, not at the next idle look. In a namespace of its own: quiet."""
    require_root("the kernel's tracepoint events, and unshare -n")
    result = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
                             "-c", QUIET_WAKE_SCRIPT, str(LOGNET.parent)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    was_quiet, read, seconds = result.stdout.split()
    assert (was_quiet, read) == ("True", "40")
    assert float(seconds) < lognet.WATCH_IDLE / 2  # a look at the busy pace (0.5 s), not the next idle one


def test_under_a_flood_the_events_stop_in_the_kernel_with_the_watcher_and_come_back():
    """The budget at the watcher's step: the events are disabled in the kernel (a connect
    then samples nothing), the watcher waits on none of them, and the remark says paused;
    below it, they are on again."""
    require_root("the kernel's tracepoint events")
    budget = lognet.CpuBudget(10)
    source = lognet.NetlinkSource("tcp", kernel_events="on", budget=budget)
    try:
        source.connections()
        budget.hold(lognet.SHED_WATCHER, floor=lognet.SHED_WATCHER)
        source.watch()
        assert (source.owner_events(), source.urgent_fds(), source.events_cover) == (("paused", 0), [], False)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            connect(listener.getsockname()[1], 1)
        assert source.kernel_events.take() == set()  # nothing was sampled while paused
        budget.hold(0)
        source.watch()
        assert source.owner_events() == ("on", 0) and source.urgent_fds() and source.events_cover
        with socket.create_server(("127.0.0.1", 0)) as listener:
            (pid, _), = connect(listener.getsockname()[1], 1)
        assert pid in source.kernel_events.take()
    finally:
        source.close()


def test_a_busy_thread_no_longer_rings_the_doorbell_and_its_connects_are_still_named():
    """A thread that connects again and again is filtered out of the doorbell in the kernel
    (no wake-up for each connect), and its connects still reach the ring that records them;
    another process's connect still rings at once."""
    require_root("the kernel's tracepoint events")
    import threading
    events = lognet.KernelEvents([(socket.AF_INET, socket.IPPROTO_TCP)])
    bells = lambda: [fd for ring, _ in events.doorbells for fd in ring.fds]  # noqa: E731
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            for _ in range(lognet.DOORBELL_RINGS):
                socket.create_connection(("127.0.0.1", port)).close()
                listener.accept()[0].close()
            assert os.getpid() in events.take()
            assert threading.get_native_id() in events.muted
            with socket.create_connection(("127.0.0.1", port)) as mine:
                listener.accept()[0].close()
                assert select.select(bells(), [], [], 0.5)[0] == []  # the doorbell stayed silent
                assert os.getpid() in events.take()
                client = lognet.Connection(-1, socket.AF_INET, socket.SOCK_STREAM, mine.getsockname(),
                                           mine.getpeername(), "ESTABLISHED", None)
                assert events.owner(client) == os.getpid()
            (pid, _), = connect(port, 1)
            listener.accept()[0].close()
            assert select.select(bells(), [], [], 5)[0]  # another process's connect rang
            assert pid in events.take()
    finally:
        events.close()


UDP_SENDER = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
    sender.bind(("127.0.0.1", 0))
    sender.sendto(b"lnsender", ("127.0.0.1", 9))  # this namespace's own loopback
    print(sender.getsockname()[1], flush=True)
    sys.stdin.readline()
"""


def test_a_udp_sender_is_the_asker_of_its_port_in_its_own_namespace_only():
    """A route's sample says who sent from a port, not in which namespace: a DNS answer to
    that port in another namespace is not that sender's."""
    require_root("the kernel's tracepoint events, and unshare -n")
    events = lognet.KernelEvents(lognet.kind_sockets("udp"))
    sender = subprocess.Popen(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                               sys.executable, "-c", UDP_SENDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        port = int(sender.stdout.readline())
        assert sender.pid in events.take()
        assert events.sender(lognet.netns_inode(sender.pid), port) == sender.pid
        assert events.sender(lognet.netns_inode(), port) is None
        assert events.sender(lognet.netns_inode(sender.pid), port + 1 if port < 65535 else port - 1) is None
    finally:
        sender.communicate("", timeout=30)
        events.close()


ONE_SEND = ("import os, socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.bind(('127.0.0.1', int(sys.argv[1]))); s.sendto(b'lnsender', ('127.0.0.1', 9)); print(os.getpid())")


def test_an_answer_goes_to_the_sender_before_it_when_a_port_passes_to_another_process():
    """One process sends from a port and exits, another sends from the same port: an answer
    that came between the two was the first one's."""
    require_root("the kernel's tracepoint events")
    events = lognet.KernelEvents(lognet.kind_sockets("udp"))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        moments, pids = [time.time()], []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", ONE_SEND, str(port)], capture_output=True, text=True,
                                 timeout=30, check=True)
            pids.append(int(out.stdout))
            moments.append(time.time())
        assert set(pids) <= events.take()
        netns = lognet.netns_inode()
        assert [events.sender(netns, port, moment) for moment in moments] == [None, *pids]
        assert events.sender(netns, port) == pids[1]
    finally:
        events.close()
