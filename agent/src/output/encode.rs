//! output::encode: flow records, Kubernetes audit events and report rows → one SIEM line each.
//!
//! Takes: a [`FlowRecord`] (the flow-log contract, DESIGN.md §2.2), an `audit.k8s.io/v1` Event
//! as JSON or a [`ReportRow`], an [`Encoding`] and the node's [`EncodeContext`]. Gives: the bytes of one line
//! (without its newline) appended to a caller's buffer: `calico` (the flow-log JSON itself),
//! `ecs` (Elastic Common Schema 8.x JSON), `ocsf` (OCSF 1.3 JSON) or `cef` (ArcSight CEF, for
//! syslog). The field mappings and the choices behind them are in `docs/siem-encodings.md`.
//! Must never: panic on any record or event (aggregated, odd or hostile values included), do I/O,
//! or change the `calico` encoding, which is the flow-log file's format byte for byte.
//!
//! Pure functions over plain data: golden-tested in `encode/tests.rs` against the files in
//! `encode/golden/`.

use std::net::IpAddr;

use serde_json::Value;

use crate::model::{Action, Enforcement, FlowRecord, RecordLabels, ReportRow, Reporter, Text};

mod calico;
mod cef;
mod ecs;
mod ocsf;
#[cfg(test)]
mod tests;

/// How an exporter writes records and events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The flow-log JSON (Calico Enterprise field names) and the audit event JSON as it came.
    #[default]
    Calico,
    /// Elastic Common Schema 8.x JSON.
    Ecs,
    /// Open Cybersecurity Schema Framework 1.3 JSON: Network Activity (4001), API Activity (6003).
    Ocsf,
    /// ArcSight Common Event Format (CEF:0), one line for syslog.
    Cef,
}

/// What an encoding needs to know about the writer, beyond the record.
#[derive(Clone, Debug)]
pub struct EncodeContext {
    /// This node's name (`host.name`, `device.hostname`, `dvchost`).
    pub node: String,
    /// The agent's version (product version in OCSF metadata and the CEF header).
    pub agent_version: &'static str,
}

/// A record or event could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// JSON serialisation failed (not expected for these types; kept rather than unwrapped).
    #[error("serialising JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A time is beyond what RFC 3339 can write (after the year 9999).
    #[error("{field} = {value} s is past the year 9999")]
    TimeOutOfRange {
        /// The record field.
        field: &'static str,
        /// Its value, Unix seconds.
        value: u64,
    },
    /// An audit event that is not a JSON object, or has neither `stageTimestamp` nor
    /// `requestReceivedTimestamp` as RFC 3339 UTC time.
    #[error("not an audit.k8s.io Event: {0}")]
    Audit(&'static str),
}

/// Appends one encoded flow record to `out`, without a trailing newline.
///
/// On error `out` may hold part of a line after its previous length: truncate it back.
/// Never panics.
pub fn encode_flow(rec: &FlowRecord, enc: Encoding, ctx: &EncodeContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match enc {
        Encoding::Calico => Ok(calico::flow(rec, out)?),
        Encoding::Ecs => ecs::flow(rec, ctx, out),
        Encoding::Ocsf => ocsf::flow(rec, ctx, out),
        Encoding::Cef => cef::flow(rec, ctx, out),
    }
}

/// Appends one encoded audit event (an `audit.k8s.io/v1` Event as JSON: fields kind, apiVersion,
/// level, auditID, stage, requestURI, verb, user.username, objectRef{resource,namespace,name,
/// apiGroup,apiVersion}, responseStatus.code, requestReceivedTimestamp, stageTimestamp,
/// responseObject, previousObject, annotations) to `out`, without a newline.
///
/// Missing fields are left out of the encoding; `calico` writes any JSON as it is, the other
/// encodings need an object with a timestamp ([`EncodeError::Audit`]). On error `out` may hold
/// part of a line: truncate it back. Never panics.
pub fn encode_audit(
    event: &serde_json::Value,
    enc: Encoding,
    ctx: &EncodeContext,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match enc {
        Encoding::Calico => Ok(serde_json::to_writer(out, event)?),
        Encoding::Ecs => ecs::audit(&AuditView::of(event)?, ctx, out),
        Encoding::Ocsf => ocsf::audit(&AuditView::of(event)?, ctx, out),
        Encoding::Cef => cef::audit(&AuditView::of(event)?, ctx, out),
    }
}

