//! The policy tracer: why a connection from one pod to another is allowed
//! or dropped. It computes [`super::policy::policy_with_tiers`] for the
//! source's and the destination's node and walks that output the way the
//! kernel walks the rendered rules (verdict map → group chain → Admin tier
//! → NetworkPolicy's policy chains → accept rules → drop, or → Baseline
//! tier → default), so the tracer and the data plane cannot disagree.

use std::fmt;
use std::net::IpAddr;

use super::policy::{PeerMatch, PolicyState, PortsMatch, policy_with_tiers};
use crate::wire_cluster_policy::{Action, ClusterPolicyView, Tier};
use crate::wire_policy::{Direction, NamespaceView, PodView, PolicyView, Protocol};

/// A connection's first packet: source and destination pods, the address
/// family, the destination port and protocol.
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    pub from: &'a PodView,
    pub to: &'a PodView,
    pub ipv6: bool,
    pub protocol: Protocol,
    pub port: u16,
}

/// The verdict of one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No policy selects the pod in this direction: untouched.
    NotIsolated,
    /// The packet never meets this direction's chains.
    NotEnforced(&'static str),
    /// Accepted by the first matching rule.
    Allowed { policy: String, rule: usize, peer: String },
    /// The pod is selected by these policies and none of their rules match.
    Denied { policies: Vec<String> },
    /// A ClusterNetworkPolicy rule decided: Accept or Deny (or, in the
    /// Baseline tier, Pass: to the default, allowed).
    Cluster { tier: Tier, policy: String, rule: usize, name: String, action: Action, peer: String },
    /// ClusterNetworkPolicies select the pod, none decided, and no
    /// NetworkPolicy isolates it: the default.
    Default { passed: Option<String> },
}

impl Verdict {
    pub fn passes(&self) -> bool {
        !matches!(self, Verdict::Denied { .. } | Verdict::Cluster { action: Action::Deny, .. })
    }
}

/// Both directions: a connection passes when both do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub egress: Verdict,
    pub ingress: Verdict,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.egress.passes() && self.ingress.passes()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::NotIsolated => write!(f, "allowed: no NetworkPolicy selects the pod"),
            Verdict::NotEnforced(why) => write!(f, "allowed: {why}"),
            Verdict::Allowed { policy, rule, peer } => write!(f, "allowed by {policy} rule {rule} (peer: {peer})"),
            Verdict::Denied { policies } => {
                write!(f, "DENIED: selected by {} and no rule of them matches", policies.join(", "))
            }
            Verdict::Cluster { tier, policy, rule, name, action, peer } => {
                let said = match (action, tier) {
                    (Action::Deny, _) => "DENIED",
                    (Action::Pass, _) => "allowed (Pass: to the default)",
                    (Action::Accept, _) => "allowed",
                };
                let name = if name.is_empty() { String::new() } else { format!(" ({name})") };
                write!(
                    f,
                    "{said} by {tier} tier ClusterNetworkPolicy {policy} rule {rule}{name} {action} (peer: {peer})"
                )
            }
            Verdict::Default { passed } => match passed {
                Some(by) => write!(f, "allowed: {by}, and no NetworkPolicy or Baseline rule decides (default)"),
                None => write!(f, "allowed: no rule of the ClusterNetworkPolicies selecting the pod matches (default)"),
            },
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} -> {}", self.src, self.dst)?;
        writeln!(f, "  egress:  {}", self.egress)?;
        writeln!(f, "  ingress: {}", self.ingress)?;
        write!(f, "  verdict: {}", if self.allowed() { "ALLOWED" } else { "DENIED" })
    }
}

/// Why a probe cannot be traced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// The pod has no address of the probe's family.
    #[error("{pod} has no IPv{family} address")]
    NoAddress { pod: String, family: u8 },
}

fn address(p: &PodView, ipv6: bool) -> Result<IpAddr, TraceError> {
    p.ips.iter().copied().find(|ip| ip.is_ipv6() == ipv6).ok_or_else(|| TraceError::NoAddress {
        pod: format!("{}/{}", p.namespace, p.name),
        family: if ipv6 { 6 } else { 4 },
    })
}

