//! Publishes this node's weft annotations so peers can program routes to
//! it. Only `weft.dev/` keys are ever written, and only when they differ
//! from what the Node already says.
//!
//! The patch goes through the `nodes/status` subresource, as flannel does:
//! the API server keeps metadata changes made there, so the agent needs
//! `patch` on `nodes/status` only, never on the Nodes themselves (whose spec
//! holds the podCIDRs, taints and providerID).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::wire::{ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, WeftAnnotations};

/// The API server refused or did not answer the patch.
#[derive(Debug, thiserror::Error)]
#[error("patch the annotations of Node {node}: {source}")]
pub struct ApiError {
    pub node: String,
    #[source]
    pub source: kube::Error,
}

/// The merge patch that turns `current` into `wanted`, or `None` when they
/// agree. An underlay address published before and gone now is removed
/// (null in a merge patch); other keys weft does not want are left alone.
pub fn annotation_patch(current: &WeftAnnotations, wanted: &BTreeMap<String, String>) -> Option<Value> {
    let current: BTreeMap<&str, &str> = current.iter().collect();
    let mut stale: BTreeMap<&str, Option<&str>> = wanted
        .iter()
        .filter(|(k, v)| current.get(k.as_str()) != Some(&v.as_str()))
        .map(|(k, v)| (k.as_str(), Some(v.as_str())))
        .collect();
    for key in [ANN_PUBLIC_IP, ANN_PUBLIC_IPV6] {
        if current.contains_key(key) && !wanted.contains_key(key) {
            stale.insert(key, None);
        }
    }
    (!stale.is_empty()).then(|| json!({"metadata": {"annotations": stale}}))
}

/// Applies `patch` to the Node called `name`, through its status subresource.
pub async fn publish(api: &Api<Node>, name: &str, patch: &Value) -> Result<(), ApiError> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|source| ApiError { node: name.to_string(), source })?;
    tracing::info!(node = %name, %patch, "published weft annotations");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ANN_BACKEND, ANN_VTEP_MAC};

    fn current(pairs: &[(&str, &str)]) -> WeftAnnotations {
        WeftAnnotations::from_annotations(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn wanted(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn nothing_to_patch_when_the_node_says_it_already() {
        let both = [(ANN_PUBLIC_IP, "198.51.100.11"), (ANN_VTEP_MAC, "0e:00:00:00:00:01"), (ANN_BACKEND, "vxlan")];
        assert_eq!(annotation_patch(&current(&both), &wanted(&both)), None);
    }

    #[test]
    fn only_changed_keys_are_patched_and_a_vanished_address_is_removed() {
        let now = current(&[
            (ANN_PUBLIC_IP, "198.51.100.11"),
            (ANN_PUBLIC_IPV6, "2001:db8:a::11"),
            (ANN_VTEP_MAC, "0e:00:00:00:00:01"),
            (ANN_BACKEND, "vxlan"),
        ]);
        let want =
            wanted(&[(ANN_PUBLIC_IP, "198.51.100.11"), (ANN_VTEP_MAC, "0e:00:00:00:00:01"), (ANN_BACKEND, "routes")]);
        let patch = annotation_patch(&now, &want).unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {"annotations": {ANN_BACKEND: "routes", ANN_PUBLIC_IPV6: null}}}),
            "unchanged keys are not sent"
        );
    }

    #[test]
    fn a_new_node_gets_every_key() {
        let want = wanted(&[(ANN_PUBLIC_IP, "198.51.100.11"), (ANN_VTEP_MAC, "0e:00:00:00:00:01")]);
        let patch = annotation_patch(&WeftAnnotations::default(), &want).unwrap();
        assert_eq!(patch["metadata"]["annotations"].as_object().unwrap().len(), 2);
    }
}
