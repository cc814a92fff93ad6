//! The `cef` encoding: ArcSight Common Event Format `CEF:0` lines, for syslog.
//!
//! Takes: a flow record, an audit view or a report row. Gives: `CEF:0|flowaudit|flowaudit|<version>|<signature
//! id>|<name>|<severity>|<extension>`. Must never: write an unescaped `\` or `|` in a header field,
//! or an unescaped `\`, `=`, CR or LF in an extension value (a value can never end its line or
//! start a key); header fields have no newline escape, so CR and LF there become spaces.

use std::{
    fmt::{self, Display, Write as _},
    net::IpAddr,
};

use super::{
    AuditOp, AuditView, Columns, EncodeContext, EncodeError, FlowView, Level, ReportView, level, named, secs_to_ms,
};
use crate::model::{Action, Enforcement, FlowRecord, Observed, RecordLabels, Reporter};

/// Prefix of the keys CEF's dictionary has no entry for: the spec's `VendornameProductname`.
const CUSTOM: &str = "flowauditflowaudit";

/// Appends `s` to `out`, replacing each byte that `escape` maps (ASCII only, so UTF-8 stays whole)
/// and copying the runs between them in one piece.
fn escape_into(out: &mut Vec<u8>, s: &str, escape: impl Fn(u8) -> Option<&'static [u8]>) {
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(rep) = escape(b) {
            out.extend_from_slice(&bytes[run..i]);
            out.extend_from_slice(rep);
            run = i + 1;
        }
    }
    out.extend_from_slice(&bytes[run..]);
}

/// Escapes a header field as it is written: `\` and `|`; CR and LF become spaces.
struct Header<'a>(&'a mut Vec<u8>);

impl fmt::Write for Header<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s, |b| match b {
            b'\\' => Some(b"\\\\"),
            b'|' => Some(b"\\|"),
            b'\r' | b'\n' => Some(b" "),
            _ => None,
        });
        Ok(())
    }
}

/// Escapes an extension value as it is written: `\`, `=`, and CR/LF as `\r`/`\n`.
struct Value<'a>(&'a mut Vec<u8>);

impl fmt::Write for Value<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s, |b| match b {
            b'\\' => Some(b"\\\\"),
            b'=' => Some(b"\\="),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            _ => None,
        });
        Ok(())
    }
}

/// One CEF line being written.
struct Line<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Line<'a> {
    /// Writes the header up to the extension.
    fn start(out: &'a mut Vec<u8>, version: &str, signature: &str, name: &str, severity: u8) -> Line<'a> {
        out.extend_from_slice(b"CEF:0|flowaudit|flowaudit|");
        for field in [version, signature, name] {
            // Writing into a Vec cannot fail.
            let _ = Header(&mut *out).write_str(field);
            out.push(b'|');
        }
        let _ = write!(out_fmt(&mut *out), "{severity}|");
        Line { out, first: true }
    }

    /// Appends ` key=value` (no space before the first).
    fn kv(&mut self, key: &str, value: impl Display) -> &mut Self {
        self.kv_prefixed("", key, value)
    }

    /// Appends ` <prefix><key>=value`.
    fn kv_prefixed(&mut self, prefix: &str, key: &str, value: impl Display) -> &mut Self {
        if !self.first {
            self.out.push(b' ');
        }
        self.first = false;
        self.out.extend_from_slice(prefix.as_bytes());
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b'=');
        let _ = write!(Value(&mut *self.out), "{value}");
        self
    }

    fn opt(&mut self, key: &str, value: Option<impl Display>) -> &mut Self {
        if let Some(v) = value {
            self.kv(key, v);
        }
        self
    }

    /// A custom string field with its label (`cs1=... cs1Label=...`).
    fn labelled(&mut self, key: &str, label: &str, value: Option<impl Display>) -> &mut Self {
        if let Some(v) = value {
            self.kv(key, v);
            let _ = write!(out_fmt(&mut *self.out), " {key}Label={label}");
        }
        self
    }

    /// An address: `src`/`dst` for IPv4; IPv6 in `c6a2` (source) or `c6a3` (destination) with its
    /// label, since `src`/`dst` are IPv4 fields.
    fn ip(&mut self, v4_key: &str, v6_key: &str, v6_label: &str, ip: Option<IpAddr>) -> &mut Self {
        match ip {
            Some(IpAddr::V4(a)) => self.kv(v4_key, a),
            Some(IpAddr::V6(a)) => self.labelled(v6_key, v6_label, Some(a)),
            None => self,
        }
    }

    fn custom(&mut self, key: &str, value: impl Display) -> &mut Self {
        self.kv_prefixed(CUSTOM, key, value)
    }
}

