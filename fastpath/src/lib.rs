//! weft's BPF fast path for established flows (opt-in, `dataplane: bpf`).
//!
//! The tc program (`src/bpf/fastpath.bpf.c`, its header says what it
//! forwards and what it leaves to netfilter) runs at ingress of each pod's
//! host-side veth ([`Hook::Pod`]) and of the node's uplink
//! ([`Hook::Uplink`]). This crate loads it with libbpf (which resolves the
//! conntrack kfuncs and CO-RE relocations against the kernel's BTF),
//! attaches it as a direct-action cls_bpf filter under clsact with weft's
//! own handle and priority, fills its map of pods, and reads its counters.
//!
//! Kernel objects and their lifetime:
//! - the maps are pinned under the pin directory (`/sys/fs/bpf/weft` for
//!   the agent) and reused by the next load, so a restarted agent keeps
//!   the pod map the running filters use;
//! - a filter holds its program, so traffic keeps its path while the agent
//!   is down; attaching again replaces the filter in place;
//! - [`detach`] and [`remove_pins`] take everything away.
//!
//! Netlink calls (attach, detach, query) act in the calling thread's
//! network namespace; map operations work from anywhere.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libbpf_rs::{ErrorKind, MapCore, MapFlags, Object, ObjectBuilder, PrintLevel, TC_INGRESS, TcHook};

/// The program, compiled by build.rs; empty when clang was missing.
const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));

/// weft's filter on an ingress hook: a handle and priority of its own, so
/// that it never replaces, or is mistaken for, anyone else's filter.
const TC_HANDLE: u32 = 0x7765;
const TC_PRIORITY: u32 = 0x7765;

const PODS_MAP: &str = "weft_pods";
const STATS_MAP: &str = "weft_stats";

/// The fast path's errors, each naming what it acted on.
#[derive(Debug, thiserror::Error)]
pub enum FastpathError {
    #[error(
        "this weft-agent was built without the BPF program (no clang at build time; scripts/deps installs clang-19)"
    )]
    NotBuilt,
    #[error("pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("load the BPF fast path: {0}")]
    Load(#[source] libbpf_rs::Error),
    #[error("the BPF object has no {0}")]
    Missing(&'static str),
    #[error("{verb} the fast path on ifindex {ifindex}: {source}")]
    Tc { verb: &'static str, ifindex: u32, source: libbpf_rs::Error },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: libbpf_rs::Error },
}

type Result<T, E = FastpathError> = std::result::Result<T, E>;

/// Where a program is attached: which of the two programs runs there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// A pod's host-side veth: checks the source against the pod map.
    Pod,
    /// The node's uplink: forwards only traffic to local pods.
    Uplink,
}

impl Hook {
    fn program(self) -> &'static str {
        match self {
            Hook::Pod => "weft_from_pod",
            Hook::Uplink => "weft_from_uplink",
        }
    }
}

/// Packets counted by the program since its maps were created (summed over
/// CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Redirected into a local pod (`bpf_redirect_peer`).
    pub to_pod: u64,
    /// Redirected toward another node (`bpf_redirect_neigh`).
    pub to_node: u64,
    /// Left to the kernel's path (`TC_ACT_OK`).
    pub slow: u64,
}

/// The program loaded into the kernel, its maps pinned.
pub struct Fastpath {
    obj: Object,
}

impl std::fmt::Debug for Fastpath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fastpath").finish_non_exhaustive()
    }
}

/// Sends libbpf's messages to `tracing` instead of stderr: its warnings
/// as warnings, except the kernel's extended acks of a tc query or detach
/// that finds nothing (every pass asks about links without weft's filter),
/// which are debug like the rest. The verifier's log of a failed load is
/// among the warnings.
fn route_libbpf_messages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        fn print(level: PrintLevel, msg: String) {
            let msg = msg.trim_end();
            match level {
                PrintLevel::Warn if !msg.contains("Kernel error message") => tracing::warn!("libbpf: {msg}"),
                _ => tracing::debug!("libbpf: {msg}"),
            }
        }
        libbpf_rs::set_print(Some((PrintLevel::Debug, print)));
    });
}

/// True when this build carries the BPF program.
pub fn built() -> bool {
    !OBJECT.is_empty()
}

