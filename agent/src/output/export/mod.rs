//! Exporters: each configured sink gets every record of its log types, encoded its way, in
//! order, at least once.
//!
//! Takes: encoded items per log type (from [`crate::output::Outputs`]). Gives: per exporter, a
//! bounded intake queue, batches sealed by count, size or age into an on-disk [`spool`], and a
//! sender that delivers the spool oldest first with exponential backoff and jitter, so a sink
//! outage or an agent restart loses nothing up to the spool's cap. Must never: block the
//! pipeline on a slow sink (a full intake queue drops the submission and counts it), reorder
//! batches, or drop an item without a counter (`flowaudit_export_records_dropped_total`).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::{
    io::AsyncWriteExt,
    sync::{Notify, mpsc},
    task::JoinHandle,
};

pub mod config;
pub mod sink;
pub mod spool;

use config::{ExporterConfig, SinkConfig};
use sink::{ClickHouseSink, HttpSink, KafkaSink, Outcome, Sink, SinkError, SyslogSink, http::HttpApi};
use spool::{Dropped, Spool, SpoolError};

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogType {
    /// Flow records.
    Flows,
    /// Policy change audit events.
    Audit,
    /// Rows of compliance reports (`flowaudit reporter` only).
    Reports,
}

impl LogType {
    /// Every log type, in [`LogType::index`] order.
    pub const ALL: [LogType; 3] = [LogType::Flows, LogType::Audit, LogType::Reports];

    /// `flows`, `audit` or `reports`.
    pub fn name(self) -> &'static str {
        match self {
            LogType::Flows => "flows",
            LogType::Audit => "audit",
            LogType::Reports => "reports",
        }
    }

    /// The inverse of [`LogType::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The position in [`LogType::ALL`] (per-type slots and topics).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One encoded record and its routing key (Kafka key: node and flow, or node and object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// No tab, no newline.
    pub key: String,
    /// The encoded record, no newline.
    pub line: Vec<u8>,
}

/// An exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The spool directory is unusable.
    #[error("exporter {name}: {source}")]
    Spool {
        /// Exporter.
        name: String,
        /// Cause.
        source: SpoolError,
    },
    /// A setting or secret is unusable.
    #[error("exporter {name}: {source}")]
    Sink {
        /// Exporter.
        name: String,
        /// Cause.
        source: SinkError,
    },
}

/// Per-exporter metrics, labelled `exporter`.
#[derive(Clone)]
pub struct ExportMetrics {
    sent: IntCounterVec,
    failed: IntCounterVec,
    retries: IntCounterVec,
    resent: IntCounterVec,
    dropped: IntCounterVec,
    queue: IntGaugeVec,
    spool_bytes: IntGaugeVec,
    spool_items: IntGaugeVec,
    last_success: IntGaugeVec,
}

impl ExportMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["exporter"]).expect("valid");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        Self {
            sent: counter("flowaudit_export_records_sent_total", "Records a sink accepted.", &["exporter"]),
            failed: counter(
                "flowaudit_export_records_failed_total",
                "Records in failed send attempts (they are retried).",
                &["exporter"],
            ),
            retries: counter(
                "flowaudit_export_retries_total",
                "Send attempts that failed and wait for a retry.",
                &["exporter"],
            ),
            resent: counter(
                "flowaudit_export_records_resent_total",
                "Records written again after a broken connection (they may arrive twice).",
                &["exporter"],
            ),
            dropped: counter(
                "flowaudit_export_records_dropped_total",
                "Records an exporter gave up: queue_full, spool_full, rejected (dead letters), encode_error, spool_error.",
                &["exporter", "reason"],
            ),
            queue: gauge("flowaudit_export_queue_records", "Records submitted and not yet sealed into the spool."),
            spool_bytes: gauge("flowaudit_export_spool_bytes", "Bytes waiting in the spool."),
            spool_items: gauge("flowaudit_export_spool_records", "Records waiting in the spool."),
            last_success: gauge(
                "flowaudit_export_last_success_timestamp_seconds",
                "Unix time of the last accepted batch (0: none yet).",
            ),
        }
    }

    /// Counts records an exporter gave up.
    pub fn drop(&self, exporter: &str, reason: &str, n: u64) {
        if n > 0 {
            self.dropped.with_label_values(&[exporter, reason]).inc_by(n);
        }
    }
}

