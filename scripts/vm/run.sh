#!/usr/bin/env bash
# `make vm-test`: the integration tests that need a pure cgroup v2 kernel, run inside a QEMU
# guest (KVM where the host really has hardware virtualisation, TCG otherwise). Prints each
# test's result, the guest's console log on failure, and a closing "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/../.."
ws=$(pwd)
cache="$ws/.vm-cache"
mkdir -p "$cache"
tests=(runtime cgroup_v2)

bash scripts/vm/kernel.sh "$cache"

# The test binaries, built for the host and run in the guest from the 9p share.
args=(); for t in "${tests[@]}"; do args+=(--test "$t"); done
json=$(cargo test --no-run --locked -p tug-integration "${args[@]}" --message-format=json 2>/dev/null)
cargo build --locked -p tug-shim --bin tug-shim
make --no-print-directory probe >/dev/null
list=(); bins=()
for t in "${tests[@]}"; do
    exe=$(printf '%s\n' "$json" | grep "\"name\":\"$t\"" | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
    [ -n "$exe" ] || { echo "vm: no test binary for $t" >&2; exit 1; }
    list+=("$t:$exe"); bins+=("$exe")
done
bash scripts/vm/initramfs.sh "$cache" "$cache/initramfs.cpio" "${bins[@]}" "$ws/target/debug/tug-shim"

accel=tcg,thread=multi
if grep -qE 'vmx|svm' /proc/cpuinfo && [ ! -e /sys/module/kvm_pvm ] && [ -w /dev/kvm ]; then accel=kvm; fi
[ -f "$cache/disk.img" ] || truncate -s 16M "$cache/disk.img"
log="$cache/console.log"
tests_arg=$(IFS=,; echo "${list[*]}")
echo "vm: booting $(cat "$cache/kernel/version") under ${accel%%,*} with ${tests[*]}"
set +e
timeout 900 qemu-system-x86_64 -accel "$accel" -smp 2 -m 2048 -nographic -no-reboot \
    -kernel "$cache/kernel/vmlinux" -initrd "$cache/initramfs.cpio" \
    -append "console=ttyS0 panic=-1 quiet tug.ws=$ws tug.tests=$tests_arg" \
    -virtfs "local,path=$ws,mount_tag=share,security_model=none,id=share" \
    -drive "file=$cache/disk.img,if=virtio,format=raw" \
    -nic none > "$log" 2>&1
qemu_rc=$?
set -e

# Each test's own line, then the verdict per binary.
grep -aE '^test .* \.\.\. ' "$log" | sed 's/^/vm: /' || true
passed=$(grep -acE '^test .* \.\.\. ok' "$log" || true)
failed=$(grep -acE '^test .* \.\.\. FAILED' "$log" || true)
bad=0
grep -aq '^VMDONE' "$log" || { echo "vm: the guest did not finish (qemu exit $qemu_rc)"; bad=1; }
for t in "${tests[@]}"; do
    rc=$(grep -a "^VMRESULT $t " "$log" | awk '{print $3}' | tr -d '\r')
    [ "$rc" = 0 ] || { echo "vm: $t failed in the guest (exit ${rc:-none})"; bad=1; }
done
if [ "$bad" -ne 0 ] || [ "$failed" -gt 0 ]; then
    echo "vm: guest console log ($log):"
    sed 's/^/    /' "$log" | tail -200
    echo "vm: $passed passed, $failed failed"
    exit 1
fi
echo "vm: $passed passed, $failed failed"
