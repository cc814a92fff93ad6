//! The tier walk: which policies select an endpoint in a direction, which rule decides, and the
//! trace of that decision, for one policy set (enforced, or with staged policies applied).
//!
//! Takes: compiled policies ([`Policy`]) grouped into ordered [`Tier`]s, and a flow seen from one
//! side. Gives: the side's action and its trace entries. Must never: look at anything but its
//! arguments (no cluster state, no I/O), or let a `Log` rule leave an entry.

use std::{cmp::Ordering, net::IpAddr};

use crate::{
    cluster::{NamedPort, selector::label_selector_matches},
    model::{Action, Endpoint},
};

use super::{
    admin::AdminPolicy,
    calico::CalicoPolicy,
    kube::{self, KubePolicy, Sel},
};

/// Direction of a side: the destination's ingress or the source's egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Traffic into the subject.
    Ingress,
    /// Traffic out of the subject.
    Egress,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// Allow: the side is decided.
    Allow,
    /// Deny: the side is decided.
    Deny,
    /// Skip the rest of this tier; the next tier decides.
    Pass,
    /// Log and continue: leaves no trace entry.
    Log,
}

impl RuleAction {
    fn word(self) -> &'static str {
        match self {
            RuleAction::Allow => "allow",
            RuleAction::Deny => "deny",
            RuleAction::Pass => "pass",
            RuleAction::Log => "log",
        }
    }
}

/// Short kind codes of trace entries (Calico's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// Kubernetes NetworkPolicy.
    Knp,
    /// Calico NetworkPolicy.
    Np,
    /// Calico GlobalNetworkPolicy.
    Gnp,
    /// StagedNetworkPolicy.
    Snp,
    /// StagedGlobalNetworkPolicy.
    Sgnp,
    /// StagedKubernetesNetworkPolicy.
    Sknp,
    /// AdminNetworkPolicy.
    Kanp,
    /// BaselineAdminNetworkPolicy.
    Kbanp,
}

impl PolicyKind {
    /// The code written in traces.
    pub fn code(self) -> &'static str {
        match self {
            PolicyKind::Knp => "knp",
            PolicyKind::Np => "np",
            PolicyKind::Gnp => "gnp",
            PolicyKind::Snp => "snp",
            PolicyKind::Sgnp => "sgnp",
            PolicyKind::Sknp => "sknp",
            PolicyKind::Kanp => "kanp",
            PolicyKind::Kbanp => "kbanp",
        }
    }
}

/// The flow as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct FlowView<'a> {
    /// Source endpoint, if it is one.
    pub src: Option<&'a Endpoint>,
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination endpoint, if it is one.
    pub dst: Option<&'a Endpoint>,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (TCP, UDP, SCTP).
    pub src_port: Option<u16>,
    /// Destination port (TCP, UDP, SCTP).
    pub dst_port: Option<u16>,
    /// ICMP type and code (ICMP flows).
    pub icmp: Option<(u8, u8)>,
}

/// One end of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// The source.
    Src,
    /// The destination.
    Dst,
}

impl Dir {
    /// The end whose side this direction is: the source's egress, the destination's ingress.
    pub fn subject(self) -> End {
        match self {
            Dir::Ingress => End::Dst,
            Dir::Egress => End::Src,
        }
    }
}

/// Whose labels a Kubernetes label selector is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelsOf {
    /// The pod's.
    Pod,
    /// Its namespace's.
    Namespace,
}

/// What Kubernetes policies ask about the ends of a flow: answered from the endpoints themselves
/// ([`FromEndpoints`]), or from what the attribute stage keeps per endpoint and per label set.
/// Every implementation gives the answers of [`FromEndpoints`].
pub trait Ends {
    /// Whether `end` is a pod Kubernetes policies see ([`kube::is_pod`]).
    fn pod(&self, end: End) -> bool;
    /// Whether `end` is in the namespace `name`, whose id in the policy set is `id`.
    fn in_namespace(&self, end: End, id: u32, name: &str) -> bool;
    /// Whether `sel` selects the labels of `end` (`of`: its own or its namespace's).
    fn selects(&mut self, end: End, of: LabelsOf, sel: &Sel) -> bool;
    /// Whether `end` has a container port `name` of `protocol` numbered `port`.
    fn named_port(&self, end: End, name: &str, protocol: &str, port: u16) -> bool;
}

/// [`Ends`] read from the endpoints of a flow.
#[derive(Clone, Copy, Debug)]
pub struct FromEndpoints<'a> {
    /// The source endpoint.
    pub src: Option<&'a Endpoint>,
    /// The destination endpoint.
    pub dst: Option<&'a Endpoint>,
}

impl<'a> FromEndpoints<'a> {
    /// The ends of `flow`.
    pub fn of(flow: &FlowView<'a>) -> Self {
        FromEndpoints { src: flow.src, dst: flow.dst }
    }

