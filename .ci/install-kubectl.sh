#!/usr/bin/env bash
# Installs kubectl (Debian/Ubuntu packages) for tests/test_chain.py, which runs
# `kubectl create job --from=cronjob/... --dry-run=client` against the test's API double.
# Idempotent: does nothing when a kubectl is already on PATH.
# Debian bookworm has no package named "kubectl": its kubectl is in "kubernetes-client"
# (1.20.2, which knows CronJobs only as batch/v1beta1; the test's double serves that
# version to a kubectl older than 1.21). Newer Debian/Ubuntu releases call it "kubectl".
set -euo pipefail
if command -v kubectl >/dev/null 2>&1; then
    exit 0
fi
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
apt_update
pkg=kubernetes-client
if apt-cache show kubectl >/dev/null 2>&1; then
    pkg=kubectl
fi
apt_install "$pkg"
kubectl version --client 2>&1 | head -n 1
