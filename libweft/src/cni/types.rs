//! Network config (stdin), runtime environment (`CNI_*`), and results (stdout).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CniError, CniVersion};

/// Default location of the node config written by `weft-agent`.
pub const DEFAULT_NODE_CONFIG: &str = "/run/weft/node.json";
/// Default IPAM directory: on tmpfs, so a reboot frees every address with its pods.
pub const DEFAULT_DATA_DIR: &str = "/run/weft/ipam";

/// The `weft` plugin's network config, as the runtime passes it on stdin.
/// Unknown keys are ignored (chained plugins and runtimes add their own).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Spec version of this config; decides the result format.
    pub cni_version: String,
    /// Network name; also names the IPAM directory.
    #[serde(default)]
    pub name: String,
    /// Must be `weft`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Pod subnets (IPv4 and/or IPv6). When absent, read from `node_config`.
    #[serde(default)]
    pub subnets: Option<Vec<String>>,
    /// Path of the agent-written node config.
    #[serde(default)]
    pub node_config: Option<PathBuf>,
    /// Directory of the IPAM store.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// MTU override for both veth ends.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Append logs to this file instead of stderr.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// `error`, `warn` (default), `info`, `debug` or `trace`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Result of the previous plugin (DEL and CHECK get weft's own ADD result here).
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC (1.1): the attachments the runtime still knows about.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    /// Container ID as in `CNI_CONTAINERID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name as in `CNI_IFNAME`.
    pub ifname: String,
}

impl NetConf {
    /// Decodes stdin. Bad JSON is code 6; the version is checked by `version()`.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))
    }

    /// The config's spec version (code 1 when unsupported).
    pub fn version(&self) -> Result<CniVersion, CniError> {
        self.cni_version.parse()
    }

    /// Checks the values that every verb relies on. Errors name the field.
    pub fn validate(&self) -> Result<(), CniError> {
        if self.plugin_type != "weft" {
            return Err(CniError::InvalidConfig(format!(
                "field \"type\" is {:?}, this plugin is \"weft\"",
                self.plugin_type
            )));
        }
        validate_network_name(&self.name)?;
        if let Some(mtu) = self.mtu {
            validate_mtu(mtu, "mtu")?;
        }
        if let Some(level) = &self.log_level {
            parse_log_level(level)?;
        }
        self.configured_subnets()?;
        Ok(())
    }

    /// Parsed `subnets`, or `None` when the node config must be read.
    pub fn configured_subnets(&self) -> Result<Option<Vec<IpNetwork>>, CniError> {
        let Some(raw) = &self.subnets else { return Ok(None) };
        parse_subnets(raw, "subnets").map(Some).map_err(|e| CniError::InvalidConfig(e.to_string()))
    }

    /// Where the IPAM store lives.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// Where the node config lives.
    pub fn node_config_path(&self) -> PathBuf {
        self.node_config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_NODE_CONFIG))
    }

    /// The `cni.dev/valid-attachments` list; GC without it is a config error,
    /// because freeing "everything not listed" would free every pod's address.
    pub fn gc_valid_attachments(&self) -> Result<&[ValidAttachment], CniError> {
        self.valid_attachments
            .as_deref()
            .ok_or_else(|| CniError::InvalidConfig("GC needs the field \"cni.dev/valid-attachments\"".to_string()))
    }
}

