//! Keeps the `inet weft-policy` table in line with [`desired::policy`]
//! (the table's design is in [`crate::desired::policy_table`]), one
//! transaction per change, the smallest that does it:
//! - a pod or label change only changes elements (verdict map entries of
//!   local pods, peer address set ranges, named-port set entries), written
//!   over netlink by weft itself;
//! - a policy added, edited or deleted (or a new list of policies over a
//!   pod) adds or removes only its own chains, groups and sets
//!   ([`rule_changes`]), through `nft`;
//! - the whole table is replaced when it is new, when the deny log setting
//!   changes, when a resync finds it is not as weft last left it, or when a
//!   smaller transaction failed.
//!
//! The table `inet weft` is never touched.
//!
//! Outside edits are found as for `inet weft` ([`crate::apply::weft_table`]):
//! with notifications, a transaction on the table by any `nft` process weft
//! did not start wakes a checking pass, so the table is not listed after
//! each write (a listing is 2.6 MB of JSON at 10,000 pods and 1,000
//! policies, 0.65 s or more); the resync compares a digest of its listing.
//!
//! [`desired::policy`]: crate::desired::policy::policy

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use libweft::file::FileError;
use libweft::netlink::{HOST_VETH_PREFIX, Netlink, NetlinkError, RTPROT_WEFT_POD};
use libweft::pending::{READY_GROUP, alias_pod_uid, is_pending};
use serde_json::{Value, json};

use crate::apply::nft_elements::{self, ElementsError};
use crate::apply::weft_table::Check;
use crate::base::names::POLICY_TABLE;
use crate::base::netfilter::{self, NftWriters, run_nft, run_nft_writing};
use crate::desired::nft_plan::NftPlan;
use crate::desired::policy::PolicyState;
use crate::desired::policy_table::{element_changes, liveness_renewal, rule_changes, same_rules, write_ruleset};

