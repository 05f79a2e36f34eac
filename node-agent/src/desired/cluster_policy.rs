//! ClusterNetworkPolicy's part of [`super::policy::policy_with_tiers`]:
//! which tiered policies select a local pod, and each policy's chain.
//!
//! The semantics (module `sigs.k8s.io/network-policy-api` v0.3.0):
//! - the Admin tier is evaluated first, policies by ascending priority
//!   (ties: by name, weft's choice: the API leaves it undefined), rules in
//!   their order; the first rule matching decides. Accept: allowed, no
//!   NetworkPolicy or Baseline rule is consulted. Deny: dropped. Pass: the
//!   rest of the Admin tier is skipped, NetworkPolicy decides next;
//! - a pod that NetworkPolicy isolates in that direction is decided there
//!   (allowed or dropped), and the Baseline tier is never consulted;
//! - otherwise the Baseline tier, in the same order: Accept allows, Deny
//!   drops, Pass skips the rest of the tier, to the default;
//! - the default: allowed.
//!
//! In nftables (see [`super::policy_table`]) a policy is one chain per
//! direction whose rules end in `accept`, a counted `drop`, or (Pass)
//! `return`. The Admin policies of a group sit in a **tier chain**, so that
//! a Pass returns from the whole tier: the tier chain jumps to each policy
//! chain and, after it, matches that policy's Pass rules again with
//! `return` (a policy chain returns both for a Pass and when nothing
//! matched; only a Pass rule matches again, since everything before it in
//! the chain ended in a verdict). Baseline's Pass leads to the default, so
//! it is rendered as `accept`.

use std::collections::BTreeMap;

use libweft::pending::PolicyNamespaces;

use super::policy::{
    PeerMatch, PodsByNamespace, PolicyState, PortsMatch, SetKey, group_prefix, peer_set, ports_matches, stable_name,
};
use crate::wire_cluster_policy::{Action, ClusterPeer, ClusterPolicyView, ClusterRule, Subject, Tier};
use crate::wire_policy::{Direction, NamespaceView, PodView, Selector};

/// One ClusterNetworkPolicy's rules for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterChain {
    /// The policy's name.
    pub policy: String,
    pub tier: Tier,
    pub priority: u32,
    pub direction: Direction,
    /// In evaluation order.
    pub rules: Vec<ClusterMatch>,
}

/// One nft rule of a cluster chain: a rule's peer and port form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMatch {
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub rule: usize,
    /// The rule's `name` (may be empty).
    pub name: String,
    pub action: Action,
    pub peer: PeerMatch,
    pub ports: PortsMatch,
}

/// The policies in evaluation order: tier, priority, name.
pub fn in_order(cluster: &[ClusterPolicyView]) -> Vec<&ClusterPolicyView> {
    let mut v: Vec<&ClusterPolicyView> = cluster.iter().collect();
    v.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    v
}

/// Whether `c`'s subject selects `pod` (a policy pod). A namespace weft
/// has not seen matches no selector: unknown labels must not widen it.
pub fn subject_selects(c: &ClusterPolicyView, pod: &PodView, all_ns: &BTreeMap<&str, &NamespaceView>) -> bool {
    let in_ns = |sel: &Selector| all_ns.get(pod.namespace.as_str()).is_some_and(|n| sel.matches(&n.labels));
    match &c.subject {
        Subject::Namespaces(ns) => in_ns(ns),
        Subject::Pods { namespaces, pods } => in_ns(namespaces) && pods.matches(&pod.labels),
    }
}

/// The policies of each tier that select a pod in one direction, in order.
#[derive(Debug, Default)]
pub struct Selecting<'a> {
    pub admin: Vec<&'a ClusterPolicyView>,
    pub baseline: Vec<&'a ClusterPolicyView>,
}

