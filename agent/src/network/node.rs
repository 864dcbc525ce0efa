//! The node's side: bridge, forwarding, masquerade, the overlay, routes to peers, and each
//! pod's namespace, veth pair and address. Every step is idempotent: `setup` runs on every
//! agent start, and a pod's setup after a crash finishes what was half done.

use super::cidr::Cidr4;
use super::ipam::Ipam;
use super::netns;
use super::routes::{self, Backend, Peer, Route, Via};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridge, InfoData, InfoKind, InfoVeth,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
    RouteMessageBuilder,
};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Marks the routes Tug installs (RTPROT numbers above 200 are free for daemons), so a sync
/// can remove the ones whose node left without touching anybody else's.
const TUG_PROTO: u8 = 214;
/// The overlay device and its VXLAN id and UDP port (flannel's).
pub const VXLAN_DEVICE: &str = "tug.1";
const VXLAN_ID: u32 = 1;
const VXLAN_PORT: u16 = 8472;

/// How this node's pod network is laid out.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_name: String,
    /// The node's network namespace (`None`: the agent's own, the host's).
    pub node_netns: Option<PathBuf>,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Cidr4,
    pub cluster_cidr: Cidr4,
    pub bridge: String,
    /// Where pod namespaces are pinned (`/run/tug/netns`).
    pub netns_dir: PathBuf,
    /// Where the address allocations are kept (`<run-dir>/ipam.json`: they last as long as
    /// the pinned namespaces).
    pub ipam_file: PathBuf,
    pub backend: Backend,
}

impl NodeConfig {
    /// The defaults: bridge `tug0`, `/run/tug/netns`, cluster CIDR 10.244.0.0/16.
    pub fn new(node_name: &str, node_ip: Ipv4Addr, pod_cidr: Cidr4, run_dir: &Path) -> NodeConfig {
        NodeConfig {
            node_name: node_name.into(),
            node_netns: None,
            node_ip,
            pod_cidr,
            cluster_cidr: Cidr4 { network: Ipv4Addr::new(10, 244, 0, 0), prefix: 16 },
            bridge: "tug0".into(),
            netns_dir: PathBuf::from("/run/tug/netns"),
            ipam_file: run_dir.join("ipam.json"),
            backend: Backend::Auto,
        }
    }
}

/// A pod's network, as the runtime needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// Join this path as the containers' network namespace.
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// The host end of the veth pair, on the bridge.
    pub host_veth: String,
}

/// The node's pod network, set up.
pub struct NodeNetwork {
    pub cfg: NodeConfig,
    handle: Handle,
    ipam: Mutex<Ipam>,
    /// The pods' MTU.
    pub mtu: u32,
    underlay: u32,
    /// The nf_tables connection in the node's namespace, for the anti-spoofing set.
    spoof: Mutex<Option<crate::proxy::nft::Conn>>,
    /// Whether the anti-spoofing table could be made (a kernel without nf_tables for
    /// bridges cannot).
    spoof_enabled: bool,
}

fn nl(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Whether a netlink error is "exists already" (EEXIST).
fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// The runtime the node's own netlink connection runs on: a thread of its own. Every pod's
/// host-side requests go through that one connection; on the agent's runtime its task waited
/// behind a hundred starting pods' work at each turn (send, then hand the answer over), and a
/// pod's five host-side requests took 300-400 ms in a burst of 100 starts, against 30 ms on a
/// thread of its own. (The pods' own connections stay on the agent's runtime: on this thread
/// too, their requests' kernel work was done one at a time, in its sends.)
fn netlink_runtime() -> Result<tokio::runtime::Handle, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("netlink runtime: {e}"))?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("tug-netlink".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .map_err(|e| format!("netlink thread: {e}"))?;
    Ok(handle)
}

/// A netlink connection inside a namespace (the socket stays bound to it), served on `rt`.
async fn connect(ns: Option<&Path>, rt: &tokio::runtime::Handle) -> Result<Handle, String> {
    let on = rt.clone();
    let (conn, handle, _) = crate::blocking(|| {
        netns::run_in(ns, move || {
            let _entered = on.enter();
            rtnetlink::new_connection()
        })
    })?
    .map_err(|e| format!("netlink: {e}"))?;
    rt.spawn(conn);
    Ok(handle)
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, String> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(format!("link {name}: {e}")),
    }
}

async fn index_of(h: &Handle, name: &str) -> Result<u32, String> {
    link_by_name(h, name).await?.map(|l| l.header.index).ok_or_else(|| format!("link {name}: not found"))
}

