//! IP address management: which pod holds which address.
//!
//! The allocator is pure logic over a small [`Store`] trait, so it is tested
//! against an in-memory store (including injected crashes) as well as the
//! real [`DiskStore`]. Every operation runs under the store's lock.
//!
//! Crash safety rests on one ordering. An attachment's *index* (the list of
//! its addresses) is written first, as an intent; the *reservation* of each
//! address (an exclusive create, the single source of truth for ownership)
//! comes second. So at any instant a crash leaves either
//! - an index naming addresses not yet reserved: the next `allocate` of the
//!   same attachment reserves them (or picks others if meanwhile taken), or
//! - reservations listed in an index: complete.
//!
//! `release` does the reverse (reservations, then index). `gc` frees every
//! reservation whose owner is not valid or whose owner's index does not
//! list it, and every index of an invalid attachment. No path ever lets two
//! attachments hold one address: a reservation is only ever created
//! exclusively and only ever deleted by, or on behalf of, its owner.

pub mod disk;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;

pub use self::disk::DiskStore;

/// IPAM failures; each names the subnet, file or attachment involved.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the subnet is reserved.
    #[error("no free address left in {subnet}")]
    Exhausted {
        /// The full subnet.
        subnet: IpNetwork,
    },
    /// The subnet has no usable address at all.
    #[error("subnet {subnet} is too small to allocate from: {reason}")]
    SubnetTooSmall {
        /// The subnet.
        subnet: IpNetwork,
        /// Why.
        reason: &'static str,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process held the lock too long.
    #[error("timed out after {waited:?} waiting for the IPAM lock {path}")]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The network name cannot name a directory.
    #[error("network name {name:?} cannot be used as an IPAM directory name")]
    BadNetworkName {
        /// The name.
        name: String,
    },
}

/// One attachment as CNI names it: container ID and interface name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// An address handed to an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The subnet it came from.
    pub subnet: IpNetwork,
    /// The address.
    pub ip: IpAddr,
}

/// How full a subnet is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetUsage {
    /// The subnet.
    pub subnet: IpNetwork,
    /// Reserved addresses.
    pub used: u128,
    /// Usable addresses (without the network and broadcast addresses).
    pub capacity: u128,
}

/// A reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The address.
    pub ip: IpAddr,
    /// Who holds it.
    pub owner: Attachment,
    /// When it was made (for GC grace periods).
    pub since: SystemTime,
}

/// Storage for reservations, indexes and cursors. Every call happens inside
/// [`Store::locked`]. Implementations must make each write atomic.
pub trait Store {
    /// Runs `f` holding the store's exclusive lock.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, IpamError>) -> Result<T, IpamError>;
    /// Who holds `ip`, if anyone.
    fn owner(&self, ip: IpAddr) -> Result<Option<Attachment>, IpamError>;
    /// Exclusively reserves `ip`; `Ok(false)` if it is already reserved.
    fn reserve(&self, ip: IpAddr, owner: &Attachment) -> Result<bool, IpamError>;
    /// Deletes the reservation of `ip` (no error if absent).
    fn unreserve(&self, ip: IpAddr) -> Result<(), IpamError>;
    /// Every reservation.
    fn reservations(&self) -> Result<Vec<Reservation>, IpamError>;
    /// The attachment's index, if it has one.
    fn index(&self, att: &Attachment) -> Result<Option<Vec<IpAddr>>, IpamError>;
    /// Replaces the attachment's index.
    fn write_index(&self, att: &Attachment, ips: &[IpAddr]) -> Result<(), IpamError>;
    /// Deletes the attachment's index (no error if absent).
    fn remove_index(&self, att: &Attachment) -> Result<(), IpamError>;
    /// Every attachment that has an index, with the index's age.
    fn indexes(&self) -> Result<Vec<(Attachment, SystemTime)>, IpamError>;
    /// The last address handed out from `subnet`.
    fn cursor(&self, subnet: &IpNetwork) -> Result<Option<IpAddr>, IpamError>;
    /// Records the last address handed out from `subnet`.
    fn set_cursor(&self, subnet: &IpNetwork, ip: IpAddr) -> Result<(), IpamError>;
    /// Removes leftovers of interrupted writes (temporary files).
    fn sweep(&self) -> Result<(), IpamError>;
}

