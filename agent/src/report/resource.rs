//! The GlobalReport resource (`flowaudit.io/v1`, cluster-scoped): Calico's GlobalReport spec and
//! status as Rust types, and the CustomResourceDefinition made from them.
//!
//! Takes: nothing (types only). Gives: [`GlobalReport`] (the `kube` resource, for the reporter's
//! API calls), [`GlobalReportSpec`] (what `flowaudit report --global-report` reads, in either
//! `flowaudit.io/v1` or Calico's `projectcalico.org/v3`: the spec is the same),
//! [`GlobalReportStatus`], and [`crd_files`] (the CRD's YAML, written by `cargo xtask crdgen` to
//! `deploy/base/crds/`, compared with that file by a unit test).
//! Must never: do I/O, or use a schema feature a 1.20 API server refuses (CEL rules,
//! `x-kubernetes-validations`): cross-field rules (`highThreshold` > `medThreshold`) are checked
//! by [`super::NamedReport::load`] and by the reporter ([`crate::reporter`]).
//!
//! The field order is part of the error messages (`expected one of ...` lists the fields in the
//! order they are declared): keep it.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Time};
use kube::{CustomResource, CustomResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The spec of a GlobalReport (Calico's fields): which report, over which endpoints, when.
// Two `printcolumn(...)` with `type_ = "string"` are two columns, not a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "flowaudit.io",
    version = "v1",
    kind = "GlobalReport",
    plural = "globalreports",
    singular = "globalreport",
    status = "GlobalReportStatus",
    derive = "PartialEq",
    doc = "A compliance report scheduled by flowaudit's reporter (Calico's GlobalReport spec).",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.reportType", description = "The report type"),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.schedule",
        description = "Cron schedule (UTC)"
    ),
    printcolumn(
        name = "Suspend",
        type_ = "boolean",
        json_path = ".spec.suspend",
        description = "No new reports while true"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalReportSpec {
    /// The report type: `inventory`, `network-access`, `policy-audit` or `cis-benchmark`.
    #[schemars(length(min = 1))]
    pub report_type: String,
    /// The endpoints in scope; all endpoints when unset. The selector, namespaces and service
    /// accounts are ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointsSelection>,
    /// A 5-field cron schedule, in UTC: each tick ends one report's interval and starts the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Node selector of Calico's report jobs; accepted for compatibility, not used by flowaudit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_node_selector: Option<BTreeMap<String, String>>,
    /// No new reports while true; reports already running finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// The CIS benchmark settings (report type `cis-benchmark`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cis: Option<CisSpec>,
}

/// `spec.endpoints`: selector, namespaces and service accounts, ANDed.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointsSelection {
    /// A Calico selector over endpoint labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Namespaces by name and/or selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamesAndLabelsMatch>,
    /// Service accounts by name and/or selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<NamesAndLabelsMatch>,
}

impl EndpointsSelection {
    /// Whether it selects anything less than everything.
    pub fn is_restrictive(&self) -> bool {
        let m = |n: &Option<NamesAndLabelsMatch>| {
            n.as_ref()
                .is_some_and(|n| !n.names.is_empty() || n.selector.as_deref().is_some_and(|s| !s.trim().is_empty()))
        };
        self.selector.as_deref().is_some_and(|s| !s.trim().is_empty())
            || m(&self.namespaces)
            || m(&self.service_accounts)
    }
}

/// Names and a selector, ANDed.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamesAndLabelsMatch {
    /// Names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// A Calico selector over labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// `spec.cis`: how nodes are banded and which tests are reported.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CisSpec {
    /// A node is HIGH at this pass % or more (default 100); must be greater than medThreshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub high_threshold: Option<i64>,
    /// A node is MED at this pass % or more (default 50), LOW below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub med_threshold: Option<i64>,
    /// Whether unscored tests are reported and counted (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_unscored_tests: bool,
    /// How many tests the "top failed tests" list shows (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub num_failed_tests: Option<i64>,
    /// Test filters by Kubernetes version; the first that matches a node applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results_filters: Vec<CisFilter>,
}

