//! policy-bench: one weft-agent enforcing NetworkPolicy against a real
//! kube-apiserver holding thousands of Pods, Namespaces and
//! NetworkPolicies (created through the API, no kubelets: Pods carry
//! `spec.nodeName`, and their `status.podIPs` are set through the status
//! subresource), in network namespaces this program creates. Measured:
//! - agent start -> the policy table complete: every local pod's verdict
//!   map elements committed (then checked against `nft -j list map`);
//! - per change, API request -> the kernel's commit of the matching
//!   element or rule, p50/p99/max: (a) a remote pod relabelled into and
//!   out of a peer set; (b) a local pod's podIPs published -> its verdict
//!   map element, and the pod deleted -> element gone; (c) a policy
//!   selecting local pods created and deleted (its chains added and removed);
//!   (d) a namespace relabelled into and out of a namespaceSelector;
//!   (e) with `--cluster-policies M` (the ClusterNetworkPolicy CRD
//!   installed from the chart, M policies of five shapes in both tiers),
//!   an Admin policy's Deny rule flipped to Accept and back -> the commit
//!   holding the rule with its new action;
//! - the agent's peak RSS and its CPU while idle.
//!
//! `--hostile-pods N` adds N Pods no node can take, each with ~1.5 MB of
//! labels, and `--hostile-policy` one NetworkPolicy with 2,000 selectors ×
//! 200 named ports, both created before the agent starts (so its first
//! list reads them): the report then says whether the agent refused the
//! policy (`weft_policy_refused_total`) and still ran to the end.
//!
//! Kernel arrival is read from nftables' own change notifications (a
//! NETLINK_NETFILTER listener in the node namespace, [`nft_events`]): each
//! commit is stamped when its first notification arrives, so there is no
//! polling interval to bound the resolution; what remains is scheduling
//! delay of the listener thread (sub-millisecond on an idle core).
//!
//! The workload is generated from a model in this file (namespaces with
//! team/env labels, pods with app/role/version labels and named container
//! ports, ten policy shapes), which also says which local pods some policy
//! selects and which label changes move a pod into a peer set that exists
//! on this node, so each sample is known to change the kernel.
//!
//! Addresses: 10.0.0.0/8 and fd00:10::/48 for pods, one /24 and /64 per
//! fake node (node 0 is the agent's); the benchmarking range 198.18.0.0/15
//! for the underlay. All of it exists only inside the namespaces.
//!
//!   policy-bench --agent WEFT_AGENT --k8s-bin DIR [--pods P] [--policies Q]
//!                [--cluster-policies M] [--namespaces N] [--samples K]
//!                [--idle-seconds S] [--hostile-pods N] [--hostile-policy] [--json]

mod nft_events;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use libweft::netns::NetNs;
use libweft::testutil::TestNs;
use libweft::testutil::control_plane::{ControlPlane, Proc};
use serde_json::{Value, json};

use weft_bench::agent_process::{AgentConfig, METRICS_ADDRESS, pass_seconds, proc_stats};
use weft_bench::api::{
    CNP_CRD_TEMPLATE, client, cluster_policies, cluster_policy, create_namespace, create_running_pod,
    install_cluster_policy_crd,
};

use crate::nft_events::{Change, Transaction};
use weft_bench::cli::seconds;
use weft_bench::results::{self, MetricRow, PolicyRun};
use weft_bench::stats::percentile;

const NODE_IP: &str = "198.18.0.1";
const CP_IP: &str = "198.18.0.2";
const OWN: &str = "bench-own";
const TABLE: &str = "weft-policy";
/// Bounds the cold start, so a broken agent cannot hang the benchmark.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(300);
/// Bounds one change.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// API requests in flight while filling the API.
const PARALLEL: usize = 32;

const ROLES: [&str; 5] = ["frontend", "backend", "db", "cache", "worker"];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];

/// policy-bench's command line.
#[derive(Parser)]
#[command(name = "policy-bench", about = "Measures weft-agent's NetworkPolicy enforcement against a real API server")]
struct Args {
    /// The weft-agent binary to measure.
    #[arg(long, value_name = "WEFT_AGENT")]
    agent: PathBuf,
    /// The directory holding etcd and kube-apiserver.
    #[arg(long, value_name = "DIR")]
    k8s_bin: PathBuf,
    /// Pods in the API server (at least --namespaces, at most 1000000).
    #[arg(long, value_name = "P", default_value_t = 10_000)]
    pods: usize,
    /// NetworkPolicies in the API server.
    #[arg(long, value_name = "Q", default_value_t = 1_000)]
    policies: usize,
    /// ClusterNetworkPolicies in the API server (0: the CRD is not installed).
    #[arg(long, value_name = "M", default_value_t = 100, value_parser = RangedU64ValueParser::<usize>::new().range(0..=1000))]
    cluster_policies: usize,
    /// Namespaces the pods and policies spread over.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1000))]
    namespaces: usize,
    /// Single changes measured per kind (each adds pods to the agent's /24).
    #[arg(long, value_name = "K", default_value_t = 50, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100))]
    samples: usize,
    /// Idle time measured after the changes, in seconds.
    #[arg(long = "idle-seconds", value_name = "S", default_value = "30", value_parser = seconds)]
    idle: Duration,
    /// Print the results as JSON rather than text.
    #[arg(long)]
    json: bool,
    /// Pods no node can take, each with ~1.5 MB of labels.
    #[arg(long, value_name = "N", default_value_t = 0)]
    hostile_pods: usize,
    /// One NetworkPolicy with 2,000 selectors × 200 named ports.
    #[arg(long)]
    hostile_policy: bool,
}

impl Args {
    /// Parses the command line; exits with a usage error on bad input.
    fn parse_checked() -> Args {
        let a = Args::parse();
        if !(a.namespaces..=1_000_000).contains(&a.pods) {
            Args::command()
                .error(ErrorKind::ValueValidation, "--pods must be at least --namespaces and at most 1000000")
                .exit();
        }
        a
    }
}

// ---------------------------------------------------------------- the model

type Labels = BTreeMap<String, String>;

/// A label selector as generated here: matchLabels and `In` expressions.
#[derive(Clone, Default)]
struct Sel {
    labels: Vec<(&'static str, String)>,
    any_in: Vec<(&'static str, Vec<&'static str>)>,
}

impl Sel {
    fn eq(k: &'static str, v: impl Into<String>) -> Sel {
        Sel { labels: vec![(k, v.into())], any_in: vec![] }
    }

    fn matches(&self, l: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| l.get(*k) == Some(v))
            && self.any_in.iter().all(|(k, vs)| l.get(*k).is_some_and(|v| vs.contains(&v.as_str())))
    }

    fn json(&self) -> Value {
        let labels: serde_json::Map<String, Value> =
            self.labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let exprs: Vec<Value> =
            self.any_in.iter().map(|(k, vs)| json!({"key": k, "operator": "In", "values": vs})).collect();
        json!({"matchLabels": labels, "matchExpressions": exprs})
    }
}

