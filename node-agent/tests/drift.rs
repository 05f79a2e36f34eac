//! Drift made outside weft is repaired within a second: an operator deletes
//! a peer route, flushes the VXLAN FDB, deletes the device or the nftables
//! table, sets the device down, or flushes the whole nftables rule set, in
//! a node where an agent runs against a real kube-apiserver. The resync
//! period is 300 s, so only the pass woken by the kernel's notification can
//! be the repairer, and the test checks that from
//! `weft_sync_passes_total{trigger}` as well. The same holds for the
//! NetworkPolicy table `inet weft-policy`: an element deleted, a chain
//! flushed, the table deleted.
//! Needs root and the Kubernetes binaries built by e2e/.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Lab, create_pod};
use libweft::testutil::agent::AgentConfig;
use libweft::testutil::control_plane::{ControlPlane, Proc, eventually, k8s_bin};
use libweft::testutil::{TestNs, have_privileges};
use serde_json::json;

/// Far longer than the test: a resync cannot repair anything here.
const RESYNC_SECONDS: u64 = 300;
/// The bound on a repair.
const REPAIR: Duration = Duration::from_secs(1);

/// Two nodes on one segment, both registered in a real API server, each
/// with a vxlan agent (node2's publishes what node1 needs to program it),
/// pods configured at the underlay's MTU.
/// Fields drop in order: agents, their directories, the API server, the lab.
struct TwoNodes {
    agents: Vec<Proc>,
    dirs: Vec<tempfile::TempDir>,
    cp: ControlPlane,
    lab: Lab,
}

impl TwoNodes {
    /// None when the test must skip (no root, or no Kubernetes binaries
    /// outside CI).
    fn start() -> Option<TwoNodes> {
        if !have_privileges() {
            return None;
        }
        let Some(bin) = k8s_bin() else {
            assert!(std::env::var_os("CI").is_none(), "Kubernetes binaries missing under CI: run e2e setup first");
            eprintln!("skipping: Kubernetes binaries not built (set WEFT_K8S_BIN)");
            return None;
        };
        let lab = Lab::new(&['A', 'A']);
        let cp = lab.control_plane(&bin);
        for n in &lab.nodes {
            cp.create_node(&n.name, &[&n.pod_v4, &n.pod_v6], &[&n.v4, &n.v6]);
        }
        let dirs: Vec<tempfile::TempDir> = lab.nodes.iter().map(|_| tempfile::tempdir().unwrap()).collect();
        let agents = lab
            .nodes
            .iter()
            .zip(&dirs)
            .map(|(n, dir)| {
                // Pods above the tunnel's MTU, as `auto` gives them: the
                // table then has its MSS clamp (for `vxlan` alone it has none).
                let cfg = AgentConfig::new(dir.path(), ["10.244.0.0/16", "fd00:10:244::/56"], "vxlan")
                    .with("resyncPeriodSeconds", json!(RESYNC_SECONDS))
                    .with("healthAddress", json!(common::AGENT_HTTP))
                    .with("mtu", json!(1500))
                    .write(&dir.path().join("config.json"));
                common::spawn_agent(&format!("agent-{}", n.name), n, &cp, &cfg)
            })
            .collect();
        Some(TwoNodes { agents, dirs, cp, lab })
    }
}

/// What weft programs in a node, in a form that survives re-creation
/// (no ifindex, nft set elements in any order).
fn state(ns: &TestNs) -> String {
    let out = |argv: &[&str]| String::from_utf8_lossy(&ns.exec(argv).stdout).into_owned();
    let mut nft: Vec<String> = out(&["nft", "list", "table", "inet", "weft"])
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    nft.sort();
    [
        out(&["ip", "route", "show", "proto", "88"]),
        out(&["ip", "-6", "route", "show", "proto", "88"]),
        out(&["ip", "-br", "link", "show", "weft.vxlan"]),
        out(&["bridge", "fdb", "show", "dev", "weft.vxlan"]),
        out(&["ip", "neigh", "show", "dev", "weft.vxlan", "nud", "permanent"]),
        nft.join(" "),
    ]
    .join("\n")
}

