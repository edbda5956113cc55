"""The source layer: the psutil engine on real sockets, and the engine table."""

import os
import socket

import psutil

import lognet


def test_psutil_engine_maps_each_sconn_field_by_field(tcp_pair):
    listener, client, server = tcp_pair
    port = client.getsockname()[1]
    conns = [c for c in lognet.PsutilSource().connections("tcp4") if c.fd == client.fileno() and c.pid == os.getpid()]
    sconns = [c for c in psutil.net_connections("tcp4") if c.fd == client.fileno() and c.pid == os.getpid()]
    assert len(conns) == len(sconns) == 1
    conn, sconn = conns[0], sconns[0]
    assert isinstance(conn, lognet.Connection)
    assert conn[:7] == tuple(sconn)
    assert (conn.fd, conn.family, conn.type, conn.laddr, conn.raddr, conn.status, conn.pid) == (
        client.fileno(), socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port),
        ("127.0.0.1", listener.getsockname()[1]), "ESTABLISHED", os.getpid())
    # what psutil cannot know stays unknown; the namespace is lognet's own
    assert (conn.inode, conn.cookie, conn.uid, conn.txbytes, conn.rxbytes) == (None,) * 5
    assert conn.netns == os.stat("/proc/self/ns/net").st_ino


def test_engines_are_made_in_one_place_from_the_table():
    assert set(lognet.ENGINES) == {"netlink", "psutil"}
    assert type(lognet.open_source(lognet.Config(engine="psutil"))) is lognet.PsutilSource
    netlink = lognet.open_source(lognet.Config(engine="netlink"))
    try:
        assert type(netlink) is lognet.NetlinkSource
        assert netlink.pairs == [(socket.AF_INET, socket.IPPROTO_TCP), (socket.AF_INET6, socket.IPPROTO_TCP),
                                 (socket.AF_INET, socket.IPPROTO_UDP), (socket.AF_INET6, socket.IPPROTO_UDP)]
    finally:
        netlink.close()


def test_process_details_of_this_process():
    found, new = lognet.PsutilSource().processes([os.getpid()])
    me = psutil.Process()
    assert found == {os.getpid(): lognet.ProcessInfo(os.getpid(), me.name(), me.create_time(), tuple(me.cmdline()),
                                                     me.exe(), me.username())}
    assert new == [found[os.getpid()]]


def test_a_socket_closed_between_the_dump_and_the_fd_scan_keeps_its_owner():
    """The owner closes its socket after the poll's dump saw it and before the fd scan reads
    its fds: the dump's record is no ownerless socket, but the owner's, as the dump saw it.
    The fault is made, not waited for: the test closes the socket inside the scan."""
    source = lognet.NetlinkSource("tcp", namespaces=False)
    tracker = lognet.Tracker(awaits_kernel_closes=True, owners_visible=True)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    ports = {client.getsockname()[1], listener.getsockname()[1]}
    scan = source.fds.scan

    def close_then_scan():
        client.close()
        scan()

    def ours(conns):
        return sorted((c.laddr[1], c.raddr[1], c.status, c.pid) for c in conns
                      if c.raddr and {c.laddr[1], c.raddr[1]} == ports)

    try:
        tracker.update(source.connections("tcp"), now=1.0)
        client_port = client.getsockname()[1]
        source.fds.scan = close_then_scan
        snapshot = source.connections("tcp")
        source.fds.scan = scan
        # the dump saw the client end ESTABLISHED, with this process's fd: so it is written
        assert (client_port, listener.getsockname()[1], "ESTABLISHED", os.getpid()) in ours(snapshot)
        changes = tracker.update(snapshot, now=2.0)
        assert not [e for e in changes if e.conn.pid is None and e.conn.status == "ESTABLISHED"], changes
        # the next poll finds it gone, or left behind in TIME_WAIT: never an ownerless ESTABLISHED
        later = source.connections("tcp")
        assert all(status != "ESTABLISHED" for port, _, status, _ in ours(later) if port == client_port)
    finally:
        for sock in (client, server, listener):
            sock.close()
        source.close()
