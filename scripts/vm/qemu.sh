# Sourced by run.sh and cluster.sh: starting QEMU guests and watching them.

# The accelerator: KVM only where the host really has hardware virtualisation (see
# ../shared/notes/VM.md: these machines' /dev/kvm cannot run a stock kernel), TCG otherwise.
vm_accel() {
    if grep -qE 'vmx|svm' /proc/cpuinfo && [ ! -e /sys/module/kvm_pvm ] && [ -w /dev/kvm ]; then
        echo kvm
    else
        echo tcg,thread=multi
    fi
}

# vm_watch STALL LOG PID...: waits for the QEMU processes PID... (whose consoles go to the LOG
# files named in VM_LOGS, one per PID). When a guest's console stays silent for STALL seconds
# while its QEMU runs, every one of them is stopped and the function returns 3. A hung test
# is not silent (libtest reports a test running for over 60 s), so silence is a frozen guest
# (seen once on TCG: the guest stopped printing anything mid-suite). Otherwise returns the
# first non-zero QEMU exit status, or 0.
vm_watch() {
    local stall=$1; shift
    local -a pids=("$@") sizes=() quiet=() done=()
    local i n alive rc=0 status
    for i in "${!pids[@]}"; do sizes[$i]=-1; quiet[$i]=0; done[$i]=-1; done
    while :; do
        alive=0
        for i in "${!pids[@]}"; do
            kill -0 "${pids[$i]}" 2>/dev/null || continue
            alive=1
            n=$(stat -c %s "${VM_LOGS[$i]}" 2>/dev/null || echo 0)
            if [ "$n" = "${sizes[$i]}" ]; then
                quiet[$i]=$((quiet[$i] + 5))
            else
                sizes[$i]=$n; quiet[$i]=0
            fi
            # A guest that printed VMDONE has reported everything; one still running 60 s
            # later is stuck powering off (a TCG soft lockup was seen there): stop it.
            if [ "${done[$i]}" -lt 0 ] && grep -aq '^VMDONE' "${VM_LOGS[$i]}" 2>/dev/null; then
                done[$i]=0
            elif [ "${done[$i]}" -ge 0 ]; then
                done[$i]=$((done[$i] + 5))
                if [ "${done[$i]}" -ge 60 ]; then
                    echo "vm: guest console ${VM_LOGS[$i]} said VMDONE 60 s ago: stopping its QEMU" >&2
                    kill "${pids[$i]}" 2>/dev/null || true
                    wait "${pids[$i]}" 2>/dev/null || true
                    done[$i]=-2
                fi
            fi
            if [ "${quiet[$i]}" -ge "$stall" ]; then
                echo "vm: guest console ${VM_LOGS[$i]} silent for ${stall} s: stopping the guests" >&2
                for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
                for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
                return 3
            fi
        done
        [ "$alive" = 1 ] || break
        sleep 5
    done
    for i in "${!pids[@]}"; do
        status=0; wait "${pids[$i]}" || status=$?
        [ "${done[$i]}" != -2 ] || status=0
        [ "$rc" != 0 ] || rc=$status
    done
    return "$rc"
}
