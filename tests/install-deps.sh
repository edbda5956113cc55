#!/bin/sh
# Installs what lognet's test suite needs: psutil and pytest from PyPI, and on
# Debian or Ubuntu the system tools the integration tests drive.
set -e
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt "pytest>=7" pipx

PACKAGES="iproute2 util-linux logrotate python3-psutil jq rsyslog"
command -v dpkg >/dev/null 2>&1 || { echo "install-deps: not Debian; make sure these are installed: $PACKAGES" >&2; exit 0; }
missing=""
for package in $PACKAGES; do
    dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
