//! `tug-agent`: the node agent, the kubelet of Tug.
//!
//! - [`config`]: the settings (flags).
//! - [`node`]: the Node object (capacity, conditions, system info) and its heartbeat Lease.
//! - [`pods`]: one level-triggered worker per pod: sandbox, images, containers through
//!   supervisors, restarts with back-off, status.
//! - [`network`]: the node's pod network; [`policy`]: NetworkPolicy in nftables.
//! - [`api`]: calls to the control plane.

pub mod announce;
pub mod api;
pub mod catalog;
pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod eviction;
pub mod hollow;
pub mod ingress;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod node;
pub mod pods;
pub mod policy;
pub mod proxy;
pub mod stats;
pub mod tunnel;

/// Runs blocking work (file writes, mounts, namespace creation) from async code without
/// stalling the runtime's other tasks: on a multi-threaded runtime the worker thread hands its
/// tasks to another first (`block_in_place`); elsewhere it simply runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
