//! Tests of the reports.
//!
//! `golden_*` run the reports over the fixed inputs in `report/testdata/` (kube-bench JSON built
//! from kube-bench's own cis-1.10 and cis-1.11 check texts, a manifests directory, flowaudit and
//! kube-apiserver audit logs) and compare every file byte for byte with `report/golden/<case>/`.
//! `FLOWAUDIT_BLESS=1 cargo test -p flowaudit --lib report` rewrites them; review the diff.
//!
//! `html_renders_in_chromium` renders the CIS page in Debian's chromium (headless): it skips with
//! a message when `chromium` is not installed, unless `FLOWAUDIT_REQUIRE_BROWSER=1` (set by
//! `cargo xtask test`, whose setup installs chromium).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{
    cis::{self, Band, DecidedBy, Status},
    policy_audit, *,
};
use crate::cluster::{ClusterState, manifests};

pub(super) fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/report/testdata").join(rel)
}

fn range() -> TimeRange {
    TimeRange::parse("2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z").unwrap()
}

fn cluster() -> ClusterState {
    manifests::load_dir(&testdata("cluster")).unwrap().state
}

fn nodes() -> Vec<PathBuf> {
    ["master-1", "worker-1", "worker-2"].iter().map(|n| testdata(&format!("kube-bench/{n}.json"))).collect()
}

pub(super) fn global_report(name: &str, kind: Kind) -> NamedReport {
    NamedReport::load(&format!("{}:{name}", testdata("global-reports.yaml").display()), kind).unwrap()
}

fn cis_report(report: Option<NamedReport>, with_cluster: bool) -> cis::CisReport {
    let state = cluster();
    cis::build(&cis::Input {
        range: range(),
        kube_bench: nodes(),
        report,
        cluster: with_cluster.then_some(&state),
        cluster_dir: with_cluster.then(|| testdata("cluster")),
        flows: None,
    })
    .unwrap()
}

/// 5.3.1 ("the CNI supports NetworkPolicies") from flow records: a denied connection that was
/// established anyway fails it, denials that held pass it, no denial leaves it to kube-bench.
#[test]
fn cni_check_is_decided_from_the_flow_logs() {
    use crate::report::flows::FlowLogDirs;
    let decide = |dir: &std::path::Path| {
        let flows = FlowLogDirs(vec![dir.to_owned()]);
        let r = cis::build(&cis::Input {
            range: range(),
            kube_bench: vec![testdata("kube-bench/master-1.json")],
            report: None,
            cluster: None,
            cluster_dir: None,
            flows: Some(&flows),
        })
        .unwrap();
        let t = r.nodes[0].tests.iter().find(|t| t.number == "5.3.1").cloned();
        (t.map(|t| (t.status, t.decided_by, t.remediation.lines().last().unwrap_or("").to_owned())), r.warnings)
    };
    // The network-access flows: 3 connections from the internet to old-1 denied and dropped; one
    // from front-5d8f-abc to db-0 denied but established.
    let (t, _) = decide(&testdata("network-access/flows"));
    assert_eq!(
        t,
        Some((
            Status::Fail,
            DecidedBy::Flowaudit,
            "Flow logs: 1 connections denied by policy were established anyway (enforcement violations, e.g. \
             web/front-5d8f-abc to shop/db-0); 3 denied connections were dropped."
                .into()
        ))
    );
    let held = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(testdata("network-access/flows/flows.log.1")).unwrap();
    let denied_only: String =
        text.lines().filter(|l| l.contains(r#""num_violations": 0"#)).map(|l| format!("{l}\n")).collect();
    std::fs::write(held.path().join("flows.log"), denied_only).unwrap();
    let (t, _) = decide(held.path());
    assert_eq!(
        t,
        Some((
            Status::Pass,
            DecidedBy::Flowaudit,
            "Flow logs: 3 connections denied by policy were dropped, none established.".into()
        ))
    );
    let none = tempfile::tempdir().unwrap();
    std::fs::write(none.path().join("flows.log"), "").unwrap();
    let (t, warnings) = decide(none.path());
    assert_eq!(t, None, "unscored and undecided: not listed");
    assert!(
        warnings
            .iter()
            .any(|w| w.ends_with("no denied connection in the interval: 5.3.1 is left as kube-bench reported it")),
        "{warnings:?}"
    );
}

fn policy_audit_report() -> policy_audit::PolicyAudit {
    policy_audit::build(
        range(),
        &[testdata("audit/flowaudit"), testdata("audit/kube-apiserver.log")],
        Some(global_report("policy-changes", Kind::PolicyAudit)),
        None,
    )
    .unwrap()
}

/// Compares `files` with `golden/<case>/`, or rewrites them under `FLOWAUDIT_BLESS=1`.
pub(super) fn golden(case: &str, files: Vec<(String, Vec<u8>)>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/report/golden").join(case);
    let bless = std::env::var_os("FLOWAUDIT_BLESS").is_some_and(|v| v == "1");
    let mut differ = Vec::new();
    for (name, content) in files {
        let path = dir.join(&name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &content).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&content[..]) {
            differ.push(format!("{case}/{name}:\n{}", String::from_utf8_lossy(&content)));
        }
    }
    assert!(differ.is_empty(), "differ from report/golden (FLOWAUDIT_BLESS=1 to rewrite):\n{}", differ.join("\n"));
}

fn column<'a>(table: &'a Table, name: &str) -> Vec<&'a str> {
    let i = table.header.iter().position(|h| *h == name).unwrap();
    table.rows.iter().map(|r| r[i].as_str()).collect()
}

// ---- CIS benchmark ----

