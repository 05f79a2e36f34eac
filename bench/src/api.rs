//! API objects as the benchmarks create them, with no kubelet and no
//! controller manager: a kube client for the benchmark's API server, a
//! namespace with the `default` ServiceAccount that admission wants, a
//! pod that kubelet would have reported Running with its addresses, and
//! the ClusterNetworkPolicy CRD as the chart installs it, with its API.

use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client, Config};
use libweft::testutil::control_plane::ControlPlane;
use serde_json::{Value, json};

/// A kube client for the benchmark's API server, built from its kubeconfig.
/// Use it from a thread inside the control-plane namespace, so no packet
/// leaves from the machine's own.
pub async fn client(cp: &ControlPlane) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("kube config");
    Client::try_from(config).expect("kube client")
}

/// Creates namespace `name` with `labels`, and its `default` ServiceAccount
/// (which the ServiceAccount admission plugin requires of every pod; no
/// controller manager runs to create it).
pub async fn create_namespace(client: &Client, name: &str, labels: &Value) -> Result<ServiceAccount, kube::Error> {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("a valid Namespace");
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("a valid SA");
    Api::<ServiceAccount>::namespaced(client.clone(), name).create(&PostParams::default(), &sa).await
}

/// Creates `pod` (namespace, name, labels and `spec.nodeName` set by the
/// caller) and publishes `ips` through the status subresource, as kubelet
/// does once the sandbox runs: phase Running, `podIP`, `podIPs`.
pub async fn create_running_pod(client: &Client, pod: &Pod, ips: &[IpAddr]) -> Result<Pod, kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    Api::<Pod>::namespaced(client.clone(), ns).create(&PostParams::default(), pod).await?;
    set_running(client, ns, name, ips).await
}

/// Publishes `ips` for an existing pod, as kubelet does once its sandbox
/// runs (the plugin, given the pod's UID, wired it first).
pub async fn set_running(client: &Client, ns: &str, name: &str, ips: &[IpAddr]) -> Result<Pod, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    let first = ips.first().map(|ip| ip.to_string());
    let status = json!({"status": {"phase": "Running", "podIP": first, "podIPs": pod_ips}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await
}

/// The chart's ClusterNetworkPolicy CRD (rendered from the pinned
/// network-policy-api module by scripts/render-cnp-crds), relative to the
/// repository: what a cluster running weft has installed.
pub const CNP_CRD_TEMPLATE: &str = "charts/weft/templates/clusternetworkpolicy-crd.yaml";

/// The CRD's YAML from the chart template: the template's actions
/// (`{{ ... }}`, one or several lines: its header comment, the `if`, the
/// chart's labels) left out; everything else is the module's CRD as is.
pub fn crd_from_template(template: &str) -> String {
    let mut out = String::new();
    let mut in_action = false;
    for line in template.lines() {
        if in_action || line.contains("{{") {
            in_action = !line.contains("}}");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Installs the ClusterNetworkPolicy CRD in `cp` from the chart template
/// at `template` and waits until the API serves it.
pub fn install_cluster_policy_crd(cp: &ControlPlane, template: &Path) {
    let text = std::fs::read_to_string(template)
        .unwrap_or_else(|e| panic!("{}: {e} (run from the repository's root)", template.display()));
    cp.kubectl_stdin(&["create", "-f", "-"], &crd_from_template(&text));
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/clusternetworkpolicies.policy.networking.k8s.io",
    ]);
}

/// The ClusterNetworkPolicy API (`policy.networking.k8s.io/v1beta1`).
pub fn cluster_policies(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("policy.networking.k8s.io", "v1beta1", "ClusterNetworkPolicy");
    Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, "clusternetworkpolicies"))
}

/// A ClusterNetworkPolicy object named `name` with `spec`.
pub fn cluster_policy(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name}, "spec": spec}))
    .expect("a valid ClusterNetworkPolicy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_template_becomes_the_plain_crd() {
        let template = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(CNP_CRD_TEMPLATE))
            .expect("the chart's CRD template");
        let crd = crd_from_template(&template);
        assert!(!crd.contains("{{") && !crd.contains("}}"), "a template action is left");
        assert!(crd.starts_with("# The ClusterNetworkPolicy CRD"), "{}", &crd[..200]);
        assert!(crd.contains("kind: CustomResourceDefinition\nmetadata:\n  annotations:"));
        assert!(crd.contains("  name: clusternetworkpolicies.policy.networking.k8s.io\n"));
        // Only template lines go: the module's schema stays whole.
        assert_eq!(crd.lines().count(), template.lines().count() - 5);
        assert_eq!(crd_from_template("a\n{{- /* two\n lines */}}\nb\n  x: {{ y }}\nc\n"), "a\nb\nc\n");
    }
}
