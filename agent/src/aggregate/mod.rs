//! aggregate: kernel observations of one interval → flow-log records.
//!
//! Takes: a [`CaptureBatch`] per flush interval. Gives: [`FlowRecord`]s, one per connection and
//! reporter (level 0) or per group of connections (level 1). Must never: count a packet twice in
//! one record, touch the kernel or files, or look up identity (that is enrich's job).
//!
//! How a record is built (documented in `docs/flow-logs.md`):
//! - **Connections.** Observations of both directions of a connection share one entry, keyed by
//!   protocol and the two endpoints (ICMP echo: the identifier). The initiator (the record's
//!   source) is the sender of the first SYN (TCP), of the echo request (ICMP echo), or of the
//!   first packet seen (others). Connections that may predate the agent — TCP seen with no SYN,
//!   and any non-ICMP flow first seen in the agent's first interval — take the endpoint with the
//!   higher port as initiator (servers listen on low ports); equal ports: the earliest sender.
//!   A SYN-ACK alone names its receiver as the initiator.
//! - **Sides.** Each observation belongs to one side: cgroup egress and TC ingress on a pod
//!   interface to the packet's sender, cgroup ingress and TC egress on a pod interface to its
//!   receiver; TC on a host interface is transit. A side exists when it has an observation:
//!   `src` (the initiator's side), `dst`, and `fwd` only when neither end is local.
//! - **One observation wins** per side and direction, so each packet counts once: the pod
//!   interface (the endpoint's own link, which also sees what the kernel sends for it, such as a
//!   RST), then the socket (cgroup hook), then a host interface; among equals, the most packets,
//!   then ingress, then the lowest interface index.
//! - **Completion.** TCP completes on RST or a FIN from each side; others after `idle_timeout`
//!   without packets, reported in the interval they expire in, with zero counts.
//! - **Memory.** At most `max_connections` connections are remembered. A new connection seen
//!   while the map is full gets its records from its own observations (counts exact) but is not
//!   remembered: it gets no completion record, and if seen again it is new again. Each is
//!   counted ([`Aggregator::untracked`]).
//!   Its per-batch buffers, and the records the pipeline hands back once written
//!   ([`Aggregator::recycle`]), are kept emptied for the next batch, and given back after a
//!   flood once batches have been far smaller for a few dozen intervals.
//! - Records leave at aggregation level 0 (one per connection and reporter); rollup applies the
//!   configured level once attribute has given each its verdict.

use std::{net::IpAddr, sync::Arc, time::Duration};

use flowaudit_common::{proto, tcp_flags};
// hashbrown's default hasher (foldhash, seeded per map) instead of std's SipHash: every
// observation and record is hashed here once or twice per interval.
use hashbrown::{HashMap, HashSet};

use crate::model::{
    Action, CaptureBatch, Enforcement, FlowRecord, Hook, IfaceRole, Observation, Observed, Policies, RecordContext,
    Reporter, Text, push_decimal, push_ip, record_id_of,
};

/// What aggregate needs to know.
#[derive(Clone, Debug)]
pub struct AggregateConfig {
    /// Node name for `host` and record ids.
    pub node: String,
    /// Completion timeout of UDP/ICMP/other flows.
    pub idle_timeout: Duration,
    /// A TCP connection with no packets and no FIN/RST for this long is forgotten.
    pub tcp_idle_timeout: Duration,
    /// Connections remembered between intervals at most (`max_connections`). A new connection
    /// seen while this many are remembered still gets its records, but is not remembered:
    /// counted by [`Aggregator::untracked`].
    pub max_connections: usize,
}

/// How long a completed TCP connection is remembered, so late packets (the last ACK, a
/// retransmitted FIN) join it instead of opening a new one. Linux's TIME_WAIT length.
const TCP_LINGER: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Endpoint {
    ip: IpAddr,
    port: u16,
}

