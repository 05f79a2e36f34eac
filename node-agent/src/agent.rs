//! `weft-agent run`: schedules passes and reports them. Each pass observes
//! (the Node watch cache, the underlay), computes the desired state
//! (`desired::compute`) and applies every output (`apply::*`). A pass for
//! Node events updates the desired state of the last pass for the Nodes
//! that changed (`desired::incremental`) and compares only their entries
//! with the kernel mirror; start, the resync and lost notifications
//! compute and compare everything.
//!
//! Woken by any Node event (coalesced), by drift (the kernel reporting that
//! something weft owns changed, `observe::events`), by the resync tick, or
//! by the retry of a failed output: after a pass in which any output failed, the next
//! pass comes after a jittered exponential backoff (100 ms doubling to 30 s)
//! instead of at the next tick. Outputs already right write nothing, so a
//! retry pass only redoes what failed. Guarantees:
//! - nothing is programmed before the own node has a podCIDR (not ready);
//! - node.json and the conflist are written only once the node is known;
//! - when the API server is unreachable the cache keeps the last known nodes,
//!   so the kernel keeps its last programmed state;
//! - SIGTERM stops the loop and leaves the data plane in place.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use libweft::netlink::Netlink;
use libweft::pending::PolicyNamespaces;

use crate::apply::nftables::{self as nft, NftChange, NftError, Nftables};
use crate::apply::policy::{PolicyChange, PolicyError, PolicySync, release_pending};
use crate::apply::{api, files, kernel};
use crate::config::{Backend, Config};
use crate::desired::incremental::{Incremental, NodeChange, Scope, Touched};
use crate::desired::{self, Desired, vtep_mac_for};
use crate::metrics::{BackendLabel, FieldLabel, Metrics, PolicyLabel};
use crate::observe::policy_watch::{self, PolicyCache};
use crate::observe::underlay::{self, UnderlayError};
use crate::observe::watch::{self, Trigger};
use crate::observe::{Observation, events, kernel as observe_kernel};
use crate::wire::{NodeView, Rejected, WatchedNode};

/// Shared with the HTTP endpoints.
#[derive(Default)]
pub struct Health {
    /// Set by a pass in which every output succeeded; cleared after
    /// [`UNREADY_AFTER_FAILED_PASSES`] failed passes in a row.
    pub ready: AtomicBool,
    /// Unix seconds of the last loop iteration.
    pub last_loop: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One output that failed in a pass.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("find the underlay: {0}")]
    Observe(#[from] UnderlayError),
    #[error("kernel: {0}")]
    Kernel(#[from] kernel::KernelError),
    #[error("nftables: {0}")]
    Nftables(#[from] NftError),
    #[error("CNI files: {0}")]
    Files(#[from] files::FilesError),
    #[error("{0}")]
    Api(#[from] api::ApiError),
    #[error("NetworkPolicy table: {0}")]
    Policy(#[from] PolicyError),
}

impl Failure {
    /// The output's name in `weft_sync_errors_total{output}`.
    pub fn output(&self) -> &'static str {
        match self {
            Failure::Observe(_) => "observe",
            Failure::Kernel(_) => "kernel",
            Failure::Nftables(_) => "nftables",
            Failure::Files(_) => "files",
            Failure::Api(_) => "api",
            Failure::Policy(_) => "policy",
        }
    }
}

/// What woke the loop for a pass: the label of `weft_sync_passes_total{trigger}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// The first pass.
    Start,
    /// A Node event.
    Node,
    /// The kernel changed something weft owns.
    Drift,
    /// The periodic resync tick.
    Resync,
    /// The retry after a failed pass.
    Retry,
    /// A Pod, Namespace or NetworkPolicy event.
    Policy,
}

impl Wakeup {
    pub fn label(self) -> &'static str {
        match self {
            Wakeup::Start => "start",
            Wakeup::Node => "node",
            Wakeup::Drift => "drift",
            Wakeup::Resync => "resync",
            Wakeup::Retry => "retry",
            Wakeup::Policy => "policy",
        }
    }

    /// Whether the pass dumps what weft owns in the kernel and compares the
    /// nftables table with its reference, whatever the notifications said:
    /// they may have missed something (the periodic backstop).
    pub fn checks_kernel(self) -> bool {
        matches!(self, Wakeup::Start | Wakeup::Resync)
    }
}

/// How a pass went.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to program yet: the own Node is unknown or has no podCIDR.
    Waiting,
    /// Every output was applied, except those that failed.
    Done(Vec<Failure>),
}

/// Delay before retrying after `failures` consecutive failed passes:
/// 100 ms doubling up to 30 s, each scaled by a random factor in
/// [0.5, 1.0) so agents failing together do not retry in lockstep.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);
    let exp = BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX);
    exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A random number in [0, 1) from std's randomly keyed hasher: enough for jitter.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_secs());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Unready after this many consecutive failed passes. With the backoff
