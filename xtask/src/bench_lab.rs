//! `cargo xtask bench`, rates between two lab pods: TCP throughput (the veths' offloads off, then
//! on) and the UDP 64-byte packet rate (iperf3), and the short-connection rate (`fa-traffic
//! tcp-churn`), for each configuration (no programs; flowaudit's empty programs; the agent; the
//! cgroup hook only, then with TC on both veths). Each round runs every configuration back to
//! back, in reverse order every other round; a configuration's figure is the median over the
//! rounds of its rate divided by the no-programs rate of the same round (paired ratios), next to
//! the spread of those ratios and an interval of their median. Extra TCP runs with the kernel's
//! BPF run-time statistics on say how much of the core the programs took; `--perf DIR` records
//! the first round's TCP runs. `cargo xtask bench-lab` runs only this part.
//!
//! Takes: the release binaries (`FLOWAUDIT_BIN_*` set by the caller, `empty_hooks` among the
//! examples of the same directory), root, bpftool (and perf for `--perf`). Gives: the three
//! sections of `docs/performance.md` and one line per round on stdout. Must never: assert on a
//! figure, or leave a lab, an agent, attached empty programs, the statistics or the veths'
//! offloads on behind (the `Lab` drop removes the lab and the processes it started, the
//! `EmptyHooks` drop detaches, the statistics go with their descriptor, also on error).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use flowaudit_lab::{Agent, Lab};
use serde_json::Value;

use crate::bench::{CHURN_THREADS, churn, churn_setup, loadavg, spills, tempdir, tree_cpu, utc};
use crate::bench_cpu::Recorder;

/// Rounds of `cargo xtask bench` (and the default of `bench-lab --rounds`).
pub const ROUNDS: usize = 8;
/// Seconds of each measurement (iperf3 TCP, iperf3 UDP, short connections) of a configuration in
/// a round.
const SECONDS: &str = "3";
/// Wait after a configuration is attached (or, for no programs, after the last one was removed)
/// before its measurements: the agent's start (first drain, first flush) is not part of them.
const SETTLE: Duration = Duration::from_secs(1);
/// The least coverage asked of the interval of a median ratio (fewer rounds give less).
const COVERAGE: f64 = 0.90;

/// One configuration of the lab measurements.
#[derive(Clone, Copy)]
enum Setup {
    Nothing,
    Empty { tc: bool },
    Agent { tc: bool },
}

/// The configurations, the baseline first: label, programs per packet, setup.
const SETUPS: [(&str, u32, Setup); 5] = [
    ("no programs", 0, Setup::Nothing),
    ("empty programs on the cgroup", 2, Setup::Empty { tc: false }),
    ("agent, cgroup hook only (the default)", 2, Setup::Agent { tc: false }),
    ("empty programs on the cgroup + TC on both veths", 4, Setup::Empty { tc: true }),
    ("agent, cgroup hook + TC on both veths", 4, Setup::Agent { tc: true }),
];

/// iperf3's `-A` by default: client and server on CPU 0 (see [`PINNING`]).
pub const IPERF_AFFINITY: &str = "0,0";

/// How to run the lab rates.
pub struct Options {
    pub rounds: usize,
    /// iperf3 `-A N,M`: the client on CPU N, the server on CPU M; `None`: where the scheduler
    /// puts them.
    pub iperf_affinity: Option<String>,
    /// A directory: the first round's two TCP runs of each configuration (offloads off, then on;
    /// not the runs with statistics) are recorded there with `perf record -g` (on iperf3's CPU
    /// when pinned to one, else on all), one file each.
    pub perf: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options { rounds: ROUNDS, iperf_affinity: Some(IPERF_AFFINITY.to_owned()), perf: None }
    }
}

/// The tables (TCP with offloads off and on, the programs' run time, UDP, short connections)
/// and when they were measured.
pub struct Tables {
    pub tcp: String,
    /// TCP with the veths' offloads on.
    pub tcp_offloads: String,
    /// Where the TCP time goes: the programs' run-time statistics.
    pub program_time: String,
    pub udp: String,
    pub conns: String,
    /// Date, time and the machine's load around the measurement.
    pub when: String,
    rounds: usize,
    iperf_affinity: Option<String>,
}

/// One configuration's rates, one per round in round order.
struct Runs {
    label: &'static str,
    programs: u32,
    setup: Setup,
    tcp: Vec<f64>,
    /// TCP with the veths' offloads on (large segments).
    tcp_offloads: Vec<f64>,
    /// What the programs cost during a TCP run with the kernel's run-time statistics on.
    program_time: Vec<ProgramTime>,
    /// The same with the veths' offloads on.
    program_time_offloaded: Vec<ProgramTime>,
    /// The agent's CPU time (user + system) per second of the plain TCP run.
    agent_cpu: Vec<f64>,
    udp_sent: Vec<f64>,
    udp_delivered: Vec<f64>,
    conns: Vec<f64>,
    /// Packets of the churn runs that went through the ring buffer, and that were lost.
    spilled: (u64, u64),
}

