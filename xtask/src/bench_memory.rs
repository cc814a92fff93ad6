//! `cargo xtask bench`, memory: the agent's RSS at 100,000 live flows next to the idle agent's,
//! the kernel maps' memory, and the bounds that follow for 10k / 100k / 1M flows.
//!
//! Takes: the release binaries (`FLOWAUDIT_BIN_*` set by the caller), root. Gives: a markdown
//! section for `docs/performance.md`. Must never: assert on a figure, or leave the lab behind
//! (the `Lab` drop removes it, also on error).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flowaudit_lab::{Agent, BpfMap, Lab};

/// Live flows of the measurement.
const FLOWS: u64 = 100_000;
/// The table of the measurement: every flow of the interval fits (no ring buffer).
const TABLE: u64 = 131_072;
/// Bytes per bucket of the aggregate stage's connection map: `(ConnKey, Conn)` (176) plus the
/// control byte of the hash table.
const CONN_BUCKET: u64 = 177;
/// Bytes per observation in a batch (`model::Observation`).
const OBSERVATION: u64 = 96;
/// Defaults of `docs/config.md`.
const DEFAULT_RING: u64 = 1 << 20;
const DEFAULT_MAX_CONNECTIONS: u64 = 262_144;

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits (at most 120 s) until `done` holds for a `/metrics` scrape.
fn wait_for(agent: &Agent, what: &str, done: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = agent.get("/metrics")?;
        if done(&body) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("memory bench: {what} did not happen within 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Buckets a Rust (hashbrown) map allocates for `n` entries.
fn buckets(n: u64) -> u64 {
    (n * 8).div_ceil(7).next_power_of_two()
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / f64::from(1 << 20))
}

/// One measured state of the agent.
struct Sample {
    rss: u64,
    hwm: u64,
    maps: Vec<BpfMap>,
}

fn sample(agent: &Agent) -> anyhow::Result<Sample> {
    Ok(Sample { rss: agent.status_bytes("VmRSS")?, hwm: agent.status_bytes("VmHWM")?, maps: agent.bpf_maps()? })
}

/// `cargo xtask bench-memory`: builds the release binaries and prints the section (with
/// `write_doc`, also puts it into `docs/performance.md`).
pub fn alone(write_doc: bool) -> anyhow::Result<()> {
    crate::bench::lab_binaries("memory", &[])?;
    let section = run()?;
    println!("{section}");
    if write_doc {
        crate::bench::splice_doc(&section)?;
    }
    Ok(())
}

/// Runs the measurement and returns the section (heading included).
pub fn run() -> anyhow::Result<String> {
    let mut lab = Lab::new(2)?;
    let dir = crate::root().join("target").join("bench-memory");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("flowaudit.yaml");
    std::fs::write(&config, format!("flow_table_entries: {TABLE}\n"))?;
    let (p1, p2) = (lab.pod("p1").clone(), lab.pod("p2").clone());
    // Dropped in the node once past the hooks: p2 answers nothing (no port-unreachable flows).
    lab.nft_drop(&[format!("ip saddr {} ip daddr {} udp dport 10000-59999", p1.ipv4, p2.ipv4)])?;
    let flows = dir.join("flows");
    let agent = Agent::start(&mut lab, &flows, &["--config", config.to_str().context("utf-8 path")?])?;
    let drains = "flowaudit_drain_duration_seconds_count";
    wait_for(&agent, "two drains", |b| metric(b, drains) >= 2.0)?;
    let idle = sample(&agent)?;
    let mut flood = lab.pod_command("p1", flowaudit_lab::workspace_bin("fa-traffic"))?;
    let per_sport = (FLOWS / 2).to_string();
    flood.args(["udp-flood", &p2.ipv4.to_string(), "10000", &per_sport, "41000", "2"]);
    lab.output(flood)?;
    // Live: every flow drained, written, and remembered by the aggregate stage.
    wait_for(&agent, "100,000 connections remembered", |b| {
        metric(b, "flowaudit_connections_tracked") >= FLOWS as f64
            && metric(b, "flowaudit_drain_lag_seconds_count") == metric(b, drains)
    })?;
    let live = sample(&agent)?;
    let (_, body) = agent.get("/metrics")?;
    let lost = metric(&body, r#"flowaudit_kernel_events_total{counter="lost_packets",hook="cgroup_egress"}"#);
    agent.stop(&mut lab).context("agent exit")?;
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);

    let table_memlock = |s: &Sample| s.maps.iter().filter(|m| m.map_type == 1).map(|m| m.memlock).max().unwrap_or(0);
    let per_entry = table_memlock(&live) as f64 / TABLE as f64;
    let other_maps: u64 = live.maps.iter().filter(|m| m.map_type != 1).map(|m| m.memlock).sum();
    let per_conn = (live.rss as f64 - idle.rss as f64) / FLOWS as f64;
    let per_flow_peak = (live.hwm as f64 - idle.rss as f64) / FLOWS as f64;
    let mut out = format!(
        "## Memory\n\n\
         `cargo xtask bench`: the agent (release build, cgroup hook, level-0 records, \
         `flow_table_entries: {TABLE}`) in the lab; its `VmRSS` and `VmHWM` (`/proc/PID/status`) \
         once idle (two drains after the start: the baseline) and once {FLOWS} new UDP flows (one \
         packet each, from `fa-traffic udp-flood`) are drained, written and remembered, in one \
         run; kernel memory is the `memlock` of each map the agent holds (`/proc/PID/fdinfo`), \
         what the kernel charges to the agent's memory cgroup (kernel 5.11+).\n\n"
    );
    out.push_str(&format!(
        "| state | VmRSS | VmHWM (peak) | kernel maps (memlock) |\n|---|---:|---:|---:|\n\
         | idle agent (baseline) | {} | {} | {} |\n\
         | {FLOWS} live flows | {} | {} | {} |\n\n",
        mib(idle.rss as f64),
        mib(idle.hwm as f64),
        mib(idle.maps.iter().map(|m| m.memlock).sum::<u64>() as f64),
        mib(live.rss as f64),
        mib(live.hwm as f64),
        mib(live.maps.iter().map(|m| m.memlock).sum::<u64>() as f64),
    ));
    out.push_str("Kernel maps of the agent at 100k live flows (`/proc/PID/fdinfo`):\n\n| map type | max_entries | memlock |\n|---|---:|---:|\n");
    for m in &live.maps {
        let kind = match m.map_type {
            1 if m.max_entries == TABLE => "hash (a flow table)",
            1 => "hash (the counting floor of the per-packet bench, unused here)",
            6 => "per-CPU array (counters)",
            12 => "array of maps (table slot)",
            27 => "ring buffer",
            _ => "other",
        };
        out.push_str(&format!("| {kind} | {} | {} B |\n", m.max_entries, m.memlock));
    }
    out.push_str(&format!(
        "\nMeasured: {per_entry:.0} B of kernel memory per flow-table entry; {per_conn:.0} B of resident memory \
         per live flow once its batch is written (its connection remembered by the aggregate stage); \
         {per_flow_peak:.0} B per flow at the peak, while the batch holding it goes through the pipeline. \
         Packets lost during the measurement: {lost}.\n\n"
    ));
    // Bounds: E = flow_table_entries, R = ring_buffer_size, C = max_connections.
    out.push_str(BOUNDS);
    let per_flow_batch = per_flow_peak.max(0.0);
    out.push_str(
        "| flows per interval | flow_table_entries (E) | max_connections (C) | kernel: 2 x E x entry + R | connections: buckets(C) x 177 B | batches: 2E x peak per flow + 2 x 2E x 96 B | bound |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for flows in [10_000u64, 100_000, 1_000_000] {
        let e = flows.next_power_of_two().max(65_536);
        let c = flows.max(DEFAULT_MAX_CONNECTIONS);
        let kernel = 2.0 * e as f64 * per_entry + DEFAULT_RING as f64 + other_maps as f64;
        let conns = (buckets(c) * CONN_BUCKET) as f64;
        let batch = 2.0 * e as f64 * per_flow_batch + (2 * 2 * e * OBSERVATION) as f64;
        let bound = idle.rss as f64 + kernel + conns + batch;
        out.push_str(&format!(
            "| {flows} | {e} | {c} | {} | {} | {} | {} |\n",
            mib(kernel),
            mib(conns),
            mib(batch),
            mib(bound)
        ));
    }
    Ok(out)
}

/// The prose between the measurement and the bounds table.
const BOUNDS: &str = concat!(
    "What bounds memory, with E = `flow_table_entries`, R = `ring_buffer_size`, C = ",
    "`max_connections` (`docs/config.md`):\n\n",
    "- kernel: two preallocated flow tables (2 x E x the measured bytes per entry: the installed ",
    "one and the one the last drain emptied, installed by the next), ",
    "the ring buffer (R) and a few small maps;\n",
    "- a batch: the table (at most E flows) plus the flows read from the ring buffer (at most E: ",
    "reaching E ends the interval early, `flowaudit_drains_total{reason=\"pending_full\"}`), so at ",
    "most 2E flows; one batch goes through the pipeline (records, identity, verdicts, encoding: the ",
    "measured peak per flow) while one waits and capture builds the next (96 B per observation ",
    "each); while capture waits, the ring buffer is not read and the kernel counts what it cannot ",
    "hold as lost; aggregate keeps the records' and its own buffers for the next batch (inside ",
    "this figure: the next batch reuses them instead of allocating its own), and gives them back ",
    "once batches have been far smaller for a few dozen intervals;\n",
    "- remembered connections: at most C (the hash map's buckets, a power of two of at least 8C/7, ",
    "of 177 B each); past C a connection is written but not remembered ",
    "(`flowaudit_connections_untracked_total`);\n",
    "- not from flows: the cluster state (pods, services, policies), the attribution cache (200,000 ",
    "verdicts at most) and each network exporter's intake queue, which holds up to `queue_capacity` ",
    "flushes' encoded records before it drops (and counts) new ones; the spool is on disk ",
    "(`spool_max_size`).\n\n",
    "Bound = idle RSS + kernel + connections + batches, with the figures measured above; the default ",
    "`max_connections` (262,144) is kept where it is larger than the flows:\n\n",
);
