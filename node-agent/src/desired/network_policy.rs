//! The NetworkPolicy part of the desired state, computed from the policy
//! views: the pods believed (only addresses in their node's podCIDRs, each
//! claimed once: [`pod_trust`]), the `inet weft-policy` table's content
//! ([`policy`], with contested addresses held and the configured deny log,
//! and idle when nothing on the node needs its hooks), and the namespaces
//! the plugin keeps new pods pending in. Computing it copies and reads
//! every Pod, so a pass computes it only when one of its inputs changed
//! ([`PolicyInputs`]); other passes apply the last one again.
//!
//! [`pod_trust`]: super::pod_trust
//! [`policy`]: super::policy::policy

use std::collections::HashSet;
use std::sync::Arc;

use libweft::pending::PolicyNamespaces;

use super::pod_trust::{self, Doubt};
use super::policy::{self, PolicyState};
use crate::config::{Config, DenyLog};
use crate::observe::policy_watch::PolicyViews;
use crate::wire::{NodeView, Rejected};
use crate::wire_policy::PodView;

/// What the policy outputs should hold.
#[derive(Debug)]
pub struct DesiredPolicy {
    /// The pods whose addresses are believed (with only those addresses).
    pub pods: Vec<PodView>,
    /// Pod addresses not believed, and why.
    pub doubts: Vec<Doubt>,
    /// The policy table.
    pub state: PolicyState,
    /// The namespaces with isolating policies, for the plugin.
    pub namespaces: PolicyNamespaces,
}

/// Everything [`compute`] reads, as a key cheap to compare: equal keys,
/// equal results. Nothing in it is time-based: holds and the liveness gate
/// are applied, not computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInputs {
    /// Every Pod, Namespace, NetworkPolicy and ClusterNetworkPolicy view
    /// (`PolicyCache::generation`).
    views: u64,
    /// Every Node's name and pod CIDRs, the local one's included
    /// (`Snapshot::pod_cidrs_generation`); the local name never changes.
    pod_cidrs: u64,
    /// The peers the routing part refused, by name: few, compared whole.
    refused: Vec<String>,
    /// The only configuration read; fixed for the agent's life, compared anyway.
    deny_log: Option<DenyLog>,
}

impl PolicyInputs {
    pub fn new(config: &Config, views: u64, pod_cidrs: u64, refused: &[Rejected]) -> PolicyInputs {
        let mut refused: Vec<String> = refused.iter().map(|r| r.node.clone()).collect();
        refused.sort_unstable();
        refused.dedup();
        PolicyInputs { views, pod_cidrs, refused, deny_log: config.deny_log }
    }
}