/// ICMP echo flows are keyed by identifier; other ICMP messages by type and code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Extra {
    None,
    Echo(u16),
    Icmp(u8, u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConnKey {
    proto: u8,
    lo: Endpoint,
    hi: Endpoint,
    extra: Extra,
}

impl std::hash::Hash for ConnKey {
    /// Every field in one buffer and one `write`: SipHash costs a round per call, and the
    /// derived impl makes about a dozen (a key is hashed at least twice per connection and batch).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut b = [0u8; 42];
        b[0] = self.proto;
        let endpoint = |b: &mut [u8], e: &Endpoint| {
            match e.ip {
                IpAddr::V4(v4) => b[1..5].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => {
                    b[0] = 6;
                    b[1..17].copy_from_slice(&v6.octets());
                }
            }
            b[17..19].copy_from_slice(&e.port.to_le_bytes());
        };
        endpoint(&mut b[1..20], &self.lo);
        endpoint(&mut b[20..39], &self.hi);
        match self.extra {
            Extra::None => {}
            Extra::Echo(id) => {
                b[39] = 1;
                b[40..42].copy_from_slice(&id.to_le_bytes());
            }
            Extra::Icmp(t, c) => {
                b[39] = 2;
                b[40] = t;
                b[41] = c;
            }
        }
        state.write(&b);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Side {
    Src,
    Dst,
    Transit,
}

#[derive(Debug)]
struct Conn {
    initiator: Endpoint,
    responder: Endpoint,
    /// ICMP type/code of the initiator's messages.
    icmp: Option<(u8, u8)>,
    last_seen_ns: u64,
    fwd_flags: u64,
    rev_flags: u64,
    replied: bool,
    completed_at_ns: Option<u64>,
    /// Reporters that wrote a record of it: bit `1 << reporter as u8`.
    reporters: u8,
    source_cgroup_id: Option<u64>,
    dest_cgroup_id: Option<u64>,
    first_seen_ns: u64,
    /// A destination-unreachable message named this connection.
    refused: bool,
    /// It has observations in the batch being processed (cleared by [`Aggregator::expire`]).
    seen: bool,
}

/// The aggregate stage. Keeps connection state between intervals.
pub struct Aggregator {
    cfg: AggregateConfig,
    conns: HashMap<ConnKey, Conn>,
    first_batch: bool,
    untracked: u64,
    texts: Texts,
    scratch: Scratch,
}

/// Buffers of [`Aggregator::process`] kept between intervals, emptied: a batch is tens of
/// megabytes, and memory freshly mapped for each one costs the kernel a page fault and a zeroed
/// page per 4 KiB (a quarter of the agent's CPU before they were kept). After a flood they are
/// given back ([`recycle`]).
#[derive(Default)]
struct Scratch {
    index: HashMap<ConnKey, usize>,
    keys: Vec<ConnKey>,
    group_of: Vec<usize>,
    starts: Vec<usize>,
    positions: Vec<usize>,
    sides: Vec<SideRecord>,
    order: Vec<SortKey>,
    /// The previous batch's records, handed back by [`Aggregator::recycle`].
    records: Vec<FlowRecord>,
    /// High-water marks of a batch's observations and records that decay by 1/16 per batch, so
    /// a quiet interval keeps the memory of busy ones, and a flood's goes back after a few dozen
    /// intervals of far smaller batches.
    recent_observations: usize,
    recent_records: usize,
}

impl Scratch {
    /// Notes this batch's sizes; gives the decayed high-water marks (observations, records).
    fn note(&mut self, observations: usize, records: usize) -> (usize, usize) {
        let decay = |recent: usize, now: usize| now.max(recent - recent / 16);
        self.recent_observations = decay(self.recent_observations, observations);
        self.recent_records = decay(self.recent_records, records);
        (self.recent_observations, self.recent_records)
    }
}

/// Empties `v` for reuse, giving its memory back when it is far larger than `recent` (what the
/// last batches needed): one flood must not pin its peak for the agent's lifetime.
fn recycle<T>(v: &mut Vec<T>, recent: usize) {
    v.clear();
    if v.capacity() > 4 * recent.max(1024) {
        v.shrink_to(recent);
    }
}

/// The field values records start with, shared: a record copies a pointer, not the string.
struct Texts {
    host: Text,
    dash: Text,
    net: Text,
    pvt: Text,
    public: Text,
    /// `tcp`, `udp`, `icmp`, `icmp6`, `sctp` (other protocols are written as their number).
    protos: [(u8, Text); 5],
}

impl Texts {
    fn new(node: &str) -> Self {
        let protos = [proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6, proto::SCTP];
        Self {
            host: node.into(),
            dash: "-".into(),
            net: "net".into(),
            pvt: "pvt".into(),
            public: "pub".into(),
            protos: protos.map(|p| (p, proto_name(p).into())),
        }
    }

    fn proto(&self, p: u8) -> Text {
        match self.protos.iter().find(|(n, _)| *n == p) {
            Some((_, t)) => t.clone(),
            None => proto_name(p).into(),
        }
    }

    fn net_aggr(&self, ip: IpAddr) -> Text {
        if crate::model::is_private_ip(ip) { self.pvt.clone() } else { self.public.clone() }
    }
}

/// Counts of one direction chosen for one side.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    packets: u64,
    bytes: u64,
}

/// One reporter's view of one connection in one interval, before aggregation.
#[derive(Debug)]
struct SideRecord {
    key: ConnKey,
    reporter: Reporter,
    initiator: Endpoint,
    responder: Endpoint,
    icmp: Option<(u8, u8)>,
    proto: u8,
    out: Counts,
    inc: Counts,
    started: bool,
    completed: bool,
    observed: Observed,
    source_cgroup_id: Option<u64>,
    dest_cgroup_id: Option<u64>,
    first_seen_ns: u64,
    /// The connection's packets per direction at the point that saw most of them, for a side
    /// that identity finds local but capture did not see (see [`localize`]).
    alt_fwd: Counts,
    alt_rev: Counts,
    /// The connection and interval (`RecordContext::conn`), one string for all its sides.
    conn: Text,
}

/// The order of records in a batch: by source, destination, protocol name and reporter, then
/// ICMP echo identifier, then the order the sides were made in.
type SortKey = (IpAddr, Option<u16>, IpAddr, Option<u16>, ProtoName, Reporter, u16, usize);

/// A record's `proto` as sortable bytes, without allocating for protocols written as numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ProtoName([u8; 5]);

impl ProtoName {
    fn of(p: u8) -> Self {
        // Names are at most 5 bytes ("icmp6") and numbers 3 digits; NUL pads, and sorts before
        // every character, so the bytes compare like the strings.
        let mut b = [0u8; 5];
        match p {
            proto::TCP | proto::UDP | proto::ICMP | proto::ICMPV6 | proto::SCTP => {
                let name = proto_name(p);
                b[..name.len()].copy_from_slice(name.as_bytes());
            }
            n => {
                let digits = n.to_string();
                b[..digits.len()].copy_from_slice(digits.as_bytes());
            }
        }
        ProtoName(b)
    }
}

impl Aggregator {
    /// A new stage with no connection state.
    pub fn new(cfg: AggregateConfig) -> Self {
        let texts = Texts::new(&cfg.node);
        Self { cfg, conns: HashMap::new(), first_batch: true, untracked: 0, texts, scratch: Scratch::default() }
    }

    /// Connections currently remembered.
    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// New connections not remembered because `max_connections` were (since the start).
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Turns one interval's observations into records (sorted for stable output). Hand the
    /// records back with [`Aggregator::recycle`] once written, and the next batch reuses their
    /// memory.
    pub fn process(&mut self, batch: &CaptureBatch) -> Vec<FlowRecord> {
        let n = batch.observations.len();
        let mut s = std::mem::take(&mut self.scratch);
        // The observations grouped by connection, in one array: group `g` (in order of first
        // appearance) is `grouped[starts[g]..starts[g + 1]]`, in batch order.
        s.index.clear();
        s.index.reserve(n);
        s.keys.clear();
        s.group_of.clear();
        for obs in &batch.observations {
            let key = conn_key(obs);
            let g = *s.index.entry(key).or_insert_with(|| {
                s.keys.push(key);
                s.keys.len() - 1
            });
            s.group_of.push(g);
        }
        let groups = s.keys.len();
        s.starts.clear();
        s.starts.resize(groups + 1, 0);
        for &g in &s.group_of {
            s.starts[g + 1] += 1;
        }
        for g in 0..groups {
            s.starts[g + 1] += s.starts[g];
        }
        // `positions` first holds each group's next free slot, then the observations' indices.
        s.positions.clear();
        s.positions.resize(n + groups, 0);
        let (positions, next) = s.positions.split_at_mut(n);
        next.copy_from_slice(&s.starts[..groups]);
        for (i, &g) in s.group_of.iter().enumerate() {
            positions[next[g]] = i;
            next[g] += 1;
        }
        let grouped: Vec<&Observation> = positions.iter().map(|&i| &batch.observations[i]).collect();
        // Connections named by destination-unreachable messages (the message's sender is the
        // refused packet's destination; its receiver, the refused packet's sender).
        let refused: HashSet<ConnKey> = batch.observations.iter().filter_map(refused_conn).collect();
        for key in &refused {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.refused = true;
            }
        }
        let mut sides = std::mem::take(&mut s.sides);
        sides.clear();
        sides.reserve(n);
        for (g, key) in s.keys.iter().enumerate() {
            self.account(*key, &grouped[s.starts[g]..s.starts[g + 1]], &refused, batch, &mut sides);
        }
        drop(grouped);
        self.expire(batch, &mut sides);
        // A flood leaves a large map behind once its connections expire: give the memory back.
        if self.conns.capacity() > 4 * self.conns.len().max(1024) {
            self.conns.shrink_to_fit();
        }
        self.first_batch = false;
        // Sorted before the records are made, so the (large) records are never moved.
        s.order.clear();
        s.order.extend(sides.iter().enumerate().map(|(i, side)| {
            let icmp = is_icmp(side.proto);
            let echo = match side.key.extra {
                Extra::Echo(id) => id,
                _ => 0,
            };
            (
                side.initiator.ip,
                (!icmp).then_some(side.initiator.port),
                side.responder.ip,
                (!icmp).then_some(side.responder.port),
                ProtoName::of(side.proto),
                side.reporter,
                echo,
                i,
            )
        }));
        s.order.sort_unstable();
        let mut records = std::mem::take(&mut s.records);
        records.clear();
        records.reserve(s.order.len());
        records.extend(s.order.iter().map(|k| self.record(batch, &sides[k.7])));
        // Emptied for the next batch; given back when a flood made them far larger than needed.
        let (recent_n, recent_records) = s.note(n, records.len());
        // `sides` is reserved for every observation (several per record with TC hooks).
        recycle(&mut sides, recent_n);
        s.sides = sides;
        recycle(&mut s.order, recent_records);
        recycle(&mut s.keys, recent_n);
        for v in [&mut s.group_of, &mut s.starts, &mut s.positions] {
            recycle(v, 2 * recent_n);
        }
        s.index.clear();
        if s.index.capacity() > 4 * recent_n.max(1024) {
            s.index.shrink_to(recent_n);
        }
        self.scratch = s;
        records
    }

    /// Takes back written records: emptied, their memory holds the next batch's.
    pub fn recycle(&mut self, mut records: Vec<FlowRecord>) {
        recycle(&mut records, self.scratch.recent_records);
        if records.capacity() >= self.scratch.records.capacity() {
            self.scratch.records = records;
        }
    }

    fn account(
        &mut self,
        key: ConnKey,
        observations: &[&Observation],
        refused: &HashSet<ConnKey>,
        batch: &CaptureBatch,
        out: &mut Vec<SideRecord>,
    ) {
        let first_batch = self.first_batch;
        let mut is_new = false;
        let mut unremembered;
        let conn = if self.conns.len() < self.cfg.max_connections || self.conns.contains_key(&key) {
            self.conns.entry(key).or_insert_with(|| {
                is_new = true;
                new_conn(key, observations, first_batch)
            })
        } else {
            is_new = true;
            self.untracked += 1;
            unremembered = new_conn(key, observations, first_batch);
            &mut unremembered
        };
        conn.refused |= refused.contains(&key);
        conn.seen = true;
        // The winning observation per side and direction (index: `pick_slot`).
        let mut picks: [Option<&Observation>; 6] = [None; 6];
        let mut syn_now = false;
        for obs in observations {
            let forward = is_forward(conn, obs);
            if forward {
                conn.fwd_flags |= obs.tcp_flags;
                syn_now |= obs.tcp_flags & tcp_flags::SYN_ONLY != 0;
            } else {
                conn.rev_flags |= obs.tcp_flags;
                conn.replied |= obs.packets > 0;
            }
            conn.last_seen_ns = conn.last_seen_ns.max(obs.last_seen_ns);
            let side = side_of(obs, forward);
            let socket_hook = matches!(obs.hook, Hook::CgroupIngress | Hook::CgroupEgress);
            if obs.cgroup_id != 0 && socket_hook {
                match side {
                    Side::Src => conn.source_cgroup_id = Some(obs.cgroup_id),
                    Side::Dst => conn.dest_cgroup_id = Some(obs.cgroup_id),
                    Side::Transit => {}
                }
            }
            let slot = &mut picks[pick_slot(side, forward)];
            match slot {
                Some(current) if !better(obs, current) => {}
                _ => *slot = Some(obs),
            }
        }
        let started = is_new && (key.proto != proto::TCP || syn_now);
        let tcp_done = key.proto == proto::TCP
            && ((conn.fwd_flags | conn.rev_flags) & tcp_flags::RST != 0
                || (conn.fwd_flags & tcp_flags::FIN != 0 && conn.rev_flags & tcp_flags::FIN != 0));
        let completed = tcp_done && conn.completed_at_ns.is_none();
        if completed {
            conn.completed_at_ns = Some(conn.last_seen_ns);
        }
        let observed = observed(key.proto, key.extra, conn);
        let pick = |side: Side, forward: bool| {
            picks[pick_slot(side, forward)].map(|o| Counts { packets: o.packets, bytes: o.bytes }).unwrap_or_default()
        };
        let has = |side: Side| picks[pick_slot(side, true)].is_some() || picks[pick_slot(side, false)].is_some();
        let most = |forward: bool| {
            observations
                .iter()
                .filter(|o| is_forward(conn, o) == forward)
                .map(|o| Counts { packets: o.packets, bytes: o.bytes })
                .max_by_key(|c| (c.packets, c.bytes))
                .unwrap_or_default()
        };
        let (alt_fwd, alt_rev) = (most(true), most(false));
        let text = conn_text(&self.cfg.node, key, conn, batch);
        let mut emit = |reporter: Reporter, out_counts: Counts, in_counts: Counts| {
            conn.reporters |= 1 << reporter as u8;
            out.push(SideRecord {
                key,
                reporter,
                initiator: conn.initiator,
                responder: conn.responder,
                icmp: conn.icmp,
                proto: key.proto,
                out: out_counts,
                inc: in_counts,
                started,
                completed,
                observed,
                source_cgroup_id: conn.source_cgroup_id,
                dest_cgroup_id: conn.dest_cgroup_id,
                first_seen_ns: conn.first_seen_ns,
                alt_fwd,
                alt_rev,
                conn: text.clone(),
            });
        };
        let local = has(Side::Src) || has(Side::Dst);
        if has(Side::Src) {
            emit(Reporter::Src, pick(Side::Src, true), pick(Side::Src, false));
        }
        if has(Side::Dst) {
            emit(Reporter::Dst, pick(Side::Dst, false), pick(Side::Dst, true));
        }
        if !local && has(Side::Transit) {
            emit(Reporter::Fwd, pick(Side::Transit, true), pick(Side::Transit, false));
        }
    }

    /// Completes idle non-TCP flows (zero-count records) and forgets finished TCP connections;
    /// connections seen in this batch stay.
    fn expire(&mut self, batch: &CaptureBatch, out: &mut Vec<SideRecord>) {
        let now_ns = batch.end_ns;
        let node = &self.cfg.node;
        let idle = self.cfg.idle_timeout.as_nanos() as u64;
        let tcp_idle = self.cfg.tcp_idle_timeout.as_nanos() as u64;
        let linger = TCP_LINGER.as_nanos() as u64;
        self.conns.retain(|key, conn| {
            if std::mem::take(&mut conn.seen) {
                return true;
            }
            let quiet = now_ns.saturating_sub(conn.last_seen_ns);
            if key.proto == proto::TCP {
                return match conn.completed_at_ns {
                    Some(at) => now_ns.saturating_sub(at) < linger,
                    None => quiet < tcp_idle,
                };
            }
            if quiet < idle {
                return true;
            }
            let observed = observed(key.proto, key.extra, conn);
            let text = conn_text(node, *key, conn, batch);
            let reporters = [Reporter::Src, Reporter::Dst, Reporter::Fwd];
            for reporter in reporters.into_iter().filter(|r| conn.reporters & (1 << *r as u8) != 0) {
                out.push(SideRecord {
                    key: *key,
                    reporter,
                    initiator: conn.initiator,
                    responder: conn.responder,
                    icmp: conn.icmp,
                    proto: key.proto,
                    out: Counts::default(),
                    inc: Counts::default(),
                    started: false,
                    completed: true,
                    observed,
                    source_cgroup_id: conn.source_cgroup_id,
                    dest_cgroup_id: conn.dest_cgroup_id,
                    first_seen_ns: conn.first_seen_ns,
                    alt_fwd: Counts::default(),
                    alt_rev: Counts::default(),
                    conn: text.clone(),
                });
            }
            false
        });
    }

    /// One connection seen by one reporter in one interval (aggregation level 0; levels 1-3 are
    /// applied by rollup once the verdicts are known).
    fn record(&self, batch: &CaptureBatch, side: &SideRecord) -> FlowRecord {
        let t = &self.texts;
        let icmp = is_icmp(side.proto);
        let count = |o: Observed| u64::from(side.observed == o);
        FlowRecord {
            id: record_id_of(&side.conn, reporter_name(side.reporter)),
            start_time: batch.start_ns / 1_000_000_000,
            end_time: batch.end_ns.div_ceil(1_000_000_000),
            host: t.host.clone(),
            action: Action::Allow,
            reporter: side.reporter,
            proto: t.proto(side.proto),
            source_ip: Some(side.initiator.ip),
            source_port: (!icmp).then_some(side.initiator.port),
            source_name: t.dash.clone(),
            source_name_aggr: t.net_aggr(side.initiator.ip),
            source_namespace: t.dash.clone(),
            source_type: t.net.clone(),
            source_labels: "-".into(),
            dest_ip: Some(side.responder.ip),
            dest_port: (!icmp).then_some(side.responder.port),
            dest_name: t.dash.clone(),
            dest_name_aggr: t.net_aggr(side.responder.ip),
            dest_namespace: t.dash.clone(),
            dest_type: t.net.clone(),
            dest_labels: "-".into(),
            dest_service_name: t.dash.clone(),
            dest_service_namespace: t.dash.clone(),
            dest_service_port: t.dash.clone(),
            icmp_type: side.icmp.map(|(t, _)| t),
            icmp_code: side.icmp.map(|(_, c)| c),
            bytes_in: side.inc.bytes,
            bytes_out: side.out.bytes,
            packets_in: side.inc.packets,
            packets_out: side.out.packets,
            num_flows: 1,
            num_flows_started: u64::from(side.started),
            num_flows_completed: u64::from(side.completed),
            policies: Policies::default(),
            pending_action: Action::Allow,
            flow_action: Action::Allow,
            enforcement: Enforcement::Consistent,
            num_violations: 0,
            observed: side.observed,
            num_established: count(Observed::Established),
            num_attempted: count(Observed::Attempted),
            num_rejected: count(Observed::Rejected),
            source_cgroup_id: side.source_cgroup_id,
            host_network: false,
            context: RecordContext {
                proto: side.proto,
                dest_cgroup_id: side.dest_cgroup_id,
                first_seen_ns: side.first_seen_ns,
                source: None,
                dest: None,
                conn: side.conn.clone(),
                alt: [side.alt_fwd.packets, side.alt_fwd.bytes, side.alt_rev.packets, side.alt_rev.bytes],
            },
        }
    }
}

