//! flowaudit's kernel programs: count every packet into the active flow table.
//!
//! Takes: packets at `cgroup_skb` ingress/egress (sockets of the attached cgroup subtree) and at
//! TC ingress/egress of watched interfaces. Gives: per-flow counters in the flow table installed
//! in `FLOW_TABLES[0]` by the agent; a `FlowEvent` per packet in `FLOW_EVENTS` when that table is
//! full; per-CPU counters per hook in `COUNTERS` of the packets that did not reach the table
//! (spilled to the ring buffer, lost, not IP, malformed). Must never: change a packet's fate (cgroup programs return 1 = allow, TC programs
//! return `TC_ACT_UNSPEC` so the next program in the chain still runs), lose a count silently, or
//! use an LRU map (it would evict flows without telling anyone).
//!
//! Counting rules: packets are wire packets (`gso_segs` of an aggregate), bytes are IP-layer bytes
//! of every segment (the aggregate's IP length plus one IP+L4 header per extra segment). All adds
//! are atomic (`lock xadd`), so CPUs and nested programs on one CPU never lose an increment.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "atomic intrinsics: the BPF target lacks AtomicU64::fetch_add")]

use core::intrinsics::{AtomicOrdering, atomic_or, atomic_xadd};

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST, TC_ACT_UNSPEC},
    btf_maps::{ArrayOfMaps, HashMap, PerCpuArray, RingBuf},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes_relative},
    macros::{btf_map, cgroup_skb, classifier},
    programs::{SkBuffContext, TcContext},
};
use flowaudit_common::{
    COUNTER_SLOTS, Counter, FAMILY_IPV4, FAMILY_IPV6, FlowEvent, FlowKey, FlowStats, ObsPoint, counter_index, proto,
    tcp_flags,
};

/// Slot 0 holds the flow table the programs write to. The agent swaps it every drain; the
/// syscall that swaps waits for running programs (RCU), so no increment lands in a table that is
/// being read. The inner size here is only a template: the agent creates the real tables.
#[btf_map]
static FLOW_TABLES: ArrayOfMaps<HashMap<FlowKey, FlowStats, 1024>, 1> = ArrayOfMaps::new();

/// Fallback when the active table is full: one event per packet. Size set by the agent.
#[btf_map]
static FLOW_EVENTS: RingBuf<FlowEvent, { 256 * 1024 }> = RingBuf::new();

/// Per-hook counters, see `flowaudit_common::Counter`.
#[btf_map]
static COUNTERS: PerCpuArray<u64, { COUNTER_SLOTS as usize }> = PerCpuArray::new();

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
/// `BPF_HDR_START_NET`: offsets relative to the network header, whatever the link layer.
const HDR_START_NET: u32 = 1;
const ETH_HLEN: u32 = 14;

#[cgroup_skb(ingress)]
pub fn flowaudit_cg_ingress(ctx: SkBuffContext) -> i32 {
    observe(ctx.skb.skb, ObsPoint::CgroupIngress, 0);
    1
}

#[cgroup_skb(egress)]
pub fn flowaudit_cg_egress(ctx: SkBuffContext) -> i32 {
    observe(ctx.skb.skb, ObsPoint::CgroupEgress, 0);
    1
}

