//! `weft-agent policy trace`: reads Pods, Namespaces, NetworkPolicies and
//! ClusterNetworkPolicies (none when their CRD is not installed) once from
//! the API and prints what [`crate::desired::policy_trace`] says the data
//! plane does with a connection.

use anyhow::{Context, anyhow, bail};
use std::collections::HashMap;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, ResourceExt};

use crate::desired::policy_trace::{Probe, trace_with_tiers};
use crate::wire_cluster_policy::{self as cnp, ClusterPolicyView};
use crate::wire_policy::{NamespaceView, PodView, PolicyView, Protocol, Refused};

/// `80/TCP`, `53/UDP`, or `80` (TCP).
pub fn parse_port(s: &str) -> anyhow::Result<(u16, Protocol)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| anyhow!("{port:?} is no port number"))?;
    let proto = Protocol::parse(Some(&proto.to_ascii_uppercase()))?;
    Ok((port, proto))
}

/// `namespace/name`.
fn split_pod(s: &str) -> anyhow::Result<(&str, &str)> {
    s.split_once('/')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        .ok_or_else(|| anyhow!("{s:?} is not NAMESPACE/POD"))
}

/// Every ClusterNetworkPolicy as the agents read it; none when the API
/// has no such resource (its CRD is not installed).
async fn cluster_policies(client: kube::Client, refused: &mut Vec<Refused>) -> anyhow::Result<Vec<ClusterPolicyView>> {
    let gvk = GroupVersionKind::gvk(cnp::GROUP, cnp::VERSION, cnp::KIND);
    let api = Api::<DynamicObject>::all_with(client, &ApiResource::from_gvk_with_plural(&gvk, cnp::PLURAL));
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(vec![]),
        Err(e) => return Err(e).context("list clusternetworkpolicies"),
    };
    Ok(list
        .items
        .iter()
        .filter_map(|o| ClusterPolicyView::from_spec(&o.name_any(), o.data.get("spec"), refused))
        .collect())
}

/// Lists everything once and prints one explanation per address family
/// both pods have (or only `ipv6`'s, if given).
pub async fn run(client: kube::Client, from: &str, to: &str, port: &str, ipv6: Option<bool>) -> anyhow::Result<String> {
    let (port, protocol) = parse_port(port)?;
    let (from_ns, from_name) = split_pod(from)?;
    let (to_ns, to_name) = split_pod(to)?;
    let lp = ListParams::default();
    let pods = Api::<Pod>::all(client.clone()).list(&lp).await.context("list pods")?;
    let nss = Api::<Namespace>::all(client.clone()).list(&lp).await.context("list namespaces")?;
    let pols = Api::<NetworkPolicy>::all(client.clone()).list(&lp).await.context("list networkpolicies")?;
    let nodes = Api::<Node>::all(client.clone()).list(&lp).await.context("list nodes")?;
    let mut refused = Vec::new();
    let cluster = cluster_policies(client, &mut refused).await?;
    let pods: Vec<PodView> = pods.items.iter().filter_map(|p| PodView::from_pod(p, &mut refused)).collect();
    // The agents believe only some pod addresses (desired::pod_trust); so
    // does the tracer. (The agents' peer rules, which may refuse a whole
    // Node, are not repeated here.)
    let cidrs: Vec<(String, Vec<IpNetwork>)> = nodes
        .items
        .iter()
        .map(|n| {
            let cidrs = n.spec.as_ref().and_then(|s| s.pod_cidrs.as_ref());
            let parsed = cidrs.into_iter().flatten().filter_map(|c| c.parse().ok()).collect();
            (n.metadata.name.clone().unwrap_or_default(), parsed)
        })
        .collect();
    let by_node: HashMap<&str, &[IpNetwork]> = cidrs.iter().map(|(n, c)| (n.as_str(), c.as_slice())).collect();
    let believed = crate::desired::pod_trust::believe(pods, &by_node);
    let pods = believed.pods;
    let nss: Vec<NamespaceView> = nss.items.iter().filter_map(NamespaceView::from_namespace).collect();
    let pols: Vec<PolicyView> = pols.items.iter().filter_map(|p| PolicyView::from_policy(p, &mut refused)).collect();
    let find = |ns: &str, name: &str| {
        pods.iter()
            .find(|p| p.namespace == ns && p.name == name)
            .ok_or_else(|| anyhow!("pod {ns}/{name} not found (or finished)"))
    };
    let (src, dst) = (find(from_ns, from_name)?, find(to_ns, to_name)?);
    let mut out = String::new();
    for r in refused.iter().filter(|r| r.kind == "NetworkPolicy" || r.kind == "ClusterNetworkPolicy") {
        out.push_str(&format!("note: weft ignores part of {r}\n"));
    }
    for d in believed.doubts.iter().filter(|d| d.pod == from || d.pod == to) {
        out.push_str(&format!("note: weft does not believe {}'s address {}: {}\n", d.pod, d.ip, d.reason));
    }
    let families: Vec<bool> = match ipv6 {
        Some(v6) => vec![v6],
        None => [false, true]
            .into_iter()
            .filter(|v6| [src, dst].iter().all(|p| p.ips.iter().any(|i| i.is_ipv6() == *v6)))
            .collect(),
    };
    if families.is_empty() {
        bail!("{from} and {to} share no address family");
    }
    for v6 in families {
        let e = trace_with_tiers(&pods, &nss, &pols, &cluster, Probe { from: src, to: dst, ipv6: v6, protocol, port })?;
        out.push_str(&format!("{from} -> {to} {port}/{protocol}: {e}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_with_a_default_protocol() {
        assert_eq!(parse_port("80/TCP").unwrap(), (80, Protocol::Tcp));
        assert_eq!(parse_port("53/udp").unwrap(), (53, Protocol::Udp));
        assert_eq!(parse_port("443").unwrap(), (443, Protocol::Tcp));
        for bad in ["0/TCP", "x/TCP", "80/ICMP", "70000"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        assert!(split_pod("ns/").is_err() && split_pod("pod").is_err());
    }
}
