//! The reconciler: drives systemd towards the desired pods.
//!
//! Level-triggered. Any event about a pod (manifest change, unit signal,
//! timer, relist) just queues the pod's UID; a worker then looks at the
//! whole picture (desired pod, admitted record, unit snapshots) and takes the
//! next step. Because every step is decided from current state, the agent can
//! be killed at any point and a new one finishes the work: units are adopted
//! as they are (same MainPID), nothing is restarted that is running.

pub mod probes;
pub mod queue;

use crate::core::backoff::BackoffConfig;
use crate::core::envref::Resolved;
use crate::core::manifest::{pod_key, StaticPod};
use crate::core::names;
use crate::core::observe::{self, instance, ContainerRecord, Instance, ProbeRecord, UnitSnapshot};
use crate::core::probe::{ProbeKind, ProbeSpec, ProbeState};
use crate::core::translate::{
    container_with, translate, ContainerPlan, EnvFile, HostUser, PodPlan, SECRET_ENV_DIR,
};
use crate::core::unit::UnitSpec;
use crate::core::volume::PayloadError;
use crate::core::NodeFacts;
use crate::objects::ObjectSource;
use crate::state::{PodRecord, StateDir};
use crate::systemd::{apply_changes, serial_after, Systemd, UnitEvent};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use queue::WorkQueue;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Reconciler settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node facts for translation and status.
    pub node: NodeFacts,
    /// Restart back-off.
    pub backoff: BackoffConfig,
    /// Safety-net relist of systemd's units.
    pub relist: Duration,
    /// Pods synced concurrently.
    pub workers: usize,
    /// Units whose start job may be unfinished at once (see [`Runtime::create`]).
    pub max_starting: usize,
    /// Where pod status changes and stopped pods are reported (cluster
    /// mode writes them to the API server); `None` in standalone mode, where
    /// `unitlet pods` derives status on demand.
    pub reports: Option<mpsc::UnboundedSender<PodReport>>,
    /// Where the ConfigMaps, Secrets, claims and tokens pods name come
    /// from (the API server, or the manifest directory); `None` where there
    /// is none (pods naming objects then wait with an error).
    pub objects: Option<Arc<dyn ObjectSource>>,
    /// Host path prefixes volumes may use (empty: any).
    pub allowed_host_paths: Vec<String>,
}

/// One probe of one container instance, for [`Runtime::probe_loop`].
struct ProbeJob {
    uid: String,
    container: String,
    unit: String,
    invocation: String,
    started_us: u64,
    spec: ProbeSpec,
    /// The readiness result to start from (kept across agent restarts).
    ready: bool,
}

/// What a container's unit is, when it is about to be created.
enum Prepared<'a> {
    /// This unit, with the `envFrom` messages of skipped keys.
    Ready(Cow<'a, UnitSpec>, Vec<String>),
    /// Some object is not known yet.
    Pending,
    /// `CreateContainerConfigError` with this message.
    Failed(String),
}

/// A container's stop grace in seconds (its unit's stop timeout).
fn unit_grace_s(c: &ContainerPlan) -> u64 {
    c.spec
        .as_ref()
        .ok()
        .and_then(|sp| {
            sp.properties.iter().find_map(|p| match p {
                crate::core::unit::Property::TimeoutStopUSec(u) => Some(u / 1_000_000),
                _ => None,
            })
        })
        .unwrap_or(30)
}

/// Writes a container's environment file: root-only, on tmpfs, replaced
/// atomically so systemd never reads half a file.
fn write_env_file(f: &EnvFile) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = std::path::Path::new(&f.path);
    let dir = path.parent().expect("env file paths have a directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(crate::core::unit::env_file_text(&f.vars).as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Removes the environment files of pod `uid`, if it had any.
fn remove_env_files(uid: &str) {
    let dir = std::path::Path::new(SECRET_ENV_DIR).join(uid);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(uid, error = %e, "cannot remove the pod's environment files");
        }
    }
}

/// What the reconciler tells a status sink about one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodReport {
    /// The pod's status is now this (sent on every change).
    Status {
        /// Pod UID.
        uid: String,
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The status, by the kubelet's rules.
        status: Box<k8s_openapi::api::core::v1::PodStatus>,
    },
    /// Something happened to the pod or one of its containers (kubelet
    /// event reasons: Pulled, Created, Started, Killing, BackOff, Failed).
    Event {
        /// Pod UID.
        uid: String,
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// `spec.containers{name}` or `spec.initContainers{name}`, if about a container.
        field_path: Option<String>,
        /// A Warning rather than a Normal event.
        warning: bool,
        /// Reason.
        reason: &'static str,
        /// Message.
        message: String,
    },
    /// Every unit of the pod is stopped and the agent no longer runs it:
    /// a pod whose deletion the API server asked for may now be removed.
    Stopped {
        /// Pod UID.
        uid: String,
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
}

/// Delay before creating a unit again after systemd refused it.
const CREATE_RETRY_US: u64 = 10_000_000;

/// Delay before looking again for a ConfigMap or Secret not known yet (its
/// watch has not listed it); a change of any watched object wakes waiting
/// pods sooner.
const ENV_PENDING_RETRY_US: u64 = 1_000_000;

/// Microseconds since the epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Looks a uid up in the host's user database (for HOME and the primary group).
pub fn lookup_user(uid: u32) -> Option<HostUser> {
    let u = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    Some(HostUser {
        gid: u.gid.as_raw(),
        home: u.dir.to_string_lossy().into_owned(),
    })
}

struct PodEntry {
    rec: PodRecord,
    plan: PodPlan,
    containers: HashMap<String, ContainerRecord>,
    terminating: bool,
    /// While terminating: how each container's unit ended, kept from its
    /// signals, since systemd unloads a cleanly stopped unit at once.
    finals: HashMap<String, UnitSnapshot>,
    memo: Memo,
    last_summary: String,
    last_reported: Option<k8s_openapi::api::core::v1::PodStatus>,
}

/// What this agent process did to an invocation, so a repeated pass does not
/// do it twice. Deliberately not persisted: after a crash, doing it once more
/// is safe (a second restart request for the same ended instance is merged
/// into the pending job by systemd).
#[derive(Debug, Clone, Default)]
struct Memo {
    leftovers_killed: HashSet<String>,
    restart_issued: HashSet<String>,
    /// Events sent already (by container and occasion), so a repeated pass
    /// does not repeat them.
    evented: HashSet<String>,
    /// Instances whose postStart hook was started.
    post_started: HashSet<String>,
    /// Sidecar instances stopped because the regular containers are done.
    sidecars_stopped: HashSet<String>,
    /// Every volume of the pod was ready once: containers may start.
    /// Later failures to refresh files leave them alone (kubelet rule).
    volumes_ready: bool,
    /// The last `FailedMount` message reported.
    mount_error: Option<String>,
}

/// What one reconcile pass of a pod collected: containers whose record
/// changed, and events to report.
#[derive(Default)]
struct Pass {
    changed: HashSet<String>,
    events: Vec<ContainerEvent>,
    /// Every regular container has ended for good (restart policy Never
    /// or OnFailure): sidecars are stopped, not restarted.
    apps_done: bool,
}

/// An event about one container, collected during a pass.
struct ContainerEvent {
    field_path: String,
    warning: bool,
    reason: &'static str,
    message: String,
}

#[derive(Default)]
struct Inner {
    /// Desired pods by UID; `None` until the source has been read once.
    desired: Option<HashMap<String, Arc<StaticPod>>>,
    pods: HashMap<String, PodEntry>,
    units: HashMap<String, UnitSnapshot>,
    /// Serial of the latest systemd message (signal or reply) applied to
    /// each unit's cache entry, so an older `GetAll` reply that is processed
    /// after a newer signal does not undo it.
    serials: HashMap<String, u32>,
    owner: HashMap<String, String>,
    /// Admitted pod UID by `namespace/name`: a pod waits for an admitted
    /// one of the same name (an edit's old version) to stop first.
    by_key: HashMap<String, String>,
    by_path: HashMap<String, String>,
    /// A place in the start window per unit whose start job is unfinished.
    starting: HashMap<String, tokio::sync::OwnedSemaphorePermit>,
    /// Pods that found the start window full, woken one per freed place.
    window_waiters: std::collections::VecDeque<String>,
    waiting_for_window: HashSet<String>,
    /// Waiting pods woken for a free place whose pass has not ended yet.
    woken: HashSet<String>,
    /// systemd is in a `daemon-reload`.
    reloading: bool,
}

