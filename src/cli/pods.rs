//! `unitlet pods`: status from the running agent (see [`crate::local`]), or
//! straight from systemd and the state directory when none runs, so it
//! answers the same whether or not the daemon is running.

use crate::clock::now_us;

pub use crate::podview::{collect, kubectl_status, summary, with_status, PodRow, PodView};

/// kubectl's human durations (`5s`, `3m20s`, `12m`, `5h`, `3d`).
pub fn human_duration(us: u64) -> String {
    let s = us / 1_000_000;
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10799 => format!("{}m", s / 60),
        10800..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Renders the table.
pub fn table(views: &[PodRow], wide: bool, all_namespaces: bool) -> String {
    let now = now_us();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec![];
    if all_namespaces {
        header.push("NAMESPACE");
    }
    header.extend(["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    if wide {
        header.extend(["IP", "NODE"]);
    }
    rows.push(header.into_iter().map(String::from).collect());
    let none = Default::default();
    for v in views {
        let st = v.pod.status.as_ref().unwrap_or(&none);
        let cs = st.container_statuses.as_deref().unwrap_or(&[]);
        let ready = cs.iter().filter(|c| c.ready).count();
        let restarts: i32 = cs.iter().map(|c| c.restart_count).sum();
        let last_restart = cs
            .iter()
            .filter_map(|c| {
                c.last_state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .finished_at
                    .as_ref()
            })
            .map(|t| t.0.as_microsecond() as u64)
            .max();
        let restarts = match last_restart {
            Some(t) if restarts > 0 => {
                format!("{restarts} ({} ago)", human_duration(now.saturating_sub(t)))
            }
            _ => restarts.to_string(),
        };
        let mut row = vec![];
        if all_namespaces {
            row.push(v.pod.metadata.namespace.clone().unwrap_or_default());
        }
        row.extend([
            v.pod.metadata.name.clone().unwrap_or_default(),
            format!("{ready}/{}", cs.len()),
            kubectl_status(st, false),
            restarts,
            human_duration(now.saturating_sub(v.admitted_us)),
        ]);
        if wide {
            row.push(st.pod_ip.clone().unwrap_or_default());
            row.push(
                v.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
            );
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:w$}", c, w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(5_000_000), "5s");
        assert_eq!(human_duration(200_000_000), "3m20s");
        assert_eq!(human_duration(3_600_000_000), "60m");
        assert_eq!(human_duration(4 * 3_600_000_000), "4h");
    }
}
