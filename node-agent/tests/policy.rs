//! NetworkPolicy on the real kernel: pods wired by the real `weft` plugin
//! into a node namespace, the `inet weft-policy` table rendered from the
//! desired state and loaded with `nft -j -f`, and real TCP connections
//! (IPv4 and IPv6) between the pods. Every probe is also asked of the
//! tracer, which must predict the kernel's verdict.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::Lab;
use libweft::netns::NetNs;
use libweft::testutil::{TestNs, have_privileges};
use weft_agent::desired::policy::policy;
use weft_agent::desired::policy_nft::ruleset;
use weft_agent::desired::policy_trace::{Probe, trace};
use weft_agent::wire_policy::*;

struct Pod {
    ns: TestNs,
    view: PodView,
}

impl Pod {
    fn ip(&self, v6: bool) -> IpAddr {
        self.view.ips.iter().copied().find(|i| i.is_ipv6() == v6).unwrap()
    }
}

/// Listens on `port` (both families) inside the pod and answers "ok" to
/// every connection; the thread outlives the test's interest in it.
fn serve(pod: &TestNs, port: u16) {
    let l = NetNs::open(&pod.path()).unwrap().run(|| TcpListener::bind(("::", port))).unwrap().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"ok");
        }
    });
}

/// Connects from inside `from` and reads the answer: true only if the
/// handshake and the reply both got through.
fn connects(from: &TestNs, to: IpAddr, port: u16) -> bool {
    let addr = SocketAddr::new(to, port);
    let attempt = || -> std::io::Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(800))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    };
    NetNs::open(&from.path()).unwrap().run(attempt).unwrap().is_ok_and(|s| s == "ok")
}

fn load(node: &TestNs, state: &weft_agent::desired::policy::PolicyState) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), ruleset(state).to_string()).unwrap();
    node.exec_ok(&["nft", "-j", "-f", file.path().to_str().unwrap()]);
}

fn sel(kv: &[(&str, &str)]) -> Selector {
    Selector { labels: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), exprs: vec![] }
}

fn pol(name: &str, pods: Selector, ingress: Option<Vec<Rule>>, egress: Option<Vec<Rule>>) -> PolicyView {
    PolicyView {
        namespace: "t".into(),
        name: name.into(),
        pod_selector: pods,
        ingress_isolated: ingress.is_some(),
        egress_isolated: egress.is_some(),
        ingress: ingress.unwrap_or_default(),
        egress: egress.unwrap_or_default(),
    }
}

