//! The IPAM [`Store`] on disk, one directory per CNI network:
//!
//! ```text
//! <data_dir>/<network>/                 mode 0700
//!   lock                                flock'ed around every whole operation
//!   boot_id                             the boot these records belong to
//!   10.244.1.5                          reservation: "<container id>\n<ifname>\n"
//!   fd00:10:244:1::5                    (IPv6 likewise)
//!   attach-<container id>@<ifname>      index: the attachment's addresses, one per line
//!   cursor-10.244.1.0_24                the subnet's last handed-out address
//!   quarantine-10.244.1.7               a released address: when (CLOCK_BOOTTIME, ms)
//!   .tmp-<pid>-<n>                      a write in progress, or a crash's leftover
//! ```
//!
//! A reservation is a complete temp file hard-linked to its final name:
//! `link(2)` fails with `EEXIST` if the name exists, so it is an exclusive
//! create, and no reader ever sees an empty or half-written reservation.
//! Index, cursor and boot-ID files are replaced with `rename(2)`, never
//! rewritten in place. An attachment's index is found by name, so `find` and
//! `release` never read every reservation (host-local's `FindByID` does).
//!
//! Nothing is fsync'ed: records only have to outlive the plugin process, not
//! the machine. After a reboot the boot-ID stamp differs and the records are
//! discarded anyway (every pod died with the machine), so a power cut cannot
//! resurrect a half-persisted one: their addresses are quarantined from the
//! new boot's first open, since other nodes may still allow the pods that
//! held them. The usual `dataDir` is a tmpfs besides.

use std::fs::{DirBuilder, File};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ipnetwork::IpNetwork;

use super::{Attachment, AttachmentIndex, IpamError, Reservation, Store, boottime};
use crate::cni::{check_container_id, check_ifname};
use crate::file;

/// How long an operation waits for another process holding the lock before
/// giving up with [`IpamError::LockTimeout`] (CNI "try again later").
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the kernel publishes the ID of the current boot.
const BOOT_ID_SOURCE: &str = "/proc/sys/kernel/random/boot_id";

const LOCK: &str = "lock";
const BOOT_ID: &str = "boot_id";
const INDEX_PREFIX: &str = "attach-";
const CURSOR_PREFIX: &str = "cursor-";
const QUARANTINE_PREFIX: &str = "quarantine-";
const TMP_PREFIX: &str = ".tmp-";
/// Linux `NAME_MAX`.
const MAX_FILE_NAME: usize = 255;

/// Numbers this process's temp files.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The IPAM records of one CNI network in `<data_dir>/<network>/`.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    lock_timeout: Duration,
}

impl DiskStore {
    /// Opens (creating it if needed) `<data_dir>/<network>/`, discarding its
    /// records if they were made before the machine's last reboot.
    pub fn open(data_dir: &Path, network: &str) -> Result<DiskStore, IpamError> {
        let source = Path::new(BOOT_ID_SOURCE);
        let boot_id = std::fs::read_to_string(source).map_err(io("read", source))?;
        Self::open_with_boot_id(data_dir, network, boot_id.trim())
    }

