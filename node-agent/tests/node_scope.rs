//! weft-agent's credentials against a real kube-apiserver: the chart's
//! ServiceAccount, RBAC and admission policy (rendered by helm from
//! charts/weft, so this checks what ships), and real tokens from
//! TokenRequest, bound to a weft pod on node1 as the kubelet's are. The
//! agent's token may change its own Node's weft.dev/ annotations (the real
//! agent publishes with it) and nothing else. Needs root and the Kubernetes binaries (and helm) built by
//! e2e/build-tools.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{CP_IP, Lab, k8s_bin_or_skip};
use libweft::testutil::agent::spawn_agent;
use libweft::testutil::control_plane::{ControlPlane, eventually};
use serde_json::{Value, json};

const NAMESPACE: &str = "kube-system";
const POLICY: &str = "weft-own-node-annotations";

/// The chart's objects that give weft its credentials (and the CRD they
/// name), as a release "weft" in kube-system renders them.
fn render_chart(bin: &Path) -> String {
    common::render_chart(
        bin,
        NAMESPACE,
        &[
            "templates/serviceaccount.yaml",
            "templates/rbac.yaml",
            "templates/node-policy.yaml",
            "templates/policy-status.yaml",
            "templates/clusternetworkpolicy-crd.yaml",
        ],
    )
}

/// A kubeconfig for `cp` as the holder of `token`.
fn token_kubeconfig(cp: &ControlPlane, token: &str) -> PathBuf {
    common::token_kubeconfig(cp, token, NAMESPACE)
}

/// kubectl against `cp` as the holder of `token`.
fn as_token(cp: &ControlPlane, token: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", cp.ns.name()])
        .arg(cp.bin.join("kubectl"))
        .arg("--kubeconfig")
        .arg(token_kubeconfig(cp, token))
        .args(args)
        .output()
        .unwrap()
}

/// The API server's answer: HTTP status and body.
struct Answer {
    code: u16,
    body: String,
}