/// Explains what the data plane does with `probe` under NetworkPolicies alone.
pub fn trace(
    pods: &[PodView],
    namespaces: &[NamespaceView],
    policies: &[PolicyView],
    probe: Probe,
) -> Result<Explanation, TraceError> {
    trace_with_tiers(pods, namespaces, policies, &[], probe)
}

/// Explains what the data plane does with `probe`.
pub fn trace_with_tiers(
    pods: &[PodView],
    namespaces: &[NamespaceView],
    policies: &[PolicyView],
    cluster: &[ClusterPolicyView],
    probe: Probe,
) -> Result<Explanation, TraceError> {
    let (src, dst) = (address(probe.from, probe.ipv6)?, address(probe.to, probe.ipv6)?);
    let egress = if probe.from.host_network {
        Verdict::NotEnforced("the source is on the host network")
    } else if probe.to.host_network && probe.from.node == probe.to.node {
        Verdict::NotEnforced("traffic to the pod's own node is not forwarded, so never filtered")
    } else {
        let state = policy_with_tiers(&probe.from.node, pods, namespaces, policies, cluster);
        walk(&state, Direction::Egress, src, dst, probe)
    };
    let ingress = if probe.to.host_network {
        Verdict::NotEnforced("the destination is on the host network")
    } else if probe.from.host_network && probe.from.node == probe.to.node {
        Verdict::NotEnforced("traffic from the pod's own node is always allowed")
    } else {
        let state = policy_with_tiers(&probe.to.node, pods, namespaces, policies, cluster);
        walk(&state, Direction::Ingress, dst, src, probe)
    };
    Ok(Explanation { src, dst, egress, ingress })
}

/// Follows the verdict map of `direction` for the local pod `own` talking
/// to `other`.
pub fn walk(state: &PolicyState, direction: Direction, own: IpAddr, other: IpAddr, probe: Probe) -> Verdict {
    let map = match direction {
        Direction::Ingress => &state.ingress,
        Direction::Egress => &state.egress,
    };
    let Some(group) = map.get(&own).and_then(|g| state.groups.get(g)) else { return Verdict::NotIsolated };
    let dst = if direction == Direction::Ingress { own } else { other };
    let matched = |peer: &PeerMatch, ports: &PortsMatch| matches(state, peer, ports, other, dst, probe);
    let mut passed = None;
    let tier = group.admin.as_ref().and_then(|t| state.tiers.get(t)).map(Vec::as_slice).unwrap_or_default();
    'admin: for chain in tier.iter().filter_map(|c| state.cluster_chains.get(c)) {
        for m in &chain.rules {
            let Some(peer) = matched(&m.peer, &m.ports) else { continue };
            if m.action == Action::Pass {
                passed = Some(format!("Admin tier ClusterNetworkPolicy {} rule {} passed", chain.policy, m.rule));
                break 'admin;
            }
            let (policy, name) = (chain.policy.clone(), m.name.clone());
            return Verdict::Cluster { tier: Tier::Admin, policy, rule: m.rule, name, action: m.action, peer };
        }
    }
    if let Some(policies) = &group.policies {
        for chain in policies.iter().filter_map(|c| state.chains.get(c)) {
            for allow in &chain.allows {
                if let Some(peer) = matched(&allow.peer, &allow.ports) {
                    return Verdict::Allowed { policy: chain.policy.clone(), rule: allow.rule, peer };
                }
            }
        }
        return Verdict::Denied {
            policies: policies.iter().filter_map(|c| state.chains.get(c)).map(|c| c.policy.clone()).collect(),
        };
    }
    for chain in group.baseline.iter().filter_map(|c| state.cluster_chains.get(c)) {
        for m in &chain.rules {
            if let Some(peer) = matched(&m.peer, &m.ports) {
                let (policy, name) = (chain.policy.clone(), m.name.clone());
                return Verdict::Cluster { tier: Tier::Baseline, policy, rule: m.rule, name, action: m.action, peer };
            }
        }
    }
    Verdict::Default { passed }
}

