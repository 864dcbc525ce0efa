#!/usr/bin/env bash
# The autoscaling area: the HPA controller's CPU per 1,000 HPAs per sync, in-process
# (scheduler/benches/autoscaling.rs), and on a live node the time from load to the first
# scale-out and to the new pods Ready (integration/benches/autoscaling.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-scheduler --bench autoscaling
source scripts/bench/release-bins.sh
cargo bench --quiet -p tug-integration --bench autoscaling
