//! The `ecs` encoding: Elastic Common Schema 8.x documents.
//!
//! Takes: a flow record, an audit view or a report row. Gives: one ECS JSON object (field order fixed by the
//! structs below). Must never: put a value in an ECS field whose meaning differs (reporter-relative
//! in/out counts become source/destination counts; Kubernetes names, which ECS has no place for on
//! two ends, go under `source.kubernetes` / `destination.kubernetes`; the policy trace under
//! `flowaudit`).

use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;

use super::{
    AuditOp, AuditView, CIS_STANDARD, EncodeContext, EncodeError, FlowView, ReportView, RowFields, labels, named,
    rfc3339_ms, secs_to_ms,
};
use crate::model::{Action, Enforcement, FlowRecord, Observed, Policies, Reporter};

/// The ECS version the documents follow.
pub(super) const ECS_VERSION: &str = "8.11.0";

#[derive(Serialize)]
struct Ecs {
    version: &'static str,
}

#[derive(Serialize)]
struct Host<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Agent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    version: &'a str,
}

#[derive(Serialize)]
struct FlowDoc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    ecs: Ecs,
    event: FlowEvent<'a>,
    source: End<'a>,
    destination: End<'a>,
    network: Network,
    #[serde(skip_serializing_if = "Related::is_empty")]
    related: Related,
    orchestrator: Orchestrator<'a>,
    host: Host<'a>,
    agent: Agent<'a>,
    flowaudit: Flowaudit<'a>,
}

#[derive(Serialize)]
struct FlowEvent<'a> {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    kind_of: [&'static str; 2],
    action: &'static str,
    outcome: &'static str,
    id: &'a str,
    start: String,
    end: String,
    /// Nanoseconds.
    duration: u64,
    module: &'static str,
    dataset: &'static str,
}

#[derive(Serialize)]
struct End<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    bytes: u64,
    packets: u64,
    kubernetes: Kube<'a>,
}

#[derive(Serialize)]
struct Kube<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    name_aggr: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<Service<'a>>,
}

#[derive(Serialize)]
struct Service<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port_name: Option<&'a str>,
}

#[derive(Serialize)]
struct Network {
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iana_number: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    direction: &'static str,
    bytes: u64,
    packets: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    community_id: Option<String>,
}

#[derive(Serialize)]
struct Related {
    ip: Vec<IpAddr>,
}

impl Related {
    fn is_empty(&self) -> bool {
        self.ip.is_empty()
    }
}

#[derive(Serialize)]
struct Orchestrator<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
}

/// The flow-log fields ECS has no place for, under their flow-log names.
#[derive(Serialize)]
struct Flowaudit<'a> {
    host: &'a str,
    reporter: Reporter,
    action: Action,
    pending_action: Action,
    flow_action: Action,
    enforcement: Enforcement,
    num_violations: u64,
    observed: Observed,
    num_flows: u64,
    num_flows_started: u64,
    num_flows_completed: u64,
    num_established: u64,
    num_attempted: u64,
    num_rejected: u64,
    policies: &'a Policies,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    host_network: bool,
}

