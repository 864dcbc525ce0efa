#!/usr/bin/env bash
# The runtime area: tug-shim beside runc (and crun where it runs) on this host, then again in
# the VM suite's pure cgroup v2 guest, where crun runs too (see integration/benches/runtime.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-integration --bench runtime
bash scripts/vm/run.sh bench
