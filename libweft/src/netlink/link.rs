//! Links: lookup, and veth pairs whose peer is born in another namespace.

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

use super::{Netlink, NetlinkError, ctx};
use crate::netns::NetNs;

/// What weft needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Hardware address (empty for links without one).
    pub mac: Vec<u8>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Kind (`veth`, `vxlan`, …) when the kernel reports one.
    pub kind: Option<String>,
    /// Interface group (`IFLA_GROUP`; 0 by default, see [`crate::pending`]).
    pub group: u32,
    /// `IFLA_IFALIAS`, when set (weft's host veths: [`crate::pending::veth_alias`]).
    pub alias: Option<String>,
}

impl LinkInfo {
    pub(crate) fn from_message(msg: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
            group: 0,
            alias: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Address(a) => info.mac = a.clone(),
                LinkAttribute::Mtu(m) => info.mtu = *m,
                LinkAttribute::Group(g) => info.group = *g,
                LinkAttribute::IfAlias(a) => info.alias = Some(a.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let NlLinkInfo::Kind(k) = i {
                            info.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// A veth pair: `host_name` stays in the caller's namespace, `peer_name` is
/// created directly inside `peer_netns`.
pub struct VethSpec<'a> {
    /// Host-side name.
    pub host_name: &'a str,
    /// Host-side MAC.
    pub host_mac: [u8; 6],
    /// Container-side name (e.g. `eth0`).
    pub peer_name: &'a str,
    /// Container-side MAC.
    pub peer_mac: [u8; 6],
    /// MTU of both ends.
    pub mtu: u32,
    /// Namespace of the container side.
    pub peer_netns: &'a NetNs,
    /// Alias on the host side (`ip link` shows it), for operators.
    pub alias: Option<String>,
    /// Interface group of the host side: a [`crate::pending`] group holds
    /// the pod behind NetworkPolicy from its first packet; 0 is the default.
    pub group: u32,
}

impl Netlink {
    /// Creates the pair in one `RTM_NEWLINK`, the host end up. Creating the
    /// peer inside the target namespace (rather than moving it afterwards)
    /// means the container-side name never exists in the host namespace, so
    /// it cannot clash there, and it saves a round trip. The peer cannot be
    /// brought up in the same message (the kernel opens it before the pair is
    /// linked and answers ENOTCONN): the caller sets it up in its namespace.
    /// The alias, which a creating message cannot carry, takes a second one.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        let peer = LinkUnspec::new_with_name(spec.peer_name)
            .mtu(spec.mtu)
            .address(spec.peer_mac.to_vec())
            .setns_by_fd(spec.peer_netns.raw_fd())
            .build();
        let mut host = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name.to_string())
            .mtu(spec.mtu)
            .address(spec.host_mac.to_vec())
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
        if spec.group != 0 {
            // In the creating message: the veth is never outside its group.
            host = host.link_group(spec.group);
        }
        self.handle.link().add(host.build()).execute().await.map_err(ctx(|| {
            format!("create veth {} <-> {}:{}", spec.host_name, spec.peer_netns.path().display(), spec.peer_name)
        }))?;
        // The kernel ignores IFLA_IFALIAS in a creating message: set it
        // after, before the caller writes the routes the agent reads with it.
        if let Some(alias) = &spec.alias {
            let named = LinkUnspec::new_with_name(spec.host_name).alias(alias.clone()).build();
            self.handle
                .link()
                .set(named)
                .execute()
                .await
                .map_err(ctx(|| format!("set link {} alias {alias:?}", spec.host_name)))?;
        }
        Ok(())
    }

    /// Moves a link to interface group `group`.
    pub async fn set_link_group(&self, index: u32, name: &str, group: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).link_group(group).build())
            .execute()
            .await
            .map_err(ctx(|| format!("set link {name} group {group}")))
    }

    /// Sets a link up.
    pub async fn set_link_up(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(ctx(|| format!("set link {name} up")))
    }
}

/// Prefix of every host-side veth weft creates.
pub const HOST_VETH_PREFIX: &str = "weft";

/// The host-side veth name for an attachment: `weft` + 11 hex digits of a
/// hash of container ID and ifname. Deterministic, so DEL and CHECK find the
/// device without state; 15 bytes, the kernel's limit. The hash is
/// [`stable_hash`](super::stable_hash): names must not change across upgrades.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = super::stable_hash(container_id.bytes().chain([0u8]).chain(ifname.bytes()));
    format!("{HOST_VETH_PREFIX}{:011x}", h >> 20)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn host_veth_names_are_deterministic_short_and_distinct() {
        let a = host_veth_name("0123456789abcdef", "eth0");
        assert_eq!(a, host_veth_name("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("weft"));
        assert!(a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, host_veth_name("0123456789abcdef", "eth1"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(host_veth_name("ab", "c"), host_veth_name("a", "bc"));
        let names: HashSet<String> = (0..20_000).map(|i| host_veth_name(&format!("{i:064x}"), "eth0")).collect();
        assert_eq!(names.len(), 20_000);
    }

    #[test]
    fn pinned_name_never_changes_across_releases() {
        // Changing this breaks DEL for pods created by an older weft.
        let pinned = host_veth_name("3f1e6a2b", "eth0");
        assert_eq!(pinned, PINNED);
    }

    const PINNED: &str = "weft7378507e7b8";
}
