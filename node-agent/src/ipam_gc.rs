//! IPAM garbage collection. containerd never calls CNI GC, so an address
//! whose DEL never ran (a node crash mid-teardown, a plugin killed at the
//! wrong instant) would stay reserved forever. Periodically the agent asks
//! the runtime for the node's pod sandboxes and frees reservations of
//! containers it no longer knows, using the plugin's own GC code. A grace
//! period spares ADDs in flight, whose address is reserved before the
//! runtime lists their sandbox. When the runtime cannot be asked, nothing is
//! freed.

use std::collections::HashSet;
use std::sync::Arc;

use libweft::cni::SubnetsError;
use libweft::ipam::{Allocator, Attachment, DiskStore, IpamError};
use libweft::node_config::NodeConfig;

use crate::config::Config;
use crate::cri::CriError;
use crate::desired::files::node_config_path;
use crate::metrics::{Metrics, SubnetLabel};

/// The plugin's network name (the conflist's `name`).
pub const NETWORK: &str = "weft";

/// Runs GC every `ipam_gc_period` forever.
pub async fn run(cfg: Config, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(cfg.ipam_gc_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match gc_once(&cfg, &metrics).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(freed = n, "IPAM GC reclaimed leaked addresses"),
            Err(e) => {
                metrics.error("ipam_gc");
                tracing::warn!("IPAM GC skipped: {e}");
            }
        }
    }
}

/// Why a GC pass was skipped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("node.json: {0}")]
    Subnets(#[from] SubnetsError),
    #[error("IPAM store: {0}")]
    Ipam(#[from] IpamError),
    #[error("IPAM GC task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One pass; returns how many addresses were freed.
pub async fn gc_once(cfg: &Config, metrics: &Metrics) -> Result<usize, GcError> {
    let Ok(node) = NodeConfig::load(&node_config_path(cfg)) else {
        return Ok(0); // node not configured yet: the plugin has allocated nothing
    };
    let sandboxes = crate::cri::sandbox_ids(&cfg.cri_socket).await?;
    let dir = cfg.run_dir.join("ipam");
    let subnets = node.subnets()?;
    let grace = cfg.ipam_gc_grace;
    let (freed, usage) = tokio::task::spawn_blocking(move || {
        let alloc = Allocator::new(DiskStore::open(&dir, NETWORK)?, subnets)?;
        let valid: HashSet<Attachment> =
            alloc.attachments()?.into_iter().filter(|a| sandboxes.contains(&a.container_id)).collect();
        let freed = alloc.gc_older_than(&valid, grace)?;
        let usage = alloc.usage()?;
        Ok::<_, IpamError>((freed, usage))
    })
    .await??;
    for u in usage {
        let label = SubnetLabel { subnet: u.subnet.to_string() };
        metrics.ipam_in_use.get_or_create(&label).set(u.used as f64);
        metrics.ipam_capacity.get_or_create(&label).set(u.capacity as f64);
    }
    metrics.ipam_gc_freed.inc_by(freed.len() as u64);
    if !freed.is_empty() {
        tracing::info!(addresses = ?freed, "freed addresses of pods the runtime no longer knows");
    }
    Ok(freed.len())
}
