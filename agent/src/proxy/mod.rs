//! The service proxy: Services and Endpoints from the control plane → nftables rules in the
//! node's namespace.
//!
//! [`rules`] is the pure part (rules from Services, the batch that changes one ruleset into
//! another); [`services_from`] turns the API objects into what it needs. The executor here
//! lists and watches both kinds, and after each burst of changes applies the difference to
//! what it last applied as one nf_tables transaction over netlink ([`nft`]) — the whole table
//! on start, after a failure and every `resync`, so drift made by hand is undone.

pub mod health;
pub mod iptables;
pub mod nft;
pub mod rules;

use crate::catalog::{Catalog, key_of};
use rules::{NodeInfo, PortInfo, Proto, Ruleset, ServiceInfo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tug_api::kinds::rollouts::{CANARY_SERVICE, CANARY_WEIGHT};

/// Where the nodes are, for `trafficDistribution: PreferClose`: each node's
/// `topology.kubernetes.io/zone`, and this node's name.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub zone_of: BTreeMap<String, String>,
    pub me: String,
}

impl Topology {
    pub fn from_nodes<'a>(nodes: impl Iterator<Item = &'a Value>, me: &str) -> Topology {
        let zone_of = nodes
            .filter_map(|n| {
                let zone = n["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str()?;
                Some((n["metadata"]["name"].as_str()?.to_string(), zone.to_string()))
            })
            .collect();
        Topology { zone_of, me: me.to_string() }
    }

    /// `PreferClose`: the endpoints in this node's zone when there are any, else all.
    fn prefer_close(
        &self,
        eps: Vec<(std::net::Ipv4Addr, u16, Option<String>)>,
    ) -> Vec<(std::net::Ipv4Addr, u16)> {
        let mine = self.zone_of.get(&self.me);
        let close =
            |n: &Option<String>| mine.is_some() && n.as_ref().and_then(|n| self.zone_of.get(n)) == mine;
        let any_close = eps.iter().any(|(_, _, n)| close(n));
        eps.into_iter().filter(|(_, _, n)| !any_close || close(n)).map(|(a, p, _)| (a, p)).collect()
    }
}

