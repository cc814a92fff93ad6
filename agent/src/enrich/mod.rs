//! enrich: names both ends of each record from the cluster state.
//!
//! Takes: level-0 records and, on every change, a cluster-state version. Gives: the records with
//! `*_name`, `*_name_aggr`, `*_namespace`, `*_type`, `*_labels`, `dest_service_*` and
//! `host_network` filled, and the [`Endpoint`]s in their context for attribute. Must never:
//! evaluate policy, or forget a deleted pod at once: its addresses and cgroups keep naming it
//! for a grace period, so the flows drained after it died are still attributed.
//!
//! Order of lookups per end: the socket's cgroup (a pod named through its cgroup, which is how
//! host-network pods are named), then the address: a pod's IP, a HostEndpoint's expected IP, a
//! Service ClusterIP (the end stays `net`, `dest_service_*` is set), a network set (Calico's
//! precedence: the other end's namespace, then global sets, then other namespaces; longest
//! prefix; name), otherwise `net` with `pvt`/`pub`.

mod cgroups;

use hashbrown::HashMap;
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use flowaudit_common::proto;

use crate::{
    cluster::ClusterState,
    model::{Endpoint, EndpointKind, FlowRecord, RecordLabels, ServiceRef, Text},
};

/// What enrich needs to know.
#[derive(Clone, Debug)]
pub struct EnrichConfig {
    /// The cgroup v2 mount (pods' cgroup annotations are relative to it; kubepods lives under it).
    pub cgroup_root: PathBuf,
    /// How long a deleted pod keeps naming its addresses and cgroups.
    pub grace: Duration,
}

/// Identity of addresses and sockets, for one state version.
pub trait IdentityLookup {
    /// The endpoint that owns `ip`.
    fn by_ip(&self, ip: IpAddr) -> Option<Arc<Endpoint>>;
    /// The pod whose cgroup (or a cgroup below it) has this id.
    fn by_cgroup(&self, id: u64) -> Option<Arc<Endpoint>>;
    /// The Service whose ClusterIP and port these are.
    fn service(&self, ip: IpAddr, port: Option<u16>, proto: u8) -> Option<ServiceRef>;
}

/// Lookup tables built from one [`ClusterState`].
#[derive(Default)]
pub struct Index {
    by_ip: HashMap<IpAddr, Arc<Endpoint>>,
    by_pod: HashMap<(String, String), (Arc<Endpoint>, Vec<IpAddr>)>,
    by_cgroup: HashMap<u64, Arc<Endpoint>>,
    services: HashMap<IpAddr, Vec<ServicePortEntry>>,
    /// Network sets: (net, namespace, the set as an endpoint).
    nets: Vec<(crate::cluster::IpNet, Option<String>, Arc<Endpoint>)>,
}

/// One port of a Service at one ClusterIP.
struct ServicePortEntry {
    port: u16,
    protocol: String,
    service: ServiceRef,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        proto::SCTP => "SCTP",
        _ => "",
    }
}

