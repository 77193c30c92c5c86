//! `observe(...) -> PodStatus`: the kubelet's status rules over systemd's unit
//! state, as a pure function of its inputs (including the clock).

use super::backoff::BackoffState;
use super::translate::{PodPlan, Waiting};
use super::NodeFacts;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A unit's `ActiveState`: what the reconciler branches on, as a type
/// rather than a string (systemd's names, lower case, on the wire and in
/// saved state; a state a newer systemd invents reads as `Unknown`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActiveState {
    /// Running (or, with `RemainAfterExit=`, exited and kept).
    Active,
    /// Reloading its configuration.
    Reloading,
    /// Stopped.
    Inactive,
    /// Stopped after a failure.
    Failed,
    /// Starting.
    Activating,
    /// Stopping.
    Deactivating,
    /// Cleaning up after itself.
    Maintenance,
    /// Refreshing its mounts (a newer systemd's).
    Refreshing,
    /// Not read yet, or a state this agent does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl ActiveState {
    /// systemd's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Maintenance => "maintenance",
            ActiveState::Refreshing => "refreshing",
            ActiveState::Unknown => "",
        }
    }

    /// A process may still be running: the unit is up or on its way up
    /// or down.
    pub fn busy(self) -> bool {
        matches!(
            self,
            ActiveState::Active
                | ActiveState::Activating
                | ActiveState::Deactivating
                | ActiveState::Reloading
        )
    }
}

impl From<&str> for ActiveState {
    fn from(s: &str) -> Self {
        match s {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            "maintenance" => ActiveState::Maintenance,
            "refreshing" => ActiveState::Refreshing,
            _ => ActiveState::Unknown,
        }
    }
}

impl std::fmt::Display for ActiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What systemd says about one unit (one GetAll, or a ListUnits row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSnapshot {
    /// `LoadState`.
    pub load_state: String,
    /// `ActiveState`.
    pub active_state: ActiveState,
    /// `SubState` (type-specific; read only to tell a kept, exited
    /// service from a running one).
    pub sub_state: String,
    /// `Result` (service).
    pub result: String,
    /// `InvocationID` as 32 hex digits; empty before the first start.
    pub invocation_id: String,
    /// `MainPID`.
    pub main_pid: u32,
    /// `ExecMainCode`: 1 exited, 2 killed, 3 dumped.
    pub exec_main_code: i32,
    /// `ExecMainStatus`: exit status or signal number.
    pub exec_main_status: i32,
    /// `ExecMainStartTimestamp`, µs since the epoch.
    pub exec_main_start_us: u64,
    /// `ExecMainExitTimestamp`, µs since the epoch.
    pub exec_main_exit_us: u64,
    /// `ExecMainPID`: main process of the current (or last) invocation.
    #[serde(default)]
    pub exec_main_pid: u32,
    /// ID of the unit's queued job, 0 for none (`Job`).
    #[serde(default)]
    pub job_id: u32,
}

/// How one container instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    /// Exit code; 128+N for signal N.
    pub exit_code: i32,
    /// Signal that killed it, if any.
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled` or `StartError`.
    pub reason: String,
    /// Extra detail.
    pub message: Option<String>,
    /// µs since the epoch.
    pub started_us: u64,
    /// µs since the epoch.
    pub finished_us: u64,
    /// `systemd://<invocation id>`.
    pub container_id: String,
    /// PID of its main process (0 if unknown): what selects its stdout and
    /// stderr in the journal for `logs --previous` (see the agent's `journal` module).
    #[serde(default)]
    pub pid: u32,
}

/// A pod's container records by container name. Boxed: a map of one
/// container still has four places, and inline records made these maps a
/// tenth of a 2,000-pod agent's heap.
pub type Records = HashMap<String, Box<ContainerRecord>>;

