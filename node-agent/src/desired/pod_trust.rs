//! Which pod addresses NetworkPolicy believes.
//!
//! A Pod's `status.podIPs` is what its node's kubelet wrote; nothing in
//! the API proves that an address is the pod's. A compromised node, or
//! anyone allowed to write `pods/status`, could claim another pod's
//! address and so join the peer sets that admit that pod, or take over
//! its isolation rules. weft believes an address for a pod only when:
//!
//! - it lies in the `spec.podCIDRs` of the pod's node, and that Node is
//!   one weft believes (not refused by the peer rules): weft's IPAM hands
//!   out addresses from there and nowhere else;
//! - no other pod claims it. While a terminating pod and a live one both
//!   claim it (the address freed at DEL and handed out again during the
//!   old pod's graceful termination), the live one keeps it. An address
//!   two live pods claim is believed for neither: it joins no peer set,
//!   and when it is in this node's podCIDRs it is isolated in both
//!   directions with nothing allowed, so a claim can only close a pod,
//!   never open one.
//!
//! Host-network pods are left as they are: policy ignores them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::desired::policy::{Group, PolicyState};
use crate::wire_policy::PodView;

/// An address of a pod that weft does not believe, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doubt {
    /// `namespace/name`.
    pub pod: String,
    pub ip: IpAddr,
    pub reason: &'static str,
}

/// The pods with only believed addresses, and what was not believed.
#[derive(Debug, Default)]
pub struct Believed {
    pub pods: Vec<PodView>,
    /// Addresses two or more live pods claim.
    pub contested: BTreeSet<IpAddr>,
    pub doubts: Vec<Doubt>,
}

