//! Records per second per exporter and encoding, on one core, against the real servers of the
//! exporter tests (rsyslog, osmem-server, Tansu, Rotel, ClickHouse) on loopback.
//!
//! For each (exporter, encoding): a fresh `Outputs` on a single-threaded runtime (the agent's
//! side gets one core; the servers run on the other), 50,000 records (2,000 for the slow
//! OpenSearch emulator) submitted in flushes of 1,000, then `close` waits until the sink accepted them all (spool written, synced, sent,
//! removed). Rate = records ÷ (first submit → last acceptance). The `file` exporter is the
//! baseline: the local write every deployment has. Prints a Markdown table; never asserts on
//! time. Run by `cargo xtask bench`.

use std::time::{Duration, Instant};

use flowaudit::{
    model::FlowRecord,
    output::{
        Outputs,
        export::config::{Defaults, RawExporter, resolve},
    },
};
use flowaudit_lab::sinks::{ClickHouse, Osmem, Rotel, Rsyslog, Tansu};
use prometheus::Registry;
use serde_json::{Value, json};

const FLUSH: u32 = 1_000;

fn records(first: u32, n: u32) -> Vec<FlowRecord> {
    (first..first + n)
        .map(|i| {
            let mut r = FlowRecord::sample("10.1.0.1", 10_000 + (i % 50_000) as u16, "10.2.0.2", 443);
            r.id = format!("{i:016x}");
            r.bytes_in = u64::from(i);
            r
        })
        .collect()
}

fn sent(registry: &Registry, exporter: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "flowaudit_export_records_sent_total")
        .flat_map(|f| f.get_metric().iter())
        .find(|m| m.get_label().iter().any(|l| l.value() == exporter))
        .map_or(0.0, |m| m.get_counter().get_value())
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// (records per second, records accepted, agent-side CPU µs per record) for `records` records.
fn run(entry: Value, dir: &std::path::Path, records_n: u32) -> (f64, f64, f64) {
    let raw: Vec<RawExporter> = serde_json::from_value(json!([entry])).expect("valid entry");
    let defaults = Defaults {
        flow_log_dir: dir.join("logs"),
        max_file_size: 1 << 30,
        max_files: 2,
        spool_root: dir.join("spool"),
        log_types: flowaudit::output::export::config::AGENT_LOG_TYPES,
    };
    let cfg = resolve(Some(&raw), &defaults).expect("valid exporter");
    let name = cfg[0].name.clone();
    let is_file = entry["type"] == "file";
    let batches: Vec<Vec<FlowRecord>> = (0..records_n / FLUSH).map(|b| records(b * FLUSH, FLUSH)).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let registry = Registry::new();
        let mut out = Outputs::start(cfg, "bench-node", &registry, Default::default()).expect("start");
        let cpu = cpu_seconds();
        let start = Instant::now();
        for b in &batches {
            out.write_flows(b);
            tokio::task::yield_now().await;
        }
        out.close(Duration::from_secs(120)).await;
        let secs = start.elapsed().as_secs_f64();
        let cpu_us = (cpu_seconds() - cpu) * 1e6 / f64::from(records_n);
        let accepted = if is_file { f64::from(records_n) } else { sent(&registry, &name) };
        (accepted / secs, accepted, cpu_us)
    })
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        d
    };
    let rsyslog = Rsyslog::start(&srv("rsyslog")).expect("rsyslog (cargo xtask setup)");
    let es = Osmem::start(&srv("osmem")).expect("osmem-server (cargo xtask setup)");
    let kafka = Tansu::start(&srv("tansu")).expect("tansu (cargo xtask setup)");
    kafka.create_topic("flows", 1).expect("topic");
    let rotel = Rotel::start_with(&srv("rotel"), false).expect("rotel (cargo xtask setup)");
    let clickhouse = ClickHouse::start(&srv("clickhouse")).expect("clickhouse-server (cargo xtask setup)");
    let ca = rsyslog.ca.display().to_string();
    // (label, entry, records): osmem-server indexes every document in memory and slows down as
    // its index grows (0.5k/s at 10,000 documents), so it gets fewer records and smaller batches;
    // its row measures the emulator more than the exporter.
    let sinks: Vec<(&str, Value, u32)> = vec![
        ("file (baseline)", json!({"type": "file"}), 50_000),
        (
            "syslog tcp (rsyslog)",
            json!({"type": "syslog", "address": format!("tcp://127.0.0.1:{}", rsyslog.tcp)}),
            50_000,
        ),
        (
            "syslog tls (rsyslog)",
            json!({"type": "syslog", "address": format!("tls://127.0.0.1:{}", rsyslog.tls), "ca_file": ca}),
            50_000,
        ),
        (
            "elasticsearch _bulk (osmem-server emulator)",
            json!({"type": "elasticsearch", "url": format!("http://127.0.0.1:{}", es.port), "batch_max_records": 200, "timeout": "60s"}),
            2_000,
        ),
        (
            "kafka (Tansu)",
            json!({"type": "kafka", "brokers": [format!("127.0.0.1:{}", kafka.port)], "topic": "flows"}),
            50_000,
        ),
        ("otlp/http (Rotel)", json!({"type": "otlp", "url": format!("http://127.0.0.1:{}", rotel.port)}), 50_000),
        (
            "clickhouse (18.16)",
            json!({"type": "clickhouse", "url": format!("http://127.0.0.1:{}", clickhouse.http)}),
            50_000,
        ),
    ];
    let encodings = ["calico", "ecs", "ocsf", "cef"];
    println!("| exporter | {} |", encodings.join(" | "));
    println!("|---|{}", "---:|".repeat(encodings.len()));
    let mut n = 0;
    // `FLOWAUDIT_BENCH_ONLY=otlp` (a type) measures one exporter, e.g. under a profiler.
    let only = std::env::var("FLOWAUDIT_BENCH_ONLY").ok();
    for (label, base, records_n) in &sinks {
        if only.as_deref().is_some_and(|t| base["type"] != t) {
            continue;
        }
        let mut row = format!("| {label} |");
        for enc in encodings {
            if enc == "cef" && base["type"] == "elasticsearch" {
                row.push_str(" n/a (CEF is not JSON) |");
                continue;
            }
            if enc != "calico" && base["type"] == "clickhouse" {
                row.push_str(" n/a (calico only) |");
                continue;
            }
            n += 1;
            let mut entry = base.clone();
            entry["name"] = json!(format!("x{n}"));
            entry["encoding"] = json!(enc);
            entry["log_types"] = json!(["flows"]);
            if base["type"] == "elasticsearch" {
                // One index per encoding: `host` is a string in calico and an object in ECS, and
                // a real Elasticsearch refuses the second mapping just as the emulator does.
                entry["index"] = json!(format!("bench-{enc}-%Y"));
            }
            let run_dir = dir.path().join(format!("run{n}"));
            let (rate, accepted, cpu_us) = run(entry, &run_dir, *records_n);
            if accepted < f64::from(*records_n) {
                row.push_str(&format!(" {:.1}k/s ({accepted} of {records_n} accepted) |", rate / 1e3));
            } else {
                row.push_str(&format!(" {:.1}k/s, {cpu_us:.1} µs CPU |", rate / 1e3));
            }
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        println!("{row}");
    }
}
