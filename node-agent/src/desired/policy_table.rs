//! The `inet weft-policy` nftables table, as data (`nft -j` input), from a
//! [`PolicyState`]. A table of its own, so replacing or editing it never
//! touches the masquerade table `inet weft`.
//!
//! ```text
//! table inet weft-policy {
//!   set peer-<h>-4 / -6        { pod addresses; or interval: ipBlock ranges }
//!   set port-<h>-4 / -6        { addr . inet_service: pods' named port numbers }
//!   map egress4 / egress6      { local pod address : jump eg-<h> }
//!   map ingress4 / ingress6    { local pod address : jump in-<h> }
//!   chain egress  { hook forward priority 0; ct state established,related accept;
//!                   iifgroup { 8702, 8703 } counter name egress_pending drop; ip saddr vmap @egress4; ... }
//!   chain ingress { hook forward priority 1; ct state established,related accept;
//!                   oifgroup { 8701, 8703 } counter name ingress_pending drop; ip daddr vmap @ingress4; ... }
//!   counter ingress_denied / egress_denied / ingress_pending / egress_pending
//!   limit deny-log { rate 10/second }   # networkPolicy.logDenied: one for the node, shared by every group
//!   counter in-pol-<h> / eg-pol-<h>   # packets denied to or from pods this policy isolates
//!   chain in-<h>     { jump in-pol-<h>; ...;
//!                      limit name "deny-log" log group 100 prefix "weft deny ingress: ns/pol,..";   # networkPolicy.logDenied
//!                      counter name ingress_denied counter name in-pol-<h> ... drop }   # a group: one list of policies
//!   chain in-pol-<h> { ip saddr @peer-<h>-4 meta l4proto tcp th dport { 80, 443 } accept; ... }
//! }
//! ```
//! Every group chain starts with the liveness gate ([`liveness_rule`]):
//!
//! ```text
//!   set liveness { type nf_proto; flags timeout; elements = { ipv4 timeout 5m, ipv6 timeout 5m } }
//!   chain in-<h> { meta nfproto != @liveness counter name policy_stale drop; jump in-pol-<h>; ... }
//! ```
//! Its elements expire unless weft-agent renews them, which it does only
//! while its view of the API is fresh and applied (`desired::liveness`).
//! Peer sets hold the addresses of pods on other nodes, and an agent that
//! cannot see the API cannot remove a deleted pod's: once the gate closes,
//! new connections to and from isolated pods are dropped rather than judged
//! by such sets, so a pod that gets the address later (after IPAM's
//! quarantine, which outlasts the gate) never inherits the old pod's
//! allowances. Established connections and unisolated pods are untouched.
//!
//! Egress and ingress are two base chains on the forward hook: an accept in
//! `egress` ends only that chain, so a packet between two local pods must
//! also pass `ingress`; a drop in either is final. The node's own traffic
//! to its pods leaves through the output hook and is never filtered here.
//! While no local pod is isolated and no namespace has isolating policies
//! (`PolicyState::idle`), the two base chains are left out: every
//! verdict would be "allowed", and a base chain costs each forwarded
//! packet its hook even when its first rule accepts it.
//!
//! The `*_pending` rules hold new pods closed until their rules are here:
//! the plugin creates the host veth of a pod whose namespace has isolating
//! policies in a pending interface group ([`libweft::pending`]), and the
//! agent moves it to group 0 once the pod is in the maps (or known to be
//! selected by no policy). Replies of the pod's own connections are
//! established and pass; everything else to or from it is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{Value, json};

use super::cluster_policy::ClusterChain;
use super::nft_plan::{self, Element, NftPlan, Verb, write_commands};
use super::policy::{AddressSet, Allow, Group, PeerMatch, PolicyChain, PolicyState, PortSet, PortsMatch};
use crate::base::names::{LIVENESS_SET, POLICY_TABLE, STALE_COUNTER, denied_counter, pending_counter};
use crate::config::DenyLog;
use crate::wire_cluster_policy::{Action, Tier};
use crate::wire_policy::Direction;

/// Priority of the `egress` base chain; `ingress` runs right after it.
pub const PRIO_EGRESS: i32 = 0;

/// The rule dropping new connections to (ingress) or from (egress) the
/// pending interface groups of `d`.
fn pending_rule(d: Direction) -> Vec<Value> {
    let (key, groups) = match d {
        Direction::Ingress => ("oifgroup", libweft::pending::PENDING_INGRESS_GROUPS),
        Direction::Egress => ("iifgroup", libweft::pending::PENDING_EGRESS_GROUPS),
    };
    vec![
        eq(json!({"meta": {"key": key}}), json!({"set": groups})),
        json!({"counter": pending_counter(d)}),
        json!({"drop": null}),
    ]
}

/// Each family: whether IPv6, its nft payload protocol.
const FAMILIES: [(bool, &str); 2] = [(false, "ip"), (true, "ip6")];

/// The suffix of a family's set or map: `4` or `6`.
fn fam(v6: bool) -> &'static str {
    if v6 { "6" } else { "4" }
}

fn addr_type(v6: bool) -> &'static str {
    if v6 { "ipv6_addr" } else { "ipv4_addr" }
}

fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}

fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn add_rule(chain: &str, expr: Vec<Value>, comment: Option<String>) -> Value {
    let mut r = json!({"family": "inet", "table": POLICY_TABLE, "chain": chain, "expr": expr});
    if let Some(c) = comment {
        // The kernel keeps at most 128 bytes of a comment.
        r["comment"] = json!(c.chars().take(100).collect::<String>());
    }
    json!({"add": {"rule": r}})
}

fn chain(name: &str) -> Value {
    json!({"add": {"chain": {"family": "inet", "table": POLICY_TABLE, "name": name}}})
}

/// A set element for the inclusive address range `a..=b`.
pub fn range_elem(a: IpAddr, b: IpAddr) -> Value {
    Element::range(a, b).to_json()
}

/// A verdict map element: `addr : jump group`.
pub fn map_elem(ip: IpAddr, group: &str) -> Value {
    Element::Jump(ip, group.to_string()).to_json()
}

/// A named-port set element: `addr . port`.
pub fn port_elem(ip: IpAddr, port: u16) -> Value {
    Element::AddrPort(ip, port).to_json()
}

