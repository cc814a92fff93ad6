use std::os::unix::fs::MetadataExt as _;

use super::*;
use crate::cluster::manifests::load_dir;

const SEC: u64 = 1_000_000_000;

fn state(yaml: &str) -> Arc<ClusterState> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    Arc::new(load_dir(dir.path()).unwrap().state)
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {env: prod}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web-sa, namespace: shop, labels: {role: fe}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-5d8c-x1, generateName: web-5d8c-, namespace: shop, labels: {app: web}}
spec: {serviceAccountName: web-sa, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}, annotations: {flowaudit.io/cgroup: pods/db}}
status: {podIP: 10.0.1.6}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: kube-system, labels: {app: agent}, annotations: {flowaudit.io/cgroup: pods/agent}}
spec: {hostNetwork: true}
status: {podIP: 192.168.0.10}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
"#;

fn cgroup_root() -> (tempfile::TempDir, u64, u64) {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("pods/db/container")).unwrap();
    std::fs::create_dir_all(root.path().join("pods/agent")).unwrap();
    let db_container = std::fs::metadata(root.path().join("pods/db/container")).unwrap().ino();
    let agent = std::fs::metadata(root.path().join("pods/agent")).unwrap().ino();
    (root, db_container, agent)
}

fn enricher(root: &std::path::Path) -> Enricher {
    let mut e = Enricher::new(EnrichConfig { cgroup_root: root.to_owned(), grace: Duration::from_secs(60) });
    e.update(&state(CLUSTER), 0);
    e
}

fn labels(v: &[&str]) -> RecordLabels {
    RecordLabels::List(v.iter().map(|s| s.to_string()).collect())
}

