//! The files the CNI plugin reads: `/run/weft/node.json` and the conflist.
//!
//! Order matters: node.json first, then the conflist. containerd reports the
//! node's network ready as soon as a conflist exists, so writing it last
//! means no pod is sent to weft before weft knows the node's subnets.

use std::path::{Path, PathBuf};

use libweft::file::replace_if_changed;
use libweft::node_config::{NODE_CONFIG_VERSION, NodeConfig};
use serde_json::json;

use crate::config::Config;

/// File name of the conflist; sorts before most others (containerd uses the first).
pub const CONFLIST_NAME: &str = "10-weft.conflist";
/// Where the agent writes logs of the plugin (the plugin appends).
pub const PLUGIN_LOG: &str = "/var/log/weft/cni.log";

/// Paths of the node files.
pub fn node_config_path(cfg: &Config) -> PathBuf {
    cfg.run_dir.join("node.json")
}

pub fn conflist_path(cfg: &Config) -> PathBuf {
    cfg.cni_conf_dir.join(CONFLIST_NAME)
}

/// The conflist: weft first, then `portmap` when it is installed (hostPort).
pub fn conflist(cfg: &Config, has_portmap: bool) -> serde_json::Value {
    let mut plugins = vec![json!({
        "type": "weft",
        "nodeConfig": node_config_path(cfg),
        "dataDir": cfg.run_dir.join("ipam"),
        "logFile": PLUGIN_LOG,
        "logLevel": "info",
    })];
    if has_portmap {
        plugins.push(json!({"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}));
    }
    json!({"cniVersion": cfg.cni_version, "name": "weft", "plugins": plugins})
}

/// Writes node.json then the conflist, each only if its content changed.
pub fn write(cfg: &Config, node: &NodeConfig) -> Result<bool, String> {
    let wrote_node = node.write_if_changed(&node_config_path(cfg)).map_err(|e| e.to_string())?;
    let has_portmap = cfg.cni_bin_dir.join("portmap").exists();
    let mut text = serde_json::to_vec_pretty(&conflist(cfg, has_portmap)).map_err(|e| e.to_string())?;
    text.push(b'\n');
    let path = conflist_path(cfg);
    let wrote_list = replace_if_changed(&path, &text).map_err(|e| e.to_string())?;
    Ok(wrote_node || wrote_list)
}

/// The node.json content for this node.
pub fn node_config(cfg: &Config, name: &str, subnets: &[ipnetwork::IpNetwork], mtu: u32) -> NodeConfig {
    NodeConfig {
        version: NODE_CONFIG_VERSION,
        node_name: name.to_string(),
        subnets: subnets.iter().map(ToString::to_string).collect(),
        mtu,
        cluster_cidrs: cfg.cluster_cidrs.iter().map(ToString::to_string).collect(),
    }
}

/// Copies the plugin binary into the CNI bin dir atomically: a runtime
/// exec'ing it mid-copy sees the old file or the new one, never half of one.
pub fn install_binary(src: &Path, bin_dir: &Path) -> Result<PathBuf, String> {
    let bytes = std::fs::read(src).map_err(|e| format!("read {}: {e}", src.display()))?;
    let dst = bin_dir.join("weft");
    replace_if_changed(&dst, &bytes).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", dst.display()))?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    fn cfg(dir: &Path) -> Config {
        let mut c = Config::example(Backend::Auto);
        c.run_dir = dir.join("run");
        c.cni_conf_dir = dir.join("net.d");
        c.cni_bin_dir = dir.join("bin");
        c
    }

    #[test]
    fn writes_node_config_then_conflist_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let node = node_config(&c, "n1", &["10.244.1.0/24".parse().unwrap()], 1450);
        assert!(write(&c, &node).unwrap());
        assert!(!write(&c, &node).unwrap(), "unchanged content is not rewritten");
        let list: serde_json::Value = serde_json::from_slice(&std::fs::read(conflist_path(&c)).unwrap()).unwrap();
        assert_eq!(list["plugins"][0]["type"], "weft");
        assert_eq!(list["plugins"].as_array().unwrap().len(), 1, "no portmap when it is not installed");
        let read = NodeConfig::load(&node_config_path(&c)).unwrap();
        assert_eq!(read.subnets, vec!["10.244.1.0/24"]);
        assert!(write(&c, &node_config(&c, "n1", &["10.244.1.0/24".parse().unwrap()], 1400)).unwrap());
    }

    #[test]
    fn portmap_is_chained_when_installed() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        std::fs::create_dir_all(&c.cni_bin_dir).unwrap();
        std::fs::write(c.cni_bin_dir.join("portmap"), b"").unwrap();
        assert_eq!(conflist(&c, true)["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn installs_the_binary_executable() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("weft-src");
        std::fs::write(&src, b"#!/bin/true\n").unwrap();
        let dst = install_binary(&src, &dir.path().join("bin")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777, 0o755);
    }
}
