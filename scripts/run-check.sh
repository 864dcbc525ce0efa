#!/usr/bin/env bash
# The `make run` / `make stop` check in `make test`: the quickstart as a user runs it, with the
# debug binaries. `run.sh` twice (the second finds both daemons serving), the example app
# answering through its Service, `stop.sh`, then nothing of the cluster left (mounts, links,
# nftables tables, processes, cgroups), then `run.sh` and `stop.sh` once more.
#
# It runs in a private mount and network namespace: tmpfs over the state directories (a
# fresh store, and a developer's own cluster's files untouched) and a veth pair that gives
# the agent a default route to take its node address from. Processes and cgroups are not
# namespaced, so it refuses to run beside a tug-agent already running here.
set -euo pipefail
cd "$(dirname "$0")/.."
export TUG_BIN_DIR=${TUG_BIN_DIR:-$(pwd)/target/debug}
if pid=$(pgrep -x tug-agent | head -1) && [ -n "$pid" ]; then
    echo "run-check: a tug-agent already runs here (pid $pid): stop it (make stop) before make test" >&2
    exit 1
fi
if [ "${1:-}" != inside ]; then
    # The tmpfs mount points it makes on the host (a fresh machine has none) go afterwards.
    made=()
    for d in /run/tug /run/tug-agent /var/lib/tug /var/lib/tug-agent /etc/tug; do
        [ -e "$d" ] || made+=("$d")
    done
    rc=0
    unshare --mount --net --propagation private bash "$0" inside || rc=$?
    for d in "${made[@]}"; do rmdir "$d" 2>/dev/null || true; done
    exit "$rc"
fi

fail() {
    echo "run-check: FAILED: $*" >&2
    for l in /var/log/tug-scheduler.log /var/log/tug-agent.log; do
        [ -f "$l" ] && { echo "run-check: the last lines of $l:"; tail -20 "$l" | sed 's/^/    /'; }
    done
    bash scripts/stop.sh >/dev/null 2>&1 || true
    exit 1
}
for d in /run/tug /run/tug-agent /var/lib/tug /var/lib/tug-agent /etc/tug /var/log; do
    mkdir -p "$d" && mount -t tmpfs -o mode=0755 tug-run-check "$d"
done
ip link set lo up
ip link add tugrc0 type veth peer name tugrc1
ip addr add 192.0.2.2/24 dev tugrc0
ip link set tugrc0 up && ip link set tugrc1 up
ip route add default via 192.0.2.1

# Each check reads a command's whole output before grep looks at it: `a | grep -q` under
# pipefail fails when grep stops at its match and `a` dies of SIGPIPE.
leftovers() {
    local what=""
    grep -qE ' (/run/tug-agent|/run/tug/netns|/var/lib/tug/images)/' /proc/self/mountinfo && what+=" mounts;"
    grep -qE '^(tug0|tug\.[0-9]+|tug[0-9a-f]{8})$' <<<"$(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1)" && what+=" links;"
    grep -q ' tug' <<<"$(nft list tables 2>/dev/null)" && what+=" nftables tables;"
    pgrep -f "^$TUG_BIN_DIR/tug-(agent|scheduler|supervisor)" >/dev/null && what+=" processes;"
    grep -q . <<<"$(find /sys/fs/cgroup -maxdepth 6 -type d -name 'tug-pods' 2>/dev/null)" && what+=" cgroups;"
    echo "$what"
}

