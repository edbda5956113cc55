"""The tracker: what opened, changed and closed between two snapshots."""

import lognet
from conftest import make_conn

LISTEN = make_conn(("127.0.0.1", 80), pid=10, fd=3)
ESTAB = make_conn(("127.0.0.1", 80), ("127.0.0.1", 5000), "ESTABLISHED", pid=10, fd=4)


def test_first_snapshot_opens_everything():
    tracker = lognet.Tracker()
    opened, changed, closed = tracker.update([LISTEN, ESTAB])
    assert sorted(opened) == sorted([LISTEN, ESTAB]) and changed == [] and closed == []


def test_same_snapshot_twice_reports_nothing():
    tracker = lognet.Tracker()
    tracker.update([LISTEN, ESTAB])
    assert tracker.update([ESTAB, LISTEN]) == ([], [], [])


def test_status_change_is_changed_not_opened():
    tracker = lognet.Tracker()
    tracker.update([LISTEN, ESTAB])
    close_wait = ESTAB._replace(status="CLOSE_WAIT")
    assert tracker.update([LISTEN, close_wait]) == ([], [close_wait], [])


def test_gone_connection_is_closed_and_forgotten():
    tracker = lognet.Tracker()
    tracker.update([LISTEN, ESTAB])
    assert tracker.update([LISTEN]) == ([], [], [ESTAB])
    assert tracker.live == frozenset([LISTEN])
    assert tracker.update([LISTEN, ESTAB]) == ([ESTAB], [], [])  # it came back: logged again


def test_same_addresses_other_process_is_a_new_connection():
    tracker = lognet.Tracker()
    tracker.update([ESTAB])
    other = ESTAB._replace(pid=11)
    assert tracker.update([other]) == ([other], [], [ESTAB])


def test_memory_follows_the_live_set():
    tracker = lognet.Tracker()
    for port in range(1000, 6000):
        tracker.update([LISTEN, make_conn(("127.0.0.1", 80), ("127.0.0.1", port), "ESTABLISHED")])
    assert len(tracker.live) == 2


def test_duplicate_tuples_collapse():
    hidden = make_conn(("0.0.0.0", 5353), status="NONE", pid=None, fd=-1)
    tracker = lognet.Tracker()
    assert tracker.update([hidden, hidden]) == ([hidden], [], [])
