//! `tug-scheduler`: the control plane.
//!
//! It will hold the API server (Unix socket for users, TCP with TLS for agents), the store
//! (embedded redb, or etcd for several replicas), the scheduler (filter → score → bind over
//! an immutable snapshot) and the reconcilers. It never makes a container or network syscall.
//!
//! The control-plane issue builds it; until then this crate has no binary, and `make run`
//! says so instead of starting one.
