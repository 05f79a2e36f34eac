//! One module per CNI verb; each is a linear function.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use libweft::cni::CniError;

/// A single-threaded runtime: the plugin does a handful of netlink round trips.
fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::Internal(format!("start async runtime: {e}")))
}