async fn add_address(h: &Handle, index: u32, ip: Ipv4Addr, prefix: u8, what: &str) -> Result<(), String> {
    match h.address().add(index, IpAddr::V4(ip), prefix).execute().await {
        Err(e) if !exists(&e) => Err(format!("{what}: address {ip}/{prefix}: {e}")),
        _ => Ok(()),
    }
}

/// The interface holding `ip`, and its MTU.
async fn underlay(h: &Handle, ip: Ipv4Addr) -> Result<(u32, u32), String> {
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(nl("listing addresses"))? {
        let holds =
            a.attributes.iter().any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(v)) if *v == ip));
        if holds {
            let index = a.header.index;
            let mut links = h.link().get().match_index(index).execute();
            let mtu = links
                .try_next()
                .await
                .map_err(nl("underlay link"))?
                .and_then(|l| {
                    l.attributes
                        .iter()
                        .find_map(|x| if let LinkAttribute::Mtu(m) = x { Some(*m) } else { None })
                })
                .unwrap_or(1500);
            return Ok((index, mtu));
        }
    }
    Err(format!("no interface of this node has the node address {ip}"))
}

/// Host veth names: `tug` + 8 hex digits of the pod key's hash (15 characters at most).
pub fn veth_name(pod: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in pod.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("tug{h:08x}")
}

/// The file a pod's namespace is pinned at: `namespace_name` (names never hold `_`).
pub fn netns_file(pod: &str) -> String {
    pod.replace('/', "_")
}

