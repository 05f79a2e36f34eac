//! Read-only looks at the kernel: what weft owns (peer routes by protocol
//! number, FDB entries and neighbours on its VXLAN device, a digest of its
//! nftables table) and the kernel release, which decides the transmit
//! checksum offload default.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use libweft::netlink::{Netlink, NetlinkError, RTPROT_WEFT_PEER, RouteEntry, StableHasher};

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

/// A digest of `nft -j list table inet <table>`, or `None` when the
/// table is missing (or nft cannot tell). Any change to the table, by weft
/// or anyone else, changes it; rule handles are part of the listing.
/// Counters counting packets are no change (see [`stateless_digest`]).
pub async fn nft_table_digest(table: &'static str) -> Option<u64> {
    let listing = tokio::task::spawn_blocking(move || {
        nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            ["list", "table", "inet", table].iter().copied(),
        )
    })
    .await
    .ok()?
    .ok()?;
    Some(stateless_digest(&listing))
}

/// The digest of an `nft -j` listing without the values counters hold.
/// `nft -s` does not help here: in JSON it still prints a named counter's
/// packets and bytes, so every counted drop looked like drift and made the
/// agent replace its table (and restart its counters).
///
/// The listing is hashed as it is parsed, token by token: the policy
/// table's listing is 2.6 MB at 10,000 pods and 1,000 policies, and as a
/// `serde_json::Value` tree it took the agent from 57 to 109 MiB at every
/// resync.
pub fn stateless_digest(listing: &str) -> u64 {
    let mut digest = StableHasher::new();
    let mut de = serde_json::Deserializer::from_str(listing);
    match serde::de::DeserializeSeed::deserialize(Tokens(&mut digest), &mut de).and_then(|()| de.end()) {
        Ok(()) => digest.finish(),
        // Not JSON: digest it as it is (never equal to a parsed one by chance).
        Err(_) => libweft::netlink::stable_hash(listing.bytes()),
    }
}

/// Feeds one JSON value's tokens to the digest, leaving out the values of
/// `packets` and `bytes` keys.
struct Tokens<'a>(&'a mut StableHasher);

impl<'de> serde::de::DeserializeSeed<'de> for Tokens<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Tokens<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.feed(if v { b"t" } else { b"f" });
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.feed(format!("i{v}").as_bytes());
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.feed(format!("u{v}").as_bytes());
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.feed(format!("f{v}").as_bytes());
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        // Length first, so that no two strings (or string sequences) hash alike by concatenation.
        self.0.feed(format!("s{}:", v.len()).as_bytes());
        self.0.feed(v.as_bytes());
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.feed(b"n");
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let d = self.0;
        d.feed(b"[");
        while seq.next_element_seed(Tokens(&mut *d))?.is_some() {}
        d.feed(b"]");
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let d = self.0;
        d.feed(b"{");
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "packets" || key == "bytes" {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            d.feed(format!("k{}:", key.len()).as_bytes());
            d.feed(key.as_bytes());
            map.next_value_seed(Tokens(&mut *d))?;
        }
        d.feed(b"}");
        Ok(())
    }
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

    #[test]
    fn counting_packets_does_not_change_the_table_digest_but_a_rule_does() {
        // As `nft -j list table` prints them, before and after a counted drop.
        let table = |packets: u64, verdict: &str| {
            format!(
                r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6", "json_schema_version": 1}}}},
                {{"table": {{"family": "inet", "name": "t", "handle": 1}}}},
                {{"counter": {{"family": "inet", "name": "a", "table": "t", "handle": 2, "packets": {packets}, "bytes": {}}}}},
                {{"rule": {{"family": "inet", "table": "t", "chain": "o", "handle": 3,
                  "expr": [{{"counter": {{"packets": {packets}, "bytes": 0}}}}, {{"counter": "a"}}, {{"{verdict}": null}}]}}}}]}}"#,
                packets * 84
            )
        };
        let digest = super::stateless_digest;
        assert_eq!(digest(&table(0, "drop")), digest(&table(7, "drop")));
        assert_ne!(digest(&table(0, "drop")), digest(&table(0, "accept")));
        // Tokens, not text: layout is no change; a moved element or a split string is.
        assert_eq!(digest(r#"{"elem": ["10.0.0.1", "10.0.0.2"]}"#), digest(r#"{ "elem":["10.0.0.1","10.0.0.2"] }"#));
        assert_ne!(digest(r#"{"elem": ["10.0.0.1", "10.0.0.2"]}"#), digest(r#"{"elem": ["10.0.0.2", "10.0.0.1"]}"#));
        assert_ne!(digest(r#"["ab", "c"]"#), digest(r#"["a", "bc"]"#));
        assert_ne!(digest(r#"{"elem": [1]}"#), digest(r#"{"elem": [1]"#), "not JSON is digested as text");
    }
}
