//! How the agent lists Pods, Namespaces and NetworkPolicies: streamed
//! through a watch (the API server's WatchList, `sendInitialEvents=true`),
//! where objects arrive one watch event at a time, so a list costs one
//! request and holds one object; or, where the server refuses that, in
//! pages (kube reads a page whole). WatchList is on by default from
//! Kubernetes 1.34; in 1.33, the chart's minimum, it is off unless the
//! `WatchList` feature gate is set, and the server refuses the request.

use std::sync::atomic::{AtomicU8, Ordering};

use kube::runtime::watcher;

use crate::metrics::Metrics;

const UNKNOWN: u8 = 0;
const STREAMING: u8 = 1;
const PAGED: u8 = 2;

/// The mode the agent's watches share: streaming until the server refuses
/// it once, then paged for good (a server that refused may sit behind the
/// same address as one that did not).
#[derive(Debug, Default)]
pub struct ListMode(AtomicU8);

impl ListMode {
    /// Whether lists should stream (true until a refusal).
    pub fn streaming(&self) -> bool {
        self.0.load(Ordering::Relaxed) != PAGED
    }

    /// A streamed list completed: logs and exports the mode the first time.
    pub fn streamed(&self, metrics: &Metrics) {
        if self.0.compare_exchange(UNKNOWN, STREAMING, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            metrics.list_streaming.set(1);
            tracing::info!("the API server streams lists (WatchList): one request and one object in memory per list");
        }
    }

    /// The server refused a streamed list: lists are paged from now on.
    pub fn refused(&self, metrics: &Metrics, error: &dyn std::fmt::Display) {
        if self.0.swap(PAGED, Ordering::Relaxed) != PAGED {
            metrics.list_streaming.set(0);
            tracing::warn!(
                "the API server refuses streamed lists (WatchList off, as by default in Kubernetes 1.33): \
                 listing in small pages, one request per page ({error})"
            );
        }
    }
}

/// Whether the API server refused a streamed list: it answers 422 Invalid
/// naming `sendInitialEvents` when its WatchList feature gate is off.
pub fn refuses_streaming(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 && s.message.contains("sendInitialEvents"))
}

/// [`refuses_streaming`] for a watcher's error (the refusal comes when
/// the watch starts).
pub fn watcher_refuses_streaming(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(e) if refuses_streaming(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str) -> kube::Error {
        let json = serde_json::json!({"status": "Failure", "code": code, "reason": "Invalid", "message": message});
        kube::Error::Api(Box::new(serde_json::from_value(json).unwrap()))
    }

    #[test]
    fn only_the_watch_list_refusal_switches_to_pages() {
        // kube-apiserver 1.33's answer with the WatchList gate off.
        let refusal = "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: \
                       sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled";
        assert!(refuses_streaming(&status(422, refusal)));
        assert!(watcher_refuses_streaming(&watcher::Error::WatchStartFailed(status(422, refusal))));
        assert!(!refuses_streaming(&status(403, "pods is forbidden")), "RBAC is not a refusal of streaming");
        assert!(!refuses_streaming(&status(422, "fieldSelector: Invalid value")));
        assert!(!watcher_refuses_streaming(&watcher::Error::InitialListFailed(status(422, refusal))));

        let metrics = Metrics::new();
        let mode = ListMode::default();
        assert!(mode.streaming(), "streams until refused");
        mode.streamed(&metrics);
        assert!(metrics.encode().contains("weft_list_streaming 1"));
        mode.refused(&metrics, &"422");
        assert!(!mode.streaming());
        mode.streamed(&metrics);
        assert!(!mode.streaming(), "paged for good");
        assert!(metrics.encode().contains("weft_list_streaming 0"));
    }
}
