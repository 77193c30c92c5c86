//! A recording stand-in for systemd, for tests of the runtime that need
//! neither root nor a booted systemd: every call is recorded with its
//! properties, units move through systemd's states for a `Type=exec`,
//! `RemainAfterExit=yes` service (what translation makes), and the test
//! plays the container's side (a process exits, refuses to stop) with
//! [`FakeUnits::exit`] and friends. Changes reach the runtime as the same
//! `PropertiesChanged`/`UnitRemoved` signals systemd sends, so the runtime
//! takes its production path.

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use unitlet::core::observe::{ActiveState, UnitSnapshot};
use unitlet::core::unit::{Property, UnitSpec};
use unitlet::systemd::{ExecContext, SystemdError, UnitEvent, UnitListing, Units};

/// One call the runtime made.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `StartTransientUnit` with these properties.
    StartTransient {
        /// Unit name.
        unit: String,
        /// Its properties, as sent.
        properties: Vec<Property>,
    },
    /// `SetUnitProperties` (runtime) with these properties.
    SetProperties {
        /// Unit name.
        unit: String,
        /// The properties, as sent.
        properties: Vec<Property>,
    },
    /// `StopUnit`.
    Stop(String),
    /// `ResetFailedUnit`.
    ResetFailed(String),
    /// `KillUnit` of every process with a signal.
    KillAll(String, i32),
    /// `AttachProcessesToUnit`.
    Attach(String, u32),
}

/// How a unit's main process answers SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStop {
    /// It dies of the signal at once (the default).
    #[default]
    Dies,
    /// It ignores it: the unit stays `deactivating` until SIGKILL.
    Ignores,
}

#[derive(Default)]
struct State {
    units: BTreeMap<String, UnitSnapshot>,
    /// The slice each unit was started in.
    slices: BTreeMap<String, String>,
    on_stop: BTreeMap<String, OnStop>,
    calls: Vec<Call>,
    /// When each call was made (µs since the epoch), beside `calls`.
    times: Vec<u64>,
    serial: u32,
    subscribers: Vec<tokio::sync::mpsc::UnboundedSender<UnitEvent>>,
    next_pid: u32,
    next_invocation: u64,
    /// Unit names refused by the next `start_transient` with this message.
    refuse: BTreeMap<String, String>,
}

/// The fake service manager.
#[derive(Default)]
pub struct FakeUnits {
    state: Mutex<State>,
}

fn now_us() -> u64 {
    unitlet::clock::now_us()
}

