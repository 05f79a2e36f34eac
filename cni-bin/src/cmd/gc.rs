//! GC (CNI 1.1): free every reservation whose attachment the runtime no
//! longer knows. Host veths need no GC: a veth dies with its pod's netns.

use std::collections::HashSet;

use libweft::cni::{CniError, CniVersion, NetConf};
use libweft::ipam::Attachment;

use crate::node::{NodeSettings, allocator, attachment};

pub fn run(conf: &NetConf, version: CniVersion) -> Result<(), CniError> {
    version.require_at_least(CniVersion::V1_1_0, "GC")?;
    let valid: HashSet<Attachment> =
        conf.gc_valid_attachments()?.iter().map(|a| attachment(&a.container_id, &a.ifname)).collect();
    let freed = allocator(conf, Vec::new(), NodeSettings::quarantine(conf))?.gc(&valid)?;
    if !freed.is_empty() {
        tracing::info!(?freed, "GC freed addresses of attachments the runtime no longer knows");
    }
    Ok(())
}
