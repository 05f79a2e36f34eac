//! agent-bench: one weft-agent against a real kube-apiserver holding
//! thousands of Node objects (created through the API, no kubelets), in
//! network namespaces this program creates. Measured:
//! - agent start -> every peer route in the kernel, against the kernel
//!   floor: `ip -batch` programming the same device, routes, neighbours and
//!   FDB entries in a fresh namespace (the reference, in the same run);
//! - one more Node created (and deleted): API request -> route added
//!   (removed) in the kernel, p50 and p99, seen by a netlink listener;
//! - the agent's peak RSS and its CPU while idle (one resync period).
//!
//! Addresses: the benchmarking ranges 198.18.0.0/15 (RFC 2544) and
//! 2001:2::/48 (RFC 5180) for the underlay, 10.0.0.0/8 and fd00:10::/48
//! for pods; all of it exists only inside the namespaces.
//!
//! With `--profile`, the cold start (agent start -> first pass done) is
//! also sampled with `perf`, to say which functions its time goes to.
//!
//!   agent-bench --agent WEFT_AGENT --k8s-bin DIR [--nodes N] [--adds K]
//!               [--backend vxlan|routes] [--idle-seconds S] [--profile] [--json]

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use libweft::netlink::{Netlink, RTPROT_WEFT_PEER};
use libweft::netns::NetNs;
use libweft::testutil::TestNs;
use libweft::testutil::control_plane::{ControlPlane, Proc, eventually};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use serde_json::json;

use weft_bench::agent_process::{AgentConfig, pass_seconds, proc_stats};
use weft_bench::api::client;
use weft_bench::cli::seconds;
use weft_bench::perf;
use weft_bench::results::{self, AgentRun, MetricRow, Pass, PassSummary, ProcessProfile, SlowestPass, WakeupCount};
use weft_bench::stats::percentile;

const NODE_IP: &str = "198.18.0.1";
const CP_IP: &str = "198.18.0.2";
const OWN: &str = "bench-own";
/// Bounds the wait for the first programming, so a broken agent cannot hang
/// the benchmark: 2 minutes, plus 20 ms per Node on top of 6,000.
fn program_timeout(nodes: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(20 * nodes.saturating_sub(6000) as u64)
}

/// agent-bench's command line.
#[derive(Parser)]
#[command(name = "agent-bench", about = "Measures one weft-agent against a real API server holding many Nodes")]
struct Args {
    /// The weft-agent binary to measure.
    #[arg(long, value_name = "WEFT_AGENT")]
    agent: PathBuf,
    /// The directory holding etcd and kube-apiserver.
    #[arg(long, value_name = "DIR")]
    k8s_bin: PathBuf,
    /// Nodes in the API server at the agent's start (a /24 each out of 10.0.0.0/8).
    #[arg(long, value_name = "N", default_value_t = 5000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=60_000))]
    nodes: usize,
    /// Single-Node changes measured after the cold start.
    #[arg(long, value_name = "K", default_value_t = 100)]
    adds: usize,
    /// The agent's backend.
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "routes"])]
    backend: String,
    /// Idle time measured after the changes, in seconds.
    #[arg(long = "idle-seconds", value_name = "S", default_value = "60", value_parser = seconds)]
    idle: Duration,
    /// Also record a CPU profile of the cold start with perf.
    #[arg(long)]
    profile: bool,
    /// Print the results as JSON rather than text.
    #[arg(long)]
    json: bool,
}

/// Peer `i` (1-based): its pod CIDRs, underlay addresses and VTEP MAC.
struct Peer {
    name: String,
    v4: IpNetwork,
    v6: IpNetwork,
    ip4: Ipv4Addr,
    ip6: String,
    mac: String,
}

fn peer(i: usize) -> Peer {
    let (hi, lo) = ((i >> 8) as u8, (i & 0xff) as u8);
    let name = format!("peer-{i:05}");
    // The agent believes only the VTEP MAC derived from the name (its
    // vtep_mac_for: 0e + the first five bytes of the name's FNV-1a).
    let h = libweft::netlink::stable_hash(name.bytes()).to_be_bytes();
    Peer {
        mac: libweft::netlink::format_mac(&[0x0e, h[0], h[1], h[2], h[3], h[4]]),
        name,
        v4: format!("10.{hi}.{lo}.0/24").parse().expect("valid"),
        v6: format!("fd00:10:0:{i:x}::/64").parse().expect("valid"),
        // 198.18.1.0 onwards; 198.18.0.x is the bench's own.
        ip4: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 1, 0)) + i as u32),
        ip6: format!("2001:2::1:{i:x}"),
    }
}

