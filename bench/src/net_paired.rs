//! The paired measurement of net-bench: weft against its references, and
//! weft without each of its per-packet parts, on the same namespaces.
//!
//! The agents wire the pods and program the peers (with N policies, one of
//! them isolating the benchmark pods, and M ClusterNetworkPolicies, two of
//! them selecting the benchmark pods), then their rulesets are saved
//! (`nft list ruleset`: the pods selected by both kinds, by the
//! NetworkPolicy alone, and by neither) and the agents are
//! stopped: on SIGTERM the agent leaves the data plane in place, and a
//! running agent would repair every change within a second. Each variant is
//! then one ruleset, loaded atomically (`flush ruleset` and the variant in
//! one `nft -f`) in both node namespaces: the agent's own, minus one part
//! (a rule or chain deleted by handle), or a reference. Only nftables
//! differs between variants; routes, devices and pods stay. Variants are
//! interleaved (rounds in rotating order), so drift of a shared machine
//! hits all of them, and every ratio is taken from pairs measured in the
//! same round.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libweft::testutil::TestNs;
use serde_json::Value;
use weft_bench::results::{Crossings, Measurement, PairedGroup, PairedMetric, PairedSample, VariantError};
use weft_bench::stats;

use super::{CpuTimes, Selected, Wired, conn_rate, iperf_run, profile};

/// What the nodes' nftables hold while a variant is measured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Variant {
    /// No nftables at all: the kernel objects alone, as `hand routes`.
    NoNetfilter,
    /// No weft; connection tracking on as kube-proxy turns it on: empty
    /// nat chains at prerouting, output and postrouting.
    ConntrackRef,
    /// weft's tables as the agent wrote them, the benchmark pods selected
    /// by no policy (the other policies loaded).
    Weft,
    /// weft with the benchmark pods isolated by a policy that allows them.
    Policies,
    /// `Policies`, and the pods also selected by an Admin-tier
    /// ClusterNetworkPolicy (a Deny rule they do not match, then a Pass
    /// to NetworkPolicy) and a Baseline one.
    ClusterPolicies,
    /// weft, every packet untracked (`notrack` before conntrack's hook):
    /// what conntrack costs. Rules on `ct state` then see `untracked`.
    NoConntrack,
    /// weft without the anti-spoofing `fib saddr . iif oif missing` rule.
    NoFib,
    /// weft without the rule dropping pods' packets to the VXLAN port.
    NoPodVxlanRule,
    /// weft without the `inet weft-policy` table (its forward chains).
    NoPolicyTable,
    /// weft without the masquerade nat chain.
    NoMasquerade,
    /// weft without the VXLAN peer filter (the input chain).
    NoPeerFilter,
    /// weft with the outer VXLAN packets untracked: what the second
    /// crossing of netfilter costs in conntrack.
    OuterUntracked,
    /// weft with the MSS clamp toward VXLAN peers that `auto` renders
    /// (pods above the tunnel's MTU); `vxlan` has none, its pods fit.
    WithMssClamp,
    /// weft's tables with the BPF fast path (`dataplane: bpf`) on the
    /// pods' host veths and the uplinks of both nodes: established flows
    /// skip netfilter and the host's routing.
    WeftBpf,
    /// weft with anti-spoofing by an exact-match set of the node's pod
    /// (host veth, address) pairs instead of the `fib` lookup.
    AntiSpoofSet,
    /// weft with pod veths matched by an interface group instead of the
    /// `"weft*"` name wildcard.
    VethGroup,
    /// weft plus [`empty_chains`]: what a base chain costs by itself, the
    /// price of each of weft's own (it has one to three at every hook a
    /// packet crosses).
    EmptyChains,
}

use Variant::*;

/// Empty nat base chains, as kube-proxy has them: conntrack for every packet.
const CONNTRACK_REF: &str = "table inet bench-conntrack {
  chain prerouting { type nat hook prerouting priority dstnat; policy accept; }
  chain output { type nat hook output priority -100; policy accept; }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; }
}";

/// Before conntrack (-200) and weft's raw chain (-300): nothing is tracked.
const NOTRACK: &str = "table inet bench-notrack {
  chain prerouting { type filter hook prerouting priority -400; policy accept; notrack; }
  chain output { type filter hook output priority -400; policy accept; notrack; }
}";