impl Index {
    /// Builds the tables; cgroup ids are read from the filesystem below `cgroup_root`.
    pub fn build(state: &ClusterState, cgroup_root: &std::path::Path) -> Index {
        let mut index = Index::default();
        // Names and label lists many endpoints share (a namespace, a generateName, the labels
        // of one workload's pods) are one allocation each: records copy pointers to them, and a
        // few shared ones stay in the CPU's caches where one per endpoint would not.
        let mut shared = Shared::default();
        let kubepods = cgroups::kubepods_dirs(cgroup_root);
        // Kubernetes labels every namespace with its name; manifests may leave it out.
        let ns_labels = |ns: &str| {
            let mut labels = state.namespaces.get(ns).map(|n| n.labels.clone()).unwrap_or_default();
            labels.entry("kubernetes.io/metadata.name".into()).or_insert_with(|| ns.to_owned());
            labels
        };
        let sa_labels = |ns: &str, sa: &str| {
            state
                .service_accounts
                .iter()
                .find(|s| s.namespace == ns && s.name == sa)
                .map(|s| s.labels.clone())
                .unwrap_or_default()
        };
        for pod in &state.pods {
            let name_aggr = pod.generate_name.as_ref().map(|g| format!("{g}*")).unwrap_or_else(|| pod.name.clone());
            let endpoint = Arc::new(Endpoint {
                kind: EndpointKind::Wep,
                record_names: (pod.name.as_str().into(), shared.text(&name_aggr), shared.text(&pod.namespace)),
                name: Some(pod.name.clone()),
                name_aggr,
                namespace: Some(pod.namespace.clone()),
                labels: pod.labels.clone(),
                record_labels: shared.labels(&pod.labels),
                namespace_labels: ns_labels(&pod.namespace),
                service_account: Some(pod.service_account.clone()),
                service_account_labels: sa_labels(&pod.namespace, &pod.service_account),
                host_network: pod.host_network,
                named_ports: pod.named_ports.clone(),
                node: pod.node_name.clone(),
            });
            index.by_pod.insert((pod.namespace.clone(), pod.name.clone()), (endpoint.clone(), pod.ips.clone()));
            // A host-network pod's address is its node's: only its cgroup names it.
            if !pod.host_network {
                for ip in &pod.ips {
                    index.by_ip.insert(*ip, endpoint.clone());
                }
            }
        }
        index.scan_cgroups(state, cgroup_root, &kubepods);
        for hep in &state.host_endpoints {
            let endpoint = Arc::new(Endpoint {
                kind: EndpointKind::Hep,
                record_names: (hep.name.as_str().into(), shared.text(&hep.node), shared.text("-")),
                name: Some(hep.name.clone()),
                name_aggr: hep.node.clone(),
                namespace: None,
                labels: hep.labels.clone(),
                record_labels: shared.labels(&hep.labels),
                namespace_labels: Default::default(),
                service_account: None,
                service_account_labels: Default::default(),
                host_network: false,
                named_ports: hep.named_ports.clone(),
                node: Some(hep.node.clone()),
            });
            for ip in &hep.expected_ips {
                index.by_ip.entry(*ip).or_insert_with(|| endpoint.clone());
            }
        }
        for set in &state.network_sets {
            let endpoint = Arc::new(Endpoint {
                kind: EndpointKind::Ns,
                record_names: {
                    let name = shared.text(&set.name);
                    (name.clone(), name, shared.text(set.namespace.as_deref().unwrap_or("-")))
                },
                name: Some(set.name.clone()),
                name_aggr: set.name.clone(),
                namespace: set.namespace.clone(),
                labels: set.labels.clone(),
                record_labels: shared.labels(&set.labels),
                namespace_labels: set.namespace.as_deref().map(ns_labels).unwrap_or_default(),
                service_account: None,
                service_account_labels: Default::default(),
                host_network: false,
                named_ports: Vec::new(),
                node: None,
            });
            for net in &set.nets {
                index.nets.push((*net, set.namespace.clone(), endpoint.clone()));
            }
        }
        for svc in &state.services {
            for ip in &svc.cluster_ips {
                let entry = index.services.entry(*ip).or_default();
                for port in &svc.ports {
                    entry.push(ServicePortEntry {
                        port: port.port,
                        protocol: port.protocol.clone(),
                        service: ServiceRef {
                            namespace: svc.namespace.clone(),
                            name: svc.name.clone(),
                            port: if port.name.is_empty() { "-".into() } else { port.name.clone() },
                        },
                    });
                }
            }
        }
        index
    }
}

/// The shared copies of one [`Index::build`].
#[derive(Default)]
struct Shared {
    texts: HashMap<String, Text>,
    labels: HashMap<BTreeMap<String, String>, RecordLabels>,
}

