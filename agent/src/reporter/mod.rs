//! reporter: `flowaudit reporter`, the long-running scheduler of GlobalReports (issue 5 §4).
//!
//! Takes: GlobalReport resources from a manifests directory (`flowaudit.io/v1` and Calico's
//! `projectcalico.org/v3` documents, re-read every poll, at most 30 s apart) or from the API
//! (`--cluster kube`: a reflector on `globalreports.flowaudit.io`), and the reports' inputs from
//! flags. Gives: each due report's files in `<archive>/<report>/<start>_<end>/` ([`archive`]),
//! made in-process by [`crate::report`]; the runs in the resource's status (kube: the status
//! subresource; manifests: `<archive>/<report>/status.json`); metrics
//! `flowaudit_reports_total{report,result}`, `flowaudit_report_last_success_timestamp_seconds`,
//! `flowaudit_report_rejected`, and `/healthz`, `/metrics` ([`crate::telemetry`]); and, when
//! exporters are configured, every row of each finished report as a [`ReportRow`] to a
//! [`RowSink`] (the exporters, wired by [`crate::pipeline::report_exports`]), before the run is
//! committed: a report is archived only after its rows were handed over.
//! When: [`scheduler`] (cron in UTC, the delay, suspend, 7 days of catch-up, oldest first).
//! Must never: import a pipeline stage (it uses [`crate::report`] and [`crate::cluster`] only),
//! run an interval twice (the archive and the status remember), make a report whose input is
//! missing (a failed run naming the flag), or panic on a bad resource (it is refused, logged,
//! counted, and written to the status file).

pub mod archive;
pub mod scheduler;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Deserialize;
use serde_json::Value;

pub use self::{
    archive::{Archive, ArchiveError, FileStatus},
    scheduler::{Clock, Interval, Job, Schedule, ScheduleError, Scheduler, SystemClock, Timing},
};
use crate::model::ReportRow;
use crate::report::{
    self, Format, GLOBAL_REPORT_API_VERSIONS, GlobalReportSpec, Kind, NamedReport, Rendered, ReportError, Table,
    TimeRange,
    resource::{CompletedReportJob, GlobalReport, GlobalReportStatus, ReportJob},
};

/// How many successful and failed runs a status keeps (each list, newest last).
pub const STATUS_HISTORY: usize = 5;

/// The longest sleep between two polls.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// How long the exporters deliver at SIGTERM; the rest waits in their spools for the next start.
const EXPORT_GRACE: Duration = Duration::from_secs(5);

/// The reporter could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    /// A GlobalReport, a flag or a file is wrong (exit code 2).
    #[error("{}: {field}: {reason}", file.display())]
    Config {
        /// The file (or `globalreports.flowaudit.io/NAME`, or the flag).
        file: PathBuf,
        /// Where in it.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The archive cannot be written (exit code 1).
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The metrics address cannot be bound (exit code 1).
    #[error("--metrics-addr {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The Kubernetes API (exit code 1).
    #[error("{0}")]
    Kube(String),
    /// The process itself: the runtime, a signal handler, a task (exit code 1).
    #[error("{0}")]
    Runtime(String),
}

impl ReporterError {
    /// The process exit code: 2 for bad configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config { .. } => 2,
            Self::Archive(_) | Self::Bind { .. } | Self::Kube(_) | Self::Runtime(_) => 1,
        }
    }
}

/// Where the GlobalReports are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A manifests directory.
    Dir(PathBuf),
    /// The Kubernetes API.
    Kube,
}

/// What `flowaudit reporter` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--cluster DIR|kube`.
    pub source: Source,
    /// `--archive`.
    pub archive: PathBuf,
    /// `--delay`, `--catch-up`.
    pub timing: Timing,
    /// `--format`.
    pub formats: Vec<Format>,
    /// `--kube-bench` (cis-benchmark).
    pub kube_bench: Vec<PathBuf>,
    /// `--audit-log` (policy-audit).
    pub audit_logs: Vec<PathBuf>,
    /// `--flow-log-dir` (network-access).
    pub flow_log_dirs: Vec<PathBuf>,
    /// `--store` (network-access, instead of `--flow-log-dir`).
    pub store: Option<String>,
    /// `--metrics-addr`.
    pub metrics_addr: SocketAddr,
    /// `--snapshot-interval`: how often the cluster state is written to `<archive>/snapshots`
    /// (zero: never).
    pub snapshot_interval: SignedDuration,
}

