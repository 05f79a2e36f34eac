//! The VXLAN device, its FDB and its neighbours.
//!
//! `ensure_vxlan` follows flannel's `ensureLink`: create; if a device of that
//! name exists, reuse it when compatible, otherwise replace it. Reusing it
//! matters: re-creating the device would drop every route, neighbour and FDB
//! entry on it and interrupt traffic on every agent restart.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo as NlLinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkUnspec, LinkVxlan};

use super::{Netlink, NetlinkError, ctx, format_mac, tolerate_gone};

/// A VXLAN device as weft creates it: learning off, one underlay device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// Local underlay address (source of encapsulated packets).
    pub local: IpAddr,
    /// ifindex of the underlay device.
    pub underlay: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// What `ensure_vxlan` had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The device existed and matched.
    Kept,
    /// MTU or MAC were corrected in place.
    Updated,
    /// The device was created (or replaced).
    Created,
}

fn vxlan_attrs(msg: &LinkMessage) -> Option<Vec<InfoVxlan>> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            NlLinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// The properties that cannot be changed on a live VXLAN device.
fn compatible(msg: &LinkMessage, want: &VxlanLink) -> bool {
    let Some(attrs) = vxlan_attrs(msg) else { return false };
    let mut ok = (false, false, false, false);
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => ok.0 = id == want.vni,
            InfoVxlan::Port(p) => ok.1 = p == want.port,
            InfoVxlan::Local(ip) => ok.2 = IpAddr::V4(ip) == want.local,
            InfoVxlan::Local6(ip) => ok.2 = IpAddr::V6(ip) == want.local,
            InfoVxlan::Link(l) => ok.3 = l == want.underlay,
            InfoVxlan::Learning(true) => return false,
            _ => {}
        }
    }
    ok == (true, true, true, true)
}

impl Netlink {
    /// Makes the device exist, up, with exactly these properties; returns
    /// its ifindex and what was done.
    pub async fn ensure_vxlan(&self, want: &VxlanLink) -> Result<(u32, Ensured), NetlinkError> {
        let existing = self.handle.link().get().match_name(want.name.clone()).execute().try_next().await;
        let existing = match existing {
            Ok(m) => m,
            Err(e) => {
                let err = ctx(|| format!("get link {}", want.name))(e);
                if err.is_not_found() { None } else { return Err(err) }
            }
        };
        if let Some(msg) = existing {
            let info = super::LinkInfo::from_message(&msg);
            if compatible(&msg, want) {
                let mut done = Ensured::Kept;
                if info.mtu != want.mtu || info.mac != want.mac || !info.up {
                    self.handle
                        .link()
                        .set(
                            LinkUnspec::new_with_index(info.index)
                                .mtu(want.mtu)
                                .address(want.mac.to_vec())
                                .up()
                                .build(),
                        )
                        .execute()
                        .await
                        .map_err(ctx(|| {
                            format!("update {} (mtu {}, mac {})", want.name, want.mtu, format_mac(&want.mac))
                        }))?;
                    done = Ensured::Updated;
                }
                return Ok((info.index, done));
            }
            tracing::warn!(device = %want.name, "existing VXLAN device has other VNI, port, local address or underlay; re-creating it");
            self.handle.link().del(info.index).execute().await.map_err(ctx(|| format!("delete {}", want.name)))?;
        }
        let mut b = LinkVxlan::new(&want.name, want.vni).port(want.port).dev(want.underlay).learning(false);
        b = match want.local {
            IpAddr::V4(v4) => b.local(v4),
            IpAddr::V6(v6) => b.local6(v6),
        };
        let msg = b.mtu(want.mtu).address(want.mac.to_vec()).up().build();
        self.handle.link().add(msg).execute().await.map_err(ctx(|| format!("create VXLAN device {}", want.name)))?;
        let index = self
            .link_by_name(&want.name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| NetlinkError::Vanished { name: want.name.clone(), netns: None })?;
        Ok((index, Ensured::Created))
    }

    /// Permanent FDB entries on a VXLAN device: `(mac, remote underlay address)`.
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<([u8; 6], IpAddr)>, NetlinkError> {
        let mut entries = Vec::new();
        self.each_fdb_entry(index, |e| entries.push(e)).await?;
        Ok(entries)
    }

    /// Hands each entry of [`Netlink::fdb_entries`] to `f` as the dump is
    /// read ([`super::dump`]).
    pub async fn each_fdb_entry(&self, index: u32, mut f: impl FnMut(([u8; 6], IpAddr))) -> Result<(), NetlinkError> {
        let mut query = netlink_packet_route::neighbour::NeighbourMessage::default();
        query.header.family = AddressFamily::Bridge;
        self.dump(
            RouteNetlinkMessage::GetNeighbour(query),
            || "list FDB".into(),
            |m| {
                if let RouteNetlinkMessage::NewNeighbour(m) = m
                    && m.header.ifindex == index
                    && let Some(entry) = fdb_entry(&m)
                {
                    f(entry);
                }
            },
        )
        .await
    }

    /// Adds or replaces `mac -> dst` in a VXLAN device's FDB (`bridge fdb replace … self permanent`).
    pub async fn replace_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NetlinkError> {
        let mut req = self.handle.neighbours().add_bridge(index, &mac).flags(NeighbourFlags::Own).replace();
        req.message_mut().attributes.push(NeighbourAttribute::Destination(match dst {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
        req.execute().await.map_err(ctx(|| format!("add FDB {} dst {dst} dev {index}", format_mac(&mac))))
    }

    /// Deletes an FDB entry; `Ok(false)` when already gone.
    pub async fn delete_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<bool, NetlinkError> {
        let mut msg = netlink_packet_route::neighbour::NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(match dst {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
        tolerate_gone(self.handle.neighbours().del(msg).execute().await, || {
            format!("delete FDB {} dst {dst} dev {index}", format_mac(&mac))
        })
    }

    /// Deletes a neighbour entry; `Ok(false)` when already gone.
    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<bool, NetlinkError> {
        let mut msg = netlink_packet_route::neighbour::NeighbourMessage::default();
        msg.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        msg.header.ifindex = index;
        msg.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
        tolerate_gone(self.handle.neighbours().del(msg).execute().await, || {
            format!("delete neighbour {ip} dev {index}")
        })
    }
}

/// `(mac, remote underlay address)` of an FDB message (`AF_BRIDGE`), from a
/// dump answer or a notification.
pub fn fdb_entry(m: &NeighbourMessage) -> Option<([u8; 6], IpAddr)> {
    let mut mac = None;
    let mut dst = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => dst = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => dst = Some(IpAddr::V6(*v6)),
            // In AF_BRIDGE messages the parser cannot tell the address family: go by length.
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
                dst = <[u8; 4]>::try_from(raw.as_slice())
                    .map(IpAddr::from)
                    .or_else(|_| <[u8; 16]>::try_from(raw.as_slice()).map(IpAddr::from))
                    .ok();
            }
            _ => {}
        }
    }
    Some((mac?, dst?))
}
