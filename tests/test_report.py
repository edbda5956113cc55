"""lognet report: the logs read back as one row per connection.

The end-to-end tests run lognet on a known workload, a client process with a distinctive
command line that sends 1,000 bytes to a server on 127.0.0.1 and receives 500, and read
its logs back: W3C and JSON Lines, rotated and gzipped, and with a #Fields change within
a file. The joins, sums and filters are checked on generated logs with known totals.
"""

from __future__ import annotations

import gzip
import json
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from examples import on_terminal

import lognet
from conftest import LOGNET, wait_for

# Connects to argv[1], sends 1,000 bytes, reads 500, holds the connection a moment, closes first.
CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"x" * 1000)
got = b""
while len(got) < 500:
    got += s.recv(500 - len(got))
time.sleep(0.6)
s.close()
"""
LIFECYCLE = "+event,duration,direction,attrib,txbytes,rxbytes,user"


def report(*args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(LOGNET), "report", *map(str, args)], capture_output=True,
                            text=True, timeout=120, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def jsonl_rows(*args) -> list[dict]:
    return [json.loads(line) for line in report("--format", "jsonl", *args).stdout.splitlines()]


class Server:
    """A server on 127.0.0.1: reads 1,000 bytes from each client and sends 500, in a thread."""

    def __init__(self):
        # A port no socket talks to yet: earlier tests' TIME_WAIT ends to a port now free are
        # real connections to it, with rows of their own.
        for attempt in range(20):
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.port = self.listener.getsockname()[1]
            if attempt == 19 or not any(conn.raddr and conn.raddr[1] == self.port
                                        for conn in psutil.net_connections("tcp")):
                break
            self.listener.close()
        self.peers: list[int] = []  # each client's port, as accepted
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for _ in range(10):  # bounded: a test's clients
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                self.peers.append(conn.getpeername()[1])
                got = b""
                while len(got) < 1000:
                    got += conn.recv(1000 - len(got))
                conn.sendall(b"y" * 500)
                conn.recv(1)  # the client's close

    def client(self) -> tuple[int, int]:
        """Run one client to its end; its pid and port."""
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(self.port), "lnreport-client"])
        assert proc.wait(timeout=30) == 0
        return proc.pid, self.peers[-1]

    def close(self):
        self.listener.close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def run_client(tmp_path, background, marker, server, args) -> int:
    """lognet with args while a client runs, once its first poll has logged the marker (again,
    where its log goes on); the client's pid, once the log has its connection's end."""
    clog = tmp_path / "connections.log"

    def marked() -> int:
        return sum(clog.read_text().count(text) for text in marker.texts) if clog.exists() else 0

    before = marked()
    ln = background(*args)
    try:
        wait_for(lambda: marked() > before)
        pid, peer = server.client()
        wait_for(lambda: any(end_of(line, peer, server.port) for line in clog.read_text().splitlines()))
    finally:
        assert ln.stop() == 0
    return pid


def end_of(line: str, peer: int, port: int) -> bool:
    """Whether a line tells the end of the client's connection from peer to port: a close
    line, or with the original fields its TIME_WAIT."""
    if line.startswith("{"):
        return f'"lport":{peer},' in line and f'"rport":{port},' in line and '"event":"close"' in line
    return f" 127.0.0.1 {peer} 127.0.0.1 {port} " in line and (" TIME_WAIT " in line or " close " in line)


def check_client_row(rows: list[dict], pid: int) -> None:
    """The one row of the client: its process, command line, a duration, and its bytes."""
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["pid"], row["txbytes"], row["rxbytes"], row["direction"], row["prot"]) == (pid, 1000, 500, "out", "TCP")
    assert row["name"].startswith("python") and "lnreport-client" in row["cmdline"]
    assert row["closed"] is not None and 0.4 <= row["duration"] < 5


@pytest.mark.parametrize("fmt", ["w3c", "jsonl"])
def test_the_client_of_a_known_workload_is_one_row_with_its_process_and_bytes(tmp_path, background, marker, server,
                                                                               fmt):
    args = ["-i", "0.2", "-p", "tcp"] + (["--fields", LIFECYCLE] if fmt == "w3c" else ["--format", "jsonl"])
    pid = run_client(tmp_path, background, marker, server, args)
    logs = [tmp_path / "connections.log", tmp_path / "processes.log"]
    check_client_row(jsonl_rows("--raddr", "127.0.0.1", "--port", server.port, *logs), pid)
    # the table: a header, and the same row
    lines = report("--raddr", "127.0.0.1", "--port", server.port, *logs).stdout.splitlines()
    assert len(lines) == 2 and lines[0].split()[:2] == ["FIRST", "SEEN"]
    assert f" {pid} " in lines[1] and " 1000 " in lines[1] and " 500 " in lines[1] and "lnreport-client" in lines[1]
    # csv: every field, the command line whole
    csv_lines = report("--format", "csv", "--raddr", "127.0.0.1", "--port", server.port, *logs).stdout.splitlines()
    assert csv_lines[0] == ",".join(lognet.REPORT_COLUMNS) and len(csv_lines) == 2 and "lnreport-client" in csv_lines[1]


def test_a_rotated_gzipped_log_and_the_current_one_are_read_as_one(tmp_path, background, marker, server):
    clog = tmp_path / "connections.log"
    first = run_client(tmp_path, background, marker, server, ["-i", "0.2", "-p", "tcp", "--fields", LIFECYCLE])
    with open(clog, "rb") as f, gzip.open(tmp_path / "connections.log.2.gz", "wb") as rotated:
        rotated.write(f.read())
    clog.unlink()
    second = run_client(tmp_path, background, marker, server, ["-i", "0.2", "-p", "tcp", "--fields", LIFECYCLE])
    clog.rename(tmp_path / "connections.log.1")
    third = run_client(tmp_path, background, marker, server, ["-i", "0.2", "-p", "tcp", "--fields", LIFECYCLE])
    assert lognet.rotated_logs(str(clog)) == [str(tmp_path / name) for name in (
        "connections.log.2.gz", "connections.log.1", "connections.log")]
    rows = jsonl_rows("--raddr", "127.0.0.1", "--port", server.port, *lognet.rotated_logs(str(clog)),
                      tmp_path / "processes.log")
    assert [row["pid"] for row in rows] == [first, second, third]
    for pid in (first, second, third):
        check_client_row([row for row in rows if row["pid"] == pid], pid)


def test_a_fields_change_within_a_file_is_followed(tmp_path, background, marker, server):
    """lognet restarted with other --fields appends to the same file: the first client's row
    comes from its status lines (no bytes), the second's from its lifecycle lines."""
    first = run_client(tmp_path, background, marker, server, ["-i", "0.2", "-p", "tcp"])
    second = run_client(tmp_path, background, marker, server, ["-i", "0.2", "-p", "tcp", "--fields", LIFECYCLE])
    text = (tmp_path / "connections.log").read_text()
    assert text.count("#Fields:") == 2
    rows = jsonl_rows("--raddr", "127.0.0.1", "--port", server.port, tmp_path / "connections.log")
    assert [row["pid"] for row in rows] == [first, second]
    assert (rows[0]["txbytes"], rows[0]["status"], rows[0]["closed"] is not None) == (None, "TIME_WAIT", True)
    check_client_row(rows[1:], second)