/// No GlobalReport: Calico's defaults (100/50, unscored tests dropped), 5.3.2 from the cluster.
#[test]
fn golden_cis_defaults() {
    let r = cis_report(None, true);
    assert_eq!(
        r.node_summary().rows,
        vec![
            vec!["master-1", "1.28", "MED", "6", "2", "0", "8"],
            vec!["worker-1", "1.28", "LOW", "2", "3", "0", "5"],
            vec!["worker-2", "1.29", "HIGH", "5", "0", "0", "5"],
        ]
    );
    // 5.3.2 is unscored: listed with flowaudit's verdict, not counted (includeUnscoredTests unset).
    let t = r.nodes[0].tests.iter().find(|t| t.number == "5.3.2").unwrap();
    assert_eq!((t.status, t.decided_by, t.counted), (Status::Fail, DecidedBy::Flowaudit, false));
    assert!(t.remediation.ends_with("Namespaces without a NetworkPolicy: kube-system"), "{}", t.remediation);
    golden("cis-defaults", r.download_files());
}

/// `daily-cis`: unscored tests included (and counted, 5.3.2 among them); for 1.28 nodes 1.1.3
/// and section 1.2 excluded; the top failed tests list is 3 long.
#[test]
fn golden_cis_global_report() {
    let r = cis_report(Some(global_report("daily-cis", Kind::CisBenchmark)), true);
    let all = r.all_tests();
    let master: Vec<&str> = all.rows.iter().filter(|row| row[0] == "master-1").map(|row| row[1].as_str()).collect();
    assert_eq!(master, ["1.1.1", "1.1.2", "1.1.4", "1.1.5", "1.1.6", "5.1.1", "5.1.2", "5.1.3", "5.3.1", "5.3.2"]);
    // master-1: 7 PASS, 1 FAIL (5.3.2, counted now), WARN 5.1.1 and 5.3.1 unknown.
    assert_eq!(r.node_summary().rows[0], vec!["master-1", "1.28", "MED", "7", "1", "2", "8"]);
    // worker-1 has an INFO (skipped) test: unknown, not in the total; 4 of 7 is 57 %.
    assert_eq!(r.node_summary().rows[1], vec!["worker-1", "1.28", "MED", "4", "3", "1", "7"]);
    assert_eq!(r.top_failed().len(), 3);
    golden("cis-global-report", r.download_files());
}

/// `strict-cis` (80/70): the 1.29 node keeps only section 4.2 (the first filter that matches
/// its version), the others lose 4.2.3 (the catch-all filter). No cluster: 5.3.2 stays WARN,
/// unscored, dropped.
#[test]
fn golden_cis_filters_and_thresholds() {
    let r = cis_report(Some(global_report("strict-cis", Kind::CisBenchmark)), false);
    let all = r.all_tests();
    let w2: Vec<&str> = all.rows.iter().filter(|row| row[0] == "worker-2").map(|row| row[1].as_str()).collect();
    assert_eq!(w2, ["4.2.1", "4.2.2", "4.2.3"]);
    assert!(!column(&all, "testIndex").contains(&"5.3.2"));
    assert!(column(&all, "decidedBy").iter().all(|d| *d == "kube-bench"));
    assert_eq!(
        r.node_summary().rows.iter().map(|row| (row[0].as_str(), row[2].as_str())).collect::<Vec<_>>(),
        [("master-1", "MED"), ("worker-1", "LOW"), ("worker-2", "HIGH")]
    );
    assert_eq!(r.total_summary().rows[0][3..], ["80", "70", "1", "1", "1"]);
    golden("cis-filters", r.download_files());
}

#[test]
fn bands_use_floor_and_thresholds() {
    assert_eq!(Band::of(100, 100, 50), Band::High);
    assert_eq!(Band::of(99, 100, 50), Band::Med);
    assert_eq!(Band::of(50, 100, 50), Band::Med);
    assert_eq!(Band::of(49, 100, 50), Band::Low);
    // 2 of 3 is 66 %, not 67 %.
    let json = r#"[{"id":"4","version":"cis-1.10","detected_version":"1.28","text":"Worker","node_type":"node","tests":[
        {"section":"4.1","desc":"Files","results":[
          {"test_number":"4.1.1","test_desc":"a","status":"PASS","scored":true,"test_info":["fix a"]},
          {"test_number":"4.1.2","test_desc":"b","status":"PASS","scored":true,"test_info":["fix b"]},
          {"test_number":"4.1.10","test_desc":"c","status":"FAIL","scored":true,"test_info":["fix c"]},
          {"test_number":"4.1.9","test_desc":"d","status":"WARN","scored":true,"test_info":["fix d"]}]}]}]"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("n1.json");
    std::fs::write(&file, json).unwrap();
    let r = cis::build(&cis::Input {
        range: range(),
        kube_bench: vec![file],
        report: None,
        cluster: None,
        cluster_dir: None,
        flows: None,
    })
    .unwrap();
    let n = &r.nodes[0];
    assert_eq!((n.pass, n.fail, n.unknown, n.percent, n.band), (2, 1, 1, 66, Band::Med));
    // Document order: 4.1.9 before 4.1.10.
    assert_eq!(n.tests.iter().map(|t| t.number.as_str()).collect::<Vec<_>>(), ["4.1.1", "4.1.2", "4.1.9", "4.1.10"]);
    // Nothing counted: 0 %, LOW (as Calico).
    assert_eq!(Band::of(0, 100, 50), Band::Low);
}

