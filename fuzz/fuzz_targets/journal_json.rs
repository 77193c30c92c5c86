//! `journalctl -o json` lines, as the log reader takes them in: parsing,
//! attributing lines to invocations and formatting their times never
//! panic, whatever a line holds (a process decides its own messages).
#![no_main]

use libfuzzer_sys::fuzz_target;
use unitlet::journal::{decode_entry, rfc3339_nano, Attributor, Entry};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let entries: Vec<Entry> = text.lines().filter_map(Entry::parse).collect();
    for line in text.lines() {
        if let Some(e) = Entry::parse(line) {
            // The entry's message and time are the decoder's.
            assert_eq!(decode_entry(line), Some((e.ts, e.message.clone())));
        }
    }
    let mut who = Attributor::new(vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 100)]);
    for e in &entries {
        who.observe(e);
    }
    who.replay();
    for e in &entries {
        who.observe(e);
        let _ = who.owner(e);
        // Fixed width, as the kubelet prints them.
        assert_eq!(rfc3339_nano(e.ts).len(), 30, "{}", e.ts);
    }
});
