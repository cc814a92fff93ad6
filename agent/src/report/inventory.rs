//! The inventory report: the endpoints, namespaces and services in scope over an interval, with
//! whether policy protected them for the whole of it.
//!
//! Takes: a [`Timeline`] (the state at the start and after every change of the interval, from
//! [`super::replay`]) and optionally a GlobalReport (its `endpoints` selection). Gives: an
//! [`Inventory`] with Calico's `summary.csv`, `endpoints.csv`, `namespaces.csv` and
//! `services.csv`. Must never: import the attribution stage (the small matching here is all the
//! report needs), or judge protection from one state when the interval had several.
//!
//! Rules (Calico's, as in the reference §3.3-3.4, with the issue's reading of "protected"):
//! - Endpoints are Pods (`Pod.v1(ns/name)`) and HostEndpoints (`HostEndpoint(name)`). An
//!   endpoint is in scope when it matched the selection in any state of the interval (deleted
//!   ones too). Selection: `endpoints.selector` over the endpoint's labels (plus Calico's
//!   `projectcalico.org/namespace`, `projectcalico.org/orchestrator` and
//!   `projectcalico.org/serviceaccount`), `endpoints.namespaces` (names and selector, ANDed) and
//!   `endpoints.serviceAccounts` (the same over the pod's ServiceAccount); the three are ANDed.
//!   A HostEndpoint has neither namespace nor service account: either restriction leaves it out.
//! - A policy applies to an endpoint when it selects it: a Kubernetes NetworkPolicy by
//!   `podSelector` in its namespace; a Calico NetworkPolicy by `selector` and
//!   `serviceAccountSelector` in its namespace; a GlobalNetworkPolicy by `selector`,
//!   `namespaceSelector` (`global()`: HostEndpoints only) and `serviceAccountSelector`; an
//!   (Baseline)AdminNetworkPolicy by its subject. Staged policies never apply (Calico's default);
//!   the policy-audit report asks the same question of one policy, staged kinds included, through
//!   [`EndpointScope`].
//! - Its directions: Kubernetes `policyTypes` (unset: Ingress, plus Egress when it has egress
//!   rules); Calico `types` (unset: Ingress when it has ingress rules or no egress rules, Egress
//!   when it has egress rules); admin policies the directions they have rules for.
//! - `ingressProtected` (`egressProtected`): in every state of the interval in which the
//!   endpoint exists, some applied policy has the direction, rules or not (a policy with no
//!   rules is a default deny). `envoyEnabled`: in every such state the pod has the annotation
//!   `sidecar.istio.io/status`, or an init container image matching `*/istio/proxy_init:*` and
//!   a container image matching `*/istio/proxy*`. `appliedPolicies` and `services`: every one
//!   that applied (selected the pod) at any time.
//! - A namespace is in scope when an in-scope endpoint is in it, and protected (envoy-enabled)
//!   when every in-scope endpoint in it is. A service is in scope when its selector matched an
//!   in-scope pod at any time, and protected when every such pod is (ingress only).
//! - ResourceIDs: `Kind[.apiVersion]([namespace/]name)`, the apiVersion left out for Calico's
//!   kinds: `NetworkPolicy.networking.k8s.io/v1(ns/name)` for Kubernetes' (as the policy-audit
//!   report names them), `NetworkPolicy(ns/name)`, `GlobalNetworkPolicy(name)`,
//!   `AdminNetworkPolicy.policy.networking.k8s.io/v1alpha1(name)`, `Service.v1(ns/name)`,
//!   `Namespace.v1(name)`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use jiff::Timestamp;
use k8s_openapi::{api::networking::v1::NetworkPolicySpec, apimachinery::pkg::apis::meta::v1::LabelSelector};
use serde_json::{Value, json};

use super::{
    Kind, NamedReport, Rendered, ReportError, Table, TimeRange, escape,
    exposure::{self, Exposure},
    format_time, html_page,
    replay::{State, Timeline},
    summary_columns,
};
use crate::cluster::{
    CALICO_GROUP, ClusterState, Labels, ObjectKey, Pod,
    admin::Subject,
    calico::PolicyType,
    plural,
    selector::{self, NamespaceLabels, Selector, label_selector_matches},
};

/// The API group of Kubernetes NetworkPolicies.
const KUBE_GROUP: &str = "networking.k8s.io";
/// The API group of the (Baseline)AdminNetworkPolicies.
const ADMIN_GROUP: &str = "policy.networking.k8s.io";
/// The labels of an object that has none.
static NO_LABELS: Labels = Labels::new();

/// `summary.csv` columns.
pub const SUMMARY_COLUMNS: &[&str] = &summary_columns![
    "endpointsNumInScope",
    "endpointsNumIngressProtected",
    "endpointsNumEgressProtected",
    "namespacesNumInScope",
    "namespacesNumIngressProtected",
    "namespacesNumEgressProtected",
    "serviceAccountsNumInScope",
];
/// `endpoints.csv` columns.
pub const ENDPOINT_COLUMNS: &[&str] =
    &["endpoint", "ingressProtected", "egressProtected", "envoyEnabled", "appliedPolicies", "services"];
/// `namespaces.csv` columns.
pub const NAMESPACE_COLUMNS: &[&str] = &["namespace", "ingressProtected", "egressProtected", "envoyEnabled"];
/// `services.csv` columns.
pub const SERVICE_COLUMNS: &[&str] = &["service", "ingressProtected", "envoyEnabled"];