#[derive(Clone)]
enum PeerM {
    /// `ns: None`: the policy's own namespace.
    Pods {
        ns: Option<Sel>,
        pods: Sel,
    },
    Block(&'static str, Vec<String>),
}

#[derive(Clone)]
struct RuleM {
    peers: Vec<PeerM>,
    ports: Vec<Value>,
}

#[derive(Clone)]
struct PolicyM {
    ns: usize,
    name: String,
    pod_sel: Sel,
    ingress: Option<Vec<RuleM>>,
    egress: Option<Vec<RuleM>>,
}

#[derive(Clone)]
struct PodM {
    ns: usize,
    name: String,
    node: usize,
    labels: Labels,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    ports: Vec<Value>,
}

/// A ClusterNetworkPolicy of the model: its subject (pods matching
/// `pods`, every pod when `None`, in namespaces matching `ns`), whether
/// it has rules in each direction, and its spec.
#[derive(Clone)]
struct ClusterM {
    name: String,
    ns: Sel,
    pods: Option<Sel>,
    ingress: bool,
    egress: bool,
    spec: Value,
    /// An Admin policy whose ingress rule 0, named `flip`, is a Deny:
    /// what change (e) flips to Accept and back.
    flippable: bool,
}

impl ClusterM {
    fn selects(&self, ns_labels: &Labels, labels: &Labels) -> bool {
        self.ns.matches(ns_labels) && self.pods.as_ref().is_none_or(|p| p.matches(labels))
    }
}

struct World {
    ns_labels: Vec<Labels>,
    pods: Vec<PodM>,
    policies: Vec<PolicyM>,
    cluster: Vec<ClusterM>,
    /// Pods placed on each node so far (the next address).
    per_node: Vec<usize>,
}

fn ns_name(i: usize) -> String {
    format!("ns-{i:03}")
}

fn pod_addrs(node: usize, k: usize) -> (Ipv4Addr, Ipv6Addr) {
    let v4 = Ipv4Addr::new(10, (node >> 8) as u8, (node & 0xff) as u8, (k + 2) as u8);
    let v6 = Ipv6Addr::new(0xfd00, 0x10, 0, node as u16, 0, 0, 0, (k + 2) as u16);
    (v4, v6)
}

fn tcp(port: u16) -> Value {
    json!({"protocol": "TCP", "port": port})
}

impl World {
    fn new(n_ns: usize, n_pods: usize, n_pol: usize, n_cluster: usize) -> World {
        // About 100 pods a node, as on a busy real node; node 0 is the agent's.
        let nodes = n_pods.div_ceil(100).max(2);
        let ns_labels = (0..n_ns)
            .map(|i| {
                [("team", format!("team-{}", i % 10)), ("env", ENVS[i % 3].to_string())]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect()
            })
            .collect();
        let cluster = (0..n_cluster).map(cluster_shape).collect();
        let mut w = World { ns_labels, pods: Vec::new(), policies: Vec::new(), cluster, per_node: vec![0; nodes] };
        for j in 0..n_pods {
            let (ns, m) = (j % n_ns, j / n_ns);
            // Pod m of each namespace on node m mod nodes: one pod of every namespace is local.
            let node = m % nodes;
            let labels = pod_labels(ns, m);
            w.add_pod(ns, format!("p-{j:06}"), node, labels);
        }
        for q in 0..n_pol {
            let (ns, k) = (q % n_ns, q / n_ns);
            w.policies.push(policy_shape(ns, k, (k + ns) % 10, format!("pol-{q:05}")));
        }
        w
    }

    fn add_pod(&mut self, ns: usize, name: String, node: usize, labels: Labels) -> usize {
        let k = self.per_node[node];
        self.per_node[node] += 1;
        let (v4, v6) = pod_addrs(node, k);
        let app: usize = labels.get("app").and_then(|a| a.trim_start_matches("app-").parse().ok()).unwrap_or(0);
        let mut ports = vec![
            json!({"name": "http", "containerPort": 8000 + app, "protocol": "TCP"}),
            json!({"name": "metrics", "containerPort": 9090, "protocol": "TCP"}),
        ];
        if labels.get("role").is_some_and(|r| r == "db") {
            ports.push(json!({"containerPort": 5432, "protocol": "TCP"}));
        }
        if k.is_multiple_of(4) {
            ports.push(json!({"name": "dns", "containerPort": 53, "protocol": "UDP"}));
        }
        self.pods.push(PodM { ns, name, node, labels, v4, v6, ports });
        self.pods.len() - 1
    }

    fn local(&self) -> impl Iterator<Item = &PodM> {
        self.pods.iter().filter(|p| p.node == 0)
    }

    /// Whether some policy (NetworkPolicy in `ns`, or ClusterNetworkPolicy)
    /// selects a pod with `labels` there, per direction.
    fn selected(&self, ns: usize, labels: &Labels) -> (bool, bool) {
        let mut r = (false, false);
        for p in self.policies.iter().filter(|p| p.ns == ns && p.pod_sel.matches(labels)) {
            r.0 |= p.ingress.is_some();
            r.1 |= p.egress.is_some();
        }
        for c in self.cluster.iter().filter(|c| c.selects(&self.ns_labels[ns], labels)) {
            r.0 |= c.ingress;
            r.1 |= c.egress;
        }
        r
    }

    /// Local pods' addresses expected in the ingress and egress maps.
    fn expected_maps(&self) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
        let (mut i, mut e) = (BTreeSet::new(), BTreeSet::new());
        for p in self.local() {
            let (si, se) = self.selected(p.ns, &p.labels);
            for (yes, set) in [(si, &mut i), (se, &mut e)] {
                if yes {
                    set.insert(IpAddr::V4(p.v4));
                    set.insert(IpAddr::V6(p.v6));
                }
            }
        }
        (i, e)
    }

    /// The pod peers whose address sets exist on this node: those of the
    /// rules, in a direction, of policies selecting a local pod in it.
    fn live_peers(&self) -> Vec<(usize, Option<Sel>, Sel)> {
        let mut out = Vec::new();
        for p in &self.policies {
            for (rules, ingress) in [(&p.ingress, true), (&p.egress, false)] {
                let Some(rules) = rules else { continue };
                let used = self.local().any(|l| {
                    let s = self.selected(l.ns, &l.labels);
                    l.ns == p.ns && p.pod_sel.matches(&l.labels) && if ingress { s.0 } else { s.1 }
                });
                if !used {
                    continue;
                }
                for r in rules {
                    for peer in &r.peers {
                        if let PeerM::Pods { ns, pods } = peer {
                            out.push((p.ns, ns.clone(), pods.clone()));
                        }
                    }
                }
            }
        }
        out
    }

    /// Whether a pod in `ns` (labelled `ns_labels`) with `labels` is in
    /// some live peer set.
    fn in_peer(live: &[(usize, Option<Sel>, Sel)], ns: usize, ns_labels: &Labels, labels: &Labels) -> Vec<usize> {
        live.iter()
            .enumerate()
            .filter(|(_, (pol_ns, nsel, pods))| {
                let ns_ok = match nsel {
                    None => *pol_ns == ns,
                    Some(s) => s.matches(ns_labels),
                };
                ns_ok && pods.matches(labels)
            })
            .map(|(i, _)| i)
            .collect()
    }
}

