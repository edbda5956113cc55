"""Faults provoked for real: dying processes, pid reuse, other users, signals,
rotation, full disks, hostile process names and command lines."""

import gzip
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import lognet
from conftest import (
    ROOT,
    SYSTEM_PYTHON,
    data_lines,
    events_refused,
    lognet_command,
    read_lines,
    require_root,
    require_tool,
    run_lognet,
    upid_of,
    wait_for,
)

CONNECTION_HEADER = ["#Version: 1.0", "#Fields: timestamp prot laddr lport raddr rport status upid"]


def header_at(lines, i):
    """True when lines[i:i+3] is a W3C header block."""
    return (lines[i] == "#Version: 1.0" and lines[i + 1].startswith("#Date: ")
            and lines[i + 2].startswith("#Fields: "))


def assert_well_formed(path):
    """A header first, then whole lines: 8 fields each, or a complete header block."""
    raw = Path(path).read_bytes()
    assert raw.endswith(b"\n"), f"{path} ends in a half line"
    lines = raw.decode("utf-8").splitlines()
    assert header_at(lines, 0)
    i = 0
    while i < len(lines):
        if lines[i].startswith("#Version"):
            assert header_at(lines, i)
            i += 3
            continue
        assert lines[i].startswith("#Remark: ") or len(lines[i].split(" ")) == 8, lines[i]
        i += 1
    return lines


# ---------------------------------------------------------------- races

def test_process_that_exited_is_logged_with_its_pid_alone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names nothing now
    found, new = lognet.PsutilSource().processes([child.pid])
    assert found == {child.pid: lognet.ProcessInfo(child.pid, None, None, None)}
    assert lognet.format_upid(found[child.pid]) == f"-|{child.pid}|-"


def test_zombie_is_logged_with_name_and_start_time_but_no_command_line():
    child = subprocess.Popen([sys.executable, "-c", "import ctypes; ctypes.CDLL(None).prctl(15, b'lnzombie')"])
    try:
        wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE)
        found, _ = lognet.PsutilSource().processes([child.pid])
        info = found[child.pid]
        assert (info.name, info.cmdline) == ("lnzombie", None)
        assert info.create_time == psutil.Process(child.pid).create_time()
        assert lognet.format_process(info, "T") == f"T lnzombie|{child.pid}|{info.create_time:.2f} -"
    finally:
        child.wait()


FLASHER = """
import os, socket, sys, time
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
deadline = time.monotonic() + 20
children = []
for _ in range(int(sys.argv[1])):
    if time.monotonic() > deadline:
        break
    pid = os.fork()
    if pid == 0:
        s = socket.create_connection(("127.0.0.1", port))
        os._exit(0)
    children.append(pid)
    os.waitpid(pid, 0)
    listener.accept()[0].close()
print(port, os.getpid(), *children)
"""


def test_processes_dying_under_lognet_never_stop_it(tmp_path, background, marker):
    ln = background("-i", "0.005", "-p", "tcp")
    ln.wait_for_poll(marker)
    flasher = subprocess.run([sys.executable, "-c", FLASHER, "400"], capture_output=True, text=True, timeout=60)
    assert flasher.returncode == 0
    port, *pids = flasher.stdout.split()
    assert ln.stop() == 0
    assert ln.stderr == ""
    lines = assert_well_formed(ln.clog)
    ours = [line for line in lines if f" 127.0.0.1 {port} " in line]
    assert ours, "no line for the children's connections"
    # Each child lived for a moment only: whatever lognet caught is attributed to the flasher
    # (the listener, and the ends it accepted), to the child that connected, or to nobody.
    for line in ours:
        upid = line.split(" ")[7]
        assert upid == "-" or upid.split("|")[1] in pids, line


