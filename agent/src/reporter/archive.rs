//! reporter::archive: the report archive on disk, and what it remembers.
//!
//! Takes: the `--archive` directory. Gives: each finished report in
//! `<archive>/<report>/<start>_<end>/` (RFC 3339 basic times, [`Interval::dir_name`]) with a
//! completion marker `.complete`; each failed run as `<archive>/<report>/<start>_<end>.failed`
//! (its reason); `<archive>/<report>/status.json` (the GlobalReport status, in manifests mode);
//! `<archive>/<report>/.first-seen` (when the reporter first saw the report: no report covers
//! time before it).
//! Must never: leave a half-written report where a reader looks (reports are written to
//! `.tmp-<start>_<end>/` and renamed whole), or write outside the archive.

use std::{
    io,
    path::{Path, PathBuf},
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::scheduler::Interval;
use crate::report::resource::GlobalReportStatus;

/// The completion marker's name, inside a finished report's directory.
pub const COMPLETE: &str = ".complete";

/// The archive could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct ArchiveError {
    /// The file or directory.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError { path: path.to_owned(), source }
}

/// What `.complete` records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The report's name.
    pub report: String,
    /// Interval start.
    pub start: Timestamp,
    /// Interval end.
    pub end: Timestamp,
    /// When it was finished.
    pub completed: Timestamp,
    /// The files written (names in the directory).
    pub files: Vec<String>,
}

/// What `<start>_<end>.failed` records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// When the run failed.
    pub failed: Timestamp,
    /// Why.
    pub reason: String,
}

/// `status.json` in manifests mode: the GlobalReport status, and why the report is refused, if
/// it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileStatus {
    /// The status as the API would hold it.
    #[serde(flatten)]
    pub status: GlobalReportStatus,
    /// Why the report is not scheduled (a bad schedule or spec), if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// The archive directory.
#[derive(Clone, Debug)]
pub struct Archive {
    root: PathBuf,
}

impl Archive {
    /// The archive at `root` (created when first written).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `<archive>/<report>`.
    pub fn report_dir(&self, report: &str) -> PathBuf {
        self.root.join(report)
    }

    /// `<archive>/<report>/<start>_<end>`.
    pub fn interval_dir(&self, report: &str, interval: &Interval) -> PathBuf {
        self.report_dir(report).join(interval.dir_name())
    }

    fn failed_file(&self, report: &str, interval: &Interval) -> PathBuf {
        self.report_dir(report).join(format!("{}.failed", interval.dir_name()))
    }

    /// Whether the interval's report was finished (its directory has the completion marker) or
    /// its run failed: either way it is not run again.
    pub fn is_done(&self, report: &str, interval: &Interval) -> bool {
        self.interval_dir(report, interval).join(COMPLETE).is_file() || self.failed_file(report, interval).is_file()
    }

    /// The finished intervals of `report`, oldest first.
    pub fn completed(&self, report: &str) -> Vec<Interval> {
        let mut out: Vec<Interval> = std::fs::read_dir(self.report_dir(report))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Interval::from_dir_name(&e.file_name().to_string_lossy()))
            .filter(|i| self.interval_dir(report, i).join(COMPLETE).is_file())
            .collect();
        out.sort();
        out
    }

    /// When the reporter first saw `report`: read from `.first-seen`, or `now`, written there.
    pub fn first_seen(&self, report: &str, now: Timestamp) -> Result<Timestamp, ArchiveError> {
        let dir = self.report_dir(report);
        let file = dir.join(".first-seen");
        if let Some(t) = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()) {
            return Ok(t);
        }
        std::fs::create_dir_all(&dir).map_err(at(&dir))?;
        write_atomic(&file, format!("{now}\n").as_bytes())?;
        Ok(now)
    }

    /// Removes what an interrupted run left (`.tmp-*` directories).
    pub fn clean(&self) {
        for report in std::fs::read_dir(&self.root).into_iter().flatten().flatten() {
            for entry in std::fs::read_dir(report.path()).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    /// Runs `write` into a fresh temporary directory, marks it complete and renames it to the
    /// interval's directory. On an error nothing is left behind.
    pub fn commit<E: From<ArchiveError>>(
        &self,
        report: &str,
        interval: &Interval,
        completed: Timestamp,
        write: impl FnOnce(&Path) -> Result<Vec<PathBuf>, E>,
    ) -> Result<PathBuf, E> {
        let dir = self.report_dir(report);
        let tmp = dir.join(format!(".tmp-{}", interval.dir_name()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(at(&tmp))?;
        let result = (|| {
            let files = write(&tmp)?;
            let marker = Completion {
                report: report.to_owned(),
                start: interval.start,
                end: interval.end,
                completed,
                files: files.iter().filter_map(|f| f.file_name()).map(|f| f.to_string_lossy().into_owned()).collect(),
            };
            let mut text = serde_json::to_vec_pretty(&marker).expect("a marker serializes");
            text.push(b'\n');
            let file = tmp.join(COMPLETE);
            std::fs::write(&file, text).map_err(at(&file))?;
            let done = self.interval_dir(report, interval);
            // A directory without the marker (copied in by hand, say) is replaced.
            let _ = std::fs::remove_dir_all(&done);
            std::fs::rename(&tmp, &done).map_err(at(&done))?;
            Ok(done)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Records a failed run (not retried; remove the file to retry it).
    pub fn record_failure(
        &self,
        report: &str,
        interval: &Interval,
        failed: Timestamp,
        reason: &str,
    ) -> Result<(), ArchiveError> {
        let dir = self.report_dir(report);
        std::fs::create_dir_all(&dir).map_err(at(&dir))?;
        let text = serde_json::to_vec_pretty(&Failure { failed, reason: reason.to_owned() }).expect("serializes");
        write_atomic(&self.failed_file(report, interval), &text)
    }

    /// `status.json` of `report` (default when missing or unreadable).
    pub fn load_status(&self, report: &str) -> FileStatus {
        std::fs::read(self.report_dir(report).join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes `status.json` of `report`.
    pub fn save_status(&self, report: &str, status: &FileStatus) -> Result<(), ArchiveError> {
        let dir = self.report_dir(report);
        std::fs::create_dir_all(&dir).map_err(at(&dir))?;
        let mut text = serde_json::to_vec_pretty(status).expect("a status serializes");
        text.push(b'\n');
        write_atomic(&dir.join("status.json"), &text)
    }
}

/// Writes `path` whole: a temporary file renamed over it.
fn write_atomic(path: &Path, content: &[u8]) -> Result<(), ArchiveError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).map_err(at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(at(path))
}
