//! Snapshots of the cluster state and their replay through audit events: the state at the start
//! of a report's interval and every state inside it.
//!
//! A snapshot ([`Snapshot`]) is the full set of policy-related and endpoint objects at one time:
//! the [`crate::cluster::AUDITED_KINDS`] (Namespaces, Pods, every policy kind, Tiers, network sets,
//! HostEndpoints) plus Services and ServiceAccounts ([`is_snapshot_kind`]). It is one file,
//! `<archive>/snapshots/<time>.json` (`20261120T000000Z.json`, UTC), written atomically: JSON
//! lines, the first a header (`{"kind":"FlowauditSnapshot","format":1,"time":..,"source":..}`),
//! then one object per line, sorted by API group, resource, namespace and name.
//!
//! The replay ([`replay`]) of an interval `[from, to)`: the newest snapshot at or before `from`
//! ([`newest_snapshot`]), then the audit events read by the policy-audit report's reader (so
//! duplicates between flowaudit's watch and the API server's log count once:
//! [`super::policy_audit::read_changes`]), in time order:
//! - events before the snapshot's time are ignored (the snapshot already holds them);
//! - events in `[snapshot, from)` are applied to reach the state at `from`;
//! - each event in `[from, to)` is applied and gives one more state;
//! - events at or after `to` are not read.
//!
//! Applying an event: a delete removes the object; a create, update or patch puts the object
//! after the change (`responseObject`, else for create and update the `requestObject`) in its
//! place. flowaudit's own events of Pods and Namespaces may carry only the labels (after a
//! restart): for an object already known, such an event (no `spec`) replaces only its labels.
//! An event without the object (API server's `Metadata` level) cannot be applied: it is skipped
//! with a warning.
//!
//! What can change inside an interval depends on the logs: flowaudit's `audit.log` carries every
//! policy kind, Tiers, network sets, HostEndpoints, and Pods and Namespaces (created, deleted, and
//! label changes only). Services and ServiceAccounts, and a pod's other fields (service account,
//! annotations and containers, which `envoyEnabled` reads), change only through a kube-apiserver
//! audit log whose policy records them at `RequestResponse`; otherwise they are as in the
//! snapshot (or the manifests directory) for the whole interval.
//!
//! Takes: a snapshot (or a manifests directory as the state at `from`), audit events, the
//! interval. Gives: a [`Timeline`]. Must never: apply an event from before its snapshot, or
//! read a pipeline stage.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    sync::Arc,
};

use jiff::{Timestamp, tz::TimeZone};
use serde_json::{Value, json};

use super::{ReportError, TimeRange, policy_audit};
use crate::{
    audit::{AuditEvent, store::write_atomic},
    cluster::{self, CALICO_CRD_GROUP, ClusterState, ObjectKey, manifests},
};

/// The directory of snapshots under an archive.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// The `kind` of a snapshot file's header line.
pub const SNAPSHOT_KIND: &str = "FlowauditSnapshot";
/// The format version of snapshot files.
pub const SNAPSHOT_FORMAT: u64 = 1;

/// Whether objects of `resource` in `api_group` belong in a snapshot: the audited kinds plus
/// (core) Services and ServiceAccounts.
pub fn is_snapshot_kind(api_group: &str, resource: &str) -> bool {
    ObjectKey::is_audited(api_group, resource)
        || (api_group.is_empty() && matches!(resource, "services" | "serviceaccounts"))
}

