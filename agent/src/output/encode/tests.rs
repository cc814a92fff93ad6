//! Golden files and structure checks for every encoding.
//!
//! `golden` compares the encodings of fixed records and audit events byte for byte with the files
//! in `encode/golden/` (`<fixture>.<encoding>.json|cef`, one line and a newline each).
//! `FLOWAUDIT_BLESS=1 cargo test -p flowaudit --lib output::encode` rewrites them; review the diff.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Arc};

use serde_json::{Value, json};

use super::*;
use crate::model::{Observed, Policies, RecordContext, RecordLabels, ReportRow};

const ALL: [Encoding; 4] = [Encoding::Calico, Encoding::Ecs, Encoding::Ocsf, Encoding::Cef];

fn ctx() -> EncodeContext {
    EncodeContext { node: "node-a".into(), agent_version: "0.1.0-test" }
}

fn list(items: &[&str]) -> RecordLabels {
    RecordLabels::List(items.iter().map(|s| s.to_string()).collect())
}

fn trace(items: &[&str]) -> crate::model::Trace {
    items.iter().map(|s| s.to_string()).collect::<Vec<_>>().into()
}

/// 2026-11-27T00:00:00Z.
const T0: u64 = 1_795_737_600;

/// An allowed TCP/IPv4 connection between two pods, reported by the source, through a Service.
fn tcp4_allow() -> FlowRecord {
    let mut r = FlowRecord::sample("10.0.1.5", 43512, "10.0.2.7", 8080);
    r.start_time = T0;
    r.end_time = T0 + 15;
    r.source_name = "frontend-7d9f8-abcde".into();
    r.source_name_aggr = "frontend-7d9f8-*".into();
    r.source_namespace = "shop".into();
    r.source_type = "wep".into();
    r.source_labels = list(&["app=frontend", "pod-template-hash=7d9f8"]);
    r.dest_name = "cart-5c4b6-xyz12".into();
    r.dest_name_aggr = "cart-5c4b6-*".into();
    r.dest_namespace = "shop".into();
    r.dest_type = "wep".into();
    r.dest_labels = list(&["app=cart"]);
    r.dest_service_name = "cart".into();
    r.dest_service_namespace = "shop".into();
    r.dest_service_port = "http".into();
    r.bytes_out = 1840;
    r.bytes_in = 52_310;
    r.packets_out = 14;
    r.packets_in = 41;
    r.num_flows_completed = 1;
    r.policies = Policies {
        enforced_policies: trace(&["0|default|knp:shop/frontend-egress|allow|0"]),
        pending_policies: trace(&[
            "0|platform|sgnp:platform.restrict-shop|pass|1",
            "1|default|knp:shop/frontend-egress|allow|0",
        ]),
    };
    r.source_cgroup_id = Some(4242);
    r
}

/// A denied UDP/IPv6 flow from an outside address, reported by the destination pod.
fn udp6_deny() -> FlowRecord {
    let mut r = FlowRecord::sample("fd00:10::5", 53211, "fd00:20::9", 53);
    r.start_time = T0;
    r.end_time = T0 + 15;
    r.reporter = Reporter::Dst;
    r.action = Action::Deny;
    r.pending_action = Action::Deny;
    r.flow_action = Action::Deny;
    r.proto = "udp".into();
    r.context = RecordContext { proto: 17, ..Default::default() };
    r.dest_name = "coredns-6f5f9-q8w7e".into();
    r.dest_name_aggr = "coredns-6f5f9-*".into();
    r.dest_namespace = "kube-system".into();
    r.dest_type = "wep".into();
    r.dest_labels = list(&["k8s-app=kube-dns"]);
    r.bytes_in = 228;
    r.bytes_out = 0;
    r.packets_in = 3;
    r.packets_out = 0;
    r.observed = Observed::OneWay;
    r.policies = Policies {
        enforced_policies: trace(&["0|default|knp:kube-system/dns-from-cluster|deny|-1"]),
        pending_policies: trace(&["0|default|knp:kube-system/dns-from-cluster|deny|-1"]),
    };
    r
}

/// Level 2: no addresses, no source port, names as prefixes; flows that differ.
fn aggregated() -> FlowRecord {
    let mut r = FlowRecord::sample("10.0.1.5", 1, "10.0.2.7", 443);
    r.id = "9f0c2a7d31e4b856".into();
    r.start_time = T0 + 15;
    r.end_time = T0 + 30;
    r.source_ip = None;
    r.source_port = None;
    r.dest_ip = None;
    r.source_name_aggr = "frontend-7d9f8-*".into();
    r.source_namespace = "shop".into();
    r.source_type = "wep".into();
    r.source_labels = list(&["app=frontend"]);
    r.dest_name_aggr = "pub".into();
    r.bytes_out = 91_000;
    r.bytes_in = 1_200_000;
    r.packets_out = 400;
    r.packets_in = 900;
    r.num_flows = 12;
    r.num_flows_started = 5;
    r.num_flows_completed = 4;
    r.observed = Observed::Mixed;
    r.enforcement = Enforcement::UnexplainedDrop;
    r.num_established = 10;
    r.num_attempted = 2;
    r
}

