//! The command line: argument parsing and wiring of the modules.

pub mod images;
pub mod logs;
pub mod pods;

use crate::core::backoff::BackoffConfig;
use crate::core::manifest::parse_manifest;
use crate::core::translate::translate;
use crate::core::NodeFacts;
use crate::host::{detect_host_ip, hostname, lookup_user};
use crate::runtime::{Config, Runtime};
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::state::StateDir;
use crate::systemd::Systemd;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Run Kubernetes pods as systemd units.
#[derive(Debug, Parser)]
#[command(name = "unitlet", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format (default: text, or the node config file's `logFormat`).
    #[arg(long, global = true, value_enum, env = "UNITLET_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Where unitlet keeps admitted pods and restart bookkeeping.
    #[arg(long, global = true, default_value = crate::state::DEFAULT_STATE_DIR, env = "UNITLET_STATE_DIR")]
    pub state_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log format: the flag, else `logFormat` of `unitlet node
    /// --config`'s file, else text. A config file that cannot be read is
    /// reported later, when the node starts.
    pub fn effective_log_format(&self) -> LogFormat {
        if let Some(f) = self.log_format {
            return f;
        }
        if let Command::Node(NodeArgs {
            config: Some(path), ..
        }) = &self.command
        {
            if let Ok(cfg) = crate::cluster::config::NodeConfig::load(path) {
                if cfg.log_format.as_deref() == Some("json") {
                    return LogFormat::Json;
                }
            }
        }
        LogFormat::Text
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Output format of `pods`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Table with IP and node.
    Wide,
    /// v1 PodList as JSON.
    Json,
    /// v1 PodList as YAML.
    Yaml,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pods of a manifest directory (standalone mode; a daemon).
    Run(RunArgs),
    /// List pods with their status, like `kubectl get pods`.
    Pods {
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format.
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
    /// List the stored images, like `crictl images`.
    Images {
        /// The image store.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Fetch images into the store before pods need them: the images
    /// named, and those of the pods in `--manifest` files.
    Pull {
        /// Images (artifact URLs or OCI references).
        images: Vec<String>,
        /// Pod manifests whose images to pull (for a rollout that should
        /// not wait for downloads).
        #[arg(short = 'f', long)]
        manifest: Vec<PathBuf>,
        /// The image store.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a stored image; refused while a pod on this node names it.
    Rmi {
        /// The image, as `unitlet images` lists it (or its digest).
        image: String,
        /// The image store.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print a container's logs from the journal.
    Logs {
        /// Pod name.
        pod: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Container (default: the first one).
        #[arg(short, long)]
        container: Option<String>,
        /// Keep streaming until the container stops.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
        /// Only lines newer than this (e.g. 10s, 5m, 1h).
        #[arg(long)]
        since: Option<String>,
        /// Prefix each line with its RFC 3339 timestamp.
        #[arg(long)]
        timestamps: bool,
        /// Logs of the previous instance of a restarted container.
        #[arg(short, long)]
        previous: bool,
    },
    /// Print the units a pod manifest becomes (nothing is started).
    Render {
        /// Manifest file.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Node name to render for (default: this host's name).
        #[arg(long)]
        node_name: Option<String>,
        /// Node IP to render for.
        #[arg(long)]
        node_ip: Option<String>,
    },
    /// Boot a throwaway systemd node (systemd-nspawn on /, volatile) and run a command in it.
    Sandbox {
        /// Node name; `unitlet sandbox --attach NAME` enters it from elsewhere.
        #[arg(long, default_value = "unitlet-sandbox")]
        name: String,
        /// Host directories to bind at the same path (the current directory is always bound).
        #[arg(long)]
        bind: Vec<PathBuf>,
        /// Enter an already running node instead of booting one.
        #[arg(long)]
        attach: bool,
        /// Command to run inside (default: a shell).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Join a Kubernetes cluster as a node (cluster mode; a daemon).
    Node(NodeArgs),
    /// Print the version.
    Version,
    /// Run a container's program with a stdin or terminal that attach
    /// clients reach on a unix socket: the main process of a unit whose
    /// container asked for `stdin` or `tty` (see `unitlet::ttyhost`).
    #[command(hide = true)]
    TtyHost {
        /// The attach socket to listen on.
        #[arg(long)]
        socket: PathBuf,
        /// Run the program on a terminal.
        #[arg(long)]
        tty: bool,
        /// Close the program's stdin when the first client with stdin leaves.
        #[arg(long)]
        stdin_once: bool,
        /// UID:GID the program switches to itself: its terminal or pipes are theirs.
        #[arg(long, value_parser = crate::ttyhost::parse_owner)]
        owner: Option<(u32, u32)>,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Options of `unitlet node`. Flags override the config file.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// kubeconfig of the node's credentials (default: $KUBECONFIG, in-cluster, ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Node configuration file (YAML; see the README).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Node name (default: config file, else this host's name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// InternalIP to publish, also every pod's IP (default: config file, else the default route's address).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// Kubelet API port to serve and publish (default: config file, else 10250).
    #[arg(long)]
    pub port: Option<u16>,
    /// Address the kubelet API listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: std::net::IpAddr,
    /// The kubelet API's serving certificate (PEM).
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Serve the kubelet API with a self-signed certificate kept in
    /// `<state dir>/pki` (the default without --tls-cert-file or
    /// --rotate-server-certificates, as the kubelet's; API servers that
    /// verify kubelets refuse it).
    #[arg(long, conflicts_with = "tls_cert_file")]
    pub self_signed_serving_cert: bool,
    /// Get the serving certificate from the cluster (a kubernetes.io/kubelet-serving
    /// CSR, which an approver must approve) and renew it before it expires.
    #[arg(long, conflicts_with_all = ["tls_cert_file", "self_signed_serving_cert"])]
    pub rotate_server_certificates: bool,
    /// CA bundle that client certificates are verified against; a verified
    /// certificate authenticates as its CN, with its O as groups (default:
    /// the kubeconfig's cluster CA, as kubeadm sets kubelets up).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Let requests with no credentials in, as system:anonymous (then authorized as such).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub anonymous_auth: bool,
    /// Authenticate bearer tokens with TokenReview.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub authentication_token_webhook: bool,
    /// Authorize with SubjectAccessReview (Webhook) or allow every authenticated request.
    #[arg(long, value_enum, default_value = "Webhook")]
    pub authorization_mode: AuthzModeArg,
    /// Reconciler settings.
    #[command(flatten)]
    pub reconciler: ReconcilerArgs,
}

/// Reconciler settings shared by `run` and `node`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcilerArgs {
    /// First restart back-off delay.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub backoff_base: Duration,
    /// Longest restart back-off delay.
    #[arg(long, default_value = "300s", value_parser = parse_secs)]
    pub backoff_max: Duration,
    /// Safety-net relist interval (systemd's units; the manifest directory).
    #[arg(long, default_value = "20s", value_parser = parse_secs)]
    pub relist: Duration,
    /// Pods reconciled concurrently.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
    /// Units being started at once (systemd start jobs not yet finished).
    /// systemd runs jobs only when it has no D-Bus calls to answer, and keeps
    /// a bus match per queued job, so a burst of pods is fed to it in a window.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_starting: u32,
    /// Host path prefixes hostPath volumes (and hostPath or local
    /// PersistentVolumes) may use, comma-separated; unset allows any path,
    /// as the kubelet does.
    #[arg(long, value_delimiter = ',')]
    pub allowed_host_paths: Vec<String>,
    /// Hardening of every non-privileged container beyond its
    /// securityContext: `default` (Kubernetes' capability set, no device
    /// access) or `strict` (also a private /tmp, read-only kernel tunables
    /// and cgroups, no module loading; slower mass starts).
    #[arg(long, value_enum, default_value = "default")]
    pub pod_hardening: HardeningArg,
    /// The image store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Image garbage collection starts above this percentage of the image
    /// store's file system (the kubelet's imageGCHighThresholdPercent;
    /// default 85).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_threshold: Option<u8>,
    /// ... and removes images until usage is below this percentage
    /// (default 80).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: Option<u8>,
    /// Images younger than this are never collected (default 120s).
    #[arg(long, value_parser = parse_secs)]
    pub image_minimum_gc_age: Option<Duration>,
    /// How often image garbage collection looks at the store's file system.
    #[arg(long, default_value = "300s", value_parser = parse_secs)]
    pub image_gc_period: Duration,
    /// Hard eviction thresholds, the kubelet's syntax:
    /// `signal<quantity|percentage`, comma-separated (signals
    /// memory.available, nodefs.available, nodefs.inodesFree,
    /// imagefs.available, imagefs.inodesFree, pid.available). Default
    /// `memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%`;
    /// an empty value sets none.
    #[arg(long)]
    pub eviction_hard: Option<String>,
    /// Soft eviction thresholds (same syntax); each needs a grace period.
    #[arg(long)]
    pub eviction_soft: Option<String>,
    /// How long each soft threshold must hold before pods are evicted:
    /// `signal=duration`, comma-separated (`memory.available=1m30s`).
    #[arg(long)]
    pub eviction_soft_grace_period: Option<String>,
    /// How much beyond each threshold is reclaimed before it no longer
    /// counts as met: `signal=quantity|percentage`, comma-separated.
    #[arg(long)]
    pub eviction_minimum_reclaim: Option<String>,
    /// How long a pressure condition stays after it was last seen
    /// (default 5m).
    #[arg(long)]
    pub eviction_pressure_transition_period: Option<String>,
    /// Grace period, in seconds, of pods evicted for a soft threshold
    /// (default 0; hard thresholds evict with 1 s, as the kubelet).
    #[arg(long)]
    pub eviction_max_pod_grace_period: Option<i64>,
    /// How often the eviction manager observes the node (the kubelet's
    /// fixed 10 s).
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub eviction_monitoring_interval: Duration,
}

/// Where images are stored and how they are fetched (`run`, `node`,
/// `images`, `pull`, `rmi`).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Images: where they are stored (default: `<state dir>/images`).
    #[arg(long)]
    pub image_store: Option<PathBuf>,
    /// Registries reached over plain HTTP (host[:port], comma-separated);
    /// loopback registries fall back to HTTP by themselves.
    #[arg(long, value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// Largest unpacked image, and largest download, in bytes (default 4 GiB).
    #[arg(long)]
    pub image_max_bytes: Option<u64>,
    /// Largest image store, in bytes (every image's unpacked size
    /// together); a pull that would pass it fails. Default: no limit but
    /// the file system (garbage collection keeps it below its thresholds).
    #[arg(long)]
    pub image_store_max_bytes: Option<u64>,
}

impl StoreArgs {
    /// The image manager over this store, collecting by `gc`.
    pub fn images(
        &self,
        state_dir: &std::path::Path,
        gc: crate::images::manager::Config,
    ) -> anyhow::Result<crate::images::manager::Images> {
        use crate::images::{manager, store::Store};
        let root = self
            .image_store
            .clone()
            .unwrap_or_else(|| state_dir.join("images"));
        let store =
            Store::open(&root).with_context(|| format!("image store {}", root.display()))?;
        let puller = crate::images::puller::NetPuller::new(self.insecure_registries.clone());
        let cfg = manager::Config {
            image_max_bytes: self.image_max_bytes.unwrap_or(gc.image_max_bytes),
            store_max_bytes: self.image_store_max_bytes.or(gc.store_max_bytes),
            ..gc
        };
        Ok(manager::Images::new(
            store,
            std::sync::Arc::new(puller),
            cfg,
        )?)
    }
}

/// `--authorization-mode` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuthzModeArg {
    /// SubjectAccessReview on nodes/<node> with the kubelet's attributes.
    #[value(name = "Webhook")]
    Webhook,
    /// Every authenticated request.
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
}

/// `--pod-hardening` values (see [`crate::core::Hardening`]).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum HardeningArg {
    /// Kubernetes' capability set, no device access.
    Default,
    /// Also private /tmp, read-only kernel tunables and cgroups.
    Strict,
}

impl From<HardeningArg> for crate::core::Hardening {
    fn from(h: HardeningArg) -> Self {
        match h {
            HardeningArg::Default => crate::core::Hardening::Default,
            HardeningArg::Strict => crate::core::Hardening::Strict,
        }
    }
}

impl ReconcilerArgs {
    /// The image manager these settings describe; a cluster node's
    /// config file fills in what the flags leave out.
    pub fn images(
        &self,
        state_dir: &std::path::Path,
        file: Option<&crate::cluster::config::NodeConfig>,
    ) -> anyhow::Result<crate::images::manager::Images> {
        // Containers in OCI roots switch users through it.
        if let Err(e) = crate::images::helper::install() {
            tracing::warn!(path = crate::core::image::IMAGE_EXEC_HOST, error = %e, "cannot install the image-exec helper: OCI containers with a non-root user will fail to start");
        }
        let d = crate::images::manager::Config::default();
        let high = self
            .image_gc_high_threshold
            .or(file.and_then(|f| f.image_gc_high_threshold_percent))
            .unwrap_or(d.gc_high_percent)
            .min(100);
        let low = self
            .image_gc_low_threshold
            .or(file.and_then(|f| f.image_gc_low_threshold_percent))
            .unwrap_or(d.gc_low_percent)
            .min(high);
        let min_age = match (
            self.image_minimum_gc_age,
            file.and_then(|f| f.image_minimum_gc_age.as_deref()),
        ) {
            (Some(v), _) => v.as_micros() as u64,
            (None, Some(v)) => parse_secs(v)
                .map_err(|e| anyhow::anyhow!("config file: imageMinimumGCAge {v:?}: {e}"))?
                .as_micros() as u64,
            (None, None) => d.gc_min_age_us,
        };
        let mut store = self.store.clone();
        if store.insecure_registries.is_empty() {
            if let Some(v) = file.and_then(|f| f.insecure_registries.clone()) {
                store.insecure_registries = v;
            }
        }
        if store.image_max_bytes.is_none() {
            store.image_max_bytes = file.and_then(|f| f.image_max_bytes);
        }
        if store.image_store_max_bytes.is_none() {
            store.image_store_max_bytes = file.and_then(|f| f.image_store_max_bytes);
        }
        let cfg = crate::images::manager::Config {
            gc_high_percent: high,
            gc_low_percent: low,
            gc_min_age_us: min_age,
            gc_period: self.image_gc_period,
            ..d
        };
        let images = store.images(state_dir, cfg)?;
        // What an interrupted pull or removal of an earlier agent left (the
        // agent alone: `unitlet pull` may be running beside it).
        images.store().clear_tmp()?;
        Ok(images)
    }

    /// The eviction manager's settings: the flags over the node config
    /// file's keys over the kubelet's defaults.
    pub fn eviction(
        &self,
        file: Option<&crate::cluster::config::NodeConfig>,
    ) -> anyhow::Result<crate::eviction::Options> {
        use crate::core::eviction::parse_map;
        let mut s = file.map(|f| f.eviction_settings()).unwrap_or_default();
        if let Some(v) = &self.eviction_hard {
            s.hard = Some(parse_map("--eviction-hard", v, '<')?);
        }
        if let Some(v) = &self.eviction_soft {
            s.soft = parse_map("--eviction-soft", v, '<')?;
        }
        if let Some(v) = &self.eviction_soft_grace_period {
            s.soft_grace_period = parse_map("--eviction-soft-grace-period", v, '=')?;
        }
        if let Some(v) = &self.eviction_minimum_reclaim {
            s.minimum_reclaim = parse_map("--eviction-minimum-reclaim", v, '=')?;
        }
        if let Some(v) = &self.eviction_pressure_transition_period {
            s.pressure_transition_period = Some(v.clone());
        }
        if let Some(v) = self.eviction_max_pod_grace_period {
            s.max_pod_grace_period = Some(v);
        }
        if self.eviction_monitoring_interval.is_zero() {
            bail!("--eviction-monitoring-interval: must be longer than 0s");
        }
        Ok(crate::eviction::Options {
            config: s.config()?,
            interval: self.eviction_monitoring_interval,
            pressure_file: Some("/proc/pressure/memory".into()),
        })
    }

    /// The reconciler's configuration for `node` (no status sink).
    fn config(&self, node: NodeFacts, images: crate::images::manager::Images) -> Config {
        Config {
            images: Some(images),
            objects: None,
            node,
            backoff: BackoffConfig {
                base_us: self.backoff_base.as_micros() as u64,
                max_us: self.backoff_max.as_micros() as u64,
            },
            relist: self.relist,
            workers: self.workers,
            max_starting: self.max_starting as usize,
            reports: None,
            allowed_host_paths: self.allowed_host_paths.clone(),
            boot_id: crate::host::boot_id(),
        }
    }
}

/// Options of `unitlet run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory of pod manifests.
    #[arg(long, env = "UNITLET_MANIFESTS")]
    pub manifests: PathBuf,
    /// Node name (default: this host's name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// IP to report as host and pod IP (default: the address of the default route).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// Where to serve /metrics, /metrics/cadvisor, /metrics/probes and
    /// /healthz: plain HTTP on a loopback address, HTTPS with a self-signed
    /// certificate (kept in the state directory) on any other; empty or 0
    /// serves none.
    #[arg(long, default_value = "127.0.0.1:10255", value_parser = crate::metrics::http::parse_bind_address)]
    pub metrics_bind_address: crate::metrics::http::BindAddress,
    /// Reconciler settings.
    #[command(flatten)]
    pub reconciler: ReconcilerArgs,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse()
            .map(Duration::from_millis)
            .map_err(|e| e.to_string());
    }
    logs::parse_duration(s).map(Duration::from_micros)
}