impl Inner {
    /// Frees `unit`'s place in the start window, if it holds one, and wakes
    /// waiting pods for the places now free.
    fn free_place(&mut self, unit: &str, s: &Shared) {
        if self.starting.remove(unit).is_some() {
            self.wake_waiters(s);
        }
    }

    /// Wakes, longest waiting first, as many waiting pods as there are free
    /// places not yet promised to a pod woken earlier. A woken pod may not
    /// take its place (it got one on another pass, or no longer needs one);
    /// its pass ending calls this again, so a free place is never left
    /// unused while pods wait.
    fn wake_waiters(&mut self, s: &Shared) {
        let free = s.start_window.available_permits();
        while self.woken.len() < free {
            let Some(uid) = self.window_waiters.pop_front() else {
                break;
            };
            // Entries of pods that got a place meanwhile are stale.
            if self.waiting_for_window.remove(&uid) {
                self.woken.insert(uid.clone());
                s.pods_q.add(&uid);
            }
        }
    }
}

struct Shared {
    sd: Systemd,
    state: StateDir,
    cfg: Config,
    inner: Mutex<Inner>,
    pods_q: WorkQueue,
    units_q: WorkQueue,
    /// The start window (see [`Runtime::create`]).
    start_window: Arc<tokio::sync::Semaphore>,
    /// When this agent started, µs since the epoch: a container that started
    /// before was started by an earlier agent, which reported it already.
    started_us: u64,
    /// Probe tasks and results, by (pod UID, container).
    probing: Mutex<HashMap<(String, String), Probing>>,
    /// The pods' volumes.
    volumes: crate::volumes::Volumes,
}

/// The probes of one running container instance.
struct Probing {
    /// What they found so far (copied into the container record).
    record: ProbeRecord,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Probing {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Handle on a running reconciler.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// Creates the reconciler; call [`Runtime::run`] to start it.
    pub fn new(sd: Systemd, state: StateDir, cfg: Config) -> Self {
        let window = cfg.max_starting.max(1);
        let volumes =
            crate::volumes::Volumes::new(cfg.objects.clone(), cfg.allowed_host_paths.clone());
        Runtime {
            shared: Arc::new(Shared {
                volumes,
                sd,
                state,
                cfg,
                inner: Mutex::default(),
                pods_q: WorkQueue::default(),
                units_q: WorkQueue::default(),
                start_window: Arc::new(tokio::sync::Semaphore::new(window)),
                started_us: now_us(),
                probing: Mutex::default(),
            }),
        }
    }

    /// The admitted pods as this agent knows them now (no systemd calls):
    /// what the kubelet API answers from.
    pub fn pod_views(&self) -> Vec<crate::podview::PodView> {
        let s = &self.shared;
        let inner = s.inner.lock().unwrap();
        let now = now_us();
        inner
            .pods
            .values()
            .map(|e| {
                let units: HashMap<String, UnitSnapshot> = e
                    .plan
                    .unit_names()
                    .filter_map(|u| inner.units.get(u).map(|x| (u.to_string(), x.clone())))
                    .collect();
                let status = observe::observe(
                    &e.rec.pod,
                    &e.plan,
                    &s.cfg.node,
                    &units,
                    &e.containers,
                    e.rec.admitted_us,
                    now,
                );
                crate::podview::PodView {
                    rec: e.rec.clone(),
                    plan: e.plan.clone(),
                    units,
                    records: e.containers.clone(),
                    status,
                }
            })
            .collect()
    }

    /// The systemd connection (the kubelet API reads the journal and runs
    /// commands in units through it).
    pub fn systemd(&self) -> &Systemd {
        &self.shared.sd
    }

