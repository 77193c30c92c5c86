//! `image-pull`: how fast an artifact goes from an HTTP server into the
//! image store (`unitlet::images::fetch::fetch_artifact`), against what a
//! shell does with the same archive from the same server,
//! `curl -s URL | tar -xz -C dir`.
//!
//! It makes a tar.gz of about `--mb` MB (gzip's default level) shaped like
//! a release archive: a few big incompressible files (binaries, packed
//! assets), a big compressible one (text), and thousands of small files of
//! both kinds in a directory tree. The archive is served from memory by the
//! test artifact server on loopback, so the network is not what is
//! measured: both sides pay the same server, and what differs is how the
//! body is carried to the decompressor and the disk. Runs alternate (curl,
//! fetch, curl, fetch, …) so drift of the machine (page cache, writeback,
//! other load) falls on both. Unpacking the archive from a local file
//! (`tar -xzf`, and `Store::add` on the file) is measured last, for
//! reference: the ceiling without any network at all.
//!
//! Figures are MB/s of archive bytes (10^6 bytes) over wall-clock time,
//! from the request to the last file written (no fsync on either side).
//! Needs `curl` and GNU `tar` on PATH; no root.
//!
//! ```sh
//! cargo run --release -p unitlet-bench --bin image-pull -- --mb 200 --runs 3
//! ```

use anyhow::{bail, ensure, Context};
use clap::Parser;
use flate2::write::GzEncoder;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use unitlet::core::image::{ArchiveKind, Artifact, Digest};
use unitlet::images::fetch::{fetch_artifact, http_client};
use unitlet::images::store::Store;
use unitlet::images::unpack::Limits;
use unitlet_test_support::artifacts::{self, ArtifactServer};

/// Artifact download + unpack throughput against `curl | tar -xz`.
#[derive(Debug, Parser)]
#[command(name = "image-pull")]
struct Args {
    /// Approximate size of the archive, in MB.
    #[arg(long, default_value_t = 200)]
    mb: u64,
    /// Runs of each method (alternating).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Work directory (archive, unpacked trees); on the disk to measure.
    /// Default: a fresh directory under the system's temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the results as JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// One timed unpack.
#[derive(Debug, Clone, Copy, Serialize)]
struct Run {
    secs: f64,
    mb_per_s: f64,
}

/// Everything measured.
#[derive(Debug, Serialize)]
struct Report {
    archive_bytes: u64,
    unpacked_bytes: u64,
    files: usize,
    curl_tar: Vec<Run>,
    fetch_artifact: Vec<Run>,
    curl_tar_median_mb_per_s: f64,
    fetch_artifact_median_mb_per_s: f64,
    /// fetch_artifact ÷ curl | tar (medians).
    ratio: f64,
    local_tar_xzf: Run,
    local_store_add: Run,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("image-pull: {e:#}");
        std::process::exit(1);
    }
}

/// A small, fast PRNG (xorshift64*): the content only has to defeat gzip,
/// not be random in any stronger sense, and must be the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// `len` incompressible bytes.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }

    /// `len` bytes of log-like text: gzip makes it a few times smaller,
    /// as it does real text, configuration and symbol tables.
    fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: &str = "container started pod volume mounted image pulled sandbox \
            ready probe failed restart kubelet unit systemd network namespace default \
            kube-system ok error timeout node lease";
        let words: Vec<&str> = WORDS.split_whitespace().collect();
        let mut v = Vec::with_capacity(len + 200);
        while v.len() < len {
            let t = self.below(86_400_000);
            let _ = write!(
                v,
                "2026-12-07T{:02}:{:02}:{:02}.{:03}Z level={} req={:08x}",
                t / 3_600_000,
                t / 60_000 % 60,
                t / 1000 % 60,
                t % 1000,
                ["info", "warn", "debug"][self.below(3) as usize],
                self.next() as u32,
            );
            for _ in 0..2 + self.below(8) {
                let _ = write!(v, " {}", words[self.below(words.len() as u64) as usize]);
            }
            let _ = writeln!(v, " n={}", self.below(100_000));
        }
        v.truncate(len);
        v
    }
}

