//! `tug-scheduler`: the control plane.
//!
//! - [`store`]: objects with revisions, optimistic concurrency and watch (embedded redb).
//! - [`api`]: the HTTP/JSON API over a Unix socket, in Kubernetes' REST shapes.
//!
//! It never makes a container or network syscall. The scheduler proper (filter → score →
//! bind), the reconcilers, TLS for remote agents and the etcd backend arrive with their
//! issues.

pub mod api;
/// Access control: authentication, the authorizers (node, RBAC), the default policy.
// Refusals are the `Status` the client reads, built once per refused request.
#[allow(clippy::result_large_err)]
pub mod auth;
/// One connection served with the header and idle timeouts.
pub mod conn;
pub mod controllers;
/// Graceful deletion: what a DELETE does to an object, for the API and the controllers.
pub mod deletion;
/// Events written in batches off the hot path (the scheduler's `Scheduled`).
pub mod events;
pub mod metrics;
pub mod pki;
pub mod quota;
pub mod sched;
/// Secrets sealed for a store other replicas read (the cluster CA's key under etcd).
pub mod seal;
pub mod store;
pub mod tls;
