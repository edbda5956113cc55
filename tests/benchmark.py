"""lognet's benchmark: what a poll costs against psutil's own call, whether that
stays flat as connections come and go, which connections a poll catches, and
the shortest interval lognet sustains. All load is on 127.0.0.1.

    python3 tests/benchmark.py [--processes 50] [--pairs 1000] [--json FILE]

It prints a table and writes the same figures as JSON. It is not part of the
test suite: timings on a shared machine are figures to read, not assertions.
Costs are CPU seconds (user + system) of the process doing the work; A and B
runs are interleaved (A B A B ...) so that machine noise falls on both.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from load import Load, stop_process  # noqa: E402

import lognet  # noqa: E402

LOGNET = HERE.parent / "lognet.py"
AGAINST: Path | None = None  # another lognet.py, run beside this one in the flood's rounds (--against)
CLI_POLLS = 40
RAW = "import psutil, sys\nfor _ in range(int(sys.argv[2])): psutil.net_connections(sys.argv[1])\n"


def run_cpu(argv: list[str]) -> tuple[float, float]:
    """Run argv to completion; return its (CPU seconds, wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - start


WATCH: list[str] = []  # --watch for the netlink engine's runs, when the benchmark is told one


def lognet_argv(tmp: Path, *args, engine: str = "psutil") -> list[str]:
    watch = WATCH if engine == "netlink" else []
    return [sys.executable, str(LOGNET), "--engine", engine, *watch, *map(str, args),
            "-clog", str(tmp / "c.log"), "-plog", str(tmp / "p.log")]


def cli_overhead(tmp: Path, kind_args: list[str], kind: str, polls: int, rounds: int) -> dict:
    """Per-poll CPU of the real CLI against a script that calls psutil as often.

    Each side runs once with `polls` polls and once with 1; the difference,
    divided by polls - 1, leaves out interpreter start-up and the first poll,
    which logs every live connection once."""
    lognet_costs, raw_costs = [], []
    raw = [sys.executable, "-c", RAW, kind]
    for _ in range(rounds):
        many, _ = run_cpu(lognet_argv(tmp, "-n", polls, "-i", "0.001", *kind_args))
        one, _ = run_cpu(lognet_argv(tmp, "-n", 1, *kind_args))
        lognet_costs.append((many - one) / (polls - 1))
        many, _ = run_cpu(raw + [str(polls)])
        one, _ = run_cpu(raw + ["1"])
        raw_costs.append((many - one) / (polls - 1))
    lognet_ms, raw_ms = statistics.median(lognet_costs) * 1e3, statistics.median(raw_costs) * 1e3
    return {"lognet_ms": lognet_ms, "raw_ms": raw_ms, "ratio": lognet_ms / raw_ms}


class TimedSource(lognet.PsutilSource):
    """The real source, noting the CPU time of each net_connections() call."""

    def connections(self, kind):
        start = time.process_time()
        sconns = psutil.net_connections(kind)
        self.last_call = time.process_time() - start  # mapping them to lognet's records is lognet's own work
        return [lognet.connection_from_sconn(sconn) for sconn in sconns]


class InProcess:
    """lognet's Poller with the real psutil source, writing to real files."""

    def __init__(self, tmp: Path, kind: str):
        self.kind = kind
        config = lognet.Config(kind=kind, connections_log=str(tmp / "inproc-c.log"),
                               processes_log=str(tmp / "inproc-p.log"))
        self.source = TimedSource()
        self.poller = lognet.Poller(config, self.source, lognet.open_outputs(config))
        self.lines = self.poller.poll()  # the first poll logs every live connection

    def poll(self) -> int:
        lines = self.poller.poll()
        self.lines += lines
        return lines

    def overhead(self, rounds: int) -> dict:
        """Interleave raw psutil calls (A) and whole polls (B): CPU and wall medians.

        Also, within each poll B, lognet's own CPU beside the psutil call it made:
        `own_ratio` is (poll) / (its psutil call), free of the noise between calls."""
        a_cpu, b_cpu, b_wall, inner = [], [], [], []
        for _ in range(rounds):
            t = time.process_time()
            psutil.net_connections(self.kind)
            a_cpu.append(time.process_time() - t)
            t, w = time.process_time(), time.perf_counter()
            self.poll()
            b_cpu.append(time.process_time() - t)
            b_wall.append(time.perf_counter() - w)
            inner.append(self.source.last_call)
        raw_ms, poll_ms = statistics.median(a_cpu) * 1e3, statistics.median(b_cpu) * 1e3
        own_ms = statistics.median(b - i for b, i in zip(b_cpu, inner)) * 1e3
        inner_ms = statistics.median(inner) * 1e3
        return {"raw_ms": raw_ms, "lognet_ms": poll_ms, "ratio": poll_ms / raw_ms, "own_ms": own_ms,
                "own_ratio": (inner_ms + own_ms) / inner_ms, "poll_wall_ms": statistics.median(b_wall) * 1e3}


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def flatness(tmp: Path, inproc: InProcess, checkpoints: list[int], rounds: int, max_seconds: float) -> list[dict]:
    """Churn connections until the in-process poller has seen each checkpoint's
    number come and go; there, pause the churn and measure ratio and RSS."""
    load = Load()
    cli = subprocess.Popen(lognet_argv(tmp / "cli", "-i", "0.05", "-p", "tcp"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    churner = load.start("churn", "--rate", 1500, "--lifetimes", "0.3", "--seconds", max_seconds)
    results = []
    start, base = time.monotonic(), inproc.lines
    try:
        for target in checkpoints:
            while inproc.lines - base < target and time.monotonic() - start < max_seconds:
                inproc.poll()
            # Pause the churn, and the CLI lognet, so that only A and B run while measured.
            for proc in (churner, cli):
                proc.send_signal(signal.SIGSTOP)
            time.sleep(0.5)
            inproc.poll()
            figures = inproc.overhead(rounds)
            figures.update(churned=inproc.lines - base, inproc_rss_mb=rss_mb(os.getpid()),
                           cli_rss_mb=rss_mb(cli.pid), cli_lines=sum(1 for _ in open(tmp / "cli" / "c.log")),
                           seconds=time.monotonic() - start)
            results.append(figures)
            for proc in (churner, cli):
                proc.send_signal(signal.SIGCONT)
    finally:
        for proc in (churner, cli):
            proc.send_signal(signal.SIGCONT)
        cli.terminate()
        cli.wait(timeout=30)
        load.stop()
    return results


def capture(tmp: Path, interval: float, multiples: list[float], per_lifetime: int) -> list[dict]:
    """Run the CLI at interval while a churner opens connections of known lifetimes;
    return the share of each lifetime that lognet logged with the churner's pid."""
    load = Load()
    record = tmp / "churn.txt"
    lifetimes = [round(m * interval, 4) for m in multiples]
    rate = 4 / interval  # four arrivals an interval on average, at random phases
    seconds = per_lifetime * len(lifetimes) / rate + max(lifetimes) + 1
    (tmp / "cap").mkdir(exist_ok=True)
    cli = subprocess.Popen(lognet_argv(tmp / "cap", "-i", interval, "-p", "tcp", "--fields", "+event,attrib",
                                       "--stats-interval", 3600), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    churner = load.start("churn", "--rate", rate, "--lifetimes", ",".join(map(str, lifetimes)),
                         "--seconds", seconds, "--record", record)
    churner.wait(timeout=seconds + 60)
    time.sleep(2 * interval)
    cli.terminate()
    cli.wait(timeout=30)
    load.stop()
    seen, seen_any = set(), set()
    for line in lognet_lines(tmp / "cap" / "c.log"):
        fields = line.split(" ")
        seen_any.add(fields[3])
        if fields[9].strip() == "pid" and fields[7].split("|")[1] == str(churner.pid):  # owner seen directly
            seen.add(fields[3])
    remark = [line for line in open(tmp / "cap" / "c.log") if line.startswith("#Remark: coverage")][-1]
    records = [line.split() for line in open(record)]
    once = {port for port, n in Counter(r[0] for r in records).items() if n == 1}  # a port used twice is ambiguous
    results = []
    for multiple, lifetime in zip(multiples, lifetimes):
        ports = [r[0] for r in records if float(r[1]) == lifetime and r[0] in once]
        results.append({"lifetime_intervals": multiple, "lifetime_s": lifetime, "connections": len(ports),
                        "captured_with_process": sum(p in seen for p in ports) / len(ports),
                        "captured_any_owner": sum(p in seen_any for p in ports) / len(ports)})
    return {"by_lifetime": results, "lognet_remark": remark.strip()}


def lognet_lines(path: Path):
    with open(path) as f:
        return [line.rstrip("\n") for line in f if not line.startswith("#")]


def sustained(tmp: Path, interval: float, polls: int) -> dict:
    """Wall time of the CLI doing polls at interval, against the schedule's polls - 1 intervals."""
    _, one = run_cpu(lognet_argv(tmp, "-n", 1, "-p", "tcp"))
    cpu, wall = run_cpu(lognet_argv(tmp, "-n", polls, "-i", interval, "-p", "tcp"))
    return {"interval_s": interval, "polls": polls, "schedule_s": (polls - 1) * interval,
            "wall_minus_startup_s": wall - one, "cpu_s": cpu}



# ---------------------------------------------------------------- the Linux engine against psutil's

SHORT_CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
time.sleep(float(sys.argv[2]))
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00")
s.close()
"""


def task_cpu_ns(pid: int) -> dict[str, int]:
    """CPU nanoseconds each thread of pid has run (the first field of its schedstat)."""
    times = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            times[task] = int(f.read().split()[0])
    return times


def steady_cpu(argv: list[str], seconds: float, settle: float = 4.0, during=None) -> float:
    """CPU share of one core that argv takes over `seconds` once it has run for `settle`
    seconds: start-up left out by measuring after it, summed over its threads, in ns.
    `during(proc)` runs once the start-up is over, before the window opens, if given.
    The process is stopped with SIGTERM and must exit 0."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle)
        if during:
            during(proc)
        before, start = task_cpu_ns(proc.pid), time.monotonic()
        time.sleep(seconds)
        after, wall = task_cpu_ns(proc.pid), time.monotonic() - start
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
    if status != 0:
        raise RuntimeError(f"{argv} exited {status}")
    if before.keys() - after.keys():
        raise RuntimeError(f"{argv}: a thread ended in the window, its CPU would be missed")
    return sum(after[task] - before.get(task, 0) for task in after) / 1e9 / wall


def idle_cpu(tmp: Path, seconds: float, rounds: int) -> dict:
    """CPU share of one core with nothing changing: the netlink engine at its defaults
    against the psutil engine at -i 1, and --against's netlink engine where given,
    interleaved; start-up left out."""
    netlink = lognet_argv(tmp, engine="netlink")
    runs = [("netlink", netlink), ("psutil -i 1", lognet_argv(tmp, "-i", 1))]
    if AGAINST:
        runs.append(("against", [netlink[0], str(AGAINST), *netlink[2:]]))
    shares = {label: [] for label, _ in runs}
    for _ in range(rounds):
        for label, argv in runs:
            shares[label].append(steady_cpu(argv, seconds))
    return {label: statistics.median(values) for label, values in shares.items()}


# The in-process measures read the engine's parts; with --lognet they may be another
# version's, laid out before or after the engine was split into its parts (1.1).
def poll(source) -> list:
    """One poll's sockets, however this version of the engine is asked."""
    return source.connections() if hasattr(source, "table") else source.connections("inet")


def dump_everything_next(source) -> None:
    """Make the next poll dump every namespace, also where the kernel's counters stood still."""
    getattr(source, "table", source).signatures = {}


def sockets_dumped(source) -> int:
    if hasattr(source, "table"):
        return sum(map(len, source.table.records.values()))
    return len(source.records)


def other_namespace(source) -> tuple:
    """A namespace the engine watches beside its own: (inode, what watches it)."""
    namespaces = source.namespaces.by_inode if hasattr(source, "table") else source.namespaces
    return next((inode, ns) for inode, ns in namespaces.items() if inode != source.netns)


def poll_cost(rounds: int) -> dict:
    """CPU of one full poll of the netlink engine (dump, owners, records), made to dump even
    where the kernel's counters stood still, against one psutil.net_connections() call,
    interleaved, medians."""
    source = lognet.NetlinkSource("inet")
    tracker = lognet.Tracker(awaits_kernel_closes=True)
    try:
        tracker.update(poll(source))
        a, b = [], []
        for _ in range(rounds):
            t = time.process_time()
            psutil.net_connections("inet")
            a.append(time.process_time() - t)
            dump_everything_next(source)  # a full poll: the dump is not skipped for counters that stood still
            t = time.process_time()
            tracker.update(poll(source), 0.0, *source.between_polls())
            b.append(time.process_time() - t)
        connections = sockets_dumped(source)
    finally:
        source.close()
    psutil_ms, netlink_ms = statistics.median(a) * 1e3, statistics.median(b) * 1e3
    return {"sockets": connections, "psutil_ms": psutil_ms, "netlink_ms": netlink_ms, "ratio": netlink_ms / psutil_ms}


PRIVATE_NETNS = ("unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")


def namespaces_cost(tmp: Path, count: int, pairs: int, rounds: int, idle_seconds: float) -> dict:
    """With `count` more network namespaces of `pairs` loopback pairs each (unshare -n): the
    CPU of one full poll watching every namespace against one watching lognet's own only
    (--netns own), interleaved, medians; and the CPU with nothing changing at the defaults."""
    load = Load()
    try:
        for _ in range(count):
            load.start("hold", pairs, prefix=PRIVATE_NETNS)
        sources = {"all": lognet.NetlinkSource("inet"), "own": lognet.NetlinkSource("inet", namespaces=False)}
        times: dict[str, list[float]] = {"all": [], "own": []}
        try:
            for source in sources.values():
                poll(source)
            for _ in range(rounds):
                for which, source in sources.items():
                    dump_everything_next(source)  # a full poll: every namespace dumped
                    t = time.process_time()
                    poll(source)
                    times[which].append(time.process_time() - t)
            counted = {which: (len(source.namespaces), sockets_dumped(source)) for which, source in sources.items()}
            # one of them read as text, as where joining it is refused (no CAP_SYS_ADMIN)
            inode, joined = other_namespace(sources["all"])
            text = lognet.Namespace(inode, sources["all"].pairs, joined.pids)
            try:
                text_times = []
                for _ in range(rounds):
                    t = time.process_time()
                    text.text_records(sources["all"].pairs)
                    text_times.append(time.process_time() - t)
            finally:
                text.close()
        finally:
            for source in sources.values():
                source.close()
        idle = []
        for _ in range(3):
            idle.append(steady_cpu(lognet_argv(tmp, engine="netlink"), idle_seconds))
    finally:
        load.stop()
    all_ms, own_ms = (statistics.median(times[which]) * 1e3 for which in ("all", "own"))
    extra = counted["all"][0] - counted["own"][0]
    return {"namespaces": counted["all"][0], "sockets": counted["all"][1], "own_sockets": counted["own"][1],
            "all_ms": all_ms, "own_ms": own_ms, "per_namespace_ms": (all_ms - own_ms) / extra,
            "text_ms": statistics.median(text_times) * 1e3,
            "idle_cpu": statistics.median(idle)}


def names_cost(tmp: Path, seconds: float, rounds: int) -> dict:
    """CPU share of the netlink engine at its defaults, with names (+rhost) and without, in a
    network namespace of its own (unshare -n, --netns own) under other UDP traffic and under
    DNS answers, all on that namespace's loopback; interleaved, medians, start-up left out."""
    anchor = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && echo ready && exec cat"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    results = []
    try:
        assert anchor.stdout.readline() == "ready\n"
        inside = ["nsenter", f"--net=/proc/{anchor.pid}/ns/net"]
        for label, load_args in (("nothing else", None), ("20,000 other UDP packets a second", ["--rate", 20000]),
                                 ("500 DNS answers a second", ["--rate", 500, "--dns"])):
            load = Load()
            try:
                if load_args:
                    load.start("udp", *load_args, "--seconds", 3600, prefix=inside)
                shares: dict[str, list[float]] = {"without": [], "with": []}
                for _ in range(rounds):
                    for names, extra in (("without", []), ("with", ["--fields", "+rhost"])):
                        argv = inside + lognet_argv(tmp, "--netns", "own", *extra, engine="netlink")
                        shares[names].append(steady_cpu(argv, seconds))
            finally:
                load.stop()
            without, with_names = (statistics.median(shares[names]) for names in ("without", "with"))
            results.append({"load": label, "without": without, "with": with_names, "beyond": with_names - without})
    finally:
        anchor.stdin.close()
        anchor.wait(timeout=10)
    return {"runs": results}


def churn_cpu(tmp: Path, rate: float, seconds: float) -> dict:
    """CPU share of the netlink engine at its defaults while a churner opens `rate` connections a second."""
    load = Load()
    (tmp / "c.log").unlink(missing_ok=True)
    try:
        cpu_share = steady_cpu(lognet_argv(tmp, "--stats-interval", "3600", engine="netlink"), seconds,
                               during=lambda proc: (load.start("churn", "--rate", rate, "--lifetimes", "0.05",
                                                               "--seconds", seconds + 5), time.sleep(1)))
    finally:
        load.stop()
    remark = [line for line in (tmp / "c.log").read_text().splitlines() if line.startswith("#Remark: coverage")][-1]
    return {"rate": rate, "seconds": seconds, "cpu_share": cpu_share,
            "skipped": sum(int(n) for n in re.findall(r"skipped (\d+)", remark)), "shed": "over the CPU" in remark}


def churn_cost(tmp: Path, version: Path, rate: float, seconds: float, *args) -> dict:
    """One version of lognet (the netlink engine, with args) while load.py churns `rate`
    connections a second, each closed after 50 ms with RST: its CPU over `seconds` once the
    churn has run 3 s, per socket the kernel opened in that window (its TCP opens, active and
    passive: each connection's two ends); then, the churn stopped and its last closes read,
    lognet's accounting of the kernel's closes against the kernel's opens over the whole run
    (they differ by the churner's listener, which closes too but is no open)."""
    log = tmp / "c.log"
    for path in (log, tmp / "p.log"):
        path.unlink(missing_ok=True)
    argv = lognet_argv(tmp, "--stats-interval", "3600", *args, engine="netlink")
    proc = subprocess.Popen([argv[0], str(version), *argv[2:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = Load()
    try:
        wait_until(lambda: log.exists() and "#Fields" in log.read_text(), 30)  # started
        time.sleep(2 * lognet.DEFAULT_INTERVAL)  # its first polls are done
        opens_at_start = tcp_opens()
        churner = load.start("churn", "--rate", rate, "--lifetimes", "0.05", "--seconds", seconds + 4)
        time.sleep(3)
        before, opens_before, start = task_cpu_ns(proc.pid), tcp_opens(), time.monotonic()
        time.sleep(seconds)
        after, sockets, wall = task_cpu_ns(proc.pid), tcp_opens() - opens_before, time.monotonic() - start
        churner.wait(timeout=60)
    finally:
        load.stop()
    time.sleep(2 * lognet.DEFAULT_INTERVAL)  # the last closes reach a poll
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=60) != 0:
        raise RuntimeError(f"{version} exited {proc.returncode}")
    cpu_seconds = sum(after[task] - before.get(task, 0) for task in after) / 1e9
    return {"version": str(version), "rate": rate, "args": list(args), "seconds": wall, "cpu_share": cpu_seconds / wall,
            "sockets": sockets, "us_per_socket": cpu_seconds / sockets * 1e6,
            "kernel_tcp_opens": tcp_opens() - opens_at_start, **coverage_counts(log)}


def cost_part(tmp: Path, rounds: int, long_seconds: float) -> dict:
    """lognet's cost per connection, this version and --against's, interleaved: per socket at
    500 connections a second with nothing shed (--max-cpu 100); 500 a second at its defaults
    for long_seconds (nothing may go unlogged); 2,000 a second at its defaults."""
    versions = [LOGNET] + ([AGAINST] if AGAINST else [])
    runs = []
    for turn in range(rounds):
        for version in versions if turn % 2 == 0 else versions[::-1]:
            runs.append({"measure": "per socket", **churn_cost(tmp, version, 500, 20, "--max-cpu", "100")})
    for version in versions:
        runs.append({"measure": "defaults, 500/s", **churn_cost(tmp, version, 500, long_seconds)})
        runs.append({"measure": "defaults, 2000/s", **churn_cost(tmp, version, 2000, 30)})
    medians = {str(version): statistics.median(r["us_per_socket"] for r in runs
                                               if r["measure"] == "per socket" and r["version"] == str(version))
               for version in versions}
    return {"rounds": rounds, "runs": runs, "median_us_per_socket": medians}


def print_cost_report(c: dict) -> None:
    print()
    print("| load (RST close after 50 ms) | lognet | CPU | µs per socket | kernel TCP opens | "
          "closed (with process, without, skipped, unheard, lost) |")
    print("|---|---|---:|---:|---:|---|")
    for run in c["runs"]:
        which = "this" if run["version"] == str(LOGNET) else run["version"]
        settings = " ".join(run["args"]) or "defaults"
        print(f"| {run['rate']:.0f}/s, {settings}, {run['seconds']:.0f} s | {which} | {run['cpu_share']:.2%} | "
              f"{run['us_per_socket']:.1f} | {run['kernel_tcp_opens']:,} | {run['closed']:,} ({run['with_process']:,}, "
              f"{run['without']:,}, {run['skipped']:,}, {run['unheard']:,}, {run['lost']:,}) |")
    for version, median in c["median_us_per_socket"].items():
        which = "this version" if version == str(LOGNET) else version
        print(f"median CPU per socket at 500/s with --max-cpu 100, {which}: {median:.1f} µs "
              f"({c['rounds']} rounds)")


NGINX_CONF = """daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    log_format workers '$pid $remote_port';
    access_log {access_log};
    client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
    server {{ listen {host}:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
"""


def start_nginx(folder: Path, workers: int = 1, access_log: bool = False, host: str = "127.0.0.1"
                ) -> tuple[subprocess.Popen, int]:
    """nginx serving `return 200` on a free port of host (loopback's unless given), its files in
    folder; with access_log, each request's worker ($pid) and peer port in folder/nginx-access.log."""
    port = free_port()
    log = f"{folder}/nginx-access.log workers" if access_log else "off"
    (folder / "nginx.conf").write_text(NGINX_CONF.format(tmp=folder, host=host, port=port, workers=workers,
                                                         access_log=log))
    nginx = subprocess.Popen([shutil.which("nginx", path="/usr/sbin:/usr/bin"), "-c", str(folder / "nginx.conf"),
                              "-p", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return nginx, port


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tcp_opens() -> int:
    """The kernel's TCP opens in lognet's namespace (ActiveOpens + PassiveOpens): a TCP socket
    connected or accepted; every one of them is closed, and reported closed, once."""
    with open("/proc/net/snmp") as f:
        return sum(int(count) for name, count in zip(*(line.split() for line in f if line.startswith("Tcp:")))
                   if name in ("ActiveOpens", "PassiveOpens"))


def ab(port: int, requests: int, concurrency: int = 4) -> dict:
    """ApacheBench against nginx on 127.0.0.1: `requests` requests, `concurrency` at a time, each its own connection."""
    return ab_figures(subprocess.run(ab_argv(port, requests, concurrency), capture_output=True, text=True, timeout=600))


def ab_argv(port: int, requests: int, concurrency: int) -> list[str]:
    return ["ab", "-q", "-n", str(requests), "-c", str(concurrency), f"http://127.0.0.1:{port}/"]


def ab_figures(result) -> dict:
    """ab's requests a second and its seconds, from its finished run (returncode, stdout, stderr)."""
    figures = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    if result.returncode != 0 or int(figures["Failed requests"]) != 0:
        raise RuntimeError(f"ab failed: {result.stdout[-400:]} {result.stderr[-400:]}")
    return {"rps": float(figures["Requests per second"].split()[0]), "seconds": float(figures["Time taken for tests"]
                                                                                      .split()[0])}


def drain_time_wait(limit: float = 90.0) -> None:
    """Wait until the TIME_WAIT sockets of the last run are gone (60 s on Linux), so that
    every run starts as the first did."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with open("/proc/net/sockstat") as f:
            if int(f.read().split(" tw ", 1)[1].split()[0]) < 100:
                return
        time.sleep(2)


def flood_cost(tmp: Path, requests: int, rounds: int) -> dict:
    """nginx (Debian's nginx-light) serving `return 200`, and ab making `requests` requests 4
    at a time, about 20,000 new connections a second on this machine: ab's rate without
    lognet and with lognet at its defaults, interleaved; lognet's CPU while ab runs; and
    its accounting of the kernel's closes against the kernel's TCP opens."""
    for tool, package in (("nginx", "nginx-light"), ("ab", "apache2-utils")):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin"):
            raise RuntimeError(f"{tool} is missing: install {package} (sh tests/install-deps.sh does)")
    nginx, port = start_nginx(tmp)
    runs, filters = [], []
    try:
        time.sleep(1)
        ab(port, 1000)  # nginx is up and warm
        # without, with; with, without; ...: a drift of the machine's speed falls on each alike.
        # With --against, each round runs that lognet too, beside this one.
        versions = [LOGNET] + ([AGAINST] if AGAINST else [])
        for turn in range(rounds):
            order = [None, *versions] if turn % 2 == 0 else [*reversed(versions), None]
            for version in order:
                drain_time_wait()
                if version is None:
                    runs.append({"lognet": False, **ab(port, requests)})
                    continue
                argv = lognet_argv(tmp, "--stats-interval", "3600", engine="netlink")
                runs.append({**lognet_under_ab(tmp, port, requests, [argv[0], str(version), *argv[2:]]),
                             "version": str(version)})
        # The close events' filter in the kernel against the same filter in Python only, both
        # leaving out loopback: how many events reach Python, and what they cost.
        unfiltered = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import lognet; "
                      "lognet.close_filter = lambda config: None; sys.exit(lognet.main(sys.argv[1:]))")
        for label, argv in (("kernel", lognet_argv(tmp)), ("python", [sys.executable, "-c", unfiltered,
                                                                      str(LOGNET.parent), *lognet_argv(tmp)[2:]])):
            drain_time_wait()
            filters.append({"filter": label, **lognet_under_ab(tmp, port, requests, argv + [
                "--engine", "netlink", "--omit-loopback-conns", "--format", "jsonl", "--stats-interval", "3600"])})
    finally:
        nginx.terminate()
        nginx.wait(timeout=30)
    without = statistics.median(r["rps"] for r in runs if not r["lognet"])
    mine = [r for r in runs if r.get("version") == str(LOGNET)]
    with_lognet = statistics.median(r["rps"] for r in mine)
    report = {"requests": requests, "runs": runs, "rps_without": without, "rps_with": with_lognet,
              "ratio": with_lognet / without, "cpu_share": statistics.median(r["cpu_share"] for r in mine),
              "max_cpu": lognet.DEFAULT_MAX_CPU, "filters": filters}
    if AGAINST:
        theirs = [r for r in runs if r.get("version") == str(AGAINST)]
        report["against"] = {"lognet": str(AGAINST), "rps_with": statistics.median(r["rps"] for r in theirs),
                             "cpu_share": statistics.median(r["cpu_share"] for r in theirs)}
    return report


ISOLATION_TARGET = "192.0.2.80"  # the other process's 'remote' server, on the benchmark's own lo
# A client of a web server: `count` connections, each held `hold` seconds after its answer,
# `gap` seconds apart; it says its pid, then each local port.
HELD_CLIENT = """
import os, socket, sys, time
host, port, count, hold, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print(os.getpid(), flush=True)
for _ in range(count):
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(b"GET /lnbench-held HTTP/1.1\\r\\nHost: lnbench\\r\\n\\r\\n")
        conn.recv(4096)
        print(conn.getsockname()[1], flush=True)
        time.sleep(hold)
    time.sleep(gap)
"""


def other_connections(variant: str, port: int, count: int = 10) -> dict[tuple[str, str], str]:
    """Another process's connections to ISOLATION_TARGET:port, by its own record: (local
    port, remote port) -> its pid. '1 s' and '100 ms': one client holding each connection that
    long, one every 0.3 s more; 'curl': a curl run each, 0.3 s apart."""
    if variant == "curl":
        made = {}
        for _ in range(count):
            curl = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{local_port}",
                                     f"http://{ISOLATION_TARGET}:{port}/lnbench-curl"],
                                    stdout=subprocess.PIPE, text=True)
            made[(curl.communicate(timeout=30)[0].strip(), str(port))] = str(curl.pid)
            time.sleep(0.3)
        return made
    hold = {"1 s": 1.0, "100 ms": 0.1}[variant]
    pid, *ports = subprocess.run([sys.executable, "-c", HELD_CLIENT, ISOLATION_TARGET, str(port), str(count), str(hold),
                                  "0.3"], capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return {(local, str(port)): pid for local in ports}


def isolated_run(folder: Path, version: Path, port: int, target_port: int, requests: int, variant: str) -> dict:
    """One version of lognet at its defaults (--fields +event,attrib) while ab floods nginx on
    port, 8 at a time, and another process connects to the target meanwhile: ab's rate,
    lognet's CPU while ab ran, that process's connections logged with its pid, lognet's
    accounting against the kernel's TCP opens, and what its last statistics said it isolated."""
    log = folder / "c.log"
    for path in (log, folder / "p.log"):
        path.unlink(missing_ok=True)
    argv = lognet_argv(folder, "--fields", "+event,attrib", "--stats-interval", "3600", engine="netlink")
    proc = subprocess.Popen([argv[0], str(version), *argv[2:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: log.exists() and "#Fields" in log.read_text(), 30)
    time.sleep(2 * lognet.DEFAULT_INTERVAL)  # its first polls
    opens, before = tcp_opens(), psutil.Process(proc.pid).cpu_times()
    bench = subprocess.Popen(ab_argv(port, requests, 8), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the flood is on
    expected = other_connections(variant, target_port)
    out, err = bench.communicate(timeout=600)
    after = psutil.Process(proc.pid).cpu_times()
    run = ab_figures(subprocess.CompletedProcess(bench.args, bench.returncode, out, err))
    time.sleep(4)  # the last closes are read
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=60) != 0:
        raise RuntimeError(f"{version} exited {proc.returncode}")
    lines = log.read_text().splitlines()
    remark = [line for line in lines if line.startswith("#Remark: coverage")][-1]
    return {"version": str(version), "variant": variant, **run, "other": named_share(rows_of(log), expected),
            "cpu_share": (after.user + after.system - before.user - before.system) / run["seconds"],
            "kernel_tcp_opens": tcp_opens() - opens, **coverage_counts(log),
            "isolated": remark.split("; shedding: ")[1].split(";")[0] if "; shedding: " in remark else "",
            "paused": "close events paused" in remark}


def many_ports_run(folder: Path, version: Path, connections: int, listeners: int) -> dict:
    """A flood with no group to isolate: one process connecting to many ports of its own in
    turn. lognet's accounting against the kernel's TCP opens, and whether it paused."""
    log = folder / "c.log"
    for path in (log, folder / "p.log"):
        path.unlink(missing_ok=True)
    argv = lognet_argv(folder, "--stats-interval", "3600", engine="netlink")
    proc = subprocess.Popen([argv[0], str(version), *argv[2:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flood = subprocess.Popen([sys.executable, str(HERE / "load.py"), "flood", "--count", str(connections),
                              "--listeners", str(listeners)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        flood.stdout.readline()  # ready: its listeners are open
        wait_until(lambda: log.exists() and "#Fields" in log.read_text(), 30)
        time.sleep(2 * lognet.DEFAULT_INTERVAL)
        opens = tcp_opens()
        flood.stdin.write("go\n")
        flood.stdin.flush()
        done = int(flood.stdout.readline().split()[1])
    finally:
        stop_process(flood)  # its listeners close: one close each, and no open
    time.sleep(2 * lognet.DEFAULT_INTERVAL)
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=60) != 0:
        raise RuntimeError(f"{version} exited {proc.returncode}")
    remark = [line for line in log.read_text().splitlines() if line.startswith("#Remark: coverage")][-1]
    return {"version": str(version), "connections": done, "listeners": listeners,
            "kernel_tcp_opens": tcp_opens() - opens,
            **coverage_counts(log), "paused": "close events paused" in remark,
            "isolated": "; shedding: " in remark, "summaries": sum(1 for line in log.read_text().splitlines()
                                                                   if line.startswith("#Remark: skipped"))}


def isolation_part(tmp: Path, requests: int) -> dict:
    """The flood of issue 29: nginx (two workers) on 127.0.0.1 flooded by ab, 8 at a time,
    while another process connects to a web server on ISOLATION_TARGET (put on this
    namespace's lo): ab alone, then each version of lognet with each kind of other process;
    and a flood with no single group (many ports)."""
    if [name for _, name in socket.if_nameindex()] != ["lo"]:  # a namespace of its own has lo alone
        raise RuntimeError(f"the isolation measure puts {ISOLATION_TARGET} on lo: run the benchmark in a network "
                           "namespace of its own (unshare -n, as README's Performance says)")
    subprocess.run(["ip", "addr", "replace", f"{ISOLATION_TARGET}/32", "dev", "lo"], check=True)
    folder = tmp / "isolation"
    (folder / "remote").mkdir(parents=True)
    nginx, port = start_nginx(folder, workers=2)
    target, target_port = start_nginx(folder / "remote", host=ISOLATION_TARGET)
    versions = [LOGNET] + ([AGAINST] if AGAINST else [])
    runs = []
    try:
        time.sleep(1)
        ab(port, 1000)  # nginx is up and warm
        drain_time_wait()
        runs.append({"version": None, "variant": "ab alone", **ab(port, requests, 8)})
        for variant in ("1 s", "100 ms", "curl"):
            for version in versions:
                drain_time_wait()
                runs.append(isolated_run(folder, version, port, target_port, requests, variant))
        drain_time_wait()
        many = many_ports_run(folder, LOGNET, 100_000, 256)
    finally:
        for server in (nginx, target):
            server.terminate()
            server.wait(timeout=30)
    return {"requests": requests, "runs": runs, "many_ports": many, "max_cpu": lognet.DEFAULT_MAX_CPU}


# What the kernel does for lognet while a flood is isolated, with no lognet running: each piece
# is set up as lognet sets it up (the flood's group left out in the kernel), and nothing reads.
# iproute2's own listener of close events, printing each, is the peer to compare with.
FLOOR_RINGS, FLOOR_EVENTS, FLOOR_ISOLATED, FLOOR_SS = (
    "tracepoint rings", "close-event socket", "both, and the counting sockets", "ss -E -t -n > /dev/null")
FLOOR_SETUPS = ("nothing", FLOOR_RINGS, FLOOR_EVENTS, FLOOR_ISOLATED, FLOOR_SS)


def kernel_share(setup: str, group) -> list:
    """What lognet leaves open in the kernel while a flood group is isolated, as much as setup names."""
    held: list = []
    tcp_group = [lognet.DESTROY_GROUPS[socket.AF_INET, socket.IPPROTO_TCP]]
    if setup in (FLOOR_RINGS, FLOOR_ISOLATED):
        found = lognet.tracepoints({lognet.SOCK_STATE_TRACEPOINT, lognet.DESTROY_TRACEPOINT})
        for name, event_filter in ((lognet.SOCK_STATE_TRACEPOINT, lognet.STATE_FILTER),
                                   (lognet.DESTROY_TRACEPOINT, None),
                                   (lognet.SOCK_STATE_TRACEPOINT, lognet.CONNECT_FILTER)):
            held.append(lognet.TracepointRing(found[name], lognet.joined_filter(event_filter, group.trace_clause()),
                                              wakes=False))
    if setup in (FLOOR_EVENTS, FLOOR_ISOLATED):
        events = lognet.SockDiag()
        lognet.attach_filter(events.sock, lognet.endpoint_program(group.ends(), True, None))
        events.subscribe(tcp_group)
        held.append(events)
    if setup == FLOOR_ISOLATED:
        for end in group.ends():
            counter = lognet.SockDiag()
            lognet.attach_filter(counter.sock, lognet.endpoint_program([end], False, None))
            counter.subscribe(tcp_group, lognet.COUNTING_BUFFER)
            held.append(counter)
    if setup == FLOOR_SS:
        held.append(Listening(subprocess.Popen(["ss", "-E", "-t", "-n"], stdout=subprocess.DEVNULL)))
    return held


class Listening:
    """A listener of close events in a process of its own (ss -E): closed by ending it."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        time.sleep(0.5)  # it has joined the destroy groups

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def kernel_floor(tmp: Path, requests: int, rounds: int) -> dict:
    """The flood of the isolation measure (nginx, two workers; ab, 8 at a time), with no
    lognet at all: ab's rate beside each share of the kernel's work that an isolated flood
    still costs (FLOOR_SETUPS), interleaved. The best rate lognet could keep with each."""
    folder = tmp / "floor"
    folder.mkdir()
    nginx, port = start_nginx(folder, workers=2)
    group = lognet.FloodGroup(None, socket.AF_INET, socket.inet_aton("127.0.0.1"), port)
    rates: dict[str, list[float]] = {setup: [] for setup in FLOOR_SETUPS}
    try:
        time.sleep(1)
        ab(port, 1000)  # nginx is up and warm
        for turn in range(rounds):
            for setup in FLOOR_SETUPS if turn % 2 == 0 else reversed(FLOOR_SETUPS):
                drain_time_wait()
                held = kernel_share(setup, group)
                try:
                    rates[setup].append(ab(port, requests, 8)["rps"])
                finally:
                    for thing in held:
                        thing.close()
    finally:
        nginx.terminate()
        nginx.wait(timeout=30)
    return {"requests": requests, "rates": rates}


def print_floor_report(r: dict) -> None:
    alone = statistics.median(r["rates"]["nothing"])
    print()
    print(f"| nginx + ab -c 8 ({r['requests']:,} requests), no lognet; left open in the kernel | ab requests/s, "
          "median (of nothing) | each run |")
    print("|---|---:|---|")
    for setup, rates in r["rates"].items():
        print(f"| {setup} | {statistics.median(rates):,.0f} ({statistics.median(rates) / alone:.1%}) | "
              f"{', '.join(f'{rate:,.0f}' for rate in rates)} |")


def print_isolation_report(r: dict) -> None:
    alone = next(run["rps"] for run in r["runs"] if run["version"] is None)
    print()
    print(f"| nginx + ab -c 8 ({r['requests']:,} requests), another process's 10 connections | lognet | other "
          "process's connections with its pid (logged) | ab requests/s (of alone) | lognet CPU | kernel TCP opens | "
          "closed (with process, without, skipped, unheard, lost) | isolated at the end |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    print(f"| ab alone | | | {alone:,.0f} | | | | |")
    for run in r["runs"]:
        if run["version"] is None:
            continue
        which = "this" if run["version"] == str(LOGNET) else run["version"]
        o = run["other"]
        print(f"| {run['variant']} | {which} | {o['with_pid']} of {o['expected']} ({o['logged']}) | "
              f"{run['rps']:,.0f} ({run['rps'] / alone:.1%}) | {run['cpu_share']:.1%} | {run['kernel_tcp_opens']:,} | "
              f"{run['closed']:,} ({run['with_process']:,}, {run['without']:,}, {run['skipped']:,}, "
              f"{run['unheard']:,}, {run['lost']:,}){' paused' if run['paused'] else ''} | {run['isolated'] or '-'} |")
    m = r["many_ports"]
    print(f"many ports ({m['connections']:,} connections to {m['listeners']} listeners in turn): kernel TCP opens "
          f"{m['kernel_tcp_opens']:,}, closed {m['closed']:,} (with process {m['with_process']:,}, without "
          f"{m['without']:,}, skipped {m['skipped']:,}, unheard {m['unheard']:,}, lost {m['lost']:,}); "
          f"{'paused' if m['paused'] else 'not paused'}; {'isolated' if m['isolated'] else 'nothing isolated'}; "
          f"{m['summaries']:,} summaries")


def lognet_under_ab(tmp: Path, port: int, requests: int, argv: list[str]) -> dict:
    """ab's run with lognet (argv) running: ab's figures, lognet's CPU while ab ran, and its
    accounting of the kernel's closes (its last statistics) against the kernel's TCP opens."""
    log = tmp / "c.log"
    for path in (log, tmp / "p.log"):  # a log of the other format would be refused
        path.unlink(missing_ok=True)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)  # its first poll is done
    opens = tcp_opens()
    before = psutil.Process(proc.pid).cpu_times()
    run = ab(port, requests)
    after = psutil.Process(proc.pid).cpu_times()
    time.sleep(4)  # the last closes are read
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=60) != 0:
        raise RuntimeError(f"lognet exited {proc.returncode}")
    run.update(lognet=True, kernel_tcp_opens=tcp_opens() - opens,
               cpu_share=(after.user + after.system - before.user - before.system) / run["seconds"])
    lines = log.read_text().splitlines()
    if lines[0].startswith("{"):  # JSON Lines: the stats object
        stats = [json.loads(line) for line in lines if '"event":"stats"' in line][-1]
        tcp = stats["coverage"].get("tcp", {})
        return {**run, "close_events_read": stats["close_events_read"], "closed": tcp.get("closed", 0)}
    remark = [line for line in lines if line.startswith("#Remark: coverage")][-1]
    counts = {name: int(n) for name, n in re.findall(r"(closed|with process|without|skipped|unheard|lost) (\d+)",
                                                      remark.split(";")[0])}
    run.update({name.replace(" ", "_"): counts.get(name, 0) for name in
                ("closed", "with process", "without", "skipped", "unheard", "lost")}, remark=remark)
    return run


def netlink_rss(tmp: Path, checkpoints: list[int], rate: float) -> list[dict]:
    """RSS of the netlink engine at its defaults as connections churn past each checkpoint."""
    load = Load()
    record = tmp / "rss-churn.txt"
    (tmp / "rss").mkdir(exist_ok=True)
    cli = subprocess.Popen(lognet_argv(tmp / "rss", "-p", "tcp", engine="netlink"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    seconds = checkpoints[-1] / rate * 1.5 + 30
    load.start("churn", "--rate", rate, "--lifetimes", "0.02", "--seconds", seconds, "--record", record)
    results = []
    try:
        for target in checkpoints:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and sum(1 for _ in open(record)) < target:
                time.sleep(1)
            time.sleep(lognet.DEFAULT_INTERVAL * 2)  # a poll or two past it
            results.append({"churned": sum(1 for _ in open(record)), "rss_mb": rss_mb(cli.pid)})
    finally:
        load.stop()
        cli.terminate()
        cli.wait(timeout=30)
    return results


def capture_at_defaults(tmp: Path, lifetimes: list[float], per_lifetime: int, way: str) -> list[dict]:
    """Connections of known lifetimes to a listener of this process, each from a client
    port recorded here: from one long-running churner ('one process'), or from a new
    python3 process per connection, 0.1 s after the last one ended ('a process each'), or
    2 s after, when the host has been quiet long enough for the watcher to look less often
    ('a process each, after 2 s quiet'). Returns the share logged with the connecting
    process, and logged at all, by the netlink engine at its defaults."""
    folder = tmp / f"capture-{way.replace(' ', '-')}"
    folder.mkdir()
    cli = subprocess.Popen(lognet_argv(folder, "-p", "tcp", engine="netlink"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    made: list[tuple[str, float, int]] = []  # (client port, lifetime, pid)
    if way == "one process":
        load = Load()
        record = folder / "churn.txt"
        rate = 5.0
        churner = load.start("churn", "--rate", rate, "--lifetimes", ",".join(map(str, lifetimes)),
                             "--seconds", per_lifetime * len(lifetimes) / rate + 2, "--record", record)
        churner.wait(timeout=per_lifetime * len(lifetimes) / rate + 120)
        load.stop()
        made = [(line.split()[0], float(line.split()[1]), churner.pid) for line in open(record)]
    else:
        listener = __import__("socket").create_server(("127.0.0.1", 0), backlog=128)
        for lifetime in lifetimes * per_lifetime:
            client = subprocess.Popen([sys.executable, "-c", SHORT_CLIENT, str(listener.getsockname()[1]),
                                       str(lifetime)])
            server, peer = listener.accept()
            client.wait(timeout=30)
            server.close()
            made.append((str(peer[1]), lifetime, client.pid))
            time.sleep(2.0 if way.endswith("quiet") else 0.1)
        listener.close()
    time.sleep(lognet.DEFAULT_INTERVAL * 2)
    cli.terminate()
    cli.wait(timeout=30)
    lines = [line.split(" ") for line in lognet_lines(folder / "c.log")]
    with_process = {(f[3], f[7].split("|")[1]) for f in lines if f[7] != "-"}
    any_line = {f[3] for f in lines}
    results = []
    for lifetime in lifetimes:
        ours = [(port, pid) for port, life, pid in made if life == lifetime]
        results.append({"way": way, "lifetime_s": lifetime, "connections": len(ours),
                        "with_process": sum((port, str(pid)) in with_process for port, pid in ours) / len(ours),
                        "at_all": sum(port in any_line for port, _ in ours) / len(ours)})
    return results


# ---------------------------------------------------------------- nothing lost on a quiet host

def churn_record(record: Path) -> list[tuple[str, float, float, float]]:
    """load.py churn's own record of its connections: (client port, lifetime, opened, closed)."""
    return [(f[0], float(f[1]), float(f[2]), float(f[3])) for f in (line.split() for line in open(record))]


def rows_of(log: Path) -> list[dict]:
    """A W3C connections.log's lines as dicts, by its #Fields."""
    names, rows = [], []
    for line in log.read_text().splitlines():
        if line.startswith("#Fields: "):
            names = line[9:].split()
        elif line and not line.startswith("#"):
            rows.append(dict(zip(names, line.split(" "))))
    return rows


def coverage_counts(log: Path) -> dict:
    """The counts of the last coverage remark (netlink's): closed, with process, ..., lost."""
    remark = [line for line in log.read_text().splitlines() if line.startswith("#Remark: coverage")][-1]
    counts = {name.replace(" ", "_"): int(n) for name, n in
              re.findall(r"(closed|with process|without|skipped|unheard|lost) (\d+)", remark.split(";")[0])}
    return {name: counts.get(name, 0) for name in ("closed", "with_process", "without", "skipped", "unheard", "lost")}


PRIVATE_NETNS = ("unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")


def churn_under_lognet(folder: Path, engine: str, interval: float, churn_args: list, seconds: float,
                       held: tuple[int, int] | None = None) -> dict:
    """load.py churn with churn_args for `seconds`, under lognet (engine, -i interval, TCP, event
    and attrib), in a network namespace of their own (with `held` (processes, pairs each) of
    load.py hold beside them): each connection's ends, by the churner's own record, logged
    with the churner's pid or not; and lognet's accounting of the kernel's closes."""
    folder.mkdir()
    record = folder / "churn.txt"
    cli = subprocess.Popen([*PRIVATE_NETNS, *lognet_argv(folder, "-i", interval, "-p", "tcp", "--fields",
                                                         "+event,attrib", "--stats-interval", "3600", "--netns", "own",
                                                         engine=engine)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = os.stat("/proc/self/ns/net").st_ino
    wait_until(lambda: os.stat(f"/proc/{cli.pid}/ns/net").st_ino != host, 30)
    inside = ("nsenter", f"--net=/proc/{cli.pid}/ns/net")
    load = Load()
    try:
        load.hold(*(held or (1, 0)), prefix=inside)  # at least a listener: its line says a poll is done
        wait_until(lambda: (folder / "c.log").exists() and " LISTEN " in (folder / "c.log").read_text(), 30)
        churner = load.start("churn", *churn_args, "--seconds", seconds, "--record", record, prefix=inside)
        churner.wait(timeout=seconds + 60)
    finally:
        load.stop()
    time.sleep(max(3 * interval, 1.0))  # the last closes reach a poll
    cli.send_signal(signal.SIGTERM)
    cli.wait(timeout=60)
    rows = rows_of(folder / "c.log")
    # nsenter execs the churner: its pid is the one Popen started
    owned = {(r["lport"], r["rport"]) for r in rows if r["upid"].split("|")[1:2] == [str(churner.pid)]}
    made = churn_record(record)
    listener = next(r["lport"] for r in rows if r["status"] == "LISTEN" and r["upid"].split("|")[1:2] == [
        str(churner.pid)])
    result = {"engine": engine, "interval": interval, "connections": len(made), "by_lifetime": {}}
    for lifetime in sorted({m[1] for m in made}):
        ours = [m for m in made if m[1] == lifetime]
        ends = [(port, listener) for port, *_ in ours] + [(listener, port) for port, *_ in ours]
        result["by_lifetime"][lifetime] = {"ends": len(ends), "with_process": sum(end in owned for end in ends),
                                           "connections_with_process": sum(
                                               (port, listener) in owned and (listener, port) in owned
                                               for port, *_ in ours)}
    if engine == "netlink":
        result["closes"] = coverage_counts(folder / "c.log")
    return result


def wait_until(predicate, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("condition not met in time")
        time.sleep(0.05)


CLOSING_CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"x" * 1000)
got = 0
while got < 500:
    got += len(s.recv(500 - got))
time.sleep(0.1)
s.close()
print(sys.argv[2], time.time(), got, flush=True)
"""


def client_close_lines(tmp: Path, clients: int, interval: float) -> dict:
    """New client processes, each sending 1,000 bytes and receiving 500 over 100 ms, closing
    first (so its socket goes on in TIME_WAIT): how soon after each client's close (its own
    clock) its close line is in connections.log, and whether it has the client's own counts."""
    folder = tmp / "client-closes"
    folder.mkdir()
    log = folder / "c.log"
    cli = subprocess.Popen(lognet_argv(folder, "-i", interval, "-p", "tcp", "--fields", "+event,attrib,txbytes,rxbytes",
                                       engine="netlink"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) > 3, 30)
    listener = socket.create_server(("127.0.0.1", 0))
    latencies, exact, found = [], 0, 0
    try:
        for n in range(clients):
            client = subprocess.Popen([sys.executable, "-c", CLOSING_CLIENT, str(listener.getsockname()[1]), str(n)],
                                      stdout=subprocess.PIPE, text=True)
            server, (_, port) = listener.accept()
            data = b""
            while len(data) < 1000:
                data += server.recv(1000 - len(data))
            server.sendall(b"y" * 500)
            _, closed, _ = client.stdout.readline().split()
            client.wait(timeout=10)
            server.recv(1)  # the client's FIN
            server.close()
            deadline = time.time() + 3 * interval + 5
            line = None
            while time.time() < deadline and line is None:
                line = next((r for r in rows_of(log) if r["event"] == "close" and r["lport"] == str(port)), None)
                if line is None:
                    time.sleep(0.01)
            if line is not None:
                found += 1
                latencies.append(time.time() - float(closed))
                exact += (line["txbytes"], line["rxbytes"], line["upid"].split("|")[1:2]) == (
                    "1000", "500", [str(client.pid)])
    finally:
        listener.close()
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=60)
    return {"clients": clients, "interval": interval, "close_lines": found, "exact_bytes_and_pid": exact,
            "latency_median_s": statistics.median(latencies) if latencies else None,
            "latency_max_s": max(latencies) if latencies else None}


def trust_part(report: dict, tmp: Path, args) -> None:
    """A quiet host loses nothing: the quiet load at -i 0.2 and 0.05, beside the held load
    too; connections living two intervals, netlink against psutil; client close lines."""
    quiet = ["--rate", "3", "--lifetimes", "0.02,0.6", "--close", "normal"]
    held = (args.processes, args.pairs // args.processes)
    runs = []
    for label, interval, beside in (("quiet, -i 0.2", 0.2, None), ("quiet, -i 0.05", 0.05, None),
                                    ("quiet, -i 0.2, beside the held load", 0.2, held)):
        print(f"{label} ...", flush=True)
        runs.append({"label": label, **churn_under_lognet(tmp / f"quiet-{len(runs)}", "netlink", interval, quiet, 10,
                                                          beside)})
    print("two intervals beside the held load, each engine ...", flush=True)
    for engine in ("netlink", "psutil", "netlink", "psutil"):
        runs.append({"label": f"0.4 s connections beside the held load, {engine}",
                     **churn_under_lognet(tmp / f"two-intervals-{len(runs)}", engine, 0.2,
                                          ["--rate", "2", "--lifetimes", "0.4"], 12.5, held)})
    report["quiet"] = runs
    print("client close lines ...", flush=True)
    report["client_closes"] = client_close_lines(tmp, 20, lognet.DEFAULT_INTERVAL)


def print_trust_report(r: dict) -> None:
    print()
    print("| run | lifetime | connections | ends with their process | closed | skipped | unheard | lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in r["quiet"]:
        closes = run.get("closes", {})
        for lifetime, f in run["by_lifetime"].items():
            print(f"| {run['label']} | {float(lifetime) * 1e3:.0f} ms | {f['ends'] // 2} | "
                  f"{f['with_process']}/{f['ends']} | {closes.get('closed', '-')} | {closes.get('skipped', '-')} | "
                  f"{closes.get('unheard', '-')} | {closes.get('lost', '-')} |")
    c = r["client_closes"]
    print()
    latency = (f"after the client's close: median {c['latency_median_s']:.2f} s, at most {c['latency_max_s']:.2f} s"
               if c["close_lines"] else "none within three intervals and 5 s of the client's close")
    print(f"client close lines at -i {c['interval']:g}: {c['close_lines']}/{c['clients']} written, "
          f"{c['exact_bytes_and_pid']}/{c['clients']} with the client's pid and its own byte counts (1000/500); "
          f"{latency}")


def netlink_part(report: dict, tmp: Path, args) -> None:
    only = set(args.only.split(",")) if args.only else {"idle", "polls", "churn", "capture", "rss", "namespaces",
                                                        "names", "flood", "owners", "cost", "isolation", "floor"}
    report["watch"] = float(WATCH[1]) if WATCH else lognet.DEFAULT_WATCH
    if "idle" in only:
        print("the Linux engine: idle CPU ...", flush=True)
        report["idle"] = idle_cpu(tmp, args.idle_seconds, args.idle_rounds)
    if "polls" in only:
        print("full polls ...", flush=True)
        report["polls"] = [poll_cost(101)]
    if "churn" in only:
        print("200 new connections a second ...", flush=True)
        report["churn_cpu"] = churn_cpu(tmp, 200, 30)
    if "capture" in only:
        print("capture by lifetime ...", flush=True)
        lifetimes = [0.02, 0.05, 0.2, 1.0]
        report["capture_defaults"] = (capture_at_defaults(tmp, lifetimes, args.per_lifetime, "one process")
                                      + capture_at_defaults(tmp, lifetimes, args.per_lifetime // 2, "a process each")
                                      + capture_at_defaults(tmp, lifetimes[:3], args.per_lifetime // 5,
                                                            "a process each, after 2 s quiet"))
    if "namespaces" in only:
        print("20 more network namespaces ...", flush=True)
        report["namespaces"] = namespaces_cost(tmp, 20, 25, 101, args.idle_seconds)
    if "names" in only:
        print("names: DNS taps under other traffic and under answers ...", flush=True)
        report["names"] = names_cost(tmp, args.idle_seconds, args.idle_rounds)
    if "flood" in only:
        print("a flood: nginx and ab, without lognet and with it ...", flush=True)
        report["flood"] = flood_cost(tmp, args.flood_requests, args.flood_rounds)
    if "owners" in only:
        print("owners of short connections, against curl's, UDP clients' and nginx's own records ...", flush=True)
        report["owners"] = kernel_owners(tmp, 40, 20, 400)
    if "isolation" in only:
        print("a flood isolated: nginx and ab, and another process's connections ...", flush=True)
        report["isolation"] = isolation_part(tmp, args.flood_requests)
    if "floor" in only:
        print("the kernel's share of an isolated flood, without lognet ...", flush=True)
        report["floor"] = kernel_floor(tmp, args.flood_requests, args.flood_rounds)
    if "cost" in only:
        print("cost per connection: churn at 500 and 2,000 connections a second ...", flush=True)
        report["cost"] = cost_part(tmp, args.cost_rounds, args.cost_seconds)
    if "rss" in only:
        print("RSS while connections churn ...", flush=True)
        report["netlink_rss"] = netlink_rss(tmp, [int(x) for x in args.churn.split(",")], 1500)


UDP_ONE_SHOT = ("import os, socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "s.sendto(b'lnbench', ('127.0.0.1', int(sys.argv[1]))); print(os.getpid(), s.getsockname()[1])")


# A long-running client: fetches a URL every 0.3-1 s, and says its pid and each local port.
LONG_RUNNING = """
import http.client, os, random, sys, time
print(os.getpid(), flush=True)
for _ in range(int(sys.argv[2])):
    fetch = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
    fetch.request("GET", "/lnbench-long")
    local_port = fetch.sock.getsockname()[1]
    fetch.getresponse().read()
    print(local_port, flush=True)
    fetch.close()
    time.sleep(0.3 + 0.7 * random.random())
"""


def named_share(rows: list[dict], expected: dict[tuple[str, str], str]) -> dict:
    """Of the connections expected ((lport, rport) -> the pid the oracle says), how many lognet
    logged with that pid on every line of theirs, how many with another pid on some line, and
    how many not at all."""
    found = {key: [r["upid"].split("|")[1] if r["upid"] != "-" else "-" for r in rows
                   if (r["lport"], r["rport"]) == key] for key in expected}
    right = sum(1 for key, pids in found.items() if pids and set(pids) == {expected[key]})
    wrong = sum(1 for key, pids in found.items() if set(pids) - {expected[key], "-"})
    return {"expected": len(expected), "with_pid": right, "wrong_pid": wrong,
            "logged": sum(1 for pids in found.values() if pids)}


def kernel_owners(tmp: Path, curls: int, udp_clients: int, requests: int, fetches: int = 20) -> dict:
    """Who made each short connection, against records lognet did not make: curl's own pid
    and local port, one-shot UDP clients' own, a long-running client's own, and nginx's
    access log of the worker ($pid) that served each peer port, and of ab's ports (ab's pid
    is its process's). lognet at its defaults, --fields +event,attrib."""
    folder = tmp / "owners"
    folder.mkdir()
    cli = subprocess.Popen(lognet_argv(folder, "--fields", "+event,attrib", engine="netlink"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(server.stdout.readline().split(" port ")[1].split(" ")[0])
    nginx, nginx_port = start_nginx(folder, workers=2, access_log=True)
    curl_runs, udp_runs = {}, {}
    try:
        time.sleep(3)  # lognet's first poll, and nginx's workers up
        for _ in range(curls):
            curl = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{local_port}",
                                     f"http://127.0.0.1:{port}/lnbench-curl"], stdout=subprocess.PIPE, text=True)
            out, _ = curl.communicate(timeout=30)
            curl_runs[(out.strip(), str(port))] = str(curl.pid)
            time.sleep(0.1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
            receiver.bind(("127.0.0.1", 0))
            for _ in range(udp_clients):
                out = subprocess.run([sys.executable, "-c", UDP_ONE_SHOT, str(receiver.getsockname()[1])],
                                     capture_output=True, text=True, timeout=30).stdout.split()
                udp_runs[(out[1], "-")] = out[0]
        long_running = subprocess.Popen([sys.executable, "-c", LONG_RUNNING, str(port), str(fetches)],
                                        stdout=subprocess.PIPE, text=True)
        long_pid, *long_ports = long_running.communicate(timeout=120)[0].split()
        bench = subprocess.Popen(["ab", "-q", "-n", str(requests), "-c", "4", f"http://127.0.0.1:{nginx_port}/"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if bench.wait(timeout=600) != 0:
            raise RuntimeError("ab failed")
        time.sleep(4)  # a poll after the last close
    finally:
        for proc in (server, nginx):
            proc.terminate()
            proc.wait(timeout=30)
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=30)
    rows = rows_of(folder / "c.log")
    served = {}
    for line in (folder / "nginx-access.log").read_text().splitlines():
        worker, peer = line.split()
        served[(str(nginx_port), peer)] = worker
    command_lines = {line.split(" ")[1].split("|")[1] for line in (folder / "p.log").read_text().splitlines()
                     if "lnbench-curl" in line}
    ab_ports = {(peer, str(nginx_port)): str(bench.pid) for _, peer in served}
    return {"long_running": named_share(rows, {(port_, str(port)): long_pid for port_ in long_ports}),
            "ab": named_share(rows, ab_ports), "curl": {**named_share(rows, curl_runs),
                     "command_lines": sum(1 for pid in curl_runs.values() if pid in command_lines)},
            "udp": named_share(rows, udp_runs), "nginx": {**named_share(rows, served),
                                                           "workers": len(set(served.values()))}}


REPORT_FIELDS = "timestamp prot laddr lport raddr rport status upid event duration direction attrib txbytes rxbytes"
REPORT_TARGET = "203.0.113.80"


def generated_log(path: Path, lines: int, open_at_once: int = 1000) -> int:
    """A W3C connections.log of `lines` lines, lognet's lifecycle fields: connections that open
    and close, at most open_at_once at a time, to 5,000 peers, REPORT_TARGET among them.
    Return how many connections went to REPORT_TARGET."""
    rng = random.Random(1)
    peers = [f"198.51.{n // 256}.{n % 256}" for n in range(4999)] + [REPORT_TARGET]
    names = ["curl", "python3", "nginx", "ssh", "firefox", "apt-get", "wget", "git"]
    with open(path, "w") as f:
        f.write("#Version: 1.0\n#Date: 2026-12-05 00:00:00\n#Fields: " + REPORT_FIELDS + "\n")
        opened, written, target, n = [], 0, 0, 0
        while written < lines:
            second = 1796428800 + n // 200
            stamp = time.strftime("%Y-%m-%d|%H:%M:%S", time.gmtime(second))
            if len(opened) < open_at_once and (not opened or rng.random() < 0.5):
                peer = rng.choice(peers)
                target += peer == REPORT_TARGET
                ends = f"TCP 10.0.0.5 {1024 + n % 60000} {peer} 443"
                upid = f"{rng.choice(names)}|{1000 + n % 3000}|1796428000.{n % 100:02d}"
                f.write(f"{stamp} {ends} ESTABLISHED {upid} open - out pid - -\n")
                opened.append((ends, upid, second))
                n += 1
            else:
                ends, upid, started = opened.pop(rng.randrange(len(opened)))
                f.write(f"{stamp} {ends} TIME_WAIT {upid} close {second - started} out orphan "
                        f"{rng.randrange(10**6)} {rng.randrange(10**6)}\n")
            written += 1
        for ends, upid, started in opened:
            f.write(f"{stamp} {ends} TIME_WAIT {upid} close {second - started} out orphan 1 1\n")
    return target


def child_usage(argv: list[str]) -> tuple[float, float, float]:
    """Run argv to its end, its output thrown away: wall seconds, CPU seconds and peak RSS (MB).
    The peak is GNU time's (%M), where it is installed: a child's own rusage would count the
    memory of the Python process it was forked from."""
    timer = ["/usr/bin/time", "-f", "%M"] if os.path.exists("/usr/bin/time") else []
    started = time.monotonic()
    proc = subprocess.Popen(timer + argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:3]} exited {os.waitstatus_to_exitcode(status)}: {err[-400:]!r}")
    peak = int(err.split()[-1]) / 1024 if timer else usage.ru_maxrss / 1024
    return time.monotonic() - started, usage.ru_utime + usage.ru_stime, peak


def report_scale(tmp: Path, lines: int, rounds: int) -> dict:
    """lognet report on a generated log of `lines` lines, against awk selecting the same remote
    address from the same file (A B A B ...): CPU seconds of each, and report's peak RSS."""
    log = tmp / "connections.log"
    target = generated_log(log, lines)
    awk = ["awk", f'$5 == "{REPORT_TARGET}"', str(log)]
    mine = [sys.executable, str(LOGNET), "report", "--format", "tsv", "--raddr", REPORT_TARGET, str(log)]
    everything = [sys.executable, str(LOGNET), "report", "--format", "tsv", str(log)]
    runs = {"awk": [], "report": [], "report, no filter": []}
    for _ in range(rounds):
        for label, argv in (("awk", awk), ("report", mine), ("report, no filter", everything)):
            runs[label].append(child_usage(argv))
    rows = subprocess.run(mine, capture_output=True, text=True, check=True).stdout.count("\n") - 1
    median = {label: {"wall": statistics.median(r[0] for r in found), "cpu": statistics.median(r[1] for r in found),
                      "rss_mb": max(r[2] for r in found)} for label, found in runs.items()}
    return {"lines": lines, "bytes": log.stat().st_size, "target_connections": target, "rows": rows,
            "awk": shutil.which("awk"), "runs": median,
            "ratio": median["report"]["cpu"] / median["awk"]["cpu"]}


def print_report_scale(r: dict) -> None:
    print()
    print(f"| lognet report on {r['lines']:,} lines ({r['bytes'] / 1e6:.0f} MB), {r['target_connections']} connections "
          f"to the address asked | CPU s (median) | wall s | peak RSS MB |")
    print("|---|---:|---:|---:|")
    for label, m in r["runs"].items():
        print(f"| {label} | {m['cpu']:.2f} | {m['wall']:.2f} | {m['rss_mb']:.1f} |")
    print(f"| report against awk ({r['awk']}), CPU | {r['ratio']:.2f}x | | |")
    print(f"rows printed for the address: {r['rows']}")


def big_poll(args) -> dict:
    """The full-poll comparison again at --big-pairs pairs (20,000 connections by default)."""
    load = Load()
    try:
        load.hold(args.processes, args.big_pairs // args.processes)
        return poll_cost(21)
    finally:
        load.stop()


def print_owners_report(owners: dict) -> None:
    print()
    print("| who made each short connection, against the oracle's record | expected | with its pid | wrong pid "
          "| logged |")
    print("|---|---:|---:|---:|---:|")
    for label, key in (("curl runs (curl's pid and local port)", "curl"),
                       ("a long-running client's fetches, 0.3-1 s apart (its own record)", "long_running"),
                       ("ab's connects (nginx's access log of its ports, ab's pid)", "ab"),
                       ("one-shot UDP clients (their own record)", "udp"),
                       ("nginx's accepted connections (its access log's worker $pid)", "nginx")):
        o = owners[key]
        print(f"| {label} | {o['expected']} | {o['with_pid']} | {o['wrong_pid']} | {o['logged']} |")
    print(f"| curl runs whose command line is in processes.log | {owners['curl']['expected']} "
          f"| {owners['curl']['command_lines']} | | |")


def print_netlink_report(r: dict) -> None:
    if "owners" in r:
        print_owners_report(r["owners"])
    if "cost" in r:
        print_cost_report(r["cost"])
    if "isolation" in r:
        print_isolation_report(r["isolation"])
    if "floor" in r:
        print_floor_report(r["floor"])
    if any(part in r for part in ("idle", "polls", "churn_cpu", "netlink_rss")):  # not for --only other measures
        print()
        print(f"| the Linux engine (netlink, --watch {r['watch']:g}) against the psutil engine "
              "| netlink | psutil | ratio |")
        print("|---|---:|---:|---:|")
    idle = r.get("idle")
    if idle:
        print(f"| CPU with nothing changing: netlink at -i 3, psutil at -i 1 | {idle['netlink']:.3%} | "
              f"{idle['psutil -i 1']:.3%} | {idle['netlink'] / idle['psutil -i 1']:.3f} |")
        if "against" in idle:
            print(f"| the same, netlink of {AGAINST} | {idle['against']:.3%} | | |")
    for p in r.get("polls", []):
        print(f"| one full poll at {p['sockets']:,} sockets, ms of CPU (psutil: net_connections()) | "
              f"{p['netlink_ms']:.2f} | {p['psutil_ms']:.2f} | {p['ratio']:.3f} |")
    c = r.get("churn_cpu")
    if c:
        print(f"| CPU under {c['rate']:.0f} new connections a second ({c['seconds']:.0f} s) | {c['cpu_share']:.2%} "
              "| | |")
        print(f"| closes skipped for the CPU budget there | {c['skipped']} ({'shed' if c['shed'] else 'never shed'}) "
              "| | |")
    rss = r.get("netlink_rss", [])
    for f in rss:
        print(f"| RSS after {f['churned']:,} connections came and went | {f['rss_mb']:.1f} MB | | |")
    if len(rss) >= 2:
        print(f"| RSS growth from {rss[0]['churned']:,} to {rss[-1]['churned']:,} | "
              f"{rss[-1]['rss_mb'] - rss[0]['rss_mb']:+.2f} MB | | |")
    n = r.get("namespaces")
    if n:
        print()
        print(f"| with {n['namespaces'] - 1} more network namespaces ({n['sockets']:,} sockets in all, "
              f"{n['own_sockets']:,} in lognet's own) | this run |")
        print("|---|---:|")
        print(f"| one full poll of every namespace, ms of CPU | {n['all_ms']:.2f} |")
        print(f"| one full poll of lognet's own namespace only (--netns own), ms of CPU | {n['own_ms']:.2f} |")
        print(f"| what each more namespace adds to a full poll, ms | {n['per_namespace_ms']:.3f} |")
        print(f"| CPU with nothing changing, at the defaults | {n['idle_cpu']:.3%} |")
        print(f"| one namespace read as text (/proc/<pid>/net, no CAP_SYS_ADMIN), ms of CPU | {n['text_ms']:.2f} |")
    names = r.get("names")
    if names:
        print()
        print("| in a namespace of its own, with | CPU without names | with names (+rhost) | beyond |")
        print("|---|---:|---:|---:|")
        for run in names["runs"]:
            print(f"| {run['load']} | {run['without']:.3%} | {run['with']:.3%} | {run['beyond']:+.3%} |")
    f = r.get("flood")
    if f:
        print()
        print(f"| nginx + ab, {f['requests']:,} requests 4 at a time | ab requests/s | lognet CPU | kernel TCP opens "
              "| lognet: closed (with process, without, skipped, unheard, lost) |")
        print("|---|---:|---:|---:|---|")
        for run in f["runs"]:
            if not run["lognet"]:
                print(f"| without lognet | {run['rps']:,.0f} | | | |")
            else:
                which = "" if run.get("version", str(LOGNET)) == str(LOGNET) else f", {run['version']}"
                print(f"| lognet at its defaults (--max-cpu {f['max_cpu']:g}{which}) | {run['rps']:,.0f} | "
                      f"{run['cpu_share']:.1%} | {run['kernel_tcp_opens']:,} | {run['closed']:,} "
                      f"({run['with_process']:,}, {run['without']:,}, {run['skipped']:,}, {run['unheard']:,}, "
                      f"{run['lost']:,}) |")
        print(f"medians: {f['rps_without']:,.0f} requests/s without, {f['rps_with']:,.0f} with "
              f"({f['ratio']:.1%}); lognet's CPU {f['cpu_share']:.1%} of one core")
        if "against" in f:
            other = f["against"]
            print(f"medians of {other['lognet']}, in the same rounds: {other['rps_with']:,.0f} requests/s with it "
                  f"({other['rps_with'] / f['rps_without']:.1%}); its CPU {other['cpu_share']:.1%} of one core")
        print()
        print("| `--omit-loopback-conns`, the same flood | ab requests/s | lognet CPU | close events read by lognet |")
        print("|---|---:|---:|---:|")
        for run in f.get("filters", []):
            where = "in the kernel (BPF on the netlink socket)" if run["filter"] == "kernel" else "in Python only"
            print(f"| filter {where} | {run['rps']:,.0f} | {run['cpu_share']:.1%} | {run['close_events_read']:,} |")
    if "capture_defaults" in r:
        print()
        print("| who connects | lifetime | connections | logged with their process | logged at all |")
        print("|---|---:|---:|---:|---:|")
    for f in r.get("capture_defaults", []):
        print(f"| {f['way']} | {f['lifetime_s'] * 1e3:.0f} ms | {f['connections']} | {f['with_process']:.0%} | "
              f"{f['at_all']:.0%} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=50, help="processes holding the load (default 50)")
    parser.add_argument("--pairs", type=int, default=1000, help="established TCP pairs in all (default 1000: "
                        "2,000 connections)")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved CLI rounds (default 11)")
    parser.add_argument("--churn", default="20000,100000", help="flatness checkpoints (default 20000,100000)")
    parser.add_argument("--interval", type=float, default=0.2, help="capture interval (default 0.2)")
    parser.add_argument("--json", default="benchmark.json", help="where the figures go (default benchmark.json)")
    parser.add_argument("--part", choices=("all", "psutil", "netlink", "trust", "report"), default="all",
                        help="psutil: the psutil engine against psutil's own call; netlink: the Linux engine "
                             "against the psutil engine; all: both (default); trust: nothing lost on a quiet "
                             "host, and client close lines (on its own, without the held load but where it says); "
                             "report: lognet report on a generated log against awk (on its own)")
    parser.add_argument("--report-lines", type=int, default=2_000_000, help="lines of the report's generated log")
    parser.add_argument("--lognet", type=Path, help="the lognet.py to measure (default: this checkout's), "
                        "for the same figures of another version side by side")
    parser.add_argument("--against", type=Path, help="the flood: run this other lognet.py too, in the same "
                        "rounds, for its figures side by side with this one's (the commit before, say)")
    parser.add_argument("--idle-seconds", type=float, default=30, help="length of each idle CPU run (default 30)")
    parser.add_argument("--idle-rounds", type=int, default=3, help="interleaved idle runs per engine (default 3)")
    parser.add_argument("--per-lifetime", type=int, default=50, help="connections per lifetime (default 50)")
    parser.add_argument("--big-pairs", type=int, default=10000, help="pairs for the large poll (default 10000)")
    parser.add_argument("--watch", type=float, help="the netlink engine's --watch (default: lognet's default)")
    parser.add_argument("--flood-requests", type=int, default=150_000, help="ab's requests in each flood run")
    parser.add_argument("--flood-rounds", type=int, default=5, help="interleaved flood runs (default 5)")
    parser.add_argument("--only", help="netlink part: only these measures, comma-separated "
                                       "(idle, polls, churn, capture, rss, namespaces, names, flood, owners, cost, "
                                       "isolation, floor)")
    parser.add_argument("--cost-rounds", type=int, default=3,
                        help="interleaved runs of the cost per socket (default 3)")
    parser.add_argument("--cost-seconds", type=float, default=300, help="length of the 500/s run at the defaults "
                                                                         "(default 300)")
    args = parser.parse_args()
    if args.watch is not None:
        WATCH[:] = ["--watch", str(args.watch)]
    if args.against:
        global AGAINST
        AGAINST = args.against.resolve()
    if args.lognet:
        global LOGNET, lognet
        LOGNET = args.lognet.resolve()
        spec = importlib.util.spec_from_file_location("lognet", LOGNET)  # the in-process measures' too
        lognet = sys.modules["lognet"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lognet)
    if args.part == "report":
        with tempfile.TemporaryDirectory(prefix="lognet-bench-") as name:
            report = {"report_scale": report_scale(Path(name), args.report_lines, 3)}
        print_report_scale(report["report_scale"])
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return 0
    if args.part == "trust":
        report = {}
        with tempfile.TemporaryDirectory(prefix="lognet-bench-") as name:
            trust_part(report, Path(name), args)
        print_trust_report(report)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return 0

    load = Load()
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "psutil": psutil.__version__, "lognet": lognet.__version__,
                                "kernel": platform.release(), "cpu": platform.processor() or platform.machine()}}
    with tempfile.TemporaryDirectory(prefix="lognet-bench-") as name:
        tmp = Path(name)
        (tmp / "cli").mkdir()
        try:
            load.hold(args.processes, args.pairs // args.processes)
            connections = len(psutil.net_connections("inet"))
            report["load"] = {"processes": args.processes, "connections_inet": connections}
            print(f"load: {args.processes} processes, {connections} inet connections on this host", flush=True)

            if args.part in ("all", "psutil"):
                report["cli"] = {kind: cli_overhead(tmp, kind_args, kind, CLI_POLLS, args.rounds)
                                 for kind, kind_args in (("inet", []), ("tcp4", ["-ipv", "4", "-p", "tcp"]))}
                inproc = InProcess(tmp, "inet")
                report["inprocess"] = inproc.overhead(101)
                report["flatness"] = flatness(tmp, inproc, [int(x) for x in args.churn.split(",")], 101, 600)
                report["capture"] = capture(tmp, args.interval, [0.5, 1, 2, 5], 100)
                report["sustained"] = sustained(tmp, 0.2, 51)
            if args.part in ("all", "netlink"):
                netlink_part(report, tmp, args)
        finally:
            load.stop()
        if "polls" in report:
            print("full polls at the larger load ...", flush=True)
            report["polls"].append(big_poll(args))

    if "cli" in report:
        print_report(report)
    if "watch" in report:
        print_netlink_report(report)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures written to {args.json}")
    return 0


def print_report(r: dict) -> None:
    print()
    print(f"machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, psutil {r['machine']['psutil']}, "
          f"kernel {r['machine']['kernel']}; load: {r['load']['processes']} processes, "
          f"{r['load']['connections_inet']} connections")
    print()
    print("| measure | lognet ms/poll | psutil ms/call | ratio (A/B) | lognet's own ms/poll | ratio (own) |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, f in r["cli"].items():
        print(f"| CLI `-n {CLI_POLLS}`, kind {kind} | {f['lognet_ms']:.2f} | {f['raw_ms']:.2f} | "
              f"{f['ratio']:.3f} | | |")
    rows = [("in-process poll, kind inet", r["inprocess"])]
    rows += [(f"in-process, {f['churned']:,} connections came and went", f) for f in r["flatness"]]
    for label, f in rows:
        print(f"| {label} | {f['lognet_ms']:.2f} | {f['raw_ms']:.2f} | {f['ratio']:.3f} | {f['own_ms']:.3f} | "
              f"{f['own_ratio']:.4f} |")
    print()
    print("| churned (in-process) | in-process RSS MB | CLI lognet RSS MB | CLI lines | seconds |")
    print("|---:|---:|---:|---:|---:|")
    for f in r["flatness"]:
        print(f"| {f['churned']:,} | {f['inproc_rss_mb']:.1f} | {f['cli_rss_mb']:.1f} | {f['cli_lines']:,} | "
              f"{f['seconds']:.0f} |")
    if len(r["flatness"]) >= 2:
        first, last = r["flatness"][0], r["flatness"][-1]
        print(f"RSS growth from {first['churned']:,} to {last['churned']:,}: CLI "
              f"{last['cli_rss_mb'] - first['cli_rss_mb']:+.2f} MB, in-process "
              f"{last['inproc_rss_mb'] - first['inproc_rss_mb']:+.2f} MB")
    print()
    print("| lifetime | connections | logged with their process | logged at all |")
    print("|---|---:|---:|---:|")
    for f in r["capture"]["by_lifetime"]:
        print(f"| {f['lifetime_intervals']}x interval ({f['lifetime_s']} s) | {f['connections']} | "
              f"{f['captured_with_process']:.0%} | {f['captured_any_owner']:.0%} |")
    print(f"lognet's own coverage remark for that run: {r['capture']['lognet_remark']}")
    print()
    poll_ms = r["inprocess"]["poll_wall_ms"]
    s = r["sustained"]
    cpu_share = r["cli"]["inet"]["lognet_ms"] / 1e3 / lognet.DEFAULT_INTERVAL
    print(f"one poll (wall, median): {poll_ms:.1f} ms, so the shortest interval with the poll under half of it "
          f"is {2 * poll_ms / 1e3:.3f} s")
    print(f"CLI at -i {s['interval_s']}: {s['polls']} polls took {s['wall_minus_startup_s']:.2f} s after start-up, "
          f"for a schedule of {s['schedule_s']:.2f} s")
    print(f"CPU at the default interval ({lognet.DEFAULT_INTERVAL:g} s): {cpu_share:.2%} of one core")


if __name__ == "__main__":
    sys.exit(main())
