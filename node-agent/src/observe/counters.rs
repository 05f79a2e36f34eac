//! The packet counters of weft's nftables tables, read for `/metrics`:
//! what `inet weft` dropped and why, what `inet weft-policy` denied or held
//! for pending pods, by direction and by policy. Only reads; the counters'
//! names are in [`crate::base::names`].

use std::collections::HashMap;

use crate::base::names::{DROP_COUNTERS, POLICY_TABLE, WEFT_TABLE, denied_counter, pending_counter};
use crate::wire_policy::Direction;

/// Packets counted so far by each named counter of table `inet <table>`
/// (`nft list counters`); empty when the table or `nft` is missing.
pub async fn nft_counters(table: &'static str) -> HashMap<String, u64> {
    let listing = tokio::task::spawn_blocking(move || {
        nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            ["list", "counters", "table", "inet", table].iter().copied(),
        )
    })
    .await;
    match listing {
        Ok(Ok(text)) => parse_counters(&text),
        _ => HashMap::new(),
    }
}

/// Named counters (name -> packets) in an `nft -j` listing.
pub fn parse_counters(listing: &str) -> HashMap<String, u64> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(listing) else { return HashMap::new() };
    let objects = v["nftables"].as_array().cloned().unwrap_or_default();
    objects
        .iter()
        .filter_map(|o| Some((o["counter"]["name"].as_str()?.to_string(), o["counter"]["packets"].as_u64()?)))
        .collect()
}

/// Packets dropped so far by each of weft's named counters (reset when the
/// table is replaced); empty when the table or `nft` is missing.
pub async fn drop_counts() -> Vec<(&'static str, u64)> {
    drop_counts_in(&nft_counters(WEFT_TABLE).await)
}

fn drop_counts_in(counters: &HashMap<String, u64>) -> Vec<(&'static str, u64)> {
    DROP_COUNTERS.iter().filter_map(|(name, _)| Some((*name, *counters.get(*name)?))).collect()
}

/// The policy table's named counters (reset when the table is replaced):
/// name → packets; empty when the table or `nft` is missing.
pub async fn policy_counters() -> HashMap<String, u64> {
    nft_counters(POLICY_TABLE).await
}

/// The policy table's counters by direction.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets the group chains dropped: no policy allowed them.
    pub denied: Vec<(Direction, u64)>,
    /// Packets dropped to or from pods still pending.
    pub pending: Vec<(Direction, u64)>,
}

impl Counts {
    /// `(direction label, packets)`, as the metrics take them.
    pub fn labelled(counts: &[(Direction, u64)]) -> Vec<(String, u64)> {
        counts.iter().map(|(d, n)| (d.to_string(), *n)).collect()
    }
}

/// Picks the per-direction counters out of [`policy_counters`].
pub fn counts_in(counters: &HashMap<String, u64>) -> Counts {
    let by = |name: fn(Direction) -> String| {
        [Direction::Ingress, Direction::Egress]
            .into_iter()
            .filter_map(|d| Some((d, *counters.get(&name(d))?)))
            .collect()
    };
    Counts { denied: by(denied_counter), pending: by(pending_counter) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list counters table inet <table>` with these counters.
    fn listing(table: &str, counters: &[(&str, u64)]) -> String {
        let objects: Vec<serde_json::Value> = counters
            .iter()
            .enumerate()
            .map(|(i, (name, packets))| {
                serde_json::json!({"counter": {"family": "inet", "name": name, "table": table,
                    "handle": i + 3, "packets": packets, "bytes": packets * 84}})
            })
            .collect();
        let mut all = vec![serde_json::json!({"metainfo": {"json_schema_version": 1}})];
        all.extend(objects);
        serde_json::json!({ "nftables": all }).to_string()
    }

    #[test]
    fn drop_counters_are_read_from_the_listing() {
        let listing = listing("weft", &[("spoofed_source", 7), ("pod_vxlan", 0), ("someone_elses", 9)]);
        let counters = parse_counters(&listing);
        assert_eq!(drop_counts_in(&counters), vec![("spoofed_source", 7), ("pod_vxlan", 0)]);
        assert!(parse_counters("not json").is_empty());
    }

    #[test]
    fn denied_and_pending_counters_are_read_by_direction() {
        let listing = listing("weft-policy", &[("ingress_denied", 7), ("egress_denied", 2), ("ingress_pending", 3)]);
        let c = counts_in(&parse_counters(&listing));
        assert_eq!(c.denied, vec![(Direction::Ingress, 7), (Direction::Egress, 2)]);
        assert_eq!(c.pending, vec![(Direction::Ingress, 3)]);
        assert_eq!(counts_in(&parse_counters("")), Counts::default());
        assert_eq!(Counts::labelled(&c.pending), [("ingress".to_string(), 3)]);
    }
}
