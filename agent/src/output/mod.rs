//! output: flow records and audit events (and, in `flowaudit reporter`, report rows) → local logs
//! and SIEM exporters.
//!
//! Takes: batches of flow records, audit events or report rows. Gives: for each configured exporter, the
//! records of its log types in its encoding: `file` exporters write rotated local logs
//! ([`file`]) synchronously; network exporters ([`export`]) queue, spool and deliver in the
//! background. Must never: reorder records within a sink, block the pipeline on a network sink,
//! or drop a record without a counter saying so.

use std::{io, path::PathBuf, time::Duration};

use prometheus::Registry;

pub mod chain;
pub mod encode;
pub mod export;
pub mod file;
pub mod verify;

pub use chain::HmacKey;
pub use file::{DIR_MODE, FILE_MODE, FLOW_LOG, FileConfig, FlowLogWriter, RotatingLog};
pub use file::{Evidence, EvidenceEvents, EvidenceMetrics, Retention};

use crate::model::{FlowRecord, ReportRow};
use encode::{EncodeContext, Encoding};
use export::{ExportError, ExportMetrics, Exporter, Item, LogType, config::ExporterConfig};

/// Name of the live audit log.
pub const AUDIT_LOG: &str = "audit.log";

/// Name of the live report-row log (`flowaudit reporter`'s `file` exporters).
pub const REPORTS_LOG: &str = "reports.log";

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
    /// A network exporter could not start.
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// Hash chain and retention of the local logs, per log type.
#[derive(Clone, Debug, Default)]
pub struct LogEvidence {
    /// `flows.log*`.
    pub flows: Evidence,
    /// `audit.log*`.
    pub audit: Evidence,
    /// `reports.log*`.
    pub reports: Evidence,
}

/// A `file` exporter: `flows.log`, `audit.log` and/or `reports.log` in one directory, one
/// log per log type ([`LogType::index`]).
struct FileExporter {
    name: String,
    encoding: Encoding,
    logs: [Option<RotatingLog>; LogType::ALL.len()],
}

impl FileExporter {
    fn takes(&self, log_type: LogType) -> bool {
        self.logs[log_type.index()].is_some()
    }

    fn log(&mut self, log_type: LogType) -> Option<&mut RotatingLog> {
        self.logs[log_type.index()].as_mut()
    }
}

/// Records encoded into one buffer at a time (about 1.5 MB of calico lines).
const WRITE_CHUNK: usize = 1024;

/// The records of one chunk of a write in one encoding: one buffer, one span per record (`None`: the record
/// could not be encoded; it was logged and is counted by each exporter that wanted it).
struct Encoded {
    encoding: Encoding,
    buf: Vec<u8>,
    spans: Vec<Option<std::ops::Range<usize>>>,
    errors: u64,
}

impl Encoded {
    fn new(encoding: Encoding, n: usize, encode: impl Fn(usize, &mut Vec<u8>) -> Result<(), String>) -> Self {
        let mut e = Self { encoding, buf: Vec::with_capacity(n * 1024), spans: Vec::with_capacity(n), errors: 0 };
        for i in 0..n {
            let start = e.buf.len();
            match encode(i, &mut e.buf) {
                Ok(()) => e.spans.push(Some(start..e.buf.len())),
                Err(error) => {
                    // A failed encoding may have written part of a line.
                    e.buf.truncate(start);
                    tracing::error!(message = "A record could not be encoded.", ?encoding, %error);
                    e.spans.push(None);
                    e.errors += 1;
                }
            }
        }
        e
    }

    fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().flatten().map(|r| &self.buf[r.clone()])
    }
}

/// What one write did, for the caller's counters.
#[derive(Debug, Default)]
pub struct Written {
    /// Bytes appended to local files.
    pub file_bytes: u64,
    /// Local writes that failed: exporter name and the error (the records are lost for it).
    pub file_errors: Vec<(String, OutputError)>,
    /// Records that could not be encoded, per exporter.
    pub encode_errors: u64,
}

