//! The manifests source: a directory of ordinary Kubernetes YAML or JSON, read into a
//! [`ClusterState`] and watched for changes.
//!
//! Takes: a directory (every `*.yaml`, `*.yml`, `*.json` below it, multi-document YAML, `List`
//! kinds). Gives: a state, the documents it skipped (kinds it does not read), and every problem
//! found as a [`ManifestError`] naming the file, the document (1-based) and the field. Must never:
//! stop at the first problem (a check lists them all), guess a value it cannot parse, or replace a
//! good state with a broken one while watching.
//!
//! Kinds read: Namespace, Pod, Service, Node, ServiceAccount, NetworkPolicy
//! (`networking.k8s.io/v1`); Calico's NetworkPolicy, GlobalNetworkPolicy, StagedNetworkPolicy,
//! StagedGlobalNetworkPolicy, StagedKubernetesNetworkPolicy, Tier, NetworkSet, GlobalNetworkSet
//! and HostEndpoint (`projectcalico.org/v3` or `crd.projectcalico.org/v1`, see [`super::calico`]);
//! AdminNetworkPolicy and BaselineAdminNetworkPolicy (`policy.networking.k8s.io/v1alpha1`, see
//! [`super::admin`]). Selector expressions are kept as strings: the attribute stage validates
//! their syntax.
//!
//! [`build_partial`] builds a state by the same rules from documents that come from elsewhere
//! (the `kube` source's Calico and admin policy objects, listed in [`API_KINDS`]), leaving out the
//! documents with problems instead of refusing them all.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    api::{core::v1 as core, networking::v1 as networking},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::Deserialize;
use serde_json::Value;

use super::{
    AdminPolicy, BaselineAdminPolicy, CalicoPolicy, CalicoPolicyKind, ClusterState, FieldError,
    StagedKubeNetworkPolicy, Tier,
    admin::{self, AdminNetworkPolicySpec, BaselineAdminNetworkPolicySpec},
    calico::{self, HostEndpointSpec, NetworkSetSpec, StagedActionField, TierSpec, WirePolicySpec},
    convert::Convert,
    null_as_default,
};

/// A problem in one document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: document {document}: {field}: {reason}", file.display())]
pub struct ManifestError {
    /// The file.
    pub file: PathBuf,
    /// The document's position in the file, from 1.
    pub document: usize,
    /// The field (`metadata.name`, `status.podIPs[0].ip`), or `-` for the document as a whole.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// A document of a kind this version does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub file: PathBuf,
    /// The document's position, from 1.
    pub document: usize,
    /// `apiVersion` and `kind`.
    pub kind: String,
    /// Why it was skipped.
    pub reason: &'static str,
}

/// What a directory held.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The state built from it (version 0).
    pub state: ClusterState,
    /// Documents of kinds not read.
    pub skipped: Vec<Skipped>,
    /// The files' sizes and times, taken before reading them: any later edit differs.
    fingerprint: Fingerprint,
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Annotation naming a pod's cgroup (relative to the cgroup v2 root) in the manifests source.
pub use super::convert::CGROUP_ANNOTATION;

/// GlobalReports: not cluster state; `flowaudit reporter` reads them from the same directory.
const REPORTS: &[(&str, &str)] = &[("projectcalico.org/v3", "GlobalReport"), ("flowaudit.io/v1", "GlobalReport")];

/// Kinds flowaudit will read once policy attribution covers them; skipped with that reason now.
const LATER: &[(&str, &str)] = &[("v1", "Endpoints"), ("discovery.k8s.io/v1", "EndpointSlice")];

/// Calico's API group version, served by its API server.
const CALICO_V3: &str = "projectcalico.org/v3";
/// The CRDs behind Calico's API (same spec shape as [`CALICO_V3`]).
const CALICO_CRD: &str = "crd.projectcalico.org/v1";
/// The admin network policy API.
const ADMIN_V1ALPHA1: &str = "policy.networking.k8s.io/v1alpha1";