/// The MSS clamp as `inet weft` has it where pods have a larger MTU
/// than the tunnel (`desired::weft_table::mss_clamp`).
const MSS_CLAMP: &str = "table inet weft {
  chain forward { type filter hook forward priority -150; policy accept;
    oifname \"weft.vxlan\" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu; }
}";

/// The interface group [`VethGroup`] puts the pods' host veths in (not
/// one of weft's pending groups).
const VETH_GROUP: u32 = 8700;

/// Four base chains without rules at every hook a forwarded packet
/// crosses ([`EmptyChains`]).
fn empty_chains() -> String {
    let mut t = String::from("table inet bench-empty {\n");
    for hook in ["prerouting", "forward", "postrouting"] {
        for i in 0..4 {
            t.push_str(&format!(
                "  chain {hook}{i} {{ type filter hook {hook} priority {}; policy accept; }}\n",
                10 + i
            ));
        }
    }
    t.push('}');
    t
}

/// How weft's prerouting rules pick packets from pods.
const FROM_POD: &str = "iifname \"weft*\" iifname != \"weft.vxlan\"";

/// The same for the outer VXLAN packets only.
const OUTER_NOTRACK: &str = "table inet bench-notrack {
  chain prerouting { type filter hook prerouting priority -400; policy accept; udp dport 8472 notrack; }
  chain output { type filter hook output priority -400; policy accept; udp dport 8472 notrack; }
}";

/// The policies in the API server of a paired setup.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loaded {
    /// NetworkPolicies.
    pub policies: usize,
    /// ClusterNetworkPolicies (0: none, no `ClusterPolicies` variant).
    pub cluster: usize,
}

impl Variant {
    pub(crate) fn label(self, loaded: Loaded) -> String {
        match self {
            NoNetfilter => "no netfilter".into(),
            ConntrackRef => "conntrack only (empty nat chains)".into(),
            Weft => "weft".into(),
            Policies => format!("weft, {} policies, pods isolated", loaded.policies),
            ClusterPolicies => format!(
                "weft, {} policies + {} cluster policies, pods selected by both",
                loaded.policies, loaded.cluster
            ),
            NoConntrack => "weft − conntrack (notrack)".into(),
            NoFib => "weft − fib anti-spoofing rule".into(),
            NoPodVxlanRule => "weft − pod-to-VXLAN-port rule".into(),
            NoPolicyTable => "weft − policy table".into(),
            NoMasquerade => "weft − masquerade chain".into(),
            NoPeerFilter => "weft − VXLAN peer filter".into(),
            OuterUntracked => "weft, outer VXLAN packet untracked".into(),
            WithMssClamp => "weft + MSS clamp (as auto has it)".into(),
            WeftBpf => "weft + BPF fast path".into(),
            AntiSpoofSet => "weft, anti-spoofing by (iif, saddr) set".into(),
            VethGroup => "weft, pod veths by interface group".into(),
            EmptyChains => "weft + 4 empty base chains at each forwarding hook".into(),
        }
    }

    /// The variants of a backend: the VXLAN-only parts exist only there,
    /// `ClusterPolicies` only with ClusterNetworkPolicies loaded.
    /// `candidates`: also the cuts tried and not taken (only measured when
    /// named by `--variants`: they would lengthen every full run).
    pub(crate) fn all(vxlan: bool, candidates: bool, cluster: bool) -> Vec<Variant> {
        let mut v = vec![NoNetfilter, ConntrackRef, Weft, Policies];
        if cluster {
            v.push(ClusterPolicies);
        }
        v.extend([NoConntrack, NoFib]);
        if vxlan {
            v.push(NoPodVxlanRule);
        }
        v.extend([NoPolicyTable, NoMasquerade]);
        if vxlan {
            v.push(NoPeerFilter);
        } else {
            // The fast path has no program on weft.vxlan: routes only.
            v.push(WeftBpf);
        }
        if candidates {
            // Within the noise of every full run that measured them
            // (bench/README.md): a full run no longer spends rounds on them.
            if vxlan {
                v.extend([OuterUntracked, WithMssClamp]);
            }
            v.extend([AntiSpoofSet, VethGroup, EmptyChains]);
        }
        v
    }
}

