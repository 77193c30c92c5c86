//! The objects, the resourceVersion counter, the change history that watches
//! read, and the write rules of the generic registry
//! (k8s.io/apiserver/pkg/registry/generic/registry/store.go and
//! pkg/registry/rest/{create,update,delete}.go): what a create sets, what an
//! update may change, when a delete only marks an object.
//!
//! Both the HTTP handlers and the handle's direct methods go through here,
//! so test setup bumps resourceVersions and wakes watches like any client.

use super::kinds::{by_plural, Kind};
use super::patch;
use super::select::Selector;
use super::status::{self, ApiError, FieldError};
use super::{kubelet, review};
use super::{Recorded, TokenRequestRecord};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;

/// How many changes watches can resume from (the watch cache's window).
pub const HISTORY: usize = 1000;

/// (plural, namespace or "", name)
pub type Key = (&'static str, String, String);

/// One write, as watches see it.
pub struct Change {
    pub rv: u64,
    pub plural: &'static str,
    /// The object after the change; None for a deletion.
    pub obj: Option<Value>,
    /// The object before the change; None for a creation.
    pub prev: Option<Value>,
}

/// Which part of an object a write is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// The object itself.
    Main,
    /// `/status`.
    Status,
    /// `/approval` (CertificateSigningRequests): the conditions only.
    Approval,
}

/// DeleteOptions, from the body and the `gracePeriodSeconds` parameter.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub grace: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub propagation: Option<String>,
    pub orphan: Option<bool>,
}

/// The parameters of a list.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub selector: Selector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub version_match: Option<String>,
}

pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    /// The last resourceVersion that fell out of `history` (open watches
    /// behind it cannot go on).
    dropped: u64,
    /// The oldest resourceVersion a new watch may start from.
    horizon: u64,
    /// The rest of paginated lists, by continue token: a continuation sees
    /// the list as it was, like a continuation read from etcd.
    pages: HashMap<String, (u64, Vec<Value>)>,
    pub available: bool,
    /// Moves on every outage and at shutdown; open watches end when it does.
    pub epoch: u64,
    /// (requests left to fail, HTTP code) for `fail_next`.
    pub fail: (usize, u16),
    pub requests: Vec<Recorded>,
    /// The key that signs service account tokens (HMAC-SHA256), made at start.
    pub token_key: [u8; 32],
    /// Every token issued, in order.
    pub token_requests: Vec<TokenRequestRecord>,
    /// Tokens a test registered, as `--token-auth-file` lines would.
    pub static_tokens: Vec<review::StaticToken>,
    /// The authorization policy besides `system:masters`, in order added.
    pub rules: Vec<review::Rule>,
    /// Every SubjectAccessReview answered, as answered.
    pub access_reviews: Vec<Value>,
    /// `--kubelet-preferred-address-types`.
    pub kubelet_address_types: Vec<String>,
    /// `--kubelet-certificate-authority` (PEM): verify kubelets' serving
    /// certificates against it; None: do not verify them.
    pub kubelet_ca: Option<String>,
    /// Let `nodes/<name>/proxy` reach nodes at loopback addresses, which the
    /// real server refuses.
    pub node_proxy_loopback: bool,
}

/// The namespaces a new cluster has.
const INITIAL_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-node-lease", "kube-public"];
/// Namespaces the NamespaceLifecycle admission plugin refuses to delete.
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

fn meta<'a>(obj: &'a Value, field: &str) -> Option<&'a Value> {
    obj.get("metadata")?.get(field).filter(|v| !v.is_null())
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    meta(obj, field).and_then(Value::as_str).unwrap_or("")
}

fn meta_set(obj: &mut Value, field: &str, value: Option<Value>) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let m = obj["metadata"].as_object_mut().unwrap();
    match value {
        Some(v) => m.insert(field.to_string(), v),
        None => m.remove(field),
    };
}

