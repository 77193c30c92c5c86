//! hostPath volume types: what the kubelet checks (or creates) at a
//! hostPath before binding it, with the kubelet's own error messages, which
//! users see as `FailedMount` events.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// A hostPath volume's `type`: what the kubelet checks (or creates) at the
/// path before binding it, so a pod expecting a socket does not silently
/// get an empty directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathType {
    /// `""` or absent: no check, for compatibility with pods from before types.
    Unset,
    /// Create an empty directory (0755) if nothing is there.
    DirectoryOrCreate,
    /// A directory must exist.
    Directory,
    /// Create an empty file (0644) if nothing is there.
    FileOrCreate,
    /// A regular file must exist.
    File,
    /// A UNIX socket must exist.
    Socket,
    /// A character device must exist.
    CharDevice,
    /// A block device must exist.
    BlockDevice,
}

impl HostPathType {
    /// The Kubernetes spelling; `None` for a type this agent does not know,
    /// which the caller reports instead of mounting unchecked.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        Some(match s.unwrap_or("") {
            "" => Self::Unset,
            "DirectoryOrCreate" => Self::DirectoryOrCreate,
            "Directory" => Self::Directory,
            "FileOrCreate" => Self::FileOrCreate,
            "File" => Self::File,
            "Socket" => Self::Socket,
            "CharDevice" => Self::CharDevice,
            "BlockDevice" => Self::BlockDevice,
            _ => return None,
        })
    }
}

/// The kubelet's name for what is at a path (`os.Stat`, so symlinks are
/// followed), or its error for anything else (a FIFO).
fn host_file_type(md: &fs::Metadata) -> Result<&'static str, &'static str> {
    let ft = md.file_type();
    if ft.is_dir() {
        Ok("Directory")
    } else if ft.is_file() {
        Ok("File")
    } else if ft.is_socket() {
        Ok("Socket")
    } else if ft.is_char_device() {
        Ok("CharDevice")
    } else if ft.is_block_device() {
        Ok("BlockDevice")
    } else {
        Err("only recognise file, directory, socket, block device and character device")
    }
}

fn type_matched_or_error(path: &Path, expected: &str, description: &str) -> Result<(), String> {
    let md = match fs::metadata(path) {
        Ok(md) => md,
        Err(_) => return Err(format!("hostPath {} doesn't exist", path.display())),
    };
    match host_file_type(&md) {
        Ok(t) if t == expected => Ok(()),
        Ok(t) => Err(format!(
            "hostPath type check failed: {} is not a {description}, it's a {t}",
            path.display()
        )),
        Err(e) => Err(format!(
            "hostPath type check failed, {} is not a {description}, unable to determine its type: {e}",
            path.display()
        )),
    }
}

