//! The Node watch: a kube-rs reflector over Nodes whose objects are
//! deserialized straight into [`WatchedNode`], what weft reads of a Node
//! and nothing else, and stripped further as they arrive. A Node's images,
//! conditions, capacity and system info are never even allocated, so memory
//! stays flat at thousands of nodes. Every event wakes the reconciler through
//! a coalescing trigger: many events while a pass runs cause exactly one
//! more pass (no debounce, which could hide updates).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::NodeAddress;
use kube::api::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::node_view::{ANN_BACKEND, ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, ANN_VTEP_MAC};

/// A Node as weft watches it: `metadata`, `spec.podCIDR(s)` and
/// `status.addresses`; serde skips every other field of the API's JSON.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedNode {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<WatchedSpec>,
    #[serde(default)]
    pub status: Option<WatchedStatus>,
    /// weft's annotations, moved out of `metadata` by [`strip`]: four
    /// fields cost a fraction of a B-tree map per node.
    #[serde(skip)]
    pub weft: WeftAnnotations,
}

/// The `weft.dev/` annotations a Node may carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeftAnnotations {
    pub public_ip: Option<String>,
    pub public_ipv6: Option<String>,
    pub vtep_mac: Option<String>,
    pub backend: Option<String>,
}

impl WeftAnnotations {
    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        match key {
            ANN_PUBLIC_IP => Some(&mut self.public_ip),
            ANN_PUBLIC_IPV6 => Some(&mut self.public_ipv6),
            ANN_VTEP_MAC => Some(&mut self.vtep_mac),
            ANN_BACKEND => Some(&mut self.backend),
            _ => None,
        }
    }

    /// Picks weft's keys out of a Node's annotations.
    pub fn from_annotations(all: impl IntoIterator<Item = (String, String)>) -> WeftAnnotations {
        let mut a = WeftAnnotations::default();
        for (k, v) in all {
            if let Some(slot) = a.slot(&k) {
                *slot = Some(v);
            }
        }
        a
    }

    /// `(key, value)` of each annotation present.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (ANN_PUBLIC_IP, &self.public_ip),
            (ANN_PUBLIC_IPV6, &self.public_ipv6),
            (ANN_VTEP_MAC, &self.vtep_mac),
            (ANN_BACKEND, &self.backend),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

/// The part of `NodeSpec` weft reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedSpec {
    #[serde(rename = "podCIDR", default)]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Option<Vec<String>>,
}

/// The part of `NodeStatus` weft reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedStatus {
    #[serde(default)]
    pub addresses: Option<Vec<NodeAddress>>,
}

impl WatchedNode {
    /// `status.addresses` of type InternalIP.
    pub fn internal_ips(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
    }
}

impl Resource for WatchedNode {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Wakes the reconciler; remembers when the oldest unhandled event arrived.
#[derive(Default)]
pub struct Trigger {
    notify: Notify,
    oldest: Mutex<Option<Instant>>,
}

impl Trigger {
    pub fn fire(&self) {
        if let Ok(mut o) = self.oldest.lock() {
            o.get_or_insert_with(Instant::now);
        }
        // A stored permit makes the next wait return at once: events coalesce.
        self.notify.notify_one();
    }

    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// When the oldest event since the last call arrived.
    pub fn take_oldest(&self) -> Option<Instant> {
        self.oldest.lock().ok().and_then(|mut o| o.take())
    }
}

/// Drops what weft does not read: of the metadata only the name and the
/// resourceVersion (the watch resumes from it) stay, weft's annotations move
/// to [`WatchedNode::weft`]; of the addresses only InternalIPs stay.
pub fn strip(node: &mut WatchedNode) {
    let meta = std::mem::take(&mut node.metadata);
    node.weft = WeftAnnotations::from_annotations(meta.annotations.into_iter().flatten());
    node.metadata = ObjectMeta { name: meta.name, resource_version: meta.resource_version, ..ObjectMeta::default() };
    if let Some(addresses) = node.status.as_mut().and_then(|s| s.addresses.as_mut()) {
        addresses.retain(|a| a.type_ == "InternalIP");
    }
}

/// Starts the watch; the store fills only while the returned task runs.
pub fn spawn(client: Client, trigger: Arc<Trigger>, metrics: Arc<Metrics>) -> Store<WatchedNode> {
    let (reader, writer) = reflector::store();
    let api: Api<WatchedNode> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff().modify(strip).reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => trigger.fire(),
                Err(e) => {
                    // The backoff retries; the store keeps the last known nodes,
                    // so the data plane stays as it is while the API is away.
                    metrics.error("watch");
                    tracing::warn!("watching Nodes: {e}");
                }
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_from_the_api_keeps_only_what_weft_reads() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "u", "resourceVersion": "42", "labels": {"a": "b"},
                "managedFields": [{"manager": "kubelet"}],
                "annotations": {"weft.dev/vtep-mac": "0e:00:00:00:00:01",
                    "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(10_000)}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": "x"},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.11"},
                {"type": "Hostname", "address": "n1"}],
                "images": [{"names": ["a"], "sizeBytes": 1}], "conditions": [{"type": "Ready", "status": "True"}]},
        });
        let mut node: WatchedNode = serde_json::from_value(json).unwrap();
        strip(&mut node);
        assert_eq!(node.metadata.name.as_deref(), Some("n1"));
        assert_eq!(node.metadata.resource_version.as_deref(), Some("42"), "the watch resumes from it");
        assert_eq!(node.weft.iter().collect::<Vec<_>>(), vec![(ANN_VTEP_MAC, "0e:00:00:00:00:01")]);
        let m = &node.metadata;
        assert!(m.annotations.is_none() && m.labels.is_none() && m.uid.is_none() && m.managed_fields.is_none());
        assert_eq!(node.spec.as_ref().unwrap().pod_cidrs.as_ref().unwrap()[0], "10.244.1.0/24");
        assert_eq!(node.internal_ips().collect::<Vec<_>>(), vec!["198.51.100.11".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(node.status.unwrap().addresses.unwrap().len(), 1);
    }

    #[test]
    fn nulls_and_missing_parts_deserialize() {
        let node: WatchedNode = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "n"}, "spec": {"podCIDRs": null}, "status": null}),
        )
        .unwrap();
        assert!(node.spec.unwrap().pod_cidrs.is_none() && node.status.is_none());
    }
}
