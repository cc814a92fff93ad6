//! Fuzz target `config`: arbitrary bytes as the agent's YAML config file, through the code that
//! `flowaudit check --config FILE` runs once it has read the file ([`Settings::resolve_text`]).
//!
//! Must hold: the result is the settings or a `ConfigError`, never a panic. Bytes that are not
//! UTF-8 are skipped: `Settings::resolve` reads the file as UTF-8 text and refuses anything else
//! before parsing.
#![no_main]

use flowaudit::config::{RunFlags, Settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Settings::resolve_text(
        &RunFlags::default(),
        "fuzz.yaml",
        text,
        || Some("/sys/fs/cgroup".into()),
        || Some("node-a".into()),
    );
});
