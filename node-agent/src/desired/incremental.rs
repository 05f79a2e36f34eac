//! The desired state kept between passes and brought up to date for the
//! Nodes that changed, so that a pass for one Node event costs work for
//! that Node, not for every Node in the cluster.
//!
//! [`compute`] stays the definition: a full pass (at start, at the resync,
//! after lost kernel notifications, whenever anything but a peer changed)
//! calls it and seeds the cache from its peers. Between full passes a
//! peer's entries are a function of that peer alone ([`peer_entries`]) as
//! long as no peer is refused: without conflicting claims, whether a peer
//! is believed does not depend on the other peers or their order. So the
//! cache is kept only while no peer is refused, and a changed peer that
//! would be refused (it claims what another holds, or a MAC not its own)
//! sends the pass back to [`compute`], which decides by age. The tests
//! below check that both ways give the same state for random sequences of
//! Node changes.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::{Claims, Desired, Held, NftTable, PeerEntries, compute, peer_entries};
use crate::config::Config;
use crate::observe::{Observation, Underlay};
use crate::wire::NodeView;

/// The kernel entries (by key) that a pass changed in the desired state:
/// only these need comparing with the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub routes: BTreeSet<IpNetwork>,
    pub neighbours: BTreeSet<IpAddr>,
    pub fdb: BTreeSet<[u8; 6]>,
}

impl Touched {
    fn add(&mut self, e: &PeerEntries) {
        self.routes.extend(e.routes.iter().map(|(dst, _)| *dst));
        self.neighbours.extend(e.neighbours.iter().map(|(ip, _)| *ip));
        self.fdb.extend(e.fdb.iter().map(|(mac, _)| *mac));
    }
}

/// What changed in the desired state since the last call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Computed in full: anything may have changed.
    All,
    /// Only these kernel entries (and the outputs that do not depend on
    /// the peers stayed as they were).
    Entries(Touched),
}

pub use crate::observe::node_views::NodeChange;

/// The desired state of the last pass, and what it takes to update it.
#[derive(Default)]
pub struct Incremental {
    desired: Option<Desired>,
    cache: Option<Cache>,
}

/// Everything the state depends on besides the peers: when any of it
/// changes, everything is computed again.
#[derive(Debug, Clone, PartialEq)]
struct Basis {
    config: Config,
    local: NodeView,
    underlay: Underlay,
    vtep_mac: [u8; 6],
    offload_default: bool,
    portmap_installed: bool,
}

impl Basis {
    fn of(config: &Config, obs: &Observation) -> Basis {
        Basis {
            config: config.clone(),
            local: obs.local.clone(),
            underlay: obs.underlay.clone(),
            vtep_mac: obs.vtep_mac,
            offload_default: obs.offload_default,
            portmap_installed: obs.portmap_installed,
        }
    }

    /// Whether `config` and `obs` have this basis (without copying them).
    fn matches(&self, config: &Config, obs: &Observation) -> bool {
        self.config == *config
            && self.local == obs.local
            && self.underlay == obs.underlay
            && self.vtep_mac == obs.vtep_mac
            && self.offload_default == obs.offload_default
            && self.portmap_installed == obs.portmap_installed
    }
}

/// Per-peer state, kept while no peer is refused (so every peer is believed).
/// A peer's entries are not kept: they are a function of its view and the
/// basis, and computed again when it changes.
struct Cache {
    basis: Basis,
    /// The underlay as `compute` believes it.
    underlay: Underlay,
    /// Whether the VXLAN device is wanted (`peer_entries`' `vxlan`).
    vxlan: bool,
    peers: HashSet<Peer>,
    claims: Claims<Held>,
    /// How many believed nodes have each address (`NftTable::node_ips`).
    node_ips: BTreeMap<IpAddr, usize>,
    /// How many believed peers have each underlay address (`NftTable::vxlan_peers`).
    vxlan_peers: BTreeMap<IpAddr, usize>,
}

/// A believed peer's view, found by its name.
struct Peer(Arc<NodeView>);

impl Borrow<str> for Peer {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Peer) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Peer {}

impl std::hash::Hash for Peer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes: lookups go by `&str` (`Borrow`).
        self.0.name.as_str().hash(state);
    }
}

fn count(counts: &mut BTreeMap<IpAddr, usize>, ips: impl IntoIterator<Item = IpAddr>, add: bool) {
    for ip in ips {
        if add {
            *counts.entry(ip).or_default() += 1;
        } else if let Some(n) = counts.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&ip);
            }
        }
    }
}

fn underlay_ips(n: &NodeView) -> impl Iterator<Item = IpAddr> {
    [n.ip(false), n.ip(true)].into_iter().flatten()
}