/// Reporter records for ends that identity knows are local but capture did not see (their
/// packets were dropped on the node before reaching them, or only a host interface is watched),
/// counted from the point that saw most of the connection's packets; and no `fwd` record for a
/// connection with a local end. `node` is this node's name; an end is local when it is a pod
/// scheduled on it. Call after enrich.
pub fn localize(mut records: Vec<FlowRecord>, node: &str) -> Vec<FlowRecord> {
    let on_node = |ep: &Option<std::sync::Arc<crate::model::Endpoint>>| {
        ep.as_ref().is_some_and(|e| e.node.as_deref() == Some(node))
    };
    // Per record: its connection's index, and whether it is the connection's first record; per
    // connection: the reporters that have a record. Indices, not copies of the connection
    // strings: a flood brings a batch of `2 x flow_table_entries` records through here.
    let mut conn_of = Vec::with_capacity(records.len());
    let mut first = Vec::with_capacity(records.len());
    let mut seen: Vec<[bool; 3]> = Vec::new();
    {
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(records.len());
        for r in &records {
            let next = index.len();
            let c = *index.entry(&*r.context.conn).or_insert(next);
            first.push(c == seen.len());
            if c == seen.len() {
                seen.push([false; 3]);
            }
            seen[c][r.reporter as usize] = true;
            conn_of.push(c);
        }
    }
    let mut extras = Vec::new();
    let mut keep = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let seen = seen[conn_of[i]];
        let local_src = seen[Reporter::Src as usize] || on_node(&r.context.source);
        let local_dst = seen[Reporter::Dst as usize] || on_node(&r.context.dest);
        if first[i] {
            let [fp, fb, rp, rb] = r.context.alt;
            let mut add = |reporter: Reporter, out_counts: (u64, u64), in_counts: (u64, u64)| {
                let mut extra = r.clone();
                extra.reporter = reporter;
                extra.id = record_id_of(&r.context.conn, reporter_name(reporter));
                (extra.packets_out, extra.bytes_out) = out_counts;
                (extra.packets_in, extra.bytes_in) = in_counts;
                extras.push(extra);
            };
            if local_src && !seen[Reporter::Src as usize] {
                add(Reporter::Src, (fp, fb), (rp, rb));
            }
            if local_dst && !seen[Reporter::Dst as usize] {
                add(Reporter::Dst, (rp, rb), (fp, fb));
            }
        }
        keep.push(!(r.reporter == Reporter::Fwd && (local_src || local_dst)));
    }
    let mut keep = keep.into_iter();
    records.retain(|_| keep.next().unwrap_or(true));
    records.extend(extras);
    records
}

