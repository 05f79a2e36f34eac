//! The node's underlay: the interface that carries node-to-node traffic,
//! its addresses (with their on-link prefixes: the L2 segment that `auto`
//! compares peers against) and its MTU.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libweft::netlink::{Netlink, NetlinkError};

/// The local node's underlay, as observed in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub ifindex: u32,
    pub mtu: u32,
    /// Underlay addresses with their on-link prefix (the L2 segment).
    pub v4: Option<IpNetwork>,
    pub v6: Option<IpNetwork>,
}

impl Underlay {
    /// The underlay network of one family.
    pub fn net(&self, ipv6: bool) -> Option<IpNetwork> {
        if ipv6 { self.v6 } else { self.v4 }
    }

    /// The family VXLAN packets travel over.
    pub fn vxlan_family_v6(&self) -> bool {
        self.v4.is_none()
    }

    /// Only the addresses peers will believe: those among the own Node's
    /// `status.addresses` (an IPv6-only cluster's kubelet reports no
    /// IPv4, so VXLAN must then travel over IPv6). Unchanged when that
    /// would leave no address: with nothing to publish, peers could not
    /// reach this node at all.
    pub fn believed(&self, addresses: &[IpAddr]) -> Underlay {
        let keep = |n: Option<IpNetwork>| n.filter(|n| addresses.contains(&n.ip()));
        let (v4, v6) = (keep(self.v4), keep(self.v6));
        if v4.is_none() && v6.is_none() {
            return self.clone();
        }
        Underlay { v4, v6, ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn believed_keeps_only_addresses_the_node_reports() {
        let u = Underlay {
            ifindex: 2,
            mtu: 1500,
            v4: Some("198.51.100.11/24".parse().expect("valid")),
            v6: Some("2001:db8:a::11/64".parse().expect("valid")),
        };
        let v6_only = u.believed(&["2001:db8:a::11".parse().expect("valid")]);
        assert_eq!(v6_only.v4, None);
        assert_eq!(v6_only.v6, u.v6);
        assert!(v6_only.vxlan_family_v6());
        assert_eq!(u.believed(&[]), u);
        assert_eq!(u.believed(&["203.0.113.9".parse().expect("valid")]), u);
    }
}

/// Why the underlay could not be found.
#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    /// Listing links or addresses failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The configured `underlayInterface` is not there.
    #[error("underlayInterface {0:?} does not exist")]
    NoSuchInterface(String),
    /// No interface holds any of the Node's InternalIPs.
    #[error("no interface holds the node's InternalIP {0:?}; set underlayInterface")]
    NoInterfaceWithNodeIp(Vec<IpAddr>),
    /// The interface holding the address vanished between two dumps.
    #[error("interface {0} vanished")]
    Vanished(u32),
}

/// The configured interface, or else the one holding one of `node_ips`
/// (the Node's InternalIPs).
pub async fn detect(nl: &Netlink, configured: Option<&str>, node_ips: &[IpAddr]) -> Result<Underlay, UnderlayError> {
    let links = nl.links().await?;
    let addrs = nl.all_addresses().await?;
    let link = match configured {
        Some(name) => {
            links.iter().find(|l| l.name == name).ok_or_else(|| UnderlayError::NoSuchInterface(name.into()))?
        }
        None => {
            let index = addrs
                .iter()
                .find(|(_, a)| node_ips.contains(&a.ip))
                .map(|(i, _)| *i)
                .ok_or_else(|| UnderlayError::NoInterfaceWithNodeIp(node_ips.to_vec()))?;
            links.iter().find(|l| l.index == index).ok_or(UnderlayError::Vanished(index))?
        }
    };
    let on_link = |v6: bool| -> Option<IpNetwork> {
        let mine = addrs.iter().filter(|(i, a)| *i == link.index && !a.link_scope && a.ip.is_ipv6() == v6);
        // Prefer the node's own address when the interface has several.
        let chosen = mine.clone().find(|(_, a)| node_ips.contains(&a.ip)).or(mine.clone().next())?;
        IpNetwork::new(chosen.1.ip, chosen.1.prefix).ok()
    };
    Ok(Underlay { ifindex: link.index, mtu: link.mtu, v4: on_link(false), v6: on_link(true) })
}
