//! Calico `projectcalico.org/v3` NetworkPolicy and GlobalNetworkPolicy semantics (and their staged
//! kinds), compiled for the tier walk.
//!
//! Takes: a [`CalicoPolicySpec`] and the network sets of the state. Gives: whether the policy
//! selects an endpoint in a direction, and the first rule (Log rules never decide) that matches a
//! flow, with its action. Must never: let a selector that does not parse select anything (the
//! manifests check reports it), or match a rule on a field it does not understand (`services`
//! and `http` matches never match).
//!
//! Selectors see an endpoint's labels plus Calico's implicit ones:
//! `projectcalico.org/namespace`, `projectcalico.org/orchestrator` (`k8s`),
//! `projectcalico.org/serviceaccount`, `pcns.<namespace label>`, `pcsa.<service account label>`;
//! namespace selectors see the namespace's labels plus `projectcalico.org/name`. Rule selectors
//! match workload and host endpoints, and network sets whose nets hold the peer's address:
//! a namespaced policy's in its own namespace (unless the rule has a namespaceSelector), a
//! global policy's anywhere, and `namespaceSelector: global()` means non-namespaced resources.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use flowaudit_common::proto;

use super::engine::{Dir, FlowView, RuleAction};
use crate::{
    cluster::{
        IpNet, NetworkSet,
        calico::{Action, CalicoPolicySpec, EntityRule, IcmpFields, PolicyType, PortSpec, Protocol, Rule},
        selector::{Labels, NamespaceLabels, Selector},
    },
    model::{Endpoint, EndpointKind},
};

/// Labels an endpoint shows to Calico selectors.
pub struct EndpointLabels<'a>(pub &'a Endpoint);

impl Labels for EndpointLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        let ep = self.0;
        if let Some(v) = ep.labels.get(key) {
            return Some(v);
        }
        match key {
            "projectcalico.org/namespace" => ep.namespace.as_deref(),
            "projectcalico.org/orchestrator" => (ep.kind == EndpointKind::Wep).then_some("k8s"),
            "projectcalico.org/serviceaccount" => ep.service_account.as_deref(),
            _ => {
                if let Some(k) = key.strip_prefix("pcns.") {
                    ep.namespace_labels.get(k).map(String::as_str)
                } else if let Some(k) = key.strip_prefix("pcsa.") {
                    ep.service_account_labels.get(k).map(String::as_str)
                } else {
                    None
                }
            }
        }
    }
}

/// A selector that failed to parse selects nothing.
fn compile(text: Option<&str>) -> Option<Selector> {
    match text {
        None => Some(Selector::all()),
        Some(t) => match Selector::parse(t) {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::error!(message = "A Calico selector does not parse; it selects nothing.", selector = t, %error);
                None
            }
        },
    }
}

fn optional(text: Option<&str>) -> Option<Option<Selector>> {
    text.map(|t| compile(Some(t)))
}

/// A compiled entity rule (source or destination of a rule).
#[derive(Clone, Debug)]
struct Entity {
    nets: Vec<IpNet>,
    not_nets: Vec<IpNet>,
    /// `Some(None)`: a selector that does not parse (matches nothing).
    selector: Option<Option<Selector>>,
    not_selector: Option<Option<Selector>>,
    namespace_selector: Option<Option<Selector>>,
    ports: Vec<PortSpec>,
    not_ports: Vec<PortSpec>,
    sa_names: Vec<String>,
    sa_selector: Option<Option<Selector>>,
    unsupported: bool,
}

impl Entity {
    fn new(e: &EntityRule) -> Entity {
        let sa = e.service_accounts.as_ref();
        Entity {
            nets: e.nets.clone(),
            not_nets: e.not_nets.clone(),
            selector: optional(e.selector.as_deref()),
            not_selector: optional(e.not_selector.as_deref()),
            namespace_selector: optional(e.namespace_selector.as_deref()),
            ports: e.ports.clone(),
            not_ports: e.not_ports.clone(),
            sa_names: sa.map(|s| s.names.clone()).unwrap_or_default(),
            sa_selector: sa.and_then(|s| optional(s.selector.as_deref())),
            unsupported: e.services.is_some(),
        }
    }

    fn is_any(&self) -> bool {
        self.nets.is_empty()
            && self.not_nets.is_empty()
            && self.selector.is_none()
            && self.not_selector.is_none()
            && self.namespace_selector.is_none()
            && self.sa_names.is_empty()
            && self.sa_selector.is_none()
            && !self.unsupported
    }
}

/// A compiled Calico rule.
#[derive(Clone, Debug)]
struct CRule {
    action: RuleAction,
    protocol: Option<Protocol>,
    not_protocol: Option<Protocol>,
    ip_version: Option<u8>,
    icmp: Option<IcmpFields>,
    not_icmp: Option<IcmpFields>,
    source: Entity,
    destination: Entity,
    unsupported: bool,
}

