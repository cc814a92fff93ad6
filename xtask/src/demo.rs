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
    lab.add_cgroup("hostnet")?;
    let (p1, p2, p3) = (lab.pod("p1").clone(), lab.pod("p2").clone(), lab.pod("p3").clone());
    println!("== lab: node netns {}, pods:", lab.node_netns);
    for p in &lab.pods {
        println!("   {}  {:<12} {:<14} veth {} cgroup {}", p.name, p.ipv4, p.ipv6, p.node_veth, p.cgroup.display());
    }
    // The cluster: deploy/demo with the lab's cgroup filled in.
    let out = root().join("target").join("demo");
    let _ = std::fs::remove_dir_all(&out);
    let cluster = out.join("cluster");
    let logs = out.join("flows");
    std::fs::create_dir_all(&cluster)?;
    for entry in std::fs::read_dir(root().join("deploy").join("demo"))?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)?.replace("@LAB_CGROUP@", &lab.cgroup_relative());
            std::fs::write(cluster.join(entry.file_name()), text)?;
        }
    }
    println!("== cluster: deploy/demo (namespaces shop and ops, pods web, db, monitor, a host-network node-agent;");
    println!("   Calico tier `security` passes only db's sql port; in tier default, shop is default-deny for");
    println!("   ingress and db admits web on sql; a staged default-deny for ops shows in `pending`)");
    // The "CNI" enforces two of the denials; monitor → db:9000 gets through on purpose.
    lab.nft_drop(&[
        format!("ip saddr {} ip daddr {} tcp dport 5432", p3.ipv4, p2.ipv4),
        format!("ip saddr {} ip daddr {} icmp type echo-request", p3.ipv4, p1.ipv4),
    ])?;
    let glob = format!("fa{}p*", lab.id);
    println!(
        "== flowaudit run --cluster {} --cgroup {} --interfaces '{glob}'",
        cluster.display(),
        lab.cgroup.display()
    );
    let agent =
        Agent::start(&mut lab, &logs, &["--interfaces", &glob, "--cluster", cluster.to_str().unwrap_or_default()])?;

    let t = workspace_bin("fa-traffic");
    let mut serve = |pod: &str, args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = lab.pod_command(pod, &t)?;
        cmd.args(args);
        lab.spawn(cmd)?;
        Ok(())
    };
    serve("p2", &["tcp-serve", &p2.ipv4.to_string(), "5432", "5000"])?;
    serve("p2", &["tcp-serve", &p2.ipv4.to_string(), "9000", "100"])?;
    serve("p3", &["tcp-serve", &p3.ipv6.to_string(), "443", "7000"])?;
    serve("p3", &["tcp-serve", &p3.ipv4.to_string(), "8080", "10"])?;
    serve("p3", &["udp-echo", &p3.ipv4.to_string(), "53"])?;
    std::thread::sleep(Duration::from_millis(500));
    let steps: Vec<(&str, Option<&str>, Vec<String>)> = vec![
        (
            "web → db :5432 (allowed)",
            Some("p1"),
            vec!["tcp-send".into(), p2.ipv4.to_string(), "5432".into(), "40001".into(), "100000".into()],
        ),
        (
            "monitor → db :5432 (denied; the CNI drops it)",
            Some("p3"),
            vec!["tcp-blocked".into(), p2.ipv4.to_string(), "5432".into(), "40002".into()],
        ),
        (
            "monitor → db :9000 (denied, but it gets through)",
            Some("p3"),
            vec!["tcp-send".into(), p2.ipv4.to_string(), "9000".into(), "40003".into(), "500".into()],
        ),
        (
            "web → monitor TCP/IPv6 :443 (allowed)",
            Some("p1"),
            vec!["tcp-send".into(), p3.ipv6.to_string(), "443".into(), "40004".into(), "30000".into()],
        ),
        (
            "db → monitor UDP :53 (allowed)",
            Some("p2"),
            vec![
                "udp-send".into(),
                p3.ipv4.to_string(),
                "53".into(),
                "40005".into(),
                "10".into(),
                "300".into(),
                "1".into(),
            ],
        ),
        (
            "node-agent (host network) → monitor :8080",
            None,
            vec!["tcp-send".into(), p3.ipv4.to_string(), "8080".into(), "40006".into(), "300".into()],
        ),
    ];
    println!("== traffic");
    for (what, pod, args) in steps {
        let mut cmd = match pod {
            Some(pod) => lab.pod_command(pod, &t)?,
            None => lab.node_command_in_cgroup("hostnet", &t)?,
        };
        cmd.args(&args);
        let out = lab.output(cmd)?;
        println!("   {what}: {}", out.trim());
    }
    let mut ping = lab.pod_command("p3", "ping")?;
    ping.args(["-c", "2", "-i", "0.2", "-W", "1", &p1.ipv4.to_string()]);
    let _ = ping.stdin(std::process::Stdio::null()).output();
    println!("   monitor → web ICMP echo (denied; the CNI drops it): no reply");
    std::thread::sleep(Duration::from_millis(1500));
    let (_, metrics) = agent.get("/metrics")?;
    println!("== metrics (excerpt)");
    for line in metrics.lines().filter(|l| {
        l.starts_with("flowaudit_packets_total")
            || (l.starts_with("flowaudit_kernel_events_total") && l.contains("lost_packets"))
            || l.starts_with("flowaudit_records_written_total")
            || l.starts_with("flowaudit_attached_programs")
            || l.starts_with("flowaudit_cluster_state_version")
    }) {
        println!("   {line}");
    }
    let status = agent.stop(&mut lab).context("the agent did not exit")?;
    if !status.success() {
        bail!("the agent exited with {status}");
    }
    let records = Agent::records(&logs);
    println!("== flow log {} ({} records; lab traffic below)", logs.join("flows.log").display(), records.len());
    println!(
        "   {:<3} {:<5} {:<22} {:<20} {:>5} {:>12} {:>12} {:<6} {:<7} {:<6} {:<11} {:<14} trace",
        "rep",
        "proto",
        "source",
        "dest",
        "port",
        "out p/B",
        "in p/B",
        "action",
        "pending",
        "flow",
        "observed",
        "enforcement"
    );
    let lab_net =
        |v: &serde_json::Value| v.as_str().is_some_and(|s| s.starts_with("10.231.") || s.starts_with("fd00:fa:"));
    let name = |r: &serde_json::Value, side: &str| {
        let n = r[format!("{side}_name")].as_str().unwrap_or("-");
        let ns = r[format!("{side}_namespace")].as_str().unwrap_or("-");
        if n == "-" { r[format!("{side}_ip")].as_str().unwrap_or("-").to_owned() } else { format!("{ns}/{n}") }
    };
    for r in records.iter().filter(|r| lab_net(&r["source_ip"]) && lab_net(&r["dest_ip"])) {
        let trace: Vec<&str> = r["policies"]["enforced_policies"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!(
            "   {:<3} {:<5} {:<22} {:<20} {:>5} {:>12} {:>12} {:<6} {:<7} {:<6} {:<11} {:<14} {}",
            r["reporter"].as_str().unwrap_or(""),
            r["proto"].as_str().unwrap_or(""),
            name(r, "source"),
            name(r, "dest"),
            r["dest_port"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            format!("{}/{}", r["packets_out"], r["bytes_out"]),
            format!("{}/{}", r["packets_in"], r["bytes_in"]),
            r["action"].as_str().unwrap_or(""),
            r["pending_action"].as_str().unwrap_or(""),
            r["flow_action"].as_str().unwrap_or(""),
            r["observed"].as_str().unwrap_or(""),
            r["enforcement"].as_str().unwrap_or(""),
            if trace.is_empty() { "-".to_owned() } else { trace.join(" ") },
        );
    }
    let raw = std::fs::read_to_string(logs.join("flows.log")).unwrap_or_default();
    if let Some(line) = raw.lines().find(|l| l.contains("\"violation\"")) {
        println!("== the violation, as written in flows.log:\n{line}");
    }
    // The flow log is hash-chained: verify says whether anything was changed, removed or reordered.
    let verify =
        std::process::Command::new(flowaudit_lab::workspace_bin("flowaudit")).arg("verify").arg(&logs).output()?;
    println!(
        "== evidence: flowaudit verify {} (exit {}):\n{}",
        logs.display(),
        verify.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&verify.stdout).trim_end()
    );
    println!(
        "== try: target/debug/flowaudit explain --cluster deploy/demo --src ops/monitor --dst shop/db --port 9000"
    );
    drop(lab);
    println!("== lab removed (namespaces, veths, cgroups, processes)");
    Ok(())
}
