"""The Linux engine with real processes and real sockets: the watcher between polls, the
kernel's close events with bytes, unseen sockets, exact coverage, parity with psutil, and
the fallback when netlink is refused. Traffic stays on loopback, or inside a network
namespace the test makes."""

import errno
import os
import select
import socket
import struct
import subprocess
import sys
import time

import pytest

import lognet
from conftest import (
    LOGNET,
    Marker,
    data_lines,
    events_refused,
    read_lines,
    require_root,
    run_lognet,
    upid_of,
    w3c_rows,
    wait_for,
)

# A short-lived client, the way curl or pip connects: a new process that connects, holds
# the connection a while, and exits. Its command line is distinctive.
CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"x" * int(sys.argv[3]))
time.sleep(float(sys.argv[2]))
s.close()
"""

PRIVATE_NETNS = ("unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")


def start_client(port, hold, tag, size=10):
    """A new python3 process with the command line [python3, -c, CLIENT, port, hold, size, tag]."""
    return subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(hold), str(size), tag])


def send_and_receive(sender, receiver, size):
    """Send size bytes one way over a connected pair, and read them all at the other end."""
    sender.sendall(b"x" * size)
    received = 0
    while received < size:
        received += len(receiver.recv(65536))


def short_connection_between_polls(background, hold, tag, *lognet_args):
    """lognet at -i 5 (and lognet_args), and past its first poll a new client process that
    holds a connection to a listener here for `hold` seconds, then exits. Returns lognet,
    the client process, the listener's port and the client's port; lognet is still running."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    marker = Marker()
    # the watcher's path, which a user without the kernel events' privileges has
    ln = background("-i", "5", "-p", "tcp", "--kernel-events", "off", *lognet_args)
    try:
        ln.wait_for_poll(marker)  # past the first poll: what follows can only be caught between polls
        client = start_client(port, hold, tag)
        server, _ = listener.accept()
        client_port = str(server.getpeername()[1])
        assert client.wait(timeout=10) == 0
        server.close()
    finally:
        listener.close()
        marker.close()
    return ln, client, str(port), client_port


def test_new_process_holding_100ms_is_logged_with_pid_and_command_line_at_the_default_interval(
        tmp_path, background, marker):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # the defaults: -i 3, the watcher at its default; without the kernel's events, as a user
    # without their privileges runs it (tests/test_kernel_events.py has them at the defaults)
    ln = background("-p", "tcp", "--omit-self-conns", "--kernel-events", "off")
    try:
        ln.wait_for_poll(marker)  # past the first poll: what follows can only be caught between polls
        client = start_client(port, 0.1, "lnshortlived-tag")
        server, _ = listener.accept()
        client_port = server.getpeername()[1]
        name_and_pid = f"python3|{client.pid}|"
        assert client.wait(timeout=10) == 0
        server.close()
        wait_for(lambda: any(r["lport"] == str(client_port) and r["rport"] == str(port)
                             and r["upid"].startswith(name_and_pid)
                             for r in w3c_rows(ln.clog)), timeout=10)
    finally:
        assert ln.stop() == 0
        listener.close()
    # by both ports: an older TIME_WAIT from the same client port to another listener may be in the log too
    ours = [r for r in w3c_rows(ln.clog) if r["lport"] == str(client_port) and r["rport"] == str(port)]
    assert ours[0]["status"] == "ESTABLISHED" and ours[0]["upid"].startswith(name_and_pid)
    command_lines = [line for line in data_lines(ln.plog) if f"|{client.pid}|" in line]
    assert len(command_lines) == 1
    assert command_lines[0].endswith(repr([sys.executable, "-c", CLIENT, str(port), "0.1", "10", "lnshortlived-tag"]))
    assert ln.stderr == ""


