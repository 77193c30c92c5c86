//! The unpacker on arbitrary bytes, in both modes: it may refuse
//! anything, but never panics and never writes beside the tree it was
//! given. The layer mode gets the input split in two layers applied in
//! order, so that later entries meet what earlier ones planted (symlinks,
//! whiteouts, replacements).
#![no_main]

use libfuzzer_sys::fuzz_target;
use unitlet::images::unpack::{unpack_layer, unpack_tar, Limits};

fn beside_tree(outer: &std::path::Path) {
    let beside: Vec<_> = std::fs::read_dir(outer)
        .expect("listing")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside, ["tree"], "an entry landed outside the tree");
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 256,
    };

    let outer = tempfile::tempdir().expect("a temporary directory");
    let tree = outer.path().join("tree");
    std::fs::create_dir(&tree).expect("the tree");
    let _ = unpack_tar(data, &tree, &limits);
    beside_tree(outer.path());

    // The first two bytes say where the second layer starts, in 512-byte
    // blocks (a tar stream's unit).
    let (split, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])) * 512, rest),
        _ => (0, data),
    };
    let (first, second) = rest.split_at(split.min(rest.len()));
    let outer = tempfile::tempdir().expect("a temporary directory");
    let tree = outer.path().join("tree");
    std::fs::create_dir(&tree).expect("the tree");
    if unpack_layer(first, &tree, &limits).is_ok() {
        let _ = unpack_layer(second, &tree, &limits);
    }
    beside_tree(outer.path());
});
