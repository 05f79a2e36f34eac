//! What the plugin needs to know about this node: pod subnets and MTU, from
//! the network config or from the agent's node config.

use std::path::Path;

use ipnetwork::IpNetwork;
use libweft::cni::{CniError, NetConf};
use libweft::file::FileError;
use libweft::ipam::{Allocator, Attachment, DiskStore};
use libweft::node_config::{NodeConfig, NodeConfigError};

/// MTU when neither the config nor the node config says.
const DEFAULT_MTU: u32 = 1500;

/// Subnets and MTU for this node.
pub struct NodeSettings {
    pub subnets: Vec<IpNetwork>,
    pub mtu: u32,
}

impl NodeSettings {
    /// `subnets` from the config win; otherwise the agent's node config is
    /// required (a missing one is "try again later": the agent is starting).
    pub fn load(conf: &NetConf) -> Result<NodeSettings, CniError> {
        let node = || NodeConfig::load(&conf.node_config_path());
        let (subnets, node_mtu) = match conf.configured_subnets()? {
            Some(subnets) => (subnets, node().ok().map(|n| n.mtu)),
            None => {
                let n = node()?;
                let subnets = n.subnets().map_err(|e| {
                    CniError::from(NodeConfigError::Invalid { path: conf.node_config_path(), reason: e.to_string() })
                })?;
                (subnets, Some(n.mtu))
            }
        };
        Ok(NodeSettings { subnets, mtu: conf.mtu.or(node_mtu).unwrap_or(DEFAULT_MTU) })
    }
}

/// The IPAM allocator for this network.
pub fn allocator(conf: &NetConf, subnets: Vec<IpNetwork>) -> Result<Allocator<DiskStore>, CniError> {
    let store = DiskStore::open(&conf.data_dir(), &conf.name)?;
    Ok(Allocator::new(store, subnets)?)
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