#[test]
fn kube_bench_shapes() {
    let one = r#"{"id":"4","version":"cis-1.10","detected_version":"1.28","text":"W","node_type":"node","tests":[{"section":"4.1","desc":"F","results":[{"test_number":"4.1.1","test_desc":"a","status":"INFO","scored":false,"remediation":"r","test_info":null}]}]}"#;
    let p = Path::new("n.json");
    // A single control, two values one after another, a bare array, the Overall object.
    let single = cis::parse_kube_bench(p, one.as_bytes()).unwrap();
    assert_eq!((single.version.as_str(), single.benchmark.as_str()), ("1.28", "cis-1.10"));
    assert_eq!(single.tests[0].remediation, "r");
    let two = format!("{one}\n{}", one.replace("4.1.1", "4.1.2"));
    assert_eq!(cis::parse_kube_bench(p, two.as_bytes()).unwrap().tests.len(), 2);
    assert_eq!(cis::parse_kube_bench(p, format!("[{one}]").as_bytes()).unwrap().tests.len(), 1);
    let overall =
        format!(r#"{{"Controls":[{one}],"Totals":{{"total_pass":0,"total_fail":0,"total_warn":0,"total_info":1}}}}"#);
    assert_eq!(cis::parse_kube_bench(p, overall.as_bytes()).unwrap().tests[0].status, Status::Info);
    // A repeated test number keeps the first result.
    let dup = cis::parse_kube_bench(p, format!("[{one},{one}]").as_bytes()).unwrap();
    assert_eq!((dup.tests.len(), dup.duplicates.as_slice()), (1, &["4.1.1".to_owned()][..]));
}

#[test]
fn kube_bench_errors_name_the_field() {
    let p = Path::new("/x/n1.json");
    let err = |text: &str| {
        let e = cis::parse_kube_bench(p, text.as_bytes()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        e.to_string()
    };
    assert_eq!(
        err(r#"{"Controls":[{"tests":[{"section":"1.1","results":[{"test_number":"1.1.1","status":"OK"}]}]}]}"#),
        "/x/n1.json: Controls[0].tests[0].results[0].status: \"OK\" is not PASS, FAIL, WARN or INFO"
    );
    assert!(
        err(r#"{"Controls":[{"tests":[{"section":"1.1","results":[{"status":"PASS"}]}]}]}"#)
            .starts_with("/x/n1.json: Controls[0].tests[0].results[0]: missing field `test_number`")
    );
    assert!(err(r#"[{"tests":[{"section":1}]}]"#).starts_with("/x/n1.json: [0].tests[0].section: invalid type"));
    assert!(err("{not json").starts_with("/x/n1.json: -: not kube-bench JSON"));
    assert_eq!(err(""), "/x/n1.json: -: empty: no kube-bench JSON");
    assert!(err(r#"{"hello":1}"#).contains("not kube-bench JSON output"));
}

#[test]
fn a_directory_gives_each_node_its_newest_file_of_the_36_hours_before_to() {
    let dir = tempfile::tempdir().unwrap();
    let to = range().to;
    let at = |hours_before: f64| {
        let end = SystemTime::from(to);
        if hours_before >= 0.0 {
            end - Duration::from_secs_f64(hours_before * 3600.0)
        } else {
            end + Duration::from_secs_f64(-hours_before * 3600.0)
        }
    };
    let file = |rel: &str, hours_before: f64| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "[]").unwrap();
        filetime::set_file_mtime(&path, filetime::FileTime::from_system_time(at(hours_before))).unwrap();
        path
    };
    file("a/n1.json", 30.0);
    let newest = file("b/n1.json", 2.0);
    file("c/n1.json", -1.0); // after --to
    file("n2.json", 37.0); // too old
    let n3 = file("n3.json", 35.9);
    file("n3.txt", 1.0); // not JSON
    let chosen = cis::choose(&[dir.path().to_owned()], to).unwrap();
    assert_eq!(
        chosen,
        vec![cis::Chosen { node: "n1".into(), file: newest }, cis::Chosen { node: "n3".into(), file: n3.clone() }]
    );
    // A file named explicitly is used whatever its time, and wins over the directory.
    let named = file("old/n3.json", 100.0);
    let chosen = cis::choose(&[dir.path().to_owned(), named.clone()], to).unwrap();
    assert_eq!(chosen[1], cis::Chosen { node: "n3".into(), file: named.clone() });
    // Two files named for one node: which one is meant is not known.
    let e = cis::choose(&[named, n3], to).unwrap_err();
    assert!(e.to_string().contains("node \"n3\" is also named by"), "{e}");
    assert_eq!(e.exit_code(), 2);
    // A missing path.
    let e = cis::choose(&[dir.path().join("nope")], to).unwrap_err();
    assert!(e.to_string().starts_with(&format!("{}: -: ", dir.path().join("nope").display())), "{e}");
}

#[test]
fn namespaces_without_policy_from_the_cluster_state() {
    let state = cluster();
    let dir = testdata("cluster");
    assert_eq!(cis::namespaces_without_policy(&state, &dir).unwrap(), Some(vec!["kube-system".to_owned()]));
    // A GlobalNetworkPolicy selecting every endpoint covers every namespace; `global()` none.
    let with = |yaml: &str| {
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("cluster.yaml"), d.path().join("cluster.yaml")).unwrap();
        std::fs::write(d.path().join("extra.yaml"), yaml).unwrap();
        let state = manifests::load_dir(d.path()).unwrap().state;
        cis::namespaces_without_policy(&state, d.path()).unwrap()
    };
    let gnp = |spec: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: x}}\nspec: {spec}\n")
    };
    assert_eq!(with(&gnp("{selector: all(), types: [Ingress]}")), Some(vec![]));
    assert_eq!(with(&gnp("{types: [Ingress]}")), Some(vec![]));
    assert_eq!(with(&gnp("{namespaceSelector: global(), types: [Ingress]}")), Some(vec!["kube-system".to_owned()]));
    assert_eq!(
        with(&gnp("{namespaceSelector: \"projectcalico.org/name == 'kube-system'\", types: [Ingress]}")),
        Some(vec![])
    );
    // A BaselineAdminNetworkPolicy selecting every namespace.
    assert_eq!(
        with(
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec: {subject: {namespaces: {}}}\n"
        ),
        Some(vec![])
    );
    // A selector that does not parse (the loader checks them; a state from elsewhere may not) is
    // bad input, named.
    let mut state = ClusterState::default();
    state.namespaces.insert("a".into(), crate::cluster::Namespace { name: "a".into(), ..Default::default() });
    state.calico_policies.push(crate::cluster::CalicoPolicy {
        kind: crate::cluster::CalicoPolicyKind::GlobalNetworkPolicy,
        namespace: None,
        name: "x".into(),
        spec: crate::cluster::calico::CalicoPolicySpec {
            namespace_selector: Some("team ==".into()),
            ..Default::default()
        },
        staged_action: None,
    });
    let e = cis::namespaces_without_policy(&state, &dir).unwrap_err();
    assert!(e.to_string().contains("GlobalNetworkPolicy x: spec.namespaceSelector: \"team ==\": at 7"), "{e}");
    // No namespaces at all: nothing decided.
    assert_eq!(cis::namespaces_without_policy(&ClusterState::default(), &dir).unwrap(), None);
}

#[test]
fn all_namespaces_covered_passes_5_3_2() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("c.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d, namespace: a}\nspec: {podSelector: {}}\n",
    )
    .unwrap();
    let state = manifests::load_dir(d.path()).unwrap().state;
    let r = cis::build(&cis::Input {
        range: range(),
        kube_bench: nodes(),
        report: Some(global_report("daily-cis", Kind::CisBenchmark)),
        cluster: Some(&state),
        cluster_dir: Some(d.path().to_owned()),
        flows: None,
    })
    .unwrap();
    let t = r.nodes[0].tests.iter().find(|t| t.number == "5.3.2").unwrap();
    assert_eq!((t.status, t.decided_by, t.counted), (Status::Pass, DecidedBy::Flowaudit, true));
    assert_eq!(t.remediation, "Follow the documentation and create NetworkPolicy objects as you need them.");
}

/// 5.1.5 ("default service accounts are not actively used") fails from the pods that run as
/// `default`; a 5.1.5 with another description (older numbering) and a cluster without such pods
/// leave the row as kube-bench reported it.
#[test]
fn pods_on_the_default_service_account_fail_5_1_5() {
    let d = tempfile::tempdir().unwrap();
    let bench = |node: &str, desc: &str| {
        let file = d.path().join(format!("{node}.json"));
        let doc = json!({"Controls": [{"id": "5", "version": "cis-1.10", "detected_version": "1.28",
            "text": "Kubernetes Policies", "node_type": "policies", "tests": [{"section": "5.1", "desc": "RBAC and Service Accounts",
            "results": [{"test_number": "5.1.5", "test_desc": desc, "status": "WARN", "scored": false,
                "test_info": ["Create explicit service accounts wherever a Kubernetes workload requires specific access."]}]}]}]});
        std::fs::write(&file, doc.to_string()).unwrap();
        file
    };
    let files = vec![
        bench("node-a", "Ensure that default service accounts are not actively used (Manual)"),
        bench("node-b", "Ensure that Service Account Tokens are only mounted where necessary (Manual)"),
    ];
    let pod = |ns: &str, name: &str, sa: &str| {
        let sa = if sa.is_empty() { String::new() } else { format!("serviceAccountName: {sa}, ") };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{sa}containers: []}}\n"
        )
    };
    let cluster = d.path().join("cluster");
    std::fs::create_dir_all(&cluster).unwrap();
    std::fs::write(
        cluster.join("pods.yaml"),
        [pod("shop", "web", ""), pod("shop", "api", "api"), pod("ops", "monitor", "default")].join("---\n"),
    )
    .unwrap();
    let build = |state: &ClusterState| {
        cis::build(&cis::Input {
            range: range(),
            kube_bench: files.clone(),
            report: Some(global_report("daily-cis", Kind::CisBenchmark)),
            cluster: Some(state),
            cluster_dir: Some(cluster.clone()),
            flows: None,
        })
        .unwrap()
    };
    let state = manifests::load_dir(&cluster).unwrap().state;
    assert_eq!(cis::pods_on_default_service_account(&state), ["ops/monitor", "shop/web"]);
    let r = build(&state);
    let t = &r.nodes[0].tests[0];
    assert_eq!((t.status, t.decided_by), (Status::Fail, DecidedBy::Flowaudit));
    assert_eq!(
        t.remediation,
        "Create explicit service accounts wherever a Kubernetes workload requires specific access.\n\
         Pods running as the default service account: ops/monitor;shop/web"
    );
    let t = &r.nodes[1].tests[0];
    assert_eq!((t.status, t.decided_by), (Status::Warn, DecidedBy::KubeBench), "another check numbered 5.1.5");
    // No pod on a default account: nothing decided (the accounts' token mounting is not known).
    std::fs::write(cluster.join("pods.yaml"), pod("shop", "api", "api")).unwrap();
    let r = build(&manifests::load_dir(&cluster).unwrap().state);
    assert_eq!((r.nodes[0].tests[0].status, r.nodes[0].tests[0].decided_by), (Status::Warn, DecidedBy::KubeBench));
}

