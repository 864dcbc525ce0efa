//! `tug.io/v1` AddressPool: addresses Tug's built-in load balancer gives LoadBalancer
//! Services (beside the scheduler's `--load-balancer-pool`), as MetalLB's IPAddressPool.

use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressPool {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AddressPoolSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressPoolSpec {
    /// CIDRs (`192.0.2.240/28`) or ranges (`192.0.2.10-192.0.2.20`).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Whether Services that name no address are given one from this pool (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_assign: Option<bool>,
}

/// One entry of a pool: its first and last address. A CIDR wider than /31 leaves out its
/// network and broadcast addresses.
pub fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("{b:?} is not an IPv4 address"))?;
        if u32::from(a) > u32::from(b) {
            return Err(format!("the range {s:?} ends before it starts"));
        }
        return Ok((a, b));
    }
    let c: crate::cidr::Cidr4 = s.parse().map_err(|e| format!("{s:?} is neither a CIDR nor a range: {e}"))?;
    let (first, last) = (u32::from(c.network), u32::from(c.broadcast()));
    if c.prefix >= 31 {
        Ok((first.into(), last.into()))
    } else {
        Ok((first.saturating_add(1).into(), last.saturating_sub(1).into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_cidrs() {
        assert_eq!(
            parse_range("10.0.0.240/29"),
            Ok(("10.0.0.241".parse().unwrap(), "10.0.0.246".parse().unwrap()))
        );
        assert_eq!(
            parse_range("10.0.0.7/32"),
            Ok(("10.0.0.7".parse().unwrap(), "10.0.0.7".parse().unwrap()))
        );
        assert_eq!(
            parse_range("10.0.0.1 - 10.0.0.3"),
            Ok(("10.0.0.1".parse().unwrap(), "10.0.0.3".parse().unwrap()))
        );
        assert!(parse_range("10.0.0.3-10.0.0.1").is_err());
        assert!(parse_range("nope").is_err());
    }
}
