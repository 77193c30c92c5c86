//! Unit naming.
//!
//! A container becomes `unitlet_<namespace>_<pod>_<container>_<tag>.service`
//! and a pod becomes the slice `unitlet-<d>-pod<tag>.slice`, where `<tag>` is a
//! short hash of the pod UID. `_` cannot occur in Kubernetes names, so the
//! readable parts never run into each other, and the tag keeps two pods with
//! the same name (an old and a recreated one) apart. Names are never parsed
//! back: identity comes from the state directory. When the readable name
//! would pass [`MAX_UNIT_NAME`], the pod name is shortened; the tag and the
//! container name keep it unique.
//!
//! The slice name carries only the tag because a `-` in a slice name means
//! nesting to systemd, and pod names are full of dashes. Pod slices are
//! spread over 16 bucket slices by the tag's first digit
//! (`unitlet.slice/unitlet-<d>.slice/unitlet-<d>-pod<tag>.slice`): systemd
//! walks every sibling of a unit's slices when it sets up the unit's cgroups,
//! so a thousand pod slices side by side cost each pod start (slice and
//! container) a walk over all of them; measured, that made systemd's work
//! per pod grow by half between 100 and 1000 pods. Buckets are shared,
//! created implicitly by systemd, and never stopped by unitlet.

use sha2::{Digest, Sha256};

/// Longest unit name unitlet creates, in bytes: one under systemd's own
/// limit (255), because journald (systemd 252) silently drops the
/// stdout/stderr of a service whose name is exactly 255 bytes long.
pub const MAX_UNIT_NAME: usize = 254;
/// Prefix shared by every container unit; also the pattern used to list them.
pub const SERVICE_PREFIX: &str = "unitlet_";
/// Prefix shared by every pod slice (and the bucket slices above them).
pub const SLICE_PREFIX: &str = "unitlet-";
/// Glob patterns that match every unit unitlet creates per pod (not the
/// bucket slices, which are shared and never stopped).
pub const UNIT_PATTERNS: [&str; 2] = ["unitlet_*.service", "unitlet-?-pod*.slice"];

/// 12 hex digits of SHA-256 of the pod UID: 48 bits, unique enough for one node.
pub fn uid_tag(uid: &str) -> String {
    let digest = Sha256::digest(uid.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The per-pod slice, in the bucket named by the tag's first digit.
pub fn pod_slice(uid: &str) -> String {
    let tag = uid_tag(uid);
    format!("unitlet-{}-pod{tag}.slice", &tag[..1])
}

/// The UID tag in the name of a unit made by [`container_unit`] or
/// [`pod_slice`] (`None` for any other name): which pod a unit belongs to
/// when the pod's record is gone.
pub fn uid_tag_of(unit: &str) -> Option<&str> {
    let (stem, separator) = if unit.starts_with(SERVICE_PREFIX) {
        (unit.strip_suffix(".service")?, "_")
    } else if unit.starts_with(SLICE_PREFIX) {
        (unit.strip_suffix(".slice")?, "-pod")
    } else {
        return None;
    };
    let at = stem.len().checked_sub(12)?;
    let tag = stem.get(at..)?;
    let hex = tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hex && stem[..at].ends_with(separator)).then_some(tag)
}

/// The unit of one container (init or app) of a pod.
pub fn container_unit(namespace: &str, pod: &str, container: &str, uid: &str) -> String {
    let tag = uid_tag(uid);
    let fixed =
        SERVICE_PREFIX.len() + namespace.len() + container.len() + tag.len() + 3 + ".service".len();
    let room = MAX_UNIT_NAME.saturating_sub(fixed);
    // Kubernetes names are ASCII, so byte truncation is character truncation.
    let pod = &pod[..pod.len().min(room)];
    format!("{SERVICE_PREFIX}{namespace}_{pod}_{container}_{tag}.service")
}

/// The D-Bus object path systemd uses for a unit (its `bus_label_escape`).
pub fn unit_object_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphanumeric() && !(i == 0 && b.is_ascii_digit()) {
            path.push(b as char);
        } else {
            path.push_str(&format!("_{b:02x}"));
        }
    }
    path
}