/// One GlobalReport as read from its source.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// `metadata.name`.
    pub name: String,
    /// Where it came from: `dir/reports.yaml: document 2`, `globalreports.flowaudit.io/NAME`.
    pub origin: String,
    /// The spec.
    pub spec: GlobalReportSpec,
    /// The spec as written.
    pub raw_spec: Value,
    /// `metadata.creationTimestamp` (API only).
    pub created: Option<Timestamp>,
    /// The status the source holds (API only).
    pub status: Option<GlobalReportStatus>,
}

impl Entry {
    /// From the API.
    pub fn from_resource(report: &GlobalReport) -> Self {
        let name = report.metadata.name.clone().unwrap_or_default();
        Self {
            origin: format!("globalreports.flowaudit.io/{name}"),
            name,
            spec: report.spec.clone(),
            raw_spec: serde_json::to_value(&report.spec).expect("a spec serializes"),
            created: report.metadata.creation_timestamp.as_ref().map(|t| t.0),
            status: report.status.clone(),
        }
    }
}

fn config_error(file: &Path, field: impl Into<String>, reason: impl ToString) -> ReporterError {
    ReporterError::Config { file: file.to_owned(), field: field.into(), reason: reason.to_string() }
}

/// The GlobalReports in the manifests below `dir` (`*.yaml`, `*.yml`, `*.json`), sorted by
/// name. Every problem is returned, each naming the file, the document and the field.
pub fn read_dir(dir: &Path) -> Result<Vec<Entry>, Vec<ReporterError>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    let mut errors = Vec::new();
    while let Some(d) = stack.pop() {
        match std::fs::read_dir(&d) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json") {
                        files.push(path);
                    }
                }
            }
            Err(e) => errors.push(config_error(&d, "-", format!("cannot read: {e}"))),
        }
    }
    files.sort();
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(config_error(&file, "-", format!("cannot read: {e}")));
                continue;
            }
        };
        for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let at = format!("document {}", i + 1);
            let doc = match Value::deserialize(document) {
                Ok(d) => d,
                Err(e) => {
                    errors.push(config_error(&file, at, e));
                    break;
                }
            };
            let is_report = doc.get("kind").and_then(Value::as_str) == Some("GlobalReport")
                && doc
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .is_some_and(|v| GLOBAL_REPORT_API_VERSIONS.contains(&v));
            if !is_report {
                continue;
            }
            let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
            if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
                errors.push(config_error(&file, format!("{at}: metadata.name"), format!("{name:?} is not a name")));
                continue;
            }
            let raw_spec = doc.get("spec").cloned().unwrap_or(Value::Null);
            let spec: GlobalReportSpec = match serde_path_to_error::deserialize(&raw_spec) {
                Ok(s) => s,
                Err(e) => {
                    let path = e.path().to_string();
                    let field = if path == "." { "spec".to_owned() } else { format!("spec.{path}") };
                    errors.push(config_error(&file, format!("{at}: {field}"), e.into_inner()));
                    continue;
                }
            };
            let origin = format!("{}: {at}", file.display());
            if let Some(first) = out.get(&name) {
                errors.push(config_error(
                    &file,
                    format!("{at}: metadata.name"),
                    format!("{name:?} is also defined in {}", first.origin),
                ));
                continue;
            }
            out.insert(name.clone(), Entry { name, origin, spec, raw_spec, created: None, status: None });
        }
    }
    if errors.is_empty() { Ok(out.into_values().collect()) } else { Err(errors) }
}

/// The report kind named by `reportType`.
pub fn kind_of(report_type: &str) -> Option<Kind> {
    [Kind::NetworkAccess, Kind::Inventory, Kind::PolicyAudit, Kind::CisBenchmark]
        .into_iter()
        .find(|k| k.as_str() == report_type)
}

/// What an entry's spec means for the scheduler, or why it is refused.
fn accept(entry: &Entry) -> Result<Option<(Kind, Schedule)>, String> {
    let kind = kind_of(&entry.spec.report_type).ok_or_else(|| {
        format!(
            "spec.reportType: {:?} is not one of network-access, inventory, policy-audit, cis-benchmark",
            entry.spec.report_type
        )
    })?;
    entry.spec.check(kind).map_err(|(field, reason)| format!("spec.{field}: {reason}"))?;
    let Some(text) = entry.spec.schedule.as_deref() else { return Ok(None) };
    let schedule = Schedule::parse(text).map_err(|e| format!("spec.schedule: {e}"))?;
    Ok(Some((kind, schedule)))
}