/// `<state dir>/pods`, absolute (units bind paths below it).
fn pods_dir(state_dir: &std::path::Path) -> String {
    std::path::absolute(state_dir.join("pods"))
        .unwrap_or_else(|_| state_dir.join("pods"))
        .to_string_lossy()
        .into_owned()
}

fn node_facts(state: &StateDir, root: &std::path::Path) -> NodeFacts {
    // The daemon records the facts it runs with; the CLI reuses them.
    let saved = std::fs::read(root.join("node.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<(String, String)>(&b).ok());
    let _ = state;
    match saved {
        Some((node_name, host_ip)) => NodeFacts {
            node_name,
            host_ip,
            allocatable: crate::host::allocatable(root),
            pods_dir: pods_dir(root),
            hardening: Default::default(),
            agent_exe: crate::host::agent_exe(),
        },
        None => NodeFacts {
            node_name: hostname(),
            host_ip: detect_host_ip(),
            allocatable: crate::host::allocatable(root),
            pods_dir: pods_dir(root),
            hardening: Default::default(),
            agent_exe: crate::host::agent_exe(),
        },
    }
}

/// Runs the CLI.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("unitlet {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Render {
            file,
            node_name,
            node_ip,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let node = NodeFacts {
                node_name: node_name.unwrap_or_else(hostname),
                host_ip: node_ip.unwrap_or_else(detect_host_ip),
                allocatable: crate::host::allocatable(std::path::Path::new("/")),
                pods_dir: pods_dir(&cli.state_dir),
                hardening: Default::default(),
                agent_exe: crate::host::agent_exe(),
            };
            let name = file.to_string_lossy();
            let pod = parse_manifest(&bytes, &name, &node.node_name, name.ends_with(".json"))
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            print!("{}", translate(&pod.pod, &node, &lookup_user).render());
            Ok(())
        }
        Command::TtyHost {
            socket,
            tty,
            stdin_once,
            owner,
            mut command,
        } => {
            let program = command.remove(0);
            let code = crate::ttyhost::main(crate::ttyhost::Options {
                socket,
                tty,
                stdin_once,
                owner,
                program,
                args: command,
            })
            .await;
            std::process::exit(code);
        }
        Command::Run(args) => run(args, cli.state_dir).await,
        Command::Node(args) => node(args, cli.state_dir).await,
        Command::Images { store } => {
            let images = store.images(&cli.state_dir, Default::default())?;
            images::list(&images);
            Ok(())
        }
        Command::Pull {
            images: names,
            manifest,
            store,
        } => {
            let images = store.images(&cli.state_dir, Default::default())?;
            let mut all = names;
            for m in &manifest {
                for i in images::manifest_images(m)? {
                    if !all.contains(&i) {
                        all.push(i);
                    }
                }
            }
            images::pull(&images, &all).await
        }
        Command::Rmi { image, store } => {
            let images = store.images(&cli.state_dir, Default::default())?;
            images::rmi(&images, &cli.state_dir, &image)
        }
        Command::Pods {
            namespace,
            all_namespaces,
            output,
        } => {
            let socket = crate::local::socket_path(&cli.state_dir);
            let mut views = match crate::local::pods(&socket).await {
                Some(rows) => rows,
                None => {
                    let sd = Systemd::connect().await?;
                    let state = StateDir::at(&cli.state_dir);
                    let node = node_facts(&state, &cli.state_dir);
                    let views = pods::collect(&sd, &state, &node).await?;
                    views.into_iter().map(pods::PodRow::from).collect()
                }
            };
            views.retain(|v| {
                all_namespaces || v.pod.metadata.namespace.as_deref() == Some(namespace.as_str())
            });
            views.sort_by(|a, b| {
                (&a.pod.metadata.namespace, &a.pod.metadata.name)
                    .cmp(&(&b.pod.metadata.namespace, &b.pod.metadata.name))
            });
            match output {
                Some(Output::Json) | Some(Output::Yaml) => {
                    let list = k8s_openapi::List {
                        items: views.into_iter().map(|v| v.pod).collect(),
                        metadata: Default::default(),
                    };
                    if output == Some(Output::Json) {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        print!(
                            "{}",
                            serde_saphyr::to_string(&serde_json::to_value(&list)?)?
                        );
                    }
                }
                _ => print!(
                    "{}",
                    pods::table(&views, output == Some(Output::Wide), all_namespaces)
                ),
            }
            Ok(())
        }
        Command::Logs {
            pod,
            namespace,
            container,
            follow,
            tail,
            since,
            timestamps,
            previous,
        } => {
            let sd = Systemd::connect().await?;
            let state = StateDir::at(&cli.state_dir);
            let node = node_facts(&state, &cli.state_dir);
            let views = pods::collect(&sd, &state, &node).await?;
            let Some(view) = views
                .into_iter()
                .filter(|v| {
                    v.rec.pod.metadata.name.as_deref() == Some(pod.as_str())
                        && v.rec.pod.metadata.namespace.as_deref() == Some(namespace.as_str())
                })
                .max_by_key(|v| v.rec.admitted_us)
            else {
                bail!("pods {pod:?} not found in namespace {namespace:?}");
            };
            let since_us = since
                .as_deref()
                .map(logs::parse_duration)
                .transpose()
                .map_err(anyhow::Error::msg)?
                .map(|d| crate::clock::now_us().saturating_sub(d));
            logs::run(
                &sd,
                &view,
                &logs::LogOptions {
                    container,
                    follow,
                    tail,
                    since_us,
                    timestamps,
                    previous,
                },
            )
            .await
        }
        Command::Sandbox {
            name,
            bind,
            attach,
            command,
        } => sandbox(name, bind, attach, command),
    }
}

