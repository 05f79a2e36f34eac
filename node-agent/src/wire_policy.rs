//! Pods, Namespaces and NetworkPolicies as weft reads them off the wire:
//! compact owned views built from the k8s-openapi types, and label
//! selectors with their evaluation. Imports nothing else of the crate.
//!
//! These objects may be hostile (anyone who can create a NetworkPolicy in
//! their namespace writes one). What weft believes, and why:
//! - A part of a policy weft cannot read is dropped so that the policy
//!   allows *less*, never more: a bad peer or port is left out of its rule,
//!   and a rule whose peers (or ports) were all bad is left out entirely
//!   (an empty list would mean "all"). An `ipBlock` whose `except` has a bad
//!   entry is dropped whole, since allowing the block without the exception
//!   would widen it.
//! - A policy whose own `podSelector` is bad is refused as a whole: there is
//!   no way to tell which pods it was meant to isolate. The API server's
//!   validation makes this unreachable for objects it admitted.
//! - `ipBlock` CIDRs with host bits set are masked (`10.0.0.1/8` is
//!   `10.0.0.0/8`), as Go's `net.ParseCIDR`, used by other implementations,
//!   does.
//! - `endPort` needs a numeric `port` no greater than it; SCTP is read and
//!   rendered like TCP and UDP but untested (this kernel has no SCTP sockets).
//! - Pods that finished (`Succeeded`, `Failed`) are ignored: their IPs may
//!   already belong to a new pod. Unparsable pod IPs and container ports
//!   outside 1..=65535 are skipped.
//! - A policy past one of the [`Cap`]s is refused and fails closed: it keeps
//!   isolating the pods it selects in the directions it declares, with no
//!   rule. A `podSelector` that is itself past a cap is read as "every pod
//!   of the namespace" (only the policy's own namespace is affected).
//! - Pods and namespaces keep only the labels some policy's selector names
//!   ([`PolicyView::label_keys`]): a pod's other labels cost nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// An object (or part of one) weft refused to believe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `Pod`, `NetworkPolicy`, ...
    pub kind: &'static str,
    /// `namespace/name`.
    pub object: String,
    pub reason: String,
    /// The cap a refused NetworkPolicy went past.
    pub cap: Option<Cap>,
}

/// What weft made of a policy, for its author to see (a ClusterNetworkPolicy
/// condition, an Event on a NetworkPolicy): a pure function of the object's
/// spec and identity, so every agent judges a policy alike and whichever
/// writes it writes the same thing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acceptance {
    /// `metadata.uid` and `metadata.generation` of the object judged.
    pub uid: String,
    pub generation: i64,
    /// Why it is not enforced as written; `None`: accepted.
    pub refusal: Option<Refusal>,
}

/// Why a policy is not enforced as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// CamelCase, a condition's or Event's `reason`: one of [`Refusal::REASONS`].
    pub reason: &'static str,
    /// What was refused and how weft enforces the policy instead (bounded).
    pub message: String,
}

/// The words [`ReadError`]s of parts weft does not implement end with
/// (`wire_cluster_policy`'s `nodes` and `domainNames` peers).
pub const NOT_IMPLEMENTED: &str = "is not implemented by weft";

impl Refusal {
    /// Past a cap (the policy is refused whole and fails closed).
    pub const CAP_EXCEEDED: &'static str = "CapExceeded";
    /// A part weft does not implement (read fail-closed).
    pub const NOT_IMPLEMENTED: &'static str = "NotImplemented";
    /// A part weft cannot read (left out or read fail-closed).
    pub const UNREADABLE: &'static str = "Unreadable";
    pub const REASONS: [&'static str; 3] = [Self::CAP_EXCEEDED, Self::NOT_IMPLEMENTED, Self::UNREADABLE];
    /// The longest message: a condition allows 32 KiB, but a user reads the first lines.
    const MESSAGE_CHARS: usize = 1024;
}

impl Acceptance {
    /// Judges object `uid` at `generation` from what reading it refused (every
    /// entry of `refused` is about it): a cap first, then a part not
    /// implemented, then anything unreadable.
    pub fn judge(uid: &str, generation: i64, refused: &[Refused]) -> Acceptance {
        let reason = if refused.iter().any(|r| r.cap.is_some()) {
            Some(Refusal::CAP_EXCEEDED)
        } else if refused.iter().any(|r| r.reason.contains(NOT_IMPLEMENTED)) {
            Some(Refusal::NOT_IMPLEMENTED)
        } else {
            (!refused.is_empty()).then_some(Refusal::UNREADABLE)
        };
        let refusal = reason.map(|reason| {
            // The cap's refusal first: it decides how the policy is enforced.
            let mut parts: Vec<&str> = refused.iter().filter(|r| r.cap.is_some()).map(|r| r.reason.as_str()).collect();
            parts.extend(refused.iter().filter(|r| r.cap.is_none()).map(|r| r.reason.as_str()));
            let mut message = parts.join("; ");
            if message.chars().count() > Refusal::MESSAGE_CHARS {
                message = message.chars().take(Refusal::MESSAGE_CHARS - 4).collect::<String>() + " ...";
            }
            Refusal { reason, message }
        });
        Acceptance { uid: uid.to_string(), generation, refusal }
    }
}

/// What one NetworkPolicy may expand to (README "NetworkPolicy"). The
/// kernel cost of a policy is its accept rules (one per rule, peer and port
/// form: named ports included); the watches' cost is the label keys its
/// selectors name, which every pod and namespace then keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cap {
    /// Rules per direction.
    Rules,
    /// Peers (`from`/`to` entries) per rule.
    Peers,
    /// `ports` entries per rule.
    Ports,
    /// Accept rules: Σ over its rules of peers × ports (at least 1 each).
    Accepts,
    /// Distinct label keys named by all its selectors.
    LabelKeys,
    /// Terms of all its selectors: `matchLabels` entries plus the values of
    /// `matchExpressions` (each expression counts at least 1).
    SelectorTerms,
}