/// The pipeline's end of one network exporter.
pub struct Exporter {
    /// Name.
    pub name: String,
    /// Encoding.
    pub encoding: crate::output::encode::Encoding,
    /// What it takes.
    pub log_types: Vec<LogType>,
    tx: Option<mpsc::Sender<(LogType, Vec<Item>)>>,
    metrics: ExportMetrics,
    intake: JoinHandle<()>,
    sender: JoinHandle<()>,
    closing: Arc<Notify>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

struct Shared {
    name: String,
    spool: Mutex<Spool>,
    notify: Notify,
    metrics: ExportMetrics,
}

impl Shared {
    fn gauges(&self, spool: &Spool) {
        self.metrics.spool_bytes.with_label_values(&[&self.name]).set(spool.bytes() as i64);
        self.metrics.spool_items.with_label_values(&[&self.name]).set(spool.items() as i64);
    }

    fn dropped(&self, d: Dropped) {
        if d.items > 0 {
            tracing::warn!(message = "Spool full: oldest batches dropped.", exporter = %self.name, batches = d.batches, records = d.items);
            self.metrics.drop(&self.name, "spool_full", d.items);
        }
    }
}

/// Builds the sink of a network exporter (secrets are read here, from files).
fn build_sink(cfg: &ExporterConfig, node: &str) -> Result<Sink, SinkError> {
    let secret = |path: &std::path::Path| -> Result<String, SinkError> {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| SinkError::Config(format!("{}: {e}", path.display())))
    };
    let basic_auth = |user: &str, password: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    };
    Ok(match &cfg.sink {
        SinkConfig::File { .. } => return Err(SinkError::Config("file is not a network sink".into())),
        SinkConfig::Syslog { transport, address, app_name, facility, tls } => {
            let tls =
                (*transport == config::SyslogTransport::Tls).then(|| sink::tls::client_config(tls)).transpose()?;
            Sink::Syslog(SyslogSink::new(
                *transport,
                address.clone(),
                app_name.clone(),
                *facility,
                node.to_owned(),
                tls,
            ))
        }
        SinkConfig::Elasticsearch { url, index, audit_index, report_index, basic, api_key_file, tls, .. } => {
            let auth = match (basic, api_key_file) {
                (_, Some(key)) => Some(format!("ApiKey {}", secret(key)?)),
                (Some((user, pass)), None) => Some(basic_auth(user, &secret(pass)?)),
                (None, None) => None,
            };
            let api = HttpApi::Elasticsearch {
                index: index.clone(),
                audit_index: audit_index.clone(),
                report_index: report_index.clone(),
            };
            Sink::Http(HttpSink::new(url, api, auth, sink::tls::client_config(tls)?, cfg.delivery.timeout)?)
        }
        SinkConfig::SplunkHec { url, token_file, index, sourcetype, tls, .. } => {
            let api = HttpApi::Splunk { index: index.clone(), sourcetype: sourcetype.clone(), host: node.to_owned() };
            let auth = Some(format!("Splunk {}", secret(token_file)?));
            Sink::Http(HttpSink::new(url, api, auth, sink::tls::client_config(tls)?, cfg.delivery.timeout)?)
        }
        SinkConfig::Otlp { url, tls, .. } => {
            let api = HttpApi::Otlp { host: node.to_owned() };
            Sink::Http(HttpSink::new(url, api, None, sink::tls::client_config(tls)?, cfg.delivery.timeout)?)
        }
        SinkConfig::ClickHouse { url, database, table, user, tls, .. } => {
            let auth = match user {
                Some((user, Some(pass))) => Some(basic_auth(user, &secret(pass)?)),
                Some((user, None)) => Some(basic_auth(user, "")),
                None => None,
            };
            let tls = sink::tls::client_config(tls)?;
            Sink::ClickHouse(ClickHouseSink::new(url, database, table, auth, tls, cfg.delivery.timeout)?)
        }
        SinkConfig::Kafka { brokers, topic, audit_topic, report_topic, compression } => Sink::Kafka(KafkaSink::new(
            brokers.clone(),
            [topic.clone(), audit_topic.clone(), report_topic.clone()],
            compression,
        )),
    })
}

fn dead_letter_file(cfg: &ExporterConfig) -> std::path::PathBuf {
    match &cfg.sink {
        SinkConfig::Elasticsearch { dead_letter_file, .. }
        | SinkConfig::SplunkHec { dead_letter_file, .. }
        | SinkConfig::Otlp { dead_letter_file, .. }
        | SinkConfig::ClickHouse { dead_letter_file, .. } => dead_letter_file.clone(),
        _ => cfg.delivery.spool_dir.join("dead-letter.log"),
    }
}

