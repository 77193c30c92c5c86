//! securityContext in a real systemd node: what each field does is read
//! from inside the running service (`id`, the capability, no_new_privs and
//! seccomp lines of `/proc/self/status`, writes that must fail), and what
//! unitlet refuses shows in the pod status or the agent log.

use unitlet_test_support as support;

use std::collections::BTreeMap;
use support::*;

/// CapBnd/CapEff/… of `/proc/self/status` text, as numbers.
fn status_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v, 16).unwrap_or_else(|_| panic!("not a capability mask: {v:?}"))
}

fn bit(names: &[u32]) -> u64 {
    names.iter().fold(0, |m, n| m | (1u64 << n))
}

/// The Kubernetes default set: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL,
/// SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD,
/// AUDIT_WRITE, SETFCAP.
const DEFAULT_CAPS: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// What a container prints about itself, then it sleeps.
const REPORT: &str = "echo ids=$(id -u):$(id -g):$(id -G | tr ' ' ,); grep -E '^(CapBnd|CapEff|CapAmb|CapPrm|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status; if (echo x > /.unitlet-ro-probe) 2>/dev/null; then echo root=writable; rm -f /.unitlet-ro-probe; else echo root=readonly; fi; if (echo x > /tmp/.unitlet-ro-probe) 2>/dev/null; then echo tmp=writable; rm -f /tmp/.unitlet-ro-probe; else echo tmp=readonly; fi; if unshare -m true 2>/dev/null; then echo mountns=ok; else echo mountns=denied; fi; if (echo 0 > /proc/sys/kernel/printk_ratelimit) 2>/dev/null; then echo sysfs=writable; else echo sysfs=readonly; fi; echo done; exec sleep infinity";

/// The report of `container` of pod `pod`, once it printed it all.
fn report(node: &Node, pod: &str, container: &str) -> BTreeMap<String, String> {
    let out = node.wait_for(
        &format!("{pod}/{container} to print its report"),
        default_wait(),
        || {
            let (out, _, ok) = node.logs(&[pod, "-c", container]);
            (ok && out.contains("done\n")).then_some(out)
        },
    );
    let mut fields = status_fields(&out);
    for l in out.lines() {
        if let Some((k, v)) = l.split_once('=') {
            fields.insert(k.to_string(), v.to_string());
        }
    }
    fields
}

#[test]
fn security_context_is_seen_from_inside_the_unit() {
    let mut node = Node::boot("security_context");
    // PID 1's bounding set: a sandbox node (systemd-nspawn) has fewer
    // capabilities than a real host, and no unit can have more.
    let node_bnd = hex(status_fields(&node.sh("grep CapBnd /proc/1/status"))
        .get("CapBnd")
        .expect("CapBnd of PID 1"));
    // A sandbox node's own seccomp filter (systemd-nspawn installs one)
    // applies to everything in it: count the filters a unit adds.
    let node_filters: u32 = status_fields(&node.sh("grep Seccomp_filters /proc/1/status"))
        .get("Seccomp_filters")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let filters = |r: &BTreeMap<String, String>| -> u32 {
        r.get("Seccomp_filters")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            - node_filters
    };
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: sec}}
spec:
  securityContext:
    supplementalGroups: [2000, 3000]
    fsGroup: 4000
  containers:
  - name: plain
    image: host
    command: ["/bin/sh", "-c", "{REPORT}"]
  - name: restricted
    image: host
    command: ["/bin/sh", "-c", "{REPORT}"]
    securityContext:
      runAsUser: 1000
      runAsGroup: 1000
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      seccompProfile: {{type: RuntimeDefault}}
      capabilities: {{drop: [ALL], add: [NET_BIND_SERVICE]}}
  - name: rootcaps
    image: host
    command: ["/bin/sh", "-c", "{REPORT}"]
    securityContext:
      runAsUser: 0
      capabilities: {{drop: [CAP_NET_RAW, mknod], add: [SYS_ADMIN]}}
      seccompProfile: {{type: RuntimeDefault}}
      readOnlyRootFilesystem: true
  - name: unconfined
    image: host
    command: ["/bin/sh", "-c", "{REPORT}"]
    securityContext:
      capabilities: {{add: [SYS_ADMIN]}}
      seccompProfile: {{type: Unconfined}}
  - name: priv
    image: host
    command: ["/bin/sh", "-c", "{REPORT}"]
    securityContext:
      privileged: true
  - name: nonroot
    image: host
    command: ["/bin/sleep", "infinity"]
    securityContext: {{runAsNonRoot: true}}
  - name: nonroot-zero
    image: host
    command: ["/bin/sleep", "infinity"]
    securityContext: {{runAsNonRoot: true, runAsUser: 0}}
