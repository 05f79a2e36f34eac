//! net-bench's result: the setups measured one after another (`rows`) and
//! the paired groups of `net_paired`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One net-bench run (its stdout). Every field has a default: a run that
/// left a part out reads as empty there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetRun {
    pub kernel: String,
    pub cpus: usize,
    /// Seconds of each throughput measurement, and of each latency and
    /// connection-rate one (older output: `secs` for both).
    pub secs: u32,
    pub rr_secs: Option<u32>,
    pub reps: usize,
    pub underlay_mtu: u32,
    /// The CPUs the client and the server end of every measurement were
    /// bound to, `[client, server]`; `None`: left to the scheduler.
    pub pinned_cpus: Option<[usize; 2]>,
    /// Whether the agent turns VXLAN transmit checksum offload on here.
    pub chosen_offload: bool,
    /// NetworkPolicies of the paired setups.
    pub policies: usize,
    /// Whether the setups apart were profiled (`--profile`).
    pub profiled: bool,
    /// The first profile that failed.
    pub profile_error: Option<String>,
    pub seconds: f64,
    pub loadavg_end: String,
    pub failed: Vec<FailedSetup>,
    pub rows: Vec<NetRow>,
    pub paired: Vec<PairedGroup>,
}

/// A setup that could not be wired, and was skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedSetup {
    pub topology: String,
    pub setup: String,
    pub error: String,
}

/// One setup measured for one family and congestion control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetRow {
    pub topology: String,
    pub setup: String,
    pub family: String,
    pub cc: String,
    #[serde(default)]
    pub pod_mtu: u32,
    /// VXLAN transmit checksum offload on node 1's device, if it has one.
    #[serde(default)]
    pub offload: Option<bool>,
    #[serde(flatten)]
    pub samples: NetSamples,
    #[serde(flatten)]
    pub notes: SetupNotes,
    /// perf's view of one 1-stream iperf3 run, and of a connection-rate run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<SystemProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_conn: Option<SystemProfile>,
    /// Older output's `weft routes, N policies` setup: the same pods
    /// measured with no policy selecting them, paired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unselected: Option<NetSamples>,
}

/// Every repetition's value of each metric of a row; latency and the
/// connection rate only in the first row of a family.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetSamples {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gbps_1: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_tx_1: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_rx_1: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gbps_4: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_tx_4: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_rx_4: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rr_p50_us: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rr_p99_us: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conn_per_s: Vec<f64>,
}

/// A metric of [`NetSamples`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowMetric {
    /// Gbit/s with 1 stream.
    Gbps1,
    Gbps4,
    /// Sender and receiver iperf3 cores per Gbit/s, 1 stream.
    CpuTx1,
    CpuRx1,
    RrP50,
    RrP99,
    ConnPerS,
}

impl NetSamples {
    pub fn values(&self, m: RowMetric) -> &[f64] {
        match m {
            RowMetric::Gbps1 => &self.gbps_1,
            RowMetric::Gbps4 => &self.gbps_4,
            RowMetric::CpuTx1 => &self.cpu_tx_1,
            RowMetric::CpuRx1 => &self.cpu_rx_1,
            RowMetric::RrP50 => &self.rr_p50_us,
            RowMetric::RrP99 => &self.rr_p99_us,
            RowMetric::ConnPerS => &self.conn_per_s,
        }
    }
}

/// What a setup did beyond wiring, copied into its rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SetupNotes {
    /// The device node 1 sends the peer pod's traffic to, IPv4 and IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Vec<String>>,
    /// Why the pods could not be measured unselected by the policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired_error: Option<String>,
    /// With policies: which ports were checked allowed and blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<String>,
    /// With policies: how many, and the policy chains in each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_chains: Option<Vec<usize>>,
}

