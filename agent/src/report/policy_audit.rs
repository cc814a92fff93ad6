//! The policy-audit report: the creates, updates and deletes of network policies in the
//! interval, from audit logs of `audit.k8s.io/v1` Events: flowaudit's own `audit.log*` (changes
//! seen through its watch, and the kube-apiserver events it forwarded) and kube-apiserver audit
//! logs (`--audit-log-path`).
//!
//! Policies are the resources Calico's policy-audit report selected (`networkpolicies` of
//! `networking.k8s.io`, `extensions` and Calico, `globalnetworkpolicies`, and the three staged
//! kinds), plus the admin network policies (`adminnetworkpolicies`,
//! `baselineadminnetworkpolicies` of `policy.networking.k8s.io`). An event counts when it is at
//! stage `ResponseComplete`, its verb is `create`, `update`, `patch` or `delete`, it names no
//! subresource, its response code (where present) is 2xx, and its `stageTimestamp` is in
//! `[from, to)`.
//!
//! One change, one event: the same `auditID` read twice (a kube-apiserver event forwarded to
//! `audit.log` and read again from the API server's log) is kept once; a change that flowaudit's
//! watch saw (user `system:flowaudit:observed`) and the API server logged is kept once, as the
//! API server's event (it names the user), with the watch's `previousObject` and the annotation
//! `flowaudit.io/also-observed` naming the watch event. The two are the same change when they
//! name the same object (API group, resource, namespace, name) with the same kind of verb
//! (create; update or patch; delete) and
//! - for creates and updates where both know it, the same `resourceVersion` (the watch's object,
//!   the API server's `responseObject`): then the times do not matter;
//! - otherwise (deletes, Metadata-level events, the manifests source): the uids agree where both
//!   are known, and the API server's event is at most [`MATCH_WINDOW`] from the watch's (for
//!   changes found after a restart, any time before it): the nearest is taken.
//!
//! Duplicates are removed over all the events read, before the interval is applied, so a change
//! whose two copies fall on either side of a boundary counts in one interval only.
//!
//! **Endpoint selection.** With a GlobalReport whose `spec.endpoints` selects less than everything
//! ([`super::EndpointsSelection::is_restrictive`]), an event is kept only when the policy it
//! changes applied to at least one selected endpoint at the time of the event ("For policy-audit
//! it restricts events to policies that apply to the selected endpoints", Calico's reference).
//! The cluster state at each moment is the replay of the interval ([`super::replay::Timeline`]:
//! a snapshot or manifests directory, through the same audit logs read by the same reader, so
//! every kept event that could be applied is one of its changes, found by `auditID`):
//! - the state before the event is the timeline's state just before its change, the state after
//!   the one its change made; an event the replay could not apply (no object in it) is judged on
//!   the state at its time, before and after alike;
//! - which object: for a `create` the policy in the state after; for a `delete` the policy in the
//!   state before, else the event's `previousObject`; for an `update` or `patch` either (kept when
//!   one of the two applies). Each object is judged against the endpoints of its own state, so a
//!   pod label change earlier in the interval counts for the events after it and not before;
//! - "selected" and "applies" are the inventory's ([`super::inventory::EndpointScope`], the same
//!   selector code): a Kubernetes NetworkPolicy (and a StagedKubernetesNetworkPolicy) applies to
//!   the pods of its namespace its `podSelector` matches (an empty one: all of them); a Calico
//!   NetworkPolicy (and StagedNetworkPolicy) to the pods of its namespace its `selector` and
//!   `serviceAccountSelector` match; a GlobalNetworkPolicy (and StagedGlobalNetworkPolicy) to the
//!   pods and HostEndpoints its `selector`, `namespaceSelector` (`global()`: HostEndpoints only)
//!   and `serviceAccountSelector` match; an (Baseline)AdminNetworkPolicy to the pods of its
//!   `subject`. Staged kinds count as if enforced: their changes are about the endpoints they
//!   would select. A policy in a selected namespace that selects no selected endpoint does not
//!   apply;
//! - an event whose policy neither state nor the event holds (a `Metadata`-level create with no
//!   earlier object) cannot be judged: it is kept, counted in [`PolicyAudit::unjudged`], with a
//!   warning. Events left out are counted in [`PolicyAudit::outside_selection`].
//!
//! Takes: audit log files (or directories of `audit.log*`), the interval, optionally a
//! GlobalReport, and for a restrictive selection the replayed interval. Gives: a [`PolicyAudit`].
//! Must never: count one change twice, count a failed or incomplete request, drop a change it
//! cannot match (a watch event alone counts), or drop a change it cannot judge.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::{
    Kind, NamedReport, Progress, Rendered, ReportError, Table, TimeRange, escape, format_time, html_page,
    inventory::EndpointScope,
    replay::{self, State, Timeline},
    summary_columns,
};
use crate::{
    audit::{AuditEvent, OBSERVED_USER, SOURCE_ANNOTATION, Source, follow::parse_line},
    cluster::{self, CALICO_CRD_GROUP, CALICO_GROUP, ClusterState, ObjectKey},
};

