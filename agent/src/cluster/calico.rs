//! Calico's policy kinds as the manifests source reads them: the specs of `NetworkPolicy`,
//! `GlobalNetworkPolicy`, their staged variants, `Tier`, `NetworkSet`, `GlobalNetworkSet` and
//! `HostEndpoint` (`projectcalico.org/v3`; the `crd.projectcalico.org/v1` CRDs have the same spec
//! shape).
//!
//! Takes: a document's `spec`, read by serde in its *wire* form ([`WirePolicySpec`]: nets, ports
//! and protocols as written, unknown fields ignored, typed fields strict). Gives: the *checked*
//! form ([`CalicoPolicySpec`]: CIDRs, [`PortSpec`]s and [`Protocol`]s parsed), or every problem as
//! a [`FieldError`] with its path from the document root. Must never: stop at the first problem,
//! or guess a value it cannot parse.
//!
//! Selector expressions (`selector`, `namespaceSelector`, `notSelector`,
//! `serviceAccountSelector`, `serviceAccounts.selector`) are kept as written: their syntax is
//! validated by the attribute stage, which parses them.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};

use super::{FieldError, HostEndpoint, IpNet, Labels, NamedPort, NetworkSet, cidrs, null_as_default};

/// The tier of a policy that names none.
pub const DEFAULT_TIER: &str = "default";

/// Tiers that exist without a `Tier` document: `default`, and the tiers Calico gives
/// AdminNetworkPolicy (`kube-admin`) and BaselineAdminNetworkPolicy (`kube-baseline`).
pub const BUILT_IN_TIERS: &[&str] = &[DEFAULT_TIER, "kube-admin", "kube-baseline"];

/// The direction a policy applies to (`spec.types`).
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyType {
    /// Traffic to the selected endpoints.
    Ingress,
    /// Traffic from the selected endpoints.
    Egress,
}

/// A rule's action, or a tier's default action.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Allow the traffic; no later rule, policy or tier is consulted.
    Allow,
    /// Deny the traffic; no later rule, policy or tier is consulted.
    Deny,
    /// Log the packet and go on with the next rule.
    Log,
    /// Skip the rest of the tier; go on with the next tier.
    Pass,
}

/// What a staged policy would do once enforced (`spec.stagedAction`).
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StagedAction {
    /// Add the policy, or replace the enforced one of the same kind, namespace and name.
    #[default]
    Set,
    /// Remove the enforced policy of the same kind, namespace and name.
    Delete,
    /// Calico Enterprise's policy recommendation: a policy still being learned. Stands in for
    /// nothing.
    Learn,
    /// Calico Enterprise's policy recommendation: a recommendation the user set aside. Stands in
    /// for nothing.
    Ignore,
}

/// A value written as a number or as a string (Calico's `numorstring`): the wire form of ports
/// and protocols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntOrString {
    /// A number, as written.
    Int(i64),
    /// A string, as written.
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v).map(IntOrString::Int).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_owned()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A port of a rule: a number, a range or the name of an endpoint's port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// One port, 1-65535.
    Number(u16),
    /// An inclusive range `a:b` with `a <= b` (`a` may be 0, `b` is at least 1).
    Range(u16, u16),
    /// A named port: 1-15 of `a-z`, `0-9` and `-`, with at least one letter, not starting or
    /// ending with `-` (a Kubernetes container port name).
    Named(String),
}

