//! What agent-bench and policy-bench both need of the agent they measure:
//! the agent process's CPU time and memory, and its reconcile pass times.

use libweft::testutil::TestNs;

/// (utime + stime) in clock ticks, and VmHWM / VmRSS in KiB.
pub fn proc_stats(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks, kib("VmHWM:"), kib("VmRSS:"))
}

/// (sum, count) of the agent's `weft_reconcile_duration_seconds`, from its
/// metrics endpoint (127.0.0.1:9959 in the node namespace).
pub fn pass_seconds(node: &TestNs) -> (f64, f64) {
    let text = node.http_get("127.0.0.1:9959", "/metrics");
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0)
    };
    (value("weft_reconcile_duration_seconds_sum"), value("weft_reconcile_duration_seconds_count"))
}
