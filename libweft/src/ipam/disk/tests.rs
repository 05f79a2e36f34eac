//! The disk store end to end, on a temp directory.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::ipam::Allocator;
use crate::ipam::fake::CrashAt;
use crate::ipam::tests::{att, ip, ips, net, random_interleavings, seeds};

fn subnets() -> Vec<IpNetwork> {
    vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")]
}

fn store(data_dir: &Path) -> DiskStore {
    DiskStore::open_with_boot_id(data_dir, "weft", "boot-1").expect("open")
}

fn allocator(data_dir: &Path) -> Allocator<DiskStore> {
    Allocator::new(store(data_dir), subnets()).expect("allocator")
}

/// The store's file names (listed without opening it, which could re-stamp it).
fn files(data_dir: &Path) -> Vec<String> {
    let mut names =
        DiskStore { dir: data_dir.join("weft"), lock_timeout: DEFAULT_LOCK_TIMEOUT }.file_names().expect("list");
    names.sort();
    names
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).expect("read")
}

#[test]
fn allocate_find_release_on_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = allocator(tmp.path());
    let got = a.allocate(&att("c1")).expect("allocate");
    assert_eq!(ips(&got), vec![ip("10.244.1.1"), ip("fd00:10:244:1::1")]);
    assert_eq!(a.allocate(&att("c1")).expect("again"), got);
    // A fresh store (another plugin process) sees the same records.
    let b = allocator(tmp.path());
    assert_eq!(b.find(&att("c1")).expect("find"), got);
    let dir = tmp.path().join("weft");
    assert_eq!(read(dir.join("10.244.1.1")), "c1\neth0\n");
    assert_eq!(read(dir.join("fd00:10:244:1::1")), "c1\neth0\n");
    assert_eq!(read(dir.join("attach-c1@eth0")), "10.244.1.1\nfd00:10:244:1::1\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o777, 0o700);

    assert_eq!(ips(&b.allocate(&att("c2")).expect("allocate")), vec![ip("10.244.1.2"), ip("fd00:10:244:1::2")]);
    assert_eq!(b.release(&att("c1")).expect("release"), ips(&got));
    assert!(b.release(&att("c1")).expect("release again").is_empty());
    // Round robin across processes: the cursor on disk moves on from .2.
    assert_eq!(ips(&allocator(tmp.path()).allocate(&att("c3")).expect("allocate"))[0], ip("10.244.1.3"));
    let u = allocator(tmp.path()).usage().expect("usage");
    assert_eq!((u[0].used, u[0].capacity, u[1].used, u[1].capacity), (2, 254, 2, (1 << 64) - 1));
    let f = files(tmp.path());
    assert!(!f.iter().any(|n| n.contains("c1") || n.starts_with(".tmp")), "{f:?}");
}

#[test]
fn exhaustion_on_disk_names_the_subnet() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let open = || Allocator::new(store(tmp.path()), vec![net("10.244.1.0/30")]).expect("allocator");
    open().allocate(&att("c1")).expect("allocate");
    open().allocate(&att("c2")).expect("allocate");
    let err = open().allocate(&att("c3")).expect_err("full");
    assert_eq!(err.to_string(), "no free address left in 10.244.1.0/30");
    open().release(&att("c1")).expect("release");
    assert_eq!(ips(&open().allocate(&att("c3")).expect("allocate")), vec![ip("10.244.1.1")]);
}

