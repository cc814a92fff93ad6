//! The `ocsf` encoding: OCSF 1.3 events, Network Activity (4001) for flows, API Activity
//! (6003) for audit events, Compliance Finding (2003) for CIS test rows and Base Event (0) for
//! the other report rows.
//!
//! Takes: a flow record, an audit view or a report row. Gives: one OCSF JSON object (field order fixed by the
//! structs below). Must never: use a class or enum value outside the OCSF 1.3 schema; what OCSF
//! has no attribute for goes to `unmapped` under its flow-log name.

use std::net::IpAddr;

use serde::Serialize;

use super::{
    AuditOp, AuditView, CIS_STANDARD, EncodeContext, EncodeError, FlowView, Level, ReportView, RowFields, level, named,
    secs_to_ms,
};
use crate::model::{Action, Enforcement, FlowRecord, Observed, Policies, RecordLabels, Reporter};

/// The OCSF schema version the events follow.
pub(super) const OCSF_VERSION: &str = "1.3.0";

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    product: Product<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    log_name: &'static str,
}

#[derive(Serialize)]
struct Product<'a> {
    name: &'static str,
    vendor_name: &'static str,
    version: &'a str,
}

/// The node that observed the flow or read the audit log.
#[derive(Serialize)]
struct Device<'a> {
    hostname: &'a str,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// What every event starts with: its category, class, activity (`type_uid` = class × 100 +
/// activity, `type_name` = `<class>: <activity>`) and severity.
#[derive(Serialize)]
struct Classification {
    activity_id: u8,
    activity_name: &'static str,
    category_uid: u8,
    category_name: &'static str,
    class_uid: u32,
    class_name: &'static str,
    type_uid: u32,
    type_name: TypeName,
    severity_id: u8,
    severity: &'static str,
}

/// `<class>: <activity>`, written without an allocation.
struct TypeName(&'static str, &'static str);

impl Serialize for TypeName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}: {}", self.0, self.1))
    }
}

impl Classification {
    fn new(
        (category_uid, category_name): (u8, &'static str),
        (class_uid, class_name): (u32, &'static str),
        (activity_id, activity_name): (u8, &'static str),
        (severity_id, severity): (u8, &'static str),
    ) -> Self {
        Self {
            activity_id,
            activity_name,
            category_uid,
            category_name,
            class_uid,
            class_name,
            type_uid: class_uid * 100 + u32::from(activity_id),
            type_name: TypeName(class_name, activity_name),
            severity_id,
            severity,
        }
    }
}

#[derive(Serialize)]
struct FlowEvent<'a> {
    #[serde(flatten)]
    class: Classification,
    time: u64,
    start_time: u64,
    end_time: u64,
    duration: u64,
    action_id: u8,
    action: &'static str,
    disposition_id: u8,
    disposition: &'static str,
    metadata: Metadata<'a>,
    device: Device<'a>,
    src_endpoint: Endpoint<'a>,
    dst_endpoint: Endpoint<'a>,
    connection_info: ConnectionInfo,
    traffic: Traffic,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    observables: Vec<Observable>,
    unmapped: Unmapped<'a>,
}

#[derive(Serialize)]
struct Endpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    svc_name: Option<&'a str>,
}

#[derive(Serialize)]
struct ConnectionInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol_num: Option<u8>,
    direction_id: u8,
    direction: &'static str,
    protocol_ver_id: u8,
    protocol_ver: &'static str,
}

#[derive(Serialize)]
struct Traffic {
    bytes_in: u64,
    bytes_out: u64,
    packets_in: u64,
    packets_out: u64,
    bytes: u64,
    packets: u64,
}

#[derive(Serialize)]
struct Observable {
    name: &'static str,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    value: IpAddr,
}

/// The flow-log fields OCSF has no attribute for, under their flow-log names.
#[derive(Serialize)]
struct Unmapped<'a> {
    id: &'a str,
    host: &'a str,
    reporter: Reporter,
    proto: &'a str,
    source_name_aggr: &'a str,
    source_namespace: &'a str,
    source_type: &'a str,
    source_labels: &'a RecordLabels,
    dest_name_aggr: &'a str,
    dest_namespace: &'a str,
    dest_type: &'a str,
    dest_labels: &'a RecordLabels,
    dest_service_namespace: &'a str,
    dest_service_port: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_code: Option<u8>,
    num_flows: u64,
    num_flows_started: u64,
    num_flows_completed: u64,
    policies: &'a Policies,
    pending_action: Action,
    flow_action: Action,
    enforcement: Enforcement,
    num_violations: u64,
    observed: Observed,
    num_established: u64,
    num_attempted: u64,
    num_rejected: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    host_network: bool,
}

