//! `unitlet logs`: one container instance's journal lines.

use super::pods::PodView;
use crate::journal;
pub use crate::journal::LogOptions;
use crate::systemd::Units;

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
pub async fn run(sd: &dyn Units, view: &PodView, opts: &LogOptions) -> anyhow::Result<()> {
    if opts.container.is_none() && view.plan.containers.len() > 1 {
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
    let q = journal::container_query(view, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = journal::until_instance_ends(sd, &q);
    let mut out = tokio::io::stdout();
    journal::stream(&q, &mut out, stop).await?;
    Ok(())
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
