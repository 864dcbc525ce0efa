#!/usr/bin/env bash
# Provisions one host as a Tug node the way an operator does it: `make install`
# (scripts/install.sh), the configuration files under /etc/tug, then the daemons — through
# their systemd units where systemd runs, started directly (with pid files) where it does not,
# as in the QEMU guest. Used by the VM suite (integration/tests/cgroup_v2.rs, in the guest) and
# by the Vagrantfile.
#
#   provision.sh server [--listen ADDR] [AGENT OPTIONS]     control plane + an agent beside it
#   provision.sh server --ha IP1,IP2,IP3 --pki-secret-file FILE --node-ip IP [AGENT OPTIONS]
#   provision.sh agent --server https://HOST:6443 --token TOKEN [AGENT OPTIONS]
#   AGENT OPTIONS: --node-ip IP, --node-name NAME, --network-backend auto|host-gw|vxlan
#   --scheduler-setting KEY=VALUE (repeatable): a line KEY = "VALUE" of tug-scheduler's
#     configuration (/etc/tug/scheduler.toml: any flag of tug-scheduler, without its --), as
#     kubeadm's extraArgs, e.g. leader-elect-lease-duration=10s for slow or loaded servers
#   --etcd-setting ETCD_NAME=VALUE (repeatable, --ha): a line of the etcd member's
#     environment (/etc/tug/etcd.env), e.g. ETCD_ELECTION_TIMEOUT=5000
#
# --ha: one of three (or five) servers of a highly available control plane, run on each of
# them at about the same time. Each runs an etcd member (Debian's etcd-server; members
# etcd-IP on IP:2380, clients on IP:2379 and loopback) with the others as its peers, a
# tug-scheduler replica over all the members (listening on IP:6443), and an agent joined to
# every replica over TLS. FILE is the replicas' shared secret (the same file on every server:
# head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE), which seals the cluster CA and the
# join token in etcd, so every replica hands out the same token.
# etcd's traffic between the servers is plain HTTP: keep it on a private network.
#
# BUILD (where the binaries are, default target/release) and PREFIX pass through to install.sh.
# Without systemd the daemons log to /var/log/tug-{scheduler,agent}.log and their pids are in
# /run/tug/{scheduler,agent}.pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
role=${1:-}
shift || true
node_ip="" listen="" server="" token="" backend="" node_name="" ha="" pki_secret=""
scheduler_settings=() etcd_settings=()
while [ $# -gt 0 ]; do
    case "$1" in
        --ha) ha=$2; shift 2 ;;
        --pki-secret-file) pki_secret=$2; shift 2 ;;
        --node-ip) node_ip=$2; shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --server) server=$2; shift 2 ;;
        --token) token=$2; shift 2 ;;
        --network-backend) backend=$2; shift 2 ;;
        --node-name) node_name=$2; shift 2 ;;
        --scheduler-setting)
            re='^[a-z][a-z0-9-]*=[^"\\]*$'
            [[ ${2:-} =~ $re ]] \
                || { echo "provision.sh: --scheduler-setting ${2:-} is not KEY=VALUE (KEY a tug-scheduler flag without its --, VALUE without quotes or backslashes)" >&2; exit 2; }
            scheduler_settings+=("$2"); shift 2 ;;
        --etcd-setting)
            [[ ${2:-} =~ ^ETCD_[A-Z0-9_]+=[^[:space:]]*$ ]] \
                || { echo "provision.sh: --etcd-setting ${2:-} is not ETCD_NAME=VALUE (one of etcd's ETCD_ variables, VALUE without spaces)" >&2; exit 2; }
            etcd_settings+=("$2"); shift 2 ;;
        *) echo "provision.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$role" in
    server)
        if [ -n "$ha" ]; then
            [ -n "$node_ip" ] && [ -n "$pki_secret" ] \
                || { echo "provision.sh server --ha needs --node-ip IP and --pki-secret-file FILE" >&2; exit 2; }
            [ -r "$pki_secret" ] || { echo "provision.sh: --pki-secret-file $pki_secret cannot be read" >&2; exit 2; }
            case ",$ha," in *",$node_ip,"*) ;; *) echo "provision.sh: --node-ip $node_ip is not one of --ha $ha" >&2; exit 2 ;; esac
            n=$(echo "$ha" | tr ',' '\n' | grep -c .)
            [ $((n % 2)) = 1 ] || { echo "provision.sh: --ha names $n servers; etcd wants an odd number (3 or 5)" >&2; exit 2; }
            listen=${listen:-$node_ip:6443}
        fi
        ;;
    agent)
        [ -n "$server" ] && [ -n "$token" ] || { echo "provision.sh agent needs --server URL --token TOKEN" >&2; exit 2; }
        [ ${#scheduler_settings[@]} = 0 ] || { echo "provision.sh: --scheduler-setting is for a server" >&2; exit 2; }
        ;;
    *) echo "usage: provision.sh server|agent [options]" >&2; exit 2 ;;
esac
[ ${#etcd_settings[@]} = 0 ] || [ -n "$ha" ] || { echo "provision.sh: --etcd-setting is for a server with --ha (its etcd member)" >&2; exit 2; }

bash scripts/install.sh
PREFIX=${PREFIX:-/usr/local}
conf=/etc/tug

# The servers' addresses (--ha), in each one's form.
each() { # each FORMAT: FORMAT with %s as each server's IP, comma-separated
    local out="" ip
    for ip in ${ha//,/ }; do out="$out${out:+,}$(printf "$1" "$ip")"; done
    echo "$out"
}
if [ -n "$ha" ]; then
    command -v etcd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server
    # Debian's own unit runs a one-member etcd on loopback: this host's member replaces it.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl disable --now etcd.service 2>/dev/null || true
    fi
    install -m 0600 "$pki_secret" "$conf/pki-secret"
    (
        umask 077
        name=etcd-${node_ip//./-}
        initial=""
        for ip in ${ha//,/ }; do initial="$initial${initial:+,}etcd-${ip//./-}=http://$ip:2380"; done
        cat > "$conf/etcd.env" <<ENV
ETCD_NAME=$name
ETCD_DATA_DIR=/var/lib/tug/etcd
ETCD_LISTEN_PEER_URLS=http://$node_ip:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://$node_ip:2380
ETCD_LISTEN_CLIENT_URLS=http://$node_ip:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$node_ip:2379
ETCD_INITIAL_CLUSTER=$initial
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=tug
ENV
        for setting in "${etcd_settings[@]}"; do echo "$setting"; done >> "$conf/etcd.env"
    )
fi

# The configuration: the installed defaults plus this host's settings.
if [ "$role" = server ]; then
    {
        cat packaging/config/scheduler.toml
        [ -z "$listen" ] || echo "listen = \"$listen\""
        if [ -n "$ha" ]; then
            echo "store = \"etcd\""
            echo "etcd-endpoints = \"$(each "http://%s:2379")\""
            echo "pki-secret-file = \"$conf/pki-secret\""
        fi
        for setting in "${scheduler_settings[@]}"; do echo "${setting%%=*} = \"${setting#*=}\""; done
    } > "$conf/scheduler.toml"
    # A misspelt or invalid --scheduler-setting fails here, by name, not in the daemon's log.
    "$PREFIX/bin/tug-scheduler" --config "$conf/scheduler.toml" --print-config > /dev/null \
        || { echo "provision.sh: $conf/scheduler.toml is refused by tug-scheduler (see above)" >&2; exit 2; }
fi
{
    cat packaging/config/agent.toml
    [ -z "$node_ip" ] || echo "node-ip = \"$node_ip\""
    [ -z "$backend" ] || echo "network-backend = \"$backend\""
    [ -z "$node_name" ] || echo "node-name = \"$node_name\""
} > "$conf/agent.toml.new"
if [ "$role" = agent ]; then
    # A remote control plane instead of the local socket.
    sed -i '/^socket *=/d' "$conf/agent.toml.new"
    { echo "server = \"$server\""; echo "token = \"$token\""; } >> "$conf/agent.toml.new"
fi
chmod 0600 "$conf/agent.toml.new"
mv "$conf/agent.toml.new" "$conf/agent.toml"

start() {
    local name=$1
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl enable --now "tug-$name.service"
        return
    fi
    mkdir -p /run/tug /var/log
    # A session of its own: the daemon outlives this script and its terminal.
    if [ "$name" = etcd ]; then
        (set -a; . "$conf/etcd.env"; exec setsid etcd) < /dev/null > /var/log/tug-etcd.log 2>&1 &
    else
        setsid "$PREFIX/bin/tug-$name" --config "$conf/$name.toml" < /dev/null > "/var/log/tug-$name.log" 2>&1 &
    fi
    echo $! > "/run/tug/$name.pid"
}
# Whether this host's etcd member has a leader (so the cluster has a quorum): its /health,
# asked through bash's /dev/tcp (no curl or wget needed).
etcd_healthy() {
    ( exec 3<>/dev/tcp/127.0.0.1/2379 && printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 \
        && timeout 3 cat <&3 ) 2>/dev/null | grep -q '"health":"true"'
}

if [ -n "$ha" ]; then
    start etcd
    # The first server waits here for a second one's member: run provision.sh on them all.
    waited=0
    until etcd_healthy; do
        [ "$waited" -lt 600 ] || { echo "provision.sh: etcd has no quorum after 600 s (are the other servers' members up? $ha)" >&2; tail -20 /var/log/tug-etcd.log >&2 2>/dev/null || true; exit 1; }
        if [ $((waited % 30)) = 0 ] && [ "$waited" != 0 ]; then
            echo "provision.sh: waiting for the etcd members on $ha to form a quorum; etcd's last words:"
            tail -3 /var/log/tug-etcd.log 2>/dev/null | cut -c1-300 || journalctl -u tug-etcd -n 3 -o cat 2>/dev/null || true
        fi
        sleep 1; waited=$((waited + 1))
    done
fi
if [ "$role" = server ]; then
    start scheduler
    for _ in $(seq 300); do
        timeout 10 "$PREFIX/bin/tug" --server /run/tug/tug.sock get ns >/dev/null 2>&1 && break
        sleep 0.2
    done
    timeout 10 "$PREFIX/bin/tug" --server /run/tug/tug.sock get ns >/dev/null \
        || { echo "provision.sh: tug-scheduler did not answer" >&2; cat /var/log/tug-scheduler.log >&2 || true; exit 1; }
fi
if [ "$role" = server ] && [ -n "$listen" ]; then
    # The join token other hosts need, from the scheduler's log, kept root-only.
    token=""
    for _ in $(seq 100); do
        if [ -d /run/systemd/system ] && command -v journalctl >/dev/null; then
            token=$(journalctl -u tug-scheduler.service -o cat 2>/dev/null | sed -n 's/.*join token: //p' | tail -1)
        else
            token=$(sed -n 's/.*join token: //p' /var/log/tug-scheduler.log | tail -1)
        fi
        [ -n "$token" ] && break
        sleep 0.2
    done
    [ -n "$token" ] || { echo "provision.sh: no join token in the scheduler's log" >&2; exit 1; }
    (umask 077; echo "$token" > "$conf/join-token")
    echo "provision.sh: join token in $conf/join-token"
fi
if [ -n "$ha" ]; then
    # The agent beside a replica joins all of them, to go on when this one is down.
    sed -i '/^socket *=/d' "$conf/agent.toml"
    { echo "server = \"$(each "https://%s:${listen##*:}")\""; echo "token = \"$token\""; } >> "$conf/agent.toml"
fi
start agent
echo "provision.sh: $role provisioned ($PREFIX/bin, $conf)"