fn metadata<'a>(ctx: &'a EncodeContext, uid: Option<&'a str>, log_name: &'static str) -> Metadata<'a> {
    Metadata {
        version: OCSF_VERSION,
        product: Product { name: "flowaudit", vendor_name: "flowaudit", version: ctx.agent_version },
        uid,
        log_name,
    }
}

fn device(ctx: &EncodeContext) -> Device<'_> {
    Device { hostname: &ctx.node, type_id: 1, kind: "Server" }
}

pub(super) fn flow(rec: &FlowRecord, ctx: &EncodeContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let v = FlowView::of(rec);
    let start_ms = secs_to_ms("start_time", rec.start_time)?;
    let end_ms = secs_to_ms("end_time", rec.end_time)?;
    let (severity_id, severity) = match level(rec) {
        Level::Info => (1, "Informational"),
        Level::Low => (2, "Low"),
        Level::Medium => (3, "Medium"),
        Level::High => (4, "High"),
    };
    let (action_id, action, disposition_id, disposition) = match rec.action {
        Action::Allow => (1, "Allowed", 1, "Allowed"),
        Action::Deny => (2, "Denied", 2, "Blocked"),
    };
    let (direction_id, direction) = match rec.reporter {
        Reporter::Src => (2, "Outbound"),
        Reporter::Dst => (1, "Inbound"),
        Reporter::Fwd => (0, "Unknown"),
    };
    let (protocol_ver_id, protocol_ver) = match v.ip_version {
        Some(4) => (4, "Internet Protocol version 4 (IPv4)"),
        Some(6) => (6, "Internet Protocol version 6 (IPv6)"),
        _ => (0, "Unknown"),
    };
    let observables = [("src_endpoint.ip", rec.source_ip), ("dst_endpoint.ip", rec.dest_ip)]
        .into_iter()
        .filter_map(|(name, ip)| ip.map(|value| Observable { name, type_id: 2, kind: "IP Address", value }))
        .collect();
    let ev = FlowEvent {
        class: Classification::new(
            (4, "Network Activity"),
            (4001, "Network Activity"),
            (6, "Traffic"),
            (severity_id, severity),
        ),
        time: end_ms,
        start_time: start_ms,
        end_time: end_ms,
        duration: end_ms.saturating_sub(start_ms),
        action_id,
        action,
        disposition_id,
        disposition,
        metadata: metadata(ctx, Some(&rec.id), "flows"),
        device: device(ctx),
        src_endpoint: Endpoint {
            ip: rec.source_ip,
            port: rec.source_port,
            name: named(&rec.source_name),
            svc_name: None,
        },
        dst_endpoint: Endpoint {
            ip: rec.dest_ip,
            port: rec.dest_port,
            name: named(&rec.dest_name),
            svc_name: named(&rec.dest_service_name),
        },
        connection_info: ConnectionInfo {
            protocol_name: v.transport,
            protocol_num: v.proto_num,
            direction_id,
            direction,
            protocol_ver_id,
            protocol_ver,
        },
        // OCSF counts are initiator-relative: `out` is what the source sent.
        traffic: Traffic {
            bytes_in: v.dst_bytes,
            bytes_out: v.src_bytes,
            packets_in: v.dst_packets,
            packets_out: v.src_packets,
            bytes: v.src_bytes.saturating_add(v.dst_bytes),
            packets: v.src_packets.saturating_add(v.dst_packets),
        },
        observables,
        unmapped: Unmapped {
            id: &rec.id,
            host: &rec.host,
            reporter: rec.reporter,
            proto: &rec.proto,
            source_name_aggr: &rec.source_name_aggr,
            source_namespace: &rec.source_namespace,
            source_type: &rec.source_type,
            source_labels: &rec.source_labels,
            dest_name_aggr: &rec.dest_name_aggr,
            dest_namespace: &rec.dest_namespace,
            dest_type: &rec.dest_type,
            dest_labels: &rec.dest_labels,
            dest_service_namespace: &rec.dest_service_namespace,
            dest_service_port: &rec.dest_service_port,
            icmp_type: rec.icmp_type,
            icmp_code: rec.icmp_code,
            num_flows: rec.num_flows,
            num_flows_started: rec.num_flows_started,
            num_flows_completed: rec.num_flows_completed,
            policies: &rec.policies,
            pending_action: rec.pending_action,
            flow_action: rec.flow_action,
            enforcement: rec.enforcement,
            num_violations: rec.num_violations,
            observed: rec.observed,
            num_established: rec.num_established,
            num_attempted: rec.num_attempted,
            num_rejected: rec.num_rejected,
            source_cgroup_id: rec.source_cgroup_id,
            host_network: rec.host_network,
        },
    };
    Ok(serde_json::to_writer(out, &ev)?)
}

