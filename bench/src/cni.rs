//! cni-bench: weft's CNI plugin against the reference `ptp` + `host-local`
//! plugins, measured in the same run on the same kernel.
//!
//! Both plugins are exec'd exactly as containerd does (`CNI_*` variables,
//! config on stdin), inside a "node" namespace this program creates, for
//! pods in namespaces it creates; both wire dual-stack pods. Rounds
//! alternate between the plugins so drift hits both alike. Reported:
//! median and p99 latency of ADD and DEL, and the throughput of 16
//! concurrent ADDs. Both keep IPAM state on tmpfs, as on a real node.
//! Timings are printed, never judged.
//!
//! With `--ipv4` both wire IPv4 only: the reference `ptp` waits for IPv6
//! duplicate address detection to finish (over a second per pod), which
//! dominates the dual-stack comparison; IPv4 shows the rest of the cost.
//!
//! With `--existing N`, each plugin has N pods of its own on the node
//! (added before, removed after each of its rounds) while it is measured.
//!
//!   cni-bench WEFT_BINARY [--ipv4] [--pods N] [--rounds R] [--existing N] [--json]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use libweft::testutil::TestNs;
use serde_json::{Value, json};

use weft_bench::results::{CniRun, CniSamples, CniSummary};
use weft_bench::stats::percentile;

const REF_DIR: &str = "/usr/lib/cni";
const CONCURRENCY: usize = 16;

/// cni-bench's command line.
#[derive(Parser)]
#[command(name = "cni-bench", about = "Measures weft's CNI plugin against the reference ptp + host-local")]
struct Args {
    /// The weft CNI plugin binary.
    #[arg(value_name = "WEFT_BINARY")]
    weft: PathBuf,
    /// Wire IPv4 only (the reference ptp waits for IPv6 duplicate address detection).
    #[arg(long)]
    ipv4: bool,
    /// Pods added and deleted per round.
    #[arg(long, value_name = "N", default_value_t = 40)]
    pods: usize,
    /// Rounds per plugin, alternating between them.
    #[arg(long, value_name = "R", default_value_t = 3)]
    rounds: usize,
    /// Pods of each plugin's own on the node while it is measured.
    #[arg(long, value_name = "N", default_value_t = 0)]
    existing: usize,
    /// Print the results as JSON rather than text.
    #[arg(long)]
    json: bool,
}

struct Plugin {
    name: &'static str,
    binary: PathBuf,
    config: Value,
    ipam_dir: PathBuf,
}

/// One plugin invocation; returns its wall-clock time.
fn invoke(p: &Plugin, node: &std::fs::File, cmd: &str, id: &str, netns: &Path) -> std::process::Child {
    let node_fd = node.as_raw_fd();
    let mut c = Command::new(&p.binary);
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REF_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setns(2) is async-signal-safe; the fd was opened before fork.
    // The child (and the host-local it execs) runs in the node namespace
    // without an extra `ip netns exec` process per sample.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(node_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", p.binary.display()));
    let _ = child.stdin.take().expect("stdin").write_all(p.config.to_string().as_bytes());
    child
}

