#!/usr/bin/env bash
# The services area: a canary weight from the API to a live node's rules
# (integration/benches/services.rs), and the proxy's cost per new connection through a
# weighted Service beside a plain one (the proxy bench at 10 Services), and a node's
# NetworkPolicy table at 1,000 policies (integration/benches/policy.rs), and requests
# through the Ingress controller beside the same to the ClusterIP (ingress.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
TUG_BENCH_SERVICES=10 cargo bench --quiet -p tug-integration --bench proxy
cargo bench --quiet -p tug-integration --bench policy
source scripts/bench/release-bins.sh
cargo bench --quiet -p tug-integration --bench ingress
cargo bench --quiet -p tug-integration --bench services
