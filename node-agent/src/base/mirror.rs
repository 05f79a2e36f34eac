//! An in-memory mirror of what weft owns in the kernel: peer routes (by
//! protocol number), and the permanent neighbours and FDB entries of
//! `weft.vxlan`. A pass diffs the desired state against it instead of
//! dumping thousands of objects, so a single Node event costs kernel work
//! for that Node only.
//!
//! Kept current from three sources:
//! - a full dump ([`Mirror::begin_dump`] … [`Mirror::finish_dump`]) at start,
//!   at the resync tick, and whenever the mirror is stale;
//! - the kernel's notifications (`observe::events`), which also say whether
//!   a notification changed anything: weft's own writes come back as
//!   notifications that change nothing, so they wake no pass;
//! - the agent's own writes, recorded just *before* they are sent (so their
//!   notification always finds them recorded), with a failed write marking
//!   the mirror stale.
//!
//! Stale means the mirror may differ from the kernel: at start, after the
//! notification socket overflowed (ENOBUFS), after any change to the VXLAN
//! device, or to a link or addresses that weft's routes go through (the
//! kernel then drops IPv4 routes without telling anyone), after a failed
//! write, and when notifications changed it while a dump was running (the
//! dump may predate them). The next pass then dumps everything.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use ipnetwork::IpNetwork;
use libweft::netlink::{Netlink, NetlinkError, RTPROT_WEFT_PEER, RouteEntry};

/// `(gateway, output interface, mtu metric)` of one peer route: a route
/// whose MTU differs is not the one weft wants.
pub type Hop = (Option<IpAddr>, u32, Option<u32>);

/// What weft owns in the kernel, as last seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Peer routes (protocol `RTPROT_WEFT_PEER`): destination -> next hops.
    pub routes: HashMap<IpNetwork, Vec<Hop>>,
    /// ifindex of `weft.vxlan` the entries below belong to, if it exists.
    pub vxlan_index: Option<u32>,
    /// FDB entries of `weft.vxlan`: (peer VTEP MAC, peer underlay address).
    pub fdb: HashSet<([u8; 6], IpAddr)>,
    /// Permanent neighbours of `weft.vxlan`: peer VTEP address -> MAC
    /// (all zeros for a link-layer address that is no MAC).
    pub neighbours: HashMap<IpAddr, [u8; 6]>,
}

impl Snapshot {
    /// Whether the route `dst` via `hop` is present.
    pub fn has_route(&self, dst: &IpNetwork, hop: Hop) -> bool {
        self.routes.get(dst).is_some_and(|h| h.contains(&hop))
    }

    /// Records a peer route added or changed; `replace`: it replaced
    /// whatever route the destination had (NLM_F_REPLACE). Returns whether
    /// that changed anything.
    pub fn add_route(&mut self, dst: IpNetwork, hop: Hop, replace: bool) -> bool {
        let hops = self.routes.entry(dst).or_default();
        if replace {
            if hops.as_slice() == [hop] {
                return false;
            }
            *hops = vec![hop];
            return true;
        }
        if hops.contains(&hop) {
            return false;
        }
        // A destination nearly always has one hop: a first push would make
        // room for four (96 bytes more a route, 3.7 MiB at 20,000 Nodes).
        hops.reserve_exact(1);
        hops.push(hop);
        true
    }

    /// Records a peer route gone; returns whether it was recorded.
    pub fn remove_route(&mut self, dst: &IpNetwork, hop: Hop) -> bool {
        let Some(hops) = self.routes.get_mut(dst) else { return false };
        let before = hops.len();
        hops.retain(|h| *h != hop);
        let changed = hops.len() != before;
        if hops.is_empty() {
            self.routes.remove(dst);
        }
        changed
    }

    /// Number of peer routes.
    pub fn route_count(&self) -> usize {
        self.routes.values().map(Vec::len).sum()
    }
}

#[derive(Debug)]
struct Inner {
    snapshot: Snapshot,
    stale: bool,
    /// A dump is running: what notifications change now may predate it.
    dumping: bool,
    /// Notifications changed the mirror while the dump ran.
    touched: bool,
    /// Whether notifications keep the mirror current at all. Without them
    /// every pass dumps.
    live: bool,
}

/// The mirror, shared by the agent's passes and the notification reader.
/// Its lock is only ever held for in-memory work, never across an await.
#[derive(Debug)]
pub struct Mirror {
    inner: Mutex<Inner>,
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror {
            inner: Mutex::new(Inner {
                snapshot: Snapshot::default(),
                stale: true,
                dumping: false,
                touched: false,
                live: false,
            }),
        }
    }
}

