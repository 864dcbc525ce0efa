#!/usr/bin/env bash
# The proxy area: rule sync time and first-packet latency through a ClusterIP
# (integration/benches/proxy.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-integration --bench proxy
