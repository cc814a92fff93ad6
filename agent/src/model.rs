//! Boundary types between the pipeline stages: plain data, no I/O, no stage logic.
//!
//! capture gives [`CaptureBatch`] (kernel observations of one interval); aggregate gives
//! [`FlowRecord`]s (the flow-log contract, DESIGN.md §2.2); output writes them. Only this module
//! is shared by stages, so data can only flow one way. Beside the flow path, the reporter gives
//! [`ReportRow`]s (one row of a compliance report's table) for output to export.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use serde::Serialize;

pub use crate::cluster::NamedPort;

/// `*_type` of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// A workload endpoint (a pod).
    Wep = 0,
    /// A host endpoint.
    Hep,
    /// A network set.
    Ns,
    /// Any other address.
    Net,
}

/// Who one end of a flow is, as enrich found it (shared, built once per state version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Type.
    pub kind: EndpointKind,
    /// Pod, host endpoint or network set name.
    pub name: Option<String>,
    /// generateName + `*`, the name itself, or `pvt`/`pub`.
    pub name_aggr: String,
    /// Namespace (pods, namespaced network sets).
    pub namespace: Option<String>,
    /// `name`, `name_aggr` and `namespace` as records write them (`-` for none).
    pub record_names: (Text, Text, Text),
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The labels as records write them (built once per state version).
    pub record_labels: RecordLabels,
    /// Labels of the namespace.
    pub namespace_labels: BTreeMap<String, String>,
    /// Service account (pods).
    pub service_account: Option<String>,
    /// Labels of the service account.
    pub service_account_labels: BTreeMap<String, String>,
    /// A host-network pod (named through its cgroup, its address is the node's).
    pub host_network: bool,
    /// Named container ports (targets of named ports in policies).
    pub named_ports: Vec<NamedPort>,
    /// The node a pod is scheduled on.
    pub node: Option<String>,
}

/// A string field of a record, shared rather than copied (names repeat across records).
pub type Text = Arc<str>;

/// `*_labels` of a record: `-` when unknown, else `{"labels": ["key=value", ...]}` (shared, so a
/// record copies a pointer, not the list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RecordLabels {
    /// Unknown or aggregated away: written `-`.
    #[default]
    Unknown,
    /// `key=value` strings, sorted.
    List(Arc<[String]>),
}

impl RecordLabels {
    /// From a label map.
    pub fn of(labels: &BTreeMap<String, String>) -> RecordLabels {
        RecordLabels::List(labels.iter().map(|(k, v)| format!("{k}={v}")).collect())
    }
}

impl From<&str> for RecordLabels {
    /// `-` (anything else is also taken as unknown).
    fn from(_: &str) -> Self {
        RecordLabels::Unknown
    }
}

impl Serialize for RecordLabels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match self {
            RecordLabels::Unknown => s.serialize_str("-"),
            RecordLabels::List(list) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("labels", &**list)?;
                m.end()
            }
        }
    }
}

/// The Service a destination address and port belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Port name (`-` when the port has none).
    pub port: String,
}

/// Aggregation level of flow-log records (Calico's `flowLogsFileAggregationKind*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AggregationLevel {
    /// 0: one record per 5-tuple.
    FiveTuple,
    /// 1: the source port is dropped (`source_port: null`).
    NoSourcePort,
    /// 2: also addresses and names, grouped by `*_name_aggr`.
    PrefixName,
    /// 3: also the destination port and the service port.
    NoDestPorts,
}

/// Which hook saw the packets of an [`Observation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `cgroup_skb` ingress: a local socket received them.
    CgroupIngress,
    /// `cgroup_skb` egress: a local socket sent them.
    CgroupEgress,
    /// TC ingress: they entered through an interface.
    TcIngress,
    /// TC egress: they left through an interface.
    TcEgress,
}

/// What a watched interface faces, from its link kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IfaceRole {
    /// A veth or netkit device: one end of a pod (an endpoint sits behind it).
    Pod,
    /// Anything else (a NIC, a bond, a tunnel): traffic passes through.
    Host,
}

