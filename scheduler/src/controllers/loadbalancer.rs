//! The built-in load balancer's addresses, as MetalLB's controller and k3s' ServiceLB give
//! them: every LoadBalancer Service without a `loadBalancerClass` gets one address in
//! `status.loadBalancer.ingress` — the one it asks for (`loadBalancerIP`, which must be in a
//! pool), else the lowest free one of the pools that assign automatically (the scheduler's
//! `--load-balancer-pool` first, then the `tug.io/v1` AddressPools by name). With no pool at
//! all, the Ready nodes' own addresses, as k3s does. An address stays with its Service while
//! it is still in a pool; none free is an `AllocationFailed` event, retried on every change.
//! Which node answers for an address is the agents' business (`tug_agent::announce`).
//!
//! [`plan`] is pure; one worker allocates, so two Services never take the same address.

use super::runtime::{Controller, Next};
use super::{decode, event};
use crate::store::{Event, Store, StoreError};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use tug_api::kinds::core::Service;
use tug_api::kinds::lb::{AddressPool, parse_range};

pub const PREFIX: &str = "/services/";
const POOLS: &str = "tug.io/addresspools/";
pub(crate) const NODES: &str = "/nodes/";

/// A pool: its name, address ranges, and whether it assigns automatically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub auto: bool,
}

impl Pool {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        self.ranges.iter().any(|(a, b)| (u32::from(*a)..=u32::from(*b)).contains(&u32::from(ip)))
    }

    fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges.iter().flat_map(|(a, b)| (u32::from(*a)..=u32::from(*b)).map(Ipv4Addr::from))
    }
}

/// Whether the built-in load balancer serves this Service.
pub fn ours(svc: &Service) -> bool {
    svc.spec.type_.as_deref() == Some("LoadBalancer") && svc.spec.load_balancer_class.is_none()
}

