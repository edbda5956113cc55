"""Shared fixtures: psutil-like tuples for unit tests, real processes for integration tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

import lognet

# The system tools some tests drive (logrotate, rsyslogd) live in sbin, which a PATH such as
# PATH=/usr/bin:/bin lacks.
for _sbin in ("/usr/sbin", "/sbin"):
    if _sbin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + _sbin

ROOT = Path(__file__).resolve().parent.parent
LOGNET = ROOT / "lognet.py"
HERE = Path(__file__).resolve().parent
HOLDER = HERE / "holder.py"

# psutil's own shapes, built here rather than imported from its private modules.
addr = namedtuple("addr", "ip port")
sconn = namedtuple("sconn", "fd family type laddr raddr status pid")


def make_sconn(laddr=("127.0.0.1", 8080), raddr=(), status="LISTEN", pid=100, fd=3,
               family=socket.AF_INET, type=socket.SOCK_STREAM):
    """A psutil-like sconn; raddr=() means no peer, as psutil reports it."""
    return sconn(fd, family, type, addr(*laddr), addr(*raddr) if raddr else (), status, pid)


def make_conn(*args, **kw):
    """lognet's Connection for the sconn that make_sconn(*args, **kw) builds, as the psutil engine maps it."""
    return lognet.connection_from_sconn(make_sconn(*args, **kw))


def require_root(why: str) -> None:
    """Skip where root is missing, but never on CI, which runs as root."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI runs as root, yet this test is not root: {why}")
    pytest.skip(f"needs root: {why}")


def require_tool(name: str, package: str) -> None:
    """Skip where a system tool is missing, but never on CI, where tests/install-deps.sh installs it."""
    if shutil.which(name):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing on CI: tests/install-deps.sh installs {package}")
    pytest.skip(f"{name} not installed (package {package}; tests/install-deps.sh installs it)")


SYSTEM_PYTHON = "/usr/bin/python3"  # one that the user nobody may run, with Debian's python3-psutil
NOBODY = 65534


@contextmanager
def nobody_home():
    """A folder of the user nobody's, with copies of lognet.py and holder.py: nobody cannot
    enter root's folders, where the checkout may be."""
    require_root("setpriv to drop to the user nobody")
    if subprocess.run([SYSTEM_PYTHON, "-c", "import psutil"], capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("python3-psutil is missing on CI: tests/install-deps.sh installs it")
        pytest.skip(f"{SYSTEM_PYTHON} has no psutil (Debian package python3-psutil)")
    home = Path(tempfile.mkdtemp(prefix="lognet-nobody-", dir="/tmp"))
    try:
        os.chmod(home, 0o755)
        shutil.copy(LOGNET, home / "lognet.py")
        shutil.copy(HOLDER, home / "holder.py")
        os.chown(home, NOBODY, NOBODY)
        yield home
    finally:
        shutil.rmtree(home)


def as_nobody(*command, caps: str = "") -> list[str]:
    """command run as nobody, with only the given capabilities ('+sys_ptrace,...') as ambient ones."""
    ambient = [f"--inh-caps={caps}", f"--ambient-caps={caps}"] if caps else ["--inh-caps=-all"]
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *ambient, *map(str, command)]


def events_refused() -> str:
    """The one line a run without the capabilities that the kernel's events need says of them."""
    if os.path.ismount("/sys/kernel/tracing"):
        need = "CAP_PERFMON and CAP_DAC_READ_SEARCH"
    else:
        need = "CAP_SYS_ADMIN to mount tracefs (/sys/kernel/tracing is not mounted)"
    return (f"lognet: warning: kernel events are not available (not permitted: they need root, or {need}); "
            "the owners of short connections are found by polling only\n")


class Nobody:
    """Runs lognet and holders as the user nobody, from a folder of nobody's."""

    uid = NOBODY

    def __init__(self, home: Path):
        self.home = home

    def lognet(self, *args, caps: str = "") -> list[str]:
        """The command that runs lognet.py as nobody with these capabilities."""
        return as_nobody(SYSTEM_PYTHON, self.home / "lognet.py", *args, caps=caps)

    def holder_options(self) -> dict:
        """The options of the holder fixture that start a holder as nobody."""
        return {"prefix": as_nobody(), "python": SYSTEM_PYTHON, "script": self.home / "holder.py"}