/// What the agent remembers about a container beyond systemd's own state.
/// Persisted in the state directory so a restarted agent (and the CLI) see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Completed restarts.
    pub restart_count: u32,
    /// Invocation of the instance before the current one (for `--previous`).
    pub previous_invocation: Option<String>,
    /// How the previous instance ended (`lastState`).
    pub last_termination: Option<Box<Termination>>,
    /// A restart decided for this invocation (the unit's current, terminated one).
    pub restart_of: Option<String>,
    /// When that restart may happen, µs since the epoch.
    pub restart_at_us: u64,
    /// The termination being restarted, moved to `last_termination` once the restart happens.
    pub restarting: Option<Box<Termination>>,
    /// Back-off entry.
    pub backoff: BackoffState,
    /// Why systemd refused to create the unit, if it did (`CreateContainerError`).
    pub create_error: Option<String>,
    /// Why the container's env could not be made from the ConfigMaps and
    /// Secrets it names (`CreateContainerConfigError`).
    #[serde(default)]
    pub config_error: Option<String>,
    /// [`UnitSpec::digest`](super::unit::UnitSpec::digest) of the plan the
    /// current unit was made from.
    #[serde(default)]
    pub unit_digest: Option<String>,
    /// What the probes of the current instance found (the daemon runs
    /// them; kept here so `unitlet pods` shows the same).
    #[serde(default)]
    pub probes: Option<ProbeRecord>,
    /// How the container ended for good (no restart under the pod's
    /// policy; an init container's success): the unit may be reset or
    /// collected afterwards, or the agent restarted, and the container
    /// must still never run again and still show how it ended.
    #[serde(default)]
    pub finished: Option<Box<Termination>>,
    /// The CPU and memory the current unit has (made with, or resized
    /// to): the container status's `resources`.
    #[serde(default)]
    pub actuated: Option<super::resources::Sizes>,
    /// Why applying a resize to the running unit failed (the kubelet's
    /// `PodResizeInProgress` with reason `Error`).
    #[serde(default)]
    pub resize_error: Option<String>,
    /// Why the container's image cannot be had now (`ErrImagePull`,
    /// `ImagePullBackOff`, `ErrImageNeverPull`).
    #[serde(default)]
    pub image_waiting: Option<Waiting>,
    /// The `imageID` of the image the current unit was made from.
    #[serde(default)]
    pub image_id: Option<String>,
    /// The instance last seen running, and on which boot of the machine:
    /// after a reboot its unit is gone with the boot, and that instance
    /// ended (as after a crash) rather than never having run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Box<LastRun>>,
}

/// A container instance seen running (see [`ContainerRecord::run`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// `/proc/sys/kernel/random/boot_id` when it ran.
    pub boot_id: String,
    /// Its systemd invocation ID.
    pub invocation: String,
    /// When its main process started, µs since the epoch.
    pub started_us: u64,
    /// Its main process (selects its output in the journal).
    pub pid: u32,
}

impl LastRun {
    /// How an instance ended that a reboot took away: what containerd
    /// reports to the kubelet for a container whose task is gone with the
    /// machine (exit code 255, reason `Unknown`); the time it ended is not
    /// known, so `now_us`, when the agent found out, stands in.
    pub fn lost(&self, now_us: u64) -> Termination {
        Termination {
            exit_code: 255,
            signal: None,
            reason: "Unknown".into(),
            message: Some(
                "the machine restarted while the container ran (its boot ID changed)".into(),
            ),
            started_us: self.started_us,
            finished_us: now_us.max(self.started_us),
            container_id: format!("systemd://{}", self.invocation),
            pid: self.pid,
        }
    }
}

/// Probe results of one container instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// The instance (systemd invocation ID) they are about.
    pub invocation: String,
    /// The startup probe has succeeded.
    pub started: bool,
    /// The readiness probe succeeds.
    pub ready: bool,
}

/// [`instance`], with a container that ended for good (its record's
/// `finished`) still terminated once its unit is gone.
pub fn instance_of(unit: Option<&UnitSnapshot>, record: Option<&ContainerRecord>) -> Instance {
    match (instance(unit), record.and_then(|r| r.finished.as_ref())) {
        (Instance::Absent, Some(t)) => Instance::Terminated(
            (**t).clone(),
            t.container_id
                .strip_prefix("systemd://")
                .unwrap_or(&t.container_id)
                .to_string(),
        ),
        (i, _) => i,
    }
}

/// A container instance as systemd shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instance {
    /// No unit, or never started.
    Absent,
    /// Being started.
    Creating,
    /// Main process running.
    Running {
        /// µs since the epoch.
        started_us: u64,
        /// Invocation id.
        invocation: String,
    },
    /// Main process gone.
    Terminated(Termination, String),
}

/// systemd exit statuses that mean the process never ran (step failures).
fn start_error_step(status: i32) -> Option<&'static str> {
    Some(match status {
        200 => "CHDIR",
        203 => "EXEC",
        216 => "GROUP",
        217 => "USER",
        _ => return None,
    })
}

