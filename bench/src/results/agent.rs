//! agent-bench's result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::MetricRow;

/// One agent-bench run (`agent-bench --json`): one weft-agent against an
/// API server holding `nodes` Nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRun {
    pub kernel: String,
    pub cpus: usize,
    pub nodes: usize,
    pub backend: String,
    /// Single-Node creations (and deletions) measured after the cold start.
    pub adds: usize,
    pub create_nodes_seconds: f64,
    /// The summary rows of the text output.
    pub results: Vec<MetricRow>,
    /// Agent start to every peer route in the kernel.
    pub programmed_ms: f64,
    /// `ip -batch` writing the same routes.
    pub floor_ms: f64,
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
    pub peak_rss_kib: u64,
    /// The agent's own timing of its passes (its debug log); none when it
    /// logged no passes.
    pub slowest_pass: Option<SlowestPass>,
    /// perf's view of the cold start (`--profile`).
    pub cold_profile: Option<ProcessProfile>,
}

/// What agent-bench read of the agent's passes: the summary, or (older
/// agent-bench output) the slowest pass alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SlowestPass {
    Summary(PassSummary),
    Alone(Pass),
}

/// The slowest pass (the cold one), the median one, and every pass by
/// what woke it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassSummary {
    pub slowest: Pass,
    pub median: Pass,
    pub passes: usize,
    #[serde(default)]
    pub by_wakeup: BTreeMap<String, WakeupCount>,
}

/// One `pass` line of the agent's debug log: what woke it and what it
/// checked (Debug names), and its numeric `key=value` fields (`*_us`: the
/// time of a stage in microseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pass {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wakeup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(flatten)]
    pub fields: BTreeMap<String, u64>,
}

impl Pass {
    /// Parses the `key=value` words of a log line: numbers, and `wakeup`
    /// and `check` as text; other words are left out.
    pub fn from_log_line(line: &str) -> Pass {
        let mut pass = Pass::default();
        for (k, v) in line.split_whitespace().filter_map(|kv| kv.split_once('=')) {
            match v.parse::<u64>() {
                Ok(n) => {
                    pass.fields.insert(k.to_string(), n);
                }
                Err(_) if k == "wakeup" => pass.wakeup = Some(v.to_string()),
                Err(_) if k == "check" => pass.check = Some(v.to_string()),
                Err(_) => {}
            }
        }
        pass
    }

    /// The stage's time in microseconds (`observe_us`, `kernel_us`, ...), 0 if not logged.
    pub fn stage_us(&self, stage: &str) -> u64 {
        self.fields.get(stage).copied().unwrap_or(0)
    }

    /// The sum of every stage's time.
    pub fn total_us(&self) -> u64 {
        self.fields.iter().filter(|(k, _)| k.ends_with("_us")).map(|(_, v)| v).sum()
    }
}

/// The passes one kind of wakeup caused, and their summed time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WakeupCount {
    pub passes: u64,
    pub total_us: u64,
}

/// A `perf record -p` profile of one process: the kernel's share, and the
/// functions above 0.5 % of the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessProfile {
    pub kernel_percent: f64,
    pub top: Vec<ProfiledFunction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfiledFunction {
    pub percent: f64,
    pub dso: String,
    pub symbol: String,
    /// In the kernel, on the process's behalf.
    pub kernel: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_lines_keep_numbers_and_what_woke_them() {
        let p = Pass::from_log_line(
            "2026-12-03T16:00:00Z DEBUG weft_agent::agent: pass wakeup=Start check=Resync observe_us=10 kernel_us=32 nodes=5 note=x",
        );
        assert_eq!((p.wakeup.as_deref(), p.check.as_deref()), (Some("Start"), Some("Resync")));
        assert_eq!((p.stage_us("kernel_us"), p.stage_us("files_us"), p.total_us()), (32, 0, 42));
        assert!(!p.fields.contains_key("note"));
    }

    #[test]
    fn both_shapes_of_the_pass_summary_read() {
        let summary = r#"{"slowest": {"wakeup": "Start", "kernel_us": 9}, "median": {"kernel_us": 1}, "passes": 3,
            "by_wakeup": {"Start": {"passes": 1, "total_us": 9}}}"#;
        let SlowestPass::Summary(s) = serde_json::from_str(summary).unwrap() else { panic!("a summary") };
        assert_eq!((s.passes, s.slowest.stage_us("kernel_us"), s.by_wakeup["Start"].passes), (3, 9, 1));
        let alone: SlowestPass = serde_json::from_str(r#"{"kernel_us": 9, "wakeup": "Start"}"#).unwrap();
        assert!(matches!(alone, SlowestPass::Alone(p) if p.total_us() == 9));
        let back: SlowestPass =
            serde_json::from_str(&serde_json::to_string(&SlowestPass::Summary(s.clone())).unwrap()).unwrap();
        assert_eq!(back, SlowestPass::Summary(s));
    }
}