#[test]
fn gc_frees_invalid_attachments_and_crash_leftovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = allocator(tmp.path());
    let dir = tmp.path().join("weft");
    for id in ["c1", "c2", "c3"] {
        a.allocate(&att(id)).expect("allocate");
    }
    // Crash leftovers: an index whose reservations were never made, a
    // reservation listed by no index, a temp file never linked, and a temp
    // that is a second link to a live reservation (died before unlinking it).
    std::fs::write(dir.join("attach-gone@eth0"), "10.244.1.50\n").expect("write");
    std::fs::write(dir.join("10.244.1.60"), "ghost\neth0\n").expect("write");
    std::fs::write(dir.join(".tmp-999999-1"), "c9\neth0\n").expect("write");
    std::fs::hard_link(dir.join("10.244.1.2"), dir.join(".tmp-999999-2")).expect("link");

    let valid: HashSet<Attachment> = [att("c2"), att("c3")].into_iter().collect();
    let freed = a.gc(&valid).expect("gc");
    assert_eq!(freed, vec![ip("10.244.1.1"), ip("10.244.1.60"), ip("fd00:10:244:1::1")]);
    let f = files(tmp.path());
    assert!(!f.iter().any(|n| n.starts_with(".tmp") || n.contains("gone") || n.contains("c1")), "{f:?}");
    assert_eq!(read(dir.join("10.244.1.2")), "c2\neth0\n");
    assert_eq!(a.find(&att("c2")).expect("find").len(), 2);
}

#[test]
fn allocate_completes_an_interrupted_allocate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = allocator(tmp.path());
    let dir = tmp.path().join("weft");
    // The intent was written, then the plugin died before reserving.
    std::fs::write(dir.join("attach-c1@eth0"), "10.244.1.7\nfd00:10:244:1::7\n").expect("write");
    // Meanwhile another attachment took the IPv6 one.
    std::fs::write(dir.join("fd00:10:244:1::7"), "c2\neth0\n").expect("write");
    let got = ips(&a.allocate(&att("c1")).expect("allocate"));
    assert_eq!(got, vec![ip("10.244.1.7"), ip("fd00:10:244:1::1")]);
    assert_eq!(read(dir.join("10.244.1.7")), "c1\neth0\n");
    assert_eq!(read(dir.join("fd00:10:244:1::7")), "c2\neth0\n");
    assert_eq!(read(dir.join("attach-c1@eth0")), "10.244.1.7\nfd00:10:244:1::1\n");
}

#[test]
fn garbage_in_the_directory_causes_no_panic_and_no_double_use() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = allocator(tmp.path());
    let dir = tmp.path().join("weft");
    std::fs::write(dir.join("not-an-ip"), "junk").expect("write");
    std::fs::write(dir.join("10.244.1.1"), "").expect("write"); // empty reservation
    std::fs::write(dir.join("10.244.1.2"), [0xff, 0xfe, 0x00]).expect("write"); // not UTF-8
    std::fs::write(dir.join("010.244.1.3"), "c9\neth0\n").expect("write"); // not canonical: ignored
    std::fs::write(dir.join("attach-bad"), "10.244.1.4\n").expect("write");
    std::fs::write(dir.join("attach-c1@eth0"), "garbage\n\n10.244.1.99\n").expect("write");
    std::fs::write(dir.join("cursor-10.244.1.0_24"), "nonsense").expect("write");
    std::fs::write(dir.join(OsStr::from_bytes(b"x\xff")), "").expect("write"); // name not UTF-8

    // Unparsable reservations keep their addresses out of use ...
    assert_eq!(ips(&a.allocate(&att("c1")).expect("allocate"))[0], ip("10.244.1.99"));
    assert_eq!(ips(&a.allocate(&att("c2")).expect("allocate"))[0], ip("10.244.1.3"));
    assert_eq!(a.usage().expect("usage")[0].used, 4);
    // ... until GC reclaims them.
    let valid: HashSet<Attachment> = [att("c1"), att("c2")].into_iter().collect();
    assert_eq!(a.gc(&valid).expect("gc"), vec![ip("10.244.1.1"), ip("10.244.1.2")]);
    assert_eq!(a.usage().expect("usage")[0].used, 2);
}

