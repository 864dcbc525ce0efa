#!/usr/bin/env bash
# The images area: pull + unpack of a 50 MB image from a loopback registry, cold and warm,
# beside skopeo copy + umoci unpack (integration/benches/images.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --quiet -p tug-integration --bench images
