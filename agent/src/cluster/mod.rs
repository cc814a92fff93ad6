//! cluster: the read-only model of the cluster state, a side input of enrich and attribute.
//!
//! Takes: objects from a source (`manifests`: a directory of Kubernetes YAML/JSON; `kube`: the
//! Kubernetes API through reflectors), converted by the same rules (`convert`). Gives: an immutable [`ClusterState`] snapshot per version, trimmed to the
//! fields flowaudit uses. Must never: sit in the flow path, or change while a stage reads it
//! (stages hold an `Arc` of one version; a change builds a new one).

pub mod admin;
pub mod calico;
pub mod convert;
pub mod kube;
pub mod manifests;
pub mod selector;

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

pub use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use self::{
    admin::{AdminNetworkPolicySpec, BaselineAdminNetworkPolicySpec},
    calico::{Action, CalicoPolicySpec, StagedAction},
};

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// A Namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
}

/// A container port with a name (the target of named ports in policies and Services).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamedPort {
    /// Port name.
    pub name: String,
    /// Port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// A Pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid` (names the pod's kubepods cgroup).
    pub uid: String,
    /// Labels.
    pub labels: Labels,
    /// `metadata.generateName`: the prefix of generated names (the aggregated name is it + `*`).
    pub generate_name: Option<String>,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: String,
    /// Named container ports.
    pub named_ports: Vec<NamedPort>,
    /// `flowaudit.io/cgroup` annotation: the pod's cgroup, relative to the cgroup v2 root.
    pub cgroup: Option<String>,
}

/// A Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (may be empty for a single-port Service).
    pub name: String,
    /// Service port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// A Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.clusterIPs` (or `spec.clusterIP`), without `None`.
    pub cluster_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// `spec.selector`.
    pub selector: Labels,
}

/// A Node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// `status.addresses` that are IPs.
    pub addresses: Vec<IpAddr>,
}

/// A ServiceAccount.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceAccount {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
}

/// A Kubernetes `networking.k8s.io/v1` NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeNetworkPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec, as Kubernetes defines it.
    pub spec: NetworkPolicySpec,
}

/// The kind of a [`CalicoPolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CalicoPolicyKind {
    /// `NetworkPolicy` (namespaced).
    NetworkPolicy,
    /// `GlobalNetworkPolicy` (cluster-wide).
    GlobalNetworkPolicy,
    /// `StagedNetworkPolicy` (namespaced, never enforced).
    StagedNetworkPolicy,
    /// `StagedGlobalNetworkPolicy` (cluster-wide, never enforced).
    StagedGlobalNetworkPolicy,
}

impl CalicoPolicyKind {
    /// The Kubernetes kind, e.g. `GlobalNetworkPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "NetworkPolicy",
            Self::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            Self::StagedNetworkPolicy => "StagedNetworkPolicy",
            Self::StagedGlobalNetworkPolicy => "StagedGlobalNetworkPolicy",
        }
    }

    /// Whether the kind is cluster-wide (no namespace).
    pub fn is_global(self) -> bool {
        matches!(self, Self::GlobalNetworkPolicy | Self::StagedGlobalNetworkPolicy)
    }

    /// Whether the kind is staged (reported as pending, never enforced).
    pub fn is_staged(self) -> bool {
        matches!(self, Self::StagedNetworkPolicy | Self::StagedGlobalNetworkPolicy)
    }
}

/// A Calico `NetworkPolicy`, `GlobalNetworkPolicy` or one of their staged variants
/// (`projectcalico.org/v3`, or the same kinds under `crd.projectcalico.org/v1`).
///
/// Calico has historically prefixed the names of tiered policies with `<tier>.`; both
/// `name: tier1.policy` and `name: policy` with `spec.tier: tier1` are accepted, and the name is
/// kept as written. The tier is always [`CalicoPolicy::tier`] (`spec.tier`), never guessed from the
/// name.
#[derive(Clone, Debug, PartialEq)]
pub struct CalicoPolicy {
    /// Which of the four kinds.
    pub kind: CalicoPolicyKind,
    /// Namespace (`default` when the document names none); `None` for the global kinds.
    pub namespace: Option<String>,
    /// Name, as written.
    pub name: String,
    /// The checked spec.
    pub spec: CalicoPolicySpec,
    /// `spec.stagedAction` of the staged kinds (`Set` when unset); `None` for enforced kinds.
    pub staged_action: Option<StagedAction>,
}

