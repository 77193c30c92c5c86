//! The systemd client: transient units, unit state and signals over D-Bus.
//!
//! Every call carries typed values (ExecStart is an argv array); unit-file
//! text is never produced for systemd. One connection is shared and calls
//! are pipelined, so N units cost N round trips in flight, not N in a row.

mod props;
pub mod units;

/// The D-Bus values of a unit's properties (the benchmark's raw client
/// sends exactly what the agent sends).
pub use props::to_dbus;
pub use units::Units;

use crate::core::observe::UnitSnapshot;
use crate::core::unit::UnitSpec;
use futures_util::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

/// A failed systemd operation, naming the unit and what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// Could not reach systemd at all.
    #[error("cannot connect to systemd over D-Bus ({0}); is systemd PID 1 here? On a host without it, try `unitlet sandbox`")]
    Connect(#[source] zbus::Error),
    /// A call about one unit failed.
    #[error("systemd {op} {unit}: {source}")]
    Unit {
        /// What was attempted.
        op: &'static str,
        /// The unit.
        unit: String,
        /// D-Bus error.
        #[source]
        source: zbus::Error,
    },
    /// A manager-wide call failed.
    #[error("systemd {op}: {source}")]
    Manager {
        /// What was attempted.
        op: &'static str,
        /// D-Bus error.
        #[source]
        source: zbus::Error,
    },
    /// A call refused for a reason that is not a D-Bus error (from a
    /// [`Units`] implementation other than D-Bus, such as a test's).
    #[error("systemd {op} {unit}: {message}")]
    Refused {
        /// What was attempted.
        op: &'static str,
        /// The unit.
        unit: String,
        /// Why.
        message: String,
        /// The unit already exists (systemd's `UnitExists`).
        exists: bool,
    },
}

impl SystemdError {
    /// Whether the error says the unit already exists (harmless when re-creating).
    pub fn is_exists(&self) -> bool {
        match self {
            SystemdError::Unit {
                source: zbus::Error::MethodError(name, _, _),
                ..
            } => name.as_str() == "org.freedesktop.systemd1.UnitExists",
            SystemdError::Refused { exists, .. } => *exists,
            _ => false,
        }
    }
}

/// A row of `ListUnitsByPatterns`, its strings in the reply.
type BorrowedUnitRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    zbus::zvariant::ObjectPath<'a>,
    u32,
    &'a str,
    zbus::zvariant::ObjectPath<'a>,
);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Value<'_>)],
    ) -> zbus::Result<()>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn attach_processes_to_unit(
        &self,
        unit_name: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> zbus::Result<()>;
}

/// What a service runs with, as systemd has it: the context a command run
/// "in the container" (an exec probe, later `kubectl exec`) gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecContext {
    /// `Environment=` entries, `NAME=value`.
    pub environment: Vec<String>,
    /// `EnvironmentFiles=` paths.
    pub environment_files: Vec<String>,
    /// `WorkingDirectory=` ("" for the default).
    pub working_directory: String,
    /// The argv of the first `ExecStart=` command, as stored (with `$$`).
    pub exec_argv: Vec<String>,
    /// `MainPID` (0 when not running): a command "in the container" enters
    /// its mount namespace, where the unit's volumes are.
    pub main_pid: u32,
    /// `NoNewPrivileges=`.
    pub no_new_privileges: bool,
}

