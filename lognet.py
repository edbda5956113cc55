#!/usr/bin/env python3
"""lognet: log every network connection on a host, with the process that owns it.

lognet finds every socket on the host (on Linux through the kernel's sock_diag
netlink interface, with a watcher between polls and the kernel's close events;
elsewhere through psutil.net_connections()) and appends a line for each
connection it has not seen before (or whose status changed) to connections.log,
and the command line of each process that owns one to processes.log. Both files
are in the W3C extended log style:

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
                 [--engine {auto,netlink,psutil}] [--watch SECONDS] [--max-cpu PERCENT]
                 [--fields +event,duration,direction,attrib,rhost] [--format jsonl] [--syslog [ADDRESS]]
       lognet.py report [--raddr ADDRESS[/BITS]] [--by process,peer] [--format jsonl] [LOG ...]
See lognet.py --help, lognet.py report --help, and docs/reference.md for the log format and the escape rule.
"""

from __future__ import annotations

import argparse
import ast
import calendar
import contextlib
import csv
import datetime
import errno
import functools
import gc
import gzip
import ipaddress
import itertools
import json
import math
import mmap
import operator
import os
import re
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator
from typing import Callable, NamedTuple, Protocol

try:
    import psutil
except ImportError:  # the one runtime dependency, of the daemon: main() says how to get it
    psutil = None

__version__ = "1.0.0"


##############################################################################
# Constants
##############################################################################

DEFAULT_INTERVAL = 3.0
DEFAULT_WATCH = 0.02  # seconds between the watcher's looks for new sockets (see README, Performance)
DEFAULT_LOG_DIR = "/var/log/netlog"
DEFAULT_CONNECTIONS_LOG = DEFAULT_LOG_DIR + "/connections.log"
DEFAULT_PROCESSES_LOG = DEFAULT_LOG_DIR + "/processes.log"
LOG_DIR_MODE = 0o750
LOG_FILE_MODE = 0o640  # command lines can carry secrets

CONNECTION_FIELDS = ("timestamp", "prot", "laddr", "lport", "raddr", "rport", "status", "upid")
# What --fields may add (the W3C way to choose logged fields); JSON Lines always has them all.
EXTRA_FIELDS = ("event", "duration", "direction", "family", "user", "exe", "attrib", "firstseen", "txbytes", "rxbytes",
                "netns", "container", "rhost")
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

DEFAULT_STATS_INTERVAL = 300.0
DEFAULT_MAX_CPU = 10.0  # percent of one core (--max-cpu)
DEFAULT_SYSLOG = "/dev/log"


##############################################################################
# Errors
##############################################################################

class LognetError(Exception):
    """A runtime error that ends lognet with a one-line message and status 1."""


def warn(message: str, level: str = "warning") -> None:
    """Print one 'lognet: warning: …' (or error) line on stderr."""
    try:
        clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # over a status line, if one is shown
        print(f"{clear}lognet: {level}: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass  # stderr is gone (a hung-up terminal): logging goes on, the message has nowhere to go


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
    container: str | None = None  # the container id in its cgroup path, its first 12 hex digits


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
    by_kernel: bool = False  # pid is what the kernel's events named (no fd of it found): fd is -1

    # What a close changes, made at about half _replace()'s cost: a flood has thousands a poll.
    def named_by_kernel(self, pid: int) -> Connection:
        """The same socket, held by the pid that the kernel's events named."""
        return tuple.__new__(Connection, (*self[:6], pid, *self[7:13], True))

    def with_rxbytes(self, rxbytes: int | None) -> Connection:
        return tuple.__new__(Connection, (*self[:12], rxbytes, self[13]))


class Closed(NamedTuple):
    """A socket the kernel reported destroyed, with what its tcp_info said of its bytes."""

    conn: Connection  # status CLOSE; txbytes is the payload sent, exactly
    time: float  # epoch seconds when lognet read the event
    received: int | None  # tcp_info's bytes_received, which counts the peer's FIN when it came
    acked_beyond: int | None  # bytes_acked beyond the payload: our SYN if we connected, our FIN once acked
    opened: float | None = None  # epoch seconds of its connect or accept, where the kernel's events said
    direction: str | None = None  # 'out' or 'in', where the kernel's events said


class ConnectionEvent(NamedTuple):
    """What happened to a connection (open, state or close), and what lognet knows of it then."""

    event: str
    conn: Connection
    process: ProcessInfo | None  # the owner, when known
    first_seen: float  # epoch seconds of the first sighting
    last_seen: float  # of this sighting; for a close, of the last one, or the kernel's close
    direction: str | None  # listen, in, out, or None when it cannot be told
    # how the owner is known: pid (its fd), kernel (the kernel's events named it), orphan,
    # hidden, or unseen (never seen alive, and no owner named)
    attrib: str
    time: float = 0.0  # when it happened, as well as lognet knows: the line's timestamp
    kernel_close: bool = False  # the kernel reported this close
    rhost: str | None = None  # the name this host resolved to the remote address, when lognet saw the answer
    alive_seen: bool = True  # False for the close of a socket no dump showed alive: its one line

    def owned(self, process: ProcessInfo | None) -> ConnectionEvent:
        """The same event with its owner: _replace()'s work, at about half its cost (see Connection)."""
        return tuple.__new__(ConnectionEvent, (*self[:2], process, *self[3:]))

    @property
    def duration(self) -> float | None:
        """Seconds between the first and the last sighting; None when it just opened, or was
        never seen alive and the kernel's events did not say when it opened."""
        if self.event == "open" or not self.alive_seen and self.first_seen >= self.last_seen:
            return None
        return max(0.0, self.last_seen - self.first_seen)


class Config(NamedTuple):
    """The settings of one run, resolved from the command line."""

    interval: float = DEFAULT_INTERVAL
    count: int | None = None
    kind: str = "inet"
    engine: str = "auto"  # psutil, netlink, or auto: netlink where Linux allows it, else psutil
    watch: float = DEFAULT_WATCH  # seconds between the watcher's looks (netlink engine); 0: no watcher
    netns: str = "all"  # the network namespaces the netlink engine watches: all that have a process, or its own
    omit_self_conns: bool = False
    omit_privnet_conns: bool = False
    omit_loopback_conns: bool = False
    connections_log: str = DEFAULT_CONNECTIONS_LOG
    processes_log: str = DEFAULT_PROCESSES_LOG
    utc: bool = False
    format: str = "w3c"
    fields: tuple[str, ...] = CONNECTION_FIELDS
    stats_interval: float | None = None  # None: DEFAULT_STATS_INTERVAL when lifecycle fields are on, else never
    syslog: tuple[str, str] | None = None  # (transport, address): ("unix", "/dev/log"), ("udp", "host:514")
    syslog_facility: str = "daemon"
    quiet: bool = False
    max_cpu: float = DEFAULT_MAX_CPU  # percent of one core; 100: no shedding
    kernel_events: str = "auto"  # owners from the kernel's tracepoints: auto (where allowed), on (or fail), off


class Look(NamedTuple):
    """What one look of the watcher between polls found (Source.watch())."""

    moved: bool  # sockets opened or closed (or asked DNS questions): more are likely soon
    dump_seconds: float  # CPU seconds its dumps and owner searches took
    read: int = 0  # close events and DNS questions read


class KnownSockets(NamedTuple):
    """What counting close events without decoding them needs to know of the sockets
    reported, in the form a message holds them."""

    cookies: set[bytes]  # their cookies (cookie_bytes())
    listeners: dict[tuple, int]  # (netns, family, laddr) of each listener -> the pid that holds it
    served: set[tuple[int, bytes]]  # (netns, local port as a message holds it) of each listener


class SkippedCloses(NamedTuple):
    """The kernel's closes counted and not decoded, for a CPU budget, of one peer, service port and owner."""

    conn: Connection  # one of them, standing for all
    count: int
    attrib: str | None  # how the owner is known: 'pid', 'listener', or None
    served: bool  # a listener here served them: the local port, not the remote one, names the service


class Summary(NamedTuple):
    """One line for closes that have no line of their own: a group of those skipped for the
    CPU budget, or a namespace's closes unheard while its close events were paused. The
    fields in the order a JSON summary writes them."""

    count: int
    netns: int | None
    pid: int | None
    attrib: str | None  # how the owner is known: 'pid', 'listener', 'unheard', or None
    prot: str
    direction: str | None
    raddr: str | None
    rport: int | None  # of an outgoing connection: the remote port names the service
    lport: int | None  # of an incoming one (served): the local port does


class CloseCounts(NamedTuple):
    """The kernel's closes of one protocol (in one namespace, or all), by what became of them."""

    with_process: int = 0  # logged with their process
    without: int = 0  # logged without one
    skipped: int = 0  # counted for the CPU budget, and summarized
    unheard: int = 0  # closed while the close events were paused: counted by the kernel's counters
    lost: int = 0  # events the kernel dropped

    @property
    def closed(self) -> int:
        return sum(self)

    def plus(self, other: CloseCounts) -> CloseCounts:
        return CloseCounts(*(a + b for a, b in zip(self, other)))


class Stats(NamedTuple):
    """Coverage and health since the start (Poller.stats()). Coverage is exact where the
    kernel reports closes (closes is not None): of the sockets it closed, those logged with
    their process. Elsewhere it is the kernel's TCP opens against the connections seen opening."""

    closes: dict[str, CloseCounts] | None  # by protocol ('tcp', 'udp'), with close events
    closes_by_netns: dict[int | None, dict[str, CloseCounts]]  # the same by namespace, when more than one
    close_events_read: int
    pauses: int  # times the close events were paused for the CPU budget
    tcp_opens: int | None  # without close events: the kernel's TCP opens since the first poll
    tcp_seen: int  # the TCP connections seen opening since
    max_cpu: float | None  # the CPU budget, percent of one core; None without one
    shed_spells: int
    shedding: str | None  # the step of shedding in force (SHED_STEPS), if any
    polls: int
    avg_poll_ms: float
    late: int
    dropped: int
    held: int
    # whether the kernel's events name owners ('on', 'paused', 'off: why'), and their samples
    # the kernel lost; None where the engine has none (psutil)
    owner_events: tuple[str, int] | None = None
    isolated: tuple[str, ...] = ()  # the flood groups isolated now (Poller.isolated())


def connection_id(conn: Connection) -> tuple:
    """What makes a connection the same one from poll to poll: what an engine reports of
    its socket and holder, but its status (and bytes, known only at its close)."""
    return (conn.netns, conn.cookie, conn.pid, conn.fd, conn.family, conn.type, conn.laddr, conn.raddr)


def connection_address(conn: Connection) -> tuple:
    """What a TCP connection keeps when its owner lets go of it."""
    return (conn.netns, conn.family, conn.type, conn.laddr, conn.raddr)


##############################################################################
# The CPU budget: lognet's own CPU time against --max-cpu, under a flood
##############################################################################

# The CPU budget (--max-cpu): lognet's own CPU time over the last CPU_WINDOW seconds (and
# the last poll interval), as a share of one core. Over it, lognet sheds one more step of
# work every SHED_STEP seconds (see SHED_STEPS and CpuBudget), and takes one back every
# SHED_STEP seconds under SHED_RESUME of it.
CPU_WINDOW = 1.0
SHED_STEP = 0.1
SHED_RESUME = 0.5
LINE_COST = 50e-6  # CPU seconds a poll takes per line, until measured (here: 30-55 µs, W3C to JSON Lines)
# What each level adds: first what loses nothing (while the watcher and the close events keep
# the record, a poll may wait), then the owners of short connections, then their details.
SHED_STEPS = ("", "polls stretched", "watcher", "closes counted", "close events paused")
SHED_POLLS, SHED_WATCHER, SHED_CLOSES, SHED_PAUSE = range(1, len(SHED_STEPS))
# A flood: at least FLOOD_RATE sockets a second opened or closed, over the last FLOOD_WINDOW
# seconds (a quiet host opens a few a second; a process that starts with a burst, one window's worth).
FLOOD_RATE = 200
FLOOD_WINDOW = 2.0
POLL_STRETCH = 3  # at the last level, a full poll comes every POLL_STRETCH intervals


class CpuBudget:
    """lognet's own CPU time, as a share of one core, against --max-cpu, and the rate of new
    sockets: a flood is both. level() says how much work to shed, an index of SHED_STEPS:
    one step more every SHED_STEP seconds over the budget under a flood, one less every
    SHED_STEP seconds under SHED_RESUME of it or once the flood is over (so that what was
    shed, taken back, does not put it over at once), never below the floor it is held at.

    Over the budget means over it in the last CPU_WINDOW seconds, and in the last `window`
    (a poll interval) too unless twice over: a full poll's burst, spread over its interval,
    is not a flood. Nor is lognet's own cost at the interval the user chose: a flood is at
    least FLOOD_RATE sockets a second, opened or closed, over FLOOD_WINDOW seconds, as the
    source counts them (count()). The process's CPU time counts both threads; one lock
    guards the level, which the source alone decides."""

    def __init__(self, percent: float, window: float = CPU_WINDOW, cpu: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic):
        self.share = percent / 100
        self.cpu, self.clock = cpu, clock
        # (clock, cpu) samples, the oldest of each just over its window ago
        self.windows = [(CPU_WINDOW, deque()), (max(CPU_WINDOW, window), deque())]
        self.sockets = 0  # sockets opened or closed since the start, as the source counted them
        self.flood = False  # whether they came at a flood's rate, when level() last looked
        self.churn: deque[tuple[float, int]] = deque()  # (clock, sockets), the oldest just over FLOOD_WINDOW ago
        self.shed = 0
        self.floor = 0  # the level it may not take back below (see hold())
        self.changed_at = clock()
        self.spells = 0  # how many times lognet began to shed
        self.line_cost = LINE_COST  # CPU seconds a poll takes for each line, as last measured
        self.lock = threading.Lock()

    def restart(self) -> None:
        """Forget the CPU used so far (the first poll's), and the sockets it met."""
        with self.lock:
            for _, samples in self.windows:
                samples.clear()
            self.churn.clear()

    def count(self, sockets: int) -> None:
        """Sockets the source met opened or closed: their rate tells a flood."""
        with self.lock:
            self.sockets += sockets

    def used(self, pending: float = 0.0) -> list[float]:
        """The share of one core that lognet used over about the last second, and the last
        window; pending: CPU seconds it is bound to spend, counted as spent."""
        now, cpu = self.clock(), self.cpu()
        shares = []
        for window, samples in self.windows:
            samples.append((now, cpu))
            while len(samples) > 2 and samples[1][0] <= now - window:
                samples.popleft()
            then, before = samples[0]
            shares.append((cpu + pending - before) / max(now - then, window))
        return shares

    def flooding(self) -> bool:
        """Whether sockets open or close at FLOOD_RATE a second or more, over FLOOD_WINDOW."""
        now, churn = self.clock(), self.churn
        churn.append((now, self.sockets))
        while len(churn) > 2 and churn[1][0] <= now - FLOOD_WINDOW:
            churn.popleft()
        return self.sockets - churn[0][1] >= FLOOD_RATE * FLOOD_WINDOW

    def hold(self, level: int, floor: int = 0) -> int:
        """Shed this much from now, whatever the CPU used, and never less than floor until held
        again: taking work back starts from here."""
        with self.lock:
            self.shed, self.floor, self.changed_at = level, floor, self.clock()
            return level

    def level(self, pending: int = 0) -> int:
        """The level of shedding now; pending: the lines that the next poll will write, whose
        CPU (line_cost each, as the last polls measured) counts as spent already."""
        with self.lock:
            (second, window), now = self.used(pending * self.line_cost), self.clock()
            flooding = self.flood = self.flooding()
            due = now - self.changed_at >= SHED_STEP
            over = flooding and second > self.share and (window > self.share or second > 2 * self.share)
            if over and self.shed < SHED_PAUSE and due:
                self.spells += self.shed == 0
                self.shed += 1
                if self.shed == SHED_POLLS and second > 2 * self.share:
                    # Far over: stretching polls alone saves too little, and only at the next poll.
                    self.shed = SHED_WATCHER
                self.changed_at = now
            elif due and (second < self.share * SHED_RESUME or not flooding) and self.shed > self.floor:
                self.shed, self.changed_at = self.shed - 1, now
            return self.shed


##############################################################################
# Sources: the sockets now, and who owns them (the only code that calls psutil)
##############################################################################

PROCESS_PRUNE_SECONDS = 60.0  # how often cached processes that have exited are forgotten
# A process read ahead this recently is not read again (a pid is not reused within a second:
# the kernel hands pids out in turn, up to pid_max).
READ_AHEAD_FRESH = 1.0
SNMP = "/proc/net/snmp"  # Linux counts every TCP open of the network namespace here


class Source:
    """What every engine gives the poller and the watcher: connections(), the sockets of its
    kind there are now; between_polls(), what happened since; processes(pids), who owns
    them. The process details always come from psutil, read once per process and cached,
    in this class alone. An engine is made with its kind and the CPU budget it sheds by
    (open_source()); ENGINES lists them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, budget: CpuBudget | None = None):
        self.budget = budget  # lognet's CPU budget, where one is set: under a flood over it, work is shed
        self._processes: dict[int, ProcessInfo] = {}
        self._unreported: set[int] = set()  # pids read ahead of a poll, while they lived
        self._read_ahead_at: dict[int, float] = {}  # pid -> when it was last read ahead
        # What the poll's thread and the watcher's both reach (the process cache, an engine's
        # parts) is behind this one lock: each entry of an engine takes it.
        self.lock = threading.RLock()
        self._clock = clock
        self._next_prune = clock() + PROCESS_PRUNE_SECONDS

    has_close_events = False  # whether between_polls() reports the kernel's closes
    watches = False  # whether watch() finds sockets between polls: then a Watcher calls it

    @functools.cached_property
    def owners_visible(self) -> bool:
        """Whether lognet may read every process's open files, so that no socket's owner is
        hidden from it: root, or CAP_DAC_READ_SEARCH with CAP_SYS_PTRACE, and no process
        beyond even those (another user namespace's). psutil says nothing of the processes
        it could not read, so this looks once, at the start."""
        if not os.path.isdir("/proc/self/fd"):
            return hasattr(os, "geteuid") and os.geteuid() == 0
        fds = FdTable()
        fds.scan()
        return not fds.denied

    def connections(self) -> list[Connection]:
        """Every socket of the engine's kind (a psutil kind: 'inet', 'tcp4', ...) open now: the
        very list of the last call, where an engine knows that nothing changed."""
        raise NotImplementedError

    def between_polls(self) -> tuple[list[tuple[Connection, float]], list[Closed]]:
        """What happened since the last poll that its snapshot may not show: sockets found
        alive (with the epoch time they were seen), and sockets the kernel closed."""
        return [], []

    def watch(self, heard: Iterable[int] | None = None, dumps: bool = True) -> Look:
        """A look between polls, in the watcher's thread: read what has come (close events),
        and while dumps, find the sockets opened since, with their owners, while they live.
        heard: the fds of wakers() that a wait just found readable, if it waited on them."""
        return Look(False, 0.0)

    def wakers(self) -> list[int]:
        """The fds whose input is worth a look at once (close events, DNS questions)."""
        return []

    def urgent_fds(self) -> list[int]:
        """The fds whose input is worth reading at once, at any pace (take_owner_events()): the
        kernel's events of a connect or a datagram sent, whose process may live only milliseconds."""
        return []

    def take_owner_events(self) -> None:
        """Learn who the kernel's events named since, and read those processes' details now."""

    # Whether the kernel's events name every owner the watcher's dumps would find: then it does not dump.
    events_cover = False

    def owner_events(self) -> tuple[str, int] | None:
        """Whether the kernel's events name owners ('on', 'paused', or 'off: why'), and how many
        of their samples the kernel lost; None where an engine has no such events."""
        return None

    def lost_closes(self) -> dict[int | None, dict[str, int]]:
        """The close events the kernel dropped (ENOBUFS) since the start, by netns and protocol."""
        return {}

    events_read = 0  # close events that reached lognet, decoded or counted
    pauses = 0  # times the close events were paused for a CPU budget

    def take_unheard(self, final: bool = False) -> dict[int, int]:
        """TCP closes while the close events were paused for a CPU budget, since the last
        call, by netns: counted by the kernel's counters once no flood is on, or at once
        when final (see Namespace.settle())."""
        return {}

    def take_skipped(self) -> list[SkippedCloses]:
        """The kernel's closes counted and not decoded since the last call, for a CPU budget,
        a group to each peer, service port and owner."""
        return []

    def take_isolated(self) -> list[tuple[FloodGroup, bool, int, int | None]]:
        """The closes of isolated flood groups counted since the last call (see Isolation):
        (group, whether of its local end, count, the pid that held that end, if known)."""
        return []

    def isolating(self) -> list[tuple[FloodGroup, float, int | None]]:
        """The flood groups isolated now: (group, its closes a second, the pid that holds it, if known)."""
        return []

    def rhost(self, conn: Connection, pid: int | None) -> str | None:
        """The name the host resolved to conn's remote address (for pid, where it asked), if known."""
        return None

    def close(self) -> None:
        """Let go of what the engine holds open."""

    def processes(self, pids: Iterable[int]) -> tuple[dict[int, ProcessInfo], list[ProcessInfo]]:
        """Return the process behind each pid that owns a newly seen connection,
        and those of them that lognet had not seen before.

        The cache is checked against a fresh create_time, so a reused pid is
        looked up again instead of inheriting the old process's name.
        """
        found, new = {}, []
        with self.lock:
            for pid in sorted(pids):
                cached = self._processes.get(pid)
                info = found[pid] = self._look_up(pid, cached)
                if info is not cached or pid in self._unreported:
                    self._processes[pid] = info
                    self._unreported.discard(pid)
                    new.append(info)
            self._prune()
        return found, new

    def process_name(self, pid: int | None) -> str | None:
        """The name of a process lognet has read, if it has."""
        process = self._processes.get(pid)
        return process.name if process is not None else None

    def read_ahead(self, pids: Iterable[int]) -> None:
        """Read the details of processes now, while they live; processes() reports them later."""
        now = self._clock()
        for pid in pids:
            if now - self._read_ahead_at.get(pid, -READ_AHEAD_FRESH) < READ_AHEAD_FRESH:
                continue  # a long-running process that connects again and again
            self._read_ahead_at[pid] = now
            cached = self._processes.get(pid)
            info = self._look_up(pid, cached)
            if info is not cached:
                self._processes[pid] = info
                self._unreported.add(pid)

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
            # Empty for a zombie (psutil 5.9 says so rather than raising) and a kernel thread: unknown.
            cmdline = _read(process.cmdline) or None
            exe = _read(process.exe) or None  # '' for kernel threads
            username = _read(process.username)
        return ProcessInfo(pid, name, create_time, tuple(cmdline) if cmdline is not None else None, exe, username,
                           container_of(pid))

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
            with open(SNMP, "rb") as f:
                return snmp_tcp_opens(f.read())
        except (OSError, KeyError, ValueError):
            return None  # not Linux, or a kernel without these counters

    def _prune(self) -> None:
        # Forget processes that have exited, so the cache is bounded by the live ones.
        if self._clock() < self._next_prune:
            return
        self._next_prune = self._clock() + PROCESS_PRUNE_SECONDS
        alive = set(psutil.pids())
        for pid in self._processes.keys() - alive:
            del self._processes[pid]
        self._read_ahead_at = {pid: at for pid, at in self._read_ahead_at.items() if pid in alive}
        self._unreported &= self._processes.keys()  # read ahead, never logged (filtered out), and gone


def container_of(pid: int) -> str | None:
    """The container pid runs in, from its cgroup path (Linux); None outside one."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            return container_id(f.read().decode("utf-8", "replace"))
    except OSError:
        return None  # not Linux, or it exited


# A container's 64-hex id in a cgroup path, as each runtime names it: Docker's
# docker-<id>.scope (systemd) or /docker/<id> (cgroupfs), Podman's libpod-<id>, CRI's
# cri-containerd-<id> and crio-<id>, and Kubernetes' kubepods.../<id> (cgroupfs).
CONTAINER_CGROUP = re.compile(r"(?:/(?:docker|libpod|cri-containerd|crio)-|/docker/|/kubepods[^:\n]*/)"
                              r"([0-9a-f]{64})(?:\.scope)?(?=/|$)", re.MULTILINE)


def container_id(cgroup: str) -> str | None:
    """The container id in the text of /proc/<pid>/cgroup, its first 12 hex digits as
    `docker ps` shows them; None when no line names one."""
    found = CONTAINER_CGROUP.search(cgroup)
    return found.group(1)[:12] if found else None


def _read(attribute: Callable):
    """Call one psutil.Process getter; None when the process is gone or hidden."""
    try:
        return attribute()
    except psutil.Error:
        # NoSuchProcess, ZombieProcess (cmdline of a zombie) and AccessDenied all
        # just mean this detail is unknown: the line is still written, with "-".
        return None


class PsutilSource(Source):
    """The portable engine: psutil.net_connections(), wherever psutil runs; on Linux, of
    lognet's own network namespace only."""

    def __init__(self, kind: str = "inet", clock: Callable[[], float] = time.monotonic, names: bool = False,
                 budget: CpuBudget | None = None):
        super().__init__(clock, budget)
        self.kind = kind
        self.last: frozenset[Connection] = frozenset()  # the last poll's, to count the new ones for the budget
        if names:
            warn("host names (rhost) come from the Linux engine's DNS taps; with psutil rhost is '-'")
        at = Connection._fields.index("netns") - len(Connection._fields) + len(_UNKNOWN_TO_PSUTIL)
        self.unknown = _UNKNOWN_TO_PSUTIL[:at] + (netns_inode(),) + _UNKNOWN_TO_PSUTIL[at + 1:]

    def connections(self) -> list[Connection]:
        if self.budget is not None:
            self.budget.level()  # its only step: polls stretch
        try:
            conns = [connection_from_sconn(sconn, self.unknown) for sconn in psutil.net_connections(self.kind)]
        except psutil.AccessDenied as exc:
            # On macOS psutil lists connections only for root.
            raise LognetError(f"listing connections needs more privileges on this system ({exc})") from None
        if self.budget is not None:
            current = frozenset(conns)
            self.budget.count(len(current - self.last))
            self.last = current
        return conns


_UNKNOWN_TO_PSUTIL = (None,) * (len(Connection._fields) - 7)


def connection_from_sconn(sconn, unknown: tuple = _UNKNOWN_TO_PSUTIL) -> Connection:
    """psutil's sconn as lognet's Connection: the same seven fields, and the rest as given
    (inode, cookie, uid, netns, txbytes, rxbytes: None but the namespace, when known)."""
    # tuple.__new__ skips the keyword handling of Connection(...): half the cost, paid for
    # every socket of every poll.
    return tuple.__new__(Connection, sconn + unknown)


##############################################################################
# Sources: the Linux engine. The sock_diag wire (linux/netlink.h, inet_diag.h, sock_diag.h)
##############################################################################

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_DUMP_REQUEST = 0x301  # NLM_F_REQUEST | NLM_F_DUMP
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NETLINK_DROP_MEMBERSHIP = 270, 1, 2
SO_RCVBUFFORCE = 33
# struct nlmsghdr: length, type, flags, seq, pid. Messages start on 4-byte boundaries (nlmsg_align()).
NLMSG_HEADER = struct.Struct("=IHHII")
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSG_INT = struct.Struct("=i")  # what NLMSG_ERROR and NLMSG_DONE carry first: 0, or an errno negated
NLMSG_DONE_SIZE = NLMSG_HEADER.size + NLMSG_INT.size
# struct inet_diag_req_v2: family, protocol, ext, pad, states; its socket id all zeros.
DIAG_REQUEST = struct.Struct("=BBBBI48x")
# struct inet_diag_msg: family, state, timer, retrans; the socket id (sport, dport, src, dst, if,
# cookie); expires, rqueue, wqueue, uid, inode. DIAG_MSG decodes the fields a line needs; the
# offsets name those read without decoding a message.
DIAG_MSG = struct.Struct("=BB2x4x16s16s4xII12xII")  # family, state, src, dst, cookie (low, high), uid, inode
DIAG_STATE = 1
DIAG_SPORT, DIAG_DPORT = 4, 6  # big-endian u16s (DIAG_PORTS)
DIAG_SRC, DIAG_DST, DIAG_IF = 8, 24, 40  # 16 bytes of address each, an IPv4 address in the first 4
DIAG_COOKIE, DIAG_COOKIE_END = 44, 52  # two u32s, the low first (COOKIE)
DIAG_PORTS = struct.Struct("!HH")
COOKIE = struct.Struct("=II")
# struct rtattr: length, type; the attributes after inet_diag_msg. INET_DIAG_INFO holds struct
# tcp_info, in which bytes_acked and bytes_received are at TCP_INFO_ACKED, bytes_sent and
# bytes_retrans at TCP_INFO_SENT (Linux 4.19 and later), all u64: one shorter than
# TCP_INFO_NEEDED lacks them.
RTATTR = struct.Struct("=HH")
INET_DIAG_INFO = 2
TCP_INFO_ACKED, TCP_INFO_SENT, TCP_INFO_NEEDED = 120, 200, 216
TWO_U64 = struct.Struct("=QQ")
# The kernel's TCP states (include/net/tcp_states.h) by psutil's names; 12 is a request socket.
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "SYN_RECV"}
ALL_STATES = 0xFFFFFFFF
LISTEN_STATE = 1 << 10
# States whose sockets no process holds (TIME_WAIT, request sockets): the watcher leaves them out.
TIME_WAIT_STATE = 1 << 6
TIME_WAIT_SECONDS = 60.0  # how long Linux keeps a TIME_WAIT socket (TCP_TIMEWAIT_LEN)
UNOWNED_STATE_GROUPS = (TIME_WAIT_STATE, 1 << 3 | 1 << 12)
OWNED_STATES = ALL_STATES & ~sum(UNOWNED_STATE_GROUPS)
# The sock_diag destroy groups (enum sknetlink_groups), the interface of `ss -E`.
DESTROY_GROUPS = {(socket.AF_INET, socket.IPPROTO_TCP): 1, (socket.AF_INET, socket.IPPROTO_UDP): 2,
                  (socket.AF_INET6, socket.IPPROTO_TCP): 3, (socket.AF_INET6, socket.IPPROTO_UDP): 4}
GROUP_SOCKETS = {1 << (group - 1): pair for pair, group in DESTROY_GROUPS.items()}  # a group's mask -> its pair
SOCKET_TYPES = {socket.IPPROTO_TCP: socket.SOCK_STREAM, socket.IPPROTO_UDP: socket.SOCK_DGRAM}
ADDRESS_FAMILIES = {int(family): family for family in (socket.AF_INET, socket.AF_INET6)}  # without an Enum call each
EVENT_BUFFER = 8 << 20  # bytes the kernel may queue for lognet's close events
# A dump's filter in the kernel (INET_DIAG_REQ_BYTECODE): struct inet_diag_bc_op (code, where
# to go on a match, where not: byte offsets forward), the source or destination condition
# (S_COND, D_COND: struct inet_diag_hostcond, family, prefix length, port, address) and a jump.
# A run that ends exactly at the end keeps the socket; one that jumps past it leaves it out.
INET_DIAG_REQ_BYTECODE = 1
# D_GE: a port at least the next op's `no`
INET_DIAG_BC_JMP, INET_DIAG_BC_D_GE, INET_DIAG_BC_S_COND, INET_DIAG_BC_D_COND = 1, 4, 7, 8
BC_OP = struct.Struct("=BBH")
BC_HOSTCOND = struct.Struct("=BB2xi")
RECV_SIZE = 1 << 16  # one recv() takes a whole reply of the kernel's (a dump sends them up to 32 KiB)


def kind_sockets(kind: str) -> list[tuple[int, int]]:
    """The (family, protocol) pairs of a psutil kind: 'tcp4' -> [(AF_INET, IPPROTO_TCP)]."""
    ip_version, protocol = next(key for key, name in KINDS.items() if name == kind)
    families = [f for f, v in FAMILIES.items() if ip_version in (None, v)]
    protocols = [p for p, name in ((socket.IPPROTO_TCP, "tcp"), (socket.IPPROTO_UDP, "udp"))
                 if protocol in (None, name)]
    return [(f, p) for p in protocols for f in families]


def nlmsg_align(length: int) -> int:
    """NLMSG_ALIGN: how far the next netlink message is from the start of one of length bytes."""
    return (length + 3) & ~3


def dump_bytecode(ends: Iterable[tuple[int, bytes, int, bool]]) -> bytes:
    """A dump's filter that leaves out the connections with one of these ends: (family,
    packed address, port, local): a socket whose local (or remote) address and port are
    those, and which has a peer (a listener on that end stays)."""
    code = []
    for family, packed, port, local in ends:
        address = BC_HOSTCOND.pack(family, len(packed) * 8, port) + packed
        conditions = [(INET_DIAG_BC_S_COND, address), (INET_DIAG_BC_D_GE, BC_OP.pack(0, 0, 1))] if local else [
            (INET_DIAG_BC_D_COND, address)]
        # Each condition met goes on to the next, then to the jump past the end (left out);
        # any not met skips to the next end.
        rest = sum(BC_OP.size + len(data) for _, data in conditions) + BC_OP.size
        for op, data in conditions:
            code.append([BC_OP.pack(op, BC_OP.size + len(data), rest) + data])
            rest -= BC_OP.size + len(data)
        code.append(None)  # the jump, once the whole length is known
    length = sum(BC_OP.size if op is None else len(op[0]) for op in code)
    bytecode = b""
    for op in code:
        bytecode += op[0] if op is not None else BC_OP.pack(INET_DIAG_BC_JMP, BC_OP.size,
                                                            length - len(bytecode) + BC_OP.size)
    return bytecode


def netlink_messages(data: bytes) -> list[tuple[int, int, int]]:
    """(type, offset of the payload, end) of each netlink message in data; OSError for an
    NLMSG_ERROR that carries an error. The one walker of the wire: dump replies and close
    events alike (the stride of dump_messages() is its shortcut for a dump's messages)."""
    messages, offset, last = [], 0, len(data) - NLMSG_HEADER.size
    while offset <= last:
        length, kind = NLMSG_HEADER.unpack_from(data, offset)[:2]
        if length < NLMSG_HEADER.size:
            break  # malformed: nothing after it can be trusted
        if kind == NLMSG_ERROR:
            error = -NLMSG_INT.unpack_from(data, offset + NLMSG_HEADER.size)[0]
            if error:
                raise OSError(error, os.strerror(error))
        messages.append((kind, offset + NLMSG_HEADER.size, offset + length))
        offset += nlmsg_align(length)
    return messages


def dump_done(data: bytes) -> int | None:
    """The error that cut a dump short (0: none) when this chunk of it ends with NLMSG_DONE;
    None when more is to come."""
    end = len(data) - NLMSG_DONE_SIZE
    if end < 0 or NLMSG_HEADER.unpack_from(data, end)[:2] != (NLMSG_DONE_SIZE, NLMSG_DONE):
        return None
    return -NLMSG_INT.unpack_from(data, end + NLMSG_HEADER.size)[0]


def any_address(family: int, port: int) -> tuple:
    """A listener's address on every interface of a family, as psutil writes it."""
    return ("0.0.0.0" if family == socket.AF_INET else "::", port)


def decode_address(family: int, packed: bytes, port: int) -> tuple:
    """(ip, port) as psutil writes it, or () for port 0 (no address), as psutil does."""
    if not port:
        return ()
    if family == socket.AF_INET:
        packed = packed[:4]  # the lengths tell the families apart in ADDRESS_TEXTS
    text = ADDRESS_TEXTS.get(packed)
    if text is None:
        if len(ADDRESS_TEXTS) >= ADDRESS_TEXTS_KEPT:
            ADDRESS_TEXTS.clear()
        text = ADDRESS_TEXTS[packed] = socket.inet_ntop(family, packed)
    return (text, port)


# The text of each address met lately: a host's sockets have few addresses, and every
# socket and event has two.
ADDRESS_TEXTS: dict[bytes, str] = {}
ADDRESS_TEXTS_KEPT = 4096


def decode_socket(data: bytes, offset: int, protocol: int, netns: int | None, closed: bool = False,
                  txbytes: int | None = None) -> Connection:
    """One inet_diag_msg as an ownerless Connection: what the kernel reports, and no owner
    yet. For a socket closed, without its inode and uid (its lines never say them), and
    with the payload it sent."""
    family, state, src, dst, cookie_low, cookie_high, uid, inode = DIAG_MSG.unpack_from(data, offset)
    sport, dport = DIAG_PORTS.unpack_from(data, offset + DIAG_SPORT)
    status = TCP_STATES.get(state, "NONE") if protocol == socket.IPPROTO_TCP else "NONE"
    if closed:
        uid = inode = None
    return Connection(-1, ADDRESS_FAMILIES.get(family) or socket.AddressFamily(family), SOCKET_TYPES[protocol],
                      decode_address(family, src, sport), decode_address(family, dst, dport), status, None,
                      inode or None, cookie_low | cookie_high << 32, uid, netns, txbytes)


# A TCP close event as the kernel sends each one, alone in its datagram: nlmsghdr (length,
# type), inet_diag_msg (family, state, the ports big-endian, src, dst, cookie), the attribute
# INET_DIAG_PROTOCOL (length, type, a byte), then INET_DIAG_INFO (length, type) with tcp_info's
# bytes_acked and bytes_received, bytes_sent and bytes_retrans: read in one unpack (tcp_close()).
INET_DIAG_PROTOCOL = 10
TCP_CLOSE_EVENT = struct.Struct(f"=IH10xBB2x2s2s16s16s4xII20xHH4xHH{TCP_INFO_ACKED}xQQ"
                                f"{TCP_INFO_SENT - TCP_INFO_ACKED - TWO_U64.size}xQQ")


def tcp_close(data: bytes, netns: int | None) -> tuple[Connection, int, int] | None:
    """A datagram of one TCP close event, as decode_socket() (closed) and tcp_info_bytes()
    read it: (the socket, bytes received, bytes acked beyond payload); None for any other
    datagram, which the general readers take."""
    if len(data) < TCP_CLOSE_EVENT.size:
        return None
    (length, kind, family, state, sport, dport, src, dst, cookie_low, cookie_high, protocol_length, protocol_kind,
     info_length, info_kind, acked, received, sent, retransmitted) = TCP_CLOSE_EVENT.unpack_from(data)
    if (length != len(data) or kind != SOCK_DIAG_BY_FAMILY or protocol_kind != INET_DIAG_PROTOCOL
            or protocol_length != RTATTR.size + 1 or info_kind != INET_DIAG_INFO
            or info_length - RTATTR.size < TCP_INFO_NEEDED):
        return None
    payload = sent - retransmitted
    conn = Connection(-1, ADDRESS_FAMILIES.get(family) or socket.AddressFamily(family), socket.SOCK_STREAM,
                      decode_address(family, src, int.from_bytes(sport, "big")),
                      decode_address(family, dst, int.from_bytes(dport, "big")), TCP_STATES.get(state, "NONE"),
                      None, None, cookie_low | cookie_high << 32, None, netns, payload)
    return conn, received, acked - payload


def socket_key(data: bytes, offset: int) -> tuple[int, int, int]:
    """What tells one socket of a dump from every other, and from itself in another state,
    without decoding its message: (cookie's low u32, its high u32, state)."""
    return (*COOKIE.unpack_from(data, offset + DIAG_COOKIE), data[offset + DIAG_STATE])


def cookie_bytes(cookie: int) -> bytes:
    """A socket's cookie as inet_diag_msg holds it, to compare with a message unread."""
    return COOKIE.pack(cookie & 0xFFFFFFFF, cookie >> 32)


def tcp_info_bytes(data: bytes, start: int, end: int) -> tuple[int, int, int] | None:
    """(payload sent, bytes received, bytes acked beyond payload) from the tcp_info attribute
    of a message, or None without one. bytes_received still counts the peer's FIN, and the
    beyond-payload count is our SYN (when we connected) plus our FIN (when it was acked)."""
    offset = start + DIAG_MSG.size
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            return None
        if kind == INET_DIAG_INFO and length - RTATTR.size >= TCP_INFO_NEEDED:
            info = offset + RTATTR.size
            acked, received = TWO_U64.unpack_from(data, info + TCP_INFO_ACKED)
            sent, retransmitted = TWO_U64.unpack_from(data, info + TCP_INFO_SENT)
            payload = sent - retransmitted
            return payload, received, acked - payload
        offset += nlmsg_align(length)  # RTA_ALIGN: the same four bytes
    return None


def dump_messages(chunks: list[bytes]) -> dict[tuple[int, int, int], tuple[bytes, int]]:
    """Where each socket of a dump is, undecoded, by socket_key(). Decoding is left to the
    sockets not met before, which are few."""
    found: dict[tuple[int, int, int], tuple[bytes, int]] = {}
    for data in chunks:
        by_stride = _messages_by_stride(data)
        if by_stride is not None:
            found.update(by_stride)
            continue
        found.update((socket_key(data, start), (data, start)) for kind, start, _ in netlink_messages(data)
                     if kind == SOCK_DIAG_BY_FAMILY)
    return found


# In a message read as u32 words: where its length is, its type, and its cookie's two halves;
# and the byte of its state.
_LENGTH_WORD, _TYPE_WORD = 0, 1
_COOKIE_WORD = (NLMSG_HEADER.size + DIAG_COOKIE) // 4
_STATE_BYTE = NLMSG_HEADER.size + DIAG_STATE


def _messages_by_stride(data: bytes) -> Iterable | None:
    """The keys and places of the messages of a chunk whose socket messages all have one
    length (as a dump's mostly have), read by stride, without a step in Python for each;
    None for any other chunk."""
    if len(data) < NLMSG_HEADER.size:
        return None
    length = NLMSG_HEADER.unpack_from(data)[0]
    body = len(data) - (NLMSG_DONE_SIZE if dump_done(data) is not None else 0)
    if length < NLMSG_HEADER.size + DIAG_MSG.size or length % 4 or not body or body % length:
        return None
    words, step = memoryview(data)[:body].cast("I"), length // 4
    if words[_LENGTH_WORD::step].tolist().count(length) != body // length or {
            word & 0xFFFF for word in set(words[_TYPE_WORD::step].tolist())} != {SOCK_DIAG_BY_FAMILY}:
        return None
    keys = zip(words[_COOKIE_WORD::step].tolist(), words[_COOKIE_WORD + 1::step].tolist(),
               data[_STATE_BYTE:body:length])
    return zip(keys, zip(itertools.repeat(data), range(NLMSG_HEADER.size, body, length)))


