//! IPAM garbage collection. containerd never calls CNI GC, so an address
//! whose DEL never ran (a node crash mid-teardown, a plugin killed at the
//! wrong instant) would stay reserved forever. Periodically the agent frees
//! the reservations whose pod is provably gone, using the plugin's own GC
//! code. An address is freed only when all of these hold:
//!
//! - its reservation is older than the grace period (ADDs in flight reserve
//!   before they create the veth and long before the API shows the pod);
//! - the host veth named after its record's container ID and interface
//!   (libweft's `host_veth_name`) is gone from the node's network namespace:
//!   a live sandbox's namespace holds the other end of the pair, so the
//!   kernel keeps the veth exactly as long as the sandbox lives;
//! - no Pod bound to this node claims the address in `status.podIPs`, in a
//!   complete, fresh list from the API (a consistent read: a streamed
//!   list, or a paginated LIST where the server refuses streaming, both
//!   without a resourceVersion; a pass whose list fails frees nothing);
//! - and the first three held in two consecutive passes.
//!
//! Why not ask the runtime: that needs containerd's socket in the agent,
//! and code execution in the agent (which parses tenant-written objects)
//! would then be root on the node. The kernel's veths and the API's pods
//! are things the agent sees anyway, with no new privilege. The API alone
//! would not do: it lags behind a sandbox whose ADD has just returned, and
//! the veth covers that window; the veth alone would not either if someone
//! removed it by hand, and the pod's claim covers that.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use libweft::cni::SubnetsError;
use libweft::ipam::{Allocator, Attachment, DiskStore, IpamError, SubnetUsage};
use libweft::netlink::{HOST_VETH_PREFIX, Netlink, NetlinkError, host_veth_name};
use libweft::node_config::NodeConfig;

use crate::config::Config;
use crate::desired::files::node_config_path;
use crate::metrics::{Metrics, SubnetLabel};
use crate::observe::list_mode::refuses_streaming;
use crate::observe::policy_watch::POD_PAGE;

/// The plugin's network name (the conflist's `name`).
pub const NETWORK: &str = "weft";

/// How long the API server may take to stream the node's pods.
const STREAM_TIMEOUT_SECONDS: u32 = 60;

