//! Writes the verdicts of `desired::verdicts` to the API: the `Accepted`
//! condition of each ClusterNetworkPolicy (server-side apply on its
//! status, field manager `weft-agent`, only that condition) and the
//! Warning Event of each NetworkPolicy weft refused.
//!
//! One writer for the cluster: every agent computes the same verdicts, but
//! only the holder of the Lease [`LEASE`] (in the agent's namespace, held
//! through `kube-lease-manager`: renewed every 25 s, taken over 30 s after
//! its holder stops renewing) writes them. N agents writing would be N
//! requests for every policy change (20,000 at the largest cluster weft
//! claims) racing on the same objects; N bidders would read the Lease N
//! times a period, so only a few nodes bid ([`VerdictWriter::bid`]).
//! Verdicts being a pure function of the specs, two holders for a moment
//! (a lease taken over while the old holder still writes) write the same
//! thing.
//!
//! The writer never slows a pass: the loop hands it the latest verdicts
//! when the policies changed ([`VerdictWriter::offer`], a watch channel of
//! one: older unwritten verdicts are replaced) and a task of its own
//! writes what changed. It
//! reads each ClusterNetworkPolicy before writing its condition, so a
//! condition already right (written by an earlier holder) is not written
//! again and `lastTransitionTime` moves only when the status does. An
//! Event's name is fixed by policy, generation and reason, so creating it
//! twice is refused by the API server (409), never repeated. Failures are
//! logged and counted (`weft_sync_errors_total{output="verdicts"}`) and
//! retried after a backoff (1 s doubling to 5 min); a 403 (RBAC without
//! the grant) is said once at warn and retried the same way; a 404 (the
//! policy or its CRD gone) drops that verdict. Nothing here can stop the
//! agent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;
use tokio::sync::watch;

use crate::desired::verdicts::{CONDITION, ClusterCondition, RefusalEvent, Verdicts};
use crate::metrics::Metrics;
use crate::wire_cluster_policy as cnp;

/// The Lease whose holder writes the verdicts, in the agent's namespace.
pub const LEASE: &str = "weft-policy-verdicts";
/// The field manager of the conditions and the Lease.
const FIELD_MANAGER: &str = "weft-agent";
/// The Event's `source.component` and `reportingComponent`.
const COMPONENT: &str = "weft-agent";
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The loop's handle on the writer task.
pub struct VerdictWriter {
    latest: watch::Sender<Arc<Verdicts>>,
    /// Whether this agent bids for the Lease (`desired::verdicts::bids_for_writer`).
    bidding: watch::Sender<bool>,
}

impl VerdictWriter {
    /// Starts the writer task and its bid for the Lease, as `identity` (the
    /// node name: one agent a node).
    pub fn spawn(client: Client, identity: &str, metrics: Arc<Metrics>) -> VerdictWriter {
        let (latest, verdicts) = watch::channel(Arc::new(Verdicts::default()));
        let (bidding, bids) = watch::channel(false);
        let holder = hold_lease(client.clone(), identity.to_string(), bids, metrics.clone());
        tokio::spawn(write_loop(Writer::new(client, identity, metrics), verdicts, holder));
        VerdictWriter { latest, bidding }
    }

    /// Whether this agent is to bid for the Lease; a holder told to stop
    /// bidding releases it.
    pub fn bid(&self, bids: bool) {
        self.bidding.send_if_modified(|b| std::mem::replace(b, bids) != bids);
    }

    /// Hands a pass's verdicts to the writer; never waits.
    pub fn offer(&self, verdicts: Verdicts) {
        self.latest.send_if_modified(|current| {
            let changed = **current != verdicts;
            if changed {
                *current = Arc::new(verdicts);
            }
            changed
        });
    }
}

