#!/usr/bin/env bash
# The scheduler area: placement throughput in-process (scheduler/benches/scheduling.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-scheduler --bench scheduling
