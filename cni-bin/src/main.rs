//! `weft`: the CNI plugin. Reads `CNI_*` variables and the network config on
//! stdin, runs one verb, and prints the result (or a CNI error) on stdout.
//! Logs go to stderr or the configured `logFile`, never to stdout.

mod cmd;
mod node;
mod wiring;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use libweft::cni::{CniError, CniVersion, Command, NetConf, RuntimeEnv, version_reply};
use serde_json::Value;

const HELP: &str = "\
weft - CNI plugin of the weft pod network

weft is run by a container runtime (containerd, CRI-O), not by hand: the
runtime sets CNI_COMMAND (ADD, DEL, CHECK, GC, STATUS, VERSION),
CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME, and passes the network config
as JSON on stdin. The result, or a CNI error, is printed on stdout.

Example:
  echo '{\"cniVersion\":\"1.1.0\",\"name\":\"weft\",\"type\":\"weft\",\"subnets\":[\"10.244.1.0/24\"]}' |
    CNI_COMMAND=ADD CNI_CONTAINERID=demo CNI_NETNS=/run/netns/demo CNI_IFNAME=eth0 weft

Options:
  -h, --help     show this help
  -V, --version  show the version and the CNI spec versions supported
";

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        return match arg.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                ExitCode::SUCCESS
            }
            "-V" | "--version" => {
                println!(
                    "weft {} (CNI spec {})",
                    env!("CARGO_PKG_VERSION"),
                    libweft::cni::SUPPORTED_VERSIONS.join(", ")
                );
                ExitCode::SUCCESS
            }
            other => {
                eprintln!("weft: unknown argument {other:?}; see weft --help");
                ExitCode::from(2)
            }
        };
    }

    // A panic is a bug, but the runtime must still get an error JSON, and no
    // stack trace may reach stdout.
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    let outcome = std::panic::catch_unwind(run)
        .unwrap_or_else(|_| Err((CniError::Internal("weft panicked; see its log".into()), None)));

    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(result)) => {
            let _ = writeln!(stdout, "{result}");
            ExitCode::SUCCESS
        }
        Err((err, version)) => {
            let version = version.map_or(CniVersion::LATEST.as_str().to_string(), |v| v.to_string());
            tracing::warn!(code = err.code(), "{err}");
            let reply = serde_json::to_string(&err.reply(&version)).unwrap_or_default();
            let _ = writeln!(stdout, "{reply}");
            if std::env::var_os("CNI_COMMAND").is_none() && std::io::stdin().is_terminal() {
                eprintln!("weft is a CNI plugin and is run by a container runtime; see weft --help");
            }
            ExitCode::FAILURE
        }
    }
}

/// The largest network config read from stdin. Real ones are a few KiB
/// (with a prevResult listing every interface and address); a runtime
/// passing more is broken, and the plugin must not buffer without bound.
const MAX_STDIN: usize = 1024 * 1024;

/// The error plus the config version to echo in it, when known.
type RunError = (CniError, Option<CniVersion>);

fn run() -> Result<Option<Value>, RunError> {
    let env = RuntimeEnv::from_vars(|k| std::env::var(k).ok()).map_err(|e| (e, None))?;
    let mut stdin = Vec::new();
    if env.command != Command::Version || !std::io::stdin().is_terminal() {
        // Reading one byte past the cap tells an oversized config from one that fits.
        std::io::stdin()
            .take(MAX_STDIN as u64 + 1)
            .read_to_end(&mut stdin)
            .map_err(|e| (CniError::Io(format!("read stdin: {e}")), None))?;
        if stdin.len() > MAX_STDIN {
            let msg = format!("the network config on stdin is larger than {} KiB", MAX_STDIN / 1024);
            return Err((CniError::Decode(msg), None));
        }
    }

    if env.command == Command::Version {
        // VERSION must answer even for configs of versions we do not speak.
        return Ok(Some(version_reply(CniVersion::LATEST.as_str())));
    }

    let conf = NetConf::parse(&stdin).map_err(|e| (e, None))?;
    let version = conf.version().map_err(|e| (e, None))?;
    let with_version = |e: CniError| (e, Some(version));
    conf.validate().map_err(with_version)?;
    init_logging(&conf);

    let started = std::time::Instant::now();
    let result = match env.command {
        Command::Add => cmd::add::run(&env, &conf, version).map(Some),
        Command::Del => cmd::del::run(&env, &conf).map(|()| None),
        Command::Check => cmd::check::run(&env, &conf, version).map(|()| None),
        Command::Gc => cmd::gc::run(&conf, version).map(|()| None),
        Command::Status => cmd::status::run(&conf, version).map(|()| None),
        Command::Version => unreachable!("handled above"),
    };
    tracing::info!(
        command = ?env.command,
        container = %env.container_id,
        ifname = %env.ifname,
        elapsed_us = started.elapsed().as_micros() as u64,
        ok = result.is_ok(),
        "done"
    );
    result.map_err(with_version)
}

/// Logs go to `logFile` (appended) or stderr, at `logLevel` (default warn).
fn init_logging(conf: &NetConf) {
    let level =
        conf.log_level.as_deref().and_then(|l| libweft::cni::parse_log_level(l).ok()).unwrap_or(tracing::Level::WARN);
    let builder = tracing_subscriber::fmt().with_max_level(level).with_ansi(false).with_target(false);
    let file = conf.log_file.as_ref().and_then(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::OpenOptions::new().create(true).append(true).open(path).ok()
    });
    match file {
        Some(f) => builder.with_writer(std::sync::Mutex::new(f)).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}