impl CalicoPolicy {
    /// The policy's tier: `spec.tier`, or `default`.
    pub fn tier(&self) -> &str {
        self.spec.tier.as_deref().unwrap_or(calico::DEFAULT_TIER)
    }
}

/// A Calico `StagedKubernetesNetworkPolicy`: a Kubernetes NetworkPolicy that is only reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StagedKubeNetworkPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec, as Kubernetes defines it (`stagedAction` taken out).
    pub spec: NetworkPolicySpec,
    /// `spec.stagedAction` (`Set` when unset).
    pub staged_action: StagedAction,
}

/// A Calico `Tier`. The built-in tiers (`default`, `kube-admin`, `kube-baseline`) are listed only
/// when a document defines them.
#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    /// Name.
    pub name: String,
    /// `spec.order`; `None` sorts after every ordered tier.
    pub order: Option<f64>,
    /// `spec.defaultAction`: `Deny` (when unset) or `Pass`.
    pub default_action: Action,
}

/// A Calico `NetworkSet` or `GlobalNetworkSet`: CIDRs with labels, selectable like endpoints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkSet {
    /// Namespace; `None` for a `GlobalNetworkSet`.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// `spec.nets`, parsed (host bits cleared; a bare IP is a /32 or /128).
    pub nets: Vec<IpNet>,
}

/// A Calico `HostEndpoint`: a node's interface (or all of its host namespace) under policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostEndpoint {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// `spec.node`.
    pub node: String,
    /// `spec.interfaceName`: an interface, or `*` for every interface of the host namespace;
    /// `None` when the endpoint is found by `expected_ips`.
    pub interface_name: Option<String>,
    /// `spec.expectedIPs`.
    pub expected_ips: Vec<IpAddr>,
    /// `spec.profiles`.
    pub profiles: Vec<String>,
    /// `spec.ports`: named ports (protocol `TCP`, `UDP` or `SCTP`).
    pub named_ports: Vec<NamedPort>,
}

/// A Kubernetes `AdminNetworkPolicy` (`policy.networking.k8s.io/v1alpha1`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdminPolicy {
    /// Name (cluster-wide).
    pub name: String,
    /// `spec.priority`, checked to be 0-1000 (lower goes first).
    pub priority: u16,
    /// The checked spec.
    pub spec: AdminNetworkPolicySpec,
}

/// The Kubernetes `BaselineAdminNetworkPolicy` (`policy.networking.k8s.io/v1alpha1`); there is
/// at most one, named `default`.
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineAdminPolicy {
    /// Name (always `default`).
    pub name: String,
    /// The checked spec.
    pub spec: BaselineAdminNetworkPolicySpec,
}

/// One version of the cluster state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    /// Increases with every change.
    pub version: u64,
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods, sorted by namespace and name.
    pub pods: Vec<Pod>,
    /// Services, sorted by namespace and name.
    pub services: Vec<Service>,
    /// Nodes, sorted by name.
    pub nodes: Vec<Node>,
    /// ServiceAccounts, sorted by namespace and name.
    pub service_accounts: Vec<ServiceAccount>,
    /// Kubernetes NetworkPolicies, sorted by namespace and name.
    pub network_policies: Vec<KubeNetworkPolicy>,
    /// Calico policies of the four kinds, sorted by kind, namespace and name.
    pub calico_policies: Vec<CalicoPolicy>,
    /// Calico StagedKubernetesNetworkPolicies, sorted by namespace and name.
    pub staged_kube_policies: Vec<StagedKubeNetworkPolicy>,
    /// Calico Tiers defined by documents, sorted by name.
    pub tiers: Vec<Tier>,
    /// Calico GlobalNetworkSets (first) and NetworkSets, sorted by namespace and name.
    pub network_sets: Vec<NetworkSet>,
    /// Calico HostEndpoints, sorted by name.
    pub host_endpoints: Vec<HostEndpoint>,
    /// AdminNetworkPolicies, sorted by priority and name.
    pub admin_policies: Vec<AdminPolicy>,
    /// The BaselineAdminNetworkPolicy, if any.
    pub baseline_admin_policy: Option<BaselineAdminPolicy>,
    /// The policy-related objects as the source read them (for the audit log): see [`Objects`].
    pub objects: Arc<Objects>,
}

