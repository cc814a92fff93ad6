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
    cluster::{CalicoPolicyKind, ClusterState, NamedPort, calico::StagedAction, selector::label_selector_matches},
    model::{Action, Endpoint, EndpointKind, Enforcement, FlowRecord, Observed, Reporter, Trace},
};
pub use engine::FlowView;
use engine::{Body, Dir, End, Entry, LabelsOf, Policy, PolicyKind, RuleAction, Selection, SideOutcome, Tier};

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
    /// Ids of the Kubernetes policies' selectors and namespaces.
    ids: kube::Ids,
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
        let mut ids = kube::Ids::default();
        let mut enforced: Vec<(String, PolicyId, Policy)> = Vec::new();
        for np in &state.network_policies {
            let id = (0, Some(np.namespace.clone()), "default".to_owned(), np.name.clone());
            let policy = kube_policy(PolicyKind::Knp, &np.namespace, &np.name, &np.spec, &mut ids);
            enforced.push(("default".into(), id, policy));
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
                    Some(kube_policy(PolicyKind::Sknp, &sk.namespace, &sk.name, &sk.spec, &mut ids)),
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
        PolicySet { enforced: build(enforced), pending: build(pending), source_ports, staged: has_staged, ids }
    }

    fn side(&self, subject: &Endpoint, dir: Dir, flow: &FlowView<'_>) -> Option<SideVerdict> {
        if !matches!(subject.kind, EndpointKind::Wep | EndpointKind::Hep) {
            return None;
        }
        let enforced = engine::evaluate(&self.enforced, subject, dir, flow);
        let pending = if self.staged { engine::evaluate(&self.pending, subject, dir, flow) } else { enforced.clone() };
        Some(SideVerdict { enforced, pending })
    }

    /// The verdict of a flow (its endpoints as enrich found them).
    pub fn evaluate(&self, flow: &FlowView<'_>) -> FlowVerdict {
        self.evaluate_with(None, None, None, flow)
    }

    /// [`PolicySet::evaluate`], keeping what it finds per endpoint, per label set and per trace
    /// in `memo` (which must be used with this policy set only). `src` and `dst` are the `Arc`s
    /// `flow.src` and `flow.dst` point into, when there are: the memo holds them, so an endpoint
    /// it knows by address is never freed and its address never taken by another while the memo
    /// lives.
    fn evaluate_with(
        &self,
        memo: Option<&mut Memo>,
        src: Option<&Arc<Endpoint>>,
        dst: Option<&Arc<Endpoint>>,
        flow: &FlowView<'_>,
    ) -> FlowVerdict {
        if is_link_control(flow.proto, flow.icmp) {
            return FlowVerdict { egress: None, ingress: None };
        }
        let Some(memo) = memo else {
            return FlowVerdict {
                egress: flow.src.and_then(|s| self.side(s, Dir::Egress, flow)),
                ingress: flow.dst.and_then(|d| self.side(d, Dir::Ingress, flow)),
            };
        };
        if memo.traces_full() {
            memo.clear_traces();
        }
        let ids = self.verdict_ids(memo, src, dst, flow);
        let side = |e: u32, p: u32| {
            (e != NO_SIDE).then(|| SideVerdict { enforced: memo.side_outcome(e), pending: memo.side_outcome(p) })
        };
        FlowVerdict { egress: side(ids[0], ids[1]), ingress: side(ids[2], ids[3]) }
    }

    /// The verdict of a flow as [`CompactVerdict`], for [`PolicySet::evaluate_with`] with a memo.
    fn verdict_ids(
        &self,
        memo: &mut Memo,
        src: Option<&Arc<Endpoint>>,
        dst: Option<&Arc<Endpoint>>,
        flow: &FlowView<'_>,
    ) -> CompactVerdict {
        if is_link_control(flow.proto, flow.icmp) {
            return [NO_SIDE; 4];
        }
        let ends = [flow.src.map(|e| memo.known(&self.ids, e, src)), flow.dst.map(|e| memo.known(&self.ids, e, dst))];
        let mut side = |dir: Dir| {
            let Some(subject) = ends[dir.subject() as usize] else { return [NO_SIDE; 2] };
            if !memo.ends[subject as usize].facts.side {
                return [NO_SIDE; 2];
            }
            let enforced = memo.outcome(&self.enforced, Walk::Enforced, dir, ends, flow);
            let pending =
                if self.staged { memo.outcome(&self.pending, Walk::Pending, dir, ends, flow) } else { enforced };
            [enforced, pending]
        };
        let [egress, ingress] = [side(Dir::Egress), side(Dir::Ingress)];
        [egress[0], egress[1], ingress[0], ingress[1]]
    }
}

