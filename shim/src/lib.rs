//! `tug-shim`: Tug's OCI runtime (and, later, the per-container supervisor).
//!
//! It turns an OCI bundle — a `config.json` in the runtime spec plus a rootfs directory —
//! into a running, isolated container, with runc's command line so standard OCI tooling can
//! drive it. The creation sequence is drawn in `docs/container-creation.md`.
//!
//! - [`plan`]: the spec → the steps (pure).
//! - [`cgroups`]: hierarchy layout, resource writes, the container's cgroup.
//! - [`mounts`]: mount options, secure path joins, `/dev`, `pivot_root`.
//! - [`channel`]: the typed messages between `create` and the container's init.
//! - [`hooks`]: OCI hooks, when each runs and what its failure means.
//! - [`init`]: what the container's first process does before it execs the user's program.
//! - [`state`]: the state directory and the OCI state of a container.
//! - [`runtime`]: the commands (`create`, `start`, `kill`, `delete`, …).
//! - [`seccomp`]: `linux.seccomp` → a libseccomp filter; the default profile.
//! - [`terminal`]: pseudo-terminals and the console-socket handover.
//! - [`supervisor`]: the per-container supervisor the agent starts (`tug-shim supervise`):
//!   CRI logs, exit status, a control socket, containers that outlive the agent.

pub mod cgroups;
pub mod channel;
pub mod hooks;
pub mod init;
pub mod mounts;
pub mod plan;
pub mod runtime;
pub mod seccomp;
pub mod state;
pub mod supervisor;
pub mod terminal;