impl Shared {
    fn text(&mut self, s: &str) -> Text {
        if let Some(t) = self.texts.get(s) {
            return t.clone();
        }
        let t = Text::from(s);
        self.texts.insert(s.to_owned(), t.clone());
        t
    }

    fn labels(&mut self, labels: &BTreeMap<String, String>) -> RecordLabels {
        if let Some(l) = self.labels.get(labels) {
            return l.clone();
        }
        let l = RecordLabels::of(labels);
        self.labels.insert(labels.clone(), l.clone());
        l
    }
}

impl Index {
    /// Maps every pod's cgroup (and the cgroups below it) to the pod.
    fn scan_cgroups(
        &mut self,
        state: &ClusterState,
        cgroup_root: &std::path::Path,
        kubepods: &std::collections::HashMap<String, std::path::PathBuf>,
    ) {
        self.by_cgroup.clear();
        for pod in &state.pods {
            let Some((endpoint, _)) = self.by_pod.get(&(pod.namespace.clone(), pod.name.clone())) else { continue };
            let mut dirs = Vec::new();
            if let Some(rel) = &pod.cgroup {
                dirs.push(cgroup_root.join(rel.trim_start_matches('/')));
            }
            if let Some(dir) = kubepods.get(&pod.uid.replace('_', "-")).filter(|_| !pod.uid.is_empty()) {
                dirs.push(dir.clone());
            }
            for dir in dirs {
                for id in cgroups::ids_below(&dir) {
                    self.by_cgroup.insert(id, endpoint.clone());
                }
            }
        }
    }

    /// The network set holding `ip`, by Calico's rules: a set in `workload_ns` (the namespace of
    /// the flow's other end) first, then global sets, then sets in other namespaces; within each,
    /// the longest prefix; then by name.
    pub fn network_set(&self, ip: IpAddr, workload_ns: Option<&str>) -> Option<Arc<Endpoint>> {
        self.nets
            .iter()
            .filter(|(net, ..)| net.contains(&ip))
            .min_by_key(|(net, ns, ep)| {
                let rank = match ns.as_deref() {
                    Some(n) if Some(n) == workload_ns => 0,
                    None => 1,
                    Some(_) => 2,
                };
                (rank, std::cmp::Reverse(net.prefix_len()), ep.name.clone())
            })
            .map(|(.., ep)| ep.clone())
    }

    /// A pod by namespace and name, with its addresses.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<(Arc<Endpoint>, Vec<IpAddr>)> {
        self.by_pod.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }
}

impl IdentityLookup for Index {
    fn by_ip(&self, ip: IpAddr) -> Option<Arc<Endpoint>> {
        self.by_ip.get(&ip).cloned()
    }

    fn by_cgroup(&self, id: u64) -> Option<Arc<Endpoint>> {
        self.by_cgroup.get(&id).cloned()
    }

    fn service(&self, ip: IpAddr, port: Option<u16>, p: u8) -> Option<ServiceRef> {
        let ports = self.services.get(&ip)?;
        match ports.iter().find(|e| Some(e.port) == port && e.protocol == proto_name(p)) {
            Some(e) => Some(e.service.clone()),
            // The address is the Service's even on a port it does not expose.
            None => ports.first().map(|e| ServiceRef { port: "-".into(), ..e.service.clone() }),
        }
    }
}

/// Sockets in cgroups no pod owns yet make enrich look for new pod cgroups at most this often.
const RESCAN_NS: u64 = 2_000_000_000;

/// The enrich stage: the current index plus the entries of recently deleted pods.
pub struct Enricher {
    cfg: EnrichConfig,
    current: Index,
    /// The state in force (its pods' cgroups are looked for again when unknown ids show up:
    /// the kubelet creates a pod's cgroup after the pod object).
    state: Arc<ClusterState>,
    /// When the cgroups were last scanned (Unix ns).
    scanned_ns: u64,
    /// Addresses and cgroups that vanished, with the time (Unix ns) they stop naming.
    gone_ips: HashMap<IpAddr, (Arc<Endpoint>, u64)>,
    gone_cgroups: HashMap<u64, (Arc<Endpoint>, u64)>,
}

