//! net-bench: cross-node pod-to-pod traffic through weft, next to the same
//! kernel objects written by hand and the bare underlay, in one run.
//!
//! Two "node" namespaces on the design's test underlay (segment A
//! 198.51.100.0/24 as a bridge in a lab namespace, segment B 203.0.113.0/25
//! behind a router namespace), one pod namespace on each. Nothing is linked
//! to the machine's own namespace. Setups, each on fresh node namespaces:
//! - `bare`: node to node over the underlay, no pods;
//! - `hand routes` / `hand vxlan`: pods and peers wired by `ip`/`bridge`
//!   commands as weft would (host routes; or a flannel-style VXLAN device
//!   with neighbour + FDB entries and the same MTU), weft absent;
//! - `weft <backend>`: the real `weft-agent` per node (against a real
//!   kube-apiserver) programs the peers, the real `weft` plugin wires the pods;
//! - `paired weft routes|vxlan` (`net_paired`): weft with N policies in the
//!   API server, one isolating both benchmark pods and allowing just the
//!   benchmark's ports, the others selecting pods that exist only as API
//!   objects on the same nodes (checked before measuring: a port the policy
//!   does not allow is dropped, the allowed ones connect); then the agents'
//!   rulesets are saved, the agents stopped, and weft, its references and
//!   weft without each part are measured interleaved on the same
//!   namespaces, each ratio with a 95 % interval.
//!
//! Metrics: TCP throughput with 1 and 4 streams (iperf3) under cubic and
//! bbr, set per socket (`iperf3 -C`, TCP_CONGESTION): a namespace's
//! `net.ipv4.tcp_congestion_control` may only name an algorithm in the
//! machine's `tcp_allowed_congestion_control`, which only the machine's own
//! namespace can change (here it allows reno and bbr, not cubic),
//! the CPU of the iperf3 sender and receiver (their getrusage, as iperf3
//! reports it) per Gbit/s, TCP request/response latency (64-byte
//! ping-pong, one connection, this program's own client and server), and
//! the new-connection rate (this program's client opening one connection
//! after another: connect, send a byte, read it back, close).
//! In full mode, a system-wide CPU profile (`perf record -a -g`) of one
//! IPv4 transfer per paired variant (with `--profile`, also of the
//! routes-like setups outside weft), its symbols grouped into classes
//! (netfilter, TCP, copies, forwarding, VXLAN/UDP, other).
//! Prints JSON with every sample; `bench-report` draws it. Never pass/fail.
//!
//!   net-bench --weft WEFT --agent WEFT_AGENT --k8s-bin DIR [--secs 2] [--rr-secs 1] [--reps 2]
//!             [--policies N] [--profile] [--only SETUP] [--family IPv4|IPv6] [--pair-budget S]
//!             [--variants LABEL,...] [--quick]

mod net_paired;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::PostParams;
use kube::{Api, Client};
use libweft::netns::NetNs;
use libweft::testutil::TestNs;
use libweft::testutil::control_plane::{ControlPlane, Proc, eventually};
use libweft::testutil::lab::{NodeUnderlay, Segment, Segments};
use serde_json::{Value, json};
use weft_bench::agent_process::{AgentConfig, METRICS_ADDRESS};
use weft_bench::api::{
    CNP_CRD_TEMPLATE, client, cluster_policies, cluster_policy, create_namespace, create_running_pod,
    install_cluster_policy_crd, set_running,
};
use weft_bench::cli::seconds;
use weft_bench::perf;
use weft_bench::results::{self, FailedSetup, NetRow, NetRun, NetSamples, PairedGroup, SetupNotes, SystemProfile};

const UNDERLAY_MTU: u32 = 1500;
const IPERF_PORT: u16 = 5201;
const RR_PORT: u16 = 7011;
const CONN_PORT: u16 = 7012;
/// A port the benchmark policy does not allow (the enforcement check).
const DENIED_PORT: u16 = 7013;
/// The label of both benchmark pods, which the benchmark policy selects.
const BENCH_APP: &str = "bench-net";
/// The label (`cnp: bench`) that puts the benchmark pods under the two
/// ClusterNetworkPolicies over them.
const CNP_LABEL: &str = "cnp";
/// Pods that exist only as API objects, per node, for the other policies to select.
const OTHER_PODS: usize = 20;
const OTHER_PODS_QUICK: usize = 4;
/// API requests in flight while creating policies and pods.
const PARALLEL: usize = 16;

#[derive(Clone, Copy, PartialEq)]
enum Topology {
    OneSegment,
    Routed,
}

impl Topology {
    fn label(self) -> &'static str {
        match self {
            Topology::OneSegment => "one segment",
            Topology::Routed => "two segments, routed",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Bare,
    HandRoutes,
    /// `hand routes` with the pods at the VXLAN MTU (underlay − 50), as
    /// `vxlan` gives them: what that MTU alone costs on the routes path.
    HandRoutesVxlanMtu,
    HandVxlan,
    /// Backend, and whether VXLAN transmit checksum offload is the agent's choice.
    Weft(&'static str, bool),
    /// The paired measurement of a backend (`net_paired`): weft with this
    /// many NetworkPolicies in the API server, then its rulesets and
    /// variants of them on the same namespaces.
    Paired(&'static str, usize),
}

impl Setup {
    fn label(self) -> String {
        match self {
            Setup::Bare => "bare".into(),
            Setup::HandRoutes => "hand routes".into(),
            Setup::HandRoutesVxlanMtu => "hand routes, VXLAN MTU".into(),
            Setup::HandVxlan => "hand vxlan".into(),
            Setup::Weft(b, true) => format!("weft {b}"),
            Setup::Weft(b, false) => format!("weft {b}, other offload"),
            Setup::Paired(b, _) => format!("paired weft {b}"),
        }
    }

    /// Whether the CPU profile is taken with `--profile`: the setups on
    /// the routes path outside weft (the paired setups profile weft and
    /// each of its variants themselves).
    fn profiled(self) -> bool {
        matches!(self, Setup::Bare | Setup::HandRoutes | Setup::HandRoutesVxlanMtu)
    }
}

/// net-bench's command line.
#[derive(Parser)]
#[command(name = "net-bench", about = "Measures pod-to-pod traffic through weft against hand-built references")]
struct Args {
    /// The weft CNI plugin binary.
    #[arg(long, value_name = "WEFT")]
    weft: PathBuf,
    /// The weft-agent binary.
    #[arg(long, value_name = "WEFT_AGENT")]
    agent: PathBuf,
    /// The directory holding etcd and kube-apiserver.
    #[arg(long, value_name = "DIR")]
    k8s_bin: PathBuf,
    /// Duration of each bulk transfer, in seconds.
    #[arg(long, value_name = "S", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    secs: u32,
    /// Duration of each request/response and connection-rate run.
    #[arg(long, value_name = "S", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rr_secs: u32,
    /// Repetitions of each measurement.
    #[arg(long, value_name = "R", default_value_t = 2, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    reps: usize,
    /// NetworkPolicies of `weft routes, N policies`; 0: the mode's default.
    #[arg(long, value_name = "N", default_value_t = 0)]
    policies: usize,
    /// ClusterNetworkPolicies of the paired setups (at least 2); 0: the
    /// mode's default (100; 5 with --quick).
    #[arg(long, value_name = "M", default_value_t = 0)]
    cluster_policies: usize,
    /// Record CPU profiles with perf.
    #[arg(long)]
    profile: bool,
    /// Only the setups whose label contains this (trying one out).
    #[arg(long, value_name = "SETUP")]
    only: Option<String>,
    /// Time for each paired group's rounds (`net_paired::Plan::budget`), in seconds.
    #[arg(long, value_name = "S", default_value = "0", value_parser = seconds)]
    pair_budget: Duration,
    /// Only this family (trying one out).
    #[arg(long, value_parser = ["IPv4", "IPv6"])]
    family: Option<String>,
    /// Only the paired variants whose label contains one of these
    /// (comma-separated), beside `weft`: a few parts measured closely.
    #[arg(long, value_name = "LABELS", value_delimiter = ',')]
    variants: Vec<String>,
    /// The CPUs of the client and the server end of every measurement
    /// (`CLIENT,SERVER`; the same CPU twice puts both ends on one).
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1])]
    cpus: Vec<usize>,
    /// A short run of every setup (bench/run --quick).
    #[arg(long)]
    quick: bool,
}

/// The lab: both underlay segments and the router between them, and the
/// API server on segment A. Node namespaces come and go per setup.
struct Lab {
    segments: Segments,
    cp: ControlPlane,
}

impl Lab {
    fn new(k8s_bin: &Path) -> Lab {
        let segments = Segments::new("nb-lab", "nb-router");
        let cp = segments.control_plane("nb-cp", k8s_bin, &[]);
        Lab { segments, cp }
    }

    /// Node `n` (1 or 2) of setup `tag`, on segment A, or B when `routed`
    /// and n == 2: underlay on `eth0`, the other segment via the router.
    fn node(&self, tag: &str, n: u8, routed: bool) -> Node {
        let ns = TestNs::new(&format!("{tag}-n{n}"));
        let segment = if routed && n == 2 { Segment::B } else { Segment::A };
        let NodeUnderlay { v4, v6, .. } =
            self.segments.attach_node(&ns, segment, 10 + n, &format!("{tag}-{n}"), Some(UNDERLAY_MTU));
        Node { ns, v4, v6, pod_v4: format!("10.244.{n}.0/24"), pod_v6: format!("fd00:10:244:{n}::/64"), n }
    }
}

