//! AdminNetworkPolicy and BaselineAdminNetworkPolicy (`policy.networking.k8s.io/v1alpha1`),
//! compiled for the tier walk (tiers `kube-admin` and `kube-baseline`).
//!
//! Takes: a spec and the nodes of the state. Gives: subject selection per direction (an admin
//! policy selects its subject only in the directions it has rules for) and the first matching
//! rule with its action (Allow, Deny, Pass). Must never: match host-network pods as pods, or
//! match `domainNames` peers (flowaudit has no DNS view: they never match).

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use flowaudit_common::proto;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::engine::{Dir, FlowView, RuleAction};
use crate::{
    cluster::{
        IpNet, Node,
        admin::{
            AdminAction, AdminPort, BaselineAction, EgressPeer, IngressPeer, NamespacedPods, PortProtocol, Subject,
        },
        selector::label_selector_matches,
    },
    model::{Endpoint, EndpointKind},
};

#[derive(Clone, Debug)]
enum Peer {
    Namespaces(LabelSelector),
    Pods(NamespacedPods),
    Nodes(LabelSelector),
    Networks(Vec<IpNet>),
    Never,
}

#[derive(Clone, Debug)]
struct ARule {
    action: RuleAction,
    peers: Vec<Peer>,
    ports: Option<Vec<AdminPort>>,
}

/// A compiled admin or baseline admin policy.
#[derive(Clone, Debug)]
pub struct AdminPolicy {
    subject: Subject,
    ingress: Vec<ARule>,
    egress: Vec<ARule>,
    nodes: Arc<Vec<Node>>,
}

fn admin_action(a: AdminAction) -> RuleAction {
    match a {
        AdminAction::Allow => RuleAction::Allow,
        AdminAction::Deny => RuleAction::Deny,
        AdminAction::Pass => RuleAction::Pass,
    }
}

fn baseline_action(a: BaselineAction) -> RuleAction {
    match a {
        BaselineAction::Allow => RuleAction::Allow,
        BaselineAction::Deny => RuleAction::Deny,
    }
}

fn ingress_peer(p: &IngressPeer) -> Peer {
    match p {
        IngressPeer::Namespaces(s) => Peer::Namespaces(s.clone()),
        IngressPeer::Pods(p) => Peer::Pods(p.clone()),
    }
}

fn egress_peer(p: &EgressPeer) -> Peer {
    match p {
        EgressPeer::Namespaces(s) => Peer::Namespaces(s.clone()),
        EgressPeer::Pods(p) => Peer::Pods(p.clone()),
        EgressPeer::Nodes(s) => Peer::Nodes(s.clone()),
        EgressPeer::Networks(n) => Peer::Networks(n.clone()),
        EgressPeer::DomainNames(_) => Peer::Never,
    }
}

fn pod(ep: Option<&Endpoint>) -> Option<&Endpoint> {
    ep.filter(|e| e.kind == EndpointKind::Wep && !e.host_network)
}

fn pod_in(pods: &NamespacedPods, ep: &Endpoint) -> bool {
    label_selector_matches(&pods.namespace_selector, &ep.namespace_labels)
        && label_selector_matches(&pods.pod_selector, &ep.labels)
}

impl AdminPolicy {
    /// Compiles an AdminNetworkPolicy spec.
    pub fn admin(spec: &crate::cluster::admin::AdminNetworkPolicySpec, nodes: Arc<Vec<Node>>) -> AdminPolicy {
        AdminPolicy {
            subject: spec.subject.clone(),
            ingress: spec
                .ingress
                .iter()
                .map(|r| ARule {
                    action: admin_action(r.action),
                    peers: r.from.iter().map(ingress_peer).collect(),
                    ports: r.ports.clone(),
                })
                .collect(),
            egress: spec
                .egress
                .iter()
                .map(|r| ARule {
                    action: admin_action(r.action),
                    peers: r.to.iter().map(egress_peer).collect(),
                    ports: r.ports.clone(),
                })
                .collect(),
            nodes,
        }
    }