/// A plain `fmt::Write` over the buffer (no escaping: for the header's digits and fixed text).
fn out_fmt(out: &mut Vec<u8>) -> impl fmt::Write + '_ {
    struct Raw<'a>(&'a mut Vec<u8>);
    impl fmt::Write for Raw<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.extend_from_slice(s.as_bytes());
            Ok(())
        }
    }
    Raw(out)
}

/// A policy trace as one value: the entries joined by `;` (entries never hold one).
struct Trace<'a>(&'a [String]);

impl Display for Trace<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(';')?;
            }
            f.write_str(e)?;
        }
        Ok(())
    }
}

/// A non-empty trace.
fn trace(t: &[String]) -> Option<Trace<'_>> {
    (!t.is_empty()).then_some(Trace(t))
}

/// Labels as one value: `key=value` joined by `,` (the `=` is escaped on output).
struct Labels<'a>(&'a [String]);

impl Display for Labels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            f.write_str(e)?;
        }
        Ok(())
    }
}

fn labels(l: &RecordLabels) -> Option<Labels<'_>> {
    super::labels(l).map(Labels)
}

/// `TCP`, `UDP`, ... (CEF writes protocols in upper case), without allocating for the usual ones.
fn proto_upper(p: &str) -> std::borrow::Cow<'static, str> {
    match p {
        "tcp" => "TCP".into(),
        "udp" => "UDP".into(),
        "icmp" => "ICMP".into(),
        "icmp6" => "ICMP6".into(),
        "sctp" => "SCTP".into(),
        other => other.to_uppercase().into(),
    }
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

fn reporter(r: Reporter) -> &'static str {
    match r {
        Reporter::Src => "src",
        Reporter::Dst => "dst",
        Reporter::Fwd => "fwd",
    }
}

fn observed(o: Observed) -> &'static str {
    match o {
        Observed::Established => "established",
        Observed::Attempted => "attempted",
        Observed::Rejected => "rejected",
        Observed::OneWay => "one_way",
        Observed::Mixed => "mixed",
    }
}

fn enforcement(e: Enforcement) -> &'static str {
    match e {
        Enforcement::Consistent => "consistent",
        Enforcement::UnexplainedDrop => "unexplained_drop",
        Enforcement::StaleConnection => "stale_connection",
        Enforcement::Violation => "violation",
    }
}

pub(super) fn flow(rec: &FlowRecord, ctx: &EncodeContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let v = FlowView::of(rec);
    let start_ms = secs_to_ms("start_time", rec.start_time)?;
    let end_ms = secs_to_ms("end_time", rec.end_time)?;
    let (signature, name) = match rec.action {
        Action::Allow => ("flow-allow", "Flow allowed"),
        Action::Deny => ("flow-deny", "Flow denied"),
    };
    let severity = match level(rec) {
        Level::Info => 1,
        Level::Low => 3,
        Level::Medium => 5,
        Level::High => 8,
    };
    let service =
        named(&rec.dest_service_name).map(|s| format!("{}/{s}", named(&rec.dest_service_namespace).unwrap_or("-")));
    let mut l = Line::start(out, ctx.agent_version, signature, name, severity);
    l.kv("rt", end_ms)
        .kv("start", start_ms)
        .kv("end", end_ms)
        .kv("dvchost", &ctx.node)
        .kv("externalId", &rec.id)
        .kv("cat", "flow")
        .kv("act", action(rec.action))
        .ip("src", "c6a2", "Source IPv6 Address", rec.source_ip)
        .opt("spt", rec.source_port)
        .ip("dst", "c6a3", "Destination IPv6 Address", rec.dest_ip)
        .opt("dpt", rec.dest_port)
        .kv("proto", proto_upper(&rec.proto));
    match rec.reporter {
        Reporter::Src => l.kv("deviceDirection", 1),
        Reporter::Dst => l.kv("deviceDirection", 0),
        Reporter::Fwd => &mut l,
    };
    // CEF's in/out are source-to-destination relative: `in` is what the source sent.
    l.kv("in", v.src_bytes)
        .kv("out", v.dst_bytes)
        .kv("cnt", rec.num_flows)
        .labelled("cn1", "srcPackets", Some(v.src_packets))
        .labelled("cn2", "dstPackets", Some(v.dst_packets))
        .labelled("cn3", "numViolations", Some(rec.num_violations))
        .labelled("cs1", "srcNamespace", named(&rec.source_namespace))
        .labelled("cs2", "srcName", named(&rec.source_name))
        .labelled("cs3", "dstNamespace", named(&rec.dest_namespace))
        .labelled("cs4", "dstName", named(&rec.dest_name))
        .labelled("cs5", "enforcedPolicies", trace(&rec.policies.enforced_policies))
        .labelled("cs6", "pendingPolicies", trace(&rec.policies.pending_policies))
        .labelled("flexString1", "reporter", Some(reporter(rec.reporter)))
        .labelled("flexString2", "flowAction", Some(action(rec.flow_action)))
        .kv(
            "outcome",
            match rec.action {
                Action::Allow => "success",
                Action::Deny => "failure",
            },
        )
        .opt("destinationServiceName", service)
        .custom("PendingAction", action(rec.pending_action))
        .custom("Enforcement", enforcement(rec.enforcement))
        .custom("Observed", observed(rec.observed))
        .custom("SrcType", &rec.source_type)
        .custom("SrcNameAggr", &rec.source_name_aggr)
        .custom("DstType", &rec.dest_type)
        .custom("DstNameAggr", &rec.dest_name_aggr);
    if let Some(labels) = labels(&rec.source_labels) {
        l.custom("SrcLabels", labels);
    }
    if let Some(labels) = labels(&rec.dest_labels) {
        l.custom("DstLabels", labels);
    }
    if let Some(port) = named(&rec.dest_service_port) {
        l.custom("DstServicePort", port);
    }
    if let Some(t) = rec.icmp_type {
        l.custom("IcmpType", t);
    }
    if let Some(c) = rec.icmp_code {
        l.custom("IcmpCode", c);
    }
    l.custom("NumFlowsStarted", rec.num_flows_started)
        .custom("NumFlowsCompleted", rec.num_flows_completed)
        .custom("NumEstablished", rec.num_established)
        .custom("NumAttempted", rec.num_attempted)
        .custom("NumRejected", rec.num_rejected)
        .custom("Host", &rec.host);
    if let Some(id) = rec.source_cgroup_id {
        l.custom("SrcCgroupId", id);
    }
    if rec.host_network {
        l.custom("HostNetwork", true);
    }
    Ok(())
}

