//! Table-driven tests of the aggregate stage: observations in, exact flow-log records out.

use super::*;
use crate::{
    model::{AggregationLevel, Tuple},
    rollup::{RollupConfig, rollup},
};

use flowaudit_common::tcp_flags::{ACK, FIN, PSH, RST, SYN, SYN_ACK, SYN_ONLY};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An arbitrary wall clock origin (Unix nanoseconds, a whole second).
const T0: u64 = 1_700_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;

/// Flags of a SYN packet, a SYN-ACK, and the rest of a handshake.
const SYN_PKT: u64 = SYN | SYN_ONLY;
const SYN_ACK_PKT: u64 = SYN | ACK | SYN_ACK;
/// Everything the opener sends in a full connection (SYN, data, FIN).
const OPENER_ALL: u64 = SYN | SYN_ONLY | ACK | PSH | FIN;
/// Everything the acceptor sends in a full connection (SYN-ACK, data, FIN).
const ACCEPTOR_ALL: u64 = SYN | ACK | SYN_ACK | PSH | FIN;

const TCP: u8 = proto::TCP;
const UDP: u8 = proto::UDP;
const ICMP: u8 = proto::ICMP;
const ICMPV6: u8 = proto::ICMPV6;

/// An observation point: hook, interface index and role.
#[derive(Clone, Copy, Debug)]
struct At {
    hook: Hook,
    ifindex: u32,
    role: Option<IfaceRole>,
}

const CG_EG: At = At { hook: Hook::CgroupEgress, ifindex: 0, role: None };
const CG_IN: At = At { hook: Hook::CgroupIngress, ifindex: 0, role: None };

const fn pod_in(ifindex: u32) -> At {
    At { hook: Hook::TcIngress, ifindex, role: Some(IfaceRole::Pod) }
}
const fn pod_eg(ifindex: u32) -> At {
    At { hook: Hook::TcEgress, ifindex, role: Some(IfaceRole::Pod) }
}
const fn host_in(ifindex: u32) -> At {
    At { hook: Hook::TcIngress, ifindex, role: Some(IfaceRole::Host) }
}
const fn host_eg(ifindex: u32) -> At {
    At { hook: Hook::TcEgress, ifindex, role: Some(IfaceRole::Host) }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

/// One observation, seen at T0+1s..T0+2s unless changed with [`ObsExt`].
#[allow(clippy::too_many_arguments)]
fn obs(
    at: At,
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    proto: u8,
    packets: u64,
    bytes: u64,
    flags: u64,
) -> Observation {
    Observation {
        tuple: Tuple {
            proto,
            src: ip(src),
            dst: ip(dst),
            src_port: sport,
            dst_port: dport,
            icmp_type: 0,
            icmp_code: 0,
            inner_proto: 0,
        },
        hook: at.hook,
        ifindex: at.ifindex,
        role: at.role,
        packets,
        bytes,
        first_seen_ns: T0 + SEC,
        last_seen_ns: T0 + 2 * SEC,
        tcp_flags: flags,
        cgroup_id: 0,
    }
}

/// An ICMP/ICMPv6 observation: `id` is the echo identifier (carried in `src_port`).
#[allow(clippy::too_many_arguments)]
fn icmp(
    at: At,
    src: &str,
    dst: &str,
    proto: u8,
    icmp_type: u8,
    icmp_code: u8,
    id: u16,
    packets: u64,
    bytes: u64,
) -> Observation {
    let mut o = obs(at, src, id, dst, 0, proto, packets, bytes, 0);
    o.tuple.icmp_type = icmp_type;
    o.tuple.icmp_code = icmp_code;
    o
}

trait ObsExt {
    /// First and last packet, in seconds after T0.
    fn seen(self, first_s: f64, last_s: f64) -> Self;
    fn cgroup(self, id: u64) -> Self;
}

impl ObsExt for Observation {
    fn seen(mut self, first_s: f64, last_s: f64) -> Self {
        self.first_seen_ns = T0 + (first_s * SEC as f64) as u64;
        self.last_seen_ns = T0 + (last_s * SEC as f64) as u64;
        self
    }
    fn cgroup(mut self, id: u64) -> Self {
        self.cgroup_id = id;
        self
    }
}

/// A batch covering T0+start_s .. T0+end_s.
fn batch(start_s: u64, end_s: u64, observations: Vec<Observation>) -> CaptureBatch {
    CaptureBatch { start_ns: T0 + start_s * SEC, end_ns: T0 + end_s * SEC, observations, last: false, answers: None }
}

fn cfg() -> AggregateConfig {
    AggregateConfig {
        node: "node-1".into(),
        idle_timeout: Duration::from_secs(30),
        tcp_idle_timeout: Duration::from_secs(600),
        max_connections: 1_000_000,
    }
}

fn agg() -> Aggregator {
    Aggregator::new(cfg())
}

/// The aggregate stage followed by rollup at `level` (what the pipeline runs, minus identity
/// and verdicts): for the aggregation-level cases.
struct Leveled {
    agg: Aggregator,
    level: AggregationLevel,
}

impl Leveled {
    fn new(level: AggregationLevel) -> Self {
        Self { agg: agg(), level }
    }

    fn process(&mut self, batch: &CaptureBatch) -> Vec<FlowRecord> {
        let mut records = rollup(self.agg.process(batch), &RollupConfig { allowed: self.level, denied: self.level });
        records.sort_by(|a, b| {
            (a.source_ip, a.source_port, a.dest_ip, a.dest_port, &a.proto, a.reporter).cmp(&(
                b.source_ip,
                b.source_port,
                b.dest_ip,
                b.dest_port,
                &b.proto,
                b.reporter,
            ))
        });
        records
    }

    fn tracked(&self) -> usize {
        self.agg.tracked()
    }
}

/// An aggregator that already processed one (empty) batch, so first-batch rules are off.
fn warm_agg() -> Aggregator {
    let mut a = agg();
    assert!(a.process(&batch(0, 10, vec![])).is_empty());
    a
}

/// The fields of a record the tests compare, in one comparable value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    reporter: Reporter,
    action: Action,
    proto: String,
    src: IpAddr,
    sport: Option<u16>,
    dst: IpAddr,
    dport: Option<u16>,
    icmp: Option<(u8, u8)>,
    /// (packets, bytes) the reporter sent.
    out: (u64, u64),
    /// (packets, bytes) the reporter received.
    inc: (u64, u64),
    /// (num_flows, num_flows_started, num_flows_completed).
    flows: (u64, u64, u64),
    observed: Observed,
}

fn view(r: &FlowRecord) -> View {
    View {
        reporter: r.reporter,
        action: r.action,
        proto: r.proto.to_string(),
        src: r.source_ip.expect("source_ip"),
        sport: r.source_port,
        dst: r.dest_ip.expect("dest_ip"),
        dport: r.dest_port,
        icmp: r.icmp_type.map(|t| (t, r.icmp_code.expect("icmp_code with icmp_type"))),
        out: (r.packets_out, r.bytes_out),
        inc: (r.packets_in, r.bytes_in),
        flows: (r.num_flows, r.num_flows_started, r.num_flows_completed),
        observed: r.observed,
    }
}

fn views(records: &[FlowRecord]) -> Vec<View> {
    records.iter().map(view).collect()
}

/// An expected record with zero counts and one connection; refine with the builder methods.
fn want(reporter: Reporter, proto: &str, src: &str, sport: Option<u16>, dst: &str, dport: Option<u16>) -> View {
    View {
        reporter,
        action: Action::Allow,
        proto: proto.into(),
        src: ip(src),
        sport,
        dst: ip(dst),
        dport,
        icmp: None,
        out: (0, 0),
        inc: (0, 0),
        flows: (1, 0, 0),
        observed: Observed::OneWay,
    }
}

impl View {
    fn out(mut self, packets: u64, bytes: u64) -> Self {
        self.out = (packets, bytes);
        self
    }
    fn inc(mut self, packets: u64, bytes: u64) -> Self {
        self.inc = (packets, bytes);
        self
    }
    fn flows(mut self, num: u64, started: u64, completed: u64) -> Self {
        self.flows = (num, started, completed);
        self
    }
    fn observed(mut self, o: Observed) -> Self {
        self.observed = o;
        self
    }
    fn icmp(mut self, t: u8, c: u8) -> Self {
        self.icmp = Some((t, c));
        self
    }
}

