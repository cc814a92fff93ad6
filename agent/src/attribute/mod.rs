//! attribute: the policy engine. For each record, which policies allow or deny it, on each side.
//!
//! Takes: enriched records (their endpoints in the record context) and, on every change, a
//! cluster-state version. Gives: each record's reporter-side `action`, `pending_action` (staged
//! policies applied) and traces, the whole flow's `flow_action`, and `enforcement` (what the
//! packets showed against what the policy says). Must never: change a record's counts or names,
//! or read the cluster state but through the compiled [`PolicySet`] of one version.
//!
//! Semantics (DESIGN.md §3): per direction per endpoint, walk the tiers by order; in a tier, the
//! policies selecting the endpoint in that direction, by order then name; the first matching rule
//! decides (Allow and Deny end, Pass goes to the next tier, Log leaves no entry); a tier that
//! selected the endpoint without a match applies its default action (an entry with rule `-1`
//! naming the tier's first selecting policy); nothing selected it anywhere: allow with an empty
//! trace. A flow is allowed only if the source's egress and the destination's ingress allow it;
//! an end that is not a workload or host endpoint has no side. Kubernetes NetworkPolicies live in
//! tier `default` (order 1,000,000, default Deny) at order 1000.

pub mod engine;
pub mod kube;
pub mod selector;

use std::net::IpAddr;

use crate::{
    cluster::ClusterState,
    model::{Action, Endpoint, EndpointKind, Enforcement, FlowRecord, Observed, Reporter},
};
use engine::{Body, Dir, FlowView, Policy, PolicyKind, RuleAction, SideOutcome, Tier};

/// Order of Kubernetes NetworkPolicies in tier `default` (as Calico places them).
pub const KUBE_POLICY_ORDER: f64 = 1000.0;
/// Order of tier `default`.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;

/// The tiers of one state version, enforced and with staged policies applied.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    enforced: Vec<Tier>,
    pending: Vec<Tier>,
}

/// One side's verdict, enforced and pending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideVerdict {
    /// Enforced action and trace.
    pub enforced: SideOutcome,
    /// With staged policies applied.
    pub pending: SideOutcome,
}

/// The verdict of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowVerdict {
    /// The source's egress side (`None`: the source is not a workload or host endpoint).
    pub egress: Option<SideVerdict>,
    /// The destination's ingress side.
    pub ingress: Option<SideVerdict>,
}

fn both(a: Option<Action>, b: Option<Action>) -> Action {
    if a == Some(Action::Deny) || b == Some(Action::Deny) { Action::Deny } else { Action::Allow }
}

impl FlowVerdict {
    /// Source egress AND destination ingress.
    pub fn action(&self) -> Action {
        both(self.egress.as_ref().map(|s| s.enforced.action), self.ingress.as_ref().map(|s| s.enforced.action))
    }

    /// The same with staged policies applied.
    pub fn pending_action(&self) -> Action {
        both(self.egress.as_ref().map(|s| s.pending.action), self.ingress.as_ref().map(|s| s.pending.action))
    }
}

fn default_tier(policies: Vec<Policy>) -> Tier {
    let mut t = Tier { name: "default".into(), order: Some(DEFAULT_TIER_ORDER), default_action: RuleAction::Deny, policies };
    engine::sort_policies(&mut t.policies);
    t
}

impl PolicySet {
    /// Compiles the policies of `state`.
    pub fn compile(state: &ClusterState) -> PolicySet {
        let kube: Vec<Policy> = state
            .network_policies
            .iter()
            .map(|np| Policy {
                kind: PolicyKind::Knp,
                namespace: Some(np.namespace.clone()),
                name: np.name.clone(),
                order: Some(KUBE_POLICY_ORDER),
                body: Body::Kube(kube::KubePolicy::new(&np.spec)),
            })
            .collect();
        let mut enforced = vec![default_tier(kube.clone())];
        let mut pending = vec![default_tier(kube)];
        engine::sort_tiers(&mut enforced);
        engine::sort_tiers(&mut pending);
        PolicySet { enforced, pending }
    }