/// above, five failures span at least 0.75 s of retries: a transient
/// failure (a netlink EBUSY, nft racing another writer) recovers before
/// that without flapping readiness, while a persistent one shows within
/// seconds rather than after a resync period.
pub const UNREADY_AFTER_FAILED_PASSES: u32 = 5;

/// Readiness from pass outcomes: ready after a good pass, unready after
/// [`UNREADY_AFTER_FAILED_PASSES`] failed ones in a row.
#[derive(Debug, Default)]
pub struct Readiness {
    failed_in_a_row: u32,
}

impl Readiness {
    /// Records one pass; returns whether the agent is ready now, or `None`
    /// when this pass does not change it.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failed_in_a_row = 0;
            return Some(true);
        }
        self.failed_in_a_row += 1;
        (self.failed_in_a_row >= UNREADY_AFTER_FAILED_PASSES).then_some(false)
    }

    /// Consecutive failed passes so far.
    pub fn failures(&self) -> u32 {
        self.failed_in_a_row
    }
}

/// Refused peer values, each logged and counted once rather than on every
/// pass: (node, field, value) of the refusals of the last pass.
#[derive(Default)]
pub struct Refusals {
    reported: HashSet<(String, &'static str, String)>,
}

impl Refusals {
    /// The refusals in `rejected` not reported in the previous pass. A value
    /// that disappears and comes back is reported again.
    pub fn fresh<'a>(&mut self, rejected: &'a [Rejected]) -> Vec<&'a Rejected> {
        let mut current = HashSet::new();
        let mut fresh = Vec::new();
        for r in rejected {
            let key = (r.node.clone(), r.field, r.value.clone());
            if !self.reported.contains(&key) && !current.contains(&key) {
                fresh.push(r);
            }
            current.insert(key);
        }
        self.reported = current;
        fresh
    }
}

/// The Node views of the last pass, each with the object it was read from:
/// the watch replaces an object when it changes, so an unchanged one
/// (the same `Arc`) is not parsed again.
#[derive(Default)]
struct Views {
    by_name: HashMap<String, View>,
}

/// One Node's object, its view, and what was refused in it.
type View = (Arc<WatchedNode>, Arc<NodeView>, Vec<Rejected>);

impl Views {
    /// Every object's view, what was refused in them, and the Nodes
    /// added, changed or deleted since the last call.
    fn update(
        &mut self,
        objects: &[Arc<WatchedNode>],
        cluster_cidrs: &[IpNetwork],
    ) -> (Vec<Arc<NodeView>>, Vec<Rejected>, Vec<NodeChange>) {
        let mut by_name = HashMap::with_capacity(objects.len());
        let mut views = Vec::with_capacity(objects.len());
        let mut rejected = Vec::new();
        let mut changes = Vec::new();
        for object in objects {
            let name = object.metadata.name.as_deref().unwrap_or_default();
            let (name, entry) = match self.by_name.remove_entry(name) {
                Some((name, e)) if Arc::ptr_eq(&e.0, object) => (name, e),
                _ => {
                    let mut refused = Vec::new();
                    let view = Arc::new(NodeView::from_node(object, cluster_cidrs, &mut refused));
                    changes.push((name.to_string(), Some(view.clone())));
                    (name.to_string(), (object.clone(), view, refused))
                }
            };
            views.push(entry.1.clone());
            rejected.extend(entry.2.iter().cloned());
            by_name.insert(name, entry);
        }
        // What is left was deleted.
        changes.extend(self.by_name.drain().map(|(name, _)| (name, None)));
        self.by_name = by_name;
        (views, rejected, changes)
    }
}

