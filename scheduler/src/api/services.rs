//! Service addresses: a ClusterIP from `--service-cluster-ip-range` and NodePorts from
//! `--service-node-port-range`, given when a Service is created and kept (immutable) after.
//!
//! [`allocate`] is pure: the new Service, what the current one had (on an update) and every
//! other Service's addresses → the Service with its addresses, or a Status naming the field.
//! The handlers hold [`ServiceRanges::lock`] from reading the other Services to writing, so
//! two creates never take the same address on this server.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use tug_api::cidr::Cidr4;
use tug_api::status::Status;
use tug_api::validation::FieldError;

pub struct ServiceRanges {
    pub cidr: Cidr4,
    pub node_ports: (u16, u16),
    pub lock: std::sync::Mutex<()>,
}

impl ServiceRanges {
    pub fn new(cidr: Cidr4, node_ports: (u16, u16)) -> ServiceRanges {
        ServiceRanges { cidr, node_ports, lock: std::sync::Mutex::new(()) }
    }
}

impl Default for ServiceRanges {
    fn default() -> ServiceRanges {
        ServiceRanges::new(Cidr4 { network: Ipv4Addr::new(10, 96, 0, 0), prefix: 12 }, (30000, 32767))
    }
}

/// Addresses other Services hold.
#[derive(Debug, Default)]
pub struct Taken {
    pub ips: BTreeSet<Ipv4Addr>,
    /// (protocol, port)
    pub node_ports: BTreeSet<(String, i64)>,
}

impl Taken {
    /// From other Services' JSON, skipping the one being written (`key`: namespace/name).
    pub fn from_services<'a>(services: impl Iterator<Item = &'a serde_json::Value>, skip: &str) -> Taken {
        let mut t = Taken::default();
        for s in services {
            let k = format!(
                "{}/{}",
                s["metadata"]["namespace"].as_str().unwrap_or_default(),
                s["metadata"]["name"].as_str().unwrap_or_default()
            );
            if k == skip {
                continue;
            }
            if let Some(ip) = s["spec"]["clusterIP"].as_str().and_then(|i| i.parse().ok()) {
                t.ips.insert(ip);
            }
            for p in s["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(n) = p["nodePort"].as_i64() {
                    t.node_ports.insert((p["protocol"].as_str().unwrap_or("TCP").to_string(), n));
                }
            }
            if let Some(n) = s["spec"]["healthCheckNodePort"].as_i64() {
                t.node_ports.insert(("TCP".to_string(), n));
            }
        }
        t
    }
}

fn invalid(name: &str, field: &str, message: String) -> Status {
    Status::invalid("Service", name, &[FieldError { field: field.into(), message }])
}

