//! `flowaudit explain`: the verdict and policy trace of one hypothetical flow.
//!
//! Takes: a cluster state, two ends (`namespace/pod` or an address), a protocol and a port.
//! Gives: the same verdict the attribute stage gives a captured flow, as text or JSON. Must never:
//! differ from what the pipeline would write (it uses the same index and policy set).

use std::{net::IpAddr, sync::Arc};

use serde_json::json;

use crate::{
    attribute::{FlowVerdict, FlowView, PolicySet, SideVerdict},
    cluster::ClusterState,
    enrich::{IdentityLookup, Index},
    model::{Action, Endpoint},
};

/// A problem with the question (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// `--src`/`--dst` names no pod and is no address.
    #[error("{flag}: {value:?} is neither an address nor namespace/pod")]
    BadEnd {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// The pod does not exist.
    #[error("{flag}: no pod {value} in the cluster state")]
    NoPod {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// The pod has no address.
    #[error("{flag}: pod {value} has no address")]
    NoAddress {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// Unknown protocol.
    #[error("--proto: {0:?} is not tcp, udp, sctp, icmp, icmp6 or a number")]
    BadProto(String),
}

/// One end of the question, resolved.
pub struct End {
    label: String,
    ip: IpAddr,
    endpoint: Option<Arc<Endpoint>>,
}

/// Resolves `value` (`namespace/pod` or an address).
pub fn resolve(index: &Index, flag: &'static str, value: &str) -> Result<End, ExplainError> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        let endpoint = index.by_ip(ip);
        let label = match &endpoint {
            Some(ep) => {
                format!("{}/{} ({ip})", ep.namespace.as_deref().unwrap_or("-"), ep.name.as_deref().unwrap_or("-"))
            }
            None => ip.to_string(),
        };
        return Ok(End { label, ip, endpoint });
    }
    let (ns, name) = value.split_once('/').ok_or_else(|| ExplainError::BadEnd { flag, value: value.into() })?;
    let (endpoint, ips) = index.pod(ns, name).ok_or_else(|| ExplainError::NoPod { flag, value: value.into() })?;
    let ip = *ips.first().ok_or_else(|| ExplainError::NoAddress { flag, value: value.into() })?;
    Ok(End { label: format!("{value} ({ip})"), ip, endpoint: Some(endpoint) })
}

/// Parses `tcp`, `udp`, `sctp`, `icmp`, `icmp6` or a number.
pub fn protocol(value: &str) -> Result<u8, ExplainError> {
    use flowaudit_common::proto;
    match value.to_ascii_lowercase().as_str() {
        "tcp" => Ok(proto::TCP),
        "udp" => Ok(proto::UDP),
        "sctp" => Ok(proto::SCTP),
        "icmp" => Ok(proto::ICMP),
        "icmp6" | "icmpv6" => Ok(proto::ICMPV6),
        n => n.parse().map_err(|_| ExplainError::BadProto(value.into())),
    }
}

/// The verdict of `src → dst` over `proto`/`port`.
pub fn explain(state: &ClusterState, src: &End, dst: &End, proto: u8, port: Option<u16>) -> FlowVerdict {
    PolicySet::compile(state).evaluate(&FlowView {
        src: src.endpoint.as_deref(),
        src_ip: src.ip,
        dst: dst.endpoint.as_deref(),
        dst_ip: dst.ip,
        proto,
        src_port: None,
        dst_port: port,
        // An echo request: what a hypothetical ICMP flow would be.
        icmp: match proto {
            flowaudit_common::proto::ICMP => Some((8, 0)),
            flowaudit_common::proto::ICMPV6 => Some((128, 0)),
            _ => None,
        },
    })
}

fn word(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

fn side_json(side: &Option<SideVerdict>) -> serde_json::Value {
    match side {
        None => serde_json::Value::Null,
        Some(s) => json!({
            "action": word(s.enforced.action),
            "enforced_policies": s.enforced.trace,
            "pending_action": word(s.pending.action),
            "pending_policies": s.pending.trace,
        }),
    }
}

/// `{action, pending_action, egress, ingress}`.
pub fn to_json(v: &FlowVerdict) -> serde_json::Value {
    json!({
        "action": word(v.action()),
        "pending_action": word(v.pending_action()),
        "egress": side_json(&v.egress),
        "ingress": side_json(&v.ingress),
    })
}

/// A readable account of the verdict.
pub fn to_text(v: &FlowVerdict, src: &End, dst: &End, proto: &str, port: Option<u16>) -> String {
    let mut out = format!(
        "{} → {} {proto}{}: {} (with staged policies: {})\n",
        src.label,
        dst.label,
        port.map(|p| format!("/{p}")).unwrap_or_default(),
        word(v.action()),
        word(v.pending_action())
    );
    for (title, end, side) in [("egress of", src, &v.egress), ("ingress of", dst, &v.ingress)] {
        match side {
            None => out.push_str(&format!("{title} {}: no side (not a workload or host endpoint)\n", end.label)),
            Some(s) => {
                out.push_str(&format!("{title} {}: {}\n", end.label, word(s.enforced.action)));
                if s.enforced.trace.is_empty() {
                    out.push_str("  no policy selects it: allowed\n");
                }
                for entry in s.enforced.trace.iter() {
                    let note =
                        if entry.ends_with("|-1") { "   (no rule matched: the tier's default action)" } else { "" };
                    out.push_str(&format!("  {entry}{note}\n"));
                }
                if s.pending.trace != s.enforced.trace {
                    out.push_str(&format!("  with staged policies: {}\n", word(s.pending.action)));
                    for entry in s.pending.trace.iter() {
                        out.push_str(&format!("    {entry}\n"));
                    }
                }
            }
        }
    }
    out
}
