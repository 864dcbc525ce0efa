//! The scheduler: picks a node for every pod that has none.
//!
//! [`snapshot`] is the cluster as the scheduler sees it (nodes with what they offer and what
//! is assigned, the pod precomputed); [`filters`] say which nodes can take the pod and why the
//! others cannot; [`scores`] rank the rest; [`engine`] chains them (pure). `bind.rs` is the
//! effect: watch, decide, write `spec.nodeName` with optimistic concurrency, record why a
//! pod cannot be placed.

pub mod bind;
pub mod context;
pub mod engine;
pub mod filters;
pub mod scores;
pub mod snapshot;
pub mod volumes;