/// Appends one encoded report row to `out`, without a newline: `calico` is flowaudit's own JSON
/// (the row's columns by name, with the report, interval and row number), the others map CIS
/// test rows to their compliance fields and carry every row's columns. Never panics.
pub fn encode_report(
    row: &ReportRow,
    enc: Encoding,
    ctx: &EncodeContext,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let v = ReportView::of(row);
    match enc {
        Encoding::Calico => Ok(serde_json::to_writer(
            out,
            &CalicoReportRow {
                report: &row.report,
                report_type: row.report_type,
                start_time: rfc3339_ms(row.start_ms),
                end_time: rfc3339_ms(row.end_ms),
                generated_time: rfc3339_ms(row.generated_ms),
                host: &ctx.node,
                id: &v.id,
                file: row.file,
                row: row.row,
                rows: row.rows,
                columns: Columns(row),
            },
        )?),
        Encoding::Ecs => ecs::report(&v, ctx, out),
        Encoding::Ocsf => ocsf::report(&v, ctx, out),
        Encoding::Cef => cef::report(&v, ctx, out),
    }
}

/// The `calico` encoding of a report row.
#[derive(serde::Serialize)]
struct CalicoReportRow<'a> {
    report: &'a str,
    report_type: &'static str,
    start_time: String,
    end_time: String,
    generated_time: String,
    host: &'a str,
    id: &'a str,
    file: &'static str,
    row: u64,
    rows: u64,
    columns: Columns<'a>,
}

/// A report row as the `ecs` and `ocsf` encodings nest it (`flowaudit.report`, `unmapped.report`).
#[derive(serde::Serialize)]
struct RowFields<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    file: &'static str,
    row: u64,
    rows: u64,
    columns: Columns<'a>,
}

impl<'a> RowFields<'a> {
    fn of(row: &'a ReportRow) -> Self {
        Self {
            name: &row.report,
            kind: row.report_type,
            file: row.file,
            row: row.row,
            rows: row.rows,
            columns: Columns(row),
        }
    }
}

/// A report row's columns as one JSON object, in the file's column order.
struct Columns<'a>(&'a ReportRow);

impl serde::Serialize for Columns<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(self.0.columns.len()))?;
        for (name, value) in self.0.columns.iter().zip(&self.0.values) {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// The CIS Benchmark, as the SIEM encodings name the standard of a test row.
const CIS_STANDARD: &str = "CIS Kubernetes Benchmark";

/// What the encodings read from a report row besides its columns.
struct ReportView<'a> {
    row: &'a ReportRow,
    /// [`ReportRow::id`].
    id: String,
    /// A row of a CIS benchmark's test table.
    test: Option<CisTest<'a>>,
    /// FAIL: medium; WARN: low; an endpoint with enforcement violations: high; else info.
    level: Level,
}

/// A CIS test row (`all-tests.csv`, `failed-tests.csv`).
struct CisTest<'a> {
    node: &'a str,
    index: &'a str,
    description: &'a str,
    /// PASS, FAIL, WARN or INFO.
    status: &'a str,
    remediation: &'a str,
}

impl<'a> ReportView<'a> {
    fn of(row: &'a ReportRow) -> Self {
        let test = match (row.get("testIndex"), row.get("status")) {
            (Some(index), Some(status)) => Some(CisTest {
                node: row.get("nodeName").unwrap_or_default(),
                index,
                description: row.get("testDescription").unwrap_or_default(),
                status,
                remediation: row.get("remediation").unwrap_or_default(),
            }),
            _ => None,
        };
        let level = match (&test, row.get("enforcementViolations")) {
            (Some(t), _) if t.status == "FAIL" => Level::Medium,
            (Some(t), _) if t.status == "WARN" => Level::Low,
            (None, Some(n)) if n.parse::<u64>().is_ok_and(|n| n > 0) => Level::High,
            _ => Level::Info,
        };
        Self { row, id: row.id(), test, level }
    }

    /// `<report> <file> row N of M`.
    fn message(&self) -> String {
        format!(
            "{} {} {} row {} of {}",
            self.row.report_type, self.row.report, self.row.file, self.row.row, self.row.rows
        )
    }
}

/// The Community ID v1 (seed 0) of a record's connection: `1:` + base64 of SHA-1 over the
/// ordered endpoints (corelight community-id-spec). `None` when the record has no single
/// connection to name: an aggregated record without addresses, a TCP/UDP/SCTP record without
/// both ports (level 1+), or mixed address families.
pub fn community_id(rec: &FlowRecord) -> Option<String> {
    let v = FlowView::of(rec);
    let (src, dst) = (rec.source_ip?, rec.dest_ip?);
    let proto = v.proto_num?;
    let (sport, dport) = match proto {
        PROTO_ICMP | PROTO_ICMP6 => (Some(u16::from(rec.icmp_type?)), Some(u16::from(rec.icmp_code.unwrap_or(0)))),
        _ => (rec.source_port, rec.dest_port),
    };
    community_id_of(proto, src, dst, sport, dport)
}