"#
    );
    node.write_manifest("sec.yaml", &yaml);
    node.start_agent(&[]);
    let running_ones = ["plain", "restricted", "rootcaps", "unconfined", "priv"];
    let pod = node.wait_pod("sec", "the allowed containers running", |p| {
        running_ones.iter().all(|c| running(p, c))
            && waiting_reason(p, "nonroot").is_some()
            && waiting_reason(p, "nonroot-zero").is_some()
    });

    // runAsNonRoot: refused as the kubelet refuses it, nothing started.
    let uid = uid(&pod);
    for (c, msg) in [
        (
            "nonroot",
            format!("container has runAsNonRoot and image will run as root (pod: \"sec_default({uid})\", container: nonroot)"),
        ),
        (
            "nonroot-zero",
            format!("container's runAsUser breaks non-root policy (pod: \"sec_default({uid})\", container: nonroot-zero)"),
        ),
    ] {
        let st = cstatus(&pod, c);
        assert_eq!(
            st["state"]["waiting"]["reason"], "CreateContainerConfigError",
            "{c}: {st}"
        );
        assert_eq!(st["state"]["waiting"]["message"], msg.as_str(), "{c}: {st}");
        assert!(
            node.units(&format!("unitlet_default_sec_{c}_*")).is_empty(),
            "{c} must not have a unit"
        );
    }

    let default = bit(&DEFAULT_CAPS) & node_bnd;

    // No securityContext: root with the runtime's default capabilities,
    // no no_new_privs, no seccomp, writable root.
    let r = report(&node, "sec", "plain");
    assert_eq!(r["sysfs"], "readonly", "{r:?}");
    assert_eq!(r["ids"], "0:0:0,2000,3000,4000", "{r:?}");
    assert_eq!(hex(&r["CapBnd"]), default, "{r:?}");
    assert_eq!(hex(&r["CapEff"]), default, "{r:?}");
    assert_eq!(hex(&r["CapAmb"]), 0, "{r:?}");
    assert_eq!(r["NoNewPrivs"], "0", "{r:?}");
    assert_eq!(filters(&r), 0, "{r:?}");
    assert_eq!(r["root"], "writable", "{r:?}");
    assert_eq!(r["tmp"], "writable", "{r:?}");
    assert_eq!(r["mountns"], "denied", "no CAP_SYS_ADMIN: {r:?}");

    // The restricted profile: a non-root user with the pod's groups, only
    // NET_BIND_SERVICE in the bounding set and, as in Kubernetes, no
    // effective or ambient capabilities for a non-root process;
    // no_new_privs, a seccomp filter, a read-only root and /tmp.
    let r = report(&node, "sec", "restricted");
    assert_eq!(r["ids"], "1000:1000:1000,2000,3000,4000", "{r:?}");
    assert_eq!(hex(&r["CapBnd"]), bit(&[10]) & node_bnd, "{r:?}");
    assert_eq!(hex(&r["CapEff"]), 0, "{r:?}");
    assert_eq!(hex(&r["CapPrm"]), 0, "{r:?}");
    assert_eq!(hex(&r["CapAmb"]), 0, "{r:?}");
    assert_eq!(r["NoNewPrivs"], "1", "{r:?}");
    assert_eq!(r["Seccomp"], "2", "{r:?}");
    assert!(filters(&r) > 0, "{r:?}");
    assert_eq!(r["root"], "readonly", "{r:?}");
    assert_eq!(r["tmp"], "readonly", "{r:?}");

    // Root with add/drop: SYS_ADMIN added, NET_RAW and MKNOD dropped; the
    // seccomp filter still refuses mount(2), which unshare -m needs.
    let r = report(&node, "sec", "rootcaps");
    let want = (bit(&DEFAULT_CAPS) | bit(&[21])) & !bit(&[13, 27]) & node_bnd;
    assert_eq!(r["ids"], "0:0:0,2000,3000,4000", "{r:?}");
    assert_eq!(hex(&r["CapBnd"]), want, "{r:?}");
    assert_eq!(hex(&r["CapEff"]), want, "{r:?}");
    assert_eq!(r["Seccomp"], "2", "{r:?}");
    assert!(filters(&r) > 0, "{r:?}");
    assert_eq!(r["NoNewPrivs"], "0", "{r:?}");
    assert_eq!(r["mountns"], "denied", "seccomp refuses mount: {r:?}");
    // Read-only root for root with DAC_OVERRIDE too.
    assert_eq!(r["root"], "readonly", "{r:?}");
    assert_eq!(r["tmp"], "readonly", "{r:?}");

    // The same capability without the filter: mount(2) works.
    let r = report(&node, "sec", "unconfined");
    assert_eq!(filters(&r), 0, "{r:?}");
    assert_eq!(r["mountns"], "ok", "{r:?}");

    // Privileged: every capability the node has, no filter, no NNP.
    let r = report(&node, "sec", "priv");
    assert_eq!(hex(&r["CapBnd"]), node_bnd, "{r:?}");
    assert_eq!(hex(&r["CapEff"]), node_bnd, "{r:?}");
    assert_eq!(r["root"], "writable", "{r:?}");
    assert_eq!(filters(&r), 0, "{r:?}");
    assert_eq!(r["NoNewPrivs"], "0", "{r:?}");

    // The unit properties say the same, set over D-Bus as typed values.
    let unit = node.unit_of("default", "sec", "restricted");
    let p = node.show(
        &unit,
        &[
            "NoNewPrivileges",
            "ProtectSystem",
            "SystemCallErrorNumber",
            "DevicePolicy",
            "ReadOnlyPaths",
            "ProtectControlGroups",
        ],
    );
    assert_eq!(p["NoNewPrivileges"], "yes", "{p:?}");
    assert_eq!(p["ProtectSystem"], "strict", "{p:?}");
    assert_eq!(p["SystemCallErrorNumber"], "1", "{p:?}");
    assert_eq!(p["DevicePolicy"], "closed", "{p:?}");
    // No per-unit mount namespace by default (too slow to start many).
    assert_eq!(p["ReadOnlyPaths"], "", "{p:?}");
    assert_eq!(p["ProtectControlGroups"], "no", "{p:?}");
    let filter = node.show_value(&unit, "SystemCallFilter");
    assert!(
        filter.contains("setresuid") && !filter.contains("keyctl") && !filter.starts_with('~'),
        "an allow-list with @system-service minus @keyring: {filter}"
    );
    let bounding = node.show_value(&unit, "CapabilityBoundingSet");
    // setpriv needs SETUID/SETGID/SETPCAP to switch; it drops them itself.
    for cap in [
        "cap_net_bind_service",
        "cap_setuid",
        "cap_setgid",
        "cap_setpcap",
    ] {
        assert!(bounding.contains(cap), "{cap} in {bounding}");
    }
    assert!(!bounding.contains("cap_chown"), "{bounding}");
    let priv_unit = node.unit_of("default", "sec", "priv");
    let p = node.show(&priv_unit, &["DevicePolicy", "NoNewPrivileges"]);
    assert_eq!(
        p["DevicePolicy"], "auto",
        "device access unrestricted: {p:?}"
    );
    assert_eq!(p["NoNewPrivileges"], "no", "{p:?}");
}

