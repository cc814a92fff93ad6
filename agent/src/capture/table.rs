//! Reading a swapped-out flow table in a few syscalls.
//!
//! Takes: a flow table no program writes to any more (the drain has installed another one and
//! the map-of-maps update has waited for running programs). Gives: every entry of it, read and
//! deleted `BATCH` at a time with `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (aya does not wrap the batch
//! commands), so the emptied table can be installed again at the next drain instead of a fresh
//! one being created (a preallocated table of `flow_table_entries` costs milliseconds of kernel
//! time to create and free). When the kernel refuses the batch command, or a batch fails
//! midway, the rest is read entry by entry as before (two syscalls per entry) and the table is
//! not reused. Must never: hand out an entry twice, or skip one without an error for the caller
//! to count; say a table is empty when entries may remain in it.

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
pub(super) fn read(
    table: &FlowTable,
    mut entry: impl FnMut(FlowKey, FlowStats),
    mut error: impl FnMut(aya::maps::MapError),
) -> Read {
    let Err(refused) = read_batched(table, &mut entry) else {
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

/// Reads and deletes the whole table in batches; `Err` with the syscall's error when a batch
/// failed (the entries of earlier batches have been delivered and deleted).
fn read_batched(table: &FlowTable, entry: &mut impl FnMut(FlowKey, FlowStats)) -> std::io::Result<()> {
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
    let mut next = 0u32;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &position as *const u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: attr is the bpf_attr layout of the batch commands; the buffers hold BATCH keys
        // and values of the map's key and value sizes (FlowKey and FlowStats), `position` and
        // `next` are the 4-byte batch token of a hash map (a bucket index), and all of them
        // outlive the call. The kernel writes `count` back into attr.
        let result = unsafe { super::sys_bpf_mut(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr) };
        // Filled on success and on ENOENT (the last batch); 0 on other errors.
        let filled = if result.is_ok() || is_end(&result) { (attr.count as usize).min(BATCH) } else { 0 };
        for i in 0..filled {
            entry(keys[i], values[i]);
        }
        match result {
            Ok(_) => {
                position = next;
                first = false;
            }
            Err(_) if is_end(&result) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// `ENOENT`: the batch reached the end of the table.
fn is_end(result: &std::io::Result<libc::c_long>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::ENOENT))
}