/// The policy part of the desired state for node `local`, given every
/// Node, the peers the routing part refused (`refused`: their pods'
/// addresses are not believed) and the watches' views.
pub fn compute(
    config: &Config,
    local: &NodeView,
    nodes: &[Arc<NodeView>],
    refused: &[Rejected],
    mut views: PolicyViews,
) -> DesiredPolicy {
    let refused: HashSet<&str> = refused.iter().map(|r| r.node.as_str()).collect();
    let cidrs = nodes
        .iter()
        .filter(|n| n.name == local.name || !refused.contains(n.name.as_str()))
        .map(|n| (n.name.as_str(), n.pod_cidrs.as_slice()))
        .collect();
    let believed = pod_trust::believe(std::mem::take(&mut views.pods), &cidrs);
    let mut state = policy::policy_with_tiers(
        &local.name,
        &believed.pods,
        &views.namespaces,
        &views.policies,
        &views.cluster_policies,
    );
    pod_trust::hold_contested(&mut state, &believed.contested, &local.pod_cidrs);
    state.deny_log = config.deny_log;
    let namespaces = policy::policy_namespaces(&views.policies, &views.cluster_policies, &views.namespaces);
    // A pod the plugin may create pending needs the pending rules on the
    // hook. A pod still pending from an earlier list is no reason: with no
    // isolating policy anywhere, the agent would release it as soon as it
    // knows it.
    state.idle = state.ingress.is_empty()
        && state.egress.is_empty()
        && namespaces.ingress.is_empty()
        && namespaces.egress.is_empty()
        && namespaces.unseen.is_open();
    DesiredPolicy { namespaces, pods: believed.pods, doubts: believed.doubts, state }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, DenyLog};
    use crate::desired::policy::fixtures::{ingress, netpol, ns, pod, sel};

    fn node(name: &str, n: u8) -> Arc<NodeView> {
        Arc::new(NodeView {
            name: name.into(),
            ipv4: None,
            ipv6: None,
            pod_cidrs: vec![
                format!("10.244.{n}.0/24").parse().unwrap(),
                format!("fd00:10:244:{n}::/64").parse().unwrap(),
            ],
            vtep_mac: None,
            addresses: vec![],
            created: None,
            uid: name.into(),
        })
    }

    #[test]
    fn pods_of_refused_peers_are_doubted_and_the_deny_log_comes_from_the_config() {
        let mut cfg = Config::example(Backend::Vxlan);
        cfg.deny_log = Some(DenyLog { group: 5, per_second: 10 });
        let nodes = [node("node1", 1), node("node2", 2), node("node3", 3)];
        let refused = [Rejected {
            node: "node3".into(),
            field: "spec.podCIDRs",
            value: "10.244.3.0/24".into(),
            reason: "claimed by another node".into(),
        }];
        let views = PolicyViews {
            pods: vec![
                pod("a", "srv", "node1", 1, &[("app", "srv")]),
                pod("a", "cli", "node2", 2, &[]),
                pod("a", "x", "node3", 3, &[]),
            ],
            namespaces: vec![ns("a", &[])],
            policies: vec![ingress(netpol("a", "deny", sel(&[("app", "srv")])), vec![])],
            cluster_policies: vec![],
            ..PolicyViews::default()
        };
        let want = compute(&cfg, &nodes[0], &nodes, &refused, views);
        let doubted: HashSet<&str> = want.doubts.iter().map(|d| d.pod.as_str()).collect();
        assert_eq!(doubted, HashSet::from(["a/x"]), "only the refused node's pod: {:?}", want.doubts);
        assert_eq!(want.pods.iter().filter(|p| !p.ips.is_empty()).count(), 2);
        assert_eq!(want.state.deny_log, cfg.deny_log);
        assert!(want.state.ingress.contains_key(&"10.244.1.1".parse().unwrap()), "the local server is isolated");
        assert_eq!(want.namespaces.ingress.len(), 1, "its namespace is listed for the plugin");
        assert!(!want.state.idle);
    }

    #[test]
    fn the_table_is_idle_only_while_no_pod_can_be_isolated_or_pending() {
        let cfg = Config::example(Backend::Vxlan);
        let nodes = [node("node1", 1), node("node2", 2)];
        let views = |policies| PolicyViews {
            pods: vec![pod("a", "srv", "node1", 1, &[("app", "srv")]), pod("b", "x", "node2", 2, &[])],
            namespaces: vec![ns("a", &[]), ns("b", &[])],
            policies,
            cluster_policies: vec![],
            ..PolicyViews::default()
        };
        let idle = |policies| compute(&cfg, &nodes[0], &nodes, &[], views(policies)).state.idle;
        assert!(idle(vec![]), "no policy anywhere");
        // A policy isolating a pod of this node: its group chain needs the hook.
        assert!(!idle(vec![ingress(netpol("a", "deny", sel(&[("app", "srv")])), vec![])]));
        // A policy over no local pod still lists its namespace: a pod created here would start pending.
        let elsewhere =
            compute(&cfg, &nodes[0], &nodes, &[], views(vec![ingress(netpol("b", "deny", sel(&[])), vec![])]));
        assert!(elsewhere.state.ingress.is_empty() && !elsewhere.namespaces.ingress.is_empty());
        assert!(!elsewhere.state.idle);
    }

    #[test]
    fn a_pass_computes_the_policy_only_when_one_of_its_inputs_changed() {
        use std::cell::{Cell, RefCell};

        use ipnetwork::IpNetwork;
        use kube::runtime::watcher::Event;
        use serde_json::json;

        use crate::desired::verdicts::ComputedAt;
        use crate::observe::node_views::Views;
        use crate::wire::WatchedNode;

        let object = |name: &str, n: u8, address: &str| -> WatchedNode {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"podCIDRs": [format!("10.244.{n}.0/24"), format!("fd00:10:244:{n}::/64")]},
                "status": {"addresses": [{"type": "InternalIP", "address": address}]}}))
            .unwrap()
        };
        let cluster: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().unwrap(), "fd00:10:244::/56".parse().unwrap()];
        let mut watched = Views::new("node1", &cluster);
        for e in [
            Event::Init,
            Event::InitApply(object("node1", 1, "198.51.100.11")),
            Event::InitApply(object("node2", 2, "198.51.100.12")),
            Event::InitDone,
        ] {
            watched.event(e);
        }
        let views = || PolicyViews {
            pods: vec![pod("a", "srv", "node1", 1, &[("app", "srv")]), pod("a", "cli", "node2", 2, &[])],
            namespaces: vec![ns("a", &[])],
            policies: vec![ingress(netpol("a", "deny", sel(&[("app", "srv")])), vec![])],
            ..PolicyViews::default()
        };
        let refused_node2 = || Rejected {
            node: "node2".into(),
            field: "spec.podCIDRs",
            value: "10.244.2.0/24".into(),
            reason: "claimed by another node".into(),
        };
        let mut cfg = Config::example(Backend::Vxlan);
        let at = RefCell::new(ComputedAt::<PolicyInputs>::default());
        let computed = Cell::new(0);
        let last = RefCell::new(None);
        // One pass of the agent's policy part: its inputs' key, and `compute`
        // behind the gate. `views_generation` stands for `PolicyCache::generation`
        // (its own tests show it moves with every view).
        let pass = |watched: &mut Views, cfg: &Config, views_generation: u64, refused: &[Rejected]| {
            let snapshot = watched.take();
            let inputs = PolicyInputs::new(cfg, views_generation, snapshot.pod_cidrs_generation, refused);
            let local = snapshot.views.iter().find(|n| n.name == "node1").map(|n| NodeView::clone(n)).unwrap();
            let state = || compute(cfg, &local, &snapshot.views, refused, views()).state;
            let recomputed = at.borrow_mut().recompute(inputs, || {
                computed.set(computed.get() + 1);
                state()
            });
            // What the gate skips is what computing would have given.
            let now = state();
            if let Some(s) = &recomputed {
                last.replace(Some(s.clone()));
            }
            assert_eq!(last.borrow().as_ref(), Some(&now), "the state applied is the inputs' state");
            recomputed.is_some()
        };

        assert!(pass(&mut watched, &cfg, 1, &[]), "the first pass computes");
        assert!(!pass(&mut watched, &cfg, 1, &[]), "a pass with nothing new (the resync, drift)");
        watched.event(Event::Apply(object("node2", 2, "198.51.100.22")));
        assert!(!pass(&mut watched, &cfg, 1, &[]), "a Node event that changes no pod CIDR");
        assert_eq!(computed.get(), 1, "computed once");

        assert!(pass(&mut watched, &cfg, 2, &[]), "a Pod, Namespace or policy view changed");
        assert!(!pass(&mut watched, &cfg, 2, &[]));
        watched.event(Event::Apply(object("node2", 3, "198.51.100.22")));
        assert!(pass(&mut watched, &cfg, 2, &[]), "a Node's pod CIDRs changed");
        watched.event(Event::Apply(object("node3", 4, "198.51.100.13")));
        assert!(pass(&mut watched, &cfg, 2, &[]), "a Node added");
        watched.event(Event::Delete(object("node3", 4, "198.51.100.13")));
        assert!(pass(&mut watched, &cfg, 2, &[]), "a Node deleted");
        assert!(pass(&mut watched, &cfg, 2, &[refused_node2()]), "a peer refused");
        assert!(!pass(&mut watched, &cfg, 2, &[refused_node2(), refused_node2()]), "the same peer, twice");
        assert!(pass(&mut watched, &cfg, 2, &[]), "believed again");
        cfg.deny_log = Some(DenyLog { group: 5, per_second: 10 });
        assert!(pass(&mut watched, &cfg, 2, &[]), "the deny log");
        assert!(!pass(&mut watched, &cfg, 2, &[]));
        assert_eq!(computed.get(), 8);

        // An apply that failed: the retry computes again, with the same inputs.
        at.borrow_mut().forget();
        assert!(pass(&mut watched, &cfg, 2, &[]), "after a failed apply");
        assert!(!pass(&mut watched, &cfg, 2, &[]));
    }
}
