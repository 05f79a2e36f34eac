//! The IPAM store on disk, one directory per network:
//!
//! ```text
//! <dataDir>/<network>/
//!   lock                        flock'ed around every operation
//!   boot_id                     the boot this store belongs to
//!   10.244.1.5                  reservation: "<container id>\n<ifname>\n"
//!   fd00:10:244:1::5            (IPv6 reservations likewise)
//!   attach-<container id>@<ifname>   index: the attachment's addresses, one per line
//!   cursor-10.244.1.0_24        the subnet's last handed-out address
//!   .tmp-<pid>-<n>              a write in progress (swept by GC)
//! ```
//!
//! A reservation is a temp file hard-linked to its final name: `link(2)`
//! fails if the name exists, so it is an exclusive create, and a reader
//! never sees an empty or half-written reservation. Index, cursor and
//! boot-ID files are replaced with rename. host-local rewrites its cursor in
//! place and finds an attachment by reading every file; we do neither.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ipnetwork::IpNetwork;

use super::{Attachment, IpamError, Reservation, Store};

const INDEX_PREFIX: &str = "attach-";
const CURSOR_PREFIX: &str = "cursor-";
const TMP_PREFIX: &str = ".tmp-";
const BOOT_ID: &str = "boot_id";
/// How long to wait for another plugin process holding the lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Temp files older than this belong to a dead writer.
const STALE_TMP: Duration = Duration::from_secs(60);

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The on-disk store of one network.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IpamError + 'a {
    move |source| IpamError::Io { op, path: path.to_path_buf(), source }
}

/// The kernel's ID of the current boot.
fn current_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

impl DiskStore {
    /// Opens (creating) `<data_dir>/<network>/` for the current boot.
    pub fn open(data_dir: &Path, network: &str) -> Result<DiskStore, IpamError> {
        Self::open_with_boot_id(data_dir, network, &current_boot_id())
    }

    /// Like [`DiskStore::open`] with an explicit boot ID. A store stamped
    /// with another boot is emptied first: the reboot killed every pod that
    /// held its addresses (this makes a `dataDir` on disk behave like tmpfs).
    pub fn open_with_boot_id(data_dir: &Path, network: &str, boot_id: &str) -> Result<DiskStore, IpamError> {
        let ok = !network.is_empty()
            && network != "."
            && network != ".."
            && !network.contains('/')
            && !network.contains('\0');
        if !ok {
            return Err(IpamError::BadNetworkName { name: network.to_string() });
        }
        let dir = data_dir.join(network);
        std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        let store = DiskStore { dir };
        let stamp = store.dir.join(BOOT_ID);
        let current = std::fs::read_to_string(&stamp).map(|s| s.trim().to_string()).ok();
        if current.as_deref() != Some(boot_id) {
            store.locked(|| {
                // Re-check under the lock: another process may have done it.
                let current = std::fs::read_to_string(&stamp).map(|s| s.trim().to_string()).ok();
                if current.as_deref() == Some(boot_id) {
                    return Ok(());
                }
                if current.is_some() {
                    store.wipe()?;
                }
                store.write_atomic(&stamp, format!("{boot_id}\n").as_bytes())
            })?;
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes every reservation, index and cursor (after a reboot).
    fn wipe(&self) -> Result<(), IpamError> {
        for entry in std::fs::read_dir(&self.dir).map_err(io("read directory", &self.dir))? {
            let entry = entry.map_err(io("read directory", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "lock" && name != BOOT_ID {
                remove_if_exists(&entry.path())?;
            }
        }
        Ok(())
    }

    fn tmp_path(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()))
    }

    fn write_tmp(&self, content: &[u8]) -> Result<PathBuf, IpamError> {
        let tmp = self.tmp_path();
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io("create", &tmp))?;
        f.write_all(content).map_err(io("write", &tmp))?;
        Ok(tmp)
    }

    /// Replaces `path` with `content` in one rename.
    fn write_atomic(&self, path: &Path, content: &[u8]) -> Result<(), IpamError> {
        let tmp = self.write_tmp(content)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            IpamError::Io { op: "rename into", path: path.to_path_buf(), source: e }
        })
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn index_path(&self, att: &Attachment) -> PathBuf {
        self.dir.join(format!("{INDEX_PREFIX}{}@{}", att.container_id, att.ifname))
    }

    fn cursor_path(&self, subnet: &IpNetwork) -> PathBuf {
        self.dir.join(format!("{CURSOR_PREFIX}{}_{}", subnet.network(), subnet.prefix()))
    }
}

