//! A lab of network namespaces shaped like the design's address plan:
//! segment A (198.51.100.0/24, 2001:db8:a::/64) and segment B
//! (203.0.113.0/25, 2001:db8:b::/64) as bridges in a lab namespace, joined
//! by a router namespace. Nothing touches the machine's own namespace.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libweft::netlink::Netlink;
use libweft::netns::NetNs;
use libweft::testutil::TestNs;
use libweft::testutil::agent::{self, AgentConfig};
use libweft::testutil::control_plane::{ControlPlane, Proc};
use libweft::testutil::lab::{NodeUnderlay, Segment, Segments, veth};
use serde_json::json;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft-agent");

/// The CNI plugin binary, built next to this test binary's target dir.
pub fn weft_cni() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/weft
    let path = exe.parent().unwrap().parent().unwrap().join("weft");
    assert!(path.exists(), "build the plugin first: cargo build -p weft-cni ({} missing)", path.display());
    path
}

pub struct Lab {
    /// Segments A and B, and the router between them.
    pub underlay: Segments,
    /// An "external" host behind the router, outside the cluster: 203.0.113.200, 2001:db8:e::200.
    pub external: TestNs,
    pub nodes: Vec<Node>,
}

pub const EXTERNAL_V4: &str = "203.0.113.200";
pub const EXTERNAL_V6: &str = "2001:db8:e::200";

pub struct Node {
    pub name: String,
    pub ns: TestNs,
    pub v4: String,
    pub v6: String,
    pub pod_v4: String,
    pub pod_v6: String,
    pub ipam: tempfile::TempDir,
}

impl Lab {
    /// `segments[i]` is 'A' or 'B' for node i+1.
    pub fn new(segments: &[char]) -> Lab {
        let underlay = Segments::new("lab", "router");
        let router = &underlay.router;
        let external = TestNs::new("ext");
        veth(router, "r-ext", &external, "eth0");
        router.exec_ok(&["ip", "link", "set", "r-ext", "up"]);
        router.exec_ok(&["ip", "addr", "add", "203.0.113.129/25", "dev", "r-ext"]);
        router.exec_ok(&["ip", "addr", "add", "2001:db8:e::1/64", "dev", "r-ext", "nodad"]);
        external.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        external.exec_ok(&["ip", "addr", "add", &format!("{EXTERNAL_V4}/25"), "dev", "eth0"]);
        external.exec_ok(&["ip", "addr", "add", &format!("{EXTERNAL_V6}/64"), "dev", "eth0", "nodad"]);
        // The external host knows the node networks but not the pod networks:
        // pod traffic reaches it only if masqueraded.
        for (net, gw) in [("198.51.100.0/24", "203.0.113.129"), ("203.0.113.0/25", "203.0.113.129")] {
            external.exec_ok(&["ip", "route", "add", net, "via", gw]);
        }
        for net in ["2001:db8:a::/64", "2001:db8:b::/64"] {
            external.exec_ok(&["ip", "-6", "route", "add", net, "via", "2001:db8:e::1"]);
        }
        let mut nodes = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            let n = i + 1;
            let name = format!("node{n}");
            let ns = TestNs::new(&name);
            let (segment, br) = if *seg == 'A' { (Segment::A, "brA") } else { (Segment::B, "brB") };
            let NodeUnderlay { v4, v6, gw4, gw6 } =
                underlay.attach_node(&ns, segment, 10 + n as u8, &format!("{br}-n{n}"), None);
            // The external host, behind the router too.
            ns.exec_ok(&["ip", "route", "add", "203.0.113.128/25", "via", gw4]);
            ns.exec_ok(&["ip", "-6", "route", "add", "2001:db8:e::/64", "via", gw6]);
            nodes.push(Node {
                name,
                ns,
                v4,
                v6,
                pod_v4: format!("10.244.{n}.0/24"),
                pod_v6: format!("fd00:10:244:{n}::/64"),
                ipam: tempfile::tempdir().unwrap(),
            });
        }
        Lab { underlay, external, nodes }
    }
}