impl Cache {
    /// The cache for a state just computed in full; `None` when a peer is
    /// refused there.
    fn seed(config: &Config, obs: &Observation, d: &Desired) -> Option<Cache> {
        if !d.kernel.refused.is_empty() {
            return None;
        }
        let underlay = obs.underlay.believed(&obs.local.addresses);
        let local = &obs.local;
        let mut c = Cache {
            claims: Claims::local(local, &underlay, Held),
            basis: Basis::of(config, obs),
            peers: HashSet::with_capacity(obs.nodes.len()),
            node_ips: BTreeMap::new(),
            vxlan_peers: BTreeMap::new(),
            underlay,
            vxlan: d.kernel.vxlan.is_some(),
        };
        count(&mut c.node_ips, local.addresses.iter().copied(), true);
        for peer in obs.nodes.iter().filter(|n| n.name != local.name) {
            c.claims.take(peer, Held);
            count(&mut c.node_ips, peer.addresses.iter().copied(), true);
            count(&mut c.vxlan_peers, underlay_ips(peer), true);
            c.peers.insert(Peer(peer.clone()));
        }
        Some(c)
    }

    /// What `peer` adds to the kernel state, as `compute` made it.
    fn entries(&self, config: &Config, peer: &NodeView) -> PeerEntries {
        peer_entries(config, &self.underlay, self.vxlan, peer)
    }

    /// Applies the changed peers to `d`; `None` when one of them is refused
    /// (`d` and the cache are then half updated and must be dropped).
    fn apply(&mut self, config: &Config, d: &mut Desired, changes: &[NodeChange]) -> Option<Touched> {
        let mut touched = Touched::default();
        // The last change of each Node counts.
        let changes: BTreeMap<&String, &Option<Arc<NodeView>>> =
            changes.iter().filter(|(name, _)| *name != self.basis.local.name).map(|(n, v)| (n, v)).collect();
        // Every old claim goes first: changed peers may trade addresses.
        let mut skipped_changed = false;
        for name in changes.keys() {
            let Some(Peer(old)) = self.peers.take(name.as_str()) else { continue };
            let entries = self.entries(config, &old);
            self.claims.release(&old);
            count(&mut self.node_ips, old.addresses.iter().copied(), false);
            count(&mut self.vxlan_peers, underlay_ips(&old), false);
            d.kernel.remove_peer(name, &entries);
            if !entries.skipped.is_empty() {
                d.kernel.skipped.retain(|(peer, _)| peer != *name);
                skipped_changed = true;
            }
            touched.add(&entries);
        }
        for (name, new) in changes {
            let Some(new) = new else { continue };
            if self.claims.refusal(new).is_some() {
                return None;
            }
            self.claims.take(new, Held);
            count(&mut self.node_ips, new.addresses.iter().copied(), true);
            count(&mut self.vxlan_peers, underlay_ips(new), true);
            let entries = self.entries(config, new);
            d.kernel.add_peer(name, &entries);
            skipped_changed |= !entries.skipped.is_empty();
            touched.add(&entries);
            self.peers.replace(Peer(new.clone()));
        }
        if skipped_changed {
            // Few peers are ever skipped; this keeps `compute`'s order.
            d.kernel.skipped.sort();
        }
        let (node_ips, vxlan_peers) = (self.node_ips.keys().copied(), self.vxlan_peers.keys().copied());
        if !d.nft.node_ips.iter().copied().eq(node_ips.clone())
            || !d.nft.vxlan_peers.iter().copied().eq(vxlan_peers.clone())
        {
            d.nft = NftTable {
                own_cidrs: d.nft.own_cidrs.clone(),
                node_ips: node_ips.collect(),
                vxlan_peers: vxlan_peers.collect(),
                mss_clamp: d.nft.mss_clamp,
            };
        }
        Some(touched)
    }
}

impl Incremental {
    /// The desired state for `obs`. `changes`: the Nodes that changed since
    /// the last call, or `None` to compute everything (at start, at the
    /// resync, when the kernel mirror is stale, or after a pass that did
    /// not get this far). Returns what changed.
    pub fn update(&mut self, config: &Config, obs: &Observation, changes: Option<&[NodeChange]>) -> (&Desired, Scope) {
        if let (Some(changes), Some(cache), Some(d)) = (changes, &mut self.cache, &mut self.desired)
            && cache.basis.matches(config, obs)
            && let Some(touched) = cache.apply(config, d, changes)
        {
            return (self.desired.as_ref().expect("set above"), Scope::Entries(touched));
        }
        // Dropped before computing: old and new side by side would double
        // the peak memory of every full pass (megabytes per thousand Nodes).
        self.cache = None;
        self.desired = None;
        let d = compute(config, obs);
        self.cache = Cache::seed(config, obs, &d);
        (self.desired.insert(d), Scope::All)
    }

