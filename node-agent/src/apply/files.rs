//! Writes the plugin's files. Order matters: node.json first, then the
//! conflist. containerd reports the node's network ready as soon as a
//! conflist exists, so writing it last means no pod is sent to weft before
//! weft knows the node's subnets. Each file is replaced atomically and only
//! when its content changed.

use std::path::{Path, PathBuf};

use libweft::file::{FileError, replace_if_changed, replace_if_changed_with_mode};
use libweft::node_config::{NodeConfig, NodeConfigError};
use serde_json::Value;

use crate::config::Config;
use crate::desired::files::{conflist_path, node_config_path};

/// A file the agent could not write.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// node.json.
    #[error(transparent)]
    NodeConfig(#[from] NodeConfigError),
    /// The conflist or the plugin binary.
    #[error(transparent)]
    Write(#[from] FileError),
    /// Reading the plugin binary to install.
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Making the installed plugin executable.
    #[error("chmod {}: {source}", path.display())]
    Chmod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which files one write changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub node_config: bool,
    pub conflist: bool,
}

/// Writes node.json, then the conflist, each only if its content changed.
pub fn write(cfg: &Config, node: &NodeConfig, conflist: &Value) -> Result<Written, FilesError> {
    let node_config = node.write_if_changed(&node_config_path(cfg))?;
    let mut text = serde_json::to_vec_pretty(conflist).unwrap_or_default();
    text.push(b'\n');
    let conflist = replace_if_changed(&conflist_path(cfg), &text)?;
    Ok(Written { node_config, conflist })
}

/// Copies the plugin binary into the CNI bin dir atomically: a runtime
/// exec'ing it mid-copy sees the old file or the new one, never half of one.
pub fn install_binary(src: &Path, bin_dir: &Path) -> Result<PathBuf, FilesError> {
    let bytes = std::fs::read(src).map_err(|source| FilesError::Read { path: src.to_path_buf(), source })?;
    let dst = bin_dir.join("weft");
    // Executable before the rename: the runtime may exec the plugin the
    // instant it appears.
    if !replace_if_changed_with_mode(&dst, &bytes, Some(0o755))? {
        // Unchanged content: only repair the mode if someone changed it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
            .map_err(|source| FilesError::Chmod { path: dst.clone(), source })?;
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;
    use crate::desired::files::{conflist, node_config};

    fn cfg(dir: &Path) -> Config {
        let mut c = Config::example(Backend::Auto);
        c.run_dir = dir.join("run");
        c.cni_conf_dir = dir.join("net.d");
        c.cni_bin_dir = dir.join("bin");
        c
    }

    #[test]
    fn writes_node_config_then_conflist_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let node = node_config(&c, "n1", &["10.244.1.0/24".parse().unwrap()], 1450);
        let list = conflist(&c, false);
        assert_eq!(write(&c, &node, &list).unwrap(), Written { node_config: true, conflist: true });
        assert_eq!(write(&c, &node, &list).unwrap(), Written::default(), "unchanged content is not rewritten");
        let on_disk: Value = serde_json::from_slice(&std::fs::read(conflist_path(&c)).unwrap()).unwrap();
        assert_eq!(on_disk, list);
        assert_eq!(NodeConfig::load(&node_config_path(&c)).unwrap(), node);
        let smaller = node_config(&c, "n1", &["10.244.1.0/24".parse().unwrap()], 1400);
        assert_eq!(write(&c, &smaller, &list).unwrap(), Written { node_config: true, conflist: false });
    }

    #[test]
    fn installs_the_binary_executable() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("weft-src");
        std::fs::write(&src, b"#!/bin/true\n").unwrap();
        let dst = install_binary(&src, &dir.path().join("bin")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777, 0o755);
        let err = install_binary(&dir.path().join("missing"), &dir.path().join("bin")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
