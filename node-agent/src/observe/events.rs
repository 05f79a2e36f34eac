//! Drift: the kernel tells weft when someone else changes what it owns, so
//! the next pass repairs it within a fraction of a second instead of at the
//! next resync.
//!
//! Two multicast subscriptions, each on a socket of its own (never the one
//! weft sends requests on, whose answers must not queue behind events):
//! - rtnetlink groups for links, IPv4 and IPv6 routes and neighbours (FDB
//!   entries included), filtered to what weft owns: routes of protocol
//!   [`RTPROT_WEFT_PEER`] (added or deleted), the `weft.vxlan` device, and
//!   neighbour and FDB entries on it;
//! - nfnetlink's nftables group, filtered to messages about the
//!   `inet weft` and `inet weft-policy` tables (their chains, rules, sets
//!   and elements).
//!
//! rtnetlink events also keep the [`Mirror`] of what weft owns current, and
//! only those that change it are drift: weft's own writes, recorded in the
//! mirror before they are sent, come back as events that change nothing and
//! wake no pass. Likewise an nftables transaction is drift only when an
//! `nft` process or netlink socket that weft did not open made it
//! ([`NftWriters`]).
//!
//! Drift is coalesced over [`COALESCE`] (an `ip route flush` is one burst,
//! one pass) and wakes the agent through a [`Trigger`]. If the kernel drops
//! events because a socket overflowed (ENOBUFS), the mirror is stale and the
//! next pass dumps and compares everything. The periodic resync stays the
//! backstop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libweft::netlink::{Netlink, RTPROT_WEFT_PEER, RouteEntry, fdb_entry, neighbour_entry};
use netlink_packet_core::{NLM_F_REPLACE, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket, protocols};
use tokio::sync::mpsc;

use super::watch::Trigger;
use crate::base::mirror::{Mirror, Update, mac, route_key};
use crate::base::names::{POLICY_TABLE, VXLAN_DEV, WEFT_TABLE};
use crate::base::netfilter::{
    NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_MSG_NEWGEN, NFTA_TABLE, NLA_TYPE_MASK, NftWriters, SocketBuffer,
    force_buffer, split,
};
use crate::metrics::Metrics;

/// Events closer together than this make one pass.
pub const COALESCE: Duration = Duration::from_millis(50);

// Multicast groups (linux/rtnetlink.h, linux/netfilter/nfnetlink.h).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_ROUTE: u32 = 11;
const NFNLGRP_NFTABLES: u32 = 7;

/// Receive buffer of each socket: room for a burst of a few thousand events
/// (a flushed routing table) before the kernel drops any.
const RCVBUF: usize = 4 << 20;

/// Receive buffer of the nftables socket. weft's own whole policy table
/// comes back as one notification per element at commit (some 65,000 at
/// 10,000 pods and 1,000 policies, about 10 MB of socket buffers), faster
/// than any reader; a lost burst costs a pass that checks both tables. The
/// memory is the kernel's, and only while a burst is queued.
const NFT_RCVBUF: usize = 32 << 20;

/// What changed in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drift {
    /// The `weft.vxlan` device: created, deleted, renamed, set down, changed.
    Link,
    /// A route with weft's protocol number, added, changed or deleted.
    Route,
    /// A neighbour on `weft.vxlan`.
    Neighbour,
    /// An FDB entry on `weft.vxlan`.
    Fdb,
    /// The `inet weft` nftables table or anything in it.
    Nftables,
    /// The `inet weft-policy` table or anything in it.
    Policy,
    /// The socket overflowed and events were lost: anything may have changed.
    Overflow,
    /// A message that could not be parsed: it may have been about weft.
    Unparsed,
}