impl PortSpec {
    /// Parses a port as written: a number, `"80"`, `"80:90"` or a name.
    pub fn parse(value: &IntOrString) -> Result<Self, String> {
        match value {
            IntOrString::Int(n) => port_number(*n).map(PortSpec::Number),
            IntOrString::Str(s) => {
                if is_digits(s) {
                    return port_number(s.parse().unwrap_or(i64::MAX)).map(PortSpec::Number);
                }
                if let Some((a, b)) = s.split_once(':') {
                    if !is_digits(a) || !is_digits(b) {
                        return Err(format!("{s:?} is not a port range (a:b, two numbers)"));
                    }
                    let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) else {
                        return Err(format!("{s:?} is not a port range: ports are 0-65535"));
                    };
                    if b == 0 {
                        return Err(format!("{s:?} is not a port range: it ends at port 0"));
                    }
                    if a > b {
                        return Err(format!("port range {s:?} starts after it ends"));
                    }
                    return Ok(PortSpec::Range(a, b));
                }
                if is_port_name(s) {
                    Ok(PortSpec::Named(s.clone()))
                } else {
                    Err(format!("{s:?} is not a port number, a range a:b or a port name ({PORT_NAME_RULE})"))
                }
            }
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn port_number(n: i64) -> Result<u16, String> {
    u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| format!("{n} is not a port (1-65535)"))
}

const PORT_NAME_RULE: &str = "1-15 of a-z, 0-9 and -, with a letter, not starting or ending with -";

fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Checks a port name: 1-15 of `a-z`, `0-9` and `-`, with a letter, not starting or ending with
/// `-` (Kubernetes' IANA service name rule, which container port names follow).
pub fn check_port_name(name: &str) -> Result<(), String> {
    if is_port_name(name) { Ok(()) } else { Err(format!("{name:?} is not a port name ({PORT_NAME_RULE})")) }
}

/// An IP protocol of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `TCP` (6).
    Tcp,
    /// `UDP` (17).
    Udp,
    /// `ICMP` (1).
    Icmp,
    /// `ICMPv6` (58).
    IcmpV6,
    /// `SCTP` (132).
    Sctp,
    /// `UDPLite` (136).
    UdpLite,
    /// A protocol written as a number, 1-255.
    Number(u8),
}

impl Protocol {
    /// Parses a protocol as written: a name (any case: `TCP`, `UDP`, `ICMP`, `ICMPv6`, `SCTP`,
    /// `UDPLite`) or a number 1-255 (also as a string).
    pub fn parse(value: &IntOrString) -> Result<Self, String> {
        let number = |n: i64| {
            u8::try_from(n)
                .ok()
                .filter(|p| *p > 0)
                .map(Protocol::Number)
                .ok_or_else(|| format!("{n} is not a protocol number (1-255)"))
        };
        match value {
            IntOrString::Int(n) => number(*n),
            IntOrString::Str(s) if is_digits(s) => number(s.parse().unwrap_or(i64::MAX)),
            IntOrString::Str(s) => match s.to_ascii_lowercase().as_str() {
                "tcp" => Ok(Self::Tcp),
                "udp" => Ok(Self::Udp),
                "icmp" => Ok(Self::Icmp),
                "icmpv6" => Ok(Self::IcmpV6),
                "sctp" => Ok(Self::Sctp),
                "udplite" => Ok(Self::UdpLite),
                _ => Err(format!("{s:?} is not a protocol (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255)")),
            },
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
            Self::IcmpV6 => 58,
            Self::Sctp => 132,
            Self::UdpLite => 136,
            Self::Number(n) => n,
        }
    }

    /// Whether rules with this protocol may match ports (TCP, UDP and SCTP, as in Calico).
    pub fn supports_ports(self) -> bool {
        matches!(self.number(), 6 | 17 | 132)
    }

    /// Whether `icmp` / `notICMP` may go with this protocol.
    pub fn is_icmp(self) -> bool {
        matches!(self.number(), 1 | 58)
    }
}

/// `icmp` / `notICMP` of a rule.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IcmpFields {
    /// ICMP type, 0-254.
    #[serde(rename = "type")]
    pub icmp_type: Option<u8>,
    /// ICMP code, 0-255 (only with a type).
    pub code: Option<u8>,
}

/// `serviceAccounts` of an entity rule.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    /// Service account names (in the endpoint's namespace).
    #[serde(default, deserialize_with = "null_as_default")]
    pub names: Vec<String>,
    /// A selector over service account labels.
    pub selector: Option<String>,
}

/// `services` of an entity rule.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMatch {
    /// Service name.
    pub name: Option<String>,
    /// Service namespace (the policy's when unset).
    pub namespace: Option<String>,
}

/// One path condition of `http`.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpPath {
    /// The exact path.
    pub exact: Option<String>,
    /// A path prefix.
    pub prefix: Option<String>,
}

