#!/usr/bin/env bash
# `make run`: start a single-node cluster on this host with what exists so far, and say
# plainly what does not exist yet. Never pretends.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release

echo "Tug $("$bin/tug" version)"
for daemon in tug-scheduler tug-agent; do
    if [ ! -x "$bin/$daemon" ]; then
        echo "make run: $daemon is not built yet (see the open issues); no cluster is started"
    fi
done
if [ -x "$bin/tug-shim" ]; then
    echo
    echo "The OCI runtime is ready: $bin/tug-shim (runc's command line)."
    echo "  $bin/tug-shim run --bundle BUNDLE ID     # create, start and wait for a container"
    echo "  $bin/tug-shim features                   # what it supports"
fi
