//! `cargo xtask bench`: figures, each next to a baseline measured in the same run, written to
//! `docs/performance.md`. Never asserts on time.
//!
//! 1. Per-packet cost of every program (BPF_PROG_TEST_RUN) next to an empty program of its type
//!    and the floor of per-flow counting (one hash lookup and one atomic add on a fixed key).
//! 2. Between two lab pods, each configuration in turn (no programs, empty programs, the agent;
//!    cgroup hook only, then with TC on both veths): TCP throughput and the UDP 64-byte packet
//!    rate (iperf3), and the short-connection rate (`fa-traffic tcp-churn`), as ratios to no
//!    programs paired by round (`super::bench_lab`).
//! 3. One fixed workload captured in turn by flowaudit, pmacctd, softflowd and conntrack
//!    accounting: each one's process CPU time and its counts against nftables counters.
//! 4. The agent's CPU time per thousand flows, next to the idle agent's over the same wall time
//!    (`super::bench_cpu`).
//!
//! Takes root and the lab; gives tables on stdout and the doc. Must never leave a lab, a tool
//! process or a conntrack/nftables table behind (each lab removes its own on drop).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use flowaudit_lab::{Agent, Lab};
use serde_json::Value;

use crate::{build, build_dir, cargo, root, setup};

/// Threads of the short-connection generator and of its server.
pub(crate) const CHURN_THREADS: &str = "2";
pub(crate) const CHURN_PORT: &str = "7000";
/// First source port of a counted run of short connections (each has its own).
pub(crate) const CHURN_FIRST_SPORT: u16 = 20000;

/// Short connections from p1 to the `tcp-accept` server of p2: (connections, seconds).
/// With `max` (count, first source port), at most that many, each from its own source port.
pub(crate) fn churn(
    lab: &Lab,
    traffic: &Path,
    server: &str,
    seconds: &str,
    max: Option<(u64, u16)>,
) -> anyhow::Result<(u64, f64)> {
    let mut cmd = lab.pod_command("p1", traffic)?;
    cmd.args(["tcp-churn", server, CHURN_PORT, CHURN_THREADS, seconds]);
    if let Some((max, first_sport)) = max {
        cmd.arg(max.to_string()).arg(first_sport.to_string());
    }
    let json: Value = serde_json::from_str(&lab.output(cmd)?).context("tcp-churn output")?;
    if json["failed"].as_u64() != Some(0) {
        bail!("tcp-churn: connections failed: {json}");
    }
    Ok((json["connections"].as_u64().context("connections")?, json["seconds"].as_f64().context("seconds")?))
}

/// Starts the short-connection server in p2 and lets p1 reuse TIME_WAIT ports (a client that
/// closes first leaves one TIME_WAIT socket per connection; 28k ephemeral ports run out in
/// seconds otherwise).
pub(crate) fn churn_setup(lab: &mut Lab, traffic: &Path, server: &str) -> anyhow::Result<()> {
    let mut srv = lab.pod_command("p2", traffic)?;
    srv.args(["tcp-accept", server, CHURN_PORT, CHURN_THREADS]);
    lab.spawn(srv)?;
    let mut sysctl = lab.pod_command_no_cgroup("p1", "sysctl")?;
    sysctl.args(["-qw", "net.ipv4.tcp_tw_reuse=1"]);
    lab.output(sysctl)?;
    Ok(())
}

/// Packets that went to the ring buffer (flow table full) and that were lost, over all hooks.
pub(crate) fn spills(agent: &Agent) -> anyhow::Result<(u64, u64)> {
    let (_, body) = agent.get("/metrics")?;
    let sum = |counter: &str| -> u64 {
        let prefix = format!("flowaudit_kernel_events_total{{counter=\"{counter}\"");
        body.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum::<f64>() as u64
    };
    Ok((sum("table_full_packets"), sum("lost_packets")))
}

/// CPU time (user + system, seconds) of process `root` and its descendants, from /proc.
pub(crate) fn tree_cpu(root: u32) -> f64 {
    let (user, system) = tree_cpu_split(root);
    user + system
}