fn node_object(p: &Peer) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": p.name, "annotations": {
            "weft.dev/public-ip": p.ip4.to_string(), "weft.dev/public-ipv6": p.ip6,
            "weft.dev/vtep-mac": p.mac, "weft.dev/backend": "vxlan"}},
        "spec": {"podCIDR": p.v4.to_string(), "podCIDRs": [p.v4.to_string(), p.v6.to_string()]},
        // The agent believes a public IP only among the Node's own addresses.
        "status": {"addresses": [
            {"type": "InternalIP", "address": p.ip4.to_string()},
            {"type": "InternalIP", "address": p.ip6}]},
    }))
    .expect("a valid Node")
}

/// One route event seen by the listener: (when, added?, destination).
type RouteEvent = (Instant, bool, IpNetwork);

/// Listens for weft's peer routes appearing and vanishing in `ns`: a
/// netlink socket in the node's namespace subscribed to route changes.
fn route_listener(ns: &NetNs) -> mpsc::Receiver<RouteEvent> {
    let mut socket = ns.route_socket().expect("netlink socket in the node namespace");
    socket.bind(&netlink_sys::SocketAddr::new(0, 0)).expect("bind");
    // RTNLGRP_IPV4_ROUTE = 7, RTNLGRP_IPV6_ROUTE = 11.
    for group in [7, 11] {
        socket.add_membership(group).expect("join route group");
    }
    // A burst of thousands of routes must not overflow the queue.
    let _ = socket.set_rx_buf_sz(64 << 20);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let Ok(n) = socket.recv(&mut &mut buf[..], 0) else { return };
            let at = Instant::now();
            let mut off = 0;
            while off < n {
                let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n]) else { break };
                let len = msg.header.length as usize;
                if let Some((added, dst)) = peer_route_change(msg)
                    && tx.send((at, added, dst)).is_err()
                {
                    return;
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    });
    rx
}

/// A weft peer route added (true) or removed (false), and its destination.
fn peer_route_change(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<(bool, IpNetwork)> {
    let (added, r) = match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => (true, r),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => (false, r),
        _ => return None,
    };
    if r.header.protocol != RouteProtocol::Other(RTPROT_WEFT_PEER) {
        return None;
    }
    let ip: std::net::IpAddr = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some((*ip).into()),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some((*ip).into()),
        _ => None,
    })?;
    Some((added, IpNetwork::new(ip, r.header.destination_prefix_length).ok()?))
}

async fn count_peer_routes(nl: &Netlink) -> usize {
    let mut n = 0;
    for v6 in [false, true] {
        n += nl.routes(v6, Some(RTPROT_WEFT_PEER)).await.map(|r| r.len()).unwrap_or(0);
    }
    n
}