/// The proxy's view of the Services: ports with their ready endpoints.
pub fn services_from<'a>(
    services: impl Iterator<Item = &'a Value>,
    endpoints: &BTreeMap<String, Value>,
    topology: &Topology,
) -> Vec<ServiceInfo> {
    let mut out = Vec::new();
    for s in services {
        let key = key_of(s);
        let ns = s["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = s["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let cluster_ip = s["spec"]["clusterIP"].as_str().and_then(|i| i.parse().ok());
        let affinity = (s["spec"]["sessionAffinity"] == "ClientIP").then(|| {
            s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(10800)
        });
        let ep = endpoints.get(&key);
        // A Rollout's stable Service: a share of its connections goes to the canary
        // Service's endpoints (same port names).
        let a = &s["metadata"]["annotations"];
        let canary = a[CANARY_WEIGHT].as_str().and_then(|w| w.parse::<u32>().ok()).and_then(|w| {
            let c = a[CANARY_SERVICE].as_str()?;
            Some((w.min(100), endpoints.get(&format!("{ns}/{c}"))))
        });
        let mut ports = Vec::new();
        for p in s["spec"]["ports"].as_array().into_iter().flatten() {
            let Some(proto) = Proto::parse(p["protocol"].as_str()) else { continue };
            let Some(port) = p["port"].as_u64().and_then(|v| u16::try_from(v).ok()) else { continue };
            let pname = p["name"].as_str().unwrap_or_default().to_string();
            let eps = port_endpoints(ep, &pname, proto);
            let here = |n: &Option<String>| n.as_deref() == Some(topology.me.as_str());
            // externalTrafficPolicy: Local — outside traffic keeps to this node's endpoints.
            let external = (s["spec"]["externalTrafficPolicy"] == "Local")
                .then(|| eps.iter().filter(|(_, _, n)| here(n)).map(|(a, p, _)| (*a, *p)).collect());
            let endpoints = if s["spec"]["internalTrafficPolicy"] == "Local" {
                // Pods reach only the endpoints on their own node.
                eps.into_iter().filter(|(_, _, n)| here(n)).map(|(a, p, _)| (a, p)).collect()
            } else if s["spec"]["trafficDistribution"] == "PreferClose" {
                topology.prefer_close(eps)
            } else {
                eps.into_iter().map(|(a, p, _)| (a, p)).collect()
            };
            ports.push(PortInfo {
                endpoints,
                canary: canary.map(|(w, cep)| {
                    (w, port_endpoints(cep, &pname, proto).into_iter().map(|(a, p, _)| (a, p)).collect())
                }),
                name: pname,
                proto,
                port,
                node_port: p["nodePort"].as_u64().and_then(|v| u16::try_from(v).ok()),
                external,
            });
        }
        out.push(ServiceInfo {
            namespace: ns,
            name,
            cluster_ip,
            ports,
            affinity,
            external_ips: external_ips(s),
            source_ranges: s["spec"]["loadBalancerSourceRanges"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str()?.parse().ok())
                .collect(),
            lb_ips: lb_ips(s),
        });
    }
    out
}

/// A Service's addresses from outside: `externalIPs`, and a LoadBalancer's ingress
/// addresses (sorted, once each).
fn external_ips(s: &Value) -> Vec<std::net::Ipv4Addr> {
    let spec = s["spec"]["externalIPs"].as_array().into_iter().flatten().filter_map(|i| i.as_str());
    let mut out: Vec<std::net::Ipv4Addr> = spec.filter_map(|i| i.parse().ok()).chain(lb_ips(s)).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// A LoadBalancer Service's ingress addresses.
fn lb_ips(s: &Value) -> Vec<std::net::Ipv4Addr> {
    (s["spec"]["type"] == "LoadBalancer")
        .then(|| s["status"]["loadBalancer"]["ingress"].as_array())
        .flatten()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str()?.parse().ok())
        .collect()
}

/// The ready endpoints of the port named `pname` in an Endpoints object, with their nodes.
pub(crate) fn port_endpoints(
    ep: Option<&Value>,
    pname: &str,
    proto: Proto,
) -> Vec<(std::net::Ipv4Addr, u16, Option<String>)> {
    let mut eps = Vec::new();
    for sub in ep.and_then(|e| e["subsets"].as_array()).into_iter().flatten() {
        let target = sub["ports"].as_array().into_iter().flatten().find(|ep| {
            ep["name"].as_str().unwrap_or_default() == pname
                && Proto::parse(ep["protocol"].as_str()) == Some(proto)
        });
        let Some(tp) = target.and_then(|t| t["port"].as_u64()).and_then(|v| u16::try_from(v).ok()) else {
            continue;
        };
        for a in sub["addresses"].as_array().into_iter().flatten() {
            if let Some(ip) = a["ip"].as_str().and_then(|i| i.parse().ok()) {
                eps.push((ip, tp, a["nodeName"].as_str().map(str::to_string)));
            }
        }
    }
    eps
}

/// The weighted TCP ports whose connections the nftables proxy counts (their bases,
/// `namespace/name/tcp/port-name`), as last applied: what the stats loop reads.
pub type Counted = Arc<Mutex<Vec<String>>>;

/// One set's counters, in its counting chain's rule order, and which chain they came from
/// (its first rule's handle: a chain made again counts from zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnCounts {
    pub chain: u64,
    pub accepted: u64,
    pub refused: u64,
    pub reset: u64,
}

/// The counters of each counted port's sets: `(base, canary?, counts)`. A chain that cannot
/// be read (gone since the list was taken) is left out.
pub fn read_counts(conn: &nft::Conn, bases: &[String]) -> Vec<(String, bool, ConnCounts)> {
    let mut out = Vec::with_capacity(bases.len() * 2);
    for base in bases {
        for canary in [true, false] {
            let Ok(c) = conn.counters(rules::TABLE, &rules::conns_chain(base, canary)) else { continue };
            if let [(chain, accepted), (_, refused), (_, reset)] = c[..] {
                out.push((base.clone(), canary, ConnCounts { chain, accepted, refused, reset }));
            }
        }
    }
    out
}

