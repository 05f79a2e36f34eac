//! Desired state: one pure function of the configuration and the
//! observation ([`compute`]) describing every output the agent keeps in
//! line: routes, neighbours, FDB entries and the VXLAN device (with its
//! offload setting), the nftables table, node.json and the conflist, and
//! the own Node's annotations. Every decision (which backend per peer,
//! which MTU, what to skip) is unit-tested here without a kernel.
//! [`incremental`] keeps the result between passes and updates it for the
//! Nodes that changed, equal to [`compute`] by test.
//! [`network_policy::compute`] is its NetworkPolicy part (believed pods,
//! the `inet weft-policy` table, the plugin's namespace list), computed
//! every pass from the observation's policy views; [`nft_plan`] is the one
//! typed plan of changes to either nftables table.

pub mod cluster_policy;
pub mod fastpath;
pub mod files;
pub mod incremental;
pub mod liveness;
pub mod network_policy;
pub mod nft_plan;
pub mod pod_trust;
pub mod policy;
pub mod policy_table;
pub mod policy_trace;
pub mod verdicts;
pub mod weft_table;

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libweft::node_config::NodeConfig;
use serde_json::Value;

use crate::config::{Backend, Config};
use crate::observe::{Observation, Underlay};
use crate::wire::{ANN_BACKEND, ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, ANN_VTEP_MAC, NodeView, Rejected};

pub use self::weft_table::NftTable;

/// Everything the agent should have made true after a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Routes, neighbours, FDB entries and the VXLAN device.
    pub kernel: KernelState,
    /// What the `inet weft` table is built from.
    pub nft: NftTable,
    /// `/run/weft/node.json`.
    pub node_config: NodeConfig,
    /// The CNI conflist.
    pub conflist: Value,
    /// weft's annotations on the own Node.
    pub annotations: BTreeMap<String, String>,
}

/// Computes every output from the configuration and one observation.
pub fn compute(config: &Config, obs: &Observation) -> Desired {
    let underlay = obs.underlay.believed(&obs.local.addresses);
    let kernel = kernel_state(config, &obs.local, &underlay, obs.vtep_mac, &obs.nodes, obs.offload_default);
    // Node addresses keep a pod's source address: only what the Nodes'
    // status.addresses say, and nothing of a refused peer's.
    let refused: Vec<&str> = kernel.refused.iter().map(|r| r.node.as_str()).collect();
    let node_ips: Vec<IpAddr> = obs
        .nodes
        .iter()
        .filter(|n| n.name == obs.local.name || !refused.contains(&n.name.as_str()))
        .flat_map(|n| n.addresses.iter().copied())
        .collect();
    // VXLAN is taken only from the peers believed, at the underlay
    // addresses they may send from (both families: a peer's choice of
    // family for the tunnel is its own).
    let vxlan_peers: Vec<IpAddr> = obs
        .nodes
        .iter()
        .filter(|n| n.name != obs.local.name && !refused.contains(&n.name.as_str()))
        .flat_map(|n| [n.ip(false), n.ip(true)].into_iter().flatten())
        .collect();
    // Only SYNs that could be too big for the tunnel are clamped.
    let mss_clamp = kernel.vxlan.as_ref().is_some_and(|v| kernel.pod_mtu > v.mtu);
    Desired {
        nft: NftTable { mss_clamp, ..NftTable::new(&obs.local.pod_cidrs, &node_ips, &vxlan_peers) },
        node_config: files::node_config(config, &obs.local.name, &obs.local.pod_cidrs, kernel.pod_mtu),
        conflist: files::conflist(config, obs.portmap_installed),
        annotations: own_annotations(&underlay, obs.vtep_mac, config.backend),
        kernel,
    }
}

/// The annotations this node publishes for its peers: its underlay
/// addresses and VTEP MAC, and its backend (for operators).
pub fn own_annotations(underlay: &Underlay, vtep_mac: [u8; 6], backend: Backend) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    if let Some(v4) = underlay.v4 {
        a.insert(ANN_PUBLIC_IP.to_string(), v4.ip().to_string());
    }
    if let Some(v6) = underlay.v6 {
        a.insert(ANN_PUBLIC_IPV6.to_string(), v6.ip().to_string());
    }
    a.insert(ANN_VTEP_MAC.to_string(), libweft::netlink::format_mac(&vtep_mac));
    a.insert(ANN_BACKEND.to_string(), backend.as_str().to_string());
    a
}

pub use crate::base::names::VXLAN_DEV;
/// VXLAN over IPv4 costs 50 bytes (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// Over IPv6 the outer header is 40 bytes.
pub const VXLAN_OVERHEAD_V6: u32 = 70;

/// The VXLAN device weft wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay_ifindex: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// The VTEP addresses: the network address of each local pod CIDR, as /32 or /128.
    pub addresses: Vec<IpNetwork>,
    /// Transmit checksum offload: the configured value, else the kernel's default.
    pub tx_checksum_offload: bool,
}

/// How to reach one peer pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hop {
    /// `<cidr> via <peer node IP> dev <underlay>`.
    Direct { gateway: IpAddr },
    /// `<cidr> via <peer VTEP> dev weft.vxlan onlink`.
    Vxlan { gateway: IpAddr },
}