impl Enricher {
    /// A stage with an empty state.
    pub fn new(cfg: EnrichConfig) -> Self {
        Self {
            cfg,
            current: Index::default(),
            state: Arc::default(),
            scanned_ns: 0,
            gone_ips: HashMap::new(),
            gone_cgroups: HashMap::new(),
        }
    }

    /// Installs a new state version observed at `now_ns` (Unix ns).
    pub fn update(&mut self, state: &Arc<ClusterState>, now_ns: u64) {
        let next = Index::build(state, &self.cfg.cgroup_root);
        self.state = state.clone();
        self.scanned_ns = now_ns;
        let until = now_ns + self.cfg.grace.as_nanos() as u64;
        for (ip, ep) in &self.current.by_ip {
            if !next.by_ip.contains_key(ip) {
                self.gone_ips.insert(*ip, (ep.clone(), until));
            }
        }
        for (id, ep) in &self.current.by_cgroup {
            if !next.by_cgroup.contains_key(id) {
                self.gone_cgroups.insert(*id, (ep.clone(), until));
            }
        }
        for ip in next.by_ip.keys() {
            self.gone_ips.remove(ip);
        }
        for id in next.by_cgroup.keys() {
            self.gone_cgroups.remove(id);
        }
        self.current = next;
    }

    fn endpoint(&self, cgroup: Option<u64>, ip: Option<IpAddr>, now_ns: u64) -> Option<&Arc<Endpoint>> {
        fn alive(gone: &(Arc<Endpoint>, u64), now_ns: u64) -> Option<&Arc<Endpoint>> {
            (gone.1 > now_ns).then_some(&gone.0)
        }
        let alive = |gone| alive(gone, now_ns);
        let by_cgroup = |id| self.current.by_cgroup.get(&id).or_else(|| self.gone_cgroups.get(&id).and_then(alive));
        let by_ip = |ip| self.current.by_ip.get(&ip).or_else(|| self.gone_ips.get(&ip).and_then(alive));
        cgroup.and_then(by_cgroup).or_else(|| ip.and_then(by_ip))
    }

    /// Fills the identity fields of `records` (records of the interval ending `now_ns`).
    ///
    /// Records go in chunks of [`CHUNK`]: first the endpoints of the whole chunk are looked up
    /// and the memory the fill reads and writes is asked for ([`prefetch`]), then the chunk is
    /// filled. The lookups of a chunk do not wait for one another, so the CPU fetches their
    /// lines at the same time rather than one record after the other.
    pub fn enrich(&mut self, records: &mut [FlowRecord], now_ns: u64) {
        self.gone_ips.retain(|_, (_, until)| *until > now_ns);
        self.gone_cgroups.retain(|_, (_, until)| *until > now_ns);
        let unknown = |id: &Option<u64>| {
            id.is_some_and(|id| !self.current.by_cgroup.contains_key(&id) && !self.gone_cgroups.contains_key(&id))
        };
        if now_ns.saturating_sub(self.scanned_ns) >= RESCAN_NS
            && records.iter().any(|r| unknown(&r.source_cgroup_id) || unknown(&r.context.dest_cgroup_id))
        {
            let kubepods = cgroups::kubepods_dirs(&self.cfg.cgroup_root);
            let state = self.state.clone();
            self.current.scan_cgroups(&state, &self.cfg.cgroup_root, &kubepods);
            self.scanned_ns = now_ns;
        }
        for start in (0..records.len()).step_by(CHUNK) {
            let chunk_end = records.len().min(start + CHUNK);
            let mut found = [(None, None); CHUNK];
            for (i, ends) in (start..chunk_end).zip(&mut found) {
                // The next chunk's records, while this one's lookups wait for memory.
                prefetch_record(records, i + CHUNK);
                let r = &records[i];
                *ends = (
                    self.endpoint(r.source_cgroup_id, r.source_ip, now_ns),
                    self.endpoint(r.context.dest_cgroup_id, r.dest_ip, now_ns),
                );
                for ep in [ends.0, ends.1].into_iter().flatten() {
                    prefetch(Arc::as_ptr(ep));
                    prefetch(&ep.record_names);
                }
                prefetch(Arc::as_ptr(&r.source_name));
                prefetch(Arc::as_ptr(&r.dest_name));
            }
            for (r, (source, dest)) in records[start..chunk_end].iter_mut().zip(found) {
                self.name(r, source.cloned(), dest.cloned());
            }
        }
    }

