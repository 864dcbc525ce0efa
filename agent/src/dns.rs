//! The node's DNS server (hickory-server) on the pod bridge's address, port 53, UDP and TCP:
//!
//! - `SVC.NS.svc.DOMAIN` A → the ClusterIP; for a headless Service, the ready endpoints;
//! - `HOST.SVC.NS.svc.DOMAIN` A → the ready endpoint of a headless Service with that
//!   `hostname` (a pod with `hostname` HOST and `subdomain` SVC: a StatefulSet's pods);
//! - `_PORT._PROTO.SVC.NS.svc.DOMAIN` SRV → the named port on the Service (on each endpoint
//!   for a headless one, as `HOST.SVC.NS.svc.DOMAIN` or `A-B-C-D.SVC.NS.svc.DOMAIN`, which
//!   answer A too);
//! - `A-B-C-D.NS.pod.DOMAIN` A → A.B.C.D;
//! - any other name under DOMAIN: NXDOMAIN; everything else is forwarded to the node's own
//!   resolvers (`/etc/resolv.conf`) and their answer relayed.
//!
//! [`resolve`] is the pure part; [`resolv_conf`] writes a pod's `/etc/resolv.conf` by its
//! `dnsPolicy`.

use crate::catalog::{Catalog, Objects};
use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Seconds answers may be cached (CoreDNS' default for the cluster zone).
const TTL: u32 = 5;

/// What a query gets from the cluster's data.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Records (possibly none: the name exists without that type).
    Records(Vec<Record>),
    NxDomain,
    /// Not ours: ask the upstream resolvers.
    Forward,
}

fn a(name: &Name, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name.clone(), TTL, RData::A(A(ip)))
}

/// The ready endpoints of a Service: address and hostname (when the pod has one there).
fn ready(o: &Objects, key: &str) -> Vec<(Ipv4Addr, Option<String>)> {
    let mut eps: Vec<(Ipv4Addr, Option<String>)> = o
        .endpoints
        .get(key)
        .and_then(|e| e["subsets"].as_array())
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| Some((a["ip"].as_str()?.parse().ok()?, a["hostname"].as_str().map(str::to_string))))
        .collect();
    eps.sort();
    eps.dedup_by_key(|(ip, _)| *ip);
    eps
}

fn ready_ips(o: &Objects, key: &str) -> Vec<Ipv4Addr> {
    ready(o, key).into_iter().map(|(ip, _)| ip).collect()
}