/// A compiled Calico policy.
#[derive(Clone, Debug)]
pub struct CalicoPolicy {
    global: bool,
    selector: Option<Selector>,
    namespace_selector: Option<Option<Selector>>,
    sa_selector: Option<Option<Selector>>,
    ingress: Option<Vec<CRule>>,
    egress: Option<Vec<CRule>>,
    sets: Arc<Vec<NetworkSet>>,
}

fn rule_action(a: Action) -> RuleAction {
    match a {
        Action::Allow => RuleAction::Allow,
        Action::Deny => RuleAction::Deny,
        Action::Pass => RuleAction::Pass,
        Action::Log => RuleAction::Log,
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => proto::TCP,
        Protocol::Udp => proto::UDP,
        Protocol::Icmp => proto::ICMP,
        Protocol::IcmpV6 => proto::ICMPV6,
        Protocol::Sctp => proto::SCTP,
        Protocol::UdpLite => 136,
        Protocol::Number(n) => n,
    }
}

impl CalicoPolicy {
    /// Compiles `spec`; `global` for GlobalNetworkPolicy kinds.
    pub fn new(spec: &CalicoPolicySpec, global: bool, sets: Arc<Vec<NetworkSet>>) -> CalicoPolicy {
        let rules = |rules: &[Rule]| -> Vec<CRule> {
            rules
                .iter()
                .map(|r| CRule {
                    action: rule_action(r.action),
                    protocol: r.protocol,
                    not_protocol: r.not_protocol,
                    ip_version: r.ip_version,
                    icmp: r.icmp,
                    not_icmp: r.not_icmp,
                    source: Entity::new(&r.source),
                    destination: Entity::new(&r.destination),
                    unsupported: r.http.is_some(),
                })
                .collect()
        };
        let types: Vec<PolicyType> = match &spec.types {
            Some(t) if !t.is_empty() => t.clone(),
            _ => match (spec.ingress.is_empty(), spec.egress.is_empty()) {
                (true, false) => vec![PolicyType::Egress],
                (false, false) => vec![PolicyType::Ingress, PolicyType::Egress],
                _ => vec![PolicyType::Ingress],
            },
        };
        CalicoPolicy {
            global,
            selector: compile(spec.selector.as_deref()),
            namespace_selector: optional(spec.namespace_selector.as_deref()),
            sa_selector: optional(spec.service_account_selector.as_deref()),
            ingress: types.contains(&PolicyType::Ingress).then(|| rules(&spec.ingress)),
            egress: types.contains(&PolicyType::Egress).then(|| rules(&spec.egress)),
            sets,
        }
    }

    /// Whether a rule matches on source ports (then a verdict depends on the source port).
    pub fn uses_source_ports(&self) -> bool {
        self.ingress
            .iter()
            .chain(self.egress.iter())
            .flatten()
            .any(|r| !r.source.ports.is_empty() || !r.source.not_ports.is_empty())
    }

    /// Whether the policy applies to `subject` in `dir`.
    pub fn selects(&self, namespace: Option<&str>, subject: &Endpoint, dir: Dir) -> bool {
        let applies = match dir {
            Dir::Ingress => self.ingress.is_some(),
            Dir::Egress => self.egress.is_some(),
        };
        if !applies || !matches!(subject.kind, EndpointKind::Wep | EndpointKind::Hep) {
            return false;
        }
        if !self.global && (subject.kind != EndpointKind::Wep || subject.namespace.as_deref() != namespace) {
            return false;
        }
        let Some(selector) = &self.selector else { return false };
        if !selector.matches(&EndpointLabels(subject)) {
            return false;
        }
        if let Some(ns_sel) = &self.namespace_selector {
            let Some(ns_sel) = ns_sel else { return false };
            if !ns_matches(ns_sel, subject) {
                return false;
            }
        }
        if let Some(sa_sel) = &self.sa_selector {
            let Some(sa_sel) = sa_sel else { return false };
            if subject.service_account.is_none() || !sa_sel.matches(&subject.service_account_labels) {
                return false;
            }
        }
        true
    }

