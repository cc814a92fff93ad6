//! output: flow records and audit events → local logs and SIEM exporters.
//!
//! Takes: batches of flow records and audit events. Gives: the rotated `flows.log` / `audit.log`
//! ([`file`]) and each configured exporter's delivery. Must never: reorder records within a sink,
//! or drop one without a counter saying so.

use std::{io, path::PathBuf};

pub mod encode;
pub mod file;

pub use file::{DIR_MODE, FILE_MODE, FLOW_LOG, FileConfig, FlowLogWriter, RotatingLog};

/// A flow-log write failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The directory could not be created or the file opened.
    #[error("flow-log directory {path}: {source}")]
    Open {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Writing, flushing or rotating failed.
    #[error("writing {path}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A record could not be encoded.
    #[error("encoding a flow record: {0}")]
    Encode(#[from] serde_json::Error),
}
