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

pub mod admin;
pub mod calico;
pub mod engine;
pub mod kube;

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    cluster::{CalicoPolicyKind, ClusterState, calico::StagedAction},
    model::{Action, Endpoint, EndpointKind, Enforcement, FlowRecord, Observed, Reporter},
};
pub use engine::FlowView;
use engine::{Body, Dir, Entry, Policy, PolicyKind, RuleAction, Selection, SideOutcome, Tier};

/// Order of Kubernetes NetworkPolicies in tier `default` (as Calico places them).
pub const KUBE_POLICY_ORDER: f64 = 1000.0;
/// Order of tier `default`.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// Tier of AdminNetworkPolicies, and its order.
pub const ADMIN_TIER: (&str, f64) = ("kube-admin", 1_000.0);
/// Tier of the BaselineAdminNetworkPolicy, and its order.
pub const BASELINE_TIER: (&str, f64) = ("kube-baseline", 10_000_000.0);

/// ICMPv6 messages that are link control (neighbour discovery, MLD, router discovery), which no
/// policy governs.
fn is_link_control(proto: u8, icmp: Option<(u8, u8)>) -> bool {
    proto == flowaudit_common::proto::ICMPV6 && icmp.is_some_and(|(t, _)| matches!(t, 130..=137 | 143))
}

/// The tiers of one state version, enforced and with staged policies applied.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    enforced: Vec<Tier>,
    pending: Vec<Tier>,
    /// Some rule matches on source ports: verdicts depend on them.
    source_ports: bool,
    /// Some staged policy exists: the pending walk differs from the enforced one.
    staged: bool,
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

/// The name a Calico policy is known by in its tier (without a `<tier>.` prefix).
fn bare_name<'a>(name: &'a str, tier: &str) -> &'a str {
    name.strip_prefix(tier).and_then(|n| n.strip_prefix('.')).unwrap_or(name)
}

/// (kind family, namespace, tier, bare name): what a staged policy stands in for.
type PolicyId = (u8, Option<String>, String, String);