# ---------------------------------------------------------------- generated logs: joins, sums, filters

HEADER = "#Version: 1.0\n#Date: 2026-12-05 08:00:00\n#Fields: {}\n"
FIELDS = "timestamp prot laddr lport raddr rport status upid event duration direction attrib txbytes rxbytes rhost"


def stamp(second: int) -> str:
    return time.strftime("%Y-%m-%d|%H:%M:%S", time.localtime(1796457600 + second))


def generated_log(path: Path, connections: int, seed: int = 7) -> dict[tuple[str, str], list[int]]:
    """A W3C log of connections that open and close, interleaved, with random bytes; return
    the true totals by (process, peer): [connections, txbytes, rxbytes]."""
    rng = random.Random(seed)
    totals: dict[tuple[str, str], list[int]] = {}
    opened = []
    lines = [HEADER.format(FIELDS)]
    for n in range(connections):
        name = rng.choice(["curl", "wget", "python3", "ssh\\x20agent"])
        peer = rng.choice(["192.0.2.10", "192.0.2.11", "2001:db8::1", "198.51.100.7"])
        upid = f"{name}|{1000 + n % 50}|1796457000.{n % 100:02d}"
        key = ("TCP", "10.0.0.5", str(30000 + n), peer, "443")
        lines.append(f"{stamp(n)} {' '.join(key)} ESTABLISHED {upid} open - out pid - - site.test\n")
        opened.append((key, upid, n, rng.randrange(0, 10**6), rng.randrange(0, 10**6), name, peer))
        while opened and (rng.random() < 0.5 or n == connections - 1):
            key, upid, start, tx, rx, name, peer = opened.pop(rng.randrange(len(opened)))
            lines.append(f"{stamp(n + 1)} {' '.join(key)} TIME_WAIT {upid} close {n + 1 - start} out orphan "
                         f"{tx} {rx} site.test\n")
            group = totals.setdefault((name, peer), [0, 0, 0])
            group[0] += 1
            group[1] += tx
            group[2] += rx
    path.write_text("".join(lines))
    return totals


