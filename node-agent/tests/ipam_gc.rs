//! IPAM GC against the real kernel and the real plugin: pods are wired by
//! `weft` ADD in a node namespace, and the agent's GC pass decides from the
//! node's veths (and the Pods the API claims, empty here: the API lags)
//! which reservations to free. Needs root and `cargo build -p weft-cni`;
//! the last test also needs the Kubernetes binaries (a real API server).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use common::{NO_WATCH_LIST, Node, create_pod, k8s_bin_or_skip, lone_control_plane};
use ipnetwork::IpNetwork;
use libweft::ipam::{Allocator, Attachment, DiskStore};
use libweft::netlink::{Netlink, host_veth_name};
use libweft::netns::NetNs;
use libweft::testutil::control_plane::{ControlPlane, eventually};
use libweft::testutil::{TestNs, have_privileges};
use weft_agent::ipam_gc::{Evidence, NETWORK, observe_claimed_addresses, observe_host_veths, sweep};

fn node() -> Node {
    Node {
        name: "node1".into(),
        ns: TestNs::new("gc-node1"),
        v4: "198.51.100.11".into(),
        v6: "2001:db8:a::11".into(),
        pod_v4: "10.244.1.0/24".into(),
        pod_v6: "fd00:10:244:1::/64".into(),
        ipam: tempfile::tempdir().unwrap(),
    }
}

fn subnets(node: &Node) -> Vec<IpNetwork> {
    vec![node.pod_v4.parse().unwrap(), node.pod_v6.parse().unwrap()]
}

fn held(node: &Node, id: &str) -> Vec<IpAddr> {
    let alloc = Allocator::new(DiskStore::open(node.ipam.path(), NETWORK).unwrap(), subnets(node)).unwrap();
    let att = Attachment { container_id: id.into(), ifname: "eth0".into() };
    alloc.find(&att).unwrap().into_iter().map(|a| a.ip).collect()
}

/// Two GC passes (an address must be unproven in two in a row) with no
/// grace period, seeing the node's veths and no Pod in the API; returns
/// what they freed.
fn two_passes(node: &Node) -> Vec<IpAddr> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut suspects = HashSet::new();
    let mut freed = Vec::new();
    for _ in 0..2 {
        let veths = rt.block_on(async {
            let nl = Netlink::from_socket(NetNs::open(&node.ns.path()).unwrap().route_socket().unwrap()).unwrap();
            observe_host_veths(&nl).await.unwrap()
        });
        let evidence = Evidence { veths, claimed: HashSet::new() };
        freed.extend(
            sweep(node.ipam.path(), (subnets(node), Duration::ZERO), &evidence, Duration::ZERO, &mut suspects)
                .unwrap()
                .freed,
        );
    }
    freed
}

#[test]
#[ignore = "needs root: cargo test -- --ignored"]
fn a_sandbox_the_api_does_not_list_yet_keeps_its_address() {
    if !have_privileges() {
        return;
    }
    let node = node();
    // ADD has returned; no Pod in the API claims the address yet.
    let (_pod, v4, v6) = node.add_pod("gc-new", 1500);
    assert!(two_passes(&node).is_empty(), "freed the address of a live sandbox");
    assert_eq!(held(&node, "gc-new"), [v4.parse::<IpAddr>().unwrap(), v6.parse().unwrap()]);
}

#[test]
#[ignore = "needs root: cargo test -- --ignored"]
fn an_address_whose_veth_is_gone_is_freed() {
    if !have_privileges() {
        return;
    }
    let node = node();
    let (live, _, _) = node.add_pod("gc-live", 1500);
    let (dead, v4, v6) = node.add_pod("gc-dead", 1500);
    // The sandbox dies without DEL: its namespace goes, and the kernel takes
    // the veth pair with it (asynchronously, in its netns cleanup work).
    drop(dead);
    let veth = host_veth_name("gc-dead", "eth0");
    let gone = eventually(Duration::from_secs(10), || !node.ns.exec(&["ip", "link", "show", &veth]).status.success());
    assert!(gone, "{veth} outlived its pod's namespace");
    let mut freed = two_passes(&node);
    freed.sort();
    assert_eq!(freed, [v4.parse::<IpAddr>().unwrap(), v6.parse().unwrap()]);
    assert!(held(&node, "gc-dead").is_empty());
    assert_eq!(held(&node, "gc-live").len(), 2, "freed the live pod's addresses too");
    drop(live);
}