/// How far apart a watch event and the API server's event of one change may be, when they cannot
/// be matched by resourceVersion.
pub const MATCH_WINDOW: Duration = Duration::from_secs(300);
/// The annotation naming the watch event merged into an API server event.
pub const ALSO_OBSERVED_ANNOTATION: &str = "flowaudit.io/also-observed";

/// `summary.csv` columns.
pub const SUMMARY_COLUMNS: &[&str] =
    &summary_columns!["numCreatedPolicies", "numModifiedPolicies", "numDeletedPolicies",];

/// The policy resources: `(API groups, resource)`.
pub const POLICY_RESOURCES: &[(&[&str], &str)] = &[
    (&["networking.k8s.io", "extensions"], "networkpolicies"),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "networkpolicies"),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "globalnetworkpolicies"),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "stagednetworkpolicies"),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "stagedglobalnetworkpolicies"),
    (&[CALICO_GROUP, CALICO_CRD_GROUP], "stagedkubernetesnetworkpolicies"),
    (&["policy.networking.k8s.io"], "adminnetworkpolicies"),
    (&["policy.networking.k8s.io"], "baselineadminnetworkpolicies"),
];

/// The report.
#[derive(Clone, Debug)]
pub struct PolicyAudit {
    /// The interval.
    pub range: TimeRange,
    /// The GlobalReport, if any.
    pub report: Option<NamedReport>,
    /// The policy change events of the interval, in time order.
    pub events: Vec<AuditEvent>,
    /// Events with verb `create`.
    pub created: u64,
    /// Events with verb `update` or `patch`.
    pub modified: u64,
    /// Events with verb `delete`.
    pub deleted: u64,
    /// Copies of changes dropped (over all events read, not only the interval's).
    pub duplicates: u64,
    /// Events of the interval left out because their policy applied to no selected endpoint
    /// (restrictive `spec.endpoints` only).
    pub outside_selection: u64,
    /// Events kept without being judged: their policy was known neither from the state nor from
    /// the event (restrictive `spec.endpoints` only).
    pub unjudged: u64,
    /// What was odd but not wrong (printed to stderr).
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VerbClass {
    Create,
    Modify,
    Delete,
}

fn verb_class(verb: &str) -> Option<VerbClass> {
    Some(match verb {
        "create" => VerbClass::Create,
        "update" | "patch" => VerbClass::Modify,
        "delete" => VerbClass::Delete,
        _ => return None,
    })
}

/// The object an event names: (API group as keyed, resource, namespace, name).
type Key = (String, String, String, String);

/// Whether the event is a completed, successful change of a policy.
pub fn is_policy_change(event: &AuditEvent) -> bool {
    is_completed_change(event, |group, resource| {
        POLICY_RESOURCES.iter().any(|(groups, res)| *res == resource && groups.contains(&group))
    })
}

/// Whether the event is a completed, successful create, update, patch or delete of a named
/// object (no subresource) whose API group and resource `wanted` accepts.
pub fn is_completed_change(event: &AuditEvent, wanted: impl Fn(&str, &str) -> bool) -> bool {
    if event.stage != "ResponseComplete" || verb_class(&event.verb).is_none() {
        return false;
    }
    let Some(r) = &event.object_ref else { return false };
    if r.subresource.as_deref().is_some_and(|s| !s.is_empty()) || r.name.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    let group = r.api_group.as_deref().unwrap_or("");
    let Some(resource) = r.resource.as_deref() else { return false };
    if !wanted(group, resource) {
        return false;
    }
    event.response_status.as_ref().and_then(|s| s.code).is_none_or(|c| (200..300).contains(&c))
}

fn key(event: &AuditEvent) -> Key {
    let r = event.object_ref.clone().unwrap_or_default();
    let group = match r.api_group.as_deref().unwrap_or("") {
        CALICO_CRD_GROUP => CALICO_GROUP.to_owned(),
        "extensions" => "networking.k8s.io".to_owned(),
        g => g.to_owned(),
    };
    (group, r.resource.unwrap_or_default(), r.namespace.unwrap_or_default(), r.name.unwrap_or_default())
}

fn resource_version(event: &AuditEvent, observed: bool) -> Option<String> {
    let from_object = event
        .response_object
        .as_ref()
        .and_then(|o| o.pointer("/metadata/resourceVersion"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let from_ref = event.object_ref.as_ref().and_then(|r| r.resource_version.clone());
    let rv = if observed { from_ref.or(from_object) } else { from_object.or(from_ref) };
    rv.filter(|v| !v.is_empty())
}

fn uid(event: &AuditEvent) -> Option<String> {
    event
        .object_ref
        .as_ref()
        .and_then(|r| r.uid.clone())
        .or_else(|| {
            [&event.response_object, &event.previous_object, &event.request_object]
                .into_iter()
                .flatten()
                .find_map(|o| o.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_owned))
        })
        .filter(|u| !u.is_empty())
}

/// One event read, with when it happened and where it came from.
#[derive(Clone, Debug)]
struct Read {
    event: AuditEvent,
    at: Timestamp,
}

/// Reads the events of `paths` (files, or directories whose `audit.log*` files are read) that
/// `keep` accepts ([`is_policy_change`] for this report). A line that is not an audit Event is an
/// error, except a last line without a newline (a line being written), which is skipped with a
/// warning.
fn read_logs(
    paths: &[PathBuf],
    keep: fn(&AuditEvent) -> bool,
    warnings: &mut Vec<String>,
) -> Result<Vec<Read>, ReportError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| ReportError::input(path, "-", e))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| ReportError::input(path, "-", e))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("audit.log")))
                .collect();
            found.sort();
            if found.is_empty() {
                warnings.push(format!("{}: no audit.log* files", path.display()));
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut out = Vec::new();
    let mut progress = Progress::new("reading audit logs");
    let mut lines_read = 0u64;
    for file in &files {
        if file.extension().is_some_and(|e| e == "gz") {
            return Err(ReportError::input(file, "-", "compressed logs are not read: decompress it first"));
        }
        let f = std::fs::File::open(file).map_err(|e| ReportError::input(file, "-", e))?;
        let mut reader = BufReader::new(f);
        let mut buf = Vec::new();
        let mut n = 0u64;
        loop {
            buf.clear();
            let len = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| ReportError::input(file, format!("line {}", n + 1), e))?;
            if len == 0 {
                break;
            }
            n += 1;
            lines_read += 1;
            if lines_read.is_multiple_of(4096) {
                progress.tick(lines_read, "lines");
            }
            let complete = buf.ends_with(b"\n");
            let text = buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let event = match parse_line(text) {
                Ok(e) => e,
                Err(_) if !complete => {
                    warnings.push(format!("{}: line {n}: incomplete last line skipped", file.display()));
                    break;
                }
                Err(reason) => return Err(ReportError::input(file, format!("line {n}"), reason)),
            };
            if !keep(&event) {
                continue;
            }
            let at = super::parse_time(&event.stage_timestamp)
                .map_err(|reason| ReportError::input(file, format!("line {n}: stageTimestamp"), reason))?;
            out.push(Read { event, at });
        }
    }
    progress.finish();
    Ok(out)
}