    /// Names both ends of `r`, found by socket or address as `source` and `dest`.
    fn name(&self, r: &mut FlowRecord, mut source: Option<Arc<Endpoint>>, mut dest: Option<Arc<Endpoint>>) {
        // Addresses nothing else names may be in a network set, chosen relative to the other end.
        if source.is_none() {
            source = r
                .source_ip
                .and_then(|ip| self.current.network_set(ip, dest.as_ref().and_then(|d| d.namespace.as_deref())));
        }
        if dest.is_none() && r.dest_ip.is_some_and(|ip| self.current.service(ip, None, 0).is_none()) {
            dest = r
                .dest_ip
                .and_then(|ip| self.current.network_set(ip, source.as_ref().and_then(|s| s.namespace.as_deref())));
        }
        if let Some(ep) = &source {
            fill(
                ep,
                &mut r.source_name,
                &mut r.source_name_aggr,
                &mut r.source_namespace,
                &mut r.source_type,
                &mut r.source_labels,
            );
            r.host_network |= ep.host_network;
        }
        if let Some(ep) = &dest {
            fill(
                ep,
                &mut r.dest_name,
                &mut r.dest_name_aggr,
                &mut r.dest_namespace,
                &mut r.dest_type,
                &mut r.dest_labels,
            );
            r.host_network |= ep.host_network;
        }
        if dest.is_none()
            && let Some(ip) = r.dest_ip
            && let Some(svc) = self.current.service(ip, r.dest_port, r.context.proto)
        {
            r.dest_service_name = svc.name.as_str().into();
            r.dest_service_namespace = svc.namespace.as_str().into();
            r.dest_service_port = svc.port.as_str().into();
        }
        r.context.source = source;
        r.context.dest = dest;
    }
}

/// Records per chunk of [`Enricher::enrich`].
const CHUNK: usize = 16;

/// Asks the CPU to bring every cache line of record `i` of `records` closer, if there is one:
/// records are larger than the strides the CPU's own prefetcher follows, and a stage reads a few
/// fields spread over all of their lines.
pub(crate) fn prefetch_record(records: &[FlowRecord], i: usize) {
    if i >= records.len() {
        return;
    }
    let start = records.as_ptr().wrapping_add(i).cast::<u8>();
    for offset in (0..std::mem::size_of::<FlowRecord>()).step_by(64) {
        prefetch(start.wrapping_add(offset));
    }
}

/// Asks the CPU to bring the cache line at `p` closer; no effect on what the program computes.
pub(crate) fn prefetch<T: ?Sized>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of every x86_64 CPU, and a prefetch reads nothing the program sees and
    // never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

fn fill(
    ep: &Endpoint,
    name: &mut Text,
    aggr: &mut Text,
    namespace: &mut Text,
    kind: &mut Text,
    labels: &mut RecordLabels,
) {
    thread_local! {
        static KINDS: [Text; 4] = [Text::from("wep"), Text::from("hep"), Text::from("ns"), Text::from("net")];
    }
    (*name, *aggr, *namespace) = ep.record_names.clone();
    *kind = KINDS.with(|k| k[ep.kind as usize].clone());
    *labels = ep.record_labels.clone();
}

#[cfg(test)]
mod tests;
