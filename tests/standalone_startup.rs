//! Starting before systemd is reachable: early in boot (or while systemd
//! re-executes) the system bus runs without systemd on it, and the agent
//! must wait for it rather than exit. A private dbus-daemon stands in for
//! that bus: no node is booted, so systemd is never on it until the test
//! claims its name.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use unitlet_test_support as support;

/// Kills the child when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_line(log: &std::path::Path, what: &str, agent: &mut Reaped) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return;
        }
        if let Ok(Some(status)) = agent.0.try_wait() {
            panic!("the agent exited ({status}) before logging {what:?}:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "no {what:?} within 30 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_agent_waits_for_systemd_to_join_the_bus() {
    let dir = support::target_tmp().join("startup-bus");
    let _ = std::fs::remove_dir_all(&dir);
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let mut bus = Reaped(
        Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon (package dbus)"),
    );
    let mut address = String::new();
    BufReader::new(bus.0.stdout.take().unwrap())
        .read_line(&mut address)
        .unwrap();
    let address = address.trim().to_string();
    assert!(!address.is_empty(), "dbus-daemon printed no address");

    let log = dir.join("agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut agent = Reaped(
        Command::new(support::bin())
            .args(["--log-format", "json", "run", "--manifests"])
            .arg(&manifests)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--metrics-bind-address", "0"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    wait_for_line(&log, "systemd is not on the system bus yet", &mut agent);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent gave up waiting for systemd"
    );

    // systemd arrives: the agent goes on (and here, as nothing answers for
    // systemd, it fails at its first call; that failure is not the point).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _systemd = rt.block_on(async {
        zbus::connection::Builder::address(address.as_str())
            .unwrap()
            .name("org.freedesktop.systemd1")
            .unwrap()
            .build()
            .await
            .expect("claiming systemd's name on the private bus")
    });
    wait_for_line(&log, "systemd joined the system bus", &mut agent);
}

/// On a node whose bus is not up yet (dbus stopped, as before it starts
/// in a boot) the agent waits for it, then for systemd on it, and runs
/// pods once both are there.
#[test]
fn the_agent_waits_for_the_system_bus_on_a_booted_node() {
    use support::*;
    let mut node = Node::boot("bus_not_up");
    node.sh("systemctl stop dbus.socket dbus.service");
    node.start_agent(&[]);
    node.wait_for("the agent to wait for the bus", default_wait(), || {
        node.agent_lines()
            .into_iter()
            .find(|l| l["message"] == "the system bus is not up yet; waiting for it")
    });
    node.sh("systemctl start dbus.socket dbus.service");
    node.wait_synced();
    node.write_manifest(
        "p.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: host, command: [sleep, infinity]}\n",
    );
    node.wait_pod("p", "running", |p| running(p, "c"));
    node.stop_agent();
}
