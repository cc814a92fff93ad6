//! `cargo xtask bench`, CPU per flow: the agent's CPU time for a known number of new flows (short
//! TCP connections), next to the idle agent's over the same wall time; the best of several
//! rounds, each in a lab of its own. `cargo xtask bench-cpu` runs only this part, and with
//! `--perf FILE` records the agent's busy phase with `perf record` for a profile.
//!
//! Takes: the release binaries (`FLOWAUDIT_BIN_*` set by the caller), root. Gives: a markdown
//! table for `docs/performance.md` and one line per round on stdout. Must never: assert on a
//! figure, or leave a lab or a `perf` process behind (the `Lab` drop removes the lab, the
//! recorder's drop stops `perf`, also on error).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use flowaudit_lab::{Agent, Lab};

use crate::bench::{CHURN_FIRST_SPORT, CHURN_PORT, churn, churn_setup, spills, tempdir, tree_cpu_split};

/// Connections of one round: enough that the 10 ms ticks of /proc CPU times are a few per cent of
/// the busy CPU (each has its own source port from 20000 on, so at most 45,535).
pub const CPU_FLOWS: u64 = 40_000;
/// Wall time of the idle measurement.
pub const IDLE_SECONDS: u64 = 10;
/// Rounds of `cargo xtask bench`; the best is reported.
pub const ROUNDS: usize = 3;
/// Sampling rate of `--perf` (Hz): with DWARF call graphs, a few MB per second of busy agent.
const PERF_HZ: &str = "4999";

/// One round's figures.
#[derive(Clone, Copy)]
struct Round {
    /// CPU seconds of the idle agent over [`IDLE_SECONDS`].
    idle: f64,
    /// Wall seconds of the busy run (the connections and three flush intervals).
    wall: f64,
    /// CPU seconds of the agent over the busy run.
    busy: f64,
    /// Of `idle` and `busy`: the user-space part (the rest is system time: syscalls, page faults).
    idle_user: f64,
    busy_user: f64,
    conns: u64,
    records: f64,
    spilled: u64,
    lost: u64,
}

impl Round {
    /// Idle CPU scaled to the busy run's wall time.
    fn idle_same(&self) -> f64 {
        self.idle * self.wall / IDLE_SECONDS as f64
    }

    fn net(&self) -> f64 {
        self.busy - self.idle_same()
    }

    /// Net CPU microseconds per flow record.
    fn net_per_record_us(&self) -> f64 {
        self.net() * 1e6 / self.records.max(1.0)
    }

    /// Of [`Round::net_per_record_us`]: the user-space part.
    fn net_user_per_record_us(&self) -> f64 {
        let idle_user_same = self.idle_user * self.wall / IDLE_SECONDS as f64;
        (self.busy_user - idle_user_same) * 1e6 / self.records.max(1.0)
    }
}

/// `perf record` while this lives.
pub(crate) struct Recorder(Child);

impl Recorder {
    /// Records one process, with DWARF call graphs (user-space stacks of the agent).
    fn start(pid: u32, out: &Path) -> anyhow::Result<Recorder> {
        Recorder::spawn(&["--call-graph", "dwarf", "-p", &pid.to_string()], out)
    }

    /// Records everything that runs on `cpu` (every CPU with `None`), with frame-pointer call
    /// graphs: the kernel's network stack and the BPF programs in it.
    pub(crate) fn cpu(cpu: Option<u32>, out: &Path) -> anyhow::Result<Recorder> {
        match cpu {
            Some(c) => Recorder::spawn(&["-g", "-C", &c.to_string()], out),
            None => Recorder::spawn(&["-g", "-a"], out),
        }
    }

