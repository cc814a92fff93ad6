//! Kernel/userspace contract of flowaudit.
//!
//! Takes nothing and does nothing: it only defines the `#[repr(C)]` types the eBPF programs write
//! into maps and the agent reads back, plus the names and indexes both sides must agree on.
//! Every struct has explicit padding and a compile-time size assertion, so a field added on one
//! side cannot silently shift the other. It must never hold logic beyond layout helpers.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

/// Map names, as declared in the eBPF object and looked up by the agent.
pub mod maps {
    /// `ArrayOfMaps` with one slot: the flow table the programs currently write to.
    pub const FLOW_TABLES: &str = "FLOW_TABLES";
    /// Ring buffer of [`crate::FlowEvent`]s, used when the active flow table is full.
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    /// Per-CPU `u64` counters, indexed by [`crate::counter_index`].
    pub const COUNTERS: &str = "COUNTERS";
}

/// Program names in the eBPF object.
pub mod programs {
    /// `cgroup_skb` ingress: packets delivered to a socket of the attached cgroup subtree.
    pub const CGROUP_INGRESS: &str = "flowaudit_cg_ingress";
    /// `cgroup_skb` egress: packets sent by a socket of the attached cgroup subtree.
    pub const CGROUP_EGRESS: &str = "flowaudit_cg_egress";
    /// TC ingress: packets arriving on a watched interface.
    pub const TC_INGRESS: &str = "flowaudit_tc_ingress";
    /// TC egress: packets leaving through a watched interface.
    pub const TC_EGRESS: &str = "flowaudit_tc_egress";
    /// `cgroup_skb` program that only returns "allow": the baseline of the benchmarks.
    pub const CGROUP_EMPTY: &str = "flowaudit_cg_empty";
    /// TC program that only returns `TC_ACT_UNSPEC`: the baseline of the benchmarks.
    pub const TC_EMPTY: &str = "flowaudit_tc_empty";
    /// `cgroup_skb` program doing one hash lookup and one atomic add on a fixed key: the floor of
    /// per-flow counting in the benchmarks.
    pub const CGROUP_FLOOR: &str = "flowaudit_cg_floor";
    /// TC program doing one hash lookup and one atomic add on a fixed key: the benchmarks' floor.
    pub const TC_FLOOR: &str = "flowaudit_tc_floor";
}

/// Where a packet was observed. Stored in [`FlowKey::obs`]; also the first index of the counters.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObsPoint {
    /// `cgroup_skb` ingress: the receiving socket is in the watched cgroup subtree.
    CgroupIngress = 0,
    /// `cgroup_skb` egress: the sending socket is in the watched cgroup subtree.
    CgroupEgress = 1,
    /// TC ingress of a watched interface (packet enters this network namespace through it).
    TcIngress = 2,
    /// TC egress of a watched interface (packet leaves this network namespace through it).
    TcEgress = 3,
}

impl ObsPoint {
    /// Every observation point, in index order.
    pub const ALL: [ObsPoint; 4] =
        [ObsPoint::CgroupIngress, ObsPoint::CgroupEgress, ObsPoint::TcIngress, ObsPoint::TcEgress];

    /// The observation point stored as `raw`, if it is one.
    pub const fn from_raw(raw: u8) -> Option<ObsPoint> {
        match raw {
            0 => Some(ObsPoint::CgroupIngress),
            1 => Some(ObsPoint::CgroupEgress),
            2 => Some(ObsPoint::TcIngress),
            3 => Some(ObsPoint::TcEgress),
            _ => None,
        }
    }

    /// Stable lower-case name, used as the `hook` label of metrics.
    pub const fn name(self) -> &'static str {
        match self {
            ObsPoint::CgroupIngress => "cgroup_ingress",
            ObsPoint::CgroupEgress => "cgroup_egress",
            ObsPoint::TcIngress => "tc_ingress",
            ObsPoint::TcEgress => "tc_egress",
        }
    }
}

/// Per-hook kernel counters (second index of the counter array) of the packets that do not end
/// in the flow table. Packets and bytes that do are counted by the agent when it drains the
/// table, which keeps two atomic adds off every packet's path. Values are never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Wire packets sent to the ring buffer because the flow table was full.
    TableFullPackets = 0,
    /// Wire packets lost: table full and ring buffer full (or no table installed).
    LostPackets = 1,
    /// IP-layer bytes of the lost packets.
    LostBytes = 2,
    /// Packets that were not IPv4/IPv6 (ARP, LLDP, ...): no flow, counted only here.
    NonIpPackets = 3,
    /// IP packets whose headers could not be read: no flow, counted only here.
    MalformedPackets = 4,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 5] = [
        Counter::TableFullPackets,
        Counter::LostPackets,
        Counter::LostBytes,
        Counter::NonIpPackets,
        Counter::MalformedPackets,
    ];

    /// Stable lower-case name, used in metric names.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::TableFullPackets => "table_full_packets",
            Counter::LostPackets => "lost_packets",
            Counter::LostBytes => "lost_bytes",
            Counter::NonIpPackets => "non_ip_packets",
            Counter::MalformedPackets => "malformed_packets",
        }
    }
}

