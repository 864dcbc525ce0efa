#!/usr/bin/env bash
# The scale area: one control plane before thousands of hollow nodes (tug-hollow), on the
# embedded store and on etcd (see integration/benches/scale.rs). TUG_SCALE_NODES,
# TUG_SCALE_PODS and TUG_SCALE_STORES size it.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-integration --bench scale