/// Reads one container instance out of a unit snapshot.
pub fn instance(unit: Option<&UnitSnapshot>) -> Instance {
    let Some(u) = unit else {
        return Instance::Absent;
    };
    if u.load_state != "loaded" || u.invocation_id.is_empty() {
        return Instance::Absent;
    }
    let terminated = match (u.active_state, u.sub_state.as_str()) {
        (ActiveState::Activating, _) => return Instance::Creating,
        (ActiveState::Active, "exited") | (ActiveState::Failed, _) => true,
        (ActiveState::Active | ActiveState::Reloading | ActiveState::Deactivating, _) => false,
        // A unit being created reads inactive with its main process
        // already forked (ExecMainStartTimestamp set) before it reads
        // activating: not running until systemd says so (seen with units
        // whose mount namespace takes a while to set up).
        (ActiveState::Inactive, _) if u.exec_main_exit_us == 0 => return Instance::Creating,
        (ActiveState::Inactive, _) => true,
        _ => return Instance::Absent,
    };
    if !terminated {
        if u.exec_main_start_us == 0 {
            return Instance::Creating;
        }
        return Instance::Running {
            started_us: u.exec_main_start_us,
            invocation: u.invocation_id.clone(),
        };
    }
    let killed = matches!(u.exec_main_code, 2 | 3);
    let (mut exit_code, signal) = if killed {
        (128 + u.exec_main_status, Some(u.exec_main_status))
    } else {
        (u.exec_main_status, None)
    };
    let mut message = None;
    let reason = if u.result == "oom-kill" {
        "OOMKilled"
    } else if let Some(step) = (!killed)
        .then(|| start_error_step(u.exec_main_status))
        .flatten()
    {
        exit_code = 128;
        message = Some(format!(
            "systemd could not start the process: step {step} failed (status {})",
            u.exec_main_status
        ));
        "StartError"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let finished = if u.exec_main_exit_us > 0 {
        u.exec_main_exit_us
    } else {
        u.exec_main_start_us
    };
    let started = if u.exec_main_start_us > 0 {
        u.exec_main_start_us
    } else {
        finished
    };
    Instance::Terminated(
        Termination {
            exit_code,
            signal,
            reason: reason.into(),
            message,
            started_us: started,
            finished_us: finished,
            container_id: format!("systemd://{}", u.invocation_id),
            pid: u.exec_main_pid,
        },
        u.invocation_id.clone(),
    )
}

/// Whether a container that ended this way is restarted under `policy`.
pub fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Whether an init container that ended this way is retried.
pub fn should_restart_init(policy: &str, exit_code: i32) -> bool {
    exit_code != 0 && policy != "Never"
}

/// RFC 3339 time from µs since the epoch.
pub fn time_us(us: u64) -> Time {
    Time(Timestamp::from_microsecond(us as i64).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn terminated_state(t: &Termination) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: Some(t.reason.clone()),
            message: t.message.clone(),
            started_at: Some(time_us(t.started_us)),
            finished_at: Some(time_us(t.finished_us)),
            container_id: Some(t.container_id.clone()),
        }),
        ..Default::default()
    }
}

fn waiting_state(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

/// Inputs about one container for [`observe`].
#[derive(Debug, Clone, Default)]
pub struct ContainerInputs<'a> {
    /// Its unit, if systemd has it loaded.
    pub unit: Option<&'a UnitSnapshot>,
    /// The agent's record.
    pub record: Option<&'a ContainerRecord>,
}

/// Formats a pod as the kubelet does in messages: `name_namespace(uid)`.
pub fn pod_desc(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

fn duration_text(us: u64) -> String {
    let s = us / 1_000_000;
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m0s", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else if us.is_multiple_of(1_000_000) {
        format!("{s}s")
    } else {
        format!("{}ms", us / 1000)
    }
}

struct Built {
    status: ContainerStatus,
    /// Terminated for good (not restarting) and the exit code.
    done: Option<i32>,
    running: bool,
    waiting: bool,
    /// Waiting with a previous termination (restarting, e.g. CrashLoopBackOff):
    /// the kubelet counts it as stopped, not waiting, for the pod phase.
    restarting: bool,
    /// Has ever started (running now or finished at least once).
    ever_started: bool,
    last_time_us: u64,
}

