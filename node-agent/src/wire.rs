//! The Node as weft reads it off the wire: the slim watched object, the
//! `weft.dev/` annotation keys, and the validated [`NodeView`] parsed from
//! it. Peers' annotations are untrusted input: a malformed or hostile value
//! is reported as [`Rejected`] (the agent logs and counts it) and ignored,
//! never programmed. Imports nothing else of the crate.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::NodeAddress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::ObjectMeta;
use serde::Deserialize;

/// Underlay IPv4 address the node wants peers to use.
pub const ANN_PUBLIC_IP: &str = "weft.dev/public-ip";
/// Underlay IPv6 address.
pub const ANN_PUBLIC_IPV6: &str = "weft.dev/public-ipv6";
/// MAC of the node's VXLAN device.
pub const ANN_VTEP_MAC: &str = "weft.dev/vtep-mac";
/// The backend the node runs: published for operators (`kubectl get node -o yaml`);
/// peers do not read it, since each peer's hop depends only on its addresses.
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
    /// `status.addresses` of type InternalIP or ExternalIP: the only
    /// addresses weft believes the node has.
    pub addresses: Vec<IpAddr>,
    /// `metadata.creationTimestamp` and `metadata.uid`: when two Nodes claim
    /// one pod CIDR or address, the older keeps it.
    pub created: Option<Time>,
    pub uid: String,
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

    /// Orders Nodes oldest first (creationTimestamp, then UID, then name);
    /// a Node without a creationTimestamp counts as the newest.
    pub fn age_key(&self) -> (bool, Option<&Time>, &str, &str) {
        (self.created.is_none(), self.created.as_ref(), &self.uid, &self.name)
    }

    /// Reads a Node. The underlay addresses come from weft's own annotations
    /// (what the peer's agent chose) and fall back to `InternalIP`. An
    /// annotation is believed only when it names one of the Node's own
    /// `status.addresses` (InternalIP or ExternalIP, written by its kubelet
    /// or cloud provider): else any writer of annotations could point a
    /// peer's tunnel, and the masquerade exemption, at any host. A pod
    /// CIDR outside `cluster_cidrs` is refused: routing it could capture
    /// traffic that is not the cluster's (a `0.0.0.0/0` "pod CIDR", say).
    ///
    /// Over 60 lines: one field after another, each with its own refusal.
    pub fn from_node(node: &WatchedNode, cluster_cidrs: &[IpNetwork], rejected: &mut Vec<Rejected>) -> NodeView {
        let name = node.metadata.name.clone().unwrap_or_default();
        let annotations = &node.weft;
        let mut reject = |field: &'static str, value: &str, reason: String| {
            rejected.push(Rejected { node: name.clone(), field, value: truncate(value), reason });
        };

        let mut view = NodeView {
            name: name.clone(),
            ipv4: None,
            ipv6: None,
            pod_cidrs: Vec::new(),
            vtep_mac: None,
            addresses: Vec::new(),
            created: node.metadata.creation_timestamp.clone(),
            uid: node.metadata.uid.clone().unwrap_or_default(),
        };
        for ip in node.addresses() {
            if !view.addresses.contains(&ip) {
                view.addresses.push(ip);
            }
        }

        let internal: Vec<IpAddr> = node.internal_ips().collect();
        view.ipv4 = internal.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            _ => None,
        });
        view.ipv6 = internal.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            _ => None,
        });
        if let Some(v) = &annotations.public_ip {
            match v.parse::<Ipv4Addr>() {
                Ok(ip) if !view.addresses.contains(&IpAddr::V4(ip)) => {
                    reject(ANN_PUBLIC_IP, v, "not among the Node's status.addresses".into())
                }
                Ok(ip) if usable_underlay(IpAddr::V4(ip)) => view.ipv4 = Some(ip),
                Ok(_) => reject(ANN_PUBLIC_IP, v, "not a usable unicast address".into()),
                Err(e) => reject(ANN_PUBLIC_IP, v, e.to_string()),
            }
        }
        if let Some(v) = &annotations.public_ipv6 {
            match v.parse::<Ipv6Addr>() {
                Ok(ip) if !view.addresses.contains(&IpAddr::V6(ip)) => {
                    reject(ANN_PUBLIC_IPV6, v, "not among the Node's status.addresses".into())
                }
                Ok(ip) if usable_underlay(IpAddr::V6(ip)) => view.ipv6 = Some(ip),
                Ok(_) => reject(ANN_PUBLIC_IPV6, v, "not a usable unicast address".into()),
                Err(e) => reject(ANN_PUBLIC_IPV6, v, e.to_string()),
            }
        }
        if let Some(v) = &annotations.vtep_mac {
            match libweft::netlink::parse_mac(v) {
                Some(mac) if mac[0] & 1 == 0 && mac != [0; 6] => view.vtep_mac = Some(mac),
                Some(_) => reject(ANN_VTEP_MAC, v, "multicast or zero MAC".into()),
                None => reject(ANN_VTEP_MAC, v, "not a MAC address (aa:bb:cc:dd:ee:ff)".into()),
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
                Ok(net) if net.ip() != net.network() => reject("spec.podCIDRs", &c, "host bits set".into()),
                Ok(net) if view.pod_cidr(net.is_ipv6()).is_some() => {
                    reject("spec.podCIDRs", &c, "a second CIDR of one family".into())
                }
                Ok(net) if !cluster_cidrs.iter().any(|cl| within(&net, cl)) => {
                    reject("spec.podCIDRs", &c, "outside the clusterCIDRs".into())
                }
                Ok(net) => view.pod_cidrs.push(net),
                Err(e) => reject("spec.podCIDRs", &c, e.to_string()),
            }
        }
        // Pushed one by one, each list has room for four: kept for every
        // Node, that is 100 bytes more per Node.
        view.pod_cidrs.shrink_to_fit();
        view.addresses.shrink_to_fit();
        view
    }
}