/// Local pods used by several tests, with the ifindex of their host-side veth.
const A: &str = "10.244.1.10";
const A_VETH: u32 = 10;
const B: &str = "10.244.2.20";
const B_VETH: u32 = 11;

// ---------------------------------------------------------------------------------------------
// 1. Two local pods, all observation points
// ---------------------------------------------------------------------------------------------

#[test]
fn tcp_between_local_pods_seen_everywhere_counts_once_per_side() {
    let mut a = agg();
    // The cgroup hooks see other counts than the veths (more packets, even): the veths must win.
    let records = a.process(&batch(
        0,
        10,
        vec![
            // A -> B
            obs(CG_EG, A, 40000, B, 8080, TCP, 9, 6300, OPENER_ALL).cgroup(1234),
            obs(pod_in(A_VETH), A, 40000, B, 8080, TCP, 7, 6120, OPENER_ALL),
            obs(pod_eg(B_VETH), A, 40000, B, 8080, TCP, 7, 6120, OPENER_ALL),
            obs(CG_IN, A, 40000, B, 8080, TCP, 8, 6200, OPENER_ALL).cgroup(5678),
            // B -> A
            obs(CG_EG, B, 8080, A, 40000, TCP, 70, 95000, ACCEPTOR_ALL).cgroup(5678),
            obs(pod_in(B_VETH), B, 8080, A, 40000, TCP, 65, 93000, ACCEPTOR_ALL),
            obs(pod_eg(A_VETH), B, 8080, A, 40000, TCP, 65, 93000, ACCEPTOR_ALL),
            obs(CG_IN, B, 8080, A, 40000, TCP, 66, 94000, ACCEPTOR_ALL).cgroup(1234),
        ],
    ));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "tcp", A, Some(40000), B, Some(8080))
                .out(7, 6120)
                .inc(65, 93000)
                .flows(1, 1, 1)
                .observed(Observed::Established),
            want(Reporter::Dst, "tcp", A, Some(40000), B, Some(8080))
                .out(65, 93000)
                .inc(7, 6120)
                .flows(1, 1, 1)
                .observed(Observed::Established),
        ]
    );
    for r in &records {
        assert_eq!(r.flow_action, Action::Allow);
        assert_eq!(&*r.host, "node-1");
        assert_eq!((r.num_established, r.num_attempted, r.num_rejected), (1, 0, 0));
        // The source's socket is the one that sent A -> B.
        assert_eq!(r.source_cgroup_id, Some(1234));
        assert_eq!((r.icmp_type, r.icmp_code), (None, None));
        assert_eq!((r.start_time, r.end_time), (T0 / SEC, T0 / SEC + 10));
        assert_eq!((r.source_name_aggr.as_ref(), r.dest_name_aggr.as_ref()), ("pvt", "pvt"));
    }
    // Completed TCP is remembered (linger) so late packets join it.
    assert_eq!(a.tracked(), 1);
}

/// Each observation point, alone, lands on the right side and in the right direction.
#[test]
fn observation_point_maps_to_side_and_direction() {
    // Initiator: 10.244.1.10:40000 (higher port, no SYN). Forward = A -> B.
    #[derive(Debug)]
    enum Dir {
        Fwd,
        Rev,
    }
    #[derive(Debug, PartialEq)]
    enum Field {
        Out,
        In,
    }
    let cases: &[(At, Dir, Reporter, Field)] = &[
        (CG_EG, Dir::Fwd, Reporter::Src, Field::Out),
        (CG_IN, Dir::Fwd, Reporter::Dst, Field::In),
        (pod_in(A_VETH), Dir::Fwd, Reporter::Src, Field::Out),
        (pod_eg(B_VETH), Dir::Fwd, Reporter::Dst, Field::In),
        (host_in(2), Dir::Fwd, Reporter::Fwd, Field::Out),
        (host_eg(3), Dir::Fwd, Reporter::Fwd, Field::Out),
        (CG_EG, Dir::Rev, Reporter::Dst, Field::Out),
        (CG_IN, Dir::Rev, Reporter::Src, Field::In),
        (pod_in(B_VETH), Dir::Rev, Reporter::Dst, Field::Out),
        (pod_eg(A_VETH), Dir::Rev, Reporter::Src, Field::In),
        (host_in(3), Dir::Rev, Reporter::Fwd, Field::In),
        (host_eg(2), Dir::Rev, Reporter::Fwd, Field::In),
    ];
    for (at, dir, reporter, field) in cases {
        let o = match dir {
            Dir::Fwd => obs(*at, A, 40000, B, 8080, TCP, 3, 300, ACK),
            Dir::Rev => obs(*at, B, 8080, A, 40000, TCP, 3, 300, ACK),
        };
        let records = warm_agg().process(&batch(10, 20, vec![o]));
        let case = format!("{at:?} {dir:?}");
        assert_eq!(records.len(), 1, "{case}: {records:?}");
        let r = &records[0];
        assert_eq!(r.reporter, *reporter, "{case}");
        assert_eq!((r.source_ip, r.source_port), (Some(ip(A)), Some(40000)), "{case}");
        assert_eq!((r.dest_ip, r.dest_port), (Some(ip(B)), Some(8080)), "{case}");
        let (want_out, want_in) = if *field == Field::Out { ((3, 300), (0, 0)) } else { ((0, 0), (3, 300)) };
        assert_eq!(((r.packets_out, r.bytes_out), (r.packets_in, r.bytes_in)), (want_out, want_in), "{case}");
    }
}

/// "One observation wins per side and direction": pod interface > socket > host interface, then
/// most packets, then ingress, then the lowest ifindex. Counts identify the winner.
#[test]
fn one_observation_wins_per_side_and_direction() {
    struct Case {
        name: &'static str,
        observations: Vec<Observation>,
        reporter: Reporter,
        out: (u64, u64),
    }
    let fwd = |at: At, packets: u64, bytes: u64| obs(at, A, 40000, B, 8080, TCP, packets, bytes, ACK);
    let remote = "203.0.113.7";
    let transit =
        |at: At, packets: u64, bytes: u64| obs(at, remote, 40000, "198.51.100.9", 443, TCP, packets, bytes, ACK);
    let cases = vec![
        Case {
            name: "pod interface beats socket with more packets",
            observations: vec![fwd(CG_EG, 9, 900), fwd(pod_in(A_VETH), 3, 301)],
            reporter: Reporter::Src,
            out: (3, 301),
        },
        Case {
            name: "pod interface beats socket, listed first",
            observations: vec![fwd(pod_in(A_VETH), 3, 301), fwd(CG_EG, 9, 900)],
            reporter: Reporter::Src,
            out: (3, 301),
        },
        Case {
            name: "among host interfaces, most packets",
            observations: vec![transit(host_in(2), 5, 500), transit(host_eg(3), 6, 600)],
            reporter: Reporter::Fwd,
            out: (6, 600),
        },
        Case {
            name: "among host interfaces with equal packets, ingress",
            observations: vec![transit(host_eg(1), 5, 520), transit(host_in(9), 5, 500)],
            reporter: Reporter::Fwd,
            out: (5, 500),
        },
        Case {
            name: "among equal ingress, lowest ifindex",
            observations: vec![transit(host_in(7), 5, 570), transit(host_in(3), 5, 530), transit(host_in(5), 5, 550)],
            reporter: Reporter::Fwd,
            out: (5, 530),
        },
    ];
    for case in cases {
        let records = warm_agg().process(&batch(10, 20, case.observations));
        assert_eq!(records.len(), 1, "{}: {records:?}", case.name);
        let r = &records[0];
        assert_eq!(r.reporter, case.reporter, "{}", case.name);
        assert_eq!((r.packets_out, r.bytes_out), case.out, "{}", case.name);
        assert_eq!((r.packets_in, r.bytes_in), (0, 0), "{}", case.name);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Refused TCP
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_tcp_is_rejected_and_completed() {
    let mut a = agg();
    let records = a.process(&batch(
        0,
        10,
        vec![
            obs(CG_EG, A, 40000, B, 8080, TCP, 1, 60, SYN_PKT).cgroup(77),
            obs(pod_in(A_VETH), A, 40000, B, 8080, TCP, 1, 60, SYN_PKT),
            obs(pod_eg(B_VETH), A, 40000, B, 8080, TCP, 1, 60, SYN_PKT),
            // The kernel answers for B: no socket sends it, B's veth and A's socket see it.
            obs(pod_in(B_VETH), B, 8080, A, 40000, TCP, 1, 40, RST | ACK),
            obs(CG_IN, B, 8080, A, 40000, TCP, 1, 40, RST | ACK).cgroup(77),
        ],
    ));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "tcp", A, Some(40000), B, Some(8080))
                .out(1, 60)
                .inc(1, 40)
                .flows(1, 1, 1)
                .observed(Observed::Rejected),
            want(Reporter::Dst, "tcp", A, Some(40000), B, Some(8080))
                .out(1, 40)
                .inc(1, 60)
                .flows(1, 1, 1)
                .observed(Observed::Rejected),
        ]
    );
    for r in &records {
        assert_eq!((r.num_established, r.num_attempted, r.num_rejected), (0, 0, 1));
        assert_eq!(r.source_cgroup_id, Some(77));
    }
}

