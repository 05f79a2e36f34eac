//! IP address management: which attachment (container ID + interface) holds
//! which address of the node's pod subnets.
//!
//! The [`Allocator`] is pure logic over the small [`Store`] trait, so it is
//! tested against an in-memory store with injected crashes as well as against
//! the real [`DiskStore`]. Every operation runs under the store's lock.
//!
//! # Crash ordering
//!
//! The plugin can be killed at any instant, so every operation is a sequence
//! of single atomic writes ordered so that any prefix of it is harmless:
//!
//! - A *reservation* (one record per address, created exclusively) is the only
//!   proof of ownership. It is created only by `allocate`, and deleted only on
//!   behalf of the owner it names (`release`, `gc`, or `allocate` giving back
//!   an address the subnets no longer allow), or by `gc` when no index lists it.
//! - An attachment's *index* lists the addresses it holds or is about to take.
//!   `allocate` writes the index (the intent) **before** reserving, and
//!   `release` removes reservations **before** the index. So every reservation
//!   is always listed in its owner's index, and `find`/`release` never need to
//!   scan every reservation.
//! - A crash inside `allocate` leaves an index naming addresses not (yet)
//!   reserved. A retried `allocate` reserves them, or picks other addresses if
//!   meanwhile someone else took them; if the attachment never comes back,
//!   `gc` drops its index and reservations.
//! - The round-robin cursor is written last and only ever advances to a newly
//!   chosen address; a stale cursor only changes where the next search starts.
//!
//! No step lets two attachments hold one address: a listed but unreserved
//! address belongs to nobody, and a reserved one is never touched on behalf of
//! anyone but its owner.
//!
//! # Quarantine
//!
//! A released address is not handed out again for the allocator's
//! quarantine period (weft-agent's `addressQuarantineSeconds` in node.json):
//! other nodes' NetworkPolicy sets may still hold it for its former pod
//! until their agents see the deletion, and a new pod at that address must
//! not inherit the old pod's allowances. Each release writes a *quarantine
//! record* (the time of release) **before** it removes the reservation, so
//! no crash leaves an address free without one. Times are `CLOCK_BOOTTIME`
//! ([`boottime`]): monotonic, shared by every process of one boot, blind to
//! wall-clock steps. A reboot discards the reservations of its pods, so the
//! store quarantines them instead (see [`DiskStore`]).

pub mod disk;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;

pub use self::disk::DiskStore;

/// IPAM failures; each names the subnet, file, address or attachment involved.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the subnet is reserved.
    #[error("no free address left in {subnet}")]
    Exhausted {
        /// The subnet, as configured.
        subnet: IpNetwork,
    },
    /// The subnet has no usable address once the reserved ones are excluded.
    #[error("subnet {subnet} is too small to allocate from: {reason}")]
    SubnetTooSmall {
        /// The subnet, as configured.
        subnet: IpNetwork,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. `"read"`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process held the store's lock for too long.
    #[error("timed out after {waited:?} waiting for the IPAM lock {path}")]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// Two configured subnets overlap, so "one address per subnet" is ambiguous.
    #[error("subnets {first} and {second} overlap")]
    OverlappingSubnets {
        /// One subnet.
        first: IpNetwork,
        /// The other.
        second: IpNetwork,
    },
    /// Every usable address of the subnet is reserved or quarantined, and
    /// some are quarantined: the pool is churning faster than it may.
    #[error(
        "no free address left in {subnet}: {quarantined} released addresses are quarantined \
         (other nodes may still allow their former pods), the first is free again in {}s",
        free_in.as_secs() + 1
    )]
    Quarantined {
        /// The subnet, as configured.
        subnet: IpNetwork,
        /// How many of its addresses are quarantined.
        quarantined: u128,
        /// How long until the first of them may be handed out.
        free_in: Duration,
    },
    /// The CNI network name cannot be used as a directory name.
    #[error("network name {name:?} cannot name an IPAM directory (empty, '.', '..' or contains '/')")]
    BadNetworkName {
        /// The network name.
        name: String,
    },
    /// The attachment cannot be stored: its container ID or interface name
    /// breaks the CNI rules the on-disk names rely on.
    #[error("attachment {container_id:?}/{ifname:?} cannot be stored: {reason}")]
    InvalidAttachment {
        /// The container ID.
        container_id: String,
        /// The interface name.
        ifname: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An address chosen under the lock was reserved by someone else, which
    /// means a process wrote to the store without taking the lock.
    #[error("address {ip} was reserved by another attachment while the IPAM lock was held")]
    Conflict {
        /// The address.
        ip: IpAddr,
    },
}

