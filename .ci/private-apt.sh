# Sourced by .ci/install-backports.sh and .ci/install-promtool.sh: fetch Debian
# packages through a PRIVATE apt configuration (sources list, lists and cache in
# a temporary folder), so that the system's sources and dpkg database are never
# touched, and write into the private prefix as ourselves or through sudo.
#
# The caller defines say() and die(), and sets PREFIX, MIRROR, KEYRING, SUITE.
# After private_apt_open: $work (removed on exit) and APT_OPTS for apt-get and
# apt-cache. After choose_writer DIR: AS_OWNER, the command prefix that may
# write DIR ("" or sudo).

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

need_root() {
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        die "not root and no sudo: cannot $*"
    fi
}

choose_writer() {  # choose_writer DIR -> AS_OWNER may write DIR (created if missing)
    local target=$1 parent=$1
    while [ ! -e "$parent" ]; do parent=$(dirname "$parent"); done
    if [ -w "$parent" ] && { [ ! -e "$target" ] || [ -w "$target" ]; }; then
        AS_OWNER=()
    else
        need_root "write $target"
        AS_OWNER=("${SUDO[@]}")
    fi
}

private_apt_open() {  # private_apt_open NAME: the temporary apt setup, its lists updated
    local program
    for program in apt-get apt-cache dpkg-deb; do
        command -v "$program" >/dev/null 2>&1 || die "'$program' is missing (this needs Debian)"
    done
    [ -r "$KEYRING" ] || die "$KEYRING is missing: apt-get install debian-archive-keyring"
    work=$(mktemp -d "${TMPDIR:-/tmp}/slixmpp-push-$1.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
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
}
