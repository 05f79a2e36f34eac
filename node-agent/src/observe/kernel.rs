//! Read-only looks at the kernel: what weft owns (peer routes by protocol
//! number, FDB entries and neighbours on its VXLAN device, a digest of its
//! nftables table) and the kernel release, which decides the transmit
//! checksum offload default.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use libweft::netlink::{Netlink, NetlinkError, RTPROT_WEFT_PEER, RouteEntry};

/// Every route with weft-agent's protocol number, both families.
pub async fn peer_routes(nl: &Netlink) -> Result<Vec<RouteEntry>, NetlinkError> {
    let mut routes = nl.routes(false, Some(RTPROT_WEFT_PEER)).await?;
    routes.extend(nl.routes(true, Some(RTPROT_WEFT_PEER)).await?);
    Ok(routes)
}

/// Permanent FDB entries on the VXLAN device `index`: (peer VTEP MAC, peer underlay address).
pub async fn vxlan_fdb(nl: &Netlink, index: u32) -> Result<HashSet<([u8; 6], IpAddr)>, NetlinkError> {
    Ok(nl.fdb_entries(index).await?.into_iter().collect())
}

/// Permanent neighbours on the VXLAN device `index`: peer VTEP address -> MAC.
pub async fn vxlan_neighbours(nl: &Netlink, index: u32) -> Result<HashMap<IpAddr, Vec<u8>>, NetlinkError> {
    Ok(nl.permanent_neighbours(index).await?.into_iter().collect())
}

/// A digest of `nft -j -s list table inet <table>`, or `None` when the
/// table is missing (or nft cannot tell). Any change to the table, by weft
/// or anyone else, changes it; rule handles are part of the listing.
/// A counter counting packets is no change.
pub async fn nft_table_digest(table: &'static str) -> Option<u64> {
    let listing = tokio::task::spawn_blocking(move || {
        nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            ["-s", "list", "table", "inet", table].iter().copied(),
        )
    })
    .await
    .ok()?
    .ok()?;
    Some(libweft::netlink::stable_hash(without_counts(&listing).bytes()))
}

/// The listing without the values of named counters: `-s` leaves out
/// anonymous counters' values but not those of named counter objects,
/// and a packet dropped must not make the table look edited (a resync
/// would then replace it, resetting the counters it exports).
fn without_counts(listing: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(listing) else { return listing.to_string() };
    for o in v["nftables"].as_array_mut().into_iter().flatten() {
        if let Some(counter) = o.get_mut("counter").and_then(|c| c.as_object_mut()) {
            counter.remove("packets");
            counter.remove("bytes");
        }
    }
    v.to_string()
}

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

/// Transmit checksum offload when the configuration does not say: on,
/// except on kernels before 5.7 (calico#3145: SNATed VXLAN packets leave
/// with a bad checksum). See `apply::kernel` for the measurements.
pub fn offload_default() -> bool {
    static DEFAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        safe_on(&release)
    })
}

/// Whether a kernel release (`6.18.44-…`) has the calico#3145 fix; an
/// unreadable release is treated as old.
fn safe_on(release: &str) -> bool {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 7),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counted_packets_do_not_change_the_digest_but_edits_do() {
        let listing = |packets: u64, drop: &str| {
            format!(
                r#"{{"nftables": [{{"table": {{"family": "inet", "name": "t", "handle": 1}}}},
                {{"counter": {{"family": "inet", "name": "c", "table": "t", "handle": 1, "packets": {packets}, "bytes": {}}}}},
                {{"rule": {{"family": "inet", "table": "t", "chain": "x", "handle": 4, "expr": [{{"counter": "c"}}, {{"{drop}": null}}]}}}}]}}"#,
                packets * 60
            )
        };
        let d = super::without_counts;
        assert_eq!(d(&listing(0, "drop")), d(&listing(7, "drop")));
        assert_ne!(d(&listing(0, "drop")), d(&listing(0, "accept")));
        assert_eq!(d("not json"), "not json");
    }

    #[test]
    fn offload_is_on_from_kernel_5_7() {
        for (release, on) in [
            ("6.18.44-fc-v669", true),
            ("5.7.0", true),
            ("5.15.0-134-generic", true),
            ("5.6.19", false),
            ("4.19.0-26-amd64", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(super::safe_on(release), on, "{release}");
        }
    }
}