/// What the peer matched (for people) if a rule with `peer` and `ports`
/// matches a packet to `dst` whose other side is `other`.
fn matches(
    state: &PolicyState,
    peer: &PeerMatch,
    ports: &PortsMatch,
    other: IpAddr,
    dst: IpAddr,
    probe: Probe,
) -> Option<String> {
    let peer = match peer {
        PeerMatch::Any => Some("any".to_string()),
        PeerMatch::Set(s) => state.sets.get(s).filter(|set| set.contains(other)).map(|set| set.about.clone()),
    };
    let ports = match ports {
        PortsMatch::Any => true,
        PortsMatch::Protocol(p) => *p == probe.protocol,
        PortsMatch::Ranges(p, r) => *p == probe.protocol && r.iter().any(|(a, b)| (*a..=*b).contains(&probe.port)),
        PortsMatch::Named(p, s) => {
            *p == probe.protocol && state.port_sets.get(s).is_some_and(|set| set.elements.contains(&(dst, probe.port)))
        }
    };
    peer.filter(|_| ports)
}

#[cfg(test)]
pub mod oracle {
    //! Pieces of the API semantics written out directly, shared by the
    //! tests that check the desired state against them.

    use super::{Direction, PodView, Probe};
    use crate::wire_policy::{Port, PortMatch};

    /// Whether a rule's `ports` (empty: all) admit the probe.
    pub fn ports_ok(ports: &[Port], p: Probe) -> bool {
        ports.is_empty()
            || ports.iter().any(|x| {
                x.protocol == p.protocol
                    && match &x.port {
                        PortMatch::All => true,
                        PortMatch::Range(a, b) => (*a..=*b).contains(&p.port),
                        PortMatch::Named(n) => !p.to.host_network && p.to.named_port(n, p.protocol) == Some(p.port),
                    }
            })
    }

