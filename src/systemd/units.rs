//! The seam between the agent and systemd: every operation the runtime,
//! probes, volumes and the kubelet API need, as a trait object, so the
//! reconciler can be driven by a recording fake in tests that need neither
//! root nor a booted systemd (as youki's `Syscall` trait is), while
//! [`super::Systemd`] carries the same calls over D-Bus.
//!
//! Methods return boxed futures and streams so the trait stays
//! object-safe: the runtime holds an `Arc<dyn Units>` and never learns
//! which one it has.

use super::{ExecContext, SystemdError, UnitEvent, UnitListing};
use crate::core::observe::UnitSnapshot;
use crate::core::unit::{Property, UnitSpec};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};

/// What the agent asks of a service manager.
pub trait Units: Send + Sync + 'static {
    /// Creates and starts a transient unit from typed properties.
    fn start_transient<'a>(&'a self, spec: &'a UnitSpec)
        -> BoxFuture<'a, Result<(), SystemdError>>;
    /// Changes properties of a loaded unit in place (`SetUnitProperties`,
    /// runtime only): CPU and memory of a running container, no restart.
    fn set_properties<'a>(
        &'a self,
        unit: &'a str,
        properties: &'a [Property],
    ) -> BoxFuture<'a, Result<(), SystemdError>>;
    /// Stops a unit (a slice: everything in it), honouring its stop timeout.
    fn stop<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), SystemdError>>;
    /// Clears a failed state so the unit can be unloaded.
    fn reset_failed<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), SystemdError>>;
    /// Sends `signal` to every process of a unit.
    fn kill_all<'a>(
        &'a self,
        unit: &'a str,
        signal: i32,
    ) -> BoxFuture<'a, Result<(), SystemdError>>;
    /// Moves a process into the unit's control group.
    fn attach<'a>(&'a self, unit: &'a str, pid: u32) -> BoxFuture<'a, Result<(), SystemdError>>;
    /// The execution settings a command "in the container" takes over.
    fn exec_context<'a>(
        &'a self,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<ExecContext, SystemdError>>;
    /// Loaded units matching glob patterns, in one call.
    fn list<'a>(
        &'a self,
        patterns: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<UnitListing>, SystemdError>>;
    /// A unit's state (`None`: not loaded) with the serial that orders the
    /// answer among the signals (see [`UnitEvent`]).
    fn snapshot_serial<'a>(
        &'a self,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<(u32, Option<UnitSnapshot>), SystemdError>>;
    /// Like [`Units::snapshot_serial`], but a unit that is not loaded stays
    /// unloaded: reading a unit's object makes systemd load it (as not
    /// found), collect it again and announce that, so a read answering an
    /// unload would start a loop of them.
    fn snapshot_if_loaded<'a>(
        &'a self,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<(u32, Option<UnitSnapshot>), SystemdError>> {
        self.snapshot_serial(unit)
    }
    /// The unit signals, in the order they were sent: property changes of
    /// units whose object paths start with one of `prefixes`, and unloads
    /// of units whose names start with one of `name_prefixes`.
    fn unit_events(
        &self,
        prefixes: Vec<String>,
        name_prefixes: Vec<String>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, UnitEvent>, SystemdError>>;

    /// A unit's state; `None` when it is not loaded.
    fn snapshot<'a>(
        &'a self,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<UnitSnapshot>, SystemdError>> {
        async move { Ok(self.snapshot_serial(unit).await?.1) }.boxed()
    }

    /// The object paths of units under `prefixes` whose properties change.
    fn watch(
        &self,
        prefixes: Vec<String>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, String>, SystemdError>> {
        async move {
            let events = self.unit_events(prefixes, Vec::new()).await?;
            Ok(events
                .filter_map(|ev| {
                    std::future::ready(match ev {
                        UnitEvent::Changed { path, .. } => Some(path),
                        _ => None,
                    })
                })
                .boxed())
        }
        .boxed()
    }
}

impl Units for super::Systemd {
    fn start_transient<'a>(
        &'a self,
        spec: &'a UnitSpec,
    ) -> BoxFuture<'a, Result<(), SystemdError>> {
        super::Systemd::start_transient(self, spec).boxed()
    }
    fn set_properties<'a>(
        &'a self,
        unit: &'a str,
        properties: &'a [Property],
    ) -> BoxFuture<'a, Result<(), SystemdError>> {
        super::Systemd::set_properties(self, unit, properties).boxed()
    }
    fn stop<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), SystemdError>> {
        super::Systemd::stop(self, unit).boxed()
    }
    fn reset_failed<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), SystemdError>> {
        super::Systemd::reset_failed(self, unit).boxed()
    }
    fn kill_all<'a>(
        &'a self,
        unit: &'a str,
        signal: i32,
    ) -> BoxFuture<'a, Result<(), SystemdError>> {
        super::Systemd::kill_all(self, unit, signal).boxed()
    }
    fn attach<'a>(&'a self, unit: &'a str, pid: u32) -> BoxFuture<'a, Result<(), SystemdError>> {
        super::Systemd::attach(self, unit, pid).boxed()
    }
    fn exec_context<'a>(
        &'a self,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<ExecContext, SystemdError>> {
        super::Systemd::exec_context(self, unit).boxed()
    }
    fn list<'a>(
        &'a self,
        patterns: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<UnitListing>, SystemdError>> {
        super::Systemd::list(self, patterns).boxed()
    }
    fn snapshot_serial<'a>(
        &'a self,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<(u32, Option<UnitSnapshot>), SystemdError>> {
        super::Systemd::snapshot_serial(self, unit).boxed()
    }
    fn snapshot_if_loaded<'a>(
        &'a self,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<(u32, Option<UnitSnapshot>), SystemdError>> {
        super::Systemd::snapshot_if_loaded(self, unit).boxed()
    }
    fn unit_events(
        &self,
        prefixes: Vec<String>,
        name_prefixes: Vec<String>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, UnitEvent>, SystemdError>> {
        async move {
            let s = super::Systemd::unit_events(self, prefixes, name_prefixes).await?;
            Ok(s.boxed())
        }
        .boxed()
    }
}
