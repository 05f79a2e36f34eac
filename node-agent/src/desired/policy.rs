//! NetworkPolicy as desired state: one pure function, [`policy`], from the
//! node's name and the Pods, Namespaces and NetworkPolicies it watches to
//! what this node's data plane must do for its own pods. Rendered as
//! nftables by [`super::policy_table`], explained by [`super::policy_trace`]
//! (which reads this same output, so the two cannot disagree).
//!
//! The shape is an nftables design where a pod or label change edits set
//! and map elements, and the rule count grows with policies plus local
//! pods, never with pods × pods:
//! - **Verdict maps** `ingress`/`egress`, keyed by a local pod's address,
//!   send its traffic to a **group chain**: one per distinct list of
//!   policies selecting a pod in that direction (pods of one Deployment
//!   share one). A pod selected by no policy in a direction is absent from
//!   that map, and so untouched.
//! - A group chain jumps to each of its **policy chains** in turn and drops
//!   what none of them accepted.
//! - A policy chain holds one accept rule per (rule, peer, port form) of the
//!   policy. Peers are **address sets** named by a hash of what selects
//!   them (the selector plus the namespaces it looks in, or the ipBlock),
//!   so rules using the same selector share one set, and a new pod or a
//!   relabelled one changes only elements.
//! - A **named port** resolves on the destination pod, so it may mean a
//!   different number on each pod: rules match `daddr . dport` in a set of
//!   (pod address, port number) per port name and protocol.
//!
//! Traffic from the pod's own node (kubelet probes) never crosses the
//! forward hook where these chains sit (it leaves through output), so it is
//! always allowed; so is a pod's traffic to its own node, a documented gap
//! of egress policy here.
//!
//! hostNetwork pods are never enforced on (their address is the node's)
//! and never match a peer's selectors: their traffic carries the node's
//! address, which every process on that node shares, and with the VXLAN
//! backend it arrives from the node's VTEP address instead. To admit a
//! node's host traffic, name its addresses in an ipBlock.
//!
//! Pods in a namespace weft has not (yet) seen match no namespaceSelector:
//! unknown labels must not widen a policy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libweft::pending::PolicyNamespaces;

use super::cluster_policy::{self, ClusterChain};
use crate::wire_cluster_policy::ClusterPolicyView;
use crate::wire_policy::{
    Direction, NamespaceView, Namespaces, Peer, PodView, PolicyView, Port, PortMatch, Protocol, Selector,
};

/// What this node's data plane enforces. Every collection is sorted, so
/// two outputs differ exactly by the elements that changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// Verdict map: local pod address → group chain, for traffic to it.
    pub ingress: BTreeMap<IpAddr, String>,
    /// Verdict map: local pod address → group chain, for traffic from it.
    pub egress: BTreeMap<IpAddr, String>,
    /// Group chains: what decides for the pods mapped to each.
    pub groups: BTreeMap<String, Group>,
    /// Policy chains.
    pub chains: BTreeMap<String, PolicyChain>,
    /// ClusterNetworkPolicy chains, one per policy and direction.
    pub cluster_chains: BTreeMap<String, ClusterChain>,
    /// Admin tier chains: the cluster chains to try in order. A chain of
    /// its own so that a Pass can return from the whole tier at once.
    pub tiers: BTreeMap<String, Vec<String>>,
    /// Peer address sets.
    pub sets: BTreeMap<String, AddressSet>,
    /// Named-port sets.
    pub port_sets: BTreeMap<String, PortSet>,
    /// Log denied packets through NFLOG (`networkPolicy.logDenied`); set
    /// from the agent's config, never from the API.
    pub deny_log: Option<crate::config::DenyLog>,
    /// No local pod is isolated and none can start pending (no namespace
    /// has isolating policies): the table then has no base chains, so
    /// forwarded packets cross no hook of it (set by
    /// `network_policy::compute`).
    pub idle: bool,
}

/// A group chain: the Admin tier (a tier chain), then NetworkPolicy when
/// it isolates the pods (its policy chains, then drop), then the Baseline
/// tier (cluster chains in order), then the default: allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// The Admin tier chain, if any Admin policy selects the pods.
    pub admin: Option<String>,
    /// The NetworkPolicy chains, when some isolate the pods (`Some(vec![])`:
    /// isolated with nothing allowed).
    pub policies: Option<Vec<String>>,
    /// The Baseline cluster chains, in order; never reached when
    /// `policies` is `Some`.
    pub baseline: Vec<String>,
}

impl Group {
    /// A group of NetworkPolicies alone.
    pub fn isolated_by(policies: Vec<String>) -> Group {
        Group { admin: None, policies: Some(policies), baseline: vec![] }
    }

    /// Its name in direction-prefix `prefix`: a group of NetworkPolicies
    /// alone keeps the name it had before tiers existed.
    pub fn name(&self, prefix: &str) -> String {
        match (&self.admin, &self.policies, self.baseline.is_empty()) {
            (None, Some(p), true) => stable_name(prefix, p),
            _ => stable_name(prefix, &(&self.admin, &self.policies, &self.baseline)),
        }
    }
}