impl From<crate::file::FileError> for IpamError {
    fn from(e: crate::file::FileError) -> Self {
        IpamError::Io { op: e.op, path: e.path, source: e.source }
    }
}

/// Identity of one attachment, as in CNI: container ID + interface name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// An address held by an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The configured subnet the address comes from (the address as a host
    /// prefix if it is in none of the configured subnets any more).
    pub subnet: IpNetwork,
    /// The address.
    pub ip: IpAddr,
}

/// How full a subnet is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetUsage {
    /// The subnet, as configured.
    pub subnet: IpNetwork,
    /// Reserved usable addresses.
    pub used: u128,
    /// Unreserved addresses still quarantined after their release.
    pub quarantined: u128,
    /// Usable addresses: all but the network address and, for IPv4, the broadcast address.
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

/// An attachment's index as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentIndex {
    /// The attachment.
    pub attachment: Attachment,
    /// The addresses it holds or is about to take.
    pub ips: Vec<IpAddr>,
    /// When the index was last written (for GC grace periods).
    pub since: SystemTime,
}

/// Storage of reservations, indexes and cursors.
///
/// The [`Allocator`] calls everything but `locked` from inside `locked`.
/// Each write must be atomic: after a crash, a record is either entirely
/// there or not at all.
pub trait Store {
    /// Runs `f` while holding the store's exclusive lock (across processes).
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, IpamError>) -> Result<T, IpamError>;
    /// Who holds `ip`, if anyone. A record that cannot be parsed is reported
    /// as held by an attachment with empty fields: that keeps the address out
    /// of use, and since no valid attachment has an empty container ID, GC
    /// reclaims it.
    fn owner(&self, ip: IpAddr) -> Result<Option<Attachment>, IpamError>;
    /// Reserves `ip` for `owner` if nobody holds it (an exclusive create);
    /// `Ok(false)` if it is already reserved.
    fn reserve(&self, ip: IpAddr, owner: &Attachment) -> Result<bool, IpamError>;
    /// Deletes the reservation of `ip`; no error if there is none.
    fn unreserve(&self, ip: IpAddr) -> Result<(), IpamError>;
    /// Every reservation.
    fn reservations(&self) -> Result<Vec<Reservation>, IpamError>;
    /// The addresses in `att`'s index (empty if it has none).
    fn index(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError>;
    /// Replaces `att`'s index.
    fn write_index(&self, att: &Attachment, ips: &[IpAddr]) -> Result<(), IpamError>;
    /// Deletes `att`'s index; no error if there is none.
    fn remove_index(&self, att: &Attachment) -> Result<(), IpamError>;
    /// Every index.
    fn indexes(&self) -> Result<Vec<AttachmentIndex>, IpamError>;
    /// The address last handed out from `subnet`.
    fn cursor(&self, subnet: &IpNetwork) -> Result<Option<IpAddr>, IpamError>;
    /// Records the address last handed out from `subnet`.
    fn set_cursor(&self, subnet: &IpNetwork, ip: IpAddr) -> Result<(), IpamError>;
    /// Deletes what interrupted writes left behind (temporary files).
    fn sweep(&self) -> Result<(), IpamError>;
    /// When `ip` was last released ([`boottime`]), if its quarantine record is still kept.
    fn released_at(&self, ip: IpAddr) -> Result<Option<Duration>, IpamError>;
    /// Records that `ip` was released at `at` (replacing an older record).
    fn quarantine(&self, ip: IpAddr, at: Duration) -> Result<(), IpamError>;
    /// Deletes `ip`'s quarantine record; no error if there is none.
    fn unquarantine(&self, ip: IpAddr) -> Result<(), IpamError>;
    /// Every quarantine record: address and time of release.
    fn quarantined(&self) -> Result<Vec<(IpAddr, Duration)>, IpamError>;
}

/// `CLOCK_BOOTTIME`: time since boot, suspend included. Monotonic and the
/// same for every process of one boot, so a quarantine recorded by one
/// plugin process is measured right by the next, whatever the wall clock
/// does; a reboot resets it, and the store's boot stamp with it.
pub fn boottime() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => Duration::new(t.tv_sec().max(0) as u64, t.tv_nsec().clamp(0, 999_999_999) as u32),
        // Linux always has it; if not, a release is stamped "now" forever
        // after and its quarantine never ends, which is the safe side.
        Err(_) => Duration::MAX,
    }
}

