//! Which Nodes exist, as a generation number: it moves when the set of
//! Node names changes (a Node added or deleted), not when a Node's view
//! does. What depends on the names alone (the verdict writer's bid,
//! `desired::verdicts::bids_for_writer`, which hashes every name) is
//! recomputed when it moves, not on every pass: at 20,000 Nodes that is
//! linear work a pass would repeat for nothing.
//!
//! Derived from each pass's [`Snapshot`]: its changes list every Node
//! added, changed or deleted since the last one. With none deleted the set
//! only grows, so an unchanged count is the same set.
//!
//! [`Snapshot`]: super::node_views::Snapshot

use super::node_views::NodeChange;

/// The generation of the set of Node names, as the passes saw it.
#[derive(Debug, Default)]
pub struct NodeNames {
    generation: u64,
    count: usize,
}

impl NodeNames {
    /// Takes one snapshot's `changes` and Node `count` (every snapshot,
    /// in order: a change skipped would be missed); returns the generation.
    pub fn observe(&mut self, changes: &[NodeChange], count: usize) -> u64 {
        let deleted = changes.iter().any(|(_, view)| view.is_none());
        if deleted || count != self.count {
            self.generation += 1;
            self.count = count;
        }
        self.generation
    }

    /// The generation as of the last snapshot observed.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use ipnetwork::IpNetwork;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::observe::node_views::Views;
    use crate::wire::WatchedNode;

    fn node(name: &str, cidr: &str) -> WatchedNode {
        let n = serde_json::json!({"metadata": {"name": name}, "spec": {"podCIDRs": [cidr]}});
        serde_json::from_value(n).expect("a Node")
    }

    /// The generation after the watch's `events`, as a pass would see it.
    fn pass(views: &mut Views, names: &mut NodeNames, events: Vec<Event<WatchedNode>>) -> u64 {
        for e in events {
            views.event(e);
        }
        let s = views.take();
        names.observe(&s.changes, s.views.len())
    }

    #[test]
    fn only_a_node_added_or_deleted_moves_the_generation() {
        let cluster: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().expect("valid")];
        let mut views = Views::new("n1", &cluster);
        let mut names = NodeNames::default();
        let listed = pass(
            &mut views,
            &mut names,
            vec![
                Event::Init,
                Event::InitApply(node("n1", "10.244.1.0/24")),
                Event::InitApply(node("n2", "10.244.2.0/24")),
                Event::InitDone,
            ],
        );
        assert_ne!(listed, 0, "the first list is a change");
        assert_eq!(pass(&mut views, &mut names, vec![]), listed, "a pass without events");
        let changed = vec![Event::Apply(node("n2", "10.244.22.0/24"))];
        assert_eq!(pass(&mut views, &mut names, changed), listed, "a Node changed, its name did not");

        let added = pass(&mut views, &mut names, vec![Event::Apply(node("n3", "10.244.3.0/24"))]);
        assert_ne!(added, listed, "a Node added");
        let deleted = pass(&mut views, &mut names, vec![Event::Delete(node("n3", "10.244.3.0/24"))]);
        assert_ne!(deleted, added, "a Node deleted");
        // One gone and one come between two passes: the count is the same, the set is not.
        let swapped = vec![Event::Delete(node("n2", "10.244.22.0/24")), Event::Apply(node("n4", "10.244.4.0/24"))];
        let after_swap = pass(&mut views, &mut names, swapped);
        assert_ne!(after_swap, deleted, "a Node replaced by another");
        assert_eq!(names.generation(), after_swap);
        assert_eq!(pass(&mut views, &mut names, vec![]), after_swap);
    }
}
