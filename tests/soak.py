"""lognet's soak run: the real CLI at a short interval for many minutes against a
process that keeps opening and closing loopback connections.

    python3 tests/soak.py [--minutes 10] [--interval 0.05]

Every 30 s it prints lognet's RSS and CPU per poll; at the end it checks that
every connection that lived longer than two intervals is in connections.log
with the process that owned it, and exits 1 if one is missing or lognet failed.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import Load  # noqa: E402

SAMPLE_SECONDS = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--rate", type=float, default=30.0, help="connections opened a second (default 30)")
    args = parser.parse_args()
    seconds = args.minutes * 60
    if args.rate * seconds > 19_000:
        parser.error("at most 19,000 connections, so that each has a client port of its own")
    lifetimes = [round(m * args.interval, 4) for m in (0.5, 1, 3, 10)]

    with tempfile.TemporaryDirectory(prefix="lognet-soak-") as name:
        tmp = Path(name)
        clog, record = tmp / "connections.log", tmp / "churn.txt"
        err = open(tmp / "lognet.err", "w+")
        lognet = subprocess.Popen([sys.executable, str(HERE.parent / "lognet.py"), "-i", str(args.interval),
                                   "-p", "tcp", "-clog", str(clog), "-plog", str(tmp / "processes.log")],
                                  stdout=subprocess.DEVNULL, stderr=err)
        watched = psutil.Process(lognet.pid)
        load = Load()
        churner = load.start("churn", "--rate", args.rate, "--lifetimes", ",".join(map(str, lifetimes)),
                             "--seconds", seconds, "--record", record)
        print(f"soak: {args.minutes:g} min at -i {args.interval}, {args.rate:g} connections/s living "
              f"{', '.join(map(str, lifetimes))} s", flush=True)
        print("| minute | lognet RSS MB | CPU ms per poll | log lines |")
        print("|---:|---:|---:|---:|")
        rows = []
        start = time.monotonic()
        last_cpu, last_t = sum(watched.cpu_times()[:2]), start
        while churner.poll() is None and time.monotonic() - start < seconds + 60:
            time.sleep(min(SAMPLE_SECONDS, max(0.1, seconds - (time.monotonic() - start))))
            now, cpu = time.monotonic(), sum(watched.cpu_times()[:2])
            # lognet keeps its schedule while a poll is shorter than the interval
            per_poll_ms = (cpu - last_cpu) / ((now - last_t) / args.interval) * 1e3
            rss = watched.memory_info().rss / 2**20
            lines = sum(1 for _ in open(clog))
            rows.append((rss, per_poll_ms))
            print(f"| {(now - start) / 60:.1f} | {rss:.1f} | {per_poll_ms:.2f} | {lines:,} |", flush=True)
            last_cpu, last_t = cpu, now
        lognet.send_signal(signal.SIGTERM)
        status = lognet.wait(timeout=30)
        load.stop()

        owner = str(churner.pid)
        seen = set()
        for line in open(clog):
            fields = line.split(" ")
            if not line.startswith("#") and fields[7].strip() != "-" and fields[7].split("|")[1] == owner:
                seen.add(fields[3])
        missing = total = 0
        by_lifetime = {}
        for port, lifetime, _, _ in (line.split() for line in open(record)):
            caught = port in seen
            counts = by_lifetime.setdefault(float(lifetime), [0, 0])
            counts[0] += caught
            counts[1] += 1
            if float(lifetime) > 2 * args.interval:
                total += 1
                missing += not caught
        err.seek(0)
        errors = err.read()

    print()
    for lifetime, (caught, n) in sorted(by_lifetime.items()):
        print(f"lifetime {lifetime} s ({lifetime / args.interval:g} intervals): {caught}/{n} logged with their process")
    print(f"RSS first/last sample: {rows[0][0]:.1f} / {rows[-1][0]:.1f} MB; "
          f"CPU per poll first/last: {rows[0][1]:.2f} / {rows[-1][1]:.2f} ms")
    print(f"lognet exit status {status}; stderr: {errors!r}")
    ok = status == 0 and not errors and missing == 0 and total > 0
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict}: {total - missing}/{total} connections that lived over two intervals were logged")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
