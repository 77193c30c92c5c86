//! Builds `helpers/image-exec.rs` as a static program (no dynamic loader
//! or libraries: it runs inside OCI images' roots) for the agent to embed.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "helpers/image-exec.rs";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("image-exec");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(&rustc)
        .args([
            "--edition=2021",
            "--crate-name=image_exec",
            "--crate-type=bin",
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
            "-C",
            "debuginfo=0",
            "-C",
            "target-feature=+crt-static",
            "--target",
            &target,
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {rustc}: {e}"));
    assert!(
        status.success(),
        "building the static {src} failed: it needs the C library's static archive (Debian: libc6-dev)"
    );
}