struct Node {
    ns: TestNs,
    v4: String,
    v6: String,
    pod_v4: String,
    pod_v6: String,
    n: u8,
}

/// What one setup left running, and where traffic goes.
struct Wired {
    /// Sender and receiver namespaces (pods, or nodes for `bare`).
    client: TestNs,
    server: TestNs,
    dst: [String; 2],
    pod_mtu: u32,
    /// VXLAN transmit checksum offload on node 1's device, if it has one.
    offload: Option<bool>,
    /// What the setup did beyond wiring (tables removed, policies in the
    /// kernel, the enforcement check), copied into its rows.
    notes: SetupNotes,
    nodes: Vec<TestNs>,
    agents: Vec<Proc>,
    _dirs: Vec<tempfile::TempDir>,
    /// kubectl commands that remove the setup's API objects afterwards.
    cleanup: Vec<Vec<String>>,
    /// `weft routes, N policies`: takes the benchmark pods in and out of
    /// the isolating policy, for the paired measurement.
    selection: Option<Selection>,
}

/// Which policies select the two benchmark pods, by their labels.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Selected {
    /// No policy (the others stay loaded).
    Nothing,
    /// `app: bench-net`: the isolating NetworkPolicy `bench-allow`.
    NetworkPolicy,
    /// `app: bench-net` and `cnp: bench`: also the two
    /// ClusterNetworkPolicies over them (Admin and Baseline tier).
    AlsoCluster,
}

/// Which policies select the two benchmark pods, changed by their labels,
/// so that one setup measures the same pods every way, interleaved: two
/// setups run a minute apart differ by more on 2 cores than the policies
/// cost.
struct Selection {
    namespace: String,
    /// Client pod's IPv4 address, in node 1's egress map while selected;
    /// the server pod's, in node 2's ingress map.
    client: String,
    server: String,
    selected: Selected,
}

impl Selection {
    /// `nodes`: node 1's and node 2's namespaces.
    /// Whether the kernels followed within 30 s.
    fn set(&mut self, cp: &ControlPlane, nodes: &[TestNs], to: Selected) -> bool {
        if self.selected == to {
            return true;
        }
        let app = (to != Selected::Nothing).then_some(BENCH_APP);
        let cnp = (to == Selected::AlsoCluster).then_some("bench");
        // A merge patch: null removes a label whether or not it is there.
        let patch = json!({"metadata": {"labels": {"app": app, CNP_LABEL: cnp}}}).to_string();
        for pod in ["bench-1", "bench-2"] {
            cp.kubectl_ok(&["patch", "pod", "-n", &self.namespace, pod, "--type=merge", "-p", &patch]);
        }
        let ok = eventually(Duration::from_secs(30), || {
            follows(&nodes[0], "egress4", &self.client, to) && follows(&nodes[1], "ingress4", &self.server, to)
        });
        self.selected = to;
        ok
    }
}

impl Wired {
    /// Changes which policies select the benchmark pods (the paired
    /// setups). If the kernels do not follow, the pairing ends: the pods
    /// are selected by the NetworkPolicy again for the rest of the setup,
    /// and the answer is false (as without a policies setup).
    pub(crate) fn select(&mut self, cp: &ControlPlane, to: Selected) -> bool {
        let Some(mut sel) = self.selection.take() else { return false };
        if sel.set(cp, &self.nodes, to) {
            self.selection = Some(sel);
            return true;
        }
        eprintln!("  the benchmark pods did not follow their labels in 30 s: no paired measurement");
        self.notes.paired_error = Some("the pods' verdict-map elements did not follow their labels".into());
        sel.set(cp, &self.nodes, Selected::NetworkPolicy);
        false
    }
}

/// Whether `ip`'s element in verdict map `map` of weft's policy table is
/// as `to` says: absent for no policy; present for the NetworkPolicy,
/// its group chain jumping to an Admin tier chain (`in-adm-…`,
/// `eg-adm-…`) exactly when the ClusterNetworkPolicies select it too.
fn follows(ns: &TestNs, map: &str, ip: &str, to: Selected) -> bool {
    let out = ns.exec(&["nft", "list", "map", "inet", "weft-policy", map]);
    let Some(group) = map_group(&String::from_utf8_lossy(&out.stdout), ip) else { return to == Selected::Nothing };
    let chain = ns.exec(&["nft", "list", "chain", "inet", "weft-policy", &group]);
    let admin = String::from_utf8_lossy(&chain.stdout).contains("-adm-");
    to != Selected::Nothing && admin == (to == Selected::AlsoCluster)
}

/// The group chain `ip` jumps to in a verdict map's listing (`nft list map`).
fn map_group(listing: &str, ip: &str) -> Option<String> {
    let words: Vec<&str> = listing.split_whitespace().collect();
    words
        .windows(4)
        .find(|w| w[0].trim_start_matches('{') == ip && w[1] == ":" && w[2] == "jump")
        .map(|w| w[3].trim_end_matches(['}', ',']).to_string())
}

fn read_mtu(ns: &TestNs, dev: &str) -> u32 {
    ns.exec_ok(&["cat", &format!("/sys/class/net/{dev}/mtu")]).trim().parse().unwrap_or(0)
}

/// The device `ip route get` picks for `dst` in `ns`, or what it printed.
fn route_dev(ns: &TestNs, dst: &str) -> String {
    let out = ns.exec_ok(&["ip", "-o", "route", "get", dst]);
    let mut words = out.split_whitespace();
    words.find(|w| *w == "dev").and_then(|_| words.next()).map_or_else(|| out.trim().to_string(), str::to_string)
}

fn read_offload(ns: &TestNs) -> Option<bool> {
    let out = ns.exec(&["ethtool", "-k", "weft.vxlan"]);
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("tx-checksumming: "))
        .map(|v| v.starts_with("on"))
}

fn mac_of(ns: &TestNs, dev: &str) -> String {
    ns.exec_ok(&["cat", &format!("/sys/class/net/{dev}/address")]).trim().to_string()
}

/// A pod wired by hand as weft's plugin does: veth, /32 and /128, an
/// on-link default route via 169.254.1.1 / fe80::1 with permanent
/// neighbours both ways, a host route to the pod.
fn hand_pod(node: &Node, tag: &str, mtu: u32) -> (TestNs, String, String) {
    let pod = TestNs::new(&format!("{tag}-p{}", node.n));
    let (ip4, ip6) = (format!("10.244.{}.5", node.n), format!("fd00:10:244:{}::5", node.n));
    let host = format!("hveth{}", node.n);
    let m = mtu.to_string();
    node.ns.exec_ok(&[
        "ip",
        "link",
        "add",
        &host,
        "mtu",
        &m,
        "address",
        "ee:ee:ee:ee:ee:ee",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ]);
    node.ns.exec_ok(&["ip", "link", "set", &host, "up"]);
    pod.exec_ok(&["ip", "link", "set", "eth0", "mtu", &m, "up"]);
    pod.exec_ok(&["ip", "addr", "add", &format!("{ip4}/32"), "dev", "eth0"]);
    pod.exec_ok(&["ip", "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"]);
    for gw in ["169.254.1.1", "fe80::1"] {
        pod.exec_ok(&["ip", "neigh", "replace", gw, "lladdr", "ee:ee:ee:ee:ee:ee", "dev", "eth0", "nud", "permanent"]);
    }
    pod.exec_ok(&["ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0", "onlink"]);
    pod.exec_ok(&["ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"]);
    let pod_mac = mac_of(&pod, "eth0");
    for ip in [&ip4, &ip6] {
        node.ns.exec_ok(&["ip", "neigh", "replace", ip, "lladdr", &pod_mac, "dev", &host, "nud", "permanent"]);
        node.ns.exec_ok(&["ip", "route", "replace", ip, "dev", &host]);
    }
    (pod, ip4, ip6)
}

/// The VTEP MAC of hand-made node `n`.
fn hand_vtep_mac(n: u8) -> String {
    format!("0e:00:00:00:00:0{n}")
}

/// weft's VXLAN device and peer entries, by hand (flannel's shape).
fn hand_vxlan(me: &Node, peer: &Node, offload: bool) {
    let ns = &me.ns;
    let mtu = (UNDERLAY_MTU - 50).to_string();
    ns.exec_ok(&[
        "ip",
        "link",
        "add",
        "weft.vxlan",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "local",
        &me.v4,
        "dev",
        "eth0",
        "nolearning",
    ]);
    ns.exec_ok(&["ip", "link", "set", "weft.vxlan", "address", &hand_vtep_mac(me.n), "mtu", &mtu, "up"]);
    ns.exec_ok(&["ip", "addr", "add", &format!("10.244.{}.0/32", me.n), "dev", "weft.vxlan"]);
    ns.exec_ok(&["ip", "addr", "add", &format!("fd00:10:244:{}::/128", me.n), "dev", "weft.vxlan", "nodad"]);
    ns.exec_ok(&["ethtool", "-K", "weft.vxlan", "tx", if offload { "on" } else { "off" }]);
    let mac = hand_vtep_mac(peer.n);
    ns.exec_ok(&["bridge", "fdb", "append", &mac, "dev", "weft.vxlan", "dst", &peer.v4, "self", "permanent"]);
    for (vtep, cidr) in
        [(format!("10.244.{}.0", peer.n), &peer.pod_v4), (format!("fd00:10:244:{}::", peer.n), &peer.pod_v6)]
    {
        ns.exec_ok(&["ip", "neigh", "replace", &vtep, "lladdr", &mac, "dev", "weft.vxlan", "nud", "permanent"]);
        ns.exec_ok(&["ip", "route", "replace", cidr, "via", &vtep, "dev", "weft.vxlan", "onlink"]);
    }
}

