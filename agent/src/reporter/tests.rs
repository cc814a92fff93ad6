//! The reporter's steps on a fake clock and a fake (or the real) runner, with a real archive.

use std::sync::{Arc, Mutex};

use jiff::SignedDuration;

use super::{scheduler::FakeClock, *};
use crate::report::replay::snapshot_due;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// Records each run; writes one file.
#[derive(Clone, Default)]
struct FakeRunner(Arc<Mutex<Vec<(String, Interval)>>>);

impl Runner for FakeRunner {
    fn run(
        &self,
        report: &NamedReport,
        kind: Kind,
        interval: Interval,
        out: &Path,
        _generated: Timestamp,
    ) -> Result<Made, ReportError> {
        if kind == Kind::NetworkAccess {
            return Err(ReportError::Flag { flag: "--flow-log-dir", reason: "missing".into() });
        }
        self.0.lock().unwrap().push((report.name.clone(), interval));
        let file = out.join("summary.csv");
        std::fs::write(&file, format!("{interval}\n")).unwrap();
        let mut table = Table::new("summary.csv", &["interval", "report"]);
        table.push(vec![interval.to_string(), report.name.clone()]);
        table.push(vec![interval.to_string(), "second".into()]);
        Ok(Made { files: vec![file], exported: vec![table] })
    }
}

/// Keeps the rows it gets.
#[derive(Clone, Default)]
struct MemoryRows(Arc<Mutex<Vec<ReportRow>>>);

impl RowSink for MemoryRows {
    fn send(&mut self, rows: &[ReportRow]) {
        self.0.lock().unwrap().extend_from_slice(rows);
    }

    fn close(self: Box<Self>, _grace: Duration) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

#[derive(Default)]
struct MemorySink(Vec<(String, GlobalReportStatus, Option<String>)>);

impl StatusSink for MemorySink {
    fn save(&mut self, report: &Entry, status: &GlobalReportStatus, rejected: Option<&str>) {
        self.0.push((report.name.clone(), status.clone(), rejected.map(str::to_owned)));
    }
}

fn entry(name: &str, report_type: &str, schedule: &str) -> Entry {
    let spec =
        GlobalReportSpec { report_type: report_type.into(), schedule: Some(schedule.into()), ..Default::default() };
    Entry {
        name: name.into(),
        origin: format!("test/{name}"),
        raw_spec: serde_json::to_value(&spec).unwrap(),
        spec,
        created: Some(t("2026-11-27T00:00:00Z")),
        status: None,
    }
}

fn reporter<'a>(
    clock: &'a FakeClock,
    archive: &Path,
    runner: FakeRunner,
    registry: &Registry,
) -> Reporter<&'a FakeClock, FakeRunner> {
    Reporter::new(Scheduler::new(clock, Timing::default()), Archive::new(archive), runner, Metrics::new(registry))
}

fn counter(registry: &Registry, report: &str, result: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "flowaudit_reports_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            let labels: Vec<(&str, &str)> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
            labels.contains(&("report", report)) && labels.contains(&("result", result))
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[test]
fn due_reports_are_archived_once_and_a_restart_does_not_rerun_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(t("2026-11-27T03:00:00Z"));
    let runner = FakeRunner::default();
    let entries = [entry("hourly", "cis-benchmark", "0 * * * *")];
    let registry = Registry::new();
    let mut r = reporter(&clock, dir.path(), runner.clone(), &registry);
    let mut sink = MemorySink::default();
    let outcomes = r.step(&entries, &mut sink);
    // 03:00: intervals ending 01:00 and 02:00 are due (00:00-01:00 due 01:30, 01:00-02:00 due 02:30).
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    let first = dir.path().join("hourly/20261127T000000Z_20261127T010000Z");
    assert_eq!(outcomes[0].result, Ok(first.clone()));
    assert!(first.join(".complete").is_file());
    assert_eq!(
        std::fs::read_to_string(first.join("summary.csv")).unwrap(),
        "2026-11-27T00:00:00Z..2026-11-27T01:00:00Z\n"
    );
    let marker: archive::Completion = serde_json::from_slice(&std::fs::read(first.join(".complete")).unwrap()).unwrap();
    assert_eq!(marker.files, ["summary.csv"]);
    assert_eq!(counter(&registry, "hourly", "success"), 2);
    // Status: each run scheduled, then recorded.
    let status = r.status("hourly").unwrap();
    assert_eq!(status.last_successful_report_jobs.len(), 2);
    assert_eq!(status.last_scheduled_report_job.as_ref().unwrap().end.0, t("2026-11-27T02:00:00Z"));
    assert!(status.active_report_jobs.is_empty());
    assert_eq!(sink.0.len(), 4);
    assert_eq!(sink.0[0].1.active_report_jobs.len(), 1, "the run is active while it runs");
    // Again at the same time: nothing.
    assert!(r.step(&entries, &mut sink).is_empty());

    // A restart (a new reporter, nothing in memory, no status from the source) at 04:30.
    clock.set(t("2026-11-27T04:30:00Z"));
    let registry = Registry::new();
    let mut r = reporter(&clock, dir.path(), runner.clone(), &registry);
    let outcomes = r.step(&entries, &mut MemorySink::default());
    assert_eq!(
        outcomes.iter().map(|o| o.interval.dir_name()).collect::<Vec<_>>(),
        ["20261127T020000Z_20261127T030000Z", "20261127T030000Z_20261127T040000Z"]
    );
    let made = runner.0.lock().unwrap().clone();
    assert_eq!(made.len(), 4, "every interval once: {made:?}");
    assert_eq!(Archive::new(dir.path()).completed("hourly").len(), 4);
}

