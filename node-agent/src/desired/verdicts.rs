//! What weft tells policy authors, as desired state: each
//! ClusterNetworkPolicy's `Accepted` condition, and one Warning Event for
//! each NetworkPolicy weft does not enforce as written (past a cap, or with
//! parts it cannot read). A pure function of the policy views, whose
//! [`Acceptance`] depends on the object's spec alone: every agent computes
//! the same verdicts, so whichever holds the writer's lease
//! (`apply::verdicts`) writes the same thing, and a change of holder
//! rewrites nothing. The loop recomputes them (and the writer's bid) only
//! when their inputs changed ([`ComputedAt`]).
//!
//! The network-policy-api (v0.3.0) leaves a ClusterNetworkPolicy's
//! conditions to the implementation: weft sets one, of type `Accepted`
//! (the word Gateway API, the sibling SIG Network API, uses), with
//! `observedGeneration`; `False` says why in its reason and message.

use crate::observe::policy_watch::PolicyViews;
use crate::wire_policy::{Acceptance, Refusal};

/// The condition type weft sets on a ClusterNetworkPolicy.
pub const CONDITION: &str = "Accepted";
/// The condition's reason when weft enforces the policy as written.
pub const ACCEPTED: &str = "Accepted";
/// What the condition says then.
const ACCEPTED_MESSAGE: &str = "weft enforces this policy as written";

/// The `Accepted` condition of one ClusterNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCondition {
    pub name: String,
    pub uid: String,
    /// The `metadata.generation` judged: the condition's `observedGeneration`.
    pub generation: i64,
    pub accepted: bool,
    /// CamelCase: [`ACCEPTED`] or one of [`Refusal::REASONS`].
    pub reason: &'static str,
    pub message: String,
}

impl ClusterCondition {
    /// The condition's `status`.
    pub fn status(&self) -> &'static str {
        if self.accepted { "True" } else { "False" }
    }
}

/// The Warning Event on a NetworkPolicy weft refused (in part or whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalEvent {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// One of [`Refusal::REASONS`].
    pub reason: &'static str,
    pub message: String,
}

impl RefusalEvent {
    /// The Event's name: one per policy object, generation and reason, the
    /// same whichever agent writes it, so that a second create of it (a new
    /// lease holder, a restarted agent) is refused by the API server as a
    /// duplicate instead of repeating the Event. A UID is lowercase hex and
    /// dashes, the reason lowercased is letters: a valid DNS subdomain.
    pub fn event_name(&self) -> String {
        format!("weft-refused.{}.{}.{}", self.uid, self.generation, self.reason.to_ascii_lowercase())
    }
}

/// Everything weft tells authors, sorted by object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub conditions: Vec<ClusterCondition>,
    pub events: Vec<RefusalEvent>,
}

/// The verdicts on the policies in `views`. Objects without a UID (never
/// from the API server) are left out: there is nothing to write them on.
pub fn verdicts(views: &PolicyViews) -> Verdicts {
    let mut conditions: Vec<ClusterCondition> = views
        .cluster_policies
        .iter()
        .filter(|p| !p.acceptance.uid.is_empty())
        .map(|p| {
            let Acceptance { uid, generation, refusal } = &p.acceptance;
            let (reason, message) = match refusal {
                None => (ACCEPTED, ACCEPTED_MESSAGE.to_string()),
                Some(Refusal { reason, message }) => (*reason, message.clone()),
            };
            ClusterCondition {
                name: p.name.clone(),
                uid: uid.clone(),
                generation: *generation,
                accepted: refusal.is_none(),
                reason,
                message,
            }
        })
        .collect();
    conditions.sort_by(|a, b| a.name.cmp(&b.name));
    let mut events: Vec<RefusalEvent> = views
        .policies
        .iter()
        .filter(|p| !p.acceptance.uid.is_empty())
        .filter_map(|p| {
            let r = p.acceptance.refusal.as_ref()?;
            Some(RefusalEvent {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.acceptance.uid.clone(),
                generation: p.acceptance.generation,
                reason: r.reason,
                message: r.message.clone(),
            })
        })
        .collect();
    events.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Verdicts { conditions, events }
}

/// How many agents bid for the writer's Lease. One writer needs a few
/// candidates (one may be down), not all: every candidate that does not
/// hold the Lease reads it again each time it could expire, so 20,000
/// bidders would cost the API server more than the writes they save.
pub const WRITER_CANDIDATES: usize = 3;