/// What one report run made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Made {
    /// The files written.
    pub files: Vec<PathBuf>,
    /// The tables whose rows go to the exporters ([`Rendered::exported`]).
    pub exported: Vec<Table>,
}

impl Made {
    /// Writes `rendered` in `formats` to `out`.
    fn write(
        rendered: &dyn Rendered,
        out: &Path,
        formats: &[Format],
        generated: Timestamp,
    ) -> Result<Self, ReportError> {
        Ok(Self { files: report::write(rendered, out, formats, generated)?, exported: rendered.exported() })
    }

    /// The exported tables' rows, as the exporters get them.
    pub fn rows(&self, report: &str, kind: Kind, interval: Interval, generated: Timestamp) -> Vec<ReportRow> {
        let ms = |t: Timestamp| u64::try_from(t.as_millisecond()).unwrap_or(0);
        self.exported
            .iter()
            .flat_map(|table| {
                table.rows.iter().enumerate().map(move |(i, values)| ReportRow {
                    report: report.to_owned(),
                    report_type: kind.as_str(),
                    start_ms: ms(interval.start),
                    end_ms: ms(interval.end),
                    generated_ms: ms(generated),
                    file: table.name,
                    row: i as u64 + 1,
                    rows: table.rows.len() as u64,
                    columns: table.header,
                    values: values.clone(),
                })
            })
            .collect()
    }
}

/// Makes one report's files: the seam between the scheduler and [`crate::report`].
pub trait Runner: Send {
    /// Writes `report`'s files for `interval` into `out`; gives the paths written and the
    /// tables to export.
    fn run(
        &self,
        report: &NamedReport,
        kind: Kind,
        interval: Interval,
        out: &Path,
        generated: Timestamp,
    ) -> Result<Made, ReportError>;
}

/// Where the rows of a finished report go besides the archive: the exporters.
pub trait RowSink: Send {
    /// Hands over the rows of one report. Must not block on a network sink: a sink that cannot
    /// take them counts the loss.
    fn send(&mut self, rows: &[ReportRow]);

    /// Delivers what is queued for up to `grace`; the rest stays in the spools for the next start.
    fn close(self: Box<Self>, grace: Duration) -> futures::future::BoxFuture<'static, ()>;
}

/// The real reports, from the files named by the flags.
#[derive(Clone, Debug)]
pub struct FileRunner {
    /// `--format`.
    pub formats: Vec<Format>,
    /// `--kube-bench`.
    pub kube_bench: Vec<PathBuf>,
    /// `--audit-log`.
    pub audit_logs: Vec<PathBuf>,
    /// The manifests directory (cis-benchmark decides check 5.3.2 from it), in manifests mode.
    pub cluster_dir: Option<PathBuf>,
    /// Snapshots of the cluster state (`<archive>/snapshots`), read by the inventory and
    /// network-access reports, and by policy-audit with a restrictive `spec.endpoints`.
    pub snapshots: Option<PathBuf>,
    /// `--flow-log-dir` (network-access).
    pub flow_log_dirs: Vec<PathBuf>,
    /// `--store` (network-access).
    pub store: Option<String>,
}