/// The policies (`ordered` by [`in_order`]) with rules in `d` whose
/// subject selects `pod`. A policy with no rules in a direction does not
/// affect it.
pub fn selecting<'a>(
    ordered: &[&'a ClusterPolicyView],
    pod: &PodView,
    d: Direction,
    all_ns: &BTreeMap<&str, &NamespaceView>,
) -> Selecting<'a> {
    let mut out = Selecting::default();
    for c in ordered.iter().filter(|c| !c.rules(d).is_empty() && subject_selects(c, pod, all_ns)) {
        match c.tier {
            Tier::Admin => out.admin.push(c),
            Tier::Baseline => out.baseline.push(c),
        }
    }
    out
}

/// The chain of one policy in one direction.
pub fn chain_name(c: &ClusterPolicyView, d: Direction) -> String {
    stable_name(&format!("{}-cnp", group_prefix(d)), &c.name)
}

/// Adds the Admin tier chain of `admin` (in order) to `state`; its name.
/// The name covers the policies' Pass rules too, which the tier chain
/// repeats: a policy whose Pass rules change gets a new tier chain.
pub fn admin_tier(admin: &[&ClusterPolicyView], d: Direction, state: &mut PolicyState) -> Option<String> {
    if admin.is_empty() {
        return None;
    }
    let chains: Vec<String> = admin.iter().map(|c| chain_name(c, d)).collect();
    let passes: Vec<Vec<&ClusterRule>> =
        admin.iter().map(|c| c.rules(d).iter().filter(|r| r.action == Action::Pass).collect()).collect();
    let name = stable_name(&format!("{}-adm", group_prefix(d)), &(&chains, &passes));
    state.tiers.entry(name.clone()).or_insert(chains);
    Some(name)
}

/// The chain of policy `c` in direction `d`, with its peer and port sets
/// added to `state`.
pub fn chain(
    c: &ClusterPolicyView,
    d: Direction,
    pods: &[PodView],
    by_ns: &PodsByNamespace,
    all_ns: &BTreeMap<&str, &NamespaceView>,
    state: &mut PolicyState,
) -> ClusterChain {
    let mut rules = Vec::new();
    for (i, rule) in c.rules(d).iter().enumerate() {
        let peers: Vec<PeerMatch> = if rule.peers.is_empty() {
            vec![PeerMatch::Any]
        } else {
            rule.peers
                .iter()
                .map(|peer| {
                    let key = match peer {
                        ClusterPeer::Pods { namespaces, pods } => {
                            SetKey::Pods { namespace: None, namespaces: Some(namespaces), pods }
                        }
                        ClusterPeer::Networks(nets) => SetKey::Networks(nets),
                    };
                    PeerMatch::Set(peer_set(key, by_ns, all_ns, state))
                })
                .collect()
        };
        let ports = ports_matches(&rule.ports, pods, state);
        for peer in &peers {
            for ports in &ports {
                rules.push(ClusterMatch {
                    rule: i,
                    name: rule.name.clone(),
                    action: rule.action,
                    peer: peer.clone(),
                    ports: ports.clone(),
                });
            }
        }
    }
    ClusterChain { policy: c.name.clone(), tier: c.tier, priority: c.priority, direction: d, rules }
}

