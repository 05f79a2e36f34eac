//! The fast path against the real kernel: two node namespaces on segment A,
//! pods wired as weft wires them (a /32 on eth0, the link-local gateway,
//! a host route to the host-side veth), netfilter rules standing in for
//! weft's (a forward counter, anti-spoofing per veth, a policy that denies
//! one port), and the program attached on every pod veth and uplink.
//!
//! What must hold: established TCP flows on one node and across nodes (IPv4,
//! and IPv6 across nodes) carry
//! their data while the forward counter stands still and the program's
//! counters grow; a pod forging another pod's established flow is still
//! dropped by netfilter; a new connection the policy denies is still denied.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use libweft::netns::NetNs;
use libweft::testutil::bpffs::BpfFs;
use libweft::testutil::lab::{Segment, Segments};
use libweft::testutil::{TestNs, have_privileges};
use weft_fastpath::{Fastpath, Hook, Stats};

struct Pod {
    ns: TestNs,
    ip: &'static str,
    ip6: String,
    host_if: &'static str,
}

struct Node {
    ns: TestNs,
    pods: Vec<Pod>,
    fastpath: Option<Fastpath>,
}

fn ifindex(ns: &TestNs, ifname: &str) -> u32 {
    ns.exec_ok(&["cat", &format!("/sys/class/net/{ifname}/ifindex")]).trim().parse().unwrap()
}

/// Wires a pod the way the weft plugin does: 10.244.N.M/32 and
/// fd00:10:244:N::M/128, link-local gateways with permanent neighbours.
fn add_pod(node: &TestNs, tag: &str, ip: &'static str, host_if: &'static str) -> Pod {
    let [_, _, n, m]: [u8; 4] = ip.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let ip6 = format!("fd00:10:244:{n}::{m}");
    let ns = TestNs::new(tag);
    libweft::testutil::lab::veth(&ns, "eth0", node, host_if);
    node.exec_ok(&["ip", "link", "set", host_if, "up"]);
    node.exec_ok(&["ip", "route", "add", &format!("{ip}/32"), "dev", host_if]);
    let mac = node.exec_ok(&["cat", &format!("/sys/class/net/{host_if}/address")]);
    ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    ns.exec_ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    ns.exec_ok(&["ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
    ns.exec_ok(&["ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
    ns.exec_ok(&["ip", "neigh", "add", "169.254.1.1", "lladdr", mac.trim(), "dev", "eth0", "nud", "permanent"]);
    ns.exec_ok(&["ip", "-6", "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"]);
    ns.exec_ok(&["ip", "-6", "neigh", "add", "fe80::1", "lladdr", mac.trim(), "dev", "eth0", "nud", "permanent"]);
    ns.exec_ok(&["ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"]);
    node.exec_ok(&["ip", "-6", "route", "add", &format!("{ip6}/128"), "dev", host_if]);
    Pod { ns, ip, ip6, host_if }
}

/// Netfilter standing in for weft's table: every forwarded packet counted,
/// a pod's source checked against its veth, port 5001 of 10.244.2.2 closed
/// to new connections on that pod's node, established flows accepted.
fn ruleset(pods: &[Pod]) -> String {
    let mut rules = String::from(
        "table inet weftlab {\n counter forwarded {}\n counter spoofed {}\n counter denied {}\n \
         chain forward {\n  type filter hook forward priority 0; policy accept;\n  counter name forwarded\n",
    );
    for pod in pods {
        rules += &format!("  iifname \"{}\" ip saddr != {} counter name spoofed drop\n", pod.host_if, pod.ip);
    }
    // Like a NetworkPolicy on 10.244.2.2, enforced on its own node.
    if pods.iter().any(|p| p.ip == "10.244.2.2") {
        rules += "  ip daddr 10.244.2.2 tcp dport 5001 ct state new counter name denied drop\n";
    }
    rules += "  ct state established,related accept\n }\n}\n";
    rules
}

fn counter(node: &TestNs, name: &str) -> u64 {
    let out = node.exec_ok(&["nft", "list", "counter", "inet", "weftlab", name]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "packets").expect("packets in nft output");
    words[at + 1].parse().unwrap()
}

impl Node {
    fn new(segments: &Segments, name: &str, host: u8, pods: &[(&'static str, &'static str)]) -> Node {
        let ns = TestNs::new(name);
        segments.attach_node(&ns, Segment::A, host, &format!("brA-{name}"), None);
        let pods: Vec<Pod> = pods
            .iter()
            .enumerate()
            .map(|(i, (ip, host_if))| add_pod(&ns, &format!("{name}p{i}"), ip, host_if))
            .collect();
        let mut rules = tempfile_in_ns(&ruleset(&pods));
        ns.exec_ok(&["nft", "-f", rules.path()]);
        rules.remove();
        // Netfilter no longer sees the middle of a fast-pathed TCP flow, so
        // its window tracking must accept the FIN that ends it (the agent
        // sets the same).
        ns.exec_ok(&["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1"]);
        Node { ns, pods, fastpath: None }
    }

    fn attach(&mut self, pins: &Path) {
        let fastpath = Fastpath::load(pins).expect("load the fast path");
        let net = NetNs::open(&self.ns.path()).unwrap();
        let uplink = ifindex(&self.ns, "eth0");
        let veths: Vec<(u32, IpAddr)> = self
            .pods
            .iter()
            .flat_map(|p| {
                [
                    (ifindex(&self.ns, p.host_if), p.ip.parse().unwrap()),
                    (ifindex(&self.ns, p.host_if), p.ip6.parse().unwrap()),
                ]
            })
            .collect();
        net.run(|| {
            fastpath.attach(uplink, Hook::Uplink).unwrap();
            for (veth, _) in &veths {
                fastpath.attach(*veth, Hook::Pod).unwrap();
            }
        })
        .unwrap();
        for (veth, ip) in veths {
            fastpath.insert_pod(veth, ip).unwrap();
        }
        self.fastpath = Some(fastpath);
    }

    fn stats(&self) -> Stats {
        self.fastpath.as_ref().unwrap().stats().unwrap()
    }
}

/// A file the `ip netns exec`'d nft can read (same mount namespace).
struct TempFile(PathBuf);

impl TempFile {
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
    fn remove(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.remove();
    }
}

fn tempfile_in_ns(text: &str) -> TempFile {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "weft-fastpath-{}-{}.nft",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, text).unwrap();
    TempFile(path)
}

/// A TCP connection from `from` to `to:port`, both sockets opened inside
/// their pods' namespaces; the server counts what it reads and answers
/// with the count when the client closes its side.
struct Flow {
    client: TcpStream,
    server: std::thread::JoinHandle<u64>,
}

impl Flow {
    fn open(from: &Pod, to: &Pod, dst: &str, port: u16) -> Flow {
        let addr = SocketAddr::new(dst.parse().unwrap(), port);
        let listener = NetNs::open(&to.ns.path()).unwrap().run(|| TcpListener::bind(addr)).unwrap().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut total = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match conn.read(&mut buf).unwrap() {
                    0 => break,
                    n => total += n as u64,
                }
            }
            conn.write_all(&total.to_be_bytes()).unwrap();
            total
        });
        let client = connect(from, addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        client.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Flow { client, server }
    }

    fn send(&mut self, bytes: usize) {
        let chunk = vec![0x5au8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            self.client.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
    }

    /// Closes the client's side; the byte count the server read.
    fn finish(mut self) -> u64 {
        self.client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        self.client.read_exact(&mut count).unwrap();
        assert_eq!(self.server.join().unwrap(), u64::from_be_bytes(count));
        u64::from_be_bytes(count)
    }
}

fn connect(from: &Pod, addr: SocketAddr) -> std::io::Result<TcpStream> {
    NetNs::open(&from.ns.path()).unwrap().run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3))).unwrap()
}

