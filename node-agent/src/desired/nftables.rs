//! The `inet weft` nftables table, as data: masquerade and forwarding.
//!
//! - Pod traffic to anything outside the cluster CIDRs, the nodes' own
//!   addresses and `nonMasqueradeCIDRs` leaves with the node's address.
//! - Pod-to-pod and pod-to-node traffic keeps the pod's source address.
//! - Forwarded pod traffic is accepted in weft's own forward chain. (A drop
//!   policy in another table still applies: nftables cannot override it.)
//!
//! The nodes' addresses sit in sets of their own (`nodes4`, `nodes6`), so
//! `apply::nftables` can change just their elements when only nodes change.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use crate::config::Config;

/// What the table is built from besides the configuration: the own pod
/// CIDRs and every node's addresses (sorted, without duplicates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftTable {
    pub own_cidrs: Vec<IpNetwork>,
    pub node_ips: Vec<IpAddr>,
}

impl NftTable {
    pub fn new(own_cidrs: &[IpNetwork], node_ips: &[IpAddr]) -> NftTable {
        let mut ips = node_ips.to_vec();
        ips.sort();
        ips.dedup();
        NftTable { own_cidrs: own_cidrs.to_vec(), node_ips: ips }
    }
}

/// weft's table: `nft list table inet weft`.
pub const TABLE: &str = "weft";

fn prefix(net: &IpNetwork) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix()}})
}

fn set(name: &str, v6: bool, interval: bool, elems: Vec<Value>) -> Value {
    let mut s = json!({"family": "inet", "table": TABLE, "name": name,
        "type": if v6 { "ipv6_addr" } else { "ipv4_addr" }});
    if interval {
        s["flags"] = json!(["interval"]);
    }
    if !elems.is_empty() {
        s["elem"] = Value::Array(elems);
    }
    json!({"add": {"set": s}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn matches(proto: &str, field: &str, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}}, "right": right}})
}

/// The complete table for this node, as `nft -j` input.
pub fn ruleset(cfg: &Config, own_cidrs: &[IpNetwork], node_ips: &[IpAddr]) -> Value {
    let mut cmds = vec![
        json!({"add": {"table": {"family": "inet", "name": TABLE}}}),
        json!({"delete": {"table": {"family": "inet", "name": TABLE}}}),
        json!({"add": {"table": {"family": "inet", "name": TABLE}}}),
    ];
    for v6 in [false, true] {
        let fam = if v6 { "6" } else { "4" };
        let cluster: Vec<Value> = cfg.cluster_cidrs.iter().filter(|c| c.is_ipv6() == v6).map(prefix).collect();
        // Destinations that keep the pod's address: the cluster, what the operator listed, and the nodes.
        let mut keep: Vec<Value> = cluster.clone();
        keep.extend(cfg.non_masquerade_cidrs.iter().filter(|c| c.is_ipv6() == v6).map(prefix));
        let mut ips: Vec<&IpAddr> = node_ips.iter().filter(|ip| ip.is_ipv6() == v6).collect();
        ips.sort();
        ips.dedup();
        cmds.push(set(&format!("cluster{fam}"), v6, true, cluster));
        cmds.push(set(&format!("keep_source{fam}"), v6, true, keep));
        cmds.push(set(&format!("nodes{fam}"), v6, false, ips.iter().map(|ip| json!(ip.to_string())).collect()));
    }
    cmds.push(json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "forward",
        "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}));
    for (proto, fam) in [("ip", "4"), ("ip6", "6")] {
        for field in ["saddr", "daddr"] {
            cmds.push(rule(
                "forward",
                vec![matches(proto, field, "==", json!(format!("@cluster{fam}"))), json!({"accept": null})],
            ));
        }
    }
    if cfg.masquerade {
        cmds.push(json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}));
        for own in own_cidrs {
            let (proto, fam) = if own.is_ipv6() { ("ip6", "6") } else { ("ip", "4") };
            cmds.push(rule(
                "postrouting",
                vec![
                    matches(proto, "saddr", "==", prefix(own)),
                    matches(proto, "daddr", "!=", json!(format!("@keep_source{fam}"))),
                    matches(proto, "daddr", "!=", json!(format!("@nodes{fam}"))),
                    json!({"masquerade": {"flags": ["fully-random"]}}),
                ],
            ));
        }
    }
    json!({"nftables": cmds})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    fn cfg(masquerade: bool) -> Config {
        let mut c = Config::example(Backend::Auto);
        c.non_masquerade_cidrs = vec!["172.20.0.0/16".parse().unwrap()];
        c.masquerade = masquerade;
        c
    }

    #[test]
    fn ruleset_parses_as_nft_json_and_masquerades_only_own_pods_leaving_the_cluster() {
        let own: Vec<IpNetwork> = vec!["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()];
        let nodes: Vec<IpAddr> = vec!["198.51.100.12".parse().unwrap(), "2001:db8:a::12".parse().unwrap()];
        let r = ruleset(&cfg(true), &own, &nodes);
        serde_json::from_value::<nftables::schema::Nftables>(r.clone()).expect("valid nft JSON");
        let text = r.to_string();
        // add, delete, add: the replacement is one transaction even when the table is absent.
        assert_eq!(r["nftables"][0]["add"]["table"]["name"], "weft");
        assert!(r["nftables"][1]["delete"].is_object());
        assert!(text.contains("\"masquerade\""));
        assert!(text.contains("198.51.100.12") && text.contains("172.20.0.0") && text.contains("2001:db8:a::12"));
        assert!(text.contains("@nodes4") && text.contains("@nodes6"), "node addresses keep the source");
        let masq_rules = text.matches("\"masquerade\"").count();
        assert_eq!(masq_rules, 2, "one per own pod CIDR");
        let off = ruleset(&cfg(false), &own, &nodes).to_string();
        assert!(!off.contains("masquerade") && off.contains("\"forward\""));
    }
}