/// Bids for the Lease while `bids` says so; the receiver says whether this
/// agent holds it. Failures (no RBAC for Leases: 403) are logged and
/// retried with backoff; meanwhile this agent writes nothing. The chart
/// creates the Lease; the manager creates it only where it is missing and
/// may (a cluster without the chart's objects, the tests).
fn hold_lease(
    client: Client,
    identity: String,
    mut bids: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> watch::Receiver<bool> {
    let (held_tx, held) = watch::channel(false);
    tokio::spawn(async move {
        let namespace = client.default_namespace().to_string();
        let mut backoff = Backoff::default();
        // Failed bids in a row: the first few are expected at install (Helm
        // creates the Lease after the DaemonSet), so the warning waits for a third.
        let mut failed = 0u32;
        loop {
            if bids.wait_for(|b| *b).await.is_err() {
                return;
            }
            let built = LeaseManagerBuilder::new(client.clone(), LEASE)
                .with_namespace(namespace.as_str())
                .with_identity(identity.as_str())
                .with_field_manager(FIELD_MANAGER)
                .build()
                .await;
            let manager = match built {
                Ok(m) => m,
                Err(e) => {
                    metrics.sync_error("verdicts");
                    failed += 1;
                    if failed == 3 {
                        tracing::warn!(
                            "cannot bid for Lease {namespace}/{LEASE}: policy verdicts are not written from this node: {e}"
                        );
                    } else {
                        tracing::debug!("bid for Lease {namespace}/{LEASE}: {e}");
                    }
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            (backoff, failed) = (Backoff::default(), 0);
            let (mut holding, task) = manager.watch().await;
            loop {
                let now = *holding.borrow_and_update();
                if held_tx.send_replace(now) != now {
                    tracing::info!(lease = LEASE, holder = now, "policy verdict writer lease changed hands");
                }
                tokio::select! {
                    r = holding.changed() => if r.is_err() { break },
                    // No longer a candidate: dropping the receiver makes the manager release the Lease.
                    _ = bids.wait_for(|b| !*b) => break,
                }
            }
            drop(holding);
            held_tx.send_replace(false);
            // The manager retries its own errors: it ends on release, or on a broken channel.
            if let Ok(Err(e)) = task.await {
                tracing::warn!("the policy verdict writer's lease manager stopped: {e}");
            }
            if *bids.borrow() {
                tokio::time::sleep(backoff.next()).await;
            }
        }
    });
    held
}

/// Writes the latest verdicts while this agent holds the Lease.
async fn write_loop(
    mut writer: Writer,
    mut verdicts: watch::Receiver<Arc<Verdicts>>,
    mut holder: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    loop {
        let holding = *holder.borrow_and_update();
        let retry = if holding {
            let latest = verdicts.borrow_and_update().clone();
            match writer.write(&latest).await {
                Ok(()) => {
                    backoff = Backoff::default();
                    None
                }
                Err(()) => Some(backoff.next()),
            }
        } else {
            // Another holder writes; when this agent takes over, it checks everything again.
            writer.written.clear();
            None
        };
        let wait_retry = async {
            match retry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = verdicts.changed() => {
                if r.is_err() {
                    return;
                }
            }
            r = holder.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = wait_retry => {}
        }
    }
}

/// Exponential backoff: [`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`].
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        MIN_BACKOFF.saturating_mul(1 << self.failures.min(10).saturating_sub(1)).min(MAX_BACKOFF)
    }
}

/// How one write went.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Written, or already right: nothing more to do for this verdict.
    Done,
    /// Nothing to write on (the object is gone or was replaced): a newer
    /// view brings its own verdict.
    Dropped,
    /// Failed: retried after the backoff.
    Failed,
}

struct Writer {
    cluster_policies: Api<DynamicObject>,
    client: Client,
    identity: String,
    metrics: Arc<Metrics>,
    /// What this holder wrote or found right, by object: conditions by
    /// policy name, Events by their name.
    written: HashMap<String, Option<ClusterCondition>>,
    /// A 403 was said (once per writer).
    said_forbidden: bool,
}

impl Writer {
    fn new(client: Client, identity: &str, metrics: Arc<Metrics>) -> Writer {
        let gvk = GroupVersionKind::gvk(cnp::GROUP, cnp::VERSION, cnp::KIND);
        let resource = ApiResource::from_gvk_with_plural(&gvk, cnp::PLURAL);
        Writer {
            cluster_policies: Api::all_with(client.clone(), &resource),
            client,
            identity: identity.to_string(),
            metrics,
            written: HashMap::new(),
            said_forbidden: false,
        }
    }

    /// Writes every verdict not written yet; `Err` when one failed.
    async fn write(&mut self, verdicts: &Verdicts) -> Result<(), ()> {
        let mut failed = false;
        for c in &verdicts.conditions {
            let key = format!("cnp/{}", c.name);
            if self.written.get(&key).is_some_and(|w| w.as_ref() == Some(c)) {
                continue;
            }
            match self.write_condition(c).await {
                Outcome::Done => {
                    self.written.insert(key, Some(c.clone()));
                }
                Outcome::Dropped => {}
                Outcome::Failed => failed = true,
            }
        }
        for e in &verdicts.events {
            let key = e.event_name();
            if self.written.contains_key(&key) {
                continue;
            }
            match self.create_event(e).await {
                Outcome::Done => {
                    self.written.insert(key, None);
                }
                Outcome::Dropped => {}
                Outcome::Failed => failed = true,
            }
        }
        // Forget what is no longer wanted: the map stays as small as the verdicts.
        let wanted: std::collections::HashSet<String> = verdicts
            .conditions
            .iter()
            .map(|c| format!("cnp/{}", c.name))
            .chain(verdicts.events.iter().map(RefusalEvent::event_name))
            .collect();
        self.written.retain(|k, _| wanted.contains(k));
        if failed { Err(()) } else { Ok(()) }
    }