/// Sends one TCP ACK segment with `src` as source from inside `pod` (a raw
/// socket bound to `src`, which the pod has added to its own eth0): a pod
/// forging another pod's flow.
fn send_forged_ack(pod: &Pod, src: SocketAddr, dst: SocketAddr) {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, bind, sendto, socket};
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else { panic!("IPv4 only") };
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    // The checksum over the pseudo header and the segment.
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&s.octets());
    add(&d.octets());
    add(&[0, 6, 0, 20]);
    add(&tcp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    NetNs::open(&pod.ns.path())
        .unwrap()
        .run(|| {
            let fd = socket(AddressFamily::Inet, SockType::Raw, SockFlag::empty(), SockProtocol::Tcp).unwrap();
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(std::net::SocketAddrV4::new(s, 0))).unwrap();
            let to = SockaddrIn::from(std::net::SocketAddrV4::new(d, 0));
            sendto(std::os::fd::AsRawFd::as_raw_fd(&fd), &tcp, &to, nix::sys::socket::MsgFlags::empty()).unwrap();
        })
        .unwrap();
}

const MB: usize = 1 << 20;

#[test]
#[ignore = "needs root (CAP_NET_ADMIN, CAP_BPF): cargo test -- --ignored"]
fn established_flows_bypass_netfilter_and_policy_still_decides() {
    if !have_privileges() {
        return;
    }
    let bpffs = BpfFs::new("fastpath");
    let segments = Segments::new("fplab", "fprt");
    let mut n1 = Node::new(&segments, "fpn1", 11, &[("10.244.1.2", "wv1a"), ("10.244.1.3", "wv1b")]);
    let mut n2 = Node::new(&segments, "fpn2", 12, &[("10.244.2.2", "wv2a")]);
    n1.ns.exec_ok(&["ip", "route", "add", "10.244.2.0/24", "via", "198.51.100.12"]);
    n2.ns.exec_ok(&["ip", "route", "add", "10.244.1.0/24", "via", "198.51.100.11"]);
    n1.ns.exec_ok(&["ip", "-6", "route", "add", "fd00:10:244:2::/64", "via", "2001:db8:a::12"]);
    n2.ns.exec_ok(&["ip", "-6", "route", "add", "fd00:10:244:1::/64", "via", "2001:db8:a::11"]);
    n1.attach(&bpffs.path().join("n1"));
    n2.attach(&bpffs.path().join("n2"));
    assert!(n1.pods[0].ns.ping("10.244.2.2"), "pods reach each other across nodes with the program attached");
    assert!(
        libweft::testutil::control_plane::eventually(Duration::from_secs(5), || n1.pods[0].ns.ping("fd00:10:244:2::2")),
        "and over IPv6"
    );

    for (what, from, to, dst, port) in [
        ("one node", &n1.pods[0], &n1.pods[1], n1.pods[1].ip.to_string(), 5000),
        ("across nodes", &n1.pods[0], &n2.pods[0], n2.pods[0].ip.to_string(), 5000),
        ("IPv6 across nodes", &n1.pods[0], &n2.pods[0], n2.pods[0].ip6.clone(), 5003),
    ] {
        let mut flow = Flow::open(from, to, &dst, port);
        flow.send(64 * 1024);
        std::thread::sleep(Duration::from_millis(200));
        let (fwd1, fwd2) = (counter(&n1.ns, "forwarded"), counter(&n2.ns, "forwarded"));
        let (s1, s2) = (n1.stats(), n2.stats());
        flow.send(32 * MB);
        let (fwd1_after, fwd2_after) = (counter(&n1.ns, "forwarded"), counter(&n2.ns, "forwarded"));
        let (s1_after, s2_after) = (n1.stats(), n2.stats());
        assert_eq!(flow.finish(), (64 * 1024 + 32 * MB) as u64, "{what}: every byte arrives");
        assert_eq!((fwd1_after, fwd2_after), (fwd1, fwd2), "{what}: netfilter's forward hook saw none of the data");
        if what == "one node" {
            assert!(
                s1_after.to_pod > s1.to_pod + 100,
                "{what}: the program redirected into pods: {s1:?} -> {s1_after:?}"
            );
        } else {
            assert!(s1_after.to_node > s1.to_node + 100, "{what}: node 1 redirected to node 2: {s1:?} -> {s1_after:?}");
            assert!(
                s2_after.to_pod > s2.to_pod + 100,
                "{what}: node 2 redirected into its pod: {s2:?} -> {s2_after:?}"
            );
        }
    }

    // A new connection the policy denies takes the slow path and is dropped.
    let denied = counter(&n2.ns, "denied");
    let listener =
        NetNs::open(&n2.pods[0].ns.path()).unwrap().run(|| TcpListener::bind("10.244.2.2:5001")).unwrap().unwrap();
    let attempt = connect(&n1.pods[0], "10.244.2.2:5001".parse().unwrap());
    assert!(attempt.is_err(), "the policy still denies a new connection");
    assert!(counter(&n2.ns, "denied") > denied, "the denying rule saw the SYN");
    drop(listener);

    // Pod 1b's established flow to 10.244.2.2:5000, forged by pod 1a.
    let victim = Flow::open(&n1.pods[1], &n2.pods[0], n2.pods[0].ip, 5002);
    let victim_src = victim.client.local_addr().unwrap();
    n1.pods[0].ns.exec_ok(&["ip", "addr", "add", "10.244.1.3/32", "dev", "eth0"]);
    let (spoofed, to_node) = (counter(&n1.ns, "spoofed"), n1.stats().to_node);
    send_forged_ack(&n1.pods[0], victim_src, victim.client.peer_addr().unwrap());
    assert!(
        libweft::testutil::control_plane::eventually(Duration::from_secs(3), || counter(&n1.ns, "spoofed")
            == spoofed + 1),
        "netfilter dropped the forged segment"
    );
    assert_eq!(n1.stats().to_node, to_node, "the forged segment did not take the fast path");
    victim.finish();
    n1.pods[0].ns.exec_ok(&["ip", "addr", "del", "10.244.1.3/32", "dev", "eth0"]);
}
