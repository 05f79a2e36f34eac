//! Permanent neighbour entries.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};

use super::{Netlink, NetlinkError, ctx};

impl Netlink {
    /// Adds or replaces a permanent `ip -> mac` entry on a link, so the kernel
    /// never has to resolve `ip` (the pod's gateway, a peer's VTEP).
    pub async fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(ctx(|| format!("add neighbour {ip} lladdr {} dev {index}", super::format_mac(mac))))
    }

    /// Permanent neighbours on a link: `(ip, mac)`.
    pub async fn permanent_neighbours(&self, index: u32) -> Result<Vec<(IpAddr, Vec<u8>)>, NetlinkError> {
        self.handle
            .neighbours()
            .get()
            .execute()
            .try_filter_map(|m| {
                let wanted = m.header.ifindex == index && m.header.state == NeighbourState::Permanent;
                futures::future::ready(Ok(wanted.then(|| neighbour_entry(&m)).flatten()))
            })
            .try_collect()
            .await
            .map_err(ctx(|| "list neighbours".into()))
    }
}

/// `(ip, mac)` of a neighbour message (dump answer or notification),
/// whatever its state.
pub fn neighbour_entry(m: &NeighbourMessage) -> Option<(IpAddr, Vec<u8>)> {
    let mut ip = None;
    let mut mac = Vec::new();
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some(IpAddr::V6(*v6)),
            NeighbourAttribute::LinkLayerAddress(l) => mac = l.clone(),
            _ => {}
        }
    }
    Some((ip?, mac))
}