/// What the kernel should hold (besides the nftables table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub vxlan: Option<VxlanSpec>,
    /// Peer pod CIDR -> hop.
    pub routes: BTreeMap<IpNetwork, Hop>,
    /// Permanent neighbours on the VXLAN device: peer VTEP address -> peer VTEP MAC.
    pub neighbours: BTreeMap<IpAddr, [u8; 6]>,
    /// FDB entries on the VXLAN device: peer VTEP MAC -> peer underlay address.
    pub fdb: BTreeMap<[u8; 6], IpAddr>,
    /// The MTU pods get (written to node.json).
    pub pod_mtu: u32,
    /// Backend chosen per peer (for metrics and logs).
    pub peer_backends: BTreeMap<String, Backend>,
    /// Peers (or families of peers) that cannot be programmed yet, and why.
    pub skipped: Vec<(String, String)>,
    /// Peers refused for claiming what another node holds (a pod CIDR, an
    /// address, a VTEP MAC) or a MAC not derived from their name: nothing
    /// of theirs is programmed.
    pub refused: Vec<Rejected>,
}

/// The kernel part of the desired state. `local` is the node this agent
/// runs on; `offload_default` is the kernel's transmit checksum offload
/// default, used when the configuration does not say.
pub fn kernel_state(
    config: &Config,
    local: &NodeView,
    underlay: &Underlay,
    vtep_mac: [u8; 6],
    nodes: &[impl Borrow<NodeView>],
    offload_default: bool,
) -> KernelState {
    let mut d = kernel_base(config, local, underlay, vtep_mac, offload_default);
    // Trust: a peer is believed only for what no older Node already
    // claims. Peers are taken oldest first (creationTimestamp, then UID),
    // so the outcome never depends on the store's order or on names, and a
    // Node created later cannot take a pod CIDR or an address away from one
    // that holds it. A refused peer gets nothing programmed at all.
    let mut peers: Vec<&NodeView> = nodes.iter().map(Borrow::borrow).filter(|n| n.name != local.name).collect();
    peers.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
    let mut claims = Claims::local(local, underlay, local.name.as_str());
    for peer in peers {
        if let Some(refusal) = claims.refusal(peer) {
            d.refused.push(refusal);
            continue;
        }
        claims.take(peer, peer.name.as_str());
        let entries = peer_entries(config, underlay, d.vxlan.is_some(), peer);
        d.add_peer(&peer.name, &entries);
    }
    // One order for every way of computing it (see `incremental`): by peer.
    d.skipped.sort();
    d
}

/// The kernel state without any peer: the VXLAN device and the pods' MTU.
fn kernel_base(
    config: &Config,
    local: &NodeView,
    underlay: &Underlay,
    vtep_mac: [u8; 6],
    offload_default: bool,
) -> KernelState {
    let uses_vxlan = config.backend != Backend::Routes;
    let vxlan_v6 = underlay.vxlan_family_v6();
    let overhead = if vxlan_v6 { VXLAN_OVERHEAD_V6 } else { VXLAN_OVERHEAD_V4 };
    let vxlan_mtu = underlay.mtu.saturating_sub(overhead);
    // A pod has one MTU for every destination. With `vxlan` every peer is
    // behind the tunnel, so pods fit in it. With `auto` most peers are
    // usually direct, and the VXLAN MTU would cost them (0.68x throughput
    // at 1450 on a 1500 underlay): pods get the underlay's, and the VXLAN
    // routes carry the smaller MTU, which the node enforces (path-MTU
    // errors, and the MSS clamp in `inet weft`).
    let pod_mtu = config.mtu.unwrap_or(if config.backend == Backend::Vxlan { vxlan_mtu } else { underlay.mtu });

    let mut d = KernelState { pod_mtu, ..KernelState::default() };
    if uses_vxlan && let Some(local_ip) = underlay.net(vxlan_v6).map(|n| n.ip()) {
        d.vxlan = Some(VxlanSpec {
            vni: config.vxlan.vni,
            port: config.vxlan.port,
            local: local_ip,
            underlay_ifindex: underlay.ifindex,
            mtu: vxlan_mtu,
            mac: vtep_mac,
            addresses: local.pod_cidrs.iter().map(|c| host_net(c.network())).collect(),
            tx_checksum_offload: config.vxlan.tx_checksum_offload.unwrap_or(offload_default),
        });
    }
    d
}

/// What one believed peer adds to the kernel state. Its keys are its own:
/// claims make its pod CIDRs (so its VTEP addresses) and its MAC unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerEntries {
    pub routes: Vec<(IpNetwork, Hop)>,
    pub neighbours: Vec<(IpAddr, [u8; 6])>,
    pub fdb: Vec<([u8; 6], IpAddr)>,
    pub backend: Option<Backend>,
    /// Why some of its pod CIDRs cannot be programmed yet.
    pub skipped: Vec<String>,
}

/// The entries of one believed peer: a function of the configuration, the
/// underlay, whether the VXLAN device exists, and the peer alone.
pub fn peer_entries(config: &Config, underlay: &Underlay, vxlan: bool, peer: &NodeView) -> PeerEntries {
    let vxlan_v6 = underlay.vxlan_family_v6();
    let mut e = PeerEntries::default();
    // Without pod CIDRs (not allocated yet) there is nothing to route to.
    for cidr in &peer.pod_cidrs {
        let family_v6 = cidr.is_ipv6();
        let direct = match (peer.ip(family_v6), underlay.net(family_v6)) {
            (Some(ip), Some(net)) => Some((ip, net.contains(ip))),
            _ => None,
        };
        let want_direct = match config.backend {
            Backend::Routes => true,
            Backend::Vxlan => false,
            Backend::Auto => direct.is_some_and(|(_, same_l2)| same_l2),
        };
        if want_direct {
            match direct {
                Some((gateway, _)) => {
                    e.routes.push((*cidr, Hop::Direct { gateway }));
                    e.backend.get_or_insert(Backend::Routes);
                }
                None => {
                    e.skipped.push(format!("no IPv{} node address to route {cidr} to", if family_v6 { 6 } else { 4 }))
                }
            }
            continue;
        }
        let (true, Some(mac), Some(peer_underlay)) = (vxlan, peer.vtep_mac, peer.ip(vxlan_v6)) else {
            e.skipped.push(format!("no VTEP MAC or underlay address yet to reach {cidr} over VXLAN"));
            continue;
        };
        let vtep = cidr.network();
        e.routes.push((*cidr, Hop::Vxlan { gateway: vtep }));
        e.neighbours.push((vtep, mac));
        e.fdb.push((mac, peer_underlay));
        e.backend = Some(Backend::Vxlan);
    }
    e
}