    /// Adopts existing state, then reconciles forever, taking desired pod sets from `desired`.
    pub async fn run(
        self,
        mut desired: mpsc::Receiver<Vec<Arc<StaticPod>>>,
    ) -> Result<(), crate::systemd::SystemdError> {
        let started = Instant::now();
        let s = &self.shared;
        // Signals first, so no change between the listing and the watch is lost.
        let mut signals = Box::pin(
            s.sd.unit_events(
                vec![
                    names::service_path_prefix(),
                    names::unit_object_path(names::SLICE_PREFIX),
                ],
                vec![names::SERVICE_PREFIX.into(), names::SLICE_PREFIX.into()],
            )
            .await?,
        );
        let adopted = self.adopt().await?;
        for _ in 0..s.cfg.workers.max(1) {
            let me = self.clone();
            tokio::spawn(async move { me.pod_worker().await });
        }
        for _ in 0..32 {
            let me = self.clone();
            tokio::spawn(async move { me.unit_worker().await });
        }
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(ev) = signals.next().await {
                me.apply_event(ev);
            }
            warn!("systemd signal stream ended; relying on relist");
        });
        let mut feeds = vec![s.volumes.changes()];
        if let Some(source) = &s.cfg.objects {
            feeds.push(source.changes());
        }
        for mut changes in feeds {
            let me = self.clone();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    me.retry_object_users();
                }
            });
        }
        // The first desired set decides what survives; wait for it before syncing.
        if let Some(first) = desired.recv().await {
            self.set_desired(first);
        }
        s.units_q.wait_idle().await;
        s.pods_q.wait_idle().await;
        info!(
            pods = adopted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "initial sync complete"
        );
        let mut relist = tokio::time::interval(s.cfg.relist);
        relist.tick().await;
        loop {
            tokio::select! {
                set = desired.recv() => match set {
                    Some(set) => self.set_desired(set),
                    None => return Ok(()),
                },
                _ = relist.tick() => self.relist().await,
            }
        }
    }

    /// Loads admitted pods, reads their units, and stops units that belong to no pod.
    async fn adopt(&self) -> Result<usize, crate::systemd::SystemdError> {
        let s = &self.shared;
        let (records, errors) = s.state.load_pods();
        for e in errors {
            warn!(error = %e, "skipping unreadable pod state");
        }
        let count = records.len();
        for rec in records {
            let containers = s.state.load_containers(rec.uid());
            self.register(rec, containers);
        }
        let listing = s.sd.list(&names::UNIT_PATTERNS).await?;
        let mut orphans = Vec::new();
        {
            let inner = s.inner.lock().unwrap();
            for row in &listing {
                if inner.owner.contains_key(&row.name) {
                    s.units_q.add(&row.name);
                } else {
                    orphans.push(row.name.clone());
                }
            }
        }
        if let Ok(dirs) = std::fs::read_dir(SECRET_ENV_DIR) {
            let inner = s.inner.lock().unwrap();
            for d in dirs.flatten() {
                let uid = d.file_name().to_string_lossy().into_owned();
                if !inner.pods.contains_key(&uid) {
                    remove_env_files(&uid);
                }
            }
        }
        for unit in orphans {
            info!(unit, "stopping orphaned unit: no admitted pod owns it");
            let sd = s.sd.clone();
            tokio::spawn(async move {
                let _ = sd.stop(&unit).await;
                let _ = sd.reset_failed(&unit).await;
            });
        }
        Ok(count)
    }

    fn register(&self, rec: PodRecord, containers: HashMap<String, ContainerRecord>) {
        let plan = translate(&rec.pod, &self.shared.cfg.node, &lookup_user);
        let uid = rec.uid().to_string();
        let mut inner = self.shared.inner.lock().unwrap();
        inner.by_key.insert(pod_key(&rec.pod), uid.clone());
        for unit in plan.unit_names() {
            inner.owner.insert(unit.to_string(), uid.clone());
            inner
                .by_path
                .insert(names::unit_object_path(unit), unit.to_string());
        }
        inner.pods.insert(
            uid,
            PodEntry {
                rec,
                plan,
                containers,
                terminating: false,
                finals: HashMap::new(),
                memo: Memo::default(),
                last_summary: String::new(),
                last_reported: None,
            },
        );
    }

    fn set_desired(&self, set: Vec<Arc<StaticPod>>) {
        let mut inner = self.shared.inner.lock().unwrap();
        let new: HashMap<String, Arc<StaticPod>> =
            set.into_iter().map(|p| (p.uid.clone(), p)).collect();
        // Only pods that appeared, disappeared, are now to be deleted or
        // whose spec changed need a pass (a static pod's content is part of
        // its UID, so an edit is both; of an API pod's spec, the images may
        // change). The first set touches everything.
        let touched: HashSet<String> = match &inner.desired {
            None => new.keys().chain(inner.pods.keys()).cloned().collect(),
            Some(old) => new
                .iter()
                .filter(|(u, p)| {
                    old.get(*u).is_none_or(|o| {
                        !Arc::ptr_eq(o, p)
                            && (o.deletion_grace_s != p.deletion_grace_s
                                || o.pod.spec != p.pod.spec)
                    })
                })
                .map(|(u, _)| u)
                .chain(old.keys().filter(|u| !new.contains_key(*u)))
                .cloned()
                .collect(),
        };
        inner.desired = Some(new);
        drop(inner);
        for uid in touched {
            self.shared.pods_q.add(&uid);
        }
    }

    /// Applies one systemd signal to the unit cache. The signals carry the
    /// new values, so the cache follows systemd without reading anything
    /// back; a unit's pod is synced once its Unit-interface change (which
    /// systemd sends after the type-specific one) is in.
    fn apply_event(&self, ev: UnitEvent) {
        let s = &self.shared;
        let mut inner = s.inner.lock().unwrap();
        let inner = &mut *inner;
        let (path, serial, unit_interface, props) = match ev {
            UnitEvent::Changed {
                path,
                serial,
                unit_interface,
                props,
            } => (path, serial, unit_interface, props),
            UnitEvent::Unloaded { name } => {
                // Collected (gone for good) or reloading (back at once):
                // reading it tells which.
                if !inner.reloading && inner.owner.contains_key(&name) {
                    s.units_q.add(&name);
                }
                return;
            }
            UnitEvent::Reloading(true) => {
                inner.reloading = true;
                return;
            }
            UnitEvent::Reloading(false) => {
                inner.reloading = false;
                for unit in inner.owner.keys() {
                    s.units_q.add(unit);
                }
                return;
            }
        };
        let Some(unit) = inner.by_path.get(&path).cloned() else {
            return;
        };
        let Some(uid) = inner.owner.get(&unit).cloned() else {
            return;
        };
        if unit_interface && props.contains_key("Job") {
            let mut probe = UnitSnapshot::default();
            apply_changes(&mut probe, &props);
            if probe.job_id == 0 {
                // Whatever the order of reading, the start job is over.
                inner.free_place(&unit, s);
            }
        }
        if inner
            .serials
            .get(&unit)
            .is_some_and(|&seen| !serial_after(serial, seen))
        {
            return;
        }
        inner.serials.insert(unit.clone(), serial);
        // Only loaded units send signals.
        let snap = inner
            .units
            .entry(unit.clone())
            .or_insert_with(|| UnitSnapshot {
                load_state: "loaded".into(),
                ..Default::default()
            });
        apply_changes(snap, &props);
        if let Some(e) = inner.pods.get_mut(&uid) {
            if e.terminating && matches!(instance(Some(snap)), Instance::Terminated(..)) {
                e.finals.insert(unit.clone(), snap.clone());
            }
        }
        if unit_interface {
            s.pods_q.add(&uid);
        }
    }

    /// Reads units whose cache entry is missing or in doubt (adoption,
    /// loading and unloading, the relist safety net) in full.
    async fn unit_worker(&self) {
        let s = &self.shared;
        loop {
            let unit = s.units_q.next().await;
            match s.sd.snapshot_serial(&unit).await {
                Ok((serial, snap)) => {
                    let mut inner = s.inner.lock().unwrap();
                    let newer = inner
                        .serials
                        .get(&unit)
                        .is_none_or(|&seen| serial_after(serial, seen));
                    if snap.as_ref().is_none_or(|u| u.job_id == 0) {
                        inner.free_place(&unit, s);
                    }
                    if newer {
                        inner.serials.insert(unit.clone(), serial);
                        match snap {
                            Some(snap) => inner.units.insert(unit.clone(), snap),
                            None => inner.units.remove(&unit),
                        };
                        if let Some(uid) = inner.owner.get(&unit).cloned() {
                            s.pods_q.add(&uid);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "reading unit state failed"),
            }
            s.units_q.done(&unit);
        }
    }

    async fn pod_worker(&self) {
        let s = &self.shared;
        loop {
            let uid = s.pods_q.next().await;
            self.sync(&uid).await;
            {
                let mut inner = s.inner.lock().unwrap();
                if inner.woken.remove(&uid) {
                    inner.wake_waiters(s);
                }
            }
            s.pods_q.done(&uid);
        }
    }

    /// Safety net: compares systemd's listing with the cache and re-reads what differs.
    async fn relist(&self) {
        let s = &self.shared;
        let listing = match s.sd.list(&names::UNIT_PATTERNS).await {
            Ok(l) => l,
            Err(e) => return warn!(error = %e, "relist failed"),
        };
        let mut inner = s.inner.lock().unwrap();
        let jobless: Vec<String> = inner
            .starting
            .keys()
            .filter(|u| listing.iter().all(|r| &r.name != *u || r.job_id == 0))
            .cloned()
            .collect();
        for u in jobless {
            inner.free_place(&u, s);
        }
        let mut seen = HashSet::new();
        for row in &listing {
            seen.insert(row.name.as_str());
            let cached = inner.units.get(&row.name);
            if inner.owner.contains_key(&row.name)
                && cached.is_none_or(|c| {
                    c.active_state != row.active_state || c.sub_state != row.sub_state
                })
            {
                debug!(unit = row.name, "relist found a change the signals missed");
                s.units_q.add(&row.name);
            }
        }
        for unit in inner.units.keys() {
            if !seen.contains(unit.as_str()) {
                s.units_q.add(unit);
            }
        }
        for uid in inner.pods.keys() {
            s.pods_q.add(uid);
        }
    }

    fn schedule(&self, uid: &str, at_us: u64) {
        let me = self.clone();
        let uid = uid.to_string();
        let wait = Duration::from_micros(at_us.saturating_sub(now_us()));
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            me.shared.pods_q.add(&uid);
        });
    }

    /// One reconcile pass for one pod.
    async fn sync(&self, uid: &str) {
        let started = Instant::now();
        self.sync_pass(uid).await;
        crate::metrics::reconciled(started.elapsed());
    }

    async fn sync_pass(&self, uid: &str) {
        let s = &self.shared;
        let (desired, admitted, conflict) = {
            let inner = s.inner.lock().unwrap();
            let Some(desired) = inner.desired.as_ref() else {
                return;
            };
            let d = desired.get(uid).cloned();
            let conflict = d
                .as_ref()
                .is_some_and(|d| inner.by_key.get(&d.key()).is_some_and(|u| u != uid));
            (d, inner.pods.contains_key(uid), conflict)
        };
        match (desired, admitted) {
            (None, false) => {}
            (Some(d), false) if d.deletion_grace_s.is_some() => {
                // Stopped already (or never started): the API object may go.
                self.report_stopped(uid, &d.pod);
            }
            (None, true) => self.terminate(uid, None).await,
            (Some(d), true) if d.deletion_grace_s.is_some() => {
                self.terminate(uid, d.deletion_grace_s).await
            }
            (Some(_), false) if conflict => {
                debug!(uid, "waiting for the previous pod of the same name to stop")
            }
            (Some(pod), false) => {
                let mut p = pod.pod.clone();
                let now = now_us();
                p.metadata
                    .creation_timestamp
                    .get_or_insert_with(|| observe::time_us(now));
                let rec = PodRecord {
                    pod: p,
                    source: String::new(),
                    admitted_us: now,
                };
                if let Err(e) = s.state.save_pod(&rec) {
                    return warn!(pod = pod.key(), error = %e, "cannot record pod; will retry");
                }
                info!(pod = pod.key(), uid, "admitted pod");
                self.register(rec, HashMap::new());
                self.drive(uid).await;
            }
            (Some(d), true) => {
                self.update_spec(uid, &d);
                self.drive(uid).await
            }
        }
    }

    /// Sends `report` to the status sink, if there is one.
    fn report(&self, report: PodReport) {
        if let Some(tx) = &self.shared.cfg.reports {
            let _ = tx.send(report);
        }
    }

    /// Takes a changed spec of an admitted pod (the API allows new images):
    /// the plan is made again, and [`Runtime::step`] restarts each
    /// container whose unit would now differ, as the kubelet does when a
    /// container's definition changes.
    fn update_spec(&self, uid: &str, d: &StaticPod) {
        let s = &self.shared;
        let mut inner = s.inner.lock().unwrap();
        let Some(e) = inner.pods.get_mut(uid) else {
            return;
        };
        if e.rec.pod.spec == d.pod.spec {
            return;
        }
        let mut rec = e.rec.clone();
        rec.pod.spec = d.pod.spec.clone();
        if let Err(err) = s.state.save_pod(&rec) {
            return warn!(pod = d.key(), error = %err, "cannot record the changed pod; will retry");
        }
        info!(pod = d.key(), uid, "pod spec changed");
        e.plan = translate(&rec.pod, &s.cfg.node, &lookup_user);
        e.rec = rec;
    }

    /// Reports the last status of a pod whose units all stopped (see
    /// [`observe::observe_terminal`]); `last` holds the units still loaded.
    fn report_final_status(&self, uid: &str, mut last: HashMap<String, UnitSnapshot>) {
        let s = &self.shared;
        if s.cfg.reports.is_none() {
            return;
        }
        let inner = s.inner.lock().unwrap();
        let Some(e) = inner.pods.get(uid) else { return };
        for (unit, snap) in &e.finals {
            last.entry(unit.clone()).or_insert_with(|| snap.clone());
        }
        let status = observe::observe_terminal(
            &e.rec.pod,
            &e.plan,
            &s.cfg.node,
            &last,
            &e.containers,
            e.rec.admitted_us,
            now_us(),
        );
        self.report(PodReport::Status {
            uid: uid.to_string(),
            namespace: e.rec.pod.metadata.namespace.clone().unwrap_or_default(),
            name: e.rec.pod.metadata.name.clone().unwrap_or_default(),
            status: Box::new(status),
        });
    }

    fn report_stopped(&self, uid: &str, pod: &k8s_openapi::api::core::v1::Pod) {
        self.report(PodReport::Stopped {
            uid: uid.to_string(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        });
    }

    /// Stops every unit of a pod (SIGTERM, SIGKILL after the grace period),
    /// then forgets it. `grace_s`, when the API server's deletion asks for a
    /// shorter grace than the pod's own, is when SIGKILL comes instead.
    async fn terminate(&self, uid: &str, grace_s: Option<u64>) {
        let s = &self.shared;
        let mut pre_stops: Vec<(String, crate::core::probe::Hook)> = Vec::new();
        // Running sidecars stop after the other containers, as the kubelet's.
        let mut sidecars: Vec<(String, Option<crate::core::probe::Hook>)> = Vec::new();
        let mut others: Vec<String> = Vec::new();
        let mut pod_grace_s = 30;
        let (slice, units, key, first) = {
            let mut guard = s.inner.lock().unwrap();
            let inner = &mut *guard;
            let Some(e) = inner.pods.get_mut(uid) else {
                return;
            };
            let first = !e.terminating;
            e.terminating = true;
            s.probing.lock().unwrap().retain(|(u, _), _| u != uid);
            let units: Vec<String> = e.plan.unit_names().map(str::to_string).collect();
            if first {
                pod_grace_s =
                    e.rec
                        .pod
                        .spec
                        .as_ref()
                        .and_then(|sp| sp.termination_grace_period_seconds)
                        .unwrap_or(30)
                        .max(crate::core::translate::MIN_GRACE_SECONDS) as u64;
                for c in e.plan.init.iter().chain(&e.plan.containers) {
                    let running = inner
                        .units
                        .get(&c.unit)
                        .is_some_and(|u| matches!(instance(Some(u)), Instance::Running { .. }));
                    if running && c.sidecar {
                        sidecars.push((c.unit.clone(), c.hooks.pre_stop.clone()));
                    } else if let (true, Some(h)) = (running, &c.hooks.pre_stop) {
                        pre_stops.push((c.unit.clone(), h.clone()));
                    }
                    if running && !c.sidecar {
                        others.push(c.unit.clone());
                    }
                }
                let ns = e.rec.pod.metadata.namespace.clone().unwrap_or_default();
                let name = e.rec.pod.metadata.name.clone().unwrap_or_default();
                let running = |c: &&ContainerPlan| {
                    inner
                        .units
                        .get(&c.unit)
                        .is_some_and(|u| matches!(u.active_state.as_str(), "active" | "activating"))
                };
                for (kind, list) in [
                    ("initContainers", &e.plan.init),
                    ("containers", &e.plan.containers),
                ] {
                    for c in list.iter().filter(running) {
                        self.report(PodReport::Event {
                            uid: uid.to_string(),
                            namespace: ns.clone(),
                            name: name.clone(),
                            field_path: Some(format!("spec.{kind}{{{}}}", c.name)),
                            warning: false,
                            reason: "Killing",
                            message: format!("Stopping container {}", c.name),
                        });
                    }
                }
            }
            (e.plan.slice.clone(), units, pod_key(&e.rec.pod), first)
        };
        if first {
            info!(pod = key, uid, grace_s, "stopping pod");
            if let Some(g) = grace_s {
                // Units were created with the pod's own grace as their stop
                // timeout; a shorter one asked at deletion is enforced here.
                let sd = s.sd.clone();
                let units = units.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(g)).await;
                    for unit in &units {
                        let _ = sd.kill_all(unit, 9).await;
                    }
                });
            }
            if pre_stops.is_empty() && sidecars.is_empty() {
                if let Err(e) = s.sd.stop(&slice).await {
                    debug!(error = %e, "stopping slice");
                }
            } else {
                // preStop hooks first, within the grace period, then the
                // stop (SIGTERM); with sidecars, the other containers stop
                // first. Not in this worker, which must not wait.
                let sd = s.sd.clone();
                let within = Duration::from_secs(grace_s.unwrap_or(pod_grace_s));
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + within;
                    let run_all = |hooks: Vec<(String, crate::core::probe::Hook)>| {
                        let sd = sd.clone();
                        async move {
                            let runs = hooks.into_iter().map(|(unit, hook)| {
                                let sd = sd.clone();
                                async move {
                                    if let Err(e) =
                                        probes::run_hook(&sd, &unit, &hook, within).await
                                    {
                                        warn!(unit, error = e, "preStop hook failed");
                                    }
                                }
                            });
                            futures_util::future::join_all(runs).await;
                        }
                    };
                    run_all(pre_stops).await;
                    if !sidecars.is_empty() {
                        for unit in &others {
                            let _ = sd.stop(unit).await;
                        }
                        // Until they are down (bounded by the grace period).
                        while tokio::time::Instant::now() < deadline {
                            let mut up = false;
                            for unit in &others {
                                if let Ok(Some(snap)) = sd.snapshot(unit).await {
                                    up |= matches!(instance(Some(&snap)), Instance::Running { .. });
                                }
                            }
                            if !up {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        run_all(
                            sidecars
                                .into_iter()
                                .filter_map(|(u, h)| h.map(|h| (u, h)))
                                .collect(),
                        )
                        .await;
                    }
                    if let Err(e) = sd.stop(&slice).await {
                        debug!(error = %e, "stopping slice");
                    }
                });
            }
        }
        let mut busy = false;
        let mut loaded = Vec::new();
        let mut last: HashMap<String, UnitSnapshot> = HashMap::new();
        for unit in &units {
            match s.sd.snapshot(unit).await {
                Ok(Some(snap)) => {
                    if matches!(
                        snap.active_state.as_str(),
                        "active" | "activating" | "deactivating" | "reloading"
                    ) {
                        busy = true;
                    }
                    loaded.push(unit.clone());
                    last.insert(unit.clone(), snap);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "reading unit during stop");
                    busy = true;
                }
            }
        }
        if busy {
            return; // signals bring us back when the units stop
        }
        self.report_final_status(uid, last);
        for unit in loaded {
            let _ = s.sd.reset_failed(&unit).await;
        }
        if let Err(e) = s.volumes.teardown(&s.cfg.node.pods_dir, uid) {
            warn!(
                uid,
                error = e,
                "cannot remove the pod's volumes; will retry"
            );
            return self.schedule(uid, now_us() + CREATE_RETRY_US);
        }
        if let Err(e) = s.state.remove_pod(uid) {
            return warn!(error = %e, "cannot forget stopped pod; will retry");
        }
        remove_env_files(uid);
        let stopped_pod;
        let waiting: Vec<String> = {
            let mut inner = s.inner.lock().unwrap();
            stopped_pod = inner.pods.remove(uid).map(|e| e.rec.pod);
            if inner.by_key.get(&key).is_some_and(|u| u == uid) {
                inner.by_key.remove(&key);
            }
            for unit in &units {
                inner.owner.remove(unit);
                inner.by_path.remove(&names::unit_object_path(unit));
                inner.units.remove(unit);
                inner.serials.remove(unit);
                inner.free_place(unit, s);
            }
            inner
                .desired
                .iter()
                .flat_map(|d| d.values())
                .filter(|p| p.key() == key)
                .map(|p| p.uid.clone())
                .collect()
        };
        info!(pod = key, uid, "pod stopped");
        if let Some(pod) = stopped_pod {
            self.report_stopped(uid, &pod);
        }
        for w in waiting {
            s.pods_q.add(&w);
        }
    }

    /// Starts what should run, restarts what may restart, and reports status.
    async fn drive(&self, uid: &str) {
        let s = &self.shared;
        let (plan, policy, mut records, units, mut memo, pod) = {
            let inner = s.inner.lock().unwrap();
            let Some(e) = inner.pods.get(uid) else { return };
            if e.terminating {
                return;
            }
            let pod = (!e.plan.volumes.is_empty()).then(|| e.rec.pod.clone());
            let units: HashMap<String, UnitSnapshot> = e
                .plan
                .unit_names()
                .filter_map(|u| inner.units.get(u).map(|s| (u.to_string(), s.clone())))
                .collect();
            let policy = e
                .rec
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.clone())
                .unwrap_or_else(|| "Always".into());
            (
                e.plan.clone(),
                policy,
                e.containers.clone(),
                units,
                e.memo.clone(),
                pod,
            )
        };
        let volumes_ready = match &pod {
            Some(pod) => self.sync_volumes(uid, pod, &plan, &mut memo),
            None => true,
        };
        let now = now_us();
        let mut pass = Pass {
            apps_done: !plan.containers.is_empty()
                && plan
                    .containers
                    .iter()
                    .all(|c| match instance(units.get(&c.unit)) {
                        Instance::Terminated(t, inv) => {
                            records
                                .get(&c.name)
                                .is_none_or(|r| r.restart_of.as_deref() != Some(inv.as_str()))
                                && !observe::should_restart(&policy, t.exit_code)
                        }
                        _ => false,
                    }),
            ..Pass::default()
        };
        // Init containers, one at a time, each to success; a sidecar only
        // until it has started, then it keeps running beside the rest.
        // Nothing starts before the pod's volumes are ready.
        let mut inits_done = volumes_ready;
        for c in plan.init.iter().filter(|_| volumes_ready) {
            let rec = records.entry(c.name.clone()).or_default();
            let step = self
                .step(
                    uid,
                    c,
                    rec,
                    units.get(&c.unit),
                    &mut memo,
                    now,
                    true,
                    &policy,
                    &mut pass,
                )
                .await;
            if c.sidecar {
                let started = match instance(units.get(&c.unit)) {
                    Instance::Running { invocation, .. } => {
                        c.probes.iter().all(|p| p.kind != ProbeKind::Startup)
                            || rec
                                .probes
                                .as_ref()
                                .is_some_and(|p| p.invocation == invocation && p.started)
                    }
                    _ => false,
                };
                if started || pass.apps_done {
                    continue;
                }
            }
            if step != Step::Succeeded {
                inits_done = false;
                break;
            }
        }
        if pass.apps_done {
            // The regular containers are done: so are the sidecars.
            for c in plan.init.iter().filter(|c| c.sidecar) {
                if let Instance::Running { invocation, .. } = instance(units.get(&c.unit)) {
                    if memo.sidecars_stopped.insert(invocation.clone()) {
                        let (me, uid, name, unit, grace) = (
                            self.clone(),
                            uid.to_string(),
                            c.name.clone(),
                            c.unit.clone(),
                            unit_grace_s(c),
                        );
                        tokio::spawn(async move {
                            me.kill_container(&uid, &name, &unit, &invocation, grace)
                                .await
                        });
                    }
                }
            }
        }
        if inits_done {
            for c in &plan.containers {
                let rec = records.entry(c.name.clone()).or_default();
                self.step(
                    uid,
                    c,
                    rec,
                    units.get(&c.unit),
                    &mut memo,
                    now,
                    false,
                    &policy,
                    &mut pass,
                )
                .await;
            }
        }
        for name in &pass.changed {
            if let Err(e) = s.state.save_container(uid, name, &records[name]) {
                warn!(error = %e, "cannot save container record");
            }
        }
        let mut inner = s.inner.lock().unwrap();
        let Some(e) = inner.pods.get_mut(uid) else {
            return;
        };
        e.containers = records;
        e.memo = memo;
        for ev in pass.events {
            self.report(PodReport::Event {
                uid: uid.to_string(),
                namespace: e.rec.pod.metadata.namespace.clone().unwrap_or_default(),
                name: e.rec.pod.metadata.name.clone().unwrap_or_default(),
                field_path: Some(ev.field_path),
                warning: ev.warning,
                reason: ev.reason,
                message: ev.message,
            });
        }
        let status = observe::observe(
            &e.rec.pod,
            &e.plan,
            &s.cfg.node,
            &units,
            &e.containers,
            e.rec.admitted_us,
            now_us(),
        );
        if s.cfg.reports.is_some() && e.last_reported.as_ref() != Some(&status) {
            e.last_reported = Some(status.clone());
            let report = PodReport::Status {
                uid: uid.to_string(),
                namespace: e.rec.pod.metadata.namespace.clone().unwrap_or_default(),
                name: e.rec.pod.metadata.name.clone().unwrap_or_default(),
                status: Box::new(status.clone()),
            };
            self.report(report);
        }
        let summary = crate::cli::pods::summary(&status);
        if summary != e.last_summary {
            info!(
                pod = pod_key(&e.rec.pod),
                phase = status.phase.as_deref().unwrap_or(""),
                status = summary,
                "pod status"
            );
            e.last_summary = summary;
        }
    }

    /// Prepares the pod's volumes and refreshes their files; whether its
    /// containers may start. A failure is reported once per message as a
    /// `FailedMount` event, and the pod is tried again.
    fn sync_volumes(&self, uid: &str, pod: &Pod, plan: &PodPlan, memo: &mut Memo) -> bool {
        let s = &self.shared;
        match s.volumes.sync(pod, &plan.volumes, &s.cfg.node) {
            Ok(()) => {
                memo.volumes_ready = true;
                memo.mount_error = None;
            }
            Err(PayloadError::Pending) => self.schedule(uid, now_us() + ENV_PENDING_RETRY_US),
            Err(PayloadError::Failed(msg)) => {
                if memo.mount_error.as_deref() != Some(msg.as_str()) {
                    warn!(pod = pod_key(pod), uid, error = msg, "volume not ready");
                    self.report(PodReport::Event {
                        uid: uid.to_string(),
                        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                        name: pod.metadata.name.clone().unwrap_or_default(),
                        field_path: None,
                        warning: true,
                        reason: "FailedMount",
                        message: msg.clone(),
                    });
                    memo.mount_error = Some(msg);
                }
                self.schedule(uid, now_us() + CREATE_RETRY_US);
            }
        }
        memo.volumes_ready
    }

    /// Advances one container; returns where it stands.
    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        uid: &str,
        c: &ContainerPlan,
        rec: &mut ContainerRecord,
        unit: Option<&UnitSnapshot>,
        memo: &mut Memo,
        now: u64,
        init: bool,
        policy: &str,
        pass: &mut Pass,
    ) -> Step {
        let s = &self.shared;
        let field_path = format!(
            "spec.{}{{{}}}",
            if init { "initContainers" } else { "containers" },
            c.name
        );
        let event =
            |pass: &mut Pass, memo: &mut Memo, key: String, warning, reason, message: String| {
                if s.cfg.reports.is_some() && memo.evented.insert(format!("{}:{key}", c.name)) {
                    pass.events.push(ContainerEvent {
                        field_path: field_path.clone(),
                        warning,
                        reason,
                        message,
                    });
                }
            };
        let spec = match &c.spec {
            Ok(spec) => spec,
            Err(w) => {
                let message = if w.reason == "CreateContainerConfigError" {
                    format!("Error: {}", w.message)
                } else {
                    format!(
                        "Failed to pull image {:?}: {}: {}",
                        c.image, w.reason, w.message
                    )
                };
                event(pass, memo, "spec".into(), true, "Failed", message);
                // The pod's image changed to one that cannot run: the
                // container of the old definition goes.
                if let Instance::Running { invocation, .. } = instance(unit) {
                    if memo.restart_issued.insert(invocation.clone()) {
                        event(
                            pass,
                            memo,
                            format!("changed:{invocation}"),
                            false,
                            "Killing",
                            format!("Container {} definition changed, will be restarted", c.name),
                        );
                        if let Err(e) = s.sd.stop(&c.unit).await {
                            warn!(uid, container = c.name, error = %e, "cannot stop the container");
                            memo.restart_issued.remove(&invocation);
                        }
                    }
                }
                return Step::Waiting;
            }
        };
        let digest = spec.digest();
        let inst = instance(unit);
        match &inst {
            // Started by this agent's doing (or while it ran): say so once.
            Instance::Running {
                started_us,
                invocation,
            } if *started_us >= s.started_us => event(
                pass,
                memo,
                format!("started:{invocation}"),
                false,
                "Started",
                format!("Started container {}", c.name),
            ),
            Instance::Terminated(t, inv) if t.reason == "StartError" => event(
                pass,
                memo,
                format!("failed:{inv}"),
                true,
                "Failed",
                format!("Error: {}", t.message.clone().unwrap_or_default()),
            ),
            _ => {}
        }
        // A restart we asked for has happened once the unit shows another invocation.
        let current_inv = match &inst {
            Instance::Running { invocation, .. } => Some(invocation.clone()),
            Instance::Terminated(_, inv) => Some(inv.clone()),
            _ => None,
        };
        self.sync_probes(uid, c, &inst, rec, pass);
        self.post_start(uid, c, &inst, memo);
        if let (Some(old), Some(cur)) = (rec.restart_of.clone(), current_inv.as_ref()) {
            if &old != cur {
                rec.restart_count += 1;
                rec.previous_invocation = Some(old);
                // (A restart for a changed definition has no ended instance to show.)
                if let Some(t) = rec.restarting.take() {
                    rec.last_termination = Some(t);
                }
                rec.restart_of = None;
                pass.changed.insert(c.name.clone());
            }
        }
        match inst {
            Instance::Absent => {
                if let Some(old) = &rec.restart_of {
                    // The ended instance is gone: either our own re-creation
                    // is under way (its signals bring us back), or the unit
                    // vanished; then creating it, once the back-off is over,
                    // is the restart, counted when the new invocation shows.
                    if memo.restart_issued.contains(old) {
                        return Step::Waiting;
                    }
                    if now < rec.restart_at_us {
                        self.schedule(uid, rec.restart_at_us);
                        return Step::Waiting;
                    }
                }
                let Some((spec, skipped)) =
                    self.prepare_or_wait(uid, c, spec, &field_path, rec, pass)
                else {
                    return Step::Waiting;
                };
                for m in skipped {
                    event(
                        pass,
                        memo,
                        format!("skipped:{m}"),
                        true,
                        "InvalidEnvironmentVariableNames",
                        m,
                    );
                }
                let Some(place) = self.take_place(uid) else {
                    return Step::Waiting;
                };
                if let Some(old) = &rec.restart_of {
                    memo.restart_issued.insert(old.clone());
                }
                match self.create(&spec, place).await {
                    Ok(()) => {
                        if rec.create_error.take().is_some() {
                            pass.changed.insert(c.name.clone());
                        }
                        if rec.unit_digest.as_deref() != Some(digest.as_str()) {
                            rec.unit_digest = Some(digest.clone());
                            pass.changed.insert(c.name.clone());
                        }
                        let attempt = rec.restart_count + u32::from(rec.restart_of.is_some());
                        event(
                            pass,
                            memo,
                            format!("pulled:{attempt}"),
                            false,
                            "Pulled",
                            format!("Container image {:?} already present on machine", c.image),
                        );
                        event(
                            pass,
                            memo,
                            format!("created:{attempt}"),
                            false,
                            "Created",
                            format!("Created container {}", c.name),
                        );
                    }
                    Err(e) if e.is_exists() => {}
                    Err(e) => {
                        let msg = e.to_string();
                        if rec.create_error.as_deref() != Some(msg.as_str()) {
                            warn!(uid, container = c.name, error = %e, "systemd refused the unit; retrying every 10 s");
                            event(
                                pass,
                                memo,
                                format!("refused:{msg}"),
                                true,
                                "Failed",
                                format!("Error: {msg}"),
                            );
                            rec.create_error = Some(msg);
                            pass.changed.insert(c.name.clone());
                        }
                        // As the kubelet retries a CreateContainerError on its next sync.
                        self.schedule(uid, now_us() + CREATE_RETRY_US);
                    }
                }
                Step::Waiting
            }
            Instance::Running { invocation, .. }
                if rec.unit_digest.as_deref().is_some_and(|d| d != digest)
                    && !memo.restart_issued.contains(&invocation) =>
            {
                // The pod's definition of the container changed (a new
                // image): the kubelet kills the container and starts it
                // anew, counted as a restart.
                let Some((spec, _)) = self.prepare_or_wait(uid, c, spec, &field_path, rec, pass)
                else {
                    return Step::Waiting;
                };
                let Some(place) = self.take_place(uid) else {
                    return Step::Waiting;
                };
                event(
                    pass,
                    memo,
                    format!("changed:{invocation}"),
                    false,
                    "Killing",
                    format!("Container {} definition changed, will be restarted", c.name),
                );
                memo.restart_issued.insert(invocation.clone());
                rec.restart_of = Some(invocation.clone());
                rec.restarting = None;
                rec.unit_digest = Some(digest.clone());
                pass.changed.insert(c.name.clone());
                if let Err(e) = s.state.save_container(uid, &c.name, rec) {
                    warn!(error = %e, "cannot save container record");
                }
                info!(
                    uid,
                    container = c.name,
                    "container definition changed; restarting it"
                );
                if let Err(e) = self.recreate(&spec, true, place).await {
                    warn!(uid, container = c.name, error = %e, "restart failed; will retry");
                    memo.restart_issued.remove(&invocation);
                    self.schedule(uid, now_us() + 1_000_000);
                }
                Step::Waiting
            }
            Instance::Creating | Instance::Running { .. } => Step::Waiting,
            Instance::Terminated(t, inv) => {
                if unit.is_some_and(|u| u.active_state == "active")
                    && memo.leftovers_killed.insert(inv.clone())
                {
                    // The main process is gone: end whatever it left behind, as a
                    // container runtime does when a container's PID 1 exits.
                    let _ = s.sd.kill_all(&c.unit, 9).await;
                }
                if init && !c.sidecar && t.exit_code == 0 && rec.restart_of.is_none() {
                    return Step::Succeeded;
                }
                let wants = if c.sidecar {
                    !pass.apps_done
                } else if init {
                    observe::should_restart_init(policy, t.exit_code)
                } else {
                    observe::should_restart(policy, t.exit_code)
                };
                if rec.restart_of.as_deref() != Some(inv.as_str()) {
                    if !wants {
                        return Step::Finished;
                    }
                    let delay = rec.backoff.delay_after(&s.cfg.backoff, t.finished_us);
                    rec.restart_of = Some(inv.clone());
                    rec.restart_at_us = t.finished_us + delay;
                    rec.restarting = Some(t.clone());
                    pass.changed.insert(c.name.clone());
                    if delay > 0 {
                        event(
                            pass,
                            memo,
                            format!("backoff:{inv}"),
                            true,
                            "BackOff",
                            format!(
                                "Back-off restarting failed container {} in pod {uid}",
                                c.name
                            ),
                        );
                        info!(
                            uid,
                            container = c.name,
                            delay_ms = delay / 1000,
                            exit_code = t.exit_code,
                            "back-off restarting failed container"
                        );
                    }
                }
                if now < rec.restart_at_us {
                    self.schedule(uid, rec.restart_at_us);
                    return Step::Waiting;
                }
                if memo.restart_issued.contains(&inv) {
                    return Step::Waiting; // asked already; the new invocation's signal brings us back
                }
                let Some((spec, _)) = self.prepare_or_wait(uid, c, spec, &field_path, rec, pass)
                else {
                    return Step::Waiting;
                };
                let Some(place) = self.take_place(uid) else {
                    return Step::Waiting;
                };
                memo.restart_issued.insert(inv.clone());
                rec.backoff
                    .record_restart(&s.cfg.backoff, t.finished_us, now);
                rec.unit_digest = Some(digest.clone());
                pass.changed.insert(c.name.clone());
                // Persist before acting, so a crash here never double-counts.
                if let Err(e) = s.state.save_container(uid, &c.name, rec) {
                    warn!(error = %e, "cannot save container record");
                }
                if let Err(e) = self
                    .recreate(
                        &spec,
                        unit.is_some_and(|u| u.active_state == "active"),
                        place,
                    )
                    .await
                {
                    warn!(uid, container = c.name, error = %e, "restart failed; will retry");
                    memo.restart_issued.remove(&inv);
                    self.schedule(uid, now_us() + 1_000_000);
                }
                Step::Waiting
            }
        }
    }
}

