//! bench-report: turns the JSON that `bench/run` collected (net-bench,
//! agent-bench at several sizes, cni-bench at several pod counts) into
//! `report.md` and PNG figures. The font is DejaVu Sans from Debian's
//! `fonts-dejavu-core`, loaded from its file and registered with plotters,
//! so no system font lookup decides how a figure looks.
//!
//!   bench-report DATA_DIR OUT_DIR

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Parser;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;
use weft_bench::results::{CniRun, CniSamples};
use weft_bench::stats;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];

type Fallible<T> = Result<T, String>;
/// A named line of (x, samples at x) points.
type XySeries = (String, Vec<(f64, Vec<f64>)>);

/// min, median, max of the samples (zeros when empty).
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => (0.0, 0.0, 0.0),
        n => (s[0], if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }, s[n - 1]),
    }
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// A benchmark's result file read as its type: one that is there but does
/// not fit the schema fails the report rather than leaving figures out.
fn read_typed<T: serde::de::DeserializeOwned>(path: &Path) -> Fallible<T> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn fmt_spread(v: &[f64], digits: usize) -> String {
    let (lo, mid, hi) = spread(v);
    if v.is_empty() { "–".into() } else { format!("{mid:.digits$} ({lo:.digits$}–{hi:.digits$})") }
}

/// One series of a category chart: per category, samples (drawn as the
/// median with a min–max bar).
struct Series {
    name: String,
    per_category: Vec<Vec<f64>>,
}

/// A panel with categories on x, each series offset a little, median
/// points with min–max bars.
fn category_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[Series],
) -> Fallible<()> {
    let e = |e: DrawingAreaErrorKind<_>| format!("draw {title}: {e:?}");
    let y_max = series.iter().flat_map(|s| s.per_category.iter().flatten()).copied().fold(0.0f64, f64::max) * 1.15;
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let n = categories.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..y_max)
        .map_err(e)?;
    let cats = categories.to_vec();
    chart
        .configure_mesh()
        // n + 1 labels over a range n wide: plotters picks a step of 1, one
        // label per category.
        .x_labels(categories.len() + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                cats.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style(("sans-serif", 13))
        .disable_x_mesh()
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    let k = series.len().max(1) as f64;
    for (si, s) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let dx = (si as f64 - (k - 1.0) / 2.0) * 0.6 / k;
        let mut pts = Vec::new();
        for (ci, v) in s.per_category.iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            let (lo, mid, hi) = spread(v);
            let x = ci as f64 + dx;
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(x, lo), (x, hi)], color.stroke_width(2))))
                .map_err(e)?;
            pts.push((x, mid));
        }
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(e)?
            .label(s.name.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// A panel with numbers on a log x axis: one line per series through the
/// medians, min–max bars.
fn xy_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    series: &[XySeries],
) -> Fallible<()> {
    let e = |e: DrawingAreaErrorKind<_>| format!("draw {title}: {e:?}");
    let xs: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)).collect();
    let (x_lo, x_hi) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let (x_lo, x_hi) = if xs.is_empty() { (1.0, 10.0) } else { (x_lo, x_hi) };
    let y_max =
        series.iter().flat_map(|(_, p)| p.iter().flat_map(|(_, v)| v.iter())).copied().fold(0.0f64, f64::max) * 1.15;
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let mut builder = ChartBuilder::on(area);
    builder.caption(title, ("sans-serif", 18)).margin(10).x_label_area_size(45).y_label_area_size(60);
    let style = ("sans-serif", 13);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart.configure_mesh().x_desc(x_label).y_desc(y_label).label_style(style).draw().map_err(e)?;
            for (si, (name, pts)) in series.iter().enumerate() {
                let color = COLORS[si % COLORS.len()];
                let meds: Vec<(f64, f64)> = pts.iter().map(|(x, v)| (*x, spread(v).1)).collect();
                for (x, v) in pts {
                    let (lo, _, hi) = spread(v);
                    chart
                        .draw_series(std::iter::once(PathElement::new(vec![(*x, lo), (*x, hi)], color.stroke_width(2))))
                        .map_err(e)?;
                }
                chart.draw_series(meds.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(e)?;
                chart
                    .draw_series(LineSeries::new(meds.clone(), color.stroke_width(2)))
                    .map_err(e)?
                    .label(name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(style)
                .draw()
                .map_err(e)?;
        }};
    }
    if log_x {
        body!(builder.build_cartesian_2d((x_lo * 0.8..x_hi * 1.25).log_scale(), 0f64..y_max).map_err(e)?);
    } else {
        let pad = (x_hi - x_lo).max(1.0) * 0.08;
        body!(builder.build_cartesian_2d(x_lo - pad..x_hi + pad, 0f64..y_max).map_err(e)?);
    }
    Ok(())
}

