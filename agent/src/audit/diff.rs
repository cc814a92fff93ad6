//! The differ: two sets of policy-related objects → the creates, updates and deletes between
//! them ([`diff`]); and the [`Auditor`], which diffs each new cluster state version against the
//! last one and, after a restart, the first against the state stored before it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use serde_json::Value;

use super::{
    AuditError, AuditEvent, OBSERVED_ANNOTATION, OBSERVED_USER, ObjectKey, ObjectRef, Objects, ResponseStatus,
    SOURCE_ANNOTATION, Source, UserInfo, derived_id, store::StoredObjects, timestamp,
};

/// The create, update and delete events that turn `before` into `after`, in key order (a Pod or
/// Namespace replaced by one of the same name with another uid is a delete and a create). An
/// object counts as updated when it differs for an audit ([`Objects::differ`]): Pods and
/// Namespaces only when their labels change. Every event is stamped `at`.
pub fn diff(before: &Objects, after: &Objects, source: Source, at: SystemTime) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    let mut keys: Vec<&ObjectKey> = before.0.keys().chain(after.0.keys()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        match (before.0.get(key), after.0.get(key)) {
            (None, Some(new)) => events.push(event("create", key, None, Some(new), source, at)),
            (Some(old), None) => events.push(event("delete", key, Some(old), None, source, at)),
            (Some(old), Some(new)) if Arc::ptr_eq(old, new) || !Objects::differ(key, old, new) => {}
            (Some(old), Some(new)) => {
                let uid = |v: &Value| v.pointer("/metadata/uid").cloned();
                if uid(old).is_some() && uid(new).is_some() && uid(old) != uid(new) {
                    events.push(event("delete", key, Some(old), None, source, at));
                    events.push(event("create", key, None, Some(new), source, at));
                } else {
                    events.push(event("update", key, Some(old), Some(new), source, at));
                }
            }
            (None, None) => {}
        }
    }
    events
}

fn meta<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// One event of the differ.
fn event(
    verb: &str,
    key: &ObjectKey,
    old: Option<&Arc<Value>>,
    new: Option<&Arc<Value>>,
    source: Source,
    at: SystemTime,
) -> AuditEvent {
    // The object as it is now (the deleted one for a delete).
    let current = new.or(old).map(|v| &**v).unwrap_or(&Value::Null);
    let api_version = current.get("apiVersion").and_then(Value::as_str).unwrap_or("v1");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let uid = meta(current, "uid").map(str::to_owned);
    let resource_version = meta(current, "resourceVersion").map(str::to_owned);
    let stamp = timestamp(at);
    // Stable where the object has a resourceVersion (two agents seeing the same change give the
    // same id); a manifest without one is told apart by when the change was seen.
    let id_input = format!(
        "{verb}|{}|{}|{}|{}|{}|{}",
        key.api_group,
        key.resource,
        key.namespace,
        key.name,
        uid.as_deref().unwrap_or(""),
        resource_version.clone().unwrap_or_else(|| stamp.clone())
    );
    let mut annotations = BTreeMap::from([
        (SOURCE_ANNOTATION.to_owned(), source.as_str().to_owned()),
        (
            OBSERVED_ANNOTATION.to_owned(),
            "seen in the cluster state, not in an API request: the user is not known".to_owned(),
        ),
    ]);
    if source == Source::RestartDiff {
        annotations.insert(
            "flowaudit.io/restart-diff".to_owned(),
            "changed while flowaudit was not running: the timestamps are when it saw the change after its restart"
                .to_owned(),
        );
    }
    AuditEvent {
        kind: "Event".into(),
        api_version: "audit.k8s.io/v1".into(),
        level: "RequestResponse".into(),
        audit_id: derived_id(&id_input),
        stage: "ResponseComplete".into(),
        request_uri: None,
        verb: verb.into(),
        user: UserInfo { username: OBSERVED_USER.into(), ..UserInfo::default() },
        impersonated_user: None,
        source_ips: None,
        user_agent: None,
        object_ref: Some(ObjectRef {
            resource: Some(key.resource.clone()),
            namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
            name: Some(key.name.clone()),
            uid,
            api_group: Some(group.to_owned()),
            api_version: Some(version.to_owned()),
            resource_version,
            subresource: None,
        }),
        response_status: Some(ResponseStatus {
            metadata: Value::Object(Default::default()),
            code: Some(if verb == "create" { 201 } else { 200 }),
            rest: BTreeMap::new(),
        }),
        request_object: None,
        response_object: new.map(|v| (**v).clone()),
        previous_object: old.map(|v| (**v).clone()),
        request_received_timestamp: stamp.clone(),
        stage_timestamp: stamp,
        annotations,
        extra: BTreeMap::new(),
    }
}