/// One in-scope endpoint over the interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRow {
    /// `Pod.v1(ns/name)`, `HostEndpoint(name)`.
    pub endpoint: String,
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// The pod's ServiceAccount.
    pub service_account: Option<String>,
    /// Ingress-protected in every state it existed in.
    pub ingress_protected: bool,
    /// Egress-protected in every state it existed in.
    pub egress_protected: bool,
    /// Istio's proxy in every state it existed in.
    pub envoy_enabled: bool,
    /// Policies that applied at any time.
    pub applied_policies: BTreeSet<String>,
    /// Services that selected it at any time.
    pub services: BTreeSet<String>,
    /// What applied policies' allow rules exposed it to at any time (network-access).
    pub exposure: Exposure,
    /// How flow logs name it (network-access).
    pub flow_name: FlowName,
}

/// How flow-log records name an endpoint: `*_type`, `*_namespace`, `*_name` and, for a pod
/// with a generated name, `*_name_aggr` (its generateName + `*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowName {
    /// `wep` or `hep`.
    pub kind: &'static str,
    /// The pod's namespace, `-` for a host endpoint.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// generateName + `*`, when the pod has one.
    pub prefix: Option<String>,
}

/// A namespace or service row: ResourceID and flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRow {
    /// `Namespace.v1(name)`, `Service.v1(ns/name)`.
    pub id: String,
    /// Every in-scope endpoint in it is ingress-protected.
    pub ingress_protected: bool,
    /// Every in-scope endpoint in it is egress-protected (namespaces only).
    pub egress_protected: bool,
    /// Every in-scope endpoint in it has Istio's proxy.
    pub envoy_enabled: bool,
}

impl EndpointRow {
    /// Its entry in `report.json`'s `endpoints` (Calico's EndpointsReportEndpoint fields).
    pub fn report_data(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "ingressProtected": self.ingress_protected,
            "egressProtected": self.egress_protected,
            "envoyEnabled": self.envoy_enabled,
            "appliedPolicies": self.applied_policies,
            "services": self.services,
            "serviceAccount": self.service_account.clone().unwrap_or_default(),
        })
    }
}

impl FlowName {
    /// The name level-2 records give it: the prefix, or the name when it has none.
    pub fn aggregated(&self) -> &str {
        self.prefix.as_deref().unwrap_or(&self.name)
    }
}

/// The report.
#[derive(Clone, Debug)]
pub struct Inventory {
    /// The interval.
    pub range: TimeRange,
    /// The GlobalReport, if any.
    pub report: Option<NamedReport>,
    /// In-scope endpoints, by ResourceID.
    pub endpoints: Vec<EndpointRow>,
    /// Namespaces of in-scope endpoints.
    pub namespaces: Vec<GroupRow>,
    /// Services of in-scope endpoints.
    pub services: Vec<GroupRow>,
    /// Distinct `namespace/serviceaccount` of in-scope pods.
    pub service_accounts: BTreeSet<String>,
    /// The snapshot's time.
    pub snapshot_taken: Timestamp,
    /// States in the interval (1 + changes).
    pub states: usize,
    /// The changes applied in the interval: time, verb, object.
    pub changes: Vec<(Timestamp, String, String)>,
    /// What was odd but not wrong.
    pub warnings: Vec<String>,
}

/// The selection of a GlobalReport's `endpoints`, parsed.
#[derive(Default)]
struct Selection {
    selector: Option<Selector>,
    namespace_names: Vec<String>,
    namespace_selector: Option<Selector>,
    account_names: Vec<String>,
    account_selector: Option<Selector>,
}

impl Selection {
    fn parse(report: Option<&NamedReport>) -> Result<Self, ReportError> {
        let Some(report) = report else { return Ok(Self::default()) };
        let Some(sel) = &report.spec.endpoints else { return Ok(Self::default()) };
        let parse = |field: &str, text: &Option<String>| -> Result<Option<Selector>, ReportError> {
            match text.as_deref().filter(|t| !t.trim().is_empty()) {
                None => Ok(None),
                Some(t) => Selector::parse(t).map(Some).map_err(|e| ReportError::Flag {
                    flag: "--global-report",
                    reason: format!("GlobalReport {}: spec.endpoints.{field}: {t:?}: {e}", report.name),
                }),
            }
        };
        let (ns, sa) = (sel.namespaces.clone().unwrap_or_default(), sel.service_accounts.clone().unwrap_or_default());
        Ok(Self {
            selector: parse("selector", &sel.selector)?,
            namespace_names: ns.names,
            namespace_selector: parse("namespaces.selector", &ns.selector)?,
            account_names: sa.names,
            account_selector: parse("serviceAccounts.selector", &sa.selector)?,
        })
    }

    fn restricts_namespaces(&self) -> bool {
        !self.namespace_names.is_empty() || self.namespace_selector.is_some()
    }

    fn restricts_accounts(&self) -> bool {
        !self.account_names.is_empty() || self.account_selector.is_some()
    }
}

/// A pod's labels as Calico's selectors see them.
struct PodLabels<'a>(&'a Pod);

impl selector::Labels for PodLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            "projectcalico.org/namespace" => Some(&self.0.namespace),
            "projectcalico.org/orchestrator" => Some("k8s"),
            "projectcalico.org/serviceaccount" => Some(&self.0.service_account),
            _ => self.0.labels.get(key).map(String::as_str),
        }
    }
}

/// A ServiceAccount's labels as Calico's selectors see them (plus `projectcalico.org/name`).
struct AccountLabels<'a> {
    name: &'a str,
    labels: Option<&'a Labels>,
}

impl selector::Labels for AccountLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            "projectcalico.org/name" => Some(self.name),
            _ => self.labels.and_then(|l| l.get(key)).map(String::as_str),
        }
    }
}