/// A change systemd signalled about a unit. `serial` is the signal's
/// message serial: systemd numbers everything it sends on a connection in
/// order, so comparing serials orders signals and method replies alike.
#[derive(Debug, Clone)]
pub enum UnitEvent {
    /// `PropertiesChanged`: the changed properties of one interface.
    Changed {
        /// The unit's object path.
        path: String,
        /// The signal's serial.
        serial: u32,
        /// The `org.freedesktop.systemd1.Unit` interface (states, invocation)
        /// rather than a type-specific one (main process, exit status).
        /// systemd sends the type-specific change first.
        unit_interface: bool,
        /// Property name → new value.
        props: HashMap<String, OwnedValue>,
    },
    /// `UnitRemoved`: systemd unloaded the unit, because it was collected
    /// after it stopped or because systemd is reloading.
    Unloaded {
        /// Unit name.
        name: String,
    },
    /// `Reloading`: systemd starts (`true`) or finished (`false`) a
    /// `daemon-reload`, which unloads and loads every unit and sends no
    /// property change for those whose state it kept.
    Reloading(bool),
    /// The connection was lost and made again: changes in between were not
    /// signalled, and serials (numbered per connection) start over.
    Reconnected,
    /// systemd joined the bus anew (`daemon-reexec`, or its reconnection
    /// after the bus restarted): its serials, numbered per connection of
    /// its own, start over, and what changed while it was away was not
    /// signalled. Without this, everything it sent afterwards read as older
    /// than what was cached before, until its new numbering caught up.
    ManagerRestarted,
}

impl UnitEvent {
    fn decode(m: &zbus::Message, prefixes: &[String], name_prefixes: &[String]) -> Option<Self> {
        let h = m.header();
        let serial = m.primary_header().serial_num().get();
        let iface = h.interface()?.as_str();
        match h.member()?.as_str() {
            "PropertiesChanged" if iface == "org.freedesktop.DBus.Properties" => {
                let path = h.path()?.to_string();
                if !prefixes.iter().any(|p| path.starts_with(p.as_str())) {
                    return None;
                }
                let (iface, props, _invalidated): (
                    String,
                    HashMap<String, OwnedValue>,
                    Vec<String>,
                ) = m.body().deserialize().ok()?;
                Some(UnitEvent::Changed {
                    path,
                    serial,
                    unit_interface: iface == "org.freedesktop.systemd1.Unit",
                    props,
                })
            }
            "UnitRemoved" if iface == MANAGER_INTERFACE => {
                let (name, _path): (String, OwnedObjectPath) = m.body().deserialize().ok()?;
                name_prefixes
                    .iter()
                    .any(|p| name.starts_with(p.as_str()))
                    .then_some(UnitEvent::Unloaded { name })
            }
            "Reloading" if iface == MANAGER_INTERFACE => {
                m.body().deserialize().ok().map(UnitEvent::Reloading)
            }
            "NameOwnerChanged" if iface == "org.freedesktop.DBus" => {
                let (name, _old, new): (String, String, String) = m.body().deserialize().ok()?;
                (name == SYSTEMD_NAME && !new.is_empty()).then_some(UnitEvent::ManagerRestarted)
            }
            _ => None,
        }
    }
}

/// Whether serial `a` was sent after `b` (serials wrap around).
pub fn serial_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The properties that describe `snap` (what a signal or `GetAll` carries).
pub fn changes_of(snap: &UnitSnapshot) -> HashMap<String, OwnedValue> {
    props::changes_of(snap)
}

/// Applies a `PropertiesChanged` payload to a cached snapshot.
pub fn apply_changes(snap: &mut UnitSnapshot, props: &HashMap<String, OwnedValue>) {
    props::apply(snap, props)
}

/// One row of `ListUnitsByPatterns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitListing {
    /// Unit name.
    pub name: String,
    /// `LoadState`.
    pub load_state: String,
    /// `ActiveState`.
    pub active_state: crate::core::observe::ActiveState,
    /// `SubState`.
    pub sub_state: String,
    /// ID of the unit's queued job, 0 for none.
    pub job_id: u32,
}

/// Maps a failed manager call (`op`) to its error, counted in the metrics.
fn manager_error(op: &'static str) -> impl Fn(zbus::Error) -> SystemdError + Copy {
    move |source| crate::metrics::dbus_error(SystemdError::Manager { op, source })
}

/// How long a call may wait for systemd's answer. zbus waits forever by
/// default, and a reconcile step stuck in a call would hold its pod (and a
/// worker) until the agent restarts. systemd answers even a busy burst within
/// seconds; a call past this is failed and the pod's next pass decides again.
pub const METHOD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";

