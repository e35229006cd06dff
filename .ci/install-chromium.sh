#!/usr/bin/env bash
# Installs headless Chromium (Debian package "chromium") for tests/test_report.py, which
# renders the HTML report and checks the screenshot. Idempotent: does nothing when a
# chromium is already on PATH.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
apt_install chromium fonts-dejavu-core
chromium --version
