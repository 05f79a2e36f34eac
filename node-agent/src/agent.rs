//! `weft-agent run`: schedules passes and reports them. Each pass observes
//! (the Node watch cache, the underlay), computes the desired state
//! (`desired::compute`) and applies every output (`apply::*`).
//!
//! Woken by any Node event (coalesced) or by the resync tick. Guarantees:
//! - nothing is programmed before the own node has a podCIDR (not ready);
//! - node.json and the conflist are written only once the node is known;
//! - when the API server is unreachable the cache keeps the last known nodes,
//!   so the kernel keeps its last programmed state;
//! - SIGTERM stops the loop and leaves the data plane in place.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use libweft::netlink::Netlink;

use crate::apply::nftables::{NftError, Nftables};
use crate::apply::{api, files, kernel};
use crate::config::{Backend, Config};
use crate::desired::{self, Desired, vtep_mac_for};
use crate::metrics::{BackendLabel, FieldLabel, Metrics};
use crate::observe::underlay::{self, UnderlayError};
use crate::observe::watch::{self, Trigger};
use crate::observe::{Observation, kernel as observe_kernel};
use crate::wire::{NodeView, Rejected, WatchedNode};

/// Shared with the HTTP endpoints.
#[derive(Default)]
pub struct Health {
    /// Set after the first complete sync.
    pub ready: AtomicBool,
    /// Unix seconds of the last loop iteration.
    pub last_loop: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Why a pass did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("find the underlay: {0}")]
    Underlay(#[from] UnderlayError),
    #[error("kernel: {0}")]
    Kernel(#[from] kernel::KernelError),
    #[error("nftables: {0}")]
    Nftables(#[from] NftError),
    #[error("CNI files: {0}")]
    Files(#[from] files::FilesError),
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
    refusals: Refusals,
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
    let mut agent = Agent {
        vtep_mac: vtep_mac_for(&node_name),
        nodes_api: Api::all(client),
        nl: Netlink::connect()?,
        store: store.clone(),
        nft: Nftables::default(),
        refusals: Refusals::default(),
        metrics: metrics.clone(),
        node_name: node_name.clone(),
        cfg: cfg.clone(),
    };
    let mut tick = tokio::time::interval(cfg.resync_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    tracing::info!(node = %node_name, backend = cfg.backend.as_str(), "waiting for the Node list");
    tokio::select! {
        r = store.wait_until_ready() => r?,
        _ = term.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    }

    // The first pass and every resync tick also re-apply what is only
    // compared against the last apply otherwise (the nftables table).
    let mut resync = true;
    loop {
        health.last_loop.store(now_secs(), Ordering::Relaxed);
        let started = Instant::now();
        let event_at = trigger.take_oldest();
        match agent.pass(resync).await {
            Ok(true) => {
                if !health.ready.swap(true, Ordering::Relaxed) {
                    tracing::info!(node = %node_name, elapsed_ms = started.elapsed().as_millis() as u64, "first sync complete: ready");
                }
                metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
                if let Some(at) = event_at {
                    metrics.event_to_programmed_seconds.observe(at.elapsed().as_secs_f64());
                }
            }
            Ok(false) => {}
            Err(e) => {
                metrics.error("reconcile");
                tracing::warn!(node = %node_name, "sync failed, retrying at the next event or tick: {e}");
            }
        }
        resync = tokio::select! {
            _ = trigger.wait() => false,
            _ = tick.tick() => true,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("SIGTERM: leaving the data plane in place");
    Ok(())
}

impl Agent {
    /// Observe: the Node views (reporting new refusals), the own Node and
    /// the underlay. `Ok(None)`: not ready to program yet (own node unknown
    /// or without podCIDR).
    async fn observe(&mut self) -> Result<Option<(Observation, Arc<WatchedNode>)>, PassError> {
        let objects = self.store.state();
        self.metrics.nodes.set(objects.len() as i64);
        let mut rejected = Vec::new();
        let nodes: Vec<NodeView> =
            objects.iter().map(|n| NodeView::from_node(n, &self.cfg.cluster_cidrs, &mut rejected)).collect();
        for r in self.refusals.fresh(&rejected) {
            self.metrics.rejected_annotations.get_or_create(&FieldLabel { field: r.field.to_string() }).inc();
            tracing::warn!(node = %r.node, field = r.field, value = %r.value, "ignored invalid value: {}", r.reason);
        }
        let node_name = self.node_name.as_str();
        let Some(own_object) = objects.iter().find(|n| n.metadata.name.as_deref() == Some(node_name)) else {
            tracing::warn!(node = %node_name, "own Node not found in the API (is NODE_NAME right?)");
            return Ok(None);
        };
        let Some(local) = nodes.iter().find(|n| n.name == node_name).cloned() else { return Ok(None) };
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
        Ok(Some((obs, own_object.clone())))
    }

    /// One pass. `Ok(false)`: not ready to program yet.
    async fn pass(&mut self, resync: bool) -> Result<bool, PassError> {
        let Some((obs, own_object)) = self.observe().await? else { return Ok(false) };
        let d = desired::compute(&self.cfg, &obs);
        for (peer, why) in &d.kernel.skipped {
            tracing::debug!(peer = %peer, "not programmed: {why}");
        }
        self.publish(&own_object, &d).await;
        self.apply_kernel(&d, obs.underlay.ifindex).await?;
        self.nft.sync(&self.cfg, &d.nft, resync).await?;
        // Last: the plugin may now serve pods on this node.
        files::write(&self.cfg, &d.node_config, &d.conflist)?;
        Ok(true)
    }

    /// The own annotations; a failure is counted and retried next pass,
    /// it does not hold up the data plane.
    async fn publish(&self, own: &WatchedNode, d: &Desired) {
        let Some(patch) = api::annotation_patch(&own.weft, &d.annotations) else { return };
        if let Err(e) = api::publish(&self.nodes_api, &self.node_name, &patch).await {
            self.metrics.error("publish");
            tracing::warn!(node = %self.node_name, "cannot publish annotations: {e}");
        }
    }

    async fn apply_kernel(&self, d: &Desired, underlay_ifindex: u32) -> Result<(), kernel::KernelError> {
        let (metrics, k) = (&self.metrics, &d.kernel);
        kernel::ensure_forwarding()?;
        let applied = kernel::sync(&self.nl, k, underlay_ifindex).await?;
        let offload = match &k.vxlan {
            // An ioctl in this process's namespace, which is the node's.
            Some(vx) => match kernel::set_tx_checksum_offload(vx.tx_checksum_offload) {
                Ok(_) => i64::from(vx.tx_checksum_offload),
                Err(e) => {
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
            // Already logged per object; the pass still counts as complete.
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
        Ok(())
    }
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
}
