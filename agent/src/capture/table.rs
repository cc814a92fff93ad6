//! Reading a swapped-out flow table in a few syscalls.
//!
//! Takes: a flow table no program writes to any more (the drain has installed another one and
//! the map-of-maps update has waited for running programs); from tests only, the batch to make
//! the kernel refuse (`fail_at` of [`read`]; `None` in production). Gives: every entry of it,
//! read and deleted `BATCH` at a time with `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (aya does not wrap
//! the batch commands), so the emptied table can be installed again at the next drain instead of
//! a fresh one being created (a preallocated table of `flow_table_entries` costs milliseconds of
//! kernel time to create and free). When the kernel refuses the batch command, or a batch fails
//! midway, the rest is read entry by entry as before (two syscalls per entry) and the table is
//! not reused: what the batches delivered is deleted, the rest stays in it. Must never: hand out
//! an entry twice, or skip one without an error for the caller to count (entries a failing batch
//! did copy out, and so deleted, are handed out too); say a table is empty when entries may
//! remain in it.

use std::os::fd::{AsFd as _, AsRawFd as _};

use flowaudit_common::{FlowKey, FlowStats};

use super::FlowTable;

/// Entries per batch syscall: 4096 keys and values are 384 KiB of buffers.
const BATCH: usize = 4096;

/// `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (bpf(2) command 25).
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// How a table was read.
#[derive(Debug)]
pub(super) enum Read {
    /// Every entry was read and deleted: the table is empty and can be installed again.
    Emptied,
    /// A batch failed with this error (the kernel refused the command, or it failed midway):
    /// the rest was read one by one and is still in the table, which must not be installed again.
    Iterated(std::io::Error),
}

/// Reads every entry of `table`, calling `entry` for each and `error` for each one that could
/// not be read (the entry-by-entry fallback only).
///
/// `fail_at`: `None` in production. `Some(k)` sends batch `k` (0: the first, as on a kernel
/// without the batch command) with a nonzero `flags`, which the kernel refuses with `EINVAL`
/// before it touches the table (the error a kernel without the command gives for it): how the
/// tests reach the fallback on a kernel that has batch operations.
pub(super) fn read(
    table: &FlowTable,
    fail_at: Option<usize>,
    mut entry: impl FnMut(FlowKey, FlowStats),
    mut error: impl FnMut(aya::maps::MapError),
) -> Read {
    let Err(refused) = read_batched(table, fail_at, &mut entry) else {
        return Read::Emptied;
    };
    // Refused (a kernel without batch operations for hash maps) or failed midway: what the
    // batches delivered is deleted, the rest is read one by one.
    for item in table.iter() {
        match item {
            Ok((key, stats)) => entry(key, stats),
            Err(e) => error(e),
        }
    }
    Read::Iterated(refused)
}

/// `out_batch` before a call: the kernel writes the next position and the count together, so a
/// position still equal to this after an error means the count was not written either.
const UNWRITTEN: u32 = u32::MAX;

