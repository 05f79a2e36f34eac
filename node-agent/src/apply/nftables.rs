//! Keeps the `inet weft` table as desired. The whole table is replaced in
//! one `nft` transaction (add, delete, add: kindnet's trick, so a missing
//! table is no error), so there is never a moment with half a rule set, and
//! no other table is ever touched. When only the nodes changed, as when a
//! Node joins or leaves, the elements of the address sets (`nodes4/6`,
//! `vxlan_peers4/6`) are added and deleted in one transaction instead of
//! rebuilding a table that holds thousands of them. Named counters are
//! read back for `/metrics` ([`drop_counts`]).

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::apply::nft_elements::{self, ElementsError};
use crate::config::Config;
use crate::desired::NftTable;
use crate::desired::nftables::{DROP_COUNTERS, TABLE, ruleset, set_name};
use crate::observe;
use crate::observe::events::NftWriters;

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

/// Elements of the address sets to add and to delete, as one transaction.
pub fn set_changes(old: &NftTable, new: &NftTable) -> Option<Value> {
    let mut cmds = Vec::new();
    for (base, old, new) in
        [("nodes", &old.node_ips, &new.node_ips), ("vxlan_peers", &old.vxlan_peers, &new.vxlan_peers)]
    {
        let (deleted, added) = sorted_difference(old, new);
        for (verb, ips) in [("delete", deleted), ("add", added)] {
            for v6 in [false, true] {
                let elem: Vec<Value> =
                    ips.iter().filter(|ip| ip.is_ipv6() == v6).map(|ip| json!(ip.to_string())).collect();
                if !elem.is_empty() {
                    let name = set_name(base, v6);
                    cmds.push(
                        json!({verb: {"element": {"family": "inet", "table": TABLE, "name": name, "elem": elem}}}),
                    );
                }
            }
        }
    }
    (!cmds.is_empty()).then(|| json!({"nftables": cmds}))
}

/// What only `old` holds and what only `new` holds, both sorted (as
/// [`NftTable`] keeps them): one merge, no sets, at thousands of nodes.
fn sorted_difference<'a>(old: &'a [IpAddr], new: &'a [IpAddr]) -> (Vec<&'a IpAddr>, Vec<&'a IpAddr>) {
    let (mut deleted, mut added) = (Vec::new(), Vec::new());
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (Some(a), Some(b)) if a == b => {
                o.next();
                n.next();
            }
            (Some(a), Some(b)) if a < b => deleted.extend(o.next()),
            (Some(_), Some(_)) | (None, Some(_)) => added.extend(n.next()),
            (Some(_), None) => deleted.extend(o.next()),
            (None, None) => return (deleted, added),
        }
    }
}

/// Keeps the table in line with its inputs: the whole table when it is
/// new, the own pod CIDRs changed, or (`check`) the table is not as weft
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
        let intact = table_intact(TABLE, check, &mut self.digest, trusted).await;
        if !intact && self.last.is_some() {
            tracing::info!(table = TABLE, "nftables table differs from weft's last write; replacing it");
        }
        if self.last.as_ref() == Some(want) && intact {
            return Ok(NftChange::None);
        }
        let delta = match &self.last {
            Some(last) if intact && last.own_cidrs == want.own_cidrs => set_changes(last, want),
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
            NftChange::Elements
        } else {
            // Forget the last write first: if this one fails, the next pass must not trust the table.
            self.last = None;
            self.digest = None;
            self.apply(ruleset(cfg, want)).await?;
            tracing::info!(table = TABLE, node_addresses = want.node_ips.len(), "replaced nftables table");
            NftChange::Table
        };
        self.last = Some(want.clone());
        // After a whole table, always a reference: should weft's own write
        // ever look foreign, the next pass finds the table intact instead of
        // replacing it again, and again. Element updates are frequent and
        // cheap to check at the next resync.
        self.digest = match (self.writers.as_ref(), change) {
            (Some(_), NftChange::Elements) => None,
            _ => observe::kernel::nft_table_digest(TABLE).await,
        };
        Ok(change)
    }

    async fn apply(&self, rules: Value) -> Result<(), NftError> {
        apply(rules, self.writers.clone()).await
    }

    /// Element changes over netlink ([`nft_elements`]): no `nft` process,
    /// which cost about 13 ms of a pass at 5,000 Nodes; through `nft` only
    /// if a command has a form the encoder does not know.
    async fn apply_elements(&self, delta: Value) -> Result<(), NftError> {
        let cmds = delta["nftables"].as_array().map(Vec::as_slice).unwrap_or_default();
        match nft_elements::encode(cmds) {
            Ok(batch) => Ok(nft_elements::write(batch, self.writers.clone()).await?),
            Err(e) => {
                tracing::debug!("{e}: written by nft");
                self.apply(delta).await
            }
        }
    }
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