/// Diffs each cluster state version against the last, and keeps the last in the state directory
/// so the first version after a restart is diffed against what was seen before it.
///
/// The very first start (no stored state, or one of another source) reports nothing: the
/// objects were not created at that moment, and an event stamped now would say they were. The
/// state is stored, and later starts report only what changed.
pub struct Auditor {
    dir: PathBuf,
    source_id: String,
    live: Source,
    /// The objects last reported; `None` until the first state.
    last: Option<Arc<Objects>>,
    /// The stored objects, until the first state is compared with them.
    stored: Option<Objects>,
}

impl Auditor {
    /// An auditor of the cluster source `source_id` (`kube`, `manifests:<dir>`), whose live
    /// changes are reported as `live`, with its state in `dir` (created if needed).
    pub fn open(dir: &Path, source_id: &str, live: Source) -> Result<Self, AuditError> {
        super::store::create_dir(dir)?;
        let stored = match StoredObjects::load(dir) {
            Some(s) if s.source == source_id => Some(s.objects()),
            Some(s) => {
                tracing::warn!(
                    message = "The stored audit state is of another cluster source; not comparing it.",
                    stored = %s.source,
                    source = source_id
                );
                None
            }
            None => None,
        };
        Ok(Self { dir: dir.to_owned(), source_id: source_id.to_owned(), live, last: None, stored })
    }

    /// The events between the last state and `objects` (see [`Auditor`] for the first), stamped
    /// `at`. The new state is stored when anything changed; a failure to store it is logged (the
    /// events are returned all the same, and the next change tries again).
    pub fn observe(&mut self, objects: &Arc<Objects>, at: SystemTime) -> Vec<AuditEvent> {
        let events = match (&self.last, self.stored.take()) {
            (Some(last), _) => {
                if Arc::ptr_eq(last, objects) {
                    return Vec::new();
                }
                diff(last, objects, self.live, at)
            }
            (None, Some(stored)) => {
                let events = diff(&stored, objects, Source::RestartDiff, at);
                tracing::info!(
                    message = "Compared the cluster state with the one stored before the restart.",
                    changes = events.len()
                );
                events
            }
            (None, None) => {
                tracing::info!(
                    message = "No stored audit state: recording the current objects without events (first start).",
                    objects = objects.0.len()
                );
                Vec::new()
            }
        };
        let first = self.last.is_none();
        self.last = Some(objects.clone());
        if (first || !events.is_empty())
            && let Err(error) = self.save()
        {
            tracing::error!(message = "Storing the audit state failed; a restart may report these changes again.", %error);
        }
        events
    }

