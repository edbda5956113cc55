"""The command line, run as a real subprocess."""

import os
import re
import subprocess
import sys

import pytest

import lognet
from conftest import LOGNET, run_lognet

# Each bad command line (its arguments split on spaces, '' an empty one) => what lognet says after "lognet: error: ".
BAD_ARGUMENTS = """
-i 0 => argument -i/--interval: must be above 0: '0'
-i -1 => argument -i/--interval: must be above 0: '-1'
-i x => argument -i/--interval: not a number: 'x'
-i nan => argument -i/--interval: must be above 0: 'nan'
-i inf => argument -i/--interval: must be above 0: 'inf'
-ipv 5 => argument -ipv/--ip-version: invalid choice: 5 (choose from 4, 6)
-ipv x => argument -ipv/--ip-version: invalid int value: 'x'
-p icmp => argument -p/--protocol: invalid choice: 'icmp' (choose from 'udp', 'tcp')
-n 0 => argument -n/--count: must be 1 or more: '0'
-n 1.5 => argument -n/--count: not a whole number: '1.5'
--interval => argument -i/--interval: expected one argument
--bogus => unrecognized arguments: --bogus
--engine x => argument --engine: invalid choice: 'x' (choose from 'auto', 'netlink', 'psutil')
--watch -1 => argument --watch: must be 0 or more: '-1'
--watch x => argument --watch: not a number: 'x'
--netns none => argument --netns: invalid choice: 'none' (choose from 'all', 'own')
-clog '' => argument -clog/--connections-log: an empty path: give a file, or - for standard output
-plog '' => argument -plog/--processes-log: an empty path: give a file, or - for standard output
--fields +event,,duration => argument --fields: an empty field name: '+event,,duration'
--format jsonl --fields +event => argument --fields: only for --format w3c (a JSON Lines object always has every field)
"""


@pytest.mark.parametrize("argv, message", [
    ([word.replace("''", "") for word in line.split(" => ")[0].split()], line.split(" => ")[1])
    for line in BAD_ARGUMENTS.strip().splitlines()])
def test_bad_value_is_one_line_and_exit_2(argv, message):
    result = run_lognet("-clog", "/nonexistent/c.log", "-plog", "/nonexistent/p.log", *argv)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"lognet: error: {message} (see lognet --help)\n"


def test_help_shows_original_options_and_examples():
    result = run_lognet("--help")
    assert result.returncode == 0
    out = result.stdout
    # Python 3.13 names the value once ("-i, --interval I"), older ones twice ("-i I, --interval I")
    for short, long, value in (("-i", "--interval", "I"), ("-clog", "--connections-log", "CLOG"),
                               ("-plog", "--processes-log", "PLOG"), ("-ipv", "--ip-version", "{4,6}"),
                               ("-p", "--protocol", "{udp,tcp}"), ("-n", "--count", "N"), ("-q", "--quiet", "")):
        assert re.search(rf"(^|\s){re.escape(short)}( {re.escape(value)})?, {re.escape(long)}( {re.escape(value)})?",
                         out, re.M), short
    for option in ("--omit-self-conns", "--omit-privnet-conns", "--utc", "--version", "--fields LIST",
                   "--format {w3c,jsonl}", "--syslog [ADDRESS]", "--stats-interval SECONDS", "--netns {all,own}"):
        assert option in out, option
    assert "lognet -i 1 -p tcp" in out
    assert "@reboot" in out
    assert "tail -f /var/log/netlog/connections.log" in out


def test_version():
    result = run_lognet("--version")
    assert (result.returncode, result.stdout) == (0, f"lognet {lognet.__version__}\n")


@pytest.mark.parametrize("text, address", [
    ("/dev/log", ("unix", "/dev/log")),
    ("loghost", ("udp", "loghost:514")),
    ("loghost:1514", ("udp", "loghost:1514")),
    ("tcp://127.0.0.1:6514", ("tcp", "127.0.0.1:6514")),
    ("[::1]", ("udp", "[::1]:514")),
    ("tcp://[::1]:6514", ("tcp", "[::1]:6514")),
])
def test_syslog_addresses_accepted(text, address):
    assert lognet.parse_args(["--syslog", text])[0].syslog == address


def test_defaults_match_the_original():
    config, defaulted = lognet.parse_args([])
    assert config.interval == 3.0
    assert config.connections_log == "/var/log/netlog/connections.log"
    assert config.processes_log == "/var/log/netlog/processes.log"
    assert config.kind == "inet" and config.count is None
    assert defaulted == (True, True)


def test_original_short_spellings_parse():
    config, defaulted = lognet.parse_args(["-i", "0.5", "-clog", "c", "-plog", "p", "-ipv", "6", "-p", "udp",
                                           "--omit-self-conns", "--omit-privnet-conns"])
    assert config == lognet.Config(interval=0.5, kind="udp6", omit_self_conns=True, omit_privnet_conns=True,
                                   connections_log="c", processes_log="p")
    assert defaulted == (False, False)


def test_unwritable_user_path_exits_1_with_one_line(tmp_path):
    result = run_lognet("-n", "1", "-clog", tmp_path / "missing" / "c.log", "-plog", tmp_path / "p.log")
    assert result.returncode == 1
    assert result.stderr == f"lognet: error: cannot open log {tmp_path}/missing/c.log: No such file or directory\n"


def test_log_path_that_is_a_folder_exits_1(tmp_path):
    result = run_lognet("-n", "1", "-clog", tmp_path / "c.log", "-plog", tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"lognet: error: cannot open log {tmp_path}: Is a directory\n"


def test_seconds_take_their_unit_as_help_writes_them():
    help_text = " ".join(run_lognet("--help").stdout.split())
    assert "(default: 3s)" in help_text
    config, _ = lognet.parse_args(["-i", "3s", "--watch", "0.05s", "--stats-interval", "60s"])
    assert (config.interval, config.watch, config.stats_interval) == (3.0, 0.05, 60.0)
    assert lognet.parse_args(["-i", "0.2"])[0].interval == 0.2


def test_help_says_how_n_exits():
    help_text = " ".join(run_lognet("--help").stdout.split())
    assert "stop after N polls and exit: 0, or 1 when lines could not be written" in help_text


@pytest.mark.parametrize("python", ["/usr/bin/python3", sys.executable])
def test_missing_psutil_says_how_this_python_gets_it(python):
    """-S leaves out site-packages, where psutil is: as a Python without it. A distribution's
    own python3 is externally managed (PEP 668) and takes its package; any other takes pip."""
    if not os.path.exists(python):
        if os.environ.get("CI"):
            pytest.fail(f"{python} is missing on CI, which runs on Debian")
        pytest.skip(f"no {python} here")
    managed = subprocess.run([python, "-c", "import os, sysconfig; print(os.path.exists(os.path.join("
                              "sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"],
                             capture_output=True, text=True).stdout.strip() == "True"
    hint = ("apt-get install python3-psutil (or your distribution's package of psutil)" if managed
            else f"{python} -m pip install psutil")
    result = subprocess.run([python, "-S", str(LOGNET), "--version"], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"lognet: error: the psutil module is missing; install it with: {hint}\n"