fn remove_if_exists(path: &Path) -> Result<(), IpamError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(IpamError::Io { op: "remove", path: path.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

fn parse_owner(text: &str) -> Option<Attachment> {
    let mut lines = text.lines();
    let container_id = lines.next()?.trim().to_string();
    let ifname = lines.next()?.trim().to_string();
    (!container_id.is_empty() && !ifname.is_empty()).then_some(Attachment { container_id, ifname })
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Store for DiskStore {
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, IpamError>) -> Result<T, IpamError> {
        let path = self.dir.join("lock");
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io("open", &path))?;
        let started = Instant::now();
        // Bounded wait: the kernel drops a dead process's flock, so only a
        // live but stuck process can hold it this long.
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(IpamError::LockTimeout { path, waited: started.elapsed() });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(IpamError::Io { op: "lock", path, source: e }),
            }
        }
        let result = f();
        // Closing the file releases the lock as well; unlock explicitly for clarity.
        let _ = file.unlock();
        result
    }

    fn owner(&self, ip: IpAddr) -> Result<Option<Attachment>, IpamError> {
        let path = self.ip_path(ip);
        match std::fs::read_to_string(&path) {
            // A file we cannot parse still reserves its address: never hand it out.
            Ok(text) => Ok(Some(
                parse_owner(&text).unwrap_or(Attachment { container_id: String::new(), ifname: String::new() }),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::Io { op: "read", path, source: e }),
        }
    }

    fn reserve(&self, ip: IpAddr, owner: &Attachment) -> Result<bool, IpamError> {
        let tmp = self.write_tmp(format!("{}\n{}\n", owner.container_id, owner.ifname).as_bytes())?;
        let path = self.ip_path(ip);
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(IpamError::Io { op: "reserve", path, source: e }),
        }
    }

    fn unreserve(&self, ip: IpAddr) -> Result<(), IpamError> {
        remove_if_exists(&self.ip_path(ip))
    }

    fn reservations(&self) -> Result<Vec<Reservation>, IpamError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("read directory", &self.dir))? {
            let entry = entry.map_err(io("read directory", &self.dir))?;
            let Ok(ip) = entry.file_name().to_string_lossy().parse::<IpAddr>() else { continue };
            if let Some(owner) = self.owner(ip)? {
                out.push(Reservation { ip, owner, since: modified(&entry.path()) });
            }
        }
        Ok(out)
    }

    fn index(&self, att: &Attachment) -> Result<Option<Vec<IpAddr>>, IpamError> {
        let path = self.index_path(att);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::Io { op: "read", path, source: e }),
        }
    }

    fn write_index(&self, att: &Attachment, ips: &[IpAddr]) -> Result<(), IpamError> {
        let text: String = ips.iter().map(|ip| format!("{ip}\n")).collect();
        self.write_atomic(&self.index_path(att), text.as_bytes())
    }

    fn remove_index(&self, att: &Attachment) -> Result<(), IpamError> {
        remove_if_exists(&self.index_path(att))
    }

    fn indexes(&self) -> Result<Vec<(Attachment, SystemTime)>, IpamError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("read directory", &self.dir))? {
            let entry = entry.map_err(io("read directory", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_prefix(INDEX_PREFIX) else { continue };
            // Container IDs cannot contain '@'; interface names may.
            let Some((container_id, ifname)) = key.split_once('@') else { continue };
            out.push((
                Attachment { container_id: container_id.into(), ifname: ifname.into() },
                modified(&entry.path()),
            ));
        }
        Ok(out)
    }

    fn cursor(&self, subnet: &IpNetwork) -> Result<Option<IpAddr>, IpamError> {
        let path = self.cursor_path(subnet);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::Io { op: "read", path, source: e }),
        }
    }

    fn set_cursor(&self, subnet: &IpNetwork, ip: IpAddr) -> Result<(), IpamError> {
        self.write_atomic(&self.cursor_path(subnet), format!("{ip}\n").as_bytes())
    }

    fn sweep(&self) -> Result<(), IpamError> {
        for entry in std::fs::read_dir(&self.dir).map_err(io("read directory", &self.dir))? {
            let entry = entry.map_err(io("read directory", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = SystemTime::now().duration_since(modified(&entry.path())).unwrap_or_default() > STALE_TMP;
            // Under the lock no live writer of ours is mid-write except a
            // reserve, whose temp lives for microseconds: a temp of a dead
            // process is recognised by its PID, an old one by its age.
            let dead_pid = name
                .strip_prefix(TMP_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
                .is_some_and(|pid| pid != std::process::id() as i32 && !Path::new(&format!("/proc/{pid}")).exists());
            if name.starts_with(TMP_PREFIX) && (stale || dead_pid) {
                remove_if_exists(&entry.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::Allocator;
    use super::*;

    fn att(id: &str) -> Attachment {
        Attachment { container_id: id.into(), ifname: "eth0".into() }
    }

    fn subnets() -> Vec<IpNetwork> {
        vec!["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()]
    }

    fn allocator(dir: &Path) -> Allocator<DiskStore> {
        Allocator::new(DiskStore::open_with_boot_id(dir, "weft", "boot-1").unwrap(), subnets()).unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("weft"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn end_to_end_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let a = allocator(tmp.path());
        let got = a.allocate(&att("c1")).unwrap();
        assert_eq!(got[0].ip.to_string(), "10.244.1.1");
        assert_eq!(got[1].ip.to_string(), "fd00:10:244:1::1");
        assert_eq!(a.allocate(&att("c1")).unwrap(), got, "idempotent across calls");
        // A fresh allocator (a new plugin process) sees the same state.
        let b = allocator(tmp.path());
        assert_eq!(b.find(&att("c1")).unwrap(), got);
        assert_eq!(std::fs::read_to_string(tmp.path().join("weft/10.244.1.1")).unwrap(), "c1\neth0\n");
        let second = b.allocate(&att("c2")).unwrap();
        assert_eq!(second[0].ip.to_string(), "10.244.1.2");
        b.release(&att("c1")).unwrap();
        b.release(&att("c1")).unwrap();
        let f = files(tmp.path());
        assert!(!f.iter().any(|n| n.contains("c1") || n == "10.244.1.1"), "{f:?}");
        assert!(f.iter().all(|n| !n.starts_with(".tmp")), "{f:?}");
    }

    #[test]
    fn crash_leftovers_are_repaired_by_allocate_and_reclaimed_by_gc() {
        let tmp = tempfile::tempdir().unwrap();
        let a = allocator(tmp.path());
        let dir = tmp.path().join("weft");
        // An index whose reservations were never made (crash after the intent).
        std::fs::write(dir.join("attach-c1@eth0"), "10.244.1.7\nfd00:10:244:1::7\n").unwrap();
        // A reservation without any index (crash artefact of an older layout).
        std::fs::write(dir.join("10.244.1.9"), "ghost\neth0\n").unwrap();
        // A temp file of a dead writer.
        std::fs::write(dir.join(".tmp-999999-1"), "x").unwrap();
        // Garbage that must be ignored, not panic.
        std::fs::write(dir.join("not-an-ip"), "junk").unwrap();
        std::fs::write(dir.join("10.244.1.20"), "").unwrap();

        let got = a.allocate(&att("c1")).unwrap();
        assert_eq!(got[0].ip.to_string(), "10.244.1.7", "the interrupted intent is completed");
        assert_eq!(std::fs::read_to_string(dir.join("10.244.1.7")).unwrap(), "c1\neth0\n");

        let valid: HashSet<Attachment> = [att("c1")].into_iter().collect();
        let freed = a.gc(&valid).unwrap();
        assert!(freed.contains(&"10.244.1.9".parse().unwrap()));
        assert!(freed.contains(&"10.244.1.20".parse().unwrap()), "an unreadable reservation is reclaimed by GC");
        let f = files(tmp.path());
        assert!(!f.iter().any(|n| n.starts_with(".tmp")), "{f:?}");
        assert!(f.contains(&"10.244.1.7".to_string()) && !f.contains(&"10.244.1.9".to_string()));
        // An unparsable reservation is never handed out before GC reclaims it.
        assert!(a.allocate(&att("c2")).unwrap()[0].ip.to_string() != "10.244.1.20");
    }

    #[test]
    fn gc_grace_spares_young_reservations() {
        let tmp = tempfile::tempdir().unwrap();
        let a = allocator(tmp.path());
        a.allocate(&att("in-flight")).unwrap();
        assert!(a.gc_older_than(&HashSet::new(), Duration::from_secs(60)).unwrap().is_empty());
        assert_eq!(a.gc(&HashSet::new()).unwrap().len(), 2);
    }

    #[test]
    fn a_new_boot_empties_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        allocator(tmp.path()).allocate(&att("c1")).unwrap();
        let after_reboot =
            Allocator::new(DiskStore::open_with_boot_id(tmp.path(), "weft", "boot-2").unwrap(), subnets()).unwrap();
        assert!(after_reboot.find(&att("c1")).unwrap().is_empty());
        assert_eq!(after_reboot.usage().unwrap()[0].used, 0);
        assert_eq!(after_reboot.allocate(&att("c9")).unwrap()[0].ip.to_string(), "10.244.1.1");
        // The same boot again changes nothing.
        let same =
            Allocator::new(DiskStore::open_with_boot_id(tmp.path(), "weft", "boot-2").unwrap(), subnets()).unwrap();
        assert_eq!(same.find(&att("c9")).unwrap().len(), 2);
    }

    #[test]
    fn bad_network_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "a/b"] {
            assert!(matches!(DiskStore::open(tmp.path(), bad), Err(IpamError::BadNetworkName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn concurrent_allocators_get_distinct_addresses() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let all: Vec<IpAddr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let dir = dir.clone();
                    s.spawn(move || {
                        let mut got = Vec::new();
                        for i in 0..25 {
                            // A new store per call, as separate plugin processes would have.
                            let a = allocator(&dir);
                            got.extend(a.allocate(&att(&format!("t{t}-{i}"))).unwrap().into_iter().map(|x| x.ip));
                        }
                        got
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let unique: HashSet<&IpAddr> = all.iter().collect();
        assert_eq!(all.len(), 400);
        assert_eq!(unique.len(), 400, "an address was handed out twice");
    }
}