/// Whether node `own` is one of the [`WRITER_CANDIDATES`] nodes that bid
/// for the writer's Lease: those whose names hash lowest (by hash, so that
/// nodes named alike, say of one rack or zone, are not all the candidates).
/// Every agent computes the same set from the same Node list; when a
/// candidate's Node is deleted, the next node joins.
pub fn bids_for_writer<'a>(own: &str, nodes: impl IntoIterator<Item = &'a str>) -> bool {
    let key = |n: &'a str| (libweft::netlink::stable_hash(n.bytes()), n);
    let own_hash = libweft::netlink::stable_hash(own.bytes());
    let before = nodes.into_iter().filter(|n| *n != own && key(n) < (own_hash, own)).count();
    before < WRITER_CANDIDATES
}

/// The generation of the inputs a result was last computed from. The loop
/// recomputes the verdicts when the policies' generation moves
/// (`PolicyViews::policies_generation`), the bid when the set of Node
/// names' does (`node_views::Snapshot::names_generation`), and the policy state when any of
/// its inputs do (`network_policy::PolicyInputs`): each is linear in what
/// it reads (every policy, every Node name, every Pod), so a pass that
/// changed none of it does no work for them.
#[derive(Debug)]
pub struct ComputedAt<K = u64>(Option<K>);

impl<K> Default for ComputedAt<K> {
    fn default() -> Self {
        ComputedAt(None)
    }
}

impl<K: PartialEq> ComputedAt<K> {
    /// `compute()` when `generation` is not the one last computed at;
    /// `None`, computing nothing, when it is.
    pub fn recompute<T>(&mut self, generation: K, compute: impl FnOnce() -> T) -> Option<T> {
        if self.0.as_ref() == Some(&generation) {
            return None;
        }
        self.0 = Some(generation);
        Some(compute())
    }