/// The API server's address on segment A.
pub use libweft::testutil::lab::CP_IP;

impl Lab {
    /// etcd and kube-apiserver in a control-plane namespace on segment A.
    pub fn control_plane(&self, bin: &std::path::Path) -> ControlPlane {
        self.control_plane_with_flags(bin, &[])
    }

    /// [`Lab::control_plane`] with extra kube-apiserver flags.
    pub fn control_plane_with_flags(&self, bin: &std::path::Path, apiserver_flags: &[&str]) -> ControlPlane {
        self.underlay.control_plane("cp", bin, apiserver_flags)
    }
}

impl Node {
    /// Wires a pod with the real plugin and explicit subnets; returns (pod ns, IPv4, IPv6).
    pub fn add_pod(&self, id: &str, mtu: u32) -> (TestNs, String, String) {
        self.add_pod_with(
            id,
            json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft",
            "subnets": [self.pod_v4, self.pod_v6], "dataDir": self.ipam.path(), "mtu": mtu}),
        )
    }

    /// Wires a pod the way the agent's conflist does: subnets and MTU from node.json.
    pub fn add_pod_from_node_config(&self, id: &str, node_json: &std::path::Path) -> (TestNs, String, String) {
        self.add_pod_with(
            id,
            json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft",
            "nodeConfig": node_json, "dataDir": self.ipam.path()}),
        )
    }

    /// Wires a pod with the real plugin and the network config `conf`.
    pub fn add_pod_with(&self, id: &str, conf: serde_json::Value) -> (TestNs, String, String) {
        let pod = TestNs::new(id);
        let (v4, v6) = self.add_pod_into(&pod, id, "", conf);
        (pod, v4, v6)
    }

    /// Wires the existing namespace `pod` as the agent's conflist does, the
    /// runtime passing the pod's Kubernetes namespace and, for a Pod object
    /// that exists, its UID in CNI_ARGS (as containerd does); returns
    /// (IPv4, IPv6) once ADD has returned.
    pub fn add_k8s_pod(
        &self,
        pod: &TestNs,
        id: &str,
        namespace: &str,
        uid: Option<&str>,
        node_json: &Path,
    ) -> (String, String) {
        let conf = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft",
            "nodeConfig": node_json, "dataDir": self.ipam.path()});
        let uid = uid.map(|u| format!(";K8S_POD_UID={u}")).unwrap_or_default();
        self.add_pod_into(
            pod,
            id,
            &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={id}{uid}"),
            conf,
        )
    }

    /// Runs the plugin's `command` for container `id` in `pod` with `conf`;
    /// returns whether it succeeded and what it printed.
    pub fn cni(
        &self,
        command: &str,
        pod: &TestNs,
        id: &str,
        cni_args: &str,
        conf: &serde_json::Value,
    ) -> (bool, serde_json::Value) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(weft_cni())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", cni_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let result = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.success(), result)
    }

    fn add_pod_into(&self, pod: &TestNs, id: &str, cni_args: &str, conf: serde_json::Value) -> (String, String) {
        let (ok, result) = self.cni("ADD", pod, id, cni_args, &conf);
        assert!(ok, "ADD {id}: {result}");
        let ips: Vec<String> = result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().to_string())
            .collect();
        let v4 = ips.iter().find(|i| i.contains('.')).unwrap().clone();
        let v6 = ips.iter().find(|i| i.contains(':')).unwrap().clone();
        (v4, v6)
    }

    /// This node as a believed peer would see it: both underlay addresses
    /// (in its status.addresses), both pod CIDRs, the derived VTEP MAC.
    pub fn view(&self) -> weft_agent::wire::NodeView {
        weft_agent::wire::NodeView {
            name: self.name.clone(),
            ipv4: Some(self.v4.parse().unwrap()),
            ipv6: Some(self.v6.parse().unwrap()),
            pod_cidrs: vec![self.pod_v4.parse().unwrap(), self.pod_v6.parse().unwrap()],
            vtep_mac: Some(weft_agent::desired::vtep_mac_for(&self.name)),
            addresses: vec![self.v4.parse().unwrap(), self.v6.parse().unwrap()],
            created: None,
            uid: self.name.clone(),
        }
    }

    /// A netlink connection inside this node (call within a tokio runtime).
    pub fn netlink(&self) -> Netlink {
        Netlink::from_socket(NetNs::open(&self.ns.path()).unwrap().route_socket().unwrap()).unwrap()
    }
}

