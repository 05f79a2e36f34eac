//! STATUS (CNI 1.1): ready when the subnets are known, the IPAM directory is
//! writable and free addresses remain; otherwise code 50 with the reason.

use libweft::cni::{CniError, CniVersion, NetConf};

use crate::node::{NodeSettings, allocator, check_writable};

pub fn run(conf: &NetConf, version: CniVersion) -> Result<(), CniError> {
    version.require_at_least(CniVersion::V1_1_0, "STATUS")?;
    let unavailable = |reason: String| CniError::NotAvailable(reason);
    let node = NodeSettings::load(conf).map_err(|e| unavailable(format!("pod subnets unknown: {e}")))?;
    check_writable(&conf.data_dir().join(&conf.name)).map_err(|e| unavailable(format!("IPAM directory: {e}")))?;
    let usage = allocator(conf, node.subnets, node.quarantine)
        .and_then(|a| a.usage().map_err(CniError::from))
        .map_err(|e| unavailable(format!("IPAM store: {e}")))?;
    if let Some(full) = usage.iter().find(|u| u.used + u.quarantined >= u.capacity) {
        return Err(unavailable(format!(
            "no free address left in {} ({} of {} in use, {} quarantined after release)",
            full.subnet, full.used, full.capacity, full.quarantined
        )));
    }
    Ok(())
}