impl PolicySet {
    /// Compiles the policies of `state` into tiers, enforced and with staged policies applied.
    pub fn compile(state: &ClusterState) -> PolicySet {
        let sets = Arc::new(state.network_sets.clone());
        let nodes = Arc::new(state.nodes.clone());
        // Tiers: the built-ins, then the Tier resources (which may also set a built-in's order or
        // default action).
        let mut tiers: BTreeMap<String, (Option<f64>, RuleAction)> = BTreeMap::new();
        tiers.insert(ADMIN_TIER.0.into(), (Some(ADMIN_TIER.1), RuleAction::Pass));
        tiers.insert("default".into(), (Some(DEFAULT_TIER_ORDER), RuleAction::Deny));
        tiers.insert(BASELINE_TIER.0.into(), (Some(BASELINE_TIER.1), RuleAction::Pass));
        for t in &state.tiers {
            let action = match t.default_action {
                crate::cluster::calico::Action::Pass => RuleAction::Pass,
                _ => RuleAction::Deny,
            };
            let order = t.order.or_else(|| tiers.get(&t.name).and_then(|x| x.0));
            tiers.insert(t.name.clone(), (order, action));
        }
        // Enforced policies, each with the id a staged policy would replace.
        let mut enforced: Vec<(String, PolicyId, Policy)> = Vec::new();
        for np in &state.network_policies {
            let id = (0, Some(np.namespace.clone()), "default".to_owned(), np.name.clone());
            enforced.push(("default".into(), id, kube_policy(PolicyKind::Knp, &np.namespace, &np.name, &np.spec)));
        }
        let mut staged: Vec<(String, PolicyId, Option<Policy>)> = Vec::new();
        for cp in &state.calico_policies {
            let tier = cp.tier().to_owned();
            let global = cp.kind.is_global();
            let family = if global { 2 } else { 1 };
            let id = (family, cp.namespace.clone(), tier.clone(), bare_name(&cp.name, &tier).to_owned());
            let kind = match cp.kind {
                CalicoPolicyKind::NetworkPolicy => PolicyKind::Np,
                CalicoPolicyKind::GlobalNetworkPolicy => PolicyKind::Gnp,
                CalicoPolicyKind::StagedNetworkPolicy => PolicyKind::Snp,
                CalicoPolicyKind::StagedGlobalNetworkPolicy => PolicyKind::Sgnp,
            };
            let policy = Policy {
                kind,
                namespace: cp.namespace.clone(),
                name: cp.name.clone(),
                order: cp.spec.order,
                body: Body::Calico(calico::CalicoPolicy::new(&cp.spec, global, sets.clone())),
            };
            if cp.kind.is_staged() {
                match cp.staged_action.unwrap_or(StagedAction::Set) {
                    StagedAction::Set => staged.push((tier, id, Some(policy))),
                    StagedAction::Delete => staged.push((tier, id, None)),
                    StagedAction::Learn | StagedAction::Ignore => {}
                }
            } else {
                enforced.push((tier, id, policy));
            }
        }
        for sk in &state.staged_kube_policies {
            let id = (0, Some(sk.namespace.clone()), "default".to_owned(), sk.name.clone());
            match sk.staged_action {
                StagedAction::Set => staged.push((
                    "default".into(),
                    id,
                    Some(kube_policy(PolicyKind::Sknp, &sk.namespace, &sk.name, &sk.spec)),
                )),
                StagedAction::Delete => staged.push(("default".into(), id, None)),
                StagedAction::Learn | StagedAction::Ignore => {}
            }
        }
        for ap in &state.admin_policies {
            let id = (3, None, ADMIN_TIER.0.to_owned(), ap.name.clone());
            let body = Body::Admin(admin::AdminPolicy::admin(&ap.spec, nodes.clone()));
            enforced.push((
                ADMIN_TIER.0.into(),
                id,
                Policy {
                    kind: PolicyKind::Kanp,
                    namespace: None,
                    name: ap.name.clone(),
                    order: Some(f64::from(ap.priority)),
                    body,
                },
            ));
        }
        if let Some(bp) = &state.baseline_admin_policy {
            let id = (4, None, BASELINE_TIER.0.to_owned(), bp.name.clone());
            let body = Body::Admin(admin::AdminPolicy::baseline(&bp.spec, nodes.clone()));
            enforced.push((
                BASELINE_TIER.0.into(),
                id,
                Policy { kind: PolicyKind::Kbanp, namespace: None, name: bp.name.clone(), order: None, body },
            ));
        }
        let mut pending = enforced.clone();
        let has_staged = !staged.is_empty();
        for (tier, id, policy) in staged {
            pending.retain(|(_, pid, _)| *pid != id);
            if let Some(policy) = policy {
                pending.push((tier, id, policy));
            }
        }
        let build = |list: Vec<(String, PolicyId, Policy)>| -> Vec<Tier> {
            let mut by_tier: BTreeMap<String, Vec<Policy>> = BTreeMap::new();
            for (tier, _, policy) in list {
                by_tier.entry(tier).or_default().push(policy);
            }
            let mut out: Vec<Tier> = by_tier
                .into_iter()
                .map(|(name, policies)| {
                    let (order, default_action) = tiers.get(&name).copied().unwrap_or((None, RuleAction::Deny));
                    Tier::new(name, order, default_action, policies)
                })
                .collect();
            engine::sort_tiers(&mut out);
            out
        };
        let source_ports = state
            .calico_policies
            .iter()
            .any(|cp| calico::CalicoPolicy::new(&cp.spec, cp.kind.is_global(), sets.clone()).uses_source_ports());
        PolicySet { enforced: build(enforced), pending: build(pending), source_ports, staged: has_staged }
    }

    fn side(
        &self,
        mut memo: Option<&mut Memo>,
        subject: &Endpoint,
        keep: Option<&Arc<Endpoint>>,
        dir: Dir,
        flow: &FlowView<'_>,
    ) -> Option<SideVerdict> {
        if !matches!(subject.kind, EndpointKind::Wep | EndpointKind::Hep) {
            return None;
        }
        let mut outcome = |tiers: &[Tier], walk: Walk| match memo.as_deref_mut() {
            Some(memo) => memo.outcome(tiers, walk, subject, keep, dir, flow),
            None => engine::evaluate(tiers, subject, dir, flow),
        };
        let enforced = outcome(&self.enforced, Walk::Enforced);
        let pending = if self.staged { outcome(&self.pending, Walk::Pending) } else { enforced.clone() };
        Some(SideVerdict { enforced, pending })
    }

    /// The verdict of a flow (its endpoints as enrich found them).
    pub fn evaluate(&self, flow: &FlowView<'_>) -> FlowVerdict {
        self.evaluate_with(None, None, None, flow)
    }

