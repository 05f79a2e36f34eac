//! The Pod, Namespace, NetworkPolicy and ClusterNetworkPolicy watches, for
//! policy. Each is a kube-rs watcher whose objects are turned into their
//! slim view ([`PodView`], [`NamespaceView`], [`PolicyView`],
//! [`ClusterPolicyView`]) as they arrive and
//! dropped: only the views are kept, keyed by `namespace/name`, so a
//! pod's spec and status never stay in memory. Pods of every node are
//! watched: they are the peers that policies' address sets hold.
//!
//! An event fires the trigger only when it changes a view (a pod's
//! container restarting changes nothing policy reads). Until every list is
//! complete, [`PolicyCache::snapshot`] returns `None`: a partial list could
//! isolate pods without their allow rules' peers. ClusterNetworkPolicy is a
//! CRD that may not be installed, or not granted to the agent: a 404 or 403
//! is an empty list (said once), so NetworkPolicy is still enforced, and
//! the watcher's backoff keeps asking.
//!
//! Pods and namespaces may be hostile too (a pod can carry a megabyte of
//! labels), so their views keep only the labels whose keys some policy's
//! selector names ([`PolicyView::label_keys`]). When a policy names a key
//! the views did not keep, the Pod and Namespace watches re-list (the
//! labels dropped are gone; keeping a raw copy would keep the megabyte),
//! and [`PolicyCache::snapshot`] returns `None` until both lists were
//! made with that key: the kernel keeps the last policy state meanwhile,
//! rather than evaluate the new policy against labels it cannot see. A
//! key no policy names any more is dropped from the views as their
//! objects change, without a re-list. The Pod and Namespace watches
//! start once the policies are listed, so they list once at start, with
//! the keys. Lists stream through the watch where the API server allows
//! it ([`ListMode`]): one request per list, one object in memory at a
//! time. Where it refuses, Pod lists come in pages of [`POD_PAGE`], so a
//! list is never held whole.
//!
//! [`PolicyCache::freshness`] says since when the views are known to be
//! current: each watch's client times the frames it reads
//! ([`super::heard`]), bookmarks included; while a kind re-lists, its
//! views are as current as when the re-list began, and a completed list
//! as when it began.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::heard::{Heard, hearing};
use super::list_mode::{ListMode, watcher_refuses_streaming};
use super::watch::Trigger;
use crate::metrics::Metrics;
use crate::wire_cluster_policy::{self as cnp, ClusterPolicyView};
use crate::wire_policy::{LabelKeys, NamespaceView, PodView, PolicyView, Refused};

/// Pods per page of a (re)list when the server refuses streamed lists.
/// kube reads a page whole and copies it twice before parsing it: with
/// hostile pods of 1.5 MB, a page costs about 7 MB per pod while it is
/// read (a page of 10 took the agent's peak RSS to 98 MiB with 20 pods of
/// 1 MB; a page of 2, 48 MiB). 10,000 ordinary pods take 5,000 short
/// requests: the price of a server without WatchList.
pub const POD_PAGE: u32 = 2;

/// The views of one kind.
struct Views<V> {
    current: HashMap<String, V>,
    /// The list being received after a (re)list: replaces `current` whole
    /// at its end, so objects deleted while the watch was down disappear.
    relisting: Option<HashMap<String, V>>,
    synced: bool,
    /// The label-key generation `current` was listed with.
    keys_generation: u64,
    /// When the watch last read a frame from the API server.
    heard: Heard,
    /// When the list `current` came from began, and what had been heard
    /// when it completed: `current` is as recent as the list's start until
    /// the watch hears more.
    listed: Option<(Instant, Option<Instant>)>,
    /// During a re-list: how recent `current` was when it began.
    current_as_of: Option<Instant>,
    /// Bumped whenever `current` changes: its generation.
    generation: u64,
}

impl<V> Default for Views<V> {
    fn default() -> Self {
        Views {
            current: HashMap::new(),
            relisting: None,
            synced: false,
            keys_generation: 0,
            heard: Heard::default(),
            listed: None,
            current_as_of: None,
            generation: 0,
        }
    }
}

