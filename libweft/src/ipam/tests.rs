//! The allocator's logic, over the in-memory store.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::fake::{CrashAt, MemStore};
use super::{Allocation, Allocator, Attachment, IpamError, Store};

pub fn att(id: &str) -> Attachment {
    Attachment { container_id: id.into(), ifname: "eth0".into() }
}

pub fn net(s: &str) -> IpNetwork {
    s.parse().expect("test subnet")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub fn ips(a: &[Allocation]) -> Vec<IpAddr> {
    a.iter().map(|a| a.ip).collect()
}

fn alloc(subnets: &[&str]) -> Allocator<MemStore> {
    Allocator::new(MemStore::default(), subnets.iter().map(|s| net(s)).collect()).expect("allocator")
}

fn first_ip(a: &Allocator<impl Store>, id: &str) -> IpAddr {
    a.allocate(&att(id)).expect("allocate")[0].ip
}

#[test]
fn skips_network_and_broadcast_goes_round_robin_and_reports_exhaustion() {
    let a = alloc(&["10.0.0.0/29"]); // usable: .1 to .6
    let got: Vec<IpAddr> = (0..6).map(|i| first_ip(&a, &format!("c{i}"))).collect();
    assert_eq!(got, (1..=6).map(|i| ip(&format!("10.0.0.{i}"))).collect::<Vec<_>>());
    let err = a.allocate(&att("c6")).expect_err("the /29 is full");
    assert!(matches!(err, IpamError::Exhausted { subnet } if subnet == net("10.0.0.0/29")), "{err:?}");
    assert_eq!(err.to_string(), "no free address left in 10.0.0.0/29");
    // The cursor is at .6: the search wraps to the start and finds .2 and .4.
    a.release(&att("c3")).expect("release");
    a.release(&att("c1")).expect("release");
    assert_eq!(first_ip(&a, "c7"), ip("10.0.0.2"));
    assert_eq!(first_ip(&a, "c8"), ip("10.0.0.4"));
}

#[test]
fn a_slash_30_has_two_addresses() {
    let a = alloc(&["10.0.0.4/30"]);
    assert_eq!(first_ip(&a, "c1"), ip("10.0.0.5"));
    assert_eq!(first_ip(&a, "c2"), ip("10.0.0.6"));
    assert!(matches!(a.allocate(&att("c3")), Err(IpamError::Exhausted { .. })));
}

#[test]
fn a_just_freed_address_is_not_handed_out_again_at_once() {
    let a = alloc(&["10.0.0.0/24"]);
    let first = first_ip(&a, "c1");
    a.release(&att("c1")).expect("release");
    assert_ne!(first_ip(&a, "c2"), first);
}

#[test]
fn a_repeated_allocate_does_not_move_the_cursor_back() {
    let a = alloc(&["10.0.0.0/24"]);
    assert_eq!(first_ip(&a, "c1"), ip("10.0.0.1"));
    assert_eq!(first_ip(&a, "c2"), ip("10.0.0.2"));
    a.release(&att("c2")).expect("release");
    // A retried ADD of c1 returns .1 and must leave the cursor at .2 ...
    assert_eq!(first_ip(&a, "c1"), ip("10.0.0.1"));
    // ... so that the just-freed .2 is not the next address handed out.
    assert_eq!(first_ip(&a, "c3"), ip("10.0.0.3"));
}

#[test]
fn dual_stack_gives_one_address_per_subnet_in_subnet_order() {
    let a = alloc(&["10.0.0.0/24", "fd00:10:244:1::/64"]);
    let got = a.allocate(&att("c1")).expect("allocate");
    assert_eq!(
        got,
        vec![
            Allocation { subnet: net("10.0.0.0/24"), ip: ip("10.0.0.1") },
            Allocation { subnet: net("fd00:10:244:1::/64"), ip: ip("fd00:10:244:1::1") },
        ]
    );
}

#[test]
fn allocate_find_and_release_are_idempotent() {
    let a = alloc(&["10.0.0.0/24", "fd00::/64"]);
    let one = a.allocate(&att("c1")).expect("allocate");
    assert_eq!(a.allocate(&att("c1")).expect("again"), one);
    assert_eq!(a.find(&att("c1")).expect("find"), one);
    let other_ifname = Attachment { container_id: "c1".into(), ifname: "net1".into() };
    assert_ne!(ips(&a.allocate(&other_ifname).expect("second interface")), ips(&one));
    assert_eq!(a.release(&att("c1")).expect("release"), ips(&one));
    assert_eq!(a.release(&att("c1")).expect("release again"), Vec::<IpAddr>::new());
    assert!(a.find(&att("c1")).expect("find").is_empty());
    assert!(a.release(&att("never-added")).expect("release unknown").is_empty());
    assert_eq!(a.find(&other_ifname).expect("find").len(), 2);
}

#[test]
fn gc_keeps_valid_attachments_and_frees_the_rest() {
    let a = alloc(&["10.0.0.0/24"]);
    for i in 0..4 {
        a.allocate(&att(&format!("c{i}"))).expect("allocate");
    }
    let valid: HashSet<Attachment> = [att("c1"), att("c3"), att("not-here")].into_iter().collect();
    assert_eq!(a.gc(&valid).expect("gc"), vec![ip("10.0.0.1"), ip("10.0.0.3")]);
    assert_eq!(a.gc(&valid).expect("gc again"), Vec::<IpAddr>::new());
    assert_eq!(a.find(&att("c1")).expect("find").len(), 1);
    assert!(a.find(&att("c0")).expect("find").is_empty());
    assert_eq!(a.attachments().expect("attachments"), vec![att("c1"), att("c3")]);
}

#[test]
fn usage_counts_reservations_against_usable_addresses() {
    let a = alloc(&["10.0.0.0/24", "fd00::/120"]);
    a.allocate(&att("c1")).expect("allocate");
    let u = a.usage().expect("usage");
    assert_eq!((u[0].subnet, u[0].used, u[0].capacity), (net("10.0.0.0/24"), 1, 254));
    assert_eq!((u[1].used, u[1].capacity), (1, 255));
    let capacity = |s| alloc(&[s]).usage().expect("usage")[0].capacity;
    assert_eq!(capacity("fd00::/64"), (1u128 << 64) - 1);
    assert_eq!(capacity("::/0"), u128::MAX);
    assert_eq!(capacity("0.0.0.0/0"), (1u128 << 32) - 2);
    assert_eq!(capacity("10.0.0.0/30"), 2);
    assert_eq!(capacity("fd00::/126"), 3);
}

#[test]
fn subnets_without_usable_addresses_are_refused() {
    for s in ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127", "fd00::1/128"] {
        let err = Allocator::new(MemStore::default(), vec![net(s)]).err();
        assert!(matches!(err, Some(IpamError::SubnetTooSmall { subnet, .. }) if subnet == net(s)), "{s}: {err:?}");
    }
    assert!(Allocator::new(MemStore::default(), vec![net("10.0.0.0/30"), net("fd00::/126")]).is_ok());
}

