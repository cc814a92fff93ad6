//! The one place where stages are wired: capture → aggregate → output, plus telemetry and
//! signals.
//!
//! Takes: validated [`Settings`]. Gives: a running agent until SIGINT/SIGTERM, then a last drain
//! of every open flow written to the flow log, everything detached, and `Ok`. Must never: hold
//! stage logic; it only builds stage configs, channels and tasks.

use std::sync::{Arc, atomic::AtomicBool};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, watch};

use crate::{
    aggregate::{AggregateConfig, Aggregator},
    capture::{Capture, CaptureConfig, CaptureError, CaptureMetrics},
    config::Settings,
    output::{FileConfig, FlowLogWriter, OutputError},
    rollup::{self, RollupConfig},
    telemetry,
};

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
    /// A stage task panicked.
    #[error("a pipeline task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

struct OutputMetrics {
    records: IntCounterVec,
    bytes: IntCounter,
    dropped: IntCounterVec,
    connections: IntGauge,
}

impl OutputMetrics {
    fn new(registry: &Registry) -> Self {
        let records = IntCounterVec::new(
            Opts::new("flowaudit_records_written_total", "Flow-log records written, per reporter."),
            &["reporter"],
        )
        .expect("valid");
        let bytes = IntCounter::new("flowaudit_flow_log_bytes_total", "Bytes appended to flows.log.").expect("valid");
        let dropped = IntCounterVec::new(
            Opts::new("flowaudit_records_dropped_total", "Flow-log records that could not be written."),
            &["reason"],
        )
        .expect("valid");
        let connections =
            IntGauge::new("flowaudit_connections_tracked", "Connections the aggregate stage remembers.").expect("valid");
        registry.register(Box::new(records.clone())).expect("unique");
        registry.register(Box::new(bytes.clone())).expect("unique");
        registry.register(Box::new(dropped.clone())).expect("unique");
        registry.register(Box::new(connections.clone())).expect("unique");
        Self { records, bytes, dropped, connections }
    }
}

/// Runs the agent until a signal, then flushes and returns.
pub async fn run(settings: Settings) -> Result<(), PipelineError> {
    let registry = Registry::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let mut writer = FlowLogWriter::open(FileConfig {
        dir: settings.flow_log_dir.clone(),
        max_file_size: settings.flow_log_max_file_size,
        max_files: settings.flow_log_max_files,
    })?;
    let listener = telemetry::bind(settings.metrics_addr)
        .await
        .map_err(|source| PipelineError::Metrics { addr: settings.metrics_addr, source })?;
    let out_metrics = OutputMetrics::new(&registry);
    let capture = Capture::load(
        CaptureConfig {
            cgroup: settings.cgroup.clone(),
            interfaces: settings.interfaces.clone(),
            flow_table_entries: settings.flow_table_entries,
            ring_buffer_size: settings.ring_buffer_size,
            flush_interval: settings.flush_interval,
        },
        CaptureMetrics::new(&registry),
        ready.clone(),
    )?;
    let mut aggregator = Aggregator::new(AggregateConfig {
        node: settings.node.clone(),
        idle_timeout: settings.idle_timeout,
        tcp_idle_timeout: settings.tcp_idle_timeout,
    });

    let levels = RollupConfig { allowed: settings.aggregation_allowed, denied: settings.aggregation_denied };

    let server = tokio::spawn(telemetry::serve(listener, registry.clone(), ready, shutdown_rx.clone()));
    let (batches_tx, mut batches) = mpsc::channel(4);
    let capture_task = tokio::spawn(capture.run(batches_tx, shutdown_rx));
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(message = "Signal received; flushing open flows.");
        let _ = shutdown_tx.send(true);
    });

    while let Some(batch) = batches.recv().await {
        let records = rollup::rollup(aggregator.process(&batch), &levels);
        out_metrics.connections.set(aggregator.tracked() as i64);
        match writer.write(&records) {
            Ok(bytes) => {
                out_metrics.bytes.inc_by(bytes);
                for r in &records {
                    let reporter = match r.reporter {
                        crate::model::Reporter::Src => "src",
                        crate::model::Reporter::Dst => "dst",
                        crate::model::Reporter::Fwd => "fwd",
                    };
                    out_metrics.records.with_label_values(&[reporter]).inc();
                }
            }
            Err(error) => {
                out_metrics.dropped.with_label_values(&["write_error"]).inc_by(records.len() as u64);
                tracing::error!(message = "Writing flow records failed.", records = records.len(), %error);
            }
        }
        if batch.last {
            break;
        }
    }
    capture_task.await??;
    let _ = server.await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