    fn spawn(args: &[&str], out: &Path) -> anyhow::Result<Recorder> {
        let child = Command::new("perf")
            .args(["record", "-q", "-F", PERF_HZ])
            .args(args)
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null())
            .spawn()
            .context("starting perf record (Debian package linux-perf)")?;
        // perf needs a moment to open its events before the workload starts.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Recorder(child))
    }

    /// Stops `perf` (SIGINT: it writes the file and exits).
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        self.interrupt();
        let status = self.0.wait().context("waiting for perf")?;
        // perf exits with the signal's code after a clean SIGINT.
        if !status.success() && status.code() != Some(130) && status.code().is_some() {
            bail!("perf record failed: {status}");
        }
        Ok(())
    }

    fn interrupt(&self) {
        // SAFETY: a signal to our own child, by its pid.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGINT) };
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.interrupt();
            let _ = self.0.wait();
        }
    }
}

/// One round in a lab of its own; with `perf`, the busy run is recorded into that file.
fn round(traffic: &Path, perf: Option<&Path>) -> anyhow::Result<Round> {
    let mut lab = Lab::new(2)?;
    let server = lab.pod("p2").ipv4.to_string();
    churn_setup(&mut lab, traffic, &server)?;
    let dir = tempdir("cpu")?;
    let config = dir.join("flowaudit.yaml");
    // Room for every key of the run in one flush interval, so no packet takes the ring buffer.
    std::fs::write(&config, "flow_table_entries: 262144\n")?;
    let flows = dir.join("flows");
    let cfg = config.to_string_lossy().into_owned();
    let agent = Agent::start(&mut lab, &flows, &["--config", &cfg, "--flush-interval", "1s"])?;
    std::thread::sleep(Duration::from_secs(2));
    let cpu = || {
        let (user, system) = tree_cpu_split(agent.pid);
        (user + system, user)
    };
    let idle0 = cpu();
    std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
    let idle1 = cpu();
    let recorder = perf.map(|out| Recorder::start(agent.pid, out)).transpose()?;
    let start = Instant::now();
    let busy0 = cpu();
    let (conns, _) = churn(&lab, traffic, &server, "120", Some((CPU_FLOWS, CHURN_FIRST_SPORT)))?;
    // Three flush intervals: every flow of the run is drained, attributed and written.
    std::thread::sleep(Duration::from_secs(3));
    let busy1 = cpu();
    let wall = start.elapsed().as_secs_f64();
    if let Some(recorder) = recorder {
        recorder.stop()?;
    }
    let (spilled, lost) = spills(&agent)?;
    if !agent.stop(&mut lab).is_some_and(|s| s.success()) {
        bail!("the agent did not exit cleanly");
    }
    let port: u64 = CHURN_PORT.parse()?;
    let records =
        Agent::records(&flows).iter().filter(|r| r["dest_port"] == port && r["proto"] == "tcp").count() as f64;
    let (idle, idle_user) = (idle1.0 - idle0.0, idle1.1 - idle0.1);
    let (busy, busy_user) = (busy1.0 - busy0.0, busy1.1 - busy0.1);
    Ok(Round { idle, wall, busy, idle_user, busy_user, conns, records, spilled, lost })
}

