//! bench-report's data-plane section (net-bench's setups measured one
//! after another, its figures, tables and targets, the CPU profiles) and
//! the NetworkPolicy data-plane targets.

use std::fmt::Write as _;
use std::path::Path;

use weft_bench::results::{NetRow, NetRun, NetSamples, RowMetric, SystemProfile};

use crate::report_paired::{netfilter_cause, paired_policies, paired_section};
use crate::report_plot::{Fallible, Series, category_panel, figure, fmt_spread, spread};

/// The data-plane section: the setups, their figures and tables, the
/// paired groups, the profiles, and what the MTU costs.
pub(crate) fn net_section(net: &NetRun, figures: &Path, md: &mut String, busy: bool) -> Fallible<()> {
    let _ = writeln!(
        md,
        "Two node namespaces on the test underlay (segment A 198.51.100.0/24 as a bridge; for \"two segments\" node 2 on 203.0.113.0/25 behind a router namespace), underlay MTU {}, one pod on each. `bare`: node to node on the underlay. `hand routes` / `hand vxlan`: pods and peers wired by `ip`/`bridge` commands exactly as weft would (veth, /32 + /128, pinned neighbours; host routes, or `weft.vxlan` VNI 1 port 8472 with neighbour + FDB entries, MTU underlay − 50), weft absent. `weft …`: the real `weft-agent` on each node against a real kube-apiserver programs the peers, the real `weft` plugin wires the pods (NetworkPolicy enabled, as by default). These setups run one after another on fresh namespaces, 2 s x 2 repetitions each: an overview (1 and 4 streams, cubic and bbr, latency). What weft costs over the kernel, and each of its parts, is measured paired on the same namespaces in the next section. VXLAN transmit checksum offload: the agent's choice on this kernel is {}. Congestion control is set per socket (`iperf3 -C`): a test namespace cannot select cubic as its default here, because the machine's `tcp_allowed_congestion_control` (which only its own namespace can change) lists reno and bbr. {}\n",
        net.underlay_mtu,
        if net.chosen_offload { "on" } else { "off" },
        placement(net)
    );
    for f in &net.failed {
        let _ = writeln!(md, "- **Setup failed and was skipped:** {} / {}: {}", f.topology, f.setup, f.error);
    }
    if !net.failed.is_empty() {
        let _ = writeln!(md);
    }
    net_figures(net, figures, md)?;
    net_tables(net, md, busy);
    paired_section(net, md);
    profile_table(net, md);
    mtu_paragraph(net, md);
    Ok(())
}

/// Where the two ends of every measurement ran.
fn placement(net: &NetRun) -> String {
    match net.pinned_cpus {
        Some([client, server]) => format!(
            "Every client (iperf3, the connection and latency loops) ran bound to CPU {client} and every server to CPU {server} (`iperf3 -A`, `sched_setaffinity`), one placement for every setup. It fixes one variable but not the spread: on the 2-CPU VM this report is made on, one setup's transfers fall into a slow and a fast mode whatever the placement (bench/README.md, \"CPU placement\"), while its new-connection rate does not."
        ),
        None => "Clients and servers ran where the scheduler put them (the machine lacks the CPUs `--cpus` names, or the run predates placement).".into(),
    }
}

/// What the pods' one MTU costs where every peer is routed directly.
fn mtu_paragraph(net: &NetRun, md: &mut String) {
    let _ = write!(
        md,
        "**MTU.** Pods get one MTU for every destination: with `auto`, the underlay's (a peer behind VXLAN is reached through the MSS clamp and the route's MTU){}. `hand routes, VXLAN MTU` is `hand routes` with the pods at the VXLAN MTU (underlay − 50), which measures what that smaller MTU alone would cost.",
        net.rows
            .iter()
            .find(|r| r.topology == "one segment" && r.setup == "weft auto")
            .and_then(|r| r.notes.path.as_ref())
            .map(|p| p.join(" / "))
            .map_or(String::new(), |p| format!(
                " (in this run node 1 sends to the peer pod through `{p}`, IPv4 / IPv6)"
            ))
    );
    for (f, cc) in net.combos() {
        for (key, streams) in [(RowMetric::Gbps1, "1 stream"), (RowMetric::Gbps4, "4 streams")] {
            let auto_mtu = net.row("one segment", "weft auto", &f, &cc).map(|r| r.pod_mtu);
            // Only a run whose `auto` pods had the VXLAN MTU compares them at it.
            let auto_small = auto_mtu.is_some_and(|m| m != net.underlay_mtu);
            if let Some((mtu, weft)) = mtu_cost(net, "one segment", "weft auto", &f, &cc, key) {
                let _ = write!(
                    md,
                    " {f} {cc} {streams}: hand routes at the VXLAN MTU {mtu:.3}x hand routes at {}",
                    net.underlay_mtu
                );
                let _ = if auto_small {
                    write!(md, "; weft auto {weft:.3}x hand routes at the VXLAN MTU.")
                } else {
                    write!(md, ".")
                };
            }
        }
    }
    let _ = writeln!(md, "\n");
}

