//! Units as typed data: what unitlet asks systemd for, property by property.
//!
//! The same list is sent over D-Bus (see `systemd::props`) and printed by
//! `unitlet render`, so what a reviewer reads is what systemd gets. No value
//! is ever pasted into unit-file text that systemd parses.

/// One transient-unit property with its D-Bus type fixed by the variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    /// `Description` (s).
    Description(String),
    /// `Slice` (s).
    Slice(String),
    /// `Type` (s).
    Type(String),
    /// `RemainAfterExit` (b): keeps exit status readable after a clean exit.
    RemainAfterExit(bool),
    /// `ExecStart` (a(sasb)) with every `$` doubled, so systemd's environment
    /// expansion gives argv back verbatim: what the unit-file view spells as
    /// the `:` (no-env-expand) prefix.
    ExecStart {
        /// Program to execute (absolute, or resolved by systemd's search path).
        path: String,
        /// Full argv including argv\[0\].
        argv: Vec<String>,
    },
    /// `Environment` (as), `NAME=value` entries.
    Environment(Vec<(String, String)>),
    /// `EnvironmentFiles` (a(sb)): one file, required. systemd reads it as
    /// root at each start; its contents never show over D-Bus.
    EnvironmentFile(String),
    /// `WorkingDirectory` (s).
    WorkingDirectory(String),
    /// `SyslogIdentifier` (s): the tag journal lines carry.
    SyslogIdentifier(String),
    /// `KillSignal` (i).
    KillSignal(i32),
    /// `TimeoutStopUSec` (t): grace before SIGKILL.
    TimeoutStopUSec(u64),
    /// `KillMode` (s): `mixed` sends the stop signal to the main process
    /// only (a helper that forwards it), SIGKILL to everything.
    KillMode(String),
    /// `StartLimitIntervalUSec` (t): 0 disables systemd's start rate limit; unitlet backs off itself.
    StartLimitIntervalUSec(u64),
    /// `MemoryMax` (t).
    MemoryMax(u64),
    /// `CPUQuotaPerSecUSec` (t).
    CpuQuotaPerSecUSec(u64),
    /// `CPUWeight` (t).
    CpuWeight(u64),
    /// `CPUAccounting`, `MemoryAccounting`, `TasksAccounting`, `IOAccounting` (b).
    Accounting(bool),
    /// `Delegate` (b): lets the agent move a process it starts "in the
    /// container" (an exec probe) into the unit's cgroup, which systemd
    /// allows only for delegated units.
    Delegate(bool),
    /// `CapabilityBoundingSet` (t): bit `1 << n` for capability number `n`
    /// (see [`CAPABILITIES`]).
    CapabilityBoundingSet(u64),
    /// `NoNewPrivileges` (b).
    NoNewPrivileges(bool),
    /// `ProtectSystem` (s): `strict` makes the whole file system read-only
    /// for the unit except the API file systems `/dev`, `/proc`, `/sys`.
    ProtectSystem(String),
    /// `SystemCallFilter` (bas): an allow-list (`allow`) or a deny-list of
    /// system calls and `@groups`. A deny entry after an allow entry
    /// removes names from the allow-list.
    SystemCallFilter {
        /// Allow-list (true) or deny-list (false).
        allow: bool,
        /// System call names and `@group`s.
        names: Vec<String>,
    },
    /// `SystemCallErrorNumber` (i): the errno a filtered call fails with.
    SystemCallErrorNumber(i32),
    /// `ReadOnlyPaths` (as): paths made read-only in the unit's mount
    /// namespace; a `-` prefix ignores a path that does not exist.
    ReadOnlyPaths(Vec<String>),
    /// `ProtectControlGroups` (b): the cgroup file system read-only.
    ProtectControlGroups(bool),
    /// `DevicePolicy` (s): `closed` allows only the standard pseudo devices
    /// (`/dev/null`, `zero`, `full`, `random`, `urandom`, `tty`, `ptmx`, `pts`).
    DevicePolicy(String),
    /// `PrivateTmp` (b): a `/tmp` and `/var/tmp` of the unit's own.
    PrivateTmp(bool),
    /// `ProtectKernelTunables` (b): `/proc/sys` and friends read-only.
    ProtectKernelTunables(bool),
    /// `ProtectKernelModules` (b): no module loading.
    ProtectKernelModules(bool),
    /// `BindPaths` (a(ssbt)): `(host path, path in the unit)` pairs,
    /// recursive, bound in the unit's own mount namespace. A missing
    /// source fails the start (the agent made them all beforehand).
    BindPaths(Vec<(String, String)>),
    /// `BindReadOnlyPaths` (a(ssbt)): as [`Property::BindPaths`], read-only.
    BindReadOnlyPaths(Vec<(String, String)>),
    /// `DeviceAllow` (a(ss)): `(device node, "r"/"rw")` pairs the unit may
    /// use despite `DevicePolicy=closed`.
    DeviceAllow(Vec<(String, String)>),
    /// `RootDirectory` (s): an OCI image's root file system as the unit's
    /// root (the store's tree; read-only through `ProtectSystem=strict`).
    RootDirectory(String),
    /// `MountAPIVFS` (b): `/proc`, `/sys`, `/dev` inside that root.
    MountApiVfs(bool),
    /// `TemporaryFileSystem` (a(ss)): `(path, options)` tmpfs mounts, for a
    /// writable `/tmp` in a read-only image root.
    TemporaryFileSystem(Vec<(String, String)>),
}