/// The connection and interval a record belongs to, with the reporter left as `{R}` (the input of
/// the record ids of the connection's sides: [`record_id_of`]):
/// `node|{R}|proto|initiator ip|port|responder ip|port|icmp|echo id|start ns|end ns`, the ICMP
/// fields as Rust's `Debug` writes an `Option` (`None`, `Some((8, 0))`, `Some(7)`).
fn conn_text(node: &str, key: ConnKey, conn: &Conn, batch: &CaptureBatch) -> Text {
    let mut s = Vec::with_capacity(node.len() + 96);
    s.extend_from_slice(node.as_bytes());
    s.extend_from_slice(b"|{R}|");
    push_decimal(&mut s, key.proto.into());
    for end in [conn.initiator, conn.responder] {
        s.push(b'|');
        push_ip(&mut s, end.ip);
        s.push(b'|');
        push_decimal(&mut s, end.port.into());
    }
    s.push(b'|');
    match conn.icmp {
        None => s.extend_from_slice(b"None"),
        Some((t, c)) => {
            s.extend_from_slice(b"Some((");
            push_decimal(&mut s, t.into());
            s.extend_from_slice(b", ");
            push_decimal(&mut s, c.into());
            s.extend_from_slice(b"))");
        }
    }
    s.push(b'|');
    match key.extra {
        Extra::Echo(id) => {
            s.extend_from_slice(b"Some(");
            push_decimal(&mut s, id.into());
            s.push(b')');
        }
        _ => s.extend_from_slice(b"None"),
    }
    s.push(b'|');
    push_decimal(&mut s, batch.start_ns);
    s.push(b'|');
    push_decimal(&mut s, batch.end_ns);
    Arc::from(String::from_utf8(s).expect("the node name and ASCII"))
}