fn pod_labels(ns: usize, m: usize) -> Labels {
    [
        ("app", format!("app-{}", m % 8)),
        ("role", ROLES[(m + ns) % ROLES.len()].to_string()),
        ("version", format!("v{}", m % 2 + 1)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Ten shapes of policy seen in real clusters; `k` varies their selectors.
fn policy_shape(ns: usize, k: usize, shape: usize, name: String) -> PolicyM {
    let (pod_sel, ingress, egress, tag) =
        if [1, 5, 8, 9].contains(&shape) { egress_shape(ns, k, shape) } else { ingress_shape(ns, k, shape) };
    PolicyM { ns, name: format!("{name}-{tag}"), pod_sel, ingress, egress }
}

/// A policy's pod selector, ingress and egress rules (none: that
/// direction is not isolated), and the tag of its name.
type Shape = (Sel, Option<Vec<RuleM>>, Option<Vec<RuleM>>, &'static str);

fn own(pods: Sel) -> PeerM {
    PeerM::Pods { ns: None, pods }
}

fn rule(peers: Vec<PeerM>, ports: Vec<Value>) -> RuleM {
    RuleM { peers, ports }
}

/// The shapes that isolate ingress only: 0, 2, 3, 4, 6 and 7.
fn ingress_shape(ns: usize, k: usize, shape: usize) -> Shape {
    let app = Sel::eq("app", format!("app-{}", k % 8));
    match shape {
        0 => (Sel::default(), Some(vec![]), None, "default-deny"),
        2 => (
            app,
            Some(vec![rule(vec![own(Sel::eq("role", "frontend"))], vec![json!({"port": "http"})])]),
            None,
            "from-frontend",
        ),
        3 => (
            Sel::eq("role", "backend"),
            Some(vec![rule(
                vec![PeerM::Pods {
                    ns: Some(Sel::eq("team", format!("team-{}", (ns + k) % 10))),
                    pods: Sel::eq("role", "frontend"),
                }],
                vec![json!({"protocol": "TCP", "port": 8080, "endPort": 8090})],
            )]),
            None,
            "cross-team",
        ),
        4 => (
            app,
            Some(vec![rule(
                vec![
                    PeerM::Block("10.0.0.0/8", vec![format!("10.{}.0.0/16", k % 256)]),
                    PeerM::Block("fd00:10::/48", vec![format!("fd00:10:0:{k:x}::/64")]),
                ],
                vec![tcp(443)],
            )]),
            None,
            "ipblock",
        ),
        6 => (
            Sel { labels: vec![], any_in: vec![("role", vec!["backend", "worker"])] },
            Some(vec![rule(
                vec![PeerM::Pods {
                    ns: Some(Sel { labels: vec![], any_in: vec![("env", vec!["prod", "staging"])] }),
                    pods: Sel::default(),
                }],
                vec![],
            )]),
            None,
            "from-prod-staging",
        ),
        _ => (
            Sel::default(),
            Some(vec![rule(
                vec![PeerM::Pods { ns: Some(Sel::default()), pods: Sel::eq("app", "app-7") }],
                vec![json!({"port": "metrics"})],
            )]),
            None,
            "monitoring",
        ),
    }
}

/// The shapes with egress rules: 1, 5, 8 and 9.
fn egress_shape(ns: usize, k: usize, shape: usize) -> Shape {
    let app = Sel::eq("app", format!("app-{}", k % 8));
    match shape {
        1 => (
            Sel::default(),
            None,
            Some(vec![
                rule(
                    vec![PeerM::Pods {
                        ns: Some(Sel::eq("kubernetes.io/metadata.name", "kube-system")),
                        pods: Sel::eq("k8s-app", "kube-dns"),
                    }],
                    vec![json!({"protocol": "UDP", "port": 53}), tcp(53)],
                ),
                rule(vec![own(Sel::eq("role", "db"))], vec![tcp(5432)]),
            ]),
            "egress-dns-db",
        ),
        5 => (
            Sel::eq("role", "frontend"),
            None,
            Some(vec![rule(
                vec![
                    PeerM::Block("0.0.0.0/0", vec!["10.0.0.0/8".into()]),
                    PeerM::Block("::/0", vec!["fd00::/8".into()]),
                ],
                vec![tcp(443)],
            )]),
            "egress-internet",
        ),
        8 => (
            app,
            None,
            Some(vec![rule(
                vec![PeerM::Pods {
                    ns: Some(Sel::eq("team", format!("team-{}", ns % 10))),
                    pods: Sel::eq("role", "db"),
                }],
                vec![tcp(5432), json!({"port": "metrics"})],
            )]),
            "egress-team-db",
        ),
        _ => (
            Sel::eq("role", "db"),
            Some(vec![rule(vec![own(Sel::eq("role", "backend"))], vec![tcp(5432)])]),
            Some(vec![]),
            "db-lockdown",
        ),
    }
}

/// ClusterNetworkPolicy `i` (`cnp-<i>`), one of five shapes an operator
/// writes, over team `(i / 5) % 10`'s namespaces; priority `i`, so no two
/// policies tie:
/// 0. Admin: Deny SSH from the next team's namespaces (rule `flip`);
/// 1. Admin: Deny egress to the metadata address from prod databases;
/// 2. Admin: Accept the team's monitoring pods on the metrics port (9090;
///    named ports are only in the experimental channel's CRD);
/// 3. Admin: Pass the team's own traffic into staging namespaces to
///    NetworkPolicy;
/// 4. Baseline: Deny ingress from every namespace (a default NetworkPolicy
///    may open), and Accept egress to cluster DNS.
fn cluster_shape(i: usize) -> ClusterM {
    let team = |k: usize| Sel::eq("team", format!("team-{}", k % 10));
    let k = i / 5;
    let any_ns = || json!({"namespaces": Sel::default().json()});
    let (tier, ns, pods, ingress, egress) = match i % 5 {
        0 => (
            "Admin",
            team(k),
            None,
            json!([{"name": "flip", "action": "Deny", "from": [{"namespaces": team(k + 1).json()}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 22}}}]}]),
            json!([]),
        ),
        1 => (
            "Admin",
            Sel::eq("env", "prod"),
            Some(Sel::eq("role", "db")),
            json!([]),
            json!([{"name": "no-metadata", "action": "Deny",
                    "to": [{"networks": ["169.254.169.254/32", "fd00:ec2::254/128"]}]}]),
        ),
        2 => (
            "Admin",
            team(k),
            None,
            json!([{"name": "monitoring", "action": "Accept",
                    "from": [{"pods": {"namespaceSelector": team(k).json(), "podSelector": Sel::eq("app", "app-7").json()}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 9090}}}]}]),
            json!([]),
        ),
        3 => (
            "Admin",
            Sel { labels: vec![], any_in: vec![("env", vec!["staging"])] },
            None,
            json!([{"name": "to-netpol", "action": "Pass", "from": [{"namespaces": team(k).json()}]}]),
            json!([]),
        ),
        _ => (
            "Baseline",
            team(k),
            None,
            json!([{"name": "default-deny", "action": "Deny", "from": [any_ns()]}]),
            json!([{"name": "dns", "action": "Accept",
                    "to": [{"pods": {"namespaceSelector": Sel::eq("kubernetes.io/metadata.name", "kube-system").json(),
                                     "podSelector": Sel::eq("k8s-app", "kube-dns").json()}}],
                    "protocols": [{"udp": {"destinationPort": {"number": 53}}}]}]),
        ),
    };
    let subject = match &pods {
        None => json!({"namespaces": ns.json()}),
        Some(p) => json!({"pods": {"namespaceSelector": ns.json(), "podSelector": p.json()}}),
    };
    let has_rules = |rules: &Value| rules.as_array().is_some_and(|r| !r.is_empty());
    let (has_in, has_eg) = (has_rules(&ingress), has_rules(&egress));
    let spec = json!({"tier": tier, "priority": i, "subject": subject, "ingress": ingress, "egress": egress});
    ClusterM {
        name: format!("cnp-{i:03}"),
        ns,
        pods,
        ingress: has_in,
        egress: has_eg,
        spec,
        flippable: i.is_multiple_of(5),
    }
}

