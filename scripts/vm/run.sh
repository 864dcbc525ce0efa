#!/usr/bin/env bash
# `make vm-test`: the integration tests that need a pure cgroup v2 kernel, run inside a QEMU
# guest (KVM where the host really has hardware virtualisation, TCG otherwise). Prints each
# test's result, the guest's console log on failure, and a closing "N passed, N failed" line.
#
# `run.sh bench`: the runtime benchmark inside the same guest, where crun (which refuses hybrid
# hosts) can run beside tug-shim and runc; prints its BENCH lines.
set -euo pipefail
cd "$(dirname "$0")/../.."
ws=$(pwd)
cache="$ws/.vm-cache"
mode=${1:-test}
mkdir -p "$cache"
bash scripts/vm/kernel.sh "$cache"
make --no-print-directory probe >/dev/null

# Binaries built on the host and run in the guest from the 9p share, found from cargo's JSON.
executable() { printf '%s\n' "$1" | grep "\"name\":\"$2\"" | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4; }
jobs=(); bins=(); stage1=
if [ "$mode" = bench ]; then
    cargo build --release --locked -p tug-shim --bins
    json=$(cargo bench --no-run --locked -p tug-integration --bench runtime --message-format=json 2>/dev/null)
    exe=$(executable "$json" runtime)
    jobs+=("bench-runtime:$exe"); bins+=("$exe")
else
    json=$(cargo test --no-run --locked -p tug-integration --test runtime --test cgroup_v2 --test supervisor --message-format=json 2>/dev/null)
    cargo build --locked --workspace --bins
    for t in runtime cgroup_v2 supervisor; do
        exe=$(executable "$json" "$t")
        [ -n "$exe" ] || { echo "vm: no test binary for $t" >&2; exit 1; }
        jobs+=("$t:$exe"); bins+=("$exe")
    done
    # The daemons the in-guest cluster test runs: their libraries go into the initramfs.
    for b in tug tug-scheduler tug-agent tug-shim tug-supervisor; do bins+=("target/debug/$b"); done
    # Run from the initramfs before switch_root: the no-pivot_root fallback.
    stage1="initramfs:${jobs[0]#*:}:the_probe_sees_an_isolated_container"
    # TUG_VM_ONLY=SUITE:FILTER runs the tests of one suite whose names contain FILTER.
    if [ -n "${TUG_VM_ONLY:-}" ]; then
        suite=${TUG_VM_ONLY%%:*}
        for j in "${jobs[@]}"; do [ "${j%%:*}" = "$suite" ] && only="$j:${TUG_VM_ONLY#*:}"; done
        jobs=("${only:?vm: no suite $suite}"); stage1=
    fi
fi
bash scripts/vm/initramfs.sh "$cache" "$cache/initramfs.cpio" "${bins[@]}"

. scripts/vm/qemu.sh
accel=$(vm_accel)
# The guest runs 4-5 times slower under TCG: the benchmark does fewer runs there (still
# printing its progress, so a busy host's slow guest is not taken for a frozen one).
bench_n=${TUG_BENCH_N:-}
[ "$mode" != bench ] || [ -n "$bench_n" ] || [ "${accel%%,*}" = kvm ] || bench_n=20
[ -f "$cache/disk.img" ] || truncate -s 16M "$cache/disk.img"
log="$cache/console-$mode.log"
run_arg=$(IFS=,; echo "${jobs[*]}")
VM_LOGS=("$log")
for attempt in 1 2; do
    echo "vm: booting $(cat "$cache/kernel/version") under ${accel%%,*}: ${jobs[*]%%:*}"
    timeout "$([ "$mode" = bench ] && echo 1200 || echo 600)" qemu-system-x86_64 -accel "$accel" -smp 2 -m 2048 -nographic -no-reboot \
        -kernel "$cache/kernel/vmlinux" -initrd "$cache/initramfs.cpio" \
        -append "console=ttyS0 panic=-1 quiet tug.ws=$ws tug.run=$run_arg tug.bench_n=$bench_n tug.initramfs=$stage1" \
        -virtfs "local,path=$ws,mount_tag=share,security_model=none,id=share" \
        -drive "file=$cache/disk.img,if=virtio,format=raw" \
        -nic none > "$log" 2>&1 &
    qemu_rc=0
    vm_watch "$([ "$mode" = bench ] && echo 600 || echo 240)" $! || qemu_rc=$?
    # A frozen guest (silent console) is booted once more, and says so; a failing test is not.
    [ "$qemu_rc" = 3 ] && [ "$attempt" = 1 ] || break
    cp "$log" "$log.stalled"
    echo "vm: the guest froze (console kept in $log.stalled); booting it again"
done
tr -d '\r' < "$log" > "$log.txt" && mv "$log.txt" "$log"

bad=0
grep -aq '^VMDONE' "$log" || { echo "vm: the guest did not finish (qemu exit $qemu_rc)"; bad=1; }
for job in "${jobs[@]}" ${stage1:+"$stage1"}; do
    name=${job%%:*}
    rc=$(grep -a "^VMRESULT $name " "$log" | awk '{print $3}' || true)
    [ "$rc" = 0 ] || { echo "vm: $name failed in the guest (exit ${rc:-none})"; bad=1; }
done
if [ "$mode" = bench ]; then
    grep -a -v -E '^(VM|\[ )' "$log" | grep -a -E '^(BENCH|[a-z]+ cannot)' || true
    [ "$bad" -eq 0 ] || { echo "vm: the guest console's last lines ($log):"; sed 's/^/    /' "$log" | tail -100; exit 1; }
    exit 0
fi
grep -aE '^test .* \.\.\. ' "$log" | sed 's/^/vm: /' || true
passed=$(grep -acE '^test .* \.\.\. ok$' "$log" || true)
failed=$(grep -acE '^test .* \.\.\. FAILED$' "$log" || true)
# A filter or a suite that ran no test proves nothing: that is a failure too.
[ $((passed + failed)) -gt 0 ] || { echo "vm: no test ran in the guest${TUG_VM_ONLY:+ (TUG_VM_ONLY=$TUG_VM_ONLY matched none)}"; bad=1; }
if [ "$bad" -ne 0 ] || [ "$failed" -gt 0 ]; then
    echo "vm: guest console log ($log):"
    sed 's/^/    /' "$log" | tail -200
    echo "vm: $passed passed, $failed failed"
    exit 1
fi
echo "vm: $passed passed, $failed failed"
