//! The CIS benchmark report: kube-bench JSON results, one set per node, counted as Calico's
//! reporter counted them, plus the manual checks flowaudit can decide from its own data.
//!
//! Inputs: `--kube-bench FILE|DIR` (repeatable). A file is one node's results, the node named by
//! the file name (`<node>.json`), always used. A directory is searched (recursively) for
//! `*.json` files: for each node the newest file (by modification time) of the 36 hours before
//! `--to` is used, as Calico's reporter took the latest benchmark set of that window. A file
//! named explicitly wins over the directories for its node.
//!
//! kube-bench's `--json` output is read in all its shapes: `{"Controls": [...], "Totals": {...}}`,
//! a bare array of controls (`--nototals`), or several such values one after another.
//!
//! Counting (Calico's current reporter): PASS and FAIL are counted; WARN and INFO are "unknown"
//! and left out of the total; pass % = floor(100 × pass ÷ (pass + fail)), 0 when nothing
//! counted; HIGH at `highThreshold` (100) or more, MED at `medThreshold` (50) or more, else LOW.
//! Unscored tests are dropped unless `includeUnscoredTests`; `resultsFilters` as in Calico.
//!
//! Decided by flowaudit (`decidedBy: flowaudit`), manual checks that kube-bench always reports
//! WARN: with `--cluster`, 5.3.2 "Ensure that all Namespaces have NetworkPolicies defined"; with
//! flow records (`--flow-log-dir`, `--store`), 5.3.1 "Ensure that the CNI in use supports
//! NetworkPolicies": FAIL when a connection denied by policy was established anyway, PASS when
//! denied connections were dropped and none got through, undecided when none was denied; with
//! `--cluster`, 5.1.5 "Ensure that default service accounts are not actively used": FAIL when a
//! pod runs as its namespace's `default` service account (the check also wants the default
//! accounts' `automountServiceAccountToken: false`, which flowaudit does not read, so it never
//! gives PASS: without such pods the row stays as kube-bench reported it).
//! Such a row is always listed (unless a filter excludes it) but counts toward pass % only where
//! it is scored or `includeUnscoredTests` is set.
//!
//! Takes: kube-bench files and directories, the interval, optionally a GlobalReport, a cluster
//! state and flow records. Gives: a [`CisReport`]. Must never: count WARN or INFO toward pass %, change a status
//! kube-bench decided other than the checks named above, or read a file outside the inputs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Kind, NamedReport, Progress, Rendered, ReportError, Table, TimeRange, doc_index_cmp, escape,
    flows::{FlowSource, RowAction},
    format_time, html_page,
};
use crate::cluster::{
    CalicoPolicyKind, ClusterState,
    admin::Subject,
    selector::{self, NamespaceLabels, Selector, label_selector_matches},
};

/// How far back before `--to` a directory's results are taken (Calico: 1.5 × a day).
pub const WINDOW: Duration = Duration::from_secs(36 * 3600);
/// The check flowaudit decides from the cluster state.
pub const NAMESPACE_POLICY_CHECK: &str = "5.3.2";
/// The check flowaudit decides from the flow records: "Ensure that the CNI in use supports
/// NetworkPolicies".
pub const CNI_ENFORCES_CHECK: &str = "5.3.1";
/// The check flowaudit can fail from the pods of the cluster state: "Ensure that default service
/// accounts are not actively used" (decided only where the test's description says so: the
/// numbering of section 5.1 differs between benchmark versions).
pub const DEFAULT_SERVICE_ACCOUNT_CHECK: &str = "5.1.5";

/// The pods of the state that run as their namespace's `default` service account, `ns/name`,
/// sorted.
pub fn pods_on_default_service_account(state: &ClusterState) -> Vec<String> {
    let mut pods: Vec<String> = state
        .pods
        .iter()
        .filter(|p| p.service_account.is_empty() || p.service_account == "default")
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    pods.sort();
    pods
}

/// `all-tests.csv` columns (Calico's, plus `decidedBy`).
pub const ALL_TESTS_COLUMNS: &[&str] =
    &["nodeName", "testIndex", "testDescription", "status", "scored", "remediation", "decidedBy"];
/// `failed-tests.csv` columns (Calico's).
pub const FAILED_TESTS_COLUMNS: &[&str] =
    &["nodeName", "testIndex", "testDescription", "status", "scored", "remediation"];
/// `node-summary.csv` columns.
pub const NODE_SUMMARY_COLUMNS: &[&str] =
    &["node", "version", "status", "testsPassing", "testsFailing", "testsUnknown", "testsTotal"];
/// `total-summary.csv` columns.
pub const TOTAL_SUMMARY_COLUMNS: &[&str] = &[
    "startTime",
    "endTime",
    "type",
    "hiPercentThreshold",
    "medPercentThreshold",
    "hiNodeCount",
    "medNodeCount",
    "lowNodeCount",
];

