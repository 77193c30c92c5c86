//! `/metrics/cadvisor`: per-container and per-pod usage under cAdvisor's
//! names, help texts and labels, so that dashboards written for the
//! kubelet's cAdvisor endpoint graph unitlet's pods.
//!
//! Each running container is one set of series labelled as the kubelet
//! labels them: `container`, `pod`, `namespace`, `image` (as the pod
//! names it), `name` (the runtime's name for the container: here its
//! unit) and `id` (its control group, `/unitlet.slice/…/<unit>`). Each pod
//! with a running container has one more set with `container=""`,
//! `image=""`, `name=""` and `id` its slice's control group: cAdvisor's
//! series of the pod cgroup, which queries summing a pod use.
//!
//! Usage comes from the control group files
//! ([`CgroupReader::read_full`]), or on hosts whose units get no group of
//! their own in a controller, from the units' processes (see
//! [`crate::kubelet::procstats`]); a figure no source gives is left out,
//! never written as 0. The limits (`container_spec_*`) come from the
//! sizes the container was given (its record's, else its plan's), as
//! cAdvisor reads them back from the cgroup: memory 0 when unlimited,
//! CPU quota (µs per 100 ms period) only when limited. cAdvisor stamps
//! samples with the time they were read; `prometheus-client` cannot, so
//! the scrape's time applies (`container_last_seen` carries it).
//!
//! The pods come from the runtime's memory and the rest from files: no
//! D-Bus call per container.

use jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::http::Format;
use crate::core::observe::{instance, Instance};
use crate::core::quantity;
use crate::core::resources::Sizes;
use crate::kubelet::server::slice_cgroup;
use crate::kubelet::stats::{CgroupReader, CgroupUsage};
use crate::podview::PodView;

/// One container or pod to report: its labels and what its spec says.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `container`: empty for the pod.
    pub container: String,
    /// `id`: the control group.
    pub id: String,
    /// `image`: empty for the pod.
    pub image: String,
    /// `name`: the unit; empty for the pod.
    pub name: String,
    /// `namespace`.
    pub namespace: String,
    /// `pod`.
    pub pod: String,
    /// When it started, seconds since the epoch.
    pub start_s: Option<f64>,
    /// The memory limit in bytes, 0 for none (cAdvisor's convention).
    pub memory_limit: u64,
    /// The CFS quota in µs per 100 ms period, when CPU is limited.
    pub cpu_quota: Option<u64>,
}

/// A target with what was read for it.
#[derive(Debug, Clone)]
pub struct Row {
    /// Who.
    pub target: Target,
    /// What.
    pub usage: CgroupUsage,
}

/// The containers (running) and pods (with a running container) of
/// `views`, from memory only.
pub fn targets(views: &[PodView]) -> Vec<Target> {
    let mut out = Vec::new();
    for v in views {
        let meta = &v.rec.pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let pod = meta.name.clone().unwrap_or_default();
        let slice = slice_cgroup(&v.plan.slice);
        let mut any = false;
        for c in v.plan.all() {
            let Some(snap) = v.units.get(&c.unit) else {
                continue;
            };
            if !matches!(instance(Some(snap)), Instance::Running { .. }) {
                continue;
            }
            any = true;
            let sizes = v
                .records
                .get(&c.name)
                .and_then(|r| r.actuated.as_ref())
                .unwrap_or(&c.resources);
            let (memory_limit, cpu_quota) = limits(sizes);
            out.push(Target {
                container: c.name.clone(),
                id: format!("{slice}/{}", c.unit),
                image: c.image.clone(),
                name: c.unit.clone(),
                namespace: namespace.clone(),
                pod: pod.clone(),
                start_s: seconds(snap.exec_main_start_us),
                memory_limit,
                cpu_quota,
            });
        }
        if any {
            let (memory_limit, cpu_quota) = v
                .plan
                .slice_resources
                .as_ref()
                .map(limits)
                .unwrap_or((0, None));
            out.push(Target {
                container: String::new(),
                id: slice,
                image: String::new(),
                name: String::new(),
                namespace,
                pod,
                start_s: seconds(v.rec.admitted_us),
                memory_limit,
                cpu_quota,
            });
        }
    }
    out
}

fn seconds(us: u64) -> Option<f64> {
    (us > 0).then(|| us as f64 / 1e6)
}