#[test]
fn global_report_errors_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let load = |yaml: &str, kind: Kind| {
        let f = dir.path().join("r.yaml");
        std::fs::write(&f, yaml).unwrap();
        NamedReport::load(&format!("{}:r", f.display()), kind).map_err(|e| {
            assert_eq!(e.exit_code(), 2);
            e.to_string().replace(&f.display().to_string(), "FILE")
        })
    };
    let doc = |spec: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: GlobalReport\nmetadata: {{name: r}}\nspec: {spec}\n")
    };
    assert_eq!(
        load(&doc("{reportType: cis-benchmark, cis: {highTreshold: 90}}"), Kind::CisBenchmark).unwrap_err(),
        "FILE: document 1: spec.cis.highTreshold: unknown field `highTreshold`, expected one of `highThreshold`, `medThreshold`, `includeUnscoredTests`, `numFailedTests`, `resultsFilters`"
    );
    assert_eq!(
        load(&doc("{reportType: inventory}"), Kind::CisBenchmark).unwrap_err(),
        "FILE: document 1: spec.reportType: is \"inventory\", the command is cis-benchmark"
    );
    assert_eq!(
        load(&doc("{reportType: cis-benchmark, cis: {highThreshold: 50}}"), Kind::CisBenchmark).unwrap_err(),
        "FILE: document 1: spec.cis.highThreshold: 50 must be greater than medThreshold (50)"
    );
    assert_eq!(
        load(&doc("{reportType: cis-benchmark, cis: {medThreshold: 101}}"), Kind::CisBenchmark).unwrap_err(),
        "FILE: document 1: spec.cis.medThreshold: 101 is not between 0 and 100"
    );
    assert_eq!(
        load(&doc("{reportType: cis-benchmark, cis: {numFailedTests: 0}}"), Kind::CisBenchmark).unwrap_err(),
        "FILE: document 1: spec.cis.numFailedTests: 0 is not greater than 0"
    );
    assert!(
        load("kind: Namespace\n", Kind::CisBenchmark).unwrap_err().starts_with("FILE: -: no GlobalReport named \"r\"")
    );
    let ok = load(&format!("kind: Namespace\n---\n{}", doc("{reportType: policy-audit}")), Kind::PolicyAudit).unwrap();
    assert_eq!(ok.name, "r");
    let e = NamedReport::load("no-name-here", Kind::CisBenchmark).unwrap_err();
    assert_eq!(e.to_string(), "--global-report: \"no-name-here\" is not FILE:NAME");
}