    /// Sets the `Accepted` condition of one ClusterNetworkPolicy, unless it says that already.
    async fn write_condition(&mut self, c: &ClusterCondition) -> Outcome {
        let current = match self.cluster_policies.get(&c.name).await {
            Ok(o) => o,
            Err(e) => return self.failed(&format!("read ClusterNetworkPolicy {}", c.name), e),
        };
        if current.metadata.uid.as_deref() != Some(c.uid.as_str()) || current.metadata.generation != Some(c.generation)
        {
            // Replaced or changed since the view: the next view's verdict is about the object as it is.
            return Outcome::Dropped;
        }
        let existing = current.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["type"] == CONDITION)
            .and_then(|x| serde_json::from_value::<Condition>(x.clone()).ok());
        let Some(condition) = condition_to_write(c, existing.as_ref(), Timestamp::now()) else {
            return Outcome::Done;
        };
        // The UID makes the write fail (409) rather than land on a policy recreated meanwhile.
        let apply = json!({
            "apiVersion": format!("{}/{}", cnp::GROUP, cnp::VERSION),
            "kind": cnp::KIND,
            "metadata": {"name": c.name, "uid": c.uid},
            "status": {"conditions": [condition]},
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self.cluster_policies.patch_status(&c.name, &params, &Patch::Apply(&apply)).await {
            Ok(_) => {
                tracing::info!(
                    policy = %c.name,
                    status = c.status(),
                    reason = c.reason,
                    generation = c.generation,
                    writer = %self.identity,
                    "wrote the ClusterNetworkPolicy's Accepted condition"
                );
                Outcome::Done
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Outcome::Dropped,
            Err(e) => self.failed(&format!("write the condition of ClusterNetworkPolicy {}", c.name), e),
        }
    }

    /// Creates the Warning Event of one refused NetworkPolicy (once: its name is fixed).
    async fn create_event(&mut self, e: &RefusalEvent) -> Outcome {
        let event = refusal_event(e, &self.identity, Timestamp::now());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &e.namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                tracing::info!(
                    policy = %format!("{}/{}", e.namespace, e.name),
                    reason = e.reason,
                    generation = e.generation,
                    writer = %self.identity,
                    "created the NetworkPolicy's refusal Event"
                );
                Outcome::Done
            }
            // Created before (by this writer or an earlier holder).
            Err(kube::Error::Api(s)) if s.code == 409 => Outcome::Done,
            Err(err) => self.failed(&format!("create the Event of NetworkPolicy {}/{}", e.namespace, e.name), err),
        }
    }

    /// Reports a failed request ([`after_failure`] says what follows).
    fn failed(&mut self, what: &str, e: kube::Error) -> Outcome {
        let code = match &e {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        };
        let outcome = after_failure(code);
        match code {
            Some(404) => tracing::debug!("{what}: gone: {e}"),
            Some(422) => tracing::warn!("{what}: refused as invalid, not retried: {e}"),
            Some(403) if !std::mem::replace(&mut self.said_forbidden, true) => {
                tracing::warn!("{what}: forbidden (the chart's RBAC grants it): {e}");
            }
            Some(403) => tracing::debug!("{what}: {e}"),
            _ => tracing::warn!("{what}: {e}"),
        }
        if code != Some(404) {
            self.metrics.sync_error("verdicts");
        }
        outcome
    }
}

/// What follows a failed request with HTTP status `code` (`None`: no
/// answer): 404 (the object or its CRD gone) and 422 (invalid: retrying
/// cannot help) drop the verdict; anything else, 403 (RBAC without the
/// grant, which an operator may add) included, is retried after the backoff.
fn after_failure(code: Option<u16>) -> Outcome {
    match code {
        Some(404 | 422) => Outcome::Dropped,
        _ => Outcome::Failed,
    }
}

