//! Kernel tests: the real eBPF programs in this machine's kernel, real traffic between lab pods,
//! flow-log records compared exactly with nftables counters in the node's forward hook.
//!
//! Need root (they create namespaces, veths, cgroups and load programs). Without root they say
//! so and pass, unless `FLOWAUDIT_REQUIRE_ROOT_TESTS=1` (set by `cargo xtask test`), where a
//! skip is a failure. Every test removes what it created, also when it fails (the `Lab` drop).

use std::{path::Path, time::Duration};

use flowaudit_lab::{Agent, Lab, memcg::MemoryCgroup, root_or_skip, totals, workspace_bin};
use serde_json::Value;

fn traffic() -> std::path::PathBuf {
    workspace_bin("fa-traffic")
}

/// One flow of the plan: how to find its records and the nft counters of its two directions.
struct Flow {
    name: &'static str,
    proto: &'static str,
    src: String,
    sport: Option<u64>,
    dst: String,
    dport: Option<u64>,
}

impl Flow {
    fn matches(&self, r: &Value) -> bool {
        r["proto"] == self.proto
            && r["source_ip"] == self.src.as_str()
            && r["dest_ip"] == self.dst.as_str()
            && r["source_port"].as_u64() == self.sport
            && r["dest_port"].as_u64() == self.dport
    }
}

