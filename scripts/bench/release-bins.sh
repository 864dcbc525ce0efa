# Sourced by the benches that drive live daemons: the harness builds debug-profile daemons;
# release ones are what a host runs, so the harness is pointed at them — with tug-shim and
# tug-supervisor linked statically, as `make install` installs them. Sets TUG_BIN_DIR.
cargo build --release --quiet --workspace --bins
make --no-print-directory static >/dev/null
bins=target/bench-bin
mkdir -p "$bins"
for b in target/release/tug target/release/tug-scheduler target/release/tug-agent \
    target/x86_64-unknown-linux-gnu/release/tug-shim target/x86_64-unknown-linux-gnu/release/tug-supervisor; do
    ln -f "$b" "$bins/"
done
export TUG_BIN_DIR
TUG_BIN_DIR=$(pwd)/$bins
