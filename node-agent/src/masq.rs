//! Egress masquerade and forwarding, as one nftables table owned by weft.
//!
//! The whole table is replaced in one `nft` transaction (add, delete, add:
//! kindnet's trick, so a missing table is no error), so there is never a
//! moment with half a rule set, and no other table is ever touched.
//! - Pod traffic to anything outside the cluster CIDRs, the nodes' own
//!   addresses and `nonMasqueradeCIDRs` leaves with the node's address.
//! - Pod-to-pod and pod-to-node traffic keeps the pod's source address.
//! - Forwarded pod traffic is accepted in weft's own forward chain. (A drop
//!   policy in another table still applies: nftables cannot override it.)
//!
//! The nodes' addresses sit in sets of their own (`nodes4`, `nodes6`): when
//! only they change, as when a Node joins or leaves, the elements are added
//! and deleted in one transaction instead of rebuilding a table that holds
//! thousands of them.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use crate::config::Config;

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

/// Elements of the node sets to add and to delete, as one transaction.
pub fn node_set_changes(old: &[IpAddr], new: &[IpAddr]) -> Option<Value> {
    let (old, new): (BTreeSet<&IpAddr>, BTreeSet<&IpAddr>) = (old.iter().collect(), new.iter().collect());
    let mut cmds = Vec::new();
    for (verb, ips) in [("delete", old.difference(&new)), ("add", new.difference(&old))] {
        let ips: Vec<&IpAddr> = ips.copied().collect();
        for v6 in [false, true] {
            let elem: Vec<Value> = ips.iter().filter(|ip| ip.is_ipv6() == v6).map(|ip| json!(ip.to_string())).collect();
            if !elem.is_empty() {
                let name = if v6 { "nodes6" } else { "nodes4" };
                cmds.push(json!({verb: {"element": {"family": "inet", "table": TABLE, "name": name, "elem": elem}}}));
            }
        }
    }
    (!cmds.is_empty()).then(|| json!({"nftables": cmds}))
}

/// Keeps the table in line with its inputs: the whole table when it is new,
/// `force`d (the periodic resync repairs a table someone else flushed) or
/// the own pod CIDRs changed; only the node sets' elements when just the
/// nodes changed. Comparing inputs, not rendered JSON, keeps a pass over
/// thousands of nodes from building a rule set it would not apply.
#[derive(Default)]
pub struct Masq {
    last: Option<(Vec<IpNetwork>, Vec<IpAddr>)>,
}

impl Masq {
    /// Returns true when it changed the table.
    pub async fn sync(
        &mut self,
        cfg: &Config,
        own_cidrs: &[IpNetwork],
        node_ips: &[IpAddr],
        force: bool,
    ) -> Result<bool, String> {
        let mut ips = node_ips.to_vec();
        ips.sort();
        ips.dedup();
        let inputs = (own_cidrs.to_vec(), ips);
        if self.last.as_ref() == Some(&inputs) && !force {
            return Ok(false);
        }
        let delta = match &self.last {
            Some((own, old)) if !force && *own == inputs.0 => node_set_changes(old, &inputs.1),
            _ => None,
        };
        // A delta that fails (the table was changed behind our back) falls back to the whole table.
        let applied_delta = match delta {
            Some(d) => {
                apply(d).await.map_err(|e| tracing::info!("node set update failed, replacing the table: {e}")).is_ok()
            }
            None => false,
        };
        if !applied_delta {
            apply(ruleset(cfg, &inputs.0, &inputs.1)).await?;
            if self.last.as_ref() != Some(&inputs) {
                tracing::info!(table = TABLE, node_addresses = inputs.1.len(), "replaced nftables table");
            }
        }
        self.last = Some(inputs);
        Ok(true)
    }
}

async fn apply(rules: Value) -> Result<(), String> {
    let parsed: nftables::schema::Nftables =
        serde_json::from_value(rules).map_err(|e| format!("rule set does not fit the nft schema: {e}"))?;
    tokio::task::spawn_blocking(move || nftables::helper::apply_ruleset(&parsed))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Deletes weft's table (for `weft-agent cleanup`); a missing table is fine.
pub async fn remove() -> Result<(), String> {
    apply(json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": TABLE}}},
        {"delete": {"table": {"family": "inet", "name": TABLE}}},
    ]}))
    .await
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

    #[test]
    fn node_changes_become_element_updates_of_one_transaction() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let old = [ip("198.51.100.11"), ip("198.51.100.12"), ip("2001:db8:a::12")];
        let new = [ip("198.51.100.11"), ip("198.51.100.13"), ip("2001:db8:a::12")];
        let d = node_set_changes(&old, &new).unwrap();
        serde_json::from_value::<nftables::schema::Nftables>(d.clone()).expect("valid nft JSON");
        let cmds = d["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 2, "{d}");
        assert_eq!(cmds[0]["delete"]["element"]["name"], "nodes4");
        assert_eq!(cmds[0]["delete"]["element"]["elem"], json!(["198.51.100.12"]));
        assert_eq!(cmds[1]["add"]["element"]["elem"], json!(["198.51.100.13"]));
        assert!(node_set_changes(&old, &old).is_none());
    }
}
