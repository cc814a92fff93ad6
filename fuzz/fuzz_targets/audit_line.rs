//! Fuzz target `audit_line`: arbitrary bytes as kube-apiserver audit log lines, through the
//! follower's line parser and filter ([`LineFilter::line`], what `Follower` runs on each complete
//! line).
//!
//! Must hold: every line gives an event, nothing, or an error text, never a panic. An input with
//! newlines is several lines handed to one filter in order, as the follower does (the filter
//! remembers labels across lines).
#![no_main]

use flowaudit::audit::LineFilter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut filter = LineFilter::default();
    for line in data.split(|b| *b == b'\n') {
        let _ = filter.line(line);
    }
});