    /// Compiles a BaselineAdminNetworkPolicy spec.
    pub fn baseline(
        spec: &crate::cluster::admin::BaselineAdminNetworkPolicySpec,
        nodes: Arc<Vec<Node>>,
    ) -> AdminPolicy {
        AdminPolicy {
            subject: spec.subject.clone(),
            ingress: spec
                .ingress
                .iter()
                .map(|r| ARule {
                    action: baseline_action(r.action),
                    peers: r.from.iter().map(ingress_peer).collect(),
                    ports: r.ports.clone(),
                })
                .collect(),
            egress: spec
                .egress
                .iter()
                .map(|r| ARule {
                    action: baseline_action(r.action),
                    peers: r.to.iter().map(egress_peer).collect(),
                    ports: r.ports.clone(),
                })
                .collect(),
            nodes,
        }
    }

    /// Whether `subject` is the policy's subject and the policy has rules in `dir`.
    pub fn selects(&self, subject: &Endpoint, dir: Dir) -> bool {
        let has_rules = match dir {
            Dir::Ingress => !self.ingress.is_empty(),
            Dir::Egress => !self.egress.is_empty(),
        };
        let Some(ep) = pod(Some(subject)) else { return false };
        has_rules
            && match &self.subject {
                Subject::Namespaces(sel) => label_selector_matches(sel, &ep.namespace_labels),
                Subject::Pods(pods) => pod_in(pods, ep),
            }
    }

    /// The first rule matching `flow` in `dir`.
    pub fn first_match(&self, dir: Dir, flow: &FlowView<'_>) -> Option<(usize, RuleAction)> {
        let (rules, peer, ip) = match dir {
            Dir::Ingress => (&self.ingress, flow.src, flow.src_ip),
            Dir::Egress => (&self.egress, flow.dst, flow.dst_ip),
        };
        rules
            .iter()
            .position(|r| {
                r.peers.iter().any(|p| self.peer_matches(p, peer, ip))
                    && r.ports.as_ref().is_none_or(|ports| ports.iter().any(|p| port_matches(p, flow)))
            })
            .map(|i| (i, rules[i].action))
    }

    fn peer_matches(&self, peer: &Peer, ep: Option<&Endpoint>, ip: IpAddr) -> bool {
        match peer {
            Peer::Namespaces(sel) => pod(ep).is_some_and(|p| label_selector_matches(sel, &p.namespace_labels)),
            Peer::Pods(pods) => pod(ep).is_some_and(|p| pod_in(pods, p)),
            Peer::Networks(nets) => nets.iter().any(|n| n.contains(&ip)),
            Peer::Nodes(sel) => {
                self.nodes.iter().any(|n| n.addresses.contains(&ip) && label_selector_matches(sel, &labels_of(n)))
            }
            Peer::Never => false,
        }
    }
}

fn labels_of(n: &Node) -> BTreeMap<String, String> {
    let mut l = n.labels.clone();
    l.entry("kubernetes.io/hostname".into()).or_insert_with(|| n.name.clone());
    l
}

fn port_matches(p: &AdminPort, flow: &FlowView<'_>) -> bool {
    let proto_of = |pp: PortProtocol| match pp {
        PortProtocol::Tcp => proto::TCP,
        PortProtocol::Udp => proto::UDP,
        PortProtocol::Sctp => proto::SCTP,
    };
    let Some(port) = flow.dst_port else { return false };
    match p {
        AdminPort::PortNumber(n) => proto_of(n.protocol) == flow.proto && n.port == port,
        AdminPort::PortRange(r) => proto_of(r.protocol) == flow.proto && (r.start..=r.end).contains(&port),
        AdminPort::NamedPort(name) => pod(flow.dst).is_some_and(|d| {
            d.named_ports.iter().any(|np| &np.name == name && np.port == port && proto_name(&np.protocol) == flow.proto)
        }),
    }
}

fn proto_name(p: &str) -> u8 {
    match p {
        "UDP" => proto::UDP,
        "SCTP" => proto::SCTP,
        _ => proto::TCP,
    }
}