/// The addresses in a Service's `status.loadBalancer.ingress`.
pub fn ingress(status: Option<&Value>) -> Vec<Ipv4Addr> {
    status
        .and_then(|s| s["loadBalancer"]["ingress"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str()?.parse().ok())
        .collect()
}

/// The ingress addresses `svc` should have: `Ok` (empty for a Service that is not ours), or
/// why it gets none. `taken`: the pool addresses other Services hold; `nodes`: the Ready
/// nodes' addresses, used when there is no pool.
pub fn plan(
    svc: &Service,
    pools: &[Pool],
    taken: &BTreeSet<Ipv4Addr>,
    nodes: &[Ipv4Addr],
) -> Result<Vec<Ipv4Addr>, String> {
    if !ours(svc) {
        return Ok(Vec::new());
    }
    if pools.is_empty() {
        let mut n = nodes.to_vec();
        n.sort_unstable();
        n.dedup();
        return if n.is_empty() { Err("no Ready node to take the Service's traffic".into()) } else { Ok(n) };
    }
    let in_pool = |ip: Ipv4Addr| pools.iter().any(|p| p.contains(ip));
    if let Some(asked) = svc.spec.load_balancer_ip.as_deref().filter(|a| !a.is_empty()) {
        let ip: Ipv4Addr = asked.parse().map_err(|_| format!("{asked:?} is not an IPv4 address"))?;
        if !in_pool(ip) {
            return Err(format!("the address {ip} is not in any address pool"));
        }
        if taken.contains(&ip) {
            return Err(format!("the address {ip} is already in use by another Service"));
        }
        return Ok(vec![ip]);
    }
    let had = ingress(svc.status.as_ref());
    if let Some(ip) = had.first().copied().filter(|ip| in_pool(*ip) && !taken.contains(ip)) {
        return Ok(vec![ip]);
    }
    pools
        .iter()
        .filter(|p| p.auto)
        .flat_map(Pool::addresses)
        .find(|ip| !taken.contains(ip))
        .map(|ip| vec![ip])
        .ok_or_else(|| "no available addresses in the address pools".into())
}

/// The controller, with the scheduler's `--load-balancer-pool`.
#[derive(Default)]
pub struct LoadBalancers {
    pub flag_pool: Option<Pool>,
    /// Why each waiting Service has no address, as last said in an event: said once.
    waiting: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl LoadBalancers {
    pub fn new(flag_pool: Option<Pool>) -> LoadBalancers {
        LoadBalancers { flag_pool, waiting: Default::default() }
    }

    fn pools(&self, store: &dyn Store) -> Result<Vec<Pool>, StoreError> {
        let mut out: Vec<Pool> = self.flag_pool.iter().cloned().collect();
        let (items, _) = store.list(POOLS)?;
        let mut pools: Vec<AddressPool> = items.iter().filter_map(|s| decode(s).ok()).collect();
        pools.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for p in pools {
            out.push(Pool {
                name: p.metadata.name.clone(),
                ranges: p.spec.addresses.iter().filter_map(|a| parse_range(a).ok()).collect(),
                auto: p.spec.auto_assign != Some(false),
            });
        }
        Ok(out)
    }
}

/// The Ready nodes' InternalIP addresses.
pub(crate) fn node_addresses(store: &dyn Store) -> Result<Vec<Ipv4Addr>, StoreError> {
    let (items, _) = store.list(NODES)?;
    Ok(items
        .iter()
        .filter(|n| {
            n.object["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|n| {
            n.object["status"]["addresses"].as_array()?.iter().find(|a| a["type"] == "InternalIP")?["address"]
                .as_str()?
                .parse()
                .ok()
        })
        .collect())
}

impl Controller for LoadBalancers {
    fn name(&self) -> &'static str {
        "loadbalancer"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![POOLS, NODES]
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        // A pool or a node changed: every LoadBalancer Service may get (or lose) its address.
        // A Service deleted frees its address for those still waiting.
        let _ = e;
        let Ok((svcs, _)) = store.list(PREFIX) else { return Vec::new() };
        svcs.into_iter().filter(|s| s.object["spec"]["type"] == "LoadBalancer").map(|s| s.key).collect()
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else {
            // Gone: its address is free for a Service still waiting for one.
            let (svcs, _) = store.list(PREFIX)?;
            for s in svcs.iter().filter(|s| {
                s.object["spec"]["type"] == "LoadBalancer" && ingress(Some(&s.object["status"])).is_empty()
            }) {
                self.reconcile(store, &s.key)?;
            }
            return Ok(Next::Done);
        };
        let svc: Service = decode(&stored)?;
        if svc.spec.load_balancer_class.is_some() && svc.spec.type_.as_deref() == Some("LoadBalancer") {
            return Ok(Next::Done);
        }
        let (all, _) = store.list(PREFIX)?;
        let taken: BTreeSet<Ipv4Addr> = all
            .iter()
            .filter(|s| s.key != key && s.object["spec"]["type"] == "LoadBalancer")
            .filter(|s| s.object["spec"]["loadBalancerClass"].is_null())
            .flat_map(|s| ingress(Some(&s.object["status"])))
            .collect();
        let pools = self.pools(store)?;
        let nodes = if pools.is_empty() { node_addresses(store)? } else { Vec::new() };
        let had = ingress(svc.status.as_ref());
        let want = match plan(&svc, &pools, &taken, &nodes) {
            Ok(w) => {
                self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
                w
            }
            Err(why) if had.is_empty() => {
                let said = self
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.to_string(), why.clone());
                if said.as_deref() != Some(why.as_str()) {
                    event(
                        store,
                        ("Service", "v1", &svc.metadata),
                        "Warning",
                        "AllocationFailed",
                        &format!("Failed to allocate IP for \"{}/{}\": {why}", ns(&svc), svc.metadata.name),
                        "tug-loadbalancer",
                    )?;
                }
                return Ok(Next::Done);
            }
            // Its address left the pools (or its node went): taken back.
            Err(_) => Vec::new(),
        };
        if want == had {
            return Ok(Next::Done);
        }
        let mut v = stored.object.clone();
        if want.is_empty() {
            if let Some(st) = v["status"].as_object_mut() {
                st.remove("loadBalancer");
            }
        } else {
            let ingress: Vec<Value> =
                want.iter().map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect();
            v["status"]["loadBalancer"] = json!({"ingress": ingress});
            let ips: Vec<String> = want.iter().map(ToString::to_string).collect();
            event(
                store,
                ("Service", "v1", &svc.metadata),
                "Normal",
                "IPAllocated",
                &format!("Assigned IP [\"{}\"]", ips.join("\", \"")),
                "tug-loadbalancer",
            )?;
        }
        store.update(key, v, Some(stored.revision))?;
        Ok(Next::Done)
    }
}

fn ns(svc: &Service) -> &str {
    svc.metadata.namespace.as_deref().unwrap_or("default")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(lb_ip: Option<&str>, had: Option<&str>) -> Service {
        let mut s = Service::default();
        s.metadata.name = "web".into();
        s.spec.type_ = Some("LoadBalancer".into());
        s.spec.load_balancer_ip = lb_ip.map(Into::into);
        s.status = had.map(|ip| json!({"loadBalancer": {"ingress": [{"ip": ip}]}}));
        s
    }

    fn pool(name: &str, range: &str, auto: bool) -> Pool {
        Pool { name: name.into(), ranges: vec![parse_range(range).unwrap()], auto }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_lowest_free_address_of_an_automatic_pool() {
        let pools = [pool("manual", "10.0.0.1-10.0.0.5", false), pool("auto", "10.0.1.0/30", true)];
        let taken: BTreeSet<Ipv4Addr> = [ip("10.0.1.1")].into();
        assert_eq!(plan(&svc(None, None), &pools, &taken, &[]), Ok(vec![ip("10.0.1.2")]));
        // Kept while it is still in a pool and nobody else's.
        assert_eq!(plan(&svc(None, Some("10.0.0.3")), &pools, &taken, &[]), Ok(vec![ip("10.0.0.3")]));
        assert_eq!(plan(&svc(None, Some("10.9.9.9")), &pools, &taken, &[]), Ok(vec![ip("10.0.1.2")]));
        let full: BTreeSet<Ipv4Addr> = [ip("10.0.1.1"), ip("10.0.1.2")].into();
        assert_eq!(
            plan(&svc(None, None), &pools, &full, &[]),
            Err("no available addresses in the address pools".into())
        );
    }

    #[test]
    fn an_asked_address_must_be_in_a_pool_and_free() {
        let pools = [pool("manual", "10.0.0.1-10.0.0.5", false)];
        let taken: BTreeSet<Ipv4Addr> = [ip("10.0.0.2")].into();
        assert_eq!(plan(&svc(Some("10.0.0.4"), None), &pools, &taken, &[]), Ok(vec![ip("10.0.0.4")]));
        assert_eq!(
            plan(&svc(Some("10.0.0.2"), None), &pools, &taken, &[]),
            Err("the address 10.0.0.2 is already in use by another Service".into())
        );
        assert_eq!(
            plan(&svc(Some("10.1.0.2"), None), &pools, &taken, &[]),
            Err("the address 10.1.0.2 is not in any address pool".into())
        );
    }

    #[test]
    fn without_pools_the_nodes_addresses_and_others_classes_are_left_alone() {
        let nodes = [ip("10.250.0.11"), ip("10.250.0.10")];
        assert_eq!(
            plan(&svc(None, None), &[], &BTreeSet::new(), &nodes),
            Ok(vec![ip("10.250.0.10"), ip("10.250.0.11")])
        );
        let mut other = svc(None, None);
        other.spec.load_balancer_class = Some("example.com/lb".into());
        assert_eq!(plan(&other, &[], &BTreeSet::new(), &nodes), Ok(vec![]));
        let mut cluster_ip = svc(None, None);
        cluster_ip.spec.type_ = Some("ClusterIP".into());
        assert_eq!(plan(&cluster_ip, &[pool("a", "10.0.0.0/30", true)], &BTreeSet::new(), &[]), Ok(vec![]));
    }
}