/// `inner` lies entirely inside `outer`.
fn within(inner: &IpNetwork, outer: &IpNetwork) -> bool {
    inner.is_ipv4() == outer.is_ipv4() && inner.prefix() >= outer.prefix() && outer.contains(inner.network())
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

/// A Node as weft watches it: `metadata`, `spec.podCIDR(s)` and
/// `status.addresses`; serde skips every other field of the API's JSON.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedNode {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<WatchedSpec>,
    #[serde(default)]
    pub status: Option<WatchedStatus>,
    /// weft's annotations, moved out of `metadata` by [`strip`]: four
    /// fields cost a fraction of a B-tree map per node.
    #[serde(skip)]
    pub weft: WeftAnnotations,
}

/// The `weft.dev/` annotations a Node may carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeftAnnotations {
    pub public_ip: Option<String>,
    pub public_ipv6: Option<String>,
    pub vtep_mac: Option<String>,
    pub backend: Option<String>,
}

impl WeftAnnotations {
    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        match key {
            ANN_PUBLIC_IP => Some(&mut self.public_ip),
            ANN_PUBLIC_IPV6 => Some(&mut self.public_ipv6),
            ANN_VTEP_MAC => Some(&mut self.vtep_mac),
            ANN_BACKEND => Some(&mut self.backend),
            _ => None,
        }
    }

    /// Picks weft's keys out of a Node's annotations.
    pub fn from_annotations(all: impl IntoIterator<Item = (String, String)>) -> WeftAnnotations {
        let mut a = WeftAnnotations::default();
        for (k, v) in all {
            if let Some(slot) = a.slot(&k) {
                *slot = Some(v);
            }
        }
        a
    }

    /// `(key, value)` of each annotation present.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (ANN_PUBLIC_IP, &self.public_ip),
            (ANN_PUBLIC_IPV6, &self.public_ipv6),
            (ANN_VTEP_MAC, &self.vtep_mac),
            (ANN_BACKEND, &self.backend),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

/// The part of `NodeSpec` weft reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedSpec {
    #[serde(rename = "podCIDR", default)]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Option<Vec<String>>,
}

/// The part of `NodeStatus` weft reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedStatus {
    #[serde(default)]
    pub addresses: Option<Vec<NodeAddress>>,
}

impl WatchedNode {
    /// `status.addresses` of type InternalIP.
    pub fn internal_ips(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
    }

    /// `status.addresses` of type InternalIP or ExternalIP, usable ones only.
    pub fn addresses(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| is_node_ip(&a.type_))
            .filter_map(|a| a.address.parse().ok())
            .filter(|ip| usable_underlay(*ip))
    }
}