/// `rounds` rounds; the table of the best (least net CPU per record), and every round's figure.
/// With `perf`, round N is recorded into `perf` (one round) or `perf.N`.
pub fn run(traffic: &Path, rounds: usize, perf: Option<&Path>) -> anyhow::Result<String> {
    let mut all = Vec::new();
    for n in 1..=rounds.max(1) {
        let out: Option<PathBuf> =
            perf.map(|p| if rounds > 1 { PathBuf::from(format!("{}.{n}", p.display())) } else { p.to_owned() });
        let r = round(traffic, out.as_deref())?;
        println!(
            "cpu round {n}: {} connections, {:.0} records, busy {:.0} ms, idle-scaled {:.0} ms, net {:.2} µs per record ({:.2} user){}",
            r.conns,
            r.records,
            r.busy * 1e3,
            r.idle_same() * 1e3,
            r.net_per_record_us(),
            r.net_user_per_record_us(),
            out.map(|p| format!(" (perf: {})", p.display())).unwrap_or_default()
        );
        all.push(r);
    }
    let figures: Vec<String> = all.iter().map(|r| format!("{:.1}", r.net_per_record_us())).collect();
    let best = all.iter().min_by(|a, b| a.net_per_record_us().total_cmp(&b.net_per_record_us())).expect("a round");
    let Round { idle, wall, busy, conns, records, spilled, lost, .. } = *best;
    let (idle_same, net) = (best.idle_same(), best.net());
    let per_conn = |cpu: f64| cpu * 1e6 / conns as f64;
    let per_record = |cpu: f64| cpu * 1e6 / records.max(1.0);
    let table = format!(
        "| measurement | wall time | agent CPU (user + system) | per connection | per flow record | per 1,000 connections |\n\
         |---|---:|---:|---:|---:|---:|\n\
         | idle agent | {IDLE_SECONDS} s | {:.0} ms | - | - | - |\n\
         | idle agent, scaled to the busy run's wall time | {wall:.1} s | {:.0} ms | - | - | - |\n\
         | {conns} short TCP connections ({records:.0} records, {spilled} packets through the ring buffer, {lost} lost) | {wall:.1} s | {:.0} ms | {:.1} µs | {:.1} µs | {:.1} ms |\n\
         | the same, net of the idle agent | {wall:.1} s | {:.0} ms | {:.1} µs | {:.1} µs | {:.1} ms |\n\n\
         Of the net {:.1} µs per record, {:.1} µs are user space (the agent's code) and {:.1} µs \
         system time (the kernel's work for it: the batch reads of the flow table, the file \
         writes, page faults). The best of {} rounds by net CPU per record; each round's net µs \
         per record: {}.\n",
        idle * 1e3,
        idle_same * 1e3,
        busy * 1e3,
        per_conn(busy),
        per_record(busy),
        per_conn(busy),
        net * 1e3,
        per_conn(net),
        per_record(net),
        per_conn(net),
        best.net_per_record_us(),
        best.net_user_per_record_us(),
        best.net_per_record_us() - best.net_user_per_record_us(),
        all.len(),
        figures.join(", "),
    );
    println!("{table}");
    Ok(table)
}

/// The section of `docs/performance.md`: what is measured, `table` (from [`run`]) and what it
/// shows.
pub fn section(table: &str) -> String {
    format!(
        "## Agent CPU time per thousand flows\n\n\
         `cargo xtask bench` (alone: `cargo xtask bench-cpu`, which prints this table; \
         `--write-doc` puts it here). The agent (release build, cgroup hook, 1 s flushes, level-0 \
         records, a 262,144-entry table so that no packet takes the ring buffer) in a lab of its \
         own: first idle for {IDLE_SECONDS} s, then {CPU_FLOWS} short TCP connections from p1 to \
         p2 (`tcp-churn`), then three flush intervals so that every flow is drained, attributed and \
         written. CPU is the agent process's user + system time from /proc/PID/stat. Both ends \
         are pods of the node, so each connection gives one record per side. The lab has no \
         cluster source: enrichment finds no pods and attribution no policies; the section below \
         measures those with 10,000 pods and 1,000 policies.\n\n{table}\n{CPU_READING}"
    )
}

/// Where the CPU goes and what was done about it (the profile and the figures of the runs named).
const CPU_READING: &str = "Reading it (runs of 2026-11-27; the table above is the last one, on a \
busier machine, load average 2.6): each change against the one before it, measured by `cargo \
xtask bench-cpu --rounds 3 --agent before=BIN --agent capture=BIN ...` (the four release builds' \
rounds interleaved in one session, 40,000 connections, net CPU per record, best of three; load \
average 1.4-2.3):

