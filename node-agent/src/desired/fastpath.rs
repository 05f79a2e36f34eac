//! The BPF fast path's desired state: which program runs at ingress of
//! which link, and the map of pod addresses by host veth, which is both the
//! anti-spoofing check (a pod's source must be its own) and the list of
//! local destinations reached with `bpf_redirect_peer`. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use weft_fastpath::Hook;

use crate::observe::fastpath::FastpathView;

/// What the fast path should look like on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredFastpath {
    /// ifindex → the program at its tc ingress.
    pub attach: BTreeMap<u32, Hook>,
    /// (host veth ifindex, pod address).
    pub pods: BTreeSet<(u32, IpAddr)>,
    /// Links that must not carry weft's filter (every other observed link).
    pub detach: BTreeSet<u32>,
}

/// The uplink gets the uplink program, every released host veth with a pod
/// address the pod program; a veth without addresses (its routes not
/// written yet) gets nothing, so its packets all take netfilter's path.
pub fn compute(view: &FastpathView, uplink: u32) -> DesiredFastpath {
    let mut want = DesiredFastpath::default();
    for (veth, addrs) in &view.pods {
        if addrs.is_empty() || *veth == uplink {
            continue;
        }
        want.attach.insert(*veth, Hook::Pod);
        want.pods.extend(addrs.iter().map(|a| (*veth, *a)));
    }
    want.attach.insert(uplink, Hook::Uplink);
    want.detach = view.links.iter().copied().filter(|l| !want.attach.contains_key(l)).collect();
    want
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(pods: &[(u32, &str)], links: &[u32]) -> FastpathView {
        let mut v = FastpathView { links: links.iter().copied().collect(), ..FastpathView::default() };
        for (veth, ip) in pods {
            v.pods.entry(*veth).or_default().insert(ip.parse().unwrap());
        }
        v
    }

    #[test]
    fn pods_and_the_uplink_get_their_programs_and_nothing_else_does() {
        let d = compute(&view(&[(5, "10.244.1.2"), (5, "fd00:10:244:1::2"), (6, "10.244.1.3")], &[1, 2, 5, 6, 9]), 2);
        assert_eq!(d.attach, BTreeMap::from([(2, Hook::Uplink), (5, Hook::Pod), (6, Hook::Pod)]));
        assert_eq!(d.pods.len(), 3);
        assert!(d.pods.contains(&(5, "fd00:10:244:1::2".parse().unwrap())));
        assert_eq!(d.detach, BTreeSet::from([1, 9]), "lo and other links carry no weft filter");
    }

    #[test]
    fn a_veth_without_addresses_keeps_netfilters_path() {
        let mut v = view(&[], &[2, 7]);
        v.pods.insert(7, BTreeSet::new());
        let d = compute(&v, 2);
        assert_eq!(d.attach, BTreeMap::from([(2, Hook::Uplink)]));
        assert!(d.pods.is_empty());
        assert_eq!(d.detach, BTreeSet::from([7]));
    }

    #[test]
    fn no_pod_address_is_ever_claimed_for_the_uplink() {
        let d = compute(&view(&[(2, "10.244.1.2")], &[2]), 2);
        assert_eq!(d.attach, BTreeMap::from([(2, Hook::Uplink)]));
        assert!(d.pods.is_empty());
    }
}
