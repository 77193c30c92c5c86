//! Golden tests: each `tests/golden/NAME.yaml` renders to `NAME.units`.
//! Set `UNITLET_UPDATE_GOLDEN=1` to rewrite the expected files after an
//! intended change, then review the diff.

use std::path::Path;
use unitlet::core::manifest::parse_manifest;
use unitlet::core::translate::{translate, HostUser};
use unitlet::core::NodeFacts;

#[test]
fn rendered_units_match_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let node = NodeFacts {
        node_name: "node-a".into(),
        host_ip: "10.0.0.7".into(),
        allocatable: Default::default(),
        pods_dir: "/var/lib/unitlet/pods".into(),
        hardening: Default::default(),
        agent_exe: "/usr/local/bin/unitlet".into(),
    };
    let users = |uid: u32| {
        (uid == 0).then(|| HostUser {
            gid: 0,
            home: "/root".into(),
        })
    };
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        seen += 1;
        let bytes = std::fs::read(&path).unwrap();
        // A fixed source name keeps UIDs stable wherever the checkout lives.
        let source = format!(
            "/etc/unitlet/manifests/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let rendered = match parse_manifest(&bytes, &source, &node.node_name, false) {
            Ok(pod) => translate(&pod.pod, &node, &users).render(),
            Err(e) => format!("# refused\n{e}\n"),
        };
        let want_path = path.with_extension("units");
        if std::env::var_os("UNITLET_UPDATE_GOLDEN").is_some() {
            std::fs::write(&want_path, &rendered).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&want_path).unwrap_or_else(|_| {
            panic!(
                "missing {}; run with UNITLET_UPDATE_GOLDEN=1",
                want_path.display()
            )
        });
        assert_eq!(rendered, want, "{} renders differently", path.display());
    }
    assert!(seen >= 3, "golden inputs missing");
}
