//! Fuzz target `manifests`: arbitrary bytes as one file of the manifests directory
//! (`--cluster DIR`), through the per-file entry point of the manifests source
//! ([`manifests::load_text`], what `load_dir` runs on each file it reads), then the counts
//! `flowaudit check --cluster DIR` prints.
//!
//! Must hold: the result is a state or the list of problems, never a panic. Bytes that are not
//! UTF-8 are skipped: `load_dir` reads files as UTF-8 text and reports anything else as
//! unreadable before parsing.
#![no_main]

use std::path::Path;

use flowaudit::cluster::manifests;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(loaded) = manifests::load_text(Path::new("fuzz.yaml"), text) {
        let _ = loaded.state.counts();
    }
});
