//! ClusterNetworkPolicy's part of [`super::policy::policy_with_tiers`]:
//! which tiered policies select a local pod, and each policy's chain.
//!
//! The semantics (module `sigs.k8s.io/network-policy-api` v0.3.0):
//! - the Admin tier is evaluated first, policies by ascending priority
//!   (ties: by name, weft's choice: the API leaves it undefined), rules in
//!   their order; the first rule matching decides. Accept: allowed, no
//!   NetworkPolicy or Baseline rule is consulted. Deny: dropped. Pass: the
//!   rest of the Admin tier is skipped, NetworkPolicy decides next;
//! - a pod that NetworkPolicy isolates in that direction is decided there
//!   (allowed or dropped), and the Baseline tier is never consulted;
//! - otherwise the Baseline tier, in the same order: Accept allows, Deny
//!   drops, Pass skips the rest of the tier, to the default;
//! - the default: allowed.
//!
//! In nftables (see [`super::policy_table`]) a policy is one chain per
//! direction whose rules end in `accept`, a counted `drop`, or (Pass)
//! `return`. The Admin policies of a group sit in a **tier chain**, so that
//! a Pass returns from the whole tier: the tier chain jumps to each policy
//! chain and, after it, matches that policy's Pass rules again with
//! `return` (a policy chain returns both for a Pass and when nothing
//! matched; only a Pass rule matches again, since everything before it in
//! the chain ended in a verdict). Baseline's Pass leads to the default, so
//! it is rendered as `accept`.

use std::collections::BTreeMap;

use libweft::pending::PolicyNamespaces;

use super::policy::{
    PeerMatch, PodsByNamespace, PolicyState, PortsMatch, SetKey, group_prefix, peer_set, ports_matches, stable_name,
};
use crate::wire_cluster_policy::{Action, ClusterPeer, ClusterPolicyView, ClusterRule, Subject, Tier};
use crate::wire_policy::{Direction, NamespaceView, PodView, Selector};

/// One ClusterNetworkPolicy's rules for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterChain {
    /// The policy's name.
    pub policy: String,
    pub tier: Tier,
    pub priority: u32,
    pub direction: Direction,
    /// In evaluation order.
    pub rules: Vec<ClusterMatch>,
}

/// One nft rule of a cluster chain: a rule's peer and port form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMatch {
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub rule: usize,
    /// The rule's `name` (may be empty).
    pub name: String,
    pub action: Action,
    pub peer: PeerMatch,
    pub ports: PortsMatch,
}

/// The policies in evaluation order: tier, priority, name.
pub fn in_order(cluster: &[ClusterPolicyView]) -> Vec<&ClusterPolicyView> {
    let mut v: Vec<&ClusterPolicyView> = cluster.iter().collect();
    v.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    v
}

/// Whether `c`'s subject selects `pod` (a policy pod). A namespace weft
/// has not seen matches no selector: unknown labels must not widen it.
pub fn subject_selects(c: &ClusterPolicyView, pod: &PodView, all_ns: &BTreeMap<&str, &NamespaceView>) -> bool {
    let in_ns = |sel: &Selector| all_ns.get(pod.namespace.as_str()).is_some_and(|n| sel.matches(&n.labels));
    match &c.subject {
        Subject::Namespaces(ns) => in_ns(ns),
        Subject::Pods { namespaces, pods } => in_ns(namespaces) && pods.matches(&pod.labels),
    }
}

/// The policies of each tier that select a pod in one direction, in order.
#[derive(Debug, Default)]
pub struct Selecting<'a> {
    pub admin: Vec<&'a ClusterPolicyView>,
    pub baseline: Vec<&'a ClusterPolicyView>,
}