fn is_observed(e: &AuditEvent) -> bool {
    e.user.username == OBSERVED_USER
}

/// Removes the second copies of changes (see the module's doc); gives the events kept, in time
/// order, and how many were dropped.
fn dedup(mut events: Vec<Read>) -> (Vec<Read>, u64) {
    events.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.event.audit_id.cmp(&b.event.audit_id)));
    let mut dropped = 0;
    // 1. The same auditID: keep the first, with the annotations of both.
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut kept: Vec<Read> = Vec::with_capacity(events.len());
    for r in events {
        if let Some(&i) = by_id.get(&r.event.audit_id) {
            for (k, v) in r.event.annotations {
                kept[i].event.annotations.entry(k).or_insert(v);
            }
            dropped += 1;
            continue;
        }
        by_id.insert(r.event.audit_id.clone(), kept.len());
        kept.push(r);
    }
    // 2. A watch event and the API server's event of one change.
    let api: Vec<usize> = (0..kept.len()).filter(|&i| !is_observed(&kept[i].event)).collect();
    let mut api_by_key: HashMap<Key, Vec<usize>> = HashMap::new();
    for &i in &api {
        api_by_key.entry(key(&kept[i].event)).or_default().push(i);
    }
    let window = SignedDuration::try_from(MATCH_WINDOW).expect("small");
    let mut matched = vec![false; kept.len()];
    let mut drop = vec![false; kept.len()];
    let mut pairs = Vec::new();
    for o in 0..kept.len() {
        let obs = &kept[o].event;
        if !is_observed(obs) {
            continue;
        }
        let Some(candidates) = api_by_key.get(&key(obs)) else { continue };
        let class = verb_class(&obs.verb);
        let restart = obs.source() == Some(Source::RestartDiff.as_str());
        let (o_rv, o_uid, o_at) = (resource_version(obs, true), uid(obs), kept[o].at);
        let mut best: Option<(usize, SignedDuration)> = None;
        for &a in candidates {
            let api_event = &kept[a].event;
            if matched[a] || verb_class(&api_event.verb) != class {
                continue;
            }
            let a_rv = resource_version(api_event, false);
            let by_rv = class != Some(VerbClass::Delete) && o_rv.is_some() && a_rv.is_some();
            let fits = if by_rv {
                o_rv == a_rv
            } else {
                let uid_ok = match (&o_uid, uid(api_event)) {
                    (Some(x), Some(y)) => *x == y,
                    _ => true,
                };
                let delta = kept[a].at.duration_since(o_at);
                uid_ok && delta <= window && (restart || delta >= -window)
            };
            if !fits {
                continue;
            }
            let distance = kept[a].at.duration_since(o_at).abs();
            if by_rv {
                best = Some((a, SignedDuration::ZERO));
                break;
            }
            if best.is_none_or(|(_, d)| distance < d) {
                best = Some((a, distance));
            }
        }
        if let Some((a, _)) = best {
            matched[a] = true;
            drop[o] = true;
            pairs.push((o, a));
        }
    }
    for (o, a) in pairs {
        let (watch_id, previous) = (kept[o].event.audit_id.clone(), kept[o].event.previous_object.clone());
        let api_event = &mut kept[a].event;
        if api_event.previous_object.is_none() {
            api_event.previous_object = previous;
        }
        api_event.annotations.insert(ALSO_OBSERVED_ANNOTATION.to_owned(), watch_id);
    }
    let mut out = Vec::with_capacity(kept.len());
    for (i, r) in kept.into_iter().enumerate() {
        if drop[i] {
            dropped += 1;
        } else {
            out.push(r);
        }
    }
    (out, dropped)
}

