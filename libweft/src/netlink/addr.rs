//! Interface addresses.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressScope};
use netlink_packet_route::AddressFamily;

use super::{Netlink, NetlinkError, ctx};

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressEntry {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Link-scope (e.g. IPv6 `fe80::/64`).
    pub link_scope: bool,
}

impl Netlink {
    /// Adds `ip/prefix` to the link. IPv6 addresses skip duplicate address
    /// detection (IFA_F_NODAD): weft's IPAM already guarantees uniqueness and
    /// DAD would leave the address unusable for about a second after ADD.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        let mut req = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(ctx(|| format!("add address {ip}/{prefix} to link {index}")))
    }

    /// The addresses on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<AddressEntry>, NetlinkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(ctx(|| format!("list addresses of link {index}")))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.index != index {
                continue;
            }
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            // IPv4 puts the local address in IFA_LOCAL too; IFA_ADDRESS is enough for our /32s.
            if let Some(ip) = ip {
                let fam_ok = matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6);
                if fam_ok {
                    out.push(AddressEntry {
                        ip,
                        prefix: m.header.prefix_len,
                        link_scope: m.header.scope == AddressScope::Link,
                    });
                }
            }
        }
        Ok(out)
    }
}