impl Runner for FileRunner {
    fn run(
        &self,
        report: &NamedReport,
        kind: Kind,
        interval: Interval,
        out: &Path,
        generated: Timestamp,
    ) -> Result<Made, ReportError> {
        let range = TimeRange { from: interval.start, to: interval.end };
        match kind {
            Kind::CisBenchmark => {
                if self.kube_bench.is_empty() {
                    return Err(ReportError::Flag {
                        flag: "--kube-bench",
                        reason: "is needed by the cis-benchmark report".into(),
                    });
                }
                // The manifests directory, else (kube mode) the newest snapshot before the end.
                let (cluster_dir, cluster) = match (&self.cluster_dir, &self.snapshots) {
                    (Some(dir), _) => (
                        Some(dir.clone()),
                        Some(crate::cluster::manifests::load_dir(dir).map_err(ReportError::Manifests)?.state),
                    ),
                    (None, Some(dir)) if dir.is_dir() => match report::replay::snapshot_state(dir, interval.end)? {
                        Some((file, state)) => (Some(file), Some(state)),
                        None => (None, None),
                    },
                    (None, _) => (None, None),
                };
                let flows = match (&self.store, self.flow_log_dirs.is_empty()) {
                    (None, true) => None,
                    _ => Some(report::flow_source(self.store.as_deref(), &self.flow_log_dirs)?),
                };
                let cis = report::cis::build(&report::cis::Input {
                    range,
                    kube_bench: self.kube_bench.clone(),
                    report: Some(report.clone()),
                    cluster: cluster.as_ref(),
                    cluster_dir,
                    flows: flows.as_deref(),
                })?;
                for w in &cis.warnings {
                    tracing::warn!(message = "Report warning.", report = %report.name, warning = %w);
                }
                Made::write(&cis, out, &self.formats, generated)
            }
            Kind::PolicyAudit => {
                if self.audit_logs.is_empty() {
                    return Err(ReportError::Flag {
                        flag: "--audit-log",
                        reason: "is needed by the policy-audit report".into(),
                    });
                }
                let timeline = if report::policy_audit::needs_state(Some(report)) {
                    Some(report::replay::load(&self.replay_start(kind, interval)?, &self.audit_logs, range)?)
                } else {
                    None
                };
                let audit =
                    report::policy_audit::build(range, &self.audit_logs, Some(report.clone()), timeline.as_ref())?;
                for w in &audit.warnings {
                    tracing::warn!(message = "Report warning.", report = %report.name, warning = %w);
                }
                Made::write(&audit, out, &self.formats, generated)
            }
            Kind::Inventory | Kind::NetworkAccess => {
                let flows = if kind == Kind::NetworkAccess {
                    Some(report::flow_source(self.store.as_deref(), &self.flow_log_dirs)?)
                } else {
                    None
                };
                let timeline = report::replay::load(&self.replay_start(kind, interval)?, &self.audit_logs, range)?;
                let inventory = report::inventory::build(&timeline, Some(report.clone()))?;
                for w in &inventory.warnings {
                    tracing::warn!(message = "Report warning.", report = %report.name, warning = %w);
                }
                match flows {
                    None => Made::write(&inventory, out, &self.formats, generated),
                    Some(flows) => {
                        let access = report::network_access::build(inventory, flows.as_ref())?;
                        Made::write(&access, out, &self.formats, generated)
                    }
                }
            }
        }
    }
}

impl FileRunner {
    /// The state at the start of `interval`: the newest snapshot before it, else (manifests mode)
    /// the manifests directory; neither is an error naming `--archive`.
    fn replay_start(&self, kind: Kind, interval: Interval) -> Result<report::replay::Start, ReportError> {
        let has_snapshot = |dir: &PathBuf| matches!(report::replay::newest_snapshot(dir, interval.start), Ok(Some(_)));
        match (&self.snapshots, &self.cluster_dir) {
            (Some(dir), _) if has_snapshot(dir) => Ok(report::replay::Start::Snapshots(dir.clone())),
            (_, Some(dir)) => Ok(report::replay::Start::Manifests(dir.clone())),
            _ => Err(ReportError::Flag {
                flag: "--archive",
                reason: format!(
                    "the {} report needs a snapshot from before the interval in <archive>/snapshots (written every \
                     --snapshot-interval, or by flowaudit snapshot)",
                    kind.as_str()
                ),
            }),
        }
    }
}

/// The reporter's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// `flowaudit_reports_total{report,result}`: runs by result (`success`, `failure`).
    pub reports: IntCounterVec,
    /// `flowaudit_report_last_success_timestamp_seconds{report}`.
    pub last_success: GaugeVec,
    /// `flowaudit_report_rejected{report}`: 1 while the report's spec or schedule is refused.
    pub rejected: IntGaugeVec,
    /// `flowaudit_report_rows_exported_total{report}`: rows handed to the exporters.
    pub rows: IntCounterVec,
}