fn rule_json(r: &RuleM, ingress: bool) -> Value {
    let peers: Vec<Value> = r
        .peers
        .iter()
        .map(|p| match p {
            PeerM::Pods { ns: None, pods } => json!({"podSelector": pods.json()}),
            PeerM::Pods { ns: Some(n), pods } => json!({"namespaceSelector": n.json(), "podSelector": pods.json()}),
            PeerM::Block(cidr, except) => json!({"ipBlock": {"cidr": cidr, "except": except}}),
        })
        .collect();
    let mut v = json!({"ports": r.ports});
    if !peers.is_empty() {
        v[if ingress { "from" } else { "to" }] = json!(peers);
    }
    v
}

fn policy_object(p: &PolicyM) -> NetworkPolicy {
    let mut types = Vec::new();
    let mut spec = json!({"podSelector": p.pod_sel.json()});
    if let Some(rules) = &p.ingress {
        types.push("Ingress");
        spec["ingress"] = rules.iter().map(|r| rule_json(r, true)).collect();
    }
    if let Some(rules) = &p.egress {
        types.push("Egress");
        spec["egress"] = rules.iter().map(|r| rule_json(r, false)).collect();
    }
    spec["policyTypes"] = json!(types);
    serde_json::from_value(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": p.name, "namespace": ns_name(p.ns)}, "spec": spec}))
    .expect("a valid NetworkPolicy")
}

fn node_name(n: usize) -> String {
    if n == 0 { OWN.into() } else { format!("node-{n:05}") }
}

fn pod_object(p: &PodM) -> Pod {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": ns_name(p.ns), "labels": p.labels},
        "spec": {"nodeName": node_name(p.node), "automountServiceAccountToken": false,
            "containers": [{"name": "main", "image": "bench.invalid/app:1", "ports": p.ports}]}}))
    .expect("a valid Pod")
}

fn pod_status(p: &PodM) -> Value {
    json!({"status": {"phase": "Running", "podIP": p.v4.to_string(),
        "podIPs": [{"ip": p.v4.to_string()}, {"ip": p.v6.to_string()}]}})
}

// ------------------------------------------------------------ the harness

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The keys of a verdict map in the kernel, listed by `nft`.
fn map_keys(node: &TestNs, map: &str) -> BTreeSet<IpAddr> {
    let out = node.exec(&["nft", "-j", "list", "map", "inet", TABLE, map]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut keys = BTreeSet::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for e in item["map"]["elem"].as_array().into_iter().flatten() {
            if let Some(ip) = e[0].as_str().and_then(|s| s.parse().ok()) {
                keys.insert(ip);
            }
        }
    }
    keys
}

/// Waits for the first commit after `t0` in which `want` holds for one of
/// its changes; returns its delay from `t0` and the transaction's size.
fn wait_commit(
    events: &mpsc::Receiver<Transaction>,
    t0: Instant,
    agent: &Proc,
    what: &str,
    want: impl Fn(&Change) -> bool,
) -> (Duration, usize) {
    let deadline = t0 + CHANGE_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(t) => {
                assert!(!t.lossy, "the nftables listener overflowed while waiting for {what}");
                if t.changes.iter().any(&want) {
                    return (t.at.saturating_duration_since(t0), t.changes.len());
                }
            }
            Err(_) => panic!("{what}: not in the kernel within {CHANGE_TIMEOUT:?}:\n{}", agent.log_tail()),
        }
    }
}

/// Waits until the agent is idle, so the next sample is measured alone: no
/// commit for `quiet`, no CPU time spent by the agent meanwhile, and no `nft`
/// child running (a pass goes on after its commit, reading the table back).
fn settle(events: &mpsc::Receiver<Transaction>, quiet: Duration, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    // `nft` runs as a child of whichever thread spawned it.
    let children = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("children")).is_ok_and(|c| !c.trim().is_empty()))
    };
    let busy = |ticks: u64| proc_stats(pid).0 != ticks || children();
    while Instant::now() < deadline {
        let ticks = proc_stats(pid).0;
        if events.recv_timeout(quiet).is_err() && !busy(ticks) {
            return;
        }
    }
}

fn elem_in(change: &Change, added: bool, set_prefix: &str, key: &[u8]) -> bool {
    matches!(change, Change::Elem { added: a, table, set, key: k }
        if *a == added && table == TABLE && set.starts_with(set_prefix) && k == key)
}

fn is_map(set: &str) -> bool {
    ["ingress4", "ingress6", "egress4", "egress6"].contains(&set)
}

#[derive(Default)]
struct Series {
    samples: Vec<Duration>,
    /// Changes in each measured commit (elements, rules, tables).
    sizes: Vec<usize>,
    /// The agent's mean reconcile pass over the samples (ms).
    pass_ms: f64,
}

struct Report {
    setup_seconds: f64,
    local_pods: usize,
    cold: Duration,
    cold_changes: usize,
    series: Vec<(&'static str, Series)>,
    peak_rss_kib: u64,
    rss_kib: u64,
    idle_cpu_percent: f64,
    load: String,
    /// Policies the agent refused for a cap, at the end.
    refused: u64,
}

fn main() {
    let args = Args::parse_checked();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("policy-bench: needs root (network namespaces)");
        std::process::exit(2);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let world = World::new(args.namespaces, args.pods, args.policies, args.cluster_policies);

    let node = TestNs::new("node");
    node.exec_ok(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"]);
    node.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    node.exec_ok(&["ip", "addr", "add", &format!("{NODE_IP}/15"), "dev", "eth0"]);
    let cp_ns = TestNs::new("cp");
    node.exec_ok(&["ip", "link", "set", "eth0-peer", "netns", cp_ns.name()]);
    cp_ns.exec_ok(&["ip", "link", "set", "eth0-peer", "name", "eth0"]);
    cp_ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    cp_ns.exec_ok(&["ip", "addr", "add", &format!("{CP_IP}/15"), "dev", "eth0"]);
    eprintln!("control plane: etcd and kube-apiserver");
    let cp = ControlPlane::start(cp_ns, CP_IP, &args.k8s_bin);
    cp.create_node(OWN, &["10.0.0.0/24", "fd00:10::/64"], &[NODE_IP]);

    let cp_netns = NetNs::open(&cp.ns.path()).expect("cp namespace");
    let node_netns = NetNs::open(&node.path()).expect("node namespace");
    // Everything that talks to the API server runs on a thread inside the
    // control-plane namespace: no packet leaves from the machine's own.
    let report = cp_netns
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(run(&args, world, &cp, &node, &node_netns, dir.path()))
        })
        .expect("bench thread");
    print_report(&args, &report);
}

