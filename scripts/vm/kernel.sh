#!/usr/bin/env bash
# Fetches Debian's generic kernel (the linux-image-*-amd64 that linux-image-amd64 depends on)
# through apt into CACHE once, and prepares it for the VM suite:
#   CACHE/kernel/version   the kernel release, e.g. 6.1.0-56-amd64
#   CACHE/kernel/vmlinux   the uncompressed ELF (boots faster than vmlinuz, via PVH)
#   CACHE/kernel/root/     the unpacked package, modules.dep made by busybox depmod
set -euo pipefail
cache=${1:?usage: kernel.sh CACHE}
dir="$cache/kernel"
[ -f "$dir/vmlinux" ] && [ -f "$dir/version" ] && exit 0

pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "vm: cannot find the kernel package linux-image-amd64 depends on" >&2; exit 1; }
version=${pkg#linux-image-}
rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
(cd "$dir.tmp" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "vm: apt-get download $pkg failed" >&2; exit 1; }
dpkg -x "$dir.tmp"/*.deb "$dir.tmp/root"
rm -f "$dir.tmp"/*.deb
# The inner ELF starts at the XZ magic inside the bzImage.
vmlinuz="$dir.tmp/root/boot/vmlinuz-$version"
offset=$(grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)
tail -c +$((offset + 1)) "$vmlinuz" | xz -dc > "$dir.tmp/vmlinux" 2>/dev/null || true
if ! head -c 4 "$dir.tmp/vmlinux" | grep -q $'\x7fELF'; then
    echo "vm: could not extract vmlinux from $vmlinuz; booting the bzImage instead" >&2
    cp "$vmlinuz" "$dir.tmp/vmlinux"
fi
busybox depmod -b "$dir.tmp/root" "$version"
echo "$version" > "$dir.tmp/version"
rm -rf "$dir" && mv "$dir.tmp" "$dir"