/// What the report reads.
pub struct Input<'a> {
    /// The interval.
    pub range: TimeRange,
    /// `--kube-bench` files and directories.
    pub kube_bench: Vec<PathBuf>,
    /// `--global-report`, of type `cis-benchmark`.
    pub report: Option<NamedReport>,
    /// `--cluster DIR`, loaded: decides [`NAMESPACE_POLICY_CHECK`].
    pub cluster: Option<&'a ClusterState>,
    /// The directory it was loaded from (named in errors).
    pub cluster_dir: Option<PathBuf>,
    /// `--flow-log-dir` or `--store`: decides [`CNI_ENFORCES_CHECK`].
    pub flows: Option<&'a dyn FlowSource>,
}

/// What the flow records of an interval show about enforcement: denials that held, and
/// denials that did not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enforcement {
    /// Connections in denied records that only attempted (no answer at all): the denial held.
    pub held: u64,
    /// Connections in denied records that were established anyway.
    pub violations: u64,
    /// One violation, for the remediation (the least by name): `ops/monitor to shop/db`.
    pub example: Option<String>,
}

impl Enforcement {
    /// Reads the denied records of `range` (each denial from the side that denied it).
    pub fn read(flows: &dyn FlowSource, range: TimeRange) -> Result<Enforcement, ReportError> {
        let mut e = Enforcement::default();
        flows.scan(range, &mut |row| {
            if row.action != RowAction::Deny {
                return;
            }
            // Refused (RST, ICMP unreachable) is not counted: the packets may have reached the
            // destination, which refused them (a closed port), so that proves nothing either way.
            e.held += row.num_attempted;
            e.violations += row.num_violations;
            // The example is the least by name, so files and a store (rows in any order) agree.
            if row.num_violations > 0 {
                let end = |ns: &str, name: &str, aggr: &str| {
                    let name = if name == "-" { aggr } else { name };
                    if ns == "-" { name.to_owned() } else { format!("{ns}/{name}") }
                };
                let example = format!(
                    "{} to {}",
                    end(&row.source_namespace, &row.source_name, &row.source_name_aggr),
                    end(&row.dest_namespace, &row.dest_name, &row.dest_name_aggr)
                );
                if e.example.as_ref().is_none_or(|least| example < *least) {
                    e.example = Some(example);
                }
            }
        })?;
        Ok(e)
    }

    /// The check's status and the line added to its remediation, or `None` when the records
    /// show no denial (nothing to judge by).
    fn decide(&self) -> Option<(Status, String)> {
        if self.violations > 0 {
            let example = self.example.as_deref().map(|e| format!(", e.g. {e}")).unwrap_or_default();
            Some((
                Status::Fail,
                format!(
                    "Flow logs: {} connections denied by policy were established anyway (enforcement violations{example}); \
                     {} denied connections were dropped.",
                    self.violations, self.held
                ),
            ))
        } else if self.held > 0 {
            Some((
                Status::Pass,
                format!("Flow logs: {} connections denied by policy were dropped, none established.", self.held),
            ))
        } else {
            None
        }
    }
}

/// A kube-bench status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Passed.
    Pass,
    /// Failed.
    Fail,
    /// Manual, or an unscored test that failed.
    Warn,
    /// Skipped.
    Info,
}

impl Status {
    /// `PASS`, `FAIL`, `WARN`, `INFO`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Warn => "WARN",
            Self::Info => "INFO",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "PASS" => Self::Pass,
            "FAIL" => Self::Fail,
            "WARN" => Self::Warn,
            "INFO" => Self::Info,
            _ => return None,
        })
    }
}

/// A node's band.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Band {
    /// pass % ≥ highThreshold.
    High,
    /// pass % ≥ medThreshold.
    Med,
    /// Below.
    Low,
}

impl Band {
    /// `HIGH`, `MED`, `LOW`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "HIGH",
            Self::Med => "MED",
            Self::Low => "LOW",
        }
    }

    /// The band of `percent` under the thresholds.
    pub fn of(percent: u64, high: i64, med: i64) -> Self {
        let p = i64::try_from(percent).unwrap_or(i64::MAX);
        if p >= high {
            Self::High
        } else if p >= med {
            Self::Med
        } else {
            Self::Low
        }
    }
}

/// Who decided a test's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// kube-bench (its status as written).
    KubeBench,
    /// flowaudit, from the cluster state.
    Flowaudit,
}

impl DecidedBy {
    /// `kube-bench`, `flowaudit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KubeBench => "kube-bench",
            Self::Flowaudit => "flowaudit",
        }
    }
}

/// One test of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct TestResult {
    /// Section id: `1.1`.
    pub section: String,
    /// Section description.
    pub section_desc: String,
    /// Test number: `1.1.1`.
    pub number: String,
    /// Description.
    pub desc: String,
    /// Status.
    pub status: Status,
    /// kube-bench's `scored`.
    pub scored: bool,
    /// `test_info[0]` (kube-bench appends the remediation to it), else `remediation`.
    pub remediation: String,
    /// Who decided the status.
    pub decided_by: DecidedBy,
    /// Whether it counts toward pass %.
    pub counted: bool,
}