/// One policy's rules for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChain {
    /// `namespace/name`.
    pub policy: String,
    pub direction: Direction,
    pub allows: Vec<Allow>,
}

/// An accept rule: traffic from (ingress) or to (egress) the peer, on the
/// ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub rule: usize,
    pub peer: PeerMatch,
    pub ports: PortsMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatch {
    /// The rule names no peers: everyone.
    Any,
    /// The other side's address is in this address set.
    Set(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortsMatch {
    /// The rule names no ports: every port of every protocol.
    Any,
    /// Every port of one protocol.
    Protocol(Protocol),
    /// Destination port in these inclusive ranges (sorted, merged).
    Ranges(Protocol, Vec<(u16, u16)>),
    /// (destination address, destination port) in this named-port set.
    Named(Protocol, String),
}

/// Addresses selected by a peer: sorted, disjoint inclusive ranges (a pod
/// is a range of one address), IPv4 before IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSet {
    /// What selects them, for people (`nft list`, the tracer).
    pub about: String,
    pub ranges: Vec<(IpAddr, IpAddr)>,
    /// Whether the set holds ranges (an ipBlock). Pod address sets hold
    /// single addresses and are hash sets in the kernel, whose elements
    /// can be added without loading the set first.
    pub intervals: bool,
}

impl AddressSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|(a, b)| *a <= ip && ip <= *b)
    }
}

/// (pod address, port number) of every pod with one named port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet {
    pub name: String,
    pub protocol: Protocol,
    pub elements: Vec<(IpAddr, u16)>,
}

/// A stable short name: FNV-1a over the Debug form of what is named (the
/// std hasher may change between Rust releases, and these names live in
/// the kernel across agent upgrades).
pub fn stable_name(prefix: &str, what: &impl Debug) -> String {
    let h = libweft::netlink::stable_hash(format!("{what:?}").bytes());
    format!("{prefix}-{h:016x}")
}

/// Whether a pod takes part in policy at all, as a target or as a peer.
pub(super) fn is_policy_pod(p: &PodView) -> bool {
    !p.host_network && !p.ips.is_empty()
}

/// Whether `policy` selects `pod` for `direction`.
pub fn selects(policy: &PolicyView, pod: &PodView, direction: Direction) -> bool {
    policy.isolates(direction) && policy.namespace == pod.namespace && policy.pod_selector.matches(&pod.labels)
}

/// Whether a pod peer of a policy in `policy_ns` matches `pod`.
pub fn peer_selects(
    namespaces: &Namespaces,
    pods: &Selector,
    policy_ns: &str,
    pod: &PodView,
    all_ns: &BTreeMap<&str, &NamespaceView>,
) -> bool {
    let ns_ok = match namespaces {
        Namespaces::Own => pod.namespace == policy_ns,
        Namespaces::Matching(sel) => all_ns.get(pod.namespace.as_str()).is_some_and(|ns| sel.matches(&ns.labels)),
    };
    ns_ok && is_policy_pod(pod) && pods.matches(&pod.labels)
}

/// The key a peer's address set is named after: equal keys share a set.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum SetKey<'a> {
    /// Pods matching `pods` in namespace `namespace` or in the namespaces
    /// matching `namespaces`.
    Pods {
        namespace: Option<&'a str>,
        namespaces: Option<&'a Selector>,
        pods: &'a Selector,
    },
    Block {
        cidr: &'a IpNetwork,
        except: &'a [IpNetwork],
    },
    /// A ClusterNetworkPolicy's `networks`.
    Networks(&'a [IpNetwork]),
}

/// The desired policy state of node `node` under NetworkPolicies alone.
pub fn policy(node: &str, pods: &[PodView], namespaces: &[NamespaceView], policies: &[PolicyView]) -> PolicyState {
    policy_with_tiers(node, pods, namespaces, policies, &[])
}

/// The pods of each namespace that take part in policy: a peer set looks
/// only in the namespaces it may select, not at every pod.
pub(super) type PodsByNamespace<'a> = BTreeMap<&'a str, Vec<&'a PodView>>;

