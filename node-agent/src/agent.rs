//! `weft-agent run`: one loop that turns the Node list into kernel state.
//!
//! Woken by any Node event (coalesced) or by the resync tick, it computes the
//! desired state from the watch cache and applies the difference. Guarantees:
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

use crate::config::{Backend, Config};
use crate::desired::vtep_mac_for;
use crate::metrics::{BackendLabel, FieldLabel, Metrics};
use crate::node_view::NodeView;
use crate::watch::{Trigger, WatchedNode};
use crate::{cniconf, desired, masq, publish, reconcile, underlay, watch};

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

/// Everything one pass needs.
struct Agent {
    cfg: Config,
    node_name: String,
    store: Store<WatchedNode>,
    nodes_api: Api<Node>,
    nl: Netlink,
    vtep_mac: [u8; 6],
    metrics: Arc<Metrics>,
    masq: masq::Masq,
    /// Refused peer values already logged and counted: (node, field, value).
    reported: HashSet<(String, &'static str, String)>,
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
        masq: masq::Masq::default(),
        reported: HashSet::new(),
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
        match agent.sync_once(resync).await {
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
                tracing::warn!(node = %node_name, "sync failed, retrying at the next event or tick: {e:#}");
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
    /// One pass. `Ok(false)`: not ready to program yet (own node unknown or
    /// without podCIDR).
    async fn sync_once(&mut self, resync: bool) -> anyhow::Result<bool> {
        let Agent { cfg, node_name, store, nodes_api, nl, vtep_mac, metrics, masq, reported } = self;
        let (node_name, vtep_mac) = (node_name.as_str(), *vtep_mac);
        let objects = store.state();
        metrics.nodes.set(objects.len() as i64);
        let mut rejected = Vec::new();
        let nodes: Vec<NodeView> =
            objects.iter().map(|n| NodeView::from_node(n, &cfg.cluster_cidrs, &mut rejected)).collect();
        // Each refused value is logged and counted once, not on every pass.
        let mut current = HashSet::new();
        for r in &rejected {
            let key = (r.node.clone(), r.field, r.value.clone());
            if !reported.contains(&key) {
                metrics.rejected_annotations.get_or_create(&FieldLabel { field: r.field.to_string() }).inc();
                tracing::warn!(node = %r.node, field = r.field, value = %r.value, "ignored invalid value: {}", r.reason);
            }
            current.insert(key);
        }
        *reported = current;
        let Some(me) = nodes.iter().find(|n| n.name == node_name) else {
            tracing::warn!(node = %node_name, "own Node not found in the API (is NODE_NAME right?)");
            return Ok(false);
        };
        if me.pod_cidrs.is_empty() {
            tracing::info!(node = %node_name, "waiting for the node's spec.podCIDRs (kube-controller-manager --allocate-node-cidrs)");
            return Ok(false);
        }
        // The underlay is found from the Node's InternalIPs, not from weft's own annotations.
        let own_object = objects.iter().find(|n| n.metadata.name.as_deref() == Some(node_name));
        let internal: Vec<std::net::IpAddr> = own_object.map(|n| n.internal_ips().collect()).unwrap_or_default();
        let underlay =
            underlay::detect(nl, cfg.underlay_interface.as_deref(), &internal).await.map_err(anyhow::Error::msg)?;

        if let Some(obj) = own_object {
            let wanted = publish::wanted(&underlay, vtep_mac, cfg.backend.as_str());
            if let Err(e) = publish::publish(nodes_api, obj, &wanted).await {
                metrics.error("publish");
                tracing::warn!(node = %node_name, "cannot publish annotations: {e}");
            }
        }

        let d = desired::compute(cfg, me, &underlay, vtep_mac, &nodes);
        for (peer, why) in &d.skipped {
            tracing::debug!(peer = %peer, "not programmed: {why}");
        }

        reconcile::ensure_forwarding().map_err(|e| anyhow::anyhow!("enable IP forwarding: {e}"))?;
        let applied = reconcile::sync(nl, &d, underlay.ifindex).await?;
        if let Some(vx) = &d.vxlan {
            // An ioctl in this process's namespace, which is the node's.
            let on = vx.tx_checksum_offload.unwrap_or_else(crate::offload::kernel_default);
            crate::offload::apply(crate::desired::VXLAN_DEV, on);
        }
        if applied.changes > 0 {
            tracing::info!(node = %node_name, changes = applied.changes, routes = applied.routes, "programmed peers");
        }
        for _ in &applied.errors {
            // Already logged per object; the pass still counts as complete.
            metrics.error("kernel");
        }
        metrics.routes.set(applied.routes as i64);
        metrics.neighbours.set(applied.neighbours as i64);
        metrics.fdb_entries.set(applied.fdb as i64);
        metrics.tx_checksum_offload.set(if d.vxlan.is_some() {
            crate::offload::STATE.load(Ordering::Relaxed)
        } else {
            -1
        });
        for b in [Backend::Routes, Backend::Vxlan] {
            let n = d.peer_backends.values().filter(|pb| **pb == b).count();
            metrics.peers.get_or_create(&BackendLabel { backend: b.as_str().to_string() }).set(n as i64);
        }

        let node_ips: Vec<std::net::IpAddr> = nodes.iter().flat_map(|n| [n.ip(false), n.ip(true)]).flatten().collect();
        masq.sync(cfg, &me.pod_cidrs, &node_ips, resync).await.map_err(|e| anyhow::anyhow!("nftables: {e}"))?;

        // Last: the plugin may now serve pods on this node.
        cniconf::write(cfg, &cniconf::node_config(cfg, node_name, &me.pod_cidrs, d.pod_mtu))
            .map_err(anyhow::Error::msg)?;
        Ok(true)
    }
}
