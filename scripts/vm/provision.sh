#!/usr/bin/env bash
# Provisions one host as a Tug node the way an operator does it: `make install`
# (scripts/install.sh), the configuration files under /etc/tug, then the daemons — through
# their systemd units where systemd runs, started directly (with pid files) where it does not,
# as in the QEMU guest. Used by the VM suite (integration/tests/cgroup_v2.rs, in the guest) and
# by the Vagrantfile.
#
#   provision.sh server [--listen ADDR] [AGENT OPTIONS]     control plane + an agent beside it
#   provision.sh agent --server https://HOST:6443 --token TOKEN [AGENT OPTIONS]
#   AGENT OPTIONS: --node-ip IP, --node-name NAME, --network-backend auto|host-gw|vxlan
#
# BUILD (where the binaries are, default target/release) and PREFIX pass through to install.sh.
# Without systemd the daemons log to /var/log/tug-{scheduler,agent}.log and their pids are in
# /run/tug/{scheduler,agent}.pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
role=${1:-}
shift || true
node_ip="" listen="" server="" token="" backend="" node_name=""
while [ $# -gt 0 ]; do
    case "$1" in
        --node-ip) node_ip=$2; shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --server) server=$2; shift 2 ;;
        --token) token=$2; shift 2 ;;
        --network-backend) backend=$2; shift 2 ;;
        --node-name) node_name=$2; shift 2 ;;
        *) echo "provision.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$role" in
    server) ;;
    agent) [ -n "$server" ] && [ -n "$token" ] || { echo "provision.sh agent needs --server URL --token TOKEN" >&2; exit 2; } ;;
    *) echo "usage: provision.sh server|agent [options]" >&2; exit 2 ;;
esac

bash scripts/install.sh
PREFIX=${PREFIX:-/usr/local}
conf=/etc/tug

# The configuration: the installed defaults plus this host's settings.
if [ "$role" = server ]; then
    {
        cat packaging/config/scheduler.toml
        [ -z "$listen" ] || echo "listen = \"$listen\""
    } > "$conf/scheduler.toml"
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
    setsid "$PREFIX/bin/tug-$name" --config "$conf/$name.toml" < /dev/null > "/var/log/tug-$name.log" 2>&1 &
    echo $! > "/run/tug/$name.pid"
}

if [ "$role" = server ]; then
    start scheduler
    for _ in $(seq 300); do
        "$PREFIX/bin/tug" --server /run/tug/tug.sock get ns >/dev/null 2>&1 && break
        sleep 0.2
    done
    "$PREFIX/bin/tug" --server /run/tug/tug.sock get ns >/dev/null \
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
start agent
echo "provision.sh: $role provisioned ($PREFIX/bin, $conf)"