impl Cap {
    pub const ALL: [Cap; 6] = [Cap::Rules, Cap::Peers, Cap::Ports, Cap::Accepts, Cap::LabelKeys, Cap::SelectorTerms];

    pub const fn limit(self) -> usize {
        match self {
            Cap::Rules => 100,
            Cap::Peers => 100,
            Cap::Ports => 100,
            Cap::Accepts => 1_000,
            Cap::LabelKeys => 64,
            Cap::SelectorTerms => 1_000,
        }
    }

    /// The metric label (`weft_policy_refused_total{reason}`).
    pub const fn label(self) -> &'static str {
        match self {
            Cap::Rules => "rules",
            Cap::Peers => "peers",
            Cap::Ports => "ports",
            Cap::Accepts => "accepts",
            Cap::LabelKeys => "label_keys",
            Cap::SelectorTerms => "selector_terms",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.object, self.reason)
    }
}

/// Hostile values can be huge: what is logged is a bounded prefix.
fn bounded(v: &str) -> String {
    v.chars().take(64).collect()
}

/// A part of a NetworkPolicy (or a pod's port) that cannot be read; the
/// values quoted are cut to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("unknown protocol {0:?}")]
    Protocol(String),
    /// `In`/`NotIn` without values (`given: false`), `Exists`/`DoesNotExist` with some.
    #[error("{operator} on {key:?} {}", if *given { "with values" } else { "without values" })]
    Values { operator: String, key: String, given: bool },
    #[error("unknown selector operator {0:?}")]
    Operator(String),
    #[error("ipBlock together with a selector")]
    BlockWithSelector,
    #[error("no podSelector, namespaceSelector or ipBlock")]
    NoPeer,
    #[error("{0:?} is not a CIDR")]
    NotCidr(String),
    #[error("{0}")]
    Cidr(String),
    /// `ipBlock.cidr` or `ipBlock.except`.
    #[error("ipBlock.{field} {source}")]
    Block { field: &'static str, source: Box<ReadError> },
    #[error("{0} is no port number")]
    PortNumber(i32),
    #[error("endPort without port")]
    EndPortWithoutPort,
    #[error("endPort {last} below port {first}")]
    EndPortBelow { first: u16, last: u16 },
    #[error("endPort with a named port")]
    EndPortNamed,
    #[error("{0:?} is no port name")]
    PortName(String),
}

/// L4 protocols a NetworkPolicy may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// `None` (the API's default) is TCP; the API spells them upper-case.
    pub fn parse(s: Option<&str>) -> Result<Protocol, ReadError> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(ReadError::Protocol(bounded(other))),
        }
    }

    /// The name nftables uses (`meta l4proto tcp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A label selector. The empty selector selects everything; an absent one
/// means something that depends on where it is absent, so callers hold an
/// `Option<Selector>` or decide themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// `matchLabels`, sorted.
    pub labels: Vec<(String, String)>,
    /// `matchExpressions`, sorted, values sorted: equal selectors compare equal.
    pub exprs: Vec<Requirement>,
}

impl Selector {
    /// Reads a selector; refuses unknown operators and value lists that the
    /// API's validation would refuse (`In`/`NotIn` need values,
    /// `Exists`/`DoesNotExist` take none).
    pub fn from_label_selector(s: &LabelSelector) -> Result<Selector, ReadError> {
        let labels: Vec<(String, String)> =
            s.match_labels.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut exprs = Vec::new();
        for e in s.match_expressions.iter().flatten() {
            let mut values = e.values.clone().unwrap_or_default();
            values.sort();
            values.dedup();
            let key = e.key.clone();
            exprs.push(match (e.operator.as_str(), values.is_empty()) {
                ("In", false) => Requirement::In(key, values),
                ("NotIn", false) => Requirement::NotIn(key, values),
                ("Exists", true) => Requirement::Exists(key),
                ("DoesNotExist", true) => Requirement::DoesNotExist(key),
                ("In" | "NotIn", true) => {
                    return Err(ReadError::Values { operator: e.operator.clone(), key: bounded(&key), given: false });
                }
                ("Exists" | "DoesNotExist", false) => {
                    return Err(ReadError::Values { operator: e.operator.clone(), key: bounded(&key), given: true });
                }
                (op, _) => return Err(ReadError::Operator(bounded(op))),
            });
        }
        exprs.sort();
        exprs.dedup();
        Ok(Selector { labels, exprs })
    }