#[test]
fn overlapping_subnets_are_refused() {
    let err = Allocator::new(MemStore::default(), vec![net("10.0.0.0/25"), net("fd00::/64"), net("10.0.0.0/24")]).err();
    assert_eq!(err.map(|e| e.to_string()).as_deref(), Some("subnets 10.0.0.0/25 and 10.0.0.0/24 overlap"));
    assert!(Allocator::new(MemStore::default(), vec![net("10.0.0.0/25"), net("10.0.0.128/25")]).is_ok());
}

#[test]
fn a_huge_ipv6_subnet_is_searched_from_the_cursor_only() {
    let a = alloc(&["fd00::/64"]);
    a.store.state.borrow_mut().cursors.insert(net("fd00::/64"), ip("fd00::ffff:ffff:ffff:fffe"));
    // The last address, then wrap to the first: no walk over 2^64 addresses.
    assert_eq!(first_ip(&a, "c1"), ip("fd00::ffff:ffff:ffff:ffff"));
    assert_eq!(first_ip(&a, "c2"), ip("fd00::1"));
}

#[test]
fn a_crash_between_intent_and_reservation_is_repaired_by_the_next_allocate() {
    let mem = MemStore::default();
    let subnets = vec![net("10.0.0.0/24"), net("fd00::/64")];
    // Write 0 is the index, write 1 the first reservation: die before it.
    let crashing = Allocator::new(CrashAt::new(mem.clone(), Some(1)), subnets.clone()).expect("allocator");
    assert!(crashing.allocate(&att("c1")).is_err());
    assert!(mem.state.borrow().reservations.is_empty());
    assert_eq!(mem.state.borrow().indexes[&att("c1")].len(), 2);
    let retry = Allocator::new(mem.clone(), subnets).expect("allocator");
    assert_eq!(ips(&retry.allocate(&att("c1")).expect("retry")), vec![ip("10.0.0.1"), ip("fd00::1")]);
    assert_eq!(mem.state.borrow().reservations.len(), 2);
}