/// One of `spec.cis.resultsFilters`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CisFilter {
    /// Which nodes it applies to (all when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benchmark_selection: Option<BenchmarkSelection>,
    /// Test numbers or section ids to leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Test numbers or section ids to keep (then nothing else is kept); wins over `exclude`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
}

/// `benchmarkSelection`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BenchmarkSelection {
    /// A version prefix: `1.28` matches 1.28 and 1.28.x.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
}

/// The status of a GlobalReport (Calico's fields), written by the reporter.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GlobalReportStatus {
    /// The last reports that were made, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_successful_report_jobs: Vec<CompletedReportJob>,
    /// The last reports that failed, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_failed_report_jobs: Vec<CompletedReportJob>,
    /// The reports being made now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_report_jobs: Vec<ReportJob>,
    /// The report scheduled last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_report_job: Option<ReportJob>,
}

/// One report run: its interval and, where a Job made it, that Job.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportJob {
    /// Start of the report's interval.
    pub start: Time,
    /// End of the report's interval.
    pub end: Time,
    /// The Job that made the report (Calico's; unset where flowaudit's reporter made it itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<ObjectReference>,
}

/// A finished report run.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompletedReportJob {
    /// Start of the report's interval.
    pub start: Time,
    /// End of the report's interval.
    pub end: Time,
    /// The Job that made the report (Calico's; unset where flowaudit's reporter made it itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<ObjectReference>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_completion_time: Option<Time>,
}

/// The API versions a GlobalReport is read at: flowaudit's, and Calico's (same spec).
pub const GLOBAL_REPORT_API_VERSIONS: &[&str] = &["flowaudit.io/v1", "projectcalico.org/v3"];

/// The directory of the generated CRDs, relative to the workspace root.
pub const CRD_DIR: &str = "deploy/base/crds";

