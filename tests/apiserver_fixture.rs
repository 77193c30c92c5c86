//! Tests of the in-process API server fixture itself, through HTTP with the
//! kube-rs client (the client unitlet uses), so that what the fixture
//! answers is what kube-rs can read and what a real server would answer.

use unitlet_test_support as support;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
    ServiceAccount,
};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use serde_json::{json, Value};
use std::future::Future;
use std::time::Duration;
use support::apiserver::{ApiServer, API_AUDIENCE};

/// Runs a test body on a fresh single-threaded runtime.
fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A kube client configured the way unitlet's would be: from the kubeconfig
/// the fixture writes.
async fn client(api: &ApiServer) -> Client {
    Client::try_from(config(api).await).unwrap()
}

/// A client without kube's default retries of 429, 503 and 504 (up to 15,
/// backing off up to minutes), to see those answers themselves.
async fn client_without_retries(api: &ApiServer) -> Client {
    let mut config = config(api).await;
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

async fn config(api: &ApiServer) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path);
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap()
}

fn pod(name: &str, labels: Value, node: Option<&str>) -> Pod {
    let mut p = json!({
        "metadata": { "name": name, "labels": labels },
        "spec": { "containers": [{ "name": "main", "image": "busybox:1.36" }] },
    });
    if let Some(node) = node {
        p["spec"]["nodeName"] = json!(node);
    }
    serde_json::from_value(p).unwrap()
}

/// The Status of a failed call.
fn status_of<T: std::fmt::Debug>(r: kube::Result<T>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect()
}

/// The next item of a stream, failing the test after `secs` seconds.
async fn next<S: Stream + Unpin>(stream: &mut S, secs: u64) -> Option<S::Item> {
    tokio::time::timeout(Duration::from_secs(secs), stream.next())
        .await
        .expect("stream went quiet")
}

/// The next watch event that is not a bookmark, as (type, name, resourceVersion).
async fn next_change<S, K>(stream: &mut S) -> (String, String, String)
where
    S: Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
    K: kube::Resource,
{
    loop {
        let (kind, obj) = match next(stream, 5).await.expect("watch ended").unwrap() {
            WatchEvent::Added(p) => ("ADDED", p),
            WatchEvent::Modified(p) => ("MODIFIED", p),
            WatchEvent::Deleted(p) => ("DELETED", p),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        };
        let meta = obj.meta();
        return (
            kind.into(),
            meta.name.clone().unwrap(),
            meta.resource_version.clone().unwrap(),
        );
    }
}

