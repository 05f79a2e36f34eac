//! Privileged tests: the real `weft` binary against the real kernel, inside
//! namespaces each test creates ("host" included). Run with
//! `cargo test -- --ignored` as root; skipped without root, failing under CI.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Call, HOST_V4, HOST_V6, Node, finish};
use libweft::testutil::{TestNs, have_privileges};
use serde_json::json;

fn v4(ips: &[String]) -> String {
    ips.iter().find(|ip| ip.contains('.')).cloned().expect("an IPv4 address")
}

fn v6(ips: &[String]) -> String {
    ips.iter().find(|ip| ip.contains(':')).cloned().expect("an IPv6 address")
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn every_verb_dual_stack_with_ping_for_each_version() {
    if !have_privileges() {
        return;
    }
    for version in libweft::cni::SUPPORTED_VERSIONS.iter().copied() {
        let node = Node::new();
        let conf = node.config(version);
        let pod1 = TestNs::new("pod1");
        let pod2 = TestNs::new("pod2");

        let r1 = node.call("ADD", "pod1", Some(&pod1), &conf).expect_ok("ADD pod1");
        let r2 = node.call("ADD", "pod2", Some(&pod2), &conf).expect_ok("ADD pod2");
        assert_eq!(r1.json["cniVersion"], version);
        let (ips1, ips2) = (r1.ips(), r2.ips());
        assert_eq!(ips1.len(), 2, "{version}: one IPv4 and one IPv6: {}", r1.json);
        assert!(v4(&ips1).starts_with("10.244.1.") && v6(&ips1).starts_with("fd00:10:244:1::"));
        assert_ne!(v4(&ips1), "10.244.1.0", "the network (VTEP) address is never handed out");
        assert_ne!(ips1, ips2);
        if version.starts_with('0') {
            assert_eq!(r1.json["ips"][0]["version"], "4");
        } else {
            assert!(r1.json["ips"][0].get("version").is_none());
        }
        assert_eq!(r1.json["interfaces"][1]["name"], "eth0");
        assert_eq!(r1.json["interfaces"][1]["sandbox"], pod1.path().display().to_string());

        // Inside the pod: /32 and /128, MTU, default routes via the link-local gateways.
        let addrs = pod1.exec_ok(&["ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(addrs.contains(&format!("{}/32", v4(&ips1))), "{addrs}");
        assert!(addrs.contains(&format!("{}/128", v6(&ips1))), "{addrs}");
        let pod_v6_line = addrs.lines().find(|l| l.contains(&v6(&ips1))).unwrap();
        assert!(!pod_v6_line.contains("tentative"), "IPv6 must be usable at once (no DAD): {addrs}");
        assert!(pod1.exec_ok(&["ip", "link", "show", "eth0"]).contains("mtu 1400"));
        assert!(pod1.exec_ok(&["ip", "-4", "route"]).contains("default via 169.254.1.1 dev eth0"));
        assert!(pod1.exec_ok(&["ip", "-6", "route"]).contains("default via fe80::1 dev eth0"));
        // On the host: a weft-tagged route per address.
        let host_routes = node.host.exec_ok(&["ip", "route", "show", "proto", "87"]);
        assert!(host_routes.contains(&v4(&ips1)) && host_routes.contains(&v4(&ips2)), "{host_routes}");
        assert!(node.host.exec_ok(&["ip", "-6", "route", "show", "proto", "87"]).contains(&v6(&ips2)));

        // Pod to pod and pod to host, both families, both directions.
        for (from, to) in [(&pod1, &ips2), (&pod2, &ips1)] {
            assert!(from.ping(&v4(to)), "{version}: {} cannot ping {}", from.name(), v4(to));
            assert!(from.ping(&v6(to)), "{version}: {} cannot ping {}", from.name(), v6(to));
        }
        assert!(pod1.ping(HOST_V4) && pod1.ping(HOST_V6), "{version}: pod cannot reach the host");
        assert!(node.host.ping(&v4(&ips1)) && node.host.ping(&v6(&ips1)), "{version}: host cannot reach the pod");

        if !version.starts_with("0.3.") {
            let mut check_conf = conf.clone();
            check_conf["prevResult"] = r1.json.clone();
            node.call("CHECK", "pod1", Some(&pod1), &check_conf).expect_ok("CHECK");
        }
        if version == "1.1.0" {
            node.call("STATUS", "", None, &conf).expect_ok("STATUS");
        }

        node.call("DEL", "pod1", Some(&pod1), &conf).expect_ok("DEL pod1");
        node.call("DEL", "pod1", Some(&pod1), &conf).expect_ok("DEL pod1 again");
        node.call("DEL", "pod2", Some(&pod2), &conf).expect_ok("DEL pod2");
        assert!(node.host_veths().is_empty(), "veths left: {:?}", node.host_veths());
        assert!(node.reserved().is_empty(), "addresses left: {:?}", node.reserved());
        assert!(pod1.exec_ok(&["ip", "link"]).lines().all(|l| !l.contains("eth0")));
        assert!(node.host.exec_ok(&["ip", "route", "show", "proto", "87"]).trim().is_empty());
    }
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn repeated_add_returns_the_same_addresses_and_del_is_idempotent() {
    if !have_privileges() {
        return;
    }
    let node = Node::new();
    let conf = node.config("1.1.0");
    let pod = TestNs::new("pod");
    let first = node.call("ADD", "c1", Some(&pod), &conf).expect_ok("ADD");
    let again = node.call("ADD", "c1", Some(&pod), &conf).expect_ok("ADD again");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(first.ips()), sorted(again.ips()));
    assert_eq!(node.host_veths().len(), 1);
    assert!(node.host.ping(&v4(&first.ips())), "pod unreachable after repeated ADD");
    for _ in 0..2 {
        node.call("DEL", "c1", Some(&pod), &conf).expect_ok("DEL");
    }
    // DEL of something never added, and DEL without a netns, succeed too.
    node.call("DEL", "never-added", Some(&pod), &conf).expect_ok("DEL unknown");
    node.call("DEL", "never-added", None, &conf).expect_ok("DEL without netns");
    assert!(node.reserved().is_empty());
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn del_succeeds_after_the_netns_is_gone() {
    if !have_privileges() {
        return;
    }
    let node = Node::new();
    let conf = node.config("1.1.0");
    let pod = TestNs::new("pod");
    let path = pod.path();
    node.call("ADD", "c1", Some(&pod), &conf).expect_ok("ADD");
    drop(pod);
    let reply = Call { command: "DEL", container_id: "c1", netns: Some(&path), ifname: "eth0", config: &conf }
        .run(Some(&node.host));
    assert!(reply.ok, "{}", reply.json);
    assert!(node.reserved().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn check_names_what_drifted() {
    if !have_privileges() {
        return;
    }
    let node = Node::new();
    let conf = node.config("1.1.0");
    let pod = TestNs::new("pod");
    let added = node.call("ADD", "c1", Some(&pod), &conf).expect_ok("ADD");
    let mut check = conf.clone();
    check["prevResult"] = added.json.clone();
    node.call("CHECK", "c1", Some(&pod), &check).expect_ok("CHECK");

    let ip = v4(&added.ips());
    node.host.exec_ok(&["ip", "route", "del", &format!("{ip}/32")]);
    let reply = node.call("CHECK", "c1", Some(&pod), &check);
    assert_eq!(reply.code(), 103);
    assert!(reply.json["msg"].as_str().unwrap().contains(&format!("host route {ip}/32")), "{}", reply.json);

    pod.exec_ok(&["ip", "-6", "route", "del", "default"]);
    node.call("ADD", "c1", Some(&pod), &conf).expect_ok("ADD repairs");
    node.call("CHECK", "c1", Some(&pod), &check).expect_ok("CHECK after repair");
    pod.exec_ok(&["ip", "-6", "route", "del", "default"]);
    let reply = node.call("CHECK", "c1", Some(&pod), &check);
    assert_eq!(reply.code(), 103);
    assert!(reply.json["msg"].as_str().unwrap().contains("fe80::1"), "{}", reply.json);

    let mut wrong = check.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.244.1.250/32");
    let reply = node.call("CHECK", "c1", Some(&pod), &wrong);
    assert_eq!(reply.code(), 103);
    node.call("DEL", "c1", Some(&pod), &conf).expect_ok("DEL");
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn gc_frees_what_the_runtime_no_longer_knows() {
    if !have_privileges() {
        return;
    }
    let node = Node::new();
    let conf = node.config("1.1.0");
    let pods: Vec<TestNs> = (0..3).map(|i| TestNs::new(&format!("pod{i}"))).collect();
    let ips: Vec<Vec<String>> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| node.call("ADD", &format!("c{i}"), Some(p), &conf).expect_ok("ADD").ips())
        .collect();
    assert_eq!(node.reserved().len(), 6);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    node.call("GC", "", None, &gc).expect_ok("GC");
    let mut kept = ips[1].clone();
    kept.sort();
    let mut reserved = node.reserved();
    reserved.sort();
    assert_eq!(reserved, kept, "GC keeps exactly the valid attachment's addresses");
    // The kept pod still works; a freed address is handed out again only after the cursor wraps.
    assert!(node.host.ping(&v4(&ips[1])));
    let fresh = TestNs::new("pod9");
    let next = node.call("ADD", "c9", Some(&fresh), &conf).expect_ok("ADD after GC");
    assert!(!next.ips().iter().any(|ip| ips[0].contains(ip) || ips[2].contains(ip)), "round-robin: no immediate reuse");
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn exhaustion_is_a_clear_error_and_leaks_nothing() {
    if !have_privileges() {
        return;
    }
    let node = Node::new();
    // A /30 has two usable addresses: .0 is the VTEP, .3 the broadcast.
    let conf = node.config_with("1.1.0", &["10.244.9.0/30"]);
    let pods: Vec<TestNs> = (0..3).map(|i| TestNs::new(&format!("pod{i}"))).collect();
    let a = node.call("ADD", "c0", Some(&pods[0]), &conf).expect_ok("ADD 1").ips();
    let b = node.call("ADD", "c1", Some(&pods[1]), &conf).expect_ok("ADD 2").ips();
    let mut got: Vec<String> = a.into_iter().chain(b).collect();
    got.sort();
    assert_eq!(got, ["10.244.9.1", "10.244.9.2"]);
    let full = node.call("ADD", "c2", Some(&pods[2]), &conf);
    assert_eq!(full.code(), 101);
    assert!(full.json["msg"].as_str().unwrap().contains("10.244.9.0/30"), "{}", full.json);
    assert_eq!(node.host_veths().len(), 2, "the failed ADD left no veth");
    let status = node.call("STATUS", "", None, &conf);
    assert_eq!(status.code(), 50);
    node.call("DEL", "c0", Some(&pods[0]), &conf).expect_ok("DEL");
    // Other nodes' policy sets may still allow c0 at its address: quarantined.
    let held = node.call("ADD", "c2", Some(&pods[2]), &conf);
    assert_eq!(held.code(), 11, "try again later: {}", held.json);
    assert!(held.json["msg"].as_str().unwrap().contains("1 released addresses are quarantined"), "{}", held.json);
    let status = node.call("STATUS", "", None, &conf);
    assert_eq!(status.code(), 50, "{}", status.json);
    assert!(status.json["msg"].as_str().unwrap().contains("1 quarantined"), "{}", status.json);
    // The agent's node.json sets the quarantine; none here, so the address is free again.
    let node_json = node.data_dir.path().join("node.json");
    let no_quarantine = json!({"version": 1, "subnets": ["10.244.9.0/30"], "mtu": 1400, "addressQuarantineSeconds": 0});
    std::fs::write(&node_json, no_quarantine.to_string()).unwrap();
    let mut conf = conf;
    conf["nodeConfig"] = json!(node_json);
    node.call("ADD", "c2", Some(&pods[2]), &conf).expect_ok("ADD after a DEL, without quarantine");
    let status = node.call("STATUS", "", None, &conf);
    assert_eq!(status.code(), 50, "full again: {}", status.json);
    node.call("DEL", "c1", Some(&pods[1]), &conf).expect_ok("DEL");
    node.call("STATUS", "", None, &conf).expect_ok("STATUS with a free address");
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn fifty_concurrent_adds_get_distinct_addresses() {
    if !have_privileges() {
        return;
    }
    let node = Node::new();
    let conf = node.config("1.1.0");
    let pods: Vec<TestNs> = (0..50).map(|i| TestNs::new(&format!("p{i}"))).collect();
    let ids: Vec<String> = (0..50).map(|i| format!("concurrent{i}")).collect();
    let netns: Vec<_> = pods.iter().map(|p| p.path()).collect();
    let children: Vec<_> = (0..50)
        .map(|i| {
            Call { command: "ADD", container_id: &ids[i], netns: Some(&netns[i]), ifname: "eth0", config: &conf }
                .spawn(Some(&node.host))
        })
        .collect();
    let mut seen = HashSet::new();
    for child in children {
        let reply = finish(child).expect_ok("concurrent ADD");
        for ip in reply.ips() {
            assert!(seen.insert(ip.clone()), "address {ip} handed out twice");
        }
    }
    assert_eq!(seen.len(), 100);
    assert_eq!(node.reserved().len(), 100);
    assert_eq!(node.host_veths().len(), 50);
    assert!(pods[0].ping(&v4(&node.call("ADD", &ids[49], Some(&pods[49]), &conf).expect_ok("re-ADD").ips())));
    let children: Vec<_> = (0..50)
        .map(|i| {
            Call { command: "DEL", container_id: &ids[i], netns: Some(&netns[i]), ifname: "eth0", config: &conf }
                .spawn(Some(&node.host))
        })
        .collect();
    for child in children {
        finish(child).expect_ok("concurrent DEL");
    }
    assert!(node.reserved().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn sigkill_during_add_leaves_nothing_that_add_and_gc_cannot_repair() {
    if !have_privileges() {
        return;
    }
    let node = Node::new();
    let conf = node.config("1.1.0");
    let pods: Vec<TestNs> = (0..24).map(|i| TestNs::new(&format!("k{i}"))).collect();
    let netns: Vec<_> = pods.iter().map(|p| p.path()).collect();
    let ids: Vec<String> = (0..24).map(|i| format!("killed{i}")).collect();
    // Kill each ADD at a different instant, from before exec to after completion.
    for i in 0..24 {
        let call =
            Call { command: "ADD", container_id: &ids[i], netns: Some(&netns[i]), ifname: "eth0", config: &conf };
        let mut child = call.spawn(Some(&node.host));
        std::thread::sleep(Duration::from_micros(250 * i as u64));
        let _ = child.kill();
        let _ = child.wait();
    }
    // Every even one is retried by the "runtime" and must come up; odd ones are abandoned.
    let mut seen = HashSet::new();
    for i in (0..24).step_by(2) {
        let reply = node.call("ADD", &ids[i], Some(&pods[i]), &conf).expect_ok("ADD after SIGKILL");
        for ip in reply.ips() {
            assert!(seen.insert(ip.clone()), "address {ip} handed out twice");
        }
        assert!(node.host.ping(&v4(&reply.ips())), "retried pod {i} unreachable");
    }
    let valid: Vec<_> = (0..24).step_by(2).map(|i| json!({"containerID": ids[i], "ifname": "eth0"})).collect();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!(valid);
    node.call("GC", "", None, &gc).expect_ok("GC");
    let mut reserved = node.reserved();
    reserved.sort();
    let mut expected: Vec<String> = seen.into_iter().collect();
    expected.sort();
    assert_eq!(reserved, expected, "after GC the store holds exactly the live pods' addresses");
    // No stray temp or index files survive GC either.
    let stray: Vec<String> = std::fs::read_dir(node.ipam_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(stray.is_empty(), "temp files left: {stray:?}");
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn reads_subnets_and_mtu_from_the_node_config() {
    if !have_privileges() {
        return;
    }
    let node = Node::new();
    let conf = node.config_from_node_json(&["10.244.7.0/24", "fd00:10:244:7::/64"], 1450);
    let pod = TestNs::new("pod");
    let started = Instant::now();
    let reply = node.call("ADD", "c1", Some(&pod), &conf).expect_ok("ADD");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(v4(&reply.ips()).starts_with("10.244.7."));
    assert!(v6(&reply.ips()).starts_with("fd00:10:244:7::"));
    assert_eq!(reply.json["interfaces"][1]["mtu"], 1450);
    assert!(pod.exec_ok(&["ip", "link", "show", "eth0"]).contains("mtu 1450"));
    node.call("DEL", "c1", Some(&pod), &conf).expect_ok("DEL");
}

/// The pod's UID from `CNI_ARGS` is recorded in the host veth's alias (the
/// agent releases a pending veth only for that pod); a value not of a UID's
/// form is not recorded, and breaks nothing.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn the_host_veth_records_the_pods_uid_and_nothing_hostile() {
    if !have_privileges() {
        return;
    }
    let node = Node::new();
    let conf = node.config_from_node_json(&[common::SUBNET_V4, common::SUBNET_V6], 1400);
    let list = json!({"version": 1, "ingress": ["locked"], "egress": []});
    std::fs::write(node.data_dir.path().join(libweft::pending::FILE_NAME), list.to_string()).unwrap();
    let alias_and_group = |id: &str| {
        let out =
            node.host.exec_ok(&["ip", "-d", "link", "show", "dev", &libweft::netlink::host_veth_name(id, "eth0")]);
        let alias = out.lines().find_map(|l| l.trim().strip_prefix("alias ")).unwrap_or_default().to_string();
        let group = out.split_whitespace().skip_while(|w| *w != "group").nth(1).unwrap_or_default().to_string();
        (alias, group)
    };
    let uid = "6f1c9d2e-8a4b-4c3d-9e2f-0a1b2c3d4e5f";
    let hostile = format!("x uid {uid}");
    let long = "a".repeat(300);
    let cases = [
        ("c-uid", format!("K8S_POD_NAMESPACE=locked;K8S_POD_UID={uid}"), format!("weft pod c-uid uid {uid}")),
        ("c-none", "K8S_POD_NAMESPACE=locked".to_string(), "weft pod c-none".to_string()),
        ("c-forged", format!("K8S_POD_NAMESPACE=locked;K8S_POD_UID={hostile}"), "weft pod c-forged".to_string()),
        ("c-long", format!("K8S_POD_NAMESPACE=locked;K8S_POD_UID={long}"), "weft pod c-long".to_string()),
        ("c-newline", "K8S_POD_NAMESPACE=locked;K8S_POD_UID=a\nb".to_string(), "weft pod c-newline".to_string()),
    ];
    let mut pods = Vec::new();
    for (id, args, want) in &cases {
        let pod = TestNs::new(id);
        let path = pod.path();
        let call = Call { command: "ADD", container_id: id, netns: Some(&path), ifname: "eth0", config: &conf };
        let reply = call.run_with_args(Some(&node.host), args);
        assert!(reply.ok, "{id}: {}{}", reply.json, reply.stderr);
        let (alias, group) = alias_and_group(id);
        assert_eq!(&alias, want, "{id}");
        assert_eq!(group, libweft::pending::PENDING_INGRESS_GROUP.to_string(), "{id}: created pending");
        assert_eq!(
            reply.stderr.contains("no valid K8S_POD_UID"),
            *id != "c-uid",
            "{id}: warned iff no UID recorded: {}",
            reply.stderr
        );
        pods.push(pod);
    }
    for ((id, ..), pod) in cases.iter().zip(&pods) {
        node.call("DEL", id, Some(pod), &conf).expect_ok("DEL");
    }
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
}