@pytest.mark.parametrize("first_closer", ["client", "server"])
def test_close_lines_carry_the_bytes_sent_and_received(tmp_path, background, first_closer, marker):
    ln = background("-i", "0.2", "-p", "tcp", "--fields", "+event,txbytes,rxbytes")
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        ln.wait_for_poll(marker)  # the close events are joined before the pair is made
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        send_and_receive(client, server, 12345)
        send_and_receive(server, client, 678)
        time.sleep(0.3)
        first, second = (client, server) if first_closer == "client" else (server, client)
        first.close()
        time.sleep(0.05)
        second.close()
        # Both ends close with the kernel's close of their sockets: the active closer's too,
        # whose TIME_WAIT goes on for a minute.
        port = str(listener.getsockname()[1])
        wait_for(lambda: len([r for r in w3c_rows(ln.clog) if r["event"] == "close" and r["raddr"] != "-"
                              and port in (r["lport"], r["rport"])]) == 2)
    finally:
        assert ln.stop() == 0
        listener.close()
    closes = [r for r in w3c_rows(ln.clog) if r["event"] == "close" and port in (r["lport"], r["rport"])
              and r["raddr"] != "-"]
    client_end = "rport"  # the client's line has the listener's port as its remote port
    assert sorted((r[client_end] == port, r["txbytes"], r["rxbytes"]) for r in closes) == [
        (False, "678", "12345"), (True, "12345", "678")]
    # The active closer's line has the last state a dump saw: the kernel closes its socket as
    # it reaches FIN_WAIT2 (the ownerless socket left behind goes on to TIME_WAIT when the
    # peer closes), so a poll between the two closes sees FIN_WAIT2, and one after, TIME_WAIT.
    active = [r for r in closes if (r[client_end] == port) == (first_closer == "client")]
    assert [r["status"] for r in active] in (["TIME_WAIT"], ["FIN_WAIT2"]) or first_closer == "server" and active[0][
        "status"] in ("ESTABLISHED", "FIN_WAIT1"), active
    assert ln.stderr == ""