/// Linux capability names without `CAP_`, indexed by capability number
/// (`include/uapi/linux/capability.h`, up to `CAP_CHECKPOINT_RESTORE`).
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The number of a capability named as Kubernetes allows (`NET_ADMIN`,
/// `CAP_NET_ADMIN`, any case); `None` for an unknown name (and for `ALL`,
/// which is not one capability).
pub fn capability_number(name: &str) -> Option<u32> {
    let up = name.to_ascii_uppercase();
    let bare = up.strip_prefix("CAP_").unwrap_or(&up);
    CAPABILITIES
        .iter()
        .position(|c| *c == bare)
        .map(|n| n as u32)
}

/// Every capability of [`CAPABILITIES`] as a mask.
pub const ALL_CAPABILITIES: u64 = (1u64 << CAPABILITIES.len()) - 1;

/// Lower-case `cap_*` names of a mask, in number order (systemd's spelling).
pub fn capability_names(mask: u64) -> Vec<String> {
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(n, _)| mask & (1u64 << n) != 0)
        .map(|(_, c)| format!("cap_{}", c.to_ascii_lowercase()))
        .collect()
}

impl Property {
    /// `(key, unit-file value)` pairs, for rendering.
    pub fn render(&self) -> Vec<(&'static str, String)> {
        use Property::*;
        match self {
            Description(s) => vec![("Description", escape_value(s))],
            Slice(s) => vec![("Slice", s.clone())],
            Type(s) => vec![("Type", s.clone())],
            RemainAfterExit(b) => vec![("RemainAfterExit", yes_no(*b))],
            ExecStart { path, argv } => {
                // ":" is the unit-file spelling of the no-env-expand flag.
                let mut line = String::from(":");
                line.push_str(&quote_word(path));
                for a in argv.iter().skip(1) {
                    line.push(' ');
                    line.push_str(&quote_word(a));
                }
                if argv.first().is_some_and(|a0| a0 != path) {
                    line = format!("{line}  # argv[0]={}", quote_word(&argv[0]));
                }
                vec![("ExecStart", line)]
            }
            Environment(pairs) => pairs
                .iter()
                .map(|(k, v)| ("Environment", quote_word(&format!("{k}={v}"))))
                .collect(),
            EnvironmentFile(s) => vec![("EnvironmentFile", quote_word(s))],
            WorkingDirectory(s) => vec![("WorkingDirectory", quote_word(s))],
            SyslogIdentifier(s) => vec![("SyslogIdentifier", s.clone())],
            KillSignal(n) => vec![("KillSignal", n.to_string())],
            TimeoutStopUSec(u) => vec![("TimeoutStopSec", format!("{}us", u))],
            KillMode(m) => vec![("KillMode", m.clone())],
            StartLimitIntervalUSec(u) => vec![("StartLimitIntervalSec", format!("{u}us"))],
            MemoryMax(b) => vec![("MemoryMax", b.to_string())],
            CpuQuotaPerSecUSec(u) => vec![("CPUQuota", format!("{}%", u / 10_000))],
            CpuWeight(w) => vec![("CPUWeight", w.to_string())],
            Accounting(b) => [
                "CPUAccounting",
                "MemoryAccounting",
                "TasksAccounting",
                "IOAccounting",
            ]
            .iter()
            .map(|k| (*k, yes_no(*b)))
            .collect(),
            Delegate(b) => vec![("Delegate", yes_no(*b))],
            PrivateTmp(b) => vec![("PrivateTmp", yes_no(*b))],
            ProtectKernelTunables(b) => vec![("ProtectKernelTunables", yes_no(*b))],
            ProtectKernelModules(b) => vec![("ProtectKernelModules", yes_no(*b))],
            BindPaths(binds) => binds
                .iter()
                .map(|(s, d)| ("BindPaths", quote_word(&format!("{s}:{d}"))))
                .collect(),
            BindReadOnlyPaths(binds) => binds
                .iter()
                .map(|(s, d)| ("BindReadOnlyPaths", quote_word(&format!("{s}:{d}"))))
                .collect(),
            DeviceAllow(devs) => devs
                .iter()
                .map(|(p, a)| ("DeviceAllow", format!("{} {a}", quote_word(p))))
                .collect(),
            CapabilityBoundingSet(mask) => {
                vec![("CapabilityBoundingSet", capability_names(*mask).join(" "))]
            }
            NoNewPrivileges(b) => vec![("NoNewPrivileges", yes_no(*b))],
            ProtectSystem(s) => vec![("ProtectSystem", s.clone())],
            SystemCallFilter { allow, names } => {
                let list = names.join(" ");
                vec![(
                    "SystemCallFilter",
                    if *allow { list } else { format!("~{list}") },
                )]
            }
            SystemCallErrorNumber(n) => vec![(
                "SystemCallErrorNumber",
                if *n == 1 {
                    "EPERM".into()
                } else {
                    n.to_string()
                },
            )],
            ReadOnlyPaths(paths) => vec![(
                "ReadOnlyPaths",
                paths
                    .iter()
                    .map(|p| quote_word(p))
                    .collect::<Vec<_>>()
                    .join(" "),
            )],
            ProtectControlGroups(b) => vec![("ProtectControlGroups", yes_no(*b))],
            DevicePolicy(s) => vec![("DevicePolicy", s.clone())],
            RootDirectory(s) => vec![("RootDirectory", quote_word(s))],
            MountApiVfs(b) => vec![("MountAPIVFS", yes_no(*b))],
            TemporaryFileSystem(mounts) => mounts
                .iter()
                .map(|(p, o)| {
                    let v = if o.is_empty() {
                        quote_word(p)
                    } else {
                        quote_word(&format!("{p}:{o}"))
                    };
                    ("TemporaryFileSystem", v)
                })
                .collect(),
        }
    }

