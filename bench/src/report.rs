//! bench-report: turns the JSON that `bench/run` collected (net-bench,
//! agent-bench at several sizes, cni-bench at several pod counts) into
//! `report.md` and PNG figures. The font is DejaVu Sans from Debian's
//! `fonts-dejavu-core`, loaded from its file and registered with plotters,
//! so no system font lookup decides how a figure looks. Every result is
//! read as its type in `weft_bench::results`.
//!
//!   bench-report DATA_DIR OUT_DIR

mod report_net;
mod report_paired;
mod report_plot;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use plotters::prelude::FontStyle;
use serde::de::DeserializeOwned;
use weft_bench::results::{
    AgentRun, CniRun, CniSamples, NetRun, Pass, PodStartup, PolicyRun, RunMeta, SlowestPass, metric_value,
};
use weft_bench::stats;

use report_net::{net_section, policy_dataplane};
use report_plot::{FONT, Fallible, XySeries, figure, fmt_spread, spread, xy_panel};

/// A benchmark's result file read as its type: one that is there but does
/// not fit the schema fails the report rather than leaving figures out.
fn read_typed<T: DeserializeOwned>(path: &Path) -> Fallible<T> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The result file at `path` if the run has one.
fn read_if_there<T: DeserializeOwned>(path: &Path) -> Fallible<Option<T>> {
    if path.exists() { read_typed(path).map(Some) } else { Ok(None) }
}

/// Every result file in `data` named `<prefix>*.json`.
fn read_all<T: DeserializeOwned>(data: &Path, prefix: &str) -> Fallible<Vec<T>> {
    std::fs::read_dir(data)
        .map_err(|e| format!("read {}: {e}", data.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json")))
        .map(|e| read_typed(&e.path()))
        .collect()
}

/// The `q` quantile of sample milliseconds, by nearest rank.
fn percentile_ms(ms: &[f64], q: f64) -> f64 {
    let mut v: Vec<Duration> = ms.iter().map(|m| Duration::from_secs_f64(m.max(0.0) / 1000.0)).collect();
    v.sort();
    stats::percentile(&v, q).as_secs_f64() * 1000.0
}

fn agent_section(data: &Path, out: &Path, md: &mut String) -> Fallible<()> {
    let mut runs: Vec<AgentRun> = read_all(data, "agent-")?;
    runs.sort_by_key(|r| r.nodes);
    if runs.is_empty() {
        let _ = writeln!(md, "No agent-bench results in this run.\n");
        return Ok(());
    }
    agent_figure(&runs, out, md)?;
    agent_table(&runs, md);
    if let Some(big) = runs.last() {
        pass_costs(big, md);
        cold_profile(big, md);
    }
    Ok(())
}

fn agent_figure(runs: &[AgentRun], out: &Path, md: &mut String) -> Fallible<()> {
    let x = |r: &AgentRun| r.nodes as f64;
    let adds = runs[0].adds;
    let name = "agent-scaling.png";
    let caption = format!(
        "weft-agent (vxlan backend) against a real kube-apiserver holding N Nodes (no kubelets); one run per size. RSS: peak (VmHWM). Cold start: agent start to every peer route in the kernel\n(netlink listener), next to `ip -batch` writing the same state. Per-event: {adds} single-Node creations, API request to route in the kernel; points p50 and p99, bar min to max."
    );
    let series =
        |value: fn(&AgentRun) -> f64| -> Vec<(f64, Vec<f64>)> { runs.iter().map(|r| (x(r), vec![value(r)])).collect() };
    figure(&out.join(name), (1500, 560), 1, 3, &caption, |p| {
        let rss = series(|r| r.peak_rss_kib as f64 / 1024.0);
        xy_panel(&p[0], "agent peak RSS", "Nodes", "MiB", true, &[("weft-agent".into(), rss)])?;
        let cold = series(|r| r.programmed_ms / 1000.0);
        let floor = series(|r| r.floor_ms / 1000.0);
        xy_panel(
            &p[1],
            "cold start to all programmed",
            "Nodes",
            "s",
            true,
            &[("weft-agent".into(), cold), ("ip -batch (floor)".into(), floor)],
        )?;
        let p50 = series(|r| percentile_ms(&r.add_ms, 0.5));
        let p99: Vec<(f64, Vec<f64>)> = runs
            .iter()
            .map(|r| (x(r), r.add_ms.iter().copied().chain([percentile_ms(&r.add_ms, 0.99)]).collect()))
            .collect();
        xy_panel(
            &p[2],
            "Node added -> route programmed",
            "Nodes",
            "ms",
            true,
            &[("p50".into(), p50), ("p99 (bar: min-max)".into(), p99)],
        )?;
        Ok(())
    })?;
    let _ = writeln!(md, "![{name}](report/{name})\n\n*{}*\n", caption.replace('\n', " "));
    Ok(())
}

fn agent_table(runs: &[AgentRun], md: &mut String) {
    let _ = writeln!(
        md,
        "| Nodes | Nodes created in (s) | cold start (ms) | ip -batch floor (ms) | add p50 / p99 (ms) | delete p50 / p99 (ms) | peak RSS (MiB) | idle CPU (% of a core) |\n|---|---|---|---|---|---|---|---|"
    );
    for r in runs {
        let result = |m: &str| metric_value(&r.results, m).unwrap_or(0.0);
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.0} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} | {:.2} |",
            r.nodes,
            r.create_nodes_seconds,
            r.programmed_ms,
            r.floor_ms,
            result("Node added -> route in kernel, p50"),
            result("Node added -> route in kernel, p99"),
            result("Node deleted -> route gone, p50"),
            result("Node deleted -> route gone, p99"),
            r.peak_rss_kib as f64 / 1024.0,
            result("idle CPU"),
        );
    }
}