/// Names a policy-related object: API group (`crd.projectcalico.org` is read as
/// `projectcalico.org`: the same objects), resource (the kind's plural, lowercase), namespace
/// (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// `""` (core), `networking.k8s.io`, `projectcalico.org`, `policy.networking.k8s.io`.
    pub api_group: String,
    /// `networkpolicies`, `pods`, `tiers`, ...
    pub resource: String,
    /// Namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The policy-related kinds: `(API groups, kind, namespaced)`. Each is audited as a whole
/// object, except Pods and Namespaces, whose changes count only when their labels change (what
/// policies select on).
pub const AUDITED_KINDS: &[(&[&str], &str, bool)] = &[
    (&[""], "Namespace", false),
    (&[""], "Pod", true),
    (&["networking.k8s.io"], "NetworkPolicy", true),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "NetworkPolicy", true),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "GlobalNetworkPolicy", false),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "StagedNetworkPolicy", true),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "StagedGlobalNetworkPolicy", false),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "StagedKubernetesNetworkPolicy", true),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "Tier", false),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "NetworkSet", true),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "GlobalNetworkSet", false),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "HostEndpoint", false),
    (&["policy.networking.k8s.io"], "AdminNetworkPolicy", false),
    (&["policy.networking.k8s.io"], "BaselineAdminNetworkPolicy", false),
];

/// Calico's API group.
pub const CALICO_GROUP: &str = "projectcalico.org";
/// The API group of Calico's CRDs (the same objects as [`CALICO_GROUP`]).
pub const CALICO_CRD_GROUP: &str = "crd.projectcalico.org";

/// The annotation `kubectl apply` keeps a whole copy of the object in (dropped from [`Objects`]).
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

impl ObjectKey {
    /// The key of a document (`apiVersion`, `kind`, `metadata`), if its kind is policy-related
    /// and it has a name. A namespaced object without a namespace is in `default`.
    pub fn of(object: &Value) -> Option<ObjectKey> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let kind = object.get("kind")?.as_str()?;
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let (_, _, namespaced) = AUDITED_KINDS.iter().find(|(groups, k, _)| *k == kind && groups.contains(&group))?;
        let meta = object.get("metadata")?;
        let name = meta.get("name")?.as_str().filter(|n| !n.is_empty())?;
        let namespace = if *namespaced {
            meta.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or("default")
        } else {
            ""
        };
        Some(ObjectKey {
            api_group: Self::group(group).to_owned(),
            resource: plural(kind),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The group objects are keyed by: `crd.projectcalico.org` is `projectcalico.org`.
    pub fn group(api_group: &str) -> &str {
        if api_group == CALICO_CRD_GROUP { CALICO_GROUP } else { api_group }
    }

    /// Whether only the labels of such an object matter to policy (Pods, Namespaces).
    pub fn labels_only(&self) -> bool {
        self.api_group.is_empty() && (self.resource == "pods" || self.resource == "namespaces")
    }

    /// Whether `resource` of `api_group` is one of the [`AUDITED_KINDS`].
    pub fn is_audited(api_group: &str, resource: &str) -> bool {
        AUDITED_KINDS.iter().any(|(groups, kind, _)| groups.contains(&api_group) && plural(kind) == resource)
    }
}

/// The resource name of a kind: its plural, lowercase (`NetworkPolicy` → `networkpolicies`).
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    }
}

/// The policy-related objects of a state ([`AUDITED_KINDS`]) as the source read them, by key:
/// the documents of the manifests source, the API's objects for the `kube` source (Pods trimmed as
/// the cache keeps them). `metadata.managedFields`, the last-applied annotation and `status`
/// (except a Pod's) are dropped. Values are shared between versions.
///
/// Equality is what an audit sees: the whole object for the policy kinds, only the uid and the
/// labels for Pods and Namespaces (a status update of a pod is not a policy change and makes no
/// new state version).
#[derive(Clone, Default)]
pub struct Objects(pub BTreeMap<ObjectKey, Arc<Value>>);

impl Objects {
    /// Adds a document if its kind is policy-related (the first of two with the same key stays).
    pub fn insert_document(&mut self, document: &Value) {
        if let Some(key) = ObjectKey::of(document) {
            self.0.entry(key).or_insert_with(|| Arc::new(strip(document.clone())));
        }
    }