fn finish(p: &Plugin, cmd: &str, child: std::process::Child) {
    let out = child.wait_with_output().expect("wait");
    if !out.status.success() {
        eprintln!(
            "{} {cmd} failed: {}{}",
            p.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
}

fn timed(p: &Plugin, node: &std::fs::File, cmd: &str, id: &str, netns: &Path) -> Duration {
    let start = Instant::now();
    let child = invoke(p, node, cmd, id, netns);
    finish(p, cmd, child);
    start.elapsed()
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
    add_per_sec: Vec<f64>,
}

fn main() {
    let Args { weft, ipv4: ipv4_only, pods, rounds, existing, json: as_json } = Args::parse();
    // /22s: room for the existing pods next to the measured ones.
    if existing + pods.max(CONCURRENCY) > 1000 {
        eprintln!("cni-bench: --existing plus --pods must stay under 1000 (one /22 per plugin)");
        std::process::exit(2);
    }
    let family = if ipv4_only { "IPv4 only" } else { "dual-stack" };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("cni-bench: needs root (it creates network namespaces)");
        std::process::exit(1);
    }

    let work = tempfile::tempdir().expect("tempdir");
    private_tmpfs(work.path());
    let node = TestNs::new("bench-node");
    node.enable_forwarding();
    let node_file = std::fs::File::open(node.path()).expect("open node netns");
    let plugins = plugins(weft, ipv4_only, work.path());
    // Pod namespaces are made up front: creating them is not part of the timing.
    let per_round = pods.max(CONCURRENCY);
    let pod_ns: Vec<TestNs> = (0..per_round).map(|i| TestNs::new(&format!("bp{i}"))).collect();
    let old_ns: Vec<TestNs> = (0..existing).map(|i| TestNs::new(&format!("bo{i}"))).collect();
    let mut samples: [Samples; 2] = Default::default();

    // Warm-up (page cache, first exec), then interleaved rounds.
    for (p, _) in plugins.iter().zip(0..) {
        timed(p, &node_file, "ADD", "warmup", &pod_ns[0].path());
        timed(p, &node_file, "DEL", "warmup", &pod_ns[0].path());
    }
    for round in 0..rounds {
        for (p, s) in plugins.iter().zip(&mut samples) {
            measure_round(p, &node_file, round, pods, &pod_ns, &old_ns, s);
        }
    }
    for p in &plugins {
        warn_unreleased(p);
    }

    // Recorded in the order measured, before the summary sorts them.
    let recorded = samples.iter().zip(&plugins).map(|(s, p)| s.record(p.name)).collect();
    let run = CniRun {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        family: family.into(),
        pods,
        rounds,
        existing,
        results: summary(&mut samples),
        samples: recorded,
    };
    if as_json {
        println!("{}", serde_json::to_string(&run).expect("cni-bench results as JSON"));
    } else {
        print_text(&run);
    }
}

/// IPAM state lives on tmpfs on a real node (/run); give both plugins a
/// tmpfs too, in a mount namespace of our own that vanishes with us.
fn private_tmpfs(dir: &Path) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount namespace");
    let none: Option<&str> = None;
    nix::mount::mount(none, "/", none, nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE, none)
        .expect("make mounts private");
    nix::mount::mount(Some("tmpfs"), dir, Some("tmpfs"), nix::mount::MsFlags::empty(), none).expect("mount tmpfs");
}

/// weft and the reference, each keeping its IPAM state under `work`.
fn plugins(weft: PathBuf, ipv4_only: bool, work: &Path) -> [Plugin; 2] {
    let (weft_subnets, ref_ranges, ref_routes) = if ipv4_only {
        (json!(["10.244.4.0/22"]), json!([[{"subnet": "10.244.8.0/22"}]]), json!([{"dst": "0.0.0.0/0"}]))
    } else {
        (
            json!(["10.244.4.0/22", "fd00:10:244:1::/64"]),
            json!([[{"subnet": "10.244.8.0/22"}], [{"subnet": "fd00:10:244:2::/64"}]]),
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]),
        )
    };
    [
        Plugin {
            name: "weft",
            binary: weft,
            config: json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft", "mtu": 1500,
                "subnets": weft_subnets, "dataDir": work.join("weft")}),
            ipam_dir: work.join("weft/weft"),
        },
        Plugin {
            name: "ptp+host-local",
            binary: Path::new(REF_DIR).join("ptp"),
            config: json!({"cniVersion": "1.0.0", "name": "ref", "type": "ptp", "ipMasq": false, "mtu": 1500,
                "ipam": {"type": "host-local", "dataDir": work.join("ref"),
                    "ranges": ref_ranges, "routes": ref_routes}}),
            ipam_dir: work.join("ref/ref"),
        },
    ]
}

/// One round of plugin `p`: its `old_ns.len()` existing pods added, then
/// `pods` sequential ADDs and DELs, then 16 concurrent ADDs, all timed
/// into `s`; everything removed again.
fn measure_round(
    p: &Plugin,
    node: &std::fs::File,
    round: usize,
    pods: usize,
    pod_ns: &[TestNs],
    old_ns: &[TestNs],
    s: &mut Samples,
) {
    let old: Vec<String> = (0..old_ns.len()).map(|k| format!("r{round}-old{k}")).collect();
    for (k, id) in old.iter().enumerate() {
        timed(p, node, "ADD", id, &old_ns[k].path());
    }
    let ids: Vec<String> = (0..pods).map(|k| format!("r{round}-seq{k}")).collect();
    for (k, id) in ids.iter().enumerate() {
        s.add.push(timed(p, node, "ADD", id, &pod_ns[k].path()));
    }
    for (k, id) in ids.iter().enumerate() {
        s.del.push(timed(p, node, "DEL", id, &pod_ns[k].path()));
    }
    // 16 ADDs at once; the time until the last finishes.
    let ids: Vec<String> = (0..CONCURRENCY).map(|k| format!("r{round}-par{k}")).collect();
    let start = Instant::now();
    let children: Vec<_> =
        ids.iter().enumerate().map(|(k, id)| invoke(p, node, "ADD", id, &pod_ns[k].path())).collect();
    for c in children {
        finish(p, "ADD", c);
    }
    s.add_per_sec.push(CONCURRENCY as f64 / start.elapsed().as_secs_f64());
    for (k, id) in ids.iter().enumerate() {
        timed(p, node, "DEL", id, &pod_ns[k].path());
    }
    for (k, id) in old.iter().enumerate() {
        timed(p, node, "DEL", id, &old_ns[k].path());
    }
}

