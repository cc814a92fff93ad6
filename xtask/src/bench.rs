//! `cargo xtask bench`: figures, each next to a baseline measured in the same run, written to
//! `docs/performance.md`. Never asserts on time.
//!
//! 1. Per-packet cost of every program (BPF_PROG_TEST_RUN) next to an empty program of its type.
//! 2. TCP throughput between two lab pods (iperf3), alternating runs without and with the agent
//!    (cgroup hook and TC on both veths).

use std::{process::Command, time::Duration};

use anyhow::{Context as _, bail};
use flowaudit_lab::{Agent, Lab};

use crate::{build, cargo, root, setup};

const ROUNDS: usize = 3;
const SECONDS: &str = "5";

fn iperf(lab: &Lab, server: &str) -> anyhow::Result<f64> {
    let mut cmd = lab.pod_command("p1", "iperf3")?;
    cmd.args(["-c", server, "-t", SECONDS, "-J"]);
    let out = lab.output(cmd)?;
    let json: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    json["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 result")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs both benchmarks and writes `docs/performance.md`.
pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    if !crate::is_root() {
        bail!("the benchmarks load eBPF programs and create namespaces: run as root");
    }
    let bin = build(true)?;
    let mut examples = cargo();
    examples.args(["build", "--release", "-p", "flowaudit", "--examples"]);
    crate::status(examples)?;
    let mut programs = cargo();
    programs.args(["bench", "-p", "flowaudit", "--bench", "programs"]);
    let out = programs.output().context("cargo bench")?;
    if !out.status.success() {
        bail!("the programs bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let program_table = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{program_table}");
    let mut attribution = cargo();
    attribution.args(["bench", "-p", "flowaudit", "--bench", "attribution"]);
    let out = attribution.output().context("cargo bench attribution")?;
    if !out.status.success() {
        bail!("the attribution bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let attribution_table = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{attribution_table}");
    let mut encode = cargo();
    encode.args(["bench", "-p", "flowaudit", "--bench", "encode"]);
    let out = encode.output().context("cargo bench encode")?;
    if !out.status.success() {
        bail!("the encode bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let encode_table = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{encode_table}");
    let mut export = cargo();
    export
        .args(["run", "--release", "-q", "-p", "flowaudit-lab", "--example", "export_bench"])
        .env("FLOWAUDIT_SINKS_VENV", setup::sinks_venv());
    let out = export.output().context("the exporter bench")?;
    if !out.status.success() {
        bail!("the exporter bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let export_table = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{export_table}");

    // SAFETY: single-threaded at this point; the lab reads these when it starts processes.
    unsafe {
        std::env::set_var("FLOWAUDIT_BIN_FLOWAUDIT", bin.join("flowaudit"));
        std::env::set_var("FLOWAUDIT_BIN_FA_TRAFFIC", bin.join("fa-traffic"));
    }
    let mut lab = Lab::new(2)?;
    let server = lab.pod("p2").ipv4.to_string();
    let mut srv = lab.pod_command("p2", "iperf3")?;
    srv.args(["-s", "-B", &server]);
    lab.spawn(srv)?;
    std::thread::sleep(Duration::from_millis(500));
    let logs = tempdir()?;
    let glob = format!("fa{}p*", lab.id);
    let veths: Vec<String> = lab.pods.iter().map(|p| p.node_veth.clone()).collect();
    let empty_hooks = bin.join("examples").join("empty_hooks");
    // (label, programs per packet, runs)
    let mut results: Vec<(&str, u32, Vec<f64>)> = vec![
        ("no programs", 0, Vec::new()),
        ("empty programs on the cgroup", 2, Vec::new()),
        ("agent, cgroup hook only (the default)", 2, Vec::new()),
        ("empty programs on the cgroup + TC on both veths", 4, Vec::new()),
        ("agent, cgroup hook + TC on both veths", 4, Vec::new()),
    ];
    for round in 0..ROUNDS {
        let mut line = format!("round {}:", round + 1);
        for (i, (label, _, runs)) in results.iter_mut().enumerate() {
            let rate = match i {
                0 => iperf(&lab, &server)?,
                1 | 3 => {
                    let ifaces = if i == 3 { veths.clone() } else { Vec::new() };
                    let _held = EmptyHooks::attach(&lab, &empty_hooks, &ifaces)?;
                    iperf(&lab, &server)?
                }
                _ => {
                    let extra: Vec<&str> = if i == 4 { vec!["--interfaces", &glob] } else { Vec::new() };
                    let mut args = vec!["--flush-interval", "5s"];
                    args.extend(extra);
                    let agent = Agent::start(&mut lab, &logs, &args)?;
                    let rate = iperf(&lab, &server)?;
                    agent.stop(&mut lab).context("agent exit")?;
                    rate
                }
            };
            line.push_str(&format!(" {label} {:.2};", rate / 1e9));
            runs.push(rate);
        }
        println!("{line}");
    }
    drop(lab);
    let base = median(&mut results[0].2);
    let mut iperf_table = format!(
        "| configuration | programs per packet | median of {ROUNDS} × {SECONDS} s | ratio to no programs |\n|---|---:|---:|---:|\n"
    );
    for (label, progs, runs) in &mut results {
        let m = median(runs);
        iperf_table.push_str(&format!("| {label} | {progs} | {:.2} Gbit/s | {:.3} |\n", m / 1e9, m / base));
    }
    println!("{iperf_table}");
    let memory = crate::bench_memory::run()?;
    println!("{memory}");
    write_doc(&program_table, &iperf_table, &attribution_table, &encode_table, &export_table, &memory)
}

/// The empty programs attached in the lab's node namespace while this lives.
struct EmptyHooks(std::process::Child);

impl EmptyHooks {
    fn attach(lab: &Lab, bin: &std::path::Path, ifaces: &[String]) -> anyhow::Result<EmptyHooks> {
        use std::io::BufRead as _;
        let mut cmd = lab.node_command(bin)?;
        cmd.arg(&lab.cgroup).args(ifaces).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
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

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = root().join("target").join("bench-flows");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn machine() -> String {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("kernel {kernel}, {cores} × {cpu}")
}

fn write_doc(
    programs: &str,
    iperf: &str,
    attribution: &str,
    encode: &str,
    export: &str,
    memory: &str,
) -> anyhow::Result<()> {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let doc = format!(
        "# Performance\n\n\
         Written by `cargo xtask bench` on {date} ({machine}). Every figure sits next to a baseline \
         measured in the same run; tests never assert on time.\n\n\
         ## Per-packet cost of each program\n\n\
         `cargo bench -p flowaudit --bench programs` (root): `BPF_PROG_TEST_RUN` with 1,000,000 \
         repetitions of one frame, best of three rounds, kernel-measured nanoseconds per run. The \
         frame's flow is already in the table after the first repetition, so this is the \
         steady-state cost of counting a packet of a known flow: parse, the map-of-maps lookup, \
         the flow lookup, two atomic adds and a coarse clock read.\n\n{programs}\n\
         ## TCP throughput between two lab pods\n\n\
         `cargo xtask bench`: iperf3 from pod p1 to pod p2 of the lab (veth pairs through a node \
         namespace, offloads off so every skb is a wire packet: the worst case for per-packet \
         cost). Each round runs: no programs; flowaudit's empty programs attached where the agent \
         attaches (the cost of the hooks themselves); the agent on the pods' cgroup only (the \
         sender's egress and the receiver's ingress program run: two per packet); the same two \
         with TC on both veths through TCX (four per packet).\n\n{iperf}\n\
         ## Userspace cost per flow record\n\n\
         `cargo bench -p flowaudit --bench attribution`: one core, a generated cluster of 100 \
         namespaces, 10,000 pods and 1,000 Kubernetes NetworkPolicies (read by the manifests \
         source), 200,000 records between random pods on ports 80/443/5432/8080 with ephemeral \
         source ports (so most verdicts are computed, not cached). Target (issue 7): at most 1 µs \
         per record for enrichment and attribution.\n\n{attribution}\n\
         ## SIEM encodings\n\n\
         `cargo bench -p flowaudit --bench encode`: one core, each encoding of \
         `docs/siem-encodings.md` over 1,000 distinct level-0 TCP records between named pods and \
         100 NetworkPolicy patch audit events, into one reused buffer; the best of three rounds. \
         The calico row is the baseline: the flow-log line every deployment writes.\n\n{encode}\n\
         ## Exporters\n\n\
         `cargo run --release -p flowaudit-lab --example export_bench`: records per second per \
         exporter and encoding, the agent's side on one core (a single-threaded runtime), against \
         the real servers of the exporter tests on loopback (rsyslog, osmem-server, Tansu, Rotel, \
         ClickHouse 18.16); \
         50,000 records in flushes of 1,000, timed from the first submit until the sink accepted \
         the last (spooled, synced, sent, removed from the spool). The `file` row is the baseline: \
         the local write every deployment has.\n\n{export}\n{memory}",
        machine = machine()
    );
    let path = root().join("docs").join("performance.md");
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
