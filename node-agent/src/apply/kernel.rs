//! Makes the kernel match the desired state: compare with what weft owns
//! (peer routes by protocol number, the VXLAN device by name, neighbours and
//! FDB entries on it), delete what is wrong, add what is missing. Nothing
//! else is ever touched, and state that is already right is left alone, so a
//! restarted agent adopts the kernel as it is without disturbing traffic.
//!
//! What weft owns is read from the [`Mirror`], not dumped every pass: a pass
//! dumps only when the mirror is stale (at start, at the resync, after lost
//! notifications), so a single Node event costs kernel work for that Node.
//!
//! Order (flannel `handleSubnetEvents`): the VXLAN device first, then FDB
//! and neighbour entries, and routes last, so the kernel never has a route
//! whose next hop it would have to resolve by ARP over VXLAN.

mod ethtool;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libweft::netlink::{Ensured, Netlink, NetlinkError, RTPROT_WEFT_PEER, RouteSpec, VxlanLink};

use crate::base::mirror::{self, Mirror, Snapshot};
use crate::base::names::VXLAN_DEV;
use crate::config::Backend;
use crate::desired::incremental::Touched;
use crate::desired::{Hop, KernelState};
use crate::metrics::{BackendLabel, Metrics};

/// A kernel change that failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A netlink request (the VXLAN device, a dump) failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// IP forwarding could not be read or turned on.
    #[error("enable IP forwarding ({path}): {source}")]
    Forwarding {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Some routes, neighbours or FDB entries failed; the others were applied.
    #[error("{failed} entries failed, the first: {first}")]
    Entries {
        failed: usize,
        #[source]
        first: EntryError,
    },
    /// The VXLAN device's transmit checksum offload could not be read or set.
    #[error("transmit checksum offload on {device}: {source}")]
    Offload {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// One route, neighbour, FDB entry or address that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct EntryError {
    /// `route`, `neighbour`, `fdb`, `address`.
    pub what: &'static str,
    #[source]
    pub source: NetlinkError,
}

/// Sets transmit checksum offload on the VXLAN device if it differs.
/// Returns whether it changed it. No crate sets one ethtool flag without a
/// whole ethtool netlink stack, so this is the classic SIOCETHTOOL ioctl.
///
/// Two known failures decide the default (`observe::kernel::offload_default`):
/// kernels before 5.7 send SNATed VXLAN packets with a bad checksum
/// (calico#3145: 63 s stalls), and some NICs under 6.12+ collapse to a few
/// hundred Mbit/s with it on (calico#11435). Measured here
/// (`bench/vxlan-offload.sh`, kernel 6.18): on is 3.2x the throughput of
/// off, and the e2e matrix (NodePort and ClusterIP through kube-proxy's SNAT
/// over VXLAN) passes with it. `vxlan.txChecksumOffload: false` is the
/// switch for the NICs of calico#11435.
pub fn set_tx_checksum_offload(on: bool) -> Result<bool, KernelError> {
    let err = |source| KernelError::Offload { device: VXLAN_DEV, source };
    let current = ethtool::tx_checksum(VXLAN_DEV).map_err(err)?;
    if current == on {
        return Ok(false);
    }
    ethtool::set_tx_checksum(VXLAN_DEV, on).map_err(err)?;
    tracing::info!(device = VXLAN_DEV, on, "set VXLAN transmit checksum offload");
    Ok(true)
}

/// What one sync did and found.
#[derive(Debug, Default)]
pub struct Applied {
    /// Objects added, replaced or deleted.
    pub changes: usize,
    /// The same, by kind (`route`, `neighbour`, `fdb`, `vxlan_device`, `address`).
    pub writes: BTreeMap<&'static str, usize>,
    pub routes: usize,
    pub neighbours: usize,
    pub fdb: usize,
    /// Per-object failures; the rest of the sync still ran.
    pub errors: Vec<EntryError>,
}

/// The route for `dst` via `hop`. `vxlan`: the VXLAN device's index and
/// MTU, when it exists. A VXLAN route carries that MTU: pods have the
/// underlay's, so the route is where the smaller path MTU is known, for
/// path-MTU errors and for the MSS clamp (`rt mtu`) in `inet weft`.
fn route_spec(dst: IpNetwork, hop: Hop, underlay: u32, vxlan: Option<(u32, u32)>) -> Option<RouteSpec> {
    let peer = |gateway, oif, onlink, mtu| RouteSpec {
        dst,
        gateway: Some(gateway),
        oif,
        onlink,
        protocol: RTPROT_WEFT_PEER,
        mtu,
    };
    Some(match hop {
        Hop::Direct { gateway } => peer(gateway, underlay, false, None),
        // The peer's VTEP address is on no connected subnet: onlink says "just send it out of this device".
        Hop::Vxlan { gateway } => {
            let (index, mtu) = vxlan?;
            peer(gateway, index, true, Some(mtu))
        }
    })
}

/// The mirror's key of a route weft writes.
fn hop_of(spec: &RouteSpec) -> mirror::Hop {
    (spec.gateway, spec.oif, spec.mtu)
}

/// One reconcile pass. Fails only when the VXLAN device itself cannot be
/// made right or a dump fails; individual entries that fail are reported in
/// `errors` (and leave the mirror stale, so the retry dumps).
///
/// `only`: compare just these entries with the mirror, the ones the
/// desired state changed since a pass that left the kernel as desired (a
/// pass for a Node event). `None`, or a mirror that had to be dumped,
/// compares everything.
///
/// Over 60 lines: the kernel's ordering (device, stale entries, then
/// neighbours, FDB and routes last) is the point, and it reads in one place.
pub async fn sync(
    nl: &Netlink,
    d: &KernelState,
    underlay: u32,
    mirror: &Mirror,
    only: Option<&Touched>,
) -> Result<Applied, NetlinkError> {
    let mut out = Applied::default();

    let vxlan = match &d.vxlan {
        Some(spec) => {
            let link = VxlanLink {
                name: VXLAN_DEV.into(),
                vni: spec.vni,
                port: spec.port,
                local: spec.local,
                underlay: spec.underlay_ifindex,
                mtu: spec.mtu,
                mac: spec.mac,
            };
            let (index, ensured) = nl.ensure_vxlan(&link).await?;
            if ensured != Ensured::Kept {
                // A new or changed device may have lost its entries.
                mirror.mark_stale();
                out.wrote("vxlan_device", 1);
                tracing::info!(device = VXLAN_DEV, ?ensured, vni = spec.vni, port = spec.port, local = %spec.local, "VXLAN device");
            }
            sync_addresses(nl, index, &spec.addresses, &mut out).await?;
            Some(index)
        }
        None => {
            // Deleting the device also removes its routes, neighbours and FDB.
            if nl.delete_link(VXLAN_DEV).await? {
                mirror.mark_stale();
                out.wrote("vxlan_device", 1);
                tracing::info!(device = VXLAN_DEV, "removed VXLAN device (backend no longer uses it)");
            }
            None
        }
    };
    let vxlan_route = vxlan.zip(d.vxlan.as_ref().map(|v| v.mtu));
    let mut only = only;
    if mirror.is_stale() || mirror.read(|s| s.vxlan_index) != vxlan {
        dump(nl, vxlan, mirror).await?;
        only = None;
    }

    let plan = mirror.read(|present| {
        match only {
            None => Plan::new(present, d, underlay, vxlan_route),
            Some(keys) => Plan::only(present, d, keys, underlay, vxlan_route),
        }
        .replacing_in_place(present)
    });

    // Stale routes go first.
    for (dst, (gateway, oif, mtu)) in plan.stale_routes {
        mirror.record(|s| {
            s.remove_route(&dst, (gateway, oif, mtu));
        });
        let spec = RouteSpec { dst, gateway, oif, onlink: false, protocol: RTPROT_WEFT_PEER, mtu: None };
        let res = nl.delete_route(&spec).await.map(|gone| gone as usize);
        record(&mut out, res, "route", mirror);
    }
    if let Some(index) = vxlan {
        for (mac, dst) in plan.stale_fdb {
            mirror.record(|s| {
                s.fdb.remove(&(mac, dst));
            });
            record(&mut out, nl.delete_fdb(index, mac, dst).await.map(usize::from), "fdb", mirror);
        }
        for (mac, dst) in plan.missing_fdb {
            mirror.record(|s| {
                s.fdb.insert((mac, dst));
            });
            record(&mut out, nl.replace_fdb(index, mac, dst).await.map(|()| 1), "fdb", mirror);
        }
        for ip in plan.stale_neighbours {
            mirror.record(|s| {
                s.neighbours.remove(&ip);
            });
            record(&mut out, nl.delete_neighbour(index, ip).await.map(usize::from), "neighbour", mirror);
        }
        for (ip, mac) in plan.missing_neighbours {
            mirror.record(|s| {
                s.neighbours.insert(ip, mac);
            });
            record(&mut out, nl.replace_neighbour(index, ip, &mac).await.map(|()| 1), "neighbour", mirror);
        }
        out.fdb = d.fdb.len();
        out.neighbours = d.neighbours.len();
    }

    let mut failed = 0;
    for w in plan.missing_routes {
        mirror.record(|s| {
            s.add_route(w.dst, hop_of(&w), true);
        });
        let res = nl.replace_route(w).await;
        failed += usize::from(res.is_err());
        record(&mut out, res.map(|()| 1), "route", mirror);
    }
    // Every wanted route has a spec: VXLAN hops exist only with the device.
    out.routes = d.routes.len() - failed;
    Ok(out)
}

/// Dumps what weft owns into the mirror.
async fn dump(nl: &Netlink, vxlan: Option<u32>, mirror: &Mirror) -> Result<(), NetlinkError> {
    let room = mirror.begin_dump();
    match mirror::dump(nl, vxlan, room).await {
        Ok(s) => {
            tracing::debug!(
                routes = s.route_count(),
                fdb = s.fdb.len(),
                neighbours = s.neighbours.len(),
                "dumped what weft owns"
            );
            mirror.finish_dump(s);
            Ok(())
        }
        Err(e) => {
            mirror.abort_dump();
            Err(e)
        }
    }
}

/// The writes one pass makes: the difference between the desired state and
/// the mirror. Computed under the mirror's lock, with no I/O.
#[derive(Default)]
struct Plan {
    stale_routes: Vec<(IpNetwork, mirror::Hop)>,
    missing_routes: Vec<RouteSpec>,
    stale_fdb: Vec<([u8; 6], IpAddr)>,
    missing_fdb: Vec<([u8; 6], IpAddr)>,
    stale_neighbours: Vec<IpAddr>,
    missing_neighbours: Vec<(IpAddr, [u8; 6])>,
}

impl Plan {
    /// The plan for every entry. No copy of the wanted routes: at 20,000
    /// Nodes one, with a hash set of their keys, was 6 MiB on top of the
    /// desired state at every full pass.
    fn new(present: &Snapshot, d: &KernelState, underlay: u32, vxlan_route: Option<(u32, u32)>) -> Plan {
        let mut plan = Plan::default();
        let spec = |dst: &IpNetwork, hop: &Hop| route_spec(*dst, *hop, underlay, vxlan_route);
        // Lookups both ways: thousands of peers must not cost a quadratic diff.
        for (dst, hops) in &present.routes {
            let wanted_hop = d.routes.get(dst).and_then(|hop| spec(dst, hop)).as_ref().map(hop_of);
            plan.stale_routes.extend(hops.iter().filter(|hop| Some(**hop) != wanted_hop).map(|hop| (*dst, *hop)));
        }
        plan.missing_routes = d
            .routes
            .iter()
            .filter_map(|(dst, hop)| spec(dst, hop))
            .filter(|w| !present.has_route(&w.dst, hop_of(w)))
            .collect();
        let vxlan = vxlan_route.is_some();
        if vxlan {
            plan.stale_fdb = present.fdb.iter().filter(|(mac, dst)| d.fdb.get(mac) != Some(dst)).copied().collect();
            plan.missing_fdb =
                d.fdb.iter().map(|(mac, dst)| (*mac, *dst)).filter(|e| !present.fdb.contains(e)).collect();
            plan.stale_neighbours = present
                .neighbours
                .iter()
                .filter(|(ip, mac)| d.neighbours.get(ip) != Some(mac))
                .map(|(ip, _)| *ip)
                .collect();
            plan.missing_neighbours = d
                .neighbours
                .iter()
                .filter(|(ip, mac)| present.neighbours.get(ip) != Some(mac))
                .map(|(ip, mac)| (*ip, *mac))
                .collect();
        }
        plan
    }
}

impl Plan {
    /// Leaves a destination's only route to the replace that writes its
    /// wanted one (a new MTU, gateway or device), instead of deleting it
    /// first: the destination is never without a route.
    fn replacing_in_place(mut self, present: &Snapshot) -> Plan {
        if self.stale_routes.is_empty() {
            return self;
        }
        let replaced: HashSet<IpNetwork> = self.missing_routes.iter().map(|w| w.dst).collect();
        self.stale_routes
            .retain(|(dst, _)| !(replaced.contains(dst) && present.routes.get(dst).map(Vec::len) == Some(1)));
        self
    }

    /// The plan for the entries in `keys` alone.
    fn only(present: &Snapshot, d: &KernelState, keys: &Touched, underlay: u32, vxlan: Option<(u32, u32)>) -> Plan {
        let mut plan = Plan::default();
        for dst in &keys.routes {
            let wanted = d.routes.get(dst).and_then(|hop| route_spec(*dst, *hop, underlay, vxlan));
            let wanted_hop = wanted.as_ref().map(hop_of);
            for hop in present.routes.get(dst).into_iter().flatten() {
                if Some(*hop) != wanted_hop {
                    plan.stale_routes.push((*dst, *hop));
                }
            }
            plan.missing_routes.extend(wanted.filter(|w| !present.has_route(dst, hop_of(w))));
        }
        if vxlan.is_some() {
            // The FDB is a set of pairs: a pass over it, no I/O, for a handful of MACs.
            if !keys.fdb.is_empty() {
                plan.stale_fdb = present
                    .fdb
                    .iter()
                    .filter(|(mac, dst)| keys.fdb.contains(mac) && d.fdb.get(mac) != Some(dst))
                    .copied()
                    .collect();
            }
            for mac in &keys.fdb {
                if let Some(dst) = d.fdb.get(mac).filter(|dst| !present.fdb.contains(&(*mac, **dst))) {
                    plan.missing_fdb.push((*mac, *dst));
                }
            }
            for ip in &keys.neighbours {
                let (want, have) = (d.neighbours.get(ip), present.neighbours.get(ip));
                if have.is_some() && want != have {
                    plan.stale_neighbours.push(*ip);
                }
                if let Some(mac) = want.filter(|w| Some(*w) != have) {
                    plan.missing_neighbours.push((*ip, *mac));
                }
            }
        }
        plan
    }
}

impl Applied {
    fn wrote(&mut self, kind: &'static str, n: usize) {
        self.changes += n;
        if n > 0 {
            *self.writes.entry(kind).or_default() += n;
        }
    }
}

/// Counts a write, or reports it failed. A failed write leaves the mirror
/// stale: it was recorded as done before it was sent.
fn record(out: &mut Applied, res: Result<usize, NetlinkError>, what: &'static str, mirror: &Mirror) {
    match res {
        Ok(n) => out.wrote(what, n),
        Err(e) => {
            mirror.mark_stale();
            tracing::warn!("{what}: {e}");
            out.errors.push(EntryError { what, source: e });
        }
    }
}

/// The VTEP addresses: exactly the wanted ones on the device.
async fn sync_addresses(nl: &Netlink, index: u32, wanted: &[IpNetwork], out: &mut Applied) -> Result<(), NetlinkError> {
    let present = nl.addresses(index).await?;
    for a in present.iter().filter(|a| !a.link_scope) {
        if !wanted.iter().any(|w| w.ip() == a.ip && w.prefix() == a.prefix) {
            nl.delete_address(index, a.ip, a.prefix).await?;
            out.wrote("address", 1);
        }
    }
    for w in wanted {
        if !present.iter().any(|a| a.ip == w.ip() && a.prefix == w.prefix()) {
            nl.add_address(index, w.ip(), w.prefix()).await?;
            out.wrote("address", 1);
        }
    }
    Ok(())
}

/// Turns on forwarding for both families; a node that routes pods needs
/// it. Returns how many sysctls it changed.
pub fn ensure_forwarding() -> Result<usize, KernelError> {
    let mut changed = 0;
    for path in ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"] {
        let err = |source| KernelError::Forwarding { path, source };
        if std::fs::read_to_string(path).map_err(err)?.trim() != "1" {
            std::fs::write(path, "1").map_err(err)?;
            tracing::info!("set {path} = 1");
            changed += 1;
        }
    }
    Ok(changed)
}

