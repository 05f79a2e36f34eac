//! The files the CNI plugin reads: `/run/weft/node.json` and the conflist.
//! Their content only; `apply::files` writes them, in the right order.

use std::path::PathBuf;

use ipnetwork::IpNetwork;
use libweft::node_config::{NODE_CONFIG_VERSION, NodeConfig};
use serde_json::{Value, json};

use crate::config::Config;

/// File name of the conflist; sorts before most others (containerd uses the first).
pub const CONFLIST_NAME: &str = "10-weft.conflist";
/// Where the plugin logs (it appends).
pub const PLUGIN_LOG: &str = "/var/log/weft/cni.log";

/// Where node.json lives.
pub fn node_config_path(cfg: &Config) -> PathBuf {
    cfg.run_dir.join("node.json")
}

/// Where the list of namespaces with NetworkPolicies lives
/// ([`libweft::pending`]): next to node.json, where the plugin looks.
pub fn policy_namespaces_path(cfg: &Config) -> PathBuf {
    libweft::pending::path_next_to(&node_config_path(cfg))
}

/// Where the conflist lives.
pub fn conflist_path(cfg: &Config) -> PathBuf {
    cfg.cni_conf_dir.join(CONFLIST_NAME)
}

/// Whether the `portmap` plugin is installed next to weft (hostPort support).
pub fn portmap_installed(cfg: &Config) -> bool {
    cfg.cni_bin_dir.join("portmap").exists()
}

/// The conflist: weft first, then `portmap` when it is installed.
pub fn conflist(cfg: &Config, has_portmap: bool) -> Value {
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

/// The node.json content for this node.
pub fn node_config(cfg: &Config, name: &str, subnets: &[IpNetwork], mtu: u32) -> NodeConfig {
    NodeConfig {
        version: NODE_CONFIG_VERSION,
        node_name: name.to_string(),
        subnets: subnets.iter().map(ToString::to_string).collect(),
        mtu,
        cluster_cidrs: cfg.cluster_cidrs.iter().map(ToString::to_string).collect(),
        address_quarantine_seconds: Some(cfg.address_quarantine().as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    #[test]
    fn node_config_carries_subnets_mtu_and_cluster() {
        let c = Config::example(Backend::Vxlan);
        let n = node_config(&c, "n1", &["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()], 1450);
        assert_eq!(n.version, NODE_CONFIG_VERSION);
        assert_eq!(n.node_name, "n1");
        assert_eq!(n.subnets, vec!["10.244.1.0/24", "fd00:10:244:1::/64"]);
        assert_eq!(n.mtu, 1450);
        assert_eq!(n.cluster_cidrs, vec!["10.244.0.0/16", "fd00:10:244::/56"]);
    }

    #[test]
    fn conflist_has_weft_first_and_portmap_only_when_installed() {
        let mut c = Config::example(Backend::Auto);
        c.run_dir = "/run/w".into();
        let list = conflist(&c, false);
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["name"], "weft");
        assert_eq!(list["plugins"][0]["type"], "weft");
        assert_eq!(list["plugins"][0]["nodeConfig"], "/run/w/node.json");
        assert_eq!(list["plugins"][0]["dataDir"], "/run/w/ipam");
        assert_eq!(list["plugins"].as_array().unwrap().len(), 1);
        let with = conflist(&c, true);
        assert_eq!(with["plugins"][1]["type"], "portmap");
        assert_eq!(with["plugins"][1]["capabilities"]["portMappings"], true);
    }
}
