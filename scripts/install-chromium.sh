#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver (and a font for readable screenshots) for the
# console's browser tests (compat_tests/test_console.py), unless both are there already.
# Needs root (or sudo) and apt-get; without apt-get it says so and the tests skip.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get: chromium and chromium-driver not installed, the console tests will skip" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"
fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    chromium chromium-driver fonts-liberation