/// A system-wide `perf record -a -g` while one run generated the traffic:
/// per class, its share of the samples of the traffic's work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemProfile {
    /// What the run measured while profiled: throughput or connection rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_per_s: Option<f64>,
    /// The traffic's samples over all samples.
    #[serde(default)]
    pub share_of_all_samples: f64,
    /// By class (netfilter, tcp, copy, ...): share of the traffic's samples (self time).
    #[serde(default)]
    pub classes: BTreeMap<String, f64>,
    /// Share of the samples in netfilter hooks and their callees.
    #[serde(default)]
    pub under_nf_hook_slow: Option<f64>,
    /// The symbols with the most samples, and the netfilter ones: `[symbol, share]`.
    #[serde(default)]
    pub top: Vec<(String, f64)>,
    #[serde(default)]
    pub top_netfilter: Vec<(String, f64)>,
    /// perf's sampling event (`cpu-clock:ppp` without a hardware PMU).
    #[serde(default)]
    pub event: String,
}

/// One paired group: every variant of a backend for one family, measured
/// in interleaved rounds on the same namespaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedGroup {
    pub backend: String,
    pub family: String,
    pub cc: String,
    /// Bytes per transfer.
    pub bytes: u64,
    /// Seconds of new connections per sample.
    pub conn_secs: f64,
    pub policies: usize,
    /// ClusterNetworkPolicies loaded (0: none; groups before them).
    #[serde(default)]
    pub cluster_policies: usize,
    pub min_rounds: usize,
    pub adaptive_pairs: usize,
    pub budget_s: f64,
    pub seconds: f64,
    /// Target half-width of every interval (0.03: ± 3 %).
    pub target_half_width: f64,
    pub variants: Vec<String>,
    /// `(a, b)`: a's ratio over b is reported.
    pub comparisons: Vec<(String, String)>,
    pub samples: Vec<PairedSample>,
    /// By variant, when profiled.
    #[serde(default)]
    pub profiles: BTreeMap<String, SystemProfile>,
    /// VXLAN, IPv4: the netfilter hooks a transfer crosses.
    #[serde(default)]
    pub crossings: Option<Crossings>,
    #[serde(default)]
    pub errors: Vec<VariantError>,
}

/// One measurement of a variant in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedSample {
    pub round: usize,
    pub variant: String,
    #[serde(flatten)]
    pub m: Measurement,
}

/// What one paired sample measures: a fixed-size 1-stream transfer and a
/// connection-rate run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub gbps: f64,
    /// CPU-seconds per GB: both iperf3 processes (getrusage) plus the
    /// machine's irq and softirq time over the transfer.
    pub cpu_s_per_gb: f64,
    /// CPU-seconds per GB of the whole machine (busy time): other work on
    /// a shared machine lands here too.
    #[serde(default)]
    pub machine_cpu_s_per_gb: f64,
    pub conn_per_s: f64,
}

/// A metric of [`Measurement`] that ratios are computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairedMetric {
    Gbps,
    CpuSPerGb,
    ConnPerS,
}

impl PairedMetric {
    pub const ALL: [PairedMetric; 3] = [PairedMetric::Gbps, PairedMetric::CpuSPerGb, PairedMetric::ConnPerS];

    /// How this metric's ratios are estimated. One stream's throughput on
    /// 2 cores is bimodal whatever the CPU placement (bench/README.md,
    /// "CPU placement"), so it is compared by the fast mode: the 90th
    /// percentile of each variant's transfers; CPU per byte by its most
    /// efficient transfers, the 10th percentile. New connections scatter
    /// around one rate: same-round pairs.
    pub fn estimator(self) -> crate::stats::Estimator {
        match self {
            PairedMetric::Gbps => crate::stats::Estimator::Quantile(0.9),
            PairedMetric::CpuSPerGb => crate::stats::Estimator::Quantile(0.1),
            PairedMetric::ConnPerS => crate::stats::Estimator::Paired,
        }
    }
}

