//! nftables element changes written over nfnetlink (`apply::nft_elements`),
//! on the real kernel in a namespace the test creates: one change of
//! 10,000 addresses to one set, the size of a policy table's verdict map at
//! 10,000 pods, lands whole. One element list past 64 KiB wrapped its
//! 16-bit attribute length, and the kernel refused or cut the change.
//!
//! One test per binary: the element writer keeps one socket for the
//! process, opened in the namespace of its first use.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libweft::netns::NetNs;
use libweft::testutil::{TestNs, have_privileges};
use weft_agent::apply::nft_elements;
use weft_agent::desired::nft_plan::{Element, NftPlan, Verb};

const TABLE: &str = "weft-test";

/// The elements of set `set` of `inet weft-test`, as nft lists them.
fn listed(ns: &TestNs, set: &str) -> Vec<IpAddr> {
    let out = ns.exec_ok(&["nft", "-j", "list", "set", "inet", TABLE, set]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sets = v["nftables"].as_array().unwrap();
    let elem = sets.iter().find_map(|o| o["set"]["elem"].as_array()).cloned().unwrap_or_default();
    elem.iter().map(|e| e.as_str().unwrap().parse().unwrap()).collect()
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): cargo test -- --ignored"]
fn one_change_of_ten_thousand_addresses_lands_whole() {
    if !have_privileges() {
        return;
    }
    let ns = TestNs::new("elems");
    ns.exec_ok(&["nft", &format!("add table inet {TABLE}")]);
    ns.exec_ok(&["nft", &format!("add set inet {TABLE} v4 {{ type ipv4_addr; }}")]);
    ns.exec_ok(&["nft", &format!("add set inet {TABLE} v6 {{ type ipv6_addr; }}")]);
    let v4: Vec<IpAddr> = (0..10_000u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + i))).collect();
    let v6: Vec<IpAddr> =
        (0..10_000u128).map(|i| IpAddr::V6(Ipv6Addr::from(0xfd00_0010_0244_0000_u128 << 64 | i))).collect();
    let mut plan = NftPlan::default();
    plan.elements(Verb::Add, TABLE, "v4".into(), v4.iter().copied().map(Element::Addr).collect());
    plan.elements(Verb::Add, TABLE, "v6".into(), v6.iter().copied().map(Element::Addr).collect());
    let batch = nft_elements::encode_plan(&plan).expect("addresses have a netlink encoding");
    // On a throwaway thread inside the namespace: the socket is opened there.
    NetNs::open(&ns.path()).unwrap().run(move || nft_elements::apply(&batch, None)).unwrap().unwrap();
    let (mut got4, mut got6) = (listed(&ns, "v4"), listed(&ns, "v6"));
    got4.sort();
    got6.sort();
    assert_eq!(got4.len(), 10_000, "every IPv4 address of the one change is in the set");
    assert_eq!(got4, v4);
    assert_eq!(got6.len(), 10_000, "every IPv6 address of the one change is in the set");
    assert_eq!(got6, v6);

    // And one change deletes them all again.
    let mut plan = NftPlan::default();
    plan.elements(Verb::Delete, TABLE, "v6".into(), v6.into_iter().map(Element::Addr).collect());
    let batch = nft_elements::encode_plan(&plan).unwrap();
    NetNs::open(&ns.path()).unwrap().run(move || nft_elements::apply(&batch, None)).unwrap().unwrap();
    assert!(listed(&ns, "v6").is_empty());
    assert_eq!(listed(&ns, "v4").len(), 10_000, "the other set untouched");
}
