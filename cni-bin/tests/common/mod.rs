//! Runs the built `weft` binary exactly as containerd does: `CNI_*`
//! variables in the environment, the network config on stdin, the result on
//! stdout. Privileged tests run it inside a "host" namespace they create.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use libweft::testutil::TestNs;
use serde_json::{Value, json};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");
pub const SUBNET_V4: &str = "10.244.1.0/24";
pub const SUBNET_V6: &str = "fd00:10:244:1::/64";
/// The "node" address of the test host, from the address plan.
pub const HOST_V4: &str = "198.51.100.1";
pub const HOST_V6: &str = "2001:db8:a::1";

/// What one plugin run printed.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub json: Value,
    pub stderr: String,
}

impl Reply {
    fn from_output(out: Output) -> Reply {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"))
        };
        Reply { ok: out.status.success(), json, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
    }

    /// The CNI error code (panics if the run succeeded).
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected an error, got {}", self.json);
        self.json["code"].as_u64().unwrap_or_else(|| panic!("error without code: {}", self.json))
    }

    pub fn expect_ok(self, what: &str) -> Reply {
        assert!(self.ok, "{what} failed: {} / stderr: {}", self.json, self.stderr);
        self
    }

    /// The addresses in an ADD result, without prefix.
    pub fn ips(&self) -> Vec<String> {
        self.json["ips"]
            .as_array()
            .unwrap_or_else(|| panic!("no ips in {}", self.json))
            .iter()
            .map(|ip| ip["address"].as_str().unwrap().split('/').next().unwrap().to_string())
            .collect()
    }
}

/// One invocation: verb, container, netns, ifname, config.
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub config: &'a Value,
}

impl Call<'_> {
    fn command(&self, host: Option<&TestNs>) -> Command {
        let mut cmd = match host {
            Some(h) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", h.name(), WEFT]);
                c
            }
            None => Command::new(WEFT),
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", self.command)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !self.container_id.is_empty() {
            cmd.env("CNI_CONTAINERID", self.container_id);
        }
        if !self.ifname.is_empty() {
            cmd.env("CNI_IFNAME", self.ifname);
        }
        if let Some(ns) = self.netns {
            cmd.env("CNI_NETNS", ns);
        }
        cmd
    }

    /// Starts the plugin and feeds stdin; the caller waits (or kills it).
    pub fn spawn(&self, host: Option<&TestNs>) -> Child {
        self.spawn_command(self.command(host))
    }

    /// [`Call::run`] with `CNI_ARGS`, as a runtime passes the pod's identity.
    pub fn run_with_args(&self, host: Option<&TestNs>, args: &str) -> Reply {
        let mut cmd = self.command(host);
        cmd.env("CNI_ARGS", args);
        finish(self.spawn_command(cmd))
    }

    fn spawn_command(&self, mut cmd: Command) -> Child {
        let mut child = cmd.spawn().expect("spawn weft");
        let mut stdin = child.stdin.take().expect("stdin");
        // The plugin may exit before reading stdin (e.g. on a bad environment).
        let _ = stdin.write_all(self.config.to_string().as_bytes());
        drop(stdin);
        child
    }

    pub fn run(&self, host: Option<&TestNs>) -> Reply {
        Reply::from_output(self.spawn(host).wait_with_output().expect("wait for weft"))
    }
}

/// Waits for a spawned plugin and decodes its reply.
pub fn finish(child: Child) -> Reply {
    Reply::from_output(child.wait_with_output().expect("wait for weft"))
}

/// A fake node: a host namespace with forwarding on and the node's addresses
/// on its loopback, plus a private IPAM directory.
pub struct Node {
    pub host: TestNs,
    pub data_dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Node {
        let host = TestNs::new("host");
        host.enable_forwarding();
        // This kernel has no dummy device: the node's addresses go on lo.
        host.exec_ok(&["ip", "addr", "add", &format!("{HOST_V4}/32"), "dev", "lo"]);
        host.exec_ok(&["ip", "addr", "add", &format!("{HOST_V6}/128"), "dev", "lo"]);
        Node { host, data_dir: tempfile::tempdir().expect("tempdir") }
    }

    /// A dual-stack config of `version` with the default subnets.
    pub fn config(&self, version: &str) -> Value {
        self.config_with(version, &[SUBNET_V4, SUBNET_V6])
    }

    /// A 1.1.0 configuration reading its subnets and MTU from a node.json
    /// (written here, in the data directory) as the agent writes it.
    pub fn config_from_node_json(&self, subnets: &[&str], mtu: u32) -> Value {
        let node_json = self.data_dir.path().join("node.json");
        let node = json!({"version": 1, "nodeName": "n1", "subnets": subnets, "mtu": mtu});
        std::fs::write(&node_json, node.to_string()).expect("write node.json");
        json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft", "nodeConfig": node_json,
            "dataDir": self.data_dir.path()})
    }

    pub fn config_with(&self, version: &str, subnets: &[&str]) -> Value {
        json!({
            "cniVersion": version,
            "name": "weft",
            "type": "weft",
            "subnets": subnets,
            "dataDir": self.data_dir.path(),
            "mtu": 1400,
            "logLevel": "debug",
            "logFile": self.data_dir.path().join("cni.log"),
        })
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.data_dir.path().join("weft")
    }

    /// Reservation files (one per held address) in the IPAM store.
    pub fn reserved(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.ipam_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    pub fn call(&self, command: &str, id: &str, pod: Option<&TestNs>, config: &Value) -> Reply {
        let netns = pod.map(|p| p.path());
        Call { command, container_id: id, netns: netns.as_deref(), ifname: "eth0", config }.run(Some(&self.host))
    }

    /// Links in the host namespace whose name starts with `weft`.
    pub fn host_veths(&self) -> Vec<String> {
        self.host
            .exec_ok(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("weft"))
            .collect()
    }
}
