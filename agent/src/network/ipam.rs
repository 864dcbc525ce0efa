//! Address management for one node's pod network: hands out addresses from the node's pod
//! CIDR, never one twice, persisted in a JSON file written atomically after every change so
//! that an agent restart keeps every running pod's address. The allocator is pure; the file
//! is a thin layer on it.

use super::cidr::Cidr4;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The allocations of one pod CIDR: address → the pod that holds it (`namespace/name`, or
/// any stable key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allocations {
    pub cidr: Cidr4,
    pub addresses: BTreeMap<IpAddr, String>,
}

impl Allocations {
    pub fn new(cidr: Cidr4) -> Allocations {
        Allocations { cidr, addresses: BTreeMap::new() }
    }

    /// The pod's address: the one it holds, or the lowest free one (neither the network
    /// address, the gateway nor the broadcast address).
    pub fn allocate(&mut self, pod: &str) -> Result<Ipv4Addr, String> {
        if let Some(IpAddr::V4(a)) = self.holding(pod) {
            return Ok(a);
        }
        let (first, last) = (2u64, self.cidr.size().saturating_sub(2));
        for i in first..=last {
            let Some(a) = self.cidr.nth(i) else { break };
            if let std::collections::btree_map::Entry::Vacant(v) = self.addresses.entry(IpAddr::V4(a)) {
                v.insert(pod.to_string());
                return Ok(a);
            }
        }
        Err(format!("pod CIDR {} is full ({} addresses in use)", self.cidr, self.addresses.len()))
    }

    /// The address a pod holds.
    pub fn holding(&self, pod: &str) -> Option<IpAddr> {
        self.addresses.iter().find(|(_, p)| p.as_str() == pod).map(|(a, _)| *a)
    }

    /// Frees the pod's address; returns it.
    pub fn release(&mut self, pod: &str) -> Option<IpAddr> {
        let a = self.holding(pod)?;
        self.addresses.remove(&a);
        Some(a)
    }

    /// Frees every address whose pod is not in `live` (after an agent crash); returns them.
    pub fn reclaim(&mut self, live: &dyn Fn(&str) -> bool) -> Vec<(IpAddr, String)> {
        let gone: Vec<(IpAddr, String)> =
            self.addresses.iter().filter(|(_, p)| !live(p)).map(|(a, p)| (*a, p.clone())).collect();
        for (a, _) in &gone {
            self.addresses.remove(a);
        }
        gone
    }
}

/// [`Allocations`] kept in a file.
pub struct Ipam {
    path: PathBuf,
    pub state: Allocations,
}

impl Ipam {
    /// Opens the file, or starts empty. A file for another CIDR is an error: the node's pod
    /// CIDR changed under running pods.
    pub fn open(path: &Path, cidr: Cidr4) -> Result<Ipam, String> {
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                let s: Allocations =
                    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                if s.cidr != cidr {
                    return Err(format!(
                        "{}: allocations are for pod CIDR {}, the node now has {cidr}; remove the file once no pod uses the old range",
                        path.display(),
                        s.cidr
                    ));
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Allocations::new(cidr),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Ipam { path: path.to_path_buf(), state })
    }

    /// Writes the allocations (temporary file, fsync, rename).
    pub fn save(&self) -> Result<(), String> {
        use std::io::Write;
        let err = |e: std::io::Error| format!("{}: {e}", self.path.display());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&serde_json::to_vec_pretty(&self.state).map_err(|e| e.to_string())?).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    /// Allocates and persists; on a failed write the allocation is undone.
    pub fn allocate(&mut self, pod: &str) -> Result<Ipv4Addr, String> {
        let before = self.state.clone();
        let a = self.state.allocate(pod)?;
        if let Err(e) = self.save() {
            self.state = before;
            return Err(e);
        }
        Ok(a)
    }

    pub fn release(&mut self, pod: &str) -> Result<Option<IpAddr>, String> {
        let a = self.state.release(pod);
        if a.is_some() {
            self.save()?;
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_reused_after_release_and_reclaimed() {
        let mut a = Allocations::new("10.244.1.0/29".parse().unwrap());
        let got: Vec<Ipv4Addr> = (0..5).map(|i| a.allocate(&format!("p{i}")).unwrap()).collect();
        // .0 network, .1 gateway, .7 broadcast: .2 to .6.
        assert_eq!(got.iter().map(|g| g.octets()[3]).collect::<Vec<_>>(), [2, 3, 4, 5, 6]);
        assert_eq!(a.allocate("p2").unwrap(), got[2], "a pod keeps its address");
        assert!(a.allocate("p9").unwrap_err().contains("is full (5 addresses in use)"));
        assert_eq!(a.release("p1"), Some(IpAddr::V4(got[1])));
        assert_eq!(a.allocate("p9").unwrap(), got[1]);
        let gone = a.reclaim(&|p| p != "p0" && p != "p4");
        assert_eq!(gone.len(), 2);
        assert_eq!(a.addresses.len(), 3);
    }

    #[test]
    fn the_file_survives_and_guards_its_cidr() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let cidr: Cidr4 = "10.244.2.0/24".parse().unwrap();
        let mut ipam = Ipam::open(&path, cidr).unwrap();
        let a = ipam.allocate("ns/web").unwrap();
        let again = Ipam::open(&path, cidr).unwrap();
        assert_eq!(again.state.holding("ns/web"), Some(IpAddr::V4(a)));
        let err = Ipam::open(&path, "10.244.3.0/24".parse().unwrap()).err().unwrap();
        assert!(err.contains("allocations are for pod CIDR 10.244.2.0/24"), "{err}");
    }
}