#[test]
fn create_get_and_list_with_selectors() {
    let api = ApiServer::start();
    run(async {
        let pods: Api<Pod> = Api::namespaced(client(&api).await, "default");
        let pp = PostParams::default();
        let a = pods
            .create(
                &pp,
                &pod("a", json!({ "app": "web", "tier": "front" }), Some("n1")),
            )
            .await
            .unwrap();
        pods.create(&pp, &pod("b", json!({ "app": "web" }), Some("n2")))
            .await
            .unwrap();
        pods.create(&pp, &pod("c", json!({ "app": "db" }), None))
            .await
            .unwrap();

        // What the server fills in.
        let meta = &a.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        assert_eq!(meta.uid.as_ref().unwrap().len(), 36);
        assert!(meta.creation_timestamp.is_some());
        assert_eq!(meta.generation, Some(1));
        let rv: u64 = meta.resource_version.as_ref().unwrap().parse().unwrap();
        let spec = a.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.scheduler_name.as_deref(), Some("default-scheduler"));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        assert_eq!(
            spec.containers[0].termination_message_path.as_deref(),
            Some("/dev/termination-log")
        );
        let status = a.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));

        let got = pods.get("a").await.unwrap();
        assert_eq!(got.metadata.uid, a.metadata.uid);
        let b = pods.get("b").await.unwrap();
        assert!(b.metadata.resource_version.unwrap().parse::<u64>().unwrap() > rv);

        let list = |l: &str, f: &str| {
            let pods = pods.clone();
            let lp = ListParams::default().labels(l).fields(f);
            async move { names(&pods.list(&lp).await.unwrap().items) }
        };
        assert_eq!(list("", "").await, ["a", "b", "c"]);
        assert_eq!(list("app=web", "").await, ["a", "b"]);
        assert_eq!(list("app==web,tier!=front", "").await, ["b"]);
        assert_eq!(list("app in (db, web),!tier", "").await, ["b", "c"]);
        assert_eq!(list("app notin (web)", "").await, ["c"]);
        assert_eq!(list("tier", "").await, ["a"]);
        assert_eq!(list("", "spec.nodeName=n1").await, ["a"]);
        assert_eq!(list("", "spec.nodeName=").await, ["c"]);
        assert_eq!(
            list("", "metadata.name!=a,status.phase=Pending").await,
            ["b", "c"]
        );
        assert_eq!(list("app=web", "spec.nodeName==n2").await, ["b"]);
        let bad = status_of(
            pods.list(&ListParams::default().fields("spec.image=x"))
                .await,
        );
        assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));
        assert!(
            bad.message
                .contains("field label not supported: spec.image"),
            "{}",
            bad.message
        );

        // Across namespaces, and lists as the real server sends them.
        api.create(
            "namespaces",
            None,
            json!({ "metadata": { "name": "other" } }),
        );
        Api::<Pod>::namespaced(client(&api).await, "other")
            .create(&pp, &pod("a", json!({}), None))
            .await
            .unwrap();
        let all: Api<Pod> = Api::all(client(&api).await);
        let everywhere = all
            .list(&ListParams::default().fields("metadata.name=a"))
            .await
            .unwrap();
        assert_eq!(everywhere.items.len(), 2);
        let raw = client(&api)
            .await
            .request_text(
                axum::http::Request::get("/api/v1/namespaces/default/pods")
                    .body(vec![])
                    .unwrap(),
            )
            .await
            .unwrap();
        let raw: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(raw["kind"], "PodList");
        assert_eq!(raw["apiVersion"], "v1");
        assert!(raw["metadata"]["resourceVersion"].is_string());
        assert!(
            raw["items"][0].get("kind").is_none() && raw["items"][0].get("apiVersion").is_none()
        );

        // Create errors.
        let dup = status_of(pods.create(&pp, &pod("a", json!({}), None)).await);
        assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
        let gen = pods
            .create(
                &pp,
                &serde_json::from_value(json!({
                    "metadata": { "generateName": "gen-" },
                    "spec": { "containers": [{ "name": "main", "image": "busybox" }] },
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        let generated = gen.metadata.name.unwrap();
        assert!(
            generated.starts_with("gen-") && generated.len() == 9,
            "{generated}"
        );
        assert_eq!(
            gen.spec.unwrap().containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
        let nameless: Pod = serde_json::from_value(
            json!({ "spec": { "containers": [{ "name": "m", "image": "x" }] } }),
        )
        .unwrap();
        let invalid = status_of(pods.create(&pp, &nameless).await);
        assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
        let missing = status_of(
            Api::<Pod>::namespaced(client(&api).await, "nowhere")
                .create(&pp, &pod("x", json!({}), None))
                .await,
        );
        assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
        assert_eq!(missing.message, "namespaces \"nowhere\" not found");
        let mut elsewhere = pod("x", json!({}), None);
        elsewhere.metadata.namespace = Some("other".into());
        let mismatch = status_of(pods.create(&pp, &elsewhere).await);
        assert_eq!(
            (mismatch.code, mismatch.reason.as_str()),
            (400, "BadRequest")
        );
        let with_rv = status_of(pods.create(&pp, &got).await);
        assert_eq!(
            with_rv.code, 500,
            "a create with a resourceVersion fails in etcd3 storage"
        );
        let not_found = status_of(pods.get("zzz").await);
        assert_eq!(
            (not_found.code, not_found.message.as_str()),
            (404, "pods \"zzz\" not found")
        );
    });
}

#[test]
fn watch_from_a_resource_version_sees_exactly_the_later_changes_in_order() {
    let api = ApiServer::start();
    run(async {
        let pods: Api<Pod> = Api::namespaced(client(&api).await, "default");
        let x = pods
            .create(&PostParams::default(), &pod("x", json!({}), None))
            .await
            .unwrap();
        let from = x.metadata.resource_version.unwrap();
        pods.create(&PostParams::default(), &pod("y", json!({}), None))
            .await
            .unwrap();
        let label = json!({ "metadata": { "labels": { "seen": "yes" } } });
        pods.patch("x", &PatchParams::default(), &Patch::Merge(&label))
            .await
            .unwrap();
        // An unbound pod goes at once: marked (MODIFIED), then removed.
        pods.delete("y", &DeleteParams::default()).await.unwrap();

        let mut events = pods
            .watch(&WatchParams::default().timeout(10), &from)
            .await
            .unwrap()
            .boxed();
        let mut seen = vec![];
        for _ in 0..4 {
            seen.push(next_change(&mut events).await);
        }
        let kinds: Vec<(&str, &str)> = seen
            .iter()
            .map(|(t, n, _)| (t.as_str(), n.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("ADDED", "y"),
                ("MODIFIED", "x"),
                ("MODIFIED", "y"),
                ("DELETED", "y")
            ]
        );
        let rvs: Vec<u64> = seen.iter().map(|(_, _, rv)| rv.parse().unwrap()).collect();
        assert!(
            rvs.windows(2).all(|w| w[0] < w[1]) && rvs[0] > from.parse().unwrap(),
            "{rvs:?}"
        );

        // Later writes, including direct ones, arrive on the open watch.
        api.create(
            "pods",
            Some("default"),
            serde_json::to_value(pod("z", json!({}), None)).unwrap(),
        );
        assert_eq!(next_change(&mut events).await.0, "ADDED");

        // Without a resourceVersion a watch starts with the current objects.
        let mut fresh = pods
            .watch(&WatchParams::default(), "0")
            .await
            .unwrap()
            .boxed();
        let mut initial = vec![
            next_change(&mut fresh).await.1,
            next_change(&mut fresh).await.1,
        ];
        initial.sort();
        assert_eq!(initial, ["x", "z"]);

        // Bookmarks (kube asks for them by default) carry the current resourceVersion.
        let mut marked = pods
            .watch(&WatchParams::default(), &from)
            .await
            .unwrap()
            .boxed();
        let current = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        loop {
            if let WatchEvent::Bookmark(b) = next(&mut marked, 5).await.unwrap().unwrap() {
                assert_eq!(b.metadata.resource_version, current);
                assert_eq!(b.types.kind, "Pod");
                break;
            }
        }
    });
}

#[test]
fn a_selector_watch_sees_objects_leave_and_join_the_selection() {
    let api = ApiServer::start();
    run(async {
        let pods: Api<Pod> = Api::namespaced(client(&api).await, "default");
        pods.create(
            &PostParams::default(),
            &pod("p", json!({ "app": "web" }), None),
        )
        .await
        .unwrap();
        let rv = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let wp = WatchParams::default().labels("app=web");
        let mut events = pods.watch(&wp, &rv).await.unwrap().boxed();
        let relabel = |app: &str| json!({ "metadata": { "labels": { "app": app } } });
        pods.patch("p", &PatchParams::default(), &Patch::Merge(&relabel("db")))
            .await
            .unwrap();
        assert_eq!(next_change(&mut events).await.0, "DELETED");
        pods.patch("p", &PatchParams::default(), &Patch::Merge(&relabel("db2")))
            .await
            .unwrap();
        pods.patch("p", &PatchParams::default(), &Patch::Merge(&relabel("web")))
            .await
            .unwrap();
        assert_eq!(next_change(&mut events).await.0, "ADDED");

        let by_node = WatchParams::default().fields("spec.nodeName=n1");
        let mut on_node = pods.watch(&by_node, "0").await.unwrap().boxed();
        pods.create(
            &PostParams::default(),
            &pod("elsewhere", json!({}), Some("n2")),
        )
        .await
        .unwrap();
        pods.create(&PostParams::default(), &pod("here", json!({}), Some("n1")))
            .await
            .unwrap();
        assert_eq!(next_change(&mut on_node).await.1, "here");
    });
}

#[test]
fn after_compaction_an_old_resource_version_gets_410_and_the_watcher_relists() {
    let api = ApiServer::start();
    run(async {
        let client = client(&api).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        pods.create(&PostParams::default(), &pod("before", json!({}), None))
            .await
            .unwrap();

        let mut watcher = watcher(pods.clone(), watcher::Config::default()).boxed();
        let mut listed = vec![];
        loop {
            match next(&mut watcher, 5).await.unwrap().unwrap() {
                watcher::Event::InitApply(p) => listed.push(p.metadata.name.unwrap()),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(listed, ["before"]);
        let old = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();

        // The watcher's connection ends in an outage; meanwhile history is compacted.
        api.set_available(false);
        api.create(
            "pods",
            Some("default"),
            serde_json::to_value(pod("after", json!({}), None)).unwrap(),
        );
        api.compact();
        api.set_available(true);

        // The raw watch stream from the old resourceVersion: one ERROR, then the end.
        let mut raw = pods
            .watch(&WatchParams::default(), &old)
            .await
            .unwrap()
            .boxed();
        match next(&mut raw, 5).await.unwrap().unwrap() {
            WatchEvent::Error(e) => {
                assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
                assert!(
                    e.message.starts_with("too old resource version"),
                    "{}",
                    e.message
                );
            }
            other => panic!("expected an ERROR event, got {other:?}"),
        }
        assert!(next(&mut raw, 5).await.is_none());

        // kube's watcher resumes from its old resourceVersion, gets the 410 and lists again.
        let mut saw_gone = false;
        let mut relisted = vec![];
        loop {
            match next(&mut watcher, 5).await.unwrap() {
                Err(watcher::Error::WatchError(e)) if e.code == 410 => saw_gone = true,
                Err(e) => panic!("unexpected watcher error {e:?}"),
                Ok(watcher::Event::InitApply(p)) => relisted.push(p.metadata.name.unwrap()),
                Ok(watcher::Event::InitDone) => break,
                Ok(_) => {}
            }
        }
        assert!(saw_gone);
        assert_eq!(relisted, ["after", "before"]);
    });
}

#[test]
fn graceful_deletion_marks_a_running_pod_until_a_zero_grace_delete() {
    let api = ApiServer::start();
    run(async {
        let pods: Api<Pod> = Api::namespaced(client(&api).await, "default");
        let created = pods
            .create(&PostParams::default(), &pod("bound", json!({}), Some("n1")))
            .await
            .unwrap();
        let uid = created.metadata.uid.clone().unwrap();
        let rv = created.metadata.resource_version.clone().unwrap();
        let mut events = pods
            .watch(&WatchParams::default(), &rv)
            .await
            .unwrap()
            .boxed();

        let marked = pods
            .delete("bound", &DeleteParams::default())
            .await
            .unwrap()
            .left()
            .expect("a pod");
        assert!(marked.metadata.deletion_timestamp.is_some());
        assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
        assert_eq!(marked.metadata.generation, Some(2));
        assert!(
            pods.get("bound").await.is_ok(),
            "the kubelet has not confirmed yet"
        );
        assert_eq!(next_change(&mut events).await.0, "MODIFIED");

        // A longer grace period changes nothing; a shorter one moves the deadline.
        let same = pods
            .delete(
                "bound",
                &DeleteParams {
                    grace_period_seconds: Some(60),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            same.left().unwrap().metadata.resource_version,
            marked.metadata.resource_version
        );
        let shorter = pods
            .delete(
                "bound",
                &DeleteParams {
                    grace_period_seconds: Some(10),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let shorter = shorter.left().unwrap();
        assert_eq!(shorter.metadata.deletion_grace_period_seconds, Some(10));
        assert!(
            shorter.metadata.deletion_timestamp.unwrap().0
                < marked.metadata.deletion_timestamp.unwrap().0
        );
        assert_eq!(next_change(&mut events).await.0, "MODIFIED");

        // The kubelet's final delete: grace 0 with the pod's uid as precondition.
        let wrong = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some("not-the-uid".into()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let conflict = status_of(pods.delete("bound", &wrong).await);
        assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
        let right = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        let gone = pods
            .delete("bound", &right)
            .await
            .unwrap()
            .left()
            .expect("pods answer the deleted pod");
        assert_eq!(gone.metadata.deletion_grace_period_seconds, Some(0));
        assert_eq!(status_of(pods.get("bound").await).code, 404);
        assert_eq!(next_change(&mut events).await.0, "MODIFIED");
        assert_eq!(next_change(&mut events).await.0, "DELETED");
        assert_eq!(
            status_of(pods.delete("bound", &DeleteParams::default()).await).code,
            404
        );

        // A terminal pod goes at once, as does any other kind, which answers a Status.
        api.create(
            "pods",
            Some("default"),
            serde_json::to_value(pod("done", json!({}), Some("n1"))).unwrap(),
        );
        let mut done = api.get("pods", Some("default"), "done").unwrap();
        done["status"]["phase"] = json!("Succeeded");
        api.replace_status("pods", Some("default"), done);
        assert!(pods
            .delete("done", &DeleteParams::default())
            .await
            .unwrap()
            .is_left());
        assert!(api.get("pods", Some("default"), "done").is_none());
        let cms: Api<ConfigMap> = Api::namespaced(client(&api).await, "default");
        let cm =
            serde_json::from_value(json!({ "metadata": { "name": "cm" }, "data": { "k": "v" } }))
                .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        let status = cms
            .delete("cm", &DeleteParams::default())
            .await
            .unwrap()
            .right()
            .expect("a Status");
        assert_eq!(status.details.unwrap().name, "cm");

        // Finalizers hold an object until an update removes the last one.
        let held = serde_json::from_value(
            json!({ "metadata": { "name": "held", "finalizers": ["example.com/x"] } }),
        )
        .unwrap();
        cms.create(&PostParams::default(), &held).await.unwrap();
        let marked = cms
            .delete("held", &DeleteParams::default())
            .await
            .unwrap()
            .left()
            .expect("still there");
        assert!(marked.metadata.deletion_timestamp.is_some());
        let add = json!({ "metadata": { "finalizers": ["example.com/x", "example.com/y"] } });
        let refused = status_of(
            cms.patch("held", &PatchParams::default(), &Patch::Merge(&add))
                .await,
        );
        assert_eq!(refused.code, 422, "{}", refused.message);
        let release = json!({ "metadata": { "finalizers": null } });
        cms.patch("held", &PatchParams::default(), &Patch::Merge(&release))
            .await
            .unwrap();
        assert_eq!(status_of(cms.get("held").await).code, 404);
    });
}

#[test]
fn status_patches_touch_only_status_and_merge_lists_by_their_keys() {
    let api = ApiServer::start();
    run(async {
        let pods: Api<Pod> = Api::namespaced(client(&api).await, "default");
        let created = pods
            .create(
                &PostParams::default(),
                &pod("s", json!({ "app": "web" }), Some("n1")),
            )
            .await
            .unwrap();
        let rv: u64 = created.metadata.resource_version.unwrap().parse().unwrap();
        let pp = PatchParams::default();

        // Merge patch of /status: spec and labels in it are ignored.
        let merge = json!({
            "metadata": { "labels": { "app": "changed" } },
            "spec": { "activeDeadlineSeconds": 5 },
            "status": {
                "phase": "Running",
                "conditions": [
                    { "type": "Initialized", "status": "True" },
                    { "type": "Ready", "status": "False" },
                    { "type": "PodScheduled", "status": "True" },
                ],
                "containerStatuses": [
                    { "name": "main", "image": "busybox:1.36", "imageID": "", "ready": false, "restartCount": 0, "state": { "waiting": { "reason": "ContainerCreating" } } },
                ],
            },
        });
        let p = pods
            .patch_status("s", &pp, &Patch::Merge(&merge))
            .await
            .unwrap();
        assert_eq!(p.metadata.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(p.spec.as_ref().unwrap().active_deadline_seconds, None);
        let status = p.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(
            status.qos_class.as_deref(),
            Some("BestEffort"),
            "kept from the old status"
        );
        assert!(p.metadata.resource_version.unwrap().parse::<u64>().unwrap() > rv);

        // Strategic merge patch, as the kubelet sends it: conditions merge by
        // type in $setElementOrder order, containerStatuses (atomic) are replaced.
        let uid = created.metadata.uid.clone().unwrap();
        let strategic = json!({
            "metadata": { "uid": uid },
            "status": {
                "$setElementOrder/conditions": [
                    { "type": "PodScheduled" }, { "type": "Initialized" }, { "type": "Ready" }, { "type": "ContainersReady" },
                ],
                "conditions": [
                    { "type": "Ready", "status": "True" },
                    { "type": "ContainersReady", "status": "True" },
                ],
                "containerStatuses": [
                    { "name": "main", "image": "busybox:1.36", "imageID": "", "ready": true, "restartCount": 0, "started": true, "state": { "running": {} } },
                ],
                "podIPs": [{ "ip": "10.0.0.5" }],
            },
        });
        let p = pods
            .patch_status("s", &pp, &Patch::Strategic(&strategic))
            .await
            .unwrap();
        let status = p.status.unwrap();
        let conditions: Vec<(String, String)> = status
            .conditions
            .unwrap()
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect();
        assert_eq!(
            conditions,
            [
                ("PodScheduled".into(), "True".into()),
                ("Initialized".into(), "True".into()),
                ("Ready".into(), "True".into()),
                ("ContainersReady".into(), "True".into()),
            ]
        );
        let cs = status.container_statuses.unwrap();
        assert_eq!(cs.len(), 1);
        assert!(
            cs[0].ready
                && cs[0].state.as_ref().unwrap().running.is_some()
                && cs[0].state.as_ref().unwrap().waiting.is_none()
        );
        assert_eq!(status.pod_ips.unwrap()[0].ip, "10.0.0.5");

        // $patch: delete removes one element of a keyed list.
        let drop_ready = json!({ "status": { "conditions": [{ "type": "ContainersReady", "$patch": "delete" }] } });
        let p = pods
            .patch_status("s", &pp, &Patch::Strategic(&drop_ready))
            .await
            .unwrap();
        assert_eq!(p.status.unwrap().conditions.unwrap().len(), 3);

        // A patch of the pod itself ignores status; a JSON patch works too.
        let main =
            json!({ "metadata": { "labels": { "extra": "1" } }, "status": { "phase": "Failed" } });
        let p = pods.patch("s", &pp, &Patch::Merge(&main)).await.unwrap();
        assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
        assert_eq!(p.metadata.labels.unwrap()["extra"], "1");
        let ops: json_patch::Patch = serde_json::from_value(json!([{ "op": "replace", "path": "/spec/containers/0/image", "value": "busybox:1.37" }])).unwrap();
        let p = pods.patch("s", &pp, &Patch::<()>::Json(ops)).await.unwrap();
        assert_eq!(
            p.spec.as_ref().unwrap().containers[0].image.as_deref(),
            Some("busybox:1.37")
        );
        assert_eq!(
            p.metadata.generation,
            Some(2),
            "a spec change bumps the generation"
        );
        let forbidden = json!({ "spec": { "nodeName": "n2" } });
        let refused = status_of(pods.patch("s", &pp, &Patch::Merge(&forbidden)).await);
        assert_eq!((refused.code, refused.reason.as_str()), (422, "Invalid"));

        // A patch that changes nothing is no write.
        let before = pods.get("s").await.unwrap().metadata.resource_version;
        let noop = json!({ "metadata": { "labels": { "extra": "1" } } });
        let p = pods
            .patch("s", &pp, &Patch::Strategic(&noop))
            .await
            .unwrap();
        assert_eq!(p.metadata.resource_version, before);

        // Server-side apply is not served.
        let apply = status_of(
            pods.patch("s", &PatchParams::apply("test"), &Patch::Apply(&noop))
                .await,
        );
        assert_eq!(
            (apply.code, apply.reason.as_str()),
            (415, "UnsupportedMediaType")
        );

        let recorded = api.requests();
        let last_status_patch = recorded
            .iter()
            .rfind(|r| r.method == "PATCH" && r.path.ends_with("/status"))
            .unwrap();
        assert_eq!(
            last_status_patch.content_type.as_deref(),
            Some("application/strategic-merge-patch+json")
        );
        assert_eq!(last_status_patch.body.as_ref().unwrap(), &drop_ready);
    });
}

#[test]
fn stale_uids_and_resource_versions_are_refused() {
    let api = ApiServer::start();
    run(async {
        let pods: Api<Pod> = Api::namespaced(client(&api).await, "default");
        let old = pods
            .create(&PostParams::default(), &pod("p", json!({}), Some("n1")))
            .await
            .unwrap();
        pods.delete(
            "p",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let new = pods
            .create(&PostParams::default(), &pod("p", json!({}), Some("n1")))
            .await
            .unwrap();
        assert_ne!(old.metadata.uid, new.metadata.uid);
        let pp = PatchParams::default();

        // A status patch for the deleted instance. The real server takes a
        // patched uid as a change of an immutable field (ValidateObjectMetaUpdate):
        // 422, not the 409 of a PUT's uid precondition.
        let stale =
            json!({ "metadata": { "uid": old.metadata.uid }, "status": { "phase": "Running" } });
        let refused = status_of(pods.patch_status("p", &pp, &Patch::Strategic(&stale)).await);
        assert_eq!((refused.code, refused.reason.as_str()), (422, "Invalid"));
        assert!(
            refused.message.contains("metadata.uid"),
            "{}",
            refused.message
        );
        assert_eq!(
            pods.get("p")
                .await
                .unwrap()
                .status
                .unwrap()
                .phase
                .as_deref(),
            Some("Pending")
        );

        // resourceVersion in a patch is a precondition.
        let old_rv = json!({ "metadata": { "resourceVersion": old.metadata.resource_version }, "status": { "phase": "Running" } });
        let conflict = status_of(pods.patch_status("p", &pp, &Patch::Merge(&old_rv)).await);
        assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));

        // A PUT's uid is a precondition.
        let mut put = pods.get("p").await.unwrap();
        put.metadata.uid = old.metadata.uid.clone();
        let conflict = status_of(pods.replace("p", &PostParams::default(), &put).await);
        assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
        assert!(
            conflict
                .message
                .contains("Precondition failed: UID in precondition"),
            "{}",
            conflict.message
        );
    });
}

#[test]
fn lease_updates_race_on_the_resource_version() {
    let api = ApiServer::start();
    run(async {
        let leases: Api<Lease> = Api::namespaced(client(&api).await, "kube-node-lease");
        let lease: Lease = serde_json::from_value(json!({
            "metadata": { "name": "node-1" },
            "spec": { "holderIdentity": "node-1", "leaseDurationSeconds": 40 },
        }))
        .unwrap();
        // A PUT may create a lease.
        let created = leases
            .replace("node-1", &PostParams::default(), &lease)
            .await
            .unwrap();
        assert_eq!(
            created.spec.as_ref().unwrap().lease_duration_seconds,
            Some(40)
        );

        let mut a = leases.get("node-1").await.unwrap();
        let mut b = a.clone();
        a.spec.as_mut().unwrap().renew_time = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now()),
        );
        leases
            .replace("node-1", &PostParams::default(), &a)
            .await
            .unwrap();
        b.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
        let lost = status_of(leases.replace("node-1", &PostParams::default(), &b).await);
        assert_eq!((lost.code, lost.reason.as_str()), (409, "Conflict"));
        assert!(
            lost.message.contains("the object has been modified"),
            "{}",
            lost.message
        );

        // Leases do not allow unconditional updates.
        b.metadata.resource_version = None;
        let invalid = status_of(leases.replace("node-1", &PostParams::default(), &b).await);
        assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
        assert_eq!(
            leases
                .get("node-1")
                .await
                .unwrap()
                .spec
                .unwrap()
                .holder_identity
                .as_deref(),
            Some("node-1")
        );
    });
}

#[test]
fn an_outage_answers_503_and_ends_open_watches() {
    let api = ApiServer::start();
    run(async {
        let pods: Api<Pod> = Api::namespaced(client_without_retries(&api).await, "default");
        let mut events = pods
            .watch(&WatchParams::default(), "0")
            .await
            .unwrap()
            .boxed();
        api.set_available(false);
        assert!(next(&mut events, 5).await.is_none(), "the watch ends");
        let down = status_of(pods.list(&ListParams::default()).await);
        assert_eq!(
            (down.code, down.reason.as_str()),
            (503, "ServiceUnavailable")
        );
        api.set_available(true);
        assert!(pods.list(&ListParams::default()).await.is_ok());
    });
}

#[test]
fn fail_next_fails_exactly_that_many_requests() {
    let api = ApiServer::start();
    run(async {
        let plain = client_without_retries(&api).await;
        let pods: Api<Pod> = Api::namespaced(plain.clone(), "default");
        api.fail_next(1, 429);
        let request = axum::http::Request::get("/api/v1/namespaces/default/pods");
        let raw = plain
            .send(request.body(kube::client::Body::from(vec![])).unwrap())
            .await
            .unwrap();
        assert_eq!(raw.status(), 429);
        assert_eq!(raw.headers()["retry-after"], "1");
        assert!(pods.list(&ListParams::default()).await.is_ok());

        api.fail_next(2, 500);
        assert_eq!(status_of(pods.get("x").await).code, 500);
        assert_eq!(status_of(pods.get("x").await).code, 500);
        assert_eq!(status_of(pods.get("x").await).code, 404);

        // kube's default client retries a 429 after its Retry-After.
        let retrying: Api<Pod> = Api::namespaced(client(&api).await, "default");
        api.fail_next(1, 429);
        assert!(retrying.list(&ListParams::default()).await.is_ok());
        let codes: Vec<u16> = api.requests().iter().map(|r| r.status).collect();
        assert_eq!(codes, [429, 200, 500, 500, 404, 429, 200]);
    });
}

#[test]
fn nodes_keep_status_apart_and_merge_addresses_by_type() {
    let api = ApiServer::start();
    run(async {
        let nodes: Api<Node> = Api::all(client(&api).await);
        // A kubelet registers its node with a status; create keeps it.
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": "n1", "labels": { "kubernetes.io/hostname": "n1" } },
            "status": {
                "capacity": { "cpu": "4", "memory": "8Gi", "pods": "110" },
                "addresses": [{ "type": "InternalIP", "address": "10.0.0.1" }, { "type": "Hostname", "address": "n1" }],
                "conditions": [{ "type": "Ready", "status": "False", "reason": "KubeletNotReady" }],
            },
        }))
        .unwrap();
        let created = nodes.create(&PostParams::default(), &node).await.unwrap();
        let status = created.status.unwrap();
        assert_eq!(
            status.allocatable, status.capacity,
            "allocatable defaults to capacity"
        );
        assert_eq!(status.conditions.unwrap()[0].status, "False");

        let patch = json!({
            "status": {
                "$setElementOrder/addresses": [{ "type": "InternalIP" }, { "type": "Hostname" }],
                "addresses": [{ "type": "InternalIP", "address": "10.0.0.2" }],
                "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady" }],
            },
        });
        let patched = nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
        let status = patched.status.unwrap();
        let addresses: Vec<(String, String)> = status
            .addresses
            .unwrap()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        assert_eq!(
            addresses,
            [
                ("InternalIP".into(), "10.0.0.2".into()),
                ("Hostname".into(), "n1".into())
            ]
        );
        assert_eq!(status.conditions.unwrap()[0].status, "True");

        // An update of the node itself (nodes allow it without a
        // resourceVersion) keeps the status.
        let mut cordon = nodes.get("n1").await.unwrap();
        cordon.metadata.resource_version = None;
        cordon
            .spec
            .get_or_insert_with(Default::default)
            .unschedulable = Some(true);
        cordon.status.as_mut().unwrap().conditions = None;
        let updated = nodes
            .replace("n1", &PostParams::default(), &cordon)
            .await
            .unwrap();
        assert_eq!(updated.status.unwrap().conditions.unwrap().len(), 1);
        let cordoned = nodes
            .list(&ListParams::default().fields("spec.unschedulable=true"))
            .await
            .unwrap();
        assert_eq!(cordoned.items.len(), 1);
    });
}

#[test]
fn events_secrets_and_namespaces_follow_their_own_rules() {
    let api = ApiServer::start();
    run(async {
        let client = client(&api).await;
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let event = |name: &str, ns: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": { "name": name },
                "involvedObject": { "kind": "Pod", "name": "p", "namespace": ns },
                "reason": "Started", "type": "Normal", "source": { "component": "unitlet" },
            }))
            .unwrap()
        };
        events
            .create(&PostParams::default(), &event("e1", "default"))
            .await
            .unwrap();
        let selected = events
            .list(
                &ListParams::default()
                    .fields("involvedObject.name=p,reason=Started,source=unitlet"),
            )
            .await
            .unwrap();
        assert_eq!(selected.items.len(), 1);
        let elsewhere = status_of(
            events
                .create(&PostParams::default(), &event("e2", "kube-system"))
                .await,
        );
        assert_eq!(elsewhere.code, 422, "{}", elsewhere.message);

        // stringData is write-only: it lands in data, base64-encoded.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        let secret = serde_json::from_value(
            json!({ "metadata": { "name": "s" }, "stringData": { "greeting": "hello" } }),
        )
        .unwrap();
        let created = secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        assert_eq!(created.type_.as_deref(), Some("Opaque"));
        assert!(created.string_data.is_none());
        assert_eq!(created.data.unwrap()["greeting"].0, b"hello");

        // A deleted namespace is Terminating (no namespace controller
        // finishes it) and takes no new objects; some may not be deleted.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": "doomed" } })).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
            "doomed"
        );
        assert_eq!(ns.spec.unwrap().finalizers.unwrap(), ["kubernetes"]);
        let terminating = namespaces
            .delete("doomed", &DeleteParams::default())
            .await
            .unwrap()
            .left()
            .unwrap();
        assert_eq!(
            terminating.status.unwrap().phase.as_deref(),
            Some("Terminating")
        );
        let late = status_of(
            Api::<Secret>::namespaced(client.clone(), "doomed")
                .create(&PostParams::default(), &secret)
                .await,
        );
        assert_eq!((late.code, late.reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            status_of(namespaces.delete("doomed", &DeleteParams::default()).await).code,
            409
        );
        assert_eq!(
            status_of(namespaces.delete("default", &DeleteParams::default()).await).code,
            403
        );
    });
}

