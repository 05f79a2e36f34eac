//! What weft reads from a Node object, validated.
//!
//! Peers' annotations are untrusted input: a malformed or hostile value is
//! reported (logged and counted by the caller) and ignored, never programmed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;

use crate::config::Backend;

/// Annotation prefix of everything weft publishes on its Node.
pub const ANNOTATION_PREFIX: &str = "weft.dev/";
/// Underlay IPv4 address the node wants peers to use.
pub const ANN_PUBLIC_IP: &str = "weft.dev/public-ip";
/// Underlay IPv6 address.
pub const ANN_PUBLIC_IPV6: &str = "weft.dev/public-ipv6";
/// MAC of the node's VXLAN device.
pub const ANN_VTEP_MAC: &str = "weft.dev/vtep-mac";
/// The backend the node runs.
pub const ANN_BACKEND: &str = "weft.dev/backend";

/// A node as weft sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// `spec.podCIDRs`, at most one per family.
    pub pod_cidrs: Vec<IpNetwork>,
    pub vtep_mac: Option<[u8; 6]>,
    pub backend: Option<Backend>,
}

/// A value on a Node that weft refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub node: String,
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

impl NodeView {
    /// The pod CIDR of one family.
    pub fn pod_cidr(&self, ipv6: bool) -> Option<IpNetwork> {
        self.pod_cidrs.iter().copied().find(|c| c.is_ipv6() == ipv6)
    }

    /// The underlay address of one family.
    pub fn ip(&self, ipv6: bool) -> Option<IpAddr> {
        if ipv6 { self.ipv6.map(IpAddr::V6) } else { self.ipv4.map(IpAddr::V4) }
    }

    /// Reads a Node. The underlay addresses come from weft's own annotations
    /// (what the peer's agent chose) and fall back to `InternalIP`.
    pub fn from_node(node: &Node, rejected: &mut Vec<Rejected>) -> NodeView {
        let name = node.metadata.name.clone().unwrap_or_default();
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        let mut reject = |field: &'static str, value: &str, reason: String| {
            rejected.push(Rejected { node: name.clone(), field, value: truncate(value), reason });
        };

        let mut view = NodeView {
            name: name.clone(),
            ipv4: None,
            ipv6: None,
            pod_cidrs: Vec::new(),
            vtep_mac: None,
            backend: None,
        };

        let internal: Vec<IpAddr> = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|a| a.iter().filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok()).collect())
            .unwrap_or_default();
        view.ipv4 = internal.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            _ => None,
        });
        view.ipv6 = internal.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            _ => None,
        });
        if let Some(v) = annotations.get(ANN_PUBLIC_IP) {
            match v.parse::<Ipv4Addr>() {
                Ok(ip) if usable_underlay(IpAddr::V4(ip)) => view.ipv4 = Some(ip),
                Ok(_) => reject(ANN_PUBLIC_IP, v, "not a usable unicast address".into()),
                Err(e) => reject(ANN_PUBLIC_IP, v, e.to_string()),
            }
        }
        if let Some(v) = annotations.get(ANN_PUBLIC_IPV6) {
            match v.parse::<Ipv6Addr>() {
                Ok(ip) if usable_underlay(IpAddr::V6(ip)) => view.ipv6 = Some(ip),
                Ok(_) => reject(ANN_PUBLIC_IPV6, v, "not a usable unicast address".into()),
                Err(e) => reject(ANN_PUBLIC_IPV6, v, e.to_string()),
            }
        }
        if let Some(v) = annotations.get(ANN_VTEP_MAC) {
            match libweft::netlink::parse_mac(v) {
                Some(mac) if mac[0] & 1 == 0 && mac != [0; 6] => view.vtep_mac = Some(mac),
                Some(_) => reject(ANN_VTEP_MAC, v, "multicast or zero MAC".into()),
                None => reject(ANN_VTEP_MAC, v, "not a MAC address (aa:bb:cc:dd:ee:ff)".into()),
            }
        }
        if let Some(v) = annotations.get(ANN_BACKEND) {
            match v.parse::<Backend>() {
                Ok(b) => view.backend = Some(b),
                Err(e) => reject(ANN_BACKEND, v, e),
            }
        }

        let spec = node.spec.as_ref();
        let cidrs: Vec<String> = spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
            .unwrap_or_default();
        for c in cidrs {
            match c.parse::<IpNetwork>() {
                Ok(net) if net.ip() == net.network() && view.pod_cidr(net.is_ipv6()).is_none() => {
                    view.pod_cidrs.push(net)
                }
                Ok(_) => reject("spec.podCIDRs", &c, "host bits set or a second CIDR of one family".into()),
                Err(e) => reject("spec.podCIDRs", &c, e.to_string()),
            }
        }
        view
    }
}

/// An underlay address must be one a packet can really be sent to.
fn usable_underlay(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast()),
    }
}

/// Hostile values can be huge; logs and metrics get a bounded prefix.
fn truncate(v: &str) -> String {
    v.chars().take(64).collect()
}