async fn fill(args: &Args, world: &World, client: &Client) -> f64 {
    let started = Instant::now();
    eprintln!(
        "creating {} namespaces, {} pods ({} on the agent's node), {} policies, {} cluster network policies",
        args.namespaces,
        world.pods.len(),
        world.local().count(),
        world.policies.len(),
        world.cluster.len()
    );
    futures::stream::iter(
        world
            .ns_labels
            .iter()
            .enumerate()
            .map(|(i, labels)| async move { create_namespace(client, &ns_name(i), &json!(labels)).await }),
    )
    .buffer_unordered(PARALLEL)
    .try_collect::<Vec<_>>()
    .await
    .expect("create namespaces");
    // The fake nodes' Node objects: weft-agent believes a pod's address
    // only inside its node's podCIDRs (desired::pod_trust).
    futures::stream::iter((1..world.per_node.len()).map(|n| create_node(client, n)))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await
        .expect("create nodes");
    futures::stream::iter(world.pods.iter().map(|p| create_pod(client, p)))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await
        .expect("create pods");
    futures::stream::iter(world.policies.iter().map(|p| {
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns_name(p.ns));
        async move { api.create(&PostParams::default(), &policy_object(p)).await }
    }))
    .buffer_unordered(PARALLEL)
    .try_collect::<Vec<_>>()
    .await
    .expect("create policies");
    let cnps = cluster_policies(client);
    futures::stream::iter(world.cluster.iter().map(|c| {
        let cnps = cnps.clone();
        async move { cnps.create(&PostParams::default(), &cluster_policy(&c.name, c.spec.clone())).await }
    }))
    .buffer_unordered(PARALLEL)
    .try_collect::<Vec<_>>()
    .await
    .expect("create cluster network policies");
    fill_hostile(args, client).await;
    started.elapsed().as_secs_f64()
}

/// Labels per hostile pod: ~1.4 MB of JSON, under etcd's 1.5 MiB request limit.
const HOSTILE_LABELS: usize = 11_500;
const HOSTILE_POLICY: &str = "hostile";

/// A tenant's hostile objects in a namespace of their own (the model's
/// pods are elsewhere, so the expected maps stand): Pods no node can take
/// carrying ~1.4 MB of labels, and one policy with 2,000 selectors × 200
/// named ports.
async fn fill_hostile(args: &Args, client: &Client) {
    if args.hostile_pods == 0 && !args.hostile_policy {
        return;
    }
    eprintln!("creating {} pods of {HOSTILE_LABELS} labels each", args.hostile_pods);
    let ns = "hostile".to_string();
    create_namespace(client, &ns, &json!({})).await.expect("create the hostile namespace");
    futures::stream::iter((0..args.hostile_pods).map(|i| {
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let labels: serde_json::Map<String, Value> =
            (0..HOSTILE_LABELS).map(|l| (format!("k{l:05}-{}", "x".repeat(50)), json!("v".repeat(60)))).collect();
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": format!("hostile-{i:03}"), "labels": labels},
            "spec": {"nodeSelector": {"weft.dev/nothing": "matches"}, "containers": [{"name": "c", "image": "none"}]}}))
            .expect("a valid Pod");
        async move { api.create(&PostParams::default(), &pod).await }
    }))
    .buffer_unordered(4)
    .try_collect::<Vec<_>>()
    .await
    .expect("create hostile pods");
    if args.hostile_policy {
        let peers: Vec<Value> =
            (0..2000).map(|i| json!({"podSelector": {"matchLabels": {format!("k{i:05}"): "v"}}})).collect();
        let ports: Vec<Value> = (0..200).map(|i| json!({"port": format!("p{i}")})).collect();
        let np: NetworkPolicy = serde_json::from_value(json!({"metadata": {"name": HOSTILE_POLICY},
            "spec": {"podSelector": {}, "ingress": [{"from": peers, "ports": ports}]}}))
        .expect("a valid NetworkPolicy");
        Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &np)
            .await
            .expect("create the hostile policy");
    }
}

/// The agent's `weft_policy_refused_total`, summed over reasons.
fn refused_policies(node: &TestNs) -> u64 {
    node.http_get(METRICS_ADDRESS, "/metrics")
        .lines()
        .filter(|l| l.starts_with("weft_policy_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Fake node `n` (n > 0) with the podCIDRs its pods' addresses come from
/// ([`pod_addrs`]) and an underlay address in 198.19.0.0/16.
async fn create_node(client: &Client, n: usize) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let (v4, v6) =
        (Ipv4Addr::new(10, (n >> 8) as u8, (n & 0xff) as u8, 0), Ipv6Addr::new(0xfd00, 0x10, 0, n as u16, 0, 0, 0, 0));
    let cidrs = [format!("{v4}/24"), format!("{v6}/64")];
    let node: Node = serde_json::from_value(json!({"metadata": {"name": node_name(n)},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}}))
    .expect("a valid Node");
    api.create(&PostParams::default(), &node).await?;
    let ip = Ipv4Addr::new(198, 19, (n >> 8) as u8, (n & 0xff) as u8);
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]}});
    api.patch_status(&node_name(n), &PatchParams::default(), &Patch::Merge(status)).await
}

async fn create_pod(client: &Client, p: &PodM) -> Result<Pod, kube::Error> {
    create_running_pod(client, &pod_object(p), &[IpAddr::V4(p.v4), IpAddr::V6(p.v6)]).await
}