/// A failed `nft` transaction on the policy table.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `nft` failed or could not be run.
    #[error("nft: {0}")]
    Nft(#[source] nftables::helper::NftablesError),
    /// The blocking task running `nft` panicked or was cancelled.
    #[error("nft task: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// Element changes written over netlink.
    #[error("{0}")]
    Elements(#[from] ElementsError),
    /// Writing the plugin's list of policy namespaces.
    #[error("{0}")]
    File(#[from] FileError),
    /// Finding or releasing pending pod interfaces.
    #[error("pending pod interfaces: {0}")]
    Pending(#[from] NetlinkError),
    /// Asked to apply the last state again when none was applied.
    #[error("no policy state applied before to apply again")]
    NoLastState,
}

/// What one sync did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChange {
    /// Nothing: the state is the one last applied.
    None,
    /// This many elements deleted or added.
    Elements(usize),
    /// Policy chains, group chains or sets added or removed, in this many
    /// commands (with the element changes).
    Rules(usize),
    /// The whole table replaced.
    Table,
}

impl PolicyChange {
    /// Kernel writes, for `weft_kernel_writes_total{kind="policy"}`.
    pub fn writes(self) -> usize {
        match self {
            PolicyChange::None => 0,
            PolicyChange::Elements(n) | PolicyChange::Rules(n) => n,
            PolicyChange::Table => 1,
        }
    }
}

/// The last state written and, when known, the stateless digest of the
/// table's listing as weft left it.
#[derive(Default)]
pub struct PolicySync {
    last: Option<PolicyState>,
    digest: Option<u64>,
    /// weft's own `nft` processes, when notifications tell other writers apart.
    writers: Option<Arc<NftWriters>>,
    /// Whether weft wrote the table since the last resync that took no
    /// reference digest (see [`PolicySync::sync`]).
    wrote_since_resync: bool,
    /// How long a whole-table write opens the liveness gate for (closed: `None`).
    live_for: Option<std::time::Duration>,
}

impl PolicySync {
    /// With notifications that tell weft's own `nft` processes apart.
    pub fn with_writers(writers: Arc<NftWriters>) -> PolicySync {
        PolicySync { writers: Some(writers), ..PolicySync::default() }
    }

    /// The state weft last wrote, while it trusts the table.
    pub fn last(&self) -> Option<&PolicyState> {
        self.last.as_ref()
    }

    /// Sets how long the next whole-table write opens the liveness gate for.
    pub fn open_gate_for(&mut self, live_for: Option<std::time::Duration>) {
        self.live_for = live_for;
    }

    /// Renews the liveness gate of the table weft wrote for `live_for`;
    /// returns whether it wrote (not before weft's first table, nor for
    /// less than a second). The digest leaves out the gate's timeouts, so
    /// a renewal is no change to it; reopening an expired gate is, and the
    /// next resync that compares digests rewrites the table once.
    pub async fn renew_gate(&self, live_for: std::time::Duration) -> Result<bool, PolicyError> {
        let Some(renewal) = self.last.as_ref().and_then(|_| liveness_renewal(live_for)) else { return Ok(false) };
        self.apply(&renewal).await?;
        Ok(true)
    }

    /// Brings the table in line with `want` (`None`: the state last
    /// written, unchanged); `check` also compares the table itself with
    /// weft's last write. Over 60 lines: the three sizes of write
    /// (elements, rules, the whole table), each falling back to the next,
    /// read best as one ladder.
    pub async fn sync(&mut self, want: Option<PolicyState>, check: Check) -> Result<PolicyChange, PolicyError> {
        let trusted = self.writers.is_some() && self.last.is_some();
        // Trusting the table, a resync without a reference digest lists it
        // (2.6 MB, about 0.5 s at 10,000 pods and 1,000 policies, events
        // waiting meanwhile) only to take one, which weft's next write voids.
        // So it takes one only after a whole period without writes; until
        // then notifications cover the table, and a write to a table someone
        // removed fails and replaces it.
        // Skipping clears the mark, so the next resync takes a reference if no write came between.
        let skip =
            check == Check::Resync && trusted && self.digest.is_none() && std::mem::take(&mut self.wrote_since_resync);
        let check = if skip { Check::No } else { check };
        let intact = crate::apply::weft_table::table_intact(POLICY_TABLE, check, &mut self.digest, trusted).await;
        if !intact && self.last.is_some() {
            tracing::info!(table = POLICY_TABLE, "policy table differs from weft's last write; replacing it");
        }
        let mut want = match want {
            Some(want) => want,
            None if intact && self.last.is_some() => return Ok(PolicyChange::None),
            // Taken: the table is replaced whole, as for a new state equal to it.
            None => self.last.take().ok_or(PolicyError::NoLastState)?,
        };
        if self.last.as_ref() == Some(&want) && intact {
            return Ok(PolicyChange::None);
        }
        let change = match &self.last {
            Some(last) if intact && same_rules(last, &want) => {
                let plan = element_changes(last, &want);
                let n = plan.len();
                match self.apply_elements(plan).await {
                    Ok(()) => Some(PolicyChange::Elements(n)),
                    Err(e) => {
                        // Changed behind weft's back: the whole table repairs it.
                        tracing::info!("policy element update failed, replacing the table: {e}");
                        None
                    }
                }
            }
            // The base chains come and go with the whole table.
            Some(last) if intact && last.deny_log == want.deny_log && last.idle == want.idle => {
                let plan = rule_changes(last, &want, element_changes(last, &want));
                let n = plan.len();
                match self.apply(&plan.to_json()).await {
                    Ok(()) => Some(PolicyChange::Rules(n)),
                    Err(e) => {
                        tracing::info!("policy rule update failed, replacing the table: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let change = match change {
            Some(c) => c,
            None => {
                // Forget the last write first: if this one fails, the next pass must not trust the table.
                self.last = None;
                self.digest = None;
                want = write_table(want, self.live_for, self.writers.clone()).await?;
                tracing::info!(
                    table = POLICY_TABLE,
                    chains = want.chains.len() + want.cluster_chains.len() + want.tiers.len() + want.groups.len(),
                    ingress_pods = want.ingress.len(),
                    egress_pods = want.egress.len(),
                    "replaced policy table"
                );
                PolicyChange::Table
            }
        };
        self.wrote_since_resync = true;
        // Kept, not copied: at 10,000 pods a copy of the state is megabytes more at the peak.
        self.last = Some(want);
        self.digest = match (&self.writers, change, check) {
            // Without notifications the digest is the only way to notice edits.
            (None, _, _) => netfilter::table_digest(POLICY_TABLE).await,
            // A repair of an outside change: with a reference, should weft's
            // own write ever look foreign (or its notifications overflow),
            // the next pass finds the table intact instead of replacing it
            // again, and again.
            (Some(_), PolicyChange::Table, Check::Changed) => netfilter::table_digest(POLICY_TABLE).await,
            // Until someone else touches the table, it is as weft wrote it.
            (Some(_), _, _) => None,
        };
        Ok(change)
    }

    async fn apply(&self, rules: &Value) -> Result<(), PolicyError> {
        self.apply_text(rules.to_string().into_bytes()).await
    }

    async fn apply_text(&self, payload: Vec<u8>) -> Result<(), PolicyError> {
        apply_text(payload, self.writers.clone()).await
    }

    /// Element changes over netlink ([`nft_elements`]), or through `nft`
    /// for a form it does not write.
    async fn apply_elements(&self, plan: NftPlan) -> Result<(), PolicyError> {
        match nft_elements::encode_plan(&plan) {
            Some(batch) => Ok(nft_elements::write(batch, self.writers.clone()).await?),
            None => self.apply(&plan.to_json()).await,
        }
    }
}

/// Runs `nft -j -f -` on `payload`: raw JSON, since the nftables crate's
/// schema has no verdict maps.
async fn apply_text(payload: Vec<u8>, writers: Option<Arc<NftWriters>>) -> Result<(), PolicyError> {
    tokio::task::spawn_blocking(move || run_nft(&payload, writers.as_deref()))
        .await
        .map_err(PolicyError::Task)?
        .map_err(PolicyError::Nft)
}

/// Replaces the whole table with `want`'s, its text streamed into `nft` as
/// it is made: 2.5 MB at 10,000 pods and 1,000 policies, kept nowhere.
/// The liveness gate is open for `live_for`. Returns `want` for the caller to keep.
async fn write_table(
    want: PolicyState,
    live_for: Option<std::time::Duration>,
    writers: Option<Arc<NftWriters>>,
) -> Result<PolicyState, PolicyError> {
    let (want, written) = tokio::task::spawn_blocking(move || {
        let written = run_nft_writing(|stdin| write_ruleset(&want, live_for, stdin), writers.as_deref());
        (want, written)
    })
    .await
    .map_err(PolicyError::Task)?;
    written.map_err(PolicyError::Nft)?;
    Ok(want)
}

/// What one look at the pending pod interfaces found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Moved to the ready group now.
    pub released: usize,
    /// Still pending: their pod is not known yet.
    pub waiting: usize,
    /// Of those waiting, the veths whose alias records no pod UID (the
    /// runtime passed none in `CNI_ARGS`): held until the pod is deleted.
    pub unidentified: usize,
}

/// Moves weft's host veths out of their pending group ([`libweft::pending`])
/// when `release` says so, given the pod UID the veth's alias records
/// ([`libweft::pending::alias_pod_uid`]) and the pod addresses its host
/// routes (protocol `RTPROT_WEFT_POD`, written by the plugin on ADD) lead
/// to. A veth whose pod `release` refuses stays pending: fail-closed.
pub async fn release_pending(
    nl: &Netlink,
    release: impl Fn(Option<&str>, &[IpAddr]) -> bool,
) -> Result<Pending, NetlinkError> {
    let pending: Vec<_> =
        nl.links().await?.into_iter().filter(|l| is_pending(l.group) && l.name.starts_with(HOST_VETH_PREFIX)).collect();
    if pending.is_empty() {
        return Ok(Pending::default());
    }
    let mut addresses: HashMap<u32, Vec<IpAddr>> = HashMap::new();
    for v6 in [false, true] {
        for r in nl.routes(v6, Some(RTPROT_WEFT_POD)).await? {
            if r.dst.prefix() == if v6 { 128 } else { 32 } {
                addresses.entry(r.oif).or_default().push(r.dst.ip());
            }
        }
    }
    let mut out = Pending::default();
    for link in pending {
        let ips = addresses.get(&link.index).map(Vec::as_slice).unwrap_or_default();
        let uid = link.alias.as_deref().and_then(alias_pod_uid);
        if !release(uid, ips) {
            out.waiting += 1;
            // The plugin sets the alias before it writes the routes: a veth
            // with routes and no UID will never have one.
            out.unidentified += usize::from(uid.is_none() && !ips.is_empty());
            continue;
        }
        match nl.set_link_group(link.index, &link.name, READY_GROUP).await {
            Ok(()) => {
                // The signal an operator (or an e2e test) looks for.
                tracing::debug!(veth = %link.name, ?ips, ?uid, group = link.group, "veth left pending: its pod's policy is in the kernel");
                out.released += 1;
            }
            // Its pod was deleted meanwhile.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Deletes the policy table (NetworkPolicy disabled, `weft-agent cleanup`);
/// a missing table is fine.
pub async fn remove() -> Result<(), PolicyError> {
    let rules = json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": POLICY_TABLE}}},
        {"delete": {"table": {"family": "inet", "name": POLICY_TABLE}}},
    ]});
    apply_text(rules.to_string().into_bytes(), None).await
}