    /// [`PolicySet::evaluate`], keeping what it finds per endpoint and per trace in `memo` (which
    /// must be used with this policy set only). `src` and `dst` are the `Arc`s `flow.src` and
    /// `flow.dst` point into, when there are: the memo holds them, so an endpoint it knows by
    /// address is never freed and its address never taken by another while the memo lives.
    fn evaluate_with(
        &self,
        mut memo: Option<&mut Memo>,
        src: Option<&Arc<Endpoint>>,
        dst: Option<&Arc<Endpoint>>,
        flow: &FlowView<'_>,
    ) -> FlowVerdict {
        if is_link_control(flow.proto, flow.icmp) {
            return FlowVerdict { egress: None, ingress: None };
        }
        FlowVerdict {
            egress: flow.src.and_then(|s| self.side(memo.as_deref_mut(), s, src, Dir::Egress, flow)),
            ingress: flow.dst.and_then(|d| self.side(memo, d, dst, Dir::Ingress, flow)),
        }
    }
}

/// Which tiers of a [`PolicySet`] a walk is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Walk {
    Enforced = 0,
    Pending = 1,
}

/// Traces kept per walk; cleared when they reach this size.
const TRACE_LIMIT: usize = 100_000;

/// Which endpoint (by address), direction and walk a [`Selection`] is for.
type SelectionKey = (usize, Dir, Walk);

/// What the tier walk would otherwise recompute for every flow, for one [`PolicySet`]: the
/// policies selecting each endpoint per direction (they depend on the endpoint only), and each
/// distinct trace written out once (records share it).
#[derive(Default)]
struct Memo {
    /// By (endpoint address, direction, walk): the endpoint (held, see
    /// [`PolicySet::evaluate_with`]) and the policies selecting it.
    selections: hashbrown::HashMap<SelectionKey, (Option<Arc<Endpoint>>, Selection)>,
    /// Per walk, the written trace of each list of entries.
    traces: [hashbrown::HashMap<Box<[Entry]>, crate::model::Trace>; 2],
    /// The entries of the walk in progress.
    entries: Vec<Entry>,
}

impl Memo {
    fn outcome(
        &mut self,
        tiers: &[Tier],
        walk: Walk,
        subject: &Endpoint,
        keep: Option<&Arc<Endpoint>>,
        dir: Dir,
        flow: &FlowView<'_>,
    ) -> SideOutcome {
        let key = (std::ptr::from_ref(subject) as usize, dir, walk);
        let (_, selection) =
            self.selections.entry(key).or_insert_with(|| (keep.cloned(), Selection::of(tiers, subject, dir)));
        self.entries.clear();
        let action = engine::walk(tiers, selection, dir, flow, &mut self.entries);
        let traces = &mut self.traces[walk as usize];
        let trace = match traces.get(&self.entries[..]) {
            Some(trace) => trace.clone(),
            None => {
                let trace = engine::render(tiers, &self.entries);
                if traces.len() >= TRACE_LIMIT {
                    traces.clear();
                }
                traces.insert(self.entries.as_slice().into(), trace.clone());
                trace
            }
        };
        SideOutcome { action, trace }
    }
}

fn kube_policy(
    kind: PolicyKind,
    namespace: &str,
    name: &str,
    spec: &k8s_openapi::api::networking::v1::NetworkPolicySpec,
) -> Policy {
    Policy {
        kind,
        namespace: Some(namespace.to_owned()),
        name: name.to_owned(),
        order: Some(KUBE_POLICY_ORDER),
        body: Body::Kube(kube::KubePolicy::new(spec)),
    }
}

/// What a verdict depends on: both ends (as enrich found them, by identity of the shared
/// endpoint), both addresses, protocol, ports and ICMP type.
type CacheKey = (usize, usize, std::net::IpAddr, std::net::IpAddr, u8, Option<u16>, Option<u16>, Option<(u8, u8)>);

/// Verdicts kept per state version; cleared when it reaches this size.
const CACHE_LIMIT: usize = 200_000;

