//! Volumes in a real systemd node, observed from inside the running
//! services and from the host: emptyDir (disk and memory), hostPath with
//! its type checks, subPath/subPathExpr (and escapes that must fail),
//! fsGroup ownership, and ConfigMap/Secret/downward API/projected files
//! from manifests in the same directory, updated in place by the
//! kubelet's atomic `..data` swap.

use unitlet_test_support as support;

use support::*;

/// Lines `key=value` a container printed, as a map (later lines win).
fn fields(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The report of `container` of `pod`, once it printed `done`.
fn report(node: &Node, pod: &str, container: &str) -> std::collections::BTreeMap<String, String> {
    let out = node.wait_for(
        &format!("{pod}/{container} to print its report"),
        default_wait(),
        || {
            let (out, _, ok) = node.logs(&[pod, "-c", container]);
            (ok && out.contains("done\n")).then_some(out)
        },
    );
    fields(&out)
}

#[test]
fn empty_dir_host_path_sub_path_and_fs_group() {
    let mut node = Node::boot("empty_dir_host_path");
    // A host directory with a file, and a symlink pointing out of it.
    node.sh("mkdir -p /srv/data && echo host-file > /srv/data/from-host && ln -s /etc /srv/data/escape && ln -s ../../etc /srv/data/climb && mkdir -p /srv/data/inner && ln -s ../from-host /srv/data/inner/link");
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: vols}
spec:
  securityContext:
    fsGroup: 4000
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 1Mi}}
  - {name: data, hostPath: {path: /srv/data, type: Directory}}
  - {name: made, hostPath: {path: /srv/made/here, type: DirectoryOrCreate}}
  - {name: null-dev, hostPath: {path: /dev/null, type: CharDevice}}
  containers:
  - name: writer
    image: host
    command: ["/bin/sh", "-c", "echo shared > /scratch/note && exec sleep infinity"]
    securityContext: {runAsUser: 1000}
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
  - name: reader
    image: host
    env:
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    command:
    - /bin/sh
    - -c
    - |
      echo made > /made/file
      while [ ! -f /scratch/note ]; do sleep 0.1; done
      echo note=$(cat /scratch/note)
      echo scratch_group=$(stat -c %g:%A /scratch)
      echo mem_fs=$(stat -f -c %T /mem)
      if head -c 2000000 /dev/zero > /mem/big 2>/dev/null; then echo mem_limit=none; else echo mem_limit=enforced; fi
      echo host=$(cat /host/from-host)
      if (echo x > /host/new) 2>/dev/null; then echo host_ro=no; else echo host_ro=yes; fi
      echo sub=$(cat /sub/from-host)
      echo expr=$(ls -d /expr 2>&1)
      echo inner=$(cat /linked)
      echo dev=$(stat -c %t:%T /devnull)
      echo done
      exec sleep infinity
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: mem, mountPath: /mem}
    - {name: data, mountPath: /host, readOnly: true}
    - {name: data, mountPath: /sub, subPath: "."}
    - {name: scratch, mountPath: /expr, subPathExpr: "pods/$(POD)"}
    - {name: data, mountPath: /linked, subPath: inner/link}
    - {name: null-dev, mountPath: /devnull}
    - {name: made, mountPath: /made}
  - name: escape
    image: host
    command: ["/bin/sleep", "infinity"]
    volumeMounts:
    - {name: data, mountPath: /esc, subPath: escape}
  - name: climb
    image: host
    command: ["/bin/sleep", "infinity"]
    volumeMounts:
    - {name: data, mountPath: /esc, subPath: climb/passwd}