/// Reads the clock the quarantine is measured with.
pub type Clock = std::sync::Arc<dyn Fn() -> Duration + Send + Sync>;

/// The usable addresses of one subnet, as the integer range
/// `first .. first + size`; never materialised, so a /64 costs nothing.
#[derive(Debug, Clone, Copy)]
struct Pool {
    subnet: IpNetwork,
    first: u128,
    size: u128,
}

impl Pool {
    fn new(subnet: IpNetwork) -> Result<Pool, IpamError> {
        let too_small = |reason| IpamError::SubnetTooSmall { subnet, reason };
        match subnet {
            // The network address (.0) is the node's VXLAN VTEP address, the last one the broadcast.
            IpNetwork::V4(n) if n.prefix() > 30 => Err(too_small("an IPv4 subnet must be a /30 or larger")),
            IpNetwork::V4(n) => Ok(Pool {
                subnet,
                first: u128::from(u32::from(n.network())) + 1,
                size: (1u128 << (32 - n.prefix())) - 2,
            }),
            // IPv6 has no broadcast; the network address is the VTEP (and subnet-router anycast) address.
            IpNetwork::V6(n) if n.prefix() > 126 => Err(too_small("an IPv6 subnet must be a /126 or larger")),
            IpNetwork::V6(n) => Ok(Pool {
                subnet,
                first: u128::from(n.network()) + 1,
                // 2^128 - 1 for a /0, which is exactly u128::MAX: no overflow.
                size: u128::MAX >> n.prefix(),
            }),
        }
    }

    /// The offset of `ip` in the pool, if it is a usable address of it.
    fn offset(&self, ip: IpAddr) -> Option<u128> {
        let n = match (ip, self.subnet) {
            (IpAddr::V4(v4), IpNetwork::V4(_)) => u128::from(u32::from(v4)),
            (IpAddr::V6(v6), IpNetwork::V6(_)) => u128::from(v6),
            _ => return None,
        };
        n.checked_sub(self.first).filter(|off| *off < self.size)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.offset(ip).is_some()
    }

    /// The address at `offset` (which is below `size`).
    fn nth(&self, offset: u128) -> IpAddr {
        let n = self.first + offset;
        match self.subnet {
            // In range by construction: first + size - 1 is at most the broadcast address - 1.
            IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }
}

/// Hands out one address per configured subnet to each attachment.
pub struct Allocator<S: Store> {
    store: S,
    pools: Vec<Pool>,
    /// How long a released address stays out of use.
    quarantine: Duration,
    clock: Clock,
}

impl<S: Store> Allocator<S> {
    /// An allocator over `store` for `subnets` (typically one IPv4 and one
    /// IPv6 subnet; empty is fine for `release` and `gc`).
    ///
    /// Fails with [`IpamError::SubnetTooSmall`] for IPv4 prefixes longer than
    /// /30 and IPv6 prefixes longer than /126 (nothing usable), and with
    /// [`IpamError::OverlappingSubnets`] if one subnet contains another.
    pub fn new(store: S, subnets: Vec<IpNetwork>) -> Result<Self, IpamError> {
        for (i, &first) in subnets.iter().enumerate() {
            if let Some(&second) =
                subnets[i + 1..].iter().find(|s| s.contains(first.network()) || first.contains(s.network()))
            {
                return Err(IpamError::OverlappingSubnets { first, second });
            }
        }
        let pools = subnets.into_iter().map(Pool::new).collect::<Result<_, _>>()?;
        Ok(Allocator { store, pools, quarantine: Duration::ZERO, clock: std::sync::Arc::new(boottime) })
    }

    /// Keeps released addresses out of use for `quarantine` (none by
    /// default; releases record their time all the same, so a later
    /// allocator with a longer quarantine honours it).
    pub fn with_quarantine(mut self, quarantine: Duration) -> Self {
        self.quarantine = quarantine;
        self
    }

    /// Measures the quarantine with `clock` instead of [`boottime`] (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How much longer an address released at `at` stays quarantined, if at all.
    fn quarantine_left(&self, at: Duration, now: Duration) -> Option<Duration> {
        self.quarantine.checked_sub(now.saturating_sub(at)).filter(|left| !left.is_zero())
    }

