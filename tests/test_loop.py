"""The poll loop with a scripted source and a fake clock."""

import socket
import time

import lognet
from conftest import FakeClock, ScriptedSource, data_lines, make_conn, read_lines

PROC = lognet.ProcessInfo(10, "srv", 1000.0, ("srv", "--port", "80"))
LISTEN = make_conn(("127.0.0.1", 80), pid=10, fd=3)
ESTAB = make_conn(("127.0.0.1", 80), ("127.0.0.1", 5000), "ESTABLISHED", pid=10, fd=4)
TIME_WAIT = make_conn(("127.0.0.1", 80), ("127.0.0.1", 5000), "TIME_WAIT", pid=None, fd=-1)
PRIVATE = make_conn(("127.0.0.1", 81), ("10.0.0.1", 443), "ESTABLISHED", pid=10, fd=5)


def make_poller(tmp_path, source, clock=time.monotonic, now=lambda: 1795763232.0, budget=None, **kw):
    config = lognet.Config(connections_log=str(tmp_path / "c.log"), processes_log=str(tmp_path / "p.log"), **kw)
    return config, lognet.Poller(config, source, lognet.open_outputs(config), now=now, clock=clock, budget=budget)


def test_loop_logs_new_and_changed_once(tmp_path):
    clock = FakeClock()
    source = ScriptedSource([[LISTEN], [LISTEN, ESTAB], [LISTEN, ESTAB], [LISTEN, TIME_WAIT]], {10: PROC})
    config, poller = make_poller(tmp_path, source, count=4, interval=2.0, utc=True)
    assert lognet.run(config, poller, clock=clock, sleep=clock.sleep) == 4
    poller.close()
    ts = "2026-11-27|07:07:12"
    assert data_lines(tmp_path / "c.log") == [
        f"{ts} TCP 127.0.0.1 80 - - LISTEN srv|10|1000.00",
        f"{ts} TCP 127.0.0.1 80 127.0.0.1 5000 ESTABLISHED srv|10|1000.00",
        f"{ts} TCP 127.0.0.1 80 127.0.0.1 5000 TIME_WAIT -",
    ]
    assert data_lines(tmp_path / "p.log") == [f"{ts} srv|10|1000.00 ['srv', '--port', '80']"]
    assert source.looked_up == [[10], [10], [], []]  # only owners of lines, never an unknown owner
    assert clock.sleeps == [2.0, 2.0, 2.0]  # no sleep after the last poll


def test_a_polls_lines_are_in_time_order(tmp_path):
    # Found by a watcher between two polls, and gone into TIME_WAIT (ownerless) by the second:
    # its open comes first, though ownerless lines of one time come before owned ones.
    client = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=10, fd=6)
    waiting = client._replace(status="TIME_WAIT", pid=None, fd=-1)
    source = ScriptedSource([[LISTEN], [LISTEN, waiting]], {10: PROC})
    source.arrivals = {1: [(client, 1795763233.5)]}
    times = iter([1795763232.0, 1795763234.0])
    config, poller = make_poller(tmp_path, source, count=2, interval=1.0, utc=True, now=lambda: next(times))
    clock = FakeClock()
    lognet.run(config, poller, clock=clock, sleep=clock.sleep)
    poller.close()
    assert data_lines(tmp_path / "c.log") == [
        "2026-11-27|07:07:12 TCP 127.0.0.1 80 - - LISTEN srv|10|1000.00",
        "2026-11-27|07:07:13 TCP 127.0.0.1 5000 127.0.0.1 80 ESTABLISHED srv|10|1000.00",
        "2026-11-27|07:07:14 TCP 127.0.0.1 5000 127.0.0.1 80 TIME_WAIT -",
    ]


