//! capture: loads and attaches the eBPF programs, drains the kernel flow table every interval.
//!
//! Takes: [`CaptureConfig`] and link events from rtnetlink. Gives: one [`CaptureBatch`] per flush
//! interval on a channel (the table and the ring-buffer packets of the interval, merged per
//! direction, hook and interface), kernel counters as metrics, readiness. An interval ends early
//! when the flows merged from the ring buffer reach `flow_table_entries` (the table is full and
//! new flows keep coming), so a batch never holds more than twice `flow_table_entries` flows;
//! while the pipeline has not taken the last batch the ring buffer is not read, and what it
//! cannot hold is counted as lost by the kernel. Must never: be bypassed
//! (it is the only module that touches aya), change a packet's fate, or drop a count: a drain
//! installs an empty table first (the one the previous drain emptied, else a fresh one; the
//! map-of-maps update waits for running programs), then reads and empties the old one whole in
//! batches ([`table`]) and keeps it for the next drain (one the batches could not empty is read
//! entry by entry, counted in `flowaudit_flow_table_read_fallbacks_total` and dropped); a table
//! that cannot be replaced stays in place and is read next time.
//!
//! Attach rules: `cgroup_skb` ingress and egress on the configured cgroup v2 directory (bpf links,
//! which never displace other programs attached there); TC ingress and egress on every interface
//! whose name matches a glob, through TCX at the head of the chain (kernel 6.6+) or a clsact
//! filter otherwise. Links are owned by this process: they go when it exits, however it exits.
//!
//! With a pin directory (`run --pin`), the maps, and the cgroup and TCX links, are pinned under
//! it and outlive the process: a later process reuses the pinned maps, swaps its programs into
//! the pinned links (`BPF_LINK_UPDATE`, so exactly one program runs per hook), and its first drain
//! reads the table the previous process left installed. `flowaudit detach` removes the pins.

pub mod bench;
mod ifaces;
mod metrics;
mod table;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{ArrayOfMaps, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, LinkOrder, SchedClassifier, TcAttachType,
        cgroup_skb::CgroupSkbLinkId,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};
use flowaudit_common::{COUNTER_SLOTS, FAMILY_IPV4, FlowEvent, FlowKey, FlowStats, ObsPoint, maps, programs};
use ifaces::LinkEvent;
pub use metrics::CaptureMetrics;
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::model::{CaptureBatch, Hook, IfaceRole, Observation, Tuple};

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowaudit-ebpf"));

/// What capture needs to know.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// cgroup v2 directory for the `cgroup_skb` programs.
    pub cgroup: PathBuf,
    /// Interface globs for the TC programs.
    pub interfaces: Vec<String>,
    /// Entries per flow table.
    pub flow_table_entries: u32,
    /// Ring buffer bytes.
    pub ring_buffer_size: u32,
    /// Drain period.
    pub flush_interval: Duration,
    /// `--pin`: the bpffs directory that keeps maps and links across restarts.
    pub pin: Option<PathBuf>,
}

/// Capture failures. Load and attach errors at start are fatal; later ones are counted.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The eBPF object did not load (verifier, missing privileges, old kernel).
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("{what}: {source}")]
    Program {
        /// Which program and target.
        what: String,
        /// Cause.
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("{what}: {source}")]
    Map {
        /// Which map operation.
        what: &'static str,
        /// Cause.
        source: aya::maps::MapError,
    },
    /// The cgroup directory could not be opened.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The pin directory is unusable (not on bpffs, not creatable) or a pin failed.
    #[error("pin directory {path}: {reason}")]
    Pin {
        /// Path.
        path: PathBuf,
        /// Reason.
        reason: String,
    },
    /// The netlink socket or the ring-buffer poller could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
}

type FlowTable = BpfHashMap<MapData, FlowKey, FlowStats>;

struct Interface {
    name: String,
    role: IfaceRole,
    links: Vec<(TcAttachType, SchedClassifierLinkId)>,
    /// With `--pin`: the pinned TCX links (they stay attached when this process exits).
    pins: Vec<(TcAttachType, PinnedLink)>,
}

