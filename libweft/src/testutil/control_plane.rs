//! A real control plane for privileged tests and benchmarks: etcd and
//! kube-apiserver (built by `e2e/build-tools`, cached outside the clone) in
//! a namespace the caller made and wired. Processes are killed by PID on
//! drop. Like the rest of this module it panics on failure: it is test code.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestNs;

/// The bearer token of the API server's only user (system:masters).
pub const TOKEN: &str = "weft-test-token";

/// Where the Kubernetes binaries are: `$WEFT_K8S_BIN`, else the e2e cache.
pub fn k8s_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("WEFT_K8S_BIN").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("WEFT_CACHE").unwrap_or_else(|_| "/var/cache/weft".into())).join("k8s-v1.36.3/bin")
    });
    ["etcd", "kube-apiserver", "kubectl"].iter().all(|b| dir.join(b).exists()).then_some(dir)
}

/// A running process, killed (by PID) on drop.
pub struct Proc {
    /// What it is (names the log).
    pub name: String,
    child: Option<Child>,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `argv` in `ns`, its output in `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, ns: &TestNs, argv: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args(argv)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc { name: name.into(), child: Some(child), log }
    }

    /// SIGTERM, then wait (SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The PID (of `ip netns exec`, which execs the program: the same process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The last 30 lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// etcd + kube-apiserver in their own namespace.
pub struct ControlPlane {
    /// The namespace they run in.
    pub ns: TestNs,
    /// Certificates, etcd's data, logs and the kubeconfig.
    pub dir: tempfile::TempDir,
    /// Where the Kubernetes binaries are.
    pub bin: PathBuf,
    /// The API server's address (on an interface of `ns`).
    pub ip: String,
    etcd: Proc,
    apiserver: Proc,
    /// Extra kube-apiserver flags, kept for restarts.
    apiserver_flags: Vec<String>,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver in `ns`, which holds `ip` on an
    /// interface its clients reach, and waits until the API server is ready.
    pub fn start(ns: TestNs, ip: &str, bin: &Path) -> ControlPlane {
        Self::start_with_flags(ns, ip, bin, &[])
    }

    /// [`ControlPlane::start`] with extra kube-apiserver flags (such as
    /// `--feature-gates=WatchList=false`, an older server's default).
    pub fn start_with_flags(ns: TestNs, ip: &str, bin: &Path, apiserver_flags: &[&str]) -> ControlPlane {
        let apiserver_flags: Vec<String> = apiserver_flags.iter().map(|f| f.to_string()).collect();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sa_key = d.join("sa.key");
        let sa_pub = d.join("sa.pub");
        run(Command::new("openssl").args(["genrsa", "-out"]).arg(&sa_key).arg("2048"));
        run(Command::new("openssl").args(["rsa", "-pubout", "-in"]).arg(&sa_key).arg("-out").arg(&sa_pub));
        std::fs::write(d.join("tokens.csv"), format!("{TOKEN},admin,admin,system:masters\n")).unwrap();
        let s = |p: &Path| p.display().to_string();
        let etcd = Proc::spawn(
            "etcd",
            &ns,
            &[
                &s(&bin.join("etcd")),
                "--data-dir",
                &s(&d.join("etcd")),
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "default=http://127.0.0.1:2380",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            &[],
            d,
        );
        let apiserver = Self::spawn_apiserver(&ns, ip, bin, d, &apiserver_flags);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://{ip}:6443\n    insecure-skip-tls-verify: true\nusers:\n- name: t\n  user:\n    token: {TOKEN}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t}}\ncurrent-context: t\n"
        );
        std::fs::write(d.join("kubeconfig"), kubeconfig).unwrap();
        let cp = ControlPlane { ns, dir, bin: bin.to_path_buf(), ip: ip.into(), etcd, apiserver, apiserver_flags };
        cp.wait_ready();
        cp
    }

    fn spawn_apiserver(ns: &TestNs, ip: &str, bin: &Path, d: &Path, flags: &[String]) -> Proc {
        let s = |p: &Path| p.display().to_string();
        let base: &[&str] = &[
            &s(&bin.join("kube-apiserver")),
            "--etcd-servers",
            "http://127.0.0.1:2379",
            "--bind-address",
            "0.0.0.0",
            "--secure-port",
            "6443",
            "--advertise-address",
            ip,
            "--cert-dir",
            &s(&d.join("certs")),
            "--token-auth-file",
            &s(&d.join("tokens.csv")),
            "--authorization-mode",
            "RBAC",
            "--service-account-issuer",
            "https://kubernetes.default.svc",
            "--service-account-key-file",
            &s(&d.join("sa.pub")),
            "--service-account-signing-key-file",
            &s(&d.join("sa.key")),
            "--service-cluster-ip-range",
            "10.96.0.0/16",
            "--enable-priority-and-fairness=false",
            "--v=1",
        ];
        let args: Vec<&str> = base.iter().copied().chain(flags.iter().map(String::as_str)).collect();
        Proc::spawn("kube-apiserver", ns, &args, &[], d)
    }

    /// Stops kube-apiserver (agents see connection errors).
    pub fn apiserver_stop_for_test(&mut self) {
        self.apiserver.stop();
    }

    /// Starts kube-apiserver again with the same arguments and waits for it.
    pub fn apiserver_restart_for_test(&mut self) {
        self.apiserver = Self::spawn_apiserver(&self.ns, &self.ip, &self.bin, self.dir.path(), &self.apiserver_flags);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !self.kubectl(&["get", "--raw", "/readyz"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 90 s:\n{}\netcd:\n{}",
                self.apiserver.log_tail(),
                self.etcd.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A kubeconfig for the API server's admin (a bearer token, TLS unverified).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Runs kubectl against this API server.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs kubectl and panics with its stderr if it fails; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl with `stdin` as its input; panics if it fails.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Registers a Node as kubelet and kube-controller-manager would: name,
    /// podCIDRs, InternalIPs.
    pub fn create_node(&self, name: &str, pod_cidrs: &[&str], ips: &[&str]) {
        let node = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs}});
        self.kubectl_stdin(&["create", "-f", "-"], &node.to_string());
        let addresses: Vec<_> = ips.iter().map(|ip| serde_json::json!({"type": "InternalIP", "address": ip})).collect();
        let patch = serde_json::json!({"status": {"addresses": addresses}}).to_string();
        self.kubectl_ok(&["patch", "node", name, "--subresource=status", "--type=merge", "-p", &patch]);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Polls `f` every 100 ms until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