/// How Services are programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nftables,
    Iptables,
}

/// What was last applied, to change only that.
#[derive(Default)]
struct Applied {
    services: Option<Vec<ServiceInfo>>,
    rules: Option<Ruleset>,
    chains: std::collections::BTreeSet<String>,
    /// The nf_tables connection, opened in the node's namespace.
    conn: Option<nft::Conn>,
    counted: Counted,
}

impl Applied {
    /// The next sync rewrites everything (the iptables chains made stay known, to remove).
    fn forget(&mut self) {
        self.services = None;
        self.rules = None;
        self.counted.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Programs `services` (the whole table or chains when `applied` is empty, else the
/// difference); returns how many service ports it programmed.
fn program(
    mode: Mode,
    netns: Option<&std::path::Path>,
    node: &NodeInfo,
    services: &[ServiceInfo],
    applied: &mut Applied,
) -> Result<usize, String> {
    match mode {
        Mode::Nftables => {
            let (desired, cmds) = match (applied.rules.take(), &applied.services) {
                (Some(mut r), Some(before)) => {
                    let cmds = rules::update(&mut r, before, services);
                    (r, cmds)
                }
                _ => {
                    let r = rules::build(services, &Ruleset::default());
                    let cmds = rules::full(&r, node);
                    (r, cmds)
                }
            };
            if applied.conn.is_none() {
                applied.conn = Some(crate::network::netns::run_in(netns, nft::Conn::open)??);
            }
            let conn = applied.conn.as_ref().ok_or("no nf_tables connection")?;
            if let Err(e) = conn.apply(rules::TABLE, &cmds) {
                applied.conn = None;
                return Err(e);
            }
            let n = desired.ports.len();
            *applied.counted.lock().unwrap_or_else(|e| e.into_inner()) = rules::counted(&desired);
            applied.rules = Some(desired);
            Ok(n)
        }
        Mode::Iptables => {
            let (text, chains) = iptables::restore(services, node, &applied.chains);
            crate::network::node::run_tool(netns, "iptables-restore", &["-w", "--noflush"], &text)?;
            if applied.services.is_none() {
                // The jumps from the built-in chains, added once (and again after drift).
                for (table, from, to) in iptables::JUMPS {
                    let check = crate::network::node::run_tool(
                        netns,
                        "iptables",
                        &["-w", "-t", table, "-C", from, "-j", to],
                        "",
                    );
                    if check.is_err() {
                        crate::network::node::run_tool(
                            netns,
                            "iptables",
                            &["-w", "-t", table, "-I", from, "1", "-j", to],
                            "",
                        )?;
                    }
                }
            }
            applied.chains = chains;
            Ok(services.iter().map(|s| s.ports.len()).sum())
        }
    }
}

/// Runs the proxy for ever.
pub async fn run(
    catalog: Arc<Catalog>,
    me: String,
    mode: Mode,
    netns: Option<PathBuf>,
    node: NodeInfo,
    resync: Duration,
    counted: Counted,
) {
    let changed = catalog.subscribe();
    let mut applied = Applied { counted: Arc::clone(&counted), ..Applied::default() };
    let mut full_at = Instant::now() + resync;
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep_until(full_at.into()) => applied.forget(),
        }
        // A burst of changes is one transaction.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let services = {
            let o = catalog.read();
            services_from(o.services.values(), &o.endpoints, &Topology::from_nodes(o.nodes.values(), &me))
        };
        if applied.services.as_ref() == Some(&services) {
            continue;
        }
        let whole = applied.services.is_none();
        let mut a = std::mem::take(&mut applied);
        let (ns, svcs) = (netns.clone(), services.clone());
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || (program(mode, ns.as_deref(), &node, &svcs, &mut a), a))
            .await;
        match r {
            Ok((Ok(n), a)) => {
                let m = crate::metrics::get();
                m.proxy_sync.observe(started.elapsed().as_secs_f64());
                m.proxy_ports.set(i64::try_from(services.len()).unwrap_or(i64::MAX));
                let epoch =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                m.proxy_last_sync.set(epoch.as_secs_f64());
                if whole {
                    full_at = Instant::now() + resync;
                    tracing::info!(
                        "tug-agent: proxy ({mode:?}): programmed {n} service ports in {:?}",
                        started.elapsed()
                    );
                }
                applied = Applied { services: Some(services), ..a };
            }
            Ok((Err(e), a)) => {
                tracing::warn!("tug-agent: proxy: {e}");
                applied = a;
                retry(&mut applied, &changed).await;
            }
            Err(e) => {
                tracing::warn!("tug-agent: proxy: {e}");
                applied.counted = Arc::clone(&counted);
                retry(&mut applied, &changed).await;
            }
        }
    }
}

