//! How a container runs from an image other than `host`: its argv, env,
//! working directory and user from the image's config as Kubernetes
//! combines them with the pod's, and the unit properties that put the
//! image's tree in place. Pure: the tree's contents that matter (which
//! programs are on its `PATH`) come in with [`Pulled`].
//!
//! Until the image is pulled the translation plans the container against
//! [`Use::Deferred`]: placeholders that depend only on the image string,
//! so the plan's definition digest changes when the image does (a
//! rollout) and never because a tag moved on the registry.

use super::image::{
    ImageConfig, Pulled, TreeKind, ARTIFACT_MOUNT, HOST_FILES, IMAGE_EXEC, IMAGE_EXEC_HOST,
};
use super::unit::Property;

/// The search path when neither the container nor the image sets `PATH`
/// (the one containerd and runc use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The image a container is planned against.
#[derive(Debug, Clone, Copy)]
pub enum Use<'a> {
    /// Not pulled yet: planned with placeholders.
    Deferred {
        /// The image string.
        image: &'a str,
        /// Artifact or OCI.
        kind: TreeKind,
    },
    /// Pulled: its tree and config.
    Pulled(&'a Pulled),
}

impl Use<'_> {
    /// Artifact or OCI.
    pub fn kind(&self) -> TreeKind {
        match self {
            Use::Deferred { kind, .. } => *kind,
            Use::Pulled(p) => p.kind,
        }
    }

    fn config(&self) -> Option<&ImageConfig> {
        match self {
            Use::Deferred { .. } => None,
            Use::Pulled(p) => Some(&p.config),
        }
    }

    fn root(&self) -> String {
        match self {
            Use::Deferred { image, .. } => format!("<tree of {image}>"),
            Use::Pulled(p) => p.root.clone(),
        }
    }
}

/// The argv before `$(VAR)` expansion, as Kubernetes combines `command`
/// and `args` with the image's `Entrypoint` and `Cmd`: `command` replaces
/// `Entrypoint` (and drops `Cmd`), `args` replaces `Cmd`. Each element says
/// whether it came from the pod (expanded) or the image (taken as is).
pub fn argv(command: &[String], args: &[String], image: &Use) -> Vec<(String, bool)> {
    let pod = |v: &[String]| v.iter().map(|a| (a.clone(), true)).collect::<Vec<_>>();
    let img = |v: &[String]| v.iter().map(|a| (a.clone(), false)).collect::<Vec<_>>();
    let mut out = if !command.is_empty() {
        pod(command)
    } else {
        match image {
            Use::Pulled(p) => img(&p.config.entrypoint),
            Use::Deferred { image, .. } => vec![(format!("<entrypoint of {image}>"), false)],
        }
    };
    if !args.is_empty() {
        out.extend(pod(args));
    } else if command.is_empty() {
        match image {
            Use::Pulled(p) => out.extend(img(&p.config.cmd)),
            Use::Deferred { image, .. } => out.push((format!("<cmd of {image}>"), false)),
        }
    }
    out
}