/// `{verb: {"element": ...}}`: `elem` added to or deleted from set or map `name`.
pub fn element(verb: &str, name: &str, elem: Vec<Value>) -> Value {
    json!({verb: {"element": {"family": "inet", "table": POLICY_TABLE, "name": name, "elem": elem}}})
}

/// The kernel set holding one family of peer or named-port set `name`.
pub fn family_set(name: &str, v6: bool) -> String {
    format!("{name}-{}", fam(v6))
}

/// The verdict map of a direction and family.
pub fn map_name(d: Direction, v6: bool) -> String {
    format!("{d}{}", fam(v6))
}

/// The elements of a verdict map, for `add element`.
fn map_elems(state: &PolicyState, d: Direction, v6: bool) -> impl Iterator<Item = Value> {
    let map = match d {
        Direction::Ingress => &state.ingress,
        Direction::Egress => &state.egress,
    };
    map.iter().filter(move |(ip, _)| ip.is_ipv6() == v6).map(|(ip, group)| map_elem(*ip, group))
}

/// The complete table, replacing any previous one in one transaction,
/// with its liveness gate closed ([`liveness_renewal`] opens it).
pub fn ruleset(state: &PolicyState) -> Value {
    let mut cmds = Vec::new();
    commands(state, None, |c| cmds.push(c));
    json!({"nftables": cmds})
}

/// Writes [`ruleset`] to `out` as `nft -j` input text, one command at a
/// time: the whole table as one `Value` tree is several times the size of
/// its text (tens of MB at 10,000 pods and 1,000 policies). The liveness
/// gate is open for `live_for`, closed for `None`.
pub fn write_ruleset(
    state: &PolicyState,
    live_for: Option<std::time::Duration>,
    out: &mut (impl std::io::Write + ?Sized),
) -> std::io::Result<()> {
    write_commands(out, |out| commands(state, live_for, out))
}

/// The named limit every group chain's deny log shares.
const DENY_LOG_LIMIT: &str = "deny-log";

/// The commands of [`ruleset`], in order, each passed to `out`. Over 60
/// lines: the table in the order the kernel needs its references.
fn commands(state: &PolicyState, live_for: Option<std::time::Duration>, mut out: impl FnMut(Value)) {
    for cmd in [
        json!({"add": {"table": {"family": "inet", "name": POLICY_TABLE}}}),
        json!({"delete": {"table": {"family": "inet", "name": POLICY_TABLE}}}),
        json!({"add": {"table": {"family": "inet", "name": POLICY_TABLE}}}),
    ] {
        out(cmd);
    }
    for (name, set) in &state.sets {
        address_set(name, set, &mut out);
    }
    for (name, set) in &state.port_sets {
        port_set(name, set, &mut out);
    }
    if let Some(log) = &state.deny_log {
        // One limit object for the node: a limit statement in each group
        // chain would allow the rate once per group.
        out(json!({"add": {"limit": {"family": "inet", "table": POLICY_TABLE, "name": DENY_LOG_LIMIT,
            "rate": log.per_second, "per": "second", "burst": log.per_second.max(5)}}}));
    }
    liveness_gate(live_for, &mut out);
    for d in [Direction::Egress, Direction::Ingress] {
        out(json!({"add": {"counter": {"family": "inet", "table": POLICY_TABLE, "name": denied_counter(d)}}}));
        out(json!({"add": {"counter": {"family": "inet", "table": POLICY_TABLE, "name": pending_counter(d)}}}));
        for (v6, _) in FAMILIES {
            out(json!({"add": {"map": {"family": "inet", "table": POLICY_TABLE, "name": map_name(d, v6),
                "type": addr_type(v6), "map": "verdict"}}}));
        }
    }
    // Regular chains first: the base chains and maps refer to them.
    for (name, c) in &state.chains {
        // A counter per policy chain, named like it: what the groups that
        // hold this policy denied (weft_policy_denied_packets_by_policy_total).
        out(object("add", "counter", name));
        out(chain(name));
        policy_rules(name, c, &mut out);
    }
    for (name, c) in &state.cluster_chains {
        // Counts what this ClusterNetworkPolicy's Deny rules dropped.
        out(object("add", "counter", name));
        out(chain(name));
        cluster_rules(state.deny_log.as_ref(), name, c, &mut out);
    }
    for (name, chains) in &state.tiers {
        out(chain(name));
        tier_rules(state, name, chains, &mut out);
    }
    for (name, group) in &state.groups {
        out(chain(name));
        group_rules(state, name, group, &mut out);
    }
    for d in [Direction::Egress, Direction::Ingress] {
        for (v6, _) in FAMILIES {
            add_elements(&map_name(d, v6), map_elems(state, d, v6), &mut out);
        }
    }
    if state.idle {
        // Nothing to decide: no hook, so forwarded packets never enter the table.
        return;
    }
    for (d, prio, field) in [(Direction::Egress, PRIO_EGRESS, "saddr"), (Direction::Ingress, PRIO_EGRESS + 1, "daddr")]
    {
        let name = d.to_string();
        out(json!({"add": {"chain": {"family": "inet", "table": POLICY_TABLE, "name": name,
            "type": "filter", "hook": "forward", "prio": prio, "policy": "accept"}}}));
        // Replies of allowed connections pass before any lookup.
        out(add_rule(
            &name,
            vec![
                json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
                json!({"accept": null}),
            ],
            None,
        ));
        out(add_rule(&name, pending_rule(d), Some("pod not yet known to weft-agent".into())));
        for (v6, proto) in FAMILIES {
            out(add_rule(
                &name,
                vec![json!({"vmap": {"key": payload(proto, field), "data": format!("@{}", map_name(d, v6))}})],
                None,
            ));
        }
    }
}

/// `{verb: {kind: {family, table, name}}}`: a whole named object of the table.
fn object(verb: &str, kind: &str, name: &str) -> Value {
    json!({verb: {kind: {"family": "inet", "table": POLICY_TABLE, "name": name}}})
}

/// Adds peer address set `name` (both families) with its elements.
fn address_set(name: &str, set: &AddressSet, out: &mut impl FnMut(Value)) {
    for (v6, _) in FAMILIES {
        let name = family_set(name, v6);
        let mut s = json!({"family": "inet", "table": POLICY_TABLE, "name": name,
            "type": addr_type(v6), "comment": set.about.chars().take(100).collect::<String>()});
        if set.intervals {
            s["flags"] = json!(["interval"]);
        }
        out(json!({"add": {"set": s}}));
        let elem = set.ranges.iter().filter(|(a, _)| a.is_ipv6() == v6).map(|(a, b)| range_elem(*a, *b));
        add_elements(&name, elem, out);
    }
}