/// Why the subscriptions could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("subscribe to {what} notifications: {source}")]
pub struct EventsError {
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// What the notification readers share with the agent's passes.
#[derive(Debug, Default)]
pub struct Shared {
    /// What weft owns in the kernel (routes, neighbours, FDB).
    pub mirror: Mirror,
    /// weft's own `nft` processes.
    pub nft_writers: Arc<NftWriters>,
    /// Someone else changed the `inet weft` table (or its events were
    /// lost) since the last pass that looked.
    pub nft_changed: AtomicBool,
    /// Likewise for the `inet weft-policy` table.
    pub policy_changed: AtomicBool,
}

/// Subscribes to the kernel's notifications and wakes `trigger` when
/// something weft owns changes. Must be called inside the tokio runtime;
/// the subscriptions live as long as the runtime. From then on the mirror
/// is kept current ([`Mirror::set_live`]).
pub fn spawn(
    nl: Netlink,
    trigger: Arc<Trigger>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) -> Result<(), EventsError> {
    let route = subscribe(
        protocols::NETLINK_ROUTE,
        &[
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_ROUTE,
        ],
    )
    .map_err(|source| EventsError { what: "rtnetlink", source })?;
    let nft = subscribe(protocols::NETLINK_NETFILTER, &[NFNLGRP_NFTABLES])
        .map_err(|source| EventsError { what: "nftables", source })?;
    // Past net.core.rmem_max, which CAP_NET_ADMIN (the agent has it) may do.
    if let Err(e) = force_buffer(nft.socket_ref(), SocketBuffer::Receive, NFT_RCVBUF) {
        tracing::debug!("nftables notifications keep the default buffer: {e}");
    }
    shared.mirror.set_live();
    // A pending event is enough: a full channel means a pass is coming anyway.
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(read_route_events(route, nl, tx.clone(), metrics.clone(), shared.clone()));
    tokio::spawn(read_nft_events(nft, tx, metrics, shared.clone()));
    tokio::spawn(coalesce(rx, trigger, shared));
    Ok(())
}

fn subscribe(protocol: isize, groups: &[u32]) -> std::io::Result<TokioSocket> {
    let mut socket = TokioSocket::new(protocol)?;
    socket.socket_mut().bind_auto()?;
    for group in groups {
        socket.socket_ref().add_membership(*group)?;
    }
    // Capped by net.core.rmem_max; a smaller buffer only overflows sooner.
    let _ = socket.socket_ref().set_rx_buf_sz(RCVBUF);
    Ok(socket)
}

/// Waits for the first event, lets the burst it belongs to arrive, then
/// wakes the agent once.
async fn coalesce(mut rx: mpsc::Receiver<Drift>, trigger: Arc<Trigger>, shared: Arc<Shared>) {
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(COALESCE).await;
        let mut kinds = BTreeSet::from([first]);
        while let Ok(more) = rx.try_recv() {
            kinds.insert(more);
        }
        tracing::debug!(?kinds, "kernel state weft owns changed");
        if kinds.contains(&Drift::Nftables) {
            shared.nft_changed.store(true, Ordering::Relaxed);
        }
        if kinds.contains(&Drift::Policy) {
            shared.policy_changed.store(true, Ordering::Relaxed);
        }
        trigger.fire();
    }
}

/// What a receive returned that is no message.
enum Received {
    /// The kernel dropped events (ENOBUFS).
    Overflow,
    /// Any other error; the socket is still usable.
    Failed(std::io::Error),
}

async fn receive(socket: &TokioSocket) -> Result<Vec<u8>, Received> {
    match socket.recv_from_full().await {
        Ok((buf, _)) => Ok(buf),
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Err(Received::Overflow),
        Err(e) => Err(Received::Failed(e)),
    }
}

