//! The manifests source: a directory of ordinary Kubernetes YAML or JSON, read into a
//! [`ClusterState`] and watched for changes.
//!
//! Takes: a directory (every `*.yaml`, `*.yml`, `*.json` below it, multi-document YAML, `List`
//! kinds). Gives: a state, the documents it skipped (kinds it does not read), and every problem
//! found as a [`ManifestError`] naming the file, the document (1-based) and the field. Must never:
//! stop at the first problem (a check lists them all), guess a value it cannot parse, or replace a
//! good state with a broken one while watching.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::{core::v1 as core, networking::v1 as networking};
use serde::Deserialize as _;
use serde_json::Value;

use super::{
    ClusterState,
    convert::{self, Convert, FieldError},
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
pub const CGROUP_ANNOTATION: &str = convert::CGROUP_ANNOTATION;

/// Kinds flowaudit will read once policy attribution covers them; skipped with that reason now.
const LATER: &[(&str, &str)] = &[
    ("projectcalico.org/v3", "NetworkPolicy"),
    ("projectcalico.org/v3", "GlobalNetworkPolicy"),
    ("projectcalico.org/v3", "Tier"),
    ("projectcalico.org/v3", "NetworkSet"),
    ("projectcalico.org/v3", "GlobalNetworkSet"),
    ("projectcalico.org/v3", "HostEndpoint"),
    ("projectcalico.org/v3", "StagedNetworkPolicy"),
    ("projectcalico.org/v3", "StagedGlobalNetworkPolicy"),
    ("projectcalico.org/v3", "StagedKubernetesNetworkPolicy"),
    ("projectcalico.org/v3", "GlobalReport"),
    ("flowaudit.io/v1", "GlobalReport"),
    ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"),
    ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy"),
    ("v1", "Endpoints"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
];

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
    let mut builder = Builder::default();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => builder.file(file, &text),
            Err(e) => builder.error(file, 0, "-", format!("cannot read: {e}")),
        }
    }
    builder.finish().map(|mut loaded| {
        loaded.fingerprint = before;
        loaded
    })
}

#[derive(Default)]
struct Builder {
    state: ClusterState,
    skipped: Vec<Skipped>,
    errors: Vec<ManifestError>,
    /// (kind, namespace, name) → where it was first defined, to report duplicates.
    seen: BTreeMap<(String, String, String), (PathBuf, usize)>,
}

/// A parse error of a typed document, with the path serde reached.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (if path == "." { "-".into() } else { path }, e.into_inner().to_string())
    })
}

impl Builder {
    fn error(&mut self, file: &Path, document: usize, field: &str, reason: impl Into<String>) {
        self.errors.push(ManifestError { file: file.to_owned(), document, field: field.to_owned(), reason: reason.into() });
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
            (a, k) => {
                let reason = if LATER.contains(&(a, k)) {
                    "read by a later version of flowaudit (policy attribution)"
                } else {
                    "not a kind flowaudit reads"
                };
                tracing::info!(message = "Skipping a manifest.", file = %file.display(), document, api_version = a, kind = k, reason);
                self.skipped.push(Skipped { file: file.to_owned(), document, kind: format!("{a}/{k}"), reason });
            }
        }
    }

    /// Parses a document of kind `K`, checks its name (present, not a duplicate), converts it
    /// with the shared rules and adds it; every problem is reported with file and document.
    fn typed<K: Convert + serde::de::DeserializeOwned>(&mut self, file: &Path, document: usize, value: Value) {
        let object = match typed::<K>(value) {
            Ok(o) => o,
            Err((field, reason)) => return self.error(file, document, &field, reason),
        };
        if !self.name(file, document, K::KIND, object.meta(), K::NAMESPACED) {
            return;
        }
        match object.convert() {
            Ok(model) => K::add(model, &mut self.state),
            Err(errors) => {
                for FieldError { field, reason } in errors {
                    self.error(file, document, &field, reason);
                }
            }
        }
    }

    /// Whether the object has a name that no earlier document used for the same kind; reports
    /// a missing name and duplicates.
    fn name(
        &mut self,
        file: &Path,
        document: usize,
        kind: &str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        namespaced: bool,
    ) -> bool {
        let (namespace, name) = match convert::object_name(meta, namespaced) {
            Ok(n) => n,
            Err(FieldError { field, reason }) => {
                self.error(file, document, &field, reason);
                return false;
            }
        };
        let key = (kind.to_owned(), namespace.clone(), name.clone());
        if let Some((first_file, first_doc)) = self.seen.get(&key) {
            let reason = format!(
                "duplicate {kind} {}{name}, first defined in {} document {first_doc}",
                if namespaced { format!("{namespace}/") } else { String::new() },
                first_file.display()
            );
            self.error(file, document, "metadata.name", reason);
            return false;
        }
        self.seen.insert(key, (file.to_owned(), document));
        true
    }

    fn finish(mut self) -> Result<Loaded, Vec<ManifestError>> {
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        convert::sort(&mut self.state);
        Ok(Loaded { state: self.state, skipped: self.skipped, fingerprint: Vec::new() })
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
