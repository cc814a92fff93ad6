//! Kubernetes `networking.k8s.io/v1` NetworkPolicy semantics, compiled for the tier walk.
//!
//! Takes: a [`NetworkPolicySpec`]. Gives: selection of the policy's subject pods per direction
//! and the index of the first rule that admits a flow. Must never: match host-network pods as
//! subjects or as pod peers (Kubernetes policies do not apply to them), or treat a rule as
//! anything but Allow (Kubernetes rules only allow; the tier's default denies the rest).
//!
//! Rules: isolation per direction (`policyTypes`, or Ingress plus Egress when egress rules
//! exist); a rule admits when one of its peers and one of its ports match; no `from`/`to` = every
//! peer; a peer's `namespaceSelector` AND `podSelector`; a `podSelector` alone = the policy's
//! namespace; `ipBlock` with `except` (host bits accepted); ports with protocol (default TCP),
//! number or name (resolved on the destination pod's container ports) and `endPort`.

use std::net::IpAddr;

use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use flowaudit_common::proto;

use super::engine::{Dir, FlowView, RuleAction};
use crate::{
    cluster::selector::label_selector_matches,
    model::{Endpoint, EndpointKind},
};

/// A compiled Kubernetes NetworkPolicy.
#[derive(Clone, Debug)]
pub struct KubePolicy {
    pod_selector: LabelSelector,
    /// `None`: the policy does not isolate in this direction.
    ingress: Option<Vec<KubeRule>>,
    egress: Option<Vec<KubeRule>>,
}

#[derive(Clone, Debug)]
struct KubeRule {
    /// `None`: every peer.
    peers: Option<Vec<KubePeer>>,
    /// `None`: every port.
    ports: Option<Vec<NetworkPolicyPort>>,
}

/// A rule peer, its `ipBlock` parsed once.
#[derive(Clone, Debug)]
struct KubePeer {
    /// `cidr` and `except`.
    ip_block: Option<(Cidr, Vec<Cidr>)>,
    pod_selector: Option<LabelSelector>,
    namespace_selector: Option<LabelSelector>,
}

impl KubePeer {
    fn new(peer: &NetworkPolicyPeer) -> KubePeer {
        KubePeer {
            ip_block: peer
                .ip_block
                .as_ref()
                .map(|b| (Cidr::parse(&b.cidr), b.except.iter().flatten().map(|e| Cidr::parse(e)).collect())),
            pod_selector: peer.pod_selector.clone(),
            namespace_selector: peer.namespace_selector.clone(),
        }
    }
}

/// A CIDR of an `ipBlock`, parsed: `a.b.c.d/n` (host bits allowed; a bare address is one host;
/// a prefix length that does not parse is the full length, one above it is clamped to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    /// An IPv4 network: (address bits, mask).
    V4(u32, u32),
    /// An IPv6 network: (address bits, mask).
    V6(u128, u128),
    /// The address does not parse: holds nothing.
    Invalid,
}

impl Cidr {
    /// Parses `cidr`.
    pub fn parse(cidr: &str) -> Cidr {
        let (addr, len) = match cidr.split_once('/') {
            Some((a, l)) => (a, l.parse::<u32>().ok()),
            None => (cidr, None),
        };
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(net)) => {
                let len = len.unwrap_or(32).min(32);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Cidr::V4(u32::from(net) & mask, mask)
            }
            Ok(IpAddr::V6(net)) => {
                let len = len.unwrap_or(128).min(128);
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                Cidr::V6(u128::from(net) & mask, mask)
            }
            Err(_) => Cidr::Invalid,
        }
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Cidr::V4(net, mask), IpAddr::V4(ip)) => u32::from(ip) & mask == net,
            (Cidr::V6(net, mask), IpAddr::V6(ip)) => u128::from(ip) & mask == net,
            _ => false,
        }
    }
}

/// Whether `ip` is in `cidr` (see [`Cidr`]).
pub fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    Cidr::parse(cidr).contains(ip)
}

fn proto_matches(protocol: Option<&str>, p: u8) -> bool {
    match protocol.unwrap_or("TCP") {
        "TCP" => p == proto::TCP,
        "UDP" => p == proto::UDP,
        "SCTP" => p == proto::SCTP,
        _ => false,
    }
}

fn is_pod(ep: Option<&Endpoint>) -> Option<&Endpoint> {
    ep.filter(|e| e.kind == EndpointKind::Wep && !e.host_network)
}

