//! CNI protocol types: network config, runtime environment, results, errors.
//!
//! We keep our own serde types rather than the `cni-plugin` crate: it stops at
//! spec 1.0 (no GC, no STATUS) yet advertises 1.1.0 when asked, rejects
//! upper-case container IDs, and exits the process on errors.

mod error;
mod names;
mod types;
mod version;

pub use error::{CniError, ErrorReply};
pub use names::{MAX_CONTAINER_ID_LEN, check_container_id, check_ifname};
pub use types::*;
pub use version::{CniVersion, SUPPORTED_VERSIONS};