impl KernelState {
    /// Adds a believed peer's entries.
    fn add_peer(&mut self, name: &str, e: &PeerEntries) {
        self.routes.extend(e.routes.iter().copied());
        self.neighbours.extend(e.neighbours.iter().copied());
        self.fdb.extend(e.fdb.iter().copied());
        if let Some(b) = e.backend {
            self.peer_backends.insert(name.to_string(), b);
        }
        self.skipped.extend(e.skipped.iter().map(|why| (name.to_string(), why.clone())));
    }

    /// Removes what [`KernelState::add_peer`] added (but `skipped`, which
    /// the caller rebuilds).
    fn remove_peer(&mut self, name: &str, e: &PeerEntries) {
        for (dst, _) in &e.routes {
            self.routes.remove(dst);
        }
        for (ip, _) in &e.neighbours {
            self.neighbours.remove(ip);
        }
        for (mac, _) in &e.fdb {
            self.fdb.remove(mac);
        }
        self.peer_backends.remove(name);
    }
}

/// What the local node and the peers believed so far hold: pod CIDRs
/// (pairwise disjoint, by first address), underlay addresses and VTEP MACs,
/// each with its holder's name (`N`: borrowed for one computation, owned
/// when kept between passes). Every lookup is a hash or a tree search: a
/// pass over thousands of Nodes must not compare each with all the others.
#[derive(Debug, Clone)]
struct Claims<N> {
    cidrs: BTreeMap<(bool, u128), (IpNetwork, N)>,
    ips: HashMap<IpAddr, N>,
    macs: HashMap<[u8; 6], N>,
}

/// The holder of a claim when only whether something is held matters:
/// the cache between passes (`incremental`), where any conflict sends the
/// pass back to [`compute`], keeps no name per claim (five per peer).
#[derive(Debug, Clone, Copy)]
struct Held;

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("another node")
    }
}

impl<N> Default for Claims<N> {
    fn default() -> Self {
        Claims { cidrs: BTreeMap::new(), ips: HashMap::new(), macs: HashMap::new() }
    }
}

/// `((is IPv6, first address), last address)` of a CIDR, as numbers.
fn cidr_span(c: &IpNetwork) -> ((bool, u128), u128) {
    let (first, host_bits) = match c.network() {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32 - u32::from(c.prefix())),
        IpAddr::V6(v6) => (u128::from(v6), 128 - u32::from(c.prefix())),
    };
    let size_less_one = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
    ((c.is_ipv6(), first), first.saturating_add(size_less_one))
}

impl<N: Clone + std::fmt::Display> Claims<N> {
    /// What the local node (named `name`) holds: its pod CIDRs and every
    /// address it has.
    fn local(local: &NodeView, underlay: &Underlay, name: N) -> Claims<N> {
        let mut claims = Claims::default();
        for cidr in &local.pod_cidrs {
            claims.cidrs.insert(cidr_span(cidr).0, (*cidr, name.clone()));
        }
        let own_ips = local
            .addresses
            .iter()
            .copied()
            .chain([local.ipv4.map(IpAddr::V4), local.ipv6.map(IpAddr::V6)].into_iter().flatten());
        for ip in own_ips.chain([underlay.v4.map(|n| n.ip()), underlay.v6.map(|n| n.ip())].into_iter().flatten()) {
            claims.ips.entry(ip).or_insert_with(|| name.clone());
        }
        claims
    }

    /// A claimed CIDR that overlaps `cidr`. CIDRs overlap only by nesting,
    /// and the claimed ones are disjoint: either one starts inside `cidr`,
    /// or the last one starting before it contains it.
    fn overlapping(&self, cidr: &IpNetwork) -> Option<&(IpNetwork, N)> {
        let ((v6, first), last) = cidr_span(cidr);
        if let Some((_, claim)) = self.cidrs.range((v6, first)..=(v6, last)).next() {
            return Some(claim);
        }
        let (_, before) = self.cidrs.range((v6, 0)..(v6, first)).next_back()?;
        before.0.contains(cidr.network()).then_some(before)
    }

