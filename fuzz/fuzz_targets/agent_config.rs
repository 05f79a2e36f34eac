//! weft-agent's config file (node-agent/src/config.rs). A file that
//! validates holds usable values, and written back and read again it
//! validates to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_agent::config::FileConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = serde_json::from_slice::<FileConfig>(data) else { return };
    let Ok(config) = file.clone().validate() else { return };
    assert!(!config.cluster_cidrs.is_empty());
    for c in config.cluster_cidrs.iter().chain(&config.non_masquerade_cidrs) {
        assert_eq!(c.ip(), c.network(), "{c}");
    }
    assert!((1..=0x00ff_ffff).contains(&config.vxlan.vni));
    assert_ne!(config.vxlan.port, 0);
    if let Some(mtu) = config.mtu {
        assert!((1280..=65535).contains(&mtu));
    }
    let written = serde_json::to_vec(&file).expect("a FileConfig serializes");
    let again: FileConfig = serde_json::from_slice(&written).expect("what we write parses");
    assert_eq!(again.validate().ok(), Some(config));
});