impl Measurement {
    pub fn get(&self, m: PairedMetric) -> f64 {
        match m {
            PairedMetric::Gbps => self.gbps,
            PairedMetric::CpuSPerGb => self.cpu_s_per_gb,
            PairedMetric::ConnPerS => self.conn_per_s,
        }
    }
}

/// Per node, `(hook, inner packets, outer packets)`; or why they were not counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Crossings {
    Failed { error: String },
    Counted(BTreeMap<String, Vec<(String, u64, u64)>>),
}

/// A variant left out of a group, or whose profile failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantError {
    pub variant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_error: Option<String>,
}

impl NetRun {
    /// The row of a setup on a topology for a family and congestion control.
    pub fn row(&self, topology: &str, setup: &str, family: &str, cc: &str) -> Option<&NetRow> {
        self.rows.iter().find(|r| r.topology == topology && r.setup == setup && r.family == family && r.cc == cc)
    }

    /// The topologies, in the order they were measured.
    pub fn topologies(&self) -> Vec<String> {
        distinct(self.rows.iter().map(|r| r.topology.clone()))
    }

    /// The setups on `topology`, in the order they were measured.
    pub fn setups(&self, topology: &str) -> Vec<String> {
        distinct(self.rows.iter().filter(|r| r.topology == topology).map(|r| r.setup.clone()))
    }

    /// The (family, congestion control) pairs, in the order they were measured.
    pub fn combos(&self) -> Vec<(String, String)> {
        distinct(self.rows.iter().map(|r| (r.family.clone(), r.cc.clone())))
    }

    /// The paired group of a backend and family.
    pub fn group(&self, backend: &str, family: &str) -> Option<&PairedGroup> {
        self.paired.iter().find(|g| g.backend == backend && g.family == family)
    }
}

impl PairedGroup {
    /// The values of `m`, as `(round, variant, value)`.
    pub fn values(&self, m: PairedMetric) -> Vec<(usize, &str, f64)> {
        self.samples.iter().map(|s| (s.round, s.variant.as_str(), s.m.get(m))).collect()
    }

    /// `a` over `b` for `m`, with its 95 % interval, by `m`'s estimator.
    pub fn ratio_ci(&self, a: &str, b: &str, m: PairedMetric) -> Option<crate::stats::RatioCi> {
        crate::stats::ratio_ci(&self.values(m), &a, &b, m.estimator())
    }
}

/// The items in their first order, each once.
fn distinct<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_keeps_its_keys_flat() {
        let row = NetRow {
            topology: "one segment".into(),
            setup: "weft auto".into(),
            family: "IPv4".into(),
            cc: "cubic".into(),
            pod_mtu: 1450,
            offload: Some(true),
            samples: NetSamples { gbps_1: vec![10.0], conn_per_s: vec![900.0], ..Default::default() },
            notes: SetupNotes { path: Some(vec!["weft.vxlan".into(), "weft.vxlan".into()]), ..Default::default() },
            profile: None,
            profile_conn: None,
            unselected: None,
        };
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["gbps_1"], serde_json::json!([10.0]));
        assert_eq!(v["path"][0], "weft.vxlan");
        assert!(v.get("gbps_4").is_none() && v.get("profile").is_none());
        assert_eq!(serde_json::from_value::<NetRow>(v).unwrap(), row);
    }

    #[test]
    fn crossings_read_as_counts_or_as_their_error() {
        let counted: Crossings = serde_json::from_str(r#"{"node1": [["prerouting", 10, 2]]}"#).unwrap();
        assert_eq!(counted, Crossings::Counted(BTreeMap::from([("node1".into(), vec![("prerouting".into(), 10, 2)])])));
        let failed: Crossings = serde_json::from_str(r#"{"error": "no nft"}"#).unwrap();
        assert_eq!(failed, Crossings::Failed { error: "no nft".into() });
    }

    #[test]
    fn order_of_first_appearance_is_kept() {
        assert_eq!(distinct([3, 1, 3, 2, 1].into_iter()), vec![3, 1, 2]);
    }
}
