//! Helpers for privileged tests: throwaway network namespaces, and a real
//! control plane to run in one (`control_plane`).
//!
//! Every test builds each namespace it uses, the "host" included, and nothing
//! is ever added to the machine's own namespace. Namespaces are named
//! `wl<pid>-<tag>` so a crashed run cannot collide with the next one, and
//! are deleted on drop, also when the test fails.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub mod agent;
pub mod bpffs;
pub mod control_plane;
pub mod lab;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the privileged tests can run. Without root they are skipped
/// locally, but fail under CI (where `CI` is set), so a CI run can never
/// pass by skipping them.
pub fn have_privileges() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root && std::env::var_os("CI").is_some() {
        panic!("privileged tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN) under CI");
    }
    if !root {
        eprintln!("skipping: needs root");
    }
    root
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct TestNs {
    name: String,
}

impl TestNs {
    /// Creates `wl<pid>-<n>-<tag>` with `lo` up.
    pub fn new(tag: &str) -> TestNs {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("wl{}-{n}-{tag}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = TestNs { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec {} {argv:?}: {e}", self.name))
    }

    /// Runs a command inside the namespace and panics with its output if it fails.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        if !out.status.success() {
            panic!(
                "in {}: {argv:?} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Enables IPv4 and IPv6 forwarding, as a node does.
    pub fn enable_forwarding(&self) {
        self.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
    }

    /// One ping (IPv4 or IPv6) with a short deadline; true if answered.
    pub fn ping(&self, dst: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", "-w", "3", dst]).status.success()
    }

    /// `GET <path>` over HTTP/1.0 from inside the namespace (a socket opened
    /// on a thread there), e.g. an agent's metrics on `127.0.0.1:9959`.
    /// Returns the whole response, headers included; empty if it fails.
    pub fn http_get(&self, addr: &str, path: &str) -> String {
        use std::io::{Read, Write};
        let ns = crate::netns::NetNs::open(&self.path()).unwrap_or_else(|e| panic!("open {}: {e}", self.name));
        let get = || -> std::io::Result<String> {
            let mut c = std::net::TcpStream::connect(addr)?;
            c.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
            let mut text = String::new();
            c.read_to_string(&mut text)?;
            Ok(text)
        };
        ns.run(get).unwrap_or_else(|e| panic!("thread in {}: {e}", self.name)).unwrap_or_default()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}