    fn side(&self, subject: &Endpoint, dir: Dir, flow: &FlowView<'_>) -> Option<SideVerdict> {
        if !matches!(subject.kind, EndpointKind::Wep | EndpointKind::Hep) {
            return None;
        }
        Some(SideVerdict {
            enforced: engine::evaluate(&self.enforced, subject, dir, flow),
            pending: engine::evaluate(&self.pending, subject, dir, flow),
        })
    }

    /// The verdict of a flow between two addresses with the endpoints found for them.
    pub fn evaluate(
        &self,
        src: Option<&Endpoint>,
        src_ip: IpAddr,
        dst: Option<&Endpoint>,
        dst_ip: IpAddr,
        proto: u8,
        dst_port: Option<u16>,
    ) -> FlowVerdict {
        let flow = FlowView { src, src_ip, dst, dst_ip, proto, dst_port };
        FlowVerdict {
            egress: src.and_then(|s| self.side(s, Dir::Egress, &flow)),
            ingress: dst.and_then(|d| self.side(d, Dir::Ingress, &flow)),
        }
    }
}

/// The attribute stage.
#[derive(Default)]
pub struct Attributor {
    policies: PolicySet,
    /// When the current state took effect (Unix ns): connections older than this that it denies
    /// are stale, not violations.
    since_ns: u64,
}

impl Attributor {
    /// A stage with no policy (everything allowed).
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a state version that took effect at `now_ns`.
    pub fn update(&mut self, state: &ClusterState, now_ns: u64) {
        self.policies = PolicySet::compile(state);
        self.since_ns = now_ns;
    }

    /// Fills the verdict fields of `records`.
    pub fn attribute(&self, records: &mut [FlowRecord]) {
        for r in records {
            let (Some(src_ip), Some(dst_ip)) = (r.source_ip, r.dest_ip) else { continue };
            let verdict = self.policies.evaluate(
                r.context.source.as_deref(),
                src_ip,
                r.context.dest.as_deref(),
                dst_ip,
                r.context.proto,
                r.dest_port,
            );
            let (enforced, pending) = match r.reporter {
                Reporter::Src => side_fields(verdict.egress.as_ref()),
                Reporter::Dst => side_fields(verdict.ingress.as_ref()),
                Reporter::Fwd => {
                    let (mut e, mut p) = side_fields(verdict.egress.as_ref());
                    let (e2, p2) = side_fields(verdict.ingress.as_ref());
                    e.0 = verdict.action();
                    p.0 = verdict.pending_action();
                    e.1.extend(e2.1);
                    p.1.extend(p2.1);
                    (e, p)
                }
            };
            r.action = enforced.0;
            r.policies.enforced_policies = enforced.1;
            r.pending_action = pending.0;
            r.policies.pending_policies = pending.1;
            r.flow_action = verdict.action();
            r.enforcement = enforcement(r.flow_action, r.observed, r.num_flows_started, r.context.first_seen_ns, self.since_ns);
            r.num_violations = u64::from(r.enforcement == Enforcement::Violation);
        }
    }
}

type Fields = (Action, Vec<String>);

fn side_fields(side: Option<&SideVerdict>) -> (Fields, Fields) {
    match side {
        Some(s) => ((s.enforced.action, s.enforced.trace.clone()), (s.pending.action, s.pending.trace.clone())),
        None => ((Action::Allow, Vec::new()), (Action::Allow, Vec::new())),
    }
}

/// What the packets showed against what the policy says.
pub fn enforcement(flow_action: Action, observed: Observed, started: u64, first_seen_ns: u64, since_ns: u64) -> Enforcement {
    match (flow_action, observed) {
        (Action::Deny, Observed::Established) if started == 0 && first_seen_ns < since_ns => Enforcement::StaleConnection,
        (Action::Deny, Observed::Established) => Enforcement::Violation,
        (Action::Allow, Observed::Attempted) => Enforcement::UnexplainedDrop,
        _ => Enforcement::Consistent,
    }
}

#[cfg(test)]
mod tests;
