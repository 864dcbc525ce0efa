#!/usr/bin/env bash
# The clean-root check in `make test`: proves that `scripts/deps.sh` alone installs every
# non-Rust prerequisite of the build and the tests, on a Debian that has nothing else.
#
# A development or CI machine has packages from its image and from other packages'
# Recommends; a fresh machine does not, and a prerequisite that only came that way breaks
# `make run` there while CI stays green (libprotobuf-dev did). So this script:
#   1. bootstraps a minimal Debian root of this host's release (`mmdebstrap --variant=minbase`,
#      from the host's own apt sources), cached as a tarball for CLEAN_ROOT_DAYS days;
#   2. unpacks it into a fresh directory and runs `deps.sh --packages` inside it (apt-get
#      against Debian's archive, no Recommends), which also checks each tool is on PATH;
#   3. checks inside it that what the build and tests use works there: protoc compiles
#      etcd-client's protos (with the well-known types they import), pkg-config finds
#      libseccomp and gcc links it statically (the static tug-shim), busybox is static, and
#      each tool answers --version;
#   4. removes the root, also when a step fails.
# Usage: clean-root.sh [DEPS_SCRIPT] (default scripts/deps.sh; another copy proves the check
# fails on a list that lacks a package).
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$(realpath "${1:-scripts/deps.sh}")
cache=${TUG_CLEAN_ROOT_CACHE:-/var/cache/tug-test/clean-root}
days=${CLEAN_ROOT_DAYS:-14}
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
base="$cache/$suite-minbase.tar"

command -v mmdebstrap >/dev/null || { echo "clean-root: mmdebstrap not found (make deps installs it)" >&2; exit 1; }
mkdir -p "$cache" && chmod 0700 "$cache"
# A cache that is not a tarball (an older run of this script let mmdebstrap guess the
# format from the name `….tar.tmp`, and it made a directory) is made again.
[ ! -e "$base" ] || [ -f "$base" ] || rm -rf --one-file-system "$base"
rm -rf --one-file-system "$base.tmp"
if [ -z "$(find "$base" -mtime -"$days" 2>/dev/null)" ]; then
    echo "clean-root: bootstrapping a minimal $suite root into $base"
    # The host's apt sources and options, so the root reaches the archive as the host does.
    sources=(/etc/apt/sources.list.d/*.sources)
    [ -e "${sources[0]}" ] || sources=()
    [ -s /etc/apt/sources.list ] && sources+=(/etc/apt/sources.list)
    opts=()
    for f in /etc/apt/apt.conf.d/*; do [ -f "$f" ] && opts+=(--aptopt="$f"); done
    mmdebstrap --quiet --variant=minbase --format=tar "${opts[@]}" "$suite" "$base.tmp" "${sources[@]}"
    mv "$base.tmp" "$base"
fi

root=$(mktemp -d /tmp/tug-clean-root.XXXXXX)
cleanup() {
    # Mounts live in the check's own mount namespace and went with it; the files stay.
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT
tar -xf "$base" -C "$root"
mkdir -p "$root/tug/protos"
cp "$deps" "$root/tug/deps.sh"
# etcd-client's protos, as its build.rs hands them to protoc.
etcd=$(cargo metadata --locked --format-version 1 2>/dev/null \
    | grep -o '"manifest_path":"[^"]*/etcd-client-[0-9][^"]*/Cargo.toml"' | head -1 | cut -d'"' -f4)
[ -n "$etcd" ] || { echo "clean-root: etcd-client's sources not found through cargo metadata" >&2; exit 1; }
cp -r "$(dirname "$etcd")/proto/." "$root/tug/protos/"

cat > "$root/tug/check.sh" <<'CHECK'
set -euo pipefail
fail=0
check() { local what=$1; shift; if out=$("$@" 2>&1); then echo "clean-root: ok   $what"; else echo "clean-root: FAIL $what: $(printf '%s' "$out" | head -3)"; fail=1; fi; }
cd /tug/protos
check "protoc compiles etcd-client's protos with the well-known types" \
    protoc -I . --include_imports -o /dev/null $(find . -name '*.proto' -path './etcd/*' | sort)
check "pkg-config finds libseccomp" pkg-config --exists --print-errors libseccomp
printf '#include <seccomp.h>\nint main(void){scmp_filter_ctx c=seccomp_init(SCMP_ACT_ALLOW);seccomp_release(c);return 0;}\n' > /tmp/s.c
check "gcc links libseccomp statically" sh -c 'gcc -static -o /tmp/s /tmp/s.c $(pkg-config --static --libs libseccomp) && /tmp/s'
check "busybox is static" sh -c '! ldd /bin/busybox >/dev/null 2>&1 && /bin/busybox true'
for t in nft:--version iptables-restore:--version etcd:--version skopeo:--version umoci:--version \
    runc:--version crun:--version hyperfine:--version qemu-system-x86_64:--version qemu-img:--version \
    curl:--version systemd-analyze:--version protoc:--version docker-registry:--version ip:-V; do
    check "${t%%:*} runs" "${t%%:*}" "${t#*:}"
done
exit $fail
CHECK

echo "clean-root: installing the packages of $(basename "$deps") into a bare $suite root"
unshare --mount --propagation private bash -euo pipefail -c '
    root=$1
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t sysfs sys "$root/sys"
    mount -t tmpfs tmp "$root/tmp"
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        bash -c "bash /tug/deps.sh --packages && bash /tug/check.sh"
' check "$root" || { echo "clean-root: a clean $suite root with $(basename "$deps")'s packages lacks what the build or tests need (above)" >&2; exit 1; }
echo "clean-root: every prerequisite is installed by $(basename "$deps") alone"
