//! The one place where stages are wired: capture → aggregate → enrich → attribute → rollup →
//! output, with the cluster state as a side input, plus telemetry and signals. Beside the flow
//! path: audit (cluster state versions and the kube-apiserver audit log → [`AuditEvent`]s on one
//! channel → `audit.log`, written by `write_audit_log`) and, when configured, snapshots of the
//! cluster state for the reports (`snapshots:`, written by `write_snapshots`). For
//! `flowaudit reporter`, [`report_exports`] wires the reporter's rows to the exporters.
//!
//! Takes: validated [`Settings`]. Gives: a running agent until SIGINT/SIGTERM, then a last drain
//! of every open flow written to the flow log, everything detached, and `Ok`. Must never: hold
//! stage logic; it only builds stage configs, channels and tasks.

use std::sync::{Arc, atomic::AtomicBool};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, watch};

use crate::{
    aggregate::{self, AggregateConfig, Aggregator},
    attribute::Attributor,
    audit::{self, AuditError, AuditEvent, AuditMetrics, Auditor, Follower, FollowerConfig},
    capture::{Capture, CaptureConfig, CaptureError, CaptureMetrics},
    cluster::{ClusterState, kube, manifests},
    config::{ClusterSource, ReporterSettings, Settings, Snapshots},
    enrich::{EnrichConfig, Enricher},
    model::{CaptureBatch, ReportRow, Reporter},
    output::{Evidence, LogEvidence, OutputError, Outputs},
    report::replay,
    reporter::RowSink,
    rollup::{self, RollupConfig},
    telemetry,
};

