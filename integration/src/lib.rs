//! `tug-integration`: end-to-end tests for Tug and the harness they share.
//!
//! - [`cluster`]: the cluster in namespaces — each simulated node is a network namespace with
//!   its own loopback, its own `eth0` wired to a shared bridge, its own nftables — torn down by
//!   a guard, also when a test panics.
//! - [`probe`]: finds (building it if needed) the static `tug-probe` binary that tests run
//!   inside containers to check isolation from the inside.
//! - [`bundle`]: OCI bundles with a busybox rootfs and the probe, for runtime tests; a guard
//!   that deletes the containers and their cgroups.
//! - [`control_plane`]: a `tug-scheduler` on a private socket and data directory, stopped by
//!   pid on drop, with helpers to run `tug` against it and to send raw HTTP.
//! - [`leaks`]: what Tug-named debris is on the host now, so tests can prove they left none.
//!
//! ```no_run
//! let cluster = tug_integration::cluster::Cluster::new(3).unwrap();
//! let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
//! a.run(&["ping", "-c1", "-W2", &b.ip.to_string()]).unwrap();
//! // dropping `cluster` removes every namespace, link and process it made
//! ```

/// The names in the directory `dir`, sorted (none when it does not exist).
pub fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The id of every process on the host (the numeric names in `/proc`).
pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// The processes whose command line (its arguments with a NUL after each) holds `needle`.
pub fn pids_naming(needle: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .collect()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; whether it held. Tests wait on
/// conditions with a deadline, never for a fixed time.
pub fn wait_for(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub mod agent;
pub mod bins;
pub mod bundle;
pub mod cluster;
pub mod control_plane;
pub mod etcd;
pub mod images;
pub mod leaks;
pub mod probe;