/// `1234 ms in all — observe 10 ms (1%), ...`: a pass by stage.
fn pass_breakdown(p: &Pass) -> String {
    let us = |k: &str| p.stage_us(k) as f64 / 1000.0;
    let stages = ["observe_us", "compute_us", "publish_us", "kernel_us", "nftables_us", "files_us"];
    let total: f64 = stages.iter().map(|s| us(s)).sum();
    let parts: Vec<String> = stages
        .iter()
        .map(|s| format!("{} {:.0} ms ({:.0}%)", s.trim_end_matches("_us"), us(s), us(s) / total.max(1e-9) * 100.0))
        .collect();
    format!("{total:.0} ms in all — {}", parts.join(", "))
}

/// Where the largest run's passes spent their time.
fn pass_costs(big: &AgentRun, md: &mut String) {
    let Some(sp) = &big.slowest_pass else { return };
    let (slowest, summary) = match sp {
        SlowestPass::Summary(s) => (&s.slowest, Some(s)),
        SlowestPass::Alone(p) => (p, None),
    };
    let _ = writeln!(
        md,
        "\n**Where the cost goes at {} Nodes** (the agent's own timing of each reconcile pass, from its debug log). The slowest pass, the cold one: {}.{} The cold start beyond its first pass is the initial LIST of all Nodes and the watch start.\n",
        big.nodes,
        pass_breakdown(slowest),
        summary.map_or(String::new(), |s| format!(
            " The median pass ({} passes, mostly one Node change each): {}.",
            s.passes,
            pass_breakdown(&s.median)
        ))
    );
    if let Some(by) = summary.map(|s| &s.by_wakeup).filter(|m| !m.is_empty()) {
        let parts: Vec<String> = by
            .iter()
            .map(|(wakeup, v)| {
                let (n, ms) = (v.passes as f64, v.total_us as f64 / 1000.0);
                format!("{wakeup}: {n:.0} passes, mean {:.1} ms", ms / n.max(1.0))
            })
            .collect();
        let _ = writeln!(md, "Every pass of that run by what woke it: {}.\n", parts.join("; "));
    }
}