    /// The selector that selects everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.exprs.is_empty()
    }

    /// The label keys it reads.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.labels.iter().map(|(k, _)| k.as_str()).chain(self.exprs.iter().map(|r| match r {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k.as_str(),
        }))
    }

    /// Its terms, as [`Cap::SelectorTerms`] counts them.
    pub fn terms(&self) -> usize {
        self.labels.len()
            + self
                .exprs
                .iter()
                .map(|r| match r {
                    Requirement::In(_, vs) | Requirement::NotIn(_, vs) => vs.len().max(1),
                    Requirement::Exists(_) | Requirement::DoesNotExist(_) => 1,
                })
                .sum::<usize>()
    }

    /// Whether `labels` satisfy every term (all terms are ANDed).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

impl fmt::Display for Selector {
    /// The `kubectl get -l` syntax; `{}` selects everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_everything() {
            return f.write_str("{}");
        }
        let mut terms: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.exprs {
            terms.push(match r {
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            });
        }
        f.write_str(&terms.join(","))
    }
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    /// The UID the runtime passes the plugin as `K8S_POD_UID`: `metadata.uid`,
    /// or for a static pod's mirror its `kubernetes.io/config.mirror` hash.
    pub uid: String,
    pub labels: Labels,
    /// `status.podIPs`, parsed.
    pub ips: Vec<IpAddr>,
    /// `spec.nodeName`: empty until scheduled.
    pub node: String,
    pub host_network: bool,
    /// `metadata.deletionTimestamp` is set: its address may already be
    /// another pod's ([`crate::desired::pod_trust`]).
    pub terminating: bool,
    /// Named ports of all containers (init containers included: restartable
    /// sidecars serve on theirs).
    pub ports: Vec<NamedPort>,
}

impl PodView {
    /// Reads a pod with all its labels; `None` for pods policy ignores
    /// (finished, unnamed).
    pub fn from_pod(pod: &Pod, refused: &mut Vec<Refused>) -> Option<PodView> {
        PodView::from_pod_keeping(pod, None, refused)
    }

    /// Reads a pod keeping only the labels whose keys are in `keep` (all
    /// when `None`).
    pub fn from_pod_keeping(pod: &Pod, keep: Option<&LabelKeys>, refused: &mut Vec<Refused>) -> Option<PodView> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone()?;
        let status = pod.status.as_ref();
        if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
            return None;
        }
        let object = format!("{namespace}/{name}");
        let mut refuse =
            |reason: String| refused.push(Refused { kind: "Pod", object: object.clone(), reason, cap: None });
        let mut ips = Vec::new();
        for ip in status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten() {
            match ip.ip.parse::<IpAddr>() {
                Ok(a) if !ips.contains(&a) => ips.push(a),
                Ok(_) => {}
                Err(_) => refuse(format!("podIP {:?} is not an address", bounded(&ip.ip))),
            }
        }
        let spec = pod.spec.as_ref();
        let containers = spec.into_iter().flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()));
        let mut ports = Vec::new();
        for p in containers.flat_map(|c| c.ports.iter().flatten()) {
            let Some(port_name) = &p.name else { continue };
            match (Protocol::parse(p.protocol.as_deref()), u16::try_from(p.container_port)) {
                (Ok(protocol), Ok(port)) if port > 0 => {
                    ports.push(NamedPort { name: port_name.clone(), protocol, port })
                }
                (Err(e), _) => refuse(format!("port {:?}: {e}", bounded(port_name))),
                _ => refuse(format!("port {:?}: {} is no port number", bounded(port_name), p.container_port)),
            }
        }
        ports.sort();
        ports.dedup();
        // kubelet runs a static pod under the UID its mirror records.
        let annotations = pod.metadata.annotations.as_ref();
        let uid = annotations.and_then(|a| a.get("kubernetes.io/config.mirror")).or(pod.metadata.uid.as_ref());
        Some(PodView {
            namespace,
            name,
            uid: uid.cloned().unwrap_or_default(),
            labels: kept_labels(pod.metadata.labels.as_ref(), keep),
            ips,
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            ports,
        })
    }

    /// The port number a named port has on this pod.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports.iter().find(|p| p.name == name && p.protocol == protocol).map(|p| p.port)
    }
}

/// A namespace as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceView {
    pub name: String,
    pub labels: Labels,
}

impl NamespaceView {
    pub fn from_namespace(ns: &Namespace) -> Option<NamespaceView> {
        NamespaceView::from_namespace_keeping(ns, None)
    }

