//! The agent's configuration: a JSON file (the chart renders it into a
//! ConfigMap), then flags and environment variables on top. Every invalid
//! value stops startup with a message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// How traffic reaches a peer's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Encapsulate in VXLAN (flannel-compatible semantics).
    Vxlan,
    /// Plain host routes via the peer's node address (needs one L2 segment).
    Routes,
    /// Per peer: routes when the peer is on the local L2 segment, else VXLAN.
    Auto,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::Routes => "routes",
            Backend::Auto => "auto",
        }
    }
}

/// A backend name that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a backend; use vxlan, routes or auto")]
pub struct UnknownBackend(pub String);

impl FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "vxlan" => Ok(Backend::Vxlan),
            "routes" => Ok(Backend::Routes),
            "auto" => Ok(Backend::Auto),
            other => Err(UnknownBackend(other.to_string())),
        }
    }
}

/// What carries established flows. The first packets of every flow go
/// through netfilter either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// The kernel's routing and netfilter, for every packet.
    #[default]
    Nftables,
    /// The tc BPF fast path (`weft-fastpath`) for established, un-NATed
    /// flows; opt-in.
    Bpf,
}

/// An unusable configuration; every variant names the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config key {key:?}: {reason}")]
    Key { key: &'static str, reason: String },
}

/// VXLAN settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VxlanConfig {
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP port (8472 like flannel and the Linux default; 4789 is IANA's).
    pub port: u16,
    /// Transmit checksum offload on the VXLAN device; `None`: on, except on
    /// kernels before 5.7 (see `offload` and the README's measurement).
    pub tx_checksum_offload: Option<bool>,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig { vni: 1, port: 8472, tx_checksum_offload: None }
    }
}

/// The configuration file, as written. `Serialize` lets the fuzz target
/// (fuzz/) check that a parsed file, written back and read again, means the same.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default, rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<String>,
    #[serde(default)]
    pub backend: Option<Backend>,
    #[serde(default)]
    pub vxlan: Option<VxlanConfig>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub masquerade: Option<bool>,
    #[serde(default, rename = "nonMasqueradeCIDRs")]
    pub non_masquerade_cidrs: Vec<String>,
    #[serde(default)]
    pub underlay_interface: Option<String>,
    #[serde(default)]
    pub listen_address: Option<String>,
    #[serde(default)]
    pub health_address: Option<String>,
    #[serde(default)]
    pub resync_period_seconds: Option<u64>,
    #[serde(default)]
    pub ipam_gc_period_seconds: Option<u64>,
    /// Unused since IPAM GC stopped asking the runtime; still accepted so
    /// that configuration files written for earlier releases load.
    #[serde(default)]
    pub cri_socket: Option<PathBuf>,
    #[serde(default)]
    pub cni_conf_dir: Option<PathBuf>,
    #[serde(default)]
    pub cni_bin_dir: Option<PathBuf>,
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    #[serde(default)]
    pub cni_version: Option<String>,
    #[serde(default)]
    pub ipam_gc_grace_seconds: Option<u64>,
    #[serde(default)]
    pub policy_liveness_seconds: Option<u64>,
    #[serde(default)]
    pub network_policy: Option<NetworkPolicyConfig>,
    #[serde(default)]
    pub dataplane: Option<Dataplane>,
    /// Where the BPF fast path pins its maps (a directory on a bpf
    /// filesystem); `/sys/fs/bpf/weft` by default.
    #[serde(default)]
    pub bpf_pin_dir: Option<PathBuf>,
}

/// NetworkPolicy enforcement.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NetworkPolicyConfig {
    /// Watch Pods, Namespaces and NetworkPolicies and keep `inet weft-policy`;
    /// false: remove that table and watch none of them.
    pub enabled: bool,
    /// Send denied packets to NFLOG group `logGroup` (read them with
    /// `tcpdump -i nflog:100` or ulogd), at most `logPerSecond` a second.
    pub log_denied: bool,
    pub log_group: u16,
    pub log_per_second: u32,
    /// Also watch and enforce ClusterNetworkPolicy
    /// (`policy.networking.k8s.io`); a cluster without its CRD has none.
    pub cluster_network_policy: bool,
    /// Say whether weft accepted each policy: an `Accepted` condition on
    /// every ClusterNetworkPolicy, a Warning Event on every NetworkPolicy it
    /// refused (one agent writes them, the holder of a Lease).
    pub report_status: bool,
}