#[test]
fn names_pods_by_address_with_their_metadata() {
    let (root, ..) = cgroup_root();
    let mut e = enricher(root.path());
    let mut r = vec![FlowRecord::sample("10.0.1.5", 40000, "10.0.1.6", 5432)];
    e.enrich(&mut r, SEC);
    let r = &r[0];
    assert_eq!(
        (r.source_name.as_ref(), r.source_name_aggr.as_ref(), r.source_namespace.as_ref(), r.source_type.as_ref()),
        ("web-5d8c-x1", "web-5d8c-*", "shop", "wep")
    );
    assert_eq!(r.source_labels, labels(&["app=web"]));
    assert_eq!((r.dest_name.as_ref(), r.dest_name_aggr.as_ref()), ("db", "db"));
    let src = r.context.source.as_ref().unwrap();
    assert_eq!(src.namespace_labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(src.service_account.as_deref(), Some("web-sa"));
    assert_eq!(src.service_account_labels.get("role").map(String::as_str), Some("fe"));
    assert_eq!(src.named_ports[0].port, 8080);
    assert!(!r.host_network);
}

#[test]
fn names_a_socket_by_its_cgroup_even_without_a_pod_address() {
    let (root, db_container, agent) = cgroup_root();
    let mut e = enricher(root.path());
    // The host-network agent pod talks from the node's address; its cgroup names it.
    let mut r = FlowRecord::sample("192.168.0.10", 40000, "10.0.1.5", 8080);
    r.source_cgroup_id = Some(agent);
    // The destination's socket is in a container cgroup below the db pod's.
    let mut to_db = FlowRecord::sample("10.9.9.9", 40001, "10.99.0.1", 5432);
    to_db.context.dest_cgroup_id = Some(db_container);
    let mut records = vec![r, to_db];
    e.enrich(&mut records, SEC);
    assert_eq!((records[0].source_name.as_ref(), records[0].source_namespace.as_ref()), ("agent", "kube-system"));
    assert!(records[0].host_network);
    assert_eq!(&*records[1].dest_name, "db");
    // The node address alone names nobody (many host-network pods share it).
    let mut plain = vec![FlowRecord::sample("192.168.0.10", 40000, "10.0.1.5", 8080)];
    e.enrich(&mut plain, SEC);
    assert_eq!((plain[0].source_type.as_ref(), plain[0].source_name.as_ref()), ("net", "-"));
}

#[test]
fn service_cluster_ips_name_the_service_and_stay_net() {
    let (root, ..) = cgroup_root();
    let mut e = enricher(root.path());
    let mut r = vec![
        FlowRecord::sample("10.0.1.5", 40000, "10.96.0.10", 80),
        FlowRecord::sample("10.0.1.5", 40001, "10.96.0.10", 81),
    ];
    e.enrich(&mut r, SEC);
    assert_eq!(
        (
            r[0].dest_type.as_ref(),
            r[0].dest_service_name.as_ref(),
            r[0].dest_service_namespace.as_ref(),
            r[0].dest_service_port.as_ref()
        ),
        ("net", "web", "shop", "http")
    );
    assert_eq!(&*r[1].dest_service_port, "-", "a port the Service does not expose");
}

#[test]
fn unknown_addresses_are_net() {
    let (root, ..) = cgroup_root();
    let mut e = enricher(root.path());
    let mut r = vec![FlowRecord::sample("8.8.8.8", 53, "10.0.1.5", 40000)];
    r[0].source_name_aggr = "pub".into();
    e.enrich(&mut r, SEC);
    assert_eq!(
        (r[0].source_type.as_ref(), r[0].source_name.as_ref(), r[0].source_name_aggr.as_ref()),
        ("net", "-", "pub")
    );
    assert_eq!(r[0].source_labels, RecordLabels::Unknown);
    assert!(r[0].context.source.is_none());
}

#[test]
fn a_deleted_pod_keeps_its_name_for_the_grace_period() {
    let (root, db_container, _) = cgroup_root();
    let mut e = enricher(root.path());
    let without_db =
        CLUSTER.replace("name: db,", "name: db-gone,").replace("10.0.1.6", "10.0.1.7").replace("pods/db", "pods/none");
    e.update(&state(&without_db), 10 * SEC);
    let probe = |e: &mut Enricher, at: u64| {
        let mut r = FlowRecord::sample("10.0.1.5", 40000, "10.0.1.6", 5432);
        r.context.dest_cgroup_id = Some(db_container);
        let mut v = vec![r];
        e.enrich(&mut v, at);
        v[0].dest_name.clone()
    };
    assert_eq!(&*probe(&mut e, 69 * SEC), "db");
    assert_eq!(&*probe(&mut e, 71 * SEC), "-");
}

#[test]
fn host_endpoints_and_network_sets_name_addresses() {
    let extra = r#"
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-a-eth0, labels: {role: ingress}}
spec: {node: node-a, interfaceName: eth0, expectedIPs: [192.168.0.20]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: corp, labels: {zone: corp}}
spec: {nets: [198.51.100.0/24]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partner, namespace: shop, labels: {zone: partner}}
spec: {nets: [198.51.100.0/24]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partner-narrow, namespace: ops}
spec: {nets: [198.51.100.128/25]}
"#;
    let (root, ..) = cgroup_root();
    let mut e = Enricher::new(EnrichConfig { cgroup_root: root.path().to_owned(), grace: Duration::from_secs(60) });
    e.update(&state(&format!("{CLUSTER}{extra}")), 0);
    let mut r = vec![
        FlowRecord::sample("192.168.0.20", 40000, "10.0.1.5", 8080),
        // The shop pod's own namespace wins over the global set, even against a longer prefix
        // in another namespace.
        FlowRecord::sample("10.0.1.5", 40001, "198.51.100.200", 443),
        // From an address no pod holds: the global set beats other namespaces.
        FlowRecord::sample("10.9.9.9", 40002, "198.51.100.200", 443),
    ];
    e.enrich(&mut r, SEC);
    assert_eq!(
        (
            r[0].source_type.as_ref(),
            r[0].source_name.as_ref(),
            r[0].source_name_aggr.as_ref(),
            r[0].source_namespace.as_ref()
        ),
        ("hep", "node-a-eth0", "node-a", "-")
    );
    assert_eq!(
        (r[1].dest_type.as_ref(), r[1].dest_name.as_ref(), r[1].dest_namespace.as_ref()),
        ("ns", "partner", "shop")
    );
    assert_eq!((r[2].dest_type.as_ref(), r[2].dest_name.as_ref(), r[2].dest_namespace.as_ref()), ("ns", "corp", "-"));
}

#[test]
fn a_pod_cgroup_created_after_the_pod_object_is_found() {
    let root = tempfile::tempdir().unwrap();
    let mut e = Enricher::new(EnrichConfig { cgroup_root: root.path().to_owned(), grace: Duration::from_secs(60) });
    e.update(&state(CLUSTER), 0);
    // The kubelet creates the db pod's cgroup only now.
    std::fs::create_dir_all(root.path().join("pods/db/late")).unwrap();
    let id = std::fs::metadata(root.path().join("pods/db/late")).unwrap().ino();
    let probe = |e: &mut Enricher, at: u64| {
        let mut r = FlowRecord::sample("10.9.9.9", 40000, "10.99.0.1", 5432);
        r.context.dest_cgroup_id = Some(id);
        let mut v = vec![r];
        e.enrich(&mut v, at);
        v[0].dest_name.to_string()
    };
    assert_eq!(probe(&mut e, SEC), "-", "not looked for again within 2 s");
    assert_eq!(probe(&mut e, 3 * SEC), "db");
}