/// The address of an agent's probes and metrics inside its node namespace.
pub use libweft::testutil::agent::AGENT_HTTP;

/// Writes an agent configuration into `dir`, with every path the agent
/// writes (run dir, CNI config and bin dirs) inside it; returns its path.
pub fn agent_config(dir: &Path, backend: &str, resync_seconds: u64) -> PathBuf {
    AgentConfig::new(dir, ["10.244.0.0/16", "fd00:10:244::/56"], backend)
        .with("resyncPeriodSeconds", json!(resync_seconds))
        .with("healthAddress", json!(AGENT_HTTP))
        .write(&dir.join("config.json"))
}

/// Starts weft-agent for `node` with the configuration at `config`,
/// logging at debug level into `<name>.log` beside it.
pub fn spawn_agent(name: &str, node: &Node, cp: &ControlPlane, config: &Path) -> Proc {
    agent::spawn_agent(name, Path::new(WEFT), &node.name, &node.ns, &cp.kubeconfig(), config, "debug")
}

/// A Pod object as the kubelet would leave it: scheduled on `node`, with
/// the addresses the plugin gave it (the pod need not run).
pub fn create_pod(cp: &ControlPlane, name: &str, node: &str, labels: serde_json::Value, ips: &[&str]) {
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none"}]}});
    // No controller manager runs to create the namespace's default ServiceAccount, which admission wants.
    let _ = cp.kubectl(&["create", "serviceaccount", "default", "-n", "default"]);
    cp.kubectl_stdin(&["create", "-f", "-"], &pod.to_string());
    let pod_ips: Vec<_> = ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
    let patch = serde_json::json!({"status": {"podIP": ips[0], "podIPs": pod_ips}}).to_string();
    cp.kubectl_ok(&["patch", "pod", name, "-n", "default", "--subresource=status", "--type=merge", "-p", &patch]);
}

/// The Kubernetes binaries, or `None` (with a message) when the test must
/// skip: not root, or the binaries (and helm) not built. Fails under CI.
pub fn k8s_bin_or_skip() -> Option<PathBuf> {
    if !libweft::testutil::have_privileges() {
        return None;
    }
    let bin = libweft::testutil::control_plane::k8s_bin().filter(|b| b.join("helm").exists());
    if bin.is_none() {
        assert!(std::env::var_os("CI").is_none(), "Kubernetes binaries missing under CI: run e2e setup first");
        eprintln!("skipping: Kubernetes binaries or helm not built (set WEFT_K8S_BIN)");
    }
    bin
}