/// How long exporters keep delivering after a stop signal; what is left waits in their spools.
const EXPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Loading or attaching failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The flow-log directory is unusable.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The metrics address could not be bound.
    #[error("metrics address {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The manifests directory has problems (every one is listed).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Manifests(Vec<manifests::ManifestError>),
    /// The Kubernetes API source failed to start (configuration, or its caches never filled).
    #[error("--cluster kube: {0}")]
    Kube(kube::KubeError),
    /// The audit log's state directory is unusable.
    #[error("state_dir: {0}")]
    Audit(#[from] AuditError),
    /// A stage task panicked.
    #[error("a pipeline task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

struct OutputMetrics {
    state_version: IntGauge,
    records: IntCounterVec,
    bytes: IntCounter,
    dropped: IntCounterVec,
    connections: IntGauge,
    untracked: IntCounter,
    drain_lag: Histogram,
}

impl OutputMetrics {
    fn new(registry: &Registry) -> Self {
        let records = IntCounterVec::new(
            Opts::new("flowaudit_records_written_total", "Flow records handed to the exporters, per reporter."),
            &["reporter"],
        )
        .expect("valid");
        let bytes =
            IntCounter::new("flowaudit_flow_log_bytes_total", "Bytes appended to local log files.").expect("valid");
        let dropped = IntCounterVec::new(
            Opts::new("flowaudit_records_dropped_total", "Flow records a local file exporter could not write."),
            &["reason"],
        )
        .expect("valid");
        let connections = IntGauge::new("flowaudit_connections_tracked", "Connections the aggregate stage remembers.")
            .expect("valid");
        let untracked = IntCounter::new(
            "flowaudit_connections_untracked_total",
            "New connections written but not remembered because max_connections were (no \
             completion record; seen again, they are new again).",
        )
        .expect("valid");
        let drain_lag = Histogram::with_opts(
            HistogramOpts::new(
                "flowaudit_drain_lag_seconds",
                "From a drain of the kernel table to its records handed to the exporters: how far \
                 the pipeline runs behind capture.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )
        .expect("valid");
        let state_version =
            IntGauge::new("flowaudit_cluster_state_version", "Version of the cluster state in force (0: none).")
                .expect("valid");
        registry.register(Box::new(state_version.clone())).expect("unique");
        registry.register(Box::new(records.clone())).expect("unique");
        registry.register(Box::new(bytes.clone())).expect("unique");
        registry.register(Box::new(dropped.clone())).expect("unique");
        registry.register(Box::new(connections.clone())).expect("unique");
        registry.register(Box::new(untracked.clone())).expect("unique");
        registry.register(Box::new(drain_lag.clone())).expect("unique");
        Self { state_version, records, bytes, dropped, connections, untracked, drain_lag }
    }
}

/// Runs the agent until a signal, then flushes and returns.
/// The stages that turn one batch into written records, with the state version they use.
struct Stages {
    node: String,
    aggregator: Aggregator,
    enricher: Enricher,
    attributor: Attributor,
    levels: RollupConfig,
    outputs: Outputs,
    metrics: OutputMetrics,
    audit_metrics: AuditMetrics,
}

impl Stages {
    fn update(&mut self, state: &Arc<ClusterState>, now_ns: u64) {
        self.enricher.update(state, now_ns);
        self.attributor.update(state, now_ns);
        self.metrics.state_version.set(state.version as i64);
        tracing::info!(message = "Cluster state in force.", version = state.version);
    }

    fn process(&mut self, batch: &CaptureBatch) {
        let mut records = self.aggregator.process(batch);
        self.enricher.enrich(&mut records, batch.end_ns);
        let mut records = aggregate::localize(records, &self.node);
        self.attributor.attribute(&mut records);
        let records = rollup::rollup(records, &self.levels);
        self.metrics.connections.set(self.aggregator.tracked() as i64);
        self.metrics.untracked.inc_by(self.aggregator.untracked().saturating_sub(self.metrics.untracked.get()));
        let written = self.outputs.write_flows(&records);
        self.metrics.drain_lag.observe(now_ns().saturating_sub(batch.end_ns) as f64 / 1e9);
        self.metrics.bytes.inc_by(written.file_bytes);
        let mut per_reporter = [0u64; 3];
        for r in &records {
            per_reporter[r.reporter as usize] += 1;
        }
        for (reporter, n) in
            [Reporter::Src, Reporter::Dst, Reporter::Fwd].into_iter().zip(per_reporter).filter(|(_, n)| *n > 0)
        {
            let label = match reporter {
                Reporter::Src => "src",
                Reporter::Dst => "dst",
                Reporter::Fwd => "fwd",
            };
            self.metrics.records.with_label_values(&[label]).inc_by(n);
        }
        for (exporter, error) in written.file_errors {
            self.metrics.dropped.with_label_values(&["write_error"]).inc_by(records.len() as u64);
            tracing::error!(message = "Writing flow records failed.", exporter, records = records.len(), %error);
        }
        self.aggregator.recycle(records);
    }
}

impl Stages {
    /// Writes `events` and whatever else waits on `rx` to the exporters that take audit events.
    fn write_audit(&mut self, mut events: Vec<AuditEvent>, rx: &mut mpsc::Receiver<AuditEvent>) {
        while let Ok(more) = rx.try_recv() {
            events.push(more);
        }
        let mut values = Vec::with_capacity(events.len());
        for event in &events {
            match serde_json::to_value(event) {
                Ok(v) => values.push(v),
                Err(error) => {
                    tracing::error!(message = "An audit event could not be encoded.", audit_id = %event.audit_id, %error)
                }
            }
        }
        let written = self.outputs.write_audit(&values);
        for (exporter, error) in &written.file_errors {
            tracing::error!(message = "Writing audit events failed.", exporter, events = values.len(), %error);
        }
        for event in &events {
            self.audit_metrics.count(event);
        }
    }
}

/// The reporter's exporters (`flowaudit reporter --config`): `None` when none are configured.
/// Must be called inside the runtime (the network exporters start their tasks).
pub fn report_exports(
    settings: &ReporterSettings,
    registry: &Registry,
) -> Result<Option<Box<dyn RowSink>>, OutputError> {
    if settings.exporters.is_empty() {
        return Ok(None);
    }
    let outputs = Outputs::start(settings.exporters.clone(), &settings.node, registry, LogEvidence::default())?;
    Ok(Some(Box::new(ReportExports(outputs))))
}

/// The exporters as the reporter's row sink.
struct ReportExports(Outputs);

impl RowSink for ReportExports {
    fn send(&mut self, rows: &[ReportRow]) {
        let written = self.0.write_reports(rows);
        for (exporter, error) in written.file_errors {
            tracing::error!(message = "Writing report rows failed.", %exporter, %error, rows = rows.len());
        }
    }

    fn close(self: Box<Self>, grace: std::time::Duration) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(self.0.close(grace))
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The cluster state source, if any: the first state, then every new version.
async fn cluster_states(settings: &Settings) -> Result<Option<watch::Receiver<Arc<ClusterState>>>, PipelineError> {
    match &settings.cluster {
        None => Ok(None),
        Some(ClusterSource::Dir(dir)) => {
            let loaded = manifests::load_dir(dir).map_err(PipelineError::Manifests)?;
            for s in &loaded.skipped {
                tracing::info!(message = "Manifest skipped.", file = %s.file.display(), document = s.document, kind = %s.kind, reason = s.reason);
            }
            Ok(Some(manifests::watch(dir.clone(), loaded, std::time::Duration::from_secs(1))))
        }
        Some(ClusterSource::Kube) => {
            let client = kube::client().await.map_err(PipelineError::Kube)?;
            Ok(Some(kube::watch(client).await.map_err(PipelineError::Kube)?))
        }
    }
}

/// Runs the agent until a signal, then flushes and returns.
pub async fn run(settings: Settings) -> Result<(), PipelineError> {
    let registry = Registry::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let evidence = LogEvidence {
        flows: Evidence { retention: settings.retention_flows, hmac_key: settings.hmac_key.clone() },
        audit: Evidence { retention: settings.retention_audit, hmac_key: settings.hmac_key.clone() },
        reports: Evidence::default(),
    };
    let outputs = Outputs::start(settings.exporters.clone(), &settings.node, &registry, evidence)?;
    let mut states = cluster_states(&settings).await?;
    let audit_metrics = AuditMetrics::new(&registry);
    let (audit_tx, mut audit_rx) = mpsc::channel(AUDIT_QUEUE);
    let mut audit_tasks = Vec::new();
    if let (Some(rx), Some(source)) = (&states, &settings.cluster) {
        let (id, live) = match source {
            ClusterSource::Kube => ("kube".to_owned(), audit::Source::Watch),
            ClusterSource::Dir(dir) => {
                let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
                (format!("manifests:{}", dir.display()), audit::Source::Manifests)
            }
        };
        let auditor = Auditor::open(&settings.state_dir, &id, live)?;
        audit_tasks.push(tokio::spawn(audit_states(auditor, rx.clone(), audit_tx.clone(), shutdown_rx.clone())));
        if let Some(snapshots) = &settings.snapshots {
            let written = IntCounterVec::new(
                Opts::new(
                    "flowaudit_snapshots_total",
                    "Cluster state snapshots written, by result (success, failure).",
                ),
                &["result"],
            )
            .expect("valid metric");
            registry.register(Box::new(written.clone())).expect("registered once");
            let task = write_snapshots(rx.clone(), id.clone(), snapshots.clone(), written, shutdown_rx.clone());
            audit_tasks.push(tokio::spawn(task));
        }
    }
    if let Some(path) = &settings.kube_audit_log {
        let config = FollowerConfig {
            path: path.clone(),
            state_dir: settings.state_dir.clone(),
            poll: std::time::Duration::from_millis(500),
        };
        let follower = Follower::open(&config, audit_metrics.clone())?;
        audit_tasks.push(tokio::spawn(follower.run(audit_tx.clone(), config.poll, shutdown_rx.clone())));
    }
    drop(audit_tx);
    let listener = telemetry::bind(settings.metrics_addr)
        .await
        .map_err(|source| PipelineError::Metrics { addr: settings.metrics_addr, source })?;
    let metrics = OutputMetrics::new(&registry);
    let capture = Capture::load(
        CaptureConfig {
            cgroup: settings.cgroup.clone(),
            interfaces: settings.interfaces.clone(),
            flow_table_entries: settings.flow_table_entries,
            ring_buffer_size: settings.ring_buffer_size,
            flush_interval: settings.flush_interval,
            pin: settings.pin.then(|| settings.pin_path.clone()),
        },
        CaptureMetrics::new(&registry),
        ready.clone(),
    )?;
    let mut stages = Stages {
        node: settings.node.clone(),
        aggregator: Aggregator::new(AggregateConfig {
            node: settings.node.clone(),
            idle_timeout: settings.idle_timeout,
            tcp_idle_timeout: settings.tcp_idle_timeout,
            max_connections: settings.max_connections as usize,
        }),
        enricher: Enricher::new(EnrichConfig {
            cgroup_root: cgroup_root(&settings),
            grace: settings.pod_deletion_grace,
        }),
        attributor: Attributor::new(),
        levels: RollupConfig { allowed: settings.aggregation_allowed, denied: settings.aggregation_denied },
        outputs,
        metrics,
        audit_metrics: audit_metrics.clone(),
    };
    if let Some(rx) = &mut states {
        let state = rx.borrow_and_update().clone();
        stages.update(&state, now_ns());
    }

    let server = tokio::spawn(telemetry::serve(listener, registry.clone(), ready, shutdown_rx.clone()));
    // One batch waits while one is processed and capture builds the next: under a flood each holds up
    // to 2 x flow_table_entries flows, so the queue is kept short (docs/performance.md, "Memory").
    let (batches_tx, mut batches) = mpsc::channel(1);
    let (drain_tx, drain_rx) = mpsc::channel(1);
    let capture_task = tokio::spawn(capture.run(batches_tx, drain_rx, shutdown_rx));
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(message = "Signal received; flushing open flows.");
        let _ = shutdown_tx.send(true);
    });

    // A state change first drains the kernel table, so traffic before the change is written with
    // the verdicts of the state it happened under, and traffic after it with the new ones.
    let mut pending: Option<(u64, Arc<ClusterState>, u64)> = None;
    let mut request = 0u64;
    loop {
        let state_changed = async {
            match (&mut states, &pending) {
                (Some(rx), None) => rx.changed().await.ok(),
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            batch = batches.recv() => {
                let Some(batch) = batch else { break };
                stages.process(&batch);
                if let Some((id, state, at)) = pending.take() {
                    if batch.answers == Some(id) || batch.last {
                        stages.update(&state, at);
                    } else {
                        pending = Some((id, state, at));
                    }
                }
                if batch.last {
                    break;
                }
            }
            Some(event) = audit_rx.recv() => stages.write_audit(vec![event], &mut audit_rx),
            Some(()) = state_changed => {
                let state = states.as_mut().expect("a source").borrow_and_update().clone();
                request += 1;
                pending = Some((request, state, now_ns()));
                let _ = drain_tx.send(request).await;
            }
        }
    }
    capture_task.await??;
    // The audit tasks end on the shutdown signal; then what they sent is written.
    for task in audit_tasks {
        task.await?;
    }
    while let Some(event) = audit_rx.recv().await {
        stages.write_audit(vec![event], &mut audit_rx);
    }
    stages.outputs.close(EXPORT_GRACE).await;
    let _ = server.await?;
    Ok(())
}

/// Writes the cluster state to `<archive>/snapshots` whenever the newest snapshot there is
/// `interval` old (at start when there is none), until shutdown: the reports' state at the start
/// of an interval. A failure is logged and counted, and tried again a minute later.
async fn write_snapshots(
    states: watch::Receiver<Arc<ClusterState>>,
    source: String,
    cfg: Snapshots,
    written: IntCounterVec,
    mut shutdown: watch::Receiver<bool>,
) {
    let dir = cfg.archive.join(replay::SNAPSHOTS_DIR);
    let every = jiff::SignedDuration::try_from(cfg.interval).unwrap_or(jiff::SignedDuration::from_hours(24));
    for result in ["success", "failure"] {
        written.with_label_values(&[result]);
    }
    loop {
        let now = jiff::Timestamp::now();
        if replay::snapshot_due(&dir, now, every) {
            let snapshot = replay::Snapshot::from_state(&states.borrow().clone(), &source, now);
            let archive = cfg.archive.clone();
            match tokio::task::spawn_blocking(move || snapshot.write(&archive)).await {
                Ok(Ok(path)) => {
                    written.with_label_values(&["success"]).inc();
                    tracing::info!(message = "Cluster state snapshot written.", path = %path.display());
                }
                Ok(Err(error)) => {
                    written.with_label_values(&["failure"]).inc();
                    tracing::error!(message = "Writing the cluster state snapshot failed.", %error);
                }
                Err(error) => {
                    written.with_label_values(&["failure"]).inc();
                    tracing::error!(message = "Writing the cluster state snapshot failed.", %error);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Audit events waiting to be written.
const AUDIT_QUEUE: usize = 4096;

/// Diffs every new cluster state version into audit events (the first against the state stored
/// before a restart), until shutdown; a version published before the shutdown is still diffed.
async fn audit_states(
    mut auditor: Auditor,
    mut states: watch::Receiver<Arc<ClusterState>>,
    tx: mpsc::Sender<AuditEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let state = states.borrow_and_update().clone();
        for event in auditor.observe(&state.objects, std::time::SystemTime::now()) {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => {}
        }
    }
}

/// The cgroup v2 mount (pods' cgroup paths are relative to it), whatever subtree capture uses.
fn cgroup_root(settings: &Settings) -> std::path::PathBuf {
    std::fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|m| crate::config::cgroup2_mount(&m))
        .unwrap_or_else(|| settings.cgroup.clone())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
