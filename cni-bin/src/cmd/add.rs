//! ADD: reserve addresses, create and wire the veth pair, report the result.
//! Any failure after the reservation undoes everything: the veth is deleted
//! and the addresses are released, so a failed ADD leaks nothing.

use std::net::IpAddr;

use libweft::cni::{CniError, CniVersion, NetConf, RuntimeEnv};
use libweft::netlink::{Netlink, host_veth_name};
use libweft::netns::NetNs;
use libweft::pending;
use serde_json::Value;

use super::runtime;
use crate::node::{NodeSettings, allocator, attachment};
use crate::wiring::{self, Pod};

pub fn run(env: &RuntimeEnv, conf: &NetConf, version: CniVersion) -> Result<Value, CniError> {
    if conf.prev_result.is_some() {
        return Err(CniError::InvalidConfig(
            "weft creates the pod interface and must be the first plugin of the chain (got a \"prevResult\")".into(),
        ));
    }
    let node = NodeSettings::load(conf)?;
    let netns_path = env.netns_path()?;
    // Everything that can fail without side effects comes before the
    // reservation: a bad netns path or a runtime that cannot start must not
    // leave addresses reserved until GC.
    let netns = NetNs::open(netns_path)?;
    let rt = runtime()?;
    let att = attachment(&env.container_id, &env.ifname);
    let ipam = allocator(conf, node.subnets, node.quarantine)?;
    let ips: Vec<IpAddr> = ipam.allocate(&att)?.into_iter().map(|a| a.ip).collect();
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    // NetworkPolicy from the first packet: a pod whose namespace has
    // isolating policies starts in a pending group that the policy table
    // holds closed until weft-agent has its rules in the kernel.
    let pending = pending::verdict(&pending::path_next_to(&conf.node_config_path()), env.pod_namespace.as_deref());
    if let Some(why) = &pending.unreadable {
        tracing::warn!("{why}");
    }
    if pending::is_pending(pending.group) && env.pod_uid.is_none() {
        // The agent releases a pending veth only for the pod whose UID it
        // records: an address alone may still be an old pod's.
        tracing::warn!(
            container = %env.container_id,
            "CNI_ARGS has no valid K8S_POD_UID: the pod stays held by NetworkPolicy until it is deleted"
        );
    }

    let wired = rt.block_on(async {
        let host = Netlink::connect()?;
        let pod_nl = Netlink::from_socket(netns.route_socket()?)?;
        let pod = Pod {
            container_id: &env.container_id,
            ifname: &env.ifname,
            host_veth: &host_veth,
            netns: &netns,
            ips: &ips,
            mtu: node.mtu,
            group: pending.group,
            uid: env.pod_uid.as_deref(),
        };
        let result = wiring::setup(&host, &pod_nl, &pod).await;
        if result.is_err()
            && let Err(e) = host.delete_link(&host_veth).await
        {
            tracing::error!(veth = %host_veth, "undo failed ADD: {e}");
        }
        result
    });
    match wired {
        Ok(result) => {
            tracing::info!(container = %env.container_id, veth = %host_veth, ?ips, group = pending.group, "attached");
            Ok(result.to_json(version))
        }
        Err(e) => {
            if let Err(re) = ipam.release(&att) {
                // GC reclaims it later; the ADD error is what the runtime needs to see.
                tracing::error!(container = %env.container_id, "undo failed ADD: release addresses: {re}");
            }
            Err(e)
        }
    }
}