/// Reports a failed receive. Events may have been lost either way, so the
/// answer is always a pass that checks everything.
async fn failed(what: &str, r: Received, metrics: &Metrics) -> Drift {
    match r {
        Received::Overflow => {
            metrics.error("events_overflow");
            tracing::warn!("{what} notifications overflowed: checking everything");
        }
        Received::Failed(e) => {
            metrics.error("events");
            tracing::warn!("reading {what} notifications: {e}");
            // Not a tight loop on a socket that keeps failing.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Drift::Overflow
}

async fn read_route_events(
    socket: TokioSocket,
    nl: Netlink,
    tx: mpsc::Sender<Drift>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) {
    // Looked up after subscribing: a device created in between is seen by
    // the lookup, the event, or both.
    let lookup = |nl: Netlink| async move { nl.link_by_name(VXLAN_DEV).await.ok().flatten().map(|l| l.index) };
    let mut filter = RouteFilter { vxlan_index: lookup(nl.clone()).await, shared: shared.clone() };
    loop {
        let drift = match receive(&socket).await {
            Ok(buf) => split(&buf).filter_map(|msg| filter.classify(msg)).min(),
            Err(r) => {
                // Whatever was lost is not in the mirror: the next pass dumps.
                shared.mirror.mark_stale();
                let d = failed("rtnetlink", r, &metrics).await;
                // Events about the device itself may be among those lost.
                filter.vxlan_index = lookup(nl.clone()).await;
                Some(d)
            }
        };
        if let Some(d) = drift
            && let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(d)
        {
            return;
        }
    }
}

async fn read_nft_events(socket: TokioSocket, tx: mpsc::Sender<Drift>, metrics: Arc<Metrics>, shared: Arc<Shared>) {
    let mut transaction = NftTransaction::default();
    loop {
        let foreign = match receive(&socket).await {
            Ok(buf) => {
                // Every message is fed: a transaction may end in the next datagram.
                let mut foreign = [false; NFT_TABLES.len()];
                for msg in split(&buf) {
                    let ended = transaction.ends_foreign(msg, &shared.nft_writers);
                    foreign.iter_mut().zip(ended).for_each(|(f, e)| *f |= e);
                }
                foreign
            }
            Err(r) => {
                transaction = NftTransaction::default();
                failed("nftables", r, &metrics).await;
                [true; NFT_TABLES.len()]
            }
        };
        for ((_, drift), foreign) in NFT_TABLES.iter().zip(foreign) {
            if foreign && let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(*drift) {
                return;
            }
        }
    }
}

/// Keeps the VXLAN device's ifindex, which neighbour and FDB events carry
/// instead of its name, current from the link events on the same socket,
/// and the mirror current from all of them.
#[derive(Debug, Default)]
pub struct RouteFilter {
    /// ifindex of `weft.vxlan`, if it exists.
    pub vxlan_index: Option<u32>,
    pub shared: Arc<Shared>,
}

impl RouteFilter {
    /// Whether one rtnetlink message (header included) is drift: about
    /// something weft owns and not what the mirror already holds. A message
    /// that does not parse counts and leaves the mirror stale: better one
    /// dump too many than drift left until the resync.
    pub fn classify(&mut self, msg: &[u8]) -> Option<Drift> {
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) {
            Ok(m) => match m.payload {
                NetlinkPayload::InnerMessage(inner) => {
                    let replace = m.header.flags & NLM_F_REPLACE != 0;
                    let (drift, update) = self.classify_message(&inner, replace)?;
                    self.shared.mirror.notify(update).then_some(drift)
                }
                _ => None,
            },
            Err(e) => {
                tracing::debug!("unparsed rtnetlink notification: {e}");
                self.shared.mirror.mark_stale();
                Some(Drift::Unparsed)
            }
        }
    }

    /// What a message is about, and how it changes the mirror; `None` when
    /// it is about nothing of weft's.
    fn classify_message(&mut self, msg: &RouteNetlinkMessage, replace: bool) -> Option<(Drift, Update)> {
        use RouteNetlinkMessage as M;
        match msg {
            M::NewLink(l) | M::DelLink(l) => {
                let ours = link_name(l) == Some(VXLAN_DEV);
                let was_ours = self.vxlan_index == Some(l.header.index);
                if ours && matches!(msg, M::NewLink(_)) {
                    self.vxlan_index = Some(l.header.index);
                } else if was_ours {
                    // Deleted, or renamed to something else.
                    self.vxlan_index = None;
                }
                if !(ours || was_ours || self.routes_through(l.header.index)) {
                    return None;
                }
                // The kernel drops IPv4 routes through a device that goes
                // down, and neighbours on it, without a notification each:
                // then the mirror is stale. A device that is still up under
                // the same name and index (its operational state, MTU or
                // flags changed) keeps them; the pass checks the device.
                let kept = matches!(msg, M::NewLink(_)) && l.header.flags.contains(LinkFlags::Up) && ours == was_ours;
                Some((Drift::Link, if kept { Update::Device } else { Update::Stale }))
            }
            M::NewAddress(a) | M::DelAddress(a) => {
                // Likewise routes whose gateway was on a deleted subnet. A
                // new address (IPv6 link-local after DAD, a second or so
                // after the device comes up) removes nothing.
                let index = a.header.index;
                let update = if matches!(msg, M::NewAddress(_)) { Update::Device } else { Update::Stale };
                (self.vxlan_index == Some(index) || self.routes_through(index)).then_some((Drift::Link, update))
            }
            M::NewRoute(r) | M::DelRoute(r) => {
                let added = matches!(msg, M::NewRoute(_));
                let entry = RouteEntry::from_message(r)?;
                let (dst, hop) = route_key(&entry);
                if entry.protocol != RTPROT_WEFT_PEER {
                    // Someone replaced a peer route with one of theirs.
                    let ours = added && replace && self.shared.mirror.read(|s| s.routes.contains_key(&dst));
                    return ours.then_some((Drift::Route, Update::Stale));
                }
                Some((Drift::Route, Update::Route { dst, hop, added, replace }))
            }
            M::NewNeighbour(n) | M::DelNeighbour(n) if self.vxlan_index == Some(n.header.ifindex) => {
                let added = matches!(msg, M::NewNeighbour(_));
                if n.header.family == AddressFamily::Bridge {
                    let update = fdb_entry(n).map_or(Update::Stale, |entry| Update::Fdb { entry, added });
                    return Some((Drift::Fdb, update));
                }
                // Only permanent entries are weft's; one that is no longer permanent is gone.
                let permanent = added && n.header.state == NeighbourState::Permanent;
                let update = neighbour_entry(n).map_or(Update::Stale, |(ip, lladdr)| Update::Neighbour {
                    ip,
                    mac: permanent.then(|| mac(&lladdr)),
                });
                Some((Drift::Neighbour, update))
            }
            _ => None,
        }
    }

    /// Whether a peer route in the mirror leaves through link `index`.
    fn routes_through(&self, index: u32) -> bool {
        self.shared.mirror.read(|s| s.routes.values().flatten().any(|(_, oif, _)| *oif == index))
    }
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

// nfnetlink: the message type is subsystem << 8 | message.

/// The `inet` tables weft owns, and what a foreign change to each is.
pub const NFT_TABLES: [(&str, Drift); 2] = [(WEFT_TABLE, Drift::Nftables), (POLICY_TABLE, Drift::Policy)];

/// Follows the nftables transactions in the notification stream: their
/// messages, then one NFT_MSG_NEWGEN naming the process that committed them.
#[derive(Debug, Default)]
pub struct NftTransaction {
    /// A message of the open transaction was about each of [`NFT_TABLES`].
    touched: [bool; NFT_TABLES.len()],
}

impl NftTransaction {
    /// Feeds one message; for each of [`NFT_TABLES`], true when the message
    /// ends a transaction that touched that table and was committed by a
    /// process other than weft's own `nft` (`writers`), or by one it cannot
    /// tell.
    pub fn ends_foreign(&mut self, msg: &[u8], writers: &NftWriters) -> [bool; NFT_TABLES.len()] {
        match new_generation(msg) {
            Some(committer) => {
                let touched = std::mem::take(&mut self.touched);
                if !touched.contains(&true) {
                    return touched;
                }
                let ours = committer.iter().flatten().any(|p| writers.contains(*p));
                touched.map(|t| t && !ours)
            }
            None => {
                for (t, (table, _)) in self.touched.iter_mut().zip(NFT_TABLES) {
                    *t |= nft_touches(msg, table);
                }
                [false; NFT_TABLES.len()]
            }
        }
    }
}

/// If the message is NFT_MSG_NEWGEN, which ends a transaction: who
/// committed it, as two ids. The header's port id is the committing
/// socket's, which `nft` binds to its process id as seen in its own PID
/// namespace: the id weft knows its children by, also when the agent runs
/// in a container. `NFTA_GEN_PROC_PID` is the process id in the initial PID
/// namespace (absent before kernel 4.19): right when the agent shares it.
fn new_generation(msg: &[u8]) -> Option<[Option<u32>; 2]> {
    const NFTA_GEN_PROC_PID: u16 = 2;
    if msg.len() < 20 {
        return None;
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return None;
    }
    let port = u32::from_ne_bytes([msg[12], msg[13], msg[14], msg[15]]);
    let port = (port != 0).then_some(port);
    let mut attrs = &msg[20..];
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            break;
        }
        if kind == NFTA_GEN_PROC_PID && len == 8 {
            // Network byte order, as nftables puts every integer.
            return Some([port, Some(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]))]);
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    Some([port, None])
}