/// Whether a setup is a diagnostic variant of `weft routes` (nftables
/// removed, NetworkPolicies loaded): compared with its references, but
/// judged against targets of its own, not the data-plane ones.
fn diagnostic(setup: &str) -> bool {
    setup.ends_with(", no nftables") || setup.ends_with(" policies")
}

/// The `weft routes, N policies` setup of the run (older net-bench
/// output), if it has one.
fn policy_setup(net: &NetRun, topo: &str) -> Option<String> {
    net.setups(topo).into_iter().find(|s| s.starts_with("weft routes, ") && s.ends_with(" policies"))
}

/// The median of `key` in `a` over `b`'s.
fn ratio_of(a: &NetSamples, b: &NetSamples, key: RowMetric) -> Option<f64> {
    let (x, y) = (spread(a.values(key)).1, spread(b.values(key)).1);
    (!a.values(key).is_empty() && y > 0.0).then(|| x / y)
}

/// What the VXLAN MTU costs on the routes path in this run, from the
/// `hand routes, VXLAN MTU` reference: (hand routes at that MTU / hand
/// routes at the underlay's, `setup` / hand routes at that MTU).
fn mtu_cost(net: &NetRun, topo: &str, setup: &str, f: &str, cc: &str, key: RowMetric) -> Option<(f64, f64)> {
    let small = &net.row(topo, "hand routes, VXLAN MTU", f, cc)?.samples;
    let mtu = ratio_of(small, &net.row(topo, "hand routes", f, cc)?.samples, key)?;
    let weft = ratio_of(&net.row(topo, setup, f, cc)?.samples, small, key)?;
    Some((mtu, weft))
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

/// A figure of one panel per topology, the setups on x.
struct SetupFigure<'a> {
    name: String,
    caption: String,
    /// After the topology in each panel's title.
    title: &'a str,
    y_label: &'a str,
}

impl SetupFigure<'_> {
    /// Draws it with `series(topology, setups)` in each panel, and links it from `md`.
    fn draw(
        &self,
        net: &NetRun,
        out: &Path,
        md: &mut String,
        series: impl Fn(&str, &[String]) -> Vec<Series>,
    ) -> Fallible<()> {
        let topos = net.topologies();
        figure(&out.join(&self.name), (1400, 1100), topos.len(), 1, &self.caption, |panels| {
            for (topo, area) in topos.iter().zip(panels) {
                let cats = net.setups(topo);
                category_panel(area, &format!("{topo}: {}", self.title), self.y_label, &cats, &series(topo, &cats))?;
            }
            Ok(())
        })?;
        let _ = writeln!(md, "![{}](report/{})\n\n*{}*\n", self.name, self.name, self.caption.replace('\n', " "));
        Ok(())
    }
}

/// Per family (cubic), one series per `(label, metric)` that has values.
fn family_series(net: &NetRun, topo: &str, cats: &[String], parts: &[(&str, RowMetric)]) -> Vec<Series> {
    let mut series = Vec::new();
    for f in ["IPv4", "IPv6"] {
        for (label, m) in parts {
            let per: Vec<Vec<f64>> = cats
                .iter()
                .map(|s| net.row(topo, s, f, "cubic").map(|r| r.samples.values(*m).to_vec()).unwrap_or_default())
                .collect();
            if per.iter().any(|v| !v.is_empty()) {
                series.push(Series { name: format!("{f} {label}"), per_category: per });
            }
        }
    }
    series
}