/// A list of pod subnets weft cannot use; each variant names the field.
#[derive(Debug, thiserror::Error)]
pub enum SubnetsError {
    /// No subnet at all.
    #[error("field {field:?} is empty; give at least one CIDR")]
    Empty {
        /// The field, e.g. `subnets`.
        field: &'static str,
    },
    /// A value that is not a CIDR.
    #[error("field {field:?}: {value:?} is not a CIDR: {source}")]
    NotCidr {
        /// The field.
        field: &'static str,
        /// The value as given.
        value: String,
        /// Why it does not parse.
        #[source]
        source: ipnetwork::IpNetworkError,
    },
    /// A CIDR given by a host address instead of its network address.
    #[error("field {field:?}: {value:?} has host bits set; did you mean {network}?")]
    HostBits {
        /// The field.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What was probably meant.
        network: String,
    },
    /// A second subnet of one family.
    #[error("field {field:?}: more than one {family} subnet")]
    SecondOfFamily {
        /// The field.
        field: &'static str,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
}

/// Parses a list of CIDRs. At most one IPv4 and one IPv6 subnet, each given
/// as its network address (`10.244.1.0/24`, not `10.244.1.7/24`).
pub fn parse_subnets(raw: &[String], field: &'static str) -> Result<Vec<IpNetwork>, SubnetsError> {
    if raw.is_empty() {
        return Err(SubnetsError::Empty { field });
    }
    let mut subnets: Vec<IpNetwork> = Vec::with_capacity(raw.len());
    for s in raw {
        let net: IpNetwork = s.parse().map_err(|source| SubnetsError::NotCidr { field, value: s.clone(), source })?;
        if net.ip() != net.network() {
            let network = format!("{}/{}", net.network(), net.prefix());
            return Err(SubnetsError::HostBits { field, value: s.clone(), network });
        }
        if subnets.iter().any(|o| o.is_ipv4() == net.is_ipv4()) {
            let family = if net.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(SubnetsError::SecondOfFamily { field, family });
        }
        subnets.push(net);
    }
    Ok(subnets)
}

/// The network name becomes a directory name: keep it to a safe alphabet.
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidConfig(format!(
            "field \"name\" is {name:?}; it must be 1-128 characters of [A-Za-z0-9._-]"
        )))
    }
}

/// IPv6 needs 1280; above 65535 the kernel refuses.
pub fn validate_mtu(mtu: u32, field: &str) -> Result<(), CniError> {
    if (1280..=65535).contains(&mtu) {
        Ok(())
    } else {
        Err(CniError::InvalidConfig(format!("field {field:?} is {mtu}; it must be between 1280 and 65535")))
    }
}

/// Log levels accepted in `logLevel`.
pub fn parse_log_level(level: &str) -> Result<tracing::Level, CniError> {
    level.parse().map_err(|_| {
        CniError::InvalidConfig(format!("field \"logLevel\" is {level:?}; use error, warn, info, debug or trace"))
    })
}

/// A CNI verb, from `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container; idempotent.
    Del,
    /// Verify an attachment.
    Check,
    /// Free what is not in the valid-attachments list (1.1).
    Gc,
    /// Report readiness (1.1).
    Status,
    /// Report supported versions.
    Version,
}