    /// Forgets the cache: the next [`Incremental::update`] computes everything.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::config::Backend;
    use crate::desired::vtep_mac_for;

    /// xorshift64*: a fixed seed gives the same sequence on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    fn local() -> NodeView {
        NodeView {
            name: "n1".into(),
            ipv4: Some(Ipv4Addr::new(198, 51, 100, 1)),
            ipv6: Some("2001:db8:a::1".parse().unwrap()),
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()],
            vtep_mac: Some(vtep_mac_for("n1")),
            addresses: vec!["198.51.100.1".parse().unwrap(), "2001:db8:a::1".parse().unwrap()],
            created: None,
            uid: "uid-n1".into(),
        }
    }

    fn underlay() -> Underlay {
        Underlay {
            ifindex: 2,
            mtu: 1500,
            v4: Some("198.51.100.1/24".parse().unwrap()),
            v6: Some("2001:db8:a::1/64".parse().unwrap()),
        }
    }

    /// A peer drawn from small pools, so that peers often collide on pod
    /// CIDRs, addresses or MACs (and get refused), lack what they need
    /// (and get skipped), or sit on the other underlay segment.
    fn random_peer(rng: &mut Rng, name: &str) -> NodeView {
        let mut cidrs = Vec::new();
        if !rng.chance(10) {
            let k = 10 + rng.below(12) as u8;
            // Now and then a /25 inside another peer's /24.
            let (net, len) =
                if rng.chance(10) { (Ipv4Addr::new(10, 244, k, 128), 25) } else { (Ipv4Addr::new(10, 244, k, 0), 24) };
            cidrs.push(IpNetwork::new(net.into(), len).unwrap());
            if rng.chance(70) {
                let v6: Ipv6Addr = format!("fd00:10:244:{k}::").parse().unwrap();
                cidrs.push(IpNetwork::new(v6.into(), 64).unwrap());
            }
        }
        let ipv4 = (!rng.chance(10)).then(|| {
            let host = 20 + rng.below(16) as u8;
            if rng.chance(20) { Ipv4Addr::new(203, 0, 113, host) } else { Ipv4Addr::new(198, 51, 100, host) }
        });
        let ipv6 = rng.chance(70).then(|| format!("2001:db8:a::{}", 20 + rng.below(16)).parse::<Ipv6Addr>().unwrap());
        let mut addresses: Vec<IpAddr> = ipv4.map(IpAddr::V4).into_iter().chain(ipv6.map(IpAddr::V6)).collect();
        if rng.chance(15) {
            // A status address other nodes may list too.
            addresses.push(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 200 + rng.below(3) as u8)));
        }
        let vtep_mac = match rng.below(20) {
            0 => None,
            1 => Some(vtep_mac_for("someone-else")),
            _ => Some(vtep_mac_for(name)),
        };
        NodeView {
            name: name.into(),
            ipv4,
            ipv6,
            pod_cidrs: cidrs,
            vtep_mac,
            addresses,
            // Few distinct times: ties are decided by UID.
            created: (!rng.chance(5))
                .then(|| Time(k8s_openapi::jiff::Timestamp::from_second(100 + rng.below(5) as i64).unwrap())),
            uid: format!("uid-{}", rng.below(1000)),
        }
    }

    fn observation(nodes: &BTreeMap<String, Arc<NodeView>>, underlay: &Underlay) -> Observation {
        let mut all: Vec<Arc<NodeView>> = nodes.values().cloned().collect();
        all.push(Arc::new(local()));
        Observation {
            local: local(),
            nodes: all,
            underlay: underlay.clone(),
            vtep_mac: vtep_mac_for("n1"),
            offload_default: true,
            portmap_installed: false,
        }
    }

    /// Keys whose value differs between two kernel states.
    fn differing<K: Ord + Copy, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> BTreeSet<K> {
        a.keys().chain(b.keys()).filter(|k| a.get(k) != b.get(k)).copied().collect()
    }

    #[test]
    fn incremental_updates_equal_the_full_computation() {
        for backend in [Backend::Vxlan, Backend::Routes, Backend::Auto] {
            let mut rng = Rng(0x5eed_0000 + backend as u64);
            let mut config = Config::example(backend);
            let mut underlay = underlay();
            let mut nodes: BTreeMap<String, Arc<NodeView>> = BTreeMap::new();
            let mut inc = Incremental::default();
            let mut before = compute(&config, &observation(&nodes, &underlay));
            let (mut incremental, mut full) = (0, 0);
            for step in 0..3000 {
                let mut changes: Vec<NodeChange> = Vec::new();
                // Usually one Node, sometimes a few at once (events that coalesced).
                for _ in 0..if rng.chance(80) { 1 } else { 1 + rng.below(4) } {
                    // Mostly well-behaved peers with their own CIDR and
                    // addresses, so that long runs stay conflict-free.
                    let i = rng.below(24);
                    let name = format!("p{i:02}");
                    let change = if rng.chance(25) {
                        nodes.remove(&name);
                        None
                    } else {
                        let mut peer = random_peer(&mut rng, &name);
                        if rng.chance(90) {
                            let k = 30 + i as u8;
                            peer.pod_cidrs = vec![
                                IpNetwork::new(Ipv4Addr::new(10, 244, k, 0).into(), 24).unwrap(),
                                format!("fd00:10:244:{k}::/64").parse().unwrap(),
                            ];
                            peer.ipv4 = Some(Ipv4Addr::new(198, 51, 100, 100 + i as u8));
                            peer.ipv6 = Some(format!("2001:db8:a::{}", 100 + i).parse().unwrap());
                            peer.addresses = vec![peer.ipv4.unwrap().into(), peer.ipv6.unwrap().into()];
                            peer.vtep_mac = Some(vtep_mac_for(&name));
                        }
                        let peer = Arc::new(peer);
                        nodes.insert(name.clone(), peer.clone());
                        Some(peer)
                    };
                    changes.push((name, change));
                }
                // Now and then something besides the peers changes.
                if rng.chance(2) {
                    config.mtu = config.mtu.map_or(Some(1400), |_| None);
                }
                if rng.chance(2) {
                    underlay.mtu = if underlay.mtu == 1500 { 9000 } else { 1500 };
                }
                let obs = observation(&nodes, &underlay);
                let given = (!rng.chance(3)).then_some(changes.as_slice());
                let (d, scope) = inc.update(&config, &obs, given);
                let want = compute(&config, &obs);
                assert_eq!(*d, want, "{backend:?} step {step}: {changes:?}");
                match scope {
                    Scope::All => full += 1,
                    Scope::Entries(t) => {
                        incremental += 1;
                        let (k0, k1) = (&before.kernel, &want.kernel);
                        assert!(differing(&k0.routes, &k1.routes).is_subset(&t.routes), "step {step}");
                        assert!(differing(&k0.neighbours, &k1.neighbours).is_subset(&t.neighbours), "step {step}");
                        assert!(differing(&k0.fdb, &k1.fdb).is_subset(&t.fdb), "step {step}");
                        assert_eq!(k0.vxlan, k1.vxlan);
                    }
                }
                before = want;
            }
            // The cache must carry most passes, or this test proves nothing.
            assert!(incremental > 1000 && full > 100, "{backend:?}: {incremental} incremental, {full} full passes");
        }
    }

    #[test]
    fn a_pass_for_one_node_touches_only_its_entries() {
        let config = Config::example(Backend::Vxlan);
        let peer = |i: u8| {
            let name = format!("p{i}");
            Arc::new(NodeView {
                vtep_mac: Some(vtep_mac_for(&name)),
                name,
                ipv4: Some(Ipv4Addr::new(198, 51, 100, 100 + i)),
                ipv6: None,
                pod_cidrs: vec![IpNetwork::new(Ipv4Addr::new(10, 244, 10 + i, 0).into(), 24).unwrap()],
                addresses: vec![IpAddr::V4(Ipv4Addr::new(198, 51, 100, 100 + i))],
                created: None,
                uid: format!("uid-p{i}"),
            })
        };
        let mut nodes: BTreeMap<String, Arc<NodeView>> = (1..=50).map(|i| (format!("p{i}"), peer(i))).collect();
        let mut inc = Incremental::default();
        let (_, scope) = inc.update(&config, &observation(&nodes, &underlay()), None);
        assert_eq!(scope, Scope::All);
        nodes.insert("p51".into(), peer(51));
        let obs = observation(&nodes, &underlay());
        let (d, scope) = inc.update(&config, &obs, Some(&[("p51".into(), Some(peer(51)))]));
        let vtep: IpAddr = "10.244.61.0".parse().unwrap();
        let want = Touched {
            routes: ["10.244.61.0/24".parse().unwrap()].into(),
            neighbours: [vtep].into(),
            fdb: [vtep_mac_for("p51")].into(),
        };
        assert_eq!(scope, Scope::Entries(want));
        assert!(d.nft.vxlan_peers.contains(&"198.51.100.151".parse().unwrap()));
        // A peer claiming p51's CIDR: refused, and decided by the full computation.
        let mut twin = (*peer(52)).clone();
        twin.pod_cidrs = peer(51).pod_cidrs.clone();
        let twin = Arc::new(twin);
        nodes.insert("p52".into(), twin.clone());
        let (d, scope) = inc.update(&config, &observation(&nodes, &underlay()), Some(&[("p52".into(), Some(twin))]));
        assert_eq!(scope, Scope::All);
        assert_eq!(d.kernel.refused.len(), 1);
    }
}