/// The reporter as record ids spell it (its `Debug` form).
fn reporter_name(reporter: Reporter) -> &'static str {
    match reporter {
        Reporter::Src => "Src",
        Reporter::Dst => "Dst",
        Reporter::Fwd => "Fwd",
    }
}

/// Index of a side and direction in the picks of [`Aggregator::account`].
fn pick_slot(side: Side, forward: bool) -> usize {
    let s = match side {
        Side::Src => 0,
        Side::Dst => 2,
        Side::Transit => 4,
    };
    s + usize::from(forward)
}

fn is_icmp(p: u8) -> bool {
    p == proto::ICMP || p == proto::ICMPV6
}

/// Echo request/reply types of ICMP and ICMPv6.
fn echo_kind(p: u8, icmp_type: u8) -> Option<bool> {
    match (p, icmp_type) {
        (proto::ICMP, 8) | (proto::ICMPV6, 128) => Some(true),
        (proto::ICMP, 0) | (proto::ICMPV6, 129) => Some(false),
        _ => None,
    }
}

fn conn_key(obs: &Observation) -> ConnKey {
    let t = &obs.tuple;
    let (extra, a, b) = if is_icmp(t.proto) {
        let extra = match echo_kind(t.proto, t.icmp_type) {
            Some(_) => Extra::Echo(t.src_port),
            None => Extra::Icmp(t.icmp_type, t.icmp_code),
        };
        (extra, Endpoint { ip: t.src, port: 0 }, Endpoint { ip: t.dst, port: 0 })
    } else {
        (Extra::None, Endpoint { ip: t.src, port: t.src_port }, Endpoint { ip: t.dst, port: t.dst_port })
    };
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    ConnKey { proto: t.proto, lo, hi, extra }
}