fn wait_reachable(from: &TestNs, dst: &[String; 2], what: &str, logs: &[&Proc]) {
    for d in dst {
        if !eventually(Duration::from_secs(60), || from.ping(d)) {
            let tails: Vec<String> = logs.iter().map(|p| format!("{}:\n{}", p.name, p.log_tail())).collect();
            panic!("{what}: {d} unreachable from {} after 60 s\n{}", from.name(), tails.join("\n"));
        }
    }
}

fn setup(lab: &Lab, args: &Args, tag: &str, topo: Topology, s: Setup, chosen_offload: bool) -> Wired {
    let routed = topo == Topology::Routed;
    let nodes = [lab.node(tag, 1, routed), lab.node(tag, 2, routed)];
    match s {
        Setup::Bare => {
            let [n1, n2] = nodes;
            let dst = [n2.v4.clone(), n2.v6.clone()];
            let w = Wired::new(n1.ns, n2.ns, dst, UNDERLAY_MTU, None);
            wait_reachable(&w.client, &w.dst, "bare", &[]);
            w
        }
        Setup::HandRoutes | Setup::HandRoutesVxlanMtu | Setup::HandVxlan => hand_setup(nodes, tag, s, chosen_offload),
        // "other offload": VXLAN transmit checksum offload against the agent's choice.
        Setup::Weft(backend, agents_choice) => {
            weft_setup(lab, args, tag, s, nodes, (!agents_choice).then_some(!chosen_offload), backend)
        }
        Setup::Paired(backend, _) => weft_setup(lab, args, tag, s, nodes, None, backend),
    }
}

impl Wired {
    /// A setup of `client` sending to `server` at `dst`, nothing else kept yet.
    fn new(client: TestNs, server: TestNs, dst: [String; 2], pod_mtu: u32, offload: Option<bool>) -> Wired {
        Wired {
            client,
            server,
            dst,
            pod_mtu,
            offload,
            notes: SetupNotes::default(),
            nodes: Vec::new(),
            agents: Vec::new(),
            _dirs: Vec::new(),
            cleanup: Vec::new(),
            selection: None,
        }
    }
}

/// `hand routes`, `hand routes, VXLAN MTU` and `hand vxlan`: pods and
/// peers wired by `ip` and `bridge` commands as weft would, weft absent.
fn hand_setup([n1, n2]: [Node; 2], tag: &str, s: Setup, chosen_offload: bool) -> Wired {
    let vxlan = s == Setup::HandVxlan;
    let mtu = if s == Setup::HandRoutes { UNDERLAY_MTU } else { UNDERLAY_MTU - 50 };
    let (p1, _, _) = hand_pod(&n1, tag, mtu);
    let (p2, ip4, ip6) = hand_pod(&n2, tag, mtu);
    for (me, peer) in [(&n1, &n2), (&n2, &n1)] {
        if vxlan {
            hand_vxlan(me, peer, chosen_offload);
        } else {
            me.ns.exec_ok(&["ip", "route", "add", &peer.pod_v4, "via", &peer.v4, "dev", "eth0"]);
            me.ns.exec_ok(&["ip", "-6", "route", "add", &peer.pod_v6, "via", &peer.v6, "dev", "eth0"]);
        }
    }
    let offload = read_offload(&n1.ns);
    let mut w = Wired::new(p1, p2, [ip4, ip6], mtu, offload);
    wait_reachable(&w.client, &w.dst, &s.label(), &[]);
    w.nodes = vec![n1.ns, n2.ns];
    w
}

/// The weft-agents of a weft setup, one per node, with their directories
/// and Node names.
struct Agents {
    procs: Vec<Proc>,
    dirs: Vec<tempfile::TempDir>,
    names: Vec<String>,
}

/// Creates both Nodes and starts their agents; `tx_offload` sets VXLAN
/// transmit checksum offload instead of leaving it to the agent.
fn start_agents(
    lab: &Lab,
    args: &Args,
    tag: &str,
    nodes: &[Node; 2],
    backend: &str,
    tx_offload: Option<bool>,
) -> Agents {
    let mut a = Agents { procs: Vec::new(), dirs: Vec::new(), names: Vec::new() };
    for n in nodes {
        let name = format!("{tag}-node{}", n.n);
        lab.cp.create_node(&name, &[&n.pod_v4, &n.pod_v6], &[&n.v4, &n.v6]);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = AgentConfig::new(dir.path(), ["10.244.0.0/16", "fd00:10:244::/56"], backend)
            .with("healthAddress", json!(METRICS_ADDRESS))
            .with_network_policy();
        if let Some(on) = tx_offload {
            config = config.with("vxlan", json!({"txChecksumOffload": on}));
        }
        a.procs.push(config.spawn(&format!("weft-agent-{}", n.n), &args.agent, &name, &n.ns, &lab.cp, dir.path()));
        a.names.push(name);
        a.dirs.push(dir);
    }
    a
}

/// `weft <backend>` and the paired setups: the real agents against the API
/// server program the peers, the real plugin wires the pods; with
/// policies (the paired setups), the policies and their pods are created
/// and enforced first. `tx_offload`: see [`start_agents`].
fn weft_setup(
    lab: &Lab,
    args: &Args,
    tag: &str,
    s: Setup,
    nodes: [Node; 2],
    tx_offload: Option<bool>,
    backend: &str,
) -> Wired {
    let policies = match s {
        Setup::Paired(_, n) => {
            Some(PolicyPlan::new(tag, n, cluster_count(args), if args.quick { OTHER_PODS_QUICK } else { OTHER_PODS }))
        }
        _ => None,
    };
    let agents = start_agents(lab, args, tag, &nodes, backend, tx_offload);
    let mut cleanup: Vec<Vec<String>> =
        agents.names.iter().map(|n| vec!["delete".into(), "node".into(), n.clone(), "--wait=false".into()]).collect();
    if let Some(plan) = &policies {
        let started = Instant::now();
        with_api(&lab.cp, async |c: Client| plan.create(&c, &agents.names).await)
            .unwrap_or_else(|e| panic!("{}: create the policies and pods: {e}", s.label()));
        eprintln!(
            "  {} policies, {} cluster network policies and {} API-only pods created in {:.1?}",
            plan.policies,
            plan.cluster_policies,
            2 * plan.other_pods,
            started.elapsed()
        );
        cleanup.extend(plan.cleanup());
    }
    let mut pods: Vec<(TestNs, String, String)> =
        nodes.iter().map(|n| agent_pod(lab, args, tag, s, n, &agents, policies.as_ref())).collect();
    let (p2, ip4, ip6) = pods.pop().expect("two pods");
    let (p1, c4, c6) = pods.pop().expect("two pods");
    let [n1, n2] = nodes;
    let pod_mtu = read_mtu(&p1, "eth0");
    let offload = read_offload(&n1.ns);
    // Which device node 1 forwards the peer pod's traffic to: shows
    // what `auto` chose for the peer.
    let path: Vec<String> = [&ip4, &ip6].iter().map(|ip| route_dev(&n1.ns, ip)).collect();
    let mut w = Wired::new(p1, p2, [ip4, ip6], pod_mtu, offload);
    w.notes.path = Some(path);
    w.nodes = vec![n1.ns, n2.ns];
    let logs: Vec<&Proc> = agents.procs.iter().collect();
    match &policies {
        Some(plan) => enforce(lab, &mut w, plan, s, [&c4, &c6], &logs),
        None => wait_reachable(&w.client, &w.dst, &s.label(), &logs),
    }
    w.agents = agents.procs;
    w._dirs = agents.dirs;
    w.cleanup = cleanup;
    w
}

/// Wires node `n`'s pod with the plugin once its agent wrote node.json
/// (and, with policies, listed the benchmark's namespace and the pod's
/// object exists): (pod namespace, IPv4, IPv6).
fn agent_pod(
    lab: &Lab,
    args: &Args,
    tag: &str,
    s: Setup,
    n: &Node,
    agents: &Agents,
    policies: Option<&PolicyPlan>,
) -> (TestNs, String, String) {
    let i = usize::from(n.n) - 1;
    let (dir, agent) = (&agents.dirs[i], &agents.procs[i]);
    let node_json = dir.path().join("run/node.json");
    assert!(
        eventually(Duration::from_secs(60), || node_json.exists()),
        "weft-agent on node {} wrote no node.json in 60 s:\n{}",
        n.n,
        agent.log_tail()
    );
    // The plugin reads which namespaces have policies on ADD
    // (libweft::pending): wait until the agent listed the
    // benchmark's, so the pods start closed as in a cluster.
    let pod_ns = policies.map(|p| {
        let list = dir.path().join("run").join(libweft::pending::FILE_NAME);
        assert!(
            eventually(Duration::from_secs(60), || std::fs::read_to_string(&list)
                .is_ok_and(|t| t.contains(&p.namespace))),
            "weft-agent on node {} did not list namespace {} in {} in 60 s:\n{}",
            n.n,
            p.namespace,
            list.display(),
            agent.log_tail()
        );
        let name = format!("bench-{}", n.n);
        let uid = with_api(&lab.cp, async |c: Client| p.create_bench_pod(&c, &agents.names[i], &name).await)
            .unwrap_or_else(|e| panic!("{}: create the benchmark pod {name}: {e}", s.label()));
        (p.namespace.as_str(), uid)
    });
    let pod = pod_ns.as_ref().map(|(ns, uid)| (*ns, uid.as_str()));
    weft_pod(&args.weft, n, tag, &node_json, &dir.path().join("ipam"), pod)
}

