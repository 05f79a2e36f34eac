//! The L3 pod wiring (no bridge), Calico/ptp style.
//!
//! Pod side: `eth0` holds `<ip>/32` and `<ip6>/128`; its default routes point
//! at link-local gateways (169.254.1.1, fe80::1) that no device owns, made
//! reachable by permanent neighbour entries resolving to the host veth's MAC.
//! So the pod never ARPs for its gateway, and every packet it sends lands on
//! the host veth, where the host's routing takes over.
//! Host side: no address, just a `/32` (`/128`) route to the pod, tagged with
//! weft's route protocol.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::future::{try_join, try_join_all};
use ipnetwork::IpNetwork;
use libweft::cni::{AddResult, CniError, Interface, IpConfig, Route};
use libweft::netlink::{Netlink, NetlinkError, RTPROT_WEFT_POD, RouteSpec, VethSpec, format_mac};
use libweft::netns::NetNs;

/// The pod's IPv4 gateway: link-local, owned by no device.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Every host veth has this MAC (as Calico does): the pod's gateway entries
/// can be written without asking the kernel for the host veth's address.
pub const HOST_VETH_MAC: [u8; 6] = [0xee; 6];

/// One pipelined netlink request.
type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), NetlinkError>> + 'a>>;

/// One pod attachment to wire.
pub struct Pod<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub host_veth: &'a str,
    pub netns: &'a NetNs,
    pub ips: &'a [IpAddr],
    pub mtu: u32,
    /// Interface group of the host veth ([`libweft::pending`]).
    pub group: u32,
    /// The pod's UID from `CNI_ARGS`, recorded in the host veth's alias:
    /// the agent releases a pending veth only for the pod with that UID.
    pub uid: Option<&'a str>,
}

fn gateway_for(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() { IpAddr::V4(GATEWAY_V4) } else { IpAddr::V6(GATEWAY_V6) }
}

fn host_prefix(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("/32 and /128 are valid")
}

fn default_route(ip: IpAddr) -> IpNetwork {
    if ip.is_ipv4() {
        IpNetwork::new(Ipv4Addr::UNSPECIFIED.into(), 0).expect("valid")
    } else {
        IpNetwork::new(Ipv6Addr::UNSPECIFIED.into(), 0).expect("valid")
    }
}

/// A locally administered MAC derived from the pod's address (`0a:58:` + the
/// IPv4 address, or the low 32 bits of the IPv6 one), so a pod's MAC tells an
/// operator its IP, and neighbours stay valid if the veth is re-created.
pub fn pod_mac(ips: &[IpAddr]) -> [u8; 6] {
    let low: [u8; 4] = match ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()) {
        Some(IpAddr::V4(v4)) => v4.octets(),
        Some(IpAddr::V6(v6)) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
        None => [0; 4],
    };
    [0x0a, 0x58, low[0], low[1], low[2], low[3]]
}