def test_summaries_by_process_and_peer_sum_exactly(tmp_path):
    log = tmp_path / "connections.log"
    totals = generated_log(log, 3000)
    found = {(row["name"], row["peer"]): [row["connections"], row["txbytes"], row["rxbytes"]]
             for row in jsonl_rows("--by", "process,peer", log)}
    assert found == {key: value for key, value in totals.items()}
    assert sum(value[0] for value in found.values()) == 3000
    by_peer = {row["peer"]: row["connections"] for row in jsonl_rows("--by", "peer", log)}
    assert by_peer == {peer: sum(v[0] for (_, p), v in totals.items() if p == peer) for peer in by_peer}


def test_filters_combine(tmp_path):
    log = tmp_path / "connections.log"
    generated_log(log, 400)
    rows = jsonl_rows(log)
    assert len(rows) == 400
    cases = {("--raddr", "192.0.2.0/24"): lambda r: r["raddr"].startswith("192.0.2."),
             ("--raddr", "2001:db8::1"): lambda r: r["raddr"] == "2001:db8::1",
             ("--process", "ssh\\x20agent"): lambda r: r["name"] == "ssh\\x20agent",
             ("--pid", "1007"): lambda r: r["pid"] == 1007,
             ("--rhost", "test"): lambda r: True,
             ("--rhost", "other.test"): lambda r: False,
             ("--lport", "30005"): lambda r: r["lport"] == 30005,
             ("--direction", "in"): lambda r: False,
             ("--until", "2020-01-01 00:00:00"): lambda r: False}
    for args, keeps in cases.items():
        assert jsonl_rows(*args, log) == [r for r in rows if keeps(r)], args
    both = jsonl_rows("--raddr", "192.0.2.10", "--process", "curl", log)
    assert both and both == [r for r in rows if r["raddr"] == "192.0.2.10" and r["name"] == "curl"]


def test_since_a_duration_ago_keeps_what_was_open_since(tmp_path):
    now = int(time.time())
    log = tmp_path / "connections.log"
    lines = [HEADER.format(FIELDS)]
    for n, age in enumerate((7200, 3000, 60)):  # opened and closed this long ago
        at = time.strftime("%Y-%m-%d|%H:%M:%S", time.localtime(now - age))
        lines.append(f"{at} TCP 10.0.0.5 {40000 + n} 192.0.2.10 443 TIME_WAIT curl|{n + 1}|1.00 close 0 out pid "
                     "1 1 -\n")
    log.write_text("".join(lines))
    assert [r["pid"] for r in jsonl_rows("--since", "1h", log)] == [2, 3]
    assert [r["pid"] for r in jsonl_rows("--until", "90m", log)] == [1]