/// The ratios the report shows, (numerator, denominator): weft against
/// both references, what conntrack alone costs, every other variant
/// against weft, and the policies of both kinds against no policy table
/// at all (issue 25's "with them loaded over without").
pub(crate) fn comparisons(variants: &[Variant]) -> Vec<(Variant, Variant)> {
    let mut c = vec![(Weft, NoNetfilter), (Weft, ConntrackRef), (ConntrackRef, NoNetfilter), (WeftBpf, NoNetfilter)];
    c.extend(variants.iter().filter(|v| ![NoNetfilter, ConntrackRef, Weft].contains(v)).map(|v| (*v, Weft)));
    c.push((ClusterPolicies, NoPolicyTable));
    c.retain(|(a, b)| variants.contains(a) && variants.contains(b));
    c
}

/// The agent's rulesets on both nodes, saved before the agents stopped.
pub(crate) struct Rulesets {
    /// The benchmark pods selected by no policy.
    weft: [String; 2],
    /// The benchmark pods isolated by the NetworkPolicy.
    policies: [String; 2],
    /// The BPF fast path loaded for both nodes, attached only for
    /// [`WeftBpf`]; `None` (with why) when it cannot be loaded here.
    fastpath: Result<FastpathNodes, String>,
    /// The benchmark pods selected by the ClusterNetworkPolicies too (none
    /// loaded: `None`).
    cluster: Option<[String; 2]>,
}

/// The fast path of each node: programs loaded with their maps pinned on
/// a bpffs of the benchmark's own, the pod map filled from the plugin's pod
/// routes, attached and detached as variants change.
pub(crate) struct FastpathNodes {
    nodes: Vec<NodeFastpath>,
    _bpffs: libweft::testutil::bpffs::BpfFs,
}

struct NodeFastpath {
    fastpath: weft_fastpath::Fastpath,
    netns: libweft::netns::NetNs,
    uplink: u32,
    veths: Vec<u32>,
}

fn ifindex(ns: &TestNs, dev: &str) -> Result<u32, String> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")]);
    String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|e| format!("ifindex of {dev}: {e}"))
}

impl FastpathNodes {
    fn load(nodes: &[TestNs]) -> Result<FastpathNodes, String> {
        let bpffs = libweft::testutil::bpffs::BpfFs::new("net-bench");
        let mut out = Vec::new();
        for (i, ns) in nodes.iter().enumerate().take(2) {
            let fastpath =
                weft_fastpath::Fastpath::load(&bpffs.path().join(i.to_string())).map_err(|e| e.to_string())?;
            let mut veths = Vec::new();
            for family in ["-4", "-6"] {
                let routes: Value =
                    serde_json::from_str(&run_in(ns, &["ip", "-j", family, "route", "show", "proto", "87"])?)
                        .map_err(|e| format!("ip -j route: {e}"))?;
                for r in routes.as_array().into_iter().flatten() {
                    let (Some(dst), Some(dev)) = (r["dst"].as_str(), r["dev"].as_str()) else { continue };
                    let veth = ifindex(ns, dev)?;
                    let addr = dst.split('/').next().unwrap_or(dst).parse().map_err(|e| format!("{dst}: {e}"))?;
                    fastpath.insert_pod(veth, addr).map_err(|e| e.to_string())?;
                    veths.push(veth);
                }
            }
            veths.sort_unstable();
            veths.dedup();
            // Netfilter no longer sees the middle of a fast-pathed flow (README).
            run_in(ns, &["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1"])?;
            let netns = libweft::netns::NetNs::open(&ns.path()).map_err(|e| e.to_string())?;
            out.push(NodeFastpath { fastpath, netns, uplink: ifindex(ns, "eth0")?, veths });
        }
        Ok(FastpathNodes { nodes: out, _bpffs: bpffs })
    }

