//! Exporters against real servers on loopback: rsyslog (UDP, TCP, TLS), an OpenSearch-API
//! emulator (osmem-server: no real Elasticsearch runs here), a Kafka-protocol broker (Tansu), an
//! OTLP collector (Rotel), and a Splunk HEC stand-in (no Splunk runs here: a small HTTP server in
//! this file plays HEC's documented answers, and says so).
//!
//! Every test writes through `Outputs` with a `file` exporter beside the network one, so "every
//! record of flows.log arrives" is checked literally: the sink's records are compared with the
//! lines of the `flows.log` written in the same run. No root needed.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use flowaudit::{
    model::FlowRecord,
    output::{
        Outputs,
        export::config::{Defaults, ExporterConfig, RawExporter, resolve},
    },
};
use flowaudit_lab::sinks::{self, Osmem, Rotel, Rsyslog, Tansu};
use prometheus::Registry;
use serde_json::{Value, json};

const NODE: &str = "node-1";

fn exporters(entries: Value, dir: &Path) -> Vec<ExporterConfig> {
    let raw: Vec<RawExporter> = serde_json::from_value(entries).expect("valid entries");
    resolve(
        Some(&raw),
        &Defaults {
            flow_log_dir: dir.join("logs"),
            max_file_size: 1 << 30,
            max_files: 5,
            spool_root: dir.join("spool"),
        },
    )
    .expect("valid exporters")
}

/// `n` distinct records starting at `first`.
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

