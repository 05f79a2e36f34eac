//! CNI spec versions weft speaks, and what each one allows.

use std::fmt;
use std::str::FromStr;

use super::CniError;

/// A CNI spec version that weft accepts in a network config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.3.0: first version with the `interfaces` result.
    V0_3_0,
    /// 0.3.1: kind's and many older configs' version.
    V0_3_1,
    /// 0.4.0: adds CHECK.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`, adds `cni.dev/` conventions.
    V1_0_0,
    /// 1.1.0: adds GC, STATUS and interface `mtu`.
    V1_1_0,
}

/// What VERSION reports, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

impl CniVersion {
    /// The newest version weft implements.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The version string as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0 carry `"version": "4"|"6"` on each IP.
    pub fn ips_have_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// Fails with code 1 when `verb` does not exist in this version
    /// (CHECK came in 0.4.0, GC and STATUS in 1.1.0).
    pub fn require_at_least(self, min: CniVersion, verb: &str) -> Result<(), CniError> {
        if self < min {
            return Err(CniError::IncompatibleVersion(format!(
                "{verb} needs cniVersion {} or newer, the config says {}",
                min.as_str(),
                self.as_str()
            )));
        }
        Ok(())
    }
}

impl FromStr for CniVersion {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "0.3.0" => CniVersion::V0_3_0,
            "0.3.1" => CniVersion::V0_3_1,
            "0.4.0" => CniVersion::V0_4_0,
            "1.0.0" => CniVersion::V1_0_0,
            "1.1.0" => CniVersion::V1_1_0,
            other => {
                return Err(CniError::IncompatibleVersion(format!(
                    "cniVersion {other:?} is not supported; weft supports {}",
                    SUPPORTED_VERSIONS.join(", ")
                )));
            }
        })
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_orders_them() {
        let parsed: Vec<CniVersion> = SUPPORTED_VERSIONS.iter().map(|v| v.parse().unwrap()).collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]));
        for (v, s) in parsed.iter().zip(SUPPORTED_VERSIONS) {
            assert_eq!(v.as_str(), s);
        }
    }

    #[test]
    fn unknown_version_is_code_1_and_names_it() {
        let err = "0.2.0".parse::<CniVersion>().unwrap_err();
        assert_eq!(err.code(), 1);
        assert!(err.to_string().contains("0.2.0"));
        assert_eq!("2.0.0".parse::<CniVersion>().unwrap_err().code(), 1);
    }

    #[test]
    fn verbs_are_gated_by_version() {
        assert!(CniVersion::V0_3_0.require_at_least(CniVersion::V0_4_0, "CHECK").is_err());
        assert!(CniVersion::V0_3_1.require_at_least(CniVersion::V0_4_0, "CHECK").is_err());
        assert!(CniVersion::V0_4_0.require_at_least(CniVersion::V0_4_0, "CHECK").is_ok());
        let err = CniVersion::V1_0_0.require_at_least(CniVersion::V1_1_0, "GC").unwrap_err();
        assert_eq!(err.code(), 1);
        assert!(err.to_string().contains("GC"));
    }

    #[test]
    fn ip_version_field_only_before_1_0() {
        assert!(CniVersion::V0_4_0.ips_have_version());
        assert!(!CniVersion::V1_0_0.ips_have_version());
    }
}