/// Answers `name` (lower case, with or without the final dot) of type `qtype` from the
/// cluster's Services and Endpoints.
pub fn resolve(o: &Objects, domain: &str, name: &str, qtype: RecordType) -> Answer {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(rest) = n.strip_suffix(&format!(".{domain}")) else {
        return if n == domain { Answer::Records(Vec::new()) } else { Answer::Forward };
    };
    let Ok(fqdn) = Name::from_ascii(format!("{n}.")) else { return Answer::NxDomain };
    let labels: Vec<&str> = rest.split('.').collect();
    match labels.as_slice() {
        // A-B-C-D.NS.pod
        [ip, _ns, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
            Ok(addr) if qtype == RecordType::A || qtype == RecordType::ANY => {
                Answer::Records(vec![a(&fqdn, addr)])
            }
            Ok(_) => Answer::Records(Vec::new()),
            Err(_) => Answer::NxDomain,
        },
        // SVC.NS.svc, or HOST.SVC.NS.svc / A-B-C-D.SVC.NS.svc (an endpoint of a headless Service)
        [svc, ns, "svc"] | [_, svc, ns, "svc"] => {
            let key = format!("{ns}/{svc}");
            let Some(s) = o.services.get(&key) else { return Answer::NxDomain };
            let headless = s["spec"]["clusterIP"].as_str().is_none_or(|c| c == "None" || c.is_empty());
            let eps = ready_ips(o, &key);
            if labels.len() == 4 {
                let by_name = ready(o, &key).into_iter().find(|(_, h)| h.as_deref() == Some(labels[0]));
                let ip = match by_name {
                    Some((ip, _)) => ip,
                    None => match labels[0].replace('-', ".").parse::<Ipv4Addr>() {
                        Ok(ip) if eps.contains(&ip) => ip,
                        _ => return Answer::NxDomain,
                    },
                };
                if !headless {
                    return Answer::NxDomain;
                }
                return Answer::Records(if qtype == RecordType::A { vec![a(&fqdn, ip)] } else { Vec::new() });
            }
            if qtype != RecordType::A && qtype != RecordType::ANY {
                return Answer::Records(Vec::new());
            }
            if headless {
                Answer::Records(eps.iter().map(|ip| a(&fqdn, *ip)).collect())
            } else {
                match s["spec"]["clusterIP"].as_str().and_then(|c| c.parse().ok()) {
                    Some(ip) => Answer::Records(vec![a(&fqdn, ip)]),
                    None => Answer::Records(Vec::new()),
                }
            }
        }
        // _PORT._PROTO.SVC.NS.svc
        [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
            let key = format!("{ns}/{svc}");
            let Some(s) = o.services.get(&key) else { return Answer::NxDomain };
            let (pname, pproto) = (&port[1..], proto[1..].to_ascii_uppercase());
            let Some(p) = s["spec"]["ports"].as_array().into_iter().flatten().find(|p| {
                p["name"].as_str() == Some(pname) && p["protocol"].as_str().unwrap_or("TCP") == pproto
            }) else {
                return Answer::NxDomain;
            };
            if qtype != RecordType::SRV && qtype != RecordType::ANY {
                return Answer::Records(Vec::new());
            }
            let port = u16::try_from(p["port"].as_u64().unwrap_or(0)).unwrap_or(0);
            let headless = s["spec"]["clusterIP"].as_str().is_none_or(|c| c == "None" || c.is_empty());
            let svc_name = format!("{svc}.{ns}.svc.{domain}.");
            let targets: Vec<String> = if headless {
                ready(o, &key)
                    .into_iter()
                    .map(|(ip, h)| {
                        format!("{}.{svc_name}", h.unwrap_or_else(|| ip.to_string().replace('.', "-")))
                    })
                    .collect()
            } else {
                vec![svc_name]
            };
            Answer::Records(
                targets
                    .into_iter()
                    .filter_map(|t| Name::from_ascii(&t).ok())
                    .map(|t| Record::from_rdata(fqdn.clone(), TTL, RData::SRV(SRV::new(0, 100, port, t))))
                    .collect(),
            )
        }
        _ => Answer::NxDomain,
    }
}

/// A pod's `/etc/resolv.conf` by its `dnsPolicy` (`ClusterFirst` by default; `Default` and
/// host-network pods under `ClusterFirst` take the node's; `None` only `dnsConfig`), then
/// `dnsConfig` added as Kubernetes does.
pub fn resolv_conf(
    policy: Option<&str>,
    host_network: bool,
    dns_config: Option<&tug_api::kinds::pod::PodDnsConfig>,
    namespace: &str,
    domain: &str,
    server: Ipv4Addr,
    host: &str,
) -> String {
    let host_lines = |prefix: &str| -> Vec<String> {
        host.lines().filter_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string())).collect()
    };
    let host_search: Vec<String> =
        host_lines("search ").iter().flat_map(|s| s.split_whitespace().map(str::to_string)).collect();
    let cluster = match policy.unwrap_or("ClusterFirst") {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let (mut servers, mut search, mut options): (Vec<String>, Vec<String>, Vec<String>) = if cluster {
        let mut s = vec![format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()];
        s.extend(host_search);
        (vec![server.to_string()], s, vec!["ndots:5".into()])
    } else if policy == Some("None") {
        (Vec::new(), Vec::new(), Vec::new())
    } else {
        (
            host_lines("nameserver "),
            host_search,
            host_lines("options ").iter().flat_map(|s| s.split_whitespace().map(str::to_string)).collect(),
        )
    };
    if let Some(c) = dns_config {
        servers.extend(c.nameservers.iter().cloned());
        search.extend(c.searches.iter().cloned());
        for o in &c.options {
            let opt = match &o.value {
                Some(v) => format!("{}:{v}", o.name),
                None => o.name.clone(),
            };
            let key = o.name.clone();
            options.retain(|x| x.split(':').next() != Some(key.as_str()));
            options.push(opt);
        }
    }
    let mut out = String::new();
    if !search.is_empty() {
        out += &format!("search {}\n", search.join(" "));
    }
    for s in servers.iter().take(3) {
        out += &format!("nameserver {s}\n");
    }
    if !options.is_empty() {
        out += &format!("options {}\n", options.join(" "));
    }
    out
}

