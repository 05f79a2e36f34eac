//! The `inet weft` nftables table, as data: masquerade and the data
//! plane's trust filters.
//!
//! - Pod traffic to anything outside the cluster CIDRs, the nodes' own
//!   addresses and `nonMasqueradeCIDRs` leaves with the node's address.
//! - Pod-to-pod and pod-to-node traffic keeps the pod's source address.
//! - No forward chain to accept pod traffic: an accept in weft's own table
//!   could not override a drop in another table (an accept ends only its
//!   own chain), and a base chain that only accepts still costs every
//!   forwarded packet its hook (net-bench: about 10 % of pod-to-pod
//!   throughput on this kernel).
//! - When pods have a larger MTU than the tunnel (`auto`: they get the
//!   underlay's, see `desired::kernel_base`), one forward chain clamps the
//!   MSS of TCP SYNs that leave through the VXLAN device to its route's
//!   MTU, so a connection to a peer behind the tunnel starts with segments
//!   that fit instead of losing its first full-size ones to path-MTU
//!   discovery. With `vxlan` pods already have the tunnel's MTU: the chain
//!   could never change a SYN, yet its hook would cost every forwarded
//!   packet, so it is not rendered.
//! - A packet from a pod's host veth must carry that pod's address: strict
//!   reverse-path filtering by `fib`, one static rule for every `weft*`
//!   veth, so the ADD path adds no rule. A pod that takes another pod's
//!   (or any other) address is dropped before conntrack sees it. Checked
//!   on every packet, not only on new connections: conntrack finds an
//!   entry by its addresses and ports alone, not by the interface, so a
//!   pod forging another pod's established 5-tuple (a DNS answer to it,
//!   say) would be `established` and pass. The `fib` lookup stays: the
//!   whole rule costs 2.9 % of CPU per GB [−0.4–4.0], and an exact-match
//!   set of (veth, address), which the agent would have to keep per pod,
//!   2.2 % [0.1–6.0] (net-bench's paired routes group, IPv4, ±3 %
//!   intervals; bench/README.md): nothing to win. Nor has matching an
//!   interface group instead of the name wildcard.
//! - With VXLAN in use, the VXLAN port takes packets only from the underlay
//!   addresses of believed peers, and pods may not send to that port at
//!   all: a pod could otherwise inject frames into another node's overlay,
//!   directly or through masquerade (which gives it this node's address).
//! - No chain here after conntrack sees a pod's forwarded packet but the
//!   MSS clamp (whose first match, the output device, ends it for the
//!   rest), so there is no `ct state established accept` to put first; the
//!   prerouting rules run before conntrack and must see every packet.
//!   VXLAN's outer packets stay tracked: leaving them untracked measured
//!   no cheaper (net-bench, about ±5 % here), costs an output hook of its
//!   own, and would turn a host firewall's `ct state new udp dport 8472
//!   accept` into a drop.
//!
//! Every drop has a named counter (see [`DROP_COUNTERS`]). The node and
//! peer addresses sit in sets of their own (`nodes4/6`, `vxlan_peers4/6`),
//! so `apply::weft_table` can change just their elements when only nodes
//! change.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use super::nft_plan::{Element, NftPlan, Verb, add_elements, write_commands};
use crate::base::names::{DROP_COUNTERS, HOST_VETH_GLOB, VXLAN_DEV, WEFT_TABLE};
use crate::config::{Backend, Config};

/// What the table is built from besides the configuration: the own pod
/// CIDRs, every node's addresses and the believed peers' underlay
/// addresses (both sorted, without duplicates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftTable {
    pub own_cidrs: Vec<IpNetwork>,
    pub node_ips: Vec<IpAddr>,
    /// Where VXLAN packets may come from.
    pub vxlan_peers: Vec<IpAddr>,
    /// Whether SYNs toward the tunnel need their MSS clamped: pods have a
    /// larger MTU than the VXLAN device.
    pub mss_clamp: bool,
}

impl NftTable {
    pub fn new(own_cidrs: &[IpNetwork], node_ips: &[IpAddr], vxlan_peers: &[IpAddr]) -> NftTable {
        let sorted = |ips: &[IpAddr]| {
            let mut ips = ips.to_vec();
            ips.sort();
            ips.dedup();
            ips
        };
        NftTable {
            own_cidrs: own_cidrs.to_vec(),
            node_ips: sorted(node_ips),
            vxlan_peers: sorted(vxlan_peers),
            mss_clamp: false,
        }
    }

