//! Permanent neighbour entries.

use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
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
        let mut neighbours = Vec::new();
        self.each_permanent_neighbour(index, |ip, mac| neighbours.push((ip, mac.to_vec()))).await?;
        Ok(neighbours)
    }

    /// Hands each permanent neighbour of a link to `f` (its address and
    /// link-layer address) as the dump is read ([`super::dump`]).
    pub async fn each_permanent_neighbour(
        &self,
        index: u32,
        mut f: impl FnMut(IpAddr, &[u8]),
    ) -> Result<(), NetlinkError> {
        let request = RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default());
        self.dump(
            request,
            || "list neighbours".into(),
            |m| {
                if let RouteNetlinkMessage::NewNeighbour(m) = m
                    && m.header.ifindex == index
                    && m.header.state == NeighbourState::Permanent
                    && let Some((ip, mac)) = neighbour_address(&m)
                {
                    f(ip, mac);
                }
            },
        )
        .await
    }
}

/// `(ip, mac)` of a neighbour message (dump answer or notification),
/// whatever its state.
pub fn neighbour_entry(m: &NeighbourMessage) -> Option<(IpAddr, Vec<u8>)> {
    neighbour_address(m).map(|(ip, mac)| (ip, mac.to_vec()))
}

/// [`neighbour_entry`] borrowing the link-layer address (empty if none).
fn neighbour_address(m: &NeighbourMessage) -> Option<(IpAddr, &[u8])> {
    let mut ip = None;
    let mut mac: &[u8] = &[];
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some(IpAddr::V6(*v6)),
            NeighbourAttribute::LinkLayerAddress(l) => mac = l,
            _ => {}
        }
    }
    Some((ip?, mac))
}