/// Community ID v1 (seed 0) of one tuple; for ICMP the ports are the type and code.
fn community_id_of(proto: u8, src: IpAddr, dst: IpAddr, sport: Option<u16>, dport: Option<u16>) -> Option<String> {
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP | PROTO_ICMP | PROTO_ICMP6 => (Some(sport?), Some(dport?)),
        _ => (None, None),
    };
    community_id::calculate_community_id(0, src, dst, sport, dport, proto, false).ok()
}

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMP6: u8 = 58;
const PROTO_SCTP: u8 = 132;

/// What every encoding derives from a record: protocol, family, and the counts per side.
struct FlowView<'a> {
    /// IANA protocol number, from `proto` (or the pipeline context when `proto` is unknown).
    proto_num: Option<u8>,
    /// IANA keyword in lowercase (`tcp`, `udp`, `icmp`, `ipv6-icmp`, `sctp`), if known.
    transport: Option<&'static str>,
    /// 4 or 6; `None` for an aggregated record of a protocol that does not tell.
    ip_version: Option<u8>,
    /// Bytes and packets the source (initiator) sent, whatever the reporter.
    src_bytes: u64,
    src_packets: u64,
    /// Bytes and packets the destination sent back.
    dst_bytes: u64,
    dst_packets: u64,
    /// The namespace of the reporting end (`src`/`fwd`: the source's, `dst`: the destination's).
    local_namespace: Option<&'a str>,
}

impl<'a> FlowView<'a> {
    fn of(rec: &'a FlowRecord) -> FlowView<'a> {
        let proto_num = match &*rec.proto {
            "tcp" => Some(PROTO_TCP),
            "udp" => Some(PROTO_UDP),
            "icmp" => Some(PROTO_ICMP),
            "icmp6" => Some(PROTO_ICMP6),
            "sctp" => Some(PROTO_SCTP),
            other => other.parse().ok().or((rec.context.proto != 0).then_some(rec.context.proto)),
        };
        let transport = proto_num.and_then(|p| match p {
            PROTO_TCP => Some("tcp"),
            PROTO_UDP => Some("udp"),
            PROTO_ICMP => Some("icmp"),
            PROTO_ICMP6 => Some("ipv6-icmp"),
            PROTO_SCTP => Some("sctp"),
            _ => None,
        });
        let ip_version = match rec.source_ip.or(rec.dest_ip) {
            Some(IpAddr::V4(_)) => Some(4),
            Some(IpAddr::V6(_)) => Some(6),
            None => match proto_num {
                Some(PROTO_ICMP6) => Some(6),
                Some(PROTO_ICMP) => Some(4),
                _ => None,
            },
        };
        // in/out are relative to the reporting end (DESIGN.md §2.2): `dst` reads the other way.
        let (src_bytes, src_packets, dst_bytes, dst_packets) = match rec.reporter {
            Reporter::Src | Reporter::Fwd => (rec.bytes_out, rec.packets_out, rec.bytes_in, rec.packets_in),
            Reporter::Dst => (rec.bytes_in, rec.packets_in, rec.bytes_out, rec.packets_out),
        };
        let local_namespace = match rec.reporter {
            Reporter::Src | Reporter::Fwd => named(&rec.source_namespace),
            Reporter::Dst => named(&rec.dest_namespace),
        };
        FlowView { proto_num, transport, ip_version, src_bytes, src_packets, dst_bytes, dst_packets, local_namespace }
    }
}

/// A name field, `None` for `-` (none, or aggregated away) and empty.
fn named(t: &Text) -> Option<&str> {
    match &**t {
        "-" | "" => None,
        s => Some(s),
    }
}

/// `key=value` labels, `None` when unknown or aggregated away.
fn labels(l: &RecordLabels) -> Option<&[String]> {
    match l {
        RecordLabels::Unknown => None,
        RecordLabels::List(list) => Some(list),
    }
}

/// How alarming a record is, shared by the encodings' severity scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// Allowed, and the packets agree.
    Info,
    /// Denied, and the packets agree.
    Low,
    /// Allowed but dropped elsewhere, or an old connection a new policy denies.
    Medium,
    /// Denied, yet established.
    High,
}

fn level(rec: &FlowRecord) -> Level {
    match rec.enforcement {
        Enforcement::Violation => Level::High,
        Enforcement::StaleConnection | Enforcement::UnexplainedDrop => Level::Medium,
        Enforcement::Consistent => match rec.action {
            Action::Deny => Level::Low,
            Action::Allow => Level::Info,
        },
    }
}

const MS_PER_S: u64 = 1000;
/// 10000-01-01T00:00:00Z in Unix seconds: RFC 3339 has four-digit years.
const YEAR_10000: u64 = 253_402_300_800;

