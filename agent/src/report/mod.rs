//! report: compliance reports over files, on demand (`flowaudit report`).
//!
//! Takes: a report kind, an interval (`--from`, `--to`, RFC 3339) and the kind's inputs:
//! kube-bench JSON results ([`cis`]), audit logs of `audit.k8s.io/v1` Events
//! ([`policy_audit`]), optionally a manifests directory (read with [`crate::cluster::manifests`],
//! a lookup source) and a `GlobalReport` resource ([`NamedReport`], of the types in
//! [`resource`], the CRD's). Gives: the report's files in the output directory: Calico's CSV
//! files (`csv`), `report.json` in the shape of Calico's ReportData (`json`), `report.html`, one
//! self-contained page (`html`).
//! Must never: import a pipeline stage (capture, aggregate, enrich, attribute, rollup, output),
//! put a reference to anything outside the page into the HTML (no network fetches), write
//! outside its output directory, or work around bad input: it stops and names the file, the
//! field and the reason.
//!
//! The inventory report ([`inventory`]) reads the cluster state at the start of the interval
//! from a snapshot (or a manifests directory) replayed through the audit events ([`replay`]).
//! Schedules: [`crate::reporter`] (`flowaudit reporter`) runs these reports in-process on
//! GlobalReports' schedules.
//!
//! The network-access report ([`network_access`]) adds to the inventory's endpoints what their
//! policies exposed them to ([`exposure`]) and what their flow records ([`flows`]: flow-log
//! directories, or a store) showed. The reporter writes snapshots with
//! [`replay::Snapshot::write`] every `--snapshot-interval`.
//!
//! `--cluster kube` reads the API server's state now: cis-benchmark decides its checks from it;
//! the reports of an interval's endpoints refuse it (they need the state at the start: a
//! snapshot).

pub mod cis;
pub mod clickhouse;
pub mod exposure;
pub mod flows;
pub mod inventory;
pub mod network_access;
pub mod policy_audit;
pub mod replay;
pub mod resource;
#[cfg(test)]
mod tests;

use std::{
    fmt::Write as _,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;

pub use self::resource::{
    BenchmarkSelection, CisFilter, CisSpec, EndpointsSelection, GLOBAL_REPORT_API_VERSIONS, GlobalReportSpec,
    NamesAndLabelsMatch,
};
use crate::cluster::manifests::ManifestError;

/// A report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// An input file is missing, unreadable or wrong (exit code 2).
    #[error("{}: {field}: {reason}", file.display())]
    Input {
        /// The file (or directory).
        file: PathBuf,
        /// Where in it: `Controls[0].tests[1].results[2].status`, `line 7: stageTimestamp`, or `-`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A command-line value is wrong (exit code 2).
    #[error("{flag}: {reason}")]
    Flag {
        /// The flag: `--from`.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The manifests directory has problems, every one listed (exit code 2).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Manifests(Vec<ManifestError>),
    /// Asked for something this version does not do yet (exit code 1).
    #[error("{0}: not implemented yet")]
    NotImplemented(String),
    /// An output file could not be written (exit code 1).
    #[error("{}: {source}", path.display())]
    Output {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl ReportError {
    /// The process exit code: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Input { .. } | Self::Flag { .. } | Self::Manifests(_) => 2,
            Self::NotImplemented(_) | Self::Output { .. } => 1,
        }
    }

    fn input(file: &Path, field: impl Into<String>, reason: impl ToString) -> Self {
        Self::Input { file: file.to_owned(), field: field.into(), reason: reason.to_string() }
    }
}

/// The report kinds (`reportType` of a GlobalReport).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `network-access`.
    NetworkAccess,
    /// `inventory`.
    Inventory,
    /// `policy-audit`.
    PolicyAudit,
    /// `cis-benchmark`.
    CisBenchmark,
}

impl Kind {
    /// The name: `cis-benchmark`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkAccess => "network-access",
            Self::Inventory => "inventory",
            Self::PolicyAudit => "policy-audit",
            Self::CisBenchmark => "cis-benchmark",
        }
    }
}

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// The report's download files (CSV, and for policy-audit `events.json` and `events.yaml`).
    Csv,
    /// `report.json`: Calico's ReportData shape.
    Json,
    /// `report.html`: one self-contained page.
    Html,
}