/// A figure: panels side by side or stacked, and a caption (method,
/// repetitions, spread) at the bottom.
fn figure<'a>(
    path: &'a Path,
    size: (u32, u32),
    rows: usize,
    cols: usize,
    caption: &str,
    draw: impl FnOnce(&[DrawingArea<BitMapBackend<'a>, Shift>]) -> Fallible<()>,
) -> Fallible<()> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("draw {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let lines: Vec<&str> = caption.lines().collect();
    let (body, foot) = root.split_vertically(size.1 - 20 * lines.len() as u32 - 10);
    for (i, l) in lines.iter().enumerate() {
        foot.draw_text(l, &("sans-serif", 14).into_font().color(&BLACK), (10, 4 + 20 * i as i32)).map_err(e)?;
    }
    let panels = body.split_evenly((rows, cols));
    draw(&panels)?;
    root.present().map_err(e)?;
    Ok(())
}

struct Net {
    v: Value,
}

impl Net {
    fn rows(&self) -> Vec<&Value> {
        self.v["rows"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
    }
    fn topologies(&self) -> Vec<String> {
        let mut t: Vec<String> = Vec::new();
        for r in self.rows() {
            let s = r["topology"].as_str().unwrap_or("").to_string();
            if !t.contains(&s) {
                t.push(s);
            }
        }
        t
    }
    fn setups(&self, topo: &str) -> Vec<String> {
        let mut t: Vec<String> = Vec::new();
        for r in self.rows().into_iter().filter(|r| r["topology"] == topo) {
            let s = r["setup"].as_str().unwrap_or("").to_string();
            if !t.contains(&s) {
                t.push(s);
            }
        }
        t
    }
    fn row(&self, topo: &str, setup: &str, family: &str, cc: &str) -> Option<&Value> {
        self.rows()
            .into_iter()
            .find(|r| r["topology"] == topo && r["setup"] == setup && r["family"] == family && r["cc"] == cc)
    }
    /// The paired groups (`net_paired`): one per backend and family.
    fn paired(&self) -> Vec<&Value> {
        self.v["paired"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
    }
    fn group(&self, backend: &str, family: &str) -> Option<&Value> {
        self.paired().into_iter().find(|g| g["backend"] == backend && g["family"] == family)
    }
    fn combos(&self) -> Vec<(String, String)> {
        let mut c: Vec<(String, String)> = Vec::new();
        for r in self.rows() {
            let k = (r["family"].as_str().unwrap_or("").to_string(), r["cc"].as_str().unwrap_or("").to_string());
            if !c.contains(&k) {
                c.push(k);
            }
        }
        c
    }
}

/// Whether a setup is a diagnostic variant of `weft routes` (nftables
/// removed, NetworkPolicies loaded): compared with its references, but
/// judged against targets of its own, not the data-plane ones.
fn diagnostic(setup: &str) -> bool {
    setup.ends_with(", no nftables") || setup.ends_with(" policies")
}

/// The `weft routes, N policies` setup of the run, if it has one.
fn policy_setup(net: &Net, topo: &str) -> Option<String> {
    net.setups(topo).into_iter().find(|s| s.starts_with("weft routes, ") && s.ends_with(" policies"))
}

/// The median of `key` in row `a` over row `b`'s.
fn ratio_of(a: &Value, b: &Value, key: &str) -> Option<f64> {
    let (x, y) = (spread(&nums(&a[key])).1, spread(&nums(&b[key])).1);
    (!nums(&a[key]).is_empty() && y > 0.0).then(|| x / y)
}

/// What this run's data says about weft's cost on the routes path (for a
/// missed target): from the paired routes group of family `f`, weft over
/// no netfilter and over the conntrack reference, with their intervals;
/// from the profiles, netfilter's share of the CPU with weft and without.
fn netfilter_cause(net: &Net, f: &str, _cc: &str, key: &str) -> Option<String> {
    let g = net.group("routes", f)?;
    let key = if key == "conn_per_s" { key } else { "gbps" };
    let target = g["target_half_width"].as_f64().unwrap_or(0.03);
    let mut parts = Vec::new();
    for reference in g["comparisons"].as_array().into_iter().flatten().filter(|c| c[0] == "weft") {
        let over = reference[1].as_str().unwrap_or("?");
        if let Some(ci) = group_ci(g, "weft", over, key) {
            parts.push(format!("paired, weft routes is {} `{over}`", fmt_ci(Some(ci), target)));
        }
    }
    let nf = |v: &str| g["profiles"][v]["under_nf_hook_slow"].as_f64();
    if let (Some(w), Some(none)) = (nf("weft"), nf("no netfilter")) {
        parts.push(format!(
            "netfilter hooks (`nf_hook_slow` and callees) are {:.1}% of the profiled CPU with weft's rules vs {:.1}% with none",
            w * 100.0,
            none * 100.0
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// What the VXLAN MTU costs on the routes path in this run, from the
/// `hand routes, VXLAN MTU` reference: (hand routes at that MTU / hand
/// routes at the underlay's, `setup` / hand routes at that MTU).
fn mtu_cost(net: &Net, topo: &str, setup: &str, f: &str, cc: &str, key: &str) -> Option<(f64, f64)> {
    let small = net.row(topo, "hand routes, VXLAN MTU", f, cc)?;
    let mtu = ratio_of(small, net.row(topo, "hand routes", f, cc)?, key)?;
    let weft = ratio_of(net.row(topo, setup, f, cc)?, small, key)?;
    Some((mtu, weft))
}

/// The values of `key` in a paired group, as `(round, variant, value)`.
fn group_samples<'a>(g: &'a Value, key: &str) -> Vec<(usize, &'a str, f64)> {
    g["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["round"].as_u64()? as usize, s["variant"].as_str()?, s[key].as_f64()?)))
        .collect()
}

/// `a` over `b` for `key` in a paired group, with its 95 % interval.
fn group_ci(g: &Value, a: &str, b: &str, key: &str) -> Option<stats::RatioCi> {
    stats::paired_ratio_ci(&stats::same_round_pairs(&group_samples(g, key), &a, &b))
}

/// `0.912 [0.890–0.935]`, marked when wider than the group's target.
fn fmt_ci(ci: Option<stats::RatioCi>, target: f64) -> String {
    match ci {
        Some(c) => format!(
            "{:.3} [{:.3}–{:.3}]{}",
            c.ratio,
            c.low,
            c.high,
            if c.half_width() > target { " (wide)" } else { "" }
        ),
        None => "–".into(),
    }
}

/// Whether a ratio meets `at_least` (or, for CPU per byte, `at_most`),
/// and whether its interval still straddles the threshold.
fn verdict(ci: stats::RatioCi, threshold: f64, lower_is_better: bool) -> &'static str {
    let met = if lower_is_better { ci.ratio <= threshold } else { ci.ratio >= threshold };
    match (met, ci.low <= threshold && threshold <= ci.high) {
        (true, false) => "met",
        (true, true) => "met (interval straddles)",
        (false, true) => "**missed** (interval straddles)",
        (false, false) => "**missed**",
    }
}

/// The paired groups: per backend and family, each comparison's ratio
/// with its 95 % interval for throughput, CPU per byte and new
/// connections; the VXLAN hook crossings; the targets against the
/// conntrack reference.
fn paired_section(net: &Net, md: &mut String) {
    let groups = net.paired();
    if groups.is_empty() {
        return;
    }
    let _ = writeln!(md, "### Paired: weft against its references, and what each part costs\n");
    let _ = writeln!(
        md,
        "One `weft routes` and one `weft vxlan` setup (agents against the API server, NetworkPolicy on, {} policies loaded and one of them isolating the benchmark pods). Their nftables rulesets are saved with the pods selected and unselected, the agents stopped (they leave the data plane in place), and each variant is loaded atomically in both node namespaces: `no netfilter` (empty ruleset: the kernel objects alone, as `hand routes`/`hand vxlan`), `conntrack only` (empty nat chains at prerouting, output and postrouting, as kube-proxy turns conntrack on), `weft` (the agent's ruleset, pods selected by no policy), and weft without one part at a time (`−`: a rule or chain deleted; conntrack by a `notrack` chain before its hook). Rounds measure every variant once in rotating order (forward, then backward), then the comparison with the widest interval gets extra pairs, alternating order, until every interval is within ±{:.0} % or the group's budget is spent. Each measurement: one iperf3 stream transferring a fixed size (cubic), then sequential new connections. **Ratio**: the geometric mean of the per-round ratios with its 95 % paired log-ratio t interval (`[low–high]`, *(wide)* when wider than the target; `pairs`: rounds holding both). **CPU per GB**: CPU-seconds of both iperf3 processes (getrusage) plus the machine's irq and softirq time (/proc/stat; this VM has no cycle counter for `perf stat`) over the transfer, per GB received; lower is better. The machine-wide busy time per GB is in the JSON (`machine_cpu_s_per_gb`), but on a shared machine it counts other work.\n",
        groups[0]["policies"],
        groups[0]["target_half_width"].as_f64().unwrap_or(0.03) * 100.0
    );
    let mut targets = Vec::new();
    for g in &groups {
        let (b, f) = (g["backend"].as_str().unwrap_or("?"), g["family"].as_str().unwrap_or("?"));
        let target = g["target_half_width"].as_f64().unwrap_or(0.03);
        let _ = writeln!(
            md,
            "**{b}, {f}** ({} GB per transfer, {} s of new connections; {} rounds + {} adaptive pairs in {:.0} s, budget {:.0} s)\n",
            g["bytes"].as_f64().unwrap_or(0.0) / 1e9,
            g["conn_secs"],
            g["min_rounds"],
            g["adaptive_pairs"],
            g["seconds"].as_f64().unwrap_or(0.0),
            g["budget_s"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(
            md,
            "| variant | over | Gbit/s ratio [95 % CI] | CPU per GB ratio [95 % CI] | conn/s ratio [95 % CI] | pairs | Gbit/s (median) | CPU s/GB (median) |\n|---|---|---|---|---|---|---|---|"
        );
        for c in g["comparisons"].as_array().into_iter().flatten() {
            let (Some(a), Some(over)) = (c[0].as_str(), c[1].as_str()) else { continue };
            let ci = |k: &str| group_ci(g, a, over, k);
            let median = |k: &str| {
                let v: Vec<f64> = group_samples(g, k).iter().filter(|s| s.1 == a).map(|s| s.2).collect();
                if v.is_empty() { "–".to_string() } else { format!("{:.2}", spread(&v).1) }
            };
            let _ = writeln!(
                md,
                "| {a} | {over} | {} | {} | {} | {} | {} | {} |",
                fmt_ci(ci("gbps"), target),
                fmt_ci(ci("cpu_s_per_gb"), target),
                fmt_ci(ci("conn_per_s"), target),
                ci("gbps").map_or(0, |c| c.n),
                median("gbps"),
                median("cpu_s_per_gb")
            );
            if a == "weft" && over.starts_with("conntrack only") {
                for (key, what, threshold, lower) in [
                    ("gbps", "throughput", 0.97, false),
                    ("cpu_s_per_gb", "CPU per GB", 1.0 / 0.97, true),
                    ("conn_per_s", "new connections", 0.95, false),
                ] {
                    if let Some(x) = ci(key) {
                        let sign = if lower { "≤" } else { "≥" };
                        targets.push(format!(
                            "{b} {f}, {what}: weft {:.3}x conntrack only [{:.3}–{:.3}], target {sign} {threshold:.3}: {}",
                            x.ratio,
                            x.low,
                            x.high,
                            verdict(x, threshold, lower)
                        ));
                    }
                }
            }
        }
        let _ = writeln!(md);
        for e in g["errors"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "- **{}:** {}",
                e["variant"].as_str().unwrap_or("?"),
                e["error"].as_str().or(e["profile_error"].as_str()).unwrap_or("?")
            );
        }
        if let Some(e) = g["crossings"]["error"].as_str() {
            let _ = writeln!(md, "- **Hook crossings not counted:** {}", e.lines().next().unwrap_or(e));
        }
        if let Some(nodes) = g["crossings"].as_object().filter(|o| !o.contains_key("error")) {
            let _ = writeln!(
                md,
                "\nNetfilter hooks crossed by one VXLAN transfer with weft's rules (packets counted by a table of counters at priority −500 / +500 in each hook; inner: from the client pod's CIDR, outer: UDP 8472 from node 1's underlay address; segmentation offloads make these counts of GSO/GRO packets, not wire packets):\n\n| node | hook | inner packets | outer packets |\n|---|---|---|---|"
            );
            for (node, hooks) in nodes {
                for h in hooks.as_array().into_iter().flatten() {
                    let _ = writeln!(md, "| {node} | {} | {} | {} |", h[0].as_str().unwrap_or("?"), h[1], h[2]);
                }
            }
            let _ = writeln!(md);
        }
    }
    if !targets.is_empty() {
        let _ = writeln!(md, "Targets against the conntrack reference (paired):\n");
        for t in targets {
            let _ = writeln!(md, "- {t}");
        }
        let _ = writeln!(md);
    }
}

/// The CPU profiles of the run (IPv4, cubic, one stream, one segment): per
/// setup, each class's share of the samples of the traffic's work.
fn profile_table(net: &Net, md: &mut String) {
    let _ = writeln!(md, "### Where the CPU goes: profiles\n");
    let topo = "one segment";
    // Per setup, the iperf3 run's profile, then the connection-rate run's.
    let mut rows: Vec<(String, &Value)> = Vec::new();
    for kind in ["profile", "profile_conn"] {
        for s in net.setups(topo) {
            if let Some(r) = net.row(topo, &s, "IPv4", "cubic").filter(|r| r[kind].is_object()) {
                let what = if kind == "profile" { "TCP 1 stream" } else { "new connections" };
                rows.push((format!("{s}: {what}"), &r[kind]));
            }
        }
    }
    // The paired groups: weft, its references and each variant, same namespaces.
    for g in net.paired() {
        for (variant, p) in g["profiles"].as_object().into_iter().flatten() {
            let (b, f) = (g["backend"].as_str().unwrap_or("?"), g["family"].as_str().unwrap_or("?"));
            rows.push((format!("paired {b}, {f}: {variant}: TCP 1 stream"), p));
        }
    }
    if rows.is_empty() {
        let why = match (net.v["profiled"].as_bool(), net.v["profile_error"].as_str()) {
            (_, Some(e)) => format!("perf did not work here: {e}"),
            (Some(false), _) => "not taken in a --quick run (net-bench --profile takes them)".to_string(),
            _ => "this run has none".to_string(),
        };
        let _ = writeln!(md, "No CPU profiles: {why}.\n");
        return;
    }
    let _ = writeln!(
        md,
        "`perf record -a -g -F 1999` over one iperf3 run (IPv4, cubic, 1 stream, one segment) per setup, and over one connection-rate run (new connections cross every rule that established packets skip); `perf report --children --sort comm,symbol`. Only the samples of iperf3, net-bench (the connection-rate client and server), ksoftirqd and softirq work interrupting idle (swapper) are counted, where this traffic's kernel work runs (other processes on the shared machine are left out). Classes by symbol name: netfilter = `nft_*`, `nf_*`, conntrack; tcp = `tcp*`, congestion control; copy = copies to and from user memory, `memcpy`/`memmove`; forward = veth, `dev_*`/`netif_*`/NAPI, IP receive/forward/output, FIB, neighbours, the lab's bridge, `skb_*`; vxlan, udp; other = everything else (scheduler, syscalls, allocator, locks). Each cell: the class's share of those samples (self time). `under nf_hook_slow`: the samples in netfilter hooks with their callees (from the call graph), the better measure of what netfilter costs, because{} samples land where interrupts are re-enabled (`_raw_spin_unlock_irqrestore`, `handle_softirqs`, in \"other\"), not in the function that ran with them off.\n",
        match rows[0].1["event"].as_str() {
            Some(e) if e.starts_with("cpu-clock") =>
                format!(" this machine has no hardware PMU (the event is `{e}`, a timer):"),
            Some(e) if !e.is_empty() => format!(" with event `{e}` some"),
            _ => " some".to_string(),
        }
    );
    let classes: Vec<String> =
        rows[0].1["classes"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    // serde_json without preserve_order sorts keys: put them in net-bench's order when known.
    let order = ["netfilter", "tcp", "copy", "forward, veth, xmit", "vxlan, udp", "other"];
    let mut classes: Vec<String> = order
        .iter()
        .map(|c| c.to_string())
        .filter(|c| classes.contains(c))
        .chain(classes.iter().filter(|c| !order.contains(&c.as_str())).cloned())
        .collect();
    classes.dedup();
    let _ = writeln!(
        md,
        "| setup: traffic | measured while profiled | under `nf_hook_slow` | {} | top symbols | top netfilter symbols |\n|---|---|---|{}---|---|",
        classes.join(" | "),
        "---|".repeat(classes.len())
    );
    for (setup, p) in &rows {
        let cells: Vec<String> = classes
            .iter()
            .map(|c| p["classes"][c].as_f64().map_or("–".into(), |x| format!("{:.1}%", x * 100.0)))
            .collect();
        let named = |key: &str| -> String {
            let names: Vec<String> = p[key]
                .as_array()
                .into_iter()
                .flatten()
                .take(4)
                .map(|t| format!("`{}` {:.1}%", t[0].as_str().unwrap_or("?"), t[1].as_f64().unwrap_or(0.0) * 100.0))
                .collect();
            if names.is_empty() { "–".into() } else { names.join(", ") }
        };
        let _ = writeln!(
            md,
            "| {setup} | {} | {} | {} | {} | {} |",
            match (p["gbps"].as_f64(), p["conn_per_s"].as_f64()) {
                (Some(g), _) => format!("{g:.2} Gbit/s"),
                (_, Some(c)) => format!("{c:.0} conn/s"),
                _ => "–".into(),
            },
            p["under_nf_hook_slow"].as_f64().map_or("–".into(), |x| format!("{:.1}%", x * 100.0)),
            cells.join(" | "),
            named("top"),
            named("top_netfilter")
        );
    }
    let _ = writeln!(md);
}

/// The NetworkPolicy data-plane targets from the paired groups: weft with
/// the benchmark pods isolated over weft with them selected by no policy,
/// same namespaces, interleaved. Whether there was any to show.
fn paired_policies(net: &Net, md: &mut String) -> bool {
    let mut lines = Vec::new();
    for g in net.paired() {
        let Some(with) = g["variants"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|v| v.ends_with("pods isolated"))
        else {
            continue;
        };
        let target = g["target_half_width"].as_f64().unwrap_or(0.03);
        for (key, what, threshold) in [("gbps", "throughput, 1 stream", 0.95), ("conn_per_s", "new connections", 0.9)] {
            if let Some(ci) = group_ci(g, with, "weft", key) {
                lines.push(format!(
                    "| {} {} | {what} | {} | ≥ {threshold}: {} |",
                    g["backend"].as_str().unwrap_or("?"),
                    g["family"].as_str().unwrap_or("?"),
                    fmt_ci(Some(ci), target),
                    verdict(ci, threshold, false)
                ));
            }
        }
    }
    if lines.is_empty() {
        return false;
    }
    let _ = writeln!(
        md,
        "From the paired groups (see the data-plane section): `{}` over `weft` with the pods selected by no policy, the same pods and namespaces, interleaved, with the 95 % interval.\n\n| backend, family | metric | ratio [95 % CI] | target |\n|---|---|---|---|\n{}\n",
        net.paired()
            .iter()
            .flat_map(|g| g["variants"].as_array().into_iter().flatten().filter_map(Value::as_str))
            .find(|v| v.ends_with("pods isolated"))
            .unwrap_or("weft, N policies"),
        lines.join("\n")
    );
    true
}

/// The NetworkPolicy data-plane targets: `weft routes, N policies` over
/// `weft routes`, measured in the same run.
fn policy_dataplane(net: &Net, md: &mut String) {
    let topo = "one segment";
    let _ = writeln!(md, "### NetworkPolicy data plane\n");
    let Some(setup) = policy_setup(net, topo) else {
        let failure = net.v["failed"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["setup"].as_str().is_some_and(|s| s.ends_with(" policies")));
        match failure {
            Some(f) => {
                let _ = writeln!(
                    md,
                    "**Not measured: `{}` failed:** {}\n",
                    f["setup"].as_str().unwrap_or("?"),
                    f["error"].as_str().unwrap_or("?")
                );
            }
            None if paired_policies(net, md) => {}
            None => {
                let _ = writeln!(md, "Not measured in this run (net-bench has no paired group with policies).\n");
            }
        }
        return;
    };
    let first = net.rows().into_iter().find(|r| r["setup"] == setup.as_str());
    let _ = writeln!(
        md,
        "net-bench's `{setup}`: the `weft routes` setup with {} NetworkPolicies in the API server and enforced by both agents (one isolating both pods, ingress and egress, allowing only the benchmark's TCP ports between them; the others selecting API-only pods on the same nodes, so all of them are in both kernels: {} per-policy chains on the nodes), measured seconds after `weft routes` in the same run. Before measuring, a port the policy does not allow was checked to be dropped: {}. **Paired**: in the same setup, each repetition is measured twice, with the two pods selected by the isolating policy and with its label taken off them (no policy selects them; the other policies stay loaded), in alternating order, after their verdict-map elements followed in both kernels. Setups run a minute apart on 2 cores differ by more than the policies cost, so the target is judged on the paired ratio when the run has it.\n",
        first.map_or(Value::Null, |r| r["policies"].clone()),
        first.map_or("?".to_string(), |r| {
            nums(&r["policy_chains"]).iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" and ")
        }),
        first.and_then(|r| r["enforcement"].as_str()).unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "| family, cc | metric | weft routes | {setup} | ratio | same pods unselected (paired) | paired ratio | target |\n|---|---|---|---|---|---|---|---|"
    );
    let mut verdicts = Vec::new();
    for (f, cc) in net.combos() {
        let (Some(w), Some(p)) = (net.row(topo, "weft routes", &f, &cc), net.row(topo, &setup, &f, &cc)) else {
            continue;
        };
        for (key, what, target, digits) in [
            ("gbps_1", "TCP 1 stream, Gbit/s", 0.95, 2),
            ("gbps_4", "TCP 4 streams, Gbit/s", 0.95, 2),
            ("conn_per_s", "new connections/s", 0.9, 0),
        ] {
            let Some(x) = ratio_of(p, w, key) else { continue };
            let paired = ratio_of(p, &p["unselected"], key);
            let judged = paired.unwrap_or(x);
            let verdict = if judged >= target { "met" } else { "**missed**" };
            let _ = writeln!(
                md,
                "| {f}, {cc} | {what} | {} | {} | {x:.3} | {} | {} | ≥ {target} ({verdict}) |",
                fmt_spread(&nums(&w[key]), digits),
                fmt_spread(&nums(&p[key]), digits),
                if paired.is_some() { fmt_spread(&nums(&p["unselected"][key]), digits) } else { "–".into() },
                paired.map_or("–".into(), |r| format!("{r:.3}")),
            );
            if judged < target {
                let (lo, _, hi) = spread(&nums(&p[key]));
                let base = if paired.is_some() { &p["unselected"] } else { w };
                let (wlo, _, whi) = spread(&nums(&base[key]));
                let mut cause = Vec::new();
                if lo <= whi && wlo <= hi {
                    cause.push("the min–max ranges overlap (within this run's noise)".to_string());
                }
                let kind = if key == "conn_per_s" { "profile_conn" } else { "profile" };
                let nf = |s: &str| net.row(topo, s, "IPv4", "cubic")?[kind]["under_nf_hook_slow"].as_f64();
                if let (Some(a), Some(b)) = (nf(&setup), nf("weft routes")) {
                    cause.push(format!(
                        "netfilter hooks (`nf_hook_slow` and callees) are {:.1}% of the profiled CPU with the policies vs {:.1}% without ({}, IPv4; profile table in the data-plane section)",
                        a * 100.0,
                        b * 100.0,
                        if kind == "profile" { "TCP 1 stream" } else { "new connections" }
                    ));
                }
                verdicts.push(format!(
                    "{f}, {cc}, {what}: {} (target ≥ {target}){}",
                    match paired {
                        Some(r) => format!("{r:.3}x the same pods unselected, {x:.3}x weft routes"),
                        None => format!("{x:.3}x weft routes"),
                    },
                    if cause.is_empty() { String::new() } else { format!("; {}", cause.join("; ")) }
                ));
            }
        }
    }
    let _ = writeln!(md);
    if verdicts.is_empty() {
        let _ = writeln!(md, "Every NetworkPolicy data-plane target is met in this run.\n");
    } else {
        let _ = writeln!(md, "Missed:\n");
        for v in verdicts {
            let _ = writeln!(md, "- {v}");
        }
        let _ = writeln!(md);
    }
}

/// The hand-programmed reference a weft setup is compared with: the same
/// kernel objects its backend writes on this topology.
fn reference_for(topo: &str, setup: &str) -> Option<&'static str> {
    let backend = setup.strip_prefix("weft ")?.split(',').next()?;
    Some(match backend {
        "routes" => "hand routes",
        "vxlan" => "hand vxlan",
        // auto routes a peer on the local L2 segment, else uses VXLAN.
        "auto" if topo == "one segment" => "hand routes",
        _ => "hand vxlan",
    })
}

fn net_figures(net: &Net, out: &Path, md: &mut String) -> Fallible<()> {
    let topos = net.topologies();
    let secs = net.v["secs"].as_u64().unwrap_or(0);
    let reps = net.v["reps"].as_u64().unwrap_or(0);
    // Older net-bench output ran request/response for `secs` too.
    let rr_secs = net.v["rr_secs"].as_u64().unwrap_or(secs);
    for streams in [1, 4] {
        let name = format!("net-throughput-{streams}.png");
        let caption = format!(
            "iperf3 TCP, {streams} stream(s), pod to pod across two node namespaces (bare: node to node), {secs} s x {reps} repetitions per point.\nPoint: median of the repetitions; bar: min to max. Same kernel, same run; setups run one after another on fresh namespaces."
        );
        figure(&out.join(&name), (1400, 1100), topos.len(), 1, &caption, |panels| {
            for (topo, area) in topos.iter().zip(panels) {
                let cats = net.setups(topo);
                let series: Vec<Series> = net
                    .combos()
                    .iter()
                    .map(|(f, cc)| Series {
                        name: format!("{f} {cc}"),
                        per_category: cats
                            .iter()
                            .map(|s| {
                                net.row(topo, s, f, cc).map(|r| nums(&r[format!("gbps_{streams}")])).unwrap_or_default()
                            })
                            .collect(),
                    })
                    .collect();
                category_panel(area, &format!("{topo}: throughput, {streams} stream(s)"), "Gbit/s", &cats, &series)?;
            }
            Ok(())
        })?;
        let _ = writeln!(md, "![{name}](report/{name})\n\n*{}*\n", caption.replace('\n', " "));
    }
    let name = "net-latency.png";
    let caption = format!(
        "TCP request/response, 64-byte messages ping-ponged over one connection (TCP_NODELAY) for {rr_secs} s, x {reps} repetitions, the namespace's default congestion control.\nPoint: median over repetitions of each repetition's p50 / p99 round trip; bar: min to max."
    );
    figure(&out.join(name), (1400, 1100), topos.len(), 1, &caption, |panels| {
        for (topo, area) in topos.iter().zip(panels) {
            let cats = net.setups(topo);
            let mut series = Vec::new();
            for f in ["IPv4", "IPv6"] {
                for q in ["p50", "p99"] {
                    let per: Vec<Vec<f64>> = cats
                        .iter()
                        .map(|s| {
                            net.row(topo, s, f, "cubic").map(|r| nums(&r[format!("rr_{q}_us")])).unwrap_or_default()
                        })
                        .collect();
                    if per.iter().any(|v| !v.is_empty()) {
                        series.push(Series { name: format!("{f} {q}"), per_category: per });
                    }
                }
            }
            category_panel(area, &format!("{topo}: request/response round trip"), "µs", &cats, &series)?;
        }
        Ok(())
    })?;
    let _ = writeln!(md, "![{name}](report/{name})\n\n*{}*\n", caption.replace('\n', " "));
    let name = "net-cpu.png";
    let caption = format!(
        "CPU per Gbit/s: iperf3's own CPU use (getrusage of the sending and the receiving iperf3 process, user + system, so kernel work done in their context),\ndivided by the throughput. 1 stream, cubic, {secs} s x {reps}. Point: median; bar: min to max. Softirq work done outside those processes is not counted."
    );
    figure(&out.join(name), (1400, 1100), topos.len(), 1, &caption, |panels| {
        for (topo, area) in topos.iter().zip(panels) {
            let cats = net.setups(topo);
            let mut series = Vec::new();
            for f in ["IPv4", "IPv6"] {
                for (side, key) in [("sender", "cpu_tx_1"), ("receiver", "cpu_rx_1")] {
                    let per: Vec<Vec<f64>> = cats
                        .iter()
                        .map(|s| net.row(topo, s, f, "cubic").map(|r| nums(&r[key])).unwrap_or_default())
                        .collect();
                    if per.iter().any(|v| !v.is_empty()) {
                        series.push(Series { name: format!("{f} {side}"), per_category: per });
                    }
                }
            }
            category_panel(area, &format!("{topo}: CPU cores per Gbit/s"), "cores / (Gbit/s)", &cats, &series)?;
        }
        Ok(())
    })?;
    let _ = writeln!(md, "![{name}](report/{name})\n\n*{}*\n", caption.replace('\n', " "));
    Ok(())
}

fn net_tables(net: &Net, md: &mut String, busy: bool) {
    let med = |v: &[f64]| spread(v).1;
    let _ = writeln!(
        md,
        "Each cell: median (min–max) of the repetitions. `/hand`: weft's median over the hand-programmed reference's (same kernel objects, same topology); `/bare`: over node-to-node on the underlay. Latency and the new-connection rate (conn/s: sequential connections, each connect, one byte each way, close) are measured once per family (listed in the cubic rows).\n"
    );
    let mut met = Vec::new();
    let mut missed = Vec::new();
    for topo in net.topologies() {
        for (f, cc) in net.combos() {
            let _ = writeln!(md, "**{topo}, {f}, {cc}**\n");
            let _ = writeln!(
                md,
                "| setup | pod MTU | tx csum offload | 1 stream Gbit/s | 4 streams Gbit/s | 1 st. /hand | 1 st. /bare | 4 st. /hand | 4 st. /bare | RR p50 µs | RR p99 µs | conn/s | conn /hand | conn /bare | CPU tx / rx cores per Gbit/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
            );
            let bare = net.row(&topo, "bare", &f, &cc);
            for setup in net.setups(&topo) {
                let Some(r) = net.row(&topo, &setup, &f, &cc) else { continue };
                let reference = reference_for(&topo, &setup).and_then(|h| net.row(&topo, h, &f, &cc));
                let ratio = |other: Option<&Value>, key: &str| {
                    other
                        .map(|o| med(&nums(&r[key])) / med(&nums(&o[key])).max(1e-9))
                        .map_or("".to_string(), |x| format!("{x:.3}"))
                };
                let is_weft = setup.starts_with("weft");
                let offload = match r["offload"].as_bool() {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "–",
                };
                let _ = writeln!(
                    md,
                    "| {setup} | {} | {offload} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} / {:.3} |",
                    r["pod_mtu"],
                    fmt_spread(&nums(&r["gbps_1"]), 2),
                    fmt_spread(&nums(&r["gbps_4"]), 2),
                    if is_weft { ratio(reference, "gbps_1") } else { String::new() },
                    if setup != "bare" { ratio(bare, "gbps_1") } else { String::new() },
                    if is_weft { ratio(reference, "gbps_4") } else { String::new() },
                    if setup != "bare" { ratio(bare, "gbps_4") } else { String::new() },
                    fmt_spread(&nums(&r["rr_p50_us"]), 0),
                    fmt_spread(&nums(&r["rr_p99_us"]), 0),
                    fmt_spread(&nums(&r["conn_per_s"]), 0),
                    if is_weft && !nums(&r["conn_per_s"]).is_empty() {
                        ratio(reference, "conn_per_s")
                    } else {
                        String::new()
                    },
                    if setup != "bare" && !nums(&r["conn_per_s"]).is_empty() {
                        ratio(bare, "conn_per_s")
                    } else {
                        String::new()
                    },
                    med(&nums(&r["cpu_tx_1"])),
                    med(&nums(&r["cpu_rx_1"])),
                );
                if !is_weft || diagnostic(&setup) {
                    continue;
                }
                for key in ["gbps_1", "gbps_4"] {
                    let what = format!(
                        "{topo}, {f}, {cc}, {setup}, {}",
                        if key == "gbps_1" { "1 stream" } else { "4 streams" }
                    );
                    if let Some(h) = reference {
                        let x = med(&nums(&r[key])) / med(&nums(&h[key])).max(1e-9);
                        let mut causes = Vec::new();
                        // With the MTU's cost measured, whatever weft loses against hand
                        // routes at the same MTU still needs its own cause.
                        let mut unexplained = false;
                        if r["pod_mtu"] != h["pod_mtu"] {
                            let cost = mtu_cost(net, &topo, &setup, &f, &cc, key);
                            unexplained = cost.is_some_and(|(_, weft)| weft < 0.97);
                            let measured = cost.map_or(String::new(), |(mtu, weft)| {
                                format!(
                                    ": hand routes at MTU {} reach {mtu:.3}x hand routes at {} in this run, and {setup} {weft:.3}x hand routes at {}",
                                    r["pod_mtu"], h["pod_mtu"], r["pod_mtu"]
                                )
                            });
                            causes.push(format!(
                                "pod MTU {} vs the reference's {}{measured}",
                                r["pod_mtu"], h["pod_mtu"]
                            ));
                        }
                        if r["offload"] != h["offload"] && !h["offload"].is_null() {
                            causes.push("VXLAN transmit checksum offload differs from the reference's".to_string());
                        }
                        let (lo, _, hi) = spread(&nums(&r[key]));
                        let (hlo, _, hhi) = spread(&nums(&h[key]));
                        if lo <= hhi && hlo <= hi {
                            causes.push("the min–max ranges overlap (within this run's noise)".to_string());
                        }
                        // MTU and offload explain a row by themselves; otherwise say
                        // what the run measured of weft's nftables cost.
                        if unexplained || causes.iter().all(|c| c.starts_with("the min–max")) {
                            match netfilter_cause(net, &f, &cc, key) {
                                Some(c) => causes.push(format!("not MTU or offload: {c}")),
                                None if causes.is_empty() => causes.push("not MTU or offload: weft's forward path also crosses its nftables tables (masquerade and policy chains), which the hand setup lacks; not isolated in this run".to_string()),
                                None => {}
                            }
                        }
                        if busy {
                            causes.push("machine shared with other work during the run".to_string());
                        }
                        let line = format!("{what}: {x:.3}x hand-programmed (target ≥ 0.97)");
                        if x >= 0.97 {
                            met.push(line);
                        } else {
                            missed.push(format!(
                                "{line}; {}",
                                if causes.is_empty() {
                                    "weft's own cost: nftables filter and policy chains on the forward path".into()
                                } else {
                                    causes.join("; ")
                                }
                            ));
                        }
                    }
                    if (setup.starts_with("weft routes") || (setup.starts_with("weft auto") && topo == "one segment"))
                        && let Some(b) = bare
                    {
                        let x = med(&nums(&r[key])) / med(&nums(&b[key])).max(1e-9);
                        let line = format!("{what}: {x:.3}x bare (target ≥ 0.85)");
                        if x >= 0.85 {
                            met.push(line);
                        } else {
                            missed.push(format!(
                                "{line}; two veth hops and forwarding in both nodes, not on the bare path"
                            ));
                        }
                    }
                }
            }
            let _ = writeln!(md);
        }
    }
    let _ = writeln!(md, "### Targets\n\nMet ({}):\n", met.len());
    for m in &met {
        let _ = writeln!(md, "- {m}");
    }
    let _ = writeln!(md, "\nMissed ({}), with the cause this run shows:\n", missed.len());
    for m in &missed {
        let _ = writeln!(md, "- {m}");
    }
    if missed.is_empty() {
        let _ = writeln!(md, "- none");
    }
    let _ = writeln!(md);
}

fn agent_section(data: &Path, out: &Path, md: &mut String) -> Fallible<()> {
    let mut runs: Vec<Value> = std::fs::read_dir(data)
        .map_err(|e| format!("read {}: {e}", data.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("agent-"))
        .filter_map(|e| read_json(&e.path()))
        .collect();
    runs.sort_by_key(|r| r["nodes"].as_u64().unwrap_or(0));
    if runs.is_empty() {
        let _ = writeln!(md, "No agent-bench results in this run.\n");
        return Ok(());
    }
    let x = |r: &Value| r["nodes"].as_f64().unwrap_or(0.0);
    let adds = runs[0]["adds"].as_u64().unwrap_or(0);
    let name = "agent-scaling.png";
    let caption = format!(
        "weft-agent (vxlan backend) against a real kube-apiserver holding N Nodes (no kubelets); one run per size. RSS: peak (VmHWM). Cold start: agent start to every peer route in the kernel\n(netlink listener), next to `ip -batch` writing the same state. Per-event: {adds} single-Node creations, API request to route in the kernel; points p50 and p99, bar min to max."
    );
    figure(&out.join(name), (1500, 560), 1, 3, &caption, |p| {
        let rss: Vec<(f64, Vec<f64>)> =
            runs.iter().map(|r| (x(r), vec![r["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0])).collect();
        xy_panel(&p[0], "agent peak RSS", "Nodes", "MiB", true, &[("weft-agent".into(), rss)])?;
        let cold: Vec<(f64, Vec<f64>)> =
            runs.iter().map(|r| (x(r), vec![r["programmed_ms"].as_f64().unwrap_or(0.0) / 1000.0])).collect();
        let floor: Vec<(f64, Vec<f64>)> =
            runs.iter().map(|r| (x(r), vec![r["floor_ms"].as_f64().unwrap_or(0.0) / 1000.0])).collect();
        xy_panel(
            &p[1],
            "cold start to all programmed",
            "Nodes",
            "s",
            true,
            &[("weft-agent".into(), cold), ("ip -batch (floor)".into(), floor)],
        )?;
        let q = |r: &Value, p: f64| {
            let mut v: Vec<std::time::Duration> =
                nums(&r["add_ms"]).iter().map(|m| std::time::Duration::from_secs_f64(m / 1000.0)).collect();
            v.sort();
            stats::percentile(&v, p).as_secs_f64() * 1000.0
        };
        let p50: Vec<(f64, Vec<f64>)> = runs.iter().map(|r| (x(r), vec![q(r, 0.5)])).collect();
        let p99: Vec<(f64, Vec<f64>)> =
            runs.iter().map(|r| (x(r), nums(&r["add_ms"]).into_iter().chain([q(r, 0.99)]).collect())).collect();
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
    let _ = writeln!(
        md,
        "| Nodes | Nodes created in (s) | cold start (ms) | ip -batch floor (ms) | add p50 / p99 (ms) | delete p50 / p99 (ms) | peak RSS (MiB) | idle CPU (% of a core) |\n|---|---|---|---|---|---|---|---|"
    );
    for r in &runs {
        let result = |m: &str| {
            r["results"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["metric"].as_str().is_some_and(|s| s.starts_with(m))))
                .and_then(|x| x["value"].as_f64())
                .unwrap_or(0.0)
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.0} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} | {:.2} |",
            r["nodes"],
            r["create_nodes_seconds"].as_f64().unwrap_or(0.0),
            r["programmed_ms"].as_f64().unwrap_or(0.0),
            r["floor_ms"].as_f64().unwrap_or(0.0),
            result("Node added -> route in kernel, p50"),
            result("Node added -> route in kernel, p99"),
            result("Node deleted -> route gone, p50"),
            result("Node deleted -> route gone, p99"),
            r["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            result("idle CPU"),
        );
    }
    if let Some(big) = runs.last() {
        // Older agent-bench output held the slowest pass itself.
        let sp = &big["slowest_pass"];
        let (slowest, median) =
            if sp["slowest"].is_object() { (&sp["slowest"], &sp["median"]) } else { (sp, &Value::Null) };
        let breakdown = |p: &Value| {
            let us = |k: &str| p[k].as_f64().unwrap_or(0.0) / 1000.0;
            let stages = ["observe_us", "compute_us", "publish_us", "kernel_us", "nftables_us", "files_us"];
            let total: f64 = stages.iter().map(|s| us(s)).sum();
            let parts: Vec<String> = stages
                .iter()
                .map(|s| {
                    format!("{} {:.0} ms ({:.0}%)", s.trim_end_matches("_us"), us(s), us(s) / total.max(1e-9) * 100.0)
                })
                .collect();
            format!("{total:.0} ms in all — {}", parts.join(", "))
        };
        if slowest.is_object() {
            let _ = writeln!(
                md,
                "\n**Where the cost goes at {} Nodes** (the agent's own timing of each reconcile pass, from its debug log). The slowest pass, the cold one: {}.{} The cold start beyond its first pass is the initial LIST of all Nodes and the watch start.\n",
                big["nodes"],
                breakdown(slowest),
                if median.is_object() {
                    format!(
                        " The median pass ({} passes, mostly one Node change each): {}.",
                        sp["passes"],
                        breakdown(median)
                    )
                } else {
                    String::new()
                }
            );
            if let Some(by) = sp["by_wakeup"].as_object().filter(|m| !m.is_empty()) {
                let parts: Vec<String> = by
                    .iter()
                    .map(|(wakeup, v)| {
                        let n = v["passes"].as_f64().unwrap_or(0.0);
                        let ms = v["total_us"].as_f64().unwrap_or(0.0) / 1000.0;
                        format!("{wakeup}: {n:.0} passes, mean {:.1} ms", ms / n.max(1.0))
                    })
                    .collect();
                let _ = writeln!(md, "Every pass of that run by what woke it: {}.\n", parts.join("; "));
            }
        }
        let profile = &big["cold_profile"];
        if let Some(top) = profile["top"].as_array() {
            let _ = writeln!(
                md,
                "**CPU profile of the cold start at {} Nodes** (`perf record -F 999` on the agent from its start to the end of its first pass; self time, no call graphs). The kernel's share, on the agent's behalf: {:.0}%.\n\n| share | where | function |\n|---:|---|---|",
                big["nodes"],
                profile["kernel_percent"].as_f64().unwrap_or(0.0)
            );
            for f in top {
                let _ = writeln!(
                    md,
                    "| {:.1}% | {} | `{}` |",
                    f["percent"].as_f64().unwrap_or(0.0),
                    if f["kernel"].as_bool() == Some(true) { "kernel" } else { "weft-agent" },
                    f["symbol"].as_str().unwrap_or("?").replace('|', "\\|")
                );
            }
            md.push('\n');
        }
    }
    Ok(())
}

fn cni_section(data: &Path, out: &Path, md: &mut String) -> Fallible<()> {
    let mut runs: Vec<CniRun> = std::fs::read_dir(data)
        .map_err(|e| format!("read {}: {e}", data.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("cni-"))
        .map(|e| read_typed(&e.path()))
        .collect::<Fallible<_>>()?;
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
fn pods_section(data: &Path, md: &mut String) {
    let Some(v) = read_json(&data.join("pods.json")) else {
        let _ =
            writeln!(md, "No bench/pod-startup.sh results in this run (it needs the local cluster, e2e/cluster).\n");
        return;
    };
    let _ = writeln!(
        md,
        "On the local cluster (e2e/cluster, two workers, IPv4), {} bare pods (the pause image, already on the nodes) created in one `kubectl create` per round, {} rounds per CNI, alternating weft and `ptp` + `host-local` (a conflist sorting before weft's on every worker, the same chained `portmap`). Creation to Ready per pod, both stamped by one watch as its events arrive. The CNI share: containerd's `sandbox_create_network` (network namespace + CNI ADD) over kubelet's `run_podsandbox`, summed over each CNI's rounds. Method: bench/pod-startup.sh.\n",
        v["pods"], v["rounds"]
    );
    let _ = writeln!(
        md,
        "| CNI | creation → Ready p50 | p99 | min–max | network setup per sandbox (mean) | share of RunPodSandbox |\n|---|---:|---:|---:|---:|---:|"
    );
    let mut p = std::collections::BTreeMap::new();
    for cni in ["weft", "ptp"] {
        let c = &v["cnis"][cni];
        let ms: Vec<std::time::Duration> =
            nums(&c["ready_ms"]).iter().map(|m| std::time::Duration::from_secs_f64(m.max(0.0) / 1000.0)).collect();
        let q = |x: f64| stats::percentile(&ms, x).as_secs_f64() * 1000.0;
        let t = |k: &str, f: &str| c["timers"][k][f].as_f64().unwrap_or(0.0);
        let (net, pod) = ((t("create_network", "sum"), t("create_network", "count")), t("run_podsandbox", "sum"));
        let mean = if net.1 > 0.0 { format!("{:.0} ms", net.0 / net.1 * 1000.0) } else { "–".into() };
        let share = if pod > 0.0 { format!("{:.0} %", net.0 / pod * 100.0) } else { "–".into() };
        let (lo, _, hi) = spread(&nums(&c["ready_ms"]));
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
    let meta = read_json(&data.join("meta.json")).unwrap_or(Value::Null);
    let loads: Vec<f64> = nums(&meta["loadavg_1min"]);
    let (_, load_med, load_max) = spread(&loads);
    // The benchmarks themselves keep the load near 2 on 2 CPUs.
    let busy = load_max > 3.0;
    let pods_load = nums(&meta["loadavg_1min_pod_startup"]);
    let mut md = String::new();
    let _ = writeln!(md, "# weft benchmark report\n");
    let _ = writeln!(
        md,
        "Produced by `bench/run{}` on {} (kernel {}, {} CPUs), in {:.0} min. Nothing here is pass/fail: weft and its references run on the same kernel in the same run, and the ratios are what to read. Every point is the median of its repetitions and every bar the min–max range.\n",
        if meta["quick"].as_bool() == Some(true) { " --quick" } else { "" },
        meta["date"].as_str().unwrap_or("?"),
        meta["kernel"].as_str().unwrap_or("?"),
        meta["cpus"],
        meta["minutes"].as_f64().unwrap_or(0.0),
    );
    let _ = writeln!(
        md,
        "Load average (1 min) sampled every 30 s during the run{}: median {load_med:.1}, max {load_max:.1}.{}{}\n",
        if pods_load.is_empty() { "" } else { ", pod start-up apart" },
        if pods_load.is_empty() {
            String::new()
        } else {
            format!(" During pod start-up, whose own pods load the machine: max {:.1}.", spread(&pods_load).2)
        },
        if busy {
            " **The machine was shared with parallel builds and tests during this run (load average above 3)**: absolute numbers are lower and noisier than on an idle machine; ratios within one setup pair are measured seconds apart and suffer less."
        } else {
            ""
        }
    );
    if let Ok(notes) = std::fs::read_to_string(data.join("notes.txt")) {
        for n in notes.lines().filter(|l| !l.trim().is_empty()) {
            let _ = writeln!(md, "- **Note:** {n}");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Data plane: pod to pod across nodes\n");
    if let Some(v) = read_json(&data.join("net.json")) {
        let net = Net { v };
        let _ = writeln!(
            md,
            "Two node namespaces on the test underlay (segment A 198.51.100.0/24 as a bridge; for \"two segments\" node 2 on 203.0.113.0/25 behind a router namespace), underlay MTU {}, one pod on each. `bare`: node to node on the underlay. `hand routes` / `hand vxlan`: pods and peers wired by `ip`/`bridge` commands exactly as weft would (veth, /32 + /128, pinned neighbours; host routes, or `weft.vxlan` VNI 1 port 8472 with neighbour + FDB entries, MTU underlay − 50), weft absent. `weft …`: the real `weft-agent` on each node against a real kube-apiserver programs the peers, the real `weft` plugin wires the pods (NetworkPolicy enabled, as by default). These setups run one after another on fresh namespaces, 2 s x 2 repetitions each: an overview (1 and 4 streams, cubic and bbr, latency). What weft costs over the kernel, and each of its parts, is measured paired on the same namespaces in the next section. VXLAN transmit checksum offload: the agent's choice on this kernel is {}. Congestion control is set per socket (`iperf3 -C`): a test namespace cannot select cubic as its default here, because the machine's `tcp_allowed_congestion_control` (which only its own namespace can change) lists reno and bbr.\n",
            net.v["underlay_mtu"],
            if net.v["chosen_offload"].as_bool() == Some(true) { "on" } else { "off" }
        );
        for f in net.v["failed"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "- **Setup failed and was skipped:** {} / {}: {}",
                f["topology"].as_str().unwrap_or("?"),
                f["setup"].as_str().unwrap_or("?"),
                f["error"].as_str().unwrap_or("?")
            );
        }
        if net.v["failed"].as_array().is_some_and(|a| !a.is_empty()) {
            let _ = writeln!(md);
        }
        net_figures(&net, &figures, &mut md)?;
        net_tables(&net, &mut md, busy);
        paired_section(&net, &mut md);
        profile_table(&net, &mut md);
        let _ = write!(
            md,
            "**MTU.** Pods get one MTU for every destination: with `auto`, the underlay's (a peer behind VXLAN is reached through the MSS clamp and the route's MTU){}. `hand routes, VXLAN MTU` is `hand routes` with the pods at the VXLAN MTU (underlay − 50), which measures what that smaller MTU alone would cost.",
            net.rows()
                .into_iter()
                .find(|r| r["topology"] == "one segment" && r["setup"] == "weft auto")
                .and_then(|r| r["path"].as_array())
                .map(|p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" / "))
                .map_or(String::new(), |p| format!(
                    " (in this run node 1 sends to the peer pod through `{p}`, IPv4 / IPv6)"
                ))
        );
        for (f, cc) in net.combos() {
            for (key, streams) in [("gbps_1", "1 stream"), ("gbps_4", "4 streams")] {
                let auto_mtu = net.row("one segment", "weft auto", &f, &cc).map(|r| r["pod_mtu"].clone());
                let auto_small = auto_mtu.is_some_and(|m| m != net.v["underlay_mtu"]);
                if let Some((mtu, weft)) = mtu_cost(&net, "one segment", "weft auto", &f, &cc, key) {
                    let _ = write!(
                        md,
                        " {f} {cc} {streams}: hand routes at the VXLAN MTU {mtu:.3}x hand routes at {}",
                        net.v["underlay_mtu"]
                    );
                    // Only a run whose `auto` pods had the VXLAN MTU compares them at it.
                    let _ = if auto_small {
                        write!(md, "; weft auto {weft:.3}x hand routes at the VXLAN MTU.")
                    } else {
                        write!(md, ".")
                    };
                }
            }
        }
        let _ = writeln!(md, "\n");
    } else {
        let _ = writeln!(md, "No net-bench results in this run.\n");
    }
    let _ = writeln!(md, "## NetworkPolicy\n");
    if let Some(v) = read_json(&data.join("net.json")) {
        policy_dataplane(&Net { v }, &mut md);
    }
    if let Some(v) = read_json(&data.join("policy.json")) {
        let _ = writeln!(md, "### Programming policy changes\n");
        let _ = writeln!(
            md,
            "`policy-bench`: one weft-agent against a real kube-apiserver holding {} pods ({} on the agent's node) in {} namespaces and {} policies (API filled in {:.0} s); each change made alone, {} samples per kind, timed from the API request to the nftables commit seen by a netlink listener in the node namespace. Method: bench/POLICY.md.\n",
            v["pods"],
            v["local_pods"],
            v["namespaces"],
            v["policies"],
            v["setup_seconds"].as_f64().unwrap_or(0.0),
            v["samples"]
        );
        let _ = writeln!(md, "| metric | value | target |\n|---|---|---|");
        for r in v["results"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {} |",
                r["metric"].as_str().unwrap_or(""),
                r["value"].as_f64().unwrap_or(0.0),
                r["target"].as_str().unwrap_or("")
            );
        }
        let _ = writeln!(md);
    } else {
        let _ = writeln!(md, "No policy-bench results in this run.\n");
    }
    let _ = writeln!(md, "## Control plane: weft-agent at scale\n");
    agent_section(data, &figures, &mut md)?;
    let _ = writeln!(md, "## CNI plugin: ADD and DEL\n");
    cni_section(data, &figures, &mut md)?;
    let _ = writeln!(md, "## Pod start-up through kubelet\n");
    pods_section(data, &mut md);
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

    use serde_json::json;

    fn net(unselected: Option<Value>) -> Net {
        let row = |setup: &str, gbps: f64| json!({"topology": "one segment", "setup": setup, "family": "IPv4", "cc": "cubic", "gbps_1": [gbps]});
        let mut policies = row("weft routes, 1000 policies", 7.0);
        if let Some(u) = unselected {
            policies["unselected"] = u;
        }
        Net { v: json!({"rows": [row("weft routes", 10.0), policies]}) }
    }

    #[test]
    fn auto_at_the_vxlan_mtu_is_judged_against_hand_routes_at_that_mtu() {
        let row = |setup: &str, mtu: u32, gbps: f64| json!({"topology": "one segment", "setup": setup, "family": "IPv4", "cc": "cubic", "pod_mtu": mtu, "gbps_1": [gbps]});
        let net = Net {
            v: json!({"rows": [row("hand routes", 1500, 30.0), row("hand routes, VXLAN MTU", 1450, 18.0), row("weft auto", 1450, 12.0)]}),
        };
        let (mtu, weft) =
            mtu_cost(&net, "one segment", "weft auto", "IPv4", "cubic", "gbps_1").expect("both references");
        assert!((mtu - 0.6).abs() < 1e-9 && (weft - 12.0 / 18.0).abs() < 1e-9, "{mtu} {weft}");
        assert_eq!(mtu_cost(&net, "one segment", "weft auto", "IPv6", "cubic", "gbps_1"), None);
    }

    #[test]
    fn the_policy_target_is_judged_on_the_paired_ratio_when_the_run_has_one() {
        let mut md = String::new();
        policy_dataplane(&net(Some(json!({"gbps_1": [7.2]}))), &mut md);
        assert!(md.contains("| 0.700 | 7.20 (7.20–7.20) | 0.972 | ≥ 0.95 (met) |"), "{md}");
        assert!(md.contains("Every NetworkPolicy data-plane target is met"), "{md}");

        let mut md = String::new();
        policy_dataplane(&net(None), &mut md);
        assert!(md.contains("| 0.700 | – | – | ≥ 0.95 (**missed**) |"), "{md}");
        assert!(md.contains("0.700x weft routes (target ≥ 0.95)"), "{md}");
    }
    /// A paired routes group: weft 0.9x no netfilter every round, 0.95x
    /// conntrack only with ±1 % of noise, the pods isolated 0.99x weft.
    fn paired_group() -> Value {
        let mut samples = Vec::new();
        for r in 0..4usize {
            let noise = if r % 2 == 0 { 1.01 } else { 0.99 };
            for (v, g) in [
                ("no netfilter", 20.0),
                ("conntrack only (empty nat chains)", 18.0 / 0.95 / noise),
                ("weft", 18.0),
                ("weft, 20 policies, pods isolated", 18.0 * 0.99),
            ] {
                samples.push(
                    json!({"round": r, "variant": v, "gbps": g, "cpu_s_per_gb": 10.0 / g, "conn_per_s": 100.0 * g}),
                );
            }
        }
        json!({"backend": "routes", "family": "IPv4", "bytes": 2e9, "conn_secs": 0.5, "policies": 20, "min_rounds": 4,
            "adaptive_pairs": 0, "seconds": 60.0, "budget_s": 75.0, "target_half_width": 0.03,
            "variants": ["no netfilter", "conntrack only (empty nat chains)", "weft", "weft, 20 policies, pods isolated"],
            "comparisons": [["weft", "no netfilter"], ["weft", "conntrack only (empty nat chains)"], ["weft, 20 policies, pods isolated", "weft"]],
            "samples": samples, "profiles": {"weft": {"under_nf_hook_slow": 0.2}, "no netfilter": {"under_nf_hook_slow": 0.05}},
            "crossings": null, "errors": [{"variant": "weft − masquerade chain", "error": "no chain"}]})
    }

    #[test]
    fn paired_rows_show_the_ratio_its_interval_and_the_pairs() {
        let net = Net { v: json!({"rows": [], "paired": [paired_group()]}) };
        let mut md = String::new();
        paired_section(&net, &mut md);
        // A constant ratio has a zero-width interval; CPU per byte is its inverse.
        assert!(md.contains("| weft | no netfilter | 0.900 [0.900–0.900] | 1.111 [1.111–1.111] | 0.900 [0.900–0.900] | 4 | 18.00 | 0.56 |"), "{md}");
        let conntrack = md.lines().find(|l| l.starts_with("| weft | conntrack only")).expect("the conntrack row");
        assert!(conntrack.contains("| 0.950 [0.9") && conntrack.contains("| 4 |"), "{conntrack}");
        assert!(md.contains("**weft − masquerade chain:** no chain"), "{md}");
        assert!(md.contains("routes IPv4, throughput: weft 0.950x conntrack only"), "{md}");
        assert!(md.contains("target ≥ 0.970: **missed**"), "{md}");
        // Lower CPU per byte is better: 1/0.95 misses ≤ 1/0.97.
        assert!(md.contains("CPU per GB: weft 1.053x conntrack only"), "{md}");
    }

    #[test]
    fn verdicts_say_when_the_interval_straddles_the_threshold() {
        let ci = |ratio, low, high| stats::RatioCi { ratio, low, high, n: 5 };
        assert_eq!(verdict(ci(0.99, 0.98, 1.0), 0.97, false), "met");
        assert_eq!(verdict(ci(0.98, 0.96, 1.0), 0.97, false), "met (interval straddles)");
        assert_eq!(verdict(ci(0.96, 0.94, 0.98), 0.97, false), "**missed** (interval straddles)");
        assert_eq!(verdict(ci(1.10, 1.08, 1.12), 1.0 / 0.97, true), "**missed**");
        assert_eq!(fmt_ci(Some(ci(0.9, 0.8, 1.0)), 0.03), "0.900 [0.800–1.000] (wide)");
        assert_eq!(fmt_ci(None, 0.03), "–");
    }

    #[test]
    fn the_policy_targets_come_from_the_paired_group_when_the_run_has_one() {
        let net = Net { v: json!({"rows": [], "paired": [paired_group()]}) };
        let mut md = String::new();
        policy_dataplane(&net, &mut md);
        assert!(md.contains("`weft, 20 policies, pods isolated` over `weft`"), "{md}");
        assert!(md.contains("| routes IPv4 | throughput, 1 stream | 0.990 [0.990–0.990] | ≥ 0.95: met |"), "{md}");
        let cause = netfilter_cause(&net, "IPv4", "cubic", "gbps_1").expect("a cause from the paired group");
        assert!(
            cause.contains("0.900 [0.900–0.900] `no netfilter`") && cause.contains("20.0% of the profiled CPU"),
            "{cause}"
        );
    }
    #[test]
    fn paired_profiles_name_their_top_and_their_netfilter_functions() {
        let mut g = paired_group();
        g["profiles"] = json!({"weft": {"gbps": 10.0, "under_nf_hook_slow": 0.2, "event": "cpu-clock:ppp",
            "classes": {"netfilter": 0.1, "other": 0.9},
            "top": [["_copy_to_iter", 0.25]], "top_netfilter": [["nft_do_chain", 0.05], ["nf_conntrack_in", 0.02]]}});
        let net = Net { v: json!({"rows": [], "paired": [g]}) };
        let mut md = String::new();
        profile_table(&net, &mut md);
        assert!(
            md.contains("| paired routes, IPv4: weft: TCP 1 stream | 10.00 Gbit/s | 20.0% | 10.0% | 90.0% | `_copy_to_iter` 25.0% | `nft_do_chain` 5.0%, `nf_conntrack_in` 2.0% |"),
            "{md}"
        );
    }
}