pub(super) fn audit(a: &AuditView<'_>, ctx: &EncodeContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let verb = a.verb.unwrap_or("unknown");
    let signature = format!("audit-{verb}");
    let resource = a.resource_type();
    let name = format!("Kubernetes API {verb} {}", resource.as_deref().unwrap_or("-"));
    let write = matches!(a.op(), AuditOp::Create | AuditOp::Update | AuditOp::Delete);
    let severity = match (write, a.succeeded()) {
        (true, Some(false)) => 5,
        (true, _) => 3,
        (false, _) => 1,
    };
    let mut l = Line::start(out, ctx.agent_version, &signature, &name, severity);
    l.kv("rt", a.time_ms)
        .opt("start", a.received_ms)
        .kv("end", a.time_ms)
        .kv("dvchost", &ctx.node)
        .opt("externalId", a.audit_id)
        .kv("cat", "audit")
        .kv("act", verb)
        .opt("suser", a.username)
        .opt("suid", a.user_uid)
        .ip("src", "c6a2", "Source IPv6 Address", a.source_ip)
        .opt("requestClientApplication", a.user_agent)
        .opt("request", a.request_uri)
        .opt("outcome", a.succeeded().map(|ok| if ok { "success" } else { "failure" }))
        .labelled("cn1", "responseCode", a.code)
        .labelled("cs1", "namespace", a.namespace)
        .labelled("cs2", "resource", resource.as_deref())
        .labelled("cs3", "name", a.name)
        .labelled("cs4", "apiVersion", a.group_version())
        .labelled("cs5", "stage", a.stage)
        .labelled("cs6", "level", a.level);
    Ok(())
}

/// A report row: signature `report-<type>`, or `cis-<test>` for a CIS test row (its name the
/// test's description, `outcome` its status). The row's columns are one JSON object in
/// `flowauditflowauditColumns`.
pub(super) fn report(v: &ReportView<'_>, ctx: &EncodeContext, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let row = v.row;
    let columns = serde_json::to_string(&Columns(row))?;
    let (signature, name) = match &v.test {
        Some(t) => (format!("cis-{}", t.index), t.description.to_owned()),
        None => (format!("report-{}", row.report_type), format!("{} {}", row.report_type, row.file)),
    };
    let severity = match v.level {
        Level::Info => 1,
        Level::Low => 3,
        Level::Medium => 5,
        Level::High => 8,
    };
    let mut l = Line::start(out, ctx.agent_version, &signature, &name, severity);
    l.kv("rt", row.generated_ms)
        .kv("start", row.start_ms)
        .kv("end", row.end_ms)
        .kv("dvchost", &ctx.node)
        .kv("externalId", &v.id)
        .kv("cat", "report")
        .opt("outcome", v.test.as_ref().map(|t| t.status))
        .labelled("cs1", "report", Some(&row.report))
        .labelled("cs2", "file", Some(row.file))
        .labelled("cs3", "node", v.test.as_ref().map(|t| t.node))
        .labelled("cn1", "row", Some(row.row))
        .labelled("cn2", "rows", Some(row.rows))
        .kv("msg", v.message())
        .custom("Columns", columns);
    Ok(())
}