/// The key of a document of a snapshot kind (its group keyed as [`ObjectKey`] keys it).
pub fn key_of(object: &Value) -> Option<ObjectKey> {
    if let Some(key) = ObjectKey::of(object) {
        return Some(key);
    }
    let kind = object.get("kind")?.as_str()?;
    if object.get("apiVersion")?.as_str()? != "v1" || !matches!(kind, "Service" | "ServiceAccount") {
        return None;
    }
    let meta = object.get("metadata")?;
    let name = meta.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let namespace = meta.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or("default");
    Some(ObjectKey {
        api_group: String::new(),
        resource: cluster::plural(kind),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// The cluster's objects at one time.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// When the objects were read.
    pub taken: Timestamp,
    /// Where from: `kube`, `manifests:<dir>`.
    pub source: String,
    /// The objects by key (as [`cluster::strip`] leaves them).
    pub objects: BTreeMap<ObjectKey, Value>,
}

impl Snapshot {
    /// A snapshot of `state`: its [`cluster::Objects`] as the source read them, plus its
    /// Services and ServiceAccounts as documents made from the model (selector, ports, cluster
    /// IPs; labels).
    pub fn from_state(state: &ClusterState, source: &str, taken: Timestamp) -> Self {
        let mut objects: BTreeMap<ObjectKey, Value> =
            state.objects.0.iter().map(|(k, v)| (k.clone(), (**v).clone())).collect();
        for s in &state.services {
            let ports: Vec<Value> =
                s.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol})).collect();
            let ips: Vec<String> = s.cluster_ips.iter().map(ToString::to_string).collect();
            let mut spec = json!({"selector": s.selector, "ports": ports});
            if !ips.is_empty() {
                spec["clusterIP"] = json!(ips[0]);
                spec["clusterIPs"] = json!(ips);
            }
            let doc = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": s.name, "namespace": s.namespace}, "spec": spec});
            objects.insert(key_of(&doc).expect("a Service document"), doc);
        }
        for a in &state.service_accounts {
            let mut meta = json!({"name": a.name, "namespace": a.namespace});
            if !a.labels.is_empty() {
                meta["labels"] = json!(a.labels);
            }
            let doc = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta});
            objects.insert(key_of(&doc).expect("a ServiceAccount document"), doc);
        }
        Self { taken, source: source.to_owned(), objects }
    }

    /// A snapshot of the manifests directory `dir` (checked as `flowaudit check` checks it).
    pub fn from_manifests(dir: &Path, taken: Timestamp) -> Result<Self, ReportError> {
        let loaded = manifests::load_dir(dir).map_err(ReportError::Manifests)?;
        Ok(Self::from_state(&loaded.state, &format!("manifests:{}", dir.display()), taken))
    }

    /// The file name: `20261120T000000Z.json` (whole seconds, UTC).
    pub fn file_name(taken: Timestamp) -> String {
        format!("{}.json", taken.to_zoned(TimeZone::UTC).strftime("%Y%m%dT%H%M%SZ"))
    }

    /// The file's content (see the module's doc).
    pub fn to_jsonl(&self) -> Vec<u8> {
        let header = json!({"kind": SNAPSHOT_KIND, "format": SNAPSHOT_FORMAT,
            "time": super::format_time(self.taken), "source": self.source});
        let mut out = serde_json::to_vec(&header).expect("JSON values serialize");
        out.push(b'\n');
        for object in self.objects.values() {
            serde_json::to_writer(&mut out, object).expect("JSON values serialize");
            out.push(b'\n');
        }
        out
    }

    /// Writes the snapshot to `<archive>/snapshots/` (created if needed), atomically; gives the
    /// path.
    pub fn write(&self, archive: &Path) -> Result<PathBuf, ReportError> {
        let dir = archive.join(SNAPSHOTS_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| ReportError::Output { path: dir.clone(), source })?;
        let path = dir.join(Self::file_name(self.taken));
        write_atomic(&path, &self.to_jsonl())
            .map_err(|crate::audit::AuditError::Io { path, source }| ReportError::Output { path, source })?;
        Ok(path)
    }

    /// Reads a snapshot file.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let file = std::fs::File::open(path).map_err(|e| ReportError::input(path, "-", e))?;
        let mut lines = BufReader::new(file).lines();
        let header: Value = match lines.next() {
            Some(Ok(line)) => serde_json::from_str(&line).map_err(|e| ReportError::input(path, "line 1", e))?,
            Some(Err(e)) => return Err(ReportError::input(path, "line 1", e)),
            None => return Err(ReportError::input(path, "-", "empty: not a snapshot")),
        };
        if header.get("kind").and_then(Value::as_str) != Some(SNAPSHOT_KIND) {
            return Err(ReportError::input(path, "line 1: kind", format!("not {SNAPSHOT_KIND}")));
        }
        if header.get("format").and_then(Value::as_u64) != Some(SNAPSHOT_FORMAT) {
            return Err(ReportError::input(path, "line 1: format", format!("not {SNAPSHOT_FORMAT}")));
        }
        let taken = header
            .get("time")
            .and_then(Value::as_str)
            .ok_or_else(|| "missing".to_owned())
            .and_then(super::parse_time)
            .map_err(|reason| ReportError::input(path, "line 1: time", reason))?;
        let source = header.get("source").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut objects = BTreeMap::new();
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            let line = line.map_err(|e| ReportError::input(path, format!("line {n}"), e))?;
            if line.trim().is_empty() {
                continue;
            }
            let object: Value =
                serde_json::from_str(&line).map_err(|e| ReportError::input(path, format!("line {n}"), e))?;
            let key = key_of(&object).ok_or_else(|| {
                ReportError::input(path, format!("line {n}"), "not an object of a snapshot kind with a name")
            })?;
            objects.insert(key, object);
        }
        Ok(Self { taken, source, objects })
    }
}