/// Adds `elem` to set or map `name` of the table.
fn add_elements(name: &str, elem: impl Iterator<Item = Value>, out: &mut impl FnMut(Value)) {
    nft_plan::add_elements(POLICY_TABLE, name, elem, out);
}

/// Adds named-port set `name` (both families) with its elements.
fn port_set(name: &str, set: &PortSet, out: &mut impl FnMut(Value)) {
    for (v6, _) in FAMILIES {
        let name = family_set(name, v6);
        out(json!({"add": {"set": {"family": "inet", "table": POLICY_TABLE, "name": name,
            "type": [addr_type(v6), "inet_service"], "comment": format!("named port {}/{}", set.name, set.protocol)}}}));
        let elem = set.elements.iter().filter(|(ip, _)| ip.is_ipv6() == v6).map(|(ip, port)| port_elem(*ip, *port));
        add_elements(&name, elem, out);
    }
}

/// The rules of policy chain `name`: its allows.
fn policy_rules(name: &str, c: &PolicyChain, out: &mut impl FnMut(Value)) {
    for allow in &c.allows {
        for expr in allow_exprs(allow, c.direction) {
            out(add_rule(name, expr, Some(format!("{} {}[{}]", c.policy, c.direction, allow.rule))));
        }
    }
}

/// The rules of group chain `name`: the liveness gate; the Admin tier chain; then, when
/// NetworkPolicy isolates the pods, a jump to each of its policies, the
/// optional log and the counted drop; else the Baseline policies. What
/// falls through is allowed (the base chain's policy).
fn group_rules(state: &PolicyState, name: &str, group: &Group, out: &mut impl FnMut(Value)) {
    out(add_rule(name, liveness_rule(), Some("weft-agent's view of the API is stale".into())));
    if let Some(tier) = &group.admin {
        out(add_rule(name, vec![json!({"jump": {"target": tier}})], Some("Admin tier".into())));
    }
    let Some(policies) = &group.policies else {
        for c in &group.baseline {
            out(add_rule(name, vec![json!({"jump": {"target": c}})], None));
        }
        return;
    };
    for p in policies {
        out(add_rule(name, vec![json!({"jump": {"target": p}})], None));
    }
    let d = if name.starts_with("in-") { Direction::Ingress } else { Direction::Egress };
    if let Some(log) = &state.deny_log {
        // Its own rule: an exhausted limit ends the rule, and the drop must not depend on it.
        let who: Vec<&str> = policies.iter().filter_map(|p| state.chains.get(p)).map(|c| c.policy.as_str()).collect();
        // NFLOG carries at most 127 bytes of prefix.
        let prefix: String = format!("weft deny {d}: {} ", who.join(",")).chars().take(120).collect();
        out(add_rule(
            name,
            vec![json!({"limit": DENY_LOG_LIMIT}), json!({"log": {"group": log.group, "prefix": prefix}})],
            None,
        ));
    }
    // The kernel takes at most 128 expressions in a rule (EINVAL past
    // that, failing the whole table): with many policies over one pod,
    // their counters go in counting-only rules first, whose packets all
    // reach the drop.
    let counters: Vec<Value> = policies.iter().map(|p| json!({"counter": p})).collect();
    let mut chunks: Vec<&[Value]> = counters.chunks(COUNTERS_PER_RULE).collect();
    let last = chunks.pop().unwrap_or_default();
    for chunk in chunks {
        out(add_rule(name, chunk.to_vec(), None));
    }
    let mut expr = vec![json!({"counter": denied_counter(d)})];
    expr.extend_from_slice(last);
    expr.push(json!({"drop": null}));
    out(add_rule(name, expr, Some("no policy allows".into())));
}

/// Per-policy counters in one rule of a group chain: well under the
/// kernel's 128 expressions per rule (`NFT_RULE_MAXEXPRS`) with the
/// node's counter and the verdict.
const COUNTERS_PER_RULE: usize = 100;

/// The liveness gate's set and counter, its elements open for `live_for`.
fn liveness_gate(live_for: Option<std::time::Duration>, out: &mut impl FnMut(Value)) {
    out(json!({"add": {"set": {"family": "inet", "table": POLICY_TABLE, "name": LIVENESS_SET,
        "type": "nf_proto", "flags": ["timeout"]}}}));
    out(object("add", "counter", STALE_COUNTER));
    if let Some(elem) = live_for.and_then(liveness_elements) {
        out(element("add", LIVENESS_SET, elem));
    }
}

/// The gate's elements, expiring after `live_for` (whole seconds, as the
/// JSON takes them; `None` under one second: closed).
fn liveness_elements(live_for: std::time::Duration) -> Option<Vec<Value>> {
    let secs = live_for.as_secs();
    (secs > 0).then(|| ["ipv4", "ipv6"].map(|p| json!({"elem": {"val": p, "timeout": secs}})).to_vec())
}

/// The first rule of every group chain: a new connection of an isolated
/// pod is dropped (and counted) while the gate is closed.
pub fn liveness_rule() -> Vec<Value> {
    vec![
        json!({"match": {"op": "!=", "left": {"meta": {"key": "nfproto"}}, "right": format!("@{LIVENESS_SET}")}}),
        json!({"counter": STALE_COUNTER}),
        json!({"drop": null}),
    ]
}

/// One transaction renewing the gate for `live_for` (`None`: under a
/// second, nothing to write). A re-added element keeps its old timeout, so
/// it is added (in case it expired), deleted and added again with the new one.
pub fn liveness_renewal(live_for: std::time::Duration) -> Option<Value> {
    let elem = liveness_elements(live_for)?;
    let keys: Vec<Value> = ["ipv4", "ipv6"].map(Value::from).to_vec();
    Some(json!({"nftables": [
        element("add", LIVENESS_SET, keys.clone()),
        element("delete", LIVENESS_SET, keys),
        element("add", LIVENESS_SET, elem),
    ]}))
}