/// One node's results.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeResult {
    /// Node name (from the file name).
    pub node: String,
    /// kube-bench's `detected_version` (the Kubernetes version).
    pub version: String,
    /// kube-bench's `version` (the benchmark: `cis-1.10`).
    pub benchmark: String,
    /// The file read.
    pub file: PathBuf,
    /// Tests listed, in document order.
    pub tests: Vec<TestResult>,
    /// Counted PASS.
    pub pass: u64,
    /// Counted FAIL.
    pub fail: u64,
    /// Counted WARN and INFO.
    pub unknown: u64,
    /// floor(100 × pass ÷ (pass + fail)), 0 when nothing counted.
    pub percent: u64,
    /// The band.
    pub band: Band,
}

/// A test failing on nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedTest {
    /// Test number.
    pub number: String,
    /// Description.
    pub desc: String,
    /// On how many nodes it failed.
    pub count: u64,
}

/// The report.
#[derive(Clone, Debug)]
pub struct CisReport {
    /// The interval.
    pub range: TimeRange,
    /// The GlobalReport, if any.
    pub report: Option<NamedReport>,
    /// highThreshold.
    pub high: i64,
    /// medThreshold.
    pub med: i64,
    /// numFailedTests.
    pub num_failed_tests: usize,
    /// Nodes by name.
    pub nodes: Vec<NodeResult>,
    /// What was odd but not wrong (printed to stderr).
    pub warnings: Vec<String>,
}

// kube-bench's JSON (check/controls.go, check/check.go); fields not named are ignored.
#[derive(Deserialize)]
struct Overall {
    #[serde(rename = "Controls", default, deserialize_with = "crate::cluster::null_as_default")]
    controls: Vec<Controls>,
}

#[derive(Deserialize)]
struct Controls {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    detected_version: Option<String>,
    #[serde(default, deserialize_with = "crate::cluster::null_as_default")]
    tests: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    section: String,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default, deserialize_with = "crate::cluster::null_as_default")]
    results: Vec<Check>,
}

#[derive(Deserialize)]
struct Check {
    test_number: String,
    #[serde(default)]
    test_desc: String,
    status: String,
    #[serde(default)]
    scored: bool,
    #[serde(default)]
    remediation: Option<String>,
    #[serde(default, deserialize_with = "crate::cluster::null_as_default")]
    test_info: Vec<String>,
}

/// One node's results as kube-bench wrote them.
#[derive(Clone, Debug, PartialEq)]
pub struct KubeBench {
    /// `detected_version` of the first control that has one.
    pub version: String,
    /// `version` of the first control that has one.
    pub benchmark: String,
    /// Every test, in file order (a repeated test number keeps its first result).
    pub tests: Vec<TestResult>,
    /// Test numbers seen twice.
    pub duplicates: Vec<String>,
}

/// Reads one kube-bench JSON file.
pub fn read_kube_bench(file: &Path) -> Result<KubeBench, ReportError> {
    let bytes = std::fs::read(file).map_err(|e| ReportError::input(file, "-", e))?;
    parse_kube_bench(file, &bytes)
}