/// Loaded, attached programs and the maps they write.
pub struct Capture {
    cfg: CaptureConfig,
    ebpf: Ebpf,
    active: FlowTable,
    /// The table the last drain read and emptied, installed at the next drain (none after a
    /// drain that could not empty it: a fresh one is created then).
    spare: Option<FlowTable>,
    /// Observations of the last batch: the next one's first allocation.
    last_batch_len: usize,
    /// A batched read of the table failed once (said once in the log).
    batch_refused: bool,
    /// Tests only: the batch at which reading a swapped-out table is made to fail
    /// (`fail_at` of [`table::read`]).
    #[cfg(test)]
    fail_batch_at: Option<usize>,
    ring: AsyncFd<RingBuf<MapData>>,
    cgroup_links: Vec<(&'static str, CgroupSkbLinkId)>,
    /// With `--pin`: the pinned cgroup links.
    cgroup_pins: Vec<PinnedLink>,
    ifaces: HashMap<u32, Interface>,
    /// Roles of interfaces deleted since the last drain: their last packets are still in the table.
    gone: HashMap<u32, IfaceRole>,
    patterns: Vec<glob::Pattern>,
    /// Ring-buffer packets since the last drain, merged per key.
    pending: HashMap<FlowKey, FlowStats>,
    interval_start_ns: u64,
    metrics: CaptureMetrics,
    ready: Arc<AtomicBool>,
}

/// Wall clock now, Unix nanoseconds.
fn wall_now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// CLOCK_MONOTONIC now (the clock of `bpf_ktime_get_ns`), nanoseconds.
fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Why a drain ran (the `reason` label of `flowaudit_drains_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DrainReason {
    /// The flush interval elapsed.
    Interval,
    /// The pipeline asked for one (before a cluster-state change).
    Request,
    /// The flows merged from the ring buffer reached `flow_table_entries`: the table is full
    /// and new flows keep coming, so the interval ends early rather than growing without bound.
    PendingFull,
    /// The agent is stopping.
    Shutdown,
}

impl DrainReason {
    const ALL: [DrainReason; 4] =
        [DrainReason::Interval, DrainReason::Request, DrainReason::PendingFull, DrainReason::Shutdown];

    fn name(self) -> &'static str {
        match self {
            DrainReason::Interval => "interval",
            DrainReason::Request => "request",
            DrainReason::PendingFull => "pending_full",
            DrainReason::Shutdown => "shutdown",
        }
    }
}

/// How a read of the ring buffer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ring {
    /// Every record was read.
    Empty,
    /// `pending` reached its cap; the rest stays in the ring.
    PendingFull,
}

/// Reads ring-buffer records into `pending` (merged per key) until the ring is empty or
/// `pending` holds `cap` flows (checked before each record, so never more than `cap`).
fn read_ring(
    ring: &mut RingBuf<MapData>,
    pending: &mut HashMap<FlowKey, FlowStats>,
    metrics: &CaptureMetrics,
    cap: usize,
) -> Ring {
    let mut outcome = Ring::Empty;
    loop {
        if pending.len() >= cap {
            outcome = Ring::PendingFull;
            break;
        }
        let Some(item) = ring.next() else { break };
        if item.len() != size_of::<FlowEvent>() {
            metrics.ringbuf_malformed.inc();
            continue;
        }
        // SAFETY: length checked; FlowEvent is plain data, read unaligned.
        let ev: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        metrics.ringbuf_events.inc();
        let e = pending.entry(ev.key).or_insert(FlowStats {
            first_seen_ns: ev.ts_ns,
            cgroup_id: ev.cgroup_id,
            ..Default::default()
        });
        e.packets += ev.packets as u64;
        e.bytes += ev.bytes;
        e.first_seen_ns = e.first_seen_ns.min(ev.ts_ns);
        e.last_seen_ns = e.last_seen_ns.max(ev.ts_ns);
        e.tcp_flags |= ev.tcp_flags as u64;
    }
    metrics.pending.set(pending.len() as i64);
    outcome
}

impl Capture {
    /// Loads the object, installs the first flow table and attaches the cgroup programs.
    /// TC programs attach as [`Capture::run`] learns the interfaces.
    pub fn load(cfg: CaptureConfig, metrics: CaptureMetrics, ready: Arc<AtomicBool>) -> Result<Self, CaptureError> {
        let patterns = cfg.interfaces.iter().map(|p| glob::Pattern::new(p).expect("validated by config")).collect();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::FLOW_EVENTS, cfg.ring_buffer_size);
        let mut takeover = false;
        let map_pins: Vec<(&str, PathBuf)> = match &cfg.pin {
            Some(dir) => {
                prepare_pin_dir(dir)?;
                takeover = dir.join("maps").join(maps::FLOW_TABLES).exists();
                let ring_pin = dir.join("maps").join(maps::FLOW_EVENTS);
                if let Ok(info) = aya::maps::MapInfo::from_pin(&ring_pin)
                    && info.max_entries() != cfg.ring_buffer_size
                {
                    return Err(CaptureError::Pin {
                        path: ring_pin,
                        reason: format!(
                            "the pinned ring buffer has {} bytes, ring_buffer_size is {}: run `flowaudit detach` first",
                            info.max_entries(),
                            cfg.ring_buffer_size
                        ),
                    });
                }
                [maps::FLOW_TABLES, maps::FLOW_EVENTS, maps::COUNTERS]
                    .into_iter()
                    .map(|m| (m, dir.join("maps").join(m)))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        // Takeover: the table in the slot holds what was counted since the previous process's
        // last drain; it becomes ours, so the first drain swaps it out and reads it whole.
        let inherited = match &cfg.pin {
            Some(dir) if takeover => current_table(&ebpf, dir, &metrics),
            _ => None,
        };
        let active = match inherited {
            Some(table) => {
                tracing::info!(message = "Took over the pinned maps; the first drain reads the table left installed.");
                table
            }
            None => {
                let table = new_table(cfg.flow_table_entries)?;
                install(&mut ebpf, &table, cfg.pin.as_deref())?;
                table
            }
        };
        metrics.table_capacity.set(cfg.flow_table_entries as i64);
        let ring = RingBuf::try_from(ebpf.take_map(maps::FLOW_EVENTS).expect("map in object"))
            .map_err(|source| CaptureError::Map { what: "opening the ring buffer", source })?;
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns the ring buffer.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| CaptureError::Io { what: "polling the ring buffer", source: e.into() })?;
        for name in [programs::TC_INGRESS, programs::TC_EGRESS] {
            let prog: &mut SchedClassifier = ebpf.program_mut(name).expect("in object").try_into().expect("classifier");
            prog.load().map_err(|source| CaptureError::Program { what: format!("loading {name}"), source })?;
        }
        let mut capture = Self {
            cfg,
            ebpf,
            active,
            spare: None,
            last_batch_len: 0,
            batch_refused: false,
            #[cfg(test)]
            fail_batch_at: None,
            ring,
            cgroup_links: Vec::new(),
            cgroup_pins: Vec::new(),
            ifaces: HashMap::new(),
            gone: HashMap::new(),
            patterns,
            pending: HashMap::new(),
            interval_start_ns: wall_now_ns(),
            metrics,
            ready,
        };
        capture.attach_cgroup()?;
        Ok(capture)
    }

    fn attach_cgroup(&mut self) -> Result<(), CaptureError> {
        let dir = File::open(&self.cfg.cgroup)
            .map_err(|source| CaptureError::Cgroup { path: self.cfg.cgroup.clone(), source })?;
        for (name, attach, hook) in [
            (programs::CGROUP_INGRESS, CgroupSkbAttachType::Ingress, ObsPoint::CgroupIngress),
            (programs::CGROUP_EGRESS, CgroupSkbAttachType::Egress, ObsPoint::CgroupEgress),
        ] {
            let prog: &mut CgroupSkb = self.ebpf.program_mut(name).expect("in object").try_into().expect("cgroup_skb");
            prog.load().map_err(|source| CaptureError::Program { what: format!("loading {name}"), source })?;
            let pin = self.cfg.pin.as_ref().map(|d| d.join("links").join(format!("cgroup-{}", hook_suffix(hook))));
            if let Some(pin) = &pin
                && pin.exists()
            {
                let prog_fd =
                    prog.fd().map_err(|source| CaptureError::Program { what: format!("{name} fd"), source })?;
                link_update(pin, prog_fd.as_fd()).map_err(|e| CaptureError::Pin {
                    path: pin.clone(),
                    reason: format!("swapping {name} into the pinned link: {e}"),
                })?;
                tracing::info!(message = "Swapped the new program into a pinned link.", link = %pin.display());
                self.cgroup_pins.push(
                    PinnedLink::from_pin(pin)
                        .map_err(|e| CaptureError::Pin { path: pin.clone(), reason: e.to_string() })?,
                );
            } else {
                let link = prog.attach(&dir, attach, CgroupAttachMode::Single).map_err(|source| {
                    CaptureError::Program { what: format!("attaching {name} to {}", self.cfg.cgroup.display()), source }
                })?;
                match pin {
                    Some(pin) => {
                        let owned = prog.take_link(link).map_err(|source| CaptureError::Program {
                            what: format!("taking the {name} link"),
                            source,
                        })?;
                        let fd_link = FdLink::try_from(owned).map_err(|e| CaptureError::Pin {
                            path: pin.clone(),
                            reason: format!("{name}: not an fd link: {e}"),
                        })?;
                        let pinned = fd_link
                            .pin(&pin)
                            .map_err(|e| CaptureError::Pin { path: pin.clone(), reason: e.to_string() })?;
                        self.cgroup_pins.push(pinned);
                    }
                    None => self.cgroup_links.push((name, link)),
                }
            }
            self.metrics.attach_events.with_label_values(&[hook.name(), "attached"]).inc();
            self.metrics.attached.with_label_values(&[hook.name()]).inc();
        }
        tracing::info!(message = "Attached cgroup_skb ingress and egress.", cgroup = %self.cfg.cgroup.display());
        Ok(())
    }

    fn wanted(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Present { index, name, role } => {
                if self.ifaces.get(&index).is_some_and(|i| i.name == name) || !self.wanted(&name) {
                    return;
                }
                if let Some(old) = self.ifaces.remove(&index) {
                    self.detach_iface(index, old); // renamed: re-evaluate under the new name
                }
                let mut iface = Interface { name, role, links: Vec::new(), pins: Vec::new() };
                for (prog_name, attach, hook) in [
                    (programs::TC_INGRESS, TcAttachType::Ingress, ObsPoint::TcIngress),
                    (programs::TC_EGRESS, TcAttachType::Egress, ObsPoint::TcEgress),
                ] {
                    let pin = self.cfg.pin.as_ref().map(|d| d.join("links").join(tc_pin_name(&iface.name, attach)));
                    let attached = match pin {
                        Some(pin) => attach_tc_pinned(&mut self.ebpf, prog_name, &iface.name, attach, &pin)
                            .map(|p| iface.pins.push((attach, p))),
                        None => attach_tc(&mut self.ebpf, prog_name, &iface.name, attach)
                            .map(|link| iface.links.push((attach, link)))
                            .map_err(|e| e.to_string()),
                    };
                    match attached {
                        Ok(()) => {
                            self.metrics.attach_events.with_label_values(&[hook.name(), "attached"]).inc();
                            self.metrics.attached.with_label_values(&[hook.name()]).inc();
                        }
                        Err(error) => {
                            self.metrics.attach_events.with_label_values(&[hook.name(), "failed"]).inc();
                            tracing::error!(message = "Attaching a TC program failed.", interface = %iface.name, program = prog_name, %error);
                        }
                    }
                }
                tracing::info!(message = "Attached TC programs.", interface = %iface.name, ifindex = index, role = ?iface.role);
                self.ifaces.insert(index, iface);
            }
            LinkEvent::Gone { index } => {
                if let Some(iface) = self.ifaces.remove(&index) {
                    tracing::info!(message = "Interface removed; forgetting it.", interface = %iface.name, ifindex = index);
                    self.gone.insert(index, iface.role);
                    self.detach_iface(index, iface);
                }
            }
            LinkEvent::Listed => {
                self.remove_stale_tc_pins();
                self.ready.store(true, Ordering::SeqCst);
                tracing::info!(message = "Every program is attached; ready.", interfaces = self.ifaces.len());
            }
        }
    }

    fn detach_iface(&mut self, _index: u32, iface: Interface) {
        for (attach, pinned) in iface.pins {
            // The interface is gone or renamed: the kernel dropped (or will not need) the link.
            let _ = pinned.unpin();
            let hook = if attach == TcAttachType::Ingress { ObsPoint::TcIngress } else { ObsPoint::TcEgress };
            self.metrics.attach_events.with_label_values(&[hook.name(), "detached"]).inc();
            self.metrics.attached.with_label_values(&[hook.name()]).dec();
        }
        for (attach, link) in iface.links {
            let (name, hook) = match attach {
                TcAttachType::Ingress => (programs::TC_INGRESS, ObsPoint::TcIngress),
                _ => (programs::TC_EGRESS, ObsPoint::TcEgress),
            };
            let prog: &mut SchedClassifier =
                self.ebpf.program_mut(name).expect("in object").try_into().expect("classifier");
            // The kernel already dropped the links of a deleted device; detaching is then a no-op.
            let _ = prog.detach(link);
            self.metrics.attach_events.with_label_values(&[hook.name(), "detached"]).inc();
            self.metrics.attached.with_label_values(&[hook.name()]).dec();
        }
    }

    /// Unpins the pinned TC links of interfaces that no longer exist (or no longer match).
    fn remove_stale_tc_pins(&mut self) {
        let Some(dir) = &self.cfg.pin else { return };
        let keep: Vec<String> = self
            .ifaces
            .values()
            .flat_map(|i| [tc_pin_name(&i.name, TcAttachType::Ingress), tc_pin_name(&i.name, TcAttachType::Egress)])
            .collect();
        let Ok(entries) = std::fs::read_dir(dir.join("links")) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("tc-") && !keep.contains(&name) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(message = "Unpinned the TC link of an interface that is gone.", link = %entry.path().display())
                    }
                    Err(error) => {
                        tracing::warn!(message = "Unpinning a stale TC link failed.", link = %entry.path().display(), %error)
                    }
                }
            }
        }
    }

    fn detach_all(&mut self) {
        let ifaces: Vec<_> = self.ifaces.drain().collect();
        for (index, iface) in ifaces {
            self.detach_iface(index, iface);
        }
        for (name, link) in std::mem::take(&mut self.cgroup_links) {
            let prog: &mut CgroupSkb = self.ebpf.program_mut(name).expect("in object").try_into().expect("cgroup_skb");
            let _ = prog.detach(link);
            let hook = if name == programs::CGROUP_INGRESS { ObsPoint::CgroupIngress } else { ObsPoint::CgroupEgress };
            self.metrics.attach_events.with_label_values(&[hook.name(), "detached"]).inc();
            self.metrics.attached.with_label_values(&[hook.name()]).dec();
        }
    }

    /// Reads ring-buffer records into `pending` until the ring is empty or `pending` holds
    /// `flow_table_entries` flows; says which.
    fn read_ring(&mut self) -> Ring {
        let cap = self.cfg.flow_table_entries as usize;
        read_ring(self.ring.get_mut(), &mut self.pending, &self.metrics, cap)
    }

    /// Swaps in an empty table (the one the last drain emptied, else a fresh one) and reads the
    /// old one and the ring buffer. `last` marks the batch sent at shutdown.
    fn drain(&mut self, reason: DrainReason, last: bool, answers: Option<u64>) -> CaptureBatch {
        let started = Instant::now();
        self.metrics.drains.with_label_values(&[reason.name()]).inc();
        let end_ns = wall_now_ns();
        let wall_minus_mono = end_ns as i128 - mono_now_ns() as i128;
        let swapped = match self.spare.take() {
            Some(empty) => Ok(empty),
            None => new_table(self.cfg.flow_table_entries),
        }
        .and_then(|fresh| {
            install(&mut self.ebpf, &fresh, self.cfg.pin.as_deref())?;
            Ok(std::mem::replace(&mut self.active, fresh))
        });
        // Ring-buffer records written before the swap are readable now (those past the cap on
        // `pending` wait in the ring for the next drain); they are merged into the table's
        // entries of the same key as the table is read.
        self.read_ring();
        let to_wall = |mono: u64| (mono as i128 + wall_minus_mono).max(0) as u64;
        let mut observations = Vec::with_capacity(self.last_batch_len.max(self.pending.len()));
        // Entries, packets and bytes per observation point ([`ObsPoint`] as index).
        let mut per_point = [[0u64; 3]; ObsPoint::ALL.len()];
        #[cfg(test)]
        let fail_at = self.fail_batch_at;
        #[cfg(not(test))]
        let fail_at = None;
        let (ifaces, gone, pending) = (&self.ifaces, &self.gone, &mut self.pending);
        let mut add = |key: &FlowKey, stats: &FlowStats| {
            if let Some(obs) = observation(key, stats, ifaces, gone, &to_wall) {
                let counts = &mut per_point[key.obs as usize];
                counts[0] += 1;
                counts[1] += stats.packets;
                counts[2] += stats.bytes;
                observations.push(obs);
            }
        };
        match swapped {
            Ok(old) => {
                let mut entries = 0i64;
                let read = table::read(
                    &old,
                    fail_at,
                    |key, mut stats| {
                        entries += 1;
                        if !pending.is_empty()
                            && let Some(ev) = pending.remove(&key)
                        {
                            merge_pending(&mut stats, &ev);
                        }
                        add(&key, &stats);
                    },
                    |error| {
                        self.metrics.drain_errors.inc();
                        tracing::error!(message = "Reading a flow-table entry failed.", %error);
                    },
                );
                match read {
                    table::Read::Emptied => self.spare = Some(old),
                    // Not installed again: entries the fallback read are still in it (it is
                    // freed when `old` goes out of scope; a fresh table is created next time).
                    table::Read::Iterated(error) => {
                        self.metrics.table_read_fallbacks.inc();
                        if !std::mem::replace(&mut self.batch_refused, true) {
                            tracing::warn!(message = "Reading the flow table in batches failed; reading it entry by entry (slower, a fresh table per drain).", %error);
                        }
                    }
                }
                self.metrics.table_entries.set(entries);
                let capacity = i64::from(self.cfg.flow_table_entries);
                self.metrics.table_fill.set(entries as f64 / capacity as f64);
                if entries >= capacity {
                    self.metrics.full_drains.inc();
                }
            }
            Err(error) => {
                self.metrics.drain_errors.inc();
                tracing::error!(message = "Swapping the flow table failed; its counts stay for the next drain.", %error);
            }
        }
        // Keys only the ring buffer saw.
        for (key, ev) in pending.drain() {
            let mut stats =
                FlowStats { first_seen_ns: ev.first_seen_ns, cgroup_id: ev.cgroup_id, ..Default::default() };
            merge_pending(&mut stats, &ev);
            add(&key, &stats);
        }
        for (obs, [entries, packets, bytes]) in ObsPoint::ALL.into_iter().zip(per_point) {
            if entries > 0 {
                self.metrics.flow_entries.with_label_values(&[obs.name()]).inc_by(entries);
                self.metrics.packets.with_label_values(&[obs.name()]).inc_by(packets);
                self.metrics.bytes.with_label_values(&[obs.name()]).inc_by(bytes);
            }
        }
        self.metrics.pending.set(0);
        self.read_counters();
        self.gone.clear();
        self.last_batch_len = observations.len();
        let batch = CaptureBatch { start_ns: self.interval_start_ns, end_ns, observations, last, answers };
        self.interval_start_ns = end_ns;
        self.metrics.drain_seconds.observe(started.elapsed().as_secs_f64());
        batch
    }

    fn read_counters(&mut self) {
        let Some(map) = self.ebpf.map(maps::COUNTERS) else { return };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else { return };
        let mut values = vec![0u64; COUNTER_SLOTS as usize];
        for (i, v) in values.iter_mut().enumerate() {
            if let Ok(per_cpu) = counters.get(&(i as u32), 0) {
                *v = per_cpu.iter().sum();
            }
        }
        self.metrics.observe_kernel(&values);
    }

    /// Runs until `shutdown` fires: attaches TC as links come and go, drains every interval and
    /// whenever a drain is requested (before a policy change), and sends each batch on `out`. On
    /// shutdown it detaches everything, then drains a last time.
    pub async fn run(
        mut self,
        out: mpsc::Sender<CaptureBatch>,
        mut drain_requests: mpsc::Receiver<u64>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), CaptureError> {
        let mut links = if self.patterns.is_empty() {
            self.ready.store(true, Ordering::SeqCst);
            tracing::info!(message = "No --interfaces: cgroup hook only; ready.");
            None
        } else {
            Some(ifaces::watch().map_err(|source| CaptureError::Io { what: "opening rtnetlink", source })?)
        };
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.cfg.flush_interval, self.cfg.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (reason, answers) = tokio::select! {
                _ = tick.tick() => (DrainReason::Interval, None),
                Some(request) = drain_requests.recv() => (DrainReason::Request, Some(request)),
                Some(event) = async { links.as_mut()?.recv().await } => {
                    self.on_link(event);
                    continue;
                }
                guard = self.ring.readable_mut() => {
                    let Ok(mut guard) = guard else { continue };
                    let cap = self.cfg.flow_table_entries as usize;
                    match read_ring(guard.get_inner_mut(), &mut self.pending, &self.metrics, cap) {
                        // Readiness is cleared only once the ring is empty: records left behind
                        // by a full `pending` are read right after the drain below.
                        Ring::Empty => {
                            guard.clear_ready();
                            continue;
                        }
                        Ring::PendingFull => (DrainReason::PendingFull, None),
                    }
                }
                _ = shutdown.changed() => break,
            };
            let batch = self.drain(reason, false, answers);
            let waiting = Instant::now();
            if out.send(batch).await.is_err() {
                break;
            }
            self.metrics.send_wait_seconds.inc_by(waiting.elapsed().as_secs_f64());
        }
        if self.cfg.pin.is_some() {
            // Pinned: programs keep counting into the installed table; the next process reads it.
            let batch = self.drain(DrainReason::Shutdown, true, None);
            let _ = out.send(batch).await;
            tracing::info!(message = "Programs stay attached (pinned); final drain sent.");
        } else {
            self.detach_all();
            let batch = self.drain(DrainReason::Shutdown, true, None);
            let _ = out.send(batch).await;
            tracing::info!(message = "Detached every program; final drain sent.");
        }
        Ok(())
    }
}

/// Pin names of the installed flow table under `<pin>/maps`: the table a drain installs is pinned as `next`,
/// installed, then renamed over `current`. A takeover opens the installed table by its pin and
/// checks its id against slot 0, because opening it by id (`bpf_map_get_fd_by_id`) needs
/// CAP_SYS_ADMIN, which the agent does not keep.
const TABLE_PIN: &str = "FLOW_TABLE";
const TABLE_PIN_NEXT: &str = "FLOW_TABLE_NEXT"; // bpffs refuses names with a dot

/// The table installed in slot 0 of `FLOW_TABLES` by the previous process, from its pin.
fn current_table(ebpf: &Ebpf, dir: &Path, metrics: &CaptureMetrics) -> Option<FlowTable> {
    let installed = match installed_table_id(ebpf) {
        Ok(id) => id,
        Err(error) => {
            metrics.drain_errors.inc();
            tracing::warn!(message = "The pinned FLOW_TABLES has no readable table; starting a fresh one.", %error);
            return None;
        }
    };
    for name in [TABLE_PIN_NEXT, TABLE_PIN] {
        let Ok(data) = MapData::from_pin(dir.join("maps").join(name)) else { continue };
        if data.info().map(|i| i.id()).ok() == Some(installed) {
            return FlowTable::try_from(aya::maps::Map::HashMap(data)).ok();
        }
    }
    // A pin layout from an older version (a crash mid-swap leaves one of the two pins right):
    // what the installed table counted since the last drain cannot be opened without
    // CAP_SYS_ADMIN.
    metrics.drain_errors.inc();
    tracing::warn!(
        message = "The table in the pinned FLOW_TABLES is not pinned; starting a fresh one (its counts since the last drain are lost).",
        map_id = installed,
        dir = %dir.display(),
    );
    None
}

/// The id of the map in slot 0 of `FLOW_TABLES` (a lookup in a map of maps gives the id).
fn installed_table_id(ebpf: &Ebpf) -> std::io::Result<u32> {
    /// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let Some(aya::maps::Map::ArrayOfMaps(outer)) = ebpf.map(maps::FLOW_TABLES) else {
        return Err(std::io::Error::other("FLOW_TABLES is not an array of maps"));
    };
    let key = 0u32;
    let mut id = 0u32;
    let attr = ElemAttr {
        map_fd: outer.fd().as_fd().as_raw_fd() as u32,
        pad: 0,
        key: &key as *const u32 as u64,
        value: &mut id as *mut u32 as u64,
        flags: 0,
    };
    // SAFETY: attr is the bpf_attr layout of BPF_MAP_LOOKUP_ELEM; `key` and `id` outlive the call.
    unsafe { sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr) }?;
    Ok(id)
}

/// bpffs magic (`statfs` `f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Creates `dir`, `dir/maps` and `dir/links`; `dir` must be on bpffs.
fn prepare_pin_dir(dir: &Path) -> Result<(), CaptureError> {
    let err = |reason: String| CaptureError::Pin { path: dir.to_path_buf(), reason };
    std::fs::create_dir_all(dir).map_err(|e| {
        err(format!("cannot create it ({e}); --pin needs bpffs mounted (mount -t bpf bpf /sys/fs/bpf)"))
    })?;
    if !on_bpffs(dir) {
        return Err(err("not on a bpf filesystem; --pin needs bpffs mounted (mount -t bpf bpf /sys/fs/bpf)".into()));
    }
    for sub in ["maps", "links"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| err(format!("creating {sub}/: {e}")))?;
    }
    Ok(())
}

fn on_bpffs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: zeroed statfs is valid; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

fn hook_suffix(hook: ObsPoint) -> &'static str {
    match hook {
        ObsPoint::CgroupIngress | ObsPoint::TcIngress => "ingress",
        ObsPoint::CgroupEgress | ObsPoint::TcEgress => "egress",
    }
}

