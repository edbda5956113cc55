#!/usr/bin/env python3
"""lognet: log every network connection on a host, with the process that owns it.

lognet polls psutil.net_connections() every few seconds and appends a line for
each connection it has not seen before (or whose status changed) to
connections.log, and the command line of each process that owns one to
processes.log. Both files are in the W3C extended log style:

    #Version: 1.0
    #Date: 2026-11-27 07:30:00
    #Fields: timestamp prot laddr lport raddr rport status upid
    2026-11-27|07:30:00 TCP 127.0.0.1 8080 - - LISTEN python3|4242|1795763232.73
    2026-11-27|07:30:03 TCP 10.0.0.5 40100 93.184.215.14 443 ESTABLISHED curl|4300|1795763235.10

    #Version: 1.0
    #Date: 2026-11-27 07:30:00
    #Fields: timestamp upid [command_line with parameters]
    2026-11-27|07:30:00 python3|4242|1795763232.73 ['python3', '-m', 'http.server', '8080']

Usage: lognet.py [-i SECONDS] [-p {tcp,udp}] [-ipv {4,6}] [-clog FILE] [-plog FILE]
                 [--fields +event,duration,direction,attrib] [--format jsonl] [--syslog [ADDRESS]]
See lognet.py --help, and README.md for the log format and the escape rule.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import functools
import gc
import ipaddress
import json
import math
import os
import select
import signal
import socket
import stat
import sys
import time
from collections import deque
from collections.abc import Iterable
from typing import Callable, NamedTuple, Union

try:
    import psutil
except ImportError:  # the one runtime dependency: say how to get it instead of a traceback
    sys.exit("lognet: error: the psutil module is missing; install it with: python3 -m pip install psutil")

__version__ = "1.0.0"


##############################################################################
# Constants
##############################################################################

DEFAULT_INTERVAL = 3.0
DEFAULT_LOG_DIR = "/var/log/netlog"
DEFAULT_CONNECTIONS_LOG = DEFAULT_LOG_DIR + "/connections.log"
DEFAULT_PROCESSES_LOG = DEFAULT_LOG_DIR + "/processes.log"
LOG_DIR_MODE = 0o750
LOG_FILE_MODE = 0o640  # command lines can carry secrets

CONNECTION_FIELDS = ("timestamp", "prot", "laddr", "lport", "raddr", "rport", "status", "upid")
# What --fields may add (the W3C way to choose logged fields); JSON Lines always has them all.
EXTRA_FIELDS = ("event", "duration", "direction", "family", "user", "exe", "attrib", "firstseen")
PROCESS_FIELDS = ("timestamp", "upid", "[command_line with parameters]")

# The narrowest psutil kind for each (ip_version, protocol) the filters allow.
KINDS = {
    (None, None): "inet", (4, None): "inet4", (6, None): "inet6",
    (None, "tcp"): "tcp", (4, "tcp"): "tcp4", (6, "tcp"): "tcp6",
    (None, "udp"): "udp", (4, "udp"): "udp4", (6, "udp"): "udp6",
}
PROTOCOLS = {socket.SOCK_STREAM: "TCP", socket.SOCK_DGRAM: "UDP"}
# The statuses the tracker reads, as psutil names them (psutil.CONN_*); every engine uses these names.
LISTEN, SYN_SENT, TIME_WAIT = "LISTEN", "SYN_SENT", "TIME_WAIT"
FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}

# RFC 1918. IPv6 addresses are private to --omit-privnet-conns only when they
# are these addresses written as IPv4-mapped (::ffff:10.1.2.3).
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))

SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, **{f"local{n}": 16 + n for n in range(8)},
}
SYSLOG_INFO = 6  # every event has severity "informational"
SYSLOG_TIMEOUT = 5.0  # seconds a syslog send may block a poll
DEFAULT_SYSLOG = "/dev/log"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

MAX_PENDING_LINES = 100_000  # per log, held while the log cannot be written
PROCESS_PRUNE_SECONDS = 60.0  # how often cached processes that have exited are forgotten
STATUS_SECONDS = 1.0  # the status line is redrawn at most this often
GC_SECONDS = 60.0  # how often lognet runs Python's cycle collector itself (see run())
DEFAULT_STATS_INTERVAL = 300.0
SNMP = "/proc/net/snmp"  # Linux counts every TCP open of the network namespace here


##############################################################################
# Errors
##############################################################################

class LognetError(Exception):
    """A runtime error that ends lognet with a one-line message and status 1."""


def warn(message: str, level: str = "warning") -> None:
    """Print one 'lognet: warning: …' (or error) line on stderr."""
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # over a status line, if one is shown
    print(f"{clear}lognet: {level}: {message}", file=sys.stderr, flush=True)


##############################################################################
# Data types
##############################################################################

class ProcessInfo(NamedTuple):
    """What lognet knows of one process; create_time makes a reused pid a new process."""

    pid: int
    name: str | None
    create_time: float | None
    cmdline: tuple[str, ...] | None
    exe: str | None = None
    username: str | None = None


class Connection(NamedTuple):
    """One socket as an engine saw it: lognet's own record, from source to line.

    The first seven fields are psutil's sconn, by name and order: family and type
    are socket constants, laddr and raddr are (ip, port) or () when there is none,
    pid is None and fd -1 when the owner is unknown. The rest are what an engine
    may know beyond that, None where it does not."""

    fd: int
    family: int
    type: int
    laddr: tuple
    raddr: tuple
    status: str
    pid: int | None
    inode: int | None = None
    cookie: int | None = None
    uid: int | None = None
    netns: int | None = None
    txbytes: int | None = None
    rxbytes: int | None = None


class ConnectionEvent(NamedTuple):
    """What happened to a connection (open, state or close), and what lognet knows of it then."""

    event: str
    conn: Connection
    process: ProcessInfo | None  # the owner, when known
    first_seen: float  # epoch seconds of the first sighting
    last_seen: float  # of this sighting; for a close, of the last one
    direction: str | None  # listen, in, out, or None when it cannot be told
    attrib: str  # how the owner is known: pid, orphan or hidden

    @property
    def duration(self) -> float | None:
        """Seconds between the first and the last sighting; None when it just opened."""
        return None if self.event == "open" else max(0.0, self.last_seen - self.first_seen)


class Config(NamedTuple):
    """The settings of one run, resolved from the command line."""

    interval: float = DEFAULT_INTERVAL
    count: int | None = None
    kind: str = "inet"
    engine: str = "psutil"
    omit_self_conns: bool = False
    omit_privnet_conns: bool = False
    connections_log: str = DEFAULT_CONNECTIONS_LOG
    processes_log: str = DEFAULT_PROCESSES_LOG
    utc: bool = False
    format: str = "w3c"
    fields: tuple[str, ...] = CONNECTION_FIELDS
    stats_interval: float | None = None  # None: DEFAULT_STATS_INTERVAL when lifecycle fields are on, else never
    syslog: tuple[str, str] | None = None  # (transport, address): ("unix", "/dev/log"), ("udp", "host:514")
    syslog_facility: str = "daemon"
    quiet: bool = False


def connection_id(conn: Connection) -> tuple:
    """What makes a connection the same one from poll to poll: everything an engine
    reports for it but its status."""
    return (conn.pid, conn.fd, conn.family, conn.type, conn.laddr, conn.raddr)


def connection_address(conn: Connection) -> tuple:
    """What a TCP connection keeps when its owner lets go of it."""
    return (conn.family, conn.type, conn.laddr, conn.raddr)


##############################################################################
# Sources: the sockets now, and who owns them (the only code that calls psutil)
##############################################################################

class Source:
    """What every engine gives the poller: connections(kind), the sockets there are now,
    and processes(pids), who owns them. The process details always come from psutil,
    read once per process and cached."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._processes: dict[int, ProcessInfo] = {}
        self._clock = clock
        self._next_prune = clock() + PROCESS_PRUNE_SECONDS

    def connections(self, kind: str) -> list[Connection]:
        """Every socket of kind (a psutil kind: 'inet', 'tcp4', ...) open now."""
        raise NotImplementedError

    def processes(self, pids: Iterable[int]) -> tuple[dict[int, ProcessInfo], list[ProcessInfo]]:
        """Return the process behind each pid that owns a newly seen connection,
        and those of them that lognet had not seen before.

        The cache is checked against a fresh create_time, so a reused pid is
        looked up again instead of inheriting the old process's name.
        """
        found, new = {}, []
        for pid in sorted(pids):
            cached = self._processes.get(pid)
            info = found[pid] = self._look_up(pid, cached)
            if info is not cached:
                self._processes[pid] = info
                new.append(info)
        self._prune()
        return found, new

    def _look_up(self, pid: int, cached: ProcessInfo | None) -> ProcessInfo:
        try:
            process = psutil.Process(pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            # It exited after its socket was listed, or it is hidden from us
            # (hidepid=2): log it with what we knew, or with its pid alone.
            return cached or ProcessInfo(pid, None, None, None)
        try:
            create_time = process.create_time()
        except psutil.Error:
            # AccessDenied or ZombieProcess: the pid is still real, its start time unknown.
            create_time = None
        if cached is not None and cached.create_time == create_time:
            return cached
        with process.oneshot():
            name = _read(process.name)
            cmdline = _read(process.cmdline)
            exe = _read(process.exe) or None  # '' for kernel threads
            username = _read(process.username)
        return ProcessInfo(pid, name, create_time, tuple(cmdline) if cmdline is not None else None, exe, username)

    def is_running(self, process: ProcessInfo | None) -> bool:
        """True while the process still runs (the same one: its create_time matches)."""
        if process is None:
            return False
        try:
            return psutil.Process(process.pid).create_time() == process.create_time
        except psutil.Error:
            return False  # NoSuchProcess: it is gone; AccessDenied: no longer ours to tell, so not claimed

    def tcp_opens(self) -> int | None:
        """The kernel's count of TCP connections opened (active + passive), or None without /proc/net/snmp."""
        try:
            with open(SNMP) as f:
                tcp = [line.split() for line in f if line.startswith("Tcp:")]
            counts = dict(zip(tcp[0], tcp[1]))
            return int(counts["ActiveOpens"]) + int(counts["PassiveOpens"])
        except (OSError, IndexError, KeyError, ValueError):
            return None  # not Linux, or a kernel without these counters

    def _prune(self) -> None:
        # Forget processes that have exited, so the cache is bounded by the live ones.
        if self._clock() < self._next_prune:
            return
        self._next_prune = self._clock() + PROCESS_PRUNE_SECONDS
        alive = set(psutil.pids())
        for pid in self._processes.keys() - alive:
            del self._processes[pid]


def _read(attribute: Callable):
    """Call one psutil.Process getter; None when the process is gone or hidden."""
    try:
        return attribute()
    except psutil.Error:
        # NoSuchProcess, ZombieProcess (cmdline of a zombie) and AccessDenied all
        # just mean this detail is unknown: the line is still written, with "-".
        return None


class PsutilSource(Source):
    """The portable engine: psutil.net_connections(), wherever psutil runs."""

    def connections(self, kind: str) -> list[Connection]:
        try:
            return [connection_from_sconn(sconn) for sconn in psutil.net_connections(kind)]
        except psutil.AccessDenied as exc:
            # On macOS psutil lists connections only for root.
            raise LognetError(f"listing connections needs more privileges on this system ({exc})") from None


def connection_from_sconn(sconn) -> Connection:
    """psutil's sconn as lognet's Connection: the same seven fields, nothing more known."""
    return Connection(*sconn)


ENGINES: dict[str, Callable[[], Source]] = {"psutil": PsutilSource}


def open_source(config: Config) -> Source:
    """The engine the configuration names; the one place an engine is made."""
    return ENGINES[config.engine]()


##############################################################################
# Filters: pure predicates
##############################################################################

@functools.lru_cache(maxsize=4096)
def is_private_address(ip: str) -> bool:
    """True for an RFC 1918 address, also when IPv4-mapped: '::ffff:10.1.2.3' -> True."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if address.version == 6:
        address = address.ipv4_mapped
        if address is None:
            return False
    return any(address in network for network in PRIVATE_NETWORKS)


def has_remote_address(conn: Connection) -> bool:
    """True when the connection has a peer (not a listener or an unconnected UDP socket)."""
    return bool(conn.raddr)


def has_public_remote_address(conn: Connection) -> bool:
    """True unless the peer's address is in a private network."""
    return not (conn.raddr and is_private_address(conn.raddr[0]))


def build_filter(config: Config) -> Callable[[Connection], bool]:
    """Return one predicate that keeps a connection when every active filter keeps it."""
    predicates = []
    if config.omit_self_conns:
        predicates.append(has_remote_address)
    if config.omit_privnet_conns:
        predicates.append(has_public_remote_address)
    return lambda conn: all(keep(conn) for keep in predicates)


##############################################################################
# Tracker: what opened, changed and closed since the last poll
##############################################################################

class Sighting:
    """What the tracker remembers of one live connection."""

    __slots__ = ("first_seen", "direction", "process", "orphaned")

    def __init__(self, first_seen: float, direction: str | None):
        self.first_seen = first_seen
        self.direction = direction
        self.process: ProcessInfo | None = None  # the owner, once looked up
        self.orphaned = False  # seen with an owner before, without one now (TIME_WAIT)


class Tracker:
    """Remembers the live connections and reports what opened, changed and closed.

    The whole snapshot is diffed as a set of records, in C; only the connections
    that differ are looked at one by one. Closed connections are forgotten, so
    memory follows the live set, never the history.
    """

    def __init__(self):
        self.live: frozenset[Connection] = frozenset()
        self.sightings: dict[tuple, Sighting] = {}  # by connection_id
        self.listening: dict[tuple, int] = {}  # (family, laddr) of live listeners: how many share it
        self.updates = 0
        self.previous_time = 0.0  # when the latest snapshot was taken
        self.last_sighting = 0.0  # when the one before it was: a connection closed now was last seen then

    def update(self, connections: Iterable[Connection], now: float = 0.0) -> list[ConnectionEvent]:
        """Return what opened, changed status or closed since the previous update.

        An event's process is the owner remembered so far (None for a new connection);
        the poller fills in the owners it looks up, through remember_owner()."""
        current = frozenset(connections)
        differ = current ^ self.live  # one pass that compares each record once; what differs is few
        self.live = current
        self.updates += 1
        self.last_sighting, self.previous_time = self.previous_time, now
        if not differ:
            return []
        added = [conn for conn in differ if conn in current]
        gone = {connection_id(conn): conn for conn in differ if conn not in current}
        by_address = {connection_address(conn): conn for conn in gone.values() if conn.raddr}
        self._count_listeners(added, +1)  # before directions: a listener seen in this poll counts
        events = [self._arrive(conn, gone, by_address, now) for conn in added]
        self._count_listeners(gone.values(), -1)
        events += [self._event("close", conn, self.sightings.pop(connection_id(conn)), self.last_sighting)
                   for conn in gone.values()]
        return events

    def remember_owner(self, conn: Connection, process: ProcessInfo) -> ProcessInfo:
        """Keep the owner of a live connection, for its later lines; return it."""
        self.sightings[connection_id(conn)].process = process
        return process

    def _arrive(self, conn: Connection, gone: dict[tuple, Connection], by_address: dict[tuple, Connection],
                now: float) -> ConnectionEvent:
        """An open; or a state change when conn continues a record gone from the snapshot: the
        same id in another status, or the same TCP addresses with an owner that the kernel let
        go of (TIME_WAIT) or that was found a poll late."""
        old = gone.pop(connection_id(conn), None)
        if old is None and conn.raddr:
            old = by_address.get(connection_address(conn))
            if old is None or (old.pid is None) == (conn.pid is None) or gone.pop(connection_id(old), None) is None:
                old = None
            else:
                self.sightings[connection_id(old)].orphaned = conn.pid is None
        if old is None:
            sighting = self.sightings[connection_id(conn)] = Sighting(now, self.direction(conn))
            return self._event("open", conn, sighting, now)
        sighting = self.sightings[connection_id(conn)] = self.sightings.pop(connection_id(old))
        return self._event("state", conn, sighting, now)

    def _count_listeners(self, conns: Iterable[Connection], step: int) -> None:
        for conn in conns:
            if conn.status == LISTEN:
                address = (conn.family, conn.laddr)
                count = self.listening.get(address, 0) + step
                if count:
                    self.listening[address] = count
                else:
                    del self.listening[address]

    @staticmethod
    def _event(event: str, conn: Connection, sighting: Sighting, seen: float) -> ConnectionEvent:
        if conn.pid is not None:
            process, attrib = sighting.process, "pid"
        else:
            process = sighting.process if sighting.orphaned else None
            attrib = "orphan" if sighting.orphaned or conn.status == TIME_WAIT else "hidden"
        return ConnectionEvent(event, conn, process, sighting.first_seen, seen, sighting.direction, attrib)

    def direction(self, conn: Connection) -> str | None:
        """'listen', 'in' (to a local listener), 'out' (this host connected), or None when unknown."""
        if conn.status == LISTEN:
            return "listen"
        if not conn.raddr:
            return None  # an unconnected UDP socket
        wildcard = ("0.0.0.0" if conn.family == socket.AF_INET else "::", conn.laddr[1])
        if (conn.family, conn.laddr) in self.listening or (conn.family, wildcard) in self.listening:
            return "in"
        if conn.type == socket.SOCK_DGRAM or conn.status == SYN_SENT or self.updates > 1:
            return "out"
        return None  # already established when lognet started, and no listener known: either way


def connection_order(conn: Connection) -> tuple:
    """Owner, then address: the order of a poll's lines."""
    return (conn.pid is not None, conn.pid or 0, conn.laddr, conn.raddr, conn.fd)


##############################################################################
# Formatters: pure functions from records to lines
##############################################################################

_PLAIN = frozenset("\\ |")  # ASCII characters that always need an escape in a field


def escape_field(text: str | None) -> str:
    r"""Make text one space-free, printable token; None or '' becomes '-'.

    Backslash becomes '\\'; space, '|', control characters and undecodable
    bytes become '\xNN'; other unprintable characters become '\uNNNN':
    'Web Content' -> 'Web\x20Content', 'a|b\n' -> 'a\x7cb\x0a'.
    """
    if not text:
        return "-"
    if text == "-":
        return "\\x2d"  # a literal '-' must not read as "missing"
    if text.isprintable() and _PLAIN.isdisjoint(text):
        return text
    return "".join(_escape_char(char) for char in text)


def _escape_char(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if char in _PLAIN or code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if char.isprintable():
        return char
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def format_field(value) -> str:
    """One log field: '-' for a missing value, else the escaped text."""
    return "-" if value is None else escape_field(str(value))


def format_create_time(create_time: float | None) -> str:
    """create_time with two decimals, as psutil's clock-tick precision gives it."""
    return "-" if create_time is None else f"{create_time:.2f}"


def format_upid(process: ProcessInfo | None) -> str:
    """The unique process id 'name|pid|create_time', or '-' for an unknown owner."""
    if process is None:
        return "-"
    return f"{escape_field(process.name)}|{process.pid}|{format_create_time(process.create_time)}"


def format_timestamp(epoch: float, utc: bool = False) -> str:
    """'YYYY-MM-DD|HH:MM:SS' in local time, or UTC."""
    return time.strftime("%Y-%m-%d|%H:%M:%S", time.gmtime(epoch) if utc else time.localtime(epoch))


def format_iso_timestamp(epoch: float, utc: bool = False) -> str:
    """ISO 8601 with milliseconds and the UTC offset: '2026-11-27T07:12:01.123+00:00'."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return (moment if utc else moment.astimezone()).isoformat(timespec="milliseconds")


def format_header(fields: Iterable[str], epoch: float, utc: bool = False) -> list[str]:
    """The W3C directive lines that open a log."""
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch) if utc else time.localtime(epoch))
    return ["#Version: 1.0", f"#Date: {date}", "#Fields: " + " ".join(fields)]


def format_process(process: ProcessInfo, timestamp: str) -> str:
    """One processes.log line; the command line keeps Python's list form, which is one line."""
    cmdline = str(list(process.cmdline)) if process.cmdline else "-"
    return f"{timestamp} {format_upid(process)} {cmdline}"


def duration_decimals(interval: float) -> int:
    """Decimals a duration can honestly have when sightings are interval apart: 3 -> 0, 0.2 -> 1, 0.05 -> 2."""
    return max(0, math.ceil(-math.log10(interval)))


def _owner(attribute: str) -> Callable[[ConnectionEvent], object]:
    return lambda e: getattr(e.process, attribute) if e.process else None


# Every connection field but the timestamp, read from an event; None where it is unknown.
# Times are epoch seconds here: each format writes them its own way. The order is JSON Lines'.
EVENT_VALUES: dict[str, Callable[[ConnectionEvent], object]] = {
    "event": lambda e: e.event,
    "prot": lambda e: PROTOCOLS.get(e.conn.type),
    "family": lambda e: FAMILIES.get(e.conn.family),
    "laddr": lambda e: e.conn.laddr[0] if e.conn.laddr else None,
    "lport": lambda e: e.conn.laddr[1] if e.conn.laddr else None,
    "raddr": lambda e: e.conn.raddr[0] if e.conn.raddr else None,
    "rport": lambda e: e.conn.raddr[1] if e.conn.raddr else None,
    "status": lambda e: e.conn.status,
    "pid": lambda e: e.process.pid if e.process else e.conn.pid,
    "name": _owner("name"),
    "create_time": _owner("create_time"),
    "upid": lambda e: format_upid(e.process) if e.process else None,
    "user": _owner("username"),
    "exe": _owner("exe"),
    "direction": lambda e: e.direction,
    "attrib": lambda e: e.attrib,
    "firstseen": lambda e: e.first_seen,
    "duration": lambda e: e.duration,
}


class W3CFormat:
    """The original's format: directive headers, space-separated fields, '-' for missing.

    One instance serves one log: it writes that log's fields (connections.log's
    chosen fields, or processes.log's three)."""

    def __init__(self, fields: tuple[str, ...] = CONNECTION_FIELDS, utc: bool = False,
                 interval: float = DEFAULT_INTERVAL):
        self.fields = fields
        self.utc = utc
        self.decimals = duration_decimals(interval)

    @functools.cached_property
    def _columns(self) -> list[Callable[[ConnectionEvent, str], str]]:
        """What writes each field of a connection line: its escaped value, but for these."""
        utc, decimals = self.utc, self.decimals
        special = {
            "timestamp": lambda e, timestamp: timestamp,  # formatted once per poll
            "upid": lambda e, timestamp: format_upid(e.process),  # escaped by format_upid
            "firstseen": lambda e, timestamp: format_timestamp(e.first_seen, utc),
            "duration": lambda e, timestamp: "-" if e.duration is None else f"{e.duration:.{decimals}f}",
        }
        return [special.get(field) or (lambda e, timestamp, value=EVENT_VALUES[field]: format_field(value(e)))
                for field in self.fields]

    def timestamp(self, epoch: float) -> str:
        return format_timestamp(epoch, self.utc)

    def header(self, epoch: float) -> list[str]:
        return format_header(self.fields, epoch, self.utc)

    def connection(self, event: ConnectionEvent, timestamp: str) -> str:
        return " ".join([column(event, timestamp) for column in self._columns])

    def process(self, process: ProcessInfo, timestamp: str) -> str:
        return format_process(process, timestamp)

    def remark(self, text: str, epoch: float) -> str:
        return f"#Remark: {text}"

    def stats(self, stats: dict, epoch: float) -> str:
        coverage = "-" if stats["coverage"] is None else f"{stats['coverage']:.3f}"
        opens = "-" if stats["tcp_opens"] is None else stats["tcp_opens"]
        return self.remark(f"coverage {coverage} (kernel TCP opens {opens}, seen {stats['tcp_seen']}); "
                           f"polls {stats['polls']}; average poll {stats['avg_poll_ms']:.1f} ms; "
                           f"late lines {stats['late']}; dropped lines {stats['dropped']}", epoch)


class JsonLinesFormat:
    """One JSON object per line, no header; every field, null for what is missing.
    ASCII only, so every byte a process supplied survives as an escape."""

    def __init__(self, fields: tuple[str, ...] = CONNECTION_FIELDS, utc: bool = False,
                 interval: float = DEFAULT_INTERVAL):
        self.utc = utc
        decimals = duration_decimals(interval)
        special = {
            "firstseen": lambda e: format_iso_timestamp(e.first_seen, utc),
            "duration": lambda e: None if e.duration is None else round(e.duration, decimals),
        }
        self._values = [(field, special.get(field, value)) for field, value in EVENT_VALUES.items()]

    def timestamp(self, epoch: float) -> str:
        return format_iso_timestamp(epoch, self.utc)

    def header(self, epoch: float) -> list[str]:
        return []

    def connection(self, event: ConnectionEvent, timestamp: str) -> str:
        return self._line({"ts": timestamp, **{field: value(event) for field, value in self._values}})

    def process(self, process: ProcessInfo, timestamp: str) -> str:
        return self._line({
            "ts": timestamp,
            "upid": format_upid(process),
            "pid": process.pid,
            "name": process.name,
            "create_time": process.create_time,
            "cmdline": list(process.cmdline) if process.cmdline is not None else None,
            "exe": process.exe,
            "username": process.username,
        })

    def remark(self, text: str, epoch: float) -> str:
        return self._line({"ts": self.timestamp(epoch), "event": "remark", "remark": text})

    def stats(self, stats: dict, epoch: float) -> str:
        return self._line({"ts": self.timestamp(epoch), "event": "stats", **stats})

    @staticmethod
    def _line(record: dict) -> str:
        return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


FORMATS = {"w3c": W3CFormat, "jsonl": JsonLinesFormat}
Format = Union[W3CFormat, JsonLinesFormat]


##############################################################################
# Sinks: the only code that owns file handles
##############################################################################

class OutputClosed(Exception):
    """The reader of standard output went away (lognet -clog - | head): end quietly."""


class Sink:
    """Delivers each poll's lines in one go.

    While delivery fails, the lines are held (up to MAX_PENDING_LINES, the
    oldest dropped first) and delivered later, in order, after a remark that
    says how many were late or dropped. One error is printed per failure episode.
    """

    def __init__(self, fmt: Format, now: Callable[[], float] = time.time):
        self.format = fmt
        self.now = now
        self.pending: deque[str] = deque()
        self.dropped = 0
        self.failure: str | None = None  # why the current failure episode began
        self.failure_since = ""
        self.total_late = 0
        self.total_dropped = 0

    @property
    def name(self) -> str:
        """What messages call this output."""
        raise NotImplementedError

    def write(self, lines: list[str]) -> None:
        """Deliver lines, after any held ones; hold them all if that fails."""
        self.pending.extend(lines)
        overflow = len(self.pending) - MAX_PENDING_LINES
        for _ in range(max(0, overflow)):
            self.pending.popleft()
        self.dropped += max(0, overflow)
        held = max(0, len(self.pending) - len(lines))
        try:
            self._deliver(self._remark(held))
        except OSError as exc:
            if self.failure is None:
                self.failure = exc.strerror or str(exc)
                self.failure_since = format_timestamp(self.now(), self.format.utc)
                warn(f"cannot write {self.name}: {self.failure}; holding its lines until writing works again",
                     "error")
            return
        if self.failure is not None:
            warn(f"writing {self.name} works again; {held} held lines written, {self.dropped} dropped")
            self.total_late += held
            self.total_dropped += self.dropped
        self.pending.clear()
        self.dropped = 0
        self.failure = None

    def _remark(self, held: int) -> list[str]:
        if self.failure is None:
            return []
        text = f"the next {held} lines are late: writing failed ({self.failure}) since {self.failure_since}"
        if self.dropped:
            text += f"; {self.dropped} lines were dropped"
        return [self.format.remark(text, self.now())]

    def _deliver(self, lead: list[str]) -> None:
        """Send lead, then the pending lines; raise OSError when that fails."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file or socket; held lines stay held."""


class LogFile(Sink):
    """An append-only log file (or standard output for '-') that survives
    rotation, truncation and write errors."""

    def __init__(self, path: str, fmt: Format, now: Callable[[], float] = time.time):
        super().__init__(fmt, now)
        self.path = path
        self.fd: int | None = None
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of a regular file that fd points at
        self.end = 0  # size of a regular file after our last write, to notice copytruncate
        self.needs_header = True

    @property
    def name(self) -> str:
        return self.path

    def open(self) -> None:
        """Open (or create, mode 0640) the log for appending; OSError if impossible."""
        if self.path == "-":
            fd = os.dup(sys.stdout.fileno())
        elif os.path.isdir(self.path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.path)
        else:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
        self.close()
        self.fd = fd
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) and self.path != "-" else None
        self.end = st.st_size
        self.needs_header = True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _deliver(self, lead: list[str]) -> None:
        self._follow_path()
        out = self.format.header(self.now()) if self.needs_header else []
        out += lead
        out.extend(self.pending)
        if out:
            self._write_all(("\n".join(out) + "\n").encode("utf-8", "backslashreplace"))
        self.needs_header = False

    def _follow_path(self) -> None:
        # Reopen when the path now names another file (mv, logrotate's create)
        # or none (rm); write a fresh header after a truncation (copytruncate).
        if self.fd is None:
            self.open()
        if self.identity is None:
            return  # standard output, a device or a pipe, such as /dev/full or /dev/null
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self.identity
        except FileNotFoundError:
            moved = True
        if moved:
            self.open()
        elif os.fstat(self.fd).st_size < self.end:
            self.end = 0
            self.needs_header = True

    def _write_all(self, data: bytes) -> None:
        start = self.end
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, data[written:])
        except BrokenPipeError:
            if self.path == "-":
                raise OutputClosed() from None
            raise
        except OSError:
            if written and self.identity is not None:
                # A half line must not stay behind: cut back to the last whole write.
                try:
                    os.ftruncate(self.fd, start)
                except OSError:
                    pass  # the bytes stay; the whole batch is written again anyway
            raise
        self.end = start + written


