//! Per-packet cost of each flowaudit program next to an empty program of the same type and the
//! floor of per-flow counting (one hash lookup and one atomic add on a fixed key), measured in one
//! run with BPF_PROG_TEST_RUN (root). Prints a table; asserts nothing about time.

use flowaudit::capture::bench::test_run;
use flowaudit_common::programs;

/// An Ethernet + IPv4 + TCP (ACK, 100 bytes payload) frame between two lab addresses.
fn tcp4_frame() -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20 + 100];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 20 + 100) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 231, 1, 2]);
    ip[16..20].copy_from_slice(&[10, 231, 2, 2]);
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&40001u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10;
    f
}

/// Ethernet + IPv6 + UDP (64 bytes payload).
fn udp6_frame() -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 8 + 64];
    f[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&((8 + 64) as u16).to_be_bytes());
    ip[6] = 17;
    ip[7] = 64;
    ip[8..10].copy_from_slice(&[0xfd, 0x00]);
    ip[23] = 2;
    ip[24..26].copy_from_slice(&[0xfd, 0x00]);
    ip[39] = 3;
    let udp = &mut f[54..62];
    udp[0..2].copy_from_slice(&40003u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    f
}

fn main() {
    // SAFETY: no side effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("programs bench: needs root (BPF_PROG_TEST_RUN); skipped");
        return;
    }
    let repeat = 1_000_000;
    // Per hook type: the empty program, the counting floor, then flowaudit's programs.
    let names = [
        programs::CGROUP_EMPTY,
        programs::CGROUP_FLOOR,
        programs::CGROUP_EGRESS,
        programs::CGROUP_INGRESS,
        programs::TC_EMPTY,
        programs::TC_FLOOR,
        programs::TC_INGRESS,
        programs::TC_EGRESS,
    ];
    println!("| packet | program | ns/packet | vs empty program of its type | vs counting floor of its type |");
    println!("|---|---|---:|---:|---:|");
    for (label, frame) in [("TCP/IPv4 154 B", tcp4_frame()), ("UDP/IPv6 126 B", udp6_frame())] {
        // Best of three rounds per program, to keep a busy neighbour out of the figure.
        let mut best: Vec<(String, f64)> = Vec::new();
        for _ in 0..3 {
            let round = test_run(&names, &frame, repeat).expect("test run");
            for (i, (name, ns, _)) in round.into_iter().enumerate() {
                match best.get_mut(i) {
                    Some(b) => b.1 = b.1.min(ns),
                    None => best.push((name, ns)),
                }
            }
        }
        for (name, ns) in &best {
            let (empty, floor) = if name.contains("_cg_") { (best[0].1, best[1].1) } else { (best[4].1, best[5].1) };
            println!(
                "| {label} | {name} | {ns:.1} | {:+.1} ns ({:.2}x) | {:+.1} ns ({:.2}x) |",
                ns - empty,
                ns / empty.max(0.1),
                ns - floor,
                ns / floor.max(0.1)
            );
        }
    }
}