class SockDiag:
    """One NETLINK_SOCK_DIAG socket: dumps of the sockets there are, or the destroy events."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        self.lost = 0  # events the kernel dropped (ENOBUFS): counted, never hidden
        self.more = False  # whether the last events() left some unread

    def dump(self, family: int, protocol: int, states: int = ALL_STATES, ext: int = 0,
             bytecode: bytes = b"") -> list[bytes]:
        """Every socket of (family, protocol) in states, as the chunks the kernel sent; with
        bytecode (dump_bytecode()), those it keeps."""
        request = DIAG_REQUEST.pack(family, protocol, ext, 0, states)
        if bytecode:
            request += RTATTR.pack(RTATTR.size + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
        header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_DUMP_REQUEST, 0, 0)
        self.sock.send(header + request)
        chunks = []
        while True:
            data = self.sock.recv(RECV_SIZE)
            chunks.append(data)
            if NLMSG_HEADER.unpack_from(data)[1] == NLMSG_ERROR:  # the dump refused
                netlink_messages(data)  # raises the error it carries
                return []
            error = dump_done(data)
            if error is not None:
                if error > 0:
                    raise OSError(error, os.strerror(error))
                return chunks

    def subscribe(self, groups: Iterable[int], buffer: int = EVENT_BUFFER) -> None:
        """Join the destroy groups; events then wait in a buffer (of about `buffer` bytes) that events() empties."""
        self.sock.bind((0, 0))
        self.buffer(buffer)
        self.membership(groups, True)
        self.sock.setblocking(False)

    def buffer(self, size: int) -> None:
        """Let the kernel queue about `size` bytes of events (what it allows, without the privilege to force it)."""
        for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, size)
                break
            except OSError:
                pass  # SO_RCVBUFFORCE needs CAP_NET_ADMIN; SO_RCVBUF is capped by net.core.rmem_max

    def membership(self, groups: Iterable[int], join: bool) -> None:
        """Join the groups, or leave them: the kernel sends nothing to a socket that no group has."""
        for group in groups:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP if join else NETLINK_DROP_MEMBERSHIP, group)

    def events(self, limit: int = 0) -> list[tuple[bytes, int]]:
        """What has arrived since the last call, without waiting: (data, group mask) pairs; at
        most `limit` of them where given, and then `more` says whether it stopped there."""
        chunks, self.more = [], False
        while True:
            if limit and len(chunks) >= limit:
                self.more = True
                return chunks
            try:
                data, (_, groups) = self.sock.recvfrom(RECV_SIZE)
                chunks.append((data, groups))
            except BlockingIOError:
                return chunks
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.lost += 1  # the kernel dropped events: at least one; drops() says how many

    def drops(self, proc_net: str) -> int | None:
        """The kernel's own count of the messages it dropped for this socket, the Drops of
        proc_net/netlink (the namespace's): exact, where ENOBUFS says only that some were."""
        inode = str(os.fstat(self.sock.fileno()).st_ino)
        try:
            with open(f"{proc_net}/netlink") as f:
                for line in f:
                    columns = line.split()
                    if columns and columns[-1] == inode:
                        return int(columns[-2])
        except (OSError, ValueError):
            pass
        return None

    def close(self) -> None:
        self.sock.close()


# Classic BPF (linux/filter.h), the opcodes used here: the kernel judges a socket's input with
# them, and what they drop never reaches Python (the DNS taps' filters, close_filter()).
BPF_LD_W_ABS, BPF_LD_H_ABS, BPF_LD_B_ABS, BPF_LD_H_IND, BPF_LD_B_IND = 0x20, 0x28, 0x30, 0x48, 0x50
BPF_LD_MEM, BPF_ST, BPF_LDX_IMM, BPF_LDX_B_MSH = 0x60, 0x02, 0x01, 0xB1
BPF_JEQ_K, BPF_JSET_K, BPF_RET_K = 0x15, 0x45, 0x06
BPF_LD_W_LEN, BPF_JGE_K, BPF_AND_K, BPF_JA = 0x80, 0x35, 0x54, 0x05
SO_ATTACH_FILTER = 26
# Where a close event's fields are, from the start of its netlink message, for close_filter():
# the family, the remote port, the remote address.
EVENT_FAMILY, EVENT_DPORT, EVENT_DST = (NLMSG_HEADER.size, NLMSG_HEADER.size + DIAG_DPORT,
                                        NLMSG_HEADER.size + DIAG_DST)
EVENT_SPORT, EVENT_SRC = NLMSG_HEADER.size + DIAG_SPORT, NLMSG_HEADER.size + DIAG_SRC
BPF_KEEP = 0xFFFFFFFF  # what a program returns for the whole message


def bpf_program(steps: list[tuple]) -> bytes:
    """Classic BPF code from (opcode, k, label if true, label if false) steps and
    label strings: jumps named by label, not counted by hand. The kernel's struct
    sock_filter is (u16 code, u8 jt, u8 jf, u32 k)."""
    labels, at = {}, 0
    for step in steps:
        if isinstance(step, str):
            labels[step] = at
        else:
            at += 1
    code, at = [], 0
    for step in steps:
        if isinstance(step, str):
            continue
        opcode, k, *targets = step
        if opcode == BPF_JA:  # (BPF_JA, label): a jump that always goes, k steps on
            opcode, k, targets = BPF_JA, labels[k] - at - 1, []
        jt, jf = (labels[target] - at - 1 if target else 0 for target in (targets + [None, None])[:2])
        code.append(struct.pack("=HBBI", opcode, jt, jf, k))
        at += 1
    return b"".join(code)



def endpoint_program(ends: Iterable[tuple[int, bytes, int, bool]], isolate: bool, base: bytes | None) -> bytes:
    """A close-event socket's program for the connections with one of these ends (family,
    packed address, port, local: see dump_bytecode()): where isolate, it drops their events
    and passes the others on to base (the filters' program, close_filter(), or none);
    otherwise it drops the others, and passes theirs on to base. A listener's own close is
    never one of theirs."""
    matched, others = ("drop", "base") if isolate else ("base", "drop")
    steps: list = [(BPF_LD_W_LEN, 0), (BPF_JGE_K, EVENT_DST + 16, None, others)]
    for n, (family, packed, port, local) in enumerate(ends):
        following, address = f"after end {n}", EVENT_SRC if local else EVENT_DST
        steps += [(BPF_LD_B_ABS, EVENT_FAMILY), (BPF_JEQ_K, family, None, following),
                  (BPF_LD_H_ABS, EVENT_DPORT), (BPF_JEQ_K, 0, following, None),  # no peer: a listener
                  (BPF_LD_H_ABS, EVENT_SPORT if local else EVENT_DPORT), (BPF_JEQ_K, port, None, following)]
        words = struct.unpack(f"!{len(packed) // 4}I", packed)
        for i, word in enumerate(words):
            steps += [(BPF_LD_W_ABS, address + 4 * i),
                      (BPF_JEQ_K, word, matched if i == len(words) - 1 else None, following)]
        steps.append(following)
    steps += [(BPF_JA, others), "drop", (BPF_RET_K, 0), "base"]
    return bpf_program(steps) + (base or ACCEPT_ALL)


ACCEPT_ALL = bpf_program([(BPF_RET_K, BPF_KEEP)])


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF program (SO_ATTACH_FILTER): the kernel copies it at once."""
    import ctypes
    code = ctypes.create_string_buffer(program, len(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("@HP", len(program) // 8, ctypes.addressof(code)))



##############################################################################
# Sources: the Linux engine. Who holds each socket (/proc/<pid>/fd)
##############################################################################

class FdTable:
    """Who holds which socket: socket inodes mapped to (pid, fd) through /proc/<pid>/fd.

    A scan lists every process's fds but reads the link of an fd only the first time that
    fd is met; search() reads the likeliest processes first and stops when every socket
    asked for is found."""

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self.links: dict[int, dict[str, int | None]] = {}  # pid -> fd -> socket inode (None: not a socket)
        self.owners: dict[int, list[tuple[int, int]]] = {}  # socket inode -> [(pid, fd)]
        self.recent: deque[int] = deque(maxlen=32)  # pids that lately owned new sockets
        self.known_pids: set[int] = set()
        self.changed: set[int] = set()  # inodes whose holders changed: the reader of this empties it
        self.denied: set[int] = set()  # pids whose fds we may not read: their sockets' owner is hidden
        # Since Linux 6.2 the size of /proc/<pid>/fd is the number of fds: a stat, not a listing,
        # tells whether a process's fds changed (older kernels say 0).
        self.counts_fds = os.stat(f"{proc}/self/fd").st_size > 0

    def pids(self) -> list[int]:
        return [int(name) for name in os.listdir(self.proc) if name.isdigit()]

    def scan(self) -> None:
        """Bring the table up to date with every process: new fds read, closed fds and exited pids forgotten."""
        pids = self.pids()
        for pid in self.links.keys() - set(pids):
            self._update(pid, None)
        self.denied.intersection_update(pids)
        for pid in pids:
            self._read(pid, reread=False)
        self.known_pids = set(pids)

    def search(self, inodes: set[int], uids: set[int] = frozenset(), most: int | None = None) -> None:
        """Find the holders of sockets the table does not know: new processes first, then
        those that lately owned new sockets, then those that hold sockets, then those of the
        sockets' users, then the rest, the newest first; after the first two, `most`
        processes at the most."""
        missing = inodes - self.owners.keys()
        if not missing:
            return
        pids = sorted(self.pids(), reverse=True)
        # Processes started since the last scan come first at every search until the poll's
        # scan: one that had no socket at the last look may have one now (a new curl). Those
        # whose number of fds has not moved since they were read are passed over.
        new = [pid for pid in pids if pid not in self.known_pids and not self._unchanged(pid)]
        visited = set()
        holders = [pid for pid in pids if any(self.links.get(pid, {}).values())]
        rest = itertools.islice(itertools.chain(holders, self._of_users(pids, uids), pids), most)
        for pid in itertools.chain(new, list(reversed(self.recent)), rest):
            if pid in visited:
                continue
            visited.add(pid)
            found = missing.intersection(self._read(pid, reread=True))
            if found:
                missing -= found
                if pid not in self.recent:
                    self.recent.append(pid)
                if not missing:
                    return

    def _unchanged(self, pid: int) -> bool:
        """Whether pid has as many fds as when they were last read (never, when the kernel does not count them)."""
        old = self.links.get(pid)
        if old is None or not self.counts_fds:
            return False
        try:
            return os.stat(f"{self.proc}/{pid}/fd").st_size == len(old)
        except OSError:
            return True  # it exited: nothing to read

    def forget(self, inodes: Iterable[int]) -> None:
        """These sockets are closed: their fds are read again when next met, since fd numbers are reused."""
        for inode in inodes:
            self.changed.add(inode)
            for pid, fd in self.owners.pop(inode, ()):
                self.links.get(pid, {}).pop(str(fd), None)

    def _read(self, pid: int, reread: bool) -> list[int]:
        """Read pid's fds (only the new ones unless reread); return the socket inodes it holds
        (when reread)."""
        folder = f"{self.proc}/{pid}/fd"
        old = self.links.get(pid)
        if not reread and self._unchanged(pid):
            return []  # as many fds as last time: a scan has nothing to learn here
        try:
            names = os.listdir(folder)
        except OSError as exc:
            # ENOENT: it exited; EACCES: another user's, which we may not read (psutil likewise).
            if isinstance(exc, PermissionError):
                self.denied.add(pid)
            self._update(pid, {} if isinstance(exc, PermissionError) else None)
            return []
        old = old or {}
        if not reread and old.keys() == set(names):
            return []  # the same fds as last time: a scan has nothing to learn here
        links = {}
        for name in names:
            if name in old and not reread:
                links[name] = old[name]
                continue
            try:
                target = os.readlink(f"{folder}/{name}")
            except OSError as exc:
                target = ""  # closed while we read the folder, or not ours to read: no socket we can name
                if isinstance(exc, PermissionError):
                    self.denied.add(pid)
            links[name] = int(target[8:-1]) if target.startswith("socket:[") else None
        self._update(pid, links)
        return [inode for inode in links.values() if inode]

    def _update(self, pid: int, links: dict[str, int | None] | None) -> None:
        """Replace what pid holds (None: it exited), keeping the inode index in step."""
        old = self.links.pop(pid, {})
        for name, inode in old.items():
            if inode and (links or {}).get(name) != inode:
                self.changed.add(inode)
                holders = self.owners.get(inode, [])
                if (pid, int(name)) in holders:
                    holders.remove((pid, int(name)))
                if not holders:
                    self.owners.pop(inode, None)
        if links is None:
            return
        for name, inode in links.items():
            if inode and old.get(name) != inode:
                self.changed.add(inode)
                self.owners.setdefault(inode, []).append((pid, int(name)))
                if old and pid not in self.recent:  # a process met before, with a new socket
                    self.recent.append(pid)
        self.links[pid] = links

    def _of_users(self, pids: list[int], uids: set[int]) -> list[int]:
        if not uids:
            return []
        theirs = []
        for pid in pids:
            try:
                if os.stat(f"{self.proc}/{pid}").st_uid in uids:
                    theirs.append(pid)
            except OSError:
                pass  # it exited
        return theirs



##############################################################################
# Sources: the Linux engine. The kernel's counters (/proc/net/snmp, sockstat, sockstat6)
##############################################################################

# Where sockstat (and sockstat6) counts each kind's sockets in use, and whether that kind's
# TIME_WAIT sockets, counted apart, may hide behind a count of 0.
SOCKSTAT_LABELS = {(socket.AF_INET, socket.IPPROTO_TCP): ("TCP", True),
                   (socket.AF_INET6, socket.IPPROTO_TCP): ("TCP6", True),
                   (socket.AF_INET, socket.IPPROTO_UDP): ("UDP", False),
                   (socket.AF_INET6, socket.IPPROTO_UDP): ("UDP6", False)}
HOST_WIDE_COUNTS = re.compile(rb" (?:orphan|alloc|mem) \d+")  # in sockstat: one count for every namespace
MEMORY_COUNTS = re.compile(rb" mem \d+")  # in sockstat: pages of buffers, which move with any traffic


def snmp_tcp_opens(data: bytes) -> int:
    """TCP's ActiveOpens + PassiveOpens from the text of /proc/net/snmp, whose Tcp: lines are
    the names, then the values. ValueError when there are none."""
    names, values = (line.split() for line in data.splitlines() if line.startswith(b"Tcp:"))
    counts = dict(zip(names, values))
    return int(counts[b"ActiveOpens"]) + int(counts[b"PassiveOpens"])


def sockstat_counts(files: Iterable[bytes]) -> dict[str, dict[str, str]]:
    """The counts of /proc/net/sockstat and sockstat6, by label and name:
    b'TCP: inuse 3 orphan 0 tw 1' -> {'TCP': {'inuse': '3', 'orphan': '0', 'tw': '1'}}."""
    counts = {}
    for data in files:
        for line in data.decode("ascii", "replace").splitlines():
            label, _, values = line.partition(": ")
            words = values.split()
            counts[label] = dict(zip(words[0::2], words[1::2]))
    return counts


def sockets_in_use(counts: dict[str, dict[str, str]], label: str) -> int:
    """The sockets in use of one sockstat label ('TCP', 'UDP6', ...), 0 where it is not counted."""
    return int(counts.get(label, {}).get("inuse", 0))


class KernelCounters:
    """The kernel's counters of one namespace, read with pread on fds kept open: TCP opens
    (/proc/net/snmp) and UDP sockets in use (/proc/net/sockstat, sockstat6) move when a
    socket opens; any change of a socket's state moves something in the three files."""

    FILES = ("snmp", "sockstat", "sockstat6")

    def __init__(self, pairs: list[tuple[int, int]], proc: str = "/proc/self/net"):
        protocols = {protocol for _, protocol in pairs}
        self.pairs = pairs
        self.counts_tcp, self.counts_udp = socket.IPPROTO_TCP in protocols, socket.IPPROTO_UDP in protocols
        self.activity_files = ("sockstat", "sockstat6")[:1 + any(family == socket.AF_INET6 for family, _ in pairs)]
        self.fds = {name: os.open(f"{proc}/{name}", os.O_RDONLY | os.O_CLOEXEC) for name in self.FILES}

    def _read(self, name: str) -> bytes:
        return os.pread(self.fds[name], 8192, 0)

    def _sockstat(self) -> dict[str, dict[str, str]]:
        return sockstat_counts(self._read(name) for name in ("sockstat", "sockstat6"))

    def read(self) -> list[int]:
        """The counters of socket opens, for the kinds asked for: TCP's opens, and the UDP
        sockets in use (the kernel counts no UDP open)."""
        opens = [snmp_tcp_opens(self._read("snmp"))] if self.counts_tcp else []
        if self.counts_udp:
            counts = self._sockstat()
            opens += [sockets_in_use(counts, "UDP"), sockets_in_use(counts, "UDP6")]
        return opens

    def tcp_counts(self) -> tuple[int, int]:
        """TCP's opens (ActiveOpens + PassiveOpens) and its sockets in use (hashed: connected,
        accepted, listening, closing; in sockstat and sockstat6): the opens less the change in
        use are the TCP sockets closed in between, as the kernel's close events would say."""
        counts = self._sockstat()
        return snmp_tcp_opens(self._read("snmp")), sockets_in_use(counts, "TCP") + sockets_in_use(counts, "TCP6")

    def in_use(self) -> list[int]:
        """The sockets in use of each kind asked for (sockstat, sockstat6): cheaper to read
        than the open counters, but a close and an open between two reads cancel out."""
        counts = self._sockstat()
        return [sockets_in_use(counts, SOCKSTAT_LABELS[pair][0]) for pair in self.pairs]

    def activity(self) -> tuple[bytes, ...]:
        """sockstat (and sockstat6, for IPv6 kinds) as they are, but for the memory in use:
        they move when a TCP socket is made anywhere (alloc), and when a socket of this
        namespace is hashed (connect(), listen(), accept(), a UDP bind) or closed. Two
        small reads, where the open counters (snmp) cost as much as five of them."""
        return tuple(MEMORY_COUNTS.sub(b"", self._read(name)) for name in self.activity_files)

    @staticmethod
    def tcp_allocated(activity: tuple[bytes, ...]) -> int:
        """TCP sockets allocated in every namespace, from activity(): the kernel keeps one
        count for all (the `alloc` of /proc/net/sockstat), so it moves when one is made anywhere."""
        return int(sockstat_counts(activity[:1])["TCP"]["alloc"])

    def signature(self) -> tuple[bytes, ...]:
        """All three files as they are, but for the counts that the kernel keeps for all
        namespaces at once (TCP's orphan and alloc, and the memory in use), which move with
        any other namespace: when nothing else in them moved, no socket of this namespace
        opened, closed, or changed state (a segment sent or received), but for a UDP connect()."""
        return tuple(HOST_WIDE_COUNTS.sub(b"", os.pread(fd, 8192, 0)) for fd in self.fds.values())

    @staticmethod
    def kinds_in_use(signature: tuple[bytes, ...]) -> set[tuple[int, int]]:
        """The kinds (family, protocol) that may hold a socket, from sockstat and sockstat6 as
        a signature read them: a kind with none in use (and for TCP, no TIME_WAIT) need not
        be dumped, which spares a walk of the kernel's tables, shared by all namespaces."""
        counts = sockstat_counts(signature[1:])
        waiting = counts.get("TCP", {}).get("tw", "1") != "0"
        return {pair for pair, (label, timewait) in SOCKSTAT_LABELS.items()
                if counts.get(label, {}).get("inuse", "1") != "0" or (timewait and waiting)}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)

##############################################################################
# Sources: the Linux engine. Network namespaces
##############################################################################

def netns_inode(pid: int | str = "self") -> int | None:
    """The network namespace of pid, as `lsns -t net` numbers it."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None  # it exited, or it is not ours to inspect


CLONE_NEWNET = 0x40000000
PROC_NET_FILES = {(socket.AF_INET, socket.IPPROTO_TCP): "tcp", (socket.AF_INET6, socket.IPPROTO_TCP): "tcp6",
                  (socket.AF_INET, socket.IPPROTO_UDP): "udp", (socket.AF_INET6, socket.IPPROTO_UDP): "udp6"}


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace that fd refers to."""
    if hasattr(os, "setns"):  # Python 3.12 and later
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def made_inside(pid: int, inode: int, make: Callable[[], tuple]) -> tuple:
    """make() run in a thread of its own that first joins pid's network namespace (inode),
    so that the sockets it creates belong to it. lognet's own threads never leave theirs.
    PermissionError without CAP_SYS_ADMIN; ProcessLookupError when pid has moved on."""
    outcome: list = []

    def run() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_ino != inode:
                    raise ProcessLookupError(errno.ESRCH, "the process left the namespace")
                setns(fd)
            finally:
                os.close(fd)
            outcome.append(make())
        except Exception as exc:  # noqa: BLE001 -- raised again in the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name="lognet-setns")
    thread.start()
    thread.join()
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


def parse_proc_net(text: str, family: int, protocol: int, netns: int | None) -> list[Connection]:
    """The sockets of a /proc/<pid>/net/{tcp,tcp6,udp,udp6} table, as ownerless Connections
    (the way psutil reads them): addresses are hex words in the host's byte order."""
    conns = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            (local, lport), (remote, rport) = (part.split(":") for part in fields[1:3])
            state, uid, inode = int(fields[3], 16), int(fields[7]), int(fields[9])
            laddr, raddr = (decode_address(family, struct.pack(f"={len(ip) // 8}I", *(
                int(ip[i:i + 8], 16) for i in range(0, len(ip), 8))), int(port, 16))
                for ip, port in ((local, lport), (remote, rport)))
        except (ValueError, struct.error, OSError):
            continue  # a line cut short as the table changed under the read
        status = TCP_STATES.get(state, "NONE") if protocol == socket.IPPROTO_TCP else "NONE"
        conns.append(Connection(-1, socket.AddressFamily(family), SOCKET_TYPES[protocol], laddr, raddr, status,
                                None, inode or None, None, uid, netns))
    return conns


class Namespace:
    """A network namespace the Linux engine watches: a sock_diag socket for its dumps, one
    for each protocol that hears its closes (so that the kernel's drops are counted per
    protocol, and a flood of one never drops the other's), a tap for its DNS answers and
    questions (where names are logged), and its kernel counters, all made for it. Each
    keeps the namespace alive, so they are closed (close()) once its last process is gone.

    Without the privilege to join it (setns), diag is None: its tables are read as text
    from /proc/<pid>/net at each poll, with no close events and no watcher."""

    def __init__(self, inode: int, pairs: list[tuple[int, int]], pids: list[int] | None = None,
                 sockets: tuple[SockDiag, dict[int, SockDiag], DnsTap | None] | None = None,
                 program: bytes | None = None):
        self.inode = inode
        self.pids = pids or []  # processes in it; none for lognet's own
        self.counted: list[int] = []  # its counters when the watcher last dumped it
        self.lost: dict[int, int] = {}  # protocol -> its lost close events, kept when its sockets are closed
        self.diag, self.events, self.tap = sockets or (None, {}, None)  # events: protocol -> its close events
        self.isolated_ends = IsolatedEnds()  # see Isolation
        self.counters: KernelCounters | None = None
        try:
            self.counters = KernelCounters(pairs, f"/proc/{self.pids[0]}/net" if self.pids else "/proc/self/net")
        except OSError:
            self.close()
            raise
        try:
            for protocol, events in self.events.items():
                if program:  # before the events come: none is let through unfiltered
                    attach_filter(events.sock, program)
                events.subscribe(DESTROY_GROUPS[pair] for pair in pairs if pair[1] == protocol)
        except OSError as exc:
            for events in self.events.values():
                events.close()
            self.events = {}
            self.refusal = exc.strerror
        self.settle()  # just joined: no event of ours is in flight

    refusal: str | None = None  # why the close events could not be joined
    paused = False  # whether TCP's close events are paused
    dump_filters: dict[int, bytes] = {}  # family -> what its TCP dumps leave out (see Isolation)

    def dump(self, family: int, protocol: int, states: int) -> list[bytes]:
        """Its sockets of (family, protocol) in states, but those of isolated groups."""
        return self.diag.dump(family, protocol, states,
                              bytecode=self.dump_filters.get(family, b"") if protocol == socket.IPPROTO_TCP else b"")

    def inside(self, make: Callable[[], SockDiag]) -> SockDiag:
        """A socket made in this namespace."""
        if not self.pids:  # lognet's own
            return make()
        return made_inside(self.pids[0], self.inode, lambda: (make(),))[0]
    # TCP's closes are counted twice over: by the kernel's counters (the opens less the change
    # in use) and by the close events heard (decoded or counted) or lost. Their difference holds still
    # while every close is heard, once the kernel's work queue has sent its events: `calm`, as
    # last read when no flood was on. While the events are paused, the closes unheard are what
    # the difference gains, read at the next calm moment (or at exit): a pause that is joined
    # or left while events are in flight then miscounts none of them.
    heard = 0  # its TCP close events read, decoded or counted
    calm: int | None = None
    settling = False  # paused since the last calm reading: its unheard closes are still to count

    def pause(self) -> None:
        """Leave TCP's close events; their closes are counted later (see settle())."""
        if socket.IPPROTO_TCP in self.events and not self.paused:
            self.events[socket.IPPROTO_TCP].membership(self.tcp_groups(), False)
            self.paused = self.settling = True

    def resume(self) -> None:
        """Join TCP's close events again."""
        if self.paused:
            self.events[socket.IPPROTO_TCP].membership(self.tcp_groups(), True)
            self.paused = False

    def tcp_groups(self) -> list[int]:
        return [DESTROY_GROUPS[pair] for pair in self.counters.pairs if pair[1] == socket.IPPROTO_TCP]

    def settle(self, final: bool = False) -> int:
        """At a calm moment (no flood on, and no close event waiting to be read) or at the end
        (final): the TCP sockets closed and never heard since the last, by the kernel's
        counters; a new calm reading. The counters, not the events: a socket closed without
        ever connecting or listening is not in them, and a listener opened meanwhile counts
        one less. A moment that is not calm is passed over (0): each close whose event is
        still on its way would be counted unheard, then heard."""
        if socket.IPPROTO_TCP not in self.events:
            return 0
        counts = self.counters.tcp_counts()
        # Nor is a moment calm while a flood group is isolated here: its counters are read at their own moments.
        if not final and (self.isolated_ends.ends or select.select([self.events[socket.IPPROTO_TCP].sock], [], [], 0)[0]
                          or self.counters.tcp_counts() != counts):
            return 0
        opens, in_use = counts
        # A close whose event the kernel dropped is counted lost (events_lost()), not unheard.
        drift = opens - in_use - self.heard - self.events_lost().get(socket.IPPROTO_TCP, 0)
        unheard = max(0, drift - self.calm) if self.settling and self.calm is not None else 0
        self.calm, self.settling = drift, self.paused
        return unheard

    def text_records(self, pairs: list[tuple[int, int]]) -> dict[tuple, Connection]:
        """Its sockets, read from the text tables of one of its processes, by (inode, family,
        type, laddr, raddr, status): a text table has no cookie, and TIME_WAIT no inode."""
        for pid in self.pids:
            try:
                records = {}
                for family, protocol in pairs:
                    with open(f"/proc/{pid}/net/{PROC_NET_FILES[family, protocol]}") as f:
                        for conn in parse_proc_net(f.read(), family, protocol, self.inode):
                            records[(conn.inode, *conn[1:6])] = conn
                if netns_inode(pid) == self.inode:  # still there after the read: the tables were its
                    return records
            except OSError:
                pass  # that process exited: the next one is read
        return {}

    def events_lost(self) -> dict[int, int]:
        """Its close events that the kernel dropped, by protocol, since it was watched: the
        kernel's exact count, once any was (ENOBUFS)."""
        lost = dict(self.lost)
        for protocol, events in self.events.items():
            if events.lost:
                lost[protocol] = lost.get(protocol, 0) + self.drops_of(events)
        return lost

    def drops_of(self, events: SockDiag) -> int:
        """The kernel's count of the events it dropped for one of the namespace's sockets."""
        for proc_net in [f"/proc/{pid}/net" for pid in self.pids] or ["/proc/self/net"]:
            drops = events.drops(proc_net)
            if drops is not None:
                return max(drops, events.lost)
        return events.lost

    def close(self) -> None:
        self.lost = self.events_lost()
        for diag in (self.diag, *self.events.values()):
            if diag is not None:
                diag.close()
        self.diag, self.events = None, {}
        if self.tap is not None:
            self.tap.close()
            self.tap = None
        if self.counters is not None:
            self.counters.close()
            self.counters = None




