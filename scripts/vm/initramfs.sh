#!/usr/bin/env bash
# Builds the guest's initramfs: static busybox, the real ip and nft with their libraries, the
# shared libraries of the given binaries, the kernel modules Tug needs (with their
# dependencies), and /init from scripts/vm/init.sh.
#   initramfs.sh CACHE OUT BINARY...
set -euo pipefail
cache=${1:?}; out=${2:?}; shift 2
here=$(cd "$(dirname "$0")" && pwd)
version=$(cat "$cache/kernel/version")
kroot="$cache/kernel/root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

modules=(virtio_pci virtio_blk virtio_net 9pnet_virtio 9p crc32c_generic veth bridge br_netfilter overlay vxlan
    nf_tables nft_nat nft_masq nft_ct nft_numgen nft_chain_nat nft_fib_inet nft_fib_ipv4 nft_reject_inet
    nft_reject_ipv4 nf_conntrack nft_meta_bridge)

mkdir -p "$work"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,mnt,root,lib/modules/"$version"}
cp /bin/busybox "$work/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$work/bin/$applet"
done
# The real ip (busybox's cannot make veth pairs) and nft, ahead of busybox on PATH.
rm -f "$work/bin/ip"
copy_with_libs() {
    local bin=$1 dest=$2
    cp -L "$bin" "$work/$dest"
    ldd "$bin" 2>/dev/null | grep -oE '/[^ ]+' | while read -r lib; do
        mkdir -p "$work/$(dirname "$lib")"
        cp -Ln "$lib" "$work/$lib" 2>/dev/null || true
    done
}
copy_with_libs "$(command -v ip)" sbin/ip
copy_with_libs "$(command -v nft)" usr/sbin/nft
# bash, for the provisioning script (scripts/vm/provision.sh → scripts/install.sh).
copy_with_libs "$(command -v bash)" bin/bash
copy_with_libs "$(command -v install)" usr/bin/install
# What the caller asks for besides (VM_EXTRA: command names, e.g. etcd for the HA cluster).
for extra in ${VM_EXTRA:-}; do
    copy_with_libs "$(command -v "$extra")" "usr/bin/$extra"
done
# The benchmark's anchors, when installed.
for anchor in crun runc; do
    command -v "$anchor" >/dev/null && copy_with_libs "$(command -v "$anchor")" "usr/bin/$anchor"
done
for b in "$@"; do
    ldd "$b" 2>/dev/null | grep -oE '/[^ ]+' | while read -r lib; do
        mkdir -p "$work/$(dirname "$lib")"
        cp -Ln "$lib" "$work/$lib" 2>/dev/null || true
    done
done
# lib64 → the loader, as on the host.
[ -e "$work/lib64" ] || { mkdir -p "$work/lib64"; cp -Ln /lib64/ld-linux-x86-64.so.2 "$work/lib64/"; }

# Kernel modules: the closure of the list over modules.dep.
dep="$kroot/lib/modules/$version/modules.dep"
declare -A want=()
queue=()
for m in "${modules[@]}"; do
    path=$(grep -E "(^|/)${m//_/[_-]}\.ko:" "$dep" | head -1 | cut -d: -f1) || true
    [ -n "$path" ] && queue+=("$path")
done
while [ ${#queue[@]} -gt 0 ]; do
    m=${queue[0]}; queue=("${queue[@]:1}")
    [ -n "${want[$m]:-}" ] && continue
    want[$m]=1
    for d in $(grep -E "^$m:" "$dep" | cut -d: -f2); do queue+=("$d"); done
done
for m in "${!want[@]}"; do
    mkdir -p "$work/lib/modules/$version/$(dirname "$m")"
    cp "$kroot/lib/modules/$version/$m" "$work/lib/modules/$version/$m"
done
cp "$kroot/lib/modules/$version"/modules.* "$work/lib/modules/$version/" 2>/dev/null || true
printf '%s\n' "${modules[@]}" > "$work/etc/tug-modules"
echo "root:x:0:0:root:/root:/bin/sh" > "$work/etc/passwd"
echo "root:x:0:" > "$work/etc/group"
cp "$here/init.sh" "$work/init"
chmod +x "$work/init"
(cd "$work" && find . | cpio -o -H newc --quiet) > "$out"
