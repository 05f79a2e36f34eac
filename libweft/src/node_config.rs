//! `/run/weft/node.json`: what the agent tells the plugin about this node.
//!
//! The agent writes it (atomically, only when it changes); the plugin reads it
//! on every ADD when its network config has no `subnets`. Keeping this file the
//! only channel means the plugin never calls the agent or the API server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::cni::{SubnetsError, parse_subnets};
use crate::file::FileError;

/// Format version written in the file; readers reject newer ones.
pub const NODE_CONFIG_VERSION: u32 = 1;

/// How long a released address stays quarantined when node.json does not
/// say (written by an agent older than the key): weft-agent's default
/// `policyLivenessSeconds` (300) plus its margin (30).
pub const DEFAULT_ADDRESS_QUARANTINE_SECONDS: u64 = 330;

/// Errors reading or writing the node config; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// The file does not exist (yet): the agent has not configured this node.
    #[error("{path} does not exist; is weft-agent running on this node?")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The content is not a valid node config.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The node's pod networking settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    /// Format version, [`NODE_CONFIG_VERSION`].
    pub version: u32,
    /// The Kubernetes node name (for logs).
    #[serde(default)]
    pub node_name: String,
    /// The node's pod subnets (`spec.podCIDRs`), one per family.
    pub subnets: Vec<String>,
    /// MTU for pod interfaces (underlay MTU minus any encapsulation).
    pub mtu: u32,
    /// The cluster's pod CIDRs (informational for the plugin).
    #[serde(default)]
    pub cluster_cidrs: Vec<String>,
    /// How long IPAM keeps a released address out of use: longer than any
    /// node's policy sets may still allow its former pod (the agent's
    /// `policyLivenessSeconds` plus a margin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_quarantine_seconds: Option<u64>,
}

impl NodeConfig {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<NodeConfig, NodeConfigError> {
        // Bounded and non-blocking (crate::file::read_bounded): a real file is a few hundred bytes.
        let bytes = match crate::file::read_bounded(path, 1 << 20) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NodeConfigError::Missing { path: path.to_path_buf() });
            }
            Err(source) => return Err(NodeConfigError::Io { op: "read", path: path.to_path_buf(), source }),
        };
        NodeConfig::from_json(&bytes).map_err(|reason| NodeConfigError::Invalid { path: path.to_path_buf(), reason })
    }

    /// Decodes and validates the file's content; the error says what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<NodeConfig, String> {
        let cfg: NodeConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if cfg.version > NODE_CONFIG_VERSION {
            return Err(format!(
                "format version {} is newer than this plugin understands ({NODE_CONFIG_VERSION})",
                cfg.version
            ));
        }
        cfg.subnets().map_err(|e| e.to_string())?;
        crate::cni::validate_mtu(cfg.mtu, "mtu").map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    /// How long IPAM keeps a released address out of use.
    pub fn address_quarantine(&self) -> Duration {
        Duration::from_secs(self.address_quarantine_seconds.unwrap_or(DEFAULT_ADDRESS_QUARANTINE_SECONDS))
    }

    /// The pod subnets, parsed.
    pub fn subnets(&self) -> Result<Vec<IpNetwork>, SubnetsError> {
        parse_subnets(&self.subnets, "subnets")
    }

    /// The file's content as the agent writes it.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        Ok(json)
    }

    /// Writes the file atomically (temp file + rename) unless it already holds
    /// exactly this content. Returns whether it wrote.
    pub fn write_if_changed(&self, path: &Path) -> Result<bool, NodeConfigError> {
        let json =
            self.to_json().map_err(|e| NodeConfigError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
        crate::file::replace_if_changed(path, &json).map_err(|FileError { op, path, source }| NodeConfigError::Io {
            op,
            path,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeConfig {
        NodeConfig {
            version: 1,
            node_name: "node1".into(),
            subnets: vec!["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()],
            mtu: 1450,
            cluster_cidrs: vec!["10.244.0.0/16".into()],
            address_quarantine_seconds: Some(90),
        }
    }

    #[test]
    fn write_then_load_round_trips_and_skips_identical_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.json");
        assert!(sample().write_if_changed(&path).unwrap());
        assert!(!sample().write_if_changed(&path).unwrap());
        assert_eq!(NodeConfig::load(&path).unwrap(), sample());
        let mut changed = sample();
        changed.mtu = 1400;
        assert!(changed.write_if_changed(&path).unwrap());
        assert_eq!(NodeConfig::load(&path).unwrap().mtu, 1400);
        assert_eq!(NodeConfig::load(&path).unwrap().address_quarantine(), Duration::from_secs(90));
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        assert!(matches!(NodeConfig::load(&path), Err(NodeConfigError::Missing { .. })));
        std::fs::write(&path, "{").unwrap();
        let err = NodeConfig::load(&path).unwrap_err();
        assert!(matches!(err, NodeConfigError::Invalid { .. }));
        assert!(err.to_string().contains("node.json"));
        std::fs::write(&path, r#"{"version":1,"subnets":["10.0.0.0/24"],"mtu":1500}"#).unwrap();
        let old_agent = NodeConfig::load(&path).unwrap();
        assert_eq!(old_agent.address_quarantine(), Duration::from_secs(DEFAULT_ADDRESS_QUARANTINE_SECONDS));
        std::fs::write(&path, r#"{"version":1,"subnets":["10.0.0.1/24"],"mtu":1500}"#).unwrap();
        assert!(NodeConfig::load(&path).unwrap_err().to_string().contains("host bits"));
        std::fs::write(&path, r#"{"version":9,"subnets":["10.0.0.0/24"],"mtu":1500}"#).unwrap();
        assert!(NodeConfig::load(&path).unwrap_err().to_string().contains("newer"));
        std::fs::write(&path, r#"{"version":1,"subnets":["10.0.0.0/24"],"mtu":10}"#).unwrap();
        assert!(NodeConfig::load(&path).unwrap_err().to_string().contains("mtu"));
    }
}