#[test]
fn lists_page_watches_stream_initial_lists_and_time_out() {
    let api = ApiServer::start();
    run(async {
        let client = client(&api).await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        for name in ["a", "b", "c"] {
            cms.create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap(),
            )
            .await
            .unwrap();
        }
        let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
        let token = first.metadata.continue_.clone().expect("a continue token");
        // A change between pages does not show: the pages are one snapshot.
        api.create(
            "configmaps",
            Some("default"),
            json!({ "metadata": { "name": "d" } }),
        );
        let second = cms
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap();
        let paged: Vec<String> = first
            .items
            .iter()
            .chain(&second.items)
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(paged, ["a", "b", "c"]);
        assert!(second.metadata.continue_.is_none());
        assert_eq!(
            second.metadata.resource_version,
            first.metadata.resource_version
        );

        // kube's streaming-list watcher: initial ADDEDs, then the bookmark
        // that ends them.
        let config = watcher::Config::default().streaming_lists();
        let mut stream = watcher(cms.clone(), config).boxed();
        let mut initial = vec![];
        loop {
            match next(&mut stream, 5).await.unwrap().unwrap() {
                watcher::Event::InitApply(c) => initial.push(c.metadata.name.unwrap()),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(initial, ["a", "b", "c", "d"]);

        // timeoutSeconds ends a watch cleanly.
        let mut short = cms
            .watch(&WatchParams::default().timeout(1), "0")
            .await
            .unwrap()
            .boxed();
        let started = std::time::Instant::now();
        while let Some(event) = next(&mut short, 5).await {
            event.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    });
}

// ----- HTTPS -----

/// The kubeconfig `write` writes: its text, and as kube reads it.
fn kubeconfig_from(write: impl FnOnce(&std::path::Path)) -> (String, Kubeconfig) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    write(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    (text, Kubeconfig::read_from(&path).unwrap())
}

/// A kube client from a kubeconfig, without kube's retries of 429, 503 and 504.
async fn client_from(kubeconfig: Kubeconfig) -> Client {
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

/// The one cluster of a kubeconfig the fixture wrote.
fn cluster(kubeconfig: &mut Kubeconfig) -> &mut kube::config::Cluster {
    kubeconfig.clusters[0].cluster.as_mut().unwrap()
}

/// The one user of a kubeconfig the fixture wrote.
fn user(kubeconfig: &mut Kubeconfig) -> &mut kube::config::AuthInfo {
    kubeconfig.auth_infos[0].auth_info.as_mut().unwrap()
}

/// The rustls error a failed call comes from (io::Error hides its inner
/// error from `source()`: look inside it).
fn tls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a tokio_rustls::rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref() {
            return Some(tls);
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => e.source(),
        };
    }
    None
}

/// The TLS error that failed a call, panicking if the call got an answer.
fn tls_failure<T: std::fmt::Debug>(
    result: kube::Result<T>,
    what: &str,
) -> tokio_rustls::rustls::Error {
    match result {
        Err(kube::Error::Api(status)) => panic!("{what}: the server answered {status:?}"),
        Err(e) => tls_error(&e)
            .unwrap_or_else(|| panic!("{what}: not a TLS error: {e:?}"))
            .clone(),
        Ok(v) => panic!("{what}: succeeded with {v:?}"),
    }
}

/// The status line of `GET /version` with a bearer token over a raw TLS
/// connection to `api` that trusts `ca_pem` and expects the server to be
/// `server_name`, or the error of the handshake or the exchange.
async fn raw_get_version(
    api: &ApiServer,
    ca_pem: &str,
    server_name: &str,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let addr = api.url().strip_prefix("https://").unwrap().to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let request = format!(
        "GET /version HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response.lines().next().unwrap_or("").to_string())
}

#[test]
fn https_serves_a_kube_client_that_trusts_its_ca() {
    let plain = ApiServer::start();
    assert!(plain.url().starts_with("http://127.0.0.1:"));
    assert_eq!(plain.ca_pem(), None);

    let api = ApiServer::start_tls();
    assert!(api.url().starts_with("https://127.0.0.1:"), "{}", api.url());
    let ca = api.ca_pem().expect("an HTTPS server has a CA");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert_ne!(
        Some(ca.clone()),
        ApiServer::start_tls().ca_pem(),
        "a fresh CA each time"
    );

    let (text, kubeconfig) = kubeconfig_from(|p| api.write_kubeconfig(p));
    assert!(text.contains(&format!("server: {}\n", api.url())), "{text}");
    assert!(text.contains("token: test-token"), "{text}");
    let ca_data = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.certificate_authority_data.clone())
        .expect("certificate-authority-data");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(ca_data)
        .unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), ca);

    run(async {
        let client = client_from(kubeconfig).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let default = namespaces.get("default").await.unwrap();
        assert_eq!(default.metadata.name.as_deref(), Some("default"));
        let pods: Api<Pod> = Api::namespaced(client, "default");
        pods.create(&PostParams::default(), &pod("a", json!({}), None))
            .await
            .unwrap();
        assert_eq!(
            names(&pods.list(&ListParams::default()).await.unwrap().items),
            ["a"]
        );
    });
    let seen: Vec<_> = api
        .requests()
        .into_iter()
        .map(|r| (r.method, r.status, r.user))
        .collect();
    assert_eq!(
        seen,
        [
            ("GET".to_string(), 200, None),
            ("POST".to_string(), 201, None),
            ("GET".to_string(), 200, None),
        ],
        "a bearer token names no user"
    );
}

#[test]
fn the_serving_certificate_names_the_loopback_addresses_and_localhost() {
    let api = ApiServer::start_tls();
    let ca = api.ca_pem().unwrap();
    let other_ca = ApiServer::start_tls().ca_pem().unwrap();
    run(async {
        for name in ["127.0.0.1", "::1", "localhost"] {
            let status = raw_get_version(&api, &ca, name).await;
            assert_eq!(status.unwrap(), "HTTP/1.1 200 OK", "as {name}");
        }
        // The client checks the name and the CA: both can fail.
        use tokio_rustls::rustls::{CertificateError, Error};
        let err = raw_get_version(&api, &ca, "kubernetes.default.svc")
            .await
            .unwrap_err();
        assert!(
            matches!(
                tls_error(&err).unwrap(),
                Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err}"
        );
        let err = raw_get_version(&api, &other_ca, "127.0.0.1")
            .await
            .unwrap_err();
        assert!(
            matches!(
                tls_error(&err).unwrap(),
                Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{err}"
        );
    });
    assert_eq!(api.requests().len(), 3);
}

#[test]
fn https_refuses_a_client_that_does_not_trust_its_ca() {
    use tokio_rustls::rustls::{CertificateError, Error};
    let api = ApiServer::start_tls();
    let other = ApiServer::start_tls();
    let (_, mut kubeconfig) = kubeconfig_from(|p| api.write_kubeconfig(p));
    let (_, trusting_other) = kubeconfig_from(|p| other.write_kubeconfig(p));
    cluster(&mut kubeconfig).certificate_authority_data = trusting_other.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .certificate_authority_data
        .clone();
    run(async {
        let namespaces: Api<Namespace> = Api::all(client_from(kubeconfig).await);
        let failed = tls_failure(
            namespaces.get("default").await,
            "a client trusting another CA",
        );
        assert_eq!(
            failed,
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
    });
    assert!(api.requests().is_empty(), "{:?}", api.requests());
}

#[test]
fn a_client_certificate_from_another_ca_fails_the_handshake() {
    use tokio_rustls::rustls::{AlertDescription, Error};
    let api = ApiServer::start_tls();
    let other = ApiServer::start_tls();
    let (_, mut kubeconfig) = kubeconfig_from(|p| api.write_kubeconfig(p));
    let (_, foreign) = kubeconfig_from(|p| other.write_kubeconfig_client_cert(p, "system:node:n1"));
    *user(&mut kubeconfig) = foreign.auth_infos[0].auth_info.clone().unwrap();
    assert!(user(&mut kubeconfig).client_certificate_data.is_some());
    run(async {
        let namespaces: Api<Namespace> = Api::all(client_from(kubeconfig).await);
        // TLS 1.3: the client learns of it from the server's alert.
        let failed = tls_failure(
            namespaces.get("default").await,
            "a certificate from another CA",
        );
        assert_eq!(failed, Error::AlertReceived(AlertDescription::UnknownCA));
    });
    assert!(api.requests().is_empty(), "{:?}", api.requests());
    // The same certificate is good where its CA is.
    let (_, own) = kubeconfig_from(|p| other.write_kubeconfig_client_cert(p, "system:node:n1"));
    run(async {
        let namespaces: Api<Namespace> = Api::all(client_from(own).await);
        namespaces.get("default").await.unwrap();
    });
}

#[test]
fn a_client_certificate_authenticates_as_its_common_name() {
    let api = ApiServer::start_tls();
    let (text, kubeconfig) =
        kubeconfig_from(|p| api.write_kubeconfig_client_cert(p, "system:node:n1"));
    assert!(text.contains("client-certificate-data: "), "{text}");
    assert!(text.contains("client-key-data: "), "{text}");
    assert!(text.contains("certificate-authority-data: "), "{text}");
    assert!(!text.contains("token"), "{text}");
    let (_, mut anonymous) = kubeconfig_from(|p| api.write_kubeconfig(p));
    user(&mut anonymous).token = None;
    run(async {
        let nodes: Api<Node> = Api::all(client_from(kubeconfig).await);
        let node: Node = serde_json::from_value(json!({ "metadata": { "name": "n1" } })).unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        nodes.get("n1").await.unwrap();

        // Neither a certificate nor a token: 401, as a real server with
        // anonymous requests off answers.
        let nodes: Api<Node> = Api::all(client_from(anonymous).await);
        let refused = status_of(nodes.get("n1").await);
        assert_eq!(
            (refused.code, refused.reason.as_str()),
            (401, "Unauthorized")
        );
    });
    let seen: Vec<_> = api
        .requests()
        .into_iter()
        .map(|r| (r.method, r.status, r.user))
        .collect();
    let node = Some("system:node:n1".to_string());
    assert_eq!(
        seen,
        [
            ("POST".to_string(), 201, node.clone()),
            ("GET".to_string(), 200, node),
            ("GET".to_string(), 401, None),
        ]
    );
}

// ----- persistent volumes, claims, service accounts and tokens -----

fn pv(name: &str, path: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "tier": "local" } },
        "spec": {
            "capacity": { "storage": "1Gi" },
            "accessModes": ["ReadWriteOnce"],
            "hostPath": { "path": path },
        },
    }))
    .unwrap()
}

fn pvc(name: &str, storage: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": storage } },
        },
    }))
    .unwrap()
}

fn names_of<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items
        .iter()
        .map(|o| o.meta().name.clone().unwrap())
        .collect()
}

/// The (type, name) of the next `n` watch events that are not bookmarks.
async fn changes<S, K>(stream: &mut S, n: usize) -> Vec<(String, String)>
where
    S: Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
    K: kube::Resource,
{
    let mut seen = vec![];
    for _ in 0..n {
        let (kind, name, _) = next_change(stream).await;
        seen.push((kind, name));
    }
    seen
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// `(HTTP status, JSON body)` of a raw request through `client`.
async fn raw(client: &Client, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        vec![]
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(body))
        .unwrap();
    let response = client.send(request).await.unwrap();
    let code = response.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[test]
fn persistent_volumes_are_cluster_objects_with_a_status_subresource() {
    let api = ApiServer::start();
    run(async {
        let client = client(&api).await;
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        let pp = PostParams::default();
        let from = pvs
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let mut watch = pvs
            .watch(&WatchParams::default().timeout(20), &from)
            .await
            .unwrap()
            .boxed();

        // What the server fills in: SetDefaults_PersistentVolume, and a
        // status of its own (PrepareForCreate drops the one sent).
        let mut sent = pv("a", "/srv/a");
        sent.status = Some(serde_json::from_value(json!({ "phase": "Bound" })).unwrap());
        let a = pvs.create(&pp, &sent).await.unwrap();
        assert!(a.metadata.namespace.is_none());
        assert_eq!(a.metadata.uid.as_ref().unwrap().len(), 36);
        let spec = a.spec.as_ref().unwrap();
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        assert_eq!(spec.host_path.as_ref().unwrap().type_.as_deref(), Some(""));
        let status = a.status.clone().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert!(status.last_phase_transition_time.is_some());
        api.create(
            "persistentvolumes",
            None,
            serde_json::to_value(pv("b", "/srv/b")).unwrap(),
        );

        // Lists, field selectors (metadata.name and the legacy `name`; a
        // cluster object has no metadata.namespace field), get.
        let list = |f: &str| {
            let pvs = pvs.clone();
            let lp = ListParams::default().fields(f);
            async move { names_of(&pvs.list(&lp).await.unwrap().items) }
        };
        assert_eq!(list("").await, ["a", "b"]);
        assert_eq!(list("metadata.name=b").await, ["b"]);
        assert_eq!(list("name!=b").await, ["a"]);
        let bad = status_of(
            pvs.list(&ListParams::default().fields("metadata.namespace=default"))
                .await,
        );
        assert_eq!(bad.code, 400, "{}", bad.message);
        assert_eq!(pvs.get("a").await.unwrap().metadata.uid, a.metadata.uid);
        let (code, _) = raw(
            &client,
            "GET",
            "/api/v1/namespaces/default/persistentvolumes",
            Value::Null,
        )
        .await;
        assert_eq!(code, 404, "persistentvolumes are not namespaced");

        // ValidatePersistentVolumeSpec.
        let invalid = |body: Value| {
            let pvs = pvs.clone();
            async move {
                let pv: PersistentVolume = serde_json::from_value(body).unwrap();
                let s = status_of(pvs.create(&PostParams::default(), &pv).await);
                assert_eq!(
                    (s.code, s.reason.as_str()),
                    (422, "Invalid"),
                    "{}",
                    s.message
                );
                s.message
            }
        };
        let empty = invalid(json!({ "metadata": { "name": "empty" } })).await;
        for part in [
            "PersistentVolume \"empty\" is invalid: [",
            "spec.accessModes: Required value",
            "spec.capacity: Required value",
            "spec: Required value: must specify a volume type",
        ] {
            assert!(empty.contains(part), "{part:?} not in {empty}");
        }
        let mut two = serde_json::to_value(pv("two", "/srv/two")).unwrap();
        two["spec"]["nfs"] = json!({ "server": "nfs.example", "path": "/export" });
        let two = invalid(two).await;
        assert!(
            two.ends_with("spec.nfs: Forbidden: may not specify more than 1 volume type"),
            "{two}"
        );
        let mut local = serde_json::to_value(pv("local", "/x")).unwrap();
        local["spec"] = json!({
            "capacity": { "storage": "1Gi" },
            "accessModes": ["ReadWriteOnce", "Sometimes"],
            "local": { "path": "/mnt/disk" },
        });
        let local = invalid(local).await;
        assert!(
            local
                .contains("spec.nodeAffinity: Required value: Local volume requires node affinity"),
            "{local}"
        );
        assert!(
            local.contains("spec.accessModes: Unsupported value: \"Sometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\""),
            "{local}"
        );

        // A PUT keeps the status and may not move the volume.
        let mut changed = pvs.get("a").await.unwrap();
        changed.metadata.labels = Some([("tier".to_string(), "fast".to_string())].into());
        changed.status.as_mut().unwrap().phase = Some("Available".into());
        let updated = pvs.replace("a", &pp, &changed).await.unwrap();
        assert_eq!(updated.metadata.labels.as_ref().unwrap()["tier"], "fast");
        assert_eq!(updated.status.as_ref().unwrap(), &status);
        let mut moved = updated.clone();
        moved
            .spec
            .as_mut()
            .unwrap()
            .host_path
            .as_mut()
            .unwrap()
            .path = "/srv/c".into();
        let immutable = status_of(pvs.replace("a", &pp, &moved).await);
        assert_eq!(immutable.code, 422);
        assert!(
            immutable
                .message
                .contains("spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation"),
            "{}",
            immutable.message
        );

        // /status: only the status changes; a phase change without a new
        // transition time gets one (PersistentVolumeLastPhaseTransitionTime).
        let mut dated = updated.clone();
        let long_ago = "2020-01-01T00:00:00Z";
        dated.status.as_mut().unwrap().last_phase_transition_time =
            Some(serde_json::from_value(json!(long_ago)).unwrap());
        dated.spec.as_mut().unwrap().capacity = Some(
            [(
                "storage".to_string(),
                serde_json::from_value(json!("5Gi")).unwrap(),
            )]
            .into(),
        );
        let dated = pvs.replace_status("a", &pp, &dated).await.unwrap();
        let lptt = |pv: &PersistentVolume| {
            serde_json::to_value(&pv.status.as_ref().unwrap().last_phase_transition_time).unwrap()
        };
        assert_eq!(lptt(&dated), json!(long_ago));
        assert_eq!(dated.spec, updated.spec, "a status write leaves the spec");
        let available = pvs
            .patch_status(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "spec": { "persistentVolumeReclaimPolicy": "Delete" },
                    "status": { "phase": "Available" },
                })),
            )
            .await
            .unwrap();
        assert_eq!(
            available.status.as_ref().unwrap().phase.as_deref(),
            Some("Available")
        );
        assert_ne!(lptt(&available), json!(long_ago));
        assert_eq!(
            available
                .spec
                .unwrap()
                .persistent_volume_reclaim_policy
                .as_deref(),
            Some("Retain")
        );
        assert_eq!(
            api.get("persistentvolumes", None, "a").unwrap()["status"]["phase"],
            "Available"
        );

        // DELETE answers the object (ReturnDeletedObject).
        let deleted = pvs
            .delete("a", &DeleteParams::default())
            .await
            .unwrap()
            .left()
            .expect("the deleted PersistentVolume");
        assert_eq!(deleted.metadata.uid, a.metadata.uid);
        assert!(api.get("persistentvolumes", None, "a").is_none());

        assert_eq!(
            changes(&mut watch, 6).await,
            pairs(&[
                ("ADDED", "a"),
                ("ADDED", "b"),
                ("MODIFIED", "a"),
                ("MODIFIED", "a"),
                ("MODIFIED", "a"),
                ("DELETED", "a"),
            ])
        );
    });
}