/// CPU time of process `root` and its descendants, from /proc: (user, system) seconds.
pub(crate) fn tree_cpu_split(root: u32) -> (f64, f64) {
    // SAFETY: no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut procs: Vec<(u32, u32, (u64, u64))> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the command name (which may hold spaces): state ppid ... utime(12) stime(13).
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        procs.push((pid, num(1) as u32, (num(11), num(12))));
    }
    let mut tree = HashSet::from([root]);
    loop {
        let before = tree.len();
        for (pid, ppid, _) in &procs {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    let ours = || procs.iter().filter(|(pid, _, _)| tree.contains(pid)).map(|(_, _, t)| *t);
    (ours().map(|t| t.0 as f64).sum::<f64>() / hz, ours().map(|t| t.1 as f64).sum::<f64>() / hz)
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Replaces the section of `docs/performance.md` that starts with `section`'s first line (its
/// `## ` heading) with `section`, up to the next heading: a part of the bench run alone
/// (`--write-doc`) updates its own section and leaves the others as the last full run wrote them.
pub(crate) fn splice_doc(section: &str) -> anyhow::Result<()> {
    let path = root().join("docs").join("performance.md");
    let doc = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc = splice(&doc, section).with_context(|| format!("{}", path.display()))?;
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    println!("updated {}", path.display());
    Ok(())
}

/// `doc` with the section headed by `section`'s first line replaced by `section`.
fn splice(doc: &str, section: &str) -> anyhow::Result<String> {
    let heading = section.lines().next().filter(|h| h.starts_with("## ")).context("a section starts with ## ")?;
    let start = doc
        .find(&format!("\n{heading}\n"))
        .map(|i| i + 1)
        .with_context(|| format!("no section {heading:?} (run the whole `cargo xtask bench`)"))?;
    let body = start + heading.len();
    let end = doc[body..].find("\n## ").map_or(doc.len(), |i| body + i + 1);
    let section = if end < doc.len() { format!("{}\n\n", section.trim_end()) } else { section.to_owned() };
    Ok(format!("{}{section}{}", &doc[..start], &doc[end..]))
}

/// For a part of the bench run alone (`bench-memory`, `bench-cpu`, `bench-lab`): installs what
/// is needed, checks for root (`what` names the part), builds the release binaries (and the
/// agent's `examples`, in the same cargo run: a second run would resolve the features of shared
/// dependencies differently and rebuild them both times) and points the lab at them; returns
/// their directory.
pub(crate) fn lab_binaries(what: &str, examples: &[&str]) -> anyhow::Result<PathBuf> {
    setup::run()?;
    if !crate::is_root() {
        bail!("the {what} bench creates namespaces and loads eBPF programs: run as root");
    }
    let bin = if examples.is_empty() {
        build(true)?
    } else {
        let mut cmd = cargo();
        cmd.args(["build", "--release", "-p", "flowaudit", "-p", "flowaudit-lab", "--lib", "--bins"]);
        for example in examples {
            cmd.args(["--example", example]);
        }
        crate::status(cmd)?;
        build_dir(true)
    };
    // SAFETY: single-threaded at this point; the lab reads these when it starts processes.
    unsafe {
        std::env::set_var("FLOWAUDIT_BIN_FLOWAUDIT", bin.join("flowaudit"));
        std::env::set_var("FLOWAUDIT_BIN_FA_TRAFFIC", bin.join("fa-traffic"));
    }
    Ok(bin)
}

/// Runs every benchmark and writes `docs/performance.md`.
pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    if !crate::is_root() {
        bail!("the benchmarks load eBPF programs and create namespaces: run as root");
    }
    setup::bench_packages()?;
    let load_start = loadavg();
    let bin = build(true)?;
    let mut examples = cargo();
    examples.args(["build", "--release", "-p", "flowaudit", "--examples"]);
    crate::status(examples)?;
    let program_table = cargo_bench(&["bench", "-p", "flowaudit", "--bench", "programs"], "programs")?;
    let attribution_table = cargo_bench(&["bench", "-p", "flowaudit", "--bench", "attribution"], "attribution")?;
    let encode_table = cargo_bench(&["bench", "-p", "flowaudit", "--bench", "encode"], "encode")?;
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
    let traffic = bin.join("fa-traffic");
    let lab = crate::bench_lab::run(&bin, &crate::bench_lab::Options::default())?;
    let capture_table = side_by_side(&traffic)?;
    let cpu_table = crate::bench_cpu::run(&traffic, crate::bench_cpu::ROUNDS, None)?;
    let memory = crate::bench_memory::run()?;
    println!("{memory}");
    let load = format!("{load_start} at the start, {} at the end", loadavg());
    println!("load average (1, 5, 15 min): {load}");
    write_doc(&Tables {
        programs: program_table,
        lab,
        capture: capture_table,
        cpu: cpu_table,
        attribution: attribution_table,
        encode: encode_table,
        export: export_table,
        memory,
        load,
    })
}

/// `cargo ARGS` whose stdout is a table: printed and returned.
fn cargo_bench(args: &[&str], what: &str) -> anyhow::Result<String> {
    let mut cmd = cargo();
    cmd.args(args);
    let out = cmd.output().with_context(|| format!("cargo bench {what}"))?;
    if !out.status.success() {
        bail!("the {what} bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{table}");
    Ok(table)
}

/// Packets and bytes of one direction of one flow, as a capture tool reports it.
struct Uni {
    src: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    packets: u64,
    bytes: u64,
}

/// The workload's three parts, as (packets, bytes), and the short connections seen.
#[derive(Clone, Copy, Default, PartialEq)]
struct Counts {
    udp: (u64, u64),
    bulk: (u64, u64),
    churn: (u64, u64),
    conns: u64,
}

const UDP_DATAGRAMS: u64 = 200_000;
const BULK_BYTES: u64 = 20_000_000;
const CHURN_CONNECTIONS: u64 = 5_000;

fn add(a: &mut (u64, u64), u: &Uni) {
    a.0 += u.packets;
    a.1 += u.bytes;
}

/// Sorts flows of the workload (from p1) into its parts.
fn classify(flows: &[Uni], p1: IpAddr) -> Counts {
    let mut c = Counts::default();
    let mut ports = HashSet::new();
    let churn: u16 = CHURN_PORT.parse().expect("port");
    for u in flows {
        match (u.proto, u.sport, u.dport) {
            (17, 40003, 5353) => add(&mut c.udp, u),
            (6, 40001, 5001) | (6, 5001, 40001) => add(&mut c.bulk, u),
            (6, s, d) if d == churn || s == churn => {
                add(&mut c.churn, u);
                if u.src == p1 && d == churn && u.packets > 0 {
                    ports.insert(s);
                }
            }
            _ => {}
        }
    }
    c.conns = ports.len() as u64;
    c
}

fn proto_number(name: &str) -> u8 {
    match name.to_ascii_lowercase().as_str() {
        "tcp" | "6" => 6,
        "udp" | "17" => 17,
        "icmp" | "1" => 1,
        _ => 0,
    }
}

/// A capture under comparison.
#[derive(Clone, Copy)]
enum Tool {
    Flowaudit { tc: bool },
    Pmacctd,
    Softflowd,
    Conntrack,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Flowaudit { tc: false } => "flowaudit, cgroup hook (the default)",
            Tool::Flowaudit { tc: true } => "flowaudit, cgroup hook + TC on both veths",
            Tool::Pmacctd => "pmacctd 1.7.7 (libpcap on p1's veth, print plugin)",
            Tool::Softflowd => "softflowd 1.1.0 (libpcap on p1's veth, NetFlow v5)",
            Tool::Conntrack => "conntrack accounting (nf_conntrack_acct=1 in the node)",
        }
    }
}