#[test]
fn tcp_completion_rules() {
    struct Case {
        name: &'static str,
        fwd_flags: u64,
        rev_flags: Option<u64>,
        completed: u64,
        observed: Observed,
    }
    let cases = [
        Case {
            name: "SYN without answer",
            fwd_flags: SYN_PKT,
            rev_flags: None,
            completed: 0,
            observed: Observed::Attempted,
        },
        Case {
            name: "handshake, no FIN",
            fwd_flags: SYN_PKT | ACK,
            rev_flags: Some(SYN_ACK_PKT),
            completed: 0,
            observed: Observed::Established,
        },
        Case {
            name: "FIN from the initiator only",
            fwd_flags: SYN_PKT | ACK | FIN,
            rev_flags: Some(SYN_ACK_PKT),
            completed: 0,
            observed: Observed::Established,
        },
        Case {
            name: "FIN from the responder only",
            fwd_flags: SYN_PKT | ACK,
            rev_flags: Some(SYN_ACK_PKT | FIN),
            completed: 0,
            observed: Observed::Established,
        },
        Case {
            name: "FIN from both",
            fwd_flags: SYN_PKT | ACK | FIN,
            rev_flags: Some(SYN_ACK_PKT | FIN),
            completed: 1,
            observed: Observed::Established,
        },
        Case {
            name: "RST from the initiator",
            fwd_flags: SYN_PKT | ACK | RST,
            rev_flags: Some(SYN_ACK_PKT),
            completed: 1,
            observed: Observed::Established,
        },
        Case {
            name: "RST from the responder after the handshake",
            fwd_flags: SYN_PKT | ACK,
            rev_flags: Some(SYN_ACK_PKT | RST),
            completed: 1,
            observed: Observed::Established,
        },
        Case {
            name: "RST instead of SYN-ACK",
            fwd_flags: SYN_PKT,
            rev_flags: Some(RST | ACK),
            completed: 1,
            observed: Observed::Rejected,
        },
    ];
    for case in cases {
        let mut observations = vec![obs(CG_EG, A, 40000, B, 443, TCP, 3, 180, case.fwd_flags)];
        if let Some(flags) = case.rev_flags {
            observations.push(obs(CG_IN, B, 443, A, 40000, TCP, 2, 120, flags));
        }
        let records = agg().process(&batch(0, 10, observations));
        let inc = if case.rev_flags.is_some() { (2, 120) } else { (0, 0) };
        assert_eq!(
            views(&records),
            vec![
                want(Reporter::Src, "tcp", A, Some(40000), B, Some(443))
                    .out(3, 180)
                    .inc(inc.0, inc.1)
                    .flows(1, 1, case.completed)
                    .observed(case.observed)
            ],
            "{}",
            case.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. UDP one way, idle completion
// ---------------------------------------------------------------------------------------------

#[test]
fn udp_one_way_completes_after_idle_timeout_with_zero_counts() {
    let mut a = agg();
    let dns = "10.96.0.10";
    let records =
        a.process(&batch(0, 10, vec![obs(CG_EG, A, 53000, dns, 53, UDP, 2, 140, 0).seen(1.0, 5.0).cgroup(9)]));
    assert_eq!(
        views(&records),
        vec![want(Reporter::Src, "udp", A, Some(53000), dns, Some(53)).out(2, 140).flows(1, 1, 0)]
    );
    assert_eq!(records[0].source_cgroup_id, Some(9));
    assert_eq!(a.tracked(), 1);

    // 15 s quiet < 30 s idle timeout: nothing, still tracked.
    assert!(a.process(&batch(10, 20, vec![])).is_empty());
    assert_eq!(a.tracked(), 1);

    // 35 s quiet: completed, zero counts, same key.
    let records = a.process(&batch(20, 40, vec![]));
    assert_eq!(views(&records), vec![want(Reporter::Src, "udp", A, Some(53000), dns, Some(53)).flows(1, 0, 1)]);
    assert_eq!(records[0].source_cgroup_id, Some(9));
    assert_eq!(a.tracked(), 0);

    // Forgotten: no more records.
    assert!(a.process(&batch(40, 80, vec![])).is_empty());

    // The same tuple again is a new flow.
    let records = a.process(&batch(80, 90, vec![obs(CG_EG, A, 53000, dns, 53, UDP, 1, 70, 0).seen(81.0, 81.0)]));
    assert_eq!(
        views(&records),
        vec![want(Reporter::Src, "udp", A, Some(53000), dns, Some(53)).out(1, 70).flows(1, 1, 0)]
    );
}

#[test]
fn udp_packets_keep_the_flow_alive() {
    let mut a = agg();
    let dns = "10.96.0.10";
    a.process(&batch(0, 10, vec![obs(CG_EG, A, 53000, dns, 53, UDP, 1, 70, 0).seen(1.0, 1.0)]));
    // A packet at 25 s: not idle at 40 s (15 s quiet), although 39 s after the first.
    let records = a.process(&batch(20, 30, vec![obs(CG_EG, A, 53000, dns, 53, UDP, 1, 70, 0).seen(25.0, 25.0)]));
    assert_eq!(
        views(&records),
        vec![want(Reporter::Src, "udp", A, Some(53000), dns, Some(53)).out(1, 70).flows(1, 0, 0)]
    );
    assert!(a.process(&batch(30, 40, vec![])).is_empty());
    assert_eq!(a.tracked(), 1);
    let records = a.process(&batch(40, 60, vec![]));
    assert_eq!(views(&records), vec![want(Reporter::Src, "udp", A, Some(53000), dns, Some(53)).flows(1, 0, 1)]);
}

#[test]
fn udp_request_reply_between_local_pods_expires_for_both_reporters() {
    let mut a = agg();
    let records = a.process(&batch(
        0,
        10,
        vec![
            obs(CG_EG, A, 53001, B, 53, UDP, 1, 70, 0).seen(1.0, 1.0),
            obs(CG_IN, A, 53001, B, 53, UDP, 1, 70, 0).seen(1.0, 1.0),
            obs(CG_EG, B, 53, A, 53001, UDP, 1, 130, 0).seen(1.1, 1.1),
            obs(CG_IN, B, 53, A, 53001, UDP, 1, 130, 0).seen(1.1, 1.1),
        ],
    ));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "udp", A, Some(53001), B, Some(53))
                .out(1, 70)
                .inc(1, 130)
                .flows(1, 1, 0)
                .observed(Observed::Established),
            want(Reporter::Dst, "udp", A, Some(53001), B, Some(53))
                .out(1, 130)
                .inc(1, 70)
                .flows(1, 1, 0)
                .observed(Observed::Established),
        ]
    );
    let records = a.process(&batch(40, 50, vec![]));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "udp", A, Some(53001), B, Some(53)).flows(1, 0, 1).observed(Observed::Established),
            want(Reporter::Dst, "udp", A, Some(53001), B, Some(53)).flows(1, 0, 1).observed(Observed::Established),
        ]
    );
    assert_eq!(a.tracked(), 0);
}

