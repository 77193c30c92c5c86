//! Where the API objects pods name come from: ConfigMaps, Secrets,
//! PersistentVolumeClaims and their PersistentVolumes, and service account
//! tokens. In cluster mode that is the API server (`cluster::refs`, one
//! watch per named object); in standalone mode, the manifest directory
//! (`source::Objects`). The runtime and the volume manager only see this
//! trait, so both modes share one code path.

use crate::core::envref::{Lookup, ObjectRef};
use crate::core::volume::TokenRef;
use futures_util::future::BoxFuture;

/// A service account token the API server issued (TokenRequest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token.
    pub token: String,
    /// When it expires, seconds since the epoch.
    pub expires_unix: i64,
}

/// The pod a token is bound to: the API server invalidates the token when
/// the pod is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFor {
    /// The pod's namespace.
    pub namespace: String,
    /// Its service account (`spec.serviceAccountName`, default `default`).
    pub service_account: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID as the API server knows it.
    pub pod_uid: String,
}

/// The objects pods name, as some source knows them now.
pub trait ObjectSource: Send + Sync {
    /// Object `r` in `namespace` (ignored for cluster-scoped kinds), now.
    fn lookup(&self, namespace: &str, r: &ObjectRef) -> Lookup;
    /// Bumped whenever an object the source watches changes, so pods
    /// waiting for one, or showing one in a volume, are synced again.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Asks for a service account token (projected `serviceAccountToken`).
    fn request_token(
        &self,
        for_pod: TokenFor,
        token: TokenRef,
    ) -> BoxFuture<'static, Result<IssuedToken, String>>;
}

impl std::fmt::Debug for dyn ObjectSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectSource")
    }
}
