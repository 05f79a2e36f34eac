//! The Node views a pass computes from. The watch turns each Node into its
//! [`NodeView`] as it arrives and keeps only that (a few hundred bytes),
//! never the object: at 20,000 Nodes the objects, their metadata and a
//! store's keys cost more than everything else the agent holds. Only the
//! own Node's object is kept whole, for its InternalIPs and weft's own
//! annotations. Between passes the views remember which Nodes changed, so
//! a pass for one Node event works on that Node alone.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use kube::runtime::watcher;

use crate::wire::{NodeView, Rejected, WatchedNode, strip};

/// A Node added or changed (its new view) or deleted (`None`) since the last pass.
pub type NodeChange = (String, Option<Arc<NodeView>>);

/// One Node: its view and what was refused in it (nearly always nothing).
/// In a set it is found, and equal to another, by the Node's name: the
/// view's own, not a second copy as a map's key.
#[derive(Debug, Clone)]
struct Entry {
    view: Arc<NodeView>,
    rejected: Box<[Rejected]>,
}

impl Entry {
    /// Whether the Node looks the same in both.
    fn same(&self, other: &Entry) -> bool {
        self.view == other.view && self.rejected == other.rejected
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.view.name == other.view.name
    }
}

impl Eq for Entry {}

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        &self.view.name
    }
}

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: lookups go by `&str` (`Borrow`).
        self.view.name.as_str().hash(state);
    }
}

/// What a pass reads: every view, what was refused in them, the Nodes
/// changed since the last pass, the own Node's object, and the
/// generations of the Nodes' names and pod CIDRs.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub views: Vec<Arc<NodeView>>,
    pub rejected: Vec<Rejected>,
    pub changes: Vec<NodeChange>,
    pub own: Option<Arc<WatchedNode>>,
    /// Moves when a Node is added or deleted or its pod CIDRs change, and
    /// not for its other fields: what reads only the Nodes' names and pod
    /// CIDRs (which pod addresses NetworkPolicy believes) is recomputed
    /// only when it moves.
    pub pod_cidrs_generation: u64,
    /// Moves when a Node is added or deleted, not when one changes: what
    /// reads only the names (the verdict writer's bid, which hashes every
    /// one) is recomputed only when it moves.
    pub names_generation: u64,
}

/// The views of every Node, as the watch's events leave them.
#[derive(Debug)]
pub struct Views {
    own_name: String,
    cluster_cidrs: Vec<IpNetwork>,
    by_name: HashSet<Entry>,
    /// The list under way after a (re)list: it replaces `by_name` whole at
    /// its end, so Nodes deleted while the watch was down disappear.
    relisting: Option<HashSet<Entry>>,
    own: Option<Arc<WatchedNode>>,
    /// The Nodes changed since the last [`Views::take`], with their latest view.
    changes: HashMap<String, Option<Arc<NodeView>>>,
    listed: bool,
    /// Bumped when a Node is added or deleted or its pod CIDRs change.
    pod_cidrs_generation: u64,
    /// Bumped when a Node is added or deleted.
    names_generation: u64,
}

impl Views {
    /// Views of the Nodes as seen by the node `own_name`; a pod CIDR
    /// outside `cluster_cidrs` is refused.
    pub fn new(own_name: &str, cluster_cidrs: &[IpNetwork]) -> Views {
        Views {
            own_name: own_name.to_string(),
            cluster_cidrs: cluster_cidrs.to_vec(),
            by_name: HashSet::new(),
            relisting: None,
            own: None,
            changes: HashMap::new(),
            listed: false,
            pod_cidrs_generation: 0,
            names_generation: 0,
        }
    }

    /// Whether the first list is complete.
    pub fn listed(&self) -> bool {
        self.listed
    }

    fn entry(&mut self, mut node: WatchedNode) -> Entry {
        strip(&mut node);
        let mut rejected = Vec::new();
        let view = NodeView::from_node(&node, &self.cluster_cidrs, &mut rejected);
        if view.name == self.own_name {
            self.own = Some(Arc::new(node));
        }
        Entry { view: Arc::new(view), rejected: rejected.into_boxed_slice() }
    }

    /// Records `entry` as the Node's current state; returns whether it changed.
    fn set(&mut self, entry: Entry) -> bool {
        let old = self.by_name.get(entry.view.name.as_str());
        if old.is_some_and(|old| old.same(&entry)) {
            return false;
        }
        if old.is_none() {
            self.names_generation += 1;
        }
        if old.is_none_or(|o| o.view.pod_cidrs != entry.view.pod_cidrs) {
            self.pod_cidrs_generation += 1;
        }
        self.changes.insert(entry.view.name.clone(), Some(entry.view.clone()));
        self.by_name.replace(entry);
        true
    }

    fn remove(&mut self, name: &str) -> bool {
        if name == self.own_name {
            self.own = None;
        }
        if !self.by_name.remove(name) {
            return false;
        }
        self.pod_cidrs_generation += 1;
        self.names_generation += 1;
        self.changes.insert(name.to_string(), None);
        true
    }

