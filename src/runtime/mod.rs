//! The reconciler: drives systemd towards the desired pods.
//!
//! Level-triggered. Any event about a pod (manifest change, unit signal,
//! timer, relist) just queues the pod's UID; a worker then looks at the
//! whole picture (desired pod, admitted record, unit snapshots) and takes the
//! next step. Because every step is decided from current state, the agent can
//! be killed at any point and a new one finishes the work: units are adopted
//! as they are (same MainPID), nothing is restarted that is running.
//!
//! Decisions are data: what to do about each container is decided by
//! [`crate::core::decide`], a pure function of the container's plan,
//! record, unit and the time; this module only carries decisions out
//! against a [`Units`] implementation (systemd over D-Bus, or the
//! recording fake of `unitlet-test-support`, see `tests/runtime_fake.rs`) and feeds the results back. One file per
//! operation: `adopt` (start-up and desired sets), `start` (a pod's pass:
//! creating and restarting units), `terminate` (stopping a pod),
//! `probing` (probes, hooks and the kills they cause), `report` (what the
//! status sink is told); this file holds the shared state, the workers
//! and the unit-signal cache.

mod adopt;
mod evict;
mod gc;
pub mod probes;
mod probing;
pub mod queue;
mod report;
mod start;
mod terminate;
mod update;

use crate::core::backoff::BackoffConfig;
use crate::core::decide::{self, Step};
use crate::core::envref::Resolved;
use crate::core::manifest::{pod_key, StaticPod};
use crate::core::names;
use crate::core::observe::{
    self, instance, instance_of, ActiveState, ContainerRecord, Instance, ProbeRecord, UnitSnapshot,
};
use crate::core::probe::{ProbeKind, ProbeSpec, ProbeState};
use crate::core::translate::{
    container_with, translate, ContainerPlan, EnvFile, PodPlan, SECRET_ENV_DIR,
};
use crate::core::unit::UnitSpec;
use crate::core::volume::PayloadError;
use crate::core::NodeFacts;
use crate::objects::ObjectSource;
use crate::state::{PodRecord, StateDir};
use crate::systemd::{apply_changes, serial_after, UnitEvent, Units};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use queue::WorkQueue;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
    /// The node's images; `None`: only `image: host` runs.
    pub images: Option<crate::images::manager::Images>,
    /// This boot of the machine ([`crate::host::boot_id`]): a container
    /// recorded running on another boot ended with it.
    pub boot_id: String,
}

pub use crate::clock::now_us;
pub use crate::host::lookup_user;
pub use evict::{ActivePod, EvictError};
pub use report::PodReport;

use probing::{unit_grace_s, Probing};
use start::CREATE_RETRY_US;
use terminate::remove_env_files;