/// The changes of `paths` that `keep` accepts, read as this report reads them and with the
/// second copies of changes removed (see the module's doc), in time order with their times; and
/// how many copies were dropped. The inventory's replay ([`super::replay`]) reads its events
/// through this.
pub fn read_changes(
    paths: &[PathBuf],
    keep: fn(&AuditEvent) -> bool,
    warnings: &mut Vec<String>,
) -> Result<(Vec<(Timestamp, AuditEvent)>, u64), ReportError> {
    let (kept, dropped) = dedup(read_logs(paths, keep, warnings)?);
    Ok((kept.into_iter().map(|r| (r.at, r.event)).collect(), dropped))
}

/// Whether `report` restricts the events to the policies of selected endpoints, so that
/// [`build`] needs the replayed interval.
pub fn needs_state(report: Option<&NamedReport>) -> bool {
    report.and_then(|r| r.spec.endpoints.as_ref()).is_some_and(super::EndpointsSelection::is_restrictive)
}

/// Reads the logs and computes the report. `timeline` (the interval replayed from the same logs)
/// is needed when [`needs_state`] says so, and not read otherwise.
pub fn build(
    range: TimeRange,
    logs: &[PathBuf],
    report: Option<NamedReport>,
    timeline: Option<&Timeline>,
) -> Result<PolicyAudit, ReportError> {
    let scope = match (needs_state(report.as_ref()), timeline) {
        (false, _) => None,
        (true, Some(t)) => Some((EndpointScope::new(report.as_ref())?, t)),
        (true, None) => {
            return Err(ReportError::Flag {
                flag: "--snapshot-dir",
                reason: format!(
                    "GlobalReport {}: spec.endpoints selects endpoints: the policy-audit report needs the cluster \
                     state (--snapshot-dir, --archive or --cluster DIR)",
                    report.as_ref().map_or("", |r| r.name.as_str())
                ),
            });
        }
    };
    let mut warnings = scope.as_ref().map(|(_, t)| t.warnings.clone()).unwrap_or_default();
    let (kept, duplicates) = read_changes(logs, is_policy_change, &mut warnings)?;
    let mut events = Vec::new();
    let (mut outside_selection, mut unjudged) = (0, 0);
    let changes: HashMap<&str, usize> = scope
        .as_ref()
        .map(|(_, t)| t.changes.iter().enumerate().map(|(i, c)| (c.audit_id.as_str(), i)).collect())
        .unwrap_or_default();
    for (at, event) in kept.into_iter().filter(|(at, _)| range.contains(*at)) {
        if let Some((scope, timeline)) = &scope {
            match judge(scope, timeline, &changes, at, &event, &mut warnings) {
                Some(true) => {}
                Some(false) => {
                    outside_selection += 1;
                    continue;
                }
                None => {
                    unjudged += 1;
                    warnings.push(format!(
                        "audit event {} at {at}: {} is known neither from the cluster state nor from the event; \
                         kept without knowing whether it applies to a selected endpoint",
                        event.audit_id,
                        resource_id(&event)
                    ));
                }
            }
        }
        events.push(event);
    }
    let count = |c: VerbClass| events.iter().filter(|e| verb_class(&e.verb) == Some(c)).count() as u64;
    Ok(PolicyAudit {
        range,
        created: count(VerbClass::Create),
        modified: count(VerbClass::Modify),
        deleted: count(VerbClass::Delete),
        events,
        report,
        duplicates,
        outside_selection,
        unjudged,
        warnings,
    })
}

