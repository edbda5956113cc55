"""The tracker: what opened, changed and closed between two snapshots."""

import socket

import pytest

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


def test_a_listener_whose_owner_is_found_a_poll_late_is_the_same_socket():
    # By its cookie: a listener has no remote address to know it by, and while the kernel's
    # close is awaited, a record gone from the list would close a poll later.
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    listener = LISTEN._replace(cookie=77)
    tracker.update([listener._replace(pid=None, fd=-1)], now=1.0)
    changes = tracker.update([listener], now=2.0)
    assert events(changes) == [("state", listener)]
    assert changes[0].attrib == "pid" and changes[0].first_seen == 1.0
    assert tracker.update([listener], now=3.0) == []  # and no close of it follows
    other = LISTEN._replace(laddr=("127.0.0.1", 81), cookie=78)
    tracker.update([listener, other._replace(pid=None, fd=-1)], now=4.0)
    assert events(tracker.update([listener, other._replace(cookie=79)], now=5.0)) == [
        ("open", other._replace(cookie=79))]  # another socket: an open, and the first closes with the kernel


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


def test_an_ownerless_socket_is_hidden_only_when_an_owner_could_be_hidden():
    fin_wait = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 80), "FIN_WAIT2", pid=None, fd=-1)  # psutil: no inode
    no_file = fin_wait._replace(cookie=7, uid=0)  # netlink: a cookie, and inode 0 (None)
    has_file = no_file._replace(inode=4242)
    for owners_visible, conn, attrib in ((False, fin_wait, "hidden"), (True, fin_wait, "orphan"),
                                         (False, no_file, "orphan"), (False, has_file, "hidden"),
                                         (True, has_file, "orphan")):
        tracker = lognet.Tracker(owners_visible=lambda visible=owners_visible: visible)
        assert [e.attrib for e in tracker.update([conn])] == [attrib], (owners_visible, conn)


def test_a_socket_found_after_the_snapshot_began_is_not_gone_from_it():
    # The watcher found it after the poll's dump (at 20), before the poll asked for what it
    # found: the next dump shows it, and it is the same connection, still open.
    found = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=10, fd=6)._replace(cookie=5)
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    tracker.update([LISTEN], 10.0)
    assert events(tracker.update([LISTEN], 20.0, arrivals=[(found, 20.5)])) == [("open", found)]
    assert events(tracker.update([LISTEN, found], 30.0)) == []
    assert events(tracker.update([LISTEN, found], 40.0)) == []


def test_a_socket_found_after_the_snapshot_began_that_it_shows_in_another_state_moved_on():
    # The dump came after the watcher's look after all: it shows the socket (its cookie) in TIME_WAIT.
    found = make_conn(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=10, fd=6)._replace(cookie=5)
    time_wait = found._replace(status="TIME_WAIT", pid=None, fd=-1)
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    tracker.update([LISTEN], 10.0)
    assert events(tracker.update([LISTEN, time_wait], 20.0, arrivals=[(found, 20.5)])) == [
        ("open", found), ("state", time_wait)]


def test_listeners_are_forgotten_when_they_close():
    tracker = lognet.Tracker()
    tracker.update([LISTEN])
    assert tracker.listeners.sharing == {(None, socket.AF_INET, ("127.0.0.1", 80)): 1}
    tracker.update([])
    assert tracker.listeners.sharing == {}
    late = tracker.update([ESTAB._replace(fd=9)])
    assert late[0].direction == "out"  # no listener any more: nothing says the peer connected in


# ---------------------------------------------------------------- arrivals and the kernel's closes

def record(*args, cookie, **kw):
    return make_conn(*args, **kw)._replace(cookie=cookie, inode=cookie + 1000, netns=4026531840)


def closed_of(conn, time, sent=None, received=None, beyond=None):
    gone = conn._replace(fd=-1, pid=None, status="CLOSE", inode=None, txbytes=sent)
    return lognet.Closed(gone, time, received, beyond)


