//! A bpf filesystem of a test's own, for BPF pins: mounted on a temporary
//! directory (the machine's /sys/fs/bpf is never touched, and may not even
//! be mounted), unmounted on drop with everything pinned in it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted bpffs, unmounted and removed on drop.
#[derive(Debug)]
pub struct BpfFs {
    dir: PathBuf,
}

impl BpfFs {
    /// Mounts one on `<tmp>/weft-bpffs-<pid>-<tag>`.
    pub fn new(tag: &str) -> BpfFs {
        let dir = std::env::temp_dir().join(format!("weft-bpffs-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let out = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir).output();
        let fs = BpfFs { dir };
        match out {
            Ok(o) if o.status.success() => fs,
            Ok(o) => panic!("mount bpffs on {}: {}", fs.dir.display(), String::from_utf8_lossy(&o.stderr)),
            Err(e) => panic!("run mount: {e}"),
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