impl Metrics {
    /// Registers the families on `registry`.
    pub fn new(registry: &Registry) -> Self {
        let reports = IntCounterVec::new(
            Opts::new("flowaudit_reports_total", "Scheduled report runs, by report and result (success, failure)."),
            &["report", "result"],
        )
        .expect("valid metric");
        let last_success = GaugeVec::new(
            Opts::new(
                "flowaudit_report_last_success_timestamp_seconds",
                "When the report last finished successfully (Unix seconds).",
            ),
            &["report"],
        )
        .expect("valid metric");
        let rejected = IntGaugeVec::new(
            Opts::new("flowaudit_report_rejected", "1 while the GlobalReport's spec or schedule is refused."),
            &["report"],
        )
        .expect("valid metric");
        let rows = IntCounterVec::new(
            Opts::new(
                "flowaudit_report_rows_exported_total",
                "Rows of finished reports handed to the exporters (their own metrics count what they drop).",
            ),
            &["report"],
        )
        .expect("valid metric");
        for c in [
            Box::new(reports.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(last_success.clone()),
            Box::new(rejected.clone()),
            Box::new(rows.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        Self { reports, last_success, rejected, rows }
    }
}

/// What one run gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The report.
    pub report: String,
    /// The interval.
    pub interval: Interval,
    /// The archive directory, or why it failed.
    pub result: Result<PathBuf, String>,
}

/// Where status changes go: the API (kube) or `status.json` (manifests).
pub trait StatusSink {
    /// `report`'s status is now `status` (with the reason it is refused, if it is).
    fn save(&mut self, report: &Entry, status: &GlobalReportStatus, rejected: Option<&str>);
}

/// `status.json` in the archive.
pub struct FileStatusSink(pub Archive);

impl StatusSink for FileStatusSink {
    fn save(&mut self, report: &Entry, status: &GlobalReportStatus, rejected: Option<&str>) {
        let file = FileStatus { status: status.clone(), rejected: rejected.map(str::to_owned) };
        if let Err(error) = self.0.save_status(&report.name, &file) {
            tracing::error!(message = "Cannot write the report status.", report = %report.name, %error);
        }
    }
}

/// The reporter's state between polls: the statuses it wrote, the refusals it logged.
pub struct Reporter<C: Clock, R: Runner> {
    scheduler: Scheduler<C>,
    archive: Archive,
    runner: R,
    metrics: Metrics,
    statuses: BTreeMap<String, GlobalReportStatus>,
    rejected: BTreeMap<String, String>,
    unscheduled: BTreeSet<String>,
    stop: Arc<AtomicBool>,
    rows: Option<Box<dyn RowSink>>,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

impl<C: Clock, R: Runner> Reporter<C, R> {
    /// A reporter writing to `archive`. Removes what an interrupted run left there.
    pub fn new(scheduler: Scheduler<C>, archive: Archive, runner: R, metrics: Metrics) -> Self {
        archive.clean();
        Self {
            scheduler,
            archive,
            runner,
            metrics,
            statuses: BTreeMap::new(),
            rejected: BTreeMap::new(),
            unscheduled: BTreeSet::new(),
            stop: Arc::new(AtomicBool::new(false)),
            rows: None,
        }
    }

    /// Sends the rows of every finished report to `sink` (before the run is committed).
    pub fn with_rows(mut self, sink: Box<dyn RowSink>) -> Self {
        self.rows = Some(sink);
        self
    }

    /// Takes the row sink back (to close it).
    pub fn take_rows(&mut self) -> Option<Box<dyn RowSink>> {
        self.rows.take()
    }

    /// The flag that ends [`Reporter::step`] after the report running when it is set (SIGTERM).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The status the reporter holds for `report`.
    pub fn status(&self, report: &str) -> Option<&GlobalReportStatus> {
        self.statuses.get(report)
    }

    /// Runs every due report of `entries`, oldest interval first, one at a time, saving each
    /// status change to `sink`. Gives what was run.
    pub fn step(&mut self, entries: &[Entry], sink: &mut dyn StatusSink) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        let names: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        self.rejected.retain(|n, _| names.contains(n.as_str()));
        for entry in entries {
            if !self.statuses.contains_key(&entry.name) {
                let initial = match &entry.status {
                    Some(s) => s.clone(),
                    None => self.archive.load_status(&entry.name).status,
                };
                self.statuses.insert(entry.name.clone(), initial);
            }
            let (kind, schedule) = match accept(entry) {
                Ok(Some(k)) => {
                    if self.rejected.remove(&entry.name).is_some() {
                        tracing::info!(message = "GlobalReport accepted.", report = %entry.name);
                        self.metrics.rejected.with_label_values(&[&entry.name]).set(0);
                        sink.save(entry, &self.statuses[&entry.name], None);
                    }
                    k
                }
                Ok(None) => {
                    if self.unscheduled.insert(entry.name.clone()) {
                        tracing::info!(message = "GlobalReport has no schedule; not run.", report = %entry.name);
                    }
                    continue;
                }
                Err(reason) => {
                    if self.rejected.get(&entry.name) != Some(&reason) {
                        tracing::error!(message = "GlobalReport refused.", report = %entry.name, origin = %entry.origin, %reason);
                        self.metrics.rejected.with_label_values(&[&entry.name]).set(1);
                        sink.save(entry, &self.statuses[&entry.name], Some(&reason));
                        self.rejected.insert(entry.name.clone(), reason);
                    }
                    continue;
                }
            };
            self.unscheduled.remove(&entry.name);
            for result in ["success", "failure"] {
                // Present at 0 from the start, so a rate or an alert sees the series.
                let _ = self.metrics.reports.with_label_values(&[entry.name.as_str(), result]);
            }
            let now = self.scheduler.clock().now();
            // The earliest time the report is known to have existed: its creation (API), or when
            // the archive first saw it, whichever is earlier.
            let first_seen = match self.archive.first_seen(&entry.name, now) {
                Ok(t) => t,
                Err(error) => {
                    tracing::error!(message = "Cannot write the archive.", report = %entry.name, %error);
                    continue;
                }
            };
            let not_before = entry.created.map_or(first_seen, |c| c.min(first_seen));
            let job =
                Job { schedule: &schedule, suspended: entry.spec.suspend == Some(true), not_before: Some(not_before) };
            let status = &self.statuses[&entry.name];
            let listed: BTreeSet<(Timestamp, Timestamp)> = status
                .last_successful_report_jobs
                .iter()
                .chain(&status.last_failed_report_jobs)
                .map(|j| (j.start.0, j.end.0))
                .collect();
            let last_scheduled = status.last_scheduled_report_job.as_ref().map(|j| j.end.0);
            let due = self.scheduler.due(&job, |i| {
                listed.contains(&(i.start, i.end))
                    || last_scheduled.is_some_and(|e| i.end < e)
                    || self.archive.is_done(&entry.name, i)
            });
            for interval in due {
                if self.stop.load(Ordering::SeqCst) {
                    return outcomes;
                }
                outcomes.push(self.run_one(entry, kind, interval, sink));
            }
        }
        outcomes
    }

    fn run_one(&mut self, entry: &Entry, kind: Kind, interval: Interval, sink: &mut dyn StatusSink) -> Outcome {
        let scheduled = ReportJob { start: time(interval.start), end: time(interval.end), job: None };
        {
            let status = self.statuses.get_mut(&entry.name).expect("inserted");
            status.last_scheduled_report_job = Some(scheduled.clone());
            status.active_report_jobs = vec![scheduled];
        }
        sink.save(entry, &self.statuses[&entry.name], None);
        tracing::info!(message = "Report started.", report = %entry.name, start = %interval.start, end = %interval.end);
        let named =
            NamedReport { name: entry.name.clone(), spec: entry.spec.clone(), raw_spec: entry.raw_spec.clone() };
        let generated = self.scheduler.clock().now();
        let (runner, rows, metrics) = (&self.runner, &mut self.rows, &self.metrics);
        let result = self.archive.commit(&entry.name, &interval, generated, |out| {
            let made = runner.run(&named, kind, interval, out, generated).map_err(RunError::Report)?;
            if let Some(sink) = rows {
                let rows = made.rows(&entry.name, kind, interval, generated);
                sink.send(&rows);
                metrics.rows.with_label_values(&[&entry.name]).inc_by(rows.len() as u64);
            }
            Ok(made.files)
        });
        let finished = self.scheduler.clock().now();
        let result = result.map_err(|e: RunError| e.to_string());
        let completed = CompletedReportJob {
            start: time(interval.start),
            end: time(interval.end),
            job: None,
            job_completion_time: Some(time(finished)),
        };
        let status = self.statuses.get_mut(&entry.name).expect("inserted");
        status.active_report_jobs.clear();
        match &result {
            Ok(dir) => {
                tracing::info!(message = "Report written.", report = %entry.name, dir = %dir.display());
                push_trimmed(&mut status.last_successful_report_jobs, completed);
                self.metrics.reports.with_label_values(&[&entry.name, "success"]).inc();
                self.metrics.last_success.with_label_values(&[&entry.name]).set(finished.as_second() as f64);
            }
            Err(reason) => {
                tracing::error!(message = "Report failed.", report = %entry.name, start = %interval.start, end = %interval.end, %reason);
                push_trimmed(&mut status.last_failed_report_jobs, completed);
                self.metrics.reports.with_label_values(&[&entry.name, "failure"]).inc();
                if let Err(error) = self.archive.record_failure(&entry.name, &interval, finished, reason) {
                    tracing::error!(message = "Cannot record the failure in the archive.", %error);
                }
            }
        }
        sink.save(entry, &self.statuses[&entry.name], None);
        Outcome { report: entry.name.clone(), interval, result }
    }

    /// When the next report of `entries` becomes due.
    pub fn next_due(&self, entries: &[Entry]) -> Option<Timestamp> {
        entries
            .iter()
            .filter_map(|e| {
                let (_, schedule) = accept(e).ok().flatten()?;
                let job = Job { schedule: &schedule, suspended: e.spec.suspend == Some(true), not_before: None };
                self.scheduler.next_due(&job)
            })
            .min()
    }
}

fn push_trimmed(list: &mut Vec<CompletedReportJob>, job: CompletedReportJob) {
    list.push(job);
    let excess = list.len().saturating_sub(STATUS_HISTORY);
    list.drain(..excess);
}

/// A run failed: the report, or the archive.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Report(ReportError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// The status sink of kube mode: merge patches of the status subresource, from a blocking
/// thread.
struct KubeStatusSink {
    api: kube::Api<GlobalReport>,
    handle: tokio::runtime::Handle,
}

impl StatusSink for KubeStatusSink {
    fn save(&mut self, report: &Entry, status: &GlobalReportStatus, rejected: Option<&str>) {
        if rejected.is_some() {
            // The status has no field for it; the log and flowaudit_report_rejected say it.
            return;
        }
        // A merge patch leaves out what it does not name: an emptied list is sent as null.
        let mut value = serde_json::to_value(status).expect("a status serializes");
        if let Value::Object(fields) = &mut value {
            for key in
                ["lastSuccessfulReportJobs", "lastFailedReportJobs", "activeReportJobs", "lastScheduledReportJob"]
            {
                fields.entry(key).or_insert(Value::Null);
            }
        }
        let patch = kube::api::Patch::Merge(serde_json::json!({ "status": value }));
        let result = self.handle.block_on(self.api.patch_status(&report.name, &Default::default(), &patch));
        if let Err(error) = result {
            tracing::error!(message = "Cannot patch the GlobalReport status.", report = %report.name, %error);
        }
    }
}

/// Runs `flowaudit reporter` until SIGINT or SIGTERM.
pub async fn run(
    opts: Options,
    rows: impl FnOnce(&Registry) -> Result<Option<Box<dyn RowSink>>, ReporterError>,
) -> Result<(), ReporterError> {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry);
    let rows = rows(&registry)?;
    let listener = crate::telemetry::bind(opts.metrics_addr)
        .await
        .map_err(|source| ReporterError::Bind { addr: opts.metrics_addr, source })?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(crate::telemetry::serve(listener, registry, ready.clone(), shutdown_rx));

    let archive = Archive::new(&opts.archive);
    std::fs::create_dir_all(&opts.archive).map_err(|source| ArchiveError { path: opts.archive.clone(), source })?;
    let runner = FileRunner {
        formats: opts.formats.clone(),
        kube_bench: opts.kube_bench.clone(),
        audit_logs: opts.audit_logs.clone(),
        cluster_dir: match &opts.source {
            Source::Dir(d) => Some(d.clone()),
            Source::Kube => None,
        },
        snapshots: Some(opts.archive.join(report::replay::SNAPSHOTS_DIR)),
        flow_log_dirs: opts.flow_log_dirs.clone(),
        store: opts.store.clone(),
    };
    let scheduler = Scheduler::new(SystemClock, opts.timing);
    let mut reporter = Reporter::new(scheduler, archive.clone(), runner, metrics);
    if let Some(rows) = rows {
        reporter = reporter.with_rows(rows);
    }
    let mut reporter = Some(reporter);

    // The source.
    let mut entries = Vec::new();
    let mut store = None;
    let mut kube_api = None;
    match &opts.source {
        Source::Dir(dir) => {
            entries = read_dir(dir).map_err(|mut errors| {
                for e in &errors[1..] {
                    tracing::error!(message = "GlobalReport problem.", error = %e);
                }
                errors.swap_remove(0)
            })?;
            tracing::info!(message = "GlobalReports read.", dir = %dir.display(), count = entries.len());
        }
        Source::Kube => {
            use futures::StreamExt as _;
            use kube::runtime::{WatchStreamExt as _, reflector, watcher};
            let client = crate::cluster::kube::client().await.map_err(|e| ReporterError::Kube(e.to_string()))?;
            let api: kube::Api<GlobalReport> = kube::Api::all(client);
            let (reader, writer) = reflector::store();
            let stream = watcher(api.clone(), watcher::Config::default()).default_backoff().reflect(writer);
            tokio::spawn(stream.for_each(|event| async move {
                if let Err(error) = event {
                    tracing::warn!(message = "GlobalReport watch error; retrying.", %error);
                }
            }));
            tokio::time::timeout(Duration::from_secs(120), reader.wait_until_ready())
                .await
                .map_err(|_| ReporterError::Kube("globalreports.flowaudit.io not listed within 120 s".into()))?
                .map_err(|e| ReporterError::Kube(e.to_string()))?;
            store = Some(reader);
            kube_api = Some(api);
        }
    }
    ready.store(true, Ordering::SeqCst);

    // SIGINT or SIGTERM: the report running then is finished, the rest are left for the next start.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| ReporterError::Runtime(format!("SIGTERM handler: {e}")))?;
    let stop = reporter.as_ref().expect("made above").stop_flag();
    let (stopped_tx, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!(message = "Stopping after the running report.");
        stop.store(true, Ordering::SeqCst);
        let _ = stopped_tx.send(true);
    });
    loop {
        if *stopped.borrow() {
            break;
        }
        match (&opts.source, &store) {
            (Source::Dir(dir), _) => match read_dir(dir) {
                Ok(e) => entries = e,
                Err(errors) => {
                    for error in errors {
                        tracing::error!(message = "GlobalReport problem; keeping the previous reports.", %error);
                    }
                }
            },
            (Source::Kube, Some(reader)) => {
                entries = reader.state().iter().map(|r| Entry::from_resource(r)).collect();
                entries.sort_by(|a, b| a.name.cmp(&b.name));
            }
            (Source::Kube, None) => unreachable!("the store is made above"),
        }
        take_snapshot_if_due(&opts, Timestamp::now()).await;
        let mut sink: Box<dyn StatusSink + Send> = match &kube_api {
            Some(api) => Box::new(KubeStatusSink { api: api.clone(), handle: tokio::runtime::Handle::current() }),
            None => Box::new(FileStatusSink(archive.clone())),
        };
        let mut r = reporter.take().expect("the reporter is back after each step");
        let batch = entries.clone();
        let (r, wake) = tokio::task::spawn_blocking(move || {
            r.step(&batch, sink.as_mut());
            let wake = r.next_due(&batch);
            (r, wake)
        })
        .await
        .map_err(|e| ReporterError::Runtime(format!("the report task panicked: {e}")))?;
        reporter = Some(r);
        let sleep = wake
            .and_then(|w| Duration::try_from(w.duration_since(Timestamp::now())).ok())
            .map_or(MAX_SLEEP, |d| (d + Duration::from_millis(100)).min(MAX_SLEEP));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = stopped.changed() => break,
        }
    }
    tracing::info!(message = "Reporter stopping.");
    if let Some(rows) = reporter.as_mut().and_then(Reporter::take_rows) {
        rows.close(EXPORT_GRACE).await;
    }
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    Ok(())
}

