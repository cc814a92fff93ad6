//! audit: the policy change audit log.
//!
//! Takes: cluster state versions (their [`Objects`]: the policy-related objects as the source read
//! them) and, optionally, a kube-apiserver audit log file. Gives: [`AuditEvent`]s in the shape of
//! Kubernetes' `audit.k8s.io/v1` Event, one per create, update or delete of a policy-related
//! object ([`diff`]: [`Auditor`]; the API server's own log: [`follow`]: [`Follower`]). Keeps its
//! own restart state under the state directory ([`store`]). Must never: import another stage,
//! write the audit log itself (the pipeline does), replay creates of objects it already reported
//! after a restart, or panic on a line it cannot read.
//!
//! A watch sees what changed, not who changed it: events of the differ name the user
//! [`OBSERVED_USER`] and say so in the annotation [`OBSERVED_ANNOTATION`]. Events of the API
//! server's audit log keep their user.

pub mod diff;
pub mod follow;
pub mod store;

use std::{collections::BTreeMap, path::PathBuf, time::SystemTime};

use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::{
    diff::{Auditor, diff},
    follow::{Follower, FollowerConfig, LineFilter},
};
pub use crate::cluster::{ObjectKey, Objects};

/// The name of the audit log in the flow-log directory.
pub const AUDIT_LOG: &str = "audit.log";
/// The user of events seen through a watch (a watch does not know who made a change).
pub const OBSERVED_USER: &str = "system:flowaudit:observed";
/// Annotation naming where an event comes from: [`Source`].
pub const SOURCE_ANNOTATION: &str = "flowaudit.io/source";
/// Annotation on events seen through a watch, saying that the user is not known.
pub const OBSERVED_ANNOTATION: &str = "flowaudit.io/observed";

/// Where an event comes from (the value of [`SOURCE_ANNOTATION`] and the `source` label of
/// `flowaudit_audit_events_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A change between two versions of the `kube` source (a watch).
    Watch,
    /// A change between two loads of the manifests directory.
    Manifests,
    /// A difference between the state stored before a restart and the first state after it.
    RestartDiff,
    /// A line of the kube-apiserver's audit log.
    KubeAuditLog,
}

impl Source {
    /// `watch`, `manifests`, `restart-diff`, `kube-audit-log`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Watch => "watch",
            Self::Manifests => "manifests",
            Self::RestartDiff => "restart-diff",
            Self::KubeAuditLog => "kube-audit-log",
        }
    }
}

/// The user of a request (`authentication.k8s.io/v1` UserInfo).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user name.
    #[serde(default)]
    pub username: String,
    /// The user's uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Extra attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<BTreeMap<String, Vec<String>>>,
}

/// The object of a request (`audit.k8s.io/v1` ObjectReference).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Resource (plural, lowercase): `networkpolicies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Namespace (absent for cluster-scoped kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// API group (empty for the core group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// API version: `v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// resourceVersion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Subresource (`status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
}

/// The status of the response (a `meta/v1` Status; only `code` is read).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseStatus {
    /// Metadata (always `{}` in audit events).
    #[serde(default)]
    pub metadata: Value,
    /// HTTP status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Every other field (status, message, reason, details).
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// One audit event, in the shape of Kubernetes' `audit.k8s.io/v1` Event (one JSON object per line
/// of `audit.log`), plus `previousObject`: the object before the change, where flowaudit knows it.
/// Fields of the API server's events that this struct does not name are kept in `extra`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// `Event`.
    pub kind: String,
    /// `audit.k8s.io/v1`.
    pub api_version: String,
    /// `RequestResponse` for the differ's events.
    pub level: String,
    /// Unique id: the differ's is derived from the object's key, uid and resourceVersion (the same
    /// change seen by two agents has the same id).
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// `ResponseComplete`.
    pub stage: String,
    /// The request's URI (the API server's events only).
    #[serde(default, rename = "requestURI", skip_serializing_if = "Option::is_none")]
    pub request_uri: Option<String>,
    /// `create`, `update`, `patch` or `delete` (the differ reports a patch as `update`).
    pub verb: String,
    /// Who: [`OBSERVED_USER`] for the differ's events.
    pub user: UserInfo,
    /// The impersonated user, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<Value>,
    /// Client addresses.
    #[serde(default, rename = "sourceIPs", skip_serializing_if = "Option::is_none")]
    pub source_ips: Option<Vec<String>>,
    /// Client user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    /// The response's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    /// The request's body (the API server's events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_object: Option<Value>,
    /// The object after the change (absent for a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_object: Option<Value>,
    /// The object before the change (flowaudit's field; absent for a create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_object: Option<Value>,
    /// When the request arrived (RFC 3339, microseconds); for the differ, when it saw the change.
    pub request_received_timestamp: String,
    /// When the stage was reached; for the differ, when it saw the change.
    pub stage_timestamp: String,
    /// Annotations, [`SOURCE_ANNOTATION`] among them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields of the API server's events not named above.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl AuditEvent {
    /// The source annotation, if any.
    pub fn source(&self) -> Option<&str> {
        self.annotations.get(SOURCE_ANNOTATION).map(String::as_str)
    }
}