/// Memory limit (0: none) and CFS quota of `sizes`, as the kubelet turns a
/// CPU limit into a quota: millicores × 100 µs per 100 ms, at least 1000.
fn limits(sizes: &Sizes) -> (u64, Option<u64>) {
    let memory = sizes
        .limits
        .get("memory")
        .and_then(|q| quantity::bytes(q).ok())
        .unwrap_or(0);
    let quota = sizes
        .limits
        .get("cpu")
        .and_then(|q| quantity::cpu_millis(q).ok())
        .filter(|&m| m > 0)
        .map(|m| (m * 100).max(1000));
    (memory, quota)
}

/// Reads every target's control group (blocking file reads), in the
/// order [`targets`] gives them: a pod's containers, then the pod. A pod's
/// slice is read from its control groups only; what they cannot give (on
/// hosts where units have no group in a controller) is the sum of its
/// containers just read, the same processes, so each process is read once.
pub fn read(targets: Vec<Target>, reader: &CgroupReader) -> Vec<Row> {
    let reader = reader.within("/unitlet.slice");
    let mut out: Vec<Row> = Vec::with_capacity(targets.len());
    let mut first_of_pod = 0;
    for t in targets {
        let pod = t.container.is_empty();
        let usage = if pod {
            let mut u = reader.read_full_groups(&t.id);
            let parts: Vec<&CgroupUsage> = out[first_of_pod..].iter().map(|r| &r.usage).collect();
            fill_from_containers(&mut u, &parts);
            u
        } else {
            reader.read_full(&t.id)
        };
        out.push(Row { target: t, usage });
        if pod {
            first_of_pod = out.len();
        }
    }
    out
}

/// Fills what `pod` lacks with the sums over its running containers'
/// `parts`, when every one of them has the figure (a partial sum would be
/// a made-up number). Throttling and OOM kills are the pod group's own and
/// are never summed.
pub fn fill_from_containers(pod: &mut CgroupUsage, parts: &[&CgroupUsage]) {
    fn sum<T>(parts: &[&CgroupUsage], get: impl Fn(&CgroupUsage) -> Option<T>) -> Option<Vec<T>> {
        parts.iter().map(|p| get(p)).collect()
    }
    if parts.is_empty() {
        return;
    }
    if pod.cpu_usage_ns.is_none() {
        pod.cpu_usage_ns = sum(parts, |p| p.cpu_usage_ns).map(|v| v.iter().sum());
    }
    if pod.memory.is_none() {
        pod.memory = sum(parts, |p| p.memory.clone()).map(|ms| {
            let total = |f: fn(&crate::kubelet::stats::MemoryUsage) -> Option<u64>| {
                ms.iter().map(f).sum::<Option<u64>>()
            };
            crate::kubelet::stats::MemoryUsage {
                usage_bytes: ms.iter().map(|m| m.usage_bytes).sum(),
                working_set_bytes: ms.iter().map(|m| m.working_set_bytes).sum(),
                rss_bytes: total(|m| m.rss_bytes),
                limit_bytes: None,
                cache_bytes: total(|m| m.cache_bytes),
                page_faults: total(|m| m.page_faults),
                major_page_faults: total(|m| m.major_page_faults),
            }
        });
    }
    if pod.more.processes.is_none() {
        pod.more.processes = sum(parts, |p| p.more.processes).map(|v| v.iter().sum());
    }
    if pod.more.io.is_none() {
        pod.more.io = sum(parts, |p| p.more.io.clone()).map(|all| {
            let mut by_dev: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
            for d in all.into_iter().flatten() {
                let e = by_dev.entry(d.device).or_default();
                e.0 = e.0.saturating_add(d.read_bytes);
                e.1 = e.1.saturating_add(d.write_bytes);
            }
            by_dev
                .into_iter()
                .map(
                    |(device, (read_bytes, write_bytes))| crate::kubelet::stats::IoBytes {
                        device,
                        read_bytes,
                        write_bytes,
                    },
                )
                .collect()
        });
    }
}

/// The `/metrics/cadvisor` body for `views`, read now (blocking).
pub fn render(views: &[PodView], reader: &CgroupReader, now: Timestamp, format: Format) -> String {
    encode_rows(read(targets(views), reader), now, format)
}

/// The exposition of `rows` scraped at `now`.
pub fn encode_rows(rows: Vec<Row>, now: Timestamp, format: Format) -> String {
    let mut r = Registry::default();
    r.register_collector(Box::new(Scrape {
        rows,
        now_s: now.as_millisecond() as f64 / 1e3,
    }));
    super::http::encode(&r, format)
}

#[derive(Debug)]
struct Scrape {
    rows: Vec<Row>,
    now_s: f64,
}

/// A value of one series.
enum Value {
    Counter(f64),
    Gauge(f64),
}