/// Gives `svc` (JSON, defaulted and valid) its ClusterIP and NodePorts.
pub fn allocate(
    svc: &mut serde_json::Value,
    current: Option<&serde_json::Value>,
    taken: &Taken,
    ranges: &ServiceRanges,
) -> Result<(), Status> {
    let name = svc["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let type_ = svc["spec"]["type"].as_str().unwrap_or("ClusterIP").to_string();
    if type_ == "ExternalName" {
        return Ok(());
    }
    // The ClusterIP: kept from the current object, checked if asked for, else the lowest free.
    let had = current.and_then(|c| c["spec"]["clusterIP"].as_str()).map(str::to_string);
    let asked = svc["spec"]["clusterIP"].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let ip = match (had, asked) {
        (Some(h), Some(a)) if h != a => {
            return Err(invalid(
                &name,
                "spec.clusterIP",
                format!("Invalid value: {a:?}: field is immutable"),
            ));
        }
        (Some(h), _) => h,
        (None, Some(a)) if a == "None" => a,
        (None, Some(a)) => {
            let addr: Ipv4Addr = a.parse().map_err(|_| {
                invalid(
                    &name,
                    "spec.clusterIP",
                    format!("Invalid value: {a:?}: must be a valid IP address or \"None\""),
                )
            })?;
            if !ranges.cidr.contains(addr) || addr == ranges.cidr.network || addr == ranges.cidr.broadcast() {
                return Err(invalid(
                    &name,
                    "spec.clusterIP",
                    format!(
                        "Invalid value: {a:?}: provided IP is not in the valid range. The range of valid IPs is {}",
                        ranges.cidr
                    ),
                ));
            }
            if taken.ips.contains(&addr) {
                return Err(invalid(
                    &name,
                    "spec.clusterIP",
                    format!("Invalid value: {a:?}: provided IP is already allocated"),
                ));
            }
            a
        }
        (None, None) => {
            let free = (1..ranges.cidr.size().saturating_sub(1))
                .filter_map(|i| ranges.cidr.nth(i))
                .find(|a| !taken.ips.contains(a))
                .ok_or_else(|| {
                    Status::new(
                        500,
                        "InternalError",
                        format!("no ClusterIP left in {} for Service {name}", ranges.cidr),
                    )
                })?;
            free.to_string()
        }
    };
    svc["spec"]["clusterIP"] = ip.clone().into();
    svc["spec"]["clusterIPs"] = serde_json::json!([ip]);
    // NodePorts, for NodePort and LoadBalancer Services.
    let wants_node_ports = type_ == "NodePort" || type_ == "LoadBalancer";
    // `allocateLoadBalancerNodePorts: false`: only the NodePorts asked for.
    let allocates = !(type_ == "LoadBalancer" && svc["spec"]["allocateLoadBalancerNodePorts"] == false);
    let current_ports: Vec<serde_json::Value> =
        current.and_then(|c| c["spec"]["ports"].as_array().cloned()).unwrap_or_default();
    let mut mine: BTreeSet<(String, i64)> = BTreeSet::new();
    let (lo, hi) = (i64::from(ranges.node_ports.0), i64::from(ranges.node_ports.1));
    let ports = svc["spec"]["ports"].as_array_mut().map(std::mem::take).unwrap_or_default();
    let mut out = Vec::new();
    for (i, mut p) in ports.into_iter().enumerate() {
        let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
        if !wants_node_ports {
            if p.get("nodePort").is_some_and(|v| !v.is_null()) {
                return Err(invalid(
                    &name,
                    &format!("spec.ports[{i}].nodePort"),
                    format!("Forbidden: may not be used when `type` is '{type_}'"),
                ));
            }
            out.push(p);
            continue;
        }
        let keep = current_ports
            .iter()
            .find(|c| c["port"] == p["port"] && c["protocol"].as_str().unwrap_or("TCP") == proto)
            .and_then(|c| c["nodePort"].as_i64());
        let n = match (p["nodePort"].as_i64(), keep) {
            (Some(n), _) => {
                if n < lo || n > hi {
                    return Err(invalid(
                        &name,
                        &format!("spec.ports[{i}].nodePort"),
                        format!(
                            "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                        ),
                    ));
                }
                if taken.node_ports.contains(&(proto.clone(), n)) || mine.contains(&(proto.clone(), n)) {
                    return Err(invalid(
                        &name,
                        &format!("spec.ports[{i}].nodePort"),
                        format!("Invalid value: {n}: provided port is already allocated"),
                    ));
                }
                n
            }
            (None, Some(k)) => k,
            (None, None) if !allocates => {
                out.push(p);
                continue;
            }
            (None, None) => (lo..=hi)
                .find(|n| {
                    !taken.node_ports.contains(&(proto.clone(), *n)) && !mine.contains(&(proto.clone(), *n))
                })
                .ok_or_else(|| {
                    Status::new(
                        500,
                        "InternalError",
                        format!("no NodePort left in {lo}-{hi} for Service {name}"),
                    )
                })?,
        };
        mine.insert((proto, n));
        p["nodePort"] = n.into();
        out.push(p);
    }
    svc["spec"]["ports"] = serde_json::Value::Array(out);
    // healthCheckNodePort: a LoadBalancer with externalTrafficPolicy Local gets one (kept,
    // or the one asked for if free), anything else may not have one.
    let wants_check = type_ == "LoadBalancer" && svc["spec"]["externalTrafficPolicy"] == "Local";
    let asked = svc["spec"]["healthCheckNodePort"].as_i64();
    let field = "spec.healthCheckNodePort";
    if !wants_check {
        if asked.is_some() {
            return Err(invalid(
                &name,
                field,
                "Invalid value: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
                    .into(),
            ));
        }
        if let Some(spec) = svc["spec"].as_object_mut() {
            spec.remove("healthCheckNodePort");
        }
        return Ok(());
    }
    let had = current
        .filter(|c| c["spec"]["type"] == "LoadBalancer" && c["spec"]["externalTrafficPolicy"] == "Local")
        .and_then(|c| c["spec"]["healthCheckNodePort"].as_i64());
    let free = |n: i64| {
        !taken.node_ports.contains(&("TCP".to_string(), n)) && !mine.contains(&("TCP".to_string(), n))
    };
    let n = match (asked, had) {
        (Some(a), Some(h)) if a != h => {
            return Err(invalid(&name, field, format!("Invalid value: {a}: field is immutable")));
        }
        (Some(a), _) if Some(a) != had && (a < lo || a > hi || !free(a)) => {
            return Err(invalid(
                &name,
                field,
                format!(
                    "Invalid value: {a}: provided port is already allocated or not in the range {lo}-{hi}"
                ),
            ));
        }
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => (lo..=hi).find(|n| free(*n)).ok_or_else(|| {
            Status::new(500, "InternalError", format!("no NodePort left in {lo}-{hi} for Service {name}"))
        })?,
    };
    svc["spec"]["healthCheckNodePort"] = n.into();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(type_: &str, ip: Option<&str>, node_port: Option<i64>) -> serde_json::Value {
        let mut s = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"type": type_, "ports": [{"port": 80, "protocol": "TCP"}]}});
        if let Some(i) = ip {
            s["spec"]["clusterIP"] = i.into();
        }
        if let Some(n) = node_port {
            s["spec"]["ports"][0]["nodePort"] = n.into();
        }
        s
    }

    #[test]
    fn lowest_free_ip_and_port_without_collisions() {
        let r = ServiceRanges::default();
        let mut other = svc("NodePort", Some("10.96.0.1"), Some(30000));
        other["metadata"]["name"] = "other".into();
        let taken = Taken::from_services([&other].into_iter(), "default/web");
        let mut s = svc("NodePort", None, None);
        allocate(&mut s, None, &taken, &r).unwrap();
        assert_eq!(s["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30001);
        let mut h = svc("ClusterIP", Some("None"), None);
        allocate(&mut h, None, &taken, &r).unwrap();
        assert_eq!(h["spec"]["clusterIP"], "None");
        // A LoadBalancer gets NodePorts unless it says not to.
        let mut lb = svc("LoadBalancer", None, None);
        allocate(&mut lb, None, &taken, &r).unwrap();
        assert_eq!(lb["spec"]["ports"][0]["nodePort"], 30001);
        let mut bare = svc("LoadBalancer", None, None);
        bare["spec"]["allocateLoadBalancerNodePorts"] = false.into();
        allocate(&mut bare, None, &taken, &r).unwrap();
        assert!(bare["spec"]["ports"][0].get("nodePort").is_none(), "{bare}");
    }

    #[test]
    fn asked_addresses_are_checked_and_kept() {
        let r = ServiceRanges::default();
        let mut other = svc("NodePort", Some("10.96.0.1"), Some(30000));
        other["metadata"]["name"] = "other".into();
        let taken = Taken::from_services([&other].into_iter(), "default/web");
        let err = allocate(&mut svc("ClusterIP", Some("10.96.0.1"), None), None, &taken, &r).unwrap_err();
        assert!(
            err.message
                .contains("spec.clusterIP: Invalid value: \"10.96.0.1\": provided IP is already allocated"),
            "{}",
            err.message
        );
        let err = allocate(&mut svc("ClusterIP", Some("192.168.0.1"), None), None, &taken, &r).unwrap_err();
        assert!(err.message.contains("not in the valid range"), "{}", err.message);
        let err = allocate(&mut svc("NodePort", None, Some(30000)), None, &taken, &r).unwrap_err();
        assert!(
            err.message
                .contains("spec.ports[0].nodePort: Invalid value: 30000: provided port is already allocated"),
            "{}",
            err.message
        );
        let err = allocate(&mut svc("ClusterIP", None, Some(30005)), None, &taken, &r).unwrap_err();
        assert!(err.message.contains("Forbidden"), "{}", err.message);
        // An update keeps what the Service had; changing the ClusterIP is refused.
        let current = json!({"spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31000}]}});
        let mut s = svc("NodePort", None, None);
        allocate(&mut s, Some(&current), &taken, &r).unwrap();
        assert_eq!(
            (s["spec"]["clusterIP"].as_str(), s["spec"]["ports"][0]["nodePort"].as_i64()),
            (Some("10.96.0.9"), Some(31000))
        );
        let err =
            allocate(&mut svc("NodePort", Some("10.96.0.8"), None), Some(&current), &taken, &r).unwrap_err();
        assert!(err.message.contains("field is immutable"), "{}", err.message);
    }
}
