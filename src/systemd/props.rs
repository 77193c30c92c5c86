//! Conversion between typed properties and D-Bus values.

use crate::core::observe::UnitSnapshot;
use crate::core::unit::Property;
use std::collections::HashMap;
use zbus::zvariant::{OwnedValue, Value};

/// The D-Bus name and value of each property.
pub fn to_dbus(props: &[Property]) -> Vec<(&'static str, Value<'static>)> {
    let mut out: Vec<(&'static str, Value<'static>)> = Vec::new();
    for p in props {
        match p {
            Property::Description(s) => out.push(("Description", Value::from(s.clone()))),
            Property::Slice(s) => out.push(("Slice", Value::from(s.clone()))),
            Property::Type(s) => out.push(("Type", Value::from(s.clone()))),
            Property::RemainAfterExit(b) => out.push(("RemainAfterExit", Value::from(*b))),
            Property::ExecStart { path, argv } => {
                // Not ExecStartEx with its no-env-expand flag: systemd 252
                // saves that in the transient unit file under a key its own
                // parser does not know, so after a daemon-reload the unit
                // has no command. Doubling `$` gives the same verbatim argv
                // through systemd's exec-time expansion (`$$` becomes `$`).
                let argv: Vec<String> = argv.iter().map(|a| a.replace('$', "$$")).collect();
                let cmd = vec![(path.clone(), argv, false)];
                out.push(("ExecStart", Value::from(cmd)));
            }
            Property::Environment(pairs) => out.push((
                "Environment",
                Value::from(
                    pairs
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>(),
                ),
            )),
            Property::EnvironmentFile(path) => {
                out.push(("EnvironmentFiles", Value::from(vec![(path.clone(), false)])))
            }
            Property::WorkingDirectory(s) => out.push(("WorkingDirectory", Value::from(s.clone()))),
            Property::SyslogIdentifier(s) => out.push(("SyslogIdentifier", Value::from(s.clone()))),
            Property::KillSignal(n) => out.push(("KillSignal", Value::from(*n))),
            Property::TimeoutStopUSec(u) => out.push(("TimeoutStopUSec", Value::from(*u))),
            Property::KillMode(m) => out.push(("KillMode", Value::from(m.clone()))),
            Property::StartLimitIntervalUSec(u) => {
                out.push(("StartLimitIntervalUSec", Value::from(*u)))
            }
            Property::MemoryMax(b) => out.push(("MemoryMax", Value::from(*b))),
            Property::CpuQuotaPerSecUSec(u) => out.push(("CPUQuotaPerSecUSec", Value::from(*u))),
            Property::CpuWeight(w) => out.push(("CPUWeight", Value::from(*w))),
            Property::Delegate(b) => out.push(("Delegate", Value::from(*b))),
            Property::CapabilityBoundingSet(mask) => {
                out.push(("CapabilityBoundingSet", Value::from(*mask)))
            }
            Property::NoNewPrivileges(b) => out.push(("NoNewPrivileges", Value::from(*b))),
            Property::ProtectSystem(s) => out.push(("ProtectSystem", Value::from(s.clone()))),
            Property::SystemCallFilter { allow, names } => {
                out.push(("SystemCallFilter", Value::from((*allow, names.clone()))))
            }
            Property::SystemCallErrorNumber(n) => {
                out.push(("SystemCallErrorNumber", Value::from(*n)))
            }
            Property::ReadOnlyPaths(paths) => {
                out.push(("ReadOnlyPaths", Value::from(paths.clone())))
            }
            Property::ProtectControlGroups(b) => {
                out.push(("ProtectControlGroups", Value::from(*b)))
            }
            Property::DevicePolicy(s) => out.push(("DevicePolicy", Value::from(s.clone()))),
            Property::PrivateTmp(b) => out.push(("PrivateTmp", Value::from(*b))),
            Property::ProtectKernelTunables(b) => {
                out.push(("ProtectKernelTunables", Value::from(*b)))
            }
            Property::ProtectKernelModules(b) => {
                out.push(("ProtectKernelModules", Value::from(*b)))
            }
            Property::BindPaths(binds) => out.push(("BindPaths", bind_value(binds))),
            Property::BindReadOnlyPaths(binds) => {
                out.push(("BindReadOnlyPaths", bind_value(binds)))
            }
            Property::DeviceAllow(devs) => out.push(("DeviceAllow", Value::from(devs.clone()))),
            Property::RootDirectory(s) => out.push(("RootDirectory", Value::from(s.clone()))),
            Property::MountApiVfs(b) => out.push(("MountAPIVFS", Value::from(*b))),
            Property::TemporaryFileSystem(m) => {
                out.push(("TemporaryFileSystem", Value::from(m.clone())))
            }
            Property::Accounting(b) => {
                for k in [
                    "CPUAccounting",
                    "MemoryAccounting",
                    "TasksAccounting",
                    "IOAccounting",
                ] {
                    out.push((k, Value::from(*b)));
                }
            }
        }
    }
    out
}