/// systemd's well-known name on the bus.
const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";

/// Signals queued for a runtime that lags behind (a burst of pods brings
/// tens of thousands); the channel grows as it fills.
const SIGNAL_QUEUE: usize = 65536;

/// Messages the connection queues before the task that moves signals into
/// the [`SIGNAL_QUEUE`] reads them: only its scheduling gaps. zbus
/// allocates this queue in full up front (about 120 bytes a place), and at
/// 65,536 it was 7.9 MB of a 2,000-pod agent's heap.
const CONNECTION_QUEUE: usize = 4096;

/// A connection to the system manager. Clones share it; when the bus
/// closes it (dbus-daemon restarted) the signal stream of
/// [`Systemd::unit_events`] opens a new one for all of them, and calls made
/// in between fail like any refused call.
#[derive(Clone)]
pub struct Systemd {
    link: Arc<RwLock<Link>>,
    /// Held while a lost connection is replaced, so concurrent streams make
    /// one new connection, not one each.
    relink: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Clone)]
struct Link {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    /// Counts connections made, so a stream knows whether the one it lost
    /// was replaced already.
    generation: u64,
    /// Set once systemd's signals are asked for on this connection: match
    /// rules and `Subscribe` belong to the connection, not to a stream, so
    /// every later stream (each `logs -f` makes one) shares them. Adding
    /// them per stream left three rules behind each time, and the bus
    /// refuses a connection its 513th.
    subscribed: Arc<tokio::sync::OnceCell<()>>,
}

/// Whether systemd booted this machine (its `sd_booted` test).
fn booted_by_systemd() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

