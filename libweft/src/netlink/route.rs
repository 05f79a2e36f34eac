//! Routes.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::RouteMessageBuilder;

use super::{Netlink, NetlinkError, ctx, tolerate_gone};

/// A route to install. `Copy`, so requests can take it by value and be
/// pipelined without borrowing the caller's spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination prefix.
    pub dst: IpNetwork,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: u32,
    /// Accept a gateway that is not on any connected subnet (RTNH_F_ONLINK).
    pub onlink: bool,
    /// Route protocol number (weft's are [`super::RTPROT_WEFT_POD`]).
    pub protocol: u8,
    /// Path MTU of the route (`mtu` metric), if it has one; else the device's.
    pub mtu: Option<u32>,
}

/// A route read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination prefix.
    pub dst: IpNetwork,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index (0 if none).
    pub oif: u32,
    /// Route protocol number.
    pub protocol: u8,
    /// Its `mtu` metric, if set.
    pub mtu: Option<u32>,
}

fn route_message(spec: &RouteSpec) -> RouteMessage {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(spec.dst.network(), spec.dst.prefix())
        .expect("an IpNetwork always has a valid prefix for its family")
        .output_interface(spec.oif)
        .protocol(RouteProtocol::Other(spec.protocol));
    if let Some(gw) = spec.gateway {
        b = b.gateway(gw).expect("gateway family is checked by the caller");
    } else if spec.dst.is_ipv4() {
        // A directly connected destination: scope link, like `ip route add X dev Y`.
        b = b.scope(RouteScope::Link);
    }
    if spec.onlink {
        b = b.onlink();
    }
    let mut msg = b.build();
    if let Some(mtu) = spec.mtu {
        msg.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    // The builder's `protocol()` may map well-known numbers to named variants; keep ours verbatim.
    msg.header.protocol = RouteProtocol::from(spec.protocol);
    msg
}

impl Netlink {
    /// Adds a route; fails with EEXIST if one with the same key exists.
    pub async fn add_route(&self, spec: RouteSpec) -> Result<(), NetlinkError> {
        if spec.gateway.is_some_and(|g| g.is_ipv4() != spec.dst.is_ipv4()) {
            return Err(NetlinkError::InvalidRequest(format!("route {} with a gateway of the other family", spec.dst)));
        }
        self.handle.route().add(route_message(&spec)).execute().await.map_err(ctx(|| describe("add", &spec)))
    }

    /// Adds or replaces the route with this destination.
    pub async fn replace_route(&self, spec: RouteSpec) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(route_message(&spec))
            .replace()
            .execute()
            .await
            .map_err(ctx(|| describe("replace", &spec)))
    }

    /// Deletes a route; `Ok(false)` when it was already gone.
    pub async fn delete_route(&self, spec: &RouteSpec) -> Result<bool, NetlinkError> {
        tolerate_gone(self.handle.route().del(route_message(spec)).execute().await, || describe("delete", spec))
    }

    /// Routes of one family in the main table, optionally only one protocol's.
    pub async fn routes(&self, ipv6: bool, protocol: Option<u8>) -> Result<Vec<RouteEntry>, NetlinkError> {
        let mut routes = Vec::new();
        self.each_route(ipv6, protocol, |r| routes.push(r)).await?;
        Ok(routes)
    }

    /// Hands each route of [`Netlink::routes`] to `f` as the dump is read
    /// ([`super::dump`]): a caller that keeps them in a table of its own
    /// never holds a list of them, nor all the messages, as well.
    pub async fn each_route(
        &self,
        ipv6: bool,
        protocol: Option<u8>,
        mut f: impl FnMut(RouteEntry),
    ) -> Result<(), NetlinkError> {
        let mut query = RouteMessageBuilder::<IpAddr>::new().build();
        query.header.address_family = if ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let what = || format!("list IPv{} routes", if ipv6 { 6 } else { 4 });
        self.dump(RouteNetlinkMessage::GetRoute(query), what, |m| {
            if let RouteNetlinkMessage::NewRoute(m) = m
                && let Some(entry) = RouteEntry::from_message(&m).filter(|e| protocol.is_none_or(|p| e.protocol == p))
            {
                f(entry);
            }
        })
        .await
    }
}

fn describe(verb: &str, spec: &RouteSpec) -> String {
    let via = spec.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    let onlink = if spec.onlink { " onlink" } else { "" };
    let mtu = spec.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
    format!("{verb} route {}{via} dev {}{onlink} proto {}{mtu}", spec.dst, spec.oif, spec.protocol)
}

impl RouteEntry {
    /// The route in a dump answer or a notification, if it is an IPv4 or
    /// IPv6 route of the main table.
    pub fn from_message(m: &RouteMessage) -> Option<RouteEntry> {
        if m.header.table != RouteHeader::RT_TABLE_MAIN {
            return None;
        }
        entry_from_message(m)
    }
}

fn entry_from_message(m: &RouteMessage) -> Option<RouteEntry> {
    let ipv6 = match m.header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    let mut dst_ip: Option<IpAddr> = None;
    let mut gateway = None;
    let mut oif = 0;
    let mut mtu = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(addr) => dst_ip = route_addr(addr),
            RouteAttribute::Gateway(addr) => gateway = route_addr(addr),
            RouteAttribute::Oif(i) => oif = *i,
            RouteAttribute::Metrics(metrics) => {
                mtu = metrics.iter().find_map(|m| match m {
                    RouteMetric::Mtu(v) if *v > 0 => Some(*v),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    let dst_ip = dst_ip.unwrap_or(if ipv6 { IpAddr::from([0u16; 8]) } else { IpAddr::from([0u8; 4]) });
    let dst = IpNetwork::new(dst_ip, m.header.destination_prefix_length).ok()?;
    Some(RouteEntry { dst, gateway, oif, protocol: u8::from(m.header.protocol), mtu })
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
