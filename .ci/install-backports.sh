#!/usr/bin/env bash
# Install Prosody 13.0.1 (+ prosody-modules 0.0~hg20250402) and ejabberd 24.12
# from Debian bookworm-backports into a PRIVATE prefix, beside the system's
# Prosody 0.12 and ejabberd 23.01 (which the demo and most tests keep using).
#
#   prefix:  $SLIXMPP_PUSH_SERVERS, default /opt/slixmpp-push-servers
#     prosody13/      dpkg -x of prosody + prosody-modules (usr/bin/prosody,
#                     usr/lib/prosody/{core,util,net,modules}); the launchers
#                     are patched to read PROSODY_SRCDIR/_PLUGINDIR/_CFGDIR/
#                     _DATADIR like an unconfigured upstream launcher
#     ejabberd24.12/  dpkg -x of ejabberd + the erlang-* libraries it needs in
#                     newer versions than bookworm's (usr/lib/<multiarch>/
#                     ejabberd-24.12-*, usr/lib/erlang/lib/p1_*-*)
#   each with a .installed stamp listing the exact package versions.
#
# tests/devservers.py (Prosody13Server, Ejabberd2412Server) finds the
# prefix the same way. Nothing is added to the system's apt sources: apt runs
# with a private sources list, lists and cache in a temporary folder, and the
# .debs are unpacked with dpkg -x (no maintainer scripts, no services, no
# dpkg database entries). The bookworm libraries they run with (Lua modules,
# Erlang/OTP 25 and the erlang-* packages whose bookworm version suffices)
# are installed into the system with apt-get when missing.
#
# Idempotent: returns at once when both stamps match the pins below.
# Mirror override (e.g. a snapshot.debian.org URL once backports moved on):
# SLIXMPP_PUSH_BACKPORTS_MIRROR.
set -euo pipefail