#[test]
fn a_listed_address_taken_by_another_attachment_is_replaced_not_shared() {
    let a = alloc(&["10.0.0.0/24"]);
    a.store.state.borrow_mut().indexes.insert(att("c1"), vec![ip("10.0.0.9")]);
    a.store.state.borrow_mut().reservations.insert(ip("10.0.0.9"), att("other"));
    assert_ne!(first_ip(&a, "c1"), ip("10.0.0.9"));
    assert_eq!(a.store.state.borrow().reservations[&ip("10.0.0.9")], att("other"));
    // Releasing c1 leaves the other attachment's address alone.
    a.release(&att("c1")).expect("release");
    assert_eq!(a.store.state.borrow().reservations[&ip("10.0.0.9")], att("other"));
}

#[test]
fn an_address_the_subnets_no_longer_allow_is_given_back() {
    let mem = MemStore::default();
    let old = Allocator::new(mem.clone(), vec![net("10.0.0.0/24")]).expect("allocator");
    mem.state.borrow_mut().cursors.insert(net("10.0.0.0/24"), ip("10.0.0.126"));
    assert_eq!(first_ip(&old, "c1"), ip("10.0.0.127"));
    // The node's subnet shrank: .127 is now the broadcast address.
    let new = Allocator::new(mem.clone(), vec![net("10.0.0.0/25")]).expect("allocator");
    let got = first_ip(&new, "c1");
    assert!(got != ip("10.0.0.127") && net("10.0.0.0/25").contains(got), "{got}");
    assert_eq!(mem.state.borrow().reservations.keys().copied().collect::<Vec<_>>(), vec![got]);
}

/// Random interleavings of allocate, release, gc and crashes, as a runtime
/// causes them: ADD of new attachments, ADD retried for live ones, DEL (the
/// pod is gone whether or not DEL completes), GC with the live set plus some
/// dead ones, and a crash at a random write of any call, after which a fresh
/// allocator (a new plugin process) carries on over the same state.
///
/// Invariants: no address is held by two live attachments; each live
/// attachment's addresses stay reserved for it and are what `find` returns;
/// a retried ADD returns the same addresses; every reservation is listed in
/// its owner's index, so a completed DEL leaves nothing behind; after a GC
/// with exactly the live set the store holds exactly the live attachments'
/// addresses.
pub fn random_interleavings<S: Store>(seed: u64, steps: usize, open: &dyn Fn(Option<usize>) -> Allocator<S>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut live: BTreeMap<Attachment, Vec<IpAddr>> = BTreeMap::new();
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        let who = att(&format!("c{}", rng.random_range(0..24)));
        let crash_at = rng.random_bool(0.3).then(|| rng.random_range(0..5));
        let a = open(crash_at);
        match rng.random_range(0..10) {
            0..=4 => match (a.allocate(&who), live.get(&who)) {
                (Ok(got), Some(held)) => assert_eq!(&ips(&got), held, "{ctx}: retried ADD of {who:?}"),
                (Ok(got), None) => {
                    assert_eq!(got.len(), 2, "{ctx}");
                    live.insert(who, ips(&got));
                }
                // A failed ADD is followed by a DEL in a runtime; here its leftovers wait for GC.
                (Err(_), _) => {}
            },
            5..=7 => {
                live.remove(&who);
                if a.release(&who).is_ok() {
                    let left = a.store.reservations().expect("reservations").into_iter().find(|r| r.owner == who);
                    assert!(left.is_none(), "{ctx}: {who:?} still holds {left:?} after a completed DEL");
                }
            }
            _ => {
                let mut valid: HashSet<Attachment> = live.keys().cloned().collect();
                valid.insert(who);
                let _ = a.gc(&valid);
            }
        }
        let check = open(None);
        // What makes `find` and `release` complete without a scan.
        for r in check.store.reservations().expect("reservations") {
            let listed = check.store.index(&r.owner).expect("index");
            assert!(listed.contains(&r.ip), "{ctx}: {} of {:?} is not in its index {listed:?}", r.ip, r.owner);
        }
        let mut seen = HashSet::new();
        for (holder, held) in &live {
            for ip in held {
                assert!(seen.insert(*ip), "{ctx}: {ip} held by two live attachments");
            }
            let found = check.find(holder).unwrap_or_else(|e| panic!("{ctx}: find: {e}"));
            assert_eq!(&ips(&found), held, "{ctx}: find({holder:?})");
        }
    }
    let a = open(None);
    a.gc(&live.keys().cloned().collect()).unwrap_or_else(|e| panic!("seed {seed}: final gc: {e}"));
    let mut expected: Vec<IpAddr> = live.values().flatten().copied().collect();
    expected.sort();
    let mut held: Vec<IpAddr> = a.store.reservations().expect("reservations").into_iter().map(|r| r.ip).collect();
    held.sort();
    assert_eq!(held, expected, "seed {seed}: after GC the store holds exactly the live addresses");
    let indexed: Vec<Attachment> = a.attachments().expect("attachments");
    assert!(indexed.iter().all(|i| live.contains_key(i)), "seed {seed}: stale index left: {indexed:?}");
}

