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
    let mut programs = cargo();
    programs.args(["bench", "-p", "flowaudit", "--bench", "programs"]);
    let out = programs.output().context("cargo bench")?;
    if !out.status.success() {
        bail!("the programs bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let program_table = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{program_table}");

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
    let (mut without, mut cgroup, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let base = iperf(&lab, &server)?;
        let agent = Agent::start(&mut lab, &logs, &["--flush-interval", "5s"])?;
        let cg = iperf(&lab, &server)?;
        agent.stop(&mut lab).context("agent exit")?;
        let agent = Agent::start(&mut lab, &logs, &["--interfaces", &glob, "--flush-interval", "5s"])?;
        let all = iperf(&lab, &server)?;
        agent.stop(&mut lab).context("agent exit")?;
        println!(
            "round {}: no agent {:.2} Gbit/s, cgroup hook {:.2} Gbit/s, cgroup + TC {:.2} Gbit/s",
            round + 1,
            base / 1e9,
            cg / 1e9,
            all / 1e9
        );
        without.push(base);
        cgroup.push(cg);
        both.push(all);
    }
    drop(lab);
    let (w0, w1, w2) = (median(&mut without), median(&mut cgroup), median(&mut both));
    let iperf_table = format!(
        "| configuration | programs per packet | median of {ROUNDS} × {SECONDS} s | ratio |\n|---|---:|---:|---:|\n\
         | no agent | 0 | {:.2} Gbit/s | 1.000 |\n\
         | agent, cgroup hook only (the default) | 2 | {:.2} Gbit/s | {:.3} |\n\
         | agent, cgroup hook + TC on both veths | 4 | {:.2} Gbit/s | {:.3} |\n",
        w0 / 1e9,
        w1 / 1e9,
        w1 / w0,
        w2 / 1e9,
        w2 / w0
    );
    println!("{iperf_table}");
    write_doc(&program_table, &iperf_table)
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = root().join("target").join("bench-flows");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn machine() -> String {
    let kernel = Command::new("uname").arg("-r").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("kernel {kernel}, {cores} × {cpu}")
}

fn write_doc(programs: &str, iperf: &str) -> anyhow::Result<()> {
    let date = Command::new("date").args(["-u", "+%Y-%m-%d"]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
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
         cost), rounds of three runs: no agent; the agent on the pods' cgroup only (the sender's \
         egress and the receiver's ingress program run: two per packet); the agent on the cgroup \
         and on both veths through TCX (four per packet).\n\n{iperf}\n",
        machine = machine()
    );
    let path = root().join("docs").join("performance.md");
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
