"""The example outputs that README.md and docs/reference.md show, made by running lognet now.

    sudo python3 tests/examples.py [--json FILE] [--write]

In a network namespace of its own (unshare -n: every connection stays on its loopback),
lognet runs three times side by side: with the original eight fields, with lifecycle
fields, and as JSON Lines. A server (demo-srv) listens on 127.0.0.1:8080; two clients
(demo-long, holding its connection 2.5 s, and demo-short, 50 ms) each send 1,000 bytes,
receive 500 and close first; demo-fetch connects twice to 127.0.0.2:8080. Then
`lognet report` answers three questions on the lifecycle log. Each example is printed
under its name; tests/test_examples.py checks that the documents' examples have the
shape of these.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOGNET = HERE.parent / "lognet.py"
LIFECYCLE = "+event,duration,direction,attrib,txbytes,rxbytes"
# The workload: `demo.py serve` and `demo.py client HOST SECONDS NAME`, each named by prctl.
DEMO = """
import ctypes, socket, sys, threading, time
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(sys.argv[-1].encode()), 0, 0, 0)  # its process name
def answer(conn):
    got = b""
    while len(got) < 1000:
        got += conn.recv(1000 - len(got))
    conn.sendall(b"y" * 500)
    conn.recv(1)
    conn.close()
if sys.argv[1] == "serve":
    listener = socket.create_server(("0.0.0.0", 8080))
    print("ready", flush=True)
    for _ in range(4):
        threading.Thread(target=answer, args=(listener.accept()[0],), daemon=True).start()
    sys.stdin.readline()
else:
    s = socket.create_connection((sys.argv[2], 8080))
    s.sendall(b"x" * 1000)
    got = b""
    while len(got) < 500:
        got += s.recv(500 - len(got))
    time.sleep(float(sys.argv[3]))
    s.close()
"""
CLIENTS = [("127.0.0.1", "2.5", "demo-long", 0.6), ("127.0.0.1", "0.05", "demo-short", 0.6),
           ("127.0.0.2", "0.2", "demo-fetch", 0.4), ("127.0.0.2", "0.2", "demo-fetch", 3.5)]


def run_in_namespace(folder: Path) -> None:
    """The workload and three lognets, in this process's own network namespace."""
    runs = {"eight": [], "lifecycle": ["--fields", LIFECYCLE], "jsonl": ["--format", "jsonl"]}
    (folder / "demo.py").write_text(DEMO)
    server = subprocess.Popen([sys.executable, "demo.py", "serve", "demo-srv"], cwd=folder, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline() == "ready\n"
    lognets = [subprocess.Popen([sys.executable, str(LOGNET), "-i", "1", "-p", "tcp", "--netns", "own", *args,
                                 "-clog", str(folder / f"{name}.log"), "-plog", str(folder / f"{name}-p.log")],
                                stderr=subprocess.DEVNULL)
               for name, args in runs.items()]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
            (folder / f"{name}.log").exists() and "8080" in (folder / f"{name}.log").read_text() for name in runs):
        time.sleep(0.1)  # each lognet's first poll has logged the listener
    clients = []
    for host, hold, name, pause in CLIENTS:
        clients.append(subprocess.Popen([sys.executable, "demo.py", "client", host, hold, name], cwd=folder))
        time.sleep(pause)
    for client in clients:
        client.wait(timeout=30)
    time.sleep(1.5)  # a poll after the last close
    for proc in lognets:
        proc.terminate()
        proc.wait(timeout=30)
    server.communicate("end\n", timeout=30)


def on_terminal(argv: list[str], columns: int) -> str:
    """What argv prints on a terminal this many columns wide."""
    main, child = pty.openpty()
    proc = subprocess.Popen(argv, stdout=child, stderr=child, env={**os.environ, "COLUMNS": str(columns)})
    os.close(child)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not select.select([main], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the other end is closed: all is read
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    proc.wait(timeout=30)
    return out.decode().replace("\r\n", "\n")


def examples() -> dict[str, str]:
    """Every example, by name."""
    with tempfile.TemporaryDirectory(prefix="lognet-examples-") as name:
        folder = Path(name)
        subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
                        __file__, "--inside", str(folder)], check=True, timeout=120)
        report = [sys.executable, str(LOGNET), "report"]
        logs = [str(folder / "lifecycle.log"), str(folder / "lifecycle-p.log")]
        found = {"eight": (folder / "eight.log").read_text(),
                 "lifecycle": (folder / "lifecycle.log").read_text(),
                 "processes": (folder / "lifecycle-p.log").read_text(),
                 "jsonl": "\n".join(line for line in (folder / "jsonl.log").read_text().splitlines()
                                    if '"demo-short"' in line or '"event":"remark"' in line) + "\n"}
        found["lifecycle line"] = next(line for line in found["lifecycle"].splitlines()
                                       if "demo-short|" in line and " close " in line)
        found["processes line"] = next(line for line in found["processes"].splitlines() if "demo-short|" in line)
        found["processes jsonl"] = "".join(line for line in (folder / "jsonl-p.log").read_text().splitlines(True)
                                           if "demo-short" in line)
        found["report raddr"] = on_terminal([*report, "--raddr", "127.0.0.1", "--port", "8080", *logs], 150)
        found["report by"] = subprocess.run([*report, "--by", "process,peer", *logs], capture_output=True,
                                            text=True, check=True).stdout
        found["report jsonl"] = subprocess.run([*report, "--process", "demo-fetch", "--format", "jsonl", *logs],
                                               capture_output=True, text=True, check=True).stdout
        return found


EXAMPLE = re.compile(r"^(<!-- example: (.+?) -->\n```\w*\n)(.*?)^```", re.S | re.M)
DOCUMENTS = [HERE.parent / "README.md", HERE.parent / "docs" / "reference.md"]


def table_cell(value: str) -> str:
    """A value as a Markdown table's cell holds it: '|' escaped."""
    return value.replace("|", "\\|")


def write_documents(found: dict[str, str]) -> None:
    """Put each example into the documents, in place of the one they show. A value that the
    README's table of fields quotes from the example line is replaced with the new line's."""
    for path in DOCUMENTS:
        text = path.read_text()
        for _, name, shown in EXAMPLE.findall(text):
            if name == "lifecycle line":  # the table quotes one field, or two (an address and its port)
                old, new = shown.split(), found[name].split()
                for before, after in [*zip(old, new), *zip(map(" ".join, zip(old, old[1:])),
                                                           map(" ".join, zip(new, new[1:])))]:
                    text = text.replace(f"`{table_cell(before)}`", f"`{table_cell(after)}`")
        text = EXAMPLE.sub(lambda m: m.group(1) + found[m.group(2)].rstrip("\n") + "\n```", text)
        path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the examples here, as JSON")
    parser.add_argument("--write", action="store_true", help="put them into README.md and docs/reference.md")
    args = parser.parse_args()
    if args.inside:
        run_in_namespace(args.inside)
        return 0
    found = examples()
    for name, text in found.items():
        print(f"== {name}\n{text}")
    if args.json:
        args.json.write_text(json.dumps(found, indent=2) + "\n")
    if args.write:
        write_documents(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
