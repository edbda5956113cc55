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
