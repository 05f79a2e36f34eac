//! The plugin's stdin, decoded the way `weft` (cni-bin/src/main.rs) does:
//! parse, version, validate, then what the verbs read from it (`subnets`,
//! `prevResult` for CHECK, `cni.dev/valid-attachments` for GC).
#![no_main]

use std::path::{Component, Path};

use ipnetwork::IpNetwork;
use libfuzzer_sys::fuzz_target;
use libweft::cni::{CniVersion, NetConf, prev_result_ips};

fuzz_target!(|data: &[u8]| {
    let Ok(conf) = NetConf::parse(data) else { return };
    if let Ok(version) = conf.version() {
        assert_eq!(version.as_str().parse::<CniVersion>().ok(), Some(version));
    }
    if conf.validate().is_ok() {
        // The network name names one directory inside dataDir, never a path out of it.
        let mut parts = Path::new(&conf.name).components();
        assert!(matches!(parts.next(), Some(Component::Normal(_))), "name {:?}", conf.name);
        assert!(parts.next().is_none(), "name {:?}", conf.name);
        if let Some(mtu) = conf.mtu {
            assert!((1280..=65535).contains(&mtu));
        }
        if let Some(subnets) = conf.configured_subnets().expect("validate() checked subnets") {
            check_subnets(&subnets);
        }
    }
    if let Some(prev) = &conf.prev_result {
        for ifname in ["eth0", "net1", ""] {
            if let Ok(ips) = prev_result_ips(prev, ifname) {
                for ip in ips {
                    assert_eq!(ip.to_string().parse::<IpNetwork>().ok(), Some(ip));
                }
            }
        }
    }
    if let Ok(valid) = conf.gc_valid_attachments() {
        let again: Vec<libweft::cni::ValidAttachment> =
            serde_json::from_value(serde_json::to_value(valid).expect("serializes")).expect("round trip");
        assert_eq!(again, valid);
    }
});

/// At most one subnet per family, each given by its network address.
fn check_subnets(subnets: &[IpNetwork]) {
    assert!(!subnets.is_empty());
    assert!(subnets.iter().filter(|s| s.is_ipv4()).count() <= 1);
    assert!(subnets.iter().filter(|s| s.is_ipv6()).count() <= 1);
    for s in subnets {
        assert_eq!(s.ip(), s.network(), "{s}");
    }
}