/// The largest run's profile of its cold start (`agent-bench --profile`).
fn cold_profile(big: &AgentRun, md: &mut String) {
    let Some(profile) = &big.cold_profile else { return };
    let _ = writeln!(
        md,
        "**CPU profile of the cold start at {} Nodes** (`perf record -F 999` on the agent from its start to the end of its first pass; self time, no call graphs). The kernel's share, on the agent's behalf: {:.0}%.\n\n| share | where | function |\n|---:|---|---|",
        big.nodes, profile.kernel_percent
    );
    for f in &profile.top {
        let _ = writeln!(
            md,
            "| {:.1}% | {} | `{}` |",
            f.percent,
            if f.kernel { "kernel" } else { "weft-agent" },
            f.symbol.replace('|', "\\|")
        );
    }
    md.push('\n');
}

fn cni_section(data: &Path, out: &Path, md: &mut String) -> Fallible<()> {
    let mut runs: Vec<CniRun> = read_all(data, "cni-")?;
    runs.sort_by_key(|r| r.existing);
    let Some(first) = runs.first() else {
        let _ = writeln!(md, "No cni-bench results in this run.\n");
        return Ok(());
    };
    let (pods, rounds, family) = (first.pods, first.rounds, first.family.clone());
    let samples = |r: &CniRun, plugin: &str, key: fn(&CniSamples) -> &Vec<f64>| {
        r.samples_of(plugin).map(|s| key(s).clone()).unwrap_or_default()
    };
    let name = "cni-add-vs-pods.png";
    let caption = format!(
        "CNI ADD latency, exec'd as containerd does, against the pods the plugin already has on the node; {pods} sequential ADDs x {rounds} rounds per point, {family}.\nPoint: median; bar: min to max. Reference: Debian's ptp + host-local, same run, rounds alternating."
    );
    figure(&out.join(name), (1100, 620), 1, 1, &caption, |p| {
        let series: Vec<XySeries> = ["weft", "ptp+host-local"]
            .iter()
            .map(|pl| {
                (pl.to_string(), runs.iter().map(|r| (r.existing as f64, samples(r, pl, |s| &s.add_ms))).collect())
            })
            .collect();
        xy_panel(&p[0], "ADD latency vs pods already on the node", "pods already on the node", "ms", false, &series)
    })?;
    let _ = writeln!(md, "![{name}](report/{name})\n\n*{}*\n", caption.replace('\n', " "));
    let _ = writeln!(
        md,
        "| pods on node | weft ADD ms | ptp ADD ms | weft DEL ms | ptp DEL ms | 16 concurrent ADDs/s weft | ptp |\n|---|---|---|---|---|---|---|"
    );
    for r in &runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.existing,
            fmt_spread(&samples(r, "weft", |s| &s.add_ms), 1),
            fmt_spread(&samples(r, "ptp+host-local", |s| &s.add_ms), 1),
            fmt_spread(&samples(r, "weft", |s| &s.del_ms), 1),
            fmt_spread(&samples(r, "ptp+host-local", |s| &s.del_ms), 1),
            fmt_spread(&samples(r, "weft", |s| &s.adds_per_sec), 0),
            fmt_spread(&samples(r, "ptp+host-local", |s| &s.adds_per_sec), 0),
        );
    }
    let _ = writeln!(md);
    Ok(())
}

