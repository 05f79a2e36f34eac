//! What the agent refused or doubts, each logged and counted once while
//! it lasts rather than on every pass.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::desired::pod_trust::Doubt;
use crate::wire::Rejected;

/// Refused peer values, each logged and counted once rather than on every
/// pass: (node, field, value) of the refusals of the last pass.
#[derive(Default)]
pub struct Refusals {
    reported: HashSet<(String, &'static str, String)>,
}

impl Refusals {
    /// The refusals in `rejected` not reported in the previous pass. A value
    /// that disappears and comes back is reported again.
    pub fn fresh<'a>(&mut self, rejected: &'a [Rejected]) -> Vec<&'a Rejected> {
        let mut current = HashSet::new();
        let mut fresh = Vec::new();
        for r in rejected {
            let key = (r.node.clone(), r.field, r.value.clone());
            if !self.reported.contains(&key) && !current.contains(&key) {
                fresh.push(r);
            }
            current.insert(key);
        }
        self.reported = current;
        fresh
    }
}

/// Pod addresses not believed for NetworkPolicy, each logged while new.
#[derive(Default)]
pub struct Doubts {
    reported: HashSet<(String, IpAddr)>,
}

impl Doubts {
    /// Logs the doubts that the last call did not report.
    pub fn report(&mut self, doubts: &[Doubt]) {
        let mut current = HashSet::new();
        for d in doubts {
            let key = (d.pod.clone(), d.ip);
            if !self.reported.contains(&key) {
                tracing::warn!(pod = %d.pod, ip = %d.ip, "pod address not believed for NetworkPolicy: {}", d.reason);
            }
            current.insert(key);
        }
        self.reported = current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(node: &str, field: &'static str, value: &str) -> Rejected {
        Rejected { node: node.into(), field, value: value.into(), reason: "bad".into() }
    }

    #[test]
    fn each_refusal_is_reported_once_while_it_lasts() {
        let mut r = Refusals::default();
        let a = rejected("n2", "weft.dev/vtep-mac", "ff:ff:ff:ff:ff:ff");
        let b = rejected("n3", "spec.podCIDRs", "0.0.0.0/0");
        assert_eq!(r.fresh(&[a.clone(), a.clone()]).len(), 1, "a duplicate within one pass counts once");
        assert!(r.fresh(std::slice::from_ref(&a)).is_empty(), "reported in the last pass");
        assert_eq!(r.fresh(&[a.clone(), b.clone()]), vec![&b]);
        // Gone for a pass, then back: reported again.
        assert!(r.fresh(std::slice::from_ref(&b)).is_empty());
        assert_eq!(r.fresh(&[a.clone(), b.clone()]), vec![&a]);
        // Another value of the same field is another refusal.
        let a2 = rejected("n2", "weft.dev/vtep-mac", "00:00:00:00:00:00");
        assert_eq!(r.fresh(&[a, b, a2.clone()]), vec![&a2]);
    }
}