    /// Attaches (`on`) or detaches the fast path on every node.
    fn set(&self, on: bool) -> Result<(), String> {
        for n in &self.nodes {
            let links = std::iter::once((n.uplink, weft_fastpath::Hook::Uplink))
                .chain(n.veths.iter().map(|v| (*v, weft_fastpath::Hook::Pod)));
            let links: Vec<_> = links.collect();
            n.netns
                .run(|| {
                    links.iter().try_for_each(|(link, hook)| {
                        if on { n.fastpath.attach(*link, *hook) } else { weft_fastpath::detach(*link) }
                    })
                })
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Runs a command in `ns`; its stdout, or its stderr as the error.
fn run_in(ns: &TestNs, argv: &[&str]) -> Result<String, String> {
    let out = ns.exec(argv);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{}: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn nft(ns: &TestNs, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["nft"];
    argv.extend_from_slice(args);
    let out = ns.exec(&argv);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Replaces the whole ruleset of `ns` by `text`, in one transaction.
fn load(ns: &TestNs, text: &str) -> Result<(), String> {
    let mut file = tempfile::NamedTempFile::new().map_err(|e| format!("temp file: {e}"))?;
    std::io::Write::write_all(&mut file, format!("flush ruleset\n{text}\n").as_bytes())
        .map_err(|e| format!("write ruleset: {e}"))?;
    nft(ns, &["-f", &file.path().display().to_string()]).map(drop)
}

/// Deletes the rules of `table chain` (family inet) whose text contains
/// `what`; an error when there is none, so a variant never measures an
/// unchanged ruleset under a name that says otherwise.
fn delete_rules(ns: &TestNs, table: &str, chain: &str, what: &str) -> Result<(), String> {
    let listing = nft(ns, &["-a", "list", "chain", "inet", table, chain])?;
    let handles: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.rsplit_once("# handle ").map(|(_, h)| h.trim()))
        .collect();
    if handles.is_empty() {
        return Err(format!("no rule with `{what}` in inet {table} {chain}"));
    }
    for h in handles {
        nft(ns, &["delete", "rule", "inet", table, chain, "handle", h])?;
    }
    Ok(())
}

fn delete_chain(ns: &TestNs, table: &str, chain: &str) -> Result<(), String> {
    nft(ns, &["flush", "chain", "inet", table, chain])?;
    nft(ns, &["delete", "chain", "inet", table, chain]).map(drop)
}

/// The pods of `ns` as weft's plugin wired them: (host veth, address),
/// from the pod routes (protocol 87), both families.
fn pod_veths(ns: &TestNs) -> Result<Vec<(String, String)>, String> {
    let mut pods = Vec::new();
    for family in ["-4", "-6"] {
        let out = ns.exec(&["ip", family, "-o", "route", "show", "proto", "87"]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "dev") {
                pods.push((words[i + 1].to_string(), words[0].trim_end_matches("/32").trim_end_matches("/128").into()));
            }
        }
    }
    if pods.is_empty() { Err("no pod routes (proto 87)".into()) } else { Ok(pods) }
}

/// weft's table with its `fib` anti-spoofing rule replaced by lookups of
/// (input interface, source address) in sets of the node's pods; IPv6
/// link-local sources (a pod's router solicitations) are left alone, as
/// the `fib` rule finds them on-link.
fn anti_spoof_set(ns: &TestNs) -> Result<String, String> {
    let pods = pod_veths(ns)?;
    let elems = |v6: bool| {
        let e: Vec<String> =
            pods.iter().filter(|(_, ip)| ip.contains(':') == v6).map(|(dev, ip)| format!("\"{dev}\" . {ip}")).collect();
        e.join(", ")
    };
    Ok(format!(
        "table inet weft {{
  set pod_src4 {{ type iface_index . ipv4_addr; elements = {{ {} }} }}
  set pod_src6 {{ type iface_index . ipv6_addr; elements = {{ {} }} }}
  chain prerouting {{
    {FROM_POD} meta nfproto ipv4 iif . ip saddr != @pod_src4 counter name \"spoofed_source\" drop
    {FROM_POD} meta nfproto ipv6 ip6 saddr != fe80::/10 iif . ip6 saddr != @pod_src6 counter name \"spoofed_source\" drop
  }}
}}",
        elems(false),
        elems(true)
    ))
}

/// `text` with every `from` replaced by `to`; an error when there is none.
fn replaced(text: &str, from: &str, to: &str) -> Result<String, String> {
    if text.contains(from) { Ok(text.replace(from, to)) } else { Err(format!("no `{from}` in the ruleset")) }
}

/// Puts `v` in force on both nodes.
fn apply(nodes: &[TestNs], rs: &Rulesets, v: Variant) -> Result<(), String> {
    for (i, ns) in nodes.iter().enumerate().take(2) {
        let mut base: String = match v {
            NoNetfilter => String::new(),
            ConntrackRef => CONNTRACK_REF.into(),
            Policies => rs.policies[i].clone(),
            ClusterPolicies => rs.cluster.as_ref().ok_or("no cluster network policies loaded")?[i].clone(),
            _ => rs.weft[i].clone(),
        };
        if v == VethGroup {
            for (dev, _) in pod_veths(ns)? {
                ns.exec(&["ip", "link", "set", "dev", &dev, "group", &VETH_GROUP.to_string()]);
            }
            base = replaced(&base, FROM_POD, &format!("iifgroup {VETH_GROUP}"))?;
        }
        let extra = match v {
            NoConntrack => NOTRACK.into(),
            OuterUntracked => OUTER_NOTRACK.into(),
            WithMssClamp => MSS_CLAMP.into(),
            AntiSpoofSet => anti_spoof_set(ns)?,
            EmptyChains => empty_chains(),
            _ => String::new(),
        };
        load(ns, &format!("{base}\n{extra}"))?;
        if i == 0 {
            match (&rs.fastpath, v) {
                (Ok(f), _) => f.set(v == WeftBpf)?,
                (Err(e), WeftBpf) => return Err(e.clone()),
                (Err(_), _) => {}
            }
        }
        match v {
            NoFib => delete_rules(ns, "weft", "prerouting", "fib ")?,
            NoPodVxlanRule => delete_rules(ns, "weft", "prerouting", "pod_vxlan")?,
            NoPolicyTable => nft(ns, &["delete", "table", "inet", "weft-policy"]).map(drop)?,
            NoMasquerade => delete_chain(ns, "weft", "postrouting")?,
            NoPeerFilter => delete_chain(ns, "weft", "input")?,
            AntiSpoofSet => delete_rules(ns, "weft", "prerouting", "fib ")?,
            _ => {}
        }
    }
    Ok(())
}

/// How much to measure: per variant and round, and when to stop.
pub(crate) struct Plan {
    pub bytes: u64,
    pub cc: &'static str,
    pub conn_for: Duration,
    /// Rounds of every variant before the adaptive pairs.
    pub min_rounds: usize,
    /// The group's time for its rounds and adaptive pairs.
    pub budget: Duration,
    /// Target half-width of every interval (0.03: ± 3 %).
    pub target: f64,
    pub profile: bool,
    /// Only the variants whose label contains one of these, and `weft`
    /// (measuring a few parts closely); every variant when empty.
    pub only_variants: Vec<String>,
}

/// The fixed-size transfer of a sample, with `conn_per_s` still 0.
fn transfer(w: &Wired, dst: &str, plan: &Plan) -> Measurement {
    let bytes = plan.bytes.to_string();
    let (v, cpu): (Value, CpuTimes) = iperf_run(w, dst, &["-n", &bytes, "-C", plan.cc], 120);
    let end = &v["end"];
    let gb = end["sum_received"]["bytes"].as_f64().unwrap_or(0.0) / 1e9;
    let secs = end["sum_received"]["seconds"].as_f64().unwrap_or(0.0);
    let procs = |k: &str| end["cpu_utilization_percent"][k].as_f64().unwrap_or(0.0) / 100.0 * secs;
    let per_gb = |s: f64| if gb > 0.0 { s / gb } else { 0.0 };
    Measurement {
        gbps: end["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
        cpu_s_per_gb: per_gb(procs("host_total") + procs("remote_total") + cpu.irq),
        machine_cpu_s_per_gb: per_gb(cpu.busy),
        conn_per_s: 0.0,
    }
}

fn sample(w: &Wired, dst: &str, plan: &Plan) -> Measurement {
    let t = transfer(w, dst, plan);
    Measurement { conn_per_s: conn_rate(w, dst, plan.conn_for), ..t }
}

/// The samples of a group so far: `(round, variant, measurement)`.
type Samples = Vec<(usize, Variant, Measurement)>;

/// The widest interval of a comparison over the metrics, each by the
/// estimator the report uses (infinite before it has enough samples).
fn widest(samples: &Samples, a: Variant, b: Variant) -> f64 {
    PairedMetric::ALL
        .iter()
        .map(|m| {
            let values: Vec<(usize, Variant, f64)> = samples.iter().map(|(r, v, s)| (*r, *v, s.get(*m))).collect();
            stats::ratio_ci(&values, &a, &b, m.estimator()).map_or(f64::INFINITY, |c| c.half_width())
        })
        .fold(0.0, f64::max)
}

/// Saves both nodes' rulesets with the pods selected by both kinds of
/// policy (when ClusterNetworkPolicies are loaded), by the NetworkPolicy
/// alone, and by none, then stops the agents.
pub(crate) fn freeze(w: &mut Wired, cp: &super::ControlPlane, cluster: bool) -> Result<Rulesets, String> {
    let save = |w: &Wired| -> Result<[String; 2], String> {
        Ok([nft(&w.nodes[0], &["list", "ruleset"])?, nft(&w.nodes[1], &["list", "ruleset"])?])
    };
    if w.selection.is_none() {
        return Err("the setup has no policies to select the benchmark pods".into());
    }
    let cluster = if cluster {
        if !w.select(cp, Selected::AlsoCluster) {
            return Err("the benchmark pods' groups did not take the Admin tier".into());
        }
        Some(save(w)?)
    } else {
        None
    };
    if !w.select(cp, Selected::NetworkPolicy) {
        return Err("the benchmark pods' groups did not follow their labels".into());
    }
    let policies = save(w)?;
    if !w.select(cp, Selected::Nothing) {
        return Err("the benchmark pods did not leave the policy maps".into());
    }
    let weft = save(w)?;
    for a in &mut w.agents {
        a.stop();
    }
    let fastpath = FastpathNodes::load(&w.nodes);
    Ok(Rulesets { weft, policies, cluster, fastpath })
}

/// The counting table of [`crossings`]: per hook, the inner packets from
/// the client pod's node (`inner`) and the outer VXLAN packets from node
/// 1's underlay address (`outer`).
fn counting_table(node1_v4: &str) -> String {
    let mut t = String::from("table inet bench-count {\n");
    for (hook, prio) in
        [("prerouting", -500), ("input", -500), ("forward", -500), ("output", -500), ("postrouting", 500)]
    {
        t.push_str(&format!(
            "  chain {hook} {{ type filter hook {hook} priority {prio}; policy accept;
    ip saddr 10.244.1.0/24 counter comment \"inner\"
    ip6 saddr fd00:10:244:1::/64 counter comment \"inner\"
    ip saddr {node1_v4} udp dport 8472 counter comment \"outer\"\n  }}\n"
        ));
    }
    t.push('}');
    t
}

/// Packets counted per hook, `[(hook, inner, outer)]`, from `nft list table`.
fn read_counts(listing: &str) -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> = Vec::new();
    for line in listing.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("chain ") {
            out.push((rest.split_whitespace().next().unwrap_or("").to_string(), 0, 0));
            continue;
        }
        let Some(last) = out.last_mut() else { continue };
        let packets = line
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if line.contains("comment \"inner\"") {
            last.1 += packets;
        } else if line.contains("comment \"outer\"") {
            last.2 += packets;
        }
    }
    out
}

