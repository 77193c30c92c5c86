//! The agent's side of pod volumes: preparing each volume's directory
//! before a pod's containers start, keeping ConfigMap/Secret/downward API
//! files up to date, and tearing it all down with the pod.

pub mod fs;
