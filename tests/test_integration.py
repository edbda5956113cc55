"""lognet.py against real processes holding real loopback sockets."""

import re
import subprocess
import time

from conftest import data_lines, lognet_command, read_lines, upid_of, wait_for

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d\|\d\d:\d\d:\d\d$")
CONNECTION_HEADER = "#Fields: timestamp prot laddr lport raddr rport status upid"
PROCESS_HEADER = "#Fields: timestamp upid [command_line with parameters]"


def fields_of(lines, port, client, *udp_ports):
    """The fields after the timestamp of the lines of a holder's sockets: its listener and UDP
    sockets, and both ends of its pair (an old TIME_WAIT that reuses one of the port numbers
    with another peer is not one of them)."""
    own = {(str(p), "-") for p in (port, *udp_ports)} | {(str(port), str(client)), (str(client), str(port))}
    return [line.split(" ")[1:] for line in lines if (line.split(" ")[3], line.split(" ")[5]) in own]


def test_real_process_lines_status_change_and_no_duplicates(tmp_path, holder, engine):
    h = holder("--name", "lnholder", "--udp6", "lognet-integration-tag")
    clog, plog = tmp_path / "connections.log", tmp_path / "processes.log"
    started = time.time()
    lognet = subprocess.Popen(lognet_command("--engine", engine, "-i", "0.2", "-n", "25", "-clog", clog, "-plog", plog),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port, client = h.info["port"], h.info["client_port"]
        wait_for(lambda: clog.exists() and f" {client} 127.0.0.1 {port} ESTABLISHED " in clog.read_text())
        assert h.send("close") == "closed"
        out, err = lognet.communicate(timeout=30)
    finally:
        lognet.kill()
    assert (lognet.returncode, out, err) == (0, "", "")

    upid = upid_of(h.pid, "lnholder")
    lines = data_lines(clog)
    ours = fields_of(lines, port, client, h.info["udp_port"], h.info["udp6_port"])
    # The first poll logs every socket once; their order within a poll follows the random ports.
    assert sorted(ours[:5]) == sorted([
        ["TCP", "127.0.0.1", str(port), "-", "-", "LISTEN", upid],
        ["TCP", "127.0.0.1", str(port), "127.0.0.1", str(client), "ESTABLISHED", upid],
        ["TCP", "127.0.0.1", str(client), "127.0.0.1", str(port), "ESTABLISHED", upid],
        ["UDP", "127.0.0.1", str(h.info["udp_port"]), "-", "-", "NONE", upid],
        ["UDP", "::1", str(h.info["udp6_port"]), "-", "-", "NONE", upid],
    ])
    # After "close": the closed end has no owner any more (never lognet's), the other end waits to close.
    assert ours[5:] == [
        ["TCP", "127.0.0.1", str(client), "127.0.0.1", str(port), "FIN_WAIT2", "-"],
        ["TCP", "127.0.0.1", str(port), "127.0.0.1", str(client), "CLOSE_WAIT", upid],
    ]
    for line in lines:
        assert len(line.split(" ")) == 8, line
        assert TIMESTAMP.match(line.split(" ")[0])
    assert len(lines) == len(set(lines)), "a connection was logged twice"

    holder_lines = [line for line in data_lines(plog) if f"|{h.pid}|" in line]
    assert [line.split(" ", 1)[1] for line in holder_lines] == [f"{upid} {h.cmdline!r}"]
    assert read_lines(clog)[:3][2] == CONNECTION_HEADER
    assert read_lines(plog)[:3][2] == PROCESS_HEADER
    first = time.mktime(time.strptime(lines[0].split(" ")[0], "%Y-%m-%d|%H:%M:%S"))
    assert started - 1 <= first <= time.time()


def test_restart_appends_a_second_header_block(tmp_path, holder, engine):
    h = holder("--name", "lnrestart")
    clog, plog = tmp_path / "connections.log", tmp_path / "processes.log"
    for _ in range(2):
        result = subprocess.run(lognet_command("--engine", engine, "-n", "1", "-p", "tcp", "-clog", clog,
                                               "-plog", plog), capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stderr) == (0, "")
    for path, fields in ((clog, CONNECTION_HEADER), (plog, PROCESS_HEADER)):
        lines = read_lines(path)
        headers = [i for i, line in enumerate(lines) if line.startswith("#")]
        assert [lines[i] for i in headers][0::3] == ["#Version: 1.0"] * 2
        assert [lines[i] for i in headers][2::3] == [fields] * 2
        assert headers[:3] == [0, 1, 2] and len(headers) == 6
    # each run logs the live connections once, so the holder's listener appears once per run
    listen = [line for line in data_lines(clog) if f" {h.info['port']} - - LISTEN " in line]
    assert len(listen) == 2
    assert len([line for line in data_lines(plog) if f"|{h.pid}|" in line]) == 2
