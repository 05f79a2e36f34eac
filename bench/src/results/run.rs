//! What bench/run records of a run (`meta.json`) and bench/pod-startup.sh's
//! result (`pods.json`), both written in Python: read here only.

use std::collections::BTreeMap;

use serde::Deserialize;

/// bench/run's record of the run.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RunMeta {
    /// `%Y-%m-%d %H:%M UTC` of its start.
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub minutes: f64,
    pub quick: bool,
    /// The 1-minute load average every 30 s, pod start-up apart.
    pub loadavg_1min: Vec<f64>,
    pub loadavg_1min_pod_startup: Vec<f64>,
}

/// bench/pod-startup.sh's result: `pods` pods created `rounds` times per CNI.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PodStartup {
    pub pods: usize,
    pub rounds: usize,
    /// By CNI: "weft" and "ptp".
    pub cnis: BTreeMap<String, PodStartupCni>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PodStartupCni {
    /// Creation to Ready of every pod.
    pub ready_ms: Vec<f64>,
    /// containerd's and kubelet's timers summed over the workers, by name
    /// (`create_network`, `run_podsandbox`).
    #[serde(default)]
    pub timers: BTreeMap<String, Timer>,
}

/// A timer's sum (seconds) and count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Timer {
    pub sum: f64,
    pub count: f64,
}