#[test]
#[ignore = "needs root and the Kubernetes binaries: cargo test -- --ignored"]
fn only_unfinished_pods_bound_to_the_node_claim_addresses() {
    let Some(bin) = k8s_bin_or_skip() else { return };
    let want: HashSet<IpAddr> =
        ["10.244.1.5", "fd00:10:244:1::5", "10.244.1.8"].iter().map(|a| a.parse().unwrap()).collect();
    // Streamed where the server allows it; in pages (three pods: two pages)
    // where it refuses, or where RBAC grants `list` without `watch` (a
    // ClusterRole from before the streamed list, with NetworkPolicy off).
    for (flags, user) in [(&[][..], None), (&[NO_WATCH_LIST][..], None), (&[][..], Some(LIST_ONLY_USER))] {
        let cp = lone_control_plane(&bin, flags);
        create_gc_pods(&cp);
        let claimed = claimed_on_node1(&cp, user).unwrap();
        assert_eq!(claimed, want, "apiserver flags {flags:?}, user {user:?}");
    }
}

#[test]
#[ignore = "needs root and the Kubernetes binaries: cargo test -- --ignored"]
fn gc_without_a_complete_list_of_pods_claims_fail_closed() {
    let Some(bin) = k8s_bin_or_skip() else { return };
    let cp = lone_control_plane(&bin, &[]);
    create_gc_pods(&cp);
    // Neither a watch nor a list is allowed: the pass must fail, never
    // report an empty set of claims (which would free live addresses).
    let err = claimed_on_node1(&cp, Some("weft-gc-nothing")).expect_err("claims read without any permission");
    assert!(err.to_string().contains("403") || err.to_string().to_lowercase().contains("forbidden"), "{err}");
}

/// A user the tests impersonate, bound to `list` on Pods and nothing else.
const LIST_ONLY_USER: &str = "weft-gc-list-only";

/// Pods on node1 (two unfinished, one Succeeded) and one on node2, and the
/// list-only user's ClusterRole and binding.
fn create_gc_pods(cp: &ControlPlane) {
    create_pod(cp, "running", "node1", serde_json::json!({}), &["10.244.1.5", "fd00:10:244:1::5"]);
    create_pod(cp, "done", "node1", serde_json::json!({}), &["10.244.1.6"]);
    create_pod(cp, "running-too", "node1", serde_json::json!({}), &["10.244.1.8"]);
    cp.kubectl_ok(&[
        "patch",
        "pod",
        "done",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ]);
    create_pod(cp, "elsewhere", "node2", serde_json::json!({}), &["10.244.2.7"]);
    cp.kubectl_ok(&["create", "clusterrole", "weft-gc-list-only", "--verb=list", "--resource=pods"]);
    cp.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "weft-gc-list-only",
        "--clusterrole=weft-gc-list-only",
        &format!("--user={LIST_ONLY_USER}"),
    ]);
}

/// GC's view of the Pods claiming addresses on node1, read by the admin or,
/// with `user`, by the admin impersonating that user.
fn claimed_on_node1(cp: &ControlPlane, user: Option<&str>) -> Result<HashSet<IpAddr>, weft_agent::ipam_gc::GcError> {
    // The client's sockets must live in the control plane's namespace: a throwaway thread there.
    let kubeconfig = cp.kubeconfig();
    let user = user.map(str::to_owned);
    NetNs::open(&cp.ns.path())
        .unwrap()
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let file = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
                let mut config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await.unwrap();
                config.auth_info.impersonate = user;
                observe_claimed_addresses(&kube::Client::try_from(config).unwrap(), "node1").await
            })
        })
        .unwrap()
}