/// The desired policy state of node `node`: ClusterNetworkPolicies'
/// Admin tier, NetworkPolicy, then their Baseline tier
/// ([`super::cluster_policy`]).
pub fn policy_with_tiers(
    node: &str,
    pods: &[PodView],
    namespaces: &[NamespaceView],
    policies: &[PolicyView],
    cluster: &[ClusterPolicyView],
) -> PolicyState {
    let all_ns: BTreeMap<&str, &NamespaceView> = namespaces.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut policies: Vec<&PolicyView> = policies.iter().collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let cluster = cluster_policy::in_order(cluster);
    let local: Vec<&PodView> = pods.iter().filter(|p| p.node == node && is_policy_pod(p)).collect();
    let mut by_ns: PodsByNamespace = BTreeMap::new();
    for pod in pods.iter().filter(|p| is_policy_pod(p)) {
        by_ns.entry(pod.namespace.as_str()).or_default().push(pod);
    }
    let mut state = PolicyState::default();

    for direction in [Direction::Ingress, Direction::Egress] {
        let prefix = group_prefix(direction);
        // The chains of the policies that select a local pod: no other
        // policy matters on this node.
        let mut used_cluster: BTreeSet<&str> = BTreeSet::new();
        // Pods selected by the same Admin policies share a tier chain, whose
        // name hashes their Pass rules: computed once per list.
        let mut tier_names: BTreeMap<Vec<&str>, Option<String>> = BTreeMap::new();
        for pod in &local {
            let chains: Vec<String> = policies
                .iter()
                .filter(|p| selects(p, pod, direction))
                .map(|p| policy_chain_name(p, direction))
                .collect();
            let tiers = cluster_policy::selecting(&cluster, pod, direction, &all_ns);
            let group = Group {
                admin: tier_names
                    .entry(tiers.admin.iter().map(|c| c.name.as_str()).collect())
                    .or_insert_with(|| cluster_policy::admin_tier(&tiers.admin, direction, &mut state))
                    .clone(),
                policies: (!chains.is_empty()).then_some(chains),
                baseline: tiers.baseline.iter().map(|c| cluster_policy::chain_name(c, direction)).collect(),
            };
            if group == Group::default() {
                continue;
            }
            used_cluster.extend(tiers.admin.iter().chain(&tiers.baseline).map(|c| c.name.as_str()));
            let name = group.name(prefix);
            let map = match direction {
                Direction::Ingress => &mut state.ingress,
                Direction::Egress => &mut state.egress,
            };
            for ip in &pod.ips {
                map.insert(*ip, name.clone());
            }
            state.groups.insert(name, group);
        }
        let used: BTreeSet<String> = state.groups.values().flat_map(|g| g.policies.iter().flatten()).cloned().collect();
        for p in &policies {
            let name = policy_chain_name(p, direction);
            if !used.contains(&name) {
                continue;
            }
            let chain = policy_chain(p, direction, pods, &by_ns, &all_ns, &mut state);
            state.chains.insert(name, chain);
        }
        for c in cluster.iter().filter(|c| used_cluster.contains(c.name.as_str())) {
            let chain = cluster_policy::chain(c, direction, pods, &by_ns, &all_ns, &mut state);
            state.cluster_chains.insert(cluster_policy::chain_name(c, direction), chain);
        }
    }
    state
}

/// The namespaces with at least one policy isolating pods, by direction:
/// the plugin starts new pods there pending ([`libweft::pending`]). Any
/// isolating policy counts, whatever it selects: which pods it selects
/// depends on labels the plugin cannot know.
///
/// Namespaces some ClusterNetworkPolicy's subject may select count too, in
/// the directions it has rules for.
pub fn policy_namespaces(
    policies: &[PolicyView],
    cluster: &[ClusterPolicyView],
    namespaces: &[NamespaceView],
) -> PolicyNamespaces {
    let mut list = PolicyNamespaces { version: libweft::pending::VERSION, ..Default::default() };
    cluster_policy::subject_namespaces(cluster, namespaces, &mut list);
    for p in policies {
        if p.ingress_isolated {
            list.ingress.insert(p.namespace.clone());
        }
        if p.egress_isolated {
            list.egress.insert(p.namespace.clone());
        }
    }
    list
}

/// Whether a pending interface recording pod UID `uid`, whose routes lead
/// to `ips`, belongs to a live local pod the state was computed from, with
/// that UID and exactly those addresses: then that pod's rules, or its
/// absence from every map, are what [`policy`] decided for it. Addresses
/// alone never do: a terminating pod, or a stale view of a deleted one,
/// may still claim the address a new pod was given, and its verdict is
/// not the new pod's. No UID recorded: never (fail-closed).
pub fn knows_local_pod(node: &str, pods: &[PodView], uid: Option<&str>, ips: &[IpAddr]) -> bool {
    let Some(uid) = uid else { return false };
    let exactly = |p: &PodView| p.ips.len() == ips.len() && ips.iter().all(|ip| p.ips.contains(ip));
    !ips.is_empty()
        && pods.iter().any(|p| p.uid == uid && p.node == node && !p.terminating && is_policy_pod(p) && exactly(p))
}

pub(super) fn group_prefix(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    }
}

/// The chain of one policy in one direction.
pub fn policy_chain_name(p: &PolicyView, d: Direction) -> String {
    stable_name(&format!("{}-pol", group_prefix(d)), &(&p.namespace, &p.name))
}

