//! Pulling OCI images from a real registry (Debian's `docker-registry`)
//! into the store: by tag and digest, again without downloads, configs,
//! whiteouts, zstd layers, multi-platform indexes, tampered blobs, missing
//! images, dead and plain-HTTP registries, and basic authentication with
//! pull-secret credentials. Root is required (layers keep their owners);
//! without root or the tools each test says why it skips.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;
use unitlet::core::image::{Digest, OciRef};
use unitlet::images::oci::{OciPuller, PullFailure, PulledOci, RegistryAuth};
use unitlet::images::store::Store;
use unitlet::images::unpack::Limits;
use unitlet_test_support::registry::{self, Layout, Registry};

/// Why this machine cannot run these tests, if it cannot.
fn unable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (layers keep their owners)".into());
    }
    let missing = registry::missing_tools();
    if !missing.is_empty() {
        return Some(format!("{} not installed", missing.join(", ")));
    }
    None
}

macro_rules! require_tools {
    () => {
        if let Some(why) = unable() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

fn oci_ref(registry: &str, repo: &str, tag: Option<&str>, digest: Option<&str>) -> OciRef {
    OciRef {
        registry: registry.into(),
        repository: repo.into(),
        tag: tag.map(Into::into),
        digest: digest.map(|d| Digest::parse(d).expect("a digest")),
    }
}

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn entries(p: &Path) -> Vec<String> {
    match std::fs::read_dir(p) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

/// A registry with busybox `v1` pushed as `busybox:v1`.
fn registry_with_busybox() -> (Registry, Layout, String) {
    let reg = Registry::start();
    let layout = Layout::busybox();
    let digest = reg.push(&layout.path(), "v1", "busybox", "v1", &[]);
    (reg, layout, digest)
}

async fn pull(puller: &OciPuller, store: &Store, r: &OciRef) -> PulledOci {
    puller
        .pull(store, r, None, &Limits::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_by_digest_and_again_without_downloads() {
    require_tools!();
    let (reg, _layout, digest) = registry_with_busybox();
    let (_dir, store) = new_store();
    let puller = OciPuller::new(vec![]).unwrap();
    let by_tag = oci_ref(&reg.host(), "busybox", Some("v1"), None);

    let started = Instant::now();
    let p = pull(&puller, &store, &by_tag).await;
    eprintln!(
        "busybox pulled in {:?} ({} bytes of layers)",
        started.elapsed(),
        p.size
    );
    assert!(p.downloaded);
    assert_eq!(p.manifest_digest.to_string(), digest);
    assert_eq!(p.id, format!("{}/busybox@{digest}", reg.host()));
    assert_eq!(Some(p.root.clone()), store.get(&p.manifest_digest));
    assert!(p.size > 100_000, "{}", p.size);

    // The tree is the image's root, and a working one.
    let root = &p.root;
    let meta = |rel: &str| std::fs::symlink_metadata(root.join(rel)).unwrap();
    assert_eq!(meta("bin/busybox").mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(meta("bin/cat").ino(), meta("bin/busybox").ino());
    assert_eq!(
        std::fs::read_link(root.join("usr/bin/env")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(meta("bin/suid").mode() & 0o7777, 0o4755);
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(
        (meta("home/app").uid(), meta("home/app").gid()),
        (1000, 1000)
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/passwd")).unwrap(),
        registry::PASSWD
    );
    let mut tree = entries(root);
    tree.sort();
    assert_eq!(
        tree,
        ["bin", "etc", "home", "tmp", "usr"],
        "nothing but the image"
    );
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", "echo hello from $(id -u)"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from 0\n");

    // The config, User resolved in the image's own database.
    let c = &p.config;
    assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(c.cmd, ["echo hello"]);
    assert!(c.env.contains(&"A=1".to_string()) && c.env.contains(&"B=two".to_string()));
    assert_eq!(c.working_dir.as_deref(), Some("/home/app"));
    assert_eq!(c.user.as_deref(), Some("app:staff"));
    assert_eq!((c.uid, c.gid), (Some(1000), Some(50)));

    // The tag resolves to what was pushed, with one request.
    assert_eq!(
        puller.resolve(&by_tag, None).await.unwrap().to_string(),
        digest
    );

    // Again, by tag and by digest: the stored image, nothing downloaded.
    let again = pull(&puller, &store, &by_tag).await;
    assert!(!again.downloaded);
    assert_eq!((&again.root, &again.config), (&p.root, &p.config));
    assert_eq!(
        (again.config_digest.clone(), again.size),
        (p.config_digest.clone(), p.size)
    );
    let by_digest = oci_ref(&reg.host(), "busybox", None, Some(&digest));
    let pinned = pull(&puller, &store, &by_digest).await;
    assert!(!pinned.downloaded);
    assert_eq!(pinned.root, p.root);

    // By digest into an empty store.
    let (_dir2, store2) = new_store();
    let fresh = pull(&puller, &store2, &by_digest).await;
    assert!(fresh.downloaded);
    assert_eq!(fresh.manifest_digest.to_string(), digest);
    assert_eq!(fresh.config, p.config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_layers_whiteout_removes_a_file_and_zstd_layers_unpack() {
    require_tools!();
    let reg = Registry::start();
    let layout = Layout::busybox();
    layout.whiteout();
    reg.push(&layout.path(), "v2", "busybox", "v2", &[]);
    // A registry of its own: skopeo would reuse the gzip blobs it holds.
    let zreg = Registry::start();
    zreg.push(
        &layout.path(),
        "v2",
        "busybox-zstd",
        "v2",
        &["--dest-compress-format", "zstd"],
    );
    let (_dir, store) = new_store();
    let puller = OciPuller::new(vec![]).unwrap();
    for (host, repo) in [(reg.host(), "busybox"), (zreg.host(), "busybox-zstd")] {
        let p = pull(&puller, &store, &oci_ref(&host, repo, Some("v2"), None)).await;
        assert!(!p.root.join("etc/doomed").exists(), "{repo}");
        assert!(!p.root.join("etc/.wh.doomed").exists(), "{repo}");
        assert_eq!(
            std::fs::read_to_string(p.root.join("etc/added")).unwrap(),
            "added\n",
            "{repo}"
        );
        assert!(p.root.join("bin/busybox").is_file(), "{repo}");
    }
    // The zstd image's manifest says zstd.
    let m = String::from_utf8(zreg.manifest("busybox-zstd", "v2")).unwrap();
    assert!(m.contains("tar+zstd"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_layer_is_a_digest_mismatch_and_leaves_nothing() {
    require_tools!();
    let (reg, _layout, digest) = registry_with_busybox();
    let manifest: serde_json::Value =
        serde_json::from_slice(&reg.manifest("busybox", &digest)).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = reg.blob_path(&layer);
    let mut data = std::fs::read(&blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&blob, data).unwrap();

    let (dir, store) = new_store();
    let puller = OciPuller::new(vec![]).unwrap();
    let r = oci_ref(&reg.host(), "busybox", Some("v1"), None);
    let e = puller
        .pull(&store, &r, None, &Limits::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&*e.cause, PullFailure::DigestMismatch { blob, .. } if blob.contains(&layer)),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("digest mismatch") && msg.contains(&layer),
        "{msg}"
    );
    assert!(msg.contains(&format!("{}/busybox:v1", reg.host())), "{msg}");
    assert!(entries(&dir.path().join("sha256")).is_empty());
    assert!(entries(&dir.path().join("tmp")).is_empty());
    assert!(entries(&dir.path().join("oci-config")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_images_and_dead_registries_say_so() {
    require_tools!();
    let (reg, _layout, _digest) = registry_with_busybox();
    let (_dir, store) = new_store();
    let puller = OciPuller::new(vec![]).unwrap();
    for r in [
        oci_ref(&reg.host(), "nosuch", Some("v1"), None),
        oci_ref(&reg.host(), "busybox", Some("nosuchtag"), None),
        oci_ref(
            &reg.host(),
            "busybox",
            None,
            Some("sha256:0000000000000000000000000000000000000000000000000000000000000000"),
        ),
    ] {
        let e = puller
            .pull(&store, &r, None, &Limits::default())
            .await
            .unwrap_err();
        assert!(matches!(*e.cause, PullFailure::NotFound(_)), "{e}");
        assert!(e.to_string().contains(&r.to_string()), "{e}");
        eprintln!("{e}");
    }
    let e = puller
        .resolve(&oci_ref(&reg.host(), "nosuch", Some("v1"), None), None)
        .await
        .unwrap_err();
    assert!(matches!(*e.cause, PullFailure::NotFound(_)), "{e}");

    // Nothing listens there any more.
    let dead = reg.host();
    drop(reg);
    let e = puller
        .pull(
            &store,
            &oci_ref(&dead, "busybox", Some("v1"), None),
            None,
            &Limits::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(*e.cause, PullFailure::Connect { .. }), "{e}");
    assert!(e.to_string().contains("connection refused"), "{e}");
    eprintln!("{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_platform_index_gives_the_nodes_image() {
    require_tools!();
    let (reg, _layout, digest) = registry_with_busybox();
    let node = OciPuller::new(vec![]).unwrap();
    let arch = unitlet::images::oci::oci_arch(std::env::consts::ARCH);
    let other = if arch == "s390x" { "ppc64le" } else { "s390x" };
    let index = reg.put_index(
        "busybox",
        "multi",
        &[(&digest, "linux", other), (&digest, "linux", arch)],
    );
    let (_dir, store) = new_store();
    let r = oci_ref(&reg.host(), "busybox", Some("multi"), None);
    let p = pull(&node, &store, &r).await;
    assert_eq!(
        p.manifest_digest.to_string(),
        index,
        "stored under the index"
    );
    assert_eq!(p.id, format!("{}/busybox@{index}", reg.host()));
    assert!(p.root.join("bin/busybox").is_file());
    assert_eq!(node.resolve(&r, None).await.unwrap().to_string(), index);

    reg.put_index(
        "busybox",
        "foreign",
        &[(&digest, "linux", other), (&digest, "windows", arch)],
    );
    let e = node
        .pull(
            &store,
            &oci_ref(&reg.host(), "busybox", Some("foreign"), None),
            None,
            &Limits::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(*e.cause, PullFailure::PlatformNotFound { .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("linux/{other}")) && msg.contains(&format!("windows/{arch}")),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_works_with_pull_secret_credentials_only() {
    require_tools!();
    let Some(reg) = Registry::start_with_auth("puller", "s3cret") else {
        eprintln!("skipping: neither htpasswd nor python3's crypt makes bcrypt hashes");
        return;
    };
    let layout = Layout::busybox();
    let digest = reg.push(&layout.path(), "v1", "private/busybox", "v1", &[]);
    let (_dir, store) = new_store();
    let puller = OciPuller::new(vec![]).unwrap();
    let r = oci_ref(&reg.host(), "private/busybox", Some("v1"), None);

    let e = puller
        .pull(&store, &r, None, &Limits::default())
        .await
        .unwrap_err();
    assert!(matches!(*e.cause, PullFailure::Unauthorized(_)), "{e}");
    eprintln!("{e}");
    let wrong = RegistryAuth {
        username: "puller".into(),
        password: "wrong".into(),
    };
    let e = puller
        .pull(&store, &r, Some(&wrong), &Limits::default())
        .await
        .unwrap_err();
    assert!(matches!(*e.cause, PullFailure::Unauthorized(_)), "{e}");

    let secret = serde_json::to_vec(&serde_json::json!({
        "auths": {
            "other.example.com": {"username": "x", "password": "y"},
            format!("http://{}", reg.host()): {"username": "puller", "password": "s3cret"},
        }
    }))
    .unwrap();
    let auth = RegistryAuth::for_image(&[secret], &r)
        .unwrap()
        .expect("the registry's credentials");
    let p = puller
        .pull(&store, &r, Some(&auth), &Limits::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.manifest_digest.to_string(), digest);
    assert_eq!(
        puller.resolve(&r, Some(&auth)).await.unwrap().to_string(),
        digest
    );
    // The credentials stayed with that pull: anonymous is refused still.
    let e = puller.resolve(&r, None).await.unwrap_err();
    assert!(matches!(*e.cause, PullFailure::Unauthorized(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_for_loopback_and_insecure_registries_only() {
    require_tools!();
    let Some(ip) = registry::non_loopback_ipv4() else {
        eprintln!("skipping: this machine has no non-loopback IPv4 address");
        return;
    };
    let reg = Registry::start_on(ip.into(), None);
    let layout = Layout::busybox();
    reg.push(&layout.path(), "v1", "busybox", "v1", &[]);
    let (_dir, store) = new_store();
    let r = oci_ref(&reg.host(), "busybox", Some("v1"), None);

    let strict = OciPuller::new(vec![]).unwrap();
    let e = strict
        .pull(&store, &r, None, &Limits::default())
        .await
        .unwrap_err();
    assert!(matches!(*e.cause, PullFailure::TlsRequired { .. }), "{e}");
    assert!(e.to_string().contains("insecure"), "{e}");
    eprintln!("{e}");

    let lax = OciPuller::new(vec![reg.host()]).unwrap();
    let p = pull(&lax, &store, &r).await;
    assert!(p.root.join("bin/busybox").is_file());
}
