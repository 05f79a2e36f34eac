//! Interface addresses.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressScope};

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

impl Netlink {
    /// Every address in the namespace: `(ifindex, address)`.
    pub async fn all_addresses(&self) -> Result<Vec<(u32, AddressEntry)>, NetlinkError> {
        let msgs: Vec<_> =
            self.handle.address().get().execute().try_collect().await.map_err(ctx(|| "list addresses".into()))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                Some((
                    m.header.index,
                    AddressEntry { ip, prefix: m.header.prefix_len, link_scope: m.header.scope == AddressScope::Link },
                ))
            })
            .collect())
    }

    /// Removes an address; `Ok(false)` when it was already gone.
    pub async fn delete_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<bool, NetlinkError> {
        let msg = match ip {
            IpAddr::V4(v4) => {
                rtnetlink::AddressMessageBuilder::<std::net::Ipv4Addr>::new().index(index).address(v4, prefix).build()
            }
            IpAddr::V6(v6) => {
                rtnetlink::AddressMessageBuilder::<std::net::Ipv6Addr>::new().index(index).address(v6, prefix).build()
            }
        };
        super::tolerate_gone(self.handle.address().del(msg).execute().await, || {
            format!("delete address {ip}/{prefix} from link {index}")
        })
    }
}