fn flows_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("logs/flows.log")).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            let ok = labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v));
            if ok {
                return if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                };
            }
        }
    }
    0.0
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not done after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Received copies of each line: every line of `expected` arrived, nothing else did; returns the
/// number of duplicates.
fn assert_every_line_arrived(sink: &str, expected: &[String], received: &[String]) -> usize {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in received {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = expected.iter().filter(|l| !counts.contains_key(l.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{sink}: {} of {} records never arrived, first {:?}",
        missing.len(),
        expected.len(),
        missing.first()
    );
    let unexpected = counts.keys().filter(|k| !expected.iter().any(|e| e == *k)).count();
    assert_eq!(unexpected, 0, "{sink}: records arrived that flows.log does not hold");
    received.len() - counts.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_udp_tcp_and_tls_delivers_every_record_as_rfc5424() {
    if !sinks::available("syslog", &[("rsyslog + rsyslog-gnutls", Rsyslog::installed())]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rsyslog = Rsyslog::start(dir.path()).unwrap();
    let ca = rsyslog.ca.display().to_string();
    let cfg = exporters(
        json!([
            {"name": "file", "type": "file"},
            {"name": "udp", "type": "syslog", "address": format!("udp://127.0.0.1:{}", rsyslog.udp), "log_types": ["flows"]},
            {"name": "tcp", "type": "syslog", "address": format!("tcp://127.0.0.1:{}", rsyslog.tcp), "app_name": "fa-tcp"},
            {"name": "tls", "type": "syslog", "address": format!("tls://127.0.0.1:{}", rsyslog.tls), "ca_file": ca, "app_name": "fa-tls"},
            {"name": "cef", "type": "syslog", "address": format!("tcp://127.0.0.1:{}", rsyslog.tcp), "app_name": "fa-cef",
             "encoding": "cef", "log_types": ["flows"]},
        ]),
        dir.path(),
    );
    let registry = Registry::new();
    let mut out = Outputs::start(cfg, NODE, &registry, Default::default()).unwrap();
    // Small batches so that UDP stays well inside the socket buffers.
    for chunk in records(0, 300).chunks(30) {
        out.write_flows(chunk);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let audit = json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "verb": "create",
        "objectRef": {"resource": "networkpolicies", "namespace": "ns1", "name": "deny"}});
    out.write_audit(std::slice::from_ref(&audit));
    out.close(Duration::from_secs(20)).await;
    let expected = flows_log(dir.path());
    assert_eq!(expected.len(), 300);
    let start = Instant::now();
    while rsyslog.messages().len() < 1202 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raw = std::fs::read_to_string(&rsyslog.out).unwrap();
    let per_app = |app: &str| raw.lines().filter(|l| l.split(' ').nth(3) == Some(app)).count();
    assert_eq!(
        (per_app("flowaudit"), per_app("fa-tcp"), per_app("fa-tls")),
        (300, 301, 301),
        "messages per exporter (udp, tcp, tls); udp sent {} failed {}; rsyslog log: {}",
        metric(&registry, "flowaudit_export_records_sent_total", &[("exporter", "udp")]),
        metric(&registry, "flowaudit_export_records_failed_total", &[("exporter", "udp")]),
        std::fs::read_to_string(&rsyslog.server.log).unwrap_or_default()
    );

    for app in ["flowaudit", "fa-tcp", "fa-tls"] {
        let msgs: Vec<String> = raw
            .lines()
            .filter(|l| l.split(' ').nth(3) == Some(app) && l.split(' ').nth(5) == Some("flow"))
            .map(|l| l.splitn(8, ' ').nth(7).unwrap().to_owned())
            .collect();
        let dups = assert_every_line_arrived(app, &expected, &msgs);
        assert_eq!(dups, 0, "{app}: no outage, no duplicates");
        // PRI 134 = local0.info, version 1, the node as HOSTNAME, MSGID flow.
        let first = raw.lines().find(|l| l.split(' ').nth(3) == Some(app)).unwrap();
        assert!(first.starts_with("<134>1 "), "{first}");
        assert_eq!(first.split(' ').nth(2), Some(NODE));
    }
    // CEF over syslog: one CEF line per record, addresses and ports as CEF keys.
    let cef: Vec<&str> = raw
        .lines()
        .filter(|l| l.split(' ').nth(3) == Some("fa-cef"))
        .map(|l| l.splitn(8, ' ').nth(7).unwrap())
        .collect();
    assert_eq!(cef.len(), 300);
    assert!(cef.iter().all(|m| m.starts_with("CEF:0|flowaudit|flowaudit|")), "{}", cef[0]);
    assert!(
        cef[0].contains("src=10.1.0.1") && cef[0].contains("dst=10.2.0.2") && cef[0].contains("dpt=443"),
        "{}",
        cef[0]
    );
    let audits: Vec<&str> = raw.lines().filter(|l| l.split(' ').nth(5) == Some("audit")).collect();
    assert_eq!(audits.len(), 2, "audit goes to tcp and tls, not to udp (log_types: [flows])");
    assert!(audits.iter().all(|l| l.starts_with("<133>1 ") && l.ends_with(&audit.to_string())));
    for name in ["udp", "tcp", "tls"] {
        assert_eq!(
            metric(&registry, "flowaudit_export_records_sent_total", &[("exporter", name)]),
            if name == "udp" { 300.0 } else { 301.0 },
            "{name}"
        );
        assert_eq!(metric(&registry, "flowaudit_export_spool_records", &[("exporter", name)]), 0.0);
    }
}

/// The sink is down for 30 s in the middle of traffic (`FLOWAUDIT_SINK_OUTAGE_SECS` to change)
/// and comes back: every record of flows.log arrives; duplicates are counted, not forbidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_outage_in_the_middle_of_traffic_loses_nothing() {
    if !sinks::available("outage", &[("rsyslog + rsyslog-gnutls", Rsyslog::installed())]) {
        return;
    }
    let outage: u64 = std::env::var("FLOWAUDIT_SINK_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let mut rsyslog = Rsyslog::start(dir.path()).unwrap();
    let cfg = exporters(
        json!([
            {"name": "file", "type": "file"},
            {"name": "siem", "type": "syslog", "address": format!("tcp://127.0.0.1:{}", rsyslog.tcp),
             "retry_initial": "200ms", "retry_max": "2s", "batch_timeout": "200ms"},
        ]),
        dir.path(),
    );
    let registry = Registry::new();
    let mut out = Outputs::start(cfg, NODE, &registry, Default::default()).unwrap();
    let start = Instant::now();
    let total = Duration::from_secs(outage + 10);
    let (mut next, mut stopped, mut restarted) = (0u32, false, false);
    while start.elapsed() < total {
        out.write_flows(&records(next, 10));
        next += 10;
        if !stopped && start.elapsed() >= Duration::from_secs(4) {
            rsyslog.server.stop();
            stopped = true;
            eprintln!("outage: rsyslog stopped after {next} records");
        }
        if stopped && !restarted && start.elapsed() >= Duration::from_secs(4 + outage) {
            rsyslog.restart().unwrap();
            restarted = true;
            eprintln!("outage: rsyslog back after {next} records");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.close(Duration::from_secs(30)).await;
    let expected = flows_log(dir.path());
    assert_eq!(expected.len(), next as usize);
    wait_until("every record at rsyslog", Duration::from_secs(30), || {
        let got: std::collections::BTreeSet<String> = rsyslog.messages().into_iter().map(|(_, m)| m).collect();
        expected.iter().all(|l| got.contains(l))
    })
    .await;
    let received: Vec<String> = rsyslog.messages().into_iter().map(|(_, m)| m).collect();
    let dups = assert_every_line_arrived("outage", &expected, &received);
    let failed = metric(&registry, "flowaudit_export_records_failed_total", &[("exporter", "siem")]);
    let resent = metric(&registry, "flowaudit_export_records_resent_total", &[("exporter", "siem")]);
    eprintln!(
        "outage of {outage}s: {} records, all arrived; {dups} duplicates; {failed} records in failed attempts; {resent} resent",
        expected.len()
    );
    assert!(failed > 0.0, "the outage was seen");
    assert!(dups as f64 <= resent + failed, "every duplicate is accounted for by a resend or a retried attempt");
    assert_eq!(
        metric(&registry, "flowaudit_export_records_dropped_total", &[("exporter", "siem"), ("reason", "spool_full")]),
        0.0
    );
}

/// The agent stops with a non-empty spool; the next start delivers it. Then a spool at its cap
/// drops its oldest batches, counted, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_survives_a_restart_and_its_cap_drops_only_the_oldest_counted() {
    if !sinks::available("spool", &[("rsyslog + rsyslog-gnutls", Rsyslog::installed())]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = sinks::free_port();
    let entries = |cap: &str| {
        json!([
            {"name": "file", "type": "file"},
            {"name": "siem", "type": "syslog", "address": format!("tcp://127.0.0.1:{port}"),
             "batch_max_records": 50, "batch_timeout": "100ms", "retry_initial": "100ms", "retry_max": "500ms",
             "spool_max_size": cap},
        ])
    };
    // 1. The sink is down: 200 records wait in the spool when the agent stops.
    let registry = Registry::new();
    let mut out = Outputs::start(exporters(entries("10MiB"), dir.path()), NODE, &registry, Default::default()).unwrap();
    out.write_flows(&records(0, 200));
    out.close(Duration::from_millis(500)).await;
    let spooled: Vec<_> =
        std::fs::read_dir(dir.path().join("spool/siem")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(spooled.len(), 4, "four batches of 50 wait: {spooled:?}");
    assert_eq!(metric(&registry, "flowaudit_export_records_sent_total", &[("exporter", "siem")]), 0.0);

    // 2. The sink is back; a new process takes the spool over and delivers it.
    let srv_dir = dir.path().join("rsyslog");
    std::fs::create_dir(&srv_dir).unwrap();
    let mut rsyslog = Rsyslog::start(&srv_dir).unwrap();
    let cfg = exporters(entries("10MiB"), dir.path());
    let cfg: Vec<ExporterConfig> = cfg
        .into_iter()
        .map(|mut c| {
            if let flowaudit::output::export::config::SinkConfig::Syslog { address, .. } = &mut c.sink {
                *address = format!("127.0.0.1:{}", rsyslog.tcp);
            }
            c
        })
        .collect();
    let registry = Registry::new();
    let out = Outputs::start(cfg.clone(), NODE, &registry, Default::default()).unwrap();
    let expected = flows_log(dir.path());
    wait_until("the spool delivered", Duration::from_secs(20), || rsyslog.messages().len() >= 200).await;
    out.close(Duration::from_secs(10)).await;
    let received: Vec<String> = rsyslog.messages().into_iter().map(|(_, m)| m).collect();
    assert_eq!(assert_every_line_arrived("restart", &expected, &received), 0);
    assert_eq!(metric(&registry, "flowaudit_export_records_sent_total", &[("exporter", "siem")]), 200.0);
    assert_eq!(std::fs::read_dir(dir.path().join("spool/siem")).unwrap().count(), 0, "the spool is empty");

    // 3. The sink is down again and the spool is capped at about three batches: of ten batches
    // the oldest go, counted; the newest arrive when the sink returns.
    rsyslog.server.stop();
    let one_batch: u64 = records(1000, 50).iter().map(|r| serde_json::to_vec(r).unwrap().len() as u64 + 40).sum();
    let mut cfg3 = cfg.clone();
    for c in &mut cfg3 {
        c.delivery.spool_max_bytes = one_batch * 3 + one_batch / 2;
    }
    let registry = Registry::new();
    let mut out = Outputs::start(cfg3.clone(), NODE, &registry, Default::default()).unwrap();
    let before = flows_log(dir.path()).len();
    for i in 0..10 {
        out.write_flows(&records(1000 + i * 50, 50));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    out.close(Duration::from_millis(300)).await;
    let dropped =
        metric(&registry, "flowaudit_export_records_dropped_total", &[("exporter", "siem"), ("reason", "spool_full")]);
    let spool_records = metric(&registry, "flowaudit_export_spool_records", &[("exporter", "siem")]);
    eprintln!("cap: {dropped} records dropped, {spool_records} kept");
    assert!(dropped > 0.0, "the cap was reached");
    assert_eq!(dropped + spool_records, 500.0, "every record is either kept or counted as dropped");
    rsyslog.restart().unwrap();
    let registry = Registry::new();
    let out = Outputs::start(cfg3, NODE, &registry, Default::default()).unwrap();
    wait_until("the kept batches delivered", Duration::from_secs(20), || {
        rsyslog.messages().len() >= 200 + spool_records as usize
    })
    .await;
    out.close(Duration::from_secs(10)).await;
    let all = flows_log(dir.path());
    let new = &all[before..];
    let received: Vec<String> = rsyslog.messages().into_iter().skip(200).map(|(_, m)| m).collect();
    let kept = spool_records as usize;
    assert_eq!(
        received,
        new[new.len() - kept..].to_vec(),
        "the newest records arrive, in order; the oldest were dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_bulk_indexes_every_record_once() {
    if !sinks::available("elasticsearch", &[("osmem-server", Osmem::binary().is_some())]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let es = Osmem::start(dir.path()).unwrap();
    let cfg = exporters(
        json!([
            {"name": "file", "type": "file"},
            {"name": "es", "type": "elasticsearch", "url": format!("http://127.0.0.1:{}", es.port), "batch_max_records": 100},
            {"name": "es-ecs", "type": "elasticsearch", "url": format!("http://127.0.0.1:{}", es.port), "batch_max_records": 100,
             "encoding": "ecs", "index": "ecs-flows-%Y.%m.%d"},
        ]),
        dir.path(),
    );
    let registry = Registry::new();
    let mut out = Outputs::start(cfg, NODE, &registry, Default::default()).unwrap();
    out.write_flows(&records(0, 250));
    out.write_flows(&records(0, 50)); // the same 50 records again: same _id, no new documents
    out.close(Duration::from_secs(20)).await;
    let index = format!("flowaudit-flows-{}", jiff_free_date());
    let docs = es.documents(&index).unwrap();
    assert_eq!(docs.len(), 250, "300 sent, 250 distinct documents");
    let expected: Vec<Value> = flows_log(dir.path()).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    for d in &docs {
        assert!(expected.contains(d), "an indexed document equals a flows.log line");
    }
    assert_eq!(metric(&registry, "flowaudit_export_records_sent_total", &[("exporter", "es")]), 300.0);
    // The same records in ECS: 250 documents with ECS fields.
    let ecs = es.documents(&format!("ecs-flows-{}", jiff_free_date())).unwrap();
    assert_eq!(
        ecs.len(),
        250,
        "dead letters: {:?}",
        std::fs::read_to_string(dir.path().join("spool/es-ecs/dead-letter.log"))
    );
    assert!(ecs.iter().all(|d| d["source"]["ip"] == "10.1.0.1"
        && d["destination"]["port"] == 443
        && d["network"]["transport"] == "tcp"));
    assert!(metric(&registry, "flowaudit_export_last_success_timestamp_seconds", &[("exporter", "es")]) > 0.0);
}

/// Today's UTC date as `%Y.%m.%d`, from `date` (the test does not link a date library).
fn jiff_free_date() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y.%m.%d"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_gets_every_record_keyed_by_node_and_flow() {
    if !sinks::available("kafka", &[("tansu", Tansu::binary().is_some())]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(dir.path()).unwrap();
    broker.create_topic("flows", 1).unwrap();
    let cfg = exporters(
        json!([
            {"name": "file", "type": "file"},
            {"name": "bus", "type": "kafka", "brokers": [format!("127.0.0.1:{}", broker.port)], "topic": "flows",
             "compression": "gzip", "log_types": ["flows"]},
        ]),
        dir.path(),
    );
    let registry = Registry::new();
    let mut out = Outputs::start(cfg, NODE, &registry, Default::default()).unwrap();
    out.write_flows(&records(0, 200));
    out.close(Duration::from_secs(20)).await;
    assert_eq!(metric(&registry, "flowaudit_export_records_sent_total", &[("exporter", "bus")]), 200.0);

    let client = rskafka::client::ClientBuilder::new(vec![format!("127.0.0.1:{}", broker.port)]).build().await.unwrap();
    let pc =
        client.partition_client("flows", 0, rskafka::client::partition::UnknownTopicHandling::Error).await.unwrap();
    let mut got = Vec::new();
    let mut offset = 0;
    while got.len() < 200 {
        let (batch, _) = pc.fetch_records(offset, 1..1_000_000, 1_000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for r in batch {
            offset = r.offset + 1;
            got.push(r.record);
        }
    }
    let values: Vec<String> = got.iter().map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap()).collect();
    let expected = flows_log(dir.path());
    assert_eq!(values, expected, "in order, once each");
    assert_eq!(
        String::from_utf8(got[0].key.clone().unwrap()).unwrap(),
        format!("{NODE}/tcp/10.1.0.1:10000/10.2.0.2:443")
    );
    assert_eq!(got[0].headers.get("log_type").map(Vec::as_slice), Some(b"flows".as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_logs_reach_a_collector_one_log_record_per_flow() {
    if !sinks::available("otlp", &[("rotel", Rotel::binary().is_some())]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rotel = Rotel::start(dir.path()).unwrap();
    let cfg = exporters(
        json!([
            {"name": "file", "type": "file"},
            {"name": "otel", "type": "otlp", "url": format!("http://127.0.0.1:{}", rotel.port)},
        ]),
        dir.path(),
    );
    let registry = Registry::new();
    let mut out = Outputs::start(cfg, NODE, &registry, Default::default()).unwrap();
    out.write_flows(&records(0, 120));
    out.close(Duration::from_secs(20)).await;
    let expected = flows_log(dir.path());
    wait_until("rotel printed 120 records", Duration::from_secs(10), || rotel.bodies().len() >= 120).await;
    assert_eq!(rotel.bodies(), expected);
    let log = std::fs::read_to_string(&rotel.server.log).unwrap();
    assert!(log.contains("-> service.name: Str(flowaudit)"));
    assert!(log.contains("-> host.name: Str(node-1)"));
    assert!(log.contains("-> dest_port: Int(443)"), "record fields are attributes");
}

/// No Splunk runs here: this stand-in answers as HEC documents (503 while busy, 200
/// `{"text":"Success","code":0}`) and checks the token header, so the exporter's retry and
/// framing are tested; Splunk's own parsing is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_retries_while_busy_then_delivers_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let events = Arc::new(Mutex::new(Vec::<Value>::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    {
        let (events, requests) = (events.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut len, mut auth) = (0usize, String::new());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if lower.starts_with("authorization:") {
                        auth = h["authorization:".len()..].trim().to_owned();
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let n = requests.fetch_add(1, Ordering::SeqCst);
                let (status, answer) = if auth != "Splunk 00000000-hec-token" {
                    ("401 Unauthorized", r#"{"text":"Invalid token","code":4}"#)
                } else if n < 2 {
                    ("503 Service Unavailable", r#"{"text":"Server is busy","code":9}"#)
                } else {
                    for l in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        events.lock().unwrap().push(serde_json::from_slice(l).unwrap());
                    }
                    ("200 OK", r#"{"text":"Success","code":0}"#)
                };
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
    }
    let token = dir.path().join("hec-token");
    std::fs::write(&token, "00000000-hec-token\n").unwrap();
    let cfg = exporters(
        json!([
            {"name": "file", "type": "file"},
            {"name": "hec", "type": "splunk_hec", "url": format!("http://127.0.0.1:{port}"), "token_file": token,
             "index": "netflows", "sourcetype": "flowaudit:flow", "retry_initial": "100ms"},
        ]),
        dir.path(),
    );
    let registry = Registry::new();
    let mut out = Outputs::start(cfg, NODE, &registry, Default::default()).unwrap();
    out.write_flows(&records(0, 80));
    out.close(Duration::from_secs(20)).await;
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 80);
    let expected: Vec<Value> = flows_log(dir.path()).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got: Vec<Value> = events.iter().map(|e| e["event"].clone()).collect();
    assert_eq!(got, expected);
    assert_eq!(events[0]["index"], "netflows");
    assert_eq!(events[0]["sourcetype"], "flowaudit:flow");
    assert_eq!(events[0]["host"], NODE);
    assert_eq!(metric(&registry, "flowaudit_export_retries_total", &[("exporter", "hec")]), 2.0);
    assert_eq!(metric(&registry, "flowaudit_export_records_sent_total", &[("exporter", "hec")]), 80.0);
}