async fn node(args: NodeArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => crate::cluster::config::NodeConfig::load(path)?,
        None => crate::cluster::config::NodeConfig::default(),
    };
    if let Some(p) = args.port {
        config.port = p;
    }
    let node_name = args
        .node_name
        .or_else(|| config.node_name.clone())
        .unwrap_or_else(|| hostname().to_lowercase());
    let node_ip = args
        .node_ip
        .or_else(|| config.node_ip.clone())
        .unwrap_or_else(detect_host_ip);
    let state = StateDir::open(&state_dir)?;
    std::fs::write(
        state_dir.join("node.json"),
        serde_json::to_vec(&(&node_name, &node_ip))?,
    )?;
    tracing::info!(node = node_name, ip = node_ip, state = %state_dir.display(), "unitlet node starting");
    // The cluster module fills in the allocatable it publishes.
    let images = args.reconciler.images(&state_dir, Some(&config))?;
    let eviction = args.reconciler.eviction(Some(&config))?;
    let runtime = args.reconciler.config(
        NodeFacts {
            node_name: node_name.clone(),
            host_ip: node_ip.clone(),
            allocatable: Default::default(),
            pods_dir: pods_dir(&state_dir),
            hardening: args.reconciler.pod_hardening.into(),
            agent_exe: crate::host::agent_exe(),
        },
        images,
    );
    let cert = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => crate::kubelet::server::ServingCert::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ if args.rotate_server_certificates => crate::kubelet::server::ServingCert::FromCluster,
        // As the kubelet: without a configured certificate, a self-signed
        // one (`--self-signed-serving-cert` says so explicitly).
        _ => crate::kubelet::server::ServingCert::SelfSigned,
    };
    let kubelet_api = Some(crate::kubelet::KubeletApi {
        address: args.address,
        cert,
        client_ca: args.client_ca_file.clone(),
        anonymous: args.anonymous_auth,
        token_webhook: args.authentication_token_webhook,
        mode: match args.authorization_mode {
            AuthzModeArg::Webhook => crate::kubelet::auth::Mode::Webhook,
            AuthzModeArg::AlwaysAllow => crate::kubelet::auth::Mode::AlwaysAllow,
        },
    });
    let opts = crate::cluster::NodeOptions {
        kubeconfig: args.kubeconfig,
        config,
        node_name,
        node_ip,
        runtime,
        kubelet_api,
        eviction,
    };
    spawn_watchdog();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = crate::cluster::run(opts, state) => r?,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("unitlet stopping; pods keep running");
    Ok(())
}