class Namespaces:
    """The network namespaces the Linux engine watches, by inode: lognet's own, and (when
    everywhere) each one that has a process lognet may inspect. What watches a namespace
    (a Namespace) is made when it is first met, and let go of once its last process is
    gone: what lognet holds open would keep it alive."""

    def __init__(self, pairs: list[tuple[int, int]], everywhere: bool, program: bytes | None,
                 names: Names | None):
        self.pairs = pairs
        self.everywhere = everywhere  # False: lognet's own namespace only
        self.program = program  # the close events' filter (close_filter()), if any
        self.names = names  # which makes each namespace's DNS tap, while names are logged
        self.own_inode = netns_inode()
        diag = SockDiag()
        try:
            diag.dump(*pairs[0], states=LISTEN_STATE)  # refused here rather than at the first poll
            own = Namespace(self.own_inode, pairs, sockets=(diag, self._event_sockets(), self._tap()),
                            program=program)
        except OSError:
            diag.close()
            raise
        self.by_inode: dict[int, Namespace] = {self.own_inode: own}
        self.joins = True  # whether lognet may join other namespaces (setns); False after the first refusal
        self.lost_before: dict[int, Counter] = {}  # netns -> protocol -> close events lost, once let go of
        # What the watcher waits on and reads, by fd: each namespace's close events and DNS questions.
        self.readers: dict[int, tuple[Namespace, str]] = {}  # fd -> (namespace, "events" or "questions")
        # Those that sent close events, or DNS questions, since the watcher last read their
        # counters: sockets there are closing, or one waits for an answer.
        self.sent_closes: set[Namespace] = set()
        self.sent_questions: set[Namespace] = set()
        self.activity: tuple[bytes, ...] = ()  # lognet's namespace's KernelCounters.activity() at the last look
        self.allocated = 0  # the kernel's count of TCP sockets allocated, in all namespaces, at the last look
        self._index()

    @property
    def own(self) -> Namespace:
        return self.by_inode[self.own_inode]

    def __iter__(self) -> Iterator[Namespace]:
        return iter(list(self.by_inode.values()))

    def __getitem__(self, inode: int) -> Namespace:
        return self.by_inode[inode]

    def __len__(self) -> int:
        return len(self.by_inode)

    def discover(self, pids: Iterable[int]) -> list[Namespace]:
        """Watch the namespaces of these processes that are new to lognet; return those whose
        last process is gone, no longer watched, for the caller to read out and release()."""
        members: dict[int, list[int]] = {}
        for pid in pids:
            inode = netns_inode(pid)
            if inode is not None and inode != self.own_inode:
                members.setdefault(inode, []).append(pid)
        gone = [self.by_inode.pop(inode) for inode in self.by_inode.keys() - members.keys() - {self.own_inode}]
        for inode, pids in members.items():
            if inode in self.by_inode:
                self.by_inode[inode].pids = pids
                continue
            try:
                self.by_inode[inode] = self._open(inode, pids)
            except OSError:
                pass  # its processes moved on as lognet came: the next poll sees what is left
        self._index()
        return gone

    def release(self, gone: Iterable[Namespace]) -> None:
        """Close what watched namespaces now gone, keeping the count of their lost events."""
        for ns in gone:
            ns.close()
            self.lost_before.setdefault(ns.inode, Counter()).update(ns.lost)

    def read_questions(self, ns: Namespace) -> int:
        """How many DNS questions one namespace sent: a connection is likely to follow each."""
        asked = ns.tap.questions_sent()
        if asked:
            self.sent_questions.add(ns)  # the asking socket lives until its answer comes
        return asked

    def heard_closes(self, ns: Namespace) -> None:
        """The namespace sent close events: its sockets are closing, and more may open."""
        self.sent_closes.add(ns)

    def with_new_sockets(self) -> list[Namespace]:
        """The namespaces where sockets may have opened since the watcher last looked.
        Another namespace is looked at only when a TCP socket was made somewhere (the one
        count for all namespaces moved), or it sent close events or DNS questions, and then
        by its counts of sockets in use, the cheapest to read, with a close or a question
        enough to dump it: reading every namespace's open counters at every look would cost
        CPU for each container, also with nothing changing."""
        own = self.own
        activity = own.counters.activity()
        if activity == self.activity and not self.sent_closes and not self.sent_questions:
            return []  # no TCP socket made anywhere, and none of lognet's namespace hashed or closed
        self.activity = activity
        allocated = KernelCounters.tcp_allocated(activity)
        anywhere, self.allocated = allocated != self.allocated, allocated
        moved = []
        for ns in self.by_inode.values() if anywhere else {own, *self.sent_closes, *self.sent_questions}:
            if ns.diag is None:
                continue
            counted = ns.counters.read() if ns is own else ns.counters.in_use()
            if counted != ns.counted or ns in self.sent_questions or (ns in self.sent_closes and ns is not own):
                ns.counted = counted
                moved.append(ns)
        self.sent_closes, self.sent_questions = set(), set()
        return moved

    def lost_closes(self) -> dict[int, dict[str, int]]:
        """The close events the kernel dropped since the start, by netns and protocol."""
        lost = {inode: Counter(counts) for inode, counts in self.lost_before.items()}
        for inode, ns in self.by_inode.items():
            lost.setdefault(inode, Counter()).update(ns.events_lost())
        return {inode: {PROTOCOLS[SOCKET_TYPES[protocol]].lower(): count for protocol, count in counts.items()}
                for inode, counts in lost.items() if counts}

    def _index(self) -> None:
        """Index the close-event sockets and the DNS questions' taps by fd, once a poll rather
        than at every look."""
        self.readers = {
            sock.fileno(): (ns, role) for ns in self.by_inode.values()
            for role, sock in [*(("events", events.sock) for events in ns.events.values()),
                               ("questions", ns.tap and ns.tap.questions)]
            if sock is not None}

    def _event_sockets(self) -> dict[int, SockDiag]:
        """A socket for each protocol's close events, made in the calling thread's namespace."""
        events: dict[int, SockDiag] = {}
        try:
            for protocol in sorted({protocol for _, protocol in self.pairs}):
                events[protocol] = SockDiag()
        except OSError:
            for diag in events.values():
                diag.close()
            raise
        return events

    def _tap(self) -> DnsTap | None:
        return self.names.open_tap() if self.names is not None else None

    def _open(self, inode: int, pids: list[int]) -> Namespace:
        """What watches a namespace new to lognet: sockets made inside it, or its text tables."""
        sockets = None
        if self.joins:
            try:
                sockets = made_inside(pids[0], inode, lambda: (SockDiag(), self._event_sockets(), self._tap()))
            except PermissionError as exc:
                self.joins = False
                warn(f"other network namespaces are read from /proc/<pid>/net, about 10 ms each per poll, "
                     f"without close events or the watcher: joining them needs CAP_SYS_ADMIN ({exc.strerror})")
        return Namespace(inode, self.pairs, pids, sockets, self.program)

    def close(self) -> None:
        for ns in self.by_inode.values():
            ns.close()

##############################################################################
# Sources: the Linux engine. Names: the DNS answers each namespace receives
##############################################################################

DNS_PORT = 53
DNS_HEADER = struct.Struct("!HHHHHH")  # id, flags, questions, answers, authority, additional
DNS_RECORD = struct.Struct("!HHIH")  # type, class, ttl, rdata length
UDP_HEADER = struct.Struct("!HHH")  # source port, destination port, length
DNS_ADDRESS_TYPES = {1: (socket.AF_INET, 4), 28: (socket.AF_INET6, 16)}  # A, AAAA: family, rdata length
DNS_CNAME = 5
DNS_NAME_MAX = 255  # bytes, as the wire writes a name (RFC 1035 3.1)
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
PACKET_OUTGOING = 4  # a packet this host sends: on lo each answer is also seen coming in
# A tap's packets come through a ring shared with the kernel (PACKET_RX_RING, TPACKET_V2):
# reading one costs no system call. Frames of 2048 bytes hold an answer of up to 1,984 bytes
# (resolvers now send EDNS answers of 1,232 at the most). Answers are read at each poll, and
# at the watcher's looks (ten a second at least) once the ring is half full: 512 frames, 1 MiB,
# take 2,500 answers a second. A question's frame holds its headers.
SOL_PACKET, PACKET_RX_RING, PACKET_VERSION, TPACKET_V2 = 263, 5, 10, 1
TP_STATUS_USER = 1
TPACKET2_HEADER = struct.Struct("=IIIHHII")  # tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_sec, tp_nsec
ANSWER_FRAMES, QUESTION_FRAMES = (2048, 512), (256, 256)  # (bytes each, how many)
SKF_AD_PROTOCOL, SKF_AD_PKTTYPE = 0xFFFFF000, 0xFFFFF004  # classic BPF's loads of skb->protocol, pkt_type
QUERY_SNAP = 96  # bytes of a query kept: its IP and UDP headers, which name the socket that asks
# Names for remote addresses (rhost) are kept for their answer's TTL and at least
# NAME_TTL_FLOOR seconds, NAMES_KEPT of them at the most, and for each address the
# NAMES_LISTED latest names asked for it.
NAME_TTL_FLOOR = 600.0
NAMES_KEPT = 16_384
NAMES_LISTED = 4


def dns_filter(questions: bool) -> bytes:
    """What reaches Python from the host's packets, judged in the kernel: the UDP from port
    53 that the host received (not sent) with the DNS header's QR bit, answers; or the
    headers of the UDP to port 53 that it sent without that bit, questions, which tell that
    a socket is asking. Unfragmented, or the first fragment. The offsets are of the network
    header: a tap is a SOCK_DGRAM socket."""
    return bpf_program([
        (BPF_LD_W_ABS, SKF_AD_PKTTYPE), (BPF_ST, 0),
        (BPF_LD_W_ABS, SKF_AD_PROTOCOL), (BPF_JEQ_K, ETH_P_IP, "ipv4", None), (BPF_JEQ_K, ETH_P_IPV6, None, "drop"),
        (BPF_LD_B_ABS, 6), (BPF_LDX_IMM, 40), (BPF_JEQ_K, socket.IPPROTO_UDP, "udp", "drop"),  # X: IPv6's header
        "ipv4",
        (BPF_LD_B_ABS, 9), (BPF_JEQ_K, socket.IPPROTO_UDP, None, "drop"),
        (BPF_LD_H_ABS, 6), (BPF_JSET_K, 0x1FFF, "drop", None),  # a later fragment: no UDP header
        (BPF_LDX_B_MSH, 0),  # X = the IPv4 header's length
        "udp",
        (BPF_LD_B_IND, 10),  # the DNS header's QR bit
        (BPF_JSET_K, 0x80, "drop", "question") if questions else (BPF_JSET_K, 0x80, "answer", "drop"),
        "answer",
        (BPF_LD_H_IND, 0), (BPF_JEQ_K, DNS_PORT, None, "drop"),
        (BPF_LD_MEM, 0), (BPF_JEQ_K, PACKET_OUTGOING, "drop", "keep"),  # on lo each is also seen going out
        "question",
        (BPF_LD_H_IND, 2), (BPF_JEQ_K, DNS_PORT, None, "drop"),
        (BPF_LD_MEM, 0), (BPF_JEQ_K, PACKET_OUTGOING, "headers", "drop"),
        "keep", (BPF_RET_K, 0xFFFF),
        "headers", (BPF_RET_K, QUERY_SNAP),
        "drop", (BPF_RET_K, 0),
    ])



def dns_label(label: bytes) -> str:
    r"""A label in DNS presentation form (RFC 1035 5.1): '.' and '\' escaped, and ',' (which
    separates the names of one address), bytes outside printable ASCII as \DDD; so that a
    name that holds a dot, a space or a newline in a label cannot pass for another:
    b'a.b' -> 'a\.b', b'x\n' -> 'x\010'."""
    return "".join(f"\\{chr(byte)}" if byte in b".\\," else chr(byte) if 0x21 <= byte <= 0x7E else f"\\{byte:03d}"
                   for byte in label.lower())


def read_dns_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at offset, compression pointers followed, and the offset after it.
    ValueError for what is malformed: a pointer that does not point before the labels
    it interrupts (so that a loop cannot be), a name over 255 bytes; IndexError when cut
    short. (b'\\x03www\\x07example\\x03com\\x00', 0) -> ('www.example.com', 17)"""
    labels, end, start, size = [], None, offset, 0
    while True:
        length = data[offset]
        if length >= 0xC0:
            pointer = (length & 0x3F) << 8 | data[offset + 1]
            if pointer >= start:
                raise ValueError("a compression pointer that does not point back")
            end = offset + 2 if end is None else end
            offset = start = pointer
            continue
        if length > 63:
            raise ValueError("a label type that is not a length")
        if length == 0:
            break
        size += length + 1
        label = data[offset + 1:offset + 1 + length]
        if size > DNS_NAME_MAX or len(label) != length:
            raise ValueError("a name too long or cut short")
        labels.append(label)
        offset += 1 + length
    if b"".join(labels).replace(b"-", b"").replace(b"_", b"").isalnum():  # the usual name: nothing to escape
        name = b".".join(labels).decode("ascii").lower()
    else:
        name = ".".join(map(dns_label, labels))
    return name, offset + 1 if end is None else end


def skip_dns_name(data: bytes, offset: int) -> int:
    """The offset after the name at offset, a compression pointer not followed: where the
    next field is, without reading the name. IndexError when cut short."""
    while True:
        length = data[offset]
        if length >= 0xC0:
            return offset + 2
        if length > 63:
            raise ValueError("a label type that is not a length")
        if length == 0:
            return offset + 1
        offset += 1 + length


def dns_answer_records(message: bytes) -> tuple[list[tuple[int, int, int, int, int]], int]:
    """The records of a DNS answer's answer section, of class IN: (where the owner's name
    is, type, TTL, where the data starts, ends); and where the section ends. ValueError
    when the message is not an answer to a stub's question; IndexError or struct.error
    when it is cut short."""
    _, flags, questions, answers, _, _ = DNS_HEADER.unpack_from(message)
    if not flags & 0x8000 or flags & 0x000F or questions != 1:
        raise ValueError("a question, an error (NXDOMAIN ...), or not what a stub asks")
    offset = skip_dns_name(message, DNS_HEADER.size) + 4  # the question's type and class
    records = []
    for _ in range(answers):
        owner, offset = offset, skip_dns_name(message, offset)
        rtype, rclass, ttl, length = DNS_RECORD.unpack_from(message, offset)
        offset += DNS_RECORD.size + length
        if offset > len(message):
            raise IndexError("a record cut short")
        if rclass == 1:
            records.append((owner, rtype, min(ttl, 0x7FFFFFFF), offset - length, offset))
    return records, offset


def dns_address(message: bytes, rtype: int, start: int, end: int) -> str | None:
    """The address an A or AAAA record's data holds; None for any other record."""
    family, size = DNS_ADDRESS_TYPES.get(rtype, (0, -1))
    return socket.inet_ntop(family, message[start:end]) if end - start == size else None


def dns_answer_addresses(message: bytes) -> tuple[bytes, list[tuple[str, int]]] | None:
    """The addresses (with their TTLs) that a DNS answer's A and AAAA records give, and the
    answer cut after its answer section; None when the message is not a usable answer.
    No name is read: which name an address has (decode_dns_answer) is worked out only
    when a line needs it, and most answers are never asked for."""
    try:
        records, end = dns_answer_records(message)
        addresses = [(address, ttl) for _, rtype, ttl, start, stop in records
                     if (address := dns_address(message, rtype, start, stop)) is not None]
    except (struct.error, IndexError, ValueError):
        return None  # it came from the network: whatever is malformed is skipped
    return message[:end], addresses


def decode_dns_answer(message: bytes) -> tuple[str, list[tuple[str, int]]] | None:
    """The name asked, and the addresses (with their TTLs) that the answer gave for it,
    following CNAME chains back to the question; None when the message is not a usable
    answer, whatever it holds.
    A question for site.test answered 'site.test CNAME edge.cdn.test', 'edge.cdn.test A
    192.0.2.10' -> ('site.test', [('192.0.2.10', ttl)])."""
    try:
        records, _ = dns_answer_records(message)
        asked = read_dns_name(message, DNS_HEADER.size)[0]
        aliases, addresses = {}, []
        for owner, rtype, ttl, start, end in records:
            if rtype == DNS_CNAME:
                aliases[read_dns_name(message, owner)[0]] = read_dns_name(message, start)[0]
            elif (address := dns_address(message, rtype, start, end)) is not None:
                addresses.append((read_dns_name(message, owner)[0], address, ttl))
    except (struct.error, IndexError, ValueError):
        return None  # it came from the network: whatever is malformed is skipped
    chain, name = {asked}, asked
    for _ in range(len(aliases)):  # a CNAME loop ends when the aliases are spent
        name = aliases.get(name)
        if name is None or name in chain:
            break
        chain.add(name)
    return asked, [(address, ttl) for owner, address, ttl in addresses if owner in chain]


class Answer(NamedTuple):
    """A DNS answer a namespace received: where it went (the asking socket's port), the
    addresses its records give, and the answer itself, for decode_dns_answer() to name them."""

    netns: int | None
    port: int  # of the socket that asked
    message: bytes
    addresses: list[tuple[str, int]]  # (ip, ttl)
    received: float | None = None  # when it arrived, epoch seconds


def decode_dns_packet(packet: bytes, netns: int | None, received: float | None = None) -> Answer | None:
    """An Answer from a packet as the answers' tap reads it (from the network header on),
    or None for any other packet: the kernel's filter is trusted for speed, not for safety."""
    try:
        version = packet[0] >> 4
        if version == 4:
            start, next_header = (packet[0] & 0x0F) * 4, packet[9]
        elif version == 6:
            start, next_header = 40, packet[6]
        else:
            return None
        sport, dport, length = UDP_HEADER.unpack_from(packet, start)
    except (IndexError, struct.error):
        return None
    if next_header != socket.IPPROTO_UDP or sport != DNS_PORT:
        return None
    found = dns_answer_addresses(packet[start + 8:start + max(8, length)])
    if found is None or not found[1]:
        return None
    return Answer(netns, dport, *found, received)


class PacketRing:
    """The frames that the kernel fills with a packet socket's packets (PACKET_RX_RING):
    each is read in place and handed back, in order."""

    def __init__(self, sock: socket.socket, frame_size: int, frames: int):
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        block = max(frame_size, mmap.PAGESIZE)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING,  # struct tpacket_req: one block of frames, or a frame a block
                        struct.pack("=IIII", block, frame_size * frames // block, frame_size, frames))
        self.frames = mmap.mmap(sock.fileno(), frame_size * frames)
        self.frame_size, self.count, self.next = frame_size, frames, 0

    def half_full(self) -> bool:
        """Whether the frames the kernel filled reach half way round the ring from the next to read."""
        at = (self.next + self.count // 2) % self.count * self.frame_size
        return bool(TPACKET2_HEADER.unpack_from(self.frames, at)[0] & TP_STATUS_USER)

    def packets(self) -> Iterator[tuple[bytes, float]]:
        """The packets that have come, from the network header on, each with when it came
        (epoch seconds): at most a ring's worth."""
        frames, size = self.frames, self.frame_size
        for _ in range(self.count):
            at = self.next * size
            status, _, length, _, start, seconds, nanoseconds = TPACKET2_HEADER.unpack_from(frames, at)
            if not status & TP_STATUS_USER:
                return
            packet = frames[at + start:at + start + length]
            frames[at:at + 4] = b"\0\0\0\0"  # TP_STATUS_KERNEL: the kernel's to fill again
            self.next = (self.next + 1) % self.count
            yield packet, seconds + nanoseconds / 1e9

    def close(self) -> None:
        self.frames.close()


class DnsTap:
    """Two packet sockets that read the DNS traffic of their network namespace: the answers
    it receives, and the questions it sends (which wake the watcher, to find the socket that
    asks while it waits). Classic BPF filters let only those reach lognet, whatever else
    the host sends. Needs CAP_NET_RAW (PermissionError without)."""

    def __init__(self):
        self.answers = self.questions = self.answer_ring = self.question_ring = None
        try:
            self.answers, self.answer_ring = self._open(dns_filter(questions=False), *ANSWER_FRAMES)
            self.questions, self.question_ring = self._open(dns_filter(questions=True), *QUESTION_FRAMES)
        except OSError:
            self.close()
            raise

    @staticmethod
    def _open(program: bytes, frame_size: int, frames: int) -> tuple[socket.socket, PacketRing]:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            attach_filter(sock, program)
            return sock, PacketRing(sock, frame_size, frames)
        except OSError:
            sock.close()
            raise

    def questions_sent(self) -> int:
        """How many questions were sent since last asked (a packet that came before the filter
        was attached is counted too: it costs one dump)."""
        return sum(1 for _ in self.question_ring.packets())

    def answers_received(self, netns: int | None) -> list[Answer]:
        """The answers that arrived since last asked (what is no answer is skipped)."""
        answers = (decode_dns_packet(packet, netns, received) for packet, received in self.answer_ring.packets())
        return [answer for answer in answers if answer is not None]

    def close(self) -> None:
        for ring in (self.answer_ring, self.question_ring):
            if ring is not None:
                ring.close()
        for sock in (self.answers, self.questions):
            if sock is not None:
                sock.close()




def put_latest(table: OrderedDict, key, value, kept: int) -> None:
    """Keep value at key as the latest of table, which holds the `kept` latest at the most."""
    table[key] = value
    table.move_to_end(key)
    if len(table) > kept:
        table.popitem(last=False)


class NameCache:
    """The names that DNS answers gave for remote addresses, by network namespace: the
    one each process asked for, where the asking socket's owner was known, and every name
    asked for each address (the NAMES_LISTED latest). A name lives for its answer's TTL,
    and at least NAME_TTL_FLOOR: clients keep answers longer than that (and a connection
    made just after expiry still finds its name). The NAMES_KEPT latest of each stay:
    memory stays flat.

    A connection whose process asked for no name of its address gets the one name asked
    for it, or all of them ('a.test,b.test'): many names share one address (a CDN, shared
    hosting), and which one a process meant is not guessed.

    An address is kept with its answer, undecoded: the name is read from it the first time
    a line asks for it (decode_dns_answer), and kept in its place."""

    def __init__(self, kept: int = NAMES_KEPT, floor: float = NAME_TTL_FLOOR):
        self.kept = kept
        self.floor = floor
        # (netns, pid, address) -> (name, or the answer that gives it; until)
        self.asked: OrderedDict[tuple, tuple[str | bytes, float]] = OrderedDict()
        # (netns, address) -> {the question's name, as sent -> the same}
        self.recent: OrderedDict[tuple, OrderedDict[bytes, tuple[str | bytes, float]]] = OrderedDict()

    def add(self, answer: Answer, pid: int | None, now: float) -> None:
        """What an answer said; pid is the asking socket's owner, when known."""
        asked = answer.message[DNS_HEADER.size:skip_dns_name(answer.message, DNS_HEADER.size)].lower()
        for address, ttl in answer.addresses:
            until = now + max(ttl, self.floor)
            key = (answer.netns, address)
            put_latest(self.recent, key, self.recent.get(key) or OrderedDict(), self.kept)
            put_latest(self.recent[key], asked, (answer.message, until), NAMES_LISTED)
            if pid is not None:
                put_latest(self.asked, (answer.netns, pid, address), (answer.message, until), self.kept)

    def name(self, netns: int | None, pid: int | None, address: str, now: float) -> str | None:
        """The name for a connection of pid to address: the one pid asked for, else every
        name asked for the address, comma-separated and sorted."""
        if address.startswith("::ffff:") and "." in address:  # IPv4-mapped: as the A record wrote it
            address = address[7:]
        own = self._read(self.asked, (netns, pid, address), address, now)
        if own is not None:
            return own
        names = self.recent.get((netns, address), {})
        listed = sorted(filter(None, (self._read(names, asked, address, now) for asked in list(names))))
        return ",".join(listed) or None

    @staticmethod
    def _read(table: OrderedDict, key, address: str, now: float) -> str | None:
        """The name at key while it lives; an answer not read yet is read now (the answer's
        name for this address, if any) and kept in its place."""
        found = table.get(key)
        if found is None or found[1] < now:
            return None
        name, until = found
        if isinstance(name, bytes):
            decoded = decode_dns_answer(name)
            name = decoded[0] if decoded and any(ip == address for ip, _ in decoded[1]) else None
            if name is None:  # a record off the question's chain names nothing
                del table[key]
                return None
            table[key] = (name, until)
        return name




class Names:
    """Names for remote addresses (rhost), from the DNS answers each namespace receives: the
    name each process asked for, where the asking socket's holder is known (the owner of
    the UDP socket the answer went to, by its port), and the latest for each address."""

    def __init__(self, now: Callable[[], float],
                 sender: Callable[[int | None, int, float | None], int | None] | None = None):
        self.now = now
        # The kernel's events, where on: (netns, port, when) -> the process that last sent a
        # datagram from that UDP port before then, the asker known exactly even for a socket of a moment.
        self.sender = sender
        self.cache = NameCache()
        # (netns, local port) of live UDP sockets seen with their owner -> pid: who asks for
        # the DNS answers sent to that port
        self.askers: OrderedDict[tuple, int] = OrderedDict()
        # askers' keys whose UDP sockets closed since: their ports may go to another
        self.closed_ports: list[tuple] = []
        self.tap_refusal: str | None = None  # why a DNS tap could not be made, once said

    def open_tap(self) -> DnsTap | None:
        """A tap for the DNS traffic of the calling thread's namespace; None where refused."""
        try:
            return DnsTap()
        except OSError as exc:
            if self.tap_refusal is None:
                self.tap_refusal = exc.strerror
                warn(f"host names (rhost) are not available: reading DNS answers needs CAP_NET_RAW "
                     f"({exc.strerror}); rhost is '-' for every connection")
            return None

    def note_holder(self, record: Connection, pid: int) -> None:
        """Who holds a UDP socket may be who asks for the DNS answers sent to its port."""
        if record.type != socket.SOCK_DGRAM or not record.laddr:
            return
        put_latest(self.askers, (record.netns, record.laddr[1]), pid, NAMES_KEPT)  # bounded as the names are

    def note_closed(self, closed: Connection) -> None:
        """A UDP socket closed: its port may ask for another process, once the answers that came are read."""
        if closed.type == socket.SOCK_DGRAM and closed.laddr:
            self.closed_ports.append((closed.netns, closed.laddr[1]))

    def learn(self, namespaces: Iterable[Namespace], drain: bool) -> None:
        """Learn the names that DNS answers gave, each for the process that asked, where known:
        every answer that has come when drain, else those of taps half full. Only the poll's
        lines need them, and in bulk each costs less to read."""
        for ns in namespaces:
            if ns.tap is not None and (drain or ns.tap.answer_ring.half_full()):
                self.learn_from(ns)
        if drain:  # after every answer that came: a socket closes once its answer has come
            for key in self.closed_ports:
                self.askers.pop(key, None)
            self.closed_ports = []

    def learn_from(self, ns: Namespace) -> None:
        """The answers one namespace's tap holds."""
        if ns.tap is None:
            return
        now = self.now()
        for answer in ns.tap.answers_received(ns.inode):
            key = (answer.netns, answer.port)
            asker = self.sender(*key, answer.received) if self.sender is not None else None
            self.cache.add(answer, self.askers.get(key) if asker is None else asker, now)

    def rhost(self, conn: Connection, pid: int | None) -> str | None:
        """The name the host resolved to conn's remote address (for pid, where it asked), if known."""
        return self.cache.name(conn.netns, pid, conn.raddr[0], self.now()) if conn.raddr else None

##############################################################################
# Sources: the Linux engine. Close events (the sock_diag destroy groups)
##############################################################################

# A close event is counted, not decoded, over the CPU budget: at EVENT_COST CPU seconds each until measured.
EVENT_COST = 3e-6
EVENTS_READ = 2048  # close events read at once from a socket, before the CPU budget looks again
EVENTS_READ_ROUNDS = 16  # and so many times at the most in a look or poll: the rest wait for the next


def tally_ends(endpoints: Counter, data: bytes, start: int, netns: int | None) -> None:
    """Count both ends of the socket of one close event: (netns, family, packed address, port as it is sent)."""
    family = data[start]
    size = 4 if family == socket.AF_INET else 16
    endpoints[(netns, family, data[start + DIAG_SRC:start + DIAG_SRC + size],
               data[start + DIAG_SPORT:start + DIAG_DPORT])] += 1
    endpoints[(netns, family, data[start + DIAG_DST:start + DIAG_DST + size],
               data[start + DIAG_DPORT:start + DIAG_SRC])] += 1


class CloseEvents:
    """The kernel's close events, read a namespace at a time: decoded into Closed records;
    or over the CPU budget counted by their peers without being decoded, but for sockets
    seen alive (a connection whose open was logged has its close line too); and the TCP
    closes never heard while the events were paused, which the kernel's counters count."""

    def __init__(self, names: Names | None, now: Callable[[], float], budget: CpuBudget | None):
        self.names = names  # told of UDP sockets closed: their ports may ask for another process
        self.now = now
        self.budget = budget
        self.departures: list[Closed] = []  # decoded since the last poll
        # Counted since the last poll: (netns, group, addresses, service port, inbound) -> [count, data, offset]
        self.counted: dict[tuple, list] = {}
        self.read = 0  # events that reached lognet, decoded or counted
        # While a flood is on: how many closes each end had (see flood_endpoints()), since when
        self.endpoints: Counter[tuple] | None = None
        self.tallied_since = 0.0
        self.cost = EVENT_COST  # CPU seconds to count one, as last measured
        self.unheard: dict[int, int] = {}  # netns -> TCP closes counted as unheard, not yet taken

    def take_from(self, ns: Namespace, known: Callable[[], KnownSockets] | None = None) -> int:
        """Read the events that have arrived from one namespace: counted when known (what is
        known of the sockets reported) is given, else decoded. Return how many were read."""
        started, before = time.thread_time(), self.read
        chunks, isolated = ns.isolated_ends.sift([chunk for events in ns.events.values()
                                            for chunk in events.events(EVENTS_READ)])
        ns.heard += isolated  # an isolated group's, queued before its filter: counted for it (see Isolation)
        if not chunks:
            return 0
        if self.endpoints is not None:
            for data, _ in chunks:
                for kind, start, _ in netlink_messages(data):
                    if kind == SOCK_DIAG_BY_FAMILY:
                        tally_ends(self.endpoints, data, start, ns.inode)
        if known is not None:
            chunks = self.count(ns, chunks, known())
            if self.read - before >= 100:  # enough to measure the cost of one
                self.cost = (time.thread_time() - started) / (self.read - before)
        self.departures += self.decode(ns, chunks)
        if self.budget is not None:
            self.budget.count(self.read - before)  # each a socket closed: what tells a flood
        return self.read - before

    def decode(self, ns: Namespace, chunks: list[tuple[bytes, int]]) -> list[Closed]:
        """The close events of these chunks (data, group mask), as Closed records."""
        seen = self.now()
        closed = []
        for data, group in chunks:
            protocol = GROUP_SOCKETS[group][1]
            fast = tcp_close(data, ns.inode) if protocol == socket.IPPROTO_TCP else None
            if fast is not None:  # most are: one unpack each
                self.read += 1
                ns.heard += 1
                closed.append(Closed(fast[0], seen, fast[1], fast[2]))
                continue
            for kind, start, end in netlink_messages(data):
                if kind != SOCK_DIAG_BY_FAMILY:
                    continue
                self.read += 1
                ns.heard += protocol == socket.IPPROTO_TCP
                counts = tcp_info_bytes(data, start, end) if protocol == socket.IPPROTO_TCP else None
                sent, received, beyond = counts or (None, None, None)
                conn = decode_socket(data, start, protocol, ns.inode, closed=True, txbytes=sent)
                if protocol == socket.IPPROTO_UDP and self.names is not None:
                    self.names.note_closed(conn)
                closed.append(Closed(conn, seen, received, beyond))
        return closed

    def count(self, ns: Namespace, chunks: list[tuple[bytes, int]], known: KnownSockets) -> list[tuple[bytes, int]]:
        """Count close events without decoding them, by their peers, what a summary needs;
        return those of sockets seen alive, to be decoded."""
        counted, inode, alive = self.counted, ns.inode, []
        for data, group in chunks:
            tcp = GROUP_SOCKETS[group][1] == socket.IPPROTO_TCP
            for kind, start, end in netlink_messages(data):
                if kind != SOCK_DIAG_BY_FAMILY:
                    continue
                if data[start + DIAG_COOKIE:start + DIAG_COOKIE_END] in known.cookies:
                    alive.append((data[start - NLMSG_HEADER.size:end], group))
                    continue
                ns.heard += tcp
                # The port that names the service is kept: the local one where a listener
                # has it (an incoming connection), else the remote one.
                local = data[start + DIAG_SPORT:start + DIAG_DPORT]
                inbound = (inode, local) in known.served
                port = local if inbound else data[start + DIAG_DPORT:start + DIAG_SRC]
                key = (inode, group, data[start + DIAG_SRC:start + DIAG_IF], port, inbound)
                entry = counted.get(key)
                if entry is None:
                    counted[key] = [1, data, start]
                else:
                    entry[0] += 1
                self.read += 1
        return alive

    def tally(self, on: bool) -> None:
        """Count each close's two ends from now (see flood_endpoints()), or stop."""
        if on and self.endpoints is None:
            self.endpoints, self.tallied_since = Counter(), time.monotonic()
        elif not on:
            self.endpoints = None

    def flood_endpoints(self, rate: float) -> list[tuple[FloodGroup, float]]:
        """The ends (address and port: a service's, or a peer's) that closes had at `rate` a
        second or more since the tally began, the busiest first, with their rate; the tally
        begins again. A flood's sockets share one end, the service they come to: each
        socket's other end is a port of its own."""
        seconds = time.monotonic() - self.tallied_since
        if self.endpoints is None or seconds < ISOLATE_TALLY:
            return []
        found = [(FloodGroup(netns, family, address, int.from_bytes(port, "big")), count / seconds)
                 for (netns, family, address, port), count in self.endpoints.most_common(ISOLATED_MAX * 2)
                 if count / seconds >= rate and port != b"\0\0"]
        self.endpoints, self.tallied_since = Counter(), time.monotonic()
        return found

    def take_departures(self) -> list[Closed]:
        departures, self.departures = self.departures, []
        return departures

    def take_skipped(self, listeners: dict[tuple, int]) -> list[SkippedCloses]:
        """The closes counted since the last call, a group to each peer, service port and
        owner; listeners: the pid of each listener known, by (netns, family, laddr)."""
        counted, self.counted = self.counted, {}
        taken = []
        for (netns, group, _, _, inbound), (count, data, start) in counted.items():
            conn = decode_socket(data, start, GROUP_SOCKETS[group][1], netns, closed=True)
            pid = None
            if conn.laddr and conn.raddr:
                # Accepted from a listener that lognet knows: its process, as `ss -p` shows it.
                pid = listeners.get((netns, conn.family, conn.laddr)) or listeners.get(
                    (netns, conn.family, any_address(conn.family, conn.laddr[1])))
            taken.append(SkippedCloses(conn._replace(pid=pid), count, "listener" if pid is not None else None, inbound))
        return taken

    def count_unheard(self, ns: Namespace, final: bool = False) -> None:
        """Count the closes of one namespace unheard since its last calm reading (see Namespace.settle())."""
        closes = ns.settle(final)
        if closes:
            self.unheard[ns.inode] = self.unheard.get(ns.inode, 0) + closes

    def take_unheard(self) -> dict[int, int]:
        unheard, self.unheard = self.unheard, {}
        return unheard


##############################################################################
# Sources: the Linux engine. Shedding, the engine's steps of the CPU budget
##############################################################################

# While TCP's close events are paused (the last step of shedding), they resume once the TCP
# opens (a close event each, later) would cost under SHED_RESUME of the budget to count, at
# the cost measured per event; the rate is read over PAUSE_WINDOW.
PAUSE_WINDOW = 1.0


class Shedding:
    """The Linux engine's side of the CPU budget: it takes the budget's level (SHED_STEPS)
    before each poll and look, and at the last step pauses TCP's close events in every
    namespace, until their rate would cost little to count. The closes never heard
    meanwhile are counted by the kernel's counters, at calm polls (settle())."""

    def __init__(self, budget: CpuBudget | None, clock: Callable[[], float]):
        self.budget = budget
        self.clock = clock
        self.pauses = 0  # how many times TCP's close events were paused
        self.opens_seen: deque[tuple[float, int]] = deque()  # while paused: (clock, TCP opens in those paused)
        self.timewait_hidden_until = 0.0  # new TIME_WAIT sockets are left out of dumps until then

    @property
    def level(self) -> int:
        """The level of shedding in force, as take_level() last decided it (see SHED_STEPS)."""
        return self.budget.shed if self.budget is not None else 0

    def take_level(self, pending: int, namespaces: Namespaces, event_cost: float) -> None:
        """Take the budget's level for what follows; pending: the lines the watcher's finds
        and the close events read will make, CPU spent already. At the last level, pause
        TCP's close events; while paused the flood goes on, and so does every step before it."""
        if self.budget is None:
            return
        paused = self.opens_seen
        level = self.budget.level(pending)
        now = self.clock()
        if level == SHED_PAUSE and not paused:
            self.budget.hold(SHED_PAUSE, floor=SHED_PAUSE)
            self.pauses += 1
            for ns in namespaces:
                ns.pause()
            paused.append((now, self._tcp_opens(namespaces)))
        elif paused:
            paused.append((now, self._tcp_opens(namespaces)))
            while len(paused) > 2 and paused[1][0] <= now - PAUSE_WINDOW:
                paused.popleft()
            (then, before), (_, opens) = paused[0], paused[-1]
            if now - then >= PAUSE_WINDOW and (opens - before) / (now - then) * event_cost < (
                    self.budget.share * SHED_RESUME):
                for ns in namespaces:
                    ns.resume()
                paused.clear()
                self.budget.hold(SHED_CLOSES)  # counted, not decoded, at first
        if self.level >= SHED_CLOSES or paused:
            # The TIME_WAIT sockets that closes made while shedding are never dumped: their
            # closes were counted, and a minute later (TCP's TIME_WAIT) they are gone.
            self.timewait_hidden_until = now + TIME_WAIT_SECONDS

    def resume(self, namespaces: Namespaces) -> None:
        """Join TCP's close events again wherever they were paused (the flood isolated): the
        closes unheard meanwhile are counted at the next calm poll, as ever."""
        if self.opens_seen:
            for ns in namespaces:
                ns.resume()
            self.opens_seen.clear()

    def hides_timewait(self) -> bool:
        """Whether a dump leaves out the TIME_WAIT sockets (those known before stay)."""
        return self.clock() < self.timewait_hidden_until

    @staticmethod
    def _tcp_opens(namespaces: Namespaces) -> int:
        return sum(ns.counters.tcp_counts()[0] for ns in namespaces if ns.paused)

    def settle(self, dumped: list[Namespace], namespaces: Namespaces, close_events: CloseEvents) -> None:
        """At a poll with no flood on: count the closes unheard in the namespaces whose
        events were paused, and read the calm of those the poll dumped (see Namespace)."""
        if self.budget is None or self.budget.flood:
            return  # no pause without a budget; under a flood, events are in flight
        for ns in {*dumped, *(ns for ns in namespaces if ns.settling)}:
            if ns.counters is not None:
                close_events.count_unheard(ns)

##############################################################################
# Sources: the Linux engine. Isolating a flood
##############################################################################

# Over the CPU budget under a flood, lognet first looks for what makes it: the ends that
# closes come to at a flood's rate (FloodGroup), almost always one service hammered or one
# peer. Up to ISOLATED_MAX of them at once are isolated: their close events, tracepoint
# samples and dump entries are left out in the kernel, and a counting socket for each of
# their two ends counts their closes exactly, for their summaries: the kernel's count of the
# events it could not queue (COUNTING_BUFFER holds one or two), and those it did. Every other
# connection keeps its full detail. A group whose closes fall under ISOLATE_END_RATE a second
# for ISOLATE_QUIET seconds is let go; its counts are read at each poll, and every
# ISOLATE_COUNT_EVERY seconds between.
ISOLATED_MAX = 4
ISOLATE_END_RATE = FLOOD_RATE / 4
ISOLATE_QUIET = 5.0
ISOLATE_COUNT_EVERY = 1.0
ISOLATE_TALLY = 0.05  # seconds of closes tallied, at least, to tell a flood's groups by
COUNTING_BUFFER = 1  # raised by the kernel to its least (SOCK_MIN_RCVBUF): a message or two


class FloodGroup(NamedTuple):
    """What a flood's sockets share: one end, in one namespace: the address and port of the
    service they come to (or of the peer); each socket's other end is a port of its own."""

    netns: int | None
    family: int
    address: bytes  # packed: 4 bytes for IPv4, 16 for IPv6
    port: int

    def addr(self) -> tuple[str, int]:
        """Its address and port as psutil writes an end: ('127.0.0.1', 18383)."""
        return (socket.inet_ntop(self.family, self.address), self.port)

    def endpoint(self) -> str:
        address = self.addr()[0]
        return f"[{address}]:{self.port}" if self.family == socket.AF_INET6 else f"{address}:{self.port}"

    def ends(self) -> list[tuple[int, bytes, int, bool]]:
        """Its sockets' ends, as dump_bytecode() and endpoint_program() take them: those whose
        local end it is (accepted), and those whose remote end it is (connected)."""
        return [(self.family, self.address, self.port, local) for local in (True, False)]

    def trace_clause(self) -> str | None:
        """What leaves its sockets' samples out of a tracepoint ring, in ftrace's syntax, where
        one can: a tracepoint's IPv4 address compares as a u32, an IPv6 one not at all; and a
        sample has no namespace, so the same end in another namespace is left out too."""
        if self.family != socket.AF_INET:
            return None
        address = struct.unpack("=I", self.address)[0]
        return f"!(saddr == {address} && sport == {self.port}) && !(daddr == {address} && dport == {self.port})"


class Isolated:
    """A group isolated: each end's counting socket (local: True), and what they counted."""

    def __init__(self, counters: dict[bool, SockDiag], owners: dict[bool, int | None], rate: float, now: float):
        self.counters = counters
        self.owners = owners  # the pid that held each end, as lognet knew it when isolating
        self.drops = dict.fromkeys(counters, 0)  # what each counter's kernel count said when last read
        self.counted = dict.fromkeys(counters, 0)  # closes counted and not yet taken
        self.rate = rate  # its closes a second, as last counted
        self.counted_at = now
        self.quiet_since: float | None = None


class Isolation:
    """The flood groups isolated now, in every namespace (see FloodGroup).

    A group's filters go on and off while the namespace's TCP close events are paused for
    a moment (Namespace.pause()), so that no close comes both to them and to the group's
    counters: one closed in that moment is counted by the kernel's counters, as any close
    while paused is (Namespace.settle())."""

    def __init__(self, base: bytes | None, clock: Callable[[], float]):
        self.base = base  # the close events' program of the filters (close_filter()), if any
        self.clock = clock
        self.groups: dict[FloodGroup, Isolated] = {}
        self.released: dict[FloodGroup, Isolated] = {}  # let go, their last counts not yet taken
        self.counted_at = clock()
        self.pauses = 0  # the moments a namespace's TCP close events were paused for a change of filters

    def trace_clause(self) -> str:
        """What leaves every isolated group's samples out of the tracepoint rings."""
        return joined_filter(*(group.trace_clause() for group in self.groups)) or ""

    def isolate(self, group: FloodGroup, ns: Namespace, rate: float, owners: dict[bool, int | None]) -> None:
        """Count one group's closes apart from now, and leave them out of the namespace's
        close events and dumps. Its events that the close events queued before are counted
        for it as they are read (IsolatedEnds). All that can be made beforehand is: the
        moment paused is a few system calls, and few closes are counted unheard in it."""
        counters = {}
        try:
            for end in group.ends():
                counter = counters[end[3]] = ns.inside(SockDiag)
                attach_filter(counter.sock, endpoint_program([end], False, self.base))
                counter.subscribe([], COUNTING_BUFFER)  # its group joined in the moment paused
            self.groups[group] = isolated = Isolated(counters, owners, rate, self.clock())
            program, dump_filters = self._filters(ns)
            paused = ns.paused
            ns.pause()
            self.pauses += not paused
            try:
                for counter in counters.values():
                    counter.membership([DESTROY_GROUPS[group.family, socket.IPPROTO_TCP]], True)
                attach_filter(ns.events[socket.IPPROTO_TCP].sock, program)
            finally:
                if not paused:
                    ns.resume()
        except OSError:
            for counter in counters.values():
                counter.close()
            self.groups.pop(group, None)
            raise
        ns.isolated_ends.ends.update((end, (isolated, end[3])) for end in group.ends())
        ns.dump_filters = dump_filters

    def release(self, group: FloodGroup, ns: Namespace | None) -> None:
        """Let a group go: its counters read for the last time and closed, then its closes
        come to the namespace's close events again."""
        isolated = self.released[group] = self.groups.pop(group)
        if ns is not None:
            program, dump_filters = self._filters(ns)
            for local in isolated.counters:
                self._read(ns, isolated, local)
        for counter in isolated.counters.values():
            counter.close()
        if ns is not None:
            # A close between the last read and the filter's change is heard by neither: the
            # kernel's counters count it, since no calm reading was taken while isolated.
            attach_filter(ns.events[socket.IPPROTO_TCP].sock, program)
            for end in group.ends():
                ns.isolated_ends.ends.pop(end, None)
            ns.dump_filters = dump_filters

    def _filters(self, ns: Namespace) -> tuple[bytes, dict[int, bytes]]:
        """The namespace's TCP close events' program and its dumps' bytecode (by family),
        without the groups isolated in it."""
        ends = [end for group in self.groups if group.netns == ns.inode for end in group.ends()]
        program = endpoint_program(ends, True, self.base) if ends else self.base or ACCEPT_ALL
        return program, {family: dump_bytecode(end for end in ends if end[0] == family)
                         for family in {end[0] for end in ends}}

    def _read(self, ns: Namespace, isolated: Isolated, local: bool) -> None:
        """Count what one counter has: the events it queued, then the kernel's count of those
        it could not queue (whole once the queue is read)."""
        counter = isolated.counters[local]
        counted = sum(1 for data, _ in counter.events() for kind, _, _ in netlink_messages(data)
                      if kind == SOCK_DIAG_BY_FAMILY)
        drops = ns.drops_of(counter)
        counted += drops - isolated.drops[local]
        isolated.drops[local] = drops
        isolated.counted[local] += counted
        ns.heard += counted  # heard, as Namespace.settle() counts the kernel's closes

    def count(self, namespaces: Namespaces) -> list[FloodGroup]:
        """Read every group's counters; return the groups quiet long enough to let go."""
        now, quiet = self.clock(), []
        for group, isolated in self.groups.items():
            ns = namespaces.by_inode.get(group.netns)
            if ns is None:  # its namespace is gone: let go at once
                quiet.append(group)
                continue
            before = sum(isolated.counted.values())
            for local in isolated.counters:
                self._read(ns, isolated, local)
            isolated.rate = (sum(isolated.counted.values()) - before) / max(now - isolated.counted_at, 1e-3)
            isolated.counted_at = now
            if isolated.rate >= ISOLATE_END_RATE:
                isolated.quiet_since = None
            elif isolated.quiet_since is None:
                isolated.quiet_since = now
            elif now - isolated.quiet_since >= ISOLATE_QUIET:
                quiet.append(group)
        self.counted_at = now
        return quiet

    def take(self) -> list[tuple[FloodGroup, bool, int, int | None]]:
        """The closes counted since the last call: (group, local end, count, its holder's pid)."""
        taken = []
        for group, isolated in [*self.groups.items(), *self.released.items()]:
            for local, count in isolated.counted.items():
                if count:
                    taken.append((group, local, count, isolated.owners[local]))
                isolated.counted[local] = 0
        self.released = {}
        return taken

    def close(self) -> None:
        for isolated in self.groups.values():
            for counter in isolated.counters.values():
                counter.close()


class IsolatedEnds:
    """A namespace's side of Isolation: the ends of its isolated groups, whose close events
    that still come (queued before their filter) are counted for them, not decoded."""

    def __init__(self):
        self.ends: dict[tuple, tuple[Isolated, bool]] = {}  # end -> its group's counts, and whether local

    def sift(self, chunks: list[tuple[bytes, int]]) -> tuple[list[tuple[bytes, int]], int]:
        """The close events (data, group mask) to decode or count as ever, and how many were
        an isolated group's, counted for it."""
        if not self.ends:
            return chunks, 0
        kept, counted, ends = [], 0, list(self.ends)
        for data, group in chunks:
            for _, start, end in netlink_messages(data):
                matched = end_of(data, start, ends)
                if matched is None:
                    kept.append((data[start - NLMSG_HEADER.size:end], group))
                    continue
                isolated, local = self.ends[matched]
                isolated.counted[local] += 1
                counted += 1
        return kept, counted


def end_of(data: bytes, start: int, ends: list[tuple[int, bytes, int, bool]]) -> tuple | None:
    """Which of these ends the socket of a close event has (as endpoint_program() judges it), if any."""
    if data[start + DIAG_DPORT:start + DIAG_SRC] == b"\0\0":
        return None  # a listener
    for end in ends:
        family, packed, port, local = end
        where, at = (DIAG_SPORT, DIAG_SRC) if local else (DIAG_DPORT, DIAG_DST)
        if (data[start] == family and data[start + where:start + where + 2] == port.to_bytes(2, "big")
                and data[start + at:start + at + len(packed)] == packed):
            return end
    return None


##############################################################################
# Sources: the Linux engine. Kernel events (tracepoints, through perf_event_open)
##############################################################################

# A tracepoint sample reaches lognet in the context of the process that did what it
# describes (a connect, a close): its pid is that process's. The ids and field offsets of
# the tracepoints are read from tracefs (TRACEFS/events/<group>/<event>/format), never
# written here; where tracefs is not mounted, a child process mounts it in a mount
# namespace of its own to read them, and the host's mounts stay as they were. KernelEvents
# reads them for the engine, which joins their owners to its dumps and close events.
TRACEFS = "/sys/kernel/tracing"
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 1 << 14, 1 << 18
PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}  # the syscall's number (asm/unistd_64.h), by machine
# struct perf_event_attr (linux/perf_event.h), its first members: type, size, config (the
# tracepoint's id), sample_period, sample_type, read_format, the flag bits, wakeup_events
# (or wakeup_watermark), bp_type, config1, config2, branch_sample_type, sample_regs_user,
# sample_stack_user, clockid; the rest zeros, to PERF_ATTR_SIZE.
PERF_ATTR = struct.Struct("=IIQQQQQIIQQQQIi")
PERF_ATTR_SIZE = 128
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_TID, PERF_SAMPLE_TIME, PERF_SAMPLE_RAW = 1 << 1, 1 << 2, 1 << 10
# Flag bits: made disabled (enabled once every CPU's event is open); a wake-up when the ring
# holds wakeup_watermark bytes rather than at each sample; sample times from clockid.
PERF_ATTR_DISABLED, PERF_ATTR_WATERMARK, PERF_ATTR_USE_CLOCKID = 1, 1 << 14, 1 << 25
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_DISABLE, PERF_EVENT_IOC_SET_FILTER = 0x2400, 0x2401, 0x40082406
# struct perf_event_mmap_page, the ring's first page: data_head, which the kernel moves, and
# data_tail, which the reader writes back; the records follow, from the second page, round a
# ring of a power of two pages.
RING_HEAD, RING_TAIL = 1024, 1032
HEAD_WORD, TAIL_WORD = RING_HEAD // 8, RING_TAIL // 8
RING_PAGES = 16
PERF_HEADER = struct.Struct("=IHH")  # struct perf_event_header: type, misc, size
PERF_RECORD_LOST, PERF_RECORD_SAMPLE = 2, 9
PERF_LOST = struct.Struct("=QQ")  # after the header: id, how many samples were lost
# A sample of PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_RAW, after its header: pid,
# tid, time, the size of the raw record; then the raw record (the tracepoint's fields).
SAMPLE_HEAD = struct.Struct("=IIQI")


class Tracepoint(NamedTuple):
    """A tracepoint's id, and where its fields are in a raw record, as its format file says."""

    name: str  # 'sock/inet_sock_set_state'
    id: int
    fields: dict[str, tuple[int, int]]  # field name -> (offset, size)

    def layout(self, names: tuple[str, ...]) -> struct.Struct:
        """A Struct that unpacks these fields of a raw record at once, in the order given
        (their offsets ascending): numbers of 1, 2, 4 or 8 bytes, and bytes for the rest (an
        address). Made once for each tracepoint and names: a sample is decoded in one call."""
        key = (self.id, names)
        try:
            return TRACEPOINT_LAYOUTS[key]
        except KeyError:
            form, at = "=", 0
            for name in names:
                offset, size = self.fields[name]
                form += "x" * (offset - at) + (NUMBER_FORMATS.get(size, f"{size}s")
                                                if name not in ADDRESS_FIELDS else f"{size}s")
                at = offset + size
            layout = TRACEPOINT_LAYOUTS[key] = struct.Struct(form)
            return layout


NUMBER_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}
ADDRESS_FIELDS = frozenset(("saddr", "daddr", "saddr_v6", "daddr_v6"))
TRACEPOINT_LAYOUTS: dict[tuple, struct.Struct] = {}