/// `http` of a rule: application-layer conditions, which flowaudit cannot see.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// HTTP methods.
    #[serde(default, deserialize_with = "null_as_default")]
    pub methods: Vec<String>,
    /// Paths.
    #[serde(default, deserialize_with = "null_as_default")]
    pub paths: Vec<HttpPath>,
}

/// The `source` or `destination` of a rule. `N` and `P` are the forms of nets and ports:
/// `String` and [`IntOrString`] as written, [`IpNet`] and [`PortSpec`] once checked.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", bound(deserialize = "N: Deserialize<'de>, P: Deserialize<'de>"))]
pub struct EntityRule<N = IpNet, P = PortSpec> {
    /// CIDRs the peer's address is in (any of them).
    #[serde(default, deserialize_with = "null_as_default")]
    pub nets: Vec<N>,
    /// CIDRs the peer's address is not in (none of them).
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_nets: Vec<N>,
    /// A selector over endpoint (and network set) labels.
    pub selector: Option<String>,
    /// The negated selector.
    pub not_selector: Option<String>,
    /// A selector over namespace labels.
    pub namespace_selector: Option<String>,
    /// Ports (any of them).
    #[serde(default, deserialize_with = "null_as_default")]
    pub ports: Vec<P>,
    /// Ports excluded.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_ports: Vec<P>,
    /// Service accounts of the peer.
    pub service_accounts: Option<ServiceAccountMatch>,
    /// A Kubernetes Service the peer belongs to.
    pub services: Option<ServiceMatch>,
}

impl<N, P> Default for EntityRule<N, P> {
    fn default() -> Self {
        Self {
            nets: Vec::new(),
            not_nets: Vec::new(),
            selector: None,
            not_selector: None,
            namespace_selector: None,
            ports: Vec::new(),
            not_ports: Vec::new(),
            service_accounts: None,
            services: None,
        }
    }
}

/// One rule. `N`, `P` and `R` are the forms of nets, ports and protocols (see [`EntityRule`]).
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", bound(deserialize = "N: Deserialize<'de>, P: Deserialize<'de>, R: Deserialize<'de>"))]
pub struct Rule<N = IpNet, P = PortSpec, R = Protocol> {
    /// What a match does.
    pub action: Action,
    /// The protocol traffic must have.
    pub protocol: Option<R>,
    /// A protocol traffic must not have.
    pub not_protocol: Option<R>,
    /// 4 or 6.
    pub ip_version: Option<u8>,
    /// ICMP type and code traffic must have.
    pub icmp: Option<IcmpFields>,
    /// ICMP type and code traffic must not have.
    #[serde(rename = "notICMP")]
    pub not_icmp: Option<IcmpFields>,
    /// Conditions on the source.
    #[serde(default, deserialize_with = "null_as_default")]
    pub source: EntityRule<N, P>,
    /// Conditions on the destination.
    #[serde(default, deserialize_with = "null_as_default")]
    pub destination: EntityRule<N, P>,
    /// Application-layer conditions (not visible to flowaudit).
    pub http: Option<HttpMatch>,
}

/// The spec of a Calico `NetworkPolicy`, `GlobalNetworkPolicy` and their staged variants
/// (`stagedAction` is read apart, see [`StagedActionField`]). `N`, `P` and `R` are the forms of
/// nets, ports and protocols (see [`EntityRule`]).
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", bound(deserialize = "N: Deserialize<'de>, P: Deserialize<'de>, R: Deserialize<'de>"))]
pub struct CalicoPolicySpec<N = IpNet, P = PortSpec, R = Protocol> {
    /// The tier (`default` when unset).
    pub tier: Option<String>,
    /// Order within the tier (lower first; unset is last).
    pub order: Option<f64>,
    /// A selector over the endpoints the policy applies to (all when unset).
    pub selector: Option<String>,
    /// The directions the policy applies to; when unset, Calico derives them from the rules.
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules, in order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ingress: Vec<Rule<N, P, R>>,
    /// Egress rules, in order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub egress: Vec<Rule<N, P, R>>,
    /// Global kinds only: a selector over the namespaces of the endpoints the policy applies to.
    pub namespace_selector: Option<String>,
    /// A selector over the service accounts of the endpoints the policy applies to.
    pub service_account_selector: Option<String>,
    /// Global kinds only: the policy applies before connection tracking.
    #[serde(default, deserialize_with = "null_as_default")]
    pub do_not_track: bool,
    /// Global kinds only: the policy applies before DNAT.
    #[serde(default, rename = "preDNAT", deserialize_with = "null_as_default")]
    pub pre_dnat: bool,
    /// Global kinds only: the policy applies to forwarded traffic too.
    #[serde(default, deserialize_with = "null_as_default")]
    pub apply_on_forward: bool,
}