    fn save(&self) -> Result<(), AuditError> {
        let objects = self.last.as_deref().cloned().unwrap_or_default();
        StoredObjects::new(&self.source_id, &objects).save(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cluster::manifests;

    const AT: SystemTime = SystemTime::UNIX_EPOCH;

    /// The objects of a manifests directory holding `yaml`.
    fn objects(yaml: &str) -> Arc<Objects> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        manifests::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e:#?}")).state.objects
    }

    fn summary(events: &[AuditEvent]) -> Vec<(String, String, String)> {
        events
            .iter()
            .map(|e| {
                let r = e.object_ref.as_ref().unwrap();
                let name = match &r.namespace {
                    Some(ns) => format!("{ns}/{}", r.name.as_deref().unwrap()),
                    None => r.name.clone().unwrap(),
                };
                (
                    e.verb.clone(),
                    format!("{}.{}", r.resource.as_deref().unwrap(), r.api_group.as_deref().unwrap()),
                    name,
                )
            })
            .collect()
    }

    fn s(v: &str, r: &str, n: &str) -> (String, String, String) {
        (v.into(), r.into(), n.into())
    }

    const ALL: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, uid: u1, resourceVersion: "5", labels: {app: web}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: knp, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: np, namespace: shop}
spec: {selector: all(), ingress: [{action: Allow}]}
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: gnp}
spec: {selector: all(), types: [Ingress]}
---
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: snp, namespace: shop}
spec: {selector: all()}
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: sgnp}
spec: {selector: all()}
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: sknp, namespace: shop}
spec: {podSelector: {}}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: ns1, namespace: shop}
spec: {nets: [10.1.0.0/16]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: gns}
spec: {nets: [10.2.0.0/16]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: hep}
spec: {node: n1, interfaceName: eth0}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: anp}
spec: {priority: 5, subject: {namespaces: {}}, ingress: [{name: a, action: Deny, from: [{namespaces: {}}]}]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec: {subject: {namespaces: {}}, ingress: [{name: d, action: Deny, from: [{namespaces: {}}]}]}
"#;

    /// Every policy-related kind is created and deleted; Services are not audited.
    #[test]
    fn every_kind_is_created_and_deleted() {
        let all = objects(ALL);
        let none = Arc::new(Objects::default());
        let created = diff(&none, &all, Source::Manifests, AT);
        let expected = [
            s("create", "namespaces.", "shop"),
            s("create", "pods.", "shop/web-1"),
            s("create", "networkpolicies.networking.k8s.io", "shop/knp"),
            s("create", "adminnetworkpolicies.policy.networking.k8s.io", "anp"),
            s("create", "baselineadminnetworkpolicies.policy.networking.k8s.io", "default"),
            s("create", "globalnetworkpolicies.crd.projectcalico.org", "gnp"),
            s("create", "globalnetworksets.projectcalico.org", "gns"),
            s("create", "hostendpoints.projectcalico.org", "hep"),
            s("create", "networkpolicies.projectcalico.org", "shop/np"),
            s("create", "networksets.projectcalico.org", "shop/ns1"),
            s("create", "stagedglobalnetworkpolicies.projectcalico.org", "sgnp"),
            s("create", "stagedkubernetesnetworkpolicies.projectcalico.org", "shop/sknp"),
            s("create", "stagednetworkpolicies.projectcalico.org", "shop/snp"),
            s("create", "tiers.projectcalico.org", "security"),
        ];
        assert_eq!(summary(&created), expected);
        let deleted = diff(&all, &none, Source::Manifests, AT);
        assert_eq!(summary(&deleted).iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["delete"; 14]);
        assert!(deleted.iter().all(|e| e.response_object.is_none() && e.previous_object.is_some()));

        let e = &created[2];
        let line = serde_json::to_value(e).unwrap();
        assert_eq!(line["kind"], "Event");
        assert_eq!(line["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(line["level"], "RequestResponse");
        assert_eq!(line["stage"], "ResponseComplete");
        assert_eq!(line["user"], json!({"username": "system:flowaudit:observed"}));
        assert_eq!(line["responseStatus"], json!({"metadata": {}, "code": 201}));
        assert_eq!(
            line["objectRef"],
            json!({"resource": "networkpolicies", "namespace": "shop", "name": "knp", "apiGroup": "networking.k8s.io", "apiVersion": "v1"})
        );
        assert_eq!(line["responseObject"]["spec"]["policyTypes"], json!(["Ingress"]));
        assert!(line.get("previousObject").is_none());
        assert_eq!(line["requestReceivedTimestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(line["annotations"]["flowaudit.io/source"], "manifests");
        assert!(line["annotations"]["flowaudit.io/observed"].as_str().unwrap().contains("user is not known"));
        assert_eq!(line["auditID"].as_str().unwrap().len(), 36);
    }

    /// An edit of each policy kind is an update with the objects before and after.
    #[test]
    fn every_policy_kind_is_updated() {
        let before = objects(ALL);
        let edited = ALL
            .replace("policyTypes: [Ingress]}", "policyTypes: [Ingress, Egress]}")
            .replace("selector: all()", "selector: app == 'x'")
            .replace("order: 100", "order: 200")
            .replace("10.1.0.0/16", "10.3.0.0/16")
            .replace("10.2.0.0/16", "10.4.0.0/16")
            .replace("interfaceName: eth0", "interfaceName: eth1")
            .replace("priority: 5", "priority: 6")
            .replace("name: d, action: Deny", "name: d, action: Allow")
            .replace("podSelector: {}}", "podSelector: {matchLabels: {a: b}}}");
        let after = objects(&edited);
        let events = diff(&before, &after, Source::Manifests, AT);
        let names: Vec<String> = summary(&events).into_iter().map(|(v, r, n)| format!("{v} {r} {n}")).collect();
        assert_eq!(events.len(), 12, "{names:#?}");
        assert!(events.iter().all(|e| e.verb == "update"), "{names:#?}");
        let tier = events.iter().find(|e| e.object_ref.as_ref().unwrap().resource.as_deref() == Some("tiers")).unwrap();
        assert_eq!(tier.previous_object.as_ref().unwrap()["spec"]["order"], 100);
        assert_eq!(tier.response_object.as_ref().unwrap()["spec"]["order"], 200);
        assert_eq!(tier.response_status.as_ref().unwrap().code, Some(200));
    }

    /// A pod's label change is an update; a change of its status (or anything but its labels)
    /// is not; a pod replaced under the same name (new uid) is a delete and a create.
    #[test]
    fn pods_and_namespaces_count_only_label_changes() {
        let before = objects(ALL);
        let status_only = objects(
            &ALL.replace("podIP: 10.0.0.1", "podIP: 10.0.0.9")
                .replace("resourceVersion: \"5\"", "resourceVersion: \"6\""),
        );
        assert_eq!(*status_only, *before, "equal for an audit");
        assert!(diff(&before, &status_only, Source::Watch, AT).is_empty());

        let relabelled =
            objects(&ALL.replace("labels: {app: web}", "labels: {app: api}").replace("team: web", "team: shop"));
        let events = diff(&before, &relabelled, Source::Watch, AT);
        assert_eq!(summary(&events), [s("update", "namespaces.", "shop"), s("update", "pods.", "shop/web-1")]);
        assert_eq!(events[1].previous_object.as_ref().unwrap()["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(events[1].response_object.as_ref().unwrap()["metadata"]["labels"], json!({"app": "api"}));
        assert_eq!(events[1].object_ref.as_ref().unwrap().uid.as_deref(), Some("u1"));
        assert_eq!(events[1].source(), Some("watch"));

        let replaced = objects(&ALL.replace("uid: u1", "uid: u2"));
        let events = diff(&before, &replaced, Source::Watch, AT);
        assert_eq!(summary(&events), [s("delete", "pods.", "shop/web-1"), s("create", "pods.", "shop/web-1")]);
    }

    /// The first start stores the state and reports nothing; a restart with no change reports
    /// nothing (no replayed creates); changes made while down are reported once, marked
    /// restart-diff, with the previous objects; then live changes follow.
    #[test]
    fn restarts_report_only_what_changed_while_down() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let v1 = objects(ALL);

        let mut auditor = Auditor::open(&state, "kube", Source::Watch).unwrap();
        assert!(auditor.observe(&v1, AT).is_empty(), "first start: nothing");
        assert!(state.join(super::super::store::OBJECTS_FILE).is_file());
        let edited = objects(&ALL.replace("order: 100", "order: 7"));
        let events = auditor.observe(&edited, AT);
        assert_eq!(summary(&events), [s("update", "tiers.projectcalico.org", "security")]);
        drop(auditor);

        // Restarted with no change.
        let mut auditor = Auditor::open(&state, "kube", Source::Watch).unwrap();
        assert!(auditor.observe(&objects(&ALL.replace("order: 100", "order: 7")), AT).is_empty());
        drop(auditor);

        // Restarted after a delete, a label change and a new policy.
        let down = ALL
            .replace("order: 100", "order: 7")
            .replace("labels: {app: web}", "labels: {app: db}")
            .replace("kind: HostEndpoint\nmetadata: {name: hep}", "kind: HostEndpoint\nmetadata: {name: hep2}");
        let mut auditor = Auditor::open(&state, "kube", Source::Watch).unwrap();
        let events = auditor.observe(&objects(&down), AT);
        assert_eq!(
            summary(&events),
            [
                s("update", "pods.", "shop/web-1"),
                s("delete", "hostendpoints.projectcalico.org", "hep"),
                s("create", "hostendpoints.projectcalico.org", "hep2"),
            ]
        );
        assert!(events.iter().all(|e| e.source() == Some("restart-diff")));
        assert!(events.iter().all(|e| e.annotations.contains_key("flowaudit.io/restart-diff")));
        let deleted = events.iter().find(|e| e.verb == "delete").unwrap();
        assert_eq!(deleted.previous_object.as_ref().unwrap()["spec"]["interfaceName"], "eth0");
        let pod = &events[0];
        assert_eq!(
            pod.previous_object.as_ref().unwrap(),
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "5", "labels": {"app": "web"}}}),
            "pods are stored with their identity and labels only"
        );

        // A state of another source is not compared: nothing is reported, the new one is stored.
        let mut auditor = Auditor::open(&state, "manifests:/etc/x", Source::Manifests).unwrap();
        assert!(auditor.observe(&v1, AT).is_empty());
    }
}