def parse_tracepoint_format(name: str, text: str) -> Tracepoint:
    """A Tracepoint from the text of its tracefs format file:
    'ID: 2287' and '\\tfield:const void * skaddr;\\toffset:8;\\tsize:8;\\tsigned:0;' ->
    Tracepoint(name, 2287, {'skaddr': (8, 8), ...}). ValueError for text that is no format."""
    tracepoint_id, fields = None, {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("ID:"):
            tracepoint_id = int(line[3:])
        elif line.startswith("field:"):
            parts = dict(part.strip().split(":", 1) for part in line.split(";") if ":" in part)
            fields[parts["field"].split()[-1].split("[")[0]] = (int(parts["offset"]), int(parts["size"]))
    if tracepoint_id is None or not fields:
        raise ValueError(f"{name}: not a tracepoint's format")
    return Tracepoint(name, tracepoint_id, fields)


def tracepoints(names: Iterable[str], tracefs: str = TRACEFS) -> dict[str, Tracepoint]:
    """Each tracepoint ('group/event') as tracefs describes it. OSError where it cannot be
    read: not root (mounting tracefs needs CAP_SYS_ADMIN), or no such tracepoint."""
    paths = {name: f"events/{name}/format" for name in names}
    texts = read_tracefs(list(paths.values()), tracefs)
    return {name: parse_tracepoint_format(name, texts[path]) for name, path in paths.items()}


def read_tracefs(paths: list[str], tracefs: str = TRACEFS) -> dict[str, str]:
    """The text of these files of tracefs: read in place where it is mounted, else by a child
    that mounts it in a mount namespace of its own (made private first, so that nothing it
    mounts reaches the host's) and sends them back through a pipe."""
    if os.path.isdir(f"{tracefs}/events"):
        texts = {}
        for path in paths:
            with open(f"{tracefs}/{path}") as f:
                texts[path] = f.read()
        return texts
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    readable, writable = os.pipe()
    child = os.fork()
    if child == 0:  # the child: mount, read, send, and exit without returning to the caller
        status = 1
        try:
            os.close(readable)
            for call in (lambda: libc.unshare(CLONE_NEWNS),
                         lambda: libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None),
                         lambda: libc.mount(b"tracefs", tracefs.encode(), b"tracefs", ctypes.c_ulong(0), None)):
                if call() != 0:
                    reply = {"errno": ctypes.get_errno()}
                    break
            else:
                reply = {"texts": read_tracefs(paths, tracefs)}
        except OSError as exc:
            reply = {"errno": exc.errno or errno.EIO}
        try:
            data = json.dumps(reply).encode()
            while data:
                data = data[os.write(writable, data):]
            status = 0
        finally:
            os._exit(status)
    os.close(writable)
    with os.fdopen(readable, "rb") as pipe:
        data = pipe.read()
    os.waitpid(child, 0)
    reply = json.loads(data or b'{"errno": 5}')
    if "errno" in reply:
        raise OSError(reply["errno"], f"tracefs: {os.strerror(reply['errno'])}")
    return reply["texts"]


class TracepointRing:
    """One tracepoint opened on every CPU (perf_event_open), each CPU's samples in a ring that
    lognet maps and reads in place; a filter in ftrace's syntax drops in the kernel what no
    line needs. The samples the kernel could not fit are counted (PERF_RECORD_LOST)."""

    def __init__(self, tracepoint: Tracepoint, event_filter: str | None = None, pages: int = RING_PAGES,
                 wakes: bool = True):
        import ctypes
        self.tracepoint = tracepoint
        self.size = pages * mmap.PAGESIZE
        self.fds: list[int] = []
        self.rings: list[mmap.mmap] = []
        # each ring's first page as 64-bit words: data_head and data_tail read and written in place
        self.words: list[memoryview] = []
        self.lost = 0
        number = PERF_EVENT_OPEN.get(os.uname().machine)
        if number is None:
            raise OSError(errno.ENOSYS, f"perf_event_open's number on {os.uname().machine} is not known")
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        sample_type = PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_RAW
        # One sample per event (sample_period 1); times on CLOCK_MONOTONIC, lognet's clock.
        flags = PERF_ATTR_DISABLED | PERF_ATTR_USE_CLOCKID | (0 if wakes else PERF_ATTR_WATERMARK)
        attr = ctypes.create_string_buffer(PERF_ATTR.pack(
            PERF_TYPE_TRACEPOINT, PERF_ATTR_SIZE, tracepoint.id, 1, sample_type, 0, flags,
            1 if wakes else self.size // 2, 0, 0, 0, 0, 0, 0, time.CLOCK_MONOTONIC,
        ).ljust(PERF_ATTR_SIZE, b"\0"), PERF_ATTR_SIZE)
        try:
            for cpu in online_cpus():
                fd = libc.syscall(number, attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
                if fd < 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"perf_event_open {tracepoint.name}: {os.strerror(error)}")
                self.fds.append(fd)
                self.rings.append(mmap.mmap(fd, mmap.PAGESIZE + self.size))
                self.words.append(memoryview(self.rings[-1])[:mmap.PAGESIZE].cast("Q"))
                if event_filter and libc.ioctl(fd, ctypes.c_ulong(PERF_EVENT_IOC_SET_FILTER),
                                               ctypes.c_char_p(event_filter.encode())) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"{tracepoint.name}: filter {event_filter!r}: {os.strerror(error)}")
            self._ioctl = lambda fd, request: libc.ioctl(fd, ctypes.c_ulong(request), 0)
            self.enable(True)
        except OSError:
            self.close()
            raise

    def enable(self, on: bool) -> None:
        """Start the events on every CPU, or stop them in the kernel (nothing is sampled)."""
        for fd in self.fds:
            self._ioctl(fd, PERF_EVENT_IOC_ENABLE if on else PERF_EVENT_IOC_DISABLE)

    def samples(self) -> list[tuple[int, int, bytes]]:
        """The samples that have come on every CPU, in the order of their time: (time, pid,
        the tracepoint's raw record)."""
        found = [sample for chunk in self._take() for sample in self._parse(chunk)]
        found.sort(key=lambda sample: sample[0])
        return found

    def records(self, layout: struct.Struct) -> list[tuple]:
        """The samples that have come on every CPU, decoded: (pid, time, then the fields that
        layout (Tracepoint.layout()) unpacks from the raw record), in no set order. A ring's
        records are mostly samples of one size: those are read by stride, in one call."""
        found = []
        for chunk in self._take():
            by_stride = records_by_stride(chunk, layout)
            found += by_stride if by_stride is not None else [
                (pid, time_ns, *layout.unpack_from(raw)) for time_ns, pid, raw in self._parse(chunk)]
        return found

    def _take(self) -> list[bytes]:
        """Each CPU's records between data_tail and data_head, copied out across the wrap;
        then data_tail moved to data_head, once, which frees them for the kernel."""
        chunks = []
        for ring, words in zip(self.rings, self.words):
            head, tail = words[HEAD_WORD], words[TAIL_WORD]
            if head == tail:
                continue
            start, length, data = mmap.PAGESIZE + tail % self.size, head - tail, mmap.PAGESIZE + self.size
            chunks.append(ring[start:start + length] if start + length <= data else (
                ring[start:data] + ring[mmap.PAGESIZE:mmap.PAGESIZE + length - (data - start)]))
            words[TAIL_WORD] = head
        return chunks

    def _parse(self, chunk: bytes) -> list[tuple[int, int, bytes]]:
        """The samples of a chunk of records, (time, pid, raw record); those lost are counted."""
        samples, offset = [], 0
        while offset + PERF_HEADER.size <= len(chunk):
            kind, _, size = PERF_HEADER.unpack_from(chunk, offset)
            if size < PERF_HEADER.size:
                break  # never written so by the kernel: nothing after it can be trusted
            if kind == PERF_RECORD_SAMPLE:
                pid, _, time_ns, raw = SAMPLE_HEAD.unpack_from(chunk, offset + PERF_HEADER.size)
                at = offset + PERF_HEADER.size + SAMPLE_HEAD.size
                samples.append((time_ns, pid, chunk[at:at + raw]))
            elif kind == PERF_RECORD_LOST:
                self.lost += PERF_LOST.unpack_from(chunk, offset + PERF_HEADER.size)[1]
            offset += size
        return samples

    def close(self) -> None:
        for words in self.words:
            words.release()  # before its ring closes: an exported buffer keeps a map open
        for ring in self.rings:
            ring.close()
        for fd in self.fds:
            os.close(fd)
        self.rings, self.words, self.fds = [], [], []


def records_by_stride(chunk: bytes, layout: struct.Struct) -> list[tuple] | None:
    """TracepointRing.records() of a chunk whose records are all samples of one size,
    unpacked by one Struct in one call; None for any other chunk."""
    if len(chunk) < PERF_HEADER.size:
        return None
    size = PERF_HEADER.unpack_from(chunk)[2]
    raw = size - PERF_HEADER.size - SAMPLE_HEAD.size
    if raw < layout.size or size % 8 or len(chunk) % size:
        return None
    words, step, count = memoryview(chunk).cast("I"), size // 4, len(chunk) // size
    # each record's type; its misc and size; its raw record's size
    if (words[0::step].tolist().count(PERF_RECORD_SAMPLE) != count
            or words[1::step].tolist().count(words[1]) != count or words[6::step].tolist().count(raw) != count):
        return None
    key = (size, layout.format)
    record = SAMPLE_RECORDS.get(key) or SAMPLE_RECORDS.setdefault(key, struct.Struct(
        f"=8xI4xQ4x{layout.format.lstrip('=')}{raw - layout.size}x"))
    return list(record.iter_unpack(chunk))


# (a sample's size, the layout of its raw record) -> a Struct of the whole sample: its pid,
# its time, then the layout's fields, past the rest
SAMPLE_RECORDS: dict[tuple[int, str], struct.Struct] = {}


def online_cpus(path: str = "/sys/devices/system/cpu/online") -> list[int]:
    """The CPUs online, from the kernel's list ('0-3,8'): an event is opened on each."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus += range(int(first), int(last or first) + 1)
    return cpus


class SockState(NamedTuple):
    """One sample of sock:inet_sock_set_state: a TCP socket (by its address in the kernel)
    that moved from one state to another, in the context of the pid that moved it, where a
    process did (a connect, a listen, a close); from a softirq, the pid means nothing."""

    time: int  # the kernel's clock, ns
    pid: int
    skaddr: int
    oldstate: int
    newstate: int
    family: int
    laddr: tuple  # (ip, port), or () while the socket has none (at SYN_SENT the port is still 0)
    raddr: tuple


# Both families' addresses are in every record: one unpack reads it all.
SOCK_STATE_FIELDS = ("skaddr", "oldstate", "newstate", "sport", "dport", "family", "saddr", "daddr", "saddr_v6",
                     "daddr_v6")


def sock_state(pid: int, time_ns: int, skaddr: int, oldstate: int, newstate: int, sport: int, dport: int,
               family: int, local: bytes, remote: bytes, local6: bytes, remote6: bytes) -> SockState:
    """A SockState from a sample's pid and time and its SOCK_STATE_FIELDS (TracepointRing.records())."""
    if family == socket.AF_INET6:
        local, remote = local6, remote6
    laddr, raddr = decode_address(family, local, sport), decode_address(family, remote, dport)
    return SockState(time_ns, pid, skaddr, oldstate, newstate, family, laddr, raddr)


def decode_sock_state(tracepoint: Tracepoint, time_ns: int, pid: int, raw: bytes) -> SockState:
    """A SockState from a raw record of sock:inet_sock_set_state, by its format's offsets."""
    return sock_state(pid, time_ns, *tracepoint.layout(SOCK_STATE_FIELDS).unpack_from(raw))


class Route(NamedTuple):
    """One sample of fib:fib_table_lookup (or fib6:fib6_table_lookup) for UDP: a datagram's
    route, looked up as its process sends it, in that process's context: who sends from
    which local port (chosen by then)."""

    time: int  # the kernel's clock, ns
    pid: int
    lport: int


def route(pid: int, time_ns: int, sport: int) -> Route:
    """A Route from a sample of fib:fib_table_lookup or fib6:fib6_table_lookup (its ROUTE_FIELDS)."""
    return Route(time_ns, pid, sport)


ROUTE_FIELDS = ("sport",)


# The TCP state changes lognet reads, in the kernel's filter syntax: a connect (CLOSE ->
# SYN_SENT, in the connecting thread: its pid); the change after it, which has the port chosen
# since (in a softirq: its pid means nothing); an accepted socket's first (SYN_RECV ->
# ESTABLISHED: when it opened); and a holder's own close (ESTABLISHED -> FIN_WAIT1, CLOSE_WAIT
# -> LAST_ACK, in the holder's context), which names who held an accepted socket. These wait
# in their ring; a connect also rings a doorbell (DOORBELL), which wakes the watcher at once.
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_SYN_RECV, TCP_FIN_WAIT1, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_LAST_ACK = (
    1, 2, 3, 4, 7, 8, 9)
SOCK_STATE_TRACEPOINT = "sock/inet_sock_set_state"
DESTROY_TRACEPOINT = "tcp/tcp_destroy_sock"  # its cookie, which joins the kernel's close
TCP_TRACEPOINTS = frozenset((SOCK_STATE_TRACEPOINT, DESTROY_TRACEPOINT))
CONNECT_FILTER = f"protocol == 6 && oldstate == {TCP_CLOSE} && newstate == {TCP_SYN_SENT}"
STATE_FILTER = (f"protocol == 6 && ((oldstate == {TCP_CLOSE} && newstate == {TCP_SYN_SENT}) || "
                f"oldstate == {TCP_SYN_SENT} || (oldstate == {TCP_SYN_RECV} && newstate == "
                f"{TCP_ESTABLISHED}) || (oldstate == {TCP_ESTABLISHED} && newstate == {TCP_FIN_WAIT1}) || "
                f"(oldstate == {TCP_CLOSE_WAIT} && newstate == {TCP_LAST_ACK}))")
# A UDP datagram's route as it is sent: output lookups only (their iif is loopback's index,
# 1), not the input lookups of each datagram a host forwards.
ROUTE_TRACEPOINTS = {socket.AF_INET: "fib/fib_table_lookup", socket.AF_INET6: "fib6/fib6_table_lookup"}
ROUTE_FILTER = "proto == 17 && iif == 1"
KERNEL_OWNERS_KEPT = 16_384
UDP_SENDERS_KEPT = 4  # of each port: a DNS answer finds the one that sent before it came
# The doorbells: the connects and datagrams again, in rings that wake the watcher at each
# sample, so that a process of a few milliseconds has its details read while it lives. A
# thread that rings DOORBELL_RINGS times within a second lives long enough to be read at the
# looks' pace: its rings are filtered out in the kernel (common_pid is the thread's id) for
# DOORBELL_QUIET seconds, DOORBELL_MUTED threads at most, and its events still reach the rings
# that record them. A busy client costs no wake-up for each connect.
DOORBELL_RINGS = 3
DOORBELL_QUIET = 5.0
DOORBELL_MUTED = 16


class Owner(NamedTuple):
    """What the kernel's events said of one socket's holder."""

    pid: int | None  # None for an accepted socket until its holder closes it
    opened: int | None  # the kernel's clock, ns: its connect, its accept, or a UDP socket's first datagram
    direction: str | None  # 'out' (a connect, a datagram sent) or 'in' (accepted)
    addresses: tuple = ()  # a TCP socket's (laddr, raddr) once a state change had them


class Destroyed(NamedTuple):
    """One sample of tcp:tcp_destroy_sock: the socket at skaddr is gone, and this was its cookie."""

    time: int
    skaddr: int
    cookie: int


def destroyed(pid: int, time_ns: int, skaddr: int, cookie: int) -> Destroyed:
    """A Destroyed from a sample of tcp:tcp_destroy_sock (its DESTROYED_FIELDS)."""
    return Destroyed(time_ns, skaddr, cookie)


DESTROYED_FIELDS = ("skaddr", "sock_cookie")


class KernelOwners:
    """Who holds each socket, as the kernel's events say, learned in the kernel's order.

    TCP: the pid that connected, or for an accepted socket the pid that closed it, by the
    socket's address in the kernel (skaddr) while it lives; by its addresses from the change
    that has them (for the dumps), and by its cookie once destroyed (for its close, whose
    addresses a reset may have cleared). UDP: the latest processes to send from each local
    port. The KERNEL_OWNERS_KEPT latest of each are kept; a close takes its socket's (take())."""

    def __init__(self, kept: int = KERNEL_OWNERS_KEPT):
        self.kept = kept
        self.sockets: OrderedDict[int, Owner] = OrderedDict()  # skaddr -> owner, while the socket lives
        self.tcp: OrderedDict[tuple, Owner] = OrderedDict()  # (family, laddr, raddr) -> its owner
        self.destroyed: OrderedDict[int, Owner] = OrderedDict()  # cookie -> its owner, once destroyed
        # local port -> its UDP_SENDERS_KEPT latest senders, (time of each one's first datagram,
        # pid): the latest holds the port now; an answer that came before the port's next
        # socket sent is the one before's
        self.senders: OrderedDict[int, tuple[tuple[int, int], ...]] = OrderedDict()

    def learn(self, event: SockState | Route | Destroyed) -> int | None:
        """Take one event; return the pid it names, if any: one whose details are worth reading now."""
        kind, kept = type(event), self.kept
        if kind is Destroyed:  # the kernel may give skaddr's memory to another socket now
            owner = self.sockets.pop(event.skaddr, None)
            if owner is not None and owner.pid is not None:
                put_latest(self.destroyed, event.cookie, owner, kept)
            return None
        if kind is Route:
            senders = self.senders.get(event.lport, ())
            if not senders or senders[-1][1] != event.pid:
                senders = (*senders[1 - UDP_SENDERS_KEPT:], (event.time, event.pid))
            put_latest(self.senders, event.lport, senders, kept)
            return event.pid
        time_ns, pid, skaddr, oldstate, newstate, family, laddr, raddr = event
        known, named = self.sockets.get(skaddr), None
        if oldstate == TCP_CLOSE and newstate == TCP_SYN_SENT:
            known, named = Owner(pid, time_ns, "out"), pid
        elif oldstate == TCP_SYN_RECV and newstate == TCP_ESTABLISHED:
            known = Owner(None, time_ns, "in", (laddr, raddr) if laddr else ())
            laddr = None  # no holder named yet: nothing to keep by its addresses
        elif oldstate != TCP_SYN_SENT and pid and (known is None or known.pid is None):
            # A holder's close; who connected stays the owner: a child may close what its parent opened.
            known = Owner(pid, known and known.opened, known and known.direction)
            named = pid
        if known is None:
            return named
        if laddr:
            known = Owner(known.pid, known.opened, known.direction, (laddr, raddr))
            if known.pid is not None:
                put_latest(self.tcp, (family, laddr, raddr), known, kept)
        put_latest(self.sockets, skaddr, known, kept)
        return named

    def connector(self, family: int, raddr: tuple) -> int | None:
        """The process that made the most of the connections to raddr that are remembered."""
        pids = Counter(owner.pid for (kind, _, remote), owner in self.tcp.items() if remote == raddr and kind == family)
        return pids.most_common(1)[0][0] if pids else None

    def owner(self, conn: Connection) -> Owner | None:
        """What the kernel named of a live socket with conn's addresses, if it did."""
        if conn.type == socket.SOCK_STREAM:
            return self.tcp.get((conn.family, conn.laddr, conn.raddr))
        return udp_owner(self.senders.get(conn.laddr[1]) if conn.laddr else None)

    def take(self, conn: Connection) -> Owner | None:
        """The same for a socket the kernel closed, by its cookie, forgotten: the next one at
        its addresses is another."""
        if conn.type == socket.SOCK_STREAM:
            by_address = self.tcp.pop((conn.family, conn.laddr, conn.raddr), None)
            return self.destroyed.pop(conn.cookie, None) or by_address
        return udp_owner(self.senders.pop(conn.laddr[1], None) if conn.laddr else None)


def udp_owner(senders: tuple[tuple[int, int], ...] | None) -> Owner | None:
    """The owner of a UDP port, its latest sender, from its senders (KernelOwners.senders)."""
    if not senders:
        return None
    first, pid = senders[-1]
    return Owner(pid, first, "out")


def joined_filter(*clauses: str | None) -> str | None:
    """Filters in ftrace's syntax that a sample must all pass."""
    return " && ".join(clause for clause in clauses if clause) or None