/// A flow's verdict as the stage keeps it: the source's egress side (enforced, pending), then
/// the destination's ingress side, each a [`SideId`] or [`NO_SIDE`] (both of a side alike).
type CompactVerdict = [u32; 4];

/// One side's action and trace: the trace's index in the memo's trace list, shifted left by one,
/// with the low bit set for deny.
type SideId = u32;

/// An end without a side (not a workload or host endpoint).
const NO_SIDE: u32 = u32::MAX;

fn side_id(action: Action, trace: u32) -> SideId {
    (trace << 1) | u32::from(action == Action::Deny)
}

fn side_action(id: SideId) -> Action {
    if id & 1 == 1 { Action::Deny } else { Action::Allow }
}

/// Which tiers of a [`PolicySet`] a walk is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Walk {
    Enforced = 0,
    Pending = 1,
}

/// Traces kept; forgotten when they reach this many (with the stage's cache, which names them).
const TRACE_LIMIT: usize = 100_000;

/// Selector matches kept per policy set; cleared when they reach this size.
const MATCH_LIMIT: usize = 100_000;

/// What Kubernetes policies ask about an endpoint, as small ids (see [`engine::Ends`]).
#[derive(Clone, Copy, Debug)]
struct Facts {
    /// A workload or host endpoint: it has a side.
    side: bool,
    /// A pod as Kubernetes policies see them.
    pod: bool,
    /// Its namespace's id in the policy set ([`kube::NO_NAMESPACE`]: none, or none with policies).
    namespace: u32,
    /// Its labels, interned in the memo.
    labels: u32,
    /// Its namespace's labels, interned in the memo.
    namespace_labels: u32,
    /// Its named ports, interned in the memo.
    named_ports: u32,
}

/// Not computed yet.
const UNSET: u32 = u32::MAX;

/// One endpoint the memo knows.
struct Known {
    /// The endpoint (held, see [`PolicySet::evaluate_with`]).
    _held: Option<Arc<Endpoint>>,
    facts: Facts,
    /// Per direction and walk, the policies selecting it (an index into `Memo::selections`).
    selections: [u32; 4],
}

/// What the tier walk would otherwise recompute for every flow, for one [`PolicySet`]: per
/// endpoint, the policies selecting it per direction and its labels, namespace and named ports as
/// small ids; per label set, what each selector says of it; each distinct trace written out once
/// (records share it). Endpoints alike share label sets, selections and named ports, so what a
/// flow reads here is little and shared, and stays in the CPU's caches.
#[derive(Default)]
struct Memo {
    /// By endpoint address: its index in `ends`.
    by_address: hashbrown::HashMap<usize, u32>,
    ends: Vec<Known>,
    /// Distinct label sets (of endpoints and of namespaces), by content.
    label_sets: hashbrown::HashMap<BTreeMap<String, String>, u32>,
    /// Distinct named-port lists: by content, and by id.
    port_ids: hashbrown::HashMap<Vec<NamedPort>, u32>,
    ports: Vec<Vec<NamedPort>>,
    /// By (selector id, label set id): whether the selector selects the label set.
    matches: hashbrown::HashMap<(u32, u32), bool>,
    /// Distinct selections: by content, and by id.
    selection_ids: hashbrown::HashMap<Selection, u32>,
    selections: Vec<Selection>,
    /// Per walk, the index in `trace_list` of the written trace of each list of entries.
    traces: [hashbrown::HashMap<Box<[Entry]>, u32>; 2],
    /// The written traces.
    trace_list: Vec<Trace>,
    /// The entries of the walk in progress.
    entries: Vec<Entry>,
}