class SyslogSink(Sink):
    """Sends each line as one syslog message: RFC 5424 over UDP or TCP; to a local
    socket, the form syslog(3) uses, which is the one every local daemon parses."""

    def __init__(self, transport: str, address: str, msgid: str, facility: str, fmt: Format,
                 now: Callable[[], float] = time.time):
        super().__init__(fmt, now)
        self.transport = transport
        self.address = address
        self.msgid = msgid
        self.priority = SYSLOG_FACILITIES[facility] * 8 + SYSLOG_INFO
        self.hostname = socket.gethostname() or "-"
        self.sock: socket.socket | None = None

    @property
    def name(self) -> str:
        return f"syslog {self.transport}:{self.address}"

    def _connect(self) -> socket.socket:
        if self.sock is None:
            if self.transport == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                target = self.address
            else:
                host, port = split_host_port(self.address)
                kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
                family, _, _, _, target = socket.getaddrinfo(host, port, type=kind)[0]
                sock = socket.socket(family, kind)
            sock.settimeout(SYSLOG_TIMEOUT)
            try:
                sock.connect(target)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        return self.sock

    def _deliver(self, lead: list[str]) -> None:
        lines = lead + list(self.pending)
        if not lines:
            return
        now = self.now()
        if self.transport == "unix":
            local = time.localtime(now)
            header = (f"<{self.priority}>{MONTHS[local.tm_mon - 1]} {local.tm_mday:2d} "
                      f"{time.strftime('%H:%M:%S', local)} lognet[{os.getpid()}]: ")
        else:
            header = (f"<{self.priority}>1 {format_iso_timestamp(now, self.format.utc)} {self.hostname} "
                      f"lognet {os.getpid()} {self.msgid} - ")
        messages = [(header + line).encode("utf-8", "backslashreplace") for line in lines]
        sock = self._connect()
        try:
            if self.transport == "tcp":  # octet counting (RFC 6587): a message may hold any byte
                sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in messages))
            else:
                for message in messages:
                    sock.send(message)
        except OSError:
            self.close()  # connect afresh next time
            raise

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def split_host_port(address: str) -> tuple[str, int]:
    """'host:514' -> ('host', 514); '[::1]:514' -> ('::1', 514)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


##############################################################################
# Log paths
##############################################################################

def fallback_log_dir() -> str:
    """The per-user folder used when the default folder cannot be written."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "lognet")