#[test]
fn udp_initiator_is_the_first_sender_after_the_first_batch() {
    // Not the first batch: the sender of the earliest packet, even from the lower port.
    let mut a = warm_agg();
    let records = a.process(&batch(
        10,
        20,
        vec![
            obs(CG_IN, B, 40000, A, 1000, UDP, 1, 100, 0).seen(12.0, 12.0),
            obs(CG_EG, A, 1000, B, 40000, UDP, 1, 50, 0).seen(11.0, 11.0),
        ],
    ));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "udp", A, Some(1000), B, Some(40000))
                .out(1, 50)
                .inc(1, 100)
                .flows(1, 1, 0)
                .observed(Observed::Established)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 4. ICMP
// ---------------------------------------------------------------------------------------------

#[test]
fn icmp_echo_request_and_reply_are_one_flow_keyed_by_identifier() {
    let mut a = warm_agg();
    let remote = "10.0.5.5";
    let records = a.process(&batch(
        10,
        20,
        vec![
            // The reply is listed first and stamped earlier: the request still decides.
            icmp(CG_IN, remote, A, ICMP, 0, 0, 0x1234, 3, 252).seen(10.5, 12.5),
            icmp(pod_eg(A_VETH), remote, A, ICMP, 0, 0, 0x1234, 3, 252).seen(10.5, 12.5),
            icmp(CG_EG, A, remote, ICMP, 8, 0, 0x1234, 3, 252).seen(11.0, 13.0),
            icmp(pod_in(A_VETH), A, remote, ICMP, 8, 0, 0x1234, 3, 252).seen(11.0, 13.0),
            // Another identifier: another flow, no reply.
            icmp(CG_EG, A, remote, ICMP, 8, 0, 0x9999, 1, 84).seen(11.0, 11.0),
        ],
    ));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "icmp", A, None, remote, None)
                .icmp(8, 0)
                .out(3, 252)
                .inc(3, 252)
                .flows(1, 1, 0)
                .observed(Observed::Established),
            want(Reporter::Src, "icmp", A, None, remote, None)
                .icmp(8, 0)
                .out(1, 84)
                .flows(1, 1, 0)
                .observed(Observed::Attempted),
        ]
    );
    assert_eq!(a.tracked(), 2);
    // Both expire after the idle timeout, with zero counts and their outcome.
    let records = a.process(&batch(50, 60, vec![]));
    let mut got = views(&records);
    got.sort_by_key(|v| v.observed);
    assert_eq!(
        got,
        vec![
            want(Reporter::Src, "icmp", A, None, remote, None)
                .icmp(8, 0)
                .flows(1, 0, 1)
                .observed(Observed::Established),
            want(Reporter::Src, "icmp", A, None, remote, None).icmp(8, 0).flows(1, 0, 1).observed(Observed::Attempted),
        ]
    );
    assert_eq!(a.tracked(), 0);
}

#[test]
fn icmp_echo_seen_only_as_reply_still_names_the_requester() {
    // Only the reply leaving the local pod: the remote host pinged A.
    let remote = "10.0.5.5";
    let records = warm_agg().process(&batch(10, 20, vec![icmp(CG_EG, A, remote, ICMP, 0, 0, 7, 1, 84)]));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Dst, "icmp", remote, None, A, None)
                .icmp(8, 0)
                .out(1, 84)
                .flows(1, 1, 0)
                .observed(Observed::Established)
        ]
    );
}

#[test]
fn icmp_other_messages_keep_type_and_code() {
    let records = warm_agg().process(&batch(10, 20, vec![icmp(CG_EG, A, B, ICMP, 3, 3, 0, 1, 120)]));
    assert_eq!(
        views(&records),
        vec![want(Reporter::Src, "icmp", A, None, B, None).icmp(3, 3).out(1, 120).flows(1, 1, 0)]
    );
}

// ---------------------------------------------------------------------------------------------
// 5. IPv6
// ---------------------------------------------------------------------------------------------

#[test]
fn ipv6_tcp_between_local_pods() {
    let a6 = "fd00:10:244:1::10";
    let b6 = "fd00:10:244:2::20";
    let records = agg().process(&batch(
        0,
        10,
        vec![
            obs(CG_EG, a6, 40000, b6, 8080, TCP, 9, 6300, OPENER_ALL).cgroup(42),
            obs(pod_in(A_VETH), a6, 40000, b6, 8080, TCP, 7, 6120, OPENER_ALL),
            obs(pod_eg(B_VETH), a6, 40000, b6, 8080, TCP, 7, 6120, OPENER_ALL),
            obs(CG_IN, a6, 40000, b6, 8080, TCP, 8, 6200, OPENER_ALL),
            obs(CG_EG, b6, 8080, a6, 40000, TCP, 70, 95000, ACCEPTOR_ALL),
            obs(pod_in(B_VETH), b6, 8080, a6, 40000, TCP, 65, 93000, ACCEPTOR_ALL),
            obs(pod_eg(A_VETH), b6, 8080, a6, 40000, TCP, 65, 93000, ACCEPTOR_ALL),
            obs(CG_IN, b6, 8080, a6, 40000, TCP, 66, 94000, ACCEPTOR_ALL),
        ],
    ));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "tcp", a6, Some(40000), b6, Some(8080))
                .out(7, 6120)
                .inc(65, 93000)
                .flows(1, 1, 1)
                .observed(Observed::Established),
            want(Reporter::Dst, "tcp", a6, Some(40000), b6, Some(8080))
                .out(65, 93000)
                .inc(7, 6120)
                .flows(1, 1, 1)
                .observed(Observed::Established),
        ]
    );
    for r in &records {
        assert_eq!(r.source_cgroup_id, Some(42));
        assert_eq!((r.source_name_aggr.as_ref(), r.dest_name_aggr.as_ref()), ("pvt", "pvt"));
    }
}