fn policy_chain(
    p: &PolicyView,
    direction: Direction,
    pods: &[PodView],
    by_ns: &BTreeMap<&str, Vec<&PodView>>,
    all_ns: &BTreeMap<&str, &NamespaceView>,
    state: &mut PolicyState,
) -> PolicyChain {
    let mut allows = Vec::new();
    for (i, rule) in p.rules(direction).iter().enumerate() {
        let peers: Vec<PeerMatch> = if rule.peers.is_empty() {
            vec![PeerMatch::Any]
        } else {
            rule.peers.iter().map(|peer| PeerMatch::Set(peer_set(np_set_key(p, peer), by_ns, all_ns, state))).collect()
        };
        let ports = ports_matches(&rule.ports, pods, state);
        for peer in &peers {
            for ports in &ports {
                allows.push(Allow { rule: i, peer: peer.clone(), ports: ports.clone() });
            }
        }
    }
    PolicyChain { policy: format!("{}/{}", p.namespace, p.name), direction, allows }
}

/// The set key of a NetworkPolicy peer.
fn np_set_key<'a>(p: &'a PolicyView, peer: &'a Peer) -> SetKey<'a> {
    match peer {
        Peer::Pods { namespaces: Namespaces::Own, pods } => {
            SetKey::Pods { namespace: Some(&p.namespace), namespaces: None, pods }
        }
        Peer::Pods { namespaces: Namespaces::Matching(ns), pods } => {
            SetKey::Pods { namespace: None, namespaces: Some(ns), pods }
        }
        Peer::Block { cidr, except } => SetKey::Block { cidr, except },
    }
}

/// The address set of one peer (computed once per distinct key).
pub(super) fn peer_set(
    key: SetKey,
    by_ns: &PodsByNamespace,
    all_ns: &BTreeMap<&str, &NamespaceView>,
    state: &mut PolicyState,
) -> String {
    let name = stable_name("peer", &key);
    if state.sets.contains_key(&name) {
        return name;
    }
    let set = match key {
        SetKey::Pods { namespace, namespaces, pods: sel } => {
            let in_scope = |ns: &str| match (namespace, namespaces) {
                (Some(own), _) => ns == own,
                (None, Some(s)) => all_ns.get(ns).is_some_and(|n| s.matches(&n.labels)),
                (None, None) => false,
            };
            let mut ips: Vec<IpAddr> = by_ns
                .iter()
                .filter(|(ns, _)| in_scope(ns))
                .flat_map(|(_, pods)| pods.iter())
                .filter(|pod| sel.matches(&pod.labels))
                .flat_map(|pod| pod.ips.iter().copied())
                .collect();
            ips.sort();
            ips.dedup();
            let about = match (namespace, namespaces) {
                (Some(own), _) => format!("pods {sel} in namespace {own}"),
                (None, Some(ns)) => format!("pods {sel} in namespaces {ns}"),
                (None, None) => format!("pods {sel} nowhere"),
            };
            AddressSet { about, ranges: ips.into_iter().map(|ip| (ip, ip)).collect(), intervals: false }
        }
        SetKey::Block { cidr, except } => {
            let ex: Vec<String> = except.iter().map(|e| e.to_string()).collect();
            let about = if ex.is_empty() {
                format!("ipBlock {cidr}")
            } else {
                format!("ipBlock {cidr} except {}", ex.join(","))
            };
            AddressSet { about, ranges: block_ranges(cidr, except), intervals: true }
        }
        SetKey::Networks(nets) => {
            let about = format!("networks {}", nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","));
            let ranges = merge_addresses(nets.iter().flat_map(|n| block_ranges(n, &[])).collect());
            AddressSet { about, ranges, intervals: true }
        }
    };
    state.sets.insert(name.clone(), set);
    name
}

/// Sorts and merges overlapping or adjacent address ranges (an interval
/// set refuses overlapping elements), each family apart.
fn merge_addresses(mut r: Vec<(IpAddr, IpAddr)>) -> Vec<(IpAddr, IpAddr)> {
    r.sort();
    let mut out: Vec<(IpAddr, IpAddr)> = Vec::new();
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if last.1.is_ipv6() == a.is_ipv6() && to_num(a) <= to_num(last.1).saturating_add(1) => {
                last.1 = last.1.max(b)
            }
            _ => out.push((a, b)),
        }
    }
    out
}

/// The rule's ports as match forms: one per protocol for numbers (ranges
/// merged), one per named port.
pub(super) fn ports_matches(ports: &[Port], pods: &[PodView], state: &mut PolicyState) -> Vec<PortsMatch> {
    if ports.is_empty() {
        return vec![PortsMatch::Any];
    }
    let mut whole: BTreeSet<Protocol> = BTreeSet::new();
    let mut ranges: BTreeMap<Protocol, Vec<(u16, u16)>> = BTreeMap::new();
    let mut named: BTreeSet<(Protocol, &str)> = BTreeSet::new();
    for port in ports {
        match &port.port {
            PortMatch::All => {
                whole.insert(port.protocol);
            }
            PortMatch::Range(a, b) => ranges.entry(port.protocol).or_default().push((*a, *b)),
            PortMatch::Named(n) => {
                named.insert((port.protocol, n));
            }
        }
    }
    let mut out: Vec<PortsMatch> = whole.iter().map(|p| PortsMatch::Protocol(*p)).collect();
    for (proto, r) in ranges {
        if !whole.contains(&proto) {
            out.push(PortsMatch::Ranges(proto, merge(r)));
        }
    }
    for (proto, n) in named {
        if !whole.contains(&proto) {
            out.push(PortsMatch::Named(proto, port_set(proto, n, pods, state)));
        }
    }
    out
}