class KernelEvents:
    """The kernel's tracepoints that name who holds each socket, in every namespace, read
    through perf_event_open: TCP's state changes (sock:inet_sock_set_state) and UDP's routes
    (fib:fib_table_lookup, fib6:fib6_table_lookup), filtered in the kernel to what lognet
    reads, in rings that wait for the watcher's looks (a wait ends when one is half full);
    and the doorbells (see DOORBELL_RINGS), whose samples only name processes to read now.

    Needs root, or what README's privilege table says; OSError where refused."""

    def __init__(self, pairs: list[tuple[int, int]], now: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic, askers: bool = False):
        protocols, families = {protocol for _, protocol in pairs}, {family for family, _ in pairs}
        # UDP's senders are recorded where UDP is logged, and for names (askers), whatever is
        # logged: a DNS question's sender is the process that asked, over IPv4 or IPv6.
        routes = (families if socket.IPPROTO_UDP in protocols else set()) | (
            {socket.AF_INET, socket.AF_INET6} if askers else set())
        wanted = []  # (tracepoint, filter, the fields read, what makes an event of them): the rings that record
        bells = []  # (tracepoint, filter): the doorbells
        if socket.IPPROTO_TCP in protocols:
            wanted += [(SOCK_STATE_TRACEPOINT, STATE_FILTER, SOCK_STATE_FIELDS, sock_state),
                       (DESTROY_TRACEPOINT, None, DESTROYED_FIELDS, destroyed)]
            bells.append((SOCK_STATE_TRACEPOINT, CONNECT_FILTER))
        wanted += [(ROUTE_TRACEPOINTS[family], ROUTE_FILTER, ROUTE_FIELDS, route) for family in sorted(routes)]
        if socket.IPPROTO_UDP in protocols:
            bells += [(ROUTE_TRACEPOINTS[family], ROUTE_FILTER) for family in sorted(families)]
        found = tracepoints({name for name, *_ in wanted})
        self.rings: list[tuple[TracepointRing, struct.Struct, Callable]] = []  # with its fields' layout, its maker
        self.filters: list[str | None] = []  # each ring's filter, as it began
        self.excluded = ""  # what exclude() leaves out of every ring, in ftrace's syntax
        self.carried: list = []  # events read from rings since closed, not yet learned
        self.lost_before = 0  # samples lost by rings since closed
        self.doorbells: list[tuple[TracepointRing, str]] = []  # with the filter they began with
        try:
            for name, event_filter, fields, make in wanted:
                self.rings.append((TracepointRing(found[name], event_filter, wakes=False),
                                   found[name].layout(fields), make))
                self.filters.append(event_filter)
            for name, event_filter in bells:
                self.doorbells.append((TracepointRing(found[name], event_filter), event_filter))
        except OSError:
            self.close()
            raise
        self.all_fds = self._fds()
        self.owners = KernelOwners()
        self.epoch = now() - time.monotonic()  # the kernel's clock (CLOCK_MONOTONIC) to epoch seconds
        self.clock = clock
        self.paused = False
        self.rang: Counter[int] = Counter()  # thread id -> its rings since window_start
        self.window_start = clock()
        self.muted: dict[int, float] = {}  # thread id -> until when its rings are filtered out

    def fds(self) -> list[int]:
        """The fds whose input ends a wait: the doorbells' at each sample, the rings' once
        half full, before they overflow."""
        return [] if self.paused else self.all_fds

    def _fds(self) -> list[int]:
        return [fd for ring, *_ in self.rings + self.doorbells for fd in ring.fds]

    @property
    def lost(self) -> int:
        """Samples the kernel could not fit in a ring (PERF_RECORD_LOST): owners not named."""
        return self.lost_before + sum(ring.lost for ring, *_ in self.rings)

    def pause(self, paused: bool) -> None:
        """Stop the events in the kernel, under a flood (nothing is sampled), or start them again."""
        if paused != self.paused:
            self.paused = paused
            for ring, *_ in self.rings + self.doorbells:
                ring.enable(not paused)

    def take(self) -> set[int]:
        """Read every sample that has come, in the kernel's order; return the pids they named."""
        named = set()
        for ring, _ in self.doorbells:
            for _, pid, raw in ring.samples():
                named.add(pid)
                self.rang[ring.tracepoint.layout(("common_pid",)).unpack_from(raw)[0]] += 1
        if self.rang or self.muted:
            self._mute_busy()
        events = [make(*record) for ring, layout, make in self.rings for record in ring.records(layout)]
        if self.carried:  # read from rings closed since (exclude())
            events, self.carried = self.carried + events, []
        events.sort(key=operator.itemgetter(0))  # each event's time
        named.update(self.owners.learn(event) for event in events)
        named.discard(None)
        return named

    def _mute_busy(self) -> None:
        """Filter out of the doorbells the threads that rang DOORBELL_RINGS times this second."""
        now = self.clock()
        muted = {tid: until for tid, until in self.muted.items() if until > now}
        for tid, rings in self.rang.most_common(DOORBELL_MUTED):
            if rings >= DOORBELL_RINGS and tid not in muted and len(muted) < DOORBELL_MUTED:
                muted[tid] = now + DOORBELL_QUIET
        if now - self.window_start >= 1.0:
            self.rang.clear()
            self.window_start = now
        changed, self.muted = muted.keys() != self.muted.keys(), muted
        if changed:
            self._open_doorbells()

    def _open_doorbells(self) -> None:
        """Open the doorbells again, without the muted threads and what is excluded: a perf
        event's filter is set once."""
        others = "".join(f" && common_pid != {tid}" for tid in sorted(self.muted))
        bells, self.doorbells = self.doorbells, []
        for ring, event_filter in bells:
            ring.close()
            self.doorbells.append((TracepointRing(ring.tracepoint, joined_filter(
                event_filter + others, self.excluded if ring.tracepoint.name in TCP_TRACEPOINTS else None)),
                event_filter))
            if self.paused:
                self.doorbells[-1][0].enable(False)
        self.all_fds = self._fds()

    def exclude(self, clause: str) -> None:
        """Leave out of every ring, in the kernel, the samples that clause (ftrace's syntax)
        leaves out: a flood's (see Isolation). Each ring is opened afresh with it before the
        old one is read and closed, so that no sample of another socket is missed between."""
        if clause == self.excluded:
            return
        self.excluded = clause
        old, self.rings = self.rings, []
        for (ring, layout, make), event_filter in zip(old, self.filters):
            tcp = ring.tracepoint.name in TCP_TRACEPOINTS  # a route's sample has no TCP ends
            self.rings.append((TracepointRing(ring.tracepoint, joined_filter(event_filter, clause if tcp else None),
                                              wakes=False), layout, make))
            if self.paused:
                self.rings[-1][0].enable(False)
        for ring, layout, make in old:
            self.carried += [make(*record) for record in ring.records(layout)]  # one in both is learned twice, alike
            self.lost_before += ring.lost
            ring.close()
        self._open_doorbells()

    def owner(self, conn: Connection) -> int | None:
        """The pid the kernel's events named for a live socket."""
        owner = self.owners.owner(conn)
        return owner.pid if owner is not None else None

    def sender(self, netns: int | None, port: int, before: float | None = None) -> int | None:
        """The process that last sent a UDP datagram from port in netns (before that time,
        epoch seconds, where given), as the events said: a port's socket may close and the
        next take its port within a poll. A route's sample has no namespace: a sender still
        alive in another is not this one."""
        senders = self.owners.senders.get(port, ())
        if before is not None:
            until = (before - time.time() + time.monotonic()) * 1e9  # the kernel's clock, now
            senders = [sender for sender in senders if sender[0] <= until]
        if not senders:
            return None
        pid = senders[-1][1]
        inode = netns_inode(pid)
        return pid if inode is None or netns is None or inode == netns else None

    def name(self, closed: Closed) -> Closed:
        """A close with what the kernel's events said of its socket: who held it, when it opened."""
        owner = self.owners.take(closed.conn)
        if owner is None:
            return closed
        conn = closed.conn
        if owner.pid is not None:
            conn = conn.named_by_kernel(owner.pid)
        if not conn.raddr and owner.addresses:  # a reset clears them before the kernel's close reports the socket
            conn = conn._replace(laddr=owner.addresses[0], raddr=owner.addresses[1])
        opened = None if owner.opened is None else owner.opened / 1e9 + self.epoch
        return Closed(conn, closed.time, closed.received, closed.acked_beyond, opened, owner.direction)

    def close(self) -> None:
        for ring, *_ in self.rings + self.doorbells:
            ring.close()
        self.rings, self.doorbells, self.all_fds = [], [], []


##############################################################################
# Sources: the Linux engine. The sockets, their holders, and the engine's front
##############################################################################

WATCH_SEARCH_PIDS = 64  # processes the watcher reads, beyond new and recent ones, before it leaves a socket to the poll


class SocketTable:
    """The sockets of each watched namespace, as the dumps found them, and who holds each.

    A poll (take()) dumps only the namespaces whose counters moved, decodes only the sockets
    not met before, and looks for the holders of new sockets only; the watcher's look
    (find_new()) adds those that opened since, with their holders, while they live."""

    def __init__(self, pairs: list[tuple[int, int]], fds: FdTable, names: Names | None,
                 keeps: Callable[[Connection], bool], now: Callable[[], float], budget: CpuBudget | None,
                 kernel_owner: Callable[[Connection], int | None] | None = None):
        self.pairs = pairs
        self.fds = fds
        self.names = names  # told who holds each UDP socket: the asker of the answers to its port
        # What the filters keep (build_filter()): the watcher looks for no holder of a socket
        # whose line they would drop (under a flood they filter out, most of its work), but
        # for one that asks DNS questions, whose owner names the answers.
        self.keeps = keeps
        self.now = now
        self.budget = budget
        # The pid the kernel's events named for a socket (KernelEvents.owner), if they are read.
        self.kernel_owner = kernel_owner
        # netns -> its sockets by socket_key() (Namespace.text_records()'s key where read as text)
        self.records: dict[int, dict[tuple, Connection]] = {}
        self.holders_of: dict[int, dict[tuple, list[Connection]]] = {}  # the same, once for each holder
        self.snapshot: list[Connection] = []  # what the last poll returned
        self.signatures: dict[int, tuple] = {}  # each namespace's counters when a poll last dumped it
        self.cookies_reported: set[int] | None = None  # what the tracker was given; None before the first poll
        self.decoded_keys: set[tuple] = set()  # the keys the watcher decoded since the last poll
        self.hidden_inodes: set[int] = set()  # searched for in vain: another user's, not ours to see
        self.unfound_inodes: set[int] = set()  # the last poll's scan did not find their holders
        self.arrivals: list[tuple[Connection, float]] = []  # what the watcher found since the last poll
        self._known: KnownSockets | None = None  # see known(); None when the sockets reported changed

    def take(self, namespaces: Namespaces, hide_timewait: bool) -> list[Namespace]:
        """Bring the table up to date for a poll; return the namespaces dumped. Where the
        kernel's counters did not move since the last dump, neither did any socket: only the
        namespaces whose counters moved are dumped. Holders are still reconciled."""
        signatures = {ns.inode: ns.counters.signature() for ns in namespaces}
        moved = [ns for ns in namespaces if signatures[ns.inode] != self.signatures.get(ns.inode)]
        redump = moved or self.signatures.keys() != signatures.keys()
        records = self._dump(moved, signatures, hide_timewait) if redump else self.records
        self.signatures = signatures
        for inode, table in self.records.items():
            now = records.get(inode, {})
            if now is not table:
                self.fds.forget(table[key].inode for key in table.keys() - now.keys() if table[key].inode)
        self.fds.scan()
        self.decoded_keys = set()
        if records is not self.records or self.fds.changed or self.unfound_inodes:
            self._match(records)
        return moved

    def _match(self, records: dict[int, dict[tuple, Connection]]) -> None:
        """Find the holders of the sockets new to the table, or whose holders changed. What
        the scan did not find is searched for at the next poll, if it still lives: most such
        sockets closed between the dump and the scan."""
        inodes = {r.inode for table in records.values() for r in table.values() if r.inode}
        self.hidden_inodes &= inodes
        unfound = inodes - self.fds.owners.keys() - self.hidden_inodes
        again = unfound & self.unfound_inodes
        self.fds.search(again, {r.uid for table in records.values() for r in table.values() if r.inode in again})
        given_up = again - self.fds.owners.keys()
        self.hidden_inodes |= given_up
        self.unfound_inodes = unfound - again
        changed, self.fds.changed = self.fds.changed, set()
        if records is self.records and not changed and not given_up:
            return  # nothing here can have changed: the same snapshot, which the tracker knows
        holders_of = {inode: self.holders_of.get(inode, {}) for inode in records}
        for inode, table in records.items():
            held = holders_of[inode]
            for key in held.keys() - table.keys():
                del held[key]
            for key, record in table.items():
                if key not in held or record.inode in changed or record.inode in given_up:
                    held[key] = self.holders(record, held.get(key))
        self.records, self.holders_of = records, holders_of
        self.cookies_reported = {record.cookie for table in records.values() for record in table.values()}
        self.snapshot = [conn for held in holders_of.values() for conns in held.values() for conn in conns]
        self._known = None

    def _dump(self, namespaces: list[Namespace], signatures: dict[int, tuple],
              hide_timewait: bool) -> dict[int, dict[tuple, Connection]]:
        """Every socket of the kinds asked for, by namespace: those of these namespaces dumped
        afresh (the kinds they hold, by their signatures), the others' as the last dump found
        them. The records of sockets met before are reused."""
        known = self.records
        records = {inode: known.get(inode, {}) for inode in signatures}
        states = ALL_STATES & ~TIME_WAIT_STATE if hide_timewait else ALL_STATES
        for ns in namespaces:
            before = known.get(ns.inode, {})
            # See Shedding: while TIME_WAIT is left out, those known before stay.
            table = records[ns.inode] = {key: r for key, r in before.items() if r.status == TIME_WAIT} \
                if hide_timewait else {}
            if ns.diag is None:
                table.update((key, before.get(key, record)) for key, record in ns.text_records(self.pairs).items())
            else:
                kinds = KernelCounters.kinds_in_use(signatures[ns.inode])
                for family, protocol in (pair for pair in self.pairs if pair in kinds):
                    for key, place in dump_messages(ns.dump(family, protocol, states)).items():
                        table[key] = before.get(key) or decode_socket(*place, protocol, ns.inode)
            if self.budget is not None:
                self.budget.count(len(table.keys() - before.keys()))  # sockets opened (or moved on) since
        return records

    def holders(self, record: Connection, before: list[Connection] | None = None) -> list[Connection]:
        """The record once per process that holds it, ownerless when none is known (as psutil
        lists it). A socket that had owners (before) loses them only when the kernel says it
        has no file, or once searched for in vain: one closed between the dump and the fd
        scan still had them when the dump saw it."""
        holders = self.fds.owners.get(record.inode, ()) if record.inode else ()
        if not holders and before and before[0].pid is not None and record.inode not in self.hidden_inodes:
            return before
        if not holders and record.inode and self.kernel_owner is not None:
            pid = self.kernel_owner(record)  # a socket with a file, whose fd no scan found yet
            if pid is not None:
                return [record._replace(pid=pid, by_kernel=True)]
        if holders and self.names is not None:
            self.names.note_holder(record, holders[0][0])
        return [record._replace(pid=pid, fd=fd) for pid, fd in holders] or [record]

    def find_new(self, namespaces: list[Namespace]) -> list[tuple[Connection, float]]:
        """The watcher's look: the sockets these namespaces hold now that the table has not
        met, with their holders and when they were seen, for the next poll (take_arrivals())."""
        new = {}
        for ns in namespaces:
            known = self.records.get(ns.inode, {})
            for family, protocol in self.pairs:
                messages = dump_messages(ns.dump(family, protocol, OWNED_STATES))
                for key in messages.keys() - known.keys() - self.decoded_keys:
                    record = decode_socket(*messages[key], protocol, ns.inode)
                    if record.inode and record.cookie not in self.cookies_reported and (
                            self.keeps(record) or self.names is not None and record.raddr[1:] == (DNS_PORT,)):
                        new[key] = record
                    else:
                        self.decoded_keys.add(key)
        if not new:
            return []
        seen = self.now()
        # The search is bounded: a socket whose holder is not found soon is looked for
        # again at the next look, and the poll's scan reads every process anyway.
        self.fds.search({r.inode for r in new.values()}, {r.uid for r in new.values()}, most=WATCH_SEARCH_PIDS)
        found = {key: record for key, record in new.items() if record.inode in self.fds.owners}
        arrivals = [(conn, seen) for record in found.values() for conn in self.holders(record)]
        self._known = None
        self.arrivals += arrivals
        self.decoded_keys.update(found)
        self.cookies_reported.update(record.cookie for record in found.values())
        return arrivals

    def take_arrivals(self) -> list[tuple[Connection, float]]:
        arrivals, self.arrivals = self.arrivals, []
        return arrivals

    def known(self) -> KnownSockets:
        """What counting close events needs to know of the sockets reported, made when it is
        first needed after they changed, never at a poll that counts nothing."""
        if self._known is None:
            conns = self.snapshot + [conn for conn, _ in self.arrivals]
            self._known = KnownSockets(
                {cookie_bytes(conn.cookie) for conn in conns if conn.cookie is not None},
                {(conn.netns, conn.family, conn.laddr): conn.pid for conn in conns
                 if conn.status == LISTEN and conn.pid is not None},
                {(r.netns, DIAG_PORTS.pack(r.laddr[1], 0)[:2]) for table in self.records.values()
                 for r in table.values() if r.status == LISTEN})
        return self._known


class NetlinkSource(Source):
    """The Linux engine: sock_diag dumps of every network namespace that has a process,
    owners from /proc/<pid>/fd for sockets not met before, the sockets the watcher finds
    between polls, and the kernel's close events.

    A front for its parts, each the one owner of its state: Namespaces, SocketTable,
    CloseEvents, Shedding and Names. The poll's thread and the watcher's come in through
    this front only, and each of its entries holds Source.lock: that one lock guards every part."""

    has_close_events = True
    watches = True

    def __init__(self, kind: str = "inet", clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, namespaces: bool = True, names: bool = False,
                 program: bytes | None = None, keeps: Callable[[Connection], bool] | None = None,
                 budget: CpuBudget | None = None, kernel_events: str = "off"):
        super().__init__(clock, budget)
        self.pairs = kind_sockets(kind)
        self.kernel_events: KernelEvents | None = None
        self.kernel_refusal = "turned off (--kernel-events off)"
        if kernel_events != "off":
            try:
                self.kernel_events = KernelEvents(self.pairs, now, askers=names)
            except OSError as exc:
                self.kernel_refusal = kernel_events_refusal(exc)
                if kernel_events == "on":
                    raise LognetError(f"kernel events are not available: {self.kernel_refusal}") from None
        events = self.kernel_events
        self.names = Names(now, events.sender if events else None) if names else None
        self.fds = FdTable()
        self.namespaces = Namespaces(self.pairs, namespaces, program, self.names)
        self.table = SocketTable(self.pairs, self.fds, self.names, keeps or (lambda conn: True), now, budget,
                                 events.owner if events else None)
        self.close_events = CloseEvents(self.names, now, budget)
        self.shedding = Shedding(budget, clock)
        self.isolation = Isolation(program, clock)
        self.dumped: list[Namespace] = []  # the namespaces the last poll dumped
        if not self.namespaces.own.events:
            warn(f"close events are not available ({self.namespaces.own.refusal}); closes are seen by polling only")
            self.has_close_events = False
        if kernel_events != "off" and events is None:  # said after the close events, as before
            warn(f"kernel events are not available ({self.kernel_refusal}); "
                 "the owners of short connections are found by polling only")

    @property
    def netns(self) -> int:
        """lognet's own network namespace."""
        return self.namespaces.own_inode

    @property
    def owners_visible(self) -> bool:
        """Whether the last scan read every process's fds (see Source.owners_visible)."""
        return not self.fds.denied

    @property
    def shed(self) -> int:
        return self.shedding.level

    @property
    def events_read(self) -> int:
        return self.close_events.read

    @property
    def pauses(self) -> int:
        return self.shedding.pauses + self.isolation.pauses

    def connections(self) -> list[Connection]:
        with self.lock:
            self._take_level()
            if self.namespaces.everywhere:
                self._let_go(self.namespaces.discover(self.fds.pids()))
            self.dumped = self.table.take(self.namespaces, self.shedding.hides_timewait())
            return self.table.snapshot

    @property
    def events_cover(self) -> bool:
        # With names, the watcher's dumps also find the sockets that ask DNS questions.
        return self.kernel_events is not None and not self.kernel_events.paused and self.names is None

    def owner_events(self) -> tuple[str, int]:
        if self.kernel_events is None:
            return f"off: {self.kernel_refusal}", 0
        return "paused" if self.kernel_events.paused else "on", self.kernel_events.lost

    def _take_level(self) -> None:
        # What the watcher found and the close events read is CPU spent already: the poll writes a line of each.
        self.shedding.take_level(len(self.close_events.departures) + len(self.table.arrivals), self.namespaces,
                                 self.close_events.cost)
        self.close_events.tally(self.budget is not None and self.budget.flood)
        if self.shed >= SHED_POLLS:
            self._isolate()
        if self.isolation.groups and self._clock() - self.isolation.counted_at >= ISOLATE_COUNT_EVERY:
            self._count_isolated()
        if self.kernel_events is not None:  # under a flood, the owners of short connections go first
            self.kernel_events.pause(self.shed >= SHED_WATCHER)

    def _isolate(self) -> None:
        """Over the budget under a flood: isolate the groups that make it, if any is new and
        there is room (see Isolation); then the host's detail is back, and the budget starts
        afresh without the flood."""
        isolated = self.isolation.groups
        found = [(group, rate) for group, rate in self.close_events.flood_endpoints(FLOOD_RATE)
                 if group not in isolated and group.netns in self.namespaces.by_inode
                 and socket.IPPROTO_TCP in self.namespaces[group.netns].events]
        found = found[:ISOLATED_MAX - len(isolated)]
        for group, rate in found:
            try:
                self.isolation.isolate(group, self.namespaces[group.netns], rate, self._holders(group))
            except OSError as exc:
                warn(f"a flood to {group.endpoint()} could not be isolated ({exc.strerror or exc}); "
                     "the CPU budget sheds for every connection")
                return
        if found:
            if self.kernel_events is not None:
                self.kernel_events.exclude(self.isolation.trace_clause())
            self.shedding.resume(self.namespaces)
            self.budget.restart()
            self.budget.hold(0)

    def _holders(self, group: FloodGroup) -> dict[bool, int | None]:
        """Who holds a group's ends, as far as lognet knows: its listener, and the process that connected to it."""
        endpoint = group.addr()
        listeners = self.table.known().listeners
        listener = listeners.get((group.netns, group.family, endpoint)) or listeners.get(
            (group.netns, group.family, any_address(group.family, group.port)))
        connector = self.kernel_events.owners.connector(group.family, endpoint) if self.kernel_events else None
        return {True: listener, False: connector}

    def _count_isolated(self) -> None:
        """Read the isolated groups' counts, and let go of those quiet for long enough."""
        quiet = self.isolation.count(self.namespaces)
        for group in quiet:
            self.isolation.release(group, self.namespaces.by_inode.get(group.netns))
        if quiet and self.kernel_events is not None:
            self.kernel_events.exclude(self.isolation.trace_clause())

    def take_isolated(self) -> list[tuple[FloodGroup, bool, int, int | None]]:
        with self.lock:
            if self.isolation.groups:
                self._count_isolated()
            return self.isolation.take()

    def isolating(self) -> list[tuple[FloodGroup, float, int | None]]:
        with self.lock:
            return [(group, isolated.rate, isolated.owners[True] or isolated.owners[False])
                    for group, isolated in self.isolation.groups.items()]

    def _take_kernel_events(self) -> int:
        """Learn what the kernel's events said since, and read the details of the processes
        they named while those live; return how many processes they named."""
        if self.kernel_events is None:
            return 0
        named = self.kernel_events.take()
        self.read_ahead(named)
        return len(named)

    def _let_go(self, gone: list[Namespace]) -> None:
        """Read out the namespaces no longer watched (their last closes and names), then close them."""
        for ns in gone:
            if ns.events:
                self._take_closes(ns)
            self.close_events.count_unheard(ns, final=True)
            if self.names is not None:
                self.names.learn_from(ns)  # the names its last connections' lines may need
        self.namespaces.release(gone)

    def between_polls(self) -> tuple[list[tuple[Connection, float]], list[Closed]]:
        with self.lock:
            self.read_events()  # the watcher's too, now: the poll's dump must not outrun them
            # After the closes: each close's state changes came before it, so they are in the rings now.
            self._take_kernel_events()
            if self.isolation.groups:  # what the counters counted is heard, before a calm reading
                self._count_isolated()
            self.shedding.settle(self.dumped, self.namespaces, self.close_events)  # with every event read
            if self.names is not None:
                self.names.learn(self.namespaces, drain=True)  # the poll's lines need every name that has come
            departures = self.close_events.take_departures()
            if self.kernel_events is not None:
                departures = [self.kernel_events.name(closed) for closed in departures]
            return self.table.take_arrivals(), departures

    def watch(self, heard: Iterable[int] | None = None, dumps: bool = True) -> Look:
        with self.lock:
            try:
                self._take_level()
                read = self.read_events(heard)
                if not dumps or self.table.cookies_reported is None or self.shed >= SHED_WATCHER or self.events_cover:
                    # Before the first poll everything would be new; under a flood, dumps go before
                    # details; with the kernel's events, no dump is needed to find an owner.
                    return Look(read > 0, 0.0, read)
                namespaces = self.namespaces.with_new_sockets()
                if not namespaces:
                    return Look(read > 0, 0.0, read)
                started = time.thread_time()
                arrivals = self.table.find_new(namespaces)
                self.read_ahead({conn.pid for conn, _ in arrivals})
                return Look(True, time.thread_time() - started, read)
            finally:
                # After the look's dump: the socket of a short-lived asker, or a new socket, first.
                self._take_kernel_events()
                if self.names is not None:  # after the dump, which may have found the sockets that asked
                    self.names.learn(self.namespaces, drain=False)

    def wakers(self) -> list[int]:
        return list(self.namespaces.readers)

    def urgent_fds(self) -> list[int]:
        return self.kernel_events.fds() if self.kernel_events is not None else []

    def take_owner_events(self) -> None:
        with self.lock:
            self._take_kernel_events()

    def read_events(self, heard: Iterable[int] | None = None) -> int:
        """Read the close events that have arrived, in every namespace, and count the DNS
        questions sent; return how many of both (what predicts more sockets).
        heard: the fds a wait on wakers() just found readable, when it waited on them all."""
        with self.lock:
            readers = self.namespaces.readers
            # With many namespaces, one select() finds those with events, rather than a
            # recv() that finds nothing in each, at every look.
            if heard is not None:
                ready = [fd for fd in heard if fd in readers]
            else:
                ready = readers.keys() if len(readers) < 2 else select.select(list(readers), [], [], 0)[0]
            asked = sum(self.namespaces.read_questions(readers[fd][0]) for fd in ready if readers[fd][1] == "questions")
            # a namespace's close events, of each protocol, are read once whichever of its sockets woke
            closing = dict.fromkeys(readers[fd][0] for fd in ready if readers[fd][1] == "events")
            return sum(self._take_closes(ns) for ns in closing) + asked

    def _take_closes(self, ns: Namespace) -> int:
        read = 0
        for _ in range(EVENTS_READ_ROUNDS):
            read += self.close_events.take_from(ns, self.table.known if self.shed >= SHED_CLOSES else None)
            if not any(events.more for events in ns.events.values()):
                break
            # A flood comes faster than it is read: the budget decides between batches (it
            # may isolate the flood, or pause the events), or the reading would never end.
            self._take_level()
        if read:
            self.namespaces.heard_closes(ns)
        return read

    def take_skipped(self) -> list[SkippedCloses]:
        with self.lock:
            return self.close_events.take_skipped(self.table.known().listeners)

    def take_unheard(self, final: bool = False) -> dict[int, int]:
        with self.lock:
            if final:  # what is in flight now is never heard
                if self.isolation.groups:
                    self._count_isolated()
                for ns in self.namespaces:
                    self.close_events.count_unheard(ns, final=True)
            return self.close_events.take_unheard()

    def lost_closes(self) -> dict[int, dict[str, int]]:
        with self.lock:
            return self.namespaces.lost_closes()

    def rhost(self, conn: Connection, pid: int | None) -> str | None:
        if self.names is None:
            return None
        with self.lock:
            return self.names.rhost(conn, pid)

    def close(self) -> None:
        self.isolation.close()
        self.namespaces.close()
        if self.kernel_events is not None:
            self.kernel_events.close()


def kernel_events_refusal(exc: OSError) -> str:
    """Why the kernel's events could not be opened, in a few words."""
    if exc.errno in (errno.EPERM, errno.EACCES):
        if os.path.ismount(TRACEFS):
            return "not permitted: they need root, or CAP_PERFMON and CAP_DAC_READ_SEARCH"
        return f"not permitted: they need root, or CAP_SYS_ADMIN to mount tracefs ({TRACEFS} is not mounted)"
    if exc.errno == errno.ENOENT:
        return "this kernel has not the tracepoints they read"
    return exc.strerror or str(exc)


##############################################################################
# Sources: the watcher between polls
##############################################################################

# The watcher's dumps take at most this share of one core, over time, with bursts up to
# WATCH_BURST CPU seconds: a flood of opens slows them, and never the polls.
WATCH_CPU_SHARE = 0.03
WATCH_BURST = 0.1
# After WATCH_QUIET_AFTER seconds with no socket opened or closed, the watcher looks every
# WATCH_QUIET seconds, since each wake-up costs CPU; a close event wakes it at once, and
# the first open or close seen brings back --watch.
WATCH_QUIET_AFTER = 1.0
WATCH_QUIET = 0.1
# While the kernel's events name the owners and sockets come and go, no look dumps: it reads
# the events, which wait in their rings and buffers (a ring half full wakes it), every
# WATCH_COVERED seconds: fewer looks, each reading more, cost less a socket (about 10% less
# at 500 connections a second than a look every WATCH_QUIET). While close events come at
# WATCH_BUSY_RATE a second or more, it looks every WATCH_QUIET, before their buffer fills.
WATCH_COVERED = 0.5
WATCH_BUSY_RATE = 10_000
# While quiet with the kernel's events naming the owners, whatever a look is for wakes it
# (a connect, a datagram, a close, a question, a ring half full), and each poll reads them
# too: it looks every WATCH_IDLE, since on a quiet host the wake-ups are most of its cost.
WATCH_IDLE = 10.0


class Watcher:
    """Calls source.watch() between polls, in a thread of its own, so that a slow log or
    syslog write never holds it up; and paces it. Its pacing is its own thread's alone:
    the poll's thread never reads it."""

    def __init__(self, source: Source, every: float, budget: CpuBudget | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.every = every
        self.budget = budget
        self.clock = clock
        self.allowance = WATCH_BURST  # CPU seconds the looks' dumps may spend now
        self.allowed_at = self.moved_at = clock()  # when the allowance was last topped up; when sockets last moved
        self.busy = False  # whether the last look read close events at WATCH_BUSY_RATE or more
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._run, name="lognet-watcher", daemon=True)
        self.failure: str | None = None

    def quiet(self) -> bool:
        """True after a spell with no socket opened or closed: the watcher may look less often."""
        return self.clock() - self.moved_at > WATCH_QUIET_AFTER

    def _shedding(self) -> bool:
        return self.budget is not None and self.budget.shed >= SHED_WATCHER

    def wakers(self) -> list[int]:
        """The fds whose input ends the wait for the next look early: while quiet, the close
        events' and the DNS questions'; and where the kernel's events name every owner, theirs
        of a connect or a datagram, for a look that reads them and the details of the process
        at once. Not the answers': a flood of them would wake it for each; nor while shedding,
        when events are read in batches."""
        if self._shedding():
            return []
        urgent = self.source.urgent_fds() if self.source.events_cover else []
        return (self.source.wakers() if self.quiet() else []) + urgent

    def next_look(self) -> float:
        """Seconds until the next look: every, or longer after a spell with no socket opened,
        or while the kernel's events name the owners (no dump is needed then), or while its
        share of CPU is spent (each wake-up costs CPU too)."""
        if self.quiet() and self.source.events_cover:
            return max(self.every, WATCH_IDLE)
        if self.quiet() or self._shedding():
            return max(self.every, WATCH_QUIET)  # shedding: the events are read in batches, cheaper each
        if self.source.events_cover:
            return max(self.every, WATCH_QUIET if self.busy else WATCH_COVERED)
        return max(self.every, -self.allowance / WATCH_CPU_SHARE)

    def look(self, heard: Iterable[int] | None = None) -> None:
        """One look: the source's watch(), with dumps while the share of CPU allows them.
        heard: the fds of wakers() that a wait just found readable, if it waited on them."""
        now = self.clock()
        self.allowance = min(WATCH_BURST, self.allowance + (now - self.allowed_at) * WATCH_CPU_SHARE)
        since, self.allowed_at = now - self.allowed_at, now
        look = self.source.watch(heard, dumps=self.allowance > 0)  # under a flood of opens, dumps wait
        self.busy = look.read >= WATCH_BUSY_RATE * since
        if look.moved:
            self.moved_at = now  # sockets are opening or closing: more are likely to soon
        self.allowance -= look.dump_seconds

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End the thread, once; a second call does nothing."""
        if self._stop_w is not None:
            os.write(self._stop_w, b"x")
            if self.thread.ident is not None:  # started
                self.thread.join(timeout=5)
            os.close(self._stop_w)
            self._stop_w = None

    def _run(self) -> None:
        due = self.clock()  # when the next look with dumps is due: the kernel's events bring others sooner
        while True:
            # After a failed look, only the clock wakes it: an fd left unread would wake it at once, forever.
            wakers = [] if self.failure else self.wakers()
            # Whether the wait covers every close-event and question socket: then what it
            # found readable is all that has input.
            readers = set(self.source.wakers())
            heard_all = bool(wakers) and readers <= set(wakers)
            try:
                ready = select.select([self._stop_r, *wakers], [], [], max(0.0, due - self.clock()))[0]
            except OSError:  # a namespace's socket closed by the poll while we waited on it
                ready, heard_all = [], False
            if self._stop_r in ready:
                os.close(self._stop_r)
                return
            try:
                if ready and self.clock() < due and readers.isdisjoint(ready):
                    # Woken by the kernel's events alone, before the next look: they are read,
                    # and the processes they name, at once; the looks keep their pace.
                    was_quiet = self.quiet()
                    self.source.take_owner_events()
                    self.moved_at = self.clock()
                    # Sockets move: a quiet watcher's next look comes soon, for the close
                    # events, which no longer wake it (and may be the start of a flood).
                    due = min(due, self.moved_at + (WATCH_QUIET if was_quiet else self.next_look()))
                    continue
                # Having waited on every close-event and question socket, it knows which have input.
                self.look(ready if heard_all else None)
                due = self.clock() + self.next_look()
            except Exception as exc:  # noqa: BLE001
                # Whatever failed, a look is lost, not the watcher: the next poll reconciles
                # what it missed. Said once for each kind of failure, never silently.
                if repr(exc) != self.failure:
                    self.failure = repr(exc)
                    warn(f"the watcher's look between polls failed: {exc!r}")


def logs_names(config: Config) -> bool:
    """Whether lines carry rhost: JSON Lines always does, W3C with +rhost."""
    return config.format == "jsonl" or "rhost" in config.fields


ENGINES: dict[str, Callable[[Config, CpuBudget | None], Source]] = {
    "netlink": lambda config, budget: NetlinkSource(
        config.kind, namespaces=config.netns == "all", names=logs_names(config), program=close_filter(config),
        keeps=build_filter(config), budget=budget, kernel_events=config.kernel_events),
    "psutil": lambda config, budget: PsutilSource(config.kind, names=logs_names(config), budget=budget),
}
def open_source(config: Config, budget: CpuBudget | None = None) -> Source:
    """The engine the configuration names, the one place an engine is made, with the CPU
    budget it sheds by. 'auto' is netlink on Linux, and psutil with one warning where
    netlink is refused or missing."""
    if config.engine != "auto":
        try:
            return ENGINES[config.engine](config, budget)
        except OSError as exc:
            raise LognetError(f"the {config.engine} engine is not available: {exc.strerror or exc}") from None
    if not sys.platform.startswith("linux"):
        warn(f"the netlink engine is not available (sock_diag is Linux's, this is {sys.platform}); using psutil")
        return ENGINES["psutil"](config, budget)
    try:
        return ENGINES["netlink"](config, budget)
    except OSError as exc:
        warn(f"the netlink engine is not available ({exc.strerror or exc}); using psutil, which polls only")
        return ENGINES["psutil"](config, budget)


##############################################################################
# Filters: pure predicates
##############################################################################

def ipv4_view(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """ip as an address, IPv4 when it is IPv4 written IPv4-mapped ('::ffff:10.1.2.3'); None for no address."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    return (address.ipv4_mapped or address) if address.version == 6 else address