fn tc_pin_name(iface: &str, attach: TcAttachType) -> String {
    let dir = if attach == TcAttachType::Ingress { "ingress" } else { "egress" };
    format!("tc-{iface}-{dir}")
}

/// `bpf(cmd, attr)`, for the commands aya does not offer here; the result (an fd for some).
///
/// # Safety
/// `attr` must be the `union bpf_attr` layout of `cmd`, and every pointer in it live for the call.
unsafe fn sys_bpf<A>(cmd: libc::c_long, attr: &A) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller's contract.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const A, size_of::<A>() as u32) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// [`sys_bpf`] for the commands that write results back into `attr` (the batch commands).
///
/// # Safety
/// As [`sys_bpf`].
unsafe fn sys_bpf_mut<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller's contract.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as u32) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// `BPF_OBJ_GET`: an fd for the object pinned at `path`.
fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let attr = Attr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: attr is the bpf_attr layout of BPF_OBJ_GET (7); c outlives the call.
    let fd = unsafe { sys_bpf(7, &attr) }?;
    // SAFETY: the kernel returned a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_LINK_UPDATE`: swaps `prog` into the link pinned at `pin`, atomically.
fn link_update(pin: &Path, prog: BorrowedFd<'_>) -> std::io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let link = obj_get(pin)?;
    let attr =
        Attr { link_fd: link.as_raw_fd() as u32, new_prog_fd: prog.as_raw_fd() as u32, flags: 0, old_prog_fd: 0 };
    // SAFETY: attr is the bpf_attr layout of BPF_LINK_UPDATE (29), with no pointers.
    unsafe { sys_bpf(29, &attr) }.map(drop)
}