/// Which netfilter hooks the inner and the outer packets of a VXLAN
/// transfer cross on each node, counted by a table of counters added to
/// weft's rules (full ruleset), per node (`node1`, `node2`).
fn crossings(w: &Wired, rs: &Rulesets, dst: &str, node1_v4: &str, plan: &Plan) -> Result<Crossings, String> {
    apply(&w.nodes, rs, Weft)?;
    let table = counting_table(node1_v4);
    for ns in &w.nodes[..2] {
        let mut file = tempfile::NamedTempFile::new().map_err(|e| format!("temp file: {e}"))?;
        std::io::Write::write_all(&mut file, table.as_bytes()).map_err(|e| format!("write: {e}"))?;
        nft(ns, &["-f", &file.path().display().to_string()])?;
    }
    let bytes = (plan.bytes / 4).max(1 << 20).to_string();
    let _ = iperf_run(w, dst, &["-n", &bytes, "-C", plan.cc], 120);
    let mut out = BTreeMap::new();
    for (i, ns) in w.nodes[..2].iter().enumerate() {
        let counts = read_counts(&nft(ns, &["list", "table", "inet", "bench-count"])?);
        out.insert(format!("node{}", i + 1), counts);
        nft(ns, &["delete", "table", "inet", "bench-count"])?;
    }
    Ok(Crossings::Counted(out))
}