/// Every exporter of the configuration.
pub struct Outputs {
    ctx: EncodeContext,
    files: Vec<FileExporter>,
    exporters: Vec<Exporter>,
    metrics: ExportMetrics,
    evidence: EvidenceMetrics,
}

impl Outputs {
    /// Opens the local files and starts the network exporters (each takes over its spool).
    pub fn start(
        configs: Vec<ExporterConfig>,
        node: &str,
        registry: &Registry,
        evidence: LogEvidence,
    ) -> Result<Self, OutputError> {
        let metrics = ExportMetrics::new(registry);
        let mut files = Vec::new();
        let mut exporters = Vec::new();
        for cfg in configs {
            match &cfg.sink {
                export::config::SinkConfig::File { dir, max_file_size, max_files } => {
                    let fc = FileConfig { dir: dir.clone(), max_file_size: *max_file_size, max_files: *max_files };
                    let open =
                        |wanted: LogType, name: &str, ev: &Evidence| -> Result<Option<RotatingLog>, OutputError> {
                            cfg.log_types
                                .contains(&wanted)
                                .then(|| RotatingLog::open_with(fc.clone(), name, ev.clone()))
                                .transpose()
                        };
                    files.push(FileExporter {
                        name: cfg.name.clone(),
                        encoding: cfg.encoding,
                        logs: [
                            open(LogType::Flows, FLOW_LOG, &evidence.flows)?,
                            open(LogType::Audit, AUDIT_LOG, &evidence.audit)?,
                            open(LogType::Reports, REPORTS_LOG, &evidence.reports)?,
                        ],
                    });
                }
                _ => exporters.push(Exporter::start(cfg, node, metrics.clone())?),
            }
        }
        let ctx = EncodeContext { node: node.to_owned(), agent_version: env!("CARGO_PKG_VERSION") };
        Ok(Self { ctx, files, exporters, metrics, evidence: EvidenceMetrics::new(registry) })
    }

    /// Writes flow records to every exporter that takes flows.
    pub fn write_flows(&mut self, records: &[FlowRecord]) -> Written {
        // Keys only matter to network exporters.
        let keys: Vec<String> = if self.exporters.is_empty() {
            Vec::new()
        } else {
            records.iter().map(|r| flow_key(&self.ctx.node, r)).collect()
        };
        self.write(LogType::Flows, records.len(), &keys, |ctx, enc, i, out| {
            encode::encode_flow(&records[i], enc, ctx, out).map_err(|e| e.to_string())
        })
    }

    /// Writes audit events (`audit.k8s.io/v1` Event JSON) to every exporter that takes audit.
    pub fn write_audit(&mut self, events: &[serde_json::Value]) -> Written {
        let keys: Vec<String> = if self.exporters.is_empty() {
            Vec::new()
        } else {
            events.iter().map(|e| audit_key(&self.ctx.node, e)).collect()
        };
        self.write(LogType::Audit, events.len(), &keys, |ctx, enc, i, out| {
            encode::encode_audit(&events[i], enc, ctx, out).map_err(|e| e.to_string())
        })
    }

    /// Writes the rows of a finished report to every exporter that takes reports.
    pub fn write_reports(&mut self, rows: &[ReportRow]) -> Written {
        let keys: Vec<String> = if self.exporters.is_empty() {
            Vec::new()
        } else {
            rows.iter().map(|r| r.id().replace(['\t', '\n'], " ")).collect()
        };
        self.write(LogType::Reports, rows.len(), &keys, |ctx, enc, i, out| {
            encode::encode_report(&rows[i], enc, ctx, out).map_err(|e| e.to_string())
        })
    }

