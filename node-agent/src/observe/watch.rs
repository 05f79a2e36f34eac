//! The Node watch: a kube-rs watcher over Nodes whose objects are
//! deserialized straight into [`WatchedNode`], what weft reads of a Node
//! and nothing else (a Node's images, conditions, capacity and system info
//! are never even allocated), and turned into their views as they arrive
//! ([`Views`]): no reflector store keeps the objects, so memory per Node
//! is its view's. Every event that changes a view wakes the agent through
//! a coalescing trigger: many events while a pass runs cause exactly one
//! more pass (no debounce, which could hide updates).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use ipnetwork::IpNetwork;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

use super::node_views::{Snapshot, Views};
use crate::metrics::Metrics;
use crate::wire::WatchedNode;

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

/// The Node views the watch keeps current, shared with the agent's passes.
#[derive(Clone)]
pub struct NodeStore {
    views: Arc<Mutex<Views>>,
    listed: tokio::sync::watch::Receiver<bool>,
}

impl NodeStore {
    /// Waits until the first list is complete.
    pub async fn wait_until_listed(&mut self) -> Result<(), tokio::sync::watch::error::RecvError> {
        self.listed.wait_for(|listed| *listed).await.map(|_| ())
    }

    /// The views, and the Nodes changed since the last call.
    pub fn take(&self) -> Snapshot {
        // A panic while holding the lock leaves whole views: keep using them.
        self.views.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Starts the watch for the node `own_name`; the views fill only while the
/// returned task runs. A pod CIDR outside `cluster_cidrs` is refused.
pub fn spawn(
    client: Client,
    own_name: &str,
    cluster_cidrs: &[IpNetwork],
    trigger: Arc<Trigger>,
    metrics: Arc<Metrics>,
) -> NodeStore {
    let views = Arc::new(Mutex::new(Views::new(own_name, cluster_cidrs)));
    let (listed_tx, listed) = tokio::sync::watch::channel(false);
    let api: Api<WatchedNode> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let writer = views.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    let (changed, done) = {
                        let mut views = writer.lock().unwrap_or_else(|p| p.into_inner());
                        (views.event(event), views.listed())
                    };
                    listed_tx.send_if_modified(|l| !std::mem::replace(l, done) && done);
                    if changed {
                        trigger.fire();
                    }
                }
                Err(e) => {
                    // The backoff retries; the views stay as last known,
                    // so the data plane stays as it is while the API is away.
                    metrics.error("watch");
                    tracing::warn!("watching Nodes: {e}");
                }
            }
        }
    });
    NodeStore { views, listed }
}