"#;
    node.write_manifest("vols.yaml", yaml);
    node.start_agent(&[]);
    let pod = node.wait_pod("vols", "writer and reader running, escapes refused", |p| {
        running(p, "writer")
            && running(p, "reader")
            && waiting_reason(p, "escape") == Some("CreateContainerConfigError")
            && waiting_reason(p, "climb") == Some("CreateContainerConfigError")
    });
    let r = report(&node, "vols", "reader");
    assert_eq!(
        r["note"], "shared",
        "emptyDir shared by two containers: {r:?}"
    );
    // fsGroup: group-owned, setgid, group-writable (the non-root writer could write).
    assert_eq!(r["scratch_group"], "4000:drwxrwsrwx", "{r:?}");
    assert_eq!(r["mem_fs"], "tmpfs", "{r:?}");
    assert_eq!(
        r["mem_limit"], "enforced",
        "sizeLimit bounds the tmpfs: {r:?}"
    );
    assert_eq!(r["host"], "host-file", "{r:?}");
    assert_eq!(r["host_ro"], "yes", "readOnly mount: {r:?}");
    assert_eq!(r["sub"], "host-file", "{r:?}");
    assert_eq!(r["expr"], "/expr", "subPathExpr made the directory: {r:?}");
    assert_eq!(
        r["inner"], "host-file",
        "a symlink inside the volume is followed: {r:?}"
    );
    assert_eq!(r["dev"], "1:3", "{r:?}");
    // The writer's files are where the volumes live on the host.
    assert_eq!(node.sh("cat /srv/made/here/file").trim(), "made");
    let uid = uid(&pod);
    let scratch = format!("/var/lib/unitlet/pods/{uid}/volumes/kubernetes.io~empty-dir/scratch");
    assert_eq!(node.sh(&format!("cat {scratch}/note")).trim(), "shared");
    assert!(node
        .sh(&format!("ls -d {scratch}/pods/vols"))
        .contains("pods/vols"));
    // Escapes: refused with the volume and container named, no unit made.
    for c in ["escape", "climb"] {
        let st = cstatus(&pod, c);
        let msg = st["state"]["waiting"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("failed to prepare subPath") && msg.contains(c) && msg.contains("escapes"),
            "{c}: {st}"
        );
        assert!(node
            .units(&format!("unitlet_default_vols_{c}_*"))
            .is_empty());
    }
    // The device is allowed to the unit that mounts it, and only to it (a
    // sandbox node has no device cgroup to enforce it: the property is
    // what can be checked here).
    let reader = node.unit_of("default", "vols", "reader");
    assert!(
        node.show_value(&reader, "DeviceAllow")
            .contains("/dev/null rw"),
        "{}",
        node.show_value(&reader, "DeviceAllow")
    );
    let writer = node.unit_of("default", "vols", "writer");
    assert_eq!(node.show_value(&writer, "DeviceAllow"), "");

    // Removing the pod unmounts and removes its volumes, and leaves the
    // host's data alone.
    node.remove_manifest("vols.yaml");
    node.wait_pod_gone("default", "vols");
    let left = node.sh(&format!(
        "ls /var/lib/unitlet/pods/{uid} 2>&1; grep -c {uid} /proc/self/mountinfo || true"
    ));
    assert!(left.contains("No such file"), "{left}");
    assert!(left.trim_end().ends_with('0'), "mounts left: {left}");
    assert_eq!(node.sh("cat /srv/data/from-host").trim(), "host-file");
    assert_eq!(node.sh("cat /srv/made/here/file").trim(), "made");
}

#[test]
fn host_path_types_and_the_allow_list() {
    let mut node = Node::boot("host_path_types");
    node.sh("mkdir -p /srv/ok && touch /srv/ok/file");
    node.write_manifest(
        "bad-type.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: bad-type}
spec:
  volumes:
  - {name: f, hostPath: {path: /srv/ok, type: File}}
  containers:
  - name: c
    image: host
    command: ["/bin/sleep", "infinity"]
    volumeMounts: [{name: f, mountPath: /f}]
"#,
    );
    node.write_manifest(
        "outside.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: outside}
spec:
  volumes:
  - {name: etc, hostPath: {path: /etc}}
  containers:
  - name: c
    image: host
    command: ["/bin/sleep", "infinity"]
    volumeMounts: [{name: etc, mountPath: /mnt/etc}]
"#,
    );
    node.write_manifest(
        "inside.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: inside}
spec:
  volumes:
  - {name: f, hostPath: {path: /srv/ok/file, type: File}}
  - {name: sock, hostPath: {path: /srv/ok/new.txt, type: FileOrCreate}}
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "cat /f && echo written > /new.txt && exec sleep infinity"]
    volumeMounts: [{name: f, mountPath: /f}, {name: sock, mountPath: /new.txt}]
"#,
    );
    node.start_agent(&["--allowed-host-paths", "/srv/ok,/dev/null"]);
    let inside = node.wait_pod("inside", "running", |p| running(p, "c"));
    assert_eq!(phase(&inside), "Running");
    node.wait_for("FileOrCreate made the file", default_wait(), || {
        (node.sh("cat /srv/ok/new.txt 2>/dev/null || true").trim() == "written").then_some(())
    });
    // Nothing of the others starts: they wait in ContainerCreating with a
    // FailedMount reason in the agent log.
    for (pod, want) in [
        (
            "bad-type",
            "hostPath type check failed: /srv/ok is not a file",
        ),
        ("outside", "outside the host paths this node allows"),
    ] {
        let p = node.wait_pod(pod, "waiting", |p| waiting_reason(p, "c").is_some());
        assert_eq!(waiting_reason(&p, "c"), Some("ContainerCreating"), "{p}");
        node.wait_log(&format!("{pod}: {want}"), |l| {
            l["error"].as_str().is_some_and(|e| e.contains(want))
                && l["pod"] == format!("default/{pod}")
        });
        assert!(node.units(&format!("unitlet_default_{pod}_*")).is_empty());
    }
    // The bad manifest fixed: it starts.
    node.sh("rm -rf /srv/ok/dir && mkdir -p /srv/ok/dir");
    node.write_manifest(
        "bad-type.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: bad-type}
spec:
  volumes:
  - {name: f, hostPath: {path: /srv/ok/dir, type: Directory}}
  containers:
  - name: c
    image: host
    command: ["/bin/sleep", "infinity"]
    volumeMounts: [{name: f, mountPath: /fdir}]
"#,
    );
    node.wait_pod("bad-type", "running once fixed", |p| running(p, "c"));
}

