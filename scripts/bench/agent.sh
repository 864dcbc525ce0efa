#!/usr/bin/env bash
# The agent area: pod startup latency for 100 pods at once on one node, and the agent's RSS
# and CPU with them running (integration/benches/agent.rs), with release daemons.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/release-bins.sh
cargo bench --quiet -p tug-integration --bench agent