#[test]
fn persistent_volume_claims_are_namespaced_and_immutable_but_for_binding() {
    let api = ApiServer::start();
    run(async {
        let client = client(&api).await;
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
        let pp = PostParams::default();
        let mut watch = pvcs
            .watch(
                &WatchParams::default()
                    .fields("metadata.name=data")
                    .timeout(20),
                "0",
            )
            .await
            .unwrap()
            .boxed();

        let data = pvcs.create(&pp, &pvc("data", "1Gi")).await.unwrap();
        assert_eq!(data.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            data.spec.as_ref().unwrap().volume_mode.as_deref(),
            Some("Filesystem")
        );
        assert_eq!(
            data.status.as_ref().unwrap().phase.as_deref(),
            Some("Pending")
        );
        pvcs.create(&pp, &pvc("logs", "2Gi")).await.unwrap();
        api.create(
            "namespaces",
            None,
            json!({ "metadata": { "name": "other" } }),
        );
        api.create(
            "persistentvolumeclaims",
            Some("other"),
            serde_json::to_value(pvc("data", "1Gi")).unwrap(),
        );

        // ValidatePersistentVolumeClaimSpec; NamespaceLifecycle.
        let refused = |claim: Value, ns: &str| {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(pvcs.clone().into_client(), ns);
            async move {
                let claim: PersistentVolumeClaim = serde_json::from_value(claim).unwrap();
                status_of(pvcs.create(&PostParams::default(), &claim).await)
            }
        };
        let bare = refused(json!({ "metadata": { "name": "bare" } }), "default").await;
        assert_eq!((bare.code, bare.reason.as_str()), (422, "Invalid"));
        assert_eq!(
            bare.message,
            "PersistentVolumeClaim \"bare\" is invalid: [spec.accessModes: Required value: at least 1 access mode is required, spec.resources[storage]: Required value]"
        );
        let zero = refused(serde_json::to_value(pvc("zero", "0")).unwrap(), "default").await;
        assert_eq!(
            zero.message,
            "PersistentVolumeClaim \"zero\" is invalid: spec.resources[storage]: Invalid value: \"0\": must be greater than zero"
        );
        let nowhere = refused(serde_json::to_value(pvc("x", "1Gi")).unwrap(), "nowhere").await;
        assert_eq!(
            (nowhere.code, nowhere.message.as_str()),
            (404, "namespaces \"nowhere\" not found")
        );

        // Field selectors across namespaces.
        let all: Api<PersistentVolumeClaim> = Api::all(client.clone());
        let select = |f: &str| {
            let all = all.clone();
            let lp = ListParams::default().fields(f);
            async move {
                all.list(&lp)
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .map(|c| {
                        format!(
                            "{}/{}",
                            c.metadata.namespace.as_deref().unwrap(),
                            c.metadata.name.as_deref().unwrap()
                        )
                    })
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            select("").await,
            ["default/data", "default/logs", "other/data"]
        );
        assert_eq!(
            select("metadata.name=data").await,
            ["default/data", "other/data"]
        );
        assert_eq!(select("metadata.namespace=other").await, ["other/data"]);
        assert_eq!(
            select("metadata.namespace=default,name!=data").await,
            ["default/logs"]
        );

        // The spec is immutable, but a claim binds to a volume once.
        let mut wider = data.clone();
        wider.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteMany".into()]);
        let immutable = status_of(pvcs.replace("data", &pp, &wider).await);
        assert_eq!(immutable.code, 422);
        assert_eq!(
            immutable.message,
            "PersistentVolumeClaim \"data\" is invalid: spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
        );
        let bind = |volume: &str| Patch::Merge(json!({ "spec": { "volumeName": volume } }));
        let bound = pvcs
            .patch("data", &PatchParams::default(), &bind("pv-1"))
            .await
            .unwrap();
        assert_eq!(bound.spec.unwrap().volume_name.as_deref(), Some("pv-1"));
        let rebind = status_of(
            pvcs.patch("data", &PatchParams::default(), &bind("pv-2"))
                .await,
        );
        assert_eq!(rebind.code, 422, "{}", rebind.message);
        // Growing is for bound claims only.
        let grow = |size: &str| {
            Patch::Merge(json!({ "spec": { "resources": { "requests": { "storage": size } } } }))
        };
        let early = status_of(
            pvcs.patch("data", &PatchParams::default(), &grow("2Gi"))
                .await,
        );
        assert_eq!(early.code, 422, "{}", early.message);

        // /status, its conditions merged by type.
        let condition = |kind: &str| {
            Patch::Strategic(json!({
                "status": {
                    "phase": "Bound",
                    "accessModes": ["ReadWriteOnce"],
                    "capacity": { "storage": "1Gi" },
                    "conditions": [{ "type": kind, "status": "True" }],
                },
            }))
        };
        pvcs.patch_status("data", &PatchParams::default(), &condition("Resizing"))
            .await
            .unwrap();
        let status = pvcs
            .patch_status(
                "data",
                &PatchParams::default(),
                &condition("FileSystemResizePending"),
            )
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(status.phase.as_deref(), Some("Bound"));
        let kinds: Vec<String> = status
            .conditions
            .unwrap()
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(kinds, ["Resizing", "FileSystemResizePending"]);
        let grown = pvcs
            .patch("data", &PatchParams::default(), &grow("2Gi"))
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(
                &grown.spec.unwrap().resources.unwrap().requests.unwrap()["storage"]
            )
            .unwrap(),
            "2Gi"
        );
        assert_eq!(
            grown.status.unwrap().phase.as_deref(),
            Some("Bound"),
            "a spec write keeps the status"
        );
        let shrunk = status_of(
            pvcs.patch("data", &PatchParams::default(), &grow("1Gi"))
                .await,
        );
        assert_eq!(
            shrunk.message,
            "PersistentVolumeClaim \"data\" is invalid: spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"
        );

        let deleted = pvcs
            .delete("data", &DeleteParams::default())
            .await
            .unwrap()
            .left()
            .expect("the deleted PersistentVolumeClaim");
        assert_eq!(deleted.metadata.uid, data.metadata.uid);
        assert_eq!(
            changes(&mut watch, 6).await,
            pairs(&[
                ("ADDED", "data"),
                ("MODIFIED", "data"),
                ("MODIFIED", "data"),
                ("MODIFIED", "data"),
                ("MODIFIED", "data"),
                ("DELETED", "data"),
            ])
        );
        let (code, discovery) = raw(&client, "GET", "/api/v1", Value::Null).await;
        assert_eq!(code, 200);
        let served: Vec<&str> = discovery["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for name in [
            "persistentvolumes",
            "persistentvolumes/status",
            "persistentvolumeclaims",
            "persistentvolumeclaims/status",
            "serviceaccounts",
            "serviceaccounts/token",
        ] {
            assert!(served.contains(&name), "{name} not in {served:?}");
        }
    });
}

/// The claims of a JWT, decoded here (not by the fixture).
fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {token}");
    let decode = |part: &str| -> Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap_or_else(|e| panic!("not base64url ({e}): {part}"));
        serde_json::from_slice(&bytes).unwrap()
    };
    assert_eq!(decode(parts[0])["alg"], "HS256");
    decode(parts[1])
}

fn token_request(
    audiences: &[&str],
    seconds: Option<i64>,
    pod: Option<(&str, &str)>,
) -> TokenRequest {
    TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            expiration_seconds: seconds,
            bound_object_ref: pod.map(|(name, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A service account `name` in `default`, and a pod `pod` running as it on
/// node `node-1` (which exists).
fn service_account_and_pod(api: &ApiServer, name: &str, pod: &str) -> (Value, Value) {
    let sa = api.create(
        "serviceaccounts",
        Some("default"),
        json!({ "metadata": { "name": name } }),
    );
    if api.get("nodes", None, "node-1").is_none() {
        api.create("nodes", None, json!({ "metadata": { "name": "node-1" } }));
    }
    let pod = api.create(
        "pods",
        Some("default"),
        json!({
            "metadata": { "name": pod },
            "spec": {
                "serviceAccountName": name,
                "nodeName": "node-1",
                "containers": [{ "name": "c", "image": "busybox" }],
            },
        }),
    );
    (sa, pod)
}

fn uid_of(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap()
}

#[test]
fn service_accounts_are_served_like_other_objects() {
    let api = ApiServer::start();
    run(async {
        let sas: Api<ServiceAccount> = Api::namespaced(client(&api).await, "default");
        let pp = PostParams::default();
        let sa: ServiceAccount = serde_json::from_value(json!({
            "metadata": { "name": "builder" },
            // cleanSecretReferences: only names are kept.
            "secrets": [{ "name": "s1", "namespace": "elsewhere", "uid": "u" }],
        }))
        .unwrap();
        let created = sas.create(&pp, &sa).await.unwrap();
        assert_eq!(
            serde_json::to_value(&created.secrets).unwrap(),
            json!([{ "name": "s1" }])
        );
        let patched = sas
            .patch(
                "builder",
                &PatchParams::default(),
                &Patch::Strategic(json!({ "secrets": [{ "name": "s2" }] })),
            )
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(&patched.secrets).unwrap(),
            json!([{ "name": "s1" }, { "name": "s2" }]),
            "secrets merge by name"
        );
        api.create(
            "serviceaccounts",
            Some("default"),
            json!({ "metadata": { "name": "other" } }),
        );
        let selected = sas
            .list(&ListParams::default().fields("metadata.name=other"))
            .await
            .unwrap();
        assert_eq!(names_of(&selected.items), ["other"]);
        let gone = sas
            .delete("builder", &DeleteParams::default())
            .await
            .unwrap()
            .left()
            .expect("the deleted ServiceAccount");
        assert_eq!(gone.metadata.uid, created.metadata.uid);
        assert_eq!(
            status_of(sas.get("builder").await).message,
            "serviceaccounts \"builder\" not found"
        );
    });
}

#[test]
fn token_requests_issue_fresh_pod_bound_jwts_and_are_recorded() {
    let api = ApiServer::start();
    let (sa, pod) = service_account_and_pod(&api, "runner", "web");
    let node_uid = uid_of(&api.get("nodes", None, "node-1").unwrap()).to_string();
    run(async {
        let sas: Api<ServiceAccount> = Api::namespaced(client(&api).await, "default");
        let request = token_request(
            &["vault", "https://example.com"],
            Some(1200),
            Some(("web", uid_of(&pod))),
        );
        let issued = sas
            .create_token_request("runner", &PostParams::default(), &request)
            .await
            .unwrap();
        assert_eq!(api.requests().last().unwrap().status, 201);
        assert_eq!(
            api.requests().last().unwrap().path,
            "/api/v1/namespaces/default/serviceaccounts/runner/token"
        );

        // The spec is echoed, the metadata names the service account.
        assert_eq!(issued.spec, request.spec);
        assert_eq!(issued.metadata.name.as_deref(), Some("runner"));
        assert_eq!(issued.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(issued.metadata.uid.as_deref(), Some(uid_of(&sa)));
        let status = issued.status.unwrap();
        let token = status.token.unwrap();
        let claims = jwt_claims(&token);
        assert_eq!(claims["aud"], json!(["vault", "https://example.com"]));
        assert_eq!(claims["sub"], "system:serviceaccount:default:runner");
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert_eq!(exp - iat, 1200);
        assert_eq!(claims["nbf"], claims["iat"]);
        let now = jiff::Timestamp::now().as_second();
        assert!((now - 5..=now).contains(&iat), "iat {iat}, now {now}");
        let expires = status.expiration_timestamp.unwrap().0.as_second();
        assert_eq!(
            expires, exp,
            "status.expirationTimestamp is the token's exp"
        );
        assert_eq!(
            claims["kubernetes.io"],
            json!({
                "namespace": "default",
                "serviceaccount": { "name": "runner", "uid": uid_of(&sa) },
                "pod": { "name": "web", "uid": uid_of(&pod) },
                "node": { "name": "node-1", "uid": node_uid },
            })
        );
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() == 36));
        assert_eq!(api.verify_token(&token), Some(claims.clone()));
        let forged = format!("{}x", &token[..token.len() - 1]);
        assert_eq!(api.verify_token(&forged), None);

        // Each request gets a new token.
        let again = sas
            .create_token_request("runner", &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token
            .unwrap();
        assert_ne!(again, token);
        let again_claims = jwt_claims(&again);
        assert_ne!(again_claims["jti"], claims["jti"]);
        assert!(again_claims["iat"].as_i64().unwrap() >= iat);

        let records = api.token_requests();
        assert_eq!(records.len(), 2);
        let first = &records[0];
        assert_eq!(
            (first.namespace.as_str(), first.service_account.as_str()),
            ("default", "runner")
        );
        assert_eq!(first.service_account_uid, uid_of(&sa));
        assert_eq!(first.audiences, ["vault", "https://example.com"]);
        assert_eq!(first.expiration_seconds, 1200);
        let bound = first.bound_pod().expect("bound to the pod");
        assert_eq!(
            (bound.name.as_str(), bound.uid.as_str()),
            ("web", uid_of(&pod))
        );
        assert_eq!(first.issued_at.as_second(), iat);
        assert_eq!(first.expiration_timestamp.as_second(), exp);
        assert_eq!(
            (first.token.as_str(), records[1].token.as_str()),
            (token.as_str(), again.as_str())
        );
        assert_eq!(first.jti, claims["jti"].as_str().unwrap());
    });
}

#[test]
fn token_requests_default_to_an_hour_for_the_api_audience() {
    let api = ApiServer::start();
    let (_, pod) = service_account_and_pod(&api, "default", "p");
    run(async {
        let client = client(&api).await;
        // A raw body with no kind, apiVersion, audiences or expiration.
        let (code, body) = raw(
            &client,
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/default/token",
            json!({ "spec": {} }),
        )
        .await;
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["kind"], "TokenRequest");
        assert_eq!(body["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(
            body["spec"],
            json!({ "audiences": [API_AUDIENCE], "expirationSeconds": 3600 })
        );
        assert!(body["metadata"]["creationTimestamp"].is_string());
        let claims = jwt_claims(body["status"]["token"].as_str().unwrap());
        assert_eq!(claims["aud"], json!([API_AUDIENCE]));
        assert_eq!(claims["iss"], API_AUDIENCE);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            3600
        );
        assert!(claims["kubernetes.io"].get("pod").is_none());
        let expires: jiff::Timestamp = body["status"]["expirationTimestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(expires.as_second(), claims["exp"].as_i64().unwrap());
        let record = &api.token_requests()[0];
        assert_eq!(record.audiences, [API_AUDIENCE]);
        assert_eq!(record.expiration_seconds, 3600);
        assert!(record.bound.is_none());

        // What the kubelet asks for kube-api-access volumes (3607 s, the API
        // audience, bound to a pod) is valid for a year and warns after 3607 s.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let projected = sas
            .create_token_request(
                "default",
                &PostParams::default(),
                &token_request(&[], Some(3607), Some(("p", uid_of(&pod)))),
            )
            .await
            .unwrap();
        let claims = jwt_claims(projected.status.as_ref().unwrap().token.as_ref().unwrap());
        let iat = claims["iat"].as_i64().unwrap();
        assert_eq!(claims["exp"].as_i64().unwrap() - iat, 365 * 24 * 3600);
        assert_eq!(
            claims["kubernetes.io"]["warnafter"].as_i64().unwrap() - iat,
            3607
        );
        assert_eq!(
            projected
                .status
                .unwrap()
                .expiration_timestamp
                .unwrap()
                .0
                .as_second()
                - iat,
            3607,
            "the status still says the time asked for"
        );
    });
}

#[test]
fn token_requests_are_refused_as_the_real_server_refuses_them() {
    let api = ApiServer::start();
    let (_, pod) = service_account_and_pod(&api, "runner", "web");
    api.create(
        "pods",
        Some("default"),
        json!({
            "metadata": { "name": "stranger" },
            "spec": { "containers": [{ "name": "c", "image": "busybox" }] },
        }),
    );
    run(async {
        let client = client(&api).await;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let ask = |sa: &'static str, request: TokenRequest| {
            let sas = sas.clone();
            async move {
                status_of(
                    sas.create_token_request(sa, &PostParams::default(), &request)
                        .await,
                )
            }
        };
        let web = Some(("web", uid_of(&pod)));

        // ValidateTokenRequest: 422, for a TokenRequest with no name.
        let short = ask("runner", token_request(&[], Some(599), web)).await;
        assert_eq!((short.code, short.reason.as_str()), (422, "Invalid"));
        assert_eq!(
            short.message,
            "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes"
        );
        let details = short.details.unwrap();
        assert_eq!(
            (details.group.as_str(), details.kind.as_str()),
            ("authentication.k8s.io", "TokenRequest")
        );
        assert_eq!(details.causes[0].field, "spec.expirationSeconds");
        let long = ask("runner", token_request(&[], Some((1 << 32) + 1), web)).await;
        assert_eq!(long.code, 422, "{}", long.message);
        // Ten minutes is enough.
        sas.create_token_request(
            "runner",
            &PostParams::default(),
            &token_request(&[], Some(600), web),
        )
        .await
        .unwrap();

        let missing = ask("nobody", token_request(&[], None, None)).await;
        assert_eq!(
            (
                missing.code,
                missing.reason.as_str(),
                missing.message.as_str()
            ),
            (404, "NotFound", "serviceaccounts \"nobody\" not found")
        );
        // The service account is looked up before the duration is checked.
        assert_eq!(
            ask("nobody", token_request(&[], Some(60), None)).await.code,
            404
        );

        let no_pod = ask("runner", token_request(&[], None, Some(("gone", "u-1")))).await;
        assert_eq!(
            (no_pod.code, no_pod.message.as_str()),
            (404, "pods \"gone\" not found")
        );
        let recreated = ask("runner", token_request(&[], None, Some(("web", "u-old")))).await;
        assert_eq!(
            (recreated.code, recreated.reason.as_str()),
            (409, "Conflict")
        );
        assert_eq!(
            recreated.message,
            "Operation cannot be fulfilled on Pod \"web\": the UID in the bound object reference (u-old) does not match the UID in record. The object might have been deleted and then recreated"
        );
        let other_sa = ask("runner", token_request(&[], None, Some(("stranger", "")))).await;
        assert_eq!(
            (other_sa.code, other_sa.message.as_str()),
            (400, "cannot bind token for serviceaccount \"runner\" to pod running with different serviceaccount name.")
        );
        let mut to_configmap = token_request(&[], None, web);
        let reference = to_configmap
            .spec
            .as_mut()
            .unwrap()
            .bound_object_ref
            .as_mut()
            .unwrap();
        reference.kind = Some("ConfigMap".into());
        let unbindable = ask("runner", to_configmap).await;
        assert_eq!(
            (unbindable.code, unbindable.message.as_str()),
            (
                400,
                "cannot bind token to object of type /v1, Kind=ConfigMap"
            )
        );
        let mut renamed = token_request(&[], None, web);
        renamed.metadata.name = Some("someone-else".into());
        let renamed = ask("runner", renamed).await;
        assert_eq!(
            (renamed.code, renamed.message.as_str()),
            (422, "TokenRequest.authentication.k8s.io \"runner\" is invalid: metadata.name: Invalid value: \"someone-else\": must match the service account name if specified")
        );

        // Raw requests: other verbs, bodies that do not decode, a missing namespace.
        let path = "/api/v1/namespaces/default/serviceaccounts/runner/token";
        assert_eq!(raw(&client, "GET", path, Value::Null).await.0, 405);
        let (code, body) = raw(
            &client,
            "POST",
            path,
            json!({ "spec": { "expirationSeconds": "long" } }),
        )
        .await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (400, Some("BadRequest")),
            "{body}"
        );
        let (code, body) = raw(
            &client,
            "POST",
            path,
            json!({ "apiVersion": "v1", "kind": "TokenRequest" }),
        )
        .await;
        assert_eq!(code, 400, "{body}");
        let (code, body) = raw(
            &client,
            "POST",
            "/api/v1/namespaces/nowhere/serviceaccounts/runner/token",
            json!({}),
        )
        .await;
        assert_eq!(
            (code, body["message"].as_str()),
            (404, Some("namespaces \"nowhere\" not found"))
        );

        // Only the tokens issued are recorded; every request is in requests().
        let issued = api.token_requests();
        assert_eq!(issued.len(), 1, "{issued:?}");
        assert_eq!(issued[0].expiration_seconds, 600);
        let refused = api
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/token") && r.status >= 400)
            .count();
        assert_eq!(refused, 13);
    });
}