/// The connection a destination-unreachable observation refuses, if it names one.
fn refused_conn(obs: &Observation) -> Option<ConnKey> {
    let t = &obs.tuple;
    let unreachable = (t.proto == proto::ICMP && t.icmp_type == 3) || (t.proto == proto::ICMPV6 && t.icmp_type == 1);
    if !unreachable || t.inner_proto == 0 {
        return None;
    }
    let a = Endpoint { ip: t.dst, port: t.src_port };
    let b = Endpoint { ip: t.src, port: t.dst_port };
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    Some(ConnKey { proto: t.inner_proto, lo, hi, extra: Extra::None })
}

fn sender(obs: &Observation) -> Endpoint {
    let t = &obs.tuple;
    let port = if is_icmp(t.proto) { 0 } else { t.src_port };
    Endpoint { ip: t.src, port }
}

fn new_conn(key: ConnKey, observations: &[&Observation], first_batch: bool) -> Conn {
    let earliest = observations.iter().min_by_key(|o| (o.first_seen_ns, o.hook)).expect("non-empty group");
    let by_flag = |flag: u64| observations.iter().find(|o| o.tcp_flags & flag != 0);
    let initiator = if key.proto == proto::TCP {
        if let Some(syn) = by_flag(tcp_flags::SYN_ONLY) {
            sender(syn)
        } else if let Some(syn_ack) = by_flag(tcp_flags::SYN_ACK) {
            other(key, sender(syn_ack))
        } else {
            by_port(key).unwrap_or_else(|| sender(earliest))
        }
    } else if let Extra::Echo(_) = key.extra {
        match observations.iter().find_map(|o| echo_kind(o.tuple.proto, o.tuple.icmp_type).map(|req| (o, req))) {
            Some((o, true)) => sender(o),
            Some((o, false)) => other(key, sender(o)),
            None => sender(earliest),
        }
    } else if first_batch && key.extra == Extra::None {
        // Flows already open when the agent started: their first packet may be a reply.
        by_port(key).unwrap_or_else(|| sender(earliest))
    } else {
        sender(earliest)
    };
    let responder = other(key, initiator);
    let icmp = match key.extra {
        Extra::Echo(_) => Some(if key.proto == proto::ICMP { (8, 0) } else { (128, 0) }),
        Extra::Icmp(t, c) => Some((t, c)),
        Extra::None => None,
    };
    Conn {
        initiator,
        responder,
        icmp,
        last_seen_ns: 0,
        fwd_flags: 0,
        rev_flags: 0,
        replied: false,
        completed_at_ns: None,
        reporters: 0,
        source_cgroup_id: None,
        dest_cgroup_id: None,
        first_seen_ns: earliest.first_seen_ns,
        refused: false,
        seen: false,
    }
}