    /// Reads a namespace keeping only the labels whose keys are in `keep`.
    pub fn from_namespace_keeping(ns: &Namespace, keep: Option<&LabelKeys>) -> Option<NamespaceView> {
        Some(NamespaceView { name: ns.metadata.name.clone()?, labels: kept_labels(ns.metadata.labels.as_ref(), keep) })
    }
}

/// Label keys some selector names.
pub type LabelKeys = BTreeSet<String>;

/// The labels whose keys are in `keep` (all when `None`).
fn kept_labels(labels: Option<&Labels>, keep: Option<&LabelKeys>) -> Labels {
    let labels = labels.into_iter().flatten();
    match keep {
        None => labels.map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(keep) => labels.filter(|(k, _)| keep.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Ingress or egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespaces {
    /// No `namespaceSelector`: the policy's own namespace.
    Own,
    /// `namespaceSelector` (empty: every namespace).
    Matching(Selector),
}

/// A `from`/`to` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`. An absent `podSelector`
    /// next to a `namespaceSelector` selects every pod there, so it is
    /// stored as the empty selector.
    Pods { namespaces: Namespaces, pods: Selector },
    /// `ipBlock`: the CIDR (masked) minus the exceptions.
    Block { cidr: IpNetwork, except: Vec<IpNetwork> },
}

/// The port (or port name) of a `ports` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// No `port`: every port of the protocol.
    All,
    /// `port` (and `endPort`): an inclusive range, `first == last` for one port.
    Range(u16, u16),
    /// A named port, resolved on the destination pod.
    Named(String),
}

/// A `ports` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub protocol: Protocol,
    pub port: PortMatch,
}

/// One ingress or egress rule. Empty `peers` means every peer and empty
/// `ports` every port (the API's "empty or missing").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<Port>,
}

/// A NetworkPolicy as weft believes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    pub namespace: String,
    pub name: String,
    /// `spec.podSelector` (absent: every pod in the namespace).
    pub pod_selector: Selector,
    /// Isolates the selected pods for ingress, from `policyTypes`.
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Whether weft enforces it as written (an Event when not).
    pub acceptance: Acceptance,
}

impl PolicyView {
    /// Whether it isolates the selected pods in this direction.
    pub fn isolates(&self, d: Direction) -> bool {
        match d {
            Direction::Ingress => self.ingress_isolated,
            Direction::Egress => self.egress_isolated,
        }
    }

    pub fn rules(&self, d: Direction) -> &[Rule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Every selector it holds: its `podSelector` first, then its peers'.
    fn selectors(&self) -> impl Iterator<Item = &Selector> {
        let peers = self.ingress.iter().chain(&self.egress).flat_map(|r| &r.peers);
        std::iter::once(&self.pod_selector).chain(peers.flat_map(|p| match p {
            Peer::Pods { namespaces: Namespaces::Matching(ns), pods } => vec![ns, pods],
            Peer::Pods { namespaces: Namespaces::Own, pods } => vec![pods],
            Peer::Block { .. } => vec![],
        }))
    }

    /// The label keys its selectors read (pods' and namespaces' alike):
    /// the labels the watches must keep for it.
    pub fn label_keys(&self) -> BTreeSet<&str> {
        self.selectors().flat_map(Selector::keys).collect()
    }

    /// The first cap it goes past, with its count there.
    pub fn over_cap(&self) -> Option<(Cap, usize)> {
        let rules = self.ingress.len().max(self.egress.len());
        let rules_of = || self.ingress.iter().chain(&self.egress);
        let counts = [
            (Cap::Rules, rules),
            (Cap::Peers, rules_of().map(|r| r.peers.len()).max().unwrap_or(0)),
            (Cap::Ports, rules_of().map(|r| r.ports.len()).max().unwrap_or(0)),
            (Cap::Accepts, rules_of().map(|r| r.peers.len().max(1) * r.ports.len().max(1)).sum()),
            (Cap::LabelKeys, self.label_keys().len()),
            (Cap::SelectorTerms, self.selectors().map(Selector::terms).sum()),
        ];
        counts.into_iter().find(|(cap, n)| *n > cap.limit())
    }

    /// Refuses a policy past a cap, failing closed: the pods it selects stay
    /// isolated in the directions it declares, with no rule. A
    /// `podSelector` alone past a cap selects every pod of the namespace.
    fn refuse_over_cap(&mut self, refused: &mut Vec<Refused>) {
        let Some((cap, n)) = self.over_cap() else { return };
        self.ingress.clear();
        self.egress.clear();
        let mut reason = format!(
            "{n} {} over the cap of {}: refused, the pods it selects stay isolated with no rule",
            cap.label(),
            cap.limit()
        );
        if self.over_cap().is_some() {
            self.pod_selector = Selector::everything();
            reason.push_str(" (its podSelector alone is past the cap: every pod of the namespace)");
        }
        let object = format!("{}/{}", self.namespace, self.name);
        refused.push(Refused { kind: "NetworkPolicy", object, reason, cap: Some(cap) });
    }

    /// Reads a policy; parts weft cannot believe are left out (see the
    /// module header) and reported.
    pub fn from_policy(p: &NetworkPolicy, refused: &mut Vec<Refused>) -> Option<PolicyView> {
        let namespace = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone()?;
        let object = format!("{namespace}/{name}");
        let first = refused.len();
        let mut refuse =
            |reason: String| refused.push(Refused { kind: "NetworkPolicy", object: object.clone(), reason, cap: None });
        let spec = p.spec.clone().unwrap_or_default();
        let pod_selector = match spec.pod_selector.as_ref().map(Selector::from_label_selector).transpose() {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                refuse(format!("spec.podSelector: {e}; the policy is ignored"));
                return None;
            }
        };
        // The API server defaults policyTypes (so it is normally present):
        // Ingress always, Egress when there are egress rules.
        let types = spec.policy_types.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                t.push("Egress".to_string());
            }
            t
        });
        let ingress_rules = spec.ingress.iter().flatten().map(|r| (r.from.as_deref(), r.ports.as_deref()));
        let egress_rules = spec.egress.iter().flatten().map(|r| (r.to.as_deref(), r.ports.as_deref()));
        let ingress = read_rules("ingress", ingress_rules, &mut refuse);
        let egress = read_rules("egress", egress_rules, &mut refuse);
        let mut view = PolicyView {
            namespace,
            name,
            pod_selector,
            ingress_isolated: types.iter().any(|t| t == "Ingress"),
            egress_isolated: types.iter().any(|t| t == "Egress"),
            ingress,
            egress,
            acceptance: Acceptance::default(),
        };
        view.refuse_over_cap(refused);
        let (uid, generation) = (p.metadata.uid.as_deref().unwrap_or_default(), p.metadata.generation.unwrap_or(0));
        view.acceptance = Acceptance::judge(uid, generation, &refused[first..]);
        Some(view)
    }
}