/// Unix seconds → milliseconds, checked against the year 10000.
fn secs_to_ms(field: &'static str, value: u64) -> Result<u64, EncodeError> {
    if value >= YEAR_10000 {
        return Err(EncodeError::TimeOutOfRange { field, value });
    }
    Ok(value * MS_PER_S)
}

/// Unix milliseconds (before the year 10000) → `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / MS_PER_S;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, ms % MS_PER_S)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// An RFC 3339 UTC time as Kubernetes writes it (`2026-11-27T00:58:25.123456Z`) → Unix ms.
fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    u64::try_from(ms).ok().filter(|ms| *ms < YEAR_10000 * MS_PER_S)
}

/// The fields of an audit event the encodings read (all optional, borrowed from the event).
struct AuditView<'a> {
    event: &'a Value,
    audit_id: Option<&'a str>,
    level: Option<&'a str>,
    stage: Option<&'a str>,
    verb: Option<&'a str>,
    request_uri: Option<&'a str>,
    username: Option<&'a str>,
    user_uid: Option<&'a str>,
    source_ip: Option<IpAddr>,
    user_agent: Option<&'a str>,
    resource: Option<&'a str>,
    subresource: Option<&'a str>,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    api_group: Option<&'a str>,
    api_version: Option<&'a str>,
    code: Option<i64>,
    /// `requestReceivedTimestamp`, Unix ms.
    received_ms: Option<u64>,
    /// `stageTimestamp` (or the received time), Unix ms: the event's time.
    time_ms: u64,
}

impl<'a> AuditView<'a> {
    fn of(event: &'a Value) -> Result<AuditView<'a>, EncodeError> {
        if !event.is_object() {
            return Err(EncodeError::Audit("not a JSON object"));
        }
        let s = |path: &[&str]| -> Option<&'a str> {
            path.iter().try_fold(event, |v, k| v.get(k)).and_then(Value::as_str).filter(|s| !s.is_empty())
        };
        let received_ms = s(&["requestReceivedTimestamp"]).and_then(parse_rfc3339_ms);
        let time_ms = s(&["stageTimestamp"])
            .and_then(parse_rfc3339_ms)
            .or(received_ms)
            .ok_or(EncodeError::Audit("no stageTimestamp or requestReceivedTimestamp in RFC 3339 UTC"))?;
        let source_ip =
            event.get("sourceIPs").and_then(|ips| ips.get(0)).and_then(Value::as_str).and_then(|ip| ip.parse().ok());
        Ok(AuditView {
            event,
            audit_id: s(&["auditID"]),
            level: s(&["level"]),
            stage: s(&["stage"]),
            verb: s(&["verb"]),
            request_uri: s(&["requestURI"]),
            username: s(&["user", "username"]),
            user_uid: s(&["user", "uid"]),
            source_ip,
            user_agent: s(&["userAgent"]),
            resource: s(&["objectRef", "resource"]),
            subresource: s(&["objectRef", "subresource"]),
            namespace: s(&["objectRef", "namespace"]),
            name: s(&["objectRef", "name"]),
            api_group: s(&["objectRef", "apiGroup"]),
            api_version: s(&["objectRef", "apiVersion"]),
            code: event.get("responseStatus").and_then(|r| r.get("code")).and_then(Value::as_i64),
            received_ms,
            time_ms,
        })
    }

    /// What the verb did to the object.
    fn op(&self) -> AuditOp {
        match self.verb {
            Some("create") => AuditOp::Create,
            Some("update" | "patch") => AuditOp::Update,
            Some("delete" | "deletecollection") => AuditOp::Delete,
            Some("get" | "list" | "watch") => AuditOp::Read,
            _ => AuditOp::Other,
        }
    }

    /// `Some(true)` for a 1xx-3xx response, `Some(false)` for 4xx/5xx, `None` without a code.
    fn succeeded(&self) -> Option<bool> {
        self.code.map(|c| c < 400)
    }

    /// `resource`, or `resource/subresource` (`pods/exec`).
    fn resource_type(&self) -> Option<String> {
        match (self.resource, self.subresource) {
            (Some(r), Some(sub)) => Some(format!("{r}/{sub}")),
            (r, _) => r.map(str::to_owned),
        }
    }

    /// `group/version`, or `version` for the core group.
    fn group_version(&self) -> Option<String> {
        match (self.api_group, self.api_version) {
            (Some(g), Some(v)) => Some(format!("{g}/{v}")),
            (None, Some(v)) => Some(v.to_owned()),
            (Some(g), None) => Some(g.to_owned()),
            (None, None) => None,
        }
    }
}

/// The kind of change an audit event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuditOp {
    Create,
    Read,
    Update,
    Delete,
    Other,
}