/// The 5-tuple (plus ICMP fields) of one direction of a flow, as the packets carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    /// IP protocol number.
    pub proto: u8,
    /// Sender address (IPv4 as `IpAddr::V4`).
    pub src: IpAddr,
    /// Receiver address.
    pub dst: IpAddr,
    /// Sender port; the echo identifier for ICMP echo.
    pub src_port: u16,
    /// Receiver port; 0 for ICMP.
    pub dst_port: u16,
    /// ICMP type (0 for other protocols).
    pub icmp_type: u8,
    /// ICMP code (0 for other protocols).
    pub icmp_code: u8,
    /// For a destination-unreachable message: the protocol of the refused packet, whose ports
    /// are then `src_port`/`dst_port` (0 otherwise).
    pub inner_proto: u8,
}

/// Packets of one direction of one flow seen at one place during one interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The direction's tuple.
    pub tuple: Tuple,
    /// The hook.
    pub hook: Hook,
    /// Interface index for TC hooks, 0 for cgroup hooks.
    pub ifindex: u32,
    /// Role of that interface (`None` for cgroup hooks).
    pub role: Option<IfaceRole>,
    /// Wire packets.
    pub packets: u64,
    /// IP-layer bytes.
    pub bytes: u64,
    /// Wall clock of the first packet, Unix nanoseconds.
    pub first_seen_ns: u64,
    /// Wall clock of the last packet, Unix nanoseconds.
    pub last_seen_ns: u64,
    /// `flowaudit_common::tcp_flags` bits.
    pub tcp_flags: u64,
    /// cgroup v2 id of the local socket (cgroup hooks), 0 if none.
    pub cgroup_id: u64,
}

/// Everything capture drained for one flush interval.
#[derive(Clone, Debug, Default)]
pub struct CaptureBatch {
    /// Interval start, Unix nanoseconds.
    pub start_ns: u64,
    /// Interval end (the drain), Unix nanoseconds.
    pub end_ns: u64,
    /// One entry per (tuple, hook, interface), table and ring-buffer packets merged.
    pub observations: Vec<Observation>,
    /// The last batch: the agent is stopping.
    pub last: bool,
    /// The drain request this batch answers (an early drain before a policy change).
    pub answers: Option<u64>,
}

/// `reporter` of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    /// From the source's (initiator's) side.
    Src = 0,
    /// From the destination's side.
    Dst,
    /// Traffic that only passed through this node.
    Fwd,
}

/// `action` / `flow_action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// `observed`: what the packets showed, independent of policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    /// TCP handshake completed, or replies seen.
    Established,
    /// TCP SYN or ICMP echo without a reply.
    Attempted,
    /// RST or ICMP unreachable in reply.
    Rejected,
    /// UDP and others without replies (not a failure).
    OneWay,
    /// An aggregated record whose flows differ.
    Mixed,
}

/// `enforcement`: what happened against what the policy says. Ordered from best to worst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// The packets did what the policy says.
    #[default]
    Consistent,
    /// The policy allows the flow but it only ever attempted: dropped by something else.
    UnexplainedDrop,
    /// Denied now, but established before the policy change that denies it.
    StaleConnection,
    /// Denied, yet established.
    Violation,
}

/// A policy trace, shared between the records (and cached verdicts) that have it.
pub type Trace = Arc<[String]>;

/// `policies` of a record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Policies {
    /// Trace of the enforced policies.
    pub enforced_policies: Trace,
    /// Trace with staged policies applied.
    pub pending_policies: Trace,
}