type RawRule<'a> = (Option<&'a [NetworkPolicyPeer]>, Option<&'a [NetworkPolicyPort]>);

fn read_rules<'a>(dir: &str, rules: impl Iterator<Item = RawRule<'a>>, refuse: &mut impl FnMut(String)) -> Vec<Rule> {
    let mut out = Vec::new();
    for (i, (peers, ports)) in rules.enumerate() {
        let (peers, ports) = (peers.unwrap_or_default(), ports.unwrap_or_default());
        let mut rule = Rule::default();
        for (j, peer) in peers.iter().enumerate() {
            match read_peer(peer) {
                Ok(p) if !rule.peers.contains(&p) => rule.peers.push(p),
                Ok(_) => {}
                Err(e) => refuse(format!("{dir}[{i}] peer {j} ignored: {e}")),
            }
        }
        for (j, port) in ports.iter().enumerate() {
            match read_port(port) {
                Ok(p) if !rule.ports.contains(&p) => rule.ports.push(p),
                Ok(_) => {}
                Err(e) => refuse(format!("{dir}[{i}] port {j} ignored: {e}")),
            }
        }
        // An empty list means "all": a rule that lost every entry must go.
        if (!peers.is_empty() && rule.peers.is_empty()) || (!ports.is_empty() && rule.ports.is_empty()) {
            refuse(format!("{dir}[{i}] ignored: none of its peers or ports could be read"));
            continue;
        }
        out.push(rule);
    }
    out
}

