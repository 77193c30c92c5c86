//! The scrape figure: what one `/metrics/cadvisor` scrape of N running
//! containers costs the agent, in CPU (its `utime + stime` before and
//! after, from `/proc/<pid>/stat`) and in wall time (request to last
//! byte), over a few scrapes in a row on the agent's standalone metrics
//! listener.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    /// Agent CPU per scrape, ms (includes whatever else the agent did
    /// meanwhile: an upper bound).
    pub cpu_ms: f64,
    /// Wall time per scrape, ms.
    pub wall_ms: f64,
    /// Containers with a CPU series in the last scrape (not the pods'
    /// own series).
    pub containers: usize,
    /// Size of the last scrape's body.
    pub bytes: usize,
}

/// A plain HTTP/1.0 GET of `path` on the host's loopback port: the body.
pub fn get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP head")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// Waits for the listener, then scrapes `scrapes` times.
pub fn measure(
    agent_pid: u32,
    port: u16,
    scrapes: usize,
    deadline: Instant,
) -> anyhow::Result<Figure> {
    while get(port, "/healthz").is_err() {
        if Instant::now() > deadline {
            bail!("the agent's metrics listener on 127.0.0.1:{port} never answered");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = super::agent::usage(agent_pid)?.cpu_s;
    let started = Instant::now();
    let mut body = String::new();
    for _ in 0..scrapes {
        body = get(port, "/metrics/cadvisor")?;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = super::agent::usage(agent_pid)?.cpu_s - before;
    let containers = body
        .lines()
        .filter(|l| {
            l.starts_with("container_cpu_usage_seconds_total{") && !l.contains("container=\"\"")
        })
        .count();
    Ok(Figure {
        cpu_ms: cpu * 1e3 / scrapes as f64,
        wall_ms: wall * 1e3 / scrapes as f64,
        containers,
        bytes: body.len(),
    })
}