/// Interns `value` in `ids`: its id, the next one when new.
fn intern<K: std::hash::Hash + Eq + Clone>(ids: &mut hashbrown::HashMap<K, u32>, value: &K) -> u32 {
    if let Some(id) = ids.get(value) {
        return *id;
    }
    let id = ids.len() as u32;
    ids.insert(value.clone(), id);
    id
}

impl Memo {
    /// The index in `ends` of `endpoint` (`keep`: the `Arc` it is in), learnt on first sight.
    fn known(&mut self, ids: &kube::Ids, endpoint: &Endpoint, keep: Option<&Arc<Endpoint>>) -> u32 {
        let address = std::ptr::from_ref(endpoint) as usize;
        if let Some(i) = self.by_address.get(&address) {
            return *i;
        }
        let named_ports = match self.port_ids.get(&endpoint.named_ports) {
            Some(id) => *id,
            None => {
                self.ports.push(endpoint.named_ports.clone());
                intern(&mut self.port_ids, &endpoint.named_ports)
            }
        };
        let facts = Facts {
            side: matches!(endpoint.kind, EndpointKind::Wep | EndpointKind::Hep),
            pod: kube::is_pod(endpoint),
            namespace: ids.namespace(endpoint.namespace.as_deref()),
            labels: intern(&mut self.label_sets, &endpoint.labels),
            namespace_labels: intern(&mut self.label_sets, &endpoint.namespace_labels),
            named_ports,
        };
        let i = self.ends.len() as u32;
        self.ends.push(Known { _held: keep.cloned(), facts, selections: [UNSET; 4] });
        self.by_address.insert(address, i);
        i
    }

    /// Whether the trace list reached [`TRACE_LIMIT`]: its ids are to be forgotten
    /// ([`Memo::clear_traces`]) before the next walk.
    fn traces_full(&self) -> bool {
        self.trace_list.len() >= TRACE_LIMIT
    }

    fn clear_traces(&mut self) {
        self.traces = Default::default();
        self.trace_list.clear();
    }

    /// The action and trace of a [`SideId`].
    fn side_outcome(&self, id: SideId) -> SideOutcome {
        SideOutcome { action: side_action(id), trace: self.trace_list[(id >> 1) as usize].clone() }
    }

    /// The outcome of the side `dir` of a flow whose ends are `ends` (indices in `self.ends`).
    fn outcome(&mut self, tiers: &[Tier], walk: Walk, dir: Dir, ends: [Option<u32>; 2], flow: &FlowView<'_>) -> SideId {
        let Memo { ends: known, ports, matches, selection_ids, selections, traces, trace_list, entries, .. } = self;
        if matches.len() >= MATCH_LIMIT {
            matches.clear();
        }
        let mut view = MemoEnds {
            src: ends[0].map(|i| known[i as usize].facts).zip(flow.src),
            dst: ends[1].map(|i| known[i as usize].facts).zip(flow.dst),
            ports,
            matches,
        };
        let subject = ends[dir.subject() as usize].expect("a side has its subject") as usize;
        let slot = dir as usize * 2 + walk as usize;
        let mut id = known[subject].selections[slot];
        if id == UNSET {
            let selection = Selection::of(tiers, view.get(dir.subject()).expect("known").1, dir, &mut view);
            id = match selection_ids.get(&selection) {
                Some(id) => *id,
                None => {
                    selections.push(selection.clone());
                    intern(selection_ids, &selection)
                }
            };
            known[subject].selections[slot] = id;
        }
        entries.clear();
        let action = engine::walk(tiers, &selections[id as usize], dir, flow, entries, &mut view);
        let traces = &mut traces[walk as usize];
        let trace = match traces.get(&entries[..]) {
            Some(trace) => *trace,
            None => {
                trace_list.push(engine::render(tiers, entries));
                let id = (trace_list.len() - 1) as u32;
                traces.insert(entries.as_slice().into(), id);
                id
            }
        };
        side_id(action, trace)
    }
}