// ----- TokenReview and SubjectAccessReview -----

/// POSTs a TokenReview for `token` (with `audiences` unless empty): the
/// HTTP status and the answer's status.
async fn review_token(client: &Client, token: &str, audiences: &[&str]) -> (u16, Value) {
    let mut spec = json!({ "token": token });
    if !audiences.is_empty() {
        spec["audiences"] = json!(audiences);
    }
    let (code, body) = raw(
        client,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec }),
    )
    .await;
    if code == 201 {
        assert_eq!(body["kind"], "TokenReview", "{body}");
        assert_eq!(body["spec"]["token"], token, "the spec is echoed");
    }
    (code, body["status"].clone())
}

#[test]
fn token_reviews_authenticate_issued_tokens_as_the_real_server() {
    let api = ApiServer::start();
    let (sa, pod) = service_account_and_pod(&api, "runner", "web");
    let node_uid = uid_of(&api.get("nodes", None, "node-1").unwrap()).to_string();
    run(async {
        let client = client(&api).await;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let issue = |audiences: &'static [&'static str]| {
            let sas = sas.clone();
            let uid = uid_of(&pod).to_string();
            async move {
                sas.create_token_request(
                    "runner",
                    &PostParams::default(),
                    &token_request(audiences, None, Some(("web", &uid))),
                )
                .await
                .unwrap()
                .status
                .unwrap()
                .token
                .unwrap()
            }
        };
        let token = issue(&[]).await;
        let jti = jwt_claims(&token)["jti"].as_str().unwrap().to_string();

        // Valid: the service account user, with the bound pod and its node.
        let (code, status) = review_token(&client, &token, &[]).await;
        assert_eq!(code, 201);
        assert_eq!(
            status,
            json!({
                "authenticated": true,
                "user": {
                    "username": "system:serviceaccount:default:runner",
                    "uid": uid_of(&sa),
                    "groups": [
                        "system:serviceaccounts",
                        "system:serviceaccounts:default",
                        "system:authenticated",
                    ],
                    "extra": {
                        "authentication.kubernetes.io/credential-id": [format!("JTI={jti}")],
                        "authentication.kubernetes.io/node-name": ["node-1"],
                        "authentication.kubernetes.io/node-uid": [node_uid],
                        "authentication.kubernetes.io/pod-name": ["web"],
                        "authentication.kubernetes.io/pod-uid": [uid_of(&pod)],
                    },
                },
                "audiences": [API_AUDIENCE],
            })
        );
        let reviews = api
            .requests()
            .into_iter()
            .filter(|r| r.path == "/apis/authentication.k8s.io/v1/tokenreviews")
            .count();
        assert_eq!(reviews, 1);

        // Audiences: the review's must meet the token's.
        let vault = issue(&["vault", "https://example.com"]).await;
        let (_, status) = review_token(&client, &vault, &["vault", "other"]).await;
        assert_eq!(status["authenticated"], true);
        assert_eq!(status["audiences"], json!(["vault"]));
        let (_, status) = review_token(&client, &vault, &[]).await;
        assert_eq!(
            status,
            json!({
                "user": {},
                "error": "[invalid bearer token, token audiences [\"vault\" \"https://example.com\"] is invalid for the target audiences [\"https://kubernetes.default.svc\"]]",
            })
        );
        let (_, status) = review_token(&client, &token, &["vault"]).await;
        assert_eq!(
            status["error"],
            "[invalid bearer token, token audiences [\"https://kubernetes.default.svc\"] is invalid for the target audiences [\"vault\"]]"
        );

        // Expiry, with the minute of leeway the real server allows.
        let claims = api.verify_token(&token).unwrap();
        let now = jiff::Timestamp::now().as_second();
        let at = |exp: i64| {
            let mut c = claims.clone();
            c["exp"] = json!(exp);
            c["iat"] = json!(exp - 3600);
            c["nbf"] = json!(exp - 3600);
            api.sign_token_claims(&c)
        };
        let (_, status) = review_token(&client, &at(now - 30), &[]).await;
        assert_eq!(status["authenticated"], true, "{status}");
        let (_, status) = review_token(&client, &at(now - 90), &[]).await;
        assert_eq!(
            status,
            json!({ "user": {}, "error": "[invalid bearer token, service account token has expired]" })
        );
        let mut future = claims.clone();
        future["nbf"] = json!(now + 600);
        let (_, status) = review_token(&client, &api.sign_token_claims(&future), &[]).await;
        assert_eq!(
            status["error"],
            "[invalid bearer token, service account token is not valid yet]"
        );

        // Garbage and forgeries.
        let (code, status) = review_token(&client, "garbage", &[]).await;
        assert_eq!(code, 201);
        assert_eq!(
            status,
            json!({ "user": {}, "error": "invalid bearer token" })
        );
        let forged = format!("{}x", &token[..token.len() - 2]);
        let (_, status) = review_token(&client, &forged, &[]).await;
        assert_eq!(
            status["error"],
            "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"
        );
        let (code, body) = raw(
            &client,
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            json!({ "spec": {} }),
        )
        .await;
        assert_eq!(
            (code, body["reason"].as_str(), body["message"].as_str()),
            (
                400,
                Some("BadRequest"),
                Some("token is required for TokenReview in authentication")
            )
        );
        assert_eq!(
            raw(
                &client,
                "GET",
                "/apis/authentication.k8s.io/v1/tokenreviews",
                Value::Null
            )
            .await
            .0,
            405
        );

        // The bound pod, recreated: the uid no longer matches.
        api.delete("pods", Some("default"), "web", Some(0));
        let (_, status) = review_token(&client, &token, &[]).await;
        assert_eq!(
            status["error"],
            "[invalid bearer token, service account token has been invalidated]"
        );
        let again = api.create(
            "pods",
            Some("default"),
            json!({
                "metadata": { "name": "web" },
                "spec": {
                    "serviceAccountName": "runner",
                    "nodeName": "node-1",
                    "containers": [{ "name": "c", "image": "busybox" }],
                },
            }),
        );
        let (_, status) = review_token(&client, &token, &[]).await;
        assert_eq!(
            status["error"],
            format!(
                "[invalid bearer token, pod UID ({}) does not match service account pod ref claim ({})]",
                uid_of(&again),
                uid_of(&pod)
            )
        );

        // Static tokens: audience-agnostic, for the API server's audience only.
        api.add_static_token("s3cr3t", "alice", &["devs"]);
        let (_, status) = review_token(&client, "s3cr3t", &[]).await;
        assert_eq!(
            status,
            json!({
                "authenticated": true,
                "user": { "username": "alice", "groups": ["devs", "system:authenticated"] },
                "audiences": [API_AUDIENCE],
            })
        );
        let (_, status) = review_token(&client, "s3cr3t", &["vault"]).await;
        assert_eq!(
            status,
            json!({ "user": {}, "error": "invalid bearer token" })
        );
    });
}

