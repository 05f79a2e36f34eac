//! Observe: what the agent reads before deciding anything. The Node watch,
//! the underlay, what weft owns in the kernel, and the kernel's
//! notifications that it changed. Nothing here writes.

pub mod counters;
pub mod events;
pub mod fastpath;
pub mod heard;
pub mod kernel;
pub mod list_mode;
pub mod node_views;
pub mod policy_watch;
pub mod underlay;
pub mod watch;

use std::sync::Arc;

use crate::wire::NodeView;

pub use self::underlay::Underlay;

/// Everything the desired state is computed from, besides the configuration.
#[derive(Debug, Clone)]
pub struct Observation {
    /// This node, as read from its Node object.
    pub local: NodeView,
    /// Every Node, the local one included. Shared with the agent's cache
    /// of views, so an unchanged Node is neither parsed nor copied again.
    pub nodes: Vec<Arc<NodeView>>,
    pub underlay: Underlay,
    /// The local VXLAN device's MAC (derived from the node name).
    pub vtep_mac: [u8; 6],
    /// Transmit checksum offload when the configuration does not say.
    pub offload_default: bool,
    /// The `portmap` plugin is installed: the conflist chains it.
    pub portmap_installed: bool,
}