impl Mirror {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data: keep using it,
        // but trust it no more.
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut inner = poisoned.into_inner();
            inner.stale = true;
            inner
        })
    }

    /// Notifications keep the mirror current from now on.
    pub fn set_live(&self) {
        self.lock().live = true;
    }

    /// The next pass must dump everything.
    pub fn mark_stale(&self) {
        self.lock().stale = true;
    }

    /// Whether the next pass must dump everything.
    pub fn is_stale(&self) -> bool {
        let inner = self.lock();
        inner.stale || !inner.live
    }

    /// A dump starts: the mirror it replaces is dropped now, not after the
    /// dump has built the new one beside it (7 MiB at 20,000 Nodes). Every
    /// notification from now until [`Mirror::finish_dump`] is drift and
    /// leaves the mirror stale: the emptied mirror cannot tell whether it
    /// changed anything.
    ///
    /// Returns the snapshot for the dump to fill, with room for as many
    /// entries as the old one held: a dump mostly finds what the last one
    /// did, and tables grown one doubling at a time would each hold the
    /// old and the new bucket arrays at once (about 3 MiB at 20,000 Nodes).
    pub fn begin_dump(&self) -> Snapshot {
        let mut inner = self.lock();
        let old = std::mem::take(&mut inner.snapshot);
        let (routes, fdb, neighbours) = (old.routes.len(), old.fdb.len(), old.neighbours.len());
        drop(old);
        inner.dumping = true;
        inner.touched = false;
        drop(inner);
        Snapshot {
            routes: HashMap::with_capacity(routes),
            vxlan_index: None,
            fdb: HashSet::with_capacity(fdb),
            neighbours: HashMap::with_capacity(neighbours),
        }
    }

    /// Replaces the mirror with what a dump found. It stays stale if
    /// notifications changed it meanwhile (the dump may be older than
    /// they are: the next pass dumps again).
    pub fn finish_dump(&self, snapshot: Snapshot) {
        let mut inner = self.lock();
        inner.snapshot = snapshot;
        inner.stale = inner.touched;
        inner.dumping = false;
        inner.touched = false;
    }

    /// A dump failed: the mirror stays stale.
    pub fn abort_dump(&self) {
        let mut inner = self.lock();
        inner.stale = true;
        inner.dumping = false;
    }

    /// Reads the mirror.
    pub fn read<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        f(&self.lock().snapshot)
    }

    /// Records a change the agent is about to make.
    pub fn record(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.lock().snapshot);
    }

    /// Applies one notification; returns whether it changed the mirror
    /// (or the mirror is stale anyway): only then is it drift.
    pub fn notify(&self, update: Update) -> bool {
        let mut inner = self.lock();
        let changed = match update {
            // Nothing of the mirror changed, so a dump under way stays good.
            Update::Device => return true,
            Update::Stale => {
                inner.stale = true;
                true
            }
            Update::Route { dst, hop, added: true, replace } => inner.snapshot.add_route(dst, hop, replace),
            Update::Route { dst, hop, added: false, .. } => inner.snapshot.remove_route(&dst, hop),
            Update::Fdb { entry, added: true } => inner.snapshot.fdb.insert(entry),
            Update::Fdb { entry, added: false } => inner.snapshot.fdb.remove(&entry),
            Update::Neighbour { ip, mac: Some(mac) } => {
                inner.snapshot.neighbours.insert(ip, mac).is_none_or(|old| old != mac)
            }
            Update::Neighbour { ip, mac: None } => inner.snapshot.neighbours.remove(&ip).is_some(),
        };
        if inner.dumping {
            inner.touched = true;
        }
        changed || inner.stale || inner.dumping
    }
}

/// What one notification says about the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The mirror can no longer be trusted: the next pass dumps.
    Stale,
    /// A device weft's entries use changed but kept them (still up, same
    /// index): drift for the device itself, nothing for the mirror.
    Device,
    /// A peer route added (`replace`: replacing the destination's route) or deleted.
    Route { dst: IpNetwork, hop: Hop, added: bool, replace: bool },
    /// An FDB entry of the VXLAN device added or deleted.
    Fdb { entry: ([u8; 6], IpAddr), added: bool },
    /// A neighbour of the VXLAN device: its MAC if it is permanent now, or gone.
    Neighbour { ip: IpAddr, mac: Option<[u8; 6]> },
}

/// A neighbour's link-layer address as the mirror keeps it.
pub fn mac(lladdr: &[u8]) -> [u8; 6] {
    lladdr.try_into().unwrap_or_default()
}

/// A route notification's destination and hop, for the mirror.
pub fn route_key(r: &RouteEntry) -> (IpNetwork, Hop) {
    (r.dst, (r.gateway, r.oif, r.mtu))
}

/// Every route with weft-agent's protocol number, both families.
pub async fn peer_routes(nl: &Netlink) -> Result<Vec<RouteEntry>, NetlinkError> {
    let mut routes = nl.routes(false, Some(RTPROT_WEFT_PEER)).await?;
    routes.extend(nl.routes(true, Some(RTPROT_WEFT_PEER)).await?);
    Ok(routes)
}

