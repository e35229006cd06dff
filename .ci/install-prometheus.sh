#!/usr/bin/env bash
# Installs Prometheus, promtool and the Pushgateway (Debian/Ubuntu packages) for
# tests/test_prometheus.py. Idempotent and quiet: does nothing when all are present.
# The tests start the binaries themselves on 127.0.0.1; the packages' own services are
# not needed (and are not started in containers without systemd).
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || need+=(prometheus-pushgateway)
if [ "${#need[@]}" -eq 0 ]; then
    exit 0
fi
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
# policy-rc.d-free install: services may fail to start without systemd; that is fine.
apt_install "${need[@]}"
prometheus --version 2>&1 | head -n 1
prometheus-pushgateway --version 2>&1 | head -n 1
