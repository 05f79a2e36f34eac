//! weft-agent's library: everything but the command line, so integration
//! tests can drive the reconciler against the real kernel.

pub mod agent;
pub mod cniconf;
pub mod config;
pub mod cri;
pub mod desired;
pub mod http;
pub mod ipam_gc;
pub mod masq;
pub mod metrics;
pub mod node_view;
pub mod offload;
pub mod publish;
pub mod reconcile;
pub mod underlay;
pub mod watch;