/// The verdict of a cluster rule: Accept accepts; Deny drops, counted for
/// the direction and the policy; Pass returns from the Admin tier (to
/// NetworkPolicy) and, in the Baseline tier, leads to the default: accept.
fn cluster_verdict(action: Action, tier: Tier, d: Direction, chain: &str) -> Vec<Value> {
    match (action, tier) {
        (Action::Accept, _) | (Action::Pass, Tier::Baseline) => vec![json!({"accept": null})],
        (Action::Deny, _) => {
            vec![json!({"counter": denied_counter(d)}), json!({"counter": chain}), json!({"drop": null})]
        }
        (Action::Pass, Tier::Admin) => vec![json!({"return": null})],
    }
}

/// The rules of cluster chain `name`, in the policy's rule order; with
/// `deny_log`, each Deny is logged by a rule of its own before it (an
/// exhausted limit ends the rule, and the drop must not depend on it).
fn cluster_rules(deny_log: Option<&DenyLog>, name: &str, c: &ClusterChain, out: &mut impl FnMut(Value)) {
    for m in &c.rules {
        let rule_name = if m.name.is_empty() { String::new() } else { format!(" {}", m.name) };
        let comment = format!("{} {}[{}]{rule_name} {}", c.policy, c.direction, m.rule, m.action);
        for mut expr in match_exprs(&m.peer, &m.ports, c.direction) {
            if let (Some(log), Action::Deny) = (deny_log, m.action) {
                // NFLOG carries at most 127 bytes of prefix.
                let prefix: String = format!("weft deny {}: ClusterNetworkPolicy/{} ", c.direction, c.policy)
                    .chars()
                    .take(120)
                    .collect();
                let mut logged = expr.clone();
                logged.push(json!({"limit": DENY_LOG_LIMIT}));
                logged.push(json!({"log": {"group": log.group, "prefix": prefix}}));
                out(add_rule(name, logged, None));
            }
            expr.extend(cluster_verdict(m.action, c.tier, c.direction, name));
            out(add_rule(name, expr, Some(comment.clone())));
        }
    }
}

/// The rules of Admin tier chain `name`: each policy's chain in order,
/// each followed by its Pass rules again with `return` (a policy chain
/// returns for a Pass and for no match alike; see
/// [`super::cluster_policy`]).
fn tier_rules(state: &PolicyState, name: &str, chains: &[String], out: &mut impl FnMut(Value)) {
    for cn in chains {
        out(add_rule(name, vec![json!({"jump": {"target": cn}})], None));
        let Some(c) = state.cluster_chains.get(cn) else { continue };
        for m in c.rules.iter().filter(|m| m.action == Action::Pass) {
            for mut expr in match_exprs(&m.peer, &m.ports, c.direction) {
                expr.push(json!({"return": null}));
                out(add_rule(name, expr, Some(format!("{} {}[{}] Pass", c.policy, c.direction, m.rule))));
            }
        }
    }
}

/// Whether two states have the same chains, rules and sets, so that only
/// elements differ.
pub fn same_rules(a: &PolicyState, b: &PolicyState) -> bool {
    let sets =
        |s: &PolicyState| s.sets.iter().map(|(n, v)| (n.clone(), v.about.clone(), v.intervals)).collect::<Vec<_>>();
    let port_sets =
        |s: &PolicyState| s.port_sets.iter().map(|(n, v)| (n.clone(), v.name.clone(), v.protocol)).collect::<Vec<_>>();
    a.idle == b.idle
        && a.chains == b.chains
        && a.groups == b.groups
        && a.cluster_chains == b.cluster_chains
        && a.tiers == b.tiers
        && sets(a) == sets(b)
        && port_sets(a) == port_sets(b)
}

/// The elements only `old` holds (deleted) and only `new` holds (added)
/// of peer or named-port set `name`, by family: each element with the
/// address whose family picks the kernel set.
fn set_changes(
    name: &str,
    old: BTreeSet<(IpAddr, Element)>,
    new: BTreeSet<(IpAddr, Element)>,
    (deletes, adds): (&mut NftPlan, &mut NftPlan),
) {
    for v6 in [false, true] {
        let only = |a: &BTreeSet<(IpAddr, Element)>, b: &BTreeSet<(IpAddr, Element)>| -> Vec<Element> {
            a.difference(b).filter(|(ip, _)| ip.is_ipv6() == v6).map(|(_, e)| e.clone()).collect()
        };
        deletes.elements(Verb::Delete, POLICY_TABLE, family_set(name, v6), only(&old, &new));
        adds.elements(Verb::Add, POLICY_TABLE, family_set(name, v6), only(&new, &old));
    }
}

/// The element deletions, then additions, that turn `old`'s elements into
/// `new`'s (one command per set and verb). `old` and `new` have the same
/// rules ([`same_rules`]).
pub fn element_changes(old: &PolicyState, new: &PolicyState) -> NftPlan {
    let (mut deletes, mut adds) = (NftPlan::default(), NftPlan::default());
    for d in [Direction::Ingress, Direction::Egress] {
        let pick = |s: &'_ PolicyState| match d {
            Direction::Ingress => s.ingress.clone(),
            Direction::Egress => s.egress.clone(),
        };
        let (o, n): (BTreeMap<IpAddr, String>, BTreeMap<IpAddr, String>) = (pick(old), pick(new));
        for v6 in [false, true] {
            // A pod whose group changed is deleted and added again.
            let gone = o
                .iter()
                .filter(|(ip, g)| ip.is_ipv6() == v6 && n.get(*ip) != Some(*g))
                .map(|(ip, _)| Element::Addr(*ip))
                .collect();
            let came = n
                .iter()
                .filter(|(ip, g)| ip.is_ipv6() == v6 && o.get(*ip) != Some(*g))
                .map(|(ip, g)| Element::Jump(*ip, g.clone()))
                .collect();
            deletes.elements(Verb::Delete, POLICY_TABLE, map_name(d, v6), gone);
            adds.elements(Verb::Add, POLICY_TABLE, map_name(d, v6), came);
        }
    }
    for (name, new_set) in &new.sets {
        let Some(old_set) = old.sets.get(name) else { continue };
        let range = |(a, b): &(IpAddr, IpAddr)| (*a, Element::range(*a, *b));
        let (o, n) = (old_set.ranges.iter().map(range), new_set.ranges.iter().map(range));
        set_changes(name, o.collect(), n.collect(), (&mut deletes, &mut adds));
    }
    for (name, new_set) in &new.port_sets {
        let Some(old_set) = old.port_sets.get(name) else { continue };
        let port = |(ip, port): &(IpAddr, u16)| (*ip, Element::AddrPort(*ip, *port));
        let (o, n) = (old_set.elements.iter().map(port), new_set.elements.iter().map(port));
        set_changes(name, o.collect(), n.collect(), (&mut deletes, &mut adds));
    }
    deletes.commands.extend(adds.commands);
    deletes
}

