//! `flowaudit reporter` in manifests mode, as a process: a GlobalReport `cis-benchmark` on
//! `*/5 * * * *` (the most frequent schedule the 12-per-hour rule allows), `--delay 0s`, fixture
//! kube-bench files. The archive says the reporter first saw the report 12 minutes ago (as if it
//! had been down since), so at start it catches up the intervals since then at once: each lands in
//! `<archive>/<report>/<start>_<end>/` with its completion marker, and its CSV files are byte for
//! byte those `flowaudit report cis-benchmark` writes for the same interval. A restart makes
//! nothing again. `/healthz` answers and `/metrics` counts the runs. Beside it, a `policy-audit`
//! GlobalReport on the same schedule whose `spec.endpoints` selects the namespace `batch`: its
//! runs replay the manifests directory (no snapshot is older than their intervals) through an
//! audit log with two policy changes in the first interval, and keep exactly the one whose policy
//! applies to batch's pod, as `flowaudit report policy-audit --cluster DIR` does.
//!
//! A second test gives the reporter `--config` with two exporters, a `file` one and syslog over
//! TCP to a real rsyslog in the OCSF encoding, and checks that every row of every archived
//! report's tables arrived at both, value for value.
//!
//! No root, no cluster: needs only `cargo build -p flowaudit` (the binary is found in target/,
//! or through `FLOWAUDIT_BIN_FLOWAUDIT`), and rsyslog for the exporter test (`cargo xtask setup`).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use flowaudit_lab::{
    sinks::{self, Rsyslog},
    workspace_bin,
};

const REPORT: &str = "cis-5m";
const AUDIT_REPORT: &str = "pa-5m";

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/src/report/testdata")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

struct Reporter(Child);

