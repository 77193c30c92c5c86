//! Cluster mode: this machine as a Node of a Kubernetes cluster.
//!
//! The virtual-kubelet shape: register the Node, keep its Lease and status
//! fresh, take the pods bound to it (`spec.nodeName`) from a watch, run them
//! with the same reconciler as standalone mode, and write their status back.
//! Kubernetes stays the distributed engine; nothing here schedules.
//!
//! Data flows one way: API watch → desired pods → reconciler → systemd, and
//! reconciler reports → status writer → API server. The API server being
//! unreachable stops only the last step; pods keep running and statuses
//! converge when it returns.

pub mod config;
pub mod events;
pub mod mirror;
pub mod node;
pub mod pods;
pub mod ratelimit;
pub mod refs;
pub mod retry;

use crate::core::manifest::StaticPod;
use crate::core::NodeFacts;
use crate::runtime::{Config as RuntimeConfig, Runtime};
use crate::state::StateDir;
use crate::systemd::Systemd;
use config::NodeConfig;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The namespace of node heartbeat leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration the kubelet uses (`nodeLeaseDurationSeconds`).
pub const LEASE_DURATION_S: i32 = 40;

/// A failure that stops cluster mode, naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable kubeconfig.
    #[error("cannot load the kubeconfig ({0}); pass --kubeconfig PATH or set KUBECONFIG")]
    Kubeconfig(String),
    /// Registering the Node failed.
    #[error("cannot register node {node}: {source}; check that the API server is reachable and that the node's credentials may create and patch nodes (see the README's RBAC section)")]
    Register {
        /// Node name.
        node: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
    /// A configuration problem.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// systemd.
    #[error(transparent)]
    Systemd(#[from] crate::systemd::SystemdError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// Everything `unitlet node` needs, after flags and config file are merged.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Explicit kubeconfig, else `$KUBECONFIG`, in-cluster, `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The merged configuration.
    pub config: NodeConfig,
    /// Node name.
    pub node_name: String,
    /// The InternalIP.
    pub node_ip: String,
    /// Reconciler settings other than node facts and reports.
    pub runtime: RuntimeConfig,
    /// The kubelet API, if it is to be served (a serving certificate was
    /// configured); its port is the one published.
    pub kubelet_api: Option<crate::kubelet::KubeletApi>,
    /// The eviction manager's settings.
    pub eviction: crate::eviction::Options,
}

/// A client for the API server, from `kubeconfig` (else the usual search),
/// sending at most `burst` requests at once and `qps` per second over time
/// (client-go's token bucket, see [`ratelimit`]): the API
/// server's fairness would otherwise be this agent's only brake. Answers
/// that ask to be retried later are, after the time they ask for
/// ([`retry`]); every retry takes a token of its own.
/// Also returns the cluster CA the kubeconfig names (DER), if any: the
/// kubelet API trusts client certificates it signed by default.
async fn client(
    kubeconfig: &Option<PathBuf>,
    qps: u32,
    burst: u32,
) -> Result<(kube::Client, Vec<Vec<u8>>), ClusterError> {
    let err = |e: &dyn std::fmt::Display| ClusterError::Kubeconfig(e.to_string());
    let cfg = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| err(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| err(&e))?,
    };
    let mut cfg = cfg;
    // kube's own retry of 429/503/504 answers tries a request 15 times
    // over up to minutes, inside the call: a status written during an
    // outage then waited a minute and more after the server was back, and
    // every caller was stuck meanwhile. Only what the server asks to be
    // retried is retried inside the call ([`retry`]); otherwise each caller
    // retries on its own with a bounded back-off, as client-go's callers do.
    cfg.default_retry = false;
    let cluster_ca = cfg.root_cert.clone().unwrap_or_default();
    if cfg.cluster_url.scheme_str() == Some("http") && cfg.root_cert.is_none() {
        // A plain-HTTP server (`kubectl proxy`, a local test server) needs
        // no roots, and a host without a CA bundle must not fail for it.
        cfg.root_cert = Some(Vec::new());
    }
    let client = kube::client::ClientBuilder::try_from(cfg)
        .map_err(|e| err(&e))?
        .with_layer(&ratelimit::TokenBucketLayer::new(qps, burst))
        .with_layer(&tower::util::MapResultLayer::new(count_api_errors))
        // The retry layer needs a service it can clone.
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&tower::retry::RetryLayer::new(retry::RetryAfter::default()))
        .build();
    Ok((client, cluster_ca))
}

