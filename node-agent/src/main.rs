//! weft-agent: programs pod networking between nodes from the Kubernetes API.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use weft_agent::apply::{files, kernel, weft_table};
use weft_agent::config::{self, Backend, FileConfig};
use weft_agent::desired::files::{
    conflist, conflist_path, node_config_path, policy_namespaces_path, portmap_installed,
};
use weft_agent::{agent, health, http, ipam_gc, metrics, trace_cmd};

#[derive(Parser)]
#[command(
    name = "weft-agent",
    version,
    about = "weft node agent: routes pod subnets between nodes and masquerades egress"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the DaemonSet's main container).
    Run(RunArgs),
    /// Install the weft CNI binary (and the conflist, once the node is configured); the init container runs this.
    InstallCni {
        #[command(flatten)]
        config: ConfigArgs,
        /// The plugin binary to install.
        #[arg(long, env = "WEFT_CNI_BINARY", default_value = "/usr/local/bin/weft")]
        binary: PathBuf,
    },
    /// Remove everything weft created on this node (for uninstall).
    Cleanup {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// NetworkPolicy tools.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Explain whether a connection between two pods passes weft's NetworkPolicy rules, and why.
    Trace {
        /// Source pod: NAMESPACE/POD.
        #[arg(long)]
        from: String,
        /// Destination pod: NAMESPACE/POD.
        #[arg(long)]
        to: String,
        /// Destination port and protocol: 80/TCP, 53/UDP.
        #[arg(long)]
        port: String,
        /// Only IPv4 (false) or only IPv6 (true); default: every family both pods have.
        #[arg(long)]
        ipv6: Option<bool>,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// Configuration file (JSON).
    #[arg(long, env = "WEFT_CONFIG", default_value = "/etc/weft/config.json")]
    config: PathBuf,
    /// Overrides `clusterCIDRs` (comma-separated).
    #[arg(long, env = "WEFT_CLUSTER_CIDRS", value_delimiter = ',')]
    cluster_cidrs: Option<Vec<String>>,
    /// Overrides `backend`: vxlan, routes or auto.
    #[arg(long, env = "WEFT_BACKEND")]
    backend: Option<String>,
    /// Overrides `mtu`.
    #[arg(long, env = "WEFT_MTU")]
    mtu: Option<u32>,
    /// Overrides `masquerade`.
    #[arg(long, env = "WEFT_MASQUERADE")]
    masquerade: Option<bool>,
    /// Overrides `underlayInterface`.
    #[arg(long, env = "WEFT_UNDERLAY_INTERFACE")]
    underlay_interface: Option<String>,
    /// Overrides `listenAddress` (of `/metrics`).
    #[arg(long, env = "WEFT_LISTEN_ADDRESS")]
    listen_address: Option<String>,
    /// Overrides `healthAddress` (of `/healthz` and `/readyz`).
    #[arg(long, env = "WEFT_HEALTH_ADDRESS")]
    health_address: Option<String>,
    /// Overrides `cniConfDir`.
    #[arg(long, env = "WEFT_CNI_CONF_DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// Overrides `cniBinDir`.
    #[arg(long, env = "WEFT_CNI_BIN_DIR")]
    cni_bin_dir: Option<PathBuf>,
    /// Overrides `runDir`.
    #[arg(long, env = "WEFT_RUN_DIR")]
    run_dir: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// This node's name (the chart sets it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
}

impl ConfigArgs {
    /// File first (optional when flags give the required keys), then flags and environment.
    fn load(&self) -> anyhow::Result<config::Config> {
        let mut file = if self.config.exists() { FileConfig::load(&self.config)? } else { FileConfig::default() };
        if let Some(c) = &self.cluster_cidrs {
            file.cluster_cidrs = c.clone();
        }
        if let Some(b) = &self.backend {
            file.backend = Some(b.parse::<Backend>().context("config key \"backend\"")?);
        }
        file.mtu = self.mtu.or(file.mtu);
        file.masquerade = self.masquerade.or(file.masquerade);
        file.underlay_interface = self.underlay_interface.clone().or(file.underlay_interface);
        file.listen_address = self.listen_address.clone().or(file.listen_address);
        file.health_address = self.health_address.clone().or(file.health_address);
        file.cni_conf_dir = self.cni_conf_dir.clone().or(file.cni_conf_dir);
        file.cni_bin_dir = self.cni_bin_dir.clone().or(file.cni_bin_dir);
        file.run_dir = self.run_dir.clone().or(file.run_dir);
        Ok(file.validate()?)
    }
}

fn main() -> std::process::ExitCode {
    one_malloc_arena();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-agent: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One glibc malloc arena for every thread. The blocking threads that
/// read `nft` listings and write tables would each get an arena of their
/// own, whose freed megabytes no other thread reuses; the agent's
/// threads seldom allocate at once, so one arena costs no contention.
fn one_malloc_arena() {
    // SAFETY: mallopt only sets a tunable of the C allocator; called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Runs one subcommand. Over 60 lines: one arm per subcommand, each a few
/// lines of wiring.
async fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Version => {
            println!("weft-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Cmd::Run(args) => {
            let cfg = args.config.load()?;
            let client = kube::Client::try_default().await.context("connect to the Kubernetes API")?;
            let metrics = Arc::new(metrics::Metrics::new());
            let health = Arc::new(health::Health::default());
            let stale = cfg.resync_period.as_secs() * 3 + 30;
            let server = http::serve(cfg.health_address, cfg.listen_address, health.clone(), metrics.clone(), stale);
            tokio::spawn(ipam_gc::run(cfg.clone(), client.clone(), args.node_name.clone(), metrics.clone()));
            tokio::select! {
                r = server => r,
                r = agent::run(cfg, args.node_name, client, metrics, health) => r,
            }
        }
        Cmd::Policy(PolicyCmd::Trace { from, to, port, ipv6 }) => {
            let client = kube::Client::try_default().await.context("connect to the Kubernetes API")?;
            print!("{}", trace_cmd::run(client, &from, &to, &port, ipv6).await?);
            Ok(())
        }
        Cmd::InstallCni { config, binary } => {
            let cfg = config.load()?;
            let dst = files::install_binary(&binary, &cfg.cni_bin_dir)?;
            tracing::info!(path = %dst.display(), "installed the weft CNI plugin");
            // The conflist only once node.json exists (written by `run`): a
            // conflist makes containerd report the network ready.
            match libweft::node_config::NodeConfig::load(&node_config_path(&cfg)) {
                Ok(node) => {
                    files::write(&cfg, &node, &conflist(&cfg, portmap_installed(&cfg)))?;
                    tracing::info!("node already configured: conflist written");
                }
                Err(_) => tracing::info!("conflist will be written by weft-agent run once the node has its podCIDRs"),
            }
            Ok(())
        }
        Cmd::Cleanup { config } => {
            let cfg = config.load()?;
            let nl = libweft::netlink::Netlink::connect()?;
            let removed = kernel::remove_all(&nl).await?;
            let links = nl.links().await?.into_iter().map(|l| l.index);
            let filters = weft_agent::apply::fastpath::remove(links, &cfg.bpf_pin_dir)?;
            if filters > 0 {
                tracing::info!(filters, "removed the BPF fast path's filters and pins");
            }
            weft_table::remove().await?;
            weft_agent::apply::policy_table::remove().await?;
            // Without the policy table nothing holds pending pods; release them anyway so a
            // reinstall does not find them closed.
            let released = weft_agent::apply::policy_table::release_pending(&nl, |_, _| true).await?;
            if released.released > 0 {
                tracing::info!(released = released.released, "released pending pod interfaces");
            }
            for path in [
                conflist_path(&cfg),
                node_config_path(&cfg),
                policy_namespaces_path(&cfg),
                cfg.cni_bin_dir.join("weft"),
            ] {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "removed"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(anyhow::anyhow!("remove {}: {e}", path.display())),
                }
            }
            tracing::info!(kernel_objects = removed, "removed weft's VXLAN device, peer routes and nftables tables");
            // The plugin's IPAM store goes too, unless pods still hold addresses from it.
            let ipam = cfg.run_dir.join("ipam");
            if ipam.join(ipam_gc::NETWORK).is_dir() {
                let store = libweft::ipam::DiskStore::open(&ipam, ipam_gc::NETWORK)?;
                if store.remove_if_unused()? {
                    tracing::info!(path = %ipam.display(), "removed the IPAM store");
                } else {
                    tracing::warn!(path = %ipam.display(), "kept the IPAM store: pods still hold addresses from it");
                }
            }
            let _ = std::fs::remove_dir(&ipam); // only if empty
            Ok(())
        }
    }
}
