//! Cost of each SIEM encoding on one core: flow records (a level-0 TCP record between two named
//! pods, with labels, a Service and a three-entry policy trace) and Kubernetes audit events (a
//! NetworkPolicy patch at RequestResponse level). Prints a table (records per second, ns per
//! record, bytes per line) and asserts nothing.
//!
//! Each round encodes every record of a set of 1,000 (distinct addresses and ports) into one
//! reused buffer, cleared per record as the flow-log writer does; the best of three rounds counts.

use std::{hint::black_box, time::Instant};

use flowaudit::{
    model::{FlowRecord, Policies, RecordLabels},
    output::encode::{EncodeContext, Encoding, encode_audit, encode_flow},
};

const SET: usize = 1_000;
const ROUNDS_OF_SET: usize = 200;

fn labels(items: &[&str]) -> RecordLabels {
    RecordLabels::List(items.iter().map(|s| s.to_string()).collect())
}

fn record(i: usize) -> FlowRecord {
    let mut r = FlowRecord::sample(
        &format!("10.{}.{}.{}", 100 + i % 3, i / 256 % 256, i % 256),
        32768 + (i % 28000) as u16,
        &format!("10.200.{}.{}", i / 7 % 256, i % 7 + 1),
        8080,
    );
    r.start_time = 1_795_737_600;
    r.end_time = 1_795_737_615;
    r.source_name = format!("frontend-7d9f8-{i:05}").into();
    r.source_name_aggr = "frontend-7d9f8-*".into();
    r.source_namespace = "shop".into();
    r.source_type = "wep".into();
    r.source_labels = labels(&[
        "app.kubernetes.io/name=frontend",
        "app.kubernetes.io/part-of=shop",
        "pod-template-hash=7d9f8",
        "team=web",
        "env=prod",
    ]);
    r.dest_name = format!("cart-5c4b6-{i:05}").into();
    r.dest_name_aggr = "cart-5c4b6-*".into();
    r.dest_namespace = "shop".into();
    r.dest_type = "wep".into();
    r.dest_labels = labels(&["app.kubernetes.io/name=cart", "app.kubernetes.io/part-of=shop", "team=cart", "env=prod"]);
    r.dest_service_name = "cart".into();
    r.dest_service_namespace = "shop".into();
    r.dest_service_port = "http".into();
    r.bytes_out = 1_840 + i as u64;
    r.bytes_in = 52_310;
    r.packets_out = 14;
    r.packets_in = 41;
    r.policies = Policies {
        enforced_policies: vec![
            "0|kube-admin|kanp:platform-guardrails|pass|2".to_string(),
            "1|default|knp:shop/frontend-egress|allow|0".to_string(),
        ]
        .into(),
        pending_policies: vec![
            "0|kube-admin|kanp:platform-guardrails|pass|2".to_string(),
            "1|platform|sgnp:platform.restrict-shop|pass|1".to_string(),
            "2|default|knp:shop/frontend-egress|allow|0".to_string(),
        ]
        .into(),
    };
    r.source_cgroup_id = Some(4242 + i as u64);
    r
}

fn audit_event(i: usize) -> serde_json::Value {
    let policy = |types: &[&str]| {
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": format!("frontend-egress-{i}"), "namespace": "shop", "resourceVersion": "812",
                         "uid": "0b6f5e8e-8f3c-4c1e-9d1e-5b0e7f0d9a11", "generation": 3},
            "spec": {"podSelector": {"matchLabels": {"app": "frontend"}}, "policyTypes": types,
                     "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "cart"}}}], "ports": [{"port": 8080, "protocol": "TCP"}]}]}
        })
    };
    serde_json::json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse",
        "auditID": format!("6a4c5f43-0d1b-4f3e-9a7e-{i:012}"),
        "stage": "ResponseComplete",
        "requestURI": format!("/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/frontend-egress-{i}"),
        "verb": "patch",
        "user": {"username": "alice@example.com", "uid": "u-1", "groups": ["system:authenticated", "devs"]},
        "sourceIPs": ["192.168.7.20"],
        "userAgent": "kubectl/v1.33.1 (linux/amd64) kubernetes/abcdef",
        "objectRef": {"resource": "networkpolicies", "namespace": "shop", "name": format!("frontend-egress-{i}"),
                      "apiGroup": "networking.k8s.io", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2026-11-27T00:10:00.123456Z",
        "stageTimestamp": "2026-11-27T00:10:00.140221Z",
        "previousObject": policy(&["Egress"]),
        "responseObject": policy(&["Ingress", "Egress"]),
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": "RBAC: allowed by ClusterRoleBinding"}
    })
}

/// Best of three rounds: (ns per item, mean bytes per line).
fn measure(n: usize, mut encode: impl FnMut(usize, &mut Vec<u8>)) -> (f64, f64) {
    let mut out = Vec::with_capacity(16 * 1024);
    let mut bytes = 0usize;
    for i in 0..n {
        out.clear();
        encode(i, &mut out);
        bytes += out.len();
    }
    let total = n * ROUNDS_OF_SET;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        for k in 0..total {
            out.clear();
            encode(k % n, &mut out);
            black_box(&out);
        }
        best = best.min(t.elapsed().as_nanos() as f64 / total as f64);
    }
    (best, bytes as f64 / n as f64)
}

fn main() {
    let ctx = EncodeContext { node: "node-a".into(), agent_version: env!("CARGO_PKG_VERSION") };
    let records: Vec<FlowRecord> = (0..SET).map(record).collect();
    let events: Vec<serde_json::Value> = (0..SET / 10).map(audit_event).collect();
    let encodings = [Encoding::Calico, Encoding::Ecs, Encoding::Ocsf, Encoding::Cef];
    println!(
        "one core, {} encodes per round, best of 3; flow: level-0 TCP between named pods, 9 labels, 5 trace entries",
        SET * ROUNDS_OF_SET
    );
    println!("| input | encoding | records/s | ns per record | bytes per line |");
    println!("|---|---|---:|---:|---:|");
    for enc in encodings {
        let (ns, len) = measure(records.len(), |i, out| {
            encode_flow(&records[i], enc, &ctx, out).expect("encodes");
        });
        println!("| flow | {enc:?} | {:.0} | {ns:.0} | {len:.0} |", 1e9 / ns);
    }
    for enc in encodings {
        let (ns, len) = measure(events.len(), |i, out| {
            encode_audit(&events[i], enc, &ctx, out).expect("encodes");
        });
        println!("| audit (patch, RequestResponse) | {enc:?} | {:.0} | {ns:.0} | {len:.0} |", 1e9 / ns);
    }
}