/// Counts requests the API server failed (5xx, 429) or never answered.
fn count_api_errors<B, E>(r: Result<hyper::Response<B>, E>) -> Result<hyper::Response<B>, E> {
    match &r {
        Ok(resp) if !(resp.status().is_server_error() || resp.status().as_u16() == 429) => {}
        _ => crate::metrics::api_error(),
    }
    r
}

/// Runs the node until the process is asked to stop.
pub async fn run(opts: NodeOptions, state: StateDir) -> Result<(), ClusterError> {
    let (client, cluster_ca) =
        client(&opts.kubeconfig, opts.config.api_qps, opts.config.api_burst).await?;
    let sd = Systemd::connect().await?;
    let version = sd.version().await?;
    let facts = node::read_host_facts(state.root(), version);
    let name = opts.node_name.clone();
    let node_uid = loop {
        match register(&client, &name, &opts, &facts).await {
            Ok(uid) => break uid,
            // Refused for good (credentials, rights, a bad object): say so.
            Err(ClusterError::Register { source, .. })
                if matches!(api_code(&source), Some(400 | 401 | 403 | 422)) =>
            {
                return Err(ClusterError::Register { node: name, source })
            }
            Err(e) => {
                warn!(error = %e, "cannot register the node yet; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    info!(node = name, ip = opts.node_ip, "node registered");

    let (reports_tx, reports_rx) = tokio::sync::mpsc::unbounded_channel();
    let (desired_tx, desired_rx) = tokio::sync::mpsc::channel(16);
    let known = pods::Known::default();
    let mut rcfg = opts.runtime.clone();
    rcfg.node = NodeFacts {
        node_name: name.clone(),
        host_ip: opts.node_ip.clone(),
        allocatable: node::allocatable(&opts.config, &facts),
        pods_dir: opts.runtime.node.pods_dir.clone(),
        hardening: opts.runtime.node.hardening,
        agent_exe: opts.runtime.node.agent_exe.clone(),
    };
    rcfg.reports = Some(reports_tx.clone());
    let refs = refs::RefCache::new(client.clone());
    rcfg.objects = Some(refs.clone());

    tokio::spawn(lease_loop(
        client.clone(),
        name.clone(),
        node_uid.clone(),
        Duration::from_secs(u64::from(opts.config.lease_renew_seconds)),
    ));

    // Two sources of pods, one desired set: the API's bound pods and the
    // static pods of the manifest directory (if configured).
    let (api_tx, api_rx) = tokio::sync::mpsc::channel(16);
    let (static_tx, static_rx) = tokio::sync::mpsc::channel(16);
    let (statics_tx, statics_rx) = tokio::sync::watch::channel(Vec::new());
    match &opts.config.manifests {
        Some(dir) => {
            let (dir, node, relist) = (dir.clone(), name.clone(), rcfg.relist);
            tokio::spawn(async move {
                if let Err(e) =
                    crate::source::watch(dir.clone(), node, true, relist, None, static_tx).await
                {
                    // As a kubelet with a bad staticPodPath: say so, run the rest.
                    warn!(dir = %dir.display(), error = %e, "cannot watch the static pod directory");
                }
            });
        }
        None => {
            let _ = static_tx.send(Vec::new()).await;
        }
    }
    tokio::spawn(merge_sources(api_rx, static_rx, statics_tx, desired_tx));
    tokio::spawn(mirror::run(
        client.clone(),
        name.clone(),
        node_uid,
        known.clone(),
        statics_rx,
    ));
    tokio::spawn(pods::watch(
        client.clone(),
        name.clone(),
        known.clone(),
        refs,
        api_tx,
    ));
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (events_client, _) = self::client(
        &opts.kubeconfig,
        opts.config.event_record_qps,
        opts.config.event_burst,
    )
    .await?;
    tokio::spawn(events::write(events_client, name.clone(), events_rx));
    let _ = events_tx.send(node_event(
        &name,
        false,
        "Starting",
        "Starting unitlet.".into(),
    ));
    if let Some(lost) = crate::host::cgroup_warning() {
        let _ = events_tx.send(node_event(
            &name,
            true,
            "CgroupControllersUnavailable",
            lost,
        ));
    }
    tokio::spawn(pods::write_status(
        client.clone(),
        known,
        reports_rx,
        events_tx.clone(),
    ));
    let pki = state.root().join("pki");
    let state_root = state.root().to_path_buf();
    let local_socket = crate::local::socket_path(&state_root);
    let runtime = Runtime::new(Arc::new(sd.clone()), state, rcfg);
    let signals = crate::eviction::HostSignals::new(
        state_root.clone(),
        opts.runtime
            .images
            .as_ref()
            .map(|i| i.store().root().to_path_buf()),
    );
    let pressure =
        crate::eviction::spawn(runtime.clone(), Arc::new(signals), opts.eviction.clone());
    tokio::spawn(status_loop(
        client.clone(),
        sd.clone(),
        state_root,
        name.clone(),
        opts.node_ip.clone(),
        opts.config.clone(),
        events_tx.clone(),
        opts.runtime.images.clone(),
        pressure,
    ));
    if let Some(api) = opts.kubelet_api.clone() {
        let auth = crate::kubelet::auth::Auth::new(
            Some(client.clone()),
            &name,
            api.anonymous,
            api.token_webhook,
            api.mode,
        );
        let cfg = crate::kubelet::server::Config {
            listen: std::net::SocketAddr::new(api.address, opts.config.port),
            cert: api.cert.clone(),
            client_ca: client_ca(api.client_ca.clone(), cluster_ca),
            anonymous: api.anonymous,
            token_webhook: api.token_webhook,
            mode: api.mode,
            node_name: name.clone(),
            node_ip: opts.node_ip.clone(),
            cert_dir: pki.clone(),
        };
        let rt = runtime.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut cfg = cfg;
            if matches!(cfg.cert, crate::kubelet::server::ServingCert::FromCluster) {
                let addresses = vec![cfg.node_ip.clone(), cfg.node_name.clone()];
                let r =
                    crate::kubelet::cert::bootstrap(client, cfg.node_name.clone(), addresses, pki)
                        .await;
                cfg.cert = crate::kubelet::server::ServingCert::Rotating(r);
            }
            if let Err(e) = crate::kubelet::server::serve(cfg, rt, auth).await {
                tracing::error!(error = e, "the kubelet API is not served: kubectl logs, exec and top will not work on this node");
            }
        });
    }
    crate::local::spawn(local_socket, runtime.clone());
    let runtime = tokio::spawn(runtime.run(desired_rx));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    match runtime.await {
        Ok(r) => r.map_err(ClusterError::from),
        Err(e) => {
            warn!(error = %e, "reconciler stopped");
            Ok(())
        }
    }
}

/// Whose client certificates the kubelet API trusts: `--client-ca-file`,
/// else the kubeconfig's cluster CA (the API server's kubelet client
/// certificate is signed by it in kubeadm's setup), else nobody's, which
/// the agent says at start since the API server's requests will then fail.
fn client_ca(file: Option<PathBuf>, cluster_ca: Vec<Vec<u8>>) -> crate::kubelet::server::ClientCa {
    use crate::kubelet::server::ClientCa;
    match file {
        Some(f) => ClientCa::File(f),
        None if !cluster_ca.is_empty() => {
            info!("the kubelet API trusts client certificates signed by the kubeconfig's cluster CA (--client-ca-file overrides)");
            ClientCa::Kubeconfig(cluster_ca)
        }
        None => {
            warn!("the kubeconfig names no cluster CA and no --client-ca-file is given: the kubelet API trusts no client certificate, so the API server's requests (kubectl logs, exec, port-forward) will be refused until --client-ca-file names the CA that signed its kubelet client certificate");
            ClientCa::None
        }
    }
}

/// Sends the runtime the API's pods and the static pods as one set, once
/// both sources have spoken (the first set decides which running pods
/// survive a restart), and passes the static pods to the mirror manager.
async fn merge_sources(
    mut api: tokio::sync::mpsc::Receiver<Vec<Arc<StaticPod>>>,
    mut statics: tokio::sync::mpsc::Receiver<Vec<Arc<StaticPod>>>,
    mirror: tokio::sync::watch::Sender<Vec<Arc<StaticPod>>>,
    desired: tokio::sync::mpsc::Sender<Vec<Arc<StaticPod>>>,
) {
    let mut from_api: Option<Vec<Arc<StaticPod>>> = None;
    let mut from_dir: Option<Vec<Arc<StaticPod>>> = None;
    let mut dir_open = true;
    loop {
        tokio::select! {
            set = api.recv() => match set {
                Some(set) => from_api = Some(set),
                None => return,
            },
            set = statics.recv(), if dir_open => match set {
                Some(set) => {
                    let _ = mirror.send(set.clone());
                    from_dir = Some(set);
                }
                // The directory watch ended (an error was logged): keep its last set.
                None => {
                    dir_open = false;
                    from_dir.get_or_insert_with(Vec::new);
                }
            },
        }
        if let (Some(a), Some(d)) = (&from_api, &from_dir) {
            let all = a.iter().chain(d).cloned().collect();
            if desired.send(all).await.is_err() {
                return;
            }
        }
    }
}

/// The HTTP status of an API error, if the server answered.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Creates the Node, or adopts the one left by an earlier run (its taints,
/// possibly changed by admins, are kept; our labels are re-applied), then
/// writes its status. Returns the Node's UID.
async fn register(
    client: &kube::Client,
    name: &str,
    opts: &NodeOptions,
    facts: &node::HostFacts,
) -> Result<String, ClusterError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let err = |source| ClusterError::Register {
        node: name.into(),
        source,
    };
    let mut want = node::node_object(name, &opts.node_ip, &opts.config, facts);
    let existing = nodes.get_opt(name).await.map_err(err)?;
    let current = match existing {
        Some(_) => {
            info!(node = name, "adopting the existing Node");
            let patch = serde_json::json!({"metadata": {"labels": want.metadata.labels}});
            nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err)?
        }
        None => {
            let status = want.status.take();
            let mut created = nodes
                .create(&PostParams::default(), &want)
                .await
                .map_err(err)?;
            created.status = status;
            created
        }
    };
    let uid = current.metadata.uid.clone().unwrap_or_default();
    let mut status = node::static_status(name, &opts.node_ip, &opts.config, facts);
    status.conditions = Some(node::conditions(
        Default::default(),
        &Ok(()),
        &[],
        jiff::Timestamp::now(),
    ));
    let patch = serde_json::json!({ "status": status });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map_err(err)?;
    Ok(uid)
}

