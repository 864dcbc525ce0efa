//! Routes to the other nodes' pods, decided from the node list (pure). A peer on a link this
//! node shares (its address inside one of this node's subnets) is reached directly — a route
//! to its pod CIDR via its address, flannel's host-gw; any other goes through the VXLAN
//! overlay `tug.1`: a route via the peer's VTEP address (the network address of its pod CIDR,
//! as flannel does), a neighbour entry giving that address the peer's VTEP MAC, and a
//! forwarding entry sending that MAC to the peer's node address. The VTEP MAC is derived from
//! the node's name, so nothing has to be published for it.

use super::cidr::Cidr4;
use std::net::Ipv4Addr;

/// Another node, as the node list gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub address: Ipv4Addr,
    pub pod_cidr: Cidr4,
}

/// How pod traffic crosses between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// host-gw where a link is shared, VXLAN elsewhere.
    #[default]
    Auto,
    HostGw,
    Vxlan,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "host-gw" => Ok(Backend::HostGw),
            "vxlan" => Ok(Backend::Vxlan),
            other => Err(format!("unknown network backend {other:?} (auto, host-gw or vxlan)")),
        }
    }
}

/// The next hop of a route to a peer's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The peer's node address, on a shared link.
    Gateway(Ipv4Addr),
    /// The overlay: the peer's VTEP address and MAC, and where to send its frames.
    Overlay { vtep: Ipv4Addr, mac: [u8; 6], remote: Ipv4Addr },
}

/// One route this node needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub cidr: Cidr4,
    pub via: Via,
}

/// The routes to every peer's pods. `me` is left out; so is a peer whose pod CIDR overlaps
/// this node's own.
pub fn plan(me: &str, own: Cidr4, peers: &[Peer], local_subnets: &[Cidr4], backend: Backend) -> Vec<Route> {
    let mut out: Vec<Route> = peers
        .iter()
        .filter(|p| p.name != me && !p.pod_cidr.overlaps(&own))
        .map(|p| {
            let on_link = local_subnets.iter().any(|s| s.contains(p.address));
            let direct = match backend {
                Backend::HostGw => true,
                Backend::Vxlan => false,
                Backend::Auto => on_link,
            };
            let via = if direct {
                Via::Gateway(p.address)
            } else {
                Via::Overlay { vtep: vtep_address(p.pod_cidr), mac: vtep_mac(&p.name), remote: p.address }
            };
            Route { cidr: p.pod_cidr, via }
        })
        .collect();
    out.sort_by_key(|r| r.cidr);
    out
}

/// A node's VTEP address: the network address of its pod CIDR.
pub fn vtep_address(pod_cidr: Cidr4) -> Ipv4Addr {
    pod_cidr.network
}

/// A node's VTEP MAC: locally administered, unicast, from an FNV-1a hash of its name.
pub fn vtep_mac(node: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x0e, b[1], b[2], b[3], b[4], b[5]]
}

/// The MTU pods get: the underlay's less the 50 bytes of VXLAN encapsulation whenever the
/// overlay may carry their packets.
pub fn pod_mtu(underlay: u32, backend: Backend) -> u32 {
    if backend == Backend::HostGw { underlay } else { underlay.saturating_sub(50) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, addr: [u8; 4], n: u8) -> Peer {
        Peer {
            name: name.into(),
            address: Ipv4Addr::from(addr),
            pod_cidr: format!("10.244.{n}.0/24").parse().unwrap(),
        }
    }

    #[test]
    fn shared_links_go_direct_and_others_over_the_overlay() {
        let peers =
            [peer("a", [10, 250, 0, 10], 0), peer("b", [10, 250, 0, 11], 1), peer("c", [192, 168, 9, 5], 2)];
        let own: Cidr4 = "10.244.0.0/24".parse().unwrap();
        let local = ["10.250.0.0/24".parse().unwrap()];
        let routes = plan("a", own, &peers, &local, Backend::Auto);
        assert_eq!(routes.len(), 2, "not to itself");
        assert_eq!(routes[0].via, Via::Gateway(Ipv4Addr::new(10, 250, 0, 11)));
        assert_eq!(
            routes[1].via,
            Via::Overlay {
                vtep: Ipv4Addr::new(10, 244, 2, 0),
                mac: vtep_mac("c"),
                remote: Ipv4Addr::new(192, 168, 9, 5)
            }
        );
        let all_vxlan = plan("a", own, &peers, &local, Backend::Vxlan);
        assert!(all_vxlan.iter().all(|r| matches!(r.via, Via::Overlay { .. })));
        let all_direct = plan("a", own, &peers, &local, Backend::HostGw);
        assert!(all_direct.iter().all(|r| matches!(r.via, Via::Gateway(_))));
    }

    #[test]
    fn vtep_macs_are_stable_local_and_unicast() {
        assert_eq!(vtep_mac("node-1"), vtep_mac("node-1"));
        assert_ne!(vtep_mac("node-1"), vtep_mac("node-2"));
        assert_eq!(vtep_mac("x")[0] & 0b11, 0b10, "locally administered, unicast");
        assert_eq!(pod_mtu(1500, Backend::Auto), 1450);
        assert_eq!(pod_mtu(1500, Backend::HostGw), 1500);
    }
}
