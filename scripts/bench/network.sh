#!/usr/bin/env bash
# The network area: pod network set-up and tear-down (integration/benches/network.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-integration --bench network