@functools.lru_cache(maxsize=4096)
def is_private_address(ip: str) -> bool:
    """True for an RFC 1918 address, also when IPv4-mapped: '::ffff:10.1.2.3' -> True."""
    address = ipv4_view(ip)
    return address is not None and address.version == 4 and any(address in net for net in PRIVATE_NETWORKS)


@functools.lru_cache(maxsize=4096)
def is_loopback_address(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1, and IPv4 loopback written IPv4-mapped: '::ffff:127.0.0.1' -> True."""
    address = ipv4_view(ip)
    return address is not None and address.is_loopback


def has_remote_address(conn: Connection) -> bool:
    """True when the connection has a peer (not a listener or an unconnected UDP socket)."""
    return bool(conn.raddr)


def has_public_remote_address(conn: Connection) -> bool:
    """True unless the peer's address is in a private network."""
    return not (conn.raddr and is_private_address(conn.raddr[0]))


def has_remote_address_off_host(conn: Connection) -> bool:
    """True unless the peer's address is a loopback address."""
    return not (conn.raddr and is_loopback_address(conn.raddr[0]))


def build_filter(config: Config) -> Callable[[Connection], bool]:
    """Return one predicate that keeps a connection when every active filter keeps it."""
    predicates = []
    if config.omit_self_conns:
        predicates.append(has_remote_address)
    if config.omit_privnet_conns:
        predicates.append(has_public_remote_address)
    if config.omit_loopback_conns:
        predicates.append(has_remote_address_off_host)
    if len(predicates) < 2:  # each socket meets it: no loop for one filter or none
        return predicates[0] if predicates else lambda conn: True
    return lambda conn: all(keep(conn) for keep in predicates)


def close_filter(config: Config) -> bytes | None:
    """The filters that a close event's remote address can judge (--omit-self-conns,
    --omit-privnet-conns, --omit-loopback-conns), as a classic BPF program for the
    close-event sockets: what they leave out never reaches Python. It keeps what
    build_filter() keeps, and more only for messages too short to judge. None: no such filter.
    The offsets are a close event's (EVENT_FAMILY, EVENT_DPORT, EVENT_DST)."""
    if not (config.omit_self_conns or config.omit_privnet_conns or config.omit_loopback_conns):
        return None
    no_peer, private, loopback = ("drop" if omit else "keep" for omit in (
        config.omit_self_conns, config.omit_privnet_conns, config.omit_loopback_conns))
    return bpf_program([
        (BPF_LD_W_LEN, 0), (BPF_JGE_K, EVENT_DST + 16, None, "keep"),
        (BPF_LD_H_ABS, EVENT_DPORT), (BPF_JEQ_K, 0, no_peer, None),  # port 0: no remote address
        (BPF_LDX_IMM, 0),  # X: where the IPv4 address is, after EVENT_DST
        (BPF_LD_B_ABS, EVENT_FAMILY), (BPF_JEQ_K, socket.AF_INET, "ipv4", None),
        (BPF_JEQ_K, socket.AF_INET6, None, "keep"),
        (BPF_LD_W_ABS, EVENT_DST), (BPF_JEQ_K, 0, None, "keep"),
        (BPF_LD_W_ABS, EVENT_DST + 4), (BPF_JEQ_K, 0, None, "keep"),
        (BPF_LD_W_ABS, EVENT_DST + 8), (BPF_JEQ_K, 0xFFFF, "mapped", None), (BPF_JEQ_K, 0, None, "keep"),
        (BPF_LD_W_ABS, EVENT_DST + 12), (BPF_JEQ_K, 1, loopback, "keep"),  # ::1
        "mapped", (BPF_LDX_IMM, 12),  # ::ffff:a.b.c.d
        "ipv4",
        (BPF_LD_B_IND, EVENT_DST), (BPF_JEQ_K, 127, loopback, None), (BPF_JEQ_K, 10, private, None),
        (BPF_JEQ_K, 172, "172", None), (BPF_JEQ_K, 192, None, "keep"),
        (BPF_LD_B_IND, EVENT_DST + 1), (BPF_JEQ_K, 168, private, "keep"),
        "172", (BPF_LD_B_IND, EVENT_DST + 1), (BPF_AND_K, 0xF0), (BPF_JEQ_K, 16, private, "keep"),
        "keep", (BPF_RET_K, BPF_KEEP),
        "drop", (BPF_RET_K, 0),
    ])


##############################################################################
# Tracker: what opened, changed and closed since the last poll
##############################################################################

class Sighting:
    """What the tracker remembers of one live connection."""

    __slots__ = ("first_seen", "direction", "process", "orphaned", "record", "peer_fin", "closed", "vanished", "told",
                 "held_by")

    def __init__(self, first_seen: float, direction: str | None, record: Connection):
        self.first_seen = first_seen
        self.direction = direction
        self.process: ProcessInfo | None = None  # the owner, once looked up
        self.orphaned = False  # seen with an owner before, without one now (TIME_WAIT)
        self.record = record  # the latest record of it in a snapshot
        self.held_by = record.pid  # the pid of the latest record with an owner
        # Whether the peer's FIN came before the kernel closed the socket: True once seen in a
        # state it leads to; None while unknown.
        self.peer_fin = True if record.status in PEER_CLOSED_STATES else None
        self.closed: Closed | None = None  # the kernel's close of it, once reported
        self.vanished = 0.0  # when it left the snapshot, while its close waits for the kernel's word
        # Its close is told: the kernel closed the socket its owner held, and what the
        # snapshot still shows of it (TIME_WAIT, FIN_WAIT2) is the kernel's bookkeeping.
        self.told = False

    @property
    def key(self) -> tuple:
        return connection_id(self.record)


class Listeners:
    """The live listening sockets' addresses, by (netns, family, laddr), with how many
    sockets share each: what tells a connection served here (direction 'in')."""

    def __init__(self):
        self.sharing: dict[tuple, int] = {}  # (netns, family, laddr) -> how many listeners share it

    def count(self, conns: Iterable[Connection], step: int) -> None:
        """Count the listeners among conns in (step 1) or out (step -1)."""
        for conn in conns:
            if conn.status == LISTEN:
                address = (conn.netns, conn.family, conn.laddr)
                sharing = self.sharing.get(address, 0) + step
                if sharing:
                    self.sharing[address] = sharing
                else:
                    del self.sharing[address]

    def serve(self, netns: int | None, family: int, laddr: tuple) -> bool:
        """Whether a listener of this namespace has laddr, or its port on every address."""
        return (netns, family, laddr) in self.sharing or (netns, family, any_address(family, laddr[1])) in self.sharing


class Payloads:
    """The payload each TCP socket the kernel closed had sent, over the last two updates: a
    connection's two ends may close an update apart."""

    def __init__(self):
        self.sent: dict[tuple, int] = {}  # (netns, laddr, raddr) -> payload sent
        self._before: dict[tuple, int] = {}  # those of the last update's closes alone

    def note(self, departures: list[Closed]) -> None:
        sent = {(c.conn.netns, c.conn.laddr, c.conn.raddr): c.conn.txbytes for c in departures
                if c.conn.txbytes is not None and c.conn.raddr}
        self.sent, self._before = {**self._before, **sent}, sent

    def peer_sent(self, conn: Connection) -> int | None:
        """The payload the other end of conn sent, where that end is on this host and has closed."""
        return self.sent.get((conn.netns, conn.raddr, conn.laddr)) if conn.raddr else None

    def received(self, conn: Connection, closed: Closed, peer_fin: bool | None, direction: str | None) -> int | None:
        """The payload a closed TCP socket received. When the other end is on this host too,
        that is exactly what it sent; else tcp_info's bytes_received, less the peer's FIN
        when it came before the close."""
        peer = self.peer_sent(conn)
        if peer is not None or closed.received is None:
            return peer
        if peer_fin is None:
            peer_fin = received_fin(closed, direction)
        return closed.received - 1 if peer_fin and closed.received > 0 else closed.received


PEER_CLOSED_STATES = frozenset(("CLOSE_WAIT", "LAST_ACK", "CLOSING"))
ENDED_STATES = frozenset(("TIME_WAIT", "FIN_WAIT2"))  # what an active close leaves behind, ownerless


class Tracker:
    """Remembers the live connections and reports what opened, changed and closed.

    The whole snapshot is diffed as a set of records, in C; only the connections
    that differ are looked at one by one. Closed connections are forgotten, so
    memory follows the live set, never the history.
    """

    def __init__(self, awaits_kernel_closes: bool = False, owners_visible: Callable[[], bool] = lambda: False,
                 timewait_lines: bool = True):
        # The kernel reports a close a moment after the socket leaves its tables, so with
        # close events a connection gone from a snapshot waits one update for its event.
        self.awaits_kernel_closes = awaits_kernel_closes
        # With close events, the TIME_WAIT (or FIN_WAIT2) socket an active close leaves is
        # the same connection, told closed already: with timewait_lines its status change is
        # reported (the original's lines), else it adds nothing. One never seen alive adds
        # nothing either way: its close is its one line.
        self.timewait_lines = timewait_lines
        self.closed_lately: dict[int, tuple[Sighting, int]] = {}  # cookie -> a sighting told closed, at which update
        # When lognet may read every process's fds, a socket without an owner has none: an
        # orphan. Otherwise its owner may be hidden from lognet, unless the kernel says the
        # socket has no file. The source tells, as it learns (Source.owners_visible).
        self.owners_visible = owners_visible
        self.all_owners_visible = False  # what owners_visible() said at the last update
        self.waiting: list[Sighting] = []
        self.live: frozenset[Connection] = frozenset()
        self.sightings: dict[tuple, Sighting] = {}  # by connection_id
        self.cookies: dict[int, list[Sighting]] = {}  # the kernel's socket cookie -> its sightings (one per holder)
        self.listeners = Listeners()
        self.payloads = Payloads()
        self.updates = 0
        self.snapshot: Iterable[Connection] | None = None  # the list the last update diffed, as given
        self.previous_time = 0.0  # when the latest snapshot was taken
        self.last_sighting = 0.0  # when the one before it was: a connection closed now was last seen then

    def update(self, connections: Iterable[Connection], now: float = 0.0,
               arrivals: Iterable[tuple[Connection, float]] = (), departures: Iterable[Closed] = ()
               ) -> list[ConnectionEvent]:
        """Return what opened, changed status or closed since the previous update.

        arrivals are connections seen alive between two snapshots, with when; departures
        are the kernel's closes. An event's process is the owner remembered so far (None
        for a new connection); the poller fills in the owners it looks up, through
        remember_owner()."""
        self.updates += 1
        self.all_owners_visible = self.owners_visible()
        self.last_sighting, self.previous_time = self.previous_time, now
        for cookie, (_, told_at) in list(self.closed_lately.items()):
            if told_at < self.updates - 2:  # its TIME_WAIT would have shown in the dump after its close
                del self.closed_lately[cookie]
        arrivals = list(arrivals)
        events = self._admit(arrivals)
        departures = list(departures)
        self.payloads.note(departures)
        closing, unseen = self._note_closes(departures)
        if connections is self.snapshot and not (events or departures or self.waiting):
            return []  # the very list of the last update (an engine's way to say nothing changed)
        self.snapshot = connections
        # A socket found after the snapshot began (at now) may be missing from it, yet it is
        # not gone: had it closed, the kernel's close would be among the departures.
        current = frozenset(connections)
        late = [conn for conn, seen in arrivals if seen >= now]
        if late:  # unless the snapshot shows the socket (its cookie) in another state since
            cookies = {conn.cookie for conn in current}
            current = current.union(conn for conn in late if conn.cookie not in cookies)
            self.snapshot = None  # the live set is more than this list: the next one is diffed, whatever it is
        differ = current ^ self.live  # one pass that compares each record once; what differs is few
        self.live = current
        added = [conn for conn in differ if conn in current]
        waited, self.waiting = self.waiting, []
        if differ:
            gone = {connection_id(conn): conn for conn in differ if conn not in current}
            # What a record may continue, by the socket's cookie and by its TCP addresses.
            by_socket = {key: conn for conn in gone.values() for key in (
                [conn.cookie] if conn.cookie is not None else []) + ([connection_address(conn)] if conn.raddr else [])}
            self.listeners.count(added, +1)  # before directions: a listener seen in this poll counts
            events += [e for e in (self._arrive(conn, gone, by_socket, now) for conn in added) if e is not None]
            self.listeners.count(gone.values(), -1)
            for key in gone:
                sighting = self.sightings.pop(key)
                if sighting.told:
                    continue  # the kernel's bookkeeping of a connection told closed: nothing more to say
                if sighting.closed is None and self.awaits_kernel_closes and sighting.record.cookie is not None:
                    sighting.vanished = now
                    self.waiting.append(sighting)
                else:
                    events.append(self._leave(sighting, now))
        events += [self._leave(sighting, sighting.vanished) for sighting in waited]
        if closing or unseen:
            ended = {connection_address(c): c.status for c in added if c.pid is None and c.status in ENDED_STATES}
            closed_now = [s for s in closing if self._closed_now(s)]
            if closed_now and self.waiting:
                # The other end on this host, gone from the dump, closes with the kernel's next
                # word: its payload sent is what this end received. Both close then.
                ends = {(s.record.netns, s.record.laddr, s.record.raddr) for s in self.waiting if s.record.raddr}
                held = [s for s in closed_now if (s.record.netns, s.record.raddr, s.record.laddr) in ends
                        and self.payloads.peer_sent(s.record) is None]
                if held:
                    self.waiting += held
                    closed_now = [s for s in closed_now if s not in held]
            events += [self._leave(s, s.closed.time) for s in closed_now]
            events += [self._unseen(closed, ended) for closed in unseen]
        return events

    def release(self) -> list[ConnectionEvent]:
        """The closes still waiting for the kernel's word, at exit: they closed all the same."""
        waited, self.waiting = self.waiting, []
        return [self._leave(sighting, sighting.vanished) for sighting in waited]

    def owner(self, conn: Connection) -> ProcessInfo | None:
        """The owner remembered for a live connection."""
        sighting = self.sightings.get(connection_id(conn))
        return sighting.process if sighting is not None else None

    def remember_owner(self, conn: Connection, process: ProcessInfo) -> ProcessInfo:
        """Keep the owner of a connection, for its later lines, while it lives; return it."""
        sighting = self.sightings.get(connection_id(conn))
        if sighting is not None:
            sighting.process = process
        return process

    def _admit(self, arrivals: Iterable[tuple[Connection, float]]) -> list[ConnectionEvent]:
        """Opens for the connections found between snapshots, at the time each was seen; the
        snapshot's diff then finds them alive or gone like any other."""
        new = {conn: seen for conn, seen in arrivals if conn not in self.live}
        if not new:
            return []
        self.live = self.live.union(new)
        self.listeners.count(new, +1)
        return [self._event("open", conn, self._start(conn, seen), seen, seen) for conn, seen in new.items()]

    def _note_closes(self, departures: Iterable[Closed]) -> tuple[list[Sighting], list[Closed]]:
        """Give each kernel close to the sightings of its socket; return those sightings, and
        the closes of sockets never seen alive."""
        closing, unseen = [], []
        for closed in departures:
            sightings = self.cookies.get(closed.conn.cookie)
            if not sightings:
                unseen.append(closed)
            for sighting in sightings or ():
                sighting.closed = closed
                closing.append(sighting)
        return closing, unseen

    def _closed_now(self, sighting: Sighting) -> bool:
        """True for a socket the kernel closed that the snapshot still showed: it is closed now.
        The snapshot showed it alive (the close came after the dump), or as the TIME_WAIT
        socket its owner's close left, which stays in the live set, told closed."""
        record = sighting.record
        if self.sightings.get(sighting.key) is not sighting or record.cookie != sighting.closed.conn.cookie:
            return False
        if is_left_behind(record):  # TIME_WAIT keeps the cookie
            sighting.told = True
            return True
        self.closed_lately[record.cookie] = (sighting, self.updates)  # its TIME_WAIT may show at the next dump
        del self.sightings[sighting.key]
        self.live = self.live - {sighting.record}
        self.listeners.count([sighting.record], -1)
        return True

    def _arrive(self, conn: Connection, gone: dict[tuple, Connection], by_socket: dict, now: float) -> ConnectionEvent:
        """An open; or a state change when conn continues a record gone from the snapshot: the
        same id in another status, or the same socket (by its cookie, a listener's too) or the
        same TCP addresses, with an owner that the kernel let go of (TIME_WAIT) or that was
        found a poll late."""
        old = gone.pop(connection_id(conn), None)
        if old is None:
            old = by_socket.get(conn.cookie) or by_socket.get(connection_address(conn))
            # The same socket with an owner found or lost, or with the fd of the owner the kernel named.
            owner_moved = old is not None and (
                (old.pid is None) != (conn.pid is None) or old.by_kernel != conn.by_kernel)
            if not owner_moved or gone.pop(connection_id(old), None) is None:
                old = None
            else:
                self.sightings[connection_id(old)].orphaned = conn.pid is None
        if old is None and self.awaits_kernel_closes and self.updates > 1 and is_left_behind(conn):
            return self._left_behind(conn, now)
        if old is None:
            return self._event("open", conn, self._start(conn, now), now, now)
        sighting = self.sightings.pop(connection_id(old))
        sighting.record = conn
        if conn.pid is not None:
            sighting.held_by = conn.pid
        if conn.status in PEER_CLOSED_STATES:
            sighting.peer_fin = True
        elif sighting.peer_fin is None and conn.pid is None and conn.status in ENDED_STATES:
            sighting.peer_fin = ended_after_peer_fin(conn.status)
        self.sightings[connection_id(conn)] = sighting
        if sighting.told or (not self.timewait_lines and self.awaits_kernel_closes and is_left_behind(conn)):
            return None  # the socket an owner's close left: its close line is the connection's last
        if old.pid == conn.pid and old.status == conn.status:
            return None  # the owner the kernel named, now found by its fd: nothing changed to tell
        return self._event("state", conn, sighting, now, now)

    def _left_behind(self, conn: Connection, now: float) -> ConnectionEvent | None:
        """The TIME_WAIT socket of a connection the kernel told closed before any dump showed
        it in that state: with timewait_lines, the status change of the connection told
        closed lately; otherwise, and for one never seen alive, no line. It stays in the
        live set, told, so that it never opens as a connection of its own."""
        earlier, _ = self.closed_lately.pop(conn.cookie, (None, 0))
        sighting = Sighting(now, self.direction(conn), conn)
        sighting.told = True
        if earlier is not None:
            sighting.first_seen, sighting.direction, sighting.process, sighting.held_by = (
                earlier.first_seen, earlier.direction, earlier.process, earlier.held_by)
            sighting.orphaned = earlier.held_by is not None
        self.sightings[connection_id(conn)] = sighting
        if earlier is None or not self.timewait_lines:
            return None
        return self._event("state", conn, sighting, now, now)

    def _start(self, conn: Connection, first_seen: float) -> Sighting:
        sighting = self.sightings[connection_id(conn)] = Sighting(first_seen, self.direction(conn), conn)
        if conn.cookie is not None:
            self.cookies.setdefault(conn.cookie, []).append(sighting)
        return sighting

    def _leave(self, sighting: Sighting, now: float) -> ConnectionEvent:
        """The close of a connection that has left the live set: gone from the snapshot, or
        closed by the kernel, which then says when, and with how many bytes."""
        others = self.cookies.pop(sighting.record.cookie, [])
        if len(others) > 1:  # the same socket, held by other processes too
            self.cookies[sighting.record.cookie] = [s for s in others if s is not sighting]
        conn, closed = sighting.record, sighting.closed
        if closed is None:
            return self._event("close", conn, sighting, max(self.last_sighting, sighting.first_seen), now)
        if sighting.told and conn.pid is None:
            conn = conn._replace(pid=sighting.held_by)  # its owner held it until this close: say whose it was
        elif conn.pid is None and closed.conn.by_kernel:
            conn = conn._replace(pid=closed.conn.pid, by_kernel=True)  # no fd showed it; the kernel named it
        conn = conn._replace(txbytes=closed.conn.txbytes,
                             rxbytes=self.payloads.received(conn, closed, sighting.peer_fin, sighting.direction))
        return self._event("close", conn, sighting, max(closed.time, sighting.first_seen), closed.time,
                           kernel_close=True)

    def _unseen(self, closed: Closed, ended: dict[tuple, str]) -> ConnectionEvent:
        """The close of a socket lognet never saw alive: its addresses, bytes and time; its
        owner, and when it opened, where the kernel's events named them."""
        conn = closed.conn
        direction = closed.direction or (
            "in" if conn.laddr and self.listeners.serve(conn.netns, conn.family, conn.laddr) else None)
        left = ended.get(connection_address(conn)) if ended else None
        peer_fin = None if left is None else ended_after_peer_fin(left)
        conn = conn.with_rxbytes(self.payloads.received(conn, closed, peer_fin, direction))
        opened = closed.time if closed.opened is None else min(closed.opened, closed.time)
        return ConnectionEvent("close", conn, None, opened, closed.time, direction,
                               "kernel" if conn.by_kernel else "unseen", closed.time, True, alive_seen=False)

    def _event(self, event: str, conn: Connection, sighting: Sighting, seen: float, time: float,
               kernel_close: bool = False) -> ConnectionEvent:
        if conn.pid is not None:
            process, attrib = sighting.process, "kernel" if conn.by_kernel else "pid"
        else:
            process = sighting.process if sighting.orphaned else None
            orphan = sighting.orphaned or conn.status == TIME_WAIT or has_no_file(conn) or self.all_owners_visible
            attrib = "orphan" if orphan else "hidden"
        return ConnectionEvent(event, conn, process, sighting.first_seen, seen, sighting.direction, attrib, time,
                               kernel_close)

    def direction(self, conn: Connection) -> str | None:
        """'listen', 'in' (to a local listener), 'out' (this host connected), or None when unknown."""
        if conn.status == LISTEN:
            return "listen"
        if not conn.raddr:
            return None  # an unconnected UDP socket
        if self.listeners.serve(conn.netns, conn.family, conn.laddr):
            return "in"
        if conn.type == socket.SOCK_DGRAM or conn.status == SYN_SENT or self.updates > 1:
            return "out"
        return None  # already established when lognet started, and no listener known: either way


def ended_after_peer_fin(status: str) -> bool:
    """What the ownerless socket an active close leaves says of the peer's FIN: FIN_WAIT2
    means it had not come when the kernel closed the socket; TIME_WAIT that it came, most
    likely before (a peer that closes at once acks our FIN with its own)."""
    return status == TIME_WAIT


def received_fin(closed: Closed, direction: str | None) -> bool:
    """Whether the peer's FIN came before the kernel closed a socket that left nothing
    behind: a passive close, which ends when our FIN is acked. bytes_acked counts it beyond
    the payload, after our SYN when we connected; a reset acks no FIN, and ends without
    the peer's."""
    if closed.acked_beyond is None:
        return False
    syn = 1 if direction == "out" or closed.acked_beyond >= 2 else 0
    return closed.acked_beyond - syn >= 1


def is_left_behind(conn: Connection) -> bool:
    """A socket an active close left in the kernel's tables (TIME_WAIT, FIN_WAIT2): no file, no owner."""
    return conn.status in ENDED_STATES and conn.pid is None and has_no_file(conn)


def has_no_file(conn: Connection) -> bool:
    """The kernel reported this socket with no file (inode 0): no process holds it. (psutil
    reports no inode at all, and no cookie.)"""
    return conn.cookie is not None and conn.inode is None


def connection_order(conn: Connection) -> tuple:
    """Owner, then address: the order of a poll's lines of one time."""
    return (conn.pid is not None, conn.pid or 0, conn.laddr, conn.raddr, conn.fd)


##############################################################################
# Formatters: pure functions from records to lines
##############################################################################

CLOSES_UNLOGGED = ("skipped", "unheard", "lost")  # the kernel's closes without a line, named when there are any


class Format(Protocol):
    """What a log format writes, each line from a record. One instance serves one log, with
    that log's fields; FORMATS lists the formats, and --format takes its choices there."""

    name: str
    first_byte: bytes  # what a log of this format starts with: how the format of a log found is told
    host_netns: int | None  # lognet's own netns, where lines carry theirs

    def timestamp(self, epoch: float) -> str:
        """The time as this format writes it."""

    def header(self, epoch: float) -> list[str]:
        """The lines that open a log (or a log reopened)."""

    def connection(self, event: ConnectionEvent) -> str:
        """One connection line."""

    def process(self, process: ProcessInfo, timestamp: str) -> str:
        """One processes.log line."""

    def remark(self, text: str, epoch: float) -> str:
        """A line that says something of lognet itself."""

    def stats(self, stats: Stats, epoch: float) -> str:
        """The coverage and health line."""

    def summary(self, summary: Summary, process: ProcessInfo | None, epoch: float) -> str:
        """A line for a group of closes that have no line of their own."""


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
    "txbytes": lambda e: e.conn.txbytes,
    "rxbytes": lambda e: e.conn.rxbytes,
    "netns": lambda e: e.conn.netns,
    "container": _owner("container"),
    "rhost": lambda e: e.rhost,
}


SOCKET_COLUMNS = ("prot", "laddr", "lport", "raddr", "rport", "status")


def socket_columns(conn: Connection) -> tuple[str, ...]:
    """A W3C line's SOCKET_COLUMNS, as format_field() writes them: a protocol's name and a
    port need no escape; a host's few addresses and the statuses are escaped once each."""
    laddr, raddr, escaped = conn.laddr, conn.raddr, ESCAPED_TEXTS.get
    return (PROTOCOLS.get(conn.type, "-"),
            *(((escaped(laddr[0]) or escape_text(laddr[0])), str(laddr[1])) if laddr else ("-", "-")),
            *(((escaped(raddr[0]) or escape_text(raddr[0])), str(raddr[1])) if raddr else ("-", "-")),
            escaped(conn.status) or escape_text(conn.status))


def escape_text(text: str) -> str:
    """escape_field() of an address or a status, kept in ESCAPED_TEXTS."""
    if len(ESCAPED_TEXTS) >= ESCAPED_TEXTS_KEPT:
        ESCAPED_TEXTS.clear()
    escaped = ESCAPED_TEXTS[text] = escape_field(text)
    return escaped


ESCAPED_TEXTS: dict[str, str] = {}
ESCAPED_TEXTS_KEPT = 4096


UPIDS_KEPT = 4096  # the processes whose upid a W3C log keeps formatted


class W3CFormat:
    """The original's format: directive headers, space-separated fields, '-' for missing.

    One instance serves one log: it writes that log's fields (connections.log's
    chosen fields, or processes.log's three)."""

    name = "w3c"
    first_byte = b"#"

    def __init__(self, fields: tuple[str, ...] = CONNECTION_FIELDS, utc: bool = False,
                 interval: float = DEFAULT_INTERVAL, host_netns: int | None = None):
        self.fields = fields
        self.utc = utc
        self.decimals = duration_decimals(interval)
        self.host_netns = host_netns if "netns" in fields else None
        self._second, self._second_text = None, ""
        self._upids: dict[int, tuple[ProcessInfo, str]] = {}  # pid -> (its process, its upid)

    @functools.cached_property
    def _columns(self) -> list[Callable[[ConnectionEvent], str]]:
        """What writes each field of a connection line: its escaped value, but for these. A
        run of the socket's own fields (SOCKET_COLUMNS) is written in one step: a line's
        cost is mostly its calls."""
        utc, decimals = self.utc, self.decimals
        special = {
            "timestamp": lambda e: self.timestamp(e.time),
            "upid": self._upid,
            "firstseen": lambda e: format_timestamp(e.first_seen, utc),
            "duration": lambda e: "-" if e.duration is None else f"{e.duration:.{decimals}f}",
        }
        columns, run = [], []
        for field in (*self.fields, None):
            if field in SOCKET_COLUMNS:
                run.append(SOCKET_COLUMNS.index(field))
                continue
            if run == list(range(len(SOCKET_COLUMNS))):  # the original's six, in its order
                columns.append(lambda e: " ".join(socket_columns(e.conn)))
            elif run:
                columns.append(lambda e, run=tuple(run): " ".join([socket_columns(e.conn)[i] for i in run]))
            run = []
            if field is not None:
                columns.append(special.get(field) or (lambda e, value=EVENT_VALUES[field]: format_field(value(e))))
        return columns

    def _upid(self, event: ConnectionEvent) -> str:
        """format_upid() of the event's process, once for each process met (a process's many lines)."""
        process = event.process
        if process is None:
            return "-"
        known = self._upids.get(process.pid)
        if known is None or known[0] is not process:  # the same pid may be another process by now
            if len(self._upids) >= UPIDS_KEPT:
                self._upids.clear()
            known = self._upids[process.pid] = (process, format_upid(process))
        return known[1]

    def timestamp(self, epoch: float) -> str:
        if int(epoch) != self._second:  # a poll's lines mostly share their second: format it once
            self._second, self._second_text = int(epoch), format_timestamp(epoch, self.utc)
        return self._second_text

    def header(self, epoch: float) -> list[str]:
        return format_header(self.fields, epoch, self.utc) + host_remark(self, epoch)

    def connection(self, event: ConnectionEvent) -> str:
        return " ".join([column(event) for column in self._columns])

    def process(self, process: ProcessInfo, timestamp: str) -> str:
        return format_process(process, timestamp)

    def remark(self, text: str, epoch: float) -> str:
        return f"#Remark: {text}"

    def stats(self, stats: Stats, epoch: float) -> str:
        if stats.closes is not None:  # the kernel's closes, per protocol
            text = self._coverage(stats.closes) or "- (closed 0)"
            text += "".join(f"; netns {netns}: {self._coverage(c)}" for netns, c in stats.closes_by_netns.items())
            text += f"; over the CPU budget {stats.shed_spells} times" if stats.shed_spells else ""
            text += f"; close events paused {stats.pauses} times" if stats.pauses else ""
            text += f"; shedding: {', '.join(stats.isolated)}" if stats.isolated else ""
        else:
            # from the counts, not the ratio rounded for JSON: rounded twice, 8/42 would read 0.191
            ratio = f"{stats.tcp_seen / stats.tcp_opens:.3f}" if stats.tcp_opens else "-"
            opens = "-" if stats.tcp_opens is None else stats.tcp_opens
            text = f"{ratio} (kernel TCP opens {opens}, seen {stats.tcp_seen})"
        health = (f"polls {stats.polls}; average poll {stats.avg_poll_ms:.1f} ms; late lines {stats.late}; "
                  f"dropped lines {stats.dropped}")
        if stats.owner_events is not None:
            state, lost = stats.owner_events
            health += f"; owners from kernel events {state}" + (f" (samples lost {lost})" if lost else "")
        return self.remark(f"coverage {text}; {health}", epoch)

    @staticmethod
    def _coverage(closes: dict[str, CloseCounts]) -> str:
        return "; ".join(f"{protocol} {c.with_process / max(1, c.closed):.3f} (closed {c.closed}, "
                         f"with process {c.with_process}, without {c.without}"
                         + "".join(f", {name} {getattr(c, name)}" for name in CLOSES_UNLOGGED if getattr(c, name))
                         + ")" for protocol, c in closes.items())

    def summary(self, summary: Summary, process: ProcessInfo | None, epoch: float) -> str:
        """A group of closes without lines of their own, as name-value pairs (see Poller.summaries())."""
        values = {"count": summary.count, "prot": summary.prot, "direction": summary.direction,
                  "raddr": summary.raddr, "rport": summary.rport, "lport": summary.lport,
                  "netns": summary.netns, "attrib": summary.attrib}
        return self.remark(f"skipped {' '.join(f'{name} {format_field(value)}' for name, value in values.items())} "
                           f"upid {format_upid(process)}", epoch)


class JsonLinesFormat:
    """One JSON object per line, no directives (a remark object names the host's netns); every
    field, null for what is missing.
    ASCII only, so every byte a process supplied survives as an escape."""

    name = "jsonl"
    first_byte = b"{"

    def __init__(self, fields: tuple[str, ...] = CONNECTION_FIELDS, utc: bool = False,
                 interval: float = DEFAULT_INTERVAL, host_netns: int | None = None):
        self.utc = utc
        self.host_netns = host_netns  # every connection object has its netns
        decimals = duration_decimals(interval)
        special = {
            "firstseen": lambda e: format_iso_timestamp(e.first_seen, utc),
            "duration": lambda e: None if e.duration is None else round(e.duration, decimals),
        }
        self._values = [(field, special.get(field, value)) for field, value in EVENT_VALUES.items()]
        self._epoch, self._epoch_text = None, ""

    def timestamp(self, epoch: float) -> str:
        if epoch != self._epoch:  # a poll's lines mostly share their time: format it once
            self._epoch, self._epoch_text = epoch, format_iso_timestamp(epoch, self.utc)
        return self._epoch_text

    def header(self, epoch: float) -> list[str]:
        return host_remark(self, epoch)

    def connection(self, event: ConnectionEvent) -> str:
        return self._line({"ts": self.timestamp(event.time), **{field: value(event) for field, value in self._values}})

    def process(self, process: ProcessInfo, timestamp: str) -> str:
        return self._line({
            "ts": timestamp,
            "upid": format_upid(process),
            "pid": process.pid,
            "name": process.name,
            "create_time": process.create_time,
            "cmdline": list(process.cmdline) if process.cmdline is not None else None,
            "exe": process.exe,
            "user": process.username,  # as connection objects name it
            "username": process.username,  # its name before 1.1, kept for the readers written then
        })

    def remark(self, text: str, epoch: float) -> str:
        return self._line({"ts": self.timestamp(epoch), "event": "remark", "remark": text})

    def stats(self, stats: Stats, epoch: float) -> str:
        return self._line({"ts": self.timestamp(epoch), "event": "stats", **stats_object(stats)})

    def summary(self, summary: Summary, process: ProcessInfo | None, epoch: float) -> str:
        return self._line({"ts": self.timestamp(epoch), "event": "summary", **summary._asdict(),
                           "upid": format_upid(process) if process else None})

    @staticmethod
    def _line(record: dict) -> str:
        return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


FORMATS: dict[str, Callable[..., Format]] = {"w3c": W3CFormat, "jsonl": JsonLinesFormat}


def stats_object(stats: Stats) -> dict:
    """Stats as a JSON stats object holds them: coverage by protocol (and by namespace,
    when more than one) where the kernel reports closes, else the share of the kernel's TCP
    opens seen opening; then the budget's state, where there is one; then health."""
    if stats.closes is not None:
        fields = {"coverage": close_coverage(stats.closes), "lost_events": sum(c.lost for c in stats.closes.values()),
                  "close_events_read": stats.close_events_read, "pauses": stats.pauses}
        if stats.closes_by_netns:
            fields["coverage_netns"] = {str(netns): close_coverage(closes)
                                        for netns, closes in stats.closes_by_netns.items()}
    else:
        fields = {"coverage": round(stats.tcp_seen / stats.tcp_opens, 4) if stats.tcp_opens else None,
                  "tcp_opens": stats.tcp_opens, "tcp_seen": stats.tcp_seen}
    if stats.owner_events is not None:
        fields.update(owner_events=stats.owner_events[0], owner_events_lost=stats.owner_events[1])
    if stats.max_cpu is not None:
        fields.update(max_cpu=stats.max_cpu, shed_spells=stats.shed_spells, shedding=stats.shedding)
    if stats.isolated:
        fields["isolated"] = list(stats.isolated)
    return {**fields, "polls": stats.polls, "avg_poll_ms": stats.avg_poll_ms, "late": stats.late,
            "dropped": stats.dropped, "held": stats.held}