/// The unit whose object path is `path`: the inverse of
/// [`unit_object_path`], `None` for anything it does not produce (another
/// object, or a spelling that is not the canonical one). Decoding spares
/// the agent a table from path to unit (a tenth of a megabyte per 250
/// units, measured at 2,000 pods).
pub fn unit_from_object_path(path: &str) -> Option<String> {
    let escaped = path.strip_prefix("/org/freedesktop/systemd1/unit/")?;
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    let unit = String::from_utf8(bytes).ok()?;
    (unit_object_path(&unit) == path).then_some(unit)
}

/// Object-path prefix shared by all container units (for filtering signals).
pub fn service_path_prefix() -> String {
    unit_object_path(SERVICE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_name_their_pods_tag() {
        let tag = uid_tag("some-uid");
        assert_eq!(
            uid_tag_of(&container_unit("ns", "web", "c", "some-uid")),
            Some(tag.as_str())
        );
        assert_eq!(uid_tag_of(&pod_slice("some-uid")), Some(tag.as_str()));
        for other in [
            "unitlet-3.slice",
            "unitlet.slice",
            "sshd.service",
            "unitlet_x.service",
            "unitlet_ns_p_c_0123456789AB.service",
            "unitlet_ns_p_c0123456789ab.service",
            "unitlet-0-podé123456789ab.slice",
        ] {
            assert_eq!(uid_tag_of(other), None, "{other}");
        }
    }

    #[test]
    fn object_paths_decode_to_their_unit_and_nothing_else_does() {
        for unit in [
            "unitlet_default_web.v1_nginx_1234.service",
            "unitlet-a-poddeadbeef.slice",
            "9lives-x@y\\z.service",
            "ünï.service",
        ] {
            let path = unit_object_path(unit);
            assert_eq!(
                unit_from_object_path(&path).as_deref(),
                Some(unit),
                "{path}"
            );
        }
        for path in [
            "/org/freedesktop/systemd1/unit/a_2",
            "/org/freedesktop/systemd1/unit/a_zz",
            // Not canonical: `a` needs no escape.
            "/org/freedesktop/systemd1/unit/_61_2eservice",
            "/org/freedesktop/systemd1/unit/_ff",
            "/org/freedesktop/systemd1/job/12",
        ] {
            assert_eq!(unit_from_object_path(path), None, "{path}");
        }
    }

    #[test]
    fn readable_for_common_case() {
        let u = container_unit("default", "web.v1", "nginx", "1234");
        assert!(u.starts_with("unitlet_default_web.v1_nginx_"), "{u}");
        assert!(u.ends_with(".service"));
    }

    #[test]
    fn longest_legal_names_fit() {
        let pod = "a".repeat(253);
        let ns = "n".repeat(63);
        let c = "c".repeat(63);
        let u = container_unit(&ns, &pod, &c, "uid-1");
        assert_eq!(u.len(), MAX_UNIT_NAME);
        let v = container_unit(&ns, &pod, &c, "uid-2");
        assert_ne!(u, v);
    }

    #[test]
    fn pod_slices_nest_in_sixteen_buckets_outside_the_patterns() {
        let mut buckets = std::collections::HashSet::new();
        for i in 0..200 {
            let slice = pod_slice(&format!("uid-{i}"));
            let tag = uid_tag(&format!("uid-{i}"));
            assert_eq!(slice, format!("unitlet-{}-pod{tag}.slice", &tag[..1]));
            // systemd's parent of `a-b-c.slice` is `a-b.slice`.
            let parent = format!("{}.slice", &slice[..slice.rfind('-').unwrap()]);
            assert_eq!(parent, format!("unitlet-{}.slice", &tag[..1]));
            assert!(slice.starts_with(SLICE_PREFIX));
            // `unitlet-?-pod*.slice` matches the pod slice, not the bucket.
            assert_eq!(&slice[9..13], "-pod");
            assert!(!parent[9..].starts_with("-pod"));
            buckets.insert(parent);
        }
        assert_eq!(buckets.len(), 16);
        assert!(unit_object_path(&pod_slice("x")).starts_with(&unit_object_path(SLICE_PREFIX)));
    }

    #[test]
    fn object_path_escapes_like_systemd() {
        assert_eq!(
            unit_object_path("unitlet_a-b.service"),
            "/org/freedesktop/systemd1/unit/unitlet_5fa_2db_2eservice"
        );
        assert!(unit_object_path("unitlet_x.service").starts_with(&service_path_prefix()));
    }
}
