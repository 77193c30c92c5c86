//! Events: what happened to a pod or the node, for `kubectl describe` and
//! `kubectl get events`.
//!
//! Like the kubelet's recorder, repeated events are aggregated and each
//! object's events are rate-limited, so a crash-looping container does not
//! flood the API server: an event equal to one sent in the last 10 minutes
//! (same object, type, reason and message) only bumps that one's `count`
//! and `lastTimestamp`, and each object may emit a burst of 25 events, then
//! one per 5 minutes (client-go's defaults). Deciding what to send is
//! [`Correlator`], pure and table-tested; [`write`] sends it. An event the
//! API server cannot take now (it is away, or overloaded) is kept and sent
//! once it is back, in order, within bounds ([`after_failure`]); one it
//! refuses is logged and dropped.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::HashMap;
use tokio::sync::mpsc;
use tracing::debug;

/// Component name in `source` and `reportingComponent`.
pub const COMPONENT: &str = "unitlet";
/// Window in which equal events are aggregated.
pub const AGGREGATE_WINDOW: SignedDuration = SignedDuration::from_secs(600);
/// Events an object may emit at once.
pub const BURST: f64 = 25.0;
/// Seconds to earn one more event after the burst.
pub const REFILL_S: f64 = 300.0;

/// One event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// What it is about (a pod, possibly one of its containers, or the node).
    pub object: ObjectReference,
    /// `Warning` instead of `Normal`.
    pub warning: bool,
    /// CamelCase reason (`Started`, `BackOff`, …).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

/// What to do with a recorded event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create this new Event.
    Create(Box<Event>),
    /// Bump an existing Event.
    Bump {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// New count.
        count: i32,
        /// New `lastTimestamp`.
        last: Timestamp,
    },
    /// Over the object's rate limit.
    Drop,
}

#[derive(Debug, Clone)]
struct Seen {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Timestamp,
}

type Key = (String, String, String, bool, String, String);

/// Aggregation and rate limiting state.
#[derive(Debug, Default)]
pub struct Correlator {
    host: String,
    seen: HashMap<Key, Seen>,
    buckets: HashMap<String, Bucket>,
}

fn object_key(o: &ObjectReference) -> String {
    format!(
        "{}/{}/{}/{}",
        o.kind.as_deref().unwrap_or(""),
        o.namespace.as_deref().unwrap_or(""),
        o.name.as_deref().unwrap_or(""),
        o.uid.as_deref().unwrap_or("")
    )
}

impl Correlator {
    /// A correlator for events reported from node `host`.
    pub fn new(host: &str) -> Self {
        Correlator {
            host: host.into(),
            ..Default::default()
        }
    }

    /// Decides what recording `r` at `now` means.
    pub fn record(&mut self, r: &Record, now: Timestamp) -> Action {
        let obj = object_key(&r.object);
        let bucket = self.buckets.entry(obj.clone()).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let earned = now.duration_since(bucket.at).as_secs_f64().max(0.0) / REFILL_S;
        bucket.tokens = (bucket.tokens + earned).min(BURST);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Action::Drop;
        }
        bucket.tokens -= 1.0;
        let key: Key = (
            obj,
            r.object.field_path.clone().unwrap_or_default(),
            self.host.clone(),
            r.warning,
            r.reason.clone(),
            r.message.clone(),
        );
        if let Some(s) = self.seen.get_mut(&key) {
            if now.duration_since(s.last) < AGGREGATE_WINDOW {
                s.count += 1;
                s.last = now;
                return Action::Bump {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    count: s.count,
                    last: now,
                };
            }
        }
        let namespace = r
            .object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        // The kubelet's naming: the object's name and a unique hex suffix.
        let name = format!(
            "{}.{:x}",
            r.object.name.as_deref().unwrap_or("unknown"),
            now.as_nanosecond()
        );
        self.seen.insert(
            key,
            Seen {
                namespace: namespace.clone(),
                name: name.clone(),
                count: 1,
                last: now,
            },
        );
        Action::Create(Box::new(Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace),
                ..Default::default()
            },
            involved_object: r.object.clone(),
            reason: Some(r.reason.clone()),
            message: Some(r.message.clone()),
            type_: Some(if r.warning { "Warning" } else { "Normal" }.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: Some(self.host.clone()),
            }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(self.host.clone()),
            ..Default::default()
        }))
    }

    /// Forgets aggregation entries older than the window (bounded memory).
    pub fn expire(&mut self, now: Timestamp) {
        self.seen
            .retain(|_, s| now.duration_since(s.last) < AGGREGATE_WINDOW);
        self.buckets
            .retain(|_, b| b.tokens < BURST || now.duration_since(b.at) < AGGREGATE_WINDOW);
    }
}

