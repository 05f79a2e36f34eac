//! Publishes this node's weft annotations (underlay addresses, VTEP MAC,
//! backend) so peers can program routes to it. Only weft.dev/ keys are ever
//! written, and only when they differ from what the Node already says.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

use crate::node_view::{ANN_BACKEND, ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, ANN_VTEP_MAC};
use crate::watch::WatchedNode;

/// The annotations this node should carry.
pub fn wanted(underlay: &crate::desired::Underlay, vtep_mac: [u8; 6], backend: &str) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    if let Some(v4) = underlay.v4 {
        a.insert(ANN_PUBLIC_IP.to_string(), v4.ip().to_string());
    }
    if let Some(v6) = underlay.v6 {
        a.insert(ANN_PUBLIC_IPV6.to_string(), v6.ip().to_string());
    }
    a.insert(ANN_VTEP_MAC.to_string(), libweft::netlink::format_mac(&vtep_mac));
    a.insert(ANN_BACKEND.to_string(), backend.to_string());
    a
}

/// Patches the Node when an annotation differs; returns whether it patched.
pub async fn publish(
    api: &Api<Node>,
    node: &WatchedNode,
    wanted: &BTreeMap<String, String>,
) -> Result<bool, kube::Error> {
    let current: BTreeMap<String, String> = node.weft.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let stale: BTreeMap<&String, Option<&String>> = wanted
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k, Some(v)))
        // A previously published IPv6 address that no longer exists is removed (null in a merge patch).
        .chain(
            [ANN_PUBLIC_IP, ANN_PUBLIC_IPV6]
                .iter()
                .filter(|k| current.contains_key(**k) && !wanted.contains_key(**k))
                .filter_map(|k| current.get_key_value(*k).map(|(k, _)| (k, None))),
        )
        .collect();
    if stale.is_empty() {
        return Ok(false);
    }
    let name = node.metadata.name.clone().unwrap_or_default();
    let patch = serde_json::json!({"metadata": {"annotations": stale}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::info!(node = %name, annotations = ?wanted, "published weft annotations");
    Ok(true)
}