/// The policies (`ordered` by [`in_order`]) with rules in `d` whose
/// subject selects `pod`. A policy with no rules in a direction does not
/// affect it.
pub fn selecting<'a>(
    ordered: &[&'a ClusterPolicyView],
    pod: &PodView,
    d: Direction,
    all_ns: &BTreeMap<&str, &NamespaceView>,
) -> Selecting<'a> {
    let mut out = Selecting::default();
    for c in ordered.iter().filter(|c| !c.rules(d).is_empty() && subject_selects(c, pod, all_ns)) {
        match c.tier {
            Tier::Admin => out.admin.push(c),
            Tier::Baseline => out.baseline.push(c),
        }
    }
    out
}

/// The chain of one policy in one direction.
pub fn chain_name(c: &ClusterPolicyView, d: Direction) -> String {
    stable_name(&format!("{}-cnp", group_prefix(d)), &c.name)
}

/// Adds the Admin tier chain of `admin` (in order) to `state`; its name.
/// The name covers the policies' Pass rules too, which the tier chain
/// repeats: a policy whose Pass rules change gets a new tier chain.
pub fn admin_tier(admin: &[&ClusterPolicyView], d: Direction, state: &mut PolicyState) -> Option<String> {
    if admin.is_empty() {
        return None;
    }
    let chains: Vec<String> = admin.iter().map(|c| chain_name(c, d)).collect();
    let passes: Vec<Vec<&ClusterRule>> =
        admin.iter().map(|c| c.rules(d).iter().filter(|r| r.action == Action::Pass).collect()).collect();
    let name = stable_name(&format!("{}-adm", group_prefix(d)), &(&chains, &passes));
    state.tiers.entry(name.clone()).or_insert(chains);
    Some(name)
}

/// The chain of policy `c` in direction `d`, with its peer and port sets
/// added to `state`.
pub fn chain(
    c: &ClusterPolicyView,
    d: Direction,
    pods: &[PodView],
    by_ns: &PodsByNamespace,
    all_ns: &BTreeMap<&str, &NamespaceView>,
    state: &mut PolicyState,
) -> ClusterChain {
    let mut rules = Vec::new();
    for (i, rule) in c.rules(d).iter().enumerate() {
        let peers: Vec<PeerMatch> = if rule.peers.is_empty() {
            vec![PeerMatch::Any]
        } else {
            rule.peers
                .iter()
                .map(|peer| {
                    let key = match peer {
                        ClusterPeer::Pods { namespaces, pods } => {
                            SetKey::Pods { namespace: None, namespaces: Some(namespaces), pods }
                        }
                        ClusterPeer::Networks(nets) => SetKey::Networks(nets),
                    };
                    PeerMatch::Set(peer_set(key, by_ns, all_ns, state))
                })
                .collect()
        };
        let ports = ports_matches(&rule.ports, pods, state);
        for peer in &peers {
            for ports in &ports {
                rules.push(ClusterMatch {
                    rule: i,
                    name: rule.name.clone(),
                    action: rule.action,
                    peer: peer.clone(),
                    ports: ports.clone(),
                });
            }
        }
    }
    ClusterChain { policy: c.name.clone(), tier: c.tier, priority: c.priority, direction: d, rules }
}

/// Adds to `list` the namespaces some policy's subject may select, in the
/// directions it has rules for: the plugin holds new pods there until
/// their rules are in place. Which pods a `pods` subject selects depends
/// on labels the plugin cannot know, so the whole namespace counts.
pub fn subject_namespaces(cluster: &[ClusterPolicyView], namespaces: &[NamespaceView], list: &mut PolicyNamespaces) {
    for c in cluster {
        let sel = match &c.subject {
            Subject::Namespaces(ns) | Subject::Pods { namespaces: ns, .. } => ns,
        };
        for ns in namespaces.iter().filter(|n| sel.matches(&n.labels)) {
            if !c.ingress.is_empty() {
                list.ingress.insert(ns.name.clone());
            }
            if !c.egress.is_empty() {
                list.egress.insert(ns.name.clone());
            }
        }
    }
}