/// The higher port is the client's; `None` on a tie.
fn by_port(key: ConnKey) -> Option<Endpoint> {
    use std::cmp::Ordering;
    match key.lo.port.cmp(&key.hi.port) {
        Ordering::Greater => Some(key.lo),
        Ordering::Less => Some(key.hi),
        Ordering::Equal => None,
    }
}

fn other(key: ConnKey, end: Endpoint) -> Endpoint {
    if end == key.lo { key.hi } else { key.lo }
}

fn is_forward(conn: &Conn, obs: &Observation) -> bool {
    let s = sender(obs);
    if conn.initiator == conn.responder {
        // A flow to itself (same address and port): the echo request or the first direction.
        return echo_kind(obs.tuple.proto, obs.tuple.icmp_type) != Some(false);
    }
    s == conn.initiator
}

fn side_of(obs: &Observation, forward: bool) -> Side {
    let (from, to) = if forward { (Side::Src, Side::Dst) } else { (Side::Dst, Side::Src) };
    match (obs.hook, obs.role) {
        (Hook::CgroupEgress, _) => from,
        (Hook::CgroupIngress, _) => to,
        (Hook::TcIngress, Some(IfaceRole::Pod)) => from,
        (Hook::TcEgress, Some(IfaceRole::Pod)) => to,
        (Hook::TcIngress | Hook::TcEgress, _) => Side::Transit,
    }
}