/// What weft owns in the kernel: its peer routes and, on the VXLAN device
/// `vxlan`, the permanent neighbours and FDB entries. Each dump goes
/// straight into the snapshot as it streams in: at 20,000 Nodes a list of
/// the routes, and one of the neighbours with their link-layer addresses
/// as vectors, came to several MiB beside it at every resync.
/// `s`: the empty snapshot to fill ([`Mirror::begin_dump`]).
pub async fn dump(nl: &Netlink, vxlan: Option<u32>, mut s: Snapshot) -> Result<Snapshot, NetlinkError> {
    s.vxlan_index = vxlan;
    for ipv6 in [false, true] {
        nl.each_route(ipv6, Some(RTPROT_WEFT_PEER), |r| {
            let (dst, hop) = route_key(&r);
            s.add_route(dst, hop, false);
        })
        .await?;
    }
    if let Some(index) = vxlan {
        nl.each_fdb_entry(index, |entry| {
            s.fdb.insert(entry);
        })
        .await?;
        nl.each_permanent_neighbour(index, |ip, lladdr| {
            s.neighbours.insert(ip, mac(lladdr));
        })
        .await?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn hop(gw: &str, oif: u32) -> Hop {
        (Some(gw.parse().unwrap()), oif, None)
    }

    #[test]
    fn routes_follow_adds_replaces_and_deletes() {
        let mut s = Snapshot::default();
        let dst = net("10.244.2.0/24");
        assert!(s.add_route(dst, hop("10.244.2.0", 7), true));
        assert!(!s.add_route(dst, hop("10.244.2.0", 7), true), "an echo changes nothing");
        assert!(!s.add_route(dst, hop("10.244.2.0", 7), false));
        // A replace by anyone leaves only the new hop.
        assert!(s.add_route(dst, hop("198.51.100.12", 2), true));
        assert!(!s.has_route(&dst, hop("10.244.2.0", 7)));
        assert!(s.has_route(&dst, hop("198.51.100.12", 2)));
        // An append (another metric) keeps both.
        assert!(s.add_route(dst, hop("10.244.2.0", 7), false));
        assert_eq!(s.route_count(), 2);
        assert!(s.remove_route(&dst, hop("198.51.100.12", 2)));
        assert!(!s.remove_route(&dst, hop("198.51.100.12", 2)), "already gone");
        assert!(s.remove_route(&dst, hop("10.244.2.0", 7)));
        assert!(s.routes.is_empty());
    }

    #[test]
    fn stale_until_a_dump_that_no_notification_overtook() {
        let m = Mirror::default();
        assert!(m.is_stale(), "nothing dumped yet");
        m.set_live();
        m.begin_dump();
        m.finish_dump(Snapshot::default());
        assert!(!m.is_stale());

        // A notification that matches the mirror is no drift; one that changes it is.
        let dst = net("10.244.2.0/24");
        m.record(|s| {
            s.add_route(dst, hop("10.244.2.0", 7), true);
        });
        let route = |added| Update::Route { dst, hop: hop("10.244.2.0", 7), added, replace: true };
        assert!(!m.notify(route(true)), "weft's own write coming back");
        assert!(m.notify(route(false)));
        assert!(!m.notify(route(false)));
        let mac = [0x0e, 1, 2, 3, 4, 5];
        let ip: IpAddr = "10.244.2.0".parse().unwrap();
        assert!(m.notify(Update::Neighbour { ip, mac: Some(mac) }));
        assert!(!m.notify(Update::Neighbour { ip, mac: Some(mac) }));
        assert!(m.notify(Update::Neighbour { ip, mac: None }), "no longer permanent");
        let entry = ([0x0e, 1, 2, 3, 4, 5], "198.51.100.12".parse().unwrap());
        assert!(m.notify(Update::Fdb { entry, added: true }));
        assert!(!m.notify(Update::Fdb { entry, added: true }));
        assert!(m.notify(Update::Fdb { entry, added: false }));
        assert!(!m.is_stale());

        // Overflow: stale, and every notification counts until the next dump.
        m.mark_stale();
        assert!(m.is_stale());
        assert!(m.notify(route(false)));
        m.begin_dump();
        m.finish_dump(Snapshot::default());
        assert!(m.notify(Update::Stale));
        assert!(m.is_stale());

        // Any notification during the dump: drift, and dump again (the
        // mirror was emptied for the dump, so it cannot tell what changed).
        m.record(|s| {
            s.add_route(dst, hop("10.244.2.0", 7), true);
        });
        let room = m.begin_dump();
        assert_eq!(m.read(Snapshot::route_count), 0, "dropped before the dump builds the new one");
        assert!(room.routes.is_empty() && room.routes.capacity() >= 1, "room for what it held");
        assert!(m.notify(route(false)));
        m.finish_dump(Snapshot::default());
        assert!(m.is_stale());
        m.begin_dump();
        m.finish_dump(Snapshot::default());
        assert!(!m.is_stale());

        // A device that changed but kept its entries: drift, and the dump stands.
        m.begin_dump();
        assert!(m.notify(Update::Device));
        m.finish_dump(Snapshot::default());
        assert!(!m.is_stale());

        m.begin_dump();
        m.abort_dump();
        assert!(m.is_stale());
    }

    #[test]
    fn without_notifications_every_pass_dumps() {
        let m = Mirror::default();
        m.begin_dump();
        m.finish_dump(Snapshot::default());
        assert!(m.is_stale());
    }
}