#[allow(clippy::too_many_arguments)]
fn build(
    pod: &Pod,
    name: &str,
    image: &str,
    plan_wait: Option<&Waiting>,
    inputs: &ContainerInputs,
    default_wait: &str,
    now_us: u64,
) -> Built {
    let record = inputs.record.cloned().unwrap_or_default();
    let inst = instance_of(inputs.unit, Some(&record));
    let mut last = record.last_termination.as_deref().cloned();
    let mut done = None;
    let mut running = false;
    let mut ever_started = record.restart_count > 0 || last.is_some();
    let mut last_time_us = 0;
    let mut probe_ready = false;
    let (state, container_id, started) = match (&inst, plan_wait) {
        (_, Some(w)) => (
            waiting_state(w.reason.as_str(), Some(w.message.clone())),
            None,
            false,
        ),
        (Instance::Absent, _) if record.image_waiting.is_some() => {
            let w = record.image_waiting.as_ref().expect("checked");
            (
                waiting_state(w.reason.as_str(), Some(w.message.clone())),
                None,
                false,
            )
        }
        (Instance::Absent, _) if record.config_error.is_some() => (
            waiting_state("CreateContainerConfigError", record.config_error.clone()),
            None,
            false,
        ),
        (Instance::Absent, _) if record.create_error.is_some() => (
            waiting_state("CreateContainerError", record.create_error.clone()),
            None,
            false,
        ),
        (Instance::Absent, _) => (waiting_state(default_wait, None), None, false),
        (Instance::Creating, _) => (waiting_state("ContainerCreating", None), None, false),
        (
            Instance::Running {
                started_us,
                invocation,
            },
            _,
        ) => {
            running = true;
            ever_started = true;
            last_time_us = *started_us;
            // Probes gate `started` (startup) and `ready` (readiness), as
            // the kubelet's; a container without them is both once running.
            let c = pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|c| c.name == name);
            let probed = record
                .probes
                .as_ref()
                .filter(|p| p.invocation == *invocation);
            let started =
                c.is_none_or(|c| c.startup_probe.is_none()) || probed.is_some_and(|p| p.started);
            probe_ready = started
                && (c.is_none_or(|c| c.readiness_probe.is_none())
                    || probed.is_some_and(|p| p.ready));
            (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(time_us(*started_us)),
                    }),
                    ..Default::default()
                },
                Some(format!("systemd://{invocation}")),
                started,
            )
        }
        (Instance::Terminated(t, inv), _) => {
            ever_started = true;
            last_time_us = t.finished_us;
            if record.restart_of.as_deref() == Some(inv.as_str()) {
                // A restart is scheduled: the kubelet shows the back-off, with
                // the instance that just ended as lastState.
                last = Some(t.clone());
                if now_us < record.restart_at_us {
                    let msg = format!(
                        "back-off {} restarting failed container={name} pod={}",
                        duration_text(record.backoff.delay_us),
                        pod_desc(pod)
                    );
                    (
                        waiting_state("CrashLoopBackOff", Some(msg)),
                        Some(t.container_id.clone()),
                        false,
                    )
                } else if let Some(w) = &record.image_waiting {
                    (
                        waiting_state(w.reason.as_str(), Some(w.message.clone())),
                        Some(t.container_id.clone()),
                        false,
                    )
                } else if record.config_error.is_some() {
                    (
                        waiting_state("CreateContainerConfigError", record.config_error.clone()),
                        Some(t.container_id.clone()),
                        false,
                    )
                } else {
                    (
                        waiting_state("ContainerCreating", None),
                        Some(t.container_id.clone()),
                        false,
                    )
                }
            } else {
                done = Some(t.exit_code);
                (terminated_state(t), Some(t.container_id.clone()), false)
            }
        }
    };
    let waiting = state.waiting.is_some();
    let restarting = waiting && last.is_some();
    let status = ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: if image == super::rules::HOST_IMAGE {
            "host".into()
        } else {
            record.image_id.clone().unwrap_or_default()
        },
        container_id,
        ready: running && probe_ready,
        started: Some(started),
        restart_count: record.restart_count as i32,
        state: Some(state),
        last_state: Some(last.as_ref().map(terminated_state).unwrap_or_default()),
        ..Default::default()
    };
    Built {
        status,
        done,
        running,
        waiting,
        restarting,
        ever_started,
        last_time_us,
    }
}

pub(crate) fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    at_us: u64,
) -> PodCondition {
    PodCondition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.map(Into::into),
        message,
        last_transition_time: Some(time_us(at_us)),
        ..Default::default()
    }
}

/// Computes the pod status the kubelet would report.
///
/// `admitted_us` is when unitlet admitted the pod (`startTime`);
/// The last status of a pod whose units were all stopped because the pod
/// is going away: as the kubelet's for a terminal pod, every container that
/// ran shows how it ended and nothing is restarted any more, so the phase
/// is Succeeded if all app containers exited 0 and Failed otherwise
/// (whatever the restart policy). Controllers such as the Job controller
/// read this phase before the pod object is removed.
#[allow(clippy::too_many_arguments)]
pub fn observe_terminal(
    pod: &Pod,
    plan: &PodPlan,
    node: &NodeFacts,
    units: &HashMap<String, UnitSnapshot>,
    records: &Records,
    admitted_us: u64,
    now_us: u64,
) -> PodStatus {
    let mut pod = pod.clone();
    if let Some(spec) = pod.spec.as_mut() {
        spec.restart_policy = Some("Never".into());
    }
    let records: Records = records
        .iter()
        .map(|(k, r)| {
            let mut r = r.clone();
            r.restart_of = None;
            (k.clone(), r)
        })
        .collect();
    observe(&pod, plan, node, units, &records, admitted_us, now_us)
}

