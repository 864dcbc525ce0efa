#!/usr/bin/env bash
# The supervisor area: the resident set of idle supervisors (integration/benches/supervisor.rs).
# Measured on static builds of tug-shim and tug-supervisor, as `make static` makes them for
# installation: a dynamically linked program carries the loader and libc's mapped pages, about
# 1 MiB of resident set before its first instruction.
set -euo pipefail
cd "$(dirname "$0")/../.."
make --no-print-directory static >/dev/null
TUG_SHIM_BINARY="$PWD/target/x86_64-unknown-linux-gnu/release/tug-shim" \
    cargo bench --quiet -p tug-integration --bench supervisor