#[test]
fn ipv6_refused_tcp_and_icmpv6_echo() {
    let a6 = "fd00:10:244:1::10";
    let remote6 = "2001:db8::5";
    let records = agg().process(&batch(
        0,
        10,
        vec![
            obs(CG_EG, a6, 40000, remote6, 443, TCP, 1, 80, SYN_PKT),
            obs(CG_IN, remote6, 443, a6, 40000, TCP, 1, 60, RST | ACK),
            icmp(CG_EG, a6, remote6, ICMPV6, 128, 0, 0x42, 2, 208),
            icmp(CG_IN, remote6, a6, ICMPV6, 129, 0, 0x42, 2, 208),
        ],
    ));
    // Sorted by source port: ICMP's `None` first.
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "icmp6", a6, None, remote6, None)
                .icmp(128, 0)
                .out(2, 208)
                .inc(2, 208)
                .flows(1, 1, 0)
                .observed(Observed::Established),
            want(Reporter::Src, "tcp", a6, Some(40000), remote6, Some(443))
                .out(1, 80)
                .inc(1, 60)
                .flows(1, 1, 1)
                .observed(Observed::Rejected),
        ]
    );
    for r in &records {
        assert_eq!((r.source_name_aggr.as_ref(), r.dest_name_aggr.as_ref()), ("pvt", "pub"));
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Initiator rules
// ---------------------------------------------------------------------------------------------

#[test]
fn tcp_initiator_rules() {
    struct Case {
        name: &'static str,
        warm: bool,
        observations: Vec<Observation>,
        want: View,
    }
    let (x, y) = ("10.0.0.1", "10.0.0.2");
    let cases = vec![
        Case {
            name: "no SYN, first batch: the higher port, though the server's packet came first",
            warm: false,
            observations: vec![
                obs(CG_EG, x, 443, y, 51000, TCP, 5, 5000, ACK | PSH).seen(1.0, 2.0),
                obs(CG_IN, y, 51000, x, 443, TCP, 4, 400, ACK).seen(1.5, 2.0),
            ],
            want: want(Reporter::Dst, "tcp", y, Some(51000), x, Some(443))
                .out(5, 5000)
                .inc(4, 400)
                .flows(1, 0, 0)
                .observed(Observed::Established),
        },
        Case {
            name: "no SYN, later batch: still the higher port",
            warm: true,
            observations: vec![
                obs(CG_EG, x, 443, y, 51000, TCP, 5, 5000, ACK | PSH).seen(11.0, 12.0),
                obs(CG_IN, y, 51000, x, 443, TCP, 4, 400, ACK).seen(11.5, 12.0),
            ],
            want: want(Reporter::Dst, "tcp", y, Some(51000), x, Some(443))
                .out(5, 5000)
                .inc(4, 400)
                .flows(1, 0, 0)
                .observed(Observed::Established),
        },
        Case {
            name: "no SYN, one direction only: higher port, one way",
            warm: true,
            observations: vec![obs(CG_EG, y, 51000, x, 443, TCP, 4, 400, ACK)],
            want: want(Reporter::Src, "tcp", y, Some(51000), x, Some(443)).out(4, 400).flows(1, 0, 0),
        },
        Case {
            name: "no SYN, equal ports: the sender of the earliest packet",
            warm: true,
            observations: vec![
                obs(CG_EG, x, 5000, y, 5000, TCP, 1, 100, ACK).seen(12.0, 12.0),
                obs(CG_IN, y, 5000, x, 5000, TCP, 2, 200, ACK).seen(11.0, 12.0),
            ],
            want: want(Reporter::Dst, "tcp", y, Some(5000), x, Some(5000))
                .out(1, 100)
                .inc(2, 200)
                .flows(1, 0, 0)
                .observed(Observed::Established),
        },
        Case {
            name: "only a SYN-ACK: its receiver, though on the lower port",
            warm: true,
            observations: vec![obs(CG_EG, x, 50000, y, 80, TCP, 1, 60, SYN_ACK_PKT)],
            want: want(Reporter::Dst, "tcp", y, Some(80), x, Some(50000))
                .out(1, 60)
                .flows(1, 0, 0)
                .observed(Observed::Established),
        },
        Case {
            name: "a SYN beats the port rule and the earliest packet",
            warm: false,
            observations: vec![
                obs(CG_IN, y, 60000, x, 22, TCP, 1, 60, SYN_ACK_PKT).seen(1.0, 1.0),
                obs(CG_EG, x, 22, y, 60000, TCP, 1, 60, SYN_PKT).seen(1.5, 1.5),
            ],
            want: want(Reporter::Src, "tcp", x, Some(22), y, Some(60000))
                .out(1, 60)
                .inc(1, 60)
                .flows(1, 1, 0)
                .observed(Observed::Established),
        },
    ];
    for case in cases {
        let mut a = if case.warm { warm_agg() } else { agg() };
        let b = if case.warm { batch(10, 20, case.observations) } else { batch(0, 10, case.observations) };
        assert_eq!(views(&a.process(&b)), vec![case.want], "{}", case.name);
    }
}

#[test]
fn initiator_is_kept_across_batches() {
    // First batch decides by port; a later batch's packets must not flip it.
    let (x, y) = ("10.0.0.1", "10.0.0.2");
    let mut a = agg();
    a.process(&batch(0, 10, vec![obs(CG_EG, y, 51000, x, 443, TCP, 1, 100, ACK)]));
    let records = a.process(&batch(10, 20, vec![obs(CG_IN, x, 443, y, 51000, TCP, 2, 2000, ACK).seen(11.0, 11.0)]));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "tcp", y, Some(51000), x, Some(443))
                .inc(2, 2000)
                .flows(1, 0, 0)
                .observed(Observed::Established)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Transit
// ---------------------------------------------------------------------------------------------

#[test]
fn transit_only_is_one_fwd_record_not_doubled() {
    let client = "192.168.50.10";
    let server = "93.184.216.34";
    let (eth0, eth1) = (2, 3);
    let records = agg().process(&batch(
        0,
        10,
        vec![
            obs(host_in(eth0), client, 40000, server, 443, TCP, 10, 1000, OPENER_ALL),
            obs(host_eg(eth1), client, 40000, server, 443, TCP, 10, 1000, OPENER_ALL),
            obs(host_in(eth1), server, 443, client, 40000, TCP, 8, 6000, ACCEPTOR_ALL),
            obs(host_eg(eth0), server, 443, client, 40000, TCP, 8, 6000, ACCEPTOR_ALL),
        ],
    ));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Fwd, "tcp", client, Some(40000), server, Some(443))
                .out(10, 1000)
                .inc(8, 6000)
                .flows(1, 1, 1)
                .observed(Observed::Established)
        ]
    );
    assert_eq!((records[0].source_name_aggr.as_ref(), records[0].dest_name_aggr.as_ref()), ("pvt", "pub"));
    assert_eq!(records[0].source_cgroup_id, None);
}

#[test]
fn host_interfaces_are_ignored_when_an_end_is_local() {
    let server = "93.184.216.34";
    let records = agg().process(&batch(
        0,
        10,
        vec![
            obs(CG_EG, A, 40000, server, 443, TCP, 10, 1000, OPENER_ALL),
            obs(pod_in(A_VETH), A, 40000, server, 443, TCP, 10, 1000, OPENER_ALL),
            obs(host_eg(2), A, 40000, server, 443, TCP, 10, 1000, OPENER_ALL),
            obs(host_in(2), server, 443, A, 40000, TCP, 8, 6000, ACCEPTOR_ALL),
            obs(pod_eg(A_VETH), server, 443, A, 40000, TCP, 8, 6000, ACCEPTOR_ALL),
            obs(CG_IN, server, 443, A, 40000, TCP, 8, 6000, ACCEPTOR_ALL),
        ],
    ));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "tcp", A, Some(40000), server, Some(443))
                .out(10, 1000)
                .inc(8, 6000)
                .flows(1, 1, 1)
                .observed(Observed::Established)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Aggregation level 1
// ---------------------------------------------------------------------------------------------

#[test]
fn aggregation_level_drops_source_port_and_sums() {
    let dns = "10.96.0.10";
    let observations = || {
        vec![
            // Answered.
            obs(CG_EG, A, 40001, dns, 53, UDP, 1, 60, 0),
            obs(CG_IN, dns, 53, A, 40001, UDP, 1, 120, 0),
            // Not answered.
            obs(CG_EG, A, 40002, dns, 53, UDP, 2, 130, 0),
        ]
    };

    let mut level1 = Leveled::new(AggregationLevel::NoSourcePort);
    let records = level1.process(&batch(0, 10, observations()));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "udp", A, None, dns, Some(53))
                .out(3, 190)
                .inc(1, 120)
                .flows(2, 2, 0)
                .observed(Observed::Mixed)
        ]
    );
    assert_eq!((records[0].num_established, records[0].num_attempted, records[0].num_rejected), (1, 0, 0));
    assert_eq!(level1.tracked(), 2);
    // Both expire together: one record of two completed flows.
    let records = level1.process(&batch(40, 50, vec![]));
    assert_eq!(
        views(&records),
        vec![want(Reporter::Src, "udp", A, None, dns, Some(53)).flows(2, 0, 2).observed(Observed::Mixed)]
    );

    let records = agg().process(&batch(0, 10, observations()));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "udp", A, Some(40001), dns, Some(53))
                .out(1, 60)
                .inc(1, 120)
                .flows(1, 1, 0)
                .observed(Observed::Established),
            want(Reporter::Src, "udp", A, Some(40002), dns, Some(53)).out(2, 130).flows(1, 1, 0),
        ]
    );
}

