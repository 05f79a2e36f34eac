//! The node's pod sandboxes, from the container runtime's CRI socket.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ListPodSandboxRequest, StatusRequest};
use tonic::transport::{Endpoint, Uri};

/// The container runtime could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("connect to CRI socket {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI Status on {}: {source}", socket.display())]
    Status {
        socket: PathBuf,
        #[source]
        source: Box<tonic::Status>,
    },
    #[error("the container runtime on {} is not ready (restarting?)", socket.display())]
    NotReady { socket: PathBuf },
    #[error("CRI ListPodSandbox on {}: {source}", socket.display())]
    List {
        socket: PathBuf,
        #[source]
        source: Box<tonic::Status>,
    },
}

/// IDs of every pod sandbox the runtime knows (ready or not): their
/// network attachments are still valid. Fails unless the runtime reports
/// itself ready (its `RuntimeReady` condition).
pub async fn sandbox_ids(socket: &Path) -> Result<HashSet<String>, CriError> {
    let path: PathBuf = socket.to_path_buf();
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|source| CriError::Connect { socket: socket.to_path_buf(), source })?;
    let mut client = RuntimeServiceClient::new(channel);
    // A runtime that is starting or restarting may list only the sandboxes
    // it has loaded so far: its answer is not trusted until it says ready.
    let status = client
        .status(StatusRequest { verbose: false })
        .await
        .map_err(|source| CriError::Status { socket: socket.to_path_buf(), source: Box::new(source) })?;
    let conditions = status.into_inner().status.map(|s| s.conditions).unwrap_or_default();
    if !conditions.iter().any(|c| c.r#type == "RuntimeReady" && c.status) {
        return Err(CriError::NotReady { socket: socket.to_path_buf() });
    }
    let reply = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .map_err(|source| CriError::List { socket: socket.to_path_buf(), source: Box::new(source) })?;
    Ok(reply.into_inner().items.into_iter().map(|s| s.id).collect())
}