/// The median of `v` (the mean of the two middle values when their number is even).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// For `n` independent rounds: `j` such that the `j`-th smallest and `j`-th largest of the
/// rounds' values (0-based) hold the true median with at least [`COVERAGE`], the widest cut that
/// does (the sign-test interval: the median is below the `j`-th smallest when at most `j` of `n`
/// fair coin flips come up heads), and that coverage. With too few rounds for [`COVERAGE`],
/// `j` is 0 (min–max) and the coverage is what min–max gives.
fn median_interval(n: usize) -> (usize, f64) {
    let coverage = |j: usize| {
        // P(Binomial(n, 1/2) <= j), the chance that the median lies below the interval.
        let mut c = 1.0f64;
        let mut tail = 0.0;
        for i in 0..=j {
            if i > 0 {
                c = c * (n + 1 - i) as f64 / i as f64;
            }
            tail += c;
        }
        1.0 - 2.0 * tail / 2f64.powi(n as i32)
    };
    let mut j = 0;
    while 2 * (j + 1) < n && coverage(j + 1) >= COVERAGE {
        j += 1;
    }
    (j, coverage(j).max(0.0))
}

/// The rates of a configuration divided by the baseline's rates of the same rounds.
struct Paired(Vec<f64>);

impl Paired {
    fn new(values: &[f64], base: &[f64]) -> Paired {
        Paired(values.iter().zip(base).map(|(v, b)| v / b).collect())
    }

    /// The interval of the median ratio ([`median_interval`]).
    fn interval(&self) -> (f64, f64) {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        let (j, _) = median_interval(sorted.len());
        (sorted[j], sorted[sorted.len() - 1 - j])
    }

    /// `| median | min–max | interval | each round |` cells (with the leading `|` of the first).
    fn cells(&self) -> String {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (low, high) = self.interval();
        let each: Vec<String> = self.0.iter().map(|r| format!("{r:.3}")).collect();
        format!("| {:.3} | {min:.3}–{max:.3} | {low:.3}–{high:.3} | {} |", median(&self.0), each.join(", "))
    }

    /// Whether the rounds show the ratio at or above `target`: met when the whole interval is,
    /// missed when the whole interval is below it, else not shown either way.
    fn against(&self, target: f64) -> &'static str {
        match self.interval() {
            (low, _) if low >= target => "met",
            (_, high) if high < target => "missed",
            _ => "not shown either way (inside the interval)",
        }
    }
}

/// The baseline's cells where the others have [`Paired::cells`].
const BASELINE_CELLS: &str = "| 1.000 | - | - | - |";

/// The column headings of [`Paired::cells`] for `rounds` rounds.
fn ratio_headings(rounds: usize) -> String {
    let (_, coverage) = median_interval(rounds);
    format!(
        "ratio to no programs (median of the rounds' ratios) | the rounds' ratios, min–max | \
         {:.0}% interval of the median ratio | each round's ratio, in the order run",
        (coverage * 100.0).floor()
    )
}

fn iperf(lab: &Lab, server: &str, affinity: Option<&str>, udp: bool) -> anyhow::Result<Value> {
    let mut cmd = lab.pod_command("p1", "iperf3")?;
    cmd.args(["-c", server, "-t", SECONDS, "-J"]);
    if udp {
        cmd.args(["-u", "-l", "64", "-b", "0"]);
    }
    if let Some(a) = affinity {
        cmd.args(["-A", a]);
    }
    let out = lab.output(cmd)?;
    serde_json::from_str(&out).context("iperf3 -J output")
}

/// TCP throughput, bits per second, and the seconds the sender sent for.
fn iperf_tcp(lab: &Lab, server: &str, affinity: Option<&str>) -> anyhow::Result<(f64, f64)> {
    let json = iperf(lab, server, affinity, false)?;
    let end = &json["end"];
    Ok((
        end["sum_received"]["bits_per_second"].as_f64().context("iperf3 result")?,
        end["sum_sent"]["seconds"].as_f64().context("iperf3 seconds")?,
    ))
}