/// Writes a snapshot of the cluster state to `<archive>/snapshots` when one is due (the
/// inventory report replays audit events from it). A failure is logged and retried at the next
/// step; it never stops the reporter.
async fn take_snapshot_if_due(opts: &Options, now: Timestamp) {
    if !report::replay::snapshot_due(&opts.archive.join(report::replay::SNAPSHOTS_DIR), now, opts.snapshot_interval) {
        return;
    }
    let written = match &opts.source {
        Source::Dir(dir) => report::replay::snapshot_manifests(dir, &opts.archive, now),
        Source::Kube => report::replay::snapshot_kube(&opts.archive).await,
    };
    match written {
        Ok(path) => tracing::info!(message = "Cluster state snapshot written.", path = %path.display()),
        Err(error) => tracing::error!(message = "Writing the cluster state snapshot failed.", %error),
    }
}

/// `30m`, `0s`, `7d` → a duration (`flag` named in the error).
pub fn parse_duration(flag: &str, text: &str) -> Result<SignedDuration, ReporterError> {
    let d =
        humantime::parse_duration(text).map_err(|e| config_error(Path::new(flag), "-", format!("{text:?}: {e}")))?;
    SignedDuration::try_from(d).map_err(|e| config_error(Path::new(flag), "-", format!("{text:?}: {e}")))
}

#[cfg(test)]
mod tests;
