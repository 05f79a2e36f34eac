//! Keeps the `inet weft` table as desired. The whole table is replaced in
//! one `nft` transaction (add, delete, add: kindnet's trick, so a missing
//! table is no error), so there is never a moment with half a rule set, and
//! no other table is ever touched. When only the nodes changed, as when a
//! Node joins or leaves, the elements of the address sets (`nodes4/6`,
//! `vxlan_peers4/6`) are added and deleted in one transaction instead of
//! rebuilding a table that holds thousands of them. Named counters are
//! read back for `/metrics` ([`drop_counts`]).

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::config::Config;
use crate::desired::NftTable;
use crate::desired::nftables::{DROP_COUNTERS, TABLE, ruleset, set_name};
use crate::observe;

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
}

/// Elements of the address sets to add and to delete, as one transaction.
pub fn set_changes(old: &NftTable, new: &NftTable) -> Option<Value> {
    let mut cmds = Vec::new();
    for (base, old, new) in
        [("nodes", &old.node_ips, &new.node_ips), ("vxlan_peers", &old.vxlan_peers, &new.vxlan_peers)]
    {
        let (old, new): (BTreeSet<&IpAddr>, BTreeSet<&IpAddr>) = (old.iter().collect(), new.iter().collect());
        for (verb, ips) in [("delete", old.difference(&new)), ("add", new.difference(&old))] {
            let ips: Vec<&IpAddr> = ips.copied().collect();
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

/// Keeps the table in line with its inputs: the whole table when it is
/// new, the own pod CIDRs changed, or (on a resync, `check`) the table is
/// not as weft last left it: someone else flushed or edited it. Only the
/// node sets' elements when just the nodes changed. Comparing inputs, not
/// rendered JSON, keeps a pass over thousands of nodes from building a rule
/// set it would not apply, and a resync of an intact table writes nothing.
#[derive(Default)]
pub struct Nftables {
    last: Option<NftTable>,
    /// Digest of the table's listing right after weft's last write.
    digest: Option<u64>,
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
    /// Brings the table in line with `want`; `check` also compares the
    /// table itself with weft's last write (the periodic resync).
    pub async fn sync(&mut self, cfg: &Config, want: &NftTable, check: bool) -> Result<NftChange, NftError> {
        let intact = !check || (self.digest.is_some() && observe::kernel::nft_table_digest(TABLE).await == self.digest);
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
            Some(d) => {
                apply(d).await.map_err(|e| tracing::info!("node set update failed, replacing the table: {e}")).is_ok()
            }
            None => false,
        };
        let change = if applied_delta {
            NftChange::Elements
        } else {
            // Forget the last write first: if this one fails, the next pass must not trust the table.
            self.last = None;
            apply(ruleset(cfg, want)).await?;
            tracing::info!(table = TABLE, node_addresses = want.node_ips.len(), "replaced nftables table");
            NftChange::Table
        };
        self.last = Some(want.clone());
        self.digest = observe::kernel::nft_table_digest(TABLE).await;
        Ok(change)
    }
}

async fn apply(rules: Value) -> Result<(), NftError> {
    let parsed: nftables::schema::Nftables = serde_json::from_value(rules).map_err(NftError::Schema)?;
    tokio::task::spawn_blocking(move || nftables::helper::apply_ruleset(&parsed))
        .await
        .map_err(NftError::Task)?
        .map_err(NftError::Nft)
}

/// Packets dropped so far by each of weft's named counters (reset when the
/// table is replaced); empty when the table or `nft` is missing.
pub async fn drop_counts() -> Vec<(&'static str, u64)> {
    let listing = tokio::task::spawn_blocking(|| {
        nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            ["list", "counters", "table", "inet", TABLE].iter().copied(),
        )
    })
    .await;
    match listing {
        Ok(Ok(text)) => parse_drop_counts(&text),
        _ => Vec::new(),
    }
}

fn parse_drop_counts(listing: &str) -> Vec<(&'static str, u64)> {
    let Ok(v) = serde_json::from_str::<Value>(listing) else { return Vec::new() };
    let objects = v["nftables"].as_array().cloned().unwrap_or_default();
    DROP_COUNTERS
        .iter()
        .filter_map(|(name, _)| {
            let c = objects.iter().find(|o| o["counter"]["name"] == *name)?;
            Some((*name, c["counter"]["packets"].as_u64()?))
        })
        .collect()
}

/// Deletes weft's table (for `weft-agent cleanup`); a missing table is fine.
pub async fn remove() -> Result<(), NftError> {
    apply(json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": TABLE}}},
        {"delete": {"table": {"family": "inet", "name": TABLE}}},
    ]}))
    .await
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
    }

    #[test]
    fn drop_counters_are_read_from_the_listing() {
        let listing = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}},
            {"counter": {"family": "inet", "name": "spoofed_source", "table": "weft", "handle": 3, "packets": 7, "bytes": 588}},
            {"counter": {"family": "inet", "name": "pod_vxlan", "table": "weft", "handle": 4, "packets": 0, "bytes": 0}},
            {"counter": {"family": "inet", "name": "someone_elses", "table": "weft", "handle": 5, "packets": 9, "bytes": 9}}]}"#;
        assert_eq!(parse_drop_counts(listing), vec![("spoofed_source", 7), ("pod_vxlan", 0)]);
        assert!(parse_drop_counts("not json").is_empty());
    }
}
