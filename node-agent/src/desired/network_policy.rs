//! The NetworkPolicy part of the desired state, computed on every pass
//! from the policy views of the observation: the pods believed (only
//! addresses in their node's podCIDRs, each claimed once: [`pod_trust`]),
//! the `inet weft-policy` table's content ([`policy`], with contested
//! addresses held and the configured deny log), and the namespaces the
//! plugin keeps new pods pending in.
//!
//! [`pod_trust`]: super::pod_trust
//! [`policy`]: super::policy::policy

use std::collections::HashSet;
use std::sync::Arc;

use libweft::pending::PolicyNamespaces;

use super::pod_trust::{self, Doubt};
use super::policy::{self, PolicyState};
use crate::config::Config;
use crate::observe::policy_watch::PolicyViews;
use crate::wire::{NodeView, Rejected};
use crate::wire_policy::PodView;

/// What the policy outputs should hold.
#[derive(Debug)]
pub struct DesiredPolicy {
    /// The pods whose addresses are believed (with only those addresses).
    pub pods: Vec<PodView>,
    /// Pod addresses not believed, and why.
    pub doubts: Vec<Doubt>,
    /// The policy table.
    pub state: PolicyState,
    /// The namespaces with isolating policies, for the plugin.
    pub namespaces: PolicyNamespaces,
}

/// The policy part of the desired state for node `local`, given every
/// Node, the peers the routing part refused (`refused`: their pods'
/// addresses are not believed) and the watches' views.
pub fn compute(
    config: &Config,
    local: &NodeView,
    nodes: &[Arc<NodeView>],
    refused: &[Rejected],
    mut views: PolicyViews,
) -> DesiredPolicy {
    let refused: HashSet<&str> = refused.iter().map(|r| r.node.as_str()).collect();
    let cidrs = nodes
        .iter()
        .filter(|n| n.name == local.name || !refused.contains(n.name.as_str()))
        .map(|n| (n.name.as_str(), n.pod_cidrs.as_slice()))
        .collect();
    let believed = pod_trust::believe(std::mem::take(&mut views.pods), &cidrs);
    let mut state = policy::policy(&local.name, &believed.pods, &views.namespaces, &views.policies);
    pod_trust::hold_contested(&mut state, &believed.contested, &local.pod_cidrs);
    state.deny_log = config.deny_log;
    DesiredPolicy {
        namespaces: policy::policy_namespaces(&views.policies),
        pods: believed.pods,
        doubts: believed.doubts,
        state,
    }
}