/// Everything one pass needs.
struct Agent {
    cfg: Config,
    node_name: String,
    store: Store<WatchedNode>,
    nodes_api: Api<Node>,
    nl: Netlink,
    vtep_mac: [u8; 6],
    metrics: Arc<Metrics>,
    nft: Nftables,
    views: Views,
    /// The desired state of the last pass, updated for the Nodes that changed.
    desired: Incremental,
    /// The kernel mirror and what else the notification readers share.
    shared: Arc<events::Shared>,
    refusals: Refusals,
    /// Peers refused by the desired state (claims on what another node holds).
    peer_refusals: Refusals,
    /// NetworkPolicy: the watches' views and the policy table; `None` when disabled.
    policy: Option<(PolicyCache, PolicySync)>,
    /// What the last look at pending pod interfaces saw.
    pending: PendingScan,
    /// Pod addresses not believed in the last pass (logged when new).
    pod_doubts: HashSet<(String, std::net::IpAddr)>,
    /// Whether the last pass got as far as syncing the policy table.
    policy_checked: bool,
}

/// When a pass looks for pending pod interfaces: a link dump is not free,
/// so only when a local pod appeared (or changed addresses), when the
/// last look left some waiting, and at the resync (the backstop).
#[derive(Default)]
struct PendingScan {
    local_ips: std::collections::BTreeSet<std::net::IpAddr>,
    waiting: usize,
}

pub async fn run(
    cfg: Config,
    node_name: String,
    client: Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let trigger = Arc::new(Trigger::default());
    let store = watch::spawn(client.clone(), trigger.clone(), metrics.clone());
    let nl = Netlink::connect()?;
    let drift = Arc::new(Trigger::default());
    let shared = Arc::new(events::Shared::default());
    let (nft, policy_sync) = match events::spawn(nl.clone(), drift.clone(), metrics.clone(), shared.clone()) {
        Ok(()) => {
            (Nftables::with_writers(shared.nft_writers.clone()), PolicySync::with_writers(shared.nft_writers.clone()))
        }
        Err(e) => {
            metrics.error("events");
            tracing::warn!(
                period_s = cfg.resync_period.as_secs(),
                "{e}: drift is repaired at the resync only, every pass dumps"
            );
            (Nftables::default(), PolicySync::default())
        }
    };
    let policy_trigger = Arc::new(Trigger::default());
    let policy = if cfg.network_policy {
        Some((policy_watch::spawn(client.clone(), policy_trigger.clone(), metrics.clone()), policy_sync))
    } else {
        disable_policy(&cfg, &nl, &metrics).await;
        None
    };
    let mut agent = Agent {
        policy,
        pending: PendingScan::default(),
        policy_checked: false,
        vtep_mac: vtep_mac_for(&node_name),
        nodes_api: Api::all(client),
        nl,
        store: store.clone(),
        nft,
        views: Views::default(),
        desired: Incremental::default(),
        shared,
        refusals: Refusals::default(),
        peer_refusals: Refusals::default(),
        pod_doubts: HashSet::new(),
        metrics: metrics.clone(),
        node_name: node_name.clone(),
        cfg: cfg.clone(),
    };
    // The first tick one period after the first pass, which checks everything anyway.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cfg.resync_period, cfg.resync_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    tracing::info!(node = %node_name, backend = cfg.backend.as_str(), "waiting for the Node list");
    tokio::select! {
        r = store.wait_until_ready() => r?,
        _ = term.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    }

    let wakers = Wakers { node: &trigger, drift: &drift, policy: &policy_trigger };
    let mut wakeup = Wakeup::Start;
    let mut readiness = Readiness::default();
    loop {
        health.last_loop.store(now_secs(), Ordering::Relaxed);
        let started = Instant::now();
        let event_at = trigger.take_oldest();
        metrics.sync_pass(wakeup.label());
        if wakeup.checks_kernel() {
            agent.shared.mirror.mark_stale();
        }
        let check_of = |changed: &AtomicBool| {
            if wakeup.checks_kernel() {
                nft::Check::Resync
            } else if changed.swap(false, Ordering::Relaxed) {
                nft::Check::Changed
            } else {
                nft::Check::No
            }
        };
        let check = check_of(&agent.shared.nft_changed);
        let policy_check = check_of(&agent.shared.policy_changed);
        let outcome = agent.pass(check, policy_check, wakeup).await;
        // A pass that stopped before the table keeps the news for the next one.
        let stopped_early = match &outcome {
            Outcome::Waiting => true,
            Outcome::Done(failures) => failures.iter().any(|f| matches!(f, Failure::Observe(_))),
        };
        if check == nft::Check::Changed && stopped_early {
            agent.shared.nft_changed.store(true, Ordering::Relaxed);
        }
        if policy_check == nft::Check::Changed && !agent.policy_checked {
            agent.shared.policy_changed.store(true, Ordering::Relaxed);
        }
        let Outcome::Done(failures) = outcome else {
            match wakers.next(&mut tick, None, &mut term).await {
                Some(w) => wakeup = w,
                None => break,
            }
            continue;
        };
        for f in &failures {
            metrics.sync_error(f.output());
            tracing::warn!(node = %node_name, "{f}");
        }
        let ok = failures.is_empty();
        if ok {
            metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
            metrics
                .last_successful_sync
                .set(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
            if let Some(at) = event_at {
                metrics.event_to_programmed_seconds.observe(at.elapsed().as_secs_f64());
            }
        } else {
            metrics.error("reconcile");
        }
        let was_ready = health.ready.load(Ordering::Relaxed);
        match readiness.record(ok) {
            Some(true) if !was_ready => {
                health.ready.store(true, Ordering::Relaxed);
                tracing::info!(node = %node_name, elapsed_ms = started.elapsed().as_millis() as u64, "sync complete: ready");
            }
            Some(false) if was_ready => {
                health.ready.store(false, Ordering::Relaxed);
                tracing::warn!(node = %node_name, passes = readiness.failures(), "consecutive passes failed: not ready");
            }
            _ => {}
        }
        let retry_at = (!ok).then(|| {
            let delay = backoff(readiness.failures(), jitter());
            tracing::info!(node = %node_name, delay_ms = delay.as_millis() as u64, "retrying the failed outputs");
            tokio::time::Instant::now() + delay
        });
        match wakers.next(&mut tick, retry_at, &mut term).await {
            Some(w) => wakeup = w,
            None => break,
        }
    }
    tracing::info!("SIGTERM: leaving the data plane in place");
    Ok(())
}

/// NetworkPolicy is disabled: its table goes, so does the plugin's list of
/// policy namespaces (new pods start ready), and pods still pending from
/// when it was enabled are released, so disabling never leaves a pod
/// unreachable. Failures are reported, not fatal: the data plane works.
async fn disable_policy(cfg: &Config, nl: &Netlink, metrics: &Metrics) {
    if let Err(e) = crate::apply::policy::remove().await {
        metrics.sync_error("policy");
        tracing::warn!("NetworkPolicy disabled, but removing its table failed: {e}");
    }
    if let Err(e) = libweft::pending::remove(&desired::files::policy_namespaces_path(cfg)) {
        metrics.sync_error("policy");
        tracing::warn!("NetworkPolicy disabled, but {e}");
    }
    match release_pending(nl, |_| true).await {
        Ok(p) if p.released > 0 => {
            tracing::info!(released = p.released, "NetworkPolicy disabled: released pending pods")
        }
        Ok(_) => {}
        Err(e) => {
            metrics.sync_error("policy");
            tracing::warn!("NetworkPolicy disabled, but releasing pending pods failed: {e}");
        }
    }
}

/// The triggers that wake the loop besides the tick and the retry timer.
struct Wakers<'a> {
    node: &'a Trigger,
    drift: &'a Trigger,
    policy: &'a Trigger,
}