fn finalizers(obj: &Value) -> Vec<Value> {
    meta(obj, "finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// metav1.Time: RFC 3339 in seconds.
pub fn timestamp(t: jiff::Timestamp) -> Value {
    json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn parse_time(v: Option<&Value>) -> Option<jiff::Timestamp> {
    v?.as_str()?.parse().ok()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

/// A random (version 4) UUID, as the server gives every object.
pub fn uuid_v4() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// names.SimpleNameGenerator: the base (cut to 58) and five random characters.
fn generate_name(base: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let base: String = base.chars().take(58).collect();
    let suffix: String = random_bytes::<5>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    base + &suffix
}

fn key(kind: &Kind, ns: Option<&str>, name: &str) -> Key {
    let ns = if kind.namespaced {
        ns.expect("a namespaced kind needs a namespace")
    } else {
        ""
    };
    (kind.plural, ns.to_string(), name.to_string())
}

/// Lists carry their items without kind and apiVersion, as the real server does.
fn list_item(obj: &Value) -> Value {
    let mut item = obj.clone();
    if let Some(m) = item.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    item
}

/// Why a PUT or PATCH carries the object: a PUT's `metadata.uid` is a
/// precondition (409), a patched uid is just an invalid change (422).
#[derive(PartialEq)]
enum Verb {
    Put,
    Patch,
}

impl Store {
    pub fn new() -> Store {
        let mut store = Store {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            dropped: 0,
            horizon: 0,
            pages: HashMap::new(),
            available: true,
            epoch: 0,
            fail: (0, 0),
            requests: vec![],
            token_key: random_bytes::<32>(),
            token_requests: vec![],
            static_tokens: vec![],
            rules: vec![],
            access_reviews: vec![],
            kubelet_address_types: kubelet::DEFAULT_ADDRESS_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect(),
            kubelet_ca: None,
            node_proxy_loopback: false,
        };
        for ns in INITIAL_NAMESPACES {
            store
                .create(
                    by_plural("namespaces"),
                    None,
                    json!({ "metadata": { "name": ns } }),
                )
                .unwrap();
        }
        store
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.objects
            .get(&key(kind, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// Records a write and returns the stored object (for a deletion, the
    /// last state with the deletion's resourceVersion).
    fn commit(&mut self, kind: &'static Kind, key: &Key, new: Option<Value>) -> Value {
        self.rv += 1;
        let rv = Some(json!(self.rv.to_string()));
        let prev = self.objects.get(key).cloned();
        let (stored, after) = match new {
            Some(mut obj) => {
                meta_set(&mut obj, "resourceVersion", rv);
                self.objects.insert(key.clone(), obj.clone());
                (obj.clone(), Some(obj))
            }
            None => {
                let mut last = self.objects.remove(key).expect("deleting a stored object");
                meta_set(&mut last, "resourceVersion", rv);
                (last, None)
            }
        };
        self.history.push_back(Change {
            rv: self.rv,
            plural: kind.plural,
            obj: after,
            prev,
        });
        while self.history.len() > HISTORY {
            let gone = self.history.pop_front().unwrap();
            self.dropped = gone.rv;
            self.horizon = self.horizon.max(gone.rv);
        }
        stored
    }

    /// The body's namespace against the URL's (400 on a mismatch); on create,
    /// the NamespaceLifecycle admission plugin: the namespace must exist and
    /// not be terminating.
    fn admit_namespace(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        obj: &mut Value,
        creating: bool,
    ) -> Result<(), ApiError> {
        if !kind.namespaced {
            meta_set(obj, "namespace", None);
            return Ok(());
        }
        let ns = ns.expect("a namespaced kind needs a namespace");
        match meta_str(obj, "namespace") {
            "" => meta_set(obj, "namespace", Some(json!(ns))),
            given if given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {}
        }
        if creating {
            self.admit_create_in(kind, ns, meta_str(obj, "name"))?;
        }
        Ok(())
    }

    /// The NamespaceLifecycle admission plugin on a create (of an object or
    /// a subresource) of `kind` named `name` in namespace `ns`: the namespace
    /// must exist and not be terminating.
    pub fn admit_create_in(&self, kind: &Kind, ns: &str, name: &str) -> Result<(), ApiError> {
        let namespaces = by_plural("namespaces");
        match self.objects.get(&key(namespaces, None, ns)) {
            None => Err(ApiError::not_found(namespaces, ns)),
            Some(n) if meta(n, "deletionTimestamp").is_some() => {
                let why = format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                );
                Err(ApiError::forbidden(kind, name, &why))
            }
            Some(_) => Ok(()),
        }
    }

    /// POST: decode, default, admit, then `create_object`.
    pub fn create(
        &mut self,
        kind: &'static Kind,
        ns: Option<&str>,
        body: Value,
    ) -> Result<Value, ApiError> {
        self.create_as(kind, ns, body, None)
    }

    /// A create by `user` (a `UserInfo` as JSON: username, uid, groups),
    /// which strategies that record the requester (CSRs) read; None for a
    /// caller without an identity.
    pub fn create_as(
        &mut self,
        kind: &'static Kind,
        ns: Option<&str>,
        body: Value,
        user: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let mut obj = kind.decode(body)?;
        kind.apply_defaults(&mut obj);
        self.admit_namespace(kind, ns, &mut obj, true)?;
        self.create_object(kind, obj, user)
    }

    /// rest.BeforeCreate and the storage create.
    fn create_object(
        &mut self,
        kind: &'static Kind,
        mut obj: Value,
        user: Option<&Value>,
    ) -> Result<Value, ApiError> {
        meta_set(&mut obj, "deletionTimestamp", None);
        meta_set(&mut obj, "deletionGracePeriodSeconds", None);
        kind.prepare_for_create(&mut obj, user);
        meta_set(&mut obj, "uid", Some(json!(uuid_v4())));
        meta_set(&mut obj, "creationTimestamp", Some(timestamp(now())));
        if meta_str(&obj, "name").is_empty() && !meta_str(&obj, "generateName").is_empty() {
            let name = generate_name(meta_str(&obj, "generateName"));
            meta_set(&mut obj, "name", Some(json!(name)));
        }
        let name = meta_str(&obj, "name").to_string();
        let errs = kind.validate_create(&obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid_object(kind, &name, &errs));
        }
        if !meta_str(&obj, "resourceVersion").is_empty() {
            // The etcd3 storage refuses this; it surfaces as a 500.
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let k = key(kind, Some(meta_str(&obj, "namespace")), &name);
        if let Some(existing) = self.objects.get(&k) {
            let mut e = ApiError::already_exists(kind, &name);
            if meta(existing, "deletionTimestamp").is_some() {
                e.message = format!("object is being deleted: {}", e.message);
            }
            return Err(e);
        }
        Ok(self.commit(kind, &k, Some(obj)))
    }

    /// PUT of the object (`status` false) or of its `/status`. Returns the
    /// stored object and whether the PUT created it.
    pub fn update(
        &mut self,
        kind: &'static Kind,
        ns: Option<&str>,
        name: &str,
        sub: Sub,
        body: Value,
    ) -> Result<(Value, bool), ApiError> {
        let mut obj = kind.decode(body)?;
        kind.apply_defaults(&mut obj);
        check_name(&obj, name)?;
        self.admit_namespace(kind, ns, &mut obj, false)?;
        let k = key(kind, ns, name);
        let Some(old) = self.objects.get(&k).cloned() else {
            if kind.create_on_update && sub == Sub::Main {
                meta_set(&mut obj, "resourceVersion", None);
                self.admit_namespace(kind, ns, &mut obj, true)?;
                return Ok((self.create_object(kind, obj, None)?, true));
            }
            return Err(ApiError::not_found(kind, name));
        };
        Ok((
            self.update_object(kind, &k, obj, old, sub, Verb::Put)?,
            false,
        ))
    }

    /// PATCH of the object or of its `/status`.
    pub fn patch(
        &mut self,
        kind: &'static Kind,
        ns: Option<&str>,
        name: &str,
        sub: Sub,
        content_type: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let k = key(kind, ns, name);
        let old = self
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        let patched = patch::apply(kind, content_type, &old, body)?;
        let mut obj = kind.decode(patched)?;
        kind.apply_defaults(&mut obj);
        check_name(&obj, name)?;
        self.admit_namespace(kind, ns, &mut obj, false)?;
        self.update_object(kind, &k, obj, old, sub, Verb::Patch)
    }

    /// registry.Store.Update and rest.BeforeUpdate.
    fn update_object(
        &mut self,
        kind: &'static Kind,
        k: &Key,
        mut obj: Value,
        old: Value,
        sub: Sub,
        verb: Verb,
    ) -> Result<Value, ApiError> {
        let name = k.2.as_str();
        let old_uid = meta_str(&old, "uid").to_string();
        let uid = meta_str(&obj, "uid").to_string();
        if verb == Verb::Put && !uid.is_empty() && uid != old_uid {
            let why = format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
            );
            return Err(ApiError::conflict(kind, name, &why));
        }
        // Optimistic concurrency. Without a resourceVersion a PUT overwrites
        // where the strategy allows it (AllowUnconditionalUpdate: every kind
        // here but leases). A patch starts from the stored object, so its
        // resourceVersion only differs when the patch sets one.
        let old_rv = meta_str(&old, "resourceVersion").to_string();
        match meta_str(&obj, "resourceVersion") {
            "" if kind.unconditional_update => {
                meta_set(&mut obj, "resourceVersion", Some(json!(old_rv)))
            }
            "" => {
                let err = FieldError::invalid(
                    "metadata.resourceVersion",
                    json!(0),
                    "must be specified for an update",
                );
                return Err(ApiError::invalid(kind.group, kind.plural, name, &[err]));
            }
            rv if rv != old_rv => return Err(ApiError::stale(kind, name)),
            _ => {}
        }
        // What an update cannot change is carried over from the stored object.
        if uid.is_empty() {
            meta_set(&mut obj, "uid", Some(json!(old_uid)));
        }
        meta_set(
            &mut obj,
            "creationTimestamp",
            meta(&old, "creationTimestamp").cloned(),
        );
        meta_set(&mut obj, "generation", meta(&old, "generation").cloned());
        if let Some(ts) = meta(&old, "deletionTimestamp") {
            meta_set(&mut obj, "deletionTimestamp", Some(ts.clone()));
        }
        if meta(&obj, "deletionGracePeriodSeconds").is_none() {
            meta_set(
                &mut obj,
                "deletionGracePeriodSeconds",
                meta(&old, "deletionGracePeriodSeconds").cloned(),
            );
        }
        let mut errs = meta_update_errors(&obj, &old);
        let new = if sub == Sub::Approval {
            // The /approval subresource: only the conditions change.
            let mut new = old.clone();
            let conditions = obj.pointer("/status/conditions").cloned();
            kind.prepare_for_approval_update(&mut new, conditions, &old);
            errs.extend(kind.validate_approval_update(&new, &old));
            new
        } else if sub == Sub::Status {
            // The /status subresource: only status changes.
            let mut new = old.clone();
            let mut st = obj.get("status").cloned().unwrap_or(json!({}));
            if kind.kind == "Pod" && st.get("qosClass").is_none() {
                if let Some(qos) = old.pointer("/status/qosClass") {
                    st["qosClass"] = qos.clone();
                }
            }
            new["status"] = st;
            kind.prepare_for_status_update(&mut new, &old);
            errs.extend(kind.validate_status_update(&new, &old));
            new
        } else {
            kind.prepare_for_update(&mut obj, &old);
            errs.extend(kind.validate_update(&obj, &old));
            obj
        };
        if !errs.is_empty() {
            return Err(ApiError::invalid_object(kind, name, &errs));
        }
        // ShouldDeleteDuringUpdate: the last finalizer of an object whose
        // deletion is not waiting for a grace period is gone.
        let grace = meta(&old, "deletionGracePeriodSeconds").and_then(Value::as_i64);
        if finalizers(&new).is_empty()
            && meta(&old, "deletionTimestamp").is_some()
            && grace.unwrap_or(0) == 0
        {
            self.commit(kind, k, None);
            return Ok(new);
        }
        // A write that changes nothing is not a write (no new resourceVersion).
        if new == old {
            return Ok(old);
        }
        Ok(self.commit(kind, k, Some(new)))
    }

    /// DELETE: registry.Store.Delete with rest.BeforeDelete and the pod
    /// strategy's CheckGracefulDelete; namespaces have their own rules.
    pub fn delete(
        &mut self,
        kind: &'static Kind,
        ns: Option<&str>,
        name: &str,
        mut opts: DeleteOptions,
    ) -> Result<Value, ApiError> {
        let k = key(kind, ns, name);
        let obj = self
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        validate_delete_options(&opts)?;
        let uid = meta_str(&obj, "uid").to_string();
        let qualified = if kind.group.is_empty() {
            kind.kind.to_string()
        } else {
            format!("{}.{}", kind.kind, kind.group)
        };
        let conflict = |why: String| {
            let mut e = ApiError::conflict(kind, name, &why);
            e.message = format!("Operation cannot be fulfilled on {qualified} {name:?}: {why}");
            e.details.as_mut().unwrap()["kind"] = json!(kind.kind);
            e
        };
        if let Some(want) = opts.uid.as_deref().filter(|w| *w != uid) {
            return Err(conflict(format!("the UID in the precondition ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated")));
        }
        let rv = meta_str(&obj, "resourceVersion").to_string();
        if let Some(want) = opts.resource_version.as_deref().filter(|w| *w != rv) {
            return Err(conflict(format!("the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({rv}). The object might have been modified")));
        }
        if opts.grace.is_some_and(|g| g < 0) {
            opts.grace = Some(1);
        }
        if kind.kind == "Namespace" {
            return self.delete_namespace(kind, &k, obj);
        }
        let pending_finalizers = !finalizers(&obj).is_empty();
        let mut marked = obj.clone();
        let mut graceful = None;
        if kind.graceful_delete {
            let current = meta(&obj, "deletionGracePeriodSeconds").and_then(Value::as_i64);
            match (
                parse_time(meta(&obj, "deletionTimestamp")),
                current,
                opts.grace,
            ) {
                // Being deleted without a grace period left: delete now.
                (Some(_), None | Some(0), _) => {}
                // Only a shorter grace period may be asked for.
                (Some(ts), Some(cur), Some(mut period)) if period < cur => {
                    let mut at = ts - jiff::SignedDuration::from_secs(cur)
                        + jiff::SignedDuration::from_secs(period);
                    if at < now() {
                        at = now();
                        if period != 0 {
                            period = 1;
                        }
                    }
                    meta_set(&mut marked, "deletionTimestamp", Some(timestamp(at)));
                    meta_set(
                        &mut marked,
                        "deletionGracePeriodSeconds",
                        Some(json!(period)),
                    );
                    graceful = Some(period);
                }
                // Already pending with this grace period or a shorter one.
                (Some(_), Some(_), _) => return Ok(obj),
                (None, _, _) => {
                    let period = pod_grace_period(&obj, opts.grace);
                    let at = now() + jiff::SignedDuration::from_secs(period);
                    meta_set(&mut marked, "deletionTimestamp", Some(timestamp(at)));
                    meta_set(
                        &mut marked,
                        "deletionGracePeriodSeconds",
                        Some(json!(period)),
                    );
                    bump_generation(&mut marked);
                    graceful = Some(period);
                }
            }
        }
        match graceful {
            Some(period) => {
                let stored = self.commit(kind, &k, Some(marked));
                if pending_finalizers || period > 0 {
                    Ok(stored)
                } else {
                    Ok(self.remove(kind, &k))
                }
            }
            None if pending_finalizers => {
                // markAsDeleting: the finalizers' owners act on the deletionTimestamp.
                if meta(&marked, "deletionTimestamp").is_none() {
                    bump_generation(&mut marked);
                }
                if parse_time(meta(&marked, "deletionTimestamp")).is_none_or(|t| t > now()) {
                    meta_set(&mut marked, "deletionTimestamp", Some(timestamp(now())));
                }
                meta_set(&mut marked, "deletionGracePeriodSeconds", Some(json!(0)));
                if marked == obj {
                    return Ok(obj);
                }
                Ok(self.commit(kind, &k, Some(marked)))
            }
            None => Ok(self.remove(kind, &k)),
        }
    }

    /// Removes an object; the answer to the DELETE that removed it: the
    /// object (pods) or a success `Status` (registry.Store.finalizeDelete).
    fn remove(&mut self, kind: &'static Kind, k: &Key) -> Value {
        let last = self.commit(kind, k, None);
        if kind.returns_deleted {
            last
        } else {
            status::delete_success(kind, &k.2, meta_str(&last, "uid"))
        }
    }

    /// The namespace registry: the first delete marks the namespace
    /// Terminating; its `kubernetes` finalizer is for the namespace controller,
    /// which this fixture does not run, so it stays Terminating.
    fn delete_namespace(
        &mut self,
        kind: &'static Kind,
        k: &Key,
        ns: Value,
    ) -> Result<Value, ApiError> {
        let name = k.2.as_str();
        if IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(
                kind,
                name,
                "this namespace may not be deleted",
            ));
        }
        if meta(&ns, "deletionTimestamp").is_none() {
            let mut marked = ns.clone();
            meta_set(&mut marked, "deletionTimestamp", Some(timestamp(now())));
            marked["status"]["phase"] = json!("Terminating");
            return Ok(self.commit(kind, k, Some(marked)));
        }
        if ns
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
        {
            return Err(ApiError::conflict(kind, name, "The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."));
        }
        Ok(self.commit(kind, k, None))
    }

    /// GET of a collection.
    pub fn list(
        &mut self,
        kind: &'static Kind,
        ns: Option<&str>,
        q: &ListQuery,
    ) -> Result<Value, ApiError> {
        validate_list_options(q)?;
        let (rv, mut items) = match &q.continue_token {
            Some(token) => self.pages.get(token).cloned().ok_or_else(|| {
                ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            })?,
            None => {
                self.check_list_version(q)?;
                let items = self.matching(kind, ns, &q.selector).map(list_item).collect();
                (self.rv, items)
            }
        };
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if let Some(limit) = q.limit.filter(|l| *l > 0 && items.len() > *l) {
            let rest = items.split_off(limit);
            let token = format!("{rv}-{}", uuid_v4());
            self.pages.insert(token.clone(), (rv, rest));
            metadata["continue"] = json!(token);
        }
        Ok(json!({
            "kind": format!("{}List", kind.kind),
            "apiVersion": kind.api_version,
            "metadata": metadata,
            "items": items,
        }))
    }

    /// Every stored object of `kind` in `ns` (all namespaces for None).
    pub fn objects_of(&self, kind: &'static Kind, ns: Option<&str>) -> Vec<Value> {
        let all = Selector::default();
        self.matching(kind, ns, &all).cloned().collect()
    }

    /// The stored objects of `kind` in `ns` (all namespaces for None) that
    /// `selector` selects, in key order.
    fn matching<'a>(
        &'a self,
        kind: &'static Kind,
        ns: Option<&'a str>,
        selector: &'a Selector,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |((plural, n, _), obj)| {
                *plural == kind.plural && ns.is_none_or(|ns| ns == n) && selector.matches(kind, obj)
            })
            .map(|(_, obj)| obj)
    }

    /// A list can only be served at the current resourceVersion: older exact
    /// versions are answered as compacted, newer ones as not yet there.
    fn check_list_version(&self, q: &ListQuery) -> Result<(), ApiError> {
        let Some(wanted) = q
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "0")
        else {
            return Ok(());
        };
        let n = parse_rv(wanted)?;
        if n > self.rv {
            return Err(too_large(n, self.rv));
        }
        if q.version_match.as_deref() == Some("Exact") && n != self.rv {
            return Err(ApiError::expired(
                "The resourceVersion for the provided list is too old.",
            ));
        }
        Ok(())
    }

    /// Where a new watch starts: the synthetic ADDED objects it first sends
    /// and the resourceVersion after which it streams changes. An error of
    /// code 410 is sent as an ERROR event; any other is the HTTP answer.
    pub fn watch_start(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        selector: &Selector,
        rv: Option<&str>,
        initial: Option<bool>,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let rv = rv.unwrap_or("");
        let from_now = rv.is_empty() || rv == "0";
        let cursor = if from_now {
            self.rv
        } else {
            let n = parse_rv(rv)?;
            if n > self.rv {
                return Err(too_large(n, self.rv));
            }
            n
        };
        if initial.unwrap_or(from_now) {
            return Ok((
                self.matching(kind, ns, selector).cloned().collect(),
                self.rv,
            ));
        }
        if cursor < self.horizon {
            return Err(ApiError::expired(format!(
                "too old resource version: {cursor} ({})",
                self.horizon + 1
            )));
        }
        Ok((vec![], cursor))
    }

    /// The changes after `cursor`, or None if some of them are no longer kept.
    pub fn changes_after(&self, cursor: u64) -> Option<impl Iterator<Item = &Change>> {
        if cursor < self.dropped {
            return None;
        }
        Some(self.history.iter().filter(move |c| c.rv > cursor))
    }

    /// Forgets the change history: new watches from any resourceVersion
    /// before now get 410 Gone (what etcd compaction does). Continue tokens
    /// expire too. Open watches are not affected.
    pub fn compact(&mut self) {
        self.horizon = self.rv;
        self.pages.clear();
    }
}