/// Fields unitlet cannot honour are refused, naming the field and why.
#[test]
fn unsupported_security_fields_are_refused() {
    let mut node = Node::boot("security_refused");
    let base = "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME}\nspec:\nPOD  containers:\n  - name: c\n    image: host\n    command: [/bin/sleep, infinity]\nCONTAINER";
    let pod = |name: &str, pod: &str, container: &str| {
        base.replace("NAME", name)
            .replace("POD", pod)
            .replace("CONTAINER", container)
    };
    let cases = [
        (
            "sysctl",
            pod(
                "sysctl",
                "  securityContext:\n    sysctls: [{name: net.ipv4.tcp_syncookies, value: '1'}]\n",
                "",
            ),
            "spec.securityContext.sysctls[0]",
            "host",
        ),
        (
            "aliases",
            pod(
                "aliases",
                "  hostAliases: [{ip: 10.0.0.1, hostnames: [db]}]\n",
                "",
            ),
            "spec.hostAliases",
            "/etc/hosts",
        ),
        (
            "localhost-seccomp",
            pod(
                "localhost-seccomp",
                "",
                "    securityContext:\n      seccompProfile: {type: Localhost, localhostProfile: p.json}\n",
            ),
            "spec.containers[0].securityContext.seccompProfile.type",
            "not supported",
        ),
        (
            "unmasked",
            pod(
                "unmasked",
                "",
                "    securityContext:\n      procMount: Unmasked\n",
            ),
            "spec.containers[0].securityContext.procMount",
            "not supported",
        ),
        (
            "bad-cap",
            pod(
                "bad-cap",
                "",
                "    securityContext:\n      capabilities: {add: [NET_BOGUS]}\n",
            ),
            "spec.containers[0].securityContext.capabilities.add[0]",
            "not a Linux capability",
        ),
        (
            "selinux",
            pod(
                "selinux",
                "  securityContext:\n    seLinuxOptions: {level: 's0:c1'}\n",
                "",
            ),
            "spec.securityContext.seLinuxOptions",
            "SELinux",
        ),
    ];
    for (file, text, _, _) in &cases {
        node.write_manifest(&format!("{file}.yaml"), text);
    }
    node.write_manifest(
        "ok.yaml",
        &pod(
            "ok",
            "",
            "    securityContext:\n      procMount: Default\n      appArmorProfile: {type: Unconfined}\n      seccompProfile: {type: Unconfined}\n",
        ),
    );
    node.start_agent(&[]);
    for (file, _, field, why) in &cases {
        let path = node
            .manifests
            .join(format!("{file}.yaml"))
            .to_string_lossy()
            .into_owned();
        let line = node.wait_log(&format!("an error naming {file}"), |l| {
            l["message"] == "skipping invalid manifest" && l["file"] == path.as_str()
        });
        assert_eq!(line["field"], *field, "{file}: {line}");
        assert!(
            line["error"].as_str().is_some_and(|e| e.contains(why)),
            "{file}: the message says why ({why}): {line}"
        );
    }
    node.wait_pod("ok", "the accepted pod running", |p| running(p, "c"));
    let pods = node.pods();
    assert_eq!(pods.len(), 1, "only the valid pod is admitted: {pods:?}");
}

