//! The data plane's trust filters in weft's nftables table, on the real
//! kernel: pods wired by the real plugin, the agent's desired kernel state
//! and table loaded in each node namespace. Each case first shows that the
//! forged traffic gets through without weft's table (so the test can fail),
//! then that the table drops and counts it while legitimate traffic flows.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::{Lab, Node};
use libweft::testutil::{TestNs, have_privileges};
use serde_json::Value;
use weft_agent::apply::kernel;
use weft_agent::base::mirror::Mirror;
use weft_agent::config::Config;
use weft_agent::desired::weft_table::{NftTable, write_ruleset};
use weft_agent::desired::{self, vtep_mac_for};
use weft_agent::observe::underlay;
use weft_agent::wire::NodeView;

/// Programs the kernel state of every node in `cluster` (the Nodes the API
/// would list) as its agent would, with the kernel's own reverse-path
/// filter off, so that only weft's table can drop a forged source.
fn program(lab: &Lab, cluster: &[usize], cfg: &Config) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let views: Vec<NodeView> = cluster.iter().map(|&i| lab.nodes[i].view()).collect();
    for &i in cluster {
        let node = &lab.nodes[i];
        for key in ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
            node.ns.exec_ok(&["sysctl", "-qw", key]);
        }
        rt.block_on(async {
            let nl = node.netlink();
            let ips = [node.v4.parse().unwrap(), node.v6.parse().unwrap()];
            let u = underlay::detect(&nl, None, &ips).await.unwrap();
            let d = desired::kernel_state(cfg, &node.view(), &u, vtep_mac_for(&node.name), &views, true);
            let applied = kernel::sync(&nl, &d, u.ifindex, &Mirror::default(), None).await.unwrap();
            assert!(applied.errors.is_empty(), "{}: {:?}", node.name, applied.errors);
        });
    }
}

/// Loads weft's table into `node`, with `peers` as the other Nodes of the cluster.
fn load_table(node: &Node, peers: &[&Node], cfg: &Config) {
    let mut node_ips: Vec<IpAddr> = vec![node.v4.parse().unwrap(), node.v6.parse().unwrap()];
    let mut vxlan_peers = Vec::new();
    for p in peers {
        vxlan_peers.extend([p.v4.parse::<IpAddr>().unwrap(), p.v6.parse().unwrap()]);
    }
    node_ips.extend(vxlan_peers.iter().copied());
    let own = [node.pod_v4.parse().unwrap(), node.pod_v6.parse().unwrap()];
    // As the agent writes it.
    let mut text = Vec::new();
    write_ruleset(cfg, &NftTable::new(&own, &node_ips, &vxlan_peers), &mut text).unwrap();
    nft_file(&node.ns, std::str::from_utf8(&text).unwrap(), true);
}

fn nft_file(ns: &TestNs, text: &str, json: bool) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    let path = f.path().to_str().unwrap();
    if json {
        ns.exec_ok(&["nft", "-j", "-f", path])
    } else {
        ns.exec_ok(&["nft", "-f", path])
    };
}

