//! `tug-api`: the vocabulary every Tug component shares.
//!
//! It owns the resource types (Kubernetes field names and shapes), manifest parsing and
//! validation with path-accurate errors, quantities and label selectors. It does no IO and
//! depends on no other Tug crate; the HTTP client lives in the CLI.
//!
//! ```
//! let objs = tug_api::manifest::load("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n").unwrap();
//! assert_eq!(objs[0].display_name(), "namespace/team-a");
//! ```

pub mod cidr;
pub mod columns;
pub mod cron;
pub mod defaults;
/// A cheap bound on a YAML text's nesting, read before the parse.
pub mod depth;
pub mod event_v1;
pub mod expr;
pub mod fieldset;
pub mod frame;
pub mod hpa_v1;
pub mod jsonpath;
pub mod kinds;
pub mod labels;
pub mod manifest;
pub mod meta;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod status;
pub mod tunnel;
pub mod validate;
pub mod validate_apps;
pub mod validate_rollouts;
/// What an update may change: Kubernetes' immutable fields, as pure checks.
pub mod validate_update;
pub mod validation;

/// A boolean query parameter as Kubernetes (Go's `strconv.ParseBool`) reads it: `1`, `t`,
/// `T`, `TRUE`, `true`, `True` are true (the Python client sends `watch=True`).
pub fn query_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// The version of this Tug build, shared by every binary's `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `serde_json::from_value` of a borrowed value: decodes `T` without cloning the value first
/// (a clone of a pod's tree, then freeing it, cost more than the decoding itself).
///
/// # Errors
/// When `v` is not a `T`, as `serde_json::from_value` says it.
pub fn from_value_ref<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> serde_json::Result<T> {
    T::deserialize(v)
}
