#!/bin/sh
# The guest's /init: mount the basics and cgroup v2 alone, load Tug's modules, mount the
# host's workspace over 9p at the same path, run each test binary named on the kernel
# command line, print VMRESULT lines, power off.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
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
export TUG_SHIM_BINARY="$ws/target/debug/tug-shim" RUST_BACKTRACE=1 TUG_IN_VM=1
cd "$ws/integration"
for t in $(arg tug.tests | tr ',' ' '); do
    name=${t%%:*}; bin=${t#*:}
    "$bin" --test-threads=2 2>&1
    echo "VMRESULT $name $?"
done
echo "VMDONE"
poweroff -f