#[derive(Serialize)]
struct ApiEvent<'a> {
    #[serde(flatten)]
    class: Classification,
    time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<u64>,
    status_id: u8,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<String>,
    metadata: Metadata<'a>,
    device: Device<'a>,
    actor: Actor<'a>,
    api: Api<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resources: Vec<ResourceDetails<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_endpoint: Option<Endpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_request: Option<HttpRequest<'a>>,
    raw_data: String,
}

#[derive(Serialize)]
struct Actor<'a> {
    user: User<'a>,
}

#[derive(Serialize)]
struct User<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
}

#[derive(Serialize)]
struct Api<'a> {
    operation: &'a str,
    service: Named<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Named<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<Uid<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Code>,
}

#[derive(Serialize)]
struct Named<S> {
    name: S,
}

#[derive(Serialize)]
struct Uid<'a> {
    uid: &'a str,
}

#[derive(Serialize)]
struct Code {
    code: i64,
}

#[derive(Serialize)]
struct ResourceDetails<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Named<&'a str>>,
}

#[derive(Serialize)]
struct HttpRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<Url<'a>>,
}

#[derive(Serialize)]
struct Url<'a> {
    url_string: &'a str,
}

pub(super) fn audit(a: &AuditView<'_>, ctx: &EncodeContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let activity = match a.op() {
        AuditOp::Create => (1, "Create"),
        AuditOp::Read => (2, "Read"),
        AuditOp::Update => (3, "Update"),
        AuditOp::Delete => (4, "Delete"),
        AuditOp::Other => (99, "Other"),
    };
    let (status_id, status) = match a.succeeded() {
        Some(true) => (1, "Success"),
        Some(false) => (2, "Failure"),
        None => (0, "Unknown"),
    };
    let has_resource = a.resource.is_some() || a.name.is_some();
    let ev = ApiEvent {
        class: Classification::new((6, "Application Activity"), (6003, "API Activity"), activity, (1, "Informational")),
        time: a.time_ms,
        start_time: a.received_ms,
        status_id,
        status,
        status_code: a.code.map(|c| c.to_string()),
        metadata: metadata(ctx, a.audit_id, "audit"),
        device: device(ctx),
        actor: Actor { user: User { name: a.username, uid: a.user_uid } },
        api: Api {
            operation: a.verb.unwrap_or("unknown"),
            service: Named { name: "kube-apiserver" },
            group: a.api_group.map(|name| Named { name }),
            version: a.api_version,
            request: a.audit_id.map(|uid| Uid { uid }),
            response: a.code.map(|code| Code { code }),
        },
        resources: if has_resource {
            vec![ResourceDetails {
                kind: a.resource_type(),
                name: a.name,
                namespace: a.namespace,
                group: a.api_group.map(|name| Named { name }),
            }]
        } else {
            Vec::new()
        },
        src_endpoint: a.source_ip.map(|ip| Endpoint { ip: Some(ip), port: None, name: None, svc_name: None }),
        http_request: (a.user_agent.is_some() || a.request_uri.is_some())
            .then(|| HttpRequest { user_agent: a.user_agent, url: a.request_uri.map(|url_string| Url { url_string }) }),
        raw_data: serde_json::to_string(a.event)?,
    };
    Ok(serde_json::to_writer(out, &ev)?)
}

