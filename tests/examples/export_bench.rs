//! Records per second per exporter and encoding, on one core, against the real servers of the
//! exporter tests (rsyslog, osmem-server, Tansu, Rotel) on loopback.
//!
//! For each (exporter, encoding): a fresh `Outputs` on a single-threaded runtime (the agent's
//! side gets one core; the servers run on the other), 50,000 records submitted in flushes of
//! 1,000, then `close` waits until the sink accepted them all (spool written, synced, sent,
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
use flowaudit_lab::sinks::{Osmem, Rotel, Rsyslog, Tansu};
use prometheus::Registry;
use serde_json::{Value, json};

const RECORDS: u32 = 50_000;
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

/// (records per second, records accepted).
fn run(entry: Value, dir: &std::path::Path) -> (f64, f64) {
    let raw: Vec<RawExporter> = serde_json::from_value(json!([entry])).expect("valid entry");
    let defaults = Defaults {
        flow_log_dir: dir.join("logs"),
        max_file_size: 1 << 30,
        max_files: 2,
        spool_root: dir.join("spool"),
    };
    let cfg = resolve(Some(&raw), &defaults).expect("valid exporter");
    let name = cfg[0].name.clone();
    let is_file = entry["type"] == "file";
    let batches: Vec<Vec<FlowRecord>> = (0..RECORDS / FLUSH).map(|b| records(b * FLUSH, FLUSH)).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let registry = Registry::new();
        let mut out = Outputs::start(cfg, "bench-node", &registry, Default::default()).expect("start");
        let start = Instant::now();
        for b in &batches {
            out.write_flows(b);
            tokio::task::yield_now().await;
        }
        out.close(Duration::from_secs(300)).await;
        let secs = start.elapsed().as_secs_f64();
        let accepted = if is_file { f64::from(RECORDS) } else { sent(&registry, &name) };
        (accepted / secs, accepted)
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
    let rotel = Rotel::start(&srv("rotel")).expect("rotel (cargo xtask setup)");
    let ca = rsyslog.ca.display().to_string();
    let sinks: Vec<(&str, Value)> = vec![
        ("file (baseline)", json!({"type": "file"})),
        ("syslog tcp (rsyslog)", json!({"type": "syslog", "address": format!("tcp://127.0.0.1:{}", rsyslog.tcp)})),
        (
            "syslog tls (rsyslog)",
            json!({"type": "syslog", "address": format!("tls://127.0.0.1:{}", rsyslog.tls), "ca_file": ca}),
        ),
        (
            "elasticsearch _bulk (osmem-server)",
            json!({"type": "elasticsearch", "url": format!("http://127.0.0.1:{}", es.port)}),
        ),
        ("kafka (Tansu)", json!({"type": "kafka", "brokers": [format!("127.0.0.1:{}", kafka.port)], "topic": "flows"})),
        ("otlp/http (Rotel)", json!({"type": "otlp", "url": format!("http://127.0.0.1:{}", rotel.port)})),
    ];
    let encodings = ["calico", "ecs", "ocsf", "cef"];
    println!("| exporter | {} |", encodings.join(" | "));
    println!("|---|{}", "---:|".repeat(encodings.len()));
    let mut n = 0;
    for (label, base) in &sinks {
        let mut row = format!("| {label} |");
        for enc in encodings {
            n += 1;
            let mut entry = base.clone();
            entry["name"] = json!(format!("x{n}"));
            entry["encoding"] = json!(enc);
            entry["log_types"] = json!(["flows"]);
            let run_dir = dir.path().join(format!("run{n}"));
            let (rate, accepted) = run(entry, &run_dir);
            if accepted < f64::from(RECORDS) {
                row.push_str(&format!(" {:.0}k/s ({accepted} of {RECORDS} accepted) |", rate / 1e3));
            } else {
                row.push_str(&format!(" {:.0}k/s |", rate / 1e3));
            }
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        println!("{row}");
    }
}