/// Events kept while the API server cannot take them; beyond this the
/// oldest go (a node agent's memory stays bounded through any outage).
pub const MAX_PENDING: usize = 1000;
/// How long an event that could not be written is kept: the API server
/// expires events after an hour (`--event-ttl`), so an older one would
/// only come back to go again.
pub const MAX_AGE: SignedDuration = SignedDuration::from_secs(3600);
/// First and longest wait before trying the oldest pending event again.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// What to do after a write failed with HTTP status `code` (`None`: no
/// answer at all, the server is unreachable), for an event recorded at
/// `at`. Unlike client-go's recorder, which gives an event 12 tries 10 s
/// apart, an event is kept (bounded by [`MAX_PENDING`] and [`MAX_AGE`])
/// until the server is back, so an outage of any length is caught up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again later: the server is away or overloaded.
    Retry,
    /// The event is there already (an earlier try went through unseen).
    Done,
    /// The server refuses it for good, or it is too old: drop it.
    Drop,
}

/// See [`AfterFailure`].
pub fn after_failure(code: Option<u16>, at: Timestamp, now: Timestamp) -> AfterFailure {
    if now.duration_since(at) >= MAX_AGE {
        return AfterFailure::Drop;
    }
    match code {
        None | Some(429) | Some(500..) => AfterFailure::Retry,
        Some(409) => AfterFailure::Done,
        Some(_) => AfterFailure::Drop,
    }
}

/// A correlated event waiting to be written.
struct Pending {
    action: Action,
    reason: String,
    at: Timestamp,
}

async fn send(client: &kube::Client, action: &Action) -> Result<(), kube::Error> {
    match action {
        Action::Drop => Ok(()),
        Action::Create(ev) => {
            let ns = ev.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Event> = Api::namespaced(client.clone(), &ns);
            api.create(&PostParams::default(), ev).await.map(drop)
        }
        Action::Bump {
            namespace,
            name,
            count,
            last,
        } => {
            let api: Api<Event> = Api::namespaced(client.clone(), namespace);
            let patch = serde_json::json!({"count": count, "lastTimestamp": Time(*last)});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        }
    }
}