/// The attribute stage.
#[derive(Default)]
pub struct Attributor {
    policies: PolicySet,
    /// Selections and traces of `policies`.
    memo: Memo,
    /// Verdicts by flow: an index into `verdicts` (so an entry is small and a verdict shared by
    /// many flows is one copy).
    cache: hashbrown::HashMap<CacheKey, u32>,
    verdicts: Verdicts,
    /// The trace of a side that has none.
    empty: crate::model::Trace,
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
        self.memo = Memo::default();
        self.cache.clear();
        self.verdicts = Verdicts::default();
        self.since_ns = now_ns;
    }

    /// Fills the verdict fields of `records`.
    pub fn attribute(&mut self, records: &mut [FlowRecord]) {
        // Grown once for the batch rather than doubling (and moving every verdict) as it fills.
        self.cache.reserve(records.len().min(CACHE_LIMIT - self.cache.len().min(CACHE_LIMIT)));
        for r in records {
            let (Some(src_ip), Some(dst_ip)) = (r.source_ip, r.dest_ip) else { continue };
            let icmp = r.icmp_type.map(|t| (t, r.icmp_code.unwrap_or(0)));
            let ptr = |e: &Option<Arc<Endpoint>>| e.as_ref().map_or(0, |e| Arc::as_ptr(e) as usize);
            let key: CacheKey = (
                ptr(&r.context.source),
                ptr(&r.context.dest),
                src_ip,
                dst_ip,
                r.context.proto,
                r.source_port.filter(|_| self.policies.source_ports),
                r.dest_port,
                icmp,
            );
            if self.cache.len() >= CACHE_LIMIT {
                self.cache.clear();
                self.verdicts = Verdicts::default();
            }
            let (policies, memo, verdicts) = (&self.policies, &mut self.memo, &mut self.verdicts);
            let id = *self.cache.entry(key).or_insert_with(|| {
                verdicts.id(policies.evaluate_with(
                    Some(memo),
                    r.context.source.as_ref(),
                    r.context.dest.as_ref(),
                    &FlowView {
                        src: r.context.source.as_deref(),
                        src_ip,
                        dst: r.context.dest.as_deref(),
                        dst_ip,
                        proto: r.context.proto,
                        src_port: r.source_port,
                        dst_port: r.dest_port,
                        icmp,
                    },
                ))
            });
            let verdict = &self.verdicts.list[id as usize];
            let side_fields = |side: Option<&SideVerdict>| match side {
                Some(s) => ((s.enforced.action, s.enforced.trace.clone()), (s.pending.action, s.pending.trace.clone())),
                None => ((Action::Allow, self.empty.clone()), (Action::Allow, self.empty.clone())),
            };
            let (enforced, pending) = match r.reporter {
                Reporter::Src => side_fields(verdict.egress.as_ref()),
                Reporter::Dst => side_fields(verdict.ingress.as_ref()),
                Reporter::Fwd => {
                    let (mut e, mut p) = side_fields(verdict.egress.as_ref());
                    let (e2, p2) = side_fields(verdict.ingress.as_ref());
                    e.0 = verdict.action();
                    p.0 = verdict.pending_action();
                    e.1 = e.1.iter().chain(e2.1.iter()).cloned().collect();
                    p.1 = p.1.iter().chain(p2.1.iter()).cloned().collect();
                    (e, p)
                }
            };
            r.action = enforced.0;
            r.policies.enforced_policies = enforced.1;
            r.pending_action = pending.0;
            r.policies.pending_policies = pending.1;
            r.flow_action = verdict.action();
            r.enforcement =
                enforcement(r.flow_action, r.observed, r.num_flows_started, r.context.first_seen_ns, self.since_ns);
            r.num_violations = u64::from(r.enforcement == Enforcement::Violation);
        }
    }
}

/// A side's actions and traces, by the addresses of its traces: equal keys are equal sides.
type SideKey = Option<(Action, usize, Action, usize)>;

/// The distinct verdicts the cache points to (few: flows between pods alike share one).
#[derive(Default)]
struct Verdicts {
    list: Vec<FlowVerdict>,
    /// By the addresses of their traces (which `list` holds, so no other trace takes them).
    ids: hashbrown::HashMap<[SideKey; 2], u32>,
}

impl Verdicts {
    fn id(&mut self, verdict: FlowVerdict) -> u32 {
        let side = |s: &Option<SideVerdict>| -> SideKey {
            let addr = |t: &crate::model::Trace| Arc::as_ptr(t).cast::<String>() as usize;
            s.as_ref().map(|s| (s.enforced.action, addr(&s.enforced.trace), s.pending.action, addr(&s.pending.trace)))
        };
        let key = [side(&verdict.egress), side(&verdict.ingress)];
        *self.ids.entry(key).or_insert_with(|| {
            self.list.push(verdict);
            (self.list.len() - 1) as u32
        })
    }
}

/// What the packets showed against what the policy says.
pub fn enforcement(
    flow_action: Action,
    observed: Observed,
    started: u64,
    first_seen_ns: u64,
    since_ns: u64,
) -> Enforcement {
    match (flow_action, observed) {
        (Action::Deny, Observed::Established) if started == 0 && first_seen_ns < since_ns => {
            Enforcement::StaleConnection
        }
        (Action::Deny, Observed::Established) => Enforcement::Violation,
        (Action::Allow, Observed::Attempted) => Enforcement::UnexplainedDrop,
        _ => Enforcement::Consistent,
    }
}

#[cfg(test)]
mod tests;