/// With the policies: the benchmark pods running, the allowed port
/// reachable, every policy's chains in both kernels, and a port the
/// policy does not allow checked to be dropped; the pods then start
/// selected. `client`: the client pod's addresses.
fn enforce(lab: &Lab, w: &mut Wired, plan: &PolicyPlan, s: Setup, client: [&String; 2], logs: &[&Proc]) {
    let bench_pods = [("bench-1", client), ("bench-2", [&w.dst[0], &w.dst[1]])];
    with_api(&lab.cp, async |c: Client| plan.run_bench_pods(&c, &bench_pods).await)
        .unwrap_or_else(|e| panic!("{}: create the benchmark pods: {e}", s.label()));
    // ICMP is not allowed: reachability is the allowed TCP port.
    wait_tcp(w, &s.label(), logs);
    // The cluster policies over the API-only pods: the two over the
    // benchmark pods come in when their label does.
    let cluster_chains = plan.cluster_policies.saturating_sub(2);
    for (i, node) in w.nodes.iter().enumerate() {
        let ok = eventually(Duration::from_secs(120), || {
            policy_chains(node) >= plan.policies && chains_named(node, "in-cnp-") >= cluster_chains
        });
        assert!(
            ok,
            "{}: node {} holds {} policy chains and {} cluster policy chains, not {} and {cluster_chains} after 120 s:\n{}",
            s.label(),
            i + 1,
            policy_chains(node),
            chains_named(node, "in-cnp-"),
            plan.policies,
            logs[i].log_tail()
        );
    }
    let check = check_enforced(w).unwrap_or_else(|e| panic!("{}: {e}", s.label()));
    eprintln!("  enforcement check: {check}");
    w.notes.enforcement = Some(check);
    w.notes.policies = Some(plan.policies);
    w.notes.policy_chains = Some(w.nodes.iter().map(policy_chains).collect());
    w.selection = Some(Selection {
        namespace: plan.namespace.clone(),
        client: client[0].clone(),
        server: w.dst[0].clone(),
        selected: Selected::NetworkPolicy,
    });
}

/// The per-policy chains (`in-pol-…`, one per policy with ingress rules)
/// in a node's policy table.
fn policy_chains(ns: &TestNs) -> usize {
    chains_named(ns, "in-pol-")
}

/// The chains of a node's policy table whose name starts with `prefix`.
fn chains_named(ns: &TestNs, prefix: &str) -> usize {
    let out = ns.exec(&["nft", "list", "table", "inet", "weft-policy"]);
    let head = format!("chain {prefix}");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.trim().starts_with(&head)).count()
}

/// The ClusterNetworkPolicies of a paired setup (`--cluster-policies`).
fn cluster_count(args: &Args) -> usize {
    match args.cluster_policies {
        0 if args.quick => 5,
        0 => 100,
        n => n.max(2),
    }
}

/// Runs `work` with a kube client on a thread inside the control-plane
/// namespace: no packet leaves from the machine's own.
fn with_api<T: Send>(cp: &ControlPlane, work: impl AsyncFnOnce(Client) -> T + Send) -> T {
    let ns = NetNs::open(&cp.ns.path()).expect("control-plane namespace");
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async { work(client(cp).await).await })
    })
    .expect("API thread")
}

/// The API objects of `weft routes, N policies`, in namespace `<tag>-net`:
/// - `bench-allow` selects both benchmark pods (`app: bench-net`) and
///   allows, in and out, only TCP to the iperf3, ping-pong and
///   connection-rate ports between them;
/// - N − 1 others, each selecting one label `app: other-<k mod P>` of the
///   P API-only pods on each node, with an ingress rule (and every fourth an
///   egress rule) of its own; on both nodes every policy selects a local
///   pod, so every policy's chains are in both kernels;
/// - M ClusterNetworkPolicies (`<tag>-…`, subjects in that namespace only):
///   two over the benchmark pods once they carry `cnp: bench`, an Admin one
///   (per direction a Deny rule for peers they are not, then a Pass for
///   each other, so NetworkPolicy decides) and a Baseline default deny
///   (never reached: NetworkPolicy isolates them); and M − 2 over the
///   API-only pods as the other NetworkPolicies are, alternately Admin and
///   Baseline, so their chains are in both kernels too.
struct PolicyPlan {
    namespace: String,
    policies: usize,
    cluster_policies: usize,
    other_pods: usize,
}

impl PolicyPlan {
    fn new(tag: &str, policies: usize, cluster_policies: usize, other_pods: usize) -> PolicyPlan {
        PolicyPlan {
            namespace: format!("{tag}-net"),
            policies: policies.max(1),
            cluster_policies,
            other_pods: other_pods.clamp(1, 50),
        }
    }

    /// The ClusterNetworkPolicies, `(name, spec)`.
    fn cluster_policy_specs(&self) -> Vec<(String, Value)> {
        if self.cluster_policies == 0 {
            return vec![];
        }
        let own_ns = json!({"matchLabels": {"kubernetes.io/metadata.name": self.namespace}});
        let pods = |kv: Value| json!({"pods": {"namespaceSelector": own_ns, "podSelector": {"matchLabels": kv}}});
        let bench = pods(json!({CNP_LABEL: "bench"}));
        // Peers the benchmark pods are not: a namespace label nobody has
        // (ingress peers have no `networks`), addresses nobody uses.
        let no_ns = json!({"namespaces": {"matchLabels": {"bench": "nobody"}}});
        let unused = json!({"networks": ["100.64.0.0/10", "fd00:dead::/32"]});
        let tag = self.namespace.trim_end_matches("-net");
        let mut specs = vec![
            (
                format!("{tag}-bench-admin"),
                json!({"tier": "Admin", "priority": 10, "subject": bench,
                    "ingress": [{"name": "deny-unused", "action": "Deny", "from": [no_ns]},
                                {"name": "to-netpol", "action": "Pass", "from": [bench]}],
                    "egress": [{"name": "deny-unused", "action": "Deny", "to": [unused]},
                               {"name": "to-netpol", "action": "Pass", "to": [bench]}]}),
            ),
            (
                format!("{tag}-bench-baseline"),
                json!({"tier": "Baseline", "priority": 10, "subject": bench,
                    "ingress": [{"name": "default-deny", "action": "Deny", "from": [{"namespaces": {}}]}]}),
            ),
        ];
        for k in 2..self.cluster_policies {
            let (tier, action) = if k.is_multiple_of(2) { ("Admin", "Deny") } else { ("Baseline", "Accept") };
            let from = pods(json!({"role": format!("client-{}", k % 13)}));
            specs.push((
                format!("{tag}-other-{k:03}"),
                json!({"tier": tier, "priority": 20 + k, "subject": pods(json!({"app": format!("other-{}", k % self.other_pods)})),
                    "ingress": [{"name": "r", "action": action, "from": [from],
                                 "protocols": [{"tcp": {"destinationPort": {"number": 10000 + k}}}]}]}),
            ));
        }
        specs
    }

