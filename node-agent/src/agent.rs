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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use libweft::netlink::Netlink;

use crate::apply::fastpath::{self as apply_fastpath, FastpathApplyError, FastpathOutput};
use crate::apply::policy::{self as apply_policy, PolicyOutputs};
use crate::apply::policy_table::{PolicyChange, PolicyError, PolicySync};
use crate::apply::verdicts::VerdictWriter;
use crate::apply::weft_table::{self as nft, NftChange, NftError, Nftables};
use crate::apply::{api, files, kernel};
use crate::config::{Config, Dataplane};
use crate::desired::incremental::{Incremental, NodeChange, Scope};
use crate::desired::liveness::Liveness;
use crate::desired::network_policy::{DesiredPolicy, PolicyInputs};
use crate::desired::verdicts::ComputedAt;
use crate::desired::{self, network_policy, verdicts, vtep_mac_for};
use crate::health::{Health, Readiness, now_secs};
use crate::metrics::{FieldLabel, Metrics};
use crate::observe::policy_watch::{self, Freshness, PolicyCache};
use crate::observe::underlay::{self, UnderlayError};
use crate::observe::watch::{self, NodeStore, Trigger};
use crate::observe::{Observation, events, fastpath as observe_fastpath, kernel as observe_kernel};
use crate::reported::{Doubts, Refusals};
use crate::wire::{NodeView, Rejected, WatchedNode};

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
    #[error("BPF fast path: {0}")]
    Fastpath(#[from] FastpathApplyError),
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
            Failure::Fastpath(_) => "fastpath",
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

/// Everything one pass needs.
struct Agent {
    cfg: Config,
    node_name: String,
    store: NodeStore,
    nodes_api: Api<Node>,
    nl: Netlink,
    vtep_mac: [u8; 6],
    metrics: Arc<Metrics>,
    nft: Nftables,
    /// The desired state of the last pass, updated for the Nodes that changed.
    desired: Incremental,
    /// The kernel mirror and what else the notification readers share.
    shared: Arc<events::Shared>,
    refusals: Refusals,
    /// Peers refused by the desired state (claims on what another node holds).
    peer_refusals: Refusals,
    /// NetworkPolicy: the watches' views and the policy outputs; `None` when disabled.
    policy: Option<(PolicyCache, PolicyOutputs)>,
    /// Writes policies' acceptance to the API (when this agent holds its Lease).
    verdicts: Option<VerdictWriter>,
    /// The generation of the set of Node names, which the writer's bid
    /// depends on, as of the last Node snapshot.
    names_generation: u64,
    /// The inputs the writer's bid and verdicts were last computed from.
    bid_at: ComputedAt,
    verdicts_at: ComputedAt,
    /// The inputs the policy state was last computed from, and the Nodes'
    /// pod CIDRs' generation (one of them) as of the last Node snapshot.
    policy_at: ComputedAt<PolicyInputs>,
    pod_cidrs_generation: u64,
    /// Pod addresses not believed for NetworkPolicy (logged when new).
    pod_doubts: Doubts,
    /// Whether the last pass got as far as syncing the policy table.
    policy_checked: bool,
    /// The policy table's liveness gate.
    liveness: Liveness,
    /// How current the policy views this pass read were.
    seen: Freshness,
    /// The BPF fast path's programs (`dataplane: bpf`), loaded by the
    /// first pass that applies it.
    fastpath: Option<FastpathOutput>,
}

impl Agent {
    /// Starts the watches and the kernel's notification readers; a failed
    /// subscription costs only drift repair between resyncs. With
    /// NetworkPolicy disabled, removes what it left.
    async fn start(
        cfg: Config,
        node_name: String,
        client: Client,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Agent, Wakers)> {
        let node = Arc::new(Trigger::default());
        let store = watch::spawn(client.clone(), &node_name, &cfg.cluster_cidrs, node.clone(), metrics.clone());
        let nl = Netlink::connect()?;
        let drift = Arc::new(Trigger::default());
        let shared = Arc::new(events::Shared::default());
        let (nft, policy_sync) = match events::spawn(nl.clone(), drift.clone(), metrics.clone(), shared.clone()) {
            Ok(()) => (
                Nftables::with_writers(shared.nft_writers.clone()),
                PolicySync::with_writers(shared.nft_writers.clone()),
            ),
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
            let cache = policy_watch::spawn(
                client.clone(),
                policy_trigger.clone(),
                metrics.clone(),
                cfg.cluster_network_policy,
            );
            Some((cache, PolicyOutputs::new(policy_sync)))
        } else {
            apply_policy::disable(&cfg, &nl, &metrics).await;
            None
        };
        let verdicts = (policy.is_some() && cfg.report_status)
            .then(|| VerdictWriter::spawn(client.clone(), &node_name, metrics.clone()));
        if cfg.dataplane == Dataplane::Nftables {
            remove_fastpath(&cfg, &nl, &metrics).await;
        }
        let agent = Agent {
            fastpath: None,
            policy,
            verdicts,
            names_generation: 0,
            bid_at: ComputedAt::default(),
            verdicts_at: ComputedAt::default(),
            policy_at: ComputedAt::default(),
            pod_cidrs_generation: 0,
            policy_checked: false,
            liveness: Liveness::new(cfg.policy_liveness),
            seen: Freshness::default(),
            vtep_mac: vtep_mac_for(&node_name),
            nodes_api: Api::all(client),
            nl,
            store,
            nft,
            desired: Incremental::default(),
            shared,
            refusals: Refusals::default(),
            peer_refusals: Refusals::default(),
            pod_doubts: Doubts::default(),
            metrics,
            node_name,
            cfg,
        };
        Ok((agent, Wakers { node, drift, policy: policy_trigger }))
    }
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(
    cfg: Config,
    node_name: String,
    client: Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let (mut agent, wakers) = Agent::start(cfg.clone(), node_name.clone(), client, metrics.clone()).await?;
    // The first tick one period after the first pass, which checks everything anyway.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cfg.resync_period, cfg.resync_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut liveness_tick = tokio::time::interval(agent.liveness.tick());
    liveness_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    tracing::info!(node = %node_name, backend = cfg.backend.as_str(), "waiting for the Node list");
    tokio::select! {
        r = agent.store.wait_until_listed() => r?,
        _ = term.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    }

    let mut wakeup = Wakeup::Start;
    let mut readiness = Readiness::default();
    loop {
        health.last_loop.store(now_secs(), Ordering::Relaxed);
        let started = Instant::now();
        let event_at = wakers.node.take_oldest();
        metrics.sync_pass(wakeup.label());
        let retry_at = match agent.checked_pass(wakeup).await {
            Outcome::Waiting => None,
            Outcome::Done(failures) => {
                let ok = report(&metrics, &node_name, &failures, started, event_at);
                readiness.report(&health, ok, &node_name, started.elapsed()).map(|d| tokio::time::Instant::now() + d)
            }
        };
        agent.renew_gate().await;
        // The gate is renewed between passes too: an idle agent runs none.
        let next = loop {
            tokio::select! {
                next = wakers.next(&mut tick, retry_at, &mut term) => break next,
                _ = liveness_tick.tick() => agent.renew_gate().await,
            }
        };
        match next {
            Some(w) => wakeup = w,
            None => break,
        }
    }
    tracing::info!("SIGTERM: leaving the data plane in place");
    Ok(())
}

/// With `dataplane: nftables`, takes away what a `bpf` run left: weft's
/// filters and the pins. Failing costs only speed: the program forwards
/// nothing but flows netfilter accepted.
async fn remove_fastpath(cfg: &Config, nl: &Netlink, metrics: &Metrics) {
    let links = match nl.links().await {
        Ok(links) => links.into_iter().map(|l| l.index),
        Err(e) => {
            metrics.sync_error("fastpath");
            tracing::warn!("dataplane nftables, but listing links to remove the BPF fast path failed: {e}");
            return;
        }
    };
    match apply_fastpath::remove(links, &cfg.bpf_pin_dir) {
        Ok(0) => {}
        Ok(n) => tracing::info!(filters = n, "dataplane nftables: removed the BPF fast path"),
        Err(e) => {
            metrics.sync_error("fastpath");
            tracing::warn!("dataplane nftables, but removing the BPF fast path failed: {e}");
        }
    }
}

/// Gives the allocator's free pages back to the kernel after a full pass,
/// which drops and rebuilds the desired state of every Node: glibc keeps
/// freed memory below the top of its heap resident otherwise, and the
/// agent's RSS would stay at the pass's peak.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Counts and logs the failures of a finished pass, and the timing of a
/// good one; returns whether it was good.
fn report(metrics: &Metrics, node: &str, failures: &[Failure], started: Instant, event_at: Option<Instant>) -> bool {
    for f in failures {
        metrics.sync_error(f.output());
        tracing::warn!(node = %node, "{f}");
    }
    if !failures.is_empty() {
        metrics.error("reconcile");
        return false;
    }
    metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
    metrics.last_successful_sync.set(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
    if let Some(at) = event_at {
        metrics.event_to_programmed_seconds.observe(at.elapsed().as_secs_f64());
    }
    true
}

/// The triggers that wake the loop besides the tick and the retry timer.
struct Wakers {
    node: Arc<Trigger>,
    drift: Arc<Trigger>,
    policy: Arc<Trigger>,
}

impl Wakers {
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
    /// One pass, with what it must check besides its inputs: everything at
    /// start and resync, a table whose notifications said someone else
    /// changed it. A pass that stopped before a table keeps that news for
    /// the next one.
    async fn checked_pass(&mut self, wakeup: Wakeup) -> Outcome {
        if wakeup.checks_kernel() {
            self.shared.mirror.mark_stale();
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
        let check = check_of(&self.shared.nft_changed);
        let policy_check = check_of(&self.shared.policy_changed);
        let outcome = self.pass(check, policy_check, wakeup).await;
        let stopped_early = match &outcome {
            Outcome::Waiting => true,
            Outcome::Done(failures) => failures.iter().any(|f| matches!(f, Failure::Observe(_))),
        };
        if check == nft::Check::Changed && stopped_early {
            self.shared.nft_changed.store(true, Ordering::Relaxed);
        }
        if policy_check == nft::Check::Changed && !self.policy_checked {
            self.shared.policy_changed.store(true, Ordering::Relaxed);
        }
        outcome
    }

    /// Observe: the Node views (reporting new refusals), the own Node and
    /// the underlay (the policy views are read by [`Agent::compute_policy`]).
    /// `Ok(None)`: not ready to program yet (own node unknown or without podCIDR).
    async fn observe(&mut self) -> Result<Option<(Observation, Arc<WatchedNode>, Vec<NodeChange>)>, UnderlayError> {
        let snapshot = self.store.take();
        self.metrics.nodes.set(snapshot.views.len() as i64);
        self.names_generation = snapshot.names_generation;
        self.pod_cidrs_generation = snapshot.pod_cidrs_generation;
        let (nodes, rejected, changes) = (snapshot.views, snapshot.rejected, snapshot.changes);
        for r in self.refusals.fresh(&rejected) {
            self.metrics.rejected_annotations.get_or_create(&FieldLabel { field: r.field.to_string() }).inc();
            tracing::warn!(node = %r.node, field = r.field, value = %r.value, "ignored invalid value: {}", r.reason);
        }
        let node_name = self.node_name.as_str();
        let Some(own_object) = snapshot.own else {
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
        Ok(Some((obs, own_object, changes)))
    }

    /// One pass: observe, compute, apply every output. A failed output is
    /// reported and does not stop the others, except that the plugin's
    /// files wait for the kernel and the nftables table: they tell the
    /// plugin it may serve pods. `check`, `policy_check`: also compare the
    /// nftables table, the policy table, with weft's last write. `wakeup`:
    /// what woke the loop; a pass for a Node (or policy) event compares
    /// only what changed with the kernel.
    ///
    /// Over 60 lines: the outputs' order is the point, and it reads best in one place.
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
        let routing_computed = started.elapsed();
        let policy = self.compute_policy(&obs, &d.kernel.refused);
        let computed = started.elapsed();
        let policy_compute = computed - routing_computed;
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
        let kernel =
            kernel::apply(&self.nl, &d.kernel, obs.underlay.ifindex, &self.shared.mirror, only, &self.metrics).await;
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
        if let Some(want) = policy {
            failures.extend(self.apply_policy(want, policy_compute, policy_check).await.err().map(Failure::from));
        }
        if self.cfg.dataplane == Dataplane::Bpf {
            failures.extend(self.apply_fastpath(obs.underlay.ifindex, full).await.err().map(Failure::from));
        }
        // Last: the plugin may now serve pods on this node.
        if data_plane_ok && let Err(e) = files::write(&self.cfg, &d.node_config, &d.conflist) {
            failures.push(e.into());
        }
        let computed_all = scope == Scope::All;
        self.desired = desired;
        if computed_all {
            release_freed_memory();
        }
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

    /// The policy part of the desired state, once the watches have listed
    /// everything: `Some(None)` when none of its inputs changed since the
    /// last apply that succeeded (which is then applied again), without
    /// copying the views. Also hands the verdict writer its bid and the
    /// verdicts, when theirs changed.
    fn compute_policy(&mut self, obs: &Observation, refused: &[Rejected]) -> Option<Option<DesiredPolicy>> {
        let Some((cache, outputs)) = &self.policy else { return None };
        // Before the views: what they hold is at least this fresh.
        self.seen = cache.freshness();
        let Some(generation) = cache.generation() else {
            // Not every list is complete: the kernel keeps the last state.
            self.policy_at.forget();
            return None;
        };
        if !outputs.can_reapply() {
            self.policy_at.forget();
        }
        // Handed over, never waited for: the writer has a task of its own.
        // Recomputed only when their inputs changed: both are linear in them.
        if let Some(writer) = &self.verdicts {
            let bid = || verdicts::bids_for_writer(&self.node_name, obs.nodes.iter().map(|n| n.name.as_str()));
            if let Some(bids) = self.bid_at.recompute(self.names_generation, bid) {
                writer.bid(bids);
            }
        }
        let inputs = PolicyInputs::new(&self.cfg, generation, self.pod_cidrs_generation, refused);
        let Some(snapshot) = self.policy_at.recompute(inputs, || cache.snapshot()) else {
            return Some(None);
        };
        let Some(views) = snapshot else {
            // A re-list began since the generation was read.
            self.policy_at.forget();
            return None;
        };
        if let Some(writer) = &self.verdicts
            && let Some(v) = self.verdicts_at.recompute(views.policies_generation, || verdicts::verdicts(&views))
        {
            writer.offer(v);
        }
        self.metrics.policy_computes.inc();
        Some(Some(network_policy::compute(&self.cfg, &obs.local, &obs.nodes, refused, views)))
    }

    /// The BPF fast path, after the tables: it only speeds up flows they
    /// accepted. `check_all`: also look for stale filters on every link.
    async fn apply_fastpath(&mut self, uplink: u32, check_all: bool) -> Result<(), FastpathApplyError> {
        let view = observe_fastpath::observe(&self.nl).await.map_err(FastpathApplyError::Observe)?;
        let want = desired::fastpath::compute(&view, uplink);
        let fastpath = match &mut self.fastpath {
            Some(f) => f,
            None => self.fastpath.insert(FastpathOutput::load(&self.cfg.bpf_pin_dir)?),
        };
        let changes = fastpath.sync(&want, check_all)?;
        self.metrics.kernel_writes("fastpath", changes.total());
        if changes.total() > 0 {
            tracing::info!(
                attached = changes.attached,
                detached = changes.detached,
                pod_addresses = changes.pods,
                "BPF fast path synced"
            );
        }
        Ok(())
    }

    /// The NetworkPolicy outputs, once the watches have listed everything:
    /// `want`, or (`None`) the last state applied again.
    /// `computed`: how long computing its desired state took.
    async fn apply_policy(
        &mut self,
        want: Option<DesiredPolicy>,
        computed: Duration,
        check: nft::Check,
    ) -> Result<(), PolicyError> {
        let Some((_, outputs)) = &mut self.policy else { return Ok(()) };
        self.policy_checked = true;
        let recomputed = want.is_some();
        if let Some(want) = &want {
            self.pod_doubts.report(&want.doubts);
            self.metrics.policy_doubted_pod_addresses.set(want.doubts.len() as i64);
        }
        let now = Instant::now();
        let live_for = self.liveness.open_for_applying(self.seen, now);
        outputs.table().open_gate_for(live_for);
        let applied = match outputs.apply(&self.cfg, &self.nl, &self.metrics, &self.node_name, want, check).await {
            Ok(a) => a,
            Err(e) => {
                self.liveness.failed();
                // Computed again next time, whatever its inputs: a retry redoes it whole.
                self.policy_at.forget();
                return Err(e);
            }
        };
        self.liveness.applied(self.seen);
        if let (PolicyChange::Table, Some(open_for)) = (applied.change, live_for) {
            self.liveness.written(now, open_for);
        }
        tracing::debug!(
            pods = applied.pods,
            recomputed,
            compute_us = computed.as_micros() as u64,
            sync_us = applied.synced.as_micros() as u64,
            change = ?applied.change,
            ?check,
            "policy pass"
        );
        Ok(())
    }
}

impl Agent {
    /// Renews the policy table's liveness gate when it is due and the
    /// views allow it open ([`Liveness`]); reports how long it stays open.
    async fn renew_gate(&mut self) {
        let Some((cache, outputs)) = &mut self.policy else { return };
        let now = Instant::now();
        let open_for = self.liveness.open_for(cache.freshness(), now);
        self.metrics.policy_liveness_seconds.set(open_for.map_or(0.0, |d| d.as_secs_f64()));
        let Some(open_for) = open_for.filter(|d| self.liveness.due(now, *d)) else { return };
        match outputs.table().renew_gate(open_for).await {
            Ok(true) => self.liveness.written(now, open_for),
            Ok(false) => {}
            Err(e) => {
                self.metrics.sync_error("policy");
                tracing::warn!("renewing the policy table's liveness gate: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

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
        let first = kernel::EntryError {
            what: "route",
            source: libweft::netlink::NetlinkError::InvalidRequest("no such hop".into()),
        };
        let k = Failure::from(kernel::KernelError::Entries { failed: 2, first });
        assert!(k.to_string().contains("route: invalid request: no such hop"), "{k}");
        assert_eq!(k.output(), "kernel");
    }
}