# State a local user must not read: root-only directories, secret files 0600, and a real
# non-root user (nobody) refused at each.
modes() {
    local bad="" p want
    for p in /var/lib/tug:700 /var/lib/tug/store.redb:600 /var/lib/tug/images:700 \
        /var/lib/tug-agent:700 /run/tug-agent:700 /etc/tug:700 /etc/tug/encryption-config.yaml:600 \
        /etc/tug/admin.kubeconfig:600; do
        want=${p#*:}; p=${p%%:*}
        [ "$(stat -c %a "$p")" = "$want" ] || bad+=" $p is $(stat -c %a "$p"), not $want;"
    done
    for f in /run/tug-agent/bundles/*/config.json; do
        [ "$(stat -c %a "$f")" = 600 ] || bad+=" $f is $(stat -c %a "$f"), not 600;"
    done
    for p in /var/lib/tug/store.redb /var/lib/tug/images/snapshots /var/lib/tug-agent/volumes /run/tug-agent/bundles; do
        setpriv --reuid=65534 --regid=65534 --clear-groups ls "$p" >/dev/null 2>&1 && bad+=" user nobody reads $p;"
    done
    [ -z "$bad" ] || fail "state readable beyond root:$bad"
    echo "run-check: round $round: state directories are root's alone (0700), secrets 0600"
    # A Secret's value is encrypted at rest: neither it nor its base64 is in the store.
    local value="tug-run-check-secret-$round-$$"
    TUG_SOCKET=/run/tug/tug.sock "$TUG_BIN_DIR/tug" create secret generic "run-check-$round" \
        --from-literal="v=$value" >/dev/null || fail "creating a Secret"
    if grep -rqaF -e "$value" -e "$(printf %s "$value" | base64)" /var/lib/tug; then
        fail "a Secret's value is in clear under /var/lib/tug"
    fi
    echo "run-check: round $round: a Secret's value is not in /var/lib/tug"
}

extra_checks=0
for round in 1 2; do
    bash scripts/run.sh > /tmp/tug-run-check.log 2>&1 || { cat /tmp/tug-run-check.log; fail "make run (round $round)"; }
    out=$(bash scripts/run.sh 2>&1) || { echo "$out"; fail "make run a second time (round $round)"; }
    grep -q 'already serving' <<<"$out" && grep -q 'already running' <<<"$out" \
        || { echo "$out"; fail "a second make run did not find the daemons running"; }
    svc=$(TUG_SOCKET=/run/tug/tug.sock "$TUG_BIN_DIR/tug" get service web -o json \
        | sed -n 's/.*"clusterIP": *"\([0-9.]*\)".*/\1/p' | head -1)
    grep -q 'Hello from Tug' <<<"$(curl -sf -m 5 "http://$svc/")" || fail "the example app does not answer at http://$svc/"
    echo "run-check: round $round: make run twice, the example app answers at http://$svc/"
    # The kubeconfig make run wrote drives the stock kubectl over the TLS API.
    if command -v kubectl >/dev/null; then
        # The whole output first: `grep -q` stopping at the match would cut kubectl off with
        # SIGPIPE, and pipefail would call that a failure.
        listed=$(kubectl --kubeconfig /etc/tug/admin.kubeconfig get pods -A 2>&1) || true
        grep -q '^default  *hello ' <<<"$listed" \
            || { echo "$listed"; fail "kubectl with /etc/tug/admin.kubeconfig does not list the pod hello"; }
        echo "run-check: round $round: kubectl with /etc/tug/admin.kubeconfig lists the pods"
        extra_checks=$((extra_checks + 1))
    else
        echo "run-check: round $round: SKIPPED the kubectl check: no kubectl on this machine"
    fi
    modes
    if [ "$round" = 1 ]; then
        bash scripts/quickstart-check.sh || fail "the README's Quickstart"
        echo "run-check: round $round: the README's Quickstart runs line by line"
        extra_checks=$((extra_checks + 1))
    fi
    bash scripts/stop.sh > /tmp/tug-run-check.log 2>&1 || { cat /tmp/tug-run-check.log; fail "make stop (round $round)"; }
    left=$(leftovers)
    [ -z "$left" ] || { cat /tmp/tug-run-check.log; fail "make stop left behind:$left"; }
    echo "run-check: round $round: make stop left nothing behind"
done
rm -f /tmp/tug-run-check.log
echo "run-check: $((8 + extra_checks)) passed, 0 failed"
