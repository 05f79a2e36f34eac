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
//!   kube-apiserver) programs the peers, the real `weft` plugin wires the pods.
//!
//! Metrics: TCP throughput with 1 and 4 streams (iperf3) under cubic and
//! bbr, set per socket (`iperf3 -C`, TCP_CONGESTION): a namespace's
//! `net.ipv4.tcp_congestion_control` may only name an algorithm in the
//! machine's `tcp_allowed_congestion_control`, which only the machine's own
//! namespace can change (here it allows reno and bbr, not cubic),
//! the CPU of the iperf3 sender and receiver (their getrusage, as iperf3
//! reports it) per Gbit/s, and TCP request/response latency (64-byte
//! ping-pong, one connection, this program's own client and server).
//! Prints JSON with every sample; `bench-report` draws it. Never pass/fail.
//!
//!   net-bench --weft WEFT --agent WEFT_AGENT --k8s-bin DIR [--secs S] [--reps R] [--quick]

mod stats;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libweft::netns::NetNs;
use libweft::testutil::TestNs;
use libweft::testutil::control_plane::{ControlPlane, Proc, eventually};
use serde_json::{Value, json};

const CP_IP: &str = "198.51.100.2";
const UNDERLAY_MTU: u32 = 1500;
const RR_PORT: u16 = 7011;

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
    HandVxlan,
    /// Backend, and whether VXLAN transmit checksum offload is the agent's choice.
    Weft(&'static str, bool),
}

impl Setup {
    fn label(self) -> String {
        match self {
            Setup::Bare => "bare".into(),
            Setup::HandRoutes => "hand routes".into(),
            Setup::HandVxlan => "hand vxlan".into(),
            Setup::Weft(b, true) => format!("weft {b}"),
            Setup::Weft(b, false) => format!("weft {b}, other offload"),
        }
    }
}

