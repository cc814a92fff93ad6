//! The tier walk: which policies select an endpoint in a direction, which rule decides, and the
//! trace of that decision, for one policy set (enforced, or with staged policies applied).
//!
//! Takes: compiled policies ([`Policy`]) grouped into ordered [`Tier`]s, and a flow seen from one
//! side. Gives: the side's action and its trace entries. Must never: look at anything but its
//! arguments (no cluster state, no I/O), or let a `Log` rule leave an entry.

use std::{cmp::Ordering, net::IpAddr};

use crate::model::{Action, Endpoint};

use super::{admin::AdminPolicy, calico::CalicoPolicy, kube::KubePolicy};

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

    fn selects(&self, subject: &Endpoint, dir: Dir) -> bool {
        match &self.body {
            Body::Kube(p) => p.selects(self.namespace.as_deref().unwrap_or_default(), subject, dir),
            Body::Calico(p) => p.selects(self.namespace.as_deref(), subject, dir),
            Body::Admin(p) => p.selects(subject, dir),
        }
    }

    /// The first rule that matches, as (index, action).
    fn first_match(&self, dir: Dir, flow: &FlowView<'_>) -> Option<(usize, RuleAction)> {
        match &self.body {
            Body::Kube(p) => p.first_match(self.namespace.as_deref().unwrap_or_default(), dir, flow),
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
        let mut tier =
            Tier { name, order, default_action, policies, by_namespace: Default::default(), cluster_wide: Vec::new() };
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

/// Walks `tiers` for `subject` in `dir`.
pub fn evaluate(tiers: &[Tier], subject: &Endpoint, dir: Dir, flow: &FlowView<'_>) -> SideOutcome {
    let mut trace = Vec::new();
    let entry = |trace: &mut Vec<String>, tier: &Tier, policy: &Policy, action: RuleAction, rule: i64| {
        let hit = trace.len();
        trace.push(format!("{hit}|{}|{}|{}|{rule}", tier.name, policy.trace_name(), action.word()));
    };
    for tier in tiers {
        let mut first_selecting: Option<&Policy> = None;
        let mut decided = None;
        let candidates = tier.candidates(subject).iter().map(|&i| &tier.policies[i]);
        for policy in candidates.filter(|p| p.selects(subject, dir)) {
            first_selecting.get_or_insert(policy);
            if let Some((rule, action)) = policy.first_match(dir, flow) {
                entry(&mut trace, tier, policy, action, rule as i64);
                decided = Some(action);
                break;
            }
        }
        let Some(first) = first_selecting else { continue };
        let action = match decided {
            Some(action) => action,
            None => {
                entry(&mut trace, tier, first, tier.default_action, -1);
                tier.default_action
            }
        };
        match action {
            RuleAction::Allow => return SideOutcome { action: Action::Allow, trace: trace.into() },
            RuleAction::Deny => return SideOutcome { action: Action::Deny, trace: trace.into() },
            RuleAction::Pass | RuleAction::Log => {}
        }
    }
    // Nothing selected the endpoint, or every tier that did passed.
    SideOutcome { action: Action::Allow, trace: trace.into() }
}