/// One flow-log line (DESIGN.md §2.2). Field order is the order written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    /// Stable id: node, flow key, interval, reporter.
    pub id: String,
    /// Interval start, Unix seconds.
    pub start_time: u64,
    /// Interval end, Unix seconds.
    pub end_time: u64,
    /// Node.
    pub host: Text,
    /// Reporter's verdict.
    pub action: Action,
    /// Whose side this record is.
    pub reporter: Reporter,
    /// `tcp`, `udp`, `icmp`, `icmp6`, `sctp` or the number.
    pub proto: Text,
    /// Source (initiator) address.
    pub source_ip: Option<IpAddr>,
    /// Source port; `null` for ICMP and when aggregated.
    pub source_port: Option<u16>,
    /// Pod name or `-`.
    pub source_name: Text,
    /// Aggregated name: generateName + `*`, or `pvt`/`pub`.
    pub source_name_aggr: Text,
    /// Namespace or `-`.
    pub source_namespace: Text,
    /// `wep`, `hep`, `ns` or `net`.
    pub source_type: Text,
    /// Labels, or `-`.
    pub source_labels: RecordLabels,
    /// Destination address.
    pub dest_ip: Option<IpAddr>,
    /// Destination port; `null` for ICMP.
    pub dest_port: Option<u16>,
    /// Pod name or `-`.
    pub dest_name: Text,
    /// Aggregated name.
    pub dest_name_aggr: Text,
    /// Namespace or `-`.
    pub dest_namespace: Text,
    /// Endpoint type.
    pub dest_type: Text,
    /// Labels, or `-`.
    pub dest_labels: RecordLabels,
    /// Service name or `-`.
    pub dest_service_name: Text,
    /// Service namespace or `-`.
    pub dest_service_namespace: Text,
    /// Service port name or `-`.
    pub dest_service_port: Text,
    /// ICMP type (ICMP flows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP code (ICMP flows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// Bytes the reporting endpoint received.
    pub bytes_in: u64,
    /// Bytes the reporting endpoint sent.
    pub bytes_out: u64,
    /// Packets received.
    pub packets_in: u64,
    /// Packets sent.
    pub packets_out: u64,
    /// Connections in this record.
    pub num_flows: u64,
    /// Connections that started in the interval.
    pub num_flows_started: u64,
    /// Connections that completed in the interval.
    pub num_flows_completed: u64,
    /// Policy traces.
    pub policies: Policies,
    /// The reporter's side verdict with staged policies applied.
    pub pending_action: Action,
    /// Verdict of the whole flow (source egress AND destination ingress).
    pub flow_action: Action,
    /// Whether what happened matches what the policy says.
    pub enforcement: Enforcement,
    /// Member connections whose enforcement is `violation`.
    pub num_violations: u64,
    /// What the packets showed.
    pub observed: Observed,
    /// Connections that completed a handshake or saw replies.
    pub num_established: u64,
    /// Connections that only attempted.
    pub num_attempted: u64,
    /// Connections refused by RST or ICMP unreachable.
    pub num_rejected: u64,
    /// cgroup v2 id of the source's socket, when the cgroup hook saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_cgroup_id: Option<u64>,
    /// A host-network pod named through its cgroup is an end of this flow.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Pipeline-internal context, never written.
    #[serde(skip)]
    pub context: RecordContext,
}

/// What later stages need about a record beyond its fields. Not part of the flow log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordContext {
    /// IP protocol number.
    pub proto: u8,
    /// cgroup v2 id of the destination's socket, when the cgroup hook saw it.
    pub dest_cgroup_id: Option<u64>,
    /// When the connection was first seen (Unix ns).
    pub first_seen_ns: u64,
    /// The source, as enrich found it.
    pub source: Option<Arc<Endpoint>>,
    /// The destination.
    pub dest: Option<Arc<Endpoint>>,
    /// The connection and interval this record belongs to (the record id's input, reporter
    /// left as `{R}`): records of one connection share it (one string).
    pub conn: Text,
    /// The connection's packets and bytes forward, then reverse, at the point that saw most.
    pub alt: [u64; 4],
}

/// Whether an address is private: RFC 1918, fc00::/7 and fe80::/10 (`pvt` in records; the
/// network-access report's "internet" is everything else).
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

/// A record id: FNV-1a (64-bit) of `input`, as 16 hex digits. Stable across builds and
/// platforms, so the same flow, interval and reporter always get the same id.
pub fn record_id(input: &str) -> String {
    hex_id(fnv1a(FNV_OFFSET, input))
}

/// `record_id(&conn.replace("{R}", reporter))`, without building that string.
pub fn record_id_of(conn: &str, reporter: &str) -> String {
    let mut h = FNV_OFFSET;
    for (i, piece) in conn.split("{R}").enumerate() {
        if i > 0 {
            h = fnv1a(h, reporter);
        }
        h = fnv1a(h, piece);
    }
    hex_id(h)
}

/// `format!("{h:016x}")`, without the formatting machinery.
fn hex_id(h: u64) -> String {
    (0..16).rev().map(|i| char::from(b"0123456789abcdef"[(h >> (i * 4)) as usize & 0xf])).collect()
}