    fn policy_objects(&self) -> Vec<NetworkPolicy> {
        let tcp = |p: u16| json!({"protocol": "TCP", "port": p});
        let bench = json!({"podSelector": {"matchLabels": {"app": BENCH_APP}}});
        let ports: Vec<Value> = [IPERF_PORT, RR_PORT, CONN_PORT].into_iter().map(tcp).collect();
        let mut specs = vec![(
            "bench-allow".to_string(),
            json!({"podSelector": {"matchLabels": {"app": BENCH_APP}}, "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [bench], "ports": ports}], "egress": [{"to": [bench], "ports": ports}]}),
        )];
        for k in 1..self.policies {
            let app = format!("other-{}", k % self.other_pods);
            let from = json!({"podSelector": {"matchLabels": {"role": format!("client-{}", k % 13)}}});
            let mut spec = json!({"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [from], "ports": [tcp(8000 + (k % 1000) as u16)]}]});
            if k % 4 == 0 {
                let to =
                    json!({"podSelector": {"matchLabels": {"app": format!("other-{}", (k + 1) % self.other_pods)}}});
                spec["policyTypes"] = json!(["Ingress", "Egress"]);
                spec["egress"] = json!([{"to": [to], "ports": [tcp(9000 + (k % 100) as u16)]}]);
            }
            specs.push((format!("other-{k:05}"), spec));
        }
        specs
            .into_iter()
            .map(|(name, spec)| {
                serde_json::from_value(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": name, "namespace": self.namespace}, "spec": spec}))
                .expect("a valid NetworkPolicy")
            })
            .collect()
    }

    fn pod_object(&self, name: &str, node: &str, labels: Value) -> Pod {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {"nodeName": node, "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "bench.invalid/app:1"}]}}))
        .expect("a valid Pod")
    }

    /// The namespace, the policies and the API-only pods: node `n`'s pod
    /// `i` at 10.244.n.(200 + i), which the plugin (allocating from the
    /// bottom of the /24) never hands out here.
    async fn create(&self, c: &Client, nodes: &[String]) -> Result<(), kube::Error> {
        create_namespace(c, &self.namespace, &json!({"bench": "net"})).await?;
        let api: Api<NetworkPolicy> = Api::namespaced(c.clone(), &self.namespace);
        futures::stream::iter(self.policy_objects().into_iter().map(|p| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &p).await }
        }))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
        let cnps = cluster_policies(c);
        futures::stream::iter(self.cluster_policy_specs().into_iter().map(|(name, spec)| {
            let cnps = cnps.clone();
            async move { cnps.create(&PostParams::default(), &cluster_policy(&name, spec)).await }
        }))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
        let mut pods = Vec::new();
        for (ni, node) in nodes.iter().enumerate() {
            let n = ni + 1;
            for i in 0..self.other_pods {
                let ips: [IpAddr; 2] = [
                    format!("10.244.{n}.{}", 200 + i).parse().expect("IPv4"),
                    format!("fd00:10:244:{n}::{:x}", 200 + i).parse().expect("IPv6"),
                ];
                let pod = self.pod_object(
                    &format!("other-n{n}-{i}"),
                    node,
                    json!({"app": format!("other-{i}"), "role": format!("client-{}", i % 13)}),
                );
                pods.push((pod, ips));
            }
        }
        futures::stream::iter(pods.iter().map(|(pod, ips)| create_running_pod(c, pod, ips)))
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// A benchmark pod, as the scheduler leaves it before its sandbox
    /// exists; returns its UID, which the runtime passes to ADD.
    async fn create_bench_pod(&self, c: &Client, node: &str, name: &str) -> Result<String, kube::Error> {
        let api: Api<Pod> = Api::namespaced(c.clone(), &self.namespace);
        let pod = api.create(&PostParams::default(), &self.pod_object(name, node, json!({"app": BENCH_APP}))).await?;
        Ok(pod.metadata.uid.unwrap_or_default())
    }

    /// The two benchmark pods' status, with the addresses the plugin gave them.
    async fn run_bench_pods(&self, c: &Client, pods: &[(&str, [&String; 2])]) -> Result<(), kube::Error> {
        for (name, ips) in pods {
            let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().expect("a pod address")).collect();
            set_running(c, &self.namespace, name, &ips).await?;
        }
        Ok(())
    }

    /// kubectl commands deleting all of it (no controller manager runs to
    /// delete a namespace's contents, no kubelet to confirm pod deletion).
    fn cleanup(&self) -> Vec<Vec<String>> {
        let ns = self.namespace.clone();
        let cnps = self.cluster_policy_specs().into_iter().map(|(name, _)| name);
        let delete_cnps =
            ["delete", "clusternetworkpolicies", "--wait=false"].map(String::from).into_iter().chain(cnps);
        let cnps: Vec<Vec<String>> = (self.cluster_policies > 0).then(|| delete_cnps.collect()).into_iter().collect();
        cnps.into_iter()
            .chain(vec![
                vec![
                    "delete".into(),
                    "networkpolicies".into(),
                    "--all".into(),
                    "-n".into(),
                    ns.clone(),
                    "--wait=false".into(),
                ],
                vec![
                    "delete".into(),
                    "pods".into(),
                    "--all".into(),
                    "-n".into(),
                    ns,
                    "--grace-period=0".into(),
                    "--force".into(),
                    "--wait=false".into(),
                ],
            ])
            .collect()
    }
}

/// ADD through the real plugin, configured as the agent's conflist does;
/// `k8s_pod` (namespace, UID) becomes `K8S_POD_NAMESPACE` and `K8S_POD_UID` in
/// `CNI_ARGS`, as kubelet passes them.
fn weft_pod(
    weft: &Path,
    node: &Node,
    tag: &str,
    node_json: &Path,
    ipam: &Path,
    k8s_pod: Option<(&str, &str)>,
) -> (TestNs, String, String) {
    let pod = TestNs::new(&format!("{tag}-p{}", node.n));
    let conf = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft", "nodeConfig": node_json, "dataDir": ipam});
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.ns.name()])
        .arg(weft)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("{tag}-pod{}", node.n))
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((ns, uid)) = k8s_pod {
        cmd.env("CNI_ARGS", format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME=bench-{};K8S_POD_UID={uid}", node.n));
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {}: {e}", weft.display()));
    let _ = child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes());
    let out = child.wait_with_output().expect("wait for the plugin");
    assert!(
        out.status.success(),
        "weft ADD failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("ADD result is JSON");
    let ips: Vec<String> = result["ips"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["address"].as_str()?.split('/').next().map(String::from)).collect())
        .unwrap_or_default();
    let v4 = ips.iter().find(|i| i.contains('.')).cloned().expect("an IPv4 pod address");
    let v6 = ips.iter().find(|i| i.contains(':')).cloned().expect("an IPv6 pod address");
    (pod, v4, v6)
}

/// CPU time of the whole machine from /proc/stat, in seconds: busy
/// (everything but idle and iowait) and the interrupt part of it (irq +
/// softirq), which no process is charged for.
#[derive(Clone, Copy, Default)]
struct CpuTimes {
    busy: f64,
    irq: f64,
}

impl CpuTimes {
    fn now() -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .map(|l| l.split_whitespace().filter_map(|t| t.parse().ok()).collect())
            .unwrap_or_default();
        // SAFETY: sysconf reads a constant of the C library.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let t = |i: usize| ticks.get(i).copied().unwrap_or(0.0) / hz;
        // user nice system idle iowait irq softirq steal
        CpuTimes { busy: t(0) + t(1) + t(2) + t(5) + t(6) + t(7), irq: t(5) + t(6) }
    }

    fn since(self, before: CpuTimes) -> CpuTimes {
        CpuTimes { busy: self.busy - before.busy, irq: self.irq - before.irq }
    }
}

/// Which end of a measurement: an index into the placement.
const CLIENT: usize = 0;
const SERVER: usize = 1;

/// The CPUs of the client and the server end of every measurement
/// (`--cpus`), set once at start; `None` when the machine lacks one of
/// them, and the scheduler places both ends. A fixed placement removes one
/// variable; it does not remove the spread of throughput on a 2-CPU VM
/// (bench/README.md, "CPU placement").
static PLACEMENT: std::sync::OnceLock<Option<[usize; 2]>> = std::sync::OnceLock::new();

fn placement() -> Option<[usize; 2]> {
    PLACEMENT.get().copied().flatten()
}

/// Binds the calling thread to the CPU of `end` ([`CLIENT`] or [`SERVER`]).
fn pin_thread(end: usize) {
    let Some(cpus) = placement() else { return };
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpus[end]).is_ok() {
        // Best effort: an unpinned measurement is still a measurement.
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// `iperf3 -A`: the CPU of `end`, for its command line.
fn iperf_affinity(end: usize) -> Vec<String> {
    placement().map_or_else(Vec::new, |cpus| vec!["-A".into(), cpus[end].to_string()])
}

/// One iperf3 client run against a one-off server in the peer namespace
/// (`-J`, with `how`: duration or size, streams, congestion control),
/// retried until the server is up: its JSON, and the machine's CPU time
/// over the client's run.
fn iperf_run(w: &Wired, dst: &str, how: &[&str], timeout_s: u32) -> (Value, CpuTimes) {
    let mut server = Command::new("ip")
        .args(["netns", "exec", w.server.name(), "iperf3", "-s", "-1"])
        .args(iperf_affinity(SERVER))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start iperf3 server");
    let mut out = None;
    let timeout = timeout_s.to_string();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let affinity = iperf_affinity(CLIENT);
        let mut argv = vec!["timeout", &timeout, "iperf3", "-c", dst, "-J"];
        argv.extend(affinity.iter().map(String::as_str));
        argv.extend_from_slice(how);
        let before = CpuTimes::now();
        let o = w.client.exec(&argv);
        let cpu = CpuTimes::now().since(before);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if o.status.success() && v["end"]["sum_received"]["bits_per_second"].is_number() {
            out = Some((v, cpu));
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    out.unwrap_or_else(|| panic!("iperf3 to {dst} from {} failed 20 times", w.client.name()))
}

/// One iperf3 run: (Gbit/s received, sender cores per Gbit/s, receiver cores per Gbit/s).
fn iperf(w: &Wired, dst: &str, secs: u32, streams: u32, cc: &str) -> (f64, f64, f64) {
    let (t, p) = (secs.to_string(), streams.to_string());
    let (v, _) = iperf_run(w, dst, &["-t", &t, "-P", &p, "-C", cc], secs + 20);
    let gbps = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
    let cpu = |k: &str| v["end"]["cpu_utilization_percent"][k].as_f64().unwrap_or(0.0) / 100.0;
    let per = |c: f64| if gbps > 0.0 { c / gbps } else { 0.0 };
    (gbps, per(cpu("host_total")), per(cpu("remote_total")))
}

/// TCP request/response: 64-byte messages echoed over one connection for
/// `secs`; returns (p50, p99) round trip in microseconds.
fn ping_pong(w: &Wired, dst: &str, secs: u32) -> (f64, f64) {
    let ip: std::net::IpAddr = dst.parse().expect("an address");
    let addr = SocketAddr::new(ip, RR_PORT);
    let server_ns = NetNs::open(&w.server.path()).expect("server namespace");
    let client_ns = NetNs::open(&w.client.path()).expect("client namespace");
    // Sockets are made on threads inside the namespaces and used from here.
    let listener = server_ns.run(|| TcpListener::bind(addr)).expect("thread").expect("bind");
    let echo = std::thread::spawn(move || {
        pin_thread(SERVER);
        let Ok((mut c, _)) = listener.accept() else { return };
        let _ = c.set_nodelay(true);
        let mut buf = [0u8; 64];
        while c.read_exact(&mut buf).is_ok() && c.write_all(&buf).is_ok() {}
    });
    let mut c = client_ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("thread")
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.set_nodelay(true).expect("nodelay");
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [7u8; 64];
    let mut rtts = Vec::new();
    // The client on its own pinned thread, not this one (which runs on).
    std::thread::scope(|scope| {
        scope.spawn(|| {
            pin_thread(CLIENT);
            let end = Instant::now() + Duration::from_secs(secs.into());
            while Instant::now() < end {
                let t = Instant::now();
                if c.write_all(&buf).is_err() || c.read_exact(&mut buf).is_err() {
                    break;
                }
                rtts.push(t.elapsed());
            }
        });
    });
    drop(c);
    let _ = echo.join();
    rtts.sort();
    let us = |q| weft_bench::stats::percentile(&rtts, q).as_secs_f64() * 1e6;
    (us(0.5), us(0.99))
}

/// A TCP server inside the server namespace at `addr`: each connection gets
/// its first byte echoed and is closed, one connection after another.
/// Dropping it stops the server.
struct EchoServer {
    listener: Arc<TcpListener>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start(ns: &TestNs, addr: SocketAddr) -> EchoServer {
        let netns = NetNs::open(&ns.path()).expect("server namespace");
        // The socket is made on a thread inside the namespace and used from anywhere.
        let listener = netns
            .run(|| TcpListener::bind(addr))
            .expect("thread")
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()));
        let listener = Arc::new(listener);
        let l = Arc::clone(&listener);
        let thread = std::thread::spawn(move || {
            pin_thread(SERVER);
            while let Ok((mut c, _)) = l.accept() {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut b = [0u8; 1];
                if c.read_exact(&mut b).is_ok() {
                    let _ = c.write_all(&b);
                }
            }
        });
        EchoServer { listener, thread: Some(thread) }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // shutdown(2) on a listening socket wakes a blocked accept(2) with
        // EINVAL on Linux: the loop ends without a connection to unblock it.
        // SAFETY: the descriptor is owned by `self.listener`, alive here.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One short connection: connect, send a byte, read it back, close.
fn exchange(addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut c = TcpStream::connect_timeout(&addr, timeout)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(timeout))?;
    c.write_all(&[1])?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b)
}