fn net_figures(net: &NetRun, out: &Path, md: &mut String) -> Fallible<()> {
    let (secs, reps) = (net.secs, net.reps);
    // Older net-bench output ran request/response for `secs` too.
    let rr_secs = net.rr_secs.unwrap_or(secs);
    for (streams, m) in [(1, RowMetric::Gbps1), (4, RowMetric::Gbps4)] {
        let title = format!("throughput, {streams} stream(s)");
        let fig = SetupFigure {
            name: format!("net-throughput-{streams}.png"),
            caption: format!(
                "iperf3 TCP, {streams} stream(s), pod to pod across two node namespaces (bare: node to node), {secs} s x {reps} repetitions per point.\nPoint: median of the repetitions; bar: min to max. Same kernel, same run; setups run one after another on fresh namespaces."
            ),
            title: &title,
            y_label: "Gbit/s",
        };
        fig.draw(net, out, md, |topo, cats| {
            net.combos()
                .iter()
                .map(|(f, cc)| Series {
                    name: format!("{f} {cc}"),
                    per_category: cats
                        .iter()
                        .map(|s| net.row(topo, s, f, cc).map(|r| r.samples.values(m).to_vec()).unwrap_or_default())
                        .collect(),
                })
                .collect()
        })?;
    }
    let latency = SetupFigure {
        name: "net-latency.png".into(),
        caption: format!(
            "TCP request/response, 64-byte messages ping-ponged over one connection (TCP_NODELAY) for {rr_secs} s, x {reps} repetitions, the namespace's default congestion control.\nPoint: median over repetitions of each repetition's p50 / p99 round trip; bar: min to max."
        ),
        title: "request/response round trip",
        y_label: "µs",
    };
    latency.draw(net, out, md, |topo, cats| {
        family_series(net, topo, cats, &[("p50", RowMetric::RrP50), ("p99", RowMetric::RrP99)])
    })?;
    let cpu = SetupFigure {
        name: "net-cpu.png".into(),
        caption: format!(
            "CPU per Gbit/s: iperf3's own CPU use (getrusage of the sending and the receiving iperf3 process, user + system, so kernel work done in their context),\ndivided by the throughput. 1 stream, cubic, {secs} s x {reps}. Point: median; bar: min to max. Softirq work done outside those processes is not counted."
        ),
        title: "CPU cores per Gbit/s",
        y_label: "cores / (Gbit/s)",
    };
    cpu.draw(net, out, md, |topo, cats| {
        family_series(net, topo, cats, &[("sender", RowMetric::CpuTx1), ("receiver", RowMetric::CpuRx1)])
    })
}

/// One table of the overview: a topology, family and congestion control.
struct Combo<'a> {
    topo: &'a str,
    family: &'a str,
    cc: &'a str,
}

impl Combo<'_> {
    fn row<'n>(&self, net: &'n NetRun, setup: &str) -> Option<&'n NetRow> {
        net.row(self.topo, setup, self.family, self.cc)
    }
}

/// The data-plane targets met and missed, each with its line.
#[derive(Default)]
struct Targets {
    met: Vec<String>,
    missed: Vec<String>,
}

impl Targets {
    fn write(&self, md: &mut String) {
        let _ = writeln!(md, "### Targets\n\nMet ({}):\n", self.met.len());
        for m in &self.met {
            let _ = writeln!(md, "- {m}");
        }
        let _ = writeln!(md, "\nMissed ({}), with the cause this run shows:\n", self.missed.len());
        for m in &self.missed {
            let _ = writeln!(md, "- {m}");
        }
        if self.missed.is_empty() {
            let _ = writeln!(md, "- none");
        }
        let _ = writeln!(md);
    }
}

fn med(v: &[f64]) -> f64 {
    spread(v).1
}

/// The median of `key` in `r` over `other`'s.
fn median_ratio(r: &NetRow, other: &NetRow, key: RowMetric) -> f64 {
    med(r.samples.values(key)) / med(other.samples.values(key)).max(1e-9)
}

fn net_tables(net: &NetRun, md: &mut String, busy: bool) {
    let _ = writeln!(
        md,
        "Each cell: median (min–max) of the repetitions. `/hand`: weft's median over the hand-programmed reference's (same kernel objects, same topology); `/bare`: over node-to-node on the underlay. Latency and the new-connection rate (conn/s: sequential connections, each connect, one byte each way, close) are measured once per family (listed in the cubic rows).\n"
    );
    let mut targets = Targets::default();
    for topo in net.topologies() {
        for (f, cc) in net.combos() {
            combo_table(net, &Combo { topo: &topo, family: &f, cc: &cc }, md, busy, &mut targets);
        }
    }
    targets.write(md);
}