/// The commands that turn the table as written for `old` into `new`'s in
/// one transaction, touching only what differs: sets, policy chains and
/// group chains are named by what they hold, so a policy created, edited
/// or deleted adds or removes its own chain, its new peer sets and the
/// groups whose list of policies changed, instead of rewriting every
/// chain and set (about 65,000 commands at 10,000 pods and 1,000
/// policies). `elements` are the element changes of the maps and of the
/// sets both states hold (`apply::policy_table::element_changes`).
///
/// Order matters to the kernel's references: new sets before the rules
/// naming them, new chains before the groups and map elements jumping to
/// them, and removals last, each after whatever referred to it.
/// `old` and `new` have the same `deny_log`: it is in every group chain.
pub fn rule_changes(old: &PolicyState, new: &PolicyState, elements: NftPlan) -> NftPlan {
    let mut plan = NftPlan::default();
    let mut out = |c: Value| plan.object(c);
    for (name, set) in new.sets.iter().filter(|(n, _)| !old.sets.contains_key(*n)) {
        address_set(name, set, &mut out);
    }
    for (name, set) in new.port_sets.iter().filter(|(n, _)| !old.port_sets.contains_key(*n)) {
        port_set(name, set, &mut out);
    }
    for (name, c) in &new.chains {
        match old.chains.get(name) {
            None => {
                out(object("add", "counter", name));
                out(chain(name));
            }
            // An edited policy keeps its chain (and counter): its rules are replaced.
            Some(was) if was != c => out(object("flush", "chain", name)),
            Some(_) => continue,
        }
        policy_rules(name, c, &mut out);
    }
    for (name, c) in &new.cluster_chains {
        match old.cluster_chains.get(name) {
            None => {
                out(object("add", "counter", name));
                out(chain(name));
            }
            Some(was) if was != c => out(object("flush", "chain", name)),
            Some(_) => continue,
        }
        cluster_rules(new.deny_log.as_ref(), name, c, &mut out);
    }
    // Tier and group chains are named by what they hold: never edited in place.
    for (name, chains) in new.tiers.iter().filter(|(n, _)| !old.tiers.contains_key(*n)) {
        out(chain(name));
        tier_rules(new, name, chains, &mut out);
    }
    for (name, group) in new.groups.iter().filter(|(n, _)| !old.groups.contains_key(*n)) {
        out(chain(name));
        group_rules(new, name, group, &mut out);
    }
    plan.commands.extend(elements.commands);
    let mut out = |c: Value| plan.object(c);
    let gone_groups = old.groups.keys().filter(|n| !new.groups.contains_key(*n));
    let gone_tiers = old.tiers.keys().filter(|n| !new.tiers.contains_key(*n));
    for name in gone_groups.chain(gone_tiers) {
        out(object("flush", "chain", name));
        out(object("delete", "chain", name));
    }
    for name in old.cluster_chains.keys().filter(|n| !new.cluster_chains.contains_key(*n)) {
        out(object("flush", "chain", name));
        out(object("delete", "chain", name));
        out(object("delete", "counter", name));
    }
    for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
        out(object("flush", "chain", name));
        out(object("delete", "chain", name));
        out(object("delete", "counter", name));
    }
    let gone_sets = old.sets.keys().filter(|n| !new.sets.contains_key(*n));
    let gone_port_sets = old.port_sets.keys().filter(|n| !new.port_sets.contains_key(*n));
    for name in gone_sets.chain(gone_port_sets) {
        for (v6, _) in FAMILIES {
            out(object("delete", "set", &family_set(name, v6)));
        }
    }
    plan
}

/// The expressions of one allow, one list per nft rule.
fn allow_exprs(allow: &Allow, d: Direction) -> Vec<Vec<Value>> {
    let mut out = match_exprs(&allow.peer, &allow.ports, d);
    out.iter_mut().for_each(|e| e.push(json!({"accept": null})));
    out
}