impl Fastpath {
    /// Loads both programs. The maps are pinned in `pin_dir` (created, on
    /// a bpf filesystem); maps already pinned there are reused, with their
    /// contents.
    pub fn load(pin_dir: &Path) -> Result<Fastpath> {
        if !built() {
            return Err(FastpathError::NotBuilt);
        }
        route_libbpf_messages();
        std::fs::create_dir_all(pin_dir)
            .map_err(|source| FastpathError::PinDir { path: pin_dir.to_owned(), source })?;
        let mut open = ObjectBuilder::default().open_memory(OBJECT).map_err(FastpathError::Load)?;
        for mut map in open.maps_mut() {
            let path = pin_dir.join(map.name());
            map.set_pin_path(path).map_err(FastpathError::Load)?;
        }
        let obj = open.load().map_err(FastpathError::Load)?;
        Ok(Fastpath { obj })
    }

    fn hook(&self, ifindex: u32, hook: Hook) -> Result<TcHook> {
        let prog =
            self.obj.progs().find(|p| p.name() == hook.program()).ok_or(FastpathError::Missing(hook.program()))?;
        Ok(tc_hook(prog.as_fd(), ifindex))
    }

    /// Attaches `hook`'s program at ingress of `ifindex` (in the calling
    /// thread's netns), adding the clsact qdisc if missing and replacing
    /// weft's filter if present.
    pub fn attach(&self, ifindex: u32, hook: Hook) -> Result<()> {
        let tc = |verb, source| FastpathError::Tc { verb, ifindex, source };
        let mut hook = self.hook(ifindex, hook)?;
        hook.create().map_err(|e| tc("add clsact for", e))?;
        hook.replace(true).attach().map_err(|e| tc("attach", e))?;
        Ok(())
    }

    /// The kernel's id of `hook`'s program as loaded here, to compare with
    /// [`attached`].
    pub fn program_id(&self, hook: Hook) -> Result<u32> {
        let prog =
            self.obj.progs().find(|p| p.name() == hook.program()).ok_or(FastpathError::Missing(hook.program()))?;
        libbpf_rs::ProgramImpl::<'_>::id_from_fd(prog.as_fd()).map_err(|source| FastpathError::Tc {
            verb: "identify",
            ifindex: 0,
            source,
        })
    }

    fn map(&self, name: &'static str) -> Result<libbpf_rs::Map<'_>> {
        self.obj.maps().find(|m| m.name() == name).ok_or(FastpathError::Missing(name))
    }

    /// Lets `addr` be the source of packets from the pod behind `ifindex`,
    /// and makes it a destination reached through that veth.
    pub fn insert_pod(&self, ifindex: u32, addr: IpAddr) -> Result<()> {
        let map_err = |source| FastpathError::Map { map: PODS_MAP, source };
        self.map(PODS_MAP)?.update(&pod_key(ifindex, addr), &[1], MapFlags::ANY).map_err(map_err)
    }

    /// Removes a pod address; an address already gone is fine.
    pub fn remove_pod(&self, ifindex: u32, addr: IpAddr) -> Result<()> {
        match self.map(PODS_MAP)?.delete(&pod_key(ifindex, addr)) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            r => r.map_err(|source| FastpathError::Map { map: PODS_MAP, source }),
        }
    }

    /// The pod addresses in the map, by veth ifindex.
    pub fn pods(&self) -> Result<BTreeSet<(u32, IpAddr)>> {
        Ok(self.map(PODS_MAP)?.keys().filter_map(|k| parse_pod_key(&k)).collect())
    }

    /// The program's counters.
    pub fn stats(&self) -> Result<Stats> {
        read_stats(&self.map(STATS_MAP)?)
    }
}

/// The counters of the program whose maps are pinned in `pin_dir`, read
/// without loading anything (e.g. by a test or an operator's tool).
pub fn pinned_stats(pin_dir: &Path) -> Result<Stats> {
    let map = libbpf_rs::MapHandle::from_pinned_path(pin_dir.join(STATS_MAP))
        .map_err(|source| FastpathError::Map { map: STATS_MAP, source })?;
    read_stats(&map)
}

fn read_stats(map: &impl MapCore) -> Result<Stats> {
    let sum = |index: u32| -> Result<u64> {
        let per_cpu = map
            .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| FastpathError::Map { map: STATS_MAP, source })?
            .unwrap_or_default();
        Ok(per_cpu.iter().filter_map(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?))).sum())
    };
    Ok(Stats { to_pod: sum(0)?, to_node: sum(1)?, slow: sum(2)? })
}