/// A started capture: what to stop and read.
enum Running {
    Agent(Agent, PathBuf),
    Pmacctd { pid: u32, csv: PathBuf },
    Softflowd { pid: u32, ctl: PathBuf, collector: std::thread::JoinHandle<(Vec<Uni>, u64)>, stop: StopFlag },
    Conntrack,
}

type StopFlag = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// Starts `tool` in the lab's node namespace.
fn start_tool(lab: &mut Lab, tool: Tool, dir: &Path) -> anyhow::Result<Running> {
    let veth = lab.pod("p1").node_veth.clone();
    let quiet = |cmd: &mut Command, log: &str| -> anyhow::Result<()> {
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(dir.join(log))?);
        Ok(())
    };
    Ok(match tool {
        Tool::Flowaudit { tc } => {
            let glob = format!("fa{}p*", lab.id);
            let flows = dir.join("flows");
            let args: Vec<&str> = if tc { vec!["--interfaces", &glob] } else { Vec::new() };
            Running::Agent(Agent::start(lab, &flows, &args)?, flows)
        }
        Tool::Pmacctd => {
            let csv = dir.join("pmacct.csv");
            let conf = dir.join("pmacctd.conf");
            std::fs::write(
                &conf,
                format!(
                    "daemonize: false\npcap_interface: {veth}\n\
                     aggregate: src_host, dst_host, src_port, dst_port, proto\nplugins: print\n\
                     print_output: csv\nprint_output_file: {}\nprint_refresh_time: 3600\n",
                    csv.display()
                ),
            )?;
            let mut cmd = lab.node_command("pmacctd")?;
            cmd.arg("-f").arg(&conf);
            quiet(&mut cmd, "pmacctd.log")?;
            let pid = lab.spawn(cmd)?;
            std::thread::sleep(Duration::from_secs(1));
            Running::Pmacctd { pid, csv }
        }
        Tool::Softflowd => {
            let sock = flowaudit_lab::in_netns(&lab.node_netns, || std::net::UdpSocket::bind("127.0.0.1:0"))??;
            let port = sock.local_addr()?.port();
            sock.set_read_timeout(Some(Duration::from_millis(200)))?;
            // An export burst at shutdown outgrows the default receive buffer (root may force it).
            let size: libc::c_int = 64 << 20;
            // SAFETY: a valid socket and option value for the call's duration.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            let stop: StopFlag = Default::default();
            let done = stop.clone();
            let collector = std::thread::spawn(move || netflow_v5(&sock, &done));
            let ctl = dir.join("softflowd.ctl");
            let mut cmd = lab.node_command("softflowd")?;
            cmd.args(["-d", "-v", "5", "-i", &veth, "-n", &format!("127.0.0.1:{port}"), "-c"])
                .arg(&ctl)
                .arg("-p")
                .arg(dir.join("softflowd.pid"));
            quiet(&mut cmd, "softflowd.log")?;
            let pid = lab.spawn(cmd)?;
            std::thread::sleep(Duration::from_secs(1));
            Running::Softflowd { pid, ctl, collector, stop }
        }
        Tool::Conntrack => {
            // A rule that needs conntrack registers its hooks in the node namespace; accounting
            // is per namespace.
            lab.node_run("nft", &["add table inet falab_ct"])?;
            lab.node_run(
                "nft",
                &["add chain inet falab_ct f { type filter hook forward priority 0 ; policy accept ; }"],
            )?;
            lab.node_run("nft", &["add rule inet falab_ct f ct state new counter"])?;
            lab.node_run("sysctl", &["-qw", "net.netfilter.nf_conntrack_acct=1"])?;
            Running::Conntrack
        }
    })
}

/// The process whose CPU time is the tool's, if it has one.
fn tool_pid(running: &Running) -> Option<u32> {
    match running {
        Running::Agent(a, _) => Some(a.pid),
        Running::Pmacctd { pid, .. } | Running::Softflowd { pid, .. } => Some(*pid),
        Running::Conntrack => None,
    }
}