#[test]
fn each_finished_report_sends_its_rows_once_and_a_failed_run_none() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(t("2026-11-27T02:00:00Z"));
    let entries = [entry("hourly", "cis-benchmark", "0 * * * *"), entry("access", "network-access", "0 * * * *")];
    let registry = Registry::new();
    let rows = MemoryRows::default();
    let mut r = reporter(&clock, dir.path(), FakeRunner::default(), &registry).with_rows(Box::new(rows.clone()));
    let outcomes = r.step(&entries, &mut MemorySink::default());
    assert_eq!(outcomes.iter().filter(|o| o.result.is_ok()).count(), 1, "{outcomes:?}");
    let got = rows.0.lock().unwrap().clone();
    let start = t("2026-11-27T00:00:00Z").as_millisecond() as u64;
    let end = t("2026-11-27T01:00:00Z").as_millisecond() as u64;
    let expected: Vec<ReportRow> = ["hourly", "second"]
        .iter()
        .enumerate()
        .map(|(i, name)| ReportRow {
            report: "hourly".into(),
            report_type: "cis-benchmark",
            start_ms: start,
            end_ms: end,
            generated_ms: t("2026-11-27T02:00:00Z").as_millisecond() as u64,
            file: "summary.csv",
            row: i as u64 + 1,
            rows: 2,
            columns: &["interval", "report"],
            values: vec!["2026-11-27T00:00:00Z..2026-11-27T01:00:00Z".into(), (*name).into()],
        })
        .collect();
    assert_eq!(got, expected, "the failed network-access run sends nothing");
    assert_eq!(got[1].id(), format!("hourly/{start}-{end}/summary.csv/2"));
    let exported: f64 = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "flowaudit_report_rows_exported_total")
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value())
        .sum();
    assert_eq!(exported, 2.0);
    assert!(r.step(&entries, &mut MemorySink::default()).is_empty());
    assert_eq!(rows.0.lock().unwrap().len(), 2, "nothing is sent twice");
}

#[test]
fn failed_runs_are_recorded_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(t("2026-11-27T01:30:00Z"));
    let entries = [entry("access", "network-access", "0 * * * *")];
    let registry = Registry::new();
    let mut r = reporter(&clock, dir.path(), FakeRunner::default(), &registry);
    let outcomes = r.step(&entries, &mut MemorySink::default());
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].result, Err("--flow-log-dir: missing".into()));
    assert_eq!(counter(&registry, "access", "failure"), 1);
    assert_eq!(r.status("access").unwrap().last_failed_report_jobs.len(), 1);
    assert!(!dir.path().join("access/20261127T000000Z_20261127T010000Z").exists(), "no fake report");
    assert!(dir.path().join("access/20261127T000000Z_20261127T010000Z.failed").is_file());
    let mut again = reporter(&clock, dir.path(), FakeRunner::default(), &Registry::new());
    assert!(again.step(&entries, &mut MemorySink::default()).is_empty(), "a failed run is not retried");
    // Nothing half-written is left.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("access"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".tmp-")), "{names:?}");
}