/// What a policy selects.
enum Target {
    Kube { namespace: String, pods: LabelSelector },
    Calico { namespace: Option<String>, selector: Selector, namespaces: Option<Selector>, accounts: Option<Selector> },
    Admin(Subject),
}

/// A policy of a state, as the reports need it.
struct Policy {
    id: String,
    ingress: bool,
    egress: bool,
    exposure: Exposure,
    target: Target,
}

/// An endpoint of a state, as matching needs it.
enum Endpoint<'a> {
    Pod { pod: &'a Pod, ns_labels: &'a Labels, account: Option<&'a Labels> },
    Host { name: &'a str, labels: &'a Labels },
}

impl Endpoint<'_> {
    fn id(&self) -> String {
        match self {
            Self::Pod { pod, .. } => format!("Pod.v1({}/{})", pod.namespace, pod.name),
            Self::Host { name, .. } => format!("HostEndpoint({name})"),
        }
    }

    fn calico_matches(&self, s: &Selector) -> bool {
        match self {
            Self::Pod { pod, .. } => s.matches(&PodLabels(pod)),
            Self::Host { labels, .. } => s.matches(*labels),
        }
    }
}

/// Which policies of a state [`policies_of`] gives.
#[derive(Clone, Copy)]
enum Which<'a> {
    /// The enforced ones: staged kinds never apply (the inventory's rule).
    Enforced,
    /// Only the one named, staged or not (the policy-audit report's question).
    Named(&'a ObjectKey),
}

impl Which<'_> {
    fn wants(self, key: &ObjectKey, staged: bool) -> bool {
        match self {
            Self::Enforced => !staged,
            Self::Named(k) => k == key,
        }
    }
}

fn policy_key(api_group: &str, resource: &str, namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        api_group: api_group.to_owned(),
        resource: resource.to_owned(),
        namespace: namespace.unwrap_or_default().to_owned(),
        name: name.to_owned(),
    }
}

fn kube_target(namespace: &str, spec: &NetworkPolicySpec) -> Target {
    Target::Kube { namespace: namespace.to_owned(), pods: spec.pod_selector.clone().unwrap_or_default() }
}

fn policies_of(state: &ClusterState, which: Which<'_>, warnings: &mut Vec<String>) -> Vec<Policy> {
    let mut out = Vec::new();
    for p in &state.network_policies {
        let key = policy_key(KUBE_GROUP, "networkpolicies", Some(&p.namespace), &p.name);
        if !which.wants(&key, false) {
            continue;
        }
        let types = p.spec.policy_types.as_ref();
        let has = |t: &str| types.is_some_and(|ts| ts.iter().any(|x| x == t));
        let ingress = types.is_none() || has("Ingress");
        let egress =
            if types.is_some() { has("Egress") } else { p.spec.egress.as_ref().is_some_and(|e| !e.is_empty()) };
        out.push(Policy {
            id: format!("NetworkPolicy.networking.k8s.io/v1({}/{})", p.namespace, p.name),
            ingress,
            egress,
            exposure: exposure::kube(p, ingress, egress),
            target: kube_target(&p.namespace, &p.spec),
        });
    }
    for p in &state.staged_kube_policies {
        // Staged: never enforced, so no directions and no exposure; named only by policy-audit.
        let key = policy_key(CALICO_GROUP, "stagedkubernetesnetworkpolicies", Some(&p.namespace), &p.name);
        if which.wants(&key, true) {
            out.push(Policy {
                id: format!("StagedKubernetesNetworkPolicy({}/{})", p.namespace, p.name),
                ingress: false,
                egress: false,
                exposure: Exposure::default(),
                target: kube_target(&p.namespace, &p.spec),
            });
        }
    }
    let mut parse = |id: &str, field: &str, text: Option<&str>| -> Option<Option<Selector>> {
        match text.filter(|t| !t.trim().is_empty()) {
            None => Some(None),
            Some(t) => match Selector::parse(t) {
                Ok(s) => Some(Some(s)),
                Err(e) => {
                    let w = format!("{id}: {field}: {t:?}: {e}; the policy is taken to select nothing");
                    if !warnings.contains(&w) {
                        warnings.push(w);
                    }
                    None
                }
            },
        }
    };
    for p in &state.calico_policies {
        let key = policy_key(CALICO_GROUP, &plural(p.kind.as_str()), p.namespace.as_deref(), &p.name);
        if !which.wants(&key, p.kind.is_staged()) {
            continue;
        }
        let id = match &p.namespace {
            Some(ns) => format!("{}({ns}/{})", p.kind.as_str(), p.name),
            None => format!("{}({})", p.kind.as_str(), p.name),
        };
        let (ingress, egress) = match &p.spec.types {
            Some(ts) => (ts.contains(&PolicyType::Ingress), ts.contains(&PolicyType::Egress)),
            None => (!p.spec.ingress.is_empty() || p.spec.egress.is_empty(), !p.spec.egress.is_empty()),
        };
        let Some(selector) = parse(&id, "spec.selector", p.spec.selector.as_deref()) else { continue };
        let Some(namespaces) = parse(&id, "spec.namespaceSelector", p.spec.namespace_selector.as_deref()) else {
            continue;
        };
        let Some(accounts) = parse(&id, "spec.serviceAccountSelector", p.spec.service_account_selector.as_deref())
        else {
            continue;
        };
        out.push(Policy {
            exposure: exposure::calico(p, ingress, egress, state),
            id,
            ingress,
            egress,
            target: Target::Calico {
                namespace: p.namespace.clone(),
                selector: selector.unwrap_or_else(Selector::all),
                namespaces: if p.kind.is_global() { namespaces } else { None },
                accounts,
            },
        });
    }
    for p in &state.admin_policies {
        let key = policy_key(ADMIN_GROUP, "adminnetworkpolicies", None, &p.name);
        if !which.wants(&key, false) {
            continue;
        }
        out.push(Policy {
            id: format!("AdminNetworkPolicy.policy.networking.k8s.io/v1alpha1({})", p.name),
            ingress: !p.spec.ingress.is_empty(),
            egress: !p.spec.egress.is_empty(),
            exposure: exposure::admin(p),
            target: Target::Admin(p.spec.subject.clone()),
        });
    }
    if let Some(p) = &state.baseline_admin_policy {
        let key = policy_key(ADMIN_GROUP, "baselineadminnetworkpolicies", None, &p.name);
        if !which.wants(&key, false) {
            return out;
        }
        out.push(Policy {
            id: format!("BaselineAdminNetworkPolicy.policy.networking.k8s.io/v1alpha1({})", p.name),
            ingress: !p.spec.ingress.is_empty(),
            egress: !p.spec.egress.is_empty(),
            exposure: exposure::baseline(p),
            target: Target::Admin(p.spec.subject.clone()),
        });
    }
    out
}