| build | net CPU per record | busy CPU | idle CPU per 10 s |
|---|---:|---:|---:|
| before (the agent of 3d5e8de) | 9.66 µs | 830 ms | 150 ms |
| capture: the swapped-out table is read and emptied with `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, \
4,096 entries per syscall (was a get-next-key and a lookup syscall per entry), and installed again \
at the next drain (a fresh preallocated 262,144-entry table was created per drain: most of the idle \
agent's CPU); entries go straight into the batch (no merge map) and the per-hook counters are added \
once per drain | 7.33 µs | 590 ms | 10 ms |
| aggregate: observations grouped through one index map (was a `Vec` per connection), the winning \
observations in an array (was a `HashMap` per connection), connection keys hashed in one SipHash \
write, the record-id string made once per connection (was twice per record, with `format!` and \
`replace`), the records made in their sorted order (576-byte records were sorted), the constant \
texts shared, no hash lookup per remembered connection to expire them | 4.83 µs | 390 ms | 10 ms |
| output: the calico line written field by field (was serde's derive: every key escaped), \
addresses, numbers and ids written without `fmt` | 4.50 µs | 360 ms | 0 ms |

Where the CPU went before: `perf record --call-graph dwarf` of the busy phase (cpu-clock, 4,999 Hz; \
`cargo xtask bench-cpu --rounds 1 --perf FILE`, then 20,000 connections): the drain 34% of the \
agent's samples (the two syscalls per entry 18%, creating the next table 8%, hashing the entries \
into a merge map 4%, Prometheus label lookups per entry 1%), aggregate 28% (sorting the records \
9%, formatting and allocating per record 8%, the hash maps 4%), output 30% (the kernel copying the \
writes into the page cache 18% in that run, 2-6% in the later ones: it varies with this VM's \
memory; serde's JSON 8%; the hash chain's SHA-256 4%); by symbol `copy_folio_from_iter_atomic` \
16.2%, `memmove` 7.1% (the sort), serde_json's `format_escaped_str` 4.8%, SHA-256 4.4%, the \
kernel's copies in the bpf syscalls 4.3%, SipHash 4.0%, `page_counter_charge` 4.0% and \
`pcpu_freelist_populate` 2.8% (the table creation). After (40,000 connections): aggregate 44% \
(making the records 18%, most of it cache misses on the sides read in sorted order, the FNV of the \
record ids 5% and page faults 4%; hash-map probes 7%), output 25% (SHA-256 10%, encoding 9%, the \
write syscalls 6%), the drain 17% (the kernel's batch read and delete 13%), localize 5%, enrich \
and attribute 3.5% (no cluster here); page faults on the batch's fresh memory 11% in all.

What is left: the hash chain's SHA-256 (every byte, with the SHA extensions: about 0.45 µs per \
record of 880 bytes) and the kernel's work (the batch read, the file writes) are per byte or per \
entry. In userspace most of the rest is memory traffic: a record is 576 bytes, so a batch of \
80,000 is 46 MB that every stage streams through, and its vectors are allocated fresh every \
interval (reusing them would save most of the page faults, at the price of keeping the memory of \
the largest batch). Not measured here: at the default aggregation levels (2 for allowed, 1 for \
denied; this bench writes level 0) rollup serializes a copy of every record to JSON as its \
grouping key. The cost moved in memory: the agent now holds two flow tables all the time (the \
Memory section), where it held the second only during a drain.

Later the same day: aggregate keeps its per-batch buffers and the written records' memory between \
intervals (glibc maps a block over 32 MiB fresh for every batch, and the kernel zeroes each 4 KiB \
page of it on first touch; kept memory follows a high-water mark that decays by 1/16 per interval, \
so a flood's goes back after a few dozen far smaller batches), its maps hash with foldhash instead \
of SipHash, and the pipeline counts records per reporter once per batch. In profiles of a warmed-up \
agent (15,000 connections first, then 30,000 measured) page faults were 7% of the agent's samples, \
against 23% in the profile of the old build above (a fresh agent, 40,000 connections: not the same \
run, and the old build was not profiled warmed up, so this is no measured before/after); what remains is aggregate 42% (making the records 15%, their ids 5%, grouping and \
hashing 10%), output 28% (SHA-256 10%, encoding 10%, the write syscalls 8%) and the drain 18% (the \
kernel's batch read and delete 14%). The table now splits the net CPU into user space and system \
time: the system part (the kernel's batch reads, the file writes, page faults) is the part no \
user-space change reaches. Timing that change was beyond this machine that hour: the same binary \
gave 6.1 to 10.0 µs per record from round to round (`--agent before=... --agent after=...`, \
rounds interleaved), and the two builds' ranges overlapped, so no figure is claimed for it beyond \
the profile. The table above is from that hour too: the agent of 82ebb9a (before that change) measured 4.6 \
to 5.0 µs per record at 08:40 and 7.6 to 11.9 µs at 10:23 in the same comparison, nearly all of \
the difference in system time.
";

/// `cargo xtask bench-cpu`: builds the release binaries and prints the section's table; with
/// `agents` (label, agent binary), compares those binaries instead ([`compare`]).
pub fn alone(
    rounds: usize,
    perf: Option<PathBuf>,
    agents: Vec<(String, PathBuf)>,
    write_doc: bool,
) -> anyhow::Result<()> {
    let bin = crate::bench::lab_binaries("CPU", &[])?;
    if agents.is_empty() {
        let table = run(&bin.join("fa-traffic"), rounds, perf.as_deref())?;
        if write_doc {
            crate::bench::splice_doc(&section(&table))?;
        }
    } else {
        compare(&bin.join("fa-traffic"), rounds, &agents)?;
    }
    Ok(())
}

/// The same measurement for several agent binaries, their rounds interleaved (round 1 of each,
/// then round 2, ...) so that a change of the machine's load hits them alike: a table of each
/// one's net CPU per record in every round and the best.
pub fn compare(traffic: &Path, rounds: usize, agents: &[(String, PathBuf)]) -> anyhow::Result<String> {
    let mut results: Vec<Vec<Round>> = agents.iter().map(|_| Vec::new()).collect();
    for n in 1..=rounds.max(1) {
        for ((label, agent), rs) in agents.iter().zip(&mut results) {
            // SAFETY: single-threaded (no lab is alive between rounds); the lab reads it when it
            // starts the agent.
            unsafe { std::env::set_var("FLOWAUDIT_BIN_FLOWAUDIT", agent) };
            let r = round(traffic, None)?;
            println!(
                "cpu round {n}, {label}: {:.0} records, busy {:.0} ms, idle {:.0} ms per {IDLE_SECONDS} s, net {:.2} µs per record ({:.2} user)",
                r.records,
                r.busy * 1e3,
                r.idle * 1e3,
                r.net_per_record_us(),
                r.net_user_per_record_us()
            );
            rs.push(r);
        }
    }
    let mut table = format!(
        "| agent | net CPU per record, each round | best | of which user space | its busy CPU | idle CPU per {IDLE_SECONDS} s (that round) |\n|---|---|---:|---:|---:|---:|\n"
    );
    for ((label, _), rs) in agents.iter().zip(&results) {
        let each: Vec<String> = rs.iter().map(|r| format!("{:.2}", r.net_per_record_us())).collect();
        let best = rs.iter().min_by(|a, b| a.net_per_record_us().total_cmp(&b.net_per_record_us())).expect("a round");
        table.push_str(&format!(
            "| {label} | {} µs | {:.2} µs | {:.2} µs | {:.0} ms | {:.0} ms |\n",
            each.join(", "),
            best.net_per_record_us(),
            best.net_user_per_record_us(),
            best.busy * 1e3,
            best.idle * 1e3
        ));
    }
    println!("{table}");
    Ok(table)
}