/// A hook on ingress of `ifindex` with weft's handle and priority. The
/// program fd matters only for attach; query and detach clear it.
fn tc_hook(fd: std::os::fd::BorrowedFd<'_>, ifindex: u32) -> TcHook {
    let mut hook = TcHook::new(fd);
    hook.ifindex(ifindex as i32).attach_point(TC_INGRESS).handle(TC_HANDLE).priority(TC_PRIORITY);
    hook
}

/// Gone interfaces, missing clsact qdiscs and missing filters all mean
/// "nothing of weft's there".
fn is_absent(e: &libbpf_rs::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::InvalidInput)
        || matches!(e.kind(), ErrorKind::Other) && e.to_string().contains("No such device")
}

/// The id of the program weft's filter runs at ingress of `ifindex`, if
/// any (in the calling thread's netns).
pub fn attached(ifindex: u32) -> Result<Option<u32>> {
    route_libbpf_messages();
    let null = File::open("/dev/null").map_err(|source| FastpathError::PinDir { path: "/dev/null".into(), source })?;
    match tc_hook(null.as_fd(), ifindex).query() {
        Ok(id) => Ok(Some(id)),
        Err(e) if is_absent(&e) => Ok(None),
        Err(source) => Err(FastpathError::Tc { verb: "query", ifindex, source }),
    }
}

/// Removes weft's filter from ingress of `ifindex` (in the calling
/// thread's netns), leaving the clsact qdisc and anyone else's filters.
/// Nothing there is fine.
pub fn detach(ifindex: u32) -> Result<()> {
    route_libbpf_messages();
    let null = File::open("/dev/null").map_err(|source| FastpathError::PinDir { path: "/dev/null".into(), source })?;
    match tc_hook(null.as_fd(), ifindex).detach() {
        Err(e) if !is_absent(&e) => Err(FastpathError::Tc { verb: "detach", ifindex, source: e }),
        _ => Ok(()),
    }
}

/// Unpins the maps and removes `pin_dir`; the kernel frees them once no
/// filter uses them. A missing directory is fine.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(FastpathError::PinDir { path: pin_dir.to_owned(), source: e })
        }
        _ => Ok(()),
    }
}

/// The map key of `struct pod_key`: ifindex, family (4 or 6), address in
/// 16 bytes, native endian like the program reads it.
fn pod_key(ifindex: u32, addr: IpAddr) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..4].copy_from_slice(&ifindex.to_ne_bytes());
    match addr {
        IpAddr::V4(a) => {
            key[4..8].copy_from_slice(&4u32.to_ne_bytes());
            key[8..12].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key[4..8].copy_from_slice(&6u32.to_ne_bytes());
            key[8..24].copy_from_slice(&a.octets());
        }
    }
    key
}

fn parse_pod_key(key: &[u8]) -> Option<(u32, IpAddr)> {
    let ifindex = u32::from_ne_bytes(key.get(..4)?.try_into().ok()?);
    let addr: [u8; 16] = key.get(8..24)?.try_into().ok()?;
    match u32::from_ne_bytes(key.get(4..8)?.try_into().ok()?) {
        4 => Some((ifindex, IpAddr::from([addr[0], addr[1], addr[2], addr[3]]))),
        6 => Some((ifindex, IpAddr::from(addr))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_keys_round_trip_both_families() {
        for addr in ["10.244.1.5", "fd00:10:244:1::5"] {
            let addr: IpAddr = addr.parse().expect("address");
            assert_eq!(parse_pod_key(&pod_key(7, addr)), Some((7, addr)));
        }
    }

    #[test]
    fn an_ipv4_key_leaves_the_rest_of_the_address_zero() {
        let key = pod_key(3, "10.0.0.1".parse().expect("address"));
        assert!(key[12..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_key_of_unknown_family_is_skipped() {
        let mut key = pod_key(1, "10.0.0.1".parse().expect("address"));
        key[4] = 9;
        assert_eq!(parse_pod_key(&key), None);
    }

    #[test]
    fn this_build_carries_the_program() {
        // scripts/deps installs clang-19; CI must not ship an agent without it.
        if std::env::var_os("CI").is_some() {
            assert!(built());
        }
    }
}
