#!/usr/bin/env bash
# The agent area: pod startup latency for 100 pods at once on one node, and the agent's RSS
# and CPU with them running (integration/benches/agent.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
# The bench drives the debug-profile daemons the harness builds; release ones are what a host
# runs, so point the harness at them — with tug-shim and tug-supervisor linked statically, as
# `make install` installs them.
cargo build --release --quiet --workspace --bins
make --no-print-directory static >/dev/null
bins=target/bench-bin
mkdir -p "$bins"
for b in target/release/tug target/release/tug-scheduler target/release/tug-agent \
    target/x86_64-unknown-linux-gnu/release/tug-shim target/x86_64-unknown-linux-gnu/release/tug-supervisor; do
    ln -f "$b" "$bins/"
done
TUG_BIN_DIR=$(pwd)/$bins cargo bench --quiet -p tug-integration --bench agent