    fn get(&self, end: End) -> Option<&'a Endpoint> {
        match end {
            End::Src => self.src,
            End::Dst => self.dst,
        }
    }
}

/// Whether `ep` has a container port `name` of `protocol` numbered `port`.
pub fn has_named_port(ports: &[NamedPort], name: &str, protocol: &str, port: u16) -> bool {
    ports.iter().any(|np| np.name == name && np.protocol == protocol && np.port == port)
}

impl Ends for FromEndpoints<'_> {
    fn pod(&self, end: End) -> bool {
        self.get(end).is_some_and(kube::is_pod)
    }

    fn in_namespace(&self, end: End, _id: u32, name: &str) -> bool {
        self.get(end).is_some_and(|e| e.namespace.as_deref() == Some(name))
    }

    fn selects(&mut self, end: End, of: LabelsOf, sel: &Sel) -> bool {
        self.get(end).is_some_and(|e| {
            label_selector_matches(
                &sel.selector,
                match of {
                    LabelsOf::Pod => &e.labels,
                    LabelsOf::Namespace => &e.namespace_labels,
                },
            )
        })
    }

    fn named_port(&self, end: End, name: &str, protocol: &str, port: u16) -> bool {
        self.get(end).is_some_and(|e| has_named_port(&e.named_ports, name, protocol, port))
    }
}

/// How a compiled policy selects and matches; one variant per policy family.
#[derive(Clone, Debug)]
pub enum Body {
    /// A Kubernetes NetworkPolicy (or its staged counterpart).
    Kube(KubePolicy),
    /// A Calico NetworkPolicy or GlobalNetworkPolicy (or a staged one).
    Calico(CalicoPolicy),
    /// An AdminNetworkPolicy or BaselineAdminNetworkPolicy.
    Admin(AdminPolicy),
}

/// One compiled policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Kind code.
    pub kind: PolicyKind,
    /// Namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Order in its tier (`None`: after every ordered policy).
    pub order: Option<f64>,
    /// Selection and rules.
    pub body: Body,
}

impl Policy {
    /// `knp:ns/name` or `gnp:name`.
    pub fn trace_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}:{ns}/{}", self.kind.code(), self.name),
            None => format!("{}:{}", self.kind.code(), self.name),
        }
    }

    /// Whether the policy selects `subject` (the flow's end for `dir`, as `ends` see it).
    fn selects(&self, subject: &Endpoint, dir: Dir, ends: &mut impl Ends) -> bool {
        match &self.body {
            Body::Kube(p) => p.selects(self.namespace.as_deref().unwrap_or_default(), dir.subject(), dir, ends),
            Body::Calico(p) => p.selects(self.namespace.as_deref(), subject, dir),
            Body::Admin(p) => p.selects(subject, dir),
        }
    }

    /// The first rule that matches, as (index, action).
    fn first_match(&self, dir: Dir, flow: &FlowView<'_>, ends: &mut impl Ends) -> Option<(usize, RuleAction)> {
        match &self.body {
            Body::Kube(p) => p.first_match(self.namespace.as_deref().unwrap_or_default(), dir, flow, ends),
            Body::Calico(p) => p.first_match(self.namespace.as_deref(), dir, flow),
            Body::Admin(p) => p.first_match(dir, flow),
        }
    }
}

/// A tier and its policies, in evaluation order.
#[derive(Clone, Debug)]
pub struct Tier {
    /// Name.
    pub name: String,
    /// Order (`None`: after every ordered tier).
    pub order: Option<f64>,
    /// Applied when a policy of the tier selected the endpoint and no rule matched.
    pub default_action: RuleAction,
    /// Policies, sorted by [`sort_policies`].
    pub policies: Vec<Policy>,
    /// Each policy's [`Policy::trace_name`], written once.
    trace_names: Vec<String>,
    /// Per namespace, the policies that can select an endpoint there (its own namespaced
    /// policies and every cluster-wide one), in evaluation order; see [`Tier::index`].
    by_namespace: std::collections::HashMap<String, Vec<usize>>,
    /// The cluster-wide policies (for endpoints without a namespace, and namespaces without
    /// policies of their own).
    cluster_wide: Vec<usize>,
}

impl Tier {
    /// A tier of `policies` (sorted and indexed here).
    pub fn new(name: String, order: Option<f64>, default_action: RuleAction, mut policies: Vec<Policy>) -> Tier {
        sort_policies(&mut policies);
        let trace_names = policies.iter().map(Policy::trace_name).collect();
        let mut tier = Tier {
            name,
            order,
            default_action,
            policies,
            trace_names,
            by_namespace: Default::default(),
            cluster_wide: Vec::new(),
        };
        tier.index();
        tier
    }

