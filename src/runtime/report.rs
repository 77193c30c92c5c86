//! What the reconciler tells a status sink (cluster mode writes it to
//! the API server; standalone mode has none): status changes, events, and
//! pods whose units are all stopped.

use super::*;

/// What the reconciler tells a status sink about one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodReport {
    /// The pod's status is now this (sent on every change).
    Status {
        /// Pod UID.
        uid: String,
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The status, by the kubelet's rules.
        status: Box<k8s_openapi::api::core::v1::PodStatus>,
    },
    /// Something happened to the pod or one of its containers (kubelet
    /// event reasons: Pulled, Created, Started, Killing, BackOff, Failed).
    Event {
        /// Pod UID.
        uid: String,
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// `spec.containers{name}` or `spec.initContainers{name}`, if about a container.
        field_path: Option<String>,
        /// A Warning rather than a Normal event.
        warning: bool,
        /// Reason.
        reason: &'static str,
        /// Message.
        message: String,
    },
    /// Every unit of the pod is stopped and the agent no longer runs it:
    /// a pod whose deletion the API server asked for may now be removed.
    Stopped {
        /// Pod UID.
        uid: String,
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
}

impl Runtime {
    /// Sends `report` to the status sink, if there is one.
    pub(super) fn report(&self, report: PodReport) {
        if let Some(tx) = &self.shared.cfg.reports {
            let _ = tx.send(report);
        }
    }
}
