#!/usr/bin/env bash
# `make run`: start a single-node cluster on this host with what exists so far, apply the
# example app, and say plainly what does not exist yet. Never pretends.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TUG_BIN_DIR:-$(pwd)/target/release}
# The supervisors every pod runs: the static tug-shim and tug-supervisor (`make static`),
# smaller than the dynamically linked ones; the release ones when there is no static build.
static=$(pwd)/target/x86_64-unknown-linux-gnu/release
shim=$bin/tug-shim
if [ -z "${TUG_BIN_DIR:-}" ] && [ -x "$static/tug-shim" ] && [ -x "$static/tug-supervisor" ]; then
    shim=$static/tug-shim
fi
socket=/run/tug/tug.sock
data=/var/lib/tug
pidfile=/run/tug/tug-scheduler.pid
log=/var/log/tug-scheduler.log
# The TLS API kubectl uses, on loopback only (TUG_API_PORT to move it).
api_port=${TUG_API_PORT:-6443}

mkdir -p /run/tug && install -d -m 0700 "$data"
# Secrets are encrypted at rest under a key of this host's, kept apart from the store (a copy
# of /var/lib/tug alone opens none of them): made once, 0600 in a 0700 directory.
enc=/etc/tug/encryption-config.yaml
install -d -m 0700 /etc/tug
if [ ! -s "$enc" ]; then
    key=$(head -c 32 /dev/urandom | base64)
    (umask 077; cat > "$enc.new" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - aesgcm:
      keys:
      - {name: key1, secret: "$key"}
  - identity: {}
EOF
    mv "$enc.new" "$enc")
    echo "make run: made the encryption key for Secrets at rest: $enc"
fi
if [ -S "$socket" ] && TUG_SOCKET=$socket "$bin/tug" version >/dev/null 2>&1; then
    echo "make run: tug-scheduler is already serving on $socket"
else
    setsid "$bin/tug-scheduler" --socket "$socket" --data-dir "$data" --encryption-config "$enc" \
        --listen "127.0.0.1:$api_port" </dev/null >>"$log" 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 100); do
        TUG_SOCKET=$socket "$bin/tug" version >/dev/null 2>&1 && break
        sleep 0.1
    done
    TUG_SOCKET=$socket "$bin/tug" version >/dev/null || { echo "make run: tug-scheduler did not start; see $log" >&2; exit 1; }
    echo "make run: started tug-scheduler (pid $(cat "$pidfile"), store $data, log $log)"
fi
# kubectl's credentials: cluster-admin's client certificate, for the TLS API on loopback.
kubeconfig=/etc/tug/admin.kubeconfig
if [ ! -s "$kubeconfig" ]; then
    (umask 077 && TUG_SOCKET=$socket "$bin/tug" config kubeconfig --cluster-url "https://127.0.0.1:$api_port" > "$kubeconfig.new" \
        && mv "$kubeconfig.new" "$kubeconfig") || { echo "make run: writing $kubeconfig failed" >&2; exit 1; }
    echo "make run: wrote kubectl's credentials: $kubeconfig"
fi
# The example image, built offline from busybox-static and imported into the node's store.
bash scripts/example-image.sh target/example-image >/dev/null
"$bin/tug" image import target/example-image

# The node agent on this host.
agent_pid=/run/tug/tug-agent.pid
agent_log=/var/log/tug-agent.log
if [ -f "$agent_pid" ] && kill -0 "$(cat "$agent_pid")" 2>/dev/null; then
    echo "make run: tug-agent is already running (pid $(cat "$agent_pid"))"
else
    setsid "$bin/tug-agent" --socket "$socket" --shim "$shim" </dev/null >>"$agent_log" 2>&1 &
    echo $! > "$agent_pid"
    node=$(hostname)
    for _ in $(seq 100); do
        TUG_SOCKET=$socket "$bin/tug" get node "$node" >/dev/null 2>&1 && break
        sleep 0.2
    done
    TUG_SOCKET=$socket "$bin/tug" get node "$node" >/dev/null 2>&1 \
        || { echo "make run: tug-agent did not register; see $agent_log" >&2; exit 1; }
    echo "make run: started tug-agent (pid $(cat "$agent_pid"), node $node, log $agent_log)"
fi

TUG_SOCKET=$socket "$bin/tug" apply -f examples/hello-pod.yaml
TUG_SOCKET=$socket "$bin/tug" apply -f examples/web.yaml
ip=""
for _ in $(seq 150); do
    ip=$(TUG_SOCKET=$socket "$bin/tug" get pod hello -o json 2>/dev/null \
        | sed -n 's/.*"podIP": *"\([0-9.]*\)".*/\1/p' | head -1)
    ready=$(TUG_SOCKET=$socket "$bin/tug" get pod hello 2>/dev/null | awk 'NR==2 {print $2}')
    [ -n "$ip" ] && [ "$ready" = "1/1" ] && break
    sleep 0.2
done
svc=$(TUG_SOCKET=$socket "$bin/tug" get service web -o json 2>/dev/null \
    | sed -n 's/.*"clusterIP": *"\([0-9.]*\)".*/\1/p' | head -1)
for _ in $(seq 150); do
    curl -s -m 1 -o /dev/null "http://$svc/" && break
    sleep 0.2
done

cat <<EOM

A single-node cluster runs here: tug-scheduler on $socket, tug-agent as node $(hostname).
The pod "hello" (examples/hello-pod.yaml) answers at http://$ip:8080/ :

  curl http://$ip:8080/

The Deployment "web" (examples/web.yaml) runs behind the Service web at http://$svc/ ,
web.default.svc.cluster.local to pods (DNS on the pod bridge's address):

  curl http://$svc/

Use it with kubectl (the TLS API on https://127.0.0.1:$api_port, as cluster-admin):

  export KUBECONFIG=$kubeconfig
  kubectl get pods -A; kubectl get all; kubectl explain deployment.spec

or with the CLI:

  export PATH=$bin:\$PATH
  tug get nodes; tug get pods -o wide
  tug describe pod hello
  tug get deploy web; tug get pods -l app=web -o wide   # the example Deployment's two pods
  tug scale deployment/web --replicas 3
  tug rollout restart deployment/web; tug rollout status deployment/web
  tug apply -f YOUR.yaml            # Pods, Deployments, Jobs, CronJobs; see README
  tug image ls                      # the node's images (tug.local/busybox-httpd:1 is the example's)
  tug image pull busybox:1.36       # from a registry; tug image import FILE for archives
  tug logs hello -f                 # the container's output (--tail N, --previous, --timestamps)
  tug exec -it hello -- sh          # a shell in the container
  tug top node; tug top pod         # CPU and memory, sampled by the agent

Stop: make stop   (stops both daemons and the containers, removes the example app and the
node's mounts, links and nftables tables; the store in $data stays for the next make run)
EOM