/// RFC 3339 with microseconds, UTC: `2026-11-27T00:58:25.123456Z`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// A uuid-shaped id (8-4-4-4-12 hex digits) derived from `input` by two FNV-1a hashes: stable
/// across builds and hosts.
pub fn derived_id(input: &str) -> String {
    let fnv = |seed: u64| input.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// The audit stage could not start or persist its state.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The state directory or a file in it could not be created, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The audit stage's metric families.
#[derive(Clone)]
pub struct AuditMetrics {
    /// `flowaudit_audit_events_total{source}`: events given to the audit log, per [`Source`].
    pub events: IntCounterVec,
    /// `flowaudit_audit_lines_rejected_total{reason}`: lines of the kube-apiserver audit log that
    /// could not be read (`malformed`, `too_long`, `partial`).
    pub rejected: IntCounterVec,
}

impl AuditMetrics {
    /// Registers the families in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let events = IntCounterVec::new(
            Opts::new("flowaudit_audit_events_total", "Policy change audit events given to audit.log, per source."),
            &["source"],
        )
        .expect("valid");
        let rejected = IntCounterVec::new(
            Opts::new(
                "flowaudit_audit_lines_rejected_total",
                "Lines of the kube-apiserver audit log not read, per reason.",
            ),
            &["reason"],
        )
        .expect("valid");
        registry.register(Box::new(events.clone())).expect("unique");
        registry.register(Box::new(rejected.clone())).expect("unique");
        Self { events, rejected }
    }

    /// Metrics registered nowhere (tests).
    pub fn unregistered() -> Self {
        Self::new(&Registry::new())
    }

    /// Counts `event` under its source.
    pub fn count(&self, event: &AuditEvent) {
        self.events.with_label_values(&[event.source().unwrap_or("unknown")]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real kube-apiserver 1.20 audit line reads and writes back with the same fields.
    #[test]
    fn an_api_server_event_round_trips() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"0b1d","stage":"ResponseComplete","requestURI":"/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies?fieldManager=kubectl-client-side-apply","verb":"create","user":{"username":"admin","uid":"admin-uid","groups":["system:masters","system:authenticated"]},"sourceIPs":["127.0.0.1"],"userAgent":"kubectl/v1.20.2","objectRef":{"resource":"networkpolicies","namespace":"shop","name":"deny","apiGroup":"networking.k8s.io","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201},"requestObject":{"kind":"NetworkPolicy"},"responseObject":{"kind":"NetworkPolicy"},"requestReceivedTimestamp":"2026-11-27T00:58:25.123456Z","stageTimestamp":"2026-11-27T00:58:25.223456Z","annotations":{"authorization.k8s.io/decision":"allow"},"somethingNew":1}"#;
        let event: AuditEvent = serde_json::from_str(line).unwrap();
        assert_eq!(event.user.username, "admin");
        assert_eq!(event.response_status.as_ref().unwrap().code, Some(201));
        assert_eq!(event.extra["somethingNew"], 1);
        let back: Value = serde_json::to_value(&event).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(line).unwrap());
    }

    #[test]
    fn derived_ids_are_uuid_shaped_and_stable() {
        let id = derived_id("x");
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(id, derived_id("x"));
        assert_ne!(id, derived_id("y"));
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_500_001)),
            "1970-01-01T00:00:01.500001Z"
        );
    }
}
