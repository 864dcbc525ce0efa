#!/bin/sh
# The guest's /init: mount the basics and cgroup v2 alone, load Tug's modules, mount the
# host's workspace over 9p at the same path, run each binary named on the kernel command line
# (tug.run=NAME:PATH[:FILTER],...; test binaries get --test-threads=2), print VMRESULT lines,
# power off.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
# The initramfs root cannot be pivoted away from (runc and crun need --no-pivot there): move
# everything onto a tmpfs first and continue there, as a distribution's initramfs does.
if [ ! -e /.stage2 ]; then
    # One container first from the initramfs itself, where pivot_root is refused: tug-shim's
    # fallback (move the rootfs over / and chroot) must make it just as isolated.
    mount -t proc proc /proc
    stage1=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^tug.initramfs=//p')
    if [ -n "$stage1" ]; then
        mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
        mount -t tmpfs tmpfs /tmp; mount -t cgroup2 cgroup2 /sys/fs/cgroup
        for m in virtio_pci 9pnet_virtio 9p; do modprobe "$m"; done
        ws=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^tug.ws=//p')
        mkdir -p "$ws" && mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose share "$ws"
        name=${stage1%%:*}; rest=${stage1#*:}; bin=${rest%%:*}; test=${rest#*:}
        (cd "$ws/integration" && TUG_BIN_DIR="$ws/target/debug" TUG_IN_VM=1 "$bin" --exact "$test" 2>&1)
        echo "VMRESULT $name $?"
        umount "$ws" /sys/fs/cgroup /tmp /dev /sys
    fi
    umount /proc
    mkdir /newroot
    mount -t tmpfs -o size=1g tmpfs /newroot
    for d in /*; do
        [ "$d" = /newroot ] || cp -a "$d" /newroot/
    done
    touch /newroot/.stage2
    exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
# What udev or systemd makes on a real host (nft -j -f - opens /dev/stdin).
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in $(cat /etc/tug-modules); do modprobe "$m" 2>/dev/null || echo "VMWARN modprobe $m failed"; done
ip link set lo up

arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p"; }
ws=$(arg tug.ws)
mkdir -p "$ws"
if ! mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose share "$ws"; then
    echo "VMRESULT mount-9p 1"
    echo "VMDONE"
    poweroff -f
fi
echo "VMBOOTED $(uname -r) cgroup2:$(cat /sys/fs/cgroup/cgroup.controllers)"
export TUG_BIN_DIR="$ws/target/debug" RUST_BACKTRACE=1 TUG_IN_VM=1
n=$(arg tug.bench_n); [ -z "$n" ] || export TUG_BENCH_N="$n"
# A guest of the VM cluster (scripts/vm/cluster.sh): its part, then power off.
role=$(arg tug.cluster)
if [ -n "$role" ]; then
    mkdir -p /rdv
    mount -t 9p -o trans=virtio,version=9p2000.L,cache=none rdv /rdv
    bash "$ws/scripts/vm/cluster-guest.sh" "$role" /rdv 2>&1
    echo "VMRESULT cluster-$role $?"
    echo "VMDONE"
    poweroff -f
fi
cd "$ws/integration"
for t in $(arg tug.run | tr ',' ' '); do
    name=${t%%:*}; bin=${t#*:}; filter=
    case "$bin" in *:*) filter=${bin#*:}; bin=${bin%%:*} ;; esac
    case "$name" in
        bench-*) "$bin" --bench 2>&1 ;;
        *) "$bin" --test-threads=2 $filter 2>&1 ;;
    esac
    echo "VMRESULT $name $?"
done
echo "VMDONE"
poweroff -f
