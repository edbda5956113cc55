"""Golden lines for the formatters and the escape rule."""

import json
import socket

import pytest

import lognet
from conftest import make_conn

TS = "2026-11-27|07:30:00"


EPOCH_TS = 1795763232.0  # 2026-11-27 07:07:12 UTC


def format_connection(conn, process, timestamp):
    """A connections.log line with the original eight fields, for an open of conn at EPOCH_TS."""
    event = lognet.ConnectionEvent("open", conn, process, EPOCH_TS, EPOCH_TS, None, "pid", EPOCH_TS)
    line = lognet.W3CFormat(lognet.CONNECTION_FIELDS, utc=True).connection(event)
    assert line.startswith("2026-11-27|07:07:12 ")
    return timestamp + line[len("2026-11-27|07:07:12"):]


@pytest.mark.parametrize("text, expected", [
    ("python3", "python3"),
    ("Web Content", "Web\\x20Content"),
    ("a|b", "a\\x7cb"),
    ("line\nbreak", "line\\x0abreak"),
    ("tab\there", "tab\\x09here"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("back\\slash", "back\\\\slash"),
    ("bad\udcffbyte", "bad\\xffbyte"),  # b"bad\xffbyte" as psutil decodes it (surrogateescape)
    ("caf\u00e9", "caf\u00e9"),
    ("c1\x85ctl", "c1\\u0085ctl"),
    ("sep\u2028x", "sep\\u2028x"),
    ("-", "\\x2d"),
    ("", "-"),
    (None, "-"),
])
def test_escape_field(text, expected):
    assert lognet.escape_field(text) == expected


def test_escaped_field_never_splits():
    hostile = "a b|c\nd\re\x00f\x7f\udc80 \u2029"
    escaped = lognet.escape_field(hostile)
    assert escaped == "a\\x20b\\x7cc\\x0ad\\x0de\\x00f\\x7f\\x80\\x20\\u2029"
    assert escaped.split() == [escaped]


def test_format_connection_established():
    conn = make_conn(("192.168.1.210", 40100), ("104.244.42.66", 443), "ESTABLISHED", pid=5545)
    process = lognet.ProcessInfo(5545, "vivaldi-bin", 1658892385.62, ("/opt/vivaldi/vivaldi-bin",))
    assert format_connection(conn, process, TS) == (
        "2026-11-27|07:30:00 TCP 192.168.1.210 40100 104.244.42.66 443 ESTABLISHED vivaldi-bin|5545|1658892385.62")


def test_format_connection_listen_and_udp_use_dashes():
    listen = make_conn(("::", 17500), family=socket.AF_INET6, pid=4312)
    udp = make_conn(("0.0.0.0", 5353), status="NONE", type=socket.SOCK_DGRAM, pid=4312)
    process = lognet.ProcessInfo(4312, "dropbox", 1658892270.25, None)
    assert format_connection(listen, process, TS) == (
        "2026-11-27|07:30:00 TCP :: 17500 - - LISTEN dropbox|4312|1658892270.25")
    assert format_connection(udp, process, TS) == (
        "2026-11-27|07:30:00 UDP 0.0.0.0 5353 - - NONE dropbox|4312|1658892270.25")


def test_unknown_owner_is_a_dash_never_lognet():
    conn = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 6000), "TIME_WAIT", pid=None, fd=-1)
    assert format_connection(conn, None, TS) == (
        "2026-11-27|07:30:00 TCP 127.0.0.1 5000 127.0.0.1 6000 TIME_WAIT -")


def test_upid_of_vanished_process_keeps_pid():
    assert lognet.format_upid(lognet.ProcessInfo(77, None, None, None)) == "-|77|-"


def test_connection_line_with_hostile_name_has_eight_fields():
    conn = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 6000), "ESTABLISHED", pid=9)
    process = lognet.ProcessInfo(9, "Web Content\n2026-11-27|00:00:00 TCP", 1.5, None)
    line = format_connection(conn, process, TS)
    assert "\n" not in line
    assert line.split(" ") == ["2026-11-27|07:30:00", "TCP", "127.0.0.1", "5000", "127.0.0.1", "6000", "ESTABLISHED",
                               "Web\\x20Content\\x0a2026-11-27\\x7c00:00:00\\x20TCP|9|1.50"]


def test_format_process_keeps_python_list_form_on_one_line():
    process = lognet.ProcessInfo(39817, "python3", 1658985795.47, ("python3", "lognet/lognet.py", "x\n#Fields: y"))
    assert lognet.format_process(process, TS) == (
        "2026-11-27|07:30:00 python3|39817|1658985795.47 ['python3', 'lognet/lognet.py', 'x\\n#Fields: y']")


def test_format_process_without_command_line():
    process = lognet.ProcessInfo(2, "kthreadd", 100.0, ())
    assert lognet.format_process(process, TS) == "2026-11-27|07:30:00 kthreadd|2|100.00 -"


def test_format_header_names_the_fields():
    epoch = 1795763232.0  # 2026-11-27 07:07:12 UTC
    assert lognet.format_header(lognet.CONNECTION_FIELDS, epoch, utc=True) == [
        "#Version: 1.0", "#Date: 2026-11-27 07:07:12",
        "#Fields: timestamp prot laddr lport raddr rport status upid"]
    assert lognet.format_header(lognet.PROCESS_FIELDS, epoch, utc=True)[2] == (
        "#Fields: timestamp upid [command_line with parameters]")


