//! What the plugin needs to know about this node: pod subnets and MTU, from
//! the network config or from the agent's node config.

use std::path::Path;
use std::time::Duration;

use ipnetwork::IpNetwork;
use libweft::cni::{CniError, NetConf};
use libweft::file::FileError;
use libweft::ipam::{Allocator, Attachment, DiskStore};
use libweft::node_config::{DEFAULT_ADDRESS_QUARANTINE_SECONDS, NodeConfig, NodeConfigError};

/// MTU when neither the config nor the node config says.
const DEFAULT_MTU: u32 = 1500;

/// Subnets, MTU and address quarantine for this node.
pub struct NodeSettings {
    pub subnets: Vec<IpNetwork>,
    pub mtu: u32,
    pub quarantine: Duration,
}

impl NodeSettings {
    /// `subnets` from the config win; otherwise the agent's node config is
    /// required (a missing one is "try again later": the agent is starting).
    pub fn load(conf: &NetConf) -> Result<NodeSettings, CniError> {
        let node = || NodeConfig::load(&conf.node_config_path());
        let (subnets, node) = match conf.configured_subnets()? {
            Some(subnets) => (subnets, node().ok()),
            None => {
                let n = node()?;
                let subnets = n.subnets().map_err(|e| {
                    CniError::from(NodeConfigError::Invalid { path: conf.node_config_path(), reason: e.to_string() })
                })?;
                (subnets, Some(n))
            }
        };
        Ok(NodeSettings {
            subnets,
            mtu: conf.mtu.or(node.as_ref().map(|n| n.mtu)).unwrap_or(DEFAULT_MTU),
            quarantine: quarantine_of(node.as_ref()),
        })
    }

    /// The address quarantine alone (GC), the default without a node config.
    pub fn quarantine(conf: &NetConf) -> Duration {
        quarantine_of(NodeConfig::load(&conf.node_config_path()).ok().as_ref())
    }
}

/// The node config's address quarantine, or the default one.
fn quarantine_of(node: Option<&NodeConfig>) -> Duration {
    node.map_or(Duration::from_secs(DEFAULT_ADDRESS_QUARANTINE_SECONDS), NodeConfig::address_quarantine)
}

/// The IPAM allocator for this network, keeping released addresses out of
/// use for `quarantine` (only allocation and GC read it: a release records
/// its time whatever it is).
pub fn allocator(
    conf: &NetConf,
    subnets: Vec<IpNetwork>,
    quarantine: Duration,
) -> Result<Allocator<DiskStore>, CniError> {
    let store = DiskStore::open(&conf.data_dir(), &conf.name)?;
    Ok(Allocator::new(store, subnets)?.with_quarantine(quarantine))
}

/// The attachment key of this invocation.
pub fn attachment(container_id: &str, ifname: &str) -> Attachment {
    Attachment { container_id: container_id.to_string(), ifname: ifname.to_string() }
}

/// A probe that `dir` accepts new files (STATUS).
pub fn check_writable(dir: &Path) -> Result<(), FileError> {
    std::fs::create_dir_all(dir).map_err(|source| FileError { op: "create", path: dir.to_path_buf(), source })?;
    let probe = dir.join(format!(".status-probe-{}", std::process::id()));
    libweft::file::write_new(&probe, b"")?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