#[test]
fn aggregation_level_tcp_and_both_reporters() {
    let observations = vec![
        obs(CG_EG, A, 40001, B, 8080, TCP, 3, 300, OPENER_ALL),
        obs(CG_IN, A, 40001, B, 8080, TCP, 3, 300, OPENER_ALL),
        obs(CG_EG, B, 8080, A, 40001, TCP, 2, 2000, ACCEPTOR_ALL),
        obs(CG_IN, B, 8080, A, 40001, TCP, 2, 2000, ACCEPTOR_ALL),
        obs(CG_EG, A, 40002, B, 8080, TCP, 5, 500, SYN_PKT | ACK),
        obs(CG_IN, A, 40002, B, 8080, TCP, 5, 500, SYN_PKT | ACK),
        obs(CG_EG, B, 8080, A, 40002, TCP, 4, 4000, SYN_ACK_PKT),
        obs(CG_IN, B, 8080, A, 40002, TCP, 4, 4000, SYN_ACK_PKT),
        // Another destination port stays apart.
        obs(CG_EG, A, 40003, B, 9090, TCP, 1, 60, SYN_PKT),
    ];
    let records = Leveled::new(AggregationLevel::NoSourcePort).process(&batch(0, 10, observations));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "tcp", A, None, B, Some(8080))
                .out(8, 800)
                .inc(6, 6000)
                .flows(2, 2, 1)
                .observed(Observed::Established),
            want(Reporter::Dst, "tcp", A, None, B, Some(8080))
                .out(6, 6000)
                .inc(8, 800)
                .flows(2, 2, 1)
                .observed(Observed::Established),
            want(Reporter::Src, "tcp", A, None, B, Some(9090)).out(1, 60).flows(1, 1, 0).observed(Observed::Attempted),
        ]
    );
}

#[test]
fn aggregation_level_merges_echo_identifiers() {
    let remote = "10.0.5.5";
    let observations = || {
        vec![
            icmp(CG_EG, A, remote, ICMP, 8, 0, 1, 1, 84),
            icmp(CG_IN, remote, A, ICMP, 0, 0, 1, 1, 84),
            icmp(CG_EG, A, remote, ICMP, 8, 0, 2, 1, 84),
        ]
    };
    let records = Leveled::new(AggregationLevel::NoSourcePort).process(&batch(0, 10, observations()));
    assert_eq!(
        views(&records),
        vec![
            want(Reporter::Src, "icmp", A, None, remote, None)
                .icmp(8, 0)
                .out(2, 168)
                .inc(1, 84)
                .flows(2, 2, 0)
                .observed(Observed::Mixed)
        ]
    );
    assert_eq!((records[0].num_established, records[0].num_attempted), (1, 1));
    let records = agg().process(&batch(0, 10, observations()));
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| r.num_flows == 1));
}

// ---------------------------------------------------------------------------------------------
// 9. TCP across batches
// ---------------------------------------------------------------------------------------------

#[test]
fn tcp_spanning_batches_counts_start_and_completion_once() {
    let server = "93.184.216.34";
    let mut a = agg();
    let mut steps: Vec<(CaptureBatch, Vec<View>, usize)> = Vec::new();
    let conn = |reporter| want(reporter, "tcp", A, Some(40000), server, Some(443));
    // Handshake and data.
    steps.push((
        batch(
            0,
            10,
            vec![
                obs(CG_EG, A, 40000, server, 443, TCP, 3, 300, SYN_PKT | ACK | PSH).seen(1.0, 9.0),
                obs(CG_IN, server, 443, A, 40000, TCP, 2, 2000, SYN_ACK_PKT | PSH).seen(1.1, 9.0),
            ],
        ),
        vec![conn(Reporter::Src).out(3, 300).inc(2, 2000).flows(1, 1, 0).observed(Observed::Established)],
        1,
    ));
    // Only data.
    steps.push((
        batch(
            10,
            20,
            vec![
                obs(CG_EG, A, 40000, server, 443, TCP, 4, 400, ACK | PSH).seen(11.0, 19.0),
                obs(CG_IN, server, 443, A, 40000, TCP, 5, 5000, ACK | PSH).seen(11.0, 19.0),
            ],
        ),
        vec![conn(Reporter::Src).out(4, 400).inc(5, 5000).flows(1, 0, 0).observed(Observed::Established)],
        1,
    ));
    // Nothing: no record, still tracked.
    steps.push((batch(20, 30, vec![]), vec![], 1));
    // FINs from both.
    steps.push((
        batch(
            30,
            40,
            vec![
                obs(CG_EG, A, 40000, server, 443, TCP, 1, 52, ACK | FIN).seen(31.0, 31.0),
                obs(CG_IN, server, 443, A, 40000, TCP, 1, 52, ACK | FIN).seen(31.1, 31.1),
            ],
        ),
        vec![conn(Reporter::Src).out(1, 52).inc(1, 52).flows(1, 0, 1).observed(Observed::Established)],
        1,
    ));
    // Nothing: the completed connection is remembered (TIME_WAIT linger), no record.
    steps.push((batch(40, 50, vec![]), vec![], 1));
    // Retransmitted FINs and the last ACK arrive late: they join, nothing starts or completes.
    steps.push((
        batch(
            50,
            60,
            vec![
                obs(CG_EG, A, 40000, server, 443, TCP, 1, 52, ACK | FIN).seen(51.0, 51.0),
                obs(CG_IN, server, 443, A, 40000, TCP, 1, 52, ACK | FIN).seen(51.0, 51.0),
            ],
        ),
        vec![conn(Reporter::Src).out(1, 52).inc(1, 52).flows(1, 0, 0).observed(Observed::Established)],
        1,
    ));
    // Past the linger time after completion: forgotten, no record.
    steps.push((batch(100, 110, vec![]), vec![], 0));
    for (i, (b, want_views, tracked)) in steps.into_iter().enumerate() {
        let records = a.process(&b);
        assert_eq!(views(&records), want_views, "step {i}");
        assert_eq!(a.tracked(), tracked, "step {i}");
    }
}

#[test]
fn idle_tcp_is_forgotten_silently() {
    let server = "93.184.216.34";
    let mut a = agg();
    a.process(&batch(0, 10, vec![obs(CG_EG, A, 40000, server, 443, TCP, 1, 60, SYN_PKT).seen(1.0, 1.0)]));
    assert!(a.process(&batch(500, 510, vec![])).is_empty());
    assert_eq!(a.tracked(), 1);
    // 600 s without packets and without FIN/RST: forgotten, no record.
    assert!(a.process(&batch(600, 610, vec![])).is_empty());
    assert_eq!(a.tracked(), 0);
}

// ---------------------------------------------------------------------------------------------
// 10. net_aggr and proto_name
// ---------------------------------------------------------------------------------------------

#[test]
fn net_aggr_table() {
    let cases = [
        ("10.0.0.1", "pvt"),
        ("10.255.255.255", "pvt"),
        ("9.255.255.255", "pub"),
        ("11.0.0.0", "pub"),
        ("172.16.0.1", "pvt"),
        ("172.31.255.255", "pvt"),
        ("172.15.255.255", "pub"),
        ("172.32.0.0", "pub"),
        ("192.168.0.1", "pvt"),
        ("192.168.255.255", "pvt"),
        ("192.167.255.255", "pub"),
        ("192.169.0.0", "pub"),
        ("8.8.8.8", "pub"),
        ("100.64.0.1", "pub"),
        ("127.0.0.1", "pub"),
        ("fc00::1", "pvt"),
        ("fd12:3456::1", "pvt"),
        ("fdff:ffff::1", "pvt"),
        ("fbff::1", "pub"),
        ("fe00::1", "pub"),
        ("fe80::1", "pvt"),
        ("febf:ffff::1", "pvt"),
        ("fec0::1", "pub"),
        ("2001:db8::1", "pub"),
        ("2606:4700::1111", "pub"),
        ("::1", "pub"),
    ];
    for (addr, want) in cases {
        assert_eq!(net_aggr(ip(addr)), want, "{addr}");
    }
}

#[test]
fn proto_name_table() {
    let cases =
        [(1, "icmp"), (6, "tcp"), (17, "udp"), (58, "icmp6"), (132, "sctp"), (0, "0"), (47, "47"), (255, "255")];
    for (p, want) in cases {
        assert_eq!(proto_name(p), want, "{p}");
    }
}