/// The time a snapshot file's name gives (`20261120T000000Z.json`), if it is one.
pub fn snapshot_time(file_name: &str) -> Option<Timestamp> {
    let stem = file_name.strip_suffix(".json")?;
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stem).ok()?.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// Whether a snapshot is due in `dir` (a `snapshots` directory) at `now`: the newest there (by
/// file name) is `every` old, or there is none. Never when `every` is zero or negative.
pub fn snapshot_due(dir: &Path, now: Timestamp, every: jiff::SignedDuration) -> bool {
    if every.is_zero() || every.is_negative() {
        return false;
    }
    let newest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| snapshot_time(&e.file_name().to_string_lossy()))
        .max();
    newest.is_none_or(|t| now.duration_since(t) >= every)
}

/// The newest snapshot in `dir` (a `snapshots` directory) taken at or before `at`, by file name.
pub fn newest_snapshot(dir: &Path, at: Timestamp) -> Result<Option<PathBuf>, ReportError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ReportError::input(dir, "-", e))?;
    let best = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let t = snapshot_time(&e.file_name().to_string_lossy())?;
            (t <= at).then(|| (t, e.path()))
        })
        .max_by_key(|(t, _)| *t);
    Ok(best.map(|(_, p)| p))
}

/// The state at one time of the replay.
#[derive(Clone, Debug)]
pub struct State {
    /// From when it holds (the interval's start, or the time of the change that made it).
    pub at: Timestamp,
    /// The objects.
    pub objects: Arc<BTreeMap<ObjectKey, Value>>,
    /// The model built from them (objects with problems left out; see [`Timeline::warnings`]).
    pub cluster: ClusterState,
}

/// A change applied inside the interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// When.
    pub at: Timestamp,
    /// `create`, `update`, `patch` or `delete`.
    pub verb: String,
    /// The object.
    pub key: ObjectKey,
    /// The event's `auditID`.
    pub audit_id: String,
}

/// The states of an interval.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// The interval.
    pub range: TimeRange,
    /// The snapshot's time (or `from` for a manifests directory).
    pub snapshot_taken: Timestamp,
    /// The state at `from`, then one state after each change in the interval.
    pub states: Vec<State>,
    /// The changes, one per state after the first.
    pub changes: Vec<Change>,
    /// Events applied to reach the state at `from`.
    pub applied_before: usize,
    /// Events from before the snapshot, ignored.
    pub ignored_before_snapshot: usize,
    /// What was odd but not wrong.
    pub warnings: Vec<String>,
}

/// The key of the object an event names, with its group keyed as in [`ObjectKey`].
pub fn event_key(event: &AuditEvent) -> Option<ObjectKey> {
    let r = event.object_ref.as_ref()?;
    let group = match r.api_group.as_deref().unwrap_or("") {
        CALICO_CRD_GROUP => cluster::CALICO_GROUP,
        "extensions" => "networking.k8s.io",
        g => g,
    };
    Some(ObjectKey {
        api_group: group.to_owned(),
        resource: r.resource.clone()?,
        namespace: r.namespace.clone().unwrap_or_default(),
        name: r.name.clone()?,
    })
}

/// Whether an event is a change the replay reads: completed, successful, of a snapshot kind.
pub fn is_replayed_change(event: &AuditEvent) -> bool {
    policy_audit::is_completed_change(event, is_snapshot_kind)
}

/// Applies one event to `objects` (see the module's doc); an error says why it cannot be.
pub fn apply(objects: &mut BTreeMap<ObjectKey, Value>, event: &AuditEvent) -> Result<(), String> {
    let key = event_key(event).ok_or("no objectRef resource and name")?;
    if event.verb == "delete" {
        objects.remove(&key);
        return Ok(());
    }
    let object = event
        .response_object
        .clone()
        .or_else(|| if event.verb == "patch" { None } else { event.request_object.clone() })
        .filter(Value::is_object)
        .ok_or("no object after the change (an audit level below RequestResponse?)")?;
    let object = cluster::strip(object);
    if key.labels_only()
        && object.get("spec").is_none()
        && let Some(known) = objects.get_mut(&key)
    {
        let labels = object.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({}));
        if let Some(meta) = known.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("labels".into(), labels);
            return Ok(());
        }
    }
    objects.insert(key, object);
    Ok(())
}