/// The image's `Env` as pairs (an entry without `=` is a name with an
/// empty value, as Docker reads it).
pub fn env(image: &Use) -> Vec<(String, String)> {
    image
        .config()
        .map(|c| {
            c.env
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.clone(), String::new()),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The working directory when the container sets none: the image's
/// `WorkingDir`, else the artifact's tree (an OCI root: `/`).
pub fn working_dir(image: &Use) -> String {
    match (
        image.kind(),
        image.config().and_then(|c| c.working_dir.clone()),
    ) {
        (_, Some(wd)) if !wd.is_empty() => wd,
        (TreeKind::Artifact, _) => ARTIFACT_MOUNT.to_string(),
        (TreeKind::Oci, _) => "/".to_string(),
    }
}

/// The program to run for `argv0`. In an artifact, a relative path is
/// inside the tree. In an OCI root, a bare name is looked up on `path`
/// (the container's final `PATH`) among the root's programs, as runc does;
/// a relative path with a `/` is from the working directory. `Err`: the
/// message of a program not found.
pub fn program(
    argv0: &str,
    image: &Use,
    path: Option<&str>,
    workdir: &str,
) -> Result<String, String> {
    if argv0.starts_with('/') {
        return Ok(argv0.to_string());
    }
    match image {
        Use::Deferred { .. } => Ok(argv0.to_string()),
        Use::Pulled(p) => match p.kind {
            TreeKind::Artifact => Ok(join(ARTIFACT_MOUNT, argv0)),
            TreeKind::Oci if argv0.contains('/') => Ok(join(workdir, argv0)),
            TreeKind::Oci => path
                .unwrap_or(DEFAULT_PATH)
                .split(':')
                .filter(|d| d.starts_with('/'))
                .map(|d| join(d, argv0))
                .find(|cand| p.programs.contains(cand))
                .ok_or_else(|| {
                    format!(
                        "exec: {argv0:?}: executable file not found in $PATH of image {:?}",
                        p.id
                    )
                }),
        },
    }
}

fn join(dir: &str, rel: &str) -> String {
    let rel = rel.trim_start_matches("./");
    if dir.ends_with('/') {
        format!("{dir}{rel}")
    } else {
        format!("{dir}/{rel}")
    }
}

/// The image's user as ids, when the container names none: `Ok(None)`
/// without a `User`; `Err` when it names a user the image does not have.
pub fn user(image: &Use) -> Result<Option<(u32, Option<u32>)>, String> {
    let Some(c) = image.config() else {
        return Ok(None);
    };
    match (&c.user, c.uid) {
        (None, _) => Ok(None),
        (Some(u), _) if u.is_empty() => Ok(None),
        (Some(_), Some(uid)) => Ok(Some((uid, c.gid))),
        (Some(u), None) => Err(format!(
            "unable to find user {u}: no matching entries in the image's passwd file"
        )),
    }
}

/// The supplementary groups the image gives its `User` (added when the
/// container runs as that user, as containerd adds them).
pub fn user_groups(image: &Use) -> Vec<u32> {
    image.config().map(|c| c.groups.clone()).unwrap_or_default()
}

/// The properties that put the tree in place: an artifact's tree bound
/// read-only at [`ARTIFACT_MOUNT`] (the rest of the host stays visible);
/// an OCI root as the unit's root, read-only (the tree is shared by every
/// container of the image and never changes), with the kernel's API file
/// systems, a private writable `/tmp` and `/run`, the host's resolver
/// files where the image has them (the pod shares the host's network),
/// and with `helper` the static `image-exec` that switches to the
/// container's user.
pub fn tree_properties(image: &Use, read_only_already: bool, helper: bool) -> Vec<Property> {
    let root = image.root();
    match image.kind() {
        TreeKind::Artifact => vec![Property::BindReadOnlyPaths(vec![(
            root,
            ARTIFACT_MOUNT.to_string(),
        )])],
        TreeKind::Oci => {
            let mut props = vec![Property::RootDirectory(root), Property::MountApiVfs(true)];
            if !read_only_already {
                props.push(Property::ProtectSystem("strict".into()));
            }
            props.push(Property::TemporaryFileSystem(vec![
                ("/tmp".into(), "mode=1777".into()),
                ("/run".into(), "mode=0755".into()),
            ]));
            let mut binds: Vec<(String, String)> = HOST_FILES
                .iter()
                .filter(|f| match image {
                    Use::Pulled(p) => p.host_files.contains(**f),
                    Use::Deferred { .. } => true,
                })
                .map(|p| (p.to_string(), p.to_string()))
                .collect();
            if helper {
                binds.push((IMAGE_EXEC_HOST.to_string(), IMAGE_EXEC.to_string()));
            }
            props.push(Property::BindReadOnlyPaths(binds));
            props
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn oci(entrypoint: &[&str], cmd: &[&str]) -> Pulled {
        Pulled {
            kind: TreeKind::Oci,
            root: "/var/lib/unitlet/images/sha256/ab".into(),
            id: "r/x@sha256:ab".into(),
            config: ImageConfig {
                entrypoint: s(entrypoint),
                cmd: s(cmd),
                ..Default::default()
            },
            host_files: Arc::default(),
            programs: Arc::new(BTreeSet::from([
                "/bin/sh".to_string(),
                "/usr/bin/env".to_string(),
            ])),
        }
    }

    fn words(v: Vec<(String, bool)>) -> Vec<String> {
        v.into_iter().map(|(a, _)| a).collect()
    }

    #[test]
    fn command_and_args_combine_with_entrypoint_and_cmd_as_in_kubernetes() {
        let p = oci(&["/ep", "-x"], &["c1", "c2"]);
        let u = Use::Pulled(&p);
        for (command, args, want) in [
            (s(&[]), s(&[]), s(&["/ep", "-x", "c1", "c2"])),
            (s(&[]), s(&["a"]), s(&["/ep", "-x", "a"])),
            (s(&["/cmd"]), s(&[]), s(&["/cmd"])),
            (s(&["/cmd"]), s(&["a"]), s(&["/cmd", "a"])),
        ] {
            assert_eq!(
                words(argv(&command, &args, &u)),
                want,
                "{command:?} {args:?}"
            );
        }
        // Only what the pod wrote is expanded.
        let v = argv(&s(&[]), &s(&["$(A)"]), &u);
        assert_eq!(
            v.iter().map(|x| x.1).collect::<Vec<_>>(),
            [false, false, true]
        );
    }

    #[test]
    fn programs_are_found_where_the_image_kind_says() {
        let p = oci(&[], &[]);
        let u = Use::Pulled(&p);
        assert_eq!(program("sh", &u, None, "/").unwrap(), "/bin/sh");
        assert_eq!(
            program("env", &u, Some("/usr/bin:/bin"), "/").unwrap(),
            "/usr/bin/env"
        );
        assert!(program("nope", &u, None, "/")
            .unwrap_err()
            .contains("not found in $PATH"));
        assert_eq!(program("./run", &u, None, "/app").unwrap(), "/app/run");
        let mut a = oci(&[], &[]);
        a.kind = TreeKind::Artifact;
        let u = Use::Pulled(&a);
        assert_eq!(
            program("bin/svc", &u, None, "/x").unwrap(),
            "/run/unitlet/image/bin/svc"
        );
        assert_eq!(
            program("/usr/bin/true", &u, None, "/x").unwrap(),
            "/usr/bin/true"
        );
        assert_eq!(working_dir(&u), ARTIFACT_MOUNT);
    }

    #[test]
    fn an_unresolved_image_user_is_an_error_and_ids_pass_through() {
        let mut p = oci(&[], &[]);
        assert_eq!(user(&Use::Pulled(&p)), Ok(None));
        p.config.user = Some("app".into());
        assert!(user(&Use::Pulled(&p))
            .unwrap_err()
            .contains("unable to find user app"));
        p.config.uid = Some(1000);
        p.config.gid = Some(100);
        assert_eq!(user(&Use::Pulled(&p)), Ok(Some((1000, Some(100)))));
    }

    #[test]
    fn deferred_plans_depend_only_on_the_image_string() {
        let d = Use::Deferred {
            image: "r/x:1",
            kind: TreeKind::Oci,
        };
        assert_eq!(
            words(argv(&[], &[], &d)),
            s(&["<entrypoint of r/x:1>", "<cmd of r/x:1>"])
        );
        assert_eq!(program("sh", &d, None, "/").unwrap(), "sh");
        let props = tree_properties(&d, false, false);
        assert_eq!(props[0], Property::RootDirectory("<tree of r/x:1>".into()));
    }
}