PREFIX=${SLIXMPP_PUSH_SERVERS:-/opt/slixmpp-push-servers}
MIRROR=${SLIXMPP_PUSH_BACKPORTS_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SUITE=bookworm-backports
LAYOUT=1  # bump when the unpacked layout or the launcher patch changes

# Exact versions (bookworm-backports, 2025). Change together with
# tests/devservers.py's version constants.
PROSODY13_DEBS=(
    "prosody=13.0.1-1~bpo12+1"
    "prosody-modules=0.0~hg20250402.f315edc39f3d+dfsg-1~bpo12+1"
)
# ejabberd 24.12 and every dependency of it whose bookworm version does not
# satisfy its Depends (bookworm has OTP 25.2.3, which 24.12 accepts).
EJABBERD2412_DEBS=(
    "ejabberd=24.12-3~bpo12+1"
    "erlang-jose=1.11.10-1~bpo12+1"
    "erlang-p1-acme=1.0.25-1~bpo12+1"
    "erlang-p1-cache-tab=1.0.31-2~bpo12+1"
    "erlang-p1-eimp=1.0.23-4~bpo12+1"
    "erlang-p1-mqtree=1.0.17-2~bpo12+1"
    "erlang-p1-pkix=1.0.10-2~bpo12+1"
    "erlang-p1-stringprep=1.0.30-2~bpo12+1"
    "erlang-p1-stun=1.2.15-1~bpo12+1"
    "erlang-p1-tls=1.1.22-1~bpo12+1"
    "erlang-p1-utils=1.0.26-2~bpo12+1"
    "erlang-p1-xml=1.1.55-1~bpo12+1"
    "erlang-p1-xmpp=1.9.4-1~bpo12+1"
    "erlang-p1-yaml=1.0.37-2~bpo12+1"
    "erlang-p1-yconf=1.0.17-1~bpo12+1"
    "erlang-p1-zlib=1.0.13-2~bpo12+1"
)
# The rest of their Depends, from bookworm, as "package" or "package>=version"
# (lua5.4-bitop/-expat/-filesystem/-sec/-socket are provided by lua-*).
PROSODY13_SYSTEM=(
    lua5.4 "lua-expat>=1.2.0" "lua-filesystem>=1.4.2-3~" lua-bitop lua-sec lua-socket
    ssl-cert "libicu72>=72.1~rc-1~" "libssl3>=3.0.0"
)
OTP="1:25.2.3+dfsg"
EJABBERD2412_SYSTEM=(
    "erlang-base>=$OTP" "erlang-asn1>=$OTP" "erlang-crypto>=$OTP" "erlang-inets>=$OTP"
    "erlang-mnesia>=$OTP" "erlang-odbc>=$OTP" "erlang-os-mon>=$OTP" "erlang-public-key>=$OTP"
    "erlang-ssl>=$OTP" "erlang-syntax-tools>=$OTP" "erlang-eunit>=$OTP" "erlang-tools>=$OTP"
    "erlang-dialyzer>=$OTP" erlang-xmerl
    "erlang-base64url>=1.0.1" "erlang-goldrush>=0.1.9" "erlang-idna>=6.0.0"
    "erlang-jiffy>=1.1.1" "erlang-lager>=3.9.1" "erlang-unicode-util-compat>=0.3.1"
    ca-certificates openssl libexpat1 libyaml-0-2 "libssl3>=3.0.0"
)

say() { echo "install-backports.sh: $*"; }
die() { echo "install-backports.sh: $*" >&2; exit 1; }

stamp_text() {  # the stamp a finished install of "$@" writes
    printf 'layout=%s\n' "$LAYOUT"
    printf '%s\n' "$@"
}

is_done() {  # is_done DIR DEB... -> the stamp in DIR matches
    local dir=$1; shift
    [ -f "$PREFIX/$dir/.installed" ] && [ "$(cat "$PREFIX/$dir/.installed")" = "$(stamp_text "$@")" ]
}

if is_done prosody13 "${PROSODY13_DEBS[@]}" && is_done ejabberd24.12 "${EJABBERD2412_DEBS[@]}"; then
    # Still check the system side (cheap): someone may have removed a library.
    quick=1
else
    quick=0
fi

# shellcheck source=private-apt.sh
. "$(dirname "$0")/private-apt.sh"

unsatisfied() {  # prints the specs ("pkg" / "pkg>=ver") not satisfied by installed packages
    local spec name want have
    for spec in "$@"; do
        name=${spec%%>=*}
        want=${spec#"$name"}; want=${want#>=}
        have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
        case "$have" in
            "install ok installed "*) have=${have#install ok installed } ;;
            *) echo "$spec"; continue ;;
        esac
        if [ -n "$want" ] && ! dpkg --compare-versions "$have" ge "$want"; then
            echo "$spec (installed: $have)"
        fi
    done
}

system_specs=("${PROSODY13_SYSTEM[@]}" "${EJABBERD2412_SYSTEM[@]}")
mapfile -t missing < <(unsatisfied "${system_specs[@]}")
if [ ${#missing[@]} -gt 0 ]; then
    names=()
    for spec in "${missing[@]}"; do names+=("${spec%%>=*}"); done
    names=("${names[@]%% *}")
    need_root "install the bookworm packages ${names[*]}"
    say "installing bookworm packages ${names[*]}"
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${names[@]}"
    mapfile -t missing < <(unsatisfied "${system_specs[@]}")
    if [ ${#missing[@]} -gt 0 ]; then
        die "still not satisfied after apt-get install: ${missing[*]}" \
            "(Prosody 13 / ejabberd 24.12 need them from Debian bookworm)"
    fi
fi

if [ "$quick" -eq 1 ]; then
    say "prosody 13.0.1 and ejabberd 24.12 ready in $PREFIX"
    exit 0
fi

# ----------------------------------------------------------- backports .debs

# Write the prefix as ourselves when we may, else through sudo.
choose_writer "$PREFIX"
private_apt_open backports
mkdir -p "$work/debs"

install_tree() {  # install_tree DIR DEB...
    local dir=$1; shift
    if is_done "$dir" "$@"; then
        say "$dir: already installed"
        return
    fi
    local spec name version available absent=()
    for spec in "$@"; do
        name=${spec%%=*}; version=${spec#*=}
        available=$(apt-cache "${APT_OPTS[@]}" madison "$name" 2>/dev/null \
            | awk -F'|' -v v="$version" '{gsub(/ /, "", $2)} $2 == v {print $2}')
        if [ -z "$available" ]; then
            available=$(apt-cache "${APT_OPTS[@]}" madison "$name" 2>/dev/null \
                | awk -F'|' '{gsub(/ /, "", $2); printf "%s%s", sep, $2; sep=", "}')
            absent+=("$spec (it has: ${available:-nothing})")
        fi
    done
    if [ ${#absent[@]} -gt 0 ]; then
        die "$SUITE at $MIRROR no longer offers: ${absent[*]}." \
            "Update the pins in .ci/install-backports.sh (and tests/devservers.py), or set" \
            "SLIXMPP_PUSH_BACKPORTS_MIRROR to a snapshot.debian.org URL that has them."
    fi
    rm -rf "${work:?}/debs/$dir"; mkdir -p "$work/debs/$dir"
    say "$dir: downloading $*"
    (cd "$work/debs/$dir" && apt-get "${APT_OPTS[@]}" download "$@" >"$work/download.log" 2>&1) || {
        cat "$work/download.log" >&2
        die "$dir: apt-get download failed"
    }
    local new="$PREFIX/.$dir.new" deb
    "${AS_OWNER[@]}" rm -rf "$new"
    "${AS_OWNER[@]}" mkdir -p "$new"
    for deb in "$work/debs/$dir"/*.deb; do
        "${AS_OWNER[@]}" dpkg-deb -x "$deb" "$new"
    done
    "post_$dir" "$new"
    stamp_text "$@" | "${AS_OWNER[@]}" tee "$new/.installed" >/dev/null
    "${AS_OWNER[@]}" rm -rf "${PREFIX:?}/$dir"
    "${AS_OWNER[@]}" mv "$new" "$PREFIX/$dir"
    say "$dir: unpacked into $PREFIX/$dir"
}

post_prosody13() {
    local root=$1 launcher var
    # Debian's launchers have the folders baked in (CFG_SOURCEDIR='/usr/lib/prosody';
    # …): that would load the SYSTEM Prosody 0.12 sources. Make them read the
    # folders from PROSODY_* like an unconfigured upstream launcher, defaulting
    # to this tree.
    for launcher in prosody prosodyctl; do
        "${AS_OWNER[@]}" sed -i \
            -e "s|^CFG_SOURCEDIR='/usr/lib/prosody';|CFG_SOURCEDIR=os.getenv(\"PROSODY_SRCDIR\") or '$PREFIX/prosody13/usr/lib/prosody';|" \
            -e "s|^CFG_CONFIGDIR='/etc/prosody';|CFG_CONFIGDIR=os.getenv(\"PROSODY_CFGDIR\") or '$PREFIX/prosody13/etc/prosody';|" \
            -e "s|^CFG_PLUGINDIR='/usr/lib/prosody/modules/';|CFG_PLUGINDIR=os.getenv(\"PROSODY_PLUGINDIR\") or '$PREFIX/prosody13/usr/lib/prosody/modules/';|" \
            -e "s|^CFG_DATADIR='/var/lib/prosody';|CFG_DATADIR=os.getenv(\"PROSODY_DATADIR\") or '$PREFIX/prosody13/var/lib/prosody';|" \
            "$root/usr/bin/$launcher"
        for var in SRCDIR CFGDIR PLUGINDIR DATADIR; do
            grep -q "os.getenv(\"PROSODY_$var\")" "$root/usr/bin/$launcher" \
                || die "could not patch $launcher's CFG_ line for PROSODY_$var (Debian changed the launcher?)"
        done
    done
    local file
    for file in usr/bin/prosody usr/lib/prosody/modules/mod_cloud_notify.lua \
        usr/lib/prosody/modules/mod_cloud_notify_extensions/mod_cloud_notify_extensions.lua; do
        [ -e "$root/$file" ] || die "prosody13: $file is missing after unpacking"
    done
}

post_ejabberd24.12() {
    local root=$1
    compgen -G "$root/usr/lib/*/ejabberd-24.12*/ebin/ejabberd.app" >/dev/null \
        || die "ejabberd24.12: ebin/ejabberd.app is missing after unpacking"
    [ -d "$root/usr/lib/erlang/lib/p1_xmpp-1.9.4/ebin" ] \
        || die "ejabberd24.12: p1_xmpp-1.9.4 is missing after unpacking"
}

"${AS_OWNER[@]}" mkdir -p "$PREFIX"
install_tree prosody13 "${PROSODY13_DEBS[@]}"
install_tree ejabberd24.12 "${EJABBERD2412_DEBS[@]}"
say "prosody 13.0.1 and ejabberd 24.12 ready in $PREFIX"
