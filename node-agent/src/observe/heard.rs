//! When a watch last heard from the API server. kube's watcher swallows
//! bookmarks, so an idle watch yields nothing for as long as nothing
//! changes, and the agent could not tell a healthy quiet watch from a dead
//! one. A [`hearing`] client wraps the one the watch uses and marks every
//! data frame its responses deliver (events, bookmarks, list pages) at the
//! moment the watch reads it. A watch stream is ordered, so a frame read at
//! `t` means every change the server sent before it has been read by `t`.
//!
//! kube-apiserver 1.36 sends a bookmark to every watch that asks (kube's
//! watcher does): the first about 120 s after the watch starts, then one a
//! minute, and one 2 s before the watch's timeout (kube asks for 290 s and
//! then starts a new watch). Measured with raw watches on an idle API
//! server, and through the agent in `node-agent/tests/agents.rs`: a healthy
//! idle watch is heard at least every ~122 s.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::Request;
use kube::Client;
use kube::client::Body;

/// The time of the last frame heard, shared between a client and its reader.
#[derive(Debug, Clone, Default)]
pub struct Heard(Arc<Mutex<Option<Instant>>>);

impl Heard {
    /// When the last frame was read, if any was.
    pub fn last(&self) -> Option<Instant> {
        self.0.lock().map(|t| *t).unwrap_or(None)
    }

    /// Records a frame read now.
    pub(crate) fn mark(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = Some(Instant::now());
        }
    }
}

/// A client sending through `client` whose response frames mark `heard`.
/// Give each watch its own, so that each is judged by its own stream.
pub fn hearing(client: &Client, heard: Heard) -> Client {
    let inner = client.clone();
    let service = tower::service_fn(move |request: Request<Body>| {
        let (inner, heard) = (inner.clone(), heard.clone());
        async move {
            let response = inner.send(request).await?;
            Ok::<_, kube::Error>(response.map(move |body| {
                body.map_frame(move |frame| {
                    if frame.is_data() {
                        heard.mark();
                    }
                    frame
                })
            }))
        }
    });
    Client::new(service, client.default_namespace())
}
