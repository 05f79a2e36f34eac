//! Network namespaces, entered only on throwaway threads.
//!
//! `setns(2)` changes the namespace of the calling *thread*. A thread we reuse
//! (a tokio worker, the main thread) must never be switched, or later work runs
//! in the wrong namespace. So we switch a fresh `std::thread`, do the one thing
//! that needs the namespace (usually: open a netlink socket, which stays bound
//! to that namespace), and let the thread end without switching back. If the
//! switch fails nothing else is affected (containernetworking/plugins `ns.Do`,
//! kindnet `NewHandleAt`).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// `statfs.f_type` of nsfs, where namespace files live.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Errors opening or entering a namespace; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path does not exist (the container is gone).
    #[error("{path} does not exist")]
    NotFound {
        /// The netns path.
        path: PathBuf,
    },
    /// Opening the path failed.
    #[error("open {path}: {source}")]
    Open {
        /// The netns path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a namespace file.
    #[error("{path} is not a network namespace (not on nsfs)")]
    NotNetns {
        /// The path.
        path: PathBuf,
    },
    /// `setns` failed.
    #[error("enter {path}: {source}")]
    Enter {
        /// The netns path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// The throwaway thread could not be spawned or panicked.
    #[error("worker thread for {path}: {reason}")]
    Thread {
        /// The netns path.
        path: PathBuf,
        /// What happened.
        reason: String,
    },
}

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens a namespace file such as `/run/netns/x` or `/proc/<pid>/ns/net`.
    pub fn open(path: &Path) -> Result<NetNs, NetnsError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NetnsError::NotFound { path: path.to_path_buf() }
            } else {
                NetnsError::Open { path: path.to_path_buf(), source }
            }
        })?;
        let is_nsfs = nix::sys::statfs::fstatfs(&file).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC);
        if !is_nsfs {
            return Err(NetnsError::NotNetns { path: path.to_path_buf() });
        }
        Ok(NetNs { file, path: path.to_path_buf() })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace fd, e.g. for `IFLA_NET_NS_FD`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The raw namespace fd.
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a new thread that has entered this namespace; the thread
    /// ends afterwards, so no thread we keep ever changes namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let thread_err = |reason: String| NetnsError::Thread { path: self.path.clone(), reason };
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("weft-netns".into())
                .spawn_scoped(s, || {
                    setns(&self.file, CloneFlags::CLONE_NEWNET)
                        .map_err(|source| NetnsError::Enter { path: self.path.clone(), source })?;
                    Ok(f())
                })
                .map_err(|e| thread_err(e.to_string()))?;
            handle.join().map_err(|_| thread_err("panicked".into()))?
        })
    }

    /// A netlink route socket that lives in this namespace, for use from any thread.
    pub fn route_socket(&self) -> Result<netlink_sys::Socket, NetnsError> {
        self.run(|| netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE))?
            .map_err(|source| NetnsError::Open { path: self.path.clone(), source })
    }
}
