"""Kernel events: tracepoints read through perf_event_open, each CPU's ring read in place.
The oracle for who connected is the client's own record of its pid and port, printed by
the client; never lognet's. Traffic stays on loopback."""

import os
import socket
import subprocess
import sys

import pytest

import lognet
from conftest import require_root

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
        assert owners.owner(client) == pid
    listening = lognet.Connection(-1, socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port), (), "LISTEN", None)
    assert owners.owner(listening) == os.getpid()  # it listened in this process's context
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