/// Whether one nfnetlink message (header included) is about table
/// `inet <table>`. A malformed message counts, as in [`RouteFilter::classify`].
pub fn nft_touches(msg: &[u8], table: &str) -> bool {
    // nlmsghdr (16 bytes), then nfgenmsg: family, version, resource id.
    if msg.len() < 20 {
        return true;
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind >> 8 != NFNL_SUBSYS_NFTABLES || kind & 0xff == NFT_MSG_NEWGEN {
        return false;
    }
    if msg[16] != NFPROTO_INET {
        return false;
    }
    let mut attrs = &msg[20..];
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return true;
        }
        if kind == NFTA_TABLE {
            let name = &attrs[4..len];
            let name = name.split(|b| *b == 0).next().unwrap_or_default();
            return name == table.as_bytes();
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    // No table named: not a message about one table's contents.
    false
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkHeader;
    use netlink_packet_route::neighbour::NeighbourMessage;
    use netlink_packet_route::route::{RouteHeader, RouteMessage, RouteProtocol};

    use super::*;

    fn bytes(inner: RouteNetlinkMessage) -> Vec<u8> {
        let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(inner));
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    fn link(index: u32, name: &str) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l
    }

    fn route(protocol: u8) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.protocol = RouteProtocol::from(protocol);
        r
    }

    fn neighbour(family: AddressFamily, ifindex: u32) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = family;
        n.header.ifindex = ifindex;
        n
    }

    #[test]
    fn only_routes_with_weft_protocol_count_added_or_deleted() {
        use RouteNetlinkMessage as M;
        let mut f = RouteFilter::default();
        assert_eq!(f.classify(&bytes(M::NewRoute(route(RTPROT_WEFT_PEER)))), Some(Drift::Route));
        assert_eq!(f.classify(&bytes(M::DelRoute(route(RTPROT_WEFT_PEER)))), Some(Drift::Route));
        // The plugin's pod routes (87), the kernel's and an operator's are not the agent's.
        for other in [libweft::netlink::RTPROT_WEFT_POD, 2, 3, 4] {
            assert_eq!(f.classify(&bytes(M::DelRoute(route(other)))), None, "protocol {other}");
        }
    }

    #[test]
    fn the_vxlan_device_is_followed_by_index_for_its_neighbours_and_fdb() {
        use RouteNetlinkMessage as M;
        let mut f = RouteFilter::default();
        assert_eq!(f.classify(&bytes(M::NewLink(link(2, "eth0")))), None);
        assert_eq!(f.classify(&bytes(M::NewNeighbour(neighbour(AddressFamily::Inet, 7)))), None, "no device yet");
        assert_eq!(f.classify(&bytes(M::NewLink(link(7, VXLAN_DEV)))), Some(Drift::Link));
        assert_eq!(f.vxlan_index, Some(7));
        assert_eq!(f.classify(&bytes(M::DelNeighbour(neighbour(AddressFamily::Inet, 7)))), Some(Drift::Neighbour));
        assert_eq!(f.classify(&bytes(M::DelNeighbour(neighbour(AddressFamily::Inet6, 7)))), Some(Drift::Neighbour));
        assert_eq!(f.classify(&bytes(M::DelNeighbour(neighbour(AddressFamily::Bridge, 7)))), Some(Drift::Fdb));
        assert_eq!(f.classify(&bytes(M::NewNeighbour(neighbour(AddressFamily::Inet, 2)))), None, "another device");
        assert_eq!(f.classify(&bytes(M::NewNeighbour(neighbour(AddressFamily::Bridge, 3)))), None, "a bridge's FDB");
        // Renamed away: still drift, and its entries are no longer weft's.
        assert_eq!(f.classify(&bytes(M::NewLink(link(7, "renamed")))), Some(Drift::Link));
        assert_eq!(f.vxlan_index, None);
        assert_eq!(f.classify(&bytes(M::NewNeighbour(neighbour(AddressFamily::Bridge, 7)))), None);
        // Re-created, then deleted.
        assert_eq!(f.classify(&bytes(M::NewLink(link(9, VXLAN_DEV)))), Some(Drift::Link));
        assert!(f.shared.mirror.is_stale(), "a new device has none of the entries");
        assert_eq!(f.classify(&bytes(M::DelLink(link(9, VXLAN_DEV)))), Some(Drift::Link));
        assert_eq!(f.vxlan_index, None);
        assert_eq!(f.classify(&bytes(M::DelLink(link(2, "eth0")))), None);
    }

    #[test]
    fn weft_own_writes_coming_back_are_no_drift_once_the_mirror_is_current() {
        use RouteNetlinkMessage as M;
        use netlink_packet_route::route::{RouteAddress, RouteAttribute};
        let shared = Arc::new(Shared::default());
        shared.mirror.set_live();
        shared.mirror.begin_dump();
        shared.mirror.finish_dump(Default::default());
        let mut f = RouteFilter { vxlan_index: Some(7), shared: shared.clone() };
        let mut r = route(RTPROT_WEFT_PEER);
        r.header.destination_prefix_length = 24;
        r.attributes.push(RouteAttribute::Destination(RouteAddress::Inet("10.244.2.0".parse().unwrap())));
        r.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet("10.244.2.0".parse().unwrap())));
        r.attributes.push(RouteAttribute::Oif(7));
        let dst = "10.244.2.0/24".parse().unwrap();
        let hop = (Some("10.244.2.0".parse().unwrap()), 7, None);
        // The agent records its write, then the kernel's notification comes.
        shared.mirror.record(|s| {
            s.add_route(dst, hop, true);
        });
        assert_eq!(f.classify(&bytes(M::NewRoute(r.clone()))), None);
        // Someone deletes it: drift, and the mirror knows.
        assert_eq!(f.classify(&bytes(M::DelRoute(r.clone()))), Some(Drift::Route));
        assert!(!shared.mirror.read(|s| s.has_route(&dst, hop)));
        assert!(!shared.mirror.is_stale());
        // An address change on the device the routes leave through: dump.
        shared.mirror.record(|s| {
            s.add_route(dst, hop, true);
        });
        let mut a = netlink_packet_route::address::AddressMessage::default();
        a.header.index = 3;
        assert_eq!(f.classify(&bytes(M::DelAddress(a.clone()))), None, "no route leaves through link 3");
        a.header.index = 7;
        assert_eq!(f.classify(&bytes(M::NewAddress(a.clone()))), Some(Drift::Link));
        assert!(!shared.mirror.is_stale(), "a new address removes no route");
        assert_eq!(f.classify(&bytes(M::DelAddress(a))), Some(Drift::Link));
        assert!(shared.mirror.is_stale());
    }

    #[test]
    fn a_device_still_up_keeps_the_mirror_and_one_down_or_replaced_does_not() {
        use RouteNetlinkMessage as M;
        let shared = Arc::new(Shared::default());
        let current = || {
            shared.mirror.set_live();
            shared.mirror.begin_dump();
            shared.mirror.finish_dump(Default::default());
        };
        current();
        let mut f = RouteFilter { vxlan_index: Some(7), shared: shared.clone() };
        let up = |index, name| {
            let mut l = link(index, name);
            l.header.flags = LinkFlags::Up | LinkFlags::Running;
            l
        };
        // Its operational state or MTU changed: drift, so the pass checks
        // the device, but no dump of every route.
        assert_eq!(f.classify(&bytes(M::NewLink(up(7, VXLAN_DEV)))), Some(Drift::Link));
        assert!(!shared.mirror.is_stale());
        // Set down: the kernel dropped its IPv4 routes and neighbours unannounced.
        assert_eq!(f.classify(&bytes(M::NewLink(link(7, VXLAN_DEV)))), Some(Drift::Link));
        assert!(shared.mirror.is_stale());
        current();
        // Deleted and created again under a new index, up: none of the entries survive.
        assert_eq!(f.classify(&bytes(M::DelLink(up(7, VXLAN_DEV)))), Some(Drift::Link));
        assert!(shared.mirror.is_stale());
        current();
        assert_eq!(f.classify(&bytes(M::NewLink(up(8, VXLAN_DEV)))), Some(Drift::Link));
        assert!(shared.mirror.is_stale());
    }

    #[test]
    fn garbage_counts_as_drift() {
        let mut f = RouteFilter::default();
        let mut msg = bytes(RouteNetlinkMessage::NewRoute(route(4)));
        msg.truncate(18);
        assert_eq!(f.classify(&msg), Some(Drift::Unparsed));
    }

    #[test]
    fn a_datagram_splits_into_its_messages() {
        use RouteNetlinkMessage as M;
        let mut buf = bytes(M::NewLink(link(7, VXLAN_DEV)));
        let first = buf.len();
        buf.extend(bytes(M::DelRoute(route(RTPROT_WEFT_PEER))));
        let msgs: Vec<&[u8]> = split(&buf).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].len(), first);
        let mut f = RouteFilter::default();
        let kinds: Vec<_> = msgs.iter().filter_map(|m| f.classify(m)).collect();
        assert_eq!(kinds, [Drift::Link, Drift::Route]);
        assert_eq!(split(&[0u8; 10]).count(), 0);
    }

    /// An nftables notification: `msg` of subsystem 10, family, attributes.
    fn nft(msg: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        nfnl((NFNL_SUBSYS_NFTABLES << 8) | msg, family, attrs)
    }

    fn nfnl(kind: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (kind, value) in attrs {
            let len = 4 + value.len();
            body.extend((len as u16).to_ne_bytes());
            body.extend(kind.to_ne_bytes());
            body.extend(*value);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut out = Vec::new();
        out.extend((16 + body.len() as u32).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend([0u8; 10]);
        out.extend(body);
        out
    }

    #[test]
    fn only_transactions_of_other_processes_on_the_weft_table_are_drift() {
        const NEWSETELEM: u16 = 12;
        let writers = NftWriters::default();
        writers.push(4242);
        let elem = nft(NEWSETELEM, NFPROTO_INET, &[(NFTA_TABLE, b"weft\0"), (2, b"nodes4\0")]);
        let other = nft(NEWSETELEM, NFPROTO_INET, &[(NFTA_TABLE, b"kube-proxy\0")]);
        let generation = |pid: u32| nft(NFT_MSG_NEWGEN, 0, &[(1, &7u32.to_be_bytes()), (2, &pid.to_be_bytes())]);
        let mut t = NftTransaction::default();
        let mut feed = |msgs: &[&Vec<u8>]| msgs.iter().filter(|m| t.ends_foreign(m, &writers)[0]).count();
        assert_eq!(feed(&[&elem, &elem, &generation(4242)]), 0, "weft's own write");
        // In a container: the socket's port id is the pid weft knows, the
        // process id attribute the one of the initial PID namespace.
        let mut in_container = generation(90001);
        in_container[12..16].copy_from_slice(&4242u32.to_ne_bytes());
        assert_eq!(feed(&[&elem, &in_container]), 0, "weft's own write from a container");
        assert_eq!(feed(&[&elem, &generation(77)]), 1, "someone else's");
        assert_eq!(feed(&[&other, &generation(77)]), 0, "someone else's table");
        // A transaction split over two datagrams.
        assert_eq!(feed(&[&elem]), 0);
        assert_eq!(feed(&[&generation(78)]), 1);
        // No pid (an old kernel): cannot tell, so drift.
        assert_eq!(feed(&[&elem, &nft(NFT_MSG_NEWGEN, 0, &[(1, &7u32.to_be_bytes())])]), 1);
        for pid in 0..NftWriters::KEEP as u32 {
            writers.push(pid);
        }
        assert_eq!(feed(&[&elem, &generation(4242)]), 1, "forgotten after {} newer writers", NftWriters::KEEP);
    }

    #[test]
    fn the_policy_table_is_followed_apart_from_the_weft_table() {
        const NEWSETELEM: u16 = 12;
        const DELCHAIN: u16 = 5;
        let writers = NftWriters::default();
        writers.push(4242);
        let weft = nft(NEWSETELEM, NFPROTO_INET, &[(NFTA_TABLE, b"weft\0")]);
        let policy = nft(DELCHAIN, NFPROTO_INET, &[(NFTA_TABLE, b"weft-policy\0")]);
        let generation = |pid: u32| nft(NFT_MSG_NEWGEN, 0, &[(1, &7u32.to_be_bytes()), (2, &pid.to_be_bytes())]);
        let mut t = NftTransaction::default();
        let mut feed = |msgs: &[&Vec<u8>]| {
            let mut out = [false; 2];
            for m in msgs {
                let ended = t.ends_foreign(m, &writers);
                out.iter_mut().zip(ended).for_each(|(o, e)| *o |= e);
            }
            out
        };
        assert_eq!(NFT_TABLES.map(|(_, d)| d), [Drift::Nftables, Drift::Policy]);
        assert_eq!(feed(&[&policy, &generation(77)]), [false, true], "someone else's edit of the policy table");
        assert_eq!(feed(&[&policy, &policy, &generation(4242)]), [false, false], "weft's own policy write");
        assert_eq!(feed(&[&weft, &policy, &generation(78)]), [true, true], "nft flush ruleset touches both");
        assert_eq!(feed(&[&weft, &generation(79)]), [true, false]);
    }

    #[test]
    fn nftables_messages_count_only_for_the_inet_weft_table() {
        const DELTABLE: u16 = 2;
        const NEWRULE: u16 = 6;
        const NEWSETELEM: u16 = 12;
        let inet = NFPROTO_INET;
        assert!(nft_touches(&nft(DELTABLE, inet, &[(NFTA_TABLE, b"weft\0")]), "weft"));
        // The table name after another attribute, with the nested flag.
        assert!(nft_touches(&nft(NEWRULE, inet, &[(3, b"\0\0\0\x01"), (NFTA_TABLE | 0x8000, b"weft\0")]), "weft"));
        assert!(nft_touches(&nft(NEWSETELEM, inet, &[(NFTA_TABLE, b"weft\0"), (2, b"nodes4\0")]), "weft"));
        // Someone else's table, weft's name in another family, the generation.
        assert!(!nft_touches(&nft(NEWRULE, inet, &[(NFTA_TABLE, b"kube-proxy\0")]), "weft"));
        assert!(!nft_touches(&nft(NEWRULE, inet, &[(NFTA_TABLE, b"weft2\0")]), "weft"));
        assert!(!nft_touches(&nft(DELTABLE, 2, &[(NFTA_TABLE, b"weft\0")]), "weft"), "ip weft is not inet weft");
        assert!(!nft_touches(&nft(NFT_MSG_NEWGEN, 0, &[(1, b"\0\0\0\x05")]), "weft"));
        // Another nfnetlink subsystem (ctnetlink).
        assert!(!nft_touches(&nfnl(1 << 8, inet, &[(NFTA_TABLE, b"weft\0")]), "weft"));
        // Malformed: counts.
        let mut bad = nft(NEWRULE, inet, &[(NFTA_TABLE, b"weft\0")]);
        bad[20] = 200;
        assert!(nft_touches(&bad, "weft"));
        assert!(nft_touches(&bad[..12], "weft"));
        // Several messages in one datagram.
        let mut two = nft(NEWRULE, inet, &[(NFTA_TABLE, b"other\0")]);
        two.extend(nft(DELTABLE, inet, &[(NFTA_TABLE, b"weft\0")]));
        assert!(split(&two).any(|m| nft_touches(m, "weft")));
        assert!(!split(&two).take(1).any(|m| nft_touches(m, "weft")));
    }
}
