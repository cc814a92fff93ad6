//! `cargo xtask demo`: a lab node with three pods, the agent attached to their cgroups and
//! veths, TCP (IPv4 and IPv6), UDP, ICMP and a refused connection between them, then the flow log.
//!
//! The lab runs in a child process; the parent ignores SIGINT/SIGTERM while it waits, then
//! removes whatever an interrupted child left (namespaces, cgroups, processes), so Ctrl-C, a
//! failure and a normal end all leave the machine as it was.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, bail};
use flowaudit_lab::{Agent, Lab, workspace_bin};

use crate::{build, root, setup};

/// Builds, then runs the demo in a child and cleans up after it whatever happens.
pub fn supervise() -> anyhow::Result<()> {
    setup::run()?;
    let bin = build(false)?;
    if !crate::is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    // SAFETY: setting dispositions of two signals for this process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    let mut child = Command::new(std::env::current_exe().context("xtask path")?);
    child
        .arg("demo-run")
        .env("FLOWAUDIT_BIN_FLOWAUDIT", bin.join("flowaudit"))
        .env("FLOWAUDIT_BIN_FA_TRAFFIC", bin.join("fa-traffic"));
    // SAFETY: restore default signal handling in the child before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut child, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    let status = child.status().context("starting the demo")?;
    flowaudit_lab::cleanup_stale();
    if !status.success() {
        bail!("the demo stopped ({status}); everything it created was removed");
    }
    Ok(())
}

/// The demo proper (child process).
pub fn run() -> anyhow::Result<()> {
    let mut lab = Lab::new(3)?;
    let (p1, p2, p3) = (lab.pod("p1").clone(), lab.pod("p2").clone(), lab.pod("p3").clone());
    println!("== lab: node netns {}, pods:", lab.node_netns);
    for p in &lab.pods {
        println!("   {}  {:<12} {:<14} veth {} cgroup {}", p.name, p.ipv4, p.ipv6, p.node_veth, p.cgroup.display());
    }
    let logs = root().join("target").join("demo");
    let _ = std::fs::remove_dir_all(&logs);
    let glob = format!("fa{}p*", lab.id);
    println!("== flowaudit run --cgroup {} --interfaces '{glob}' --flush-interval 1s", lab.cgroup.display());
    let agent = Agent::start(&mut lab, &logs, &["--interfaces", &glob])?;

    let t = workspace_bin("fa-traffic");
    let mut serve = |pod: &str, args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = lab.pod_command(pod, &t)?;
        cmd.args(args);
        lab.spawn(cmd)?;
        Ok(())
    };
    serve("p2", &["tcp-serve", &p2.ipv4.to_string(), "80", "5000"])?;
    serve("p3", &["tcp-serve", &p3.ipv6.to_string(), "443", "7000"])?;
    serve("p3", &["udp-echo", &p3.ipv4.to_string(), "53"])?;
    std::thread::sleep(Duration::from_millis(500));
    let steps: Vec<(&str, &str, Vec<String>)> = vec![
        ("p1 → p2 TCP/IPv4 :80, 100 kB up, 5 kB back", "p1", vec!["tcp-send".into(), p2.ipv4.to_string(), "80".into(), "40001".into(), "100000".into()]),
        ("p1 → p3 TCP/IPv6 :443, 30 kB up, 7 kB back", "p1", vec!["tcp-send".into(), p3.ipv6.to_string(), "443".into(), "40002".into(), "30000".into()]),
        ("p2 → p3 UDP :53, 10 datagrams echoed", "p2", vec!["udp-send".into(), p3.ipv4.to_string(), "53".into(), "40003".into(), "10".into(), "300".into(), "1".into()]),
        ("p1 → p2 TCP :5999, nobody listens (refused)", "p1", vec!["tcp-refused".into(), p2.ipv4.to_string(), "5999".into(), "40004".into()]),
    ];
    println!("== traffic");
    for (what, pod, args) in steps {
        let mut cmd = lab.pod_command(pod, &t)?;
        cmd.args(&args);
        let out = lab.output(cmd)?;
        println!("   {what}: {}", out.trim());
    }
    let mut ping = lab.pod_command("p3", "ping")?;
    ping.args(["-c", "3", "-i", "0.2", &p1.ipv4.to_string()]);
    lab.output(ping)?;
    println!("   p3 → p1 ICMP echo ×3: ok");
    std::thread::sleep(Duration::from_millis(1500));
    let (_, metrics) = agent.get("/metrics")?;
    println!("== metrics (excerpt)");
    for line in metrics.lines().filter(|l| {
        l.starts_with("flowaudit_packets_total")
            || (l.starts_with("flowaudit_kernel_events_total") && l.contains("lost_packets"))
            || l.starts_with("flowaudit_records_written_total")
            || l.starts_with("flowaudit_attached_programs")
    }) {
        println!("   {line}");
    }
    let status = agent.stop(&mut lab).context("the agent did not exit")?;
    if !status.success() {
        bail!("the agent exited with {status}");
    }
    let records = Agent::records(&logs);
    println!("== flow log {} ({} records)", logs.join("flows.log").display(), records.len());
    println!("   {:<3} {:<5} {:<36} {:>16} {:>16} {:<11} done", "rep", "proto", "source → dest", "out pkts/bytes", "in pkts/bytes", "observed");
    let lab_net = |v: &serde_json::Value| v.as_str().is_some_and(|s| s.starts_with("10.231.") || s.starts_with("fd00:fa:"));
    for r in records.iter().filter(|r| lab_net(&r["source_ip"]) && lab_net(&r["dest_ip"])) {
        let end = |ip: &serde_json::Value, port: &serde_json::Value| match port.as_u64() {
            Some(p) if ip.as_str().is_some_and(|s| s.contains(':')) => format!("[{}]:{p}", ip.as_str().unwrap_or("")),
            Some(p) => format!("{}:{p}", ip.as_str().unwrap_or("")),
            None => ip.as_str().unwrap_or("").to_owned(),
        };
        println!(
            "   {:<3} {:<5} {:<36} {:>16} {:>16} {:<11} {}",
            r["reporter"].as_str().unwrap_or(""),
            r["proto"].as_str().unwrap_or(""),
            format!("{} → {}", end(&r["source_ip"], &r["source_port"]), end(&r["dest_ip"], &r["dest_port"])),
            format!("{}/{}", r["packets_out"], r["bytes_out"]),
            format!("{}/{}", r["packets_in"], r["bytes_in"]),
            r["observed"].as_str().unwrap_or(""),
            r["num_flows_completed"],
        );
    }
    let raw = std::fs::read_to_string(logs.join("flows.log")).unwrap_or_default();
    if let Some(first) = raw.lines().next() {
        println!("== one line of flows.log, as written:\n{first}");
    }
    drop(lab);
    println!("== lab removed (namespaces, veths, cgroups, processes)");
    Ok(())
}
