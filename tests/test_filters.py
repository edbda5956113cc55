"""The filters and the psutil kind table."""

import socket

import pytest

import lognet
from conftest import make_conn


@pytest.mark.parametrize("ip, private", [
    ("10.1.2.3", True), ("172.16.0.1", True), ("172.31.255.255", True), ("192.168.0.1", True),
    ("172.32.0.1", False), ("11.0.0.1", False), ("8.8.8.8", False), ("127.0.0.1", False),
    ("::ffff:10.1.2.3", True), ("::ffff:192.168.7.7", True), ("::ffff:8.8.8.8", False),
    ("fd00::1", False), ("fe80::1%eth0", False), ("2001:db8::1", False), ("not-an-ip", False),
])
def test_is_private_address(ip, private):
    assert lognet.is_private_address(ip) is private


@pytest.mark.parametrize("ip, loopback", [
    ("127.0.0.1", True), ("127.255.0.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("128.0.0.1", False), ("::2", False), ("::ffff:10.0.0.1", False), ("192.0.2.1", False), ("bogus", False),
])
def test_is_loopback_address(ip, loopback):
    assert lognet.is_loopback_address(ip) is loopback


def test_omit_loopback_conns_drops_loopback_peers_only():
    keep = lognet.build_filter(config(omit_loopback_conns=True))
    assert not keep(make_conn(raddr=("127.0.0.1", 80), status="ESTABLISHED"))
    assert not keep(make_conn(("::1", 5), ("::ffff:127.0.0.2", 80), "ESTABLISHED", family=socket.AF_INET6))
    assert keep(make_conn(("127.0.0.1", 80)))  # a listener has no peer: it stays
    assert keep(make_conn(raddr=("198.51.100.7", 443), status="ESTABLISHED"))


def config(**kw):
    return lognet.Config(**kw)


def test_no_filter_keeps_everything():
    wanted = lognet.build_filter(config())
    assert wanted(make_conn()) and wanted(make_conn(raddr=("10.0.0.1", 1), status="ESTABLISHED"))


def test_omit_self_conns_drops_sockets_without_peer():
    wanted = lognet.build_filter(config(omit_self_conns=True))
    assert not wanted(make_conn(status="LISTEN"))
    assert not wanted(make_conn(status="NONE", type=socket.SOCK_DGRAM))
    assert wanted(make_conn(raddr=("127.0.0.1", 9), status="ESTABLISHED"))


def test_omit_privnet_conns_drops_private_peers_only():
    wanted = lognet.build_filter(config(omit_privnet_conns=True))
    assert not wanted(make_conn(raddr=("192.168.1.1", 443), status="ESTABLISHED"))
    assert not wanted(make_conn(("::", 1), ("::ffff:172.20.0.5", 443), "ESTABLISHED", family=socket.AF_INET6))
    assert wanted(make_conn(raddr=("198.51.100.7", 443), status="ESTABLISHED"))
    assert wanted(make_conn(("10.0.0.2", 22)))  # a private *local* address is not a private peer


def test_filters_combine():
    wanted = lognet.build_filter(config(omit_self_conns=True, omit_privnet_conns=True))
    assert not wanted(make_conn())
    assert not wanted(make_conn(raddr=("10.0.0.1", 1), status="ESTABLISHED"))
    assert wanted(make_conn(raddr=("198.51.100.1", 1), status="ESTABLISHED"))


@pytest.mark.parametrize("argv, kind", [
    ([], "inet"), (["-ipv", "4"], "inet4"), (["-ipv", "6"], "inet6"),
    (["-p", "tcp"], "tcp"), (["-p", "udp"], "udp"),
    (["-ipv", "4", "-p", "tcp"], "tcp4"), (["-ipv", "6", "-p", "udp"], "udp6"),
    (["--ip-version", "6", "--protocol", "tcp"], "tcp6"), (["-ipv", "4", "-p", "udp"], "udp4"),
])
def test_narrowest_kind(argv, kind):
    assert lognet.parse_args(argv)[0].kind == kind