    /// Like [`DiskStore::open`], with the current boot's ID given.
    ///
    /// A store stamped with another boot ID is emptied (under the lock) and
    /// re-stamped: the reboot killed every pod that held its addresses. A
    /// store without a stamp is only stamped, never emptied, so a lost stamp
    /// cannot free the addresses of live pods.
    pub fn open_with_boot_id(data_dir: &Path, network: &str, boot_id: &str) -> Result<DiskStore, IpamError> {
        if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0']) {
            return Err(IpamError::BadNetworkName { name: network.to_string() });
        }
        let dir = data_dir.join(network);
        DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io("create directory", &dir))?;
        let store = DiskStore { dir, lock_timeout: DEFAULT_LOCK_TIMEOUT };
        let stamp_path = store.dir.join(BOOT_ID);
        let stamp = || read_optional(&stamp_path).map(|s| s.map(|s| s.trim().to_string()));
        // The common case (same boot) needs no lock: the stamp is replaced atomically.
        if stamp()?.as_deref() != Some(boot_id) {
            store.locked(|| match stamp()? {
                Some(s) if s == boot_id => Ok(()), // another process just did it
                Some(_) => {
                    // Wipe first, stamp last: a crash in between wipes again next time.
                    store.wipe()?;
                    store.replace(&stamp_path, format!("{boot_id}\n").as_bytes())
                }
                None => store.replace(&stamp_path, format!("{boot_id}\n").as_bytes()),
            })?;
        }
        Ok(store)
    }

    /// Gives up waiting for the lock after `timeout` instead of [`DEFAULT_LOCK_TIMEOUT`].
    pub fn with_lock_timeout(mut self, timeout: Duration) -> DiskStore {
        self.lock_timeout = timeout;
        self
    }

    /// Removes the store's directory when no address is reserved and no
    /// attachment is recorded (for uninstalling weft); returns whether it
    /// did. A store still in use is left alone: its pods' addresses must not
    /// be handed out twice by whatever comes next.
    pub fn remove_if_unused(self) -> Result<bool, IpamError> {
        self.locked(|| {
            if !self.reservations()?.is_empty() || !self.indexes()?.is_empty() {
                return Ok(false);
            }
            std::fs::remove_dir_all(&self.dir).map_err(io("remove directory", &self.dir))?;
            Ok(true)
        })
    }

    /// Deletes every reservation, index, cursor and temp file, quarantining
    /// every address reserved or quarantined before (from now: the old
    /// boot's clock means nothing in this one).
    fn wipe(&self) -> Result<(), IpamError> {
        let now = boottime();
        for name in self.file_names()? {
            let released = parse_ip_name(&name).or_else(|| parse_quarantine_name(&name));
            if let Some(ip) = released {
                self.quarantine(ip, now)?;
            }
            let ours = parse_ip_name(&name).is_some()
                || [INDEX_PREFIX, CURSOR_PREFIX, TMP_PREFIX].iter().any(|p| name.starts_with(p));
            if ours {
                remove_if_exists(&self.dir.join(name))?;
            }
        }
        Ok(())
    }

    /// The names in the directory (those that are UTF-8; nothing of ours is not).
    fn file_names(&self) -> Result<Vec<String>, IpamError> {
        let read_dir = std::fs::read_dir(&self.dir).map_err(io("read directory", &self.dir))?;
        let mut names = Vec::new();
        for entry in read_dir {
            let entry = entry.map_err(io("read directory", &self.dir))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// A fresh temp file name in the store's directory. Under the lock an
    /// existing file of this name is a dead process's leftover whose PID we
    /// reuse; [`file::write_new`] unlinks it.
    fn tmp_path(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()))
    }

    /// Replaces `path` with a file holding `content`, atomically.
    fn replace(&self, path: &Path, content: &[u8]) -> Result<(), IpamError> {
        Ok(file::replace(path, &self.tmp_path(), content)?)
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        // `Display` of an IPv6 address is its canonical RFC 5952 form: no '/', fine as a Linux file name.
        self.dir.join(ip.to_string())
    }

    fn index_path(&self, att: &Attachment) -> Result<PathBuf, IpamError> {
        check_attachment(att)?;
        Ok(self.dir.join(index_name(att)))
    }

    fn quarantine_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(format!("{QUARANTINE_PREFIX}{ip}"))
    }

    fn cursor_path(&self, subnet: &IpNetwork) -> PathBuf {
        self.dir.join(format!("{CURSOR_PREFIX}{}_{}", subnet.network(), subnet.prefix()))
    }
}

/// The container ID and interface name end up in file names and in
/// line-based records, which rely on the CNI rules ([`check_container_id`]:
/// never the `@` separator; [`check_ifname`]: never `/` or a newline).
pub fn check_attachment(att: &Attachment) -> Result<(), IpamError> {
    let invalid = |reason| IpamError::InvalidAttachment {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        reason,
    };
    check_container_id(&att.container_id).map_err(invalid)?;
    check_ifname(&att.ifname).map_err(invalid)?;
    let (id, name) = (&att.container_id, &att.ifname);
    if INDEX_PREFIX.len() + id.len() + 1 + name.len() > MAX_FILE_NAME {
        return Err(invalid("container ID and interface name are too long for a file name"));
    }
    Ok(())
}