/// The kinds read besides the core ones (which every API server serves), each with the API
/// versions it is read at, preferred first: the `kube` source reads each kind at the first of them
/// the API server serves (Calico's API server, else its CRDs), and not at all if it serves none.
pub const API_KINDS: &[(&str, &[&str])] = &[
    ("NetworkPolicy", &[CALICO_V3, CALICO_CRD]),
    ("GlobalNetworkPolicy", &[CALICO_V3, CALICO_CRD]),
    ("StagedNetworkPolicy", &[CALICO_V3, CALICO_CRD]),
    ("StagedGlobalNetworkPolicy", &[CALICO_V3, CALICO_CRD]),
    ("StagedKubernetesNetworkPolicy", &[CALICO_V3, CALICO_CRD]),
    ("Tier", &[CALICO_V3, CALICO_CRD]),
    ("NetworkSet", &[CALICO_V3, CALICO_CRD]),
    ("GlobalNetworkSet", &[CALICO_V3, CALICO_CRD]),
    ("HostEndpoint", &[CALICO_V3, CALICO_CRD]),
    ("AdminNetworkPolicy", &[ADMIN_V1ALPHA1]),
    ("BaselineAdminNetworkPolicy", &[ADMIN_V1ALPHA1]),
];

/// The kind key of Tiers among the names seen.
const TIER_KIND: &str = "Tier.projectcalico.org";

/// A document with metadata and a spec of type `S` (`None` when absent or null).
#[derive(Deserialize)]
struct Doc<S> {
    #[serde(default, deserialize_with = "null_as_default")]
    metadata: ObjectMeta,
    spec: Option<S>,
}

/// `spec.stagedAction`, read apart from the rest of a spec.
#[derive(Deserialize, Default)]
struct StagedDoc {
    #[serde(default, deserialize_with = "null_as_default")]
    spec: StagedActionField,
}

/// The manifest files below `dir`, sorted.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| ManifestError {
            file: d.clone(),
            document: 0,
            field: "-".into(),
            reason: format!("cannot read the directory: {e}"),
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every manifest below `dir`. All problems are returned together.
pub fn load_dir(dir: &Path) -> Result<Loaded, Vec<ManifestError>> {
    let before = fingerprint(dir);
    let files = files(dir).map_err(|e| vec![e])?;
    load_files(files.into_iter().map(|file| {
        let text = std::fs::read_to_string(&file);
        (file, text)
    }))
    .map(|mut loaded| {
        loaded.fingerprint = before;
        loaded
    })
}

/// Reads one manifest file given as its name and text, by the rules of [`load_dir`] (a
/// directory holding only this file). The entry point of the `manifests` fuzz target.
pub fn load_text(file: &Path, text: &str) -> Result<Loaded, Vec<ManifestError>> {
    load_files([(file.to_owned(), Ok(text.to_owned()))])
}

/// Builds a state from files and their texts (or the error reading them), in order.
fn load_files(
    files: impl IntoIterator<Item = (PathBuf, std::io::Result<String>)>,
) -> Result<Loaded, Vec<ManifestError>> {
    let mut builder = Builder::default();
    for (file, text) in files {
        match text {
            Ok(text) => builder.file(&file, &text),
            Err(e) => builder.error(&file, 0, "-", format!("cannot read: {e}")),
        }
    }
    builder.finish()
}

/// What [`build_partial`] made of its documents.
#[derive(Clone, Debug, Default)]
pub struct Partial {
    /// The state built from the documents without problems (version 0).
    pub state: ClusterState,
    /// Documents of kinds not read.
    pub skipped: Vec<Skipped>,
    /// Every problem, by origin ([`ManifestError::file`]) and document; those documents are
    /// left out of `state`.
    pub errors: Vec<ManifestError>,
}

/// Builds a state from documents that were not read from files, such as the Kubernetes API's
/// objects (the `kube` source), by the same rules as [`load_dir`]. Each document comes with its
/// origin, which problems name where they name a file (as document 1). Unlike [`load_dir`], a
/// document with problems is left out and the rest is built. Documents are read in the order
/// given (it decides which of two duplicates is the one reported).
pub fn build_partial(documents: impl IntoIterator<Item = (PathBuf, Value)>) -> Partial {
    let mut builder = Builder::default();
    for (origin, value) in documents {
        builder.document(&origin, 1, value);
    }
    builder.finish_partial()
}

#[derive(Default)]
struct Builder {
    state: ClusterState,
    skipped: Vec<Skipped>,
    errors: Vec<ManifestError>,
    /// (kind, namespace, name) → where it was first defined, to report duplicates.
    seen: BTreeMap<(String, String, String), (PathBuf, usize)>,
    /// Tiers named by a policy's `spec.tier`, with the policy's file and document: each must be
    /// built in or defined by a Tier document, which may come later.
    tier_refs: Vec<(String, PathBuf, usize)>,
}