#[test]
fn names_that_would_escape_the_directory_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for bad in ["", ".", "..", "a/b", "a\0b"] {
        let err = DiskStore::open(tmp.path(), bad).expect_err("bad network name");
        assert!(matches!(&err, IpamError::BadNetworkName { name } if name == bad), "{bad:?}: {err:?}");
    }
    let a = allocator(tmp.path());
    // The same rules as CNI_CONTAINERID and CNI_IFNAME (cni::check_container_id, check_ifname).
    for (id, ifname) in [
        ("../../x", "eth0"),
        ("a@b", "eth0"),
        ("", "eth0"),
        ("c1", ""),
        ("c1", "a/b"),
        ("c1", "a\nb"),
        ("c1", "a:b"),
        ("c1", "0123456789abcdef"),
    ] {
        let bad = Attachment { container_id: id.into(), ifname: ifname.into() };
        assert!(matches!(a.allocate(&bad), Err(IpamError::InvalidAttachment { .. })), "{bad:?}");
        assert!(matches!(a.release(&bad), Err(IpamError::InvalidAttachment { .. })), "{bad:?}");
    }
    assert_eq!(files(tmp.path()), vec![BOOT_ID.to_string(), LOCK.to_string()]);
}

#[test]
fn a_new_boot_discards_every_record_and_quarantines_the_addresses_it_held() {
    let tmp = tempfile::tempdir().expect("tempdir");
    allocator(tmp.path()).allocate(&att("c1")).expect("allocate");
    std::fs::write(tmp.path().join("weft/.tmp-1-1"), "x").expect("write");
    let reboot = || DiskStore::open_with_boot_id(tmp.path(), "weft", "boot-2").expect("open");
    let after = Allocator::new(reboot(), subnets()).expect("allocator").with_quarantine(Duration::from_secs(3600));
    let quarantined = ["quarantine-10.244.1.1", "quarantine-fd00:10:244:1::1"];
    assert_eq!(files(tmp.path()), [BOOT_ID, LOCK, quarantined[0], quarantined[1]]);
    assert_eq!(read(tmp.path().join("weft/boot_id")), "boot-2\n");
    assert!(after.find(&att("c1")).expect("find").is_empty());
    // Other nodes may still allow c1 at .1: the next pod gets .2.
    assert_eq!(ips(&after.allocate(&att("c9")).expect("allocate"))[0], ip("10.244.1.2"));
    // Opening again in the same boot changes nothing.
    assert_eq!(Allocator::new(reboot(), subnets()).expect("allocator").find(&att("c9")).expect("find").len(), 2);
}

#[test]
fn open_reads_the_real_boot_id() {
    let tmp = tempfile::tempdir().expect("tempdir");
    DiskStore::open(tmp.path(), "weft").expect("open");
    let real = read(BOOT_ID_SOURCE);
    assert_eq!(read(tmp.path().join("weft/boot_id")).trim(), real.trim());
}

#[test]
fn a_held_lock_times_out_and_a_dead_holder_releases_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path()).with_lock_timeout(Duration::from_millis(100));
    let holder = File::open(tmp.path().join("weft/lock")).expect("open lock");
    holder.lock().expect("lock");
    let a = Allocator::new(s, subnets()).expect("allocator");
    match a.allocate(&att("c1")) {
        Err(IpamError::LockTimeout { path, waited }) => {
            assert_eq!(path, tmp.path().join("weft/lock"));
            assert!(waited >= Duration::from_millis(100));
        }
        other => panic!("expected a lock timeout, got {other:?}"),
    }
    drop(holder); // what the kernel does when the holding process dies
    assert_eq!(a.allocate(&att("c1")).expect("allocate").len(), 2);
}

#[test]
fn a_reused_pid_does_not_trip_over_its_predecessors_temp_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = allocator(tmp.path());
    a.allocate(&att("c1")).expect("allocate");
    let dir = tmp.path().join("weft");
    // A dead process with our PID left temps, one a second link to a reservation.
    let next = TMP_COUNTER.load(Ordering::Relaxed);
    for n in next..next + 64 {
        std::fs::hard_link(dir.join("10.244.1.1"), dir.join(format!(".tmp-{}-{n}", std::process::id()))).expect("link");
    }
    a.allocate(&att("c2")).expect("allocate");
    assert_eq!(read(dir.join("10.244.1.1")), "c1\neth0\n", "the reservation was not touched");
}