impl<N, P, R> Default for CalicoPolicySpec<N, P, R> {
    fn default() -> Self {
        Self {
            tier: None,
            order: None,
            selector: None,
            types: None,
            ingress: Vec::new(),
            egress: Vec::new(),
            namespace_selector: None,
            service_account_selector: None,
            do_not_track: false,
            pre_dnat: false,
            apply_on_forward: false,
        }
    }
}

/// A policy spec as written.
pub type WirePolicySpec = CalicoPolicySpec<String, IntOrString, IntOrString>;
type WireRule = Rule<String, IntOrString, IntOrString>;
type WireEntityRule = EntityRule<String, IntOrString>;

/// `spec.stagedAction` of the staged kinds, read apart from the rest of the spec.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StagedActionField {
    /// The staged action (`Set` when unset).
    pub staged_action: Option<StagedAction>,
}

impl WirePolicySpec {
    /// Checks the spec of a policy, `global` for the cluster-wide kinds. Problems name their
    /// field from the document root.
    pub fn check(self, global: bool) -> Result<CalicoPolicySpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        if !global {
            let only_global = [
                ("spec.namespaceSelector", self.namespace_selector.is_some()),
                ("spec.doNotTrack", self.do_not_track),
                ("spec.preDNAT", self.pre_dnat),
                ("spec.applyOnForward", self.apply_on_forward),
            ];
            for (field, set) in only_global {
                if set {
                    errors.push(FieldError::new(
                        field,
                        "only a GlobalNetworkPolicy has this field (a NetworkPolicy applies to its own namespace)",
                    ));
                }
            }
        }
        selector_checked(self.selector.as_ref(), "spec.selector", &mut errors);
        selector_checked(self.namespace_selector.as_ref(), "spec.namespaceSelector", &mut errors);
        selector_checked(self.service_account_selector.as_ref(), "spec.serviceAccountSelector", &mut errors);
        let ingress = rules(self.ingress, "spec.ingress", &mut errors);
        let egress = rules(self.egress, "spec.egress", &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CalicoPolicySpec {
            tier: self.tier,
            order: self.order,
            selector: self.selector,
            types: self.types,
            ingress,
            egress,
            namespace_selector: self.namespace_selector,
            service_account_selector: self.service_account_selector,
            do_not_track: self.do_not_track,
            pre_dnat: self.pre_dnat,
            apply_on_forward: self.apply_on_forward,
        })
    }
}

fn rules(list: Vec<WireRule>, at: &str, errors: &mut Vec<FieldError>) -> Vec<Rule> {
    list.into_iter().enumerate().filter_map(|(i, rule)| rule_checked(rule, &format!("{at}[{i}]"), errors)).collect()
}