/// A parse error of a typed document, with the path serde reached.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (if path == "." { "-".into() } else { path }, e.into_inner().to_string())
    })
}

fn labels(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

impl Builder {
    fn error(&mut self, file: &Path, document: usize, field: &str, reason: impl Into<String>) {
        self.errors.push(ManifestError {
            file: file.to_owned(),
            document,
            field: field.to_owned(),
            reason: reason.into(),
        });
    }

    fn file(&mut self, file: &Path, text: &str) {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            match Value::deserialize(doc) {
                Ok(Value::Null) => {}
                Ok(value) => self.document(file, document, value),
                Err(e) => {
                    self.error(file, document, "-", format!("not valid YAML/JSON: {e}"));
                    // The parser cannot resynchronise after a syntax error.
                    break;
                }
            }
        }
    }

    fn document(&mut self, file: &Path, document: usize, value: Value) {
        let Value::Object(map) = &value else {
            self.error(file, document, "-", "a manifest must be a mapping with apiVersion and kind");
            return;
        };
        let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        if api_version.is_empty() {
            self.error(file, document, "apiVersion", "required");
            return;
        }
        if kind.is_empty() {
            self.error(file, document, "kind", "required");
            return;
        }
        // Every policy-related document is kept as read for the audit log, also one with problems
        // (a broken policy created in a cluster is a change too).
        std::sync::Arc::make_mut(&mut self.state.objects).insert_document(&value);
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "List") => {
                let items = map.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                for item in items {
                    self.document(file, document, item);
                }
            }
            ("v1", "Namespace") => self.typed::<core::Namespace>(file, document, value),
            ("v1", "Pod") => self.typed::<core::Pod>(file, document, value),
            ("v1", "Service") => self.typed::<core::Service>(file, document, value),
            ("v1", "Node") => self.typed::<core::Node>(file, document, value),
            ("v1", "ServiceAccount") => self.typed::<core::ServiceAccount>(file, document, value),
            ("networking.k8s.io/v1", "NetworkPolicy") => self.typed::<networking::NetworkPolicy>(file, document, value),
            (CALICO_V3 | CALICO_CRD, "NetworkPolicy") => {
                self.calico_policy(file, document, CalicoPolicyKind::NetworkPolicy, value)
            }
            (CALICO_V3 | CALICO_CRD, "GlobalNetworkPolicy") => {
                self.calico_policy(file, document, CalicoPolicyKind::GlobalNetworkPolicy, value);
            }
            (CALICO_V3 | CALICO_CRD, "StagedNetworkPolicy") => {
                self.calico_policy(file, document, CalicoPolicyKind::StagedNetworkPolicy, value);
            }
            (CALICO_V3 | CALICO_CRD, "StagedGlobalNetworkPolicy") => {
                self.calico_policy(file, document, CalicoPolicyKind::StagedGlobalNetworkPolicy, value);
            }
            (CALICO_V3 | CALICO_CRD, "StagedKubernetesNetworkPolicy") => self.staged_kube_policy(file, document, value),
            (CALICO_V3 | CALICO_CRD, "Tier") => self.tier(file, document, value),
            (CALICO_V3 | CALICO_CRD, "NetworkSet") => self.network_set(file, document, true, value),
            (CALICO_V3 | CALICO_CRD, "GlobalNetworkSet") => self.network_set(file, document, false, value),
            (CALICO_V3 | CALICO_CRD, "HostEndpoint") => self.host_endpoint(file, document, value),
            (ADMIN_V1ALPHA1, "AdminNetworkPolicy") => self.admin_policy(file, document, value),
            (ADMIN_V1ALPHA1, "BaselineAdminNetworkPolicy") => self.baseline_admin_policy(file, document, value),
            (a, k) => {
                let reason = if REPORTS.contains(&(a, k)) {
                    "read by `flowaudit reporter` (schedules), not cluster state"
                } else if LATER.contains(&(a, k)) {
                    "read by a later version of flowaudit (policy attribution)"
                } else {
                    "not a kind flowaudit reads"
                };
                tracing::info!(message = "Skipping a manifest.", file = %file.display(), document, api_version = a, kind = k, reason);
                self.skipped.push(Skipped { file: file.to_owned(), document, kind: format!("{a}/{k}"), reason });
            }
        }
    }

    /// `(namespace, name)`, reporting a missing name and duplicates.
    fn name(
        &mut self,
        file: &Path,
        document: usize,
        kind: &str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        namespaced: bool,
    ) -> Option<(String, String)> {
        let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
            self.error(file, document, "metadata.name", "required");
            return None;
        };
        let namespace = if namespaced {
            meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into())
        } else {
            String::new()
        };
        self.claim(file, document, kind, &namespace, &name, &name, namespaced).then_some((namespace, name))
    }

    /// Records that `file`/`document` defines `kind` `namespace`/`key`, reporting a duplicate on
    /// `metadata.name` (as `shown`). False for a duplicate.
    #[expect(
        clippy::too_many_arguments,
        reason = "a private helper; the arguments are all plain facts of one document"
    )]
    fn claim(
        &mut self,
        file: &Path,
        document: usize,
        kind: &str,
        namespace: &str,
        key: &str,
        shown: &str,
        namespaced: bool,
    ) -> bool {
        let id = (kind.to_owned(), namespace.to_owned(), key.to_owned());
        if let Some((first_file, first_doc)) = self.seen.get(&id) {
            let reason = format!(
                "duplicate {kind} {}{shown}, first defined in {} document {first_doc}",
                if namespaced { format!("{namespace}/") } else { String::new() },
                first_file.display()
            );
            self.error(file, document, "metadata.name", reason);
            return false;
        }
        self.seen.insert(id, (file.to_owned(), document));
        true
    }

    fn field_errors(&mut self, file: &Path, document: usize, errors: Vec<FieldError>) {
        for e in errors {
            self.error(file, document, &e.field, e.reason);
        }
    }

    /// A typed document, or `None` with its problem reported.
    fn doc<S: serde::de::DeserializeOwned>(&mut self, file: &Path, document: usize, value: Value) -> Option<Doc<S>> {
        match typed::<Doc<S>>(value) {
            Ok(doc) => Some(doc),
            Err((field, reason)) => {
                self.error(file, document, &field, reason);
                None
            }
        }
    }

    /// `spec.stagedAction`: `Some` (default `Set`) for staged kinds, `None` for others, which
    /// must not have one.
    fn staged_action(
        &mut self,
        file: &Path,
        document: usize,
        staged: bool,
        value: &Value,
    ) -> Result<Option<calico::StagedAction>, ()> {
        let field = match typed::<StagedDoc>(value.clone()) {
            Ok(doc) => doc.spec.staged_action,
            Err((field, reason)) => {
                self.error(file, document, &field, reason);
                return Err(());
            }
        };
        match (staged, field) {
            (true, action) => Ok(Some(action.unwrap_or_default())),
            (false, None) => Ok(None),
            (false, Some(_)) => {
                self.error(file, document, "spec.stagedAction", "only the staged kinds have a staged action");
                Err(())
            }
        }
    }

    fn calico_policy(&mut self, file: &Path, document: usize, kind: CalicoPolicyKind, value: Value) {
        let staged_action = self.staged_action(file, document, kind.is_staged(), &value);
        let Some(doc) = self.doc::<WirePolicySpec>(file, document, value) else { return };
        let wire = doc.spec.unwrap_or_default();
        // The tier is checked once every Tier is known, whatever else is wrong.
        if let Some(tier) = &wire.tier {
            self.tier_refs.push((tier.clone(), file.to_owned(), document));
        }
        let Ok(staged_action) = staged_action else { return };
        let spec = match wire.check(kind.is_global()) {
            Ok(spec) => spec,
            Err(errors) => return self.field_errors(file, document, errors),
        };
        let Some(name) = doc.metadata.name.clone().filter(|n| !n.is_empty()) else {
            return self.error(file, document, "metadata.name", "required");
        };
        let namespace = (!kind.is_global()).then(|| doc.metadata.namespace.clone().unwrap_or_else(|| "default".into()));
        let tier = spec.tier.clone().unwrap_or_else(|| calico::DEFAULT_TIER.into());
        // `p` in tier `t` and `t.p` are one policy to Calico (it prefixes tiered names).
        let key = if name.starts_with(&format!("{tier}.")) { name.clone() } else { format!("{tier}.{name}") };
        let kind_key = format!("{}.projectcalico.org", kind.as_str());
        if !self.claim(
            file,
            document,
            &kind_key,
            namespace.as_deref().unwrap_or_default(),
            &key,
            &name,
            namespace.is_some(),
        ) {
            return;
        }
        self.state.calico_policies.push(CalicoPolicy { kind, namespace, name, spec, staged_action });
    }

    fn staged_kube_policy(&mut self, file: &Path, document: usize, value: Value) {
        let staged_action = self.staged_action(file, document, true, &value);
        let Some(doc) = self.doc::<networking::NetworkPolicySpec>(file, document, value) else { return };
        let Ok(staged_action) = staged_action else { return };
        let Some((namespace, name)) =
            self.name(file, document, "StagedKubernetesNetworkPolicy.projectcalico.org", &doc.metadata, true)
        else {
            return;
        };
        self.state.staged_kube_policies.push(StagedKubeNetworkPolicy {
            namespace,
            name,
            spec: doc.spec.unwrap_or_default(),
            staged_action: staged_action.unwrap_or_default(),
        });
    }

    fn tier(&mut self, file: &Path, document: usize, value: Value) {
        let Some(doc) = self.doc::<TierSpec>(file, document, value) else { return };
        // Named first: a tier with a broken spec still counts as defined for its policies.
        let Some((_, name)) = self.name(file, document, TIER_KIND, &doc.metadata, false) else { return };
        let spec = doc.spec.unwrap_or_default();
        match spec.check() {
            Ok(default_action) => self.state.tiers.push(Tier { name, order: spec.order, default_action }),
            Err(e) => self.field_errors(file, document, vec![e]),
        }
    }

    fn network_set(&mut self, file: &Path, document: usize, namespaced: bool, value: Value) {
        let Some(doc) = self.doc::<NetworkSetSpec>(file, document, value) else { return };
        let kind = if namespaced { "NetworkSet.projectcalico.org" } else { "GlobalNetworkSet.projectcalico.org" };
        let Some((namespace, name)) = self.name(file, document, kind, &doc.metadata, namespaced) else { return };
        match doc.spec.unwrap_or_default().check(namespaced.then_some(namespace), name, labels(&doc.metadata)) {
            Ok(set) => self.state.network_sets.push(set),
            Err(errors) => self.field_errors(file, document, errors),
        }
    }

    fn host_endpoint(&mut self, file: &Path, document: usize, value: Value) {
        let Some(doc) = self.doc::<HostEndpointSpec>(file, document, value) else { return };
        let Some((_, name)) = self.name(file, document, "HostEndpoint.projectcalico.org", &doc.metadata, false) else {
            return;
        };
        match doc.spec.unwrap_or_default().check(name, labels(&doc.metadata)) {
            Ok(hep) => self.state.host_endpoints.push(hep),
            Err(errors) => self.field_errors(file, document, errors),
        }
    }

    fn admin_policy(&mut self, file: &Path, document: usize, value: Value) {
        let Some(doc) = self.doc::<AdminNetworkPolicySpec<String>>(file, document, value) else { return };
        let Some(spec) = doc.spec else { return self.error(file, document, "spec", "required") };
        let spec = match spec.check() {
            Ok(spec) => spec,
            Err(errors) => return self.field_errors(file, document, errors),
        };
        let Some((_, name)) =
            self.name(file, document, "AdminNetworkPolicy.policy.networking.k8s.io", &doc.metadata, false)
        else {
            return;
        };
        // `check` kept the priority within 0-1000.
        let priority = u16::try_from(spec.priority).unwrap_or(u16::MAX);
        self.state.admin_policies.push(AdminPolicy { name, priority, spec });
    }

    fn baseline_admin_policy(&mut self, file: &Path, document: usize, value: Value) {
        let Some(doc) = self.doc::<BaselineAdminNetworkPolicySpec<String>>(file, document, value) else { return };
        let spec = match doc.spec.map(BaselineAdminNetworkPolicySpec::check) {
            Some(Ok(spec)) => Some(spec),
            Some(Err(errors)) => {
                self.field_errors(file, document, errors);
                None
            }
            None => {
                self.error(file, document, "spec", "required");
                None
            }
        };
        let Some((_, name)) =
            self.name(file, document, "BaselineAdminNetworkPolicy.policy.networking.k8s.io", &doc.metadata, false)
        else {
            return;
        };
        if name != admin::BASELINE_NAME {
            return self.error(
                file,
                document,
                "metadata.name",
                format!("{name:?}: a BaselineAdminNetworkPolicy must be named {:?}", admin::BASELINE_NAME),
            );
        }
        if let Some(spec) = spec {
            self.state.baseline_admin_policy = Some(BaselineAdminPolicy { name, spec });
        }
    }

    /// A core kind: typed, named (duplicates reported), converted by the rules both sources share.
    fn typed<K: Convert + serde::de::DeserializeOwned>(&mut self, file: &Path, document: usize, value: Value) {
        let object = match typed::<K>(value) {
            Ok(o) => o,
            Err((field, reason)) => return self.error(file, document, &field, reason),
        };
        if self.name(file, document, K::KIND, object.meta(), K::NAMESPACED).is_none() {
            return;
        }
        match object.convert() {
            Ok(model) => K::add(model, &mut self.state),
            Err(errors) => self.field_errors(file, document, errors),
        }
    }

    /// Whether `tier` is built in or defined by a Tier document (one with a broken spec counts:
    /// its own problem is reported, not one more on each of its policies).
    fn tier_defined(&self, tier: &str) -> bool {
        calico::BUILT_IN_TIERS.contains(&tier)
            || self.seen.contains_key(&(TIER_KIND.to_owned(), String::new(), tier.to_owned()))
    }

    /// Reports the policies' tiers that no Tier document defines (each may come after its
    /// policies), then sorts the problems by file and document and the state's lists.
    fn complete(&mut self) {
        let refs = std::mem::take(&mut self.tier_refs);
        for (tier, file, document) in refs {
            if !self.tier_defined(&tier) {
                let reason = format!(
                    "tier {tier:?} is not defined by a Tier document (built in: {})",
                    calico::BUILT_IN_TIERS.join(", ")
                );
                self.error(&file, document, "spec.tier", reason);
            }
        }
        // In file and document order (a stable sort keeps each document's own order).
        self.errors.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
        let s = &mut self.state;
        s.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        s.services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        s.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        s.service_accounts.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        s.network_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        s.calico_policies.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        s.staged_kube_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        s.tiers.sort_by(|a, b| a.name.cmp(&b.name));
        s.network_sets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        s.host_endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        s.admin_policies.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    }

    /// The state if no document had a problem, else every problem.
    fn finish(mut self) -> Result<Loaded, Vec<ManifestError>> {
        self.complete();
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        Ok(Loaded { state: self.state, skipped: self.skipped, fingerprint: Vec::new() })
    }

    /// The state of the documents without problems, and the problems of the others. Every kind
    /// adds an object to the state only when its document has no problem, except a policy in a
    /// tier that no Tier document defines, which is only known at the end: it is taken out here.
    fn finish_partial(mut self) -> Partial {
        self.complete();
        let calico_policies = std::mem::take(&mut self.state.calico_policies);
        self.state.calico_policies = calico_policies.into_iter().filter(|p| self.tier_defined(p.tier())).collect();
        Partial { state: self.state, skipped: self.skipped, errors: self.errors }
    }
}