// ---- policy audit ----

/// flowaudit's audit.log (rotated), its forwarded kube-apiserver event, and the kube-apiserver
/// log: every change once.
#[test]
fn golden_policy_audit() {
    let r = policy_audit_report();
    assert_eq!((r.created, r.modified, r.deleted), (2, 4, 2));
    let by = |verb: &str, name: &str| {
        r.events
            .iter()
            .find(|e| e.verb == verb && e.object_ref.as_ref().unwrap().name.as_deref() == Some(name))
            .unwrap()
    };
    // Matched by resourceVersion: the API server's event, with the watch's previous object.
    let patch = by("patch", "default-deny");
    assert_eq!(patch.user.username, "bob");
    assert_eq!(patch.annotations[policy_audit::ALSO_OBSERVED_ANNOTATION], "b0000000-0000-0000-0000-000000000003");
    assert!(patch.previous_object.is_some());
    // crd.projectcalico.org (API server) and projectcalico.org (watch) are one object.
    assert_eq!(by("update", "ops-egress").user.username, "carol");
    // A delete: by time; a delete found after a restart: the API server's, hours earlier.
    assert_eq!(
        by("delete", "db-from-web").annotations[policy_audit::ALSO_OBSERVED_ANNOTATION],
        "b0000000-0000-0000-0000-000000000005"
    );
    assert_eq!(by("delete", "web-only").stage_timestamp, "2026-11-20T09:00:00.000000Z");
    // Seen only by the watch.
    assert_eq!(by("update", "db-ingress").user.username, audit_user());
    // The same auditID twice (forwarded to audit.log, and in the API server's log): once, annotated.
    assert_eq!(by("create", "batch-isolation").source(), Some("kube-audit-log"));
    // Copies dropped: 7 watch events (2 of them at the edges of the interval) and 1 auditID.
    assert_eq!(r.duplicates, 8);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    golden("policy-audit", r.download_files());
}

fn audit_user() -> &'static str {
    crate::audit::OBSERVED_USER
}

#[test]
fn policy_audit_json_follows_report_data() {
    let r = policy_audit_report();
    let data = r.report_data(Timestamp::UNIX_EPOCH);
    assert_eq!(data["reportName"], "policy-changes");
    assert_eq!(data["reportTypeName"], "policy-audit");
    assert_eq!(data["reportSpec"]["schedule"], "0 0 * * *");
    assert_eq!(data["startTime"], "2026-11-20T00:00:00Z");
    assert_eq!(data["generationTime"], "1970-01-01T00:00:00Z");
    assert_eq!(
        data["auditSummary"],
        serde_json::json!({"numTotal": 8, "numCreate": 2, "numModify": 4, "numDelete": 2})
    );
    assert_eq!(data["auditEvents"].as_array().unwrap().len(), 8);
    // events.yaml holds the same events as events.json.
    let yaml: Value = serde_yaml_ng::from_slice(&r.events_yaml()).unwrap();
    let json: Value = serde_json::from_slice(&r.events_json()).unwrap();
    assert_eq!(yaml, json);
}

#[test]
fn policy_audit_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(testdata("audit/kube-apiserver.log")).unwrap();
    let first = good.lines().nth(1).unwrap();
    // A bad line in the middle: an error naming the file and the line.
    let f = dir.path().join("bad.log");
    std::fs::write(&f, format!("{first}\n{{\"kind\": \"Event\"\n{first}\n")).unwrap();
    let e = policy_audit::build(range(), std::slice::from_ref(&f), None, None).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().starts_with(&format!("{}: line 2: ", f.display())), "{e}");
    // Not an audit Event.
    std::fs::write(&f, "{\"kind\":\"Pod\",\"apiVersion\":\"v1\"}\n").unwrap();
    assert!(policy_audit::build(range(), std::slice::from_ref(&f), None, None).is_err());
    // A last line being written: skipped with a warning.
    std::fs::write(&f, format!("{first}\n{}", &first[..40])).unwrap();
    let r = policy_audit::build(range(), std::slice::from_ref(&f), None, None).unwrap();
    assert_eq!((r.created, r.warnings.len()), (1, 1));
    // A bad stageTimestamp.
    std::fs::write(&f, format!("{}\n", first.replace("2026-11-20T10:00:00.100000Z", "yesterday"))).unwrap();
    let e = policy_audit::build(range(), std::slice::from_ref(&f), None, None).unwrap_err();
    assert!(e.to_string().contains("line 1: stageTimestamp: "), "{e}");
    // A missing file.
    let e = policy_audit::build(range(), &[dir.path().join("nope")], None, None).unwrap_err();
    assert_eq!(e.exit_code(), 2);
}