fn named(name: &str) -> Port {
    Port { protocol: Protocol::Tcp, port: PortMatch::Named(name.into()) }
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn policies_hold_on_the_kernel_and_the_tracer_predicts_them() {
    if !have_privileges() {
        return;
    }
    let lab = Lab::new(&['A']);
    let node = &lab.nodes[0];
    let mk = |id: &str, labels: &[(&str, &str)], ports: &[(&str, u16)]| {
        let (ns, v4, v6) = node.add_pod(id, 1500);
        let view = PodView {
            namespace: "t".into(),
            name: id.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ips: vec![v4.parse().unwrap(), v6.parse().unwrap()],
            node: node.name.clone(),
            host_network: false,
            ports: ports
                .iter()
                .map(|(n, p)| NamedPort { name: n.to_string(), protocol: Protocol::Tcp, port: *p })
                .collect(),
        };
        Pod { ns, view }
    };
    let a = mk("pol-a", &[("role", "cli")], &[]);
    let b = mk("pol-b", &[], &[]);
    // One port name, a different number on each server.
    let srv1 = mk("pol-srv1", &[("app", "srv")], &[("http", 8080)]);
    let srv2 = mk("pol-srv2", &[("app", "db")], &[("http", 9090)]);
    for s in [&srv1, &srv2] {
        serve(&s.ns, 8080);
        serve(&s.ns, 9090);
    }
    serve(&a.ns, 8080);
    let pods: Vec<PodView> = [&a, &b, &srv1, &srv2].iter().map(|p| p.view.clone()).collect();
    let namespaces = vec![NamespaceView { name: "t".into(), labels: Default::default() }];

    // Loads the policies, then checks every (from, to, port) in both
    // families against the expectation and against the tracer.
    let check = |stage: &str, policies: &[PolicyView], cases: &[(&Pod, &Pod, u16, bool)]| {
        load(&node.ns, &policy(&node.name, &pods, &namespaces, policies));
        for (from, to, port, want) in cases {
            for v6 in [false, true] {
                let got = connects(&from.ns, to.ip(v6), *port);
                let probe = Probe { from: &from.view, to: &to.view, ipv6: v6, protocol: Protocol::Tcp, port: *port };
                let e = trace(&pods, &namespaces, policies, probe).unwrap();
                let what = format!("{stage}: {} -> {}:{port} v6={v6}", from.view.name, to.view.name);
                assert_eq!(got, *want, "{what}: kernel\n{e}");
                assert_eq!(e.allowed(), got, "{what}: the tracer disagrees with the kernel\n{e}");
            }
        }
    };

    // No policy: everything passes, the table is loaded but empty of verdicts.
    check("none", &[], &[(&a, &srv1, 8080, true), (&b, &srv2, 9090, true)]);

    // Deny-all ingress to app=srv: only srv1 is isolated.
    let deny_srv = pol("deny-srv", sel(&[("app", "srv")]), Some(vec![]), None);
    check(
        "deny-all",
        std::slice::from_ref(&deny_srv),
        &[(&a, &srv1, 8080, false), (&b, &srv1, 9090, false), (&a, &srv2, 8080, true)],
    );
    // The node itself (kubelet probes) still reaches the isolated pod.
    assert!(connects(&node.ns, srv1.ip(false), 8080) && connects(&node.ns, srv1.ip(true), 8080));

    // Additive: allow role=cli to the named port http (8080 on srv1); allow
    // the pod subnet except b to app=db's named port http (9090 on srv2).
    let (bv4, bv6) = (b.ip(false), b.ip(true));
    let from_cli = pol(
        "srv-from-cli",
        sel(&[("app", "srv")]),
        Some(vec![Rule {
            peers: vec![Peer::Pods { namespaces: Namespaces::Own, pods: sel(&[("role", "cli")]) }],
            ports: vec![named("http")],
        }]),
        None,
    );
    let block = |cidr: &str, ex: IpAddr| Peer::Block {
        cidr: cidr.parse().unwrap(),
        except: vec![ipnetwork::IpNetwork::new(ex, if ex.is_ipv6() { 128 } else { 32 }).unwrap()],
    };
    let db_from_subnet = pol(
        "db-from-subnet",
        sel(&[("app", "db")]),
        Some(vec![Rule {
            peers: vec![block("10.244.1.0/24", bv4), block("fd00:10:244:1::/64", bv6)],
            ports: vec![named("http")],
        }]),
        None,
    );
    let mut policies = vec![deny_srv, from_cli, db_from_subnet];
    check(
        "allow",
        &policies,
        &[
            (&a, &srv1, 8080, true),
            (&a, &srv1, 9090, false),
            (&b, &srv1, 8080, false),
            (&a, &srv2, 9090, true),
            (&a, &srv2, 8080, false),
            (&b, &srv2, 9090, false),
            (&srv1, &srv2, 9090, true),
        ],
    );

    // Egress for role=cli only to app=db on 9090, and a isolated for ingress
    // too: the replies of its allowed connections still come back.
    policies.push(pol(
        "cli-egress",
        sel(&[("role", "cli")]),
        Some(vec![]),
        Some(vec![Rule {
            peers: vec![Peer::Pods { namespaces: Namespaces::Own, pods: sel(&[("app", "db")]) }],
            ports: vec![Port { protocol: Protocol::Tcp, port: PortMatch::Range(9000, 9100) }],
        }]),
    ));
    check(
        "egress",
        &policies,
        &[(&a, &srv2, 9090, true), (&a, &srv1, 8080, false), (&srv2, &a, 8080, false), (&b, &srv1, 8080, false)],
    );

    // Reloading replaces the table: back to no policy.
    check("cleared", &[], &[(&b, &srv1, 8080, true), (&srv2, &a, 8080, true)]);
}

/// `weft-agent policy trace` against a real API server: it lists Pods,
/// Namespaces and NetworkPolicies once and explains each family's verdict.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn policy_trace_reads_the_api_and_explains_the_verdict() {
    if !have_privileges() {
        return;
    }
    let Some(bin) = libweft::testutil::control_plane::k8s_bin() else {
        assert!(std::env::var_os("CI").is_none(), "Kubernetes binaries missing under CI: run e2e setup first");
        eprintln!("skipping: Kubernetes binaries not built (set WEFT_K8S_BIN)");
        return;
    };
    let lab = Lab::new(&['A']);
    let cp = lab.control_plane(&bin);
    let objects = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "shop"}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web-from-cli", "namespace": "shop"},
         "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "cli"}}}], "ports": [{"port": "http"}]}]}},
    ]});
    cp.kubectl_stdin(&["create", "-f", "-"], &objects.to_string());
    for (name, label, n, port) in [("web", ("app", "web"), 5, 8080), ("cli", ("role", "cli"), 6, 1)] {
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {label.0: label.1}},
            "spec": {"nodeName": "node1", "automountServiceAccountToken": false, "containers": [
                {"name": "c", "image": "example.invalid/c", "ports": [{"name": "http", "containerPort": port}]}]}});
        cp.kubectl_stdin(&["create", "-f", "-"], &pod.to_string());
        let (v4, v6) = (format!("10.244.1.{n}"), format!("fd00:10:244:1::{n}"));
        let status =
            serde_json::json!({"status": {"phase": "Running", "podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}]}});
        cp.kubectl_ok(&[
            "patch",
            "pod",
            name,
            "-n",
            "shop",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
    }
    let trace = |from: &str, to: &str, port: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", lab.nodes[0].ns.name(), common::WEFT, "policy", "trace"])
            .args(["--from", from, "--to", to, "--port", port])
            .env("KUBECONFIG", cp.kubeconfig())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        text
    };
    let allowed = trace("shop/cli", "shop/web", "8080/TCP");
    assert_eq!(allowed.matches("allowed by shop/web-from-cli rule 0").count(), 2, "both families:\n{allowed}");
    assert_eq!(allowed.matches("verdict: ALLOWED").count(), 2, "{allowed}");
    let denied = trace("shop/cli", "shop/web", "9090/TCP");
    assert!(denied.contains("DENIED: selected by shop/web-from-cli"), "{denied}");
    let untouched = trace("shop/web", "shop/cli", "1/TCP");
    assert!(untouched.contains("no NetworkPolicy selects the pod") && untouched.contains("ALLOWED"), "{untouched}");
}
