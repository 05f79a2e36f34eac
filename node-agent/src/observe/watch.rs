//! The Node watch: a kube-rs reflector over Nodes whose objects are
//! deserialized straight into [`WatchedNode`], what weft reads of a Node
//! and nothing else, and stripped further as they arrive ([`strip`]). A
//! Node's images, conditions, capacity and system info are never even
//! allocated, so memory stays flat at thousands of nodes. Every event wakes
//! the agent through a coalescing trigger: many events while a pass runs
//! cause exactly one more pass (no debounce, which could hide updates).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::wire::{WatchedNode, strip};

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
