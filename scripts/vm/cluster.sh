#!/usr/bin/env bash
# The VM cluster, part of `make vm-test`: three QEMU guests, each a server of a highly
# available control plane (scripts/vm/provision.sh server --ha: an etcd member, a
# tug-scheduler replica, an agent joined to every replica with the join token), booted
# together. Their links are QEMU datagram sockets between the processes, Unix sockets in a
# host directory, so no traffic leaves the host's filesystem: a–b and b–c, with guest b
# bridging its two links into one segment (192.168.77.0/24). Then a Deployment spread over
# the three answers through its Service from each guest, the leading replica is killed, and
# the survivors take over (scripts/vm/cluster-guest.sh). Prints each check's result, the
# guests' console logs on failure, the failed checks again, and a closing "N passed, N failed"
# line.
set -euo pipefail
cd "$(dirname "$0")/../.."
ws=$(pwd)
cache="$ws/.vm-cache"
mkdir -p "$cache"
bash scripts/vm/kernel.sh "$cache"
make --no-print-directory probe >/dev/null
cargo build --locked --workspace --bins
command -v etcd >/dev/null || { echo "vm-cluster: etcd is missing (make deps installs etcd-server)" >&2; exit 1; }
bins=(target/debug/tug target/debug/tug-scheduler target/debug/tug-agent target/debug/tug-shim target/debug/tug-supervisor)
VM_EXTRA=etcd bash scripts/vm/initramfs.sh "$cache" "$cache/initramfs-cluster.cpio" "${bins[@]}"
# What the guests share: the example image to import, the replicas' PKI secret, how far each
# got.
rdv="$cache/cluster"
rm -rf "$rdv"
mkdir -p "$rdv"
bash scripts/example-image.sh "$rdv/example-image" >/dev/null
(umask 077; head -c 32 /dev/urandom | base64 > "$rdv/pki-secret")

. scripts/vm/qemu.sh
accel=$(vm_accel)
roles=(a b c)
VM_LOGS=()
for role in "${roles[@]}"; do VM_LOGS+=("$cache/console-cluster-$role.log"); done
# link NAME LOCAL REMOTE MAC: a virtio NIC on the datagram link between two sockets.
link() {
    echo "-netdev dgram,id=$1,local.type=unix,local.path=$rdv/$2.sock,remote.type=unix,remote.path=$rdv/$3.sock"
    echo "-device virtio-net-pci,netdev=$1,mac=52:54:00:77:00:$4,romfile="
}
for attempt in 1 2; do
    echo "vm-cluster: booting three guests under ${accel%%,*}"
    rm -rf "$rdv"/*.sock "$rdv"/service-ip "$rdv"/done-* "$rdv"/ready-* "$rdv"/leader "$rdv"/killed "$rdv"/kill-claimed
    pids=()
    for role in "${roles[@]}"; do
        case $role in
            a) nics=$(link ab a b-a 01) ;;
            b) nics="$(link ab b-a a 02) $(link bc b-c c 12)" ;;
            c) nics=$(link bc c b-c 03) ;;
        esac
        # shellcheck disable=SC2086 # $nics is a list of arguments
        timeout 1500 qemu-system-x86_64 -accel "$accel" -smp 1 -m 2048 -nographic -no-reboot \
            -kernel "$cache/kernel/vmlinux" -initrd "$cache/initramfs-cluster.cpio" \
            -append "console=ttyS0 panic=-1 quiet tug.ws=$ws tug.cluster=$role" \
            -virtfs "local,path=$ws,mount_tag=share,security_model=none,id=share" \
            -virtfs "local,path=$rdv,mount_tag=rdv,security_model=none,id=rdv" \
            $nics > "$cache/console-cluster-$role.log" 2>&1 &
        pids+=($!)
    done
    qemu_rc=0
    vm_watch 300 "${pids[@]}" || qemu_rc=$?
    [ "$qemu_rc" = 3 ] && [ "$attempt" = 1 ] || break
    for role in "${roles[@]}"; do cp "$cache/console-cluster-$role.log" "$cache/console-cluster-$role.log.stalled"; done
    echo "vm-cluster: a guest froze (consoles kept in $cache/console-cluster-*.log.stalled); booting them again"
done

bad=0 passed=0 failed=0
for role in "${roles[@]}"; do
    log="$cache/console-cluster-$role.log"
    tr -d '\r' < "$log" > "$log.txt" && mv "$log.txt" "$log"
    grep -a '^CHECK ' "$log" | sed "s/^CHECK /vm-cluster: $role: /" || true
    grep -a '^BENCH-FIGURE ' "$log" | sed "s/^/vm-cluster: $role: /" || true
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
# The failed checks again, after the consoles: the end of the output names them.
for role in "${roles[@]}"; do
    grep -a '^CHECK .* FAILED' "$cache/console-cluster-$role.log" | cut -c1-400 \
        | sed "s/^CHECK /vm-cluster: $role: /" || true
done
echo "vm-cluster: $passed passed, $failed failed"
[ "$bad" -eq 0 ] && [ "$failed" -eq 0 ]
