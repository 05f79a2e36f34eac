//! weft-agent's library: everything but the command line, so integration
//! tests can drive the reconciler against the real kernel.
//!
//! A pass goes observe → desired → apply: [`observe`] reads the Node watch,
//! the underlay and what weft owns in the kernel; [`desired::compute`] is a
//! pure function of the configuration and that observation; [`apply`] makes
//! each output (kernel, nftables, files, API) match it. [`agent`] schedules
//! passes and reports them ([`health`], [`reported`]). [`wire`] and
//! [`wire_policy`] are the API objects as read, [`config`] the agent's
//! configuration. [`base`] and [`metrics`] are the bottom layer under all
//! of them; `tests/layers.rs` keeps every import pointing down.

pub mod agent;
pub mod apply;
pub mod base;
pub mod config;
pub mod desired;
pub mod health;
pub mod http;
pub mod ipam_gc;
pub mod metrics;
pub mod observe;
pub mod reported;
pub mod trace_cmd;
pub mod wire;
pub mod wire_cluster_policy;
pub mod wire_policy;