/// Applies the rules above. `node_cidrs`: the podCIDRs of every Node weft
/// believes, by name. Takes the pods by value: a pass has its own copy,
/// and at 10,000 pods another one is not free.
pub fn believe(mut pods: Vec<PodView>, node_cidrs: &HashMap<&str, &[IpNetwork]>) -> Believed {
    let mut out = Believed::default();
    let doubt = |p: &PodView, ip: IpAddr, reason| Doubt { pod: format!("{}/{}", p.namespace, p.name), ip, reason };
    // Outside the node's podCIDRs (or on a node weft does not believe).
    for p in pods.iter_mut().filter(|p| !p.host_network) {
        let cidrs = node_cidrs.get(p.node.as_str()).copied().unwrap_or_default();
        let (kept, refused): (Vec<IpAddr>, Vec<IpAddr>) =
            p.ips.iter().partition(|ip| cidrs.iter().any(|c| c.contains(**ip)));
        for ip in refused {
            let reason = if cidrs.is_empty() {
                "its node is unknown or refused, or has no podCIDRs"
            } else {
                "outside its node's podCIDRs"
            };
            out.doubts.push(doubt(p, ip, reason));
        }
        p.ips = kept;
    }
    // Claimed twice: the live claimants of each address.
    let mut claims: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
    for (i, p) in pods.iter().enumerate().filter(|(_, p)| !p.host_network) {
        for ip in &p.ips {
            claims.entry(*ip).or_default().push(i);
        }
    }
    let mut drop: Vec<(usize, IpAddr, &'static str)> = Vec::new();
    for (ip, who) in claims.into_iter().filter(|(_, who)| who.len() > 1) {
        let live: Vec<usize> = who.iter().copied().filter(|i| !pods[*i].terminating).collect();
        if live.len() == 1 {
            // A terminating pod's claim yields to the live pod's.
            drop.extend(who.iter().filter(|i| pods[**i].terminating).map(|i| (*i, ip, "a live pod holds it now")));
        } else {
            out.contested.insert(ip);
            drop.extend(who.iter().map(|i| (*i, ip, "claimed by more than one pod")));
        }
    }
    for (i, ip, reason) in drop {
        out.doubts.push(doubt(&pods[i], ip, reason));
        pods[i].ips.retain(|a| *a != ip);
    }
    out.pods = pods;
    out
}

/// Isolates the contested addresses in `local_cidrs` (this node's pods)
/// in both directions with nothing allowed.
pub fn hold_contested(state: &mut PolicyState, contested: &BTreeSet<IpAddr>, local_cidrs: &[IpNetwork]) {
    let local: Vec<IpAddr> =
        contested.iter().copied().filter(|ip| local_cidrs.iter().any(|c| c.contains(*ip))).collect();
    if local.is_empty() {
        return;
    }
    // A group isolated by no policy: a chain that only drops.
    let none = Group::isolated_by(vec![]);
    for (prefix, map) in [("in", &mut state.ingress), ("eg", &mut state.egress)] {
        let group = none.name(prefix);
        for ip in &local {
            map.insert(*ip, group.clone());
        }
        state.groups.insert(group, none.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::policy::fixtures::pod;

    fn cidrs() -> HashMap<&'static str, Vec<IpNetwork>> {
        HashMap::from([
            ("node1", vec!["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()]),
            ("node2", vec!["10.244.2.0/24".parse().unwrap(), "fd00:10:244:2::/64".parse().unwrap()]),
        ])
    }

    fn run(pods: &[PodView]) -> Believed {
        let c = cidrs();
        let by_name: HashMap<&str, &[IpNetwork]> = c.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        believe(pods.to_vec(), &by_name)
    }

    fn ips(b: &Believed, name: &str) -> Vec<IpAddr> {
        b.pods.iter().find(|p| p.name == name).map(|p| p.ips.clone()).unwrap()
    }

    #[test]
    fn honest_pods_keep_every_address() {
        let pods = [pod("a", "p1", "node1", 5, &[]), pod("b", "p2", "node2", 5, &[])];
        let b = run(&pods);
        assert_eq!(b.pods, pods);
        assert!(b.doubts.is_empty() && b.contested.is_empty());
    }

    #[test]
    fn an_address_outside_the_nodes_podcidrs_is_not_believed() {
        // p2 on node2 claims node1's pod address 10.244.1.5 (and its own IPv6).
        let mut liar = pod("b", "p2", "node2", 5, &[]);
        liar.ips[0] = "10.244.1.5".parse().unwrap();
        let mut unknown = pod("b", "p3", "node9", 7, &[]);
        unknown.ips.truncate(1);
        let b = run(&[pod("a", "p1", "node1", 5, &[]), liar.clone(), unknown]);
        assert_eq!(ips(&b, "p1"), pod("a", "p1", "node1", 5, &[]).ips, "the victim keeps its address");
        assert_eq!(ips(&b, "p2"), vec![liar.ips[1]]);
        assert!(ips(&b, "p3").is_empty());
        let reasons: Vec<(&str, &str)> = b.doubts.iter().map(|d| (d.pod.as_str(), d.reason)).collect();
        assert_eq!(
            reasons,
            [("b/p2", "outside its node's podCIDRs"), ("b/p3", "its node is unknown or refused, or has no podCIDRs")]
        );
        assert!(b.contested.is_empty());
    }

    #[test]
    fn an_address_two_live_pods_claim_is_believed_for_neither() {
        let victim = pod("a", "victim", "node1", 5, &[]);
        let thief = pod("b", "thief", "node1", 5, &[]);
        let b = run(&[victim.clone(), thief]);
        assert!(ips(&b, "victim").is_empty() && ips(&b, "thief").is_empty());
        assert_eq!(b.contested, victim.ips.iter().copied().collect());
        assert_eq!(b.doubts.len(), 4, "two addresses of two pods: {:?}", b.doubts);
    }

    #[test]
    fn a_terminating_pods_claim_yields_to_the_live_pod() {
        let mut old = pod("a", "old", "node1", 5, &[]);
        old.terminating = true;
        let new = pod("a", "new", "node1", 5, &[]);
        let b = run(&[old, new.clone()]);
        assert_eq!(ips(&b, "new"), new.ips);
        assert!(ips(&b, "old").is_empty());
        assert!(b.contested.is_empty());
        // Two terminating claimants: neither is believed.
        let mut other = pod("a", "other", "node1", 5, &[]);
        other.terminating = true;
        let mut old = pod("a", "old", "node1", 5, &[]);
        old.terminating = true;
        assert_eq!(run(&[old, other]).contested.len(), 2);
    }

    #[test]
    fn contested_local_addresses_are_isolated_with_nothing_allowed() {
        let mut state = PolicyState::default();
        let here: Vec<IpNetwork> = cidrs()["node1"].clone();
        let contested: BTreeSet<IpAddr> =
            ["10.244.1.5", "10.244.2.9"].iter().map(|s| s.parse().unwrap()).collect::<BTreeSet<_>>();
        hold_contested(&mut state, &contested, &here);
        let local: IpAddr = "10.244.1.5".parse().unwrap();
        assert_eq!(state.ingress.keys().collect::<Vec<_>>(), [&local], "only this node's address");
        assert_eq!(state.egress.keys().collect::<Vec<_>>(), [&local]);
        let (gin, geg) = (&state.ingress[&local], &state.egress[&local]);
        assert!(gin.starts_with("in-") && geg.starts_with("eg-"), "{gin} {geg}");
        assert!(
            state.groups[gin] == Group::isolated_by(vec![]) && state.groups[geg] == state.groups[gin],
            "no policy allows anything"
        );
    }
}