/// Number of [`Counter`] kinds per hook.
pub const COUNTERS_PER_HOOK: u32 = 8;
/// Number of slots in the per-CPU counter array.
pub const COUNTER_SLOTS: u32 = 4 * COUNTERS_PER_HOOK;

/// Index of `counter` for hook `obs` in the per-CPU counter array.
#[inline(always)]
pub const fn counter_index(obs: ObsPoint, counter: Counter) -> u32 {
    obs as u32 * COUNTERS_PER_HOOK + counter as u32
}

/// `FlowKey::family` of IPv4 (Linux `AF_INET`).
pub const FAMILY_IPV4: u8 = 2;
/// `FlowKey::family` of IPv6 (Linux `AF_INET6`).
pub const FAMILY_IPV6: u8 = 10;

/// IANA protocol numbers the programs parse.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// Bits of [`FlowStats::tcp_flags`]: the TCP header's flag byte, ORed over the packets, plus two
/// bits the byte alone cannot express once ORed.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u64 = 0x01;
    /// SYN.
    pub const SYN: u64 = 0x02;
    /// RST.
    pub const RST: u64 = 0x04;
    /// PSH.
    pub const PSH: u64 = 0x08;
    /// ACK.
    pub const ACK: u64 = 0x10;
    /// A packet with SYN set and ACK clear was seen (the connection's opener sent it).
    pub const SYN_ONLY: u64 = 0x100;
    /// A packet with SYN and ACK set was seen (the connection's acceptor sent it).
    pub const SYN_ACK: u64 = 0x200;
}

/// Key of the flow table: one direction of one flow at one observation point.
///
/// Addresses are in network byte order, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`). Ports are
/// in host byte order. ICMP and ICMPv6: `src_port` holds the echo identifier of echo requests and
/// replies (0 otherwise), `dst_port` is 0, and `icmp_type`/`icmp_code` are set; a destination
/// unreachable message (ICMP 3, ICMPv6 1) about a TCP, UDP or SCTP packet carries that packet's
/// ports in `src_port`/`dst_port` and its protocol in `inner_proto`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address (16 bytes, network order).
    pub src_addr: [u8; 16],
    /// Destination address (16 bytes, network order).
    pub dst_addr: [u8; 16],
    /// Source port (host order); ICMP echo identifier.
    pub src_port: u16,
    /// Destination port (host order).
    pub dst_port: u16,
    /// Interface index of a TC observation; 0 for the cgroup hooks.
    pub ifindex: u32,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// IP protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// [`ObsPoint`] as `u8`.
    pub obs: u8,
    /// ICMP/ICMPv6 type; 0 for other protocols.
    pub icmp_type: u8,
    /// ICMP/ICMPv6 code; 0 for other protocols.
    pub icmp_code: u8,
    /// Protocol of the packet a destination-unreachable message refuses; 0 otherwise.
    pub inner_proto: u8,
    /// Explicit padding; always zero so equal flows hash equally.
    pub _pad: [u8; 2],
}

/// Counters of one [`FlowKey`], updated with atomic adds by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Wire packets (a GSO/GRO aggregate counts as its segments).
    pub packets: u64,
    /// IP-layer bytes (IP header and payload of every wire packet).
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first packet.
    pub first_seen_ns: u64,
    /// `bpf_ktime_get_ns()` of the last packet (last writer wins across CPUs).
    pub last_seen_ns: u64,
    /// cgroup v2 id (inode number) of the socket's cgroup; 0 when the packet had no socket.
    pub cgroup_id: u64,
    /// [`tcp_flags`] bits seen (a `u64` because the BPF ISA's atomic OR is 64-bit).
    pub tcp_flags: u64,
}

/// One packet of a flow that did not fit the flow table, sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// The flow the packet belongs to.
    pub key: FlowKey,
    /// IP-layer bytes of the packet (all its segments).
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` when it was seen.
    pub ts_ns: u64,
    /// cgroup v2 id of its socket, 0 if none.
    pub cgroup_id: u64,
    /// Wire packets (segments) it stands for.
    pub packets: u32,
    /// [`tcp_flags`] bits of the packet.
    pub tcp_flags: u32,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 4);
const _: () = assert!(core::mem::size_of::<FlowStats>() == 48);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 80);
const _: () = assert!(Counter::ALL.len() as u32 <= COUNTERS_PER_HOOK);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for crate::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::FlowEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indexes_are_unique_and_in_range() {
        let mut seen = [false; COUNTER_SLOTS as usize];
        for obs in ObsPoint::ALL {
            for counter in Counter::ALL {
                let i = counter_index(obs, counter) as usize;
                assert!(i < seen.len());
                assert!(!seen[i], "duplicate index {i}");
                seen[i] = true;
            }
        }
    }

    #[test]
    fn obs_point_round_trips() {
        for obs in ObsPoint::ALL {
            assert_eq!(ObsPoint::from_raw(obs as u8), Some(obs));
        }
        assert_eq!(ObsPoint::from_raw(4), None);
    }
}
