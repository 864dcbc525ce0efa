//! Announcing LoadBalancer addresses on the node's link, as MetalLB's layer-2 mode does: for
//! each address the scheduler gave a LoadBalancer Service from a pool, one Ready node — the
//! same one in every agent's view, by rendezvous hashing of the address with each node's
//! name — answers ARP requests for it with its own MAC, and says so with gratuitous ARP when
//! it takes the address over. When that node leaves (NotReady, deleted, or labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers`) the next in the hash order
//! takes over; nothing else moves. Packets for the address then reach this node, whose
//! service proxy sends them on like the ClusterIP's. Addresses that are nodes' own (the
//! no-pool mode) need no announcing.
//!
//! [`announced`] is pure; [`Responder`] is the ARP socket, on a thread inside the node's
//! network namespace. The agent going away stops the answers (another node takes over once
//! this one is NotReady).

use crate::catalog::Catalog;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Duration;

const EXCLUDE: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
const ETH_P_ARP: u16 = 0x0806;

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The node that announces `ip` among `nodes`: the highest hash of (address, node).
pub fn announcer<'a>(ip: Ipv4Addr, nodes: &[&'a str]) -> Option<&'a str> {
    nodes.iter().copied().max_by_key(|n| (fnv(&format!("{ip}/{n}")), *n))
}

/// The nodes that may announce: Ready, and not excluded from load balancers.
pub fn candidates(nodes: &[Value]) -> Vec<&str> {
    nodes
        .iter()
        .filter(|n| n["metadata"]["labels"][EXCLUDE].is_null())
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect()
}

/// The nodes holding a ready endpoint of a Service (its Endpoints object).
fn endpoint_nodes(ep: Option<&Value>) -> BTreeSet<&str> {
    ep.and_then(|e| e["subsets"].as_array())
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a["nodeName"].as_str())
        .collect()
}

/// The addresses `me` announces: pool addresses of the built-in load balancer's Services
/// (no `loadBalancerClass`) whose announcer it is. Under `externalTrafficPolicy: Local` only
/// nodes with a ready endpoint of the Service may announce it (the others would drop its
/// traffic), as MetalLB does. `endpoints` by `namespace/name`.
pub fn announced(
    services: &[&Value],
    endpoints: &std::collections::BTreeMap<String, Value>,
    nodes: &[Value],
    me: &str,
) -> BTreeSet<Ipv4Addr> {
    let node_ips: BTreeSet<&str> = nodes
        .iter()
        .flat_map(|n| n["status"]["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a["address"].as_str())
        .collect();
    let eligible = candidates(nodes);
    let mut out = BTreeSet::new();
    for s in services
        .iter()
        .filter(|s| s["spec"]["type"] == "LoadBalancer" && s["spec"]["loadBalancerClass"].is_null())
    {
        let local = s["spec"]["externalTrafficPolicy"] == "Local";
        let hosts = endpoint_nodes(endpoints.get(&crate::catalog::key_of(s)));
        let these: Vec<&str> = eligible.iter().copied().filter(|n| !local || hosts.contains(n)).collect();
        out.extend(
            s["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str())
                .filter(|ip| !node_ips.contains(ip))
                .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
                .filter(|ip| announcer(*ip, &these) == Some(me)),
        );
    }
    out
}

/// An ARP packet for IPv4 over Ethernet.
fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes());
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&op.to_be_bytes());
    p[8..14].copy_from_slice(&sha);
    p[14..18].copy_from_slice(&spa.octets());
    p[18..24].copy_from_slice(&tha);
    p[24..28].copy_from_slice(&tpa.octets());
    p
}

/// A request's asker (MAC, address) and the address asked for, if `p` is an ARP request.
pub fn parse_request(p: &[u8]) -> Option<([u8; 6], Ipv4Addr, Ipv4Addr)> {
    if p.len() < 28 || p[0..2] != [0, 1] || p[2..4] != [8, 0] || p[4] != 6 || p[5] != 4 || p[6..8] != [0, 1] {
        return None;
    }
    let sha: [u8; 6] = p[8..14].try_into().ok()?;
    let spa = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
    let tpa = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
    Some((sha, spa, tpa))
}

