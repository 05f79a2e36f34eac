//! weft-agent as the privileged tests and the benchmarks run it: its
//! configuration file, every path it writes inside one directory, and its
//! start in a node namespace against a real API server.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::TestNs;
use super::control_plane::Proc;

/// Where the agent serves its probes and metrics, inside its node namespace.
pub const AGENT_HTTP: &str = "127.0.0.1:9959";

/// A weft-agent configuration (`--config`): the cluster CIDRs, the backend,
/// metrics at [`AGENT_HTTP`], and the run, CNI config and CNI bin
/// directories inside `dir`; [`AgentConfig::with`] adds the rest.
pub struct AgentConfig(Value);

impl AgentConfig {
    pub fn new(dir: &Path, cluster_cidrs: [&str; 2], backend: &str) -> AgentConfig {
        AgentConfig(json!({
            "clusterCIDRs": cluster_cidrs,
            "backend": backend,
            "listenAddress": AGENT_HTTP,
            "runDir": dir.join("run"),
            "cniConfDir": dir.join("net.d"),
            "cniBinDir": dir.join("bin"),
        }))
    }

    /// Sets one more top-level key of the configuration.
    pub fn with(mut self, key: &str, value: Value) -> AgentConfig {
        self.0[key] = value;
        self
    }

    /// The configuration as JSON.
    pub fn json(&self) -> &Value {
        &self.0
    }

    /// Writes the configuration to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.0.to_string())
            .unwrap_or_else(|e| panic!("write the agent config {}: {e}", path.display()));
        path.to_path_buf()
    }
}

/// Starts `binary run` as node `node_name` in `ns` with the configuration
/// at `config`, the API server of `kubeconfig`, and `WEFT_LOG=log_level`;
/// it logs to `<name>.log` beside `config`.
pub fn spawn_agent(
    name: &str,
    binary: &Path,
    node_name: &str,
    ns: &TestNs,
    kubeconfig: &Path,
    config: &Path,
    log_level: &str,
) -> Proc {
    let log_dir = config.parent().unwrap_or(Path::new("."));
    Proc::spawn(
        name,
        ns,
        &[&binary.display().to_string(), "run", "--node-name", node_name, "--config", &config.display().to_string()],
        &[("KUBECONFIG", &kubeconfig.display().to_string()), ("WEFT_LOG", log_level)],
        log_dir,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_written_path_is_in_the_directory() {
        let c = AgentConfig::new(Path::new("/tmp/agent-x"), ["10.0.0.0/8", "fd00:10::/48"], "routes")
            .with("resyncPeriodSeconds", json!(2));
        let c = c.json();
        assert_eq!((c["backend"].as_str(), c["listenAddress"].as_str()), (Some("routes"), Some(AGENT_HTTP)));
        assert_eq!(c["clusterCIDRs"], json!(["10.0.0.0/8", "fd00:10::/48"]));
        assert_eq!(c["resyncPeriodSeconds"], 2);
        for key in ["runDir", "cniConfDir", "cniBinDir"] {
            assert!(c[key].as_str().is_some_and(|p| p.starts_with("/tmp/agent-x/")), "{key}: {}", c[key]);
        }
    }
}