impl NodeNetwork {
    /// Makes the node ready for pods: bridge with the gateway address, forwarding on,
    /// masquerade, and the overlay device unless the backend is host-gw.
    pub async fn setup(cfg: NodeConfig) -> Result<NodeNetwork, String> {
        let netlink = netlink_runtime()?;
        let handle = connect(cfg.node_netns.as_deref(), &netlink).await?;
        let (underlay_index, underlay_mtu) = underlay(&handle, cfg.node_ip).await?;
        let mtu = routes::pod_mtu(underlay_mtu, cfg.backend);
        let bridge = match link_by_name(&handle, &cfg.bridge).await? {
            Some(l) => l.header.index,
            None => {
                handle
                    .link()
                    .add(LinkBridge::new(&cfg.bridge).mtu(mtu).build())
                    .execute()
                    .await
                    .map_err(nl(format!("bridge {}", cfg.bridge)))?;
                index_of(&handle, &cfg.bridge).await?
            }
        };
        add_address(&handle, bridge, cfg.pod_cidr.gateway(), cfg.pod_cidr.prefix, &cfg.bridge).await?;
        // Traffic between two pods of this bridge passes the IPv4 netfilter hooks too (this
        // bridge's own br_netfilter switch, not the namespace-wide sysctl), so NetworkPolicy's
        // forward chain and connection tracking see it as they see routed traffic.
        let mut nf = LinkBridge::new(&cfg.bridge)
            .set_info_data(InfoData::Bridge(vec![InfoBridge::NfCallIpTables(true)]))
            .build();
        nf.header.index = bridge;
        // By index only: a name in the message is a rename, which Linux 6.1 refuses for a
        // device that is up (EBUSY) even when the name is the same.
        nf.attributes.retain(|a| !matches!(a, LinkAttribute::IfName(_)));
        if let Err(e) = handle.link().set(nf).execute().await {
            // A kernel without br_netfilter: everything works but policies between two pods
            // of this node.
            tracing::warn!(
                "tug-agent: nf_call_iptables on {}: {e}: NetworkPolicy cannot see traffic between pods of this node",
                cfg.bridge
            );
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(bridge).up().build())
            .execute()
            .await
            .map_err(nl(format!("bridge {} up", cfg.bridge)))?;
        netns::run_in(cfg.node_netns.as_deref(), || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))?
            .map_err(|e| format!("enabling IP forwarding: {e}"))?;
        nft(cfg.node_netns.as_deref(), &masquerade_rules(cfg.pod_cidr, cfg.cluster_cidr))?;
        if cfg.backend != Backend::HostGw {
            let vx = match link_by_name(&handle, VXLAN_DEVICE).await? {
                Some(l) => l.header.index,
                None => {
                    let msg = LinkVxlan::new(VXLAN_DEVICE, VXLAN_ID)
                        .dev(underlay_index)
                        .local(cfg.node_ip)
                        .port(VXLAN_PORT)
                        .learning(false)
                        .mtu(underlay_mtu.saturating_sub(50))
                        .address(routes::vtep_mac(&cfg.node_name).to_vec())
                        .build();
                    handle.link().add(msg).execute().await.map_err(nl(format!("overlay {VXLAN_DEVICE}")))?;
                    index_of(&handle, VXLAN_DEVICE).await?
                }
            };
            add_address(&handle, vx, routes::vtep_address(cfg.pod_cidr), 32, VXLAN_DEVICE).await?;
            handle
                .link()
                .set(LinkUnspec::new_with_index(vx).up().build())
                .execute()
                .await
                .map_err(nl(format!("{VXLAN_DEVICE} up")))?;
        }
        let ipam = Ipam::open(&cfg.ipam_file, cfg.pod_cidr)?;
        let mut net = NodeNetwork {
            cfg,
            handle,
            ipam: Mutex::new(ipam),
            mtu,
            underlay: underlay_mtu,
            spoof: Mutex::new(None),
            spoof_enabled: true,
        };
        // Every pod wired before (an agent restart) keeps its address, and only it.
        let pairs: Vec<(String, Ipv4Addr)> = {
            let ipam = net.ipam.lock().map_err(|_| "ipam lock")?;
            ipam.state
                .addresses
                .iter()
                .filter_map(|(ip, pod)| match ip {
                    IpAddr::V4(a) => Some((veth_name(pod), *a)),
                    IpAddr::V6(_) => None,
                })
                .collect()
        };
        if let Err(e) = net.spoof_apply(&super::antispoof::full(&pairs)) {
            tracing::warn!(
                "tug-agent: {e}: pods on this node can send from addresses not theirs (NetworkPolicy can be fooled)"
            );
            net.spoof_enabled = false;
        }
        Ok(net)
    }

    /// Applies an anti-spoofing batch in the node's namespace (the connection kept, opened
    /// again after a failure).
    fn spoof_apply(&self, cmds: &[crate::proxy::nft::Cmd]) -> Result<(), String> {
        use crate::proxy::nft;
        crate::blocking(|| {
            let mut conn = self.spoof.lock().map_err(|_| "anti-spoofing lock")?;
            if conn.is_none() {
                *conn = Some(netns::run_in(self.cfg.node_netns.as_deref(), nft::Conn::open)??);
            }
            let r = conn.as_ref().ok_or("no nf_tables connection")?.apply_family(
                nft::NFPROTO_BRIDGE,
                super::antispoof::TABLE,
                cmds,
            );
            if r.is_err() {
                *conn = None;
            }
            r.map_err(|e| format!("anti-spoofing table: {e}"))
        })
    }

    /// The underlay's MTU.
    pub fn underlay_mtu(&self) -> u32 {
        self.underlay
    }

    fn netns_path(&self, pod: &str) -> PathBuf {
        self.cfg.netns_dir.join(netns_file(pod))
    }

    /// Gives a pod its namespace, veth pair and address (the same address again for a pod
    /// that has one).
    pub async fn add_pod(&self, pod: &str) -> Result<PodNetwork, String> {
        let ip = crate::blocking(|| self.ipam.lock().map_err(|_| "ipam lock")?.allocate(pod))?;
        let mut result = self.wire_pod(pod, ip).await;
        if result.is_ok()
            && self.spoof_enabled
            && let Err(e) = self.spoof_apply(&[super::antispoof::elem(true, &veth_name(pod), ip)])
        {
            result = Err(e);
        }
        if result.is_err() {
            let _ = self.remove_pod(pod).await;
        }
        result
    }

    async fn wire_pod(&self, pod: &str, ip: Ipv4Addr) -> Result<PodNetwork, String> {
        let path = self.netns_path(pod);
        crate::blocking(|| netns::create_pinned(&path))?;
        let host = veth_name(pod);
        let h = &self.handle;
        // A half-made pair from an earlier attempt (or one whose namespace the kernel is still
        // tearing down) goes first.
        if let Some(l) = link_by_name(h, &host).await? {
            h.link().del(l.header.index).execute().await.map_err(nl(format!("removing stale {host}")))?;
        }
        let inside = connect(Some(&path), &tokio::runtime::Handle::current()).await?;
        if let Some(l) = link_by_name(&inside, "eth0").await? {
            inside.link().del(l.header.index).execute().await.map_err(nl("removing a stale pod eth0"))?;
        }
        // The peer is made inside the pod's namespace, already named eth0: moving a link
        // between namespaces costs an RCU grace period, tens of milliseconds on a busy host.
        let fd = netns::open(&path)?;
        let peer = LinkUnspec::new_with_name("eth0").mtu(self.mtu).setns_by_fd(fd.as_raw_fd()).build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.clone())
            .mtu(self.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link().add(veth).execute().await.map_err(nl(format!("veth {host}")))?;
        drop(fd);
        let host_index = index_of(h, &host).await?;
        let bridge = index_of(h, &self.cfg.bridge).await?;
        // A bridge port needs no IPv6 link-local address (the pod side, see netns): set before
        // it goes up, in a message of its own (the kernel applies it after a change of flags).
        // Refused where the node has no IPv6, which is as good.
        let no_v6 = LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
            In6AddrGenMode::None,
        )])]);
        let _ = h
            .link()
            .set(LinkUnspec::new_with_index(host_index).append_extra_attribute(no_v6).build())
            .execute()
            .await;
        h.link()
            .set(LinkUnspec::new_with_index(host_index).controller(bridge).up().build())
            .execute()
            .await
            .map_err(nl(format!("{host} on {}", self.cfg.bridge)))?;
        // Hairpin: a pod reaches itself through a service address.
        h.link()
            .set_port(LinkBridgePort::new(host_index).hairpin(true).build())
            .execute()
            .await
            .map_err(nl(format!("hairpin on {host}")))?;
        let gateway = self.cfg.pod_cidr.gateway();
        let eth = index_of(&inside, "eth0").await?;
        inside
            .link()
            .set(LinkUnspec::new_with_index(eth).up().build())
            .execute()
            .await
            .map_err(nl("pod eth0"))?;
        add_address(&inside, eth, ip, self.cfg.pod_cidr.prefix, "pod eth0").await?;
        let lo = index_of(&inside, "lo").await?;
        inside
            .link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl("pod lo"))?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        match inside.route().add(default).execute().await {
            Err(e) if !exists(&e) => return Err(format!("pod default route via {gateway}: {e}")),
            _ => {}
        }
        Ok(PodNetwork { netns: path, ip, gateway, host_veth: host })
    }

    /// Removes a pod's namespace — and with it, in the kernel's namespace clean-up, its veth
    /// pair (deleting the pair first would cost an RCU grace period per pod) — and frees its
    /// address. Missing pieces are fine.
    pub async fn remove_pod(&self, pod: &str) -> Result<(), String> {
        let path = self.netns_path(pod);
        if !netns::is_pinned(&path) {
            // No namespace to take the pair down with it: remove the host end directly.
            let host = veth_name(pod);
            if let Some(l) = link_by_name(&self.handle, &host).await? {
                match self.handle.link().del(l.header.index).execute().await {
                    Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => {}
                    other => other.map_err(nl(format!("removing {host}")))?,
                }
            }
        }
        netns::remove_pinned(&path)?;
        let released = self.ipam.lock().map_err(|_| "ipam lock")?.release(pod)?;
        if let Some(IpAddr::V4(ip)) = released.filter(|_| self.spoof_enabled) {
            // Absent when the pod was never wired whole: nothing to undo then.
            let _ = self.spoof_apply(&[super::antispoof::elem(false, &veth_name(pod), ip)]);
        }
        Ok(())
    }

    /// After a restart: removes the network of every pod `live` does not name (addresses,
    /// veths, pinned namespaces); keeps the others untouched. Returns the pods cleaned up.
    pub async fn reclaim(&self, live: &dyn Fn(&str) -> bool) -> Result<Vec<String>, String> {
        let held: Vec<String> =
            self.ipam.lock().map_err(|_| "ipam lock")?.state.addresses.values().cloned().collect();
        let mut gone: Vec<String> = held.into_iter().filter(|p| !live(p)).collect();
        // Pinned namespaces without an address (a crash between the two steps).
        for e in std::fs::read_dir(&self.cfg.netns_dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().replace('_', "/");
            if !live(&name) && !gone.contains(&name) {
                gone.push(name);
            }
        }
        for pod in &gone {
            self.remove_pod(pod).await?;
        }
        Ok(gone)
    }

    /// The address a pod holds, if any.
    pub fn pod_ip(&self, pod: &str) -> Option<IpAddr> {
        self.ipam.lock().ok()?.state.holding(pod)
    }

    /// Makes the routes to the peers' pods what `peers` says: adds or replaces the wanted
    /// ones (and their overlay entries), removes Tug's routes to nodes no longer listed.
    pub async fn sync_routes(&self, peers: &[Peer]) -> Result<Vec<Route>, String> {
        let local = self.local_subnets().await?;
        let wanted = routes::plan(&self.cfg.node_name, self.cfg.pod_cidr, peers, &local, self.cfg.backend);
        let h = &self.handle;
        let vx = if wanted.iter().any(|r| matches!(r.via, Via::Overlay { .. })) {
            Some(index_of(h, VXLAN_DEVICE).await.map_err(|e| format!("{e} (the vxlan backend is off?)"))?)
        } else {
            None
        };
        for r in &wanted {
            let dest = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(r.cidr.network, r.cidr.prefix)
                .protocol(RouteProtocol::Other(TUG_PROTO));
            let msg = match (r.via, vx) {
                (Via::Gateway(gw), _) => dest.gateway(gw).build(),
                (Via::Overlay { vtep, mac, remote }, Some(vx)) => {
                    h.neighbours()
                        .add(vx, IpAddr::V4(vtep))
                        .link_layer_address(&mac)
                        .state(NeighbourState::Permanent)
                        .replace()
                        .execute()
                        .await
                        .map_err(nl(format!("neighbour {vtep}")))?;
                    h.neighbours()
                        .add_bridge(vx, &mac)
                        .destination(IpAddr::V4(remote))
                        .flags(NeighbourFlags::Own)
                        .state(NeighbourState::Permanent)
                        .replace()
                        .execute()
                        .await
                        .map_err(nl(format!("forwarding entry for {remote}")))?;
                    dest.gateway(vtep).output_interface(vx).onlink().build()
                }
                (Via::Overlay { .. }, None) => continue,
            };
            h.route().add(msg).replace().execute().await.map_err(nl(format!("route to {}", r.cidr)))?;
        }
        // Ours, but no longer wanted: the node left.
        let mut stale: Vec<RouteMessage> = Vec::new();
        let mut all = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(m) = all.try_next().await.map_err(nl("listing routes"))? {
            if m.header.protocol != RouteProtocol::Other(TUG_PROTO) {
                continue;
            }
            let dst = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(rtnetlink::packet_route::route::RouteAddress::Inet(d)) => {
                    Some(*d)
                }
                _ => None,
            });
            let keep = dst.is_some_and(|d| {
                wanted
                    .iter()
                    .any(|w| w.cidr.network == d && w.cidr.prefix == m.header.destination_prefix_length)
            });
            if !keep {
                stale.push(m);
            }
        }
        for m in stale {
            h.route().del(m).execute().await.map_err(nl("removing a route to a departed node"))?;
        }
        Ok(wanted)
    }

    /// Routes the Services' range onto the bridge, so that clients on the node itself (with
    /// or without a default route) send to a ClusterIP through the output hook where the
    /// proxy rewrites it. Protocol 215: not one of the peer routes `sync_routes` manages.
    pub async fn route_services(&self, cidr: Cidr4) -> Result<(), String> {
        let h = &self.handle;
        let bridge = index_of(h, &self.cfg.bridge).await?;
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network, cidr.prefix)
            .protocol(RouteProtocol::Other(TUG_PROTO + 1))
            .output_interface(bridge)
            .build();
        h.route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("route to the services' range {cidr}")))
    }

    /// The subnets of this node's own interfaces (for "shares a link").
    async fn local_subnets(&self) -> Result<Vec<Cidr4>, String> {
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs.try_next().await.map_err(nl("listing addresses"))? {
            for x in &a.attributes {
                if let AddressAttribute::Address(IpAddr::V4(v)) = x {
                    if let Ok(c) = Cidr4::new(*v, a.header.prefix_len) {
                        if !c.overlaps(&self.cfg.cluster_cidr) && !v.is_loopback() {
                            out.push(c);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The node's nftables table: masquerade what pods send outside the cluster. Replaced whole on
/// every setup (one transaction: the table is declared, flushed and refilled).
pub fn masquerade_rules(pod_cidr: Cidr4, cluster_cidr: Cidr4) -> String {
    format!(
        "table ip tug_node\n\
         flush table ip tug_node\n\
         table ip tug_node {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pod_cidr} ip daddr != {cluster_cidr} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs `nft -f -` with `script` inside the namespace.
fn nft(ns: Option<&Path>, script: &str) -> Result<(), String> {
    run_nft(ns, &["-f", "-"], script)
}

/// Runs `nft ARGS` with `input` on its stdin inside the namespace (the agent's own when
/// `None`): one transaction.
pub fn run_nft(ns: Option<&Path>, args: &[&str], input: &str) -> Result<(), String> {
    run_tool(ns, "nft", args, input)
}

/// Runs `program ARGS` with `input` on its stdin inside the namespace; its stderr is the
/// error.
pub fn run_tool(ns: Option<&Path>, program: &str, args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    if let Some(path) = ns {
        let fd = netns::open(path)?;
        // SAFETY: between fork and exec only setns runs, an async-signal-safe syscall.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| format!("{program}: {e} (is it installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}