fn rule_checked(rule: WireRule, at: &str, errors: &mut Vec<FieldError>) -> Option<Rule> {
    let before = errors.len();
    let mut protocol_of = |value: Option<IntOrString>, field: &str| {
        value.and_then(|v| {
            Protocol::parse(&v).map_err(|e| errors.push(FieldError::new(format!("{at}.{field}"), e))).ok()
        })
    };
    let protocol = protocol_of(rule.protocol.clone(), "protocol");
    let not_protocol = protocol_of(rule.not_protocol, "notProtocol");
    if let Some(v) = rule.ip_version.filter(|v| *v != 4 && *v != 6) {
        errors.push(FieldError::new(format!("{at}.ipVersion"), format!("{v} is not an IP version (4 or 6)")));
    }
    // A protocol that did not parse is reported once, not again by the checks that need it.
    let protocol_unknown = rule.protocol.is_some() && protocol.is_none();
    for (field, icmp) in [("icmp", &rule.icmp), ("notICMP", &rule.not_icmp)] {
        let Some(icmp) = icmp else { continue };
        if icmp.icmp_type == Some(255) {
            errors.push(FieldError::new(format!("{at}.{field}.type"), "255 is not an ICMP type (0-254)"));
        }
        if icmp.code.is_some() && icmp.icmp_type.is_none() {
            errors.push(FieldError::new(format!("{at}.{field}.code"), "an ICMP code needs a type"));
        }
        if !protocol_unknown && !protocol.is_some_and(Protocol::is_icmp) {
            errors.push(FieldError::new(format!("{at}.{field}"), "needs protocol ICMP or ICMPv6"));
        }
    }
    let has_ports = [&rule.source, &rule.destination].iter().any(|e| !e.ports.is_empty() || !e.not_ports.is_empty());
    if has_ports && !protocol_unknown && !protocol.is_some_and(Protocol::supports_ports) {
        errors.push(FieldError::new(format!("{at}.protocol"), "a rule with ports needs protocol TCP, UDP or SCTP"));
    }
    let source = entity_checked(rule.source, &format!("{at}.source"), errors);
    let destination = entity_checked(rule.destination, &format!("{at}.destination"), errors);
    (errors.len() == before).then_some(Rule {
        action: rule.action,
        protocol,
        not_protocol,
        ip_version: rule.ip_version,
        icmp: rule.icmp,
        not_icmp: rule.not_icmp,
        source,
        destination,
        http: rule.http,
    })
}

/// Reports a selector that does not parse, naming its field and the position in it.
fn selector_checked(text: Option<&String>, field: &str, errors: &mut Vec<FieldError>) {
    if let Some(t) = text
        && let Err(e) = super::selector::Selector::parse(t)
    {
        errors.push(FieldError::new(field.to_owned(), format!("selector {t:?} does not parse {e}")));
    }
}

fn entity_checked(entity: WireEntityRule, at: &str, errors: &mut Vec<FieldError>) -> EntityRule {
    selector_checked(entity.selector.as_ref(), &format!("{at}.selector"), errors);
    selector_checked(entity.not_selector.as_ref(), &format!("{at}.notSelector"), errors);
    selector_checked(entity.namespace_selector.as_ref(), &format!("{at}.namespaceSelector"), errors);
    if let Some(sa) = &entity.service_accounts {
        selector_checked(sa.selector.as_ref(), &format!("{at}.serviceAccounts.selector"), errors);
    }
    EntityRule {
        nets: cidrs(&entity.nets, &format!("{at}.nets"), errors),
        not_nets: cidrs(&entity.not_nets, &format!("{at}.notNets"), errors),
        selector: entity.selector,
        not_selector: entity.not_selector,
        namespace_selector: entity.namespace_selector,
        ports: ports(&entity.ports, &format!("{at}.ports"), errors),
        not_ports: ports(&entity.not_ports, &format!("{at}.notPorts"), errors),
        service_accounts: entity.service_accounts,
        services: entity.services,
    }
}

fn ports(list: &[IntOrString], at: &str, errors: &mut Vec<FieldError>) -> Vec<PortSpec> {
    list.iter()
        .enumerate()
        .filter_map(|(i, p)| PortSpec::parse(p).map_err(|e| errors.push(FieldError::new(format!("{at}[{i}]"), e))).ok())
        .collect()
}

/// The spec of a `Tier`.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TierSpec {
    /// Order among tiers (lower first; unset is last).
    pub order: Option<f64>,
    /// What happens to traffic a policy of the tier selected but no rule matched: `Deny` (when
    /// unset) or `Pass`.
    pub default_action: Option<Action>,
}

impl TierSpec {
    /// The checked default action.
    pub fn check(&self) -> Result<Action, FieldError> {
        match self.default_action {
            None => Ok(Action::Deny),
            Some(a @ (Action::Deny | Action::Pass)) => Ok(a),
            Some(a) => {
                Err(FieldError::new("spec.defaultAction", format!("{a:?} is not a tier default action (Deny or Pass)")))
            }
        }
    }
}