/// Whether the policy `event` changes applied to a selected endpoint at `at` (see the module's
/// doc); `None` when no object of it is known. `changes`: the timeline's changes by `auditID`.
fn judge(
    scope: &EndpointScope,
    timeline: &Timeline,
    changes: &HashMap<&str, usize>,
    at: Timestamp,
    event: &AuditEvent,
    warnings: &mut Vec<String>,
) -> Option<bool> {
    let key = replay::event_key(event)?;
    let (before, after) = match changes.get(event.audit_id.as_str()) {
        Some(&i) => (&timeline.states[i], &timeline.states[i + 1]),
        None => {
            // Not applied by the replay: the state at its time holds what was known.
            let i = timeline.states.partition_point(|s| s.at <= at).saturating_sub(1);
            (&timeline.states[i], &timeline.states[i])
        }
    };
    let class = verb_class(&event.verb);
    let mut known = false;
    if class != Some(VerbClass::Delete) {
        match scope.applies_to_selected(&after.cluster, &key, &after.cluster, warnings) {
            Some(true) => return Some(true),
            Some(false) => known = true,
            None => {}
        }
    }
    if class != Some(VerbClass::Create) {
        let applies = scope.applies_to_selected(&before.cluster, &key, &before.cluster, warnings).or_else(|| {
            let previous = previous_object_state(event, before, &key, warnings)?;
            scope.applies_to_selected(&previous, &key, &before.cluster, warnings)
        });
        match applies {
            Some(true) => return Some(true),
            Some(false) => known = true,
            None => {}
        }
    }
    known.then_some(false)
}