/// The model of `objects`; problems are added to `warnings` (each once).
pub fn build_state(objects: &BTreeMap<ObjectKey, Value>, warnings: &mut Vec<String>) -> ClusterState {
    let partial = manifests::build_partial(objects.iter().map(|(k, v)| {
        let origin = if k.namespace.is_empty() {
            format!("{}/{}", k.resource, k.name)
        } else {
            format!("{}/{}/{}", k.resource, k.namespace, k.name)
        };
        (PathBuf::from(origin), v.clone())
    }));
    for e in partial.errors {
        let text = format!("{}: {}: {} (left out of the state)", e.file.display(), e.field, e.reason);
        if !warnings.contains(&text) {
            warnings.push(text);
        }
    }
    partial.state
}

/// Replays `events` (in any order; sorted here by time, stably) over `start` for `range`.
pub fn replay(start: &Snapshot, events: &[(Timestamp, AuditEvent)], range: TimeRange) -> Timeline {
    let mut events: Vec<&(Timestamp, AuditEvent)> = events.iter().collect();
    events.sort_by_key(|(at, _)| *at);
    let mut objects = start.objects.clone();
    let mut warnings = Vec::new();
    let (mut applied_before, mut ignored_before_snapshot) = (0, 0);
    let mut pending = events.into_iter().peekable();
    while let Some((at, event)) = pending.next_if(|(at, _)| *at < range.from) {
        if *at < start.taken {
            ignored_before_snapshot += 1;
            continue;
        }
        match apply(&mut objects, event) {
            Ok(()) => applied_before += 1,
            Err(reason) => warnings.push(format!("audit event {} at {at}: {reason}; skipped", event.audit_id)),
        }
    }
    let first = State { at: range.from, cluster: build_state(&objects, &mut warnings), objects: Arc::new(objects) };
    let mut states = vec![first];
    let mut changes = Vec::new();
    for (at, event) in pending.take_while(|(at, _)| *at < range.to) {
        if *at < start.taken {
            ignored_before_snapshot += 1;
            continue;
        }
        let mut objects = (*states.last().expect("a first state").objects).clone();
        if let Err(reason) = apply(&mut objects, event) {
            warnings.push(format!("audit event {} at {at}: {reason}; skipped", event.audit_id));
            continue;
        }
        changes.push(Change {
            at: *at,
            verb: event.verb.clone(),
            key: event_key(event).expect("applied, so it has a key"),
            audit_id: event.audit_id.clone(),
        });
        states.push(State { at: *at, cluster: build_state(&objects, &mut warnings), objects: Arc::new(objects) });
    }
    Timeline { range, snapshot_taken: start.taken, states, changes, applied_before, ignored_before_snapshot, warnings }
}

/// Where the state at the start comes from.
#[derive(Clone, Debug)]
pub enum Start {
    /// The newest snapshot at or before `from` in this `snapshots` directory.
    Snapshots(PathBuf),
    /// A manifests directory, taken as the state at `from` (events before `from` are ignored).
    Manifests(PathBuf),
}

/// Reads the start and the audit logs and replays them over `range`. The warnings of the reader
/// come first in the timeline's.
pub fn load(start: &Start, audit_logs: &[PathBuf], range: TimeRange) -> Result<Timeline, ReportError> {
    let snapshot = match start {
        Start::Snapshots(dir) => {
            let path = newest_snapshot(dir, range.from)?.ok_or_else(|| {
                ReportError::input(
                    dir,
                    "-",
                    format!("no snapshot taken at or before {} (names like 20261120T000000Z.json)", range.from),
                )
            })?;
            Snapshot::read(&path)?
        }
        Start::Manifests(dir) => Snapshot::from_manifests(dir, range.from)?,
    };
    let mut warnings = Vec::new();
    let (events, _duplicates) = if audit_logs.is_empty() {
        (Vec::new(), 0)
    } else {
        policy_audit::read_changes(audit_logs, is_replayed_change, &mut warnings)?
    };
    let mut timeline = replay(&snapshot, &events, range);
    warnings.append(&mut timeline.warnings);
    timeline.warnings = warnings;
    Ok(timeline)
}

/// `flowaudit snapshot --cluster DIR --archive DIR`: a snapshot of the manifests directory `dir`
/// at `at`, written to the archive; gives the path.
pub fn snapshot_manifests(dir: &Path, archive: &Path, at: Timestamp) -> Result<PathBuf, ReportError> {
    Snapshot::from_manifests(dir, at)?.write(archive)
}

