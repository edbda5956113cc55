"""Faults seeded into a copy of lognet.py, each with the tests that must catch it.

    python3 tests/mutants.py [--only N,...] [--list]

For each fault: copy the checkout (without .git) to a temporary folder, make the one
change to lognet.py there, run the named tests, and report whether a test failed (the
fault is caught: good) or none did (the fault survives: a test is missing).
It exits 1 when any fault survives. Like the benchmark, it is run by hand, not in CI: each
fault runs its tests afresh.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Fault(NamedTuple):
    name: str
    original: str  # text in lognet.py, found exactly once
    mutated: str
    tests: tuple[str, ...]  # pytest node ids, or "file -k word"


FAULTS = [
    Fault("psutil's sconn mapped with laddr and raddr swapped",
          "return tuple.__new__(Connection, sconn + unknown)",
          "return tuple.__new__(Connection, sconn[:3] + (sconn[4], sconn[3]) + sconn[5:] + unknown)",
          ("tests/test_sources.py",)),
    Fault("TIME_WAIT no longer continues the connection it came from",
          "if old is None or (old.pid is None) == (conn.pid is None) or",
          "if old is None or (old.pid is None) != (conn.pid is None) or",
          ("tests/test_tracker.py", "tests/test_golden.py")),
    Fault("a kernel close takes the poll's time instead of the kernel's",
          "last_seen, time = max(closed.time, sighting.first_seen), closed.time",
          "last_seen, time = max(closed.time, sighting.first_seen), now",
          ("tests/test_tracker.py",)),
    Fault("a connection gone from the dump closes at once, without waiting for the kernel's word",
          "if sighting.closed is None and self.awaits_kernel_closes and sighting.record.cookie is not None:",
          "if False:",
          ("tests/test_tracker.py",)),
    Fault("our SYN never counted in bytes_acked",
          'syn = 1 if direction == "out" or closed.acked_beyond >= 2 else 0',
          "syn = 0",
          ("tests/test_tracker.py", "tests/test_netlink.py::test_close_event_bytes_from_a_real_kernel_close")),
    Fault("the local peer's exact count is ignored",
          "peer = self.peer_sent.get((conn.netns, conn.raddr, conn.laddr)) if conn.raddr else None",
          "peer = None",
          ("tests/test_tracker.py::test_the_peer_on_this_host_says_exactly_what_was_received",)),
    Fault("the watcher never looks",
          "        if self.reported is None or self.shed:\n            return  # before the first poll",
          "        if True:\n            return  # before the first poll",
          ("tests/test_netlink.py::test_the_watcher_catches_a_connection_between_two_polls_at_i_5",
           "tests/test_netlink.py::test_new_process_holding_100ms_is_logged_with_pid_and_command_line_at_the_default_interval")),
    Fault("port 0 is written as an address",
          "    if not port:\n        return ()\n",
          "",
          ("tests/test_netlink.py::test_both_engines_write_the_same_lines_for_the_same_holder",)),
    Fault("a socket never seen alive is not logged with the original fields",
          'return [e for e in kept if self.logs_closes or e.event != "close" or e.attrib == "unseen"], new_processes',
          'return [e for e in kept if self.logs_closes or e.event != "close"], new_processes',
          ("tests/test_netlink.py::test_a_socket_never_seen_alive_is_a_line_with_the_original_fields",)),
    Fault("netlink refused is an error even with --engine auto",
          'which polls only")\n        return ENGINES["psutil"](config)',
          'which polls only")\n        raise',
          ("tests/test_netlink.py::test_refused_netlink_falls_back_to_psutil_with_one_warning",)),
    Fault("IPv4 written IPv4-mapped is taken as IPv6",
          "return (address.ipv4_mapped or address) if address.version == 6 else address",
          "return address",
          ("tests/test_filters.py",)),
    Fault("the W3C timestamp is formatted once and never again",
          "if int(epoch) != self._second:",
          "if self._second is None:",
          ("tests/test_golden.py",)),
    Fault("a scan never reads an fd it has not met",
          "if not reread and old.keys() == set(names):",
          "if not reread:",
          ("tests/test_integration.py",)),
    Fault("bytes_received read at the wrong offset of tcp_info",
          "acked, received = TWO_U64.unpack_from(data, info + 120)",
          "acked, received = TWO_U64.unpack_from(data, info + 112)",
          ("tests/test_netlink.py::test_close_event_bytes_from_a_real_kernel_close",)),
    Fault("owners are not reconciled when the kernel's counters stood still",
          "if records is not self.records or changed:  # else nothing here can have changed",
          "if records is not self.records:",
          ("tests/test_netlink.py -k handed",)),
    Fault("TIME_WAIT taken for a socket closed after the dump",
          "record.inode is None and record.status in ENDED_STATES):  # TIME_WAIT keeps the cookie",
          "False):",
          ("tests/test_tracker.py::test_time_wait_keeps_the_kernels_bytes_for_its_close",)),
    Fault("a socket the watcher found after the poll's dump is taken as gone from it",
          "late = [conn for conn, seen in arrivals if seen >= now]",
          "late = []",
          ("tests/test_tracker.py::test_a_socket_found_after_the_snapshot_began_is_not_gone_from_it",)),
    Fault("a late-found socket is kept though the dump shows it in another state",
          "current = current.union(conn for conn in late if conn.cookie not in cookies)",
          "current = current.union(late)",
          ("tests/test_tracker.py::test_a_socket_found_after_the_snapshot_began_that_it_shows_in_another_state_moved_on",)),
    Fault("a poll's lines are not in time order",
          "kept.sort(key=lambda event: (event.time, connection_order(event.conn)))",
          "kept.sort(key=lambda event: connection_order(event.conn))",
          ("tests/test_loop.py",)),
    Fault("the same list again hides the kernel's closes",
          "if connections is self.snapshot and not (events or departures or self.waiting):",
          "if connections is self.snapshot:",
          ("tests/test_tracker.py::test_the_same_list_again_is_nothing_new_but_for_what_came_between",)),
    Fault("a scan skips a process whose number of fds changed",
          'return os.stat(f"{self.proc}/{pid}/fd").st_size == len(old)',
          "return True",
          ("tests/test_netlink.py::test_a_scan_sees_a_socket_passed_to_a_process_it_has_read_before",)),
    Fault("a search meets a new process once, and not again before the next poll",
          "new = [pid for pid in pids if pid not in self.known_pids and not self._unchanged(pid)]",
          "new = [pid for pid in pids if pid not in self.known_pids]\n        self.known_pids.update(new)",
          ("tests/test_netlink.py::test_a_search_finds_a_new_process_that_had_no_socket_at_the_last_look",)),
    Fault("the watcher wakes every --watch while its share of CPU is spent",
          "return max(every, -self.allowance / WATCH_CPU_SHARE)",
          "return every",
          ("tests/test_netlink.py::test_the_watcher_waits_for_its_share_of_cpu_before_it_wakes_again",)),
    # Outputs nobody can silence or stall
    Fault("SIGHUP reopens nothing",
          "        for sink in self.outputs.all():\n            sink.reopen()",
          "        pass",
          ("tests/test_reliability.py::test_sighup_reopens_the_logs_within_a_second",)),
    Fault("SIGHUP waits for the next poll",
          "                attend(signals, poller, status)  # a signal ends the sleep: SIGHUP reopens now",
          "                pass",
          ("tests/test_reliability.py::test_sighup_reopens_the_logs_within_a_second",)),
    Fault("a close lasts until the poll that found it gone",
          'return self._event("close", conn, sighting, max(self.last_sighting, sighting.first_seen), now)',
          'return self._event("close", conn, sighting, max(now, sighting.first_seen), now)',
          ("tests/test_loop.py::test_lifecycle_lines_and_the_statistics_remark",)),
    Fault("no cut-back after a half write to a file",
          "if self.identity is not None and self._cut_back(self.end + whole_end):",
          "if False:",
          ("tests/test_reliability.py::test_a_write_cut_short_by_a_full_disk_leaves_no_half_line",)),
    Fault("a line cut on a pipe is written again whole",
          "lines[whole]\n                whole += 1",
          "lines[whole]",
          ("tests/test_outputs.py::test_a_full_pipe_gets_whole_lines_each_once",)),
    Fault("lines lost at exit leave the exit status 0",
          "    return 1 if lost else 0",
          "    return 0",
          ("tests/test_reliability.py::test_dev_full_reports_once_keeps_polling_and_counts_the_lost_lines",
           "tests/test_outputs.py::test_a_stalled_tcp_collector_never_holds_up_the_polls")),
    Fault("syslog is sent from the poll, not from its own thread",
          "        self.hold([(msgid, line) for line in lines])\n",
          "        self.hold([(msgid, line) for line in lines])\n        self.flush()\n",
          ("tests/test_outputs.py::test_a_stalled_tcp_collector_never_holds_up_the_polls",)),
    Fault("a line too long for a datagram is not cut",
          "for room in (len(message), largest, SYSLOG_SMALL_DATAGRAM):",
          "for room in (len(message),):",
          ("tests/test_outputs.py -k cut_once",)),
    Fault("a line delivered to syslog stays queued, and is sent again",
          "            self._send(sock, headers[msgid], line)\n            self.delivered(1)",
          "            self._send(sock, headers[msgid], line)\n            self.delivered(0)",
          ("tests/test_outputs.py -k cut_once",)),
    Fault("the reader's hangup is noticed only at the next line",
          "if any(isinstance(sink, LogFile) and sink.reader_gone() for sink in self.outputs.all()):",
          "if False:",
          ("tests/test_outputs.py::test_closed_pipe_ends_lognet_on_a_quiet_host_at_the_next_poll",)),
    Fault("a hung-up terminal ends lognet",
          "        except OSError:\n            self.hang_up()\n\n    def resize",
          "        except ZeroDivisionError:\n            self.hang_up()\n\n    def resize",
          ("tests/test_outputs.py::test_closing_the_terminal_leaves_lognet_logging",)),
    Fault("the status line ignores the terminal's width",
          "            if len(text) <= self.width:",
          "            if True:",
          ("tests/test_outputs.py::test_status_line_fits_the_terminal_and_is_redrawn_when_it_is_resized",)),
    Fault("SIGWINCH redraws nothing",
          "        if status:\n            status.resize(poller)",
          "        pass",
          ("tests/test_outputs.py::test_status_line_fits_the_terminal_and_is_redrawn_when_it_is_resized",)),
    Fault("-clog '' is taken as the default path",
          '    if not text:\n        raise argparse.ArgumentTypeError("an empty path',
          '    if False:\n        raise argparse.ArgumentTypeError("an empty path',
          ("tests/test_cli.py",)),
    Fault("--syslog accepts a port that is not a number",
          '    if not (port.isdigit() and 0 < int(port) < 65536):',
          '    if not port:',
          ("tests/test_outputs.py -k bad_syslog",)),
    Fault("--syslog takes an IPv6 address without brackets",
          '    elif rest.count(":") > 1:',
          '    elif False:',
          ("tests/test_outputs.py -k bad_syslog",)),
    Fault("--fields skips an empty name",
          'names = [name.strip() for name in text[append:].split(",")]',
          'names = [name.strip() for name in text[append:].split(",") if name.strip()]',
          ("tests/test_cli.py",)),
    Fault("--fields is ignored with --format jsonl",
          '    if args.fields and args.format == "jsonl":',
          '    if False:',
          ("tests/test_cli.py",)),
    Fault("a log of the other format is appended to",
          "    if found and found != fmt.name:",
          "    if False:",
          ("tests/test_outputs.py -k switching",)),
    Fault("a socket with no file is called hidden",
          "orphan = sighting.orphaned or conn.status == TIME_WAIT or has_no_file(conn) or self.owners_visible",
          "orphan = sighting.orphaned or conn.status == TIME_WAIT",
          ("tests/test_lifecycle.py::test_a_socket_its_process_closed_is_an_orphan_not_hidden",
           "tests/test_tracker.py")),
    Fault("a subset of the original fields turns on lifecycle mode",
          "self.lifecycle_fields = config.format == \"jsonl\" or not set(config.fields) <= set(CONNECTION_FIELDS)",
          "self.lifecycle_fields = config.format == \"jsonl\" or config.fields != CONNECTION_FIELDS",
          ("tests/test_lifecycle.py::test_a_subset_of_the_original_fields_adds_nothing",)),
    Fault("a close event does not end the watcher's quiet spell",
          "            self.moved_at = now  # sockets are closing",
          "            pass  # sockets are closing",
          ("tests/test_netlink.py::test_a_close_event_wakes_a_quiet_watcher_and_brings_back_its_pace",)),
    Fault("a quiet watcher sleeps through close events",
          "return self.wakeful if self.quiet() and not self.shed else []",
          "return []",
          ("tests/test_netlink.py::test_a_close_event_wakes_a_quiet_watcher_and_brings_back_its_pace",)),
    Fault("a namespace's sockets stay open after its last process is gone",
          "            ns.close()\n            self.lost_before += ns.lost",
          "            self.lost_before += ns.lost",
          ("tests/test_namespaces.py::test_fifty_namespaces_come_and_go_and_none_is_kept_alive",)),
    Fault("every namespace's sockets are written with lognet's own netns",
          "records[key] = known.get(key) or decode_socket(*place, protocol, ns.inode)",
          "records[key] = known.get(key) or decode_socket(*place, protocol, self.netns)",
          ("tests/test_namespaces.py::test_each_namespace_is_logged_with_its_owners_and_netns",)),
    Fault("the sockets for another namespace are made in lognet's own",
          "                setns(fd)\n",
          "                pass\n",
          ("tests/test_namespaces.py::test_each_namespace_is_logged_with_its_owners_and_netns",)),
    Fault("a listener is known by its address alone, whatever its namespace",
          "address = (conn.netns, conn.family, conn.laddr)",
          "address = (None, conn.family, conn.laddr)",
          ("tests/test_tracker.py",)),
    Fault("only lognet's own namespace's close events are read",
          "            sock.fileno(): (ns, role) for ns in self.namespaces.values()\n",
          "            sock.fileno(): (ns, role) for ns in [self.namespaces[self.netns]]\n",
          ("tests/test_namespaces.py::test_a_short_client_in_a_namespace_is_logged_with_its_process_at_the_defaults",)),
    Fault("the watcher reads only lognet's own namespace's counters",
          "for ns in self.namespaces.values() if anywhere else {own, *self.closing, *self.asking}:",
          "for ns in [own]:",
          ("tests/test_namespaces.py::test_a_short_client_in_a_namespace_is_logged_with_its_process_at_the_defaults",)),
    Fault("the watcher's first check is the kernel's count of sockets made, alone",
          "return tuple(MEMORY_COUNTS.sub(b\"\", os.pread(self.fds[name], 8192, 0)) for name in self.activity_files)",
          "return (re.search(rb\" alloc \\d+\", os.pread(self.fds[\"sockstat\"], 8192, 0)).group(),)",
          ("tests/test_netlink.py::test_the_watcher_finds_a_socket_made_before_one_look_and_connected_after_it",)),
    Fault("a quiet watcher's wait finds close events, and the look reads none of them",
          "ready = [fd for fd in heard if fd in listening] + (",
          "ready = [] + (",
          ("tests/test_netlink.py::test_a_close_event_wakes_a_quiet_watcher_and_brings_back_its_pace",)),
    Fault("another namespace's close is not enough to look at it again",
          "if counted != ns.counted or ns in self.asking or (ns in self.closing and ns is not own):",
          "if counted != ns.counted or ns in self.asking:",
          ("tests/test_namespaces.py::test_a_close_in_another_namespace_makes_the_watcher_dump_it",)),
    Fault("a namespace's signature moves with the counts kept for every namespace",
          "return tuple(HOST_WIDE_COUNTS.sub(b\"\", os.pread(fd, 8192, 0)) for fd in self.fds.values())",
          "return tuple(os.pread(fd, 8192, 0) for fd in self.fds.values())",
          ("tests/test_namespaces.py::test_a_socket_made_in_another_namespace_leaves_a_namespace_undumped",)),
    Fault("a namespace's TIME_WAIT sockets are not dumped when none is in use",
          "if counts.get(label, {}).get(\"inuse\", \"1\") != \"0\" or (timewait and waiting)}",
          "if counts.get(label, {}).get(\"inuse\", \"1\") != \"0\"}",
          ("tests/test_namespaces.py::test_only_the_kinds_a_namespace_holds_are_dumped",)),
    Fault("the container is never read",
          "return ProcessInfo(pid, name, create_time, tuple(cmdline) if cmdline is not None else None, exe, username,\n"
          "                           container_of(pid))",
          "return ProcessInfo(pid, name, create_time, tuple(cmdline) if cmdline is not None else None, exe, username)",
          ("tests/test_namespaces.py::test_container_comes_from_a_cgroup_named_like_dockers",)),
    Fault("a text table's IPv4 address read in network byte order",
          'int(ip[i:i + 8], 16) for i in range(0, len(ip), 8))), int(port, 16))',
          'int.from_bytes(bytes.fromhex(ip[i:i + 8]), "little") for i in range(0, len(ip), 8))), int(port, 16))',
          ("tests/test_namespaces.py::test_proc_net_tables_are_read_as_the_kernel_writes_them",
           "tests/test_namespaces.py::test_without_setns_other_namespaces_are_read_from_proc")),
    Fault('the tap takes the copy of an answer that lo sends as well as the one it receives',
          '(BPF_LD_MEM, 0), (BPF_JEQ_K, PACKET_OUTGOING, "drop", "keep"),',
          '(BPF_LD_MEM, 0), (BPF_JEQ_K, PACKET_OUTGOING, "keep", "keep"),',
          ('tests/test_names.py::test_only_the_dns_answers_the_namespace_received_reach_the_tap',)),
    Fault("the kernel's filter lets answers from any port through",
          '(BPF_LD_H_IND, 0), (BPF_JEQ_K, DNS_PORT, None, "drop"),',
          '(BPF_LD_H_IND, 0), (BPF_JEQ_K, DNS_PORT, None, None),',
          ('tests/test_names.py::test_only_the_dns_answers_the_namespace_received_reach_the_tap',)),
    Fault("the kernel's filter drops the questions this host sends",
          '(BPF_LD_MEM, 0), (BPF_JEQ_K, PACKET_OUTGOING, "headers", "drop"),',
          '(BPF_LD_MEM, 0), (BPF_JEQ_K, PACKET_OUTGOING, "drop", "drop"),',
          ('tests/test_names.py::test_only_the_dns_answers_the_namespace_received_reach_the_tap',)),
    Fault('every address record names the question, whatever name it is for',
          'return asked, [(address, ttl) for owner, address, ttl in addresses if owner in chain]',
          'return asked, [(address, ttl) for owner, address, ttl in addresses]',
          ('tests/test_names.py::test_records_off_the_chain_and_other_types_name_nothing',)),
    Fault("a label's bytes are written as they came",
          'if label.replace(b"-", b"").replace(b"_", b"").isalnum():',
          'if True:',
          ('tests/test_names.py::test_a_label_cannot_forge_a_field_or_a_line',
           'tests/test_names.py::test_malformed_answers_leave_lognet_running_and_the_fields_whole',)),
    Fault('the latest name wins over the one the process asked for',
          'for table, key in ((self.asked, (netns, pid, address)), (self.recent, (netns, address))):',
          'for table, key in ((self.recent, (netns, address)), (self.asked, (netns, pid, address))):',
          ('tests/test_names.py::test_a_process_gets_the_name_it_asked_for_and_others_the_latest',
           'tests/test_names.py::test_each_process_gets_the_name_it_resolved',)),
    Fault('a name lives for its TTL only',
          'until = now + max(ttl, self.floor)',
          'until = now + ttl',
          ('tests/test_names.py::test_names_last_their_ttl_with_a_floor_and_the_latest_are_kept',)),
    Fault('the name cache grows without bound',
          '        if len(table) > self.kept:\n            table.popitem(last=False)',
          '        if False:\n            table.popitem(last=False)',
          ('tests/test_names.py::test_names_last_their_ttl_with_a_floor_and_the_latest_are_kept',)),
    Fault('an asking socket is forgotten at its close, before its answer is learnt',
          'self.released.append((ns.inode, conn.laddr[1]))',
          'self.askers.pop((ns.inode, conn.laddr[1]), None)',
          ('tests/test_names.py::test_each_process_gets_the_name_it_resolved',)),
    Fault('a question does not make the watcher look at its namespace',
          '            self.asking.add(ns)  # it sent a question',
          '            pass  # it sent a question',
          ('tests/test_names.py::test_each_process_gets_the_name_it_resolved',)),
    Fault('names silently missing without CAP_NET_RAW',
          '                warn(f"host names (rhost) are not available',
          '                (f"host names (rhost) are not available',
          ('tests/test_names.py::test_without_cap_net_raw_one_warning_and_no_names',)),
    Fault("a question does not wake a quiet watcher",
          "self.wakeful = [fd for fd, (_, role) in self.listening.items() if role != \"answers\"]",
          "self.wakeful = [fd for fd, (_, role) in self.listening.items() if role == \"events\"]",
          ("tests/test_names.py::test_each_process_gets_the_name_it_resolved",)),
    Fault("the close filter takes 126/8, not 127/8, for IPv4 loopback",
          "(BPF_LD_B_IND, EVENT_DST), (BPF_JEQ_K, 127, loopback, None)",
          "(BPF_LD_B_IND, EVENT_DST), (BPF_JEQ_K, 126, loopback, None)",
          ("tests/test_flood.py -k close_filter",)),
    Fault("the close filter takes all of 172/8 for private",
          "(BPF_AND_K, 0xF0), (BPF_JEQ_K, 16, private, \"keep\")",
          "(BPF_AND_K, 0x00), (BPF_JEQ_K, 0, private, \"keep\")",
          ("tests/test_flood.py -k close_filter",)),
    Fault("the close events' filter is never attached",
          "                if program:  # before the events come",
          "                if False:  # before the events come",
          ("tests/test_flood.py -k omit_loopback",)),
    Fault("closes counted for the budget are keyed by the client's port on the server's side too",
          "inbound = (inode, data[start + 4:start + 6]) in served",
          "inbound = False",
          ("tests/test_flood.py -k small_budget",)),
    Fault("counted incoming closes are not given the listener's process",
          "if pid is None and conn.laddr and conn.raddr:",
          "if False:",
          ("tests/test_flood.py -k small_budget",)),
    Fault("the budget takes work back as soon as it is under, not under half",
          "elif second < self.share * SHED_RESUME and self.shed:",
          "elif second < self.share and self.shed:",
          ("tests/test_flood.py -k shed_a_step",)),
    Fault("polls are never stretched",
          "return POLL_STRETCH if self.budget is not None and self.budget.shed >= SHED_POLLS else 1",
          "return 1",
          ("tests/test_loop.py -k stretch",)),
    Fault("pausing leaves TCP's close events joined",
          "            self.events.membership(groups, False)",
          "            pass",
          ("tests/test_flood.py -k small_budget",)),
    Fault("the closes counted while paused are dropped at resume",
          "                    self._count_unheard(ns, ns.resume())",
          "                    ns.resume()",
          ("tests/test_flood.py -k small_budget",)),
    Fault("what the watcher decoded does not count against the budget",
          "self.budget.level(len(self.departures) + len(self.arrivals))",
          "self.budget.level()",
          ("tests/test_flood.py -k small_budget",)),
    Fault("TIME_WAIT sockets are dumped while shedding",
          "states &= ~TIME_WAIT_STATE",
          "states &= ALL_STATES",
          ("tests/test_flood.py -k small_budget",)),
    Fault("the kernel's drops are read from the wrong column of /proc/net/netlink",
          "return int(columns[-2])",
          "return int(columns[-3])",
          ("tests/test_flood.py -k dropped",)),
    Fault("--max-cpu takes more than 100",
          "    if value > 100:",
          "    if value > 1000:",
          ("tests/test_flood.py -k refuses",)),
    Fault("the summaries of the last closes are not written at exit",
          "        self.write(*self.logged_events(events), now)\n        self.write_summaries(",
          "        self.write(*self.logged_events(events), now)\n        (lambda *a: None)(",
          ("tests/test_flood.py -k small_budget",)),
]


def run_fault(fault: Fault, workdir: Path) -> tuple[bool, float, str]:
    """Apply the fault in a fresh copy and run its tests; return (caught, seconds, last line)."""
    copy = workdir / "checkout"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", ".ruff_cache"))
    source = (copy / "lognet.py").read_text()
    if source.count(fault.original) != 1:
        raise SystemExit(f"mutants: {fault.name!r}: the original text is in lognet.py "
                         f"{source.count(fault.original)} times, not once")
    (copy / "lognet.py").write_text(source.replace(fault.original, fault.mutated))
    started = time.monotonic()
    arguments = [part for test in fault.tests for part in test.split(" ")]  # "file -k word": three arguments
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *arguments],
                            cwd=copy, capture_output=True, text=True, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    # Caught means a test failed (pytest's status 1); an error before any test ran proves nothing.
    return result.returncode == 1, time.monotonic() - started, lines[-1] if lines else result.stderr.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated numbers of faults to run (1 is the first)")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    args = parser.parse_args()
    chosen = list(enumerate(FAULTS, 1))
    if args.only:
        wanted = {int(n) for n in args.only.split(",")}
        chosen = [(n, f) for n, f in chosen if n in wanted]
    if args.list:
        for n, fault in chosen:
            print(f"{n}. {fault.name}")
        return 0
    print("| # | fault | tests | result |")
    print("|---:|---|---|---|")
    survived = 0
    with tempfile.TemporaryDirectory(prefix="lognet-mutants-") as name:
        for n, fault in chosen:
            caught, seconds, last = run_fault(fault, Path(name))
            survived += not caught
            tests = ", ".join(t.replace("tests/", "") for t in fault.tests)
            verdict = f"caught ({last}, {seconds:.0f} s)" if caught else f"**survived** ({last})"
            print(f"| {n} | {fault.name} | {tests} | {verdict} |", flush=True)
    print(f"\n{len(chosen) - survived} of {len(chosen)} faults caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