/// Stops `running` and reads its flows, with what the tool itself says it lost.
fn stop_tool(lab: &mut Lab, running: Running, dir: &Path) -> anyhow::Result<(Vec<Uni>, String)> {
    let mut note = String::new();
    let flows = match running {
        Running::Agent(agent, flows) => {
            let (spilled, lost) = spills(&agent)?;
            note = format!("{spilled} packets through the ring buffer, {lost} lost (its counters)");
            if !agent.stop(lab).is_some_and(|s| s.success()) {
                bail!("the agent did not exit cleanly");
            }
            let mut out = Vec::new();
            for r in Agent::records(&flows).iter().filter(|r| r["reporter"] == "src") {
                let ip = |f: &str| r[f].as_str().and_then(|s| s.parse::<IpAddr>().ok());
                let (Some(src), Some(dst)) = (ip("source_ip"), ip("dest_ip")) else { continue };
                let port = |f: &str| r[f].as_u64().unwrap_or(0) as u16;
                let num = |f: &str| r[f].as_u64().unwrap_or(0);
                let proto = proto_number(r["proto"].as_str().unwrap_or_default());
                let (sport, dport) = (port("source_port"), port("dest_port"));
                out.push(Uni { src, sport, dport, proto, packets: num("packets_out"), bytes: num("bytes_out") });
                out.push(Uni {
                    src: dst,
                    sport: dport,
                    dport: sport,
                    proto,
                    packets: num("packets_in"),
                    bytes: num("bytes_in"),
                });
            }
            out
        }
        Running::Pmacctd { pid, csv } => {
            // SIGINT: pmacctd purges its cache into the print plugin's file and exits.
            lab.kill(pid, libc::SIGINT);
            let log = std::fs::read_to_string(dir.join("pmacctd.log")).unwrap_or_default();
            note = log
                .lines()
                .find_map(|l| {
                    l.find("received_packets=").map(|i| l[i..].replace('=', " ").replace(" dropped", ", dropped"))
                })
                .unwrap_or_else(|| "pmacctd printed no capture statistics".into());
            let text = std::fs::read_to_string(&csv).with_context(|| format!("reading {}", csv.display()))?;
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
            let col =
                |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("{name} in pmacct csv"));
            let (si, sp, dp, pr, pk, by) =
                (col("SRC_IP")?, col("SRC_PORT")?, col("DST_PORT")?, col("PROTOCOL")?, col("PACKETS")?, col("BYTES")?);
            lines
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    Some(Uni {
                        src: f.get(si)?.parse().ok()?,
                        sport: f.get(sp)?.parse().ok()?,
                        dport: f.get(dp)?.parse().ok()?,
                        proto: proto_number(f.get(pr)?),
                        packets: f.get(pk)?.parse().ok()?,
                        bytes: f.get(by)?.parse().ok()?,
                    })
                })
                .collect()
        }
        Running::Softflowd { pid, ctl, collector, stop } => {
            let ctl = ctl.to_string_lossy().into_owned();
            // `shutdown` expires and exports every flow, then exits (SIGTERM exports nothing).
            lab.node_run("softflowctl", &["-c", &ctl, "shutdown"])?;
            // Should it wait in libpcap, a packet wakes it: pings (ICMP, outside every counted part
            // of the workload).
            let p2 = lab.pod("p2").ipv4.to_string();
            let mut exited = false;
            for _ in 0..20 {
                if lab.wait(pid, Duration::from_secs(1)).is_some() {
                    exited = true;
                    break;
                }
                let mut ping = lab.pod_command_no_cgroup("p1", "ping")?;
                ping.args(["-c", "1", "-W", "1", &p2]).stdout(Stdio::null()).stderr(Stdio::null());
                let _ = ping.status();
            }
            if !exited {
                bail!("softflowd did not exit after softflowctl shutdown");
            }
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let (flows, gaps) = collector.join().expect("collector thread");
            note = format!("NetFlow records missing at the collector (sequence numbers): {gaps}");
            flows
        }
        Running::Conntrack => {
            let out = lab.node_run("conntrack", &["-L"])?;
            let mut flows = Vec::new();
            for line in out.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let proto = f.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
                // Two directions: original, then reply; each src= dst= sport= dport= packets= bytes=.
                let mut dir: HashMap<&str, &str> = HashMap::new();
                for kv in f.iter().filter_map(|t| t.split_once('=')) {
                    if kv.0 == "src" && dir.contains_key("src") {
                        flows.extend(conntrack_dir(&dir, proto));
                        dir.clear();
                    }
                    dir.insert(kv.0, kv.1);
                }
                flows.extend(conntrack_dir(&dir, proto));
            }
            flows
        }
    };
    Ok((flows, note))
}

fn conntrack_dir(d: &HashMap<&str, &str>, proto: u8) -> Option<Uni> {
    Some(Uni {
        src: d.get("src")?.parse().ok()?,
        sport: d.get("sport")?.parse().ok()?,
        dport: d.get("dport")?.parse().ok()?,
        proto,
        packets: d.get("packets")?.parse().ok()?,
        bytes: d.get("bytes")?.parse().ok()?,
    })
}

/// A NetFlow v5 collector: reads export packets until `stop` is set and the socket is quiet.
/// Returns the flows and the records missing by the headers' sequence numbers.
fn netflow_v5(sock: &std::net::UdpSocket, stop: &StopFlag) -> (Vec<Uni>, u64) {
    let mut flows = Vec::new();
    let mut buf = [0u8; 65536];
    let (mut expected, mut missing) = (0u32, 0u64);
    loop {
        match sock.recv(&mut buf) {
            Ok(n) if n >= 24 && buf[0..2] == [0, 5] => {
                let count = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                let seq = u32::from_be_bytes([buf[16], buf[17], buf[18], buf[19]]);
                missing += seq.wrapping_sub(expected) as u64;
                expected = seq.wrapping_add(count as u32);
                for rec in buf[24..n].chunks_exact(48).take(count) {
                    let be32 = |i: usize| u32::from_be_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
                    flows.push(Uni {
                        src: IpAddr::from([rec[0], rec[1], rec[2], rec[3]]),
                        sport: u16::from_be_bytes([rec[32], rec[33]]),
                        dport: u16::from_be_bytes([rec[34], rec[35]]),
                        proto: rec[38],
                        packets: be32(16) as u64,
                        bytes: be32(20) as u64,
                    });
                }
            }
            Ok(_) => {}
            Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => return (flows, missing),
            Err(_) => {}
        }
    }
}

