//! The Node watch: a kube-rs reflector whose objects are stripped to what
//! weft reads, so memory stays flat at thousands of nodes. Every event wakes
//! the reconciler through a coalescing trigger: many events while a pass
//! runs cause exactly one more pass (no debounce, which could hide updates).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::peer::ANNOTATION_PREFIX;

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

/// Keeps only what weft reads of a Node.
pub fn strip(node: &mut Node) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    if let Some(ann) = meta.annotations.take() {
        let ours: BTreeMap<String, String> =
            ann.into_iter().filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX)).collect();
        meta.annotations = (!ours.is_empty()).then_some(ours);
    }
    node.spec =
        node.spec.take().map(|s| NodeSpec { pod_cidr: s.pod_cidr, pod_cidrs: s.pod_cidrs, ..NodeSpec::default() });
    node.status = node.status.take().map(|s| NodeStatus {
        addresses: s.addresses.map(|a| a.into_iter().filter(|a| a.type_ == "InternalIP").collect()),
        ..NodeStatus::default()
    });
}

/// Starts the watch; the store fills only while the returned task runs.
pub fn spawn(client: Client, trigger: Arc<Trigger>, metrics: Arc<Metrics>) -> Store<Node> {
    let (reader, writer) = reflector::store();
    let api: Api<Node> = Api::all(client);
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
    use k8s_openapi::api::core::v1::NodeAddress;
    use kube::api::ObjectMeta;

    use super::*;

    #[test]
    fn strip_keeps_only_what_weft_reads() {
        let mut node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                annotations: Some(BTreeMap::from([
                    ("weft.dev/vtep-mac".to_string(), "0e:00:00:00:00:01".to_string()),
                    ("kubectl.kubernetes.io/last-applied-configuration".to_string(), "x".repeat(10_000)),
                ])),
                labels: Some(BTreeMap::from([("a".to_string(), "b".to_string())])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidrs: Some(vec!["10.244.1.0/24".into()]),
                provider_id: Some("x".into()),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress { type_: "InternalIP".into(), address: "198.51.100.11".into() },
                    NodeAddress { type_: "Hostname".into(), address: "n1".into() },
                ]),
                images: Some(vec![Default::default(); 50]),
                ..NodeStatus::default()
            }),
        };
        strip(&mut node);
        assert_eq!(node.metadata.annotations.as_ref().unwrap().len(), 1);
        assert!(node.metadata.labels.is_none());
        assert_eq!(node.spec.as_ref().unwrap().pod_cidrs.as_ref().unwrap()[0], "10.244.1.0/24");
        assert!(node.spec.as_ref().unwrap().provider_id.is_none());
        let status = node.status.unwrap();
        assert_eq!(status.addresses.unwrap().len(), 1);
        assert!(status.images.is_none());
    }
}
