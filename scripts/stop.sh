#!/usr/bin/env bash
# `make stop`: stops what `make run` started and leaves nothing of it on the host, as k3s's
# killall script does: the example app is deleted through the API (while the agent still runs,
# so it stops those pods as it stops any), then the agent and the control plane stop, then
# whatever containers are left (other pods) are killed and deleted with tug-shim, and the
# node's mounts, network namespaces, links and nftables tables go. The store under
# /var/lib/tug and the image store stay: the next `make run` starts from them, and the
# agent starts again the pods the store still binds to this node.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TUG_BIN_DIR:-$(pwd)/target/release}
socket=/run/tug/tug.sock
run_dir=/run/tug-agent
netns_dir=/run/tug/netns
# The agent's links: the pod bridge, the vxlan tunnel (tug.VNI), pods' host-side veths.
agent_links='^(tug0|tug\.[0-9]+|tug[0-9a-f]{8})$'
tug() { TUG_SOCKET=$socket "$bin/tug" "$@"; }

# stop_pid FILE NAME: SIGTERM to the process FILE names when it is NAME, then waits for it.
stop_pid() {
    local file=$1 name=$2 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        kill "$pid"
        for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        [ ! -d "/proc/$pid" ] || { echo "make stop: $name (pid $pid) did not stop in 10 s: SIGKILL"; kill -9 "$pid"; }
        echo "make stop: stopped $name (pid $pid)"
    fi
    rm -f "$file"
}

# 1. The example app. Its pods leave the API at once; the agent then stops their containers,
# which is what is waited for (a container's id starts with its pod's uid, dashes dropped).
if [ -x "$bin/tug" ] && tug version >/dev/null 2>&1; then
    uids=$({ tug get pod hello -o json; tug get pods -l app=web -o json; } 2>/dev/null \
        | grep -o '"uid": *"[^"]*"' | cut -d'"' -f4 | tr -d - | cut -c1-12 || true)
    tug delete -f examples/web.yaml >/dev/null 2>&1 || true
    tug delete -f examples/hello-pod.yaml >/dev/null 2>&1 || true
    echo "make stop: deleted the example app (pod hello, deployment and service web)"
    for _ in $(seq 150); do
        tug get pods -o name 2>/dev/null | grep -qE '^pod/(hello|web-)' && { sleep 0.2; continue; }
        left=$("$bin/tug-shim" --root "$run_dir/runtime" list --quiet 2>/dev/null || true)
        still=0
        for u in $uids; do printf '%s\n' "$left" | grep -q "^$u" && still=1; done
        [ "$still" = 1 ] || break
        sleep 0.2
    done
fi

# 2. The daemons. The agent's cgroups are noted first: pods' and supervisors' cgroups sit
# beneath them (the delegated subtree it was started in) and go in step 5.
agent_cgroups=$(cut -d: -f3 "/proc/$(cat /run/tug/tug-agent.pid 2>/dev/null || echo self)/cgroup" 2>/dev/null \
    || cut -d: -f3 /proc/self/cgroup)
stop_pid /run/tug/tug-agent.pid tug-agent
stop_pid /run/tug/tug-scheduler.pid tug-scheduler

# 3. Containers the agent left running (other pods'): killed and deleted by the runtime; then
# their supervisors, which keep a container's exit status until asked to go.
if [ -d "$run_dir/runtime" ] && [ -x "$bin/tug-shim" ]; then
    for id in $("$bin/tug-shim" --root "$run_dir/runtime" list --quiet 2>/dev/null); do
        "$bin/tug-shim" --root "$run_dir/runtime" delete --force "$id" >/dev/null 2>&1 \
            && echo "make stop: deleted container $id"
    done
fi
for f in "$run_dir"/supervisors/*/supervisor.pid; do
    [ -f "$f" ] && stop_pid "$f" tug-supervisor
done

# 4. Mounts beneath the agent's directories and the image store (rootfs overlays, volumes,
# pinned namespaces), deepest first. The persistent directories themselves stay mounted (a
# disk of their own, or run-check's tmpfs): only what is beneath them goes.
awk '{print $5}' /proc/self/mountinfo \
    | { grep -E "^($run_dir|$netns_dir)(/|$)|^(/var/lib/tug-agent|/var/lib/tug/images)/" || true; } | sort -r \
    | while read -r m; do umount -l "$m" && echo "make stop: unmounted $m"; done
rm -rf "$run_dir" "$netns_dir"

# 5. The pods' and supervisors' cgroups, now empty, deepest first (rmdir removes only empty
# ones, never anything outside the agent's subtree).
for mnt in $(awk '$9 == "cgroup" || $9 == "cgroup2" {print $5}' /proc/self/mountinfo); do
    for cg in $(printf '%s\n' "$agent_cgroups" | sort -u); do
        for d in "$mnt${cg%/}/tug-pods" "$mnt${cg%/}/tug-supervisors"; do
            [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
        done
    done
done

# 6. The node's network: the pod bridge and tunnel links, the agent's nftables tables and the
# iptables fallback's chains.
for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "$agent_links" || true); do
    ip link del "$link" 2>/dev/null && echo "make stop: removed link $link"
done
nft list tables 2>/dev/null | while read -r _ family table; do
    case "$table" in tug*) nft delete table "$family" "$table" && echo "make stop: removed nftables table $family $table" ;; esac
done
for t in nat filter; do
    rules=$(iptables-save -t "$t" 2>/dev/null | grep -E '^-A .*TUG-' || true)
    [ -n "$rules" ] || continue
    printf '%s\n' "$rules" | grep -vE '^-A TUG-' | sed 's/^-A/-D/' | while read -r r; do eval "iptables -t $t $r"; done
    for c in $(iptables-save -t "$t" | sed -n 's/^:\(TUG-[^ ]*\).*/\1/p'); do iptables -t "$t" -F "$c"; done
    for c in $(iptables-save -t "$t" | sed -n 's/^:\(TUG-[^ ]*\).*/\1/p'); do iptables -t "$t" -X "$c"; done
    echo "make stop: removed the iptables $t chains TUG-*"
done
rm -f "$socket"
echo "make stop: done (the store in /var/lib/tug and the images stay; make run starts again)"