    /// Whether `other` has the same chains and rules, so that the two
    /// differ at most in the elements of the address sets.
    pub fn same_rules(&self, other: &NftTable) -> bool {
        self.own_cidrs == other.own_cidrs && self.mss_clamp == other.mss_clamp
    }
}

/// The name of an address set: `nodes4`, `vxlan_peers6`, …
pub fn set_name(base: &str, v6: bool) -> String {
    format!("{base}{}", if v6 { "6" } else { "4" })
}

fn prefix(net: &IpNetwork) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix()}})
}

fn set(name: &str, v6: bool, interval: bool, elems: Vec<Value>) -> Value {
    let mut s = json!({"family": "inet", "table": WEFT_TABLE, "name": name,
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
    json!({"add": {"rule": {"family": "inet", "table": WEFT_TABLE, "chain": chain, "expr": expr}}})
}

fn matches(proto: &str, field: &str, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}}, "right": right}})
}

fn chain(name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    json!({"add": {"chain": {"family": "inet", "table": WEFT_TABLE, "name": name,
        "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})
}

fn meta(key: &str, op: &str, right: &str) -> Value {
    json!({"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}})
}

fn count_and_drop(counter: &str) -> [Value; 2] {
    [json!({"counter": counter}), json!({"drop": null})]
}

fn addresses(ips: &[IpAddr], v6: bool) -> impl Iterator<Item = Value> {
    ips.iter().filter(move |ip| ip.is_ipv6() == v6).map(|ip| json!(ip.to_string()))
}

/// `oifname "weft.vxlan" tcp flags syn / syn,rst tcp option maxseg size
/// set rt mtu`: SYN and SYN-ACK, both families, the route's MTU less the
/// IP and TCP headers.
fn mss_clamp() -> Vec<Value> {
    let syn = json!({"match": {"op": "==",
        "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "rst"]]}, "right": "syn"}});
    vec![
        meta("oifname", "==", VXLAN_DEV),
        syn,
        json!({"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": {"rt": {"key": "mtu"}}}}),
    ]
}

/// Whether the table filters VXLAN: when any peer may be reached over it.
pub fn uses_vxlan(cfg: &Config) -> bool {
    cfg.backend != Backend::Routes
}

/// The complete table for this node, as `nft -j` input.
pub fn ruleset(cfg: &Config, t: &NftTable) -> Value {
    let mut cmds = Vec::new();
    commands(cfg, t, |c| cmds.push(c));
    json!({"nftables": cmds})
}

/// Writes [`ruleset`] to `out` as `nft -j` input text, one command at a
/// time: at 20,000 Nodes the node sets hold 80,000 addresses, and the
/// table as one `Value` tree, checked against the nftables schema and
/// serialized again, raised the agent's peak RSS by 12.7 MiB.
pub fn write_ruleset(cfg: &Config, t: &NftTable, out: &mut (impl std::io::Write + ?Sized)) -> std::io::Result<()> {
    write_commands(out, |out| commands(cfg, t, out))
}

/// The commands of [`ruleset`], in order, each passed to `out`. Over 60
/// lines: the table reads top to bottom as `nft list table` prints it.
fn commands(cfg: &Config, t: &NftTable, mut out: impl FnMut(Value)) {
    for cmd in [
        json!({"add": {"table": {"family": "inet", "name": WEFT_TABLE}}}),
        json!({"delete": {"table": {"family": "inet", "name": WEFT_TABLE}}}),
        json!({"add": {"table": {"family": "inet", "name": WEFT_TABLE}}}),
    ] {
        out(cmd);
    }
    for (name, _) in DROP_COUNTERS {
        out(json!({"add": {"counter": {"family": "inet", "table": WEFT_TABLE, "name": name}}}));
    }
    for v6 in [false, true] {
        let cluster: Vec<Value> = cfg.cluster_cidrs.iter().filter(|c| c.is_ipv6() == v6).map(prefix).collect();
        // Destinations that keep the pod's address: the cluster, what the operator listed, and the nodes.
        let mut keep: Vec<Value> = cluster.clone();
        keep.extend(cfg.non_masquerade_cidrs.iter().filter(|c| c.is_ipv6() == v6).map(prefix));
        out(set(&set_name("cluster", v6), v6, true, cluster));
        out(set(&set_name("keep_source", v6), v6, true, keep));
        // One per node: thousands, in bounded commands of their own.
        for (base, ips) in [("nodes", &t.node_ips), ("vxlan_peers", &t.vxlan_peers)] {
            let name = set_name(base, v6);
            out(set(&name, v6, false, Vec::new()));
            add_elements(WEFT_TABLE, &name, addresses(ips, v6), &mut out);
        }
    }

    // Before conntrack (raw priority), so a forged packet leaves no state.
    out(chain("prerouting", "filter", "prerouting", -300));
    let from_pod = || [meta("iifname", "==", HOST_VETH_GLOB), meta("iifname", "!=", VXLAN_DEV)];
    let rpf_fails =
        json!({"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": ["saddr", "iif"]}}, "right": false}});
    out(rule("prerouting", [from_pod().to_vec(), vec![rpf_fails], count_and_drop("spoofed_source").to_vec()].concat()));
    if uses_vxlan(cfg) {
        let vxlan_port = matches("udp", "dport", "==", json!(cfg.vxlan.port));
        out(rule(
            "prerouting",
            [from_pod().to_vec(), vec![vxlan_port.clone()], count_and_drop("pod_vxlan").to_vec()].concat(),
        ));
        if t.mss_clamp {
            // Mangle priority (-150), as MSS clamping conventionally runs.
            out(chain("forward", "filter", "forward", -150));
            out(rule("forward", mss_clamp()));
        }
        out(chain("input", "filter", "input", 0));
        for (proto, v6) in [("ip", false), ("ip6", true)] {
            let unknown = matches(proto, "saddr", "!=", json!(format!("@{}", set_name("vxlan_peers", v6))));
            out(rule(
                "input",
                [vec![vxlan_port.clone(), unknown], count_and_drop("vxlan_unknown_peer").to_vec()].concat(),
            ));
        }
    }
    if cfg.masquerade {
        out(chain("postrouting", "nat", "postrouting", 100));
        for own in &t.own_cidrs {
            let (proto, fam) = if own.is_ipv6() { ("ip6", "6") } else { ("ip", "4") };
            out(rule(
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
}

/// Elements of the address sets to add and to delete, as one transaction;
/// `None` when they are the same. Only valid between tables with the same
/// rules ([`NftTable::same_rules`]): nothing else is compared.
pub fn set_changes(old: &NftTable, new: &NftTable) -> Option<NftPlan> {
    let mut plan = NftPlan::default();
    for (base, old, new) in
        [("nodes", &old.node_ips, &new.node_ips), ("vxlan_peers", &old.vxlan_peers, &new.vxlan_peers)]
    {
        let (deleted, added) = sorted_difference(old, new);
        for (verb, ips) in [(Verb::Delete, deleted), (Verb::Add, added)] {
            for v6 in [false, true] {
                let elements = ips.iter().filter(|ip| ip.is_ipv6() == v6).map(|ip| Element::Addr(**ip)).collect();
                plan.elements(verb, WEFT_TABLE, set_name(base, v6), elements);
            }
        }
    }
    (!plan.is_empty()).then_some(plan)
}

/// What only `old` holds and what only `new` holds, both sorted (as
/// [`NftTable`] keeps them): one merge, no sets, at thousands of nodes.
fn sorted_difference<'a>(old: &'a [IpAddr], new: &'a [IpAddr]) -> (Vec<&'a IpAddr>, Vec<&'a IpAddr>) {
    let (mut deleted, mut added) = (Vec::new(), Vec::new());
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (Some(a), Some(b)) if a == b => {
                o.next();
                n.next();
            }
            (Some(a), Some(b)) if a < b => deleted.extend(o.next()),
            (Some(_), Some(_)) | (None, Some(_)) => added.extend(n.next()),
            (Some(_), None) => deleted.extend(o.next()),
            (None, None) => return (deleted, added),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_changes_become_element_updates_of_one_transaction() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let own = ["10.244.1.0/24".parse().unwrap()];
        let old = NftTable::new(
            &own,
            &[ip("198.51.100.11"), ip("198.51.100.12"), ip("2001:db8:a::12")],
            &[ip("198.51.100.12")],
        );
        let new = NftTable::new(
            &own,
            &[ip("198.51.100.11"), ip("198.51.100.13"), ip("2001:db8:a::12")],
            &[ip("198.51.100.13")],
        );
        let plan = set_changes(&old, &new).unwrap();
        let d = plan.to_json();
        serde_json::from_value::<nftables::schema::Nftables>(d.clone()).expect("valid nft JSON");
        let cmds = d["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 4, "{d}");
        assert_eq!(cmds[0]["delete"]["element"]["name"], "nodes4");
        assert_eq!(cmds[0]["delete"]["element"]["elem"], json!(["198.51.100.12"]));
        assert_eq!(cmds[1]["add"]["element"]["elem"], json!(["198.51.100.13"]));
        assert_eq!(cmds[2]["delete"]["element"]["name"], "vxlan_peers4");
        assert_eq!(cmds[3]["add"]["element"]["elem"], json!(["198.51.100.13"]));
        assert!(set_changes(&old, &old).is_none());
        // A clamp coming or going is a change of rules: the whole table, not elements.
        assert!(old.same_rules(&new) && !old.same_rules(&NftTable { mss_clamp: true, ..new.clone() }));
        // Written over netlink, not by an `nft` process.
        assert_eq!(plan.element_changes().map(|e| e.len()), Some(4), "element changes only");
    }

    fn cfg(backend: Backend, masquerade: bool) -> Config {
        let mut c = Config::example(backend);
        c.non_masquerade_cidrs = vec!["172.20.0.0/16".parse().unwrap()];
        c.masquerade = masquerade;
        c
    }

    fn table() -> NftTable {
        let own: Vec<IpNetwork> = vec!["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()];
        let nodes: Vec<IpAddr> = vec!["198.51.100.12".parse().unwrap(), "2001:db8:a::12".parse().unwrap()];
        let peers: Vec<IpAddr> = vec!["198.51.100.13".parse().unwrap()];
        NftTable::new(&own, &nodes, &peers)
    }

    /// The rules of `chain`, each as the compact JSON text of its expressions.
    fn rules(r: &Value, chain: &str) -> Vec<String> {
        r["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == chain)
            .map(|c| c["add"]["rule"]["expr"].to_string())
            .collect()
    }

    /// The elements added to set `name`, in the order written.
    fn elements(r: &Value, name: &str) -> Vec<String> {
        r["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add"]["element"]["name"] == name)
            .flat_map(|c| c["add"]["element"]["elem"].as_array().unwrap())
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn thousands_of_nodes_are_written_as_text_in_bounded_element_commands() {
        let own: Vec<IpNetwork> = vec!["10.244.1.0/24".parse().unwrap()];
        let ips: Vec<IpAddr> = (0..2500u32).map(|i| IpAddr::V4((0xc612_0000u32 + i).into())).collect();
        let t = NftTable::new(&own, &ips, &ips[1..]);
        let c = cfg(Backend::Vxlan, true);
        let r = ruleset(&c, &t);
        let mut text = Vec::new();
        write_ruleset(&c, &t, &mut text).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&text).unwrap(), r, "the text form is the same rule set");
        serde_json::from_value::<nftables::schema::Nftables>(r.clone()).expect("valid nft JSON");
        let cmds = r["nftables"].as_array().unwrap();
        let adds = cmds.iter().filter(|c| c["add"]["element"]["name"] == "nodes4").count();
        assert_eq!(adds, 3, "2,500 elements in commands of at most {}", crate::desired::nft_plan::ELEMENTS_PER_COMMAND);
        let want: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        assert_eq!(elements(&r, "nodes4"), want);
        assert_eq!(elements(&r, "vxlan_peers4"), want[1..]);
        assert!(elements(&r, "nodes6").is_empty());
        let set = cmds.iter().position(|c| c["add"]["set"]["name"] == "nodes4");
        let first = cmds.iter().position(|c| c["add"]["element"]["name"] == "nodes4");
        assert!(set < first, "the set exists before its elements");
    }

    #[test]
    fn ruleset_parses_as_nft_json_and_masquerades_only_own_pods_leaving_the_cluster() {
        let r = ruleset(&cfg(Backend::Auto, true), &table());
        serde_json::from_value::<nftables::schema::Nftables>(r.clone()).expect("valid nft JSON");
        let text = r.to_string();
        // add, delete, add: the replacement is one transaction even when the table is absent.
        assert_eq!(r["nftables"][0]["add"]["table"]["name"], "weft");
        assert!(r["nftables"][1]["delete"].is_object());
        assert!(text.contains("198.51.100.12") && text.contains("172.20.0.0") && text.contains("2001:db8:a::12"));
        let masq = rules(&r, "postrouting");
        assert_eq!(masq.len(), 2, "one per own pod CIDR: {masq:?}");
        assert!(masq.iter().all(|m| m.contains("masquerade") && m.contains("@keep_source") && m.contains("@nodes")));
        let off = ruleset(&cfg(Backend::Auto, false), &table()).to_string();
        assert!(!off.contains("masquerade") && off.contains("spoofed_source"));
        // No chain on every forwarded packet that decides nothing: no forward chain without the MSS clamp,
        // and with it the clamp alone.
        assert!(rules(&r, "forward").is_empty() && !text.contains(r#""hook":"forward""#), "{text}");
        let clamped = ruleset(&cfg(Backend::Auto, true), &NftTable { mss_clamp: true, ..table() });
        let forward = rules(&clamped, "forward");
        assert!(forward.len() == 1 && !forward[0].contains("accept"), "{forward:?}");
    }

    #[test]
    fn pods_must_send_from_their_own_address_on_every_backend() {
        for backend in [Backend::Routes, Backend::Vxlan, Backend::Auto] {
            let r = ruleset(&cfg(backend, true), &table());
            let pre = rules(&r, "prerouting");
            let rpf = pre.iter().find(|x| x.contains("spoofed_source")).expect("anti-spoofing rule");
            // Strict reverse-path check on pod veths only, not on the VXLAN device.
            assert!(rpf.contains(r#"{"fib":{"flags":["saddr","iif"],"result":"oif"}}"#), "{rpf}");
            assert!(rpf.contains(r#""right":"weft*""#) && rpf.contains(r#""op":"!=","right":"weft.vxlan""#), "{rpf}");
            assert!(rpf.ends_with(r#"{"counter":"spoofed_source"},{"drop":null}]"#), "{rpf}");
        }
    }

    #[test]
    fn vxlan_port_is_closed_to_pods_and_open_only_to_believed_peers() {
        let mut c = cfg(Backend::Vxlan, true);
        c.vxlan.port = 4789;
        let r = ruleset(&c, &table());
        let text = r.to_string();
        assert_eq!(elements(&r, "vxlan_peers4"), ["198.51.100.13"], "{text}");
        let pre = rules(&r, "prerouting");
        let pod = pre.iter().find(|x| x.contains("pod_vxlan")).expect("pods' VXLAN dropped");
        assert!(pod.contains(r#""field":"dport","protocol":"udp"}},"op":"==","right":4789"#), "{pod}");
        let input = rules(&r, "input");
        assert_eq!(input.len(), 2, "one per family: {input:?}");
        for (x, set) in input.iter().zip(["@vxlan_peers4", "@vxlan_peers6"]) {
            assert!(
                x.contains(set) && x.contains(r#""op":"!=""#) && x.contains("4789") && x.contains("vxlan_unknown_peer")
            );
        }
        // SYNs leaving through the tunnel get the route's MTU as their MSS,
        // where pods have a larger MTU than the tunnel; otherwise no forward hook.
        assert!(rules(&r, "forward").is_empty(), "pods fit the tunnel: no clamp");
        let clamped = ruleset(&c, &NftTable { mss_clamp: true, ..table() });
        let forward = rules(&clamped, "forward");
        assert_eq!(forward.len(), 1, "{forward:?}");
        assert!(forward[0].contains(r#""right":"weft.vxlan""#) && forward[0].contains(r#""rt":{"key":"mtu"}"#));
        serde_json::from_value::<nftables::schema::Nftables>(clamped).expect("valid nft JSON");
        // With direct routes only, nothing listens on the VXLAN port: pods keep it.
        let routes = ruleset(&cfg(Backend::Routes, true), &NftTable { mss_clamp: true, ..table() });
        assert!(rules(&routes, "input").is_empty() && !routes.to_string().contains("pod_vxlan\"},"));
        assert!(rules(&routes, "forward").is_empty(), "no forward hook without a tunnel");
        serde_json::from_value::<nftables::schema::Nftables>(routes).expect("valid nft JSON");
    }
}