/// `exchange` from inside the client namespace.
fn exchange_from(client: &TestNs, addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    NetNs::open(&client.path()).expect("client namespace").run(|| exchange(addr, timeout)).expect("thread")
}

/// Waits (60 s at most) until a connection to the connection-rate port
/// works for both families: reachability where ICMP is not allowed.
fn wait_tcp(w: &Wired, what: &str, logs: &[&Proc]) {
    for d in &w.dst {
        let addr = SocketAddr::new(d.parse().expect("an address"), CONN_PORT);
        let _server = EchoServer::start(&w.server, addr);
        let mut last = None;
        let ok = eventually(Duration::from_secs(60), || {
            last = exchange_from(&w.client, addr, Duration::from_secs(1)).err();
            last.is_none()
        });
        if !ok {
            let tails: Vec<String> = logs.iter().map(|p| format!("{}:\n{}", p.name, p.log_tail())).collect();
            panic!(
                "{what}: no TCP connection to {addr} from {} in 60 s ({last:?})\n{}",
                w.client.name(),
                tails.join("\n")
            );
        }
    }
}

/// Before measuring with policies: per family, a port the policy does not
/// allow must not connect (3 s), the allowed one must. Returns what it saw.
fn check_enforced(w: &Wired) -> Result<String, String> {
    let mut seen = Vec::new();
    for d in &w.dst {
        let ip: IpAddr = d.parse().expect("an address");
        let (allowed, denied) = (SocketAddr::new(ip, CONN_PORT), SocketAddr::new(ip, DENIED_PORT));
        let _servers = (EchoServer::start(&w.server, allowed), EchoServer::start(&w.server, denied));
        match exchange_from(&w.client, denied, Duration::from_secs(3)) {
            Ok(()) => return Err(format!("NetworkPolicy not enforced: {denied} (not allowed) connected")),
            Err(e) => seen.push(format!("{denied} blocked ({})", e.kind())),
        }
        exchange_from(&w.client, allowed, Duration::from_secs(5))
            .map_err(|e| format!("the allowed {allowed} failed after the check: {e}"))?;
        seen.push(format!("{allowed} allowed"));
    }
    Ok(seen.join(", "))
}

/// New connections per second: this program's client, inside the client
/// namespace, opens one connection after another to `dst` for `run_for`
/// (connect, a byte each way, close).
fn conn_rate(w: &Wired, dst: &str, run_for: Duration) -> f64 {
    let addr = SocketAddr::new(dst.parse().expect("an address"), CONN_PORT);
    let _server = EchoServer::start(&w.server, addr);
    let client = NetNs::open(&w.client.path()).expect("client namespace");
    let (n, took, err) = client
        .run(|| {
            pin_thread(CLIENT);
            let start = Instant::now();
            let end = start + run_for;
            let mut n = 0u64;
            while Instant::now() < end {
                if let Err(e) = exchange(addr, Duration::from_secs(5)) {
                    return (n, start.elapsed(), Some(e));
                }
                n += 1;
            }
            (n, start.elapsed(), None)
        })
        .expect("thread");
    if let Some(e) = err {
        panic!("connection {} to {addr} from {} failed: {e}", n + 1, w.client.name());
    }
    n as f64 / took.as_secs_f64()
}

/// The client side of every setup alike: sequential short connections may
/// not run out of ports while their predecessors sit in TIME_WAIT.
fn prepare_client(ns: &TestNs) {
    ns.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"]);
    ns.exec_ok(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
}

/// The classes a profile's symbols are grouped into, in the report's order.
const CLASSES: [&str; 6] = ["netfilter", "tcp", "copy", "forward, veth, xmit", "vxlan, udp", "other"];

/// The class of a kernel or user symbol.
fn class_of(sym: &str) -> &'static str {
    let s = sym.trim_start_matches('_');
    let any = |prefixes: &[&str]| prefixes.iter().any(|p| s.starts_with(p));
    if any(&[
        "nft_",
        "nf_",
        "nft",
        "ipv4_conntrack",
        "ipv6_conntrack",
        "hash_conntrack",
        "xt_",
        "ipt_",
        "ip6t_",
        "nla_",
    ]) || s.contains("conntrack")
    {
        "netfilter"
    } else if any(&["tcp", "inet_csk", "bictcp", "cubictcp", "bbr_", "inet6_csk"]) {
        "tcp"
    } else if s.contains("copy") || s.contains("memcpy") || s.contains("memmove") || s.contains("rep_movs") {
        "copy"
    } else if any(&["vxlan", "udp", "ip_tunnel", "iptunnel", "udp_tunnel"]) {
        "vxlan, udp"
    } else if any(&[
        "veth",
        "dev_",
        "netif_",
        "napi",
        "process_backlog",
        "net_rx_action",
        "ip_forward",
        "ip6_forward",
        "ip_rcv",
        "ip6_rcv",
        "ip_output",
        "ip6_output",
        "ip_finish_output",
        "ip6_finish_output",
        "neigh_",
        "fib",
        "ip_route",
        "ip6_route",
        "rt6_",
        "br_",
        "skb_",
        "ip_local",
        "ip6_input",
        "ipv6_rcv",
        "eth_type_trans",
        "validate_xmit",
        "sch_direct_xmit",
        "qdisc",
    ]) {
        "forward, veth, xmit"
    } else {
        "other"
    }
}

/// What a profiled run of traffic measured.
enum Measured {
    Gbps(f64),
    ConnPerS(f64),
}

/// Traffic to profile.
type TrafficRun<'a> = dyn FnOnce() -> Measured + 'a;

/// The sampling event of a perf recording (`cpu-clock:ppp` where the
/// machine has no hardware PMU).
fn perf_event(data: &Path) -> String {
    let out = Command::new("timeout").args(["60", "perf", "evlist", "-i"]).arg(data).output();
    String::from_utf8_lossy(&out.map(|o| o.stdout).unwrap_or_default()).lines().next().unwrap_or("").to_string()
}

