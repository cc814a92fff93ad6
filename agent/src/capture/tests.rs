//! Kernel tests of the drain: what it does with each way [`table::read`] can end.
//!
//! Takes: this machine's kernel, root, and an empty cgroup v2 directory the test creates (the
//! agent's programs attach to it; nothing runs in it, so only the entries the test puts in the
//! installed table are drained). Gives: assertions on the drained batch, on which table is
//! installed next and on the capture metrics. Must never: attach anywhere but its own cgroup, or
//! leave the cgroup behind (removed on drop, also when a test fails). Without root the tests say
//! so and pass, unless `FLOWAUDIT_REQUIRE_ROOT_TESTS=1`, where a skip is a failure.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use flowaudit_common::ObsPoint;
use flowaudit_lab::root_or_skip;

use super::{
    Capture, CaptureConfig, CaptureMetrics, DrainReason, FlowTable,
    table::tests::{CAPACITY, N, fill, stats},
};
use crate::model::{CaptureBatch, Hook};

/// A cgroup v2 directory of its own, removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> Self {
        let mounts = std::fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
        let root = crate::config::cgroup2_mount(&mounts).expect("a cgroup2 mount");
        let dir = root.join(format!("fa-unit-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir(&self.0) {
            eprintln!("removing {}: {error}", self.0.display());
        }
    }
}

/// The kernel's id of `table`.
fn id(table: &FlowTable) -> u32 {
    aya::maps::IterableMap::map(table).info().expect("map info").id()
}

/// Asserts that `batch` holds exactly entries 0..N of the test table, each once with its counts.
#[track_caller]
fn assert_every_flow_once(batch: &CaptureBatch) {
    assert_eq!(batch.observations.len(), N as usize, "observations");
    let mut seen: HashMap<(IpAddr, u16), u32> = HashMap::new();
    for obs in &batch.observations {
        let IpAddr::V4(src) = obs.tuple.src else { panic!("not IPv4: {obs:?}") };
        let [_, _, hi, lo] = src.octets();
        let i = u32::from(hi) << 8 | u32::from(lo);
        let want = stats(i);
        assert_eq!(obs.tuple.src_port, (i + 1) as u16, "{obs:?}");
        assert_eq!(obs.tuple.dst, IpAddr::V4(Ipv4Addr::new(10, 201, 0, 1)), "{obs:?}");
        assert_eq!(obs.hook, Hook::CgroupEgress, "{obs:?}");
        assert_eq!(
            (obs.packets, obs.bytes, obs.tcp_flags, obs.cgroup_id),
            (want.packets, want.bytes, want.tcp_flags, want.cgroup_id),
            "entry {i}"
        );
        // Both times move by the same monotonic-to-wall offset.
        assert_eq!(obs.last_seen_ns - obs.first_seen_ns, want.last_seen_ns - want.first_seen_ns, "entry {i}");
        *seen.entry((obs.tuple.src, obs.tuple.src_port)).or_default() += 1;
    }
    assert_eq!(seen.len(), N as usize, "distinct flows");
    assert!(seen.values().all(|&n| n == 1), "a flow was handed out twice");
}

#[tokio::test]
async fn a_failed_batch_read_is_counted_its_flows_kept_and_its_table_not_installed_again() {
    if !root_or_skip("a_failed_batch_read_is_counted_its_flows_kept_and_its_table_not_installed_again") {
        return;
    }
    let cgroup = TestCgroup::new("drain");
    let registry = prometheus::Registry::new();
    let metrics = CaptureMetrics::new(&registry);
    let cfg = CaptureConfig {
        cgroup: cgroup.0.clone(),
        interfaces: Vec::new(),
        flow_table_entries: CAPACITY,
        ring_buffer_size: 256 * 1024,
        flush_interval: Duration::from_secs(3600),
        pin: None,
    };
    let mut capture = Capture::load(cfg, metrics.clone(), Arc::new(AtomicBool::new(false))).expect("loading capture");
    let entries = || metrics.flow_entries.with_label_values(&[ObsPoint::CgroupEgress.name()]).get();
    let packets = || metrics.packets.with_label_values(&[ObsPoint::CgroupEgress.name()]).get();
    let all_packets: u64 = (0..N).map(|i| stats(i).packets).sum();

    // 1. A batch fails midway (the second): every flow is in the batch, once; counted; the table
    //    is dropped rather than kept for the next drain.
    let first = id(&capture.active);
    fill(&mut capture.active);
    capture.fail_batch_at = Some(1);
    let batch = capture.drain(DrainReason::Interval, false, None);
    assert_every_flow_once(&batch);
    assert!(capture.spare.is_none(), "a table the fallback read must not be installed again");
    assert!(capture.batch_refused, "the first fallback is said in the log");
    assert_eq!(metrics.table_read_fallbacks.get(), 1, "fallbacks after drain 1");
    assert_eq!((entries(), packets()), (u64::from(N), all_packets), "flow entries and packets after drain 1");

    // 2. Refused from the start, as by a kernel without the command: the same, and the table
    //    installed by this drain is a fresh one, not the one read in drain 1.
    let second = id(&capture.active);
    assert_ne!(second, first, "drain 1 installed a fresh table");
    fill(&mut capture.active);
    capture.fail_batch_at = Some(0);
    let batch = capture.drain(DrainReason::Interval, false, None);
    assert_every_flow_once(&batch);
    assert!(capture.spare.is_none(), "a table the fallback read must not be installed again");
    assert_eq!(metrics.table_read_fallbacks.get(), 2, "fallbacks after drain 2");
    assert_eq!((entries(), packets()), (2 * u64::from(N), 2 * all_packets), "after drain 2");
    let third = id(&capture.active);
    assert!(third != first && third != second, "drain 2 installed a fresh table: {first} {second} {third}");

    // 3. Batches succeed: the emptied table is kept and installed by the next drain; the
    //    fallback counter does not move.
    fill(&mut capture.active);
    capture.fail_batch_at = None;
    let batch = capture.drain(DrainReason::Interval, false, None);
    assert_every_flow_once(&batch);
    assert_eq!(capture.spare.as_ref().map(id), Some(third), "the emptied table is kept");
    let batch = capture.drain(DrainReason::Interval, false, None);
    assert_eq!(batch.observations.len(), 0, "nothing counted in the empty test cgroup");
    assert_eq!(id(&capture.active), third, "drain 4 installed the table drain 3 emptied");
    assert_eq!(metrics.table_read_fallbacks.get(), 2, "fallbacks after drains 3 and 4");
    assert_eq!((entries(), packets()), (3 * u64::from(N), 3 * all_packets), "after drain 4");
    assert_eq!(metrics.drain_errors.get(), 0, "drain errors");
    drop(capture);
}