/// Whether `policy` selects `endpoint`.
fn applies(policy: &Policy, endpoint: &Endpoint<'_>) -> bool {
    match (&policy.target, endpoint) {
        (Target::Kube { namespace, pods }, Endpoint::Pod { pod, .. }) => {
            *namespace == pod.namespace && label_selector_matches(pods, &pod.labels)
        }
        (Target::Kube { .. } | Target::Admin(_), Endpoint::Host { .. }) => false,
        (Target::Calico { namespace, selector, namespaces, accounts }, ep) => {
            let in_namespace = match (namespace, ep, namespaces) {
                (Some(ns), Endpoint::Pod { pod, .. }, _) => *ns == pod.namespace,
                (Some(_), Endpoint::Host { .. }, _) => false,
                (None, _, None) => true,
                (None, Endpoint::Host { .. }, Some(s)) => s.is_global(),
                (None, Endpoint::Pod { pod, ns_labels, .. }, Some(s)) => {
                    !s.is_global() && s.matches(&NamespaceLabels { name: &pod.namespace, labels: ns_labels })
                }
            };
            let account_ok = match (accounts, ep) {
                (None, _) => true,
                (Some(s), Endpoint::Pod { pod, account, .. }) => {
                    s.matches(&AccountLabels { name: &pod.service_account, labels: *account })
                }
                (Some(s), Endpoint::Host { .. }) => s.is_all(),
            };
            in_namespace && account_ok && ep.calico_matches(selector)
        }
        (Target::Admin(subject), Endpoint::Pod { pod, ns_labels, .. }) => {
            let mut ns = (*ns_labels).clone();
            ns.entry("kubernetes.io/metadata.name".into()).or_insert_with(|| pod.namespace.clone());
            match subject {
                Subject::Namespaces(s) => label_selector_matches(s, &ns),
                Subject::Pods(p) => {
                    label_selector_matches(&p.namespace_selector, &ns)
                        && label_selector_matches(&p.pod_selector, &pod.labels)
                }
            }
        }
    }
}

fn selected(sel: &Selection, endpoint: &Endpoint<'_>) -> bool {
    if let Some(s) = &sel.selector
        && !endpoint.calico_matches(s)
    {
        return false;
    }
    match endpoint {
        Endpoint::Host { .. } => !sel.restricts_namespaces() && !sel.restricts_accounts(),
        Endpoint::Pod { pod, ns_labels, account } => {
            let ns_ok = (sel.namespace_names.is_empty() || sel.namespace_names.contains(&pod.namespace))
                && sel
                    .namespace_selector
                    .as_ref()
                    .is_none_or(|s| s.matches(&NamespaceLabels { name: &pod.namespace, labels: ns_labels }));
            let sa_ok = (sel.account_names.is_empty() || sel.account_names.contains(&pod.service_account))
                && sel
                    .account_selector
                    .as_ref()
                    .is_none_or(|s| s.matches(&AccountLabels { name: &pod.service_account, labels: *account }));
            ns_ok && sa_ok
        }
    }
}

/// Whether the pod document shows Istio's proxy (see the module's doc).
fn envoy(pod: Option<&Value>) -> bool {
    let Some(pod) = pod else { return false };
    if pod.pointer("/metadata/annotations/sidecar.istio.io~1status").is_some() {
        return true;
    }
    let images = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("image").and_then(Value::as_str).map(str::to_owned))
            .collect()
    };
    images("initContainers").iter().any(|i| i.contains("/istio/proxy_init:"))
        && images("containers").iter().any(|i| i.contains("/istio/proxy"))
}

/// One endpoint in one state.
struct Seen {
    namespace: Option<String>,
    service_account: Option<String>,
    selected: bool,
    ingress: bool,
    egress: bool,
    envoy: bool,
    policies: BTreeSet<String>,
    services: BTreeSet<String>,
    exposure: Exposure,
    flow_name: FlowName,
}