/// cAdvisor's labels of a row, sorted by name as Prometheus' Go client
/// writes them, with `extra` (`cpu`, `device`) in its place.
fn labels<'a>(
    t: &'a Target,
    extra: Option<(&'static str, &'a str)>,
) -> Vec<(&'static str, &'a str)> {
    let mut l = vec![("container", t.container.as_str())];
    if let Some(("cpu", v)) = extra {
        l.push(("cpu", v));
    }
    if let Some(("device", v)) = extra {
        l.push(("device", v));
    }
    l.extend([
        ("id", t.id.as_str()),
        ("image", t.image.as_str()),
        ("name", t.name.as_str()),
        ("namespace", t.namespace.as_str()),
        ("pod", t.pod.as_str()),
    ]);
    l
}

type Getter = fn(&Row, f64) -> Option<Value>;

/// cAdvisor's families: name without `_total` (the encoder adds it to
/// counters), help, type, and the value of a row.
const FAMILIES: &[(&str, &str, MetricType, Getter)] = &[
    (
        "container_cpu_cfs_throttled_seconds",
        "Total time duration the container has been throttled.",
        MetricType::Counter,
        |r, _| {
            r.usage
                .more
                .throttled_ns
                .map(|n| Value::Counter(n as f64 / 1e9))
        },
    ),
    (
        "container_last_seen",
        "Last time a container was seen by the exporter",
        MetricType::Gauge,
        |_, now| Some(Value::Gauge(now)),
    ),
    (
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        MetricType::Gauge,
        |r, _| {
            r.usage
                .memory
                .as_ref()?
                .cache_bytes
                .map(|b| Value::Gauge(b as f64))
        },
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        MetricType::Gauge,
        |r, _| {
            r.usage
                .memory
                .as_ref()?
                .rss_bytes
                .map(|b| Value::Gauge(b as f64))
        },
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        MetricType::Gauge,
        |r, _| {
            r.usage
                .memory
                .as_ref()
                .map(|m| Value::Gauge(m.usage_bytes as f64))
        },
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        MetricType::Gauge,
        |r, _| {
            r.usage
                .memory
                .as_ref()
                .map(|m| Value::Gauge(m.working_set_bytes as f64))
        },
    ),
    (
        "container_oom_events",
        "Count of out of memory events observed for the container",
        MetricType::Counter,
        |r, _| r.usage.more.oom_events.map(|n| Value::Counter(n as f64)),
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        MetricType::Gauge,
        |r, _| r.usage.more.processes.map(|n| Value::Gauge(n as f64)),
    ),
    (
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        MetricType::Gauge,
        |r, _| r.target.cpu_quota.map(|q| Value::Gauge(q as f64)),
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        MetricType::Gauge,
        |r, _| Some(Value::Gauge(r.target.memory_limit as f64)),
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        MetricType::Gauge,
        |r, _| r.target.start_s.map(Value::Gauge),
    ),
];

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Sorted by name, as cAdvisor's registry writes them.
        {
            let mut m = encoder.encode_descriptor(
                "container_cpu_usage_seconds",
                "Cumulative cpu time consumed in seconds.",
                None,
                MetricType::Counter,
            )?;
            for row in &self.rows {
                if let Some(ns) = row.usage.cpu_usage_ns {
                    let l = labels(&row.target, Some(("cpu", "total")));
                    ConstCounter::new(ns as f64 / 1e9).encode(m.encode_family(&l)?)?;
                }
            }
        }
        let families = |encoder: &mut DescriptorEncoder,
                        which: &[(&str, &str, MetricType, Getter)]| {
            for (name, help, kind, get) in which {
                family(encoder, &self.rows, self.now_s, name, help, *kind, *get)?;
            }
            Ok(())
        };
        // In name order, as cAdvisor writes them: the I/O families fall
        // between the first and the rest.
        families(&mut encoder, &FAMILIES[..1])?;
        for (name, help, which) in [
            (
                "container_fs_reads_bytes",
                "Cumulative count of bytes read",
                false,
            ),
            (
                "container_fs_writes_bytes",
                "Cumulative count of bytes written",
                true,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for row in &self.rows {
                for d in row.usage.more.io.iter().flatten() {
                    let v = if which { d.write_bytes } else { d.read_bytes };
                    let l = labels(&row.target, Some(("device", d.device.as_str())));
                    ConstCounter::new(v).encode(m.encode_family(&l)?)?;
                }
            }
        }
        families(&mut encoder, &FAMILIES[1..])
    }
}