def test_arrival_between_polls_opens_at_its_time_and_closes_with_the_kernel():
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    listen = record(("127.0.0.1", 80), pid=10, fd=3, cookie=1)
    tracker.update([listen], now=10.0)
    short = record(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=3, cookie=2)
    events = tracker.update([listen], now=13.0, arrivals=[(short, 11.5)],
                            departures=[closed_of(short, 12.0, sent=100, received=51, beyond=2)])
    assert [(e.event, e.time, e.direction, e.conn.txbytes, e.conn.rxbytes, e.kernel_close) for e in events] == [
        ("open", 11.5, "out", None, None, False), ("close", 12.0, "out", 100, 50, True)]
    assert events[1].duration == 0.5
    assert tracker.sightings.keys() == {lognet.connection_id(listen)}


def test_the_same_list_again_is_nothing_new_but_for_what_came_between():
    # An engine gives the very list of the last poll when nothing changed; the kernel's
    # closes and the closes still waiting are news all the same.
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    listen = record(("127.0.0.1", 80), pid=10, fd=3, cookie=1)
    conn = record(("127.0.0.1", 80), ("127.0.0.1", 5000), "ESTABLISHED", pid=10, fd=4, cookie=7)
    snapshot = [listen, conn]
    assert len(tracker.update(snapshot, now=1.0)) == 2
    assert tracker.update(snapshot, now=2.0) == []
    events = tracker.update(snapshot, now=3.0, departures=[closed_of(conn, 2.5, sent=9, received=6, beyond=1)])
    assert [(e.event, e.time) for e in events] == [("close", 2.5)]
    assert tracker.update(snapshot, now=4.0) == []  # the list still shows it: the dump was before its close


def test_a_close_the_kernel_has_not_told_yet_waits_one_update():
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    conn = record(("127.0.0.1", 80), ("127.0.0.1", 5000), "ESTABLISHED", pid=10, fd=4, cookie=7)
    tracker.update([conn], now=1.0)
    assert tracker.update([], now=2.0) == []  # gone from the dump, its event not read yet
    events = tracker.update([], now=3.0, departures=[closed_of(conn, 2.5, sent=9, received=6, beyond=1)])
    assert [(e.event, e.time, e.conn.txbytes, e.conn.rxbytes, e.attrib) for e in events] == [
        ("close", 2.5, 9, 5, "pid")]  # a passive closer: the peer's FIN came first
    tracker.update([conn], now=4.0)
    assert [(e.event, e.time) for e in tracker.update([], now=5.0)] == []
    # no word from the kernel: it closed all the same
    assert [(e.event, e.time) for e in tracker.update([], now=6.0)] == [("close", 5.0)]


def test_a_connection_closes_with_the_kernels_close_not_when_its_time_wait_ends():
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    client = record(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=3, cookie=3)
    tracker.update([client], now=1.0)
    time_wait = client._replace(status="TIME_WAIT", pid=None, fd=-1, inode=None)  # the kernel keeps the cookie
    events = tracker.update([time_wait], now=2.0, departures=[closed_of(client, 1.5, sent=10, received=21, beyond=2)])
    # the original's status change, then the close at the kernel's close, with its bytes
    assert [(e.event, e.conn.status, e.attrib, e.time, e.conn.txbytes, e.conn.rxbytes, e.duration)
            for e in events] == [("state", "TIME_WAIT", "orphan", 2.0, None, None, 1.0),
                                 ("close", "TIME_WAIT", "pid", 1.5, 10, 20, 0.5)]
    assert tracker.update([time_wait], now=3.0) == []
    assert tracker.update([], now=62.0) == []  # TIME_WAIT ends: the connection was told closed already
    assert tracker.update([], now=63.0) == [] and not tracker.sightings


def test_with_lifecycle_lines_time_wait_is_no_line_of_its_own():
    tracker = lognet.Tracker(awaits_kernel_closes=True, timewait_lines=False)
    client = record(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=3, cookie=3)
    tracker.update([client], now=1.0)
    time_wait = client._replace(status="TIME_WAIT", pid=None, fd=-1, inode=None)
    assert tracker.update([time_wait], now=2.0) == []  # its close event is still in the kernel's work queue
    events = tracker.update([time_wait], now=3.0, departures=[closed_of(client, 2.1, sent=10, received=21, beyond=2)])
    assert [(e.event, e.time, e.conn.txbytes, e.conn.rxbytes) for e in events] == [("close", 2.1, 10, 20)]
    assert events[0].process is None and events[0].first_seen == 1.0
    assert tracker.update([], now=62.0) == []


