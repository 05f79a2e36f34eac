//! policy-bench's result.

use serde::{Deserialize, Serialize};

use super::MetricRow;

/// One policy-bench run (`policy-bench --json`): one weft-agent enforcing
/// `policies` NetworkPolicies and `cluster_policies` ClusterNetworkPolicies
/// over `pods` pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRun {
    pub kernel: String,
    pub cpus: usize,
    /// /proc/loadavg's first three fields at the end.
    pub load_average: String,
    pub pods: usize,
    pub policies: usize,
    /// ClusterNetworkPolicies (0: none, and no CRD; results before them).
    #[serde(default)]
    pub cluster_policies: usize,
    pub namespaces: usize,
    /// Samples per kind of change.
    pub samples: usize,
    #[serde(default)]
    pub hostile_pods: usize,
    #[serde(default)]
    pub hostile_policy: bool,
    /// Pods on the agent's node.
    pub local_pods: usize,
    /// Seconds to fill the API server.
    pub setup_seconds: f64,
    /// The summary rows of the text output.
    pub results: Vec<MetricRow>,
}
