//! Node networking: a network namespace per pod on the node's bridge, addresses from the
//! node's pod CIDR, masquerade for traffic leaving the cluster, and routes to the other
//! nodes' pods (host-gw on a shared link, a VXLAN overlay elsewhere).
//!
//! ```text
//!   node (its own netns, or the host's)                   pod netns (pinned under --netns-dir)
//!   ┌───────────────────────────────────────────┐          ┌──────────────────────────┐
//!   │ eth0 10.250.0.10 ── underlay              │          │ lo                        │
//!   │ tug0 10.244.1.1/24 (bridge) ── tugXXXXXXXX ├── veth ──┤ eth0 10.244.1.2/24        │
//!   │ tug.1 10.244.1.0/32 (VXLAN 1, port 8472)  │          │ default via 10.244.1.1    │
//!   │ routes: 10.244.2.0/24 via 10.250.0.11     │          └──────────────────────────┘
//!   │         10.244.3.0/24 via 10.244.3.0 dev tug.1 onlink
//!   │ nft table ip tug_node: masquerade pod CIDR → outside the cluster CIDR
//!   │ nft table bridge tug_antispoof: a pod's port sends IPv4 only from its address
//!   └───────────────────────────────────────────┘
//! ```
//!
//! Pure parts: [`cidr`], [`ipam`] (the allocator; the file is a thin layer), [`routes`] (the
//! route plan). Effects: [`netns`] (pinning, running inside a namespace) and [`node`]
//! (netlink through `rtnetlink`, nftables through the `nft` binary).

pub mod antispoof;
pub mod cidr;
pub mod ipam;
pub mod netns;
pub mod node;
pub mod routes;