/// POSTs a SubjectAccessReview with `spec`: the HTTP status and the body.
async fn review_access(client: &Client, spec: Value) -> (u16, Value) {
    raw(
        client,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        json!({ "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec }),
    )
    .await
}

#[test]
fn subject_access_reviews_follow_masters_and_the_rules_added() {
    let api = ApiServer::start();
    api.allow("alice", "get", "nodes/proxy");
    api.allow("group:metrics", "get", "nodes/*");
    api.allow("bob", "*", "/metrics");
    run(async {
        let client = client(&api).await;
        let nodes = |verb: &str, sub: &str| json!({ "verb": verb, "resource": "nodes", "subresource": sub, "name": "node-1" });

        let (code, body) = review_access(
            &client,
            json!({ "user": "root", "groups": ["system:masters"], "resourceAttributes": nodes("create", "proxy") }),
        )
        .await;
        assert_eq!(code, 201);
        assert_eq!(body["kind"], "SubjectAccessReview");
        assert_eq!(
            body["status"],
            json!({ "allowed": true }),
            "no reason from the privileged group authorizer"
        );

        let (_, body) = review_access(
            &client,
            json!({ "user": "alice", "groups": ["system:authenticated"], "resourceAttributes": nodes("get", "proxy") }),
        )
        .await;
        assert_eq!(
            body["status"],
            json!({
                "allowed": true,
                "reason": "RBAC: allowed by ClusterRoleBinding \"unitlet-test:allow:1\" of ClusterRole \"unitlet-test:allow:1\" to User \"alice\"",
            })
        );
        // Another verb, another subresource, another user: no opinion.
        for spec in [
            json!({ "user": "alice", "resourceAttributes": nodes("create", "proxy") }),
            json!({ "user": "alice", "resourceAttributes": nodes("get", "stats") }),
            json!({ "user": "carol", "resourceAttributes": nodes("get", "proxy") }),
            json!({ "user": "alice", "resourceAttributes": { "verb": "get", "resource": "nodes", "subresource": "proxy", "group": "apps" } }),
        ] {
            let (code, body) = review_access(&client, spec.clone()).await;
            assert_eq!(code, 201);
            assert_eq!(body["status"], json!({ "allowed": false }), "{spec}");
        }
        let (_, body) = review_access(
            &client,
            json!({ "user": "dave", "groups": ["metrics"], "resourceAttributes": nodes("get", "metrics") }),
        )
        .await;
        assert_eq!(body["status"]["allowed"], true);
        assert!(
            body["status"]["reason"]
                .as_str()
                .unwrap()
                .ends_with("to Group \"metrics\""),
            "{body}"
        );
        let (_, body) = review_access(
            &client,
            json!({ "user": "dave", "groups": ["metrics"], "resourceAttributes": { "verb": "get", "resource": "nodes" } }),
        )
        .await;
        assert_eq!(
            body["status"]["allowed"], false,
            "nodes/* is about subresources"
        );
        let (_, body) = review_access(
            &client,
            json!({ "user": "bob", "nonResourceAttributes": { "path": "/metrics", "verb": "get" } }),
        )
        .await;
        assert_eq!(body["status"]["allowed"], true);

        // Validation, as ValidateSubjectAccessReview words it.
        let (code, body) = review_access(&client, json!({ "user": "x" })).await;
        assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
        assert_eq!(
            body["message"],
            "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"
        );
        let (code, body) = review_access(
            &client,
            json!({ "resourceAttributes": nodes("get", "proxy") }),
        )
        .await;
        assert_eq!(code, 422);
        assert_eq!(
            body["message"],
            "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified"
        );

        // Every review answered is recorded, spec and status.
        let reviews = api.access_reviews();
        assert_eq!(reviews.len(), 9);
        assert_eq!(
            reviews[1]["spec"],
            json!({
                "user": "alice",
                "groups": ["system:authenticated"],
                "resourceAttributes": { "verb": "get", "resource": "nodes", "subresource": "proxy", "name": "node-1" },
            })
        );
        assert_eq!(reviews[1]["status"]["allowed"], true);
    });
}

// ----- a fake kubelet, for the kubelet routes -----

type KubeletBody =
    http_body_util::combinators::BoxBody<hyper::body::Bytes, std::convert::Infallible>;

/// One request a fake kubelet received.
#[derive(Debug, Clone)]
struct KubeletHit {
    method: String,
    path: String,
    query: String,
    headers: axum::http::HeaderMap,
    /// The CN and O of the client certificate that was presented.
    client: (String, String),
}

/// An HTTPS server on 127.0.0.1 standing in for a kubelet: its serving
/// certificate comes from a CA of its own ([`FakeKubelet::ca_pem`]); it
/// requires a client certificate from the CA it is given (a kubelet's
/// `--client-ca-file`), and records who presented it. What it answers
/// depends on the path (see `kubelet_answer`).
struct FakeKubelet {
    port: u16,
    ca_pem: String,
    hits: std::sync::Arc<std::sync::Mutex<Vec<KubeletHit>>>,
    /// Lets a followed log go on past its first line.
    release: std::sync::Arc<tokio::sync::Notify>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKubelet {
    fn start(client_ca_pem: &str) -> FakeKubelet {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use std::sync::Arc;
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "fake-kubelet-ca");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let serving = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(client_ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![serving.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(std::sync::Mutex::new(vec![]));
        let release = Arc::new(tokio::sync::Notify::new());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let (h, r) = (hits.clone(), release.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let (acceptor, hits, release) = (acceptor.clone(), h.clone(), r.clone());
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                            let first = |mut it: Box<
                                dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>,
                            >| {
                                it.next()
                                    .and_then(|a| a.as_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let client = (
                                first(Box::new(cert.subject().iter_common_name())),
                                first(Box::new(cert.subject().iter_organization())),
                            );
                            let service = hyper::service::service_fn(move |req| {
                                kubelet_answer(req, client.clone(), hits.clone(), release.clone())
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                .with_upgrades()
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop => {}
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        FakeKubelet {
            port,
            ca_pem: ca_cert.pem(),
            hits,
            release,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    fn hits(&self) -> Vec<KubeletHit> {
        self.hits.lock().unwrap().clone()
    }

    fn last(&self) -> KubeletHit {
        self.hits().pop().expect("the kubelet saw no request")
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn full(code: u16, text: &str) -> hyper::Response<KubeletBody> {
    use http_body_util::BodyExt;
    hyper::Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(
            http_body_util::Full::new(hyper::body::Bytes::from(text.to_string()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap()
}

/// The fake kubelet's answers. `/containerLogs/<ns>/<pod>/<container>` by
/// container: `waiting` 400, `gone` 404, `boom` 500, `denied` 403, else the
/// logs (for `solo/c` with `follow=true`: `line 1`, then, once released,
/// `line 2`).
/// `/exec`, `/attach` and `/portForward` upgrade (container `refuse`: 403,
/// `plain`: 200) and then write `hello\n` and echo what they read.
/// `/stats/summary` is JSON; anything else 404.
async fn kubelet_answer(
    mut req: hyper::Request<hyper::body::Incoming>,
    client: (String, String),
    hits: std::sync::Arc<std::sync::Mutex<Vec<KubeletHit>>>,
    release: std::sync::Arc<tokio::sync::Notify>,
) -> Result<hyper::Response<KubeletBody>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    hits.lock().unwrap().push(KubeletHit {
        method: req.method().to_string(),
        path: path.clone(),
        query: query.clone(),
        headers: req.headers().clone(),
        client,
    });
    let last = path.rsplit('/').next().unwrap_or("").to_string();
    if path.starts_with("/containerLogs/") {
        return Ok(match last.as_str() {
            "waiting" => full(
                400,
                "container \"waiting\" in pod \"multi\" is waiting to start: ContainerCreating",
            ),
            "gone" => full(404, "container not found"),
            "boom" => full(500, "boom"),
            "denied" => full(
                403,
                "Forbidden (user=someone, verb=get, resource=nodes, subresource(s)=[log])",
            ),
            _ if query.contains("follow=true") && path.ends_with("/solo/c") => {
                let (tx, rx) = tokio::sync::mpsc::channel::<hyper::body::Bytes>(4);
                tokio::spawn(async move {
                    let _ = tx.send(hyper::body::Bytes::from("line 1\n")).await;
                    release.notified().await;
                    let _ = tx.send(hyper::body::Bytes::from("line 2\n")).await;
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| {
                        (
                            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)),
                            rx,
                        )
                    })
                });
                hyper::Response::builder()
                    .header("content-type", "text/plain")
                    .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
                    .unwrap()
            }
            c => full(200, &format!("hello from {c}\n")),
        });
    }
    let streaming = ["/exec/", "/attach/", "/portForward/"]
        .iter()
        .any(|p| path.starts_with(p));
    if streaming {
        match last.as_str() {
            "refuse" => return Ok(full(403, "exec refused")),
            "plain" => return Ok(full(200, "not upgraded")),
            _ => {}
        }
        let Some(upgrade) = req.headers().get("upgrade").cloned() else {
            return Ok(full(400, "Upgrade request required"));
        };
        let mut answer = hyper::Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", upgrade);
        if let Some(v) = req.headers().get("x-stream-protocol-version") {
            answer = answer.header("x-stream-protocol-version", v);
        }
        if let Some(key) = req.headers().get("sec-websocket-key") {
            answer = answer.header(
                "sec-websocket-accept",
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
            );
        }
        if let Some(p) = req.headers().get("sec-websocket-protocol") {
            answer = answer.header("sec-websocket-protocol", p);
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else { return };
            let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
            let _ = w.write_all(b"hello\n").await;
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
        return Ok(answer
            .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
            .unwrap());
    }
    if path == "/stats/summary" {
        let mut r = full(200, "{\"node\":{\"nodeName\":\"node-1\"}}");
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r.headers_mut()
            .insert("access-control-allow-origin", "*".parse().unwrap());
        return Ok(r);
    }
    Ok(full(404, "404 page not found\n"))
}

/// Node `name`, its kubelet at 127.0.0.1:`port` (an InternalIP) behind a
/// Hostname that does not resolve (listed first, as kubelets list it).
fn node_at(api: &ApiServer, name: &str, port: u16) {
    api.create("nodes", None, json!({ "metadata": { "name": name } }));
    let mut node = api.get("nodes", None, name).unwrap();
    node["status"] = json!({
        "addresses": [
            { "type": "Hostname", "address": format!("{name}.invalid") },
            { "type": "InternalIP", "address": "127.0.0.1" },
        ],
        "daemonEndpoints": { "kubeletEndpoint": { "Port": port } },
    });
    api.replace_status("nodes", None, node);
}

/// A pod in `default` on `node` (None: not scheduled) with these containers.
fn pod_on(api: &ApiServer, name: &str, node: Option<&str>, init: &[&str], containers: &[&str]) {
    let list = |names: &[&str]| -> Vec<Value> {
        names
            .iter()
            .map(|n| json!({ "name": n, "image": "busybox" }))
            .collect()
    };
    let mut pod = json!({
        "metadata": { "name": name },
        "spec": { "containers": list(containers) },
    });
    if !init.is_empty() {
        pod["spec"]["initContainers"] = json!(list(init));
    }
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    api.create("pods", Some("default"), pod);
}

/// `GET path` through `client`: status, Content-Type and body text.
async fn get_text(client: &Client, path: &str) -> (u16, String, String) {
    let request = axum::http::Request::get(path)
        .body(kube::client::Body::empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    let code = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        code,
        content_type,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[test]
fn pod_logs_come_from_the_kubelet_through_the_api_servers_kubelet_client() {
    let api = ApiServer::start();
    let kubelet = FakeKubelet::start(&api.kubelet_client_ca_pem());
    node_at(&api, "node-1", kubelet.port);
    pod_on(&api, "solo", Some("node-1"), &[], &["c"]);
    pod_on(
        &api,
        "multi",
        Some("node-1"),
        &["init"],
        &["c", "waiting", "gone", "boom", "denied"],
    );
    pod_on(&api, "unscheduled", None, &[], &["c"]);
    pod_on(&api, "astray", Some("ghost"), &[], &["c"]);
    let log = |pod: &str, query: &str| format!("/api/v1/namespaces/default/pods/{pod}/log{query}");
    run(async {
        let client = client_without_retries(&api).await;

        // The default address types try the Hostname first; it does not resolve.
        let (code, body) = raw(&client, "GET", &log("solo", ""), Value::Null).await;
        assert_eq!(code, 500, "{body}");
        assert!(
            body.get("reason").is_none(),
            "a Go error, no reason: {body}"
        );
        let message = body["message"].as_str().unwrap();
        let url = format!(
            "https://node-1.invalid:{}/containerLogs/default/solo/c",
            kubelet.port
        );
        assert!(
            message.starts_with(&format!("Get \"{url}\": dial tcp: lookup node-1.invalid")),
            "{message}"
        );
        let record = api.requests().pop().unwrap();
        let sent = record.proxy.expect("the attempt is recorded");
        assert_eq!((sent.host.as_str(), sent.status), ("node-1.invalid", None));
        assert!(sent.error.is_some());
        assert!(kubelet.hits().is_empty());
        api.set_kubelet_preferred_address_types(&["InternalIP"]);

        // The options, re-encoded in order; the client certificate kubeadm gives.
        let (code, content_type, text) = get_text(
            &client,
            &log(
                "solo",
                "?timestamps=true&tailLines=10&sinceSeconds=5&limitBytes=100&previous=0&follow=false&pretty=1",
            ),
        )
        .await;
        assert_eq!(
            (code, content_type.as_str(), text.as_str()),
            (200, "text/plain", "hello from c\n")
        );
        let hit = kubelet.last();
        assert_eq!(hit.method, "GET");
        assert_eq!(hit.path, "/containerLogs/default/solo/c");
        assert_eq!(
            hit.query,
            "limitBytes=100&sinceSeconds=5&tailLines=10&timestamps=true"
        );
        assert_eq!(
            hit.client,
            (
                "kube-apiserver-kubelet-client".to_string(),
                "system:masters".to_string()
            )
        );
        assert!(
            hit.headers.get("authorization").is_none(),
            "a fresh request"
        );
        assert_eq!(
            hit.headers.get("host").unwrap(),
            format!("127.0.0.1:{}", kubelet.port).as_str()
        );
        let record = api.requests().pop().unwrap();
        assert_eq!(
            (record.path.as_str(), record.status),
            ("/api/v1/namespaces/default/pods/solo/log", 200)
        );
        assert_eq!(
            record.proxy,
            Some(support::apiserver::Proxied {
                method: "GET".into(),
                scheme: "https".into(),
                host: "127.0.0.1".into(),
                port: kubelet.port,
                path: "/containerLogs/default/solo/c".into(),
                query: "limitBytes=100&sinceSeconds=5&tailLines=10&timestamps=true".into(),
                status: Some(200),
                error: None,
                upgraded: false,
            })
        );
        let (code, _, _) = get_text(
            &client,
            &log(
                "multi",
                "?container=init&sinceTime=2024-01-02T03:04:05.678%2B01:00&follow",
            ),
        )
        .await;
        assert_eq!(code, 200);
        let hit = kubelet.last();
        assert_eq!(hit.path, "/containerLogs/default/multi/init");
        assert_eq!(hit.query, "follow=true&sinceTime=2024-01-02T02%3A04%3A05Z");

        // Refused before any kubelet is asked, in the real server's words.
        let before = kubelet.hits().len();
        let cases = [
            (log("multi", ""), 400, "a container name must be specified for pod multi, choose one of: [init c waiting gone boom denied]"),
            (log("multi", "?container=nope"), 400, "container nope is not valid for pod multi"),
            (log("solo", "?tailLines=-1"), 422, "PodLogOptions \"solo\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"),
            (log("solo", "?sinceSeconds=0"), 422, "PodLogOptions \"solo\" is invalid: sinceSeconds: Invalid value: 0: must be greater than 0"),
            (log("solo", "?sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z"), 422, "PodLogOptions \"solo\" is invalid: : Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"),
            (log("solo", "?tailLines=ten"), 400, "strconv.ParseInt: parsing \"ten\": invalid syntax"),
            (log("nope", ""), 404, "pods \"nope\" not found"),
            (log("astray", ""), 404, "nodes \"ghost\" not found"),
        ];
        for (path, want_code, want) in cases {
            let (code, body) = raw(&client, "GET", &path, Value::Null).await;
            assert_eq!(
                (code, body["message"].as_str()),
                (want_code, Some(want)),
                "{path}"
            );
        }
        assert_eq!(
            raw(&client, "POST", &log("solo", ""), json!({})).await.0,
            405
        );
        let (code, content_type, text) = get_text(&client, &log("unscheduled", "")).await;
        assert_eq!((code, content_type.as_str(), text.as_str()), (204, "", ""));
        assert_eq!(
            kubelet.hits().len(),
            before,
            "none of these reached the kubelet"
        );

        // The kubelet's errors, as GenericHttpResponseChecker turns them into Status.
        let (code, body) = raw(
            &client,
            "GET",
            &log("multi", "?container=waiting"),
            Value::Null,
        )
        .await;
        assert_eq!(
            (code, body["reason"].as_str(), body["message"].as_str()),
            (
                400,
                Some("BadRequest"),
                Some(
                    "container \"waiting\" in pod \"multi\" is waiting to start: ContainerCreating"
                )
            )
        );
        let (code, body) = raw(
            &client,
            "GET",
            &log("multi", "?container=gone"),
            Value::Null,
        )
        .await;
        assert_eq!(
            body,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "the server could not find the requested resource ( pods/log multi)",
                "reason": "NotFound",
                "details": { "name": "multi", "kind": "pods/log" },
                "code": 404,
            })
        );
        assert_eq!(code, 404);
        let (code, body) = raw(
            &client,
            "GET",
            &log("multi", "?container=boom"),
            Value::Null,
        )
        .await;
        assert_eq!(
            (code, body["reason"].as_str(), body["message"].as_str()),
            (
                500,
                Some("InternalError"),
                Some("Internal error occurred: boom")
            )
        );
        let (code, body) = raw(
            &client,
            "GET",
            &log("multi", "?container=denied"),
            Value::Null,
        )
        .await;
        assert_eq!(
            (code, body["reason"].as_str(), body["message"].as_str()),
            (403, Some("Forbidden"), Some("Forbidden (user=someone, verb=get, resource=nodes, subresource(s)=[log]) ( pods/log multi)"))
        );
        assert_eq!(
            api.requests().pop().unwrap().proxy.unwrap().status,
            Some(403)
        );

        // Following: each chunk is passed on as it comes.
        let request = axum::http::Request::get(log("solo", "?follow=true"))
            .body(kube::client::Body::empty())
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), client.send(request))
            .await
            .expect("the answer starts while the kubelet still streams")
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first = tokio::time::timeout(
            Duration::from_secs(5),
            http_body_util::BodyExt::frame(&mut body),
        )
        .await
        .expect("the first line arrives while the kubelet still streams")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
        assert_eq!(&first[..], b"line 1\n");
        assert_eq!(kubelet.last().query, "follow=true");
        kubelet.release.notify_one();
        let rest = tokio::time::timeout(
            Duration::from_secs(5),
            http_body_util::BodyExt::collect(body),
        )
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
        assert_eq!(&rest[..], b"line 2\n");

        // --kubelet-certificate-authority: the kubelet's certificate is checked.
        api.set_kubelet_ca(&api.kubelet_client_ca_pem());
        let (code, body) = raw(&client, "GET", &log("solo", ""), Value::Null).await;
        assert_eq!(code, 500);
        assert_eq!(
            body["message"],
            format!("Get \"https://127.0.0.1:{}/containerLogs/default/solo/c\": tls: failed to verify certificate: x509: certificate signed by unknown authority", kubelet.port)
        );
        let (code, _, _) =
            get_text(&client, &log("solo", "?insecureSkipTLSVerifyBackend=true")).await;
        assert_eq!(code, 200, "the one option that skips the check");
        api.set_kubelet_ca(&kubelet.ca_pem);
        let (code, _, text) = get_text(&client, &log("solo", "")).await;
        assert_eq!((code, text.as_str()), (200, "hello from c\n"));
    });
}

/// Sends `head` (a request without its final blank line) on a new
/// connection to `api`: the answer's head, and the connection with what
/// was read after the head.
async fn raw_upgrade(api: &ApiServer, head: &str) -> (String, tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.url().strip_prefix("http://").unwrap().to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!("{head}Host: {addr}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    (
        String::from_utf8(buf).unwrap().to_ascii_lowercase(),
        tcp,
        rest,
    )
}

/// Reads from `tcp` until `want` bytes (counting `have`) arrived.
async fn read_exactly(tcp: &mut tokio::net::TcpStream, mut have: Vec<u8>, want: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    while have.len() < want {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("more bytes")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&have));
        have.extend_from_slice(&chunk[..n]);
    }
    have
}

#[test]
fn exec_attach_and_port_forward_upgrades_are_spliced_through_to_the_kubelet() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = ApiServer::start();
    let kubelet = FakeKubelet::start(&api.kubelet_client_ca_pem());
    node_at(&api, "node-1", kubelet.port);
    api.set_kubelet_preferred_address_types(&["InternalIP"]);
    pod_on(&api, "solo", Some("node-1"), &[], &["c"]);
    pod_on(
        &api,
        "multi",
        Some("node-1"),
        &[],
        &["a", "refuse", "plain"],
    );
    pod_on(&api, "unscheduled", None, &[], &["c"]);
    run(async {
        // SPDY exec, as kubectl sends it: POST, the protocols it speaks.
        let (head, mut tcp, rest) = raw_upgrade(
            &api,
            "POST /api/v1/namespaces/default/pods/solo/exec?command=sh&command=-c&command=echo%20hi&stdin=true&stdout=1&stderr=false&tty=0&container=c HTTP/1.1\r\n\
             Authorization: Bearer secret\r\n\
             Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io\r\n\
             Content-Length: 0\r\n",
        )
        .await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: spdy/3.1"), "{head}");
        assert!(
            head.contains("x-stream-protocol-version: v4.channel.k8s.io"),
            "{head}"
        );
        // The kubelet writes first; then both directions.
        let hello = read_exactly(&mut tcp, rest, 6).await;
        assert_eq!(&hello, b"hello\n");
        tcp.write_all(b"ping").await.unwrap();
        assert_eq!(read_exactly(&mut tcp, vec![], 4).await, b"ping");
        tcp.write_all(&[0, 1, 2, 255]).await.unwrap();
        assert_eq!(read_exactly(&mut tcp, vec![], 4).await, [0, 1, 2, 255]);
        let hit = kubelet.last();
        assert_eq!(
            (hit.method.as_str(), hit.path.as_str()),
            ("POST", "/exec/default/solo/c")
        );
        assert_eq!(
            hit.query,
            "command=sh&command=-c&command=echo+hi&stdin=1&stdout=1"
        );
        assert_eq!(hit.client.0, "kube-apiserver-kubelet-client");
        assert!(
            hit.headers.get("authorization").is_none(),
            "the token stays with the API server"
        );
        assert_eq!(hit.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
        assert_eq!(
            hit.headers
                .get_all("x-stream-protocol-version")
                .iter()
                .count(),
            2
        );
        let record = api.requests().pop().unwrap();
        assert_eq!(record.status, 101);
        let sent = record.proxy.unwrap();
        assert!(sent.upgraded);
        assert_eq!(
            (sent.path.as_str(), sent.status),
            ("/exec/default/solo/c", Some(101))
        );
        // The client leaves: the kubelet's side ends too, and with it the
        // client's connection.
        tcp.shutdown().await.unwrap();
        let mut tail = vec![];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut tail))
            .await
            .expect("the connection closes")
            .unwrap();

        // WebSocket port-forward: the query's ports become the kubelet's `port`.
        let (head, mut tcp, rest) = raw_upgrade(
            &api,
            "GET /api/v1/namespaces/default/pods/solo/portforward?ports=8080,9090 HTTP/1.1\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n",
        )
        .await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        assert!(
            head.contains("sec-websocket-protocol: v4.channel.k8s.io"),
            "{head}"
        );
        assert_eq!(read_exactly(&mut tcp, rest, 6).await, b"hello\n");
        let hit = kubelet.last();
        assert_eq!(
            (hit.method.as_str(), hit.path.as_str()),
            ("GET", "/portForward/default/solo")
        );
        assert_eq!(hit.query, "port=8080%2C9090");
        assert_eq!(
            hit.headers.get("sec-websocket-key").unwrap(),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        drop(tcp);

        // Attach with the container of a one-container pod defaulted.
        let (head, _tcp, _) = raw_upgrade(
            &api,
            "GET /api/v1/namespaces/default/pods/solo/attach?stdout=true&tty=true HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
        )
        .await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        let hit = kubelet.last();
        assert_eq!(
            (hit.path.as_str(), hit.query.as_str()),
            ("/attach/default/solo/c", "stdout=1&tty=1")
        );

        // A kubelet's error answer is passed through as it is.
        let (head, mut tcp, rest) = raw_upgrade(
            &api,
            "POST /api/v1/namespaces/default/pods/multi/exec?container=refuse&command=true HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
        )
        .await;
        assert!(head.starts_with("http/1.1 403"), "{head}");
        assert!(head.contains("content-type: text/plain"), "{head}");
        let mut body = rest;
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut body))
            .await
            .expect("closed after the answer")
            .unwrap();
        assert!(
            String::from_utf8_lossy(&body).contains("exec refused"),
            "{body:?}"
        );
        assert_eq!(api.requests().pop().unwrap().status, 403);

        let client = client_without_retries(&api).await;
        let exec = |query: &str| format!("/api/v1/namespaces/default/pods/{query}");
        let before = kubelet.hits().len();
        // A success that is not an upgrade is the proxy's error.
        let (head, mut tcp, rest) = raw_upgrade(
            &api,
            "POST /api/v1/namespaces/default/pods/multi/exec?container=plain&command=true HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
        )
        .await;
        assert!(head.starts_with("http/1.1 500"), "{head}");
        let body = read_exactly(&mut tcp, rest, 10).await;
        let _ = body;
        let record = api.requests().pop().unwrap();
        assert_eq!(record.proxy.unwrap().status, Some(200));
        let (code, body) = raw(
            &client,
            "POST",
            &exec("multi/exec?container=plain"),
            Value::Null,
        )
        .await;
        assert_eq!(
            (code, body["message"].as_str()),
            (400, Some("Upgrade request required")),
            "not an upgrade: refused before the kubelet is asked"
        );
        assert_eq!(kubelet.hits().len(), before + 1);
        for (path, want) in [
            (
                "multi/exec?command=true",
                "a container name must be specified for pod multi, choose one of: [a refuse plain]",
            ),
            (
                "multi/attach?container=z",
                "container z is not valid for pod multi",
            ),
            (
                "unscheduled/exec?command=true",
                "pod unscheduled does not have a host assigned",
            ),
            (
                "unscheduled/portforward?ports=80",
                "pod unscheduled does not have a host assigned",
            ),
            (
                "solo/portforward?ports=http",
                "cannot convert to []int32: strconv.ParseUint: parsing \"http\": invalid syntax",
            ),
        ] {
            let (code, body) = raw(&client, "POST", &exec(path), Value::Null).await;
            assert_eq!(
                (code, body["message"].as_str()),
                (400, Some(want)),
                "{path}"
            );
        }
        assert_eq!(
            raw(&client, "PUT", &exec("solo/exec"), json!({})).await.0,
            405
        );
        assert_eq!(kubelet.hits().len(), before + 1);
    });
}

#[test]
fn node_proxy_reaches_the_kubelet_and_passes_its_answers_through() {
    let api = ApiServer::start_tls();
    assert_eq!(
        api.kubelet_client_ca_pem(),
        api.ca_pem().unwrap(),
        "kubeadm's one CA"
    );
    let kubelet = FakeKubelet::start(&api.kubelet_client_ca_pem());
    node_at(&api, "node-1", kubelet.port);
    api.set_kubelet_preferred_address_types(&["InternalIP"]);
    // A node whose kubelet is not listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    node_at(&api, "node-2", closed_port);
    run(async {
        let client = client_without_retries(&api).await;
        let summary = "/api/v1/nodes/node-1/proxy/stats/summary?only_cpu_and_memory=true";

        // The real server does not proxy to loopback addresses.
        let (code, body) = raw(&client, "GET", summary, Value::Null).await;
        assert_eq!(
            (code, body["message"].as_str()),
            (400, Some("address not allowed"))
        );
        assert!(kubelet.hits().is_empty());
        api.set_node_proxy_allows_loopback(true);

        let (code, content_type, text) = get_text(&client, summary).await;
        assert_eq!(
            (code, content_type.as_str(), text.as_str()),
            (
                200,
                "application/json",
                "{\"node\":{\"nodeName\":\"node-1\"}}"
            )
        );
        let hit = kubelet.last();
        assert_eq!(
            (hit.method.as_str(), hit.path.as_str(), hit.query.as_str()),
            ("GET", "/stats/summary", "only_cpu_and_memory=true")
        );
        assert_eq!(
            hit.client,
            (
                "kube-apiserver-kubelet-client".to_string(),
                "system:masters".to_string()
            )
        );
        assert!(hit.headers.get("authorization").is_none());
        assert_eq!(
            hit.headers.get("x-forwarded-uri").unwrap(),
            "/api/v1/nodes/node-1/proxy/stats/summary"
        );
        assert!(hit.headers.get("x-forwarded-for").is_some());
        let sent = api.proxied_requests().pop().unwrap();
        assert_eq!(
            (sent.path.as_str(), sent.query.as_str(), sent.status),
            ("/stats/summary", "only_cpu_and_memory=true", Some(200))
        );

        // Any answer passes through as it is, not as a Status.
        let (code, content_type, text) =
            get_text(&client, "/api/v1/nodes/node-1/proxy/no/such/thing/").await;
        assert_eq!(
            (code, content_type.as_str(), text.as_str()),
            (404, "text/plain; charset=utf-8", "404 page not found\n")
        );
        assert_eq!(kubelet.last().path, "/no/such/thing/");
        let (code, body) = raw(
            &client,
            "POST",
            "/api/v1/nodes/node-1/proxy/a/../stats/summary",
            json!({"x": 1}),
        )
        .await;
        assert_eq!(
            (code, body["node"]["nodeName"].as_str()),
            (200, Some("node-1"))
        );
        let hit = kubelet.last();
        assert_eq!(
            (hit.method.as_str(), hit.path.as_str()),
            ("POST", "/stats/summary")
        );

        // An empty path is redirected; unknown and unreachable nodes.
        let request = axum::http::Request::get("/api/v1/nodes/node-1/proxy?x=1")
            .body(kube::client::Body::empty())
            .unwrap();
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status(), 301);
        assert_eq!(
            response.headers().get("location").unwrap(),
            "/api/v1/nodes/node-1/proxy/?x=1"
        );
        let (code, body) = raw(
            &client,
            "GET",
            "/api/v1/nodes/ghost/proxy/stats/summary",
            Value::Null,
        )
        .await;
        assert_eq!(
            (code, body["message"].as_str()),
            (404, Some("nodes \"ghost\" not found"))
        );
        let (code, body) = raw(
            &client,
            "GET",
            "/api/v1/nodes/node-2/proxy/stats/summary",
            Value::Null,
        )
        .await;
        assert_eq!(
            (code, body["reason"].as_str(), body["message"].as_str()),
            (
                503,
                Some("ServiceUnavailable"),
                Some(format!("error trying to reach service: dial tcp 127.0.0.1:{closed_port}: connect: connection refused").as_str())
            )
        );
        let (code, body) = raw(
            &client,
            "GET",
            "/api/v1/nodes/ftp:node-1:21/proxy/",
            Value::Null,
        )
        .await;
        assert_eq!(
            (code, body["message"].as_str()),
            (400, Some("invalid node request \"ftp:node-1:21\""))
        );
    });
}

// ----- certificate signing requests -----

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;

const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// A PEM CSR from a new key: CN and O, and SANs (IP addresses are parsed
/// as such, the rest are DNS names).
fn csr_pem(cn: &str, org: &str, sans: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    dn.push(rcgen::DnType::OrganizationName, org);
    params.distinguished_name = dn;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn csr_object(name: &str, pem: &str, signer: &str, usages: &[&str]) -> CertificateSigningRequest {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "request": b64(pem.as_bytes()),
            "signerName": signer,
            "usages": usages,
            // The server fills these from the requester, whatever is sent.
            "username": "mallory",
            "groups": ["system:masters"],
        },
    }))
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn serving_csr(name: &str, node: &str) -> CertificateSigningRequest {
    let pem = csr_pem(
        &format!("system:node:{node}"),
        "system:nodes",
        &[&format!("{node}.example"), "10.0.0.1"],
    );
    csr_object(
        name,
        &pem,
        KUBELET_SERVING,
        &["digital signature", "server auth"],
    )
}

/// The 422 causes of a refused call, as (field, reason, message).
fn causes(s: &kube::core::Status) -> Vec<(String, String, String)> {
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
    s.details
        .as_ref()
        .unwrap()
        .causes
        .iter()
        .map(|c| (c.field.clone(), c.reason.clone(), c.message.clone()))
        .collect()
}

fn condition_types(csr: &CertificateSigningRequest) -> Vec<(String, String)> {
    csr.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .map(|c| (c.type_.clone(), c.reason.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn csrs_record_the_requester_and_are_validated_as_the_real_server_validates_them() {
    let api = ApiServer::start_tls();
    let (_, kubeconfig) =
        kubeconfig_from(|p| api.write_kubeconfig_client_cert(p, "system:node:n1"));
    run(async {
        let client = client_from(kubeconfig).await;
        let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
        let mut sent = serving_csr("serving-n1", "n1");
        sent.status = Some(Default::default());
        let created = csrs.create(&PostParams::default(), &sent).await.unwrap();
        let spec = &created.spec;
        assert_eq!(spec.username.as_deref(), Some("system:node:n1"));
        assert_eq!(
            spec.groups.as_deref(),
            Some(
                &[
                    "system:nodes".to_string(),
                    "system:authenticated".to_string()
                ][..]
            )
        );
        assert_eq!(spec.request, sent.spec.request);
        assert!(condition_types(&created).is_empty());
        assert!(created.status.unwrap().certificate.is_none());
        let got = csrs.get("serving-n1").await.unwrap();
        assert_eq!(got.spec.signer_name, KUBELET_SERVING);

        // Field selectors: metadata.name and spec.signerName.
        let other = csr_object(
            "client-n1",
            &csr_pem("system:node:n1", "system:nodes", &[]),
            "kubernetes.io/kube-apiserver-client-kubelet",
            &["client auth"],
        );
        csrs.create(&PostParams::default(), &other).await.unwrap();
        let listed = |items: Vec<CertificateSigningRequest>| -> Vec<String> {
            items
                .into_iter()
                .map(|c| c.metadata.name.unwrap())
                .collect()
        };
        let by_signer = ListParams::default().fields(&format!("spec.signerName={KUBELET_SERVING}"));
        assert_eq!(
            listed(csrs.list(&by_signer).await.unwrap().items),
            ["serving-n1"]
        );
        let by_name = ListParams::default().fields("metadata.name=client-n1");
        assert_eq!(
            listed(csrs.list(&by_name).await.unwrap().items),
            ["client-n1"]
        );

        // spec.request: a PEM CERTIFICATE REQUEST whose signature verifies.
        let pem = csr_pem("system:node:n1", "system:nodes", &["n1.example"]);
        let bad = csr_object(
            "bad-pem",
            "not a PEM block",
            KUBELET_SERVING,
            &["server auth"],
        );
        let refused = status_of(csrs.create(&PostParams::default(), &bad).await);
        let c = causes(&refused);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(
            (c[0].0.as_str(), c[0].1.as_str()),
            ("spec.request", "FieldValueInvalid")
        );
        assert!(
            c[0].2
                .starts_with("Invalid value: []byte{0x6e, 0x6f, 0x74,"),
            "{c:?}"
        );
        assert!(
            c[0].2
                .ends_with(": PEM block type must be CERTIFICATE REQUEST"),
            "{c:?}"
        );
        let cert_pem = rcgen::CertificateParams::new(vec!["x.example".to_string()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        let not_a_request = csr_object("a-cert", &cert_pem, KUBELET_SERVING, &["server auth"]);
        let c = causes(&status_of(
            csrs.create(&PostParams::default(), &not_a_request).await,
        ));
        assert!(
            c[0].2
                .ends_with("PEM block type must be CERTIFICATE REQUEST"),
            "{c:?}"
        );
        // A flipped bit in the signature: it no longer verifies.
        let mut der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents;
        let last = der.len() - 1;
        der[last] ^= 1;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            b64(&der)
        );
        let tampered = csr_object("tampered", &tampered, KUBELET_SERVING, &["server auth"]);
        let c = causes(&status_of(
            csrs.create(&PostParams::default(), &tampered).await,
        ));
        assert_eq!(c[0].0, "spec.request");
        assert!(
            c[0].2.ends_with(": x509: ECDSA verification failure"),
            "{c:?}"
        );

        // spec.signerName: required (left out, or empty) and well-formed.
        let (code, body) = raw(
            &client,
            "POST",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            json!({ "metadata": { "name": "no-signer" }, "spec": { "request": b64(pem.as_bytes()), "usages": ["server auth"] } }),
        )
        .await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(body["details"]["causes"][0]["field"], "spec.signerName");
        assert_eq!(body["details"]["causes"][0]["reason"], "FieldValueRequired");
        assert_eq!(
            body["message"],
            "CertificateSigningRequest.certificates.k8s.io \"no-signer\" is invalid: spec.signerName: Required value"
        );
        let empty = csr_object("empty-signer", &pem, "", &["server auth"]);
        let c = causes(&status_of(
            csrs.create(&PostParams::default(), &empty).await,
        ));
        assert_eq!(
            c,
            [(
                "spec.signerName".into(),
                "FieldValueRequired".into(),
                "Required value".into()
            )]
        );
        for (signer, message) in [
            ("kubelet-serving", "Invalid value: \"kubelet-serving\": must be a fully qualified domain and path of the form 'example.com/signer-name'"),
            ("example/signer", "Invalid value: \"example\": should be a domain with at least two segments separated by dots"),
            ("kubernetes.io/legacy-unknown", "Invalid value: \"kubernetes.io/legacy-unknown\": the legacy signerName is not allowed via this API version"),
        ] {
            let bad = csr_object("bad-signer", &pem, signer, &["server auth"]);
            let c = causes(&status_of(csrs.create(&PostParams::default(), &bad).await));
            assert_eq!(c, [("spec.signerName".into(), "FieldValueInvalid".into(), message.into())], "{signer}");
        }

        // spec.usages: required, known, once each.
        let none = csr_object("no-usages", &pem, KUBELET_SERVING, &[]);
        let c = causes(&status_of(csrs.create(&PostParams::default(), &none).await));
        assert_eq!(
            c,
            [(
                "spec.usages".into(),
                "FieldValueRequired".into(),
                "Required value".into()
            )]
        );
        let odd = csr_object(
            "odd-usages",
            &pem,
            KUBELET_SERVING,
            &["server auth", "serving", "server auth"],
        );
        let c = causes(&status_of(csrs.create(&PostParams::default(), &odd).await));
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(
            (c[0].0.as_str(), c[0].1.as_str()),
            ("spec.usages[1]", "FieldValueNotSupported")
        );
        assert!(
            c[0].2.starts_with(
                "Unsupported value: \"serving\": supported values: \"any\", \"cert sign\""
            ),
            "{c:?}"
        );
        assert_eq!(
            c[1],
            (
                "spec.usages[2]".into(),
                "FieldValueDuplicate".into(),
                "Duplicate value: \"server auth\"".into()
            )
        );

        // spec.expirationSeconds: at least ten minutes.
        let mut short = serving_csr("short", "n1");
        short.spec.expiration_seconds = Some(599);
        let c = causes(&status_of(
            csrs.create(&PostParams::default(), &short).await,
        ));
        assert_eq!(
            c,
            [(
                "spec.expirationSeconds".into(),
                "FieldValueInvalid".into(),
                "Invalid value: 599: may not specify a duration less than 600 seconds (10 minutes)"
                    .into(),
            )]
        );
        short.spec.expiration_seconds = Some(600);
        csrs.create(&PostParams::default(), &short).await.unwrap();

        // Discovery names the subresources.
        let (code, list) = raw(&client, "GET", "/apis/certificates.k8s.io/v1", Value::Null).await;
        assert_eq!(code, 200);
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "certificatesigningrequests",
                "certificatesigningrequests/status",
                "certificatesigningrequests/approval"
            ]
        );
    });
    let stored: Vec<String> = api
        .csrs()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, ["client-n1", "serving-n1", "short"]);
}

#[test]
fn approval_and_status_are_written_only_through_their_subresources() {
    let api = ApiServer::start();
    run(async {
        let client = client(&api).await;
        let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
        let created = csrs
            .create(&PostParams::default(), &serving_csr("n1", "n1"))
            .await
            .unwrap();
        // Plain HTTP: the fixture gives the caller no identity.
        assert_eq!(created.spec.username, None);
        assert_eq!(created.spec.groups, None);

        // The object itself: spec and status stay.
        let mut changed = created.clone();
        changed.spec.usages = Some(vec!["client auth".into()]);
        changed.status = Some(
            serde_json::from_value(
                json!({ "conditions": [{ "type": "Approved", "status": "True" }] }),
            )
            .unwrap(),
        );
        changed.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
        let replaced = csrs
            .replace("n1", &PostParams::default(), &changed)
            .await
            .unwrap();
        assert_eq!(replaced.spec, created.spec);
        assert!(condition_types(&replaced).is_empty());
        assert_eq!(replaced.metadata.labels, changed.metadata.labels);

        // /status may not add approval conditions.
        let (code, body) = raw(
            &client,
            "PUT",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/n1/status",
            json!({ "metadata": { "name": "n1" }, "spec": serde_json::to_value(&created.spec).unwrap(), "status": { "conditions": [{ "type": "Approved", "status": "True" }] } }),
        )
        .await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(
            body["details"]["causes"][0]["message"],
            "Forbidden: updates may not add a condition of type \"Approved\""
        );

        // /approval: Approved and Denied exclude each other; True only.
        let approval = |conditions: Value| json!({ "metadata": { "name": "n1" }, "spec": serde_json::to_value(&created.spec).unwrap(), "status": { "conditions": conditions } });
        let (code, body) = raw(
            &client,
            "PUT",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/n1/approval",
            approval(json!([{ "type": "Approved", "status": "True" }, { "type": "Denied", "status": "True" }])),
        )
        .await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(
            body["details"]["causes"][0]["field"],
            "status.conditions[1].type"
        );
        assert_eq!(
            body["details"]["causes"][0]["message"],
            "Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive"
        );
        let (code, body) = raw(
            &client,
            "PUT",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/n1/approval",
            approval(json!([{ "type": "Approved", "status": "False" }])),
        )
        .await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(
            body["details"]["causes"][0]["message"],
            "Unsupported value: \"False\": supported values: \"True\""
        );

        // A certificate may not come with the request, nor through the object.
        let ca = rcgen::CertificateParams::new(vec!["n1.example".to_string()]).unwrap();
        let cert = ca
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        let (code, body) = raw(
            &client,
            "PUT",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/n1/approval",
            json!({ "metadata": { "name": "n1" }, "spec": serde_json::to_value(&created.spec).unwrap(), "status": { "certificate": b64(cert.as_bytes()), "conditions": [{ "type": "Approved", "status": "True", "reason": "ByTest", "message": "approved" }] } }),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert!(body["status"].get("certificate").is_none(), "{body}");
        let approved: CertificateSigningRequest = serde_json::from_value(body).unwrap();
        let cond = &approved
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (cond.type_.as_str(), cond.status.as_str()),
            ("Approved", "True")
        );
        assert_eq!(cond.reason.as_deref(), Some("ByTest"));
        assert!(cond.last_update_time.is_some() && cond.last_transition_time.is_some());

        // /status may not remove or change the approval.
        let (code, body) = raw(
            &client,
            "PUT",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/n1/approval",
            approval(json!([])),
        )
        .await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(
            body["details"]["causes"][0]["message"],
            "Forbidden: updates may not remove a condition of type \"Approved\""
        );

        // /status: a certificate must be PEM CERTIFICATE blocks, and once set
        // it stays.
        let mut status = approved.clone();
        status.status.as_mut().unwrap().certificate =
            Some(k8s_openapi::ByteString(b"junk".to_vec()));
        let c = causes(&status_of(
            csrs.replace_status("n1", &PostParams::default(), &status)
                .await,
        ));
        assert_eq!(c, [("status.certificate".into(), "FieldValueInvalid".into(), "Invalid value: \"<certificate data>\": must contain at least one CERTIFICATE PEM block".into())]);
        status.status.as_mut().unwrap().certificate =
            Some(k8s_openapi::ByteString(cert.clone().into_bytes()));
        let signed = csrs
            .replace_status("n1", &PostParams::default(), &status)
            .await
            .unwrap();
        assert_eq!(
            signed
                .status
                .as_ref()
                .unwrap()
                .certificate
                .as_ref()
                .unwrap()
                .0,
            cert.as_bytes()
        );
        assert_eq!(
            condition_types(&signed),
            [("Approved".to_string(), "ByTest".to_string())]
        );
        let other = ca
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        status.metadata.resource_version = signed.metadata.resource_version.clone();
        status.status.as_mut().unwrap().certificate =
            Some(k8s_openapi::ByteString(other.into_bytes()));
        let c = causes(&status_of(
            csrs.replace_status("n1", &PostParams::default(), &status)
                .await,
        ));
        assert_eq!(
            c,
            [(
                "status.certificate".into(),
                "FieldValueForbidden".into(),
                "Forbidden: updates may not modify existing certificate content".into()
            )]
        );

        // As upstream (ValidateCertificateSigningRequestStatusUpdate), the
        // API does not tie status.certificate to the approval: signers only
        // sign approved requests, the server does not check.
        csrs.create(&PostParams::default(), &serving_csr("pending", "n1"))
            .await
            .unwrap();
        let mut pending = csrs.get("pending").await.unwrap();
        pending.status =
            Some(serde_json::from_value(json!({ "certificate": b64(cert.as_bytes()) })).unwrap());
        let set = csrs
            .replace_status("pending", &PostParams::default(), &pending)
            .await
            .unwrap();
        assert!(condition_types(&set).is_empty());

        // Deletion answers a Status.
        csrs.delete("pending", &DeleteParams::default())
            .await
            .unwrap();
        assert_eq!(status_of(csrs.get("pending").await).code, 404);
    });
}

/// The certificate of a CSR once it has one, watching for it.
async fn wait_for_certificate(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
) -> CertificateSigningRequest {
    let params = WatchParams::default().fields(&format!("metadata.name={name}"));
    let mut stream = csrs.watch(&params, "0").await.unwrap().boxed();
    loop {
        match next(&mut stream, 10).await.expect("watch ended").unwrap() {
            WatchEvent::Added(c) | WatchEvent::Modified(c)
                if c.status.as_ref().is_some_and(|s| s.certificate.is_some()) =>
            {
                return c
            }
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
            _ => {}
        }
    }
}

/// The signature and name checks a TLS client makes: the certificate
/// chains to `ca_pem` and is valid now for `name` as a server.
fn verify_serving(ca_pem: &str, cert_der: &[u8], name: &str) -> Result<(), String> {
    use tokio_rustls::rustls::client::danger::ServerCertVerifier;
    use tokio_rustls::rustls::client::WebPkiServerVerifier;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::RootCertStore;
    let ca = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca)).unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiServerVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
            .build()
            .unwrap();
    verifier
        .verify_server_cert(
            &CertificateDer::from(cert_der.to_vec()),
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn auto_sign_approves_and_signs_kubelet_serving_requests_with_the_fixture_ca() {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let api = ApiServer::start_tls();
    let (_, kubeconfig) =
        kubeconfig_from(|p| api.write_kubeconfig_client_cert(p, "system:node:n1"));
    let lifetime = Duration::from_secs(3 * 3600);
    run(async {
        let csrs: Api<CertificateSigningRequest> = Api::all(client_from(kubeconfig).await);
        // One request before the signer starts, the others after.
        csrs.create(&PostParams::default(), &serving_csr("before", "n1"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(condition_types(&csrs.get("before").await.unwrap()).is_empty());
        api.auto_sign_kubelet_serving(lifetime);
        let before = wait_for_certificate(&csrs, "before").await;
        assert_eq!(
            condition_types(&before),
            [("Approved".to_string(), "AutoApproved".to_string())]
        );

        let start = jiff::Timestamp::now().as_second();
        let mut shorter = serving_csr("shorter", "n1");
        shorter.spec.expiration_seconds = Some(3600);
        csrs.create(&PostParams::default(), &serving_csr("after", "n1"))
            .await
            .unwrap();
        csrs.create(&PostParams::default(), &shorter).await.unwrap();
        let after = wait_for_certificate(&csrs, "after").await;
        let shorter = wait_for_certificate(&csrs, "shorter").await;

        let ca_pem = api.kubelet_serving_ca_pem();
        assert_ne!(Some(ca_pem.clone()), api.ca_pem());
        let ca_der = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&ca_der).unwrap();
        for (csr, ttl) in [(&after, lifetime.as_secs() as i64), (&shorter, 3600)] {
            let pem = &csr.status.as_ref().unwrap().certificate.as_ref().unwrap().0;
            let der = x509_parser::pem::parse_x509_pem(pem).unwrap().1.contents;
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
            let cn: Vec<_> = cert
                .subject()
                .iter_common_name()
                .map(|a| a.as_str().unwrap())
                .collect();
            let o: Vec<_> = cert
                .subject()
                .iter_organization()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!((cn, o), (vec!["system:node:n1"], vec!["system:nodes"]));
            let mut sans = vec![];
            for ext in cert.extensions() {
                if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                    for n in &san.general_names {
                        sans.push(match n {
                            GeneralName::DNSName(d) => d.to_string(),
                            GeneralName::IPAddress(ip) => format!("{ip:?}"),
                            other => panic!("unexpected SAN {other:?}"),
                        });
                    }
                }
            }
            assert_eq!(sans, ["n1.example", "[10, 0, 0, 1]"]);
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && !eku.client_auth);
            let validity = cert.validity();
            let (from, to) = (
                validity.not_before.timestamp(),
                validity.not_after.timestamp(),
            );
            assert!((from - start).abs() <= 5, "not before {from}, now {start}");
            assert_eq!(to - from, ttl);
            assert_eq!(cert.issuer(), ca.subject());
            verify_serving(&ca_pem, &der, "n1.example").unwrap();
            verify_serving(&ca_pem, &der, "10.0.0.1").unwrap();
            assert!(verify_serving(&ca_pem, &der, "n2.example").is_err());
            assert!(verify_serving(&api.ca_pem().unwrap(), &der, "n1.example").is_err());
        }

        // Anything but a node's serving request is denied, and not signed.
        let wrong_cn = csr_object(
            "wrong-cn",
            &csr_pem("n1", "system:nodes", &["n1.example"]),
            KUBELET_SERVING,
            &["digital signature", "server auth"],
        );
        let client_usage = csr_object(
            "client-usage",
            &csr_pem("system:node:n1", "system:nodes", &["n1.example"]),
            KUBELET_SERVING,
            &["client auth", "server auth"],
        );
        let other_signer = csr_object(
            "other-signer",
            &csr_pem("n1", "x", &["n1.example"]),
            "example.com/signer",
            &["server auth"],
        );
        for csr in [&wrong_cn, &client_usage, &other_signer] {
            csrs.create(&PostParams::default(), csr).await.unwrap();
        }
        let params = WatchParams::default().fields("metadata.name=client-usage");
        let mut stream = csrs.watch(&params, "0").await.unwrap().boxed();
        loop {
            if let WatchEvent::Added(c) | WatchEvent::Modified(c) =
                next(&mut stream, 10).await.unwrap().unwrap()
            {
                if !condition_types(&c).is_empty() {
                    break;
                }
            }
        }
        for (name, expected) in [
            (
                "wrong-cn",
                vec![("Denied".to_string(), "AutoDenied".to_string())],
            ),
            (
                "client-usage",
                vec![("Denied".to_string(), "AutoDenied".to_string())],
            ),
            ("other-signer", vec![]),
        ] {
            let c = csrs.get(name).await.unwrap();
            assert_eq!(condition_types(&c), expected, "{name}");
            assert!(c.status.unwrap().certificate.is_none(), "{name}");
        }
        let denied = csrs.get("wrong-cn").await.unwrap();
        let message = denied.status.unwrap().conditions.unwrap()[0]
            .message
            .clone()
            .unwrap();
        assert_eq!(
            message,
            "subject common name does not begin with system:node:"
        );
    });
    assert_eq!(api.csrs().len(), 6);
}