def test_a_line_known_late_is_never_dated_before_the_lines_written(tmp_path):
    # Reported at the second poll as found a second before the first: the log still reads in
    # time order, the late line dated as the latest line before it.
    client = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=10, fd=6)
    source = ScriptedSource([[LISTEN], [LISTEN, client]], {10: PROC})
    source.arrivals = {1: [(client, 1795763231.0)]}
    times = iter([1795763232.5, 1795763234.0])
    config, poller = make_poller(tmp_path, source, count=2, interval=1.0, format="jsonl", utc=True,
                                 now=lambda: next(times))
    clock = FakeClock()
    lognet.run(config, poller, clock=clock, sleep=clock.sleep)
    poller.close()
    stamps = [line.split('"ts":"')[1][:23] for line in data_lines(tmp_path / "c.log") if '"lport"' in line]
    assert stamps == ["2026-11-27T07:07:12.500", "2026-11-27T07:07:12.500"]


def test_sleep_targets_a_monotonic_deadline(tmp_path):
    clock = FakeClock()
    source = ScriptedSource([[LISTEN]] * 3, {10: PROC}, clock=clock, cost=0.5)
    config, poller = make_poller(tmp_path, source, count=3, interval=2.0)
    lognet.run(config, poller, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [1.5, 1.5]


def test_overrunning_poll_does_not_build_sleep_debt(tmp_path):
    clock = FakeClock()
    source = ScriptedSource([[LISTEN]] * 3, {10: PROC}, clock=clock, cost=3.0)
    config, poller = make_poller(tmp_path, source, count=3, interval=2.0)
    lognet.run(config, poller, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


def test_filters_apply_to_logged_lines(tmp_path):
    clock = FakeClock()
    source = ScriptedSource([[LISTEN, ESTAB, PRIVATE]], {10: PROC})
    config, poller = make_poller(tmp_path, source, count=1, omit_self_conns=True, omit_privnet_conns=True,
                                 kind="tcp4")
    lognet.run(config, poller, clock=clock, sleep=clock.sleep)
    poller.close()
    lines = data_lines(tmp_path / "c.log")
    assert [line.split(" ")[1:] for line in lines] == [
        ["TCP", "127.0.0.1", "80", "127.0.0.1", "5000", "ESTABLISHED", "srv|10|1000.00"]]
    # the engines the configuration makes list that kind, and no other
    assert lognet.ENGINES["psutil"](config, None).kind == "tcp4"
    netlink = lognet.ENGINES["netlink"](config, None)
    try:
        assert netlink.pairs == [(socket.AF_INET, socket.IPPROTO_TCP)]
    finally:
        netlink.close()


def test_stop_signal_ends_after_the_current_poll(tmp_path):
    clock = FakeClock()
    signals = lognet.Signals()
    source = ScriptedSource([[LISTEN]] * 5, {10: PROC})
    config, poller = make_poller(tmp_path, source, interval=1.0)

    def sleep(seconds):
        clock.sleep(seconds)
        if len(clock.sleeps) == 2:
            signals.stop = True

    assert lognet.run(config, poller, signals=signals, clock=clock, sleep=sleep) == 2
    assert source.calls == 2


def test_udp_lines(tmp_path):
    clock = FakeClock()
    udp = make_conn(("::1", 53), status="NONE", type=socket.SOCK_DGRAM, family=socket.AF_INET6, pid=10, fd=7)
    source = ScriptedSource([[udp]], {10: PROC})
    config, poller = make_poller(tmp_path, source, count=1, utc=True)
    lognet.run(config, poller, clock=clock, sleep=clock.sleep)
    poller.close()
    assert data_lines(tmp_path / "c.log") == ["2026-11-27|07:07:12 UDP ::1 53 - - NONE srv|10|1000.00"]


def test_lifecycle_lines_and_the_statistics_remark(tmp_path):
    clock = FakeClock()
    client = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=10, fd=6)
    source = ScriptedSource([[LISTEN], [LISTEN, ESTAB, client], [LISTEN, TIME_WAIT._replace(laddr=client.laddr,
                             raddr=client.raddr)], [LISTEN]], {10: PROC})
    source.opens = [100, 104, 104]  # at the first poll, at the remark after the third, and at exit
    # The wall clock moves with the fake one: polls at 07:07:12, 13, 14 and 15.
    config, poller = make_poller(tmp_path, source, clock=clock, now=lambda: 1795763232.0 + clock() - 100.0,
                                 count=4, interval=1.0, utc=True, stats_interval=1.5,
                                 fields=lognet.CONNECTION_FIELDS + ("event", "duration", "direction", "attrib"))
    lognet.run(config, poller, clock=clock, sleep=clock.sleep)
    poller.finish()
    poller.close()
    ts, upid = "2026-11-27|07:07:", "srv|10|1000.00"
    remark = "#Remark: coverage 0.500 (kernel TCP opens 4, seen 2); polls {}; average poll 0.0 ms; late lines 0; " \
             "dropped lines 0"
    assert data_lines(tmp_path / "c.log") == [
        f"{ts}12 TCP 127.0.0.1 80 - - LISTEN {upid} open - listen pid",
        f"{ts}13 TCP 127.0.0.1 80 127.0.0.1 5000 ESTABLISHED {upid} open - in pid",
        f"{ts}13 TCP 127.0.0.1 5000 127.0.0.1 80 ESTABLISHED {upid} open - out pid",
        # the server end closed; the client end's TIME_WAIT keeps its process
        f"{ts}14 TCP 127.0.0.1 5000 127.0.0.1 80 TIME_WAIT {upid} state 1 out orphan",
        # a close lasts to the last sighting (13), not to the poll that found it gone (14)
        f"{ts}14 TCP 127.0.0.1 80 127.0.0.1 5000 ESTABLISHED {upid} close 0 in pid",
        f"{ts}15 TCP 127.0.0.1 5000 127.0.0.1 80 TIME_WAIT {upid} close 1 out orphan",
    ]
    assert [line for line in read_lines(tmp_path / "c.log") if line.startswith("#Remark")] == [
        remark.format(3), remark.format(4)]


def test_polls_stretch_while_the_budget_sheds_them(tmp_path):
    clock = FakeClock()
    budget = lognet.CpuBudget(10, cpu=lambda: 0.0, clock=clock)
    source = ScriptedSource([[LISTEN]] * 4, {10: PROC}, budget=budget)
    config, poller = make_poller(tmp_path, source, count=4, interval=2.0, budget=budget)
    budget.hold(lognet.SHED_POLLS)
    lognet.run(config, poller, clock=clock, sleep=clock.sleep)
    poller.close()
    # held at the step that stretches polls, then taken back a step a time: no CPU is used
    assert clock.sleeps[0] == 2.0 * lognet.POLL_STRETCH and clock.sleeps[1:] == [2.0, 2.0]


def test_closes_skipped_since_the_last_poll_are_summarized_at_exit(tmp_path):
    class Skipping(ScriptedSource):
        skipped = [(ESTAB._replace(status="CLOSE"), 3, "pid", True)]

        def take_skipped(self):
            taken, self.skipped = self.skipped, []
            return taken

    source = Skipping([[LISTEN]], {10: PROC})
    config, poller = make_poller(tmp_path, source, count=1, interval=1.0, utc=True)
    lognet.run(config, poller, clock=FakeClock(), sleep=FakeClock().sleep)  # its poll takes the one group
    source.skipped = [(ESTAB._replace(status="CLOSE"), 2, "pid", True)]  # counted after the last poll
    poller.finish()
    poller.close()
    assert [line for line in read_lines(tmp_path / "c.log") if line.startswith("#Remark: skipped")] == [
        f"#Remark: skipped count {n} prot TCP direction in raddr 127.0.0.1 rport - lport 80 netns - attrib pid "
        "upid srv|10|1000.00" for n in (3, 2)]