/// Rank of an observation point for a side: lower wins.
fn class(obs: &Observation) -> u8 {
    match (obs.hook, obs.role) {
        (Hook::TcIngress | Hook::TcEgress, Some(IfaceRole::Pod)) => 0,
        (Hook::CgroupIngress | Hook::CgroupEgress, _) => 1,
        _ => 2,
    }
}

fn better(candidate: &Observation, current: &Observation) -> bool {
    let rank = |o: &Observation| {
        let ingress_first = matches!(o.hook, Hook::TcIngress | Hook::CgroupIngress) as u8;
        (class(o), std::cmp::Reverse(o.packets), std::cmp::Reverse(ingress_first), o.ifindex)
    };
    rank(candidate) < rank(current)
}

fn observed(p: u8, extra: Extra, conn: &Conn) -> Observed {
    match (p, extra) {
        (proto::TCP, _) => {
            let syn_seen = conn.fwd_flags & tcp_flags::SYN_ONLY != 0;
            if conn.rev_flags & tcp_flags::SYN_ACK != 0 {
                Observed::Established
            } else if conn.rev_flags & tcp_flags::RST != 0 || conn.refused {
                Observed::Rejected
            } else if conn.replied && !syn_seen {
                // Open before we looked: replies prove it.
                Observed::Established
            } else if syn_seen {
                Observed::Attempted
            } else {
                Observed::OneWay
            }
        }
        (_, Extra::Echo(_)) => {
            if conn.replied {
                Observed::Established
            } else {
                Observed::Attempted
            }
        }
        (_, Extra::Icmp(..)) => Observed::OneWay,
        _ => {
            if conn.replied {
                Observed::Established
            } else if conn.refused {
                Observed::Rejected
            } else {
                Observed::OneWay
            }
        }
    }
}

/// `proto` field of a record.
pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmp6".into(),
        proto::SCTP => "sctp".into(),
        n => n.to_string(),
    }
}

/// `pvt` for private addresses ([`crate::model::is_private_ip`]); `pub` otherwise.
pub fn net_aggr(ip: IpAddr) -> &'static str {
    if crate::model::is_private_ip(ip) { "pvt" } else { "pub" }
}

#[cfg(test)]
mod tests;
