//! Finds the node's underlay: the interface that carries node-to-node
//! traffic, its addresses (with their on-link prefixes: the L2 segment that
//! `auto` compares peers against) and its MTU.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libweft::netlink::Netlink;

use crate::desired::Underlay;

/// The configured interface, or else the one holding one of `node_ips`
/// (the Node's InternalIPs).
pub async fn detect(nl: &Netlink, configured: Option<&str>, node_ips: &[IpAddr]) -> Result<Underlay, String> {
    let links = nl.links().await.map_err(|e| e.to_string())?;
    let addrs = nl.all_addresses().await.map_err(|e| e.to_string())?;
    let link = match configured {
        Some(name) => {
            links.iter().find(|l| l.name == name).ok_or_else(|| format!("underlayInterface {name:?} does not exist"))?
        }
        None => {
            let index = addrs.iter().find(|(_, a)| node_ips.contains(&a.ip)).map(|(i, _)| *i).ok_or_else(|| {
                format!("no interface holds the node's InternalIP {node_ips:?}; set underlayInterface")
            })?;
            links.iter().find(|l| l.index == index).ok_or_else(|| format!("interface {index} vanished"))?
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