def test_socket_that_lived_5ms_is_unseen_and_counted(tmp_path, background, holder):
    require_root("unshare -n: a namespace where the test's sockets are the only ones")
    script = tmp_path / "five_ms.py"
    script.write_text("import socket, time\n"
                      "listener = socket.create_server(('127.0.0.1', 0))\n"
                      "client = socket.create_connection(listener.getsockname())\n"
                      "server, _ = listener.accept()\n"
                      "port = listener.getsockname()[1]\n"
                      "time.sleep(0.005)\n"
                      "client.close(); server.close(); listener.close()\n"
                      "print(port, flush=True)\n")
    ln = background("-i", "5", "-p", "tcp", "--watch", "0", "--netns", "own", "--fields", "+event,attrib",
                    "--stats-interval", "600", "--kernel-events", "off", prefix=PRIVATE_NETNS)
    try:
        mark = holder("--name", "lnmark", prefix=ln.inside())
        ln.wait_for_line(f" {mark.info['port']} - - LISTEN ")  # a poll is done: the next is 5 s away at most
        run = subprocess.run([*ln.inside(), sys.executable, str(script)],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        port = run.stdout.strip()
        wait_for(lambda: len([r for r in w3c_rows(ln.clog) if r["attrib"] == "unseen"]) >= 3)
    finally:
        assert ln.stop() == 0
    unseen = [r for r in w3c_rows(ln.clog) if r["attrib"] == "unseen"]
    # both ends of the connection, and the listener: each closed, none with an owner
    assert sorted((r["lport"] == port, r["rport"] == port, r["raddr"] != "-", r["upid"]) for r in unseen) == [
        (False, True, True, "-"), (True, False, False, "-"), (True, False, True, "-")]
    remark = read_lines(ln.clog)[-1]
    assert remark.startswith("#Remark: coverage tcp 0.000 (closed 3, with process 0, without 3); polls ")
    assert ln.stderr == ""


def test_both_engines_write_the_same_lines_for_the_same_holder(tmp_path, holder):
    h = holder("--name", "lnparity", "--udp6")
    port, client, udp, udp6 = (str(h.info[key]) for key in ("port", "client_port", "udp_port", "udp6_port"))
    upid = upid_of(h.pid, "lnparity")
    expected = sorted(f"{prot} {laddr} {lport} {raddr} {rport} {status} {upid}" for prot, laddr, lport, raddr, rport,
                      status in (("TCP", "127.0.0.1", port, "-", "-", "LISTEN"),
                                 ("TCP", "127.0.0.1", port, "127.0.0.1", client, "ESTABLISHED"),
                                 ("TCP", "127.0.0.1", client, "127.0.0.1", port, "ESTABLISHED"),
                                 ("UDP", "127.0.0.1", udp, "-", "-", "NONE"), ("UDP", "::1", udp6, "-", "-", "NONE")))
    for engine in ("netlink", "psutil"):
        clog = tmp_path / f"{engine}.log"
        result = run_lognet("--engine", engine, "-n", "1", "-clog", clog, "-plog", tmp_path / f"{engine}-p.log")
        assert (result.returncode, result.stderr) == (0, "")
        # the holder's sockets: an old TIME_WAIT elsewhere may reuse one of its port numbers
        ours = sorted(line.split(" ", 1)[1] for line in data_lines(clog)
                      if line.split(" ")[3] in (port, client, udp, udp6) and line.split(" ")[5] in ("-", port, client))
        assert ours == expected, engine


def test_the_watcher_catches_a_connection_between_two_polls_at_i_5(tmp_path, background):
    ln, client, port, client_port = short_connection_between_polls(background, 0.2, "lnbetweenpolls-tag",
                                                                   "--fields", "+event,attrib")
    closed = time.time()
    try:
        wait_for(lambda: any(r["lport"] == client_port and r["rport"] == port for r in w3c_rows(ln.clog)),
                 timeout=15)
    finally:
        assert ln.stop() == 0
    # by both ports: an older TIME_WAIT from the same client port to another listener may be in the log too
    ours = [r for r in w3c_rows(ln.clog) if r["lport"] == client_port and r["rport"] == port]
    assert ours[0]["event"] == "open" and ours[0]["upid"].startswith(f"python3|{client.pid}|")
    # written at the next poll, with the time it was first seen
    first = time.mktime(time.strptime(ours[0]["timestamp"], "%Y-%m-%d|%H:%M:%S"))
    assert first <= closed


def test_watch_0_polls_only(tmp_path, background):
    ln, client, port, client_port = short_connection_between_polls(background, 0.2, "lnwatch0-tag",
                                                                   "--watch", "0", "--fields", "+event,attrib")
    try:
        wait_for(lambda: any((r["lport"], r["rport"], r["event"]) == (port, client_port, "close")
                             for r in w3c_rows(ln.clog)), timeout=15)
    finally:
        assert ln.stop() == 0
    # Between polls nothing looked: the server end is known only from the kernel's close. By
    # both ports: an older TIME_WAIT to the client's port number from elsewhere may be logged.
    ours = [r for r in w3c_rows(ln.clog) if {r["lport"], r["rport"]} == {port, client_port}]
    assert [(r["event"], r["attrib"], r["upid"]) for r in ours if r["rport"] == client_port] == [
        ("close", "unseen", "-")]
    assert not [r for r in ours if r["upid"].startswith(f"python3|{client.pid}|")]


def test_a_socket_never_seen_alive_is_a_line_with_the_original_fields(tmp_path, background):
    ln, _, port, client_port = short_connection_between_polls(background, 0.05, "lnunseen8-tag", "--watch", "0")
    try:
        wait_for(lambda: f" {port} 127.0.0.1 {client_port} CLOSE -" in ln.clog.read_text(), timeout=15)
    finally:
        assert ln.stop() == 0
    ours = [line for line in data_lines(ln.clog) if f" {port} 127.0.0.1 {client_port} " in line]
    assert [line.split(" ")[1:] for line in ours] == [
        ["TCP", "127.0.0.1", port, "127.0.0.1", client_port, "CLOSE", "-"]]


HANDOVER = """
import os, socket, sys, time
way = sys.argv[1]
here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
receiver = os.fork() if way == "pass" else None
if receiver == 0:  # a process lognet meets before the socket reaches it (SCM_RIGHTS)
    listener = socket.socket(fileno=socket.recv_fds(there, 1, 1)[1][0])
    time.sleep(20)
    os._exit(0)
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
sys.stdin.readline()
if way == "pass":
    socket.send_fds(here, [b"x"], [listener.fileno()])
    new_owner = receiver
else:
    new_owner = os.fork()
    if new_owner == 0:  # the child keeps the listener it inherited, and stays
        time.sleep(20)
        os._exit(0)
listener.close()  # the first owner lets go: no packet, no socket opened or closed
print(new_owner, flush=True)
sys.stdin.readline()
os.kill(new_owner, 9)
"""


@pytest.mark.parametrize("way", ["fork", "pass"])
def test_a_socket_handed_to_another_process_is_logged_with_its_new_owner(tmp_path, background, way):
    handover = subprocess.Popen([sys.executable, "-c", HANDOVER, way], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    ln = None
    try:
        port = handover.stdout.readline().strip()
        # No watcher: the polls alone must see it (a watcher's search rereads processes too).
        ln = background("-i", "0.3", "--watch", "0", "-p", "tcp", "--fields", "+event")
        ln.wait_for_line(f" {port} - - LISTEN python3|{handover.pid}|")
        handover.stdin.write("go\n")
        handover.stdin.flush()
        child = handover.stdout.readline().strip()
        # the kernel's counters stand still, yet the owners are reconciled at every poll
        ln.wait_for_line(f" {port} - - LISTEN python3|{child}|")
    finally:
        if ln is not None:
            assert ln.stop() == 0
        handover.stdin.write("done\n")
        handover.stdin.close()
        handover.wait(timeout=10)
    events = [(r["event"], r["upid"].split("|")[1]) for r in w3c_rows(ln.clog)
              if (r["lport"], r["status"]) == (port, "LISTEN")]  # an older TIME_WAIT may have its port number
    assert events[:3] == [("open", str(handover.pid)), ("open", child), ("close", str(handover.pid))] or \
        events[:3] == [("open", str(handover.pid)), ("close", str(handover.pid)), ("open", child)]


def test_a_scan_sees_a_socket_passed_to_a_process_it_has_read_before():
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver = subprocess.Popen([sys.executable, "-c", "import socket, sys, time; there = socket.socket(fileno=int("
                                 "sys.argv[1])); print('ready', flush=True); "
                                 "print(socket.recv_fds(there, 1, 1)[1][0], flush=True); time.sleep(20)",
                                 str(there.fileno())], pass_fds=[there.fileno()], stdout=subprocess.PIPE, text=True)
    try:
        # Read once it has started: a process still starting up opens and closes files, and
        # its number of fds, which tells a scan to read it again, may come back to the same.
        assert receiver.stdout.readline().strip() == "ready"
        table = lognet.FdTable()
        table.scan()
        assert receiver.pid in table.links  # read once, before the socket reaches it
        with socket.create_server(("127.0.0.1", 0)) as listener:
            socket.send_fds(here, [b"x"], [listener.fileno()])
            fd = int(receiver.stdout.readline())
            table.scan()
            assert (receiver.pid, fd) in table.owners[os.fstat(listener.fileno()).st_ino]
    finally:
        receiver.kill()
        receiver.wait()
        here.close()
        there.close()


def test_a_search_finds_a_new_process_that_had_no_socket_at_the_last_look():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        table = lognet.FdTable()
        table.scan()  # before the process starts: it is new to every search until the next scan
        client = subprocess.Popen([sys.executable, "-c", "import socket, sys, time; print('ready', flush=True); "
                                   "sys.stdin.readline(); "
                                   "s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); time.sleep(20)",
                                   str(listener.getsockname()[1])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        try:
            # started, with no file left open from its start-up: the socket will be one fd more
            assert client.stdout.readline() == "ready\n"
            table.search({1}, most=0)  # a look for another socket reads the new process: no socket yet
            assert client.pid in table.links
            client.stdin.write("connect\n")
            client.stdin.flush()
            server, _ = listener.accept()
            with server:
                port, peer = listener.getsockname()[1], server.getpeername()[1]
                inode = next(c.inode for c in lognet.NetlinkSource("tcp").connections()
                             if c.raddr and c.raddr[1] == port and c.laddr[1] == peer)
                table.search({inode}, most=0)  # only the processes new since the scan: ours among them
                assert [pid for pid, _ in table.owners[inode]] == [client.pid]
        finally:
            client.kill()
            client.wait()


def test_the_watcher_finds_a_socket_made_before_one_look_and_connected_after_it():
    source = lognet.NetlinkSource("tcp")
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    # The accept queue is full: a later connect() stays in SYN_SENT, and the kernel makes
    # no socket for it, so that only the count of sockets in use moves.
    first = socket.create_connection(listener.getsockname())
    client = socket.socket()  # made, not bound: in no dump
    client.setblocking(False)
    try:
        source.connections()
        source.watch()  # the counters as they are now
        source.watch()
        assert source.between_polls()[0] == []
        assert client.connect_ex(listener.getsockname()) == errno.EINPROGRESS
        source.watch()
        arrivals, _ = source.between_polls()
        ours = [(c.status, c.pid) for c, _ in arrivals if c.laddr == client.getsockname()]
        assert ours == [("SYN_SENT", os.getpid())]
    finally:
        for sock in (client, first, listener):
            sock.close()
        source.close()


def test_the_watcher_looks_for_no_owner_of_a_socket_whose_line_the_filters_drop():
    """With --omit-loopback-conns the watcher leaves a loopback connection alone (the poll
    drops its line) rather than search the processes for its owner, but for a socket that
    asks DNS questions, whose owner names the answers. Without the filter it finds them all."""
    config, _ = lognet.parse_args(["--omit-loopback-conns"])
    sources = {"filtered": lognet.NetlinkSource("inet", names=True, keeps=lognet.build_filter(config)),
               "all": lognet.NetlinkSource("inet")}
    listener = socket.create_server(("127.0.0.1", 0))
    held = [listener]
    try:
        for source in sources.values():
            source.connections()
            source.watch()
        held.append(socket.create_connection(listener.getsockname()))
        held.append(listener.accept()[0])
        asker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        held.append(asker)
        asker.connect(("127.0.0.1", 53))  # a UDP connect sends nothing
        found = {}
        for name, source in sources.items():
            source.watch()
            found[name] = {conn.laddr for conn, _ in source.between_polls()[0] if conn.pid == os.getpid()}
        pair = {held[1].getsockname(), held[2].getsockname()}
        assert found["all"] >= pair | {asker.getsockname()}
        assert found["filtered"] & pair == set() and asker.getsockname() in found["filtered"]
    finally:
        for sock in held:
            sock.close()
        for source in sources.values():
            source.close()


def test_the_watcher_waits_for_its_share_of_cpu_before_it_wakes_again():
    source = lognet.NetlinkSource("tcp")
    watcher = lognet.Watcher(source, 0.02)
    try:
        watcher.moved_at = time.monotonic()  # sockets are opening: not quiet
        watcher.allowance = 0.05
        assert watcher.next_look() == 0.02
        watcher.allowance = -0.006  # a look cost 6 ms more than the share had saved
        assert watcher.next_look() == pytest.approx(0.006 / lognet.WATCH_CPU_SHARE)
        watcher.moved_at = time.monotonic() - lognet.WATCH_QUIET_AFTER - 1
        assert watcher.next_look() == lognet.WATCH_QUIET
    finally:
        source.close()


def test_a_close_event_wakes_a_quiet_watcher_and_brings_back_its_pace():
    source = lognet.NetlinkSource("tcp")
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        watcher = lognet.Watcher(source, 0.02)
        source.connections()
        watcher.look()  # the open is counted: only the close is new below
        watcher.moved_at = time.monotonic() - lognet.WATCH_QUIET_AFTER - 1  # a spell with nothing opened or closed
        assert watcher.next_look() == lognet.WATCH_QUIET
        wakers = watcher.wakers()
        assert wakers and not select.select(wakers, [], [], 0)[0]
        client.close()
        server.close()
        heard = select.select(wakers, [], [], 5)[0]
        assert heard  # the close event ends the wait
        watcher.look(heard)  # as the watcher's thread calls it after such a wait
        assert not watcher.quiet() and watcher.next_look() == 0.02
        assert watcher.wakers() == []
    finally:
        listener.close()
        source.close()


FAIL_NETLINK = """
import errno, runpy, socket, sys
real = socket.socket
class Refused(real):
    def __init__(self, family=-1, *args, **kwargs):
        if family == socket.AF_NETLINK:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        super().__init__(family, *args, **kwargs)
socket.socket = Refused
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_refused_netlink_falls_back_to_psutil_with_one_warning(tmp_path, holder):
    h = holder("--name", "lnfallback")
    clog = tmp_path / "c.log"
    result = subprocess.run([sys.executable, "-c", FAIL_NETLINK, str(LOGNET), "-n", "2", "-i", "0.1", "-p", "tcp",
                             "-clog", clog, "-plog", tmp_path / "p.log"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stderr == ("lognet: warning: the netlink engine is not available (Operation not permitted); "
                             "using psutil, which polls only\n")
    assert f"TCP 127.0.0.1 {h.info['port']} - - LISTEN {upid_of(h.pid, 'lnfallback')}" in clog.read_text()
    asked = subprocess.run([sys.executable, "-c", FAIL_NETLINK, str(LOGNET), "--engine", "netlink", "-n", "1",
                            "-clog", clog, "-plog", tmp_path / "p.log"], capture_output=True, text=True, timeout=60)
    assert (asked.returncode, asked.stderr) == (
        1, "lognet: error: the netlink engine is not available: Operation not permitted\n")


def test_omit_loopback_conns_leaves_out_loopback_peers(tmp_path):
    require_root("unshare -n: a namespace with a test address of its own on its lo")
    clog = tmp_path / "c.log"
    run = subprocess.run([*PRIVATE_NETNS, "sh", "-c", 'ip addr add 192.0.2.1/32 dev lo && exec "$@"', "sh",
                          sys.executable, "-c", LOOPBACK_SCRIPT, str(LOGNET), str(clog), str(tmp_path / "p.log")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert {(r["raddr"], r["status"]) for r in w3c_rows(clog)} == {("-", "LISTEN"), ("192.0.2.1", "ESTABLISHED")}
    assert len([r for r in w3c_rows(clog) if r["raddr"] == "192.0.2.1"]) == 2  # both ends


# Inside the namespace: one connection over 127.0.0.1, one over ::1, one over ::ffff:127.0.0.1,
# and one to 192.0.2.1 (on lo too); lognet with --omit-loopback-conns keeps only the last.
LOOPBACK_SCRIPT = """
import socket, subprocess, sys
lognet, clog, plog = sys.argv[1:4]
v4 = socket.create_server(("0.0.0.0", 0))
v6 = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
keep = [socket.create_connection(("127.0.0.1", v4.getsockname()[1])), v4.accept()[0],
        socket.create_connection(("::1", v6.getsockname()[1])), v6.accept()[0],
        socket.create_connection(("::ffff:127.0.0.1", v6.getsockname()[1])), v6.accept()[0],
        socket.create_connection(("192.0.2.1", v4.getsockname()[1])), v4.accept()[0]]
v6.close()
sys.exit(subprocess.run([sys.executable, lognet, "-n", "1", "-p", "tcp", "--netns", "own", "--omit-loopback-conns",
                         "-clog", clog, "-plog", plog]).returncode)
"""


@pytest.mark.parametrize("kind, pairs", [
    ("inet", 4), ("tcp", 2), ("udp6", 1), ("tcp4", 1),
])
def test_kind_sockets(kind, pairs):
    assert len(lognet.kind_sockets(kind)) == pairs


def test_close_event_bytes_from_a_real_kernel_close():
    """The Closed record decoded from the kernel's event matches what went through the socket."""
    source = lognet.NetlinkSource("tcp4")
    try:
        source.connections()
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        send_and_receive(client, server, 4000)
        port, server_port = client.getsockname()[1], listener.getsockname()[1]
        server.close()  # the server closes first: the client end is the passive closer
        client.recv(10)
        client.close()
        listener.close()

        def ours():
            source.read_events()
            return [c for c in source.close_events.departures if c.conn.laddr and c.conn.laddr[1] == port]
        closed = wait_for(ours)[0]
    finally:
        source.close()
    assert closed.conn.status == "CLOSE" and closed.conn.raddr == ("127.0.0.1", server_port)
    assert closed.conn.txbytes == 4000
    assert (closed.received, closed.acked_beyond) == (1, 2)  # the server's FIN; our SYN and FIN
    assert lognet.received_fin(closed, "out") is True
    assert closed.conn.cookie


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_tcp_close_event_read_in_one_unpack_says_what_the_general_readers_say(host):
    """tcp_close() on the kernel's own close events (each end of a connection that carried
    bytes both ways, and its listener): the same socket and bytes as decode_socket() and
    tcp_info_bytes() read from the same datagram, for each end; the listener's too."""
    events = lognet.SockDiag()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    events.subscribe([lognet.DESTROY_GROUPS[family, socket.IPPROTO_TCP]])
    try:
        listener = socket.create_server((host, 0), family=family)
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
        send_and_receive(client, server, 3000)
        send_and_receive(server, client, 700)
        ports = {client.getsockname()[1], server.getsockname()[1]}
        client.close()
        server.close()
        listener.close()

        def ours():
            datagrams.extend(data for data, _ in events.events())
            sport = lognet.NLMSG_HEADER.size + lognet.DIAG_SPORT
            mine = [data for data in datagrams if lognet.DIAG_PORTS.unpack_from(data, sport)[0] in ports]
            return mine if len(mine) == 3 else None
        datagrams: list[bytes] = []
        mine = wait_for(ours)
    finally:
        events.close()
    for data in mine:
        fast = lognet.tcp_close(data, 7)
        assert fast is not None  # the kernel's layout, as TCP_CLOSE_EVENT reads it
        end = lognet.NLMSG_HEADER.unpack_from(data)[0]
        sent, received, beyond = lognet.tcp_info_bytes(data, 16, end)
        assert fast == (lognet.decode_socket(data, 16, socket.IPPROTO_TCP, 7, closed=True, txbytes=sent),
                        received, beyond)
    assert sorted(lognet.tcp_close(data, 7)[0].txbytes for data in mine) == [0, 700, 3000]


def test_nobody_without_capabilities_gets_dumps_and_close_events(tmp_path, holder, nobody, background):
    h = holder("--name", "lnrootclose")
    home = nobody.home
    ln = background("-i", "0.2", "-p", "tcp", "--fields", "+event,attrib,txbytes", clog=home / "c.log",
                    plog=home / "p.log", program=nobody.lognet())
    port = str(h.info["port"])
    try:
        ln.wait_for_line(f" {port} - - LISTEN ")
        client = h.send("open")
        ln.wait_for_line(f" {client} 127.0.0.1 {port} ESTABLISHED ")
        assert h.send("drop") == "dropped"
        wait_for(lambda: [r for r in w3c_rows(ln.clog) if r["event"] == "close" and r["rport"] == client])
    finally:
        assert ln.stop() == 0
    assert ln.stderr == events_refused()  # netlink, with its close events: no other warning, no fallback
    by_key = {(r["lport"], r["rport"], r["event"]): r for r in w3c_rows(ln.clog)}
    # root's sockets: seen, owner not ours to know; the kernel's close with its bytes all the same
    assert by_key[(port, "-", "open")]["attrib"] == "hidden" and by_key[(port, "-", "open")]["upid"] == "-"
    assert by_key[(port, client, "close")]["txbytes"] == "0"


# ---------------------------------------------------------------- the wire, built by hand

def diag_message(family: int, state: int, src: str, sport: int, dst: str, dport: int, cookie: int, uid: int,
                 inode: int, attributes: bytes = b"") -> bytes:
    """One inet_diag_msg in its nlmsghdr, laid out member by member as linux/inet_diag.h declares it."""
    src, dst = (socket.inet_pton(family, ip).ljust(16, b"\0") for ip in (src, dst))
    body = (struct.pack("=BBBB", family, state, 0, 0)  # idiag_family, state, timer, retrans
            + struct.pack("!HH", sport, dport) + src + dst  # id: sport, dport, src, dst
            + struct.pack("=I", 0) + struct.pack("=II", cookie & 0xFFFFFFFF, cookie >> 32)  # id: if, cookie[2]
            + struct.pack("=IIIII", 0, 0, 0, uid, inode)  # expires, rqueue, wqueue, uid, inode
            + attributes)
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body  # SOCK_DIAG_BY_FAMILY, NLM_F_MULTI


def done_message(error: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, 3, 2, 1, 0, -error)  # NLMSG_DONE, and the error that cut the dump short


HAND_BUILT = [
    (socket.AF_INET, 1, "127.0.0.1", 40000, "127.0.0.1", 8080, 0x1_0000_0002, 1000, 777),
    (socket.AF_INET, 10, "0.0.0.0", 8080, "0.0.0.0", 0, 3, 0, 778),
    (socket.AF_INET6, 6, "::1", 40001, "2001:db8::1", 443, 0xFFFF_FFFF_0000_0004, 0, 0),
]


def expected(family, state, src, sport, dst, dport, cookie, uid, inode) -> lognet.Connection:
    return lognet.Connection(-1, family, socket.SOCK_STREAM, (src, sport) if sport else (),
                             (dst, dport) if dport else (), lognet.TCP_STATES[state], None, inode or None, cookie,
                             uid, 4026531840)


def decoded(found: dict) -> dict:
    return {key: lognet.decode_socket(data, start, socket.IPPROTO_TCP, 4026531840)
            for key, (data, start) in found.items()}


@pytest.mark.parametrize("attributes", [b"", struct.pack("=HH", 8, 1) + b"\x01\x02\x03\x04"])
def test_a_dump_built_by_hand_decodes_member_by_member(attributes):
    """One chunk of three sockets and NLMSG_DONE: all messages of one length (read by
    stride) or, with an attribute on the first, not (read by the walker)."""
    messages = [diag_message(*HAND_BUILT[0], attributes=attributes)] + [diag_message(*m) for m in HAND_BUILT[1:]]
    chunk = b"".join(messages) + done_message()
    found = decoded(lognet.dump_messages([chunk]))
    assert found == {(m[6] & 0xFFFFFFFF, m[6] >> 32, m[1]): expected(*m) for m in HAND_BUILT}  # by cookie and state
    assert lognet.dump_done(chunk) == 0 and lognet.dump_done(b"".join(messages)) is None
    kinds = [(kind, end - start) for kind, start, end in lognet.netlink_messages(chunk)]
    assert kinds == [(20, len(m) - 16) for m in messages] + [(3, 4)]


def test_the_walker_raises_the_error_a_reply_carries_and_a_dump_cut_short_says_why():
    refused = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -errno.EPERM) + bytes(16)  # NLMSG_ERROR, and the request
    with pytest.raises(PermissionError):
        lognet.netlink_messages(refused)
    assert lognet.netlink_messages(struct.pack("=IHHIIi", 36, 2, 0, 1, 0, 0) + bytes(16)) == [(2, 16, 36)]  # an ack
    assert lognet.dump_done(diag_message(*HAND_BUILT[0]) + done_message(errno.EINTR)) == errno.EINTR
    # a length shorter than a header: nothing after it can be trusted
    assert lognet.netlink_messages(diag_message(*HAND_BUILT[0]) + struct.pack("=IHHII", 8, 20, 0, 0, 0)) == [
        (20, 16, 88)]


def test_a_real_dump_reads_the_same_by_stride_as_by_the_walker(tcp_pair):
    diag = lognet.SockDiag()
    try:
        chunks = diag.dump(socket.AF_INET, socket.IPPROTO_TCP)
    finally:
        diag.close()
    walked = {lognet.socket_key(data, start): (data, start) for data in chunks
              for kind, start, _ in lognet.netlink_messages(data) if kind == lognet.SOCK_DIAG_BY_FAMILY}
    found = lognet.dump_messages(chunks)
    assert found.keys() == walked.keys() and decoded(found) == decoded(walked)
    listener, client, _ = tcp_pair
    # the client's end (a TIME_WAIT left by an earlier test may share its port, not its peer)
    ours = [conn for conn in decoded(found).values()
            if (conn.laddr, conn.raddr) == (client.getsockname(), listener.getsockname())]
    assert [(conn.status, conn.inode) for conn in ours] == [("ESTABLISHED", os.fstat(client.fileno()).st_ino)]


def test_an_ipv4_address_and_the_ipv6_address_of_the_same_bytes_decode_each_as_its_own():
    """inet_diag pads an IPv4 address to 16 bytes; the IPv6 address of those 16 bytes is another."""
    packed = socket.inet_aton("127.0.0.1") + bytes(12)
    for _ in range(2):  # the second time, from the addresses met already
        assert lognet.decode_address(socket.AF_INET, packed, 80) == ("127.0.0.1", 80)
        assert lognet.decode_address(socket.AF_INET6, packed, 80) == ("7f00:1::", 80)
        assert lognet.decode_address(socket.AF_INET, packed, 0) == ()


def test_a_dump_leaves_out_an_isolated_groups_connections_and_keeps_its_listener():
    """A dump with an isolated group's filter (dump_bytecode()): the kernel leaves out both
    ends of each connection to the group's end; the group's listener, and another service's
    connection, are there."""
    with socket.create_server(("127.0.0.1", 0)) as flooded, socket.create_server(("127.0.0.1", 0)) as other:
        listeners, ends = (flooded.getsockname(), other.getsockname()), []
        for listener in (flooded, other):
            ends += [socket.create_connection(listener.getsockname()), listener.accept()[0]]
        try:
            group = lognet.FloodGroup(None, socket.AF_INET, socket.inet_aton("127.0.0.1"), flooded.getsockname()[1])
            diag = lognet.SockDiag()
            try:
                found = lognet.dump_messages(diag.dump(socket.AF_INET, socket.IPPROTO_TCP,
                                                       bytecode=lognet.dump_bytecode(group.ends())))
            finally:
                diag.close()
            dumped = {(conn.laddr, conn.raddr) for conn in (
                lognet.decode_socket(*place, socket.IPPROTO_TCP, None) for place in found.values())}
            connected = [{(client.getsockname(), client.getpeername()), (server.getsockname(), server.getpeername())}
                         for client, server in (ends[:2], ends[2:])]
        finally:
            for sock in ends:
                sock.close()
    assert (listeners[0], ()) in dumped and (listeners[1], ()) in dumped
    for n, pairs in enumerate(connected):
        assert pairs.isdisjoint(dumped) if n == 0 else pairs <= dumped