#[test]
fn concurrent_processes_get_distinct_addresses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let subnets = vec![net("10.244.0.0/23"), net("fd00:10:244::/64")];
    let all: Vec<IpAddr> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let subnets = subnets.clone();
                let dir = tmp.path();
                s.spawn(move || {
                    let mut got = Vec::new();
                    for i in 0..50 {
                        // A store of its own per call, as separate plugin processes have.
                        let a = Allocator::new(store(dir), subnets.clone()).expect("allocator");
                        got.extend(ips(&a.allocate(&att(&format!("t{t}-{i}"))).expect("allocate")));
                    }
                    got
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("thread")).collect()
    });
    assert_eq!(all.len(), 800);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 800, "an address was handed out twice");
    let u = Allocator::new(store(tmp.path()), subnets).expect("allocator").usage().expect("usage");
    assert_eq!((u[0].used, u[1].used), (400, 400));
}

#[test]
fn randomized_crashes_on_disk() {
    for seed in seeds().into_iter().take(5) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let subnets = vec![net("10.244.1.0/28"), net("fd00:10:244:1::/64")];
        let open =
            |crash_at| Allocator::new(CrashAt::new(store(tmp.path()), crash_at), subnets.clone()).expect("allocator");
        random_interleavings(seed, 600, &open);
        let f = files(tmp.path());
        assert!(!f.iter().any(|n| n.starts_with(".tmp")), "seed {seed}: {f:?}");
    }
}

#[test]
fn an_unused_store_is_removed_and_a_used_one_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = allocator(tmp.path());
    a.allocate(&att("c1")).expect("allocate");
    assert!(!store(tmp.path()).remove_if_unused().expect("remove"), "a store with a reservation is kept");
    assert!(tmp.path().join("weft/attach-c1@eth0").exists());
    a.release(&att("c1")).expect("release");
    assert!(store(tmp.path()).remove_if_unused().expect("remove"));
    assert!(!tmp.path().join("weft").exists());
}

#[test]
fn quarantine_outlives_the_process_that_released_and_ends_on_time() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let open = |q: u64| {
        Allocator::new(store(tmp.path()), vec![net("10.244.1.0/30")])
            .expect("allocator")
            .with_quarantine(Duration::from_secs(q))
    };
    open(0).allocate(&att("c1")).expect("allocate");
    open(0).allocate(&att("c2")).expect("allocate");
    // A DEL process releases .1; later plugin processes find its record.
    open(0).release(&att("c1")).expect("release");
    assert!(files(tmp.path()).contains(&"quarantine-10.244.1.1".to_string()));
    let err = open(3600).allocate(&att("c3")).expect_err("quarantined");
    assert!(matches!(err, IpamError::Quarantined { quarantined: 1, .. }), "{err:?}");
    assert!(err.to_string().starts_with("no free address left in 10.244.1.0/30: 1 released"), "{err}");
    // GC of a later process keeps the running quarantine.
    open(3600).gc(&[att("c2")].into()).expect("gc");
    assert!(files(tmp.path()).contains(&"quarantine-10.244.1.1".to_string()));
    // Garbage in a record reads as "just released": still held.
    std::fs::write(tmp.path().join("weft/quarantine-10.244.1.1"), "junk").expect("write");
    assert!(matches!(open(3600).allocate(&att("c3")), Err(IpamError::Quarantined { .. })));
    // Once the quarantine is over, the address is handed out and its record goes.
    assert_eq!(ips(&open(0).allocate(&att("c3")).expect("allocate")), [ip("10.244.1.1")]);
    assert!(!files(tmp.path()).iter().any(|f| f.starts_with("quarantine-")), "{:?}", files(tmp.path()));
}