/// The hickory request handler.
struct Handler {
    catalog: Arc<Catalog>,
    domain: String,
    upstreams: Vec<SocketAddr>,
}

impl Handler {
    /// Sends the query upstream and returns the answer.
    async fn forward(&self, name: &Name, qtype: RecordType) -> Option<Message> {
        let mut m = Message::new();
        m.set_id(rand_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(name.clone(), qtype));
        let bytes = m.to_vec().ok()?;
        for up in &self.upstreams {
            let Ok(sock) = tokio::net::UdpSocket::bind("0.0.0.0:0").await else { continue };
            if sock.send_to(&bytes, up).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
                if let Ok(reply) = Message::from_vec(&buf[..n]) {
                    if reply.id() == m.id() {
                        return Some(reply);
                    }
                }
            }
        }
        None
    }
}

fn rand_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u16::try_from((t ^ (t >> 16)) & 0xffff).unwrap_or(0)
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        let Some(q) = request.queries().first() else {
            header.set_response_code(ResponseCode::FormErr);
            return send(&mut response, builder.build_no_records(header)).await;
        };
        let name = Name::from(q.name().clone());
        let qtype = q.query_type();
        let answer = resolve(&self.catalog.read(), &self.domain, &name.to_ascii(), qtype);
        match answer {
            Answer::Records(records) => {
                header.set_authoritative(true);
                let msg = builder.build(
                    header,
                    records.iter(),
                    std::iter::empty(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
                send(&mut response, msg).await
            }
            Answer::NxDomain => {
                header.set_authoritative(true);
                header.set_response_code(ResponseCode::NXDomain);
                send(&mut response, builder.build_no_records(header)).await
            }
            Answer::Forward => match self.forward(&name, qtype).await {
                Some(reply) => {
                    header.set_response_code(reply.response_code());
                    let msg = builder.build(
                        header,
                        reply.answers().iter(),
                        reply.name_servers().iter(),
                        std::iter::empty(),
                        reply.additionals().iter(),
                    );
                    send(&mut response, msg).await
                }
                None => {
                    header.set_response_code(ResponseCode::ServFail);
                    send(&mut response, builder.build_no_records(header)).await
                }
            },
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::authority::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(_) => {
            let mut h = Header::new();
            h.set_response_code(ResponseCode::ServFail);
            h.into()
        }
    }
}

/// The node's resolvers, from a resolv.conf text (port 53).
pub fn upstreams(resolv: &str) -> Vec<SocketAddr> {
    resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| !a.is_loopback())
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

/// Serves DNS on `addr`:53 inside the node's namespace until the process ends.
pub async fn serve(
    catalog: Arc<Catalog>,
    domain: String,
    addr: Ipv4Addr,
    netns: Option<&Path>,
) -> Result<(), String> {
    let bind = SocketAddr::from((addr, 53));
    let (udp, tcp) = crate::network::netns::run_in(netns, move || {
        let udp = std::net::UdpSocket::bind(bind).map_err(|e| format!("dns: udp {bind}: {e}"))?;
        let tcp = std::net::TcpListener::bind(bind).map_err(|e| format!("dns: tcp {bind}: {e}"))?;
        udp.set_nonblocking(true).map_err(|e| e.to_string())?;
        tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok::<_, String>((udp, tcp))
    })??;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    tracing::info!("tug-agent: DNS for {domain} on {bind}");
    let handler = Handler { catalog, domain, upstreams: upstreams(&resolv) };
    let mut server = hickory_server::ServerFuture::new(handler);
    server.register_socket(tokio::net::UdpSocket::from_std(udp).map_err(|e| e.to_string())?);
    server.register_listener(
        tokio::net::TcpListener::from_std(tcp).map_err(|e| e.to_string())?,
        Duration::from_secs(5),
    );
    server.block_until_done().await.map_err(|e| format!("dns: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects() -> Objects {
        let mut o = Objects::default();
        o.services.insert(
            "default/web".into(),
            json!({"spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
        );
        o.services.insert(
            "default/db".into(),
            json!({"spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}),
        );
        o.endpoints.insert(
            "default/db".into(),
            json!({"subsets": [{"addresses": [{"ip": "10.244.1.7", "hostname": "db-1"}, {"ip": "10.244.0.3"}], "notReadyAddresses": [{"ip": "10.244.0.9", "hostname": "db-2"}]}]}),
        );
        o
    }

    fn ips(a: Answer) -> Vec<String> {
        match a {
            Answer::Records(r) => r.iter().map(|r| r.data().to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cluster_names() {
        let o = objects();
        let d = "cluster.local";
        assert_eq!(ips(resolve(&o, d, "web.default.svc.cluster.local.", RecordType::A)), vec!["10.96.0.10"]);
        assert_eq!(
            ips(resolve(&o, d, "db.default.svc.cluster.local", RecordType::A)),
            vec!["10.244.0.3", "10.244.1.7"]
        );
        assert_eq!(
            ips(resolve(&o, d, "10-244-1-7.db.default.svc.cluster.local", RecordType::A)),
            vec!["10.244.1.7"]
        );
        assert_eq!(
            resolve(&o, d, "10-244-0-9.db.default.svc.cluster.local", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            ips(resolve(&o, d, "db-1.db.default.svc.cluster.local", RecordType::A)),
            vec!["10.244.1.7"]
        );
        assert_eq!(
            resolve(&o, d, "db-2.db.default.svc.cluster.local", RecordType::A),
            Answer::NxDomain,
            "not ready"
        );
        assert_eq!(resolve(&o, d, "db-1.web.default.svc.cluster.local", RecordType::A), Answer::NxDomain);
        assert_eq!(ips(resolve(&o, d, "10-1-2-3.team.pod.cluster.local", RecordType::A)), vec!["10.1.2.3"]);
        assert_eq!(
            ips(resolve(&o, d, "_http._tcp.web.default.svc.cluster.local", RecordType::SRV)),
            vec!["0 100 80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            ips(resolve(&o, d, "_pg._tcp.db.default.svc.cluster.local", RecordType::SRV)),
            vec![
                "0 100 5432 10-244-0-3.db.default.svc.cluster.local.",
                "0 100 5432 db-1.db.default.svc.cluster.local."
            ]
        );
        assert_eq!(
            ips(resolve(&o, d, "web.default.svc.cluster.local", RecordType::AAAA)),
            Vec::<String>::new()
        );
        assert_eq!(resolve(&o, d, "nope.default.svc.cluster.local", RecordType::A), Answer::NxDomain);
        assert_eq!(resolve(&o, d, "web.other.svc.cluster.local", RecordType::A), Answer::NxDomain);
        assert_eq!(resolve(&o, d, "example.org.", RecordType::A), Answer::Forward);
    }

    #[test]
    fn resolv_conf_by_policy() {
        let host = "search corp.example\nnameserver 192.0.2.53\noptions edns0\n";
        let ip = Ipv4Addr::new(10, 244, 0, 1);
        assert_eq!(
            resolv_conf(None, false, None, "team", "cluster.local", ip, host),
            "search team.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.244.0.1\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(Some("Default"), false, None, "team", "cluster.local", ip, host),
            "search corp.example\nnameserver 192.0.2.53\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf(None, true, None, "team", "cluster.local", ip, host),
            "search corp.example\nnameserver 192.0.2.53\noptions edns0\n"
        );
        let cfg = tug_api::kinds::pod::PodDnsConfig {
            nameservers: vec!["192.0.2.1".into()],
            searches: vec!["x.example".into()],
            options: vec![tug_api::kinds::pod::PodDnsConfigOption {
                name: "ndots".into(),
                value: Some("2".into()),
            }],
        };
        assert_eq!(
            resolv_conf(Some("None"), false, Some(&cfg), "team", "cluster.local", ip, host),
            "search x.example\nnameserver 192.0.2.1\noptions ndots:2\n"
        );
        assert_eq!(upstreams(host), vec!["192.0.2.53:53".parse::<SocketAddr>().unwrap()]);
    }
}