/// The named-port set for (protocol, name): every policy pod that has it.
fn port_set(protocol: Protocol, name: &str, pods: &[PodView], state: &mut PolicyState) -> String {
    let set = stable_name("port", &(protocol, name));
    if !state.port_sets.contains_key(&set) {
        let mut elements: Vec<(IpAddr, u16)> = pods
            .iter()
            .filter(|p| is_policy_pod(p))
            .filter_map(|p| p.named_port(name, protocol).map(|n| (p, n)))
            .flat_map(|(p, n)| p.ips.iter().map(move |ip| (*ip, n)))
            .collect();
        elements.sort();
        elements.dedup();
        state.port_sets.insert(set.clone(), PortSet { name: name.to_string(), protocol, elements });
    }
    set
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge(mut r: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    r.sort();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// An address as a number in its family's space, and back.
fn to_num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_num(n: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(n.into())
    } else {
        // Values come from IPv4 networks, so they fit.
        IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
    }
}

fn net_range(n: &IpNetwork) -> (u128, u128) {
    let bits = if n.is_ipv6() { 128 } else { 32 };
    let start = to_num(n.network());
    let host = if n.prefix() == 0 && bits == 128 { u128::MAX } else { (1u128 << (bits - u32::from(n.prefix()))) - 1 };
    (start, start | host)
}

/// An `except` in the family of its block. IPv4-mapped IPv6 and IPv4 are
/// two spellings of the same addresses (Go's parser, which other
/// implementations use, reads `::ffff:10.0.0.0/104` as 10.0.0.0/8), so an
/// exception in the other spelling still applies: dropping it would widen
/// the block. `None` for an exception with no address in the family.
fn except_in_family(e: &IpNetwork, v6: bool) -> Option<IpNetwork> {
    const MAPPED: u128 = 0xffff_0000_0000;
    match (e, v6) {
        (IpNetwork::V4(_), false) | (IpNetwork::V6(_), true) => Some(*e),
        (IpNetwork::V4(n), true) => IpNetwork::new(IpAddr::V6(n.network().to_ipv6_mapped()), n.prefix() + 96).ok(),
        (IpNetwork::V6(n), false) => {
            let (a, b) = net_range(e);
            if n.prefix() >= 96 && a >> 32 == MAPPED >> 32 {
                IpNetwork::new(IpAddr::from(std::net::Ipv4Addr::from(a as u32)), n.prefix() - 96).ok()
            } else if a <= MAPPED && MAPPED | 0xffff_ffff <= b {
                IpNetwork::new(IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED), 0).ok()
            } else {
                None
            }
        }
    }
}

/// `cidr` minus every `except` (in its family, [`except_in_family`]) as
/// disjoint ranges.
pub fn block_ranges(cidr: &IpNetwork, except: &[IpNetwork]) -> Vec<(IpAddr, IpAddr)> {
    let v6 = cidr.is_ipv6();
    let mut ranges = vec![net_range(cidr)];
    for e in except.iter().filter_map(|e| except_in_family(e, v6)) {
        let (ea, eb) = net_range(&e);
        ranges = ranges
            .into_iter()
            .flat_map(|(a, b)| {
                let mut keep = Vec::new();
                if eb < a || ea > b {
                    keep.push((a, b));
                } else {
                    if ea > a {
                        keep.push((a, ea - 1));
                    }
                    if eb < b {
                        keep.push((eb + 1, b));
                    }
                }
                keep
            })
            .collect();
    }
    ranges.into_iter().map(|(a, b)| (from_num(a, v6), from_num(b, v6))).collect()
}

#[cfg(test)]
pub mod fixtures {
    //! Builders for policy inputs (controller-rs fixtures style).

    use std::collections::BTreeMap;

    use crate::wire_policy::*;

