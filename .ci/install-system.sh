#!/usr/bin/env bash
# Install the XMPP servers that the demo and the integration tests run
# privately, by profile:
#
#   .ci/install-system.sh demo   what `slixmpp-push demo` runs: Debian's Prosody 0.12
#                                and prosody-modules (mod_cloud_notify)
#   .ci/install-system.sh test   (the default) everything the tests start: the above,
#                                ejabberd 23.01 (mod_push) and, unless an initdb is
#                                there already, PostgreSQL (the private cluster of
#                                tests/postgres.py) from Debian; then, through
#                                .ci/install-backports.sh, Prosody 13.0.1 (+
#                                prosody-modules 0.0~hg20250402, mod_cloud_notify_extensions)
#                                and ejabberd 24.12 from bookworm-backports, unpacked into a
#                                private prefix ($SLIXMPP_PUSH_SERVERS, default
#                                /opt/slixmpp-push-servers) beside the system packages, not
#                                replacing them; then the other tools only tests use.
#
# Idempotent: returns at once when everything is installed. The demo and the
# tests start their own instances from a temporary folder on loopback; the
# system services the packages come with are not used, so they are kept from
# starting during the install and stopped/disabled if they run (works without
# systemd too).
set -euo pipefail

profile=${1:-test}
case "$profile" in
    demo)
        PACKAGES=(prosody prosody-modules)
        SERVICES=(prosody)
        PROGRAMS=(prosody prosodyctl)
        ;;
    test)
        PACKAGES=(prosody prosody-modules ejabberd)
        SERVICES=(prosody ejabberd postgresql)
        PROGRAMS=(prosody prosodyctl erl)
        ;;
    *)
        echo "install-system.sh: unknown profile '$profile': demo or test" >&2
        exit 2
        ;;
esac

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

has_service() {  # has_service NAME -> NAME is a service of this profile
    local service
    for service in "${SERVICES[@]}"; do [ "$service" = "$1" ] && return 0; done
    return 1
}

# The PostgreSQL binaries the tests look for (tests/postgres.py): pg_config's bindir, or
# Debian's /usr/lib/postgresql/VERSION/bin.
has_initdb() {
    local bindir
    bindir=$(pg_config --bindir 2>/dev/null || true)
    [ -n "$bindir" ] && [ -x "$bindir/initdb" ] && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

missing=()
for package in "${PACKAGES[@]}"; do
    is_installed "$package" || missing+=("$package")
done
if has_service postgresql && ! has_initdb; then
    missing+=(postgresql)
fi

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
    for service in "${SERVICES[@]}"; do
        "${SUDO[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
    done
else
    # No systemd (a container): stop a running service through its init
    # script, and keep it from starting at boot.
    if pgrep -u prosody -x lua5.4 >/dev/null 2>&1 || pgrep -u prosody prosody >/dev/null 2>&1; then
        "${SUDO[@]}" service prosody stop >/dev/null 2>&1 || true
    fi
    if has_service postgresql && pgrep -u postgres -x postgres >/dev/null 2>&1; then
        # Stops the clusters Debian's pg_ctlcluster manages only, never a test's own.
        "${SUDO[@]}" service postgresql stop >/dev/null 2>&1 || true
    fi
    if has_service ejabberd; then
        # Only when it runs: ejabberd's init script calls ejabberdctl, which
        # would start epmd even to say that nothing is running.
        if pgrep -u ejabberd -x beam.smp >/dev/null 2>&1; then
            "${SUDO[@]}" service ejabberd stop >/dev/null 2>&1 || true
        fi
        for pid in $(pgrep -u ejabberd -x epmd 2>/dev/null || true); do
            "${SUDO[@]}" kill "$pid" 2>/dev/null || true
        done
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        for service in "${SERVICES[@]}"; do
            "${SUDO[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
        done
    fi
fi

for program in "${PROGRAMS[@]}"; do
    if ! command -v "$program" >/dev/null 2>&1; then
        echo "install-system.sh: '$program' is still missing after the install" >&2
        exit 1
    fi
done
ready="prosody $(dpkg-query -W -f='${Version}' prosody)"
if has_service ejabberd; then
    ready="$ready, ejabberd $(dpkg-query -W -f='${Version}' ejabberd)"
fi
if has_service postgresql; then
    if ! has_initdb; then
        echo "install-system.sh: PostgreSQL's initdb is still missing after the install" >&2
        exit 1
    fi
    ready="$ready, PostgreSQL (initdb found)"
fi
echo "install-system.sh ($profile): $ready ready"

if [ "$profile" = test ]; then
    here=$(dirname "$0")
    # Prosody 13 and ejabberd 24.12 (bookworm-backports) in the private prefix.
    bash "$here/install-backports.sh"
    # promtool (Prometheus's rule checker) for tests/test_deploy_assets.py.
    bash "$here/install-promtool.sh"
fi