/// Reads and deletes the whole table in batches; `Err` with the syscall's error when a batch
/// failed (the entries of earlier batches, and those the failing one copied out, have been
/// delivered and deleted). `fail_at`: see [`read`].
fn read_batched(
    table: &FlowTable,
    fail_at: Option<usize>,
    entry: &mut impl FnMut(FlowKey, FlowStats),
) -> std::io::Result<()> {
    let fd = aya::maps::IterableMap::map(table).fd().as_fd().as_raw_fd();
    let zero_key = FlowKey {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        ifindex: 0,
        family: 0,
        proto: 0,
        obs: 0,
        icmp_type: 0,
        icmp_code: 0,
        inner_proto: 0,
        _pad: [0; 2],
    };
    let mut keys = vec![zero_key; BATCH];
    let mut values = vec![FlowStats::default(); BATCH];
    // The position in the table (a hash map's bucket index) where the next batch starts.
    let mut position = 0u32;
    let mut next;
    let mut batch = 0usize;
    loop {
        next = UNWRITTEN;
        let mut attr = BatchAttr {
            in_batch: if batch == 0 { 0 } else { &position as *const u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: u64::from(fail_at == Some(batch)),
        };
        // SAFETY: attr is the bpf_attr layout of the batch commands; the buffers hold BATCH keys
        // and values of the map's key and value sizes (FlowKey and FlowStats), `position` and
        // `next` are the 4-byte batch token of a hash map (a bucket index), and all of them
        // outlive the call. The kernel writes `count` back into attr.
        let result = unsafe { super::sys_bpf_mut(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr) };
        // The kernel (kernel/bpf/hashtab.c, `__htab_map_lookup_and_delete_batch`) writes the
        // next position and the count of entries it copied out (and deleted) together, on
        // success and on every error but EFAULT, also when it stopped midway (a bucket it could
        // not lock): those entries are gone from the table, so they are handed out here whatever
        // the result. On an early error (bad flags, a position past the end) it writes neither,
        // and `count` still holds what was sent.
        let filled = if next == UNWRITTEN { 0 } else { (attr.count as usize).min(BATCH) };
        for i in 0..filled {
            entry(keys[i], values[i]);
        }
        match result {
            // Never seen; without a position the read cannot go on (and must not say "empty").
            Ok(_) if next == UNWRITTEN => return Err(std::io::Error::other("a batch gave no next position")),
            Ok(_) => position = next,
            Err(_) if is_end(&result) => return Ok(()),
            Err(e) => return Err(e),
        }
        batch += 1;
    }
}

/// `ENOENT`: the batch reached the end of the table.
fn is_end(result: &std::io::Result<libc::c_long>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::ENOENT))
}