/// An ICMP echo forwarded through the node, with both sides' traces.
fn icmp_fwd() -> FlowRecord {
    let mut r = FlowRecord::sample("10.0.1.5", 0, "192.168.7.20", 0);
    r.start_time = T0 + 30;
    r.end_time = T0 + 45;
    r.reporter = Reporter::Fwd;
    r.proto = "icmp".into();
    r.context = RecordContext { proto: 1, ..Default::default() };
    r.source_port = None;
    r.dest_port = None;
    r.icmp_type = Some(8);
    r.icmp_code = Some(0);
    r.bytes_out = 252;
    r.bytes_in = 252;
    r.packets_out = 3;
    r.packets_in = 3;
    r.policies = Policies {
        enforced_policies: trace(&[
            "0|default|gnp:default.allow-icmp|allow|0",
            "1|default|gnp:default.allow-icmp|allow|1",
        ]),
        pending_policies: trace(&[
            "0|default|gnp:default.allow-icmp|allow|0",
            "1|default|gnp:default.allow-icmp|allow|1",
        ]),
    };
    r
}

fn audit_event(verb: &str, code: i64, id: &str) -> Value {
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "frontend-egress", "namespace": "shop", "resourceVersion": "812"},
        "spec": {"podSelector": {"matchLabels": {"app": "frontend"}}, "policyTypes": ["Egress"]}
    });
    let mut ev = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse",
        "auditID": id,
        "stage": "ResponseComplete",
        "requestURI": "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/frontend-egress",
        "verb": verb,
        "user": {"username": "alice@example.com", "uid": "u-1", "groups": ["system:authenticated"]},
        "sourceIPs": ["192.168.7.20"],
        "userAgent": "kubectl/v1.33.1 (linux/amd64)",
        "objectRef": {
            "resource": "networkpolicies",
            "namespace": "shop",
            "name": "frontend-egress",
            "apiGroup": "networking.k8s.io",
            "apiVersion": "v1"
        },
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": "2026-11-27T00:10:00.123456Z",
        "stageTimestamp": "2026-11-27T00:10:00.140221Z",
        "annotations": {"authorization.k8s.io/decision": "allow"}
    });
    match verb {
        "create" => ev["responseObject"] = policy,
        "patch" => {
            ev["previousObject"] = policy.clone();
            ev["responseObject"] = policy;
            ev["responseObject"]["spec"]["policyTypes"] = json!(["Ingress", "Egress"]);
        }
        _ => ev["previousObject"] = policy,
    }
    ev
}

fn flows() -> Vec<(&'static str, FlowRecord)> {
    vec![
        ("tcp4-allow", tcp4_allow()),
        ("udp6-deny", udp6_deny()),
        ("aggregated", aggregated()),
        ("icmp-fwd", icmp_fwd()),
    ]
}

fn audits() -> Vec<(&'static str, Value)> {
    vec![
        ("audit-create", audit_event("create", 201, "6a4c5f43-0d1b-4f3e-9a7e-1c2d3e4f5a60")),
        ("audit-update", audit_event("patch", 200, "6a4c5f43-0d1b-4f3e-9a7e-1c2d3e4f5a61")),
        ("audit-delete", audit_event("delete", 200, "6a4c5f43-0d1b-4f3e-9a7e-1c2d3e4f5a62")),
    ]
}

/// A report row of `file` with these columns.
fn report_row(
    report_type: &'static str,
    file: &'static str,
    row: u64,
    columns: &'static [&'static str],
    values: &[&str],
) -> ReportRow {
    ReportRow {
        report: "daily".into(),
        report_type,
        start_ms: 1_795_651_200_000,
        end_ms: 1_795_737_600_000,
        generated_ms: 1_795_739_400_250,
        file,
        row,
        rows: 3,
        columns,
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    }
}

const CIS_COLUMNS: &[&str] =
    &["nodeName", "testIndex", "testDescription", "status", "scored", "remediation", "decidedBy"];

fn reports() -> Vec<(&'static str, ReportRow)> {
    vec![
        (
            "report-cis-fail",
            report_row(
                "cis-benchmark",
                "all-tests.csv",
                2,
                CIS_COLUMNS,
                &[
                    "node-a",
                    "1.1.1",
                    "Ensure that the API server pod specification file permissions are set to 600 or more restrictive",
                    "FAIL",
                    "true",
                    "Run chmod 600 /etc/kubernetes/manifests/kube-apiserver.yaml; a=b|c\nnext",
                    "kube-bench",
                ],
            ),
        ),
        (
            "report-cis-pass",
            report_row(
                "cis-benchmark",
                "all-tests.csv",
                3,
                CIS_COLUMNS,
                &[
                    "node-a",
                    "5.3.2",
                    "Ensure that all Namespaces have NetworkPolicies defined",
                    "PASS",
                    "false",
                    "",
                    "flowaudit",
                ],
            ),
        ),
        (
            "report-endpoint",
            report_row(
                "network-access",
                "endpoints.csv",
                1,
                &["endpoint", "ingressProtected", "deniedFlows", "enforcementViolations"],
                &["Pod.v1(shop/db)", "true", "2", "1"],
            ),
        ),
        (
            "report-summary",
            report_row(
                "inventory",
                "summary.csv",
                1,
                &["startTime", "endTime", "endpointSelector", "numTotalEndpoints"],
                &["2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z", "", "12"],
            ),
        ),
    ]
}