/// Creates the veth pair and programs both sides. The caller undoes a
/// partial setup by deleting the host veth (which takes the peer with it).
pub async fn setup(host: &Netlink, pod_nl: &Netlink, pod: &Pod<'_>) -> Result<AddResult, CniError> {
    let pod_mac = pod_mac(pod.ips);
    let veth = VethSpec {
        host_name: pod.host_veth,
        host_mac: HOST_VETH_MAC,
        peer_name: pod.ifname,
        peer_mac: pod_mac,
        mtu: pod.mtu,
        peer_netns: pod.netns,
        alias: Some(libweft::pending::veth_alias(pod.container_id, pod.uid)),
        group: pod.group,
    };
    match host.create_veth(&veth).await {
        Ok(()) => {}
        // A previous ADD of this attachment (a retry after a crash or a
        // timeout) left the pair behind: start from scratch.
        Err(e) if e.is_exists() && host.delete_link(pod.host_veth).await? => host.create_veth(&veth).await?,
        Err(e) => return Err(e.into()),
    }

    // The two sides are programmed concurrently, and on each side the
    // requests are pipelined: the kernel handles one socket's requests in
    // the order they were sent, so "up" still precedes the onlink route
    // that needs it, without a round trip per step.
    let pod_side = async {
        let eth = pod_nl.link_by_name(pod.ifname).await?.ok_or_else(|| NetlinkError::Vanished {
            name: pod.ifname.to_string(),
            netns: Some(pod.netns.path().to_path_buf()),
        })?;
        let mut steps: Vec<Step<'_>> = vec![Box::pin(pod_nl.set_link_up(eth.index, pod.ifname))];
        for &ip in pod.ips {
            let gw = gateway_for(ip);
            steps.push(Box::pin(pod_nl.add_address(eth.index, ip, host_prefix(ip).prefix())));
            // The gateway resolves through a permanent entry: the pod never ARPs for it.
            steps.push(Box::pin(pod_nl.replace_neighbour(eth.index, gw, &HOST_VETH_MAC)));
            steps.push(Box::pin(pod_nl.add_route(RouteSpec {
                dst: default_route(ip),
                gateway: Some(gw),
                oif: eth.index,
                // 169.254.1.1 is on no connected subnet of the pod; fe80::/64 is.
                onlink: ip.is_ipv4(),
                protocol: RTPROT_WEFT_POD,
                mtu: None,
            })));
        }
        try_join_all(steps).await.map(|_| ())
    };
    // Host side: a permanent neighbour for the pod, so the host never has to
    // resolve it (for IPv6 that would wait for DAD on the host veth's
    // link-local address, stalling the first packets by a second or more),
    // then the route to the pod.
    let host_side = async {
        let link = host
            .link_by_name(pod.host_veth)
            .await?
            .ok_or_else(|| NetlinkError::Vanished { name: pod.host_veth.to_string(), netns: None })?;
        let mut steps: Vec<Step<'_>> = Vec::new();
        for &ip in pod.ips {
            steps.push(Box::pin(host.replace_neighbour(link.index, ip, &pod_mac)));
            steps.push(Box::pin(host.replace_route(RouteSpec {
                dst: host_prefix(ip),
                gateway: None,
                oif: link.index,
                onlink: false,
                protocol: RTPROT_WEFT_POD,
                mtu: None,
            })));
        }
        try_join_all(steps).await.map(|_| ())
    };
    try_join(pod_side, host_side).await?;

    Ok(AddResult {
        interfaces: vec![
            Interface { name: pod.host_veth.to_string(), mac: format_mac(&HOST_VETH_MAC), mtu: pod.mtu, sandbox: None },
            Interface {
                name: pod.ifname.to_string(),
                mac: format_mac(&pod_mac),
                mtu: pod.mtu,
                sandbox: Some(pod.netns.path().display().to_string()),
            },
        ],
        ips: pod
            .ips
            .iter()
            .map(|&ip| IpConfig { address: host_prefix(ip), gateway: Some(gateway_for(ip)), interface: 1 })
            .collect(),
        routes: pod.ips.iter().map(|&ip| Route { dst: default_route(ip), gw: Some(gateway_for(ip)) }).collect(),
    })
}

/// Verifies that the wiring is as `setup` left it; the error names what drifted.
pub async fn check(host: &Netlink, pod_nl: &Netlink, pod: &Pod<'_>) -> Result<(), CniError> {
    let drift = |what: String| Err(CniError::CheckFailed(what));

    let Some(host_link) = host.link_by_name(pod.host_veth).await? else {
        return drift(format!("host veth {} is missing", pod.host_veth));
    };
    if !host_link.up {
        return drift(format!("host veth {} is down", pod.host_veth));
    }
    let Some(eth) = pod_nl.link_by_name(pod.ifname).await? else {
        return drift(format!("{} is missing in {}", pod.ifname, pod.netns.path().display()));
    };
    if !eth.up {
        return drift(format!("{} is down in {}", pod.ifname, pod.netns.path().display()));
    }
    if eth.mtu != host_link.mtu {
        return drift(format!("MTU differs: {} has {}, {} has {}", pod.ifname, eth.mtu, pod.host_veth, host_link.mtu));
    }

    let addrs = pod_nl.addresses(eth.index).await?;
    let neighbours = pod_nl.permanent_neighbours(eth.index).await?;
    let host_neighbours = host.permanent_neighbours(host_link.index).await?;
    for &ip in pod.ips {
        let want = host_prefix(ip);
        if !addrs.iter().any(|a| a.ip == ip && a.prefix == want.prefix()) {
            return drift(format!("{} lacks address {want}", pod.ifname));
        }
        let gw = gateway_for(ip);
        if !neighbours.iter().any(|(n, mac)| *n == gw && mac.as_slice() == HOST_VETH_MAC) {
            return drift(format!("{} has no permanent neighbour {gw} -> {}", pod.ifname, format_mac(&HOST_VETH_MAC)));
        }
        let pod_routes = pod_nl.routes(ip.is_ipv6(), None).await?;
        if !pod_routes.iter().any(|r| r.dst == default_route(ip) && r.gateway == Some(gw) && r.oif == eth.index) {
            return drift(format!("{} has no default route via {gw} dev {}", pod.netns.path().display(), pod.ifname));
        }
        if !host_neighbours.iter().any(|(n, mac)| *n == ip && mac.as_slice() == eth.mac.as_slice()) {
            return drift(format!(
                "host has no permanent neighbour {ip} -> {} on {}",
                format_mac(&eth.mac),
                pod.host_veth
            ));
        }
        let host_routes = host.routes(ip.is_ipv6(), Some(RTPROT_WEFT_POD)).await?;
        if !host_routes.iter().any(|r| r.dst == want && r.oif == host_link.index) {
            return drift(format!("host route {want} dev {} is missing", pod.host_veth));
        }
    }
    Ok(())
}
