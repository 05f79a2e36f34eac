//! Every marker by which weft knows what it owns in the kernel, in one
//! place: an operator's `ip route show proto 87` or `nft list table inet
//! weft` starts here. What the CNI plugin shares with the agent lives in
//! `libweft` and is re-exported, so each marker has one definition.

/// Prefix of every host-side pod veth (`weft` + 11 hex digits).
pub use libweft::netlink::HOST_VETH_PREFIX;
/// Route protocol of the peer routes weft-agent installs (`ip route show proto 88`).
pub use libweft::netlink::RTPROT_WEFT_PEER;
/// Route protocol of the pod routes the CNI plugin installs (`ip route show proto 87`).
pub use libweft::netlink::RTPROT_WEFT_POD;
/// Interface groups of pod veths held until the agent knows their pod
/// (8701 ingress, 8702 egress, 8703 both; 0 once released).
pub use libweft::pending::{PENDING_BOTH_GROUP, PENDING_EGRESS_GROUP, PENDING_INGRESS_GROUP, READY_GROUP};

/// Where the BPF fast path pins its maps unless `bpfPinDir` says otherwise
/// (`ls /sys/fs/bpf/weft`); its filters sit at tc ingress of the pod veths
/// and the uplink with handle and priority 0x7765 (`tc filter show dev
/// <veth> ingress`).
pub const BPF_PIN_DIR: &str = "/sys/fs/bpf/weft";

/// The routing table: `nft list table inet weft` (masquerade, forward
/// accept, anti-spoofing, the node address sets).
pub const WEFT_TABLE: &str = "weft";

/// The NetworkPolicy table: `nft list table inet weft-policy`.
pub const POLICY_TABLE: &str = "weft-policy";

/// The policy table's liveness gate: a set whose one element (per family)
/// expires unless weft-agent, with a fresh view of the API, keeps renewing it.
pub const LIVENESS_SET: &str = "liveness";

/// The named counter in `inet weft-policy` of new connections of isolated
/// pods dropped while the liveness gate is closed.
pub const STALE_COUNTER: &str = "policy_stale";

/// weft's VXLAN device. It carries both pod families over one underlay
/// family (IPv4 when the node has it), so an IPv6 pod network needs no
/// second device.
pub const VXLAN_DEV: &str = "weft.vxlan";

/// [`HOST_VETH_PREFIX`] as an nftables interface-name wildcard
/// (`iifname "weft*"`): every host-side pod veth.
pub const HOST_VETH_GLOB: &str = "weft*";

/// The named counters of what `inet weft` drops, with the reason each
/// stands for (the `reason` label of `weft_dropped_packets_total`).
pub const DROP_COUNTERS: [(&str, &str); 3] = [
    ("spoofed_source", "a pod sent from an address that is not its own"),
    ("pod_vxlan", "a pod sent to the VXLAN port"),
    ("vxlan_unknown_peer", "a VXLAN packet came from an address that is no believed peer's"),
];

/// The named counter in `inet weft-policy` of what no policy allowed in a
/// direction (`ingress_denied`, `egress_denied`).
pub fn denied_counter(direction: impl std::fmt::Display) -> String {
    format!("{direction}_denied")
}

/// The named counter of what a direction drops to or from pending pods.
pub fn pending_counter(direction: impl std::fmt::Display) -> String {
    format!("{direction}_pending")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_veth_glob_matches_the_prefix() {
        assert_eq!(HOST_VETH_GLOB, format!("{HOST_VETH_PREFIX}*"));
        assert!(VXLAN_DEV.starts_with(HOST_VETH_PREFIX), "rules exempt the VXLAN device from the pod glob");
    }
}
