//! Node-pressure eviction: the agent side of [`crate::core::eviction`].
//!
//! `signals` observes the node and its pods as the kubelet's summary
//! provider does (the root control group, statfs of the state and image
//! directories, `pid_max`); `manager` runs the pure step every monitoring
//! interval (the kubelet's 10 s), publishes the pressure conditions for
//! the node status, and evicts through [`crate::runtime::Runtime::evict`];
//! `psi` wakes it at once when the kernel sees tasks stall for memory.

mod manager;
pub mod psi;
mod signals;

pub use manager::{spawn, Options, Pressure};
pub use signals::{HostSignals, Signals};