/// Kernel tests: real flow tables (created as the drain creates them) in this machine's kernel,
/// read through the batch command and through the fallback. Need root: without it they say so
/// and pass, unless `FLOWAUDIT_REQUIRE_ROOT_TESTS=1`, where a skip is a failure.
#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;

    use flowaudit_common::{FAMILY_IPV4, ObsPoint};
    use flowaudit_lab::root_or_skip;

    use super::{BATCH, FlowKey, FlowStats, FlowTable, Read, read};
    use crate::capture::new_table;

    /// Entries put in each test table: more than two batches' worth.
    pub(in crate::capture) const N: u32 = 10_000;

    /// Capacity of each test table (the kernel rounds its buckets up to a power of two).
    pub(in crate::capture) const CAPACITY: u32 = 16_384;

    /// The key of entry `i`: a TCP flow from 10.200.(i/256).(i%256), port i+1, to 10.201.0.1:80,
    /// seen at cgroup egress.
    pub(in crate::capture) fn key(i: u32) -> FlowKey {
        let mapped = |a: [u8; 4]| {
            let mut addr = [0u8; 16];
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..].copy_from_slice(&a);
            addr
        };
        FlowKey {
            src_addr: mapped([10, 200, (i >> 8) as u8, i as u8]),
            dst_addr: mapped([10, 201, 0, 1]),
            src_port: (i + 1) as u16,
            dst_port: 80,
            ifindex: 0,
            family: FAMILY_IPV4,
            proto: libc::IPPROTO_TCP as u8,
            obs: ObsPoint::CgroupEgress as u8,
            icmp_type: 0,
            icmp_code: 0,
            inner_proto: 0,
            _pad: [0; 2],
        }
    }

    /// The counts of entry `i`: every field different from every other entry's.
    pub(in crate::capture) fn stats(i: u32) -> FlowStats {
        let i = u64::from(i);
        FlowStats {
            packets: i + 1,
            bytes: 1_000 * (i + 1) + 7,
            first_seen_ns: 1_000_000 + 10 * i,
            last_seen_ns: 2_000_000 + 10 * i,
            cgroup_id: 50_000 + i,
            tcp_flags: i,
        }
    }

    /// Puts entries 0..N in `table`.
    pub(in crate::capture) fn fill(table: &mut FlowTable) {
        for i in 0..N {
            table.insert(key(i), stats(i), 0).expect("inserting a test entry");
        }
    }

    /// The entries in `table` now.
    fn left_in(table: &FlowTable) -> HashMap<FlowKey, FlowStats> {
        table.iter().map(|item| item.expect("reading a test entry")).collect()
    }

    /// Asserts that `delivered` (per key: stats, times handed out) is entries 0..N, each once.
    #[track_caller]
    fn assert_each_once(delivered: &HashMap<FlowKey, (FlowStats, u32)>) {
        assert_eq!(delivered.len(), N as usize, "distinct keys handed out");
        for i in 0..N {
            assert_eq!(delivered.get(&key(i)), Some(&(stats(i), 1)), "entry {i}: its stats, handed out once");
        }
    }

    /// A table of N entries read with `fail_at`: what was handed out (per key: stats, times),
    /// how the read ended, and the table.
    fn read_filled(fail_at: Option<usize>) -> (HashMap<FlowKey, (FlowStats, u32)>, Read, FlowTable) {
        let mut table = new_table(CAPACITY).expect("creating a flow table");
        fill(&mut table);
        assert_eq!(left_in(&table).len(), N as usize, "entries before the read");
        let mut delivered: HashMap<FlowKey, (FlowStats, u32)> = HashMap::new();
        let mut errors = Vec::new();
        let outcome = read(
            &table,
            fail_at,
            |key, stats| delivered.entry(key).or_insert((stats, 0)).1 += 1,
            |error| errors.push(error.to_string()),
        );
        assert_eq!(errors, Vec::<String>::new(), "entry errors");
        (delivered, outcome, table)
    }

    /// The error of an `Iterated` read, as an errno.
    #[track_caller]
    fn iterated_errno(outcome: &Read) -> Option<i32> {
        match outcome {
            Read::Iterated(error) => error.raw_os_error(),
            Read::Emptied => panic!("expected Read::Iterated, got Read::Emptied"),
        }
    }

    #[test]
    fn batches_hand_out_every_entry_once_and_empty_the_table() {
        if !root_or_skip("batches_hand_out_every_entry_once_and_empty_the_table") {
            return;
        }
        let (delivered, outcome, table) = read_filled(None);
        assert_each_once(&delivered);
        assert!(matches!(outcome, Read::Emptied), "{outcome:?}");
        assert_eq!(left_in(&table).len(), 0, "entries left in the table");
    }

    #[test]
    fn a_refused_batch_command_hands_out_every_entry_once_and_leaves_them_in_the_table() {
        if !root_or_skip("a_refused_batch_command_hands_out_every_entry_once_and_leaves_them_in_the_table") {
            return;
        }
        let (delivered, outcome, table) = read_filled(Some(0));
        assert_each_once(&delivered);
        assert_eq!(iterated_errno(&outcome), Some(libc::EINVAL), "{outcome:?}");
        let left = left_in(&table);
        assert_eq!(left.len(), N as usize, "every entry is still in the table");
        for i in 0..N {
            assert_eq!(left.get(&key(i)), Some(&stats(i)), "entry {i} left in the table");
        }
    }

    #[test]
    fn a_batch_failing_midway_hands_out_every_entry_once_across_batches_and_fallback() {
        if !root_or_skip("a_batch_failing_midway_hands_out_every_entry_once_across_batches_and_fallback") {
            return;
        }
        for (fail_at, batches_before) in [(1usize, 1usize), (2, 2)] {
            let (delivered, outcome, table) = read_filled(Some(fail_at));
            assert_each_once(&delivered);
            assert_eq!(iterated_errno(&outcome), Some(libc::EINVAL), "failing at batch {fail_at}: {outcome:?}");
            // What the batches handed out was deleted; what the fallback read is still there.
            let left = left_in(&table);
            let by_batches = N as usize - left.len();
            eprintln!(
                "failing at batch {fail_at}: {by_batches} entries from {batches_before} batch(es), {} entry by entry",
                left.len()
            );
            assert!(
                by_batches > (batches_before - 1) * BATCH && by_batches <= batches_before * BATCH,
                "failing at batch {fail_at}: {by_batches} entries came from {batches_before} full batch(es) of at most {BATCH}"
            );
            for (key, stats) in &left {
                assert_eq!(delivered.get(key), Some(&(*stats, 1)), "an entry left in the table was handed out once");
            }
        }
    }
}
