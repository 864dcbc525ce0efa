#!/usr/bin/env bash
# `make install` / `make uninstall` (with --uninstall): binaries, systemd units, a default
# configuration and the state directories. Idempotent. Respects DESTDIR (a staging root for
# packagers) and PREFIX (default /usr/local); BUILD is where the binaries are (default
# target/release), STATIC where the static tug-shim and tug-supervisor are (`make static`;
# default target/x86_64-unknown-linux-gnu/release, used when there); UNITDIR, CONFDIR and STATEDIR default to /etc/systemd/system, /etc/tug
# and /var/lib.
# Configuration files are never overwritten (nor removed by uninstall): they are the
# operator's.
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BUILD=${BUILD:-target/release}
STATIC=${STATIC:-target/x86_64-unknown-linux-gnu/release}
UNITDIR=${UNITDIR:-/etc/systemd/system}
CONFDIR=${CONFDIR:-/etc/tug}
STATEDIR=${STATEDIR:-/var/lib}
bins=(tug tug-scheduler tug-agent tug-shim tug-supervisor)
units=(tug-scheduler.service tug-agent.service tug-etcd.service)

reload() {
    # Only on the live system, and only where systemd is running.
    if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl daemon-reload
    fi
}

if [ "${1:-}" = "--uninstall" ]; then
    for b in "${bins[@]}"; do rm -f "$DESTDIR$PREFIX/bin/$b"; done
    for u in "${units[@]}"; do rm -f "$DESTDIR$UNITDIR/$u"; done
    rm -rf "$DESTDIR$PREFIX/share/doc/tug"
    reload
    echo "make uninstall: removed the binaries and units (kept $CONFDIR and the state directories)"
    exit 0
fi

# Where each binary comes from: the supervisors every pod runs are the static builds (no
# loader, no shared libc pages: smaller), when `make static` made them.
src() {
    case $1 in
    tug-shim | tug-supervisor) if [ -x "$STATIC/$1" ]; then echo "$STATIC/$1"; return; fi ;;
    esac
    echo "$BUILD/$1"
}
for b in "${bins[@]}"; do
    [ -x "$(src "$b")" ] || { echo "make install: $(src "$b") is missing (build first: make release)" >&2; exit 1; }
done
install -d -m 0755 "$DESTDIR$PREFIX/bin" "$DESTDIR$UNITDIR" "$DESTDIR$PREFIX/share/doc/tug"
for b in "${bins[@]}"; do install -m 0755 "$(src "$b")" "$DESTDIR$PREFIX/bin/$b"; done
for u in "${units[@]}"; do
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@CONFDIR@|$CONFDIR|g" "packaging/systemd/$u" > "$DESTDIR$UNITDIR/$u.tmp"
    chmod 0644 "$DESTDIR$UNITDIR/$u.tmp"
    mv "$DESTDIR$UNITDIR/$u.tmp" "$DESTDIR$UNITDIR/$u"
done
install -m 0644 README.md ARCHITECTURE.md "$DESTDIR$PREFIX/share/doc/tug/"
install -d -m 0755 "$DESTDIR$CONFDIR"
[ -e "$DESTDIR$CONFDIR/scheduler.toml" ] || install -m 0644 packaging/config/scheduler.toml "$DESTDIR$CONFDIR/scheduler.toml"
# The agent's file may hold a join token: root only.
[ -e "$DESTDIR$CONFDIR/agent.toml" ] || install -m 0600 packaging/config/agent.toml "$DESTDIR$CONFDIR/agent.toml"
install -d -m 0700 "$DESTDIR$STATEDIR/tug" "$DESTDIR$STATEDIR/tug-agent"
install -d -m 0700 "$DESTDIR$STATEDIR/tug/images"
reload
echo "make install: $PREFIX/bin/{${bins[*]// /,}}, $UNITDIR/{${units[*]// /,}}, $CONFDIR${DESTDIR:+ (under $DESTDIR)}"