/// The spec of a `NetworkSet` or `GlobalNetworkSet`.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSetSpec {
    /// CIDRs (or bare IPs) in the set.
    #[serde(default, deserialize_with = "null_as_default")]
    pub nets: Vec<String>,
}

/// A named port of a `HostEndpoint`.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// Port name.
    pub name: String,
    /// Port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP` (a name or a number).
    pub protocol: IntOrString,
}

/// The spec of a `HostEndpoint`.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostEndpointSpec {
    /// The node.
    pub node: Option<String>,
    /// An interface, or `*` for all of the host's namespace.
    pub interface_name: Option<String>,
    /// The endpoint's addresses.
    #[serde(default, rename = "expectedIPs", deserialize_with = "null_as_default")]
    pub expected_ips: Vec<String>,
    /// Profiles applied after policies.
    #[serde(default, deserialize_with = "null_as_default")]
    pub profiles: Vec<String>,
    /// Named ports.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ports: Vec<EndpointPort>,
}

impl NetworkSetSpec {
    /// Checks the spec and builds the set; `namespace` is `None` for a `GlobalNetworkSet`.
    pub fn check(self, namespace: Option<String>, name: String, labels: Labels) -> Result<NetworkSet, Vec<FieldError>> {
        let mut errors = Vec::new();
        let nets = cidrs(&self.nets, "spec.nets", &mut errors);
        if errors.is_empty() { Ok(NetworkSet { namespace, name, labels, nets }) } else { Err(errors) }
    }
}

impl HostEndpointSpec {
    /// Checks the spec and builds the endpoint: a node is required, and an interface name or
    /// expected IPs (Calico finds the interface by them).
    pub fn check(self, name: String, labels: Labels) -> Result<HostEndpoint, Vec<FieldError>> {
        let mut errors = Vec::new();
        let node = self.node.filter(|n| !n.is_empty());
        if node.is_none() {
            errors.push(FieldError::new("spec.node", "required"));
        }
        let interface_name = self.interface_name.filter(|i| !i.is_empty());
        if interface_name.is_none() && self.expected_ips.is_empty() {
            errors.push(FieldError::new("spec.interfaceName", "an interfaceName or expectedIPs is required"));
        }
        let mut expected_ips = Vec::new();
        for (i, ip) in self.expected_ips.iter().enumerate() {
            match ip.parse() {
                Ok(addr) => expected_ips.push(addr),
                Err(_) => errors
                    .push(FieldError::new(format!("spec.expectedIPs[{i}]"), format!("{ip:?} is not an IP address"))),
            }
        }
        let mut named_ports = Vec::new();
        for (i, port) in self.ports.into_iter().enumerate() {
            let before = errors.len();
            if let Err(e) = check_port_name(&port.name) {
                errors.push(FieldError::new(format!("spec.ports[{i}].name"), e));
            }
            if port.port == 0 {
                errors.push(FieldError::new(format!("spec.ports[{i}].port"), "0 is not a port (1-65535)"));
            }
            let protocol = match Protocol::parse(&port.protocol) {
                Ok(Protocol::Tcp | Protocol::Number(6)) => "TCP",
                Ok(Protocol::Udp | Protocol::Number(17)) => "UDP",
                Ok(Protocol::Sctp | Protocol::Number(132)) => "SCTP",
                Ok(_) => {
                    errors
                        .push(FieldError::new(format!("spec.ports[{i}].protocol"), "a named port is TCP, UDP or SCTP"));
                    continue;
                }
                Err(e) => {
                    errors.push(FieldError::new(format!("spec.ports[{i}].protocol"), e));
                    continue;
                }
            };
            if errors.len() == before {
                named_ports.push(NamedPort { name: port.name, port: port.port, protocol: protocol.to_owned() });
            }
        }
        match (node, errors.is_empty()) {
            (Some(node), true) => Ok(HostEndpoint {
                name,
                labels,
                node,
                interface_name,
                expected_ips,
                profiles: self.profiles,
                named_ports,
            }),
            _ => Err(errors),
        }
    }
}