@pytest.fixture
def nobody():
    """Nobody, with a home that holds copies of lognet.py and holder.py; root is needed."""
    with nobody_home() as home:
        yield Nobody(home)


def upid_of(pid: int, name: str) -> str:
    """The upid lognet should write for a live process, from psutil's create_time."""
    return f"{name}|{pid}|{psutil.Process(pid).create_time():.2f}"


def read_lines(path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def data_lines(path) -> list[str]:
    """The log's lines without W3C directives."""
    return [line for line in read_lines(path) if not line.startswith("#")]


def w3c_rows(path) -> list[dict]:
    """The data lines of a W3C log as dicts, named by the #Fields directive above each."""
    names, rows = None, []
    # whole lines only: one that lognet is writing as the test reads is left for the next read
    for line in Path(path).read_text(encoding="utf-8").split("\n")[:-1]:
        if line.startswith("#Fields: "):
            names = line[len("#Fields: "):].split(" ")
        elif not line.startswith("#"):
            values = line.split(" ")
            assert len(values) == len(names), line
            rows.append(dict(zip(names, values)))
    return rows


def wait_for(predicate, timeout=15.0, step=0.05):
    """Poll predicate until it returns something true, for at most timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def lognet_command(*args) -> list[str]:
    return [sys.executable, str(LOGNET), *map(str, args)]


def run_lognet(*args, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    """Run lognet.py to completion and capture its output."""
    return subprocess.run(lognet_command(*args), capture_output=True, text=True, timeout=timeout, **kwargs)


class Holder:
    """A running tests/holder.py and the ports it printed."""

    def __init__(self, args, prefix=(), python=sys.executable, script=HOLDER):
        self.proc = subprocess.Popen([*prefix, str(python), str(script), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"holder did not start: {args}")
        self.info = json.loads(line)
        self.pid = self.info["pid"]
        self.cmdline = [str(python), str(script), *args]

    def send(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def holder():
    """Factory: start a holder process with the given arguments; all are stopped afterwards."""
    started = []

    def start(*args, **how):
        started.append(Holder([str(a) for a in args], **how))
        return started[-1]

    yield start
    for h in started:
        h.stop()


@pytest.fixture(params=["netlink", "psutil"])
def engine(request):
    """Each engine in turn: the tests that take this fixture run against both."""
    return request.param


@pytest.fixture
def tcp_pair():
    """A real established TCP pair on loopback: (listener, client, server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    yield listener, client, server
    for s in (client, server, listener):
        s.close()


class Marker:
    """An established loopback pair held by the test: the first poll logs its client end,
    in either format. The barrier for "lognet's first poll is done"; a log file that exists
    is none (lognet opens its logs before it polls)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(self.listener.getsockname())
        self.server, _ = self.listener.accept()
        self.port = self.client.getsockname()[1]
        server_port = self.listener.getsockname()[1]
        self.texts = (f" 127.0.0.1 {self.port} 127.0.0.1 {server_port} ",
                      f'"laddr":"127.0.0.1","lport":{self.port},"raddr":"127.0.0.1","rport":{server_port},')

    def close(self):
        for sock in (self.client, self.server, self.listener):
            sock.close()


@pytest.fixture
def marker():
    """A Marker pair in this process's network namespace, closed afterwards."""
    pair = Marker()
    yield pair
    pair.close()


@pytest.fixture
def many_pairs():
    """400 established TCP pairs on loopback, held by this process: 801 lines, about 80 kB,
    more than a pipe holds. Yields the client ports, as strings."""
    listener = socket.create_server(("127.0.0.1", 0))
    sockets = [listener]
    for _ in range(400):
        sockets.append(socket.create_connection(listener.getsockname()))
        sockets.append(listener.accept()[0])
    yield {str(client.getsockname()[1]) for client in sockets[1::2]}
    for sock in sockets:
        sock.close()


class Lognet:
    """lognet.py running in the background, its stderr in a file."""

    def __init__(self, tmp_path, *args, clog=None, plog=None, prefix=(), program=None):
        self.clog = Path(clog or tmp_path / "connections.log")
        self.plog = Path(plog or tmp_path / "processes.log")
        self.errfile = tmp_path / "lognet.err"
        program = program or lognet_command()  # or another way to run lognet.py, such as Nobody.lognet()
        with open(self.errfile, "w") as err:
            self.proc = subprocess.Popen([*prefix, *program, *map(str, args), "-clog", str(self.clog),
                                          "-plog", str(self.plog)], stdout=subprocess.DEVNULL, stderr=err)

    def wait_for_line(self, text):
        """Wait until connections.log holds text."""
        wait_for(lambda: self.clog.exists() and text in self.clog.read_text())

    def inside(self) -> tuple[str, ...]:
        """The nsenter prefix that runs a command in lognet's network namespace, once lognet
        runs in one of its own (started behind unshare -n: until then, /proc shows the old one)."""
        wait_for(lambda: os.stat(f"/proc/{self.proc.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino)
        return ("nsenter", f"--net=/proc/{self.proc.pid}/ns/net")

    def wait_for_poll(self, marker: Marker):
        """Wait until a poll has logged marker's pair, opened before lognet started: the
        first poll is done, with the engine made before it (its close events joined)."""
        wait_for(lambda: self.clog.exists() and any(text in self.clog.read_text() for text in marker.texts))

    @property
    def stderr(self):
        return self.errfile.read_text()

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def background(tmp_path):
    """Factory: start lognet.py in the background; whatever is still running is killed afterwards."""
    started = []

    def start(*args, **kw):
        started.append(Lognet(tmp_path, *args, **kw))
        return started[-1]

    yield start
    for ln in started:
        ln.kill()


# ---------------------------------------------------------------- scripted polls for unit tests

class FakeClock:
    """A monotonic clock that moves only when slept on."""

    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


class ScriptedSource(lognet.Source):
    """A source that returns one prepared snapshot per poll; a poll can cost clock time.

    known maps pid to ProcessInfo; reuse maps a poll index to processes that replace
    known ones from that poll on; running_by_poll lists the pids alive at each poll
    (default: every known pid)."""

    def __init__(self, snapshots, processes, clock=None, cost=0.0, budget=None):
        super().__init__(budget=budget)
        self.snapshots = list(snapshots)
        self.known = dict(processes)
        self.clock, self.cost = clock, cost
        self.calls = 0  # connections() calls: the polls so far
        self.looked_up = []
        self.seen = set()
        self.opens = []  # the kernel's TCP open counter, one reading per call
        self.reuse = {}
        self.running_by_poll = None
        self.arrivals = {}  # poll index -> [(connection, epoch seen)] found between polls, as a watcher would
        self.names = {}  # (pid, remote ip) -> the name that pid asked for; (None, remote ip) -> the latest

    owners_visible = False  # as for a user who is not root: an ownerless socket may be another user's

    def between_polls(self):
        return self.arrivals.get(self.calls - 1, []), []

    def connections(self):
        if self.budget is not None:
            self.budget.level()  # the level is the source's to decide, as an engine's
        replaced = self.reuse.get(self.calls)
        if replaced is not None:
            self.known[replaced.pid] = replaced
        self.calls += 1
        if self.clock:
            self.clock.now += self.cost
        return self.snapshots.pop(0)

    def tcp_opens(self):
        return self.opens.pop(0) if self.opens else None

    def rhost(self, conn, pid):
        return self.names.get((pid, conn.raddr[0])) or self.names.get((None, conn.raddr[0]))

    def is_running(self, process):
        if process is None:
            return False
        alive = self.known if self.running_by_poll is None else self.running_by_poll[self.calls - 1]
        return process.pid in alive and self.known.get(process.pid) == process

    def processes(self, pids):
        self.looked_up.append(sorted(pids))
        found = {pid: self.known[pid] for pid in pids}
        new = [found[pid] for pid in sorted(pids) if found[pid] not in self.seen]
        self.seen.update(found.values())
        return found, new