/// [`engine::Ends`] from the memo: facts as ids, selector matches kept per label set.
struct MemoEnds<'a> {
    src: Option<(Facts, &'a Endpoint)>,
    dst: Option<(Facts, &'a Endpoint)>,
    ports: &'a [Vec<NamedPort>],
    matches: &'a mut hashbrown::HashMap<(u32, u32), bool>,
}

impl<'a> MemoEnds<'a> {
    fn get(&self, end: End) -> Option<(Facts, &'a Endpoint)> {
        match end {
            End::Src => self.src,
            End::Dst => self.dst,
        }
    }
}

impl engine::Ends for MemoEnds<'_> {
    fn pod(&self, end: End) -> bool {
        self.get(end).is_some_and(|(f, _)| f.pod)
    }

    fn in_namespace(&self, end: End, id: u32, _name: &str) -> bool {
        self.get(end).is_some_and(|(f, _)| f.namespace == id && id != kube::NO_NAMESPACE)
    }

    fn selects(&mut self, end: End, of: LabelsOf, sel: &kube::Sel) -> bool {
        let Some((f, e)) = self.get(end) else { return false };
        let (set, labels) = match of {
            LabelsOf::Pod => (f.labels, &e.labels),
            LabelsOf::Namespace => (f.namespace_labels, &e.namespace_labels),
        };
        *self.matches.entry((sel.id, set)).or_insert_with(|| label_selector_matches(&sel.selector, labels))
    }

    fn named_port(&self, end: End, name: &str, protocol: &str, port: u16) -> bool {
        self.get(end)
            .is_some_and(|(f, _)| engine::has_named_port(&self.ports[f.named_ports as usize], name, protocol, port))
    }
}

fn kube_policy(
    kind: PolicyKind,
    namespace: &str,
    name: &str,
    spec: &k8s_openapi::api::networking::v1::NetworkPolicySpec,
    ids: &mut kube::Ids,
) -> Policy {
    Policy {
        kind,
        namespace: Some(namespace.to_owned()),
        name: name.to_owned(),
        order: Some(KUBE_POLICY_ORDER),
        body: Body::Kube(kube::KubePolicy::new(namespace, spec, ids)),
    }
}

/// What a verdict depends on: both ends (as enrich found them, by identity of the shared
/// endpoint), both addresses, protocol, ports and ICMP type.
type CacheKey = (usize, usize, std::net::IpAddr, std::net::IpAddr, u8, Option<u16>, Option<u16>, Option<(u8, u8)>);

/// Verdicts kept per state version; cleared when it reaches this size.
const CACHE_LIMIT: usize = 200_000;

/// Verdicts by [`CacheKey`]: the entries in the order they came, and a hash table of their
/// indices. A new flow's entry is appended (memory written in order) and its index is 4 bytes in
/// a table small enough to stay in the CPU's caches, where a table of the entries themselves
/// would take a cache miss for each new flow.
#[derive(Default)]
struct VerdictCache {
    index: hashbrown::HashTable<u32>,
    entries: Vec<(u64, CacheKey, CompactVerdict)>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl VerdictCache {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn clear(&mut self) {
        self.index.clear();
        self.entries.clear();
    }

    fn reserve(&mut self, n: usize) {
        let entries = &self.entries;
        self.index.reserve(n, |&i| entries[i as usize].0);
        self.entries.reserve(n);
    }

    /// The verdict of `key` if it is here, and the key's hash.
    fn get(&self, key: &CacheKey) -> (u64, Option<CompactVerdict>) {
        let hash = std::hash::BuildHasher::hash_one(&self.hasher, key);
        (hash, self.index.find(hash, |&i| self.entries[i as usize].1 == *key).map(|&i| self.entries[i as usize].2))
    }

    /// Keeps `verdict` for `key` (not here yet), whose hash is `hash`.
    fn insert(&mut self, hash: u64, key: CacheKey, verdict: CompactVerdict) {
        let entries = &self.entries;
        self.index.insert_unique(hash, entries.len() as u32, |&i| entries[i as usize].0);
        self.entries.push((hash, key, verdict));
    }
}

/// The attribute stage.
#[derive(Default)]
pub struct Attributor {
    policies: PolicySet,
    /// Selections, facts and traces of `policies`.
    memo: Memo,
    /// Verdicts by flow, as trace ids of the memo (so an entry is small, and a trace shared by
    /// many flows is one copy).
    cache: VerdictCache,
    /// The trace of a side that has none.
    empty: Trace,
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
        self.since_ns = now_ns;
    }