/// A counter of the agent in `ns` (0 when absent or the agent does not answer).
fn counter(ns: &TestNs, series: &str) -> u64 {
    let m = ns.http_get("127.0.0.1:9959", "/metrics");
    m.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

fn passes(ns: &TestNs, trigger: &str) -> u64 {
    counter(ns, &format!("weft_sync_passes_total{{trigger=\"{trigger}\"}}"))
}

/// Kernel objects the agent wrote since it started, all kinds.
fn kernel_writes(ns: &TestNs) -> u64 {
    let m = ns.http_get("127.0.0.1:9959", "/metrics");
    m.lines()
        .filter(|l| l.starts_with("weft_kernel_writes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Deletes every FDB entry of `weft.vxlan` (`bridge fdb flush` needs a
/// newer iproute2 than some hosts have; the notifications are the same).
fn flush_fdb(ns: &TestNs) {
    let fdb = ns.exec_ok(&["bridge", "fdb", "show", "dev", "weft.vxlan"]);
    let mut n = 0;
    for line in fdb.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = f.iter().position(|w| *w == "dst") {
            ns.exec_ok(&["bridge", "fdb", "del", f[0], "dev", "weft.vxlan", "dst", f[i + 1]]);
            n += 1;
        }
    }
    assert!(n > 0, "no FDB entries to flush: {fdb}");
}

#[test]
#[ignore = "needs root and the Kubernetes binaries: cargo test -- --ignored"]
fn drift_is_repaired_within_a_second_by_the_notified_pass() {
    let Some(two) = TwoNodes::start() else { return };
    let ns = &two.lab.nodes[0].ns;
    let log = || two.agents[0].log_tail();
    // Programmed: a VXLAN route to node2 in both families, its FDB entry, the table.
    let complete = |s: &str| {
        s.contains("10.244.2.0/24 via 10.244.2.0 dev weft.vxlan onlink mtu 1450")
            && s.contains("fd00:10:244:2::/64 via fd00:10:244:2:: dev weft.vxlan")
            && s.contains("dst 198.51.100.12")
            && s.contains("masquerade")
            && s.contains("maxseg")
    };
    assert!(
        eventually(Duration::from_secs(40), || complete(&state(ns))),
        "never programmed:\n{}\n{}",
        state(ns),
        log()
    );
    assert!(eventually(Duration::from_secs(10), || ns.ping("10.244.2.0")), "node2's VTEP unreachable:\n{}", log());
    // Let the passes woken by the agent's own writes run out.
    let mut good = state(ns);
    assert!(eventually(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = state(ns);
        std::mem::replace(&mut good, now.clone()) == now
    }));
    assert_eq!(passes(ns, "resync"), 0, "a resync ran: the test cannot tell who repaired");

    type Break = fn(&TestNs);
    let cases: [(&str, Break); 8] = [
        ("delete one peer route", |ns| drop(ns.exec_ok(&["ip", "route", "del", "10.244.2.0/24"]))),
        ("take a peer route's MTU", |ns| {
            let route = ["10.244.2.0/24", "via", "10.244.2.0", "dev", "weft.vxlan", "onlink", "proto", "88"];
            drop(ns.exec_ok(&[&["ip", "route", "replace"][..], &route[..]].concat()))
        }),
        ("delete the MSS clamp", |ns| drop(ns.exec_ok(&["nft", "flush", "chain", "inet", "weft", "forward"]))),
        ("flush the FDB of weft.vxlan", flush_fdb),
        ("delete weft.vxlan", |ns| drop(ns.exec_ok(&["ip", "link", "del", "weft.vxlan"]))),
        ("delete the inet weft table", |ns| drop(ns.exec_ok(&["nft", "delete", "table", "inet", "weft"]))),
        ("set weft.vxlan down", |ns| drop(ns.exec_ok(&["ip", "link", "set", "weft.vxlan", "down"]))),
        // In the node's namespace, like everything here.
        ("nft flush ruleset", |ns| drop(ns.exec_ok(&["nft", "flush", "ruleset"]))),
    ];
    let mut report = Vec::new();
    for (what, break_it) in cases {
        let (drift_before, writes_before) = (passes(ns, "drift"), kernel_writes(ns));
        let started = Instant::now();
        break_it(ns);
        let took = time_repair(what, started, || state(ns), &good, log);
        report.push((what, took));
        assert!(took <= REPAIR, "{what}: repaired in {took:?}, more than {REPAIR:?}");
        // The agent wrote, so the change did break something and the agent repaired it.
        assert!(
            eventually(Duration::from_secs(2), || kernel_writes(ns) > writes_before),
            "{what}: repaired without a write?\n{}",
            log()
        );
        assert!(passes(ns, "drift") > drift_before, "{what}: no pass was woken by drift");
        assert_eq!(passes(ns, "resync"), 0, "{what}: a resync ran");
        assert!(ns.ping("10.244.2.0"), "{what}: node2's VTEP unreachable after the repair:\n{}", log());
    }
    eprintln!("repairs: {report:?}");
}

/// Whether the agent in `ns` answers `/readyz` with `status` (e.g. " 503 ").
fn readyz_is(ns: &TestNs, status: &str) -> bool {
    ns.http_get("127.0.0.1:9959", "/readyz").lines().next().is_some_and(|l| l.contains(status))
}

/// A write the kernel refuses, for as long as the fault lasts: with IPv6
/// disabled on `weft.vxlan`, its IPv6 VTEP address and the IPv6 peer routes
/// through it cannot be added. Every pass fails until the fault is gone.
fn set_vxlan_ipv6_disabled(ns: &TestNs, disabled: bool) {
    let path = "/proc/sys/net/ipv6/conf/weft.vxlan/disable_ipv6";
    ns.exec_ok(&["sh", "-c", &format!("echo {} > {path}", u8::from(disabled))]);
}

#[test]
#[ignore = "needs root and the Kubernetes binaries: cargo test -- --ignored"]
fn failing_passes_make_the_agent_unready_until_the_fault_is_gone() {
    let Some(two) = TwoNodes::start() else { return };
    let agent = &two.agents[0];
    let ns = &two.lab.nodes[0].ns;
    let log = || agent.log_tail();
    let v6_route = "fd00:10:244:2::/64 via fd00:10:244:2:: dev weft.vxlan";
    assert!(
        eventually(Duration::from_secs(40), || readyz_is(ns, " 200 ") && state(ns).contains(v6_route)),
        "never ready:\n{}\n{}",
        state(ns),
        log()
    );
    let good = state(ns);

    set_vxlan_ipv6_disabled(ns, true);
    // Five failed passes, retried after 0.1, 0.2, 0.4 and 0.8 s at most.
    assert!(eventually(Duration::from_secs(10), || readyz_is(ns, " 503 ")), "still ready under the fault:\n{}", log());
    assert!(counter(ns, "weft_sync_errors_total{output=\"kernel\"}") >= 5, "{}", log());
    assert!(!state(ns).contains(v6_route), "the kernel took the route after all");
    // Unready, not dead: the agent keeps retrying and stays live.
    assert!(ns.http_get("127.0.0.1:9959", "/healthz").contains(" 200 "));

    set_vxlan_ipv6_disabled(ns, false);
    // The next retry comes at most 30 s later; here the backoff has only
    // reached a few seconds, and re-enabling IPv6 is drift of its own.
    assert!(
        eventually(Duration::from_secs(10), || readyz_is(ns, " 200 ") && state(ns) == good),
        "not ready again after the fault was gone:\n{}\n{}",
        state(ns),
        log()
    );
}

/// Routes with weft's protocol number in `ns`, IPv4.
fn peer_routes(ns: &TestNs) -> usize {
    ns.exec_ok(&["ip", "route", "show", "proto", "88"]).lines().count()
}

#[test]
#[ignore = "needs root and the Kubernetes binaries: cargo test -- --ignored"]
fn lost_notifications_make_the_next_pass_compare_everything() {
    let Some(two) = TwoNodes::start() else { return };
    let (agent, dir) = (&two.agents[0], &two.dirs[0]);
    let ns = &two.lab.nodes[0].ns;
    let log = || agent.log_tail();
    assert!(
        eventually(Duration::from_secs(40), || readyz_is(ns, " 200 ") && peer_routes(ns) == 1),
        "never programmed:\n{}\n{}",
        state(ns),
        log()
    );
    let good = state(ns);
    let overflows = || counter(ns, "weft_errors_total{kind=\"events_overflow\"}");
    assert_eq!(overflows(), 0);

    // Routes weft does not want, with its protocol number, added while the
    // agent is stopped: far more notifications than its socket buffer
    // holds (4 MiB), so the kernel drops most of them and reports ENOBUFS.
    const FLOOD: usize = 30_000;
    let batch = dir.path().join("flood");
    let lines: String = (0..FLOOD)
        .map(|i| format!("route add 10.244.{}.{}/32 via 198.51.100.12 proto 88\n", 128 + i / 256, i % 256))
        .collect();
    std::fs::write(&batch, lines).unwrap();
    let pid = nix::unistd::Pid::from_raw(agent.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let flooded = ns.exec(&["ip", "-batch", &batch.display().to_string()]);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(flooded.status.success(), "{}", String::from_utf8_lossy(&flooded.stderr));

    // Only a dump finds the routes whose notifications were lost; the
    // resync is 300 s away.
    assert!(
        eventually(Duration::from_secs(60), || peer_routes(ns) == 1 && state(ns) == good),
        "{} peer routes left, overflows {}:\n{}",
        peer_routes(ns),
        overflows(),
        log()
    );
    assert!(overflows() > 0, "the socket never overflowed: the test proves nothing\n{}", log());
    assert_eq!(passes(ns, "resync"), 0, "a resync ran");
}

/// The `inet weft-policy` table in `ns`, in a form that ignores order
/// (empty when it is missing) and the liveness gate's timeouts, which the
/// agent renews and the kernel counts down.
fn policy_state(ns: &TestNs) -> String {
    let out = ns.exec(&["nft", "list", "table", "inet", "weft-policy"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let all: Vec<&str> = text.split(|c: char| c.is_whitespace() || c == ',').filter(|t| !t.is_empty()).collect();
    let mut tokens: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !matches!(all[i - 1], "timeout" | "expires"))
        .map(|(_, t)| t.to_string())
        .collect();
    tokens.sort();
    tokens.join(" ")
}

/// The first object of `kind` (`set`, `chain`) in the policy table whose
/// name starts with `prefix`.
fn policy_object(ns: &TestNs, kind: &str, prefix: &str) -> String {
    let listing = ns.exec_ok(&["nft", "list", "table", "inet", "weft-policy"]);
    listing
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{kind} ")).filter(|n| n.starts_with(prefix)))
        .map(|n| n.trim_end_matches(" {").to_string())
        .unwrap_or_else(|| panic!("no {kind} {prefix}* in:\n{listing}"))
}

#[test]
#[ignore = "needs root and the Kubernetes binaries: cargo test -- --ignored"]
fn policy_table_drift_is_repaired_within_a_second_by_the_notified_pass() {
    let Some(two) = TwoNodes::start() else { return };
    let cp = &two.cp;
    let ns = &two.lab.nodes[0].ns;
    let log = || two.agents[0].log_tail();
    // No controller manager runs to create the namespace's default ServiceAccount, which admission wants.
    let _ = cp.kubectl(&["create", "serviceaccount", "default", "-n", "default"]);
    // A server on node1 that only role=cli may reach on 8080, and such a client on node2.
    create_pod(
        cp,
        "srv",
        &two.lab.nodes[0].name,
        serde_json::json!({"app": "srv"}),
        &["10.244.1.5", "fd00:10:244:1::5"],
    );
    create_pod(
        cp,
        "cli",
        &two.lab.nodes[1].name,
        serde_json::json!({"role": "cli"}),
        &["10.244.2.7", "fd00:10:244:2::7"],
    );
    let policy = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "only-cli", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "srv"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "cli"}}}],
                              "ports": [{"protocol": "TCP", "port": 8080}]}]}});
    cp.kubectl_stdin(&["create", "-f", "-"], &policy.to_string());
    let complete = |s: &str| {
        s.contains("10.244.1.5") && s.contains("fd00:10:244:1::5") && s.contains("10.244.2.7") && s.contains("8080")
    };
    assert!(
        eventually(Duration::from_secs(40), || complete(&policy_state(ns))),
        "policy never programmed:\n{}\n{}",
        policy_state(ns),
        log()
    );
    let mut good = policy_state(ns);
    assert!(eventually(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = policy_state(ns);
        std::mem::replace(&mut good, now.clone()) == now
    }));
    assert_eq!(passes(ns, "resync"), 0, "a resync ran: the test cannot tell who repaired");

    let peer_set = policy_object(ns, "set", "peer-");
    let peer_set = format!("{}-4", peer_set.trim_end_matches("-4").trim_end_matches("-6"));
    let policy_chain = policy_object(ns, "chain", "in-pol-");
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "delete the server's verdict-map element",
            vec!["delete element inet weft-policy ingress4 { 10.244.1.5 }".into()],
        ),
        (
            "delete the client's peer set element",
            vec![format!("delete element inet weft-policy {peer_set} {{ 10.244.2.7 }}")],
        ),
        ("flush the policy's chain", vec![format!("flush chain inet weft-policy {policy_chain}")]),
        ("delete the policy table", vec!["delete table inet weft-policy".into()]),
    ];
    let computes = counter(ns, "weft_policy_computes_total");
    assert!(computes > 0, "the policy state was never computed?");
    let mut report = Vec::new();
    for (what, commands) in cases {
        let (drift_before, writes_before) = (passes(ns, "drift"), kernel_writes(ns));
        let started = Instant::now();
        for c in &commands {
            let argv: Vec<&str> = std::iter::once("nft").chain(c.split(' ')).collect();
            ns.exec_ok(&argv);
        }
        let took = time_repair(what, started, || policy_state(ns), &good, log);
        report.push((what, took));
        assert!(took <= REPAIR, "{what}: repaired in {took:?}, more than {REPAIR:?}");
        assert!(
            eventually(Duration::from_secs(2), || kernel_writes(ns) > writes_before),
            "{what}: repaired without a write?\n{}",
            log()
        );
        assert!(passes(ns, "drift") > drift_before, "{what}: no pass was woken by drift");
        assert_eq!(passes(ns, "resync"), 0, "{what}: a resync ran");
        // Nothing policy reads changed: repaired from the state last applied, not computed again.
        assert_eq!(counter(ns, "weft_policy_computes_total"), computes, "{what}: the policy state was computed again");
    }
    eprintln!("repairs: {report:?}");
}

/// How long after `started` the state read by `state` was `good` again,
/// polled every 10 ms; panics, showing the broken state, if it was not
/// within [`REPAIR`] and a margin. (The broken state is not compared with
/// `good`: the repair may already be done.)
fn time_repair(
    what: &str,
    started: Instant,
    state: impl Fn() -> String,
    good: &str,
    log: impl Fn() -> String,
) -> Duration {
    let broken = state();
    while started.elapsed() < REPAIR + Duration::from_millis(500) {
        if state() == good {
            let took = started.elapsed();
            eprintln!("{what}: repaired in {} ms", took.as_millis());
            return took;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what}: not repaired within {REPAIR:?}:\nbroken:\n{broken}\nnow:\n{}\n{}", state(), log());
}