#[test]
fn a_too_frequent_schedule_is_refused_with_the_reason_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(t("2026-11-27T03:00:00Z"));
    let registry = Registry::new();
    let mut r = reporter(&clock, dir.path(), FakeRunner::default(), &registry);
    let mut sink = MemorySink::default();
    let entries = [entry("busy", "cis-benchmark", "*/4 * * * *"), entry("bad-type", "nope", "0 * * * *")];
    assert!(r.step(&entries, &mut sink).is_empty());
    assert_eq!(sink.0.len(), 2);
    assert_eq!(
        sink.0[0].2.as_deref(),
        Some(
            "spec.schedule: \"*/4 * * * *\" runs 15 times an hour: no more than 12 schedules are permitted per hour (av. /5mins)"
        )
    );
    assert!(sink.0[1].2.as_deref().unwrap().starts_with("spec.reportType: \"nope\" is not one of"));
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(text.contains("flowaudit_report_rejected{report=\"busy\"} 1"), "{text}");
    // Logged and saved once, not every poll.
    r.step(&entries, &mut sink);
    assert_eq!(sink.0.len(), 2);
    // Fixed: accepted again, the gauge goes to 0.
    let fixed = [entry("busy", "cis-benchmark", "*/5 * * * *")];
    r.step(&fixed, &mut sink);
    assert_eq!(sink.0[2].2, None);
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(text.contains("flowaudit_report_rejected{report=\"busy\"} 0"), "{text}");
}

#[test]
fn suspend_is_honoured_and_resume_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(t("2026-11-27T03:00:00Z"));
    let runner = FakeRunner::default();
    let mut r = reporter(&clock, dir.path(), runner.clone(), &Registry::new());
    let mut e = entry("hourly", "policy-audit", "0 * * * *");
    e.spec.suspend = Some(true);
    assert!(r.step(std::slice::from_ref(&e), &mut MemorySink::default()).is_empty());
    assert_eq!(r.next_due(std::slice::from_ref(&e)), None);
    clock.advance(SignedDuration::from_hours(2));
    e.spec.suspend = Some(false);
    let outcomes = r.step(std::slice::from_ref(&e), &mut MemorySink::default());
    assert_eq!(outcomes.len(), 4, "00-01 .. 03-04, missed while suspended: {outcomes:?}");
    assert_eq!(r.next_due(std::slice::from_ref(&e)), Some(t("2026-11-27T05:30:00Z")));
}

#[test]
fn a_report_read_from_a_directory_first_covers_the_time_it_was_first_seen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(t("2026-11-27T03:10:00Z"));
    let runner = FakeRunner::default();
    let mut e = entry("hourly", "cis-benchmark", "0 * * * *");
    e.created = None;
    let mut r = reporter(&clock, dir.path(), runner.clone(), &Registry::new());
    assert!(r.step(std::slice::from_ref(&e), &mut MemorySink::default()).is_empty(), "no week of the past");
    clock.set(t("2026-11-27T04:30:00Z"));
    // A restart in between changes nothing: the first sighting is in the archive.
    let mut r = reporter(&clock, dir.path(), runner.clone(), &Registry::new());
    let outcomes = r.step(std::slice::from_ref(&e), &mut MemorySink::default());
    assert_eq!(
        outcomes.iter().map(|o| o.interval.dir_name()).collect::<Vec<_>>(),
        ["20261127T030000Z_20261127T040000Z"]
    );
}

#[test]
fn the_status_history_keeps_the_last_five() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(t("2026-11-27T10:00:00Z"));
    let mut r = reporter(&clock, dir.path(), FakeRunner::default(), &Registry::new());
    let outcomes = r.step(&[entry("hourly", "cis-benchmark", "0 * * * *")], &mut MemorySink::default());
    assert_eq!(outcomes.len(), 9);
    let status = r.status("hourly").unwrap();
    assert_eq!(status.last_successful_report_jobs.len(), STATUS_HISTORY);
    assert_eq!(status.last_successful_report_jobs[4].end.0, t("2026-11-27T09:00:00Z"));
    // The file status sink writes what the API would hold.
    let mut sink = FileStatusSink(Archive::new(dir.path()));
    sink.save(&entry("hourly", "cis-benchmark", "0 * * * *"), status, None);
    let saved = Archive::new(dir.path()).load_status("hourly");
    assert_eq!(&saved.status, status);
    let json: Value = serde_json::from_slice(&std::fs::read(dir.path().join("hourly/status.json")).unwrap()).unwrap();
    assert_eq!(json["lastScheduledReportJob"]["end"], "2026-11-27T09:00:00Z");
}