/// A merge patch of Node `node` through nodes/status as the holder of
/// `token`, the request weft-agent sends to publish (the only Node write its
/// RBAC allows; kubectl would GET first, which the agent never does).
fn patch_status(cp: &ControlPlane, token: &str, node: &str, patch: &Value) -> Answer {
    let out = Command::new("ip")
        .args(["netns", "exec", cp.ns.name(), "curl", "-sk", "--max-time", "10", "-X", "PATCH"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/merge-patch+json", "-w", "\\n%{http_code}"])
        .args(["--data", &patch.to_string()])
        .arg(format!("https://{CP_IP}:6443/api/v1/nodes/{node}/status"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Answer { code: code.trim().parse().unwrap_or(0), body: body.to_string() }
}

fn assert_allowed(a: &Answer, what: &str) {
    assert_eq!(a.code, 200, "{what}: refused: {}", a.body);
}

/// Refused by the policy (RBAC allows every one of these).
fn refused_by_policy(a: &Answer) -> bool {
    a.code == 403 && a.body.contains(POLICY) && a.body.contains("denied")
}

fn assert_refused(a: &Answer, what: &str) {
    assert!(refused_by_policy(a), "{what}: not refused by {POLICY}: HTTP {} {}", a.code, a.body);
}

fn weft_annotation(value: &str) -> Value {
    json!({"metadata": {"annotations": {"weft.dev/public-ip": value}}})
}

#[test]
#[ignore = "needs root and the Kubernetes binaries: cargo test -- --ignored"]
fn the_agent_token_changes_only_its_own_nodes_weft_annotations() {
    let Some(bin) = k8s_bin_or_skip() else { return };
    let lab = Lab::new(&['A']);
    let cp = lab.control_plane(&bin);
    let node1 = &lab.nodes[0];
    cp.create_node("node1", &[&node1.pod_v4, &node1.pod_v6], &[&node1.v4, &node1.v6]);
    cp.create_node("node2", &["10.244.2.0/24"], &["198.51.100.12"]);
    cp.kubectl_stdin(&["apply", "-f", "-"], &render_chart(&bin));

    // The weft pod on node1; a token bound to it, as the kubelet gets for the agent, and one bound to nothing.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "weft-node1", "namespace": NAMESPACE},
        "spec": {"nodeName": "node1", "serviceAccountName": "weft", "hostNetwork": true,
                 "containers": [{"name": "agent", "image": "none"}]}});
    cp.kubectl_stdin(&["create", "-f", "-"], &pod.to_string());
    let token = |extra: &[&str]| {
        let mut args = vec!["create", "token", "weft", "-n", NAMESPACE, "--duration", "1h"];
        args.extend_from_slice(extra);
        cp.kubectl_ok(&args).trim().to_string()
    };
    let pod_token = token(&["--bound-object-kind", "Pod", "--bound-object-name", "weft-node1"]);
    let unbound_token = token(&[]);

    // Kubernetes puts the pod's node in the token's extra (ServiceAccountTokenPodNodeInfo).
    let whoami: Value = serde_json::from_slice(&as_token(&cp, &pod_token, &["auth", "whoami", "-o", "json"]).stdout)
        .expect("kubectl auth whoami");
    assert_eq!(
        whoami["status"]["userInfo"]["extra"]["authentication.kubernetes.io/node-name"],
        json!(["node1"]),
        "{whoami}"
    );
    // The policy compiles against the Node schema without warnings.
    let policy: Value =
        serde_json::from_str(&cp.kubectl_ok(&["get", "validatingadmissionpolicy", POLICY, "-o", "json"])).unwrap();
    assert!(policy["status"]["typeChecking"]["expressionWarnings"].is_null(), "{:#}", policy["status"]);

    // Policies take effect once the API server's informer has them: wait for the first refusal.
    let started = std::time::Instant::now();
    loop {
        let answer = patch_status(&cp, &pod_token, "node2", &weft_annotation("203.0.113.66"));
        if refused_by_policy(&answer) {
            break;
        }
        assert_eq!(answer.code, 200, "{}", answer.body);
        assert!(started.elapsed().as_secs() < 30, "the policy never took effect");
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Undo what got through, so the checks below start from the Nodes as created.
        let _ = cp.kubectl(&["annotate", "node", "node2", "weft.dev/public-ip-"]);
    }

    // Allowed: the real agent on node1, with the pod-bound token as its only credential, publishes its Node.
    let dir = tempfile::tempdir().unwrap();
    let config = common::agent_config(dir.path(), "vxlan", 2);
    let kubeconfig = token_kubeconfig(&cp, &pod_token);
    let weft = Path::new(common::WEFT);
    let mut agent = spawn_agent("agent-node1", weft, "node1", &node1.ns, &kubeconfig, &config, "debug");
    let annotations = || cp.kubectl_ok(&["get", "node", "node1", "-o", "jsonpath={.metadata.annotations}"]);
    let published = eventually(Duration::from_secs(30), || {
        let a = annotations();
        a.contains("weft.dev/vtep-mac") && a.contains(&node1.v4) && a.contains(&node1.v6)
    });
    assert!(published, "the agent did not publish node1: {}\n{}", annotations(), agent.log_tail());
    agent.stop();
    // What it sends when its underlay address goes: the key removed.
    let unpublish = json!({"metadata": {"annotations": {"weft.dev/public-ipv6": null}}});
    assert_allowed(&patch_status(&cp, &pod_token, "node1", &unpublish), "removing an own weft.dev annotation");
    let after = annotations();
    assert!(after.contains(&node1.v4) && !after.contains("public-ipv6"), "{after}");

    // Refused: another Node's annotation, labels and addresses.
    let label = json!({"metadata": {"labels": {"node-restriction.kubernetes.io/trusted": "yes"}}});
    let addresses = json!({"status": {"addresses": [{"type": "InternalIP", "address": "203.0.113.66"}]}});
    let other_annotation = json!({"metadata": {"annotations": {"example.com/owner": "weft"}}});
    assert_refused(&patch_status(&cp, &pod_token, "node2", &weft_annotation("203.0.113.66")), "node2's annotation");
    assert_refused(&patch_status(&cp, &pod_token, "node2", &label), "node2's labels");
    assert_refused(&patch_status(&cp, &pod_token, "node2", &addresses), "node2's addresses");
    // Refused: its own Node's labels, addresses and annotations outside weft.dev/.
    assert_refused(&patch_status(&cp, &pod_token, "node1", &label), "own labels");
    assert_refused(&patch_status(&cp, &pod_token, "node1", &addresses), "own addresses");
    assert_refused(&patch_status(&cp, &pod_token, "node1", &other_annotation), "own non-weft annotation");
    // Refused: a token of weft's service account that names no node, even for its weft.dev annotations.
    assert_refused(&patch_status(&cp, &unbound_token, "node1", &weft_annotation("203.0.113.66")), "unbound token");

    // Beside its Node, the token may write policies' acceptance and nothing
    // else of theirs: a ClusterNetworkPolicy's status (never its spec),
    // Events (create only), and the verdict writer's one Lease (which the
    // chart creates: no Lease can be created, no other renewed).
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&as_token(&cp, &pod_token, &all).stdout).trim().to_string()
    };
    let cnp = "clusternetworkpolicies.policy.networking.k8s.io";
    cp.kubectl_ok(&["wait", "--for=condition=established", "--timeout=30s", &format!("crd/{cnp}")]);
    let lease = "leases.coordination.k8s.io/weft-policy-verdicts";
    for (args, want) in [
        (vec!["patch", cnp, "--subresource=status"], "yes"),
        (vec!["get", cnp], "yes"),
        (vec!["patch", cnp], "no"),
        (vec!["update", cnp], "no"),
        (vec!["delete", cnp], "no"),
        (vec!["create", "events", "-n", "default"], "yes"),
        (vec!["patch", "events", "-n", "default"], "no"),
        (vec!["delete", "events", "-n", "default"], "no"),
        (vec!["get", lease, "-n", NAMESPACE], "yes"),
        (vec!["patch", lease, "-n", NAMESPACE], "yes"),
        (vec!["delete", lease, "-n", NAMESPACE], "no"),
        (vec!["create", "leases.coordination.k8s.io", "-n", NAMESPACE], "no"),
        (vec!["patch", "leases.coordination.k8s.io/kube-controller-manager", "-n", NAMESPACE], "no"),
        (vec!["patch", "networkpolicies.networking.k8s.io", "-n", "default"], "no"),
        (vec!["patch", "networkpolicies.networking.k8s.io", "-n", "default", "--subresource=status"], "no"),
    ] {
        assert_eq!(can(&args), want, "can-i {args:?}");
    }
    let lease_object = cp.kubectl_ok(&["get", "lease", "weft-policy-verdicts", "-n", NAMESPACE, "-o", "name"]);
    assert_eq!(lease_object.trim(), "lease.coordination.k8s.io/weft-policy-verdicts", "the chart creates it");

    // Nothing refused left a trace.
    let node2 = cp.kubectl_ok(&["get", "node", "node2", "-o", "json"]);
    assert!(!node2.contains("203.0.113.66") && !node2.contains("trusted"), "{node2}");
    let node1 = cp.kubectl_ok(&["get", "node", "node1", "-o", "json"]);
    assert!(!node1.contains("203.0.113.66") && !node1.contains("trusted") && !node1.contains("example.com"), "{node1}");
}