/// The endpoints of a state: its pods (with their namespace's and ServiceAccount's labels), then
/// its HostEndpoints.
fn endpoints_of(cluster: &ClusterState) -> Vec<Endpoint<'_>> {
    let accounts: BTreeMap<(&str, &str), &Labels> =
        cluster.service_accounts.iter().map(|a| ((a.namespace.as_str(), a.name.as_str()), &a.labels)).collect();
    let mut endpoints: Vec<Endpoint<'_>> = cluster
        .pods
        .iter()
        .map(|pod| Endpoint::Pod {
            pod,
            ns_labels: cluster.namespaces.get(&pod.namespace).map_or(&NO_LABELS, |n| &n.labels),
            account: accounts.get(&(pod.namespace.as_str(), pod.service_account.as_str())).copied(),
        })
        .collect();
    endpoints.extend(cluster.host_endpoints.iter().map(|h| Endpoint::Host { name: &h.name, labels: &h.labels }));
    endpoints
}

fn evaluate(state: &State, sel: &Selection, warnings: &mut Vec<String>) -> BTreeMap<String, Seen> {
    let cluster = &state.cluster;
    let policies = policies_of(cluster, Which::Enforced, warnings);
    let endpoints = endpoints_of(cluster);
    let mut out = BTreeMap::new();
    for ep in &endpoints {
        let applied: Vec<&Policy> = policies.iter().filter(|p| applies(p, ep)).collect();
        let flow_name = match ep {
            Endpoint::Pod { pod, .. } => FlowName {
                kind: "wep",
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                prefix: pod.generate_name.as_ref().map(|g| format!("{g}*")),
            },
            Endpoint::Host { name, .. } => {
                FlowName { kind: "hep", namespace: "-".into(), name: (*name).to_owned(), prefix: None }
            }
        };
        let (namespace, service_account, services, envoy_enabled) = match ep {
            Endpoint::Pod { pod, .. } => {
                let services = cluster
                    .services
                    .iter()
                    .filter(|s| {
                        s.namespace == pod.namespace
                            && !s.selector.is_empty()
                            && s.selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
                    })
                    .map(|s| format!("Service.v1({}/{})", s.namespace, s.name))
                    .collect();
                let key = ObjectKey {
                    api_group: String::new(),
                    resource: "pods".into(),
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                };
                (
                    Some(pod.namespace.clone()),
                    Some(pod.service_account.clone()),
                    services,
                    envoy(state.objects.get(&key)),
                )
            }
            Endpoint::Host { .. } => (None, None, BTreeSet::new(), false),
        };
        out.insert(
            ep.id(),
            Seen {
                namespace,
                service_account,
                selected: selected(sel, ep),
                ingress: applied.iter().any(|p| p.ingress),
                egress: applied.iter().any(|p| p.egress),
                envoy: envoy_enabled,
                policies: applied.iter().map(|p| p.id.clone()).collect(),
                services,
                exposure: applied.iter().fold(Exposure::default(), |e, p| e.or(p.exposure)),
                flow_name,
            },
        );
    }
    out
}

/// A GlobalReport's endpoint selection, for the policy-audit report: does a policy apply to an
/// endpoint the selection selects? "Selects" and "applies" are the inventory's (see the module's
/// doc), with one difference: staged policies (`StagedNetworkPolicy`,
/// `StagedGlobalNetworkPolicy`, `StagedKubernetesNetworkPolicy`) apply to the endpoints they
/// would select if enforced, by the same fields as their enforced kinds.
pub struct EndpointScope(Selection);

impl EndpointScope {
    /// The selection of `report`'s `spec.endpoints` (everything without one); an error names the
    /// selector that does not parse.
    pub fn new(report: Option<&NamedReport>) -> Result<Self, ReportError> {
        Selection::parse(report).map(Self)
    }

    /// Whether the policy `key`, as `policies` holds it, applies to at least one endpoint of
    /// `endpoints` that the selection selects. `None` when `policies` does not hold it (or left
    /// it out for a problem, or its selector does not parse: a warning says so).
    pub fn applies_to_selected(
        &self,
        policies: &ClusterState,
        key: &ObjectKey,
        endpoints: &ClusterState,
        warnings: &mut Vec<String>,
    ) -> Option<bool> {
        let policy = policies_of(policies, Which::Named(key), warnings).pop()?;
        Some(endpoints_of(endpoints).iter().any(|ep| selected(&self.0, ep) && applies(&policy, ep)))
    }
}

