//! libweft: the code shared by the `weft` CNI plugin and `weft-agent`.
//!
//! CNI types and errors, the node config written by the agent, the IPAM store,
//! and the netlink/netns helpers. No tokio `main`, no clap, no kube: the plugin
//! links this crate and must stay small and fast to build.

pub mod cni;
pub mod file;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod node_config;
pub mod pending;
#[cfg(feature = "testutil")]
pub mod testutil;