/// `units`/`records` are keyed by unit name and container name.
pub fn observe(
    pod: &Pod,
    plan: &PodPlan,
    node: &NodeFacts,
    units: &HashMap<String, UnitSnapshot>,
    records: &Records,
    admitted_us: u64,
    now_us: u64,
) -> PodStatus {
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let inputs = |c: &super::translate::ContainerPlan| ContainerInputs {
        unit: units.get(&c.unit),
        record: records.get(&c.name).map(|r| &**r),
    };
    let wait = |c: &super::translate::ContainerPlan| c.spec.as_ref().err().cloned();

    let inits: Vec<Built> = plan
        .init
        .iter()
        .map(|c| {
            let mut b = build(
                pod,
                &c.name,
                &c.image,
                wait(c).as_ref(),
                &inputs(c),
                "PodInitializing",
                now_us,
            );
            // The kubelet reports an init container ready once it has
            // completed successfully (and not while it runs); a sidecar as
            // any running container.
            if !c.sidecar {
                b.status.ready = b.done == Some(0);
            }
            b
        })
        .collect();
    let default_wait = if plan.init.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let apps: Vec<Built> = plan
        .containers
        .iter()
        .map(|c| {
            build(
                pod,
                &c.name,
                &c.image,
                wait(c).as_ref(),
                &inputs(c),
                default_wait,
                now_us,
            )
        })
        .collect();

    // getPhase, init part. A sidecar never fails the pod's initialization
    // (it is restarted); it counts as done once it has started.
    let is_sidecar = |i: usize| plan.init[i].sidecar;
    let init_failed = inits.iter().enumerate().any(|(i, b)| {
        !is_sidecar(i)
            && (b.done.is_some_and(|c| c != 0)
                || (b.waiting
                    && b.status
                        .last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .is_some_and(|t| t.exit_code != 0)))
    });
    let init_done = inits.iter().enumerate().all(|(i, b)| {
        if is_sidecar(i) {
            b.status.started == Some(true) || apps.iter().any(|a| a.ever_started)
        } else {
            b.done == Some(0)
        }
    });
    let any_app_started = apps.iter().any(|b| b.ever_started);
    let init_pending = !(init_done || (init_failed && policy == "Never"));

    let running = apps.iter().filter(|b| b.running).count();
    let waiting = apps.iter().filter(|b| b.waiting && !b.restarting).count();
    let restarting = apps.iter().filter(|b| b.restarting).count();
    let stopped: Vec<i32> = apps.iter().filter_map(|b| b.done).collect();
    let phase = if init_failed && policy == "Never" {
        "Failed"
    } else if (init_pending && !any_app_started) || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if !apps.is_empty() && stopped.len() + restarting == apps.len() {
        if policy == "Always" {
            "Running"
        } else if restarting == 0 && stopped.iter().all(|&c| c == 0) {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    };

    // Conditions with transition times derived from container times.
    let latest = |bs: &[Built]| {
        bs.iter()
            .map(|b| b.last_time_us)
            .max()
            .unwrap_or(0)
            .max(admitted_us)
    };
    let initialized = init_done || any_app_started;
    let incomplete: Vec<&str> = plan
        .init
        .iter()
        .zip(&inits)
        .filter(|(_, b)| b.done != Some(0))
        .map(|(c, _)| c.name.as_str())
        .collect();
    let init_cond = if phase == "Succeeded" && initialized {
        condition(
            "Initialized",
            true,
            Some("PodCompleted"),
            None,
            latest(&inits),
        )
    } else if initialized {
        condition("Initialized", true, None, None, latest(&inits))
    } else {
        condition(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
            latest(&inits),
        )
    };
    // Sidecars' readiness counts, as the kubelet's.
    let unready: Vec<&str> = plan
        .init
        .iter()
        .zip(&inits)
        .filter(|(c, _)| c.sidecar)
        .chain(plan.containers.iter().zip(&apps))
        .filter(|(_, b)| !b.status.ready)
        .map(|(c, _)| c.name.as_str())
        .collect();
    let gates = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| !g.is_empty());
    let ready_at = latest(&apps);
    let (cr, ready) = match phase {
        "Succeeded" => (
            condition(
                "ContainersReady",
                false,
                Some("PodCompleted"),
                None,
                ready_at,
            ),
            condition("Ready", false, Some("PodCompleted"), None, ready_at),
        ),
        "Failed" => (
            condition("ContainersReady", false, Some("PodFailed"), None, ready_at),
            condition("Ready", false, Some("PodFailed"), None, ready_at),
        ),
        _ if unready.is_empty() => {
            let r = if gates {
                condition(
                    "Ready",
                    false,
                    Some("ReadinessGatesNotReady"),
                    Some("unitlet sets no readiness gates".into()),
                    ready_at,
                )
            } else {
                condition("Ready", true, None, None, ready_at)
            };
            (condition("ContainersReady", true, None, None, ready_at), r)
        }
        _ => {
            let msg = format!("containers with unready status: [{}]", unready.join(" "));
            (
                condition(
                    "ContainersReady",
                    false,
                    Some("ContainersNotReady"),
                    Some(msg.clone()),
                    ready_at,
                ),
                condition(
                    "Ready",
                    false,
                    Some("ContainersNotReady"),
                    Some(msg),
                    ready_at,
                ),
            )
        }
    };
    let conditions = vec![
        condition("PodReadyToStartContainers", true, None, None, admitted_us),
        init_cond,
        ready,
        cr,
        condition("PodScheduled", true, None, None, admitted_us),
    ];
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(node.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: node.host_ip.clone(),
        }]),
        pod_ip: Some(node.host_ip.clone()),
        pod_ips: Some(vec![PodIP {
            ip: node.host_ip.clone(),
        }]),
        start_time: Some(time_us(admitted_us)),
        qos_class: Some(qos_class(pod).into()),
        init_container_statuses: (!inits.is_empty())
            .then(|| inits.into_iter().map(|b| b.status).collect()),
        container_statuses: Some(apps.into_iter().map(|b| b.status).collect()),
        // Ephemeral containers never count towards the phase or readiness.
        ephemeral_container_statuses: (!plan.ephemeral.is_empty()).then(|| {
            plan.ephemeral
                .iter()
                .map(|c| {
                    let mut b = build(
                        pod,
                        &c.name,
                        &c.image,
                        wait(c).as_ref(),
                        &inputs(c),
                        "ContainerCreating",
                        now_us,
                    );
                    b.status.ready = false;
                    b.status
                })
                .collect()
        }),
        ..Default::default()
    }
}