impl Resource for WatchedNode {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn is_node_ip(address_type: &str) -> bool {
    address_type == "InternalIP" || address_type == "ExternalIP"
}

/// Drops what weft does not read: of the metadata only the name, the
/// resourceVersion (the watch resumes from it), the creationTimestamp and
/// the UID (the older Node wins a conflict) stay, weft's annotations move
/// to [`WatchedNode::weft`]; of the addresses only InternalIPs and
/// ExternalIPs stay.
pub fn strip(node: &mut WatchedNode) {
    let meta = std::mem::take(&mut node.metadata);
    node.weft = WeftAnnotations::from_annotations(meta.annotations.into_iter().flatten());
    node.metadata = ObjectMeta {
        name: meta.name,
        resource_version: meta.resource_version,
        creation_timestamp: meta.creation_timestamp,
        uid: meta.uid,
        ..ObjectMeta::default()
    };
    if let Some(addresses) = node.status.as_mut().and_then(|s| s.addresses.as_mut()) {
        addresses.retain(|a| is_node_ip(&a.type_));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn cluster() -> Vec<IpNetwork> {
        vec!["10.244.0.0/16".parse().unwrap(), "fd00:10:244::/56".parse().unwrap()]
    }

    /// A Node as the API holds it: podCIDRs, InternalIPs and annotations.
    fn node(cidrs: &[&str], ips: &[&str], annotations: &[(&str, &str)]) -> WatchedNode {
        WatchedNode {
            metadata: ObjectMeta { name: Some("n2".into()), ..ObjectMeta::default() },
            weft: WeftAnnotations::from_annotations(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
            spec: Some(WatchedSpec { pod_cidr: None, pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()) }),
            status: Some(WatchedStatus {
                addresses: Some(
                    ips.iter().map(|a| NodeAddress { type_: "InternalIP".into(), address: a.to_string() }).collect(),
                ),
            }),
        }
    }

    fn read(n: &WatchedNode) -> (NodeView, BTreeMap<&'static str, String>) {
        let mut rejected = Vec::new();
        let view = NodeView::from_node(n, &cluster(), &mut rejected);
        (view, rejected.into_iter().map(|r| (r.field, r.reason)).collect())
    }

    #[test]
    fn a_well_formed_node_reads_completely() {
        let (v, rejected) = read(&node(
            &["10.244.2.0/24", "fd00:10:244:2::/64"],
            &["198.51.100.12", "2001:db8:a::12", "203.0.113.12"],
            &[(ANN_VTEP_MAC, "0e:00:00:00:00:02"), (ANN_BACKEND, "vxlan"), (ANN_PUBLIC_IP, "203.0.113.12")],
        ));
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(v.pod_cidrs.len(), 2);
        // weft's annotation wins over InternalIP; IPv6 falls back to InternalIP.
        assert_eq!(v.ip(false), Some("203.0.113.12".parse().unwrap()));
        assert_eq!(v.ip(true), Some("2001:db8:a::12".parse().unwrap()));
        assert_eq!(v.vtep_mac, Some([0x0e, 0, 0, 0, 0, 2]));
    }

    #[test]
    fn missing_annotations_fall_back_or_stay_empty() {
        let (v, rejected) = read(&node(&["10.244.2.0/24"], &["198.51.100.12"], &[]));
        assert!(rejected.is_empty());
        assert_eq!(v.ip(false), Some("198.51.100.12".parse().unwrap()));
        assert_eq!((v.vtep_mac, v.ip(true)), (None, None));
    }

    #[test]
    fn hostile_values_are_refused_and_never_used() {
        let huge = "x".repeat(100_000);
        let (v, rejected) = read(&node(
            &["0.0.0.0/0", "10.244.2.5/24"],
            &["198.51.100.12"],
            &[
                (ANN_PUBLIC_IP, "127.0.0.1"),
                (ANN_PUBLIC_IPV6, &huge),
                (ANN_VTEP_MAC, "ff:ff:ff:ff:ff:ff"),
                (ANN_BACKEND, "ipip"),
            ],
        ));
        assert!(v.pod_cidrs.is_empty(), "no pod CIDR may be routed: {:?}", v.pod_cidrs);
        assert_eq!(v.ip(false), Some("198.51.100.12".parse().unwrap()), "loopback refused, InternalIP kept");
        assert_eq!((v.vtep_mac, v.ip(true)), (None, None));
        for field in [ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, ANN_VTEP_MAC, "spec.podCIDRs"] {
            assert!(rejected.contains_key(field), "{field} not reported: {rejected:?}");
        }
        assert!(!rejected.contains_key(ANN_BACKEND), "a value weft never reads is never refused");
        let mut all = Vec::new();
        NodeView::from_node(&node(&[], &[], &[(ANN_PUBLIC_IPV6, &huge)]), &cluster(), &mut all);
        assert_eq!(all[0].value.len(), 64, "logged values are bounded");
    }

    #[test]
    fn a_public_ip_is_believed_only_among_the_nodes_own_addresses() {
        let mut n =
            node(&[], &["198.51.100.12"], &[(ANN_PUBLIC_IP, "203.0.113.99"), (ANN_PUBLIC_IPV6, "2001:db8:e::1")]);
        let (v, rejected) = read(&n);
        assert_eq!(v.ip(false), Some("198.51.100.12".parse().unwrap()), "InternalIP kept");
        assert_eq!(v.ip(true), None);
        assert!(rejected[ANN_PUBLIC_IP].contains("status.addresses"), "{rejected:?}");
        assert!(rejected[ANN_PUBLIC_IPV6].contains("status.addresses"), "{rejected:?}");
        assert_eq!(v.addresses, vec!["198.51.100.12".parse::<IpAddr>().unwrap()]);

        // An ExternalIP counts; a Hostname or InternalDNS entry does not.
        let addresses = n.status.as_mut().unwrap().addresses.as_mut().unwrap();
        addresses.push(NodeAddress { type_: "ExternalIP".into(), address: "203.0.113.99".into() });
        addresses.push(NodeAddress { type_: "Hostname".into(), address: "2001:db8:e::1".into() });
        let (v, rejected) = read(&n);
        assert_eq!(v.ip(false), Some("203.0.113.99".parse().unwrap()));
        assert!(!rejected.contains_key(ANN_PUBLIC_IP) && rejected.contains_key(ANN_PUBLIC_IPV6));
        assert_eq!(v.addresses.len(), 2);
    }

    #[test]
    fn pod_cidrs_must_be_network_addresses_inside_the_cluster_one_per_family() {
        for (cidr, why) in [
            ("10.244.2.1/24", "host bits set"),
            ("10.245.0.0/24", "outside the clusterCIDRs"),
            ("10.0.0.0/8", "outside the clusterCIDRs"),
            ("fd00:10:245::/64", "outside the clusterCIDRs"),
            ("not-a-cidr", ""),
        ] {
            let (v, rejected) = read(&node(&[cidr], &[], &[]));
            assert!(v.pod_cidrs.is_empty(), "{cidr} accepted");
            assert!(rejected["spec.podCIDRs"].contains(why), "{cidr}: {rejected:?}");
        }
        let (v, rejected) = read(&node(&["10.244.2.0/24", "10.244.3.0/24"], &[], &[]));
        assert_eq!(v.pod_cidrs, vec!["10.244.2.0/24".parse::<IpNetwork>().unwrap()]);
        assert!(rejected["spec.podCIDRs"].contains("second"));
    }

    #[test]
    fn a_node_from_the_api_keeps_only_what_weft_reads() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "u", "resourceVersion": "42", "labels": {"a": "b"},
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "managedFields": [{"manager": "kubelet"}],
                "annotations": {"weft.dev/vtep-mac": "0e:00:00:00:00:01",
                    "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(10_000)}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": "x"},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.11"},
                {"type": "Hostname", "address": "n1"}, {"type": "ExternalIP", "address": "203.0.113.11"}],
                "images": [{"names": ["a"], "sizeBytes": 1}], "conditions": [{"type": "Ready", "status": "True"}]},
        });
        let mut node: WatchedNode = serde_json::from_value(json).unwrap();
        strip(&mut node);
        assert_eq!(node.metadata.name.as_deref(), Some("n1"));
        assert_eq!(node.metadata.resource_version.as_deref(), Some("42"), "the watch resumes from it");
        assert_eq!(node.weft.iter().collect::<Vec<_>>(), vec![(ANN_VTEP_MAC, "0e:00:00:00:00:01")]);
        let m = &node.metadata;
        assert!(m.annotations.is_none() && m.labels.is_none() && m.managed_fields.is_none());
        assert_eq!(m.uid.as_deref(), Some("u"), "the older Node wins a conflict");
        assert!(m.creation_timestamp.is_some());
        assert_eq!(node.spec.as_ref().unwrap().pod_cidrs.as_ref().unwrap()[0], "10.244.1.0/24");
        assert_eq!(node.internal_ips().collect::<Vec<_>>(), vec!["198.51.100.11".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(node.addresses().count(), 2, "InternalIP and ExternalIP");
        assert_eq!(node.status.unwrap().addresses.unwrap().len(), 2);
    }

    #[test]
    fn nulls_and_missing_parts_deserialize() {
        let node: WatchedNode = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "n"}, "spec": {"podCIDRs": null}, "status": null}),
        )
        .unwrap();
        assert!(node.spec.unwrap().pod_cidrs.is_none() && node.status.is_none());
    }
}
