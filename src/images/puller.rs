//! The network side of [`super::manager::Puller`]: artifacts over HTTP
//! ([`super::fetch`]) and OCI images from registries ([`super::oci`]), with
//! the pod's credentials. Artifact credentials come from the same
//! `imagePullSecrets` as registry ones: a `kubernetes.io/dockerconfigjson`
//! Secret whose `auths` has an entry for the artifact's host (`auth` or
//! `username`/`password`: HTTP basic; `registrytoken`: a bearer token).

use super::fetch::{self, HttpAuth};
use super::manager::{Credentials, Fetched, Puller, Request};
use super::oci::OciPuller;
use crate::core::image::{ImageRef, TreeKind};
use futures_util::future::BoxFuture;

/// Fetches over the network.
pub struct NetPuller {
    insecure: Vec<String>,
    /// Made on the first pull of each kind: a client holds the parsed
    /// system trust store (megabytes), which a node running only `host`
    /// images never needs.
    http: std::sync::OnceLock<Result<reqwest::Client, String>>,
    oci: std::sync::OnceLock<Result<OciPuller, String>>,
}

impl NetPuller {
    /// A puller reaching `insecure` registries over plain HTTP.
    pub fn new(insecure: Vec<String>) -> NetPuller {
        NetPuller {
            insecure,
            http: std::sync::OnceLock::new(),
            oci: std::sync::OnceLock::new(),
        }
    }

    fn http(&self) -> Result<&reqwest::Client, String> {
        self.http
            .get_or_init(|| fetch::http_client().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn oci(&self) -> Result<&OciPuller, String> {
        self.oci
            .get_or_init(|| OciPuller::new(self.insecure.clone()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The pod's registry and artifact credentials: the `.dockerconfigjson`
/// of each `imagePullSecrets` Secret that is known (one not found is
/// skipped, as the kubelet does; the pull then fails if it needed it).
pub fn pod_credentials(
    objects: Option<&dyn crate::objects::ObjectSource>,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Credentials {
    use crate::core::envref::{Lookup, ObjectRef, RefKind};
    let mut out = Credentials::default();
    let Some(source) = objects else {
        return out;
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    for s in pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
    {
        let r = ObjectRef {
            kind: RefKind::Secret,
            name: s.name.clone(),
        };
        if let Lookup::Found(d) = source.lookup(ns, &r) {
            if let Some(b) = d.data.get(".dockerconfigjson") {
                out.docker_configs.push(b.clone());
            }
        }
    }
    out
}

/// The `auths` entry of the pod's secrets for an artifact URL's host.
pub fn artifact_auth(creds: &Credentials, url: &str) -> Option<HttpAuth> {
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("");
    for cfg in &creds.docker_configs {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(cfg) else {
            continue;
        };
        let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
            continue;
        };
        for (key, entry) in auths {
            let key_host = key
                .split_once("://")
                .map(|(_, r)| r)
                .unwrap_or(key)
                .split('/')
                .next()
                .unwrap_or("");
            if key_host != host {
                continue;
            }
            if let Some(t) = entry.get("registrytoken").and_then(|t| t.as_str()) {
                return Some(HttpAuth::Bearer(t.to_string()));
            }
            let (u, p) = match (
                entry.get("username").and_then(|x| x.as_str()),
                entry.get("password").and_then(|x| x.as_str()),
            ) {
                (Some(u), Some(p)) => (u.to_string(), p.to_string()),
                _ => {
                    use base64::Engine as _;
                    let Some(a) = entry.get("auth").and_then(|x| x.as_str()) else {
                        continue;
                    };
                    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(a) else {
                        continue;
                    };
                    let raw = String::from_utf8_lossy(&raw).to_string();
                    let Some((u, p)) = raw.split_once(':') else {
                        continue;
                    };
                    (u.to_string(), p.to_string())
                }
            };
            return Some(HttpAuth::Basic {
                username: u,
                password: p,
            });
        }
    }
    None
}

impl Puller for NetPuller {
    fn fetch<'a>(&'a self, req: Request<'a>) -> BoxFuture<'a, Result<Fetched, String>> {
        Box::pin(async move {
            let Request {
                image,
                creds,
                store,
                limits,
                progress,
            } = req;
            match image {
                ImageRef::Host => Err("image: host is not pulled".into()),
                ImageRef::Artifact(a) => {
                    let auth = artifact_auth(creds, &a.url);
                    let s = fetch::fetch_artifact(
                        self.http()?,
                        a,
                        auth.as_ref(),
                        store,
                        &limits,
                        progress,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    Ok(Fetched {
                        id: format!("{}@{}", a.url, s.digest),
                        digest: s.digest,
                        kind: TreeKind::Artifact,
                        config: s.config,
                        fetched_bytes: s.archive_bytes,
                        size: s.unpacked_bytes,
                    })
                }
                ImageRef::Oci(r) => {
                    let auth = super::oci::RegistryAuth::for_image(&creds.docker_configs, r)
                        .map_err(|e| e.to_string())?;
                    let p = self
                        .oci()?
                        .pull(store, r, auth.as_ref(), &limits)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Fetched {
                        digest: p.manifest_digest,
                        kind: TreeKind::Oci,
                        id: p.id,
                        config: p.config,
                        fetched_bytes: if p.downloaded { p.size } else { 0 },
                        size: p.size,
                    })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn creds(auths: serde_json::Value) -> Credentials {
        Credentials {
            docker_configs: vec![
                serde_json::to_vec(&serde_json::json!({ "auths": auths })).unwrap()
            ],
        }
    }

    #[test]
    fn artifact_credentials_come_from_the_auths_entry_of_the_urls_host() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("ci:pw");
        let c = creds(serde_json::json!({
            "https://dl.example.com/releases/": {"auth": b64},
            "other.example.com": {"username": "u", "password": "p"},
            "tok.example.com:8443": {"registrytoken": "t0ken", "auth": b64},
        }));
        // (HttpAuth's Debug hides secrets: compare the values.)
        let got = |url: &str| match artifact_auth(&c, url) {
            Some(HttpAuth::Basic { username, password }) => format!("basic {username}:{password}"),
            Some(HttpAuth::Bearer(t)) => format!("bearer {t}"),
            None => "none".into(),
        };
        assert_eq!(got("https://dl.example.com/svc.tar.gz"), "basic ci:pw");
        assert_eq!(got("http://other.example.com/a.zip"), "basic u:p");
        // A bearer token wins; the port is part of the host.
        assert_eq!(got("https://tok.example.com:8443/x.tar"), "bearer t0ken");
        assert_eq!(got("https://tok.example.com/x.tar"), "none");
        assert_eq!(got("https://nobody.example.com/x.tar"), "none");
        // Malformed secrets give nothing, not a panic.
        let bad = Credentials {
            docker_configs: vec![
                b"{not json".to_vec(),
                br#"{"auths": {"dl.example.com": {"auth": "!!"}}}"#.to_vec(),
            ],
        };
        assert!(artifact_auth(&bad, "https://dl.example.com/a.tar").is_none());
    }
}