// The records' formats. What is on disk is untrusted (another process, an
// operator or a crash may have left anything), so every parser returns
// `None` or skips garbage, and the writers are their exact inverses. Public
// for the fuzz targets (fuzz/).

/// The address a reservation file is named after. Only the canonical
/// spelling counts, so one address can never have two files.
pub fn parse_ip_name(name: &str) -> Option<IpAddr> {
    name.parse::<IpAddr>().ok().filter(|ip| ip.to_string() == name)
}

/// The name of an attachment's index file (the attachment must pass [`check_attachment`]).
pub fn index_name(att: &Attachment) -> String {
    format!("{INDEX_PREFIX}{}@{}", att.container_id, att.ifname)
}

/// The attachment an index file is named after.
pub fn parse_index_name(name: &str) -> Option<Attachment> {
    // Container IDs cannot contain '@'; interface names may.
    let (container_id, ifname) = name.strip_prefix(INDEX_PREFIX)?.split_once('@')?;
    let att = Attachment { container_id: container_id.to_string(), ifname: ifname.to_string() };
    check_attachment(&att).ok().map(|()| att)
}

/// A reservation file's content: `<container id>\n<ifname>\n`.
pub fn format_owner(att: &Attachment) -> String {
    format!("{}\n{}\n", att.container_id, att.ifname)
}

/// The owner a reservation file names, or `None` if it is garbage.
pub fn parse_owner(text: &str) -> Option<Attachment> {
    let (container_id, rest) = text.split_once('\n')?;
    let (ifname, rest) = rest.split_once('\n')?;
    let att = Attachment { container_id: container_id.to_string(), ifname: ifname.to_string() };
    (rest.is_empty() && check_attachment(&att).is_ok()).then_some(att)
}

/// An index file's content: one address per line.
pub fn format_index(ips: &[IpAddr]) -> String {
    ips.iter().map(|ip| format!("{ip}\n")).collect()
}

/// The addresses an index file lists; lines that are not an address are skipped.
pub fn parse_index(text: &str) -> Vec<IpAddr> {
    text.lines().filter_map(|l| l.parse().ok()).collect()
}

/// The address a quarantine record is named after.
pub fn parse_quarantine_name(name: &str) -> Option<IpAddr> {
    parse_ip_name(name.strip_prefix(QUARANTINE_PREFIX)?)
}

/// A quarantine record's content: the time of release in milliseconds.
pub fn format_released(at: Duration) -> String {
    format!("{}\n", at.as_millis())
}

/// The time of release a quarantine record holds. Garbage reads as "just
/// released" (`now`): it keeps the address out of use until it expires.
pub fn parse_released(text: &str, now: Duration) -> Duration {
    text.trim().parse::<u64>().map_or(now, Duration::from_millis)
}

/// The address a cursor file holds, or `None` if it is garbage.
pub fn parse_cursor(text: &str) -> Option<IpAddr> {
    text.trim().parse().ok()
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IpamError + 'a {
    move |source| IpamError::Io { op, path: path.to_path_buf(), source }
}

/// The file's content, or `None` if it does not exist. Bytes that are not
/// UTF-8 become U+FFFD, which no parser of ours accepts. Bounded and
/// non-blocking (a record is one line; a FIFO planted in the store must
/// not hang every ADD).
fn read_optional(path: &Path) -> Result<Option<String>, IpamError> {
    match crate::file::read_bounded(path, 64 << 10) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IpamError::Io { op: "read", path: path.to_path_buf(), source: e }),
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

