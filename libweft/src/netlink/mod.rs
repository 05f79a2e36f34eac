//! Thin helpers over `rtnetlink` for the kernel objects weft owns.
//!
//! Everything weft programs carries one visible marker: routes use the
//! [`RTPROT_WEFT_POD`] protocol number, devices start with `weft`. Errno handling
//! lives in one place ([`NetlinkError::errno`]) so callers can treat "already
//! exists" and "already gone" uniformly.

mod addr;
mod dump;
mod link;
mod neigh;
mod route;
mod vxlan;

use std::os::fd::{FromRawFd, IntoRawFd};

use futures::TryStreamExt;
pub use netlink_packet_route::link::LinkMessage;
use rtnetlink::Handle;

pub use self::addr::AddressEntry;
pub use self::dump::split;
pub use self::link::{HOST_VETH_PREFIX, LinkInfo, VethSpec, host_veth_name};
pub use self::neigh::neighbour_entry;
pub use self::route::{RouteEntry, RouteSpec};
pub use self::vxlan::{Ensured, VxlanLink, fdb_entry};

/// Route protocol of the pod routes the CNI plugin installs (`ip route show proto 87`).
pub const RTPROT_WEFT_POD: u8 = 87;
/// Route protocol of the routes to peers' pod subnets that weft-agent installs.
/// A number of its own, so the agent's reconciler can never mistake a pod
/// route for a stale peer route.
pub const RTPROT_WEFT_PEER: u8 = 88;

/// A failed netlink operation; `op` says what we were doing to which object.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel (or the library) rejected a request.
    #[error("{op}: {source}")]
    Request {
        /// E.g. `add route 10.244.1.5/32 dev weft1a2b3c`.
        op: String,
        /// The underlying error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The netlink socket could not be set up.
    #[error("open netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// Sending or receiving on a socket of weft's own failed.
    #[error("{op}: {source}")]
    Io {
        /// E.g. `list IPv4 routes`.
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// A link weft just created was gone when it looked it up again:
    /// something else deleted it (or its namespace) in between.
    #[error(
        "{name} vanished{} right after creation",
        .netns.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default()
    )]
    Vanished {
        /// The link's name.
        name: String,
        /// The namespace it was created in, when not the caller's.
        netns: Option<std::path::PathBuf>,
    },
    /// A request weft itself built wrong (a bug, not a kernel answer).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl NetlinkError {
    /// The kernel's errno, if the kernel answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source: rtnetlink::Error::NetlinkError(msg), .. } => Some(-msg.raw_code()),
            _ => None,
        }
    }

    /// The object already exists.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object (or the device it hangs off) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH))
    }
}

/// Wraps an rtnetlink error with what we were doing.
pub(crate) fn ctx(op: impl FnOnce() -> String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError::Request { op: op(), source }
}

/// `Ok(true)` on success, `Ok(false)` when the object was already gone, so
/// every `delete_*` treats "already gone" as success in the same way.
pub(crate) fn tolerate_gone(
    res: Result<(), rtnetlink::Error>,
    op: impl FnOnce() -> String,
) -> Result<bool, NetlinkError> {
    match res {
        Ok(()) => Ok(true),
        Err(e) => {
            let err = ctx(op)(e);
            if err.is_not_found() { Ok(false) } else { Err(err) }
        }
    }
}

/// A netlink connection in one network namespace. Must be created inside a
/// tokio runtime: the connection task is spawned on it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    /// A socket of its own for dumps, in the same namespace ([`dump`]).
    dumps: Option<dump::Dumps>,
}

impl Netlink {
    /// A connection in the calling thread's namespace.
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let dumps = dump::DumpSocket::open().map_err(NetlinkError::Socket)?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle, dumps: Some(std::sync::Arc::new(tokio::sync::Mutex::new(dumps))) })
    }

    /// A connection over a socket opened elsewhere (typically in another
    /// namespace by [`crate::netns::NetNs::route_socket`]); the socket keeps
    /// talking to the namespace it was created in.
    pub fn from_socket(socket: netlink_sys::Socket) -> Result<Netlink, NetlinkError> {
        socket.set_non_blocking(true).map_err(NetlinkError::Socket)?;
        // SAFETY: we own the fd (into_raw_fd gives up the Socket's ownership).
        let socket = unsafe { netlink_sys::TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        Ok(Netlink { handle, dumps: None })
    }

    /// The link called `name`, or `None`.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let res = self.handle.link().get().match_name(name.to_string()).execute().try_next().await;
        match res {
            Ok(Some(msg)) => Ok(Some(LinkInfo::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) => {
                let err = ctx(|| format!("get link {name}"))(e);
                if err.is_not_found() { Ok(None) } else { Err(err) }
            }
        }
    }

    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let msgs: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(ctx(|| "list links".into()))?;
        Ok(msgs.iter().map(LinkInfo::from_message).collect())
    }

    /// Deletes the link called `name`; `Ok(false)` when it was already gone.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link_by_name(name).await? else { return Ok(false) };
        tolerate_gone(self.handle.link().del(link.index).execute().await, || format!("delete link {name}"))
    }
}

/// FNV-1a (64-bit) of `bytes`. Device names and MACs derived from it must
/// not change across upgrades, so it is written out here: std's
/// `DefaultHasher` may change between Rust releases.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h = StableHasher::new();
    bytes.into_iter().for_each(|b| h.feed_byte(b));
    h.finish()
}

/// [`stable_hash`] fed piece by piece, for input that is never one buffer.
#[derive(Debug, Clone, Copy)]
pub struct StableHasher(u64);

impl StableHasher {
    pub fn new() -> StableHasher {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }

    fn feed_byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|b| self.feed_byte(*b));
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

impl Default for StableHasher {
    fn default() -> StableHasher {
        StableHasher::new()
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case), two hex digits per byte.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        // from_str_radix alone would also take a sign: "+a" as 0x0a.
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_fnv1a_whether_fed_at_once_or_in_pieces() {
        // The published FNV-1a 64 of "abc": names derived from it live across upgrades.
        assert_eq!(stable_hash(*b"abc"), 0xe71f_a219_0541_574b);
        let mut h = StableHasher::new();
        h.feed(b"a");
        h.feed(b"bc");
        assert_eq!(h.finish(), stable_hash(*b"abc"));
    }

    #[test]
    fn mac_round_trip() {
        let mac = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05];
        assert_eq!(format_mac(&mac), "0a:58:0a:f4:01:05");
        assert_eq!(parse_mac("0a:58:0a:f4:01:05"), Some(mac));
        assert_eq!(parse_mac("0a:58:0a:f4:01"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:01:05:06"), None);
        assert_eq!(parse_mac("zz:58:0a:f4:01:05"), None);
        assert_eq!(parse_mac("0A:58:0A:F4:01:05"), Some(mac));
        // A MAC has one spelling per case: no sign (fuzz/fuzz_targets/node_wire.rs checks this).
        assert_eq!(parse_mac("+a:58:0a:f4:01:05"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:01:+5"), None);
    }
}