#[test]
fn config_map_secret_downward_and_projected_files_update_in_place() {
    let mut node = Node::boot("payload_volumes");
    node.write_manifest(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {app.conf: \"v=1\", other: x}\nbinaryData: {blob: AAEC}\n",
    );
    node.write_manifest(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {password: hunter2}\n",
    );
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: files, labels: {app: shop, tier: front}}
spec:
  volumes:
  - name: cfg
    configMap: {name: app}
  - name: picked
    configMap:
      name: app
      items: [{key: app.conf, path: conf/app.conf, mode: 0600}]
  - name: sec
    secret: {secretName: creds, defaultMode: 0400}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: name, fieldRef: {fieldPath: metadata.name}}
  - name: all
    projected:
      sources:
      - configMap: {name: app, items: [{key: app.conf, path: app.conf}]}
      - secret: {name: creds}
      - downwardAPI: {items: [{path: ns, fieldRef: {fieldPath: metadata.namespace}}]}
  - name: maybe
    configMap: {name: absent, optional: true}
  containers:
  - name: c
    image: host
    # The probe runs in the container's mount namespace and directory.
    workingDir: /cfg
    readinessProbe:
      exec: {command: [/bin/grep, -q, "v=", app.conf]}
      periodSeconds: 1
    command:
    - /bin/sh
    - -c
    - |
      echo conf=$(cat /cfg/app.conf)
      echo blob=$(od -An -tx1 /cfg/blob | tr -d ' ')
      echo picked=$(cat /picked/conf/app.conf):$(stat -L -c %a /picked/conf/app.conf)
      echo secret=$(cat /sec/password):$(stat -L -c %a /sec/password)
      echo name=$(cat /info/name)
      echo labels=$(cat /info/labels | tr '\n' ';')
      echo projected=$(cat /all/app.conf),$(cat /all/password),$(cat /all/ns)
      echo maybe=$(ls -A /maybe | grep -v '^\.\.' | wc -l)
      echo sub=$(cat /single)
      if (echo x > /cfg/new) 2>/dev/null; then echo cfg_ro=no; else echo cfg_ro=yes; fi
      echo done
      while true; do echo now=$(cat /cfg/app.conf); sleep 0.5; done
    volumeMounts:
    - {name: cfg, mountPath: /cfg}
    - {name: picked, mountPath: /picked}
    - {name: sec, mountPath: /sec}
    - {name: info, mountPath: /info}
    - {name: all, mountPath: /all}
    - {name: maybe, mountPath: /maybe}
    - {name: cfg, mountPath: /single, subPath: app.conf}