async fn run(
    args: &Args,
    mut world: World,
    cp: &ControlPlane,
    node: &TestNs,
    node_netns: &NetNs,
    dir: &Path,
) -> Report {
    let client = client(cp).await;
    if args.cluster_policies > 0 {
        install_cluster_policy_crd(cp, Path::new(CNP_CRD_TEMPLATE));
    }
    let setup_seconds = fill(args, &world, &client).await;
    eprintln!("API filled in {setup_seconds:.1} s");

    let events = nft_events::listen(node_netns).expect("nftables listener in the node namespace");

    let (want_in, want_eg) = world.expected_maps();
    let local_pods = world.local().count();
    eprintln!(
        "starting weft-agent: {local_pods} local pods, {} in ingress maps, {} in egress maps (addresses)",
        want_in.len(),
        want_eg.len()
    );
    let config = AgentConfig::new(dir, ["10.0.0.0/8", "fd00:10::/48"], "vxlan").with_network_policy();
    let agent_start = Instant::now();
    let agent = config.spawn("weft-agent", &args.agent, OWN, node, cp, dir);
    let pid = agent.pid().expect("agent pid");
    // Cold start: the commit holding every expected verdict map element.
    let (cold, cold_changes) = cold_start(&events, &agent, agent_start, &want_in, &want_eg);
    // The listener could be wrong; the kernel has the last word.
    let listed_in: BTreeSet<IpAddr> = ["ingress4", "ingress6"].iter().flat_map(|m| map_keys(node, m)).collect();
    let listed_eg: BTreeSet<IpAddr> = ["egress4", "egress6"].iter().flat_map(|m| map_keys(node, m)).collect();
    assert_eq!(listed_in, want_in, "ingress verdict map elements in the kernel");
    assert_eq!(listed_eg, want_eg, "egress verdict map elements in the kernel");
    eprintln!("policy table complete {cold:?} after start ({cold_changes} changes in that commit)");
    settle(&events, Duration::from_secs(2), pid);

    let w = Watched { events: &events, agent: &agent, node, pid };
    // The peer sets live at the start: the changes measured go into and out of them.
    let live = world.live_peers();
    let mut series = Vec::new();
    series.extend(pods_relabelled(&w, &world, &live, &client, args.samples).await);
    series.extend(local_pods_added(&w, &mut world, &client, args.samples).await);
    series.extend(policies_created(&w, &world, &client, args.samples).await);
    series.extend(namespaces_relabelled(&w, &world, &live, &client, args.samples).await);
    if args.cluster_policies > 0 {
        series.extend(cluster_policies_flipped(&w, &world, &client, args.samples).await);
    }

    eprintln!("idle for {:?}", args.idle);
    let load = load_average();
    let (t0, _, _) = proc_stats(pid);
    let clock = Instant::now();
    tokio::time::sleep(args.idle).await;
    let (t1, peak_rss_kib, rss_kib) = proc_stats(pid);
    assert!(peak_rss_kib > 0, "the agent exited:\n{}", agent.log_tail());
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let idle_cpu_percent = (t1 - t0) as f64 / hz / clock.elapsed().as_secs_f64() * 100.0;
    let refused = refused_policies(node);
    drop(agent);
    for (_, s) in &mut series {
        s.samples.sort();
    }
    Report {
        setup_seconds,
        local_pods,
        cold,
        cold_changes,
        series,
        peak_rss_kib,
        rss_kib,
        idle_cpu_percent,
        load,
        refused,
    }
}

/// The running agent and what watches it: what each measured change needs.
struct Watched<'a> {
    events: &'a mpsc::Receiver<Transaction>,
    agent: &'a Proc,
    node: &'a TestNs,
    pid: u32,
}

impl Watched<'_> {
    /// The commit holding a change `want` accepts, timed from `t0` (see [`wait_commit`]).
    fn commit(&self, t0: Instant, what: &str, want: impl Fn(&Change) -> bool) -> (Duration, usize) {
        wait_commit(self.events, t0, self.agent, what, want)
    }

    /// Waits until the agent is idle between samples (see [`settle`]).
    fn settle(&self) {
        settle(self.events, Duration::from_millis(300), self.pid);
    }

    /// The agent's reconcile pass counters (see [`pass_seconds`]).
    fn passes(&self) -> (f64, f64) {
        pass_seconds(self.node)
    }

    /// Adds the commit `want` accepts (timed from `t0`) to `series`, then
    /// waits until the agent is idle again.
    fn record(&self, series: &mut Series, t0: Instant, what: &str, want: impl Fn(&Change) -> bool) {
        let (d, n) = self.commit(t0, what, want);
        series.samples.push(d);
        series.sizes.push(n);
        self.settle();
    }

    /// Two series measured together, each with the agent's mean pass
    /// since `passes0` (the pass counters before them).
    fn pair(
        &self,
        passes0: (f64, f64),
        [(a, mut sa), (b, mut sb)]: [(&'static str, Series); 2],
    ) -> [(&'static str, Series); 2] {
        let pass_ms = pass_delta(self.node, passes0);
        (sa.pass_ms, sb.pass_ms) = (pass_ms, pass_ms);
        [(a, sa), (b, sb)]
    }
}

/// The cold start: waits for the commit that completes every expected
/// verdict map element; returns its time after `agent_start` and its size.
fn cold_start(
    events: &mpsc::Receiver<Transaction>,
    agent: &Proc,
    agent_start: Instant,
    want_in: &BTreeSet<IpAddr>,
    want_eg: &BTreeSet<IpAddr>,
) -> (Duration, usize) {
    let (mut seen_in, mut seen_eg) = (HashSet::new(), HashSet::new());
    loop {
        let left = (agent_start + PROGRAM_TIMEOUT).saturating_duration_since(Instant::now());
        let t = events.recv_timeout(left).unwrap_or_else(|_| {
            panic!("the policy table was not complete within {PROGRAM_TIMEOUT:?}:\n{}", agent.log_tail())
        });
        assert!(!t.lossy, "the nftables listener overflowed during the cold start");
        for c in &t.changes {
            match c {
                Change::DelTable(name) if name == TABLE => {
                    seen_in.clear();
                    seen_eg.clear();
                }
                Change::Elem { added: true, table, set, key } if table == TABLE && is_map(set) => {
                    let ip = match key.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(&key[..]).expect("4 bytes")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(&key[..]).expect("16 bytes")),
                        _ => continue,
                    };
                    if set.starts_with("ingress") {
                        seen_in.insert(ip)
                    } else {
                        seen_eg.insert(ip)
                    };
                }
                _ => {}
            }
        }
        if want_in.iter().all(|ip| seen_in.contains(ip)) && want_eg.iter().all(|ip| seen_eg.contains(ip)) {
            return (t.at - agent_start, t.changes.len());
        }
    }
}

/// (a) A remote pod relabelled (role -> frontend and back) into and out of a live peer set.
async fn pods_relabelled(
    w: &Watched<'_>,
    world: &World,
    live: &[(usize, Option<Sel>, Sel)],
    client: &Client,
    samples: usize,
) -> [(&'static str, Series); 2] {
    let pods_api = |ns: usize| -> Api<Pod> { Api::namespaced(client.clone(), &ns_name(ns)) };
    let candidates: Vec<(usize, Labels)> = world
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.node != 0)
        .filter_map(|(i, p)| {
            let mut l1 = p.labels.clone();
            l1.insert("role".into(), "frontend".into());
            let before = World::in_peer(live, p.ns, &world.ns_labels[p.ns], &p.labels);
            let after = World::in_peer(live, p.ns, &world.ns_labels[p.ns], &l1);
            after.iter().any(|s| !before.contains(s)).then_some((i, l1))
        })
        .take(samples)
        .collect();
    let mut s = Series::default();
    let (mut s_out, passes0) = (Series::default(), w.passes());
    for (i, l1) in &candidates {
        let p = &world.pods[*i];
        let key = p.v4.octets().to_vec();
        for (labels, added) in [(l1, true), (&p.labels, false)] {
            let patch = json!({"metadata": {"labels": labels}});
            let t0 = Instant::now();
            pods_api(p.ns).patch(&p.name, &PatchParams::default(), &Patch::Merge(patch)).await.expect("relabel pod");
            let what = format!("pod {} relabelled ({})", p.name, if added { "in" } else { "out" });
            let target = if added { &mut s } else { &mut s_out };
            w.record(target, t0, &what, |c| elem_in(c, added, "peer-", &key));
        }
    }
    eprintln!("(a) {} pods relabelled in and out of a peer set", s.samples.len());
    w.pair(passes0, [("pod relabelled into a peer set", s), ("pod relabelled out of a peer set", s_out)])
}

