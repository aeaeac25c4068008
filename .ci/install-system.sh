#!/usr/bin/env bash
# Install the XMPP servers the integration tests and the demo run privately
# (slixmpp_push.devserver): Prosody 0.12 + prosody-modules (mod_cloud_notify)
# and ejabberd 23.01 (mod_push), from Debian's packages; then, through
# .ci/install-backports.sh, Prosody 13.0.1 (+ prosody-modules 0.0~hg20250402,
# mod_cloud_notify_extensions) and ejabberd 24.12 from bookworm-backports,
# unpacked into a private prefix ($SLIXMPP_PUSH_SERVERS, default
# /opt/slixmpp-push-servers) beside the system packages, not replacing them.
#
# Idempotent: returns at once when everything is installed. The tests start
# their own instances from a temporary folder on loopback; the system services
# the packages come with are not used, so they are kept from starting during
# the install and stopped/disabled if they run (works without systemd too).
set -euo pipefail

PACKAGES=(prosody prosody-modules ejabberd)

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-system.sh: not root and no sudo: cannot install ${PACKAGES[*]}" >&2
    exit 1
fi

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for package in "${PACKAGES[@]}"; do
    is_installed "$package" || missing+=("$package")
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "install-system.sh: installing ${missing[*]}"
    # Keep invoke-rc.d from starting the services during the install, unless
    # a policy (such as Docker's "exit 101") is already in place.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    cleanup() {
        if [ "$added_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi
    }
    trap cleanup EXIT
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    cleanup
    trap - EXIT
fi

# Stop and disable the system services: nothing may depend on them, and they
# would hold 5222/5269/5280 on every interface.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for service in prosody ejabberd; do
        "${SUDO[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
    done
else
    # No systemd (a container): stop a running service through its init
    # script, and keep it from starting at boot.
    if pgrep -u prosody -x lua5.4 >/dev/null 2>&1 || pgrep -u prosody prosody >/dev/null 2>&1; then
        "${SUDO[@]}" service prosody stop >/dev/null 2>&1 || true
    fi
    # Only when it runs: ejabberd's init script calls ejabberdctl, which
    # would start epmd even to say that nothing is running.
    if pgrep -u ejabberd -x beam.smp >/dev/null 2>&1; then
        "${SUDO[@]}" service ejabberd stop >/dev/null 2>&1 || true
    fi
    for pid in $(pgrep -u ejabberd -x epmd 2>/dev/null || true); do
        "${SUDO[@]}" kill "$pid" 2>/dev/null || true
    done
    if command -v update-rc.d >/dev/null 2>&1; then
        for service in prosody ejabberd; do
            "${SUDO[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
        done
    fi
fi

for program in prosody prosodyctl erl; do
    if ! command -v "$program" >/dev/null 2>&1; then
        echo "install-system.sh: '$program' is still missing after the install" >&2
        exit 1
    fi
done
echo "install-system.sh: prosody $(dpkg-query -W -f='${Version}' prosody)," \
    "ejabberd $(dpkg-query -W -f='${Version}' ejabberd) ready"

# Prosody 13 and ejabberd 24.12 (bookworm-backports) in the private prefix.
bash "$(dirname "$0")/install-backports.sh"