impl<V> Views<V> {
    /// Since when `current` is known to hold every change: `None` before the first list.
    fn as_of(&self) -> Option<Instant> {
        if self.relisting.is_some() {
            return self.current_as_of;
        }
        let (began, heard_at_end) = self.listed?;
        match self.heard.last() {
            Some(h) if Some(h) != heard_at_end => Some(h.max(began)),
            _ => Some(began),
        }
    }
}

impl<V: PartialEq> Views<V> {
    /// Applies one watch event of a watch started at label-key generation
    /// `generation`; returns whether a view changed.
    fn event(&mut self, event: watcher::Event<(String, Option<V>)>, generation: u64) -> bool {
        match event {
            watcher::Event::Init => {
                self.current_as_of = self.as_of();
                self.relisting = Some(HashMap::new());
                self.listed = Some((Instant::now(), None));
                false
            }
            watcher::Event::InitApply((key, view)) => {
                if let (Some(list), Some(v)) = (self.relisting.as_mut(), view) {
                    list.insert(key, v);
                }
                false
            }
            watcher::Event::InitDone => {
                let began = self.listed.map_or_else(Instant::now, |(began, _)| began);
                self.listed = Some((began, self.heard.last()));
                let list = self.relisting.take().unwrap_or_default();
                let changed = !self.synced || list != self.current || self.keys_generation != generation;
                self.current = list;
                self.synced = true;
                self.keys_generation = generation;
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
    cluster_policies: Views<ClusterPolicyView>,
    /// The label keys the policies name: the labels views keep.
    keys: Arc<LabelKeys>,
    /// Bumped when `keys` gains a key: views listed before miss it.
    keys_generation: u64,
    /// Bumped whenever a view changes.
    changes: u64,
    /// ClusterNetworkPolicies are not watched: their views stay an empty list.
    cluster_policies_off: bool,
}

impl Inner {
    /// Recomputes the label keys from the policies; returns the new
    /// generation when a key was added (the views must re-list).
    fn update_keys(&mut self) -> Option<u64> {
        let cluster = self.cluster_policies.current.values().flat_map(|p| p.label_keys());
        let wanted: LabelKeys =
            self.policies.current.values().flat_map(|p| p.label_keys()).chain(cluster).map(str::to_string).collect();
        if *self.keys == wanted {
            return None;
        }
        let grew = !wanted.is_subset(&self.keys);
        self.keys = Arc::new(wanted);
        grew.then(|| {
            self.keys_generation += 1;
            self.keys_generation
        })
    }

    /// Whether the pod and namespace views hold every label the policies read.
    fn labels_complete(&self) -> bool {
        self.pods.keys_generation == self.keys_generation && self.namespaces.keys_generation == self.keys_generation
    }

    /// Whether every kind is listed, with every label the policies read.
    fn complete(&self) -> bool {
        let policies_synced = self.policies.synced && self.cluster_policies.synced;
        self.pods.synced && self.namespaces.synced && policies_synced && self.labels_complete()
    }
}

/// What the watches have seen, shared with the loop.
#[derive(Clone)]
pub struct PolicyCache {
    inner: Arc<Mutex<Inner>>,
    /// The label-key generation, for the Pod and Namespace watches to
    /// re-list when it moves; `None` until the policies are first listed
    /// (those watches wait for it, so they list once at start, with the keys).
    relist: tokio::sync::watch::Sender<Option<u64>>,
}

impl Default for PolicyCache {
    fn default() -> Self {
        PolicyCache { inner: Arc::default(), relist: tokio::sync::watch::Sender::new(None) }
    }
}

/// How current the views are: the count of view changes so far, and since
/// when the oldest kind's views are known to hold every change (`None`
/// until every kind is listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Freshness {
    pub changes: u64,
    pub as_of: Option<Instant>,
}

/// Copies of every view, for one pass.
#[derive(Debug, Clone, Default)]
pub struct PolicyViews {
    pub pods: Vec<PodView>,
    pub namespaces: Vec<NamespaceView>,
    pub policies: Vec<PolicyView>,
    pub cluster_policies: Vec<ClusterPolicyView>,
    /// Moves whenever `policies` or `cluster_policies` change, and not
    /// for Pods or Namespaces: what is computed from the policies alone
    /// (their verdicts) is recomputed only when it moves.
    pub policies_generation: u64,
}

impl PolicyCache {
    /// The views, once every list is complete.
    pub fn snapshot(&self) -> Option<PolicyViews> {
        let inner = self.inner.lock().ok()?;
        if !inner.complete() {
            return None;
        }
        Some(PolicyViews {
            pods: inner.pods.current.values().cloned().collect(),
            namespaces: inner.namespaces.current.values().cloned().collect(),
            policies: inner.policies.current.values().cloned().collect(),
            cluster_policies: inner.cluster_policies.current.values().cloned().collect(),
            // A sum of counters that only grow: it moves when either does.
            policies_generation: inner.policies.generation + inner.cluster_policies.generation,
        })
    }

    /// The generation of every view, without copying any: it moves
    /// whenever a view of any kind changes (a re-list for new label keys
    /// included). `None` when [`PolicyCache::snapshot`] would be. Read it
    /// before the snapshot: the snapshot is then at least this recent, so
    /// a later pass that reads the same generation saw the same views.
    pub fn generation(&self) -> Option<u64> {
        let inner = self.inner.lock().ok()?;
        inner.complete().then_some(inner.changes)
    }

    /// How current the views are now. Read it before [`PolicyCache::snapshot`]:
    /// what the snapshot holds is then at least as recent.
    pub fn freshness(&self) -> Freshness {
        let Ok(inner) = self.inner.lock() else { return Freshness::default() };
        let mut kinds = vec![inner.pods.as_of(), inner.namespaces.as_of(), inner.policies.as_of()];
        // Unwatched (turned off), ClusterNetworkPolicies are an empty list that never ages.
        if !inner.cluster_policies_off {
            kinds.push(inner.cluster_policies.as_of());
        }
        let as_of = kinds.into_iter().collect::<Option<Vec<Instant>>>().and_then(|all| all.into_iter().min());
        Freshness { changes: inner.changes, as_of }
    }

    /// A client for the watch of the views `views` picks, timing what it hears.
    fn hearing_client<V>(&self, client: &Client, views: fn(&mut Inner) -> &mut Views<V>) -> Client {
        let heard = Heard::default();
        if let Ok(mut inner) = self.inner.lock() {
            views(&mut inner).heard = heard.clone();
        }
        hearing(client, heard)
    }

    /// The label keys views keep now.
    fn keys(&self) -> Arc<LabelKeys> {
        self.inner.lock().map(|i| i.keys.clone()).unwrap_or_default()
    }

    /// Applies one event to the views `views` picks; returns whether a view changed.
    fn apply<V: PartialEq>(
        &self,
        event: watcher::Event<(String, Option<V>)>,
        generation: u64,
        views: fn(&mut Inner) -> &mut Views<V>,
    ) -> bool {
        let Ok(mut inner) = self.inner.lock() else { return false };
        let kind = views(&mut inner);
        let changed = kind.event(event, generation);
        kind.generation += u64::from(changed);
        inner.changes += u64::from(changed);
        let grew = if changed { inner.update_keys() } else { None };
        if let Some(g) = grew {
            tracing::info!(keys = inner.keys.len(), "policies name new label keys: (re-)listing Pods and Namespaces");
            self.relist.send_replace(Some(g));
        } else if inner.policies.synced && inner.cluster_policies.synced && self.relist.borrow().is_none() {
            self.relist.send_replace(Some(inner.keys_generation));
        }
        changed
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

/// Reports policies refused for a cap: once per policy and cap, at warn,
/// and counted; again only after the policy was accepted in between.
#[derive(Default)]
struct CapReports {
    refused: HashSet<String>,
}

impl CapReports {
    fn report(&mut self, object: &str, refused: &[Refused], metrics: &Metrics) {
        let Some((r, cap)) = refused.iter().find_map(|r| r.cap.map(|c| (r, c))) else {
            self.refused.remove(object);
            return;
        };
        if self.refused.insert(object.to_string()) {
            metrics.policy_refused(cap.label());
            tracing::warn!("{r}");
        }
    }
}

/// Starts the watches (ClusterNetworkPolicies' only with `cluster`); the
/// cache fills while their tasks run.
pub fn spawn(client: Client, trigger: Arc<Trigger>, metrics: Arc<Metrics>, cluster: bool) -> PolicyCache {
    let cache = PolicyCache::default();
    // The policies' watch starts first and settles the mode for the others.
    let mode = Arc::new(ListMode::default());
    if cluster {
        spawn_cluster_policies(&client, &cache, &trigger, &metrics, mode.clone());
    } else {
        cache.apply(watcher::Event::Init, 0, |i| &mut i.cluster_policies);
        cache.apply(watcher::Event::InitDone, 0, |i| &mut i.cluster_policies);
        if let Ok(mut inner) = cache.inner.lock() {
            inner.cluster_policies_off = true;
        }
    }
    let pod_keys = cache.clone();
    run(
        Api::<Pod>::all(cache.hearing_client(&client, |i| &mut i.pods)),
        Watch { what: "Pods", page: Some(POD_PAGE), mode: mode.clone(), relists: true, optional: false },
        cache.clone(),
        trigger.clone(),
        metrics.clone(),
        move |p: &Pod| {
            let mut refused = Vec::new();
            let v = PodView::from_pod_keeping(p, Some(&pod_keys.keys()), &mut refused);
            log_refused(refused);
            v
        },
        |i| &mut i.pods,
    );
    let ns_keys = cache.clone();
    run(
        Api::<Namespace>::all(cache.hearing_client(&client, |i| &mut i.namespaces)),
        Watch { what: "Namespaces", page: None, mode: mode.clone(), relists: true, optional: false },
        cache.clone(),
        trigger.clone(),
        metrics.clone(),
        move |n: &Namespace| NamespaceView::from_namespace_keeping(n, Some(&ns_keys.keys())),
        |i| &mut i.namespaces,
    );
    let policy_metrics = metrics.clone();
    let mut caps = CapReports::default();
    run(
        Api::<NetworkPolicy>::all(cache.hearing_client(&client, |i| &mut i.policies)),
        Watch { what: "NetworkPolicies", page: None, mode: mode.clone(), relists: false, optional: false },
        cache.clone(),
        trigger,
        metrics,
        move |p: &NetworkPolicy| {
            let mut refused = Vec::new();
            let v = PolicyView::from_policy(p, &mut refused);
            caps.report(&key(p), &refused, &policy_metrics);
            for r in refused.iter().filter(|r| r.cap.is_none()) {
                tracing::warn!("NetworkPolicy enforced without what weft cannot read: {r}");
            }
            v
        },
        |i| &mut i.policies,
    );
    cache
}

/// The ClusterNetworkPolicy watch: read as dynamic objects, whose `spec`
/// is turned into the view ([`ClusterPolicyView::from_spec`]).
fn spawn_cluster_policies(
    client: &Client,
    cache: &PolicyCache,
    trigger: &Arc<Trigger>,
    metrics: &Arc<Metrics>,
    mode: Arc<ListMode>,
) {
    let gvk = GroupVersionKind::gvk(cnp::GROUP, cnp::VERSION, cnp::KIND);
    let resource = ApiResource::from_gvk_with_plural(&gvk, cnp::PLURAL);
    let policy_metrics = metrics.clone();
    let mut caps = CapReports::default();
    run(
        Api::<DynamicObject>::all_with(cache.hearing_client(client, |i| &mut i.cluster_policies), &resource),
        Watch { what: "ClusterNetworkPolicies", page: None, mode, relists: false, optional: true },
        cache.clone(),
        trigger.clone(),
        metrics.clone(),
        move |o: &DynamicObject| {
            let mut refused = Vec::new();
            let v = ClusterPolicyView::from_spec(&o.name_any(), o.data.get("spec"), &mut refused).map(|v| {
                v.identified(o.metadata.uid.as_deref().unwrap_or_default(), o.metadata.generation.unwrap_or(0))
            });
            caps.report(&key(o), &refused, &policy_metrics);
            for r in refused.iter().filter(|r| r.cap.is_none()) {
                tracing::warn!("ClusterNetworkPolicy enforced as the API's fail-closed rules say: {r}");
            }
            v
        },
        |i| &mut i.cluster_policies,
    );
}

/// Why an optional resource cannot be read: the HTTP status of a watch
/// that failed with 404 (no such resource: a CRD not installed) or 403
/// (the agent may not list it: RBAC without it).
fn unreadable(e: &watcher::Error) -> Option<u16> {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return None,
    };
    matches!(code, 403 | 404).then_some(code)
}

/// How one kind is watched.
struct Watch {
    what: &'static str,
    /// Objects per page of a paged list (kube's default otherwise).
    page: Option<u32>,
    mode: Arc<ListMode>,
    /// Re-list when the policies name a new label key.
    relists: bool,
    /// The resource may not exist (a CRD not installed) or be readable (RBAC
    /// without it): a 404 or 403 reads as an empty list, said once, so the
    /// other policy is enforced; the watcher's backoff keeps retrying.
    optional: bool,
}

fn run<K, V>(
    api: Api<K>,
    watch: Watch,
    cache: PolicyCache,
    trigger: Arc<Trigger>,
    metrics: Arc<Metrics>,
    mut view: impl FnMut(&K) -> Option<V> + Send + 'static,
    views: fn(&mut Inner) -> &mut Views<V>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    V: PartialEq + Send + 'static,
{
    let streamed = watcher::Config::default().streaming_lists();
    let mut paged = watcher::Config::default();
    if let Some(page) = watch.page {
        paged = paged.page_size(page);
    }
    let mut relist = cache.relist.subscribe();
    let mut said_absent = false;
    tokio::spawn(async move {
        if watch.relists && relist.wait_for(Option::is_some).await.is_err() {
            return;
        }
        loop {
            let generation = relist.borrow_and_update().unwrap_or(0);
            let streaming = watch.mode.streaming();
            let config = if streaming { streamed.clone() } else { paged.clone() };
            // A new watcher starts with a full list.
            let stream = watcher(api.clone(), config).default_backoff();
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    e = stream.next() => e,
                    _ = relist.changed(), if watch.relists => break,
                };
                let Some(event) = event else { return };
                match event {
                    Ok(e) => {
                        if streaming && matches!(e, watcher::Event::InitDone) {
                            watch.mode.streamed(&metrics);
                        }
                        // The full object lives only until its view is made.
                        let e = slim(e, &mut view);
                        if cache.apply(e, generation, views) {
                            trigger.fire();
                        }
                    }
                    Err(e) if streaming && watcher_refuses_streaming(&e) => {
                        // Before the watcher's Init: the views are untouched.
                        watch.mode.refused(&metrics, &e);
                        break;
                    }
                    Err(e) if watch.optional && unreadable(&e).is_some() => {
                        if !std::mem::replace(&mut said_absent, true) {
                            if unreadable(&e) == Some(404) {
                                tracing::info!("no {} in the API (CRD not installed): none enforced", watch.what);
                            } else {
                                tracing::warn!(
                                    "may not list {}: none enforced (grant list/watch, or turn them off): {e}",
                                    watch.what
                                );
                            }
                        }
                        // Nothing to read: an empty list, so the rest of policy goes on.
                        let changed = cache.apply(watcher::Event::Init, generation, views)
                            | cache.apply(watcher::Event::InitDone, generation, views);
                        if changed {
                            trigger.fire();
                        }
                    }
                    Err(e) => {
                        // The backoff retries; the views stay as last seen.
                        metrics.error("watch");
                        tracing::warn!("watching {}: {e}", watch.what);
                    }
                }
            }
        }
    });
}

/// The event with its object replaced by its key and view.
fn slim<K: Resource, V>(
    e: watcher::Event<K>,
    view: &mut impl FnMut(&K) -> Option<V>,
) -> watcher::Event<(String, Option<V>)> {
    let mut slim = |o: K| (key(&o), view(&o));
    match e {
        watcher::Event::Apply(o) => watcher::Event::Apply(slim(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(slim(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(slim(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    #[test]
    fn only_view_changes_fire_and_a_relist_replaces_the_whole_list() {
        let mut v: Views<u32> = Views::default();
        let e = |k: &str, x: Option<u32>| (k.to_string(), x);
        assert!(!v.event(Event::Init, 0));
        assert!(!v.event(Event::InitApply(e("a/1", Some(1))), 0));
        assert!(!v.event(Event::InitApply(e("a/2", None)), 0), "ignored objects are not kept");
        assert!(!v.synced);
        assert!(v.event(Event::InitDone, 0), "the first list completes");
        assert_eq!(v.current.len(), 1);
        assert!(!v.event(Event::Apply(e("a/1", Some(1))), 0), "an update policy does not read");
        assert!(v.event(Event::Apply(e("a/1", Some(2))), 0));
        assert!(!v.event(Event::Apply(e("a/3", None)), 0));
        assert!(v.event(Event::Apply(e("a/4", Some(4))), 0));
        assert!(v.event(Event::Apply(e("a/4", None)), 0), "a pod that finished leaves");
        // The watch restarts: a/1 was deleted meanwhile.
        assert!(!v.event(Event::Init, 0));
        assert!(!v.event(Event::InitApply(e("a/5", Some(5))), 0));
        assert_eq!(v.current.get("a/1"), Some(&2), "kept until the list is complete");
        assert!(v.event(Event::InitDone, 0));
        assert_eq!(v.current.keys().collect::<Vec<_>>(), ["a/5"]);
        assert!(v.event(Event::Delete(e("a/5", Some(5))), 0));
        assert!(!v.event(Event::Delete(e("a/5", None)), 0));
    }

    #[test]
    fn views_are_as_fresh_as_the_last_frame_heard_and_a_relist_as_its_start() {
        let mut v: Views<u32> = Views::default();
        let e = |k: &str, x: u32| (k.to_string(), Some(x));
        let pause = || std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(v.as_of(), None, "before the first list");
        let before = Instant::now();
        v.event(Event::Init, 0);
        v.event(Event::InitApply(e("a/1", 1)), 0);
        v.heard.mark(); // the list's pages
        pause();
        v.event(Event::InitDone, 0);
        let listed = v.as_of().unwrap();
        assert!(listed >= before && listed < v.heard.last().unwrap(), "as of the list's start, not its last page");
        // A bookmark (or any frame) read after the list: fresh up to it.
        pause();
        v.heard.mark();
        assert_eq!(v.as_of(), v.heard.last());
        let heard = v.as_of();
        // A re-list (the watch was down): as fresh as before it, whatever it reads meanwhile ...
        pause();
        v.event(Event::Init, 0);
        v.heard.mark();
        assert_eq!(v.as_of(), heard);
        // ... until it completes: then as of its start.
        let relist_started = Instant::now();
        pause();
        v.event(Event::InitDone, 0);
        assert!(v.as_of().unwrap() > heard.unwrap() && v.as_of().unwrap() <= relist_started);
    }

    #[test]
    fn only_a_missing_or_forbidden_resource_reads_as_empty() {
        let status = |code: u16| {
            let json = serde_json::json!({"status": "Failure", "code": code, "reason": "x", "message": "m"});
            kube::Error::Api(Box::new(serde_json::from_value(json).unwrap()))
        };
        assert_eq!(unreadable(&watcher::Error::InitialListFailed(status(404))), Some(404), "CRD not installed");
        assert_eq!(unreadable(&watcher::Error::WatchStartFailed(status(403))), Some(403), "RBAC without it");
        for code in [401, 422, 500, 503] {
            assert_eq!(unreadable(&watcher::Error::InitialListFailed(status(code))), None, "{code}: retried as is");
        }
    }

    fn list<V: PartialEq>(
        cache: &PolicyCache,
        generation: u64,
        views: fn(&mut Inner) -> &mut Views<V>,
        items: Vec<(String, Option<V>)>,
    ) {
        cache.apply(Event::Init, generation, views);
        for item in items {
            cache.apply(Event::InitApply(item), generation, views);
        }
        cache.apply(Event::InitDone, generation, views);
    }

    #[test]
    fn the_views_generation_moves_with_every_view_and_the_policies_generation_with_policies_only() {
        use k8s_openapi::api::core::v1::{Namespace, Pod};
        use serde_json::json;

        let cache = PolicyCache::default();
        list::<ClusterPolicyView>(&cache, 0, |i| &mut i.cluster_policies, vec![]);
        list::<PolicyView>(&cache, 0, |i| &mut i.policies, vec![]);
        list::<PodView>(&cache, 0, |i| &mut i.pods, vec![]);
        assert_eq!(cache.generation(), None, "the Namespaces are not listed yet");
        list::<NamespaceView>(&cache, 0, |i| &mut i.namespaces, vec![]);
        // (every view's, the policies')
        let generations =
            || (cache.generation().expect("listed"), cache.snapshot().expect("listed").policies_generation);
        let listed = generations();
        assert_eq!(generations(), listed, "nothing happened");

        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": "db"},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIPs": [{"ip": "10.244.1.5"}]}
        }))
        .unwrap();
        let pod_view = || PodView::from_pod_keeping(&pod, Some(&cache.keys()), &mut Vec::new());
        assert!(cache.apply(Event::Apply((key(&pod), pod_view())), 0, |i| &mut i.pods));
        let with_pod = generations();
        assert_ne!(with_pod.0, listed.0, "a Pod added");
        assert_eq!(with_pod.1, listed.1, "a Pod is not a policy");
        assert!(!cache.apply(Event::Apply((key(&pod), pod_view())), 0, |i| &mut i.pods));
        assert_eq!(generations(), with_pod, "the same Pod again");

        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
        let ns_view = NamespaceView::from_namespace_keeping(&ns, Some(&cache.keys()));
        assert!(cache.apply(Event::Apply((key(&ns), ns_view)), 0, |i| &mut i.namespaces));
        let with_ns = generations();
        assert_ne!(with_ns.0, with_pod.0, "a Namespace added");
        assert_eq!(with_ns.1, listed.1, "a Namespace is not a policy");

        let np: NetworkPolicy = serde_json::from_value(json!({"metadata": {"namespace": "a", "name": "p"},
            "spec": {"podSelector": {}, "ingress": [{}]}}))
        .unwrap();
        let np_view = PolicyView::from_policy(&np, &mut Vec::new());
        assert!(cache.apply(Event::Apply((key(&np), np_view.clone())), 0, |i| &mut i.policies));
        let with_np = generations();
        assert!(with_np.0 != with_ns.0 && with_np.1 != listed.1, "a NetworkPolicy added");
        assert!(!cache.apply(Event::Apply((key(&np), np_view)), 0, |i| &mut i.policies));
        assert_eq!(generations(), with_np, "the same NetworkPolicy again");

        let spec = json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}, "ingress": []});
        let cnp = ClusterPolicyView::from_spec("c", Some(&spec), &mut Vec::new()).map(|v| v.identified("u", 1));
        assert!(cache.apply(Event::Apply(("/c".to_string(), cnp)), 0, |i| &mut i.cluster_policies));
        let with_cnp = generations();
        assert!(with_cnp.0 != with_np.0 && with_cnp.1 != with_np.1, "a ClusterNetworkPolicy added");
        assert!(cache.apply(Event::Delete(("/c".to_string(), None)), 0, |i| &mut i.cluster_policies));
        let deleted = generations();
        assert!(deleted.0 != with_cnp.0 && deleted.1 != with_cnp.1, "and deleted");
        assert!(cache.apply(Event::Delete((key(&pod), None)), 0, |i| &mut i.pods));
        assert_ne!(generations().0, deleted.0, "a Pod deleted");
    }

    #[test]
    fn a_policy_naming_a_new_label_key_matches_pods_seen_before_it_after_a_relist() {
        use k8s_openapi::api::core::v1::{Namespace, Pod};
        use serde_json::json;

        use crate::desired::policy::selects;
        use crate::wire_policy::Direction;

        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": "db", "labels": {"team": "blue", "junk": "x".repeat(1000)}},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIPs": [{"ip": "10.244.1.5"}]}
        }))
        .unwrap();
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "a", "labels": {"env": "prod"}}})).unwrap();
        let pods =
            |c: &PolicyCache| vec![(key(&pod), PodView::from_pod_keeping(&pod, Some(&c.keys()), &mut Vec::new()))];
        let namespaces =
            |c: &PolicyCache| vec![(key(&ns), NamespaceView::from_namespace_keeping(&ns, Some(&c.keys())))];
        let cache = PolicyCache::default();
        let mut relist = cache.relist.subscribe();
        list::<ClusterPolicyView>(&cache, 0, |i| &mut i.cluster_policies, vec![]);
        assert_eq!(*relist.borrow(), None, "NetworkPolicies are not listed yet");
        list(&cache, 0, |i| &mut i.policies, vec![]);
        assert_eq!(*relist.borrow_and_update(), Some(0), "Pods and Namespaces are listed once policies are");
        list(&cache, 0, |i| &mut i.pods, pods(&cache));
        list(&cache, 0, |i| &mut i.namespaces, namespaces(&cache));
        let seen = cache.snapshot().unwrap();
        assert!(seen.pods[0].labels.is_empty() && seen.namespaces[0].labels.is_empty(), "no policy names a key");

        // A policy selecting by a key the views dropped.
        let np: NetworkPolicy = serde_json::from_value(json!({"metadata": {"namespace": "a", "name": "p"},
            "spec": {"podSelector": {"matchLabels": {"team": "blue"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"env": "prod"}}}]}]}}))
        .unwrap();
        let view = PolicyView::from_policy(&np, &mut Vec::new());
        assert!(cache.apply(Event::Apply((key(&np), view)), 0, |i| &mut i.policies));
        assert!(relist.has_changed().unwrap(), "the Pod and Namespace watches are told to re-list");
        let generation = relist.borrow_and_update().unwrap();
        assert!(cache.snapshot().is_none(), "not evaluated against labels the views do not hold");
        assert_eq!(cache.generation(), None, "nor is their generation");
        list(&cache, generation, |i| &mut i.pods, pods(&cache));
        assert!(cache.snapshot().is_none(), "the namespaces are not re-listed yet");
        list(&cache, generation, |i| &mut i.namespaces, namespaces(&cache));

        assert!(cache.generation().is_some(), "listed with the new key");
        let now = cache.snapshot().unwrap();
        assert!(selects(&now.policies[0], &now.pods[0], Direction::Ingress), "{:?}", now.pods[0]);
        assert_eq!(now.pods[0].labels.keys().collect::<Vec<_>>(), ["team"], "still no junk");
        assert_eq!(now.namespaces[0].labels.keys().collect::<Vec<_>>(), ["env"]);

        // The policy goes: its keys are dropped without a re-list.
        assert!(cache.apply(Event::Delete((key(&np), None)), 0, |i| &mut i.policies));
        assert!(!relist.has_changed().unwrap());
        assert!(cache.snapshot().is_some() && cache.keys().is_empty());
    }
}