fn bump_generation(obj: &mut Value) {
    if let Some(g) = meta(obj, "generation")
        .and_then(Value::as_i64)
        .filter(|g| *g > 0)
    {
        meta_set(obj, "generation", Some(json!(g + 1)));
    }
}

/// podStrategy.CheckGracefulDelete: the requested period, else the pod's
/// terminationGracePeriodSeconds; 0 for a pod no node runs (unbound or
/// terminal); negative becomes 1.
fn pod_grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let mut period = requested
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(0);
    let unbound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty();
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if unbound || phase == "Succeeded" || phase == "Failed" {
        period = 0;
    }
    if period < 0 {
        1
    } else {
        period
    }
}

/// checkName: the body names the object of the URL.
fn check_name(obj: &Value, name: &str) -> Result<(), ApiError> {
    let given = meta_str(obj, "name");
    if given != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

/// ValidateObjectMetaUpdate, after the carried-over fields are in place.
fn meta_update_errors(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    for field in ["uid", "deletionTimestamp", "deletionGracePeriodSeconds"] {
        if meta(new, field) != meta(old, field) {
            let value = meta(new, field).cloned().unwrap_or(Value::Null);
            errs.push(FieldError::immutable(format!("metadata.{field}"), value));
        }
    }
    if meta(old, "deletionTimestamp").is_some() {
        let old_fins = finalizers(old);
        let added: Vec<String> = finalizers(new)
            .into_iter()
            .filter(|f| !old_fins.contains(f))
            .map(|f| f.as_str().unwrap_or("").to_string())
            .collect();
        if !added.is_empty() {
            errs.push(FieldError::forbidden(
                "metadata.finalizers",
                &format!("no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"),
            ));
        }
    }
    errs
}

fn validate_delete_options(opts: &DeleteOptions) -> Result<(), ApiError> {
    const POLICIES: &[&str] = &["Foreground", "Background", "Orphan", "nil"];
    let mut errs = vec![];
    if opts.orphan.is_some() && opts.propagation.is_some() {
        errs.push(FieldError::invalid(
            "propagationPolicy",
            json!(opts.propagation),
            "orphanDependents and deletionPropagation cannot be both set",
        ));
    }
    if let Some(p) = opts
        .propagation
        .as_deref()
        .filter(|p| !POLICIES[..3].contains(p))
    {
        errs.push(FieldError::not_supported(
            "propagationPolicy",
            json!(p),
            POLICIES,
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("meta.k8s.io", "DeleteOptions", "", &errs))
    }
}

/// ValidateListOptions, for lists and watches alike.
pub fn validate_list_options(q: &ListQuery) -> Result<(), ApiError> {
    let mut errs = vec![];
    if let Some(m) = q.version_match.as_deref() {
        if q.resource_version.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if q.continue_token.is_some() {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        match m {
            "NotOlderThan" => {}
            "Exact" if q.resource_version.as_deref() == Some("0") => {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ))
            }
            "Exact" => {}
            other => errs.push(FieldError::not_supported(
                "resourceVersionMatch",
                json!(other),
                &["Exact", "NotOlderThan", ""],
            )),
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", &errs))
    }
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// The watch cache's answer for a resourceVersion it has not reached.
fn too_large(wanted: u64, current: u64) -> ApiError {
    let mut e = ApiError::new(
        504,
        "Timeout",
        format!("Too large resource version: {wanted}, current: {current}"),
    );
    e.details = Some(json!({
        "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }],
        "retryAfterSeconds": 1,
    }));
    e
}

/// What a watch for `kind` in `ns` with `selector` sees of a change: the
/// event type and object, if anything (objects that start or stop matching a
/// selector appear as ADDED or DELETED, as from the watch cache).
pub fn watch_event(
    kind: &Kind,
    ns: Option<&str>,
    selector: &Selector,
    change: &Change,
) -> Option<(&'static str, Value)> {
    if change.plural != kind.plural {
        return None;
    }
    let selected = |obj: &&Value| {
        ns.is_none_or(|ns| meta_str(obj, "namespace") == ns) && selector.matches(kind, obj)
    };
    match (
        change.obj.as_ref().filter(selected),
        change.prev.as_ref().filter(selected),
    ) {
        (Some(obj), None) => Some(("ADDED", obj.clone())),
        (Some(obj), Some(_)) => Some(("MODIFIED", obj.clone())),
        (None, Some(prev)) => {
            let mut last = prev.clone();
            meta_set(
                &mut last,
                "resourceVersion",
                Some(json!(change.rv.to_string())),
            );
            Some(("DELETED", last))
        }
        (None, None) => None,
    }
}