/// When the file was last written (the epoch if unknown, so GC does not spare it).
fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Store for DiskStore {
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, IpamError>) -> Result<T, IpamError> {
        let path = self.dir.join(LOCK);
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io("open", &path))?;
        let started = Instant::now();
        // try_lock in a loop rather than a blocking lock, to bound the wait. The
        // kernel drops a dead process's flock, so only a live, stuck process can
        // make us wait this long, and the runtime will retry the CNI call.
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < self.lock_timeout => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(IpamError::LockTimeout { path, waited: started.elapsed() });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(IpamError::Io { op: "lock", path, source: e }),
            }
        }
        // Closing `file` when it drops releases the lock.
        f()
    }

    fn owner(&self, ip: IpAddr) -> Result<Option<Attachment>, IpamError> {
        let unreadable = || Attachment { container_id: String::new(), ifname: String::new() };
        Ok(read_optional(&self.ip_path(ip))?.map(|text| parse_owner(&text).unwrap_or_else(unreadable)))
    }

    fn reserve(&self, ip: IpAddr, owner: &Attachment) -> Result<bool, IpamError> {
        check_attachment(owner)?;
        let tmp = self.tmp_path();
        file::write_new(&tmp, format_owner(owner).as_bytes())?;
        let path = self.ip_path(ip);
        let linked = std::fs::hard_link(&tmp, &path);
        // If this fails (or we die first) the temp is left for GC's sweep;
        // the reservation itself is complete either way.
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(IpamError::Io { op: "link a reservation to", path, source: e }),
        }
    }

    fn unreserve(&self, ip: IpAddr) -> Result<(), IpamError> {
        remove_if_exists(&self.ip_path(ip))
    }

    fn reservations(&self) -> Result<Vec<Reservation>, IpamError> {
        let mut out = Vec::new();
        for ip in self.file_names()?.iter().filter_map(|n| parse_ip_name(n)) {
            if let Some(owner) = self.owner(ip)? {
                out.push(Reservation { ip, owner, since: modified(&self.ip_path(ip)) });
            }
        }
        Ok(out)
    }

    fn index(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let text = read_optional(&self.index_path(att)?)?.unwrap_or_default();
        Ok(parse_index(&text))
    }

    fn write_index(&self, att: &Attachment, ips: &[IpAddr]) -> Result<(), IpamError> {
        self.replace(&self.index_path(att)?, format_index(ips).as_bytes())
    }

    fn remove_index(&self, att: &Attachment) -> Result<(), IpamError> {
        remove_if_exists(&self.index_path(att)?)
    }

    fn indexes(&self) -> Result<Vec<AttachmentIndex>, IpamError> {
        let mut out = Vec::new();
        for name in self.file_names()? {
            if let Some(attachment) = parse_index_name(&name) {
                let ips = self.index(&attachment)?;
                out.push(AttachmentIndex { attachment, ips, since: modified(&self.dir.join(name)) });
            }
        }
        Ok(out)
    }

    fn cursor(&self, subnet: &IpNetwork) -> Result<Option<IpAddr>, IpamError> {
        Ok(read_optional(&self.cursor_path(subnet))?.and_then(|text| parse_cursor(&text)))
    }

    fn set_cursor(&self, subnet: &IpNetwork, ip: IpAddr) -> Result<(), IpamError> {
        self.replace(&self.cursor_path(subnet), format!("{ip}\n").as_bytes())
    }

    fn sweep(&self) -> Result<(), IpamError> {
        // Every write happens under the lock, which the caller holds: any temp
        // file now is the leftover of a process that died or failed mid-write.
        for name in self.file_names()? {
            if name.starts_with(TMP_PREFIX) {
                remove_if_exists(&self.dir.join(name))?;
            }
        }
        Ok(())
    }

    fn released_at(&self, ip: IpAddr) -> Result<Option<Duration>, IpamError> {
        Ok(read_optional(&self.quarantine_path(ip))?.map(|text| parse_released(&text, boottime())))
    }

    fn quarantine(&self, ip: IpAddr, at: Duration) -> Result<(), IpamError> {
        self.replace(&self.quarantine_path(ip), format_released(at).as_bytes())
    }

    fn unquarantine(&self, ip: IpAddr) -> Result<(), IpamError> {
        remove_if_exists(&self.quarantine_path(ip))
    }

    fn quarantined(&self) -> Result<Vec<(IpAddr, Duration)>, IpamError> {
        let mut out = Vec::new();
        for ip in self.file_names()?.iter().filter_map(|n| parse_quarantine_name(n)) {
            if let Some(at) = self.released_at(ip)? {
                out.push((ip, at));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