/// Computes the report from the replayed interval.
pub fn build(timeline: &Timeline, report: Option<NamedReport>) -> Result<Inventory, ReportError> {
    let sel = Selection::parse(report.as_ref())?;
    let mut warnings = timeline.warnings.clone();
    let mut all: BTreeMap<String, (bool, EndpointRow)> = BTreeMap::new();
    for state in &timeline.states {
        for (id, seen) in evaluate(state, &sel, &mut warnings) {
            let (in_scope, row) = all.entry(id.clone()).or_insert_with(|| {
                (
                    false,
                    EndpointRow {
                        endpoint: id,
                        namespace: None,
                        service_account: None,
                        ingress_protected: true,
                        egress_protected: true,
                        envoy_enabled: true,
                        applied_policies: BTreeSet::new(),
                        services: BTreeSet::new(),
                        exposure: Exposure::default(),
                        flow_name: FlowName::default(),
                    },
                )
            });
            *in_scope |= seen.selected;
            row.namespace = seen.namespace;
            row.service_account = seen.service_account;
            row.ingress_protected &= seen.ingress;
            row.egress_protected &= seen.egress;
            row.envoy_enabled &= seen.envoy;
            row.applied_policies.extend(seen.policies);
            row.services.extend(seen.services);
            row.exposure = row.exposure.or(seen.exposure);
            row.flow_name = seen.flow_name;
        }
    }
    let endpoints: Vec<EndpointRow> = all.into_values().filter(|(s, _)| *s).map(|(_, r)| r).collect();
    let group = |id: String, members: &[&EndpointRow]| GroupRow {
        id,
        ingress_protected: members.iter().all(|e| e.ingress_protected),
        egress_protected: members.iter().all(|e| e.egress_protected),
        envoy_enabled: members.iter().all(|e| e.envoy_enabled),
    };
    let mut by_namespace: BTreeMap<&str, Vec<&EndpointRow>> = BTreeMap::new();
    let mut by_service: BTreeMap<&str, Vec<&EndpointRow>> = BTreeMap::new();
    let mut service_accounts = BTreeSet::new();
    for e in &endpoints {
        if let Some(ns) = &e.namespace {
            by_namespace.entry(ns).or_default().push(e);
            if let Some(sa) = &e.service_account {
                service_accounts.insert(format!("{ns}/{sa}"));
            }
        }
        for s in &e.services {
            by_service.entry(s).or_default().push(e);
        }
    }
    let namespaces = by_namespace.into_iter().map(|(ns, m)| group(format!("Namespace.v1({ns})"), &m)).collect();
    let services = by_service.into_iter().map(|(s, m)| group(s.to_owned(), &m)).collect();
    let changes = timeline
        .changes
        .iter()
        .map(|c| {
            let k = &c.key;
            let object = if k.namespace.is_empty() {
                format!("{}/{} {}", k.api_group, k.resource, k.name)
            } else {
                format!("{}/{} {}/{}", k.api_group, k.resource, k.namespace, k.name)
            };
            (c.at, c.verb.clone(), object.trim_start_matches('/').to_owned())
        })
        .collect();
    Ok(Inventory {
        range: timeline.range,
        report,
        endpoints,
        namespaces,
        services,
        service_accounts,
        snapshot_taken: timeline.snapshot_taken,
        states: timeline.states.len(),
        changes,
        warnings,
    })
}

/// A flag as the CSV files write it: `true`, `false`.
pub(super) fn yes(b: bool) -> String {
    b.to_string()
}

/// A set as the CSV files write it: `;`-joined, sorted.
pub(super) fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(";")
}

impl Inventory {
    fn count(&self, f: impl Fn(&EndpointRow) -> bool) -> usize {
        self.endpoints.iter().filter(|e| f(e)).count()
    }

    /// `summary.csv`.
    pub fn summary(&self) -> Table {
        let mut t = Table::new("summary.csv", SUMMARY_COLUMNS);
        let mut row = NamedReport::selection_columns(self.report.as_ref(), &self.range);
        row.extend(
            [
                self.endpoints.len(),
                self.count(|e| e.ingress_protected),
                self.count(|e| e.egress_protected),
                self.namespaces.len(),
                self.namespaces.iter().filter(|n| n.ingress_protected).count(),
                self.namespaces.iter().filter(|n| n.egress_protected).count(),
                self.service_accounts.len(),
            ]
            .map(|n| n.to_string()),
        );
        t.push(row);
        t
    }

    /// `endpoints.csv`.
    pub fn endpoints_table(&self) -> Table {
        let mut t = Table::new("endpoints.csv", ENDPOINT_COLUMNS);
        for e in &self.endpoints {
            t.push(vec![
                e.endpoint.clone(),
                yes(e.ingress_protected),
                yes(e.egress_protected),
                yes(e.envoy_enabled),
                join(&e.applied_policies),
                join(&e.services),
            ]);
        }
        t
    }

    /// `namespaces.csv`.
    pub fn namespaces_table(&self) -> Table {
        let mut t = Table::new("namespaces.csv", NAMESPACE_COLUMNS);
        for n in &self.namespaces {
            t.push(vec![n.id.clone(), yes(n.ingress_protected), yes(n.egress_protected), yes(n.envoy_enabled)]);
        }
        t
    }

    /// `services.csv`.
    pub fn services_table(&self) -> Table {
        let mut t = Table::new("services.csv", SERVICE_COLUMNS);
        for s in &self.services {
            t.push(vec![s.id.clone(), yes(s.ingress_protected), yes(s.envoy_enabled)]);
        }
        t
    }
}

impl Rendered for Inventory {
    fn kind(&self) -> Kind {
        Kind::Inventory
    }

    fn exported(&self) -> Vec<Table> {
        vec![self.summary(), self.endpoints_table(), self.namespaces_table(), self.services_table()]
    }

