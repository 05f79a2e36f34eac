//! The Node views a pass computes from: each Node object the watch holds,
//! read into a [`NodeView`] once per version of the object.

use std::collections::HashMap;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::wire::{NodeView, Rejected, WatchedNode};

/// A Node added or changed (its new view) or deleted (`None`) since the last pass.
pub type NodeChange = (String, Option<Arc<NodeView>>);

/// The Node views of the last pass, each with the object it was read from:
/// the watch replaces an object when it changes, so an unchanged one
/// (the same `Arc`) is not parsed again.
#[derive(Default)]
pub struct Views {
    by_name: HashMap<String, View>,
}

/// One Node's object, its view, and what was refused in it.
type View = (Arc<WatchedNode>, Arc<NodeView>, Vec<Rejected>);

impl Views {
    /// Every object's view, what was refused in them, and the Nodes
    /// added, changed or deleted since the last call.
    pub fn update(
        &mut self,
        objects: &[Arc<WatchedNode>],
        cluster_cidrs: &[IpNetwork],
    ) -> (Vec<Arc<NodeView>>, Vec<Rejected>, Vec<NodeChange>) {
        let mut by_name = HashMap::with_capacity(objects.len());
        let mut views = Vec::with_capacity(objects.len());
        let mut rejected = Vec::new();
        let mut changes = Vec::new();
        for object in objects {
            let name = object.metadata.name.as_deref().unwrap_or_default();
            let (name, entry) = match self.by_name.remove_entry(name) {
                Some((name, e)) if Arc::ptr_eq(&e.0, object) => (name, e),
                _ => {
                    let mut refused = Vec::new();
                    let view = Arc::new(NodeView::from_node(object, cluster_cidrs, &mut refused));
                    changes.push((name.to_string(), Some(view.clone())));
                    (name.to_string(), (object.clone(), view, refused))
                }
            };
            views.push(entry.1.clone());
            rejected.extend(entry.2.iter().cloned());
            by_name.insert(name, entry);
        }
        // What is left was deleted.
        changes.extend(self.by_name.drain().map(|(name, _)| (name, None)));
        self.by_name = by_name;
        (views, rejected, changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_nodes_are_parsed_again() {
        let object = |name: &str, cidr: &str| -> Arc<WatchedNode> {
            let n = serde_json::json!({"metadata": {"name": name}, "spec": {"podCIDRs": [cidr]}});
            Arc::new(serde_json::from_value(n).expect("a Node"))
        };
        let cluster: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().expect("valid")];
        let (n1, n2) = (object("n1", "10.244.1.0/24"), object("n2", "10.0.0.0/24"));
        let mut views = Views::default();
        let (first, rejected, changes) = views.update(&[n1.clone(), n2.clone()], &cluster);
        assert_eq!(rejected.len(), 1, "n2's CIDR is outside the cluster");
        let names = |c: &[NodeChange]| c.iter().map(|(n, v)| (n.clone(), v.is_some())).collect::<Vec<_>>();
        assert_eq!(names(&changes), [("n1".into(), true), ("n2".into(), true)]);
        let (again, rejected_again, changes) = views.update(&[n1.clone(), n2.clone()], &cluster);
        assert!(Arc::ptr_eq(&first[0], &again[0]) && Arc::ptr_eq(&first[1], &again[1]), "reused");
        assert_eq!(rejected_again, rejected, "refusals are kept with their view");
        assert!(changes.is_empty(), "nothing changed");
        // n2 changed: a new object from the watch.
        let (changed, rejected, changes) = views.update(&[n1.clone(), object("n2", "10.244.2.0/24")], &cluster);
        assert!(Arc::ptr_eq(&first[0], &changed[0]));
        assert_eq!(changed[1].pod_cidrs, ["10.244.2.0/24".parse::<IpNetwork>().expect("valid")]);
        assert!(rejected.is_empty());
        assert_eq!(names(&changes), [("n2".into(), true)]);
        // n2 deleted.
        let (left, _, changes) = views.update(std::slice::from_ref(&n1), &cluster);
        assert_eq!(left.len(), 1);
        assert_eq!(names(&changes), [("n2".into(), false)]);
        assert_eq!(views.by_name.len(), 1);
    }
}