/// A node namespace with the bench's underlay: `eth0` (198.18.0.1/15,
/// 2001:2::1/48), one end of a veth whose other end, `eth0-peer`, the
/// caller may move into another namespace.
fn node_namespace(tag: &str) -> TestNs {
    let ns = TestNs::new(tag);
    ns.exec_ok(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"]);
    ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    ns.exec_ok(&["ip", "addr", "add", &format!("{NODE_IP}/15"), "dev", "eth0"]);
    ns.exec_ok(&["ip", "addr", "add", "2001:2::1/48", "dev", "eth0", "nodad"]);
    ns.exec_ok(&["ip", "link", "set", "eth0-peer", "up"]);
    ns
}

/// The reference: the same kernel state, hand-written as `ip -batch` and
/// `bridge -batch` files (one process and one netlink socket each, in the
/// agent's order: device, FDB and neighbours, routes last), in a fresh
/// namespace.
fn kernel_floor(peers: &[Peer], backend: &str, dir: &Path) -> Duration {
    let ns = node_namespace("floor");
    let (mut setup, mut fdb, mut routes) = (String::new(), String::new(), String::new());
    if backend == "vxlan" {
        setup.push_str(&format!(
            "link add weft.vxlan type vxlan id 1 local {NODE_IP} dev eth0 dstport 8472 nolearning\nlink set weft.vxlan up\n"
        ));
        for p in peers {
            fdb.push_str(&format!("fdb append {} dev weft.vxlan dst {} self permanent\n", p.mac, p.ip4));
            for vtep in [p.v4.ip(), p.v6.ip()] {
                setup.push_str(&format!("neigh replace {vtep} lladdr {} dev weft.vxlan nud permanent\n", p.mac));
            }
            for cidr in [p.v4, p.v6] {
                routes.push_str(&format!("route replace {cidr} via {} dev weft.vxlan onlink proto 88\n", cidr.ip()));
            }
        }
    } else {
        for p in peers {
            routes.push_str(&format!("route replace {} via {} dev eth0 proto 88\n", p.v4, p.ip4));
            routes.push_str(&format!("route replace {} via {} dev eth0 proto 88\n", p.v6, p.ip6));
        }
    }
    let start = Instant::now();
    for (tool, name, text) in [("ip", "setup", setup), ("bridge", "fdb", fdb), ("ip", "routes", routes)] {
        if text.is_empty() {
            continue;
        }
        let file = dir.join(format!("floor-{name}.batch"));
        std::fs::write(&file, text).expect("write batch");
        ns.exec_ok(&[tool, "-batch", &file.display().to_string()]);
    }
    start.elapsed()
}

fn main() {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("agent-bench: needs root (network namespaces)");
        std::process::exit(2);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let peers: Vec<Peer> = (1..=args.nodes + args.adds).map(peer).collect();
    let (initial, extra) = peers.split_at(args.nodes);

    eprintln!("reference: ip -batch of the same kernel state ({} peers)", initial.len());
    let floor = kernel_floor(initial, &args.backend, dir.path());

    let node = node_namespace("node");
    let cp_ns = TestNs::new("cp");
    node.exec_ok(&["ip", "link", "set", "eth0-peer", "netns", cp_ns.name()]);
    cp_ns.exec_ok(&["ip", "link", "set", "eth0-peer", "name", "eth0"]);
    cp_ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    cp_ns.exec_ok(&["ip", "addr", "add", &format!("{CP_IP}/15"), "dev", "eth0"]);
    eprintln!("control plane: etcd and kube-apiserver");
    let cp = ControlPlane::start(cp_ns, CP_IP, &args.k8s_bin);
    cp.create_node(OWN, &["10.255.255.0/24", "fd00:10:0:ffff::/64"], &[NODE_IP, "2001:2::1"]);

    let cp_netns = NetNs::open(&cp.ns.path()).expect("cp namespace");
    let node_netns = NetNs::open(&node.path()).expect("node namespace");
    // Everything that talks to the API server runs on a thread inside the
    // control-plane namespace: no packet leaves from the machine's own.
    let report = cp_netns
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(run(&args, &cp, &node, &node_netns, initial, extra, dir.path()))
        })
        .expect("bench thread");
    print_report(&args, floor, report);
}

struct Report {
    create_seconds: f64,
    programmed: Duration,
    add: Vec<Duration>,
    del: Vec<Duration>,
    /// The agent's own mean reconcile pass during the single-Node changes.
    pass_ms: f64,
    peak_rss_kib: u64,
    rss_kib: u64,
    idle_cpu_percent: f64,
    /// The agent's slowest and median reconcile pass, split by stage (from its debug log).
    slowest_pass: Option<SlowestPass>,
    /// perf's view of the cold start (`--profile`).
    cold_profile: Option<ProcessProfile>,
}