    /// Why `peer` must not be believed, if it must not.
    fn refusal(&self, peer: &NodeView) -> Option<Rejected> {
        let refuse = |field: &'static str, value: String, reason: String| {
            Some(Rejected { node: peer.name.clone(), field, value, reason })
        };
        for cidr in &peer.pod_cidrs {
            // Nested CIDRs overlap too: a /25 inside a peer's /24 would win
            // the longest-prefix match and steal half of its pods.
            if let Some((owner_cidr, owner)) = self.overlapping(cidr) {
                return refuse(FIELD_POD_CIDRS, cidr.to_string(), format!("overlaps {owner_cidr} of node {owner}"));
            }
        }
        for ip in [peer.ip(false), peer.ip(true)].into_iter().flatten() {
            if let Some(owner) = self.ips.get(&ip) {
                return refuse(FIELD_ADDRESS, ip.to_string(), format!("already node {owner}'s address"));
            }
        }
        if let Some(mac) = peer.vtep_mac {
            // Formatted only for a refusal: this runs for every peer.
            let text = || libweft::netlink::format_mac(&mac);
            // The MAC is a function of the name (`vtep_mac_for`), so weft
            // checks it instead of believing it: a Node cannot announce
            // another node's MAC and take over its FDB entry.
            if mac != vtep_mac_for(&peer.name) {
                return refuse(ANN_VTEP_MAC, text(), "not the MAC derived from the node name".into());
            }
            if let Some(owner) = self.macs.get(&mac) {
                return refuse(ANN_VTEP_MAC, text(), format!("already node {owner}'s VTEP MAC"));
            }
        }
        None
    }

    /// Records what a believed `peer` holds.
    fn take(&mut self, peer: &NodeView, owner: N) {
        // At most one CIDR per family (`NodeView::from_node`): they cannot
        // overlap each other, and `refusal` saw they overlap no other claim.
        for c in &peer.pod_cidrs {
            self.cidrs.insert(cidr_span(c).0, (*c, owner.clone()));
        }
        for ip in [peer.ip(false), peer.ip(true)].into_iter().flatten() {
            self.ips.insert(ip, owner.clone());
        }
        if let Some(mac) = peer.vtep_mac {
            self.macs.insert(mac, owner);
        }
    }

    /// Forgets what [`Claims::take`] recorded for `peer`.
    fn release(&mut self, peer: &NodeView) {
        for c in &peer.pod_cidrs {
            self.cidrs.remove(&cidr_span(c).0);
        }
        for ip in [peer.ip(false), peer.ip(true)].into_iter().flatten() {
            self.ips.remove(&ip);
        }
        if let Some(mac) = peer.vtep_mac {
            self.macs.remove(&mac);
        }
    }
}

/// [`Rejected::field`] of a pod CIDR overlapping another node's.
pub const FIELD_POD_CIDRS: &str = "spec.podCIDRs";
/// [`Rejected::field`] of an underlay address another node holds.
pub const FIELD_ADDRESS: &str = "status.addresses";

/// `ip/32` or `ip/128`.
pub fn host_net(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("full-length prefix is valid")
}

