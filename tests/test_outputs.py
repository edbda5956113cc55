"""Outputs for people and pipelines: JSON Lines, stdout, syslog through real rsyslog
instances, a least-privilege run with capabilities, the status line in a real
pseudo-terminal, and installation with pipx."""

import fcntl
import json
import os
import pty
import pwd
import re
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import psutil
import pytest

from conftest import (
    ROOT,
    data_lines,
    events_refused,
    lognet_command,
    read_lines,
    require_root,
    require_tool,
    upid_of,
    wait_for,
)

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


# ---------------------------------------------------------------- JSON Lines

def run_jsonl(tmp_path, *extra):
    clog, plog = tmp_path / "c.jsonl", tmp_path / "p.jsonl"
    result = subprocess.run(lognet_command("--format", "jsonl", "-n", "1", "-p", "tcp", *extra,
                                           "-clog", clog, "-plog", plog), capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    return clog, plog


def test_jsonl_objects_carry_every_field(tmp_path, holder):
    h = holder("--name", "lnjson", "json lines tag")
    clog, plog = run_jsonl(tmp_path)
    objects = [json.loads(line) for line in read_lines(clog)]  # every line parses: no '#' headers
    # first the remark that names the host's namespace, last the stats (one, at exit)
    assert objects[0]["event"] == "remark"
    assert objects[0]["remark"] == f"host netns {os.stat('/proc/self/ns/net').st_ino} (lognet's own network namespace)"
    connections = objects[1:-1]
    assert objects[-1]["event"] == "stats" and all(o["event"] == "open" for o in connections)
    processes = [json.loads(line) for line in read_lines(plog)]
    process = psutil.Process(h.pid)
    upid = upid_of(h.pid, "lnjson")
    listen = [c for c in connections if c["lport"] == h.info["port"] and c["status"] == "LISTEN"]
    assert len(listen) == 1
    ts = listen[0].pop("ts")
    assert ISO.match(ts), ts
    assert listen[0].pop("firstseen") == ts
    assert listen[0] == {"event": "open", "prot": "TCP", "family": 4, "laddr": "127.0.0.1", "lport": h.info["port"],
                         "raddr": None, "rport": None, "status": "LISTEN", "pid": h.pid, "name": "lnjson",
                         "create_time": process.create_time(), "upid": upid, "user": process.username(),
                         "exe": os.path.realpath(sys.executable), "direction": "listen", "attrib": "pid",
                         "duration": None, "txbytes": None, "rxbytes": None,
                         "netns": os.stat(f"/proc/{h.pid}/ns/net").st_ino, "container": None, "rhost": None}
    ours = [p for p in processes if p["pid"] == h.pid]
    assert len(ours) == 1
    assert ISO.match(ours[0].pop("ts"))
    assert ours[0] == {"upid": upid, "pid": h.pid, "name": "lnjson", "create_time": process.create_time(),
                       "cmdline": h.cmdline, "exe": os.path.realpath(sys.executable),
                       "user": pwd.getpwuid(os.getuid()).pw_name, "username": pwd.getpwuid(os.getuid()).pw_name}


def test_jsonl_round_trips_bytes_that_are_not_utf8(tmp_path, holder):
    h = holder("--name", "\\xffjs\\x1b", "arg\nwith\x01controls")
    clog, plog = run_jsonl(tmp_path, "--utc")
    ours = [json.loads(line) for line in read_lines(plog) if json.loads(line)["pid"] == h.pid]
    assert len(ours) == 1
    assert ours[0]["name"].encode("utf-8", "surrogateescape") == b"\xffjs\x1b"
    assert ours[0]["cmdline"][-1] == "arg\nwith\x01controls"
    assert ours[0]["ts"].endswith("+00:00")
    assert all(line.isascii() for line in read_lines(plog) + read_lines(clog))


def test_jq_reads_every_line(tmp_path, holder):
    require_tool("jq", "jq")
    h = holder("--name", "lnjq")
    clog, plog = run_jsonl(tmp_path)
    for path in (clog, plog):
        parsed = subprocess.run(["jq", "-c", "."], stdin=open(path), capture_output=True, text=True, timeout=30)
        assert parsed.returncode == 0, parsed.stderr
        assert len(parsed.stdout.splitlines()) == len(read_lines(path))
    query = f'select(.pid == {h.pid} and .status == "LISTEN") | "\\(.name) \\(.lport) \\(.direction)"'
    picked = subprocess.run(["jq", "-r", query, str(clog)], capture_output=True, text=True, timeout=30)
    assert picked.stdout.splitlines() == [f"lnjq {h.info['port']} listen"]


@pytest.mark.parametrize("first, then", [("w3c", "jsonl"), ("jsonl", "w3c")])
def test_switching_format_on_an_existing_log_is_refused(tmp_path, first, then):
    clog, plog = tmp_path / "c.log", tmp_path / "p.log"
    ran = subprocess.run(lognet_command("-n", "1", "--format", first, "-clog", clog, "-plog", plog),
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    before = clog.read_bytes()
    switched = subprocess.run(lognet_command("-n", "1", "--format", then, "-clog", clog, "-plog", tmp_path / "p2"),
                              capture_output=True, text=True, timeout=60)
    assert switched.returncode == 1
    assert switched.stderr == (f"lognet: error: {clog} holds {first} lines, not {then}: choose --format {first}, "
                               "or another log\n")
    assert clog.read_bytes() == before


# ---------------------------------------------------------------- standard output

def test_dash_writes_connection_lines_to_stdout(tmp_path, holder):
    h = holder("--name", "lnstdout")
    result = subprocess.run(lognet_command("-n", "1", "-p", "tcp", "-clog", "-", "-plog", "/dev/null"),
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[2] == "#Fields: timestamp prot laddr lport raddr rport status upid"
    ours = [line.split(" ")[1:] for line in lines if f" {h.info['port']} - - LISTEN " in line]
    assert ours == [["TCP", "127.0.0.1", str(h.info["port"]), "-", "-", "LISTEN", upid_of(h.pid, "lnstdout")]]


def head_3(command, then=lambda: None):
    """Run command with stdout to a pipe, read three lines as `| head -3` does, close the
    pipe, call then(), and return lognet's exit status and stderr."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        header = [proc.stdout.readline() for _ in range(3)]
        assert header[0] == b"#Version: 1.0\n" and header[2].startswith(b"#Fields: ")
        proc.stdout.close()
        then()
        return proc.wait(timeout=10), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_closed_pipe_ends_lognet_quietly(tmp_path, holder):
    h = holder("--name", "lnpipe")
    command = lognet_command("-i", "0.1", "-p", "tcp", "-clog", "-", "-plog", tmp_path / "p.log")
    assert head_3(command, then=lambda: h.send("open")) == (0, b"")  # something new to write, into the closed pipe


def test_a_full_pipe_gets_whole_lines_each_once(tmp_path, many_pairs):
    # A non-blocking pipe that nobody reads for a second: lognet's write of the first poll
    # stops partway, in the middle of a line, and a pipe cannot be cut back.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    proc = subprocess.Popen(lognet_command("-i", "0.2", "-n", "10", "-p", "tcp", "-clog", "-",
                                           "-plog", tmp_path / "p.log"),
                            stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    time.sleep(1.0)
    with os.fdopen(read_end, "rb") as reader:
        out = reader.read().decode()
    assert proc.wait(timeout=30) == 0
    assert "lognet: error: cannot write -: Resource temporarily unavailable" in proc.stderr.read()
    lines = out.splitlines()
    assert out.endswith("\n")
    data = [line for line in lines if not line.startswith("#")]
    for line in data:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d\|\d\d:\d\d:\d\d TCP \S+ \d+ \S+ \S+ [A-Z_0-9]+ \S+", line), line
    assert len(set(data)) == len(data), "a line was written twice"
    ours = {line.split(" ")[3] for line in data if f"|{os.getpid()}|" in line and " ESTABLISHED " in line}
    assert many_pairs <= ours


def test_closed_pipe_ends_lognet_on_a_quiet_host_at_the_next_poll(tmp_path):
    require_root("a network namespace of the test's own (unshare -n): a host with no socket at all")
    require_tool("unshare", "util-linux")
    # Nothing more will ever be written: no socket opens in there.
    command = ["unshare", "-n", *lognet_command("-i", "0.5", "-clog", "-", "-plog", tmp_path / "p.log")]
    assert head_3(command) == (0, b"")


# ---------------------------------------------------------------- syslog, through real rsyslog

def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rsyslog:
    """An rsyslogd of the test's own: its own configuration, pid file and work folder."""

    def __init__(self, folder: Path, config: str):
        folder.mkdir()
        self.folder = folder
        (folder / "rsyslog.conf").write_text(f'global(workDirectory="{folder}")\n' + config)
        self.proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(folder / "rsyslog.conf"),
                                      "-i", str(folder / "rsyslogd.pid")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# The snippets of the reference's "Many hosts" section: a host forwards lognet's events, a collector files them.
HOST_FORWARDING = """\
if $app-name == "lognet" then {{
    action(type="omfwd" target="{collector}" port="{port}" protocol="tcp"
           template="RSYSLOG_SyslogProtocol23Format")
}}
"""
COLLECTOR = """\
template(name="lognet" type="string"
         string="%hostname% %app-name% %msgid% %procid%%msg:::sp-if-no-1st-sp%%msg%\\n")
if $app-name == "lognet" then {{
    action(type="omfile" file="{file}" template="lognet")
}}
"""


@pytest.fixture
def rsyslog_pair(tmp_path):
    """Instance A receives (a local socket with rsyslog's default parser, UDP, TCP) and forwards
    over TCP to B, which writes a file: a fleet host and its collector."""
    require_tool("rsyslogd", "rsyslog")
    b_port, a_udp, a_tcp = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    received = tmp_path / "b" / "received.log"
    b = Rsyslog(tmp_path / "b", f'''
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{b_port}")
''' + COLLECTOR.format(file=received))
    a = Rsyslog(tmp_path / "a", f'''
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{tmp_path}/a/log")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{a_udp}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{a_tcp}")
''' + HOST_FORWARDING.format(collector="127.0.0.1", port=b_port))
    try:
        wait_for(lambda: (tmp_path / "a" / "log").exists() and listening(a_tcp) and listening(b_port))
        yield {"udp": f"127.0.0.1:{a_udp}", "tcp": f"tcp://127.0.0.1:{a_tcp}", "unix": f"{tmp_path}/a/log",
               "received": received}
    finally:
        a.stop()
        b.stop()


def listening(port):
    return any(c.laddr.port == port and c.status == "LISTEN" for c in psutil.net_connections("tcp4"))


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
def test_syslog_events_reach_the_collector_whole(tmp_path, holder, rsyslog_pair, transport):
    # IPv6 sockets only: a handful of lines, since UDP drops what a burst overflows (so may a real collector)
    h = holder("--name", f"lnsys{transport}", "--host", "::1", "a b\nc")
    clog, plog = tmp_path / "c.log", tmp_path / "p.log"
    lognet = subprocess.Popen(lognet_command("-n", "1", "-ipv", "6", "-p", "tcp", "--syslog", rsyslog_pair[transport],
                                             "-clog", clog, "-plog", plog), stderr=subprocess.PIPE, text=True)
    assert (lognet.wait(timeout=60), lognet.stderr.read()) == (0, "")
    mine = [line for line in data_lines(clog) if f"|{h.pid}|" in line]
    process_line = [line for line in data_lines(plog) if f"|{h.pid}|" in line]
    assert len(mine) == 3 and len(process_line) == 1
    # A forwarded to B what lognet sent: host, app-name, msgid, procid and the very line the file got.
    # A local socket has no message ids: syslog(3)'s form there, RFC 5424 over the network.
    host = socket.gethostname()
    connection, process = ("-", "-") if transport == "unix" else ("connection", "process")
    expected = [f"{host} lognet {connection} {lognet.pid} {line}" for line in mine]
    expected.append(f"{host} lognet {process} {lognet.pid} {process_line[0]}")
    received = rsyslog_pair["received"]
    wait_for(lambda: received.exists() and set(expected) <= set(received.read_text().splitlines()))


def test_syslog_facility_sets_the_priority(tmp_path):
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(30)
    address = f"127.0.0.1:{collector.getsockname()[1]}"
    with collector:
        result = subprocess.run(lognet_command("-n", "1", "-p", "udp", "--syslog", address, "--syslog-facility",
                                               "local3", "-clog", tmp_path / "c.log", "-plog", tmp_path / "p.log"),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0
        messages = [collector.recv(65536).decode() for _ in range(2)]  # one of each stream, at least
    # the two streams travel apart: find the process line
    message = next(m for m in messages if " lognet " in m and " process - " in m)
    # local3 (19) * 8 + informational (6) = 158; RFC 5424 version 1, an ISO timestamp, the host name
    head = re.match(r"^<158>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (\S+) lognet (\d+) process - ",
                    message)
    assert head and head.group(1) == socket.gethostname()
    assert message[head.end():] in data_lines(tmp_path / "p.log")


SYSLOG_HEADER = {
    "udp": re.compile(rb"<\d+>1 \S+ \S+ lognet \d+ (connection|process) - "),
    "unix": re.compile(rb"<\d+>\w{3} [ \d]\d \d\d:\d\d:\d\d lognet\[\d+\]: "),
}


def collect_datagrams(collector, proc, quiet=1.0):
    """Every datagram the collector gets while lognet runs, and until it has been quiet a while after."""
    collector.settimeout(0.2)
    messages, quiet_since = [], None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            messages.append(collector.recv(1 << 20))
            quiet_since = None
        except socket.timeout:
            if proc.poll() is not None:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > quiet:
                    break
    return messages


@pytest.mark.parametrize("transport, size", [("udp", 70_000), ("unix", 250_000)])
def test_a_line_too_long_for_a_datagram_is_cut_once_and_syslog_goes_on(tmp_path, holder, transport, size):
    # One argument may be up to 128 kB: a command line this long takes a few.
    h = holder("--name", "lnhuge", *["x" * 100_000] * (size // 100_000), "y" * (size % 100_000))
    if transport == "udp":
        collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        collector.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{collector.getsockname()[1]}"
    else:
        collector = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = str(tmp_path / "log.sock")
        collector.bind(address)
    with collector:
        collector.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        proc = subprocess.Popen(lognet_command("-i", "0.2", "-n", "6", "-p", "tcp", "--syslog", address,
                                               "-clog", tmp_path / "c.log", "-plog", tmp_path / "p.log"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        messages = collect_datagrams(collector, proc)
    assert (proc.wait(timeout=30), proc.stderr.read()) == (0, "")
    line = next(line for line in read_lines(tmp_path / "p.log") if f"lnhuge|{h.pid}|" in line).encode()
    assert len(line) > size  # processes.log has it whole
    bodies = []
    for message in messages:
        header = SYSLOG_HEADER[transport].match(message)
        assert header, message[:100]
        bodies.append(message[header.end():])
    assert len(set(bodies)) == len(bodies), "a message was sent twice"
    huge = [body for body in bodies if body.startswith(b"[cut to ")]
    assert len(huge) == 1 and f" lnhuge|{h.pid}|".encode() in huge[0][:200]
    cut = re.match(rb"\[cut to (\d+) of (\d+) bytes\] ", huge[0])
    assert cut, huge[0][:100]
    kept, total = int(cut.group(1)), int(cut.group(2))
    assert total == len(line) and kept < total
    assert huge[0][cut.end():] == line[:kept]
    # the lines after it went on to syslog: the holder's listener, written after its process
    assert any(f" {h.info['port']} - - LISTEN ".encode() in body for body in bodies)


def test_a_stalled_tcp_collector_never_holds_up_the_polls(tmp_path):
    stalled = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = stalled.getsockname()[1]
    waiting = []
    with stalled:
        for _ in range(3):  # fill its accept queue: the kernel drops the next connection's SYN
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            waiting.append(client)
        started = time.monotonic()
        result = subprocess.run(lognet_command("-i", "1", "-n", "3", "--syslog", f"tcp://127.0.0.1:{port}",
                                               "-clog", tmp_path / "c.log", "-plog", tmp_path / "p.log"),
                                capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started
        for client in waiting:
            client.close()
    print(f"-n 3 -i 1 against a stalled collector took {took:.1f} s")
    assert took < 10  # three polls take 2 s; a poll that waited for the collector would take 5 s more each
    assert result.returncode == 1  # lines never reached the collector, and the exit status says so
    counts = re.findall(rf"lognet: error: (\d+) lines never reached syslog tcp:127.0.0.1:{port}\n", result.stderr)
    assert len(counts) == 1 and int(counts[0]) > 0, result.stderr
    assert len(data_lines(tmp_path / "c.log")) > 0  # the file got its lines all the same


def read_octet_counted(conn, count=None):
    """RFC 6587 frames from a TCP connection: all until EOF, or the first count."""
    frames, buffer = [], b""
    conn.settimeout(30)
    while count is None or len(frames) < count:
        while (space := buffer.find(b" ")) >= 0 and len(buffer) >= space + 1 + int(buffer[:space]):
            length = int(buffer[:space])
            frames.append(buffer[space + 1:space + 1 + length])
            buffer = buffer[space + 1 + length:]
        if count is not None and len(frames) >= count:
            break
        chunk = conn.recv(65536)
        if not chunk:
            break
        buffer += chunk
    return frames


def test_a_collector_that_drops_the_connection_gets_every_line_once(tmp_path, holder):
    h = holder("--name", "lnreconnect")
    collector = socket.create_server(("127.0.0.1", 0))
    port = collector.getsockname()[1]
    proc = subprocess.Popen(lognet_command("-i", "0.2", "-n", "25", "-p", "tcp", "--syslog", f"tcp://127.0.0.1:{port}",
                                           "-clog", tmp_path / "c.log", "-plog", tmp_path / "p.log"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with collector:
        collector.settimeout(30)
        first, _ = collector.accept()
        before = read_octet_counted(first, 3)
        # a reset: lognet's next send fails, and it connects again after a pause
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        first.close()
        for _ in range(3):
            h.send("open")  # lines for the polls after the reset
            time.sleep(0.2)
        second, _ = collector.accept()
        with second:
            after = read_octet_counted(second)
    assert proc.wait(timeout=30) == 0
    stderr = proc.stderr.read()
    assert f"lognet: error: cannot write syslog tcp:127.0.0.1:{port}: " in stderr
    assert f"lognet: warning: writing syslog tcp:127.0.0.1:{port} works again; " in stderr
    bodies = [re.sub(rb"^<\d+>1 \S+ ", b"", frame) for frame in before + after]  # the time differs on a resend
    assert len(set(bodies)) == len(bodies), "a line was sent twice"
    assert any(b" #Remark: the next " in body for body in after), (stderr, after[:5])  # the late lines are marked
    assert any(f"lnreconnect|{h.pid}|".encode() in body for body in after)


@pytest.mark.parametrize("address, message", [
    ("ftp://host:1", "unknown transport 'ftp': use udp:// or tcp://"),
    ("host:99999", "not a port (1 to 65535): '99999' in 'host:99999'"),
    ("host:0", "not a port (1 to 65535): '0' in 'host:0'"),
    ("tcp://host:abc", "not a port (1 to 65535): 'abc' in 'tcp://host:abc'"),
    (":514", "not a socket path or host:port: ':514'"),
    ("::1", "write an IPv6 address in brackets, as [::1]:514: '::1'"),
    ("[::1", "not [IPv6 address]:port: '[::1'"),
])
def test_bad_syslog_address_is_a_usage_error(address, message):
    result = subprocess.run(lognet_command("--syslog", address), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == f"lognet: error: argument --syslog: {message} (see lognet --help)\n"


# ---------------------------------------------------------------- least privilege

CAPS = "+sys_ptrace,+dac_read_search"


@pytest.mark.parametrize("caps, sees_owner", [(CAPS, True), ("+sys_ptrace", False), ("+dac_read_search", False)])
def test_nobody_with_two_capabilities_sees_roots_sockets(tmp_path, holder, nobody, caps, sees_owner):
    h = holder("--name", "lnrootcap")
    home = nobody.home
    result = subprocess.run(nobody.lognet("-n", "1", "-p", "tcp", "-clog", home / "c.log", "-plog", home / "p.log",
                                          caps=caps), capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, events_refused())
    owners = [line.split(" ")[7] for line in data_lines(home / "c.log") if f" {h.info['port']} - - LISTEN " in line]
    assert owners == [upid_of(h.pid, "lnrootcap") if sees_owner else "-"]
    assert os.stat(home / "c.log").st_uid == nobody.uid


# ---------------------------------------------------------------- status line

class Terminal:
    """lognet with a real pseudo-terminal of a given size as its controlling terminal (stdin
    and stderr), as in an interactive shell; the test holds the other side."""

    def __init__(self, *args, columns=80):
        self.master, slave = pty.openpty()
        self.resize(columns)
        self.proc = subprocess.Popen(lognet_command(*args), stdin=slave, stdout=subprocess.DEVNULL, stderr=slave,
                                     preexec_fn=take_terminal)
        os.close(slave)
        self.shown = b""

    def resize(self, columns, rows=24):
        """Set the terminal's size, as a terminal emulator does: the kernel sends SIGWINCH."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def read(self, until=lambda shown: False, timeout=30) -> bool:
        """Collect what the terminal shows until until(shown) holds (True), or lognet ends or
        timeout seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(self.text):
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: lognet has ended, and the terminal with it
                    return False
                if not chunk:
                    return False
                self.shown += chunk
        return until(self.text)

    @property
    def text(self) -> str:
        return self.shown.decode()

    @property
    def frames(self) -> list[str]:
        return [frame.rstrip("\r\n") for frame in self.text.split("\r\x1b[K") if frame]

    def hang_up(self):
        """Close the terminal, as closing its window does: the kernel hangs it up."""
        os.close(self.master)
        self.master = None

    def finish(self, timeout=30) -> int:
        if self.master is not None:
            self.read(timeout=timeout)
            os.close(self.master)
        return self.proc.wait(timeout=timeout)


def take_terminal():
    """In the child: a session of its own, with stdin's terminal as its controlling terminal."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


STATUS = r"lognet: \d+ polls, \d+ live connections, \d+ lines written, last poll \d+ ms"


def test_status_line_on_a_terminal(tmp_path):
    clog, plog = tmp_path / "c.log", tmp_path / "p.log"
    term = Terminal("-i", "0.2", "-n", "12", "-clog", clog, "-plog", plog, columns=300)
    assert term.finish() == 0
    frames = term.frames
    # 12 polls 0.2 s apart take 2.2 s: redrawn at most once a second (2 or 3 times), and once at exit
    assert 3 <= len(frames) <= 4, frames
    for frame in frames:
        assert re.fullmatch(rf"{STATUS} -> {clog} {plog}", frame), frame
    assert frames[0].startswith("lognet: 1 polls, ")
    assert frames[-1].startswith("lognet: 12 polls, ")
    assert term.text.endswith("\n")


def test_status_line_fits_the_terminal_and_is_redrawn_when_it_is_resized(tmp_path):
    clog, plog = tmp_path / "c.log", tmp_path / "p.log"
    assert len(f"{clog} {plog}") > 100
    term = Terminal("-i", "4", "-n", "2", "-clog", clog, "-plog", plog, columns=100)
    assert term.read(until=lambda text: "polls" in text)
    assert re.fullmatch(rf"{STATUS} -> c.log p.log", term.frames[0]), term.frames  # paths shortened first
    assert len(term.frames[0]) <= 99
    term.resize(50)
    resized = time.monotonic()
    # the next poll is 4 s away: only SIGWINCH redraws the line within 2 s
    assert term.read(until=lambda text: len(term.frames) >= 2, timeout=2), term.frames
    assert time.monotonic() - resized < 2
    assert term.finish() == 0
    assert all(len(frame) <= 49 for frame in term.frames[1:]), term.frames
    assert re.fullmatch(r"lognet: 1 polls, \d+ live, \d+ lines, \d+ ms", term.frames[1]), term.frames


def test_quiet_terminal_shows_nothing(tmp_path):
    term = Terminal("-q", "-i", "0.2", "-n", "6", "-clog", tmp_path / "c.log", "-plog", tmp_path / "p.log")
    assert term.finish() == 0
    assert term.text == ""


def test_closing_the_terminal_leaves_lognet_logging(tmp_path):
    clog = tmp_path / "c.log"
    term = Terminal("-i", "0.2", "-p", "tcp", "--fields", "+event", "-clog", clog, "-plog", tmp_path / "p.log")
    assert term.read(until=lambda text: "polls" in text)
    term.hang_up()  # SIGHUP, then every write to the terminal fails with EIO
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        wait_for(lambda: f" 127.0.0.1 {port} - - LISTEN " in clog.read_text())
        time.sleep(1.5)  # status redraws that fail, each second
        assert term.proc.poll() is None, "lognet ended when its terminal closed"
    term.proc.terminate()
    assert term.finish() == 0
    assert read_lines(clog)[-1].startswith("#Remark: coverage ")  # the final statistics were written


# ---------------------------------------------------------------- installation

README = (ROOT / "README.md").read_text()
SYSTEM_PATH = "/usr/bin:/bin"  # the least a shell or cron has


def require_debian_python():
    """The distribution's own python3 on a Debian or Ubuntu host, as root: what the README's
    first command is for. CI runs on one."""
    require_root("apt-get install, as the README's command runs it")
    if not (shutil.which("apt-get") and os.path.exists("/usr/bin/python3")):
        if os.environ.get("CI"):
            pytest.fail("CI runs on Debian, yet apt-get or /usr/bin/python3 is missing")
        pytest.skip("not a Debian or Ubuntu host with its own /usr/bin/python3")


def test_the_readmes_install_command_works_with_the_distributions_python(tmp_path):
    require_debian_python()
    command = re.search(r"```sh\n(apt-get .*)\n```", README).group(1)
    installed = tmp_path / "bin" / "lognet"
    installed.parent.mkdir()
    # Installed into folders of the test's own, and run once (-n 1) with logs of its own.
    assert command.endswith("install -m 0755 lognet.py /usr/local/bin/lognet && /usr/local/bin/lognet")
    assert "install -D -m 0644 docs/lognet.8 /usr/local/share/man/man8/lognet.8" in command
    command = command.replace("/usr/local/bin/lognet", str(installed)).replace("/usr/local/share", str(tmp_path))
    command += f" -n 1 -clog {tmp_path}/c.log -plog {tmp_path}/p.log"
    run = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={"PATH": SYSTEM_PATH, "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert read_lines(tmp_path / "c.log")[2] == "#Fields: timestamp prot laddr lport raddr rport status upid"
    # where man finds it: man8 of a manpath's folder
    assert (tmp_path / "man" / "man8" / "lognet.8").read_bytes() == (ROOT / "docs" / "lognet.8").read_bytes()
    which = subprocess.run(["sh", "-c", "command -v python3"], capture_output=True, text=True,
                           env={"PATH": SYSTEM_PATH}).stdout.strip()
    assert which == "/usr/bin/python3"  # the distribution's, which refuses pip install:
    managed = subprocess.run([which, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                             capture_output=True, text=True).stdout.strip()
    assert os.path.exists(os.path.join(managed, "EXTERNALLY-MANAGED"))


def test_the_readmes_cron_line_works_on_a_fresh_host(tmp_path):
    require_debian_python()
    line = re.search(r"^@reboot (.*)$", README, re.M).group(1)
    installed = tmp_path / "lognet"
    shutil.copy(ROOT / "lognet.py", installed)
    installed.chmod(0o755)  # as the install command leaves it
    folder = tmp_path / "var" / "log" / "netlog"  # not there yet, as on a fresh host
    command = line.replace("/var/log/netlog", str(folder)).replace("/usr/local/bin/lognet", str(installed))
    command = command.replace(" -i 1 ", f" -i 1 -n 1 -clog {folder}/connections.log -plog {folder}/processes.log ")
    run = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60,
                         env={"PATH": SYSTEM_PATH})  # cron's shell; the line names every program by its path
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert (folder / "lognet.err").read_text() == ""
    assert read_lines(folder / "connections.log")[0] == "#Version: 1.0"


def test_pipx_install_gives_a_working_command(tmp_path):
    require_tool("pipx", "pipx (PyPI)")
    env = dict(os.environ, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
               PIPX_MAN_DIR=str(tmp_path / "man"))
    installed = subprocess.run(["pipx", "install", "--force", str(ROOT)], capture_output=True, text=True,
                               timeout=600, env=env)
    assert installed.returncode == 0, installed.stderr
    lognet = tmp_path / "bin" / "lognet"
    version = subprocess.run([str(lognet), "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("lognet ")
    run = subprocess.run([str(lognet), "-n", "1", "-clog", tmp_path / "c.log", "-plog", tmp_path / "p.log"],
                         capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stderr) == (0, "")
    assert read_lines(tmp_path / "c.log")[2] == "#Fields: timestamp prot laddr lport raddr rport status upid"
