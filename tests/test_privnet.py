"""--omit-privnet-conns against real connections to private addresses.

The addresses live on the loopback device of a network namespace that the test
creates (unshare -n), so no packet leaves it.
"""

import subprocess

from conftest import data_lines, lognet_command, require_root, upid_of

PRIVATE = ("10.9.8.7", "172.20.0.1", "192.168.77.1")
PUBLIC = "198.51.100.7"  # TEST-NET-2: documentation range, not RFC 1918
SETUP = " && ".join(["ip link set lo up"] + [f"ip addr add {a}/32 dev lo" for a in PRIVATE + (PUBLIC,)]
                    + ['exec "$@"'])


def remote_addresses(tmp_path, netns_pid, upid, *options):
    clog = tmp_path / f"c{len(options)}.log"
    result = subprocess.run(["nsenter", f"--net=/proc/{netns_pid}/ns/net",
                             *lognet_command("-n", "2", "-i", "0.2", *options, "-clog", clog,
                                             "-plog", tmp_path / "p.log")],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    return sorted(line.split(" ")[4] for line in data_lines(clog) if line.endswith(" " + upid))


def test_private_peers_are_omitted_also_when_ipv4_mapped(tmp_path, holder):
    require_root("unshare -n and ip addr add need CAP_NET_ADMIN and CAP_SYS_ADMIN")
    args = ["--name", "lnprivnet", "--host", "::"]
    for address in PRIVATE + (PUBLIC,):
        args += ["--connect", address]
    h = holder(*args, prefix=("unshare", "-n", "sh", "-c", SETUP, "sh"))
    upid = upid_of(h.pid, "lnprivnet")
    # The IPv4 client end reports the plain address, the dual-stack server end the IPv4-mapped one.
    mapped = ["::ffff:" + a for a in PRIVATE + (PUBLIC,)]
    everything = remote_addresses(tmp_path, h.pid, upid)
    assert everything == sorted(["-", "-", h.info["peer"], h.info["peer"], *PRIVATE, PUBLIC, *mapped])
    kept = remote_addresses(tmp_path, h.pid, upid, "--omit-privnet-conns")
    assert kept == sorted(["-", "-", h.info["peer"], h.info["peer"], PUBLIC, "::ffff:" + PUBLIC])