fn read_peer(p: &NetworkPolicyPeer) -> Result<Peer, ReadError> {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (Some(block), None, None) => read_block(block),
        (Some(_), _, _) => Err(ReadError::BlockWithSelector),
        (None, None, None) => Err(ReadError::NoPeer),
        (None, ns, pods) => {
            let namespaces = match ns {
                None => Namespaces::Own,
                Some(s) => Namespaces::Matching(Selector::from_label_selector(s)?),
            };
            let pods = pods.as_ref().map(Selector::from_label_selector).transpose()?.unwrap_or_default();
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

pub fn parse_cidr(s: &str) -> Result<IpNetwork, ReadError> {
    if !s.contains('/') {
        return Err(ReadError::NotCidr(bounded(s)));
    }
    let net: IpNetwork = s.parse().map_err(|_| ReadError::NotCidr(bounded(s)))?;
    IpNetwork::new(net.network(), net.prefix()).map_err(|e| ReadError::Cidr(e.to_string()))
}

fn read_block(b: &IPBlock) -> Result<Peer, ReadError> {
    let block = |field| move |e| ReadError::Block { field, source: Box::new(e) };
    let cidr = parse_cidr(&b.cidr).map_err(block("cidr"))?;
    let mut except = Vec::new();
    for e in b.except.iter().flatten() {
        except.push(parse_cidr(e).map_err(block("except"))?);
    }
    except.sort();
    except.dedup();
    Ok(Peer::Block { cidr, except })
}

fn read_port(p: &NetworkPolicyPort) -> Result<Port, ReadError> {
    let protocol = Protocol::parse(p.protocol.as_deref())?;
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n > 0).ok_or(ReadError::PortNumber(n));
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::All,
        (None, Some(_)) => return Err(ReadError::EndPortWithoutPort),
        (Some(IntOrString::Int(n)), None) => PortMatch::Range(number(*n)?, number(*n)?),
        (Some(IntOrString::Int(n)), Some(end)) => {
            let (first, last) = (number(*n)?, number(end)?);
            if last < first {
                return Err(ReadError::EndPortBelow { first, last });
            }
            PortMatch::Range(first, last)
        }
        (Some(IntOrString::String(_)), Some(_)) => return Err(ReadError::EndPortNamed),
        (Some(IntOrString::String(s)), None) => match s.parse::<i32>() {
            // A number in a string is what the API means by it.
            Ok(n) => PortMatch::Range(number(n)?, number(n)?),
            Err(_) if !s.is_empty() && s.len() <= 15 => PortMatch::Named(s.clone()),
            Err(_) => return Err(ReadError::PortName(bounded(s))),
        },
    };
    Ok(Port { protocol, port })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use serde_json::json;

    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn selector(v: serde_json::Value) -> Result<Selector, ReadError> {
        Selector::from_label_selector(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn selectors_follow_the_label_selector_semantics() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let none = labels(&[]);
        for (sel, want) in [
            (json!({}), [true, true, true]),
            (json!({"matchLabels": {"app": "web"}}), [true, false, false]),
            (json!({"matchLabels": {"app": "web", "tier": "back"}}), [false, false, false]),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]}),
                [true, true, false],
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}),
                [false, true, true],
            ),
            (json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}), [true, false, false]),
            (json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}), [false, true, true]),
            (
                json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}),
                [true, false, false],
            ),
        ] {
            let s = selector(sel.clone()).unwrap();
            assert_eq!([s.matches(&web), s.matches(&db), s.matches(&none)], want, "{sel}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused_and_equal_ones_compare_equal() {
        for bad in [
            json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
        ] {
            assert!(selector(bad.clone()).is_err(), "{bad}");
        }
        let req = |vals: &[&str]| LabelSelectorRequirement {
            key: "a".into(),
            operator: "In".into(),
            values: Some(vals.iter().map(|v| v.to_string()).collect()),
        };
        let a = LabelSelector { match_expressions: Some(vec![req(&["x", "y"])]), ..Default::default() };
        let b = LabelSelector { match_expressions: Some(vec![req(&["y", "x", "x"])]), ..Default::default() };
        assert_eq!(Selector::from_label_selector(&a), Selector::from_label_selector(&b));
    }

    fn policy(spec: serde_json::Value) -> (Option<PolicyView>, Vec<String>) {
        let p: NetworkPolicy =
            serde_json::from_value(json!({"metadata": {"namespace": "ns", "name": "p"}, "spec": spec})).unwrap();
        let mut refused = Vec::new();
        let v = PolicyView::from_policy(&p, &mut refused);
        (v, refused.into_iter().map(|r| r.reason).collect())
    }

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
        let types = |spec| {
            let v = policy(spec).0.unwrap();
            (v.ingress_isolated, v.egress_isolated)
        };
        assert_eq!(types(json!({"podSelector": {}})), (true, false));
        assert_eq!(types(json!({"podSelector": {}, "egress": [{}]})), (true, true));
        assert_eq!(types(json!({"podSelector": {}, "egress": []})), (true, false));
        assert_eq!(types(json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]})), (false, true));
        assert_eq!(types(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})), (true, true));
    }

    #[test]
    fn peers_read_with_their_absent_selector_meanings() {
        let (v, refused) = policy(json!({"podSelector": {}, "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"a": "b"}}},
            {"namespaceSelector": {}},
            {"namespaceSelector": {"matchLabels": {"t": "x"}}, "podSelector": {"matchLabels": {"a": "b"}}},
            {"ipBlock": {"cidr": "10.0.0.1/8", "except": ["10.1.0.0/16"]}},
        ]}]}));
        assert!(refused.is_empty(), "{refused:?}");
        let peers = &v.unwrap().ingress[0].peers;
        let ab = Selector { labels: vec![("a".into(), "b".into())], exprs: vec![] };
        assert_eq!(peers[0], Peer::Pods { namespaces: Namespaces::Own, pods: ab.clone() });
        assert_eq!(
            peers[1],
            Peer::Pods { namespaces: Namespaces::Matching(Selector::everything()), pods: Selector::everything() }
        );
        let tx = Selector { labels: vec![("t".into(), "x".into())], exprs: vec![] };
        assert_eq!(peers[2], Peer::Pods { namespaces: Namespaces::Matching(tx), pods: ab });
        assert_eq!(
            peers[3],
            Peer::Block { cidr: "10.0.0.0/8".parse().unwrap(), except: vec!["10.1.0.0/16".parse().unwrap()] },
            "host bits are masked"
        );
    }

    #[test]
    fn hostile_parts_make_a_policy_allow_less_never_more() {
        // One bad peer among good ones: the rule keeps the good ones.
        let (v, refused) = policy(json!({"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["nonsense"]}},
            {"podSelector": {"matchLabels": {"a": "b"}}},
        ]}]}));
        assert_eq!(v.unwrap().ingress[0].peers.len(), 1);
        assert!(refused[0].contains("except"), "{refused:?}");
        // Only bad peers or only bad ports: the whole rule goes (not "allow all").
        for rule in [
            json!({"from": [{"ipBlock": {"cidr": "300.0.0.0/8"}}]}),
            json!({"from": [{}]}),
            json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}),
            json!({"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]}),
            json!({"ports": [{"port": 80, "endPort": 70}]}),
            json!({"ports": [{"port": "http", "endPort": 90}]}),
            json!({"ports": [{"endPort": 90}]}),
            json!({"ports": [{"port": 70000}]}),
            json!({"ports": [{"port": 80, "protocol": "ICMP"}]}),
        ] {
            let (v, refused) = policy(json!({"podSelector": {}, "ingress": [rule.clone()]}));
            let v = v.unwrap();
            assert!(v.ingress.is_empty() && v.ingress_isolated, "{rule}: {v:?}");
            assert!(refused.iter().any(|r| r.contains("ignored")), "{rule}: {refused:?}");
        }
        // A bad podSelector: nothing can be said about what it isolates.
        let (v, refused) =
            policy(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Nope"}]}, "ingress": [{}]}));
        assert!(v.is_none() && refused[0].contains("podSelector"), "{refused:?}");
        // Huge values are bounded in reports.
        let (_, refused) = policy(json!({"podSelector": {}, "ingress": [{"ports": [{"port": "x".repeat(10_000)}]}]}));
        assert!(refused.iter().all(|r| r.len() < 200), "{refused:?}");
    }

    #[test]
    fn ports_read_by_number_name_and_range() {
        let (v, refused) = policy(json!({"podSelector": {}, "egress": [{"ports": [
            {"port": 80}, {"port": "http", "protocol": "TCP"}, {"port": 1000, "endPort": 2000, "protocol": "UDP"},
            {"protocol": "SCTP"}, {"port": "53", "protocol": "UDP"},
        ]}]}));
        assert!(refused.is_empty(), "{refused:?}");
        let ports = &v.unwrap().egress[0].ports;
        assert_eq!(ports[0], Port { protocol: Protocol::Tcp, port: PortMatch::Range(80, 80) });
        assert_eq!(ports[1], Port { protocol: Protocol::Tcp, port: PortMatch::Named("http".into()) });
        assert_eq!(ports[2], Port { protocol: Protocol::Udp, port: PortMatch::Range(1000, 2000) });
        assert_eq!(ports[3], Port { protocol: Protocol::Sctp, port: PortMatch::All });
        assert_eq!(ports[4], Port { protocol: Protocol::Udp, port: PortMatch::Range(53, 53) });
    }

    #[test]
    fn pods_read_ips_named_ports_and_skip_finished_ones() {
        let pod = |phase: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": "p", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": 8080}, {"containerPort": 9000},
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"}, {"name": "bad", "containerPort": 0}]}],
                  "initContainers": [{"name": "sidecar", "ports": [{"name": "metrics", "containerPort": 9090}]}]},
                "status": {"phase": phase, "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}, {"ip": "junk"}]}
            }))
            .unwrap()
        };
        let mut refused = Vec::new();
        let v = PodView::from_pod(&pod("Running"), &mut refused).unwrap();
        assert_eq!(v.ips.len(), 2);
        assert_eq!(v.node, "n1");
        assert_eq!(v.named_port("http", Protocol::Tcp), Some(8080));
        assert_eq!(v.named_port("http", Protocol::Udp), None);
        assert_eq!(v.named_port("dns", Protocol::Udp), Some(53));
        assert_eq!(v.named_port("metrics", Protocol::Tcp), Some(9090));
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(PodView::from_pod(&pod("Succeeded"), &mut refused).is_none());
        assert!(PodView::from_pod(&pod("Failed"), &mut refused).is_none());
    }

    #[test]
    fn a_policy_past_a_cap_is_refused_and_keeps_its_pods_isolated() {
        // 2,000 selectors x 200 named ports: past the peers cap.
        let peers: Vec<_> =
            (0..2000).map(|i| json!({"podSelector": {"matchLabels": {format!("k{i}"): "v"}}})).collect();
        let ports: Vec<_> = (0..200).map(|i| json!({"port": format!("p{i}")})).collect();
        let (v, refused) = policy(json!({"podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress", "Egress"], "ingress": [{"from": peers, "ports": ports}], "egress": [{}]}));
        let v = v.unwrap();
        assert!(v.ingress_isolated && v.egress_isolated && v.ingress.is_empty() && v.egress.is_empty(), "{v:?}");
        assert_eq!(v.pod_selector, selector(json!({"matchLabels": {"app": "db"}})).unwrap(), "the same pods");
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains("2000 peers over the cap of 100"), "{refused:?}");
        assert_eq!(v.label_keys(), BTreeSet::from(["app"]), "the refused rules' keys are not kept");
        // Each cap, just past its limit.
        let many = |n: usize, f: &dyn Fn(usize) -> serde_json::Value| (0..n).map(f).collect::<Vec<_>>();
        let over = |cap: Cap, spec: serde_json::Value| {
            let p: NetworkPolicy =
                serde_json::from_value(json!({"metadata": {"namespace": "ns", "name": "p"}, "spec": spec})).unwrap();
            let mut refused = Vec::new();
            let v = PolicyView::from_policy(&p, &mut refused).unwrap();
            assert_eq!(refused.iter().find_map(|r| r.cap), Some(cap), "{refused:?}");
            assert!(v.ingress.is_empty() && v.ingress_isolated);
        };
        let peer = |i: usize| json!({"podSelector": {"matchLabels": {"app": format!("a{i}")}}});
        let port = |i: usize| json!({"port": i + 1});
        over(Cap::Rules, json!({"podSelector": {}, "ingress": many(101, &|i| json!({"from": [peer(i)]}))}));
        over(Cap::Peers, json!({"podSelector": {}, "ingress": [{"from": many(101, &peer)}]}));
        over(Cap::Ports, json!({"podSelector": {}, "ingress": [{"ports": many(101, &port)}]}));
        over(
            Cap::Accepts,
            json!({"podSelector": {}, "ingress": [{"from": many(40, &peer), "ports": many(40, &port)}]}),
        );
        let key = |i: usize| json!({"podSelector": {"matchLabels": {format!("k{i}"): "v"}}});
        over(Cap::LabelKeys, json!({"podSelector": {}, "ingress": [{"from": many(65, &key)}]}));
        let values: Vec<String> = (0..1001).map(|i| format!("v{i}")).collect();
        over(
            Cap::SelectorTerms,
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": values}]}}]}]}),
        );
        // Within every cap: accepted whole.
        let (v, refused) =
            policy(json!({"podSelector": {}, "ingress": [{"from": many(100, &peer), "ports": many(10, &port)}]}));
        assert!(refused.is_empty() && v.unwrap().ingress[0].peers.len() == 100, "{refused:?}");
    }

    #[test]
    fn a_refused_policy_is_judged_for_its_object_and_generation() {
        let peers: Vec<_> = (0..101).map(|i| json!({"podSelector": {"matchLabels": {"a": format!("{i}")}}})).collect();
        let p: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "p", "uid": "u-1", "generation": 3},
            "spec": {"podSelector": {}, "ingress": [{"from": peers}]}}))
        .unwrap();
        let a = PolicyView::from_policy(&p, &mut Vec::new()).unwrap().acceptance;
        assert_eq!((a.uid.as_str(), a.generation), ("u-1", 3));
        let r = a.refusal.unwrap();
        assert_eq!(r.reason, Refusal::CAP_EXCEEDED);
        assert!(r.message.starts_with("101 peers over the cap of 100: refused"), "{}", r.message);
        let (ok, _) = policy(json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}));
        assert_eq!(ok.unwrap().acceptance.refusal, None, "accepted");
        let (partly, _) =
            policy(json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "XTP"}, {"port": 80}]}]}));
        let r = partly.unwrap().acceptance.refusal.unwrap();
        assert_eq!(r.reason, Refusal::UNREADABLE, "enforced without what weft cannot read: {}", r.message);
    }

    #[test]
    fn a_pod_selector_past_a_cap_isolates_the_whole_namespace() {
        let keys: serde_json::Map<String, serde_json::Value> =
            (0..100).map(|i| (format!("k{i}"), json!("v"))).collect();
        let (v, refused) = policy(json!({"podSelector": {"matchLabels": keys}, "ingress": [{}]}));
        let v = v.unwrap();
        assert!(v.pod_selector.is_everything() && v.ingress.is_empty() && v.ingress_isolated, "{v:?}");
        assert!(refused[0].contains("every pod of the namespace"), "{refused:?}");
    }

    #[test]
    fn views_keep_only_the_labels_a_selector_names() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "p", "labels": {"app": "web", "junk1": "x", "junk2": "y"}},
            "status": {"podIPs": [{"ip": "10.244.1.5"}]}
        }))
        .unwrap();
        let keep = LabelKeys::from(["app".to_string(), "tier".to_string()]);
        let v = PodView::from_pod_keeping(&pod, Some(&keep), &mut Vec::new()).unwrap();
        assert_eq!(v.labels, labels(&[("app", "web")]));
        assert_eq!(PodView::from_pod(&pod, &mut Vec::new()).unwrap().labels.len(), 3, "all without a filter");
        let (p, _) = policy(json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
             "podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]}},
            {"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}));
        assert_eq!(p.unwrap().label_keys(), BTreeSet::from(["app", "team", "tier"]));
    }
}
