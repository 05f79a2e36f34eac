//! The Pod, Namespace and NetworkPolicy watches, for NetworkPolicy. Each is
//! a kube-rs watcher whose objects are turned into their slim view
//! ([`PodView`], [`NamespaceView`], [`PolicyView`]) as they arrive and
//! dropped: only the views are kept, keyed by `namespace/name`, so a
//! pod's spec and status never stay in memory. Pods of every node are
//! watched: they are the peers that policies' address sets hold.
//!
//! An event fires the trigger only when it changes a view (a pod's
//! container restarting changes nothing policy reads). Until all three
//! lists are complete, [`PolicyCache::snapshot`] returns `None`: a partial
//! list could isolate pods without their allow rules' peers.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::watch::Trigger;
use crate::metrics::Metrics;
use crate::wire_policy::{NamespaceView, PodView, PolicyView, Refused};

/// The views of one kind.
struct Views<V> {
    current: HashMap<String, V>,
    /// The list being received after a (re)list: replaces `current` whole
    /// at its end, so objects deleted while the watch was down disappear.
    relisting: Option<HashMap<String, V>>,
    synced: bool,
}

impl<V> Default for Views<V> {
    fn default() -> Self {
        Views { current: HashMap::new(), relisting: None, synced: false }
    }
}

impl<V: PartialEq> Views<V> {
    /// Applies one watch event; returns whether a view changed.
    fn event(&mut self, event: watcher::Event<(String, Option<V>)>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply((key, view)) => {
                if let (Some(list), Some(v)) = (self.relisting.as_mut(), view) {
                    list.insert(key, v);
                }
                false
            }
            watcher::Event::InitDone => {
                let list = self.relisting.take().unwrap_or_default();
                let changed = !self.synced || list != self.current;
                self.current = list;
                self.synced = true;
                changed
            }
            watcher::Event::Apply((key, Some(v))) => {
                if self.current.get(&key) == Some(&v) {
                    return false;
                }
                self.current.insert(key, v);
                true
            }
            watcher::Event::Apply((key, None)) | watcher::Event::Delete((key, _)) => {
                self.current.remove(&key).is_some()
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    pods: Views<PodView>,
    namespaces: Views<NamespaceView>,
    policies: Views<PolicyView>,
}

/// What the watches have seen, shared with the loop.
#[derive(Clone, Default)]
pub struct PolicyCache {
    inner: Arc<Mutex<Inner>>,
}

/// Copies of every view, for one pass.
#[derive(Debug, Clone, Default)]
pub struct PolicyViews {
    pub pods: Vec<PodView>,
    pub namespaces: Vec<NamespaceView>,
    pub policies: Vec<PolicyView>,
}

impl PolicyCache {
    /// The views, once every list is complete.
    pub fn snapshot(&self) -> Option<PolicyViews> {
        let inner = self.inner.lock().ok()?;
        if !(inner.pods.synced && inner.namespaces.synced && inner.policies.synced) {
            return None;
        }
        Some(PolicyViews {
            pods: inner.pods.current.values().cloned().collect(),
            namespaces: inner.namespaces.current.values().cloned().collect(),
            policies: inner.policies.current.values().cloned().collect(),
        })
    }
}

fn key<K: Resource>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

fn log_refused(refused: Vec<Refused>) {
    // Per object and repeated on every update: debug, not warn.
    for r in refused {
        tracing::debug!("ignored: {r}");
    }
}

/// Starts the three watches; the cache fills while their tasks run.
pub fn spawn(client: Client, trigger: Arc<Trigger>, metrics: Arc<Metrics>) -> PolicyCache {
    let cache = PolicyCache::default();
    run(
        Api::<Pod>::all(client.clone()),
        "Pods",
        cache.clone(),
        trigger.clone(),
        metrics.clone(),
        |p: &Pod| {
            let mut refused = Vec::new();
            let v = PodView::from_pod(p, &mut refused);
            log_refused(refused);
            v
        },
        |i| &mut i.pods,
    );
    run(
        Api::<Namespace>::all(client.clone()),
        "Namespaces",
        cache.clone(),
        trigger.clone(),
        metrics.clone(),
        NamespaceView::from_namespace,
        |i| &mut i.namespaces,
    );
    run(
        Api::<NetworkPolicy>::all(client),
        "NetworkPolicies",
        cache.clone(),
        trigger,
        metrics,
        |p: &NetworkPolicy| {
            let mut refused = Vec::new();
            let v = PolicyView::from_policy(p, &mut refused);
            for r in &refused {
                tracing::warn!("NetworkPolicy enforced without what weft cannot read: {r}");
            }
            v
        },
        |i| &mut i.policies,
    );
    cache
}

fn run<K, V>(
    api: Api<K>,
    what: &'static str,
    cache: PolicyCache,
    trigger: Arc<Trigger>,
    metrics: Arc<Metrics>,
    view: impl Fn(&K) -> Option<V> + Send + 'static,
    views: fn(&mut Inner) -> &mut Views<V>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    V: PartialEq + Send + 'static,
{
    // The full object lives only until its view is made.
    let stream = watcher(api, watcher::Config::default()).default_backoff().map(move |e| {
        e.map(|e| {
            let slim = |o: K| (key(&o), view(&o));
            match e {
                watcher::Event::Apply(o) => watcher::Event::Apply(slim(o)),
                watcher::Event::Delete(o) => watcher::Event::Delete(slim(o)),
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitApply(o) => watcher::Event::InitApply(slim(o)),
                watcher::Event::InitDone => watcher::Event::InitDone,
            }
        })
    });
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(e) => {
                    let changed = match cache.inner.lock() {
                        Ok(mut inner) => views(&mut inner).event(e),
                        Err(_) => false,
                    };
                    if changed {
                        trigger.fire();
                    }
                }
                Err(e) => {
                    // The backoff retries; the views stay as last seen.
                    metrics.error("watch");
                    tracing::warn!("watching {what}: {e}");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    #[test]
    fn only_view_changes_fire_and_a_relist_replaces_the_whole_list() {
        let mut v: Views<u32> = Views::default();
        let e = |k: &str, x: Option<u32>| (k.to_string(), x);
        assert!(!v.event(Event::Init));
        assert!(!v.event(Event::InitApply(e("a/1", Some(1)))));
        assert!(!v.event(Event::InitApply(e("a/2", None))), "ignored objects are not kept");
        assert!(!v.synced);
        assert!(v.event(Event::InitDone), "the first list completes");
        assert_eq!(v.current.len(), 1);
        assert!(!v.event(Event::Apply(e("a/1", Some(1)))), "an update policy does not read");
        assert!(v.event(Event::Apply(e("a/1", Some(2)))));
        assert!(!v.event(Event::Apply(e("a/3", None))));
        assert!(v.event(Event::Apply(e("a/4", Some(4)))));
        assert!(v.event(Event::Apply(e("a/4", None))), "a pod that finished leaves");
        // The watch restarts: a/1 was deleted meanwhile.
        assert!(!v.event(Event::Init));
        assert!(!v.event(Event::InitApply(e("a/5", Some(5)))));
        assert_eq!(v.current.get("a/1"), Some(&2), "kept until the list is complete");
        assert!(v.event(Event::InitDone));
        assert_eq!(v.current.keys().collect::<Vec<_>>(), ["a/5"]);
        assert!(v.event(Event::Delete(e("a/5", Some(5)))));
        assert!(!v.event(Event::Delete(e("a/5", None))));
    }
}