/// The audit logs of the endpoint-selection cases: the API server's (alice, bob, carol) and
/// flowaudit's watch (a pod label change, a Calico policy update with its previous object).
fn endpoint_logs() -> Vec<PathBuf> {
    vec![
        testdata("policy-audit-endpoints/audit/audit.log"),
        testdata("policy-audit-endpoints/audit/kube-apiserver.log"),
    ]
}

/// The policy-audit report of `report` (a GlobalReport of `global-reports.yaml`) over the
/// snapshot of 2026-11-19 replayed through [`endpoint_logs`].
fn policy_audit_of_endpoints(report: &str) -> policy_audit::PolicyAudit {
    let timeline = replay::load(
        &replay::Start::Snapshots(testdata("policy-audit-endpoints/snapshots")),
        &endpoint_logs(),
        range(),
    )
    .unwrap();
    assert!(timeline.warnings.is_empty(), "{:?}", timeline.warnings);
    policy_audit::build(range(), &endpoint_logs(), Some(global_report(report, Kind::PolicyAudit)), Some(&timeline))
        .unwrap()
}

fn audit_ids(r: &policy_audit::PolicyAudit) -> Vec<&str> {
    r.events.iter().map(|e| e.audit_id.as_str()).collect()
}

/// `spec.endpoints.namespaces: {names: [web]}` over the snapshot (web: front-1 app=front, api-1
/// app=api; shop: cart-1 app=cart) and the interval's changes:
/// - a-1 01:00 update NetworkPolicy web/front-ingress (podSelector app=front): kept;
/// - a-2 02:00 update NetworkPolicy shop/cart-ingress: another namespace, dropped;
/// - a-3 03:00 update GlobalNetworkPolicy front-egress (selector app == 'front', CRD group): kept;
/// - a-4 04:00 update GlobalNetworkPolicy shop-egress (app == 'cart'): dropped;
/// - w-1 05:00 pod web/front-1 relabelled app=front-v2 (not a policy change);
/// - a-5 06:00 patch web/front-ingress: it selects no pod any more, dropped (a-1 stays kept:
///   each is judged at its own time);
/// - w-2 07:00 update Calico NetworkPolicy web/api-allow from app == 'api' to app == 'none': the
///   object before applies, kept;
/// - a-6 08:00 delete web/api-ingress (no object in the event): the previous object (replayed
///   state) selects api-1, kept;
/// - a-7 09:00 delete shop/cart-ingress: dropped;
/// - a-8 10:00 create Calico NetworkPolicy web/front-v2-allow (app == 'front-v2'): the new object
///   selects front-1 after its label change, kept;
/// - a-9 11:00 create StagedGlobalNetworkPolicy staged-front (app == 'front-v2'): staged kinds
///   count as if enforced, kept.
#[test]
fn golden_policy_audit_endpoints() {
    let r = policy_audit_of_endpoints("web-policies");
    assert_eq!(audit_ids(&r), ["a-1", "a-3", "w-2", "a-6", "a-8", "a-9"]);
    assert_eq!(
        String::from_utf8(r.summary().to_csv()).unwrap(),
        "startTime,endTime,endpointSelector,namespaceNames,namespaceSelector,serviceAccountNames,\
         serviceAccountSelectors,numCreatedPolicies,numModifiedPolicies,numDeletedPolicies\n\
         2026-11-20T00:00:00Z,2026-11-21T00:00:00Z,,web,,,,2,3,1\n"
    );
    assert_eq!((r.outside_selection, r.unjudged, r.duplicates), (4, 0, 0));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    golden("policy-audit-endpoints", r.download_files());

    // An endpoint selector (app == 'cart'): only the shop policies' events.
    let r = policy_audit_of_endpoints("cart-policies");
    assert_eq!(audit_ids(&r), ["a-2", "a-4", "a-7"]);
    assert_eq!(
        String::from_utf8(r.summary().to_csv()).unwrap().lines().nth(1).unwrap(),
        "2026-11-20T00:00:00Z,2026-11-21T00:00:00Z,app == 'cart',,,,,0,2,1"
    );
    assert_eq!((r.outside_selection, r.unjudged), (7, 0));
    let html = r.html(Timestamp::UNIX_EPOCH);
    assert!(html.contains("7 events left out, 0 kept without being judged"), "{html}");
}