/// etcd and kube-apiserver alone in a namespace, at `CP_IP` on a veth of
/// its own (the kernel here has no dummy links), for tests that need the
/// API but no node; `apiserver_flags` are added to kube-apiserver's.
pub fn lone_control_plane(bin: &Path, apiserver_flags: &[&str]) -> ControlPlane {
    let ns = TestNs::new("cp");
    ns.exec_ok(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
    ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    ns.exec_ok(&["ip", "link", "set", "eth1", "up"]);
    ns.exec_ok(&["ip", "addr", "add", &format!("{CP_IP}/24"), "dev", "eth0"]);
    ControlPlane::start_with_flags(ns, CP_IP, bin, apiserver_flags)
}

/// kube-apiserver's flag that refuses streamed lists, as 1.33 does by default.
pub const NO_WATCH_LIST: &str = "--feature-gates=WatchList=false";

/// `weft-agent policy trace` run in node namespace `node` against `cp`'s
/// API: its output (both families).
pub fn policy_trace(node: &TestNs, cp: &ControlPlane, from: &str, to: &str, port: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", node.name(), WEFT, "policy", "trace"])
        .args(["--from", from, "--to", to, "--port", port])
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The pinned network-policy-api module, whose CRDs weft implements.
pub const NETWORK_POLICY_API: &str = "sigs.k8s.io/network-policy-api@v0.3.0";

/// The ClusterNetworkPolicy CRD of the module's standard channel, read
/// from the Go module cache (downloaded there through the Go proxy when
/// missing). `None` with a loud message when Go cannot provide it (a
/// failure under CI).
pub fn cluster_network_policy_crd() -> Option<PathBuf> {
    let file = "config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml";
    let go = |args: &[&str]| {
        let tmp = tempfile::tempdir().ok()?;
        let out = Command::new("go").args(args).current_dir(tmp.path()).env("GOFLAGS", "-mod=mod").output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let cached = go(&["env", "GOMODCACHE"]).map(|c| Path::new(c.trim()).join(NETWORK_POLICY_API).join(file));
    let crd = match cached {
        Some(p) if p.exists() => Some(p),
        _ => go(&["mod", "download", "-json", NETWORK_POLICY_API])
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .and_then(|j| j["Dir"].as_str().map(|d| Path::new(d).join(file)))
            .filter(|p| p.exists()),
    };
    if crd.is_none() {
        assert!(std::env::var_os("CI").is_none(), "no {NETWORK_POLICY_API} CRD under CI: is Go installed?");
        eprintln!("SKIPPING: `go mod download {NETWORK_POLICY_API}` failed: no ClusterNetworkPolicy CRD to install");
    }
    crd
}

/// The chart's templates `templates` (e.g. `templates/rbac.yaml`) as a
/// release "weft" in `namespace` renders them: what ships, by helm.
pub fn render_chart(bin: &Path, namespace: &str, templates: &[&str]) -> String {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weft");
    let mut helm = Command::new(bin.join("helm"));
    helm.args(["template", "weft"]).arg(chart).args(["--namespace", namespace, "--kube-version", "1.36.3"]);
    for t in templates {
        helm.args(["--show-only", t]);
    }
    let out = helm.output().unwrap();
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A kubeconfig for `cp` as the holder of `token`, whose default namespace
/// is `namespace` (an agent's, in a pod: its service account's).
pub fn token_kubeconfig(cp: &ControlPlane, token: &str, namespace: &str) -> PathBuf {
    let name = format!("kubeconfig-{:x}", libweft::netlink::stable_hash(token.bytes().chain(namespace.bytes())));
    let config = cp.dir.path().join(name);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://{CP_IP}:6443\n    insecure-skip-tls-verify: true\nusers:\n- name: t\n  user:\n    token: {token}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t, namespace: {namespace}}}\ncurrent-context: t\n"
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// A pod of weft's service account on `node` in `namespace` (it never
/// runs), and a token bound to it as the kubelet gets for the agent: it
/// carries the node's name.
pub fn weft_pod_token(cp: &ControlPlane, namespace: &str, node: &str) -> String {
    let pod_name = format!("weft-{node}");
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": namespace},
        "spec": {"nodeName": node, "serviceAccountName": "weft", "hostNetwork": true,
                 "containers": [{"name": "agent", "image": "none"}]}});
    cp.kubectl_stdin(&["create", "-f", "-"], &pod.to_string());
    let args = ["create", "token", "weft", "-n", namespace, "--duration", "1h", "--bound-object-kind", "Pod"];
    let mut args = args.to_vec();
    args.extend(["--bound-object-name", &pod_name]);
    cp.kubectl_ok(&args).trim().to_string()
}

/// Creates the ClusterNetworkPolicy CRD at `crd` and waits until the API serves it.
pub fn install_cnp_crd(cp: &ControlPlane, crd: &Path) {
    cp.kubectl_ok(&["create", "-f", &crd.display().to_string()]);
    let name = "crd/clusternetworkpolicies.policy.networking.k8s.io";
    cp.kubectl_ok(&["wait", "--for=condition=established", "--timeout=30s", name]);
}