/// One group: every variant of a backend for one family, interleaved,
/// until every ratio's interval is within the target or the budget is
/// spent; then (if asked) a CPU profile of each variant.
#[allow(clippy::too_many_arguments)]
pub(crate) fn group(
    w: &Wired,
    rs: &Rulesets,
    backend: &str,
    family: &str,
    dst: &str,
    node1_v4: &str,
    loaded: Loaded,
    plan: &Plan,
) -> PairedGroup {
    let started = Instant::now();
    let mut variants = Variant::all(backend != "routes", !plan.only_variants.is_empty(), rs.cluster.is_some());
    if !plan.only_variants.is_empty() {
        variants.retain(|v| *v == Weft || plan.only_variants.iter().any(|o| v.label(loaded).contains(o.as_str())));
    }
    let mut errors = Vec::new();
    let error = |v: Variant, e: String| VariantError { variant: v.label(loaded), error: Some(e), profile_error: None };
    // A variant that cannot be put in force is reported and left out.
    variants.retain(|v| match apply(&w.nodes, rs, *v) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("  {backend} / {family}: {} left out: {e}", v.label(loaded));
            errors.push(error(*v, e));
            false
        }
    });
    let comps = comparisons(&variants);
    let measure = |v: Variant| {
        apply(&w.nodes, rs, v).unwrap_or_else(|e| panic!("{}: {e}", v.label(loaded)));
        sample(w, dst, plan)
    };
    let (samples, extra) = rounds(&variants, &comps, plan, started, measure);
    let measured_s = started.elapsed().as_secs_f64();
    eprintln!(
        "  paired {backend} / {family}: {} variants, {} rounds + {extra} adaptive pairs in {measured_s:.0} s",
        variants.len(),
        plan.min_rounds
    );
    let mut profiles = BTreeMap::new();
    if plan.profile {
        for v in &variants {
            if let Err(e) = apply(&w.nodes, rs, *v) {
                errors.push(error(*v, e));
                continue;
            }
            match profile(|| super::Measured::Gbps(transfer(w, dst, plan).gbps)) {
                Ok(p) => {
                    profiles.insert(v.label(loaded), p);
                }
                Err(e) => errors.push(VariantError { variant: v.label(loaded), error: None, profile_error: Some(e) }),
            }
        }
    }
    let crossings = (backend != "routes" && family == "IPv4")
        .then(|| crossings(w, rs, dst, node1_v4, plan).unwrap_or_else(|error| Crossings::Failed { error }));
    PairedGroup {
        backend: backend.into(),
        family: family.into(),
        cc: plan.cc.into(),
        bytes: plan.bytes,
        conn_secs: plan.conn_for.as_secs_f64(),
        policies: loaded.policies,
        cluster_policies: loaded.cluster,
        min_rounds: plan.min_rounds,
        adaptive_pairs: extra,
        budget_s: plan.budget.as_secs_f64(),
        seconds: measured_s,
        target_half_width: plan.target,
        variants: variants.iter().map(|v| v.label(loaded)).collect(),
        comparisons: comps.iter().map(|(a, b)| (a.label(loaded), b.label(loaded))).collect(),
        samples: samples.into_iter().map(|(round, v, m)| PairedSample { round, variant: v.label(loaded), m }).collect(),
        profiles,
        crossings,
        errors,
    }
}