def close_coverage(closes: dict[str, CloseCounts]) -> dict[str, dict]:
    """Coverage per protocol: of the sockets the kernel closed, the share logged with their
    process, and what became of each (CloseCounts)."""
    return {protocol: {"ratio": round(c.with_process / max(1, c.closed), 4), "closed": c.closed, **c._asdict()}
            for protocol, c in sorted(closes.items())}


def host_remark(fmt: Format, epoch: float) -> list[str]:
    """The line that opens a log whose connections carry their netns: which one is the host's."""
    if fmt.host_netns is None:
        return []
    return [fmt.remark(f"host netns {fmt.host_netns} (lognet's own network namespace)", epoch)]


##############################################################################
# Sinks: the only code that owns file handles
##############################################################################

SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, **{f"local{n}": 16 + n for n in range(8)},
}
SYSLOG_INFO = 6  # every event has severity "informational"
SYSLOG_TIMEOUT = 5.0  # seconds a syslog connect or send may take, in the sender's own thread
SYSLOG_EXIT_SECONDS = 0.5  # at exit, how long the sender may go on with what is queued
SYSLOG_BACKOFF_MIN, SYSLOG_BACKOFF_MAX = 0.5, 30.0  # pause after a failed send, doubling up to the most
SYSLOG_UDP_MAX = 65507  # the largest UDP payload over IPv4 (IPv6 allows a little more)
SYSLOG_UNIX_OVERHEAD = 64  # a local datagram socket carries its send buffer less this (measured: 32)
SYSLOG_SMALL_DATAGRAM = 1024  # what any datagram transport carries (RFC 3164's limit)
SYSLOG_CUT_MARK = b"[cut to %d of %d bytes] "  # before a line cut to fit one datagram
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

MAX_PENDING_LINES = 100_000  # per log, held while the log cannot be written

class OutputClosed(Exception):
    """The reader of standard output went away (lognet -clog - | head): end quietly."""


class Sink:
    """Delivers lines in order, each once.

    Lines wait in `pending` until delivered, up to MAX_PENDING_LINES (the oldest are
    dropped first). While delivery fails they are held, and delivered later after a
    remark that says how many were late or dropped. One error is printed per failure
    episode. A line once delivered is never sent again.
    """

    def __init__(self, fmt: Format, now: Callable[[], float] = time.time):
        self.format = fmt
        self.now = now
        self.pending: deque[str] = deque()
        self.lock = threading.Lock()  # pending is shared with a sender thread, where there is one
        self.waited = 0  # pending lines that went through a failed attempt: late when delivered
        self.dropped = 0  # in this failure episode
        self.failure: str | None = None  # why the current failure episode began
        self.failure_since = ""
        self.total_late = 0
        self.total_dropped = 0

    @property
    def name(self) -> str:
        """What messages call this output."""
        raise NotImplementedError

    def write(self, lines: list[str], msgid: str = "connection") -> None:
        """Take a poll's lines of one stream (msgid: connection or process), and deliver every pending one."""
        self.hold(lines)
        self.flush()

    def hold(self, lines: list) -> None:
        """Queue lines (syslog's: with their msgid), dropping the oldest beyond MAX_PENDING_LINES."""
        with self.lock:
            self.pending.extend(lines)
            overflow = max(0, len(self.pending) - MAX_PENDING_LINES)
            for _ in range(overflow):
                self.pending.popleft()
            self.dropped += overflow
            self.waited = max(0, self.waited - overflow)

    def flush(self) -> bool:
        """Deliver the pending lines, after a remark when some are late; False when that failed."""
        late = self.waited
        try:
            self._deliver(self._remark())
        except OSError as exc:
            with self.lock:
                self.waited = len(self.pending)
            if self.failure is None:
                self.failure = exc.strerror or str(exc)
                self.failure_since = format_timestamp(self.now(), self.format.utc)
                warn(f"cannot write {self.name}: {self.failure}; holding its lines until writing works again",
                     "error")
            return False
        if self.failure is not None:
            warn(f"writing {self.name} works again; {late} held lines written, {self.dropped} dropped")
            self.total_late += late
            self.total_dropped += self.dropped
        self.waited = self.dropped = 0
        self.failure = None
        return True

    def delivered(self, count: int) -> None:
        """The first count pending lines have reached the output."""
        with self.lock:
            for _ in range(min(count, len(self.pending))):
                self.pending.popleft()
            self.waited = max(0, self.waited - count)

    def _remark(self) -> list[str]:
        if self.failure is None:
            return []
        text = f"the next {self.waited} lines are late: writing failed ({self.failure}) since {self.failure_since}"
        if self.dropped:
            text += f"; {self.dropped} lines were dropped"
        return [self.format.remark(text, self.now())]

    def _deliver(self, lead: list[str]) -> None:
        """Send lead, then the pending lines, calling delivered() as they reach the output;
        raise OSError when one does not."""
        raise NotImplementedError

    def lost(self) -> int:
        """Lines that never reached this output: dropped, or held still."""
        return self.total_dropped + self.dropped + len(self.pending)

    def reopen(self) -> None:
        """After SIGHUP: open the file, or connect, afresh."""
        raise NotImplementedError

    def close(self, deadline: float | None = None) -> None:
        """Release the file or socket; held lines stay held. A sink that sends in the
        background may go on sending until deadline (time.monotonic())."""


class LogFile(Sink):
    """An append-only log file (or standard output for '-') that survives
    rotation, truncation and write errors.

    Each poll's lines go in one write(), which O_APPEND keeps whole in a regular file
    whatever its size. A write that fails halfway is cut back to its last whole line;
    where that is impossible (a pipe, a terminal), the rest of the cut line is written
    first next time, so that no line is ever half, or twice."""

    def __init__(self, path: str, fmt: Format, now: Callable[[], float] = time.time):
        super().__init__(fmt, now)
        self.path = path
        self.fd: int | None = None
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of a regular file that fd points at
        self.end = 0  # size of a regular file after our last write, to notice copytruncate
        self.needs_header = True
        self.unfinished = b""  # the rest of a line that a failed write cut, where it could not be cut back
        self._cut_line = ""  # that line, whole
        self.hangup: select.poll | None = None  # standard output to a pipe or socket: to notice its reader leave

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
        self.hangup = None
        if self.path == "-" and (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
            self.hangup = select.poll()
            self.hangup.register(fd, 0)  # POLLERR and POLLHUP are always reported

    def reader_gone(self) -> bool:
        """Whether the reader of standard output has gone (lognet -clog - | head -3)."""
        return bool(self.hangup and any(events & (select.POLLERR | select.POLLHUP)
                                        for _, events in self.hangup.poll(0)))

    def reopen(self) -> None:
        if self.path == "-":
            return  # standard output is not rotated: there is nothing to reopen
        try:
            self.open()
        except OSError:
            self.close()  # the next write tries again, and reports the failure as any write does

    def close(self, deadline: float | None = None) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            if self.unfinished:
                # The cut line stays cut in the file let go of; in the next file it is written whole.
                self.unfinished = b""
                with self.lock:
                    self.pending.appendleft(self._cut_line)
                    self.waited += 1

    def _deliver(self, lead: list[str]) -> None:
        self._follow_path()
        if self.unfinished:
            try:
                written = self._write(self.unfinished)
            except OSError as exc:
                written = exc.written
                raise
            finally:
                self.end += written
                self.unfinished = self.unfinished[written:]
        head = self.format.header(self.now()) if self.needs_header else []
        lines = head + lead + list(self.pending)
        if not lines:
            return
        chunks = [(line + "\n").encode("utf-8", "backslashreplace") for line in lines]
        data = b"".join(chunks)
        try:
            written, failure = self._write(data), None
        except OSError as exc:
            written, failure = exc.written, exc
        whole, whole_end = self._whole(chunks, written)
        if whole_end < written:  # a line was cut
            if self.identity is not None and self._cut_back(self.end + whole_end):
                written = whole_end
            else:
                self.unfinished, self._cut_line = data[written:whole_end + len(chunks[whole])], lines[whole]
                whole += 1  # its rest is written first next time
        self.end += written
        if whole >= len(head):
            self.needs_header = False
        self.delivered(max(0, whole - len(head) - len(lead)))
        if failure is not None:
            raise failure

    def _write(self, data: bytes) -> int:
        """Write data; return how much was written, or raise OSError with .written set."""
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, data[written:])
        except BrokenPipeError:
            if self.path == "-":
                raise OutputClosed() from None
            raise
        except OSError as exc:
            exc.written = written
            raise
        return written

    @staticmethod
    def _whole(chunks: list[bytes], written: int) -> tuple[int, int]:
        """How many of chunks the first `written` bytes hold whole, and where they end."""
        count = end = 0
        for chunk in chunks:
            if end + len(chunk) > written:
                break
            count, end = count + 1, end + len(chunk)
        return count, end

    def _cut_back(self, size: int) -> bool:
        try:
            os.ftruncate(self.fd, size)
            return True
        except OSError:
            return False

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


class SyslogSink(Sink):
    """Sends each line as one syslog message, MSGID connection or process: RFC 5424 over
    UDP or TCP; to a local socket, the form syslog(3) uses, which is the one every local
    daemon parses. Both streams share the one connection, in the order they were written.

    A thread of its own connects and sends, so that a slow or dead collector never
    holds up a poll: lines wait in the bounded queue meanwhile, and after a failure
    it tries again after a pause that doubles up to SYSLOG_BACKOFF_MAX seconds."""

    def __init__(self, transport: str, address: str, facility: str, fmt: Format,
                 now: Callable[[], float] = time.time):
        super().__init__(fmt, now)  # fmt: the connection stream's, for remarks
        self.transport = transport
        self.address = address
        self.priority = SYSLOG_FACILITIES[facility] * 8 + SYSLOG_INFO
        self.hostname = socket.gethostname() or "-"
        self.sock: socket.socket | None = None
        self.wake = threading.Condition(self.lock)
        self.stopping = False
        self.reconnect = False
        self.backoff = 0.0
        self.thread = threading.Thread(target=self._run, name="lognet-syslog", daemon=True)

    @property
    def name(self) -> str:
        return f"syslog {self.transport}:{self.address}"

    def write(self, lines: list[str], msgid: str = "connection") -> None:
        """Queue a poll's lines for the sender thread; never waits for the network."""
        self.hold([(msgid, line) for line in lines])
        with self.wake:
            if not self.thread.is_alive() and not self.stopping:
                self.thread.start()
            self.wake.notify()

    def reopen(self) -> None:
        with self.wake:
            self.reconnect = True
            self.wake.notify()

    def close(self, deadline: float | None = None) -> None:
        """Let the sender thread send what is queued until deadline (time.monotonic()), then
        end it. What it could not send stays in pending, and counts as lost."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread.is_alive():
            self.thread.join(timeout=max(0.0, (deadline or time.monotonic()) - time.monotonic()))

    def _run(self) -> None:
        retry_at = 0.0
        while True:
            with self.wake:
                while not (self.stopping or self.reconnect or (self.pending and time.monotonic() >= retry_at)):
                    self.wake.wait(None if not self.pending else max(0.0, retry_at - time.monotonic()))
                if self.reconnect:
                    self.reconnect = False
                    self._disconnect()
                if self.stopping and (not self.pending or time.monotonic() < retry_at):
                    self._disconnect()
                    return
            if self.flush():
                self.backoff = 0.0
            else:
                self._disconnect()
                self.backoff = min(SYSLOG_BACKOFF_MAX, max(SYSLOG_BACKOFF_MIN, self.backoff * 2))
                retry_at = time.monotonic() + self.backoff

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

    def _disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _header(self, msgid: str) -> bytes:
        now = self.now()
        if self.transport == "unix":
            local = time.localtime(now)
            return (f"<{self.priority}>{MONTHS[local.tm_mon - 1]} {local.tm_mday:2d} "
                    f"{time.strftime('%H:%M:%S', local)} lognet[{os.getpid()}]: ").encode()
        return (f"<{self.priority}>1 {format_iso_timestamp(now, self.format.utc)} {self.hostname} "
                f"lognet {os.getpid()} {msgid} - ").encode()

    def _deliver(self, lead: list[str]) -> None:
        sock = self._connect()
        headers = {msgid: self._header(msgid) for msgid in ("connection", "process")}
        for line in lead:
            self._send(sock, headers["connection"], line)
        while True:
            with self.lock:
                if not self.pending:
                    return
                msgid, line = self.pending[0]
            self._send(sock, headers[msgid], line)
            self.delivered(1)

    def _send(self, sock: socket.socket, header: bytes, line: str) -> None:
        message = header + line.encode("utf-8", "backslashreplace")
        if self.transport == "tcp":  # octet counting (RFC 6587): a message may hold any byte
            sock.sendall(b"%d %s" % (len(message), message))
            return
        # A datagram has a largest size; a line too long for it (a hostile command line)
        # is cut to fit and marked, and sent once, never retried whole.
        largest = SYSLOG_UDP_MAX if self.transport == "udp" else \
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - SYSLOG_UNIX_OVERHEAD
        for room in (len(message), largest, SYSLOG_SMALL_DATAGRAM):
            try:
                sock.send(message if room >= len(message) else cut_message(header, message[len(header):], room))
                return
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    raise
        self.total_dropped += 1  # not even a small datagram passes: this one line is lost, not the rest


def cut_message(header: bytes, line: bytes, room: int) -> bytes:
    """header, a mark, and the longest start of line that fits in room bytes with them,
    never ending inside a UTF-8 character: b'<14>... [cut to 65390 of 70123 bytes] 2026-...'."""
    mark = SYSLOG_CUT_MARK % (len(line), len(line))  # as long as the mark can get
    keep = max(0, room - len(header) - len(mark))
    while 0 < keep < len(line) and line[keep] & 0xC0 == 0x80:
        keep -= 1
    return header + SYSLOG_CUT_MARK % (keep, len(line)) + line[:keep]


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
    """One stream of lines (connections or processes): its format, the sinks that take it,
    and its syslog MSGID."""

    format: Format
    sinks: list[Sink]
    msgid: str

    def write(self, lines: list[str]) -> None:
        for sink in self.sinks:
            sink.write(lines, self.msgid)


class Outputs(NamedTuple):
    """Where lines go: the connections stream and the processes stream."""

    connections: Stream
    processes: Stream

    def all(self) -> list[Sink]:
        """Every sink once (syslog takes both streams), the connections' first."""
        return list(dict.fromkeys(self.connections.sinks + self.processes.sinks))


def open_outputs(config: Config, defaulted: tuple[bool, bool] = (False, False)) -> Outputs:
    """Open both logs, and the syslog destination if one was asked for."""
    make_format = FORMATS[config.format]
    connections = Stream(make_format(config.fields, config.utc, config.interval, netns_inode()), [], "connection")
    processes = Stream(make_format(PROCESS_FIELDS, config.utc), [], "process")
    clog, plog = open_logs(config, defaulted, (connections.format, processes.format))
    connections.sinks.append(clog)
    processes.sinks.append(plog)
    if config.syslog:
        transport, address = config.syslog
        syslog = SyslogSink(transport, address, config.syslog_facility, connections.format)
        connections.sinks.append(syslog)
        processes.sinks.append(syslog)
    return Outputs(connections, processes)


def open_logs(config: Config, defaulted: tuple[bool, bool], formats: tuple[Format, Format]) -> tuple[LogFile, LogFile]:
    """Open connections.log and processes.log, each in its format. A default path falls back to
    the per-user folder, with one warning, where this user cannot make the default folder or
    write in it; a log that cannot be opened in a folder it may write in is an error, as is
    one at a path the user gave, which is never replaced: it opens, or LognetError."""
    logs, fallback_reason = [], None
    for path, fmt, is_default in zip((config.connections_log, config.processes_log), formats, defaulted):
        folder, fell_back = os.path.dirname(path), False
        if is_default:
            try:
                os.makedirs(folder, mode=LOG_DIR_MODE, exist_ok=True)
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            except OSError as exc:
                fallback_reason = fallback_reason or f"{folder}: {exc.strerror}"
                path, fell_back = os.path.join(fallback_log_dir(), os.path.basename(path)), True
        try:
            logs.append(open_log(path, fmt, make_folder=fell_back))  # the default folder is made above
        except OSError as exc:
            why = f" (the default folder could not be used: {fallback_reason})" if fallback_reason else ""
            raise LognetError(f"cannot open log {path}: {exc.strerror}{why}") from None
    if fallback_reason:
        warn(f"this user cannot make or write the default log folder ({fallback_reason}); "
             f"logging to {fallback_log_dir()} instead")
    return logs[0], logs[1]


def open_log(path: str, fmt: Format, make_folder: bool) -> LogFile:
    """An open LogFile at path; its folder is made (0750) only when make_folder. OSError if
    impossible; LognetError when the file holds lines of the other format."""
    if make_folder:
        os.makedirs(os.path.dirname(path), mode=LOG_DIR_MODE, exist_ok=True)
    log = LogFile(path, fmt)
    log.open()
    found = log_format(path)
    if found and found != fmt.name:
        log.close()
        raise LognetError(f"{path} holds {found} lines, not {fmt.name}: choose --format {found}, or another log")
    return log


def log_format(path: str) -> str | None:
    """The format of the lines a log file already holds, from its first byte; None when empty or not a file."""
    try:
        with open(path, "rb") as f:
            first = f.read(1) if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else b""
    except OSError:
        return None  # write-only, or standard output: nothing to read, nothing to mix up
    return next((name for name, fmt in FORMATS.items() if first and fmt.first_byte == first), None)


##############################################################################
# The loop
##############################################################################

STATUS_SECONDS = 1.0  # the status line is redrawn at most this often
GC_SECONDS = 60.0  # how often lognet runs Python's cycle collector itself (see run())

class Signals:
    """Turns SIGTERM/SIGINT into a stop, SIGHUP into a reopen and SIGWINCH into a redraw,
    waking any sleep."""

    def __init__(self):
        self.stop = False
        self.reopen = False
        self.resized = False
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
        if hasattr(signal, "SIGWINCH"):
            signal.signal(signal.SIGWINCH, self._on_resize)

    def _on_stop(self, signum, frame) -> None:
        self.stop = True

    def _on_hangup(self, signum, frame) -> None:
        self.reopen = True

    def _on_resize(self, signum, frame) -> None:
        self.resized = True

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
                 now: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic,
                 budget: CpuBudget | None = None):
        self.config = config
        self.source = source
        self.budget = budget  # the source's, which decides its level: the poller reads it, and measures lines
        self.outputs = outputs
        self.now = now
        self.clock = clock
        self.keep = build_filter(config)
        # With only the original fields, lognet writes what it always wrote: no close lines,
        # no owner carried into TIME_WAIT, no statistics unless asked for.
        self.lifecycle_fields = config.format == "jsonl" or not set(config.fields) <= set(CONNECTION_FIELDS)
        self.tracker = Tracker(awaits_kernel_closes=source.has_close_events, timewait_lines=not self.lifecycle_fields,
                               owners_visible=lambda: source.owners_visible)
        self.logs_closes = config.format == "jsonl" or "event" in config.fields
        self.logs_names = logs_names(config)
        self.stats_every = config.stats_interval or (DEFAULT_STATS_INTERVAL if self.lifecycle_fields else None)
        self.next_stats = clock() + (self.stats_every or 0)
        self.tcp_opens_at_start: int | None = None
        self.tcp_seen = 0  # TCP connections first seen after the first poll
        self.closes: dict[int | None, dict[str, CloseCounts]] = {}  # netns -> protocol -> the kernel's closes
        self.polls = 0
        self.written_until = 0.0  # the time of the latest connection line
        self.lines = 0  # lines given to the logs, both streams
        self.poll_seconds = 0.0
        self.last_poll_seconds = 0.0

    def poll(self) -> int:
        """Run one poll and return the number of connection lines it wrote."""
        if any(isinstance(sink, LogFile) and sink.reader_gone() for sink in self.outputs.all()):
            raise OutputClosed()  # noticed now, not at the next line, which may be long in coming
        started = self.clock()
        if self.polls == 0 and self.stats_every and not self.source.has_close_events:
            self.tcp_opens_at_start = self.source.tcp_opens()
            if self.tcp_opens_at_start is None:
                warn(f"coverage is not available on this system (no TCP counters in {SNMP})")
        now = self.now()
        snapshot = self.source.connections()
        arrivals, departures = self.source.between_polls()  # after the dump: a close it missed is here
        started_cpu = time.thread_time()
        events, new_processes = self.logged_events(self.tracker.update(snapshot, now, arrivals, departures))
        self.write(events, new_processes, now)
        if self.budget is not None and len(events) >= 100:  # enough lines to measure the cost of one
            self.budget.line_cost = (time.thread_time() - started_cpu) / len(events)
        self.write_summaries(self.source.take_skipped(), self.source.take_unheard(), now)
        self.polls += 1
        if self.polls == 1 and self.budget is not None:
            self.budget.restart()  # the first poll reads everything there is: it is not a flood
        self.last_poll_seconds = self.clock() - started
        self.poll_seconds += self.last_poll_seconds
        if self.stats_every and self.clock() >= self.next_stats:
            self.next_stats = self.clock() + self.stats_every
            self.write_stats()
        return len(events)

    def logged_events(self, events: list[ConnectionEvent]) -> tuple[list[ConnectionEvent], list[ProcessInfo]]:
        """The events the filters keep, in line order (by time, then connection_order()), each
        with its owner; and the owners that lognet had not met before. Close lines are
        lifecycle lines, but for a socket never seen alive: its close is all there is of it."""
        kept = [e for e in events if self.keep(e.conn)]
        kept.sort(key=lambda event: (event.time, connection_order(event.conn)))
        owners, new_processes = self.source.processes(
            {e.conn.pid for e in kept if e.conn.pid is not None and (e.event != "close" or e.process is None)})
        # Owned events first: they teach the tracker the owners that TIME_WAIT lines carry on.
        owned = {i: self.attribute(e, owners) for i, e in enumerate(kept) if e.conn.pid is not None}
        kept = [owned[i] if i in owned else self.attribute(e, owners) for i, e in enumerate(kept)]
        if self.logs_names:
            kept = [e._replace(rhost=self.source.rhost(e.conn, e.process.pid if e.process else e.conn.pid))
                    if e.conn.raddr else e for e in kept]
        self.count_seen(kept)
        kept = [e for e in kept if self.logs_closes or e.event != "close" or not e.alive_seen]
        # A log reads in time order: a line known only now (a close the kernel told late) is
        # never dated before the lines already written.
        kept = [e if e.time >= self.written_until else e._replace(time=self.written_until) for e in kept]
        if kept:
            self.written_until = kept[-1].time
        return kept, new_processes

    def attribute(self, event: ConnectionEvent, owners: dict[int, ProcessInfo]) -> ConnectionEvent:
        """The event with the owner looked up in this poll; a close whose owner has died is an orphan."""
        conn = event.conn
        if conn.pid is None:
            # Only lifecycle lines carry an owner into TIME_WAIT; the original eight fields never did.
            if not self.lifecycle_fields:
                return event if event.process is None else event._replace(process=None)
            return event if event.attrib != "orphan" or event.process else event._replace(
                process=self.tracker.owner(conn))
        if event.event != "close":
            return event.owned(self.tracker.remember_owner(conn, owners[conn.pid]))
        if event.process is None:  # found and closed between two polls
            event = event.owned(owners[conn.pid])
        if event.attrib == "kernel":
            return event  # the kernel named who held it to its close
        return event if self.source.is_running(event.process) else event._replace(attrib="orphan")

    def count_seen(self, events: list[ConnectionEvent]) -> None:
        """Count, for coverage, the TCP connections seen opening (against the kernel's open
        counter), and the kernel's closes logged with and without their process."""
        closes = Counter((e.conn.netns, e.conn.type, e.process is None or e.attrib == "unseen") for e in events
                         if e.kernel_close)  # a flood's thousands a poll: counted in C, then added once each
        for (netns, kind, without), count in closes.items():
            self.count_closes(netns, kind, CloseCounts(without=count) if without else CloseCounts(with_process=count))
        if self.polls > 0:  # the first poll finds what was open before the kernel counters were read
            self.tcp_seen += sum(1 for e in events if e.event == "open" and e.conn.type == socket.SOCK_STREAM
                                 and e.conn.raddr)

    def count_closes(self, netns: int | None, kind: int, counts: CloseCounts) -> None:
        """Add to the count of the kernel's closes of a namespace and socket type."""
        protocols = self.closes.setdefault(netns, {})
        protocol = PROTOCOLS[kind].lower()
        protocols[protocol] = protocols.get(protocol, CloseCounts()).plus(counts)

    def summaries(self, skipped: list[SkippedCloses]) -> list[Summary]:
        """The closes skipped for the CPU budget that the filters keep, counted as skipped, and
        grouped by process, protocol, direction and peer: the remote address, and the remote
        port of an outgoing connection or the local port of an incoming one."""
        groups: dict[tuple, int] = {}
        for conn, count, how, served in skipped:
            if not self.keep(conn):
                continue
            self.count_closes(conn.netns, conn.type, CloseCounts(skipped=count))
            direction = "in" if served and conn.raddr else self.tracker.direction(conn)
            inbound = served or not conn.raddr
            key = (conn.netns, conn.pid, how, PROTOCOLS[conn.type], direction, conn.raddr[0] if conn.raddr else None,
                   None if inbound else conn.raddr[1], conn.laddr[1] if inbound and conn.laddr else None)
            groups[key] = groups.get(key, 0) + count
        return [Summary(count, netns, pid, how, prot, direction, raddr, rport, lport)
                for (netns, pid, how, prot, direction, raddr, rport, lport), count in sorted(
                    groups.items(), key=lambda item: -item[1])]

    def write_summaries(self, skipped: list[SkippedCloses], unheard: dict[int, int], now: float) -> None:
        """One line for each group of the closes skipped since the last poll (see summaries()),
        after the processes they name, one for each end of an isolated flood group that closed
        since, and one for each namespace's closes while its close events were paused:
        nothing happens that the log does not at least count."""
        summaries = self.summaries(skipped)
        for group, local, count, pid in self.source.take_isolated():
            self.count_closes(group.netns, socket.SOCK_STREAM, CloseCounts(skipped=count))
            attrib = None if pid is None else "listener" if local else "kernel"
            summaries.append(Summary(count, group.netns, pid, attrib, "TCP", "in" if local else "out",
                                     None if local else group.addr()[0], None if local else group.port,
                                     group.port if local else None))
        for netns, count in unheard.items():
            self.count_closes(netns, socket.SOCK_STREAM, CloseCounts(unheard=count))
            summaries.append(Summary(count, netns, None, "unheard", "TCP", None, None, None, None))
        if not summaries:
            return
        owners, new_processes = self.source.processes({s.pid for s in summaries if s.pid is not None})
        summary = self.outputs.connections.format.summary
        self.write_lines([summary(s, owners.get(s.pid), now) for s in summaries], new_processes, now)

    def isolated(self) -> list[str]:
        """The flood groups isolated now, for a reader: 'nginx 127.0.0.1:18383 (12,700/s)'."""
        return [f"{self.source.process_name(pid) or '-'} {group.endpoint()} ({rate:,.0f}/s)"
                for group, rate, pid in self.source.isolating()]

    def intervals_to_next_poll(self) -> int:
        """How many intervals until the next poll: more than one at the last step of shedding."""
        return POLL_STRETCH if self.budget is not None and self.budget.shed >= SHED_POLLS else 1

    def write(self, events: list[ConnectionEvent], new_processes: list[ProcessInfo], now: float) -> None:
        """Format and write a poll's lines: processes.log first, so that a reader of a new
        connection line finds its command line."""
        self.write_lines([self.outputs.connections.format.connection(event) for event in events], new_processes, now)

    def write_lines(self, connection_lines: list[str], new_processes: list[ProcessInfo], now: float) -> None:
        """Write formatted connection lines after the command lines of the processes they name."""
        connections, processes = self.outputs
        timestamp = processes.format.timestamp(now)
        process_lines = [processes.format.process(process, timestamp) for process in new_processes]
        processes.write(process_lines)
        connections.write(connection_lines)
        self.lines += len(process_lines) + len(connection_lines)

    def stats(self) -> Stats:
        """Coverage and health since the start (see Stats)."""
        closes, by_netns, tcp_opens = None, {}, None
        if self.source.has_close_events:
            by_netns = {netns: dict(protocols) for netns, protocols in self.closes.items()}
            for netns, lost in self.source.lost_closes().items():  # what the kernel dropped, beside what came
                for protocol, count in lost.items():
                    protocols = by_netns.setdefault(netns, {})
                    protocols[protocol] = protocols.get(protocol, CloseCounts()).plus(CloseCounts(lost=count))
            closes = {}
            for protocols in by_netns.values():
                for protocol, counts in protocols.items():
                    closes[protocol] = closes.get(protocol, CloseCounts()).plus(counts)
            by_netns = dict(sorted(by_netns.items())) if len(by_netns) > 1 else {}  # containers too: each one's own
        else:
            opens = self.source.tcp_opens()
            tcp_opens = None if opens is None or self.tcp_opens_at_start is None else opens - self.tcp_opens_at_start
        budget = self.budget
        sinks = self.outputs.all()
        return Stats(closes, by_netns, self.source.events_read, self.source.pauses, tcp_opens, self.tcp_seen,
                     round(budget.share * 100, 3) if budget else None, budget.spells if budget else 0,
                     SHED_STEPS[budget.shed] or None if budget else None, self.polls,
                     round(self.poll_seconds / max(1, self.polls) * 1e3, 3), sum(sink.total_late for sink in sinks),
                     sum(sink.total_dropped + sink.dropped for sink in sinks), sum(len(sink.pending) for sink in sinks),
                     self.source.owner_events(), tuple(self.isolated()))

    def write_stats(self) -> None:
        """The statistics remark, to every connections output."""
        self.outputs.connections.write([self.outputs.connections.format.stats(self.stats(), self.now())])
        self.lines += 1

    def finish(self) -> None:
        """At exit: the closes still waiting for the kernel's word, and the last statistics.
        Connections still open get no close line: they did not close."""
        now = self.now()
        arrivals, departures = self.source.between_polls()
        # What the watcher found since the last poll, and the kernel's closes: with no new dump,
        # the live set stands in for one.
        still = self.tracker.live.union(conn for conn, _ in arrivals)
        events = self.tracker.update(still, now, arrivals, departures) + self.tracker.release()
        self.write(*self.logged_events(events), now)
        self.write_summaries(self.source.take_skipped(), self.source.take_unheard(final=True), now)
        if self.stats_every and self.polls:
            self.write_stats()

    def reopen(self) -> None:
        """SIGHUP (after logrotate): open every log afresh now (a new file gets a fresh
        header with the next lines), and connect to syslog afresh."""
        for sink in self.outputs.all():
            sink.reopen()

    def close(self) -> None:
        """Close every output, giving the ones that send in the background a moment to finish."""
        deadline = time.monotonic() + SYSLOG_EXIT_SECONDS
        for sink in self.outputs.all():
            sink.close(deadline)

    def lost(self) -> dict[str, int]:
        """Each output's lines that never reached it, where there are any."""
        return {sink.name: sink.lost() for sink in self.outputs.all() if sink.lost()}


class StatusLine:
    """One line on a terminal's stderr, redrawn in place at most once a second, and
    at once when the terminal is resized; it never grows wider than the terminal."""

    def __init__(self, stream, outputs: Outputs, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        sinks = outputs.all()
        self.paths = " ".join(sink.name for sink in sinks)
        self.short_paths = " ".join(os.path.basename(sink.name) if isinstance(sink, LogFile) else sink.name
                                    for sink in sinks)
        self.clock = clock
        self.shown_at: float | None = None
        self.width = self.measure()

    def measure(self) -> int:
        """The columns the line may take: one less than the terminal's, so that it never wraps."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        return max(20, columns - 1) if columns else 79  # 0: a terminal that does not say

    def text(self, poller: Poller) -> str:
        """The status, fitted to the width: the paths are shortened first, then left out, then the words."""
        polls, live, lines, ms = (poller.polls, len(poller.tracker.live), poller.lines,
                                  f"{poller.last_poll_seconds * 1e3:.0f}")
        shed = poller.budget.shed if poller.budget is not None else 0
        shedding = f", over {poller.config.max_cpu:g}% CPU: {SHED_STEPS[shed]}" if shed else ""
        isolated = poller.isolated()
        shedding += f", shedding: {', '.join(isolated)}" if isolated else ""
        counts = f"lognet: {polls} polls, {live} live connections, {lines} lines written, last poll {ms} ms{shedding}"
        brief = f"lognet: {polls} polls, {live} live, {lines} lines, {ms} ms" + (", shedding" if shed else "")
        for text in (f"{counts} -> {self.paths}", f"{counts} -> {self.short_paths}", counts, brief):
            if len(text) <= self.width:
                return text
        return brief[:self.width]

    def update(self, poller: Poller, force: bool = False) -> None:
        """Redraw the line if a second has passed since it was last drawn."""
        now = self.clock()
        if self.stream is None or (not force and self.shown_at is not None and now - self.shown_at < STATUS_SECONDS):
            return
        self.shown_at = now
        try:
            self.stream.write(f"\r\x1b[K{self.text(poller)}")
            self.stream.flush()
        except OSError:
            self.hang_up()

    def resize(self, poller: Poller) -> None:
        """SIGWINCH: measure the terminal again and redraw."""
        if self.stream is not None:
            self.width = self.measure()
            self.update(poller, force=True)

    def hang_up(self) -> None:
        """The terminal is gone (closed, or its session ended): lognet goes on logging, as a
        daemon does, and what it would have printed there is dropped."""
        self.stream = None
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 -- for the rest of the run

    def close(self, poller: Poller) -> None:
        """Show the final counts, and leave the terminal on a fresh line."""
        if self.shown_at is not None and self.stream is not None:
            self.update(poller, force=True)
            try:
                self.stream.write("\n")
                self.stream.flush()
            except OSError:
                self.hang_up()


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
            act_on_signals(signals, poller, status)
            poller.poll()
            polls += 1
            if status:
                status.update(poller)
            if config.count is not None and polls >= config.count:
                break
            if clock() >= next_gc:
                gc.collect()
                next_gc = clock() + GC_SECONDS
            deadline += config.interval * poller.intervals_to_next_poll()
            if clock() > deadline:
                deadline = clock()  # a poll overran the interval: start the schedule afresh, skip no sleep debt
            while not signals.stop and (remaining := deadline - clock()) > 0:
                sleep(remaining)
                act_on_signals(signals, poller, status)  # a signal ends the sleep: SIGHUP reopens now
    finally:
        if collecting:
            gc.enable()
    return polls


def act_on_signals(signals: Signals, poller: Poller, status: StatusLine | None) -> None:
    """Act on SIGHUP (reopen the logs) and SIGWINCH (fit the status line) that came since the last look."""
    if signals.reopen:
        signals.reopen = False
        poller.reopen()
    if signals.resized:
        signals.resized = False
        if status:
            status.resize(poller)


##############################################################################
# Report: the logs read back, one row per connection (lognet report)
##############################################################################

# A row's columns, in order: its identity, its story, its process, its bytes.
REPORT_COLUMNS = ("firstseen", "closed", "duration", "prot", "direction", "laddr", "lport", "raddr", "rport",
                  "rhost", "name", "pid", "user", "txbytes", "rxbytes", "attrib", "status", "netns", "cmdline")
REPORT_HEADINGS = {"firstseen": "FIRST SEEN", "closed": "CLOSED", "duration": "SECONDS", "prot": "PROT",
                   "direction": "DIR", "laddr": "LADDR", "lport": "LPORT", "raddr": "RADDR", "rport": "RPORT",
                   "rhost": "RHOST", "name": "PROCESS", "pid": "PID", "user": "USER", "txbytes": "TX",
                   "rxbytes": "RX", "attrib": "ATTRIB", "status": "STATUS", "netns": "NETNS",
                   "cmdline": "COMMAND LINE", "connections": "CONNS", "lastseen": "LAST SEEN", "peer": "PEER"}
SUMMARY_COLUMNS = ("connections", "txbytes", "rxbytes", "firstseen", "lastseen")
TABLE_SAMPLE = 1000  # rows read before a table's widths are set: it streams after them
TABLE_LAST_LEAST = 24  # the last column's room (the command line's) before others are left out
# The columns a terminal too narrow for all of them gives up first.
NARROW_DROPS = ("netns", "status", "attrib", "laddr", "user", "closed", "rhost", "lport", "prot", "direction",
                "duration", "rxbytes")
# A TCP status's place in a connection's story: a line of an earlier place starts another connection.
STATUS_PLACE = {"SYN_SENT": 0, "SYN_RECV": 0, "LISTEN": 0, "NONE": 0, "ESTABLISHED": 1}
ENDED_STATUSES = frozenset(("TIME_WAIT", "CLOSE"))  # the last line of a connection without close lines
# An ownerless socket in these states, on the addresses of a connection that ended within
# LEFTOVER_SECONDS, is that connection's leftover (its TIME_WAIT, met again by a lognet
# started since): no row of its own. The ENDED_KEPT latest ends are remembered.
LEFTOVER_STATUSES = frozenset(("TIME_WAIT", "FIN_WAIT2", "CLOSE", "CLOSING", "LAST_ACK"))
LEFTOVER_SECONDS = 120.0
ENDED_KEPT = 65_536
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
EXIT_NO_FILE, EXIT_UNREADABLE = 2, 1


class ReportError(LognetError):
    """A log that cannot be reported on; status is the exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Row(NamedTuple):
    """One connection as the log told it: its lines joined, and its process's."""

    firstseen: float
    lastseen: float
    closed: float | None  # None while the log leaves it open
    duration: float | None
    prot: str
    direction: str | None
    laddr: str | None
    lport: int | None
    raddr: str | None
    rport: int | None
    rhost: str | None
    upid: str | None
    user: str | None
    txbytes: int | None
    rxbytes: int | None
    attrib: str | None
    status: str
    netns: str | None


def rotated_logs(path: str) -> list[str]:
    """A log and its rotated siblings that exist, oldest first: path.N(.gz) ... path.1, path."""
    folder, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + r"\.(\d+)(\.gz)?$")
    try:
        names = os.listdir(folder or ".")
    except OSError:
        names = []
    older = sorted(((int(m.group(1)), name) for name in names if (m := pattern.match(name))), reverse=True)
    return [os.path.join(folder, name) for _, name in older] + [path]


