//! The weft-agent process a benchmark measures: its configuration and its
//! start in a node namespace, the same way for every benchmark, and what
//! agent-bench and policy-bench read of it: its CPU time and memory, and
//! its reconcile pass times.

use std::path::Path;

use libweft::testutil::TestNs;
use libweft::testutil::agent::{self, AGENT_HTTP};
use libweft::testutil::control_plane::{ControlPlane, Proc};
use serde_json::{Value, json};

/// Where the measured agent serves its metrics, inside its node namespace.
pub const METRICS_ADDRESS: &str = AGENT_HTTP;

/// The shared weft-agent configuration (`libweft::testutil::agent`) with
/// no container runtime to ask, and no IPAM garbage collection during the
/// run (it would add unmeasured work).
pub struct AgentConfig(agent::AgentConfig);

impl AgentConfig {
    pub fn new(dir: &Path, cluster_cidrs: [&str; 2], backend: &str) -> AgentConfig {
        AgentConfig(
            agent::AgentConfig::new(dir, cluster_cidrs, backend)
                .with("criSocket", json!(dir.join("no-cri.sock")))
                .with("ipamGcPeriodSeconds", json!(86400)),
        )
    }

    /// Sets one more top-level key of the configuration.
    pub fn with(self, key: &str, value: Value) -> AgentConfig {
        AgentConfig(self.0.with(key, value))
    }

    /// With NetworkPolicy enforcement on.
    pub fn with_network_policy(self) -> AgentConfig {
        self.with("networkPolicy", json!({"enabled": true}))
    }

    /// Writes the configuration to `<dir>/<name>.json` and starts `binary`
    /// as node `node_name` in `ns` against `cp`, logging to `<dir>/<name>.log`
    /// at the level of `WEFT_LOG` (default `warn`: logging thousands of lines
    /// would cost the agent time).
    pub fn spawn(
        &self,
        name: &str,
        binary: &Path,
        node_name: &str,
        ns: &TestNs,
        cp: &ControlPlane,
        dir: &Path,
    ) -> Proc {
        let config = self.0.write(&dir.join(format!("{name}.json")));
        let log_level = std::env::var("WEFT_LOG").unwrap_or_else(|_| "warn".into());
        agent::spawn_agent(name, binary, node_name, ns, &cp.kubeconfig(), &config, &log_level)
    }
}

/// (utime + stime) in clock ticks, and VmHWM / VmRSS in KiB.
pub fn proc_stats(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks, kib("VmHWM:"), kib("VmRSS:"))
}

/// (sum, count) of the agent's `weft_reconcile_duration_seconds`, from its
/// metrics endpoint ([`METRICS_ADDRESS`] in the node namespace).
pub fn pass_seconds(node: &TestNs) -> (f64, f64) {
    let text = node.http_get(METRICS_ADDRESS, "/metrics");
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0)
    };
    (value("weft_reconcile_duration_seconds_sum"), value("weft_reconcile_duration_seconds_count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_every_written_path_in_its_directory() {
        let dir = Path::new("/tmp/bench-x");
        let c = AgentConfig::new(dir, ["10.0.0.0/8", "fd00:10::/48"], "routes").with_network_policy().0;
        let c = c.json();
        assert_eq!(c["backend"], "routes");
        assert_eq!(c["clusterCIDRs"], json!(["10.0.0.0/8", "fd00:10::/48"]));
        assert_eq!(c["networkPolicy"]["enabled"], true);
        for key in ["runDir", "cniConfDir", "cniBinDir", "criSocket"] {
            assert!(c[key].as_str().is_some_and(|p| p.starts_with("/tmp/bench-x/")), "{key}: {}", c[key]);
        }
    }
}