/// The model of the event's `previousObject` alone (with the Tiers of `before`, which a Calico
/// policy's tier must be among), for a policy the replayed state does not hold.
fn previous_object_state(
    event: &AuditEvent,
    before: &State,
    key: &ObjectKey,
    warnings: &mut Vec<String>,
) -> Option<ClusterState> {
    let previous = event.previous_object.clone().filter(Value::is_object)?;
    let mut objects: BTreeMap<ObjectKey, Value> =
        before.objects.iter().filter(|(k, _)| k.resource == "tiers").map(|(k, v)| (k.clone(), v.clone())).collect();
    objects.insert(key.clone(), cluster::strip(previous));
    Some(replay::build_state(&objects, warnings))
}

/// `Kind[.apiVersion]([namespace/]name)` of an event's object, the apiVersion left out for
/// Calico's `projectcalico.org/v3` (and its CRDs).
pub fn resource_id(event: &AuditEvent) -> String {
    let r = event.object_ref.clone().unwrap_or_default();
    let resource = r.resource.unwrap_or_default();
    let kind = match resource.as_str() {
        "networkpolicies" => "NetworkPolicy",
        "globalnetworkpolicies" => "GlobalNetworkPolicy",
        "stagednetworkpolicies" => "StagedNetworkPolicy",
        "stagedglobalnetworkpolicies" => "StagedGlobalNetworkPolicy",
        "stagedkubernetesnetworkpolicies" => "StagedKubernetesNetworkPolicy",
        "adminnetworkpolicies" => "AdminNetworkPolicy",
        "baselineadminnetworkpolicies" => "BaselineAdminNetworkPolicy",
        other => other,
    };
    let group = r.api_group.unwrap_or_default();
    let version = if group == CALICO_GROUP || group == CALICO_CRD_GROUP {
        String::new()
    } else {
        let v = r.api_version.unwrap_or_else(|| "v1".into());
        if group.is_empty() { format!(".{v}") } else { format!(".{group}/{v}") }
    };
    let name = r.name.unwrap_or_default();
    match r.namespace.filter(|n| !n.is_empty()) {
        Some(ns) => format!("{kind}{version}({ns}/{name})"),
        None => format!("{kind}{version}({name})"),
    }
}

impl PolicyAudit {
    /// `summary.csv`.
    pub fn summary(&self) -> Table {
        let mut t = Table::new("summary.csv", SUMMARY_COLUMNS);
        let mut row = NamedReport::selection_columns(self.report.as_ref(), &self.range);
        row.extend([self.created.to_string(), self.modified.to_string(), self.deleted.to_string()]);
        t.push(row);
        t
    }