class Stream(NamedTuple):
    """One stream of lines (connections or processes): its format, and the sinks that take it."""

    format: Format
    sinks: list[Sink]

    def write(self, lines: list[str]) -> None:
        for sink in self.sinks:
            sink.write(lines)


class Outputs(NamedTuple):
    """Where lines go: the connections stream and the processes stream."""

    connections: Stream
    processes: Stream

    def all(self) -> list[Sink]:
        return self.processes.sinks + self.connections.sinks


def open_outputs(config: Config, defaulted: tuple[bool, bool] = (False, False)) -> Outputs:
    """Open both logs, and the syslog destination if one was asked for."""
    make_format = FORMATS[config.format]
    connections = Stream(make_format(config.fields, config.utc, config.interval), [])
    processes = Stream(make_format(PROCESS_FIELDS, config.utc), [])
    clog, plog = open_logs(config, defaulted, (connections.format, processes.format))
    connections.sinks.append(clog)
    processes.sinks.append(plog)
    if config.syslog:
        transport, address = config.syslog
        for msgid, stream in (("connection", connections), ("process", processes)):
            stream.sinks.append(SyslogSink(transport, address, msgid, config.syslog_facility, stream.format))
    return Outputs(connections, processes)


def open_logs(config: Config, defaulted: tuple[bool, bool], formats: tuple[Format, Format]) -> tuple[LogFile, LogFile]:
    """Open connections.log and processes.log, each in its format. A default path falls back to
    the per-user folder with one warning; a path the user gave is never replaced: it opens, or LognetError."""
    logs, fallback_reason = [], None
    for path, fmt, is_default in zip((config.connections_log, config.processes_log), formats, defaulted):
        try:
            logs.append(open_log(path, fmt, make_folder=is_default))
        except OSError as exc:
            if not is_default:
                raise LognetError(f"cannot open log {path}: {exc.strerror}") from None
            fallback_reason = fallback_reason or f"{os.path.dirname(path)}: {exc.strerror}"
            fallback = os.path.join(fallback_log_dir(), os.path.basename(path))
            try:
                logs.append(open_log(fallback, fmt, make_folder=True))
            except OSError as exc:
                raise LognetError(f"cannot open log {fallback}: {exc.strerror}") from None
    if fallback_reason:
        warn(f"cannot write the default log folder ({fallback_reason}); logging to {fallback_log_dir()} instead")
    return logs[0], logs[1]