"#;
    node.write_manifest("files.yaml", yaml);
    node.start_agent(&[]);
    let pod = node.wait_pod("files", "ready", |p| cstatus(p, "c")["ready"] == true);
    let r = report(&node, "files", "c");
    assert_eq!(r["conf"], "v=1", "{r:?}");
    assert_eq!(r["blob"], "000102", "binaryData: {r:?}");
    assert_eq!(r["picked"], "v=1:600", "items with mode: {r:?}");
    assert_eq!(r["secret"], "hunter2:400", "{r:?}");
    assert_eq!(r["name"], "files", "{r:?}");
    assert_eq!(r["labels"], r#"app="shop";tier="front""#, "{r:?}");
    assert_eq!(r["projected"], "v=1,hunter2,default", "{r:?}");
    assert_eq!(r["maybe"], "0", "optional and absent: empty: {r:?}");
    assert_eq!(r["sub"], "v=1", "{r:?}");
    assert_eq!(r["cfg_ro"], "yes", "{r:?}");

    // The kubelet's layout on the host: keys are symlinks into ..data,
    // which points at one timestamped directory; secrets are on tmpfs.
    let uid = uid(&pod);
    let base = format!("/var/lib/unitlet/pods/{uid}/volumes");
    let cfg = format!("{base}/kubernetes.io~configmap/cfg");
    let layout = node.sh(&format!(
        "readlink {cfg}/app.conf; readlink {cfg}/..data; ls -A {cfg} | grep -c '^\\.\\.[0-9]'"
    ));
    let lines: Vec<&str> = layout.lines().collect();
    assert_eq!(lines[0], "..data/app.conf", "{layout}");
    assert!(lines[1].starts_with("..20"), "{layout}");
    assert_eq!(lines[2], "1", "{layout}");
    let sec = format!("{base}/kubernetes.io~secret/sec");
    assert_eq!(
        node.sh(&format!("stat -f -c %T {sec}")).trim(),
        "tmpfs",
        "secrets never touch the disk"
    );
    assert_eq!(
        node.sh(&format!("stat -f -c %T {base}/kubernetes.io~projected/all"))
            .trim(),
        "tmpfs"
    );

    // An update reaches the running container without a restart, through
    // a new timestamped directory and the ..data swap; a subPath mount
    // keeps what it had (as in Kubernetes).
    node.write_manifest(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {app.conf: \"v=2\"}\n",
    );
    node.wait_output("files", "c", "now=v=2");
    let after = node.sh(&format!(
        "readlink {cfg}/..data; ls -A {cfg} | grep -c '^\\.\\.[0-9]'; ls {cfg}; cat /proc/$(systemctl show -P MainPID {unit})/root/single",
        unit = node.unit_of("default", "files", "c")
    ));
    let lines: Vec<&str> = after.lines().collect();
    assert_ne!(
        lines[0],
        layout.lines().nth(1).unwrap(),
        "..data swapped: {after}"
    );
    assert_eq!(lines[1], "1", "the old directory is gone: {after}");
    assert_eq!(lines[2], "app.conf", "removed keys are gone: {after}");
    assert_eq!(lines[3], "v=1", "the subPath mount keeps its file: {after}");
    let pod = node.pod("default", "files").unwrap();
    assert_eq!(restarts(&pod, "c"), 0);

    // A new agent (after kill -9) takes the volumes as they are: nothing
    // mounted twice, nothing restarted, and updates still arrive.
    node.kill_agent_9();
    node.start_agent_synced(&[]);
    node.write_manifest(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {app.conf: \"v=3\"}\n",
    );
    node.wait_output("files", "c", "now=v=3");
    let mounts = node.sh(&format!("grep -c ' {sec} ' /proc/self/mountinfo"));
    assert_eq!(mounts.trim(), "1", "the secret tmpfs is mounted once");
    let pod = node.pod("default", "files").unwrap();
    assert_eq!(restarts(&pod, "c"), 0);
}

#[test]
fn missing_objects_hold_the_pod_until_they_appear() {
    let mut node = Node::boot("payload_missing");
    node.write_manifest(
        "wait.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: wait}
spec:
  volumes:
  - {name: cfg, configMap: {name: later}}
  - {name: key, secret: {secretName: later-secret, items: [{key: k, path: k}]}}
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "cat /cfg/a /key/k; echo; exec sleep infinity"]
    volumeMounts: [{name: cfg, mountPath: /cfg}, {name: key, mountPath: /key}]
"#,
    );
    node.start_agent(&[]);
    let p = node.wait_pod("wait", "waiting", |p| waiting_reason(p, "c").is_some());
    assert_eq!(waiting_reason(&p, "c"), Some("ContainerCreating"), "{p}");
    node.wait_log("FailedMount for the missing ConfigMap", |l| {
        l["error"]
            .as_str()
            .is_some_and(|e| e.contains("configmap \"later\" not found"))
    });
    node.write_manifest(
        "later.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: later}\ndata: {a: first}\n",
    );
    // The Secret exists but lacks the key named in items.
    node.write_manifest(
        "later-secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: later-secret}\nstringData: {other: x}\n",
    );
    node.wait_log("FailedMount for the missing key", |l| {
        l["error"]
            .as_str()
            .is_some_and(|e| e.contains("non-existent") && e.contains("k"))
    });
    assert!(node.units("unitlet_default_wait_c_*").is_empty());
    node.write_manifest(
        "later-secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: later-secret}\nstringData: {k: second}\n",
    );
    node.wait_pod("wait", "running", |p| running(p, "c"));
    node.wait_output("wait", "c", "firstsecond");
}
