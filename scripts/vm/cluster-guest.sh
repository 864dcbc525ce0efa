#!/usr/bin/env bash
# One guest of the VM cluster (scripts/vm/cluster.sh starts two). Run by the guest's /init:
#   cluster-guest.sh a|b RDV
# Guest a provisions the control plane and an agent (scripts/vm/provision.sh server), guest b
# an agent joined over TLS with the join token (provision.sh agent). They meet in RDV, a
# directory the host shares with both over 9p, for what an operator would carry between hosts
# by hand (the join token) and for telling each other how far they got. The two guests share
# one virtual link (192.168.77.0/24), so pod traffic between them takes the host-gw routes.
#
# Checks, each printed as "CHECK <name> ok|FAILED <why>": both nodes Ready; a Deployment of
# two replicas spread one per node; its Service answers at its ClusterIP from each guest, and
# from each guest reaches the pods on both nodes.
set -uo pipefail
role=${1:?a|b}; rdv=${2:?rdv dir}
ws=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=/usr/local/bin:$PATH
probe="$ws/target/x86_64-unknown-linux-gnu/release/tug-probe"
layout="$rdv/example-image"
server_ip=192.168.77.1
ip_of() { [ "$1" = a ] && echo 192.168.77.1 || echo 192.168.77.2; }
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
logs() {
    for f in /var/log/tug-scheduler.log /var/log/tug-agent.log; do
        [ -f "$f" ] && { echo "---- $f (guest $role)"; tail -40 "$f"; }
    done
}
# Every hostname the Service at $1 answers with, over 20 requests.
answers() {
    for _ in $(seq 20); do "$probe" get "$1:80" 2>/dev/null; echo; done | grep -E '^web-' | sort -u
}

/sbin/ip link set eth0 up
/sbin/ip addr add "$(ip_of "$role")/24" dev eth0

# The example image first, straight into the node's store (tug image import needs no
# control plane), so no pod can reach the node before its image.
"$ws/target/debug/tug" image import "$layout" >/dev/null
check "image-import-$role" $? "tug image import failed"

if [ "$role" = a ]; then
    BUILD="$ws/target/debug" bash "$ws/scripts/vm/provision.sh" server --listen "$server_ip:6443" \
        --node-ip "$server_ip" --node-name tug-vm-a --network-backend host-gw
    check provision-server $? "provision.sh server failed"
    cp /etc/tug/join-token "$rdv/join-token.tmp" && mv "$rdv/join-token.tmp" "$rdv/join-token"
    two_ready() { [ "$(tug get nodes 2>/dev/null | grep -c ' Ready ')" = 2 ]; }
    wait_for 300 two_ready
    check two-nodes-ready $? "$(tug get nodes 2>&1)"
    tug apply -f - <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
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
EOF
    check apply $? "tug apply failed"
    available() { tug get deployment web -o json | grep -q '"availableReplicas": 2'; }
    wait_for 300 available
    check deployment-available $? "$(tug get deployment web -o json 2>&1; tug get pods -o wide 2>&1)"
    nodes=$(tug get pods -o json | grep -o '"nodeName": "[^"]*"' | sort -u | wc -l)
    [ "$nodes" = 2 ]; check spread-over-both-nodes $? "$(tug get pods -o wide 2>&1)"
    svc=$(tug get service web -o json | sed -n 's/.*"clusterIP": "\([^"]*\)".*/\1/p' | head -1)
    echo "$svc" > "$rdv/service-ip"
fi

if [ "$role" = b ]; then
    wait_for 300 test -s "$rdv/join-token"
    check join-token $? "guest a published no join token"
    BUILD="$ws/target/debug" bash "$ws/scripts/vm/provision.sh" agent --server "https://$server_ip:6443" \
        --token "$(cat "$rdv/join-token")" --node-ip "$(ip_of b)" --node-name tug-vm-b --network-backend host-gw
    check provision-agent $? "provision.sh agent failed"
    wait_for 600 test -s "$rdv/service-ip"
    check service-published $? "guest a published no Service address"
fi

# From each guest: the Service answers, and its answers come from both nodes' pods.
svc=$(cat "$rdv/service-ip" 2>/dev/null)
both() { [ "$(answers "$svc" | wc -l)" = 2 ]; }
if [ -n "$svc" ]; then
    wait_for 120 both
    check "service-from-$role-reaches-both-nodes" $? "answers from $svc: $(answers "$svc" | tr '\n' ' ')"
fi
# Done here; guest a keeps the control plane up until guest b is done too.
echo "$failed" > "$rdv/done-$role"
[ "$role" = a ] && wait_for 300 test -e "$rdv/done-b"
[ "$failed" = 0 ] || logs
exit "$failed"