/// The rounds of a group: every variant once per round in rotating order
/// (forward, then backward), then the comparison with the widest interval
/// gets another pair, in alternating order, until all are narrow or time
/// is up. The samples, and how many adaptive pairs were measured.
fn rounds(
    variants: &[Variant],
    comps: &[(Variant, Variant)],
    plan: &Plan,
    started: Instant,
    mut measure: impl FnMut(Variant) -> Measurement,
) -> (Samples, usize) {
    let mut samples = Samples::new();
    let mut round = 0;
    for r in 0..plan.min_rounds {
        let mut order = variants.to_vec();
        order.rotate_left(r % variants.len().max(1));
        if r % 2 == 1 {
            order.reverse();
        }
        for v in order {
            samples.push((round, v, measure(v)));
        }
        round += 1;
    }
    let mut extra = 0;
    while started.elapsed() < plan.budget {
        let Some((a, b, width)) =
            comps.iter().map(|(a, b)| (*a, *b, widest(&samples, *a, *b))).max_by(|x, y| x.2.total_cmp(&y.2))
        else {
            break;
        };
        if width <= plan.target {
            break;
        }
        let order = if round.is_multiple_of(2) { [a, b] } else { [b, a] };
        for v in order {
            samples.push((round, v, measure(v)));
        }
        round += 1;
        extra += 1;
    }
    (samples, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(gbps: f64) -> Measurement {
        Measurement { gbps, cpu_s_per_gb: 1.0 / gbps, machine_cpu_s_per_gb: 1.0, conn_per_s: 100.0 }
    }

    #[test]
    fn every_part_is_compared_with_weft_and_weft_with_both_references() {
        let routes = comparisons(&Variant::all(false, false, false));
        assert_eq!(&routes[..3], &[(Weft, NoNetfilter), (Weft, ConntrackRef), (ConntrackRef, NoNetfilter)]);
        assert_eq!(routes[3], (WeftBpf, NoNetfilter), "the fast path against the kernel floor");
        assert!(routes[4..].iter().all(|(_, b)| *b == Weft));
        assert!(routes.contains(&(WeftBpf, Weft)));
        assert!(!routes.iter().any(|(a, _)| [NoPeerFilter, NoPodVxlanRule, OuterUntracked, WithMssClamp].contains(a)));
        let vxlan = comparisons(&Variant::all(true, true, true));
        for part in [
            NoConntrack,
            NoFib,
            NoPodVxlanRule,
            NoPolicyTable,
            Policies,
            ClusterPolicies,
            NoMasquerade,
            NoPeerFilter,
            WithMssClamp,
            AntiSpoofSet,
        ] {
            assert!(vxlan.contains(&(part, Weft)), "{part:?}");
        }
        assert!(!Variant::all(true, false, true).contains(&VethGroup), "candidates only when asked for");
        assert!(!Variant::all(true, false, true).contains(&WithMssClamp), "what-ifs only when asked for");
        assert!(!routes.iter().any(|(a, _)| *a == ClusterPolicies), "no cluster policies loaded: no such variant");
        assert!(vxlan.contains(&(ClusterPolicies, NoPolicyTable)), "with them loaded over without any policy table");
        // A variant left out takes its comparisons with it.
        let without_ref = comparisons(&[Weft, NoFib]);
        assert_eq!(without_ref, vec![(NoFib, Weft)]);
    }

    #[test]
    fn the_widest_interval_waits_for_enough_samples_of_every_metric() {
        // Constant ratios: zero width once each estimator has its samples
        // (two same-round pairs for connections, five transfers a side for
        // the throughput and CPU quantiles).
        let rounds = |n: usize| -> Samples { (0..n).flat_map(|r| [(r, Weft, s(10.0)), (r, NoFib, s(11.0))]).collect() };
        assert!(widest(&rounds(4), NoFib, Weft).is_infinite());
        assert!(widest(&rounds(5), NoFib, Weft).abs() < 1e-12);
        let lone = vec![(0, Weft, s(10.0)), (1, NoFib, s(11.0))];
        assert!(widest(&lone, NoFib, Weft).is_infinite());
    }

    #[test]
    fn empty_chains_are_four_at_each_forwarding_hook() {
        let t = empty_chains();
        for hook in ["prerouting", "forward", "postrouting"] {
            assert_eq!(t.matches(&format!("hook {hook} ")).count(), 4, "{hook}");
        }
        assert!(!t.contains("notrack") && !t.contains("drop"), "the chains have no rules");
    }

    #[test]
    fn hook_counters_are_read_per_chain() {
        let listing = "table inet bench-count {
	chain prerouting {
		type filter hook prerouting priority -500; policy accept;
		ip saddr 10.244.1.0/24 counter packets 10 bytes 900 comment \"inner\"
		ip6 saddr fd00:10:244:1::/64 counter packets 2 bytes 90 comment \"inner\"
		ip saddr 198.51.100.11 udp dport 8472 counter packets 0 bytes 0 comment \"outer\"
	}
	chain output {
		type filter hook output priority -500; policy accept;
		ip saddr 198.51.100.11 udp dport 8472 counter packets 12 bytes 1000 comment \"outer\"
	}
}";
        assert_eq!(read_counts(listing), vec![("prerouting".into(), 12, 0), ("output".into(), 0, 12)]);
        let t = counting_table("198.51.100.11");
        assert!(t.contains("hook postrouting") && t.contains("ip saddr 198.51.100.11 udp dport 8472 counter"));
    }
}
