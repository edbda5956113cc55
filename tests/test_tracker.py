"""The tracker: what opened, changed and closed between two snapshots."""

import socket

import lognet
from conftest import make_conn

LISTEN = make_conn(("127.0.0.1", 80), pid=10, fd=3)
ESTAB = make_conn(("127.0.0.1", 80), ("127.0.0.1", 5000), "ESTABLISHED", pid=10, fd=4)
CLIENT = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=5)


def events(changes):
    """(event, conn) pairs in a stable order."""
    return sorted((change.event, change.conn) for change in changes)


def test_first_snapshot_opens_everything():
    tracker = lognet.Tracker()
    assert events(tracker.update([LISTEN, ESTAB], now=1.0)) == sorted([("open", LISTEN), ("open", ESTAB)])


def test_same_snapshot_twice_reports_nothing():
    tracker = lognet.Tracker()
    tracker.update([LISTEN, ESTAB])
    assert tracker.update([ESTAB, LISTEN]) == []


def test_status_change_is_a_state_change_of_the_same_entry():
    tracker = lognet.Tracker()
    first = tracker.update([LISTEN, ESTAB], now=1.0)
    close_wait = ESTAB._replace(status="CLOSE_WAIT")
    changes = tracker.update([LISTEN, close_wait], now=4.0)
    assert events(changes) == [("state", close_wait)]
    assert changes[0].first_seen == [c.first_seen for c in first if c.conn == ESTAB][0] == 1.0
    assert changes[0].duration == 3.0


def test_gone_connection_is_closed_and_forgotten():
    tracker = lognet.Tracker()
    tracker.update([LISTEN, ESTAB], now=1.0)
    tracker.update([LISTEN, ESTAB], now=2.0)
    assert events(tracker.update([LISTEN], now=3.0)) == [("close", ESTAB)]
    assert tracker.last_sighting == 2.0  # a connection closed now was last seen then
    assert tracker.live == frozenset([LISTEN]) and len(tracker.sightings) == 1
    assert events(tracker.update([LISTEN, ESTAB], now=4.0)) == [("open", ESTAB)]  # it came back: logged again


def test_same_addresses_other_process_is_a_new_connection():
    tracker = lognet.Tracker()
    tracker.update([ESTAB])
    other = ESTAB._replace(pid=12)
    assert events(tracker.update([other])) == [("close", ESTAB), ("open", other)]


def test_time_wait_keeps_identity_and_process():
    tracker = lognet.Tracker()
    tracker.update([CLIENT], now=1.0)
    time_wait = CLIENT._replace(status="TIME_WAIT", pid=None, fd=-1)
    changes = tracker.update([time_wait], now=2.0)
    assert events(changes) == [("state", time_wait)]
    assert changes[0].attrib == "orphan" and changes[0].first_seen == 1.0
    assert events(tracker.update([], now=3.0)) == [("close", time_wait)]


def test_owner_seen_a_poll_late_is_the_same_connection():
    tracker = lognet.Tracker()
    ownerless = CLIENT._replace(pid=None, fd=-1)  # made while psutil read /proc
    tracker.update([ownerless], now=1.0)
    changes = tracker.update([CLIENT], now=2.0)
    assert events(changes) == [("state", CLIENT)]
    assert changes[0].attrib == "pid" and changes[0].first_seen == 1.0


def test_direction():
    tracker = lognet.Tracker()
    udp = make_conn(("0.0.0.0", 53), status="NONE", type=socket.SOCK_DGRAM, fd=6)
    before = make_conn(("127.0.0.1", 6000), ("127.0.0.1", 7000), "ESTABLISHED", pid=13, fd=7)
    first = {c.conn: c.direction for c in tracker.update([LISTEN, ESTAB, udp, before])}
    assert first == {LISTEN: "listen", ESTAB: "in", udp: None, before: None}  # established before lognet: unknown
    wildcard = make_conn(("0.0.0.0", 8080), pid=14, fd=3)
    inbound = make_conn(("10.0.0.5", 8080), ("192.0.2.9", 4000), "ESTABLISHED", pid=14, fd=4)
    syn = make_conn(("127.0.0.1", 5001), ("127.0.0.1", 9), "SYN_SENT", pid=11, fd=8)
    later = {c.conn: c.direction for c in tracker.update([LISTEN, ESTAB, udp, before, CLIENT, wildcard,
                                                                 inbound, syn])}
    assert later == {CLIENT: "out", wildcard: "listen", inbound: "in", syn: "out"}


def test_memory_follows_the_live_set():
    tracker = lognet.Tracker()
    for port in range(1000, 6000):
        tracker.update([LISTEN, make_conn(("127.0.0.1", 80), ("127.0.0.1", port), "ESTABLISHED")])
    assert len(tracker.live) == 2 and len(tracker.sightings) == 2


def test_duplicate_tuples_collapse():
    hidden = make_conn(("0.0.0.0", 5353), status="NONE", pid=None, fd=-1)
    tracker = lognet.Tracker()
    assert events(tracker.update([hidden, hidden])) == [("open", hidden)]


def test_listeners_are_forgotten_when_they_close():
    tracker = lognet.Tracker()
    tracker.update([LISTEN])
    assert tracker.listening == {(socket.AF_INET, ("127.0.0.1", 80)): 1}
    tracker.update([])
    assert tracker.listening == {}
    late = tracker.update([ESTAB._replace(fd=9)])
    assert late[0].direction == "out"  # no listener any more: nothing says the peer connected in