#[test]
fn other_protocols_have_ports_and_their_number() {
    let records = warm_agg().process(&batch(10, 20, vec![obs(CG_EG, A, 4000, B, 5000, proto::SCTP, 1, 100, 0)]));
    assert_eq!(
        views(&records),
        vec![want(Reporter::Src, "sctp", A, Some(4000), B, Some(5000)).out(1, 100).flows(1, 1, 0)]
    );
    let records = warm_agg().process(&batch(10, 20, vec![obs(CG_EG, A, 0, B, 0, 47, 1, 100, 0)]));
    assert_eq!(views(&records), vec![want(Reporter::Src, "47", A, Some(0), B, Some(0)).out(1, 100).flows(1, 1, 0)]);
}

// ---------------------------------------------------------------------------------------------
// 11. Record ids
// ---------------------------------------------------------------------------------------------

/// The documented id input of a record: `node|reporter|proto|initiator ip|port|responder
/// ip|port|icmp (Debug)|echo id (Debug)|start ns|end ns`, FNV-1a.
fn expected_id(reporter: &str, rest: &str) -> String {
    crate::model::record_id(&format!("node-1|{reporter}|{rest}"))
}

#[test]
fn record_ids_are_the_fnv_of_the_connection_reporter_and_interval() {
    let tcp =
        vec![obs(CG_EG, A, 40000, B, 8080, TCP, 1, 60, SYN_PKT), obs(CG_IN, A, 40000, B, 8080, TCP, 1, 60, SYN_PKT)];
    let records = agg().process(&batch(0, 10, tcp));
    let rest = format!("6|{A}|40000|{B}|8080|None|None|{}|{}", T0, T0 + 10 * SEC);
    assert_eq!(ids(&records), vec![expected_id("Src", &rest), expected_id("Dst", &rest)]);
    assert_eq!(&*records[0].context.conn, format!("node-1|{{R}}|{rest}"));
    let v6 = vec![
        icmp(CG_EG, "fd00::1", "fd00::2:0:0:2", ICMPV6, 128, 0, 7, 1, 104),
        icmp(CG_IN, "fd00::2:0:0:2", "fd00::1", ICMPV6, 129, 0, 7, 1, 104).seen(1.5, 2.0),
    ];
    let records = agg().process(&batch(0, 10, v6));
    let rest = format!("58|fd00::1|0|fd00::2:0:0:2|0|Some((128, 0))|Some(7)|{}|{}", T0, T0 + 10 * SEC);
    assert_eq!(ids(&records), vec![expected_id("Src", &rest)]);
    // The completion record of an idle UDP flow, in the interval it expires in.
    let mut a = agg();
    a.process(&batch(0, 10, vec![obs(CG_EG, A, 5353, B, 53, UDP, 1, 80, 0)]));
    let expired = a.process(&batch(60, 70, Vec::new()));
    let rest = format!("17|{A}|5353|{B}|53|None|None|{}|{}", T0 + 60 * SEC, T0 + 70 * SEC);
    assert_eq!(ids(&expired), vec![expected_id("Src", &rest)]);
    // localize's record for the side capture did not see.
    let syn = vec![obs(pod_in(5), A, 41002, B, 5432, TCP, 2, 120, SYN_PKT)];
    let mut records = agg().process(&batch(0, 10, syn));
    records[0].context.dest = pod_on("node-1");
    let records = localize(records, "node-1");
    let rest = format!("6|{A}|41002|{B}|5432|None|None|{}|{}", T0, T0 + 10 * SEC);
    assert_eq!(ids(&records), vec![expected_id("Src", &rest), expected_id("Dst", &rest)]);
}