/// Renews the node's Lease every `every` (creating it when missing), with
/// an owner reference to the Node so it goes with it.
async fn lease_loop(client: kube::Client, node: String, node_uid: String, every: Duration) {
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = renew_lease(&leases, &node, &node_uid).await {
            warn!(error = %e, "cannot renew the node lease; retrying");
        }
    }
}

async fn renew_lease(leases: &Api<Lease>, node: &str, node_uid: &str) -> Result<(), kube::Error> {
    let now = MicroTime(jiff::Timestamp::now());
    match leases.get_opt(node).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(node.into());
            spec.lease_duration_seconds = Some(LEASE_DURATION_S);
            // Carries the read resourceVersion: a concurrent writer makes
            // this a 409, and the next tick tries again from a fresh read.
            leases
                .replace(node, &PostParams::default(), &lease)
                .await
                .map(drop)
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.into()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: node.into(),
                        uid: node_uid.into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.into()),
                    lease_duration_seconds: Some(LEASE_DURATION_S),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(drop)
        }
    }
}

/// Patches the node's conditions when they change — at once when the
/// eviction manager's pressure changes, else checked every 10 s — and at
/// least every `statusUpdateSeconds`. Only our four conditions are in the
/// patch (merged by type), so conditions other controllers write survive.
/// While a pressure holds, the Node carries its NoSchedule taint
/// ([`node::pressure_taints`]).
#[allow(clippy::too_many_arguments)]
async fn status_loop(
    client: kube::Client,
    sd: Systemd,
    state_dir: PathBuf,
    node: String,
    ip: String,
    cfg: NodeConfig,
    events: tokio::sync::mpsc::UnboundedSender<events::Record>,
    images: Option<crate::images::manager::Images>,
    mut pressure: tokio::sync::watch::Receiver<crate::eviction::Pressure>,
) {
    let nodes: Api<Node> = Api::all(client);
    let mut taints_for: Option<crate::core::eviction::Conditions> = None;
    // The pressure taints this agent added, remembered across restarts so
    // that a restarted agent still removes them (and only them).
    let ours_file = state_dir.join("pressure-taints.json");
    let mut our_taints: std::collections::BTreeSet<String> = std::fs::read(&ours_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut reclaiming = None;
    let mut manager_alive = true;
    let mut last_images = Vec::new();
    let period = Duration::from_secs(u64::from(cfg.status_update_seconds));
    let mut last: Vec<k8s_openapi::api::core::v1::NodeCondition> = Vec::new();
    let mut last_write = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(10).min(period));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = pressure.changed(), if manager_alive => if r.is_err() {
                // The manager is gone: the heartbeat goes on alone.
                manager_alive = false;
            },
        }
        let now_pressure = *pressure.borrow_and_update();
        if now_pressure.reclaiming != reclaiming {
            if let Some(signal) = now_pressure.reclaiming {
                let _ = events.send(node_event(
                    &node,
                    true,
                    "EvictionThresholdMet",
                    format!("Attempting to reclaim {}", signal.resource()),
                ));
            }
            reclaiming = now_pressure.reclaiming;
        }
        if taints_for != Some(now_pressure.conditions) {
            match sync_taints(&nodes, &node, now_pressure.conditions, &our_taints).await {
                Ok(ours) => {
                    if ours != our_taints {
                        let bytes = serde_json::to_vec(&ours).expect("serializable");
                        if let Err(e) = std::fs::write(&ours_file, bytes) {
                            warn!(file = %ours_file.display(), error = %e, "cannot remember the node's pressure taints");
                        }
                    }
                    our_taints = ours;
                    taints_for = Some(now_pressure.conditions);
                }
                Err(e) => warn!(error = %e, "cannot update the node's pressure taints; retrying"),
            }
        }
        let version = sd.version().await.map_err(|e| e.to_string());
        let conds = node::conditions(
            now_pressure.conditions,
            &version.as_ref().map(drop).map_err(Clone::clone),
            &last,
            jiff::Timestamp::now(),
        );
        let stored = images.as_ref().map(node::images).unwrap_or_default();
        if !node::conditions_changed(&last, &conds)
            && stored == last_images
            && last_write.elapsed() < period
        {
            continue;
        }
        // The whole status, as the kubelet writes it: the host's facts may
        // change (memory, kernel after a reboot, systemd after an upgrade)
        // and an edit by someone else is repaired.
        let mut status = serde_json::json!({ "conditions": conds });
        if let Ok(v) = version {
            let facts = node::read_host_facts(&state_dir, v);
            let mut st = node::static_status(&node, &ip, &cfg, &facts);
            st.conditions = Some(conds.clone());
            st.images = Some(stored.clone());
            status = serde_json::to_value(st).unwrap_or(status);
        }
        let patch = serde_json::json!({ "status": status });
        match nodes
            .patch_status(&node, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                let ready = |c: &[k8s_openapi::api::core::v1::NodeCondition]| {
                    c.iter()
                        .find(|c| c.type_ == "Ready")
                        .map(|c| c.status == "True")
                };
                if ready(&last) != ready(&conds) {
                    let now_ready = ready(&conds) == Some(true);
                    let (reason, message) = if now_ready {
                        ("NodeReady", format!("Node {node} status is now: NodeReady"))
                    } else {
                        (
                            "NodeNotReady",
                            format!("Node {node} status is now: NodeNotReady"),
                        )
                    };
                    let _ = events.send(node_event(&node, !now_ready, reason, message));
                }
                last = conds;
                last_images = stored;
                last_write = tokio::time::Instant::now();
            }
            Err(e) => warn!(error = %e, "cannot write node status; retrying"),
        }
    }
}

/// Brings the Node's pressure taints in line with `pressure` (see
/// [`node::pressure_taints`]): read, then a merge patch carrying the read
/// resourceVersion, so a concurrent change of the taints (an admin, the
/// controller manager) is a conflict retried later, never overwritten.
/// Returns the taint keys this agent added.
async fn sync_taints(
    nodes: &Api<Node>,
    node: &str,
    pressure: crate::core::eviction::Conditions,
    ours: &std::collections::BTreeSet<String>,
) -> Result<std::collections::BTreeSet<String>, kube::Error> {
    let current = nodes.get(node).await?;
    let existing = current
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let Some((taints, mine)) = node::pressure_taints(&existing, pressure, ours) else {
        return Ok(ours.clone());
    };
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "spec": {"taints": taints},
    });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    info!(node, taints = ?taints.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(), "node taints updated for pressure");
    Ok(mine)
}

/// An event about the Node itself (the kubelet's: the Node's name as its
/// UID, in the default namespace).
fn node_event(node: &str, warning: bool, reason: &str, message: String) -> events::Record {
    events::Record {
        object: k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Node".into()),
            name: Some(node.into()),
            uid: Some(node.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        warning,
        reason: reason.into(),
        message,
    }
}
