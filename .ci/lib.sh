# Shared by the .ci/install-*.sh scripts (sourced, not run): installing Debian/Ubuntu packages
# as root, or through sudo when not root, without questions and quietly.
# shellcheck shell=bash

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# apt_update: refresh the package index, at most once per script that sources this file.
apt_updated=""
apt_update() {
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -qq >/dev/null
        apt_updated=1
    fi
}

# apt_install PACKAGE...: refresh the index (see apt_update), install without recommends.
apt_install() {
    apt_update
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
