//! Prometheus families of the capture stage. Kernel counters are cumulative in the kernel; they
//! are exported as counters advanced by the difference since the last read.

use prometheus::{
    Counter as FloatCounter, Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use flowaudit_common::{Counter, ObsPoint};

/// Handles of the capture stage's metrics.
#[derive(Clone)]
pub struct CaptureMetrics {
    pub(super) kernel: IntCounterVec,
    pub(super) flow_entries: IntCounterVec,
    pub(super) packets: IntCounterVec,
    pub(super) bytes: IntCounterVec,
    pub(super) ringbuf_events: prometheus::IntCounter,
    pub(super) table_entries: IntGauge,
    pub(super) table_capacity: IntGauge,
    pub(super) table_fill: Gauge,
    pub(super) full_drains: prometheus::IntCounter,
    pub(super) pending: IntGauge,
    pub(super) drains: IntCounterVec,
    pub(super) send_wait_seconds: FloatCounter,
    pub(super) drain_seconds: Histogram,
    pub(super) drain_errors: prometheus::IntCounter,
    pub(super) table_read_fallbacks: prometheus::IntCounter,
    pub(super) attach_events: IntCounterVec,
    pub(super) attached: IntGaugeVec,
    pub(super) ringbuf_malformed: prometheus::IntCounter,
    last: std::sync::Arc<std::sync::Mutex<[u64; flowaudit_common::COUNTER_SLOTS as usize]>>,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

impl CaptureMetrics {
    /// Registers the families on `registry`.
    pub fn new(registry: &Registry) -> Self {
        let kernel = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "flowaudit_kernel_events_total",
                    "Per-hook kernel counters of packets that did not reach the flow table: sent to \
                     the ring buffer (table_full_packets), lost (lost_packets, lost_bytes), not IP, malformed.",
                ),
                &["hook", "counter"],
            )
            .expect("valid"),
        );
        for obs in ObsPoint::ALL {
            for counter in Counter::ALL {
                kernel.with_label_values(&[obs.name(), counter.name()]);
            }
        }
        let this = Self {
            kernel,
            flow_entries: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "flowaudit_flow_entries_total",
                        "Flow-table entries drained (one per flow direction, hook and interface per interval).",
                    ),
                    &["hook"],
                )
                .expect("valid"),
            ),
            packets: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "flowaudit_packets_total",
                        "Wire packets counted into flows (table and ring buffer), per hook.",
                    ),
                    &["hook"],
                )
                .expect("valid"),
            ),
            bytes: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "flowaudit_bytes_total",
                        "IP-layer bytes counted into flows (table and ring buffer), per hook.",
                    ),
                    &["hook"],
                )
                .expect("valid"),
            ),
            ringbuf_events: reg(
                registry,
                prometheus::IntCounter::new(
                    "flowaudit_ringbuf_events_total",
                    "Packets read from the ring buffer (the flow table was full).",
                )
                .expect("valid"),
            ),
            ringbuf_malformed: reg(
                registry,
                prometheus::IntCounter::new(
                    "flowaudit_ringbuf_malformed_total",
                    "Ring-buffer records of the wrong size (never expected).",
                )
                .expect("valid"),
            ),
            table_entries: reg(
                registry,
                IntGauge::new("flowaudit_flow_table_entries", "Entries in the flow table at the last drain.")
                    .expect("valid"),
            ),
            table_capacity: reg(
                registry,
                IntGauge::new("flowaudit_flow_table_capacity", "Capacity of each flow table.").expect("valid"),
            ),
            table_fill: reg(
                registry,
                Gauge::new(
                    "flowaudit_flow_table_fill_ratio",
                    "Entries of the flow table at the last drain over its capacity (1: full, new flows \
                     went to the ring buffer).",
                )
                .expect("valid"),
            ),
            full_drains: reg(
                registry,
                prometheus::IntCounter::new(
                    "flowaudit_flow_table_full_drains_total",
                    "Drains that found the flow table full (raise flow_table_entries if this grows).",
                )
                .expect("valid"),
            ),
            pending: reg(
                registry,
                IntGauge::new(
                    "flowaudit_ringbuf_pending_flows",
                    "Flows merged from the ring buffer and waiting for the next drain (at most \
                     flow_table_entries; reaching it ends the interval early).",
                )
                .expect("valid"),
            ),
            drains: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "flowaudit_drains_total",
                        "Drains of the kernel flow table, by reason: interval, request (before a \
                         cluster-state change), pending_full (the flows from the ring buffer reached \
                         flow_table_entries), shutdown.",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            send_wait_seconds: reg(
                registry,
                FloatCounter::new(
                    "flowaudit_capture_blocked_seconds_total",
                    "Seconds capture waited for the pipeline to take a drained batch; the ring \
                     buffer is not read meanwhile, so packets of new flows may be counted as lost.",
                )
                .expect("valid"),
            ),
            drain_seconds: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "flowaudit_drain_duration_seconds",
                        "Time to swap and read the kernel flow table.",
                    )
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                )
                .expect("valid"),
            ),
            drain_errors: reg(
                registry,
                prometheus::IntCounter::new(
                    "flowaudit_drain_errors_total",
                    "Drains that failed (the counts stay in the kernel table for the next one).",
                )
                .expect("valid"),
            ),
            table_read_fallbacks: reg(
                registry,
                prometheus::IntCounter::new(
                    "flowaudit_flow_table_read_fallbacks_total",
                    "Drains whose batched read of the flow table failed (the kernel refused \
                     BPF_MAP_LOOKUP_AND_DELETE_BATCH, or a batch failed midway): the rest was read \
                     entry by entry, every entry still counted, and a fresh table is created for \
                     the next drain instead of the emptied one being reused.",
                )
                .expect("valid"),
            ),
            attach_events: reg(
                registry,
                IntCounterVec::new(
                    Opts::new("flowaudit_attach_events_total", "Program attach and detach events."),
                    &["hook", "event"],
                )
                .expect("valid"),
            ),
            attached: reg(
                registry,
                IntGaugeVec::new(Opts::new("flowaudit_attached_programs", "Programs attached now."), &["hook"])
                    .expect("valid"),
            ),
            last: Default::default(),
        };
        for reason in super::DrainReason::ALL {
            this.drains.with_label_values(&[reason.name()]);
        }
        for obs in ObsPoint::ALL {
            this.packets.with_label_values(&[obs.name()]);
            this.bytes.with_label_values(&[obs.name()]);
            this.flow_entries.with_label_values(&[obs.name()]);
        }
        this
    }

    /// Advances the kernel counters to the summed per-CPU `values` (indexed like the map).
    pub(super) fn observe_kernel(&self, values: &[u64]) {
        let mut last = self.last.lock().expect("not poisoned");
        for obs in ObsPoint::ALL {
            for counter in Counter::ALL {
                let i = flowaudit_common::counter_index(obs, counter) as usize;
                let delta = values[i].saturating_sub(last[i]);
                last[i] = last[i].max(values[i]);
                if delta > 0 {
                    self.kernel.with_label_values(&[obs.name(), counter.name()]).inc_by(delta);
                }
            }
        }
    }
}
