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

for program in apt-get apt-cache dpkg-deb; do
    command -v "$program" >/dev/null 2>&1 || die "'$program' is missing (this needs Debian)"
done
[ -r "$KEYRING" ] || die "$KEYRING is missing: apt-get install debian-archive-keyring"

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi
# Write the prefix as ourselves when we may, else through sudo.
parent=$PREFIX
while [ ! -e "$parent" ]; do parent=$(dirname "$parent"); done
if [ -w "$parent" ] && { [ ! -e "$TARGET" ] || [ -w "$TARGET" ]; }; then
    AS_OWNER=()
elif [ ${#SUDO[@]} -gt 0 ]; then
    AS_OWNER=("${SUDO[@]}")
else
    die "not root and no sudo: cannot write $TARGET"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/slixmpp-push-promtool.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/deb"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" > "$work/sources.list"
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$work/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=$(id -un)"  # no _apt: it could not write our folder
    -q
)
say "reading $SUITE from $MIRROR (private apt lists in $work)"
apt-get "${APT_OPTS[@]}" update >"$work/update.log" 2>&1 || {
    cat "$work/update.log" >&2
    die "apt-get update of $SUITE from $MIRROR failed"
}
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
