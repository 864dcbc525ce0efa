//! What Tug-named debris exists on this host right now: network namespaces, links, mounts,
//! nftables tables and processes. Tests take it after tearing down to prove they left nothing.

use std::process::Command;

/// Debris whose name contains a given marker.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Debris {
    pub netns: Vec<String>,
    pub links: Vec<String>,
    pub mounts: Vec<String>,
    pub nft_tables: Vec<String>,
    pub processes: Vec<String>,
}

impl Debris {
    /// Everything on the host whose name contains `marker`.
    pub fn containing(marker: &str) -> Debris {
        let has = |s: &str| s.contains(marker);
        Debris {
            netns: netns_with_prefix("").into_iter().filter(|n| has(n)).collect(),
            links: lines("ip", &["-o", "link", "show"]).into_iter().filter(|l| has(l)).collect(),
            mounts: std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| has(l))
                .map(str::to_string)
                .collect(),
            nft_tables: lines("nft", &["list", "tables"]).into_iter().filter(|l| has(l)).collect(),
            processes: processes().into_iter().filter(|p| has(p)).collect(),
        }
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        *self == Debris::default()
    }
}

/// Names under `/run/netns` that start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(prefix)).collect()
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn lines(program: &str, args: &[&str]) -> Vec<String> {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// `pid cmdline` for every process, with NULs in the command line shown as spaces.
fn processes() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        name.parse::<u32>().ok()?;
        let cmdline = std::fs::read(format!("/proc/{name}/cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        Some(format!("{name} {}", text.trim()))
    })
    .collect()
}
