//! CNI errors and their spec codes.
//!
//! Every failure of the plugin ends up as one `CniError`; `code()` is the one
//! place where codes are assigned. Codes below 100 are the spec's, 100 and up
//! are weft's own (documented in the README).

use serde::Serialize;

use crate::ipam::IpamError;
use crate::netlink::NetlinkError;
use crate::netns::NetnsError;
use crate::node_config::NodeConfigError;

/// A failure reported to the runtime as CNI error JSON.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// Code 1: the config's `cniVersion` is unknown, or too old for the verb.
    #[error("incompatible CNI version: {0}")]
    IncompatibleVersion(String),
    /// Code 2: a config field weft cannot honour.
    #[error("unsupported field in network config: {0}")]
    UnsupportedField(String),
    /// Code 4: a required `CNI_*` variable is missing or malformed.
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnvironment {
        /// The variable, e.g. `CNI_CONTAINERID`.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Code 5: reading stdin or a file failed.
    #[error("I/O failure: {0}")]
    Io(String),
    /// Code 6: stdin is not valid JSON of the expected shape.
    #[error("failed to decode network config: {0}")]
    Decode(String),
    /// Code 7: the config decodes but a value is wrong.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// Code 11: transient; the runtime should retry.
    #[error("try again later: {0}")]
    TryAgainLater(String),
    /// Code 50: STATUS says the plugin cannot serve ADDs now.
    #[error("plugin not available: {0}")]
    NotAvailable(String),
    /// Code 100: a kernel (netlink) operation failed.
    #[error("kernel operation failed: {0}")]
    Kernel(#[from] NetlinkError),
    /// Code 101: no free address left in a subnet.
    #[error("address pool exhausted: {0}")]
    PoolExhausted(String),
    /// Code 102: the container's network namespace cannot be opened or entered.
    #[error("network namespace: {0}")]
    Netns(#[from] NetnsError),
    /// Code 103: CHECK found the container's networking not as ADD left it.
    #[error("check failed: {0}")]
    CheckFailed(String),
    /// Code 999: a bug; reported instead of panicking.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CniError {
    /// The error code of the CNI spec (or weft's own, from 100 up).
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) => 1,
            CniError::UnsupportedField(_) => 2,
            CniError::InvalidEnvironment { .. } => 4,
            CniError::Io(_) => 5,
            CniError::Decode(_) => 6,
            CniError::InvalidConfig(_) => 7,
            CniError::TryAgainLater(_) => 11,
            CniError::NotAvailable(_) => 50,
            // Something deleted the link between our create and lookup: a
            // retry starts from scratch and is safe.
            CniError::Kernel(NetlinkError::Vanished { .. }) => 11,
            // weft built a request the kernel could never accept: a bug.
            CniError::Kernel(NetlinkError::InvalidRequest(_)) => 999,
            CniError::Kernel(_) => 100,
            CniError::PoolExhausted(_) => 101,
            CniError::Netns(_) => 102,
            CniError::CheckFailed(_) => 103,
            CniError::Internal(_) => 999,
        }
    }

    /// The error as the JSON object the runtime reads from stdout.
    pub fn reply(&self, cni_version: &str) -> ErrorReply {
        let (msg, details) = match self {
            // Short `msg`, detail in `details`, as the spec suggests.
            CniError::Kernel(e) => ("kernel operation failed".to_string(), e.to_string()),
            CniError::Netns(e) => ("cannot use the container network namespace".to_string(), e.to_string()),
            CniError::Decode(d) => ("failed to decode network config".to_string(), d.clone()),
            other => (other.to_string(), String::new()),
        };
        ErrorReply { cni_version: cni_version.to_string(), code: self.code(), msg, details }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        match e {
            IpamError::Exhausted { .. } => CniError::PoolExhausted(e.to_string()),
            // Free again once the quarantine is over.
            IpamError::LockTimeout { .. } | IpamError::Quarantined { .. } => CniError::TryAgainLater(e.to_string()),
            IpamError::SubnetTooSmall { .. } | IpamError::OverlappingSubnets { .. } => {
                CniError::InvalidConfig(e.to_string())
            }
            IpamError::InvalidAttachment { .. } => {
                CniError::InvalidEnvironment { var: "CNI_CONTAINERID", reason: e.to_string() }
            }
            // Only a process ignoring the lock can race us: retrying is safe.
            IpamError::Conflict { .. } => CniError::TryAgainLater(e.to_string()),
            other => CniError::Io(format!("IPAM store: {other}")),
        }
    }
}

impl From<NodeConfigError> for CniError {
    fn from(e: NodeConfigError) -> Self {
        match e {
            // The agent has not written node.json yet: retry once it has.
            NodeConfigError::Missing { .. } => CniError::TryAgainLater(e.to_string()),
            NodeConfigError::Io { .. } => CniError::Io(e.to_string()),
            NodeConfigError::Invalid { .. } => CniError::InvalidConfig(e.to_string()),
        }
    }
}

/// The spec's error result: `{cniVersion, code, msg, details}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply {
    /// Echoes the config's version (or the latest, if unknown).
    pub cni_version: String,
    /// Spec or weft error code.
    pub code: u32,
    /// One-line summary.
    pub msg: String,
    /// Longer explanation; omitted when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        let cases: Vec<(CniError, u32)> = vec![
            (CniError::IncompatibleVersion("x".into()), 1),
            (CniError::UnsupportedField("x".into()), 2),
            (CniError::InvalidEnvironment { var: "CNI_COMMAND", reason: "missing".into() }, 4),
            (CniError::Io("x".into()), 5),
            (CniError::Decode("x".into()), 6),
            (CniError::InvalidConfig("x".into()), 7),
            (CniError::TryAgainLater("x".into()), 11),
            (CniError::NotAvailable("x".into()), 50),
            (CniError::Kernel(NetlinkError::Socket(std::io::Error::other("x"))), 100),
            (CniError::Kernel(NetlinkError::Vanished { name: "eth0".into(), netns: None }), 11),
            (CniError::Kernel(NetlinkError::InvalidRequest("x".into())), 999),
            (CniError::PoolExhausted("x".into()), 101),
            (CniError::Netns(NetnsError::NotFound { path: "/run/netns/x".into() }), 102),
            (CniError::CheckFailed("x".into()), 103),
            (CniError::Internal("x".into()), 999),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn ipam_errors_map_to_codes() {
        let subnet = "10.244.1.0/30".parse().unwrap();
        let exhausted: CniError = IpamError::Exhausted { subnet }.into();
        assert_eq!(exhausted.code(), 101);
        assert!(exhausted.to_string().contains("10.244.1.0/30"));
        let quarantined: CniError =
            IpamError::Quarantined { subnet, quarantined: 2, free_in: std::time::Duration::from_secs(5) }.into();
        assert_eq!(quarantined.code(), 11);
        assert!(quarantined.to_string().contains("free again in 6s"), "{quarantined}");
        let timeout: CniError =
            IpamError::LockTimeout { path: "/x/lock".into(), waited: std::time::Duration::from_secs(10) }.into();
        assert_eq!(timeout.code(), 11);
    }

    #[test]
    fn reply_serializes_as_the_spec_says() {
        let err = CniError::InvalidEnvironment { var: "CNI_IFNAME", reason: "missing".into() };
        let json = serde_json::to_value(err.reply("1.1.0")).unwrap();
        assert_eq!(json["cniVersion"], "1.1.0");
        assert_eq!(json["code"], 4);
        assert!(json["msg"].as_str().unwrap().contains("CNI_IFNAME"));
        assert!(json.get("details").is_none());
    }
}