/// `flowaudit report policy-audit` with a restrictive selection: the state from a manifests
/// directory (`--cluster DIR`); a policy the state does not hold is judged by the event's
/// `previousObject`, one known nowhere is kept with a warning; without a state source the
/// command fails naming the flag (exit 2).
#[test]
fn policy_audit_endpoints_from_a_manifests_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    std::fs::create_dir(&cluster).unwrap();
    std::fs::write(
        cluster.join("c.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: api-1, namespace: web, labels: {app: api}}\n\
         spec: {containers: [{name: main, image: i}]}\n",
    )
    .unwrap();
    let np = |name: &str, app: &str| {
        serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "web"}, "spec": {"podSelector": {"matchLabels": {"app": app}}}})
    };
    let event = |id: &str, verb: &str, at: &str, name: &str, previous: Option<Value>| {
        let mut e = serde_json::json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": id, "stage": "ResponseComplete", "verb": verb, "user": {"username": "dave"},
            "objectRef": {"resource": "networkpolicies", "apiGroup": "networking.k8s.io", "apiVersion": "v1",
                "namespace": "web", "name": name},
            "requestReceivedTimestamp": at, "stageTimestamp": at});
        if let Some(p) = previous {
            e["level"] = "RequestResponse".into();
            e["previousObject"] = p;
        }
        format!("{e}\n")
    };
    let log = dir.path().join("audit.log");
    std::fs::write(
        &log,
        [
            event("d-1", "delete", "2026-11-20T01:00:00Z", "gone", Some(np("gone", "api"))),
            event("d-2", "delete", "2026-11-20T02:00:00Z", "other", Some(np("other", "db"))),
            event("d-3", "create", "2026-11-20T03:00:00Z", "unknown", None),
        ]
        .concat(),
    )
    .unwrap();
    let out = dir.path().join("out");
    let req = Request {
        kind: Some(Kind::PolicyAudit),
        from: "2026-11-20T00:00:00Z".into(),
        to: "2026-11-21T00:00:00Z".into(),
        out: out.clone(),
        cluster: Some(cluster.display().to_string()),
        audit_logs: vec![log.clone()],
        global_report: Some(format!("{}:web-policies", testdata("global-reports.yaml").display())),
        ..Default::default()
    };
    run(&req).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("summary.csv")).unwrap().lines().nth(1).unwrap(),
        "2026-11-20T00:00:00Z,2026-11-21T00:00:00Z,,web,,,,1,0,1"
    );
    let events: Value = serde_json::from_slice(&std::fs::read(out.join("events.json")).unwrap()).unwrap();
    let ids: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["auditID"].as_str().unwrap()).collect();
    assert_eq!(ids, ["d-1", "d-3"]);
    let timeline =
        replay::load(&replay::Start::Manifests(cluster.clone()), std::slice::from_ref(&log), range()).unwrap();
    let r = policy_audit::build(
        range(),
        std::slice::from_ref(&log),
        Some(global_report("web-policies", Kind::PolicyAudit)),
        Some(&timeline),
    )
    .unwrap();
    assert_eq!((r.outside_selection, r.unjudged), (1, 1));
    assert_eq!(
        r.warnings.last().unwrap(),
        "audit event d-3 at 2026-11-20T03:00:00Z: NetworkPolicy.networking.k8s.io/v1(web/unknown) is known neither \
         from the cluster state nor from the event; kept without knowing whether it applies to a selected endpoint"
    );

    // No state source: exit 2 naming the flag; the library says the same without a timeline.
    let e = run(&Request { cluster: None, ..req.clone() }).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--snapshot-dir: the policy-audit report of GlobalReport web-policies (its spec.endpoints selects \
         endpoints) needs --snapshot-dir, --archive or --cluster DIR"
    );
    assert_eq!(e.exit_code(), 2);
    let e =
        policy_audit::build(range(), &[log], Some(global_report("web-policies", Kind::PolicyAudit)), None).unwrap_err();
    assert!(e.to_string().starts_with("--snapshot-dir: GlobalReport web-policies: spec.endpoints"), "{e}");
    assert_eq!(e.exit_code(), 2);
    let e = run(&Request { cluster: Some("kube".into()), ..req.clone() }).unwrap_err();
    assert!(e.to_string().starts_with("--cluster: kube gives the state now"), "{e}");
    assert_eq!(e.exit_code(), 2);
    // Without a restrictive selection the state is not needed (nor read).
    let all = run(&Request { cluster: None, global_report: None, out: dir.path().join("all"), ..req }).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("all/summary.csv")).unwrap().lines().nth(1).unwrap(),
        "2026-11-20T00:00:00Z,2026-11-21T00:00:00Z,,,,,,1,0,2"
    );
}

#[test]
fn resource_ids() {
    let r = policy_audit_report();
    let ids: Vec<String> = r.events.iter().map(policy_audit::resource_id).collect();
    assert_eq!(
        ids,
        [
            "GlobalNetworkPolicy(web-only)",
            "NetworkPolicy.networking.k8s.io/v1(shop/default-deny)",
            "NetworkPolicy.networking.k8s.io/v1(shop/default-deny)",
            "GlobalNetworkPolicy(ops-egress)",
            "NetworkPolicy.networking.k8s.io/v1(shop/db-from-web)",
            "AdminNetworkPolicy.policy.networking.k8s.io/v1alpha1(batch-isolation)",
            "NetworkPolicy(db/db-ingress)",
            "NetworkPolicy.networking.k8s.io/v1(shop/default-deny)",
        ]
    );
}

// ---- shared pieces ----

#[test]
fn times_and_formats() {
    let r = TimeRange::parse("2026-11-20T01:00:00+01:00", "2026-11-20T00:30:00.5Z").unwrap();
    assert_eq!(
        (format_time(r.from), format_time(r.to)),
        ("2026-11-20T00:00:00Z".into(), "2026-11-20T00:30:00.5Z".into())
    );
    assert!(r.contains(r.from) && !r.contains(r.to));
    let e = TimeRange::parse("2026-11-20", "2026-11-21T00:00:00Z").unwrap_err();
    assert_eq!((e.exit_code(), e.to_string().starts_with("--from: \"2026-11-20\": not an RFC 3339 time")), (2, true));
    let e = TimeRange::parse("2026-11-21T00:00:00Z", "2026-11-21T00:00:00Z").unwrap_err();
    assert!(e.to_string().starts_with("--to: "), "{e}");
    assert_eq!(parse_formats("html,csv,csv").unwrap(), [Format::Csv, Format::Html]);
    assert_eq!(parse_formats("pdf").unwrap_err().to_string(), "--format: \"pdf\" is not one of csv, json, html");
    assert!(doc_index_cmp("1.2.10", "1.2.9").is_gt());
    assert!(doc_index_cmp("1.2", "1.2.1").is_lt());
    assert!(doc_index_cmp("4", "10").is_lt());
}

#[test]
fn csv_quotes_where_needed() {
    let mut t = Table::new("t.csv", &["a", "b"]);
    t.push(vec!["x, y".into(), "say \"hi\"\nbye".into()]);
    t.push(vec!["plain".into(), String::new()]);
    assert_eq!(String::from_utf8(t.to_csv()).unwrap(), "a,b\n\"x, y\",\"say \"\"hi\"\"\nbye\"\nplain,\n");
}