/// creation-to-Ready through kubelet, weft against ptp + host-local
/// (bench/pod-startup.sh's pods.json).
fn pods_section(v: Option<&PodStartup>, md: &mut String) {
    let Some(v) = v else {
        let _ =
            writeln!(md, "No bench/pod-startup.sh results in this run (it needs the local cluster, e2e/cluster).\n");
        return;
    };
    let _ = writeln!(
        md,
        "On the local cluster (e2e/cluster, two workers, IPv4), {} bare pods (the pause image, already on the nodes) created in one `kubectl create` per round, {} rounds per CNI, alternating weft and `ptp` + `host-local` (a conflist sorting before weft's on every worker, the same chained `portmap`). Creation to Ready per pod, both stamped by one watch as its events arrive. The CNI share: containerd's `sandbox_create_network` (network namespace + CNI ADD) over kubelet's `run_podsandbox`, summed over each CNI's rounds. Method: bench/pod-startup.sh.\n",
        v.pods, v.rounds
    );
    let _ = writeln!(
        md,
        "| CNI | creation → Ready p50 | p99 | min–max | network setup per sandbox (mean) | share of RunPodSandbox |\n|---|---:|---:|---:|---:|---:|"
    );
    let mut p = std::collections::BTreeMap::new();
    for cni in ["weft", "ptp"] {
        let c = v.cnis.get(cni).cloned().unwrap_or_default();
        let q = |x: f64| percentile_ms(&c.ready_ms, x);
        let t = |k: &str| c.timers.get(k).copied().unwrap_or_default();
        let (net, pod) = (t("create_network"), t("run_podsandbox").sum);
        let mean = if net.count > 0.0 { format!("{:.0} ms", net.sum / net.count * 1000.0) } else { "–".into() };
        let share = if pod > 0.0 { format!("{:.0} %", net.sum / pod * 100.0) } else { "–".into() };
        let (lo, _, hi) = spread(&c.ready_ms);
        let name = if cni == "ptp" { "ptp + host-local" } else { cni };
        let _ =
            writeln!(md, "| {name} | {:.0} ms | {:.0} ms | {lo:.0}–{hi:.0} ms | {mean} | {share} |", q(0.5), q(0.99));
        p.insert(cni, (q(0.5), q(0.99)));
    }
    if let (Some(w), Some(r)) = (p.get("weft"), p.get("ptp"))
        && r.0 > 0.0
        && r.1 > 0.0
    {
        let _ = writeln!(
            md,
            "\nweft / ptp + host-local: p50 {:.2}×, p99 {:.2}× (lower is faster).\n",
            w.0 / r.0,
            w.1 / r.1
        );
    }
}

/// policy-bench's table.
fn policy_section(v: Option<&PolicyRun>, md: &mut String) {
    let Some(v) = v else {
        let _ = writeln!(md, "No policy-bench results in this run.\n");
        return;
    };
    let _ = writeln!(md, "### Programming policy changes\n");
    let _ = writeln!(
        md,
        "`policy-bench`: one weft-agent against a real kube-apiserver holding {} pods ({} on the agent's node) in {} namespaces, {} NetworkPolicies and {} ClusterNetworkPolicies (API filled in {:.0} s); each change made alone, {} samples per kind, timed from the API request to the nftables commit seen by a netlink listener in the node namespace. Method: bench/POLICY.md.\n",
        v.pods, v.local_pods, v.namespaces, v.policies, v.cluster_policies, v.setup_seconds, v.samples
    );
    let _ = writeln!(md, "| metric | value | target |\n|---|---|---|");
    for r in &v.results {
        let _ = writeln!(md, "| {} | {:.1} | {} |", r.metric, r.value, r.target);
    }
    let _ = writeln!(md);
}

/// The report's head: the run, the machine and its load, bench/run's notes.
/// Whether the machine was busy (load average above 3).
fn header(meta: &RunMeta, notes: Option<String>, md: &mut String) -> bool {
    let (_, load_med, load_max) = spread(&meta.loadavg_1min);
    // The benchmarks themselves keep the load near 2 on 2 CPUs.
    let busy = load_max > 3.0;
    let pods_load = &meta.loadavg_1min_pod_startup;
    let or_unknown = |s: &str| if s.is_empty() { "?".to_string() } else { s.to_string() };
    let _ = writeln!(md, "# weft benchmark report\n");
    let _ = writeln!(
        md,
        "Produced by `bench/run{}` on {} (kernel {}, {} CPUs), in {:.0} min. Nothing here is pass/fail: weft and its references run on the same kernel in the same run, and the ratios are what to read. Every point is the median of its repetitions and every bar the min–max range.\n",
        if meta.quick { " --quick" } else { "" },
        or_unknown(&meta.date),
        or_unknown(&meta.kernel),
        meta.cpus,
        meta.minutes,
    );
    let _ = writeln!(
        md,
        "Load average (1 min) sampled every 30 s during the run{}: median {load_med:.1}, max {load_max:.1}.{}{}\n",
        if pods_load.is_empty() { "" } else { ", pod start-up apart" },
        if pods_load.is_empty() {
            String::new()
        } else {
            format!(" During pod start-up, whose own pods load the machine: max {:.1}.", spread(pods_load).2)
        },
        if busy {
            " **The machine was shared with parallel builds and tests during this run (load average above 3)**: absolute numbers are lower and noisier than on an idle machine; ratios within one setup pair are measured seconds apart and suffer less."
        } else {
            ""
        }
    );
    if let Some(notes) = notes {
        for n in notes.lines().filter(|l| !l.trim().is_empty()) {
            let _ = writeln!(md, "- **Note:** {n}");
        }
        let _ = writeln!(md);
    }
    busy
}