/// `flowaudit snapshot --cluster kube --archive DIR`: lists the cluster through the `kube`
/// source (every cache filled once), then writes its state as a snapshot; gives the path. The
/// `kube` source keeps Pods trimmed to the fields the model reads (their annotations and
/// containers are not in such a snapshot, so `envoyEnabled` is false for them).
pub async fn snapshot_kube(archive: &Path) -> Result<PathBuf, ReportError> {
    let state = kube_state().await?;
    Snapshot::from_state(&state, "kube", Timestamp::now()).write(archive)
}

/// The cluster's state now, from the API server (KUBECONFIG or in-cluster), every cache of the
/// `kube` source filled once.
pub async fn kube_state() -> Result<ClusterState, ReportError> {
    let kube_error = |e: cluster::kube::KubeError| ReportError::input(Path::new("kube"), "-", e);
    let client = cluster::kube::client().await.map_err(kube_error)?;
    let state = cluster::kube::watch(client).await.map_err(kube_error)?.borrow().clone();
    Ok((*state).clone())
}

/// [`kube_state`] for a caller without a runtime (`flowaudit report --cluster kube`).
pub fn kube_state_blocking() -> Result<ClusterState, ReportError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReportError::input(Path::new("kube"), "-", format!("starting the runtime: {e}")))?;
    runtime.block_on(kube_state())
}

