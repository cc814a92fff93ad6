//! The `calico` encoding of a flow record: the flow-log JSON line, written field by field.
//!
//! Takes: a [`FlowRecord`]. Gives: exactly the bytes `serde_json::to_writer(out, record)` gives
//! (the `Serialize` derive of `FlowRecord`: its fields in declaration order, the same names, the
//! same skipped fields), faster: the field names are written as they are, not escaped one by
//! one, and strings that need escaping go through serde_json itself. Must never: differ from
//! the derive by one byte (a unit test compares them on every fixture and odd record); panic.

use std::net::IpAddr;

use crate::model::{FlowRecord, RecordLabels, push_decimal, push_ip};

/// Appends `rec` as the flow-log JSON line (no newline).
pub(super) fn flow(rec: &FlowRecord, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let mut w = Line(out);
    w.raw(b"{");
    w.texts(&[(b"\"id\":", &rec.id)]);
    w.numbers(&[(b",\"start_time\":", rec.start_time), (b",\"end_time\":", rec.end_time)]);
    w.texts(&[(b",\"host\":", &rec.host)]);
    w.serde(b",\"action\":", &rec.action)?;
    w.serde(b",\"reporter\":", &rec.reporter)?;
    w.texts(&[(b",\"proto\":", &rec.proto)]);
    w.end(
        &SOURCE,
        (rec.source_ip, rec.source_port),
        [&rec.source_name, &rec.source_name_aggr, &rec.source_namespace, &rec.source_type],
        &rec.source_labels,
    )?;
    w.end(
        &DEST,
        (rec.dest_ip, rec.dest_port),
        [&rec.dest_name, &rec.dest_name_aggr, &rec.dest_namespace, &rec.dest_type],
        &rec.dest_labels,
    )?;
    w.texts(&[
        (b",\"dest_service_name\":", &rec.dest_service_name),
        (b",\"dest_service_namespace\":", &rec.dest_service_namespace),
        (b",\"dest_service_port\":", &rec.dest_service_port),
    ]);
    // Skipped when `None`.
    for (name, value) in [(&b",\"icmp_type\":"[..], rec.icmp_type), (b",\"icmp_code\":", rec.icmp_code)] {
        if let Some(v) = value {
            w.numbers(&[(name, v.into())]);
        }
    }
    w.numbers(&[
        (b",\"bytes_in\":", rec.bytes_in),
        (b",\"bytes_out\":", rec.bytes_out),
        (b",\"packets_in\":", rec.packets_in),
        (b",\"packets_out\":", rec.packets_out),
        (b",\"num_flows\":", rec.num_flows),
        (b",\"num_flows_started\":", rec.num_flows_started),
        (b",\"num_flows_completed\":", rec.num_flows_completed),
    ]);
    w.serde(b",\"policies\":", &rec.policies)?;
    w.serde(b",\"pending_action\":", &rec.pending_action)?;
    w.serde(b",\"flow_action\":", &rec.flow_action)?;
    w.serde(b",\"enforcement\":", &rec.enforcement)?;
    w.numbers(&[(b",\"num_violations\":", rec.num_violations)]);
    w.serde(b",\"observed\":", &rec.observed)?;
    w.numbers(&[
        (b",\"num_established\":", rec.num_established),
        (b",\"num_attempted\":", rec.num_attempted),
        (b",\"num_rejected\":", rec.num_rejected),
    ]);
    if let Some(id) = rec.source_cgroup_id {
        w.numbers(&[(b",\"source_cgroup_id\":", id)]);
    }
    if rec.host_network {
        w.raw(b",\"host_network\":true");
    }
    w.raw(b"}");
    Ok(())
}

/// The keys of one end's fields, in the order written: address, port, name, aggregated name,
/// namespace, type, labels.
type EndKeys = [&'static [u8]; 7];
const SOURCE: EndKeys = [
    b",\"source_ip\":",
    b",\"source_port\":",
    b",\"source_name\":",
    b",\"source_name_aggr\":",
    b",\"source_namespace\":",
    b",\"source_type\":",
    b",\"source_labels\":",
];
const DEST: EndKeys = [
    b",\"dest_ip\":",
    b",\"dest_port\":",
    b",\"dest_name\":",
    b",\"dest_name_aggr\":",
    b",\"dest_namespace\":",
    b",\"dest_type\":",
    b",\"dest_labels\":",
];

/// A line being written. Writes into a `Vec` cannot fail, so only serde's errors are returned.
struct Line<'a>(&'a mut Vec<u8>);

impl Line<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// Each `name` (the field's `,"key":`, written as it is) and its string value.
    fn texts(&mut self, fields: &[(&[u8], &str)]) {
        for (name, value) in fields {
            self.raw(name);
            self.str(value);
        }
    }

    /// Each `name` and its number.
    fn numbers(&mut self, fields: &[(&[u8], u64)]) {
        for (name, value) in fields {
            self.raw(name);
            push_decimal(self.0, *value);
        }
    }

    /// A JSON string: quoted as it is when no character needs escaping (the common case), else
    /// escaped by serde_json itself.
    fn str(&mut self, s: &str) {
        if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.0.push(b'"');
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(b'"');
        } else {
            let _ = serde_json::to_writer(&mut *self.0, s);
        }
    }

    fn port(&mut self, name: &[u8], port: Option<u16>) {
        self.raw(name);
        match port {
            Some(p) => push_decimal(self.0, p.into()),
            None => self.raw(b"null"),
        }
    }

    /// An address as serde writes it in a human-readable format: its `Display` form, quoted (no
    /// character of it needs escaping).
    fn ip(&mut self, name: &[u8], ip: Option<IpAddr>) {
        self.raw(name);
        match ip {
            Some(ip) => {
                self.0.push(b'"');
                push_ip(self.0, ip);
                self.0.push(b'"');
            }
            None => self.raw(b"null"),
        }
    }

    /// One end's fields (`keys`).
    fn end(
        &mut self,
        keys: &EndKeys,
        (ip, port): (Option<IpAddr>, Option<u16>),
        texts: [&str; 4],
        labels: &RecordLabels,
    ) -> Result<(), serde_json::Error> {
        self.ip(keys[0], ip);
        self.port(keys[1], port);
        for (name, value) in keys[2..6].iter().zip(texts) {
            self.texts(&[(name, value)]);
        }
        self.serde(keys[6], labels)
    }

    /// Any other field, through its `Serialize` impl (enums, labels, policy traces).
    fn serde(&mut self, name: &[u8], value: &impl serde::Serialize) -> Result<(), serde_json::Error> {
        self.raw(name);
        serde_json::to_writer(&mut *self.0, value)
    }
}