impl Reporter {
    fn start(cluster: &Path, archive: &Path, kube_bench: &Path, port: u16, extra: &[&std::ffi::OsStr]) -> Self {
        let bin = workspace_bin("flowaudit");
        assert!(bin.exists(), "{} missing: run `cargo build -p flowaudit` first", bin.display());
        let child = Command::new(bin)
            .args(["reporter", "--cluster"])
            .arg(cluster)
            .arg("--archive")
            .arg(archive)
            .arg("--kube-bench")
            .arg(kube_bench)
            .args(["--delay", "0s", "--format", "csv,json", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the reporter");
        Self(child)
    }

    /// SIGTERM, and the exit status must be 0.
    fn stop(mut self) {
        let pid = self.0.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success();
        assert!(ok, "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                assert!(status.success(), "the reporter exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the reporter did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The finished interval directories of `report`, sorted.
fn finished(archive: &Path, report: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(archive.join(report))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(".complete").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// `20261127T000500Z` → `2026-11-27T00:05:00Z`.
fn rfc3339(basic: &str) -> String {
    let b = basic.as_bytes();
    let s = |r: std::ops::Range<usize>| std::str::from_utf8(&b[r]).unwrap().to_owned();
    format!("{}-{}-{}T{}:{}:{}Z", s(0..4), s(4..6), s(6..8), s(9..11), s(11..13), s(13..15))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// The inputs of a reporter run in `dir`: the manifests directory with the GlobalReport, the
/// kube-bench directory, and an archive that says the report was first seen `minutes` ago.
struct Setup {
    cluster: PathBuf,
    reports: PathBuf,
    kb: PathBuf,
    archive: PathBuf,
    first_seen: u64,
}

impl Setup {
    fn new(dir: &Path, minutes: u64) -> Self {
        let cluster = dir.join("cluster");
        let kb = dir.join("kube-bench");
        let archive = dir.join("archive");
        std::fs::create_dir_all(&cluster).unwrap();
        std::fs::create_dir_all(&kb).unwrap();
        std::fs::copy(testdata().join("cluster/cluster.yaml"), cluster.join("cluster.yaml")).unwrap();
        let reports = cluster.join("reports.yaml");
        std::fs::write(
            &reports,
            format!(
                "apiVersion: flowaudit.io/v1\nkind: GlobalReport\nmetadata: {{name: {REPORT}}}\n\
                 spec:\n  reportType: cis-benchmark\n  schedule: \"*/5 * * * *\"\n  cis: {{highThreshold: 90, numFailedTests: 3}}\n"
            ),
        )
        .unwrap();
        // kube-bench results from an hour ago: the newest of the 36 h before every interval's end.
        for e in std::fs::read_dir(testdata().join("kube-bench")).unwrap() {
            let e = e.unwrap();
            let to = kb.join(e.file_name());
            std::fs::copy(e.path(), &to).unwrap();
            let f = std::fs::File::options().write(true).open(&to).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
        }
        // The reporter first saw the report `minutes` ago (the archive remembers it).
        let first_seen = unix_now() - minutes * 60;
        std::fs::create_dir_all(archive.join(REPORT)).unwrap();
        let out =
            Command::new("date").args(["-u", "-d", &format!("@{first_seen}"), "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
        let first_seen_text = String::from_utf8(out.stdout).unwrap();
        std::fs::write(archive.join(REPORT).join(".first-seen"), &first_seen_text).unwrap();
        Self { cluster, reports, kb, archive, first_seen }
    }

    /// The intervals the reporter must have made by `now`: every 5-minute tick after the first
    /// sighting ends one.
    fn expected(&self, now: u64) -> Vec<String> {
        let mut ends = Vec::new();
        let mut e = self.first_seen / 300 * 300 + 300;
        while e <= now {
            ends.push(e);
            e += 300;
        }
        ends.into_iter()
            .map(|e| {
                let f = |t: u64| {
                    let o =
                        Command::new("date").args(["-u", "-d", &format!("@{t}"), "+%Y%m%dT%H%M%SZ"]).output().unwrap();
                    String::from_utf8(o.stdout).unwrap().trim().to_owned()
                };
                format!("{}_{}", f(e - 300), f(e))
            })
            .collect()
    }
}

/// Adds the GlobalReport [`AUDIT_REPORT`] to `setup` (policy-audit, `*/5 * * * *`, endpoints in
/// the namespace `batch`, first seen with the cis report) and an audit log with two policy changes
/// at the first sighting (in the first interval): `p-1` of the AdminNetworkPolicy whose subject is
/// the namespace batch (its pod report-1 is selected), `p-2` of shop's NetworkPolicy. Gives the
/// audit log.
fn add_policy_audit(setup: &Setup, dir: &Path) -> PathBuf {
    let mut reports = std::fs::OpenOptions::new().append(true).open(&setup.reports).unwrap();
    write!(
        reports,
        "---\napiVersion: flowaudit.io/v1\nkind: GlobalReport\nmetadata: {{name: {AUDIT_REPORT}}}\n\
         spec:\n  reportType: policy-audit\n  schedule: \"*/5 * * * *\"\n  endpoints: {{namespaces: {{names: [batch]}}}}\n"
    )
    .unwrap();
    let first_seen = std::fs::read_to_string(setup.archive.join(REPORT).join(".first-seen")).unwrap();
    std::fs::create_dir_all(setup.archive.join(AUDIT_REPORT)).unwrap();
    std::fs::write(setup.archive.join(AUDIT_REPORT).join(".first-seen"), &first_seen).unwrap();
    let change = |id: &str, resource: &str, namespace: Option<&str>, object: serde_json::Value| {
        let (group, version) = object["apiVersion"].as_str().unwrap().split_once('/').unwrap();
        let mut object_ref = serde_json::json!({"resource": resource, "apiGroup": group, "apiVersion": version,
            "name": object["metadata"]["name"]});
        if let Some(ns) = namespace {
            object_ref["namespace"] = ns.into();
        }
        let at = first_seen.trim();
        let event = serde_json::json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
            "auditID": id, "stage": "ResponseComplete", "verb": "update", "user": {"username": "erin"},
            "objectRef": object_ref, "responseStatus": {"metadata": {}, "code": 200}, "responseObject": object,
            "requestReceivedTimestamp": at, "stageTimestamp": at});
        format!("{event}\n")
    };
    let audit_log = dir.join("kube-audit.log");
    let admin = serde_json::json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
        "metadata": {"name": "batch-isolation"},
        "spec": {"priority": 11, "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "batch"}}},
            "ingress": [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]}});
    let shop = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": "shop"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}});
    let lines =
        [change("p-1", "adminnetworkpolicies", None, admin), change("p-2", "networkpolicies", Some("shop"), shop)];
    std::fs::write(&audit_log, lines.concat()).unwrap();
    audit_log
}

/// Runs `flowaudit report KIND` with the GlobalReport `report` of `reports` for the archived
/// interval `name` (`<start>_<end>`), over the manifests directory `cluster` and the kind's
/// `input` (flag, path), into `out`; it must succeed.
fn report_command(
    (kind, report): (&str, &str),
    name: &str,
    cluster: &Path,
    reports: &Path,
    input: (&str, &Path),
    out: &Path,
) {
    let (start, end) = name.split_once('_').unwrap();
    let done = Command::new(workspace_bin("flowaudit"))
        .args(["report", kind, "--from", &rfc3339(start), "--to", &rfc3339(end), "--cluster"])
        .arg(cluster)
        .arg("--global-report")
        .arg(format!("{}:{report}", reports.display()))
        .arg(input.0)
        .arg(input.1)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(done.status.success(), "flowaudit report {kind}: {}", String::from_utf8_lossy(&done.stderr));
}

#[test]
fn reporter_catches_up_archives_reports_equal_to_the_report_command_and_never_reruns_them() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(dir.path(), 12);
    let audit_log = add_policy_audit(&setup, dir.path());
    let Setup { cluster, reports, kb, archive, .. } = &setup;
    let expected = |now: u64| setup.expected(now);
    let port = free_port();
    let audit_args: [&std::ffi::OsStr; 2] = ["--audit-log".as_ref(), audit_log.as_os_str()];
    let reporter = Reporter::start(cluster, archive, kb, port, &audit_args);
    let deadline = Instant::now() + Duration::from_secs(120);
    let made = loop {
        let made = finished(archive, REPORT);
        let audits = finished(archive, AUDIT_REPORT);
        let want = expected(unix_now());
        if made.len() >= want.len() && audits.len() >= want.len() && !want.is_empty() {
            assert_eq!(made, want, "the intervals since the first sighting, each once");
            assert_eq!(audits, want, "{AUDIT_REPORT}: the intervals since the first sighting, each once");
            break made;
        }
        assert!(Instant::now() < deadline, "after 120 s: made {made:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("archived: {made:?}");
    let health = http_get(port, "/healthz").expect("/healthz answers");
    assert!(health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http_get(port, "/metrics").expect("/metrics answers");
    let line = format!("flowaudit_reports_total{{report=\"{REPORT}\",result=\"success\"}} {}", made.len());
    assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    assert!(metrics.contains(&format!("flowaudit_reports_total{{report=\"{REPORT}\",result=\"failure\"}} 0")));
    reporter.stop();
    // The reporter wrote one snapshot of the cluster state at start (--snapshot-interval 24h).
    let snapshots: Vec<_> = std::fs::read_dir(archive.join("snapshots")).unwrap().flatten().collect();
    assert_eq!(snapshots.len(), 1, "one snapshot in <archive>/snapshots");

    // Each archived report's CSV files are those of `flowaudit report` for its interval.
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(archive.join(REPORT).join("status.json")).unwrap()).unwrap();
    assert_eq!(status["lastSuccessfulReportJobs"].as_array().unwrap().len(), made.len().min(5), "{status}");
    let last_end = made.last().unwrap().split_once('_').unwrap().1;
    assert_eq!(status["lastScheduledReportJob"]["end"], rfc3339(last_end), "{status}");
    for name in &made {
        let theirs = dir.path().join(format!("theirs-{name}"));
        report_command(("cis-benchmark", REPORT), name, cluster, reports, ("--kube-bench", kb), &theirs);
        let ours = archive.join(REPORT).join(name);
        let mut csvs: Vec<String> = std::fs::read_dir(&ours)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".csv"))
            .collect();
        csvs.sort();
        assert_eq!(csvs, ["all-tests.csv", "failed-tests.csv", "node-summary.csv", "total-summary.csv"]);
        for csv in csvs {
            assert_eq!(
                std::fs::read_to_string(ours.join(&csv)).unwrap(),
                std::fs::read_to_string(theirs.join(&csv)).unwrap(),
                "{name}/{csv} differs from `flowaudit report`"
            );
        }
        assert!(ours.join("report.json").is_file());
    }
    // The policy-audit runs: the files of `flowaudit report policy-audit --cluster DIR`; the first
    // interval keeps p-1 (its policy applies to batch's pod) and leaves out p-2.
    for (i, name) in made.iter().enumerate() {
        let (start, end) = name.split_once('_').unwrap();
        let theirs = dir.path().join(format!("theirs-{AUDIT_REPORT}-{name}"));
        report_command(("policy-audit", AUDIT_REPORT), name, cluster, reports, ("--audit-log", &audit_log), &theirs);
        let ours = archive.join(AUDIT_REPORT).join(name);
        for file in ["summary.csv", "events.json", "events.yaml"] {
            assert_eq!(
                std::fs::read_to_string(ours.join(file)).unwrap(),
                std::fs::read_to_string(theirs.join(file)).unwrap(),
                "{AUDIT_REPORT}/{name}/{file} differs from `flowaudit report`"
            );
        }
        let summary = std::fs::read_to_string(ours.join("summary.csv")).unwrap();
        let row = format!("{},{},,batch,,,,0,{},0", rfc3339(start), rfc3339(end), u8::from(i == 0));
        assert_eq!(summary.lines().nth(1), Some(row.as_str()), "{AUDIT_REPORT}/{name}");
        let events: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ours.join("events.json")).unwrap()).unwrap();
        let ids: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["auditID"].as_str().unwrap()).collect();
        assert_eq!(ids, if i == 0 { vec!["p-1"] } else { vec![] }, "{AUDIT_REPORT}/{name}");
    }
    let markers: Vec<String> =
        made.iter().map(|n| std::fs::read_to_string(archive.join(REPORT).join(n).join(".complete")).unwrap()).collect();

    // A restart: nothing is made again (unless a new tick passed meanwhile: only that one).
    let port = free_port();
    let reporter = Reporter::start(cluster, archive, kb, port, &audit_args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(port, "/healthz").is_none() {
        assert!(Instant::now() < deadline, "the restarted reporter does not answer /healthz");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    reporter.stop();
    let again = finished(archive, REPORT);
    assert_eq!(again, expected(unix_now()), "after the restart");
    for (n, marker) in made.iter().zip(&markers) {
        let now = std::fs::read_to_string(archive.join(REPORT).join(n).join(".complete")).unwrap();
        assert_eq!(&now, marker, "{n} was made again after the restart");
    }
    let leftovers: Vec<String> = std::fs::read_dir(archive.join(REPORT))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The CSV file's header and rows.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_path(path).unwrap();
    let mut all: Vec<Vec<String>> = r.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect();
    let header = all.remove(0);
    (header, all)
}

#[test]
fn reporter_sends_every_row_of_each_report_to_its_exporters() {
    if !sinks::available("reporter exporters", &[("rsyslog + rsyslog-gnutls", Rsyslog::installed())]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(dir.path(), 7);
    std::fs::create_dir_all(dir.path().join("rsyslog")).unwrap();
    let rsyslog = Rsyslog::start(&dir.path().join("rsyslog")).unwrap();
    let local = dir.path().join("reports-log");
    let config = dir.path().join("reporter.yaml");
    std::fs::write(
        &config,
        format!(
            "node_name: reporter-1\nexporters:\n\
             - {{name: local, type: file, dir: {}}}\n\
             - {{name: siem, type: syslog, address: 'tcp://127.0.0.1:{}', encoding: ocsf, app_name: fa-reports}}\n",
            local.display(),
            rsyslog.tcp
        ),
    )
    .unwrap();
    let port = free_port();
    let reporter =
        Reporter::start(&setup.cluster, &setup.archive, &setup.kb, port, &["--config".as_ref(), config.as_os_str()]);
    // Every row of every archived report's exported tables, in order: (interval, file, header, row).
    let archived_rows = |made: &[String]| -> Vec<(String, String, Vec<String>, Vec<String>)> {
        let mut rows = Vec::new();
        for name in made {
            for file in ["total-summary.csv", "node-summary.csv", "all-tests.csv"] {
                let (header, table) = read_csv(&setup.archive.join(REPORT).join(name).join(file));
                rows.extend(table.into_iter().map(|r| (name.clone(), file.to_owned(), header.clone(), r)));
            }
        }
        rows
    };
    let exported = || -> Option<usize> {
        let metrics = http_get(port, "/metrics")?;
        let prefix = format!("flowaudit_report_rows_exported_total{{report=\"{REPORT}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let made = finished(&setup.archive, REPORT);
        let want = setup.expected(unix_now());
        if made.len() >= want.len() && !want.is_empty() {
            assert_eq!(made, want, "the intervals since the first sighting, each once");
            let rows = archived_rows(&made).len();
            if rsyslog.messages().len() >= rows && exported() == Some(rows) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "after 120 s: made {made:?}, expected {want:?}, exported {:?}", exported());
        std::thread::sleep(Duration::from_millis(250));
    }
    reporter.stop();
    // A tick may have passed meanwhile: what counts is what was archived when it stopped (the
    // exporters deliver for up to 5 s at SIGTERM).
    let made = finished(&setup.archive, REPORT);
    let rows = archived_rows(&made);
    eprintln!("{} intervals, {} rows", made.len(), rows.len());
    assert!(rows.iter().any(|r| r.1 == "all-tests.csv"), "the fixture has test rows");

    // The file exporter: one calico line per row, in order, value for value.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(local.join("reports.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), rows.len(), "one line per row");
    for (line, (interval, file, header, row)) in lines.iter().zip(&rows) {
        let (start, end) = interval.split_once('_').unwrap();
        assert_eq!(
            (line["report"].as_str(), line["report_type"].as_str(), line["file"].as_str(), line["host"].as_str()),
            (Some(REPORT), Some("cis-benchmark"), Some(file.as_str()), Some("reporter-1"))
        );
        assert_eq!(line["start_time"].as_str().unwrap()[..19], rfc3339(start)[..19], "{line}");
        assert_eq!(line["end_time"].as_str().unwrap()[..19], rfc3339(end)[..19], "{line}");
        let columns: serde_json::Map<String, serde_json::Value> =
            header.iter().cloned().zip(row.iter().map(|v| serde_json::Value::from(v.as_str()))).collect();
        assert_eq!(line["columns"], serde_json::Value::Object(columns), "{interval} {file}");
    }
    let ids: std::collections::BTreeSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), rows.len(), "every row has its own id");

    // The SIEM: one RFC 5424 message per row, MSGID `report`, OCSF; CIS test rows are Compliance
    // Findings whose status is the CSV's.
    let messages = rsyslog.messages();
    assert_eq!(messages.len(), rows.len(), "one syslog message per row");
    for ((msgid, msg), (interval, file, header, row)) in messages.iter().zip(&rows) {
        assert_eq!(msgid, "report");
        let v: serde_json::Value = serde_json::from_str(msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
        assert_eq!(v["unmapped"]["report"]["file"].as_str(), Some(file.as_str()), "{interval}");
        let get = |c: &str| row[header.iter().position(|h| h == c).unwrap()].as_str();
        if file == "all-tests.csv" {
            let status = match get("status") {
                "PASS" => "Pass",
                "FAIL" => "Fail",
                "WARN" => "Warning",
                _ => "Other",
            };
            assert_eq!(
                (v["class_uid"].as_u64(), v["compliance"]["control"].as_str(), v["compliance"]["status"].as_str()),
                (Some(2003), Some(get("testIndex")), Some(status)),
                "{msg}"
            );
            assert_eq!(v["resources"][0]["name"].as_str(), Some(get("nodeName")));
        } else {
            assert_eq!(v["class_uid"].as_u64(), Some(0), "{msg}");
        }
    }
}
