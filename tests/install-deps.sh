#!/bin/sh
# Installs what lognet's test suite needs, for the python3 on PATH: psutil, pytest and
# pipx, and on Debian or Ubuntu the system tools the integration tests drive.
#
# A distribution's own Python (Debian 12, Ubuntu 23.04 and later) is "externally managed"
# (PEP 668): pip refuses to install into it, so its packages come from the distribution.
# Any other Python (a virtual environment, pyenv, python.org's) gets them from PyPI.
set -e
cd "$(dirname "$0")/.."

TOOLS="iproute2 util-linux logrotate jq rsyslog nginx-light apache2-utils curl groff-base mandoc"
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi

managed=$(python3 -c 'import os, sysconfig; print(int(os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))')
if command -v dpkg >/dev/null 2>&1; then
    # python3-psutil also serves the tests that run lognet with the distribution's /usr/bin/python3.
    packages="$TOOLS python3-psutil"
    if [ "$managed" = 1 ]; then
        packages="$packages python3-pytest pipx"
    fi
    missing=""
    for package in $packages; do
        dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
elif [ "$managed" = 1 ]; then
    echo "install-deps: $(command -v python3) is externally managed (PEP 668) and this is not Debian:" \
         "run this script inside a virtual environment (python3 -m venv .venv && . .venv/bin/activate)" >&2
    exit 1
else
    echo "install-deps: not Debian; make sure these are installed: $TOOLS" >&2
fi

if [ "$managed" = 0 ]; then
    python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt "pytest>=7" pipx
fi
