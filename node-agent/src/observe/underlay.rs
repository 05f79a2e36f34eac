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
