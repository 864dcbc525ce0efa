#!/usr/bin/env bash
# One guest of the VM cluster (scripts/vm/cluster.sh starts three). Run by the guest's /init:
#   cluster-guest.sh a|b|c RDV
# Each guest is a server of a highly available control plane, provisioned the way an
# operator does it: scripts/vm/provision.sh server --ha with the three servers' addresses
# and the replicas' shared PKI secret (an etcd member, a tug-scheduler replica, an agent
# joined to every replica with the join token). They meet in RDV, a directory the host
# shares with all three over 9p, for what an operator carries between hosts by hand (the
# PKI secret) and for telling each other how far they got. Guest b bridges its two links,
# so the three share one segment (192.168.77.0/24) and pod traffic takes the host-gw routes.
#
# Checks, each printed as "CHECK <name> ok|FAILED <why>": every replica sees three Ready
# nodes; a Deployment of three spreads one per node; its Service answers at its ClusterIP
# from each guest and reaches the pods on all three nodes; then the replica holding the
# controllers' Lease is killed (kill -9): another takes the Lease, the Deployment scales to
# six with pods on every node (the killed replica's agent goes on through the others), and
# exec reaches a pod on every node through each surviving replica.
set -uo pipefail
role=${1:?a|b|c}; rdv=${2:?rdv dir}
ws=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=/usr/local/bin:$PATH
probe="$ws/target/x86_64-unknown-linux-gnu/release/tug-probe"
layout="$rdv/example-image"
roles="a b c"
ip_of() { case $1 in a) echo 192.168.77.1 ;; b) echo 192.168.77.2 ;; c) echo 192.168.77.3 ;; esac; }
servers=192.168.77.1,192.168.77.2,192.168.77.3
me=tug-vm-$role
failed=0
check() { # check NAME OK? WHY
    if [ "$2" = 0 ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAILED $3"; failed=1; fi
}
# wait_for SECONDS COMMAND...: until the command succeeds; says what it waits for every
# 30 s (a silent console is what the host takes for a frozen guest).
wait_for() {
    local last; last=$(date +%s)
    local end=$((last + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        if [ $(( $(date +%s) - last )) -ge 30 ]; then
            echo "guest $role: waiting for: $*"
            last=$(date +%s)
        fi
        sleep 1
    done
}
# Until every guest has reached step $1 (a file per guest in RDV).
barrier() {
    touch "$rdv/ready-$1-$role"
    all_there() { local r; for r in $roles; do [ -e "$rdv/ready-$1-$r" ] || return 1; done; }
    wait_for "${2:-600}" all_there "$1"
}
logs() {
    for f in /var/log/tug-etcd.log /var/log/tug-scheduler.log /var/log/tug-agent.log; do
        [ -f "$f" ] && { echo "---- $f (guest $role)"; tail -40 "$f"; }
    done
}
# Every hostname the Service at $1 answers with, over 30 requests.
answers() {
    for _ in $(seq 30); do "$probe" get "$1:80" 2>/dev/null; echo; done | grep -E '^web-' | sort -u
}
# The controllers' leader, as its identity's host (tug-vm-X), read through this replica.
holder() {
    tug get lease tug-controllers -n tug-system -o json 2>/dev/null \
        | sed -n 's/.*"holderIdentity": "\([^":]*\):.*/\1/p' | head -1
}

hostname "$me"
/sbin/ip link set eth0 up
if [ "$role" = b ]; then
    /sbin/ip link add tugvm0 type bridge
    /sbin/ip link set eth1 up
    /sbin/ip link set eth0 master tugvm0
    /sbin/ip link set eth1 master tugvm0
    /sbin/ip link set tugvm0 up
    /sbin/ip addr add "$(ip_of b)/24" dev tugvm0
else
    /sbin/ip addr add "$(ip_of "$role")/24" dev eth0
fi

# The example image first, straight into the node's store (tug image import needs no
# control plane), so no pod can reach the node before its image.
"$ws/target/debug/tug" image import "$layout" >/dev/null
check "image-import-$role" $? "tug image import failed"

# Three emulated guests share the host's two cores, each running etcd and the debug build:
# etcd reads took 0.1–1.5 s and its ReadIndex retried, so a replica missed our 2 s renew
# deadline and the lease went back and forth. Kubernetes' lease timings (15 s / 10 s / 2 s)
# and etcd's for a slow network (heartbeat 500 ms, election 5 s) keep one leader here.
BUILD="$ws/target/debug" bash "$ws/scripts/vm/provision.sh" server --ha "$servers" \
    --pki-secret-file "$rdv/pki-secret" --node-ip "$(ip_of "$role")" --node-name "$me" \
    --network-backend host-gw \
    --scheduler-setting leader-elect-lease-duration=15s \
    --scheduler-setting leader-elect-renew-deadline=10s \
    --scheduler-setting leader-elect-retry-period=2s \
    --etcd-setting ETCD_HEARTBEAT_INTERVAL=500 --etcd-setting ETCD_ELECTION_TIMEOUT=5000 &
provisioning=$!
# What the daemons say while it runs (and a console that is not silent).
while sleep 30 && kill -0 "$provisioning" 2>/dev/null; do
    echo "guest $role: provisioning; the daemons' last lines:"
    for f in etcd scheduler agent; do tail -2 "/var/log/tug-$f.log" 2>/dev/null | cut -c1-240; done
done
wait "$provisioning"
check "provision-server-$role" $? "provision.sh server --ha failed"

three_ready() { [ "$(tug get nodes 2>/dev/null | grep -c ' Ready ')" = 3 ]; }
wait_for 600 three_ready
check "three-nodes-ready-via-$role" $? "$(tug get nodes 2>&1)"

if [ "$role" = a ]; then
    tug apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      containers:
      - name: web
        image: tug.local/busybox-httpd:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "mkdir -p /tmp/w && hostname > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
YAML
    check apply $? "tug apply failed"
    available() { tug get deployment web -o json | grep -q '"availableReplicas": 3'; }
    wait_for 600 available
    check deployment-available $? "$(tug get deployment web -o json 2>&1; tug get pods -o wide 2>&1)"
    nodes=$(tug get pods -o json | grep -o '"nodeName": "[^"]*"' | sort -u | wc -l)
    [ "$nodes" = 3 ]; check spread-over-three-nodes $? "$(tug get pods -o wide 2>&1)"
    svc=$(tug get service web -o json | sed -n 's/.*"clusterIP": "\([^"]*\)".*/\1/p' | head -1)
    echo "$svc" > "$rdv/service-ip.tmp" && mv "$rdv/service-ip.tmp" "$rdv/service-ip"
fi

# From each guest: the Service answers, and its answers come from all three nodes' pods.
wait_for 900 test -s "$rdv/service-ip"
check "service-published-$role" $? "guest a published no Service address"
svc=$(cat "$rdv/service-ip" 2>/dev/null)
all_three() { [ "$(answers "$svc" | wc -l)" = 3 ]; }
if [ -n "$svc" ]; then
    wait_for 180 all_three
    check "service-from-$role-reaches-three-nodes" $? "answers from $svc: $(answers "$svc" | tr '\n' ' ')"
fi

# Fail-over: the replica leading the controllers is killed; the others take over. The lease
# may change hands while the guests look (etcd under TCG answers in seconds at times): each
# guest looks until one finds itself holding it and claims the kill (mkdir on the shared
# directory: one claim only).
barrier served 600
kill_if_leading() {
    if [ ! -s "$rdv/killed" ] && [ "$(holder)" = "$me" ] && mkdir "$rdv/kill-claimed" 2>/dev/null; then
        echo "$role" > "$rdv/leader"
        kill -9 "$(cat /run/tug/scheduler.pid)"
        date +%s > "$rdv/killed.tmp" && mv "$rdv/killed.tmp" "$rdv/killed"
    fi
    test -s "$rdv/killed"
}
wait_for 120 kill_if_leading
check "a-leader-was-killed-$role" $? "no guest found itself leading (holder: $(holder))"
leader=$(cat "$rdv/leader" 2>/dev/null)
if [ -n "$leader" ] && [ "$leader" != "$role" ]; then
    moved() { h=$(holder); [ -n "$h" ] && [ "$h" != "tug-vm-$leader" ]; }
    wait_for 120 moved
    check "new-leader-seen-via-$role" $? "holder still $(holder)"
    echo "BENCH-FIGURE vm-ha failover_s=$(( $(date +%s) - $(cat "$rdv/killed") )) seen_from=$role"
    # The first survivor scales up: six pods, on every node (the killed replica's node too,
    # whose agent now talks to the others).
    first=$(for r in $roles; do [ "$r" = "$leader" ] || { echo "$r"; break; }; done)
    if [ "$role" = "$first" ]; then
        tug scale deployment web --replicas=6
        six() { tug get deployment web -o json | grep -q '"availableReplicas": 6'; }
        wait_for 600 six
        check scaled-after-failover $? "$(tug get pods -o wide 2>&1)"
        nodes=$(tug get pods -o json | grep -o '"nodeName": "[^"]*"' | sort -u | wc -l)
        [ "$nodes" = 3 ]; check six-pods-on-three-nodes $? "$(tug get pods -o wide 2>&1)"
        touch "$rdv/scaled"
    fi
    wait_for 700 test -e "$rdv/scaled"
    # Exec through this replica into a pod on each node: every node's agent keeps tunnels
    # at every replica.
    for node in tug-vm-a tug-vm-b tug-vm-c; do
        pod=$(tug get pods -o wide 2>/dev/null | awk -v n="$node" '$0 ~ n && /Running/ {print $1; exit}')
        via() { [ "$(tug exec "$pod" -- hostname 2>/dev/null)" = "$pod" ]; }
        # (An idle tunnel found dead is opened again; under TCG with a replica just killed that
        # has taken over a minute.)
        wait_for 180 via
        check "exec-via-$role-into-$node" $? "pod ${pod:-none}: $(tug exec "$pod" -- hostname 2>&1)"
    done
fi

# Done here. Every guest keeps its etcd member up until all are done: two of three make the
# quorum the others still need.
[ "$failed" = 0 ] || logs
barrier done 1200
exit "$failed"