/// The condition to apply for `c`, or `None` when `existing` says it
/// already. `lastTransitionTime` moves only when the status does.
fn condition_to_write(c: &ClusterCondition, existing: Option<&Condition>, now: Timestamp) -> Option<Condition> {
    if let Some(x) = existing
        && x.status == c.status()
        && x.reason == c.reason
        && x.message == c.message
        && x.observed_generation == Some(c.generation)
    {
        return None;
    }
    let since = existing.filter(|x| x.status == c.status()).map_or(Time(now), |x| x.last_transition_time.clone());
    Some(Condition {
        type_: CONDITION.to_string(),
        status: c.status().to_string(),
        reason: c.reason.to_string(),
        message: c.message.clone(),
        observed_generation: Some(c.generation),
        last_transition_time: since,
    })
}

/// The Warning Event on the NetworkPolicy `e` is about.
fn refusal_event(e: &RefusalEvent, node: &str, now: Timestamp) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(e.event_name()),
            namespace: Some(e.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("NetworkPolicy".into()),
            namespace: Some(e.namespace.clone()),
            name: Some(e.name.clone()),
            uid: Some(e.uid.clone()),
            ..ObjectReference::default()
        },
        type_: Some("Warning".into()),
        reason: Some(e.reason.into()),
        message: Some(format!("generation {}: {}", e.generation, e.message)),
        source: Some(EventSource { component: Some(COMPONENT.into()), host: Some(node.into()) }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(node.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::verdicts::ACCEPTED;
    use crate::wire_policy::Refusal;

    fn cond(accepted: bool, generation: i64) -> ClusterCondition {
        ClusterCondition {
            name: "p".into(),
            uid: "u".into(),
            generation,
            accepted,
            reason: if accepted { ACCEPTED } else { Refusal::CAP_EXCEEDED },
            message: if accepted { "ok".into() } else { "101 peers over the cap of 100".into() },
        }
    }

    #[test]
    fn a_condition_is_written_only_when_it_changes_and_its_transition_only_with_its_status() {
        let (t0, t1) = (Timestamp::from_second(1_000).unwrap(), Timestamp::from_second(2_000).unwrap());
        let first = condition_to_write(&cond(true, 1), None, t0).unwrap();
        assert_eq!(
            (first.type_.as_str(), first.status.as_str(), first.reason.as_str()),
            ("Accepted", "True", ACCEPTED)
        );
        assert_eq!((first.observed_generation, first.last_transition_time.clone()), (Some(1), Time(t0)));
        assert_eq!(condition_to_write(&cond(true, 1), Some(&first), t1), None, "already right: no write");
        let next = condition_to_write(&cond(true, 2), Some(&first), t1).unwrap();
        assert_eq!((next.observed_generation, next.last_transition_time.clone()), (Some(2), Time(t0)), "same status");
        let refused = condition_to_write(&cond(false, 3), Some(&next), t1).unwrap();
        assert_eq!((refused.status.as_str(), refused.last_transition_time), ("False", Time(t1)), "a transition");
    }

    #[test]
    fn a_refusal_event_names_the_policy_and_the_reason() {
        let e = RefusalEvent {
            namespace: "team".into(),
            name: "huge".into(),
            uid: "u-1".into(),
            generation: 2,
            reason: Refusal::CAP_EXCEEDED,
            message: "101 peers over the cap of 100: refused".into(),
        };
        let ev = refusal_event(&e, "node1", Timestamp::from_second(1_000).unwrap());
        assert_eq!(ev.metadata.name.as_deref(), Some("weft-refused.u-1.2.capexceeded"));
        assert_eq!(ev.metadata.namespace.as_deref(), Some("team"));
        let o = &ev.involved_object;
        assert_eq!(
            (o.kind.as_deref(), o.name.as_deref(), o.uid.as_deref()),
            (Some("NetworkPolicy"), Some("huge"), Some("u-1"))
        );
        assert_eq!((ev.type_.as_deref(), ev.reason.as_deref()), (Some("Warning"), Some("CapExceeded")));
        assert_eq!(ev.message.as_deref(), Some("generation 2: 101 peers over the cap of 100: refused"));
    }

    #[test]
    fn a_missing_object_or_crd_drops_the_verdict_and_a_forbidden_write_is_retried() {
        assert_eq!(after_failure(Some(404)), Outcome::Dropped, "policy or CRD gone");
        assert_eq!(after_failure(Some(422)), Outcome::Dropped, "invalid: retrying cannot help");
        for code in [Some(403), Some(409), Some(500), Some(503), None] {
            assert_eq!(after_failure(code), Outcome::Failed, "{code:?}: retried after the backoff");
        }
    }

    #[test]
    fn backoff_doubles_from_a_second_to_five_minutes() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..12).map(|_| b.next().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