/// bench-report's command line.
#[derive(Parser)]
#[command(name = "bench-report", about = "Writes bench/report.md and its figures from the benchmarks' JSON")]
struct Args {
    /// The directory of the benchmarks' JSON (bench/run's data directory).
    #[arg(value_name = "DATA_DIR")]
    data: PathBuf,
    /// Where report.md and report/ are written.
    #[arg(value_name = "OUT_DIR")]
    out: PathBuf,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args.data, &args.out) {
        eprintln!("bench-report: {e}");
        std::process::exit(1);
    }
}

fn run(data: &Path, out: &Path) -> Fallible<()> {
    let font = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core: scripts/deps)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| format!("{FONT} is not a usable font"))?;
    let figures: PathBuf = out.join("report");
    std::fs::create_dir_all(&figures).map_err(|e| format!("create {}: {e}", figures.display()))?;
    let meta: RunMeta = read_if_there(&data.join("meta.json"))?.unwrap_or_default();
    let net: Option<NetRun> = read_if_there(&data.join("net.json"))?;
    let mut md = String::new();
    let busy = header(&meta, std::fs::read_to_string(data.join("notes.txt")).ok(), &mut md);
    let _ = writeln!(md, "## Data plane: pod to pod across nodes\n");
    match &net {
        Some(net) => net_section(net, &figures, &mut md, busy)?,
        None => {
            let _ = writeln!(md, "No net-bench results in this run.\n");
        }
    }
    let _ = writeln!(md, "## NetworkPolicy\n");
    if let Some(net) = &net {
        policy_dataplane(net, &mut md);
    }
    policy_section(read_if_there(&data.join("policy.json"))?.as_ref(), &mut md);
    let _ = writeln!(md, "## Control plane: weft-agent at scale\n");
    agent_section(data, &figures, &mut md)?;
    let _ = writeln!(md, "## CNI plugin: ADD and DEL\n");
    cni_section(data, &figures, &mut md)?;
    let _ = writeln!(md, "## Pod start-up through kubelet\n");
    pods_section(read_if_there(&data.join("pods.json"))?.as_ref(), &mut md);
    let path = out.join("report.md");
    std::fs::write(&path, md).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_takes_two_directories() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let a = Args::try_parse_from(["bench-report", "data", "out"]).unwrap();
        assert_eq!((a.data, a.out), (PathBuf::from("data"), PathBuf::from("out")));
        assert!(Args::try_parse_from(["bench-report", "data"]).is_err());
    }

    #[test]
    fn a_result_that_does_not_fit_its_type_fails_the_report() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_if_there::<PolicyRun>(&dir.path().join("policy.json")), Ok(None));
        std::fs::write(dir.path().join("policy.json"), r#"{"pods": "many"}"#).unwrap();
        let e = read_if_there::<PolicyRun>(&dir.path().join("policy.json")).unwrap_err();
        assert!(e.contains("policy.json"), "{e}");
    }

    #[test]
    fn the_slowest_pass_is_told_by_stage() {
        let pass = Pass::from_log_line("pass observe_us=1000 compute_us=3000 kernel_us=6000 wakeup=Start");
        assert_eq!(
            pass_breakdown(&pass),
            "10 ms in all — observe 1 ms (10%), compute 3 ms (30%), publish 0 ms (0%), kernel 6 ms (60%), nftables 0 ms (0%), files 0 ms (0%)"
        );
    }
}