    /// Frees `ip`: the quarantine record first, so that no crash leaves it
    /// free without one.
    fn free(&self, ip: IpAddr, now: Duration) -> Result<(), IpamError> {
        self.store.quarantine(ip, now)?;
        self.store.unreserve(ip)
    }

    /// One address per subnet for this attachment, in subnet order.
    /// Idempotent: a repeated call returns the addresses it already holds
    /// (and repairs a half-finished earlier call).
    pub fn allocate(&self, att: &Attachment) -> Result<Vec<Allocation>, IpamError> {
        self.store.locked(|| {
            // Per pool: an address listed in the index that is ours or free
            // (the intent of an interrupted call), or none.
            let mut kept: Vec<Option<IpAddr>> = vec![None; self.pools.len()];
            for ip in dedup(self.store.index(att)?) {
                let owner = self.store.owner(ip)?;
                if owner.as_ref().is_some_and(|o| o != att) {
                    continue; // someone else's now: never touched
                }
                match self.pools.iter().position(|p| p.contains(ip)) {
                    Some(i) if kept[i].is_none() => kept[i] = Some(ip),
                    // A second address in one pool, or one no configured subnet
                    // allows (the subnets changed): give it back. It is still
                    // listed until the index below is written, as it must be.
                    _ if owner.is_some() => self.free(ip, (self.clock)())?,
                    _ => {}
                }
            }
            let mut chosen = Vec::with_capacity(self.pools.len());
            for (pool, kept) in self.pools.iter().zip(kept) {
                match kept {
                    Some(ip) => chosen.push((pool, ip, false)),
                    None => chosen.push((pool, self.next_free(pool)?, true)),
                }
            }
            // The intent first, so that whatever is reserved below is listed.
            let ips: Vec<IpAddr> = chosen.iter().map(|(_, ip, _)| *ip).collect();
            self.store.write_index(att, &ips)?;
            let mut out = Vec::with_capacity(chosen.len());
            for (pool, ip, new) in chosen {
                if self.store.owner(ip)?.as_ref() != Some(att) && !self.store.reserve(ip, att)? {
                    return Err(IpamError::Conflict { ip });
                }
                // Only a newly chosen address moves the cursor: moving it back to
                // an old one would soon hand out addresses just freed after it.
                if new {
                    // Reserved first: a crash in between leaves only an expired record.
                    self.store.unquarantine(ip)?;
                    self.store.set_cursor(&pool.subnet, ip)?;
                }
                out.push(Allocation { subnet: pool.subnet, ip });
            }
            Ok(out)
        })
    }

    /// The first address after the pool's cursor that is neither reserved
    /// nor quarantined, wrapping around.
    fn next_free(&self, pool: &Pool) -> Result<IpAddr, IpamError> {
        let start = match self.store.cursor(&pool.subnet)? {
            Some(c) => pool.offset(c).map_or(0, |off| (off + 1) % pool.size),
            None => 0,
        };
        let now = (self.clock)();
        let (mut quarantined, mut free_in) = (0u128, Duration::MAX);
        // Every miss is a distinct reserved or quarantined address, so this
        // ends after at most (those addresses + 1) probes, whatever the size
        // of the subnet; it makes the full pass only when none is left.
        let mut offset = start;
        for _ in 0..pool.size {
            let ip = pool.nth(offset);
            if self.store.owner(ip)?.is_none() {
                match self.store.released_at(ip)?.and_then(|at| self.quarantine_left(at, now)) {
                    Some(left) => {
                        quarantined += 1;
                        free_in = free_in.min(left);
                    }
                    None => return Ok(ip),
                }
            }
            offset = if offset + 1 == pool.size { 0 } else { offset + 1 };
        }
        Err(match quarantined {
            0 => IpamError::Exhausted { subnet: pool.subnet },
            _ => IpamError::Quarantined { subnet: pool.subnet, quarantined, free_in },
        })
    }

    /// Addresses currently held by this attachment (empty if none). Used by CHECK.
    pub fn find(&self, att: &Attachment) -> Result<Vec<Allocation>, IpamError> {
        self.store.locked(|| {
            let mut out = Vec::new();
            for ip in dedup(self.store.index(att)?) {
                if self.store.owner(ip)?.as_ref() == Some(att) {
                    let subnet =
                        self.pools.iter().find(|p| p.subnet.contains(ip)).map_or(IpNetwork::from(ip), |p| p.subnet);
                    out.push(Allocation { subnet, ip });
                }
            }
            Ok(out)
        })
    }

