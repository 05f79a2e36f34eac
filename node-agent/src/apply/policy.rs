//! Keeps the `inet weft-policy` table in line with [`desired::policy`]
//! (the table's design is in [`crate::desired::policy_nft`]), one
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
//! Outside edits are found as for `inet weft` ([`crate::apply::nftables`]):
//! with notifications, a transaction on the table by any `nft` process weft
//! did not start wakes a checking pass, so the table is not listed after
//! each write (a listing is 2.6 MB of JSON at 10,000 pods and 1,000
//! policies, 0.65 s or more); the resync compares a digest of its listing.
//!
//! [`desired::policy`]: crate::desired::policy::policy

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use libweft::file::FileError;
use libweft::netlink::{HOST_VETH_PREFIX, Netlink, NetlinkError, RTPROT_WEFT};
use libweft::pending::{READY_GROUP, is_pending};
use serde_json::{Value, json};

use crate::apply::nft_elements::{self, ElementsError};
use crate::apply::nftables::{Check, run_nft, run_nft_writing};
use crate::desired::policy::PolicyState;
use crate::desired::policy_nft::{
    TABLE, denied_counter, element, family_set, map_elem, map_name, pending_counter, port_elem, range_elem,
    rule_changes, write_ruleset,
};
use crate::observe;
use crate::observe::events::NftWriters;
use crate::wire_policy::Direction;

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

    /// Brings the table in line with `want`; `check` also compares the
    /// table itself with weft's last write.
    pub async fn sync(&mut self, mut want: PolicyState, check: Check) -> Result<PolicyChange, PolicyError> {
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
        let intact = crate::apply::nftables::table_intact(TABLE, check, &mut self.digest, trusted).await;
        if !intact && self.last.is_some() {
            tracing::info!(table = TABLE, "policy table differs from weft's last write; replacing it");
        }
        if self.last.as_ref() == Some(&want) && intact {
            return Ok(PolicyChange::None);
        }
        let change = match &self.last {
            Some(last) if intact && same_rules(last, &want) => {
                let cmds = element_changes(last, &want);
                let n = cmds.len();
                match self.apply_elements(cmds).await {
                    Ok(()) => Some(PolicyChange::Elements(n)),
                    Err(e) => {
                        // Changed behind weft's back: the whole table repairs it.
                        tracing::info!("policy element update failed, replacing the table: {e}");
                        None
                    }
                }
            }
            Some(last) if intact && last.deny_log == want.deny_log => {
                let cmds = rule_changes(last, &want, element_changes(last, &want));
                let n = cmds.len();
                match self.apply(&json!({"nftables": cmds})).await {
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
                want = write_table(want, self.writers.clone()).await?;
                tracing::info!(
                    table = TABLE,
                    chains = want.chains.len() + want.groups.len(),
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
            (None, _, _) => observe::kernel::nft_table_digest(TABLE).await,
            // A repair of an outside change: with a reference, should weft's
            // own write ever look foreign (or its notifications overflow),
            // the next pass finds the table intact instead of replacing it
            // again, and again.
            (Some(_), PolicyChange::Table, Check::Changed) => observe::kernel::nft_table_digest(TABLE).await,
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
    async fn apply_elements(&self, cmds: Vec<Value>) -> Result<(), PolicyError> {
        match nft_elements::encode(&cmds) {
            Ok(batch) => Ok(nft_elements::write(batch, self.writers.clone()).await?),
            Err(e) => {
                tracing::debug!("{e}: written by nft");
                self.apply(&json!({"nftables": cmds})).await
            }
        }
    }
}

/// Whether two states have the same chains, rules and sets, so that only
/// elements differ.
fn same_rules(a: &PolicyState, b: &PolicyState) -> bool {
    let sets =
        |s: &PolicyState| s.sets.iter().map(|(n, v)| (n.clone(), v.about.clone(), v.intervals)).collect::<Vec<_>>();
    let port_sets =
        |s: &PolicyState| s.port_sets.iter().map(|(n, v)| (n.clone(), v.name.clone(), v.protocol)).collect::<Vec<_>>();
    a.chains == b.chains && a.groups == b.groups && sets(a) == sets(b) && port_sets(a) == port_sets(b)
}

/// The element deletions, then additions, that turn `old`'s elements into
/// `new`'s (one command per set and verb). `old` and `new` have the same
/// rules ([`same_rules`]).
pub fn element_changes(old: &PolicyState, new: &PolicyState) -> Vec<Value> {
    let (mut deletes, mut adds) = (Vec::new(), Vec::new());
    for d in [Direction::Ingress, Direction::Egress] {
        let pick = |s: &'_ PolicyState| match d {
            Direction::Ingress => s.ingress.clone(),
            Direction::Egress => s.egress.clone(),
        };
        let (o, n): (BTreeMap<IpAddr, String>, BTreeMap<IpAddr, String>) = (pick(old), pick(new));
        for v6 in [false, true] {
            // A pod whose group changed is deleted and added again.
            let gone: Vec<Value> = o
                .iter()
                .filter(|(ip, g)| ip.is_ipv6() == v6 && n.get(*ip) != Some(*g))
                .map(|(ip, _)| json!(ip.to_string()))
                .collect();
            let came: Vec<Value> = n
                .iter()
                .filter(|(ip, g)| ip.is_ipv6() == v6 && o.get(*ip) != Some(*g))
                .map(|(ip, g)| map_elem(*ip, g))
                .collect();
            if !gone.is_empty() {
                deletes.push(element("delete", &map_name(d, v6), gone));
            }
            if !came.is_empty() {
                adds.push(element("add", &map_name(d, v6), came));
            }
        }
    }
    for (name, new_set) in &new.sets {
        let Some(old_set) = old.sets.get(name) else { continue };
        let (o, n): (BTreeSet<_>, BTreeSet<_>) = (old_set.ranges.iter().collect(), new_set.ranges.iter().collect());
        for v6 in [false, true] {
            let elems = |a: &BTreeSet<&(IpAddr, IpAddr)>, b: &BTreeSet<&(IpAddr, IpAddr)>| -> Vec<Value> {
                a.difference(b).filter(|(x, _)| x.is_ipv6() == v6).map(|(x, y)| range_elem(*x, *y)).collect()
            };
            let (gone, came) = (elems(&o, &n), elems(&n, &o));
            if !gone.is_empty() {
                deletes.push(element("delete", &family_set(name, v6), gone));
            }
            if !came.is_empty() {
                adds.push(element("add", &family_set(name, v6), came));
            }
        }
    }
    for (name, new_set) in &new.port_sets {
        let Some(old_set) = old.port_sets.get(name) else { continue };
        let (o, n): (BTreeSet<_>, BTreeSet<_>) = (old_set.elements.iter().collect(), new_set.elements.iter().collect());
        for v6 in [false, true] {
            let elems = |a: &BTreeSet<&(IpAddr, u16)>, b: &BTreeSet<&(IpAddr, u16)>| -> Vec<Value> {
                a.difference(b).filter(|(ip, _)| ip.is_ipv6() == v6).map(|(ip, port)| port_elem(*ip, *port)).collect()
            };
            let (gone, came) = (elems(&o, &n), elems(&n, &o));
            if !gone.is_empty() {
                deletes.push(element("delete", &family_set(name, v6), gone));
            }
            if !came.is_empty() {
                adds.push(element("add", &family_set(name, v6), came));
            }
        }
    }
    deletes.extend(adds);
    deletes
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
/// Returns `want` for the caller to keep.
async fn write_table(want: PolicyState, writers: Option<Arc<NftWriters>>) -> Result<PolicyState, PolicyError> {
    let (want, written) = tokio::task::spawn_blocking(move || {
        let written = run_nft_writing(|stdin| write_ruleset(&want, stdin), writers.as_deref());
        (want, written)
    })
    .await
    .map_err(PolicyError::Task)?;
    written.map_err(PolicyError::Nft)?;
    Ok(want)
}

/// The policy table's named counters (reset when the table is replaced):
/// name → packets; empty when the table or `nft` is missing.
pub async fn counters() -> HashMap<String, u64> {
    crate::observe::kernel::nft_counters(TABLE).await
}

/// The policy table's counters by direction.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets the group chains dropped: no policy allowed them.
    pub denied: Vec<(Direction, u64)>,
    /// Packets dropped to or from pods still pending.
    pub pending: Vec<(Direction, u64)>,
}

/// Picks the per-direction counters out of [`counters`].
pub fn counts_in(counters: &HashMap<String, u64>) -> Counts {
    let by = |name: fn(Direction) -> String| {
        [Direction::Ingress, Direction::Egress]
            .into_iter()
            .filter_map(|d| Some((d, *counters.get(&name(d))?)))
            .collect()
    };
    Counts { denied: by(denied_counter), pending: by(pending_counter) }
}

/// What one look at the pending pod interfaces found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Moved to the ready group now.
    pub released: usize,
    /// Still pending: their pod is not known yet.
    pub waiting: usize,
}

/// Moves weft's host veths out of their pending group ([`libweft::pending`])
/// when `release` says so, given the pod addresses the veth's host routes
/// (protocol `RTPROT_WEFT`, written by the plugin on ADD) lead to. A veth
/// whose pod `release` refuses stays pending: fail-closed.
pub async fn release_pending(nl: &Netlink, release: impl Fn(&[IpAddr]) -> bool) -> Result<Pending, NetlinkError> {
    let pending: Vec<_> =
        nl.links().await?.into_iter().filter(|l| is_pending(l.group) && l.name.starts_with(HOST_VETH_PREFIX)).collect();
    if pending.is_empty() {
        return Ok(Pending::default());
    }
    let mut addresses: HashMap<u32, Vec<IpAddr>> = HashMap::new();
    for v6 in [false, true] {
        for r in nl.routes(v6, Some(RTPROT_WEFT)).await? {
            if r.dst.prefix() == if v6 { 128 } else { 32 } {
                addresses.entry(r.oif).or_default().push(r.dst.ip());
            }
        }
    }
    let mut out = Pending::default();
    for link in pending {
        let ips = addresses.get(&link.index).map(Vec::as_slice).unwrap_or_default();
        if !release(ips) {
            out.waiting += 1;
            continue;
        }
        match nl.set_link_group(link.index, &link.name, READY_GROUP).await {
            Ok(()) => {
                // The signal an operator (or an e2e test) looks for.
                tracing::debug!(veth = %link.name, ?ips, group = link.group, "veth left pending: its pod's policy is in the kernel");
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
        {"add": {"table": {"family": "inet", "name": TABLE}}},
        {"delete": {"table": {"family": "inet", "name": TABLE}}},
    ]});
    apply_text(rules.to_string().into_bytes(), None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::policy::fixtures::*;
    use crate::desired::policy::policy;
    use crate::wire_policy::Protocol;

    #[test]
    fn pod_and_label_changes_are_element_changes_and_policy_changes_are_not() {
        let server = with_port(pod("a", "srv", "node1", 1, &[("app", "srv")]), "http", Protocol::Tcp, 8080);
        let client = pod("a", "cli", "node2", 2, &[("role", "x")]);
        let namespaces = [ns("a", &[])];
        let allow = ingress(
            netpol("a", "allow", sel(&[("app", "srv")])),
            vec![rule(vec![pods_in_own(sel(&[("role", "cli")]))], vec![named(Protocol::Tcp, "http")])],
        );
        let before = policy("node1", &[server.clone(), client.clone()], &namespaces, std::slice::from_ref(&allow));

        // The client is relabelled to match: only its addresses join the peer set.
        let mut relabelled = client.clone();
        relabelled.labels = labels(&[("role", "cli")]);
        let after = policy("node1", &[server.clone(), relabelled], &namespaces, std::slice::from_ref(&allow));
        assert!(same_rules(&before, &after));
        let cmds = element_changes(&before, &after);
        assert_eq!(cmds.len(), 2, "one add per family: {cmds:?}");
        assert!(cmds.iter().all(|c| c["add"]["element"]["name"].as_str().unwrap().starts_with("peer-")));
        let text = serde_json::to_string(&cmds).unwrap();
        assert!(text.contains("10.244.2.2") && text.contains("fd00:10:244:2::2"), "{text}");
        assert!(element_changes(&after, &before).iter().all(|c| c["delete"].is_object()), "and back");

        // A second server pod: its map entries and named port, no rule.
        let server2 = with_port(pod("a", "srv2", "node1", 3, &[("app", "srv")]), "http", Protocol::Tcp, 9090);
        let more =
            policy("node1", &[server.clone(), server2, client.clone()], &namespaces, std::slice::from_ref(&allow));
        assert!(same_rules(&before, &more));
        let text = serde_json::to_string(&element_changes(&before, &more)).unwrap();
        assert!(text.contains(r#""ingress4""#) && text.contains(r#""ingress6""#), "{text}");
        assert!(text.contains(r#"{"concat":["10.244.1.3",9090]}"#), "{text}");

        // Another policy over the server: new chains, the whole table.
        let deny = ingress(netpol("a", "deny", sel(&[])), vec![]);
        let both = policy("node1", &[server, client], &namespaces, &[allow, deny]);
        assert!(!same_rules(&before, &both));
    }

    #[test]
    fn denied_and_pending_counters_are_read_by_direction() {
        let listing = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}},
            {"counter": {"family": "inet", "name": "ingress_denied", "table": "weft-policy", "handle": 3, "packets": 7, "bytes": 588}},
            {"counter": {"family": "inet", "name": "egress_denied", "table": "weft-policy", "handle": 4, "packets": 2, "bytes": 0}},
            {"counter": {"family": "inet", "name": "ingress_pending", "table": "weft-policy", "handle": 5, "packets": 3, "bytes": 180}}]}"#;
        let c = counts_in(&crate::observe::kernel::parse_counters(listing));
        assert_eq!(c.denied, vec![(Direction::Ingress, 7), (Direction::Egress, 2)]);
        assert_eq!(c.pending, vec![(Direction::Ingress, 3)]);
        assert_eq!(counts_in(&crate::observe::kernel::parse_counters("")), Counts::default());
    }
}
