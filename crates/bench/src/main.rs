//! `unitlet-bench`: how fast unitlet turns manifests into running units,
//! compared with what systemd itself can do, and whether a restarted agent
//! adopts running pods without touching them.
//!
//! For each size N, one fresh sandbox node (systemd-nspawn, volatile root;
//! see `unitlet::sandbox`) is booted, so sizes do not disturb each other and
//! the host needs no systemd. In it, three phases run:
//!
//! 1. raw systemd: N `sleep infinity` transient units straight over D-Bus
//!    (the ceiling unitlet is measured against);
//! 2. unitlet: N pod manifests written into the directory of a running agent,
//!    timed until every pod logs phase Running;
//! 3. re-adopt: the agent is killed with SIGKILL and restarted; it must reach
//!    "initial sync complete" quickly and restart none of the N units;
//! 4. idle: with the N pods running and nothing changing, the second
//!    agent's CPU over [`IDLE`] (with its default 20 s relist, so one relist
//!    falls inside), and how long `unitlet pods -A` takes;
//! 5. delete: every manifest removed at once, timed until systemd has no
//!    unitlet unit loaded, against the raw units stopped with one
//!    `StopUnit` call after another;
//! 6. cluster (sizes in `--cluster-sizes`): `unitlet node` against the
//!    in-process test API server; N pods bound to the node are created at
//!    once, timed until the API server has every one `Running` (status
//!    written), against phase 2's standalone time.
//!
//! Between 2 and 3, with the N pods running, the first agent's
//! `/metrics/cadvisor` is scraped a few times (see `scrape.rs`).
//!
//! Build both binaries first (`cargo build --release --bins`); the agent is
//! the `unitlet` next to this binary. Needs root (systemd-nspawn).

mod agent;
mod bus;
mod scrape;

use agent::{now_us, Agent};
use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use unitlet::sandbox::{Sandbox, SandboxOptions};

/// Benchmark unitlet against raw systemd in throwaway sandbox nodes.
#[derive(Debug, Parser)]
#[command(name = "unitlet-bench")]
struct Args {
    /// Pod counts to measure, one fresh node each.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,2000")]
    sizes: Vec<usize>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Passed to `unitlet run --workers` (default: unitlet's own default).
    #[arg(long)]
    workers: Option<usize>,
    /// Further `unitlet run` arguments for the agent, one per use (e.g.
    /// `--agent-arg=--max-starting=128`), to measure its settings.
    #[arg(long, allow_hyphen_values = true)]
    agent_arg: Vec<String>,
    /// Raw phase: start jobs allowed to be queued in systemd at once (see
    /// `JOB_WINDOW` in bus.rs for why there must be a bound).
    #[arg(long, default_value_t = bus::JOB_WINDOW)]
    raw_job_window: usize,
    /// Raw phase: `StartTransientUnit` calls awaiting their reply at once.
    /// 1 (the default) is a hand-written client calling one after another,
    /// each reply awaited (its start jobs still run side by side); up to 64
    /// pipelines them as unitlet can.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    raw_in_flight: u32,
    /// Raw phase: what the raw client starts. `plain` (the default):
    /// `sleep` units in one slice, the least a hand-written client sends.
    /// `unitlet`: the very units unitlet's translation makes of the same
    /// pods (a slice per pod, the default hardening, accounting,
    /// delegation), so the ratio compares the clients on the same work.
    #[arg(long, value_enum, default_value_t = RawShape::Plain)]
    raw_units: RawShape,
    /// Write manifests at this many per second instead of as fast as
    /// possible. pods/s then measures keeping up with that arrival rate, not
    /// peak throughput; useful to get N pods running where a burst of N
    /// would overload the node.
    #[arg(long)]
    write_rate: Option<f64>,
    /// Keep each size's work directory (manifests, agent logs, console log)
    /// under target/bench/ even when the size succeeded.
    #[arg(long)]
    keep: bool,
    /// Run the pods from an artifact image instead of `image: host`: the
    /// bench serves a small release archive over HTTP on the host's
    /// loopback and the node pulls it once (`unitlet pull`) before the
    /// manifests are written, so the pods start from a cached image (the
    /// tree mounted read-only into each unit). Compare with a run without.
    #[arg(long)]
    cached_artifact: bool,
    /// Sizes at which cluster mode is measured too (phase 6).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    cluster_sizes: Vec<usize>,
    /// `/metrics/cadvisor` scrapes per size (their mean is reported).
    #[arg(long, default_value_t = 5)]
    scrapes: usize,
}

/// What the raw phase starts (`--raw-units`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum RawShape {
    Plain,
    Unitlet,
}