impl Runtime {
    /// Restarts a container by creating its transient unit anew from the
    /// plan, never by starting the loaded unit again. systemd before 254
    /// re-reads transient units after any daemon-reload from a file in which
    /// `$` and `;` of ExecStart arguments come back altered, so a unit
    /// restarted in place could run a different command than the manifest's.
    /// A place in the start window for one unit of pod `uid`, or `None`
    /// when all are taken; the pod is then synced again once one is freed.
    ///
    /// At most `max_starting` units may have an unfinished start job.
    /// systemd answers D-Bus calls before it runs queued jobs, so an
    /// unbounded burst of creations starts nothing until the burst is over
    /// (every pod of it turns Running at the end), and it tracks each queued
    /// job's client with a bus match, of which dbus-daemon allows it a few
    /// hundred. Waiting is not done in a worker, which would hold back status
    /// updates of pods that are running already. A place is freed when the
    /// unit's `Job` property signals no job (or the relist finds none).
    fn take_place(&self, uid: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let s = &self.shared;
        let mut inner = s.inner.lock().unwrap();
        match s.start_window.clone().try_acquire_owned() {
            Ok(p) => {
                inner.waiting_for_window.remove(uid);
                Some(p)
            }
            Err(_) => {
                if inner.waiting_for_window.insert(uid.to_string()) {
                    inner.window_waiters.push_back(uid.to_string());
                }
                None
            }
        }
    }

