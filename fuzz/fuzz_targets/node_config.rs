//! `/run/weft/node.json` as the plugin reads it. Whatever it accepts, the
//! agent writes back to the same config, and it holds usable subnets and MTU.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libweft::node_config::{NODE_CONFIG_VERSION, NodeConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = NodeConfig::from_json(data) else { return };
    assert!(cfg.version <= NODE_CONFIG_VERSION);
    assert!((1280..=65535).contains(&cfg.mtu));
    let subnets = cfg.subnets().expect("from_json() checked the subnets");
    assert!(!subnets.is_empty() && subnets.len() <= 2);
    for s in &subnets {
        assert_eq!(s.ip(), s.network(), "{s}");
    }
    let written = cfg.to_json().expect("a NodeConfig serializes");
    assert_eq!(NodeConfig::from_json(&written), Ok(cfg));
});