fn family(
    encoder: &mut DescriptorEncoder,
    rows: &[Row],
    now_s: f64,
    name: &str,
    help: &str,
    kind: MetricType,
    get: Getter,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, kind)?;
    for row in rows {
        let l = labels(&row.target, None);
        match get(row, now_s) {
            Some(Value::Counter(v)) => ConstCounter::new(v).encode(m.encode_family(&l)?)?,
            Some(Value::Gauge(v)) => ConstGauge::new(v).encode(m.encode_family(&l)?)?,
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::stats::{IoBytes, MemoryUsage, MoreUsage};

    fn target(container: &str, id: &str) -> Target {
        Target {
            container: container.into(),
            id: id.into(),
            image: if container.is_empty() {
                ""
            } else {
                "busybox:1.36"
            }
            .into(),
            name: if container.is_empty() {
                ""
            } else {
                "unitlet_ns_p_c_abc.service"
            }
            .into(),
            namespace: "ns".into(),
            pod: "p".into(),
            start_s: Some(1_700_000_000.5),
            memory_limit: if container.is_empty() { 0 } else { 64 << 20 },
            cpu_quota: (!container.is_empty()).then_some(50_000),
        }
    }

    #[test]
    fn exposition_of_a_container_and_its_pod() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let slice = "/unitlet.slice/unitlet-3.slice/unitlet-3-podabc.slice";
        let container = Row {
            target: target("c", &format!("{slice}/unitlet_ns_p_c_abc.service")),
            usage: CgroupUsage {
                time: now,
                cpu_usage_ns: Some(2_500_000_000),
                memory: Some(MemoryUsage {
                    usage_bytes: 8192,
                    working_set_bytes: 7168,
                    rss_bytes: Some(4096),
                    limit_bytes: Some(64 << 20),
                    cache_bytes: Some(4096),
                    page_faults: None,
                    major_page_faults: None,
                }),
                more: MoreUsage {
                    throttled_ns: Some(1_000_000),
                    oom_events: Some(0),
                    processes: Some(2),
                    io: Some(vec![IoBytes {
                        device: "/dev/vda".into(),
                        read_bytes: 4096,
                        write_bytes: 512,
                    }]),
                },
            },
        };
        // The pod as on a host without usable controllers: CPU only.
        let pod = Row {
            target: target("", slice),
            usage: CgroupUsage {
                time: now,
                cpu_usage_ns: Some(3_000_000_000),
                memory: None,
                more: MoreUsage::default(),
            },
        };
        let got = encode_rows(vec![container, pod], now, Format::Text);
        let c = r#"container="c",id="/unitlet.slice/unitlet-3.slice/unitlet-3-podabc.slice/unitlet_ns_p_c_abc.service",image="busybox:1.36",name="unitlet_ns_p_c_abc.service",namespace="ns",pod="p""#;
        let p = r#"container="",id="/unitlet.slice/unitlet-3.slice/unitlet-3-podabc.slice",image="",name="",namespace="ns",pod="p""#;
        let pc = r#"id="/unitlet.slice/unitlet-3.slice/unitlet-3-podabc.slice",image="",name="",namespace="ns",pod="p""#;
        let cc = r#"id="/unitlet.slice/unitlet-3.slice/unitlet-3-podabc.slice/unitlet_ns_p_c_abc.service",image="busybox:1.36",name="unitlet_ns_p_c_abc.service",namespace="ns",pod="p""#;
        let want = format!(
            "# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed in seconds.\n\
# TYPE container_cpu_usage_seconds_total counter\n\
container_cpu_usage_seconds_total{{container=\"c\",cpu=\"total\",{cc}}} 2.5\n\
container_cpu_usage_seconds_total{{container=\"\",cpu=\"total\",{pc}}} 3.0\n\
# HELP container_cpu_cfs_throttled_seconds_total Total time duration the container has been throttled.\n\
# TYPE container_cpu_cfs_throttled_seconds_total counter\n\
container_cpu_cfs_throttled_seconds_total{{{c}}} 0.001\n\
# HELP container_fs_reads_bytes_total Cumulative count of bytes read\n\
# TYPE container_fs_reads_bytes_total counter\n\
container_fs_reads_bytes_total{{container=\"c\",device=\"/dev/vda\",{cc}}} 4096\n\
# HELP container_fs_writes_bytes_total Cumulative count of bytes written\n\
# TYPE container_fs_writes_bytes_total counter\n\
container_fs_writes_bytes_total{{container=\"c\",device=\"/dev/vda\",{cc}}} 512\n\
# HELP container_last_seen Last time a container was seen by the exporter\n\
# TYPE container_last_seen gauge\n\
container_last_seen{{{c}}} 1767225600.0\n\
container_last_seen{{{p}}} 1767225600.0\n\
# HELP container_memory_cache Number of bytes of page cache memory.\n\
# TYPE container_memory_cache gauge\n\
container_memory_cache{{{c}}} 4096.0\n\
# HELP container_memory_rss Size of RSS in bytes.\n\
# TYPE container_memory_rss gauge\n\
container_memory_rss{{{c}}} 4096.0\n\
# HELP container_memory_usage_bytes Current memory usage in bytes, including all memory regardless of when it was accessed\n\
# TYPE container_memory_usage_bytes gauge\n\
container_memory_usage_bytes{{{c}}} 8192.0\n\
# HELP container_memory_working_set_bytes Current working set in bytes.\n\
# TYPE container_memory_working_set_bytes gauge\n\
container_memory_working_set_bytes{{{c}}} 7168.0\n\
# HELP container_oom_events_total Count of out of memory events observed for the container\n\
# TYPE container_oom_events_total counter\n\
container_oom_events_total{{{c}}} 0.0\n\
# HELP container_processes Number of processes running inside the container.\n\
# TYPE container_processes gauge\n\
container_processes{{{c}}} 2.0\n\
# HELP container_spec_cpu_quota CPU quota of the container.\n\
# TYPE container_spec_cpu_quota gauge\n\
container_spec_cpu_quota{{{c}}} 50000.0\n\
# HELP container_spec_memory_limit_bytes Memory limit for the container.\n\
# TYPE container_spec_memory_limit_bytes gauge\n\
container_spec_memory_limit_bytes{{{c}}} 67108864.0\n\
container_spec_memory_limit_bytes{{{p}}} 0.0\n\
# HELP container_start_time_seconds Start time of the container since unix epoch in seconds.\n\
# TYPE container_start_time_seconds gauge\n\
container_start_time_seconds{{{c}}} 1700000000.5\n\
container_start_time_seconds{{{p}}} 1700000000.5\n"
        );
        assert_eq!(got, want, "got:\n{got}");
        let om = encode_rows(Vec::new(), now, Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    fn a_pod_without_groups_is_the_sum_of_its_containers() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let part = |cpu, mem: u64, procs, io: u64| CgroupUsage {
            time: now,
            cpu_usage_ns: Some(cpu),
            memory: Some(MemoryUsage {
                usage_bytes: mem,
                working_set_bytes: mem,
                rss_bytes: Some(mem / 2),
                limit_bytes: None,
                cache_bytes: None,
                page_faults: Some(1),
                major_page_faults: Some(0),
            }),
            more: MoreUsage {
                throttled_ns: Some(5),
                oom_events: None,
                processes: Some(procs),
                io: Some(vec![IoBytes {
                    device: String::new(),
                    read_bytes: io,
                    write_bytes: 1,
                }]),
            },
        };
        let (a, b) = (part(10, 100, 1, 7), part(20, 300, 2, 3));
        // The pod's own CPU (unified tree) stays; the rest is summed.
        let mut pod = CgroupUsage {
            time: now,
            cpu_usage_ns: Some(99),
            memory: None,
            more: MoreUsage::default(),
        };
        fill_from_containers(&mut pod, &[&a, &b]);
        assert_eq!(pod.cpu_usage_ns, Some(99));
        let m = pod.memory.clone().unwrap();
        assert_eq!(
            (m.usage_bytes, m.working_set_bytes, m.rss_bytes),
            (400, 400, Some(200))
        );
        assert_eq!((m.cache_bytes, m.limit_bytes), (None, None));
        assert_eq!(pod.more.processes, Some(3));
        assert_eq!(pod.more.throttled_ns, None, "a pod's throttling is its own");
        assert_eq!(
            pod.more.io,
            Some(vec![IoBytes {
                device: String::new(),
                read_bytes: 10,
                write_bytes: 2,
            }])
        );
        // One container without a figure: no sum at all.
        let mut c = part(1, 1, 1, 1);
        c.memory = None;
        let mut pod = CgroupUsage {
            time: now,
            cpu_usage_ns: None,
            memory: None,
            more: MoreUsage::default(),
        };
        fill_from_containers(&mut pod, &[&a, &c]);
        assert_eq!((pod.cpu_usage_ns, pod.memory), (Some(11), None));
    }

    #[test]
    fn limits_as_cadvisor_reads_them_back() {
        let mut s = Sizes::default();
        assert_eq!(limits(&s), (0, None));
        s.limits.insert("memory".into(), "128Mi".into());
        s.limits.insert("cpu".into(), "500m".into());
        assert_eq!(limits(&s), (128 << 20, Some(50_000)));
        s.limits.insert("cpu".into(), "1m".into());
        assert_eq!(limits(&s).1, Some(1000));
    }
}
