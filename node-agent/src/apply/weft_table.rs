//! Keeps the `inet weft` table as desired. The whole table is replaced in
//! one `nft` transaction (add, delete, add: kindnet's trick, so a missing
//! table is no error), so there is never a moment with half a rule set, and
//! no other table is ever touched. When only the nodes changed, as when a
//! Node joins or leaves, the elements of the address sets (`nodes4/6`,
//! `vxlan_peers4/6`) are added and deleted in one transaction instead of
//! rebuilding a table that holds thousands of them. Named counters are
//! read back for `/metrics` by `observe::counters`.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::apply::nft_elements::{self, ElementsError};
use crate::base::names::WEFT_TABLE;
use crate::base::netfilter::{self, NftWriters, run_nft, run_nft_writing};
use crate::config::Config;
use crate::desired::NftTable;
use crate::desired::nft_plan::NftPlan;
use crate::desired::weft_table::{set_changes, write_ruleset};

/// A failed `nft` transaction.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// weft built JSON the nftables schema rejects (a bug).
    #[error("rule set does not fit the nft schema: {0}")]
    Schema(#[source] serde_json::Error),
    /// `nft` failed or could not be run.
    #[error("nft: {0}")]
    Nft(#[source] nftables::helper::NftablesError),
    /// The blocking task running `nft` panicked or was cancelled.
    #[error("nft task: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The kernel refused an element batch written over netlink.
    #[error(transparent)]
    Elements(#[from] ElementsError),
}

/// Keeps the table in line with its inputs: the whole table when it is
/// new, its rules changed (own pod CIDRs, MSS clamp), or (`check`) the table is not as weft
/// last left it: someone else flushed or edited it. Only the node sets'
/// elements when just the nodes changed. Comparing inputs, not rendered
/// JSON, keeps a pass over thousands of nodes from building a rule set it
/// would not apply, and a resync of an intact table writes nothing.
///
/// Whether the table is as weft left it is a digest of its listing. With
/// notifications (`writers` set) the listing, which costs tens of
/// milliseconds at thousands of nodes, is not taken after each write: until
/// a transaction by anyone else touches the table, it is as weft wrote it,
/// and the next resync adopts its listing as the reference.
#[derive(Default)]
pub struct Nftables {
    last: Option<NftTable>,
    /// Digest of the table's listing as weft left it, if known.
    digest: Option<u64>,
    /// weft's own `nft` processes, when notifications tell other writers apart.
    writers: Option<Arc<NftWriters>>,
}

/// Why a pass looks at the table itself, not only at its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// It does not: nothing says anyone else touched the table.
    No,
    /// The periodic check (start, resync): compare with the reference.
    Resync,
    /// Someone else changed the table, or its notifications were lost.
    Changed,
}

/// What one sync did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftChange {
    /// Nothing: the inputs are those of the last apply.
    None,
    /// Node set elements added and deleted.
    Elements,
    /// The whole table replaced.
    Table,
}

impl Nftables {
    /// With notifications that tell weft's own `nft` processes apart.
    pub fn with_writers(writers: Arc<NftWriters>) -> Nftables {
        Nftables { writers: Some(writers), ..Nftables::default() }
    }

