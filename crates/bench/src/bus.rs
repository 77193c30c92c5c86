//! The node's systemd, reached from the host over the node's system bus.
//!
//! The node is `systemd-nspawn -D /` without a user namespace, so the bench
//! (root on the host) is root to the node's dbus-daemon too, and EXTERNAL
//! authentication over `/proc/<init>/root/run/dbus/system_bus_socket` works.
//! Going through the node's bus (rather than a private systemd socket) keeps
//! the raw baseline on the same path unitlet's own calls take.

use anyhow::{bail, Context};
use futures_util::{stream, StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

/// Calls kept in flight on one connection. The node's dbus-daemon refuses a
/// connection more than 128 pending replies (`max_replies_per_connection`,
/// answered with `LimitsExceeded`), and systemd handles calls one at a time
/// anyway, so a deeper pipeline would only queue in the daemon. unitlet
/// itself has at most 64 pod + 32 unit workers in flight.
pub const IN_FLIGHT: usize = 64;

/// Default for how many start jobs may be queued in systemd at once. systemd tracks the
/// client of every queued job with a D-Bus match rule on its own bus
/// connection, and the node's dbus-daemon allows a connection 512 match rules
/// (`max_match_rules_per_connection`): at a few hundred queued jobs systemd
/// fails to add more, and soon loses its bus connection ("Got disconnect on
/// API bus"; every pending call then fails with `NoReply`). Jobs only run
/// when systemd's event loop is otherwise idle, so a fast client piles them
/// up; the baseline must keep below the limit to survive N=1000.
pub const JOB_WINDOW: usize = 256;

/// Slice all raw units go into (a single slice, like a plain `systemd-run`
/// user would use; unitlet creates one slice per pod instead).
const RAW_SLICE: &str = "unitletbench.slice";
/// Prefix of the raw units; must not match unitlet's `unitlet_*` patterns.
const RAW_PREFIX: &str = "unitletbench-";
/// Namespace of the raw units made by unitlet's translation: the bench's
/// own pods are in `default`.
const RAW_NAMESPACE: &str = "raw-bench";

type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn unsubscribe(&self) -> zbus::Result<()>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitRow>>;
}

/// A connection to the node's system bus and its systemd manager.
pub struct NodeBus {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
}

impl NodeBus {
    /// Connects to the system bus of the node whose PID 1 is `init_pid` (a host PID).
    pub async fn connect(init_pid: u32) -> anyhow::Result<Self> {
        let address = format!("unix:path=/proc/{init_pid}/root/run/dbus/system_bus_socket");
        let conn = zbus::connection::Builder::address(address.as_str())?
            .build()
            .await
            .with_context(|| format!("connecting to the node's system bus at {address}"))?;
        let manager = ManagerProxy::new(&conn).await?;
        Ok(NodeBus { conn, manager })
    }