/// Runs `nft -j -f -` on `payload`, recording the process in `writers`
/// before it can commit anything, so that its notifications are known as
/// weft's own.
pub(crate) fn run_nft(payload: &[u8], writers: Option<&NftWriters>) -> Result<(), nftables::helper::NftablesError> {
    run_nft_writing(|stdin| stdin.write_all(payload), writers)
}

/// Runs `nft -j -f -` on what `write` writes to its input, buffered.
pub(crate) fn run_nft_writing(
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    writers: Option<&NftWriters>,
) -> Result<(), nftables::helper::NftablesError> {
    use nftables::helper::NftablesError;
    let program = std::ffi::OsString::from("nft");
    let exec = |inner| NftablesError::NftExecution { program: program.clone(), inner };
    let mut child = Command::new(&program)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(exec)?;
    if let Some(w) = writers {
        w.push(child.id());
    }
    // nft reads all of its input before it commits.
    let written = child.stdin.take().map(|stdin| {
        let mut stdin = std::io::BufWriter::with_capacity(64 * 1024, stdin);
        write(&mut stdin).and_then(|()| stdin.flush())
    });
    let out = child.wait_with_output().map_err(exec)?;
    if let Some(Err(e)) = written {
        return Err(exec(e));
    }
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        return Err(NftablesError::NftFailed {
            program,
            hint: format!("applying the rule set: {}", stderr.trim()),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        });
    }
    Ok(())
}

/// Packets dropped so far by each of weft's named counters (reset when the
/// table is replaced); empty when the table or `nft` is missing.
pub async fn drop_counts() -> Vec<(&'static str, u64)> {
    drop_counts_in(&observe::kernel::nft_counters(TABLE).await)
}

fn drop_counts_in(counters: &std::collections::HashMap<String, u64>) -> Vec<(&'static str, u64)> {
    DROP_COUNTERS.iter().filter_map(|(name, _)| Some((*name, *counters.get(*name)?))).collect()
}

/// Deletes weft's table (for `weft-agent cleanup`); a missing table is fine.
pub async fn remove() -> Result<(), NftError> {
    apply(
        json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": TABLE}}},
            {"delete": {"table": {"family": "inet", "name": TABLE}}},
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
        (_, Some(d)) => observe::kernel::nft_table_digest(table).await == Some(d),
        (Check::Resync, None) if trusted => {
            *digest = observe::kernel::nft_table_digest(table).await;
            digest.is_some()
        }
        (_, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_changes_become_element_updates_of_one_transaction() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let own = ["10.244.1.0/24".parse().unwrap()];
        let old = NftTable::new(
            &own,
            &[ip("198.51.100.11"), ip("198.51.100.12"), ip("2001:db8:a::12")],
            &[ip("198.51.100.12")],
        );
        let new = NftTable::new(
            &own,
            &[ip("198.51.100.11"), ip("198.51.100.13"), ip("2001:db8:a::12")],
            &[ip("198.51.100.13")],
        );
        let d = set_changes(&old, &new).unwrap();
        serde_json::from_value::<nftables::schema::Nftables>(d.clone()).expect("valid nft JSON");
        let cmds = d["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 4, "{d}");
        assert_eq!(cmds[0]["delete"]["element"]["name"], "nodes4");
        assert_eq!(cmds[0]["delete"]["element"]["elem"], json!(["198.51.100.12"]));
        assert_eq!(cmds[1]["add"]["element"]["elem"], json!(["198.51.100.13"]));
        assert_eq!(cmds[2]["delete"]["element"]["name"], "vxlan_peers4");
        assert_eq!(cmds[3]["add"]["element"]["elem"], json!(["198.51.100.13"]));
        assert!(set_changes(&old, &old).is_none());
        // Written over netlink, not by an `nft` process.
        nft_elements::encode(cmds).expect("node set changes have a netlink encoding");
    }

    #[test]
    fn drop_counters_are_read_from_the_listing() {
        let listing = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}},
            {"counter": {"family": "inet", "name": "spoofed_source", "table": "weft", "handle": 3, "packets": 7, "bytes": 588}},
            {"counter": {"family": "inet", "name": "pod_vxlan", "table": "weft", "handle": 4, "packets": 0, "bytes": 0}},
            {"counter": {"family": "inet", "name": "someone_elses", "table": "weft", "handle": 5, "packets": 9, "bytes": 9}}]}"#;
        let counters = observe::kernel::parse_counters(listing);
        assert_eq!(drop_counts_in(&counters), vec![("spoofed_source", 7), ("pod_vxlan", 0)]);
        assert!(observe::kernel::parse_counters("not json").is_empty());
    }
}