    fn section(&self) -> &'static str {
        match self {
            Property::Description(_) | Property::StartLimitIntervalUSec(_) => "Unit",
            _ => "Service",
        }
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// The text of an `EnvironmentFile=` that systemd reads back as exactly
/// `vars`: each value double-quoted, with `"`, `\`, `` ` `` and `$`
/// backslash-escaped (the only escapes systemd's env-file parser takes
/// inside double quotes; everything else, newlines included, is literal).
/// Names must be valid (letters, digits, `_`), which the caller checked.
pub fn env_file_text(vars: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in vars {
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            if matches!(c, '"' | '\\' | '`' | '$') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("\"\n");
    }
    out
}

/// Reads back what [`env_file_text`] wrote (and nothing else: this is not
/// systemd's whole env-file grammar).
pub fn parse_env_file_text(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches('\n').to_string(), value));
        rest = after[end..].strip_prefix('\n').unwrap_or(&after[end..]);
    }
    out
}

/// Quotes a word the way systemd's unit-file parser reads it back: double
/// quotes, C escapes, and doubled `%` so no specifier is expanded.
pub fn quote_word(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '%' => out.push_str("%%"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn escape_value(s: &str) -> String {
    s.replace('%', "%%").replace('\n', " ")
}

/// A unit to create: its name and typed properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// Full unit name including the `.service`/`.slice` suffix.
    pub name: String,
    /// Properties in the order they are sent.
    pub properties: Vec<Property>,
}

impl UnitSpec {
    /// A digest of the whole spec: what tells a container whose definition
    /// changed (a new image in the pod) from one that did not.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(format!("{self:?}").as_bytes());
        d[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Unit-file view of the properties (for `unitlet render`); never fed to systemd.
    pub fn render(&self) -> String {
        let mut out = format!("# {}\n", self.name);
        for section in ["Unit", "Service", "Slice"] {
            let props: Vec<_> = self
                .properties
                .iter()
                .filter(|p| {
                    p.section() == section
                        || (section == "Slice"
                            && self.name.ends_with(".slice")
                            && p.section() == "Service")
                })
                .collect();
            let props: Vec<_> = if self.name.ends_with(".slice") && section == "Service" {
                vec![]
            } else {
                props
            };
            if props.is_empty() {
                continue;
            }
            out.push_str(&format!("[{section}]\n"));
            for p in props {
                for (k, v) in p.render() {
                    out.push_str(&format!("{k}={v}\n"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_back_what_was_written() {
        let vars = vec![
            ("A".to_string(), "x\"y\\z $V `c`".to_string()),
            ("B".into(), "multi\nline\n".into()),
            ("C".into(), String::new()),
        ];
        assert_eq!(parse_env_file_text(&env_file_text(&vars)), vars);
    }

    #[test]
    fn capabilities_by_number_and_name() {
        assert_eq!(capability_number("chown"), Some(0));
        assert_eq!(capability_number("CAP_NET_RAW"), Some(13));
        assert_eq!(capability_number("cap_checkpoint_restore"), Some(40));
        assert_eq!(capability_number("ALL"), None);
        assert_eq!(capability_number("CAP_NOPE"), None);
        assert_eq!(
            capability_names((1 << 0) | (1 << 13)),
            ["cap_chown", "cap_net_raw"]
        );
        assert_eq!(ALL_CAPABILITIES.count_ones(), 41);
        let p = Property::CapabilityBoundingSet(1 << 21);
        assert_eq!(
            p.render(),
            [("CapabilityBoundingSet", "cap_sys_admin".to_string())]
        );
    }
}