async fn run(
    args: &Args,
    cp: &ControlPlane,
    node: &TestNs,
    node_netns: &NetNs,
    initial: &[Peer],
    extra: &[Peer],
    dir: &Path,
) -> Report {
    let nodes: Api<Node> = Api::all(client(cp).await);
    eprintln!("creating {} Nodes through the API", initial.len());
    let started = Instant::now();
    futures::stream::iter(initial.iter().map(|p| {
        let nodes = nodes.clone();
        async move { nodes.create(&PostParams::default(), &node_object(p)).await }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<_>>()
    .await
    .expect("create Nodes");
    let create_seconds = started.elapsed().as_secs_f64();

    let nl = Netlink::from_socket(node_netns.route_socket().expect("socket")).expect("netlink");
    let events = route_listener(node_netns);

    eprintln!("starting weft-agent ({} backend)", args.backend);
    let config = AgentConfig::new(dir, ["10.0.0.0/8", "fd00:10::/48"], &args.backend);
    let agent_start = Instant::now();
    let agent = config.spawn("weft-agent", &args.agent, OWN, node, cp, dir);
    let pid = agent.pid().expect("agent pid");
    let recording = args.profile.then(|| perf::record_process(pid, &dir.join("cold.perf")));
    let want = initial.len() * 2;
    let programmed = wait_programmed(&events, want, agent_start, program_timeout(args.nodes), &agent);
    // The listener could have missed a message; the kernel has the last word.
    let in_kernel = count_peer_routes(&nl).await;
    assert_eq!(in_kernel, want, "routes in the kernel after programming");
    eprintln!("programmed {want} routes in {programmed:?}; one Node at a time: create and delete");

    // The cold pass goes on after its routes (nftables, files), and the
    // events it caused (its own Node annotations, the new device) bring a
    // pass or two more: wait until passes stop, so the mean below covers
    // only the single-Node changes.
    assert!(passes_settle(node), "the agent's passes did not settle after its start:\n{}", agent.log_tail());
    let cold_profile =
        match recording.map(|r| r.and_then(|r| r.stop()).and_then(|data| perf::process_profile(&data, 15))) {
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                eprintln!("no profile: {e}");
                None
            }
            None => None,
        };
    let passes_before = pass_seconds(node);
    let (add, del) = single_node_changes(&nodes, extra, &events, &agent).await;
    let passes_after = pass_seconds(node);
    let pass_ms = (passes_after.0 - passes_before.0) / (passes_after.1 - passes_before.1).max(1.0) * 1000.0;

    eprintln!("idle for {:?}", args.idle);
    let (t0, _, _) = proc_stats(pid);
    let clock = Instant::now();
    tokio::time::sleep(args.idle).await;
    let (t1, peak_rss_kib, rss_kib) = proc_stats(pid);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let idle_cpu_percent = (t1 - t0) as f64 / hz / clock.elapsed().as_secs_f64() * 100.0;
    assert!(eventually(Duration::from_secs(1), || proc_stats(pid).1 > 0), "the agent exited:\n{}", agent.log_tail());
    let slowest_pass = slowest_pass(&agent.log);
    drop(agent);
    Report {
        create_seconds,
        programmed,
        add,
        del,
        pass_ms,
        peak_rss_kib,
        rss_kib,
        idle_cpu_percent,
        slowest_pass,
        cold_profile,
    }
}

/// Waits until the agent has programmed `want` routes (the listener's
/// events); the time from `start`. Fails after `timeout`.
fn wait_programmed(
    events: &mpsc::Receiver<RouteEvent>,
    want: usize,
    start: Instant,
    timeout: Duration,
    agent: &Proc,
) -> Duration {
    let mut seen = HashSet::new();
    loop {
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok((at, true, dst)) => {
                seen.insert(dst);
                if seen.len() >= want {
                    return at - start;
                }
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("route listener: {e}"),
        }
        assert!(
            start.elapsed() < timeout,
            "the agent programmed {} of {want} routes in {timeout:?}:\n{}",
            seen.len(),
            agent.log_tail()
        );
    }
}

/// Whether the agent's pass count stopped moving for half a second
/// (within a minute), after at least one pass.
fn passes_settle(node: &TestNs) -> bool {
    let mut last = (Instant::now(), 0.0);
    eventually(Duration::from_secs(60), || {
        let count = pass_seconds(node).1;
        if count != last.1 {
            last = (Instant::now(), count);
        }
        count >= 1.0 && last.0.elapsed() > Duration::from_millis(500)
    })
}

/// Creates and deletes each of `extra` through the API, one at a time:
/// API request to route in the kernel and to route gone, sorted.
async fn single_node_changes(
    nodes: &Api<Node>,
    extra: &[Peer],
    events: &mpsc::Receiver<RouteEvent>,
    agent: &Proc,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut add = Vec::new();
    let mut del = Vec::new();
    // Each change is measured alone: the agent has finished the previous
    // pass (its nftables update comes after the routes) before the next.
    let settle = Duration::from_millis(300);
    for p in extra {
        tokio::time::sleep(settle).await;
        while events.try_recv().is_ok() {}
        let t0 = Instant::now();
        nodes.create(&PostParams::default(), &node_object(p)).await.expect("create Node");
        add.push(wait_route(events, p.v4, true, t0, agent));
        tokio::time::sleep(settle).await;
        let t0 = Instant::now();
        nodes.delete(&p.name, &DeleteParams::default()).await.expect("delete Node");
        del.push(wait_route(events, p.v4, false, t0, agent));
    }
    add.sort();
    del.sort();
    (add, del)
}

/// The agent's passes from its debug log (WEFT_LOG with
/// `weft_agent::agent=debug`): the slowest, the median and the count, and
/// every pass by what woke it; none when the agent did not log passes.
fn slowest_pass(log: &Path) -> Option<SlowestPass> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut passes: Vec<(u64, Pass)> = text
        .lines()
        // The NetworkPolicy part of a pass logs a `policy pass` line of its own.
        .filter(|l| (l.contains(" pass ") || l.ends_with(" pass")) && !l.contains("policy pass"))
        .map(|line| {
            let pass = Pass::from_log_line(line);
            (pass.total_us(), pass)
        })
        .collect();
    passes.sort_by_key(|(total, _)| *total);
    // Count and mean duration of the passes by what woke them.
    let mut by_wakeup: BTreeMap<String, WakeupCount> = BTreeMap::new();
    for (total, p) in &passes {
        let e = by_wakeup.entry(p.wakeup.clone().unwrap_or_else(|| "unknown".into())).or_default();
        e.passes += 1;
        e.total_us += total;
    }
    let n = passes.len();
    // The slowest (the cold pass), and the median one (a steady-state
    // pass for one Node change).
    (n > 0).then(|| {
        SlowestPass::Summary(PassSummary {
            slowest: passes[n - 1].1.clone(),
            median: passes[n / 2].1.clone(),
            passes: n,
            by_wakeup,
        })
    })
}

fn wait_route(events: &mpsc::Receiver<RouteEvent>, dst: IpNetwork, added: bool, t0: Instant, agent: &Proc) -> Duration {
    let deadline = t0 + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok((at, a, d)) if a == added && d == dst => return at - t0,
            Ok(_) => {}
            Err(_) => panic!(
                "route {dst} was not {} within 30 s:\n{}",
                if added { "added" } else { "removed" },
                agent.log_tail()
            ),
        }
    }
}