    fn write(
        &mut self,
        log_type: LogType,
        n: usize,
        keys: &[String],
        encode: impl Fn(&EncodeContext, Encoding, usize, &mut Vec<u8>) -> Result<(), String>,
    ) -> Written {
        let mut written = Written::default();
        if n == 0 {
            return written;
        }
        let mut encodings: Vec<Encoding> = Vec::new();
        let wanted = self
            .files
            .iter()
            .filter(|f| f.takes(log_type))
            .map(|f| f.encoding)
            .chain(self.exporters.iter().filter(|e| e.log_types.contains(&log_type)).map(|e| e.encoding));
        for enc in wanted {
            if !encodings.contains(&enc) {
                encodings.push(enc);
            }
        }
        // A local write that failed stops that file for the rest of this write.
        let mut failed: Vec<Option<OutputError>> = self.files.iter().map(|_| None).collect();
        // A flood's batch (up to twice `flow_table_entries` records) is encoded a chunk at a
        // time, never into one buffer. Each record is encoded once per encoding in use, into one
        // buffer per chunk and encoding shared by the file and network exporters.
        for start in (0..n).step_by(WRITE_CHUNK) {
            let range = start..(start + WRITE_CHUNK).min(n);
            let encoded: Vec<Encoded> = encodings
                .iter()
                .map(|&enc| Encoded::new(enc, range.len(), |i, out| encode(&self.ctx, enc, range.start + i, out)))
                .collect();
            let of = |enc: Encoding| encoded.iter().find(|e| e.encoding == enc).expect("encoded above");
            for (f, failure) in self.files.iter_mut().zip(failed.iter_mut()) {
                let (name, encoding) = (f.name.clone(), f.encoding);
                let Some(log) = f.log(log_type) else { continue };
                let lines = of(encoding);
                self.metrics.drop(&name, "encode_error", lines.errors);
                written.encode_errors += lines.errors;
                if failure.is_some() {
                    continue;
                }
                for line in lines.lines() {
                    match log.append_line(line) {
                        Ok(b) => written.file_bytes += b,
                        Err(e) => {
                            *failure = Some(e);
                            break;
                        }
                    }
                }
            }
            let chunk_keys = keys.get(range.clone()).unwrap_or_default();
            for e in &self.exporters {
                if !e.log_types.contains(&log_type) {
                    continue;
                }
                let lines = of(e.encoding);
                self.metrics.drop(&e.name, "encode_error", lines.errors);
                written.encode_errors += lines.errors;
                let items = chunk_keys
                    .iter()
                    .zip(&lines.spans)
                    .filter_map(|(key, span)| {
                        span.clone().map(|r| Item { key: key.clone(), line: lines.buf[r].to_vec() })
                    })
                    .collect();
                e.submit(log_type, items);
            }
        }
        // One flush per write: one chain line for the whole write, as before chunking.
        for (f, failure) in self.files.iter_mut().zip(failed) {
            let name = f.name.clone();
            let Some(log) = f.log(log_type) else { continue };
            if let Err(e) = failure.map_or_else(|| log.flush(), Err) {
                written.file_errors.push((name, e));
            }
            self.evidence.observe(log_type.name(), log.take_events());
        }
        written
    }

    /// Seals every queue into its spool and delivers for up to `grace` in all; the rest waits in
    /// the spools for the next start.
    pub async fn close(self, grace: Duration) {
        let closes = self.exporters.into_iter().map(|e| e.close(grace));
        futures::future::join_all(closes).await;
    }
}

/// Kafka key of a flow: node and flow key (no tab, no newline).
fn flow_key(node: &str, r: &FlowRecord) -> String {
    let ip = |ip: Option<std::net::IpAddr>| ip.map_or_else(|| "-".to_owned(), |i| i.to_string());
    let port = |p: Option<u16>| p.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let key = format!(
        "{node}/{}/{}:{}/{}:{}",
        r.proto,
        ip(r.source_ip),
        port(r.source_port),
        ip(r.dest_ip),
        port(r.dest_port)
    );
    key.replace(['\t', '\n'], " ")
}

/// Kafka key of an audit event: node and object.
fn audit_key(node: &str, e: &serde_json::Value) -> String {
    let o = &e["objectRef"];
    let s = |k: &str| o.get(k).and_then(serde_json::Value::as_str).unwrap_or("-").to_owned();
    format!("{node}/{}/{}/{}", s("resource"), s("namespace"), s("name")).replace(['\t', '\n'], " ")
}