    /// Fills the verdict fields of `records`.
    pub fn attribute(&mut self, records: &mut [FlowRecord]) {
        // Grown once for the batch rather than doubling (and moving every verdict) as it fills.
        self.cache.reserve(records.len().min(CACHE_LIMIT - self.cache.len().min(CACHE_LIMIT)));
        for i in 0..records.len() {
            crate::enrich::prefetch_record(records, i + AHEAD);
            let r = &mut records[i];
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
            // The cache names the memo's traces: both are forgotten together.
            if self.cache.len() >= CACHE_LIMIT || self.memo.traces_full() {
                self.cache.clear();
                self.memo.clear_traces();
            }
            let (hash, cached) = self.cache.get(&key);
            let verdict = cached.unwrap_or_else(|| {
                let flow = FlowView {
                    src: r.context.source.as_deref(),
                    src_ip,
                    dst: r.context.dest.as_deref(),
                    dst_ip,
                    proto: r.context.proto,
                    src_port: r.source_port,
                    dst_port: r.dest_port,
                    icmp,
                };
                self.policies.verdict_ids(&mut self.memo, r.context.source.as_ref(), r.context.dest.as_ref(), &flow)
            });
            // The record first: its atomic operations (trace counts) need not wait for the
            // writes of a new cache entry to reach memory.
            write(r, verdict, &self.memo.trace_list, &self.empty, self.since_ns);
            if cached.is_none() {
                self.cache.insert(hash, key, verdict);
            }
        }
    }
}

/// How many records ahead of the one it works on the stage asks for.
const AHEAD: usize = 4;

/// Writes `verdict` (trace ids into `traces`; `empty`: the trace of no side) into `r`, for a
/// state in force since `since_ns`.
fn write(r: &mut FlowRecord, verdict: CompactVerdict, traces: &[Trace], empty: &Trace, since_ns: u64) {
    let trace = |id: SideId| match id {
        NO_SIDE => empty.clone(),
        id => traces[(id >> 1) as usize].clone(),
    };
    let action = |id: SideId| if id == NO_SIDE { Action::Allow } else { side_action(id) };
    let flow_action = both(Some(action(verdict[0])), Some(action(verdict[2])));
    let (enforced, pending) = match r.reporter {
        Reporter::Src => ((action(verdict[0]), trace(verdict[0])), (action(verdict[1]), trace(verdict[1]))),
        Reporter::Dst => ((action(verdict[2]), trace(verdict[2])), (action(verdict[3]), trace(verdict[3]))),
        Reporter::Fwd => {
            let joined = |a: SideId, b: SideId| trace(a).iter().chain(trace(b).iter()).cloned().collect();
            (
                (flow_action, joined(verdict[0], verdict[2])),
                (both(Some(action(verdict[1])), Some(action(verdict[3]))), joined(verdict[1], verdict[3])),
            )
        }
    };
    r.action = enforced.0;
    r.policies.enforced_policies = enforced.1;
    r.pending_action = pending.0;
    r.policies.pending_policies = pending.1;
    r.flow_action = flow_action;
    r.enforcement = enforcement(r.flow_action, r.observed, r.num_flows_started, r.context.first_seen_ns, since_ns);
    r.num_violations = u64::from(r.enforcement == Enforcement::Violation);
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
