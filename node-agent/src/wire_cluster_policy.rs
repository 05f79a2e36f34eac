//! ClusterNetworkPolicy (`policy.networking.k8s.io`, module
//! `sigs.k8s.io/network-policy-api` v0.3.0, standard channel) as weft reads
//! it off the wire: a compact owned view, [`ClusterPolicyView`], built from
//! the object's `spec` as JSON. Imports only the other input views.
//!
//! The API's own fail-closed rules decide what weft does with parts it
//! cannot read (a peer or protocol with no known field set, which is how a
//! newer CRD's fields look to an older reader):
//! - an `Accept` rule with such a part matches no traffic: it is left out;
//! - a `Deny` or `Pass` rule with such a part becomes "Deny all" (any peer,
//!   any port);
//! - an unknown action is "Deny all" too.
//!
//! Experimental-channel fields: `destinationNamedPort` is read (resolved on
//! the destination pod, for TCP, UDP and SCTP alike); the `nodes` and
//! `domainNames` peers are not implemented and read as unknown parts
//! (above). A subject weft cannot read (bad selector, none or both of
//! `namespaces`/`pods`) makes the policy ignored, as a NetworkPolicy's bad
//! `podSelector` does: the API server's validation makes it unreachable.
//! A policy past a [`Cap`] is refused and fails closed: each direction with
//! rules gets one "Deny all" rule instead, at the policy's tier and
//! priority; a subject itself past a cap selects every pod.

use std::collections::BTreeSet;
use std::fmt;

use ipnetwork::IpNetwork;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;

use crate::wire_policy::{
    Acceptance, Cap, Direction, Port, PortMatch, Protocol, ReadError, Refused, Selector, parse_cidr,
};

/// The API group, version and plural weft watches. v0.3.0's CRD serves
/// v1alpha2 and v1beta1 with the same schema and stores v1beta1; objects
/// written through either are seen through either.
pub const GROUP: &str = "policy.networking.k8s.io";
pub const VERSION: &str = "v1beta1";
pub const KIND: &str = "ClusterNetworkPolicy";
pub const PLURAL: &str = "clusternetworkpolicies";

/// The refusal kind, in logs and `weft policy trace` notes.
const REFUSED_KIND: &str = "ClusterNetworkPolicy";

/// Where a policy sits relative to NetworkPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Before NetworkPolicy.
    Admin,
    /// After NetworkPolicy, only for pods it does not isolate.
    Baseline,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Accept,
    Deny,
    /// Skip the rest of the tier: Admin → NetworkPolicy; Baseline → the
    /// default (allowed).
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// The pods a policy applies to (host-network pods never are).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// Every pod of the namespaces matching.
    Namespaces(Selector),
    /// Pods matching `pods` in namespaces matching `namespaces`.
    Pods { namespaces: Selector, pods: Selector },
}

/// A `from`/`to` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPeer {
    /// `namespaces` (with `pods` the empty selector) or `pods`.
    Pods { namespaces: Selector, pods: Selector },
    /// `networks`: CIDRs, masked.
    Networks(Vec<IpNetwork>),
}

/// One rule. Empty `peers` is any peer and empty `ports` any port: only a
/// fail-closed "Deny all" has empty peers (the API requires at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRule {
    /// `name`, cut to 100 characters (the API's limit).
    pub name: String,
    pub action: Action,
    pub peers: Vec<ClusterPeer>,
    pub ports: Vec<Port>,
}

impl ClusterRule {
    /// The fail-closed rule.
    pub fn deny_all(name: &str) -> ClusterRule {
        ClusterRule { name: name.to_string(), action: Action::Deny, peers: vec![], ports: vec![] }
    }
}

/// A ClusterNetworkPolicy as weft believes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPolicyView {
    pub name: String,
    pub tier: Tier,
    /// 0..=1000, lower first.
    pub priority: u32,
    pub subject: Subject,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
    /// Whether weft enforces it as written (its `Accepted` condition).
    pub acceptance: Acceptance,
}