/// Kubernetes QoS class from requests and limits.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    // Pod-level resources, when they name CPU or memory, decide alone
    // (KEP-2837), a missing request being the limit (API defaulting).
    if let Some(r) = spec.resources.as_ref() {
        let get =
            |m: &Option<
                std::collections::BTreeMap<
                    String,
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                >,
            >,
             k: &str| { m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone()) };
        let set = ["cpu", "memory"]
            .iter()
            .any(|k| get(&r.requests, k).is_some() || get(&r.limits, k).is_some());
        if set {
            let guaranteed =
                ["cpu", "memory"]
                    .iter()
                    .all(|k| match (get(&r.limits, k), get(&r.requests, k)) {
                        (Some(l), Some(q)) => l == q,
                        (Some(_), None) => true,
                        _ => false,
                    });
            return if guaranteed {
                "Guaranteed"
            } else {
                "Burstable"
            };
        }
    }
    let all: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    let get = |c: &&k8s_openapi::api::core::v1::Container, kind: &str, r: &str| {
        c.resources
            .as_ref()
            .and_then(|x| {
                if kind == "limits" {
                    x.limits.as_ref()
                } else {
                    x.requests.as_ref()
                }
            })
            .and_then(|m| m.get(r))
            .map(|q| q.0.clone())
    };
    let any = all.iter().any(|c| {
        ["cpu", "memory"]
            .iter()
            .any(|r| get(c, "limits", r).is_some() || get(c, "requests", r).is_some())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        ["cpu", "memory"]
            .iter()
            .all(|r| match (get(c, "limits", r), get(c, "requests", r)) {
                (Some(l), Some(q)) => l == q,
                (Some(_), None) => true,
                _ => false,
            })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifest;
    use crate::translate::translate;

    const T0: u64 = 1_700_000_000_000_000;

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "n".into(),
            host_ip: "10.0.0.1".into(),
            allocatable: Default::default(),
            pods_dir: "/var/lib/unitlet/pods".into(),
            hardening: Default::default(),
            agent_exe: "/usr/bin/unitlet".into(),
        }
    }

    fn pod(policy: &str, inits: &[&str], apps: &[&str]) -> (Pod, PodPlan) {
        let c =
            |n: &&str| serde_json::json!({"name": n, "image": "host", "command": ["/bin/true"]});
        let doc = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"restartPolicy": policy, "initContainers": inits.iter().map(c).collect::<Vec<_>>(), "containers": apps.iter().map(c).collect::<Vec<_>>()}
        });
        let p = parse_manifest(doc.to_string().as_bytes(), "/m", "n", true).unwrap();
        let plan = translate(&p.pod, &node(), &|_| None);
        ((*p.pod).clone(), plan)
    }

    fn running(inv: &str) -> UnitSnapshot {
        UnitSnapshot {
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            result: "success".into(),
            invocation_id: inv.into(),
            main_pid: 42,
            exec_main_start_us: T0 + 1_000_000,
            ..Default::default()
        }
    }

    fn ended(inv: &str, code: i32, status: i32, result: &str) -> UnitSnapshot {
        let failed = result != "success";
        UnitSnapshot {
            load_state: "loaded".into(),
            active_state: if failed { "failed" } else { "active" }.into(),
            sub_state: if failed { "failed" } else { "exited" }.into(),
            result: result.into(),
            invocation_id: inv.into(),
            exec_main_code: code,
            exec_main_status: status,
            exec_main_start_us: T0 + 1_000_000,
            exec_main_exit_us: T0 + 3_000_000,
            ..Default::default()
        }
    }

    fn status(
        pod: &Pod,
        plan: &PodPlan,
        units: &[(&str, UnitSnapshot)],
        records: &[(&str, ContainerRecord)],
        now: u64,
    ) -> PodStatus {
        let unit_of = |c: &str| {
            plan.init
                .iter()
                .chain(&plan.containers)
                .find(|p| p.name == c)
                .unwrap()
                .unit
                .clone()
        };
        let units = units.iter().map(|(c, s)| (unit_of(c), s.clone())).collect();
        let records = records
            .iter()
            .map(|(c, r)| (c.to_string(), Box::new(r.clone())))
            .collect();
        observe(pod, plan, &node(), &units, &records, T0, now)
    }

    fn cond(s: &PodStatus, kind: &str) -> (String, Option<String>) {
        let c = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn state(s: &PodStatus, i: usize) -> ContainerState {
        s.container_statuses.as_ref().unwrap()[i]
            .state
            .clone()
            .unwrap()
    }

    #[test]
    fn a_unit_still_inactive_with_its_process_forked_is_being_created() {
        // systemd's first signals for a new unit: inactive/dead with the
        // main process already forked, then activating, then active.
        let mut u = running("i1");
        for (active, sub) in [("inactive", "dead"), ("activating", "start")] {
            u.active_state = active.into();
            u.sub_state = sub.into();
            assert_eq!(instance(Some(&u)), Instance::Creating, "{active}/{sub}");
        }
        // Inactive after the process exited is a termination.
        u.active_state = "inactive".into();
        u.exec_main_exit_us = T0 + 2_000_000;
        u.exec_main_code = 1;
        assert!(matches!(instance(Some(&u)), Instance::Terminated(..)));
    }

    #[test]
    fn running_pod_is_ready() {
        let (p, plan) = pod("Always", &[], &["a", "b"]);
        let s = status(
            &p,
            &plan,
            &[("a", running("i1")), ("b", running("i2"))],
            &[],
            T0 + 5_000_000,
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").0, "True");
        assert_eq!(cond(&s, "ContainersReady").0, "True");
        assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.1"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.started == Some(true));
        assert_eq!(cs.container_id.as_deref(), Some("systemd://i1"));
    }

    #[test]
    fn probes_gate_started_and_ready() {
        let (mut p, plan) = pod("Always", &[], &["a"]);
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        let probe: k8s_openapi::api::core::v1::Probe =
            serde_json::from_value(serde_json::json!({"tcpSocket": {"port": 80}})).unwrap();
        c.readiness_probe = Some(probe.clone());
        c.startup_probe = Some(probe);
        let rec = |inv: &str, started, ready| ContainerRecord {
            probes: Some(ProbeRecord {
                invocation: inv.into(),
                started,
                ready,
            }),
            ..Default::default()
        };
        let check = |records: &[(&str, ContainerRecord)]| {
            let s = status(&p, &plan, &[("a", running("i1"))], records, T0);
            let cs = s.container_statuses.as_ref().unwrap()[0].clone();
            (cs.started, cs.ready, cond(&s, "ContainersReady").0, s.phase)
        };
        let no = (
            Some(false),
            false,
            "False".to_string(),
            Some("Running".to_string()),
        );
        // No result yet, or results about another instance: not started, not ready.
        assert_eq!(check(&[]), no);
        assert_eq!(check(&[("a", rec("i0", true, true))]), no);
        // Started, readiness not yet passing.
        let s = check(&[("a", rec("i1", true, false))]);
        assert_eq!((s.0, s.1), (Some(true), false));
        // Both.
        assert_eq!(
            check(&[("a", rec("i1", true, true))]),
            (
                Some(true),
                true,
                "True".to_string(),
                Some("Running".to_string())
            )
        );
    }

    #[test]
    fn one_container_still_creating_keeps_pod_pending_and_unready() {
        let (p, plan) = pod("Always", &[], &["a", "b"]);
        let s = status(&p, &plan, &[("a", running("i1"))], &[], T0);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(
            cond(&s, "Ready"),
            ("False".into(), Some("ContainersNotReady".into()))
        );
        assert_eq!(
            state(&s, 1).waiting.unwrap().reason.as_deref(),
            Some("ContainerCreating")
        );
    }

    #[test]
    fn exit_codes_signals_and_reasons() {
        let (p, plan) = pod("Never", &[], &["a"]);
        let cases = [
            (ended("i", 1, 3, "exit-code"), 3, None, "Error", "Failed"),
            (ended("i", 2, 9, "signal"), 137, Some(9), "Error", "Failed"),
            (
                ended("i", 2, 15, "signal"),
                143,
                Some(15),
                "Error",
                "Failed",
            ),
            (
                ended("i", 1, 137, "oom-kill"),
                137,
                None,
                "OOMKilled",
                "Failed",
            ),
            (
                ended("i", 1, 203, "exit-code"),
                128,
                None,
                "StartError",
                "Failed",
            ),
            (
                ended("i", 1, 0, "success"),
                0,
                None,
                "Completed",
                "Succeeded",
            ),
        ];
        for (unit, code, signal, reason, phase) in cases {
            let s = status(&p, &plan, &[("a", unit)], &[], T0 + 9_000_000);
            let t = state(&s, 0).terminated.unwrap();
            assert_eq!(
                (t.exit_code, t.signal, t.reason.as_deref()),
                (code, signal, Some(reason))
            );
            assert_eq!(s.phase.as_deref(), Some(phase));
            assert_eq!(t.finished_at, Some(time_us(T0 + 3_000_000)));
        }
    }

    #[test]
    fn completed_pod_conditions() {
        let (p, plan) = pod("OnFailure", &[], &["a"]);
        let s = status(
            &p,
            &plan,
            &[("a", ended("i", 1, 0, "success"))],
            &[],
            T0 + 9_000_000,
        );
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(
            cond(&s, "Ready"),
            ("False".into(), Some("PodCompleted".into()))
        );
        assert_eq!(
            cond(&s, "Initialized"),
            ("True".into(), Some("PodCompleted".into()))
        );
    }

    #[test]
    fn crash_loop_back_off_shows_waiting_with_last_state() {
        let (p, plan) = pod("Always", &[], &["a"]);
        let rec = ContainerRecord {
            restart_count: 2,
            restart_of: Some("i3".into()),
            restart_at_us: T0 + 23_000_000,
            backoff: BackoffState {
                delay_us: 20_000_000,
                last_update_us: T0,
            },
            ..Default::default()
        };
        let s = status(
            &p,
            &plan,
            &[("a", ended("i3", 1, 1, "exit-code"))],
            &[("a", rec)],
            T0 + 10_000_000,
        );
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        let w = cs.state.clone().unwrap().waiting.unwrap();
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        assert!(w
            .message
            .unwrap()
            .starts_with("back-off 20s restarting failed container=a pod=p_default("));
        assert_eq!(
            cs.last_state.clone().unwrap().terminated.unwrap().exit_code,
            1
        );
        assert_eq!(cs.restart_count, 2);
        // kubelet getPhase: waiting with a last termination counts as stopped,
        // and under Always a pod whose containers are all stopped is Running.
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn running_after_restart_keeps_last_state() {
        let (p, plan) = pod("Always", &[], &["a"]);
        let prev = Termination {
            exit_code: 2,
            signal: None,
            reason: "Error".into(),
            message: None,
            started_us: T0,
            finished_us: T0 + 1,
            container_id: "systemd://old".into(),
            pid: 0,
        };
        let rec = ContainerRecord {
            restart_count: 1,
            previous_invocation: Some("old".into()),
            last_termination: Some(Box::new(prev)),
            ..Default::default()
        };
        let s = status(
            &p,
            &plan,
            &[("a", running("new"))],
            &[("a", rec)],
            T0 + 10_000_000,
        );
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.state.clone().unwrap().running.is_some());
        assert_eq!(
            cs.last_state
                .clone()
                .unwrap()
                .terminated
                .unwrap()
                .container_id
                .as_deref(),
            Some("systemd://old")
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let (p, plan) = pod("Always", &["i1", "i2"], &["a"]);
        let s = status(&p, &plan, &[("i1", running("x"))], &[], T0);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(
            cond(&s, "Initialized"),
            ("False".into(), Some("ContainersNotInitialized".into()))
        );
        assert_eq!(
            state(&s, 0).waiting.unwrap().reason.as_deref(),
            Some("PodInitializing")
        );
        let s = status(
            &p,
            &plan,
            &[
                ("i1", ended("x", 1, 0, "success")),
                ("i2", ended("y", 1, 0, "success")),
                ("a", running("z")),
            ],
            &[],
            T0,
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Initialized").0, "True");
    }

    #[test]
    fn failed_init_container_under_never_fails_the_pod() {
        let (p, plan) = pod("Never", &["i1"], &["a"]);
        let s = status(&p, &plan, &[("i1", ended("x", 1, 1, "exit-code"))], &[], T0);
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(
            state(&s, 0).waiting.unwrap().reason.as_deref(),
            Some("PodInitializing")
        );
    }

    #[test]
    fn qos() {
        let (p, _) = pod("Always", &[], &["a"]);
        assert_eq!(qos_class(&p), "BestEffort");
    }
}
