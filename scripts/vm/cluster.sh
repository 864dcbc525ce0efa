#!/usr/bin/env bash
# The VM cluster, part of `make vm-test`: two QEMU guests on one virtual link — QEMU datagram
# sockets between the two processes, Unix sockets in a host directory, so no traffic leaves
# the host's filesystem — booted together. Guest a runs the control plane and an agent, guest
# b an agent joined over TLS with the join token, both provisioned by scripts/vm/provision.sh
# (what the Vagrantfile runs); then a Deployment spread over both answers through its Service
# from each guest (scripts/vm/cluster-guest.sh). Prints each check's result, the guests'
# console logs on failure, and a closing "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/../.."
ws=$(pwd)
cache="$ws/.vm-cache"
mkdir -p "$cache"
bash scripts/vm/kernel.sh "$cache"
make --no-print-directory probe >/dev/null
cargo build --locked --workspace --bins
bins=(target/debug/tug target/debug/tug-scheduler target/debug/tug-agent target/debug/tug-shim target/debug/tug-supervisor)
bash scripts/vm/initramfs.sh "$cache" "$cache/initramfs-cluster.cpio" "${bins[@]}"
# What the guests share: the example image to import, the join token, how far each got.
rdv="$cache/cluster"
rm -rf "$rdv"
mkdir -p "$rdv"
bash scripts/example-image.sh "$rdv/example-image" >/dev/null

. scripts/vm/qemu.sh
accel=$(vm_accel)
VM_LOGS=("$cache/console-cluster-a.log" "$cache/console-cluster-b.log")
for attempt in 1 2; do
    echo "vm-cluster: booting two guests under ${accel%%,*}"
    rm -f "$rdv"/*.sock "$rdv"/join-token "$rdv"/service-ip "$rdv"/done-*
    pids=()
    for role in a b; do
        other=$([ "$role" = a ] && echo b || echo a)
        mac=$([ "$role" = a ] && echo 01 || echo 02)
        timeout 900 qemu-system-x86_64 -accel "$accel" -smp 1 -m 1536 -nographic -no-reboot \
            -kernel "$cache/kernel/vmlinux" -initrd "$cache/initramfs-cluster.cpio" \
            -append "console=ttyS0 panic=-1 quiet tug.ws=$ws tug.cluster=$role" \
            -virtfs "local,path=$ws,mount_tag=share,security_model=none,id=share" \
            -virtfs "local,path=$rdv,mount_tag=rdv,security_model=none,id=rdv" \
            -netdev "dgram,id=link,local.type=unix,local.path=$rdv/$role.sock,remote.type=unix,remote.path=$rdv/$other.sock" \
            -device "virtio-net-pci,netdev=link,mac=52:54:00:77:00:$mac,romfile=" \
            > "$cache/console-cluster-$role.log" 2>&1 &
        pids+=($!)
    done
    qemu_rc=0
    vm_watch 300 "${pids[@]}" || qemu_rc=$?
    [ "$qemu_rc" = 3 ] && [ "$attempt" = 1 ] || break
    for role in a b; do cp "$cache/console-cluster-$role.log" "$cache/console-cluster-$role.log.stalled"; done
    echo "vm-cluster: a guest froze (consoles kept in $cache/console-cluster-*.log.stalled); booting both again"
done

bad=0 passed=0 failed=0
for i in 0 1; do
    role=$([ "$i" = 0 ] && echo a || echo b)
    log="$cache/console-cluster-$role.log"
    tr -d '\r' < "$log" > "$log.txt" && mv "$log.txt" "$log"
    grep -a '^CHECK ' "$log" | sed "s/^CHECK /vm-cluster: $role: /" || true
    passed=$((passed + $(grep -ac '^CHECK .* ok$' "$log" || true)))
    failed=$((failed + $(grep -ac '^CHECK .* FAILED' "$log" || true)))
    rc=$(grep -a "^VMRESULT cluster-$role " "$log" | awk '{print $3}' || true)
    if [ "$rc" != 0 ]; then
        echo "vm-cluster: guest $role failed (exit ${rc:-none}, qemu $qemu_rc); its console log ($log):"
        sed 's/^/    /' "$log" | tail -150
        bad=1
    fi
done
[ $((passed + failed)) -gt 0 ] || { echo "vm-cluster: no check ran in the guests"; bad=1; }
echo "vm-cluster: $passed passed, $failed failed"
[ "$bad" -eq 0 ] && [ "$failed" -eq 0 ]