impl ClusterPolicyView {
    pub fn rules(&self, d: Direction) -> &[ClusterRule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The evaluation order within a tier: priority, then name. The API
    /// leaves the order of equal priorities to the implementation; weft's
    /// is by name so that it never depends on the order of the watch.
    pub fn order_key(&self) -> (Tier, u32, &str) {
        (self.tier, self.priority, &self.name)
    }

    fn selectors(&self) -> impl Iterator<Item = &Selector> {
        let subject = match &self.subject {
            Subject::Namespaces(ns) => vec![ns],
            Subject::Pods { namespaces, pods } => vec![namespaces, pods],
        };
        let peers = self.ingress.iter().chain(&self.egress).flat_map(|r| &r.peers);
        subject.into_iter().chain(peers.flat_map(|p| match p {
            ClusterPeer::Pods { namespaces, pods } => vec![namespaces, pods],
            ClusterPeer::Networks(_) => vec![],
        }))
    }

    /// The label keys its selectors read: the labels the watches must keep.
    pub fn label_keys(&self) -> BTreeSet<&str> {
        self.selectors().flat_map(Selector::keys).collect()
    }

    /// The first cap it goes past, with its count there. A `networks`
    /// peer counts one peer per CIDR.
    pub fn over_cap(&self) -> Option<(Cap, usize)> {
        let rules_of = || self.ingress.iter().chain(&self.egress);
        let peers = |r: &ClusterRule| {
            r.peers
                .iter()
                .map(|p| match p {
                    ClusterPeer::Networks(n) => n.len(),
                    ClusterPeer::Pods { .. } => 1,
                })
                .sum::<usize>()
        };
        let counts = [
            (Cap::Rules, self.ingress.len().max(self.egress.len())),
            (Cap::Peers, rules_of().map(peers).max().unwrap_or(0)),
            (Cap::Ports, rules_of().map(|r| r.ports.len()).max().unwrap_or(0)),
            (Cap::Accepts, rules_of().map(|r| peers(r).max(1) * r.ports.len().max(1)).sum()),
            (Cap::LabelKeys, self.label_keys().len()),
            (Cap::SelectorTerms, self.selectors().map(Selector::terms).sum()),
        ];
        counts.into_iter().find(|(cap, n)| *n > cap.limit())
    }

    /// Refuses a policy past a cap, failing closed (module header).
    fn refuse_over_cap(&mut self, refused: &mut Vec<Refused>) {
        let Some((cap, n)) = self.over_cap() else { return };
        for rules in [&mut self.ingress, &mut self.egress] {
            if !rules.is_empty() {
                *rules = vec![ClusterRule::deny_all("weft: refused over a cap")];
            }
        }
        let mut reason = format!(
            "{n} {} over the cap of {}: refused, its subjects are denied in the directions it has rules",
            cap.label(),
            cap.limit()
        );
        if self.over_cap().is_some() {
            self.subject = Subject::Namespaces(Selector::everything());
            reason.push_str(" (its subject alone is past the cap: every pod)");
        }
        refused.push(Refused { kind: REFUSED_KIND, object: self.name.clone(), reason, cap: Some(cap) });
    }

    /// Reads a policy from its name and `spec` (JSON); parts weft cannot
    /// read are handled as the module header says and reported. `None`:
    /// the policy is ignored (reported).
    pub fn from_spec(name: &str, spec: Option<&serde_json::Value>, refused: &mut Vec<Refused>) -> Option<Self> {
        let first = refused.len();
        let mut refuse =
            |reason: String| refused.push(Refused { kind: REFUSED_KIND, object: name.to_string(), reason, cap: None });
        let raw: RawSpec = match spec.map(RawSpec::deserialize) {
            Some(Ok(raw)) => raw,
            Some(Err(e)) => {
                refuse(format!("spec: {}; the policy is ignored", bounded(&e.to_string())));
                return None;
            }
            None => {
                refuse("no spec; the policy is ignored".into());
                return None;
            }
        };
        let subject = match read_subject(&raw.subject) {
            Ok(s) => s,
            Err(e) => {
                refuse(format!("spec.subject: {e}; the policy is ignored"));
                return None;
            }
        };
        let (tier, fail_closed) = match raw.tier.as_str() {
            "Admin" => (Tier::Admin, false),
            "Baseline" => (Tier::Baseline, false),
            other => {
                refuse(format!("unknown tier {:?}: read as Admin with every rule Deny all", bounded(other)));
                (Tier::Admin, true)
            }
        };
        let mut read = |dir: Direction, rules: &[RawRule]| -> Vec<ClusterRule> {
            let rules: Vec<ClusterRule> =
                rules.iter().enumerate().filter_map(|(i, r)| read_rule(dir, i, r, &mut refuse)).collect();
            if fail_closed && !rules.is_empty() { vec![ClusterRule::deny_all("weft: unknown tier")] } else { rules }
        };
        let ingress = read(Direction::Ingress, &raw.ingress);
        let egress = read(Direction::Egress, &raw.egress);
        let priority = u32::try_from(raw.priority.clamp(0, 1000)).unwrap_or(1000);
        let acceptance = Acceptance::default();
        let mut view =
            ClusterPolicyView { name: name.to_string(), tier, priority, subject, ingress, egress, acceptance };
        view.refuse_over_cap(refused);
        view.acceptance = Acceptance::judge("", 0, &refused[first..]);
        Some(view)
    }

    /// The view as the object `uid` at `generation` (what its condition is about).
    pub fn identified(mut self, uid: &str, generation: i64) -> Self {
        self.acceptance.uid = uid.to_string();
        self.acceptance.generation = generation;
        self
    }
}

/// Hostile values can be huge: what is logged is a bounded prefix.
fn bounded(v: &str) -> String {
    v.chars().take(200).collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    tier: String,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    subject: RawSubject,
    #[serde(default)]
    ingress: Vec<RawRule>,
    #[serde(default)]
    egress: Vec<RawRule>,
}

#[derive(Deserialize, Default)]
struct RawSubject {
    namespaces: Option<LabelSelector>,
    pods: Option<RawNamespacedPod>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNamespacedPod {
    #[serde(default)]
    namespace_selector: LabelSelector,
    #[serde(default)]
    pod_selector: LabelSelector,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRule {
    #[serde(default)]
    name: String,
    #[serde(default)]
    action: String,
    from: Option<Vec<RawPeer>>,
    to: Option<Vec<RawPeer>>,
    protocols: Option<Vec<RawProtocol>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPeer {
    namespaces: Option<LabelSelector>,
    pods: Option<RawNamespacedPod>,
    networks: Option<Vec<String>>,
    nodes: Option<serde_json::Value>,
    domain_names: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProtocol {
    tcp: Option<RawL4>,
    udp: Option<RawL4>,
    sctp: Option<RawL4>,
    destination_named_port: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawL4 {
    destination_port: Option<RawPort>,
}

#[derive(Deserialize)]
struct RawPort {
    number: Option<i64>,
    range: Option<RawRange>,
}

#[derive(Deserialize)]
struct RawRange {
    start: i64,
    end: i64,
}

/// A part of a ClusterNetworkPolicy that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterReadError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("exactly one of {0} must be set")]
    OneOf(&'static str),
    /// Ends with [`wire_policy::NOT_IMPLEMENTED`](crate::wire_policy::NOT_IMPLEMENTED).
    #[error("the {0} peer is not implemented by weft")]
    NotImplemented(&'static str),
    #[error("{0} is no port number")]
    PortNumber(i64),
    #[error("range {0}-{1} is empty")]
    EmptyRange(u16, u16),
    #[error("no {0}")]
    Missing(&'static str),
}

fn selector(s: &LabelSelector) -> Result<Selector, ClusterReadError> {
    Ok(Selector::from_label_selector(s)?)
}

fn read_subject(s: &RawSubject) -> Result<Subject, ClusterReadError> {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok(Subject::Namespaces(selector(ns)?)),
        (None, Some(p)) => {
            Ok(Subject::Pods { namespaces: selector(&p.namespace_selector)?, pods: selector(&p.pod_selector)? })
        }
        _ => Err(ClusterReadError::OneOf("namespaces, pods")),
    }
}

fn read_peer(p: &RawPeer) -> Result<ClusterPeer, ClusterReadError> {
    let given =
        [p.namespaces.is_some(), p.pods.is_some(), p.networks.is_some(), p.nodes.is_some(), p.domain_names.is_some()];
    if given.into_iter().filter(|g| *g).count() != 1 {
        return Err(ClusterReadError::OneOf("namespaces, pods, networks (nodes, domainNames)"));
    }
    if p.nodes.is_some() {
        return Err(ClusterReadError::NotImplemented("nodes"));
    }
    if p.domain_names.is_some() {
        return Err(ClusterReadError::NotImplemented("domainNames"));
    }
    if let Some(ns) = &p.namespaces {
        return Ok(ClusterPeer::Pods { namespaces: selector(ns)?, pods: Selector::everything() });
    }
    if let Some(pods) = &p.pods {
        return Ok(ClusterPeer::Pods {
            namespaces: selector(&pods.namespace_selector)?,
            pods: selector(&pods.pod_selector)?,
        });
    }
    let mut nets = Vec::new();
    for n in p.networks.iter().flatten() {
        nets.push(parse_cidr(n)?);
    }
    if nets.is_empty() {
        return Err(ClusterReadError::Missing("networks"));
    }
    nets.sort();
    nets.dedup();
    Ok(ClusterPeer::Networks(nets))
}

fn port_number(n: i64) -> Result<u16, ClusterReadError> {
    u16::try_from(n).ok().filter(|n| *n > 0).ok_or(ClusterReadError::PortNumber(n))
}

/// One `protocols` entry as [`Port`]s (a named port: one per protocol).
fn read_protocol(p: &RawProtocol) -> Result<Vec<Port>, ClusterReadError> {
    let l4 = [(Protocol::Tcp, &p.tcp), (Protocol::Udp, &p.udp), (Protocol::Sctp, &p.sctp)];
    let given: Vec<(Protocol, &RawL4)> = l4.iter().filter_map(|(proto, l)| l.as_ref().map(|l| (*proto, l))).collect();
    match (given.as_slice(), &p.destination_named_port) {
        ([(protocol, l)], None) => {
            let port = match &l.destination_port {
                // MinProperties=1 makes this unreachable; every port is what it would mean.
                None => PortMatch::All,
                Some(RawPort { number: Some(n), range: None }) => {
                    let n = port_number(*n)?;
                    PortMatch::Range(n, n)
                }
                Some(RawPort { number: None, range: Some(r) }) => {
                    let (a, b) = (port_number(r.start)?, port_number(r.end)?);
                    if b < a {
                        return Err(ClusterReadError::EmptyRange(a, b));
                    }
                    PortMatch::Range(a, b)
                }
                Some(_) => return Err(ClusterReadError::OneOf("destinationPort.number, destinationPort.range")),
            };
            Ok(vec![Port { protocol: *protocol, port }])
        }
        ([], Some(name)) if !name.is_empty() && name.len() <= 15 => Ok([Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .map(|protocol| Port { protocol, port: PortMatch::Named(name.clone()) })
            .collect()),
        ([], Some(name)) => Err(ReadError::PortName(bounded(name)).into()),
        _ => Err(ClusterReadError::OneOf("tcp, udp, sctp, destinationNamedPort")),
    }
}

/// Reads one rule; `None` when an Accept rule is left out (fail closed).
fn read_rule(dir: Direction, i: usize, r: &RawRule, refuse: &mut impl FnMut(String)) -> Option<ClusterRule> {
    let name: String = r.name.chars().take(100).collect();
    let at = if name.is_empty() { format!("{dir}[{i}]") } else { format!("{dir}[{i}] ({})", bounded(&name)) };
    let fail = |action: &str, why: String, refuse: &mut dyn FnMut(String)| -> Option<ClusterRule> {
        if action == "Accept" {
            refuse(format!("{at}: {why}: the Accept rule matches nothing"));
            None
        } else {
            refuse(format!("{at}: {why}: read as Deny all"));
            Some(ClusterRule::deny_all(&name))
        }
    };
    let action = match r.action.as_str() {
        "Accept" => Action::Accept,
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        other => return fail("Deny", format!("unknown action {:?}", bounded(other)), refuse),
    };
    let raw_peers = match dir {
        Direction::Ingress => (&r.from, "from"),
        Direction::Egress => (&r.to, "to"),
    };
    let mut peers = Vec::new();
    for (j, p) in raw_peers.0.iter().flatten().enumerate() {
        match read_peer(p) {
            Ok(p) if !peers.contains(&p) => peers.push(p),
            Ok(_) => {}
            Err(e) => return fail(&r.action, format!("{} {j}: {e}", raw_peers.1), refuse),
        }
    }
    if peers.is_empty() {
        return fail(&r.action, format!("no {}", raw_peers.1), refuse);
    }
    let mut ports = Vec::new();
    for (j, p) in r.protocols.iter().flatten().enumerate() {
        match read_protocol(p) {
            Ok(ps) => ports.extend(ps.into_iter().filter(|p| !ports.contains(p)).collect::<Vec<_>>()),
            Err(e) => return fail(&r.action, format!("protocols {j}: {e}"), refuse),
        }
    }
    if r.protocols.as_ref().is_some_and(Vec::is_empty) {
        return fail(&r.action, "empty protocols".into(), refuse);
    }
    Some(ClusterRule { name, action, peers, ports })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(spec: serde_json::Value) -> (Option<ClusterPolicyView>, Vec<Refused>) {
        let mut refused = Vec::new();
        let v = ClusterPolicyView::from_spec("cnp", Some(&spec), &mut refused);
        (v, refused)
    }

    fn sel(kv: &[(&str, &str)]) -> Selector {
        Selector { labels: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), exprs: vec![] }
    }

    #[test]
    fn the_standard_channel_reads_into_the_view() {
        let (v, refused) = read(json!({
            "tier": "Admin", "priority": 10,
            "subject": {"pods": {"namespaceSelector": {"matchLabels": {"env": "prod"}},
                                 "podSelector": {"matchLabels": {"app": "web"}}}},
            "ingress": [
                {"name": "from-mon", "action": "Accept", "from": [{"namespaces": {"matchLabels": {"team": "mon"}}}],
                 "protocols": [{"tcp": {"destinationPort": {"number": 9090}}},
                               {"udp": {"destinationPort": {"range": {"start": 1000, "end": 2000}}}}]},
                {"action": "Pass", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}}]}
            ],
            "egress": [{"action": "Deny", "to": [{"networks": ["169.254.0.0/16", "fd00:ec2::254/128", "10.1.2.3/8"]}]}]
        }));
        assert!(refused.is_empty(), "{refused:?}");
        let v = v.unwrap();
        assert_eq!((v.tier, v.priority), (Tier::Admin, 10));
        assert_eq!(v.subject, Subject::Pods { namespaces: sel(&[("env", "prod")]), pods: sel(&[("app", "web")]) });
        assert_eq!(v.ingress[0].name, "from-mon");
        assert_eq!(
            v.ingress[0].peers,
            vec![ClusterPeer::Pods { namespaces: sel(&[("team", "mon")]), pods: Selector::everything() }]
        );
        assert_eq!(
            v.ingress[0].ports,
            vec![
                Port { protocol: Protocol::Tcp, port: PortMatch::Range(9090, 9090) },
                Port { protocol: Protocol::Udp, port: PortMatch::Range(1000, 2000) }
            ]
        );
        assert_eq!(v.ingress[1].action, Action::Pass);
        assert!(v.ingress[1].ports.is_empty(), "no protocols: every port");
        let ClusterPeer::Networks(nets) = &v.egress[0].peers[0] else { panic!("{v:?}") };
        assert_eq!(nets.len(), 3);
        assert!(nets.contains(&"10.0.0.0/8".parse().unwrap()), "host bits masked: {nets:?}");
        assert_eq!(
            v.label_keys().into_iter().collect::<Vec<_>>(),
            ["a", "app", "env", "team"],
            "subject and peer keys"
        );
    }

    #[test]
    fn unreadable_parts_fail_closed_as_the_api_says() {
        let rule = |action: &str, peer: serde_json::Value| {
            read(json!({"tier": "Baseline", "priority": 1, "subject": {"namespaces": {}},
                "ingress": [{"action": action, "from": [peer]}]}))
        };
        let unknown = json!({"someFutureField": {}});
        let nodes = json!({"nodes": {}});
        for peer in [unknown, nodes, json!({"networks": ["not-a-cidr"]})] {
            let (v, refused) = rule("Accept", peer.clone());
            assert!(v.unwrap().ingress.is_empty(), "{peer}: an Accept rule matches nothing");
            assert_eq!(refused.len(), 1);
            for action in ["Deny", "Pass"] {
                let (v, _) = rule(action, peer.clone());
                let r = &v.unwrap().ingress[0];
                assert_eq!((r.action, r.peers.len(), r.ports.len()), (Action::Deny, 0, 0), "{peer}: Deny all");
            }
        }
        let (v, _) = rule("Allow", json!({"namespaces": {}}));
        assert_eq!(v.unwrap().ingress[0], ClusterRule::deny_all(""), "an unknown action denies all");
        let (v, refused) = read(json!({"tier": "Admin", "priority": 1, "subject": {}}));
        assert!(v.is_none() && refused[0].reason.contains("ignored"), "no subject: ignored");
        let (v, _) = read(json!({"tier": "Middle", "priority": 1, "subject": {"namespaces": {}},
            "egress": [{"action": "Accept", "to": [{"namespaces": {}}]}]}));
        let v = v.unwrap();
        assert_eq!((v.tier, v.egress[0].action), (Tier::Admin, Action::Deny), "unknown tier: strictest reading");
        let (v, _) = read(json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
            "egress": [{"action": "Accept", "to": [{"pods": {"podSelector": {}}}],
                        "protocols": [{"destinationNamedPort": "http"}]}]}));
        assert_eq!(v.unwrap().egress[0].ports.len(), 3, "a named port on every protocol");
        let (v, _) = read(json!("not an object"));
        assert!(v.is_none());
    }

    #[test]
    fn a_policy_past_a_cap_denies_its_subjects_in_the_directions_it_has_rules() {
        let peers: Vec<serde_json::Value> = (0..101).map(|i| json!({"networks": [format!("10.0.{i}.0/24")]})).collect();
        let (v, refused) =
            read(json!({"tier": "Admin", "priority": 5, "subject": {"namespaces": {"matchLabels": {"a": "b"}}},
            "ingress": [{"action": "Accept", "from": peers}]}));
        let v = v.unwrap();
        assert_eq!(v.ingress, vec![ClusterRule::deny_all("weft: refused over a cap")]);
        assert!(v.egress.is_empty(), "no egress rules: egress untouched");
        assert_eq!(v.subject, Subject::Namespaces(sel(&[("a", "b")])), "the subject stays");
        assert_eq!(refused[0].cap, Some(Cap::Peers));
    }

    #[test]
    fn its_acceptance_says_what_was_refused_first_a_cap_then_what_weft_lacks() {
        use crate::wire_policy::Refusal;
        let with = |peers: Vec<serde_json::Value>, action: &str| {
            let (v, _) = read(json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                "egress": [{"name": "r", "action": action, "to": peers}]}));
            let a = v.unwrap().identified("u-1", 7).acceptance;
            assert_eq!((a.uid.as_str(), a.generation), ("u-1", 7));
            a.refusal
        };
        assert_eq!(with(vec![json!({"namespaces": {}})], "Accept"), None, "accepted as written");
        let r = with(vec![json!({"nodes": {"matchLabels": {"a": "b"}}})], "Deny").unwrap();
        assert_eq!(r.reason, Refusal::NOT_IMPLEMENTED);
        assert!(r.message.contains("the nodes peer is not implemented by weft: read as Deny all"), "{}", r.message);
        let r = with(vec![json!({"domainNames": ["example.com"]})], "Accept").unwrap();
        assert_eq!(r.reason, Refusal::NOT_IMPLEMENTED);
        assert!(r.message.contains("domainNames") && r.message.contains("matches nothing"), "{}", r.message);
        assert_eq!(with(vec![json!({"namespaces": {}})], "Allow").unwrap().reason, Refusal::UNREADABLE);
        let peers: Vec<serde_json::Value> = (0..101).map(|i| json!({"networks": [format!("10.0.{i}.0/24")]})).collect();
        let (v, _) = read(json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
            "egress": [{"action": "Deny", "to": [{"nodes": {}}]}, {"action": "Accept", "to": peers}]}));
        let r = v.unwrap().acceptance.refusal.unwrap();
        assert_eq!(r.reason, Refusal::CAP_EXCEEDED, "a cap decides how it is enforced: it comes first");
        assert!(r.message.starts_with("101 peers over the cap of 100: refused"), "{}", r.message);
        // Hostile text is bounded.
        let long = "x".repeat(5000);
        let r = with(vec![json!({"networks": [long]})], "Deny").unwrap();
        assert!(r.message.chars().count() <= 1024, "{}", r.message.len());
    }
}