    /// Whether the connection passes, given each side's verdict
    /// (`side_ok(direction, own pod, peer)`): host traffic of a pod's own
    /// node never meets the policy chains.
    pub fn connection_ok(p: Probe, side_ok: impl Fn(Direction, &PodView, &PodView) -> bool) -> bool {
        let same_node = p.from.node == p.to.node;
        let egress =
            p.from.host_network || (p.to.host_network && same_node) || side_ok(Direction::Egress, p.from, p.to);
        let ingress =
            p.to.host_network || (p.from.host_network && same_node) || side_ok(Direction::Ingress, p.to, p.from);
        egress && ingress
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::policy::fixtures::*;
    use crate::wire_policy::{Peer, Protocol::*, Rule};

    /// A cluster with every selector form, ipBlock with except, named ports
    /// with different numbers per pod, endPort, additive policies, egress
    /// and ingress together, a hostNetwork pod and pods in no policy.
    fn cluster() -> (Vec<PodView>, Vec<NamespaceView>, Vec<PolicyView>) {
        let mut host = pod("kube-system", "host", "node1", 1, &[("app", "web")]);
        host.host_network = true;
        host.ips = vec!["198.51.100.11".parse().unwrap(), "2001:db8:a::11".parse().unwrap()];
        let pods = vec![
            with_port(pod("prod", "web1", "node1", 10, &[("app", "web")]), "http", Tcp, 8080),
            with_port(pod("prod", "web2", "node2", 11, &[("app", "web")]), "http", Tcp, 9090),
            with_port(pod("prod", "db", "node1", 12, &[("app", "db")]), "pg", Tcp, 5432),
            pod("prod", "cli", "node2", 13, &[("role", "cli")]),
            pod("dev", "cli", "node1", 14, &[("role", "cli")]),
            with_port(pod("dev", "tool", "node2", 15, &[]), "dns", Udp, 53),
            pod("other", "x", "node1", 16, &[("app", "web")]),
            // Labels that match a podSelector, in a namespace it does not look in.
            pod("staging", "cli", "node2", 17, &[("role", "cli")]),
            pod("staging", "web", "node1", 18, &[("app", "web")]),
            host,
        ];
        let namespaces = vec![
            ns("prod", &[("team", "a")]),
            ns("dev", &[("team", "b")]),
            ns("other", &[]),
            ns("staging", &[("team", "c")]),
            ns("kube-system", &[]),
        ];
        let policies = vec![
            ingress(netpol("prod", "deny-all-ingress", sel(&[])), vec![]),
            ingress(
                netpol("prod", "web-from-cli", sel(&[("app", "web")])),
                vec![rule(vec![pods_in_own(sel(&[("role", "cli")]))], vec![named(Tcp, "http")])],
            ),
            ingress(
                netpol("prod", "db-from-web", sel(&[("app", "db")])),
                vec![rule(vec![pods_in_own(sel(&[("app", "web")]))], vec![tcp(5432), port_range(Tcp, 6000, 6010)])],
            ),
            ingress(
                netpol("prod", "from-team-b", sel(&[("app", "web")])),
                vec![rule(vec![pods_in(sel(&[("team", "b")]), sel(&[]))], vec![all_of(Tcp)])],
            ),
            egress(
                netpol("dev", "egress-limited", sel(&[("role", "cli")])),
                vec![
                    rule(vec![block("10.244.0.0/16", &["10.244.2.0/24"])], vec![port_range(Udp, 53, 53), tcp(8080)]),
                    rule(vec![pods_in(sel(&[("team", "a")]), sel(&[("app", "db")]))], vec![]),
                ],
            ),
            egress(netpol("other", "egress-deny", sel(&[])), vec![]),
            ingress(
                netpol("prod", "db-from-v6", sel(&[("app", "db")])),
                vec![rule(vec![block("fd00:10:244:2::/64", &[])], vec![])],
            ),
        ];
        (pods, namespaces, policies)
    }

    fn find<'a>(pods: &'a [PodView], id: &str) -> &'a PodView {
        pods.iter().find(|p| format!("{}/{}", p.namespace, p.name) == id).unwrap()
    }

    #[test]
    fn the_tracer_explains_each_selector_form_as_the_api_means_it() {
        let (pods, nss, pols) = cluster();
        // (from, to, IPv6, protocol, port, allowed, the explanation mentions)
        let cases = [
            ("prod/cli", "prod/web1", false, Tcp, 8080, true, "prod/web-from-cli rule 0"),
            ("prod/cli", "prod/web1", false, Tcp, 9090, false, "prod/deny-all-ingress"),
            ("prod/cli", "prod/web2", true, Tcp, 9090, true, "named port: 9090 on web2"),
            ("prod/cli", "prod/web2", false, Tcp, 8080, false, "prod/from-team-b"),
            ("dev/cli", "prod/web1", false, Tcp, 8080, true, "prod/from-team-b"),
            ("dev/cli", "prod/web1", false, Tcp, 1234, false, "dev/egress-limited"),
            ("dev/cli", "prod/web1", true, Tcp, 8080, false, "the ipBlock is IPv4 only"),
            ("dev/cli", "prod/web2", false, Tcp, 8080, false, "10.244.2.0/24 is excepted"),
            ("dev/cli", "prod/db", false, Tcp, 5432, false, "egress allowed, ingress only from app=web"),
            ("prod/web1", "prod/db", false, Tcp, 5432, true, "prod/db-from-web"),
            ("prod/web2", "prod/db", true, Tcp, 6005, true, "endPort range"),
            ("prod/web2", "prod/db", false, Tcp, 6011, false, "past endPort"),
            ("prod/web1", "prod/db", false, Udp, 5432, false, "wrong protocol"),
            ("prod/cli", "prod/db", true, Udp, 9, true, "prod/db-from-v6"),
            ("prod/cli", "prod/db", false, Tcp, 80, false, "the v6 block does not cover v4"),
            ("other/x", "prod/web1", false, Tcp, 8080, false, "other/egress-deny"),
            ("staging/cli", "prod/web1", false, Tcp, 8080, false, "a podSelector alone looks in its own namespace"),
            ("staging/web", "prod/db", true, Tcp, 5432, false, "prod/db-from-web is for prod's app=web"),
            ("other/x", "kube-system/host", false, Tcp, 10250, true, "to the own node: not forwarded"),
            ("kube-system/host", "prod/web1", false, Tcp, 1, true, "own node always allowed"),
            ("kube-system/host", "prod/web2", false, Tcp, 8080, false, "another node's host is no pod peer"),
            ("dev/tool", "prod/cli", false, Tcp, 80, false, "deny-all selects every prod pod"),
            ("dev/tool", "dev/cli", true, Tcp, 80, true, "no policy selects either side"),
            ("prod/web1", "dev/tool", false, Udp, 53, true, "untouched"),
        ];
        for (from, to, ipv6, protocol, port, want, why) in cases {
            let probe = Probe { from: find(&pods, from), to: find(&pods, to), ipv6, protocol, port };
            let e = trace(&pods, &nss, &pols, probe).unwrap();
            assert_eq!(e.allowed(), want, "{from} -> {to} {port}/{protocol} v6={ipv6} ({why}):\n{e}");
            if let Some(p) = why.split_whitespace().find(|w| w.contains('/') && w.starts_with(['p', 'd', 'o'])) {
                assert!(e.to_string().contains(p), "{why}: {e}");
            }
        }
    }

    /// The API's semantics written out directly over the policies, with no
    /// sets, groups or chains: what the desired state must agree with.
    fn oracle(nss: &[NamespaceView], pols: &[PolicyView], p: Probe) -> bool {
        let ip = |pod: &PodView| pod.ips.iter().copied().find(|i| i.is_ipv6() == p.ipv6).unwrap();
        let rule_ok = |pol: &PolicyView, r: &Rule, peer: &PodView| {
            let peer_ok = r.peers.is_empty()
                || r.peers.iter().any(|x| match x {
                    Peer::Pods { namespaces, pods } => {
                        let ns_ok = match namespaces {
                            crate::wire_policy::Namespaces::Own => peer.namespace == pol.namespace,
                            crate::wire_policy::Namespaces::Matching(s) => {
                                nss.iter().any(|n| n.name == peer.namespace && s.matches(&n.labels))
                            }
                        };
                        !peer.host_network && ns_ok && pods.matches(&peer.labels)
                    }
                    Peer::Block { cidr, except } => {
                        cidr.contains(ip(peer)) && !except.iter().any(|e| e.contains(ip(peer)))
                    }
                });
            peer_ok && oracle::ports_ok(&r.ports, p)
        };
        let side_ok = |d: Direction, own: &PodView, peer: &PodView| {
            let selecting: Vec<&PolicyView> = pols
                .iter()
                .filter(|x| x.isolates(d) && x.namespace == own.namespace && x.pod_selector.matches(&own.labels))
                .collect();
            selecting.is_empty() || selecting.iter().any(|x| x.rules(d).iter().any(|r| rule_ok(x, r, peer)))
        };
        oracle::connection_ok(p, side_ok)
    }

    #[test]
    fn the_desired_state_agrees_with_the_api_semantics_on_every_pair() {
        let (pods, nss, pols) = cluster();
        let probes =
            [(Tcp, 8080), (Tcp, 9090), (Tcp, 5432), (Tcp, 6005), (Tcp, 6011), (Udp, 53), (Udp, 8080), (Tcp, 1)];
        let mut checked = (0, 0);
        for from in &pods {
            for to in pods.iter().filter(|t| *t != from) {
                for ipv6 in [false, true] {
                    for (protocol, port) in probes {
                        let probe = Probe { from, to, ipv6, protocol, port };
                        let e = trace(&pods, &nss, &pols, probe).unwrap();
                        assert_eq!(e.allowed(), oracle(&nss, &pols, probe), "{probe:?}\n{e}");
                        if e.allowed() { checked.0 += 1 } else { checked.1 += 1 }
                    }
                }
            }
        }
        assert!(checked.0 > 100 && checked.1 > 100, "both verdicts are exercised: {checked:?}");
    }
}