/// After a failure: the whole table (or every chain) next time, after a pause.
async fn retry(applied: &mut Applied, changed: &tokio::sync::Notify) {
    applied.forget();
    tokio::time::sleep(Duration::from_millis(500)).await;
    changed.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_and_endpoints_become_ports_with_endpoints() {
        let svc = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}});
        let ep = json!({"metadata": {"name": "web", "namespace": "default"}, "subsets": [
            {"addresses": [{"ip": "10.244.1.5"}], "notReadyAddresses": [{"ip": "10.244.1.6"}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]}]});
        let eps: BTreeMap<String, Value> = [("default/web".to_string(), ep)].into();
        let s = services_from([&svc].into_iter(), &eps, &Topology::default());
        assert_eq!(s[0].affinity, Some(10800));
        assert_eq!(s[0].ports[0].endpoints, vec![("10.244.1.5".parse().unwrap(), 8080)]);
        assert_eq!(s[0].ports[0].node_port, Some(30080));
        assert_eq!((s[0].ports[1].proto, s[0].ports[1].endpoints[0].1), (Proto::Udp, 5353));
        let headless =
            json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}});
        assert_eq!(services_from([&headless].into_iter(), &eps, &Topology::default())[0].cluster_ip, None);
    }

    /// `trafficDistribution: PreferClose`: this node's zone's endpoints when it has any.
    #[test]
    fn prefer_close_keeps_to_the_zone_when_it_can() {
        let svc = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "trafficDistribution": "PreferClose",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
        let ep = json!({"metadata": {"name": "web", "namespace": "default"}, "subsets": [
            {"addresses": [{"ip": "10.244.1.5", "nodeName": "a"}, {"ip": "10.244.2.5", "nodeName": "b"}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]});
        let eps: BTreeMap<String, Value> = [("default/web".to_string(), ep)].into();
        let nodes = [
            json!({"metadata": {"name": "a", "labels": {"topology.kubernetes.io/zone": "z1"}}}),
            json!({"metadata": {"name": "b", "labels": {"topology.kubernetes.io/zone": "z2"}}}),
            json!({"metadata": {"name": "c", "labels": {"topology.kubernetes.io/zone": "z3"}}}),
        ];
        let on = |me: &str| -> Vec<String> {
            services_from([&svc].into_iter(), &eps, &Topology::from_nodes(nodes.iter(), me))[0].ports[0]
                .endpoints
                .iter()
                .map(|(a, _)| a.to_string())
                .collect()
        };
        assert_eq!(on("a"), ["10.244.1.5"]);
        assert_eq!(on("b"), ["10.244.2.5"]);
        assert_eq!(on("c"), ["10.244.1.5", "10.244.2.5"], "no endpoint in its zone: all of them");
        let mut plain = svc.clone();
        plain["spec"]["trafficDistribution"] = Value::Null;
        assert_eq!(
            services_from([&plain].into_iter(), &eps, &Topology::from_nodes(nodes.iter(), "a"))[0].ports[0]
                .endpoints
                .len(),
            2
        );
    }
}
