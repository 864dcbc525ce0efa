//! `tug-bpf`: BPF programs for Tug, compiled from data to bytecode in pure Rust.
//!
//! The first program is the cgroup v2 device filter: OCI device rules in, a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program out, checked in unit tests by an interpreter without
//! root, then attached by a thin loader. The runtime-hardening issue builds it.