struct PodEntry {
    rec: PodRecord,
    /// Shared: every pass of the pod takes it (a relist makes a pass of
    /// every pod), and a copy was most of what an idle relist cost.
    plan: Arc<PodPlan>,
    containers: crate::core::observe::Records,
    terminating: bool,
    /// While terminating: how each container's unit ended, kept from its
    /// signals, since systemd unloads a cleanly stopped unit at once.
    finals: HashMap<String, UnitSnapshot>,
    memo: Memo,
    last_summary: String,
    last_reported: Option<k8s_openapi::api::core::v1::PodStatus>,
    /// Its phase is Succeeded or Failed: it holds no resources.
    ended: bool,
    /// The desired pod last applied to it (see `update::update_spec`).
    applied: Option<Arc<StaticPod>>,
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
    /// When each container began waiting for its image for its next start
    /// (under `Always`, a pull that ended before does not count).
    pull_since: HashMap<String, u64>,
    /// The ended pod's units are stopped and reset (see `gc`).
    units_collected: bool,
    /// The ended pod's volumes are removed (see `gc`).
    volumes_collected: bool,
    /// Instances killed because the pod was evicted.
    evict_killed: HashSet<String>,
    /// The evicted pod's volumes were torn down.
    evict_torn_down: bool,
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
    /// The pod starts over if its units went with an earlier boot
    /// ([`decide::pod_restarts`]).
    pod_restarts: bool,
    /// Containers whose unit waits for their image this pass.
    image_wait: HashSet<String>,
    /// The imageID of the image each container's unit is being made from.
    image_ids: HashMap<String, String>,
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
    /// Boxed: an entry is about 3.9 KB, and a table of them inline is
    /// twice the entries' size (half its slots empty) and briefly three
    /// times while it grows; at 2,000 pods that was 24 MB of the peak.
    pods: HashMap<String, Box<PodEntry>>,
    units: HashMap<String, UnitSnapshot>,
    /// Serial of the latest systemd message (signal or reply) applied to
    /// each unit's cache entry, so an older `GetAll` reply that is processed
    /// after a newer signal does not undo it.
    serials: HashMap<String, u32>,
    /// How often serials started over (see [`UnitEvent::ManagerRestarted`]).
    serial_epoch: u64,
    owner: HashMap<String, String>,
    /// Admitted pod UID by `namespace/name`: a pod waits for an admitted
    /// one of the same name (an edit's old version) to stop first.
    by_key: HashMap<String, String>,
    /// A place in the start window per unit whose start job is unfinished.
    starting: HashMap<String, tokio::sync::OwnedSemaphorePermit>,
    /// Places in the window held by pods being stopped: one per stop job
    /// their slice's stop queues (each container's unit and the slice),
    /// given back once every unit is down (see `terminate`).
    stopping: HashMap<String, tokio::sync::OwnedSemaphorePermit>,
    /// Places a pod waiting to stop needs at once (others need one).
    stop_needs: HashMap<String, u32>,
    /// Pods that found the start window full, woken one per freed place.
    window_waiters: std::collections::VecDeque<String>,
    waiting_for_window: HashSet<String>,
    /// Waiting pods woken for a free place whose pass has not ended yet.
    woken: HashSet<String>,
    /// systemd is in a `daemon-reload`.
    reloading: bool,
    /// Units queued for a read because systemd unloaded them.
    unloaded: HashSet<String>,
}

impl Inner {
    /// Frees `unit`'s place in the start window, if it holds one, and wakes
    /// waiting pods for the places now free.
    fn free_place(&mut self, unit: &str, s: &Shared) {
        if self.starting.remove(unit).is_some() {
            self.wake_waiters(s);
        }
    }