    fn report_data(&self, generated: Timestamp) -> Value {
        let group = |g: &GroupRow, egress: bool| {
            let mut v = json!({"ingressProtected": g.ingress_protected, "envoyEnabled": g.envoy_enabled});
            if egress {
                v["egressProtected"] = json!(g.egress_protected);
            }
            v
        };
        json!({
            "reportName": self.report.as_ref().map_or("", |r| r.name.as_str()),
            "reportTypeName": Kind::Inventory.as_str(),
            "reportSpec": self.report.as_ref().map_or_else(|| json!({"reportType": Kind::Inventory.as_str()}), |r| r.raw_spec.clone()),
            "startTime": format_time(self.range.from),
            "endTime": format_time(self.range.to),
            "generationTime": format_time(generated),
            "endpoints": self.endpoints.iter().map(EndpointRow::report_data).collect::<Vec<_>>(),
            "endpointsSummary": {
                "numTotal": self.endpoints.len(),
                "numServiceAccounts": self.service_accounts.len(),
                "numIngressProtected": self.count(|e| e.ingress_protected),
                "numEgressProtected": self.count(|e| e.egress_protected),
                "numEnvoyEnabled": self.count(|e| e.envoy_enabled),
            },
            "namespaces": self.namespaces.iter().map(|n| {
                let mut v = group(n, true);
                v["namespace"] = json!(n.id);
                v
            }).collect::<Vec<_>>(),
            "namespacesSummary": {
                "numTotal": self.namespaces.len(),
                "numIngressProtected": self.namespaces.iter().filter(|n| n.ingress_protected).count(),
                "numEgressProtected": self.namespaces.iter().filter(|n| n.egress_protected).count(),
                "numEnvoyEnabled": self.namespaces.iter().filter(|n| n.envoy_enabled).count(),
            },
            "services": self.services.iter().map(|s| {
                let mut v = group(s, false);
                v["service"] = json!(s.id);
                v
            }).collect::<Vec<_>>(),
            "servicesSummary": {
                "numTotal": self.services.len(),
                "numIngressProtected": self.services.iter().filter(|s| s.ingress_protected).count(),
                "numEnvoyEnabled": self.services.iter().filter(|s| s.envoy_enabled).count(),
            },
            "replay": {
                "snapshotTime": format_time(self.snapshot_taken),
                "states": self.states,
                "changes": self.changes.iter().map(|(at, verb, object)| json!({
                    "time": format_time(*at), "verb": verb, "object": object,
                })).collect::<Vec<_>>(),
            },
        })
    }