    /// Whether `a` and `b`, two versions of the object `key`, differ for an audit.
    pub fn differ(key: &ObjectKey, a: &Value, b: &Value) -> bool {
        if key.labels_only() {
            let part = |v: &Value, f: &str| v.get("metadata").and_then(|m| m.get(f)).cloned().unwrap_or(Value::Null);
            let labels = |v: &Value| match part(v, "labels") {
                Value::Null => Value::Object(Default::default()),
                l => l,
            };
            labels(a) != labels(b) || part(a, "uid") != part(b, "uid")
        } else {
            a != b
        }
    }
}

/// `object` without what no audit reader wants: managed fields, the last-applied copy, and the
/// status of kinds other than Pod.
pub fn strip(mut object: Value) -> Value {
    let pod = object.get("kind").and_then(Value::as_str) == Some("Pod");
    if let Some(map) = object.as_object_mut() {
        if !pod {
            map.remove("status");
        }
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
            if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                annotations.remove(LAST_APPLIED);
                if annotations.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
    }
    object
}

impl PartialEq for Objects {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((ka, a), (kb, b))| ka == kb && (Arc::ptr_eq(a, b) || !Objects::differ(ka, a, b)))
    }
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Objects({} objects)", self.0.len())
    }
}

impl ClusterState {
    /// Object counts per kind, for `flowaudit check`.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("Namespace", self.namespaces.len()),
            ("Pod", self.pods.len()),
            ("Service", self.services.len()),
            ("Node", self.nodes.len()),
            ("ServiceAccount", self.service_accounts.len()),
            ("NetworkPolicy.networking.k8s.io/v1", self.network_policies.len()),
            ("NetworkPolicy.projectcalico.org/v3", self.calico_count(CalicoPolicyKind::NetworkPolicy)),
            ("GlobalNetworkPolicy.projectcalico.org/v3", self.calico_count(CalicoPolicyKind::GlobalNetworkPolicy)),
            ("StagedNetworkPolicy.projectcalico.org/v3", self.calico_count(CalicoPolicyKind::StagedNetworkPolicy)),
            (
                "StagedGlobalNetworkPolicy.projectcalico.org/v3",
                self.calico_count(CalicoPolicyKind::StagedGlobalNetworkPolicy),
            ),
            ("StagedKubernetesNetworkPolicy.projectcalico.org/v3", self.staged_kube_policies.len()),
            ("Tier.projectcalico.org/v3", self.tiers.len()),
            ("NetworkSet.projectcalico.org/v3", self.network_sets.iter().filter(|s| s.namespace.is_some()).count()),
            (
                "GlobalNetworkSet.projectcalico.org/v3",
                self.network_sets.iter().filter(|s| s.namespace.is_none()).count(),
            ),
            ("HostEndpoint.projectcalico.org/v3", self.host_endpoints.len()),
            ("AdminNetworkPolicy.policy.networking.k8s.io/v1alpha1", self.admin_policies.len()),
            (
                "BaselineAdminNetworkPolicy.policy.networking.k8s.io/v1alpha1",
                usize::from(self.baseline_admin_policy.is_some()),
            ),
        ]
    }

    fn calico_count(&self, kind: CalicoPolicyKind) -> usize {
        self.calico_policies.iter().filter(|p| p.kind == kind).count()
    }
}

/// A problem with one field of a document, found while checking a spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field's path from the document root (`spec.ingress[0].source.nets[1]`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// Parses a CIDR as Kubernetes and Calico accept it: `address/prefix` with host bits allowed
/// (they are cleared: `10.0.0.1/8` is `10.0.0.0/8`), or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let Some((addr, len)) = text.split_once('/') else {
        return text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{text:?} is not a CIDR (address/prefix) or an IP address"));
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return Err(format!("{text:?} is not a CIDR: {addr:?} is not an IP address"));
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = Some(len)
        .filter(|l| !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|l| l.parse::<u8>().ok())
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("{text:?} is not a CIDR: the prefix length must be 0-{max}"))?;
    IpNet::new(addr, len).map(|n| n.trunc()).map_err(|e| format!("{text:?} is not a CIDR: {e}"))
}

/// Parses a list of CIDRs with [`parse_cidr`], reporting each bad one as `at[i]`.
pub(crate) fn cidrs(list: &[String], at: &str, errors: &mut Vec<FieldError>) -> Vec<IpNet> {
    list.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            parse_cidr(text).map_err(|e| errors.push(FieldError::new(format!("{at}[{i}]"), e))).ok()
        })
        .collect()
}

/// Reads a field that may be `null` (YAML `egress:` with nothing after it) as its default.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}
