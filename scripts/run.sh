#!/usr/bin/env bash
# `make run`: start a single-node cluster on this host with what exists so far, apply the
# example app, and say plainly what does not exist yet. Never pretends.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(pwd)/target/release
socket=/run/tug/tug.sock
data=/var/lib/tug
pidfile=/run/tug/tug-scheduler.pid
log=/var/log/tug-scheduler.log

mkdir -p /run/tug "$data"
if [ -S "$socket" ] && TUG_SOCKET=$socket "$bin/tug" version >/dev/null 2>&1; then
    echo "make run: tug-scheduler is already serving on $socket"
else
    setsid "$bin/tug-scheduler" --socket "$socket" --data-dir "$data" </dev/null >>"$log" 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 100); do
        TUG_SOCKET=$socket "$bin/tug" version >/dev/null 2>&1 && break
        sleep 0.1
    done
    TUG_SOCKET=$socket "$bin/tug" version >/dev/null || { echo "make run: tug-scheduler did not start; see $log" >&2; exit 1; }
    echo "make run: started tug-scheduler (pid $(cat "$pidfile"), store $data, log $log)"
fi
# The example app's image, built offline from busybox-static and imported into the node's store.
bash scripts/example-image.sh target/example-image >/dev/null
"$bin/tug" image import target/example-image
TUG_SOCKET=$socket "$bin/tug" apply -f examples/web.yaml

cat <<EOM

The control plane is up on $socket and holds the example app (examples/web.yaml).
Use it with the CLI:

  export PATH=$bin:\$PATH
  tug get deploy; tug get svc
  tug describe deploy web
  tug apply -f YOUR.yaml
  tug image ls                      # the node's images (tug.local/busybox-httpd:1 is the example's)
  tug image pull busybox:1.36       # from a registry; tug image import FILE for archives

Not there yet, so nothing runs the app's pods: tug-agent (the node agent), the scheduler and
the controllers are open issues. The OCI runtime works on its own: $bin/tug-shim run --bundle DIR ID.

Stop the control plane: kill \$(cat $pidfile)
EOM