def test_format_timestamp_utc():
    assert lognet.format_timestamp(1795763232.9, utc=True) == "2026-11-27|07:07:12"


def test_a_summary_is_a_remark_of_names_and_values_escaped_like_fields():
    fmt = lognet.W3CFormat()
    process = lognet.ProcessInfo(4242, "ngi nx\n", 1795763232.73, ("nginx",))
    summary = lognet.Summary(count=9812, netns=4026531840, pid=4242, attrib="listener", prot="TCP", direction="in",
                             raddr="127.0.0.1", rport=None, lport=8080)
    assert fmt.summary(summary, process, 0.0) == (
        "#Remark: skipped count 9812 prot TCP direction in raddr 127.0.0.1 rport - lport 8080 netns 4026531840 "
        "attrib listener upid ngi\\x20nx\\x0a|4242|1795763232.73")
    line = json.loads(lognet.JsonLinesFormat().summary(summary, process, 0.0))
    assert line == {"ts": line["ts"], "event": "summary", "count": 9812, "netns": 4026531840, "pid": 4242,
                    "attrib": "listener", "prot": "TCP", "direction": "in", "raddr": "127.0.0.1", "rport": None,
                    "lport": 8080, "upid": "ngi\\x20nx\\x0a|4242|1795763232.73"}


def test_a_coverage_ratio_is_rounded_once():
    # 8 of 42 is 0.1905 to four decimals (JSON's), which would read 0.191 rounded again to three
    fmt = lognet.W3CFormat()
    stats = lognet.Stats(closes=None, closes_by_netns={}, close_events_read=0, pauses=0, tcp_opens=42, tcp_seen=8,
                         max_cpu=None, shed_spells=0, shedding=None, polls=1, avg_poll_ms=1.0, late=0, dropped=0,
                         held=0)
    assert fmt.stats(stats, 0.0).startswith("#Remark: coverage 0.190 (kernel TCP opens 42, seen 8); ")
    assert lognet.stats_object(stats)["coverage"] == 0.1905
    closes = {"tcp": lognet.CloseCounts(with_process=8, without=34)}
    assert lognet.close_coverage(closes)["tcp"]["ratio"] == 0.1905
    remark = fmt.stats(stats._replace(closes=closes), 0.0)
    assert remark.startswith("#Remark: coverage tcp 0.190 (closed 42, with process 8, without 34); ")


@pytest.mark.parametrize("fields", [("prot", "laddr", "lport", "raddr", "rport", "status"),
                                    ("status", "event", "raddr", "prot", "lport", "attrib", "laddr"), ("rport",)])
def test_a_lines_own_columns_write_what_the_general_rule_writes(fields):
    """The socket's own fields are written in one step, for speed, in runs of any order: each
    writes what format_field() writes of the field's value, whatever the value, and a hostile
    value kept escaped writes the same the second time."""
    conns = [make_conn(("127.0.0.1", 5000), ("10.0.0.1", 443), "ESTABLISHED", pid=9),
             make_conn(("::", 53), status="NONE", type=socket.SOCK_DGRAM, family=socket.AF_INET6, pid=9),
             make_conn(("a b|c", 0), ("-", 1), "odd status", pid=9),
             lognet.Connection(-1, socket.AF_INET, 99, (), (), "", None)]
    fmt = lognet.W3CFormat(fields)
    for conn in conns + conns:
        event = lognet.ConnectionEvent("open", conn, None, EPOCH_TS, EPOCH_TS, None, "pid", EPOCH_TS)
        assert fmt.connection(event) == " ".join(lognet.format_field(lognet.EVENT_VALUES[field](event))
                                                 for field in fields)


def test_a_pid_that_is_another_process_by_now_gets_its_own_upid():
    fmt = lognet.W3CFormat(("upid",))
    conn = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 6000), "ESTABLISHED", pid=77)
    processes = (lognet.ProcessInfo(77, "first", 100.0, None), lognet.ProcessInfo(77, "second", 200.0, None))
    lines = [fmt.connection(lognet.ConnectionEvent("open", conn, process, EPOCH_TS, EPOCH_TS, None, "pid", EPOCH_TS))
             for process in processes]
    assert lines == ["first|77|100.00", "second|77|200.00"]


def test_the_statistics_name_the_flood_groups_isolated():
    stats = lognet.Stats({"tcp": lognet.CloseCounts(with_process=1, skipped=5)}, {}, 6, 0, None, 0, 10.0, 1, None, 3,
                         1.0, 0, 0, 0, ("on", 0), ("nginx 127.0.0.1:18383 (12,700/s)",))
    line = lognet.W3CFormat().stats(stats, EPOCH_TS)
    assert "; shedding: nginx 127.0.0.1:18383 (12,700/s);" in line
    assert lognet.stats_object(stats)["isolated"] == ["nginx 127.0.0.1:18383 (12,700/s)"]
    assert "isolated" not in lognet.stats_object(stats._replace(isolated=()))