/// `csv,json,html` (any subset, any order) → formats, sorted and without repeats.
pub fn parse_formats(text: &str) -> Result<Vec<Format>, ReportError> {
    let mut formats = Vec::new();
    for word in text.split(',').map(str::trim) {
        formats.push(match word {
            "csv" => Format::Csv,
            "json" => Format::Json,
            "html" => Format::Html,
            other => {
                return Err(ReportError::Flag {
                    flag: "--format",
                    reason: format!("{other:?} is not one of csv, json, html"),
                });
            }
        });
    }
    formats.sort_unstable();
    formats.dedup();
    Ok(formats)
}

/// The interval of a report, `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    /// Start (included).
    pub from: Timestamp,
    /// End (excluded).
    pub to: Timestamp,
}

impl TimeRange {
    /// Parses `--from` and `--to` (RFC 3339); `from` must be before `to`.
    pub fn parse(from: &str, to: &str) -> Result<Self, ReportError> {
        let parse = |flag: &'static str, text: &str| {
            parse_time(text).map_err(|reason| ReportError::Flag { flag, reason: format!("{text:?}: {reason}") })
        };
        let range = Self { from: parse("--from", from)?, to: parse("--to", to)? };
        if range.from >= range.to {
            return Err(ReportError::Flag { flag: "--to", reason: format!("{to} is not after --from {from}") });
        }
        Ok(range)
    }

    /// Whether `t` is in `[from, to)`.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.from <= t && t < self.to
    }
}

/// An RFC 3339 time (`2026-11-01T00:00:00Z`, `2026-11-01T01:00:00+01:00`).
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    if !text.contains('T') && !text.contains('t') {
        return Err("not an RFC 3339 time (2026-11-01T00:00:00Z)".into());
    }
    text.parse::<Timestamp>().map_err(|e| format!("not an RFC 3339 time (2026-11-01T00:00:00Z): {e}"))
}

/// A time as the reports write it: RFC 3339, UTC, fractions only when there are any.
pub fn format_time(t: Timestamp) -> String {
    t.to_string()
}