/// The known traffic of the exact-count tests: TCP over IPv4 and IPv6 with known sizes, UDP
/// datagrams with echoes, ICMP echo, and a refused TCP connection.
///
/// `sockets_only`: the agent has the cgroup hook only, which sees what sockets send and receive.
/// A closed TCP connection can still get a packet from the kernel with no socket behind it (a RST
/// answering a straggling ACK, delivered to the peer's TIME_WAIT socket): no hook of a socket sees
/// it, only TC does. The TCP transfers' counters then leave RSTs out.
fn run_plan(lab: &mut Lab, sockets_only: bool) -> Vec<Flow> {
    let (p1, p2, p3) = (lab.pod("p1").clone(), lab.pod("p2").clone(), lab.pod("p3").clone());
    let flows = vec![
        Flow {
            name: "tcp4",
            proto: "tcp",
            src: p1.ipv4.to_string(),
            sport: Some(40001),
            dst: p2.ipv4.to_string(),
            dport: Some(5001),
        },
        Flow {
            name: "tcp6",
            proto: "tcp",
            src: p1.ipv6.to_string(),
            sport: Some(40002),
            dst: p3.ipv6.to_string(),
            dport: Some(5002),
        },
        Flow {
            name: "udp",
            proto: "udp",
            src: p2.ipv4.to_string(),
            sport: Some(40003),
            dst: p3.ipv4.to_string(),
            dport: Some(5353),
        },
        Flow {
            name: "icmp",
            proto: "icmp",
            src: p3.ipv4.to_string(),
            sport: None,
            dst: p1.ipv4.to_string(),
            dport: None,
        },
        Flow {
            name: "refused",
            proto: "tcp",
            src: p1.ipv4.to_string(),
            sport: Some(40004),
            dst: p2.ipv4.to_string(),
            dport: Some(5999),
        },
    ];
    let no_rst = if sockets_only { " tcp flags & rst == 0" } else { "" };
    let rules = vec![
        ("tcp4_fwd", format!("ip saddr {} ip daddr {} tcp sport 40001 tcp dport 5001{no_rst}", p1.ipv4, p2.ipv4)),
        ("tcp4_rev", format!("ip saddr {} ip daddr {} tcp sport 5001 tcp dport 40001{no_rst}", p2.ipv4, p1.ipv4)),
        ("tcp6_fwd", format!("ip6 saddr {} ip6 daddr {} tcp sport 40002 tcp dport 5002{no_rst}", p1.ipv6, p3.ipv6)),
        ("tcp6_rev", format!("ip6 saddr {} ip6 daddr {} tcp sport 5002 tcp dport 40002{no_rst}", p3.ipv6, p1.ipv6)),
        ("udp_fwd", format!("ip saddr {} ip daddr {} udp sport 40003 udp dport 5353", p2.ipv4, p3.ipv4)),
        ("udp_rev", format!("ip saddr {} ip daddr {} udp sport 5353 udp dport 40003", p3.ipv4, p2.ipv4)),
        ("icmp_fwd", format!("ip saddr {} ip daddr {} icmp type echo-request", p3.ipv4, p1.ipv4)),
        ("icmp_rev", format!("ip saddr {} ip daddr {} icmp type echo-reply", p1.ipv4, p3.ipv4)),
        ("refused_fwd", format!("ip saddr {} ip daddr {} tcp sport 40004 tcp dport 5999", p1.ipv4, p2.ipv4)),
        ("refused_rev", format!("ip saddr {} ip daddr {} tcp sport 5999 tcp dport 40004", p2.ipv4, p1.ipv4)),
    ];
    let rules: Vec<(&str, String)> = rules.into_iter().collect();
    lab.nft_counters(&rules).expect("nft counters");

    let t = traffic();
    let mut serve = |pod: &str, args: &[String]| {
        let mut cmd = lab.pod_command(pod, &t).expect("pod command");
        cmd.args(args);
        lab.spawn(cmd).expect("server");
    };
    serve("p2", &["tcp-serve".into(), p2.ipv4.to_string(), "5001".into(), "5000".into()]);
    serve("p3", &["tcp-serve".into(), p3.ipv6.to_string(), "5002".into(), "7000".into()]);
    serve("p3", &["udp-echo".into(), p3.ipv4.to_string(), "5353".into()]);
    std::thread::sleep(Duration::from_millis(500));

    let client = |lab: &Lab, pod: &str, args: &[String]| -> String {
        let mut cmd = lab.pod_command(pod, &t).expect("pod command");
        cmd.args(args);
        lab.output(cmd).expect("client")
    };
    let out =
        client(lab, "p1", &["tcp-send".into(), p2.ipv4.to_string(), "5001".into(), "40001".into(), "100000".into()]);
    assert_eq!(out.trim(), r#"{"sent":100000,"received":5000}"#);
    let out =
        client(lab, "p1", &["tcp-send".into(), p3.ipv6.to_string(), "5002".into(), "40002".into(), "30000".into()]);
    assert_eq!(out.trim(), r#"{"sent":30000,"received":7000}"#);
    let out = client(
        lab,
        "p2",
        &["udp-send".into(), p3.ipv4.to_string(), "5353".into(), "40003".into(), "10".into(), "300".into(), "1".into()],
    );
    assert_eq!(out.trim(), r#"{"sent":3000,"received":3000}"#);
    let out = client(lab, "p1", &["tcp-refused".into(), p2.ipv4.to_string(), "5999".into(), "40004".into()]);
    assert_eq!(out.trim(), r#"{"refused":true}"#);
    let mut ping = lab.pod_command("p3", "ping").expect("ping");
    ping.args(["-c", "3", "-i", "0.2", "-W", "2", &p1.ipv4.to_string()]);
    lab.output(ping).expect("ping");
    flows
}

/// Asserts that the `reporter` records of `flow` carry exactly the nft counts.
fn assert_exact(
    records: &[Value],
    counters: &std::collections::HashMap<String, (u64, u64)>,
    flow: &Flow,
    reporter: &str,
) {
    let fwd = counters[&format!("{}_fwd", flow.name)];
    let rev = counters[&format!("{}_rev", flow.name)];
    assert!(fwd.0 > 0, "{}: nft saw no forward packets", flow.name);
    let (p_out, b_out, p_in, b_in, n) = totals(records, reporter, |r| flow.matches(r));
    assert!(n > 0, "{}: no {reporter} record", flow.name);
    let got = match reporter {
        // src and fwd: out = what the source sent.
        "src" | "fwd" => ((p_out, b_out), (p_in, b_in)),
        // dst: in = what the destination received from the source.
        _ => ((p_in, b_in), (p_out, b_out)),
    };
    eprintln!("{:>8} {reporter}: records {got:?} nftables {:?} ({n} records)", flow.name, (fwd, rev));
    assert_eq!(got, (fwd, rev), "{} {reporter}: (source→dest, dest→source) as (packets, bytes) vs nftables", flow.name);
}

fn sum_field(records: &[Value], reporter: &str, flow: &Flow, field: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["reporter"] == reporter && flow.matches(r))
        .map(|r| r[field].as_u64().unwrap_or(0))
        .sum()
}

fn observed(records: &[Value], reporter: &str, flow: &Flow) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .filter(|r| r["reporter"] == reporter && flow.matches(r))
        .map(|r| r["observed"].as_str().unwrap_or_default().to_owned())
        .collect();
    v.dedup();
    v
}

#[test]
fn exact_counts_with_cgroup_and_tc_hooks() {
    if !root_or_skip("exact_counts_with_cgroup_and_tc_hooks") {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    let logs = tempfile::tempdir().unwrap();
    let glob = format!("fa{}p*", lab.id);
    let agent = Agent::start(&mut lab, logs.path(), &["--interfaces", &glob]).expect("agent");
    assert_eq!(agent.metric(r#"flowaudit_attached_programs{hook="tc_ingress"}"#).unwrap(), 3.0);
    let flows = run_plan(&mut lab, false);
    std::thread::sleep(Duration::from_millis(1500));
    let counters = lab.read_counters().expect("counters");
    let status = agent.stop(&mut lab).expect("agent exits");
    assert!(status.success(), "agent exit status {status}");
    let records = Agent::records(logs.path());

    for flow in &flows {
        // Both ends are local pods: one record per reporter, each with the full counts.
        assert_exact(&records, &counters, flow, "src");
        assert_exact(&records, &counters, flow, "dst");
        assert_eq!(totals(&records, "fwd", |r| flow.matches(r)).4, 0, "{}: no fwd record for local pods", flow.name);
    }
    let by_name = |n: &str| flows.iter().find(|f| f.name == n).unwrap();
    for name in ["tcp4", "tcp6"] {
        let f = by_name(name);
        for reporter in ["src", "dst"] {
            assert_eq!(sum_field(&records, reporter, f, "num_flows_started"), 1, "{name} {reporter}");
            assert_eq!(sum_field(&records, reporter, f, "num_flows_completed"), 1, "{name} {reporter}");
            assert_eq!(observed(&records, reporter, f), ["established"], "{name} {reporter}");
        }
    }
    let refused = by_name("refused");
    assert_eq!(observed(&records, "src", refused), ["rejected"]);
    assert_eq!(sum_field(&records, "src", refused, "num_flows_completed"), 1);
    assert_eq!(observed(&records, "src", by_name("udp")), ["established"]);
    let icmp: Vec<&Value> = records.iter().filter(|r| by_name("icmp").matches(r)).collect();
    assert!(icmp.iter().all(|r| r["icmp_type"] == 8 && r["icmp_code"] == 0 && r["observed"] == "established"));
    // Records name the node and carry the contract's fields.
    assert!(records.iter().all(|r| r["host"] == "lab-node" && r["action"] == "allow" && r["source_name"] == "-"));
    // The cgroup hook saw the client's socket: its cgroup id is on the src records.
    let cg = std::fs::metadata(&lab.pod("p1").cgroup).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    assert!(records.iter().filter(|r| by_name("tcp4").matches(r)).all(|r| r["source_cgroup_id"] == cg));
}

#[test]
fn exact_counts_with_the_cgroup_hook_only() {
    if !root_or_skip("exact_counts_with_the_cgroup_hook_only") {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    let logs = tempfile::tempdir().unwrap();
    let agent = Agent::start(&mut lab, logs.path(), &[]).expect("agent");
    let flows = run_plan(&mut lab, true);
    std::thread::sleep(Duration::from_millis(1500));
    let counters = lab.read_counters().expect("counters");
    assert!(agent.stop(&mut lab).expect("exit").success());
    let records = Agent::records(logs.path());
    for flow in &flows {
        // Every client socket is in a pod cgroup.
        assert_exact(&records, &counters, flow, "src");
    }
    for flow in flows.iter().filter(|f| ["tcp4", "tcp6", "udp"].contains(&f.name)) {
        // Servers are sockets in pod cgroups too.
        assert_exact(&records, &counters, flow, "dst");
    }
    for flow in flows.iter().filter(|f| ["refused", "icmp"].contains(&f.name)) {
        // The destination's kernel answered (RST, echo reply) with no socket of a pod: no dst side.
        assert_eq!(totals(&records, "dst", |r| flow.matches(r)).4, 0, "{}", flow.name);
    }
}

/// `Name:\tvalue` from a `/proc/.../status` file.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn runs_with_only_the_capabilities_it_needs_and_refuses_to_start_without_them() {
    use std::os::unix::fs::PermissionsExt as _;
    if !root_or_skip("runs_with_only_the_capabilities_it_needs_and_refuses_to_start_without_them") {
        return;
    }
    let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap().trim().parse().unwrap();
    if last_cap < 39 {
        eprintln!("skipped: this kernel has no CAP_BPF");
        return;
    }
    let mut lab = Lab::new(1).expect("lab");
    let logs = tempfile::tempdir().unwrap();
    let dir = logs.path().join("flows");

    // Without CAP_PERFMON in its bounding set, root cannot get it: the agent names it and exits 1
    // before loading or attaching anything.
    let mut cmd = lab.node_command("timeout").expect("command");
    cmd.args(["20", "setpriv", "--bounding-set=-perfmon", "--inh-caps=-all"])
        .arg(workspace_bin("flowaudit"))
        .arg("run")
        .arg("--cgroup")
        .arg(&lab.cgroup)
        .arg("--flow-log-dir")
        .arg(&dir)
        .args(["--metrics-addr", "127.0.0.1:9465"]);
    let out = cmd.output().expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("missing CAP_PERFMON: flowaudit run needs CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"),
        "{stderr}"
    );
    assert!(!dir.exists(), "nothing was created before the check");

    // As root: every thread keeps exactly CAP_NET_ADMIN (12), CAP_PERFMON (38) and CAP_BPF (39),
    // with nothing to regain them from.
    let agent = Agent::start(&mut lab, &dir, &[]).expect("agent");
    let needed = format!("{:016x}", 1u64 << 12 | 1 << 38 | 1 << 39);
    let tasks: Vec<_> =
        std::fs::read_dir(format!("/proc/{}/task", agent.pid)).unwrap().map(|t| t.unwrap().path()).collect();
    assert!(tasks.len() > 1, "the runtime's threads are there too");
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        for (field, want) in [("CapEff", &needed), ("CapPrm", &needed), ("CapBnd", &needed)] {
            assert_eq!(&status_field(&status, field), want, "{field} of {}", task.display());
        }
        assert_eq!(status_field(&status, "CapInh"), "0000000000000000", "{}", task.display());
        assert_eq!(status_field(&status, "CapAmb"), "0000000000000000", "{}", task.display());
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{}", task.display());
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o750);
    assert_eq!(mode(&dir.join("flows.log")), 0o640);
    assert!(agent.stop(&mut lab).expect("exit").success(), "detaching needs nothing it gave up");
}

#[test]
fn a_full_table_spills_to_the_ring_buffer_and_counts_every_loss() {
    if !root_or_skip("a_full_table_spills_to_the_ring_buffer_and_counts_every_loss") {
        return;
    }
    let mut lab = Lab::new(2).expect("lab");
    let logs = tempfile::tempdir().unwrap();
    let config = logs.path().join("flowaudit.yaml");
    std::fs::write(&config, "flow_table_entries: 4\nring_buffer_size: 4KiB\n").unwrap();
    let flow_dir = logs.path().join("flows");
    let agent = Agent::start(&mut lab, &flow_dir, &["--config", config.to_str().unwrap()]).expect("agent");
    let (p1, p2) = (lab.pod("p1").clone(), lab.pod("p2").clone());
    lab.nft_counters(&[(
        "spray",
        format!("ip saddr {} ip daddr {} udp sport 41000 udp dport 20000-29999", p1.ipv4, p2.ipv4),
    )])
    .unwrap();
    let mut cmd = lab.pod_command("p1", traffic()).unwrap();
    cmd.args(["udp-spray", &p2.ipv4.to_string(), "20000", "8000", "41000"]);
    let out = lab.output(cmd).expect("spray");
    assert_eq!(out.trim(), r#"{"datagrams":8000}"#);
    std::thread::sleep(Duration::from_millis(1500));
    let spilled = agent
        .metric(r#"flowaudit_kernel_events_total{counter="table_full_packets",hook="cgroup_egress"}"#)
        .unwrap() as u64;
    let lost =
        agent.metric(r#"flowaudit_kernel_events_total{counter="lost_packets",hook="cgroup_egress"}"#).unwrap() as u64;
    let lost_bytes =
        agent.metric(r#"flowaudit_kernel_events_total{counter="lost_bytes",hook="cgroup_egress"}"#).unwrap() as u64;
    let ring_read = agent.metric("flowaudit_ringbuf_events_total").unwrap() as u64;
    let counters = lab.read_counters().unwrap();
    assert!(agent.stop(&mut lab).expect("exit").success());
    let records = Agent::records(&flow_dir);
    let (packets, bytes, _, _, n) = totals(&records, "src", |r| {
        r["proto"] == "udp" && r["source_port"] == 41000 && r["dest_ip"] == p2.ipv4.to_string().as_str()
    });
    let (nft_packets, nft_bytes) = counters["spray"];
    assert_eq!(nft_packets, 8000);
    assert!(spilled > 0, "the 4-entry table never filled");
    assert_eq!(ring_read, spilled, "every spilled packet was read from the ring buffer");
    assert!(lost > 0, "a 4 KiB ring buffer did not overflow under 8000 new flows");
    // No uncounted loss: records plus counted losses are the independent count, exactly.
    assert_eq!((packets + lost, bytes + lost_bytes), (nft_packets, nft_bytes), "{n} records, {lost} lost");
}

/// One sample of a `/metrics` body (`name{labels}` exactly as exposed), 0 if absent.
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn a_flood_of_a_million_new_flows_is_counted_exactly_within_a_memory_limit() {
    if !root_or_skip("a_flood_of_a_million_new_flows_is_counted_exactly_within_a_memory_limit") {
        return;
    }
    // The DaemonSet's memory limit (deploy/base/daemonset.yaml), kernel maps included: they are
    // charged to the cgroup of the process that creates them.
    const LIMIT: u64 = 512 << 20;
    const PORTS: u16 = 50_000;
    const SPORTS: u16 = 10;
    const SENDERS: u16 = 2;
    let flows = u64::from(PORTS) * u64::from(SPORTS) * u64::from(SENDERS);
    let memory = MemoryCgroup::create(LIMIT).expect("memory cgroup");
    let mut lab = Lab::new(2).expect("lab");
    let logs = tempfile::tempdir().unwrap();
    // Default table, ring buffer and max_connections; idle_timeout longer than the test, so the
    // connection count is not lowered by expiry while the agent catches up.
    let config = logs.path().join("flowaudit.yaml");
    std::fs::write(&config, "idle_timeout: 10m\n").unwrap();
    let flow_dir = logs.path().join("flows");
    // Level 3: one record per interval and reporter, so the flow log stays small (a million
    // level-0 records would be rotated away) while the counts are summed exactly.
    let args = ["--config", config.to_str().unwrap(), "--aggregation-allowed", "3"];
    let agent = Agent::start_in(&mut lab, &[memory.dir()], &flow_dir, &args).expect("agent");
    let (p1, p2) = (lab.pod("p1").clone(), lab.pod("p2").clone());
    let flood = format!(
        "ip saddr {} ip daddr {} udp sport 41000-{} udp dport 10000-{}",
        p1.ipv4,
        p2.ipv4,
        41000 + SPORTS * SENDERS - 1,
        10000 + PORTS - 1
    );
    // Counted in p1 right before its cgroup egress hook; dropped in the node, so p2 sends no
    // port-unreachable messages back.
    lab.pod_nft_counters("p1", &[("flood", flood.clone())]).unwrap();
    lab.nft_drop(std::slice::from_ref(&flood)).unwrap();
    let metrics = || agent.get("/metrics").expect("metrics").1;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sample(&metrics(), r#"flowaudit_drains_total{reason="interval"}"#) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no drain within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past the agent's first interval (where a flow's initiator is guessed from its ports).
    let started = std::time::Instant::now();
    let sent: u64 = std::thread::scope(|s| {
        let senders: Vec<_> = (0..SENDERS)
            .map(|i| {
                let mut cmd = lab.pod_command("p1", traffic()).unwrap();
                let (ports, sports, first_sport) = (PORTS.to_string(), SPORTS.to_string(), 41000 + i * SPORTS);
                cmd.args(["udp-flood", &p2.ipv4.to_string(), "10000", &ports, &first_sport.to_string(), &sports]);
                let lab = &lab;
                s.spawn(move || lab.output(cmd).expect("udp-flood"))
            })
            .collect();
        senders
            .into_iter()
            .map(|h| {
                let out: Value = serde_json::from_str(h.join().unwrap().trim()).unwrap();
                out["datagrams"].as_u64().unwrap()
            })
            .sum()
    });
    let flood_seconds = started.elapsed().as_secs_f64();
    assert_eq!(sent, flows);
    // Wait until every packet the flood left in the table or the ring buffer is in written
    // records: a drain that started after the flood, every spilled packet read from the ring,
    // none pending, every drained batch through the pipeline (all in one scrape).
    let after = sample(&metrics(), "flowaudit_drain_duration_seconds_count");
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let body = loop {
        let body = metrics();
        let drains = sample(&body, "flowaudit_drain_duration_seconds_count");
        let spilled =
            sample(&body, r#"flowaudit_kernel_events_total{counter="table_full_packets",hook="cgroup_egress"}"#);
        if drains >= after + 1.0
            && sample(&body, "flowaudit_ringbuf_events_total") == spilled
            && sample(&body, "flowaudit_ringbuf_pending_flows") == 0.0
            && sample(&body, "flowaudit_drain_lag_seconds_count") == drains
        {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "the agent did not catch up within 240 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let caught_up = started.elapsed().as_secs_f64();
    let hwm = agent.status_bytes("VmHWM").unwrap();
    let rss = agent.status_bytes("VmRSS").unwrap();
    let maps = agent.bpf_maps().unwrap();
    let counters = lab.read_pod_counters("p1").unwrap();
    assert!(agent.stop(&mut lab).expect("exit").success(), "the agent was not killed (OOM) and exited 0");
    let peak = memory.peak().unwrap();
    assert_eq!(memory.oom_kills().unwrap(), 0, "no OOM kill in the agent's memory cgroup");
    let m = |name: &str| sample(&body, name) as u64;
    let hook =
        |counter: &str| m(&format!(r#"flowaudit_kernel_events_total{{counter="{counter}",hook="cgroup_egress"}}"#));
    let (lost, lost_bytes, spilled) = (hook("lost_packets"), hook("lost_bytes"), hook("table_full_packets"));
    let counted = m(r#"flowaudit_packets_total{hook="cgroup_egress"}"#);
    let counted_bytes = m(r#"flowaudit_bytes_total{hook="cgroup_egress"}"#);
    let entries = m(r#"flowaudit_flow_entries_total{hook="cgroup_egress"}"#);
    let tracked = m("flowaudit_connections_tracked");
    let untracked = m("flowaudit_connections_untracked_total");
    let records = Agent::records(&flow_dir);
    let (packets, bytes, _, _, n) = totals(&records, "src", |r| r["proto"] == "udp");
    let (nft_packets, nft_bytes) = counters["flood"];
    eprintln!(
        "flood: {sent} datagrams of {flows} distinct 5-tuples in {flood_seconds:.1} s ({:.0} packets/s); \
         agent caught up after {caught_up:.1} s",
        sent as f64 / flood_seconds
    );
    eprintln!("nftables: {nft_packets} packets, {nft_bytes} bytes");
    eprintln!("records: {packets} packets, {bytes} bytes in {n} records; lost: {lost} packets, {lost_bytes} bytes");
    eprintln!(
        "metrics: packets {counted}, bytes {counted_bytes}, entries {entries}, spilled to the ring buffer {spilled}"
    );
    eprintln!(
        "drains: interval {}, pending_full {}, full tables {}, fill ratio at the last {}, lag sum {:.2} s over {} batches, capture blocked {:.2} s",
        m(r#"flowaudit_drains_total{reason="interval"}"#),
        m(r#"flowaudit_drains_total{reason="pending_full"}"#),
        m("flowaudit_flow_table_full_drains_total"),
        sample(&body, "flowaudit_flow_table_fill_ratio"),
        sample(&body, "flowaudit_drain_lag_seconds_sum"),
        m("flowaudit_drain_lag_seconds_count"),
        sample(&body, "flowaudit_capture_blocked_seconds_total"),
    );
    eprintln!("connections: tracked {tracked}, untracked {untracked}");
    eprintln!(
        "memory: VmHWM {} KiB, VmRSS {} KiB, cgroup peak {} KiB of {} KiB; maps {maps:?}",
        hwm / 1024,
        rss / 1024,
        peak / 1024,
        LIMIT / 1024
    );
    // Every packet is in a record or in a loss counter: exactly the independent count.
    assert_eq!(nft_packets, flows);
    assert_eq!((packets + lost, bytes + lost_bytes), (nft_packets, nft_bytes), "records + counted losses = nftables");
    assert_eq!((counted + lost, counted_bytes + lost_bytes), (nft_packets, nft_bytes), "metrics + losses = nftables");
    assert_eq!(m("flowaudit_ringbuf_events_total"), spilled, "every spilled packet was read");
    // One packet per flow: each counted packet is one flow-table entry and one connection.
    assert_eq!(entries, counted);
    assert_eq!(tracked + untracked, counted, "every connection is remembered or counted as not");
    assert_eq!(tracked, counted.min(262_144), "max_connections (default) bounds the remembered ones");
    assert_eq!(m("flowaudit_flow_table_capacity"), 65_536);
    assert!(m("flowaudit_flow_table_full_drains_total") >= 1, "the flood filled the default table");
    assert!(peak <= LIMIT);
}

#[test]
fn interfaces_that_appear_later_are_attached_and_ones_that_go_are_forgotten() {
    if !root_or_skip("interfaces_that_appear_later_are_attached_and_ones_that_go_are_forgotten") {
        return;
    }
    let mut lab = Lab::new(2).expect("lab");
    let logs = tempfile::tempdir().unwrap();
    let glob = format!("fa{}p*", lab.id);
    let agent = Agent::start(&mut lab, logs.path(), &["--interfaces", &glob]).expect("agent");
    let tc_ingress = r#"flowaudit_attached_programs{hook="tc_ingress"}"#;
    assert_eq!(agent.metric(tc_ingress).unwrap(), 2.0);
    let p3 = lab.add_pod().expect("pod 3");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(agent.metric(tc_ingress).unwrap(), 3.0, "new veth attached within a second");
    // The server runs outside every lab cgroup: only TC on the new veth can see its side.
    let p1 = lab.pod("p1").clone();
    lab.nft_counters(&[
        ("new_fwd", format!("ip saddr {} ip daddr {} tcp dport 5003", p1.ipv4, p3.ipv4)),
        ("new_rev", format!("ip saddr {} ip daddr {} tcp sport 5003", p3.ipv4, p1.ipv4)),
    ])
    .unwrap();
    let mut server = lab.pod_command_no_cgroup(&p3.name, traffic()).unwrap();
    server.args(["tcp-serve", &p3.ipv4.to_string(), "5003", "1000"]);
    lab.spawn(server).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut client = lab.pod_command("p1", traffic()).unwrap();
    client.args(["tcp-send", &p3.ipv4.to_string(), "5003", "40005", "20000"]);
    lab.output(client).expect("client");
    lab.remove_pod("p2").expect("remove p2");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(agent.metric(tc_ingress).unwrap(), 2.0, "the deleted veth is forgotten");
    let counters = lab.read_counters().unwrap();
    assert!(agent.stop(&mut lab).expect("exit").success());
    let records = Agent::records(logs.path());
    let flow = Flow {
        name: "new",
        proto: "tcp",
        src: p1.ipv4.to_string(),
        sport: Some(40005),
        dst: p3.ipv4.to_string(),
        dport: Some(5003),
    };
    assert_exact(&records, &counters, &flow, "dst");
    assert_exact(&records, &counters, &flow, "src");
}

#[test]
fn counts_stay_exact_across_drains_under_load() {
    if !root_or_skip("counts_stay_exact_across_drains_under_load") {
        return;
    }
    // A bulk transfer through many table swaps: an increment lost or counted twice at a swap
    // would show as a difference from nftables.
    let mut lab = Lab::new(2).expect("lab");
    let logs = tempfile::tempdir().unwrap();
    let glob = format!("fa{}p*", lab.id);
    let agent =
        Agent::start(&mut lab, logs.path(), &["--interfaces", &glob, "--flush-interval", "100ms"]).expect("agent");
    let (p1, p2) = (lab.pod("p1").clone(), lab.pod("p2").clone());
    lab.nft_counters(&[
        ("bulk_fwd", format!("ip saddr {} ip daddr {} tcp sport 40007 tcp dport 5007", p1.ipv4, p2.ipv4)),
        ("bulk_rev", format!("ip saddr {} ip daddr {} tcp sport 5007 tcp dport 40007", p2.ipv4, p1.ipv4)),
    ])
    .unwrap();
    let mut server = lab.pod_command("p2", traffic()).unwrap();
    server.args(["tcp-serve", &p2.ipv4.to_string(), "5007", "0"]);
    lab.spawn(server).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut client = lab.pod_command("p1", traffic()).unwrap();
    client.args(["tcp-send", &p2.ipv4.to_string(), "5007", "40007", "600000000"]);
    lab.output(client).expect("bulk transfer");
    std::thread::sleep(Duration::from_millis(300));
    let counters = lab.read_counters().unwrap();
    let drains = agent.metric("flowaudit_drain_duration_seconds_count").unwrap();
    assert!(agent.stop(&mut lab).expect("exit").success());
    let records = Agent::records(logs.path());
    let flow = Flow {
        name: "bulk",
        proto: "tcp",
        src: p1.ipv4.to_string(),
        sport: Some(40007),
        dst: p2.ipv4.to_string(),
        dport: Some(5007),
    };
    assert_exact(&records, &counters, &flow, "src");
    assert_exact(&records, &counters, &flow, "dst");
    let intervals = totals(&records, "src", |r| flow.matches(r)).4;
    eprintln!("bulk: {intervals} src records over {drains} drains");
    assert!(intervals >= 3, "the transfer spans several intervals ({intervals} records)");
}

fn cgroup_programs(dir: &Path) -> String {
    flowaudit_lab::run("bpftool", &["cgroup", "show", dir.to_str().unwrap()]).unwrap_or_default()
}

#[test]
fn sigterm_flushes_open_flows_and_sigkill_leaves_nothing_attached() {
    if !root_or_skip("sigterm_flushes_open_flows_and_sigkill_leaves_nothing_attached") {
        return;
    }
    let mut lab = Lab::new(2).expect("lab");
    let logs = tempfile::tempdir().unwrap();
    let (p1, p2) = (lab.pod("p1").clone(), lab.pod("p2").clone());
    // An hour-long interval: only the shutdown drain can write these records. TC on the veths
    // sees the ICMP port unreachable p2 answers with (no socket listens on 6000).
    let glob = format!("fa{}p*", lab.id);
    let agent = Agent::start(&mut lab, logs.path(), &["--flush-interval", "1h", "--interfaces", &glob]).expect("agent");
    assert!(cgroup_programs(&lab.cgroup).contains("flowaudit_cg_egress"));
    lab.nft_counters(&[
        ("udp_fwd", format!("ip saddr {} ip daddr {} udp dport 6000", p1.ipv4, p2.ipv4)),
        ("udp_rev", format!("ip saddr {} ip daddr {} udp sport 6000", p2.ipv4, p1.ipv4)),
    ])
    .unwrap();
    let mut cmd = lab.pod_command("p1", traffic()).unwrap();
    cmd.args(["udp-send", &p2.ipv4.to_string(), "6000", "40006", "25", "100"]);
    lab.output(cmd).unwrap();
    let counters = lab.read_counters().unwrap();
    let status = agent.stop(&mut lab).expect("agent exits after SIGTERM");
    assert!(status.success(), "{status}");
    let records = Agent::records(logs.path());
    let (p_out, b_out, _, _, n) = totals(&records, "src", |r| r["source_port"] == 40006);
    assert_eq!(n, 1);
    let udp = records.iter().find(|r| r["reporter"] == "src" && r["source_port"] == 40006).unwrap();
    assert_eq!(udp["observed"], "rejected", "the port unreachable names the flow");
    assert_eq!((p_out, b_out), counters["udp_fwd"]);
    assert_eq!(counters["udp_fwd"].0, 25);
    assert!(!cgroup_programs(&lab.cgroup).contains("flowaudit"), "SIGTERM detaches");

    // SIGKILL: the links die with the process; the next start works.
    let agent = Agent::start(&mut lab, logs.path(), &["--interfaces", &glob]).expect("agent");
    let veth = lab.pod("p1").node_veth.clone();
    assert_eq!(
        flowaudit_lab::tcx_programs(&lab.node_netns, &veth, true).expect("BPF_PROG_QUERY"),
        1,
        "attached while running"
    );
    let pid = agent.pid;
    lab.kill(pid, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!cgroup_programs(&lab.cgroup).contains("flowaudit"), "nothing left on the cgroup after SIGKILL");
    for pod in ["p1", "p2"] {
        let veth = lab.pod(pod).node_veth.clone();
        for ingress in [true, false] {
            let n = flowaudit_lab::tcx_programs(&lab.node_netns, &veth, ingress).expect("BPF_PROG_QUERY");
            assert_eq!(n, 0, "nothing left on {veth} ({}) after SIGKILL", if ingress { "ingress" } else { "egress" });
        }
    }
    let agent = Agent::start(&mut lab, logs.path(), &["--interfaces", &glob]).expect("a new start works");
    assert!(agent.stop(&mut lab).expect("exit").success());
}

/// `deploy/demo` with the lab's cgroup filled in, copied into `dir`.
fn demo_manifests(lab: &Lab, dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo");
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap().replace("@LAB_CGROUP@", &lab.cgroup_relative());
            std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
        }
    }
}

fn one<'a>(records: &'a [Value], reporter: &str, f: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = records.iter().filter(|r| r["reporter"] == reporter && f(r)).collect();
    assert_eq!(found.len(), 1, "exactly one {reporter} record expected, got {found:#?}");
    found[0]
}

#[test]
fn identity_and_verdicts_from_manifests() {
    if !root_or_skip("identity_and_verdicts_from_manifests") {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    lab.add_cgroup("hostnet").unwrap();
    let logs = tempfile::tempdir().unwrap();
    let cluster = tempfile::tempdir().unwrap();
    demo_manifests(&lab, cluster.path());
    let (p1, p2, p3) = (lab.pod("p1").clone(), lab.pod("p2").clone(), lab.pod("p3").clone());
    lab.nft_counters(&[
        ("allowed_fwd", format!("ip saddr {} ip daddr {} tcp dport 5432 tcp sport 41001", p1.ipv4, p2.ipv4)),
        ("allowed_rev", format!("ip saddr {} ip daddr {} tcp sport 5432 tcp dport 41001", p2.ipv4, p1.ipv4)),
    ])
    .unwrap();
    // The "CNI" enforces monitor → db:5432 as denied; monitor → db:9000 is denied by policy too,
    // but gets through: a violation flowaudit must report.
    lab.nft_drop(&[format!("ip saddr {} ip daddr {} tcp dport 5432", p3.ipv4, p2.ipv4)]).unwrap();
    let glob = format!("fa{}p*", lab.id);
    // The agent also writes a snapshot of the cluster state at start, for the reports.
    let archive = tempfile::tempdir().unwrap();
    let config = logs.path().join("flowaudit.yaml");
    std::fs::write(&config, format!("snapshots: {{archive: {}, interval: 24h}}\n", archive.path().display())).unwrap();
    let agent = Agent::start(
        &mut lab,
        logs.path(),
        &[
            "--interfaces",
            &glob,
            "--flush-interval",
            "1h",
            "--cluster",
            cluster.path().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .expect("agent");
    assert_eq!(agent.metric("flowaudit_cluster_state_version").unwrap(), 0.0);
    let t = traffic();
    for (port, reply) in [("5432", "100"), ("9000", "100")] {
        let mut server = lab.pod_command("p2", &t).unwrap();
        server.args(["tcp-serve", &p2.ipv4.to_string(), port, reply]);
        lab.spawn(server).unwrap();
    }
    let mut server = lab.pod_command("p3", &t).unwrap();
    server.args(["tcp-serve", &p3.ipv4.to_string(), "8080", "10"]);
    lab.spawn(server).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let run = |lab: &Lab, mut cmd: std::process::Command, args: &[&str]| {
        cmd.args(args);
        lab.output(cmd).expect("traffic")
    };
    let ip = |p: &flowaudit_lab::Pod| p.ipv4.to_string();
    run(&lab, lab.pod_command("p1", &t).unwrap(), &["tcp-send", &ip(&p2), "5432", "41001", "2000"]);
    run(&lab, lab.pod_command("p3", &t).unwrap(), &["tcp-blocked", &ip(&p2), "5432", "41002"]);
    run(&lab, lab.pod_command("p3", &t).unwrap(), &["tcp-send", &ip(&p2), "9000", "41003", "500"]);
    // A host-network pod: a process in the node's network namespace, named by its cgroup only.
    run(&lab, lab.node_command_in_cgroup("hostnet", &t).unwrap(), &["tcp-send", &ip(&p3), "8080", "41004", "300"]);
    run(&lab, lab.pod_command("p1", &t).unwrap(), &["udp-send", &ip(&p3), "7000", "41005", "5", "100"]);
    // A policy change: ops becomes default-deny. Traffic before it keeps the old verdict.
    std::fs::write(
        cluster.path().join("ops-deny.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: ops}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent.metric("flowaudit_cluster_state_version").unwrap() < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the policy change was not applied within 5 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    run(&lab, lab.pod_command("p1", &t).unwrap(), &["udp-send", &ip(&p3), "7000", "41005", "3", "100"]);
    let counters = lab.read_counters().unwrap();
    assert_eq!(agent.metric("flowaudit_snapshots_total{result=\"success\"}").unwrap(), 1.0);
    assert!(agent.stop(&mut lab).expect("exit").success());
    let records = Agent::records(logs.path());
    let port = |p: u64| move |r: &Value| r["source_port"] == p;

    // Allowed: both ends named, the destination's trace names the allowing rule.
    let src = one(&records, "src", port(41001));
    let dst = one(&records, "dst", port(41001));
    for r in [src, dst] {
        assert_eq!(
            (r["source_name"].as_str(), r["source_namespace"].as_str(), r["source_type"].as_str()),
            (Some("web-7d9f-p1"), Some("shop"), Some("wep"))
        );
        assert_eq!(r["source_name_aggr"], "web-7d9f-*");
        assert_eq!((r["dest_name"].as_str(), r["dest_namespace"].as_str()), (Some("db"), Some("shop")));
        assert_eq!(r["dest_labels"], serde_json::json!({"labels": ["app=db", "tier=backend"]}));
        assert_eq!((r["flow_action"].as_str(), r["enforcement"].as_str()), (Some("allow"), Some("consistent")));
    }
    assert_eq!(src["policies"]["enforced_policies"], serde_json::json!([]));
    // The Calico tier passes db's sql port on to tier default, where the Kubernetes policy allows.
    assert_eq!(
        dst["policies"]["enforced_policies"],
        serde_json::json!(["0|security|gnp:security.db-guard|pass|0", "1|default|knp:shop/db-from-web|allow|0"])
    );
    let flow = Flow {
        name: "allowed",
        proto: "tcp",
        src: p1.ipv4.to_string(),
        sport: Some(41001),
        dst: p2.ipv4.to_string(),
        dport: Some(5432),
    };
    assert_exact(&records, &counters, &flow, "src");
    assert_exact(&records, &counters, &flow, "dst");

    // Denied and dropped: the destination's side denies, the packets only attempted.
    let dst = one(&records, "dst", port(41002));
    assert_eq!(
        (dst["action"].as_str(), dst["observed"].as_str(), dst["enforcement"].as_str()),
        (Some("deny"), Some("attempted"), Some("consistent"))
    );
    assert_eq!(
        dst["policies"]["enforced_policies"],
        serde_json::json!(["0|security|gnp:security.db-guard|pass|0", "1|default|knp:shop/db-from-web|deny|-1"])
    );
    let src = one(&records, "src", port(41002));
    assert_eq!((src["action"].as_str(), src["flow_action"].as_str()), (Some("allow"), Some("deny")));

    // Denied but established: a violation, on both reporters.
    for reporter in ["src", "dst"] {
        let r = one(&records, reporter, port(41003));
        assert_eq!(
            (r["flow_action"].as_str(), r["observed"].as_str(), r["enforcement"].as_str()),
            (Some("deny"), Some("established"), Some("violation"))
        );
        assert_eq!(r["num_violations"], 1);
    }
    // The Calico tier denies anything but the sql port on db.
    let r = one(&records, "dst", port(41003));
    assert_eq!(r["policies"]["enforced_policies"], serde_json::json!(["0|security|gnp:security.db-guard|deny|1"]));

    // The host-network pod is named through its cgroup.
    let r = one(&records, "src", port(41004));
    assert_eq!(
        (r["source_name"].as_str(), r["source_namespace"].as_str(), r["host_network"].as_bool()),
        (Some("node-agent"), Some("ops"), Some(true))
    );
    assert_eq!(r["dest_name"], "monitor");

    // The policy change split the UDP flow: 5 datagrams allowed before, 3 denied after.
    let udp: Vec<(String, u64)> = records
        .iter()
        .filter(|r| r["reporter"] == "dst" && r["source_port"] == 41005)
        .map(|r| (r["action"].as_str().unwrap().to_owned(), r["packets_in"].as_u64().unwrap()))
        .collect();
    assert_eq!(udp, vec![("allow".to_owned(), 5), ("deny".to_owned(), 3)]);
    // Before the change, the staged default-deny of ops already showed in the pending verdict.
    let before = records.iter().find(|r| r["reporter"] == "dst" && r["source_port"] == 41005).unwrap();
    assert_eq!((before["action"].as_str(), before["pending_action"].as_str()), (Some("allow"), Some("deny")));
    assert_eq!(before["policies"]["pending_policies"], serde_json::json!(["0|default|sknp:ops/default-deny|deny|-1"]));
    let after = records.iter().rfind(|r| r["reporter"] == "dst" && r["source_port"] == 41005).unwrap();
    assert_eq!(after["policies"]["enforced_policies"], serde_json::json!(["0|default|knp:ops/default-deny|deny|-1"]));

    // The network-access report over this run: the state at the start from the agent's snapshot,
    // replayed through its audit log (ops' default-deny came later); each endpoint's ingress from
    // its `dst` records, its egress from its `src` records, next to what its policies allow.
    let access = network_access_rows(archive.path(), logs.path());
    let db = &access["Pod.v1(shop/db)"];
    assert_eq!(db["endpointsGeneratingTrafficToThisEndpoint"], "Pod.v1(ops/monitor);Pod.v1(shop/web-7d9f-p1)");
    assert_eq!(db["endpointsReceivingTrafficFromThisEndpoint"], "");
    // db's policies admit no other namespace, yet monitor's denied connection got through.
    assert_eq!(
        (db["ingressFromOtherNamespace"].as_str(), db["observedIngressFromOtherNamespace"].as_str()),
        ("false", "true")
    );
    // Denied: monitor's dropped attempt (41002) and its violation (41003), one connection each.
    assert_eq!((db["deniedFlows"].as_str(), db["enforcementViolations"].as_str()), ("2", "1"));
    let monitor = &access["Pod.v1(ops/monitor)"];
    assert_eq!(monitor["endpointsGeneratingTrafficToThisEndpoint"], "Pod.v1(ops/node-agent);Pod.v1(shop/web-7d9f-p1)");
    // monitor sent to db, and ICMP port unreachables back to web (nothing listens on 7000).
    assert_eq!(monitor["endpointsReceivingTrafficFromThisEndpoint"], "Pod.v1(shop/db);Pod.v1(shop/web-7d9f-p1)");
    // Denied at monitor: the 3 datagrams after ops went default-deny (one flow); its egress
    // record of 41003 carries the violation.
    assert_eq!((monitor["deniedFlows"].as_str(), monitor["enforcementViolations"].as_str()), ("1", "1"));
    assert_eq!(monitor["observedEgressToOtherNamespace"], "true");
    // ops' default-deny, created mid-run, reached the report through the audit log: it applied
    // to monitor for part of the interval, so it is listed, and monitor was not protected for all of it.
    assert!(monitor["appliedPolicies"].contains("NetworkPolicy.networking.k8s.io/v1(ops/default-deny)"), "{monitor:?}");
    assert_eq!(monitor["ingressProtected"], "false");

    // CIS 5.3.1 ("the CNI supports NetworkPolicies") decided from the same flow log: the lab's
    // "CNI" dropped monitor → db:5432 but let monitor → db:9000 through.
    let out = tempfile::tempdir().unwrap();
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src/report/testdata/kube-bench/master-1.json");
    let status = std::process::Command::new(workspace_bin("flowaudit"))
        .args(["report", "cis-benchmark", "--from", "2026-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z"])
        .args(["--kube-bench".as_ref(), bench.as_os_str(), "--flow-log-dir".as_ref(), logs.path().as_os_str()])
        .args(["--out".as_ref(), out.path().as_os_str()])
        .status()
        .unwrap();
    assert!(status.success(), "flowaudit report cis-benchmark: {status}");
    let mut reader = csv::Reader::from_path(out.path().join("all-tests.csv")).unwrap();
    let row = reader.records().map(Result::unwrap).find(|r| &r[1] == "5.3.1").expect("a 5.3.1 row");
    assert_eq!((&row[3], &row[6]), ("FAIL", "flowaudit"));
    assert!(
        row[5].ends_with(
            "Flow logs: 1 connections denied by policy were established anyway (enforcement violations, \
             e.g. ops/monitor to shop/db); 1 denied connections were dropped."
        ),
        "{}",
        &row[5]
    );
}

/// `flowaudit report network-access` over an archive holding one snapshot and a flow-log
/// directory (with the audit log), from the snapshot's time to an hour from now: `endpoints.csv`
/// as endpoint → column → value.
fn network_access_rows(
    archive: &Path,
    logs: &Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
    let out = tempfile::tempdir().unwrap();
    let snapshots: Vec<String> = std::fs::read_dir(archive.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(snapshots.len(), 1, "one snapshot, written at start: {snapshots:?}");
    // 20261127T041500Z.json → 2026-11-27T04:15:00Z
    let n = &snapshots[0];
    let from = format!("{}-{}-{}T{}:{}:{}Z", &n[0..4], &n[4..6], &n[6..8], &n[9..11], &n[11..13], &n[13..15]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let rfc3339 = |secs: u64| {
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let status = std::process::Command::new(workspace_bin("flowaudit"))
        .args(["report", "network-access", "--from", &from, "--to", &rfc3339(now + 3600)])
        .args(["--archive".as_ref(), archive.as_os_str(), "--flow-log-dir".as_ref(), logs.as_os_str()])
        .args(["--audit-log".as_ref(), logs.as_os_str()])
        .args(["--out".as_ref(), out.path().as_os_str()])
        .status()
        .unwrap();
    assert!(status.success(), "flowaudit report network-access: {status}");
    let mut reader = csv::Reader::from_path(out.path().join("endpoints.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|row| {
            let row = row.unwrap();
            (row[0].to_owned(), header.iter().zip(&row).map(|(h, c)| (h.to_owned(), c.to_owned())).collect())
        })
        .collect()
}

/// A private bpffs instance mounted on a temporary directory; unmounted on drop (also on panic).
struct BpfFs {
    dir: tempfile::TempDir,
}

impl BpfFs {
    fn mount() -> BpfFs {
        let dir = tempfile::tempdir().unwrap();
        flowaudit_lab::run("mount", &["-t", "bpf", "bpf", dir.path().to_str().unwrap()]).expect("mount bpffs");
        BpfFs { dir }
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = flowaudit_lab::run("umount", &[self.dir.path().to_str().unwrap()]);
    }
}

#[test]
fn pinned_programs_count_across_a_restart_with_no_gap() {
    if !root_or_skip("pinned_programs_count_across_a_restart_with_no_gap") {
        return;
    }
    let bpffs = BpfFs::mount();
    let pin = bpffs.dir.path().join("flowaudit");
    let pin_s = pin.to_str().unwrap().to_owned();
    let mut lab = Lab::new(2).expect("lab");
    let (p1, p2) = (lab.pod("p1").clone(), lab.pod("p2").clone());
    let flow = Flow {
        name: "udp",
        proto: "udp",
        src: p1.ipv4.to_string(),
        sport: Some(40003),
        dst: p2.ipv4.to_string(),
        dport: Some(5353),
    };
    lab.nft_counters(&[
        ("udp_fwd", format!("ip saddr {} ip daddr {} udp sport 40003 udp dport 5353", p1.ipv4, p2.ipv4)),
        ("udp_rev", format!("ip saddr {} ip daddr {} udp sport 5353 udp dport 40003", p2.ipv4, p1.ipv4)),
    ])
    .expect("nft counters");
    let t = traffic();
    let mut cmd = lab.pod_command("p2", &t).expect("pod command");
    cmd.args(["udp-echo", &p2.ipv4.to_string(), "5353"]);
    lab.spawn(cmd).expect("server");
    std::thread::sleep(Duration::from_millis(500));
    let send = |lab: &Lab, count: &str| {
        let mut cmd = lab.pod_command("p1", &t).expect("pod command");
        cmd.args(["udp-send", &p2.ipv4.to_string(), "5353", "40003", count, "200", "1"]);
        lab.output(cmd).expect("udp-send")
    };
    let glob = format!("fa{}p*", lab.id);
    let extra = ["--interfaces", &glob, "--flush-interval", "1h", "--pin", "--pin-path", &pin_s];
    let logs_a = tempfile::tempdir().unwrap();
    let logs_b = tempfile::tempdir().unwrap();
    let logs_c = tempfile::tempdir().unwrap();
    let maps = pin.join("maps");

    let a = Agent::start(&mut lab, logs_a.path(), &extra).expect("agent A");
    send(&lab, "10");
    assert!(a.stop(&mut lab).expect("A exits").success());
    assert!(pin.join("links").join("cgroup-ingress").exists(), "links stay pinned after SIGTERM with --pin");
    // A crash after a swap installed the fresh table but before its pin was renamed: the
    // installed table is pinned as FLOW_TABLE_NEXT only.
    std::fs::rename(maps.join("FLOW_TABLE"), maps.join("FLOW_TABLE_NEXT")).expect("rename the pin");
    // No agent runs: the pinned programs keep counting.
    send(&lab, "7");
    let b = Agent::start(&mut lab, logs_b.path(), &extra).expect("agent B");
    assert_eq!(b.metric(r#"flowaudit_attached_programs{hook="tc_ingress"}"#).unwrap(), 2.0);
    assert_eq!(b.metric("flowaudit_drain_errors_total").unwrap(), 0.0, "B took the table over by its NEXT pin");
    send(&lab, "5");
    std::thread::sleep(Duration::from_millis(300));
    assert!(b.stop(&mut lab).expect("B exits").success());
    // A crash after a swap pinned a fresh table as FLOW_TABLE_NEXT but before it was installed:
    // that pin names a table no program writes; FLOW_TABLE is still the installed one.
    let stray = maps.join("FLOW_TABLE_NEXT");
    let _ = std::fs::remove_file(&stray);
    flowaudit_lab::run(
        "bpftool",
        &[
            "map",
            "create",
            stray.to_str().unwrap(),
            "type",
            "hash",
            "key",
            "48",
            "value",
            "48",
            "entries",
            "4",
            "name",
            "stray",
        ],
    )
    .expect("bpftool map create");
    send(&lab, "3");
    let c = Agent::start(&mut lab, logs_c.path(), &extra).expect("agent C");
    assert_eq!(c.metric("flowaudit_drain_errors_total").unwrap(), 0.0, "C took the table over by FLOW_TABLE");
    send(&lab, "2");
    std::thread::sleep(Duration::from_millis(500));
    let counters = lab.read_counters().expect("counters");
    assert!(c.stop(&mut lab).expect("C exits").success());

    let bin = workspace_bin("flowaudit");
    let out = std::process::Command::new(&bin).args(["detach", "--pin-path", &pin_s]).output().expect("detach");
    assert!(out.status.success(), "detach: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cgroup-ingress"));
    let again = std::process::Command::new(&bin).args(["detach", "--pin-path", &pin_s]).output().expect("detach");
    assert!(again.status.success(), "a second detach (nothing pinned) exits 0");
    // The bpffs root keeps only the kernel's own progs.debug and maps.debug.
    assert!(!pin.exists(), "the pin directory is gone after detach");
    let cg = flowaudit_lab::run("bpftool", &["cgroup", "show", lab.cgroup.to_str().unwrap()]).unwrap_or_default();
    assert!(!cg.contains("flowaudit"), "nothing of flowaudit attached to the cgroup after detach: {cg}");

    let mut records = Agent::records(logs_a.path());
    records.extend(Agent::records(logs_b.path()));
    records.extend(Agent::records(logs_c.path()));
    assert_eq!(counters["udp_fwd"].0, 27, "nft saw every datagram");
    for reporter in ["src", "dst"] {
        assert_exact(&records, &counters, &flow, reporter);
    }
    drop(lab);
}

/// Real traffic through the agent with two network exporters: syslog over TCP to an rsyslog in
/// the node's namespace receives every record of flows.log; an Elasticsearch exporter pointed
/// at a closed port keeps every record in its spool, counted, while `/readyz` stays 200 (a SIEM
/// outage must not restart node agents).
#[test]
fn exporters_deliver_every_record_of_real_traffic_and_a_dead_sink_does_not_touch_readiness() {
    use flowaudit_lab::sinks::{self, Rsyslog};
    if !root_or_skip("exporters_deliver_every_record_of_real_traffic") {
        return;
    }
    if !sinks::available("exporters with real traffic", &[("rsyslog + rsyslog-gnutls", Rsyslog::installed())]) {
        return;
    }
    let mut lab = Lab::new(2).expect("lab");
    let p2 = lab.pod("p2").clone();
    let srv = tempfile::tempdir().unwrap();
    let rsyslog = Rsyslog::start_in(srv.path(), Some(&lab.node_netns)).expect("rsyslog in the node namespace");
    let logs = tempfile::tempdir().unwrap();
    let config = logs.path().join("flowaudit.yaml");
    std::fs::write(
        &config,
        format!(
            "exporters:\n\
             - {{name: file, type: file}}\n\
             - {{name: siem, type: syslog, address: 'tcp://127.0.0.1:{}', log_types: [flows], batch_timeout: 200ms}}\n\
             - {{name: es, type: elasticsearch, url: 'http://127.0.0.1:1', log_types: [flows], retry_max: 1s}}\n",
            rsyslog.tcp
        ),
    )
    .unwrap();
    let t = traffic();
    let mut cmd = lab.pod_command("p2", &t).expect("pod command");
    cmd.args(["udp-echo", &p2.ipv4.to_string(), "5353"]);
    lab.spawn(cmd).expect("server");
    std::thread::sleep(Duration::from_millis(300));
    let agent = Agent::start(&mut lab, logs.path(), &["--config", config.to_str().unwrap()]).expect("agent");
    for sport in 41000..41020 {
        let mut cmd = lab.pod_command("p1", &t).expect("pod command");
        cmd.args(["udp-send", &p2.ipv4.to_string(), "5353", &sport.to_string(), "3", "100", "1"]);
        lab.output(cmd).expect("udp-send");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.get("/readyz").unwrap().0, 200, "ready while the es sink is down");
    assert!(agent.metric(r#"flowaudit_export_records_failed_total{exporter="es"}"#).unwrap() > 0.0);
    assert!(agent.stop(&mut lab).expect("agent exits").success());

    let lines: Vec<String> =
        std::fs::read_to_string(logs.path().join("flows.log")).unwrap().lines().map(str::to_owned).collect();
    assert!(lines.len() >= 40, "20 flows, both reporters: {} records", lines.len());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let received = loop {
        let got: Vec<String> = rsyslog.messages().into_iter().map(|(_, m)| m).collect();
        if got.len() >= lines.len() || std::time::Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut want = lines.clone();
    want.sort();
    let mut got = received.clone();
    got.sort();
    assert_eq!(got, want, "rsyslog holds exactly the records of flows.log");
    // Every record the es sink could not take waits in its spool: nothing was dropped.
    let spooled: usize = std::fs::read_dir(logs.path().join("state/spool/es"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".flows"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().lines().count())
        .sum();
    assert_eq!(spooled, lines.len(), "the es spool holds every record");
}