/// The workload of the side-by-side, from p1 to p2: a UDP flood, a TCP transfer and short
/// connections. Returns the connections made.
fn workload(lab: &Lab, traffic: &Path) -> anyhow::Result<u64> {
    let p2 = lab.pod("p2").ipv4.to_string();
    let mut udp = lab.pod_command("p1", traffic)?;
    udp.args(["udp-send", &p2, "5353", "40003", &UDP_DATAGRAMS.to_string(), "64"]);
    lab.output(udp)?;
    let mut tcp = lab.pod_command("p1", traffic)?;
    tcp.args(["tcp-send", &p2, "5001", "40001", &BULK_BYTES.to_string()]);
    lab.output(tcp)?;
    let (n, _) = churn(lab, traffic, &p2, "60", Some((CHURN_CONNECTIONS, CHURN_FIRST_SPORT)))?;
    Ok(n)
}

/// Result of one tool's run.
struct Captured {
    tool: Tool,
    cpu: Option<f64>,
    nft: Counts,
    got: Counts,
    /// The tool's own loss counters.
    note: String,
}

/// The same workload captured by each tool in its own lab, against nftables in the same lab.
fn side_by_side(traffic: &Path) -> anyhow::Result<String> {
    let tools =
        [Tool::Flowaudit { tc: false }, Tool::Flowaudit { tc: true }, Tool::Pmacctd, Tool::Softflowd, Tool::Conntrack];
    let mut results = Vec::new();
    for tool in tools {
        let mut lab = Lab::new(2)?;
        let (p1, p2) = (lab.pod("p1").ipv4, lab.pod("p2").ipv4);
        let rule = |m: String| format!("ip saddr {p1} ip daddr {p2} {m}");
        let back = |m: String| format!("ip saddr {p2} ip daddr {p1} {m}");
        lab.nft_counters(&[
            ("udp_fwd", rule("udp sport 40003 udp dport 5353".into())),
            ("bulk_fwd", rule("tcp sport 40001 tcp dport 5001".into())),
            ("bulk_rev", back("tcp sport 5001 tcp dport 40001".into())),
            ("churn_fwd", rule(format!("tcp dport {CHURN_PORT}"))),
            ("churn_rev", back(format!("tcp sport {CHURN_PORT}"))),
        ])?;
        let server = p2.to_string();
        for args in [vec!["udp-sink", &server, "5353"], vec!["tcp-serve", &server, "5001", "5000"]] {
            let mut cmd = lab.pod_command("p2", traffic)?;
            cmd.args(args);
            lab.spawn(cmd)?;
        }
        churn_setup(&mut lab, traffic, &server)?;
        let dir = tempdir(&format!("capture-{}", results.len()))?;
        let running = start_tool(&mut lab, tool, &dir)?;
        std::thread::sleep(Duration::from_millis(500));
        let pid = tool_pid(&running);
        let cpu0 = pid.map(tree_cpu);
        let conns = workload(&lab, traffic)?;
        // Two flushes of the agent; the others export when stopped.
        std::thread::sleep(Duration::from_millis(2500));
        let cpu = pid.map(tree_cpu).zip(cpu0).map(|(b, a)| b - a);
        let c = lab.read_counters()?;
        let pair = |a: &str, b: Option<&str>| {
            let (x, y) = (c.get(a).copied().unwrap_or_default(), b.and_then(|b| c.get(b).copied()).unwrap_or_default());
            (x.0 + y.0, x.1 + y.1)
        };
        let nft = Counts {
            udp: pair("udp_fwd", None),
            bulk: pair("bulk_fwd", Some("bulk_rev")),
            churn: pair("churn_fwd", Some("churn_rev")),
            conns,
        };
        let (flows, note) = stop_tool(&mut lab, running, &dir)?;
        let got = classify(&flows, IpAddr::V4(p1));
        println!(
            "{}: cpu {cpu:?} s; udp {:?} vs {:?}; bulk {:?} vs {:?}; churn {:?} vs {:?}; connections {} of {}",
            tool.label(),
            got.udp,
            nft.udp,
            got.bulk,
            nft.bulk,
            got.churn,
            nft.churn,
            got.conns,
            nft.conns
        );
        results.push(Captured { tool, cpu, nft, got, note });
    }
    let cell = |got: u64, want: u64| {
        if got == want {
            format!("{got} (exact)")
        } else {
            format!("{got} ({:+.2}%)", (got as f64 - want as f64) * 100.0 / want.max(1) as f64)
        }
    };
    let r0 = &results[0].nft;
    let mut table = format!(
        "| capture | process CPU during the workload | UDP packets | UDP bytes | TCP transfer packets | TCP transfer bytes | short connections: packets | bytes | connections seen | the tool's own loss counters |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n\
         | nftables in the node (reference, first run; each row is compared with its own run's counters) | - | {} | {} | {} | {} | {} | {} | {} | - |\n",
        r0.udp.0, r0.udp.1, r0.bulk.0, r0.bulk.1, r0.churn.0, r0.churn.1, r0.conns
    );
    for r in &results {
        let cpu = match r.cpu {
            Some(s) => format!("{:.2} s", s),
            None => "in the packet path (no process)".into(),
        };
        table.push_str(&format!(
            "| {} | {cpu} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.tool.label(),
            cell(r.got.udp.0, r.nft.udp.0),
            cell(r.got.udp.1, r.nft.udp.1),
            cell(r.got.bulk.0, r.nft.bulk.0),
            cell(r.got.bulk.1, r.nft.bulk.1),
            cell(r.got.churn.0, r.nft.churn.0),
            cell(r.got.churn.1, r.nft.churn.1),
            cell(r.got.conns, r.nft.conns),
            if r.note.is_empty() { "-" } else { &r.note },
        ));
    }
    println!("{table}");
    Ok(table)
}