def open_log(path: str, fmt: Format, make_folder: bool) -> LogFile:
    """An open LogFile at path; its folder is made (0750) only when make_folder. OSError if impossible."""
    if make_folder:
        os.makedirs(os.path.dirname(path), mode=LOG_DIR_MODE, exist_ok=True)
    log = LogFile(path, fmt)
    log.open()
    return log


##############################################################################
# The loop
##############################################################################

class Signals:
    """Turns SIGTERM/SIGINT into a stop and SIGHUP into a reopen, waking any sleep."""

    def __init__(self):
        self.stop = False
        self.reopen = False
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

    def install(self) -> None:
        """Route the signals here; a signal during sleep() ends the sleep at once."""
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_stop(self, signum, frame) -> None:
        self.stop = True

    def _on_hangup(self, signum, frame) -> None:
        self.reopen = True

    def sleep(self, seconds: float) -> None:
        """Sleep up to seconds, or until a signal arrives."""
        readable, _, _ = select.select([self._wake_r], [], [], max(0.0, seconds))
        if readable:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass  # another reader drained it: the wake-up already happened


class Poller:
    """One poll: snapshot, diff, filter, look up owners, format, write."""

    def __init__(self, config: Config, source: Source, outputs: Outputs,
                 now: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.source = source
        self.outputs = outputs
        self.now = now
        self.clock = clock
        self.tracker = Tracker()
        self.keep = build_filter(config)
        # With only the original fields, lognet writes what it always wrote: no close lines,
        # no owner carried into TIME_WAIT, no statistics unless asked for.
        self.lifecycle_fields = config.format == "jsonl" or config.fields != CONNECTION_FIELDS
        self.logs_closes = config.format == "jsonl" or "event" in config.fields
        self.stats_every = config.stats_interval or (DEFAULT_STATS_INTERVAL if self.lifecycle_fields else None)
        self.next_stats = clock() + (self.stats_every or 0)
        self.tcp_opens_at_start: int | None = None
        self.tcp_seen = 0  # TCP connections first seen after the first poll
        self.polls = 0
        self.lines = 0  # lines given to the logs, both streams
        self.poll_seconds = 0.0
        self.last_poll_seconds = 0.0

    def poll(self) -> int:
        """Run one poll and return the number of connection lines it wrote."""
        started = self.clock()
        if self.polls == 0 and self.stats_every:
            self.tcp_opens_at_start = self.source.tcp_opens()
            if self.tcp_opens_at_start is None:
                warn(f"coverage is not available on this system (no TCP counters in {SNMP})")
        now = self.now()
        events, new_processes = self.logged_events(self.tracker.update(self.source.connections(self.config.kind), now))
        self.count_seen(events)
        self.write(events, new_processes, now)
        self.polls += 1
        self.last_poll_seconds = self.clock() - started
        self.poll_seconds += self.last_poll_seconds
        if self.stats_every and self.clock() >= self.next_stats:
            self.next_stats = self.clock() + self.stats_every
            self.write_stats()
        return len(events)

    def logged_events(self, events: list[ConnectionEvent]) -> tuple[list[ConnectionEvent], list[ProcessInfo]]:
        """The events the filters keep, in line order, each with its owner; and the owners
        that lognet had not met before."""
        logged = [e for e in events if (self.logs_closes or e.event != "close") and self.keep(e.conn)]
        logged.sort(key=lambda event: connection_order(event.conn))
        owners, new_processes = self.source.processes(
            {e.conn.pid for e in logged if e.conn.pid is not None and e.event != "close"})
        return [self.attribute(event, owners) for event in logged], new_processes

    def attribute(self, event: ConnectionEvent, owners: dict[int, ProcessInfo]) -> ConnectionEvent:
        """The event with the owner looked up in this poll; a close whose owner has died is an orphan."""
        conn = event.conn
        if conn.pid is None:
            # Only lifecycle lines carry an owner into TIME_WAIT; the original eight fields never did.
            return event if self.lifecycle_fields else event._replace(process=None)
        if event.event != "close":
            return event._replace(process=self.tracker.remember_owner(conn, owners[conn.pid]))
        return event if self.source.is_running(event.process) else event._replace(attrib="orphan")

    def count_seen(self, events: list[ConnectionEvent]) -> None:
        """Count the TCP connections seen opening, for coverage."""
        if self.polls > 0:  # the first poll finds what was open before the kernel counters were read
            self.tcp_seen += sum(1 for e in events if e.event == "open" and e.conn.type == socket.SOCK_STREAM
                                 and e.conn.raddr)

    def write(self, events: list[ConnectionEvent], new_processes: list[ProcessInfo], now: float) -> None:
        """Format and write a poll's lines: processes.log first, so that a reader of a new
        connection line finds its command line."""
        connections, processes = self.outputs
        timestamp = processes.format.timestamp(now)
        process_lines = [processes.format.process(process, timestamp) for process in new_processes]
        timestamp = connections.format.timestamp(now)
        connection_lines = [connections.format.connection(event, timestamp) for event in events]
        processes.write(process_lines)
        connections.write(connection_lines)
        self.lines += len(process_lines) + len(connection_lines)

    def stats(self) -> dict:
        """Coverage and health since the start: kernel TCP opens against connections seen."""
        opens = self.source.tcp_opens()
        kernel = None if opens is None or self.tcp_opens_at_start is None else opens - self.tcp_opens_at_start
        late = sum(sink.total_late for sink in self.outputs.all())
        dropped = sum(sink.total_dropped + sink.dropped for sink in self.outputs.all())
        return {"coverage": round(self.tcp_seen / kernel, 4) if kernel else None, "tcp_opens": kernel,
                "tcp_seen": self.tcp_seen, "polls": self.polls,
                "avg_poll_ms": round(self.poll_seconds / max(1, self.polls) * 1e3, 3),
                "late": late, "dropped": dropped, "held": sum(len(sink.pending) for sink in self.outputs.all())}

    def write_stats(self) -> None:
        """The statistics remark, to every connections output."""
        self.outputs.connections.write([self.outputs.connections.format.stats(self.stats(), self.now())])
        self.lines += 1

    def finish(self) -> None:
        """At exit: the last statistics. Connections still open get no close line: they did not close."""
        if self.stats_every and self.polls:
            self.write_stats()

    def reopen(self) -> None:
        """SIGHUP (after logrotate): let go of every file and socket; the next write opens
        them afresh, a log with a fresh header, and reports a failure as any write does."""
        self.close()

    def close(self) -> None:
        """Close every output."""
        for sink in self.outputs.all():
            sink.close()


class StatusLine:
    """One line on a terminal's stderr, redrawn in place at most once a second."""

    def __init__(self, stream, outputs: Outputs, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.paths = " ".join(sink.name for sink in outputs.connections.sinks + outputs.processes.sinks)
        self.clock = clock
        self.shown_at: float | None = None

    def update(self, poller: Poller, force: bool = False) -> None:
        """Redraw the line if a second has passed since it was last drawn."""
        now = self.clock()
        if not force and self.shown_at is not None and now - self.shown_at < STATUS_SECONDS:
            return
        self.shown_at = now
        self.stream.write(f"\r\x1b[Klognet: {poller.polls} polls, {len(poller.tracker.live)} live connections, "
                          f"{poller.lines} lines written, last poll {poller.last_poll_seconds * 1e3:.0f} ms"
                          f" -> {self.paths}")
        self.stream.flush()

    def close(self, poller: Poller) -> None:
        """Show the final counts, and leave the terminal on a fresh line."""
        if self.shown_at is not None:
            self.update(poller, force=True)
            self.stream.write("\n")
            self.stream.flush()


def run(config: Config, poller: Poller, *, signals: Signals | None = None, status: StatusLine | None = None,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] | None = None) -> int:
    """Poll on a fixed monotonic schedule until count polls are done or a stop signal; return polls run."""
    signals = signals or Signals()
    sleep = sleep or signals.sleep
    polls = 0
    deadline = clock()
    next_gc = deadline + GC_SECONDS
    # A poll makes no reference cycles, but psutil's many allocations set off cycle
    # collections that walk every live connection lognet holds (measured: a poll took
    # about 3% longer). So the collector runs here, between polls, once a minute.
    collecting = gc.isenabled()
    gc.disable()
    try:
        while not signals.stop:
            if signals.reopen:
                signals.reopen = False
                poller.reopen()
            poller.poll()
            polls += 1
            if status:
                status.update(poller)
            if config.count is not None and polls >= config.count:
                break
            if clock() >= next_gc:
                gc.collect()
                next_gc = clock() + GC_SECONDS
            deadline += config.interval
            if clock() > deadline:
                deadline = clock()  # a poll overran the interval: start the schedule afresh, skip no sleep debt
            while not signals.stop and (remaining := deadline - clock()) > 0:
                sleep(remaining)
    finally:
        if collecting:
            gc.enable()
    return polls


##############################################################################
# Command line
##############################################################################

EXAMPLES = """\
examples:
  lognet -i 1 -p tcp                 # poll TCP connections every second
  lognet -ipv 4 --omit-privnet-conns # IPv4 only, leave out peers in 10/8, 172.16/12, 192.168/16
  lognet -clog ./c.log -plog ./p.log # write the logs here instead of /var/log/netlog
  lognet -n 10 -i 0.2                # take 10 polls, 0.2 s apart, then exit
  lognet -clog - -plog /dev/null -p tcp | grep ' 443 '   # connection lines on stdout
  lognet --format jsonl --syslog tcp://loghost:514       # JSON Lines, also to a syslog collector
  lognet --fields +event,duration,direction,attrib       # also close lines, lifetimes, who connected
  tail -f /var/log/netlog/connections.log   # watch it live
  # crontab -e (as root):
  @reboot /usr/bin/python3 /opt/lognet/lognet.py -i 1 >>/var/log/netlog/lognet.err 2>&1
"""


def positive_float(text: str) -> float:
    """argparse type: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def syslog_address(text: str) -> tuple[str, str]:
    """argparse type: '/dev/log' (a local socket), 'host:514' or 'udp://host:514', 'tcp://host:514'."""
    if text.startswith("/"):
        return ("unix", text)
    transport, scheme, rest = text.partition("://")
    if not scheme:
        transport, rest = "udp", text
    if transport not in ("udp", "tcp"):
        raise argparse.ArgumentTypeError(f"unknown transport {transport!r}: use udp:// or tcp://")
    if not rest.rpartition(":")[2].isdigit() or rest.endswith("]"):
        rest += ":514"
    host, port = split_host_port(rest)
    if not host or not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"not a socket path or host:port: {text!r}")
    return (transport, rest)


def field_list(text: str) -> tuple[str, ...]:
    """argparse type: 'a,b,c' chooses connections.log's fields; '+a,b' adds them to the original eight."""
    append = text.startswith("+")
    names = [name.strip() for name in text.lstrip("+").split(",") if name.strip()]
    known = CONNECTION_FIELDS + EXTRA_FIELDS
    for name in names:
        if name not in known:
            raise argparse.ArgumentTypeError(f"unknown field {name!r} (choose from {', '.join(known)})")
    fields = (CONNECTION_FIELDS if append else ()) + tuple(names)
    if not names or len(set(fields)) != len(fields):
        raise argparse.ArgumentTypeError(f"each field once, at least one: {text!r}")
    return fields


def positive_int(text: str) -> int:
    """argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (exit 2) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; the original's short options keep their spelling."""
    parser = ArgumentParser(
        prog="lognet",
        description="Log every network connection on this host, with the process that owns it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-i", "--interval", type=positive_float, default=DEFAULT_INTERVAL, metavar="I",
                        help="interval (in seconds) for connection enumeration (default: 3s)")
    parser.add_argument("-clog", "--connections-log", metavar="CLOG",
                        help=f"output file for connections log (default: {DEFAULT_CONNECTIONS_LOG})")
    parser.add_argument("-plog", "--processes-log", metavar="PLOG",
                        help=f"output file for processes list (default: {DEFAULT_PROCESSES_LOG})")
    parser.add_argument("-ipv", "--ip-version", type=int, choices=(4, 6),
                        help="filters by internet protocol version (if omitted, it includes both)")
    parser.add_argument("-p", "--protocol", choices=("udp", "tcp"),
                        help="filters by protocol (if omitted, it includes both)")
    parser.add_argument("--omit-self-conns", action="store_true",
                        help="omits connections without remote address")
    parser.add_argument("--omit-privnet-conns", action="store_true",
                        help="omits connections to private networks (RFC 1918, also IPv4-mapped IPv6)")
    parser.add_argument("-n", "--count", type=positive_int, metavar="N",
                        help="stop after N polls and exit 0 (default: run until stopped)")
    parser.add_argument("--utc", action="store_true", help="timestamps in UTC instead of local time")
    parser.add_argument("--format", choices=tuple(FORMATS), default="w3c",
                        help="w3c: the original's W3C-style lines (default); jsonl: one JSON object per line")
    parser.add_argument("--fields", type=field_list, default=CONNECTION_FIELDS, metavar="LIST",
                        help="connections.log's fields, comma-separated; a leading + adds to the default eight: "
                             f"+event,duration,direction (extra fields: {', '.join(EXTRA_FIELDS)})")
    parser.add_argument("--stats-interval", type=positive_float, metavar="SECONDS",
                        help=f"write a coverage and health #Remark this often and at exit (default "
                             f"{DEFAULT_STATS_INTERVAL:g} when --fields or jsonl add lifecycle fields, else never)")
    parser.add_argument("--syslog", nargs="?", const=DEFAULT_SYSLOG, type=syslog_address, metavar="ADDRESS",
                        help=f"also send every line to syslog: a socket path (default {DEFAULT_SYSLOG}), "
                             "host:port over UDP, or tcp://host:port")
    parser.add_argument("--syslog-facility", choices=tuple(SYSLOG_FACILITIES), default="daemon", metavar="NAME",
                        help="syslog facility: daemon (default), user, local0 ... local7, ...")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no status line on a terminal (it is never shown when stderr is not one)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[Config, tuple[bool, bool]]:
    """Parse argv into a Config, and which of the two log paths are defaults."""
    args = build_parser().parse_args(argv)
    config = Config(
        interval=args.interval,
        count=args.count,
        kind=KINDS[(args.ip_version, args.protocol)],
        omit_self_conns=args.omit_self_conns,
        omit_privnet_conns=args.omit_privnet_conns,
        connections_log=args.connections_log or DEFAULT_CONNECTIONS_LOG,
        processes_log=args.processes_log or DEFAULT_PROCESSES_LOG,
        utc=args.utc,
        format=args.format,
        fields=args.fields,
        stats_interval=args.stats_interval,
        syslog=args.syslog,
        syslog_facility=args.syslog_facility,
        quiet=args.quiet,
    )
    return config, (args.connections_log is None, args.processes_log is None)


##############################################################################
# main
##############################################################################

def main(argv: list[str] | None = None) -> int:
    """Run lognet from the command line; return the exit status."""
    config, defaulted = parse_args(argv)
    signals = Signals()
    signals.install()
    try:
        outputs = open_outputs(config, defaulted)
        poller = Poller(config, open_source(config), outputs)
        status = StatusLine(sys.stderr, outputs) if sys.stderr.isatty() and not config.quiet else None
        try:
            run(config, poller, signals=signals, status=status)
            poller.finish()
        finally:
            poller.close()
            if status:
                status.close(poller)
    except LognetError as exc:
        print(f"lognet: error: {exc}", file=sys.stderr)
        return 1
    except OutputClosed:
        return 0  # the reader of standard output is gone: nothing is left to say
    return 0


if __name__ == "__main__":
    sys.exit(main())
