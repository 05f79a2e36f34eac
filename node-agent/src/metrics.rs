//! Prometheus metrics, served on `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabel {
    pub output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabel {
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabel {
    pub field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubnetLabel {
    pub subnet: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    pub registry: Registry,
    pub peers: Family<BackendLabel, Gauge>,
    pub routes: Gauge,
    pub neighbours: Gauge,
    pub fdb_entries: Gauge,
    pub reconcile_seconds: Histogram,
    pub event_to_programmed_seconds: Histogram,
    pub errors: Family<KindLabel, Counter>,
    pub rejected_annotations: Family<FieldLabel, Counter>,
    /// Peers refused for a claim on what another node holds, by field.
    pub refused_peers: Family<FieldLabel, Counter>,
    pub ipam_in_use: Family<SubnetLabel, Gauge<f64, AtomicU64>>,
    pub ipam_capacity: Family<SubnetLabel, Gauge<f64, AtomicU64>>,
    pub ipam_gc_freed: Counter,
    pub tx_checksum_offload: Gauge,
    pub nodes: Gauge,
    /// Unix time of the last pass in which every output succeeded.
    pub last_successful_sync: Gauge<f64, AtomicU64>,
    /// Kernel objects written (added, replaced or deleted), by kind.
    pub kernel_writes: Family<KindLabel, Counter>,
    /// Failed applies, by output (observe, kernel, nftables, files, api).
    pub sync_errors: Family<OutputLabel, Counter>,
    /// Passes run, by what woke the loop (start, node, drift, resync, retry).
    pub sync_passes: Family<TriggerLabel, Counter>,
    /// Packets weft's nftables table dropped, by reason (its named
    /// counters, read when scraped).
    pub dropped_packets: Family<ReasonLabel, Counter>,
    /// NetworkPolicies selecting a pod of this node.
    pub network_policies: Gauge,
    /// Packets NetworkPolicy denied, by direction (the policy table's named
    /// counters, read when scraped).
    pub policy_denied_packets: Family<DirectionLabel, Counter>,
    /// Packets dropped to or from pods whose policy is not in the kernel
    /// yet, by direction (read when scraped).
    pub policy_pending_dropped_packets: Family<DirectionLabel, Counter>,
    /// Host veths of this node still in a pending group.
    pub policy_pending_interfaces: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft");
        let m = Metrics {
            peers: Family::default(),
            routes: Gauge::default(),
            neighbours: Gauge::default(),
            fdb_entries: Gauge::default(),
            // 0.5 ms .. ~16 s
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            event_to_programmed_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            errors: Family::default(),
            rejected_annotations: Family::default(),
            refused_peers: Family::default(),
            ipam_in_use: Family::default(),
            ipam_capacity: Family::default(),
            ipam_gc_freed: Counter::default(),
            tx_checksum_offload: Gauge::default(),
            nodes: Gauge::default(),
            last_successful_sync: Gauge::default(),
            kernel_writes: Family::default(),
            sync_errors: Family::default(),
            sync_passes: Family::default(),
            dropped_packets: Family::default(),
            network_policies: Gauge::default(),
            policy_denied_packets: Family::default(),
            policy_pending_dropped_packets: Family::default(),
            policy_pending_interfaces: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("peers", "Peer nodes by the backend used to reach them", m.peers.clone());
        registry.register("routes_programmed", "Routes to peer pod subnets in the kernel", m.routes.clone());
        registry.register("neighbours_programmed", "Permanent neighbours on the VXLAN device", m.neighbours.clone());
        registry.register("fdb_entries_programmed", "FDB entries on the VXLAN device", m.fdb_entries.clone());
        registry.register("reconcile_duration_seconds", "Duration of one reconcile pass", m.reconcile_seconds.clone());
        registry.register(
            "node_event_to_programmed_seconds",
            "From a Node event arriving to the kernel state being programmed",
            m.event_to_programmed_seconds.clone(),
        );
        registry.register("errors", "Errors by kind", m.errors.clone());
        registry.register(
            "rejected_annotations",
            "Malformed or hostile values on Node objects that were ignored",
            m.rejected_annotations.clone(),
        );
        registry.register(
            "refused_peers",
            "Peers refused for claiming another node's pod CIDR, address or VTEP MAC, or a MAC not derived from their name",
            m.refused_peers.clone(),
        );
        registry.register("ipam_addresses_in_use", "Pod addresses allocated on this node", m.ipam_in_use.clone());
        registry.register("ipam_addresses_capacity", "Pod addresses this node can allocate", m.ipam_capacity.clone());
        registry.register(
            "ipam_gc_freed",
            "Leaked pod addresses reclaimed by garbage collection",
            m.ipam_gc_freed.clone(),
        );
        registry.register(
            "vxlan_tx_checksum_offload",
            "Transmit checksum offload on the VXLAN device (1 on, 0 off, -1 unknown or no device)",
            m.tx_checksum_offload.clone(),
        );
        registry.register("nodes", "Nodes in the watch cache", m.nodes.clone());
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "Unix time of the last pass in which every output succeeded",
            m.last_successful_sync.clone(),
        );
        registry.register(
            "kernel_writes",
            "Kernel objects added, replaced or deleted, by kind",
            m.kernel_writes.clone(),
        );
        registry.register("sync_errors", "Failed applies of one output, by output", m.sync_errors.clone());
        registry.register(
            "sync_passes",
            "Passes run, by trigger: start, node (a Node event), drift (the kernel changed what weft owns), resync, retry",
            m.sync_passes.clone(),
        );
        registry.register(
            "dropped_packets",
            "Packets dropped by weft's nftables table, by reason: spoofed_source, pod_vxlan, vxlan_unknown_peer (reset when the table is replaced)",
            m.dropped_packets.clone(),
        );
        registry.register(
            "network_policies",
            "NetworkPolicies selecting a pod of this node",
            m.network_policies.clone(),
        );
        registry.register(
            "policy_denied_packets",
            "Packets to (ingress) or from (egress) this node's pods that no NetworkPolicy allowed (reset when the policy table is replaced)",
            m.policy_denied_packets.clone(),
        );
        registry.register(
            "policy_pending_dropped_packets",
            "Packets to (ingress) or from (egress) new pods of this node dropped while weft-agent did not know them yet (reset when the policy table is replaced)",
            m.policy_pending_dropped_packets.clone(),
        );
        registry.register(
            "policy_pending_interfaces",
            "Pod interfaces held closed until weft-agent has their pod's NetworkPolicy in the kernel",
            m.policy_pending_interfaces.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&KindLabel { kind: kind.to_string() }).inc();
    }

    /// Counts `n` kernel writes of `kind`.
    pub fn kernel_writes(&self, kind: &str, n: usize) {
        if n > 0 {
            self.kernel_writes.get_or_create(&KindLabel { kind: kind.to_string() }).inc_by(n as u64);
        }
    }

    /// Counts one pass woken by `trigger`.
    pub fn sync_pass(&self, trigger: &str) {
        self.sync_passes.get_or_create(&TriggerLabel { trigger: trigger.to_string() }).inc();
    }

    /// Counts one failed apply of `output`.
    pub fn sync_error(&self, output: &str) {
        self.sync_errors.get_or_create(&OutputLabel { output: output.to_string() }).inc();
    }

    /// Sets the dropped-packet counters to what the table's counters say.
    pub fn set_dropped(&self, counts: &[(&str, u64)]) {
        for (reason, packets) in counts {
            let c = self.dropped_packets.get_or_create(&ReasonLabel { reason: reason.to_string() });
            c.inner().store(*packets, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Sets the policy counters to what the policy table's counters say.
    pub fn set_policy_counts(&self, counts: &crate::apply::policy::Counts) {
        for (family, counts) in
            [(&self.policy_denied_packets, &counts.denied), (&self.policy_pending_dropped_packets, &counts.pending)]
        {
            for (d, packets) in counts {
                let c = family.get_or_create(&DirectionLabel { direction: d.to_string() });
                c.inner().store(*packets, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