#[test]
fn run_writes_the_files_and_refuses_what_does_not_belong() {
    let out = tempfile::tempdir().unwrap();
    let req = Request {
        kind: Some(Kind::CisBenchmark),
        from: "2026-11-20T00:00:00Z".into(),
        to: "2026-11-21T00:00:00Z".into(),
        out: out.path().join("cis"),
        format: "csv,json,html".into(),
        cluster: Some(testdata("cluster").display().to_string()),
        kube_bench: nodes(),
        ..Default::default()
    };
    let files = run(&req).unwrap();
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        ["total-summary.csv", "node-summary.csv", "failed-tests.csv", "all-tests.csv", "report.json", "report.html"]
    );
    let data: Value = serde_json::from_slice(&std::fs::read(out.path().join("cis/report.json")).unwrap()).unwrap();
    assert_eq!(
        data["cisBenchmarkSummary"],
        serde_json::json!({"type": "kube", "highCount": 1, "medCount": 1, "lowCount": 1})
    );
    assert_eq!(data["cisBenchmark"][0]["summary"]["status"], "MED");
    assert_eq!(data["cisBenchmark"][0]["results"][0]["section"], "1.1");
    let refused = |change: &dyn Fn(&mut Request)| {
        let mut r = req.clone();
        change(&mut r);
        run(&r).unwrap_err()
    };
    assert_eq!(
        refused(&|r| r.kind = Some(Kind::NetworkAccess)).to_string(),
        "--kube-bench: is not read by the network-access report"
    );
    assert_eq!(
        refused(&|r| r.kind = Some(Kind::Inventory)).to_string(),
        "--kube-bench: is not read by the inventory report"
    );
    assert_eq!(
        refused(&|r| {
            r.kind = Some(Kind::PolicyAudit);
            r.store = Some("clickhouse://h:8123/db".into());
        })
        .to_string(),
        "--store: flows are read by the network-access and cis-benchmark reports, not policy-audit"
    );
    let e = refused(&|r| {
        r.kind = Some(Kind::Inventory);
        r.cluster = Some("kube".into());
    });
    assert!(e.to_string().starts_with("--cluster: kube gives the state now, not at the start"), "{e}");
    assert_eq!(e.exit_code(), 2);
    assert_eq!(refused(&|r| r.kube_bench.clear()).to_string(), "--kube-bench: is needed by the cis-benchmark report");
    assert_eq!(refused(&|r| r.format = "xml".into()).exit_code(), 2);
    let bad_cluster = tempfile::tempdir().unwrap();
    std::fs::write(bad_cluster.path().join("x.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: 7}\n")
        .unwrap();
    let e = refused(&|r| r.cluster = Some(bad_cluster.path().display().to_string()));
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("x.yaml: document 1: metadata.name"), "{e}");
}

// ---- HTML ----

#[test]
fn html_is_self_contained_with_one_bar_per_band() {
    let r = cis_report(Some(global_report("daily-cis", Kind::CisBenchmark)), true);
    let page = r.html(Timestamp::UNIX_EPOCH);
    assert_eq!(page.matches("<rect class=\"bar").count(), 3);
    for band in ["HIGH", "MED", "LOW"] {
        assert_eq!(page.matches(&format!("data-band=\"{band}\"")).count(), 1, "{band}");
    }
    for external in ["src=", "href=", "url(", "@import", "https:"] {
        assert!(!page.contains(external), "{external}");
    }
    // The only URI is the SVG namespace, which is a name, not a fetch.
    assert_eq!(page.matches("http:").count(), 1);
    assert!(page.contains("@media print"));
    assert!(page.contains("<h2>Top failed tests</h2>"));
    // Text is escaped.
    assert!(page.contains("--token-auth-file=&lt;filename&gt;") || !page.contains("token-auth-file"));
    let audit = policy_audit_report().html(Timestamp::UNIX_EPOCH);
    assert!(audit.contains("NetworkPolicy(db/db-ingress)") && !audit.contains("src="));
}

/// The CIS page in a real browser: it parses, the chart has exactly one bar per band, and it
/// prints to PDF.
#[test]
fn html_renders_in_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        assert!(
            std::env::var_os("FLOWAUDIT_REQUIRE_BROWSER").is_none_or(|v| v != "1"),
            "FLOWAUDIT_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install chromium)"
        );
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = cis_report(None, true);
    let page = dir.path().join("report.html");
    std::fs::write(&page, r.html(Timestamp::UNIX_EPOCH)).unwrap();
    let profile = dir.path().join("profile");
    let browser = |extra: &[String]| {
        // `timeout`: a browser that hangs fails the test instead of holding it forever.
        let out = Command::new("timeout")
            .args(["120", chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            .args(["--no-first-run", "--disable-extensions", "--disable-dev-shm-usage"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let dom = String::from_utf8(browser(&["--dump-dom".into()]).stdout).unwrap();
    // The DOM as the browser parsed it: the SVG elements are there, closed, once per band.
    assert!(dom.contains("<svg class=\"chart\" id=\"band-chart\""), "{dom}");
    assert_eq!(dom.matches("<rect class=\"bar").count(), 3, "{dom}");
    for (band, n) in [("HIGH", 1), ("MED", 1), ("LOW", 1)] {
        let tag = dom.split("<rect ").find(|t| t.contains(&format!("data-band=\"{band}\""))).unwrap();
        assert!(tag.contains(&format!("data-count=\"{n}\"")), "{tag}");
    }
    assert!(dom.contains("</rect>") && dom.contains("</svg>"));
    let pdf = dir.path().join("report.pdf");
    browser(&[format!("--print-to-pdf={}", pdf.display()), "--no-pdf-header-footer".into()]);
    let bytes = std::fs::read(&pdf).unwrap();
    assert!(bytes.starts_with(b"%PDF-") && bytes.len() > 1000, "{} bytes", bytes.len());
}