impl Wakers<'_> {
    /// Waits for the next reason to run a pass; `None` on SIGTERM or Ctrl-C.
    async fn next(
        &self,
        tick: &mut tokio::time::Interval,
        retry_at: Option<tokio::time::Instant>,
        term: &mut tokio::signal::unix::Signal,
    ) -> Option<Wakeup> {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.node.wait() => Some(Wakeup::Node),
            _ = self.drift.wait() => Some(Wakeup::Drift),
            _ = self.policy.wait() => Some(Wakeup::Policy),
            _ = tick.tick() => Some(Wakeup::Resync),
            _ = retry => Some(Wakeup::Retry),
            _ = term.recv() => None,
            _ = tokio::signal::ctrl_c() => None,
        }
    }
}

impl Agent {
    /// Observe: the Node views (reporting new refusals), the own Node and
    /// the underlay. `Ok(None)`: not ready to program yet (own node unknown
    /// or without podCIDR).
    async fn observe(&mut self) -> Result<Option<(Observation, Arc<WatchedNode>, Vec<NodeChange>)>, UnderlayError> {
        let objects = self.store.state();
        self.metrics.nodes.set(objects.len() as i64);
        let (nodes, rejected, changes) = self.views.update(&objects, &self.cfg.cluster_cidrs);
        for r in self.refusals.fresh(&rejected) {
            self.metrics.rejected_annotations.get_or_create(&FieldLabel { field: r.field.to_string() }).inc();
            tracing::warn!(node = %r.node, field = r.field, value = %r.value, "ignored invalid value: {}", r.reason);
        }
        let node_name = self.node_name.as_str();
        let Some(own_object) = objects.iter().find(|n| n.metadata.name.as_deref() == Some(node_name)) else {
            tracing::warn!(node = %node_name, "own Node not found in the API (is NODE_NAME right?)");
            return Ok(None);
        };
        let Some(local) = nodes.iter().find(|n| n.name == node_name).map(|n| NodeView::clone(n)) else {
            return Ok(None);
        };
        if local.pod_cidrs.is_empty() {
            tracing::info!(node = %node_name, "waiting for the node's spec.podCIDRs (kube-controller-manager --allocate-node-cidrs)");
            return Ok(None);
        }
        // The underlay is found from the Node's InternalIPs, not from weft's own annotations.
        let internal: Vec<std::net::IpAddr> = own_object.internal_ips().collect();
        let underlay = underlay::detect(&self.nl, self.cfg.underlay_interface.as_deref(), &internal).await?;
        let obs = Observation {
            local,
            nodes,
            underlay,
            vtep_mac: self.vtep_mac,
            offload_default: observe_kernel::offload_default(),
            portmap_installed: desired::files::portmap_installed(&self.cfg),
        };
        Ok(Some((obs, own_object.clone(), changes)))
    }

