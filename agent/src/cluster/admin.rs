//! The Kubernetes admin policy kinds as the manifests source reads them: `AdminNetworkPolicy` and
//! `BaselineAdminNetworkPolicy` (`policy.networking.k8s.io/v1alpha1`).
//!
//! Takes: a document's `spec`, read by serde in its *wire* form (`networks` CIDRs as written,
//! unknown fields ignored, typed fields strict, each subject / peer / port exactly one of its
//! forms). Gives: the *checked* form (CIDRs parsed), or every problem as a [`FieldError`] with its
//! path from the document root. Must never: stop at the first problem, or guess a value it
//! cannot parse.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;

use super::{FieldError, IpNet, calico::check_port_name, cidrs, null_as_default};

/// The highest AdminNetworkPolicy priority.
pub const MAX_PRIORITY: i32 = 1000;

/// The only name a BaselineAdminNetworkPolicy may have.
pub const BASELINE_NAME: &str = "default";

/// The action of an AdminNetworkPolicy rule.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminAction {
    /// Allow; no lower-priority policy, NetworkPolicy or baseline is consulted.
    Allow,
    /// Deny; no lower-priority policy, NetworkPolicy or baseline is consulted.
    Deny,
    /// Skip the remaining AdminNetworkPolicies; NetworkPolicies (then the baseline) decide.
    Pass,
}

/// The action of a BaselineAdminNetworkPolicy rule.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaselineAction {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
}

/// Pods chosen by their namespace's labels and their own.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPods {
    /// Namespaces (an empty selector is every namespace).
    pub namespace_selector: LabelSelector,
    /// Pods in them (an empty selector is every pod).
    pub pod_selector: LabelSelector,
}

/// What a policy applies to: exactly one of the forms.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    /// Every pod of the selected namespaces.
    Namespaces(LabelSelector),
    /// The selected pods of the selected namespaces.
    Pods(NamespacedPods),
}

/// An ingress peer: exactly one of the forms.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum IngressPeer {
    /// Every pod of the selected namespaces.
    Namespaces(LabelSelector),
    /// The selected pods of the selected namespaces.
    Pods(NamespacedPods),
}

/// An egress peer: exactly one of the forms. `N` is the form of `networks` (`String` as written,
/// [`IpNet`] once checked).
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", bound(deserialize = "N: Deserialize<'de>"))]
pub enum EgressPeer<N = IpNet> {
    /// Every pod of the selected namespaces.
    Namespaces(LabelSelector),
    /// The selected pods of the selected namespaces.
    Pods(NamespacedPods),
    /// The selected nodes.
    Nodes(LabelSelector),
    /// CIDRs (host bits cleared; a bare IP is a /32 or /128).
    Networks(Vec<N>),
    /// Domain names (AdminNetworkPolicy only, `*.` wildcards allowed).
    DomainNames(Vec<String>),
}

/// A protocol of an admin policy port.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PortProtocol {
    /// TCP (the default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

/// `portNumber` of an admin policy port.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortNumber {
    /// Protocol (TCP when unset).
    #[serde(default, deserialize_with = "null_as_default")]
    pub protocol: PortProtocol,
    /// Port, 1-65535.
    pub port: u16,
}

/// `portRange` of an admin policy port.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    /// Protocol (TCP when unset).
    #[serde(default, deserialize_with = "null_as_default")]
    pub protocol: PortProtocol,
    /// First port, 1-65535.
    pub start: u16,
    /// Last port (inclusive), at least `start`.
    pub end: u16,
}

/// A port of an admin policy rule: exactly one of the forms.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum AdminPort {
    /// One port.
    PortNumber(PortNumber),
    /// A named container port of the destination pod.
    NamedPort(String),
    /// A range of ports.
    PortRange(PortRange),
}

/// An ingress rule; `A` is the action type of the kind.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", bound(deserialize = "A: Deserialize<'de>"))]
pub struct IngressRule<A> {
    /// Rule name (up to 100 characters), for reports.
    pub name: Option<String>,
    /// What a match does.
    pub action: A,
    /// Peers (at least one).
    pub from: Vec<IngressPeer>,
    /// Ports (every port when unset; at least one when set).
    pub ports: Option<Vec<AdminPort>>,
}

/// An egress rule; `A` is the action type of the kind, `N` the form of `networks`.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", bound(deserialize = "A: Deserialize<'de>, N: Deserialize<'de>"))]
pub struct EgressRule<A, N = IpNet> {
    /// Rule name (up to 100 characters), for reports.
    pub name: Option<String>,
    /// What a match does.
    pub action: A,
    /// Peers (at least one).
    pub to: Vec<EgressPeer<N>>,
    /// Ports (every port when unset; at least one when set).
    pub ports: Option<Vec<AdminPort>>,
}

/// The spec of an AdminNetworkPolicy; `N` is the form of `networks`.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", bound(deserialize = "N: Deserialize<'de>"))]
pub struct AdminNetworkPolicySpec<N = IpNet> {
    /// 0-1000; lower goes first. Two policies with one priority have no defined order.
    pub priority: i32,
    /// The pods the policy applies to (in the directions it has rules for).
    pub subject: Subject,
    /// Ingress rules, in order (at most 100).
    #[serde(default, deserialize_with = "null_as_default")]
    pub ingress: Vec<IngressRule<AdminAction>>,
    /// Egress rules, in order (at most 100).
    #[serde(default, deserialize_with = "null_as_default")]
    pub egress: Vec<EgressRule<AdminAction, N>>,
}

