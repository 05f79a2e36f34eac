//! A Node as the agent's watch decodes it (node-agent/src/wire.rs): the
//! API's JSON, stripped, then read into a `NodeView`. Peers' annotations and
//! podCIDRs are untrusted; whatever the view keeps must obey the rules the
//! desired state relies on.
#![no_main]

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libfuzzer_sys::fuzz_target;
use weft_agent::wire::{NodeView, WatchedNode, strip};

fuzz_target!(|data: &[u8]| {
    let Ok(mut node) = serde_json::from_slice::<WatchedNode>(data) else { return };
    strip(&mut node);
    let cluster: [IpNetwork; 2] = ["10.244.0.0/16".parse().expect("CIDR"), "fd00:10:244::/56".parse().expect("CIDR")];
    let mut rejected = Vec::new();
    let view = NodeView::from_node(&node, &cluster, &mut rejected);

    // Pod CIDRs: network addresses inside the cluster CIDRs, one per family.
    for (i, c) in view.pod_cidrs.iter().enumerate() {
        assert_eq!(c.ip(), c.network(), "{c}");
        assert!(
            cluster.iter().any(|cl| cl.is_ipv4() == c.is_ipv4() && cl.prefix() <= c.prefix() && cl.contains(c.ip()))
        );
        assert!(view.pod_cidrs[..i].iter().all(|o| o.is_ipv4() != c.is_ipv4()));
    }
    // The underlay address weft will use is one the Node itself reports
    // (an annotation cannot point a tunnel elsewhere), or its InternalIP.
    let internal: Vec<IpAddr> = node.internal_ips().collect();
    for ip in [view.ipv4.map(IpAddr::V4), view.ipv6.map(IpAddr::V6)].into_iter().flatten() {
        assert!(view.addresses.contains(&ip) || internal.contains(&ip), "{ip}");
    }
    // A MAC a peer would program into its FDB: unicast and not zero, with one spelling.
    if let Some(mac) = view.vtep_mac {
        assert_eq!(mac[0] & 1, 0);
        assert_ne!(mac, [0; 6]);
        let published = node.weft.vtep_mac.as_deref().expect("the MAC came from the annotation");
        assert_eq!(libweft::netlink::format_mac(&mac), published.to_ascii_lowercase(), "{published:?}");
    }
    // Hostile values reach logs and metrics only truncated.
    for r in &rejected {
        assert!(r.value.chars().count() <= 64);
    }
});