/// Runs GC every `ipam_gc_period` forever.
pub async fn run(cfg: Config, client: kube::Client, node: String, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(cfg.ipam_gc_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut suspects = HashSet::new();
    loop {
        tick.tick().await;
        match gc_once(&cfg, &client, &node, &metrics, &mut suspects).await {
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
    #[error("list the node's links: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("list the Pods bound to this node: {0}")]
    Api(#[from] kube::Error),
    #[error("list the Pods bound to this node: the stream ended before the list was complete")]
    ListIncomplete,
    #[error("node.json: {0}")]
    Subnets(#[from] SubnetsError),
    #[error("IPAM store: {0}")]
    Ipam(#[from] IpamError),
    #[error("IPAM GC task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What proves a pod alive in one pass.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Names of weft's host veths in the node's network namespace.
    pub veths: HashSet<String>,
    /// Addresses that Pods bound to this node claim in the API.
    pub claimed: HashSet<IpAddr>,
}

impl Evidence {
    /// The attachment's veth exists, or a Pod claims one of its addresses.
    pub fn proves_alive(&self, att: &Attachment, ips: &[IpAddr]) -> bool {
        self.veths.contains(&host_veth_name(&att.container_id, &att.ifname))
            || ips.iter().any(|ip| self.claimed.contains(ip))
    }
}

/// Names of weft's host veths (by prefix) in the namespace `nl` talks to.
pub async fn observe_host_veths(nl: &Netlink) -> Result<HashSet<String>, NetlinkError> {
    Ok(nl.links().await?.into_iter().map(|l| l.name).filter(|n| n.starts_with(HOST_VETH_PREFIX)).collect())
}

/// Addresses claimed by the Pods bound to `node`, from one complete list:
/// streamed, in pages where the server refuses that (it does not say
/// which it serves, and asking costs a request too: one refused watch
/// per pass is as cheap).
pub async fn observe_claimed_addresses(client: &kube::Client, node: &str) -> Result<HashSet<IpAddr>, GcError> {
    let api: Api<Pod> = Api::all(client.clone());
    let fields = format!("spec.nodeName={node}");
    match streamed_claims(&api, &fields).await {
        // Refused, or forbidden by a ClusterRole older than the streamed
        // list (list on Pods without watch, with NetworkPolicy off).
        Err(GcError::Api(e)) if refuses_streaming(&e) || matches!(&e, kube::Error::Api(s) if s.code == 403) => {
            Ok(paged_claims(&api, &fields).await?)
        }
        claimed => claimed,
    }
}

/// The claims from a streamed list: a watch with `sendInitialEvents`, read
/// up to the bookmark that ends its initial events.
async fn streamed_claims(api: &Api<Pod>, fields: &str) -> Result<HashSet<IpAddr>, GcError> {
    let params = WatchParams::streaming_lists().fields(fields).timeout(STREAM_TIMEOUT_SECONDS);
    // No resourceVersion: a consistent read, as fresh as a LIST without one.
    let mut events = std::pin::pin!(api.watch(&params, "").await?);
    let mut claimed = HashSet::new();
    while let Some(event) = events.try_next().await? {
        match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => claim(&mut claimed, pod),
            WatchEvent::Bookmark(b) if b.metadata.annotations.contains_key(INITIAL_EVENTS_END) => {
                return Ok(claimed);
            }
            WatchEvent::Error(status) => return Err(kube::Error::Api(status).into()),
            WatchEvent::Bookmark(_) | WatchEvent::Deleted(_) => {}
        }
    }
    Err(GcError::ListIncomplete)
}

/// The annotation of the bookmark that ends a streamed list's objects.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// The claims from a paginated LIST, in pages of the policy watch's
/// [`POD_PAGE`]: kube holds a page whole, about 7 MB per pod with a tenant's
/// 1.5 MB of labels, and a tenant can put ~110 pods on a node, so a pass
/// stays near 15 MB for ~55 short requests every `ipam_gc_period` (5 minutes
/// by default). Streamed, a pass is one request and one pod in memory.
async fn paged_claims(api: &Api<Pod>, fields: &str) -> Result<HashSet<IpAddr>, kube::Error> {
    let mut params = ListParams::default().fields(fields).limit(POD_PAGE);
    let mut claimed = HashSet::new();
    loop {
        let page = api.list(&params).await?;
        for pod in page.items {
            claim(&mut claimed, pod);
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(claimed),
        }
    }
}

/// Adds the addresses `pod` claims. Pods that have finished (Succeeded,
/// Failed) no longer hold a sandbox, though the API keeps their
/// addresses: their claim does not count.
fn claim(claimed: &mut HashSet<IpAddr>, pod: Pod) {
    let Some(status) = pod.status else { return };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return;
    }
    let ips = status.pod_ips.into_iter().flatten().map(|p| p.ip).chain(status.pod_ip);
    claimed.extend(ips.filter_map(|ip| ip.parse::<IpAddr>().ok()));
}

/// What one pass keeps: every attachment except those nothing proved alive
/// now nor in the previous pass (`suspects`, updated here to the
/// attachments nothing proved alive now).
pub fn keep(
    reserved: &[(Attachment, Vec<IpAddr>)],
    evidence: &Evidence,
    suspects: &mut HashSet<Attachment>,
) -> HashSet<Attachment> {
    let unproven: HashSet<Attachment> =
        reserved.iter().filter(|(a, ips)| !evidence.proves_alive(a, ips)).map(|(a, _)| a.clone()).collect();
    let keep = reserved
        .iter()
        .map(|(a, _)| a)
        .filter(|a| !(unproven.contains(*a) && suspects.contains(*a)))
        .cloned()
        .collect();
    *suspects = unproven;
    keep
}

/// The outcome of [`sweep`].
#[derive(Debug)]
pub struct Swept {
    /// The addresses freed.
    pub freed: Vec<IpAddr>,
    /// Each subnet's usage afterwards.
    pub usage: Vec<SubnetUsage>,
}

/// Frees, in the store under `dir`, what [`keep`] does not keep and is
/// older than `grace` (blocking file I/O). What it frees is quarantined;
/// quarantines older than `quarantine` end.
pub fn sweep(
    dir: &Path,
    (subnets, quarantine): (Vec<IpNetwork>, std::time::Duration),
    evidence: &Evidence,
    grace: std::time::Duration,
    suspects: &mut HashSet<Attachment>,
) -> Result<Swept, IpamError> {
    let alloc = Allocator::new(DiskStore::open(dir, NETWORK)?, subnets)?.with_quarantine(quarantine);
    let mut reserved = Vec::new();
    for att in alloc.attachments()? {
        let ips = alloc.find(&att)?.into_iter().map(|a| a.ip).collect();
        reserved.push((att, ips));
    }
    let valid = keep(&reserved, evidence, suspects);
    let freed = alloc.gc_older_than(&valid, grace)?;
    Ok(Swept { freed, usage: alloc.usage()? })
}

/// One pass; returns how many addresses were freed. `suspects` carries the
/// attachments nothing proved alive from one pass to the next.
pub async fn gc_once(
    cfg: &Config,
    client: &kube::Client,
    node: &str,
    metrics: &Metrics,
    suspects: &mut HashSet<Attachment>,
) -> Result<usize, GcError> {
    let Ok(node_config) = NodeConfig::load(&node_config_path(cfg)) else {
        return Ok(0); // node not configured yet: the plugin has allocated nothing
    };
    let subnets = node_config.subnets()?;
    // The plugin's own reading, so both end a quarantine at the same time.
    let quarantine = node_config.address_quarantine();
    // Observed before the store is read: a sandbox born after this is
    // younger than the grace period, so it is spared anyway.
    let veths = observe_host_veths(&Netlink::connect()?).await?;
    let claimed = observe_claimed_addresses(client, node).await?;
    let evidence = Evidence { veths, claimed };
    let dir = cfg.run_dir.join("ipam");
    let grace = cfg.ipam_gc_grace;
    let mut previous = std::mem::take(suspects);
    let (swept, unproven) = tokio::task::spawn_blocking(move || {
        let swept = sweep(&dir, (subnets, quarantine), &evidence, grace, &mut previous)?;
        Ok::<_, IpamError>((swept, previous))
    })
    .await??;
    *suspects = unproven;
    for u in swept.usage {
        let label = SubnetLabel { subnet: u.subnet.to_string() };
        metrics.ipam_in_use.get_or_create(&label).set(u.used as f64);
        metrics.ipam_capacity.get_or_create(&label).set(u.capacity as f64);
        metrics.ipam_quarantined.get_or_create(&label).set(u.quarantined as f64);
    }
    metrics.ipam_gc_freed.inc_by(swept.freed.len() as u64);
    if !swept.freed.is_empty() {
        tracing::info!(addresses = ?swept.freed, "freed addresses of pods whose veth and Pod are gone");
    }
    Ok(swept.freed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(id: &str) -> Attachment {
        Attachment { container_id: id.into(), ifname: "eth0".into() }
    }

    /// Attachments "a", "b", … holding 10.244.1.1, 10.244.1.2, ….
    fn reserved(ids: &[&str]) -> Vec<(Attachment, Vec<IpAddr>)> {
        ids.iter().enumerate().map(|(i, id)| (att(id), vec![ip(i)])).collect()
    }

    fn ip(i: usize) -> IpAddr {
        format!("10.244.1.{}", i + 1).parse().unwrap()
    }

    /// Evidence where the veths of `veths` exist and nothing is claimed.
    fn veths(ids: &[&str]) -> Evidence {
        Evidence { veths: ids.iter().map(|id| host_veth_name(id, "eth0")).collect(), claimed: HashSet::new() }
    }

    fn kept(k: &HashSet<Attachment>) -> Vec<String> {
        let mut v: Vec<String> = k.iter().map(|a| a.container_id.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn an_attachment_is_freed_only_when_unproven_in_two_consecutive_passes() {
        let reserved = reserved(&["a", "b", "c"]);
        let mut suspects = HashSet::new();
        // Pass 1: "c" unproven for the first time: kept.
        assert_eq!(kept(&keep(&reserved, &veths(&["a", "b"]), &mut suspects)), ["a", "b", "c"]);
        // Pass 2: "c" unproven again: freed; "b" unproven for the first time: kept.
        assert_eq!(kept(&keep(&reserved, &veths(&["a"]), &mut suspects)), ["a", "b"]);
        // Pass 3: "b"'s veth is back: kept, and no longer suspect.
        assert_eq!(kept(&keep(&reserved, &veths(&["a", "b"]), &mut suspects)), ["a", "b"]);
        assert!(kept(&keep(&reserved, &veths(&["a", "c"]), &mut suspects)).contains(&"b".to_string()));
    }

    #[test]
    fn a_veth_keeps_a_sandbox_the_api_does_not_list_yet() {
        // The API lags behind a new sandbox: no Pod claims "new"'s address, but its veth exists.
        let reserved = reserved(&["new"]);
        let mut suspects = HashSet::new();
        for _ in 0..3 {
            assert_eq!(kept(&keep(&reserved, &veths(&["new"]), &mut suspects)), ["new"]);
        }
        assert!(suspects.is_empty());
    }

    #[test]
    fn a_pod_claim_keeps_an_address_whose_veth_is_gone_and_restarts_the_count() {
        let reserved = reserved(&["a", "b"]);
        let mut suspects = HashSet::new();
        let b_claimed = Evidence { veths: HashSet::new(), claimed: [ip(1)].into() };
        assert_eq!(kept(&keep(&reserved, &b_claimed, &mut suspects)), ["a", "b"]);
        // "a" unproven twice: freed; "b" claimed by its Pod: kept.
        assert_eq!(kept(&keep(&reserved, &b_claimed, &mut suspects)), ["b"]);
        // "a" is gone from the store; "b"'s claim goes: it must be unproven twice before it goes.
        let reserved = &reserved[1..];
        assert_eq!(kept(&keep(reserved, &veths(&[]), &mut suspects)), ["b"]);
        assert!(keep(reserved, &veths(&[]), &mut suspects).is_empty());
        // Nothing reserved: nothing to keep.
        assert!(keep(&[], &veths(&[]), &mut suspects).is_empty());
    }
}
