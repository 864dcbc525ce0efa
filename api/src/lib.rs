//! `tug-api`: the vocabulary every Tug component shares.
//!
//! It owns the resource types (Kubernetes field names and shapes), manifest parsing and
//! validation with path-accurate errors, quantities and label selectors, and the HTTP client
//! that speaks to the control plane over its Unix socket. It does no IO beyond that client and
//! depends on no other Tug crate.
//!
//! The resource model arrives with the control-plane issue; today the crate carries the
//! version that every binary reports.

/// The version of this Tug build, shared by every binary's `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