/// Sends recorded events to the API server, in the order they happened,
/// keeping them through an outage (see [`after_failure`]).
pub async fn write(client: kube::Client, host: String, mut rx: mpsc::UnboundedReceiver<Record>) {
    let mut c = Correlator::new(&host);
    let mut n = 0u64;
    let mut queue: std::collections::VecDeque<Pending> = Default::default();
    let mut wait = RETRY_FIRST;
    let mut admit =
        |c: &mut Correlator, queue: &mut std::collections::VecDeque<Pending>, r: Record| {
            let now = Timestamp::now();
            n += 1;
            if n.is_multiple_of(256) {
                c.expire(now);
            }
            match c.record(&r, now) {
                Action::Drop => debug!(
                    reason = r.reason,
                    "event over its object's rate limit; dropped"
                ),
                action => {
                    if queue.len() == MAX_PENDING {
                        let old = queue.pop_front().expect("full");
                        tracing::warn!(
                            reason = old.reason,
                            pending = MAX_PENDING,
                            "too many events waiting for the API server; the oldest is dropped"
                        );
                    }
                    queue.push_back(Pending {
                        action,
                        reason: r.reason,
                        at: now,
                    });
                }
            }
        };
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(r) => admit(&mut c, &mut queue, r),
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            admit(&mut c, &mut queue, r);
        }
        let Some(head) = queue.front() else { continue };
        let Err(e) = send(&client, &head.action).await else {
            queue.pop_front();
            wait = RETRY_FIRST;
            continue;
        };
        match after_failure(super::api_code(&e), head.at, Timestamp::now()) {
            AfterFailure::Retry => {
                if wait == RETRY_FIRST {
                    tracing::warn!(reason = head.reason, pending = queue.len(), error = %e, "cannot write event; keeping it and the ones after it until the API server takes them");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
            AfterFailure::Done => {
                queue.pop_front();
            }
            AfterFailure::Drop => {
                tracing::warn!(reason = head.reason, error = %e, "cannot write event; dropped");
                queue.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(reason: &str, message: &str) -> Record {
        Record {
            object: ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some("prod".into()),
                name: Some("web".into()),
                uid: Some("u1".into()),
                api_version: Some("v1".into()),
                field_path: Some("spec.containers{c}".into()),
                ..Default::default()
            },
            warning: reason == "BackOff",
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn failed_writes_are_kept_while_the_server_is_away_and_dropped_when_refused() {
        let t = at(0);
        for (code, want) in [
            (None, AfterFailure::Retry),
            (Some(429), AfterFailure::Retry),
            (Some(500), AfterFailure::Retry),
            (Some(503), AfterFailure::Retry),
            (Some(409), AfterFailure::Done),
            (Some(404), AfterFailure::Drop),
            (Some(422), AfterFailure::Drop),
            (Some(403), AfterFailure::Drop),
        ] {
            assert_eq!(after_failure(code, t, at(60)), want, "{code:?}");
        }
        // Kept for the API server's event TTL, not longer.
        assert_eq!(after_failure(None, t, at(3599)), AfterFailure::Retry);
        assert_eq!(after_failure(None, t, at(3600)), AfterFailure::Drop);
    }

    #[test]
    fn first_event_is_created_with_kubelet_fields() {
        let mut c = Correlator::new("n1");
        let Action::Create(ev) = c.record(&rec("Started", "Started container c"), at(0)) else {
            panic!("not a create")
        };
        assert_eq!(ev.metadata.namespace.as_deref(), Some("prod"));
        assert!(ev.metadata.name.as_deref().unwrap().starts_with("web."));
        assert_eq!(ev.type_.as_deref(), Some("Normal"));
        assert_eq!(ev.count, Some(1));
        assert_eq!(ev.source.as_ref().unwrap().host.as_deref(), Some("n1"));
        assert_eq!(
            ev.involved_object.field_path.as_deref(),
            Some("spec.containers{c}")
        );
    }

    #[test]
    fn repeats_within_ten_minutes_are_aggregated() {
        let mut c = Correlator::new("n1");
        let r = rec("BackOff", "Back-off restarting failed container c");
        let Action::Create(first) = c.record(&r, at(0)) else {
            panic!()
        };
        let name = first.metadata.name.unwrap();
        match c.record(&r, at(30)) {
            Action::Bump { name: n, count, .. } => {
                assert_eq!(n, name);
                assert_eq!(count, 2);
            }
            other => panic!("{other:?}"),
        }
        // A different message is a different event.
        assert!(matches!(
            c.record(&rec("BackOff", "other"), at(31)),
            Action::Create(_)
        ));
        // After the window, a new event.
        assert!(matches!(c.record(&r, at(30 + 601)), Action::Create(_)));
    }

    #[test]
    fn each_object_is_rate_limited_after_a_burst() {
        let mut c = Correlator::new("n1");
        let mut sent = 0;
        for i in 0..40 {
            if !matches!(
                c.record(&rec("Started", &format!("m{i}")), at(i)),
                Action::Drop
            ) {
                sent += 1;
            }
        }
        assert_eq!(sent, 25);
        // One more after five minutes.
        assert!(!matches!(
            c.record(&rec("Started", "late"), at(40 + 300)),
            Action::Drop
        ));
        // Another object has its own budget.
        let mut other = rec("Started", "x");
        other.object.uid = Some("u2".into());
        assert!(!matches!(c.record(&other, at(41)), Action::Drop));
    }
}
