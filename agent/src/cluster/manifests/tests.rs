use std::net::IpAddr;

use super::*;
use crate::cluster::{NamedPort, ServicePort};

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9f-abcde
  namespace: shop
  uid: 1111-2222
  generateName: web-7d9f-
  labels: {app: web}
  annotations: {flowaudit.io/cgroup: lab/p1}
spec:
  serviceAccountName: web-sa
  nodeName: node-a
  containers:
  - name: c
    image: x
    ports: [{name: http, containerPort: 8080}, {containerPort: 9090}]
status:
  podIP: 10.231.1.2
  podIPs: [{ip: 10.231.1.2}, {ip: "fd00:fa:1::2"}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
# an empty document is fine
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

#[test]
fn reads_every_kind_with_its_fields() {
    let dir = dir_with(&[
        ("a/shop.yaml", GOOD),
        (
            "b/node.json",
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a","labels":{"zone":"z1"}},
                 "status":{"addresses":[{"type":"InternalIP","address":"192.168.0.10"},{"type":"Hostname","address":"node-a"}]}},
                {"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"web-sa","namespace":"shop","labels":{"role":"fe"}}}]}"#,
        ),
        ("notes.txt", "not a manifest"),
    ]);
    let loaded = load_dir(dir.path()).unwrap();
    let s = &loaded.state;
    assert_eq!(s.namespaces["shop"].labels["team"], "web");
    let pod = &s.pods[0];
    assert_eq!((pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()), ("shop", "web-7d9f-abcde", "1111-2222"));
    assert_eq!(pod.ips, vec!["10.231.1.2".parse::<IpAddr>().unwrap(), "fd00:fa:1::2".parse().unwrap()]);
    assert_eq!(pod.generate_name.as_deref(), Some("web-7d9f-"));
    assert_eq!(pod.service_account, "web-sa");
    assert_eq!(pod.node_name.as_deref(), Some("node-a"));
    assert_eq!(pod.named_ports, vec![NamedPort { name: "http".into(), port: 8080, protocol: "TCP".into() }]);
    assert_eq!(pod.cgroup.as_deref(), Some("lab/p1"));
    assert!(!pod.host_network);
    let svc = &s.services[0];
    assert_eq!(svc.cluster_ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(svc.ports, vec![ServicePort { name: "http".into(), port: 80, protocol: "TCP".into() }]);
    assert_eq!(svc.selector["app"], "web");
    assert_eq!(s.nodes[0].addresses, vec!["192.168.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.service_accounts[0].labels["role"], "fe");
    assert_eq!(s.network_policies[0].name, "default-deny");
    assert_eq!(s.network_policies[0].spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
    assert!(loaded.skipped.is_empty());
    assert_eq!(
        s.counts(),
        vec![("Namespace", 1), ("Pod", 1), ("Service", 1), ("Node", 1), ("ServiceAccount", 1), ("NetworkPolicy.networking.k8s.io/v1", 1)]
    );
}

#[test]
fn other_kinds_are_skipped_and_listed() {
    let dir = dir_with(&[(
        "x.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
    )]);
    let loaded = load_dir(dir.path()).unwrap();
    let kinds: Vec<(&str, usize, &str)> =
        loaded.skipped.iter().map(|s| (s.kind.as_str(), s.document, s.reason)).collect();
    assert_eq!(
        kinds,
        vec![
            ("projectcalico.org/v3/GlobalNetworkPolicy", 1, "read by a later version of flowaudit (policy attribution)"),
            ("apps/v1/Deployment", 2, "not a kind flowaudit reads"),
        ]
    );
}

#[test]
fn every_problem_is_reported_with_file_document_and_field() {
    let bad = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop}
status: {podIPs: [{ip: 10.0.0.300}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  containers: [{name: c, ports: [{containerPort: "eighty"}]}]
---
kind: Pod
metadata: {name: c}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {clusterIP: "10.96.0.x", ports: [{port: 70000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop}
"#;
    let dir = dir_with(&[("bad.yaml", bad), ("broken.yaml", "apiVersion: v1\nkind: [unclosed\n")]);
    let errors = load_dir(dir.path()).unwrap_err();
    let got: Vec<(String, usize, String)> = errors
        .iter()
        .map(|e| (e.file.file_name().unwrap().to_string_lossy().into_owned(), e.document, e.field.clone()))
        .collect();
    let want: Vec<(String, usize, String)> = [
        ("bad.yaml", 1, "status.podIPs[0].ip"),
        ("bad.yaml", 2, "metadata.name"),
        ("bad.yaml", 3, "spec.containers[0].ports[0].containerPort"),
        ("bad.yaml", 4, "apiVersion"),
        ("bad.yaml", 5, "spec.clusterIP"),
        ("bad.yaml", 5, "spec.ports[0].port"),
        ("bad.yaml", 6, "metadata.name"),
        ("broken.yaml", 1, "-"),
    ]
    .iter()
    .map(|(f, d, field)| (f.to_string(), *d, field.to_string()))
    .collect();
    assert_eq!(got, want);
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(text[0].ends_with("bad.yaml: document 1: status.podIPs[0].ip: \"10.0.0.300\" is not an IP address"), "{}", text[0]);
    assert!(text[2].contains("invalid type"), "{}", text[2]);
    assert!(text[6].contains("duplicate Pod shop/a, first defined in"), "{}", text[6]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_change_is_published_and_a_broken_edit_keeps_the_last_good_state() {
    let dir = dir_with(&[("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n")]);
    let loaded = load_dir(dir.path()).unwrap();
    let mut rx = watch(dir.path().to_owned(), loaded, Duration::from_millis(50));
    std::fs::write(dir.path().join("ns2.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: two}\n").unwrap();
    tokio::time::timeout(Duration::from_secs(2), rx.changed()).await.expect("published within 2 s").unwrap();
    let state = rx.borrow_and_update().clone();
    assert_eq!(state.version, 1);
    assert_eq!(state.namespaces.keys().collect::<Vec<_>>(), ["one", "two"]);
    std::fs::write(dir.path().join("ns2.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {}\n").unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(400), rx.changed()).await.is_err(), "no broken state is published");
    assert_eq!(rx.borrow().version, 1);
}