    /// The first non-Log rule matching `flow`.
    pub fn first_match(&self, namespace: Option<&str>, dir: Dir, flow: &FlowView<'_>) -> Option<(usize, RuleAction)> {
        let rules = match dir {
            Dir::Ingress => self.ingress.as_ref()?,
            Dir::Egress => self.egress.as_ref()?,
        };
        rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.action != RuleAction::Log)
            .find(|(_, r)| self.rule_matches(namespace, r, flow))
            .map(|(i, r)| (i, r.action))
    }

    fn rule_matches(&self, namespace: Option<&str>, r: &CRule, flow: &FlowView<'_>) -> bool {
        if r.unsupported {
            return false;
        }
        if r.protocol.is_some_and(|p| proto_number(p) != flow.proto)
            || r.not_protocol.is_some_and(|p| proto_number(p) == flow.proto)
        {
            return false;
        }
        let version = if flow.src_ip.is_ipv4() { 4 } else { 6 };
        if r.ip_version.is_some_and(|v| v != version) {
            return false;
        }
        let icmp_is = |f: &IcmpFields| {
            flow.icmp.is_some_and(|(t, c)| f.icmp_type.is_none_or(|ft| ft == t) && f.code.is_none_or(|fc| fc == c))
        };
        if r.icmp.as_ref().is_some_and(|f| !icmp_is(f)) || r.not_icmp.as_ref().is_some_and(icmp_is) {
            return false;
        }
        let src_port = if flow.icmp.is_some() { None } else { flow.src_port };
        self.entity_matches(namespace, &r.source, flow.src, flow.src_ip, src_port, None)
            && self.entity_matches(namespace, &r.destination, flow.dst, flow.dst_ip, flow.dst_port, flow.dst)
    }

    fn entity_matches(
        &self,
        namespace: Option<&str>,
        e: &Entity,
        ep: Option<&Endpoint>,
        ip: IpAddr,
        port: Option<u16>,
        named_port_owner: Option<&Endpoint>,
    ) -> bool {
        if e.is_any() && e.ports.is_empty() && e.not_ports.is_empty() {
            return true;
        }
        if e.unsupported {
            return false;
        }
        if !e.nets.is_empty() && !e.nets.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if e.not_nets.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if !e.ports.is_empty() && !e.ports.iter().any(|p| port_matches(p, port, named_port_owner)) {
            return false;
        }
        if e.not_ports.iter().any(|p| port_matches(p, port, named_port_owner)) {
            return false;
        }
        if !e.sa_names.is_empty() || e.sa_selector.is_some() {
            let Some(ep) = ep.filter(|ep| ep.kind == EndpointKind::Wep) else { return false };
            let Some(sa) = &ep.service_account else { return false };
            if !e.sa_names.is_empty() && !e.sa_names.contains(sa) {
                return false;
            }
            if let Some(sel) = &e.sa_selector
                && !sel.as_ref().is_some_and(|s| s.matches(&ep.service_account_labels))
            {
                return false;
            }
        }
        if e.selector.is_none() && e.not_selector.is_none() && e.namespace_selector.is_none() {
            return true;
        }
        // Candidates named by selectors: the endpoint itself, and network sets holding the address.
        let scope_ok = |cand_ns: Option<&str>, ns_labels: Option<&BTreeMap<String, String>>| -> bool {
            match &e.namespace_selector {
                Some(None) => false,
                Some(Some(sel)) if sel.is_global() => cand_ns.is_none(),
                Some(Some(sel)) => match (cand_ns, ns_labels) {
                    (Some(name), Some(labels)) => sel.matches(&NamespaceLabels { name, labels }),
                    _ => false,
                },
                None if self.global => true,
                None => cand_ns == namespace,
            }
        };
        let labels_ok = |labels: &dyn Labels| -> bool {
            e.selector.as_ref().is_none_or(|s| s.as_ref().is_some_and(|s| s.matches(labels)))
                && e.not_selector.as_ref().is_none_or(|s| s.as_ref().is_some_and(|s| !s.matches(labels)))
        };
        if let Some(ep) = ep.filter(|ep| matches!(ep.kind, EndpointKind::Wep | EndpointKind::Hep))
            && scope_ok(ep.namespace.as_deref(), Some(&ep.namespace_labels))
            && labels_ok(&EndpointLabels(ep))
        {
            return true;
        }
        self.sets.iter().filter(|set| set.nets.iter().any(|n| n.contains(&ip))).any(|set| {
            // Namespace labels of a namespaced set's namespace are not known here; a set is in
            // scope by namespace name only (and `global()` for global sets).
            let in_scope = match &e.namespace_selector {
                None if self.global => true,
                None => set.namespace.as_deref() == namespace,
                Some(Some(sel)) if sel.is_global() => set.namespace.is_none(),
                Some(Some(sel)) => set
                    .namespace
                    .as_deref()
                    .is_some_and(|n| sel.matches(&NamespaceLabels { name: n, labels: &BTreeMap::new() })),
                Some(None) => false,
            };
            in_scope && labels_ok(&set.labels)
        })
    }
}

fn ns_matches(sel: &Selector, ep: &Endpoint) -> bool {
    match ep.namespace.as_deref() {
        Some(name) => sel.matches(&NamespaceLabels { name, labels: &ep.namespace_labels }),
        None => sel.is_global(),
    }
}

fn port_matches(spec: &PortSpec, port: Option<u16>, owner: Option<&Endpoint>) -> bool {
    let Some(port) = port else { return false };
    match spec {
        PortSpec::Number(n) => *n == port,
        PortSpec::Range(a, b) => (*a..=*b).contains(&port),
        PortSpec::Named(name) => {
            owner.is_some_and(|ep| ep.named_ports.iter().any(|np| &np.name == name && np.port == port))
        }
    }
}
