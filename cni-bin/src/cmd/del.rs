//! DEL: remove the veth pair, then release the addresses. Idempotent: a
//! missing netns, interface or reservation is success (kubelet retries DEL
//! after crashes and reboots, when some of it is already gone).

use std::time::Duration;

use libweft::cni::{CniError, NetConf, RuntimeEnv};
use libweft::netlink::{Netlink, host_veth_name};

use super::runtime;
use crate::node::{allocator, attachment};

pub fn run(env: &RuntimeEnv, conf: &NetConf) -> Result<(), CniError> {
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    // Deleting the host end also removes the pod end and the host routes.
    let deleted = runtime()?.block_on(async { Netlink::connect()?.delete_link(&host_veth).await })?;
    // Release only after the link is gone, so the address cannot be handed to
    // a new pod while the old one can still send from it. DEL needs no
    // subnets, and no quarantine: the release records its time, and ADD
    // keeps the address quarantined from then.
    let released = allocator(conf, Vec::new(), Duration::ZERO)?.release(&attachment(&env.container_id, &env.ifname))?;
    tracing::info!(container = %env.container_id, veth = %host_veth, deleted, ?released, "detached");
    Ok(())
}