impl Exporter {
    /// Opens the spool (taking over what a previous process left) and starts the intake and
    /// sender tasks. `cfg.sink` must not be `File`.
    pub fn start(cfg: ExporterConfig, node: &str, metrics: ExportMetrics) -> Result<Self, ExportError> {
        let name = cfg.name.clone();
        let sink = build_sink(&cfg, node).map_err(|source| ExportError::Sink { name: name.clone(), source })?;
        let (spool, dropped) = Spool::open(&cfg.delivery.spool_dir, cfg.delivery.spool_max_bytes)
            .map_err(|source| ExportError::Spool { name: name.clone(), source })?;
        if !spool.is_empty() {
            tracing::info!(message = "Spool taken over.", exporter = %name, batches = spool.len(), records = spool.items());
        }
        for label in ["queue_full", "spool_full", "rejected", "encode_error", "spool_error"] {
            metrics.dropped.with_label_values(&[&name, label]);
        }
        for c in [&metrics.sent, &metrics.failed, &metrics.retries, &metrics.resent] {
            c.with_label_values(&[&name]);
        }
        metrics.last_success.with_label_values(&[&name]).set(0);
        metrics.queue.with_label_values(&[&name]).set(0);
        let shared = Arc::new(Shared {
            name: name.clone(),
            spool: Mutex::new(spool),
            notify: Notify::new(),
            metrics: metrics.clone(),
        });
        shared.dropped(dropped);
        shared.gauges(&shared.spool.lock().expect("not poisoned"));
        shared.notify.notify_one();
        let (tx, rx) = mpsc::channel(cfg.delivery.queue_capacity);
        let closing = Arc::new(Notify::new());
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let intake = tokio::spawn(intake(rx, cfg.delivery.clone(), shared.clone()));
        let sender = tokio::spawn(deliver(sink, cfg.clone(), shared, closing.clone(), closed.clone()));
        Ok(Self {
            name,
            encoding: cfg.encoding,
            log_types: cfg.log_types,
            tx: Some(tx),
            metrics,
            intake,
            sender,
            closing,
            closed,
        })
    }

    /// Queues encoded items; never waits. A full queue drops them, counted as `queue_full`.
    pub fn submit(&self, log_type: LogType, items: Vec<Item>) {
        let n = items.len() as u64;
        let Some(tx) = &self.tx else { return };
        match tx.try_send((log_type, items)) {
            Ok(()) => self.metrics.queue.with_label_values(&[&self.name]).add(n as i64),
            Err(_) => {
                tracing::warn!(message = "Exporter queue full: records dropped.", exporter = %self.name, records = n);
                self.metrics.drop(&self.name, "queue_full", n);
            }
        }
    }

    /// Seals what is queued into the spool and delivers for up to `grace`; what is left stays in
    /// the spool for the next start.
    pub async fn close(mut self, grace: Duration) {
        self.tx = None;
        let _ = self.intake.await;
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.closing.notify_one();
        if tokio::time::timeout(grace, &mut self.sender).await.is_err() {
            self.sender.abort();
            tracing::warn!(message = "Exporter stopped with records in its spool; they are sent after the next start.", exporter = %self.name);
        }
    }
}

/// Batches submissions per log type and seals them into the spool.
async fn intake(mut rx: mpsc::Receiver<(LogType, Vec<Item>)>, delivery: config::Delivery, shared: Arc<Shared>) {
    struct Pending {
        items: Vec<Item>,
        bytes: u64,
        since: Instant,
    }
    let mut pending: [Option<Pending>; LogType::ALL.len()] = [None, None, None];
    let slot = LogType::index;
    let seal = |p: Pending, t: LogType| {
        let n = p.items.len() as i64;
        let mut spool = shared.spool.lock().expect("not poisoned");
        match spool.push(t, &p.items) {
            Ok(d) => shared.dropped(d),
            Err(error) => {
                tracing::error!(message = "Writing the spool failed: batch dropped.", exporter = %shared.name, %error, records = n);
                shared.metrics.drop(&shared.name, "spool_error", n as u64);
            }
        }
        shared.gauges(&spool);
        shared.metrics.queue.with_label_values(&[&shared.name]).sub(n);
        drop(spool);
        shared.notify.notify_one();
    };
    loop {
        let deadline = pending.iter().flatten().map(|p| p.since + delivery.batch_timeout).min();
        let next = tokio::select! {
            sub = rx.recv() => sub,
            () = async { match deadline { Some(d) => tokio::time::sleep_until(d.into()).await, None => std::future::pending().await } } => {
                let now = Instant::now();
                for t in LogType::ALL {
                    if pending[slot(t)].as_ref().is_some_and(|p| p.since + delivery.batch_timeout <= now) {
                        seal(pending[slot(t)].take().expect("checked"), t);
                    }
                }
                continue;
            }
        };
        let Some((t, items)) = next else { break };
        for item in items {
            let p =
                pending[slot(t)].get_or_insert_with(|| Pending { items: Vec::new(), bytes: 0, since: Instant::now() });
            p.bytes += (item.key.len() + item.line.len() + 2) as u64;
            p.items.push(item);
            if p.items.len() >= delivery.batch_max_records || p.bytes >= delivery.batch_max_bytes {
                seal(pending[slot(t)].take().expect("just filled"), t);
            }
        }
    }
    for t in LogType::ALL {
        if let Some(p) = pending[slot(t)].take() {
            seal(p, t);
        }
    }
}

