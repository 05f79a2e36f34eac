//! A CPU profile of one running process with `perf` (Debian's linux-perf):
//! which functions, in the program and in the kernel on its behalf, take
//! its time. Sampled at 999 Hz, no call graphs (release binaries carry
//! symbols but no frame pointers), so the figures are self time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// `perf record` attached to a process, until [`Recording::finish`].
pub struct Recording {
    perf: Child,
    data: PathBuf,
}

/// Starts sampling `pid` into `data`; None (and a line on stderr) when
/// perf is missing or refuses, so a benchmark goes on without a profile.
pub fn record(pid: u32, data: &Path) -> Option<Recording> {
    let spawned = Command::new("perf")
        .args(["record", "-q", "-F", "999", "-p", &pid.to_string(), "-o"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(perf) => Some(Recording { perf, data: data.to_path_buf() }),
        Err(e) => {
            eprintln!("no profile: perf: {e}");
            None
        }
    }
}

impl Recording {
    /// Stops the recording (SIGINT, as perf expects, to the perf we
    /// started) and returns the functions above 0.5 % of the samples:
    /// `{"kernel_percent", "top": [{"percent", "dso", "symbol", "kernel"}]}`,
    /// or null when perf wrote nothing readable.
    pub fn finish(mut self, top: usize) -> Value {
        let pid = Pid::from_raw(self.perf.id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.perf.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(self.perf.try_wait(), Ok(None)) {
            let _ = self.perf.kill();
            let _ = self.perf.wait();
            eprintln!("no profile: perf record did not stop within 30 s");
            return Value::Null;
        }
        let report = Command::new("timeout")
            .args(["120", "perf", "report", "-q", "--stdio", "--no-children", "--sort", "dso,symbol"])
            .args(["--percent-limit", "0.5", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output();
        let text = match report {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            _ => {
                eprintln!("no profile: perf report failed on {}", self.data.display());
                return Value::Null;
            }
        };
        summarise(&text, top)
    }
}

/// Parses `perf report -q --sort dso,symbol` lines such as
/// `  19.51%  weft-agent  [.] weft_agent::desired::peers` (`[k]`: kernel).
fn summarise(text: &str, top: usize) -> Value {
    let rows: Vec<(f64, &str, &str, bool)> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let percent = words.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
            let dso = words.next()?;
            let kind = words.next()?;
            let symbol = l.split_once(kind).map(|(_, s)| s.trim())?;
            Some((percent, dso, symbol, kind == "[k]"))
        })
        .collect();
    if rows.is_empty() {
        return Value::Null;
    }
    let kernel: f64 = rows.iter().filter(|r| r.3).map(|r| r.0).sum();
    let listed: Vec<Value> = rows
        .iter()
        .take(top)
        .map(|(percent, dso, symbol, kernel)| json!({"percent": percent, "dso": dso, "symbol": symbol, "kernel": kernel}))
        .collect();
    json!({"kernel_percent": kernel, "top": listed})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_report_lines_become_shares() {
        let text = "    41.20%  weft-agent         [.] weft_agent::desired::peers::compute\n\
                    \x20   10.00%  [kernel.kallsyms]  [k] copy_user_generic\n\
                    \x20    5.50%  [kernel.kallsyms]  [k] fib_table_insert\n\
                    not a row\n";
        let v = summarise(text, 2);
        assert_eq!(v["kernel_percent"], json!(15.5));
        assert_eq!(v["top"].as_array().unwrap().len(), 2);
        assert_eq!(v["top"][0]["symbol"], "weft_agent::desired::peers::compute");
        assert_eq!(v["top"][1]["kernel"], true);
        assert!(summarise("", 5).is_null());
    }
}