#[test]
fn globalreports_are_read_from_a_manifests_directory_in_both_api_versions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reports.yaml"),
        "apiVersion: flowaudit.io/v1\nkind: GlobalReport\nmetadata: {name: a}\nspec: {reportType: cis-benchmark, schedule: 0 * * * *}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: GlobalReport\nmetadata: {name: b}\nspec: {reportType: policy-audit, schedule: 0 0 * * *}\n",
    )
    .unwrap();
    let entries = read_dir(dir.path()).unwrap();
    assert_eq!(entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(entries[1].spec.report_type, "policy-audit");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: flowaudit.io/v1\nkind: GlobalReport\nmetadata: {name: c}\nspec: {reportType: cis-benchmark, schedul: x}\n",
    )
    .unwrap();
    let errors = read_dir(dir.path()).unwrap_err();
    assert_eq!(errors.len(), 1);
    let text = errors[0].to_string();
    assert!(text.contains("bad.yaml: document 1: spec") && text.contains("schedul"), "{text}");
    assert_eq!(errors[0].exit_code(), 2);
}

#[test]
fn the_real_runner_makes_the_same_cis_files_as_the_report_command() {
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/testdata");
    let dir = tempfile::tempdir().unwrap();
    // kube-bench files modified an hour before the interval's end.
    let kb = dir.path().join("kube-bench");
    std::fs::create_dir(&kb).unwrap();
    for e in std::fs::read_dir(testdata.join("kube-bench")).unwrap() {
        let e = e.unwrap();
        let to = kb.join(e.file_name());
        std::fs::copy(e.path(), &to).unwrap();
        let when = std::time::UNIX_EPOCH + Duration::from_secs(t("2026-11-27T00:30:00Z").as_second() as u64);
        filetime::set_file_mtime(&to, filetime::FileTime::from_system_time(when)).unwrap();
    }
    let runner = FileRunner { kube_bench: vec![kb.clone()], ..file_runner() };
    let named = named("cis", "cis-benchmark");
    let interval = Interval { start: t("2026-11-27T00:00:00Z"), end: t("2026-11-27T01:00:00Z") };
    let request = report::Request { kube_bench: vec![kb], ..Default::default() };
    let files = same_files_as_the_report_command(&runner, &named, Kind::CisBenchmark, interval, dir.path(), request);
    assert!(!files.is_empty());
    // Network-access needs flows: without --flow-log-dir or --store it says so.
    let e = runner.run(&named, Kind::NetworkAccess, interval, &dir.path().join("ours"), Timestamp::now()).unwrap_err();
    assert!(e.to_string().starts_with("--flow-log-dir: the network-access report needs"), "{e}");
    // Inventory needs a state at the start: without snapshots or a manifests directory it says so.
    let e = runner.run(&named, Kind::Inventory, interval, &dir.path().join("ours"), Timestamp::now()).unwrap_err();
    assert!(e.to_string().contains("needs a snapshot from before the interval"), "{e}");
}

#[test]
fn durations_are_parsed_with_the_flag_named() {
    assert_eq!(parse_duration("--delay", "30m").unwrap(), SignedDuration::from_mins(30));
    assert_eq!(parse_duration("--delay", "0s").unwrap(), SignedDuration::ZERO);
    assert_eq!(parse_duration("--catch-up", "7d").unwrap(), SignedDuration::from_hours(168));
    let e = parse_duration("--delay", "soon").unwrap_err();
    assert!(e.to_string().starts_with("--delay: -: \"soon\""), "{e}");
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn a_stop_ends_the_step_before_the_next_report_and_the_rest_come_later() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(t("2026-11-27T05:00:00Z"));
    let entries = [entry("hourly", "cis-benchmark", "0 * * * *")];
    let mut r = reporter(&clock, dir.path(), FakeRunner::default(), &Registry::new());
    r.stop_flag().store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(r.step(&entries, &mut MemorySink::default()).is_empty());
    let mut again = reporter(&clock, dir.path(), FakeRunner::default(), &Registry::new());
    assert_eq!(again.step(&entries, &mut MemorySink::default()).len(), 4);
}