/// The match expressions of a peer and port form, one list per nft rule
/// (without verdict): rules naming an address set need one rule per family.
fn match_exprs(peer: &PeerMatch, ports: &PortsMatch, d: Direction) -> Vec<Vec<Value>> {
    let peer_field = if d == Direction::Ingress { "saddr" } else { "daddr" };
    let per_family = matches!(peer, PeerMatch::Set(_)) || matches!(ports, PortsMatch::Named(..));
    let mut out = Vec::new();
    for (v6, proto) in FAMILIES {
        let mut expr = Vec::new();
        if let PeerMatch::Set(s) = peer {
            expr.push(eq(payload(proto, peer_field), json!(format!("@{}", family_set(s, v6)))));
        }
        match ports {
            PortsMatch::Any => {}
            PortsMatch::Protocol(p) => expr.push(eq(json!({"meta": {"key": "l4proto"}}), json!(p.nft()))),
            PortsMatch::Ranges(p, ranges) => {
                expr.push(eq(json!({"meta": {"key": "l4proto"}}), json!(p.nft())));
                let set: Vec<Value> =
                    ranges.iter().map(|(a, b)| if a == b { json!(a) } else { json!({"range": [a, b]}) }).collect();
                expr.push(eq(payload("th", "dport"), json!({"set": set})));
            }
            PortsMatch::Named(p, s) => {
                expr.push(eq(json!({"meta": {"key": "l4proto"}}), json!(p.nft())));
                expr.push(eq(
                    json!({"concat": [payload(proto, "daddr"), payload("th", "dport")]}),
                    json!(format!("@{}", family_set(s, v6))),
                ));
            }
        }
        out.push(expr);
        if !per_family {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::desired::nft_plan::ELEMENTS_PER_COMMAND;
    use crate::desired::policy::fixtures::*;
    use crate::desired::policy::policy;
    use crate::wire_policy::Protocol;

    #[test]
    fn pod_and_label_changes_are_element_changes_and_policy_changes_are_not() {
        let server = with_port(pod("a", "srv", "node1", 1, &[("app", "srv")]), "http", Protocol::Tcp, 8080);
        let client = pod("a", "cli", "node2", 2, &[("role", "x")]);
        let namespaces = [ns("a", &[])];
        let allow = ingress(
            netpol("a", "allow", sel(&[("app", "srv")])),
            vec![rule(vec![pods_in_own(sel(&[("role", "cli")]))], vec![named(Protocol::Tcp, "http")])],
        );
        let before = policy("node1", &[server.clone(), client.clone()], &namespaces, std::slice::from_ref(&allow));

        // The client is relabelled to match: only its addresses join the peer set.
        let mut relabelled = client.clone();
        relabelled.labels = labels(&[("role", "cli")]);
        let after = policy("node1", &[server.clone(), relabelled], &namespaces, std::slice::from_ref(&allow));
        assert!(same_rules(&before, &after));
        let plan = element_changes(&before, &after);
        let cmds = plan.element_changes().expect("only elements");
        assert_eq!(cmds.len(), 2, "one add per family: {cmds:?}");
        assert!(cmds.iter().all(|c| c.verb == Verb::Add && c.set.starts_with("peer-")));
        let text = plan.to_json().to_string();
        assert!(text.contains("10.244.2.2") && text.contains("fd00:10:244:2::2"), "{text}");
        let back = element_changes(&after, &before);
        assert!(back.element_changes().unwrap().iter().all(|c| c.verb == Verb::Delete), "and back");

        // A second server pod: its map entries and named port, no rule.
        let server2 = with_port(pod("a", "srv2", "node1", 3, &[("app", "srv")]), "http", Protocol::Tcp, 9090);
        let more =
            policy("node1", &[server.clone(), server2, client.clone()], &namespaces, std::slice::from_ref(&allow));
        assert!(same_rules(&before, &more));
        let text = element_changes(&before, &more).to_json().to_string();
        assert!(text.contains(r#""ingress4""#) && text.contains(r#""ingress6""#), "{text}");
        assert!(text.contains(r#"{"concat":["10.244.1.3",9090]}"#), "{text}");

        // Another policy over the server: new chains, the whole table.
        let deny = ingress(netpol("a", "deny", sel(&[])), vec![]);
        let both = policy("node1", &[server, client], &namespaces, &[allow, deny]);
        assert!(!same_rules(&before, &both));
    }

    #[test]
    fn a_pod_under_many_policies_gets_rules_the_kernel_takes_and_every_policy_counted() {
        // 250 policies over one pod (net-bench's paired setup at 1,000
        // policies over 4 pods): one drop rule with 252 expressions was
        // refused (EINVAL), and with it the whole table.
        let server = pod("a", "srv", "node1", 1, &[("app", "srv")]);
        let policies: Vec<_> =
            (0..250).map(|i| ingress(netpol("a", &format!("p{i:03}"), sel(&[("app", "srv")])), vec![])).collect();
        let state = policy("node1", &[server], &[ns("a", &[])], &policies);
        let table = ruleset(&state);
        let rules: Vec<&Value> =
            table["nftables"].as_array().unwrap().iter().filter_map(|c| c["add"].get("rule")).collect();
        assert!(rules.iter().all(|r| r["expr"].as_array().unwrap().len() <= 128), "a rule past the kernel's limit");
        let group = state.ingress.values().next().expect("the pod's group").clone();
        let counted: BTreeSet<String> = rules
            .iter()
            .filter(|r| r["chain"] == group.as_str())
            .flat_map(|r| r["expr"].as_array().unwrap().iter().filter_map(|e| e["counter"].as_str()))
            .map(String::from)
            .collect();
        let chains: BTreeSet<String> = state.groups[&group].policies.clone().unwrap().into_iter().collect();
        assert!(chains.is_subset(&counted) && chains.len() == 250, "every policy's counter");
        let group_rules: Vec<&&Value> = rules.iter().filter(|r| r["chain"] == group.as_str()).collect();
        let last = group_rules.last().unwrap()["expr"].as_array().unwrap();
        assert_eq!(last.last(), Some(&json!({"drop": null})), "the drop comes last");
        assert_eq!(last[0], json!({"counter": "ingress_denied"}));
        // Between the liveness gate and the drop: jumps and counting-only rules.
        assert!(group_rules[1..group_rules.len() - 1].iter().all(|r| !r["expr"].to_string().contains("drop")));
    }

    #[test]
    fn pending_pods_are_dropped_before_any_verdict_map_even_without_policies() {
        let r = ruleset(&PolicyState::default());
        let rules: Vec<&Value> = r["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"]["rule"].as_object().map(|_| &c["add"]["rule"]))
            .collect();
        for (chain, key, groups) in [
            ("ingress", "oifgroup", libweft::pending::PENDING_INGRESS_GROUPS),
            ("egress", "iifgroup", libweft::pending::PENDING_EGRESS_GROUPS),
        ] {
            let chain_rules: Vec<&&Value> = rules.iter().filter(|r| r["chain"] == chain).collect();
            let at = |what: &str| chain_rules.iter().position(|r| r["expr"].to_string().contains(what));
            let pending = at(key).expect("a pending rule");
            assert_eq!(chain_rules[pending]["expr"][0]["match"]["right"], json!({"set": groups}));
            assert_eq!(chain_rules[pending]["expr"][1], json!({"counter": format!("{chain}_pending")}));
            assert!(at("established").unwrap() < pending, "replies of the pod's own connections pass");
            assert!(pending < at("vmap").unwrap(), "{chain}: pending before the maps");
        }
    }

    #[test]
    fn an_idle_table_has_no_hook_and_coming_out_of_idle_is_a_change_of_rules() {
        let hooked = ruleset(&PolicyState::default()).to_string();
        assert_eq!(hooked.matches(r#""hook":"forward""#).count(), 2, "{hooked}");
        let idle = PolicyState { idle: true, ..PolicyState::default() };
        let r = ruleset(&idle);
        let text = r.to_string();
        assert!(!text.contains(r#""hook""#), "no base chain: {text}");
        // The maps and the liveness gate stay, for the elements the next pass may add.
        assert!(text.contains(r#""name":"ingress4""#) && text.contains(LIVENESS_SET), "{text}");
        assert!(!same_rules(&idle, &PolicyState::default()), "the base chains come with the whole table");
    }

    #[test]
    fn the_deny_log_rate_is_one_limit_for_the_node_not_one_per_group() {
        let pods = [pod("a", "x", "node1", 1, &[("app", "x")]), pod("a", "y", "node1", 2, &[("app", "y")])];
        let policies = [
            ingress(netpol("a", "px", sel(&[("app", "x")])), vec![]),
            ingress(netpol("a", "py", sel(&[("app", "y")])), vec![]),
        ];
        let mut state = policy("node1", &pods, &[ns("a", &[])], &policies);
        state.deny_log = Some(crate::config::DenyLog { group: 100, per_second: 10 });
        assert_eq!(state.groups.len(), 2, "two group chains");
        let r = ruleset(&state);
        let cmds = r["nftables"].as_array().unwrap();
        let limits: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("limit")).collect();
        assert_eq!(limits.len(), 1, "{limits:?}");
        assert_eq!(limits[0]["rate"], 10);
        let logs: Vec<&Value> = cmds
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["expr"].to_string().contains("\"log\""))
            .collect();
        assert_eq!(logs.len(), 2, "a log rule per group");
        for rule in logs {
            assert_eq!(rule["expr"][0], json!({"limit": limits[0]["name"]}), "the shared limit: {rule}");
        }
    }

    /// What a command does to which object: `("add", "chain", name)`.
    fn touches(c: &Value) -> (String, String, String) {
        let (verb, obj) = c.as_object().unwrap().iter().next().unwrap();
        let (kind, body) = obj.as_object().unwrap().iter().next().unwrap();
        let name = body.get("name").or(body.get("chain")).and_then(Value::as_str).unwrap_or_default();
        (verb.clone(), kind.clone(), name.to_string())
    }

    #[test]
    fn a_policy_added_or_deleted_changes_only_its_own_chains_groups_and_sets() {
        let pods: Vec<_> = (1..=30)
            .map(|i| pod("a", &format!("p{i}"), if i % 2 == 0 { "node1" } else { "node2" }, i, &[("app", "s")]))
            .collect();
        let namespaces = [ns("a", &[])];
        let old_pol =
            ingress(netpol("a", "old", sel(&[])), vec![rule(vec![pods_in(sel(&[]), sel(&[]))], vec![tcp(80)])]);
        let new_pol = ingress(
            netpol("a", "new", sel(&[("app", "s")])),
            vec![rule(vec![block("10.0.0.0/8", &[])], vec![tcp(443)])],
        );
        let one = policy("node1", &pods, &namespaces, std::slice::from_ref(&old_pol));
        let two = policy("node1", &pods, &namespaces, &[old_pol.clone(), new_pol]);

        let cmds = rule_changes(&one, &two, NftPlan::default()).to_json()["nftables"].as_array().unwrap().clone();
        let t: Vec<_> = cmds.iter().map(touches).collect();
        let added_chains: BTreeSet<&str> =
            t.iter().filter(|(v, k, _)| v == "add" && k == "chain").map(|(_, _, n)| n.as_str()).collect();
        let new_chains: BTreeSet<&str> = two
            .chains
            .keys()
            .chain(two.groups.keys())
            .filter(|n| !one.chains.contains_key(*n) && !one.groups.contains_key(*n))
            .map(String::as_str)
            .collect();
        assert_eq!(added_chains, new_chains, "exactly the new policy's chain and the new group");
        assert!(t.iter().all(|(_, _, n)| !one.chains.contains_key(n)), "the old policy's chain is left alone: {t:?}");
        assert!(
            t.iter().all(|(v, k, _)| k != "table" && !(v == "delete" && k == "set")),
            "no table rewrite, no set removed"
        );
        // The old group (old policy alone) is gone: flushed and deleted after the elements moved off it.
        let old_group = one.groups.keys().find(|g| !two.groups.contains_key(*g)).unwrap();
        let at = |verb: &str, kind: &str| t.iter().position(|x| x == &(verb.into(), kind.into(), old_group.clone()));
        assert!(at("flush", "chain").unwrap() < at("delete", "chain").unwrap());
        assert!(cmds.len() * 5 < ruleset(&two)["nftables"].as_array().unwrap().len() + 50);

        // And back: the new policy's chain, counter, group and ipBlock set go, nothing else.
        let back = rule_changes(&two, &one, NftPlan::default()).to_json()["nftables"].as_array().unwrap().clone();
        let t: Vec<_> = back.iter().map(touches).collect();
        // Only the old group comes back (its pods return to it).
        assert!(
            t.iter().all(|(v, _, n)| v != "add" || (one.groups.contains_key(n) && !two.groups.contains_key(n))),
            "removing a policy adds back only the group it split: {t:?}"
        );
        let deleted: BTreeSet<(String, String)> =
            t.iter().filter(|(v, _, _)| v == "delete").map(|(_, k, n)| (k.clone(), n.clone())).collect();
        let mut want = BTreeSet::new();
        for c in two.chains.keys().filter(|c| !one.chains.contains_key(*c)) {
            want.insert(("chain".to_string(), c.clone()));
            want.insert(("counter".to_string(), c.clone()));
        }
        for g in two.groups.keys().filter(|g| !one.groups.contains_key(*g)) {
            want.insert(("chain".to_string(), g.clone()));
        }
        for s in two.sets.keys().filter(|s| !one.sets.contains_key(*s)) {
            want.insert(("set".to_string(), format!("{s}-4")));
            want.insert(("set".to_string(), format!("{s}-6")));
        }
        assert_eq!(deleted, want);
    }

    #[test]
    fn ruleset_parses_as_nft_json_and_rules_grow_with_policies_not_pods() {
        let mut pods: Vec<_> = (1..=40)
            .map(|i| {
                with_port(
                    pod("a", &format!("s{i}"), "node1", i, &[("app", "s")]),
                    "http",
                    Protocol::Tcp,
                    8000 + u16::from(i),
                )
            })
            .collect();
        pods.extend((1..=40).map(|i| pod("b", &format!("c{i}"), "node2", i, &[("role", "cli")])));
        let policies = vec![
            ingress(
                netpol("a", "allow", sel(&[("app", "s")])),
                vec![rule(
                    vec![pods_in(sel(&[]), sel(&[("role", "cli")])), block("10.0.0.0/8", &["10.244.2.0/24"])],
                    vec![tcp(80), port_range(Protocol::Udp, 1000, 2000), named(Protocol::Tcp, "http")],
                )],
            ),
            egress(netpol("a", "dns", sel(&[])), vec![rule(vec![], vec![port_range(Protocol::Udp, 53, 53)])]),
        ];
        let namespaces = [ns("a", &[]), ns("b", &[])];
        let state = policy("node1", &pods, &namespaces, &policies);
        let r = ruleset(&state);
        let text = |state: &PolicyState| {
            let mut text = Vec::new();
            write_ruleset(state, None, &mut text).unwrap();
            serde_json::from_slice::<Value>(&text).unwrap()
        };
        assert_eq!(text(&state), r, "the text form is the same rule set");
        assert_eq!(text(&PolicyState::default()), ruleset(&PolicyState::default()));
        let cmds = r["nftables"].as_array().unwrap();
        // The nftables crate knows no "verdict" set type nor "nf_proto", so the maps and the liveness
        // gate are checked by shape; everything else must fit its schema (the privileged test loads
        // all of it into a real kernel).
        let (maps, rest): (Vec<&Value>, Vec<&Value>) =
            cmds.iter().partition(|c| c["add"]["map"].is_object() || c["add"]["set"]["name"] == LIVENESS_SET);
        assert_eq!(maps.len(), 5);
        assert!(maps.iter().any(|m| m["add"]["set"]["type"] == "nf_proto"));
        let maps: Vec<&Value> = maps.into_iter().filter(|m| m["add"]["map"].is_object()).collect();
        assert!(maps.iter().all(|m| m["add"]["map"]["map"] == "verdict"));
        let rest = json!({"nftables": rest});
        serde_json::from_value::<nftables::schema::Nftables>(rest).expect("valid nft JSON");
        let rules = cmds.iter().filter(|c| c["add"]["rule"].is_object()).count();

        // Ten times the pods: not one more rule.
        let mut more = pods.clone();
        more.extend((41..=250).map(|i| pod("b", &format!("c{i}"), "node3", i, &[("role", "cli")])));
        more.extend(
            (41..=200)
                .map(|i| with_port(pod("a", &format!("s{i}"), "node1", i, &[("app", "s")]), "http", Protocol::Tcp, 80)),
        );
        let bigger = ruleset(&policy("node1", &more, &namespaces, &policies));
        let rules_more = bigger["nftables"].as_array().unwrap().iter().filter(|c| c["add"]["rule"].is_object()).count();
        assert_eq!(rules, rules_more);
        let text = bigger.to_string();
        assert!(text.contains("10.244.3.250") && text.contains("fd00:10:244:1::c8"), "elements grow instead");
    }

    #[test]
    fn a_large_set_is_written_in_bounded_commands_holding_all_its_elements() {
        let ips: Vec<IpAddr> = (0..2500u32).map(|i| IpAddr::V4((0x0af4_0000u32 + i).into())).collect();
        let mut state = PolicyState::default();
        let ranges = ips.iter().map(|ip| (*ip, *ip)).collect();
        state.sets.insert("peers".into(), AddressSet { about: "test".into(), ranges, intervals: false });
        let r = ruleset(&state);
        let adds: Vec<&Value> =
            r["nftables"].as_array().unwrap().iter().filter(|c| c["add"]["element"]["name"] == "peers-4").collect();
        assert_eq!(adds.len(), 3, "2,500 elements in commands of at most {ELEMENTS_PER_COMMAND}");
        let written: Vec<&str> = adds
            .iter()
            .flat_map(|c| c["add"]["element"]["elem"].as_array().unwrap())
            .map(|e| e.as_str().unwrap())
            .collect();
        let want: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(written, want);
        let set = r["nftables"].as_array().unwrap().iter().position(|c| c["add"]["set"]["name"] == "peers-4");
        let first = r["nftables"].as_array().unwrap().iter().position(|c| c["add"]["element"]["name"] == "peers-4");
        assert!(set < first, "the set exists before its elements");
    }

    #[test]
    fn every_group_chain_starts_at_the_liveness_gate_and_renewals_replace_its_timeout() {
        let pods = [pod("a", "srv", "node1", 1, &[("app", "srv")]), pod("a", "cli", "node2", 2, &[])];
        let policies =
            [ingress(netpol("a", "p", sel(&[("app", "srv")])), vec![rule(vec![pods_in_own(sel(&[]))], vec![])])];
        let state = policy("node1", &pods, &[ns("a", &[])], &policies);
        assert!(!state.groups.is_empty());
        let cmds = ruleset(&state);
        let cmds = cmds["nftables"].as_array().unwrap();
        for group in state.groups.keys() {
            let first = cmds.iter().find(|c| c["add"]["rule"]["chain"] == group.as_str()).unwrap();
            assert_eq!(first["add"]["rule"]["expr"], json!(liveness_rule()), "{group}");
        }
        let elements = |c: &[Value]| c.iter().filter(|c| c["add"]["element"]["name"] == LIVENESS_SET).count();
        assert_eq!(elements(cmds), 0, "closed unless opened");
        let mut text = Vec::new();
        write_ruleset(&state, Some(std::time::Duration::from_secs(90)), &mut text).unwrap();
        let open: Value = serde_json::from_slice(&text).unwrap();
        let open = open["nftables"].as_array().unwrap();
        assert_eq!(elements(open), 1);
        let elem =
            &open.iter().find(|c| c["add"]["element"]["name"] == LIVENESS_SET).unwrap()["add"]["element"]["elem"];
        assert_eq!(elem[1], json!({"elem": {"val": "ipv6", "timeout": 90}}));

        let renewal = liveness_renewal(std::time::Duration::from_millis(30_900)).unwrap();
        let verbs: Vec<&str> = renewal["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_object().unwrap().keys().next().unwrap().as_str())
            .collect();
        assert_eq!(verbs, ["add", "delete", "add"]);
        assert_eq!(renewal["nftables"][2]["add"]["element"]["elem"][0]["elem"]["timeout"], 30);
        assert!(liveness_renewal(std::time::Duration::from_millis(999)).is_none(), "under a second: closed");
    }
}