impl Default for NetworkPolicyConfig {
    fn default() -> Self {
        NetworkPolicyConfig {
            enabled: true,
            log_denied: false,
            log_group: 100,
            log_per_second: 10,
            cluster_network_policy: true,
            report_status: true,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub cluster_cidrs: Vec<IpNetwork>,
    pub backend: Backend,
    pub vxlan: VxlanConfig,
    pub mtu: Option<u32>,
    pub masquerade: bool,
    pub non_masquerade_cidrs: Vec<IpNetwork>,
    pub underlay_interface: Option<String>,
    /// Where `/metrics` listens.
    pub listen_address: SocketAddr,
    /// Where `/healthz` and `/readyz` listen (the same listener when equal).
    pub health_address: SocketAddr,
    pub resync_period: Duration,
    pub ipam_gc_period: Duration,
    /// Reservations younger than this are never collected (ADDs in flight).
    pub ipam_gc_grace: Duration,
    /// How long after its agent last had a fresh view of the API the
    /// policy table keeps admitting new connections of isolated pods
    /// (`desired::liveness`).
    pub policy_liveness: Duration,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub run_dir: PathBuf,
    /// `cniVersion` of the conflist. 1.0.0 by default: containerd 1.6 and 1.7
    /// (libcni 1.1) reject 1.1.0 results; weft-agent runs GC itself anyway.
    pub cni_version: String,
    /// Enforce NetworkPolicy (`networkPolicy.enabled`).
    pub network_policy: bool,
    /// Log denied packets through NFLOG (`networkPolicy.logDenied`).
    pub deny_log: Option<DenyLog>,
    /// Enforce ClusterNetworkPolicy too (`networkPolicy.clusterNetworkPolicy`).
    pub cluster_network_policy: bool,
    /// Write policies' acceptance to the API (`networkPolicy.reportStatus`).
    pub report_status: bool,
    /// nftables only, or the BPF fast path for established flows.
    pub dataplane: Dataplane,
    /// The BPF fast path's pin directory.
    pub bpf_pin_dir: PathBuf,
}

impl Config {
    /// The design's dual-stack cluster (`10.244.0.0/16`, `fd00:10:244::/56`)
    /// with `backend` and every other key at its default: the one starting
    /// point of unit tests, privileged tests and benchmarks.
    pub fn example(backend: Backend) -> Config {
        let file = FileConfig {
            cluster_cidrs: vec!["10.244.0.0/16".into(), "fd00:10:244::/56".into()],
            backend: Some(backend),
            ..FileConfig::default()
        };
        file.validate().expect("the example configuration is valid")
    }
}

fn err(key: &'static str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError::Key { key, reason: msg.to_string() }
}

fn cidrs(key: &'static str, raw: &[String]) -> Result<Vec<IpNetwork>, ConfigError> {
    raw.iter()
        .map(|s| {
            let net: IpNetwork = s.parse().map_err(|e| err(key, format!("{s:?} is not a CIDR: {e}")))?;
            if net.ip() != net.network() {
                return Err(err(key, format!("{s:?} has host bits set")));
            }
            Ok(net)
        })
        .collect()
}

impl FileConfig {
    /// Reads the file; a missing file is an error only if `required`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }

    /// Checks every value; errors name the key. Over 60 lines: one check
    /// per key, read top to bottom.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let cluster_cidrs = cidrs("clusterCIDRs", &self.cluster_cidrs)?;
        if cluster_cidrs.is_empty() {
            return Err(err("clusterCIDRs", "required: the cluster's pod CIDRs, e.g. [\"10.244.0.0/16\"]"));
        }
        let vxlan = self.vxlan.unwrap_or_default();
        if vxlan.vni == 0 || vxlan.vni > 0x00ff_ffff {
            return Err(err("vxlan.vni", format!("{} is outside 1..=16777215", vxlan.vni)));
        }
        if vxlan.port == 0 {
            return Err(err("vxlan.port", "must not be 0"));
        }
        if let Some(mtu) = self.mtu {
            libweft::cni::validate_mtu(mtu, "mtu").map_err(|e| err("mtu", e))?;
        }
        // Loopback by default: the agent runs in the host network with
        // NET_ADMIN and exposes nothing to the network unless asked.
        let addr = |key: &'static str, value: Option<String>, default: &str| {
            let v = value.unwrap_or_else(|| default.into());
            v.parse::<SocketAddr>().map_err(|e| err(key, format!("{v:?} is not HOST:PORT: {e}")))
        };
        let listen_address = addr("listenAddress", self.listen_address, "127.0.0.1:9959")?;
        let health_address = addr("healthAddress", self.health_address, "127.0.0.1:9958")?;
        let resync = self.resync_period_seconds.unwrap_or(60);
        if !(1..=3600).contains(&resync) {
            return Err(err("resyncPeriodSeconds", format!("{resync} is outside 1..=3600")));
        }
        let gc = self.ipam_gc_period_seconds.unwrap_or(300);
        if !(10..=86400).contains(&gc) {
            return Err(err("ipamGcPeriodSeconds", format!("{gc} is outside 10..=86400")));
        }
        let grace = self.ipam_gc_grace_seconds.unwrap_or(120);
        if !(5..=3600).contains(&grace) {
            return Err(err("ipamGcGraceSeconds", format!("{grace} is outside 5..=3600")));
        }
        let liveness = self.policy_liveness_seconds.unwrap_or(DEFAULT_POLICY_LIVENESS_SECONDS);
        if !(MIN_POLICY_LIVENESS_SECONDS..=86400).contains(&liveness) {
            return Err(err(
                "policyLivenessSeconds",
                format!("{liveness} is outside {MIN_POLICY_LIVENESS_SECONDS}..=86400"),
            ));
        }
        if let Some(i) = &self.underlay_interface
            && libweft::cni::validate_ifname(i).is_err()
        {
            return Err(err("underlayInterface", format!("{i:?} is not an interface name")));
        }
        let cni_version = self.cni_version.unwrap_or_else(|| "1.0.0".into());
        if cni_version.parse::<libweft::cni::CniVersion>().is_err() {
            return Err(err(
                "cniVersion",
                format!("{cni_version:?} is not one of {}", libweft::cni::SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        let np = self.network_policy.unwrap_or_default();
        if !(1..=10_000).contains(&np.log_per_second) {
            return Err(err("networkPolicy.logPerSecond", format!("{} is outside 1..=10000", np.log_per_second)));
        }
        let deny_log = np.log_denied.then_some(DenyLog { group: np.log_group, per_second: np.log_per_second });
        let bpf_pin_dir = self.bpf_pin_dir.unwrap_or_else(|| crate::base::names::BPF_PIN_DIR.into());
        if !bpf_pin_dir.is_absolute() || bpf_pin_dir.parent().is_none() {
            return Err(err("bpfPinDir", format!("{} is not an absolute directory below /", bpf_pin_dir.display())));
        }
        Ok(Config {
            dataplane: self.dataplane.unwrap_or_default(),
            bpf_pin_dir,
            network_policy: np.enabled,
            cluster_network_policy: np.cluster_network_policy,
            report_status: np.report_status,
            deny_log,
            cni_version,
            cluster_cidrs,
            backend: self.backend.unwrap_or(Backend::Auto),
            vxlan,
            mtu: self.mtu,
            masquerade: self.masquerade.unwrap_or(true),
            non_masquerade_cidrs: cidrs("nonMasqueradeCIDRs", &self.non_masquerade_cidrs)?,
            underlay_interface: self.underlay_interface,
            listen_address,
            health_address,
            resync_period: Duration::from_secs(resync),
            ipam_gc_period: Duration::from_secs(gc),
            ipam_gc_grace: Duration::from_secs(grace),
            policy_liveness: Duration::from_secs(liveness),
            cni_conf_dir: self.cni_conf_dir.unwrap_or_else(|| "/etc/cni/net.d".into()),
            cni_bin_dir: self.cni_bin_dir.unwrap_or_else(|| "/opt/cni/bin".into()),
            run_dir: self.run_dir.unwrap_or_else(|| "/run/weft".into()),
        })
    }
}

/// `policyLivenessSeconds` by default.
pub const DEFAULT_POLICY_LIVENESS_SECONDS: u64 = 300;
/// Its least value. kube-apiserver 1.36 sends an idle watch its first
/// bookmark about 120 s after the watch starts (kube's watcher starts a new
/// one every 290 s), then one a minute: an idle agent's views can be 122 s
/// old (measured), and its gate must outlast that with the renewal's slack
/// (`desired::liveness`).
pub const MIN_POLICY_LIVENESS_SECONDS: u64 = 180;
/// How much longer than the policy liveness IPAM quarantines a released
/// address: the time a deletion may take to reach the other agents' watches
/// (the plugin's DEL runs before the Pod object goes, and the API server
/// delivers it to watches after that).
pub const QUARANTINE_MARGIN: Duration = Duration::from_secs(30);

impl Config {
    /// How long IPAM keeps a released address out of use: longer than any
    /// node's policy table may still allow its former pod.
    pub fn address_quarantine(&self) -> Duration {
        self.policy_liveness + QUARANTINE_MARGIN
    }
}

/// Denied packets go to an NFLOG group, at most `per_second` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyLog {
    pub group: u16,
    pub per_second: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        serde_json::from_str::<FileConfig>(json).map_err(|e| e.to_string())?.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_sane() {
        let c = parse(r#"{"clusterCIDRs":["10.244.0.0/16","fd00:10:244::/56"]}"#).unwrap();
        assert_eq!(c.backend, Backend::Auto);
        assert_eq!(c.vxlan, VxlanConfig { vni: 1, port: 8472, tx_checksum_offload: None });
        assert!(c.masquerade);
        assert_eq!(c.resync_period, Duration::from_secs(60));
        assert_eq!(c.policy_liveness, Duration::from_secs(300));
        assert_eq!(c.address_quarantine(), Duration::from_secs(330), "longer than the liveness, by construction");
        assert_eq!(c.listen_address, "127.0.0.1:9959".parse().unwrap());
        assert_eq!(c.health_address, "127.0.0.1:9958".parse().unwrap());
        assert!(c.network_policy, "NetworkPolicy is enforced unless disabled");
        let off = parse(r#"{"clusterCIDRs":["10.244.0.0/16"],"networkPolicy":{"enabled":false}}"#).unwrap();
        assert!(!off.network_policy);
        assert!(c.cluster_network_policy, "ClusterNetworkPolicy is watched unless disabled");
        let no_cnp = r#"{"clusterCIDRs":["10.244.0.0/16"],"networkPolicy":{"clusterNetworkPolicy":false}}"#;
        assert!(!parse(no_cnp).unwrap().cluster_network_policy);
        assert!(c.report_status, "policies' acceptance is written unless disabled");
        let quiet = r#"{"clusterCIDRs":["10.244.0.0/16"],"networkPolicy":{"reportStatus":false}}"#;
        assert!(!parse(quiet).unwrap().report_status);
        assert_eq!(c.deny_log, None, "denials are not logged unless asked");
        assert_eq!(c.dataplane, Dataplane::Nftables, "the BPF fast path is opt-in");
        assert_eq!(c.bpf_pin_dir, Path::new("/sys/fs/bpf/weft"));
        let bpf = parse(r#"{"clusterCIDRs":["10.244.0.0/16"],"dataplane":"bpf"}"#).unwrap();
        assert_eq!(bpf.dataplane, Dataplane::Bpf);
        let log =
            parse(r#"{"clusterCIDRs":["10.244.0.0/16"],"networkPolicy":{"logDenied":true,"logGroup":7}}"#).unwrap();
        assert_eq!(log.deny_log, Some(DenyLog { group: 7, per_second: 10 }));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{}"#, "clusterCIDRs"),
            (r#"{"clusterCIDRs":["10.244.0.1/16"]}"#, "clusterCIDRs"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"backend":"ipip"}"#, "ipip"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"vxlan":{"vni":0}}"#, "vxlan.vni"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"vxlan":{"port":0}}"#, "vxlan.port"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"mtu":70000}"#, "mtu"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"nonMasqueradeCIDRs":["x"]}"#, "nonMasqueradeCIDRs"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"listenAddress":"nope"}"#, "listenAddress"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"healthAddress":"::1"}"#, "healthAddress"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"resyncPeriodSeconds":0}"#, "resyncPeriodSeconds"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"underlayInterface":"a/b"}"#, "underlayInterface"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"typo":1}"#, "typo"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"networkPolicy":{"enable":false}}"#, "enable"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"networkPolicy":{"logPerSecond":0}}"#, "logPerSecond"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"cniVersion":"2.0.0"}"#, "cniVersion"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"policyLivenessSeconds":120}"#, "policyLivenessSeconds"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"dataplane":"xdp"}"#, "xdp"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"bpfPinDir":"weft"}"#, "bpfPinDir"),
            (r#"{"clusterCIDRs":["10.244.0.0/16"],"bpfPinDir":"/"}"#, "bpfPinDir"),
        ];
        for (json, key) in cases {
            let e = parse(json).unwrap_err();
            assert!(e.contains(key), "{json}: {e}");
        }
    }
}
