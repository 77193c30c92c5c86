//! The static `image-exec` helper (`helpers/image-exec.rs`, built by
//! `build.rs`): a container in an OCI image's root switches to its user
//! through it. The agent writes it to
//! [`crate::core::image::IMAGE_EXEC_HOST`] at start-up; units bind it
//! read-only into their root.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The helper program.
pub const PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/image-exec"));

/// Writes the helper where units find it (atomically; left alone when it
/// is there already, so running units never see it change).
pub fn install() -> io::Result<()> {
    let path = Path::new(crate::core::image::IMAGE_EXEC_HOST);
    if std::fs::read(path).is_ok_and(|b| b == PROGRAM) {
        return Ok(());
    }
    let dir = path.parent().expect("an absolute path");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".image-exec.tmp");
    std::fs::write(&tmp, PROGRAM)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, path)
}