impl KubePolicy {
    /// Compiles a spec.
    pub fn new(spec: &NetworkPolicySpec) -> KubePolicy {
        let peers = |peers: Option<&[NetworkPolicyPeer]>| {
            peers.filter(|v| !v.is_empty()).map(|v| v.iter().map(KubePeer::new).collect())
        };
        let rules_in = |rules: &[k8s_openapi::api::networking::v1::NetworkPolicyIngressRule]| {
            rules
                .iter()
                .map(|r| KubeRule { peers: peers(r.from.as_deref()), ports: r.ports.clone().filter(|v| !v.is_empty()) })
                .collect()
        };
        let rules_out = |rules: &[k8s_openapi::api::networking::v1::NetworkPolicyEgressRule]| {
            rules
                .iter()
                .map(|r| KubeRule { peers: peers(r.to.as_deref()), ports: r.ports.clone().filter(|v| !v.is_empty()) })
                .collect()
        };
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let types: Vec<String> = match &spec.policy_types {
            Some(t) if !t.is_empty() => t.clone(),
            _ if has_egress => vec!["Ingress".into(), "Egress".into()],
            _ => vec!["Ingress".into()],
        };
        KubePolicy {
            pod_selector: spec.pod_selector.clone().unwrap_or_default(),
            ingress: types
                .iter()
                .any(|t| t == "Ingress")
                .then(|| rules_in(spec.ingress.as_deref().unwrap_or_default())),
            egress: types.iter().any(|t| t == "Egress").then(|| rules_out(spec.egress.as_deref().unwrap_or_default())),
        }
    }

    /// Whether the policy isolates `subject` in `dir`.
    pub fn selects(&self, namespace: &str, subject: &Endpoint, dir: Dir) -> bool {
        let isolates = match dir {
            Dir::Ingress => self.ingress.is_some(),
            Dir::Egress => self.egress.is_some(),
        };
        isolates
            && is_pod(Some(subject)).is_some()
            && subject.namespace.as_deref() == Some(namespace)
            && label_selector_matches(&self.pod_selector, &subject.labels)
    }

    /// The first rule admitting `flow` in `dir`.
    pub fn first_match(&self, namespace: &str, dir: Dir, flow: &FlowView<'_>) -> Option<(usize, RuleAction)> {
        let (rules, peer, peer_ip) = match dir {
            Dir::Ingress => (self.ingress.as_ref()?, flow.src, flow.src_ip),
            Dir::Egress => (self.egress.as_ref()?, flow.dst, flow.dst_ip),
        };
        rules
            .iter()
            .position(|rule| {
                let peer_ok = rule
                    .peers
                    .as_ref()
                    .is_none_or(|peers| peers.iter().any(|p| peer_matches(namespace, p, peer, peer_ip)));
                peer_ok && rule.ports.as_ref().is_none_or(|ports| ports.iter().any(|p| port_matches(p, flow)))
            })
            .map(|i| (i, RuleAction::Allow))
    }
}

fn peer_matches(namespace: &str, peer: &KubePeer, ep: Option<&Endpoint>, ip: IpAddr) -> bool {
    if let Some((cidr, except)) = &peer.ip_block {
        return cidr.contains(ip) && !except.iter().any(|e| e.contains(ip));
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return false;
    }
    let Some(pod) = is_pod(ep) else { return false };
    let ns_ok = match &peer.namespace_selector {
        Some(sel) => label_selector_matches(sel, &pod.namespace_labels),
        None => pod.namespace.as_deref() == Some(namespace),
    };
    ns_ok && peer.pod_selector.as_ref().is_none_or(|sel| label_selector_matches(sel, &pod.labels))
}

fn port_matches(port: &NetworkPolicyPort, flow: &FlowView<'_>) -> bool {
    if !proto_matches(port.protocol.as_deref(), flow.proto) {
        return false;
    }
    let Some(dst_port) = flow.dst_port else { return port.port.is_none() };
    match &port.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let start = *n as i64;
            let end = port.end_port.map(i64::from).unwrap_or(start);
            (start..=end).contains(&i64::from(dst_port))
        }
        Some(IntOrString::String(name)) => {
            // A named port is the destination pod's container port of that name and protocol.
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            is_pod(flow.dst).is_some_and(|pod| {
                pod.named_ports.iter().any(|np| &np.name == name && np.protocol == protocol && np.port == dst_port)
            })
        }
    }
}