/// (b) A new local pod: podIPs published -> verdict map element; deleted -> gone.
async fn local_pods_added(
    w: &Watched<'_>,
    world: &mut World,
    client: &Client,
    samples: usize,
) -> [(&'static str, Series); 2] {
    let pods_api = |ns: usize| -> Api<Pod> { Api::namespaced(client.clone(), &ns_name(ns)) };
    let template = world
        .local()
        .find(|p| {
            let (i, e) = world.selected(p.ns, &p.labels);
            i || e
        })
        .map(|p| (p.ns, p.labels.clone()));
    let (mut s, mut s_del, passes0) = (Series::default(), Series::default(), w.passes());
    if let Some((ns, labels)) = template {
        for k in 0..samples {
            let idx = world.add_pod(ns, format!("new-{k:03}"), 0, labels.clone());
            let p = world.pods[idx].clone();
            let api = pods_api(ns);
            api.create(&PostParams::default(), &pod_object(&p)).await.expect("create local pod");
            w.settle();
            let key = p.v4.octets().to_vec();
            let t0 = Instant::now();
            api.patch_status(&p.name, &PatchParams::default(), &Patch::Merge(pod_status(&p)))
                .await
                .expect("publish podIPs");
            w.record(
                &mut s,
                t0,
                &format!("{} podIPs", p.name),
                |c| matches!(c, Change::Elem { added: true, table, set, key: k } if table == TABLE && is_map(set) && *k == key),
            );
            let t0 = Instant::now();
            api.delete(&p.name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                .await
                .expect("delete local pod");
            w.record(
                &mut s_del,
                t0,
                &format!("{} deleted", p.name),
                |c| matches!(c, Change::Elem { added: false, table, set, key: k } if table == TABLE && is_map(set) && *k == key),
            );
        }
    }
    eprintln!("(b) {} local pods added and deleted", s.samples.len());
    w.pair(passes0, [("local pod's podIPs -> verdict map element", s), ("local pod deleted -> element gone", s_del)])
}

/// (c) A new policy over a local pod's namespace: its chains, groups and sets.
async fn policies_created(
    w: &Watched<'_>,
    world: &World,
    client: &Client,
    samples: usize,
) -> [(&'static str, Series); 2] {
    let (mut s, mut s_del, passes0) = (Series::default(), Series::default(), w.passes());
    let ns = world.local().next().map_or(0, |p| p.ns);
    let npapi: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns_name(ns));
    for k in 0..samples {
        let pol = PolicyM {
            ns,
            name: format!("bench-new-{k:03}"),
            pod_sel: Sel::default(),
            ingress: Some(vec![RuleM {
                peers: vec![PeerM::Pods { ns: None, pods: Sel::eq("role", "frontend") }],
                ports: vec![tcp(80)],
            }]),
            egress: None,
        };
        let marker = format!("{}/{}", ns_name(ns), pol.name).into_bytes();
        let t0 = Instant::now();
        npapi.create(&PostParams::default(), &policy_object(&pol)).await.expect("create policy");
        w.record(
            &mut s,
            t0,
            &format!("policy {} created", pol.name),
            |c| matches!(c, Change::NewRule { table, raw } if table == TABLE && raw.windows(marker.len()).any(|w| w == marker)),
        );
        let t0 = Instant::now();
        npapi.delete(&pol.name, &DeleteParams::default()).await.expect("delete policy");
        w.record(
            &mut s_del,
            t0,
            &format!("policy {} deleted", pol.name),
            // Its chain removed (or, should the agent fall back to it, the whole table replaced).
            |c| match c {
                Change::DelChain { table, name } => table == TABLE && name.starts_with("in-pol-"),
                Change::NewTable(t) => t == TABLE,
                _ => false,
            },
        );
    }
    eprintln!("(c) {} policies created and deleted", s.samples.len());
    w.pair(passes0, [("policy created -> its rules in the kernel", s), ("policy deleted -> its chain removed", s_del)])
}

/// (d) A namespace relabelled (env flipped) into and out of a live namespaceSelector.
async fn namespaces_relabelled(
    w: &Watched<'_>,
    world: &World,
    live: &[(usize, Option<Sel>, Sel)],
    client: &Client,
    samples: usize,
) -> [(&'static str, Series); 2] {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns_candidates = Vec::new();
    for (i, labels) in world.ns_labels.iter().enumerate() {
        let mut l1 = labels.clone();
        let flipped = if labels.get("env").is_some_and(|e| e == "dev") { "prod" } else { "dev" };
        l1.insert("env".into(), flipped.into());
        // A pod of this namespace whose peer sets differ between the two labellings.
        let pod = world.pods.iter().find(|p| {
            p.ns == i && {
                let a = World::in_peer(live, i, labels, &p.labels);
                let b = World::in_peer(live, i, &l1, &p.labels);
                a != b
            }
        });
        if let Some(p) = pod {
            ns_candidates.push((i, l1, p.v4.octets().to_vec()));
        }
    }
    let (mut s, mut s_back, passes0) = (Series::default(), Series::default(), w.passes());
    for k in 0..samples {
        let Some((i, l1, key)) = ns_candidates.get(k % ns_candidates.len().max(1)) else { break };
        for (labels, target) in [(l1, &mut s), (&world.ns_labels[*i], &mut s_back)] {
            let patch = json!({"metadata": {"labels": labels}});
            let t0 = Instant::now();
            namespaces.patch(&ns_name(*i), &PatchParams::default(), &Patch::Merge(patch)).await.expect("relabel ns");
            w.record(
                target,
                t0,
                &format!("namespace {} relabelled", ns_name(*i)),
                |c| matches!(c, Change::Elem { table, set, key: k, .. } if table == TABLE && set.starts_with("peer-") && k == key),
            );
        }
    }
    eprintln!("(d) {} namespace relabellings and back", s.samples.len());
    w.pair(passes0, [("namespace relabelled (env flipped)", s), ("namespace relabelled back", s_back)])
}

/// (e) An Admin ClusterNetworkPolicy's Deny rule (`flip`) flipped to
/// Accept and back: the commit holding the rule with its new action,
/// found by its comment (`<policy> ingress[0] flip <action>`). The
/// policies flipped select local pods, so their chains are on this node.
async fn cluster_policies_flipped(
    w: &Watched<'_>,
    world: &World,
    client: &Client,
    samples: usize,
) -> [(&'static str, Series); 2] {
    let api = cluster_policies(client);
    let candidates: Vec<&ClusterM> = world
        .cluster
        .iter()
        .filter(|c| c.flippable && world.local().any(|p| c.selects(&world.ns_labels[p.ns], &p.labels)))
        .collect();
    let (mut s, mut s_back, passes0) = (Series::default(), Series::default(), w.passes());
    for k in 0..samples {
        let Some(c) = candidates.get(k % candidates.len().max(1)) else { break };
        for (action, target) in [("Accept", &mut s), ("Deny", &mut s_back)] {
            let mut ingress = c.spec["ingress"].clone();
            ingress[0]["action"] = json!(action);
            let patch = json!({"spec": {"ingress": ingress}});
            let marker = format!("{} ingress[0] flip {action}", c.name).into_bytes();
            let t0 = Instant::now();
            api.patch(&c.name, &PatchParams::default(), &Patch::Merge(patch)).await.expect("patch a cluster policy");
            w.record(
                target,
                t0,
                &format!("cluster network policy {} rule flip -> {action}", c.name),
                |ch| matches!(ch, Change::NewRule { table, raw } if table == TABLE && raw.windows(marker.len()).any(|w| w == marker)),
            );
        }
    }
    eprintln!("(e) {} cluster network policy rules flipped and back", s.samples.len());
    w.pair(
        passes0,
        [
            ("ClusterNetworkPolicy Admin rule Deny -> Accept", s),
            ("ClusterNetworkPolicy Admin rule Accept -> Deny", s_back),
        ],
    )
}

/// The agent's mean reconcile pass (ms) since `before`.
fn pass_delta(node: &TestNs, before: (f64, f64)) -> f64 {
    let after = pass_seconds(node);
    (after.0 - before.0) / (after.1 - before.1).max(1.0) * 1000.0
}

fn print_report(args: &Args, r: &Report) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (kernel, cpus) = results::machine();
    let mut rows = vec![
        MetricRow::new("start to policy table complete (ms)", ms(r.cold), ""),
        MetricRow::new("changes in that commit", r.cold_changes as f64, ""),
    ];
    for (name, s) in &r.series {
        if s.samples.is_empty() {
            rows.push(MetricRow::new(format!("{name}: not measured (no candidate)"), 0.0, ""));
            continue;
        }
        rows.push(MetricRow::new(format!("{name}, p50 (ms)"), ms(percentile(&s.samples, 0.5)), ""));
        rows.push(MetricRow::new(format!("{name}, p99 (ms)"), ms(percentile(&s.samples, 0.99)), "< 100"));
        rows.push(MetricRow::new(format!("{name}, max (ms)"), ms(percentile(&s.samples, 1.0)), ""));
        let mean_size = s.sizes.iter().sum::<usize>() as f64 / s.sizes.len() as f64;
        rows.push(MetricRow::new(format!("{name}, changes per commit"), mean_size, ""));
        rows.push(MetricRow::new(format!("{name}, agent's mean pass (ms)"), s.pass_ms, ""));
    }
    rows.push(MetricRow::new("peak RSS (MiB)", r.peak_rss_kib as f64 / 1024.0, "< 64"));
    rows.push(MetricRow::new("RSS at the end (MiB)", r.rss_kib as f64 / 1024.0, ""));
    rows.push(MetricRow::new("idle CPU (% of one core)", r.idle_cpu_percent, ""));
    rows.push(MetricRow::new("agent restarts (it ran to the end)", 0.0, "0"));
    let refused_target = if args.hostile_policy { "1" } else { "0" };
    rows.push(MetricRow::new("policies refused for a cap", r.refused as f64, refused_target));
    let run = PolicyRun {
        kernel,
        cpus,
        load_average: r.load.clone(),
        pods: args.pods,
        policies: args.policies,
        cluster_policies: args.cluster_policies,
        namespaces: args.namespaces,
        samples: args.samples,
        hostile_pods: args.hostile_pods,
        hostile_policy: args.hostile_policy,
        local_pods: r.local_pods,
        setup_seconds: r.setup_seconds,
        results: rows,
    };
    if args.json {
        results::print_json(&run);
        return;
    }
    println!(
        "weft-agent NetworkPolicy: {} pods ({} local), {} policies, {} cluster network policies, {} namespaces; kernel {}, {cpus} CPUs, load {}; {} samples per change; API filled in {:.1} s",
        run.pods,
        run.local_pods,
        run.policies,
        run.cluster_policies,
        run.namespaces,
        run.kernel,
        run.load_average,
        run.samples,
        run.setup_seconds
    );
    results::print_metric_rows(&run.results, 66);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn bench_run_command_line_parses() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "policy-bench",
            "--agent",
            "a",
            "--k8s-bin",
            "k",
            "--pods",
            "200",
            "--policies",
            "20",
            "--cluster-policies",
            "5",
            "--namespaces",
            "10",
            "--samples",
            "3",
            "--hostile-pods",
            "2",
            "--hostile-policy",
            "--json",
        ])
        .unwrap();
        assert_eq!((a.pods, a.policies, a.cluster_policies, a.namespaces, a.samples), (200, 20, 5, 10, 3));
        assert_eq!(a.hostile_pods, 2);
        assert!(a.hostile_policy && a.json);
        assert_eq!(a.idle, Duration::from_secs(30));
        assert!(Args::try_parse_from(["policy-bench", "--agent", "a", "--k8s-bin", "k", "--samples", "101"]).is_err());
        let d = Args::try_parse_from(["policy-bench", "--agent", "a", "--k8s-bin", "k"]).unwrap();
        assert_eq!((d.pods, d.policies, d.cluster_policies), (10_000, 1_000, 100), "the issue's setup by default");
    }

    #[test]
    fn cluster_policies_select_local_pods_and_some_can_be_flipped() {
        let w = World::new(10, 200, 20, 10);
        let (want_in, want_eg) = w.expected_maps();
        let without = World::new(10, 200, 20, 0).expected_maps();
        assert!(want_in.is_superset(&without.0) && want_eg.is_superset(&without.1));
        assert!(want_in.len() > without.0.len(), "Admin/Baseline subjects add local pods to the ingress maps");
        // Shape 1 (prod databases' egress) selects a local pod only if one is a prod db; the maps hold what the model says.
        let flippable: Vec<&ClusterM> = w
            .cluster
            .iter()
            .filter(|c| c.flippable && w.local().any(|p| c.selects(&w.ns_labels[p.ns], &p.labels)))
            .collect();
        assert_eq!(flippable.len(), 2, "cnp-000 and cnp-005 select local pods");
        let c = &w.cluster[0];
        assert_eq!(c.spec["ingress"][0]["name"], "flip");
        assert_eq!(c.spec["ingress"][0]["action"], "Deny");
        assert_eq!((c.spec["tier"].as_str(), c.spec["priority"].as_u64()), (Some("Admin"), Some(0)));
        assert_eq!(w.cluster[4].spec["tier"], "Baseline");
        assert!(!w.cluster[1].ingress && w.cluster[1].egress);
    }
}