/// Parses kube-bench JSON (`file` is named in errors).
pub fn parse_kube_bench(file: &Path, bytes: &[u8]) -> Result<KubeBench, ReportError> {
    let mut controls: Vec<(String, Controls)> = Vec::new();
    let mut values = 0;
    for (i, value) in serde_json::Deserializer::from_slice(bytes).into_iter::<Value>().enumerate() {
        let value = value.map_err(|e| ReportError::input(file, "-", format!("not kube-bench JSON: {e}")))?;
        values += 1;
        let prefix = if i == 0 { String::new() } else { format!("value {}: ", i + 1) };
        let field = |path: String| format!("{prefix}{path}");
        let err = |e: serde_path_to_error::Error<serde_json::Error>| {
            ReportError::input(file, field(e.path().to_string()), e.into_inner())
        };
        match &value {
            Value::Object(o) if o.contains_key("Controls") => {
                let overall: Overall = serde_path_to_error::deserialize(&value).map_err(err)?;
                controls.extend(
                    overall.controls.into_iter().enumerate().map(|(j, c)| (field(format!("Controls[{j}]")), c)),
                );
            }
            Value::Array(_) => {
                let list: Vec<Controls> = serde_path_to_error::deserialize(&value).map_err(err)?;
                controls.extend(list.into_iter().enumerate().map(|(j, c)| (field(format!("[{j}]")), c)));
            }
            Value::Object(o) if o.contains_key("tests") => {
                let one: Controls = serde_path_to_error::deserialize(&value).map_err(err)?;
                controls.push((field(String::new()), one));
            }
            _ => {
                return Err(ReportError::input(
                    file,
                    field("-".into()),
                    "not kube-bench JSON output (no \"Controls\", not an array of controls)",
                ));
            }
        }
    }
    if values == 0 {
        return Err(ReportError::input(file, "-", "empty: no kube-bench JSON"));
    }
    let mut out =
        KubeBench { version: String::new(), benchmark: String::new(), tests: Vec::new(), duplicates: Vec::new() };
    let mut seen = BTreeSet::new();
    for (path, c) in controls {
        if out.version.is_empty() {
            out.version = c.detected_version.unwrap_or_default();
        }
        if out.benchmark.is_empty() {
            out.benchmark = c.version.unwrap_or_default();
        }
        for (g, group) in c.tests.into_iter().enumerate() {
            for (r, check) in group.results.into_iter().enumerate() {
                let at = |f: &str| {
                    let dot = if path.is_empty() { "" } else { "." };
                    format!("{path}{dot}tests[{g}].results[{r}].{f}")
                };
                let status = Status::parse(&check.status).ok_or_else(|| {
                    ReportError::input(
                        file,
                        at("status"),
                        format!("{:?} is not PASS, FAIL, WARN or INFO", check.status),
                    )
                })?;
                if check.test_number.trim().is_empty() {
                    return Err(ReportError::input(file, at("test_number"), "is empty"));
                }
                if !seen.insert(check.test_number.clone()) {
                    out.duplicates.push(check.test_number);
                    continue;
                }
                let remediation =
                    check.test_info.into_iter().next().or(check.remediation).unwrap_or_default().trim_end().to_owned();
                out.tests.push(TestResult {
                    section: group.section.clone(),
                    section_desc: group.desc.clone().unwrap_or_default(),
                    number: check.test_number,
                    desc: check.test_desc,
                    status,
                    scored: check.scored,
                    remediation,
                    decided_by: DecidedBy::KubeBench,
                    counted: true,
                });
            }
        }
    }
    Ok(out)
}

/// The file chosen for a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// Node name.
    pub node: String,
    /// The file.
    pub file: PathBuf,
}