/// The kernel output of a pass: forwarding, what weft owns ([`sync`]) and
/// the VXLAN device's offload, counted in `metrics`. An entry that failed
/// fails the output, after everything else is in place.
pub async fn apply(
    nl: &Netlink,
    k: &KernelState,
    underlay_ifindex: u32,
    mirror: &Mirror,
    only: Option<&Touched>,
    metrics: &Metrics,
) -> Result<(), KernelError> {
    metrics.kernel_writes("sysctl", ensure_forwarding()?);
    let applied = sync(nl, k, underlay_ifindex, mirror, only).await?;
    for (kind, n) in &applied.writes {
        metrics.kernel_writes(kind, *n);
    }
    let offload = match &k.vxlan {
        // An ioctl in this process's namespace, which is the node's.
        Some(vx) => match set_tx_checksum_offload(vx.tx_checksum_offload) {
            Ok(changed) => {
                metrics.kernel_writes("offload", usize::from(changed));
                i64::from(vx.tx_checksum_offload)
            }
            Err(e) => {
                // Not worth a retry: the device works either way.
                metrics.error("kernel");
                tracing::warn!("{e}");
                -1
            }
        },
        None => -1,
    };
    if applied.changes > 0 {
        tracing::info!(changes = applied.changes, routes = applied.routes, "programmed peers");
    }
    for _ in &applied.errors {
        // Already logged per object.
        metrics.error("kernel");
    }
    metrics.routes.set(applied.routes as i64);
    metrics.neighbours.set(applied.neighbours as i64);
    metrics.fdb_entries.set(applied.fdb as i64);
    metrics.tx_checksum_offload.set(offload);
    for b in [Backend::Routes, Backend::Vxlan] {
        let n = k.peer_backends.values().filter(|pb| **pb == b).count();
        metrics.peers.get_or_create(&BackendLabel { backend: b.as_str().to_string() }).set(n as i64);
    }
    // The rest of the kernel state is in place; the failed entries are retried.
    let failed = applied.errors.len();
    match applied.errors.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(KernelError::Entries { failed, first }),
    }
}

/// Removes everything the agent programs (for `weft-agent cleanup`).
pub async fn remove_all(nl: &Netlink) -> Result<usize, NetlinkError> {
    let mut removed = usize::from(nl.delete_link(VXLAN_DEV).await?);
    for r in mirror::peer_routes(nl).await? {
        let spec = RouteSpec {
            dst: r.dst,
            gateway: r.gateway,
            oif: r.oif,
            onlink: false,
            protocol: RTPROT_WEFT_PEER,
            mtu: None,
        };
        removed += usize::from(nl.delete_route(&spec).await?);
    }
    Ok(removed)
}