    /// Applies one watch event; returns whether a pass is needed (a view
    /// changed, the own Node changed, or the first list completed).
    pub fn event(&mut self, event: watcher::Event<WatchedNode>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(HashSet::new());
                false
            }
            watcher::Event::InitApply(node) => {
                let entry = self.entry(node);
                if let Some(list) = self.relisting.as_mut() {
                    list.replace(entry);
                }
                false
            }
            watcher::Event::InitDone => {
                let list = self.relisting.take().unwrap_or_default();
                let gone: Vec<String> =
                    self.by_name.iter().map(|e| &e.view.name).filter(|n| !list.contains(n.as_str())).cloned().collect();
                let mut changed = !self.listed;
                for name in gone {
                    changed |= self.remove(&name);
                }
                if !list.contains(self.own_name.as_str()) {
                    self.own = None;
                }
                for entry in list {
                    changed |= self.set(entry);
                }
                self.listed = true;
                changed
            }
            watcher::Event::Apply(node) => {
                let entry = self.entry(node);
                // The own Node's annotations are not in its view: any change counts.
                let own = entry.view.name == self.own_name;
                self.set(entry) || own
            }
            watcher::Event::Delete(node) => self.remove(node.metadata.name.as_deref().unwrap_or_default()),
        }
    }

    /// Every view, what was refused in them, the own Node, and the Nodes
    /// changed since the last call.
    pub fn take(&mut self) -> Snapshot {
        let mut s = Snapshot {
            views: Vec::with_capacity(self.by_name.len()),
            // Taken whole, not drained: after the first list it held every
            // Node, and a drained map would keep that room for good.
            changes: std::mem::take(&mut self.changes).into_iter().collect(),
            own: self.own.clone(),
            pod_cidrs_generation: self.pod_cidrs_generation,
            names_generation: self.names_generation,
            ..Snapshot::default()
        };
        for entry in &self.by_name {
            s.views.push(entry.view.clone());
            s.rejected.extend(entry.rejected.iter().cloned());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, cidr: &str) -> WatchedNode {
        let n = serde_json::json!({"metadata": {"name": name, "annotations": {"weft.dev/backend": "vxlan", "other": "x"}},
            "spec": {"podCIDRs": [cidr]}});
        serde_json::from_value(n).expect("a Node")
    }

    fn names(c: &[NodeChange]) -> Vec<(String, bool)> {
        let mut names: Vec<_> = c.iter().map(|(n, v)| (n.clone(), v.is_some())).collect();
        names.sort();
        names
    }

    #[test]
    fn only_changed_nodes_are_reported_and_views_are_shared() {
        let cluster: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().expect("valid")];
        let mut views = Views::new("n1", &cluster);
        assert!(!views.event(watcher::Event::Init));
        assert!(!views.event(watcher::Event::InitApply(object("n1", "10.244.1.0/24"))));
        assert!(!views.event(watcher::Event::InitApply(object("n2", "10.0.0.0/24"))));
        assert!(!views.listed(), "not before the list ends");
        assert!(views.event(watcher::Event::InitDone));
        assert!(views.listed());
        let first = views.take();
        assert_eq!(first.views.len(), 2);
        assert_eq!(first.rejected.len(), 1, "n2's CIDR is outside the cluster");
        assert_eq!(names(&first.changes), [("n1".into(), true), ("n2".into(), true)]);
        let own = first.own.clone().expect("the own Node's object is kept");
        assert_eq!(own.weft.backend.as_deref(), Some("vxlan"));
        assert!(own.metadata.annotations.is_none(), "stripped");

        // The same n2 again: no change, no pass.
        assert!(!views.event(watcher::Event::Apply(object("n2", "10.0.0.0/24"))));
        let again = views.take();
        assert!(again.changes.is_empty());
        assert_eq!(again.rejected, first.rejected, "refusals stay with their view");
        let n1 = |s: &Snapshot| s.views.iter().find(|v| v.name == "n1").cloned().expect("n1");
        assert!(Arc::ptr_eq(&n1(&first), &n1(&again)), "an unchanged view is shared, not copied");

        // The own Node always counts: its annotations are not in the view.
        assert!(views.event(watcher::Event::Apply(object("n1", "10.244.1.0/24"))));
        assert!(views.event(watcher::Event::Apply(object("n2", "10.244.2.0/24"))));
        let changed = views.take();
        assert_eq!(names(&changed.changes), [("n2".into(), true)]);
        assert_eq!(changed.views.len(), 2, "the new view replaced the old one");
        assert!(changed.rejected.is_empty());

        assert!(views.event(watcher::Event::Delete(object("n2", "10.244.2.0/24"))));
        assert!(!views.event(watcher::Event::Delete(object("n9", "10.244.9.0/24"))), "unknown");
        let left = views.take();
        assert_eq!(left.views.len(), 1);
        assert_eq!(names(&left.changes), [("n2".into(), false)]);
    }

    /// The snapshot after `events`.
    fn take_after(views: &mut Views, events: Vec<watcher::Event<WatchedNode>>) -> Snapshot {
        for e in events {
            views.event(e);
        }
        views.take()
    }

    /// Views of n1 and n2 as first listed, and `read` of their first snapshot.
    fn two_listed(read: impl Fn(&Snapshot) -> u64) -> (Views, u64) {
        let cluster: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().expect("valid")];
        let mut views = Views::new("n1", &cluster);
        let listed = take_after(
            &mut views,
            vec![
                watcher::Event::Init,
                watcher::Event::InitApply(object("n1", "10.244.1.0/24")),
                watcher::Event::InitApply(object("n2", "10.244.2.0/24")),
                watcher::Event::InitDone,
            ],
        );
        (views, read(&listed))
    }

    #[test]
    fn the_names_generation_moves_only_when_a_node_is_added_or_deleted() {
        let generation = |views: &mut Views, events| take_after(views, events).names_generation;
        let (mut views, listed) = two_listed(|s| s.names_generation);
        assert_ne!(listed, 0, "the first list is a change");
        assert_eq!(generation(&mut views, vec![]), listed, "a pass without events");
        let changed = vec![watcher::Event::Apply(object("n2", "10.244.22.0/24"))];
        assert_eq!(generation(&mut views, changed), listed, "a Node changed, its name did not");

        let added = generation(&mut views, vec![watcher::Event::Apply(object("n3", "10.244.3.0/24"))]);
        assert_ne!(added, listed, "a Node added");
        let deleted = generation(&mut views, vec![watcher::Event::Delete(object("n3", "10.244.3.0/24"))]);
        assert_ne!(deleted, added, "a Node deleted");
        // One gone and one come between two passes: the count is the same, the set is not.
        let swapped = vec![
            watcher::Event::Delete(object("n2", "10.244.22.0/24")),
            watcher::Event::Apply(object("n4", "10.244.4.0/24")),
        ];
        let after_swap = generation(&mut views, swapped);
        assert_ne!(after_swap, deleted, "a Node replaced by another");
        assert_eq!(generation(&mut views, vec![]), after_swap);
    }

    #[test]
    fn the_pod_cidrs_generation_moves_only_when_a_node_comes_goes_or_changes_pod_cidrs() {
        let generation = |views: &mut Views, events| take_after(views, events).pod_cidrs_generation;
        let (mut views, listed) = two_listed(|s| s.pod_cidrs_generation);
        assert_ne!(listed, 0, "the first list");
        assert_eq!(generation(&mut views, vec![]), listed, "nothing happened");
        // A new address is a new view, with the same pod CIDRs.
        let mut addressed = object("n2", "10.244.2.0/24");
        addressed.status = serde_json::from_value(serde_json::json!({"addresses": [
            {"type": "InternalIP", "address": "198.51.100.12"}]}))
        .expect("a status");
        assert!(views.event(watcher::Event::Apply(addressed)), "the view changed");
        assert_eq!(generation(&mut views, vec![]), listed, "not its pod CIDRs");

        let renumbered = generation(&mut views, vec![watcher::Event::Apply(object("n2", "10.244.22.0/24"))]);
        assert_ne!(renumbered, listed, "n2's pod CIDR changed");
        let added = generation(&mut views, vec![watcher::Event::Apply(object("n3", "10.244.3.0/24"))]);
        assert_ne!(added, renumbered, "n3 added");
        let deleted = generation(&mut views, vec![watcher::Event::Delete(object("n3", "10.244.3.0/24"))]);
        assert_ne!(deleted, added, "n3 deleted");
        let relisted = generation(
            &mut views,
            vec![
                watcher::Event::Init,
                watcher::Event::InitApply(object("n1", "10.244.1.0/24")),
                watcher::Event::InitDone,
            ],
        );
        assert_ne!(relisted, deleted, "n2 gone while the watch was down");
        let again = vec![
            watcher::Event::Init,
            watcher::Event::InitApply(object("n1", "10.244.1.0/24")),
            watcher::Event::InitDone,
        ];
        assert_eq!(generation(&mut views, again), relisted, "the same list again");
    }

    #[test]
    fn a_relist_replaces_the_views_and_reports_the_difference() {
        let cluster: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().expect("valid")];
        let mut views = Views::new("n1", &cluster);
        views.event(watcher::Event::Init);
        for (n, c) in [("n1", "10.244.1.0/24"), ("n2", "10.244.2.0/24"), ("n3", "10.244.3.0/24")] {
            views.event(watcher::Event::InitApply(object(n, c)));
        }
        views.event(watcher::Event::InitDone);
        views.take();
        // The watch was down: n3 went, n2 changed, n4 came, and the own Node went too.
        views.event(watcher::Event::Init);
        for (n, c) in [("n2", "10.244.22.0/24"), ("n4", "10.244.4.0/24")] {
            views.event(watcher::Event::InitApply(object(n, c)));
        }
        assert_eq!(views.take().views.len(), 3, "the old views serve until the list ends");
        assert!(views.event(watcher::Event::InitDone));
        let s = views.take();
        assert_eq!(
            names(&s.changes),
            [("n1".into(), false), ("n2".into(), true), ("n3".into(), false), ("n4".into(), true)]
        );
        assert_eq!(s.views.len(), 2);
        assert!(s.own.is_none());
    }
}