    /// One pass: observe, compute, apply every output. A failed output is
    /// reported and does not stop the others, except that the plugin's
    /// files wait for the kernel and the nftables table: they tell the
    /// plugin it may serve pods. `check`, `policy_check`: also compare the
    /// nftables table, the policy table, with weft's last write. `wakeup`:
    /// what woke the loop; a pass for a Node (or policy) event compares
    /// only what changed with the kernel.
    async fn pass(&mut self, check: nft::Check, policy_check: nft::Check, wakeup: Wakeup) -> Outcome {
        self.policy_checked = false;
        let started = Instant::now();
        let (obs, own_object, changes) = match self.observe().await {
            Ok(Some(o)) => o,
            // The Node changes seen are not in the desired state yet.
            Ok(None) => {
                self.desired.invalidate();
                return Outcome::Waiting;
            }
            Err(e) => {
                self.desired.invalidate();
                return Outcome::Done(vec![e.into()]);
            }
        };
        let observed = started.elapsed();
        // Everything at start, at the resync, and when the kernel mirror is
        // stale (lost notifications: the full pass that follows them).
        let full = check == nft::Check::Resync || self.shared.mirror.is_stale();
        let mut desired = std::mem::take(&mut self.desired);
        let (d, scope) = desired.update(&self.cfg, &obs, (!full).then_some(changes.as_slice()));
        let computed = started.elapsed();
        let only = match (&scope, wakeup) {
            (Scope::Entries(keys), Wakeup::Node | Wakeup::Policy) => Some(keys),
            // Drift and retries compare everything with the kernel.
            _ => None,
        };
        for (peer, why) in &d.kernel.skipped {
            tracing::debug!(peer = %peer, "not programmed: {why}");
        }
        for r in self.peer_refusals.fresh(&d.kernel.refused) {
            self.metrics.refused_peers.get_or_create(&FieldLabel { field: r.field.to_string() }).inc();
            tracing::warn!(node = %r.node, field = r.field, value = %r.value, "refused peer, nothing of it programmed: {}", r.reason);
        }
        let mut failures = Vec::new();
        if let Some(patch) = api::annotation_patch(&own_object.weft, &d.annotations)
            && let Err(e) = api::publish(&self.nodes_api, &self.node_name, &patch).await
        {
            self.metrics.error("publish");
            failures.push(e.into());
        }
        let published = started.elapsed();
        let kernel = self.apply_kernel(d, obs.underlay.ifindex, only).await;
        if kernel.is_err() {
            // This pass's changes may be half applied: the next compares everything.
            self.shared.mirror.mark_stale();
        }
        let kernel_done = started.elapsed();
        let nft = self.nft.sync(&self.cfg, &d.nft, check).await;
        let peers_changed = changes.len();
        let nft_done = started.elapsed();
        if let Ok(change) = &nft {
            self.metrics.kernel_writes("nftables", usize::from(*change != NftChange::None));
        }
        let data_plane_ok = kernel.is_ok() && nft.is_ok();
        failures.extend(kernel.err().map(Failure::from));
        failures.extend(nft.err().map(Failure::from));
        failures.extend(self.apply_policy(policy_check, &obs, &d.kernel.refused).await.err().map(Failure::from));
        // Last: the plugin may now serve pods on this node.
        if data_plane_ok && let Err(e) = files::write(&self.cfg, &d.node_config, &d.conflist) {
            failures.push(e.into());
        }
        let computed_all = scope == Scope::All;
        self.desired = desired;
        let us = |d: Duration| d.as_micros() as u64;
        tracing::debug!(
            nodes = obs.nodes.len(),
            peers_changed,
            computed_all,
            observe_us = us(observed),
            compute_us = us(computed - observed),
            publish_us = us(published - computed),
            kernel_us = us(kernel_done - published),
            nftables_us = us(nft_done - kernel_done),
            files_us = us(started.elapsed() - nft_done),
            ?check,
            ?wakeup,
            "pass"
        );
        Outcome::Done(failures)
    }

