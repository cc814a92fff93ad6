//! Per-packet cost of the programs, measured by the kernel with `BPF_PROG_TEST_RUN`.
//!
//! Takes: program names of the object, an Ethernet frame, a repeat count. Gives: the kernel's
//! average run time in nanoseconds per packet for each program, all measured in one process on
//! the same frame, so the empty programs are a same-run baseline. Must never: attach anything
//! (test runs execute the program on a synthetic skb only). Needs root.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    EbpfLoader,
    programs::{CgroupSkb, SchedClassifier},
};
use flowaudit_common::programs;

use super::{CaptureError, EBPF_OBJECT, install, new_table};

/// `BPF_PROG_TEST_RUN` (bpf(2) command 10).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs each of `names` `repeat` times on `frame`; returns (name, ns per run, return value).
pub fn test_run(names: &[&str], frame: &[u8], repeat: u32) -> Result<Vec<(String, f64, u32)>, CaptureError> {
    let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT)?;
    let table = new_table(65_536)?;
    install(&mut ebpf, &table, None)?;
    let mut out = Vec::new();
    for &name in names {
        let prog = ebpf.program_mut(name).expect("program in object");
        let fd = if matches!(prog, aya::programs::Program::CgroupSkb(_)) {
            let p: &mut CgroupSkb = prog.try_into().expect("cgroup_skb");
            p.load().map_err(|source| CaptureError::Program { what: format!("loading {name}"), source })?;
            p.fd().map_err(|source| CaptureError::Program { what: name.into(), source })?.as_fd().as_raw_fd()
        } else {
            let p: &mut SchedClassifier = prog.try_into().expect("classifier");
            p.load().map_err(|source| CaptureError::Program { what: format!("loading {name}"), source })?;
            p.fd().map_err(|source| CaptureError::Program { what: name.into(), source })?.as_fd().as_raw_fd()
        };
        let mut attr = TestRunAttr {
            prog_fd: fd as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for this command; `frame` outlives the call.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestRunAttr, size_of::<TestRunAttr>())
        };
        if ret != 0 {
            return Err(CaptureError::Io { what: "BPF_PROG_TEST_RUN", source: std::io::Error::last_os_error() });
        }
        out.push((name.to_owned(), attr.duration as f64, attr.retval));
    }
    Ok(out)
}

/// Attaches the empty programs where the agent attaches its own (cgroup ingress/egress on
/// `cgroup`, TC ingress/egress through TCX on `interfaces`), for a throughput baseline: the cost
/// of the hooks themselves. The links live as long as the returned object.
pub fn attach_empty(cgroup: &std::path::Path, interfaces: &[String]) -> Result<aya::Ebpf, CaptureError> {
    use aya::programs::{CgroupAttachMode, CgroupSkbAttachType, TcAttachType};
    let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT)?;
    let dir = std::fs::File::open(cgroup).map_err(|source| CaptureError::Cgroup { path: cgroup.to_owned(), source })?;
    let prog: &mut CgroupSkb =
        ebpf.program_mut(programs::CGROUP_EMPTY).expect("in object").try_into().expect("cgroup_skb");
    let err = |what: &str| {
        let what = what.to_owned();
        move |source| CaptureError::Program { what, source }
    };
    prog.load().map_err(err("loading the empty cgroup program"))?;
    for attach in [CgroupSkbAttachType::Ingress, CgroupSkbAttachType::Egress] {
        prog.attach(&dir, attach, CgroupAttachMode::Single).map_err(err("attaching the empty cgroup program"))?;
    }
    let prog: &mut SchedClassifier =
        ebpf.program_mut(programs::TC_EMPTY).expect("in object").try_into().expect("classifier");
    prog.load().map_err(err("loading the empty TC program"))?;
    for iface in interfaces {
        for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
            super::attach_tc_prog(prog, iface, attach).map_err(err("attaching the empty TC program"))?;
        }
    }
    Ok(ebpf)
}
