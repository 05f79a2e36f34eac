//! The reconciler against the real kernel: node namespaces on one or two
//! L2 segments, pods wired by the real `weft` plugin, and the agent's
//! desired state applied inside each node. Pods must reach each other
//! across nodes in every backend; switching backend or deleting a node must
//! leave nothing behind; a second pass must change nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::Lab;
use libweft::testutil::have_privileges;
use weft_agent::apply::kernel;
use weft_agent::base::mirror::Mirror;
use weft_agent::config::Config;
use weft_agent::desired::{self, KernelState, vtep_mac_for};
use weft_agent::observe::underlay;
use weft_agent::wire::NodeView;

fn config(backend: &str) -> Config {
    Config::example(backend.parse().unwrap())
}

/// Computes and applies the desired state on every node in `live`, as each
/// node's agent would; returns (desired, changes) per node.
fn sync_all(rt: &tokio::runtime::Runtime, lab: &Lab, live: &[usize], backend: &str) -> Vec<(KernelState, usize)> {
    let views: Vec<NodeView> = live.iter().map(|&i| lab.nodes[i].view()).collect();
    live.iter()
        .map(|&i| {
            let node = &lab.nodes[i];
            rt.block_on(async {
                let nl = node.netlink();
                let ips = [node.v4.parse().unwrap(), node.v6.parse().unwrap()];
                let u = underlay::detect(&nl, None, &ips).await.unwrap();
                let d =
                    desired::kernel_state(&config(backend), &node.view(), &u, vtep_mac_for(&node.name), &views, true);
                // A mirror without notifications: every sync dumps, as a fresh agent does.
                let applied = kernel::sync(&nl, &d, u.ifindex, &Mirror::default(), None).await.unwrap();
                assert!(applied.errors.is_empty(), "{}: {:?}", node.name, applied.errors);
                (d, applied.changes)
            })
        })
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn assert_reach(from: &libweft::testutil::TestNs, to: &[&str], what: &str) {
    for dst in to {
        assert!(from.ping(dst), "{what}: {} cannot reach {dst}", from.name());
    }
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn vxlan_then_routes_on_one_segment() {
    if !have_privileges() {
        return;
    }
    let rt = rt();
    let lab = Lab::new(&['A', 'A', 'A']);
    let (p1, _, _) = lab.nodes[0].add_pod("vx-p1", 1450);
    let (_p2, p2v4, p2v6) = lab.nodes[1].add_pod("vx-p2", 1450);
    let (_p3, p3v4, p3v6) = lab.nodes[2].add_pod("vx-p3", 1450);

    let out = sync_all(&rt, &lab, &[0, 1, 2], "vxlan");
    assert!(out.iter().all(|(d, changes)| d.vxlan.is_some() && *changes > 0));
    assert_reach(&p1, &[&p2v4, &p2v6, &p3v4, &p3v6], "vxlan");
    let n1 = &lab.nodes[0].ns;
    let fdb = n1.exec_ok(&["bridge", "fdb", "show", "dev", "weft.vxlan"]);
    assert!(fdb.contains("dst 198.51.100.12") && fdb.contains("dst 198.51.100.13"), "{fdb}");
    assert!(n1.exec_ok(&["ip", "-d", "link", "show", "weft.vxlan"]).contains("nolearning"));
    assert!(
        n1.exec_ok(&["ip", "route", "show", "proto", "88"])
            .contains("10.244.2.0/24 via 10.244.2.0 dev weft.vxlan onlink")
    );
    // Large packets with DF fit: the pods' MTU accounts for the VXLAN header.
    assert!(
        p1.exec(&["ping", "-c1", "-W2", "-M", "do", "-s", "1422", &p2v4]).status.success(),
        "1450-byte packet must cross"
    );

    // Nothing changes on a second pass: the agent adopts what is there.
    assert!(sync_all(&rt, &lab, &[0, 1, 2], "vxlan").iter().all(|(_, c)| *c == 0), "second pass must be a no-op");

    // A node deleted: its routes, neighbours and FDB entries go, on every peer.
    sync_all(&rt, &lab, &[0, 1], "vxlan");
    assert!(!n1.exec_ok(&["ip", "route", "show", "proto", "88"]).contains("10.244.3.0"));
    assert!(!n1.exec_ok(&["bridge", "fdb", "show", "dev", "weft.vxlan"]).contains("198.51.100.13"));
    assert!(!n1.exec_ok(&["ip", "neigh", "show", "dev", "weft.vxlan"]).contains("10.244.3.0"));
    assert!(!p1.ping(&p3v4), "deleted node must be unreachable");

    // Switch to routes: converges, and no VXLAN state is left.
    sync_all(&rt, &lab, &[0, 1, 2], "routes");
    assert!(!n1.exec_ok(&["ip", "link"]).contains("weft.vxlan"));
    assert!(n1.exec_ok(&["ip", "route", "show", "proto", "88"]).contains("10.244.2.0/24 via 198.51.100.12 dev eth0"));
    assert_reach(&p1, &[&p2v4, &p2v6, &p3v4, &p3v6], "routes");
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn auto_is_direct_within_a_segment_and_vxlan_across() {
    if !have_privileges() {
        return;
    }
    let rt = rt();
    let lab = Lab::new(&['A', 'A', 'B']);
    let (p1, _, _) = lab.nodes[0].add_pod("auto-p1", 1450);
    let (_p2, p2v4, p2v6) = lab.nodes[1].add_pod("auto-p2", 1450);
    let (p3, p3v4, p3v6) = lab.nodes[2].add_pod("auto-p3", 1450);
    sync_all(&rt, &lab, &[0, 1, 2], "auto");
    let routes = lab.nodes[0].ns.exec_ok(&["ip", "route", "show", "proto", "88"]);
    assert!(routes.contains("10.244.2.0/24 via 198.51.100.12 dev eth0"), "{routes}");
    assert!(routes.contains("10.244.3.0/24 via 10.244.3.0 dev weft.vxlan onlink"), "{routes}");
    assert_reach(&p1, &[&p2v4, &p2v6, &p3v4, &p3v6], "auto");
    assert_reach(&p3, &[&p2v4, &p2v6], "auto from segment B");
}