fn print_report(args: &Args, floor: Duration, r: Report) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (kernel, cpus) = results::machine();
    let results = vec![
        MetricRow::new("start to all routes programmed (ms)", ms(r.programmed), "< 2000"),
        MetricRow::new("reference: ip -batch of the same state (ms)", ms(floor), ""),
        MetricRow::new("ratio to the reference", r.programmed.as_secs_f64() / floor.as_secs_f64(), ""),
        MetricRow::new("Node added -> route in kernel, p50 (ms)", ms(percentile(&r.add, 0.5)), ""),
        MetricRow::new("Node added -> route in kernel, p99 (ms)", ms(percentile(&r.add, 0.99)), "< 100"),
        MetricRow::new("Node deleted -> route gone, p50 (ms)", ms(percentile(&r.del, 0.5)), ""),
        MetricRow::new("Node deleted -> route gone, p99 (ms)", ms(percentile(&r.del, 0.99)), ""),
        MetricRow::new("agent's mean reconcile pass meanwhile (ms)", r.pass_ms, ""),
        MetricRow::new("peak RSS (MiB)", r.peak_rss_kib as f64 / 1024.0, "< 32"),
        MetricRow::new("RSS at the end (MiB)", r.rss_kib as f64 / 1024.0, ""),
        MetricRow::new("idle CPU (% of one core)", r.idle_cpu_percent, ""),
    ];
    let run = AgentRun {
        kernel,
        cpus,
        nodes: args.nodes,
        backend: args.backend.clone(),
        adds: args.adds,
        create_nodes_seconds: r.create_seconds,
        results,
        programmed_ms: ms(r.programmed),
        floor_ms: ms(floor),
        add_ms: r.add.iter().map(|d| ms(*d)).collect(),
        del_ms: r.del.iter().map(|d| ms(*d)).collect(),
        peak_rss_kib: r.peak_rss_kib,
        slowest_pass: r.slowest_pass,
        cold_profile: r.cold_profile,
    };
    if args.json {
        results::print_json(&run);
        return;
    }
    println!(
        "weft-agent, {} Nodes (dual-stack podCIDRs), {} backend, kernel {}, {cpus} CPUs; {} single-Node changes; Nodes created in {:.1} s",
        run.nodes, run.backend, run.kernel, run.adds, run.create_nodes_seconds
    );
    results::print_metric_rows(&run.results, 46);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn bench_run_command_line_parses() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "agent-bench",
            "--agent",
            "a",
            "--k8s-bin",
            "k",
            "--nodes",
            "50",
            "--adds",
            "3",
            "--idle-seconds",
            "1",
            "--profile",
            "--json",
        ])
        .unwrap();
        assert_eq!((a.nodes, a.adds, a.idle, a.profile, a.json), (50, 3, Duration::from_secs(1), true, true));
        assert_eq!(a.backend, "vxlan");
        assert!(Args::try_parse_from(["agent-bench", "--agent", "a", "--k8s-bin", "k", "--nodes", "60001"]).is_err());
        assert!(Args::try_parse_from(["agent-bench", "--agent", "a", "--k8s-bin", "k", "--backend", "ipip"]).is_err());
    }
}