/// A report row: a Compliance Finding (2003) for a CIS test row (with [`Finding`]), else a Base
/// Event (0).
#[derive(Serialize)]
struct ReportEvent<'a> {
    #[serde(flatten)]
    class: Classification,
    time: u64,
    start_time: u64,
    end_time: u64,
    message: String,
    metadata: Metadata<'a>,
    device: Device<'a>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    finding: Option<Finding<'a>>,
    unmapped: ReportUnmapped<'a>,
}

/// What a Compliance Finding adds.
#[derive(Serialize)]
struct Finding<'a> {
    status_id: u8,
    status: &'static str,
    finding_info: FindingInfo<'a>,
    compliance: Compliance<'a>,
    resources: [NodeResource<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    remediation: Option<Remediation<'a>>,
}

#[derive(Serialize)]
struct FindingInfo<'a> {
    uid: &'a str,
    title: &'a str,
    created_time: u64,
    types: [&'static str; 1],
}

#[derive(Serialize)]
struct Compliance<'a> {
    control: &'a str,
    standards: [&'static str; 1],
    status_id: u8,
    status: &'static str,
    status_code: &'a str,
}

#[derive(Serialize)]
struct NodeResource<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
}

#[derive(Serialize)]
struct Remediation<'a> {
    desc: &'a str,
}

/// The row as flowaudit writes it: report, file, row number and columns.
#[derive(Serialize)]
struct ReportUnmapped<'a> {
    report: RowFields<'a>,
}

/// A CIS test row is a Compliance Finding (2003): the test is `compliance.control` of the CIS
/// Kubernetes Benchmark, its result `compliance.status_id` (PASS: 1 Pass, WARN: 2 Warning, FAIL:
/// 3 Fail, INFO: 99 Other), the node the resource. OCSF has no class for the other rows (a
/// summary, an endpoint's flags, a namespace): they are Base Events (0) with the row in
/// `unmapped`, as this encoding does with every field OCSF has no attribute for.
pub(super) fn report(v: &ReportView<'_>, ctx: &EncodeContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let row = v.row;
    let severity = match v.level {
        Level::Info => (1, "Informational"),
        Level::Low => (2, "Low"),
        Level::Medium => (3, "Medium"),
        Level::High => (4, "High"),
    };
    let finding = v.test.as_ref().map(|test| Finding {
        status_id: 1,
        status: "New",
        finding_info: FindingInfo {
            uid: &v.id,
            title: test.description,
            created_time: row.generated_ms,
            types: [CIS_STANDARD],
        },
        compliance: {
            let (status_id, status) = match test.status {
                "PASS" => (1, "Pass"),
                "WARN" => (2, "Warning"),
                "FAIL" => (3, "Fail"),
                _ => (99, "Other"),
            };
            Compliance { control: test.index, standards: [CIS_STANDARD], status_id, status, status_code: test.status }
        },
        resources: [NodeResource { kind: "Node", name: test.node }],
        remediation: (!test.remediation.is_empty()).then_some(Remediation { desc: test.remediation }),
    });
    let class = match finding {
        Some(_) => Classification::new((2, "Findings"), (2003, "Compliance Finding"), (1, "Create"), severity),
        None => Classification::new((0, "Uncategorized"), (0, "Base Event"), (99, "Other"), severity),
    };
    let ev = ReportEvent {
        class,
        time: row.generated_ms,
        start_time: row.start_ms,
        end_time: row.end_ms,
        message: v.message(),
        metadata: metadata(ctx, Some(&v.id), "reports"),
        device: device(ctx),
        finding,
        unmapped: ReportUnmapped { report: RowFields::of(row) },
    };
    Ok(serde_json::to_writer(out, &ev)?)
}