/// Adds to `list` the namespaces some policy's subject may select, in the
/// directions it has rules for: the plugin holds new pods there until
/// their rules are in place. Which pods a `pods` subject selects depends
/// on labels the plugin cannot know, so the whole namespace counts. A
/// namespace the agent has not seen yet may be selected too (its labels are
/// unknown), so pods of unseen namespaces are held in those directions.
pub fn subject_namespaces(cluster: &[ClusterPolicyView], namespaces: &[NamespaceView], list: &mut PolicyNamespaces) {
    for c in cluster {
        list.unseen.ingress |= !c.ingress.is_empty();
        list.unseen.egress |= !c.egress.is_empty();
        let sel = match &c.subject {
            Subject::Namespaces(ns) | Subject::Pods { namespaces: ns, .. } => ns,
        };
        for ns in namespaces.iter().filter(|n| sel.matches(&n.labels)) {
            if !c.ingress.is_empty() {
                list.ingress.insert(ns.name.clone());
            }
            if !c.egress.is_empty() {
                list.egress.insert(ns.name.clone());
            }
        }
    }
    if !list.unseen.is_open() {
        list.seen = namespaces.iter().map(|n| n.name.clone()).collect();
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use serde_json::{Value, json};

    use super::*;
    use crate::desired::policy::fixtures::*;
    use crate::desired::policy::{policy, policy_namespaces, policy_with_tiers};
    use crate::desired::policy_trace::{Probe, Verdict, oracle, trace_with_tiers, walk};
    use crate::wire_cluster_policy::ClusterPeer;
    use crate::wire_policy::{PolicyView, Protocol::*};

    fn cnp(name: &str, tier: &str, priority: u32, subject: Value, ingress: Value, egress: Value) -> ClusterPolicyView {
        let spec =
            json!({"tier": tier, "priority": priority, "subject": subject, "ingress": ingress, "egress": egress});
        let mut refused = Vec::new();
        let v = ClusterPolicyView::from_spec(name, Some(&spec), &mut refused).unwrap();
        assert!(refused.iter().all(|r| r.cap.is_some()), "{refused:?}");
        v
    }

    fn ns_sel(kv: &[(&str, &str)]) -> Value {
        json!({"namespaces": {"matchLabels": kv.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()}})
    }

    fn pods_sel(ns: &[(&str, &str)], pods: &[(&str, &str)]) -> Value {
        let m =
            |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>();
        json!({"pods": {"namespaceSelector": {"matchLabels": m(ns)}, "podSelector": {"matchLabels": m(pods)}}})
    }

    fn rule(action: &str, dir: Direction, peers: Vec<Value>, protocols: Option<Value>) -> Value {
        let mut r = json!({"action": action, (if dir == Direction::Ingress { "from" } else { "to" }): peers});
        if let Some(p) = protocols {
            r["protocols"] = p;
        }
        r
    }

    use Direction::{Egress as E, Ingress as I};

    /// Pods in four namespaces over two nodes, a NetworkPolicy isolating
    /// prod's web pods, and cluster policies exercising each tier, action,
    /// tie, rule order, peer form and port form.
    fn cluster() -> (Vec<PodView>, Vec<NamespaceView>, Vec<PolicyView>, Vec<ClusterPolicyView>) {
        let mut host = pod("kube-system", "host", "node1", 1, &[]);
        host.host_network = true;
        host.ips = vec!["198.51.100.11".parse().unwrap(), "2001:db8:a::11".parse().unwrap()];
        let pods = vec![
            with_port(pod("prod", "web", "node1", 10, &[("app", "web")]), "http", Tcp, 8080),
            with_port(pod("prod", "db", "node2", 11, &[("app", "db")]), "http", Tcp, 9090),
            pod("prod", "cli", "node2", 12, &[("role", "cli")]),
            pod("dev", "cli", "node1", 13, &[("role", "cli")]),
            pod("dev", "db", "node2", 14, &[("app", "db")]),
            pod("mon", "prom", "node2", 15, &[("app", "prom")]),
            pod("staging", "x", "node1", 16, &[("role", "probe")]),
            pod("locked", "y", "node2", 17, &[]),
            host,
        ];
        let namespaces = vec![
            ns("prod", &[("env", "prod")]),
            ns("dev", &[("env", "dev")]),
            ns("mon", &[("team", "mon")]),
            ns("staging", &[("env", "staging")]),
            ns("locked", &[("team", "locked")]),
            ns("kube-system", &[]),
        ];
        let policies = vec![ingress(
            netpol("prod", "web-from-cli", sel(&[("app", "web")])),
            vec![fixtures_rule(vec![pods_in_own(sel(&[("role", "cli")]))], vec![tcp(8080)])],
        )];
        let tcp_port = |n: u16| json!([{"tcp": {"destinationPort": {"number": n}}}]);
        let every = json!({"namespaces": {}});
        let over_cap: Vec<Value> = (0..101).map(|i| json!({"networks": [format!("10.9.{i}.0/24")]})).collect();
        let cluster = vec![
            // Admin: monitoring reaches every prod and dev pod, NetworkPolicy or not.
            cnp(
                "a-mon",
                "Admin",
                10,
                ns_sel(&[]),
                json!([rule("Accept", I, vec![ns_sel(&[("team", "mon")])], None)]),
                json!([]),
            ),
            // dev → prod passes to NetworkPolicy, so the Deny below never sees it.
            cnp(
                "a-pass-dev",
                "Admin",
                20,
                ns_sel(&[("env", "prod")]),
                json!([rule("Pass", I, vec![ns_sel(&[("env", "dev")])], None)]),
                json!([]),
            ),
            cnp(
                "a-deny-dev",
                "Admin",
                30,
                ns_sel(&[("env", "prod")]),
                json!([rule(
                    "Deny",
                    I,
                    vec![ns_sel(&[("env", "dev")]), ns_sel(&[("env", "staging")])],
                    Some(tcp_port(8080))
                )]),
                json!([]),
            ),
            // A tie at 40: by name, a-tie-a (Accept) before a-tie-b (Deny).
            cnp(
                "a-tie-b",
                "Admin",
                40,
                ns_sel(&[("env", "dev")]),
                json!([]),
                json!([rule("Deny", E, vec![pods_sel(&[], &[("app", "db")])], None)]),
            ),
            cnp(
                "a-tie-a",
                "Admin",
                40,
                ns_sel(&[("env", "dev")]),
                json!([]),
                json!([rule("Accept", E, vec![pods_sel(&[], &[("app", "db")])], None)]),
            ),
            // Rule order, and CIDR peers against pod peers: node1's pods
            // accepted on 8080, the rest of the pod network denied.
            cnp(
                "a-rules",
                "Admin",
                50,
                pods_sel(&[("env", "dev")], &[("role", "cli")]),
                json!([]),
                json!([
                    rule(
                        "Accept",
                        E,
                        vec![json!({"networks": ["10.244.1.0/24", "fd00:10:244:1::/64"]})],
                        Some(tcp_port(8080))
                    ),
                    rule("Deny", E, vec![json!({"networks": ["10.244.0.0/16", "fd00:10:244::/56"]})], None),
                ]),
            ),
            // Named port: staging may reach prod's "http" port, whatever its number.
            cnp(
                "a-named",
                "Admin",
                5,
                ns_sel(&[("env", "prod")]),
                json!([rule(
                    "Accept",
                    I,
                    vec![ns_sel(&[("env", "staging")])],
                    Some(json!([{"destinationNamedPort": "http"}]))
                )]),
                json!([]),
            ),
            // Baseline: a default deny of ingress; probes pass to the default.
            cnp(
                "b-deny",
                "Baseline",
                10,
                every.clone(),
                json!([rule("Deny", I, vec![every.clone()], None)]),
                json!([]),
            ),
            cnp(
                "b-probe",
                "Baseline",
                1,
                every.clone(),
                json!([rule("Pass", I, vec![pods_sel(&[], &[("role", "probe")])], None)]),
                json!([]),
            ),
            // Past a cap: its subjects are denied egress (fail closed).
            cnp(
                "a-over-cap",
                "Admin",
                1,
                ns_sel(&[("team", "locked")]),
                json!([]),
                json!([rule("Accept", E, over_cap, None)]),
            ),
        ];
        (pods, namespaces, policies, cluster)
    }

    fn fixtures_rule(
        peers: Vec<crate::wire_policy::Peer>,
        ports: Vec<crate::wire_policy::Port>,
    ) -> crate::wire_policy::Rule {
        crate::desired::policy::fixtures::rule(peers, ports)
    }

    fn find<'a>(pods: &'a [PodView], id: &str) -> &'a PodView {
        pods.iter().find(|p| format!("{}/{}", p.namespace, p.name) == id).unwrap()
    }

    #[test]
    fn tiers_decide_in_order_and_the_tracer_names_the_rule() {
        let (pods, nss, pols, cnps) = cluster();
        // (from, to, IPv6, protocol, port, allowed, the explanation mentions)
        let cases = [
            ("mon/prom", "prod/web", false, Tcp, 1, true, "Admin tier ClusterNetworkPolicy a-mon rule 0"),
            ("mon/prom", "prod/web", true, Udp, 53, true, "a-mon"),
            ("prod/cli", "prod/web", false, Tcp, 8080, true, "allowed by prod/web-from-cli"),
            ("prod/cli", "prod/web", false, Tcp, 9, false, "DENIED: selected by prod/web-from-cli"),
            // Pass: NetworkPolicy decides, and the Admin Deny after it is never reached.
            ("dev/cli", "prod/web", false, Tcp, 8080, false, "DENIED: selected by prod/web-from-cli"),
            // Admin Deny beats NetworkPolicy: staging has no Pass.
            ("staging/x", "prod/web", true, Tcp, 8080, true, "a-named"),
            ("staging/x", "prod/db", false, Tcp, 9090, true, "a-named"),
            ("staging/x", "prod/db", false, Tcp, 8080, false, "a-deny-dev rule 0"),
            // Baseline only for pods no NetworkPolicy isolates.
            ("prod/cli", "prod/db", false, Tcp, 80, false, "Baseline tier ClusterNetworkPolicy b-deny"),
            ("staging/x", "dev/db", true, Tcp, 80, true, "b-probe rule 0 Pass"),
            // Ties by name; rule order; CIDR against pod peers.
            // (egress accepted by a-tie-a; ingress to prod/db denied by b-deny)
            (
                "dev/cli",
                "prod/db",
                false,
                Tcp,
                80,
                false,
                "egress:  allowed by Admin tier ClusterNetworkPolicy a-tie-a",
            ),
            ("dev/cli", "dev/db", true, Udp, 5, false, "b-deny"),
            ("dev/cli", "prod/web", true, Tcp, 8080, false, "prod/web-from-cli"),
            ("dev/cli", "prod/cli", false, Tcp, 8080, false, "a-rules rule 1"),
            ("dev/cli", "staging/x", false, Tcp, 8080, false, "b-deny"),
            ("dev/cli", "mon/prom", true, Tcp, 80, false, "a-rules rule 1"),
            // Refused past a cap: denied.
            ("locked/y", "kube-system/host", false, Tcp, 80, false, "a-over-cap"),
            ("locked/y", "mon/prom", false, Tcp, 80, false, "a-over-cap"),
        ];
        for (from, to, ipv6, protocol, port, want, why) in cases {
            let probe = Probe { from: find(&pods, from), to: find(&pods, to), ipv6, protocol, port };
            let e = trace_with_tiers(&pods, &nss, &pols, &cnps, probe).unwrap();
            assert_eq!(e.allowed(), want, "{from} -> {to} {port}/{protocol} v6={ipv6} ({why}):\n{e}");
            assert!(e.to_string().contains(why), "{from} -> {to}: want {why:?} in\n{e}");
        }
    }

    /// The API's semantics written out directly over the views, with no
    /// sets, groups or chains. NetworkPolicy's own part is the tracer's
    /// NetworkPolicy-only walk, which its own oracle checks.
    fn oracle(
        pods: &[PodView],
        nss: &[NamespaceView],
        pols: &[PolicyView],
        cnps: &[ClusterPolicyView],
        p: Probe,
    ) -> bool {
        let all_ns: BTreeMap<&str, &NamespaceView> = nss.iter().map(|n| (n.name.as_str(), n)).collect();
        let ip = |pod: &PodView| pod.ips.iter().copied().find(|i| i.is_ipv6() == p.ipv6).unwrap();
        let rule_ok = |r: &ClusterRule, peer: &PodView| {
            let peer_ok = r.peers.is_empty()
                || r.peers.iter().any(|x| match x {
                    ClusterPeer::Pods { namespaces, pods } => {
                        !peer.host_network
                            && all_ns.get(peer.namespace.as_str()).is_some_and(|n| namespaces.matches(&n.labels))
                            && pods.matches(&peer.labels)
                    }
                    ClusterPeer::Networks(nets) => nets.iter().any(|n| n.contains(ip(peer))),
                });
            peer_ok && oracle::ports_ok(&r.ports, p)
        };
        let side_ok = |d: Direction, own: &PodView, peer: &PodView| -> bool {
            let ordered = in_order(cnps);
            let all_ns = &all_ns;
            let tier = |t: Tier| -> Vec<&ClusterRule> {
                let selecting = ordered.iter().filter(|c| c.tier == t && subject_selects(c, own, all_ns));
                selecting.flat_map(|c| c.rules(d)).collect()
            };
            for r in tier(Tier::Admin) {
                if rule_ok(r, peer) {
                    match r.action {
                        Action::Accept => return true,
                        Action::Deny => return false,
                        Action::Pass => break,
                    }
                }
            }
            let state = policy(&own.node, pods, nss, pols);
            let (own_ip, peer_ip) = (ip(own), ip(peer));
            match walk(&state, d, own_ip, peer_ip, p) {
                Verdict::NotIsolated => {}
                v => return v.passes(),
            }
            tier(Tier::Baseline).into_iter().find(|r| rule_ok(r, peer)).is_none_or(|r| r.action != Action::Deny)
        };
        oracle::connection_ok(p, side_ok)
    }

    #[test]
    fn the_desired_state_agrees_with_the_api_semantics_on_every_pair() {
        let (pods, nss, pols, cnps) = cluster();
        let probes = [(Tcp, 8080), (Tcp, 9090), (Tcp, 80), (Udp, 53), (Udp, 8080)];
        let mut checked = (0, 0);
        for from in &pods {
            for to in pods.iter().filter(|t| *t != from) {
                for ipv6 in [false, true] {
                    for (protocol, port) in probes {
                        let probe = Probe { from, to, ipv6, protocol, port };
                        let e = trace_with_tiers(&pods, &nss, &pols, &cnps, probe).unwrap();
                        assert_eq!(e.allowed(), oracle(&pods, &nss, &pols, &cnps, probe), "{probe:?}\n{e}");
                        if e.allowed() { checked.0 += 1 } else { checked.1 += 1 }
                    }
                }
            }
        }
        assert!(checked.0 > 50 && checked.1 > 50, "both verdicts are exercised: {checked:?}");
    }

    #[test]
    fn order_is_priority_then_name_whatever_the_input_order() {
        let (pods, nss, pols, cnps) = cluster();
        let one = policy_with_tiers("node1", &pods, &nss, &pols, &cnps);
        let mut reversed = cnps.clone();
        reversed.reverse();
        assert_eq!(one, policy_with_tiers("node1", &pods, &nss, &pols, &reversed));
        let names: Vec<&str> = in_order(&cnps).iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a-over-cap",
                "a-named",
                "a-mon",
                "a-pass-dev",
                "a-deny-dev",
                "a-tie-a",
                "a-tie-b",
                "a-rules",
                "b-probe",
                "b-deny"
            ]
        );
    }

    #[test]
    fn selected_pods_get_groups_and_their_namespaces_hold_new_pods() {
        let (pods, nss, pols, cnps) = cluster();
        let s = policy_with_tiers("node1", &pods, &nss, &pols, &cnps);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // staging/x: no NetworkPolicy; a-mon (Admin) and the Baseline tier select it.
        let g = &s.groups[&s.ingress[&ip("10.244.1.16")]];
        assert_eq!((g.admin.is_some(), g.policies.is_none(), g.baseline.len()), (true, true, 2), "{g:?}");
        // prod/web: Admin, NetworkPolicy, and the Baseline it never reaches.
        let g = &s.groups[&s.ingress[&ip("10.244.1.10")]];
        assert!(g.admin.is_some() && g.policies.as_ref().is_some_and(|p| p.len() == 1), "{g:?}");
        assert!(!s.egress.contains_key(&ip("10.244.1.16")), "no policy has egress rules for staging");
        let list = policy_namespaces(&pols, &cnps, &nss);
        assert!(list.ingress.contains("staging") && list.ingress.contains("mon"), "{list:?}");
        assert!(list.egress.contains("dev") && list.egress.contains("locked") && !list.egress.contains("mon"));
        // A namespace created after the agent's view may match a subject's selector: held until learnt.
        assert!(list.unseen.ingress && list.unseen.egress && !list.seen.contains("brand-new"), "{list:?}");
        assert_eq!(list.group_for("brand-new"), libweft::pending::PENDING_BOTH_GROUP);
        assert!(nss.iter().all(|n| list.seen.contains(&n.name)));
        assert!(
            policy_namespaces(&pols, &[], &nss).unseen.is_open(),
            "NetworkPolicy alone never holds unseen namespaces"
        );
        // No cluster policy: exactly NetworkPolicy's state.
        assert_eq!(policy_with_tiers("node1", &pods, &nss, &pols, &[]), policy("node1", &pods, &nss, &pols));
    }

    #[test]
    fn the_table_orders_tiers_as_chains_and_parses_as_nft_json() {
        let (pods, nss, pols, cnps) = cluster();
        let state = policy_with_tiers("node1", &pods, &nss, &pols, &cnps);
        let r = crate::desired::policy_table::ruleset(&state);
        let cmds = r["nftables"].as_array().unwrap();
        let rules = |chain: &str| -> Vec<String> {
            cmds.iter()
                .filter_map(|c| c["add"].get("rule"))
                .filter(|r| r["chain"] == chain)
                .map(|r| r["expr"].to_string())
                .collect()
        };
        // prod/web: the liveness gate, the Admin tier, then NetworkPolicy's policy, then its drop.
        let web = &state.groups[&state.ingress[&"10.244.1.10".parse::<IpAddr>().unwrap()]];
        let group = rules(&web.name("in"));
        assert_eq!(group[0], json!(crate::desired::policy_table::liveness_rule()).to_string(), "{group:?}");
        let group = &group[1..];
        let tier = web.admin.as_ref().unwrap();
        assert!(group[0].contains(tier.as_str()), "{group:?}");
        assert!(group[1].contains(&web.policies.as_ref().unwrap()[0]) && group[2].contains("drop"), "{group:?}");
        assert_eq!(group.len(), 3, "the Baseline tier is never reached: {group:?}");
        // The tier: a-named, a-mon, a-pass-dev with its Pass repeated to return, a-deny-dev.
        let tier_rules = rules(tier);
        let jump_pass = tier_rules.iter().position(|r| r.contains(&chain_name(&cnps[1], I))).unwrap();
        let jump_deny = tier_rules.iter().position(|r| r.contains(&chain_name(&cnps[2], I))).unwrap();
        let between = &tier_rules[jump_pass + 1..jump_deny];
        assert!(between.len() == 2 && between.iter().all(|r| r.contains("\"return\"")), "one per family: {between:?}");
        let pass_chain = rules(&chain_name(&cnps[1], I));
        assert!(pass_chain.iter().all(|r| r.contains("\"return\"")), "Admin Pass returns: {pass_chain:?}");
        let deny_chain = rules(&chain_name(&cnps[2], I));
        assert!(deny_chain.iter().all(|r| r.contains("ingress_denied") && r.contains("drop")), "{deny_chain:?}");
        let logged = {
            let mut st = state.clone();
            st.deny_log = Some(crate::config::DenyLog { group: 100, per_second: 10 });
            crate::desired::policy_table::ruleset(&st)
        };
        let deny_rules: Vec<String> = logged["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == chain_name(&cnps[2], I).as_str())
            .map(|r| r["expr"].to_string())
            .collect();
        assert_eq!(deny_rules.len(), 2 * deny_chain.len(), "logDenied: a log rule before each Deny: {deny_rules:?}");
        assert!(deny_rules[0].contains("ClusterNetworkPolicy/a-deny-dev") && deny_rules[1].contains("drop"));
        let baseline_pass = rules(&chain_name(&cnps[8], I));
        assert!(baseline_pass.iter().all(|r| r.contains("accept")), "Baseline Pass is the default: {baseline_pass:?}");
        // The nftables crate knows no verdict maps nor the liveness gate's nf_proto set: the rest must fit its schema.
        let rest: Vec<&Value> =
            cmds.iter().filter(|c| !c["add"]["map"].is_object() && c["add"]["set"]["type"] != "nf_proto").collect();
        serde_json::from_value::<nftables::schema::Nftables>(json!({"nftables": rest})).expect("valid nft JSON");
    }
}
