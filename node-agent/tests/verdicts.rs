//! Policies' acceptance, as their authors see it, against a real
//! kube-apiserver: two agents run with the chart's RBAC, Lease and node
//! admission policy (rendered by helm) and pod-bound tokens as their only
//! credentials. Each ClusterNetworkPolicy gets an `Accepted` condition with
//! its `observedGeneration` (False with the reason when weft refuses it), a
//! NetworkPolicy past a cap gets exactly one Warning Event, and only the
//! holder of the Lease writes, until it stops and the other takes over.
//! Needs root and the Kubernetes binaries (and helm, and Go for the CRD)
//! built by e2e/build-tools.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Lab, k8s_bin_or_skip};
use libweft::testutil::agent::spawn_agent;
use libweft::testutil::control_plane::{ControlPlane, Proc, eventually};
use serde_json::{Value, json};

const NAMESPACE: &str = "kube-system";
const LEASE: &str = "weft-policy-verdicts";
const WROTE: [&str; 2] =
    ["wrote the ClusterNetworkPolicy's Accepted condition", "created the NetworkPolicy's refusal Event"];

/// The experimental channel's CRD (it has the `nodes` and `domainNames`
/// peers weft does not implement; the standard one would drop them).
fn experimental_crd() -> Option<std::path::PathBuf> {
    let standard = common::cluster_network_policy_crd()?;
    let experimental = standard.to_string_lossy().replace("/crd/standard/", "/crd/experimental/");
    Some(experimental.into())
}

/// The `Accepted` condition of ClusterNetworkPolicy `name`, if any.
fn accepted(cp: &ControlPlane, name: &str) -> Option<Value> {
    let out = cp.kubectl(&["get", "clusternetworkpolicy", name, "-o", "json"]);
    let cnp: Value = serde_json::from_slice(&out.stdout).ok()?;
    cnp["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Accepted").cloned()
}

/// Waits for `name`'s condition to say `status` for `generation`; returns it.
fn condition_for(cp: &ControlPlane, name: &str, generation: i64, status: &str, logs: &dyn Fn() -> String) -> Value {
    let ok = eventually(Duration::from_secs(60), || {
        accepted(cp, name).is_some_and(|c| c["observedGeneration"] == generation && c["status"] == status)
    });
    assert!(ok, "{name}: no Accepted={status} for generation {generation}: {:?}\n{}", accepted(cp, name), logs());
    accepted(cp, name).unwrap()
}

/// The Events on NetworkPolicy `default/name`.
fn events_of(cp: &ControlPlane, name: &str) -> Vec<Value> {
    let selector = format!("involvedObject.kind=NetworkPolicy,involvedObject.name={name}");
    let out = cp.kubectl_ok(&["get", "events", "-n", "default", "--field-selector", &selector, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

/// How many verdict writes an agent's log records.
fn writes(agent: &Proc) -> usize {
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    log.lines().filter(|l| WROTE.iter().any(|w| l.contains(w))).count()
}

fn lease_holder(cp: &ControlPlane) -> String {
    cp.kubectl_ok(&["get", "lease", LEASE, "-n", NAMESPACE, "-o", "jsonpath={.spec.holderIdentity}"])
}

/// A NetworkPolicy in `default` with `peers` ingress peers (101: past the cap of 100).
fn netpol(name: &str, peers: usize, app: &str) -> String {
    let from: Vec<Value> = (0..peers).map(|i| json!({"podSelector": {"matchLabels": {"n": format!("{i}")}}})).collect();
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": app}}, "ingress": [{"from": from}]}})
    .to_string()
}

fn cnp(name: &str, priority: u32, egress: Value) -> String {
    json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": "Admin", "priority": priority, "subject": {"namespaces": {"matchLabels": {"none": "x"}}},
                 "egress": egress}})
    .to_string()
}

