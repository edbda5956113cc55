"""Outputs for people and pipelines: JSON Lines, stdout, syslog through real rsyslog
instances, a least-privilege run with capabilities, the status line in a real
pseudo-terminal, and installation with pipx."""

import json
import os
import pty
import pwd
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import (
    ROOT,
    data_lines,
    lognet_command,
    read_lines,
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
    connections = [o for o in objects if o["event"] != "stats"]
    assert [o["event"] for o in objects[len(connections):]] == ["stats"]  # one, at exit
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
                         "duration": None, "txbytes": None, "rxbytes": None}
    ours = [p for p in processes if p["pid"] == h.pid]
    assert len(ours) == 1
    assert ISO.match(ours[0].pop("ts"))
    assert ours[0] == {"upid": upid, "pid": h.pid, "name": "lnjson", "create_time": process.create_time(),
                       "cmdline": h.cmdline, "exe": os.path.realpath(sys.executable),
                       "username": pwd.getpwuid(os.getuid()).pw_name}


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


def test_closed_pipe_ends_lognet_quietly(tmp_path, holder):
    h = holder("--name", "lnpipe")
    proc = subprocess.Popen(lognet_command("-i", "0.1", "-p", "tcp", "-clog", "-", "-plog", tmp_path / "p.log"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = [proc.stdout.readline() for _ in range(3)]  # what `| head -3` reads
        assert first[0] == b"#Version: 1.0\n"
        proc.stdout.close()
        h.send("open")  # something new to write, into the closed pipe
        out_status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out_status == 0
    assert proc.stderr.read() == b""


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


# The snippets of the README's "Many hosts" section: a host forwards lognet's events, a collector files them.
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
        message = collector.recv(65536).decode()
    # local3 (19) * 8 + informational (6) = 158; RFC 5424 version 1, an ISO timestamp, the host name
    head = re.match(r"^<158>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (\S+) lognet (\d+) process - ",
                    message)
    assert head and head.group(1) == socket.gethostname()
    assert message[head.end():] in data_lines(tmp_path / "p.log")


@pytest.mark.parametrize("address, message", [
    ("ftp://host:1", "unknown transport 'ftp': use udp:// or tcp://"),
    ("host:99999", "not a socket path or host:port: 'host:99999'"),
    (":514", "not a socket path or host:port: ':514'"),
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
    assert (result.returncode, result.stderr) == (0, "")
    owners = [line.split(" ")[7] for line in data_lines(home / "c.log") if f" {h.info['port']} - - LISTEN " in line]
    assert owners == [upid_of(h.pid, "lnrootcap") if sees_owner else "-"]
    assert os.stat(home / "c.log").st_uid == nobody.uid


# ---------------------------------------------------------------- status line

def run_in_pty(*args, timeout=30):
    """Run lognet with stderr on a real pseudo-terminal; return what the terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(lognet_command(*args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=slave)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=10) == 0
    return shown.decode()


def test_status_line_on_a_terminal(tmp_path):
    clog, plog = tmp_path / "c.log", tmp_path / "p.log"
    shown = run_in_pty("-i", "0.2", "-n", "12", "-clog", clog, "-plog", plog)
    frames = [frame for frame in shown.split("\r\x1b[K") if frame]
    # 12 polls 0.2 s apart take 2.2 s: redrawn at most once a second (2 or 3 times), and once at exit
    assert 3 <= len(frames) <= 4, frames
    for frame in frames:
        assert re.fullmatch(rf"lognet: \d+ polls, \d+ live connections, \d+ lines written, last poll \d+ ms"
                            rf" -> {clog} {plog}\s*", frame), frame
    assert frames[0].startswith("lognet: 1 polls, ")
    assert frames[-1].startswith("lognet: 12 polls, ")
    assert shown.endswith("\n")


def test_quiet_terminal_shows_nothing(tmp_path):
    assert run_in_pty("-q", "-i", "0.2", "-n", "6", "-clog", tmp_path / "c.log", "-plog", tmp_path / "p.log") == ""


# ---------------------------------------------------------------- installation

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
