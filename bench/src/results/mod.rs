//! The benchmarks' JSON results, one type per benchmark, written by the
//! benchmark and read by bench-report: the schema lives here once. Field
//! names are the JSON keys; fields that older result files lack have
//! defaults, so the committed results still read.
//!
//! bench/run writes `meta.json` and bench/pod-startup.sh `pods.json`
//! (Python); their types here are read-only.

mod agent;
mod cni;
mod net;
mod policy;
mod run;

use serde::{Deserialize, Serialize};

pub use agent::{AgentRun, Pass, PassSummary, ProcessProfile, ProfiledFunction, SlowestPass, WakeupCount};
pub use cni::{CniRun, CniSamples, CniSummary};
pub use net::{
    Crossings, FailedSetup, Measurement, NetRow, NetRun, NetSamples, PairedGroup, PairedMetric, PairedSample,
    RowMetric, SetupNotes, SystemProfile, VariantError,
};
pub use policy::PolicyRun;
pub use run::{PodStartup, PodStartupCni, RunMeta, Timer};

/// One row of a benchmark's summary table (agent-bench, policy-bench):
/// the same rows its text output prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub metric: String,
    pub value: f64,
    /// The design's target, or empty.
    pub target: String,
}

impl MetricRow {
    pub fn new(metric: impl Into<String>, value: f64, target: &str) -> MetricRow {
        MetricRow { metric: metric.into(), value, target: target.into() }
    }
}

/// The value of the first row whose metric starts with `prefix`.
pub fn metric_value(rows: &[MetricRow], prefix: &str) -> Option<f64> {
    rows.iter().find(|r| r.metric.starts_with(prefix)).map(|r| r.value)
}

/// Prints `rows` as the text table of a benchmark: metric, value, target.
pub fn print_metric_rows(rows: &[MetricRow], metric_width: usize) {
    println!("{:<metric_width$} {:>10}  target", "metric", "value");
    for r in rows {
        println!("{:<metric_width$} {:>10.1}  {}", r.metric, r.value, r.target);
    }
}

/// The running kernel's release and the CPUs this process may use, as
/// every result records them.
pub fn machine() -> (String, usize) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    (kernel.trim().to_string(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))
}

/// Prints `result` as one line of JSON on stdout (a benchmark's `--json`).
pub fn print_json<T: Serialize>(result: &T) {
    println!("{}", serde_json::to_string(result).expect("a benchmark result serializes"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    fn read<T: DeserializeOwned>(name: &str) -> T {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("report").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The committed report's results (bench/report/*.json) read as their types.
    #[test]
    fn the_committed_results_read_as_their_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("report");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            match name.split(['-', '.']).next() {
                _ if !name.ends_with(".json") => continue,
                Some("agent") => assert!(!read::<AgentRun>(&name).results.is_empty(), "{name}"),
                Some("cni") => assert!(!read::<CniRun>(&name).samples.is_empty(), "{name}"),
                Some("policy") => assert!(!read::<PolicyRun>(&name).results.is_empty(), "{name}"),
                Some("net") => assert!(!read::<NetRun>(&name).rows.is_empty(), "{name}"),
                Some("meta") => assert!(!read::<RunMeta>(&name).date.is_empty(), "{name}"),
                Some("pods") => assert!(read::<PodStartup>(&name).cnis.contains_key("weft"), "{name}"),
                _ => panic!("{name}: a result file of no known type"),
            }
            seen += 1;
        }
        assert!(seen >= 6, "only {seen} result files in {}", dir.display());
    }

    #[test]
    fn metric_rows_are_found_by_prefix() {
        let rows =
            [MetricRow::new("peak RSS (MiB)", 30.0, "< 32"), MetricRow::new("idle CPU (% of one core)", 0.5, "")];
        assert_eq!(metric_value(&rows, "idle CPU"), Some(0.5));
        assert_eq!(metric_value(&rows, "cold start"), None);
    }
}