@pytest.mark.parametrize("timewait_lines", [True, False])
def test_a_close_told_before_a_dump_showed_its_time_wait_continues_into_it(timewait_lines):
    tracker = lognet.Tracker(awaits_kernel_closes=True, timewait_lines=timewait_lines)
    client = record(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=3, cookie=3)
    tracker.update([], now=0.5)
    tracker.update([client], now=1.0)  # opened after the first poll: lognet knows it connected out
    events = tracker.update([client], now=2.0, departures=[closed_of(client, 2.5, sent=10, received=21, beyond=2)])
    assert [(e.event, e.time) for e in events] == [("close", 2.5)]
    time_wait = client._replace(status="TIME_WAIT", pid=None, fd=-1, inode=None)
    events = tracker.update([time_wait], now=3.0)
    expected = [("state", "TIME_WAIT", 1.0, "out")] if timewait_lines else []
    assert [(e.event, e.conn.status, e.first_seen, e.direction) for e in events] == expected
    assert tracker.update([], now=63.0) == []


def test_a_connection_seen_only_at_its_close_is_one_line():
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    tracker.update([LISTEN], now=1.0)
    ghost = record(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=3, cookie=9)
    time_wait = ghost._replace(status="TIME_WAIT", pid=None, fd=-1, inode=None)
    events = tracker.update([LISTEN, time_wait], now=2.0, departures=[closed_of(ghost, 1.5, sent=3, received=5)])
    assert [(e.event, e.attrib, e.conn.status, e.conn.rxbytes) for e in events] == [
        ("close", "unseen", "CLOSE", 4)]  # TIME_WAIT: the peer's FIN came
    other = record(("127.0.0.1", 5001), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=3, cookie=10)
    assert [e.event for e in tracker.update([LISTEN, time_wait], now=3.0, departures=[closed_of(other, 2.5)])] == [
        "close"]
    later = other._replace(status="TIME_WAIT", pid=None, fd=-1, inode=None)  # its TIME_WAIT shows a dump later
    assert tracker.update([LISTEN, time_wait, later], now=4.0) == []
    assert tracker.update([LISTEN], now=64.0) == []


def test_time_wait_sockets_there_before_the_first_poll_are_logged():
    tracker = lognet.Tracker(awaits_kernel_closes=True, timewait_lines=False)
    time_wait = record(("127.0.0.1", 5000), ("127.0.0.1", 80), "TIME_WAIT", pid=None, fd=-1, cookie=3)._replace(
        inode=None)
    assert [(e.event, e.attrib) for e in tracker.update([time_wait], now=1.0)] == [("open", "orphan")]


def test_a_socket_never_seen_alive_is_an_unseen_close():
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    ghost = record(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=3, cookie=9)
    events = tracker.update([], now=1.0, departures=[closed_of(ghost, 0.5, sent=3, received=4, beyond=1)])
    assert [(e.event, e.attrib, e.process, e.duration, e.conn.status) for e in events] == [
        ("close", "unseen", None, None, "CLOSE")]


def test_the_peer_on_this_host_says_exactly_what_was_received():
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    a = record(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=3, cookie=20)
    b = record(("127.0.0.1", 80), ("127.0.0.1", 5000), "ESTABLISHED", pid=10, fd=4, cookie=21)
    tracker.update([a, b], now=1.0)
    # Counts that alone would mislead: resets (nothing of ours acked beyond the SYN), no FIN received.
    events = tracker.update([], now=2.0, departures=[closed_of(a, 1.5, sent=300, received=70, beyond=1),
                                                     closed_of(b, 1.5, sent=70, received=300, beyond=1)])
    assert sorted((e.conn.laddr[1], e.conn.txbytes, e.conn.rxbytes) for e in events) == [(80, 70, 300), (5000, 300, 70)]


