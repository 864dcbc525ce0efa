#!/usr/bin/env bash
# The idempotent install step behind `make deps`: Debian packages that Tug's build, tests,
# benchmarks and VM suite need. Installs only what is missing; downloads nothing from
# anywhere but Debian's package archive (and cargo-nextest from crates.io).
#
#   deps.sh             the packages, then the Rust tools (what `make test` and `make run` do)
#   deps.sh --packages  the packages and the check of the tools they bring, nothing else: what
#                       scripts/clean-root.sh runs inside a minimal Debian root
#
# Every package the project uses is named here, even one a machine image or another
# package's Recommends usually brings (that is how libprotobuf-dev went missing): the
# clean-root check in `make test` installs this list into a bare Debian and proves each tool
# below is there and works.
set -euo pipefail

# Package → why.
packages=(
    iproute2          # ip, bridge: the test harness's namespaces and links
    nftables          # nft: the node's NAT and the service proxy
    iptables          # iptables-restore: the proxy's fallback
    busybox-static    # the userland of test images and of the VM's initramfs
    libseccomp-dev    # tug-shim's seccomp filters are built by libseccomp (as runc's and crun's)
    pkg-config        # finds libseccomp for the build
    gcc               # the linker of every Rust build; the C parts of aws-lc-sys
    libc6-dev         # crt files and libc.a for the static tug-shim and tug-probe
    protobuf-compiler # protoc: etcd-client's build
    libprotobuf-dev   # google/protobuf/*.proto that etcd-client's protos import (protoc only recommends it)
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
    curl              # anonymous TLS requests in the control-plane tests; make run's check
    systemd           # systemd-analyze verifies the units make install writes
    util-linux        # setsid, unshare (the clean-root check), mount
    bsdutils          # script: the exec tests' terminal
    mmdebstrap        # the clean-root check: a bare Debian to install this list into
    python3-venv      # the project-local virtual environment of the Kubernetes Python client
)

# Tool → the package above that brings it: checked after every install, here and in the
# clean root, so a package that stops bringing a tool is caught where it is named.
tools=(
    ip:iproute2 bridge:iproute2 nft:nftables iptables-restore:iptables busybox:busybox-static
    pkg-config:pkg-config gcc:gcc protoc:protobuf-compiler etcd:etcd-server
    docker-registry:docker-registry skopeo:skopeo umoci:umoci runc:runc crun:crun
    hyperfine:hyperfine qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils xz:xz-utils
    cpio:cpio curl:curl systemd-analyze:systemd setsid:util-linux
    unshare:util-linux setpriv:util-linux script:bsdutils mmdebstrap:mmdebstrap ldd:libc-bin
    python3:python3-venv
)

if [ "$(id -u)" -ne 0 ]; then
    echo "make deps: run as root (it installs Debian packages; Tug's tests need root too)" >&2
    exit 1
fi

# Two passes: apt may remove an installed package to satisfy another (a machine had
# qemu-utils from backports, which apt removed to install Debian's qemu-system-x86); the
# second pass puts back what the first took away, in the versions that fit together.
for pass in 1 2; do
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || break
    echo "make deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    [ "$pass" -gt 1 ] || apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done

absent=()
for t in "${tools[@]}"; do
    command -v "${t%%:*}" >/dev/null || absent+=("${t%%:*} (package ${t#*:})")
done
if [ ${#absent[@]} -gt 0 ]; then
    echo "make deps: installed, yet not on PATH: ${absent[*]}" >&2
    exit 1
fi
[ "${1:-}" != --packages ] || { echo "make deps: packages present"; exit 0; }

# The tools that must come with the machine: say so plainly when they do not.
for tool in cargo rustc; do
    command -v "$tool" >/dev/null || { echo "make deps: $tool not found: install a Rust toolchain (1.85 or newer)" >&2; exit 1; }
done
# cargo-nextest runs the tests (one process per test suits tests that make namespaces).
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "make deps: installing cargo-nextest from crates.io"
    cargo install --locked cargo-nextest >/dev/null
fi
# The official Kubernetes Python client (PyPI), which the kubectl-compatibility test drives
# Tug with: in a virtual environment of the project's, never the system's Python.
venv="$(cd "$(dirname "$0")/.." && pwd)/target/kubernetes-venv"
if ! "$venv/bin/python" -c 'import kubernetes' >/dev/null 2>&1; then
    echo "make deps: installing the kubernetes Python client into $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes==32.0.1"
fi
echo "make deps: all present"