/// The kubelet's hostPath type check (`checkType`), with its messages, which
/// the agent reports as the pod's `FailedMount` event. The `…OrCreate`
/// types create what is missing, as the kubelet does: a directory with its
/// parents, a file without them (a missing parent is an error).
pub fn check_host_path(path: &Path, t: HostPathType) -> Result<(), String> {
    let exists = fs::metadata(path).is_ok();
    match t {
        HostPathType::Unset => Ok(()),
        HostPathType::DirectoryOrCreate => {
            if !exists {
                match DirBuilder::new().recursive(true).mode(0o755).create(path) {
                    Ok(()) => {
                        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
                        return Ok(());
                    }
                    // Something appeared (or a dangling symlink): check it below.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("mkdir {}: {e}", path.display())),
                }
            }
            type_matched_or_error(path, "Directory", "directory")
        }
        HostPathType::Directory => type_matched_or_error(path, "Directory", "directory"),
        HostPathType::FileOrCreate => {
            if !exists {
                match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(path)
                {
                    Ok(file) => {
                        let _ = file.set_permissions(fs::Permissions::from_mode(0o644));
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("open {}: {e}", path.display())),
                }
            }
            type_matched_or_error(path, "File", "file")
        }
        HostPathType::File => type_matched_or_error(path, "File", "file"),
        HostPathType::Socket => type_matched_or_error(path, "Socket", "socket file"),
        HostPathType::CharDevice => type_matched_or_error(path, "CharDevice", "character device"),
        HostPathType::BlockDevice => type_matched_or_error(path, "BlockDevice", "block device"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use nix::sys::stat::Mode;
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::os::unix::net::UnixListener;

    // --- hostPath types ----------------------------------------------------

    #[test]
    fn host_path_type_parse() {
        assert_eq!(HostPathType::parse(None), Some(HostPathType::Unset));
        assert_eq!(HostPathType::parse(Some("")), Some(HostPathType::Unset));
        assert_eq!(
            HostPathType::parse(Some("DirectoryOrCreate")),
            Some(HostPathType::DirectoryOrCreate)
        );
        assert_eq!(
            HostPathType::parse(Some("CharDevice")),
            Some(HostPathType::CharDevice)
        );
        assert_eq!(
            HostPathType::parse(Some("BlockDevice")),
            Some(HostPathType::BlockDevice)
        );
        assert_eq!(HostPathType::parse(Some("directory")), None);
        assert_eq!(HostPathType::parse(Some("Pipe")), None);
    }

    #[test]
    fn host_path_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let dir = t.join("dir");
        let file = t.join("file");
        fs::create_dir(&dir).unwrap();
        fs::write(&file, "x").unwrap();
        symlink(&dir, t.join("dirlink")).unwrap();
        let sock = t.join("sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        let missing = t.join("missing");
        let f = |p: &Path| p.display().to_string();

        assert_eq!(check_host_path(&missing, HostPathType::Unset), Ok(()));
        assert!(!missing.exists());

        // DirectoryOrCreate
        let made = t.join("new/nested/dir");
        check_host_path(&made, HostPathType::DirectoryOrCreate).unwrap();
        assert!(made.is_dir());
        assert_eq!(mode_of(&made), 0o755);
        check_host_path(&made, HostPathType::DirectoryOrCreate).unwrap();
        assert_eq!(
            check_host_path(&file, HostPathType::DirectoryOrCreate),
            Err(format!(
                "hostPath type check failed: {} is not a directory, it's a File",
                f(&file)
            ))
        );

        // Directory
        check_host_path(&dir, HostPathType::Directory).unwrap();
        check_host_path(&t.join("dirlink"), HostPathType::Directory).unwrap();
        assert_eq!(
            check_host_path(&missing, HostPathType::Directory),
            Err(format!("hostPath {} doesn't exist", f(&missing)))
        );
        assert_eq!(
            check_host_path(&file, HostPathType::Directory),
            Err(format!(
                "hostPath type check failed: {} is not a directory, it's a File",
                f(&file)
            ))
        );

        // FileOrCreate
        let newfile = t.join("newfile");
        check_host_path(&newfile, HostPathType::FileOrCreate).unwrap();
        let md = fs::metadata(&newfile).unwrap();
        assert!(md.is_file() && md.len() == 0);
        assert_eq!(md.mode() & 0o7777, 0o644);
        fs::write(&newfile, "kept").unwrap();
        check_host_path(&newfile, HostPathType::FileOrCreate).unwrap();
        assert_eq!(fs::read_to_string(&newfile).unwrap(), "kept");
        assert_eq!(
            check_host_path(&dir, HostPathType::FileOrCreate),
            Err(format!(
                "hostPath type check failed: {} is not a file, it's a Directory",
                f(&dir)
            ))
        );
        // Like the kubelet, no parent directories for a file.
        let orphan = t.join("noparent/file");
        let err = check_host_path(&orphan, HostPathType::FileOrCreate).unwrap_err();
        assert!(err.starts_with(&format!("open {}: ", f(&orphan))), "{err}");
        assert!(!t.join("noparent").exists());

        // File
        check_host_path(&file, HostPathType::File).unwrap();
        assert!(check_host_path(&dir, HostPathType::File).is_err());
        assert_eq!(
            check_host_path(&sock, HostPathType::File),
            Err(format!(
                "hostPath type check failed: {} is not a file, it's a Socket",
                f(&sock)
            ))
        );

        // Socket
        check_host_path(&sock, HostPathType::Socket).unwrap();
        assert_eq!(
            check_host_path(&file, HostPathType::Socket),
            Err(format!(
                "hostPath type check failed: {} is not a socket file, it's a File",
                f(&file)
            ))
        );

        // CharDevice
        check_host_path(Path::new("/dev/null"), HostPathType::CharDevice).unwrap();
        assert_eq!(
            check_host_path(&file, HostPathType::CharDevice),
            Err(format!(
                "hostPath type check failed: {} is not a character device, it's a File",
                f(&file)
            ))
        );

        // BlockDevice
        assert_eq!(
            check_host_path(&file, HostPathType::BlockDevice),
            Err(format!(
                "hostPath type check failed: {} is not a block device, it's a File",
                f(&file)
            ))
        );
        assert!(check_host_path(Path::new("/dev/null"), HostPathType::BlockDevice).is_err());
        let block = fs::read_dir("/dev").ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok())
                .find(|e| e.file_type().is_ok_and(|t| t.is_block_device()))
                .map(|e| e.path())
        });
        // Only where this machine has a block device node in /dev.
        if let Some(block) = block {
            check_host_path(&block, HostPathType::BlockDevice).unwrap();
            assert!(check_host_path(&block, HostPathType::CharDevice).is_err());
        }

        // A FIFO is none of the known types.
        let fifo = t.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let err = check_host_path(&fifo, HostPathType::File).unwrap_err();
        assert!(err.contains("unable to determine its type"), "{err}");
    }
}