/// A system-wide CPU profile (`perf record -a -g`) while `run` generates
/// the traffic (one 1-stream iperf3 run, or a connection-rate run): per
/// class, its share of the samples taken in iperf3, this program (the
/// connection-rate client and server), ksoftirqd and interrupted idle
/// (swapper), where this traffic's kernel work runs; the share under
/// `nf_hook_slow` (every netfilter hook's work, callees included: what the
/// call graph adds to the by-name classes, which miss work charged to lock
/// and irq-enable points); the top symbols; the sampling event; and what
/// `run` measured.
fn profile(run: impl FnOnce() -> Measured) -> Result<SystemProfile, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let mut recording = perf::Recording::start(&["-a", "-g", "-F", "1999"], &dir.path().join("perf.data"))?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(refused) = recording.exited() {
        return Err(refused);
    }
    let measured = run();
    let data = recording.stop()?;
    let out = Command::new("timeout")
        .args(["180", "perf", "report", "--children", "--sort", "comm,symbol", "--stdio", "-g", "none", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    if !out.status.success() {
        return Err(format!("perf report failed ({})", out.status));
    }
    let event = perf_event(&data);
    let mut classes = vec![0.0f64; CLASSES.len()];
    let (mut ours, mut all, mut under_nf_hook) = (0.0, 0.0, 0.0);
    let mut top: Vec<(String, f64)> = Vec::new();
    // Lines: "children%  self%  comm  [k] symbol  ...".
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((children, rest)) = line.trim_start().split_once('%') else { continue };
        let Some((pct, rest)) = rest.trim_start().split_once('%') else { continue };
        let (Ok(children), Ok(pct)) = (children.parse::<f64>(), pct.parse::<f64>()) else { continue };
        all += pct;
        let Some(at) = rest.find(" [k] ").or_else(|| rest.find(" [.] ")) else { continue };
        let comm = rest[..at].trim();
        let sym = rest[at + 5..].split_whitespace().next().unwrap_or("");
        let traffic = ["iperf3", "net-bench"].contains(&comm);
        if !(traffic || comm.starts_with("ksoftirqd") || comm.starts_with("swapper")) {
            continue;
        }
        if sym.starts_with("nf_hook_slow") {
            under_nf_hook += children;
        }
        // Idle loops are no work: what interrupted them is.
        if comm.starts_with("swapper") && class_of(sym) == "other" {
            continue;
        }
        ours += pct;
        classes[CLASSES.iter().position(|c| *c == class_of(sym)).unwrap_or(CLASSES.len() - 1)] += pct;
        match top.iter_mut().find(|(s, _)| s == sym) {
            Some((_, p)) => *p += pct,
            None => top.push((sym.to_string(), pct)),
        }
    }
    if ours <= 0.0 {
        return Err("perf report held no samples of iperf3, ksoftirqd or softirq work".into());
    }
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let share = |(s, p): &(String, f64)| (s.clone(), p / ours);
    let (gbps, conn_per_s) = match measured {
        Measured::Gbps(g) => (Some(g), None),
        Measured::ConnPerS(c) => (None, Some(c)),
    };
    Ok(SystemProfile {
        gbps,
        conn_per_s,
        share_of_all_samples: ours / all.max(1e-9),
        classes: CLASSES.iter().zip(&classes).map(|(c, p)| (c.to_string(), p / ours)).collect(),
        under_nf_hook_slow: Some(under_nf_hook / ours),
        top: top.iter().take(12).map(share).collect(),
        // The netfilter functions apart: the copies and irq-enable points
        // that lead the list are the same in every setup.
        top_netfilter: top.iter().filter(|(s, _)| class_of(s) == "netfilter").take(5).map(share).collect(),
        event,
    })
}

fn main() {
    let args = Args::parse();
    let [client, server] = args.cpus[..] else {
        eprintln!("net-bench: --cpus takes two CPUs, CLIENT,SERVER, not {:?}", args.cpus);
        std::process::exit(2);
    };
    let has = |cpu: usize| std::thread::available_parallelism().is_ok_and(|n| n.get() > cpu);
    let _ = PLACEMENT.set((has(client) && has(server)).then_some([client, server]));
    if !nix::unistd::geteuid().is_root() {
        eprintln!("net-bench: needs root (network namespaces)");
        std::process::exit(2);
    }
    let (secs, rr_secs, reps) = if args.quick { (1, 1, 1) } else { (args.secs, args.rr_secs, args.reps) };
    let effort = Effort { secs, rr_secs, reps, quick: args.quick, profile: args.profile };
    let families: Vec<(usize, &str)> = if args.quick { vec![(0, "IPv4")] } else { vec![(0, "IPv4"), (1, "IPv6")] }
        .into_iter()
        .filter(|(_, f)| args.family.as_ref().is_none_or(|only| only == f))
        .collect();
    let policies = match args.policies {
        0 if args.quick => 20,
        0 => 1000,
        n => n,
    };
    let plan = plan(args.quick, policies, args.only.as_deref());
    eprintln!("net-bench: lab and control plane");
    let lab = Lab::new(&args.k8s_bin);
    if plan.iter().any(|(_, s)| matches!(s, Setup::Paired(..))) {
        // As a cluster running weft has it (the chart installs it).
        install_cluster_policy_crd(&lab.cp, Path::new(CNP_CRD_TEMPLATE));
    }
    // The agent's offload choice is the kernel's default (observe::kernel::offload_default):
    // on from 5.7. Hand-made VXLAN uses the same; "other offload" the opposite.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut ver = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    let chosen_offload = (ver.next().unwrap_or(0), ver.next().unwrap_or(0)) >= (5, 7);

    let run_started = Instant::now();
    let mut rows = Vec::new();
    let mut profile_error = None;
    let mut failed: Vec<FailedSetup> = Vec::new();
    let mut paired_groups: Vec<PairedGroup> = Vec::new();
    for (k, (topo, s)) in plan.iter().enumerate() {
        let started = Instant::now();
        let mut w = match wire(&lab, &args, &format!("s{k}"), *topo, *s, chosen_offload) {
            Ok(w) => w,
            Err(first) => {
                eprintln!("net-bench: {} / {} failed, skipped: {first}", topo.label(), s.label());
                failed.push(FailedSetup { topology: topo.label().into(), setup: s.label(), error: first });
                continue;
            }
        };
        prepare_client(&w.client);
        if let Setup::Paired(backend, n) = *s {
            match measure_paired(&lab, &mut w, backend, n, &families, &args) {
                Ok(groups) => paired_groups.extend(groups),
                Err(e) => {
                    eprintln!("net-bench: {} failed, skipped: {e}", s.label());
                    failed.push(FailedSetup { topology: topo.label().into(), setup: s.label(), error: e });
                }
            }
            tear_down(&lab, w);
            eprintln!("net-bench: {} took {:.0?}", s.label(), started.elapsed());
            continue;
        }
        rows.extend(measure(&w, *topo, *s, &families, &effort, &mut profile_error));
        tear_down(&lab, w);
        eprintln!("net-bench: {} / {} took {:.0?}", topo.label(), s.label(), started.elapsed());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (kernel, cpus) = results::machine();
    results::print_json(&NetRun {
        kernel,
        cpus,
        secs,
        rr_secs: Some(rr_secs),
        reps,
        underlay_mtu: UNDERLAY_MTU,
        pinned_cpus: placement(),
        chosen_offload,
        policies,
        profiled: args.profile,
        profile_error,
        seconds: run_started.elapsed().as_secs_f64(),
        loadavg_end: load.trim().into(),
        failed,
        rows,
        paired: paired_groups,
    });
}

/// The paired groups of a paired setup, one per family: its rulesets
/// saved and its agents stopped first.
fn measure_paired(
    lab: &Lab,
    w: &mut Wired,
    backend: &str,
    policies: usize,
    families: &[(usize, &str)],
    args: &Args,
) -> Result<Vec<PairedGroup>, String> {
    let loaded = net_paired::Loaded { policies, cluster: cluster_count(args) };
    let rulesets = net_paired::freeze(w, &lab.cp, loaded.cluster > 0)?;
    let groups = families.iter().map(|&(fi, family)| {
        let dst = w.dst[fi].clone();
        // Node 1's underlay address on segment A (`Lab::node`).
        net_paired::group(w, &rulesets, backend, family, &dst, "198.51.100.11", loaded, &pair_plan(args, family))
    });
    Ok(groups.collect())
}

/// How much a paired group measures. The paired groups profile weft and
/// every variant in full mode; the setups apart only when asked.
fn pair_plan(args: &Args, family: &str) -> net_paired::Plan {
    net_paired::Plan {
        bytes: if args.quick { 400_000_000 } else { 2_000_000_000 },
        cc: "cubic",
        conn_for: Duration::from_millis(if args.quick { 300 } else { 500 }),
        // Five transfers a variant: the fewest a throughput quantile is
        // estimated from (`stats::QUANTILE_MIN_SAMPLES`).
        min_rounds: if args.quick { 2 } else { weft_bench::stats::QUANTILE_MIN_SAMPLES },
        budget: match args.pair_budget {
            Duration::ZERO if args.quick => Duration::from_secs(15),
            Duration::ZERO => Duration::from_secs(60),
            b => b,
        },
        target: 0.03,
        profile: family == "IPv4" && (!args.quick || args.profile),
        only_variants: args.variants.clone(),
    }
}

/// The setups to measure, in order: `--quick`'s shorter list, and only
/// those whose label contains `only` if given.
fn plan(quick: bool, policies: usize, only: Option<&str>) -> Vec<(Topology, Setup)> {
    use Setup::*;
    // Dropped from the plan as they said nothing new run after run: `weft
    // vxlan, other offload` (bench/vxlan-offload.sh measures the offload
    // choice) and bare / weft vxlan on two segments (auto is vxlan there).
    let plan: Vec<(Topology, Setup)> = if quick {
        [
            Bare,
            HandRoutes,
            Weft("routes", true),
            HandVxlan,
            Weft("vxlan", true),
            Paired("routes", policies),
            Paired("vxlan", policies),
        ]
        .iter()
        .map(|s| (Topology::OneSegment, *s))
        .collect()
    } else {
        let one = [
            Bare,
            HandRoutes,
            Weft("routes", true),
            HandVxlan,
            Weft("vxlan", true),
            HandRoutesVxlanMtu,
            Weft("auto", true),
            Paired("routes", policies),
            Paired("vxlan", policies),
        ];
        let two = [HandVxlan, Weft("auto", true)];
        one.iter().map(|s| (Topology::OneSegment, *s)).chain(two.iter().map(|s| (Topology::Routed, *s))).collect()
    };

    plan.into_iter().filter(|(_, s)| only.is_none_or(|o| s.label().contains(o))).collect()
}

/// Wires setup `s`; a setup that cannot be wired (or, with policies, is
/// not enforced) gives the first line of its panic, its namespaces gone as
/// it unwound.
fn wire(lab: &Lab, args: &Args, tag: &str, topo: Topology, s: Setup, chosen_offload: bool) -> Result<Wired, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| setup(lab, args, tag, topo, s, chosen_offload))).map_err(
        |e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|m| m.to_string()))
                .unwrap_or_else(|| "panicked".into());
            msg.lines().next().unwrap_or("").to_string()
        },
    )
}

