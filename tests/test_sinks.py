"""LogFile and open_logs on real files in tmp_path."""

import os
import stat

import pytest

import lognet
from conftest import read_lines

EPOCH = 1795763232.0
HEADER = ["#Version: 1.0", "#Date: 2026-11-27 07:07:12", "#Fields: timestamp prot laddr lport raddr rport status upid"]


def make_log(path):
    log = lognet.LogFile(str(path), lognet.W3CFormat(lognet.CONNECTION_FIELDS, utc=True), now=lambda: EPOCH)
    log.open()
    return log


def test_new_file_gets_header_and_mode_0640(tmp_path):
    path = tmp_path / "c.log"
    log = make_log(path)
    log.write(["line 1", "line 2"])
    log.write([])
    log.write(["line 3"])
    assert read_lines(path) == HEADER + ["line 1", "line 2", "line 3"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_restart_appends_with_a_new_header(tmp_path):
    path = tmp_path / "c.log"
    path.write_text("#Version: 1.0\nold line\n")
    log = make_log(path)
    log.write(["new line"])
    assert read_lines(path) == ["#Version: 1.0", "old line"] + HEADER + ["new line"]


def test_header_is_written_even_before_the_first_line(tmp_path):
    path = tmp_path / "c.log"
    make_log(path).write([])
    assert read_lines(path) == HEADER


def test_renamed_log_is_reopened_with_a_fresh_header(tmp_path):
    path = tmp_path / "c.log"
    log = make_log(path)
    log.write(["before"])
    os.rename(path, tmp_path / "c.log.1")
    log.write(["after"])
    assert read_lines(tmp_path / "c.log.1") == HEADER + ["before"]
    assert read_lines(path) == HEADER + ["after"]


def test_deleted_log_is_recreated(tmp_path):
    path = tmp_path / "c.log"
    log = make_log(path)
    log.write(["before"])
    os.unlink(path)
    log.write(["after"])
    assert read_lines(path) == HEADER + ["after"]


def test_truncated_log_gets_a_header_before_more_lines(tmp_path):
    path = tmp_path / "c.log"
    log = make_log(path)
    log.write(["before"])
    os.truncate(path, 0)
    log.write(["after"])
    assert read_lines(path) == HEADER + ["after"]


def test_failed_writes_are_held_then_written_in_order_with_a_remark(tmp_path, capsys):
    path = tmp_path / "c.log"
    log = make_log(path)
    log.write(["one"])
    real = log.path
    log.path = "/dev/full"
    log.open()
    for n in ("two", "three", "four"):
        log.write([n])
    err = capsys.readouterr().err
    assert err.count("lognet: error: cannot write /dev/full: No space left on device") == 1
    log.path = real
    log.open()
    log.write(["five"])
    assert read_lines(path) == HEADER + ["one"] + HEADER + [
        "#Remark: the next 3 lines are late: writing failed (No space left on device) since 2026-11-27|07:07:12",
        "two", "three", "four", "five"]
    assert "works again; 3 held lines written, 0 dropped" in capsys.readouterr().err


def test_overflowing_queue_counts_dropped_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lognet, "MAX_PENDING_LINES", 3)
    path = tmp_path / "c.log"
    log = make_log(path)
    log.path = "/dev/full"
    log.open()
    log.write(["a", "b"])
    log.write(["c", "d", "e"])
    log.path = str(path)
    log.open()
    log.write(["f"])
    assert read_lines(path) == HEADER + [
        "#Remark: the next 2 lines are late: writing failed (No space left on device) since 2026-11-27|07:07:12;"
        " 3 lines were dropped", "d", "e", "f"]
    capsys.readouterr()


def config(tmp_path, clog, plog):
    return lognet.Config(connections_log=str(clog), processes_log=str(plog))


def test_user_path_in_missing_folder_is_an_error(tmp_path):
    with pytest.raises(lognet.LognetError, match=r"cannot open log .*/nope/c.log: No such file or directory"):
        lognet.open_outputs(config(tmp_path, tmp_path / "nope" / "c.log", tmp_path / "p.log"), (False, False))


def test_user_path_that_is_a_folder_is_an_error(tmp_path):
    with pytest.raises(lognet.LognetError, match=r"Is a directory"):
        lognet.open_outputs(config(tmp_path, tmp_path, tmp_path / "p.log"), (False, False))


def test_default_path_falls_back_to_the_state_folder_with_one_warning(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the default folder should be")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    outputs = lognet.open_outputs(config(tmp_path, blocker / "netlog" / "connections.log",
                                         blocker / "netlog" / "processes.log"), (True, True))
    (clog,), (plog,) = outputs.connections.sinks, outputs.processes.sinks
    assert clog.path == str(tmp_path / "state" / "lognet" / "connections.log")
    assert plog.path == str(tmp_path / "state" / "lognet" / "processes.log")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0] == (f"lognet: warning: this user cannot make or write the default log folder ({blocker}/netlog: "
                      f"Not a directory); logging to {tmp_path}/state/lognet instead")


def test_a_default_log_that_cannot_be_opened_in_a_usable_folder_is_an_error_naming_it(tmp_path, monkeypatch):
    # The folder is there and writable: the log itself is the trouble (here a folder in its
    # place; for a user, a file of root's), and another folder would hide it.
    folder = tmp_path / "netlog"
    (folder / "connections.log").mkdir(parents=True)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    with pytest.raises(lognet.LognetError) as error:
        lognet.open_outputs(config(tmp_path, folder / "connections.log", folder / "processes.log"), (True, True))
    assert str(error.value) == f"cannot open log {folder}/connections.log: Is a directory"
    assert not (tmp_path / "state").exists()