/// The usable address range of a subnet as integers: `[first, last]`.
fn usable_range(subnet: &IpNetwork) -> Result<(u128, u128), IpamError> {
    let too_small = |reason| IpamError::SubnetTooSmall { subnet: *subnet, reason };
    match subnet {
        // .0 is the node's VXLAN VTEP address, the last one the broadcast.
        IpNetwork::V4(n) => {
            if n.prefix() > 30 {
                return Err(too_small("IPv4 subnets need a /30 or larger"));
            }
            Ok((u128::from(u32::from(n.network())) + 1, u128::from(u32::from(n.broadcast())) - 1))
        }
        // The network address is the VTEP (and subnet-router anycast) address.
        IpNetwork::V6(n) => {
            if n.prefix() > 126 {
                return Err(too_small("IPv6 subnets need a /126 or larger"));
            }
            let first = u128::from(n.network());
            let size_minus_one = if n.prefix() == 0 { u128::MAX } else { (1u128 << (128 - n.prefix())) - 1 };
            Ok((first + 1, first + size_minus_one))
        }
    }
}

fn to_ip(subnet: &IpNetwork, n: u128) -> IpAddr {
    match subnet {
        IpNetwork::V4(_) => IpAddr::from((n as u32).to_be_bytes()),
        IpNetwork::V6(_) => IpAddr::from(n.to_be_bytes()),
    }
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Hands out addresses from the node's subnets (at most one per family).
pub struct Allocator<S: Store> {
    store: S,
    subnets: Vec<IpNetwork>,
}

impl<S: Store> Allocator<S> {
    /// `subnets` may be empty for operations that need none (release, gc).
    pub fn new(store: S, subnets: Vec<IpNetwork>) -> Result<Self, IpamError> {
        for s in &subnets {
            usable_range(s)?;
        }
        Ok(Allocator { store, subnets })
    }

    /// One address per subnet for `att`. A repeated call returns what the
    /// attachment already holds, repairing a call interrupted by a crash.
    pub fn allocate(&self, att: &Attachment) -> Result<Vec<Allocation>, IpamError> {
        self.store.locked(|| {
            let listed = self.store.index(att)?.unwrap_or_default();
            let mut held: Vec<IpAddr> = Vec::new();
            for ip in listed {
                // Keep one listed address per subnet that is ours, or free
                // (an intent a crash interrupted).
                let wanted = self.subnets.iter().any(|s| s.contains(ip) && !held.iter().any(|h| s.contains(*h)));
                match self.store.owner(ip)? {
                    Some(o) if o == *att && wanted => held.push(ip),
                    None if wanted => held.push(ip),
                    // Ours but not wanted (a subnet no longer configured): give it back.
                    Some(o) if o == *att => self.store.unreserve(ip)?,
                    // Taken by another attachment: never touch it.
                    _ => {}
                }
            }
            for subnet in &self.subnets {
                if !held.iter().any(|ip| subnet.contains(*ip)) {
                    held.push(self.next_free(subnet)?);
                }
            }
            held.sort_by_key(|ip| self.subnets.iter().position(|s| s.contains(*ip)));
            // Intent first, then the reservations (see the module comment).
            self.store.write_index(att, &held)?;
            let mut out = Vec::with_capacity(held.len());
            for ip in &held {
                if self.store.owner(*ip)?.as_ref() != Some(att) && !self.store.reserve(*ip, att)? {
                    // Cannot happen under the lock; refuse rather than share an address.
                    return Err(IpamError::Io {
                        op: "reserve (raced by a process ignoring the lock)",
                        path: PathBuf::from(ip.to_string()),
                        source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                    });
                }
                let subnet = *self.subnets.iter().find(|s| s.contains(*ip)).expect("held addresses are in our subnets");
                self.store.set_cursor(&subnet, *ip)?;
                out.push(Allocation { subnet, ip: *ip });
            }
            Ok(out)
        })
    }

    /// The next unreserved address after the subnet's cursor, wrapping once.
    fn next_free(&self, subnet: &IpNetwork) -> Result<IpAddr, IpamError> {
        let (first, last) = usable_range(subnet)?;
        let span = last - first + 1;
        let start = match self.store.cursor(subnet)? {
            Some(c) if subnet.contains(c) && (first..=last).contains(&to_int(c)) => to_int(c) - first + 1,
            _ => 0,
        };
        // IPv6 subnets are astronomically large; a bounded scan finds a free
        // address at once in practice, and exhaustion is only meaningful for small ones.
        let tries = span.min(1 << 20);
        for i in 0..tries {
            let ip = to_ip(subnet, first + (start + i) % span);
            if self.store.owner(ip)?.is_none() {
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted { subnet: *subnet })
    }

    /// The addresses `att` holds (reserved and listed), in subnet order.
    pub fn find(&self, att: &Attachment) -> Result<Vec<Allocation>, IpamError> {
        self.store.locked(|| {
            let mut out = Vec::new();
            for ip in self.store.index(att)?.unwrap_or_default() {
                if self.store.owner(ip)?.as_ref() == Some(att) {
                    let subnet = self.subnets.iter().find(|s| s.contains(ip)).copied().unwrap_or_else(|| {
                        IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix")
                    });
                    out.push(Allocation { subnet, ip });
                }
            }
            Ok(out)
        })
    }

    /// Frees what `att` holds; idempotent. Returns the freed addresses.
    pub fn release(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        self.store.locked(|| self.release_locked(att))
    }

    fn release_locked(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let mut freed = Vec::new();
        for ip in self.store.index(att)?.unwrap_or_default() {
            if self.store.owner(ip)?.as_ref() == Some(att) {
                self.store.unreserve(ip)?;
                freed.push(ip);
            }
        }
        self.store.remove_index(att)?;
        Ok(freed)
    }

    /// CNI GC: frees everything not held by an attachment in `valid`.
    pub fn gc(&self, valid: &HashSet<Attachment>) -> Result<Vec<IpAddr>, IpamError> {
        self.gc_older_than(valid, Duration::ZERO)
    }

    /// Like [`Allocator::gc`], but spares reservations and indexes younger
    /// than `grace`: an ADD in flight holds its address before the runtime
    /// lists its sandbox.
    pub fn gc_older_than(&self, valid: &HashSet<Attachment>, grace: Duration) -> Result<Vec<IpAddr>, IpamError> {
        let now = SystemTime::now();
        let young = |since: SystemTime| now.duration_since(since).unwrap_or_default() < grace;
        self.store.locked(|| {
            self.store.sweep()?;
            let mut freed = Vec::new();
            let mut indexes: BTreeMap<Attachment, SystemTime> = BTreeMap::new();
            for (att, since) in self.store.indexes()? {
                if !valid.contains(&att) && !young(since) {
                    freed.extend(self.release_locked(&att)?);
                } else {
                    indexes.insert(att, since);
                }
            }
            for r in self.store.reservations()? {
                if young(r.since) {
                    continue;
                }
                let listed =
                    indexes.contains_key(&r.owner) && self.store.index(&r.owner)?.unwrap_or_default().contains(&r.ip);
                if !valid.contains(&r.owner) || !listed {
                    self.store.unreserve(r.ip)?;
                    freed.push(r.ip);
                }
            }
            freed.sort();
            freed.dedup();
            Ok(freed)
        })
    }

    /// Every attachment that holds (or is being given) addresses.
    pub fn attachments(&self) -> Result<Vec<Attachment>, IpamError> {
        self.store.locked(|| Ok(self.store.indexes()?.into_iter().map(|(a, _)| a).collect()))
    }

    /// Reserved vs usable addresses per subnet.
    pub fn usage(&self) -> Result<Vec<SubnetUsage>, IpamError> {
        self.store.locked(|| {
            let reservations = self.store.reservations()?;
            self.subnets
                .iter()
                .map(|s| {
                    let (first, last) = usable_range(s)?;
                    let used = reservations.iter().filter(|r| s.contains(r.ip)).count() as u128;
                    Ok(SubnetUsage { subnet: *s, used, capacity: last - first + 1 })
                })
                .collect()
        })
    }
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory store for the allocator's pure-logic tests; it can be
    //! told to "crash" (fail) at the k-th write.

    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Default, Clone)]
    pub struct State {
        pub reservations: BTreeMap<IpAddr, Attachment>,
        pub indexes: BTreeMap<Attachment, Vec<IpAddr>>,
        pub cursors: BTreeMap<IpNetwork, IpAddr>,
    }

    #[derive(Default)]
    pub struct MemStore {
        pub state: RefCell<State>,
        /// Writes left before the simulated crash (`None`: never).
        pub crash_after: Cell<Option<usize>>,
    }

    impl MemStore {
        fn write(&self) -> Result<(), IpamError> {
            match self.crash_after.get() {
                Some(0) => Err(IpamError::Io {
                    op: "simulated crash",
                    path: "mem".into(),
                    source: std::io::Error::other("crash"),
                }),
                Some(n) => {
                    self.crash_after.set(Some(n - 1));
                    Ok(())
                }
                None => Ok(()),
            }
        }
    }

    impl Store for MemStore {
        fn locked<T>(&self, f: impl FnOnce() -> Result<T, IpamError>) -> Result<T, IpamError> {
            f()
        }
        fn owner(&self, ip: IpAddr) -> Result<Option<Attachment>, IpamError> {
            Ok(self.state.borrow().reservations.get(&ip).cloned())
        }
        fn reserve(&self, ip: IpAddr, owner: &Attachment) -> Result<bool, IpamError> {
            self.write()?;
            let mut s = self.state.borrow_mut();
            if s.reservations.contains_key(&ip) {
                return Ok(false);
            }
            s.reservations.insert(ip, owner.clone());
            Ok(true)
        }
        fn unreserve(&self, ip: IpAddr) -> Result<(), IpamError> {
            self.write()?;
            self.state.borrow_mut().reservations.remove(&ip);
            Ok(())
        }
        fn reservations(&self) -> Result<Vec<Reservation>, IpamError> {
            Ok(self
                .state
                .borrow()
                .reservations
                .iter()
                .map(|(ip, o)| Reservation { ip: *ip, owner: o.clone(), since: SystemTime::UNIX_EPOCH })
                .collect())
        }
        fn index(&self, att: &Attachment) -> Result<Option<Vec<IpAddr>>, IpamError> {
            Ok(self.state.borrow().indexes.get(att).cloned())
        }
        fn write_index(&self, att: &Attachment, ips: &[IpAddr]) -> Result<(), IpamError> {
            self.write()?;
            self.state.borrow_mut().indexes.insert(att.clone(), ips.to_vec());
            Ok(())
        }
        fn remove_index(&self, att: &Attachment) -> Result<(), IpamError> {
            self.write()?;
            self.state.borrow_mut().indexes.remove(att);
            Ok(())
        }
        fn indexes(&self) -> Result<Vec<(Attachment, SystemTime)>, IpamError> {
            Ok(self.state.borrow().indexes.keys().map(|a| (a.clone(), SystemTime::UNIX_EPOCH)).collect())
        }
        fn cursor(&self, subnet: &IpNetwork) -> Result<Option<IpAddr>, IpamError> {
            Ok(self.state.borrow().cursors.get(subnet).copied())
        }
        fn set_cursor(&self, subnet: &IpNetwork, ip: IpAddr) -> Result<(), IpamError> {
            self.write()?;
            self.state.borrow_mut().cursors.insert(*subnet, ip);
            Ok(())
        }
        fn sweep(&self) -> Result<(), IpamError> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::memory::MemStore;
    use super::*;

    fn att(id: &str) -> Attachment {
        Attachment { container_id: id.into(), ifname: "eth0".into() }
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn alloc(subnets: &[&str]) -> Allocator<MemStore> {
        Allocator::new(MemStore::default(), subnets.iter().map(|s| net(s)).collect()).unwrap()
    }

    fn ips(a: &[Allocation]) -> Vec<IpAddr> {
        a.iter().map(|a| a.ip).collect()
    }

    #[test]
    fn never_hands_out_network_or_broadcast_and_goes_round_robin() {
        let a = alloc(&["10.0.0.0/29"]); // usable .1 .. .6
        let got: Vec<IpAddr> = (0..6).map(|i| ips(&a.allocate(&att(&format!("c{i}"))).unwrap())[0]).collect();
        let want: Vec<IpAddr> = (1..=6).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        assert_eq!(got, want);
        let err = a.allocate(&att("c6")).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { .. }));
        assert!(err.to_string().contains("10.0.0.0/29"));
        // Freed .2: the cursor is at .6, so the search wraps and finds .2.
        a.release(&att("c1")).unwrap();
        assert_eq!(ips(&a.allocate(&att("c7")).unwrap()), vec![ip("10.0.0.2")]);
    }

    #[test]
    fn a_just_freed_address_is_not_reused_at_once() {
        let a = alloc(&["10.0.0.0/24"]);
        let first = ips(&a.allocate(&att("c1")).unwrap());
        a.release(&att("c1")).unwrap();
        let second = ips(&a.allocate(&att("c2")).unwrap());
        assert_ne!(first, second);
    }

    #[test]
    fn dual_stack_gives_one_per_family_in_subnet_order() {
        let a = alloc(&["10.0.0.0/24", "fd00::/64"]);
        let got = a.allocate(&att("c1")).unwrap();
        assert_eq!(ips(&got), vec![ip("10.0.0.1"), ip("fd00::1")]);
        assert_eq!(got[1].subnet, net("fd00::/64"));
    }

    #[test]
    fn allocate_is_idempotent_and_release_too() {
        let a = alloc(&["10.0.0.0/24", "fd00::/64"]);
        let one = a.allocate(&att("c1")).unwrap();
        assert_eq!(a.allocate(&att("c1")).unwrap(), one);
        assert_eq!(a.find(&att("c1")).unwrap(), one);
        assert_eq!(a.release(&att("c1")).unwrap().len(), 2);
        assert!(a.release(&att("c1")).unwrap().is_empty());
        assert!(a.find(&att("c1")).unwrap().is_empty());
        assert!(a.release(&att("never")).unwrap().is_empty());
    }

    #[test]
    fn gc_keeps_valid_attachments_and_frees_the_rest() {
        let a = alloc(&["10.0.0.0/24"]);
        for i in 0..4 {
            a.allocate(&att(&format!("c{i}"))).unwrap();
        }
        let valid: HashSet<Attachment> = [att("c1"), att("c3")].into_iter().collect();
        let freed = a.gc(&valid).unwrap();
        assert_eq!(freed, vec![ip("10.0.0.1"), ip("10.0.0.3")]);
        assert_eq!(a.usage().unwrap()[0].used, 2);
        assert_eq!(a.find(&att("c1")).unwrap().len(), 1);
    }

    #[test]
    fn usage_and_capacity() {
        let a = alloc(&["10.0.0.0/24", "fd00::/120"]);
        a.allocate(&att("c1")).unwrap();
        let u = a.usage().unwrap();
        assert_eq!((u[0].used, u[0].capacity), (1, 254));
        assert_eq!((u[1].used, u[1].capacity), (1, 255));
        let huge = alloc(&["fd00::/64"]).usage().unwrap();
        assert_eq!(huge[0].capacity, (1u128 << 64) - 1);
    }

    #[test]
    fn too_small_subnets_are_refused() {
        assert!(matches!(
            Allocator::new(MemStore::default(), vec![net("10.0.0.0/31")]),
            Err(IpamError::SubnetTooSmall { .. })
        ));
        assert!(matches!(
            Allocator::new(MemStore::default(), vec![net("fd00::/127")]),
            Err(IpamError::SubnetTooSmall { .. })
        ));
        assert!(Allocator::new(MemStore::default(), vec![net("10.0.0.0/30")]).is_ok());
    }

    #[test]
    fn a_crash_between_intent_and_reservation_is_repaired_by_the_next_allocate() {
        let a = alloc(&["10.0.0.0/24", "fd00::/64"]);
        a.store.crash_after.set(Some(1)); // index written, then crash
        assert!(a.allocate(&att("c1")).is_err());
        a.store.crash_after.set(None);
        assert!(a.store.state.borrow().reservations.is_empty());
        let got = a.allocate(&att("c1")).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(a.store.state.borrow().reservations.len(), 2);
    }

    #[test]
    fn a_listed_address_taken_by_another_is_replaced() {
        let a = alloc(&["10.0.0.0/24"]);
        a.store.state.borrow_mut().indexes.insert(att("c1"), vec![ip("10.0.0.9")]);
        a.store.state.borrow_mut().reservations.insert(ip("10.0.0.9"), att("other"));
        let got = ips(&a.allocate(&att("c1")).unwrap());
        assert_ne!(got, vec![ip("10.0.0.9")]);
        assert_eq!(a.store.state.borrow().reservations[&ip("10.0.0.9")], att("other"));
    }

    /// Random interleavings of allocate, release, gc and crashes, as a
    /// runtime would cause them (ADD for new attachments, possibly retried
    /// after a failure; DEL once decided, retried or not; GC with the live
    /// set): two live attachments never hold the same address, every live
    /// address is reserved by its holder, and after a final GC the store
    /// holds exactly the live attachments' addresses.
    #[test]
    fn randomized_no_duplicates_under_any_interleaving() {
        let mut seeds = vec![1u64, 2, 3, 42];
        seeds.extend((0..4).map(|_| rand::rng().random::<u64>()));
        for seed in seeds {
            let mut rng = StdRng::seed_from_u64(seed);
            let a = alloc(&["10.0.0.0/28", "fd00::/124"]);
            let mut live: BTreeMap<Attachment, Vec<IpAddr>> = BTreeMap::new();
            for step in 0..4000 {
                let who = att(&format!("c{}", rng.random_range(0..24)));
                if rng.random_bool(0.2) {
                    a.store.crash_after.set(Some(rng.random_range(0..4)));
                }
                match rng.random_range(0..10) {
                    0..=4 if !live.contains_key(&who) => {
                        if let Ok(got) = a.allocate(&who) {
                            assert_eq!(got.len(), 2, "seed {seed} step {step}");
                            live.insert(who, ips(&got));
                        }
                    }
                    5..=7 => {
                        // DEL: the pod is gone whether or not DEL completes.
                        live.remove(&who);
                        let _ = a.release(&who);
                    }
                    8..=9 => {
                        let valid: HashSet<Attachment> = live.keys().cloned().collect();
                        let _ = a.gc(&valid);
                    }
                    _ => {}
                }
                a.store.crash_after.set(None);
                let s = a.store.state.borrow();
                let mut seen = HashSet::new();
                for (holder, held) in &live {
                    for ip in held {
                        assert!(seen.insert(*ip), "seed {seed} step {step}: {ip} held by two live attachments");
                        assert_eq!(
                            s.reservations.get(ip),
                            Some(holder),
                            "seed {seed} step {step}: {ip} of {holder:?} not reserved for it"
                        );
                    }
                }
            }
            let valid: HashSet<Attachment> = live.keys().cloned().collect();
            a.gc(&valid).unwrap();
            let s = a.store.state.borrow();
            let mut expected: Vec<IpAddr> = live.values().flatten().copied().collect();
            expected.sort();
            let held: Vec<IpAddr> = s.reservations.keys().copied().collect();
            assert_eq!(held, expected, "seed {seed}: after GC the store holds exactly the live addresses");
            assert!(s.indexes.keys().all(|k| live.contains_key(k)), "seed {seed}: stale index left");
        }
    }
}
