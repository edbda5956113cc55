"""Runs inside a private pid namespace (unshare -p -f --mount-proc): a holder
process exits, and a second one is started on the same pid, while lognet runs.

Usage: reuse_driver.py CONNECTIONS_LOG PROCESSES_LOG; prints the two holders' info as JSON.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # lognet, which conftest imports
from conftest import Holder, lognet_command, wait_for  # noqa: E402


def main() -> int:
    clog, plog = sys.argv[1:3]
    lognet = subprocess.Popen(lognet_command("-i", "0.1", "-n", "300", "-p", "tcp", "-clog", clog, "-plog", plog))
    holders = []
    try:
        for name in ("lnreuseA", "lnreuseB"):
            if holders:
                # The next fork gets the pid the first holder had.
                with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                    f.write(str(holders[0].pid - 1))
            h = Holder(["--name", name])
            holders.append(h)
            listen = f" {h.info['port']} - - LISTEN "
            wait_for(lambda: os.path.exists(clog) and listen in open(clog).read())  # noqa: B023 (used at once)
            h.stop()
    finally:
        lognet.send_signal(signal.SIGTERM)
        lognet.wait(timeout=30)
    print(json.dumps({"returncode": lognet.returncode, "holders": [h.info for h in holders]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