    /// Gives back the places pod `uid` held for its stop jobs.
    fn free_stop_places(&mut self, uid: &str, s: &Shared) {
        if self.stopping.remove(uid).is_some() {
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
            let Some(uid) = self.window_waiters.front() else {
                break;
            };
            // First come, first served: a stop needing more places than
            // are free is not overtaken (nor woken to find too few).
            let need = self.stop_needs.get(uid).map_or(1, |&n| n as usize);
            if self.waiting_for_window.contains(uid) && need > free - self.woken.len() {
                break;
            }
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
    sd: Arc<dyn Units>,
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
    /// Orphaned units already named in the log (see `gc`).
    orphans_reported: Mutex<HashSet<String>>,
    /// Pods whose record could not be read at adoption, by UID tag (see
    /// `names::uid_tag`), with the file: their units are not orphans, and
    /// the pod is recorded anew when its source names it again.
    unreadable: Mutex<HashMap<String, (String, std::path::PathBuf)>>,
    /// The initial sync is complete: [`Runtime::pod_views`] shows every pod.
    synced: std::sync::atomic::AtomicBool,
}

/// How long a pod whose record could not be written (a full disk) waits
/// before admission is tried again.
const RECORD_RETRY_US: u64 = 5_000_000;

/// Handle on a running reconciler.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// Creates the reconciler; call [`Runtime::run`] to start it.
    pub fn new(sd: Arc<dyn Units>, state: StateDir, cfg: Config) -> Self {
        let window = cfg.max_starting.max(1);
        let volumes = crate::volumes::Volumes::new(
            cfg.objects.clone(),
            cfg.allowed_host_paths.clone(),
            cfg.images.clone(),
        );
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
                orphans_reported: Mutex::default(),
                unreadable: Mutex::default(),
                synced: Default::default(),
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
                let status = update::pod_status(e, &s.cfg.node, &units, now);
                crate::podview::PodView {
                    rec: e.rec.clone(),
                    plan: (*e.plan).clone(),
                    units,
                    records: e.containers.clone(),
                    status,
                }
            })
            .collect()
    }

    /// Whether the initial sync is complete (before it, [`Runtime::pod_views`]
    /// may lack pods still being adopted).
    pub fn synced(&self) -> bool {
        self.shared
            .synced
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The systemd connection (the kubelet API reads the journal and runs
    /// commands in units through it).
    pub fn systemd(&self) -> &Arc<dyn Units> {
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
        if let Some(images) = &s.cfg.images {
            feeds.push(images.changes());
        }
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
        // The adopted units' state first: a pass that ran before it is in
        // would find no unit and ask systemd to create each one again
        // (refused as existing: harmless, but a call per container).
        s.units_q.wait_idle().await;
        // The first desired set decides what survives; wait for it before syncing.
        if let Some(first) = desired.recv().await {
            self.set_desired(first);
        }
        s.units_q.wait_idle().await;
        s.pods_q.wait_idle().await;
        s.synced.store(true, std::sync::atomic::Ordering::Release);
        info!(
            pods = adopted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "initial sync complete"
        );
        if let Some(images) = s.cfg.images.clone() {
            let me = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(images.config().gc_period);
                loop {
                    tick.tick().await;
                    me.collect_images(&images);
                }
            });
        }
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
                // reading it tells which, without loading it again (see
                // `Units::snapshot_if_loaded`: reading back with a plain
                // read cost eleven reads per deleted pod).
                if !inner.reloading && inner.owner.contains_key(&name) {
                    inner.unloaded.insert(name.clone());
                    s.units_q.add(&name);
                }
                return;
            }
            UnitEvent::Reloading(true) => {
                inner.reloading = true;
                return;
            }
            ev @ (UnitEvent::Reloading(false)
            | UnitEvent::Reconnected
            | UnitEvent::ManagerRestarted) => {
                if !matches!(ev, UnitEvent::Reloading(false)) {
                    // Serials are per connection: the old ones would make
                    // every new signal look older than what is cached.
                    if matches!(ev, UnitEvent::Reconnected) {
                        info!("systemd connection restored; reading every unit again");
                    } else {
                        info!("systemd joined the bus anew; reading every unit again");
                    }
                    inner.serials.clear();
                    // Reads answered before this are not to be compared
                    // with the new numbering (see `unit_worker`).
                    inner.serial_epoch += 1;
                }
                inner.reloading = false;
                for unit in inner.owner.keys() {
                    s.units_q.add(unit);
                }
                return;
            }
        };
        let Some(unit) = names::unit_from_object_path(&path) else {
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
            let (unloaded, epoch) = {
                let mut inner = s.inner.lock().unwrap();
                (inner.unloaded.remove(&unit), inner.serial_epoch)
            };
            let read = if unloaded {
                s.sd.snapshot_if_loaded(&unit).await
            } else {
                s.sd.snapshot_serial(&unit).await
            };
            match read {
                Ok((serial, snap)) => self.apply_read(&unit, epoch, serial, snap),
                Err(e) => warn!(error = %e, "reading unit state failed"),
            }
            s.units_q.done(&unit);
        }
    }

    /// Takes a unit read in full (as of `epoch`) into the cache, unless a
    /// newer signal or read is there already.
    fn apply_read(&self, unit: &str, epoch: u64, serial: u32, snap: Option<UnitSnapshot>) {
        let s = &self.shared;
        let mut inner = s.inner.lock().unwrap();
        if inner.serial_epoch != epoch {
            // Answered before systemd (or the connection) started numbering
            // anew: not comparable, and every unit is being read again.
            return;
        }
        let newer = inner
            .serials
            .get(unit)
            .is_none_or(|&seen| serial_after(serial, seen));
        if snap.as_ref().is_none_or(|u| u.job_id == 0) {
            inner.free_place(unit, s);
        }
        if newer {
            inner.serials.insert(unit.to_string(), serial);
            match snap {
                Some(snap) => inner.units.insert(unit.to_string(), snap),
                None => inner.units.remove(unit),
            };
            if let Some(uid) = inner.owner.get(unit).cloned() {
                s.pods_q.add(&uid);
            }
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
        drop(inner);
        self.stop_orphans(&listing);
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
        let operation = update::worker_operation(&self.shared.inner.lock().unwrap(), uid);
        self.sync_pass(uid).await;
        crate::metrics::reconciled(started.elapsed());
        if let Some(op) = operation {
            crate::metrics::pod_worker(op, started.elapsed());
        }
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
            (Some(d), false) if d.terminal => {
                // As the kubelet: a pod the API server shows ended never
                // runs (again) here, whatever this node remembers.
                debug!(pod = d.key(), uid, "not admitting a pod that has ended")
            }
            (Some(_), false) if conflict => {
                debug!(uid, "waiting for the previous pod of the same name to stop")
            }
            (Some(d), false) if d.update_error.is_some() => {
                // Never started: rejected, as the kubelet's admission does.
                let message = d.update_error.clone().unwrap_or_default();
                self.report(PodReport::Status {
                    uid: uid.to_string(),
                    namespace: d.pod.metadata.namespace.clone().unwrap_or_default(),
                    name: d.pod.metadata.name.clone().unwrap_or_default(),
                    status: Box::new(crate::core::live::rejected_status(message)),
                });
            }
            (Some(pod), false) => {
                let now = now_us();
                // Shared with the desired pod: one copy of each pod in memory.
                let rec = PodRecord {
                    pod: Arc::clone(&pod.pod),
                    source: String::new(),
                    admitted_us: now,
                    live: Default::default(),
                    evicted: None,
                    stopping: None,
                };
                if let Err(e) = s.state.save_pod(&rec) {
                    // Not started unrecorded (a restarted agent would not
                    // know it); tried again in a while, until it is
                    // recorded or no longer wanted.
                    warn!(pod = pod.key(), error = %e, "cannot record pod; will retry");
                    return self.schedule(uid, now_us() + RECORD_RETRY_US);
                }
                let tag = names::uid_tag(uid);
                let unreadable = s.unreadable.lock().unwrap().remove(&tag);
                // A pod whose record was lost keeps its containers'
                // records (restart counts, instances) and running units:
                // adopted as after a restart, nothing started again.
                let adopting = unreadable.is_some();
                let containers = match unreadable {
                    Some((_, file)) => {
                        info!(pod = pod.key(), uid, file = %file.display(), "recorded a pod anew whose record was unreadable; its running containers are adopted");
                        s.state.load_containers(uid)
                    }
                    None => {
                        info!(pod = pod.key(), uid, "admitted pod");
                        HashMap::new()
                    }
                };
                crate::metrics::pod_admitted(uid, crate::metrics::agent::is_static(&rec.pod));
                self.register(rec, containers);
                if adopting {
                    // Adoption did not read these units (nobody owned them
                    // then): the pod is driven once they are read, as a
                    // unit read queues its owner.
                    let units: Vec<String> = {
                        let inner = s.inner.lock().unwrap();
                        let plan = inner.pods.get(uid).map(|e| e.plan.clone());
                        plan.iter()
                            .flat_map(|p| p.unit_names().map(str::to_string))
                            .collect()
                    };
                    for unit in &units {
                        s.units_q.add(unit);
                    }
                    return;
                }
                self.drive(uid).await;
            }
            (Some(d), true) => {
                self.update_spec(uid, &d);
                self.drive(uid).await
            }
        }
    }
}

impl Runtime {
    /// Image garbage collection (see [`crate::images::manager::Images::collect`]):
    /// every image an admitted pod names is in use, whatever its
    /// containers' state, as the kubelet counts images of existing
    /// containers.
    pub fn collect_images(&self, images: &crate::images::manager::Images) {
        let names: Vec<String> = {
            let inner = self.shared.inner.lock().unwrap();
            inner
                .pods
                .values()
                .flat_map(|e| {
                    let volumes = e.plan.volumes.iter().filter_map(|v| match &v.kind {
                        crate::core::volume::VolumeKind::Image { reference, .. } => {
                            Some(reference.clone())
                        }
                        _ => None,
                    });
                    e.plan
                        .all()
                        .map(|c| c.image.clone())
                        .chain(volumes)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let in_use = images.keys_of(names.iter().map(String::as_str));
        let root = images.store().root().to_path_buf();
        images.collect(&in_use, now_us(), &|| {
            crate::images::manager::fs_usage(&root)
        });
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
            if names_objects || e.plan.all().any(|c| !c.refs.is_empty() || c.pull.is_some()) {
                s.pods_q.add(uid);
            }
        }
    }
}