#[test]
fn the_real_runner_makes_the_same_inventory_as_the_report_command() {
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/testdata");
    let dir = tempfile::tempdir().unwrap();
    // Manifests mode without snapshots: the manifests directory is the state at the start.
    let runner = FileRunner {
        cluster_dir: Some(testdata.join("cluster")),
        snapshots: Some(dir.path().join("no-snapshots")),
        ..file_runner()
    };
    let named = named("inv", "inventory");
    let interval = Interval { start: t("2026-11-27T00:00:00Z"), end: t("2026-11-27T01:00:00Z") };
    let request =
        report::Request { cluster: Some(testdata.join("cluster").display().to_string()), ..Default::default() };
    let files = same_files_as_the_report_command(&runner, &named, Kind::Inventory, interval, dir.path(), request);
    assert_eq!(files.len(), 4, "summary, endpoints, namespaces, services: {files:?}");
}

#[test]
fn a_snapshot_is_due_when_none_is_newer_than_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let day = SignedDuration::from_hours(24);
    let now = t("2026-11-27T12:00:00Z");
    assert!(snapshot_due(dir.path(), now, day), "no snapshot yet");
    assert!(!snapshot_due(dir.path(), now, SignedDuration::ZERO), "0s turns snapshots off");
    std::fs::write(dir.path().join("20261127T000000Z.json"), "").unwrap();
    assert!(!snapshot_due(dir.path(), now, day), "12 h old");
    assert!(snapshot_due(dir.path(), t("2026-11-28T00:00:00Z"), day), "24 h old");
    std::fs::write(dir.path().join("not-a-snapshot.json"), "").unwrap();
    assert!(!snapshot_due(dir.path(), now, day), "other files are ignored");
}

#[test]
fn the_real_runner_makes_the_same_network_access_report_as_the_report_command() {
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/testdata/network-access");
    let dir = tempfile::tempdir().unwrap();
    let runner = FileRunner {
        audit_logs: vec![testdata.join("audit/audit.log")],
        snapshots: Some(testdata.join("snapshots")),
        flow_log_dirs: vec![testdata.join("flows")],
        ..file_runner()
    };
    let named = named("access", "network-access");
    let interval = Interval { start: t("2026-11-20T00:00:00Z"), end: t("2026-11-21T00:00:00Z") };
    let request = report::Request {
        audit_logs: vec![testdata.join("audit/audit.log")],
        snapshot_dir: Some(testdata.join("snapshots")),
        flow_log_dirs: vec![testdata.join("flows")],
        ..Default::default()
    };
    let files = same_files_as_the_report_command(&runner, &named, Kind::NetworkAccess, interval, dir.path(), request);
    assert_eq!(files.len(), 2, "summary and endpoints: {files:?}");
}

/// A policy-audit GlobalReport whose `spec.endpoints` selects endpoints: the runner replays the
/// newest snapshot before the interval as the inventory does, and writes what `flowaudit report
/// policy-audit --snapshot-dir` writes; without a state it fails naming `--archive`.
#[test]
fn the_real_runner_restricts_policy_audit_to_the_selected_endpoints_as_the_report_command() {
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/testdata");
    let fixture = testdata.join("policy-audit-endpoints");
    let logs = vec![fixture.join("audit/audit.log"), fixture.join("audit/kube-apiserver.log")];
    let dir = tempfile::tempdir().unwrap();
    let runner = FileRunner { audit_logs: logs.clone(), snapshots: Some(fixture.join("snapshots")), ..file_runner() };
    let global_report = format!("{}:web-policies", testdata.join("global-reports.yaml").display());
    let named = NamedReport::load(&global_report, Kind::PolicyAudit).unwrap();
    let interval = Interval { start: t("2026-11-20T00:00:00Z"), end: t("2026-11-21T00:00:00Z") };
    let request = report::Request {
        audit_logs: logs,
        snapshot_dir: Some(fixture.join("snapshots")),
        global_report: Some(global_report),
        ..Default::default()
    };
    let files = same_files_as_the_report_command(&runner, &named, Kind::PolicyAudit, interval, dir.path(), request);
    assert_eq!(
        std::fs::read_to_string(&files[0]).unwrap().lines().nth(1).unwrap(),
        "2026-11-20T00:00:00Z,2026-11-21T00:00:00Z,,web,,,,2,3,1"
    );
    let e = FileRunner { snapshots: None, ..runner }
        .run(&named, Kind::PolicyAudit, interval, &dir.path().join("none"), Timestamp::now())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--archive: the policy-audit report needs a snapshot from before the interval in <archive>/snapshots \
         (written every --snapshot-interval, or by flowaudit snapshot)"
    );
    assert_eq!(e.exit_code(), 2);
}