    /// Frees what the attachment holds; idempotent (`Ok(vec![])` when nothing
    /// is held). Returns what was freed.
    pub fn release(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        self.store.locked(|| self.release_locked(att))
    }

    fn release_locked(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let now = (self.clock)();
        let mut freed = Vec::new();
        for ip in dedup(self.store.index(att)?) {
            if self.store.owner(ip)?.as_ref() == Some(att) {
                self.free(ip, now)?;
                freed.push(ip);
            }
        }
        // Last, so that a crash above leaves the remaining reservations listed.
        self.store.remove_index(att)?;
        Ok(freed)
    }

    /// CNI 1.1 GC: frees every allocation whose attachment is not in `valid`,
    /// plus any orphaned or temporary files a crash left behind, and drops
    /// quarantine records that have expired (never one still running).
    /// Returns the freed addresses (quarantined from now on).
    pub fn gc(&self, valid: &HashSet<Attachment>) -> Result<Vec<IpAddr>, IpamError> {
        self.gc_older_than(valid, Duration::ZERO)
    }

    /// Like [`Allocator::gc`], but spares reservations and indexes written
    /// less than `grace` ago: a caller whose `valid` list may lag behind
    /// (weft-agent judges from veths and the API's Pods) would otherwise free the address
    /// of an ADD in flight.
    pub fn gc_older_than(&self, valid: &HashSet<Attachment>, grace: Duration) -> Result<Vec<IpAddr>, IpamError> {
        let now = SystemTime::now();
        let young = |since: SystemTime| now.duration_since(since).unwrap_or_default() < grace;
        self.store.locked(|| {
            self.store.sweep()?;
            let mut freed = BTreeSet::new();
            // (address, owner) pairs listed by an index that stays.
            let mut listed = HashSet::new();
            for index in self.store.indexes()? {
                if valid.contains(&index.attachment) || young(index.since) {
                    listed.extend(index.ips.into_iter().map(|ip| (ip, index.attachment.clone())));
                } else {
                    freed.extend(self.release_locked(&index.attachment)?);
                }
            }
            // What is left unlisted was not made by this allocator's ordering
            // (or its index was just released): free it.
            let clock = (self.clock)();
            for r in self.store.reservations()? {
                if !young(r.since) && !listed.contains(&(r.ip, r.owner)) {
                    self.free(r.ip, clock)?;
                    freed.insert(r.ip);
                }
            }
            for (ip, at) in self.store.quarantined()? {
                if self.quarantine_left(at, clock).is_none() {
                    self.store.unquarantine(ip)?;
                }
            }
            Ok(freed.into_iter().collect())
        })
    }

    /// Every attachment that has an index: those holding addresses, and those
    /// whose interrupted `allocate` left an intent behind.
    pub fn attachments(&self) -> Result<Vec<Attachment>, IpamError> {
        self.store.locked(|| Ok(self.store.indexes()?.into_iter().map(|i| i.attachment).collect()))
    }

    /// Used vs capacity per subnet (for STATUS and metrics). Capacity
    /// excludes the reserved addresses.
    pub fn usage(&self) -> Result<Vec<SubnetUsage>, IpamError> {
        self.store.locked(|| {
            let reservations = self.store.reservations()?;
            let reserved: HashSet<IpAddr> = reservations.iter().map(|r| r.ip).collect();
            let now = (self.clock)();
            let quarantined: Vec<IpAddr> = self
                .store
                .quarantined()?
                .into_iter()
                .filter(|(ip, at)| !reserved.contains(ip) && self.quarantine_left(*at, now).is_some())
                .map(|(ip, _)| ip)
                .collect();
            let count =
                |p: &Pool, ips: &mut dyn Iterator<Item = IpAddr>| ips.filter(|ip| p.contains(*ip)).count() as u128;
            Ok(self
                .pools
                .iter()
                .map(|p| SubnetUsage {
                    subnet: p.subnet,
                    used: count(p, &mut reserved.iter().copied()),
                    quarantined: count(p, &mut quarantined.iter().copied()),
                    capacity: p.size,
                })
                .collect())
        })
    }
}

/// `ips` without repeats, in their first order (an index is written by us,
/// but it is read from disk).
fn dedup(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    ips.into_iter().filter(|ip| seen.insert(*ip)).collect()
}
