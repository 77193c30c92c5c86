//! Memory pressure stall information (PSI) as a wake-up for the eviction
//! loop.
//!
//! The kubelet looks every 10 s and, with `--kernel-memcg-notification`,
//! also when the kernel says the root memory cgroup crossed a threshold.
//! On kernels with PSI (cgroup v2 era; what systemd-oomd watches) the
//! better signal is a stall trigger: the kernel wakes a poller as soon as
//! tasks spend more than [`STALL_US`] of a [`WINDOW_US`] window waiting
//! for memory. Such a wake-up only makes the manager look at once; the
//! decision stays the kubelet's (`memory.available` against thresholds),
//! so behaviour is the same everywhere and merely faster where PSI exists.
//! Where it does not (no `/proc/pressure`, or no right to set triggers)
//! the periodic look is all there is.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Notify;
use tracing::{debug, info};

/// Stall time within a window that wakes the manager (systemd-oomd's
/// default pressure limit is 60 % over 20 s; an earlier look costs little).
pub const STALL_US: u64 = 100_000;
/// The trigger's window (the kernel accepts 0.5 s to 10 s; unprivileged
/// triggers need whole multiples of 2 s).
pub const WINDOW_US: u64 = 2_000_000;

/// The trigger written to the pressure file.
pub fn trigger() -> String {
    format!("some {STALL_US} {WINDOW_US}")
}

/// Arms a trigger on `file` (normally `/proc/pressure/memory`) and wakes
/// `wake` each time the kernel fires it, from a thread of its own. Returns
/// why it cannot, if it cannot.
pub fn watch(file: &Path, wake: Arc<Notify>) -> Result<(), std::io::Error> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    // The trigger is live for as long as this descriptor stays open. The
    // kernel reads the write as a C string: its last byte is overwritten
    // with NUL, so the NUL must be sent (without it the window loses its
    // last digit and is refused).
    let mut text = trigger().into_bytes();
    text.push(0);
    f.write_all(&text)?;
    let name = file.display().to_string();
    std::thread::Builder::new()
        .name("psi-memory".into())
        .spawn(move || loop {
            let mut fds = [nix::poll::PollFd::new(
                f.as_fd(),
                nix::poll::PollFlags::POLLPRI,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) => {
                    let fired = fds[0].revents().unwrap_or(nix::poll::PollFlags::empty());
                    if fired.contains(nix::poll::PollFlags::POLLERR) {
                        // The pressure file went away (cgroup removed).
                        return debug!(file = name, "memory pressure trigger ended");
                    }
                    if fired.contains(nix::poll::PollFlags::POLLPRI) {
                        debug!(file = name, "memory stalls: looking for pressure now");
                        wake.notify_one();
                        // The kernel fires at most once per window.
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return debug!(file = name, error = %e, "memory pressure trigger ended"),
            }
        })?;
    info!(
        file = %file.display(),
        trigger = trigger(),
        "memory stalls wake the eviction manager (PSI)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_is_one_the_kernel_accepts_from_anyone() {
        assert_eq!(trigger(), "some 100000 2000000");
        // Unprivileged triggers: a window that is a multiple of 2 s.
        const { assert!(WINDOW_US.is_multiple_of(2_000_000) && STALL_US < WINDOW_US) };
    }

    #[test]
    fn a_missing_pressure_file_is_an_error_not_a_panic() {
        let err = watch(
            Path::new("/nonexistent/pressure/memory"),
            Arc::new(Notify::new()),
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    /// On a kernel with PSI, the trigger is armed (the kernel parses and
    /// accepts it: a malformed one is refused with EINVAL).
    #[test]
    fn arms_on_this_kernel_when_it_has_psi() {
        let file = Path::new("/proc/pressure/memory");
        if !file.exists() {
            eprintln!("no PSI on this kernel");
            return;
        }
        watch(file, Arc::new(Notify::new())).expect("the kernel accepts the trigger");
    }
}