    pub fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    pub fn sel(kv: &[(&str, &str)]) -> Selector {
        Selector { labels: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), exprs: vec![] }
    }

    /// A running pod on `node` with an IPv4 and an IPv6 address derived from `n`.
    pub fn pod(ns: &str, name: &str, node: &str, n: u8, kv: &[(&str, &str)]) -> PodView {
        let node_n: u8 = node.trim_start_matches("node").parse().unwrap_or(9);
        PodView {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{ns}-{name}"),
            labels: labels(kv),
            ips: vec![
                format!("10.244.{node_n}.{n}").parse().unwrap(),
                format!("fd00:10:244:{node_n}::{n:x}").parse().unwrap(),
            ],
            node: node.into(),
            host_network: false,
            terminating: false,
            ports: vec![],
        }
    }

    pub fn with_port(mut p: PodView, name: &str, proto: Protocol, port: u16) -> PodView {
        p.ports.push(NamedPort { name: name.into(), protocol: proto, port });
        p.ports.sort();
        p
    }

    pub fn ns(name: &str, kv: &[(&str, &str)]) -> NamespaceView {
        let mut l = labels(kv);
        l.insert("kubernetes.io/metadata.name".into(), name.into());
        NamespaceView { name: name.into(), labels: l }
    }

    /// A policy isolating `pod_selector` in ns for the directions whose rule lists are Some.
    pub fn netpol(ns: &str, name: &str, pod_selector: Selector) -> PolicyView {
        PolicyView {
            namespace: ns.into(),
            name: name.into(),
            pod_selector,
            ingress_isolated: false,
            egress_isolated: false,
            ingress: vec![],
            egress: vec![],
            acceptance: Default::default(),
        }
    }

    pub fn ingress(mut p: PolicyView, rules: Vec<Rule>) -> PolicyView {
        p.ingress_isolated = true;
        p.ingress = rules;
        p
    }

    pub fn egress(mut p: PolicyView, rules: Vec<Rule>) -> PolicyView {
        p.egress_isolated = true;
        p.egress = rules;
        p
    }

    pub fn rule(peers: Vec<Peer>, ports: Vec<Port>) -> Rule {
        Rule { peers, ports }
    }

    pub fn pods_in_own(s: Selector) -> Peer {
        Peer::Pods { namespaces: Namespaces::Own, pods: s }
    }

    pub fn pods_in(ns: Selector, s: Selector) -> Peer {
        Peer::Pods { namespaces: Namespaces::Matching(ns), pods: s }
    }

    pub fn block(cidr: &str, except: &[&str]) -> Peer {
        Peer::Block { cidr: cidr.parse().unwrap(), except: except.iter().map(|e| e.parse().unwrap()).collect() }
    }

    pub fn tcp(port: u16) -> Port {
        Port { protocol: Protocol::Tcp, port: PortMatch::Range(port, port) }
    }

    pub fn port_range(proto: Protocol, a: u16, b: u16) -> Port {
        Port { protocol: proto, port: PortMatch::Range(a, b) }
    }

    pub fn named(proto: Protocol, name: &str) -> Port {
        Port { protocol: proto, port: PortMatch::Named(name.into()) }
    }

    pub fn all_of(proto: Protocol) -> Port {
        Port { protocol: proto, port: PortMatch::All }
    }

    pub fn by_name(pods: &[PodView]) -> BTreeMap<String, PodView> {
        pods.iter().map(|p| (format!("{}/{}", p.namespace, p.name), p.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn policy_namespaces_list_isolating_policies_by_direction() {
        let policies = [
            ingress(netpol("a", "deny", sel(&[])), vec![]),
            egress(netpol("b", "dns", sel(&[("app", "x")])), vec![]),
            egress(ingress(netpol("c", "both", sel(&[])), vec![]), vec![]),
            netpol("d", "isolates-nothing", sel(&[])),
        ];
        let list = policy_namespaces(&policies, &[], &[]);
        let names = |s: &std::collections::BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();
        assert_eq!(names(&list.ingress), ["a", "c"]);
        assert_eq!(names(&list.egress), ["b", "c"]);
        assert_eq!(list.group_for("c"), libweft::pending::PENDING_BOTH_GROUP);
        assert_eq!(list.group_for("d"), libweft::pending::READY_GROUP);
        assert_eq!(policy_namespaces(&[], &[], &[]).to_json(), b"{\"version\":1,\"ingress\":[],\"egress\":[]}\n");
    }

    #[test]
    fn only_the_live_local_pod_with_the_recorded_uid_and_exactly_the_addresses_is_known() {
        let pods = [pod("a", "p", "node1", 5, &[]), pod("a", "q", "node2", 6, &[])];
        let (p, uid) = (&pods[0].ips, Some(pods[0].uid.as_str()));
        assert!(knows_local_pod("node1", &pods, uid, p));
        assert!(!knows_local_pod("node1", &pods, uid, &p[..1]), "not all of the pod's addresses");
        assert!(!knows_local_pod("node1", &pods, None, p), "no UID recorded: addresses alone never do");
        assert!(!knows_local_pod("node1", &pods, Some("uid-a-other"), p), "another pod's UID");
        assert!(!knows_local_pod("node2", &pods, Some(pods[1].uid.as_str()), p), "another pod's addresses");
        assert!(!knows_local_pod("node1", &pods, Some(pods[1].uid.as_str()), &pods[1].ips), "another node's pod");
        assert!(!knows_local_pod("node1", &pods, uid, &[p[0], p[1], pods[1].ips[0]]), "addresses of two pods");
        assert!(!knows_local_pod("node1", &pods, uid, &[]), "an interface without addresses");
    }

    #[test]
    fn a_terminating_claimant_of_the_address_never_releases_the_new_pods_veth() {
        // The old pod is terminating (or its deletion not yet seen); its
        // address was freed at DEL and handed to a new pod, whose veth is
        // pending and records the new pod's UID.
        let mut old = pod("a", "old", "node1", 5, &[]);
        old.terminating = true;
        let new = pod("a", "new", "node1", 5, &[]);
        let (uid, veth_ips) = (new.uid.clone(), new.ips.clone());
        let veth_uid = Some(uid.as_str());
        let cidrs: Vec<ipnetwork::IpNetwork> =
            vec!["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()];
        let node_cidrs = std::collections::HashMap::from([("node1", cidrs.as_slice())]);
        let believed = |pods: Vec<PodView>| crate::desired::pod_trust::believe(pods, &node_cidrs).pods;

        // The new pod is not in the API view yet: the old pod alone claims
        // the address, and is believed for it, but it is not the veth's pod.
        let view = believed(vec![old.clone()]);
        assert_eq!(view[0].ips, veth_ips, "the terminating pod's claim is believed");
        assert!(!knows_local_pod("node1", &view, veth_uid, &veth_ips));
        // Even were the old pod's deletion not seen at all.
        let mut stale = old.clone();
        stale.terminating = false;
        assert!(!knows_local_pod("node1", &believed(vec![stale]), veth_uid, &veth_ips));
        // The new pod appears: it keeps the address, and its veth is released.
        let view = believed(vec![old, new]);
        assert!(knows_local_pod("node1", &view, veth_uid, &veth_ips));
        // The new pod itself terminating is not released either: it is on its way out.
        let mut leaving = view.clone();
        leaving.iter_mut().for_each(|p| p.terminating = true);
        assert!(!knows_local_pod("node1", &leaving, veth_uid, &veth_ips));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pods_selected_by_no_policy_are_absent_and_selected_ones_map_to_a_shared_group() {
        let pods = vec![
            pod("a", "web1", "node1", 5, &[("app", "web")]),
            pod("a", "web2", "node1", 6, &[("app", "web")]),
            pod("a", "db", "node1", 7, &[("app", "db")]),
            pod("a", "web3", "node2", 5, &[("app", "web")]),
        ];
        let policies = vec![ingress(netpol("a", "deny", sel(&[("app", "web")])), vec![])];
        let s = policy("node1", &pods, &[ns("a", &[])], &policies);
        let keys: Vec<IpAddr> = s.ingress.keys().copied().collect();
        assert_eq!(keys, vec![ip("10.244.1.5"), ip("10.244.1.6"), ip("fd00:10:244:1::5"), ip("fd00:10:244:1::6")]);
        assert!(s.egress.is_empty(), "an ingress-only policy leaves egress untouched");
        assert_eq!(s.groups.len(), 1, "pods with the same policies share a group chain");
        let chain = s.chains.values().next().unwrap();
        assert!(chain.allows.is_empty(), "deny-all: nothing to accept");
        // Another node sees none of node1's pods.
        assert!(policy("node3", &pods, &[], &policies).ingress.is_empty());
    }

    #[test]
    fn host_network_pods_are_neither_enforced_on_nor_peers() {
        let mut host = pod("a", "h", "node1", 9, &[("app", "web")]);
        host.host_network = true;
        host.ips = vec![ip("198.51.100.11")];
        let client = pod("a", "c", "node1", 3, &[("app", "web")]);
        let policies =
            vec![ingress(netpol("a", "p", sel(&[("app", "web")])), vec![rule(vec![pods_in_own(sel(&[]))], vec![])])];
        let s = policy("node1", &[host, client], &[ns("a", &[])], &policies);
        assert!(!s.ingress.contains_key(&ip("198.51.100.11")));
        let set = s.sets.values().next().unwrap();
        assert!(!set.contains(ip("198.51.100.11")) && set.contains(ip("10.244.1.3")));
    }

    #[test]
    fn equal_selectors_share_one_set_and_names_are_stable() {
        let pods = vec![pod("a", "x", "node1", 5, &[("app", "x")]), pod("a", "y", "node1", 6, &[("app", "y")])];
        let peer = || rule(vec![pods_in_own(sel(&[("app", "y")]))], vec![]);
        let policies = vec![
            ingress(netpol("a", "p1", sel(&[("app", "x")])), vec![peer()]),
            ingress(netpol("a", "p2", sel(&[])), vec![peer(), peer()]),
            // Same selector in another namespace: another set.
            ingress(netpol("b", "p3", sel(&[])), vec![peer()]),
        ];
        let pods_b = [pods.clone(), vec![pod("b", "z", "node1", 7, &[])]].concat();
        let s = policy("node1", &pods_b, &[ns("a", &[]), ns("b", &[])], &policies);
        assert_eq!(s.sets.len(), 2, "{:?}", s.sets);
        let again = policy(
            "node1",
            &pods_b,
            &[ns("b", &[]), ns("a", &[])],
            &[policies[2].clone(), policies[0].clone(), policies[1].clone()],
        );
        assert_eq!(s, again, "input order does not matter");
    }

    #[test]
    fn a_pod_change_is_an_element_change() {
        let mut pods =
            vec![pod("a", "srv", "node1", 5, &[("app", "srv")]), pod("a", "cli", "node2", 5, &[("role", "cli")])];
        let policies = vec![ingress(
            netpol("a", "p", sel(&[("app", "srv")])),
            vec![rule(vec![pods_in_own(sel(&[("role", "cli")]))], vec![tcp(80)])],
        )];
        let before = policy("node1", &pods, &[ns("a", &[])], &policies);
        pods.push(pod("a", "cli2", "node3", 8, &[("role", "cli")]));
        pods.push(pod("a", "srv2", "node1", 6, &[("app", "srv")]));
        let after = policy("node1", &pods, &[ns("a", &[])], &policies);
        assert_eq!(before.chains, after.chains, "no rule changes");
        assert_eq!(before.groups, after.groups);
        assert_eq!(before.sets.keys().collect::<Vec<_>>(), after.sets.keys().collect::<Vec<_>>());
        assert_eq!(after.ingress.len(), before.ingress.len() + 2);
        let set = after.sets.values().next().unwrap();
        assert!(set.contains(ip("10.244.3.8")) && set.contains(ip("fd00:10:244:3::8")));
    }

    #[test]
    fn ip_blocks_subtract_their_exceptions_in_both_families() {
        let r = block_ranges(
            &"10.0.0.0/8".parse().unwrap(),
            &["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
        );
        assert_eq!(r, vec![(ip("10.0.0.0"), ip("10.0.255.255")), (ip("10.2.0.0"), ip("10.255.255.255"))]);
        let r = block_ranges(&"::/0".parse().unwrap(), &["fd00:10:244:1::/64".parse().unwrap()]);
        assert_eq!(r[0], (ip("::"), ip("fd00:10:244:0:ffff:ffff:ffff:ffff")));
        assert_eq!(r[1], (ip("fd00:10:244:2::"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(block_ranges(&"10.0.0.0/24".parse().unwrap(), &["10.0.0.0/16".parse().unwrap()]).is_empty());
        assert_eq!(block_ranges(&"0.0.0.0/0".parse().unwrap(), &[]), vec![(ip("0.0.0.0"), ip("255.255.255.255"))]);
    }

    #[test]
    fn ipv4_mapped_exceptions_still_apply_and_never_widen_a_block() {
        let ranges = |cidr: &str, except: &[&str]| {
            block_ranges(&cidr.parse().unwrap(), &except.iter().map(|e| e.parse().unwrap()).collect::<Vec<_>>())
        };
        let v4 = vec![(ip("0.0.0.0"), ip("9.255.255.255")), (ip("11.0.0.0"), ip("255.255.255.255"))];
        assert_eq!(ranges("0.0.0.0/0", &["::ffff:10.0.0.0/104"]), v4, "mapped except on an IPv4 block");
        assert!(ranges("10.0.0.0/8", &["::ffff:0:0/96"]).is_empty(), "all of IPv4, spelt mapped");
        assert!(ranges("10.0.0.0/8", &["::/0"]).is_empty(), "an IPv6 except holding all the mapped space");
        assert_eq!(ranges("10.0.0.0/8", &["fd00::/8"]), vec![(ip("10.0.0.0"), ip("10.255.255.255"))]);
        let r = ranges("::ffff:0:0/96", &["10.0.0.0/8"]);
        assert!(!r.iter().any(|(a, b)| *a <= ip("::ffff:10.1.2.3") && ip("::ffff:10.1.2.3") <= *b), "{r:?}");
    }

    #[test]
    fn ports_group_by_protocol_and_named_ports_resolve_per_pod() {
        let pods = vec![
            with_port(pod("a", "s1", "node1", 5, &[("app", "s")]), "http", Protocol::Tcp, 8080),
            with_port(pod("a", "s2", "node1", 6, &[("app", "s")]), "http", Protocol::Tcp, 9090),
            with_port(pod("a", "s3", "node2", 6, &[("app", "s")]), "http", Protocol::Udp, 7070),
        ];
        let policies = vec![ingress(
            netpol("a", "p", sel(&[("app", "s")])),
            vec![rule(
                vec![],
                vec![
                    tcp(80),
                    port_range(Protocol::Tcp, 81, 90),
                    tcp(443),
                    port_range(Protocol::Udp, 53, 53),
                    named(Protocol::Tcp, "http"),
                ],
            )],
        )];
        let s = policy("node1", &pods, &[ns("a", &[])], &policies);
        let allows = &s.chains.values().next().unwrap().allows;
        assert_eq!(allows[0].ports, PortsMatch::Ranges(Protocol::Tcp, vec![(80, 90), (443, 443)]));
        assert_eq!(allows[1].ports, PortsMatch::Ranges(Protocol::Udp, vec![(53, 53)]));
        let PortsMatch::Named(Protocol::Tcp, set) = &allows[2].ports else { panic!("{allows:?}") };
        let elems = &s.port_sets[set].elements;
        assert!(elems.contains(&(ip("10.244.1.5"), 8080)) && elems.contains(&(ip("10.244.1.6"), 9090)));
        assert!(elems.contains(&(ip("fd00:10:244:1::6"), 9090)));
        assert!(!elems.iter().any(|(_, p)| *p == 7070), "UDP http is another port");
    }
}