    /// Brings the table in line with `want`; `check` also compares the
    /// table itself with weft's last write.
    pub async fn sync(&mut self, cfg: &Config, want: &NftTable, check: Check) -> Result<NftChange, NftError> {
        let trusted = self.writers.is_some() && self.last.is_some();
        let intact = table_intact(WEFT_TABLE, check, &mut self.digest, trusted).await;
        if !intact && self.last.is_some() {
            tracing::info!(table = WEFT_TABLE, "nftables table differs from weft's last write; replacing it");
        }
        if self.last.as_ref() == Some(want) && intact {
            return Ok(NftChange::None);
        }
        let delta = match &self.last {
            Some(last) if intact && last.same_rules(want) => set_changes(last, want),
            _ => None,
        };
        // A delta that fails (the table was changed behind our back) falls back to the whole table.
        let applied_delta = match delta {
            Some(d) => self
                .apply_elements(d)
                .await
                .map_err(|e| tracing::info!("node set update failed, replacing the table: {e}"))
                .is_ok(),
            None => false,
        };
        let change = if applied_delta {
            self.last = Some(want.clone());
            NftChange::Elements
        } else {
            // Forget the last write first: if this one fails, the next pass must not trust the table.
            self.last = None;
            self.digest = None;
            let written = write_table(cfg.clone(), want.clone(), self.writers.clone()).await?;
            tracing::info!(table = WEFT_TABLE, node_addresses = want.node_ips.len(), "replaced nftables table");
            self.last = Some(written);
            NftChange::Table
        };
        // After a whole table, always a reference: should weft's own write
        // ever look foreign, the next pass finds the table intact instead of
        // replacing it again, and again. Element updates are frequent and
        // cheap to check at the next resync.
        self.digest = match (self.writers.as_ref(), change) {
            (Some(_), NftChange::Elements) => None,
            _ => netfilter::table_digest(WEFT_TABLE).await,
        };
        Ok(change)
    }

    async fn apply(&self, rules: Value) -> Result<(), NftError> {
        apply(rules, self.writers.clone()).await
    }

    /// Element changes over netlink ([`nft_elements`]): no `nft` process,
    /// which cost about 13 ms of a pass at 5,000 Nodes; through `nft` only
    /// if a command has a form the encoder does not know.
    async fn apply_elements(&self, delta: NftPlan) -> Result<(), NftError> {
        match nft_elements::encode_plan(&delta) {
            Some(batch) => Ok(nft_elements::write(batch, self.writers.clone()).await?),
            None => self.apply(delta.to_json()).await,
        }
    }
}

/// Replaces the whole table with `want`'s, its text streamed into `nft`
/// as it is made ([`write_ruleset`]). Returns `want` for the caller to keep.
async fn write_table(cfg: Config, want: NftTable, writers: Option<Arc<NftWriters>>) -> Result<NftTable, NftError> {
    let (want, written) = tokio::task::spawn_blocking(move || {
        let written = run_nft_writing(|stdin| write_ruleset(&cfg, &want, stdin), writers.as_deref());
        (want, written)
    })
    .await
    .map_err(NftError::Task)?;
    written.map_err(NftError::Nft)?;
    Ok(want)
}

/// Runs one `nft -j -f -` transaction, recording the process in `writers`
/// before it can commit anything.
async fn apply(rules: Value, writers: Option<Arc<NftWriters>>) -> Result<(), NftError> {
    // Checked against the schema first: a bug in weft, not nft's complaint.
    let parsed: nftables::schema::Nftables = serde_json::from_value(rules).map_err(NftError::Schema)?;
    let payload = serde_json::to_vec(&parsed).map_err(NftError::Schema)?;
    tokio::task::spawn_blocking(move || run_nft(&payload, writers.as_deref()))
        .await
        .map_err(NftError::Task)?
        .map_err(NftError::Nft)
}

/// Deletes weft's table (for `weft-agent cleanup`); a missing table is fine.
pub async fn remove() -> Result<(), NftError> {
    apply(
        json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": WEFT_TABLE}}},
            {"delete": {"table": {"family": "inet", "name": WEFT_TABLE}}},
        ]}),
        None,
    )
    .await
}

/// Whether `table` is as weft last left it, for a pass with `check`.
/// `digest`: the table's stateless digest after weft's last write, taken
/// lazily; `trusted`: weft wrote the table and its notification reader
/// would have woken a check had anyone else touched it since, so the
/// first listing at a resync is the reference.
pub(crate) async fn table_intact(table: &'static str, check: Check, digest: &mut Option<u64>, trusted: bool) -> bool {
    match (check, *digest) {
        (Check::No, _) => true,
        (_, Some(d)) => netfilter::table_digest(table).await == Some(d),
        (Check::Resync, None) if trusted => {
            *digest = netfilter::table_digest(table).await;
            digest.is_some()
        }
        (_, None) => false,
    }
}
