//! Apply the BPF fast path (`dataplane: bpf`): its programs loaded with
//! their maps pinned in `bpfPinDir`, weft's filter at tc ingress of every
//! link `desired::fastpath` names and of no other, the pod map equal to the
//! desired one. Conntrack's TCP window tracking must be liberal on the node
//! (`net.netfilter.nf_conntrack_tcp_be_liberal=1`): netfilter no longer sees
//! the middle of a fast-pathed flow, so the FIN that ends it must not be
//! judged out of window. The agent sets it when it can (as root outside a
//! container); where /proc/sys is read-only, as in the chart's pod, it
//! says so once, and the node's own sysctl configuration must set it.
//!
//! Like weft's other kernel objects: a filter found missing, or running
//! another program than this agent's, is attached again (drift); a restart
//! loads the programs again and replaces each filter in place, and the
//! pinned pod map keeps its entries meanwhile, so flows keep their path;
//! [`remove`] (`weft-agent cleanup`, or `dataplane: nftables`) takes every
//! filter and pin away.
//!
//! The tc calls act in the calling thread's network namespace: the agent's
//! own, the node's.

use std::path::Path;

use weft_fastpath::{Fastpath, FastpathError, Hook};

use crate::desired::fastpath::DesiredFastpath;

const BE_LIBERAL: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";

/// The fast path's failures.
#[derive(Debug, thiserror::Error)]
pub enum FastpathApplyError {
    #[error("{0}")]
    Fastpath(#[from] FastpathError),
    #[error("list links and pod routes: {0}")]
    Observe(#[source] libweft::netlink::NetlinkError),
}

/// The loaded programs.
#[derive(Debug)]
pub struct FastpathOutput {
    fastpath: Fastpath,
    pod_program: u32,
    uplink_program: u32,
}

/// What one sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FastpathChanges {
    pub attached: usize,
    pub detached: usize,
    pub pods: usize,
}

impl FastpathChanges {
    pub fn total(&self) -> usize {
        self.attached + self.detached + self.pods
    }
}

impl FastpathOutput {
    /// Loads the programs, reusing the maps pinned in `pin_dir`.
    pub fn load(pin_dir: &Path) -> Result<FastpathOutput, FastpathApplyError> {
        let fastpath = Fastpath::load(pin_dir)?;
        if let Err(e) = set_be_liberal() {
            tracing::warn!(
                "BPF fast path: cannot set {BE_LIBERAL} to 1 ({e}); set net.netfilter.nf_conntrack_tcp_be_liberal=1 \
                 on the node, or conntrack may judge the end of a fast-pathed TCP flow out of window"
            );
        }
        Ok(FastpathOutput {
            pod_program: fastpath.program_id(Hook::Pod)?,
            uplink_program: fastpath.program_id(Hook::Uplink)?,
            fastpath,
        })
    }

    fn program(&self, hook: Hook) -> u32 {
        match hook {
            Hook::Pod => self.pod_program,
            Hook::Uplink => self.uplink_program,
        }
    }

    /// Makes the kernel match `want`. The pod map is written before the
    /// filters that read it; stale entries go after. `check_all`: also
    /// look for weft's filter on every link it should not be on (start and
    /// resync).
    pub fn sync(&self, want: &DesiredFastpath, check_all: bool) -> Result<FastpathChanges, FastpathApplyError> {
        let mut changes = FastpathChanges::default();
        let have = self.fastpath.pods()?;
        for (veth, addr) in want.pods.difference(&have) {
            self.fastpath.insert_pod(*veth, *addr)?;
            changes.pods += 1;
        }
        for (&ifindex, &hook) in &want.attach {
            if weft_fastpath::attached(ifindex)? != Some(self.program(hook)) {
                self.fastpath.attach(ifindex, hook)?;
                changes.attached += 1;
            }
        }
        for (veth, addr) in have.difference(&want.pods) {
            self.fastpath.remove_pod(*veth, *addr)?;
            changes.pods += 1;
        }
        if check_all {
            for &ifindex in &want.detach {
                if weft_fastpath::attached(ifindex)?.is_some() {
                    weft_fastpath::detach(ifindex)?;
                    changes.detached += 1;
                }
            }
        }
        Ok(changes)
    }

    /// The program's packet counters.
    pub fn stats(&self) -> Result<weft_fastpath::Stats, FastpathError> {
        self.fastpath.stats()
    }
}

/// Removes weft's filter from every link in `links` and the pins in
/// `pin_dir`; returns how many filters it removed. Nothing there is fine.
pub fn remove(links: impl IntoIterator<Item = u32>, pin_dir: &Path) -> Result<usize, FastpathError> {
    let mut removed = 0;
    for ifindex in links {
        if weft_fastpath::attached(ifindex)?.is_some() {
            weft_fastpath::detach(ifindex)?;
            removed += 1;
        }
    }
    weft_fastpath::remove_pins(pin_dir)?;
    Ok(removed)
}

fn set_be_liberal() -> std::io::Result<()> {
    if std::fs::read_to_string(BE_LIBERAL).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(BE_LIBERAL, "1")
}