def test_an_active_closer_whose_peer_here_has_not_told_its_close_yet_closes_with_it():
    # The client closed first (the kernel closed its socket at FIN_WAIT2, before the server's
    # FIN: 678 bytes received). The dump came after the server's close, and shows the client's
    # TIME_WAIT; the server's own close is still in the kernel's work queue.
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    client = record(("127.0.0.1", 5000), ("127.0.0.1", 80), "ESTABLISHED", pid=11, fd=3, cookie=20)
    server = record(("127.0.0.1", 80), ("127.0.0.1", 5000), "ESTABLISHED", pid=10, fd=4, cookie=21)
    tracker.update([client, server], now=1.0)
    time_wait = client._replace(status="TIME_WAIT", pid=None, fd=-1, inode=None)
    events = tracker.update([time_wait], now=2.0, departures=[closed_of(client, 1.5, sent=12345, received=678,
                                                                        beyond=2)])
    assert [(e.event, e.conn.status) for e in events] == [("state", "TIME_WAIT")]
    events = tracker.update([time_wait], now=3.0, departures=[closed_of(server, 1.55, sent=678, received=12346,
                                                                        beyond=1)])
    assert sorted((e.event, e.time, e.conn.laddr[1], e.conn.txbytes, e.conn.rxbytes) for e in events) == [
        ("close", 1.5, 5000, 12345, 678), ("close", 1.55, 80, 678, 12345)]
    assert tracker.update([time_wait], now=4.0) == []


@pytest.mark.parametrize("received, beyond, direction, fin", [
    (501, 2, "out", True),    # we connected, and closed after the peer: its FIN came first
    (500, 1, "out", False),   # we connected and reset (unread data): no FIN of ours acked
    (1001, 1, "in", True),    # they connected, our FIN acked (no SYN of ours counted)
    (1000, 0, "in", False),   # they connected, we were reset
])
def test_received_fin_from_the_measured_counts(received, beyond, direction, fin):
    closed = lognet.Closed(make_conn(), 0.0, received, beyond)
    assert lognet.received_fin(closed, direction) is fin


def test_a_listener_in_one_namespace_says_nothing_of_another_namespaces_connections():
    listener = make_conn(("0.0.0.0", 8123))._replace(netns=1)
    # in another namespace (a container), a connection from the same local port: it connected out
    there = make_conn(("10.0.0.2", 8123), ("10.0.0.9", 443), "ESTABLISHED", pid=11, fd=4)._replace(netns=2)
    here = there._replace(netns=1, fd=5)
    tracker = lognet.Tracker()
    tracker.update([listener])
    opened = {e.conn.netns: e.direction for e in tracker.update([listener, there, here])}
    assert opened == {2: "out", 1: "in"}


def test_an_owner_the_kernel_named_then_found_by_its_fd_is_the_same_connection():
    """A socket a dump found before any fd scan, its owner named by the kernel's events (fd
    -1, attrib kernel); the next poll finds the owner's fd: no line, the same connection,
    and its later lines say pid."""
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    named = CLIENT._replace(fd=-1, cookie=901, by_kernel=True)
    opened = tracker.update([named], now=1.0)
    assert [(e.event, e.attrib) for e in opened] == [("open", "kernel")]
    found = named._replace(fd=5, by_kernel=False)
    assert tracker.update([found], now=2.0) == []
    closed = tracker.update([found._replace(status="CLOSE_WAIT")], now=3.0)
    assert [(e.event, e.attrib, e.first_seen) for e in closed] == [("state", "pid", 1.0)]


def test_a_close_the_kernel_named_is_one_line_with_its_owner_and_when_it_opened():
    """A socket never seen alive whose owner the kernel's events named: one close line with
    that pid, attrib kernel, firstseen at its connect and its duration; unnamed, unseen."""
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    tracker.update([], now=1.0)
    gone = CLIENT._replace(status="CLOSE", fd=-1, pid=None, cookie=902)
    named = lognet.Closed(gone._replace(pid=11, by_kernel=True), 2.5, 0, 1, opened=2.0, direction="out")
    unnamed = lognet.Closed(gone._replace(cookie=903, laddr=("127.0.0.1", 5001)), 2.6, 0, 1)
    lines = tracker.update([], now=3.0, departures=[named, unnamed])
    assert [(e.conn.pid, e.attrib, e.first_seen, e.duration, e.direction, e.alive_seen) for e in lines] == [
        (11, "kernel", 2.0, 0.5, "out", False), (None, "unseen", 2.6, None, None, False)]