/// Appends `n` as `Display` writes it.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `ip` as `Display` writes it (an IPv4 address without the formatting machinery:
/// every record and connection string has two).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, octet.into());
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// FNV-1a's offset basis (64 bits).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64 bits) of `bytes`, continuing from `h`.
fn fnv1a(h: u64, bytes: &str) -> u64 {
    bytes.bytes().fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl FlowRecord {
    /// A level-0 TCP record from `src:sport` to `dst:dport`, reporter `src`, for tests and
    /// benchmarks.
    #[doc(hidden)]
    pub fn sample(src: &str, sport: u16, dst: &str, dport: u16) -> FlowRecord {
        let src: IpAddr = src.parse().expect("test address");
        let dst: IpAddr = dst.parse().expect("test address");
        FlowRecord {
            id: record_id(&format!("{src}:{sport}>{dst}:{dport}")),
            start_time: 100,
            end_time: 115,
            host: "node-a".into(),
            action: Action::Allow,
            reporter: Reporter::Src,
            proto: "tcp".into(),
            source_ip: Some(src),
            source_port: Some(sport),
            source_name: "-".into(),
            source_name_aggr: "pvt".into(),
            source_namespace: "-".into(),
            source_type: "net".into(),
            source_labels: "-".into(),
            dest_ip: Some(dst),
            dest_port: Some(dport),
            dest_name: "-".into(),
            dest_name_aggr: "pvt".into(),
            dest_namespace: "-".into(),
            dest_type: "net".into(),
            dest_labels: "-".into(),
            dest_service_name: "-".into(),
            dest_service_namespace: "-".into(),
            dest_service_port: "-".into(),
            icmp_type: None,
            icmp_code: None,
            bytes_in: 100,
            bytes_out: 200,
            packets_in: 1,
            packets_out: 2,
            num_flows: 1,
            num_flows_started: 1,
            num_flows_completed: 0,
            policies: Policies::default(),
            pending_action: Action::Allow,
            flow_action: Action::Allow,
            enforcement: Enforcement::Consistent,
            num_violations: 0,
            observed: Observed::Established,
            num_established: 1,
            num_attempted: 0,
            num_rejected: 0,
            source_cgroup_id: None,
            host_network: false,
            context: RecordContext { proto: 6, ..Default::default() },
        }
    }
}

/// One row of a compliance report's table, as the exporters get it (the `reports` log type):
/// the reporter makes them from a finished report, output encodes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    /// The GlobalReport's name.
    pub report: String,
    /// `network-access`, `inventory`, `policy-audit` or `cis-benchmark`.
    pub report_type: &'static str,
    /// The interval's start, Unix milliseconds.
    pub start_ms: u64,
    /// The interval's end, Unix milliseconds.
    pub end_ms: u64,
    /// When the report was made, Unix milliseconds.
    pub generated_ms: u64,
    /// The report file the row is in: `endpoints.csv`.
    pub file: &'static str,
    /// The row's number in that file, from 1 (the header is not counted).
    pub row: u64,
    /// How many rows the file has.
    pub rows: u64,
    /// The file's column names, in order.
    pub columns: &'static [&'static str],
    /// The row's values, one per column.
    pub values: Vec<String>,
}

impl ReportRow {
    /// The row's identity, the same each time the report of this interval is made:
    /// `<report>/<start ms>-<end ms>/<file>/<row>`. A row delivered twice keeps it.
    pub fn id(&self) -> String {
        format!("{}/{}-{}/{}/{}", self.report, self.start_ms, self.end_ms, self.file, self.row)
    }

    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.columns.iter().position(|c| *c == name).and_then(|i| self.values.get(i)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_helpers_write_what_display_and_format_write() {
        let ips = ["0.0.0.0", "10.231.1.2", "255.255.255.255", "::", "::1", "fe80::1:2", "2001:db8::ffff:1.2.3.4"];
        for ip in ips.map(|s| s.parse::<IpAddr>().unwrap()) {
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
        for n in [0, 7, 10, 99, 255, 65535, 1_795_760_156_000_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
        for h in [0, 0xa, 0x894c_e16f_9fed_652b, u64::MAX] {
            assert_eq!(hex_id(h), format!("{h:016x}"));
        }
        assert_eq!(record_id_of("n{R}|{R}|x", "Src"), record_id("nSrc|Src|x"));
        assert_eq!(record_id_of("no marker", "Src"), record_id("no marker"));
    }
}