impl Systemd {
    /// Connects to systemd on the system bus.
    pub async fn connect() -> Result<Self, SystemdError> {
        Ok(Systemd {
            link: Arc::new(RwLock::new(Self::open(0).await?)),
            relink: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    async fn open(generation: u64) -> Result<Link, SystemdError> {
        // systemd's own spelling of the system bus (sd-bus's default), not
        // the D-Bus specification's `/var/run/...` (zbus's default): early
        // in a boot `/var/run` may not link to `/run` yet (seen in CI: the
        // socket was in /run, the agent found nothing in /var/run).
        let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".into());
        let mut told = false;
        let conn = loop {
            let built = zbus::connection::Builder::address(address.as_str())
                .map_err(SystemdError::Connect)?
                .method_timeout(METHOD_TIMEOUT)
                // A full queue stalls the connection, replies included,
                // until the signal stream (see `unit_events`) is read.
                .max_queued(CONNECTION_QUEUE)
                .build()
                .await;
            match built {
                Ok(conn) => break conn,
                // On a machine systemd booted, the bus is only not up yet:
                // wait for it as for systemd itself (below). Elsewhere the
                // error says what is wrong at once.
                Err(zbus::Error::Connection(e, _))
                    if booted_by_systemd()
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    if !told {
                        tracing::warn!(%address, error = %e, "the system bus is not up yet; waiting for it");
                        told = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(SystemdError::Connect(e)),
            }
        };
        Self::wait_for_manager(&conn).await?;
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(SystemdError::Connect)?;
        Ok(Link {
            conn,
            manager,
            generation,
            subscribed: Arc::default(),
        })
    }

    /// Waits until systemd owns its name on the bus. Early in boot, and
    /// while systemd re-executes, the bus runs without it: every call would
    /// fail, and an agent started then (ordered only after `dbus.service`)
    /// must wait for its manager as the kubelet waits for its runtime,
    /// not exit.
    async fn wait_for_manager(conn: &zbus::Connection) -> Result<(), SystemdError> {
        let dbus = zbus::fdo::DBusProxy::new(conn)
            .await
            .map_err(SystemdError::Connect)?;
        // Watching first, so an owner arriving between the two is seen.
        let mut owners = dbus
            .receive_name_owner_changed_with_args(&[(0, SYSTEMD_NAME)])
            .await
            .map_err(SystemdError::Connect)?;
        let name = zbus::names::BusName::try_from(SYSTEMD_NAME).expect("a valid bus name");
        if dbus
            .name_has_owner(name)
            .await
            .map_err(|e| SystemdError::Connect(e.into()))?
        {
            return Ok(());
        }
        tracing::warn!("systemd is not on the system bus yet; waiting for it");
        while let Some(change) = owners.next().await {
            if change.args().is_ok_and(|a| a.new_owner().is_some()) {
                tracing::info!("systemd joined the system bus");
                return Ok(());
            }
        }
        Err(SystemdError::Connect(zbus::Error::InputOutput(
            std::io::Error::other("the system bus closed while waiting for systemd").into(),
        )))
    }

    fn link(&self) -> Link {
        self.link.read().unwrap().clone()
    }

    fn manager(&self) -> ManagerProxy<'static> {
        self.link.read().unwrap().manager.clone()
    }

    fn conn(&self) -> zbus::Connection {
        self.link.read().unwrap().conn.clone()
    }

    /// The connection after `lost`: a new one if nobody replaced it yet.
    async fn replace(&self, lost: u64) -> Result<Link, SystemdError> {
        let _one = self.relink.lock().await;
        let current = self.link();
        if current.generation != lost {
            return Ok(current);
        }
        let fresh = Self::open(lost + 1).await?;
        *self.link.write().unwrap() = fresh.clone();
        Ok(fresh)
    }

    /// Creates and starts a transient unit.
    pub async fn start_transient(&self, spec: &UnitSpec) -> Result<(), SystemdError> {
        let values = props::to_dbus(&spec.properties);
        let borrowed: Vec<(&str, Value<'_>)> =
            values.iter().map(|(k, v)| (*k, v.clone())).collect();
        self.manager()
            .start_transient_unit(&spec.name, "fail", &borrowed, &[])
            .await
            .map(drop)
            .map_err(|source| {
                crate::metrics::dbus_error(SystemdError::Unit {
                    op: "create",
                    unit: spec.name.clone(),
                    source,
                })
            })
    }

    /// Changes properties of a loaded unit for this boot only (a drop-in
    /// systemd removes with a transient unit), without restarting it.
    pub async fn set_properties(
        &self,
        unit: &str,
        properties: &[crate::core::unit::Property],
    ) -> Result<(), SystemdError> {
        let values = props::to_dbus(properties);
        let borrowed: Vec<(&str, Value<'_>)> =
            values.iter().map(|(k, v)| (*k, v.clone())).collect();
        self.manager()
            .set_unit_properties(unit, true, &borrowed)
            .await
            .map_err(|source| {
                crate::metrics::dbus_error(SystemdError::Unit {
                    op: "set properties of",
                    unit: unit.into(),
                    source,
                })
            })
    }

    /// Starts a loaded unit again (a new invocation).
    pub async fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .start_unit(unit, "replace")
            .await
            .map(drop)
            .map_err(|source| {
                crate::metrics::dbus_error(SystemdError::Unit {
                    op: "start",
                    unit: unit.into(),
                    source,
                })
            })
    }

    /// Restarts a unit (stop, then start: a new invocation).
    pub async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .restart_unit(unit, "replace")
            .await
            .map(drop)
            .map_err(|source| {
                crate::metrics::dbus_error(SystemdError::Unit {
                    op: "restart",
                    unit: unit.into(),
                    source,
                })
            })
    }

    /// Stops a unit (for a slice: everything in it), honouring its stop timeout.
    pub async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .stop_unit(unit, "replace")
            .await
            .map(drop)
            .map_err(|source| {
                crate::metrics::dbus_error(SystemdError::Unit {
                    op: "stop",
                    unit: unit.into(),
                    source,
                })
            })
    }

    /// Clears a failed state so systemd can unload the unit.
    pub async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .reset_failed_unit(unit)
            .await
            .map_err(|source| {
                crate::metrics::dbus_error(SystemdError::Unit {
                    op: "reset-failed",
                    unit: unit.into(),
                    source,
                })
            })
    }

    /// Sends a signal to every process of a unit.
    pub async fn kill_all(&self, unit: &str, signal: i32) -> Result<(), SystemdError> {
        self.manager()
            .kill_unit(unit, "all", signal)
            .await
            .map_err(|source| {
                crate::metrics::dbus_error(SystemdError::Unit {
                    op: "kill",
                    unit: unit.into(),
                    source,
                })
            })
    }

    /// Moves a process into the unit's cgroup (`AttachProcessesToUnit`).
    pub async fn attach(&self, unit: &str, pid: u32) -> Result<(), SystemdError> {
        self.manager()
            .attach_processes_to_unit(unit, "", &[pid])
            .await
            .map_err(|source| {
                crate::metrics::dbus_error(SystemdError::Unit {
                    op: "attach a process to",
                    unit: unit.into(),
                    source,
                })
            })
    }

    /// The execution settings of a service (see [`ExecContext`]).
    pub async fn exec_context(&self, unit: &str) -> Result<ExecContext, SystemdError> {
        let (_, all) = self
            .get_all(unit, "org.freedesktop.systemd1.Service")
            .await?;
        let get = |k: &str| {
            all.get(k)
                .map(|v| Value::from(v.try_clone().expect("no fds")))
        };
        let mut ctx = ExecContext::default();
        if let Some(v) = get("Environment") {
            ctx.environment = Vec::<String>::try_from(v).unwrap_or_default();
        }
        if let Some(v) = get("EnvironmentFiles") {
            ctx.environment_files = Vec::<(String, bool)>::try_from(v)
                .unwrap_or_default()
                .into_iter()
                .map(|(p, _)| p)
                .collect();
        }
        if let Some(v) = get("WorkingDirectory") {
            ctx.working_directory = String::try_from(v).unwrap_or_default();
        }
        if let Some(v) = get("MainPID") {
            ctx.main_pid = u32::try_from(v).unwrap_or_default();
        }
        if let Some(v) = get("NoNewPrivileges") {
            ctx.no_new_privileges = bool::try_from(v).unwrap_or_default();
        }
        if let Some(v) = get("ExecStart") {
            type Cmd = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);
            ctx.exec_argv = Vec::<Cmd>::try_from(v)
                .ok()
                .and_then(|cmds| cmds.into_iter().next())
                .map(|c| c.1)
                .unwrap_or_default();
        }
        Ok(ctx)
    }