    /// Creates and starts a transient unit in the place `permit` holds.
    async fn create(
        &self,
        spec: &crate::core::unit::UnitSpec,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), crate::systemd::SystemdError> {
        let s = &self.shared;
        {
            let mut inner = s.inner.lock().unwrap();
            if inner.starting.contains_key(&spec.name) {
                // Asked already; its signals are on their way.
                drop(permit);
                inner.wake_waiters(s);
                return Ok(());
            }
            inner.starting.insert(spec.name.clone(), permit);
        }
        let r = s.sd.start_transient(spec).await;
        if r.is_err() {
            s.inner.lock().unwrap().free_place(&spec.name, s);
        }
        r
    }

    /// The unit to create for `c` now. A container whose env names
    /// ConfigMaps or Secrets gets one made with their data as it is now (the
    /// kubelet resolves them at each container creation, restarts
    /// included), with its environment file written.
    fn prepare<'a>(&self, uid: &str, c: &ContainerPlan, spec: &'a UnitSpec) -> Prepared<'a> {
        if let Err(msg) = self.shared.volumes.pin(&c.name, &c.mounts) {
            return Prepared::Failed(msg);
        }
        if c.refs.is_empty() {
            return Prepared::Ready(Cow::Borrowed(spec), Vec::new());
        }
        let s = &self.shared;
        let Some(source) = &s.cfg.objects else {
            return Prepared::Failed(
                "ConfigMaps and Secrets in env need cluster mode (unitlet node)".into(),
            );
        };
        let pod = match s.inner.lock().unwrap().pods.get(uid) {
            Some(e) => e.rec.pod.clone(),
            None => return Prepared::Pending,
        };
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let resolved = Resolved(
            c.refs
                .iter()
                .map(|r| (r.clone(), source.lookup(ns, r)))
                .collect(),
        );
        if resolved.pending(&c.refs) {
            return Prepared::Pending;
        }
        let Some(plan) = container_with(&pod, &s.cfg.node, &c.name, &lookup_user, &resolved) else {
            return Prepared::Pending;
        };
        match plan.spec {
            Err(w) => Prepared::Failed(w.message),
            Ok(spec) => {
                if let Some(f) = &plan.env_file {
                    if let Err(e) = write_env_file(f) {
                        return Prepared::Failed(format!(
                            "cannot write the environment file {}: {e}",
                            f.path
                        ));
                    }
                }
                Prepared::Ready(Cow::Owned(spec), plan.skipped_env)
            }
        }
    }

    /// Runs the postStart hook of a container instance this agent saw
    /// start (once); if it fails, the container is killed, as the kubelet
    /// does, and restarted under the pod's policy.
    fn post_start(&self, uid: &str, c: &ContainerPlan, inst: &Instance, memo: &mut Memo) {
        let Some(hook) = &c.hooks.post_start else {
            return;
        };
        let Instance::Running {
            invocation,
            started_us,
        } = inst
        else {
            return;
        };
        // An earlier agent ran it for an instance started before this one.
        if *started_us < self.shared.started_us || !memo.post_started.insert(invocation.clone()) {
            return;
        }
        let me = self.clone();
        let (hook, uid, container, unit, invocation) = (
            hook.clone(),
            uid.to_string(),
            c.name.clone(),
            c.unit.clone(),
            invocation.clone(),
        );
        let grace = unit_grace_s(c);
        tokio::spawn(async move {
            // The kubelet gives postStart no timeout of its own; the
            // container's grace bounds it here so a stuck hook cannot hold
            // the container forever.
            let limit = Duration::from_secs(grace.max(30));
            if let Err(e) = probes::run_hook(&me.shared.sd, &unit, &hook, limit).await {
                warn!(
                    uid,
                    container,
                    error = e,
                    "postStart hook failed; killing the container"
                );
                me.container_event(
                    &uid,
                    &container,
                    true,
                    "FailedPostStartHook",
                    format!("PostStartHook failed: {e}"),
                );
                me.kill_container(&uid, &container, &unit, &invocation, grace)
                    .await;
            }
        });
    }

    /// Keeps the probes of container `c` running for its current instance
    /// (and only then), and copies what they found into its record.
    fn sync_probes(
        &self,
        uid: &str,
        c: &ContainerPlan,
        inst: &Instance,
        rec: &mut ContainerRecord,
        pass: &mut Pass,
    ) {
        if c.probes.is_empty() {
            return;
        }
        let s = &self.shared;
        let key = (uid.to_string(), c.name.clone());
        let mut probing = s.probing.lock().unwrap();
        let Instance::Running {
            invocation,
            started_us,
        } = inst
        else {
            probing.remove(&key);
            return;
        };
        if probing
            .get(&key)
            .is_none_or(|p| p.record.invocation != *invocation)
        {
            // A restarted agent keeps what its predecessor found for the
            // same instance, so it does not turn ready pods unready; and a
            // container that started before this agent has passed its
            // startup probe (as a restarted kubelet assumes).
            let has_startup = c.probes.iter().any(|p| p.kind == ProbeKind::Startup);
            let kept = rec.probes.clone().filter(|p| p.invocation == *invocation);
            let record = ProbeRecord {
                invocation: invocation.clone(),
                started: !has_startup
                    || *started_us < s.started_us
                    || kept.as_ref().is_some_and(|p| p.started),
                ready: kept.is_some_and(|p| p.ready),
            };
            let tasks = c
                .probes
                .iter()
                .map(|spec| {
                    let me = self.clone();
                    let job = ProbeJob {
                        uid: uid.to_string(),
                        container: c.name.clone(),
                        unit: c.unit.clone(),
                        invocation: invocation.clone(),
                        started_us: *started_us,
                        spec: spec.clone(),
                        ready: record.ready,
                    };
                    tokio::spawn(async move { me.probe_loop(job).await }).abort_handle()
                })
                .collect();
            probing.insert(key.clone(), Probing { record, tasks });
        }
        let record = probing[&key].record.clone();
        if rec.probes.as_ref() != Some(&record) {
            rec.probes = Some(record);
            pass.changed.insert(c.name.clone());
        }
    }

    /// Runs one probe of one container instance until the instance ends
    /// (the task is aborted) or, for a startup probe, until it succeeds.
    async fn probe_loop(self, job: ProbeJob) {
        let s = &self.shared;
        let spec = &job.spec;
        let key = (job.uid.clone(), job.container.clone());
        let first_at = job.started_us + spec.initial_delay.as_micros() as u64;
        let now = now_us();
        if first_at > now {
            tokio::time::sleep(Duration::from_micros(first_at - now)).await;
        }
        let mut state = ProbeState::new(spec.kind);
        if spec.kind == ProbeKind::Readiness {
            state.result = job.ready;
        }
        loop {
            let started = match s.probing.lock().unwrap().get(&key) {
                Some(p) if p.record.invocation == job.invocation => p.record.started,
                _ => return,
            };
            if spec.kind == ProbeKind::Startup && started {
                return;
            }
            // Liveness and readiness wait for the startup probe.
            if spec.kind == ProbeKind::Startup || started {
                let result = probes::run(&s.sd, &job.unit, &spec.action, spec.timeout).await;
                if let Err(msg) = &result {
                    info!(
                        uid = job.uid,
                        container = job.container,
                        probe = spec.kind.title(),
                        error = msg,
                        "probe failed"
                    );
                    self.container_event(
                        &job.uid,
                        &job.container,
                        true,
                        "Unhealthy",
                        format!("{} probe failed: {msg}", spec.kind.title()),
                    );
                }
                if let Some(now_ok) = state.record(spec, result.is_ok()) {
                    {
                        let mut probing = s.probing.lock().unwrap();
                        let Some(p) = probing
                            .get_mut(&key)
                            .filter(|p| p.record.invocation == job.invocation)
                        else {
                            return;
                        };
                        match spec.kind {
                            ProbeKind::Startup => p.record.started = now_ok,
                            ProbeKind::Readiness => p.record.ready = now_ok,
                            ProbeKind::Liveness => {}
                        }
                    }
                    s.pods_q.add(&job.uid);
                    if spec.kind == ProbeKind::Startup && now_ok {
                        return;
                    }
                    if !now_ok && spec.kind != ProbeKind::Readiness {
                        // Not in this task: the instance's end aborts it.
                        let me = self.clone();
                        tokio::spawn(async move { me.kill_for_probe(&job).await });
                        return;
                    }
                }
            }
            tokio::time::sleep(spec.period).await;
        }
    }

    /// Kills a container whose liveness or startup probe failed, as the
    /// kubelet does: SIGTERM, SIGKILL after the probe's (else the pod's)
    /// grace period. Its restart is the reconciler's, under the pod's
    /// restart policy and back-off.
    async fn kill_for_probe(&self, job: &ProbeJob) {
        let s = &self.shared;
        let kind = job.spec.kind.title().to_lowercase();
        info!(
            uid = job.uid,
            container = job.container,
            probe = kind,
            "container failed its probe; killing it"
        );
        self.container_event(
            &job.uid,
            &job.container,
            false,
            "Killing",
            format!(
                "Container {} failed {kind} probe, will be restarted",
                job.container
            ),
        );
        let grace = job.spec.termination_grace_s.unwrap_or_else(|| {
            let inner = s.inner.lock().unwrap();
            inner
                .pods
                .get(&job.uid)
                .and_then(|e| e.rec.pod.spec.as_ref())
                .and_then(|sp| sp.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(crate::core::translate::MIN_GRACE_SECONDS) as u64
        });
        self.kill_container(&job.uid, &job.container, &job.unit, &job.invocation, grace)
            .await;
    }

    /// Stops one container instance as the kubelet kills a container: its
    /// preStop hook, SIGTERM, then SIGKILL once `grace` seconds are over.
    async fn kill_container(
        &self,
        uid: &str,
        container: &str,
        unit: &str,
        invocation: &str,
        grace: u64,
    ) {
        let s = &self.shared;
        let pre_stop = {
            let inner = s.inner.lock().unwrap();
            inner.pods.get(uid).and_then(|e| {
                e.plan
                    .init
                    .iter()
                    .chain(&e.plan.containers)
                    .find(|c| c.name == container)
                    .and_then(|c| c.hooks.pre_stop.clone())
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
        if let Some(hook) = pre_stop {
            if let Err(e) = probes::run_hook(&s.sd, unit, &hook, Duration::from_secs(grace)).await {
                warn!(unit, error = e, "preStop hook failed");
            }
        }
        if let Err(e) = s.sd.kill_all(unit, 15).await {
            warn!(unit, error = %e, "cannot signal the container");
        }
        tokio::time::sleep_until(
            deadline.max(tokio::time::Instant::now() + Duration::from_secs(2)),
        )
        .await;
        let still = s
            .inner
            .lock()
            .unwrap()
            .units
            .get(unit)
            .is_some_and(|u| matches!(instance(Some(u)), Instance::Running { invocation: i, .. } if i == invocation));
        if still {
            let _ = s.sd.kill_all(unit, 9).await;
        }
    }

    /// An event about a probed container (cluster mode; standalone has no
    /// event sink).
    fn container_event(
        &self,
        uid: &str,
        container: &str,
        warning: bool,
        reason: &'static str,
        message: String,
    ) {
        let s = &self.shared;
        if s.cfg.reports.is_none() {
            return;
        }
        let (namespace, name, init) = {
            let inner = s.inner.lock().unwrap();
            let Some(e) = inner.pods.get(uid) else {
                return;
            };
            let init = e.plan.init.iter().any(|c| c.name == container);
            (
                e.rec.pod.metadata.namespace.clone().unwrap_or_default(),
                e.rec.pod.metadata.name.clone().unwrap_or_default(),
                init,
            )
        };
        self.report(PodReport::Event {
            uid: uid.to_string(),
            namespace,
            name,
            field_path: Some(format!(
                "spec.{}{{{}}}",
                if init { "initContainers" } else { "containers" },
                container
            )),
            warning,
            reason,
            message,
        });
    }

    /// [`Runtime::prepare`] and what its outcome means for the container's
    /// record: `None` when the unit cannot be made now (a config error is
    /// recorded, or the objects are still pending; either way the pod is
    /// tried again).
    fn prepare_or_wait<'a>(
        &self,
        uid: &str,
        c: &ContainerPlan,
        spec: &'a UnitSpec,
        field_path: &str,
        rec: &mut ContainerRecord,
        pass: &mut Pass,
    ) -> Option<(Cow<'a, UnitSpec>, Vec<String>)> {
        match self.prepare(uid, c, spec) {
            Prepared::Ready(spec, skipped) => {
                if rec.config_error.take().is_some() {
                    pass.changed.insert(c.name.clone());
                }
                Some((spec, skipped))
            }
            Prepared::Pending => {
                self.schedule(uid, now_us() + ENV_PENDING_RETRY_US);
                None
            }
            Prepared::Failed(msg) => {
                self.config_failed(uid, c, field_path, rec, msg, pass);
                None
            }
        }
    }

    /// Records a `CreateContainerConfigError` and tries again later, as the
    /// kubelet does on its next sync (sooner when a watched object changes).
    fn config_failed(
        &self,
        uid: &str,
        c: &ContainerPlan,
        field_path: &str,
        rec: &mut ContainerRecord,
        msg: String,
        pass: &mut Pass,
    ) {
        if rec.config_error.as_deref() != Some(msg.as_str()) {
            warn!(
                uid,
                container = c.name,
                error = msg,
                "cannot make the container's environment"
            );
            if self.shared.cfg.reports.is_some() {
                pass.events.push(ContainerEvent {
                    field_path: field_path.to_string(),
                    warning: true,
                    reason: "Failed",
                    message: format!("Error: {msg}"),
                });
            }
            rec.config_error = Some(msg);
            pass.changed.insert(c.name.clone());
        }
        self.schedule(uid, now_us() + CREATE_RETRY_US);
    }

    /// Queues every pod that names API objects (in env or volumes), so
    /// waiting containers are tried again and volume files refreshed.
    fn retry_object_users(&self) {
        let s = &self.shared;
        let inner = s.inner.lock().unwrap();
        for (uid, e) in &inner.pods {
            let names_objects = e.plan.volumes.iter().any(|v| {
                !matches!(
                    v.kind,
                    crate::core::volume::VolumeKind::EmptyDir { .. }
                        | crate::core::volume::VolumeKind::HostPath { .. }
                )
            });
            if names_objects
                || e.plan
                    .init
                    .iter()
                    .chain(&e.plan.containers)
                    .any(|c| !c.refs.is_empty())
            {
                s.pods_q.add(uid);
            }
        }
    }

    async fn recreate(
        &self,
        spec: &crate::core::unit::UnitSpec,
        active: bool,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), crate::systemd::SystemdError> {
        let mut permit = Some(permit);
        let sd = &self.shared.sd;
        if active {
            sd.stop(&spec.name).await?;
        }
        // The old unit is unloaded by systemd's garbage collection right
        // after it is stopped and its failure cleared; until then the name
        // is taken, so retry briefly.
        let mut last = None;
        for attempt in 0..200u64 {
            let _ = sd.reset_failed(&spec.name).await;
            let place = match permit.take() {
                Some(p) => p,
                // A failed attempt freed the place; wait for another.
                None => self
                    .shared
                    .start_window
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the start window is never closed"),
            };
            match self.create(spec, place).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_exists() => last = Some(e),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(5 + attempt.min(20))).await;
        }
        Err(last.expect("at least one attempt"))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Waiting,
    Succeeded,
    Finished,
}