    /// NetworkPolicy for this node's pods, once the watches have listed everything.
    async fn apply_policy(
        &mut self,
        check: nft::Check,
        obs: &Observation,
        refused: &[Rejected],
    ) -> Result<(), PolicyError> {
        let Some((cache, table)) = &mut self.policy else { return Ok(()) };
        let Some(mut seen) = cache.snapshot() else { return Ok(()) };
        self.policy_checked = true;
        let started = Instant::now();
        // Only pod addresses in their node's podCIDRs, claimed once (desired::pod_trust).
        let refused: HashSet<&str> = refused.iter().map(|r| r.node.as_str()).collect();
        let cidrs = obs
            .nodes
            .iter()
            .filter(|n| n.name == obs.local.name || !refused.contains(n.name.as_str()))
            .map(|n| (n.name.as_str(), n.pod_cidrs.as_slice()))
            .collect();
        let believed = desired::pod_trust::believe(std::mem::take(&mut seen.pods), &cidrs);
        let mut doubts = HashSet::new();
        for d in &believed.doubts {
            let key = (d.pod.clone(), d.ip);
            if !self.pod_doubts.contains(&key) {
                tracing::warn!(pod = %d.pod, ip = %d.ip, "pod address not believed for NetworkPolicy: {}", d.reason);
            }
            doubts.insert(key);
        }
        self.pod_doubts = doubts;
        self.metrics.policy_doubted_pod_addresses.set(believed.doubts.len() as i64);
        seen.pods = believed.pods;
        let mut want = desired::policy::policy(&self.node_name, &seen.pods, &seen.namespaces, &seen.policies);
        desired::pod_trust::hold_contested(&mut want, &believed.contested, &obs.local.pod_cidrs);
        want.deny_log = self.cfg.deny_log;
        let computed = started.elapsed();
        let selecting: HashSet<&str> = want.chains.values().map(|c| c.policy.as_str()).collect();
        self.metrics.network_policies.set(selecting.len() as i64);
        let namespaces = desired::policy::policy_namespaces(&seen.policies);
        if table.last().is_some() {
            // weft wrote the table, so its pending rules are in place: list a namespace's
            // first policy before writing its rules, so a pod created
            // meanwhile starts pending instead of open.
            list_policy_namespaces(&self.cfg, &namespaces)?;
        }
        let change = table.sync(want, check).await?;
        tracing::debug!(
            pods = seen.pods.len(),
            compute_us = computed.as_micros() as u64,
            sync_us = (started.elapsed() - computed).as_micros() as u64,
            ?change,
            ?check,
            "policy pass"
        );
        self.metrics.kernel_writes("policy", change.writes());
        // Policy chains (and so their counters) change only with rules or the whole table.
        if let (PolicyChange::Rules(_) | PolicyChange::Table, Some(written)) = (change, table.last()) {
            self.metrics.set_policy_counters(written.chains.iter().map(|(name, c)| {
                (name.clone(), PolicyLabel { direction: c.direction.to_string(), policy: c.policy.clone() })
            }));
        }
        // The table holds pending pods closed: only now may the plugin make some.
        list_policy_namespaces(&self.cfg, &namespaces)?;
        let node = self.node_name.as_str();
        let local_ips = seen.pods.iter().filter(|p| p.node == node).flat_map(|p| p.ips.iter().copied()).collect();
        if check != nft::Check::No || self.pending.waiting > 0 || local_ips != self.pending.local_ips {
            let pods = &seen.pods;
            let found = release_pending(&self.nl, |ips| desired::policy::knows_local_pod(node, pods, ips)).await?;
            self.metrics.kernel_writes("link_group", found.released);
            self.metrics.policy_pending_interfaces.set(found.waiting as i64);
            self.pending = PendingScan { local_ips, waiting: found.waiting };
        }
        Ok(())
    }