/// Warns if a plugin left addresses allocated after every pod was deleted.
fn warn_unreleased(p: &Plugin) {
    let left = std::fs::read_dir(&p.ipam_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().parse::<std::net::IpAddr>().is_ok())
                .count()
        })
        .unwrap_or(0);
    if left > 0 {
        eprintln!("warning: {} left {left} addresses allocated", p.name);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Samples {
    /// The samples as written to the JSON result.
    fn record(&self, plugin: &str) -> CniSamples {
        CniSamples {
            plugin: plugin.into(),
            add_ms: self.add.iter().map(|d| ms(*d)).collect(),
            del_ms: self.del.iter().map(|d| ms(*d)).collect(),
            adds_per_sec: self.add_per_sec.clone(),
        }
    }

    /// Sorts the samples; returns ADD and DEL median and p99 (ms) and the median ADD/s.
    fn stats(&mut self) -> [f64; 5] {
        self.add.sort();
        self.del.sort();
        self.add_per_sec.sort_by(|a, b| a.total_cmp(b));
        [
            ms(percentile(&self.add, 0.5)),
            ms(percentile(&self.add, 0.99)),
            ms(percentile(&self.del, 0.5)),
            ms(percentile(&self.del, 0.99)),
            self.add_per_sec[self.add_per_sec.len() / 2],
        ]
    }
}

/// weft against the reference, per metric, with the design's targets.
fn summary([w, r]: &mut [Samples; 2]) -> Vec<CniSummary> {
    let metrics = [
        ("ADD median (ms)", "<= 0.3x"),
        ("ADD p99 (ms)", ""),
        ("DEL median (ms)", "<= 1.0x"),
        ("DEL p99 (ms)", ""),
        ("16 concurrent ADDs (ADD/s)", ">= 3x"),
    ];
    metrics
        .iter()
        .zip(w.stats().into_iter().zip(r.stats()))
        .map(|(&(metric, target), (weft, reference))| {
            let ratio = weft / reference;
            CniSummary {
                metric: metric.into(),
                weft,
                reference,
                ratio: ratio.is_finite().then_some(ratio),
                target: target.into(),
            }
        })
        .collect()
}

fn print_text(run: &CniRun) {
    let CniRun { kernel, cpus, family, pods, rounds, .. } = run;
    println!("weft vs ptp+host-local (Debian containernetworking-plugins), {family}, same run");
    println!(
        "kernel {kernel}, {cpus} CPUs, {pods} sequential pods x {rounds} rounds, {CONCURRENCY} concurrent ADDs x {rounds}\n"
    );
    println!("{:<28} {:>10} {:>12} {:>8}  target", "metric", "weft", "reference", "ratio");
    for r in &run.results {
        let ratio = r.weft / r.reference;
        println!("{:<28} {:>10.2} {:>12.2} {ratio:>7.3}x  {}", r.metric, r.weft, r.reference, r.target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn bench_run_command_line_parses() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "cni-bench",
            "/bin/weft",
            "--ipv4",
            "--pods",
            "4",
            "--rounds",
            "1",
            "--existing",
            "10",
            "--json",
        ])
        .unwrap();
        assert_eq!(
            (a.weft, a.ipv4, a.pods, a.rounds, a.existing, a.json),
            (PathBuf::from("/bin/weft"), true, 4, 1, 10, true)
        );
        assert!(Args::try_parse_from(["cni-bench", "--pods", "4"]).is_err(), "the plugin binary is required");
    }
}