/// The state a snapshot file holds (the newest in `dir` at or before `at`), with the file, if
/// there is one.
pub fn snapshot_state(dir: &Path, at: Timestamp) -> Result<Option<(PathBuf, ClusterState)>, ReportError> {
    let Some(path) = newest_snapshot(dir, at)? else { return Ok(None) };
    let snapshot = Snapshot::read(&path)?;
    let state = build_state(&snapshot.objects, &mut Vec::new());
    Ok(Some((path, state)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::testdata;

    fn t(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn range() -> TimeRange {
        TimeRange { from: t("2026-11-20T00:00:00Z"), to: t("2026-11-21T00:00:00Z") }
    }

    fn np(name: &str, app: &str) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "n"},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"]}})
    }

    fn event(id: &str, verb: &str, at: &str, object: Value) -> (Timestamp, AuditEvent) {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let kind = object["kind"].as_str().unwrap();
        let (group, resource) = if kind == "Pod" { ("", "pods") } else { ("networking.k8s.io", "networkpolicies") };
        let line = json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
            "auditID": id, "stage": "ResponseComplete", "verb": verb, "user": {"username": "u"},
            "objectRef": {"resource": resource, "apiGroup": group, "namespace": "n", "name": name},
            "responseObject": if verb == "delete" { Value::Null } else { object },
            "requestReceivedTimestamp": at, "stageTimestamp": at});
        let mut e: AuditEvent = serde_json::from_value(line).unwrap();
        if verb == "delete" {
            e.response_object = None;
        }
        (t(at), e)
    }

    fn start(objects: Vec<Value>) -> Snapshot {
        Snapshot {
            taken: t("2026-11-19T00:00:00Z"),
            source: "test".into(),
            objects: objects.into_iter().map(|o| (key_of(&o).unwrap(), o)).collect(),
        }
    }

    fn policy_names(s: &State) -> Vec<&str> {
        s.cluster.network_policies.iter().map(|p| p.name.as_str()).collect()
    }

    /// Events are applied in time order whatever order they come in; those before the snapshot
    /// are ignored, those before `from` make the start, those at or after `to` are not read.
    #[test]
    fn replay_orders_and_bounds_events() {
        let events = vec![
            event("4", "delete", "2026-11-20T12:00:00Z", np("a", "x")),
            event("1", "delete", "2026-11-18T00:00:00Z", np("old", "x")),
            event("3", "update", "2026-11-20T06:00:00Z", np("a", "y")),
            event("2", "create", "2026-11-19T12:00:00Z", np("a", "x")),
            event("5", "create", "2026-11-21T00:00:00Z", np("late", "x")),
        ];
        let tl = replay(&start(vec![np("old", "x")]), &events, range());
        assert_eq!((tl.ignored_before_snapshot, tl.applied_before), (1, 1));
        assert_eq!(tl.states.len(), 3);
        assert_eq!(policy_names(&tl.states[0]), ["a", "old"]);
        assert_eq!(tl.states[1].at, t("2026-11-20T06:00:00Z"));
        let a = &tl.states[1].cluster.network_policies[0];
        assert_eq!(a.spec.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app"], "y");
        assert_eq!(policy_names(&tl.states[2]), ["old"]);
        assert_eq!(tl.changes.iter().map(|c| c.audit_id.as_str()).collect::<Vec<_>>(), ["3", "4"]);
        assert!(tl.warnings.is_empty());
    }

    /// A labels-only event changes only the labels of a known pod; an event without the object
    /// is skipped with a warning.
    #[test]
    fn labels_only_events_merge_and_metadata_events_are_skipped() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "labels": {"app": "x"}},
            "spec": {"serviceAccountName": "sa", "containers": [{"name": "c", "image": "i"}]}});
        let labels = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "labels": {"app": "y"}}});
        let mut metadata_only = event("2", "patch", "2026-11-20T02:00:00Z", np("a", "x"));
        metadata_only.1.response_object = None;
        let tl =
            replay(&start(vec![pod]), &[event("1", "update", "2026-11-20T01:00:00Z", labels), metadata_only], range());
        assert_eq!(tl.states.len(), 2);
        let p = &tl.states[1].cluster.pods[0];
        assert_eq!((p.labels["app"].as_str(), p.service_account.as_str()), ("y", "sa"));
        assert_eq!(tl.warnings.len(), 1);
        assert!(tl.warnings[0].starts_with("audit event 2 at 2026-11-20T02:00:00Z: no object"), "{:?}", tl.warnings);
    }

    /// The same change in flowaudit's log and the API server's counts once, a failed request
    /// not at all (the policy-audit report's reader); the newest snapshot at or before `from`
    /// is the start.
    #[test]
    fn load_dedups_and_picks_the_snapshot() {
        let dir = testdata("inventory/snapshots");
        assert_eq!(newest_snapshot(&dir, range().from).unwrap().unwrap(), dir.join("20261119T000000Z.json"));
        assert_eq!(newest_snapshot(&dir, t("2026-11-17T00:00:00Z")).unwrap(), None);
        let tl = load(
            &Start::Snapshots(dir),
            &[testdata("inventory/audit/audit.log"), testdata("inventory/audit/kube-apiserver.log")],
            range(),
        )
        .unwrap();
        assert_eq!(tl.snapshot_taken, t("2026-11-19T00:00:00Z"));
        assert_eq!((tl.ignored_before_snapshot, tl.applied_before), (1, 1));
        let changes: Vec<(&str, &str)> = tl.changes.iter().map(|c| (c.verb.as_str(), c.key.name.as_str())).collect();
        assert_eq!(
            changes,
            [
                ("create", "cart-ingress"),
                ("create", "cart-2"),
                ("update", "front-1"),
                ("update", "old-1"),
                ("delete", "db-1")
            ]
        );
        assert_eq!(tl.changes[0].audit_id, "a-1", "the API server's copy is kept");
    }

    /// A snapshot written and read back is the same; the file is named by its time.
    #[test]
    fn snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("c.yaml"),
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: n, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: n, labels: {app: a}, annotations: {sidecar.istio.io/status: "{}"}}
spec: {serviceAccountName: sa, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: n}
spec: {selector: {app: a}, clusterIP: 10.96.0.10, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: n, labels: {tier: backend}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: n}
spec: {podSelector: {}}
"#,
        )
        .unwrap();
        let cluster = manifests::load_dir(dir.path()).unwrap().state;
        let taken = t("2026-11-19T00:00:00.5Z");
        let snap = Snapshot::from_manifests(dir.path(), taken).unwrap();
        assert_eq!(snap.objects.len(), 5);
        let archive = tempfile::tempdir().unwrap();
        let path = snap.write(archive.path()).unwrap();
        assert_eq!(path, archive.path().join("snapshots/20261119T000000Z.json"));
        let back = Snapshot::read(&path).unwrap();
        assert_eq!(back, snap);
        let mut warnings = Vec::new();
        let state = build_state(&back.objects, &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(state.pods, cluster.pods);
        assert_eq!(state.services, cluster.services);
        assert_eq!(state.service_accounts, cluster.service_accounts);
        assert_eq!(state.network_policies, cluster.network_policies);
        assert_eq!(state.namespaces, cluster.namespaces);
        assert_eq!(snapshot_time("20261119T000000Z.json"), Some(t("2026-11-19T00:00:00Z")));
        assert_eq!(snapshot_time("notes.json"), None);
    }
}
