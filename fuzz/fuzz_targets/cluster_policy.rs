//! A ClusterNetworkPolicy as the agent's watch reads it
//! (node-agent/src/wire_cluster_policy.rs): any cluster-scoped object's
//! `spec` is untrusted JSON (a CRD's schema is checked by the API server,
//! but an older or newer CRD, or one installed by someone else, may hold
//! anything). The view must keep the rules the desired state relies on,
//! and the desired state and its nftables table must be built from it
//! without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_agent::desired::policy::policy_with_tiers;
use weft_agent::desired::policy_table::ruleset;
use weft_agent::wire_cluster_policy::{Action, ClusterPolicyView};
use weft_agent::wire_policy::{NamedPort, NamespaceView, PodView, Protocol};

/// Two namespaces, a local and a remote pod in each, with named ports:
/// enough for subjects, pod peers and named ports to select something.
fn world() -> (Vec<PodView>, Vec<NamespaceView>) {
    let labels = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let namespaces = ["a", "b"]
        .map(|n| NamespaceView { name: n.into(), labels: labels(&[("kubernetes.io/metadata.name", n), ("env", n)]) });
    let mut pods = Vec::new();
    for (i, (ns, node)) in [("a", "node0"), ("a", "node1"), ("b", "node0"), ("b", "node1")].into_iter().enumerate() {
        pods.push(PodView {
            namespace: ns.into(),
            name: format!("p{i}"),
            uid: format!("uid-{i}"),
            labels: labels(&[("app", if i % 2 == 0 { "web" } else { "db" }), ("a", "b")]),
            ips: vec![format!("10.244.{i}.2").parse().expect("IPv4"), format!("fd00:10:244:{i}::2").parse().expect("IPv6")],
            node: node.into(),
            host_network: false,
            terminating: false,
            ports: vec![NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 8080 }],
        });
    }
    (pods, namespaces.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let mut refused = Vec::new();
    let Some(view) = ClusterPolicyView::from_spec("fuzzed", Some(&spec), &mut refused) else {
        assert!(!refused.is_empty(), "an ignored policy is reported");
        return;
    };
    // What the desired state relies on: a priority in the API's range, no
    // cap exceeded (a policy past one fails closed), names within the
    // kernel's comment, and any-peer rules only as the fail-closed Deny all.
    assert!(view.priority <= 1000);
    assert_eq!(view.over_cap(), None, "{:?}", refused);
    for r in view.ingress.iter().chain(&view.egress) {
        assert!(r.name.chars().count() <= 100);
        if r.peers.is_empty() {
            assert_eq!((r.action, r.ports.len()), (Action::Deny, 0), "{r:?}");
        }
    }
    // Hostile values reach logs and status conditions only bounded.
    for r in &refused {
        assert!(r.reason.chars().count() <= 1000, "{}", r.reason.len());
    }

    let (pods, namespaces) = world();
    let state = policy_with_tiers("node0", &pods, &namespaces, &[], std::slice::from_ref(&view));
    let table = ruleset(&state);
    assert!(table["nftables"].as_array().is_some_and(|c| !c.is_empty()));
    // Every map entry names a group chain the state defines, and every
    // cluster chain a group uses is there.
    for g in state.ingress.values().chain(state.egress.values()) {
        let group = state.groups.get(g).unwrap_or_else(|| panic!("{g}"));
        for c in &group.baseline {
            assert!(state.cluster_chains.contains_key(c), "{c}");
        }
        if let Some(t) = &group.admin {
            assert!(state.tiers.get(t).is_some_and(|cs| cs.iter().all(|c| state.cluster_chains.contains_key(c))), "{t}");
        }
    }
});