/// What identifies the directory's content: every file with its size and modification time.
fn fingerprint(dir: &Path) -> Fingerprint {
    files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            let mtime = meta.and_then(|m| m.modified().ok());
            (f, len, mtime)
        })
        .collect()
}

/// Watches `dir` every `period` and publishes each new good state (versions count up from the
/// `initial` load's). A broken edit is logged with every problem and the last good state stays.
pub fn watch(dir: PathBuf, initial: Loaded, period: Duration) -> tokio::sync::watch::Receiver<Arc<ClusterState>> {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(initial.state));
    let mut last = initial.fingerprint;
    tokio::spawn(async move {
        let mut version = tx.borrow().version;
        loop {
            tokio::time::sleep(period).await;
            let now = fingerprint(&dir);
            if now == last {
                continue;
            }
            last = now;
            match load_dir(&dir) {
                Ok(loaded) => {
                    version += 1;
                    last = loaded.fingerprint;
                    let mut state = loaded.state;
                    state.version = version;
                    tracing::info!(message = "Cluster state reloaded.", dir = %dir.display(), version);
                    if tx.send(Arc::new(state)).is_err() {
                        return;
                    }
                }
                Err(errors) => {
                    for error in errors {
                        tracing::error!(message = "Manifest problem; keeping the previous state.", %error);
                    }
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests;