fn ids(records: &[FlowRecord]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

#[test]
fn record_ids_are_stable_and_distinct() {
    let observations = || {
        vec![
            obs(CG_EG, A, 40000, B, 8080, TCP, 1, 60, SYN_PKT),
            obs(CG_IN, A, 40000, B, 8080, TCP, 1, 60, SYN_PKT),
            obs(CG_EG, B, 8080, A, 40000, TCP, 1, 60, SYN_ACK_PKT),
            obs(CG_IN, B, 8080, A, 40000, TCP, 1, 60, SYN_ACK_PKT),
        ]
    };
    let first = agg().process(&batch(0, 10, observations()));
    let again = agg().process(&batch(0, 10, observations()));
    assert_eq!(first.len(), 2);
    assert_eq!(first, again, "same input, same records");
    for r in &first {
        assert_eq!(r.id.len(), 16, "{}", r.id);
        assert!(r.id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{}", r.id);
    }
    // Reporters differ.
    assert_ne!(first[0].id, first[1].id);
    // Another interval of the same connection.
    let later = agg().process(&batch(10, 20, observations()));
    assert_eq!(later.len(), 2);
    assert_ne!(first[0].id, later[0].id);
    assert_ne!(first[1].id, later[1].id);
    let longer = agg().process(&batch(0, 20, observations()));
    assert_ne!(first[0].id, longer[0].id);
    // Another node.
    let mut other_cfg = cfg();
    other_cfg.node = "node-2".into();
    let other_node = Aggregator::new(other_cfg).process(&batch(0, 10, observations()));
    assert_ne!(first[0].id, other_node[0].id);
    assert_eq!(&*other_node[0].host, "node-2");
    // Another connection.
    let mut shifted = observations();
    for o in &mut shifted {
        if o.tuple.src_port == 40000 {
            o.tuple.src_port = 40001;
        } else {
            o.tuple.dst_port = 40001;
        }
    }
    let other_conn = agg().process(&batch(0, 10, shifted));
    assert_ne!(first[0].id, other_conn[0].id);
    // All ids of one interval are unique.
    let mut ids: Vec<_> = first.iter().chain(&other_conn).map(|r| r.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
}

#[test]
fn records_are_sorted() {
    let records = agg().process(&batch(
        0,
        10,
        vec![
            obs(CG_EG, B, 40000, A, 80, TCP, 1, 60, SYN_PKT),
            obs(CG_EG, A, 40001, B, 80, TCP, 1, 60, SYN_PKT),
            obs(CG_IN, A, 40000, B, 80, TCP, 1, 60, SYN_PKT),
            obs(CG_EG, A, 40000, B, 80, TCP, 1, 60, SYN_PKT),
        ],
    ));
    let keys: Vec<_> = records.iter().map(|r| (r.source_ip, r.source_port, r.reporter)).collect();
    assert_eq!(
        keys,
        vec![
            (Some(ip(A)), Some(40000), Reporter::Src),
            (Some(ip(A)), Some(40000), Reporter::Dst),
            (Some(ip(A)), Some(40001), Reporter::Src),
            (Some(ip(B)), Some(40000), Reporter::Src),
        ]
    );
}

#[test]
fn tcp_fins_in_different_batches_complete_once_both_are_seen() {
    let server = "93.184.216.34";
    let mut a = agg();
    let conn = || want(Reporter::Src, "tcp", A, Some(40000), server, Some(443));
    let steps = [
        (
            batch(
                0,
                10,
                vec![
                    obs(CG_EG, A, 40000, server, 443, TCP, 2, 120, SYN_PKT | ACK),
                    obs(CG_IN, server, 443, A, 40000, TCP, 1, 60, SYN_ACK_PKT),
                ],
            ),
            conn().out(2, 120).inc(1, 60).flows(1, 1, 0),
        ),
        // The initiator closes: half-closed, not complete.
        (
            batch(10, 20, vec![obs(CG_EG, A, 40000, server, 443, TCP, 1, 52, ACK | FIN).seen(11.0, 11.0)]),
            conn().out(1, 52).flows(1, 0, 0),
        ),
        // The responder's FIN: complete now.
        (
            batch(20, 30, vec![obs(CG_IN, server, 443, A, 40000, TCP, 3, 3052, ACK | PSH | FIN).seen(21.0, 22.0)]),
            conn().inc(3, 3052).flows(1, 0, 1),
        ),
    ];
    for (i, (b, want_view)) in steps.into_iter().enumerate() {
        assert_eq!(views(&a.process(&b)), vec![want_view.observed(Observed::Established)], "step {i}");
    }
}

#[test]
fn transit_udp_expires_as_fwd() {
    let (client, server) = ("192.168.50.10", "1.1.1.1");
    let mut a = agg();
    let records = a.process(&batch(
        0,
        10,
        vec![
            obs(host_in(2), client, 50000, server, 53, UDP, 1, 70, 0),
            obs(host_eg(3), client, 50000, server, 53, UDP, 1, 70, 0),
        ],
    ));
    assert_eq!(
        views(&records),
        vec![want(Reporter::Fwd, "udp", client, Some(50000), server, Some(53)).out(1, 70).flows(1, 1, 0)]
    );
    let records = a.process(&batch(40, 50, vec![]));
    assert_eq!(views(&records), vec![want(Reporter::Fwd, "udp", client, Some(50000), server, Some(53)).flows(1, 0, 1)]);
    assert_eq!(a.tracked(), 0);
}

// ---------------------------------------------------------------------------------------------
// localize: sides that identity knows are local
// ---------------------------------------------------------------------------------------------

fn pod_on(node: &str) -> Option<std::sync::Arc<crate::model::Endpoint>> {
    Some(std::sync::Arc::new(crate::model::Endpoint {
        kind: crate::model::EndpointKind::Wep,
        record_names: ("db".into(), "db".into(), "shop".into()),
        name: Some("db".into()),
        name_aggr: "db".into(),
        namespace: Some("shop".into()),
        labels: Default::default(),
        record_labels: Default::default(),
        namespace_labels: Default::default(),
        service_account: None,
        service_account_labels: Default::default(),
        host_network: false,
        named_ports: Vec::new(),
        node: Some(node.into()),
    }))
}

#[test]
fn localize_adds_the_side_of_a_local_pod_that_capture_did_not_see() {
    // A SYN dropped on the node before the destination's veth: only the source's side saw it.
    let observations = vec![obs(pod_in(5), A, 41002, B, 5432, TCP, 2, 120, SYN | SYN_ONLY)];
    let mut records = agg().process(&batch(0, 10, observations));
    assert_eq!(records.len(), 1);
    records[0].context.dest = pod_on("node-1");
    let records = localize(records, "node-1");
    let v = views(&records);
    assert_eq!(v.len(), 2);
    assert_eq!(
        v[1],
        want(Reporter::Dst, "tcp", A, Some(41002), B, Some(5432))
            .inc(2, 120)
            .out(0, 0)
            .flows(1, 1, 0)
            .observed(Observed::Attempted)
    );
    assert_ne!(records[0].id, records[1].id);
    // On another node the destination is not local: nothing is added.
    let mut again = agg().process(&batch(0, 10, vec![obs(pod_in(5), A, 41002, B, 5432, TCP, 2, 120, SYN | SYN_ONLY)]));
    again[0].context.dest = pod_on("node-2");
    assert_eq!(localize(again, "node-1").len(), 1);
}

#[test]
fn localize_turns_transit_into_the_local_side() {
    let observations = vec![
        obs(host_in(2), A, 40000, B, 80, TCP, 3, 300, SYN | SYN_ONLY),
        obs(host_eg(2), B, 80, A, 40000, TCP, 2, 200, SYN | ACK | SYN_ACK),
    ];
    let mut records = agg().process(&batch(0, 10, observations));
    assert_eq!(records[0].reporter, Reporter::Fwd);
    records[0].context.dest = pod_on("node-1");
    let v = views(&localize(records, "node-1"));
    assert_eq!(
        v,
        vec![
            want(Reporter::Dst, "tcp", A, Some(40000), B, Some(80))
                .inc(3, 300)
                .out(2, 200)
                .flows(1, 1, 0)
                .observed(Observed::Established)
        ]
    );
}

#[test]
fn an_icmp_port_unreachable_rejects_the_udp_flow_it_names() {
    // A sends UDP to B:6000 where nothing listens; B answers with ICMP port unreachable carrying
    // A's datagram header.
    let mut unreachable = icmp(CG_IN, B, A, ICMP, 3, 3, 0, 1, 56);
    unreachable.tuple.src_port = 40006;
    unreachable.tuple.dst_port = 6000;
    unreachable.tuple.inner_proto = UDP;
    let observations = vec![obs(CG_EG, A, 40006, B, 6000, UDP, 3, 300, 0), unreachable];
    let records = warm_agg().process(&batch(10, 20, observations));
    let udp = records.iter().find(|r| &*r.proto == "udp").expect("udp record");
    assert_eq!((udp.observed, udp.num_rejected), (Observed::Rejected, 1));
    // The ICMP message is a flow of its own, with its own counts.
    let icmp_record = records.iter().find(|r| &*r.proto == "icmp").expect("icmp record");
    assert_eq!((icmp_record.icmp_type, icmp_record.packets_out + icmp_record.packets_in), (Some(3), 1));
    // An unreachable about another port names no flow here.
    let mut other = icmp(CG_IN, B, A, ICMP, 3, 3, 0, 1, 56);
    other.tuple.src_port = 40007;
    other.tuple.dst_port = 6000;
    other.tuple.inner_proto = UDP;
    let records = warm_agg().process(&batch(10, 20, vec![obs(CG_EG, A, 40006, B, 6000, UDP, 3, 300, 0), other]));
    let udp = records.iter().find(|r| &*r.proto == "udp").unwrap();
    assert_eq!(udp.observed, Observed::OneWay);
}

// ---------------------------------------------------------------------------------------------
// Buffers kept between intervals
// ---------------------------------------------------------------------------------------------

#[test]
fn records_made_in_recycled_memory_equal_a_fresh_stages() {
    // The same intervals through an aggregator that gets its records back after each one, and
    // one that never does: every record is the same, field for field (the JSON the log gets).
    let intervals = || {
        vec![
            batch(
                0,
                10,
                vec![
                    obs(CG_EG, A, 40000, B, 80, TCP, 2, 120, SYN_PKT),
                    obs(CG_IN, B, 80, A, 40000, TCP, 1, 60, SYN_ACK_PKT),
                ],
            ),
            batch(10, 20, vec![]),
            batch(20, 30, (0..3000).map(|i| obs(CG_EG, A, 20000 + i, B, 53, UDP, 1, 80, 0)).collect()),
            batch(
                30,
                40,
                vec![
                    obs(CG_EG, A, 40000, B, 80, TCP, 3, 180, ACK | FIN),
                    obs(CG_IN, B, 80, A, 40000, TCP, 2, 120, ACK | FIN),
                ],
            ),
            batch(40, 90, vec![]),
        ]
    };
    let (mut kept, mut fresh) = (agg(), agg());
    let mut n = 0;
    for b in intervals() {
        let a = kept.process(&b);
        let json = |rs: &[FlowRecord]| rs.iter().map(|r| serde_json::to_string(r).expect("json")).collect::<Vec<_>>();
        assert_eq!(json(&a), json(&fresh.process(&b)), "interval from {}", b.start_ns);
        n += a.len();
        kept.recycle(a);
    }
    // Only A's socket is watched (its egress and ingress), so one side each time: the SYN, the
    // FIN, 3,000 UDP flows and their expiry.
    assert_eq!(n, 1 + 1 + 3000 + 3000);
}

#[test]
fn kept_memory_outlasts_quiet_intervals_and_a_floods_goes_back() {
    let mut s = Scratch::default();
    assert_eq!(s.note(100_000, 200_000), (100_000, 200_000));
    // A quiet interval keeps the flood-sized buffers (1/16 less each interval)...
    assert_eq!(s.note(0, 0), (93_750, 187_500));
    let mut v: Vec<u64> = Vec::with_capacity(200_000);
    v.push(1);
    recycle(&mut v, s.recent_records);
    assert_eq!((v.len(), v.capacity()), (0, 200_000));
    // ...until far smaller batches have followed it for long enough (22 intervals here).
    let quiet = (0..22).map(|_| s.note(10, 10)).last().expect("22 intervals");
    assert!(quiet.1 < 200_000 / 4, "{quiet:?}");
    recycle(&mut v, quiet.1);
    assert_eq!(v.capacity(), quiet.1);
    // Small buffers are never given back below 4 x 1024 entries.
    let mut small: Vec<u64> = Vec::with_capacity(4096);
    recycle(&mut small, 0);
    assert_eq!(small.capacity(), 4096);
}