/// `MS_REC`: what the unit-file spelling `rbind` (the default) sends.
const MS_REC: u64 = 16384;

/// `(source, destination, ignore a missing source, mount flags)` entries.
fn bind_value(binds: &[(String, String)]) -> Value<'static> {
    Value::from(
        binds
            .iter()
            .map(|(s, d)| (s.clone(), d.clone(), false, MS_REC))
            .collect::<Vec<_>>(),
    )
}

fn string(all: &HashMap<String, OwnedValue>, key: &str) -> String {
    all.get(key)
        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
        .unwrap_or_default()
}

fn u64_of(all: &HashMap<String, OwnedValue>, key: &str) -> u64 {
    all.get(key)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(0)
}

fn u32_of(all: &HashMap<String, OwnedValue>, key: &str) -> u32 {
    all.get(key)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0)
}

fn i32_of(all: &HashMap<String, OwnedValue>, key: &str) -> i32 {
    all.get(key)
        .and_then(|v| i32::try_from(v).ok())
        .unwrap_or(0)
}

fn hex_bytes(all: &HashMap<String, OwnedValue>, key: &str) -> String {
    let bytes: Vec<u8> = all
        .get(key)
        .and_then(|v| Vec::<u8>::try_from(v.try_clone().ok()?).ok())
        .unwrap_or_default();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds a snapshot from a `GetAll("")` reply.
pub fn snapshot_from(all: &HashMap<String, OwnedValue>) -> UnitSnapshot {
    let mut snap = UnitSnapshot::default();
    apply(&mut snap, all);
    snap
}

/// Overwrites the fields whose properties `changed` holds: a `GetAll` reply
/// holds them all, a `PropertiesChanged` signal those of one interface.
pub fn apply(snap: &mut UnitSnapshot, changed: &HashMap<String, OwnedValue>) {
    let has = |k: &str| changed.contains_key(k);
    if has("LoadState") {
        snap.load_state = string(changed, "LoadState");
    }
    if has("ActiveState") {
        snap.active_state = string(changed, "ActiveState").as_str().into();
    }
    if has("SubState") {
        snap.sub_state = string(changed, "SubState");
    }
    if has("Result") {
        snap.result = string(changed, "Result");
    }
    if has("InvocationID") {
        snap.invocation_id = hex_bytes(changed, "InvocationID");
    }
    if has("MainPID") {
        snap.main_pid = u32_of(changed, "MainPID");
    }
    if has("ExecMainCode") {
        snap.exec_main_code = i32_of(changed, "ExecMainCode");
    }
    if has("ExecMainStatus") {
        snap.exec_main_status = i32_of(changed, "ExecMainStatus");
    }
    if has("ExecMainStartTimestamp") {
        snap.exec_main_start_us = u64_of(changed, "ExecMainStartTimestamp");
    }
    if has("ExecMainExitTimestamp") {
        snap.exec_main_exit_us = u64_of(changed, "ExecMainExitTimestamp");
    }
    if has("ExecMainPID") {
        snap.exec_main_pid = u32_of(changed, "ExecMainPID");
    }
    if let Some(v) = changed.get("Job") {
        snap.job_id = v
            .try_clone()
            .ok()
            .and_then(|v| <(u32, zbus::zvariant::OwnedObjectPath)>::try_from(v).ok())
            .map_or(0, |(id, _)| id);
    }
}

/// The properties that carry `snap`, as a `GetAll` reply or a signal
/// would: what [`apply`] reads. A service manager other than D-Bus (a
/// test's) speaks to the runtime through this, so the runtime takes the
/// same path for it as for systemd.
pub fn changes_of(snap: &UnitSnapshot) -> HashMap<String, OwnedValue> {
    fn owned(v: Value<'_>) -> OwnedValue {
        v.try_to_owned()
            .expect("plain values carry no file descriptors")
    }
    let hex: Vec<u8> = (0..snap.invocation_id.len() / 2)
        .filter_map(|i| u8::from_str_radix(&snap.invocation_id[2 * i..2 * i + 2], 16).ok())
        .collect();
    let job_path = zbus::zvariant::ObjectPath::try_from(format!(
        "/org/freedesktop/systemd1/job/{}",
        snap.job_id
    ))
    .expect("a valid object path");
    let mut out = HashMap::new();
    out.insert(
        "LoadState".into(),
        owned(Value::from(snap.load_state.clone())),
    );
    out.insert(
        "ActiveState".into(),
        owned(Value::from(snap.active_state.as_str())),
    );
    out.insert(
        "SubState".into(),
        owned(Value::from(snap.sub_state.clone())),
    );
    out.insert("Result".into(), owned(Value::from(snap.result.clone())));
    out.insert("InvocationID".into(), owned(Value::from(hex)));
    out.insert("MainPID".into(), owned(Value::from(snap.main_pid)));
    out.insert(
        "ExecMainCode".into(),
        owned(Value::from(snap.exec_main_code)),
    );
    out.insert(
        "ExecMainStatus".into(),
        owned(Value::from(snap.exec_main_status)),
    );
    out.insert(
        "ExecMainStartTimestamp".into(),
        owned(Value::from(snap.exec_main_start_us)),
    );
    out.insert(
        "ExecMainExitTimestamp".into(),
        owned(Value::from(snap.exec_main_exit_us)),
    );
    out.insert("ExecMainPID".into(), owned(Value::from(snap.exec_main_pid)));
    out.insert("Job".into(), owned(Value::from((snap.job_id, job_path))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_of_is_read_back_by_apply() {
        let snap = UnitSnapshot {
            load_state: "loaded".into(),
            active_state: "failed".into(),
            sub_state: "failed".into(),
            result: "exit-code".into(),
            invocation_id: "00112233445566778899aabbccddeeff".into(),
            main_pid: 0,
            exec_main_code: 1,
            exec_main_status: 3,
            exec_main_start_us: 1_000_000,
            exec_main_exit_us: 2_000_000,
            exec_main_pid: 4242,
            job_id: 7,
        };
        assert_eq!(snapshot_from(&changes_of(&snap)), snap);
    }

    #[test]
    fn security_properties_have_systemds_dbus_types() {
        let out = to_dbus(&[
            Property::CapabilityBoundingSet(1 << 13),
            Property::NoNewPrivileges(true),
            Property::ProtectSystem("strict".into()),
            Property::SystemCallFilter {
                allow: true,
                names: vec!["@system-service".into()],
            },
            Property::SystemCallErrorNumber(1),
            Property::ReadOnlyPaths(vec!["-/sys".into()]),
            Property::ProtectControlGroups(true),
            Property::DevicePolicy("closed".into()),
        ]);
        let sigs: Vec<(&str, String)> = out
            .iter()
            .map(|(k, v)| (*k, v.value_signature().to_string()))
            .collect();
        assert_eq!(
            sigs,
            [
                ("CapabilityBoundingSet", "t".to_string()),
                ("NoNewPrivileges", "b".into()),
                ("ProtectSystem", "s".into()),
                ("SystemCallFilter", "(bas)".into()),
                ("SystemCallErrorNumber", "i".into()),
                ("ReadOnlyPaths", "as".into()),
                ("ProtectControlGroups", "b".into()),
                ("DevicePolicy", "s".into()),
            ]
        );
        assert_eq!(out[0].1, Value::from(1u64 << 13));
    }

    fn props(kv: &[(&str, Value<'static>)]) -> HashMap<String, OwnedValue> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), OwnedValue::try_from(v.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn a_signal_overwrites_only_what_it_carries() {
        let mut snap = snapshot_from(&props(&[
            ("LoadState", Value::from("loaded")),
            ("ActiveState", Value::from("active")),
            ("SubState", Value::from("running")),
            ("MainPID", Value::from(42u32)),
            ("ExecMainPID", Value::from(42u32)),
        ]));
        // The Service interface's signal on exit.
        apply(
            &mut snap,
            &props(&[
                ("MainPID", Value::from(0u32)),
                ("ExecMainCode", Value::from(1i32)),
                ("ExecMainStatus", Value::from(3i32)),
                ("Result", Value::from("exit-code")),
            ]),
        );
        assert_eq!(
            (
                snap.load_state.as_str(),
                snap.active_state.as_str(),
                snap.main_pid,
                snap.exec_main_pid,
                snap.exec_main_status,
                snap.result.as_str()
            ),
            ("loaded", "active", 0, 42, 3, "exit-code")
        );
        // The Unit interface's, with the invocation as bytes.
        apply(
            &mut snap,
            &props(&[
                ("ActiveState", Value::from("failed")),
                ("InvocationID", Value::from(vec![0xabu8, 0x01])),
            ]),
        );
        assert_eq!(
            (
                snap.active_state.as_str(),
                snap.sub_state.as_str(),
                snap.invocation_id.as_str()
            ),
            ("failed", "running", "ab01")
        );
    }
}
