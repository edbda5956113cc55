"""Every network namespace: sockets in namespaces the tests make themselves (unshare -n,
with lo up), logged with their process, their netns and their container.

Traffic stays on each namespace's own loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lognet
from conftest import events_refused, read_lines, require_root, require_tool, run_lognet, upid_of, w3c_rows, wait_for

PRIVATE_NETNS = ("unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")
PORT = 8123  # the same listener address in each namespace: 127.0.0.1 8123


def netns_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def tcp_lines_of(rows: list[dict], pid: int) -> list[tuple]:
    return sorted((r["lport"], r["rport"], r["status"]) for r in rows if r["upid"].split("|")[1:2] == [str(pid)])


def expected_lines(h) -> list[tuple]:
    port, client = str(h.info["port"]), str(h.info["client_port"])
    return sorted([(port, "-", "LISTEN"), (port, client, "ESTABLISHED"), (client, port, "ESTABLISHED")])


def test_each_namespace_is_logged_with_its_owners_and_netns(tmp_path, holder):
    require_root("unshare -n, and setns into the namespaces it makes")
    inside = [holder("--name", f"lnns{n}", "--port", PORT, prefix=PRIVATE_NETNS) for n in (1, 2)]
    host = holder("--name", "lnnshost")
    clog = tmp_path / "c.log"
    result = run_lognet("-n", "1", "-p", "tcp", "--fields", "+netns,container", "-clog", clog,
                        "-plog", tmp_path / "p.log")
    assert (result.returncode, result.stderr) == (0, "")
    rows = w3c_rows(clog)
    assert read_lines(clog)[3] == f"#Remark: host netns {netns_of(os.getpid())} (lognet's own network namespace)"
    namespaces = {netns_of(h.pid) for h in (*inside, host)}
    assert len(namespaces) == 3  # two of their own, and the host's
    for h, name in ((inside[0], "lnns1"), (inside[1], "lnns2"), (host, "lnnshost")):
        ours = [r for r in rows if r["upid"] == upid_of(h.pid, name)]
        # each of its three sockets once, with its own namespace: the equal addresses of the
        # other namespace's holder are not taken for its own
        assert tcp_lines_of(ours, h.pid) == expected_lines(h)
        assert {(r["netns"], r["container"]) for r in ours} == {(str(netns_of(h.pid)), "-")}
    assert inside[0].info["port"] == inside[1].info["port"] == PORT


@pytest.mark.parametrize("events", ["auto", "off"])
def test_a_short_client_in_a_namespace_is_logged_with_its_process_at_the_defaults(tmp_path, holder, background,
                                                                                  events):
    """At the defaults the kernel's events name the client (root); with them off, the watcher
    finds its socket in its namespace while it lives (150 ms)."""
    require_root("unshare -n and nsenter")
    require_tool("nsenter", "util-linux")
    inside = holder("--name", "lnnsserver", "--port", PORT, prefix=PRIVATE_NETNS)
    ln = background("--fields", "+event,netns", "--stats-interval", "600", "--kernel-events", events)
    ln.wait_for_line(f" 127.0.0.1 {PORT} - - LISTEN {upid_of(inside.pid, 'lnnsserver')} ")  # a poll found the namespace
    client = subprocess.run(["nsenter", f"--net=/proc/{inside.pid}/ns/net", sys.executable, "-c",
                             "import os, socket, struct, time; s = socket.create_connection(('127.0.0.1', 8123)); "
                             "print(os.getpid(), s.getsockname()[1], flush=True); time.sleep(0.15); "
                             "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); "
                             "s.close()",
                             "lnnsclient"], capture_output=True, text=True, timeout=30)
    assert client.returncode == 0, client.stderr
    pid, port = client.stdout.split()
    # the client closed with a reset, so the kernel destroyed its socket at once; and a close in
    # the host's namespace too, so that the coverage has two namespaces
    with socket.create_server(("127.0.0.1", 0)) as listener:
        socket.create_connection(listener.getsockname()).close()
    wait_for(lambda: any(r["lport"] == port for r in w3c_rows(ln.clog)), timeout=15)
    assert ln.stop() == 0
    assert ln.stderr == ""
    # with the events, its one line, the kernel's close, named by them; without, its open and close
    ours = [r for r in w3c_rows(ln.clog) if r["lport"] == port and r["rport"] == str(PORT)]
    assert [r["event"] for r in ours] == (["close"] if events == "auto" else ["open", "close"])
    upid = ours[0]["upid"]
    assert upid.split("|")[1] == pid
    assert [line for line in read_lines(ln.plog) if line.split(" ")[1:2] == [upid] and "'lnnsclient']" in line]
    assert ours[0]["netns"] == str(netns_of(inside.pid))
    remark = read_lines(ln.clog)[-1]
    assert f"; netns {netns_of(inside.pid)}: tcp " in remark and f"; netns {netns_of(os.getpid())}: tcp " in remark


@pytest.fixture
def watched_namespace(holder):
    """A holder in a namespace of its own, and a netlink engine that has polled it once."""
    require_root("unshare -n, and setns into the namespace it makes")
    inside = holder("--name", "lnnswatched", prefix=PRIVATE_NETNS)
    source = lognet.NetlinkSource("tcp")
    try:
        source.connections()
        yield inside, source
    finally:
        source.close()


def test_a_close_in_another_namespace_makes_the_watcher_dump_it(watched_namespace):
    inside, source = watched_namespace
    source.watch()
    source.between_polls()
    # a pair closes and another opens between two looks: the namespace's counts of
    # sockets in use stand still, and so does the kernel's count of TCP sockets made
    inside.send("open")
    source.connections()
    source.watch()
    source.between_polls()
    assert inside.send("drop") == "dropped"
    port = int(inside.send("open"))
    time.sleep(0.2)  # the close events are in
    source.watch()
    arrivals, _ = source.between_polls()
    assert [(c.pid, c.netns) for c, _ in arrivals if c.laddr[1] == port] == [(inside.pid, netns_of(inside.pid))]


def test_a_socket_made_in_another_namespace_leaves_a_namespace_undumped(watched_namespace):
    inside, source = watched_namespace
    ns, own = source.namespaces[netns_of(inside.pid)], source.namespaces[source.netns]
    before, allocated = ns.counters.signature(), own.counters.tcp_allocated(own.counters.activity())
    with socket.socket() as made_here:  # a TCP socket of the host's: the kernel's one count moves
        made_here.bind(("127.0.0.1", 0))
        assert own.counters.tcp_allocated(own.counters.activity()) != allocated
        assert ns.counters.signature() == before


def test_fifty_namespaces_come_and_go_and_none_is_kept_alive(tmp_path, background, marker):
    require_root("unshare -n")
    require_tool("lsns", "util-linux")
    ln = background("-i", "0.1", "-p", "tcp", "--fields", "+netns")
    ln.wait_for_poll(marker)
    fds_before = len(os.listdir(f"/proc/{ln.proc.pid}/fd"))
    made = []
    for _ in range(5):  # ten at a time, each living long enough for a few polls to find it
        group = [subprocess.Popen([*PRIVATE_NETNS, sys.executable, "-c",
                                   "import socket, sys, time; s = socket.create_server(('127.0.0.1', 0)); "
                                   "print(s.getsockname()[1], flush=True); time.sleep(0.6)"],
                                  stdout=subprocess.PIPE, text=True) for _ in range(10)]
        for proc in group:
            port = proc.stdout.readline().strip()
            made.append((netns_of(proc.pid), port))
        for proc in group:
            proc.wait(timeout=30)
            proc.stdout.close()
    # polls after the last namespace emptied let go of what watched them
    fds_after = wait_for(lambda: len(os.listdir(f"/proc/{ln.proc.pid}/fd")) if abs(
        len(os.listdir(f"/proc/{ln.proc.pid}/fd")) - fds_before) <= 3 else None)
    alive = set(subprocess.run(["lsns", "-t", "net", "-n", "-o", "NS"], capture_output=True, text=True,
                               check=True).stdout.split())
    assert ln.stop() == 0
    logged = {(r["netns"], r["lport"]) for r in w3c_rows(ln.clog) if r["status"] == "LISTEN"}
    assert {(str(netns), port) for netns, port in made} <= logged  # each namespace was watched
    assert abs(fds_after - fds_before) <= 3, (fds_before, fds_after)
    assert not {str(netns) for netns, _ in made} & alive


def test_without_setns_other_namespaces_are_read_from_proc(tmp_path, holder, nobody):
    require_root("unshare -n, and setpriv to run lognet as nobody with two capabilities")
    inside = holder("--name", "lnnstext", "--port", PORT, prefix=PRIVATE_NETNS)
    home = nobody.home
    result = subprocess.run(nobody.lognet("-n", "1", "-p", "tcp", "--fields", "+netns", "-clog", home / "c.log",
                                          "-plog", home / "p.log", caps="+sys_ptrace,+dac_read_search"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == events_refused() + (
        "lognet: warning: other network namespaces are read from /proc/<pid>/net, about 10 ms each per poll, "
        "without close events or the watcher: joining them needs CAP_SYS_ADMIN (Operation not permitted)\n")
    rows = w3c_rows(home / "c.log")
    ours = [r for r in rows if r["upid"] == upid_of(inside.pid, "lnnstext")]
    assert tcp_lines_of(ours, inside.pid) == expected_lines(inside)
    assert {(r["laddr"], r["raddr"], r["netns"]) for r in ours} == {
        ("127.0.0.1", "-", str(netns_of(inside.pid))), ("127.0.0.1", "127.0.0.1", str(netns_of(inside.pid)))}


DOCKER_ID = "3f4e2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"


def test_container_comes_from_a_cgroup_named_like_dockers(tmp_path, holder):
    require_root("a cgroup of the test's own, named like Docker's")
    root = Path("/sys/fs/cgroup/unified" if os.path.ismount("/sys/fs/cgroup/unified") else "/sys/fs/cgroup")
    if not (root / "cgroup.procs").exists():
        pytest.fail(f"no cgroup v2 hierarchy at {root}")
    scope = root / "lognet-test.slice" / f"docker-{DOCKER_ID}.scope"
    scope.mkdir(parents=True, exist_ok=True)
    h = holder("--name", "lncontainer")
    try:
        (scope / "cgroup.procs").write_text(str(h.pid))
        clog = tmp_path / "c.log"
        result = run_lognet("-n", "1", "-p", "tcp", "--format", "jsonl", "-clog", clog, "-plog", tmp_path / "p.log")
        assert (result.returncode, result.stderr) == (0, "")
    finally:
        h.stop()
        wait_for(lambda: not (scope / "cgroup.procs").read_text().strip())
        scope.rmdir()
        scope.parent.rmdir()
    objects = [json.loads(line) for line in read_lines(clog)]
    ours = [o for o in objects if o.get("pid") == h.pid]
    assert len(ours) == 3  # the listener and both ends
    assert {o["container"] for o in ours} == {DOCKER_ID[:12]}
    others = [o for o in objects if o.get("pid") == os.getpid()]
    assert all(o["container"] is None for o in others)


def test_proc_net_tables_are_read_as_the_kernel_writes_them():
    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
           "inode\n"
           "   0: 0100007F:1FBB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 "
           "0 0 10 0\n"
           "   1: 0100007F:1FBB 0100007F:A7C2 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0 20 4 "
           "30 10 -1\n"
           "   2: 0100007F:A7C0 0100007F:1FBB 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0\n"
           "   3: 0100007F:A7C4\n")  # cut short as the table changed: left out
    conns = lognet.parse_proc_net(tcp, socket.AF_INET, socket.IPPROTO_TCP, 77)
    assert [(c.laddr, c.raddr, c.status, c.inode, c.uid, c.netns, c.pid) for c in conns] == [
        (("127.0.0.1", 8123), (), "LISTEN", 4242, 0, 77, None),
        (("127.0.0.1", 8123), ("127.0.0.1", 42946), "ESTABLISHED", 4243, 1000, 77, None),
        (("127.0.0.1", 42944), ("127.0.0.1", 8123), "TIME_WAIT", None, 0, 77, None)]
    udp6 = ("  sl  local_address                         remote_address                        st tx_queue rx_queue "
            "tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"
            "  5: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 "
            "00:00000000 00000000   101        0 999 2 0 0\n")
    conns = lognet.parse_proc_net(udp6, socket.AF_INET6, socket.IPPROTO_UDP, 77)
    assert [(c.laddr, c.raddr, c.status, c.inode) for c in conns] == [(("::1", 53), (), "NONE", 999)]


SOCKSTAT = ("sockets: used 9\nTCP: inuse {tcp} orphan 0 tw {tw} alloc 7 mem 1\nUDP: inuse {udp} mem 0\n"
            "UDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n")
SOCKSTAT6 = "TCP6: inuse {tcp6}\nUDP6: inuse {udp6}\nUDPLITE6: inuse 0\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n"
TCP4, TCP6 = (socket.AF_INET, socket.IPPROTO_TCP), (socket.AF_INET6, socket.IPPROTO_TCP)
UDP4, UDP6 = (socket.AF_INET, socket.IPPROTO_UDP), (socket.AF_INET6, socket.IPPROTO_UDP)


@pytest.mark.parametrize("counts, held", [
    ({"tcp": 3, "tw": 0, "udp": 1, "tcp6": 0, "udp6": 0}, {TCP4, UDP4}),
    ({"tcp": 0, "tw": 2, "udp": 0, "tcp6": 0, "udp6": 0}, {TCP4, TCP6}),  # TIME_WAIT of either family
    ({"tcp": 0, "tw": 0, "udp": 0, "tcp6": 1, "udp6": 4}, {TCP6, UDP6}),
    ({"tcp": 0, "tw": 0, "udp": 0, "tcp6": 0, "udp6": 0}, set()),
])
def test_only_the_kinds_a_namespace_holds_are_dumped(counts, held):
    signature = (b"Tcp: ...\n", SOCKSTAT.format(**counts).encode(), SOCKSTAT6.format(**counts).encode())
    assert lognet.KernelCounters.kinds_in_use(signature) == held