/// The kernel's per-program run-time statistics (`BPF_ENABLE_STATS`), on while this lives: the
/// kernel turns them off when the last such descriptor closes, also if the bench is killed.
struct RunTimeStats(#[allow(dead_code, reason = "held for its effect")] std::os::fd::OwnedFd);

impl RunTimeStats {
    fn enable() -> anyhow::Result<RunTimeStats> {
        use std::os::fd::FromRawFd as _;
        /// `BPF_ENABLE_STATS` and its only kind, `BPF_STATS_RUN_TIME`.
        const BPF_ENABLE_STATS: libc::c_long = 32;
        let attr = [0u32; 4];
        // SAFETY: a `bpf_attr` of 16 zeroed bytes is a valid `enable_stats` with type 0.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), 16usize) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
        }
        // SAFETY: a new descriptor the kernel just gave us, owned from here on.
        Ok(RunTimeStats(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// Run count and run time (ns) of every loaded program named `flowaudit_*`, by program id.
fn flowaudit_programs() -> anyhow::Result<HashMap<u64, (u64, u64)>> {
    let out = std::process::Command::new("bpftool").args(["-j", "prog", "show"]).output().context("bpftool")?;
    if !out.status.success() {
        bail!("bpftool prog show: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).context("bpftool -j prog show output")?;
    Ok(progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("flowaudit_")))
        .filter_map(|p| {
            let field = |f: &str| p[f].as_u64().unwrap_or(0);
            Some((p["id"].as_u64()?, (field("run_cnt"), field("run_time_ns"))))
        })
        .collect())
}

/// What the attached programs cost during one TCP run.
#[derive(Clone, Copy)]
struct ProgramTime {
    /// Program runs per second (all hooks).
    runs_per_sec: f64,
    /// Nanoseconds per run, the statistics' own clock reads included.
    ns_per_run: f64,
    /// Time in the programs per second of the run: the share of a core they took.
    share: f64,
}

/// A TCP run with the kernel's run-time statistics on, and what the `flowaudit_*` programs
/// (the agent's or the empty ones, whichever are loaded) did in it. No programs: zeros.
fn program_time(lab: &Lab, server: &str, affinity: Option<&str>) -> anyhow::Result<ProgramTime> {
    let _stats = RunTimeStats::enable()?;
    let before = flowaudit_programs()?;
    let (_, secs) = iperf_tcp(lab, server, affinity)?;
    let after = flowaudit_programs()?;
    let (mut runs, mut ns) = (0u64, 0u64);
    for (id, (cnt, time)) in after {
        let (cnt0, time0) = before.get(&id).copied().unwrap_or((cnt, time));
        runs += cnt.saturating_sub(cnt0);
        ns += time.saturating_sub(time0);
    }
    Ok(ProgramTime {
        runs_per_sec: runs as f64 / secs,
        ns_per_run: if runs == 0 { 0.0 } else { ns as f64 / runs as f64 },
        share: ns as f64 / 1e9 / secs,
    })
}

/// UDP with 64-byte payloads as fast as the sender can: (sent, delivered) packets per second.
fn iperf_udp(lab: &Lab, server: &str, affinity: Option<&str>) -> anyhow::Result<(f64, f64)> {
    let json = iperf(lab, server, affinity, true)?;
    let sum = &json["end"]["sum"];
    let (packets, lost, secs) = (
        sum["packets"].as_f64().context("iperf3 packets")?,
        sum["lost_packets"].as_f64().context("iperf3 lost_packets")?,
        sum["seconds"].as_f64().context("iperf3 seconds")?,
    );
    Ok((packets / secs, (packets - lost) / secs))
}

/// The empty programs attached in the lab's node namespace while this lives.
struct EmptyHooks(std::process::Child);

impl EmptyHooks {
    fn attach(lab: &Lab, bin: &Path, ifaces: &[String]) -> anyhow::Result<EmptyHooks> {
        use std::io::BufRead as _;
        let mut cmd = lab.node_command(bin)?;
        cmd.arg(&lab.cgroup).args(ifaces).stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = EmptyHooks(cmd.spawn().context("starting empty_hooks")?);
        let mut line = String::new();
        std::io::BufReader::new(child.0.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        if line.trim() != "attached" {
            bail!("empty_hooks did not attach");
        }
        Ok(child)
    }
}

impl Drop for EmptyHooks {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// TCP throughput, UDP packet rate and short-connection rate per configuration, in rounds; `bin`
/// holds the release binaries (`fa-traffic`, `examples/empty_hooks`).
pub fn run(bin: &Path, opts: &Options) -> anyhow::Result<Tables> {
    let rounds = opts.rounds.max(1);
    let affinity = opts.iperf_affinity.as_deref();
    // Both ends of iperf3 on one CPU: record only that one.
    let perf_cpu = affinity.and_then(|a| a.split_once(',')).filter(|(c, s)| c == s).and_then(|(c, _)| c.parse().ok());
    if let Some(dir) = &opts.perf {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, (label, _, _)) in SETUPS.iter().enumerate() {
            println!("perf: {label} -> {0}/{i}.data, with offloads on {0}/{i}-offloads.data", dir.display());
        }
    }
    let load_start = loadavg();
    let started_at = utc("+%Y-%m-%d %H:%M UTC");
    let started = Instant::now();
    let traffic = bin.join("fa-traffic");
    let mut lab = Lab::new(2)?;
    let server = lab.pod("p2").ipv4.to_string();
    let mut srv = lab.pod_command("p2", "iperf3")?;
    srv.args(["-s", "-B", &server]);
    lab.spawn(srv)?;
    churn_setup(&mut lab, &traffic, &server)?;
    std::thread::sleep(Duration::from_millis(500));
    let logs = tempdir("lab")?;
    let glob = format!("fa{}p*", lab.id);
    let veths: Vec<String> = lab.pods.iter().map(|p| p.node_veth.clone()).collect();
    let empty_hooks = bin.join("examples").join("empty_hooks");
    let mut results: Vec<Runs> = SETUPS
        .iter()
        .map(|&(label, programs, setup)| Runs {
            label,
            programs,
            setup,
            tcp: Vec::new(),
            tcp_offloads: Vec::new(),
            program_time: Vec::new(),
            program_time_offloaded: Vec::new(),
            agent_cpu: Vec::new(),
            udp_sent: Vec::new(),
            udp_delivered: Vec::new(),
            conns: Vec::new(),
            spilled: (0, 0),
        })
        .collect();
    for round in 0..rounds {
        let round_start = Instant::now();
        // Every other round in reverse: no configuration always runs first, or right after
        // the same other one.
        let order: Vec<usize> =
            if round % 2 == 0 { (0..results.len()).collect() } else { (0..results.len()).rev().collect() };
        let mut line = String::new();
        for &i in &order {
            let r = &mut results[i];
            let mut empty = None;
            let mut agent = None;
            match r.setup {
                Setup::Nothing => {}
                Setup::Empty { tc } => {
                    let ifaces = if tc { veths.clone() } else { Vec::new() };
                    empty = Some(EmptyHooks::attach(&lab, &empty_hooks, &ifaces)?);
                }
                Setup::Agent { tc } => {
                    let mut args = vec!["--flush-interval", "1s"];
                    if tc {
                        args.extend(["--interfaces", &glob]);
                    }
                    agent = Some(Agent::start(&mut lab, &logs, &args)?);
                }
            }
            std::thread::sleep(SETTLE);
            let record = |name: String| match &opts.perf {
                Some(dir) if round == 0 => Recorder::cpu(perf_cpu, &dir.join(name)).map(Some),
                _ => Ok(None),
            };
            let recorder = record(format!("{i}.data"))?;
            let cpu_before = agent.as_ref().map(|a| tree_cpu(a.pid));
            let (tcp, tcp_secs) = iperf_tcp(&lab, &server, affinity)?;
            if let Some(recorder) = recorder {
                recorder.stop()?;
            }
            if let (Some(before), Some(a)) = (cpu_before, agent.as_ref()) {
                r.agent_cpu.push((tree_cpu(a.pid) - before) / tcp_secs);
            }
            r.program_time.push(program_time(&lab, &server, affinity)?);
            lab.set_offloads(true)?;
            let offloaded = record(format!("{i}-offloads.data")).and_then(|recorder| {
                let (tcp, _) = iperf_tcp(&lab, &server, affinity)?;
                if let Some(recorder) = recorder {
                    recorder.stop()?;
                }
                Ok((tcp, program_time(&lab, &server, affinity)?))
            });
            lab.set_offloads(false)?;
            let (tcp_offloaded, time_offloaded) = offloaded?;
            r.tcp_offloads.push(tcp_offloaded);
            r.program_time_offloaded.push(time_offloaded);
            let (sent, delivered) = iperf_udp(&lab, &server, affinity)?;
            let (n, secs) = churn(&lab, &traffic, &server, SECONDS, None)?;
            if let Some(agent) = agent {
                let (spilled, lost) = spills(&agent)?;
                r.spilled.0 += spilled;
                r.spilled.1 += lost;
                agent.stop(&mut lab).context("agent exit")?;
            }
            drop(empty);
            let programs = r.program_time[round];
            line.push_str(&format!(
                " {}: {:.2} Gbit/s ({:.2} offloaded; programs {:.0}k runs/s, {:.0} ns each, {:.1}% of a core), \
                 {:.0}k udp pkt/s, {:.0} conn/s;",
                r.label,
                tcp / 1e9,
                r.tcp_offloads[round] / 1e9,
                programs.runs_per_sec / 1e3,
                programs.ns_per_run,
                programs.share * 100.0,
                delivered / 1e3,
                n as f64 / secs
            ));
            r.tcp.push(tcp);
            r.udp_sent.push(sent);
            r.udp_delivered.push(delivered);
            r.conns.push(n as f64 / secs);
        }
        println!(
            "round {} ({}, {:.0} s):{line}",
            round + 1,
            if round % 2 == 0 { "in order" } else { "reversed" },
            round_start.elapsed().as_secs_f64()
        );
        let base = &results[0];
        let ratios: Vec<String> = results[1..]
            .iter()
            .map(|r| {
                let last = |v: &[f64], b: &[f64]| v[round] / b[round];
                format!(
                    " {}: tcp {:.3} (offloaded {:.3}), udp {:.3}, conn/s {:.3};",
                    r.label,
                    last(&r.tcp, &base.tcp),
                    last(&r.tcp_offloads, &base.tcp_offloads),
                    last(&r.udp_delivered, &base.udp_delivered),
                    last(&r.conns, &base.conns)
                )
            })
            .collect();
        println!("round {} ratios to no programs:{}", round + 1, ratios.concat());
    }
    drop(lab);
    let tables = tables(&results, rounds, opts, started_at, load_start);
    println!(
        "{}\n{}\n{}\n{}\n{}\nmeasured {}; {rounds} rounds in {:.0} s",
        tables.tcp,
        tables.tcp_offloads,
        tables.program_time,
        tables.udp,
        tables.conns,
        tables.when,
        started.elapsed().as_secs_f64()
    );
    Ok(tables)
}

/// Targets of issue 7 for the agent: TCP throughput and short connections, ratios to no programs.
const TCP_TARGET: f64 = 0.98;
const CONNS_TARGET: f64 = 0.95;

/// The three tables of `results` (the baseline first).
fn tables(results: &[Runs], rounds: usize, opts: &Options, started_at: String, load_start: String) -> Tables {
    let base = &results[0];
    let ratios = ratio_headings(rounds);
    let mut tcp = format!(
        "| configuration | programs per packet | median of {rounds} × {SECONDS} s | {ratios} | the agent against the target (at least {TCP_TARGET}) |\n|---|---:|---:|---:|---:|---:|---|---|\n"
    );
    let mut tcp_offloads = tcp.clone();
    let mut program_time = "| configuration | offloads off: program runs per second | ns per run (statistics' clock reads included) | time in the programs, % of a core | TCP throughput lost to no programs (1 − median ratio, first table) | the agent process during TCP, % of a core | offloads on: program runs per second | time in the programs, % of a core | TCP throughput lost (second table) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n".to_owned();
    let mut udp = format!(
        "| configuration | programs per packet | sent (median of {rounds} × {SECONDS} s) | delivered | delivered: {ratios} |\n|---|---:|---:|---:|---:|---:|---:|---|\n"
    );
    let mut conns = format!(
        "| configuration | programs per packet | connections/s (median of {rounds} × {SECONDS} s) | {ratios} | the agent against the target (at least {CONNS_TARGET}) | packets through the ring buffer / lost (all rounds) |\n|---|---:|---:|---:|---:|---:|---|---|---:|\n"
    );
    for (i, r) in results.iter().enumerate() {
        let agent = matches!(r.setup, Setup::Agent { .. });
        let cells = |values: &[f64], base: &[f64]| {
            if i == 0 { BASELINE_CELLS.to_owned() } else { Paired::new(values, base).cells() }
        };
        // The agent's verdict on a target; `-` for the others.
        let against = |values: &[f64], base: &[f64], target: f64| {
            if agent { Paired::new(values, base).against(target) } else { "-" }
        };
        // One TCP row: offloads off (`tcp`) or on (`tcp_offloads`).
        let tcp_row = |values: &[f64], base: &[f64]| {
            format!(
                "| {} | {} | {:.2} Gbit/s {} {} |\n",
                r.label,
                r.programs,
                median(values) / 1e9,
                cells(values, base),
                against(values, base, TCP_TARGET)
            )
        };
        tcp.push_str(&tcp_row(&r.tcp, &base.tcp));
        tcp_offloads.push_str(&tcp_row(&r.tcp_offloads, &base.tcp_offloads));
        let of = |times: &[ProgramTime], f: fn(&ProgramTime) -> f64| median(&times.iter().map(f).collect::<Vec<_>>());
        let lost = |values: &[f64], base: &[f64]| {
            if i == 0 {
                "-".to_owned()
            } else {
                format!("{:.1}%", (1.0 - median(&Paired::new(values, base).0)) * 100.0)
            }
        };
        let (off, on) = (&r.program_time, &r.program_time_offloaded);
        program_time.push_str(&format!(
            "| {} | {:.0}k | {:.0} | {:.1}% | {} | {} | {:.1}k | {:.2}% | {} |\n",
            r.label,
            of(off, |p| p.runs_per_sec) / 1e3,
            of(off, |p| p.ns_per_run),
            of(off, |p| p.share) * 100.0,
            lost(&r.tcp, &base.tcp),
            if agent { format!("{:.1}%", median(&r.agent_cpu) * 100.0) } else { "-".to_owned() },
            of(on, |p| p.runs_per_sec) / 1e3,
            of(on, |p| p.share) * 100.0,
            lost(&r.tcp_offloads, &base.tcp_offloads),
        ));
        udp.push_str(&format!(
            "| {} | {} | {:.0}k pkt/s | {:.0}k pkt/s {}\n",
            r.label,
            r.programs,
            median(&r.udp_sent) / 1e3,
            median(&r.udp_delivered) / 1e3,
            cells(&r.udp_delivered, &base.udp_delivered)
        ));
        let spilled = if agent { format!("{} / {}", r.spilled.0, r.spilled.1) } else { "-".into() };
        conns.push_str(&format!(
            "| {} | {} | {:.0} {} {} | {spilled} |\n",
            r.label,
            r.programs,
            median(&r.conns),
            cells(&r.conns, &base.conns),
            against(&r.conns, &base.conns, CONNS_TARGET)
        ));
    }
    Tables {
        tcp,
        tcp_offloads,
        program_time,
        udp,
        conns,
        when: format!("on {started_at}, load average {load_start} at the start and {} at the end", loadavg()),
        rounds,
        iperf_affinity: opts.iperf_affinity.clone(),
    }
}

/// The three sections of `docs/performance.md` (TCP, UDP, short connections), headings included.
pub fn sections(t: &Tables) -> [String; 3] {
    let rounds = t.rounds;
    let coverage = median_interval(rounds).1;
    let pinned = match t.iperf_affinity.as_deref() {
        Some(IPERF_AFFINITY) => format!(" {PINNING}"),
        Some(a) => format!(" iperf3 runs with `-A {a}` (its client on the first CPU, its server on the second)."),
        None => " iperf3's client and server run where the scheduler puts them (no `-A`).".to_owned(),
    };
    let tcp = format!(
        "## TCP throughput between two lab pods\n\n\
         `cargo xtask bench` (alone: `cargo xtask bench-lab`, which prints the three tables of \
         the lab rates; `--write-doc` puts them here): iperf3 from pod p1 to pod p2 of the lab \
         for {SECONDS} s (veth pairs through a node namespace) with the veths' offloads off \
         (TSO, GSO, GRO, checksums): the receiver's hooks see every wire packet as an skb of its \
         own, the worst case for per-packet cost. (The sender's TCP still hands its egress hook \
         segments of many packets, which software GSO cuts up after the hook: the program runs \
         per second below are about one per wire packet at these rates, not two.) Each of {rounds} rounds runs every \
         configuration back to back: no programs; flowaudit's empty programs attached where the \
         agent attaches (the cost of the hooks themselves); the agent on the pods' cgroup only \
         (the sender's egress and the receiver's ingress program run: two per packet); the same \
         two with TC on both veths through TCX (four per packet). Every other round runs them in \
         reverse order, so that no configuration always runs first or last after a change of the \
         machine's load. Each configuration is attached, left {settle} s, then measured (TCP, \
         UDP, short connections) and removed. The agent flushes every second here (the default \
         is 15 s), which is more work for it, not less.{pinned} Target (issue 7): with the agent \
         at least 98% of without.\n\n\
         How the ratios are computed: a configuration's ratio to no programs is the median over \
         the rounds of its rate divided by the no-programs rate of the same round. Both rates of \
         a round were measured within a minute of each other, so a slower drift of the machine's \
         speed (other work on the shared cores) cancels out of the round's ratio; what is left \
         shows as the spread of the rounds' ratios (min–max). The interval holds the median \
         ratio with a probability of at least {cov:.0}% whatever the distribution of the noise, \
         as long as the rounds are independent (the sign-test interval: order statistics of the \
         rounds' ratios; with {rounds} rounds, from the {nth}smallest to the {nth}largest). A \
         target counts as met or missed only when its interval lies on one side of it. Measured \
         {when}.\n\n{table}\n\
         ### With the veths' offloads on\n\n\
         In the same rounds, right after the run above, each configuration runs iperf3 again for \
         {SECONDS} s with the offloads of both veth pairs turned on (what a veth starts with, \
         and what a node's pod interfaces run with): TCP moves through the stack in segments of \
         many packets, so the programs run far fewer times per byte. The agent counts a segment \
         as the wire packets it carries (`gso_segs`). Same target.\n\n{offloads}\n\
         ### Where the time goes: the programs' run time\n\n\
         In the same rounds, one more TCP run of {SECONDS} s per configuration after each of the \
         two above (offloads off, then on) with the kernel's BPF run-time statistics on \
         (`BPF_ENABLE_STATS`, only for those runs): the number of program runs and the \
         nanoseconds the programs took, summed over every `flowaudit_*` program loaded, divided \
         by the run's seconds. Each statistic costs two clock reads per run, which the empty \
         programs' row shows (an empty program takes almost nothing). The loss columns repeat \
         the tables above for comparison; the agent process's CPU time (user + system) is from \
         the first table's TCP run. Medians over the rounds.\n\n{programs}\n{PROGRAM_TIME_READING}",
        settle = SETTLE.as_secs(),
        cov = (coverage * 100.0).floor(),
        nth = match median_interval(rounds).0 + 1 {
            1 => String::new(),
            2 => "2nd ".to_owned(),
            3 => "3rd ".to_owned(),
            k => format!("{k}th "),
        },
        when = t.when,
        table = t.tcp,
        offloads = t.tcp_offloads,
        programs = t.program_time,
    );
    let udp = format!(
        "## UDP small-packet rate between two lab pods\n\n\
         In the same rounds and configurations: `iperf3 -u -l 64 -b 0` from p1 to p2 for \
         {SECONDS} s (64-byte payloads, 92-byte IP packets, as fast as the sender can). Sent is \
         what the client wrote; delivered is what the server received (sent minus iperf3's lost \
         count); the ratios are those of delivered, paired by round as for TCP. {cores}\n\n{}",
        t.udp,
        cores = if t.iperf_affinity.is_some() {
            "The sender and the receiver run where iperf3's `-A` put them (above); what the \
             receiver cannot keep up with is lost."
        } else {
            "The sender and the receiver each take one of the two cores, so the agent's userspace \
             competes with them."
        }
    );
    let conns = format!(
        "## Short-connection rate between two lab pods\n\n\
         In the same rounds and configurations: `fa-traffic tcp-churn` in p1, {CHURN_THREADS} \
         threads each connecting to p2 and closing at once (the client closes first), for \
         {SECONDS} s; `fa-traffic tcp-accept` in p2 with {CHURN_THREADS} threads accepting, \
         reading to EOF and closing. p1 reuses TIME_WAIT ports (`net.ipv4.tcp_tw_reuse=1` in its \
         namespace). Every connection is a new flow: four new keys in the flow table (each \
         side's egress and ingress), with the default 65,536-entry table and 1 s flushes. The \
         ratios are paired by round as for TCP. Target (issue 7): with the agent at least 95% of \
         without.\n\n{}\n{CONNS_READING}",
        t.conns
    );
    [tcp, udp, conns]
}

/// Why iperf3 runs pinned (measured on 2026-11-27, same hour, the machine shared with other
/// builds and benchmarks).
const PINNING: &str = "iperf3's client and server both run on CPU 0 (`-A 0,0`): sender, \
receiver and the packets' softirq work share one core, so a program's per-packet cost comes \
straight out of the throughput (the worst case for it), while the agent's userspace and other \
work of the machine mostly run on the other core. Pinned so because it measured steadier: on a \
bare veth pair, 10 interleaved runs of 3 s each varied by 7% (coefficient of variation) pinned to \
one CPU and by 28% unpinned (4.7 to 12.1 Gbit/s), and with client and server on two CPUs (`-A \
0,1`) a run gave either about 5 or about 12 Gbit/s; in one 8-round run of this bench each way, \
within the same hour, single measurements of a configuration varied by 5–8% pinned to CPU 0 and \
9–18% unpinned for TCP, 1.5–4% and 5–50% for UDP, and the short-connection rate (not iperf3) by \
1% either way. Running the measured processes at `nice -n -20` (unpinned) did not make them \
steadier.";

/// What the program run-time table shows (the figures of the run of 2026-11-27 11:50 UTC).
const PROGRAM_TIME_READING: &str = "Reading it: with iperf3's client, server and the packets' \
softirq work on one core, that core is the bottleneck, so the share of it the programs take comes out of the throughput nearly one for \
one. That share is the steadier figure: the kernel measures it run by run, while a 3 s throughput \
moves with the machine's other work (its rounds spread by ±10%, see the tables above). In the run \
of 2026-11-27 11:50 UTC:
- Offloads off (the worst case): the agent's programs took 102 ns per run against 38 ns for the \
empty ones, 5.7% of the core against 2.3%, so they cost about 3.4 points of the core more than the \
hooks themselves. With two runs per wire packet, this case cannot reach 98% of the throughput \
without programs: with hot caches the counting floor alone (a hash lookup and an add) is 22–24 of \
the 38–45 ns flowaudit costs over an empty program (per-packet section), and the rest is the parse, \
the clock and the second add. A live profile of the same run (`cargo xtask bench-lab --rounds 1 --perf DIR`, taken before the \
`memset` fix of the per-packet section) put the programs and what they call at 5.6% of the core's \
samples: the program itself 2.6% (its hottest spots the entry and the two atomic adds), the key's \
jhash 1.2%, the bucket walk and key compare 0.9%, the `memset` subprogram 0.7%.
- Offloads on: TCP hands the hooks segments of many packets, and the runs fall from about 570,000 \
to 81,000 per second, but each costs more: about 250 ns against 70 ns for an empty program. \
Between two runs the stack has copied tens of kilobytes through the caches, so the flow table's \
entry and the counters come from memory; in the profile the bucket walk (`lookup_nulls_elem_raw`, \
which reads the entries' hashes and keys) takes a fifth of the programs' samples, most of them on \
one instruction. The agent's programs took 2.05% of the \
core against 0.55% for the empty ones, which predicts a ratio of about 0.98 to no programs. The \
measured median, 0.973, has an interval (0.937–1.031) too wide to decide the 98% target either \
way.
- The agent process itself (its 1 s drains and flushes) took 0.3% of a core during TCP, wherever \
the scheduler put it.
";

/// What the short-connection table shows.
const CONNS_READING: &str = "Reading it: each short connection is at least four new keys in the \
kernel's flow table per second of flush interval, so at several thousand connections per second a \
65,536-entry table can fill between two drains; the packets that do not fit go through the ring \
buffer, one event each (the last column counts them, and any lost, from the agent's own \
counters), which costs far more per packet than an update in place. A larger \
`flow_table_entries` keeps them in the table (see the CPU section below, which uses 262,144). With \
TC on both veths each connection is eight keys and the default table overflows: the ring buffer \
carries millions of packets per run and some are lost, every one of them in the agent's loss \
counters (none silently).
";

/// `cargo xtask bench-lab`: builds the release binaries (and the `empty_hooks` example), prints
/// the three tables; with `write_doc`, replaces their three sections of `docs/performance.md`.
pub fn alone(opts: &Options, write_doc: bool) -> anyhow::Result<()> {
    let bin = crate::bench::lab_binaries("lab rates", &["empty_hooks"])?;
    let tables = run(&bin, opts)?;
    if write_doc {
        for section in sections(&tables) {
            crate::bench::splice_doc(&section)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Paired, median, median_interval};

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn median_interval_is_the_sign_test_interval() {
        // 7 rounds: min–max holds the median with 1 - 2/128; cutting one more from each end
        // would give 1 - 16/128 = 0.875, below 0.90.
        assert_eq!(median_interval(7).0, 0);
        assert!((median_interval(7).1 - 126.0 / 128.0).abs() < 1e-12);
        // 8 rounds: the 2nd smallest to the 2nd largest, 1 - 18/256.
        assert_eq!(median_interval(8).0, 1);
        assert!((median_interval(8).1 - 238.0 / 256.0).abs() < 1e-12);
        // 12 rounds: 3rd to 10th, 1 - 2 (1 + 12 + 66) / 4096; the 4th to 9th would be 0.854.
        assert_eq!(median_interval(12).0, 2);
        assert!((median_interval(12).1 - (1.0 - 158.0 / 4096.0)).abs() < 1e-12);
        // Too few rounds for 90%: min–max, with what it gives.
        assert_eq!(median_interval(3), (0, 0.75));
        assert_eq!(median_interval(1), (0, 0.0));
    }

    #[test]
    fn paired_ratios_divide_round_by_round() {
        let p = Paired::new(&[9.0, 18.0, 10.0], &[10.0, 20.0, 10.0]);
        assert_eq!(p.0, vec![0.9, 0.9, 1.0]);
        assert_eq!(p.cells(), "| 0.900 | 0.900–1.000 | 0.900–1.000 | 0.900, 0.900, 1.000 |");
    }

    #[test]
    fn a_target_is_decided_only_outside_the_interval() {
        // 8 rounds: the interval is the 2nd smallest to the 2nd largest ratio.
        let base = [1.0; 8];
        let p = Paired::new(&[0.90, 0.99, 1.00, 1.01, 1.02, 1.03, 1.04, 1.20], &base);
        assert_eq!(p.interval(), (0.99, 1.04));
        assert_eq!(p.against(0.98), "met");
        assert_eq!(p.against(0.99), "met");
        assert_eq!(p.against(1.00), "not shown either way (inside the interval)");
        assert_eq!(p.against(1.05), "missed");
    }
}