/// Pings systemd's watchdog (`WatchdogSec=` of unitlet's own unit) at half
/// its interval from the async runtime, so a wedged runtime gets the agent
/// restarted; the pods are unaffected by that.
fn spawn_watchdog() {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(usec / 2));
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}

async fn run(args: RunArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    let manifests = std::fs::canonicalize(&args.manifests)
        .with_context(|| format!("manifest directory {}", args.manifests.display()))?;
    if !manifests.is_dir() {
        bail!("--manifests {}: not a directory", manifests.display());
    }
    let state = StateDir::open(&state_dir)?;
    crate::host::cgroup_warning();
    let node = NodeFacts {
        node_name: args.node_name.unwrap_or_else(hostname),
        host_ip: args.node_ip.unwrap_or_else(detect_host_ip),
        allocatable: crate::host::allocatable(&state_dir),
        pods_dir: pods_dir(&state_dir),
        hardening: args.reconciler.pod_hardening.into(),
        agent_exe: crate::host::agent_exe(),
    };
    std::fs::write(
        state_dir.join("node.json"),
        serde_json::to_vec(&(&node.node_name, &node.host_ip))?,
    )?;
    let sd = Systemd::connect().await?;
    tracing::info!(node = node.node_name, ip = node.host_ip, manifests = %manifests.display(), state = %state_dir.display(), "unitlet starting");
    let images = args.reconciler.images(&state_dir, None)?;
    let eviction = args.reconciler.eviction(None)?;
    let image_dir = images.store().root().to_path_buf();
    let mut cfg = args.reconciler.config(node.clone(), images);
    let objects = std::sync::Arc::new(crate::source::Objects::default());
    cfg.objects = Some(objects.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let source = tokio::spawn(crate::source::watch(
        manifests,
        node.node_name.clone(),
        false,
        args.reconciler.relist,
        Some(objects),
        tx,
    ));
    let rt = Runtime::new(std::sync::Arc::new(sd), state, cfg);
    // Standalone nodes evict too; the conditions are logged.
    let signals = crate::eviction::HostSignals::new(state_dir.clone(), Some(image_dir));
    let _pressure = crate::eviction::spawn(rt.clone(), std::sync::Arc::new(signals), eviction);
    let metrics = args.metrics_bind_address.0.map(|addr| {
        let dir = state_dir.join("metrics");
        crate::metrics::http::serve(addr, rt.clone(), node.node_name.clone(), dir)
    });
    let metrics = async move {
        match metrics {
            Some(serving) => serving.await,
            None => std::future::pending().await,
        }
    };
    crate::local::spawn(crate::local::socket_path(&state_dir), rt.clone());
    let runtime = tokio::spawn(rt.run(rx));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    spawn_watchdog();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = source => r?.context("watching the manifest directory")?,
        r = metrics => r?,
        r = runtime => r??,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Pods keep running: stopping the agent never stops what it manages.
    tracing::info!("unitlet stopping; pods keep running");
    Ok(())
}

fn sandbox(
    name: String,
    mut bind: Vec<PathBuf>,
    attach: bool,
    command: Vec<String>,
) -> anyhow::Result<()> {
    let command = if command.is_empty() {
        vec!["/bin/bash".to_string()]
    } else {
        command
    };
    let cwd = std::env::current_dir()?;
    let node = if attach {
        Sandbox::attach(&name)?
    } else {
        bind.push(cwd.clone());
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                if !bind.iter().any(|b| dir.starts_with(b)) {
                    bind.push(dir.to_path_buf());
                }
            }
        }
        bind.sort();
        bind.dedup();
        eprintln!("booting sandbox node {name:?} (systemd-nspawn, volatile root)…");
        Sandbox::boot(&SandboxOptions {
            name: name.clone(),
            binds: bind,
            ..Default::default()
        })?
    };
    let status = node
        .command(&command[0])
        .args(&command[1..])
        .env(
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                std::env::current_exe()?
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        )
        .current_dir(&cwd)
        .status()?;
    drop(node);
    std::process::exit(status.code().unwrap_or(1));
}
