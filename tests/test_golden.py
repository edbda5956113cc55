"""A fixed, recorded sequence of snapshots through the tracker and both formats,
compared byte for byte with tests/golden.txt.

The golden file was written by this scenario before lognet's record types were
rebuilt; it pins every line lognet writes for the same input. To see a change
on purpose, run `python3 tests/test_golden.py --write` and read the diff.
"""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import lognet
from conftest import FakeClock, ScriptedSource, make_conn

GOLDEN = Path(__file__).resolve().parent / "golden.txt"
EPOCH = 1795763232.0  # 2026-11-27 07:07:12 UTC

SRV = lognet.ProcessInfo(10, "srv", 1000.0, ("srv", "--port", "80"), "/usr/sbin/srv", "www-data")
CLI = lognet.ProcessInfo(11, "curl", 1001.25, ("curl", "https://example.test/a b"), "/usr/bin/curl", "alice")
HOSTILE = lognet.ProcessInfo(12, "Web Content\n2026|x", 1002.5, ("x\n#Fields: y", "caf\u00e9", "\udcff"), None, None)
REUSED = lognet.ProcessInfo(11, "ssh", 1100.0, ("ssh", "-p", "22", "host"), "/usr/bin/ssh", "bob")

LISTEN = make_conn(("127.0.0.1", 80), pid=10, fd=3)
LISTEN6 = make_conn(("::", 443), pid=10, fd=4, family=socket.AF_INET6)
SERVER_END = make_conn(("127.0.0.1", 80), ("127.0.0.1", 5000), "ESTABLISHED", pid=10, fd=5)
CLIENT_END = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=3)
OUT = make_conn(("10.0.0.5", 40100), ("93.184.215.14", 443), "SYN_SENT", pid=11, fd=4)
PRIVATE = make_conn(("10.0.0.5", 40200), ("192.168.1.9", 22), "ESTABLISHED", pid=12, fd=7)
MAPPED = make_conn(("::ffff:10.0.0.5", 40300), ("::ffff:172.16.0.1", 8443), "ESTABLISHED", pid=12, fd=8,
                   family=socket.AF_INET6)
UDP = make_conn(("0.0.0.0", 5353), status="NONE", type=socket.SOCK_DGRAM, pid=12, fd=9)
UDP6_PEER = make_conn(("::1", 40400), ("::1", 53), "NONE", type=socket.SOCK_DGRAM, family=socket.AF_INET6,
                      pid=11, fd=5)
HIDDEN = make_conn(("0.0.0.0", 22), pid=None, fd=-1)
LATE_OWNER = make_conn(("127.0.0.1", 5100), ("127.0.0.1", 80), "ESTABLISHED", pid=None, fd=-1)


def ownerless(conn, status):
    return conn._replace(status=status, pid=None, fd=-1)


# One snapshot per poll, and the pids that are running at that poll.
SNAPSHOTS = [
    ([LISTEN, LISTEN6, HIDDEN, UDP, SERVER_END, PRIVATE], {10, 12}),
    ([LISTEN, LISTEN6, HIDDEN, UDP, SERVER_END, PRIVATE, CLIENT_END, OUT, MAPPED, LATE_OWNER], {10, 11, 12}),
    ([LISTEN, LISTEN6, HIDDEN, UDP, SERVER_END._replace(status="CLOSE_WAIT"), PRIVATE, ownerless(CLIENT_END,
      "FIN_WAIT2"), OUT._replace(status="ESTABLISHED"), MAPPED, LATE_OWNER._replace(pid=11, fd=6), UDP6_PEER],
     {10, 11, 12}),
    ([LISTEN, LISTEN6, HIDDEN, UDP, ownerless(CLIENT_END, "TIME_WAIT"), OUT._replace(status="ESTABLISHED"),
      LATE_OWNER._replace(pid=11, fd=6), UDP6_PEER], {10, 11}),
    ([LISTEN, LISTEN6, HIDDEN, OUT._replace(status="ESTABLISHED")], {10, 11}),
    ([LISTEN, HIDDEN], {10}),
    ([LISTEN, HIDDEN, OUT._replace(status="ESTABLISHED", fd=9)], {10, 11}),
]
PROCESSES = [SRV, CLI, HOSTILE]
TCP_OPENS = [100, 107, 109]  # the kernel's counter: at the first poll, at the remark, at exit