/// The spec of the BaselineAdminNetworkPolicy; `N` is the form of `networks`.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", bound(deserialize = "N: Deserialize<'de>"))]
pub struct BaselineAdminNetworkPolicySpec<N = IpNet> {
    /// The pods the policy applies to (in the directions it has rules for).
    pub subject: Subject,
    /// Ingress rules, in order (at most 100).
    #[serde(default, deserialize_with = "null_as_default")]
    pub ingress: Vec<IngressRule<BaselineAction>>,
    /// Egress rules, in order (at most 100).
    #[serde(default, deserialize_with = "null_as_default")]
    pub egress: Vec<EgressRule<BaselineAction, N>>,
}

impl AdminNetworkPolicySpec<String> {
    /// Checks the spec. Problems name their field from the document root.
    pub fn check(self) -> Result<AdminNetworkPolicySpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        if !(0..=MAX_PRIORITY).contains(&self.priority) {
            errors.push(FieldError::new(
                "spec.priority",
                format!("{} is not a priority (0-{MAX_PRIORITY})", self.priority),
            ));
        }
        ingress_checked(&self.ingress, &mut errors);
        let egress = egress_checked(self.egress, true, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(AdminNetworkPolicySpec { priority: self.priority, subject: self.subject, ingress: self.ingress, egress })
    }
}

impl BaselineAdminNetworkPolicySpec<String> {
    /// Checks the spec. Problems name their field from the document root.
    pub fn check(self) -> Result<BaselineAdminNetworkPolicySpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        ingress_checked(&self.ingress, &mut errors);
        let egress = egress_checked(self.egress, false, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(BaselineAdminNetworkPolicySpec { subject: self.subject, ingress: self.ingress, egress })
    }
}

fn ingress_checked<A>(rules: &[IngressRule<A>], errors: &mut Vec<FieldError>) {
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.ingress[{i}]");
        common_checked(&at, rule.name.as_deref(), rule.from.is_empty(), "from", rule.ports.as_deref(), errors);
    }
}

fn egress_checked<A>(
    rules: Vec<EgressRule<A, String>>,
    domain_names: bool,
    errors: &mut Vec<FieldError>,
) -> Vec<EgressRule<A>> {
    let mut out = Vec::new();
    for (i, rule) in rules.into_iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        common_checked(&at, rule.name.as_deref(), rule.to.is_empty(), "to", rule.ports.as_deref(), errors);
        let mut to = Vec::new();
        let mut no_named_ports = false;
        for (j, peer) in rule.to.into_iter().enumerate() {
            to.push(match peer {
                EgressPeer::Namespaces(s) => EgressPeer::Namespaces(s),
                EgressPeer::Pods(p) => EgressPeer::Pods(p),
                EgressPeer::Nodes(s) => {
                    no_named_ports = true;
                    EgressPeer::Nodes(s)
                }
                EgressPeer::Networks(list) => {
                    no_named_ports = true;
                    let field = format!("{at}.to[{j}].networks");
                    if list.is_empty() {
                        errors.push(FieldError::new(&field, "at least one CIDR"));
                    }
                    EgressPeer::Networks(cidrs(&list, &field, errors))
                }
                EgressPeer::DomainNames(names) => {
                    no_named_ports = true;
                    if !domain_names {
                        errors.push(FieldError::new(
                            format!("{at}.to[{j}].domainNames"),
                            "only an AdminNetworkPolicy has domainNames peers",
                        ));
                    } else if names.is_empty() {
                        errors.push(FieldError::new(format!("{at}.to[{j}].domainNames"), "at least one domain name"));
                    }
                    EgressPeer::DomainNames(names)
                }
            });
        }
        for (k, port) in rule.ports.iter().flatten().enumerate() {
            if no_named_ports && matches!(port, AdminPort::NamedPort(_)) {
                errors.push(FieldError::new(
                    format!("{at}.ports[{k}].namedPort"),
                    "a named port cannot go with networks, nodes or domainNames peers (they have no named ports)",
                ));
            }
        }
        out.push(EgressRule { name: rule.name, action: rule.action, to, ports: rule.ports });
    }
    out
}

fn common_checked(
    at: &str,
    name: Option<&str>,
    no_peers: bool,
    peers: &str,
    ports: Option<&[AdminPort]>,
    errors: &mut Vec<FieldError>,
) {
    if name.is_some_and(|n| n.chars().count() > 100) {
        errors.push(FieldError::new(format!("{at}.name"), "longer than 100 characters"));
    }
    if no_peers {
        errors.push(FieldError::new(format!("{at}.{peers}"), "at least one peer"));
    }
    let Some(ports) = ports else { return };
    if ports.is_empty() {
        errors.push(FieldError::new(format!("{at}.ports"), "at least one port when set"));
    }
    for (k, port) in ports.iter().enumerate() {
        match port {
            AdminPort::PortNumber(p) if p.port == 0 => {
                errors.push(FieldError::new(format!("{at}.ports[{k}].portNumber.port"), "0 is not a port (1-65535)"));
            }
            AdminPort::PortRange(r) if r.start == 0 => {
                errors.push(FieldError::new(format!("{at}.ports[{k}].portRange.start"), "0 is not a port (1-65535)"));
            }
            AdminPort::PortRange(r) if r.start > r.end => {
                errors.push(FieldError::new(
                    format!("{at}.ports[{k}].portRange"),
                    format!("starts ({}) after it ends ({})", r.start, r.end),
                ));
            }
            AdminPort::NamedPort(n) => {
                if let Err(e) = check_port_name(n) {
                    errors.push(FieldError::new(format!("{at}.ports[{k}].namedPort"), e));
                }
            }
            _ => {}
        }
    }
}
