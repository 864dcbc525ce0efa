#!/usr/bin/env bash
# The runtime area: tug-shim beside runc (see integration/benches/runtime.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-integration --bench runtime
