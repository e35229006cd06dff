#!/usr/bin/env bash
# Builds the local smoke-test base image (localhost/debian-py311:bookworm) with podman, using
# the shared recipe ../shared/tools/containers/build-local-base.sh (run as root). Exit 0 with a
# message when the recipe or root is missing: tests/test_images.py then skips with the reason
# (and fails under CI=true).
#
# The recipe finds the host's Debian mirror with `grep ... /etc/apt/sources.list.d/*.sources
# /etc/apt/sources.list` under `set -o pipefail`; on a host that only has deb822 sources (no
# /etc/apt/sources.list) grep exits 2 and the recipe stops at once with status 2 and no message.
# So when that file is absent the recipe runs in a private mount namespace in which /etc/apt is
# a copy holding an empty sources.list: the host's own /etc/apt is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe="../shared/tools/containers/build-local-base.sh"
if [ ! -x "$recipe" ]; then
    echo "local-base: $recipe not found; container image tests will skip"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "local-base: not root; $recipe needs root (rootful podman); container image tests will skip"
    exit 0
fi
start=$(date +%s)
if [ -e /etc/apt/sources.list ]; then
    "$recipe"
else
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    cp -a /etc/apt "$tmp/apt"
    printf '# empty: the sources are in sources.list.d (see .ci/build-local-base.sh)\n' \
        > "$tmp/apt/sources.list"
    unshare --mount --propagation private \
        sh -c 'mount --bind "$1/apt" /etc/apt && exec "$2"' sh "$tmp" "$(realpath "$recipe")"
fi
echo "local-base: ready in $(( $(date +%s) - start )) s"