/// Writes the archive; returns (files, unpacked bytes).
fn make_archive(path: &Path, mb: u64) -> anyhow::Result<(usize, u64)> {
    let target = mb * 1_000_000;
    // About 70% of the archive incompressible, 30% text that gzip shrinks
    // about 4×: roughly 1.9× the archive's size once unpacked.
    let random = target * 7 / 10;
    let text = target * 3 / 10 * 4;
    let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let gz = GzEncoder::new(
        std::io::BufWriter::with_capacity(1 << 20, file),
        flate2::Compression::default(),
    );
    let mut b = tar::Builder::new(gz);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut add = |b: &mut tar::Builder<_>, name: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_765_000_000);
        h.set_cksum();
        files += 1;
        bytes += data.len() as u64;
        b.append_data(&mut h, name, data)
    };
    let dir = |b: &mut tar::Builder<_>, name: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_mtime(1_765_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, std::io::empty())
    };
    dir(&mut b, "app/")?;
    dir(&mut b, "app/bin/")?;
    // The big ones: 80% of the incompressible bytes, half of the text.
    let big = (random * 8 / 10 / 3) as usize;
    for i in 0..3 {
        add(&mut b, &format!("app/bin/tool-{i}"), &rng.bytes(big), 0o755)?;
    }
    add(
        &mut b,
        "app/share/log.txt",
        &rng.text((text / 2) as usize),
        0o644,
    )?;
    // Many small ones, in 50 directories, the rest of both kinds.
    let n = 5000u64;
    let mean = (random * 2 / 10 + text / 2) / n;
    for d in 0..50 {
        dir(&mut b, &format!("app/lib/d{d:02}/"))?;
    }
    for i in 0..n {
        let len = rng.below(2 * mean) as usize;
        let name = format!("app/lib/d{:02}/f{i:04}", i % 50);
        // Incompressible in proportion to its share of the small files' bytes.
        if rng.below(random * 2 / 10 + text / 2) < random * 2 / 10 {
            add(&mut b, &format!("{name}.so"), &rng.bytes(len), 0o755)?;
        } else {
            add(&mut b, &format!("{name}.txt"), &rng.text(len), 0o644)?;
        }
    }
    b.into_inner()?.finish()?.flush()?;
    Ok((files, bytes))
}

/// `curl -s URL | tar -xz -C dest`, timed.
fn curl_tar(url: &str, dest: &Path) -> anyhow::Result<Duration> {
    std::fs::create_dir_all(dest)?;
    let t = Instant::now();
    let st = Command::new("bash")
        .arg("-c")
        .arg(r#"set -o pipefail; curl -sS --fail "$1" | tar -xz -C "$2""#)
        .arg("bash")
        .arg(url)
        .arg(dest)
        .status()
        .context("bash")?;
    let d = t.elapsed();
    ensure!(st.success(), "curl | tar: {st}");
    Ok(d)
}

/// `tar -xzf archive -C dest`, timed.
fn tar_xzf(archive: &Path, dest: &Path) -> anyhow::Result<Duration> {
    std::fs::create_dir_all(dest)?;
    let t = Instant::now();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(dest)
        .status()
        .context("tar")?;
    let d = t.elapsed();
    ensure!(st.success(), "tar -xzf: {st}");
    Ok(d)
}

/// Removes what a run unpacked and lets writeback settle, so the next
/// run does not pay for this one's dirty pages.
fn clean(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path).with_context(|| format!("{}", path.display()))?;
    }
    nix::unistd::sync();
    Ok(())
}