/// The generated CRDs: (file name in [`CRD_DIR`], YAML text). Deterministic: the same types give
/// the same bytes. `cargo xtask crdgen` writes them; a unit test fails when the committed files
/// differ.
pub fn crd_files() -> Vec<(String, String)> {
    let crd = GlobalReport::crd();
    let name = crd.metadata.name.clone().expect("the derive names the CRD");
    let yaml = serde_yaml_ng::to_string(&crd).expect("a CRD serializes");
    let text = format!(
        "# GENERATED by `cargo xtask crdgen` from the Rust types in agent/src/report/resource.rs\n\
         # (kube's CustomResource derive, schemars). Do not edit: change the types and run\n\
         # `cargo xtask crdgen`; a unit test fails while this file differs from the types.\n\
         {yaml}"
    );
    vec![(format!("{name}.yaml"), text)]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn crd_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(CRD_DIR)
    }

    /// CI's check: the committed CRDs are what the types generate, and nothing else is there.
    #[test]
    fn committed_crds_are_generated_from_the_types() {
        let files = crd_files();
        for (name, text) in &files {
            let path = crd_dir().join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == *text,
                "{} differs from the Rust types (or is missing): run `cargo xtask crdgen` and commit it",
                path.display()
            );
        }
        let mut present: Vec<String> = std::fs::read_dir(crd_dir())
            .unwrap_or_else(|e| panic!("{}: {e}", crd_dir().display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        present.sort();
        let mut expected: Vec<String> = files.into_iter().map(|(n, _)| n).collect();
        expected.sort();
        assert_eq!(present, expected, "{} holds files crdgen does not make", crd_dir().display());
    }

    /// The CRD is one a 1.20 API server takes as it is (tests/tests/deploy.rs applies it there):
    /// `apiextensions.k8s.io/v1`, a structural schema without CEL rules. Should a rule ever be
    /// needed, the deploy test must apply a copy stripped of them, and say so.
    #[test]
    fn the_crd_needs_nothing_newer_than_1_20() {
        let (_, text) = &crd_files()[0];
        assert!(text.contains("apiVersion: apiextensions.k8s.io/v1\n"), "{text}");
        for newer in ["x-kubernetes-validations", "selectableFields", "messageExpression"] {
            assert!(!text.contains(newer), "the CRD uses {newer}, which kube-apiserver 1.20 refuses");
        }
        let crd = GlobalReport::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.versions.len(), 1);
        let v = &crd.spec.versions[0];
        assert!(v.served && v.storage);
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "status subresource");
    }

    /// A Calico GlobalReport's spec and status read into these types and write back the same.
    #[test]
    fn spec_and_status_round_trip() {
        let doc: serde_json::Value = serde_yaml_ng::from_str(
            r#"
reportType: cis-benchmark
endpoints:
  selector: app == "web"
  namespaces: {names: [shop], selector: team == "a"}
  serviceAccounts: {names: [default]}
schedule: 0 * * * *
jobNodeSelector: {kubernetes.io/os: linux}
suspend: true
cis:
  highThreshold: 90
  medThreshold: 60
  includeUnscoredTests: true
  numFailedTests: 3
  resultsFilters:
  - benchmarkSelection: {kubernetesVersion: "1.28"}
    exclude: ["1.1.3"]
    include: ["1.2"]
"#,
        )
        .unwrap();
        let spec: GlobalReportSpec = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), doc);
        let status: serde_json::Value = serde_json::json!({
            "lastSuccessfulReportJobs": [{
                "start": "2026-11-01T00:00:00Z", "end": "2026-11-01T01:00:00Z",
                "jobCompletionTime": "2026-11-01T01:31:02Z",
            }],
            "lastFailedReportJobs": [{
                "start": "2026-11-01T01:00:00Z", "end": "2026-11-01T02:00:00Z",
                "job": {"kind": "Job", "namespace": "tigera-compliance", "name": "r-1"},
                "jobCompletionTime": "2026-11-01T02:30:40Z",
            }],
            "activeReportJobs": [{"start": "2026-11-01T02:00:00Z", "end": "2026-11-01T03:00:00Z"}],
            "lastScheduledReportJob": {"start": "2026-11-01T02:00:00Z", "end": "2026-11-01T03:00:00Z"},
        });
        let parsed: GlobalReportStatus = serde_json::from_value(status.clone()).unwrap();
        assert_eq!(parsed.last_failed_report_jobs[0].job.as_ref().unwrap().name.as_deref(), Some("r-1"));
        assert_eq!(serde_json::to_value(&parsed).unwrap(), status);
    }

    /// The sample in deploy/examples (applied to a real API server by tests/tests/deploy.rs)
    /// is one `--global-report` reads.
    #[test]
    fn the_deploy_example_is_a_cis_report() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/globalreport-cis.yaml");
        let report = super::super::NamedReport::load(
            &format!("{}:hourly-cis", file.display()),
            super::super::Kind::CisBenchmark,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cis = report.spec.cis.expect("cis");
        assert_eq!((cis.high_threshold, cis.med_threshold, cis.num_failed_tests), (Some(100), Some(50), Some(5)));
        assert_eq!(cis.results_filters[0].exclude, ["1.1"]);
    }

    /// The reporter's way in: a resource from the API, checked like a file, errors naming it.
    #[test]
    fn a_resource_from_the_api_is_checked_like_a_file() {
        use super::super::{Kind, NamedReport};
        let spec = |high| GlobalReportSpec {
            report_type: "cis-benchmark".into(),
            cis: Some(CisSpec { high_threshold: Some(high), ..Default::default() }),
            ..Default::default()
        };
        let ok = NamedReport::from_resource(&GlobalReport::new("r", spec(90)), Kind::CisBenchmark).unwrap();
        assert_eq!((ok.name.as_str(), ok.spec.clone()), ("r", spec(90)));
        assert_eq!(ok.raw_spec, serde_json::json!({"reportType": "cis-benchmark", "cis": {"highThreshold": 90}}));
        let e = NamedReport::from_resource(&GlobalReport::new("r", spec(40)), Kind::CisBenchmark).unwrap_err();
        assert_eq!(
            e.to_string(),
            "globalreports.flowaudit.io/r: spec.cis.highThreshold: 40 must be greater than medThreshold (50)"
        );
        let e = NamedReport::from_resource(&GlobalReport::new("r", spec(90)), Kind::PolicyAudit).unwrap_err();
        assert_eq!(
            e.to_string(),
            "globalreports.flowaudit.io/r: spec.reportType: is \"cis-benchmark\", the command is policy-audit"
        );
    }
}