#[cfg(test)]
fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// A stable, locally administered unicast MAC for the node's VXLAN device,
/// derived from the node name: peers' FDB entries point at it, so it must
/// not change when the agent or the device is re-created (flannel#1795).
pub fn vtep_mac_for(node_name: &str) -> [u8; 6] {
    let b = libweft::netlink::stable_hash(node_name.bytes()).to_be_bytes();
    [0x0e, b[0], b[1], b[2], b[3], b[4]]
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::wire::WatchedNode;

    /// Test builder: `node("n2").cidrs(&[..]).ip4("198.51.100.12")`.
    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            ipv4: None,
            ipv6: None,
            pod_cidrs: vec![],
            vtep_mac: Some(vtep_mac_for(name)),
            addresses: vec![],
            created: None,
            uid: name.into(),
        }
    }

    trait Build {
        fn cidrs(self, c: &[&str]) -> Self;
        fn ip4(self, ip: &str) -> Self;
        fn ip6(self, ip: &str) -> Self;
        fn no_mac(self) -> Self;
        fn created(self, unix_secs: i64) -> Self;
    }

    impl Build for NodeView {
        fn cidrs(mut self, c: &[&str]) -> Self {
            self.pod_cidrs = c.iter().map(|s| s.parse().unwrap()).collect();
            self
        }
        fn ip4(mut self, ip: &str) -> Self {
            let v4 = ip.parse::<Ipv4Addr>().unwrap();
            self.ipv4 = Some(v4);
            self.addresses.retain(IpAddr::is_ipv6);
            self.addresses.push(IpAddr::V4(v4));
            self
        }
        fn ip6(mut self, ip: &str) -> Self {
            let v6 = ip.parse::<Ipv6Addr>().unwrap();
            self.ipv6 = Some(v6);
            self.addresses.retain(IpAddr::is_ipv4);
            self.addresses.push(IpAddr::V6(v6));
            self
        }
        fn no_mac(mut self) -> Self {
            self.vtep_mac = None;
            self
        }
        fn created(mut self, unix_secs: i64) -> Self {
            self.created = Some(Time(k8s_openapi::jiff::Timestamp::from_second(unix_secs).unwrap()));
            self
        }
    }

    fn config(backend: &str) -> Config {
        Config::example(backend.parse().unwrap())
    }

    /// The kernel state with offload on by default, as on kernels from 5.7.
    fn compute(
        config: &Config,
        local: &NodeView,
        u: &Underlay,
        mac: [u8; 6],
        nodes: &[impl Borrow<NodeView>],
    ) -> KernelState {
        kernel_state(config, local, u, mac, nodes, true)
    }

    fn underlay() -> Underlay {
        Underlay {
            ifindex: 2,
            mtu: 1500,
            v4: Some("198.51.100.11/24".parse().unwrap()),
            v6: Some("2001:db8:a::11/64".parse().unwrap()),
        }
    }

    fn me() -> NodeView {
        node("n1").cidrs(&["10.244.1.0/24", "fd00:10:244:1::/64"]).ip4("198.51.100.11").ip6("2001:db8:a::11")
    }

    fn same_segment() -> NodeView {
        node("n2").cidrs(&["10.244.2.0/24", "fd00:10:244:2::/64"]).ip4("198.51.100.12").ip6("2001:db8:a::12")
    }

    fn other_segment() -> NodeView {
        node("n3").cidrs(&["10.244.3.0/24", "fd00:10:244:3::/64"]).ip4("203.0.113.13").ip6("2001:db8:b::13")
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn claimed_cidrs_are_found_by_search_as_by_comparing_all() {
        let mut claims = Claims::default();
        let claimed = ["10.244.0.0/24", "10.244.2.0/23", "10.244.8.0/21", "10.0.0.0/32", "fd00:10:244:1::/64"];
        for c in claimed {
            let c = net(c);
            claims.cidrs.insert(cidr_span(&c).0, (c, "n"));
        }
        let queries = [
            "10.244.0.0/24",
            "10.244.0.128/25",
            "10.244.1.0/24",
            "10.244.3.0/24",
            "10.244.4.0/22",
            "10.244.0.0/16",
            "10.244.12.0/24",
            "10.244.16.0/24",
            "0.0.0.0/0",
            "10.0.0.0/31",
            "10.0.0.1/32",
            "fd00:10:244:1::/64",
            "fd00:10:244:1:8000::/65",
            "fd00:10:244:2::/64",
            "::/0",
            "10.244.1.255/32",
        ];
        for q in queries {
            let q = net(q);
            let brute = claimed.iter().map(|c| net(c)).any(|c| overlaps(&c, &q));
            let found = claims.overlapping(&q).map(|(c, _)| *c);
            assert_eq!(found.is_some(), brute, "{q}");
            // Several claims may overlap a wide query: any one of them will do.
            assert!(found.is_none_or(|c| overlaps(&c, &q)), "{q}: {found:?}");
        }
        assert_eq!(cidr_span(&net("::/0")).1, u128::MAX);
        assert_eq!(cidr_span(&net("0.0.0.0/0")).1, u128::from(u32::MAX));
    }

    #[test]
    fn routes_backend_uses_node_addresses_per_family_and_no_vxlan() {
        let nodes = [me(), same_segment()];
        let d = compute(&config("routes"), &me(), &underlay(), vtep_mac_for("n1"), &nodes);
        assert!(d.vxlan.is_none());
        assert_eq!(d.routes[&net("10.244.2.0/24")], Hop::Direct { gateway: ip("198.51.100.12") });
        assert_eq!(d.routes[&net("fd00:10:244:2::/64")], Hop::Direct { gateway: ip("2001:db8:a::12") });
        assert!(d.neighbours.is_empty() && d.fdb.is_empty());
        assert_eq!(d.pod_mtu, 1500);
        assert_eq!(d.peer_backends["n2"], Backend::Routes);
    }

    #[test]
    fn vxlan_backend_programs_route_neighbour_and_fdb_for_both_families() {
        let nodes = [me(), same_segment()];
        let d = compute(&config("vxlan"), &me(), &underlay(), vtep_mac_for("n1"), &nodes);
        let vx = d.vxlan.as_ref().unwrap();
        assert_eq!(vx.local, ip("198.51.100.11"));
        assert_eq!(vx.mtu, 1450);
        assert_eq!(vx.addresses, vec![net("10.244.1.0/32"), net("fd00:10:244:1::/128")]);
        assert_eq!(d.pod_mtu, 1450);
        assert_eq!(d.routes[&net("10.244.2.0/24")], Hop::Vxlan { gateway: ip("10.244.2.0") });
        assert_eq!(d.routes[&net("fd00:10:244:2::/64")], Hop::Vxlan { gateway: ip("fd00:10:244:2::") });
        let mac = vtep_mac_for("n2");
        assert_eq!(d.neighbours[&ip("10.244.2.0")], mac);
        assert_eq!(d.neighbours[&ip("fd00:10:244:2::")], mac);
        // Both families travel over the IPv4 underlay.
        assert_eq!(d.fdb[&mac], ip("198.51.100.12"));
    }

    #[test]
    fn auto_is_direct_on_the_segment_and_vxlan_beyond_it() {
        let nodes = [me(), same_segment(), other_segment()];
        let d = compute(&config("auto"), &me(), &underlay(), vtep_mac_for("n1"), &nodes);
        assert!(matches!(d.routes[&net("10.244.2.0/24")], Hop::Direct { .. }));
        assert!(matches!(d.routes[&net("10.244.3.0/24")], Hop::Vxlan { .. }));
        assert!(matches!(d.routes[&net("fd00:10:244:3::/64")], Hop::Vxlan { .. }));
        assert_eq!(d.fdb[&vtep_mac_for("n3")], ip("203.0.113.13"));
        assert_eq!(d.peer_backends["n2"], Backend::Routes);
        assert_eq!(d.peer_backends["n3"], Backend::Vxlan);
        // Pods get the underlay's MTU; the VXLAN routes carry the device's (apply::kernel).
        assert_eq!(d.pod_mtu, 1500, "auto: direct peers must not pay the VXLAN MTU");
        assert_eq!(d.vxlan.as_ref().unwrap().mtu, 1450);
    }

    #[test]
    fn ipv6_underlay_costs_70_bytes() {
        let u = Underlay { v4: None, ..underlay() };
        let local = me();
        let nodes = [local.clone(), other_segment()];
        let d = compute(&config("vxlan"), &local, &u, vtep_mac_for("n1"), &nodes);
        assert_eq!(d.pod_mtu, 1430);
        assert_eq!(d.vxlan.unwrap().local, ip("2001:db8:a::11"));
        assert_eq!(d.fdb[&vtep_mac_for("n3")], ip("2001:db8:b::13"));
    }

    #[test]
    fn configured_mtu_wins() {
        for backend in ["routes", "vxlan", "auto"] {
            let mut c = config(backend);
            c.mtu = Some(1400);
            assert_eq!(compute(&c, &me(), &underlay(), vtep_mac_for("n1"), &[me()]).pod_mtu, 1400, "{backend}");
        }
    }

    #[test]
    fn incomplete_peers_are_skipped_with_a_reason() {
        let nodes = [
            me(),
            node("pending"),          // no podCIDRs yet: silently waits
            other_segment().no_mac(), // VXLAN needs the MAC
            node("v4only").cidrs(&["10.244.5.0/24", "fd00:10:244:5::/64"]).ip4("198.51.100.15"),
            node("clash").cidrs(&["10.244.1.0/25"]).ip4("198.51.100.16"), // overlaps ours
        ];
        let d = compute(&config("routes"), &me(), &underlay(), vtep_mac_for("n1"), &nodes);
        assert!(d.routes.contains_key(&net("10.244.5.0/24")));
        assert!(!d.routes.contains_key(&net("fd00:10:244:5::/64")));
        assert!(!d.routes.contains_key(&net("10.244.1.0/25")));
        let reasons: Vec<String> = d.skipped.iter().map(|(n, r)| format!("{n}: {r}")).collect();
        assert!(reasons.iter().any(|r| r.starts_with("v4only: no IPv6")), "{reasons:?}");
        assert!(d.refused.iter().any(|r| r.node == "clash" && r.reason.contains("overlaps")), "{:?}", d.refused);
        assert!(!reasons.iter().any(|r| r.starts_with("pending")));

        let d = compute(&config("vxlan"), &me(), &underlay(), vtep_mac_for("n1"), &nodes);
        assert!(!d.routes.contains_key(&net("10.244.3.0/24")));
        assert!(d.skipped.iter().any(|(n, r)| n == "n3" && r.contains("VTEP MAC")));
    }

    #[test]
    fn own_node_is_never_a_peer_and_deleted_nodes_vanish() {
        let d = compute(&config("vxlan"), &me(), &underlay(), vtep_mac_for("n1"), &[me(), same_segment()]);
        assert!(!d.routes.contains_key(&net("10.244.1.0/24")));
        let gone = compute(&config("vxlan"), &me(), &underlay(), vtep_mac_for("n1"), &[me()]);
        assert!(gone.routes.is_empty() && gone.neighbours.is_empty() && gone.fdb.is_empty());
    }

    #[test]
    fn a_pod_cidr_claimed_twice_goes_to_the_older_node_whatever_the_order() {
        // Same pod CIDRs as n2, another address; created after n2 but first by name.
        let twin = node("a-twin").cidrs(&["10.244.2.0/24"]).ip4("198.51.100.50").created(200);
        for order in [[same_segment().created(100), twin.clone()], [twin.clone(), same_segment().created(100)]] {
            let mut nodes = vec![me()];
            nodes.extend(order);
            let d = compute(&config("vxlan"), &me(), &underlay(), vtep_mac_for("n1"), &nodes);
            assert_eq!(d.fdb.get(&vtep_mac_for("n2")), Some(&ip("198.51.100.12")), "the older n2 keeps its CIDR");
            assert!(!d.fdb.contains_key(&vtep_mac_for("a-twin")));
            assert!(d.refused.iter().any(|r| r.node == "a-twin" && r.field == FIELD_POD_CIDRS), "{:?}", d.refused);
        }
    }

    #[test]
    fn changes_of_a_peer_show_up_in_the_desired_state() {
        let before = compute(&config("vxlan"), &me(), &underlay(), vtep_mac_for("n1"), &[me(), same_segment()]);
        let moved = same_segment().ip4("198.51.100.99").cidrs(&["10.244.7.0/24"]);
        let after = compute(&config("vxlan"), &me(), &underlay(), vtep_mac_for("n1"), &[me(), moved]);
        assert_eq!(after.fdb[&vtep_mac_for("n2")], ip("198.51.100.99"));
        assert_ne!(before.neighbours, after.neighbours);
    }

    /// A Node as the API serves it (creation time in Unix seconds).
    fn api_node(name: &str, created: i64, cidrs: &[&str], ips: &[(&str, &str)], ann: &[(&str, &str)]) -> WatchedNode {
        use k8s_openapi::api::core::v1::NodeAddress;
        use kube::api::ObjectMeta;

        use crate::wire::{WatchedSpec, WatchedStatus, WeftAnnotations};
        WatchedNode {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::from_second(created).unwrap())),
                ..ObjectMeta::default()
            },
            spec: Some(WatchedSpec { pod_cidr: None, pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()) }),
            status: Some(WatchedStatus {
                addresses: Some(
                    ips.iter().map(|(t, a)| NodeAddress { type_: t.to_string(), address: a.to_string() }).collect(),
                ),
            }),
            weft: WeftAnnotations::from_annotations(ann.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
        }
    }

    /// The legitimate cluster: this node n1 and its peer n2, both with the
    /// annotations their agents publish.
    fn legit() -> Vec<WatchedNode> {
        let n = |name: &str, i: u8| {
            let (v4, v6) = (format!("198.51.100.1{i}"), format!("2001:db8:a::1{i}"));
            let mac = libweft::netlink::format_mac(&vtep_mac_for(name));
            api_node(
                name,
                100,
                &[&format!("10.244.{i}.0/24"), &format!("fd00:10:244:{i}::/64")],
                &[("InternalIP", &v4), ("InternalIP", &v6), ("Hostname", name)],
                &[(ANN_PUBLIC_IP, &v4), (ANN_PUBLIC_IPV6, &v6), (ANN_VTEP_MAC, &mac)],
            )
        };
        vec![n("n1", 1), n("n2", 2)]
    }

    #[test]
    fn hostile_nodes_get_nothing_and_the_legitimate_peer_keeps_its_routes() {
        let evil_mac = libweft::netlink::format_mac(&vtep_mac_for("zz-evil"));
        let n2_mac = libweft::netlink::format_mac(&vtep_mac_for("n2"));
        let internal = [("InternalIP", "198.51.100.66")];
        // Created in n2's second: the UID decides, which the API server assigns, not the Node's author.
        let mut same_second = api_node("a-evil", 100, &["10.244.2.0/24"], &internal, &[]);
        same_second.metadata.uid = Some("uid-zz".into());
        #[rustfmt::skip]
        let table: Vec<(&str, WatchedNode, &[&str], &[&str])> = vec![
            // (case, hostile Node, its CIDRs that get a route, addresses expected in nodes4)
            ("nested in a peer's CIDR, with an external public IP",
                api_node("zz-evil", 200, &["10.244.2.0/25"], &internal, &[(ANN_PUBLIC_IP, "198.51.100.99")]),
                &[], &[]),
            ("nested in this node's CIDR", api_node("zz-evil", 200, &["10.244.1.128/25"], &internal, &[]), &[], &[]),
            ("a /0", api_node("zz-evil", 200, &["0.0.0.0/0"], &internal, &[]), &[], &["198.51.100.66"]),
            ("outside the clusterCIDRs", api_node("zz-evil", 200, &["10.96.0.0/24"], &internal, &[]),
                &[], &["198.51.100.66"]),
            ("a peer's VTEP MAC", api_node("zz-evil", 200, &["10.244.9.0/24"], &internal, &[(ANN_VTEP_MAC, &n2_mac)]),
                &[], &[]),
            ("a public IP not among its addresses",
                api_node("zz-evil", 200, &["10.244.9.0/24"], &internal,
                    &[(ANN_PUBLIC_IP, "203.0.113.200"), (ANN_VTEP_MAC, &evil_mac)]),
                &["10.244.9.0/24"], &["198.51.100.66"]),
            ("a peer's address", api_node("zz-evil", 200, &["10.244.9.0/24"], &[("InternalIP", "198.51.100.12")], &[]),
                &[], &[]),
            ("this node's address, as ExternalIP and public IP",
                api_node("zz-evil", 200, &["10.244.9.0/24"], &[("ExternalIP", "198.51.100.11")],
                    &[(ANN_PUBLIC_IP, "198.51.100.11")]),
                &[], &[]),
            ("an older peer's CIDR, first by name", api_node("a-evil", 200, &["10.244.2.0/24"], &internal, &[]),
                &[], &[]),
            ("an older peer's CIDR, created at the same second (UID decides)", same_second, &[], &[]),
        ];
        let cfg = config("auto");
        for backend in ["routes", "vxlan", "auto"] {
            let mut cfg = cfg.clone();
            cfg.backend = backend.parse().unwrap();
            for (case, hostile, routed, extra_ips) in &table {
                let mut objects = legit();
                objects.insert(0, hostile.clone());
                let mut rejected = Vec::new();
                let nodes: Vec<Arc<NodeView>> = objects
                    .iter()
                    .map(|n| Arc::new(NodeView::from_node(n, &cfg.cluster_cidrs, &mut rejected)))
                    .collect();
                let local = nodes.iter().find(|n| n.name == "n1").map(|n| NodeView::clone(n)).unwrap();
                let obs = Observation {
                    local,
                    nodes,
                    underlay: underlay(),
                    vtep_mac: vtep_mac_for("n1"),
                    offload_default: true,
                    portmap_installed: false,
                };
                let d = super::compute(&cfg, &obs);
                let k = &d.kernel;
                let what = format!("{backend}: {case}: {k:?} {rejected:?}");
                // The legitimate peer keeps both of its routes, and its hop.
                let n2 = if backend == "vxlan" {
                    assert_eq!(k.fdb.get(&vtep_mac_for("n2")), Some(&ip("198.51.100.12")), "{what}");
                    assert_eq!(k.neighbours.get(&ip("10.244.2.0")), Some(&vtep_mac_for("n2")), "{what}");
                    Hop::Vxlan { gateway: ip("10.244.2.0") }
                } else {
                    Hop::Direct { gateway: ip("198.51.100.12") }
                };
                assert_eq!(k.routes.get(&net("10.244.2.0/24")), Some(&n2), "{what}");
                assert!(k.routes.contains_key(&net("fd00:10:244:2::/64")), "{what}");
                // The hostile Node gets what is its own, or nothing at all.
                let mut want: Vec<IpNetwork> = vec![net("10.244.2.0/24"), net("fd00:10:244:2::/64")];
                want.extend(routed.iter().map(|c| net(c)));
                want.sort();
                assert_eq!(k.routes.keys().copied().collect::<Vec<_>>(), want, "{what}");
                for (cidr, hop) in &k.routes {
                    let gw = match hop {
                        Hop::Direct { gateway } | Hop::Vxlan { gateway } => *gateway,
                    };
                    assert_ne!(gw, ip("198.51.100.99"), "{what}: {cidr}");
                    assert_ne!(gw, ip("203.0.113.200"), "{what}: {cidr}");
                }
                if routed.is_empty() {
                    assert!(!k.fdb.contains_key(&vtep_mac_for("zz-evil")), "{what}");
                    assert!(k.neighbours.len() <= 2 && k.fdb.len() <= 1, "{what}");
                    assert!(!k.peer_backends.keys().any(|n| n.ends_with("evil")), "{what}");
                    let refused = k.refused.iter().any(|r| r.node.ends_with("evil"));
                    let unparsed = rejected.iter().any(|r| r.node.ends_with("evil"));
                    assert!(refused || unparsed, "{what}: the refusal is reported");
                }
                // Masquerade exemptions: the Nodes' own status addresses, nothing else.
                let mut ips = vec!["198.51.100.11", "198.51.100.12"];
                ips.extend(extra_ips.iter());
                ips.sort();
                let nodes4: Vec<String> =
                    d.nft.node_ips.iter().filter(|i| i.is_ipv4()).map(ToString::to_string).collect();
                assert_eq!(nodes4, ips, "{what}");
                // VXLAN is taken from believed peers only: never from the hostile claims.
                for bad in ["198.51.100.99", "203.0.113.200"] {
                    assert!(!d.nft.vxlan_peers.contains(&ip(bad)), "{what}: VXLAN from {bad}");
                }
            }
        }
    }

    #[test]
    fn vtep_mac_is_stable_unicast_and_local() {
        let mac = vtep_mac_for("node-a");
        assert_eq!(mac, vtep_mac_for("node-a"));
        assert_ne!(mac, vtep_mac_for("node-b"));
        assert_eq!(mac[0] & 0b11, 0b10, "locally administered unicast");
        // Peers' FDB entries hold it: it must never change across releases.
        assert_eq!(libweft::netlink::format_mac(&mac), "0e:e6:97:1c:c2:20");
    }

    #[test]
    fn offload_follows_the_config_else_the_kernel_default() {
        let nodes = [me(), other_segment()];
        let on = |c: &Config, default| {
            kernel_state(c, &me(), &underlay(), vtep_mac_for("n1"), &nodes, default).vxlan.unwrap().tx_checksum_offload
        };
        let mut c = config("vxlan");
        assert!(on(&c, true), "unset: on where the kernel is new enough");
        assert!(!on(&c, false), "unset: off before 5.7");
        c.vxlan.tx_checksum_offload = Some(false);
        assert!(!on(&c, true), "configured off wins");
        c.vxlan.tx_checksum_offload = Some(true);
        assert!(on(&c, false), "configured on wins");
    }

    fn observation(portmap: bool) -> Observation {
        Observation {
            local: me(),
            nodes: vec![Arc::new(me()), Arc::new(same_segment()), Arc::new(other_segment())],
            underlay: underlay(),
            vtep_mac: vtep_mac_for("n1"),
            offload_default: true,
            portmap_installed: portmap,
        }
    }

    #[test]
    fn compute_describes_every_output() {
        let c = config("auto");
        let d = super::compute(&c, &observation(false));
        assert_eq!(d.kernel, compute(&c, &me(), &underlay(), vtep_mac_for("n1"), &observation(false).nodes));
        // nftables: own CIDRs, every node address once, sorted.
        assert_eq!(d.nft.own_cidrs, me().pod_cidrs);
        let ips: Vec<String> = d.nft.node_ips.iter().map(ToString::to_string).collect();
        assert_eq!(
            ips,
            ["198.51.100.11", "198.51.100.12", "203.0.113.13", "2001:db8:a::11", "2001:db8:a::12", "2001:db8:b::13"]
        );
        // VXLAN only from the peers' underlay addresses, never from the node itself.
        let peers: Vec<String> = d.nft.vxlan_peers.iter().map(ToString::to_string).collect();
        assert_eq!(peers, ["198.51.100.12", "203.0.113.13", "2001:db8:a::12", "2001:db8:b::13"]);
        // node.json: the pods' MTU, the underlay's in auto.
        assert_eq!(d.node_config.node_name, "n1");
        assert_eq!(d.node_config.subnets, vec!["10.244.1.0/24", "fd00:10:244:1::/64"]);
        assert_eq!(d.node_config.mtu, 1500);
        assert_eq!(d.conflist["plugins"].as_array().unwrap().len(), 1);
        assert_eq!(super::compute(&c, &observation(true)).conflist["plugins"][1]["type"], "portmap");
        // Annotations: the underlay addresses, the VTEP MAC, the backend.
        let a = &d.annotations;
        assert_eq!(a[ANN_PUBLIC_IP], "198.51.100.11");
        assert_eq!(a[ANN_PUBLIC_IPV6], "2001:db8:a::11");
        assert_eq!(a[ANN_VTEP_MAC], libweft::netlink::format_mac(&vtep_mac_for("n1")));
        assert_eq!(a[ANN_BACKEND], "auto");
    }

    #[test]
    fn the_mss_clamp_exists_only_where_pods_outgrow_the_tunnel() {
        let clamp = |c: &Config| super::compute(c, &observation(false)).nft.mss_clamp;
        assert!(clamp(&config("auto")), "auto: pods have the underlay's 1500, the tunnel 1450");
        assert!(!clamp(&config("vxlan")), "vxlan: pods already fit the tunnel");
        assert!(!clamp(&config("routes")), "routes: no tunnel");
        let mut c = config("vxlan");
        c.mtu = Some(1500);
        assert!(clamp(&c), "vxlan with pods configured above the tunnel's MTU");
        let mut c = config("auto");
        c.mtu = Some(1450);
        assert!(!clamp(&c), "auto with pods configured at the tunnel's MTU");
        // Without an underlay address for the tunnel there is no VXLAN device to clamp toward.
        let obs = Observation { underlay: Underlay { v4: None, v6: None, ..underlay() }, ..observation(false) };
        assert!(!super::compute(&config("auto"), &obs).nft.mss_clamp);
    }

    #[test]
    fn an_underlay_without_ipv6_publishes_no_ipv6_address() {
        let u = Underlay { v6: None, ..underlay() };
        let a = own_annotations(&u, vtep_mac_for("n1"), Backend::Routes);
        assert!(!a.contains_key(ANN_PUBLIC_IPV6));
        assert_eq!(a.len(), 3);
    }
}
