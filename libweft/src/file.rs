//! Atomic file writes, for every file weft rewrites: a reader sees the old
//! content or the new, never a partial write (temp file + rename); and the
//! bounded read of every file the plugin trusts nothing about.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A failed file operation, naming the verb and the path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done, e.g. `"rename into"`.
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Reads a regular file of at most `max` bytes. The plugin reads its
/// files on every ADD, so a hostile or broken one must fail fast and
/// clearly, never hang it or fill its memory: the open does not block (a
/// FIFO put in a file's place would wait for a writer forever), anything
/// but a regular file is refused (a FIFO, a socket, `/dev/zero`), and a
/// file larger than `max` is an error, not a huge allocation. Symlinks to
/// regular files are followed, as any reader would.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(Error::new(ErrorKind::InvalidData, format!("is {what}, not a regular file")));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(ErrorKind::InvalidData, format!("is larger than {max} bytes")));
    }
    Ok(bytes)
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError { op, path: path.to_path_buf(), source }
}

/// Creates `tmp` afresh holding `content`. An existing `tmp` is unlinked,
/// never opened: it may be a second link to a file someone else owns,
/// which truncating would corrupt. On error nothing is left behind.
pub fn write_new(tmp: &Path, content: &[u8]) -> Result<File, FileError> {
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err("remove", tmp)(e)),
        _ => {}
    }
    let mut file = OpenOptions::new().write(true).create_new(true).open(tmp).map_err(err("create", tmp))?;
    if let Err(e) = file.write_all(content) {
        let _ = std::fs::remove_file(tmp);
        return Err(err("write", tmp)(e));
    }
    Ok(file)
}

/// Replaces `path` with `content` through `tmp` (same directory). Not
/// synced: for state that does not outlive a reboot (the IPAM store).
pub fn replace(path: &Path, tmp: &Path, content: &[u8]) -> Result<(), FileError> {
    write_new(tmp, content)?;
    std::fs::rename(tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        err("rename a temp file to", path)(e)
    })
}

/// Replaces `path` with `content`, synced before the rename, unless it
/// already holds exactly that: watchers (containerd watches the CNI conf
/// dir) are not woken for nothing. Creates the directory. Returns whether
/// it wrote.
pub fn replace_if_changed(path: &Path, content: &[u8]) -> Result<bool, FileError> {
    replace_if_changed_with_mode(path, content, None)
}

/// [`replace_if_changed`], the new file getting permission bits `mode`
/// before it is renamed into place: an executable is never visible at
/// `path` without its execute bits (a runtime exec'ing it then would fail).
pub fn replace_if_changed_with_mode(path: &Path, content: &[u8], mode: Option<u32>) -> Result<bool, FileError> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err("create directory", dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let file = write_new(&tmp, content)?;
    let synced = match mode {
        Some(mode) => {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(err("chmod", &tmp))
        }
        None => Ok(()),
    }
    .and_then(|()| file.sync_all().map_err(err("sync", &tmp)));
    drop(file);
    synced.and_then(|()| std::fs::rename(&tmp, path).map_err(err("rename a temp file to", path))).inspect_err(
        |_| {
            let _ = std::fs::remove_file(&tmp);
        },
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_is_set_before_the_file_appears() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bin");
        assert!(replace_if_changed_with_mode(&path, b"#!/bin/sh\n", Some(0o755)).expect("write"));
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(replace_if_changed_with_mode(&path, b"#!/bin/sh\nexit 0\n", Some(0o700)).expect("rewrite"));
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1, "no temp file left");
    }

    #[test]
    fn replace_if_changed_writes_only_changes_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/f.json");
        assert!(replace_if_changed(&path, b"a").expect("write"));
        assert!(!replace_if_changed(&path, b"a").expect("write"), "same content is not rewritten");
        assert!(replace_if_changed(&path, b"b").expect("write"));
        assert_eq!(std::fs::read(&path).expect("read"), b"b");
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("sub")).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec!["f.json"]);
    }

    #[test]
    fn bounded_reads_refuse_what_is_not_a_small_regular_file_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").expect("write");
        assert_eq!(read_bounded(&file, 5).expect("read"), b"12345");
        let big = read_bounded(&file, 4).expect_err("over the bound");
        assert_eq!(big.to_string(), "is larger than 4 bytes");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert_eq!(read_bounded(&link, 5).expect("a symlink to a file is read"), b"12345");
        // A FIFO nobody writes to: a plain open would block forever.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        assert_eq!(read_bounded(&fifo, 5).expect_err("fifo").to_string(), "is a FIFO, not a regular file");
        assert_eq!(read_bounded(dir.path(), 5).expect_err("dir").to_string(), "is a directory, not a regular file");
        let zero = read_bounded(Path::new("/dev/zero"), 5).expect_err("device");
        assert_eq!(zero.to_string(), "is a device, not a regular file");
        let missing = read_bounded(&dir.path().join("none"), 5).expect_err("missing");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound, "callers tell a missing file apart");
    }

    #[test]
    fn write_new_unlinks_a_stale_temp_instead_of_truncating_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (owned, tmp) = (dir.path().join("owned"), dir.path().join(".tmp-1"));
        std::fs::write(&owned, b"someone's").expect("write");
        std::fs::hard_link(&owned, &tmp).expect("link");
        write_new(&tmp, b"mine").expect("write_new");
        assert_eq!(std::fs::read(&owned).expect("read"), b"someone's");
        assert_eq!(std::fs::read(&tmp).expect("read"), b"mine");
        let err = replace(&dir.path().join("no/such/dir/f"), &dir.path().join(".tmp-2"), b"x").expect_err("rename");
        assert!(err.to_string().starts_with("rename a temp file to"), "{err}");
        assert!(!dir.path().join(".tmp-2").exists(), "the temp file is removed on error");
    }
}
