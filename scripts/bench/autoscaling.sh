#!/usr/bin/env bash
# The autoscaling area: the HPA controller's CPU per 1,000 HPAs per sync, in-process
# (scheduler/benches/autoscaling.rs), and on a live node the time from load to the first
# scale-out and to the new pods Ready (integration/benches/autoscaling.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-scheduler --bench autoscaling
cargo build --release --quiet --workspace --bins
make --no-print-directory static >/dev/null
bins=target/bench-bin
mkdir -p "$bins"
for b in target/release/tug target/release/tug-scheduler target/release/tug-agent \
    target/x86_64-unknown-linux-gnu/release/tug-shim target/x86_64-unknown-linux-gnu/release/tug-supervisor; do
    ln -f "$b" "$bins/"
done
TUG_BIN_DIR=$(pwd)/$bins cargo bench --quiet -p tug-integration --bench autoscaling