/// One table of the overview, and the targets of its weft setups.
fn combo_table(net: &NetRun, c: &Combo, md: &mut String, busy: bool, targets: &mut Targets) {
    let (topo, f, cc) = (c.topo, c.family, c.cc);
    let _ = writeln!(md, "**{topo}, {f}, {cc}**\n");
    let _ = writeln!(
        md,
        "| setup | pod MTU | tx csum offload | 1 stream Gbit/s | 4 streams Gbit/s | 1 st. /hand | 1 st. /bare | 4 st. /hand | 4 st. /bare | RR p50 µs | RR p99 µs | conn/s | conn /hand | conn /bare | CPU tx / rx cores per Gbit/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let bare = c.row(net, "bare");
    for setup in net.setups(topo) {
        let Some(r) = c.row(net, &setup) else { continue };
        let reference = reference_for(topo, &setup).and_then(|h| c.row(net, h));
        table_row(md, &setup, r, reference, bare);
        if !setup.starts_with("weft") || diagnostic(&setup) {
            continue;
        }
        for key in [RowMetric::Gbps1, RowMetric::Gbps4] {
            let what = format!(
                "{topo}, {f}, {cc}, {setup}, {}",
                if key == RowMetric::Gbps1 { "1 stream" } else { "4 streams" }
            );
            if let Some(h) = reference {
                let x = median_ratio(r, h, key);
                let line = format!("{what}: {x:.3}x hand-programmed (target ≥ 0.97)");
                if x >= 0.97 {
                    targets.met.push(line);
                } else {
                    let mut causes = hand_causes(net, c, &setup, r, h, key);
                    if busy {
                        causes.push("machine shared with other work during the run".to_string());
                    }
                    targets.missed.push(format!(
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
                let x = median_ratio(r, b, key);
                let line = format!("{what}: {x:.3}x bare (target ≥ 0.85)");
                if x >= 0.85 {
                    targets.met.push(line);
                } else {
                    targets
                        .missed
                        .push(format!("{line}; two veth hops and forwarding in both nodes, not on the bare path"));
                }
            }
        }
        if let Some(h) = reference {
            rr_p99_target(&format!("{topo}, {f}, {setup}"), r, h, targets);
        }
    }
    let _ = writeln!(md);
}

/// The latency target: weft's request/response p99 no worse than
/// its hand-programmed reference's (rows without latency, the bbr ones,
/// have none to judge).
fn rr_p99_target(what: &str, r: &NetRow, h: &NetRow, targets: &mut Targets) {
    let (w, hand) = (r.samples.values(RowMetric::RrP99), h.samples.values(RowMetric::RrP99));
    if w.is_empty() || hand.is_empty() {
        return;
    }
    let line = format!(
        "{what}, request/response p99: {:.0} µs against the hand-programmed {:.0} µs (target: no worse)",
        med(w),
        med(hand)
    );
    if med(w) <= med(hand) {
        targets.met.push(line);
        return;
    }
    let ((lo, _, hi), (hlo, _, hhi)) = (spread(w), spread(hand));
    let cause = if lo <= hhi && hlo <= hi {
        "the min–max ranges overlap (within this run's noise)"
    } else {
        "each round trip crosses weft's chains in both nodes, twice; the paired groups price those parts per byte and per new connection, not per round trip"
    };
    targets.missed.push(format!("{line}; {cause}"));
}

/// One setup's line of an overview table.
fn table_row(md: &mut String, setup: &str, r: &NetRow, reference: Option<&NetRow>, bare: Option<&NetRow>) {
    let ratio =
        |other: Option<&NetRow>, key| other.map_or(String::new(), |o| format!("{:.3}", median_ratio(r, o, key)));
    let is_weft = setup.starts_with("weft");
    let has_conns = !r.samples.conn_per_s.is_empty();
    let offload = match r.offload {
        Some(true) => "on",
        Some(false) => "off",
        None => "–",
    };
    let v = |m| r.samples.values(m);
    let _ = writeln!(
        md,
        "| {setup} | {} | {offload} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} / {:.3} |",
        r.pod_mtu,
        fmt_spread(v(RowMetric::Gbps1), 2),
        fmt_spread(v(RowMetric::Gbps4), 2),
        if is_weft { ratio(reference, RowMetric::Gbps1) } else { String::new() },
        if setup != "bare" { ratio(bare, RowMetric::Gbps1) } else { String::new() },
        if is_weft { ratio(reference, RowMetric::Gbps4) } else { String::new() },
        if setup != "bare" { ratio(bare, RowMetric::Gbps4) } else { String::new() },
        fmt_spread(v(RowMetric::RrP50), 0),
        fmt_spread(v(RowMetric::RrP99), 0),
        fmt_spread(v(RowMetric::ConnPerS), 0),
        if is_weft && has_conns { ratio(reference, RowMetric::ConnPerS) } else { String::new() },
        if setup != "bare" && has_conns { ratio(bare, RowMetric::ConnPerS) } else { String::new() },
        med(v(RowMetric::CpuTx1)),
        med(v(RowMetric::CpuRx1)),
    );
}

/// Why a weft setup `r` misses its target against the hand-made reference
/// `h`, as far as this run shows: the MTU, the offload, the noise, and
/// else what the run measured of weft's nftables cost.
fn hand_causes(net: &NetRun, c: &Combo, setup: &str, r: &NetRow, h: &NetRow, key: RowMetric) -> Vec<String> {
    let mut causes = Vec::new();
    // With the MTU's cost measured, whatever weft loses against hand
    // routes at the same MTU still needs its own cause.
    let mut unexplained = false;
    if r.pod_mtu != h.pod_mtu {
        let cost = mtu_cost(net, c.topo, setup, c.family, c.cc, key);
        unexplained = cost.is_some_and(|(_, weft)| weft < 0.97);
        let measured = cost.map_or(String::new(), |(mtu, weft)| {
            format!(
                ": hand routes at MTU {} reach {mtu:.3}x hand routes at {} in this run, and {setup} {weft:.3}x hand routes at {}",
                r.pod_mtu, h.pod_mtu, r.pod_mtu
            )
        });
        causes.push(format!("pod MTU {} vs the reference's {}{measured}", r.pod_mtu, h.pod_mtu));
    }
    if r.offload != h.offload && h.offload.is_some() {
        causes.push("VXLAN transmit checksum offload differs from the reference's".to_string());
    }
    let (lo, _, hi) = spread(r.samples.values(key));
    let (hlo, _, hhi) = spread(h.samples.values(key));
    if lo <= hhi && hlo <= hi {
        causes.push("the min–max ranges overlap (within this run's noise)".to_string());
    }
    // MTU and offload explain a row by themselves; otherwise say
    // what the run measured of weft's nftables cost.
    if unexplained || causes.iter().all(|c| c.starts_with("the min–max")) {
        // `auto` on one segment reaches every peer directly: the routes path.
        let backend = if setup.contains("vxlan") { "vxlan" } else { "routes" };
        match netfilter_cause(net, backend, c.family, key) {
            Some(cause) => causes.push(format!("not MTU or offload: {cause}")),
            None if causes.is_empty() => causes.push("not MTU or offload: weft's forward path also crosses its nftables tables (masquerade and policy chains), which the hand setup lacks; not isolated in this run".to_string()),
            None => {}
        }
    }
    causes
}

/// The CPU profiles of the run (IPv4, cubic, one stream, one segment): per
/// setup, each class's share of the samples of the traffic's work.
fn profile_table(net: &NetRun, md: &mut String) {
    let _ = writeln!(md, "### Where the CPU goes: profiles\n");
    let rows = profile_rows(net);
    let Some((_, first)) = rows.first() else {
        let why = match (net.profiled, &net.profile_error) {
            (_, Some(e)) => format!("perf did not work here: {e}"),
            (false, _) => "not taken in a --quick run (net-bench --profile takes them)".to_string(),
            _ => "this run has none".to_string(),
        };
        let _ = writeln!(md, "No CPU profiles: {why}.\n");
        return;
    };
    let _ = writeln!(
        md,
        "`perf record -a -g -F 1999` over one iperf3 run (IPv4, cubic, 1 stream, one segment) per setup, and over one connection-rate run (new connections cross every rule that established packets skip); `perf report --children --sort comm,symbol`. Only the samples of iperf3, net-bench (the connection-rate client and server), ksoftirqd and softirq work interrupting idle (swapper) are counted, where this traffic's kernel work runs (other processes on the shared machine are left out). Classes by symbol name: netfilter = `nft_*`, `nf_*`, conntrack; tcp = `tcp*`, congestion control; copy = copies to and from user memory, `memcpy`/`memmove`; forward = veth, `dev_*`/`netif_*`/NAPI, IP receive/forward/output, FIB, neighbours, the lab's bridge, `skb_*`; vxlan, udp; other = everything else (scheduler, syscalls, allocator, locks). Each cell: the class's share of those samples (self time). `under nf_hook_slow`: the samples in netfilter hooks with their callees (from the call graph), the better measure of what netfilter costs, because{} samples land where interrupts are re-enabled (`_raw_spin_unlock_irqrestore`, `handle_softirqs`, in \"other\"), not in the function that ran with them off.\n",
        match first.event.as_str() {
            e if e.starts_with("cpu-clock") =>
                format!(" this machine has no hardware PMU (the event is `{e}`, a timer):"),
            e if !e.is_empty() => format!(" with event `{e}` some"),
            _ => " some".to_string(),
        }
    );
    let classes = class_order(first);
    let _ = writeln!(
        md,
        "| setup: traffic | measured while profiled | under `nf_hook_slow` | {} | top symbols | top netfilter symbols |\n|---|---|---|{}---|---|",
        classes.join(" | "),
        "---|".repeat(classes.len())
    );
    for (setup, p) in &rows {
        profile_row(md, setup, p, &classes);
    }
    let _ = writeln!(md);
}

/// Per setup, the iperf3 run's profile, then the connection-rate run's;
/// then the paired groups': weft, its references and each variant.
fn profile_rows(net: &NetRun) -> Vec<(String, &SystemProfile)> {
    let topo = "one segment";
    let mut rows: Vec<(String, &SystemProfile)> = Vec::new();
    for conn in [false, true] {
        for s in net.setups(topo) {
            let row = net.row(topo, &s, "IPv4", "cubic");
            if let Some(p) = row.and_then(|r| if conn { r.profile_conn.as_ref() } else { r.profile.as_ref() }) {
                let what = if conn { "new connections" } else { "TCP 1 stream" };
                rows.push((format!("{s}: {what}"), p));
            }
        }
    }
    for g in &net.paired {
        for (variant, p) in &g.profiles {
            rows.push((format!("paired {}, {}: {variant}: TCP 1 stream", g.backend, g.family), p));
        }
    }
    rows
}

/// The classes of a profile in net-bench's order (the JSON's keys are sorted).
fn class_order(p: &SystemProfile) -> Vec<String> {
    let order = ["netfilter", "tcp", "copy", "forward, veth, xmit", "vxlan, udp", "other"];
    let mut classes: Vec<String> = order
        .iter()
        .map(|c| c.to_string())
        .filter(|c| p.classes.contains_key(c))
        .chain(p.classes.keys().filter(|c| !order.contains(&c.as_str())).cloned())
        .collect();
    classes.dedup();
    classes
}

fn profile_row(md: &mut String, setup: &str, p: &SystemProfile, classes: &[String]) {
    let percent = |x: Option<f64>| x.map_or("–".into(), |x| format!("{:.1}%", x * 100.0));
    let cells: Vec<String> = classes.iter().map(|c| percent(p.classes.get(c).copied())).collect();
    let named = |top: &[(String, f64)]| -> String {
        let names: Vec<String> = top.iter().take(4).map(|(s, x)| format!("`{s}` {:.1}%", x * 100.0)).collect();
        if names.is_empty() { "–".into() } else { names.join(", ") }
    };
    let _ = writeln!(
        md,
        "| {setup} | {} | {} | {} | {} | {} |",
        match (p.gbps, p.conn_per_s) {
            (Some(g), _) => format!("{g:.2} Gbit/s"),
            (_, Some(c)) => format!("{c:.0} conn/s"),
            _ => "–".into(),
        },
        percent(p.under_nf_hook_slow),
        cells.join(" | "),
        named(&p.top),
        named(&p.top_netfilter)
    );
}

/// The NetworkPolicy data-plane targets: from the paired groups, or (older
/// net-bench output) `weft routes, N policies` over `weft routes`,
/// measured in the same run.
pub(crate) fn policy_dataplane(net: &NetRun, md: &mut String) {
    let topo = "one segment";
    let _ = writeln!(md, "### NetworkPolicy data plane\n");
    let Some(setup) = policy_setup(net, topo) else {
        match net.failed.iter().find(|f| f.setup.ends_with(" policies")) {
            Some(f) => {
                let _ = writeln!(md, "**Not measured: `{}` failed:** {}\n", f.setup, f.error);
            }
            None if paired_policies(net, md) => {}
            None => {
                let _ = writeln!(md, "Not measured in this run (net-bench has no paired group with policies).\n");
            }
        }
        return;
    };
    let first = net.rows.iter().find(|r| r.setup == setup);
    let notes = first.map(|r| &r.notes);
    let _ = writeln!(
        md,
        "net-bench's `{setup}`: the `weft routes` setup with {} NetworkPolicies in the API server and enforced by both agents (one isolating both pods, ingress and egress, allowing only the benchmark's TCP ports between them; the others selecting API-only pods on the same nodes, so all of them are in both kernels: {} per-policy chains on the nodes), measured seconds after `weft routes` in the same run. Before measuring, a port the policy does not allow was checked to be dropped: {}. **Paired**: in the same setup, each repetition is measured twice, with the two pods selected by the isolating policy and with its label taken off them (no policy selects them; the other policies stay loaded), in alternating order, after their verdict-map elements followed in both kernels. Setups run a minute apart on 2 cores differ by more than the policies cost, so the target is judged on the paired ratio when the run has it.\n",
        notes.and_then(|n| n.policies).map_or("null".to_string(), |n| n.to_string()),
        first.map_or("?".to_string(), |r| {
            let chains = r.notes.policy_chains.as_deref().unwrap_or_default();
            chains.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" and ")
        }),
        notes.and_then(|n| n.enforcement.as_deref()).unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "| family, cc | metric | weft routes | {setup} | ratio | same pods unselected (paired) | paired ratio | target |\n|---|---|---|---|---|---|---|---|"
    );
    let mut missed = Vec::new();
    for (f, cc) in net.combos() {
        let c = Combo { topo, family: &f, cc: &cc };
        let (Some(w), Some(p)) = (c.row(net, "weft routes"), c.row(net, &setup)) else { continue };
        policy_rows(net, &c, &setup, (w, p), md, &mut missed);
    }
    let _ = writeln!(md);
    if missed.is_empty() {
        let _ = writeln!(md, "Every NetworkPolicy data-plane target is met in this run.\n");
    } else {
        let _ = writeln!(md, "Missed:\n");
        for v in missed {
            let _ = writeln!(md, "- {v}");
        }
        let _ = writeln!(md);
    }
}

/// The rows of `weft routes, N policies` (`p`) over `weft routes` (`w`)
/// for one family; the targets missed go to `missed`.
fn policy_rows(
    net: &NetRun,
    c: &Combo,
    setup: &str,
    (w, p): (&NetRow, &NetRow),
    md: &mut String,
    missed: &mut Vec<String>,
) {
    let (f, cc) = (c.family, c.cc);
    for (key, what, target, digits) in [
        (RowMetric::Gbps1, "TCP 1 stream, Gbit/s", 0.95, 2),
        (RowMetric::Gbps4, "TCP 4 streams, Gbit/s", 0.95, 2),
        (RowMetric::ConnPerS, "new connections/s", 0.9, 0),
    ] {
        let Some(x) = ratio_of(&p.samples, &w.samples, key) else { continue };
        let unselected = p.unselected.as_ref();
        let paired = unselected.and_then(|u| ratio_of(&p.samples, u, key));
        let judged = paired.unwrap_or(x);
        let verdict = if judged >= target { "met" } else { "**missed**" };
        let _ = writeln!(
            md,
            "| {f}, {cc} | {what} | {} | {} | {x:.3} | {} | {} | ≥ {target} ({verdict}) |",
            fmt_spread(w.samples.values(key), digits),
            fmt_spread(p.samples.values(key), digits),
            match (paired, unselected) {
                (Some(_), Some(u)) => fmt_spread(u.values(key), digits),
                _ => "–".into(),
            },
            paired.map_or("–".into(), |r| format!("{r:.3}")),
        );
        if judged >= target {
            continue;
        }
        let base = match (paired, unselected) {
            (Some(_), Some(u)) => u,
            _ => &w.samples,
        };
        let cause = policy_cause(net, setup, &p.samples, base, key);
        missed.push(format!(
            "{f}, {cc}, {what}: {} (target ≥ {target}){}",
            match paired {
                Some(r) => format!("{r:.3}x the same pods unselected, {x:.3}x weft routes"),
                None => format!("{x:.3}x weft routes"),
            },
            if cause.is_empty() { String::new() } else { format!("; {}", cause.join("; ")) }
        ));
    }
}

/// What this run shows of why the policies cost more than their target:
/// the noise, and netfilter's share of the profiled CPU.
fn policy_cause(net: &NetRun, setup: &str, with: &NetSamples, base: &NetSamples, key: RowMetric) -> Vec<String> {
    let topo = "one segment";
    let mut cause = Vec::new();
    let (lo, _, hi) = spread(with.values(key));
    let (wlo, _, whi) = spread(base.values(key));
    if lo <= whi && wlo <= hi {
        cause.push("the min–max ranges overlap (within this run's noise)".to_string());
    }
    let conn = key == RowMetric::ConnPerS;
    let nf = |s: &str| {
        let r = net.row(topo, s, "IPv4", "cubic")?;
        if conn { r.profile_conn.as_ref() } else { r.profile.as_ref() }?.under_nf_hook_slow
    };
    if let (Some(a), Some(b)) = (nf(setup), nf("weft routes")) {
        cause.push(format!(
            "netfilter hooks (`nf_hook_slow` and callees) are {:.1}% of the profiled CPU with the policies vs {:.1}% without ({}, IPv4; profile table in the data-plane section)",
            a * 100.0,
            b * 100.0,
            if conn { "new connections" } else { "TCP 1 stream" }
        ));
    }
    cause
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report_paired::tests::{paired_group, run_of};
    use serde_json::{Value, json};

    fn rows(rows: Vec<Value>) -> NetRun {
        NetRun { rows: rows.into_iter().map(|r| serde_json::from_value(r).unwrap()).collect(), ..Default::default() }
    }

    /// `weft routes` and older output's `weft routes, 1000 policies`, with
    /// the same pods unselected if given.
    fn policies_run(unselected: Option<Value>) -> NetRun {
        let row = |setup: &str, gbps: f64| json!({"topology": "one segment", "setup": setup, "family": "IPv4", "cc": "cubic", "gbps_1": [gbps]});
        let mut policies = row("weft routes, 1000 policies", 7.0);
        if let Some(u) = unselected {
            policies["unselected"] = u;
        }
        rows(vec![row("weft routes", 10.0), policies])
    }

    #[test]
    fn auto_at_the_vxlan_mtu_is_judged_against_hand_routes_at_that_mtu() {
        let row = |setup: &str, mtu: u32, gbps: f64| json!({"topology": "one segment", "setup": setup, "family": "IPv4", "cc": "cubic", "pod_mtu": mtu, "gbps_1": [gbps]});
        let net = rows(vec![
            row("hand routes", 1500, 30.0),
            row("hand routes, VXLAN MTU", 1450, 18.0),
            row("weft auto", 1450, 12.0),
        ]);
        let (mtu, weft) =
            mtu_cost(&net, "one segment", "weft auto", "IPv4", "cubic", RowMetric::Gbps1).expect("both references");
        assert!((mtu - 0.6).abs() < 1e-9 && (weft - 12.0 / 18.0).abs() < 1e-9, "{mtu} {weft}");
        assert_eq!(mtu_cost(&net, "one segment", "weft auto", "IPv6", "cubic", RowMetric::Gbps1), None);

        let mut md = String::new();
        net_tables(&net, &mut md, false);
        assert!(md.contains("| weft auto | 1450 | – | 12.00 (12.00–12.00) | – | 0.400 |"), "{md}");
        assert!(
            md.contains("weft auto, 1 stream: 0.400x hand-programmed (target ≥ 0.97); pod MTU 1450 vs the reference's 1500: hand routes at MTU 1450 reach 0.600x hand routes at 1500 in this run, and weft auto 0.667x hand routes at 1450"),
            "{md}"
        );
    }

    #[test]
    fn request_response_p99_is_judged_against_the_reference_with_its_noise() {
        let row = |setup: &str, p99: &[f64]| json!({"topology": "one segment", "setup": setup, "family": "IPv4", "cc": "cubic", "gbps_1": [10.0], "rr_p99_us": p99});
        let net = rows(vec![row("hand routes", &[100.0, 120.0]), row("weft routes", &[130.0, 140.0])]);
        let mut md = String::new();
        net_tables(&net, &mut md, false);
        assert!(
            md.contains("one segment, IPv4, weft routes, request/response p99: 135 µs against the hand-programmed 110 µs (target: no worse); each round trip crosses"),
            "{md}"
        );
        let net = rows(vec![row("hand routes", &[100.0, 130.0]), row("weft routes", &[110.0, 140.0])]);
        let mut md = String::new();
        net_tables(&net, &mut md, false);
        assert!(md.contains("(target: no worse); the min–max ranges overlap"), "{md}");
        let net = rows(vec![row("hand routes", &[100.0]), row("weft routes", &[90.0])]);
        let mut md = String::new();
        net_tables(&net, &mut md, false);
        assert!(md.contains("- one segment, IPv4, weft routes, request/response p99: 90 µs against the hand-programmed 100 µs (target: no worse)\n"), "{md}");
    }

    #[test]
    fn the_policy_target_is_judged_on_the_paired_ratio_when_the_run_has_one() {
        let mut md = String::new();
        policy_dataplane(&policies_run(Some(json!({"gbps_1": [7.2]}))), &mut md);
        assert!(md.contains("| 0.700 | 7.20 (7.20–7.20) | 0.972 | ≥ 0.95 (met) |"), "{md}");
        assert!(md.contains("Every NetworkPolicy data-plane target is met"), "{md}");

        let mut md = String::new();
        policy_dataplane(&policies_run(None), &mut md);
        assert!(md.contains("| 0.700 | – | – | ≥ 0.95 (**missed**) |"), "{md}");
        assert!(md.contains("0.700x weft routes (target ≥ 0.95)"), "{md}");
    }

    #[test]
    fn the_policy_targets_come_from_the_paired_group_when_the_run_has_one() {
        let mut md = String::new();
        policy_dataplane(&run_of(vec![paired_group()]), &mut md);
        assert!(md.contains("`weft, 20 policies, pods isolated` over `weft`"), "{md}");
        assert!(md.contains("| routes IPv4 | throughput, 1 stream | 0.990 [0.990–0.990] | ≥ 0.95: met |"), "{md}");
    }

    #[test]
    fn paired_profiles_name_their_top_and_their_netfilter_functions() {
        let mut g = paired_group();
        g.profiles =
            serde_json::from_value(json!({"weft": {"gbps": 10.0, "under_nf_hook_slow": 0.2, "event": "cpu-clock:ppp",
            "classes": {"netfilter": 0.1, "other": 0.9},
            "top": [["_copy_to_iter", 0.25]], "top_netfilter": [["nft_do_chain", 0.05], ["nf_conntrack_in", 0.02]]}}))
            .unwrap();
        let mut md = String::new();
        profile_table(&run_of(vec![g]), &mut md);
        assert!(
            md.contains("| paired routes, IPv4: weft: TCP 1 stream | 10.00 Gbit/s | 20.0% | 10.0% | 90.0% | `_copy_to_iter` 25.0% | `nft_do_chain` 5.0%, `nf_conntrack_in` 2.0% |"),
            "{md}"
        );
        assert!(md.contains("this machine has no hardware PMU (the event is `cpu-clock:ppp`, a timer)"), "{md}");
        let mut md = String::new();
        profile_table(&NetRun::default(), &mut md);
        assert!(md.contains("No CPU profiles: not taken in a --quick run"), "{md}");
    }
}