/// Delivers the spool, oldest batch first, retrying with backoff until the sink accepts.
async fn deliver(
    mut sink: Sink,
    cfg: ExporterConfig,
    shared: Arc<Shared>,
    closing: Arc<Notify>,
    closed: Arc<std::sync::atomic::AtomicBool>,
) {
    let name = cfg.name.as_str();
    let m = &shared.metrics;
    let d = &cfg.delivery;
    let mut backoff = d.retry_initial;
    loop {
        let next = {
            let mut spool = shared.spool.lock().expect("not poisoned");
            spool.take_front().map(|meta| (meta, spool.read(&meta)))
        };
        let Some((meta, items)) = next else {
            if closed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::select! {
                () = shared.notify.notified() => {}
                () = closing.notified() => {}
            }
            continue;
        };
        let items = match items {
            Ok(items) => items,
            Err(error) => {
                tracing::error!(message = "A spooled batch cannot be read: dropped.", exporter = name, %error);
                m.drop(name, "spool_error", meta.items);
                let mut spool = shared.spool.lock().expect("not poisoned");
                let _ = spool.finish(&meta, &[]);
                shared.gauges(&spool);
                continue;
            }
        };
        let result = match tokio::time::timeout(d.timeout, sink.send(meta.log_type, &items)).await {
            Ok(r) => r,
            Err(_) => {
                sink.reset();
                Err(SinkError::Transport(format!("no answer within {:?}", d.timeout)))
            }
        };
        let remaining: Vec<Item> = match result {
            Ok(Outcome { retry, rejected, resent }) => {
                m.resent.with_label_values(&[name]).inc_by(resent);
                if !rejected.is_empty() {
                    dead_letters(&cfg, meta.log_type, &items, &rejected).await;
                    m.drop(name, "rejected", rejected.len() as u64);
                }
                let delivered = items.len() - retry.len() - rejected.len();
                m.sent.with_label_values(&[name]).inc_by(delivered as u64);
                if delivered > 0 {
                    m.last_success.with_label_values(&[name]).set(jiff::Timestamp::now().as_second());
                }
                if !retry.is_empty() {
                    m.failed.with_label_values(&[name]).inc_by(retry.len() as u64);
                }
                retry.iter().map(|&i| items[i].clone()).collect()
            }
            Err(error) => {
                tracing::warn!(message = "Export failed; retrying.", exporter = name, %error, records = items.len(), retry_in = ?backoff);
                m.failed.with_label_values(&[name]).inc_by(items.len() as u64);
                items
            }
        };
        {
            let mut spool = shared.spool.lock().expect("not poisoned");
            if let Err(error) = spool.finish(&meta, &remaining) {
                tracing::error!(message = "Updating the spool failed.", exporter = name, %error);
            }
            shared.gauges(&spool);
        }
        if remaining.is_empty() {
            backoff = d.retry_initial;
        } else {
            m.retries.with_label_values(&[name]).inc();
            // Full jitter over the upper half: between backoff/2 and backoff.
            let half = backoff / 2;
            let wait = half + half.mul_f64(fastrand::f64());
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(d.retry_max);
        }
    }
}

/// Appends refused items to the exporter's dead-letter file (JSON lines with the reason).
async fn dead_letters(cfg: &ExporterConfig, log_type: LogType, items: &[Item], rejected: &[(usize, String)]) {
    let path = dead_letter_file(cfg);
    let mut out = Vec::new();
    for (i, reason) in rejected {
        let record = String::from_utf8_lossy(&items[*i].line);
        let line = serde_json::json!({
            "time": jiff::Timestamp::now().to_string(),
            "exporter": cfg.name,
            "log_type": log_type.name(),
            "reason": reason,
            "record": record,
        });
        let _ = serde_json::to_writer(&mut out, &line);
        out.push(b'\n');
    }
    tracing::warn!(message = "Records refused by the sink; written to the dead-letter file.", exporter = %cfg.name, records = rejected.len(), file = %path.display());
    let result = async {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut f = tokio::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(&path).await?;
        f.write_all(&out).await
    }
    .await;
    if let Err(error) = result {
        tracing::error!(message = "Writing the dead-letter file failed.", file = %path.display(), %error);
    }
}
