#!/usr/bin/env bash
# The agent area: pod startup latency for 100 pods at once on one node, and the agent's RSS
# and CPU with them running (integration/benches/agent.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
# The bench drives the debug-profile daemons the harness builds; release ones are what a host
# runs, so point the harness at them.
cargo build --release --quiet --workspace --bins
TUG_BIN_DIR=$(pwd)/target/release cargo bench --quiet -p tug-integration --bench agent
