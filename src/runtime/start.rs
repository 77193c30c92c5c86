//! Starting and restarting containers: a pod's pass decides for each
//! container ([`crate::core::decide`]) and this executes the decision —
//! preparing the unit (env files, looked-up objects, volumes), taking a
//! place in the start window, creating or replacing the transient unit.

use super::*;

/// What a container's unit is, when it is about to be created.
pub(super) enum Prepared<'a> {
    /// This unit, with the `envFrom` messages of skipped keys.
    Ready(Cow<'a, UnitSpec>, Vec<String>),
    /// Some object is not known yet.
    Pending,
    /// `CreateContainerConfigError` with this message.
    Failed(String),
}

/// Writes a container's environment file: root-only, on tmpfs, replaced
/// atomically so systemd never reads half a file.
pub(super) fn write_env_file(f: &EnvFile) -> std::io::Result<()> {
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

/// Delay before creating a unit again after systemd refused it.
pub(super) const CREATE_RETRY_US: u64 = 10_000_000;

/// Delay before looking again for a ConfigMap or Secret not known yet (its
/// watch has not listed it); a change of any watched object wakes waiting
/// pods sooner.
pub(super) const ENV_PENDING_RETRY_US: u64 = 1_000_000;

impl Runtime {
    /// Starts what should run, restarts what may restart, and reports status.
    pub(super) async fn drive(&self, uid: &str) {
        let s = &self.shared;
        let exceeded = self.deadline_exceeded(uid);
        let (plan, policy, mut records, units, mut memo, pod, live, ended_before) = {
            let mut inner = s.inner.lock().unwrap();
            let Some(e) = inner.pods.get_mut(uid) else {
                return;
            };
            if e.terminating {
                return;
            }
            if e.rec.stopping.take().is_some() {
                // An earlier agent's termination of a pod wanted again (its
                // manifest came back): a later one starts afresh.
                if let Err(err) = s.state.save_pod(&e.rec) {
                    warn!(uid, error = %err, "cannot record that the pod is no longer stopping");
                }
            }
            let e = &inner.pods[uid];
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
                e.rec.live.clone(),
                e.ended,
            )
        };
        // Past its deadline, nothing (re)starts: the pod is Failed. An
        // ended pod starts nothing either, and its volumes may be gone.
        let volumes_ready = !exceeded
            && !ended_before
            && match &pod {
                Some(pod) => self.sync_volumes(uid, pod, &plan, &mut memo),
                None => true,
            }
            && self.sync_slice(uid, &plan, &live).await;
        let now = now_us();
        let mut pass = Pass {
            apps_done: !plan.containers.is_empty()
                && plan.containers.iter().all(|c| {
                    match instance_of(units.get(&c.unit), records.get(&c.name).map(|r| &**r)) {
                        Instance::Terminated(t, inv) => {
                            records
                                .get(&c.name)
                                .is_none_or(|r| r.restart_of.as_deref() != Some(inv.as_str()))
                                && !observe::should_restart(&policy, t.exit_code)
                        }
                        _ => false,
                    }
                }),
            pod_restarts: decide::pod_restarts(
                &policy,
                plan.containers
                    .iter()
                    .map(|c| records.get(&c.name).map(|r| &**r)),
            ),
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
            // Ephemeral containers run once the pod has started, never again.
            for c in plan.containers.iter().chain(&plan.ephemeral) {
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
        let status = update::pod_status(e, &s.cfg.node, &units, now_us());
        if status.phase.as_deref() == Some("Running") {
            crate::metrics::pod_running(uid, e.rec.admitted_us, s.started_us, now_us());
        }
        let ended = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        if ended && !e.ended {
            e.ended = true;
            // What it held is free: pending resizes may fit now.
            update::retry_pending_resizes(&inner, s);
        }
        let Some(e) = inner.pods.get_mut(uid) else {
            return;
        };
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
        let summary = crate::podview::summary(&status);
        if summary != e.last_summary {
            info!(
                pod = pod_key(&e.rec.pod),
                phase = status.phase.as_deref().unwrap_or(""),
                status = summary,
                "pod status"
            );
            e.last_summary = summary;
        }
        // What an ended pod held goes: in cluster mode once the API server
        // shows the terminal phase written (see `gc`).
        let api_terminal = inner
            .desired
            .as_ref()
            .and_then(|d| d.get(uid))
            .is_some_and(|d| d.terminal);
        drop(inner);
        if ended && (s.cfg.reports.is_none() || api_terminal) {
            self.collect_ended(uid, api_terminal);
        }
    }

    /// Prepares the pod's volumes and refreshes their files; whether its
    /// containers may start. A failure is reported once per message as a
    /// `FailedMount` event, and the pod is tried again.
    pub(super) fn sync_volumes(
        &self,
        uid: &str,
        pod: &Pod,
        plan: &PodPlan,
        memo: &mut Memo,
    ) -> bool {
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

    /// Advances one container: decides ([`decide`]) and carries the
    /// decision out; returns where the container stands.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn step(
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
        let list = if c.ephemeral {
            "ephemeralContainers"
        } else if init {
            "initContainers"
        } else {
            "containers"
        };
        let field_path = format!("spec.{list}{{{}}}", c.name);
        // An ephemeral container is never restarted.
        let policy = if c.ephemeral { "Never" } else { policy };
        if c.spec.is_ok() {
            // Probes and postStart follow the instance in tasks of their own.
            let inst = instance_of(unit, Some(rec));
            self.sync_probes(uid, c, &inst, rec, pass);
            self.post_start(uid, c, &inst, memo);
        }
        let cx = decide::Context {
            init,
            policy,
            apps_done: pass.apps_done,
            now_us: now,
            agent_started_us: s.started_us,
            backoff: &s.cfg.backoff,
            restart_issued: &memo.restart_issued,
            leftovers_killed: &memo.leftovers_killed,
            boot_id: &s.cfg.boot_id,
            pod_restarts: pass.pod_restarts,
        };
        let d = decide::decide(c, rec, unit, &cx);
        if d.changed {
            pass.changed.insert(c.name.clone());
        }
        *rec = d.record;
        for action in d.actions {
            self.execute(uid, c, &field_path, action, rec, memo, pass)
                .await;
        }
        d.step
    }

    /// Carries out one decided action for container `c`; what happens is
    /// fed back through the record, the memo and the pass (and systemd's
    /// signals, which bring the pod back).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn execute(
        &self,
        uid: &str,
        c: &ContainerPlan,
        field_path: &str,
        action: decide::Action,
        rec: &mut ContainerRecord,
        memo: &mut Memo,
        pass: &mut Pass,
    ) {
        use decide::Action;
        let s = &self.shared;
        let event =
            |pass: &mut Pass, memo: &mut Memo, key: String, warning, reason, message: String| {
                if s.cfg.reports.is_some() && memo.evented.insert(format!("{}:{key}", c.name)) {
                    pass.events.push(ContainerEvent {
                        field_path: field_path.to_string(),
                        warning,
                        reason,
                        message,
                    });
                }
            };
        // The kubelet's words when a container's definition changed.
        let killing = |pass: &mut Pass, memo: &mut Memo, invocation: &str| {
            event(
                pass,
                memo,
                format!("changed:{invocation}"),
                false,
                "Killing",
                format!("Container {} definition changed, will be restarted", c.name),
            )
        };
        match action {
            Action::Event {
                key,
                warning,
                reason,
                message,
            } => event(pass, memo, key, warning, reason, message),
            Action::BackOff {
                invocation,
                delay_us,
                exit_code,
            } => {
                event(
                    pass,
                    memo,
                    format!("backoff:{invocation}"),
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
                    delay_ms = delay_us / 1000,
                    exit_code,
                    "back-off restarting failed container"
                );
            }
            Action::WakeAt(at_us) => self.schedule(uid, at_us),
            Action::Stop { invocation } => {
                if memo.restart_issued.insert(invocation.clone()) {
                    if let Err(e) = s.sd.stop(&c.unit).await {
                        warn!(uid, container = c.name, error = %e, "cannot stop the container");
                        memo.restart_issued.remove(&invocation);
                    }
                }
            }
            Action::KillLeftovers { invocation } => {
                if memo.leftovers_killed.insert(invocation) {
                    let _ = s.sd.kill_all(&c.unit, 9).await;
                }
            }
            Action::Create { restart_of } => {
                let Ok(spec) = &c.spec else { return };
                // The plan's digest, not the prepared unit's: env looked up
                // from objects must not read as a changed definition.
                let digest = c.digest.clone();
                let Some((spec, skipped)) =
                    self.prepare_or_wait(uid, c, spec, field_path, rec, memo, pass)
                else {
                    return;
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
                    return;
                };
                if let Some(old) = &restart_of {
                    memo.restart_issued.insert(old.clone());
                }
                crate::metrics::container_started(field_path);
                match self.create(&spec, place).await {
                    Ok(()) => {
                        if rec.create_error.take().is_some() {
                            pass.changed.insert(c.name.clone());
                        }
                        if let Some(id) = pass.image_ids.remove(&c.name) {
                            rec.image_id = Some(id);
                            pass.changed.insert(c.name.clone());
                        }
                        if rec.unit_digest.as_deref() != Some(digest.as_str())
                            || rec.actuated.as_ref() != Some(&c.resources)
                        {
                            rec.unit_digest = Some(digest);
                            rec.actuated = Some(c.resources.clone());
                            pass.changed.insert(c.name.clone());
                        }
                        let attempt = rec.restart_count + u32::from(restart_of.is_some());
                        if c.pull.is_none() {
                            event(
                                pass,
                                memo,
                                format!("pulled:{attempt}"),
                                false,
                                "Pulled",
                                format!("Container image {:?} already present on machine", c.image),
                            );
                        }
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
                        crate::metrics::container_start_failed(field_path, &e);
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
            }
            Action::Replace { invocation } => {
                // The pod's definition of the container changed (a new
                // image): the kubelet kills the container and starts it
                // anew, counted as a restart.
                let Ok(spec) = &c.spec else { return };
                // The plan's digest, not the prepared unit's: env looked up
                // from objects must not read as a changed definition.
                let digest = c.digest.clone();
                let Some((spec, _)) =
                    self.prepare_or_wait(uid, c, spec, field_path, rec, memo, pass)
                else {
                    // The new image is not here yet: as the kubelet, the
                    // old container goes now and the new one starts once
                    // its image is pulled (created anew, not restarted).
                    if pass.image_wait.contains(&c.name)
                        && memo.restart_issued.insert(invocation.clone())
                    {
                        killing(pass, memo, &invocation);
                        if let Err(e) = s.sd.stop(&c.unit).await {
                            warn!(uid, container = c.name, error = %e, "cannot stop the container");
                            memo.restart_issued.remove(&invocation);
                        }
                    }
                    return;
                };
                let Some(place) = self.take_place(uid) else {
                    return;
                };
                killing(pass, memo, &invocation);
                memo.restart_issued.insert(invocation.clone());
                rec.restart_of = Some(invocation.clone());
                rec.restarting = None;
                if let Some(id) = pass.image_ids.remove(&c.name) {
                    rec.image_id = Some(id);
                }
                rec.unit_digest = Some(digest);
                rec.actuated = Some(c.resources.clone());
                rec.resize_error = None;
                pass.changed.insert(c.name.clone());
                if let Err(e) = s.state.save_container(uid, &c.name, rec) {
                    warn!(error = %e, "cannot save container record");
                }
                info!(
                    uid,
                    container = c.name,
                    "container definition changed; restarting it"
                );
                crate::metrics::container_started(field_path);
                if let Err(e) = self.recreate(&spec, true, place).await {
                    crate::metrics::container_start_failed(field_path, &e);
                    warn!(uid, container = c.name, error = %e, "restart failed; will retry");
                    memo.restart_issued.remove(&invocation);
                    self.schedule(uid, now_us() + 1_000_000);
                }
            }
            Action::Resize { invocation } => {
                // In place: systemd changes the cgroup limits of the running
                // unit; its processes never notice.
                let props = c.resources.live_properties();
                match s.sd.set_properties(&c.unit, &props).await {
                    Ok(()) => {
                        info!(uid, container = c.name, invocation, "resized in place");
                        rec.actuated = Some(c.resources.clone());
                        rec.resize_error = None;
                        pass.changed.insert(c.name.clone());
                        // The pod's status changes with it (no unit signal comes).
                        s.pods_q.add(uid);
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if rec.resize_error.as_deref() != Some(msg.as_str()) {
                            warn!(
                                uid,
                                container = c.name,
                                error = msg,
                                "cannot resize the container; retrying"
                            );
                            rec.resize_error = Some(msg);
                            pass.changed.insert(c.name.clone());
                        }
                        self.schedule(uid, now_us() + CREATE_RETRY_US);
                    }
                }
            }
            Action::Restart {
                invocation,
                finished_us,
                stop_first,
            } => {
                let Ok(spec) = &c.spec else { return };
                // The plan's digest, not the prepared unit's: env looked up
                // from objects must not read as a changed definition.
                let digest = c.digest.clone();
                let Some((spec, _)) =
                    self.prepare_or_wait(uid, c, spec, field_path, rec, memo, pass)
                else {
                    return;
                };
                let Some(place) = self.take_place(uid) else {
                    return;
                };
                memo.restart_issued.insert(invocation.clone());
                rec.backoff
                    .record_restart(&s.cfg.backoff, finished_us, now_us());
                if let Some(id) = pass.image_ids.remove(&c.name) {
                    rec.image_id = Some(id);
                }
                rec.unit_digest = Some(digest);
                rec.actuated = Some(c.resources.clone());
                rec.resize_error = None;
                pass.changed.insert(c.name.clone());
                // Persist before acting, so a crash here never double-counts.
                if let Err(e) = s.state.save_container(uid, &c.name, rec) {
                    warn!(error = %e, "cannot save container record");
                }
                crate::metrics::container_started(field_path);
                if let Err(e) = self.recreate(&spec, stop_first, place).await {
                    crate::metrics::container_start_failed(field_path, &e);
                    warn!(uid, container = c.name, error = %e, "restart failed; will retry");
                    memo.restart_issued.remove(&invocation);
                    self.schedule(uid, now_us() + 1_000_000);
                }
            }
        }
    }

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
    pub(super) fn take_place(&self, uid: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
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
    pub(super) async fn create(
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
    pub(super) fn prepare<'a>(
        &self,
        uid: &str,
        c: &ContainerPlan,
        spec: &'a UnitSpec,
        pulled: Option<&crate::core::image::Pulled>,
    ) -> Prepared<'a> {
        if let Err(msg) = self.shared.volumes.pin(&c.name, &c.mounts) {
            return Prepared::Failed(msg);
        }
        if c.refs.is_empty() && pulled.is_none() {
            return Prepared::Ready(Cow::Borrowed(spec), Vec::new());
        }
        let s = &self.shared;
        let pod = match s.inner.lock().unwrap().pods.get(uid) {
            Some(e) => e.rec.pod.clone(),
            None => return Prepared::Pending,
        };
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let resolved = if c.refs.is_empty() {
            Resolved::default()
        } else {
            let Some(source) = &s.cfg.objects else {
                return Prepared::Failed(
                    "ConfigMaps and Secrets in env need cluster mode (unitlet node)".into(),
                );
            };
            Resolved(
                c.refs
                    .iter()
                    .map(|r| (r.clone(), source.lookup(ns, r)))
                    .collect(),
            )
        };
        if resolved.pending(&c.refs) {
            return Prepared::Pending;
        }
        let Some(plan) =
            container_with(&pod, &s.cfg.node, &c.name, &lookup_user, &resolved, pulled)
        else {
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

    /// The container's image, pulled (see [`crate::images::manager`]), or
    /// `None` while it is being pulled or cannot be had: the record then
    /// says why (`ErrImagePull`, `ImagePullBackOff`, `ErrImageNeverPull`)
    /// and the kubelet's events are sent. The pod is synced again when a
    /// pull ends, or when a back-off is over.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn image_or_wait(
        &self,
        uid: &str,
        c: &ContainerPlan,
        r: &crate::core::image::ImageRef,
        field_path: &str,
        rec: &mut ContainerRecord,
        memo: &mut Memo,
        pass: &mut Pass,
    ) -> Option<Arc<crate::core::image::Pulled>> {
        use crate::images::manager::{Ensure, Policy};
        let s = &self.shared;
        let Some(images) = &s.cfg.images else {
            let w = crate::core::translate::Waiting {
                reason: crate::core::translate::WaitReason::ErrImagePull,
                message: format!(
                    "image {:?} needs the image store, which this agent runs without",
                    c.image
                ),
            };
            if rec.image_waiting.as_ref() != Some(&w) {
                rec.image_waiting = Some(w);
                pass.changed.insert(c.name.clone());
            }
            return None;
        };
        let now = now_us();
        let since = *memo.pull_since.entry(c.name.clone()).or_insert(now);
        let (policy, creds) = {
            let inner = s.inner.lock().unwrap();
            let pod = inner.pods.get(uid).map(|e| &e.rec.pod);
            let policy = pod.and_then(|p| p.spec.as_ref()).and_then(|spec| {
                spec.init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                    .find(|x| x.name == c.name)
                    .and_then(|x| x.image_pull_policy.clone())
                    .or_else(|| {
                        spec.ephemeral_containers
                            .iter()
                            .flatten()
                            .find(|x| x.name == c.name)
                            .and_then(|x| x.image_pull_policy.clone())
                    })
            });
            (
                Policy::of(policy.as_deref(), r),
                pod.map(|p| crate::images::puller::pod_credentials(s.cfg.objects.as_deref(), p))
                    .unwrap_or_default(),
            )
        };
        let key = |what: &str| format!("{what}:{since}");
        let mut event =
            |memo: &mut Memo, key: String, warning: bool, reason: &'static str, message: String| {
                if s.cfg.reports.is_some() && memo.evented.insert(format!("{}:{key}", c.name)) {
                    pass.events.push(ContainerEvent {
                        field_path: field_path.to_string(),
                        warning,
                        reason,
                        message,
                    });
                }
            };
        let out = match images.ensure(&c.image, r, policy, since, now, &creds) {
            Ensure::Ready { image, pulled } => {
                let message = match pulled {
                    Some((secs, bytes)) => format!(
                        "Successfully pulled image {:?} in {secs:.3}s ({:.3}s including waiting). Image size: {bytes} bytes.",
                        c.image,
                        now.saturating_sub(since) as f64 / 1e6
                    ),
                    None => format!("Container image {:?} already present on machine", c.image),
                };
                event(memo, key("pulled"), false, "Pulled", message);
                if rec.image_waiting.take().is_some() {
                    pass.changed.insert(c.name.clone());
                }
                // The status's imageID once a unit is made from it.
                pass.image_ids.insert(c.name.clone(), image.id.clone());
                Some(image)
            }
            Ensure::Pulling => {
                event(
                    memo,
                    key("pulling"),
                    false,
                    "Pulling",
                    format!("Pulling image {:?}", c.image),
                );
                None
            }
            Ensure::Waiting {
                waiting,
                retry_at_us,
            } => {
                use crate::core::translate::WaitReason;
                match waiting.reason {
                    WaitReason::ErrImagePull => {
                        event(
                            memo,
                            format!("failed:{}", waiting.message),
                            true,
                            "Failed",
                            format!("Failed to pull image {:?}: {}", c.image, waiting.message),
                        );
                        event(
                            memo,
                            format!("errpull:{}", waiting.message),
                            true,
                            "Failed",
                            "Error: ErrImagePull".into(),
                        );
                    }
                    WaitReason::ImagePullBackOff => {
                        event(
                            memo,
                            format!("backoff:{retry_at_us}"),
                            false,
                            "BackOff",
                            format!("Back-off pulling image {:?}", c.image),
                        );
                        event(
                            memo,
                            format!("errbackoff:{retry_at_us}"),
                            true,
                            "Failed",
                            "Error: ImagePullBackOff".into(),
                        );
                    }
                    _ => event(
                        memo,
                        key("never"),
                        true,
                        waiting.reason.as_str(),
                        waiting.message.clone(),
                    ),
                }
                if rec.image_waiting.as_ref() != Some(&waiting) {
                    rec.image_waiting = Some(waiting);
                    pass.changed.insert(c.name.clone());
                }
                if retry_at_us > 0 {
                    self.schedule(uid, retry_at_us);
                }
                None
            }
        };
        if out.is_some() {
            // The next start of this container asks again.
            memo.pull_since.remove(&c.name);
            images.used(&c.image, now);
        }
        out
    }

    /// [`Runtime::prepare`] and what its outcome means for the container's
    /// record: `None` when the unit cannot be made now (a config error is
    /// recorded, or the objects are still pending; either way the pod is
    /// tried again).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn prepare_or_wait<'a>(
        &self,
        uid: &str,
        c: &ContainerPlan,
        spec: &'a UnitSpec,
        field_path: &str,
        rec: &mut ContainerRecord,
        memo: &mut Memo,
        pass: &mut Pass,
    ) -> Option<(Cow<'a, UnitSpec>, Vec<String>)> {
        let pulled = match &c.pull {
            None => None,
            Some(r) => match self.image_or_wait(uid, c, r, field_path, rec, memo, pass) {
                Some(p) => Some(p),
                None => {
                    pass.image_wait.insert(c.name.clone());
                    return None;
                }
            },
        };
        match self.prepare(uid, c, spec, pulled.as_deref()) {
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
    pub(super) fn config_failed(
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

    pub(super) async fn recreate(
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