RUNS = {
    "w3c default fields": {},
    "w3c every field, utc, -i 0.2": {"utc": True, "interval": 0.2, "fields": lognet.CONNECTION_FIELDS + (
        "event", "duration", "direction", "family", "user", "exe", "attrib", "firstseen", "rhost")},
    "w3c chosen fields": {"fields": ("upid", "lport", "event", "duration", "attrib")},
    "w3c filters, tcp": {"omit_self_conns": True, "omit_privnet_conns": True, "kind": "tcp",
                         "fields": lognet.CONNECTION_FIELDS + ("event", "attrib")},
    "jsonl, utc": {"format": "jsonl", "utc": True, "interval": 1.0},
    "jsonl, local time, -i 0.05": {"format": "jsonl", "interval": 0.05},
}


def render(tmp_path: Path, name: str, settings: dict) -> str:
    """Both logs of one run of the scenario, with the directives' #Date made stable."""
    clock = FakeClock()
    interval = settings.get("interval", lognet.DEFAULT_INTERVAL)
    snapshots = [snapshot for snapshot, _ in SNAPSHOTS]
    source = ScriptedSource(snapshots, {p.pid: p for p in PROCESSES})
    source.opens = list(TCP_OPENS)
    source.reuse = {6: REUSED}  # from the seventh poll, pid 11 is another process
    source.running_by_poll = [running for _, running in SNAPSHOTS]
    # curl asked for the address it connects to; someone else's answer named the private one
    source.names = {(11, "93.184.215.14"): "www.example.test", (12, "93.184.215.14"): "cdn.example.test",
                    (None, "192.168.1.9"): "nas.home.test"}
    folder = tmp_path / name.replace(" ", "_").replace(",", "")
    folder.mkdir()
    config = lognet.Config(connections_log=str(folder / "c.log"), processes_log=str(folder / "p.log"),
                           count=len(SNAPSHOTS), stats_interval=interval * 3.5, **settings)
    poller = lognet.Poller(config, source, lognet.open_outputs(config),
                           now=lambda: EPOCH + clock() - 100.0, clock=clock)
    lognet.run(config, poller, clock=clock, sleep=clock.sleep)
    poller.finish()
    poller.close()
    logs = "".join(f"== {name}: {stream}\n{(folder / log).read_text()}"
                   for stream, log in (("connections", "c.log"), ("processes", "p.log")))
    # The sinks date their headers by the real clock; the formatter's #Date is pinned in test_format.py.
    # The host's netns is this machine's.
    logs = re.sub(r'^\{"ts":"[^"]*","event":"remark","remark":"host netns \d+ ',
                  '{"ts":"(when the log was opened)","event":"remark","remark":"host netns N ', logs, flags=re.M)
    return re.sub(r"^#Date: .*$", "#Date: (when the log was opened)", logs, flags=re.M)


def render_all(tmp_path: Path) -> str:
    return "".join(render(tmp_path, name, settings) for name, settings in RUNS.items())


def test_every_line_matches_the_golden_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "America/St_Johns")  # a half-hour offset: local time is really used
    import time
    time.tzset()
    try:
        assert render_all(tmp_path) == GOLDEN.read_text(encoding="utf-8")
    finally:
        monkeypatch.undo()
        time.tzset()


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import os
    import tempfile
    import time
    os.environ["TZ"] = "America/St_Johns"
    time.tzset()
    GOLDEN.write_text(render_all(Path(tempfile.mkdtemp())), encoding="utf-8")
    print(f"wrote {GOLDEN}")