fn report_line(r: &ReportRow, enc: Encoding) -> String {
    let mut out = Vec::new();
    encode_report(r, enc, &ctx(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn name(enc: Encoding) -> &'static str {
    match enc {
        Encoding::Calico => "calico.json",
        Encoding::Ecs => "ecs.json",
        Encoding::Ocsf => "ocsf.json",
        Encoding::Cef => "cef",
    }
}

fn flow_line(r: &FlowRecord, enc: Encoding) -> String {
    let mut out = Vec::new();
    encode_flow(r, enc, &ctx(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn audit_line(e: &Value, enc: Encoding) -> String {
    let mut out = Vec::new();
    encode_audit(e, enc, &ctx(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Every fixture in every encoding, with its golden file's name.
fn outputs() -> Vec<(String, String)> {
    let mut all = Vec::new();
    for enc in ALL {
        for (fixture, r) in flows() {
            all.push((format!("{fixture}.{}", name(enc)), flow_line(&r, enc)));
        }
        for (fixture, e) in audits() {
            all.push((format!("{fixture}.{}", name(enc)), audit_line(&e, enc)));
        }
        for (fixture, r) in reports() {
            all.push((format!("{fixture}.{}", name(enc)), report_line(&r, enc)));
        }
    }
    all
}

#[test]
fn golden() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/output/encode/golden");
    let bless = std::env::var_os("FLOWAUDIT_BLESS").is_some_and(|v| v == "1");
    let mut differ = Vec::new();
    for (file, line) in outputs() {
        assert!(!line.contains('\n'), "{file}: one line");
        let want = format!("{line}\n");
        let path = dir.join(&file);
        if bless {
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(&want) {
            differ.push(format!("{file}:\n  got  {line}"));
        }
    }
    assert!(differ.is_empty(), "differ from encode/golden (FLOWAUDIT_BLESS=1 to rewrite):\n{}", differ.join("\n"));
}

#[test]
fn calico_is_the_flow_log_line_and_the_event_as_is() {
    for (_, r) in flows() {
        assert_eq!(flow_line(&r, Encoding::Calico).into_bytes(), serde_json::to_vec(&r).unwrap());
    }
    for (_, e) in audits() {
        assert_eq!(serde_json::from_str::<Value>(&audit_line(&e, Encoding::Calico)).unwrap(), e);
    }
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

fn has(v: &Value, path: &str) -> bool {
    !at(v, path).is_null()
}

#[test]
fn ecs_flows_parse_and_carry_the_required_fields() {
    for (fixture, r) in flows() {
        let v: Value = serde_json::from_str(&flow_line(&r, Encoding::Ecs)).unwrap();
        for key in [
            "@timestamp",
            "ecs.version",
            "event.kind",
            "event.category",
            "event.type",
            "event.action",
            "event.outcome",
            "event.start",
            "event.end",
            "source.bytes",
            "source.packets",
            "destination.bytes",
            "destination.packets",
            "network.transport",
            "network.direction",
            "network.bytes",
            "network.packets",
            "orchestrator.type",
            "host.name",
            "flowaudit.policies.enforced_policies",
        ] {
            assert!(has(&v, key), "{fixture}: {key} missing in {v}");
        }
        assert_eq!(has(&v, "network.type"), r.source_ip.is_some(), "{fixture}: network.type from the addresses");
        assert_eq!(v["event"]["category"], json!(["network"]));
        assert_eq!(v["host"]["name"], "node-a");
        let expect = if r.action == Action::Allow { ("allowed", "success") } else { ("denied", "failure") };
        assert_eq!(v["event"]["type"], json!(["connection", expect.0]), "{fixture}");
        assert_eq!(v["event"]["outcome"], expect.1, "{fixture}");
        assert_eq!(
            at(&v, "network.bytes").as_u64().unwrap(),
            at(&v, "source.bytes").as_u64().unwrap() + at(&v, "destination.bytes").as_u64().unwrap()
        );
    }
    let tcp: Value = serde_json::from_str(&flow_line(&tcp4_allow(), Encoding::Ecs)).unwrap();
    assert_eq!(tcp["@timestamp"], "2026-11-27T00:00:15.000Z");
    assert_eq!(tcp["source"]["bytes"], 1840, "src reporter: out is what the source sent");
    assert_eq!(tcp["network"]["direction"], "egress");
    assert_eq!(tcp["orchestrator"]["namespace"], "shop");
    assert_eq!(tcp["destination"]["kubernetes"]["service"]["name"], "cart");
    let udp: Value = serde_json::from_str(&flow_line(&udp6_deny(), Encoding::Ecs)).unwrap();
    assert_eq!(udp["source"]["bytes"], 228, "dst reporter: in is what the source sent");
    assert_eq!(
        (udp["destination"]["bytes"].as_u64(), udp["network"]["direction"].as_str()),
        (Some(0), Some("ingress"))
    );
    assert_eq!(
        (udp["network"]["type"].as_str(), udp["orchestrator"]["namespace"].as_str()),
        (Some("ipv6"), Some("kube-system"))
    );
    assert!(udp["source"]["kubernetes"].get("name").is_none(), "`-` names are left out");
    let agg: Value = serde_json::from_str(&flow_line(&aggregated(), Encoding::Ecs)).unwrap();
    for key in ["source.ip", "source.port", "destination.ip", "network.community_id", "network.type", "related"] {
        assert!(!has(&agg, key), "aggregated: {key} must be absent");
    }
    assert_eq!(agg["destination"]["port"], 443);
    assert_eq!(agg["source"]["kubernetes"]["name_aggr"], "frontend-7d9f8-*");
}

#[test]
fn ecs_audit_events_are_configuration_changes() {
    for ((fixture, e), kind) in audits().into_iter().zip(["creation", "change", "deletion"]) {
        let v: Value = serde_json::from_str(&audit_line(&e, Encoding::Ecs)).unwrap();
        assert_eq!(v["event"]["category"], json!(["configuration"]), "{fixture}");
        assert_eq!(v["event"]["type"], json!([kind]), "{fixture}");
        assert_eq!(v["user"]["name"], "alice@example.com");
        assert_eq!(v["orchestrator"]["resource"], json!({"type": "networkpolicies", "name": "frontend-egress"}));
        assert_eq!(v["orchestrator"]["namespace"], "shop");
        assert_eq!(v["kubernetes"]["audit"], e, "the original event is kept");
        assert_eq!(v["@timestamp"], "2026-11-27T00:10:00.140Z");
    }
}

#[test]
fn ocsf_classes_and_type_uids() {
    for (fixture, r) in flows() {
        let v: Value = serde_json::from_str(&flow_line(&r, Encoding::Ocsf)).unwrap();
        assert_eq!((v["class_uid"].as_u64(), v["category_uid"].as_u64()), (Some(4001), Some(4)), "{fixture}");
        assert_eq!(v["type_uid"].as_u64().unwrap(), 4001 * 100 + v["activity_id"].as_u64().unwrap());
        assert_eq!(v["time"].as_u64().unwrap(), r.end_time * 1000);
        assert_eq!(v["metadata"]["product"]["name"], "flowaudit");
        assert_eq!(v["metadata"]["uid"].as_str(), Some(&*r.id));
        let t = &v["traffic"];
        assert_eq!(t["bytes"].as_u64().unwrap(), t["bytes_in"].as_u64().unwrap() + t["bytes_out"].as_u64().unwrap());
        let blocked = r.action == Action::Deny;
        assert_eq!(v["disposition_id"].as_u64(), Some(if blocked { 2 } else { 1 }), "{fixture}");
        assert_eq!(v["unmapped"]["policies"], serde_json::to_value(&r.policies).unwrap());
    }
    let udp: Value = serde_json::from_str(&flow_line(&udp6_deny(), Encoding::Ocsf)).unwrap();
    assert_eq!((udp["traffic"]["bytes_out"].as_u64(), udp["traffic"]["bytes_in"].as_u64()), (Some(228), Some(0)));
    assert_eq!(udp["connection_info"]["protocol_ver_id"], 6);
    for ((fixture, e), activity) in audits().into_iter().zip([1, 3, 4]) {
        let v: Value = serde_json::from_str(&audit_line(&e, Encoding::Ocsf)).unwrap();
        assert_eq!((v["class_uid"].as_u64(), v["activity_id"].as_u64()), (Some(6003), Some(activity)), "{fixture}");
        assert_eq!(v["type_uid"].as_u64(), Some(600300 + activity));
        assert_eq!(v["actor"]["user"]["name"], "alice@example.com");
        assert_eq!(v["resources"][0]["name"], "frontend-egress");
        assert_eq!(v["time"].as_u64(), Some(1_795_738_200_140));
        assert_eq!(serde_json::from_str::<Value>(v["raw_data"].as_str().unwrap()).unwrap(), e);
    }
}

/// A test-only CEF reader: the seven header fields and the extension, unescaped.
fn parse_cef(line: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let mut header = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars();
    while header.len() < 7 {
        match chars.next().expect("seven header fields") {
            '\\' => field.push(chars.next().expect("escaped char")),
            '|' => header.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    let ext: Vec<char> = chars.collect();
    // A key starts the extension or follows a space: `[A-Za-z0-9_]+=` (a value's `=` is escaped).
    let key_at = |i: usize| -> Option<usize> {
        let n = ext[i..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').count();
        (n > 0 && ext.get(i + n) == Some(&'=')).then_some(n)
    };
    let mut ext_map = BTreeMap::new();
    let mut i = 0;
    while i < ext.len() {
        let n = key_at(i).unwrap_or_else(|| panic!("a key at {i} in {line}"));
        let key: String = ext[i..i + n].iter().collect();
        i += n + 1;
        let mut value = String::new();
        while i < ext.len() && !(ext[i] == ' ' && key_at(i + 1).is_some()) {
            if ext[i] == '\\' {
                i += 1;
                value.push(match ext.get(i).copied().expect("escaped char") {
                    'n' => '\n',
                    'r' => '\r',
                    c => c,
                });
            } else {
                value.push(ext[i]);
            }
            i += 1;
        }
        i += 1;
        assert!(ext_map.insert(key.clone(), value).is_none(), "duplicate key {key} in {line}");
    }
    (header, ext_map)
}

#[test]
fn cef_lines_parse_back() {
    for (fixture, r) in flows() {
        let (h, e) = parse_cef(&flow_line(&r, Encoding::Cef));
        assert_eq!(h[..4], ["CEF:0", "flowaudit", "flowaudit", "0.1.0-test"], "{fixture}");
        assert_eq!(e["externalId"], r.id);
        assert_eq!(e["dvchost"], "node-a");
        assert_eq!(e["rt"], (r.end_time * 1000).to_string());
        if r.policies.enforced_policies.is_empty() {
            assert!(!e.contains_key("cs5") && !e.contains_key("cs5Label"), "{fixture}: no empty trace");
        } else {
            assert_eq!(
                (e["cs5"].clone(), e["cs5Label"].as_str()),
                (r.policies.enforced_policies.join(";"), "enforcedPolicies")
            );
        }
        assert_eq!(e["outcome"], if r.action == Action::Allow { "success" } else { "failure" });
        match r.source_ip {
            Some(IpAddr::V4(a)) => assert_eq!(e["src"], a.to_string()),
            Some(IpAddr::V6(a)) => assert_eq!((&*e["c6a2"], e.contains_key("src")), (&*a.to_string(), false)),
            None => assert!(!e.contains_key("src") && !e.contains_key("c6a2"), "{fixture}"),
        }
    }
    let (h, e) = parse_cef(&flow_line(&udp6_deny(), Encoding::Cef));
    assert_eq!((h[4].as_str(), h[6].as_str()), ("flow-deny", "3"));
    assert_eq!((e["c6a3"].as_str(), e["c6a3Label"].as_str()), ("fd00:20::9", "Destination IPv6 Address"));
    assert_eq!((e["in"].as_str(), e["out"].as_str()), ("228", "0"), "in is what the source sent");
    let (_, e) = parse_cef(&flow_line(&tcp4_allow(), Encoding::Cef));
    assert_eq!(e["flowauditflowauditSrcLabels"], "app=frontend,pod-template-hash=7d9f8");
    for (fixture, ev) in audits() {
        let (h, e) = parse_cef(&audit_line(&ev, Encoding::Cef));
        assert_eq!(h[4], format!("audit-{}", ev["verb"].as_str().unwrap()), "{fixture}");
        assert_eq!((e["suser"].as_str(), e["cs3"].as_str()), ("alice@example.com", "frontend-egress"));
        assert_eq!(e["cs4"], "networking.k8s.io/v1");
    }
}

#[test]
fn cef_escapes_what_would_break_a_line_or_a_field() {
    let nasty = "a=b\\c|d\nx y=z\r";
    let mut r = tcp4_allow();
    r.source_name = nasty.into();
    r.dest_namespace = "ns ends with backslash\\".into();
    r.source_labels = list(&["k=v=w", "x=\\"]);
    let ctx = EncodeContext { node: "node|a\\b".into(), agent_version: "1.0|beta\\2\nx" };
    let mut out = Vec::new();
    encode_flow(&r, Encoding::Cef, &ctx, &mut out).unwrap();
    let line = String::from_utf8(out).unwrap();
    assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
    let (h, e) = parse_cef(&line);
    assert_eq!(h[3], "1.0|beta\\2 x", "header: | and \\ escaped, a newline becomes a space");
    assert_eq!(e["cs2"], nasty);
    assert_eq!(e["cs3"], "ns ends with backslash\\");
    assert_eq!(e["dvchost"], "node|a\\b");
    assert_eq!(e["flowauditflowauditSrcLabels"], "k=v=w,x=\\");
    let mut ev = audit_event("create", 201, "id");
    ev["objectRef"]["name"] = json!(nasty);
    ev["verb"] = json!("cre|ate\\");
    let mut out = Vec::new();
    encode_audit(&ev, Encoding::Cef, &EncodeContext { node: "n".into(), agent_version: "1" }, &mut out).unwrap();
    let (h, e) = parse_cef(std::str::from_utf8(&out).unwrap());
    assert_eq!((h[4].as_str(), e["cs3"].as_str(), e["act"].as_str()), ("audit-cre|ate\\", nasty, "cre|ate\\"));
}

#[test]
fn calico_writes_what_the_serde_derive_writes_whatever_the_strings() {
    let nasty = ["", "\"q\"", "back\\slash", "tab\tnl\ncr\r\u{1}\u{1f}\u{7f}", "é ☃ \u{10ffff}", "</script>"];
    for (_, base) in flows() {
        for (i, text) in nasty.iter().enumerate() {
            let mut r = base.clone();
            let t: crate::model::Text = (*text).into();
            r.id = text.to_string();
            (r.host, r.proto, r.source_name, r.source_name_aggr, r.source_namespace) =
                (t.clone(), t.clone(), t.clone(), t.clone(), t.clone());
            (r.source_type, r.dest_name, r.dest_name_aggr, r.dest_namespace, r.dest_type) =
                (t.clone(), t.clone(), t.clone(), t.clone(), t.clone());
            (r.dest_service_name, r.dest_service_namespace, r.dest_service_port) = (t.clone(), t.clone(), t.clone());
            r.source_labels = list(&[text, "a=b"]);
            r.policies = Policies { enforced_policies: trace(&[text]), pending_policies: trace(&[]) };
            r.icmp_type = (i % 2 == 0).then_some(3);
            r.icmp_code = (i % 3 == 0).then_some(255);
            r.source_cgroup_id = (i % 2 == 1).then_some(u64::MAX);
            r.host_network = i % 2 == 0;
            r.source_port = (i % 2 == 0).then_some(65535);
            r.dest_ip = (i % 3 != 0).then(|| "fe80::1:2".parse().unwrap());
            assert_eq!(flow_line(&r, Encoding::Calico).into_bytes(), serde_json::to_vec(&r).unwrap(), "{text:?}");
        }
    }
}

#[test]
fn odd_records_never_panic() {
    let mut odd = Vec::new();
    let mut r = tcp4_allow();
    r.start_time = u64::MAX;
    r.end_time = 0;
    odd.push(r);
    let mut r = tcp4_allow();
    r.start_time = 200;
    r.end_time = 100;
    r.bytes_in = u64::MAX;
    r.bytes_out = u64::MAX;
    r.packets_in = u64::MAX;
    r.packets_out = u64::MAX;
    odd.push(r);
    let mut r = udp6_deny();
    r.dest_ip = Some("10.0.0.1".parse().unwrap());
    r.proto = "weird".into();
    r.context.proto = 0;
    odd.push(r);
    let mut r = icmp_fwd();
    r.icmp_type = None;
    r.proto = "250".into();
    r.source_name = "".into();
    r.host = "".into();
    r.policies = Policies { enforced_policies: Arc::from([]), pending_policies: trace(&["", "|||"]) };
    odd.push(r);
    let mut r = aggregated();
    r.source_port = Some(1);
    r.dest_port = None;
    r.proto = "icmp6".into();
    odd.push(r);
    for r in &odd {
        assert_eq!(flow_line(r, Encoding::Calico).into_bytes(), serde_json::to_vec(r).unwrap());
        for enc in ALL {
            let mut out = Vec::new();
            match encode_flow(r, enc, &ctx(), &mut out) {
                Ok(()) if enc == Encoding::Cef => {
                    parse_cef(std::str::from_utf8(&out).unwrap());
                }
                Ok(()) => {
                    serde_json::from_slice::<Value>(&out).unwrap();
                }
                Err(e) => assert!(matches!(e, EncodeError::TimeOutOfRange { field: "start_time", .. }), "{e}"),
            }
        }
    }
    let v: Value = serde_json::from_str(&flow_line(&odd[1], Encoding::Ecs)).unwrap();
    assert_eq!((v["network"]["bytes"].as_u64(), v["event"]["duration"].as_u64()), (Some(u64::MAX), Some(0)));
    assert!(community_id(&odd[2]).is_none(), "mixed families have no community id");
}

#[test]
fn odd_audit_events_are_errors_not_panics() {
    for enc in [Encoding::Ecs, Encoding::Ocsf, Encoding::Cef] {
        for ev in [json!("text"), json!(null), json!({}), json!({"stageTimestamp": "yesterday"}), json!([1, 2])] {
            assert!(
                matches!(encode_audit(&ev, enc, &ctx(), &mut Vec::new()), Err(EncodeError::Audit(_))),
                "{enc:?} {ev}"
            );
        }
        let minimal = json!({"stageTimestamp": "2026-11-27T00:10:00Z", "verb": 7, "objectRef": "x"});
        let line = audit_line(&minimal, enc);
        if enc == Encoding::Cef {
            parse_cef(&line);
        } else {
            serde_json::from_str::<Value>(&line).unwrap();
        }
    }
    assert_eq!(audit_line(&json!("text"), Encoding::Calico), "\"text\"");
}

/// Protocol, source, destination, source port (ICMP type), destination port (code), id.
type Vector = (u8, &'static str, &'static str, Option<u16>, Option<u16>, &'static str);

#[test]
fn community_id_matches_the_spec_baseline() {
    // corelight/community-id-spec baseline/baseline_deflt.json (seed 0); for ICMP the ports
    // are the type and code.
    let cases: [Vector; 15] = [
        (
            58,
            "fe80::200:86ff:fe05:80da",
            "fe80::260:97ff:fe07:69ea",
            Some(135),
            Some(136),
            "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=",
        ),
        (
            58,
            "fe80::260:97ff:fe07:69ea",
            "fe80::200:86ff:fe05:80da",
            Some(136),
            Some(135),
            "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=",
        ),
        (
            58,
            "3ffe:501:1800:2345::2",
            "3ffe:507:0:1:200:86ff:fe05:80da",
            Some(3),
            Some(0),
            "1:2ObVBgIn28oZvibYZhZMBgh7WdQ=",
        ),
        (
            58,
            "3ffe:507:0:1:200:86ff:fe05:80da",
            "3ffe:501:0:1001::2",
            Some(128),
            Some(129),
            "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=",
        ),
        (1, "192.168.0.89", "192.168.0.1", Some(8), Some(0), "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
        (1, "192.168.0.1", "192.168.0.89", Some(0), Some(8), "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
        (1, "10.0.0.1", "10.0.0.2", Some(11), Some(0), "1:YHxtAirCG//0OzkcVAukqKQN9xM="),
        (
            6,
            "2001:470:e5bf:dead:4957:2174:e82c:4887",
            "2607:f8b0:400c:c03::1a",
            Some(63943),
            Some(25),
            "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
        ),
        (
            6,
            "2607:f8b0:400c:c03::1a",
            "2001:470:e5bf:dead:4957:2174:e82c:4887",
            Some(25),
            Some(63943),
            "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
        ),
        (132, "192.168.170.8", "192.168.170.56", Some(7), Some(7), "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
        (6, "128.232.110.120", "66.35.250.204", Some(34855), Some(80), "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
        (6, "66.35.250.204", "128.232.110.120", Some(80), Some(34855), "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
        (17, "192.168.1.52", "8.8.8.8", Some(54585), Some(53), "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
        (17, "8.8.8.8", "192.168.1.52", Some(53), Some(54585), "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
        (46, "10.1.12.1", "10.1.12.2", None, None, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
    ];
    for (proto, src, dst, sport, dport, want) in cases {
        let got = community_id_of(proto, src.parse().unwrap(), dst.parse().unwrap(), sport, dport);
        assert_eq!(got.as_deref(), Some(want), "{proto} {src} {dst}");
    }
    // From a record: the same as the spec's TCP vector.
    let r = FlowRecord::sample("128.232.110.120", 34855, "66.35.250.204", 80);
    assert_eq!(community_id(&r).as_deref(), Some("1:LQU9qZlK+B5F3KDmev6m5PMibrg="));
    assert!(community_id(&aggregated()).is_none());
}

#[test]
fn rfc3339_with_milliseconds() {
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(rfc3339_ms(T0 * 1000 + 7), "2026-11-27T00:00:00.007Z");
    assert_eq!(rfc3339_ms(YEAR_10000 * 1000 - 1), "9999-12-31T23:59:59.999Z");
    assert!(secs_to_ms("end_time", YEAR_10000).is_err());
    assert_eq!(parse_rfc3339_ms("2026-11-27T00:10:00.140221Z"), Some(1_795_738_200_140));
}

#[test]
fn encoding_names() {
    for (enc, s) in
        [(Encoding::Calico, "calico"), (Encoding::Ecs, "ecs"), (Encoding::Ocsf, "ocsf"), (Encoding::Cef, "cef")]
    {
        assert_eq!(serde_json::to_value(enc).unwrap(), s);
        assert_eq!(serde_json::from_value::<Encoding>(json!(s)).unwrap(), enc);
    }
    assert_eq!(Encoding::default(), Encoding::Calico);
}

#[test]
fn report_rows_keep_their_columns_in_every_encoding() {
    let columns = |r: &ReportRow| -> Value {
        r.columns.iter().zip(&r.values).map(|(c, v)| ((*c).to_owned(), Value::from(v.as_str()))).collect()
    };
    for (fixture, r) in reports() {
        let calico: Value = serde_json::from_str(&report_line(&r, Encoding::Calico)).unwrap();
        assert_eq!(calico["columns"], columns(&r), "{fixture}");
        assert_eq!(
            (calico["id"].as_str(), calico["start_time"].as_str(), calico["row"].as_u64()),
            (Some(r.id().as_str()), Some("2026-11-26T00:00:00.000Z"), Some(r.row)),
            "{fixture}"
        );
        let key_order: Vec<&str> = {
            let line = report_line(&r, Encoding::Calico);
            let at = line.find("\"columns\"").unwrap();
            r.columns.iter().map(|c| (line[at..].find(&format!("\"{c}\"")).unwrap(), *c)).map(|(_, c)| c).collect()
        };
        assert_eq!(key_order, r.columns, "{fixture}: columns in file order");
        let ecs: Value = serde_json::from_str(&report_line(&r, Encoding::Ecs)).unwrap();
        assert_eq!(
            (ecs["event"]["kind"].as_str(), ecs["event"]["dataset"].as_str()),
            (Some("state"), Some("flowaudit.report"))
        );
        assert_eq!(ecs["flowaudit"]["report"]["columns"], columns(&r), "{fixture}");
        let ocsf: Value = serde_json::from_str(&report_line(&r, Encoding::Ocsf)).unwrap();
        assert_eq!(ocsf["unmapped"]["report"]["columns"], columns(&r), "{fixture}");
        assert_eq!(ocsf["metadata"]["uid"].as_str(), Some(r.id().as_str()));
        let (_, cef) = parse_cef(&report_line(&r, Encoding::Cef));
        assert_eq!(serde_json::from_str::<Value>(&cef["flowauditflowauditColumns"]).unwrap(), columns(&r), "{fixture}");
        assert_eq!((cef["externalId"].as_str(), cef["cs2"].as_str()), (r.id().as_str(), r.file));
    }
}

#[test]
fn cis_test_rows_are_compliance_findings() {
    let rows = reports();
    let (fail, pass, endpoint) = (&rows[0].1, &rows[1].1, &rows[2].1);
    let ocsf: Value = serde_json::from_str(&report_line(fail, Encoding::Ocsf)).unwrap();
    assert_eq!((ocsf["class_uid"].as_u64(), ocsf["type_uid"].as_u64()), (Some(2003), Some(200_301)));
    assert_eq!(ocsf["compliance"]["control"], "1.1.1");
    assert_eq!(
        (ocsf["compliance"]["status_id"].as_u64(), ocsf["compliance"]["status"].as_str()),
        (Some(3), Some("Fail"))
    );
    assert_eq!(ocsf["compliance"]["standards"][0], "CIS Kubernetes Benchmark");
    assert_eq!(ocsf["resources"][0]["name"], "node-a");
    assert_eq!(ocsf["severity_id"].as_u64(), Some(3));
    assert!(ocsf["remediation"]["desc"].as_str().unwrap().starts_with("Run chmod 600"));
    let ocsf: Value = serde_json::from_str(&report_line(pass, Encoding::Ocsf)).unwrap();
    assert_eq!((ocsf["compliance"]["status_id"].as_u64(), ocsf["severity_id"].as_u64()), (Some(1), Some(1)));
    assert!(ocsf.get("remediation").is_none(), "no empty remediation");
    let ocsf: Value = serde_json::from_str(&report_line(endpoint, Encoding::Ocsf)).unwrap();
    assert_eq!((ocsf["class_uid"].as_u64(), ocsf["type_uid"].as_u64()), (Some(0), Some(99)));
    assert_eq!(ocsf["severity_id"].as_u64(), Some(4), "an endpoint with enforcement violations is high");
    assert!(ocsf.get("compliance").is_none());

    let ecs: Value = serde_json::from_str(&report_line(fail, Encoding::Ecs)).unwrap();
    assert_eq!((ecs["rule"]["id"].as_str(), ecs["event"]["outcome"].as_str()), (Some("1.1.1"), Some("failure")));
    let ecs: Value = serde_json::from_str(&report_line(pass, Encoding::Ecs)).unwrap();
    assert_eq!(ecs["event"]["outcome"], "success");
    let ecs: Value = serde_json::from_str(&report_line(endpoint, Encoding::Ecs)).unwrap();
    assert!(ecs.get("rule").is_none() && ecs["event"].get("outcome").is_none());

    let (h, e) = parse_cef(&report_line(fail, Encoding::Cef));
    assert_eq!((h[4].as_str(), h[6].as_str()), ("cis-1.1.1", "5"));
    assert_eq!((e["outcome"].as_str(), e["cs3"].as_str()), ("FAIL", "node-a"));
    assert!(e["flowauditflowauditColumns"].contains("a=b|c\\nnext"), "{}", e["flowauditflowauditColumns"]);
    let (h, _) = parse_cef(&report_line(endpoint, Encoding::Cef));
    assert_eq!(
        (h[4].as_str(), h[5].as_str(), h[6].as_str()),
        ("report-network-access", "network-access endpoints.csv", "8")
    );
}