/// In kube mode (no manifests directory) cis-benchmark decides 5.3.2 from the newest snapshot
/// taken before the interval's end.
#[test]
fn cis_in_kube_mode_decides_from_the_newest_snapshot_before_the_end() {
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/testdata");
    let dir = tempfile::tempdir().unwrap();
    let runner = FileRunner {
        kube_bench: vec![testdata.join("kube-bench/master-1.json")],
        snapshots: Some(testdata.join("inventory/snapshots")),
        ..file_runner()
    };
    let named = named("cis", "cis-benchmark");
    let row = |end: &str| {
        let interval = Interval { start: t("2026-11-16T00:00:00Z"), end: t(end) };
        let out = dir.path().join(end);
        runner.run(&named, Kind::CisBenchmark, interval, &out, Timestamp::now()).unwrap();
        let text = std::fs::read_to_string(out.join("all-tests.csv")).unwrap();
        let at = text.find("master-1,5.3.2,")?;
        Some(text[at..].split("\nmaster-1,").next().unwrap().trim_end().to_owned())
    };
    // The snapshot of 2026-11-19 has legacy, shop and web; shop has db-ingress, web a global policy.
    let decided = row("2026-11-19T12:00:00Z").unwrap();
    assert!(
        decided.contains(",FAIL,") && decided.ends_with("Namespaces without a NetworkPolicy: legacy\",flowaudit"),
        "{decided}"
    );
    // Before any snapshot: undecided, and (unscored, includeUnscoredTests unset) not listed.
    assert_eq!(row("2026-11-17T12:00:00Z"), None);
}

/// A runner of CSV files with no inputs; tests set what they need.
fn file_runner() -> FileRunner {
    FileRunner {
        formats: vec![Format::Csv],
        kube_bench: vec![],
        audit_logs: vec![],
        cluster_dir: None,
        snapshots: None,
        flow_log_dirs: vec![],
        store: None,
    }
}

/// A GlobalReport named `name` of type `report_type`, with nothing else in its spec.
fn named(name: &str, report_type: &str) -> NamedReport {
    NamedReport {
        name: name.into(),
        spec: GlobalReportSpec { report_type: report_type.into(), ..Default::default() },
        raw_spec: serde_json::json!({"reportType": report_type}),
    }
}

/// Runs `runner` for `kind` over `interval` into `<dir>/ours`, and `flowaudit report` (`request`
/// with the kind, the interval and `<dir>/theirs` filled in); asserts that every file the runner
/// wrote is byte for byte the command's; gives the runner's files.
fn same_files_as_the_report_command(
    runner: &FileRunner,
    named: &NamedReport,
    kind: Kind,
    interval: Interval,
    dir: &Path,
    request: report::Request,
) -> Vec<PathBuf> {
    let made = runner.run(named, kind, interval, &dir.join("ours"), Timestamp::now()).unwrap();
    // What goes to the exporters is what the CSV files hold, row for row (policy-audit's events
    // table is exported from events.json, which is not a CSV file).
    for table in made.exported.iter().filter(|t| t.name.ends_with(".csv")) {
        let Some(file) = made.files.iter().find(|f| f.file_name().is_some_and(|n| n == table.name)) else { continue };
        let mut csv = csv::ReaderBuilder::new().has_headers(false).from_path(file).unwrap();
        let read: Vec<Vec<String>> = csv.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect();
        assert_eq!(read[0], table.header, "{}", table.name);
        assert_eq!(read[1..], table.rows[..], "{}", table.name);
    }
    let files = made.files;
    let theirs = dir.join("theirs");
    report::run(&report::Request {
        kind: Some(kind),
        from: interval.start.to_string(),
        to: interval.end.to_string(),
        out: theirs.clone(),
        ..request
    })
    .unwrap();
    for f in &files {
        let name = f.file_name().unwrap();
        assert_eq!(std::fs::read(f).unwrap(), std::fs::read(theirs.join(name)).unwrap(), "{name:?}");
    }
    files
}
