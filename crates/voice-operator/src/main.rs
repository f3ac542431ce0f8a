//! `voice-operator`: `run` the controller, print the `crd`, or `render -f FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use voice_operator::controller::{LeaderElection, RunConfig, run};
use voice_types::VoicePipeline;

/// jemalloc instead of glibc's malloc. The operator's work is many short-lived allocations
/// (watch events, JSON, HTTP buffers), and glibc's malloc and free took a quarter of its CPU
/// in the 1,000-pipeline run. jemalloc took 15-20 % less CPU there, at a lower peak RSS
/// (mimalloc, also tried, took the same CPU but more memory; BENCHMARKS.md, "Fifteenth session").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Kubernetes operator for VoicePipeline (voice.workflow.io/v1alpha1).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller against the cluster of $KUBECONFIG (or the in-cluster config).
    Run(RunArgs),
    /// Print the VoicePipeline CustomResourceDefinition as YAML.
    Crd,
    /// Print every child object the operator would apply for the pipelines in FILE.
    Render {
        /// YAML file with one or more VoicePipeline documents (other kinds are skipped); `-` is stdin.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace of pipelines that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Namespaces to watch (repeat or comma-separate); empty: all namespaces.
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// With --namespace: further namespaces where pipelines put dashboards
    /// (spec.observability.dashboards.namespace). The operator watches its ConfigMaps there, so
    /// a changed or deleted dashboard is restored at once; without the watch, only at the
    /// pipeline's next pass at least 10 minutes after the last apply (no timer runs a pass).
    /// Needs list and watch on configmaps there (Helm: dashboardNamespaces).
    #[arg(
        long = "dashboard-namespace",
        env = "DASHBOARD_NAMESPACES",
        value_delimiter = ','
    )]
    dashboard_namespaces: Vec<String>,
    /// Address of /metrics, /livez and /readyz.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8081")]
    admin_addr: SocketAddr,
    /// Most pipelines reconciled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Hold a coordination.k8s.io Lease so that only one replica reconciles.
    #[arg(long, env = "LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the Lease (default: the pod's namespace, POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_elect_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = "voice-operator-leader")]
    leader_elect_name: String,
    /// Lease duration in seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's identity (default: POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds between looks for the monitoring.coreos.com CRDs.
    #[arg(long, default_value_t = 10)]
    crd_poll_seconds: u64,
    /// Log as JSON lines.
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", serde_yaml::to_string(&VoicePipeline::crd())?);
            Ok(())
        }
        Command::Render { file, namespace } => {
            let yaml = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("read {}", file.display()))?
            };
            print!("{}", voice_operator::render::render(&yaml, &namespace)?);
            Ok(())
        }
        Command::Run(args) => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into());
            let fmt = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            if args.log_json {
                fmt.json().init()
            } else {
                fmt.init()
            }
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(run_operator(args))
        }
    }
}

async fn run_operator(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration ($KUBECONFIG or in-cluster)")?;
    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("voice-operator-{}", std::process::id()));
    let leader_election = if args.leader_elect {
        let namespace = args
            .leader_elect_namespace
            .context("--leader-elect needs --leader-elect-namespace or POD_NAMESPACE")?;
        Some(LeaderElection {
            namespace,
            name: args.leader_elect_name,
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
        })
    } else {
        None
    };
    let cfg = RunConfig {
        namespaces: args
            .namespaces
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect(),
        dashboard_namespaces: args
            .dashboard_namespaces
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect(),
        admin_addr: args.admin_addr,
        concurrency: args.concurrency,
        leader_election,
        crd_poll_interval: Duration::from_secs(args.crd_poll_seconds),
        instance: Some(identity),
    };
    run(cfg, client, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