def test_reused_pid_is_a_new_upid(tmp_path):
    require_root("a private pid namespace (unshare -p) and ns_last_pid")
    clog, plog = tmp_path / "c.log", tmp_path / "p.log"
    result = subprocess.run(["unshare", "-p", "-f", "--mount-proc", sys.executable,
                             str(ROOT / "tests" / "reuse_driver.py"), str(clog), str(plog)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["returncode"] == 0
    a, b = report["holders"]
    assert a["pid"] == b["pid"], "the namespace did not hand out the same pid twice"
    pid = a["pid"]
    processes = [line.split(" ")[1] for line in data_lines(plog) if f"|{pid}|" in line]
    assert [upid.split("|")[0] for upid in processes] == ["lnreuseA", "lnreuseB"]
    assert processes[0] != processes[1]
    owners = {line.split(" ")[3]: line.split(" ")[7] for line in data_lines(clog) if line.endswith(" LISTEN " +
              line.split(" ")[7]) and line.split(" ")[7] != "-"}
    assert owners[str(a["port"])] == processes[0]
    assert owners[str(b["port"])] == processes[1]


# ---------------------------------------------------------------- another user

def test_unprivileged_run_hides_other_users_owners_and_falls_back(holder, nobody):
    mine = holder("--name", "lnroot")
    home = nobody.home
    theirs = holder("--name", "lnnobody", **nobody.holder_options())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_STATE_HOME": str(home / "state")}
    result = subprocess.run(nobody.lognet("-n", "2", "-i", "0.2", "-p", "tcp"),
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0
    assert result.stderr == (
        "lognet: warning: this user cannot make or write the default log folder (/var/log/netlog: "
        f"Permission denied); logging to {home}/state/lognet instead\n") + events_refused()
    clog = home / "state" / "lognet" / "connections.log"
    assert stat.S_IMODE(os.stat(clog).st_mode) == 0o640
    lines = data_lines(clog)
    root_listen = [line.split(" ")[7] for line in lines if f" {mine.info['port']} - - LISTEN " in line]
    nobody_listen = [line.split(" ")[7] for line in lines if f" {theirs.info['port']} - - LISTEN " in line]
    assert root_listen == ["-"]
    assert nobody_listen == [upid_of(theirs.pid, "lnnobody")]


# ---------------------------------------------------------------- signals

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_flushes_and_exits_0(tmp_path, holder, background, sig):
    h = holder("--name", "lnsignal")
    ln = background("-i", "0.05")
    wait_for(lambda: ln.clog.exists() and f" {h.info['port']} - - LISTEN " in ln.clog.read_text())
    assert ln.stop(sig) == 0
    assert ln.stderr == ""
    assert_well_formed(ln.clog)
    assert f"|{h.pid}|" in ln.plog.read_text()


LOGROTATE = {
    "create-hup": "create 0640\n  sharedscripts\n  postrotate\n    kill -HUP {pid}\n  endscript",
    "create": "create 0640",
    "copytruncate": "copytruncate",
}


@pytest.mark.parametrize("mode", LOGROTATE)
def test_logrotate_leaves_well_formed_logs(tmp_path, holder, background, mode):
    require_tool("logrotate", "logrotate")
    h = holder("--name", "lnrotate")
    ln = background("-i", "0.1", "-p", "tcp")
    wait_for(lambda: ln.clog.exists() and f" {h.info['port']} - - LISTEN " in ln.clog.read_text())
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{ln.clog} {ln.plog} {{\n  rotate 2\n  {LOGROTATE[mode].format(pid=ln.proc.pid)}\n}}\n")
    rotated = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                             capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    new_port = h.send("open")
    wait_for(lambda: f" {new_port} 127.0.0.1 {h.info['port']} ESTABLISHED " in ln.clog.read_text())
    assert ln.stop() == 0
    assert ln.stderr == ""
    old = assert_well_formed(Path(f"{ln.clog}.1"))
    assert any(f" {h.info['port']} - - LISTEN " in line for line in old)
    new = assert_well_formed(ln.clog)
    assert not any(f" {h.info['port']} - - LISTEN " in line for line in new)
    upid, port = upid_of(h.pid, "lnrotate"), str(h.info["port"])
    assert sorted(line.split(" ")[1:] for line in new if f" {new_port} " in line) == sorted([
        ["TCP", "127.0.0.1", new_port, "127.0.0.1", port, "ESTABLISHED", upid],
        ["TCP", "127.0.0.1", port, "127.0.0.1", new_port, "ESTABLISHED", upid]])


def test_moved_log_is_followed_by_a_fresh_file(tmp_path, holder, background):
    h = holder("--name", "lnmove")
    ln = background("-i", "0.1", "-p", "tcp")
    wait_for(lambda: ln.clog.exists() and f" {h.info['port']} - - LISTEN " in ln.clog.read_text())
    os.rename(ln.clog, tmp_path / "moved.log")
    new_port = h.send("open")
    wait_for(lambda: ln.clog.exists() and f" {new_port} " in ln.clog.read_text())
    assert ln.stop() == 0
    new = assert_well_formed(ln.clog)
    assert len([line for line in new if f" {new_port} " in line]) == 2  # both ends of the new pair
    assert stat.S_IMODE(os.stat(ln.clog).st_mode) == 0o640


def test_sighup_reopens_the_logs_within_a_second(tmp_path, background, marker):
    ln = background("-i", "20", "-p", "tcp")
    ln.wait_for_poll(marker)  # its first poll has written: a write of its own would follow a rename
    lognet_process = psutil.Process(ln.proc.pid)

    def logs_open():
        return {f.path for f in lognet_process.open_files() if f.path.startswith(str(tmp_path))} - {str(ln.errfile)}

    wait_for(lambda: logs_open() == {str(ln.clog), str(ln.plog)})
    os.rename(ln.clog, tmp_path / "c.log.1")
    os.rename(ln.plog, tmp_path / "p.log.1")
    assert logs_open() == {str(tmp_path / "c.log.1"), str(tmp_path / "p.log.1")}
    signalled = time.monotonic()
    ln.proc.send_signal(signal.SIGHUP)
    # the next poll is 20 s away: only the reopen itself moves the files
    wait_for(lambda: logs_open() == {str(ln.clog), str(ln.plog)}, timeout=3)
    print(f"reopened {time.monotonic() - signalled:.2f} s after SIGHUP")
    assert ln.stop() == 0
    assert ln.stderr == ""


# ---------------------------------------------------------------- write failures

def test_dev_full_reports_once_keeps_polling_and_counts_the_lost_lines(tmp_path, holder):
    holder("--name", "lnfull")
    result = subprocess.run(lognet_command("-i", "0.05", "-n", "20", "-clog", "/dev/full",
                                           "-plog", tmp_path / "p.log"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1  # lines were lost, and the exit status says so
    first, lost = result.stderr.splitlines()
    assert first == "lognet: error: cannot write /dev/full: No space left on device; holding its lines until " \
                    "writing works again"
    count = re.fullmatch(r"lognet: error: (\d+) lines never reached /dev/full", lost)
    assert count and int(count.group(1)) >= 1, lost  # the holder's listener, at least
    assert "lnfull|" in (tmp_path / "p.log").read_text()


@pytest.fixture
def small_filesystem(tmp_path, request):
    """A tmpfs of 128 kB (or the size the test's parameter gives) of the test's own."""
    require_root("mounting a size-limited tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    size = getattr(request, "param", "128k")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(path):
    """Fill the file system that path is on, with path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for _ in range(64):
            os.write(fd, b"\0" * (1 << 20))
        for _ in range(256):
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # full, as wanted
    finally:
        os.close(fd)


@pytest.mark.parametrize("small_filesystem", ["4m"], indirect=True)  # once free, room for every socket of a busy host
def test_full_filesystem_holds_lines_and_writes_them_late_in_order(tmp_path, holder, background, small_filesystem):
    filler = small_filesystem / "filler"
    fill(filler)
    ln = background("-i", "0.1", "-p", "tcp", clog=small_filesystem / "c.log")
    wait_for(lambda: "cannot write" in ln.stderr)
    h = holder("--name", "lnlate")
    first = h.send("open")
    time.sleep(0.5)
    second = h.send("open")
    time.sleep(0.5)
    filler.unlink()
    wait_for(lambda: f" {second} " in ln.clog.read_text())
    assert ln.stop() == 0
    lines = assert_well_formed(ln.clog)
    remark = re.fullmatch(r"#Remark: the next (\d+) lines are late: writing failed \(No space left on device\) "
                          r"since \d{4}-\d\d-\d\d\|\d\d:\d\d:\d\d", lines[3])
    assert remark, lines[3]
    late = int(remark.group(1))
    assert late >= 4
    assert ln.stderr.splitlines() == [
        f"lognet: error: cannot write {ln.clog}: No space left on device; holding its lines until writing works again",
        f"lognet: warning: writing {ln.clog} works again; {late} held lines written, 0 dropped",
    ]
    assert "dropped" not in lines[3]
    mine = [line for line in lines if f"|{h.pid}|" in line and " ESTABLISHED " in line]
    ours = [line.split(" ")[3] for line in mine]
    port = str(h.info["port"])
    # the two pairs opened while the disk was full, in the order they were seen: client end, then server end
    assert [p for p in ours if p in (first, second)] == [first, second], mine
    assert ours.count(port) == 3  # the server ends of the first pair, and of the two late pairs


@pytest.mark.parametrize("small_filesystem", ["16m"], indirect=True)  # room for every socket of a busy host
def test_a_write_cut_short_by_a_full_disk_leaves_no_half_line(tmp_path, background, small_filesystem, many_pairs):
    clog = small_filesystem / "c.log"
    first = subprocess.run(lognet_command("-n", "1", "-p", "udp", "-clog", clog, "-plog", tmp_path / "p.log"),
                           capture_output=True, timeout=60)
    assert first.returncode == 0
    size = clog.stat().st_size
    assert size % 4096, "the log's last page must have room left"
    fill(small_filesystem / "filler")
    # The file's last page still has room: the next write stops partway, in the middle of a line.
    ln = background("-i", "0.2", "-p", "tcp", clog=clog)
    wait_for(lambda: "cannot write" in ln.stderr)
    held = clog.read_bytes()
    assert len(held) > size  # part of the write went through ...
    assert held.endswith(b"\n"), "a half line was left in the log"  # ... and was cut back to a whole line
    (small_filesystem / "filler").unlink()
    wait_for(lambda: f"writing {clog} works again; " in ln.stderr)
    assert ln.stop() == 0, ln.stderr
    lines = assert_well_formed(clog)
    data = [line for line in lines if not line.startswith("#")]
    assert len(set(data)) == len(data), "a line was written twice"
    ours = {line.split(" ")[3] for line in data if f"|{os.getpid()}|" in line and " ESTABLISHED " in line}
    assert many_pairs <= ours


# ---------------------------------------------------------------- hostile input

HOSTILE_NAMES = {
    "a b": "a\\x20b",
    "x\\ny": "x\\x0ay",
    "p|q": "p\\x7cq",
    "\\x1b[31mred": "\\x1b[31mred",
    "\\xffbyte": "\\xffbyte",
}
FORGED = "2026-01-01|00:00:00 TCP 6.6.6.6 1 6.6.6.6 2 ESTABLISHED evil|1|1.00"


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_process_cannot_forge_a_line(tmp_path, holder, name):
    tags = ["x\n#Fields: timestamp forged", "y\n" + FORGED, "z\t\x1b[2K"]
    h = holder("--name", name, *tags)
    clog, plog = tmp_path / "c.log", tmp_path / "p.log"
    result = subprocess.run(lognet_command("-n", "1", "-p", "tcp", "-clog", clog, "-plog", plog),
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    upid = f"{HOSTILE_NAMES[name]}|{h.pid}|{psutil.Process(h.pid).create_time():.2f}"
    for path in (clog, plog):
        lines = read_lines(path)
        assert lines[2].startswith("#Fields: timestamp ") and "forged" not in lines[2]
        assert [line for line in lines if line.startswith("#")] == lines[:3]
        assert not any(line.startswith(FORGED[:10]) for line in lines)
    ours = [line.split(" ") for line in data_lines(clog) if f"|{h.pid}|" in line]
    assert len(ours) == 3 and all(len(fields) == 8 and fields[7] == upid for fields in ours)
    assert [line.split(" ", 2)[1:] for line in data_lines(plog) if f"|{h.pid}|" in line] == [[upid, repr(h.cmdline)]]


# ---------------------------------------------------------------- bad user input

def test_log_on_read_only_filesystem_exits_1(tmp_path):
    require_root("a private mount namespace with a read-only tmpfs")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = f'mount -t tmpfs -o ro tmpfs {ro} && exec "$@"'
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh",
                             *lognet_command("-n", "1", "-clog", ro / "c.log", "-plog", tmp_path / "p.log")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"lognet: error: cannot open log {ro}/c.log: Read-only file system\n"


# ---------------------------------------------------------------- the README's service and its log rotation

README = (ROOT / "README.md").read_text()
ADM = 4  # Debian's group adm, the unit's Group=


def readme_block(holding: str) -> str:
    """The fenced block of the README that holds the text `holding`."""
    return next(block for block in re.findall(r"^```\w*\n(.*?)^```", README, re.S | re.M) if holding in block)


def test_the_readmes_service_survives_three_rotations_by_its_logrotate_config(tmp_path, holder, nobody):
    """The Quick start's logs (root's), handed over by the README's setup, then the service's
    user (here nobody, in group adm, with the unit's capabilities) logging while the README's
    logrotate configuration rotates three times: no line lost, and exit 0."""
    require_tool("logrotate", "logrotate")
    folder = nobody.home / "netlog"
    clog, plog = folder / "connections.log", folder / "processes.log"
    paths = ("-clog", clog, "-plog", plog)
    h = holder("--name", "lnservice")
    folder.mkdir(mode=0o750)  # the Quick start's, as root made it
    quick = run_lognet("-n", "1", "-p", "tcp", *paths)
    assert (quick.returncode, quick.stderr) == (0, "")
    setup = [line for line in readme_block("useradd --system").splitlines() if not line.startswith("useradd ")]
    for line in setup:
        command = line.replace("/var/log/netlog", str(folder)).replace("lognet:adm", "nobody:adm")
        subprocess.run(["sh", "-c", command.replace("-o lognet", "-o nobody")], check=True, timeout=30)
    unit = readme_block("/etc/systemd/system/lognet.service")
    caps = re.search(r"^AmbientCapabilities=(.*)$", unit, re.M).group(1).split()
    ambient = ",".join("+" + cap.lower()[len("cap_"):] for cap in caps)
    service = subprocess.Popen(
        ["setpriv", f"--reuid={nobody.uid}", f"--regid={ADM}", "--clear-groups", f"--inh-caps={ambient}",
         f"--ambient-caps={ambient}", SYSTEM_PYTHON, nobody.home / "lognet.py", "-i", "0.2", "-q", "-p", "tcp",
         *paths], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port, upid = str(h.info["port"]), upid_of(h.pid, "lnservice")
        wait_for(lambda: clog.read_text().count(f" {port} - - LISTEN {upid}") == 2)  # the Quick start's, and its
        conf = tmp_path / "logrotate.conf"
        conf.write_text(readme_block("delaycompress").replace("/var/log/netlog", str(folder)))
        opened = []
        for _ in range(3):
            rotated = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                                     capture_output=True, text=True, timeout=60)
            assert (rotated.returncode, rotated.stderr) == (0, "")
            opened.append(h.send("open"))
            wait_for(lambda: clog.exists() and f" {opened[-1]} 127.0.0.1 {port} ESTABLISHED " in clog.read_text())
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
        assert service.stderr.read() == ""
    finally:
        service.kill()
        service.wait()
    logs = [clog, folder / "connections.log.1", folder / "connections.log.2.gz", folder / "connections.log.3.gz"]
    assert all(os.stat(log).st_uid == nobody.uid and stat.S_IMODE(os.stat(log).st_mode) == 0o640 for log in logs)
    lines = []
    for log in logs:
        if log.suffix == ".gz":
            plain = tmp_path / log.stem
            plain.write_bytes(gzip.decompress(log.read_bytes()))
            log = plain
        lines += assert_well_formed(log)
    for client in opened:  # each pair opened after a rotation: both ends, once each, with their process
        # by both ports: an older TIME_WAIT from the same client port to another listener may be there too
        ends = sorted(line.split(" ")[2:] for line in lines if {client, port} <= set(line.split(" ")[3:6:2]))
        assert ends == sorted([["127.0.0.1", client, "127.0.0.1", port, "ESTABLISHED", upid],
                               ["127.0.0.1", port, "127.0.0.1", client, "ESTABLISHED", upid]])
