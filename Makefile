# Tug's two commands are `make run` and `make test`; everything else here serves them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
TRIPLE := x86_64-unknown-linux-gnu
RELEASE := target/release
PROBE := target/$(TRIPLE)/release/tug-probe
# `make bench AREA=runtime` runs one area; empty runs them all.
AREA ?=

.PHONY: all deps clean-root run-check build release probe static lint unit test bench run stop vm-test clean install uninstall

all: build

## deps: install what is missing (Debian packages), idempotently.
deps:
	@bash scripts/deps.sh

## clean-root: deps.sh alone, in a bare Debian root, brings every non-Rust prerequisite the
## build and tests use (a machine's image or Recommends can hide a missing package).
clean-root: deps
	@bash scripts/clean-root.sh

build:
	$(CARGO) build --workspace

## run-check: `make run` twice, the example app answering, `make stop` leaving nothing behind,
## and again (debug binaries, in a private mount and network namespace).
run-check:
	$(CARGO) build --workspace --locked --bins
	@bash scripts/run-check.sh

release:
	$(CARGO) build --release --workspace --bins

## probe: the static probe binary that tests run inside containers.
probe:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p tug-probe --target $(TRIPLE)

## static: statically linked release builds of tug-shim and tug-supervisor (libseccomp
## included), what hosts run: no loader or shared libc pages in every supervisor.
static:
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked -p tug-shim --bins --target $(TRIPLE)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## unit: every test in the workspace (unit, doc and root integration tests). The cgroup_v2
## tests need a pure cgroup v2 kernel: they run here on such a host, and in the VM otherwise.
PURE_V2 := $(shell grep -q ' - cgroup ' /proc/self/mountinfo && echo no || echo yes)
NEXTEST_FILTER := $(if $(filter yes,$(PURE_V2)),,-E 'not binary(cgroup_v2)')
unit: probe
	$(CARGO) build --workspace --locked --bins
	$(CARGO) test --workspace --locked --doc
	$(CARGO) nextest run --workspace --locked $(NEXTEST_FILTER)

## vm-test: the pure cgroup v2 suite inside a QEMU guest, then a cluster of two guests
## (see scripts/vm/).
vm-test: probe
	@bash scripts/vm/run.sh
	@bash scripts/vm/cluster.sh

## test: what CI runs.
test: deps clean-root lint run-check unit vm-test
	@echo "make test: all checks passed"

## bench: every benchmark, or one area with AREA=NAME; prints BENCH lines.
bench: deps release probe
	@bash scripts/bench.sh $(AREA)

## run: a single-node cluster on this host.
run: deps release probe static
	@bash scripts/run.sh

## stop: stops what `make run` started and removes the example app, the node's containers,
## mounts, network namespaces, links and nftables tables (the store under /var/lib/tug stays).
stop:
	@bash scripts/stop.sh

## install: binaries (tug-shim and tug-supervisor the static builds), systemd units, /etc/tug,
## state directories (DESTDIR, PREFIX honoured).
install: release static
	@bash scripts/install.sh

uninstall:
	@bash scripts/install.sh --uninstall

clean:
	$(CARGO) clean
