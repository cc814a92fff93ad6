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

use super::engine::{Dir, End, Ends, FlowView, LabelsOf, RuleAction};
use crate::model::{Endpoint, EndpointKind};

/// A label selector of a compiled policy, with its id: equal selectors of one policy set share
/// one, so what a selector says about a label set can be kept once per (id, label set).
#[derive(Clone, Debug)]
pub struct Sel {
    /// Id in the policy set.
    pub id: u32,
    /// The selector.
    pub selector: LabelSelector,
}

/// Ids of the selectors and namespaces of one policy set's Kubernetes policies.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    /// By the selector's JSON form.
    selectors: hashbrown::HashMap<String, u32>,
    /// By name.
    namespaces: hashbrown::HashMap<String, u32>,
}

/// The id no namespace of a policy has.
pub const NO_NAMESPACE: u32 = u32::MAX;

impl Ids {
    fn selector(&mut self, selector: LabelSelector) -> Sel {
        let key = serde_json::to_string(&selector).unwrap_or_else(|_| format!("{selector:?}"));
        let next = self.selectors.len() as u32;
        Sel { id: *self.selectors.entry(key).or_insert(next), selector }
    }

    fn namespace_id(&mut self, name: &str) -> u32 {
        let next = self.namespaces.len() as u32;
        *self.namespaces.entry_ref(name).or_insert(next)
    }

    /// The id of namespace `name`, [`NO_NAMESPACE`] when no policy is in it.
    pub fn namespace(&self, name: Option<&str>) -> u32 {
        name.and_then(|n| self.namespaces.get(n)).copied().unwrap_or(NO_NAMESPACE)
    }
}

/// A compiled Kubernetes NetworkPolicy.
#[derive(Clone, Debug)]
pub struct KubePolicy {
    /// Id of the policy's namespace in [`Ids`].
    namespace: u32,
    pod_selector: Sel,
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
    pod_selector: Option<Sel>,
    namespace_selector: Option<Sel>,
}

impl KubePeer {
    fn new(peer: &NetworkPolicyPeer, ids: &mut Ids) -> KubePeer {
        KubePeer {
            ip_block: peer
                .ip_block
                .as_ref()
                .map(|b| (Cidr::parse(&b.cidr), b.except.iter().flatten().map(|e| Cidr::parse(e)).collect())),
            pod_selector: peer.pod_selector.clone().map(|s| ids.selector(s)),
            namespace_selector: peer.namespace_selector.clone().map(|s| ids.selector(s)),
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

/// Whether an endpoint is a pod as Kubernetes policies see them (not host-network).
pub fn is_pod(ep: &Endpoint) -> bool {
    ep.kind == EndpointKind::Wep && !ep.host_network
}

impl KubePolicy {
    /// Compiles the spec of a policy in `namespace`, its selectors and namespace named in `ids`.
    pub fn new(namespace: &str, spec: &NetworkPolicySpec, ids: &mut Ids) -> KubePolicy {
        let mut rule = |peers: Option<&[NetworkPolicyPeer]>, ports: &Option<Vec<NetworkPolicyPort>>| KubeRule {
            peers: peers.filter(|v| !v.is_empty()).map(|v| v.iter().map(|p| KubePeer::new(p, ids)).collect()),
            ports: ports.clone().filter(|v| !v.is_empty()),
        };
        let rules_in: Vec<KubeRule> =
            spec.ingress.iter().flatten().map(|r| rule(r.from.as_deref(), &r.ports)).collect();
        let rules_out: Vec<KubeRule> = spec.egress.iter().flatten().map(|r| rule(r.to.as_deref(), &r.ports)).collect();
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let types: Vec<String> = match &spec.policy_types {
            Some(t) if !t.is_empty() => t.clone(),
            _ if has_egress => vec!["Ingress".into(), "Egress".into()],
            _ => vec!["Ingress".into()],
        };
        let isolates = |t: &str| types.iter().any(|x| x == t);
        KubePolicy {
            namespace: ids.namespace_id(namespace),
            pod_selector: ids.selector(spec.pod_selector.clone().unwrap_or_default()),
            ingress: isolates("Ingress").then_some(rules_in),
            egress: isolates("Egress").then_some(rules_out),
        }
    }

    /// Whether the policy (in `namespace`) isolates `subject`, the flow's end `end`, in `dir`.
    pub fn selects(&self, namespace: &str, end: End, dir: Dir, ends: &mut impl Ends) -> bool {
        let isolates = match dir {
            Dir::Ingress => self.ingress.is_some(),
            Dir::Egress => self.egress.is_some(),
        };
        isolates
            && ends.pod(end)
            && ends.in_namespace(end, self.namespace, namespace)
            && ends.selects(end, LabelsOf::Pod, &self.pod_selector)
    }

    /// The first rule admitting `flow` in `dir`.
    pub fn first_match(
        &self,
        namespace: &str,
        dir: Dir,
        flow: &FlowView<'_>,
        ends: &mut impl Ends,
    ) -> Option<(usize, RuleAction)> {
        let (rules, peer, peer_ip) = match dir {
            Dir::Ingress => (self.ingress.as_ref()?, End::Src, flow.src_ip),
            Dir::Egress => (self.egress.as_ref()?, End::Dst, flow.dst_ip),
        };
        rules
            .iter()
            .position(|rule| {
                let peer_ok = rule
                    .peers
                    .as_ref()
                    .is_none_or(|peers| peers.iter().any(|p| self.peer_matches(namespace, p, peer, peer_ip, ends)));
                peer_ok && rule.ports.as_ref().is_none_or(|ports| ports.iter().any(|p| port_matches(p, flow, ends)))
            })
            .map(|i| (i, RuleAction::Allow))
    }

    fn peer_matches(&self, namespace: &str, peer: &KubePeer, end: End, ip: IpAddr, ends: &mut impl Ends) -> bool {
        if let Some((cidr, except)) = &peer.ip_block {
            return cidr.contains(ip) && !except.iter().any(|e| e.contains(ip));
        }
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            return false;
        }
        if !ends.pod(end) {
            return false;
        }
        let ns_ok = match &peer.namespace_selector {
            Some(sel) => ends.selects(end, LabelsOf::Namespace, sel),
            None => ends.in_namespace(end, self.namespace, namespace),
        };
        ns_ok && peer.pod_selector.as_ref().is_none_or(|sel| ends.selects(end, LabelsOf::Pod, sel))
    }
}

fn port_matches(port: &NetworkPolicyPort, flow: &FlowView<'_>, ends: &impl Ends) -> bool {
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
            ends.pod(End::Dst) && ends.named_port(End::Dst, name, protocol, dst_port)
        }
    }
}