/// A fresh directory for one measurement's files, under target/bench-flows.
pub(crate) fn tempdir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = root().join("target").join("bench-flows").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `date -u FORMAT`: the time now, empty if `date` fails.
pub(crate) fn utc(format: &str) -> String {
    Command::new("date")
        .args(["-u", format])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
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

/// Every table of one run, and the machine's load while it ran.
struct Tables {
    programs: String,
    lab: crate::bench_lab::Tables,
    capture: String,
    cpu: String,
    attribution: String,
    encode: String,
    export: String,
    memory: String,
    load: String,
}

fn write_doc(t: &Tables) -> anyhow::Result<()> {
    let date = utc("+%Y-%m-%d");
    let doc = format!(
        "# Performance\n\n\
         Written by `cargo xtask bench` on {date} ({machine}; load average {load}: other builds \
         shared the 2 cores, so read rates as lower bounds). Every figure sits next to a baseline \
         measured in the same run; tests never assert on time.\n\n\
         ## Per-packet cost of each program\n\n\
         `cargo bench -p flowaudit --bench programs` (root): `BPF_PROG_TEST_RUN` with 1,000,000 \
         repetitions of one frame, best of three rounds, kernel-measured nanoseconds per run \
         (whole nanoseconds). The frame's flow is already in the table after the first \
         repetition, so this is the steady-state cost of counting a packet of a known flow: \
         parse, the map-of-maps lookup, the flow lookup, two atomic adds and a coarse clock \
         read. Two baselines of the same hook type run in the same process on the same frame: \
         the empty program (returns at once) and the counting floor (`flowaudit_*_floor`: one \
         lookup in a 16-entry hash map with a fixed key of `FlowKey`'s 48 bytes, one atomic \
         add, an insert on the first miss). Target (issue 7): at most 1.5× the floor.\n\n{programs}\n\
         {programs_reading}\n\
         {lab}\n\
         ## The same traffic captured by other tools\n\n\
         `cargo xtask bench` (root; installs the Debian packages `pmacct`, `softflowd` and \
         `conntrack` when missing): one fixed workload from p1 to p2, each capture in a lab of \
         its own: {UDP_DATAGRAMS} UDP datagrams of 64 bytes (`fa-traffic udp-send`, to a sink \
         that sends nothing back), one TCP transfer of {BULK_BYTES} bytes with a 5,000-byte \
         reply (`tcp-send`/`tcp-serve`), and {CHURN_CONNECTIONS} short connections \
         (`tcp-churn`). The independent count is nftables in the node's forward hook (as in the \
         kernel tests): every packet between the pods crosses it once. Counts are IP-layer \
         packets and bytes, both directions summed; connections seen are distinct client ports of \
         the short connections. CPU is the tool's processes (user + system, children included, \
         from /proc) from just before the workload until 2.5 s after it; a capture's in-kernel \
         work (the eBPF programs, the AF_PACKET copies of libpcap, conntrack itself) runs in the \
         packet path and is charged to whichever process sent or received the packet, not to the \
         tool. flowaudit's records are its `src` (p1's) records, with 1 s flushes; pmacctd and \
         softflowd capture on p1's veth in the node (both directions) with their default buffers, \
         and export when stopped (pmacctd on SIGINT; softflowd on `softflowctl shutdown`, to a NetFlow v5 collector in the \
         bench); conntrack's counts are `conntrack -L` after the workload (closed connections \
         stay listed in TIME_WAIT for 120 s).\n\n{capture}\n\
         {capture_reading}\n\
         {cpu}\n\
         ## Userspace cost per flow record\n\n\
         `cargo bench -p flowaudit --bench attribution`: one core, a generated cluster of 100 \
         namespaces, 10,000 pods and 1,000 Kubernetes NetworkPolicies (read by the manifests \
         source), 200,000 records between random pods on ports 80/443/5432/8080 with ephemeral \
         source ports (so most verdicts are computed, not cached). Target (issue 7): at most 1 µs \
         per record for enrichment and attribution.\n\n{ATTRIBUTION_METHOD}\n\n{attribution}\n\
         {ATTRIBUTION_READING}\n\
         ## SIEM encodings\n\n\
         `cargo bench -p flowaudit --bench encode`: one core, each encoding of \
         `docs/siem-encodings.md` over 1,000 distinct level-0 TCP records between named pods (9 \
         labels, a Service, a 2 + 3 entry policy trace) and 100 NetworkPolicy patch audit events \
         at RequestResponse level, 200 passes, best of three, into one reused buffer. The calico \
         row is the baseline: the flow-log line every deployment writes. `ecs` includes the \
         Community ID (SHA-1) per record; `ecs` and `ocsf` audit events copy the whole event \
         (`kubernetes.audit`, `raw_data`).\n\n{encode}\n\
         ## Exporters\n\n\
         `cargo run --release -p flowaudit-lab --example export_bench`: records per second per \
         exporter and encoding, the agent's side on one core (a single-threaded runtime), against \
         the real servers of the exporter tests on loopback (rsyslog, osmem-server, Tansu, Rotel); \
         50,000 records (2,000 for the OpenSearch emulator) in flushes of 1,000, timed from the \
         first submit until the sink accepted the last (spooled, synced, sent, removed from the \
         spool), with the agent process's CPU time (user + system) per record. The `file` row is \
         the baseline: the local write every deployment has. The CPU times are steadier than the \
         rates on a shared machine.\n\n{export}\n{EXPORT_READING}\n{memory}",
        machine = machine(),
        load = t.load,
        programs = t.programs,
        programs_reading = PROGRAMS_READING,
        lab = crate::bench_lab::sections(&t.lab).join("\n"),
        capture = t.capture,
        capture_reading = CAPTURE_READING,
        cpu = crate::bench_cpu::section(&t.cpu),
        attribution = t.attribution,
        encode = t.encode,
        export = t.export,
        memory = t.memory,
    );
    let path = root().join("docs").join("performance.md");
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// What the program table shows and why (from the runs and the live profile of 2026-11-27).
const PROGRAMS_READING: &str = "Reading it: the floor is 22–24 ns above the empty program: hashing \
a 48-byte key (jhash), the bucket walk and key compare of `BPF_MAP_TYPE_HASH`, and one atomic add. \
flowaudit pays them once per packet like the floor and adds 15–22 ns: the header parse through \
direct packet access, the `FLOW_TABLES` array-of-maps lookup (inlined by the verifier), a second \
atomic add, the coarse clock helper and the TCP-flags check. In two runs of 2026-11-27 that made \
TCP/IPv4 1.38–1.50× the floor (the 1.5× target met) and UDP/IPv6 1.49–1.56× (missed by up to \
0.06×): the IPv6 header is twice as long, its 32 address bytes are read and copied byte by byte \
(the compiler cannot know the packet's alignment), and the extension-header loop runs. Two kinds of \
`memset` subprogram calls were found and removed that day. The programs wrote the key's IPv4-mapped \
addresses byte by byte into a zeroed key, and the compiler zeroed their first ten bytes with two \
calls per packet (13% of the programs' samples in a live profile of the TCP bench below; TCP/IPv4 \
went from 57–58 to 52–54 ns). The floor program zeroed its key with one such call, about 15 ns per \
packet, which had put the floor at 51–53 ns and the programs at 1.1–1.25× of it. The addresses are \
now built from 32-bit words and the floor's key from six 8-byte stores. A smaller key would lower \
the floor and flowaudit alike, but the key is the flow's identity (two IPv6 addresses, ports, \
interface, observation point).
";
/// What the side-by-side table shows.
const CAPTURE_READING: &str = "Reading it:
- With the cgroup hook only, flowaudit misses part of every short connection: the packets a \
  connection exchanges after the client has closed (the server's FIN arriving at the client's \
  FIN_WAIT2/TIME_WAIT mini-socket and the client kernel's last ACK) belong to no full socket, and \
  the `cgroup_skb` programs run only for full sockets. Its counters cannot see these packets, so \
  it cannot count them as lost either. With TC on the pods' veths (`--interfaces`) the counts are \
  exact, like the kernel tests' `exact_counts_with_cgroup_and_tc_hooks` (whose cgroup-only twin leaves \
  such packets out of the nftables count on purpose).
- pmacctd and softflowd read copies of the packets through libpcap (AF_PACKET) on one veth; the \
  copy is made in the packet path and charged to the sending or receiving process, not to the \
  tool, so their process CPU understates what they cost the node. Their loss shows as counts below \
  nftables when the socket buffer of the capture overflows (a UDP flood at full rate) or when a \
  flow is cut by the tool's own expiry; softflowd's shortfall on short connections was not \
  investigated further.
- Conntrack counts exactly what it tracks, but its work is in the packet path of every packet (no \
  process to measure), its table holds closed TCP connections only for TIME_WAIT (120 s) and UDP \
  flows for 30–120 s, and it has no export of its own: a reader must list or follow it (`conntrack \
  -L`/`-E`) in time, which is what flow-export tools built on it do.
";
/// How the attribution bench measures (its table follows).
const ATTRIBUTION_METHOD: &str = "Times are the bench thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, \
so a loaded machine's waits for a core are not counted), each per-record step the best of three rounds \
on fresh copies of the records and, for the attribute stage, a fresh stage (empty verdict cache and \
memo, as after a state change). What the stage keeps per state version beyond the compiled policies \
(below) is filled as records arrive, so its cost is inside the first-pass row. After the rounds, \
untimed, the bench checks that the stage gave every record the verdict and traces of a fresh walk \
of its flow. The table is the best of three runs of the bench on 2026-11-27 on the 2-core machine \
(load average 2.6-2.8 from other builds).";
/// The attribution figures explained (figures of the 2026-11-27 runs).
const ATTRIBUTION_READING: &str = "**The target is met**: 0.78 µs per record for enrichment and the \
first attribution pass (the three runs: 779, 881 and 916 ns; the code before this change, same \
command, same session, runs interleaved: 1509, 1479 and 1630 ns). Enrich went from 475 to 268 ns, \
the first pass from 1004 to 511 ns, the warm pass from 184 to 117 ns. Each change against the one \
before it, CPU ns per record as the minimum over all six builds run interleaved three times \
(`FLOWAUDIT_BENCH_PROFILE=3`: only enrich and a first pass, three times per run; the before build \
is slower here than in the table because no other step warms the endpoints between them):

| change | enrich | first pass |
|---|---:|---:|
| before (1.27 µs in the runs of the last change, 1.48 µs in this session) | 448 | 964 |
| the memo keeps per endpoint its labels, its namespace's labels and its named ports as small ids (equal sets share one) and per (selector, label set) what a Kubernetes selector says, so a rule compares ints and reads a few shared lines, not the peer's `BTreeMap`s and strings; equal selections share one copy | 457 | 760 |
| enrich looks up the endpoints of 16 records before filling them, and asks the CPU for the lines the fill reads (`prefetch`): lookups that do not wait for each other miss the cache at the same time | 304 | 760 |
| the verdict cache holds trace ids of the memo, not an index into a list of distinct verdicts (with 1,000 policies that list held nearly a verdict per flow: one more table miss per record) | 304 | 564 |
| the cache appends entries in order and hashes 4-byte indices to them (a new flow writes no random line of a 15 MB table) | 314 | 539 |
| both stages ask for records a few ahead; the record takes its traces before the new cache entry is written | 282 | 552 |

`valgrind --tool=callgrind` (L1d 48 KiB, last level 2 MiB) over one enrich and one first pass, per \
record: enrich 430 → 466 instructions, 19.6 → 19.7 last-level read misses (callgrind neither models \
prefetches nor misses taken at the same time: enrich's gain is overlap, not fewer misses); first pass \
2046 → 1848 instructions, 32.4 → 19.5 read and 4.7 → 3.2 write misses.

What is left (a `perf record` profile, cpu-clock, of `FLOWAUDIT_BENCH_PROFILE=8`):
- Enrich is now mostly its 20 atomic reference-count operations per record (copying in the shared \
  names, labels and endpoints and dropping the placeholders they replace: `Text` is `Arc<str>`); \
  the samples of `fill` sit on the lock-prefixed instructions.
- The bench's records are copies that share their placeholder strings (`-`, `pvt`, `net`) with the \
  original vector, so replacing one only lowers a count. Records made by the aggregate stage of \
  before this change allocated them per record, so in the agent enrich freed 8 allocations per \
  record: with unshared copies (a local variant of `FLOWAUDIT_BENCH_PROFILE=3`, three runs) enrich \
  took 404 ns instead of 304 and the first pass after it 758 instead of 646 (glibc merging the \
  freed chunks at the cache's large allocation), about 210 ns more per record. The aggregate \
  change measured in the CPU section above shares one copy of each constant text per aggregator, \
  so the agent's records now share them as the bench's do (not measured again together).
- The first pass: 1848 instructions per record, of which about 390 are the memo learning each \
  endpoint on first sight (210 its ids, mostly hashing its label sets; 180 the policies selecting \
  it; 10,000 endpoints over 200,000 records), and the \
  misses on the record itself, the memo's entry per endpoint and the cache's index. Enriching and \
  attributing in chunks that stay in the cache would save the record's second fetch, but \
  `localize` runs between the stages in the pipeline.
- `attribute, no cache` (the path of `flowaudit explain`, no memo) was not worked on (its code \
  changed only in how Kubernetes rules read the ends): 1303-1386 ns before and 1373-1564 ns after \
  in the same session.
";
/// The exporter figures explained (figures of the 2026-11-27 run).
const EXPORT_READING: &str = "Reading it (figures of the 2026-11-27 run):
- Each run has one exporter only, so every row includes the encoding. With calico, a network
  exporter costs 3.7–4.2 µs of CPU per record where the file exporter costs 1.4 µs: 2–3 µs for
  the write-ahead spool (written, synced, read back, removed) and the send. At 4 µs per record,
  1,000 records per 15 s flush are 4 ms of CPU, 0.03% of a core. When several exporters share an
  encoding, a record is encoded once for all of them.
- The Elasticsearch row measures osmem-server, an in-memory emulator whose indexing slows as its
  index grows (0.4–0.6k records/s here, in batches of 200); the agent's side costs 11–14 µs per
  record (the `_bulk` action line and a SHA-256 document id). Calico and ECS documents go to
  different indices: `host` is a string in one and an object in the other, and a real
  Elasticsearch refuses the second mapping in one index as the emulator does (the items go to the
  dead-letter file, counted).
- OTLP flattens each JSON record's fields into log-record attributes (about 40 for calico). The
  first version built a JSON tree per record and cost 187 µs of CPU per record (a `perf record`
  profile: 18% of the samples in `serde_json::Value` serialization, 9% in B-tree drops and 26% in
  malloc and free); writing the request body directly brought it to 12 µs. CEF (a plain string
  body, no attributes) costs 4 µs.
- The ClickHouse row was measured later the same day (`FLOWAUDIT_BENCH_ONLY=clickhouse`, two
  runs: 45.3k/s and 27.8k/s, 6.0 and 6.4 µs CPU; the `file` baseline right before them: 516.5k/s
  and 577.8k/s, 1.7 µs). The agent's side costs about 2 µs more than syslog: each line is
  rewritten as a row (its objects as JSON text) and one HTTP insert per 1,000 records. The rate
  is ClickHouse 18.16's: it parses `JSONEachRow` and writes a part per insert on the other core.
";

#[cfg(test)]
mod tests {
    #[test]
    fn splice_replaces_one_section_whole() {
        let doc = "# P\n\n## A\n\nold a\n\n## B\n\nold b\n";
        assert_eq!(super::splice(doc, "## A\n\nnew a\n").unwrap(), "# P\n\n## A\n\nnew a\n\n## B\n\nold b\n");
        assert_eq!(super::splice(doc, "## B\n\nnew b\n").unwrap(), "# P\n\n## A\n\nold a\n\n## B\n\nnew b\n");
        assert!(super::splice(doc, "## C\n\nc\n").is_err());
        assert!(super::splice(doc, "no heading").is_err());
    }
}