def test_bad_lines_are_skipped_and_counted_in_one_warning(tmp_path):
    log = tmp_path / "connections.log"
    generated_log(log, 10)
    header, data = log.read_text().split("#Fields: " + FIELDS + "\n")
    unknown = ("#Fields: timestamp prot laddr lport raddr rport status upid frobnicate\n"
               "2026-12-05|08:00:00 TCP 10.0.0.5 1 192.0.2.99 1 ESTABLISHED x|1|1.00 zz\n")
    lines = data.splitlines(keepends=True)
    log.write_text(header + unknown + "#Fields: " + FIELDS + "\n" + "".join(lines[:5])
                   + "garbage that is no line of lognet's\n"
                   + "2026-12-05|08:00:00 TCP 10.0.0.5 5 192.0.2.98 443 ESTABLISHED y|2|1.00\n"  # 8 of 15 fields
                   + "".join(lines[5:]) + lines[-1][:30])  # and a last line cut short
    result = report("--format", "jsonl", log)
    assert len(result.stdout.splitlines()) == 11  # the ten, and the line under the unknown field's header
    assert result.stderr == ("lognet: warning: report skipped 2 corrupt lines, 1 fields unknown to lognet, "
                             "1 lines cut short\n")


def test_missing_unreadable_and_foreign_files_are_one_line_errors(tmp_path):
    missing = report(tmp_path / "nothing.log", check=False)
    assert (missing.returncode, missing.stderr) == (2, f"lognet: error: {tmp_path}/nothing.log: no such file\n")
    unreadable = report(tmp_path, check=False)  # a folder
    assert unreadable.returncode == 1 and unreadable.stderr.startswith(f"lognet: error: {tmp_path}: cannot read")
    assert "Traceback" not in unreadable.stderr and unreadable.stderr.count("\n") == 1
    foreign = tmp_path / "notes.txt"
    foreign.write_text("dear diary\n")
    result = report(foreign, check=False)
    assert (result.returncode, result.stderr) == (1, f"lognet: error: {foreign}: not a lognet log (no #Fields "
                                                     "header, no JSON object)\n")
    bad = report("--raddr", "300.1.2.3", foreign, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not an address" in bad.stderr


def test_a_closed_pipe_ends_the_report_quietly(tmp_path):
    log = tmp_path / "connections.log"
    generated_log(log, 5000)
    result = subprocess.run(f"{sys.executable} {LOGNET} report --format tsv {log} | head -2", shell=True,
                            capture_output=True, text=True, timeout=120)
    assert len(result.stdout.splitlines()) == 2 and result.stderr == ""


def test_on_a_terminal_the_table_fits_its_width(tmp_path):
    log = tmp_path / "connections.log"
    generated_log(log, 50)
    lines = on_terminal([sys.executable, str(LOGNET), "report", str(log)], 100).splitlines()
    assert len(lines) == 51 and all(len(line) <= 100 for line in lines), max(map(len, lines))
    assert "PROCESS" in lines[0] and "COMMAND LINE" in lines[0]


def test_json_lines_names_are_printed_escaped_as_the_w3c_log_writes_them(tmp_path):
    log = tmp_path / "connections.log"
    close = {"ts": "2026-12-05T08:00:01.000+00:00", "event": "close", "prot": "TCP", "family": 4,
             "laddr": "10.0.0.5", "lport": 40000, "raddr": "192.0.2.10", "rport": 443, "status": "TIME_WAIT",
             "pid": 42, "name": "evil\n2026-12-05|08:00:00 x", "create_time": 1.0,
             "upid": "evil\\x0a2026-12-05\\x7c08:00:00\\x20x|42|1.00", "user": "root", "direction": "out",
             "attrib": "pid", "firstseen": "2026-12-05T08:00:00.000+00:00", "duration": 1.0, "txbytes": 10,
             "rxbytes": 20, "netns": None, "container": None, "rhost": "a b.test"}
    log.write_text(json.dumps(close) + "\n")
    lines = report(log).stdout.splitlines()
    assert len(lines) == 2 and "evil\\x0a2026-12-05\\x7c08:00:00\\x20x" in lines[1] and "a\\x20b.test" in lines[1]
    row, = jsonl_rows(log)
    assert (row["name"], row["pid"], row["rhost"], row["duration"]) == (
        "evil\\x0a2026-12-05\\x7c08:00:00\\x20x", 42, "a\\x20b.test", 1.0)