pub(super) fn flow(rec: &FlowRecord, ctx: &EncodeContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let v = FlowView::of(rec);
    let start_ms = secs_to_ms("start_time", rec.start_time)?;
    let end_ms = secs_to_ms("end_time", rec.end_time)?;
    let service = named(&rec.dest_service_name).map(|name| Service {
        name,
        namespace: named(&rec.dest_service_namespace),
        port_name: named(&rec.dest_service_port),
    });
    let doc = FlowDoc {
        timestamp: rfc3339_ms(end_ms),
        ecs: Ecs { version: ECS_VERSION },
        event: FlowEvent {
            kind: "event",
            category: ["network"],
            kind_of: [
                "connection",
                match rec.action {
                    Action::Allow => "allowed",
                    Action::Deny => "denied",
                },
            ],
            action: "network_flow",
            outcome: match rec.action {
                Action::Allow => "success",
                Action::Deny => "failure",
            },
            id: &rec.id,
            start: rfc3339_ms(start_ms),
            end: rfc3339_ms(end_ms),
            duration: end_ms.saturating_sub(start_ms).saturating_mul(1_000_000),
            module: "flowaudit",
            dataset: "flowaudit.flow",
        },
        source: End {
            ip: rec.source_ip,
            port: rec.source_port,
            bytes: v.src_bytes,
            packets: v.src_packets,
            kubernetes: Kube {
                kind: &rec.source_type,
                name: named(&rec.source_name),
                name_aggr: &rec.source_name_aggr,
                namespace: named(&rec.source_namespace),
                labels: labels(&rec.source_labels),
                service: None,
            },
        },
        destination: End {
            ip: rec.dest_ip,
            port: rec.dest_port,
            bytes: v.dst_bytes,
            packets: v.dst_packets,
            kubernetes: Kube {
                kind: &rec.dest_type,
                name: named(&rec.dest_name),
                name_aggr: &rec.dest_name_aggr,
                namespace: named(&rec.dest_namespace),
                labels: labels(&rec.dest_labels),
                service,
            },
        },
        network: Network {
            transport: v.transport,
            iana_number: v.proto_num.map(|p| p.to_string()),
            kind: v.ip_version.map(|n| if n == 4 { "ipv4" } else { "ipv6" }),
            direction: match rec.reporter {
                Reporter::Src => "egress",
                Reporter::Dst => "ingress",
                Reporter::Fwd => "unknown",
            },
            bytes: v.src_bytes.saturating_add(v.dst_bytes),
            packets: v.src_packets.saturating_add(v.dst_packets),
            community_id: super::community_id(rec),
        },
        related: Related {
            ip: rec.source_ip.into_iter().chain(rec.dest_ip.filter(|d| Some(*d) != rec.source_ip)).collect(),
        },
        orchestrator: Orchestrator { kind: "kubernetes", namespace: v.local_namespace },
        host: Host { name: &ctx.node },
        agent: Agent { kind: "flowaudit", version: ctx.agent_version },
        flowaudit: Flowaudit {
            host: &rec.host,
            reporter: rec.reporter,
            action: rec.action,
            pending_action: rec.pending_action,
            flow_action: rec.flow_action,
            enforcement: rec.enforcement,
            num_violations: rec.num_violations,
            observed: rec.observed,
            num_flows: rec.num_flows,
            num_flows_started: rec.num_flows_started,
            num_flows_completed: rec.num_flows_completed,
            num_established: rec.num_established,
            num_attempted: rec.num_attempted,
            num_rejected: rec.num_rejected,
            policies: &rec.policies,
            icmp_type: rec.icmp_type,
            icmp_code: rec.icmp_code,
            source_cgroup_id: rec.source_cgroup_id,
            host_network: rec.host_network,
        },
    };
    Ok(serde_json::to_writer(out, &doc)?)
}

#[derive(Serialize)]
struct AuditDoc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    ecs: Ecs,
    event: AuditEvent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<AuditSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<Original<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<Original<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<Http>,
    orchestrator: AuditOrchestrator<'a>,
    host: Host<'a>,
    agent: Agent<'a>,
    kubernetes: Kubernetes<'a>,
}

#[derive(Serialize)]
struct AuditEvent<'a> {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    kind_of: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    end: String,
    module: &'static str,
    dataset: &'static str,
}

#[derive(Serialize)]
struct User<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

#[derive(Serialize)]
struct AuditSource {
    ip: IpAddr,
}

#[derive(Serialize)]
struct Original<'a> {
    original: &'a str,
}

#[derive(Serialize)]
struct Http {
    response: HttpResponse,
}

#[derive(Serialize)]
struct HttpResponse {
    status_code: i64,
}

#[derive(Serialize)]
struct AuditOrchestrator<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    resource: Resource<'a>,
}