    /// `events.json`: the events, a JSON array.
    pub fn events_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&self.events).expect("events serialize");
        out.push(b'\n');
        out
    }

    /// `events.yaml`: the events, a YAML sequence.
    pub fn events_yaml(&self) -> Vec<u8> {
        serde_yaml_ng::to_string(&self.events).expect("events serialize").into_bytes()
    }

    /// The events as a table (for the HTML page and the exporters), in `events.json`'s order.
    pub fn events_table(&self) -> Table {
        let mut t = Table::new("events.json", &["time", "verb", "policy", "user", "source", "auditID"]);
        for e in &self.events {
            let source = match (e.source(), e.annotations.get(ALSO_OBSERVED_ANNOTATION)) {
                (Some(s), Some(_)) => format!("{s}, also observed"),
                (Some(s), None) => s.to_owned(),
                (None, Some(_)) => "kube-apiserver, also observed".to_owned(),
                (None, None) => "kube-apiserver".to_owned(),
            };
            t.push(vec![
                e.stage_timestamp.clone(),
                e.verb.clone(),
                resource_id(e),
                e.user.username.clone(),
                source,
                e.audit_id.clone(),
            ]);
        }
        t
    }
}

impl Rendered for PolicyAudit {
    fn kind(&self) -> Kind {
        Kind::PolicyAudit
    }

    fn exported(&self) -> Vec<Table> {
        vec![self.summary(), self.events_table()]
    }

    fn download_files(&self) -> Vec<(String, Vec<u8>)> {
        vec![
            ("summary.csv".into(), self.summary().to_csv()),
            ("events.json".into(), self.events_json()),
            ("events.yaml".into(), self.events_yaml()),
        ]
    }

    fn report_data(&self, generated: Timestamp) -> Value {
        json!({
            "reportName": self.report.as_ref().map_or("", |r| r.name.as_str()),
            "reportTypeName": Kind::PolicyAudit.as_str(),
            "reportSpec": self.report.as_ref().map_or_else(|| json!({"reportType": Kind::PolicyAudit.as_str()}), |r| r.raw_spec.clone()),
            "startTime": format_time(self.range.from),
            "endTime": format_time(self.range.to),
            "generationTime": format_time(generated),
            "auditEvents": self.events,
            "auditSummary": {
                "numTotal": self.events.len(),
                "numCreate": self.created,
                "numModify": self.modified,
                "numDelete": self.deleted,
            },
        })
    }

    fn html(&self, generated: Timestamp) -> String {
        let mut body = String::new();
        body.push_str("<h2>Summary</h2>");
        body.push_str(&self.summary().to_html(None));
        let _ = write!(
            body,
            "<p class=\"note\">{} policy changes: {} created, {} modified (update or patch), {} deleted. A change seen \
             both by flowaudit's watch and in the kube-apiserver audit log counts once ({} copies dropped).</p>",
            self.events.len(),
            self.created,
            self.modified,
            self.deleted,
            self.duplicates
        );
        if needs_state(self.report.as_ref()) {
            let _ = write!(
                body,
                "<p class=\"note\">Restricted to the policies that applied to a selected endpoint at the time of \
                 their change: {} events left out, {} kept without being judged (their policy was not known).</p>",
                self.outside_selection, self.unjudged
            );
        }
        body.push_str("<h2>Events</h2>");
        if self.events.is_empty() {
            body.push_str("<p>No policy changes in the interval.</p>");
        } else {
            body.push_str(&self.events_table().to_html(None));
        }
        let sources: BTreeMap<&str, usize> = self.events.iter().fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e.annotations.get(SOURCE_ANNOTATION).map_or("kube-apiserver", String::as_str)).or_default() += 1;
            m
        });
        let _ = write!(
            body,
            "<footer>Generated by flowaudit {} at {}. Sources: {}. The full events, with the objects before and after, \
             are in <code>events.json</code> and <code>events.yaml</code>.</footer>",
            env!("CARGO_PKG_VERSION"),
            format_time(generated),
            escape(&sources.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", "))
        );
        let title = match &self.report {
            Some(r) => format!("Policy audit report: {}", r.name),
            None => "Policy audit report".to_owned(),
        };
        html_page(&title, &format!("{} to {}", format_time(self.range.from), format_time(self.range.to)), &body)
    }
}