#[test]
fn the_strict_hardening_profile_is_a_node_setting() {
    let mut node = Node::boot("strict_hardening");
    node.write_manifest(
        "tmp.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: tmp}
spec:
  containers:
  - name: plain
    image: host
    command: ["/bin/sh", "-c", "echo mine > /tmp/unitlet-strict && echo wrote && exec sleep infinity"]
  - name: priv
    image: host
    command: ["/bin/sleep", "infinity"]
    securityContext: {privileged: true}
"#,
    );
    node.start_agent(&["--pod-hardening", "strict"]);
    node.wait_pod("tmp", "running", |p| {
        running(p, "plain") && running(p, "priv")
    });
    node.wait_logs(&["tmp", "-c", "plain"], "wrote\n");
    let plain = node.unit_of("default", "tmp", "plain");
    let props = node.show(
        &plain,
        &[
            "PrivateTmp",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectControlGroups",
        ],
    );
    assert!(props.values().all(|v| v == "yes"), "{props:?}");
    // The container's /tmp is its own.
    assert!(node.sh_output("cat /tmp/unitlet-strict").stdout.is_empty());
    // Privileged containers get no hardening.
    let privileged = node.unit_of("default", "tmp", "priv");
    assert_eq!(node.show_value(&privileged, "PrivateTmp"), "no");
}