#[derive(Serialize)]
struct Resource<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct Kubernetes<'a> {
    audit: &'a Value,
}

pub(super) fn audit(a: &AuditView<'_>, ctx: &EncodeContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let doc = AuditDoc {
        timestamp: rfc3339_ms(a.time_ms),
        ecs: Ecs { version: ECS_VERSION },
        event: AuditEvent {
            kind: "event",
            category: ["configuration"],
            kind_of: [match a.op() {
                AuditOp::Create => "creation",
                AuditOp::Update => "change",
                AuditOp::Delete => "deletion",
                AuditOp::Read => "access",
                AuditOp::Other => "info",
            }],
            action: a.verb,
            outcome: match a.succeeded() {
                Some(true) => "success",
                Some(false) => "failure",
                None => "unknown",
            },
            id: a.audit_id,
            start: a.received_ms.map(rfc3339_ms),
            end: rfc3339_ms(a.time_ms),
            module: "flowaudit",
            dataset: "flowaudit.audit",
        },
        user: (a.username.is_some() || a.user_uid.is_some()).then_some(User { name: a.username, id: a.user_uid }),
        source: a.source_ip.map(|ip| AuditSource { ip }),
        user_agent: a.user_agent.map(|original| Original { original }),
        url: a.request_uri.map(|original| Original { original }),
        http: a.code.map(|status_code| Http { response: HttpResponse { status_code } }),
        orchestrator: AuditOrchestrator {
            kind: "kubernetes",
            namespace: a.namespace,
            api_version: a.group_version(),
            resource: Resource { kind: a.resource_type(), name: a.name },
        },
        host: Host { name: &ctx.node },
        agent: Agent { kind: "flowaudit", version: ctx.agent_version },
        kubernetes: Kubernetes { audit: a.event },
    };
    Ok(serde_json::to_writer(out, &doc)?)
}

#[derive(Serialize)]
struct ReportDoc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    ecs: Ecs,
    message: String,
    event: ReportEvent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<Rule<'a>>,
    host: Host<'a>,
    agent: Agent<'a>,
    flowaudit: ReportFlowaudit<'a>,
}

#[derive(Serialize)]
struct ReportEvent<'a> {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    kind_of: [&'static str; 1],
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    start: String,
    end: String,
    module: &'static str,
    dataset: &'static str,
}

#[derive(Serialize)]
struct Rule<'a> {
    id: &'a str,
    name: &'a str,
    ruleset: &'static str,
}

#[derive(Serialize)]
struct ReportFlowaudit<'a> {
    report: RowFields<'a>,
}

/// A report row is a state record (ECS `event.kind: state`): what the report found for the
/// interval `event.start`..`event.end`, made at `@timestamp`. CIS test rows carry the test as
/// `rule.*` and its result as `event.outcome` (PASS: success, FAIL: failure, else unknown).
pub(super) fn report(v: &ReportView<'_>, ctx: &EncodeContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let row = v.row;
    let doc = ReportDoc {
        timestamp: rfc3339_ms(row.generated_ms),
        ecs: Ecs { version: ECS_VERSION },
        message: v.message(),
        event: ReportEvent {
            kind: "state",
            category: ["configuration"],
            kind_of: ["info"],
            id: &v.id,
            outcome: v.test.as_ref().map(|t| match t.status {
                "PASS" => "success",
                "FAIL" => "failure",
                _ => "unknown",
            }),
            start: rfc3339_ms(row.start_ms),
            end: rfc3339_ms(row.end_ms),
            module: "flowaudit",
            dataset: "flowaudit.report",
        },
        rule: v.test.as_ref().map(|t| Rule { id: t.index, name: t.description, ruleset: CIS_STANDARD }),
        host: Host { name: &ctx.node },
        agent: Agent { kind: "flowaudit", version: ctx.agent_version },
        flowaudit: ReportFlowaudit { report: RowFields::of(row) },
    };
    Ok(serde_json::to_writer(out, &doc)?)
}
