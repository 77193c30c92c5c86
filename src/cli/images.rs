//! `unitlet images`, `unitlet pull` and `unitlet rmi`: the image store from
//! the command line. They work on the store directly (its trees and
//! catalog are safe to share with a running agent: every change is a
//! rename), so they need no agent running.

use crate::images::manager::{Credentials, Images};
use crate::state::StateDir;
use anyhow::{bail, Context};
use std::collections::HashSet;
use std::path::Path;

/// `unitlet images`: reference, digest, size, last used (as `crictl images`).
pub fn list(images: &Images) {
    let rows = images.list();
    println!(
        "{:<60} {:<20} {:>10} {:<20}",
        "IMAGE", "DIGEST", "SIZE", "LAST USED"
    );
    for m in rows {
        let digest = m
            .digest
            .trim_start_matches("sha256:")
            .chars()
            .take(13)
            .collect::<String>();
        let names: Vec<&String> = m.references.iter().collect();
        let first = names
            .first()
            .map(|s| s.as_str())
            .unwrap_or("<none>")
            .to_string();
        let used = if m.last_used_us == 0 {
            "never".to_string()
        } else {
            crate::core::observe::time_us(m.last_used_us).0.to_string()
        };
        println!("{first:<60} {digest:<20} {:>10} {used:<20}", human(m.size));
        for other in names.iter().skip(1) {
            println!("{other:<60}");
        }
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// The images a manifest file's pods name (for pre-pulling a rollout).
pub fn manifest_images(path: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("manifest {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let pod =
        crate::core::manifest::parse_manifest(&bytes, &path.display().to_string(), "", is_json)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    if let Some(spec) = &pod.pod.spec {
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            if let Some(i) = &c.image {
                if i != crate::core::image::HOST && !out.contains(i) {
                    out.push(i.clone());
                }
            }
        }
    }
    Ok(out)
}

/// `unitlet pull`: fetches each image into the store now.
pub async fn pull(images: &Images, names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        bail!("nothing to pull: name an image, or a manifest with --manifest/-f");
    }
    let mut failed = 0;
    for name in names {
        let started = std::time::Instant::now();
        let bar = progress_bar(name);
        let report = |done: u64, total: Option<u64>| {
            if let Some(b) = &bar {
                if let Some(t) = total {
                    b.set_length(t);
                }
                b.set_position(done);
            }
        };
        let result = images
            .pull_now(name, &Credentials::default(), Some(&report))
            .await;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        match result {
            Ok(m) => println!(
                "{name}: {} ({}, {:.1}s)",
                m.digest,
                human(m.size),
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!("{name}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images could not be pulled", names.len());
    }
    Ok(())
}

/// A byte progress bar on a terminal (none when stderr is not one, so
/// scripts and logs get one line per image). OCI pulls report no bytes:
/// the bar then just spins with the elapsed time.
fn progress_bar(name: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let b = indicatif::ProgressBar::new_spinner();
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} {bytes}/{total_bytes} {bytes_per_sec} {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    b.set_message(name.to_string());
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(b)
}

/// `unitlet rmi`: removes an image no admitted pod names.
pub fn rmi(images: &Images, state_dir: &Path, image: &str) -> anyhow::Result<()> {
    let state = StateDir::at(state_dir);
    let (pods, _) = state.load_pods();
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.pod.spec.as_ref())
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(&s.containers)
                .filter_map(|c| c.image.clone())
                .chain(
                    s.ephemeral_containers
                        .iter()
                        .flatten()
                        .filter_map(|c| c.image.clone()),
                )
                .collect::<Vec<_>>()
        })
        .collect();
    let in_use: HashSet<String> = images.keys_of(names.iter().map(String::as_str));
    let m = images
        .remove(image, &in_use)
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("Deleted: {}", m.digest);
    Ok(())
}