struct Args {
    weft: PathBuf,
    agent: PathBuf,
    k8s_bin: PathBuf,
    secs: u32,
    reps: usize,
    quick: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a =
        Args { weft: PathBuf::new(), agent: PathBuf::new(), k8s_bin: PathBuf::new(), secs: 2, reps: 3, quick: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--weft" => a.weft = value()?.into(),
            "--agent" => a.agent = value()?.into(),
            "--k8s-bin" => a.k8s_bin = value()?.into(),
            "--secs" => a.secs = value()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--reps" => a.reps = value()?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--quick" => a.quick = true,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if [&a.weft, &a.agent, &a.k8s_bin].iter().any(|p| p.as_os_str().is_empty()) {
        return Err("--weft, --agent and --k8s-bin are required".into());
    }
    if a.secs == 0 || a.reps == 0 {
        return Err("--secs and --reps must be at least 1".into());
    }
    Ok(a)
}

/// The lab: both underlay segments and the router between them, and the
/// API server on segment A. Node namespaces come and go per setup.
struct Lab {
    lab: TestNs,
    _router: TestNs,
    cp: ControlPlane,
}

fn veth(a: &TestNs, a_name: &str, b: &TestNs, b_name: &str) {
    a.exec_ok(&["ip", "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name()]);
}

impl Lab {
    fn new(k8s_bin: &Path) -> Lab {
        let lab = TestNs::new("nb-lab");
        let router = TestNs::new("nb-router");
        for (br, gw4, gw6) in
            [("brA", "198.51.100.1/24", "2001:db8:a::1/64"), ("brB", "203.0.113.1/25", "2001:db8:b::1/64")]
        {
            lab.exec_ok(&["ip", "link", "add", br, "type", "bridge"]);
            lab.exec_ok(&["ip", "link", "set", br, "up"]);
            let (a, b) = (format!("r-{br}"), format!("{br}-r"));
            veth(&router, &a, &lab, &b);
            lab.exec_ok(&["ip", "link", "set", &b, "master", br, "up"]);
            router.exec_ok(&["ip", "link", "set", &a, "up"]);
            router.exec_ok(&["ip", "addr", "add", gw4, "dev", &a]);
            router.exec_ok(&["ip", "addr", "add", gw6, "dev", &a, "nodad"]);
        }
        router.enable_forwarding();
        let cp_ns = TestNs::new("nb-cp");
        veth(&lab, "brA-cp", &cp_ns, "eth0");
        lab.exec_ok(&["ip", "link", "set", "brA-cp", "master", "brA", "up"]);
        cp_ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        cp_ns.exec_ok(&["ip", "addr", "add", &format!("{CP_IP}/24"), "dev", "eth0"]);
        cp_ns.exec_ok(&["ip", "route", "add", "203.0.113.0/25", "via", "198.51.100.1"]);
        let cp = ControlPlane::start(cp_ns, CP_IP, k8s_bin);
        Lab { lab, _router: router, cp }
    }

    /// Node `n` (1 or 2) of setup `tag`, on segment A, or B when `routed`
    /// and n == 2: underlay on `eth0`, the other segment via the router.
    fn node(&self, tag: &str, n: u8, routed: bool) -> Node {
        let ns = TestNs::new(&format!("{tag}-n{n}"));
        let on_b = routed && n == 2;
        let (v4, v6, plen4, br, gw4, gw6, other4, other6) = if on_b {
            (
                format!("203.0.113.{}", 10 + n),
                format!("2001:db8:b::{}", 10 + n),
                25,
                "brB",
                "203.0.113.1",
                "2001:db8:b::1",
                "198.51.100.0/24",
                "2001:db8:a::/64",
            )
        } else {
            (
                format!("198.51.100.{}", 10 + n),
                format!("2001:db8:a::{}", 10 + n),
                24,
                "brA",
                "198.51.100.1",
                "2001:db8:a::1",
                "203.0.113.0/25",
                "2001:db8:b::/64",
            )
        };
        let port = format!("{tag}-{n}");
        veth(&ns, "eth0", &self.lab, &port);
        self.lab.exec_ok(&["ip", "link", "set", &port, "master", br, "up"]);
        ns.exec_ok(&["ip", "link", "set", "eth0", "mtu", &UNDERLAY_MTU.to_string(), "up"]);
        ns.exec_ok(&["ip", "addr", "add", &format!("{v4}/{plen4}"), "dev", "eth0"]);
        ns.exec_ok(&["ip", "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
        ns.exec_ok(&["ip", "route", "add", other4, "via", gw4]);
        ns.exec_ok(&["ip", "-6", "route", "add", other6, "via", gw6]);
        ns.enable_forwarding();
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
    _keep: Vec<TestNs>,
    _agents: Vec<Proc>,
    _dirs: Vec<tempfile::TempDir>,
    nodes_to_delete: Vec<String>,
}

fn read_mtu(ns: &TestNs, dev: &str) -> u32 {
    ns.exec_ok(&["cat", &format!("/sys/class/net/{dev}/mtu")]).trim().parse().unwrap_or(0)
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
    let (n1, n2) = (lab.node(tag, 1, routed), lab.node(tag, 2, routed));
    let empty = |client, server, dst, pod_mtu, offload| Wired {
        client,
        server,
        dst,
        pod_mtu,
        offload,
        _keep: Vec::new(),
        _agents: Vec::new(),
        _dirs: Vec::new(),
        nodes_to_delete: Vec::new(),
    };
    match s {
        Setup::Bare => {
            let dst = [n2.v4.clone(), n2.v6.clone()];
            let w = empty(n1.ns, n2.ns, dst, UNDERLAY_MTU, None);
            wait_reachable(&w.client, &w.dst, "bare", &[]);
            w
        }
        Setup::HandRoutes | Setup::HandVxlan => {
            let vxlan = s == Setup::HandVxlan;
            let mtu = if vxlan { UNDERLAY_MTU - 50 } else { UNDERLAY_MTU };
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
            let mut w = empty(p1, p2, [ip4, ip6], mtu, offload);
            wait_reachable(&w.client, &w.dst, &s.label(), &[]);
            w._keep = vec![n1.ns, n2.ns];
            w
        }
        Setup::Weft(backend, agents_choice) => {
            let mut agents = Vec::new();
            let mut dirs = Vec::new();
            let mut names = Vec::new();
            for n in [&n1, &n2] {
                let name = format!("{tag}-node{}", n.n);
                lab.cp.create_node(&name, &[&n.pod_v4, &n.pod_v6], &[&n.v4, &n.v6]);
                names.push(name.clone());
                let dir = tempfile::tempdir().expect("tempdir");
                let mut cfg = json!({
                    "clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"],
                    "backend": backend,
                    "listenAddress": "127.0.0.1:9959",
                    "healthAddress": "127.0.0.1:9959",
                    "runDir": dir.path().join("run"),
                    "cniConfDir": dir.path().join("net.d"),
                    "cniBinDir": dir.path().join("bin"),
                    "criSocket": dir.path().join("no-cri.sock"),
                    "ipamGcPeriodSeconds": 86400,
                });
                if !agents_choice {
                    cfg["vxlan"] = json!({"txChecksumOffload": !chosen_offload});
                }
                let cfg_path = dir.path().join("config.json");
                std::fs::write(&cfg_path, cfg.to_string()).expect("agent config");
                let kubeconfig = lab.cp.kubeconfig().display().to_string();
                agents.push(Proc::spawn(
                    &format!("weft-agent-{}", n.n),
                    &n.ns,
                    &[
                        &args.agent.display().to_string(),
                        "run",
                        "--node-name",
                        &name,
                        "--config",
                        &cfg_path.display().to_string(),
                    ],
                    &[("KUBECONFIG", kubeconfig.as_str()), ("WEFT_LOG", "warn")],
                    dir.path(),
                ));
                dirs.push(dir);
            }
            let mut pods = Vec::new();
            for (n, dir) in [&n1, &n2].into_iter().zip(&dirs) {
                let node_json = dir.path().join("run/node.json");
                let agent = &agents[usize::from(n.n) - 1];
                assert!(
                    eventually(Duration::from_secs(60), || node_json.exists()),
                    "weft-agent on node {} wrote no node.json in 60 s:\n{}",
                    n.n,
                    agent.log_tail()
                );
                pods.push(weft_pod(&args.weft, n, tag, &node_json, &dir.path().join("ipam")));
            }
            let (p2, ip4, ip6) = pods.pop().expect("two pods");
            let (p1, _, _) = pods.pop().expect("two pods");
            let pod_mtu = read_mtu(&p1, "eth0");
            let offload = read_offload(&n1.ns);
            let mut w = empty(p1, p2, [ip4, ip6], pod_mtu, offload);
            wait_reachable(&w.client, &w.dst, &s.label(), &agents.iter().collect::<Vec<_>>());
            w._keep = vec![n1.ns, n2.ns];
            w._agents = agents;
            w._dirs = dirs;
            w.nodes_to_delete = names;
            w
        }
    }
}

/// ADD through the real plugin, configured as the agent's conflist does.
fn weft_pod(weft: &Path, node: &Node, tag: &str, node_json: &Path, ipam: &Path) -> (TestNs, String, String) {
    let pod = TestNs::new(&format!("{tag}-p{}", node.n));
    let conf = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft", "nodeConfig": node_json, "dataDir": ipam});
    let mut child = Command::new("ip")
        .args(["netns", "exec", node.ns.name()])
        .arg(weft)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("{tag}-pod{}", node.n))
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", weft.display()));
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

/// One iperf3 run: (Gbit/s received, sender cores per Gbit/s, receiver cores per Gbit/s).
fn iperf(w: &Wired, dst: &str, secs: u32, streams: u32, cc: &str) -> (f64, f64, f64) {
    let mut server = Command::new("ip")
        .args(["netns", "exec", w.server.name(), "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start iperf3 server");
    let mut out = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let o = w.client.exec(&[
            "timeout",
            &(secs + 20).to_string(),
            "iperf3",
            "-c",
            dst,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-C",
            cc,
            "-J",
        ]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if o.status.success() && v["end"]["sum_received"]["bits_per_second"].is_number() {
            out = Some(v);
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let v = out.unwrap_or_else(|| panic!("iperf3 to {dst} from {} failed 20 times", w.client.name()));
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
    let end = Instant::now() + Duration::from_secs(secs.into());
    while Instant::now() < end {
        let t = Instant::now();
        if c.write_all(&buf).is_err() || c.read_exact(&mut buf).is_err() {
            break;
        }
        rtts.push(t.elapsed());
    }
    drop(c);
    let _ = echo.join();
    rtts.sort();
    let us = |q| crate::stats::percentile(&rtts, q).as_secs_f64() * 1e6;
    (us(0.5), us(0.99))
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("net-bench: {e}");
        eprintln!("usage: net-bench --weft WEFT --agent WEFT_AGENT --k8s-bin DIR [--secs S] [--reps R] [--quick]");
        std::process::exit(2);
    });
    if !nix::unistd::geteuid().is_root() {
        eprintln!("net-bench: needs root (network namespaces)");
        std::process::exit(2);
    }
    let (secs, reps) = if args.quick { (1, 1) } else { (args.secs, args.reps) };
    let families: &[(usize, &str)] = if args.quick { &[(0, "IPv4")] } else { &[(0, "IPv4"), (1, "IPv6")] };
    let ccs: &[&str] = if args.quick { &["cubic"] } else { &["cubic", "bbr"] };
    use Setup::*;
    let plan: Vec<(Topology, Setup)> = if args.quick {
        vec![
            (Topology::OneSegment, Bare),
            (Topology::OneSegment, HandVxlan),
            (Topology::OneSegment, Weft("vxlan", true)),
        ]
    } else {
        let one = [
            Bare,
            HandRoutes,
            Weft("routes", true),
            HandVxlan,
            Weft("vxlan", true),
            Weft("vxlan", false),
            Weft("auto", true),
        ];
        let two = [Bare, HandVxlan, Weft("vxlan", true), Weft("auto", true)];
        one.iter().map(|s| (Topology::OneSegment, *s)).chain(two.iter().map(|s| (Topology::Routed, *s))).collect()
    };

    eprintln!("net-bench: lab and control plane");
    let lab = Lab::new(&args.k8s_bin);
    // The agent's offload choice is the kernel's default (observe::kernel::offload_default):
    // on from 5.7. Hand-made VXLAN uses the same; "other offload" the opposite.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut ver = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    let chosen_offload = (ver.next().unwrap_or(0), ver.next().unwrap_or(0)) >= (5, 7);

    let mut rows = Vec::new();
    for (k, (topo, s)) in plan.iter().enumerate() {
        let started = Instant::now();
        let tag = format!("s{k}");
        let w = setup(&lab, &args, &tag, *topo, *s, chosen_offload);
        for &(fi, family) in families {
            let dst = &w.dst[fi];
            for (ci, cc) in ccs.iter().enumerate() {
                let mut row = json!({"topology": topo.label(), "setup": s.label(), "family": family, "cc": cc,
                    "pod_mtu": w.pod_mtu, "offload": w.offload});
                for streams in [1u32, 4] {
                    let (mut g, mut tx, mut rx) = (Vec::new(), Vec::new(), Vec::new());
                    for _ in 0..reps {
                        let (a, b, c) = iperf(&w, dst, secs, streams, cc);
                        g.push(a);
                        tx.push(b);
                        rx.push(c);
                    }
                    row[format!("gbps_{streams}")] = json!(g);
                    row[format!("cpu_tx_{streams}")] = json!(tx);
                    row[format!("cpu_rx_{streams}")] = json!(rx);
                }
                // Latency does not depend on the congestion control of a
                // connection that never has more than 64 bytes in flight:
                // measured once per family (the namespace's default).
                if ci == 0 {
                    let (p50, p99): (Vec<f64>, Vec<f64>) = (0..reps).map(|_| ping_pong(&w, dst, secs)).unzip();
                    row["rr_p50_us"] = json!(p50);
                    row["rr_p99_us"] = json!(p99);
                }
                eprintln!("  {} / {} / {family} / {cc}: {}", topo.label(), s.label(), row["gbps_1"]);
                rows.push(row);
            }
        }
        for name in &w.nodes_to_delete {
            lab.cp.kubectl_ok(&["delete", "node", name, "--wait=false"]);
        }
        drop(w);
        eprintln!("net-bench: {} / {} took {:.0?}", topo.label(), s.label(), started.elapsed());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{}",
        json!({"kernel": release.trim(), "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "secs": secs, "reps": reps, "underlay_mtu": UNDERLAY_MTU, "chosen_offload": chosen_offload,
            "loadavg_end": load.trim(), "rows": rows})
    );
}