#[test]
#[ignore = "needs root and the Kubernetes binaries: cargo test -- --ignored"]
fn one_agent_tells_authors_whether_weft_accepted_their_policies() {
    let Some(bin) = k8s_bin_or_skip() else { return };
    let Some(crd) = experimental_crd() else { return };
    let lab = Lab::new(&['A', 'A']);
    let cp = lab.control_plane(&bin);
    for n in &lab.nodes {
        cp.create_node(&n.name, &[&n.pod_v4, &n.pod_v6], &[&n.v4, &n.v6]);
    }
    let templates = [
        "templates/serviceaccount.yaml",
        "templates/rbac.yaml",
        "templates/node-policy.yaml",
        "templates/policy-status.yaml",
    ];
    cp.kubectl_stdin(&["apply", "-f", "-"], &common::render_chart(&bin, NAMESPACE, &templates));
    common::install_cnp_crd(&cp, &crd);
    let _ = cp.kubectl(&["create", "serviceaccount", "default", "-n", "default"]);

    // Both agents, each with a token bound to a weft pod on its node: the chart's grants and nothing more.
    let dirs: Vec<tempfile::TempDir> = lab.nodes.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut agents: Vec<Proc> = lab
        .nodes
        .iter()
        .zip(&dirs)
        .map(|(n, dir)| {
            let token = common::weft_pod_token(&cp, NAMESPACE, &n.name);
            let kubeconfig = common::token_kubeconfig(&cp, &token, NAMESPACE);
            let config = common::agent_config(dir.path(), "vxlan", 2);
            let name = format!("agent-{}", n.name);
            spawn_agent(&name, Path::new(common::WEFT), &n.name, &n.ns, &kubeconfig, &config, "debug")
        })
        .collect();
    let logs = |agents: &[Proc]| agents.iter().map(|a| a.log_tail()).collect::<Vec<_>>().join("\n----\n");

    // Accepted as written; a `nodes` peer weft does not implement; past the peers cap (5 × 25 CIDRs).
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        &cnp("plain", 10, json!([{"action": "Deny", "to": [{"networks": ["203.0.113.99/32"]}]}])),
    );
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        &cnp("by-node", 20, json!([{"action": "Deny", "to": [{"nodes": {"matchLabels": {"zone": "a"}}}]}])),
    );
    let cidrs = |p: usize| -> Vec<String> { (0..25).map(|i| format!("10.{p}.{i}.0/24")).collect() };
    let peers: Vec<Value> = (0..5).map(|p| json!({"networks": cidrs(p)})).collect();
    cp.kubectl_stdin(&["create", "-f", "-"], &cnp("too-wide", 30, json!([{"action": "Accept", "to": peers}])));
    // A NetworkPolicy past the peers cap, and one within every cap.
    cp.kubectl_stdin(&["create", "-f", "-"], &netpol("huge", 101, "db"));
    cp.kubectl_stdin(&["create", "-f", "-"], &netpol("fine", 3, "web"));

    let plain = condition_for(&cp, "plain", 1, "True", &|| logs(&agents));
    assert_eq!(plain["reason"], "Accepted", "{plain}");
    let by_node = condition_for(&cp, "by-node", 1, "False", &|| logs(&agents));
    assert_eq!(by_node["reason"], "NotImplemented", "{by_node}");
    assert!(by_node["message"].as_str().unwrap().contains("the nodes peer is not implemented by weft"), "{by_node}");
    let too_wide = condition_for(&cp, "too-wide", 1, "False", &|| logs(&agents));
    assert_eq!(too_wide["reason"], "CapExceeded", "{too_wide}");
    assert!(too_wide["message"].as_str().unwrap().starts_with("125 peers over the cap of 100"), "{too_wide}");

    assert!(eventually(Duration::from_secs(60), || !events_of(&cp, "huge").is_empty()), "no Event:\n{}", logs(&agents));
    // Many passes later (a resync every 2 s on each node), still one.
    std::thread::sleep(Duration::from_secs(8));
    let events = events_of(&cp, "huge");
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!((&e["type"], &e["reason"], &e["count"]), (&json!("Warning"), &json!("CapExceeded"), &json!(1)), "{e}");
    assert!(e["message"].as_str().unwrap().contains("101 peers over the cap of 100"), "{e}");
    assert!(events_of(&cp, "fine").is_empty(), "a policy within every cap has no Event");

    // One writer: the Lease's holder.
    let holder = lease_holder(&cp);
    let (writer, idle) = match lab.nodes.iter().position(|n| n.name == holder) {
        Some(i) => (i, 1 - i),
        None => panic!("lease holder {holder:?} is no node:\n{}", logs(&agents)),
    };
    assert_eq!(writes(&agents[writer]), 4, "three conditions and one Event:\n{}", logs(&agents));
    assert_eq!(writes(&agents[idle]), 0, "the other agent wrote:\n{}", logs(&agents));

    // A new generation: its condition follows, lastTransitionTime stays (the status did not change).
    cp.kubectl_ok(&["patch", "clusternetworkpolicy", "plain", "--type=merge", "-p", r#"{"spec":{"priority":11}}"#]);
    let plain2 = condition_for(&cp, "plain", 2, "True", &|| logs(&agents));
    assert_eq!(plain2["lastTransitionTime"], plain["lastTransitionTime"], "{plain2}");

    // The writer stops: the other takes the Lease when it expires (30 s) and
    // writes the next verdict, an Event for the policy's new generation.
    agents[writer].stop();
    cp.kubectl_stdin(&["apply", "-f", "-"], &netpol("huge", 102, "db"));
    let taken = eventually(Duration::from_secs(90), || events_of(&cp, "huge").len() == 2);
    assert!(taken, "no Event for generation 2: {:#?}\n{}", events_of(&cp, "huge"), logs(&agents));
    assert_eq!(lease_holder(&cp), lab.nodes[idle].name);
    assert!(writes(&agents[idle]) >= 1, "{}", logs(&agents));
    let messages: Vec<String> =
        events_of(&cp, "huge").iter().map(|e| e["message"].as_str().unwrap_or_default().to_string()).collect();
    assert!(messages.iter().any(|m| m.starts_with("generation 2: 102 peers")), "{messages:?}");
    agents[idle].stop();
}