def open_log_text(path: str):
    """A log opened for reading as text, through gzip where it ends .gz; ReportError where it cannot be."""
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
        return open(path, encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file", EXIT_NO_FILE) from None
    except OSError as exc:
        raise unreadable(path, exc) from None


def unreadable(path: str, exc: Exception) -> ReportError:
    """The error of a log that cannot be read, saying why."""
    return ReportError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}", EXIT_UNREADABLE)


def report_time(text: str, utc: bool) -> float:
    """Epoch seconds of a log's timestamp: W3C's 'YYYY-MM-DD|HH:MM:SS' (local time, or UTC)
    or JSON Lines' ISO 8601 with its offset. ValueError for anything else."""
    if "T" in text:
        return datetime.datetime.fromisoformat(text).timestamp()
    parsed = time.strptime(text, "%Y-%m-%d|%H:%M:%S")
    return float(calendar.timegm(parsed) if utc else time.mktime(parsed))


class LogReader:
    """Records (field -> text) from lognet's logs, W3C or JSON Lines, told apart by their
    first line; what is not a record of the log's own (a line cut short, a corrupt line, a
    field unknown to lognet) is skipped and counted."""

    def __init__(self, utc: bool = False, needle: str | None = None):
        self.utc = utc
        self.needle = needle  # a connection line without it cannot be one asked for: not parsed
        self.skipped = Counter()  # why -> lines
        self.times: dict[str, float] = {}  # a timestamp's text -> its seconds, for the lines of one second

    def time(self, text: str) -> float:
        seconds = self.times.get(text)
        if seconds is None:
            if len(self.times) > 4096:
                self.times.clear()
            seconds = self.times[text] = report_time(text, self.utc)
        return seconds

    def records(self, path: str) -> Iterator[dict]:
        """The records of one file, in its order."""
        with open_log_text(path) as f:
            try:
                first = f.readline()
                if first.startswith("{"):
                    yield from self._json_records(itertools.chain([first], f))
                elif first.startswith("#"):
                    yield from self._w3c_records(itertools.chain([first], f))
                elif first:
                    raise ReportError(f"{path}: not a lognet log (no #Fields header, no JSON object)",
                                      EXIT_UNREADABLE)
            except (OSError, EOFError) as exc:  # a gzip file cut short, a read error
                raise unreadable(path, exc) from None

    def _w3c_records(self, lines: Iterable[str]) -> Iterator[dict]:
        fields: list[str] = []
        known: list[bool] = []
        needle = self.needle
        for line in lines:
            if line.startswith("#"):
                if line.startswith("#Fields:"):
                    fields = line[8:].split()
                    if fields == " ".join(PROCESS_FIELDS).split():  # processes.log's header
                        fields = ["timestamp", "upid", "cmdline"]
                    known = [name in REPORT_FIELDS for name in fields]
                    if not all(known):
                        self.skipped["fields unknown to lognet"] += known.count(False)
                continue
            if not line.endswith("\n"):
                self.skipped["lines cut short"] += 1
                continue
            if fields and fields[1] != "upid" and needle is not None and needle not in line:
                continue
            if not fields:
                self.skipped["lines before a #Fields header"] += 1
                continue
            if fields[1] == "upid":  # processes.log: the command line is the rest of the line
                parts = line[:-1].split(" ", 2)
            else:
                parts = line[:-1].split(" ")
            if len(parts) != len(fields):
                self.skipped["corrupt lines"] += 1
                continue
            yield {name: value for name, value, ok in zip(fields, parts, known) if ok}

    def _json_records(self, lines: Iterable[str]) -> Iterator[dict]:
        needle = self.needle
        for line in lines:
            if not line.endswith("\n"):
                self.skipped["lines cut short"] += 1
                continue
            if needle is not None and '"prot"' in line and needle not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.skipped["corrupt lines"] += 1
                continue
            if not isinstance(record, dict):
                self.skipped["corrupt lines"] += 1
            elif "prot" in record or "cmdline" in record:
                for name in ESCAPED_JSON_FIELDS:  # as the W3C log writes them: one printable token
                    if isinstance(record.get(name), str):
                        record[name] = escape_field(record[name])
                yield record


# The fields a report reads: a connection line's, and a processes line's (as read: its cmdline).
REPORT_FIELDS = frozenset((*CONNECTION_FIELDS, *EXTRA_FIELDS, "timestamp", "upid", "cmdline"))


ESCAPED_JSON_FIELDS = ("rhost", "user", "exe", "name")  # JSON Lines holds them unescaped


def text_value(value) -> str | None:
    """A record's value as the W3C log writes it: escaped text, None for '-' or null."""
    if value is None or value == "-":
        return None
    return value if isinstance(value, str) else str(value)


def int_value(value) -> int | None:
    value = text_value(value)
    return int(value) if value is not None and value.isdigit() else None


class Processes:
    """The command line (and user) of each upid, from processes.log."""

    def __init__(self):
        self.cmdlines: dict[str, str] = {}
        self.users: dict[str, str] = {}

    def learn(self, record: dict) -> None:
        upid, cmdline = record.get("upid"), record.get("cmdline")
        if not upid:
            return
        if isinstance(cmdline, list):  # JSON Lines: the arguments as they were
            self.cmdlines[upid] = " ".join(escape_argument(arg) for arg in cmdline)
        elif isinstance(cmdline, str) and cmdline.startswith("["):
            self.cmdlines[upid] = cmdline  # W3C: read back only when a row needs it (command_line())
        if record.get("user"):
            self.users[upid] = record["user"]

    def command_line(self, upid: str | None) -> str | None:
        text = self.cmdlines.get(upid) if upid else None
        if text is None or not text.startswith("["):
            return text
        try:  # the W3C processes.log writes a Python list literal
            arguments = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return escape_field(text)
        self.cmdlines[upid] = text = " ".join(escape_argument(str(arg)) for arg in arguments)
        return text


def escape_argument(argument: str) -> str:
    """One argument of a command line, printable: quoted where it holds a space, escaped like a field otherwise."""
    if argument and argument.isprintable() and " " not in argument and "'" not in argument:
        return argument
    return "'" + "".join(_escape_char(char) if not char.isprintable() or char in "\\'" else char
                         for char in argument) + "'"


class RowBuilder:
    """A log's lines joined into rows, one per connection, as they stream: a row is given
    out once its connection closed, so memory holds the connections open at once."""

    def __init__(self, reader: LogReader):
        self.reader = reader
        self.open: dict[tuple, dict] = {}  # (netns, prot, laddr, lport, raddr, rport) -> its row so far
        self.ended: OrderedDict[tuple, float] = OrderedDict()  # the same -> when its connection ended

    def add(self, record: dict) -> list[Row]:
        """Take one connection record; return the rows it ended: its own when it closed,
        and the one before it when another connection began on the same addresses."""
        try:
            at = self.reader.time(str(record.get("ts") or record["timestamp"]))
        except (KeyError, ValueError):
            self.reader.skipped["corrupt lines"] += 1
            return []
        key = tuple(text_value(record.get(name)) for name in ("netns", "prot", "laddr", "lport", "raddr", "rport"))
        event, status = record.get("event"), str(record.get("status") or "-")
        place = STATUS_PLACE.get(status, 2)
        ended = []
        row = self.open.get(key)
        if row is not None and (event == "open" or (event is None and place < row["place"])):
            ended.append(self._row(self.open.pop(key)))  # another connection on the same addresses
            row = None
        if row is None:
            if status in LEFTOVER_STATUSES and text_value(record.get("upid")) is None and (
                    at - self.ended.get(key, -math.inf) <= LEFTOVER_SECONDS):
                return ended  # the connection's leftover, met again by a lognet started since
            row = self.open[key] = {"first": at, "place": place, "record": {}}
            firstseen = text_value(record.get("firstseen"))
            if firstseen is not None:
                with contextlib.suppress(ValueError):  # a firstseen unreadable: its line's time stands
                    row["first"] = min(at, self.reader.time(firstseen))
        kept = row["record"]
        for name, value in record.items():
            if value is not None and value != "-":  # a TIME_WAIT line's '-' keeps the owner seen before
                kept[name] = value
        kept["status"] = status
        row["last"], row["place"] = at, max(row["place"], place)
        if event == "close" or (event is None and status in ENDED_STATUSES):
            row["closed"] = at
            ended.append(self._row(self.open.pop(key)))
            put_latest(self.ended, key, at, ENDED_KEPT)
        return ended

    def rest(self) -> Iterator[Row]:
        """The rows still open at the end of the logs."""
        rows, self.open = self.open, {}
        return (self._row(row) for row in rows.values())

    @staticmethod
    def _row(row: dict) -> Row:
        r, closed = row["record"], row.get("closed")
        try:
            duration = float(r["duration"]) if "duration" in r else (
                closed - row["first"] if closed is not None else None)
        except (TypeError, ValueError):
            duration = None
        return Row(row["first"], row["last"], closed, duration, str(r.get("prot", "-")),
                   text_value(r.get("direction")), text_value(r.get("laddr")), int_value(r.get("lport")),
                   text_value(r.get("raddr")), int_value(r.get("rport")), text_value(r.get("rhost")),
                   text_value(r.get("upid")), text_value(r.get("user")), int_value(r.get("txbytes")),
                   int_value(r.get("rxbytes")), text_value(r.get("attrib")), r["status"], text_value(r.get("netns")))


def upid_parts(upid: str | None) -> tuple[str | None, int | None]:
    """The name and pid of an upid ('name|pid|create_time')."""
    if not upid:
        return None, None
    name, _, rest = upid.partition("|")
    pid = rest.partition("|")[0]
    return (name if name != "-" else None), (int(pid) if pid.isdigit() else None)


def since_time(text: str, now: float, utc: bool) -> float:
    """--since and --until: a duration ago ('90s', '30m', '2h', '7d', '1w') or a timestamp
    ('2026-12-05 08:00:00', the W3C form, or ISO 8601). ValueError for anything else."""
    text = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text)
    if match:
        return now - float(match.group(1)) * DURATION_UNITS[match.group(2)]
    if len(text) == 10:  # a date alone: its midnight
        text += " 00:00:00"
    if len(text) == 19 and text[10] in " T|":  # no offset: the log's own clock, as its lines
        return report_time(f"{text[:10]}|{text[11:]}", utc)
    return report_time(text, utc)


class RowFilter(NamedTuple):
    """What `lognet report` keeps: every filter given must hold."""

    raddr: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    rhost: str | None = None
    process: str | None = None
    pid: int | None = None
    port: int | None = None  # the remote port, as raddr is the remote address
    lport: int | None = None
    user: str | None = None
    direction: str | None = None
    since: float | None = None
    until: float | None = None

    def needle(self) -> str | None:
        """Text every line of a kept connection holds, where there is one (an exact --raddr)."""
        if self.raddr is None or self.raddr.num_addresses != 1:
            return None
        return str(self.raddr.network_address)

    def keeps(self, row: Row) -> bool:
        if self.raddr is not None:
            try:
                if row.raddr is None or ipaddress.ip_address(row.raddr.removeprefix("::ffff:")
                                                             if "." in row.raddr else row.raddr) not in self.raddr:
                    return False
            except ValueError:
                return False
        if self.rhost is not None and not any(
                name == self.rhost or name.endswith("." + self.rhost) for name in (row.rhost or "").split(",")):
            return False
        name, pid = upid_parts(row.upid)
        if self.process is not None and name != self.process:
            return False
        if self.pid is not None and pid != self.pid:
            return False
        if self.port is not None and row.rport != self.port:
            return False
        if self.lport is not None and row.lport != self.lport:
            return False
        if self.user is not None and row.user != self.user:
            return False
        if self.direction is not None and row.direction != self.direction:
            return False
        end = row.closed if row.closed is not None else row.lastseen
        if self.since is not None and end < self.since:
            return False
        return self.until is None or row.firstseen <= self.until


def report_rows(reader: LogReader, connections: list[str], keep: RowFilter) -> Iterator[Row]:
    """The rows of the connection logs, in the order their connections closed, then those still open."""
    builder = RowBuilder(reader)
    for path in connections:
        for record in reader.records(path):
            yield from (row for row in builder.add(record) if keep.keeps(row))
    yield from (row for row in builder.rest() if keep.keeps(row))


def row_values(row: Row, processes: Processes, iso: bool = False) -> dict:
    """A row's columns as the report prints them."""
    name, pid = upid_parts(row.upid)
    return {"firstseen": report_stamp(row.firstseen, iso),
            "closed": report_stamp(row.closed, iso) if row.closed is not None else None,
            "duration": None if row.duration is None else round(row.duration, 3), "prot": row.prot,
            "direction": row.direction, "laddr": row.laddr, "lport": row.lport, "raddr": row.raddr,
            "rport": row.rport, "rhost": row.rhost, "name": name, "pid": pid,
            "user": row.user or processes.users.get(row.upid or ""), "txbytes": row.txbytes, "rxbytes": row.rxbytes,
            "attrib": row.attrib, "status": row.status, "netns": row.netns,
            "cmdline": processes.command_line(row.upid)}


def report_stamp(seconds: float, iso: bool = False) -> str:
    """A time as a report prints it: '2026-12-05 08:00:00' (local time), or ISO 8601 with its offset."""
    if iso:
        return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def summarize(rows: Iterable[Row], by: tuple[str, ...]) -> Iterator[dict]:
    """One summary a group (process, peer, or both): its connections, bytes, first and last seen."""
    groups: dict[tuple, list] = {}
    for row in rows:
        name, _ = upid_parts(row.upid)
        key = tuple(name if part == "process" else row.raddr for part in by)
        group = groups.get(key)
        end = row.closed if row.closed is not None else row.lastseen
        if group is None:
            groups[key] = [1, row.txbytes or 0, row.rxbytes or 0, row.firstseen, end]
        else:
            group[0] += 1
            group[1] += row.txbytes or 0
            group[2] += row.rxbytes or 0
            group[3] = min(group[3], row.firstseen)
            group[4] = max(group[4], end)
    for key, (count, sent, received, first, last) in sorted(groups.items(), key=lambda item: -item[1][0]):
        yield {**{"name" if part == "process" else "peer": value for part, value in zip(by, key)},
               "connections": count, "txbytes": sent, "rxbytes": received,
               "firstseen": report_stamp(first), "lastseen": report_stamp(last)}


def shown(value) -> str:
    """A value in a table: '-' when missing."""
    return "-" if value is None else str(value)


class ReportOutput:
    """Rows printed as a table (its widths set from the first TABLE_SAMPLE rows, fitted to
    a terminal's width there), or as JSON Lines, CSV or TSV with every field complete."""

    def __init__(self, out, fmt: str, columns: tuple[str, ...], width: int | None):
        self.out, self.fmt, self.columns, self.width = out, fmt, columns, width
        self.sample: list[dict] | None = [] if fmt == "table" else None
        self.widths: dict[str, int] = {}
        if fmt in ("csv", "tsv"):
            self.writer = csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
            self.writer.writerow(columns)

    def write(self, values: dict) -> None:
        if self.fmt == "jsonl":
            self.out.write(json.dumps({name: values.get(name) for name in self.columns}) + "\n")
        elif self.fmt in ("csv", "tsv"):
            self.writer.writerow(["" if values.get(name) is None else values[name] for name in self.columns])
        elif self.sample is not None:
            self.sample.append(values)
            if len(self.sample) >= TABLE_SAMPLE:
                self._flush_sample()
        else:
            self._table_row(values)

    def _flush_sample(self) -> None:
        sample, self.sample = self.sample or [], None
        columns = list(self.columns)
        self.widths = {name: max([len(REPORT_HEADINGS[name])] + [len(shown(v.get(name))) for v in sample])
                       for name in columns}
        if self.width is not None:  # a terminal: give up columns, then cut the last, to fit
            for name in NARROW_DROPS:  # the last column, cut to fit, counts at its least
                least = min(self.widths[columns[-1]], TABLE_LAST_LEAST)
                if sum(self.widths[c] + 2 for c in columns[:-1]) + least <= self.width:
                    break
                if name in columns and name != columns[-1]:
                    columns.remove(name)
            last, before = columns[-1], sum(self.widths[c] + 2 for c in columns[:-1])
            self.widths[last] = max(1, min(self.widths[last], self.width - before))
        self.columns = tuple(columns)
        self._table_row({name: REPORT_HEADINGS[name] for name in columns})  # a heading is cut like a value
        for values in sample:
            self._table_row(values)

    def _table_row(self, values: dict) -> None:
        cells = []
        for name in self.columns:
            text, width = shown(values.get(name)), self.widths[name]
            if len(text) > width and name == self.columns[-1] and self.width is not None:
                text = text[:width - 1] + "…"
            right = name in ("duration", "lport", "rport", "pid", "txbytes", "rxbytes", "connections")
            cells.append(text.rjust(width) if right else text.ljust(width))
        self.out.write("  ".join(cells).rstrip() + "\n")

    def close(self) -> None:
        if self.sample is not None:
            self._flush_sample()
        self.out.flush()


def is_processes_log(path: str) -> bool:
    """Whether a named log is a processes.log (its #Fields, or a JSON object with a cmdline),
    from its first lines; a connections log otherwise (what is neither fails when read)."""
    with open_log_text(path) as f:
        try:
            for line in itertools.islice(f, 8):
                if line.startswith("#Fields:"):
                    return line.split()[1:] == " ".join(PROCESS_FIELDS).split()
                if line.startswith("{"):
                    return '"cmdline"' in line
        except (OSError, EOFError) as exc:  # not gzip after all, or cut short
            raise unreadable(path, exc) from None
    return False


def report_paths(logs: list[str]) -> tuple[list[str], list[str]]:
    """The connection logs and processes logs to read: those named, told apart by their
    content, or by default lognet's default logs (or the per-user folder's), each with its
    rotated siblings, oldest first. Named connection logs without a processes log take the
    processes.log beside the first, with its siblings, where there is one."""
    if not logs:
        folder = DEFAULT_LOG_DIR
        if not os.path.exists(DEFAULT_CONNECTIONS_LOG) and os.path.exists(
                os.path.join(fallback_log_dir(), "connections.log")):
            folder = fallback_log_dir()
        return rotated_logs(os.path.join(folder, "connections.log")), [
            path for path in rotated_logs(os.path.join(folder, "processes.log")) if os.path.exists(path)]
    processes = [path for path in logs if is_processes_log(path)]
    connections = [path for path in logs if path not in processes]
    if not connections:
        raise ReportError(f"{logs[0]}: a processes log only: name a connections log too", EXIT_NO_FILE)
    if not processes:
        beside = os.path.join(os.path.dirname(connections[0]), "processes.log")
        processes = [path for path in rotated_logs(beside) if os.path.exists(path)]
    return connections, processes


def run_report(args: argparse.Namespace) -> int:
    """lognet report: read the logs, print the rows (or summaries); return the exit status."""
    keep = RowFilter(args.raddr, args.rhost, args.process, args.pid, args.port, args.lport, args.user,
                     args.direction, args.since, args.until)
    reader = LogReader(utc=args.utc, needle=keep.needle())
    logs, process_logs = report_paths(args.logs)
    known = Processes()
    for path in process_logs:
        for record in reader.records(path):
            known.learn(record)
    rows = report_rows(reader, logs, keep)
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() and args.format == "table" else None
    if args.by:
        by = tuple(args.by.split(","))
        output = ReportOutput(sys.stdout, args.format, tuple("name" if part == "process" else "peer" for part in by)
                              + SUMMARY_COLUMNS, width)
        for values in summarize(rows, by):
            output.write(values)
    else:
        output = ReportOutput(sys.stdout, args.format, REPORT_COLUMNS, width)
        for row in rows:
            output.write(row_values(row, known, iso=args.format == "jsonl"))
    output.close()
    if reader.skipped:
        warn("report skipped " + ", ".join(f"{count} {why}" for why, count in sorted(reader.skipped.items())))
    return 0


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
  lognet --fields +event,txbytes,rxbytes --omit-loopback-conns   # bytes of each connection off this host
  lognet --fields +rhost,netns,container # the name each remote address was resolved from; containers
  lognet --engine psutil -i 1        # poll psutil.net_connections() only, as on macOS and the BSDs
  lognet --max-cpu 5                 # a busy server: over 5% of a core, shed work and count what was skipped
  tail -f /var/log/netlog/connections.log   # watch it live
  lognet report --raddr 203.0.113.80 # the logs read back, a row a connection (see lognet report --help)
  # crontab -e (as root): the folder is made first, since lognet is not yet there to make it
  @reboot mkdir -p -m 0750 /var/log/netlog && /usr/local/bin/lognet -i 1 -q >>/var/log/netlog/lognet.err 2>&1
"""


def number_argument(convert: Callable[[str], float], least: float, above: bool) -> Callable[[str], float]:
    """An argparse type: a finite number (a whole one when convert is int) above least, or
    at least least: number_argument(float, 0, above=True)('0') fails with 'must be above 0'."""
    kind = "whole number" if convert is int else "number"
    bound = f"above {least:g}" if above else f"{least:g} or more"

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind}: {text!r}") from None
        if not ((value > least) if above else (value >= least)) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {bound}: {text!r}")
        return value
    return parse


def seconds(text: str) -> float:
    """A number of seconds, with or without its unit: '3', '0.2', '3s'."""
    return float(text[:-1] if text.endswith("s") else text)


positive_float = number_argument(float, 0, above=True)
positive_seconds = number_argument(seconds, 0, above=True)
non_negative_seconds = number_argument(seconds, 0, above=False)
positive_int = number_argument(int, 1, above=False)


def cpu_percent(text: str) -> float:
    """argparse type: a share of one core in percent, above 0 and at most 100."""
    value = positive_float(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be 100 or less (percent of one core): {text!r}")
    return value


def syslog_address(text: str) -> tuple[str, str]:
    """argparse type: '/dev/log' (a local socket), 'host:514' or 'udp://host:514', 'tcp://host:514';
    an IPv6 address in brackets, '[::1]:514'. The port is 514 when left out."""
    if text.startswith("/"):
        return ("unix", text)
    transport, scheme, rest = text.partition("://")
    if not scheme:
        transport, rest = "udp", text
    if transport not in ("udp", "tcp"):
        raise argparse.ArgumentTypeError(f"unknown transport {transport!r}: use udp:// or tcp://")
    if rest.startswith("["):
        host, bracket, port = rest[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise argparse.ArgumentTypeError(f"not [IPv6 address]:port: {text!r}")
        port = port[1:]
    elif rest.count(":") > 1:
        raise argparse.ArgumentTypeError(f"write an IPv6 address in brackets, as [::1]:514: {text!r}")
    else:
        host, _, port = rest.partition(":")
    if not host or not all(c.isalnum() or c in ".-_:%" for c in host):
        raise argparse.ArgumentTypeError(f"not a socket path or host:port: {text!r}")
    port = port or "514"
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"not a port (1 to 65535): {port!r} in {text!r}")
    return (transport, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


def log_path(text: str) -> str:
    """argparse type: a log path; '-' is standard output, and '' is refused, not taken as the default."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: give a file, or - for standard output")
    return text


def field_list(text: str) -> tuple[str, ...]:
    """argparse type: 'a,b,c' chooses connections.log's fields; '+a,b' adds them to the original eight."""
    append = text.startswith("+")
    names = [name.strip() for name in text[append:].split(",")]
    known = CONNECTION_FIELDS + EXTRA_FIELDS
    for name in names:
        if not name:
            raise argparse.ArgumentTypeError(f"an empty field name: {text!r}")
        if name not in known:
            raise argparse.ArgumentTypeError(f"unknown field {name!r} (choose from {', '.join(known)})")
    fields = (CONNECTION_FIELDS if append else ()) + tuple(names)
    if len(set(fields)) != len(fields):
        raise argparse.ArgumentTypeError(f"each field once: {text!r}")
    return fields


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (exit 2) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of how sockets are found, and of the work that costs."""
    parser.add_argument("--engine", choices=("auto", *ENGINES), default="auto",
                        help="how sockets are found: netlink (Linux's sock_diag, with a watcher between polls and "
                             "the kernel's close events), psutil (net_connections(), polls only, everywhere); "
                             "auto: netlink on Linux, else psutil (default)")
    parser.add_argument("--watch", type=non_negative_seconds, default=DEFAULT_WATCH, metavar="SECONDS",
                        help=f"netlink engine: look for new sockets and their owners this often between polls "
                             f"(default {DEFAULT_WATCH:g}; 0: no watcher, polls only)")
    parser.add_argument("--netns", choices=("all", "own"), default="all",
                        help="netlink engine: which network namespaces to watch: all that have a process "
                             "(containers too; default), or lognet's own only (as the psutil engine sees)")
    parser.add_argument("--max-cpu", type=cpu_percent, default=DEFAULT_MAX_CPU, metavar="PERCENT",
                        help=f"CPU budget, in percent of one core (default {DEFAULT_MAX_CPU:g}): over it under a "
                             f"flood (sockets opening or closing at {FLOOD_RATE} a second or more), lognet sheds "
                             f"work: first the flood's own connections, up to {ISOLATED_MAX} groups (a service's or "
                             "peer's address and port), summarized with their process while every other connection "
                             "keeps its lines; for a flood with no such group, full polls, which loses nothing, then "
                             "the watcher's dumps and the kernel's "
                             "events, then decoding "
                             "close events, which are counted and summarized, then TCP's close events, whose closes "
                             "the kernel's counters count; 100: never")
    parser.add_argument("--kernel-events", choices=("auto", "on", "off"), default="auto",
                        help="netlink engine: name the process of every connect, accept and UDP sender from the "
                             "kernel's tracepoint events (perf_event_open; root, see README): "
                             "auto: where allowed, else say why once and poll (default); on: or fail; off: never")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; the original's short options keep their spelling."""
    parser = ArgumentParser(
        prog="lognet",
        description="Log every network connection on this host, with the process that owns it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-i", "--interval", type=positive_seconds, default=DEFAULT_INTERVAL, metavar="I",
                        help=f"interval (in seconds) for connection enumeration (default: {DEFAULT_INTERVAL:g}s)")
    parser.add_argument("-clog", "--connections-log", type=log_path, metavar="CLOG",
                        help=f"output file for connections log (default: {DEFAULT_CONNECTIONS_LOG})")
    parser.add_argument("-plog", "--processes-log", type=log_path, metavar="PLOG",
                        help=f"output file for processes list (default: {DEFAULT_PROCESSES_LOG})")
    parser.add_argument("-ipv", "--ip-version", type=int, choices=(4, 6),
                        help="filters by internet protocol version (if omitted, it includes both)")
    parser.add_argument("-p", "--protocol", choices=("udp", "tcp"),
                        help="filters by protocol (if omitted, it includes both)")
    parser.add_argument("--omit-self-conns", action="store_true",
                        help="omits connections without remote address")
    parser.add_argument("--omit-privnet-conns", action="store_true",
                        help="omits connections to private networks (RFC 1918, also IPv4-mapped IPv6)")
    parser.add_argument("--omit-loopback-conns", action="store_true",
                        help="omits connections to loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x)")
    add_engine_arguments(parser)
    parser.add_argument("-n", "--count", type=positive_int, metavar="N",
                        help="stop after N polls and exit: 0, or 1 when lines could not be written "
                             "(default: run until stopped)")
    parser.add_argument("--utc", action="store_true", help="timestamps in UTC instead of local time")
    parser.add_argument("--format", choices=tuple(FORMATS), default="w3c",
                        help="w3c: the original's W3C-style lines (default); jsonl: one JSON object per line")
    parser.add_argument("--fields", type=field_list, metavar="LIST",
                        help="connections.log's fields, comma-separated; a leading + adds to the default eight: "
                             f"+event,duration,direction (extra fields: {', '.join(EXTRA_FIELDS)})")
    parser.add_argument("--stats-interval", type=positive_seconds, metavar="SECONDS",
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


REPORT_EXAMPLES = """\
examples:
  lognet report                                  # every connection in the default logs, rotated ones too
  lognet report --raddr 203.0.113.80             # who connected to it, when, and how many bytes
  lognet report --lport 22 --direction in        # who connected to this host's port 22
  lognet report --raddr 10.0.0.0/8 --since 2h    # connections to 10/8 in the last two hours
  lognet report --rhost example.com --process curl   # curl's connections to example.com and its subdomains
  lognet report --by process,peer                # who talks to whom: connections and bytes
  lognet report --format jsonl ./c.log ./p.log | jq -c 'select(.txbytes > 1000000)'
"""


def build_report_parser() -> argparse.ArgumentParser:
    """The argument parser of `lognet report`."""
    parser = ArgumentParser(
        prog="lognet report",
        description="Read lognet's logs back as one row per connection: its process and command line, "
                    "when it opened and closed, and the bytes each way.",
        epilog=REPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="*", metavar="LOG",
                        help="connections and processes logs, W3C or JSON Lines, rotated ones (.gz) too, oldest "
                             f"first (default: {DEFAULT_CONNECTIONS_LOG} and {DEFAULT_PROCESSES_LOG} with their "
                             "rotated siblings)")
    parser.add_argument("--raddr", type=address_network, metavar="ADDRESS[/BITS]",
                        help="only connections to or from this remote address, or network")
    parser.add_argument("--rhost", metavar="NAME", help="only connections whose remote host name is NAME or ends .NAME")
    parser.add_argument("--process", metavar="NAME", help="only this process name's connections")
    parser.add_argument("--pid", type=number_argument(int, 0, above=True), help="only this pid's connections")
    parser.add_argument("--port", type=number_argument(int, 0, above=True),
                        help="only connections to or from this remote port (with --raddr: that service)")
    parser.add_argument("--lport", type=number_argument(int, 0, above=True),
                        help="only connections on this local port (a service of this host: its clients)")
    parser.add_argument("--user", metavar="NAME", help="only this user's connections")
    parser.add_argument("--direction", choices=("in", "out", "listen"), help="only connections made this way")
    parser.add_argument("--since", metavar="WHEN", help="only connections open at or after WHEN: a time "
                        "('2026-12-05 08:00:00', or a date) or a duration ago (90s, 30m, 2h, 7d, 1w)")
    parser.add_argument("--until", metavar="WHEN", help="only connections seen at or before WHEN")
    parser.add_argument("--by", choices=("process", "peer", "process,peer", "peer,process"),
                        help="one row per process, peer (remote address) or both: connections, bytes, first and "
                             "last seen")
    parser.add_argument("--format", choices=("table", "jsonl", "csv", "tsv"), default="table",
                        help="an aligned table (default; fitted to a terminal's width), or JSON Lines, CSV or TSV "
                             "with every field complete")
    parser.add_argument("--utc", action="store_true", help="the W3C logs' timestamps are UTC (lognet ran with --utc)")
    return parser


def address_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An argparse type: an address or a network in CIDR form."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address or a network: {text!r}") from None


def report_main(argv: list[str]) -> int:
    """`lognet report`; return the exit status."""
    parser = build_report_parser()
    args = parser.parse_args(argv)
    now = time.time()
    for name in ("since", "until"):
        if getattr(args, name) is not None:
            try:
                setattr(args, name, since_time(getattr(args, name), now, args.utc))
            except ValueError:
                parser.error(f"argument --{name}: not a time or a duration: {getattr(args, name)!r}")
    try:
        return run_report(args)
    except ReportError as exc:
        print(f"lognet: error: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:  # the reader is gone (| head): nothing is left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def parse_args(argv: list[str] | None = None) -> tuple[Config, tuple[bool, bool]]:
    """Parse argv into a Config, and which of the two log paths are defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fields and args.format == "jsonl":
        parser.error("argument --fields: only for --format w3c (a JSON Lines object always has every field)")
    config = Config(
        interval=args.interval,
        count=args.count,
        kind=KINDS[(args.ip_version, args.protocol)],
        engine=args.engine,
        watch=args.watch,
        netns=args.netns,
        omit_self_conns=args.omit_self_conns,
        omit_privnet_conns=args.omit_privnet_conns,
        omit_loopback_conns=args.omit_loopback_conns,
        connections_log=args.connections_log or DEFAULT_CONNECTIONS_LOG,
        processes_log=args.processes_log or DEFAULT_PROCESSES_LOG,
        utc=args.utc,
        format=args.format,
        fields=args.fields or CONNECTION_FIELDS,
        stats_interval=args.stats_interval,
        syslog=args.syslog,
        syslog_facility=args.syslog_facility,
        quiet=args.quiet,
        max_cpu=args.max_cpu,
        kernel_events=args.kernel_events,
    )
    return config, (args.connections_log is None, args.processes_log is None)


##############################################################################
# main
##############################################################################

def main(argv: list[str] | None = None) -> int:
    """Run lognet from the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # reads logs: psutil is not needed
        return report_main(argv[1:])
    if psutil is None:
        import sysconfig
        # A distribution's own Python (PEP 668) refuses pip: its package manager has psutil.
        print("lognet: error: the psutil module is missing; install it with: " + (
            "apt-get install python3-psutil (or your distribution's package of psutil)"
            if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
            else f"{sys.executable} -m pip install psutil"), file=sys.stderr)
        return 1
    config, defaulted = parse_args(argv)
    signals = Signals()
    signals.install()
    try:
        outputs = open_outputs(config, defaulted)
        budget = CpuBudget(config.max_cpu, config.interval) if config.max_cpu < 100 else None
        source = open_source(config, budget)
        poller = Poller(config, source, outputs, budget=budget)
        watcher = Watcher(source, config.watch, budget) if config.watch and source.watches else None
        status = StatusLine(sys.stderr, outputs) if sys.stderr.isatty() and not config.quiet else None
        try:
            if watcher:
                watcher.start()
            run(config, poller, signals=signals, status=status)
            if watcher:
                watcher.stop()
            poller.finish()
        finally:
            if watcher:
                watcher.stop()
            poller.close()
            source.close()
            if status:
                status.close(poller)
    except LognetError as exc:
        print(f"lognet: error: {exc}", file=sys.stderr)
        return 1
    except OutputClosed:
        return 0  # the reader of standard output is gone: nothing is left to say
    lost = poller.lost()
    for name, count in lost.items():
        warn(f"{count} lines never reached {name}", "error")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())

