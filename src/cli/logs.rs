//! `unitlet logs`: one container instance's journal lines.

use super::pods::PodView;
use crate::core::names;
use crate::core::observe::{instance, Instance};
use crate::journal::{self, LogQuery};
use crate::systemd::Systemd;
use futures_util::StreamExt;

/// Options of `unitlet logs`.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Container name (default: the first app container).
    pub container: Option<String>,
    /// Follow.
    pub follow: bool,
    /// Last N lines.
    pub tail: Option<u64>,
    /// Only lines newer than this many µs.
    pub since_us: Option<u64>,
    /// Prefix timestamps.
    pub timestamps: bool,
    /// The previous instance.
    pub previous: bool,
}

/// Parses `10s`, `5m`, `1h30m`, `2h` into µs.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let mut total = 0u64;
    let mut num = String::new();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: use e.g. 10s, 5m, 1h"))?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(format!("invalid duration {s:?}: use e.g. 10s, 5m, 1h")),
        };
    }
    if !num.is_empty() {
        return Err(format!("invalid duration {s:?}: add a unit (s, m or h)"));
    }
    Ok(total * 1_000_000)
}

/// Streams the logs of one container of `view` to stdout.
pub async fn run(sd: &Systemd, view: &PodView, opts: &LogOptions) -> anyhow::Result<()> {
    let pod_name = view.rec.pod.metadata.name.clone().unwrap_or_default();
    let all: Vec<_> = view.plan.containers.iter().chain(&view.plan.init).collect();
    let c = match &opts.container {
        Some(name) => all.iter().find(|c| &c.name == name).ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
            anyhow::anyhow!(
                "container {name:?} is not valid for pod {pod_name:?}; choose one of: [{}]",
                names.join(" ")
            )
        })?,
        None => {
            if view.plan.containers.len() > 1 {
                let names: Vec<&str> = view
                    .plan
                    .containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                eprintln!(
                    "Defaulted container {:?} out of: {}",
                    view.plan.containers[0].name,
                    names.join(", ")
                );
            }
            &&view.plan.containers[0]
        }
    };
    let unit = view.units.get(&c.unit);
    let record = view.records.get(&c.name).cloned().unwrap_or_default();
    let invocation = if opts.previous {
        record.previous_invocation.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "previous terminated container {:?} in pod {pod_name:?} not found",
                c.name
            )
        })?
    } else {
        match unit
            .map(|u| u.invocation_id.clone())
            .filter(|i| !i.is_empty())
        {
            Some(i) => i,
            None => anyhow::bail!(
                "container {:?} in pod {pod_name:?} is waiting to start: {}",
                c.name,
                waiting_reason(view, &c.name)
            ),
        }
    };
    // Main PIDs of the current and the previous instance, where known (see
    // `LogQuery::main_pids`).
    let mut main_pids = Vec::new();
    if let Some(u) = unit.filter(|u| !u.invocation_id.is_empty()) {
        main_pids.push((u.invocation_id.clone(), u.exec_main_pid));
    }
    if let (Some(prev), Some(t)) = (&record.previous_invocation, &record.last_termination) {
        if t.container_id == format!("systemd://{prev}") {
            main_pids.push((prev.clone(), t.pid));
        }
    }
    // Read from a little before the instance started, so that systemd's
    // message about starting it is read too.
    let started_us = if opts.previous {
        record
            .last_termination
            .as_ref()
            .filter(|t| t.container_id == format!("systemd://{invocation}"))
            .map(|t| t.started_us)
    } else {
        unit.map(|u| u.exec_main_start_us)
    };
    let read_from_us = started_us
        .filter(|&s| s > 0)
        .map(|s| s.saturating_sub(10_000_000));
    let running = matches!(instance(unit), Instance::Running { invocation: ref inv, .. } if *inv == invocation);
    let q = LogQuery {
        unit: c.unit.clone(),
        invocation: invocation.clone(),
        main_pids,
        read_from_us,
        tail: opts.tail,
        since_us: opts
            .since_us
            .map(|d| crate::runtime::now_us().saturating_sub(d)),
        timestamps: opts.timestamps,
        follow: opts.follow && running && !opts.previous,
    };
    let mut out = tokio::io::stdout();
    let stop = {
        let sd = sd.clone();
        let unit_name = c.unit.clone();
        let follow = q.follow;
        async move {
            if !follow {
                return std::future::pending().await;
            }
            // Follow ends when this instance stops, as with kubectl logs -f.
            let Ok(stream) = sd.watch(vec![names::unit_object_path(&unit_name)]).await else {
                return std::future::pending().await;
            };
            let mut stream = Box::pin(stream);
            loop {
                let snap = sd.snapshot(&unit_name).await.ok().flatten();
                if !matches!(instance(snap.as_ref()), Instance::Running { invocation: ref inv, .. } if *inv == invocation)
                {
                    return;
                }
                if stream.next().await.is_none() {
                    return std::future::pending().await;
                }
            }
        }
    };
    journal::stream(&q, &mut out, stop).await?;
    Ok(())
}

fn waiting_reason(view: &PodView, name: &str) -> String {
    let all = view
        .status
        .container_statuses
        .iter()
        .flatten()
        .chain(view.status.init_container_statuses.iter().flatten());
    all.filter(|c| c.name == name)
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .unwrap_or_else(|| "ContainerCreating".into())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(10_000_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000_000));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("x").is_err());
    }
}
