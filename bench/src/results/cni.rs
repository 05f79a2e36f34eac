//! cni-bench's result.

use serde::{Deserialize, Serialize};

/// One cni-bench run (`cni-bench --json`): weft against the reference
/// plugins with `existing` pods of each already on the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniRun {
    pub kernel: String,
    pub cpus: usize,
    /// "IPv4 only" or "dual-stack".
    pub family: String,
    /// Sequential pods per round.
    pub pods: usize,
    pub rounds: usize,
    /// Pods of each plugin's own on the node while it was measured.
    pub existing: usize,
    /// The summary rows of the text output.
    pub results: Vec<CniSummary>,
    /// Every measurement, per plugin.
    pub samples: Vec<CniSamples>,
}

/// One metric, weft against the reference; the ratio is null when the
/// reference measured zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniSummary {
    pub metric: String,
    pub weft: f64,
    pub reference: f64,
    pub ratio: Option<f64>,
    /// The design's target for the ratio, or empty.
    pub target: String,
}

/// One plugin's measurements: each ADD's and DEL's latency, and each
/// round's throughput of concurrent ADDs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniSamples {
    pub plugin: String,
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
    pub adds_per_sec: Vec<f64>,
}

impl CniRun {
    /// The samples of `plugin` ("weft" or "ptp+host-local"); none if it was not measured.
    pub fn samples_of(&self, plugin: &str) -> Option<&CniSamples> {
        self.samples.iter().find(|s| s.plugin == plugin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_run_reads_back_what_it_writes() {
        let run = CniRun {
            kernel: "6.1".into(),
            cpus: 2,
            family: "IPv4 only".into(),
            pods: 4,
            rounds: 1,
            existing: 10,
            results: vec![CniSummary {
                metric: "ADD median (ms)".into(),
                weft: 1.0,
                reference: 0.0,
                ratio: None,
                target: String::new(),
            }],
            samples: vec![CniSamples {
                plugin: "weft".into(),
                add_ms: vec![1.0, 2.0],
                del_ms: vec![0.5],
                adds_per_sec: vec![300.0],
            }],
        };
        let back: CniRun = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        assert_eq!(back, run);
        assert_eq!(back.samples_of("weft").map(|s| s.add_ms.len()), Some(2));
        assert!(back.samples_of("ptp+host-local").is_none());
    }
}