/// The ARP socket on the interface that holds the node's address.
pub struct Responder {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

impl Responder {
    /// Opens the socket on the interface holding `node_ip` (in the calling thread's network
    /// namespace).
    pub fn open(node_ip: Ipv4Addr) -> Result<Responder, String> {
        let addrs: Vec<nix::ifaddrs::InterfaceAddress> =
            nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?.collect();
        let name = addrs
            .iter()
            .find(|a| a.address.as_ref().and_then(|s| s.as_sockaddr_in()).is_some_and(|s| s.ip() == node_ip))
            .map(|a| a.interface_name.clone())
            .ok_or_else(|| format!("no interface holds the node's address {node_ip}"))?;
        let link = addrs
            .iter()
            .filter(|a| a.interface_name == name)
            .find_map(|a| a.address.as_ref().and_then(|s| s.as_link_addr()).map(|l| (l.ifindex(), l.addr())))
            .ok_or_else(|| format!("{name}: no link address"))?;
        let (ifindex, Some(mac)) = link else { return Err(format!("{name}: no MAC address")) };
        let ifindex = i32::try_from(ifindex).map_err(|_| format!("{name}: interface index out of range"))?;
        // SAFETY: socket() with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, i32::from(ETH_P_ARP.to_be()))
        };
        if fd < 0 {
            return Err(format!("packet socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the descriptor was just returned by socket() and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sll = sockaddr(ifindex, [0; 6]);
        // SAFETY: bind with a sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sll).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0),
            )
        };
        if r < 0 {
            return Err(format!("binding the packet socket to {name}: {}", std::io::Error::last_os_error()));
        }
        let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        // SAFETY: setsockopt with a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                u32::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(0),
            )
        };
        Ok(Responder { fd, ifindex, mac })
    }

    fn send(&self, to: [u8; 6], packet: &[u8]) {
        let sll = sockaddr(self.ifindex, to);
        // SAFETY: sendto with a buffer and a sockaddr_ll of the sizes given.
        unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                std::ptr::from_ref(&sll).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0),
            )
        };
    }

    /// Gratuitous ARP for `ip`: a request and a reply, both broadcast, so that every
    /// neighbour updates the address's entry to this node.
    pub fn gratuitous(&self, ip: Ipv4Addr) {
        let bcast = [0xff; 6];
        self.send(bcast, &arp(1, self.mac, ip, [0; 6], ip));
        self.send(bcast, &arp(2, self.mac, ip, bcast, ip));
    }

    /// Waits up to 200 ms for one ARP request and answers it when it asks for an address
    /// in `mine`.
    pub fn answer_one(&self, mine: &BTreeSet<Ipv4Addr>) {
        let mut buf = [0u8; 128];
        // SAFETY: recv into a buffer of the size given.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { return };
        if let Some((sha, spa, tpa)) = parse_request(&buf[..n])
            && mine.contains(&tpa)
        {
            self.send(sha, &arp(2, self.mac, tpa, sha, spa));
        }
    }
}

fn sockaddr(ifindex: i32, to: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&to);
    sll
}