impl FakeUnits {
    /// A manager with no units.
    pub fn new() -> Arc<FakeUnits> {
        Arc::new(FakeUnits::default())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Every call so far with when it was made (µs since the epoch).
    pub fn timed_calls(&self) -> Vec<(u64, Call)> {
        let st = self.state.lock().unwrap();
        st.times
            .iter()
            .copied()
            .zip(st.calls.iter().cloned())
            .collect()
    }

    /// The units started so far, in order (one entry per start).
    pub fn started(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::StartTransient { unit, .. } => Some(unit),
                _ => None,
            })
            .collect()
    }

    /// A unit's current state, if loaded.
    pub fn unit(&self, name: &str) -> Option<UnitSnapshot> {
        self.state.lock().unwrap().units.get(name).cloned()
    }

    /// The loaded units' names.
    pub fn loaded(&self) -> Vec<String> {
        self.state.lock().unwrap().units.keys().cloned().collect()
    }

    /// Loads a unit as if an earlier agent had started it (adoption),
    /// running in `slice`, without recording a call.
    pub fn preload(&self, name: &str, slice: &str, snap: UnitSnapshot) {
        let mut st = self.state.lock().unwrap();
        st.slices.insert(name.into(), slice.into());
        st.units.insert(name.into(), snap);
    }

    /// The machine restarts: every unit and slice is gone (transient
    /// units live in /run), without a call or a signal.
    pub fn power_cut(&self) {
        let mut st = self.state.lock().unwrap();
        st.units.clear();
        st.slices.clear();
    }

    /// systemd re-executes (`daemon-reexec`): its units keep running, and
    /// it joins the bus anew, numbering its messages from 1 again.
    pub fn reexec(&self) {
        let mut st = self.state.lock().unwrap();
        st.serial = 0;
        st.subscribers
            .retain(|tx| tx.send(UnitEvent::ManagerRestarted).is_ok());
    }

    /// How `unit`'s process answers SIGTERM from now on.
    pub fn on_stop(&self, unit: &str, how: OnStop) {
        self.state.lock().unwrap().on_stop.insert(unit.into(), how);
    }

    /// The next start of `unit` fails with `message`.
    pub fn refuse_next_start(&self, unit: &str, message: &str) {
        self.state
            .lock()
            .unwrap()
            .refuse
            .insert(unit.into(), message.into());
    }

    /// `unit`'s main process exits with `code`: the unit stays loaded,
    /// `active (exited)` for 0 and `failed` otherwise, as systemd keeps a
    /// `RemainAfterExit=yes` service.
    pub fn exit(&self, unit: &str, code: i32) {
        let mut st = self.state.lock().unwrap();
        let Some(u) = st.units.get_mut(unit) else {
            return;
        };
        if u.main_pid == 0 {
            return;
        }
        ended(u, 1, code, false);
        let snap = u.clone();
        st.send(unit, &snap);
    }

    /// The pods' slices' units still running (`active (running)`).
    pub fn running(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.units
            .iter()
            .filter(|(_, u)| u.active_state == ActiveState::Active && u.sub_state == "running")
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The main process ended: `code` 1 exited with `status`, 2 killed by it;
/// `stopping`: because the unit is being stopped.
fn ended(u: &mut UnitSnapshot, code: i32, status: i32, stopping: bool) {
    u.main_pid = 0;
    u.exec_main_code = code;
    u.exec_main_status = status;
    u.exec_main_exit_us = now_us();
    if code == 1 && status == 0 {
        u.active_state = "active".into();
        u.sub_state = "exited".into();
        u.result = "success".into();
    } else if code == 2 && matches!(status, 1 | 2 | 13 | 15) {
        // A clean signal counts as success: a stopped service is dead, one
        // that was only signalled stays `active (exited)` (RemainAfterExit).
        (u.active_state, u.sub_state) = if stopping {
            ("inactive".into(), "dead".into())
        } else {
            ("active".into(), "exited".into())
        };
        u.result = "success".into();
    } else {
        u.active_state = "failed".into();
        u.sub_state = "failed".into();
        u.result = if code == 1 { "exit-code" } else { "signal" }.into();
    }
}

impl State {
    fn record(&mut self, call: Call) {
        self.calls.push(call);
        self.times.push(now_us());
    }

    fn next_serial(&mut self) -> u32 {
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    /// Tells subscribers about `unit`'s new state: the type-specific
    /// interface first, then the Unit interface, as systemd does.
    fn send(&mut self, unit: &str, snap: &UnitSnapshot) {
        let path = unitlet::core::names::unit_object_path(unit);
        for unit_interface in [false, true] {
            let serial = self.next_serial();
            let ev = UnitEvent::Changed {
                path: path.clone(),
                serial,
                unit_interface,
                props: unitlet::systemd::changes_of(snap),
            };
            self.subscribers.retain(|tx| tx.send(ev.clone()).is_ok());
        }
    }

    fn unload(&mut self, unit: &str) {
        self.units.remove(unit);
        let ev = UnitEvent::Unloaded { name: unit.into() };
        self.subscribers.retain(|tx| tx.send(ev.clone()).is_ok());
    }

    /// SIGTERM to `unit`: a process that dies leaves the unit stopped
    /// (and a transient unit stopped cleanly is unloaded).
    fn stop_one(&mut self, unit: &str) {
        let how = self.on_stop.get(unit).copied().unwrap_or_default();
        let Some(u) = self.units.get_mut(unit) else {
            return;
        };
        if u.main_pid != 0 {
            if how == OnStop::Ignores {
                u.active_state = "deactivating".into();
                u.sub_state = "stop-sigterm".into();
                let snap = u.clone();
                return self.send(unit, &snap);
            }
            ended(u, 2, 15, true);
        } else if u.active_state == ActiveState::Active {
            u.active_state = "inactive".into();
            u.sub_state = "dead".into();
        }
        let snap = u.clone();
        self.send(unit, &snap);
        if snap.active_state == ActiveState::Inactive {
            self.unload(unit);
        }
    }
}

fn path_match(pattern: &str, name: &str) -> bool {
    // Glob with `*` and `?`, as ListUnitsByPatterns takes.
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

impl Units for FakeUnits {
    fn start_transient<'a>(
        &'a self,
        spec: &'a UnitSpec,
    ) -> BoxFuture<'a, Result<(), SystemdError>> {
        let mut st = self.state.lock().unwrap();
        st.record(Call::StartTransient {
            unit: spec.name.clone(),
            properties: spec.properties.clone(),
        });
        let result = if let Some(message) = st.refuse.remove(&spec.name) {
            Err(SystemdError::Refused {
                op: "create",
                unit: spec.name.clone(),
                message,
                exists: false,
            })
        } else if st.units.contains_key(&spec.name) {
            Err(SystemdError::Refused {
                op: "create",
                unit: spec.name.clone(),
                message: format!(
                    "Unit {} was already loaded or has a fragment file.",
                    spec.name
                ),
                exists: true,
            })
        } else {
            st.next_pid += 1;
            st.next_invocation += 1;
            let slice = spec
                .properties
                .iter()
                .find_map(|p| match p {
                    Property::Slice(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            st.slices.insert(spec.name.clone(), slice);
            let pid = 1000 + st.next_pid;
            let snap = UnitSnapshot {
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                result: "success".into(),
                invocation_id: format!("{:032x}", st.next_invocation),
                main_pid: pid,
                exec_main_pid: pid,
                exec_main_start_us: now_us(),
                ..Default::default()
            };
            st.units.insert(spec.name.clone(), snap.clone());
            st.send(&spec.name, &snap);
            Ok(())
        };
        std::future::ready(result).boxed()
    }

    fn set_properties<'a>(
        &'a self,
        unit: &'a str,
        properties: &'a [Property],
    ) -> BoxFuture<'a, Result<(), SystemdError>> {
        let mut st = self.state.lock().unwrap();
        st.record(Call::SetProperties {
            unit: unit.into(),
            properties: properties.to_vec(),
        });
        let result = if st.units.contains_key(unit) || unit.ends_with(".slice") {
            Ok(())
        } else {
            Err(SystemdError::Refused {
                op: "set properties of",
                unit: unit.into(),
                message: format!("Unit {unit} not loaded."),
                exists: false,
            })
        };
        std::future::ready(result).boxed()
    }

    fn stop<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), SystemdError>> {
        let mut st = self.state.lock().unwrap();
        st.record(Call::Stop(unit.into()));
        let targets: Vec<String> = if unit.ends_with(".slice") {
            st.slices
                .iter()
                .filter(|(u, s)| *s == unit && st.units.contains_key(*u))
                .map(|(u, _)| u.clone())
                .collect()
        } else {
            vec![unit.to_string()]
        };
        for t in targets {
            st.stop_one(&t);
        }
        std::future::ready(Ok(())).boxed()
    }

    fn reset_failed<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), SystemdError>> {
        let mut st = self.state.lock().unwrap();
        st.record(Call::ResetFailed(unit.into()));
        if st
            .units
            .get(unit)
            .is_some_and(|u| matches!(u.active_state, ActiveState::Failed | ActiveState::Inactive))
        {
            st.unload(unit);
        }
        std::future::ready(Ok(())).boxed()
    }

    fn kill_all<'a>(
        &'a self,
        unit: &'a str,
        signal: i32,
    ) -> BoxFuture<'a, Result<(), SystemdError>> {
        let mut st = self.state.lock().unwrap();
        st.record(Call::KillAll(unit.into(), signal));
        let ignores = st.on_stop.get(unit).copied().unwrap_or_default() == OnStop::Ignores;
        if signal == 9 || (signal == 15 && !ignores) {
            if let Some(u) = st.units.get_mut(unit) {
                if u.main_pid != 0 {
                    let stopping = u.active_state == ActiveState::Deactivating;
                    ended(u, 2, signal, stopping);
                    let snap = u.clone();
                    st.send(unit, &snap);
                    if snap.active_state == ActiveState::Inactive {
                        st.unload(unit);
                    }
                }
            }
        }
        std::future::ready(Ok(())).boxed()
    }

    fn attach<'a>(&'a self, unit: &'a str, pid: u32) -> BoxFuture<'a, Result<(), SystemdError>> {
        let mut st = self.state.lock().unwrap();
        st.record(Call::Attach(unit.into(), pid));
        std::future::ready(Ok(())).boxed()
    }

    fn exec_context<'a>(
        &'a self,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<ExecContext, SystemdError>> {
        let st = self.state.lock().unwrap();
        let ctx = ExecContext {
            main_pid: st.units.get(unit).map_or(0, |u| u.main_pid),
            ..Default::default()
        };
        std::future::ready(Ok(ctx)).boxed()
    }

    fn list<'a>(
        &'a self,
        patterns: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<UnitListing>, SystemdError>> {
        let st = self.state.lock().unwrap();
        let rows = st
            .units
            .iter()
            .filter(|(n, _)| patterns.iter().any(|p| path_match(p, n)))
            .map(|(n, u)| UnitListing {
                name: n.clone(),
                load_state: u.load_state.clone(),
                active_state: u.active_state,
                sub_state: u.sub_state.clone(),
                job_id: u.job_id,
            })
            .collect();
        std::future::ready(Ok(rows)).boxed()
    }

    fn snapshot_serial<'a>(
        &'a self,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<(u32, Option<UnitSnapshot>), SystemdError>> {
        let mut st = self.state.lock().unwrap();
        let serial = st.next_serial();
        let snap = st.units.get(unit).cloned();
        std::future::ready(Ok((serial, snap))).boxed()
    }

    fn unit_events(
        &self,
        _prefixes: Vec<String>,
        _name_prefixes: Vec<String>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, UnitEvent>, SystemdError>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.state.lock().unwrap().subscribers.push(tx);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
            );
        std::future::ready(Ok(stream.boxed())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_systemd_lists() {
        assert!(path_match(
            "unitlet_*.service",
            "unitlet_default_a_c_1.service"
        ));
        assert!(path_match("unitlet-?-pod*.slice", "unitlet-8-podabc.slice"));
        assert!(!path_match(
            "unitlet-?-pod*.slice",
            "unitlet-18-podabc.slice"
        ));
        assert!(!path_match("unitlet_*.service", "other.service"));
    }
}