/// Fixed seeds, plus a few new ones each run (printed by the assertions).
pub fn seeds() -> Vec<u64> {
    let mut seeds = vec![1, 2, 3, 42];
    seeds.extend((0..4).map(|_| rand::rng().random::<u64>()));
    seeds
}

#[test]
fn randomized_no_address_is_ever_held_twice() {
    for seed in seeds() {
        let mem = MemStore::default();
        let subnets = vec![net("10.0.0.0/28"), net("fd00::/64")];
        let open = |crash_at| Allocator::new(CrashAt::new(mem.clone(), crash_at), subnets.clone()).expect("allocator");
        random_interleavings(seed, 4000, &open);
    }
}

/// A clock the test moves by hand, in seconds.
fn manual_clock() -> (std::sync::Arc<std::sync::atomic::AtomicU64>, super::Clock) {
    let secs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1000));
    let read = secs.clone();
    (secs, std::sync::Arc::new(move || std::time::Duration::from_secs(read.load(std::sync::atomic::Ordering::SeqCst))))
}

#[test]
fn a_released_address_is_handed_out_again_only_after_its_quarantine() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Duration;
    let (now, clock) = manual_clock();
    let a = alloc(&["10.0.0.0/29"]).with_quarantine(Duration::from_secs(100)).with_clock(clock);
    for i in 0..6 {
        first_ip(&a, &format!("c{i}"));
    }
    assert_eq!(a.release(&att("c2")).expect("release"), [ip("10.0.0.3")]);
    now.fetch_add(99, SeqCst);
    let err = a.allocate(&att("c6")).expect_err("the only free address is quarantined");
    assert!(
        matches!(err, IpamError::Quarantined { quarantined: 1, free_in, .. } if free_in == Duration::from_secs(1)),
        "{err:?}"
    );
    assert!(err.to_string().contains("1 released addresses are quarantined"), "{err}");
    assert_eq!(a.usage().expect("usage")[0].quarantined, 1);
    now.fetch_add(1, SeqCst);
    assert_eq!(first_ip(&a, "c6"), ip("10.0.0.3"), "free again once the quarantine is over");
    assert_eq!(a.usage().expect("usage")[0].quarantined, 0);
    // With nothing released the pool is plainly exhausted.
    assert!(matches!(a.allocate(&att("c7")), Err(IpamError::Exhausted { .. })));
}

#[test]
fn an_address_freed_by_gc_is_quarantined_and_gc_drops_only_expired_records() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Duration;
    let (now, clock) = manual_clock();
    let mem = MemStore::default();
    let a = Allocator::new(mem.clone(), vec![net("10.0.0.0/30")])
        .expect("allocator")
        .with_quarantine(Duration::from_secs(100))
        .with_clock(clock);
    first_ip(&a, "keep");
    first_ip(&a, "gone");
    assert_eq!(a.gc(&[att("keep")].into()).expect("gc"), [ip("10.0.0.2")]);
    assert!(matches!(a.allocate(&att("new")), Err(IpamError::Quarantined { .. })));
    now.fetch_add(50, SeqCst);
    a.gc(&[att("keep")].into()).expect("gc");
    assert!(mem.state.borrow().quarantine.contains_key(&ip("10.0.0.2")), "GC never reclaims a running quarantine");
    assert!(matches!(a.allocate(&att("new")), Err(IpamError::Quarantined { .. })));
    now.fetch_add(50, SeqCst);
    a.gc(&[att("keep")].into()).expect("gc");
    assert!(mem.state.borrow().quarantine.is_empty(), "expired records are dropped");
    assert_eq!(first_ip(&a, "new"), ip("10.0.0.2"));
}

#[test]
fn a_longer_quarantine_holds_addresses_released_before_it() {
    use std::time::Duration;
    let (_now, clock) = manual_clock();
    let mem = MemStore::default();
    let open = |q| {
        Allocator::new(mem.clone(), vec![net("10.0.0.0/30")])
            .expect("allocator")
            .with_quarantine(q)
            .with_clock(clock.clone())
    };
    // Released by a DEL that knew no quarantine (its allocator has none) ...
    let del = open(Duration::ZERO);
    first_ip(&del, "a");
    first_ip(&del, "b");
    del.release(&att("a")).expect("release");
    // ... the next ADD's quarantine still applies to it.
    assert!(matches!(open(Duration::from_secs(60)).allocate(&att("c")), Err(IpamError::Quarantined { .. })));
}
