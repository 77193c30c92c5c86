//! The artifact unpacker on arbitrary bytes: it may refuse anything, but
//! never panics and never writes beside the tree it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unitlet::images::unpack::{unpack_tar, Limits};

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().expect("a temporary directory");
    let tree = outer.path().join("tree");
    std::fs::create_dir(&tree).expect("the tree");
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 256,
    };
    let _ = unpack_tar(data, &tree, &limits);
    let beside: Vec<_> = std::fs::read_dir(outer.path())
        .expect("listing")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside, ["tree"], "an entry landed outside the tree");
});