    /// Names and `(MainPID, InvocationID)` of every loaded unit matching `pattern`.
    pub async fn identities(&self, pattern: &str) -> anyhow::Result<HashMap<String, Identity>> {
        let rows = self
            .manager
            .list_units_by_patterns(&[], &[pattern])
            .await
            .context("ListUnitsByPatterns")?;
        stream::iter(rows)
            .map(|row| async move {
                let all = self.get_all(&row.6).await?;
                let main_pid = all
                    .get("MainPID")
                    .and_then(|v| u32::try_from(v).ok())
                    .with_context(|| format!("{}: no MainPID", row.0))?;
                let invocation: Vec<u8> = all
                    .get("InvocationID")
                    .and_then(|v| Vec::<u8>::try_from(v.try_clone().ok()?).ok())
                    .with_context(|| format!("{}: no InvocationID", row.0))?;
                let identity = Identity {
                    main_pid,
                    invocation_id: invocation.iter().map(|b| format!("{b:02x}")).collect(),
                    active: format!("{}/{}", row.3, row.4),
                };
                anyhow::Ok((row.0, identity))
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await
    }

    /// All properties of all interfaces of a unit object (systemd answers an
    /// empty interface name with everything, in one round trip).
    async fn get_all(&self, path: &OwnedObjectPath) -> anyhow::Result<HashMap<String, OwnedValue>> {
        let reply = self
            .conn
            .call_method(
                Some("org.freedesktop.systemd1"),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "GetAll",
                &("",),
            )
            .await
            .with_context(|| format!("GetAll {}", path.as_str()))?;
        Ok(reply.body().deserialize()?)
    }

    /// Loaded units matching `pattern`, any state.
    async fn count(&self, pattern: &str) -> anyhow::Result<usize> {
        Ok(self
            .manager
            .list_units_by_patterns(&[], &[pattern])
            .await?
            .len())
    }

    /// Waits until no unit matching `pattern` is loaded; returns the time
    /// since `since`.
    pub async fn wait_none(
        &self,
        pattern: &str,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        loop {
            let left = self.count(pattern).await?;
            if left == 0 {
                return Ok(since.elapsed());
            }
            if since.elapsed() > timeout {
                bail!("{left} units {pattern} still loaded {timeout:?} after stopping began");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What identifies one running instance of a unit: a restart changes both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `MainPID` (0 when nothing runs).
    pub main_pid: u32,
    /// `InvocationID`, hex.
    pub invocation_id: String,
    /// `ActiveState/SubState` when read.
    pub active: String,
}

/// One unit the raw client starts: its name and D-Bus properties.
pub struct RawUnit {
    pub name: String,
    pub props: Vec<(&'static str, Value<'static>)>,
}

/// What the raw client starts and stops.
pub struct RawUnits {
    pub units: Vec<RawUnit>,
    /// Stopped after the units, one call each.
    pub slices: Vec<String>,
    /// Matches every unit, for waiting until none is loaded.
    pub pattern: String,
}

/// `n` plain `sleep infinity` units in one slice: the least a hand-written
/// client would send (`Type=exec`, argv as a structured `ExecStart`).
pub fn plain_units(n: usize) -> RawUnits {
    let units = (1..=n)
        .map(|i| {
            let argv = vec!["/usr/bin/sleep".to_string(), "infinity".to_string()];
            let exec = vec![("/usr/bin/sleep".to_string(), argv, false)];
            RawUnit {
                name: format!("{RAW_PREFIX}{i:05}.service"),
                props: vec![
                    ("Description", Value::from("unitlet-bench raw unit")),
                    ("Slice", Value::from(RAW_SLICE)),
                    ("Type", Value::from("exec")),
                    ("ExecStart", Value::from(exec)),
                ],
            }
        })
        .collect();
    RawUnits {
        units,
        slices: vec![RAW_SLICE.to_string()],
        pattern: format!("{RAW_PREFIX}*.service"),
    }
}

/// The units unitlet's own translation makes of the bench's `n` pods (a
/// slice per pod, the default hardening, accounting, delegation), in a
/// namespace of their own so their names never meet the agent's: a
/// hand-written client starting exactly what the agent starts.
pub fn unitlet_units(n: usize) -> anyhow::Result<RawUnits> {
    use unitlet::core::{manifest::parse_manifest, translate::translate};
    let node = unitlet::core::NodeFacts {
        node_name: "bench".into(),
        host_ip: "127.0.0.1".into(),
        allocatable: unitlet::host::allocatable(std::path::Path::new("/var/lib/unitlet")),
        pods_dir: "/var/lib/unitlet/pods".into(),
        hardening: Default::default(),
        agent_exe: unitlet::host::agent_exe(),
    };
    let mut units = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 1..=n {
        let yaml = crate::pod_manifest(&format!("bench-{i:05}"), RAW_NAMESPACE, "host");
        let pod = parse_manifest(
            yaml.as_bytes(),
            &format!("/raw/bench-{i:05}.yaml"),
            "bench",
            false,
        )
        .map_err(|e| anyhow::anyhow!("the bench's own pod: {e}"))?;
        let plan = translate(&pod.pod, &node, &|_| None);
        let spec = match &plan.containers[0].spec {
            Ok(spec) => spec,
            Err(w) => bail!("the bench's own pod does not translate: {w:?}"),
        };
        units.push(RawUnit {
            name: spec.name.clone(),
            props: unitlet::systemd::to_dbus(&spec.properties),
        });
        slices.push(plan.slice.clone());
    }
    Ok(RawUnits {
        units,
        slices,
        pattern: format!("unitlet_{RAW_NAMESPACE}_*.service"),
    })
}

/// Starts `units` straight over D-Bus and returns the time from the first
/// call until every start job is done.
///
/// Completion is taken from `JobRemoved` signals: for `Type=exec` a start job
/// ends `done` only once `execve()` of the main process succeeded, which is
/// exactly "active/running". The match rule and `Subscribe` are in place
/// before the first call, so no signal can be missed.
pub async fn raw_start(
    bus: &NodeBus,
    raw: &RawUnits,
    in_flight: usize,
    job_window: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.systemd1")?
        .interface("org.freedesktop.systemd1.Manager")?
        .member("JobRemoved")?
        .build();
    // The socket reader blocks when a stream's queue is full, so size it for
    // every job of the run (units plus the slice) with room to spare.
    let n = raw.units.len();
    let mut jobs = zbus::MessageStream::for_match_rule(rule, &bus.conn, Some(4 * n + 1024)).await?;
    bus.manager.subscribe().await.context("Subscribe")?;

    let mut pending: HashSet<&str> = raw.units.iter().map(|u| u.name.as_str()).collect();
    let started = Instant::now();
    let window = &tokio::sync::Semaphore::new(job_window.max(1));
    let calls = stream::iter(&raw.units)
        .then(|unit| async move {
            // Released by the unit's JobRemoved below.
            window.acquire().await.expect("never closed").forget();
            unit
        })
        .map(|unit| start(&bus.manager, unit))
        .buffer_unordered(in_flight.clamp(1, IN_FLIGHT))
        .try_for_each(|()| async { Ok(()) });
    let done = async {
        while !pending.is_empty() {
            let Some(msg) = jobs.next().await else {
                bail!("the node's bus connection closed");
            };
            let (_id, _job, unit, result): (u32, OwnedObjectPath, String, String) =
                msg?.body().deserialize()?;
            if pending.remove(unit.as_str()) {
                if result != "done" {
                    bail!("start job of {unit} ended {result:?}, not \"done\"");
                }
                window.add_permits(1);
            }
        }
        anyhow::Ok(())
    };
    let outcome = tokio::time::timeout(timeout, async { tokio::try_join!(calls, done) }).await;
    match outcome {
        Ok(r) => drop(r?),
        Err(_) => bail!(
            "raw systemd: {} of {n} units not running after {timeout:?}",
            pending.len()
        ),
    }
    let elapsed = started.elapsed();
    drop(jobs);
    bus.manager.unsubscribe().await.context("Unsubscribe")?;
    Ok(elapsed)
}

/// Stops every raw unit, one `StopUnit` call after another (each reply
/// awaited, as a hand-written client would), then the slices, and returns
/// the time until systemd has none of them loaded any more.
pub async fn raw_stop(
    bus: &NodeBus,
    raw: &RawUnits,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let stopping = Instant::now();
    for name in raw.units.iter().map(|u| &u.name).chain(&raw.slices) {
        bus.manager
            .stop_unit(name, "replace")
            .await
            .with_context(|| format!("StopUnit {name}"))?;
    }
    bus.wait_none(&raw.pattern, stopping, timeout).await
}

async fn start(manager: &ManagerProxy<'_>, unit: &RawUnit) -> anyhow::Result<()> {
    manager
        .start_transient_unit(&unit.name, "fail", &unit.props, &[])
        .await
        .with_context(|| format!("StartTransientUnit {}", unit.name))?;
    Ok(())
}
