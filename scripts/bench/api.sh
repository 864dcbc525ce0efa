#!/usr/bin/env bash
# The api area: the control plane over its Unix socket (see integration/benches/api.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-integration --bench api
