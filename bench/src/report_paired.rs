//! bench-report's view of net-bench's paired groups (`net_paired`): each
//! comparison's ratio with its 95 % interval, the hook crossings, and the
//! targets judged on them.

use std::fmt::Write as _;

use weft_bench::results::{Crossings, NetRun, PairedGroup, PairedMetric, RowMetric};
use weft_bench::stats;

use crate::report_plot::spread;

/// `0.912 [0.890–0.935]`, marked when wider than the group's target.
pub(crate) fn fmt_ci(ci: Option<stats::RatioCi>, target: f64) -> String {
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
pub(crate) fn verdict(ci: stats::RatioCi, threshold: f64, lower_is_better: bool) -> &'static str {
    let met = if lower_is_better { ci.ratio <= threshold } else { ci.ratio >= threshold };
    match (met, ci.low <= threshold && threshold <= ci.high) {
        (true, false) => "met",
        (true, true) => "met (interval straddles)",
        (false, true) => "**missed** (interval straddles)",
        (false, false) => "**missed**",
    }
}

/// What this run's data says about weft's cost on a `backend`'s path (for
/// a missed target): from that backend's paired group of family `f`, weft
/// over no netfilter and over the conntrack reference, with their
/// intervals; from the profiles, netfilter's share of the CPU with weft
/// and without.
pub(crate) fn netfilter_cause(net: &NetRun, backend: &str, f: &str, key: RowMetric) -> Option<String> {
    let g = net.group(backend, f)?;
    let m = if key == RowMetric::ConnPerS { PairedMetric::ConnPerS } else { PairedMetric::Gbps };
    let mut parts = Vec::new();
    for (_, over) in g.comparisons.iter().filter(|(a, _)| a == "weft") {
        if let Some(ci) = g.ratio_ci("weft", over, m) {
            parts.push(format!("paired, weft {backend} is {} `{over}`", fmt_ci(Some(ci), g.target_half_width)));
        }
    }
    let nf = |v: &str| g.profiles.get(v).and_then(|p| p.under_nf_hook_slow);
    if let (Some(w), Some(none)) = (nf("weft"), nf("no netfilter")) {
        parts.push(format!(
            "netfilter hooks (`nf_hook_slow` and callees) are {:.1}% of the profiled CPU with weft's rules vs {:.1}% with none",
            w * 100.0,
            none * 100.0
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The paired groups: per backend and family, each comparison's ratio
/// with its 95 % interval for throughput, CPU per byte and new
/// connections; the VXLAN hook crossings; the targets against the
/// conntrack reference, and the fast path's against no netfilter.
pub(crate) fn paired_section(net: &NetRun, md: &mut String) {
    let Some(first) = net.paired.first() else { return };
    let _ = writeln!(md, "### Paired: weft against its references, and what each part costs\n");
    let _ = writeln!(
        md,
        "One `weft routes` and one `weft vxlan` setup (agents against the API server, NetworkPolicy on, {} policies loaded and one of them isolating the benchmark pods). Their nftables rulesets are saved with the pods selected and unselected, the agents stopped (they leave the data plane in place), and each variant is loaded atomically in both node namespaces: `no netfilter` (empty ruleset: the kernel objects alone, as `hand routes`/`hand vxlan`), `conntrack only` (empty nat chains at prerouting, output and postrouting, as kube-proxy turns conntrack on), `weft` (the agent's ruleset, pods selected by no policy), and weft without one part at a time (`−`: a rule or chain deleted; conntrack by a `notrack` chain before its hook), or with one its own configuration lacks (`+`: the MSS clamp that `auto` renders, measured on `vxlan`'s table). Rounds measure every variant once in rotating order (forward, then backward), then the comparison with the widest interval gets extra pairs, alternating order, until every interval is within ±{:.0} % or the group's budget is spent. Each measurement: one iperf3 stream transferring a fixed size (cubic), then sequential new connections. **Ratios** with their 95 % intervals (`[low–high]`, *(wide)* when wider than the target). New connections: the geometric mean of the per-round ratios, paired log-ratio t interval (`pairs`: rounds holding both). Throughput: one stream on 2 cores is bimodal whatever the CPU placement (a variant reads 13–20 or 29–40 Gbit/s on the same namespaces), so a per-round ratio is often a ratio of two modes; throughput is compared by the fast mode, the ratio of each variant's 90th percentile over its transfers, and CPU per GB by the most efficient transfers, the 10th percentile, each with a percentile bootstrap interval (2,000 resamples of each side, fixed seed; `transfers`: the fewer of the two; at least 5 a side). **CPU per GB**: CPU-seconds of both iperf3 processes (getrusage) plus the machine's irq and softirq time (/proc/stat; this VM has no cycle counter for `perf stat`) over the transfer, per GB received; lower is better. The machine-wide busy time per GB is in the JSON (`machine_cpu_s_per_gb`), but on a shared machine it counts other work.\n",
        first.policies,
        first.target_half_width * 100.0
    );
    let mut targets = Vec::new();
    for g in &net.paired {
        group_table(g, md, &mut targets);
        group_notes(g, md);
    }
    if !targets.is_empty() {
        let _ = writeln!(md, "Targets against the references (paired):\n");
        for t in targets {
            let _ = writeln!(md, "- {t}");
        }
        let _ = writeln!(md);
    }
}

/// One group's table of comparisons; the verdicts of weft over the
/// conntrack reference and of the fast path over no netfilter go to
/// `targets`, a miss with what this run says it is made of.
fn group_table(g: &PairedGroup, md: &mut String, targets: &mut Vec<String>) {
    let (b, f, target) = (&g.backend, &g.family, g.target_half_width);
    let _ = writeln!(
        md,
        "**{b}, {f}** ({} GB per transfer, {} s of new connections; {} rounds + {} adaptive pairs in {:.0} s, budget {:.0} s)\n",
        g.bytes as f64 / 1e9,
        g.conn_secs,
        g.min_rounds,
        g.adaptive_pairs,
        g.seconds,
        g.budget_s
    );
    let _ = writeln!(
        md,
        "| variant | over | Gbit/s p90 ratio [95 % CI] | CPU per GB p10 ratio [95 % CI] | conn/s ratio [95 % CI] | pairs | transfers | Gbit/s (median) | CPU s/GB (median) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (a, over) in &g.comparisons {
        let ci = |m| g.ratio_ci(a, over, m);
        let median = |m| {
            let v: Vec<f64> = g.values(m).iter().filter(|s| s.1 == a).map(|s| s.2).collect();
            if v.is_empty() { "–".to_string() } else { format!("{:.2}", spread(&v).1) }
        };
        let transfers = |v: &str| g.samples.iter().filter(|s| s.variant == v).count();
        let _ = writeln!(
            md,
            "| {a} | {over} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_ci(ci(PairedMetric::Gbps), target),
            fmt_ci(ci(PairedMetric::CpuSPerGb), target),
            fmt_ci(ci(PairedMetric::ConnPerS), target),
            ci(PairedMetric::ConnPerS).map_or(0, |c| c.n),
            transfers(a).min(transfers(over)),
            median(PairedMetric::Gbps),
            median(PairedMetric::CpuSPerGb)
        );
        // The targets: weft over the conntrack reference on all
        // three metrics; the fast path over the kernel objects alone.
        let judged: &[(PairedMetric, &str, f64, bool)] = match (a.as_str(), over.as_str()) {
            ("weft", o) if o.starts_with("conntrack only") => &[
                (PairedMetric::Gbps, "throughput", 0.97, false),
                (PairedMetric::CpuSPerGb, "CPU per GB", 1.0 / 0.97, true),
                (PairedMetric::ConnPerS, "new connections", 0.95, false),
            ],
            ("weft + BPF fast path", "no netfilter") => {
                &[(PairedMetric::Gbps, "throughput", 1.0, false), (PairedMetric::CpuSPerGb, "CPU per GB", 1.0, true)]
            }
            _ => &[],
        };
        for &(m, what, threshold, lower) in judged {
            let Some(x) = ci(m) else { continue };
            let sign = if lower { "≤" } else { "≥" };
            let verdict = verdict(x, threshold, lower);
            let mut line = format!(
                "{b} {f}, {what}: {a} {:.3}x {over} [{:.3}–{:.3}], target {sign} {threshold:.3}: {verdict}",
                x.ratio, x.low, x.high
            );
            if verdict.contains("missed") {
                let _ = write!(line, "; {}", miss_cause(g, a, m, lower));
            }
            targets.push(line);
        }
    }
    if b == "vxlan" && !g.variants.iter().any(|v| v == "weft + BPF fast path") {
        targets.push(format!(
            "{b} {f}, the fast path: weft vxlan with it ≥ 1.000x hand vxlan: **missed**, not measured: the fast path has no program on `weft.vxlan` (routes only), so VXLAN traffic takes weft's tables"
        ));
    }
    let _ = writeln!(md);
}

/// What a missed target's gap is made of, from this run: for weft, the
/// cost of each part (weft without it over weft, largest gain first); for
/// the fast path, how much netfilter is left under it in the profiles.
fn miss_cause(g: &PairedGroup, variant: &str, m: PairedMetric, lower_is_better: bool) -> String {
    if variant != "weft" {
        let nf = |v: &str| g.profiles.get(v).and_then(|p| p.under_nf_hook_slow);
        let profiled = match (nf(variant), nf("weft")) {
            (Some(fast), Some(weft)) => format!(
                "netfilter (`nf_hook_slow` and callees) is {:.1}% of the profiled CPU under it against {:.1}% under weft's rules alone, so ",
                fast * 100.0,
                weft * 100.0
            ),
            _ => String::new(),
        };
        return format!(
            "{profiled}what is left is the program itself on every established packet (a conntrack lookup by kfunc, a FIB lookup, a redirect), not a part of weft's tables"
        );
    }
    let mut parts: Vec<(f64, String)> = g
        .comparisons
        .iter()
        .filter(|(a, over)| over == "weft" && a.starts_with("weft − "))
        .filter_map(|(a, _)| {
            let ci = g.ratio_ci(a, "weft", m)?;
            let gain = if lower_is_better { 1.0 - ci.ratio } else { ci.ratio - 1.0 };
            let part = a.trim_start_matches("weft − ");
            Some((gain, format!("{part} {:+.1} % [{:.3}–{:.3}]", gain * 100.0, ci.low, ci.high)))
        })
        .collect();
    if parts.is_empty() {
        return "no part of weft was removed in this run".into();
    }
    parts.sort_by(|x, y| y.0.total_cmp(&x.0));
    let listed: Vec<String> = parts.into_iter().map(|(_, p)| p).collect();
    format!(
        "what each part gives back when removed from weft, one at a time (+: better without it; ratio interval): {}; each of weft's base chains also costs about 1 % of CPU per GB by itself (bench/README.md's focused run)",
        listed.join(", ")
    )
}

/// A group's variants left out, and the hooks its VXLAN transfer crossed.
fn group_notes(g: &PairedGroup, md: &mut String) {
    for e in &g.errors {
        let _ =
            writeln!(md, "- **{}:** {}", e.variant, e.error.as_deref().or(e.profile_error.as_deref()).unwrap_or("?"));
    }
    match &g.crossings {
        Some(Crossings::Failed { error }) => {
            let _ = writeln!(md, "- **Hook crossings not counted:** {}", error.lines().next().unwrap_or(error));
        }
        Some(Crossings::Counted(nodes)) => {
            let _ = writeln!(
                md,
                "\nNetfilter hooks crossed by one VXLAN transfer with weft's rules (packets counted by a table of counters at priority −500 / +500 in each hook; inner: from the client pod's CIDR, outer: UDP 8472 from node 1's underlay address; segmentation offloads make these counts of GSO/GRO packets, not wire packets):\n\n| node | hook | inner packets | outer packets |\n|---|---|---|---|"
            );
            for (node, hooks) in nodes {
                for (hook, inner, outer) in hooks {
                    let _ = writeln!(md, "| {node} | {hook} | {inner} | {outer} |");
                }
            }
            let _ = writeln!(md);
        }
        None => {}
    }
}

/// The NetworkPolicy data-plane targets from the paired groups: weft with
/// the benchmark pods isolated over weft with them selected by no policy,
/// same namespaces, interleaved. Whether there was any to show.
pub(crate) fn paired_policies(net: &NetRun, md: &mut String) -> bool {
    let isolated = |g: &PairedGroup| g.variants.iter().find(|v| v.ends_with("pods isolated")).cloned();
    let targets =
        [(PairedMetric::Gbps, "throughput, 1 stream", 0.95), (PairedMetric::ConnPerS, "new connections", 0.9)];
    let lines = target_rows(net, isolated, "weft", &targets);
    if lines.is_empty() {
        return false;
    }
    let _ = writeln!(
        md,
        "From the paired groups (see the data-plane section): `{}` over `weft` with the pods selected by no policy, the same pods and namespaces, interleaved, with the 95 % interval.\n\n| backend, family | metric | ratio [95 % CI] | target |\n|---|---|---|---|\n{}\n",
        net.paired.iter().find_map(isolated).unwrap_or_else(|| "weft, N policies".into()),
        lines.join("\n")
    );
    paired_cluster_policies(net, md);
    true
}

/// The table rows of a target: per paired group holding the variant
/// `pick` finds, its ratio over `reference` for each `(metric, what,
/// threshold)`, judged against the threshold (higher is better).
fn target_rows(
    net: &NetRun,
    pick: impl Fn(&PairedGroup) -> Option<String>,
    reference: &str,
    targets: &[(PairedMetric, &str, f64)],
) -> Vec<String> {
    let mut lines = Vec::new();
    for g in &net.paired {
        let Some(with) = pick(g) else { continue };
        for (m, what, threshold) in targets {
            if let Some(ci) = g.ratio_ci(&with, reference, *m) {
                lines.push(format!(
                    "| {} {} | {what} | {} | ≥ {threshold}: {} |",
                    g.backend,
                    g.family,
                    fmt_ci(Some(ci), g.target_half_width),
                    verdict(ci, *threshold, false)
                ));
            }
        }
    }
    lines
}

/// Issue 25's data-plane target from the paired groups: the data plane
/// with the NetworkPolicies and ClusterNetworkPolicies loaded and the
/// benchmark pods selected by both over weft without its policy table.
fn paired_cluster_policies(net: &NetRun, md: &mut String) {
    let both = |g: &PairedGroup| g.variants.iter().find(|v| v.ends_with("pods selected by both")).cloned();
    let targets =
        [(PairedMetric::Gbps, "throughput, 1 stream", 0.97), (PairedMetric::ConnPerS, "new connections", 0.97)];
    let lines = target_rows(net, both, "weft − policy table", &targets);
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "ClusterNetworkPolicy: `{}` over `weft − policy table` (no policy table at all, a little less than weft with no policies, which keeps the table's empty base chains), same pods and namespaces, interleaved. The pods are selected by the isolating NetworkPolicy and by an Admin (a Deny rule they do not match, then Pass) and a Baseline ClusterNetworkPolicy; the other policies of both kinds select API-only pods on the same nodes, so their chains and sets are in both kernels. The issue's target: ≥ 0.97×.\n\n| backend, family | metric | ratio [95 % CI] | target |\n|---|---|---|---|\n{}\n",
        net.paired.iter().find_map(both).unwrap_or_default(),
        lines.join("\n")
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A paired routes group of 6 rounds: weft 0.9x no netfilter every
    /// round, 0.95x conntrack only with ±1 % of noise, the pods isolated
    /// 0.99x weft.
    pub(crate) fn paired_group() -> PairedGroup {
        let mut samples = Vec::new();
        for r in 0..6usize {
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
        serde_json::from_value(json!({"backend": "routes", "family": "IPv4", "cc": "cubic", "bytes": 2_000_000_000u64,
            "conn_secs": 0.5, "policies": 20, "min_rounds": 6, "adaptive_pairs": 0, "seconds": 60.0, "budget_s": 75.0,
            "target_half_width": 0.03,
            "variants": ["no netfilter", "conntrack only (empty nat chains)", "weft", "weft, 20 policies, pods isolated"],
            "comparisons": [["weft", "no netfilter"], ["weft", "conntrack only (empty nat chains)"], ["weft, 20 policies, pods isolated", "weft"]],
            "samples": samples, "profiles": {"weft": {"under_nf_hook_slow": 0.2}, "no netfilter": {"under_nf_hook_slow": 0.05}},
            "crossings": null, "errors": [{"variant": "weft − masquerade chain", "error": "no chain"}]}))
        .unwrap()
    }

    pub(crate) fn run_of(groups: Vec<PairedGroup>) -> NetRun {
        NetRun { paired: groups, ..Default::default() }
    }

    #[test]
    fn paired_rows_show_the_ratio_its_interval_and_the_pairs() {
        let mut md = String::new();
        paired_section(&run_of(vec![paired_group()]), &mut md);
        // A constant ratio has a zero-width interval; CPU per byte is its inverse.
        assert!(md.contains("| weft | no netfilter | 0.900 [0.900–0.900] | 1.111 [1.111–1.111] | 0.900 [0.900–0.900] | 6 | 6 | 18.00 | 0.56 |"), "{md}");
        // Throughput by the fast mode: weft's 18 over the reference's
        // 90th percentile, its faster rounds (18 / 0.95 / 0.99).
        let conntrack = md.lines().find(|l| l.starts_with("| weft | conntrack only")).expect("the conntrack row");
        assert!(
            conntrack.starts_with("| weft | conntrack only (empty nat chains) | 0.940 [0.940–0.950] |"),
            "{conntrack}"
        );
        assert!(conntrack.contains("| 0.950 [0.939–0.961] | 6 | 6 |"), "{conntrack}");
        assert!(md.contains("**weft − masquerade chain:** no chain"), "{md}");
        assert!(md.contains("routes IPv4, throughput: weft 0.940x conntrack only"), "{md}");
        assert!(md.contains("target ≥ 0.970: **missed**"), "{md}");
        // Lower CPU per byte is better: 1/0.94 misses ≤ 1/0.97.
        assert!(md.contains("CPU per GB: weft 1.063x conntrack only"), "{md}");
        assert!(
            md.contains(
                "(2 GB per transfer, 0.5 s of new connections; 6 rounds + 0 adaptive pairs in 60 s, budget 75 s)"
            ),
            "{md}"
        );
    }

    #[test]
    fn hook_crossings_are_listed_per_node_or_their_error_said() {
        let mut g = paired_group();
        g.crossings = Some(
            serde_json::from_value(json!({"node1": [["prerouting", 10, 2]], "node2": [["input", 0, 3]]})).unwrap(),
        );
        let mut md = String::new();
        paired_section(&run_of(vec![g.clone()]), &mut md);
        assert!(md.contains("| node1 | prerouting | 10 | 2 |\n| node2 | input | 0 | 3 |"), "{md}");
        g.crossings = Some(Crossings::Failed { error: "nft failed\\nmore".into() });
        let mut md = String::new();
        paired_section(&run_of(vec![g]), &mut md);
        assert!(md.contains("- **Hook crossings not counted:** nft failed"), "{md}");
    }

    #[test]
    fn the_cluster_policy_target_is_judged_over_no_policy_table() {
        let mut g = paired_group();
        let with = "weft, 20 policies + 5 cluster policies, pods selected by both";
        for r in 0..6usize {
            for (v, gbps) in [(with, 17.0), ("weft − policy table", 18.0)] {
                g.samples.push(
                    serde_json::from_value(
                        json!({"round": r, "variant": v, "gbps": gbps, "cpu_s_per_gb": 10.0 / gbps, "conn_per_s": 100.0 * gbps}),
                    )
                    .unwrap(),
                );
            }
        }
        g.variants.extend([with.to_string(), "weft − policy table".to_string()]);
        g.comparisons.push((with.into(), "weft − policy table".into()));
        let mut md = String::new();
        assert!(paired_policies(&run_of(vec![g.clone()]), &mut md));
        assert!(md.contains(&format!("ClusterNetworkPolicy: `{with}` over `weft − policy table`")), "{md}");
        assert!(
            md.contains("| routes IPv4 | throughput, 1 stream | 0.944 [0.944–0.944] | ≥ 0.97: **missed** |"),
            "{md}"
        );
        // A group without cluster policies shows only the NetworkPolicy table.
        let mut md = String::new();
        assert!(paired_policies(&run_of(vec![paired_group()]), &mut md));
        assert!(!md.contains("ClusterNetworkPolicy"), "{md}");
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
    fn the_cause_of_a_miss_comes_from_the_paired_routes_group() {
        let net = run_of(vec![paired_group()]);
        let cause = netfilter_cause(&net, "routes", "IPv4", RowMetric::Gbps1).expect("a cause from the paired group");
        assert!(
            cause.contains("0.900 [0.900–0.900] `no netfilter`") && cause.contains("20.0% of the profiled CPU"),
            "{cause}"
        );
        assert_eq!(netfilter_cause(&net, "routes", "IPv6", RowMetric::Gbps1), None);
        assert_eq!(netfilter_cause(&net, "vxlan", "IPv4", RowMetric::Gbps1), None, "a vxlan row: the vxlan group");
    }

    /// `paired_group` plus two parts removed from weft: the policy table
    /// (weft 4 % faster without it) and the fib rule (1 % slower).
    fn group_with_parts() -> PairedGroup {
        let mut v = serde_json::to_value(paired_group()).unwrap();
        let rounds = 6;
        for (part, factor) in [("weft − policy table", 1.04), ("weft − fib anti-spoofing rule", 0.99)] {
            for r in 0..rounds {
                let g = 18.0 * factor;
                v["samples"].as_array_mut().unwrap().push(
                    json!({"round": r, "variant": part, "gbps": g, "cpu_s_per_gb": 10.0 / g, "conn_per_s": 100.0 * g}),
                );
            }
            v["variants"].as_array_mut().unwrap().push(json!(part));
            v["comparisons"].as_array_mut().unwrap().push(json!([part, "weft"]));
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_missed_target_names_each_parts_cost_largest_first() {
        let mut md = String::new();
        let mut targets = Vec::new();
        group_table(&group_with_parts(), &mut md, &mut targets);
        let throughput = targets.iter().find(|t| t.contains(", throughput:")).expect("a throughput target");
        assert!(throughput.contains("**missed**"), "{throughput}");
        let (policy, fib) = (throughput.find("policy table +4.0 %"), throughput.find("fib anti-spoofing rule -1.0 %"));
        assert!(policy.is_some() && fib.is_some() && policy < fib, "largest gain first: {throughput}");
        // CPU per GB is lower-is-better: the policy table's removal is a gain there too.
        let cpu = targets.iter().find(|t| t.contains(", CPU per GB:")).unwrap();
        assert!(cpu.contains("policy table +3.8 %"), "{cpu}");
        // No fast path in a routes group without the variant: nothing judged for it.
        assert!(!targets.iter().any(|t| t.contains("BPF")));
    }

    #[test]
    fn a_vxlan_group_without_the_fast_path_says_its_target_is_not_measured() {
        let mut v = serde_json::to_value(paired_group()).unwrap();
        v["backend"] = json!("vxlan");
        let mut targets = Vec::new();
        group_table(&serde_json::from_value(v).unwrap(), &mut String::new(), &mut targets);
        assert!(targets.iter().any(|t| t.contains("no program on `weft.vxlan`") && t.contains("**missed**")));
    }
}
