#!/usr/bin/env bash
# Install promtool (Prometheus's rule checker) from Debian bookworm's
# `prometheus` package into a PRIVATE prefix, for tests/test_deploy_assets.py,
# which checks docs/deploy/prometheus-rules.yml with `promtool check rules` and
# `promtool test rules`.
#
#   prefix:  $SLIXMPP_PUSH_SERVERS, default /opt/slixmpp-push-servers
#     prometheus/promtool    the binary, nothing else from the package
#     prometheus/.installed  the package version it came from
#
# Installing the package itself would start a Prometheus daemon on :9090 and
# pull in its dependencies; promtool is one static Go binary, so the .deb is
# fetched with `apt-get download` (a private sources list, lists and cache in a
# temporary folder, as .ci/install-backports.sh does), unpacked with dpkg-deb
# -x, and only usr/bin/promtool is kept. No maintainer scripts, no service, no
# dpkg database entry.
#
# Idempotent: returns at once when the prefix holds a promtool that runs.
# Mirror override: SLIXMPP_PUSH_DEBIAN_MIRROR.
set -euo pipefail

PREFIX=${SLIXMPP_PUSH_SERVERS:-/opt/slixmpp-push-servers}
MIRROR=${SLIXMPP_PUSH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SUITE=bookworm
TARGET=$PREFIX/prometheus

say() { echo "install-promtool.sh: $*"; }
die() { echo "install-promtool.sh: $*" >&2; exit 1; }

if [ -x "$TARGET/promtool" ] && [ -f "$TARGET/.installed" ] \
    && "$TARGET/promtool" --version >/dev/null 2>&1; then
    say "promtool $(cat "$TARGET/.installed") ready in $TARGET"
    exit 0
fi

# shellcheck source=private-apt.sh
. "$(dirname "$0")/private-apt.sh"
choose_writer "$TARGET"
private_apt_open promtool
mkdir -p "$work/deb"
version=$(apt-cache "${APT_OPTS[@]}" policy prometheus 2>/dev/null \
    | awk '$1 == "Candidate:" {print $2}')
case "$version" in
    "" | "(none)") die "$SUITE at $MIRROR offers no 'prometheus' package" ;;
esac

say "downloading prometheus=$version"
(cd "$work/deb" && apt-get "${APT_OPTS[@]}" download "prometheus=$version" \
    >"$work/download.log" 2>&1) || {
    cat "$work/download.log" >&2
    die "apt-get download prometheus=$version failed"
}
dpkg-deb -x "$work/deb"/prometheus_*.deb "$work/tree"
[ -x "$work/tree/usr/bin/promtool" ] \
    || die "prometheus=$version has no usr/bin/promtool (Debian changed the package?)"
"$work/tree/usr/bin/promtool" --version >/dev/null 2>&1 \
    || die "the unpacked promtool of prometheus=$version does not run"

new="$PREFIX/.prometheus.new"
"${AS_OWNER[@]}" rm -rf "$new"
"${AS_OWNER[@]}" mkdir -p "$new"
"${AS_OWNER[@]}" install -m 0755 "$work/tree/usr/bin/promtool" "$new/promtool"
echo "prometheus=$version" | "${AS_OWNER[@]}" tee "$new/.installed" >/dev/null
"${AS_OWNER[@]}" rm -rf "$TARGET"
"${AS_OWNER[@]}" mv "$new" "$TARGET"
say "promtool from prometheus=$version unpacked into $TARGET"