#[classifier]
pub fn flowaudit_tc_ingress(ctx: TcContext) -> i32 {
    observe(ctx.skb.skb, ObsPoint::TcIngress, ETH_HLEN);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn flowaudit_tc_egress(ctx: TcContext) -> i32 {
    observe(ctx.skb.skb, ObsPoint::TcEgress, ETH_HLEN);
    TC_ACT_UNSPEC
}

/// Benchmark baseline: a `cgroup_skb` program that does nothing.
#[cgroup_skb]
pub fn flowaudit_cg_empty(_ctx: SkBuffContext) -> i32 {
    1
}

/// Benchmark baseline: a TC program that does nothing.
#[classifier]
pub fn flowaudit_tc_empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Benchmark floor of per-flow counting: one lookup in a small hash map with a key the size of
/// [`FlowKey`], one atomic add, an insert on the first miss. Used only by the `*_floor` programs.
#[btf_map]
static FLOOR: HashMap<FlowKey, u64, 16> = HashMap::new();

/// Benchmark floor: a `cgroup_skb` program that counts every packet into one fixed key.
#[cgroup_skb]
pub fn flowaudit_cg_floor(ctx: SkBuffContext) -> i32 {
    floor(ctx.skb.skb);
    1
}

/// Benchmark floor: a TC program that counts every packet into one fixed key.
#[classifier]
pub fn flowaudit_tc_floor(ctx: TcContext) -> i32 {
    floor(ctx.skb.skb);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn floor(skb: *mut __sk_buff) {
    // SAFETY: context field read at a constant offset, checked by the verifier.
    let len = unsafe { (*skb).len } as u64;
    let mut slot = core::mem::MaybeUninit::uninit();
    let key = zero_key(&mut slot);
    if let Some(bytes) = FLOOR.get_ptr_mut(&key.0) {
        add(bytes, len);
        return;
    }
    let _ = FLOOR.insert(&key.0, &len, BPF_NOEXIST as u64);
}

/// A [`FlowKey`] aligned for 8-byte stores.
#[repr(C, align(8))]
struct AlignedKey(FlowKey);

/// The floor's all-zero key, written in place as six 8-byte stores: a zeroed key whose address
/// goes to a helper (or that is moved) becomes a call to a `memset` subprogram, which the floor
/// must not pay. Volatile, or the compiler merges the stores back into that call.
#[inline(always)]
fn zero_key(slot: &mut core::mem::MaybeUninit<AlignedKey>) -> &AlignedKey {
    const WORDS: usize = core::mem::size_of::<FlowKey>() / 8;
    const _: () = assert!(core::mem::size_of::<FlowKey>() == WORDS * 8);
    let words = slot.as_mut_ptr() as *mut u64;
    for i in 0..WORDS {
        // SAFETY: within `slot`, 8-byte aligned by `AlignedKey`.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte written above; all zeros is a valid `FlowKey`.
    unsafe { slot.assume_init_ref() }
}

#[inline(always)]
fn add(counter: *mut u64, value: u64) {
    // SAFETY: `counter` points into a map value, valid for the program's run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

#[inline(always)]
fn count(obs: ObsPoint, counter: Counter, value: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_index(obs, counter)) {
        add(slot, value);
    }
}

/// A packet being parsed: header reads go straight to the linear data when the bytes are there,
/// and through `bpf_skb_load_bytes_relative` (from the network header, any link layer) when not.
struct Pkt {
    skb: *mut __sk_buff,
    /// Address of the network header in the linear data, if it could be located.
    net: usize,
    direct: bool,
    end: usize,
}

impl Pkt {
    #[inline(always)]
    fn new(skb: *mut __sk_buff, l2_len: u32, protocol: u32) -> Pkt {
        // SAFETY: context field reads at constant offsets, checked by the verifier.
        let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
        if l2_len == 0 {
            // cgroup_skb: data starts at the network header.
            return Pkt { skb, net: data, direct: true, end };
        }
        // TC: trust a plain Ethernet header whose EtherType is the skb's protocol; anything else
        // (an L3 device, an in-band VLAN tag) takes the helper path.
        if data + ETH_HLEN as usize <= end {
            // SAFETY: bounds checked just above.
            let ethertype = u16::from_be(unsafe { core::ptr::read_unaligned((data + 12) as *const u16) });
            if ethertype as u32 == protocol {
                return Pkt { skb, net: data + ETH_HLEN as usize, direct: true, end };
            }
        }
        Pkt { skb, net: 0, direct: false, end }
    }

    #[inline(always)]
    fn read<T: Copy>(&self, offset: u32) -> Option<T> {
        if self.direct {
            let at = self.net + offset as usize;
            if at + core::mem::size_of::<T>() <= self.end {
                // SAFETY: within the linear packet data, bounds checked just above.
                return Some(unsafe { core::ptr::read_unaligned(at as *const T) });
            }
        }
        load(self.skb, offset)
    }
}

#[inline(always)]
fn load<T: Copy>(skb: *mut __sk_buff, offset: u32) -> Option<T> {
    let mut out = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes exactly size_of::<T>() bytes into `out` or fails.
    let ret = unsafe {
        bpf_skb_load_bytes_relative(
            skb as *const _,
            offset,
            out.as_mut_ptr() as *mut _,
            core::mem::size_of::<T>() as u32,
            HDR_START_NET,
        )
    };
    if ret == 0 {
        // SAFETY: initialised by the helper on success.
        Some(unsafe { out.assume_init() })
    } else {
        None
    }
}

/// What one packet contributes to its flow.
struct Sample {
    key: FlowKey,
    packets: u64,
    bytes: u64,
    flags: u64,
}

#[inline(always)]
fn observe(skb: *mut __sk_buff, obs: ObsPoint, l2_len: u32) {
    // SAFETY: context field reads at constant offsets, checked by the verifier.
    let (skb_len, protocol, gso_segs, ifindex) = unsafe {
        (
            (*skb).len,
            u16::from_be((*skb).protocol as u16) as u32,
            (*skb).gso_segs,
            if l2_len == 0 { 0 } else { (*skb).ifindex },
        )
    };
    let segs = if gso_segs > 1 { gso_segs as u64 } else { 1 };
    let pkt = Pkt::new(skb, l2_len, protocol);
    let parsed = match protocol {
        ETH_P_IP => parse_ipv4(&pkt, skb_len.saturating_sub(l2_len), segs),
        ETH_P_IPV6 => parse_ipv6(&pkt, skb_len.saturating_sub(l2_len), segs),
        _ => {
            count(obs, Counter::NonIpPackets, segs);
            return;
        }
    };
    let Some(mut sample) = parsed else {
        count(obs, Counter::MalformedPackets, segs);
        return;
    };
    sample.key.obs = obs as u8;
    sample.key.ifindex = ifindex;
    record(skb, obs, &sample);
}

#[inline(always)]
fn record(skb: *mut __sk_buff, obs: ObsPoint, sample: &Sample) {
    let Some(table) = FLOW_TABLES.get(0) else {
        lose(obs, sample);
        return;
    };
    if let Some(stats) = table.get_ptr_mut(&sample.key) {
        // Known flow: the coarse clock (one tick of resolution) is enough for `last_seen`, and
        // costs a fraction of the precise one.
        // SAFETY: helper valid in both program types.
        update(stats, sample, unsafe { bpf_ktime_get_coarse_ns() });
        return;
    }
    // New flow: the precise clock, since `first_seen` orders the two directions of a flow.
    // SAFETY: helpers valid in both program types.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let fresh = FlowStats {
        packets: sample.packets,
        bytes: sample.bytes,
        first_seen_ns: now,
        last_seen_ns: now,
        cgroup_id,
        tcp_flags: sample.flags,
    };
    if table.insert(&sample.key, &fresh, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU may have inserted the same key between our lookup and insert.
    if let Some(stats) = table.get_ptr_mut(&sample.key) {
        update(stats, sample, now);
        return;
    }
    // The table is full: this packet travels alone through the ring buffer.
    match FLOW_EVENTS.reserve(0) {
        Some(mut entry) => {
            entry.write(FlowEvent {
                key: sample.key,
                bytes: sample.bytes,
                ts_ns: now,
                cgroup_id,
                packets: sample.packets as u32,
                tcp_flags: sample.flags as u32,
            });
            entry.submit(0);
            count(obs, Counter::TableFullPackets, sample.packets);
        }
        None => lose(obs, sample),
    }
}

#[inline(always)]
fn lose(obs: ObsPoint, sample: &Sample) {
    count(obs, Counter::LostPackets, sample.packets);
    count(obs, Counter::LostBytes, sample.bytes);
}

#[inline(always)]
fn update(stats: *mut FlowStats, sample: &Sample, now: u64) {
    // SAFETY: `stats` points to a live map value; fields are updated atomically or, for
    // `last_seen_ns`, with a plain store where the last writer wins.
    unsafe {
        add(&raw mut (*stats).packets, sample.packets);
        add(&raw mut (*stats).bytes, sample.bytes);
        core::ptr::write_volatile(&raw mut (*stats).last_seen_ns, now);
        let flags = sample.flags;
        if flags != 0 && (*stats).tcp_flags & flags != flags {
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).tcp_flags, flags);
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    ver_tc_flow: u32,
    payload_len: u16,
    next_hdr: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// First 14 bytes of a TCP header: ports, sequence numbers, data offset and flags.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHead {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    doff: u8,
    flags: u8,
}

/// ICMP/ICMPv6 header up to the echo identifier.
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpHead {
    kind: u8,
    code: u8,
    check: u16,
    id: u16,
}

#[inline(always)]
fn empty_key(family: u8, proto: u8) -> FlowKey {
    FlowKey {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        ifindex: 0,
        family,
        proto,
        obs: 0,
        icmp_type: 0,
        icmp_code: 0,
        inner_proto: 0,
        _pad: [0; 2],
    }
}

/// `addr` as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), built from four 32-bit words:
/// written byte by byte into a zeroed key, the compiler zeroes the first ten bytes with a call to
/// a `memset` subprogram, twice per packet.
#[inline(always)]
fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
    let words = [0u32, 0, 0xffffu32.to_be(), u32::from_ne_bytes(addr)];
    // SAFETY: 16 bytes either way, every bit pattern valid for both.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

#[inline(always)]
fn parse_ipv4(pkt: &Pkt, l3_len: u32, segs: u64) -> Option<Sample> {
    let ip: Ipv4Hdr = pkt.read(0)?;
    let ihl = ((ip.ver_ihl & 0x0f) as u32) * 4;
    if ihl < 20 {
        return None;
    }
    let mut key = empty_key(FAMILY_IPV4, ip.proto);
    key.src_addr = v4_mapped(ip.saddr);
    key.dst_addr = v4_mapped(ip.daddr);
    let tot_len = u16::from_be(ip.tot_len) as u32;
    // BIG TCP aggregates carry tot_len 0: fall back to the skb's length.
    let total = if tot_len == 0 { l3_len } else { tot_len };
    // Non-first fragments have no L4 header.
    let first_fragment = u16::from_be(ip.frag_off) & 0x1fff == 0;
    let (flags, l4_hdr) = if first_fragment { parse_l4(pkt, ihl, ip.proto, &mut key) } else { (0, 0) };
    Some(Sample { key, packets: segs, bytes: total as u64 + (segs - 1) * (ihl + l4_hdr) as u64, flags })
}

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up on finding the L4 header.
const MAX_EXT_HEADERS: usize = 6;

#[inline(always)]
fn parse_ipv6(pkt: &Pkt, l3_len: u32, segs: u64) -> Option<Sample> {
    let ip: Ipv6Hdr = pkt.read(0)?;
    let mut next = ip.next_hdr;
    let mut offset: u32 = 40;
    let mut l4_present = true;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let ext: [u8; 2] = pkt.read(offset)?;
                next = ext[0];
                offset += (ext[1] as u32 + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let ext: [u8; 2] = pkt.read(offset)?;
                next = ext[0];
                offset += (ext[1] as u32 + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let ext: [u8; 4] = pkt.read(offset)?;
                next = ext[0];
                let frag_offset = u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8;
                l4_present = frag_offset == 0;
                offset += 8;
            }
            _ => break,
        }
        // Keep the offset bounded for the verifier.
        if offset > 512 {
            return None;
        }
    }
    let mut key = empty_key(FAMILY_IPV6, next);
    key.src_addr = ip.saddr;
    key.dst_addr = ip.daddr;
    let payload = u16::from_be(ip.payload_len) as u32;
    let total = if payload == 0 { l3_len } else { payload + 40 };
    let (flags, l4_hdr) = if l4_present { parse_l4(pkt, offset, next, &mut key) } else { (0, 0) };
    Some(Sample { key, packets: segs, bytes: total as u64 + (segs - 1) * (offset + l4_hdr) as u64, flags })
}

/// Fills ports / ICMP fields of `key`; returns the TCP flag bits and the L4 header length that
/// repeats in every GSO segment.
#[inline(always)]
fn parse_l4(pkt: &Pkt, offset: u32, l4: u8, key: &mut FlowKey) -> (u64, u32) {
    match l4 {
        proto::TCP => {
            let Some(tcp) = pkt.read::<TcpHead>(offset) else {
                return (0, 0);
            };
            key.src_port = u16::from_be(tcp.sport);
            key.dst_port = u16::from_be(tcp.dport);
            let raw = tcp.flags as u64;
            let mut flags = raw;
            if raw & tcp_flags::SYN != 0 {
                flags |= if raw & tcp_flags::ACK != 0 { tcp_flags::SYN_ACK } else { tcp_flags::SYN_ONLY };
            }
            (flags, ((tcp.doff >> 4) as u32) * 4)
        }
        proto::UDP | proto::SCTP => {
            let Some(ports) = pkt.read::<[u16; 2]>(offset) else {
                return (0, 0);
            };
            key.src_port = u16::from_be(ports[0]);
            key.dst_port = u16::from_be(ports[1]);
            (0, if l4 == proto::UDP { 8 } else { 0 })
        }
        proto::ICMP | proto::ICMPV6 => {
            let Some(icmp) = pkt.read::<IcmpHead>(offset) else {
                return (0, 0);
            };
            key.icmp_type = icmp.kind;
            key.icmp_code = icmp.code;
            let echo =
                if l4 == proto::ICMP { icmp.kind == 8 || icmp.kind == 0 } else { icmp.kind == 128 || icmp.kind == 129 };
            if echo {
                key.src_port = u16::from_be(icmp.id);
            }
            let unreachable = (l4 == proto::ICMP && icmp.kind == 3) || (l4 == proto::ICMPV6 && icmp.kind == 1);
            if unreachable {
                refused_flow(pkt, offset + 8, l4 == proto::ICMP, key);
            }
            (0, 0)
        }
        _ => (0, 0),
    }
}

/// A destination-unreachable message carries the header of the packet it refuses: its protocol
/// and ports go into the key, so the agent can tell which flow was rejected.
#[inline(always)]
fn refused_flow(pkt: &Pkt, inner: u32, v4: bool, key: &mut FlowKey) {
    let (inner_proto, l4_offset) = if v4 {
        let Some(ip) = pkt.read::<Ipv4Hdr>(inner) else { return };
        (ip.proto, inner + ((ip.ver_ihl & 0x0f) as u32) * 4)
    } else {
        let Some(ip) = pkt.read::<Ipv6Hdr>(inner) else { return };
        (ip.next_hdr, inner + 40)
    };
    if !matches!(inner_proto, proto::TCP | proto::UDP | proto::SCTP) {
        return;
    }
    if let Some(ports) = pkt.read::<[u16; 2]>(l4_offset) {
        key.src_port = u16::from_be(ports[0]);
        key.dst_port = u16::from_be(ports[1]);
        key.inner_proto = inner_proto;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