/// Attaches a TC program through a pinned TCX link: swaps it into the existing pin, or attaches
/// and pins. A pin whose interface was recreated is stale (the kernel dropped its device): it is
/// replaced.
fn attach_tc_pinned(
    ebpf: &mut Ebpf,
    prog_name: &str,
    iface: &str,
    attach: TcAttachType,
    pin: &Path,
) -> Result<PinnedLink, String> {
    let prog: &mut SchedClassifier = ebpf.program_mut(prog_name).expect("in object").try_into().expect("classifier");
    if pin.exists() {
        let prog_fd = prog.fd().map_err(|e| e.to_string())?;
        match link_update(pin, prog_fd.as_fd()) {
            Ok(()) => {
                tracing::info!(message = "Swapped the new program into a pinned link.", link = %pin.display());
                return PinnedLink::from_pin(pin).map_err(|e| e.to_string());
            }
            Err(error) => {
                tracing::info!(message = "A pinned TC link is stale; replacing it.", link = %pin.display(), %error);
                let _ = std::fs::remove_file(pin);
            }
        }
    }
    if !KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
        return Err("--pin needs TCX (kernel 6.6+) for TC programs".into());
    }
    let link = attach_tc_prog(prog, iface, attach).map_err(|e| e.to_string())?;
    let owned = prog.take_link(link).map_err(|e| e.to_string())?;
    let fd_link = FdLink::try_from(owned).map_err(|e| e.to_string())?;
    fd_link.pin(pin).map_err(|e| format!("pinning {}: {e}", pin.display()))
}

