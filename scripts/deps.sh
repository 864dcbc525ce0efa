#!/usr/bin/env bash
# The idempotent install step behind `make deps`: Debian packages that Tug's build, tests,
# benchmarks and VM suite need. Installs only what is missing; downloads nothing from
# anywhere but Debian's package archive.
set -euo pipefail

# Package → why.
packages=(
    iproute2          # ip: the test harness's namespaces and links
    nftables          # nft: the node's NAT and the service proxy
    iptables          # iptables-restore: the proxy's fallback
    busybox-static    # the userland of test images
    libseccomp-dev    # tug-shim's seccomp filters are built by libseccomp (as runc's and crun's)
    pkg-config        # finds libseccomp for the build
    protobuf-compiler # protoc: etcd-client's build
    etcd-server       # the etcd store backend's tests
    docker-registry   # a real OCI registry on loopback for the image tests
    skopeo            # pushes the image tests' images into it; the pull benchmark's anchor
    umoci             # the pull benchmark's anchor (skopeo copy + umoci unpack)
    runc              # the benchmark anchor on hybrid hosts
    crun              # the benchmark anchor inside the cgroup v2 guest
    hyperfine         # benchmark timing of whole commands
    qemu-system-x86   # the VM suite
    qemu-utils        # keeps qemu-img beside qemu-system-x86 (same suite)
    xz-utils          # unpacking the guest kernel
    cpio              # packing the guest initramfs
    curl              # anonymous TLS requests in the control-plane tests
    systemd           # systemd-analyze verifies the units make install writes
)

if [ "$(id -u)" -ne 0 ]; then
    echo "make deps: run as root (it installs Debian packages; Tug's tests need root too)" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "make deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The tools that must come with the machine: say so plainly when they do not.
for tool in cargo rustc; do
    command -v "$tool" >/dev/null || { echo "make deps: $tool not found: install a Rust toolchain (1.85 or newer)" >&2; exit 1; }
done
# cargo-nextest runs the tests (one process per test suits tests that make namespaces).
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "make deps: installing cargo-nextest from crates.io"
    cargo install --locked cargo-nextest >/dev/null
fi
echo "make deps: all present"