impl Command {
    fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::InvalidEnvironment {
                    var: "CNI_COMMAND",
                    reason: format!("unknown command {other:?}; expected ADD, DEL, CHECK, GC, STATUS or VERSION"),
                });
            }
        })
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone)]
pub struct RuntimeEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS` (ADD, CHECK; optional for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`, when the runtime passed one.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_UID` from `CNI_ARGS`, when the runtime passed one of the
    /// form of a UID ([`crate::pending::is_pod_uid`]).
    pub pod_uid: Option<String>,
}

impl RuntimeEnv {
    /// `CNI_NETNS`, which ADD and CHECK require (`from_vars` already refused them without it).
    pub fn netns_path(&self) -> Result<&Path, CniError> {
        self.netns.as_deref().ok_or_else(|| CniError::InvalidEnvironment { var: "CNI_NETNS", reason: "not set".into() })
    }

    /// Reads and validates the variables the command needs; errors (code 4) name the variable.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<RuntimeEnv, CniError> {
        let command = match get("CNI_COMMAND") {
            Some(c) => Command::parse(&c)?,
            None => {
                return Err(CniError::InvalidEnvironment {
                    var: "CNI_COMMAND",
                    reason: "not set; weft is a CNI plugin, run by a container runtime (try --help)".into(),
                });
            }
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut env = RuntimeEnv {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            pod_namespace: None,
            pod_uid: None,
        };
        if per_container {
            env.container_id = require(&get, "CNI_CONTAINERID")?;
            validate_container_id(&env.container_id)?;
            env.ifname = require(&get, "CNI_IFNAME")?;
            validate_ifname(&env.ifname)?;
            env.netns = get("CNI_NETNS").filter(|s| !s.is_empty()).map(PathBuf::from);
            if command != Command::Del && env.netns.is_none() {
                return Err(CniError::InvalidEnvironment { var: "CNI_NETNS", reason: "not set".into() });
            }
        }
        // CNI_ARGS is optional pairs a plugin may ignore: weft only looks for
        // the pod's namespace and UID in it (NetworkPolicy, see
        // `crate::pending`), and anything malformed is no error.
        let args = get("CNI_ARGS").unwrap_or_default();
        env.pod_namespace = cni_arg(&args, "K8S_POD_NAMESPACE");
        env.pod_uid = cni_arg(&args, "K8S_POD_UID").filter(|u| crate::pending::is_pod_uid(u));
        Ok(env)
    }
}

/// The value of `key` in `CNI_ARGS` (`K1=v1;K2=v2`); `None` when absent,
/// empty or not of that form.
fn cni_arg(args: &str, key: &str) -> Option<String> {
    args.split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

fn require(get: &impl Fn(&str) -> Option<String>, var: &'static str) -> Result<String, CniError> {
    match get(var) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError::InvalidEnvironment { var, reason: "not set".into() }),
    }
}

/// `CNI_CONTAINERID` by [`check_container_id`], as a code 4 error.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    super::check_container_id(id)
        .map_err(|why| CniError::InvalidEnvironment { var: "CNI_CONTAINERID", reason: format!("{id:?} {why}") })
}

/// `CNI_IFNAME` by [`check_ifname`], as a code 4 error.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    super::check_ifname(name)
        .map_err(|why| CniError::InvalidEnvironment { var: "CNI_IFNAME", reason: format!("{name:?} {why}") })
}

/// The ADD result, independent of the version it is encoded for.
#[derive(Debug, Clone, PartialEq)]
pub struct AddResult {
    /// Interfaces: index 0 the host veth, index 1 the container's.
    pub interfaces: Vec<Interface>,
    /// Assigned addresses.
    pub ips: Vec<IpConfig>,
    /// Routes installed in the container.
    pub routes: Vec<Route>,
}

/// One interface of the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// MTU (reported from 1.1 on).
    pub mtu: u32,
    /// Netns path for the container side; `None` for the host side.
    pub sandbox: Option<String>,
}

/// One address of the result.
#[derive(Debug, Clone, PartialEq)]
pub struct IpConfig {
    /// Address with prefix (`/32` or `/128` in weft).
    pub address: IpNetwork,
    /// Gateway the container uses.
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: usize,
}

/// One route of the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Destination.
    pub dst: IpNetwork,
    /// Next hop.
    pub gw: Option<IpAddr>,
}

impl AddResult {
    /// Encodes the result in the format of `version`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = serde_json::Map::new();
                o.insert("name".into(), i.name.clone().into());
                o.insert("mac".into(), i.mac.clone().into());
                if version >= CniVersion::V1_1_0 {
                    o.insert("mtu".into(), i.mtu.into());
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), s.clone().into());
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = serde_json::Map::new();
                if version.ips_have_version() {
                    o.insert("version".into(), if ip.address.is_ipv4() { "4" } else { "6" }.into());
                }
                o.insert("interface".into(), ip.interface.into());
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), gw.to_string().into());
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = serde_json::Map::new();
                o.insert("dst".into(), r.dst.to_string().into());
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), gw.to_string().into());
                }
                Value::Object(o)
            })
            .collect();
        serde_json::json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": {},
        })
    }
}

/// The addresses a previous result (`prevResult`) assigned to `ifname`'s
/// container-side interface; used by CHECK. Works for 0.3.x through 1.1.
pub fn prev_result_ips(prev: &Value, ifname: &str) -> Result<Vec<IpNetwork>, CniError> {
    let bad = |what: &str| CniError::Decode(format!("prevResult: {what}"));
    let interfaces = prev.get("interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    let ips = prev.get("ips").and_then(Value::as_array).ok_or_else(|| bad("no \"ips\" list"))?;
    let mut out = Vec::new();
    for ip in ips {
        // Only addresses on the container's `ifname` (or with no interface index) count.
        if let Some(idx) = ip.get("interface").and_then(Value::as_u64) {
            let iface = interfaces.get(idx as usize).ok_or_else(|| bad("\"interface\" index out of range"))?;
            if iface.get("name").and_then(Value::as_str) != Some(ifname) || iface.get("sandbox").is_none() {
                continue;
            }
        }
        let addr = ip.get("address").and_then(Value::as_str).ok_or_else(|| bad("an IP without \"address\""))?;
        out.push(addr.parse().map_err(|_| bad(&format!("{addr:?} is not a CIDR")))?);
    }
    Ok(out)
}

/// VERSION's reply.
pub fn version_reply(version: &str) -> Value {
    serde_json::json!({ "cniVersion": version, "supportedVersions": super::SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<RuntimeEnv, CniError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RuntimeEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn env_requires_per_verb_variables() {
        assert_eq!(env(&[]).unwrap_err().code(), 4);
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")]).unwrap_err();
        assert!(e.to_string().contains("CNI_CONTAINERID"));
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert!(e.to_string().contains("CNI_NETNS"));
        // DEL may come after the netns is gone.
        let ok = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]).unwrap();
        assert_eq!(ok.command, Command::Del);
        assert!(ok.netns.is_none());
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
        assert!(env(&[("CNI_COMMAND", "FROB")]).unwrap_err().to_string().contains("FROB"));
    }

    #[test]
    fn container_id_and_ifname_follow_the_spec() {
        assert!(validate_container_id("ABC-def_1.2").is_ok());
        assert!(validate_container_id("").is_err());
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_container_id("a/b").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("a:b").is_err());
    }

    #[test]
    fn cni_args_are_ignored_even_when_malformed() {
        let add = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")];
        for args in ["K8S_POD_NAME=a;K8S_POD_NAMESPACE=b", "junk", ";;=;IgnoreUnknown", "a=b=c;\n"] {
            let mut vars = add.to_vec();
            vars.push(("CNI_ARGS", args));
            assert!(env(&vars).is_ok(), "CNI_ARGS={args:?} was refused");
            assert!(env(&[("CNI_COMMAND", "GC"), ("CNI_ARGS", args)]).is_ok(), "GC with CNI_ARGS={args:?}");
        }
        let ns = |args: &str| {
            let mut vars = add.to_vec();
            vars.push(("CNI_ARGS", args));
            env(&vars).unwrap().pod_namespace
        };
        assert_eq!(ns("IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=p").as_deref(), Some("team-a"));
        assert_eq!(ns("K8S_POD_NAMESPACE="), None);
        assert_eq!(ns("K8S_POD_NAMESPACE"), None);
        assert_eq!(ns("X_K8S_POD_NAMESPACE=b"), None);
        assert_eq!(env(&add).unwrap().pod_namespace, None);
        let uid = |args: &str| {
            let mut vars = add.to_vec();
            vars.push(("CNI_ARGS", args));
            env(&vars).unwrap().pod_uid
        };
        let u = "6f1c9d2e-8a4b-4c3d-9e2f-0a1b2c3d4e5f";
        assert_eq!(uid(&format!("K8S_POD_NAMESPACE=a;K8S_POD_UID={u}")).as_deref(), Some(u));
        // Not of a UID's form: not recorded, and no error.
        for bad in
            ["K8S_POD_UID=", "K8S_POD_UID=a b", "K8S_POD_UID=x uid y", &format!("K8S_POD_UID={}", "a".repeat(65))]
        {
            assert_eq!(uid(bad), None, "{bad:?}");
        }
    }

    fn conf(json: &str) -> Result<NetConf, CniError> {
        let c = NetConf::parse(json.as_bytes())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn config_validation_names_the_field() {
        let base = r#""cniVersion":"1.1.0","name":"weft","type":"weft""#;
        assert!(conf(&format!("{{{base}}}")).is_ok());
        let ok =
            conf(&format!(r#"{{{base},"subnets":["10.244.1.0/24","fd00:10:244:1::/64"],"unknownKey":1}}"#)).unwrap();
        assert_eq!(ok.configured_subnets().unwrap().unwrap().len(), 2);
        let cases = [
            (r#","subnets":["10.244.1.7/24"]"#, "host bits"),
            (r#","subnets":["nope"]"#, "not a CIDR"),
            (r#","subnets":[]"#, "empty"),
            (r#","subnets":["10.0.0.0/24","10.1.0.0/24"]"#, "more than one IPv4"),
            (r#","mtu":100"#, "\"mtu\""),
            (r#","logLevel":"loud""#, "logLevel"),
        ];
        for (extra, needle) in cases {
            let err = conf(&format!("{{{base}{extra}}}")).unwrap_err();
            assert_eq!(err.code(), 7, "{extra}");
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        }
        assert_eq!(conf(r#"{"cniVersion":"1.1.0","name":"weft","type":"ptp"}"#).unwrap_err().code(), 7);
        assert_eq!(conf(r#"{"cniVersion":"1.1.0","name":"../x","type":"weft"}"#).unwrap_err().code(), 7);
        assert_eq!(conf("{not json").unwrap_err().code(), 6);
        assert_eq!(conf(r#"{"name":"weft","type":"weft"}"#).unwrap_err().code(), 6);
        assert_eq!(conf(r#"{"cniVersion":"1.1.0","name":"weft","type":"weft","mtu":"big"}"#).unwrap_err().code(), 6);
    }

    fn sample() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface { name: "weft0123".into(), mac: "ee:ee:ee:ee:ee:ee".into(), mtu: 1450, sandbox: None },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:05".into(),
                    mtu: 1450,
                    sandbox: Some("/run/netns/x".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/32".parse().unwrap(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    interface: 1,
                },
                IpConfig {
                    address: "fd00:10:244:1::5/128".parse().unwrap(),
                    gateway: Some("fe80::1".parse().unwrap()),
                    interface: 1,
                },
            ],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("169.254.1.1".parse().unwrap()) }],
        }
    }

    #[test]
    fn result_encoding_per_version() {
        let r = sample();
        let v11 = r.to_json(CniVersion::V1_1_0);
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert_eq!(v11["interfaces"][1]["sandbox"], "/run/netns/x");
        assert!(v11["interfaces"][0].get("sandbox").is_none());
        assert!(v11["ips"][0].get("version").is_none());
        assert_eq!(v11["ips"][1]["address"], "fd00:10:244:1::5/128");
        let v10 = r.to_json(CniVersion::V1_0_0);
        assert!(v10["interfaces"][1].get("mtu").is_none());
        let v04 = r.to_json(CniVersion::V0_4_0);
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][1]["version"], "6");
        assert_eq!(v04["cniVersion"], "0.4.0");
        // 0.3.0 has the 0.3.x/0.4.0 shape: per-address "version", its own cniVersion.
        let v030 = r.to_json(CniVersion::V0_3_0);
        assert_eq!(v030["cniVersion"], "0.3.0");
        assert_eq!(v030["ips"][1]["version"], "6");
        assert_eq!(v030["ips"], v04["ips"]);
    }

    #[test]
    fn prev_result_round_trips() {
        for v in crate::cni::SUPPORTED_VERSIONS.iter().map(|v| v.parse::<CniVersion>().unwrap()) {
            let json = sample().to_json(v);
            let ips = prev_result_ips(&json, "eth0").unwrap();
            assert_eq!(ips.len(), 2, "{v}");
            assert!(prev_result_ips(&json, "net1").unwrap().is_empty());
        }
        assert_eq!(prev_result_ips(&serde_json::json!({}), "eth0").unwrap_err().code(), 6);
    }
}