/// Follows the catalog and answers for this node's addresses until the agent ends.
pub async fn run(catalog: Arc<Catalog>, me: String, node_ip: Ipv4Addr, netns: Option<PathBuf>) {
    // The wanted set, sent on each change: the thread waits for it while it has nothing to
    // announce, and takes the latest between ARP reads otherwise.
    let (mine, wanted) = mpsc::channel::<BTreeSet<Ipv4Addr>>();
    // The socket's thread: in the node's namespace for good.
    std::thread::spawn(move || {
        if let Some(ns) = &netns {
            let entered = std::fs::File::open(ns).map_err(|e| e.to_string()).and_then(|f| {
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())
            });
            if let Err(e) = entered {
                tracing::warn!("tug-agent: load balancer announcements: entering {}: {e}", ns.display());
                return;
            }
        }
        // The socket is open only while there is something to announce.
        let mut responder: Option<Responder> = None;
        let mut announced: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut now: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut repeats = 0u32;
        loop {
            if now.is_empty() {
                responder = None;
                announced.clear();
                match wanted.recv() {
                    Ok(w) => now = w,
                    // The agent is ending.
                    Err(_) => return,
                }
            }
            while let Ok(w) = wanted.try_recv() {
                now = w;
            }
            if now.is_empty() {
                continue;
            }
            if responder.is_none() {
                match Responder::open(node_ip) {
                    Ok(r) => responder = Some(r),
                    Err(e) => {
                        tracing::warn!("tug-agent: load balancer announcements: {e}");
                        std::thread::sleep(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let Some(r) = &responder else { continue };
            if now.difference(&announced).next().is_some() {
                for ip in now.difference(&announced) {
                    tracing::info!("tug-agent: announcing load balancer address {ip}");
                }
                // Three rounds of gratuitous ARP (about 200 ms apart): one may be lost.
                repeats = 3;
            }
            announced = now.clone();
            if repeats > 0 {
                for ip in &announced {
                    r.gratuitous(*ip);
                }
                repeats -= 1;
            }
            r.answer_one(&announced);
        }
    });
    let changes = catalog.subscribe();
    let mut last: BTreeSet<Ipv4Addr> = BTreeSet::new();
    loop {
        changes.notified().await;
        let want = {
            let o = catalog.read();
            let services: Vec<&Value> = o.services.values().collect();
            let nodes: Vec<Value> = o.nodes.values().cloned().collect();
            announced(&services, &o.endpoints, &nodes, &me)
        };
        if want != last {
            last = want.clone();
            if mine.send(want).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ip: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name}, "status": {
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "Unknown" }}]}})
    }

    fn lb(ips: &[&str]) -> Value {
        let ingress: Vec<Value> = ips.iter().map(|i| json!({"ip": i})).collect();
        json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": ingress}}})
    }

    #[test]
    fn one_ready_node_announces_each_address_and_only_it_moves_when_its_node_goes() {
        let nodes =
            vec![node("a", "10.0.0.10", true), node("b", "10.0.0.11", true), node("c", "10.0.0.12", true)];
        let svc = lb(&["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]);
        let by = |nodes: &[Value]| -> Vec<BTreeSet<Ipv4Addr>> {
            ["a", "b", "c"].iter().map(|me| announced(&[&svc], &Default::default(), nodes, me)).collect()
        };
        let before = by(&nodes);
        assert_eq!(before.iter().map(BTreeSet::len).sum::<usize>(), 4, "each address once: {before:?}");
        // The first node with an address goes NotReady: its addresses move, no other does.
        let gone = before.iter().position(|s| !s.is_empty()).unwrap();
        let mut down = nodes.clone();
        down[gone] = node(["a", "b", "c"][gone], ["10.0.0.10", "10.0.0.11", "10.0.0.12"][gone], false);
        let after = by(&down);
        assert!(after[gone].is_empty());
        assert_eq!(after.iter().map(BTreeSet::len).sum::<usize>(), 4);
        for i in (0..3).filter(|i| *i != gone) {
            assert!(before[i].is_subset(&after[i]), "{before:?} {after:?}");
        }
    }

    #[test]
    fn node_addresses_and_other_classes_are_not_announced() {
        let nodes = vec![node("a", "10.0.0.10", true)];
        assert!(announced(&[&lb(&["10.0.0.10"])], &Default::default(), &nodes, "a").is_empty());
        let mut other = lb(&["192.0.2.9"]);
        other["spec"]["loadBalancerClass"] = "example.com/lb".into();
        assert!(announced(&[&other], &Default::default(), &nodes, "a").is_empty());
        assert_eq!(announced(&[&lb(&["192.0.2.9"])], &Default::default(), &nodes, "a").len(), 1);
        let mut excluded = nodes.clone();
        excluded[0]["metadata"]["labels"] = json!({EXCLUDE: ""});
        assert!(announced(&[&lb(&["192.0.2.9"])], &Default::default(), &excluded, "a").is_empty());
    }

    /// Under externalTrafficPolicy Local only a node with a ready endpoint announces.
    #[test]
    fn a_local_service_is_announced_by_a_node_with_an_endpoint() {
        let nodes = vec![node("a", "10.0.0.10", true), node("b", "10.0.0.11", true)];
        let mut svc = lb(&["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]);
        svc["spec"]["externalTrafficPolicy"] = "Local".into();
        let key = crate::catalog::key_of(&svc);
        let eps: std::collections::BTreeMap<String, Value> =
            [(key, json!({"subsets": [{"addresses": [{"ip": "10.244.1.5", "nodeName": "b"}]}]}))].into();
        assert!(announced(&[&svc], &eps, &nodes, "a").is_empty());
        assert_eq!(announced(&[&svc], &eps, &nodes, "b").len(), 4);
        assert!(announced(&[&svc], &Default::default(), &nodes, "b").is_empty(), "no endpoint: nobody");
    }

    #[test]
    fn requests_are_parsed_and_answered_in_arp_s_layout() {
        let req =
            arp(1, [1, 2, 3, 4, 5, 6], "10.0.0.1".parse().unwrap(), [0; 6], "192.0.2.1".parse().unwrap());
        assert_eq!(
            parse_request(&req),
            Some(([1, 2, 3, 4, 5, 6], "10.0.0.1".parse().unwrap(), "192.0.2.1".parse().unwrap()))
        );
        let reply =
            arp(2, [9; 6], "192.0.2.1".parse().unwrap(), [1, 2, 3, 4, 5, 6], "10.0.0.1".parse().unwrap());
        assert_eq!(parse_request(&reply), None, "a reply is no request");
        assert_eq!(parse_request(&req[..20]), None);
    }
}
