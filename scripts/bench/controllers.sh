#!/usr/bin/env bash
# The controllers area: rolling a DaemonSet over 100 nodes and a 100-pod StatefulSet, the
# controllers' own work over the embedded store with hollow kubelets
# (scheduler/benches/controllers.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-scheduler --bench controllers
