//! CHECK: the attachment still looks exactly as ADD left it.

use std::net::IpAddr;

use libweft::cni::{CniError, CniVersion, NetConf, RuntimeEnv, prev_result_ips};
use libweft::netlink::{Netlink, host_veth_name};
use libweft::netns::NetNs;

use super::runtime;
use crate::node::{NodeSettings, allocator, attachment};
use crate::wiring::{self, Pod};

pub fn run(env: &RuntimeEnv, conf: &NetConf, version: CniVersion) -> Result<(), CniError> {
    version.require_at_least(CniVersion::V0_4_0, "CHECK")?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::InvalidConfig("CHECK needs \"prevResult\" (the result of ADD)".into()))?;
    let mut expected: Vec<IpAddr> = prev_result_ips(prev, &env.ifname)?.iter().map(|n| n.ip()).collect();

    let node = NodeSettings::load(conf)?;
    let att = attachment(&env.container_id, &env.ifname);
    let mut held: Vec<IpAddr> =
        allocator(conf, node.subnets, node.quarantine)?.find(&att)?.into_iter().map(|a| a.ip).collect();
    expected.sort();
    held.sort();
    if expected != held {
        return Err(CniError::CheckFailed(format!(
            "IPAM holds {held:?} for this attachment but prevResult says {expected:?}"
        )));
    }

    let netns_path = env.netns_path()?;
    let netns = NetNs::open(netns_path)?;
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    runtime()?.block_on(async {
        let host = Netlink::connect()?;
        let pod_nl = Netlink::from_socket(netns.route_socket()?)?;
        let pod = Pod {
            container_id: &env.container_id,
            ifname: &env.ifname,
            host_veth: &host_veth,
            netns: &netns,
            ips: &held,
            mtu: node.mtu,
            // CHECK does not look at the group: it changes by design.
            group: 0,
            uid: None,
        };
        wiring::check(&host, &pod_nl, &pod).await
    })
}
