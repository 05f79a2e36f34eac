//! API objects as the benchmarks create them, with no kubelet and no
//! controller manager: a kube client for the benchmark's API server, a
//! namespace with the `default` ServiceAccount that admission wants, and a
//! pod that kubelet would have reported Running with its addresses.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
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