    /// Forgets the generation: the next call computes, whatever its
    /// inputs. For a result that did not take effect (its apply failed).
    pub fn forget(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;

    use super::*;
    use crate::wire_cluster_policy::ClusterPolicyView;
    use crate::wire_policy::PolicyView;

    fn cnp(name: &str, uid: &str, generation: i64, egress: serde_json::Value) -> ClusterPolicyView {
        let spec = json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}, "egress": egress});
        ClusterPolicyView::from_spec(name, Some(&spec), &mut Vec::new()).unwrap().identified(uid, generation)
    }

    fn netpol(name: &str, uid: &str, peers: usize) -> PolicyView {
        let from: Vec<_> = (0..peers).map(|i| json!({"podSelector": {"matchLabels": {"a": format!("{i}")}}})).collect();
        let p: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"namespace": "team", "name": name, "uid": uid, "generation": 2},
            "spec": {"podSelector": {}, "ingress": [{"from": from}]}}))
        .unwrap();
        PolicyView::from_policy(&p, &mut Vec::new()).unwrap()
    }

    #[test]
    fn each_cluster_policy_gets_its_condition_and_each_refused_policy_one_event() {
        let views = PolicyViews {
            cluster_policies: vec![
                cnp("z-nodes", "u-z", 4, json!([{"action": "Deny", "to": [{"nodes": {}}]}])),
                cnp("a-ok", "u-a", 1, json!([{"action": "Deny", "to": [{"namespaces": {}}]}])),
            ],
            policies: vec![netpol("fine", "u-f", 3), netpol("huge", "u-h", 101)],
            ..PolicyViews::default()
        };
        let v = verdicts(&views);
        assert_eq!(v.conditions.len(), 2);
        let (ok, nodes) = (&v.conditions[0], &v.conditions[1]);
        assert_eq!((ok.name.as_str(), ok.status(), ok.reason, ok.generation), ("a-ok", "True", ACCEPTED, 1));
        assert_eq!((nodes.status(), nodes.reason, nodes.generation), ("False", Refusal::NOT_IMPLEMENTED, 4));
        assert!(nodes.message.contains("nodes peer is not implemented"), "{}", nodes.message);
        assert_eq!(v.events.len(), 1, "only the refused NetworkPolicy: {:?}", v.events);
        let e = &v.events[0];
        assert_eq!((e.namespace.as_str(), e.name.as_str(), e.reason), ("team", "huge", Refusal::CAP_EXCEEDED));
        assert!(e.message.contains("peers over the cap of 100"), "{}", e.message);
        assert_eq!(e.event_name(), "weft-refused.u-h.2.capexceeded");
        assert_eq!(verdicts(&views), v, "a pure function of the views");
    }

    #[test]
    fn three_nodes_bid_for_the_writer_whatever_the_order_of_the_list() {
        let names: Vec<String> = (0..1000).map(|i| format!("node-{i}")).collect();
        let bidders = |names: &[String]| -> Vec<String> {
            let all = || names.iter().map(String::as_str);
            names.iter().filter(|n| bids_for_writer(n, all())).cloned().collect()
        };
        let mut bidding = bidders(&names);
        assert_eq!(bidding.len(), WRITER_CANDIDATES);
        let mut reversed = names.clone();
        reversed.reverse();
        let mut again = bidders(&reversed);
        bidding.sort();
        again.sort();
        assert_eq!(bidding, again, "the same set from any order");
        // A candidate's Node is deleted: another joins, the others stay.
        let rest: Vec<String> = names.iter().filter(|n| **n != bidding[0]).cloned().collect();
        let next = bidders(&rest);
        assert_eq!(next.len(), WRITER_CANDIDATES);
        assert!(bidding[1..].iter().all(|b| next.contains(b)), "{bidding:?} {next:?}");
        // Small clusters: everyone bids; a node not in the list yet bids only among the first.
        assert!(bids_for_writer("a", ["a", "b"]));
        assert!(bids_for_writer("a", []));
    }

    #[test]
    fn a_pass_with_the_same_inputs_computes_nothing_and_a_change_recomputes() {
        use std::cell::Cell;
        use std::sync::Arc;

        use ipnetwork::IpNetwork;
        use kube::runtime::watcher::Event;

        use crate::observe::node_views::Views;
        use crate::wire::WatchedNode;

        let node = |name: &str, cidr: &str| -> WatchedNode {
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"podCIDRs": [cidr]}})).unwrap()
        };
        let cluster: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().unwrap()];
        let mut watched = Views::new("n1", &cluster);
        for e in [Event::Init, Event::InitApply(node("n1", "10.244.1.0/24")), Event::InitDone] {
            watched.event(e);
        }
        let (mut bid_at, mut verdicts_at) = (ComputedAt::default(), ComputedAt::default());
        let (bids_computed, verdicts_computed) = (Cell::new(0), Cell::new(0));
        let mut policies = PolicyViews {
            policies: vec![netpol("huge", "u-h", 101)],
            policies_generation: 1,
            ..PolicyViews::default()
        };
        // One pass of the loop: what it hands the writer.
        let mut pass = |watched: &mut Views, views: &PolicyViews| {
            let snapshot = watched.take();
            let generation = snapshot.names_generation;
            let nodes: Vec<Arc<crate::wire::NodeView>> = snapshot.views;
            let bid = bid_at.recompute(generation, || {
                bids_computed.set(bids_computed.get() + 1);
                bids_for_writer("n1", nodes.iter().map(|n| n.name.as_str()))
            });
            let offered = verdicts_at.recompute(views.policies_generation, || {
                verdicts_computed.set(verdicts_computed.get() + 1);
                verdicts(views)
            });
            (bid, offered.map(|v| v.events.len()))
        };

        assert_eq!(pass(&mut watched, &policies), (Some(true), Some(1)), "the first pass computes both");
        assert_eq!(pass(&mut watched, &policies), (None, None), "unchanged inputs");
        watched.event(Event::Apply(node("n1", "10.244.1.0/24")));
        assert_eq!(pass(&mut watched, &policies), (None, None), "a Node event that adds or deletes none");
        assert_eq!((bids_computed.get(), verdicts_computed.get()), (1, 1), "computed once each");

        watched.event(Event::Apply(node("n2", "10.244.2.0/24")));
        assert_eq!(pass(&mut watched, &policies), (Some(bids_for_writer("n1", ["n1", "n2"])), None), "a Node added");
        watched.event(Event::Delete(node("n2", "10.244.2.0/24")));
        assert_eq!(pass(&mut watched, &policies), (Some(true), None), "a Node deleted");
        assert_eq!((bids_computed.get(), verdicts_computed.get()), (3, 1));

        policies.policies.push(netpol("huge-too", "u-h2", 102));
        policies.policies_generation += 1;
        assert_eq!(pass(&mut watched, &policies), (None, Some(2)), "a policy changed");
        assert_eq!(pass(&mut watched, &policies), (None, None));
        assert_eq!((bids_computed.get(), verdicts_computed.get()), (3, 2));
    }

    #[test]
    fn an_event_is_named_by_object_generation_and_reason() {
        let e = RefusalEvent {
            namespace: "n".into(),
            name: "p".into(),
            uid: "0c4c7f0e-8f0a-4c5e-9a57-6f4f1c1d2e3f".into(),
            generation: 12,
            reason: Refusal::NOT_IMPLEMENTED,
            message: String::new(),
        };
        let name = e.event_name();
        assert_eq!(name, "weft-refused.0c4c7f0e-8f0a-4c5e-9a57-6f4f1c1d2e3f.12.notimplemented");
        let dns = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        assert!(name.len() <= 253 && name.chars().all(dns), "a DNS subdomain");
        let next = RefusalEvent { generation: 13, ..e.clone() };
        assert_ne!(next.event_name(), name, "a new generation is a new Event");
        let other = RefusalEvent { reason: Refusal::CAP_EXCEEDED, ..e };
        assert_ne!(other.event_name(), name, "so is a new reason");
    }
}