/// Deletes what the setup created in the API server, then its namespaces.
fn tear_down(lab: &Lab, w: Wired) {
    for cmd in &w.cleanup {
        let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
        lab.cp.kubectl_ok(&argv);
    }
    drop(w);
}

/// How long and how often each setup is measured.
struct Effort {
    secs: u32,
    rr_secs: u32,
    reps: usize,
    quick: bool,
    profile: bool,
}

impl Effort {
    /// The congestion controls measured: bbr for IPv4 only, as what it shows
    /// does not depend on the family and the full run has to fit its time (README).
    fn ccs(&self, family: &str) -> &'static [&'static str] {
        if self.quick || family == "IPv6" { &["cubic"] } else { &["cubic", "bbr"] }
    }
}

/// The rows of one wired setup: throughput with 1 and 4 streams per
/// family and congestion control, latency and connection rate, and (when
/// profiling) perf's view; a failed profile is kept in `profile_error`.
fn measure(
    w: &Wired,
    topo: Topology,
    s: Setup,
    families: &[(usize, &str)],
    e: &Effort,
    profile_error: &mut Option<String>,
) -> Vec<NetRow> {
    let mut rows = Vec::new();
    for &(fi, family) in families {
        let dst = &w.dst[fi].clone();
        for (ci, cc) in e.ccs(family).iter().enumerate() {
            let mut row = NetRow {
                topology: topo.label().into(),
                setup: s.label(),
                family: family.into(),
                cc: cc.to_string(),
                pod_mtu: w.pod_mtu,
                offload: w.offload,
                // Latency and the connection rate do not depend on the
                // congestion control of connections that never have more
                // than 64 bytes in flight: measured once per family (the
                // namespace's default), listed in the first row.
                samples: measure_samples(w, dst, cc, e, ci == 0),
                notes: w.notes.clone(),
                profile: None,
                profile_conn: None,
                unselected: None,
            };
            if e.profile && ci == 0 && fi == 0 && topo == Topology::OneSegment && s.profiled() {
                profile_row(&mut row, w, dst, e, profile_error);
            }
            eprintln!(
                "  {} / {} / {family} / {cc}: {:?} Gbit/s, {:?} conn/s",
                row.topology, row.setup, row.samples.gbps_1, row.samples.conn_per_s
            );
            rows.push(row);
        }
    }
    rows
}

/// Every repetition of throughput (1 and 4 streams) with congestion
/// control `cc`, and with `latency`, of request/response and the
/// connection rate.
fn measure_samples(w: &Wired, dst: &str, cc: &str, e: &Effort, latency: bool) -> NetSamples {
    let mut m = NetSamples::default();
    for (streams, gbps, tx, rx) in
        [(1u32, &mut m.gbps_1, &mut m.cpu_tx_1, &mut m.cpu_rx_1), (4, &mut m.gbps_4, &mut m.cpu_tx_4, &mut m.cpu_rx_4)]
    {
        for _ in 0..e.reps {
            let (g, t, r) = iperf(w, dst, e.secs, streams, cc);
            gbps.push(g);
            tx.push(t);
            rx.push(r);
        }
    }
    if latency {
        (m.rr_p50_us, m.rr_p99_us) = (0..e.reps).map(|_| ping_pong(w, dst, e.rr_secs)).unzip();
        m.conn_per_s = (0..e.reps).map(|_| conn_rate(w, dst, Duration::from_secs(e.rr_secs.into()))).collect();
    }
    m
}

/// perf's view of a row's setup (cubic): throughput, and new connections,
/// which cross every rule that established packets skip.
fn profile_row(row: &mut NetRow, w: &Wired, dst: &str, e: &Effort, profile_error: &mut Option<String>) {
    let secs = e.secs.max(2);
    let cc = row.cc.clone();
    let throughput: Box<TrafficRun> = Box::new(|| Measured::Gbps(iperf(w, dst, secs, 1, &cc).0));
    let conns: Box<TrafficRun> = Box::new(|| Measured::ConnPerS(conn_rate(w, dst, Duration::from_secs(secs.into()))));
    for (key, run) in [("profile", throughput), ("profile_conn", conns)] {
        match profile(run) {
            Ok(p) if key == "profile" => row.profile = Some(p),
            Ok(p) => row.profile_conn = Some(p),
            Err(err) => {
                eprintln!("  {key} of {}: {err}", row.setup);
                profile_error.get_or_insert(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_group_chain_is_read_from_the_verdict_map() {
        let listing = "table inet weft-policy {
	map egress4 {
		type ipv4_addr : verdict
		elements = { 10.244.1.2 : jump eg-3f2a, 10.244.1.200 : jump eg-77 }
	}
}";
        assert_eq!(map_group(listing, "10.244.1.2").as_deref(), Some("eg-3f2a"));
        assert_eq!(map_group(listing, "10.244.1.200").as_deref(), Some("eg-77"));
        assert_eq!(map_group(listing, "10.244.1.3"), None);
        let plan = PolicyPlan::new("s9", 20, 5, 4);
        let specs = plan.cluster_policy_specs();
        assert_eq!(specs.len(), 5);
        assert_eq!((specs[0].0.as_str(), &specs[0].1["tier"]), ("s9-bench-admin", &json!("Admin")));
        assert_eq!(specs[0].1["subject"]["pods"]["podSelector"]["matchLabels"][CNP_LABEL], "bench");
        assert_eq!(specs[1].1["tier"], "Baseline");
        assert_eq!(
            specs[4].1["subject"]["pods"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "s9-net",
            "subjects stay in the setup's namespace"
        );
        let cleanup = plan.cleanup();
        assert_eq!(cleanup[0][..2], ["delete", "clusternetworkpolicies"]);
        assert_eq!(cleanup[0].len(), 3 + 5);
        assert_eq!(PolicyPlan::new("s9", 20, 0, 4).cleanup().len(), 2, "no cluster policies: none to delete");
    }

    #[test]
    fn plan_is_shorter_when_quick_and_filtered_by_label() {
        assert_eq!(plan(true, 20, None).len(), 7);
        assert_eq!(plan(false, 1000, None).len(), 11);
        let paired = plan(false, 1000, Some("paired"));
        assert_eq!(paired.len(), 2);
        assert!(paired.iter().all(|(_, s)| matches!(s, Setup::Paired(_, 1000))));
    }

    #[test]
    fn bench_run_command_line_parses() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let a =
            Args::try_parse_from(["net-bench", "--weft", "w", "--agent", "a", "--k8s-bin", "k", "--quick"]).unwrap();
        assert!(a.quick);
        assert_eq!((a.secs, a.rr_secs, a.reps, a.pair_budget, a.family), (2, 1, 2, Duration::ZERO, None));
        let a = Args::try_parse_from([
            "net-bench",
            "--weft",
            "w",
            "--agent",
            "a",
            "--k8s-bin",
            "k",
            "--family",
            "IPv6",
            "--pair-budget",
            "90",
        ])
        .unwrap();
        assert_eq!((a.family.as_deref(), a.pair_budget), (Some("IPv6"), Duration::from_secs(90)));
        assert!(
            Args::try_parse_from(["net-bench", "--weft", "w", "--agent", "a", "--k8s-bin", "k", "--reps", "0"])
                .is_err()
        );
    }

    #[test]
    fn symbols_fall_into_their_classes() {
        for (sym, class) in [
            ("nft_do_chain", "netfilter"),
            ("__nf_conntrack_find_get", "netfilter"),
            ("nf_hook_slow", "netfilter"),
            ("ipv4_conntrack_defrag", "netfilter"),
            ("tcp_sendmsg_locked", "tcp"),
            ("__tcp_transmit_skb", "tcp"),
            ("bictcp_cong_avoid", "tcp"),
            ("_copy_to_iter", "copy"),
            ("__memcpy", "copy"),
            ("vxlan_xmit_one", "vxlan, udp"),
            ("udp_tunnel_xmit_skb", "vxlan, udp"),
            ("veth_xmit", "forward, veth, xmit"),
            ("__dev_queue_xmit", "forward, veth, xmit"),
            ("ip_forward", "forward, veth, xmit"),
            ("fib_table_lookup", "forward, veth, xmit"),
            ("_raw_spin_unlock_irqrestore", "other"),
            ("finish_task_switch.isra.0", "other"),
        ] {
            assert_eq!(class_of(sym), class, "{sym}");
            assert!(CLASSES.contains(&class_of(sym)));
        }
    }
}
