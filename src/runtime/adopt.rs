//! Adoption: what an agent finds when it starts (its state directory and
//! systemd's units) becomes its picture of the world, units nobody owns
//! are stopped, and desired pod sets are taken in. Nothing running is
//! restarted by this.

use super::*;

impl Runtime {
    /// Loads admitted pods, reads their units, and stops units that belong to no pod.
    pub(super) async fn adopt(&self) -> Result<usize, crate::systemd::SystemdError> {
        let s = &self.shared;
        let (records, errors) = s.state.load_pods();
        for e in errors {
            // `pods/<uid>/pod.json`: whatever runs for that pod is left
            // alone (a damaged file must not stop a running service).
            let uid = e
                .path
                .parent()
                .filter(|_| e.path.file_name() == Some("pod.json".as_ref()))
                .and_then(|d| d.file_name())
                .map(|u| u.to_string_lossy().into_owned());
            match uid {
                Some(uid) => {
                    warn!(file = %e.path.display(), error = %e, uid, "pod record unreadable: its units are left running, and the pod is recorded anew when its manifest or the API server names it again; otherwise remove the pod's units and directory by hand");
                    s.unreadable
                        .lock()
                        .unwrap()
                        .insert(names::uid_tag(&uid), (uid, e.path.clone()));
                }
                None => warn!(error = %e, "skipping unreadable pod state"),
            }
        }
        let count = records.len();
        for rec in records {
            let containers = s.state.load_containers(rec.uid());
            self.register(rec, containers);
        }
        self.remove_orphan_dirs();
        let listing = s.sd.list(&names::UNIT_PATTERNS).await?;
        {
            let inner = s.inner.lock().unwrap();
            for row in listing.iter().filter(|r| inner.owner.contains_key(&r.name)) {
                s.units_q.add(&row.name);
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
        self.stop_orphans(&listing);
        Ok(count)
    }

    pub(super) fn register(&self, rec: PodRecord, containers: crate::core::observe::Records) {
        let plan = Arc::new(translate(&rec.pod, &self.shared.cfg.node, &lookup_user));
        let uid = rec.uid().to_string();
        let mut inner = self.shared.inner.lock().unwrap();
        inner.by_key.insert(pod_key(&rec.pod), uid.clone());
        for unit in plan.unit_names() {
            inner.owner.insert(unit.to_string(), uid.clone());
        }
        inner.pods.insert(
            uid,
            Box::new(PodEntry {
                rec,
                plan,
                containers,
                terminating: false,
                finals: HashMap::new(),
                memo: Memo::default(),
                last_summary: String::new(),
                last_reported: None,
                ended: false,
                applied: None,
            }),
        );
    }

    pub(super) fn set_desired(&self, set: Vec<Arc<StaticPod>>) {
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
                                || o.terminal != p.terminal
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
}