fn median(runs: &[Run]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|r| r.mb_per_s).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    for tool in ["bash", "curl", "tar"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} not found on PATH");
        }
    }
    let _tmp;
    let work = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            _tmp = tempfile::Builder::new()
                .prefix("unitlet-image-pull-")
                .tempdir()?;
            _tmp.path().to_path_buf()
        }
    };
    let archive = work.join("artifact.tar.gz");
    eprintln!("making a ~{} MB archive in {}", args.mb, work.display());
    let t = Instant::now();
    let (files, unpacked_bytes) = make_archive(&archive, args.mb)?;
    let data = std::fs::read(&archive)?;
    let archive_bytes = data.len() as u64;
    let digest = Digest::parse(&artifacts::sha256(&data)).expect("a sha256");
    eprintln!(
        "  {:.1} MB archive, {files} files, {:.1} MB unpacked ({:.1} s)",
        archive_bytes as f64 / 1e6,
        unpacked_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let srv = ArtifactServer::start();
    srv.put("/artifact.tar.gz", data);
    let url = srv.url("/artifact.tar.gz");
    let art = Artifact {
        url: url.clone(),
        kind: ArchiveKind::TarGz,
        digest: Some(digest.clone()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client = {
        let _g = rt.enter();
        http_client()?
    };
    let limits = Limits::default();
    let mbps = |d: Duration| Run {
        secs: d.as_secs_f64(),
        mb_per_s: archive_bytes as f64 / 1e6 / d.as_secs_f64(),
    };

    let (mut curl_runs, mut fetch_runs) = (Vec::new(), Vec::new());
    for i in 1..=args.runs {
        let dest = work.join("curl");
        let d = curl_tar(&url, &dest)?;
        clean(&dest)?;
        curl_runs.push(mbps(d));

        let root = work.join("store");
        let store = Store::open(&root)?;
        let t = Instant::now();
        let stored = rt.block_on(fetch_artifact(&client, &art, None, &store, &limits, None))?;
        let d = t.elapsed();
        ensure!(
            stored.unpacked_bytes == unpacked_bytes,
            "fetch_artifact unpacked {} bytes, the archive holds {unpacked_bytes}",
            stored.unpacked_bytes
        );
        drop(store);
        clean(&root)?;
        fetch_runs.push(mbps(d));
        eprintln!(
            "  run {i}: curl | tar -xz {:.2} s ({:.0} MB/s), fetch_artifact {:.2} s ({:.0} MB/s)",
            curl_runs[i - 1].secs,
            curl_runs[i - 1].mb_per_s,
            fetch_runs[i - 1].secs,
            fetch_runs[i - 1].mb_per_s
        );
    }
    ensure!(
        srv.requests("/artifact.tar.gz") == 2 * args.runs,
        "expected exactly one request per run"
    );

    let dest = work.join("local-tar");
    let local_tar = mbps(tar_xzf(&archive, &dest)?);
    clean(&dest)?;
    let root = work.join("local-store");
    let store = Store::open(&root)?;
    let t = Instant::now();
    let file = std::fs::File::open(&archive)?;
    store.add(ArchiveKind::TarGz, file, Some(&digest), &limits)?;
    let local_store = mbps(t.elapsed());
    drop(store);
    clean(&root)?;
    std::fs::remove_file(&archive)?;

    let report = Report {
        archive_bytes,
        unpacked_bytes,
        files,
        curl_tar_median_mb_per_s: median(&curl_runs),
        fetch_artifact_median_mb_per_s: median(&fetch_runs),
        ratio: median(&fetch_runs) / median(&curl_runs),
        curl_tar: curl_runs,
        fetch_artifact: fetch_runs,
        local_tar_xzf: local_tar,
        local_store_add: local_store,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "archive: {:.1} MB tar.gz (gzip default level), {} files, {:.1} MB unpacked; {} runs each, alternating",
        report.archive_bytes as f64 / 1e6,
        report.files,
        report.unpacked_bytes as f64 / 1e6,
        args.runs
    );
    println!("| method | median MB/s | runs (s) |");
    println!("|---|---|---|");
    let secs = |runs: &[Run]| {
        runs.iter()
            .map(|r| format!("{:.2}", r.secs))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| curl -s URL \\| tar -xz | {:.0} | {} |",
        report.curl_tar_median_mb_per_s,
        secs(&report.curl_tar)
    );
    println!(
        "| fetch_artifact | {:.0} | {} |",
        report.fetch_artifact_median_mb_per_s,
        secs(&report.fetch_artifact)
    );
    println!(
        "| local file: tar -xzf | {:.0} | {:.2} |",
        report.local_tar_xzf.mb_per_s, report.local_tar_xzf.secs
    );
    println!(
        "| local file: Store::add | {:.0} | {:.2} |",
        report.local_store_add.mb_per_s, report.local_store_add.secs
    );
    println!("ratio fetch_artifact / curl | tar: {:.2}", report.ratio);
    Ok(())
}
