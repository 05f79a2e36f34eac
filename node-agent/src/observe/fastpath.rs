//! What the BPF fast path is built from: the node's links, and the pod
//! addresses the CNI plugin routes to each released host veth (routes of
//! protocol `RTPROT_WEFT_POD`, /32 and /128). A veth still in a pending
//! group is left out: its pod is not known to the policy yet, so none of
//! its packets may skip netfilter. Read-only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use libweft::netlink::{Netlink, NetlinkError};

use crate::base::names::{HOST_VETH_PREFIX, RTPROT_WEFT_POD};

/// The kernel as the fast path sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FastpathView {
    /// Every link's ifindex (to find weft's filters on links it no longer wants).
    pub links: BTreeSet<u32>,
    /// Released host veths and the pod addresses routed to each.
    pub pods: BTreeMap<u32, BTreeSet<IpAddr>>,
}

/// Reads the links and the plugin's pod routes.
pub async fn observe(nl: &Netlink) -> Result<FastpathView, NetlinkError> {
    let links = nl.links().await?;
    let mut view = FastpathView { links: links.iter().map(|l| l.index).collect(), ..FastpathView::default() };
    let released: BTreeSet<u32> = links
        .iter()
        .filter(|l| l.name.starts_with(HOST_VETH_PREFIX) && !libweft::pending::is_pending(l.group))
        .map(|l| l.index)
        .collect();
    for v6 in [false, true] {
        for r in nl.routes(v6, Some(RTPROT_WEFT_POD)).await? {
            let host = r.dst.prefix() == if v6 { 128 } else { 32 };
            if host && released.contains(&r.oif) {
                view.pods.entry(r.oif).or_default().insert(r.dst.ip());
            }
        }
    }
    Ok(view)
}
