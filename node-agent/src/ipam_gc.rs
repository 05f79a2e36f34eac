//! IPAM garbage collection. containerd never calls CNI GC, so an address
//! whose DEL never ran (a node crash mid-teardown, a plugin killed at the
//! wrong instant) would stay reserved forever. Periodically the agent asks
//! the runtime for the node's pod sandboxes and frees reservations of
//! containers it no longer knows, using the plugin's own GC code. A grace
//! period spares ADDs in flight, whose address is reserved before the
//! runtime lists their sandbox. When the runtime cannot be asked, or does
//! not report itself ready (restarting, still loading its state), nothing
//! is freed.

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
    let mut suspects = HashSet::new();
    loop {
        tick.tick().await;
        match gc_once(&cfg, &metrics, &mut suspects).await {
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

/// What one pass keeps: every attachment except those the runtime did not
/// know now nor in the previous pass (`suspects`, updated here to the
/// attachments unknown now). An empty sandbox list while attachments exist
/// keeps everything and clears the suspects.
pub fn keep(
    reserved: &[Attachment],
    sandboxes: &HashSet<String>,
    suspects: &mut HashSet<Attachment>,
) -> HashSet<Attachment> {
    if sandboxes.is_empty() && !reserved.is_empty() {
        suspects.clear();
        return reserved.iter().cloned().collect();
    }
    let unknown: HashSet<Attachment> =
        reserved.iter().filter(|a| !sandboxes.contains(&a.container_id)).cloned().collect();
    let keep = reserved.iter().filter(|a| !(unknown.contains(*a) && suspects.contains(*a))).cloned().collect();
    *suspects = unknown;
    keep
}

/// One pass; returns how many addresses were freed. `suspects` carries the
/// attachments unknown to the runtime from one pass to the next.
pub async fn gc_once(cfg: &Config, metrics: &Metrics, suspects: &mut HashSet<Attachment>) -> Result<usize, GcError> {
    let Ok(node) = NodeConfig::load(&node_config_path(cfg)) else {
        return Ok(0); // node not configured yet: the plugin has allocated nothing
    };
    let sandboxes = crate::cri::sandbox_ids(&cfg.cri_socket).await?;
    let dir = cfg.run_dir.join("ipam");
    let subnets = node.subnets()?;
    let grace = cfg.ipam_gc_grace;
    let mut previous = std::mem::take(suspects);
    let (freed, usage, unknown) = tokio::task::spawn_blocking(move || {
        let alloc = Allocator::new(DiskStore::open(&dir, NETWORK)?, subnets)?;
        let valid = keep(&alloc.attachments()?, &sandboxes, &mut previous);
        let freed = alloc.gc_older_than(&valid, grace)?;
        let usage = alloc.usage()?;
        Ok::<_, IpamError>((freed, usage, previous))
    })
    .await??;
    *suspects = unknown;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn att(id: &str) -> Attachment {
        Attachment { container_id: id.into(), ifname: "eth0".into() }
    }

    fn ids(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn kept(k: &HashSet<Attachment>) -> Vec<String> {
        let mut v: Vec<String> = k.iter().map(|a| a.container_id.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn an_attachment_is_freed_only_when_unknown_in_two_consecutive_passes() {
        let reserved = [att("a"), att("b"), att("c")];
        let mut suspects = HashSet::new();
        // Pass 1: "c" unknown for the first time: kept.
        assert_eq!(kept(&keep(&reserved, &ids(&["a", "b"]), &mut suspects)), ["a", "b", "c"]);
        // Pass 2: "c" unknown again: freed; "b" unknown for the first time: kept.
        assert_eq!(kept(&keep(&reserved, &ids(&["a"]), &mut suspects)), ["a", "b"]);
        // Pass 3: "b" is back (the runtime had not loaded it yet): kept, and no longer suspect.
        assert_eq!(kept(&keep(&reserved, &ids(&["a", "b"]), &mut suspects)), ["a", "b"]);
        assert!(kept(&keep(&reserved, &ids(&["a", "c"]), &mut suspects)).contains(&"b".to_string()));
    }

    #[test]
    fn an_empty_sandbox_list_frees_nothing_and_restarts_the_count() {
        let reserved = [att("a"), att("b")];
        let mut suspects = HashSet::new();
        assert_eq!(kept(&keep(&reserved, &ids(&["a"]), &mut suspects)), ["a", "b"]);
        // A runtime restarting answers with nothing: everything stays.
        assert_eq!(kept(&keep(&reserved, &ids(&[]), &mut suspects)), ["a", "b"]);
        assert_eq!(kept(&keep(&reserved, &ids(&[]), &mut suspects)), ["a", "b"]);
        // Back: "b" must be unknown twice more before it goes.
        assert_eq!(kept(&keep(&reserved, &ids(&["a"]), &mut suspects)), ["a", "b"]);
        assert_eq!(kept(&keep(&reserved, &ids(&["a"]), &mut suspects)), ["a"]);
        // Nothing reserved, nothing running: nothing to keep.
        assert!(keep(&[], &ids(&[]), &mut suspects).is_empty());
    }
}