/// Packets counted so far by the named counter `name` of table `inet <table>`.
fn counter(ns: &TestNs, table: &str, name: &str) -> u64 {
    let out = ns.exec_ok(&["nft", "-j", "list", "counter", "inet", table, name]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["nftables"].as_array().unwrap().iter().find_map(|o| o["counter"]["packets"].as_u64()).unwrap()
}

/// A table in the receiving pod that counts what arrives from each source,
/// one named counter per (name, source address).
fn arrivals(pod: &TestNs, sources: &[(&str, &str)]) {
    let mut text = String::from("table inet probe {\n");
    for (name, _) in sources {
        text += &format!("  counter {name} {{ }}\n");
    }
    text += "  chain in {\n    type filter hook prerouting priority -400; policy accept;\n";
    for (name, src) in sources {
        let proto = if src.contains(':') { "ip6" } else { "ip" };
        text += &format!("    {proto} saddr {src} counter name {name}\n");
    }
    text += "  }\n}\n";
    nft_file(pod, &text, false);
}

fn ping_from(pod: &TestNs, src: &str, dst: &str) -> bool {
    let fam = if dst.contains(':') { "-6" } else { "-4" };
    pod.exec(&["ping", fam, "-c1", "-W1", "-I", src, dst]).status.success()
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn a_pod_cannot_send_from_an_address_that_is_not_its_own() {
    if !have_privileges() {
        return;
    }
    let lab = Lab::new(&['A', 'A']);
    let (p1, p1v4, p1v6) = lab.nodes[0].add_pod("spoof-p1", 1500);
    let (_p1b, p1bv4, p1bv6) = lab.nodes[0].add_pod("spoof-p1b", 1500);
    let (p2, p2v4, p2v6) = lab.nodes[1].add_pod("spoof-p2", 1500);
    let cfg = Config::example("routes".parse().unwrap());
    program(&lab, &[0, 1], &cfg);

    // p1 takes an address nobody was given, and its neighbour's.
    let forged = [
        ("unassigned4", "10.244.1.200"),
        ("unassigned6", "fd00:10:244:1::200"),
        ("other4", &*p1bv4),
        ("other6", &*p1bv6),
    ];
    for (_, a) in forged {
        if a.contains(':') {
            p1.exec_ok(&["ip", "addr", "add", &format!("{a}/128"), "dev", "eth0", "nodad"]);
        } else {
            p1.exec_ok(&["ip", "addr", "add", &format!("{a}/32"), "dev", "eth0"]);
        }
    }
    let mut probes = forged.to_vec();
    probes.extend([("own4", &*p1v4), ("own6", &*p1v6)]);
    arrivals(&p2, &probes);
    let send_forged = || {
        for (_, src) in forged {
            let dst = if src.contains(':') { &p2v6 } else { &p2v4 };
            ping_from(&p1, src, dst); // no reply comes back to a forged source; arrival is what counts
        }
    };

    send_forged();
    for (name, src) in forged {
        assert!(counter(&p2, "probe", name) >= 1, "without weft's table, a packet from {src} reaches p2");
    }

    load_table(&lab.nodes[0], &[&lab.nodes[1]], &cfg);
    let before: Vec<u64> = forged.iter().map(|(n, _)| counter(&p2, "probe", n)).collect();
    send_forged();
    for ((name, src), was) in forged.iter().zip(before) {
        assert_eq!(counter(&p2, "probe", name), was, "a packet from forged {src} got through");
    }
    assert!(counter(&lab.nodes[0].ns, "weft", "spoofed_source") >= 4, "each forged packet is counted");
    // The pod's own addresses still work, both families, and so does the pod beside it.
    assert!(ping_from(&p1, &p1v4, &p2v4) && ping_from(&p1, &p1v6, &p2v6), "own address must pass");
    assert!(counter(&p2, "probe", "own4") >= 1 && counter(&p2, "probe", "own6") >= 1);
    assert!(p1.ping(&p1bv4), "a pod reaches its neighbour on the same node");
}

/// A VXLAN packet as a pod or a stranger would forge it: an ICMP echo from
/// `inner_src` to `inner_dst` inside a frame for the VTEP MAC `vtep_mac`.
fn send_vxlan(from: &TestNs, to: &str, cfg: &Config, vtep_mac: [u8; 6], inner_src: &str, inner_dst: &str) {
    const FORGE: &str = r#"
import socket, struct, sys
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
to, port, vni, mac, src, dst = sys.argv[1:7]
icmp = struct.pack('!BBHHH', 8, 0, 0, 0x77, 1) + b'weft' * 8
icmp = icmp[:2] + struct.pack('!H', csum(icmp)) + icmp[4:]
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
frame = bytes.fromhex(mac.replace(':', '')) + bytes.fromhex('0ea0a0a0a0a0') + b'\x08\x00' + ip + icmp
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(struct.pack('!II', 0x08000000, int(vni) << 8) + frame, (to, int(port)))
"#;
    let (port, vni) = (cfg.vxlan.port.to_string(), cfg.vxlan.vni.to_string());
    let mac = libweft::netlink::format_mac(&vtep_mac);
    from.exec_ok(&["python3", "-c", FORGE, to, &port, &vni, &mac, inner_src, inner_dst]);
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn vxlan_is_taken_only_from_peers_and_never_from_pods() {
    if !have_privileges() {
        return;
    }
    // node3 sits on the same segment but is no Node of the cluster: a stranger.
    let lab = Lab::new(&['A', 'A', 'A']);
    let (p1, p1v4, _) = lab.nodes[0].add_pod("vxf-p1", 1450);
    let (p2, p2v4, p2v6) = lab.nodes[1].add_pod("vxf-p2", 1450);
    let cfg = Config::example("vxlan".parse().unwrap());
    program(&lab, &[0, 1], &cfg);
    let (n1, n2, stranger) = (&lab.nodes[0], &lab.nodes[1], &lab.nodes[2]);
    arrivals(&p2, &[("stranger", "10.244.3.9"), ("pod", &p1v4)]);
    let node2 = n2.v4.as_str();
    let inject = || {
        send_vxlan(&stranger.ns, node2, &cfg, vtep_mac_for(&n2.name), "10.244.3.9", &p2v4);
        send_vxlan(&p1, node2, &cfg, vtep_mac_for(&n2.name), &p1v4, &p2v4);
    };
    // Poll: the forged frames cross two namespaces asynchronously.
    let arrived = |name: &str, at_least: u64| {
        (0..20).any(|_| {
            let n = counter(&p2, "probe", name);
            n >= at_least || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                false
            }
        })
    };

    inject();
    assert!(arrived("stranger", 3), "without weft's table, a stranger's VXLAN frame reaches a pod");
    assert!(arrived("pod", 3), "without weft's table, a pod's forged VXLAN frame reaches another node's pod");

    // node1's table: its pods may not send to the VXLAN port at all.
    load_table(n1, &[n2], &cfg);
    let pod_before = counter(&p2, "probe", "pod");
    inject();
    assert!(arrived("stranger", 6), "node2 has no table yet");
    assert_eq!(counter(&p2, "probe", "pod"), pod_before, "a pod's VXLAN packet left its node");
    assert!(counter(&n1.ns, "weft", "pod_vxlan") >= 3);

    // node2's table: VXLAN only from its believed peer, node1.
    load_table(n2, &[n1], &cfg);
    let stranger_before = counter(&p2, "probe", "stranger");
    inject();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(counter(&p2, "probe", "stranger"), stranger_before, "a stranger's VXLAN frame got in");
    assert!(counter(&n2.ns, "weft", "vxlan_unknown_peer") >= 3);

    // The peer's own VXLAN traffic still flows, both pod families.
    assert!(p1.ping(&p2v4) && p1.ping(&p2v6), "pods across the overlay must still talk");
    assert!(counter(&p2, "probe", "pod") > pod_before, "node1's tunnel delivers p1's packets");
}
