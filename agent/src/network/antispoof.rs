//! Pods send IPv4 only from their own address: a `bridge tug_antispoof` table in the node's
//! namespace drops an IPv4 frame that enters the bridge from a pod's port (`tug…`) unless
//! (port, source address) is the pair the agent wired. Without it a pod could take another
//! pod's address as its source, and pass NetworkPolicy's checks as that pod.
//!
//! ```text
//! table bridge tug_antispoof
//!   prerouting (filter hook prerouting, priority -200):
//!     meta protocol ip  iifname . ip saddr @pods  accept
//!     meta protocol ip  iifname "tug*"  counter drop
//! ```
//!
//! The set follows the address allocations: whole on start ([`full`]), one element when a
//! pod is wired or removed ([`elem`]).

use crate::proxy::nft::{self, Cmd, Expr, SetSpec, r};
use std::net::Ipv4Addr;

pub const TABLE: &str = "tug_antispoof";
const SET: &str = "pods";
const ETH_P_IP: [u8; 2] = [0x08, 0x00];

/// The set key of a port and an address: the interface name padded to 16 bytes, then the
/// address.
pub fn key(port: &str, ip: Ipv4Addr) -> Vec<u8> {
    let mut k = [0u8; 16];
    let n = port.len().min(15);
    k[..n].copy_from_slice(&port.as_bytes()[..n]);
    let mut out = k.to_vec();
    out.extend_from_slice(&ip.octets());
    out
}

/// The table with these (port, address) pairs.
pub fn full(pods: &[(String, Ipv4Addr)]) -> Vec<Cmd> {
    let ipv4 = || {
        vec![
            Expr::Meta { key: nft::META_PROTOCOL, dreg: r(0) },
            Expr::Cmp { sreg: r(0), op: nft::CMP_EQ, data: ETH_P_IP.to_vec() },
        ]
    };
    let mut allowed = ipv4();
    allowed.extend([
        Expr::Meta { key: nft::META_IIFNAME, dreg: r(0) },
        Expr::Payload { base: nft::BASE_NETWORK, offset: 12, len: 4, dreg: r(4) },
        Expr::Lookup { set: SET.into(), sreg: r(0), dreg: None },
        Expr::Verdict(nft::ACCEPT),
    ]);
    let mut rest = ipv4();
    rest.extend([
        Expr::Meta { key: nft::META_IIFNAME, dreg: r(0) },
        // A prefix: the first three bytes of the name (nft's `iifname "tug*"`).
        Expr::Cmp { sreg: r(0), op: nft::CMP_EQ, data: b"tug".to_vec() },
        Expr::Counter,
        Expr::Verdict(nft::DROP),
    ]);
    let mut out = vec![
        Cmd::AddTable,
        Cmd::DeleteTable,
        Cmd::AddTable,
        Cmd::AddBaseChain { name: "prerouting", kind: "filter", hook: 0, prio: -200 },
        Cmd::AddSet(SetSpec {
            name: SET.into(),
            flags: 0,
            key_type: nft::ty::concat(&[nft::ty::IFNAME, nft::ty::IPV4]),
            key_len: 20,
            data: None,
        }),
    ];
    out.extend(pods.iter().map(|(port, ip)| elem(true, port, *ip)));
    out.push(Cmd::AddRule { chain: "prerouting".into(), exprs: allowed });
    out.push(Cmd::AddRule { chain: "prerouting".into(), exprs: rest });
    out
}

/// Adds (or removes) one pod's pair.
pub fn elem(add: bool, port: &str, ip: Ipv4Addr) -> Cmd {
    if add {
        Cmd::AddElem { set: SET.into(), key: key(port, ip), data: None }
    } else {
        Cmd::DeleteElem { set: SET.into(), key: key(port, ip) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_padded_name_then_the_address() {
        let k = key("tug0123abcd", "10.244.1.2".parse().unwrap());
        assert_eq!(k.len(), 20);
        assert_eq!(&k[..11], b"tug0123abcd");
        assert!(k[11..16].iter().all(|b| *b == 0));
        assert_eq!(&k[16..], &[10, 244, 1, 2]);
        let cmds = full(&[("tugaaaaaaaa".into(), "10.244.1.2".parse().unwrap())]);
        assert!(cmds.iter().any(|c| matches!(c, Cmd::AddElem { .. })));
    }
}
