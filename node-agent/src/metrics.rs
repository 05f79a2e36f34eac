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

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PolicyLabel {
    pub direction: String,
    /// `namespace/name`.
    pub policy: String,
}

/// At most this many series of `weft_policy_denied_packets_by_policy_total`:
/// policies selecting this node's pods, in the order of their counters'
/// names; the per-direction totals count the rest too.
pub const MAX_POLICY_SERIES: usize = 1000;

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
    /// Released addresses not handed out again yet (libweft::ipam's quarantine).
    pub ipam_quarantined: Family<SubnetLabel, Gauge<f64, AtomicU64>>,
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
    /// Packets denied to or from pods a policy isolates, by policy.
    pub policy_denied_by_policy: Family<PolicyLabel, Counter>,
    /// The policy table's per-policy counters: counter name → series.
    policy_counters: std::sync::Mutex<std::collections::BTreeMap<String, PolicyLabel>>,
    /// The kernel counters' values at the last read, by metric and label.
    kernel_counter_last: std::sync::Mutex<std::collections::HashMap<(&'static str, String), u64>>,
    /// Packets dropped to or from pods whose policy is not in the kernel
    /// yet, by direction (read when scraped).
    pub policy_pending_dropped_packets: Family<DirectionLabel, Counter>,
    /// Host veths of this node still in a pending group.
    pub policy_pending_interfaces: Gauge,
    /// Seconds until the policy table's liveness gate closes; 0 while closed.
    pub policy_liveness_seconds: Gauge<f64, AtomicU64>,
    /// Pod addresses NetworkPolicy does not believe (desired::pod_trust).
    pub policy_doubted_pod_addresses: Gauge,
    /// Passes that computed the NetworkPolicy state (the others had the
    /// same inputs and applied the last state again).
    pub policy_computes: Counter,
    /// NetworkPolicies refused for going past a cap, by cap.
    pub policy_refused: Family<ReasonLabel, Counter>,
    /// 1 when lists stream through watches (WatchList), 0 when paged.
    pub list_streaming: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered. Over 60 lines: one registration per
    /// metric, with its help text.
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
            ipam_quarantined: Family::default(),
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
            policy_denied_by_policy: Family::default(),
            policy_counters: Default::default(),
            kernel_counter_last: Default::default(),
            policy_pending_dropped_packets: Family::default(),
            policy_pending_interfaces: Gauge::default(),
            policy_liveness_seconds: Gauge::default(),
            policy_doubted_pod_addresses: Gauge::default(),
            policy_computes: Counter::default(),
            policy_refused: Family::default(),
            list_streaming: Gauge::default(),
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
            "ipam_addresses_quarantined",
            "Released pod addresses not handed out again until other nodes' policy tables cannot allow their former pods",
            m.ipam_quarantined.clone(),
        );
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
            "Packets dropped by weft's nftables table, by reason: spoofed_source, pod_vxlan, vxlan_unknown_peer",
            m.dropped_packets.clone(),
        );
        registry.register(
            "network_policies",
            "NetworkPolicies selecting a pod of this node",
            m.network_policies.clone(),
        );
        registry.register(
            "policy_denied_packets",
            "Packets to (ingress) or from (egress) this node's pods that no NetworkPolicy allowed",
            m.policy_denied_packets.clone(),
        );
        registry.register(
            "policy_denied_packets_by_policy",
            "Packets denied to (ingress) or from (egress) pods a NetworkPolicy isolates, by policy (a packet denied to a pod two policies isolate counts for both)",
            m.policy_denied_by_policy.clone(),
        );
        registry.register(
            "policy_pending_dropped_packets",
            "Packets to (ingress) or from (egress) new pods of this node dropped while weft-agent did not know them yet",
            m.policy_pending_dropped_packets.clone(),
        );
        registry.register(
            "policy_pending_interfaces",
            "Pod interfaces held closed until weft-agent has their pod's NetworkPolicy in the kernel",
            m.policy_pending_interfaces.clone(),
        );
        registry.register(
            "policy_liveness_remaining_seconds",
            "Seconds until the policy table stops admitting new connections of isolated pods, unless weft-agent's view of the API is refreshed; 0 while it does not",
            m.policy_liveness_seconds.clone(),
        );
        registry.register(
            "policy_doubted_pod_addresses",
            "Pod addresses NetworkPolicy does not believe: outside their node's podCIDRs, or claimed by two live pods (the log names them)",
            m.policy_doubted_pod_addresses.clone(),
        );
        registry.register(
            "policy_computes",
            "Passes that computed the NetworkPolicy state; the others found its inputs unchanged and applied the last state again",
            m.policy_computes.clone(),
        );
        registry.register(
            "policy_refused",
            "NetworkPolicies refused for going past a cap, by cap (their pods stay isolated with no rule; the log names them)",
            m.policy_refused.clone(),
        );
        registry.register(
            "list_streaming",
            "1 when weft-agent lists Pods, Namespaces and NetworkPolicies as streamed watches (one request, one object in memory), 0 when in pages because the API server refused streaming",
            m.list_streaming.clone(),
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

    /// Counts one NetworkPolicy refused for the cap `cap`.
    pub fn policy_refused(&self, cap: &str) {
        self.policy_refused.get_or_create(&ReasonLabel { reason: cap.to_string() }).inc();
    }

    /// Counts one pass woken by `trigger`.
    pub fn sync_pass(&self, trigger: &str) {
        self.sync_passes.get_or_create(&TriggerLabel { trigger: trigger.to_string() }).inc();
    }

    /// Counts one failed apply of `output`.
    pub fn sync_error(&self, output: &str) {
        self.sync_errors.get_or_create(&OutputLabel { output: output.to_string() }).inc();
    }

    /// Advances the dropped-packet counters by what the table's counters
    /// counted since the last read.
    pub fn set_dropped(&self, counts: &[(&str, u64)]) {
        for (reason, packets) in counts {
            let c = self.dropped_packets.get_or_create(&ReasonLabel { reason: reason.to_string() });
            self.advance(&c, "dropped", reason, *packets);
        }
    }

    /// Advances the policy counters (denied, pending) by what the policy
    /// table's counters counted since the last read: `(direction, packets)`.
    pub fn set_policy_counts(&self, denied: &[(String, u64)], pending: &[(String, u64)]) {
        for (family, metric, counts) in [
            (&self.policy_denied_packets, "policy_denied", denied),
            (&self.policy_pending_dropped_packets, "policy_pending", pending),
        ] {
            for (d, packets) in counts {
                let c = family.get_or_create(&DirectionLabel { direction: d.clone() });
                self.advance(&c, metric, d, *packets);
            }
        }
    }

    /// The per-policy counters the policy table now has (counter name →
    /// series), at most [`MAX_POLICY_SERIES`]; the series of policies that
    /// no longer select a pod here are removed, so the metric stays bounded.
    pub fn set_policy_counters(&self, names: impl IntoIterator<Item = (String, PolicyLabel)>) {
        let names: std::collections::BTreeMap<_, _> = names.into_iter().take(MAX_POLICY_SERIES).collect();
        let mut current = self.policy_counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = self.kernel_counter_last.lock().unwrap_or_else(|e| e.into_inner());
        for (name, label) in current.iter() {
            if names.get(name) != Some(label) {
                self.policy_denied_by_policy.remove(label);
                last.remove(&("by_policy", name.clone()));
            }
        }
        *current = names;
    }

    /// Advances the per-policy counters from the policy table's named
    /// counters (name → packets).
    pub fn set_policy_denied_by_policy(&self, counters: &std::collections::HashMap<String, u64>) {
        let current = self.policy_counters.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (name, label) in current {
            if let Some(packets) = counters.get(&name) {
                let c = self.policy_denied_by_policy.get_or_create(&label);
                self.advance(&c, "by_policy", &name, *packets);
            }
        }
    }

    /// Adds to `c` what a kernel counter counted since the last read. The
    /// kernel's counter starts again from zero when its table is replaced
    /// (a policy change rewrites `inet weft-policy`), so a value below the
    /// last one means "new counter": all of it is new. The exported counter
    /// therefore never goes back.
    fn advance(&self, c: &Counter, metric: &'static str, label: &str, now: u64) {
        let mut last = self.kernel_counter_last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.insert((metric, label.to_string()), now).unwrap_or(0);
        c.inc_by(if now >= prev { now - prev } else { now });
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(m: &Metrics) -> u64 {
        m.policy_denied_packets.get_or_create(&DirectionLabel { direction: "ingress".into() }).get()
    }

    #[test]
    fn kernel_counters_never_go_back_when_their_table_is_replaced() {
        let m = Metrics::new();
        let read = |n: u64| [("ingress".to_string(), n)];
        m.set_policy_counts(&read(5), &[]);
        m.set_policy_counts(&read(8), &[]);
        assert_eq!(denied(&m), 8);
        // The table was replaced: its counter restarted and has counted 3.
        m.set_policy_counts(&read(3), &[]);
        assert_eq!(denied(&m), 11);
        m.set_policy_counts(&read(3), &[]);
        assert_eq!(denied(&m), 11);
        m.set_dropped(&[("spoofed_source", 2)]);
        assert!(m.encode().contains("weft_dropped_packets_total{reason=\"spoofed_source\"} 2"));
    }

    #[test]
    fn per_policy_series_follow_the_policies_that_select_pods_here() {
        let m = Metrics::new();
        let label = |p: &str| PolicyLabel { direction: "ingress".into(), policy: p.into() };
        m.set_policy_counters([("in-pol-a".to_string(), label("ns/a")), ("in-pol-b".to_string(), label("ns/b"))]);
        let counts = |a: u64, b: u64| [("in-pol-a".to_string(), a), ("in-pol-b".to_string(), b)].into();
        m.set_policy_denied_by_policy(&counts(4, 1));
        let text = m.encode();
        assert!(
            text.contains("weft_policy_denied_packets_by_policy_total{direction=\"ingress\",policy=\"ns/a\"} 4"),
            "{text}"
        );
        // ns/b no longer selects a pod here: its series goes.
        m.set_policy_counters([("in-pol-a".to_string(), label("ns/a"))]);
        m.set_policy_denied_by_policy(&counts(6, 9));
        let text = m.encode();
        assert!(text.contains("policy=\"ns/a\"} 6") && !text.contains("ns/b"), "{text}");
        // Bounded: never more series than MAX_POLICY_SERIES.
        m.set_policy_counters(
            (0..MAX_POLICY_SERIES + 50).map(|i| (format!("in-pol-{i:05}"), label(&format!("ns/p{i}")))),
        );
        let all: std::collections::HashMap<String, u64> =
            (0..MAX_POLICY_SERIES + 50).map(|i| (format!("in-pol-{i:05}"), 1)).collect();
        m.set_policy_denied_by_policy(&all);
        assert_eq!(m.encode().matches("weft_policy_denied_packets_by_policy_total{").count(), MAX_POLICY_SERIES);
    }
}