/// One CSV file: a header and rows of the same width.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// File name: `summary.csv`.
    pub name: &'static str,
    /// Column names, in order.
    pub header: &'static [&'static str],
    /// Rows.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table.
    pub fn new(name: &'static str, header: &'static [&'static str]) -> Self {
        Self { name, header, rows: Vec::new() }
    }

    /// Adds a row (as wide as the header).
    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.header.len(), "{}: row width", self.name);
        self.rows.push(row);
    }

    /// The CSV text (RFC 4180: quoted where a value needs it, `\n` line ends).
    pub fn to_csv(&self) -> Vec<u8> {
        let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
        w.write_record(self.header).expect("writing to memory");
        for row in &self.rows {
            w.write_record(row).expect("writing to memory");
        }
        w.into_inner().expect("writing to memory")
    }

    /// An HTML table (escaped), at most `limit` rows with a note of how many were left out.
    pub fn to_html(&self, limit: Option<usize>) -> String {
        let mut out = String::from("<table><thead><tr>");
        for h in self.header {
            let _ = write!(out, "<th>{}</th>", escape(h));
        }
        out.push_str("</tr></thead><tbody>");
        let shown = limit.unwrap_or(usize::MAX).min(self.rows.len());
        for row in &self.rows[..shown] {
            out.push_str("<tr>");
            for cell in row {
                let _ = write!(out, "<td>{}</td>", escape(cell));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
        if shown < self.rows.len() {
            let _ = write!(
                out,
                "<p class=\"note\">{} more rows in <code>{}</code>.</p>",
                self.rows.len() - shown,
                escape(self.name)
            );
        }
        out
    }
}

/// What a report writes, whatever its kind.
pub trait Rendered {
    /// The kind.
    fn kind(&self) -> Kind;
    /// The tables whose rows go to the exporters (`flowaudit reporter`, log type `reports`):
    /// every table of the report once (CIS: not `failed-tests.csv`, a subset of `all-tests.csv`).
    fn exported(&self) -> Vec<Table>;
    /// The `csv` format's files: name and content (by default the exported tables as CSV).
    fn download_files(&self) -> Vec<(String, Vec<u8>)> {
        self.exported().into_iter().map(|t| (t.name.to_owned(), t.to_csv())).collect()
    }
    /// `report.json`: Calico's ReportData shape.
    fn report_data(&self, generated: Timestamp) -> Value;
    /// `report.html`.
    fn html(&self, generated: Timestamp) -> String;
}

/// Writes `report`'s files in `formats` to `out` (created if needed); gives the paths written.
pub fn write(
    report: &dyn Rendered,
    out: &Path,
    formats: &[Format],
    generated: Timestamp,
) -> Result<Vec<PathBuf>, ReportError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ReportError::Output { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut files = Vec::new();
    for format in formats {
        match format {
            Format::Csv => files.extend(report.download_files()),
            Format::Json => {
                let mut text =
                    serde_json::to_vec_pretty(&report.report_data(generated)).expect("JSON values serialize");
                text.push(b'\n');
                files.push(("report.json".into(), text));
            }
            Format::Html => files.push(("report.html".into(), report.html(generated).into_bytes())),
        }
    }
    let mut written = Vec::new();
    for (name, content) in files {
        let path = out.join(&name);
        // Whole files only: a reader never sees half a report.
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &content).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// `&`, `<`, `>`, `"` and `'` escaped for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page every HTML report shares: inline CSS (screen and print), no external references.
pub fn html_page(title: &str, subtitle: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2433; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; }}
h1 {{ font-size: 1.6rem; margin: 0 0 .2rem; }}
h2 {{ font-size: 1.15rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #d0d5dd; padding-bottom: .2rem; }}
.subtitle {{ color: #5b6475; margin: 0 0 1.5rem; }}
table {{ border-collapse: collapse; width: 100%; margin: .4rem 0; font-size: 12.5px; }}
th, td {{ border: 1px solid #d0d5dd; padding: .25rem .45rem; text-align: left; vertical-align: top; }}
th {{ background: #eef1f5; }}
tbody tr:nth-child(even) {{ background: #f8f9fb; }}
td {{ white-space: pre-wrap; word-break: break-word; }}
.note {{ color: #5b6475; font-size: 12px; }}
.chart {{ max-width: 36rem; }}
.chart text {{ font: 12px system-ui, sans-serif; fill: #1d2433; }}
.band-HIGH {{ fill: #2e7d32; }} .band-MED {{ fill: #f9a825; }} .band-LOW {{ fill: #c62828; }}
footer {{ margin-top: 2rem; color: #5b6475; font-size: 12px; }}
@media print {{
  body {{ margin: 0; max-width: none; font-size: 10.5pt; color: #000; }}
  h2 {{ break-after: avoid; page-break-after: avoid; }}
  table {{ font-size: 8.5pt; }}
  thead {{ display: table-header-group; }}
  tr, .chart {{ break-inside: avoid; page-break-inside: avoid; }}
  tbody tr:nth-child(even) {{ background: none; }}
  th {{ background: #eee !important; -webkit-print-color-adjust: exact; print-color-adjust: exact; }}
  .chart rect {{ -webkit-print-color-adjust: exact; print-color-adjust: exact; }}
  @page {{ margin: 1.5cm; }}
}}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="subtitle">{subtitle}</p>
{body}
</body>
</html>
"#,
        title = escape(title),
        subtitle = escape(subtitle),
    )
}

/// A GlobalReport's name and spec, as a report uses them: read from a file
/// (`--global-report FILE:NAME`, [`NamedReport::load`]) or, for the reporter, from the API
/// ([`NamedReport::from_resource`]). The types are those of [`resource`], the CRD's.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedReport {
    /// `metadata.name`.
    pub name: String,
    /// The spec.
    pub spec: GlobalReportSpec,
    /// The spec as written (for `reportSpec` in `report.json`).
    pub raw_spec: Value,
}

impl NamedReport {
    /// Reads `--global-report FILE:NAME`: the GlobalReport named NAME in the YAML (or JSON) file
    /// FILE, which must be of report type `kind`.
    pub fn load(arg: &str, kind: Kind) -> Result<Self, ReportError> {
        let Some((file, name)) = arg.rsplit_once(':').filter(|(f, n)| !f.is_empty() && !n.is_empty()) else {
            return Err(ReportError::Flag { flag: "--global-report", reason: format!("{arg:?} is not FILE:NAME") });
        };
        let file = Path::new(file);
        let text = std::fs::read_to_string(file).map_err(|e| ReportError::input(file, "-", e))?;
        let mut found = None;
        for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let doc =
                Value::deserialize(document).map_err(|e| ReportError::input(file, format!("document {}", i + 1), e))?;
            let is_report = doc.get("kind").and_then(Value::as_str) == Some("GlobalReport")
                && doc
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .is_some_and(|v| GLOBAL_REPORT_API_VERSIONS.contains(&v));
            if is_report && doc.pointer("/metadata/name").and_then(Value::as_str) == Some(name) {
                found = Some((i + 1, doc));
                break;
            }
        }
        let Some((n, doc)) = found else {
            return Err(ReportError::input(
                file,
                "-",
                format!("no GlobalReport named {name:?} (apiVersion {})", GLOBAL_REPORT_API_VERSIONS.join(" or ")),
            ));
        };
        let field = |path: &str| format!("document {n}: spec{}{path}", if path.is_empty() { "" } else { "." });
        let raw_spec = doc.get("spec").cloned().unwrap_or(Value::Null);
        let spec: GlobalReportSpec = serde_path_to_error::deserialize(&raw_spec).map_err(|e| {
            let path = e.path().to_string();
            ReportError::input(file, field(if path == "." { "" } else { &path }), e.into_inner())
        })?;
        spec.check(kind).map_err(|(f, reason)| ReportError::input(file, field(f), reason))?;
        Ok(Self { name: name.to_owned(), spec, raw_spec })
    }

    /// A GlobalReport read from the API (the reporter's source), checked as [`NamedReport::load`]
    /// checks a file's; an error names the resource and the field.
    pub fn from_resource(report: &resource::GlobalReport, kind: Kind) -> Result<Self, ReportError> {
        let name = report.metadata.name.clone().unwrap_or_default();
        report.spec.check(kind).map_err(|(field, reason)| ReportError::Input {
            file: PathBuf::from(format!("globalreports.flowaudit.io/{name}")),
            field: format!("spec.{field}"),
            reason,
        })?;
        let raw_spec = serde_json::to_value(&report.spec).expect("a spec serializes");
        Ok(Self { name, spec: report.spec.clone(), raw_spec })
    }

    /// The seven selection and time columns every endpoint report's `summary.csv` starts with.
    pub fn selection_columns(report: Option<&NamedReport>, range: &TimeRange) -> Vec<String> {
        let sel = report.and_then(|r| r.spec.endpoints.clone()).unwrap_or_default();
        let names = |m: &Option<NamesAndLabelsMatch>| m.as_ref().map(|m| m.names.join(";")).unwrap_or_default();
        let selector =
            |m: &Option<NamesAndLabelsMatch>| m.as_ref().and_then(|m| m.selector.clone()).unwrap_or_default();
        vec![
            format_time(range.from),
            format_time(range.to),
            sel.selector.clone().unwrap_or_default(),
            names(&sel.namespaces),
            selector(&sel.namespaces),
            names(&sel.service_accounts),
            selector(&sel.service_accounts),
        ]
    }
}

impl GlobalReportSpec {
    /// What the CRD's schema cannot say (the 1.20 API server has no CEL rules) and what it says
    /// but a file is not checked against: the report type is `kind`, thresholds are 0-100 with
    /// high above med, `numFailedTests` above 0. An error gives the field under `spec` and why.
    pub fn check(&self, kind: Kind) -> Result<(), (&'static str, String)> {
        if self.report_type != kind.as_str() {
            return Err(("reportType", format!("is {:?}, the command is {}", self.report_type, kind.as_str())));
        }
        if let Some(cis) = &self.cis {
            for (f, v) in [("cis.highThreshold", cis.high_threshold), ("cis.medThreshold", cis.med_threshold)] {
                if let Some(v) = v.filter(|v| !(0..=100).contains(v)) {
                    return Err((f, format!("{v} is not between 0 and 100")));
                }
            }
            let (high, med) = (cis.high_threshold.unwrap_or(100), cis.med_threshold.unwrap_or(50));
            if high <= med {
                return Err(("cis.highThreshold", format!("{high} must be greater than medThreshold ({med})")));
            }
            if let Some(v) = cis.num_failed_tests.filter(|v| *v <= 0) {
                return Err(("cis.numFailedTests", format!("{v} is not greater than 0")));
            }
        }
        Ok(())
    }
}

/// The seven selection and time columns of Calico's endpoint report summaries.
pub const SELECTION_COLUMNS: [&str; 7] = summary_columns!();

/// A `summary.csv` header: the seven selection and time columns, then the report's own.
macro_rules! summary_columns {
    ($($column:literal),* $(,)?) => {
        [
            "startTime",
            "endTime",
            "endpointSelector",
            "namespaceNames",
            "namespaceSelector",
            "serviceAccountNames",
            "serviceAccountSelectors",
            $($column),*
        ]
    };
}
use summary_columns;

/// Progress of a long read on stderr, only when stderr is a terminal (a pipe or a log file sees
/// nothing): `reading audit.log: 120000 lines`, rewritten in place at most 5 times a second.
pub struct Progress {
    label: String,
    enabled: bool,
    last: Instant,
    shown: bool,
}

impl Progress {
    /// Progress of `label`.
    pub fn new(label: impl Into<String>) -> Self {
        Self { label: label.into(), enabled: std::io::stderr().is_terminal(), last: Instant::now(), shown: false }
    }

    /// `count` `unit` done so far.
    pub fn tick(&mut self, count: u64, unit: &str) {
        if self.enabled && self.last.elapsed() >= Duration::from_millis(200) {
            self.last = Instant::now();
            self.shown = true;
            eprint!("\r\x1b[2K{}: {count} {unit}", self.label);
        }
    }

    /// Clears the line, if anything was shown.
    pub fn finish(self) {
        if self.shown {
            eprint!("\r\x1b[2K");
        }
    }
}

/// Compares dotted document indexes the way a reader does: `1.2.10` after `1.2.9`, numbers
/// before words, then by text.
pub fn doc_index_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    (Ok(_), Err(_)) => std::cmp::Ordering::Less,
                    (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
                    (Err(_), Err(_)) => p.cmp(q),
                };
                if o.is_ne() {
                    return o;
                }
            }
        }
    }
}

/// What `flowaudit report` was asked.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The kind: `cis-benchmark`.
    pub kind: Option<Kind>,
    /// `--from`.
    pub from: String,
    /// `--to`.
    pub to: String,
    /// `--out`.
    pub out: PathBuf,
    /// `--format` (`csv` when empty).
    pub format: String,
    /// `--cluster DIR|kube`.
    pub cluster: Option<String>,
    /// `--flow-log-dir` (repeatable).
    pub flow_log_dirs: Vec<PathBuf>,
    /// `--audit-log` (repeatable).
    pub audit_logs: Vec<PathBuf>,
    /// `--kube-bench` (repeatable).
    pub kube_bench: Vec<PathBuf>,
    /// `--global-report FILE:NAME`.
    pub global_report: Option<String>,
    /// `--store`.
    pub store: Option<String>,
    /// `--snapshot-dir`: a directory of snapshots (inventory).
    pub snapshot_dir: Option<PathBuf>,
    /// `--archive`: an archive whose `snapshots/` are read (inventory).
    pub archive: Option<PathBuf>,
}

/// Runs `flowaudit report`: reads the inputs, computes the report, writes its files (the paths
/// written are returned). Warnings go to stderr.
pub fn run(req: &Request) -> Result<Vec<PathBuf>, ReportError> {
    let kind = req.kind.ok_or(ReportError::Flag { flag: "report", reason: "no report kind".into() })?;
    if !matches!(kind, Kind::NetworkAccess | Kind::CisBenchmark) {
        for (flag, given) in [("--flow-log-dir", !req.flow_log_dirs.is_empty()), ("--store", req.store.is_some())] {
            if given {
                return Err(ReportError::Flag {
                    flag,
                    reason: format!(
                        "flows are read by the network-access and cis-benchmark reports, not {}",
                        kind.as_str()
                    ),
                });
            }
        }
    }
    let range = TimeRange::parse(&req.from, &req.to)?;
    let formats = parse_formats(if req.format.is_empty() { "csv" } else { &req.format })?;
    let report = req.global_report.as_deref().map(|arg| NamedReport::load(arg, kind)).transpose()?;
    let replays = matches!(kind, Kind::Inventory | Kind::NetworkAccess | Kind::PolicyAudit);
    if !replays && (req.snapshot_dir.is_some() || req.archive.is_some()) {
        return Err(ReportError::Flag {
            flag: "--snapshot-dir",
            reason: format!(
                "snapshots are read by the inventory, network-access and policy-audit reports, not {}",
                kind.as_str()
            ),
        });
    }
    let cluster = match req.cluster.as_deref() {
        None => None,
        Some("kube") if replays => {
            return Err(ReportError::Flag {
                flag: "--cluster",
                reason: format!(
                    "kube gives the state now, not at the start of the interval: the {} report reads \
                     snapshots (flowaudit snapshot --cluster kube --archive DIR, or the reporter's), \
                     give --archive or --snapshot-dir",
                    kind.as_str()
                ),
            });
        }
        Some("kube") => Some(replay::kube_state_blocking()?),
        Some(_) if replays => None,
        Some(dir) => Some(crate::cluster::manifests::load_dir(Path::new(dir)).map_err(ReportError::Manifests)?.state),
    };
    let generated = Timestamp::now();
    match kind {
        Kind::CisBenchmark => {
            if !req.audit_logs.is_empty() {
                return Err(ReportError::Flag {
                    flag: "--audit-log",
                    reason: "is not read by the cis-benchmark report".into(),
                });
            }
            if req.kube_bench.is_empty() {
                return Err(ReportError::Flag {
                    flag: "--kube-bench",
                    reason: "is needed by the cis-benchmark report".into(),
                });
            }
            let flows = match (&req.store, req.flow_log_dirs.is_empty()) {
                (None, true) => None,
                _ => Some(flow_source(req.store.as_deref(), &req.flow_log_dirs)?),
            };
            let cis = cis::build(&cis::Input {
                range,
                kube_bench: req.kube_bench.clone(),
                report,
                cluster: cluster.as_ref(),
                cluster_dir: req.cluster.as_ref().map(PathBuf::from),
                flows: flows.as_deref(),
            })?;
            for w in &cis.warnings {
                eprintln!("warning: {w}");
            }
            write(&cis, &req.out, &formats, generated)
        }
        Kind::PolicyAudit => {
            if !req.kube_bench.is_empty() {
                return Err(ReportError::Flag {
                    flag: "--kube-bench",
                    reason: "is not read by the policy-audit report".into(),
                });
            }
            if req.audit_logs.is_empty() {
                return Err(ReportError::Flag {
                    flag: "--audit-log",
                    reason: "is needed by the policy-audit report".into(),
                });
            }
            let timeline = match &report {
                Some(r) if policy_audit::needs_state(Some(r)) => {
                    let needed_by = format!(
                        "the policy-audit report of GlobalReport {} (its spec.endpoints selects endpoints)",
                        r.name
                    );
                    Some(replay::load(&replay_start(req, &needed_by)?, &req.audit_logs, range)?)
                }
                _ => {
                    if req.snapshot_dir.is_some() || req.archive.is_some() || req.cluster.is_some() {
                        eprintln!(
                            "warning: --snapshot-dir, --archive and --cluster are not read: the policy-audit report \
                             reads the cluster state only for a GlobalReport whose spec.endpoints selects endpoints"
                        );
                    }
                    None
                }
            };
            let audit = policy_audit::build(range, &req.audit_logs, report, timeline.as_ref())?;
            for w in &audit.warnings {
                eprintln!("warning: {w}");
            }
            write(&audit, &req.out, &formats, generated)
        }
        Kind::Inventory | Kind::NetworkAccess => {
            if !req.kube_bench.is_empty() {
                return Err(ReportError::Flag {
                    flag: "--kube-bench",
                    reason: format!("is not read by the {} report", kind.as_str()),
                });
            }
            let flows = if kind == Kind::NetworkAccess {
                Some(flow_source(req.store.as_deref(), &req.flow_log_dirs)?)
            } else {
                None
            };
            let start = replay_start(req, &format!("the {} report", kind.as_str()))?;
            let timeline = replay::load(&start, &req.audit_logs, range)?;
            let inventory = inventory::build(&timeline, report)?;
            for w in &inventory.warnings {
                eprintln!("warning: {w}");
            }
            match flows {
                None => write(&inventory, &req.out, &formats, generated),
                Some(flows) => {
                    let access = network_access::build(inventory, flows.as_ref())?;
                    write(&access, &req.out, &formats, generated)
                }
            }
        }
    }
}

/// Where the replay of `flowaudit report` starts: `--snapshot-dir` or `--archive`, else
/// `--cluster DIR`; neither is an error naming the flag and who (`needed_by`) needs it.
fn replay_start(req: &Request, needed_by: &str) -> Result<replay::Start, ReportError> {
    let snapshots = req.snapshot_dir.clone().or_else(|| req.archive.as_ref().map(|a| a.join(replay::SNAPSHOTS_DIR)));
    match (snapshots, req.cluster.as_deref()) {
        (Some(dir), cluster) => {
            if cluster.is_some() {
                eprintln!("warning: --cluster is not read: the state at the start comes from the snapshots");
            }
            Ok(replay::Start::Snapshots(dir))
        }
        (None, Some(dir)) => Ok(replay::Start::Manifests(PathBuf::from(dir))),
        (None, None) => Err(ReportError::Flag {
            flag: "--snapshot-dir",
            reason: format!("{needed_by} needs --snapshot-dir, --archive or --cluster DIR"),
        }),
    }
}

/// The network-access report's flows: `--flow-log-dir DIR ...` or `--store URL`, one of them.
pub fn flow_source(store: Option<&str>, dirs: &[PathBuf]) -> Result<Box<dyn flows::FlowSource>, ReportError> {
    match (store, dirs.is_empty()) {
        (Some(_), false) => {
            Err(ReportError::Flag { flag: "--store", reason: "give either --store or --flow-log-dir, not both".into() })
        }
        (Some(store), true) => flows::open_store(store),
        (None, false) => Ok(Box::new(flows::FlowLogDirs(dirs.to_vec()))),
        (None, true) => Err(ReportError::Flag {
            flag: "--flow-log-dir",
            reason: "the network-access report needs --flow-log-dir DIR (one node's files) or --store URL".into(),
        }),
    }
}