/// The `--json` output: settings, then one object per size.
#[derive(Debug, Serialize)]
struct Report<'a> {
    raw_units: RawShape,
    raw_calls_in_flight: usize,
    raw_job_window: usize,
    workers: Option<usize>,
    agent_args: Vec<String>,
    write_rate: Option<f64>,
    results: &'a [SizeResult],
    errors: Vec<SizeError>,
}

/// A size that could not be measured.
#[derive(Debug, Serialize)]
struct SizeError {
    n: usize,
    error: String,
}

/// Everything measured for one size.
#[derive(Debug, Clone, Serialize)]
struct SizeResult {
    n: usize,
    raw_start_s: f64,
    raw_units_per_s: f64,
    raw_stop_s: f64,
    /// CPU seconds the node's systemd (PID 1) and dbus-daemon spent while the
    /// raw units started, and while unitlet's pods started: what each costs
    /// the node, whatever the wall-clock noise.
    raw_systemd_cpu_s: f64,
    raw_dbus_cpu_s: f64,
    unitlet_systemd_cpu_s: f64,
    unitlet_dbus_cpu_s: f64,
    /// First manifest write → last pod Running (agent log timestamp).
    unitlet_s: f64,
    pods_per_s: f64,
    /// unitlet pods/s ÷ raw units/s.
    ratio: f64,
    /// Per pod: its manifest's rename → its first phase=Running log line.
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    /// Per pod: rename → "admitted pod" (the part spent before any systemd call).
    admit_p50_ms: f64,
    admit_p99_ms: f64,
    /// Writing all N manifests (write + rename each).
    write_s: f64,
    /// First agent, when all N pods were Running.
    agent_peak_rss_mib: f64,
    agent_cpu_s: f64,
    /// Second agent: spawn → "initial sync complete" (agent log timestamp).
    readopt_s: f64,
    /// The `elapsed_ms` the second agent itself reports (from its runtime
    /// start, so without process start and bus connection).
    readopt_agent_elapsed_ms: Option<u64>,
    readopt_peak_rss_mib: f64,
    readopt_cpu_s: f64,
    /// Units whose MainPID or InvocationID changed (or that vanished) across the agent restart.
    units_restarted: usize,
    /// One `/metrics/cadvisor` scrape with the N pods running: the agent's
    /// CPU and the wall time, ms; the containers it reported.
    scrape_cpu_ms: f64,
    scrape_wall_ms: f64,
    /// The second agent's CPU while nothing changes, % of one core.
    idle_cpu_pct: f64,
    /// `unitlet pods -A` with the N pods running, median of 3, ms.
    pods_list_ms: f64,
    /// All manifests removed → no unitlet unit loaded, s.
    delete_s: f64,
    /// `delete_s` ÷ `raw_stop_s`.
    delete_ratio: f64,
    /// Cluster mode: first pod created → every pod `Running` in the API, s.
    cluster_s: Option<f64>,
    /// `cluster_s` ÷ `unitlet_s`.
    cluster_ratio: Option<f64>,
    scrape_containers: usize,
    scrape_bytes: usize,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(ok) => std::process::exit(if ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("unitlet-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs every size; `Ok(false)` when a size failed or a unit was restarted.
fn run(args: &Args) -> anyhow::Result<bool> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (it boots systemd-nspawn nodes)");
    }
    let exe = std::env::current_exe()?.with_file_name("unitlet");
    if !exe.is_file() {
        bail!(
            "{} not found: build both binaries with `cargo build --release --bins`",
            exe.display()
        );
    }
    let exe_dir = exe.parent().context("unitlet binary has no directory")?;
    let bench_root = exe_dir
        .parent()
        .context("unitlet binary has no target directory")?
        .join("bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for &n in &args.sizes {
        if n == 0 || n > 99_999 {
            bail!("--sizes: {n} is out of range 1..=99999");
        }
        let name = format!("ub-{n}-{}", std::process::id());
        let work = bench_root.join(&name);
        eprintln!("[N={n}] booting node {name} (work dir {})", work.display());
        match bench_size(&rt, args, &exe, exe_dir, &work, &name, n) {
            Ok(r) => {
                eprintln!("[N={n}] done");
                results.push(r);
                if !args.keep {
                    let _ = std::fs::remove_dir_all(&work);
                }
            }
            Err(e) => {
                eprintln!(
                    "[N={n}] FAILED: {e:#}\n[N={n}] logs kept in {}",
                    work.display()
                );
                failures.push((n, format!("{e:#}")));
            }
        }
    }
    if args.json {
        let report = Report {
            raw_units: args.raw_units,
            raw_calls_in_flight: args.raw_in_flight as usize,
            raw_job_window: args.raw_job_window,
            workers: args.workers,
            agent_args: args.agent_arg.clone(),
            write_rate: args.write_rate,
            results: &results,
            errors: failures
                .iter()
                .map(|(n, error)| SizeError {
                    n: *n,
                    error: error.clone(),
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "raw: {} units, {} call(s) in flight",
            match args.raw_units {
                RawShape::Plain => "plain `sleep`",
                RawShape::Unitlet => "unitlet's own (translated from the same pods)",
            },
            args.raw_in_flight
        );
        print!("{}", table(&results));
        print!("{}", targets(&results));
        for (n, e) in &failures {
            println!("N={n}: FAILED: {e}");
        }
    }
    Ok(failures.is_empty() && results.iter().all(|r| r.units_restarted == 0))
}

/// Phase 6: `unitlet node` in the same node against the in-process test
/// API server (on the host's loopback, which nodes share); `n` pods bound
/// to the node are created at once and the time until the API server has
/// every one `Running` is returned.
fn cluster_phase(
    node: &Sandbox,
    exe: &Path,
    work: &Path,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    use unitlet_test_support::apiserver::ApiServer;
    let api = ApiServer::start();
    let kubeconfig = work.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let name = "bench-node";
    let args: Vec<String> = [
        "node",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
        "--node-name",
        name,
        "--port",
        &port.to_string(),
        "--relist",
        "60s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent = Agent::spawn_with(node, exe, &args, &work.join("agent-cluster.log"))?;
    agent.wait_message("initial sync complete", Instant::now() + timeout)?;
    let began = Instant::now();
    for i in 0..n {
        api.create(
            "pods",
            Some("default"),
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{i:05}"), "namespace": "default"},
                "spec": {"nodeName": name, "containers": [{
                    "name": "c", "image": "host", "command": ["/usr/bin/sleep", "infinity"]
                }]},
            }),
        );
    }
    loop {
        let running = api
            .list("pods", Some("default"))
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        if running == n {
            break;
        }
        if began.elapsed() > timeout {
            bail!("cluster mode: {running} of {n} pods Running in the API after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = began.elapsed();
    agent.stop(nix::sys::signal::Signal::SIGTERM)?;
    Ok(took)
}

/// How long the idle phase watches the agent (one 20 s relist inside).
const IDLE: Duration = Duration::from_secs(25);

/// Time allowed for each phase of a size: generous, but bounded, so a stuck
/// node or agent ends the run with an error instead of hanging (120 s at 1000).
fn phase_timeout(n: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(90) * n as u32
}

fn bench_size(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    exe: &Path,
    exe_dir: &Path,
    work: &Path,
    name: &str,
    n: usize,
) -> anyhow::Result<SizeResult> {
    let _ = std::fs::remove_dir_all(work);
    let manifests = work.join("manifests");
    std::fs::create_dir_all(&manifests)
        .with_context(|| format!("creating {}", manifests.display()))?;
    let node = Sandbox::boot(&SandboxOptions {
        name: name.to_string(),
        binds: vec![work.to_path_buf()],
        ro_binds: vec![exe_dir.to_path_buf()],
        console_log: Some(work.join("console.log")),
        ..Default::default()
    })
    .context("booting the sandbox node")?;
    let result = measure(rt, args, exe, &node, &manifests, n);
    result.map_err(|e| match save_journal(&node, &work.join("journal.txt")) {
        Some(hint) => e.context(hint),
        None => e,
    })
}

/// The three phases, in a booted node.
fn measure(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    exe: &Path,
    node: &Sandbox,
    manifests: &Path,
    n: usize,
) -> anyhow::Result<SizeResult> {
    let timeout = phase_timeout(n);
    let work = manifests
        .parent()
        .context("manifest directory has no parent")?;
    // The artifact server lives as long as the measurement.
    let server = args
        .cached_artifact
        .then(unitlet_test_support::artifacts::ArtifactServer::start);
    let image = match &server {
        None => "host".to_string(),
        Some(server) => {
            let archive = unitlet_test_support::artifacts::tar_gz(&[(
                "README",
                b"a release archive; the pods run the host's sleep".as_slice(),
            )]);
            let digest = unitlet_test_support::artifacts::sha256(&archive);
            server.put("/bench.tar.gz", archive);
            let image = format!("{}@{digest}", server.url("/bench.tar.gz"));
            let out = node
                .command(exe)
                .args(["pull", &image])
                .output()
                .context("unitlet pull")?;
            if !out.status.success() {
                bail!(
                    "unitlet pull {image}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            eprintln!("[N={n}] pulled {image}: pods start from the cached artifact");
            image
        }
    };

    let cpu = NodeCpu::find(node)?;

    // 1. raw systemd
    eprintln!(
        "[N={n}] raw systemd: {n} transient units over D-Bus ({:?})",
        args.raw_units
    );
    let raw = match args.raw_units {
        RawShape::Plain => bus::plain_units(n),
        RawShape::Unitlet => bus::unitlet_units(n)?,
    };
    let (raw_start, raw_cpu, raw_stop) = rt.block_on(async {
        let bus = bus::NodeBus::connect(node.init_pid()).await?;
        let before = cpu.read()?;
        let start = bus::raw_start(
            &bus,
            &raw,
            args.raw_in_flight as usize,
            args.raw_job_window,
            timeout,
        )
        .await?;
        let used = cpu.read()? - before;
        let stop = bus::raw_stop(&bus, &raw, timeout).await?;
        anyhow::Ok((start, used, stop))
    })?;

    // 2. unitlet
    eprintln!("[N={n}] unitlet: writing {n} manifests");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut first_args = agent_args(args);
    first_args.push(format!("--metrics-bind-address=127.0.0.1:{metrics_port}"));
    // The relist is a safety net; keep it out of the measured window.
    let mut agent = Agent::spawn(
        node,
        exe,
        manifests,
        "60s",
        &first_args,
        &work.join("agent-1.log"),
    )?;
    eprintln!("[N={n}] agent running as host pid {}", agent.pid());
    agent.wait_message("initial sync complete", Instant::now() + timeout)?;
    let cpu_before = cpu.read()?;
    let writes = write_manifests(manifests, n, args.write_rate, &image)?;
    let deadline = Instant::now() + timeout;
    let mut running: HashMap<String, i64> = HashMap::new();
    let mut admitted: HashMap<String, i64> = HashMap::new();
    while running.len() < n {
        let waiting = format!("all pods Running ({} of {n} so far)", running.len());
        let line = agent.next_line(deadline, &waiting)?;
        let Some(pod) = line.pod else { continue };
        match (line.message.as_str(), line.phase.as_deref()) {
            ("admitted pod", _) => {
                admitted.entry(pod).or_insert(line.ts_us);
            }
            ("pod status", Some("Running")) => {
                running.entry(pod).or_insert(line.ts_us);
            }
            _ => {}
        }
    }
    let usage1 = agent.usage()?;
    let unitlet_cpu = cpu.read()? - cpu_before;
    let last_running = running.values().copied().max().unwrap_or(writes.first_us);
    let unitlet_s = (last_running - writes.first_us) as f64 / 1e6;
    let mut latency = Vec::with_capacity(n);
    let mut admit = Vec::with_capacity(n);
    for (pod, &written) in &writes.done_us {
        let ran = running
            .get(pod)
            .with_context(|| format!("{pod} Running but never written"))?;
        latency.push((ran - written) as f64 / 1e3);
        if let Some(a) = admitted.get(pod) {
            admit.push((a - written) as f64 / 1e3);
        }
    }

    eprintln!("[N={n}] scraping /metrics/cadvisor {} times", args.scrapes);
    let scraped = scrape::measure(
        agent.pid(),
        metrics_port,
        args.scrapes.max(1),
        Instant::now() + timeout,
    )?;

    // 3. re-adopt
    eprintln!("[N={n}] re-adopt: SIGKILL the agent, start another");
    // A safety net: wait until systemd lists every unit running before
    // taking the identities (an agent that reported Running too early,
    // as one once did for units with a mount namespace, fails here only
    // if systemd never agrees).
    let settle = Instant::now() + timeout;
    let mut before = rt.block_on(identities(node.init_pid()))?;
    while Instant::now() < settle
        && (before.len() != n || before.values().any(|i| i.active != "active/running"))
    {
        std::thread::sleep(Duration::from_millis(100));
        before = rt.block_on(identities(node.init_pid()))?;
    }
    if before.len() != n || before.values().any(|i| i.active != "active/running") {
        let mut states: std::collections::BTreeMap<&str, usize> = Default::default();
        for i in before.values() {
            *states.entry(i.active.as_str()).or_default() += 1;
        }
        bail!(
            "expected {n} active/running unitlet units before the restart, found {} units: {states:?}",
            before.len()
        );
    }
    agent.stop(nix::sys::signal::Signal::SIGKILL)?;
    let mut second_args = agent_args(args);
    second_args.push("--metrics-bind-address=0".into());
    // The default relist: the idle phase must include one.
    let mut agent = Agent::spawn(
        node,
        exe,
        manifests,
        "20s",
        &second_args,
        &work.join("agent-2.log"),
    )?;
    let synced = agent.wait_message("initial sync complete", Instant::now() + timeout)?;
    let readopt_s = (synced.ts_us - agent.spawned_us) as f64 / 1e6;
    let readopt_agent_elapsed_ms = elapsed_ms(&work.join("agent-2.log"));
    let usage2 = agent.usage()?;
    // A restart the new agent decided on would already be queued as a job by
    // now; give systemd a moment to carry it out so the comparison sees it.
    std::thread::sleep(Duration::from_secs(1));
    let after = rt.block_on(identities(node.init_pid()))?;
    let units_restarted = before
        .iter()
        .filter(|(unit, id)| {
            after
                .get(*unit)
                .is_none_or(|a| a.main_pid != id.main_pid || a.invocation_id != id.invocation_id)
        })
        .count();

    // 4. idle
    eprintln!("[N={n}] idle: the agent's CPU over {IDLE:?}, then `unitlet pods -A`");
    let idle_before = agent.usage()?;
    std::thread::sleep(IDLE);
    let idle_cpu_pct = (agent.usage()?.cpu_s - idle_before.cpu_s) / IDLE.as_secs_f64() * 100.0;
    let mut lists = Vec::new();
    for _ in 0..3 {
        let began = Instant::now();
        let out = node
            .command(exe)
            .args(["pods", "-A"])
            .output()
            .context("unitlet pods -A")?;
        lists.push(began.elapsed().as_secs_f64() * 1e3);
        if !out.status.success() {
            bail!("unitlet pods -A: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    // 5. delete
    eprintln!("[N={n}] delete: removing the {n} manifests");
    let removing = Instant::now();
    for entry in std::fs::read_dir(manifests)? {
        std::fs::remove_file(entry?.path())?;
    }
    let delete = rt.block_on(async {
        let bus = bus::NodeBus::connect(node.init_pid()).await?;
        bus.wait_none("unitlet_*.service", removing, timeout).await
    })?;
    agent.stop(nix::sys::signal::Signal::SIGTERM)?;

    // 6. cluster
    let cluster_s = if args.cluster_sizes.contains(&n) {
        eprintln!("[N={n}] cluster: {n} pods bound at once through the test API server");
        Some(cluster_phase(node, exe, work, n, timeout)?.as_secs_f64())
    } else {
        None
    };

    let raw_start_s = raw_start.as_secs_f64();
    let raw_units_per_s = n as f64 / raw_start_s;
    let pods_per_s = n as f64 / unitlet_s;
    Ok(SizeResult {
        n,
        raw_start_s,
        raw_units_per_s,
        raw_stop_s: raw_stop.as_secs_f64(),
        raw_systemd_cpu_s: raw_cpu.systemd_s,
        raw_dbus_cpu_s: raw_cpu.dbus_s,
        unitlet_systemd_cpu_s: unitlet_cpu.systemd_s,
        unitlet_dbus_cpu_s: unitlet_cpu.dbus_s,
        unitlet_s,
        pods_per_s,
        ratio: pods_per_s / raw_units_per_s,
        latency_p50_ms: percentile(&mut latency, 50.0),
        latency_p99_ms: percentile(&mut latency, 99.0),
        latency_max_ms: percentile(&mut latency, 100.0),
        admit_p50_ms: percentile(&mut admit, 50.0),
        admit_p99_ms: percentile(&mut admit, 99.0),
        write_s: (writes.last_us - writes.first_us) as f64 / 1e6,
        agent_peak_rss_mib: usage1.peak_rss_kib as f64 / 1024.0,
        agent_cpu_s: usage1.cpu_s,
        readopt_s,
        readopt_agent_elapsed_ms,
        readopt_peak_rss_mib: usage2.peak_rss_kib as f64 / 1024.0,
        readopt_cpu_s: usage2.cpu_s,
        units_restarted,
        scrape_cpu_ms: scraped.cpu_ms,
        scrape_wall_ms: scraped.wall_ms,
        idle_cpu_pct,
        pods_list_ms: percentile(&mut lists, 50.0),
        delete_s: delete.as_secs_f64(),
        delete_ratio: delete.as_secs_f64() / raw_stop.as_secs_f64(),
        cluster_s,
        cluster_ratio: cluster_s.map(|c| c / unitlet_s),
        scrape_containers: scraped.containers,
        scrape_bytes: scraped.bytes,
    })
}

/// The node's systemd and dbus-daemon, for their CPU time.
struct NodeCpu {
    systemd: u32,
    dbus: u32,
}

/// CPU seconds of [`NodeCpu`]'s processes (or a difference of two readings).
#[derive(Debug, Clone, Copy)]
struct CpuSeconds {
    systemd_s: f64,
    dbus_s: f64,
}

impl std::ops::Sub for CpuSeconds {
    type Output = CpuSeconds;
    fn sub(self, rhs: CpuSeconds) -> CpuSeconds {
        CpuSeconds {
            systemd_s: self.systemd_s - rhs.systemd_s,
            dbus_s: self.dbus_s - rhs.dbus_s,
        }
    }
}

impl NodeCpu {
    /// The node's PID 1, and the dbus-daemon among its children (host PIDs).
    fn find(node: &Sandbox) -> anyhow::Result<NodeCpu> {
        let init = node.init_pid();
        let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))?;
        let dbus = children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "dbus-daemon")
            })
            .context("no dbus-daemon in the node")?;
        Ok(NodeCpu {
            systemd: init,
            dbus,
        })
    }

    fn read(&self) -> anyhow::Result<CpuSeconds> {
        Ok(CpuSeconds {
            systemd_s: agent::usage(self.systemd)?.cpu_s,
            dbus_s: agent::usage(self.dbus)?.cpu_s,
        })
    }
}

/// Keeps the node's journal of a failed size (the node is volatile, and
/// systemd's and dbus-daemon's view of a failure is only there), and names
/// the one failure seen in practice when the journal shows it.
fn save_journal(node: &Sandbox, to: &Path) -> Option<String> {
    let file = std::fs::File::create(to).ok()?;
    node.command("timeout")
        .args([
            "20",
            "journalctl",
            "-b",
            "--no-pager",
            "-o",
            "short-monotonic",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let journal = std::fs::read_to_string(to).ok()?;
    let refused = journal
        .lines()
        .filter(|l| l.contains("is not allowed to add more match rules"))
        .count();
    journal.contains("Got disconnect on API bus").then(|| {
        format!(
            "the node's systemd lost its D-Bus connection (\"Got disconnect on API bus\") after \
             dbus-daemon refused it {refused} match rules (max_match_rules_per_connection=512): \
             systemd adds one per queued job, so too many jobs were queued at once; see {}",
            to.display()
        )
    })
}

async fn identities(init_pid: u32) -> anyhow::Result<HashMap<String, bus::Identity>> {
    let bus = bus::NodeBus::connect(init_pid).await?;
    bus.identities("unitlet_*.service").await
}

/// The `elapsed_ms` field of the "initial sync complete" line in a log file.
fn elapsed_ms(log: &Path) -> Option<u64> {
    std::fs::read_to_string(log)
        .ok()?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "initial sync complete")?["elapsed_ms"]
        .as_u64()
}

/// When each manifest appeared in the directory.
struct Writes {
    /// Just before the first file was created, µs since the epoch.
    first_us: i64,
    /// Right after the last rename.
    last_us: i64,
    /// Pod key (`default/bench-00001`) → right after its rename.
    done_us: HashMap<String, i64>,
}

/// Writes N one-container pods, each to a dot-file (which unitlet ignores)
/// renamed into place, so the agent never reads a half-written manifest and
/// each pod appears at one instant. With a `rate`, pod i is written no
/// earlier than i/rate seconds after the first.
fn write_manifests(dir: &Path, n: usize, rate: Option<f64>, image: &str) -> anyhow::Result<Writes> {
    let mut done_us = HashMap::with_capacity(n);
    let first_us = now_us();
    let start = Instant::now();
    let mut last_us = first_us;
    for i in 1..=n {
        if let Some(rate) = rate.filter(|r| *r > 0.0) {
            let due = start + Duration::from_secs_f64((i - 1) as f64 / rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let name = format!("bench-{i:05}");
        let text = pod_manifest(&name, "default", image);
        let tmp: PathBuf = dir.join(format!(".{name}.yaml"));
        std::fs::write(&tmp, text).with_context(|| tmp.display().to_string())?;
        std::fs::rename(&tmp, dir.join(format!("{name}.yaml")))?;
        last_us = now_us();
        done_us.insert(format!("default/{name}"), last_us);
    }
    Ok(Writes {
        first_us,
        last_us,
        done_us,
    })
}

/// The bench's pod: one `sleep infinity` container.
pub fn pod_manifest(name: &str, namespace: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  containers:\n  - name: c\n    image: \"{image}\"\n    command: [\"/usr/bin/sleep\", \"infinity\"]\n"
    )
}

/// Nearest-rank percentile (0 for no samples).
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn table(results: &[SizeResult]) -> String {
    let header = [
        "N",
        "raw units/s",
        "raw time s",
        "unitlet time to all Running s",
        "pods/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "agent peak RSS MiB",
        "agent CPU s",
        "re-adopt s",
        "units restarted",
        "scrape CPU ms",
        "scrape wall ms",
        "idle CPU %",
        "pods -A ms",
        "raw stop s",
        "delete s",
        "delete ratio",
        "cluster s",
        "cluster ratio",
    ];
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.n.to_string(),
                format!("{:.0}", r.raw_units_per_s),
                format!("{:.3}", r.raw_start_s),
                format!("{:.3}", r.unitlet_s),
                format!("{:.0}", r.pods_per_s),
                format!("{:.2}", r.ratio),
                format!("{:.1}", r.latency_p50_ms),
                format!("{:.1}", r.latency_p99_ms),
                format!("{:.1}", r.agent_peak_rss_mib),
                format!("{:.2}", r.agent_cpu_s),
                format!("{:.3}", r.readopt_s),
                r.units_restarted.to_string(),
                format!("{:.1}", r.scrape_cpu_ms),
                format!("{:.1}", r.scrape_wall_ms),
                format!("{:.2}", r.idle_cpu_pct),
                format!("{:.0}", r.pods_list_ms),
                format!("{:.3}", r.raw_stop_s),
                format!("{:.3}", r.delete_s),
                format!("{:.2}", r.delete_ratio),
                r.cluster_s.map_or("-".into(), |s| format!("{s:.3}")),
                r.cluster_ratio.map_or("-".into(), |s| format!("{s:.2}")),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        format!("{}\n", cells.join(" | "))
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push_str(&format!(
        "{}\n",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-|-")
    ));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// The `unitlet run` arguments the bench settings ask for.
fn agent_args(args: &Args) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(w) = args.workers {
        out.push(format!("--workers={w}"));
    }
    out.extend(args.agent_arg.iter().cloned());
    out
}

/// The project's targets, checked against what was measured.
fn targets(results: &[SizeResult]) -> String {
    let mut out = String::from("\ntargets:\n");
    let mut check = |what: String, ok: bool| {
        out.push_str(&format!("  [{}] {what}\n", if ok { "ok" } else { "MISS" }));
    };
    // 50 MB in MiB.
    let mb50 = 50e6 / 1_048_576.0;
    for r in results {
        let n = r.n;
        let floor = match n {
            100 | 1000 => Some(1.0),
            2000 => Some(0.9),
            _ => None,
        };
        if let Some(floor) = floor {
            check(
                format!("N={n}: pod start rate ≥ {floor:.1}× raw: {:.2}×", r.ratio),
                r.ratio >= floor,
            );
        }
        if n == 1 {
            check(
                format!("N=1: p50 latency ≤ 50 ms: {:.0} ms", r.latency_p50_ms),
                r.latency_p50_ms <= 50.0,
            );
        }
        if n == 100 {
            check(
                format!("N=100: p99 latency ≤ 300 ms: {:.0} ms", r.latency_p99_ms),
                r.latency_p99_ms <= 300.0,
            );
        }
        if n == 1000 {
            check(
                format!(
                    "N=1000: delete ≤ 1.2× raw StopUnit calls: {:.2}× ({:.2} s vs {:.2} s)",
                    r.delete_ratio, r.delete_s, r.raw_stop_s
                ),
                r.delete_ratio <= 1.2,
            );
            check(
                format!(
                    "N=1000: a /metrics/cadvisor scrape of {} containers < 100 ms of agent CPU: {:.1} ms",
                    r.scrape_containers, r.scrape_cpu_ms
                ),
                r.scrape_cpu_ms < 100.0 && r.scrape_containers == 1000,
            );
        }
        if n == 2000 {
            check(
                format!(
                    "N=2000: agent peak RSS ≤ 50 MB: {:.1} MiB",
                    r.agent_peak_rss_mib
                ),
                r.agent_peak_rss_mib <= mb50,
            );
            check(
                format!(
                    "N=2000: idle agent CPU ≤ 1% of a core: {:.2}%",
                    r.idle_cpu_pct
                ),
                r.idle_cpu_pct <= 1.0,
            );
            check(
                format!(
                    "N=2000: `unitlet pods -A` ≤ 200 ms: {:.0} ms",
                    r.pods_list_ms
                ),
                r.pods_list_ms <= 200.0,
            );
            check(
                format!("N=2000: re-adopt ≤ 2 s: {:.3} s", r.readopt_s),
                r.readopt_s <= 2.0,
            );
        }
        if let (Some(c), Some(ratio)) = (r.cluster_s, r.cluster_ratio) {
            check(
                format!(
                    "N={n}: cluster mode to Running in the API ≤ 1.5× standalone: {ratio:.2}× ({c:.2} s vs {:.2} s)",
                    r.unitlet_s
                ),
                ratio <= 1.5,
            );
        }
        check(
            format!(
                "N={n}: no unit restarted by re-adoption: {}",
                r.units_restarted
            ),
            r.units_restarted == 0,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert_eq!(percentile(&mut [7.0], 99.0), 7.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }

    #[test]
    fn timeout_is_120_s_at_1000() {
        assert_eq!(phase_timeout(1000), Duration::from_secs(120));
    }
}