    /// Indexes policies by the namespace they can select in, so one endpoint's walk visits only
    /// the policies that can select it, not all of them.
    fn index(&mut self) {
        self.cluster_wide = (0..self.policies.len()).filter(|&i| self.policies[i].namespace.is_none()).collect();
        let mut by_ns: std::collections::HashMap<String, Vec<usize>> = Default::default();
        for (i, p) in self.policies.iter().enumerate() {
            if let Some(ns) = &p.namespace {
                by_ns.entry(ns.clone()).or_default().push(i);
            }
        }
        for list in by_ns.values_mut() {
            list.extend(self.cluster_wide.iter().copied());
            list.sort_unstable();
        }
        self.by_namespace = by_ns;
    }

    fn candidates(&self, subject: &Endpoint) -> &[usize] {
        subject.namespace.as_ref().and_then(|ns| self.by_namespace.get(ns)).map_or(&self.cluster_wide, Vec::as_slice)
    }
}

fn by_order(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Sorts policies by order (none last), then name, then kind.
pub fn sort_policies(policies: &mut [Policy]) {
    policies
        .sort_by(|a, b| by_order(a.order, b.order).then_with(|| a.name.cmp(&b.name)).then_with(|| a.kind.cmp(&b.kind)));
}

/// Sorts tiers by order (none last), then name.
pub fn sort_tiers(tiers: &mut [Tier]) {
    tiers.sort_by(|a, b| by_order(a.order, b.order).then_with(|| a.name.cmp(&b.name)));
}

/// The outcome of one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideOutcome {
    /// Allow or deny.
    pub action: Action,
    /// Trace entries, `<hit>|<tier>|<kind>:<ns>/<name>|<action>|<rule>`.
    pub trace: crate::model::Trace,
}

/// One trace entry before it is written out: the tier and the policy (indices into the tiers
/// walked), what it did and the rule that did it (`-1`: the tier's default action).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    tier: u32,
    policy: u32,
    action: RuleAction,
    rule: i64,
}

/// The policies that select one endpoint in one direction: per tier that selects it (in tier
/// order), the indices of its selecting policies in evaluation order. It depends on the endpoint
/// and the direction only, so it can be kept per endpoint for a state version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selection(Vec<(u32, Vec<u32>)>);

impl Selection {
    /// The policies of `tiers` that select `subject` in `dir` (`subject` is the end
    /// `dir.subject()` of the flow `ends` describe).
    pub fn of(tiers: &[Tier], subject: &Endpoint, dir: Dir, ends: &mut impl Ends) -> Selection {
        let mut out = Vec::new();
        for (t, tier) in tiers.iter().enumerate() {
            let selecting: Vec<u32> = tier
                .candidates(subject)
                .iter()
                .filter(|&&i| tier.policies[i].selects(subject, dir, ends))
                .map(|&i| i as u32)
                .collect();
            if !selecting.is_empty() {
                out.push((t as u32, selecting));
            }
        }
        Selection(out)
    }
}

/// Walks the tiers `selection` names for a flow in `dir` (its ends as `ends` see them): the
/// side's action, and its trace entries pushed to `entries`.
pub fn walk(
    tiers: &[Tier],
    selection: &Selection,
    dir: Dir,
    flow: &FlowView<'_>,
    entries: &mut Vec<Entry>,
    ends: &mut impl Ends,
) -> Action {
    for (t, selecting) in &selection.0 {
        let tier = &tiers[*t as usize];
        let decided = selecting.iter().find_map(|&p| {
            tier.policies[p as usize].first_match(dir, flow, ends).map(|(rule, action)| (p, action, rule as i64))
        });
        // A tier that selected the endpoint without a match applies its default action, naming
        // its first selecting policy.
        let (policy, action, rule) = decided.unwrap_or((selecting[0], tier.default_action, -1));
        entries.push(Entry { tier: *t, policy, action, rule });
        match action {
            RuleAction::Allow => return Action::Allow,
            RuleAction::Deny => return Action::Deny,
            RuleAction::Pass | RuleAction::Log => {}
        }
    }
    // Nothing selected the endpoint, or every tier that did passed.
    Action::Allow
}

/// Writes out trace entries of `tiers`.
pub fn render(tiers: &[Tier], entries: &[Entry]) -> crate::model::Trace {
    entries
        .iter()
        .enumerate()
        .map(|(hit, e)| {
            let tier = &tiers[e.tier as usize];
            format!("{hit}|{}|{}|{}|{}", tier.name, tier.trace_names[e.policy as usize], e.action.word(), e.rule)
        })
        .collect()
}

/// Walks `tiers` for `subject` in `dir`.
pub fn evaluate(tiers: &[Tier], subject: &Endpoint, dir: Dir, flow: &FlowView<'_>) -> SideOutcome {
    let mut entries = Vec::new();
    let mut ends = FromEndpoints::of(flow);
    let action = walk(tiers, &Selection::of(tiers, subject, dir, &mut ends), dir, flow, &mut entries, &mut ends);
    SideOutcome { action, trace: render(tiers, &entries) }
}
