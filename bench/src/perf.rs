//! `perf record` (Debian's linux-perf) around a piece of work, for the
//! benchmarks that say where their time goes: agent-bench samples one
//! process (`-p PID`), net-bench the whole machine with call graphs (`-a
//! -g`). Each parses `perf report` its own way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::results::{ProcessProfile, ProfiledFunction};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running `perf record`, its output and log beside `data`.
pub struct Recording {
    perf: Child,
    data: PathBuf,
    log: PathBuf,
}

impl Recording {
    /// Starts `perf record <how> -o data`; its messages go to `data.log`.
    pub fn start(how: &[&str], data: &Path) -> Result<Recording, String> {
        let log_path = data.with_extension("log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("perf log: {e}"))?;
        let perf = Command::new("perf")
            .arg("record")
            .args(how)
            .arg("-o")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| format!("perf log: {e}"))?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start perf: {e}"))?;
        Ok(Recording { perf, data: data.to_path_buf(), log: log_path })
    }

    /// Whether perf has already exited (it refused to record): its exit
    /// status and what it said.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.perf.try_wait().ok().flatten()?;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        Some(format!("perf record exited at once ({status}): {}", text.trim()))
    }

    /// Stops the recording (SIGINT, as perf expects, to the perf we
    /// started; killed if it has not stopped 30 s later) and returns the
    /// data file.
    pub fn stop(mut self) -> Result<PathBuf, String> {
        let _ = kill(Pid::from_raw(self.perf.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.perf.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(self.perf.try_wait(), Ok(None)) {
            let _ = self.perf.kill();
            let _ = self.perf.wait();
            return Err("perf record did not stop within 30 s of SIGINT".into());
        }
        Ok(self.data)
    }
}

/// Samples process `pid` at 999 Hz without call graphs (release binaries
/// carry symbols but no frame pointers, so the figures are self time).
pub fn record_process(pid: u32, data: &Path) -> Result<Recording, String> {
    Recording::start(&["-q", "-F", "999", "-p", &pid.to_string()], data)
}

/// The functions of a [`record_process`] recording above 0.5 % of the
/// samples, in the program and in the kernel on its behalf.
pub fn process_profile(data: &Path, top: usize) -> Result<ProcessProfile, String> {
    let out = Command::new("timeout")
        .args(["120", "perf", "report", "-q", "--stdio", "--no-children", "--sort", "dso,symbol"])
        .args(["--percent-limit", "0.5", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    if !out.status.success() {
        return Err(format!("perf report failed on {} ({})", data.display(), out.status));
    }
    summarise(&String::from_utf8_lossy(&out.stdout), top)
        .ok_or_else(|| format!("perf report of {} held no samples", data.display()))
}

/// Parses `perf report -q --sort dso,symbol` lines such as
/// `  19.51%  weft-agent  [.] weft_agent::desired::peers` (`[k]`: kernel).
fn summarise(text: &str, top: usize) -> Option<ProcessProfile> {
    let rows: Vec<(f64, &str, &str, bool)> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let percent = words.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
            let dso = words.next()?;
            let kind = words.next()?;
            // perf pads the symbol column and may add empty ones (`-`) after it.
            let symbol = l.split_once(kind).and_then(|(_, s)| s.trim().split("  ").next())?;
            Some((percent, dso, symbol, kind == "[k]"))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let top = rows
        .iter()
        .take(top)
        .map(|&(percent, dso, symbol, kernel)| ProfiledFunction {
            percent,
            dso: dso.into(),
            symbol: symbol.into(),
            kernel,
        })
        .collect();
    Some(ProcessProfile { kernel_percent: rows.iter().filter(|r| r.3).map(|r| r.0).sum(), top })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_report_lines_become_shares() {
        let text = "    41.20%  weft-agent         [.] weft_agent::desired::peers::compute     -      -\n\
                    \x20   10.00%  [kernel.kallsyms]  [k] copy_user_generic\n\
                    \x20    5.50%  [kernel.kallsyms]  [k] fib_table_insert\n\
                    not a row\n";
        let p = summarise(text, 2).expect("a profile");
        assert_eq!(p.kernel_percent, 15.5);
        assert_eq!(p.top.len(), 2);
        assert_eq!(p.top[0].symbol, "weft_agent::desired::peers::compute");
        assert!(p.top[1].kernel && !p.top[0].kernel);
        assert!(summarise("", 5).is_none());
    }
}
