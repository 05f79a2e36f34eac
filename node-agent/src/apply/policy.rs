//! The NetworkPolicy outputs, applied in the order that keeps a pod closed
//! until its policy is in the kernel: the plugin's list of namespaces with
//! isolating policies, the `inet weft-policy` table ([`policy_table`]),
//! then the release of pending pod veths whose pods the table now knows.
//!
//! [`policy_table`]: super::policy_table

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

use libweft::netlink::Netlink;
use libweft::pending::PolicyNamespaces;

use super::policy_table::{PolicyChange, PolicyError, PolicySync, release_pending};
use super::weft_table::Check;
use crate::config::Config;
use crate::desired;
use crate::desired::network_policy::DesiredPolicy;
use crate::metrics::{Metrics, PolicyLabel};
use crate::wire_policy::PodView;

/// What [`PolicyOutputs::apply`] did, for the pass's log.
#[derive(Debug)]
pub struct Applied {
    /// Pods believed.
    pub pods: usize,
    pub change: PolicyChange,
    /// How long the table took (the namespace list and the table).
    pub synced: std::time::Duration,
}

/// The policy outputs weft keeps, and what the last pass saw of them.
pub struct PolicyOutputs {
    table: PolicySync,
    pending: PendingScan,
    /// What the last successful apply needs, besides the table's state
    /// ([`PolicySync::last`]), to apply its state again.
    kept: Option<Kept>,
}

/// The small part of an applied [`DesiredPolicy`] kept for applying it
/// again: not every pod, only this node's (for its pending interfaces).
struct Kept {
    namespaces: PolicyNamespaces,
    local_pods: Vec<PodView>,
    /// How many pods were believed, for the pass's log.
    pods: usize,
}

/// When a pass looks for pending pod interfaces: a link dump is not free,
/// so only when a local pod appeared (or changed addresses), when the
/// last look left some waiting, and at the resync (the backstop).
#[derive(Default)]
struct PendingScan {
    local_ips: BTreeSet<IpAddr>,
    waiting: usize,
    unidentified: usize,
}

impl PolicyOutputs {
    pub fn new(table: PolicySync) -> PolicyOutputs {
        PolicyOutputs { table, pending: PendingScan::default(), kept: None }
    }

    /// Whether [`PolicyOutputs::apply`] can apply the last state again
    /// (`want` `None`): the last apply succeeded.
    pub fn can_reapply(&self) -> bool {
        self.kept.is_some() && self.table.last().is_some()
    }

    /// The table's sync, for its liveness gate ([`PolicySync::open_gate_for`], [`PolicySync::renew_gate`]).
    pub fn table(&mut self) -> &mut PolicySync {
        &mut self.table
    }

    /// Brings every policy output in line with `want` for node `node`
    /// (`None`: the state of the last successful apply, its inputs
    /// unchanged; outside changes are still repaired and pending pods
    /// still released); `check` also compares the table with weft's last
    /// write. Over 60 lines: the order of the outputs is what keeps pods
    /// closed, so it reads in one place.
    pub async fn apply(
        &mut self,
        cfg: &Config,
        nl: &Netlink,
        metrics: &Metrics,
        node: &str,
        want: Option<DesiredPolicy>,
        check: Check,
    ) -> Result<Applied, PolicyError> {
        let started = Instant::now();
        // Taken: after a failure there is nothing to apply again, and the next pass computes.
        let last = self.kept.take();
        let (state, kept) = match want {
            Some(want) => {
                let selecting: BTreeSet<&str> = want.state.chains.values().map(|c| c.policy.as_str()).collect();
                metrics.network_policies.set(selecting.len() as i64);
                let DesiredPolicy { pods, state, namespaces, .. } = want;
                let local_pods = pods.iter().filter(|p| p.node == node).cloned().collect();
                (Some(state), Kept { namespaces, local_pods, pods: pods.len() })
            }
            None => (None, last.ok_or(PolicyError::NoLastState)?),
        };
        let Kept { namespaces, local_pods, .. } = &kept;
        if self.table.last().is_some_and(|t| !t.idle) {
            // weft wrote the table with its hooks, so its pending rules are
            // in place: list a namespace's first policy before writing its
            // rules, so a pod created meanwhile starts pending instead of
            // open. An idle table has no hooks: it gets them first.
            list_policy_namespaces(cfg, namespaces)?;
        }
        let change = self.table.sync(state, check).await?;
        let synced = started.elapsed();
        metrics.kernel_writes("policy", change.writes());
        // Policy chains (and so their counters) change only with rules or the whole table.
        if let (PolicyChange::Rules(_) | PolicyChange::Table, Some(written)) = (change, self.table.last()) {
            let np = written.chains.iter().map(|(name, c)| {
                (name.clone(), PolicyLabel { direction: c.direction.to_string(), policy: c.policy.clone() })
            });
            // A ClusterNetworkPolicy's counter counts its Deny rules' drops.
            let cnp = written.cluster_chains.iter().map(|(name, c)| {
                let policy = format!("ClusterNetworkPolicy/{}", c.policy);
                (name.clone(), PolicyLabel { direction: c.direction.to_string(), policy })
            });
            metrics.set_policy_counters(np.chain(cnp));
        }
        // The table holds pending pods closed: only now may the plugin make some.
        list_policy_namespaces(cfg, namespaces)?;
        let local_ips = local_pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        if check != Check::No || self.pending.waiting > 0 || local_ips != self.pending.local_ips {
            let found =
                release_pending(nl, |uid, ips| desired::policy::knows_local_pod(node, local_pods, uid, ips)).await?;
            metrics.kernel_writes("link_group", found.released);
            metrics.policy_pending_interfaces.set(found.waiting as i64);
            if found.unidentified > self.pending.unidentified {
                // Said once per new one, not on every pass that finds it still there.
                tracing::warn!(
                    veths = found.unidentified,
                    "pending pod interfaces record no pod UID (the runtime passed no K8S_POD_UID): \
                     they stay held until their pods are deleted"
                );
            }
            self.pending = PendingScan { local_ips, waiting: found.waiting, unidentified: found.unidentified };
        }
        let pods = kept.pods;
        self.kept = Some(kept);
        Ok(Applied { pods, change, synced })
    }
}

/// NetworkPolicy is disabled: its table goes, so does the plugin's list of
/// policy namespaces (new pods start ready), and pods still pending from
/// when it was enabled are released, so disabling never leaves a pod
/// unreachable. Failures are reported, not fatal: the data plane works.
pub async fn disable(cfg: &Config, nl: &Netlink, metrics: &Metrics) {
    if let Err(e) = super::policy_table::remove().await {
        metrics.sync_error("policy");
        tracing::warn!("NetworkPolicy disabled, but removing its table failed: {e}");
    }
    if let Err(e) = libweft::pending::remove(&desired::files::policy_namespaces_path(cfg)) {
        metrics.sync_error("policy");
        tracing::warn!("NetworkPolicy disabled, but {e}");
    }
    match release_pending(nl, |_, _| true).await {
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
