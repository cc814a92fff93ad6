//! privilege: the Linux capabilities `flowaudit run` needs, checked before anything is loaded,
//! and every other privilege given up before the runtime starts a thread.
//!
//! Takes: the process's capability sets. Gives: either an error naming each missing capability,
//! or a process whose effective and permitted sets hold only what capture needs, whose bounding,
//! inheritable and ambient sets cannot bring anything back, and which has `no_new_privs`.
//! Must never: run after a thread has been started (capabilities are per thread: threads started
//! earlier would keep everything), or silently continue with a capability missing.
//!
//! What capture needs and why: `CAP_BPF` (create maps, load programs, and every later `bpf()`
//! call: map reads, table swaps, attaching to new interfaces, since distributions set
//! `unprivileged_bpf_disabled`), `CAP_PERFMON` (the verifier refuses the programs' packet
//! pointer arithmetic without it), `CAP_NET_ADMIN` (cgroup and TC attachment, netlink). Kernels
//! older than 5.8 have no `CAP_BPF`/`CAP_PERFMON`: there `CAP_SYS_ADMIN` stands for both.
//! `CAP_SYS_RESOURCE` is not kept: maps are charged to the memory cgroup since 5.11, and the
//! agent does not raise `RLIMIT_MEMLOCK`.

use std::io;

/// One capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// Its number (`include/uapi/linux/capability.h`).
    pub number: u32,
    /// Its name, as `capsh` and `securityContext` spell it (without the `CAP_` prefix there).
    pub name: &'static str,
}

/// `CAP_NET_ADMIN`.
pub const NET_ADMIN: Cap = Cap { number: 12, name: "CAP_NET_ADMIN" };
/// `CAP_SYS_ADMIN`.
pub const SYS_ADMIN: Cap = Cap { number: 21, name: "CAP_SYS_ADMIN" };
/// `CAP_PERFMON`.
pub const PERFMON: Cap = Cap { number: 38, name: "CAP_PERFMON" };
/// `CAP_BPF`.
pub const BPF: Cap = Cap { number: 39, name: "CAP_BPF" };
const SETPCAP: u32 = 8;

/// Why the agent cannot hold exactly what it needs.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The process lacks capabilities capture needs.
    #[error(
        "missing {}: flowaudit run needs {} (grant them in the container's securityContext, or run as root)",
        names(.missing), names(.needed)
    )]
    Missing {
        /// What is missing.
        missing: Vec<Cap>,
        /// Everything needed.
        needed: Vec<Cap>,
    },
    /// A capability system call failed.
    #[error("{call}: {source}")]
    Syscall {
        /// The call.
        call: &'static str,
        /// Cause.
        source: io::Error,
    },
}

fn names(caps: &[Cap]) -> String {
    caps.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

/// What capture needs on a kernel whose highest capability number is `last_cap`.
pub fn needed(last_cap: u32) -> Vec<Cap> {
    if last_cap >= BPF.number { vec![BPF, PERFMON, NET_ADMIN] } else { vec![SYS_ADMIN, NET_ADMIN] }
}

/// Those of `needed` that `effective` (a capability bit mask) lacks.
pub fn missing(effective: u64, needed: &[Cap]) -> Vec<Cap> {
    needed.iter().copied().filter(|c| effective & mask(&[*c]) == 0).collect()
}

fn mask(caps: &[Cap]) -> u64 {
    caps.iter().fold(0, |m, c| m | 1 << c.number)
}

/// Checks that the process holds what capture needs, then gives up everything else. Call it on
/// the only thread of the process. Returns the capabilities kept.
pub fn restrict_to_needed() -> Result<Vec<Cap>, PrivilegeError> {
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(BPF.number);
    let needed = needed(last_cap);
    let sets = capget()?;
    let missing = missing(sets.effective, &needed);
    if !missing.is_empty() {
        return Err(PrivilegeError::Missing { missing, needed });
    }
    let keep = mask(&needed);
    // The bounding set first: dropping from it needs CAP_SETPCAP, given up just below.
    if sets.effective & 1 << SETPCAP != 0 {
        for cap in (0..=last_cap).filter(|c| keep & 1 << c == 0) {
            prctl("prctl(PR_CAPBSET_DROP)", libc::PR_CAPBSET_DROP, u64::from(cap))?;
        }
    }
    prctl("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as u64)?;
    capset(CapSets { effective: keep, permitted: keep, inheritable: 0 })?;
    prctl("prctl(PR_SET_NO_NEW_PRIVS)", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    Ok(needed)
}

/// The three capability sets of the calling thread.
#[derive(Debug, Clone, Copy)]
struct CapSets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two of them (low and high 32 bits).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capget() -> Result<CapSets, PrivilegeError> {
    let mut header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: header and two data structs, as capget(2) takes for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(PrivilegeError::Syscall { call: "capget", source: io::Error::last_os_error() });
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

fn capset(sets: CapSets) -> Result<(), PrivilegeError> {
    let mut header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e0, e1) = split(sets.effective);
    let (p0, p1) = split(sets.permitted);
    let (i0, i1) = split(sets.inheritable);
    let data = [
        Data { effective: e0, permitted: p0, inheritable: i0 },
        Data { effective: e1, permitted: p1, inheritable: i1 },
    ];
    // SAFETY: header and two data structs, as capset(2) takes for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(PrivilegeError::Syscall { call: "capset", source: io::Error::last_os_error() });
    }
    Ok(())
}

fn prctl(call: &'static str, option: libc::c_int, arg: u64) -> Result<(), PrivilegeError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(option, arg as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong)
    };
    if rc != 0 {
        return Err(PrivilegeError::Syscall { call, source: io::Error::last_os_error() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_bpf_perfmon_net_admin_or_sys_admin_before_5_8() {
        assert_eq!(needed(40), vec![BPF, PERFMON, NET_ADMIN]);
        assert_eq!(needed(37), vec![SYS_ADMIN, NET_ADMIN]);
    }

    #[test]
    fn names_exactly_what_is_missing() {
        let only_net_admin = 1 << 12;
        assert_eq!(missing(only_net_admin, &needed(40)), vec![BPF, PERFMON]);
        assert_eq!(missing(u64::MAX, &needed(40)), vec![]);
        let e = PrivilegeError::Missing { missing: vec![BPF, PERFMON], needed: needed(40) };
        assert_eq!(
            e.to_string(),
            "missing CAP_BPF, CAP_PERFMON: flowaudit run needs CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN \
             (grant them in the container's securityContext, or run as root)"
        );
    }

    #[test]
    fn capget_reads_this_thread() {
        let sets = capget().unwrap();
        assert_eq!(sets.effective & !sets.permitted, 0, "effective is a subset of permitted");
    }
}