    /// systemd's version (`Manager.Version`); also a cheap check that
    /// systemd answers.
    pub async fn version(&self) -> Result<String, SystemdError> {
        let op = "read version";
        let reply = self
            .call_manager(
                op,
                "org.freedesktop.DBus.Properties",
                "Get",
                &(MANAGER_INTERFACE, "Version"),
            )
            .await?;
        let v: OwnedValue = reply.body().deserialize().map_err(manager_error(op))?;
        String::try_from(v).map_err(|e| manager_error(op)(e.into()))
    }

    /// Calls `method` on systemd's manager object (raw, so the reply can be
    /// read in place); errors name `op`.
    async fn call_manager<B>(
        &self,
        op: &'static str,
        interface: &str,
        method: &str,
        body: &B,
    ) -> Result<zbus::Message, SystemdError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.conn()
            .call_method(
                Some(SYSTEMD_NAME),
                "/org/freedesktop/systemd1",
                Some(interface),
                method,
                body,
            )
            .await
            .map_err(manager_error(op))
    }

    /// Lists loaded units matching glob patterns, in one call.
    pub async fn list(&self, patterns: &[&str]) -> Result<Vec<UnitListing>, SystemdError> {
        let op = "list units";
        let reply = self
            .call_manager(
                op,
                MANAGER_INTERFACE,
                "ListUnitsByPatterns",
                &(&[] as &[&str], patterns),
            )
            .await?;
        // Rows borrowed from the reply: a relist of 2,000 pods lists 4,000
        // units, and owned rows (ten fields each) were 0.9 MB of copies.
        let body = reply.body();
        let rows: Vec<BorrowedUnitRow<'_>> = body.deserialize().map_err(manager_error(op))?;
        Ok(rows
            .into_iter()
            .map(|r| UnitListing {
                job_id: r.7,
                name: r.0.to_string(),
                load_state: r.2.to_string(),
                active_state: r.3.into(),
                sub_state: r.4.to_string(),
            })
            .collect())
    }

    /// Reads a unit's state in one `GetAll`; `None` when systemd has no such unit loaded.
    pub async fn snapshot(&self, unit: &str) -> Result<Option<UnitSnapshot>, SystemdError> {
        self.snapshot_serial(unit).await.map(|(_, snap)| snap)
    }

    /// Like [`Systemd::snapshot`], with the serial of systemd's reply, which
    /// orders it among systemd's signals (see [`UnitEvent`]).
    pub async fn snapshot_serial(
        &self,
        unit: &str,
    ) -> Result<(u32, Option<UnitSnapshot>), SystemdError> {
        let (serial, all) = self.get_all(unit, "").await?;
        let snap = props::snapshot_from(&all);
        Ok((serial, (snap.load_state == "loaded").then_some(snap)))
    }

    /// See [`Units::snapshot_if_loaded`]: `GetUnit` (which never loads)
    /// first, then the properties.
    pub async fn snapshot_if_loaded(
        &self,
        unit: &str,
    ) -> Result<(u32, Option<UnitSnapshot>), SystemdError> {
        let reply = self
            .conn()
            .call_method(
                Some(SYSTEMD_NAME),
                "/org/freedesktop/systemd1",
                Some(MANAGER_INTERFACE),
                "GetUnit",
                &(unit,),
            )
            .await;
        match reply {
            Ok(_) => self.snapshot_serial(unit).await,
            Err(zbus::Error::MethodError(name, _, msg))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Ok((msg.primary_header().serial_num().get(), None))
            }
            Err(source) => Err(crate::metrics::dbus_error(SystemdError::Unit {
                op: "read",
                unit: unit.into(),
                source,
            })),
        }
    }

    /// `Properties.GetAll` of one interface of a unit ("" for all, in one
    /// round trip), with the reply's serial (see [`UnitEvent`]).
    async fn get_all(
        &self,
        unit: &str,
        interface: &str,
    ) -> Result<(u32, HashMap<String, OwnedValue>), SystemdError> {
        let path = crate::core::names::unit_object_path(unit);
        let map_err = |source| {
            crate::metrics::dbus_error(SystemdError::Unit {
                op: "read",
                unit: unit.into(),
                source,
            })
        };
        let reply = self
            .conn()
            .call_method(
                Some(SYSTEMD_NAME),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "GetAll",
                &(interface,),
            )
            .await
            .map_err(map_err)?;
        let serial = reply.primary_header().serial_num().get();
        Ok((serial, reply.body().deserialize().map_err(map_err)?))
    }

    /// Subscribes to systemd's unit signals and yields, in the order systemd
    /// sent them, the property changes of units under `prefixes` (with their
    /// values, so nothing needs reading back) and the loading and unloading
    /// of units whose names start with one of `name_prefixes`.
    /// Everything arrives on one connection queue, read as one stream, so
    /// the order is systemd's.
    ///
    /// When the bus closes the connection, the stream connects again (with
    /// back-off, for as long as it is read), yields
    /// [`UnitEvent::Reconnected`] and goes on: what changed in between was
    /// not signalled, and serials restart on the new connection.
    pub async fn unit_events(
        &self,
        prefixes: Vec<String>,
        name_prefixes: Vec<String>,
    ) -> Result<impl Stream<Item = UnitEvent> + use<>, SystemdError> {
        let link = self.link();
        let mut signals = Self::subscribe(&link).await?;
        let mut generation = link.generation;
        let (tx, rx) = tokio::sync::mpsc::channel(SIGNAL_QUEUE);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                loop {
                    // A stream nobody reads any more must not hold its queue
                    // on the connection: a full queue stalls every reply.
                    let msg = tokio::select! {
                        msg = signals.next() => msg,
                        () = tx.closed() => return,
                    };
                    let Some(msg) = msg else { break };
                    let Ok(m) = msg else { continue };
                    if m.message_type() != zbus::message::Type::Signal {
                        continue;
                    }
                    if let Some(ev) = UnitEvent::decode(&m, &prefixes, &name_prefixes) {
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
                tracing::warn!("the connection to systemd closed; connecting again");
                let mut delay = std::time::Duration::from_millis(100);
                loop {
                    tokio::time::sleep(delay).await;
                    if tx.is_closed() {
                        return;
                    }
                    let again = match me.replace(generation).await {
                        Ok(link) => Self::subscribe(&link).await.map(|s| (s, link.generation)),
                        Err(e) => Err(e),
                    };
                    match again {
                        Ok((s, g)) => {
                            (signals, generation) = (s, g);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "connecting to systemd again failed");
                            delay = (delay * 2).min(std::time::Duration::from_secs(5));
                        }
                    }
                }
                tracing::info!("connected to systemd again");
                if tx.send(UnitEvent::Reconnected).await.is_err() {
                    return;
                }
            }
        });
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|ev| (ev, rx))
        }))
    }

    /// Starts reading the connection's messages and asks systemd for its
    /// signals (and the bus's word when systemd joins it anew): only the
    /// three used, not all of systemd's, as every pod
    /// start also brings `UnitNew`, `JobNew` and `JobRemoved` per unit,
    /// which the bus daemon would otherwise route and the agent decode for
    /// nothing.
    async fn subscribe(link: &Link) -> Result<zbus::MessageStream, SystemdError> {
        let map_err = manager_error("subscribe");
        // Reading starts before the rules are added, so nothing is missed.
        let stream = zbus::MessageStream::from(&link.conn);
        link.subscribed
            .get_or_try_init(|| async {
                let dbus = zbus::fdo::DBusProxy::new(&link.conn)
                    .await
                    .map_err(map_err)?;
                for member in ["PropertiesChanged", "UnitRemoved", "Reloading"] {
                    let rule = zbus::MatchRule::builder()
                        .msg_type(zbus::message::Type::Signal)
                        .sender(SYSTEMD_NAME)
                        .and_then(|b| b.member(member))
                        .map_err(map_err)?
                        .build();
                    dbus.add_match_rule(rule)
                        .await
                        .map_err(|e| map_err(e.into()))?;
                }
                // systemd joining the bus anew (see `UnitEvent::ManagerRestarted`).
                let rule = zbus::MatchRule::builder()
                    .msg_type(zbus::message::Type::Signal)
                    .sender("org.freedesktop.DBus")
                    .and_then(|b| b.member("NameOwnerChanged"))
                    .and_then(|b| b.add_arg(SYSTEMD_NAME))
                    .map_err(map_err)?
                    .build();
                dbus.add_match_rule(rule)
                    .await
                    .map_err(|e| map_err(e.into()))?;
                link.manager.subscribe().await.map_err(map_err)
            })
            .await?;
        Ok(stream)
    }

    /// Subscribes to unit change signals and yields the object path of each
    /// unit whose properties changed, for paths under `prefixes`.
    pub async fn watch(
        &self,
        prefixes: Vec<String>,
    ) -> Result<impl Stream<Item = String> + use<>, SystemdError> {
        let events = self.unit_events(prefixes, Vec::new()).await?;
        Ok(events.filter_map(|ev| {
            std::future::ready(match ev {
                UnitEvent::Changed { path, .. } => Some(path),
                _ => None,
            })
        }))
    }
}