/// The node name of a result file: its name without `.json`.
fn node_of(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let node = name.strip_suffix(".json").unwrap_or(name);
    (!node.is_empty()).then(|| node.to_owned())
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReportError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ReportError::input(dir, "-", e))?;
    let mut paths: Vec<PathBuf> =
        entries.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(|e| ReportError::input(dir, "-", e))?;
    paths.sort();
    for path in paths {
        if path.is_dir() {
            json_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// Chooses each node's file: named files as they are; in directories the newest `*.json` per
/// node modified in `[to − 36 h, to]`. Sorted by node.
pub fn choose(inputs: &[PathBuf], to: Timestamp) -> Result<Vec<Chosen>, ReportError> {
    let end = SystemTime::from(to);
    let start = end.checked_sub(WINDOW).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut named: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut found: BTreeMap<String, (SystemTime, PathBuf)> = BTreeMap::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| ReportError::input(input, "-", e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            json_files(input, &mut files)?;
            for file in files {
                let modified = std::fs::metadata(&file)
                    .and_then(|m| m.modified())
                    .map_err(|e| ReportError::input(&file, "-", e))?;
                if modified < start || modified > end {
                    continue;
                }
                let node = node_of(&file).expect("a *.json file has a name");
                match found.get(&node) {
                    Some((t, _)) if *t >= modified => {}
                    _ => {
                        found.insert(node, (modified, file));
                    }
                }
            }
        } else {
            let node = node_of(input).ok_or_else(|| ReportError::input(input, "-", "no node name in the file name"))?;
            if let Some(first) = named.get(&node) {
                return Err(ReportError::input(
                    input,
                    "-",
                    format!("node {node:?} is also named by {}: name one file per node", first.display()),
                ));
            }
            named.insert(node, input.clone());
        }
    }
    for (node, (_, file)) in found {
        named.entry(node).or_insert(file);
    }
    Ok(named.into_iter().map(|(node, file)| Chosen { node, file }).collect())
}

/// The namespaces of the state that no enforced policy is defined for: a Kubernetes or Calico
/// NetworkPolicy in it, or a GlobalNetworkPolicy, AdminNetworkPolicy or
/// BaselineAdminNetworkPolicy selecting it. Namespaces are the Namespace objects and the
/// namespaces of Pods, Services and ServiceAccounts. `None` when the state has no namespaces.
pub fn namespaces_without_policy(state: &ClusterState, dir: &Path) -> Result<Option<Vec<String>>, ReportError> {
    let mut namespaces: BTreeMap<String, crate::cluster::Labels> =
        state.namespaces.iter().map(|(n, ns)| (n.clone(), ns.labels.clone())).collect();
    for n in state
        .pods
        .iter()
        .map(|p| &p.namespace)
        .chain(state.services.iter().map(|s| &s.namespace))
        .chain(state.service_accounts.iter().map(|s| &s.namespace))
    {
        namespaces.entry(n.clone()).or_default();
    }
    if namespaces.is_empty() {
        return Ok(None);
    }
    let mut covered: BTreeSet<String> = BTreeSet::new();
    covered.extend(state.network_policies.iter().map(|p| p.namespace.clone()));
    covered.extend(
        state
            .calico_policies
            .iter()
            .filter(|p| p.kind == CalicoPolicyKind::NetworkPolicy)
            .filter_map(|p| p.namespace.clone()),
    );
    let parse = |kind: &str, name: &str, field: &str, text: &str| {
        Selector::parse(text).map_err(|e: selector::SelectorError| {
            ReportError::input(dir, format!("{kind} {name}: {field}"), format!("{text:?}: {e}"))
        })
    };
    for p in state.calico_policies.iter().filter(|p| p.kind == CalicoPolicyKind::GlobalNetworkPolicy) {
        let ns_sel = p.spec.namespace_selector.as_deref().filter(|s| !s.trim().is_empty());
        match ns_sel {
            Some(text) => {
                let sel = parse("GlobalNetworkPolicy", &p.name, "spec.namespaceSelector", text)?;
                if sel.is_global() {
                    continue;
                }
                for (name, labels) in &namespaces {
                    if sel.matches(&NamespaceLabels { name, labels }) {
                        covered.insert(name.clone());
                    }
                }
            }
            None => {
                // No namespace selector: the policy is defined for every namespace only when it
                // selects every endpoint (a selector naming labels selects some pods, anywhere).
                let all = match p.spec.selector.as_deref() {
                    None => true,
                    Some(text) => parse("GlobalNetworkPolicy", &p.name, "spec.selector", text)?.is_all(),
                };
                if all {
                    covered.extend(namespaces.keys().cloned());
                }
            }
        }
    }
    let subjects = state
        .admin_policies
        .iter()
        .map(|p| &p.spec.subject)
        .chain(state.baseline_admin_policy.iter().map(|p| &p.spec.subject));
    for subject in subjects {
        let sel = match subject {
            Subject::Namespaces(s) => s,
            Subject::Pods(p) => &p.namespace_selector,
        };
        for (name, labels) in &namespaces {
            let mut labels = labels.clone();
            labels.entry("kubernetes.io/metadata.name".into()).or_insert_with(|| name.clone());
            if label_selector_matches(sel, &labels) {
                covered.insert(name.clone());
            }
        }
    }
    Ok(Some(namespaces.into_keys().filter(|n| !covered.contains(n)).collect()))
}

/// The filter of one node (Calico's testFilter).
struct Filter {
    include_unscored: bool,
    /// Test numbers and section ids: true include, false exclude.
    includes: Option<HashMap<String, bool>>,
    excludes_only: bool,
}

impl Filter {
    fn for_node(report: Option<&NamedReport>, version: &str) -> Self {
        let cis = report.and_then(|r| r.spec.cis.as_ref());
        let include_unscored = cis.is_some_and(|c| c.include_unscored_tests);
        let chosen = cis.and_then(|c| {
            c.results_filters.iter().find(|f| {
                match f.benchmark_selection.as_ref().and_then(|b| b.kubernetes_version.as_deref()) {
                    None | Some("") => true,
                    Some(v) => version == v || version.strip_prefix(v).is_some_and(|rest| rest.starts_with('.')),
                }
            })
        });
        let mut includes = None;
        let mut excludes_only = false;
        if let Some(f) = chosen.filter(|f| !f.include.is_empty() || !f.exclude.is_empty()) {
            let mut map = HashMap::new();
            for e in &f.exclude {
                map.insert(e.clone(), false);
            }
            for i in &f.include {
                map.insert(i.clone(), true);
            }
            includes = Some(map);
            excludes_only = f.include.is_empty();
        }
        Self { include_unscored, includes, excludes_only }
    }

    /// Whether the test is listed. Unscored tests decided by flowaudit are listed even when
    /// unscored tests are not included (they are then not counted).
    fn lists(&self, t: &TestResult) -> bool {
        if self.include_unscored && self.includes.is_none() {
            return true;
        }
        if !t.scored && !self.include_unscored && t.decided_by == DecidedBy::KubeBench {
            return false;
        }
        let Some(includes) = &self.includes else { return true };
        if let Some(inc) = includes.get(&t.number) {
            return *inc;
        }
        if let Some(inc) = includes.get(&t.section) {
            return *inc;
        }
        self.excludes_only
    }

    fn counts(&self, t: &TestResult) -> bool {
        t.scored || self.include_unscored
    }
}

/// floor(100 × pass ÷ (pass + fail)); 0 when nothing counted (as Calico).
pub fn percent(pass: u64, fail: u64) -> u64 {
    (100 * pass).checked_div(pass + fail).unwrap_or(0)
}

/// Reads the chosen files and computes the report.
pub fn build(input: &Input<'_>) -> Result<CisReport, ReportError> {
    let cis = input.report.as_ref().and_then(|r| r.spec.cis.as_ref());
    let high = cis.and_then(|c| c.high_threshold).unwrap_or(100);
    let med = cis.and_then(|c| c.med_threshold).unwrap_or(50);
    let num_failed_tests = cis.and_then(|c| c.num_failed_tests).map_or(5, |n| usize::try_from(n).unwrap_or(5));
    let mut warnings = Vec::new();

    let decision = match (input.cluster, &input.cluster_dir) {
        (Some(state), dir) => {
            let dir = dir.clone().unwrap_or_default();
            let d = namespaces_without_policy(state, &dir)?;
            if d.is_none() {
                warnings.push(format!(
                    "{}: no namespaces in the cluster state: {NAMESPACE_POLICY_CHECK} is left as kube-bench reported it",
                    dir.display()
                ));
            }
            d
        }
        (None, _) => None,
    };

    let default_sa_pods = input.cluster.map(pods_on_default_service_account).filter(|p| !p.is_empty());

    let enforcement = match input.flows {
        Some(flows) => {
            let e = Enforcement::read(flows, input.range)?;
            let d = e.decide();
            if d.is_none() {
                warnings.push(format!(
                    "{}: no denied connection in the interval: {CNI_ENFORCES_CHECK} is left as kube-bench reported it",
                    flows.describe()
                ));
            }
            d
        }
        None => None,
    };

    let chosen = choose(&input.kube_bench, input.range.to)?;
    if chosen.is_empty() {
        warnings.push(format!(
            "no kube-bench results: no file named, and no *.json in the directories modified in the 36 h before {}",
            format_time(input.range.to)
        ));
    }
    let mut progress = Progress::new("reading kube-bench results");
    let mut nodes = Vec::new();
    for (i, c) in chosen.iter().enumerate() {
        progress.tick(i as u64, "files");
        let bench = read_kube_bench(&c.file)?;
        for d in &bench.duplicates {
            warnings.push(format!("{}: test {d} appears more than once: the first result is used", c.file.display()));
        }
        let filter = Filter::for_node(input.report.as_ref(), &bench.version);
        let mut tests = Vec::new();
        for mut t in bench.tests {
            if t.number == NAMESPACE_POLICY_CHECK
                && let Some(without) = &decision
            {
                t.decided_by = DecidedBy::Flowaudit;
                if without.is_empty() {
                    t.status = Status::Pass;
                } else {
                    t.status = Status::Fail;
                    let list = without.join(";");
                    t.remediation = if t.remediation.is_empty() {
                        format!("Namespaces without a NetworkPolicy: {list}")
                    } else {
                        format!("{}\nNamespaces without a NetworkPolicy: {list}", t.remediation)
                    };
                }
            }
            if t.number == DEFAULT_SERVICE_ACCOUNT_CHECK
                && t.desc.to_ascii_lowercase().contains("default service account")
                && let Some(pods) = &default_sa_pods
            {
                t.decided_by = DecidedBy::Flowaudit;
                t.status = Status::Fail;
                let evidence = format!("Pods running as the default service account: {}", pods.join(";"));
                t.remediation =
                    if t.remediation.is_empty() { evidence } else { format!("{}\n{evidence}", t.remediation) };
            }
            if t.number == CNI_ENFORCES_CHECK
                && let Some((status, evidence)) = &enforcement
            {
                t.decided_by = DecidedBy::Flowaudit;
                t.status = *status;
                t.remediation =
                    if t.remediation.is_empty() { evidence.clone() } else { format!("{}\n{evidence}", t.remediation) };
            }
            if !filter.lists(&t) {
                continue;
            }
            t.counted = filter.counts(&t);
            tests.push(t);
        }
        tests.sort_by(|a, b| doc_index_cmp(&a.section, &b.section).then_with(|| doc_index_cmp(&a.number, &b.number)));
        let count = |s: &[Status]| tests.iter().filter(|t| t.counted && s.contains(&t.status)).count() as u64;
        let (pass, fail, unknown) =
            (count(&[Status::Pass]), count(&[Status::Fail]), count(&[Status::Warn, Status::Info]));
        let percent = percent(pass, fail);
        nodes.push(NodeResult {
            node: c.node.clone(),
            version: bench.version,
            benchmark: bench.benchmark,
            file: c.file.clone(),
            tests,
            pass,
            fail,
            unknown,
            percent,
            band: Band::of(percent, high, med),
        });
    }
    progress.finish();
    Ok(CisReport { range: input.range, report: input.report.clone(), high, med, num_failed_tests, nodes, warnings })
}

impl CisReport {
    /// Nodes per band: HIGH, MED, LOW.
    pub fn band_counts(&self) -> [(Band, u64); 3] {
        let n = |b: Band| self.nodes.iter().filter(|n| n.band == b).count() as u64;
        [(Band::High, n(Band::High)), (Band::Med, n(Band::Med)), (Band::Low, n(Band::Low))]
    }

    /// The `numFailedTests` tests failing on the most nodes (then in document order).
    pub fn top_failed(&self) -> Vec<FailedTest> {
        let mut by: BTreeMap<String, FailedTest> = BTreeMap::new();
        for t in self.nodes.iter().flat_map(|n| &n.tests).filter(|t| t.status == Status::Fail) {
            by.entry(t.number.clone())
                .or_insert_with(|| FailedTest { number: t.number.clone(), desc: t.desc.clone(), count: 0 })
                .count += 1;
        }
        let mut list: Vec<FailedTest> = by.into_values().collect();
        list.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| doc_index_cmp(&a.number, &b.number)));
        list.truncate(self.num_failed_tests);
        list
    }

    /// `total-summary.csv`.
    pub fn total_summary(&self) -> Table {
        let mut t = Table::new("total-summary.csv", TOTAL_SUMMARY_COLUMNS);
        let [(_, h), (_, m), (_, l)] = self.band_counts();
        t.push(vec![
            format_time(self.range.from),
            format_time(self.range.to),
            "kube".into(),
            self.high.to_string(),
            self.med.to_string(),
            h.to_string(),
            m.to_string(),
            l.to_string(),
        ]);
        t
    }

    /// `node-summary.csv`.
    pub fn node_summary(&self) -> Table {
        let mut t = Table::new("node-summary.csv", NODE_SUMMARY_COLUMNS);
        for n in &self.nodes {
            t.push(vec![
                n.node.clone(),
                n.version.clone(),
                n.band.as_str().into(),
                n.pass.to_string(),
                n.fail.to_string(),
                n.unknown.to_string(),
                (n.pass + n.fail).to_string(),
            ]);
        }
        t
    }

    fn tests_table(&self, name: &'static str, header: &'static [&'static str], failed_only: bool) -> Table {
        let mut table = Table::new(name, header);
        for n in &self.nodes {
            for t in n.tests.iter().filter(|t| !failed_only || t.status == Status::Fail) {
                let mut row = vec![
                    n.node.clone(),
                    t.number.clone(),
                    t.desc.clone(),
                    t.status.as_str().into(),
                    t.scored.to_string(),
                    t.remediation.clone(),
                ];
                if header.len() == ALL_TESTS_COLUMNS.len() {
                    row.push(t.decided_by.as_str().into());
                }
                table.push(row);
            }
        }
        table
    }

    /// `failed-tests.csv`.
    pub fn failed_tests(&self) -> Table {
        self.tests_table("failed-tests.csv", FAILED_TESTS_COLUMNS, true)
    }

    /// `all-tests.csv`.
    pub fn all_tests(&self) -> Table {
        self.tests_table("all-tests.csv", ALL_TESTS_COLUMNS, false)
    }

    /// The SVG bar chart of nodes per band: exactly one `rect.bar` per band.
    pub fn band_chart(&self) -> String {
        let counts = self.band_counts();
        let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
        let (width, height, top, bottom, bar) = (480u64, 220u64, 24u64, 40u64, 90u64);
        let plot = height - top - bottom;
        let mut svg = format!(
            r#"<svg class="chart" id="band-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" aria-label="Nodes per band">"#
        );
        let _ = write!(
            svg,
            r##"<line x1="40" y1="{y}" x2="{x2}" y2="{y}" stroke="#8a93a6"/>"##,
            y = top + plot,
            x2 = width - 20
        );
        for (i, (band, n)) in counts.iter().enumerate() {
            let h = plot * n / max;
            let x = 70 + i as u64 * 140;
            let y = top + plot - h;
            let label = match band {
                Band::High => format!("HIGH (≥ {}%)", self.high),
                Band::Med => format!("MED (≥ {}%)", self.med),
                Band::Low => format!("LOW (< {}%)", self.med),
            };
            let _ = write!(
                svg,
                r#"<rect class="bar band-{b}" data-band="{b}" data-count="{n}" x="{x}" y="{y}" width="{bar}" height="{h}"><title>{b}: {n} nodes</title></rect><text x="{tx}" y="{ny}" text-anchor="middle">{n}</text><text x="{tx}" y="{ly}" text-anchor="middle">{label}</text>"#,
                b = band.as_str(),
                tx = x + bar / 2,
                ny = y.saturating_sub(6).max(12),
                ly = top + plot + 18,
                label = escape(&label),
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

impl Rendered for CisReport {
    fn kind(&self) -> Kind {
        Kind::CisBenchmark
    }

    fn exported(&self) -> Vec<Table> {
        vec![self.total_summary(), self.node_summary(), self.all_tests()]
    }

    fn download_files(&self) -> Vec<(String, Vec<u8>)> {
        [self.total_summary(), self.node_summary(), self.failed_tests(), self.all_tests()]
            .into_iter()
            .map(|t| (t.name.to_owned(), t.to_csv()))
            .collect()
    }

    fn report_data(&self, generated: Timestamp) -> Value {
        let [(_, h), (_, m), (_, l)] = self.band_counts();
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                let mut sections: Vec<(String, String, Vec<&TestResult>)> = Vec::new();
                for t in &n.tests {
                    match sections.last_mut() {
                        Some((s, _, list)) if *s == t.section => list.push(t),
                        _ => sections.push((t.section.clone(), t.section_desc.clone(), vec![t])),
                    }
                }
                let results: Vec<Value> = sections
                    .into_iter()
                    .map(|(section, desc, tests)| {
                        let c =
                            |s: &[Status]| tests.iter().filter(|t| t.counted && s.contains(&t.status)).count() as u64;
                        let (pass, fail, info) =
                            (c(&[Status::Pass]), c(&[Status::Fail]), c(&[Status::Warn, Status::Info]));
                        let p = percent(pass, fail);
                        json!({
                            "status": Band::of(p, self.high, self.med).as_str(),
                            "section": section,
                            "desc": desc,
                            "pass": pass,
                            "fail": fail,
                            "info": info,
                            "results": tests.iter().map(|t| json!({
                                "testNumber": t.number,
                                "testDesc": t.desc,
                                "testInfo": t.remediation,
                                "status": t.status.as_str(),
                                "scored": t.scored,
                                "decidedBy": t.decided_by.as_str(),
                                "counted": t.counted,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({
                    "nodeName": n.node,
                    "kubernetesVersion": n.version,
                    "benchmarksVersion": n.benchmark,
                    "summary": {
                        "status": n.band.as_str(),
                        "totalPass": n.pass,
                        "totalFail": n.fail,
                        "totalInfo": n.unknown,
                        "total": n.pass + n.fail,
                    },
                    "results": results,
                })
            })
            .collect();
        json!({
            "reportName": self.report.as_ref().map_or("", |r| r.name.as_str()),
            "reportTypeName": Kind::CisBenchmark.as_str(),
            "reportSpec": self.report.as_ref().map_or_else(|| json!({"reportType": Kind::CisBenchmark.as_str()}), |r| r.raw_spec.clone()),
            "startTime": format_time(self.range.from),
            "endTime": format_time(self.range.to),
            "generationTime": format_time(generated),
            "cisBenchmark": nodes,
            "cisBenchmarkSummary": {"type": "kube", "highCount": h, "medCount": m, "lowCount": l},
        })
    }

    fn html(&self, generated: Timestamp) -> String {
        let mut body = String::new();
        body.push_str("<h2>Summary</h2>");
        body.push_str(&self.total_summary().to_html(None));
        body.push_str("<h2>Nodes per band</h2>");
        body.push_str(&self.band_chart());
        let _ = write!(
            body,
            "<p class=\"note\">A node's pass % is passing ÷ (passing + failing) of its counted tests; WARN and INFO are \
             unknown and not counted. {} nodes.</p>",
            self.nodes.len()
        );
        body.push_str("<h2>Top failed tests</h2>");
        let mut top = Table::new("top failed tests", &["testIndex", "testDescription", "failedCount"]);
        for f in self.top_failed() {
            top.push(vec![f.number, f.desc, f.count.to_string()]);
        }
        if top.rows.is_empty() {
            body.push_str("<p>No test failed.</p>");
        } else {
            body.push_str(&top.to_html(None));
        }
        body.push_str("<h2>Nodes</h2>");
        body.push_str(&self.node_summary().to_html(None));
        body.push_str("<h2>Failed tests</h2>");
        body.push_str(&self.failed_tests().to_html(None));
        body.push_str("<h2>All tests</h2>");
        body.push_str(&self.all_tests().to_html(None));
        let _ = write!(
            body,
            "<footer>Generated by flowaudit {} at {} from kube-bench results{}.</footer>",
            env!("CARGO_PKG_VERSION"),
            format_time(generated),
            {
                let decided: BTreeSet<&str> = self
                    .nodes
                    .iter()
                    .flat_map(|n| &n.tests)
                    .filter(|t| t.decided_by == DecidedBy::Flowaudit)
                    .map(|t| t.number.as_str())
                    .collect();
                let from = |check: &str, what: &str| decided.contains(check).then(|| format!("{check} from {what}"));
                let parts: Vec<String> =
                    [from(NAMESPACE_POLICY_CHECK, "the cluster state"), from(CNI_ENFORCES_CHECK, "the flow logs")]
                        .into_iter()
                        .flatten()
                        .collect();
                if parts.is_empty() { String::new() } else { format!("; decided by flowaudit: {}", parts.join(", ")) }
            }
        );
        let title = match &self.report {
            Some(r) => format!("CIS benchmark report: {}", r.name),
            None => "CIS benchmark report".to_owned(),
        };
        html_page(&title, &format!("{} to {}", format_time(self.range.from), format_time(self.range.to)), &body)
    }
}
