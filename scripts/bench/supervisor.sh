#!/usr/bin/env bash
# The supervisor area: the resident set of idle supervisors (integration/benches/supervisor.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-integration --bench supervisor