    fn html(&self, generated: Timestamp) -> String {
        let mut body = String::new();
        body.push_str("<h2>Summary</h2>");
        body.push_str(&self.summary().to_html(None));
        let _ = write!(
            body,
            "<p class=\"note\">State at the start from the snapshot of {}, replayed through {} changes in the \
             interval ({} states). Protected means protected in every state of the interval.</p>",
            format_time(self.snapshot_taken),
            self.changes.len(),
            self.states
        );
        for (title, table) in [
            ("Endpoints", self.endpoints_table()),
            ("Namespaces", self.namespaces_table()),
            ("Services", self.services_table()),
        ] {
            let _ = write!(body, "<h2>{title}</h2>");
            if table.rows.is_empty() {
                body.push_str("<p>None in scope.</p>");
            } else {
                body.push_str(&table.to_html(Some(1000)));
            }
        }
        let _ = write!(
            body,
            "<footer>Generated by flowaudit {} at {}.</footer>",
            escape(env!("CARGO_PKG_VERSION")),
            format_time(generated)
        );
        let title = match &self.report {
            Some(r) => format!("Inventory report: {}", r.name),
            None => "Inventory report".to_owned(),
        };
        html_page(&title, &format!("{} to {}", format_time(self.range.from), format_time(self.range.to)), &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        replay::{self, Start},
        tests::{global_report, golden, testdata},
    };

    fn range() -> TimeRange {
        TimeRange::parse("2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z").unwrap()
    }

    fn timeline() -> Timeline {
        replay::load(
            &Start::Snapshots(testdata("inventory/snapshots")),
            &[testdata("inventory/audit/audit.log"), testdata("inventory/audit/kube-apiserver.log")],
            range(),
        )
        .unwrap()
    }

    fn csv(table: &Table) -> String {
        String::from_utf8(table.to_csv()).unwrap()
    }

    /// The fixed snapshot and audit logs: a policy added mid-interval (cart-1 protected only part
    /// of the time, cart-2 created after it for its whole life), a label change taking front-1
    /// out of front-ingress, db-1 deleted mid-interval, legacy without any policy.
    #[test]
    fn golden_inventory() {
        let t = timeline();
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        let inv = build(&t, None).unwrap();
        assert_eq!(
            csv(&inv.endpoints_table()),
            "endpoint,ingressProtected,egressProtected,envoyEnabled,appliedPolicies,services\n\
             Pod.v1(legacy/old-1),false,false,false,,Service.v1(legacy/old)\n\
             Pod.v1(shop/cart-1),false,false,false,NetworkPolicy.networking.k8s.io/v1(shop/cart-ingress),Service.v1(shop/cart)\n\
             Pod.v1(shop/cart-2),true,true,false,NetworkPolicy.networking.k8s.io/v1(shop/cart-ingress),Service.v1(shop/cart)\n\
             Pod.v1(shop/db-1),true,false,false,NetworkPolicy.networking.k8s.io/v1(shop/db-ingress),Service.v1(shop/db)\n\
             Pod.v1(web/front-1),false,true,true,GlobalNetworkPolicy(deny-egress-web);NetworkPolicy(web/front-ingress),Service.v1(web/front)\n"
        );
        assert_eq!(
            csv(&inv.summary()),
            "startTime,endTime,endpointSelector,namespaceNames,namespaceSelector,serviceAccountNames,serviceAccountSelectors,\
             endpointsNumInScope,endpointsNumIngressProtected,endpointsNumEgressProtected,namespacesNumInScope,\
             namespacesNumIngressProtected,namespacesNumEgressProtected,serviceAccountsNumInScope\n\
             2026-11-20T00:00:00Z,2026-11-21T00:00:00Z,,,,,,5,2,2,3,0,1,4\n"
        );
        assert_eq!(
            csv(&inv.namespaces_table()),
            "namespace,ingressProtected,egressProtected,envoyEnabled\n\
             Namespace.v1(legacy),false,false,false\n\
             Namespace.v1(shop),false,false,false\n\
             Namespace.v1(web),false,true,true\n"
        );
        assert_eq!(
            csv(&inv.services_table()),
            "service,ingressProtected,envoyEnabled\n\
             Service.v1(legacy/old),false,false\n\
             Service.v1(shop/cart),false,false\n\
             Service.v1(shop/db),true,false\n\
             Service.v1(web/front),false,true\n"
        );
        golden("inventory", inv.download_files());
    }

    /// A GlobalReport's selector: front-1 matched at the start (then left), old-1 only after its
    /// label change; both are in scope.
    #[test]
    fn golden_inventory_selector() {
        let inv = build(&timeline(), Some(global_report("front-inventory", Kind::Inventory))).unwrap();
        assert_eq!(
            inv.endpoints.iter().map(|e| e.endpoint.as_str()).collect::<Vec<_>>(),
            ["Pod.v1(legacy/old-1)", "Pod.v1(web/front-1)"]
        );
        assert_eq!(
            csv(&inv.summary()).lines().nth(1).unwrap(),
            "2026-11-20T00:00:00Z,2026-11-21T00:00:00Z,app == 'front',,,,,2,0,1,2,0,1,2"
        );
        golden("inventory-selector", inv.download_files());
    }

    /// Namespace names and a service-account selector, ANDed: db-1's ServiceAccount has no
    /// labels (no object), so only the cart pods are in scope.
    #[test]
    fn namespaces_and_service_accounts_select() {
        let inv = build(&timeline(), Some(global_report("shop-backend", Kind::Inventory))).unwrap();
        assert_eq!(
            inv.endpoints.iter().map(|e| e.endpoint.as_str()).collect::<Vec<_>>(),
            ["Pod.v1(shop/cart-1)", "Pod.v1(shop/cart-2)"]
        );
        assert_eq!(inv.service_accounts.iter().collect::<Vec<_>>(), ["shop/cart"]);
        assert_eq!(
            csv(&inv.services_table()),
            "service,ingressProtected,envoyEnabled\nService.v1(shop/cart),false,false\n"
        );
    }

    /// A policy whose types include a direction protects in it without any rule; unset types
    /// follow Calico's defaults; staged policies never protect.
    #[test]
    fn policy_directions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("c.yaml"),
            r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: n, labels: {app: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: q, namespace: n, labels: {app: b}}
---
apiVersion: v1
kind: Pod
metadata: {name: r, namespace: n, labels: {app: c}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: egress-rules-only, namespace: n}
spec:
  selector: app == 'a'
  egress: [{action: Allow}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default, namespace: n}
spec:
  podSelector: {matchLabels: {app: b}}
---
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: staged, namespace: n}
spec:
  selector: app == 'c'
  types: [Ingress, Egress]
"#,
        )
        .unwrap();
        let t = replay::load(&Start::Manifests(dir.path().to_owned()), &[], range()).unwrap();
        let inv = build(&t, None).unwrap();
        let flags: Vec<(&str, bool, bool)> =
            inv.endpoints.iter().map(|e| (e.endpoint.as_str(), e.ingress_protected, e.egress_protected)).collect();
        assert_eq!(flags, [("Pod.v1(n/p)", false, true), ("Pod.v1(n/q)", true, false), ("Pod.v1(n/r)", false, false)]);
    }

    /// `flowaudit report inventory` through [`crate::report::run`]: snapshots from an archive,
    /// and what is refused.
    #[test]
    fn run_writes_the_inventory() {
        use crate::report::{Request, run};
        let archive = tempfile::tempdir().unwrap();
        let snapshots = archive.path().join(replay::SNAPSHOTS_DIR);
        std::fs::create_dir(&snapshots).unwrap();
        let name = "20261119T000000Z.json";
        std::fs::copy(testdata("inventory/snapshots").join(name), snapshots.join(name)).unwrap();
        let out = tempfile::tempdir().unwrap();
        let req = Request {
            kind: Some(Kind::Inventory),
            from: "2026-11-20T00:00:00Z".into(),
            to: "2026-11-21T00:00:00Z".into(),
            out: out.path().to_owned(),
            archive: Some(archive.path().to_owned()),
            audit_logs: vec![testdata("inventory/audit/audit.log"), testdata("inventory/audit/kube-apiserver.log")],
            ..Default::default()
        };
        let names: Vec<String> =
            run(&req).unwrap().iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["summary.csv", "endpoints.csv", "namespaces.csv", "services.csv"]);
        assert_eq!(
            std::fs::read(out.path().join("endpoints.csv")).unwrap(),
            std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/golden/inventory/endpoints.csv")
            )
            .unwrap()
        );
        let refused = |change: &dyn Fn(&mut Request)| {
            let mut r = req.clone();
            change(&mut r);
            run(&r).unwrap_err()
        };
        let none = refused(&|r| r.archive = None);
        assert_eq!(
            none.to_string(),
            "--snapshot-dir: the inventory report needs --snapshot-dir, --archive or --cluster DIR"
        );
        assert_eq!(refused(&|r| r.from = "2026-11-18T00:00:00Z".into()).exit_code(), 2);
        assert_eq!(refused(&|r| r.kind = Some(Kind::CisBenchmark)).exit_code(), 2);
    }

    #[test]
    fn report_data_and_html() {
        let inv = build(&timeline(), None).unwrap();
        let data = inv.report_data(Timestamp::UNIX_EPOCH);
        assert_eq!(data["endpointsSummary"]["numTotal"], 5);
        assert_eq!(data["endpointsSummary"]["numServiceAccounts"], 4);
        assert_eq!(data["replay"]["snapshotTime"], "2026-11-19T00:00:00Z");
        assert_eq!(data["replay"]["states"], 6);
        let html = inv.html(Timestamp::UNIX_EPOCH);
        assert!(html.contains("<h2>Services</h2>") && html.contains("Pod.v1(web/front-1)"));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
