//! The agent with `dataplane: bpf` against a real kube-apiserver: two
//! nodes on segment A (routes), pods wired by the real plugin, maps pinned
//! on a bpffs of the test's own. The agent attaches weft's filter to the
//! pods' host veths and the uplink; a TCP connection between the pods is
//! carried by the program (its counters grow); a filter an operator
//! deletes comes back (drift, at the 2 s resync); the connection keeps
//! working while the agent is down and after it restarts; `weft-agent
//! cleanup` leaves no filter and no pin. Needs root and the Kubernetes
//! binaries built by e2e/.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Lab;
use libweft::netlink::host_veth_name;
use libweft::netns::NetNs;
use libweft::testutil::bpffs::BpfFs;
use libweft::testutil::control_plane::{Proc, eventually, k8s_bin};
use libweft::testutil::{TestNs, have_privileges};

/// weft's filter on a link's tc ingress, as `tc` shows it.
fn has_weft_filter(ns: &TestNs, dev: &str) -> bool {
    String::from_utf8_lossy(&ns.exec(&["tc", "filter", "show", "dev", dev, "ingress"]).stdout).contains("weft_from_")
}

fn bpf_config(dir: &Path, pins: &Path) -> PathBuf {
    let path = common::agent_config(dir, "routes", 2);
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c["dataplane"] = "bpf".into();
    c["bpfPinDir"] = pins.display().to_string().into();
    std::fs::write(&path, c.to_string()).unwrap();
    path
}

/// A TCP connection from a pod to an echo server, its socket opened inside
/// the pod's namespace.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(from: &TestNs, addr: SocketAddr) -> Option<Conn> {
        let connect = || TcpStream::connect_timeout(&addr, Duration::from_secs(3));
        let stream = NetNs::open(&from.path()).unwrap().run(connect).unwrap().ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Some(Conn { reader: BufReader::new(stream.try_clone().unwrap()), stream })
    }

    /// Sends a line and expects it back within 5 s.
    fn echo(&mut self, line: &str) -> bool {
        let mut got = String::new();
        writeln!(self.stream, "{line}").is_ok() && self.reader.read_line(&mut got).is_ok() && got.trim() == line
    }
}

#[test]
#[ignore = "needs root and the Kubernetes binaries: cargo test -- --ignored"]
fn bpf_dataplane_attaches_repairs_survives_restarts_and_cleans_up() {
    if !have_privileges() {
        return;
    }
    let Some(bin) = k8s_bin() else {
        assert!(std::env::var_os("CI").is_none(), "Kubernetes binaries missing under CI: run e2e setup first");
        eprintln!("skipping: Kubernetes binaries not built (set WEFT_K8S_BIN)");
        return;
    };
    let bpffs = BpfFs::new("agent");
    let lab = Lab::new(&['A', 'A']);
    let cp = lab.control_plane(&bin);
    for n in &lab.nodes {
        cp.create_node(&n.name, &[&n.pod_v4, &n.pod_v6], &[&n.v4, &n.v6]);
    }
    let dirs: Vec<tempfile::TempDir> = lab.nodes.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let pins: Vec<PathBuf> = lab.nodes.iter().map(|n| bpffs.path().join(&n.name)).collect();
    let configs: Vec<PathBuf> = dirs.iter().zip(&pins).map(|(d, p)| bpf_config(d.path(), p)).collect();
    let spawn = |i: usize| common::spawn_agent(&format!("agent-{i}"), &lab.nodes[i], &cp, &configs[i]);
    let mut agents: Vec<Option<Proc>> = (0..2).map(|i| Some(spawn(i))).collect();
    let node_json = |i: usize| dirs[i].path().join("run/node.json");
    assert!(eventually(Duration::from_secs(30), || (0..2).all(|i| node_json(i).exists())), "agents never ready");

    let (client, _, _) = lab.nodes[0].add_pod_from_node_config("fpcli", &node_json(0));
    let (server, server_v4, _) = lab.nodes[1].add_pod_from_node_config("fpsrv", &node_json(1));
    let (cli_veth, srv_veth) = (host_veth_name("fpcli", "eth0"), host_veth_name("fpsrv", "eth0"));
    let (n0, n1) = (&lab.nodes[0].ns, &lab.nodes[1].ns);
    assert!(
        eventually(Duration::from_secs(10), || {
            has_weft_filter(n0, &cli_veth)
                && has_weft_filter(n1, &srv_veth)
                && has_weft_filter(n0, "eth0")
                && has_weft_filter(n1, "eth0")
        }),
        "the agents attach the fast path to the pods' veths and the uplinks"
    );

    let _echo =
        Proc::spawn("echo", &server, &["socat", "TCP4-LISTEN:7000,fork,reuseaddr", "EXEC:cat"], &[], dirs[1].path());
    let addr = SocketAddr::new(server_v4.parse().unwrap(), 7000);
    let mut conn = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            conn = Conn::open(&client, addr).and_then(|mut c| c.echo("hello").then_some(c));
            conn.is_some()
        }),
        "the pods talk"
    );
    let mut conn = conn.unwrap();
    let before = weft_fastpath::pinned_stats(&pins[0]).unwrap();
    for i in 0..20 {
        assert!(conn.echo(&format!("line {i}")), "the connection carries line {i}");
    }
    let after = weft_fastpath::pinned_stats(&pins[0]).unwrap();
    assert!(after.to_node >= before.to_node + 20, "node 0 redirected the client's segments: {before:?} -> {after:?}");

    // Drift: an operator deletes the filter from the client's veth.
    n0.exec_ok(&["tc", "filter", "del", "dev", &cli_veth, "ingress"]);
    assert!(!has_weft_filter(n0, &cli_veth));
    assert!(eventually(Duration::from_secs(6), || has_weft_filter(n0, &cli_veth)), "the agent attached it again");

    // The connection keeps its path while node 0's agent is down and after it returns.
    agents[0].take().unwrap().stop();
    assert!(conn.echo("agent down"), "the connection works while the agent is down");
    agents[0] = Some(spawn(0));
    let down = weft_fastpath::pinned_stats(&pins[0]).unwrap();
    assert!(eventually(Duration::from_secs(10), || conn.echo("agent back") && has_weft_filter(n0, &cli_veth)));
    assert!(weft_fastpath::pinned_stats(&pins[0]).unwrap().to_node > down.to_node, "the pinned counters carried on");
    drop(conn);

    // Uninstall: nothing of the fast path is left.
    for (i, agent) in agents.iter_mut().enumerate() {
        agent.take().unwrap().stop();
        let node = &lab.nodes[i];
        let cleanup = node.ns.exec(&[common::WEFT, "cleanup", "--config", configs[i].to_str().unwrap()]);
        assert!(cleanup.status.success(), "cleanup: {}", String::from_utf8_lossy(&cleanup.stderr));
        assert!(!pins[i].exists(), "cleanup removed {}", pins[i].display());
        assert!(!has_weft_filter(&node.ns, "eth0"), "cleanup detached the uplink's filter");
    }
    assert!(!has_weft_filter(n0, &cli_veth) && !has_weft_filter(n1, &srv_veth), "cleanup detached the veths' filters");
}