/// `flowaudit detach`: unpins every link (their programs detach) and map under `dir`, then
/// removes the directories. Returns what was removed; nothing pinned is not an error.
pub fn detach_pinned(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !dir.exists() {
        return Ok(removed);
    }
    for sub in ["links", "maps"] {
        let d = dir.join(sub);
        if !d.exists() {
            continue;
        }
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(&d)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        entries.sort();
        for path in entries {
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
        std::fs::remove_dir(&d)?;
        removed.push(d);
    }
    std::fs::remove_dir(dir)?;
    removed.push(dir.to_path_buf());
    Ok(removed)
}

fn new_table(entries: u32) -> Result<FlowTable, CaptureError> {
    FlowTable::create(entries, 0).map_err(|source| CaptureError::Map { what: "creating a flow table", source })
}

/// Makes `table` the one the programs write to. The map-of-maps update returns only after every
/// program that may still hold the previous table has finished (the kernel waits for RCU). With
/// `pin`, the table is pinned first (see [`TABLE_PIN`]).
fn install(ebpf: &mut Ebpf, table: &FlowTable, pin: Option<&Path>) -> Result<(), CaptureError> {
    let pin_error = |path: &Path, reason: String| CaptureError::Pin { path: path.to_owned(), reason };
    let next = pin.map(|dir| dir.join("maps").join(TABLE_PIN_NEXT));
    if let Some(next) = &next {
        let _ = std::fs::remove_file(next);
        aya::maps::IterableMap::map(table).pin(next).map_err(|e| pin_error(next, e.to_string()))?;
    }
    let map = ebpf.map_mut(maps::FLOW_TABLES).expect("map in object");
    let mut outer: ArrayOfMaps<&mut MapData, FlowTable> =
        ArrayOfMaps::try_from(map).map_err(|source| CaptureError::Map { what: "opening FLOW_TABLES", source })?;
    outer.set(0, table, 0).map_err(|source| CaptureError::Map { what: "installing a flow table", source })?;
    if let Some(next) = &next {
        let current = next.with_file_name(TABLE_PIN);
        std::fs::rename(next, &current).map_err(|e| pin_error(&current, e.to_string()))?;
    }
    Ok(())
}

fn attach_tc(
    ebpf: &mut Ebpf,
    prog_name: &str,
    iface: &str,
    attach: TcAttachType,
) -> Result<SchedClassifierLinkId, aya::programs::ProgramError> {
    let prog: &mut SchedClassifier = ebpf.program_mut(prog_name).expect("in object").try_into().expect("classifier");
    attach_tc_prog(prog, iface, attach)
}

fn attach_tc_prog(
    prog: &mut SchedClassifier,
    iface: &str,
    attach: TcAttachType,
) -> Result<SchedClassifierLinkId, aya::programs::ProgramError> {
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if tcx {
        // Head of the TCX chain: we see packets before any later program can drop them.
        prog.attach_with_options(iface, attach, TcAttachOptions::TcxOrder(LinkOrder::first()))
    } else {
        // clsact may already exist (another agent's, or ours from a killed run): that is fine.
        let _ = tc::qdisc_add_clsact(iface);
        prog.attach_with_options(
            iface,
            attach,
            TcAttachOptions::Netlink(NlOptions { priority: 1, ..Default::default() }),
        )
    }
}

/// Adds the ring-buffer packets `ev` of a key to its counts `e`.
fn merge_pending(e: &mut FlowStats, ev: &FlowStats) {
    e.packets += ev.packets;
    e.bytes += ev.bytes;
    e.first_seen_ns = e.first_seen_ns.min(ev.first_seen_ns);
    e.last_seen_ns = e.last_seen_ns.max(ev.last_seen_ns);
    e.tcp_flags |= ev.tcp_flags;
    if e.cgroup_id == 0 {
        e.cgroup_id = ev.cgroup_id;
    }
}

/// The observation of one drained key (`None` for an unknown observation point); `to_wall`
/// turns the kernel's monotonic times into wall-clock times.
fn observation(
    key: &FlowKey,
    stats: &FlowStats,
    ifaces: &HashMap<u32, Interface>,
    gone: &HashMap<u32, IfaceRole>,
    to_wall: &impl Fn(u64) -> u64,
) -> Option<Observation> {
    let hook = match ObsPoint::from_raw(key.obs)? {
        ObsPoint::CgroupIngress => Hook::CgroupIngress,
        ObsPoint::CgroupEgress => Hook::CgroupEgress,
        ObsPoint::TcIngress => Hook::TcIngress,
        ObsPoint::TcEgress => Hook::TcEgress,
    };
    let role = match hook {
        Hook::TcIngress | Hook::TcEgress => Some(
            ifaces
                .get(&key.ifindex)
                .map(|i| i.role)
                .or_else(|| gone.get(&key.ifindex).copied())
                .unwrap_or(IfaceRole::Host),
        ),
        _ => None,
    };
    Some(Observation {
        tuple: tuple_of(key),
        hook,
        ifindex: key.ifindex,
        role,
        packets: stats.packets,
        bytes: stats.bytes,
        first_seen_ns: to_wall(stats.first_seen_ns),
        last_seen_ns: to_wall(stats.last_seen_ns),
        tcp_flags: stats.tcp_flags,
        cgroup_id: stats.cgroup_id,
    })
}

fn tuple_of(key: &FlowKey) -> Tuple {
    let addr = |raw: [u8; 16]| -> IpAddr {
        if key.family == FAMILY_IPV4 {
            IpAddr::V4(Ipv4Addr::new(raw[12], raw[13], raw[14], raw[15]))
        } else {
            IpAddr::V6(Ipv6Addr::from(raw))
        }
    };
    Tuple {
        proto: key.proto,
        src: addr(key.src_addr),
        dst: addr(key.dst_addr),
        src_port: key.src_port,
        dst_port: key.dst_port,
        icmp_type: key.icmp_type,
        icmp_code: key.icmp_code,
        inner_proto: key.inner_proto,
    }
}