    async fn apply_kernel(
        &self,
        d: &Desired,
        underlay_ifindex: u32,
        only: Option<&Touched>,
    ) -> Result<(), kernel::KernelError> {
        let (metrics, k) = (&self.metrics, &d.kernel);
        metrics.kernel_writes("sysctl", kernel::ensure_forwarding()?);
        let applied = kernel::sync(&self.nl, k, underlay_ifindex, &self.shared.mirror, only).await?;
        for (kind, n) in &applied.writes {
            metrics.kernel_writes(kind, *n);
        }
        let offload = match &k.vxlan {
            // An ioctl in this process's namespace, which is the node's.
            Some(vx) => match kernel::set_tx_checksum_offload(vx.tx_checksum_offload) {
                Ok(changed) => {
                    metrics.kernel_writes("offload", usize::from(changed));
                    i64::from(vx.tx_checksum_offload)
                }
                Err(e) => {
                    // Not worth a retry: the device works either way.
                    metrics.error("kernel");
                    tracing::warn!("{e}");
                    -1
                }
            },
            None => -1,
        };
        if applied.changes > 0 {
            tracing::info!(node = %self.node_name, changes = applied.changes, routes = applied.routes, "programmed peers");
        }
        for _ in &applied.errors {
            // Already logged per object.
            metrics.error("kernel");
        }
        metrics.routes.set(applied.routes as i64);
        metrics.neighbours.set(applied.neighbours as i64);
        metrics.fdb_entries.set(applied.fdb as i64);
        metrics.tx_checksum_offload.set(offload);
        for b in [Backend::Routes, Backend::Vxlan] {
            let n = k.peer_backends.values().filter(|pb| **pb == b).count();
            metrics.peers.get_or_create(&BackendLabel { backend: b.as_str().to_string() }).set(n as i64);
        }
        // The rest of the kernel state is in place; the failed entries are retried.
        match applied.errors.first() {
            None => Ok(()),
            Some(first) => Err(kernel::KernelError::Entries { failed: applied.errors.len(), first: first.clone() }),
        }
    }
}

