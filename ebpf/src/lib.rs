//! Empty library target: lets `agent/build.rs` name this crate as a build dependency.
#![no_std]