/// Writes the namespaces with isolating policies for the plugin, if they changed.
fn list_policy_namespaces(cfg: &Config, namespaces: &PolicyNamespaces) -> Result<(), PolicyError> {
    if namespaces.write_if_changed(&desired::files::policy_namespaces_path(cfg))? {
        // Counts only: a cluster may have thousands of namespaces.
        tracing::info!(
            ingress = namespaces.ingress.len(),
            egress = namespaces.egress.len(),
            "namespaces with NetworkPolicies listed for the plugin"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(node: &str, field: &'static str, value: &str) -> Rejected {
        Rejected { node: node.into(), field, value: value.into(), reason: "bad".into() }
    }

    #[test]
    fn each_refusal_is_reported_once_while_it_lasts() {
        let mut r = Refusals::default();
        let a = rejected("n2", "weft.dev/vtep-mac", "ff:ff:ff:ff:ff:ff");
        let b = rejected("n3", "spec.podCIDRs", "0.0.0.0/0");
        assert_eq!(r.fresh(&[a.clone(), a.clone()]).len(), 1, "a duplicate within one pass counts once");
        assert!(r.fresh(std::slice::from_ref(&a)).is_empty(), "reported in the last pass");
        assert_eq!(r.fresh(&[a.clone(), b.clone()]), vec![&b]);
        // Gone for a pass, then back: reported again.
        assert!(r.fresh(std::slice::from_ref(&b)).is_empty());
        assert_eq!(r.fresh(&[a.clone(), b.clone()]), vec![&a]);
        // Another value of the same field is another refusal.
        let a2 = rejected("n2", "weft.dev/vtep-mac", "00:00:00:00:00:00");
        assert_eq!(r.fresh(&[a, b, a2.clone()]), vec![&a2]);
    }

    #[test]
    fn only_changed_nodes_are_parsed_again() {
        let object = |name: &str, cidr: &str| -> Arc<WatchedNode> {
            let n = serde_json::json!({"metadata": {"name": name}, "spec": {"podCIDRs": [cidr]}});
            Arc::new(serde_json::from_value(n).expect("a Node"))
        };
        let cluster: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().expect("valid")];
        let (n1, n2) = (object("n1", "10.244.1.0/24"), object("n2", "10.0.0.0/24"));
        let mut views = Views::default();
        let (first, rejected, changes) = views.update(&[n1.clone(), n2.clone()], &cluster);
        assert_eq!(rejected.len(), 1, "n2's CIDR is outside the cluster");
        let names = |c: &[NodeChange]| c.iter().map(|(n, v)| (n.clone(), v.is_some())).collect::<Vec<_>>();
        assert_eq!(names(&changes), [("n1".into(), true), ("n2".into(), true)]);
        let (again, rejected_again, changes) = views.update(&[n1.clone(), n2.clone()], &cluster);
        assert!(Arc::ptr_eq(&first[0], &again[0]) && Arc::ptr_eq(&first[1], &again[1]), "reused");
        assert_eq!(rejected_again, rejected, "refusals are kept with their view");
        assert!(changes.is_empty(), "nothing changed");
        // n2 changed: a new object from the watch.
        let (changed, rejected, changes) = views.update(&[n1.clone(), object("n2", "10.244.2.0/24")], &cluster);
        assert!(Arc::ptr_eq(&first[0], &changed[0]));
        assert_eq!(changed[1].pod_cidrs, ["10.244.2.0/24".parse::<IpNetwork>().expect("valid")]);
        assert!(rejected.is_empty());
        assert_eq!(names(&changes), [("n2".into(), true)]);
        // n2 deleted.
        let (left, _, changes) = views.update(std::slice::from_ref(&n1), &cluster);
        assert_eq!(left.len(), 1);
        assert_eq!(names(&changes), [("n2".into(), false)]);
        assert_eq!(views.by_name.len(), 1);
    }

    #[test]
    fn backoff_doubles_from_100ms_to_30s_with_jitter() {
        let ms = Duration::from_millis;
        assert_eq!(backoff(1, 1.0), ms(100));
        assert_eq!(backoff(2, 1.0), ms(200));
        assert_eq!(backoff(4, 1.0), ms(800));
        assert_eq!(backoff(9, 1.0), Duration::from_secs(25) + ms(600));
        assert_eq!(backoff(10, 1.0), Duration::from_secs(30), "capped");
        assert_eq!(backoff(1000, 1.0), Duration::from_secs(30), "no overflow");
        assert_eq!(backoff(1, 0.0), ms(50), "jitter takes off at most half");
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn unready_after_consecutive_failures_and_ready_after_one_good_pass() {
        let mut r = Readiness::default();
        assert_eq!(r.record(true), Some(true));
        for _ in 1..UNREADY_AFTER_FAILED_PASSES {
            assert_eq!(r.record(false), None, "a few failures do not flap readiness");
        }
        assert_eq!(r.record(false), Some(false));
        assert_eq!(r.record(false), Some(false));
        assert_eq!(r.failures(), UNREADY_AFTER_FAILED_PASSES + 1);
        assert_eq!(r.record(true), Some(true));
        assert_eq!(r.failures(), 0);
        assert_eq!(r.record(false), None, "the count starts again");
    }

    #[test]
    fn passes_that_may_follow_outside_changes_check_the_kernel() {
        let all = [Wakeup::Start, Wakeup::Node, Wakeup::Drift, Wakeup::Resync, Wakeup::Retry, Wakeup::Policy];
        let labels: HashSet<&str> = all.iter().map(|w| w.label()).collect();
        assert_eq!(labels.len(), all.len(), "one label each");
        let checking: Vec<Wakeup> = all.into_iter().filter(|w| w.checks_kernel()).collect();
        assert_eq!(checking, [Wakeup::Start, Wakeup::Resync], "drift passes trust the notifications");
    }

    #[test]
    fn failures_are_labelled_by_output() {
        let f = Failure::from(UnderlayError::NoSuchInterface("eth9".into()));
        assert_eq!(f.output(), "observe");
        assert!(f.to_string().contains("eth9"));
        let k = Failure::from(kernel::KernelError::Entries { failed: 2, first: "route: EINVAL".into() });
        assert_eq!(k.output(), "kernel");
    }
}
